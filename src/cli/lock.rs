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

/// After an apply (or a converged one): the lock with what `plan` found
/// converged and `applied` names, written when it changed, its changes
/// printed.
pub(super) fn write_after_apply(
    loaded: &Loaded,
    state: &State,
    plan: &Plan,
    applied: &[&str],
) -> Result<(), Failure> {
    let old = loaded.lock.clone().unwrap_or_default();
    let done = |address: &str| {
        applied.contains(&address)
            || plan
                .get(address)
                .is_some_and(|c| c.diff.action == Action::NoOp)
    };
    let new = lockfile::after_apply(&loaded.spec, state, &old, &done);
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
    // `--upgrade` with no address moves every entry.
    let except = match upgrade {
        Some(addresses) if addresses.is_empty() => vec!["*".to_string()],
        Some(addresses) => addresses,
        None => Vec::new(),
    };
    for address in except.iter().filter(|a| *a != "*") {
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
