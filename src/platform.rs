//! The machine plasma runs on: its os, architecture, accelerator and memory
//! (the *facts*), as opposed to the `platform` a spec declares.
//!
//! Facts are read cheaply, without starting any program: the os and
//! architecture are compiled in, memory comes from `/proc/meminfo` (Linux) or
//! `sysctl hw.memsize` (macOS), and an NVIDIA GPU is recognised by its
//! driver's `/proc/driver/nvidia/version`. What costs a program start (the
//! driver's CUDA version from `nvidia-smi`, each Python's exact version) is
//! only read by `plasma show platform`.
//!
//! Tests (and users checking a spec for another machine) fake the facts with
//! `PLASMA_PLATFORM`, in the `platform` node's own words:
//! `PLASMA_PLATFORM="os=macos arch=aarch64 accelerator=mps memory=16GiB"`.
//! Any fact left out is read from the machine.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;

/// The variable that fakes the facts (see the module docs).
pub const FAKE_VAR: &str = "PLASMA_PLATFORM";

/// The values `platform os=` accepts, with the spellings people also use.
pub const OSES: &[(&str, &[&str])] = &[
    ("macos", &["darwin", "osx", "mac", "macosx"]),
    ("linux", &["gnu/linux", "ubuntu", "debian"]),
    ("windows", &["win", "win32", "win64"]),
];

/// The values `platform arch=` accepts, with the spellings people also use.
pub const ARCHES: &[(&str, &[&str])] = &[
    ("aarch64", &["arm64", "armv8", "apple-silicon", "m1"]),
    ("x86_64", &["x64", "amd64", "x86-64", "intel64"]),
];

/// The values `accelerator=` accepts, with the spellings people also use.
pub const ACCELERATORS: &[(&str, &[&str])] = &[
    ("mps", &["metal", "apple", "m1"]),
    ("cuda", &["nvidia", "gpu"]),
    ("rocm", &["amd", "hip"]),
    ("cpu", &["none"]),
];

/// Finds the accepted value for `text` in one of the tables above: itself,
/// or what it means when it is another spelling (`Linux`, `arm64`, `x64`).
/// `Ok` when `text` is accepted as written, `Err(Some(fix))` when it is
/// another spelling of `fix`, `Err(None)` when it is unknown.
pub fn canonical(
    table: &[(&'static str, &[&str])],
    text: &str,
) -> Result<(), Option<&'static str>> {
    if table.iter().any(|(name, _)| *name == text) {
        return Ok(());
    }
    let lower = text.to_ascii_lowercase();
    let found = table
        .iter()
        .find(|(name, aliases)| *name == lower || aliases.contains(&lower.as_str()))
        .map(|(name, _)| *name);
    Err(found)
}

/// What plasma knows of the machine it runs on.
#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    /// `macos`, `linux`, … (Rust's `std::env::consts::OS`).
    pub os: String,
    /// `aarch64`, `x86_64`, … (Rust's `std::env::consts::ARCH`).
    pub arch: String,
    /// `mps` on Apple Silicon, `cuda` where an NVIDIA driver is loaded, else `cpu`.
    pub accelerator: String,
    /// Total memory in bytes, when it could be read.
    pub memory_bytes: Option<u64>,
    /// The facts that came from `PLASMA_PLATFORM` instead of the machine.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faked: Vec<String>,
}

impl Facts {
    /// Total memory in GiB, rounded to the nearest whole GiB (a "16 GB" Mac
    /// reports 17,179,869,184 bytes; a 24 GiB VM a little less).
    pub fn memory_gib(&self) -> Option<u64> {
        self.memory_bytes.map(|b| (b + (1 << 29)) >> 30)
    }

    /// One line, in the `platform` node's words: `os=linux arch=x86_64 accelerator=cpu memory-gb=24`.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "os={} arch={} accelerator={}",
            self.os, self.arch, self.accelerator
        );
        if let Some(gib) = self.memory_gib() {
            line.push_str(&format!(" memory-gb={gib}"));
        }
        line
    }
}

