//! The command line: argument parsing, dispatch, and how failures are
//! shown. Each group of commands lives in its own file.

mod apply_commands;
mod inspect;
mod lock;
mod plan;
mod spec_file;

use apply_commands::{apply_saved, apply_spec};
use inspect::{show, show_platform, state_command};
use plan::{drift, plan};
use spec_file::{fmt, init, pin, validate};

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
    /// Start a new state when the state file is missing, even though its
    /// backup is there (otherwise an error offers `plasma state restore`).
    #[arg(long, global = true)]
    pub new_state: bool,
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
    /// Write a commented starter spec: plasma.kdl in the current folder, or the -f file.
    Init {
        /// Overwrite an existing spec.
        #[arg(long)]
        force: bool,
    },
    /// Load, resolve and lint the spec without touching the machine.
    Validate {
        /// Print the problems as JSON (`plasma schema validate`) on stdout.
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
        /// Plan as `apply --prune` would: removed resources that plasma
        /// created are deletes, with their paths.
        #[arg(long)]
        prune: bool,
        /// Print the plan as JSON (`plasma schema plan`) on stdout.
        #[arg(long)]
        json: bool,
        /// Fail when plasma.lock does not match the spec (for CI and cron).
        #[arg(long)]
        locked: bool,
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
        /// Run this benchmark (or other run kind) even when nothing it depends on changed.
        #[arg(long, value_name = "ADDRESS")]
        rerun: Vec<String>,
        /// How long to wait for another plasma holding the state lock (e.g. "30s").
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        lock_timeout: Duration,
        /// Apply even though the spec's `platform` is not this machine.
        #[arg(long)]
        ignore_platform: bool,
        /// Fail when plasma.lock does not match the spec, before changing anything.
        #[arg(long)]
        locked: bool,
    },
    /// Resolve what the spec allows into plasma.lock without applying
    /// (venvs with uv for the spec's platform, repos with git ls-remote).
    Lock {
        /// Move these entries (kind.name, repeatable; none: every entry) to
        /// what the spec allows now.
        #[arg(long, num_args = 0.., value_name = "ADDRESS")]
        upgrade: Option<Vec<String>>,
        /// Only check: fail when plasma.lock does not match the spec.
        #[arg(long, conflicts_with = "upgrade")]
        locked: bool,
    },
    /// Say whether the machine still matches: exit 0 converged, 2 drifted, 1 error.
    Drift {
        /// Re-check content that is otherwise trusted from a cache.
        #[arg(long)]
        verify: bool,
        /// Print the report as JSON (`plasma schema drift`) on stdout.
        #[arg(long)]
        json: bool,
        /// Print nothing when the machine matches (for cron: mail only on drift).
        #[arg(long, short = 'q', conflicts_with = "json")]
        quiet: bool,
    },
    /// Print the resource graph in Graphviz DOT.
    Graph,
    /// Show one resource: what is observed now and what state recorded.
    /// `plasma show platform` prints this machine's facts instead.
    Show {
        /// The resource's address, `kind.name` (e.g. `repo.comfyui`).
        address: String,
        /// Print it as JSON (`plasma schema show`) on stdout.
        #[arg(long)]
        json: bool,
        /// For a `lora`: print the exact trainer command line and nothing else.
        #[arg(long)]
        command: bool,
    },
    /// Inspect or edit the state.
    #[command(subcommand)]
    State(StateCommand),
    /// Print the JSON Schema of an output document.
    Schema {
        /// Which document.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(schema::NAMES.iter().copied()))]
        name: String,
    },
    /// Write the sha256 recorded at download into plasma.kdl for models that have none.
    Pin,
}

