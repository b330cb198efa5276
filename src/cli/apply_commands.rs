//! `apply`, from the spec or from a saved plan.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) async fn apply_spec(
    env: &Env,
    observe: &ObserveArgs,
    rerun: &[String],
    yes: bool,
    options: &ApplyOptions,
    lock_timeout: Duration,
    ignore_platform: bool,
    locked: bool,
) -> CommandResult {
    let mut loaded = load(env)?;
    check_platform(&loaded, ignore_platform)?;
    if locked {
        super::lock::require_locked(&mut loaded)?;
    }
    let _lock = lock_state(&loaded.state_file, lock_timeout, "apply")?;
    let state = read_state(env, &loaded.state_file)?;
    let mut targets = observe.targets.clone();
    if !targets.is_empty() {
        targets.extend(rerun.iter().cloned());
    }
    let selected = engine::select(&loaded, &targets)?;
    let results = engine::observe(&loaded, state.as_ref(), &observe.options(), &selected).await;
    let mut plan = engine::make_plan(&loaded, &results, state.as_ref(), options.prune);
    for address in rerun {
        engine::force_run(&loaded, &mut plan, address)?;
    }
    print!("{}", render::plan(&plan, env.style));
    if !plan.errors.is_empty() {
        return Err(Failure::Message(
            "the plan has errors; nothing was changed".into(),
        ));
    }
    let observations = results
        .into_iter()
        .map(|r| r.and_then(Result::ok))
        .collect::<Vec<_>>();
    if !plan.has_changes() {
        // Nothing to change, but resources that already match are recorded.
        let mut state = state.unwrap_or_default();
        if apply::record_converged(&loaded, &plan, &observations, &mut state) {
            loaded.state_file.save(&mut state)?;
        }
        super::lock::write_after_apply(&loaded, &state, &plan, &[])?;
        return Ok(EXIT_OK);
    }
    // Before anything changes (and before asking): the state must be writable.
    loaded.state_file.check_writable(state.as_ref())?;
    if !yes {
        confirm()?;
    }
    run_apply(env, &loaded, &plan, &observations, state, options).await
}

/// A spec for another machine is planned under a warning but never applied
/// unless the user says `--ignore-platform`.
fn check_platform(loaded: &Loaded, ignore: bool) -> Result<(), Failure> {
    let facts = crate::platform::current();
    let differences = crate::platform::differences(&loaded.spec.platform, facts);
    if differences.is_empty() {
        return Ok(());
    }
    if ignore {
        eprintln!(
            "Warning: applying a spec for another machine (--ignore-platform): {}",
            differences.join("; ")
        );
        return Ok(());
    }
    Err(Failure::Message(format!(
        "{} is for another machine ({}); this machine is {}. Nothing was changed: \
         fix the spec's `platform`, or pass --ignore-platform to apply it here anyway.",
        loaded.spec.path.display(),
        differences.join("; "),
        facts.summary()
    )))
}

/// Asks for "yes" on a terminal; elsewhere `--yes` is required.
fn confirm() -> Result<(), Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Message(
            "apply needs --yes when it is not run from a terminal (nothing was changed)".into(),
        ));
    }
    print!("\nDo you want to perform these actions? Only 'yes' will be accepted: ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Failure::Message(format!("cannot read the answer: {e}")))?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(Failure::Message(
            "apply cancelled; nothing was changed".into(),
        ))
    }
}

/// Whether a file given as a saved plan is a KDL spec instead.
fn looks_like_spec(file: &Path, text: &[u8]) -> bool {
    file.extension().is_some_and(|e| e == "kdl")
        || std::str::from_utf8(text).is_ok_and(|t| {
            !t.trim_start().starts_with('{')
                && crate::spec::precheck::scan(t).too_deep.is_none()
                && kdl::KdlDocument::parse_v2(t).is_ok()
        })
}

