//! `plasma lock`, `--locked`, and writing the lock after an apply.

use super::*;
use crate::lock;
use crate::lockfile::{self, Resolution};

/// `--locked`: fails, naming each resource, when the lock does not match
/// the spec; otherwise holds every resource to it strictly (a venv whose
/// requirements appear only during this apply is checked again there).
pub(super) fn require_locked(loaded: &mut Loaded) -> Result<(), Failure> {
    let shown = loaded.lock_path.display().to_string();
    let Some(lock) = loaded.lock.clone() else {
        return Err(Failure::Message(format!(
            "--locked: there is no {shown}; run `plasma lock` (or apply without --locked) to write it. Nothing was changed."
        )));
    };
    let stale = lockfile::out_of_date(&loaded.spec, &lock);
    if !stale.is_empty() {
        return Err(Failure::Message(format!(
            "--locked: {shown} is out of date with {}:\n{}\nRun `plasma lock` (or apply without --locked) to update it. Nothing was changed.",
            loaded.spec.path.display(),
            stale
                .iter()
                .map(|s| format!("  {s}"))
                .collect::<Vec<_>>()
                .join("\n")
        )));
    }
    lockfile::hold(&mut loaded.spec, &lock, &[], true);
    Ok(())
}

/// After an apply (or a converged one): the lock with what was applied,
/// written when it changed, its changes printed.
pub(super) fn write_after_apply(loaded: &Loaded, state: &State) -> Result<(), Failure> {
    let old = loaded.lock.clone().unwrap_or_default();
    let new = lockfile::after_apply(&loaded.spec, state, &old);
    if loaded.lock.is_none() && new.is_empty() {
        return Ok(());
    }
    let wrote = new
        .write(&loaded.lock_path)
        .map_err(|e| Failure::Message(e.to_string()))?;
    if wrote {
        for line in lock::changes(&old, &new) {
            println!("lock: {} {} {}", line.symbol, line.address, line.detail);
        }
        println!("Wrote {}.", loaded.lock_path.display());
    }
    Ok(())
}

/// `plasma lock [--upgrade [ADDR…]] [--locked]`.
pub(super) fn lock_command(env: &Env, upgrade: Option<Vec<String>>, locked: bool) -> CommandResult {
    let mut loaded = load(env)?;
    if locked {
        require_locked(&mut loaded)?;
        println!("{} is up to date.", loaded.lock_path.display());
        return Ok(EXIT_OK);
    }
    let mut except = upgrade.unwrap_or_default();
    for address in &except {
        let known = loaded
            .spec
            .resources
            .iter()
            .any(|d| &d.address.to_string() == address);
        if !known {
            return Err(Failure::Message(format!(
                "--upgrade {address}: no such resource in {} (write it as kind.name, e.g. venv.comfyui)",
                loaded.spec.path.display()
            )));
        }
    }
    if matches!(except.as_slice(), []) && std::env::args().any(|a| a == "--upgrade") {
        except.push("*".into());
    }
    let old = loaded.lock.clone().unwrap_or_default();
    lockfile::hold(&mut loaded.spec, &old, &except, false);
    let state = read_state(env, &loaded.state_file)?;
    let mut new = old.clone();
    new.version = lock::LOCK_VERSION;
    let report = lockfile::resolve(&loaded.spec, state.as_ref(), &mut new)
        .map_err(|e| Failure::Message(format!("cannot lock: {e}. The lock was not changed.")))?;
    for (address, outcome) in &report {
        match outcome {
            Resolution::Kept => println!("{address}: locked (unchanged)"),
            Resolution::Resolved => println!("{address}: resolved"),
            Resolution::Skipped(why) => println!("{address}: not locked ({why})"),
        }
    }
    for line in lock::changes(&old, &new) {
        println!("lock: {} {} {}", line.symbol, line.address, line.detail);
    }
    let wrote = new
        .write(&loaded.lock_path)
        .map_err(|e| Failure::Message(e.to_string()))?;
    println!(
        "{} {}.",
        if wrote { "Wrote" } else { "Unchanged:" },
        loaded.lock_path.display()
    );
    Ok(EXIT_OK)
}
