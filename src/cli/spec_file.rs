//! Commands on the spec file itself: `init`, `validate`, `fmt`, `pin`.

use super::*;

pub(super) fn init(force: bool) -> CommandResult {
    let path = PathBuf::from(crate::spec::SPEC_FILE);
    if path.exists() && !force {
        return Err(Failure::Message(format!(
            "{} already exists (use --force to overwrite it)",
            path.display()
        )));
    }
    let facts = crate::platform::current();
    fsutil::write_atomic(&path, starter(facts).as_bytes(), None)
        .map_err(|e| Failure::Message(format!("cannot write {}: {e}", path.display())))?;
    println!(
        "Wrote {} for this machine ({}). Next: `plasma validate`, then `plasma plan`.",
        path.display(),
        facts.summary()
    );
    Ok(EXIT_OK)
}

/// The starter spec for a machine with these facts: its platform line, and
/// an accelerate config that fits its accelerator (fp16 only on CUDA; MPS
/// refuses it; a CPU-only machine sets `use_cpu`), written beside the spec
/// rather than over the user's real accelerate config.
fn starter(facts: &crate::platform::Facts) -> String {
    let (mixed_precision, note, use_cpu) = match facts.accelerator.as_str() {
        "cuda" => ("fp16", "fp16 halves memory on CUDA", "#false"),
        "mps" => ("no", "fp16 fails on MPS", "#false"),
        _ => ("no", "no accelerator: full precision on the CPU", "#true"),
    };
    include_str!("starter.kdl")
        .replace("{platform}", &facts.summary())
        .replace("{mixed_precision}", mixed_precision)
        .replace("{mixed_precision_note}", note)
        .replace("{use_cpu}", use_cpu)
        .replace("{{", "{")
        .replace("}}", "}")
}

pub(super) fn validate(env: &Env, json: bool) -> CommandResult {
    let path = spec_path(env)?;
    match engine::load(&path, env.state.as_deref()) {
        Ok(loaded) => {
            if json {
                print_json(&schema::ValidateReport::new(true, &loaded.warnings));
            } else {
                eprint!("{}", diagnostic::render(&loaded.warnings, env.stderr_color));
                println!(
                    "The spec is valid: {} resource{}.",
                    loaded.spec.resources.len(),
                    if loaded.spec.resources.len() == 1 {
                        ""
                    } else {
                        "s"
                    }
                );
            }
            Ok(EXIT_OK)
        }
        Err(EngineError::Load(LoadError::Spec(errors))) if json => {
            print_json(&schema::ValidateReport::new(false, &errors.problems));
            Ok(EXIT_ERROR)
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) fn fmt(env: &Env, check: bool) -> CommandResult {
    let path = spec_path(env)?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Failure::Message(format!("cannot read {}: {e}", path.display())))?;
    kdl::KdlDocument::parse_v2(&text).map_err(|e| {
        Failure::Spec(
            crate::spec::load(&path, text.clone())
                .err()
                .map(|e| e.problems)
                .unwrap_or_else(|| vec![Problem::error("spec::syntax", e.to_string())]),
        )
    })?;
    let formatted = crate::format::format(&text);
    if formatted == text {
        return Ok(EXIT_OK);
    }
    if check {
        println!("{} is not formatted (run `plasma fmt`)", path.display());
        return Ok(EXIT_ERROR);
    }
    rewrite_spec(&path, &formatted)?;
    println!("Formatted {}", path.display());
    Ok(EXIT_OK)
}

/// `plasma pin`: the digests recorded by trust on first use, written into
/// the spec with its comments and layout kept.
pub(super) fn pin(env: &Env) -> CommandResult {
    use crate::resource::model::Model;
    let loaded = load(env)?;
    let state = read_state(env, &loaded.state_file)?;
    let mut digests = std::collections::BTreeMap::new();
    for declared in &loaded.spec.resources {
        let Some(model) = declared.resource.as_any().downcast_ref::<Model>() else {
            continue;
        };
        if model.sha256.is_some() {
            continue;
        }
        let address = declared.address.to_string();
        let recorded = state
            .as_ref()
            .and_then(|s| s.resources.get(&address))
            // Recorded for this path: a digest of another file pins nothing.
            .filter(|entry| entry.desired.get("path") == Some(&serde_json::json!(model.path.value)))
            .and_then(|entry| entry.outputs.get("sha256")?.as_str()?.parse().ok());
        match recorded {
            Some(digest) => {
                digests.insert(declared.address.name.clone(), digest);
            }
            None => println!(
                "{address}: no digest recorded yet (run `plasma apply` first, then `plasma pin`)"
            ),
        }
    }
    let pinned = crate::pin::pin_text(&loaded.spec.text, &digests).map_err(Failure::Message)?;
    if pinned.pinned.is_empty() {
        println!("Nothing to pin.");
        return Ok(EXIT_OK);
    }
    // The edited spec must still load before it replaces the user's file.
    crate::spec::load(&loaded.spec.path, pinned.text.clone()).map_err(|e| {
        Failure::Message(format!(
            "pinning would break the spec ({e}); {} was not changed",
            loaded.spec.path.display()
        ))
    })?;
    rewrite_spec(&loaded.spec.path, &pinned.text)?;
    for (name, digest) in &pinned.pinned {
        println!("model.{name}: pinned sha256 {digest}");
    }
    println!("Wrote {}.", loaded.spec.path.display());
    Ok(EXIT_OK)
}

/// Replaces the user's spec with `text`, atomically, as the file it is: a
/// symlinked spec is written at the symlink's target (the link stays), and
/// the file keeps its mode and, where plasma may set it, its owner.
fn rewrite_spec(path: &Path, text: &str) -> Result<(), Failure> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let failed =
        |e: std::io::Error| Failure::Message(format!("cannot write {}: {e}", path.display()));
    let target = std::fs::canonicalize(path).map_err(failed)?;
    let before = std::fs::metadata(&target).map_err(failed)?;
    fsutil::write_atomic(
        &target,
        text.as_bytes(),
        Some(before.permissions().mode() & 0o7777),
    )
    .map_err(failed)?;
    let after = std::fs::metadata(&target).map_err(failed)?;
    if (after.uid(), after.gid()) != (before.uid(), before.gid()) {
        // Only root can give the file back; anyone else wrote their own file.
        let _ = std::os::unix::fs::chown(&target, Some(before.uid()), Some(before.gid()));
    }
    Ok(())
}
