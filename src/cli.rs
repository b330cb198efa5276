//! The command line: argument parsing and one function per command.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::apply::{self, ApplyOptions, Outcome, Progress};
use crate::diagnostic::{self, Problem};
use crate::drift::DriftReport;
use crate::engine::{self, EngineError, Loaded, ObserveOptions};
use crate::plan::{Action, PLAN_FORMAT, Plan};
use crate::render::{self, Style};
use crate::resource::Observation;
use crate::spec::LoadError;
use crate::state::State;
use crate::{fsutil, schema};

/// Exit codes shared by `plan --detailed-exitcode` and `drift`.
pub const EXIT_OK: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_CHANGES: u8 = 2;
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser, Debug)]
#[command(
    name = "plasma",
    version,
    about = "Declare your AI image-generation machine; plasma makes it so."
)]
pub struct Cli {
    /// The spec file (default: plasma.kdl here or in a folder above).
    #[arg(short = 'f', long = "file", global = true)]
    pub file: Option<PathBuf>,
    /// The state file (default: .plasma/state.json beside the spec).
    #[arg(long, global = true)]
    pub state: Option<PathBuf>,
    /// When to use colour.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a commented starter plasma.kdl in the current folder.
    Init {
        /// Overwrite an existing plasma.kdl.
        #[arg(long)]
        force: bool,
    },
    /// Load, resolve and lint the spec without touching the machine.
    Validate {
        #[arg(long)]
        json: bool,
    },
    /// Rewrite the spec in canonical KDL formatting.
    Fmt {
        /// Only check; exit 1 when the file would change.
        #[arg(long)]
        check: bool,
    },
    /// Observe the machine and show what apply would change.
    Plan {
        #[command(flatten)]
        observe: ObserveArgs,
        /// Save the plan for `plasma apply FILE`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Exit 0 when converged, 2 when there are changes, 1 on error.
        #[arg(long)]
        detailed_exitcode: bool,
        #[arg(long)]
        json: bool,
    },
    /// Make the machine match the spec (or run a saved plan exactly).
    Apply {
        /// A plan saved by `plasma plan --out`.
        plan_file: Option<PathBuf>,
        #[command(flatten)]
        observe: ObserveArgs,
        /// Apply without asking (required when not on a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
        /// How many resources to apply at once.
        #[arg(long, default_value_t = 4)]
        parallelism: usize,
        /// Delete the files of resources removed from the spec (only those plasma created).
        #[arg(long)]
        prune: bool,
        /// How long to wait for another plasma holding the state lock (e.g. "30s").
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        lock_timeout: Duration,
    },
    /// Say whether the machine still matches: exit 0 converged, 2 drifted, 1 error.
    Drift {
        /// Re-check content that is otherwise trusted from a cache.
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print the resource graph in Graphviz DOT.
    Graph,
    /// Show one resource: what is observed now and what state recorded.
    Show {
        address: String,
        #[arg(long)]
        json: bool,
    },
    /// Inspect or edit the state.
    #[command(subcommand)]
    State(StateCommand),
    /// Print the JSON Schema of an output document (plan, drift, state, validate).
    Schema { name: String },
    /// Write the sha256 recorded at download into plasma.kdl for models that have none.
    Pin,
}

#[derive(clap::Args, Debug, Default)]
pub struct ObserveArgs {
    /// Only this resource and what it depends on (repeatable).
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// Let these resources look upstream over the network (repeatable; no value: all).
    #[arg(long, num_args = 0..=1, default_missing_value = "*")]
    pub refresh: Vec<String>,
    /// Re-check content that is otherwise trusted from a cache.
    #[arg(long)]
    pub verify: bool,
}

impl ObserveArgs {
    fn options(&self) -> ObserveOptions {
        ObserveOptions {
            refresh_all: self.refresh.iter().any(|r| r == "*"),
            refresh: self.refresh.clone(),
            verify: self.verify,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum StateCommand {
    /// List the resources in state.
    List,
    /// Print one resource's state entry as JSON.
    Show { address: String },
    /// Remove a resource from state (its files are kept).
    Rm {
        address: String,
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        lock_timeout: Duration,
    },
}

/// A command's failure, already worded for the user.
#[derive(Debug)]
pub enum Failure {
    /// Problems in the spec, rendered as diagnostics.
    Spec(Vec<Problem>),
    Message(String),
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Load(LoadError::Spec(errors)) => Failure::Spec(errors.problems),
            other => Failure::Message(other.to_string()),
        }
    }
}

impl From<crate::state::StateError> for Failure {
    fn from(e: crate::state::StateError) -> Self {
        Failure::Message(e.to_string())
    }
}

type CommandResult = Result<u8, Failure>;

struct Env {
    cli_file: Option<PathBuf>,
    state: Option<PathBuf>,
    style: Style,
    stderr_color: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let (style, stderr_color) = match cli.color {
        ColorChoice::Always => (Style { color: true }, true),
        ColorChoice::Never => (Style { color: false }, false),
        ColorChoice::Auto => {
            let allowed = std::env::var_os("NO_COLOR").is_none();
            (
                Style {
                    color: allowed && std::io::stdout().is_terminal(),
                },
                allowed && std::io::stderr().is_terminal(),
            )
        }
    };
    let env = Env {
        cli_file: cli.file,
        state: cli.state,
        style,
        stderr_color,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts");
    let result = runtime.block_on(dispatch(cli.command, &env));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Spec(problems)) => {
            eprint!("{}", diagnostic::render(&problems, env.stderr_color));
            let errors = problems.iter().filter(|p| p.is_error()).count();
            eprintln!(
                "Error: the spec has {errors} problem{} (nothing was changed)",
                if errors == 1 { "" } else { "s" }
            );
            ExitCode::from(EXIT_ERROR)
        }
        Err(Failure::Message(message)) => {
            eprintln!("Error: {message}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn dispatch(command: Command, env: &Env) -> CommandResult {
    match command {
        Command::Init { force } => init(force),
        Command::Validate { json } => validate(env, json),
        Command::Fmt { check } => fmt(env, check),
        Command::Plan {
            observe,
            out,
            detailed_exitcode,
            json,
        } => plan(env, &observe, out.as_deref(), detailed_exitcode, json).await,
        Command::Apply {
            plan_file,
            observe,
            yes,
            parallelism,
            prune,
            lock_timeout,
        } => {
            let options = ApplyOptions { parallelism, prune };
            match plan_file {
                Some(file) => apply_saved(env, &file, &options, lock_timeout).await,
                None => apply(env, &observe, yes, &options, lock_timeout).await,
            }
        }
        Command::Drift { verify, json } => drift(env, verify, json).await,
        Command::Graph => {
            let loaded = load(env)?;
            print!("{}", loaded.graph.to_dot(&loaded.spec));
            Ok(EXIT_OK)
        }
        Command::Show { address, json } => show(env, &address, json).await,
        Command::State(cmd) => state_command(env, cmd),
        Command::Pin => pin(env),
        Command::Schema { name } => match schema::by_name(&name) {
            Some(text) => {
                println!("{text}");
                Ok(EXIT_OK)
            }
            None => Err(Failure::Message(format!(
                "no schema called `{name}` (the schemas are: {})",
                schema::NAMES.join(", ")
            ))),
        },
    }
}

fn spec_path(env: &Env) -> Result<PathBuf, Failure> {
    Ok(engine::locate_spec(env.cli_file.as_deref())?)
}

fn load(env: &Env) -> Result<Loaded, Failure> {
    let loaded = engine::load(&spec_path(env)?, env.state.as_deref())?;
    if !loaded.warnings.is_empty() {
        eprint!("{}", diagnostic::render(&loaded.warnings, env.stderr_color));
    }
    Ok(loaded)
}

fn init(force: bool) -> CommandResult {
    let path = PathBuf::from(crate::spec::SPEC_FILE);
    if path.exists() && !force {
        return Err(Failure::Message(format!(
            "{} already exists (use --force to overwrite it)",
            path.display()
        )));
    }
    fsutil::write_atomic(&path, STARTER.as_bytes(), None)
        .map_err(|e| Failure::Message(format!("cannot write {}: {e}", path.display())))?;
    println!(
        "Wrote {}. Next: `plasma validate`, then `plasma plan`.",
        path.display()
    );
    Ok(EXIT_OK)
}

const STARTER: &str = include_str!("starter.kdl");

fn validate(env: &Env, json: bool) -> CommandResult {
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

fn fmt(env: &Env, check: bool) -> CommandResult {
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
    fsutil::write_atomic(&path, formatted.as_bytes(), None)
        .map_err(|e| Failure::Message(format!("cannot write {}: {e}", path.display())))?;
    println!("Formatted {}", path.display());
    Ok(EXIT_OK)
}

/// Load, read state, observe and diff.
async fn make_plan(
    env: &Env,
    observe: &ObserveArgs,
) -> Result<(Loaded, Option<State>, Plan, Vec<Option<Observation>>), Failure> {
    let loaded = load(env)?;
    let state = loaded.state_file.load()?;
    let selected = engine::select(&loaded, &observe.targets)?;
    let results = engine::observe(&loaded, state.as_ref(), &observe.options(), &selected).await;
    let plan = engine::make_plan(&loaded, &results, state.as_ref());
    let observations = results
        .into_iter()
        .map(|r| r.and_then(Result::ok))
        .collect();
    Ok((loaded, state, plan, observations))
}

async fn plan(
    env: &Env,
    observe: &ObserveArgs,
    out: Option<&Path>,
    detailed: bool,
    json: bool,
) -> CommandResult {
    let (_, _, plan, _) = make_plan(env, observe).await?;
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

async fn apply(
    env: &Env,
    observe: &ObserveArgs,
    yes: bool,
    options: &ApplyOptions,
    lock_timeout: Duration,
) -> CommandResult {
    let loaded = load(env)?;
    let _lock = loaded.state_file.lock(lock_timeout, "apply")?;
    let state = loaded.state_file.load()?;
    let selected = engine::select(&loaded, &observe.targets)?;
    let results = engine::observe(&loaded, state.as_ref(), &observe.options(), &selected).await;
    let plan = engine::make_plan(&loaded, &results, state.as_ref());
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
        return Ok(EXIT_OK);
    }
    if !yes {
        confirm()?;
    }
    run_apply(env, &loaded, &plan, &observations, state, options).await
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

async fn apply_saved(
    env: &Env,
    file: &Path,
    options: &ApplyOptions,
    lock_timeout: Duration,
) -> CommandResult {
    let text = std::fs::read(file)
        .map_err(|e| Failure::Message(format!("cannot read the plan {}: {e}", file.display())))?;
    let saved: Plan = serde_json::from_slice(&text).map_err(|e| {
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
    let _lock = loaded.state_file.lock(lock_timeout, "apply")?;
    let state = loaded.state_file.load()?;
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

async fn drift(env: &Env, verify: bool, json: bool) -> CommandResult {
    let observe = ObserveArgs {
        verify,
        ..ObserveArgs::default()
    };
    let (loaded, state, plan, _) = make_plan(env, &observe).await?;
    let report = DriftReport::from_plan(&loaded, &plan, state.as_ref());
    if json {
        print_json(&report);
    } else {
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

async fn show(env: &Env, address: &str, json: bool) -> CommandResult {
    let loaded = load(env)?;
    let state = loaded.state_file.load()?;
    let Some(index) = loaded
        .spec
        .resources
        .iter()
        .position(|r| r.address.to_string() == address)
    else {
        return Err(engine::select(&loaded, &[address.to_string()])
            .err()
            .map_or_else(
                || Failure::Message(format!("no resource `{address}`")),
                Failure::from,
            ));
    };
    let mut selected = vec![false; loaded.spec.resources.len()];
    selected[index] = true;
    let results = engine::observe(
        &loaded,
        state.as_ref(),
        &ObserveOptions::default(),
        &selected,
    )
    .await;
    let observation = results
        .into_iter()
        .nth(index)
        .flatten()
        .expect("the selected resource was observed")
        .map_err(|e| Failure::Message(format!("{address}: {e}")))?;
    let recorded = state.as_ref().and_then(|s| s.resources.get(address));
    let view = schema::ShowReport {
        address: address.to_string(),
        observed: observation.json.clone(),
        desired: loaded.spec.resources[index].resource.desired(),
        state: recorded.cloned(),
    };
    if json {
        print_json(&view);
    } else {
        println!("# {address}");
        println!("observed:");
        print_value(&view.observed, 1);
        println!("desired:");
        print_value(&view.desired, 1);
        match recorded {
            Some(entry) => {
                println!(
                    "last applied: {}",
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(entry.applied_at)
                    )
                );
                println!("outputs:");
                print_value(&serde_json::Value::Object(entry.outputs.clone()), 1);
            }
            None => println!("never applied"),
        }
    }
    Ok(EXIT_OK)
}

/// A JSON value as indented `key: value` lines.
fn print_value(value: &serde_json::Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v {
                    serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                        println!("{pad}{k}:");
                        print_value(v, depth + 1);
                    }
                    serde_json::Value::String(s) => println!("{pad}{k}: {s}"),
                    other => println!("{pad}{k}: {other}"),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                match item {
                    serde_json::Value::String(s) => println!("{pad}- {s}"),
                    serde_json::Value::Object(_) => {
                        println!("{pad}-");
                        print_value(item, depth + 1);
                    }
                    other => println!("{pad}- {other}"),
                }
            }
        }
        serde_json::Value::String(s) => println!("{pad}{s}"),
        other => println!("{pad}{other}"),
    }
}

fn state_command(env: &Env, cmd: StateCommand) -> CommandResult {
    let spec = spec_path(env)?;
    let state_file = match &env.state {
        Some(p) => crate::state::StateFile { path: p.clone() },
        None => crate::state::StateFile::beside(spec.parent().unwrap_or(Path::new("."))),
    };
    let state = state_file.load()?;
    match cmd {
        StateCommand::List => {
            for (address, entry) in state.iter().flat_map(|s| &s.resources) {
                println!(
                    "{address}\t{}",
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(entry.applied_at)
                    )
                );
            }
            Ok(EXIT_OK)
        }
        StateCommand::Show { address } => {
            let entry = state
                .as_ref()
                .and_then(|s| s.resources.get(&address))
                .ok_or_else(|| Failure::Message(format!("`{address}` is not in the state")))?;
            print_json(entry);
            Ok(EXIT_OK)
        }
        StateCommand::Rm {
            address,
            lock_timeout,
        } => {
            let _lock = state_file.lock(lock_timeout, "state rm")?;
            let mut state = state_file
                .load()?
                .ok_or_else(|| Failure::Message("there is no state yet".into()))?;
            if state.resources.remove(&address).is_none() {
                return Err(Failure::Message(format!("`{address}` is not in the state")));
            }
            state_file.save(&mut state)?;
            println!("Removed {address} from the state (its files are kept).");
            Ok(EXIT_OK)
        }
    }
}

/// `plasma pin`: the digests recorded by trust on first use, written into
/// the spec with its comments and layout kept.
fn pin(env: &Env) -> CommandResult {
    use crate::resource::model::Model;
    let loaded = load(env)?;
    let state = loaded.state_file.load()?;
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
    let mode = std::fs::metadata(&loaded.spec.path)
        .ok()
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777);
    fsutil::write_atomic(&loaded.spec.path, pinned.text.as_bytes(), mode).map_err(|e| {
        Failure::Message(format!("cannot write {}: {e}", loaded.spec.path.display()))
    })?;
    for (name, digest) in &pinned.pinned {
        println!("model.{name}: pinned sha256 {digest}");
    }
    println!("Wrote {}.", loaded.spec.path.display());
    Ok(EXIT_OK)
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("outputs serialise")
    );
}
