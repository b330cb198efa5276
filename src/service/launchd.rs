//! `manager "launchd"`: a LaunchAgent, `~/Library/LaunchAgents/dev.plasma.NAME.plist`,
//! loaded into the user's GUI domain with `launchctl bootstrap gui/UID`, as
//! `brew services` does. `RunAtLoad` starts it at login; `KeepAlive` with
//! `SuccessfulExit = false` restarts it when it crashes (launchd.plist(5)).

use std::path::PathBuf;

use plist::{Dictionary, Value};

use super::{Launch, Manager, Record, Running, Started, base_record, run_tool};
use crate::resource::ResourceError;

/// What a plan shows in place of an environment value.
pub const MASK: &str = "(sensitive)";

/// `dev.plasma.NAME`.
pub fn label(name: &str) -> String {
    format!("dev.plasma.{name}")
}

/// `~/Library/LaunchAgents/dev.plasma.NAME.plist`.
pub fn plist_path(name: &str) -> PathBuf {
    crate::spec::reader::home_dir()
        .join("Library")
        .join("LaunchAgents")
        .join(format!("{}.plist", label(name)))
}

/// The plist as XML. `mask` replaces environment values (for plans).
pub fn plist_text(launch: &Launch, mask: bool) -> Result<String, ResourceError> {
    let mut dict = Dictionary::new();
    dict.insert("Label".into(), Value::String(label(&launch.name)));
    dict.insert(
        "ProgramArguments".into(),
        Value::Array(launch.argv.iter().cloned().map(Value::String).collect()),
    );
    dict.insert(
        "WorkingDirectory".into(),
        Value::String(launch.cwd.display().to_string()),
    );
    let mut env = Dictionary::new();
    for (key, value) in &launch.env {
        let value = if mask {
            MASK.to_string()
        } else {
            value.clone()
        };
        env.insert(key.clone(), Value::String(value));
    }
    dict.insert("EnvironmentVariables".into(), Value::Dictionary(env));
    let log = launch.log.display().to_string();
    dict.insert("StandardOutPath".into(), Value::String(log.clone()));
    dict.insert("StandardErrorPath".into(), Value::String(log));
    dict.insert("RunAtLoad".into(), Value::Boolean(true));
    let mut keep_alive = Dictionary::new();
    keep_alive.insert("SuccessfulExit".into(), Value::Boolean(false));
    dict.insert("KeepAlive".into(), Value::Dictionary(keep_alive));
    let mut bytes = Vec::new();
    Value::Dictionary(dict)
        .to_writer_xml(&mut bytes)
        .map_err(|e| ResourceError::new(format!("cannot write the LaunchAgent plist: {e}")))?;
    bytes.push(b'\n');
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn domain() -> String {
    // SAFETY: getuid(2) cannot fail.
    format!("gui/{}", unsafe { libc::getuid() })
}

/// Writes the plist and (re)loads it: `bootout` what runs, then `bootstrap`.
pub async fn start(launch: &Launch) -> Result<Started, ResourceError> {
    let path = plist_path(&launch.name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ResourceError::io("cannot create", dir, e))?;
    }
    crate::fsutil::write_atomic(&path, plist_text(launch, false)?.as_bytes(), Some(0o600))
        .map_err(|e| ResourceError::io("cannot write", &path, e))?;
    let label = label(&launch.name);
    // Not loaded yet is fine.
    let _ = run_tool("launchctl", &["bootout", &format!("{}/{label}", domain())]).await;
    run_tool(
        "launchctl",
        &["bootstrap", &domain(), &path.display().to_string()],
    )
    .await?;
    let mut record = base_record(launch, Manager::Launchd);
    record.unit = Some(path);
    record.label = Some(label);
    Ok(Started {
        record,
        child: None,
    })
}

/// `launchctl print gui/UID/LABEL`: running with its pid, or not.
pub fn status(record: &Record) -> Running {
    let Some(label) = &record.label else {
        return Running::No;
    };
    let Ok(out) = std::process::Command::new("launchctl")
        .args(["print", &format!("{}/{label}", domain())])
        .output()
    else {
        return Running::No;
    };
    if !out.status.success() {
        return Running::No;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.trim().strip_prefix('='))
            .map(|v| v.trim().to_string())
    };
    if value("state").as_deref() != Some("running") {
        return Running::No;
    }
    Running::Yes {
        pid: value("pid").and_then(|p| p.parse().ok()),
    }
}

/// Unloads the agent (its plist stays until `remove`); an agent that is not
/// loaded is fine.
pub async fn stop(record: &Record) -> Result<(), ResourceError> {
    let Some(label) = &record.label else {
        return Ok(());
    };
    let outcome = run_tool("launchctl", &["bootout", &format!("{}/{label}", domain())]).await;
    match outcome {
        Err(e) if status(record).is_running() => Err(e),
        _ => Ok(()),
    }
}