/// The facts of this machine, read once per process.
pub fn current() -> &'static Facts {
    static FACTS: OnceLock<Facts> = OnceLock::new();
    FACTS.get_or_init(|| {
        let fake = std::env::var(FAKE_VAR).unwrap_or_default();
        detect(&fake)
    })
}

/// Reads the facts, then overrides those `fake` names (`os=… arch=…
/// accelerator=… memory=16GiB`; unknown keys and unparsable sizes are ignored).
pub fn detect(fake: &str) -> Facts {
    let os = std::env::consts::OS.to_string();
    let arch = std::env::consts::ARCH.to_string();
    let mut facts = Facts {
        accelerator: detect_accelerator(&os, &arch),
        memory_bytes: detect_memory(),
        os,
        arch,
        faked: Vec::new(),
    };
    for pair in fake.split_whitespace() {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let value = value.to_string();
        match key {
            "os" => facts.os = value,
            "arch" => facts.arch = value,
            "accelerator" => facts.accelerator = value,
            "memory" | "memory-gb" => {
                let bytes = if key == "memory-gb" {
                    value.parse::<u64>().ok().map(|g| g << 30)
                } else {
                    crate::size::parse(&value).ok().map(|s| s.bytes)
                };
                match bytes {
                    Some(b) => facts.memory_bytes = Some(b),
                    None => continue,
                }
            }
            _ => continue,
        }
        facts.faked.push(key.to_string());
    }
    facts
}

fn detect_accelerator(os: &str, arch: &str) -> String {
    if os == "macos" && arch == "aarch64" {
        "mps".into()
    } else if Path::new("/proc/driver/nvidia/version").exists() {
        "cuda".into()
    } else {
        "cpu".into()
    }
}

#[cfg(target_os = "linux")]
fn detect_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(target_os = "macos")]
fn detect_memory() -> Option<u64> {
    let mut bytes: u64 = 0;
    let mut len = std::mem::size_of::<u64>();
    // SAFETY: hw.memsize is a 64-bit integer; the buffer and its length match.
    let rc = unsafe {
        libc::sysctlbyname(
            c"hw.memsize".as_ptr(),
            (&mut bytes as *mut u64).cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0).then_some(bytes)
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn detect_memory() -> Option<u64> {
    None
}

/// The CUDA version the NVIDIA driver supports, from `nvidia-smi`'s banner
/// ("CUDA Version: 12.4"); `None` without a driver. Starts a program: only
/// for `plasma show platform`.
pub fn cuda_version() -> Option<String> {
    let output = std::process::Command::new("nvidia-smi").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let rest = text.split("CUDA Version:").nth(1)?;
    rest.split_whitespace()
        .next()
        .map(|v| v.trim_end_matches('|').to_string())
}

/// A Python interpreter found on this machine.
#[derive(Debug, Clone, Serialize)]
pub struct PythonFound {
    /// `3.11.7`, as the interpreter reports it.
    pub version: String,
    pub path: PathBuf,
}

/// Every `python3` / `python3.X` on PATH and in pyenv's `versions/`, with the
/// version each reports (one program start each, so only for `show platform`).
/// The same interpreter reached through several names is listed once.
pub fn pythons() -> Vec<PythonFound> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut names: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(is_python_name)
                })
                .collect();
            names.sort();
            candidates.extend(names);
        }
    }
    let pyenv_root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::spec::reader::home_dir().join(".pyenv"));
    if let Ok(entries) = std::fs::read_dir(pyenv_root.join("versions")) {
        let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        dirs.sort();
        candidates.extend(dirs.into_iter().map(|d| d.join("bin/python3")));
    }
    let mut seen = std::collections::HashSet::new();
    let mut found = Vec::new();
    for path in candidates {
        let Ok(real) = std::fs::canonicalize(&path) else {
            continue;
        };
        if !seen.insert(real) {
            continue;
        }
        if let Some(version) = python_version(&path) {
            found.push(PythonFound { version, path });
        }
    }
    found
}