pub(super) async fn apply_saved(
    env: &Env,
    file: &Path,
    options: &ApplyOptions,
    lock_timeout: Duration,
    ignore_platform: bool,
) -> CommandResult {
    if options.prune {
        return Err(Failure::Message(format!(
            "a saved plan already says what it deletes; make it with `plasma plan --prune --out {}` \
             instead of passing --prune to apply (nothing was changed)",
            file.display()
        )));
    }
    let text = std::fs::read(file)
        .map_err(|e| Failure::Message(format!("cannot read the plan {}: {e}", file.display())))?;
    let saved: Plan = serde_json::from_slice(&text).map_err(|e| {
        if looks_like_spec(file, &text) {
            return Failure::Message(format!(
                "{0} is a spec, not a saved plan: `plasma apply FILE` runs a plan saved by `plasma plan --out FILE`; to apply a spec, run `plasma apply -f {0}`",
                file.display()
            ));
        }
        Failure::Message(format!(
            "{} is not a plan saved by `plasma plan --out`: {e}",
            file.display()
        ))
    })?;
    if saved.format_version != PLAN_FORMAT {
        return Err(Failure::Message(format!(
            "{} has plan format {}; this plasma reads format {PLAN_FORMAT}",
            file.display(),
            saved.format_version
        )));
    }
    let spec_file = env
        .cli_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(&saved.basis.spec));
    let loaded = engine::load(&spec_file, env.state.as_deref())?;
    check_platform(&loaded, ignore_platform)?;
    let stale = |why: String| {
        Failure::Message(format!(
            "the saved plan {} is stale: {why}. Nothing was changed; run `plasma plan --out {}` again.",
            file.display(),
            file.display()
        ))
    };
    if loaded.spec.digest() != saved.basis.spec_digest {
        return Err(stale(format!(
            "{} changed since the plan was made",
            loaded.spec.path.display()
        )));
    }
    let _lock = lock_state(&loaded.state_file, lock_timeout, "apply")?;
    let state = read_state(env, &loaded.state_file)?;
    let lineage = state.as_ref().map(|s| s.lineage.clone());
    let serial = state.as_ref().map_or(0, |s| s.serial);
    if lineage != saved.basis.state_lineage || serial != saved.basis.state_serial {
        return Err(stale(format!(
            "the state changed since the plan was made (serial {} then, {serial} now)",
            saved.basis.state_serial
        )));
    }
    let selected: Vec<bool> = loaded
        .spec
        .resources
        .iter()
        .map(|r| saved.get(&r.address.to_string()).is_some())
        .collect();
    let results = engine::observe(
        &loaded,
        state.as_ref(),
        &ObserveOptions::default(),
        &selected,
    )
    .await;
    let mut observations = Vec::new();
    for (declared, result) in loaded.spec.resources.iter().zip(results) {
        let address = declared.address.to_string();
        let observation = match result {
            None => None,
            Some(Ok(o)) => Some(o),
            Some(Err(e)) => return Err(stale(format!("{address} can no longer be observed: {e}"))),
        };
        if let (Some(o), Some(planned)) = (&observation, saved.get(&address))
            && o.fingerprint != planned.fingerprint
        {
            return Err(stale(format!(
                "{address} changed on the machine since the plan was made"
            )));
        }
        observations.push(observation);
    }
    loaded.state_file.check_writable(state.as_ref())?;
    println!("Applying the saved plan {}.", file.display());
    run_apply(env, &loaded, &saved, &observations, state, options).await
}

struct Printer {
    style: Style,
}

impl Progress for Printer {
    fn started(&self, address: &str, action: Action) {
        let verb = match action {
            Action::Create => "Creating",
            Action::Update => "Updating",
            Action::Replace => "Replacing",
            Action::Run => "Running",
            Action::Forget => "Forgetting",
            Action::Delete => "Deleting",
            Action::NoOp => "Checking",
        };
        println!("{address}: {verb}...");
    }

    fn finished(&self, address: &str, outcome: &Outcome) {
        match outcome {
            Outcome::Applied { action, seconds } => {
                let verb = match action {
                    Action::Create => "Created",
                    Action::Update => "Updated",
                    Action::Replace => "Replaced",
                    Action::Run => "Ran",
                    Action::Forget => "Forgotten",
                    Action::Delete => "Deleted",
                    Action::NoOp => "Unchanged",
                };
                println!("{address}: {} [{seconds:.1}s]", self.style.green(verb));
            }
            Outcome::Failed(e) => println!("{address}: {} {e}", self.style.red("failed:")),
            Outcome::Skipped(why) => {
                println!("{address}: {} ({why})", self.style.yellow("skipped"))
            }
        }
    }

    fn interrupted(&self) {
        eprintln!(
            "Interrupted: finishing what is running, then writing state. Press Ctrl-C again to stop at once."
        );
    }
}

async fn run_apply(
    env: &Env,
    loaded: &Loaded,
    plan: &Plan,
    observations: &[Option<Observation>],
    state: Option<State>,
    options: &ApplyOptions,
) -> CommandResult {
    let mut state = state.unwrap_or_default();
    let printer = Printer { style: env.style };
    println!();
    let report = apply::run(loaded, plan, observations, &mut state, options, &printer).await?;
    let applied: Vec<&str> = report
        .outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Applied { .. }))
        .map(|(address, _)| address.as_str())
        .collect();
    super::lock::write_after_apply(loaded, &state, plan, &applied)?;
    let applied = report
        .outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Applied { .. }))
        .count();
    let skipped = report
        .outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Skipped(_)))
        .count();
    let failed = report.failed();
    println!(
        "\n{} {applied} applied, {failed} failed, {skipped} skipped.",
        if failed == 0 && !report.interrupted {
            env.style.green("Apply complete!")
        } else {
            env.style.red("Apply incomplete:")
        }
    );
    for (address, outcome) in &report.outcomes {
        if let Outcome::Failed(e) = outcome {
            eprintln!("Error: {address}: {e}");
            if let Some(help) = &e.help {
                eprintln!("  help: {help}");
            }
        }
    }
    Ok(if report.interrupted {
        EXIT_INTERRUPTED
    } else if failed > 0 {
        EXIT_ERROR
    } else {
        EXIT_OK
    })
}
