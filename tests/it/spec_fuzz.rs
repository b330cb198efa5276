//! A mutation fuzzer over load → resolve → lint → render, in process: specs
//! made from the root `plasma.kdl` and `examples/*.kdl` by byte flips,
//! deletions, truncation, duplication, deep nesting, long lines, invalid
//! UTF-8 and KDL 1 habits. No input may panic, and what is printed stays
//! bounded.
//!
//! CI runs it for a bounded time. `PLASMA_FUZZ_INPUTS` (default 300) and
//! `PLASMA_FUZZ_SECONDS` (default 60) bound a run, whichever comes first;
//! `PLASMA_FUZZ_SEED` picks the inputs (each run prints its seed). Run
//! longer with e.g.
//! `PLASMA_FUZZ_INPUTS=5000 PLASMA_FUZZ_SECONDS=3600 cargo test --test it spec_fuzz -- --nocapture`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use plasma::diagnostic::{self, Problem};
use plasma::schema::ValidateReport;

/// The most a rendered run may print, in bytes: 50 problems shown, each with
/// a clipped snippet and clipped texts, plus the count of the rest.
const MAX_RENDERED: usize = 1 << 20;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seeds() -> Vec<Vec<u8>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![root.join("plasma.kdl")];
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root.join("examples"))
        .expect("examples/ exists")
        .map(|e| e.expect("examples/ lists").path())
        .filter(|p| p.extension().is_some_and(|e| e == "kdl"))
        .collect();
    examples.sort();
    paths.extend(examples);
    paths
        .iter()
        .map(|p| std::fs::read(p).expect("seed spec reads"))
        .collect()
}

/// Snippets that provoke known failure modes when spliced in.
const SPLICES: &[&str] = &[
    "use_cpu true\n",
    "url https://example.com/m.safetensors // x\n",
    "x a=null b=false c=yes\n",
    "allow-pickle yes\n",
    "}\n",
    "{\n",
    "/* ",
    "\"\"\"\n",
    "#\"",
    "{tools}",
    "vars { a \"{a}{a}\" }\n",
    "platform os=linux\n",
    "depends-on file.zzz\n",
    "link l { path \"/tmp/l\"; target \"/tmp/t\" }\n",
];

fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    let mut input = seed.to_vec();
    for _ in 0..rng.usize(1..=4) {
        let len = input.len();
        let at = rng.usize(0..=len);
        match rng.u8(0..10) {
            // Byte flips.
            0 => {
                for _ in 0..rng.usize(1..8) {
                    if !input.is_empty() {
                        let i = rng.usize(0..input.len());
                        input[i] ^= 1 << rng.u8(0..8);
                    }
                }
            }
            // Deletion.
            1 => {
                let end = (at + rng.usize(0..64)).min(len);
                input.drain(at..end);
            }
            // Truncation.
            2 => input.truncate(at),
            // Duplication of a range.
            3 => {
                let end = (at + rng.usize(0..256)).min(len);
                let piece = input[at..end].to_vec();
                let to = rng.usize(0..=input.len());
                input.splice(to..to, piece);
            }
            // Deep nesting, past the parser's stack depth.
            4 => {
                let depth = rng.usize(10..3000);
                let open = "n {".repeat(depth);
                let close = if rng.bool() {
                    "}".repeat(depth)
                } else {
                    String::new()
                };
                input.splice(at..at, format!("{open}{close}").into_bytes());
            }
            // A long line with a mistake at its end.
            5 => {
                let width = rng.usize(100..100_000);
                let line = format!(
                    "\nfile long {{ path \"/tmp/{}\" bogus=1 }}\n",
                    "x".repeat(width)
                );
                input.splice(at..at, line.into_bytes());
            }
            // Invalid UTF-8.
            6 => {
                let bad = [0xff, 0xc3, 0x28, 0xe2, 0x82];
                input.splice(at..at, bad[..rng.usize(1..=bad.len())].iter().copied());
            }
            // Variables that double.
            7 => {
                let mut vars = String::from("vars {\n  v0 \"abcdefgh\"\n");
                for i in 1..rng.usize(2..40) {
                    vars.push_str(&format!("  v{i} \"{{v{0}}}{{v{0}}}\"\n", i - 1));
                }
                vars.push_str("}\n");
                input.splice(0..0, vars.into_bytes());
            }
            // A known troublemaker spliced in.
            _ => {
                let splice = SPLICES[rng.usize(0..SPLICES.len())];
                input.splice(at..at, splice.bytes());
            }
        }
    }
    input
}

/// Load, resolve, lint and render one input; the rendered length.
fn check(dir: &std::path::Path, input: &[u8]) -> usize {
    let path = dir.join("plasma.kdl");
    std::fs::write(&path, input).expect("input writes");
    let problems: Vec<Problem> = match plasma::engine::load(&path, None) {
        Ok(loaded) => {
            let _ = loaded.graph.to_dot(&loaded.spec);
            loaded.warnings
        }
        Err(plasma::engine::EngineError::Load(plasma::spec::LoadError::Spec(errors))) => {
            assert!(
                errors.problems.iter().any(Problem::is_error),
                "a failed load names an error"
            );
            for problem in errors.problems.iter().filter(|p| p.is_error()) {
                assert!(
                    problem.location().is_some(),
                    "every spec error has a location: {problem:?}"
                );
            }
            errors.problems
        }
        Err(other) => panic!("unexpected failure: {other}"),
    };
    let rendered = diagnostic::render(&problems, false);
    let json = serde_json::to_string(&ValidateReport::new(false, &problems)).expect("serialises");
    rendered.len().max(json.len())
}

#[test]
fn no_mutated_spec_panics_or_floods_the_output() {
    let inputs = env_number("PLASMA_FUZZ_INPUTS", 300);
    let budget = Duration::from_secs(env_number("PLASMA_FUZZ_SECONDS", 60));
    let seed = env_number("PLASMA_FUZZ_SEED", 0x5eed_2026);
    let mut rng = fastrand::Rng::with_seed(seed);
    let seeds = seeds();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (mut tried, mut longest, mut largest) = (0u64, Duration::ZERO, 0usize);
    let mut panics = Vec::new();
    while tried < inputs && started.elapsed() < budget {
        let seed_spec = &seeds[rng.usize(0..seeds.len())];
        let input = mutate(&mut rng, seed_spec);
        let one = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| check(dir.path(), &input))) {
            Ok(size) => largest = largest.max(size),
            Err(_) => {
                let kept = dir.path().join(format!("panic-{tried}.kdl"));
                std::fs::write(&kept, &input).unwrap();
                panics.push(kept);
            }
        }
        longest = longest.max(one.elapsed());
        tried += 1;
    }
    println!(
        "spec fuzz: seed {seed:#x}, {tried} inputs, {} panics, longest {longest:?}, largest output {largest} bytes, {:?} in all",
        panics.len(),
        started.elapsed()
    );
    if !panics.is_empty() {
        // Keep the inputs for a look.
        let kept = dir.keep();
        panic!(
            "{} inputs panicked; kept in {}",
            panics.len(),
            kept.display()
        );
    }
    assert!(largest <= MAX_RENDERED, "output of {largest} bytes");
}
