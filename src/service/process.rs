//! `manager "process"`: where neither launchd nor a user systemd runs, plasma
//! starts the service itself, detached in its own session (`setsid`), with
//! its output appended to the log. It keeps running after plasma exits. It
//! is recognised later by its pid *and* the start time the OS reports for
//! that pid, so a pid the kernel has since given to another program is never
//! taken for the service. Unlike a supervisor, nothing restarts it if it
//! dies: the next plan reports it as not running and apply starts it.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Launch, Manager, PASSED_THROUGH, Record, Running, Started, base_record, shell_words};
use crate::resource::ResourceError;

/// How long a stopped service may take to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Starts the service detached and records its pid and start time.
pub fn start(launch: &Launch) -> Result<Started, ResourceError> {
    let (program, args) = launch
        .argv
        .split_first()
        .ok_or_else(|| ResourceError::new("the service has an empty command"))?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)
        .map_err(|e| ResourceError::io("cannot open the log", &launch.log, e))?;
    // A header, so the tail of a log shared by several starts says which one it is.
    let _ = writeln!(
        log,
        "--- plasma: starting at {} in {}: {}",
        crate::fsutil::now_rfc3339(),
        launch.cwd.display(),
        shell_words(&launch.argv)
    );
    let stderr = log
        .try_clone()
        .map_err(|e| ResourceError::io("cannot open the log", &launch.log, e))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(&launch.cwd)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr);
    for name in PASSED_THROUGH {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.envs(&launch.env);
    // SAFETY: `setsid` is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| {
        ResourceError::new(format!("cannot start `{program}`: {e}")).help(format!(
            "check the service's command and that {} exists",
            launch.cwd.display()
        ))
    })?;
    let pid = child.id();
    let mut record = base_record(launch, Manager::Process);
    record.pid = Some(pid);
    record.start_time = start_time(pid);
    Ok(Started {
        record,
        child: Some(child),
    })
}

/// Whether the recorded pid still runs the process plasma started.
pub fn status(record: &Record) -> Running {
    let Some(pid) = record.pid else {
        return Running::No;
    };
    match start_time(pid) {
        None => Running::No,
        Some(now) if Some(&now) == record.start_time.as_ref() => Running::Yes { pid: Some(pid) },
        Some(_) => Running::PidReused { pid },
    }
}

/// Sends SIGTERM to the service's process group, waits for it to exit, then
/// SIGKILL after [`STOP_GRACE`].
pub async fn stop(record: &Record) -> Result<(), ResourceError> {
    let Running::Yes { pid: Some(pid) } = status(record) else {
        return Ok(());
    };
    for (signal, wait) in [
        (libc::SIGTERM, STOP_GRACE),
        (libc::SIGKILL, Duration::from_secs(5)),
    ] {
        signal_group(pid, signal);
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            if !status(record).is_running() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Err(ResourceError::new(format!(
        "the service (pid {pid}) did not exit after SIGKILL"
    )))
}

/// Signals the process group the service leads (it called `setsid`), or the
/// pid alone when it has left its group.
fn signal_group(pid: u32, signal: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) with a pid read from our own record; no memory is shared.
    unsafe {
        if libc::kill(-pid, signal) == -1 {
            libc::kill(pid, signal);
        }
    }
}

/// The start time the OS reports for `pid`; `None` when no such process runs
/// (or it is a zombie). Linux: field 22 of `/proc/<pid>/stat` (clock ticks
/// since boot, proc(5)).
#[cfg(target_os = "linux")]
pub fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); starttime is field 22.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(22 - 3).map(|s| s.to_string())
}

/// macOS (and other Unix): `ps -o lstart= -p PID`, the start date to the second.
#[cfg(not(target_os = "linux"))]
pub fn start_time(pid: u32) -> Option<String> {
    let out = Command::new("ps")
        .args(["-o", "lstart=", "-o", "stat=", "-p", &pid.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || text.is_empty() || text.ends_with('Z') {
        return None;
    }
    Some(
        text.rsplit_once(' ')
            .map_or(text.clone(), |(t, _)| t.trim().to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_stable_and_others_differ() {
        let me = std::process::id();
        let first = start_time(me).expect("this process runs");
        assert_eq!(start_time(me), Some(first.clone()));
        let record = Record {
            manager: Manager::Process,
            argv: vec![],
            cwd: ".".into(),
            env_keys: vec![],
            env_digest: String::new(),
            log: "log".into(),
            pid: Some(me),
            start_time: Some(format!("{first}0")),
            unit: None,
            label: None,
        };
        assert_eq!(status(&record), Running::PidReused { pid: me });
    }
}