impl Command {
    /// Whether the command was asked for JSON output.
    fn wants_json(&self) -> bool {
        match self {
            Command::Validate { json }
            | Command::Plan { json, .. }
            | Command::Drift { json, .. }
            | Command::Show { json, .. } => *json,
            _ => false,
        }
    }
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
    Show {
        /// The resource's address, `kind.name`.
        address: String,
    },
    /// Remove a resource from state (its files are kept).
    Rm {
        /// The resource's address, `kind.name`.
        address: String,
        /// How long to wait for another plasma holding the state lock (e.g. "30s").
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        lock_timeout: Duration,
    },
    /// Put the backup (state.json.backup, the state before the last write)
    /// back in place of a missing state.
    Restore {
        /// Replace an existing (e.g. unreadable) state too.
        #[arg(long)]
        force: bool,
        /// How long to wait for another plasma holding the state lock (e.g. "30s").
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
    new_state: bool,
    style: Style,
    stderr_color: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| hint_spec_argument(e).exit());
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
        new_state: cli.new_state,
        style,
        stderr_color,
    };
    let json = cli.command.wants_json();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts");
    let result = runtime.block_on(dispatch(cli.command, &env));
    match result {
        Ok(code) => ExitCode::from(code),
        // `--json` asks for JSON on stdout, failures included.
        Err(Failure::Spec(problems)) if json => {
            print_json(&schema::ValidateReport::new(false, &problems));
            ExitCode::from(EXIT_ERROR)
        }
        Err(Failure::Message(message)) if json => {
            print_json(&schema::ValidateReport::failure(&message));
            ExitCode::from(EXIT_ERROR)
        }
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
        Command::Init { force } => init(env, force),
        Command::Validate { json } => validate(env, json),
        Command::Fmt { check } => fmt(env, check),
        Command::Plan {
            observe,
            out,
            detailed_exitcode,
            prune,
            json,
            locked,
        } => {
            plan(
                env,
                &observe,
                out.as_deref(),
                detailed_exitcode,
                prune,
                json,
                locked,
            )
            .await
        }
        Command::Lock { upgrade, locked } => lock::lock_command(env, upgrade, locked),
        Command::Apply {
            plan_file,
            observe,
            yes,
            parallelism,
            prune,
            rerun,
            lock_timeout,
            ignore_platform,
            locked,
        } => {
            let options = ApplyOptions { parallelism, prune };
            match plan_file {
                Some(_) if !rerun.is_empty() => Err(Failure::Message(
                    "--rerun goes with a plan made now, not with a saved plan".into(),
                )),
                Some(_) if locked => Err(Failure::Message(
                    "--locked goes with `plasma plan --locked --out FILE`, not with a saved plan"
                        .into(),
                )),
                Some(file) => {
                    apply_saved(env, &file, &options, lock_timeout, ignore_platform).await
                }
                None => {
                    apply_spec(
                        env,
                        &observe,
                        &rerun,
                        yes,
                        &options,
                        lock_timeout,
                        ignore_platform,
                        locked,
                    )
                    .await
                }
            }
        }
        Command::Drift {
            verify,
            json,
            quiet,
        } => drift(env, verify, json, quiet).await,
        Command::Graph => {
            let loaded = load(env)?;
            print!("{}", loaded.graph.to_dot(&loaded.spec));
            Ok(EXIT_OK)
        }
        Command::Show { address, json, .. } if address == "platform" => show_platform(json),
        Command::Show {
            address,
            json,
            command,
        } => show(env, &address, json, command).await,
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

/// `plasma plan plasma.kdl`: a spec given where no argument is taken gets
/// a tip to pass it with `-f`.
fn hint_spec_argument(mut error: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::UnknownArgument {
        return error;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg).cloned() else {
        return error;
    };
    if !arg.ends_with(".kdl") {
        return error;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| if a == arg { format!("-f {a}") } else { a })
        .collect();
    error.insert(
        ContextKind::Suggested,
        ContextValue::StyledStrs(vec![
            format!("the spec is given with -f: `plasma {}`", args.join(" ")).into(),
        ]),
    );
    error
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

/// The state, as `--new-state` allows: a missing state with a backup is an
/// error unless the user asked to start over.
fn read_state(env: &Env, state_file: &crate::state::StateFile) -> Result<Option<State>, Failure> {
    Ok(if env.new_state {
        state_file.load_fresh()?
    } else {
        state_file.load()?
    })
}

/// Takes the state lock, saying so when it was taken over from a plasma
/// that ended without releasing it.
fn lock_state(
    state_file: &crate::state::StateFile,
    timeout: Duration,
    command: &str,
) -> Result<crate::state::StateLock, Failure> {
    let lock = state_file.lock(timeout, command)?;
    if let Some(warning) = lock.takeover_warning() {
        eprintln!("Warning: {warning}");
    }
    Ok(lock)
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("outputs serialise")
    );
}
