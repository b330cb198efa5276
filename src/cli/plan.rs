//! `plan` and `drift`: observe and diff, read-only.

use super::*;

/// Load, read state, observe and diff.
pub(super) async fn make_plan(
    env: &Env,
    observe: &ObserveArgs,
    prune: bool,
    locked: bool,
) -> Result<(Loaded, Option<State>, Plan, Vec<Option<Observation>>), Failure> {
    let mut loaded = load(env)?;
    if locked {
        super::lock::require_locked(&mut loaded)?;
    }
    let state = read_state(env, &loaded.state_file)?;
    let selected = engine::select(&loaded, &observe.targets)?;
    let results = engine::observe(&loaded, state.as_ref(), &observe.options(), &selected).await;
    let plan = engine::make_plan(&loaded, &results, state.as_ref(), prune);
    let observations = results
        .into_iter()
        .map(|r| r.and_then(Result::ok))
        .collect();
    Ok((loaded, state, plan, observations))
}

pub(super) async fn plan(
    env: &Env,
    observe: &ObserveArgs,
    out: Option<&Path>,
    detailed: bool,
    prune: bool,
    json: bool,
    locked: bool,
) -> CommandResult {
    let (_, _, plan, _) = make_plan(env, observe, prune, locked).await?;
    if json {
        print_json(&plan);
    } else {
        print!("{}", render::plan(&plan, env.style));
    }
    if let Some(out) = out {
        let text = serde_json::to_vec_pretty(&plan).expect("plans serialise");
        fsutil::write_atomic(out, &text, Some(0o600))
            .map_err(|e| Failure::Message(format!("cannot write {}: {e}", out.display())))?;
        if !json {
            println!(
                "\nSaved the plan to {}. Apply exactly it with `plasma apply {}`.",
                out.display(),
                out.display()
            );
        }
    }
    if !plan.errors.is_empty() {
        return Ok(EXIT_ERROR);
    }
    Ok(if detailed && plan.has_changes() {
        EXIT_CHANGES
    } else {
        EXIT_OK
    })
}

/// `drift`: exit 0 converged, 2 drifted, 1 error. `quiet` prints nothing
/// when converged, so cron mails only when something is wrong.
pub(super) async fn drift(env: &Env, verify: bool, json: bool, quiet: bool) -> CommandResult {
    let observe = ObserveArgs {
        verify,
        ..ObserveArgs::default()
    };
    let (loaded, state, plan, _) = make_plan(env, &observe, false, false).await?;
    let report = DriftReport::from_plan(&loaded, &plan, state.as_ref());
    if json {
        print_json(&report);
    } else if !(quiet && report.converged) {
        print!("{}", report.human());
    }
    Ok(if !report.errors.is_empty() {
        EXIT_ERROR
    } else if report.converged {
        EXIT_OK
    } else {
        EXIT_CHANGES
    })
}