/// `python3`, `python3.11`: not `python3-config` or `python3.11m-config`.
fn is_python_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("python3") else {
        return false;
    };
    rest.is_empty()
        || rest
            .strip_prefix('.')
            .is_some_and(|minor| !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()))
}

fn python_version(path: &Path) -> Option<String> {
    let output = std::process::Command::new(path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    text.trim().strip_prefix("Python ").map(str::to_string)
}

/// How a spec's declared `platform` differs from these facts, one phrase per
/// difference (`os: macos (spec) vs linux (this machine)`); empty when it
/// fits. Memory differs only when the machine has less than declared.
pub fn differences(declared: &crate::spec::Platform, facts: &Facts) -> Vec<String> {
    let mut out = Vec::new();
    let mut compare = |what: &str, spec: Option<&str>, machine: &str| {
        if let Some(spec) = spec
            && spec != machine
        {
            out.push(format!("{what}: {spec} (spec) vs {machine} (this machine)"));
        }
    };
    compare(
        "os",
        declared.os.as_ref().map(|o| o.value.as_str()),
        &facts.os,
    );
    compare(
        "arch",
        declared.arch.as_ref().map(|a| a.value.as_str()),
        &facts.arch,
    );
    compare(
        "accelerator",
        declared
            .accelerator
            .as_ref()
            .map(|a| a.value.as_str())
            .map(|a| if a == "none" { "cpu" } else { a }),
        &facts.accelerator,
    );
    if let (Some(spec), Some(have)) = (declared.memory_gb.as_ref(), facts.memory_gib())
        && have < spec.value
    {
        out.push(format!(
            "memory: {} GiB (spec) vs {have} GiB (this machine)",
            spec.value
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faked_facts_override_what_is_read() {
        let facts = detect("os=macos arch=aarch64 accelerator=mps memory=16GiB");
        assert_eq!(facts.os, "macos");
        assert_eq!(facts.arch, "aarch64");
        assert_eq!(facts.accelerator, "mps");
        assert_eq!(facts.memory_gib(), Some(16));
        assert_eq!(facts.faked, ["os", "arch", "accelerator", "memory"]);
        assert_eq!(
            facts.summary(),
            "os=macos arch=aarch64 accelerator=mps memory-gb=16"
        );
    }

    #[test]
    fn unfaked_facts_come_from_the_machine() {
        let facts = detect("");
        assert_eq!(facts.os, std::env::consts::OS);
        assert_eq!(facts.arch, std::env::consts::ARCH);
        assert!(facts.faked.is_empty());
        #[cfg(any(target_os = "linux", target_os = "macos"))]
        assert!(facts.memory_bytes.is_some_and(|b| b > 0));
    }

    #[test]
    fn other_spellings_map_to_the_accepted_value() {
        assert_eq!(canonical(OSES, "linux"), Ok(()));
        assert_eq!(canonical(OSES, "Linux"), Err(Some("linux")));
        assert_eq!(canonical(OSES, "darwin"), Err(Some("macos")));
        assert_eq!(canonical(ARCHES, "x64"), Err(Some("x86_64")));
        assert_eq!(canonical(ARCHES, "arm64"), Err(Some("aarch64")));
        assert_eq!(canonical(ACCELERATORS, "metal"), Err(Some("mps")));
        assert_eq!(canonical(ARCHES, "sparc"), Err(None));
    }

    #[test]
    fn python_names_are_interpreters_only() {
        assert!(is_python_name("python3"));
        assert!(is_python_name("python3.11"));
        assert!(!is_python_name("python3-config"));
        assert!(!is_python_name("python3.11-config"));
        assert!(!is_python_name("python2"));
    }
}
