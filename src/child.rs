//! Every subprocess plasma starts: in its own process group, registered while
//! it runs, and recorded on disk during an apply.
//!
//! Why its own group: a Ctrl-C at a terminal sends SIGINT to the terminal's
//! foreground process group. Children in plasma's group would die mid-checkout
//! or mid-install on the first Ctrl-C; in their own group they are not
//! signalled, so the README's policy holds:
//!
//! - first Ctrl-C: children are not signalled, running work finishes, state is
//!   written, exit 130 (see `apply`);
//! - second Ctrl-C: [`terminate_all`] sends SIGTERM to every registered
//!   child's process group, then SIGKILL after [`TERMINATE_GRACE`], and plasma
//!   exits 130.
//!
//! The other side of the coin is that a child outlives a plasma that is killed
//! (SIGKILL, a closed terminal). During an apply the registry is therefore
//! also written to `<state dir>/children.json` ([`record_in`]); the next apply
//! finds groups left by a plasma that is no longer running and terminates them
//! before it touches anything, so it never races an orphan.
//!
//! API, for any code that runs a program:
//! - [`output`] / [`output_async`]: run a `std` / `tokio` command to completion
//!   in its own group, registered, and return its [`Output`];
//! - [`spawn`] / [`spawn_async`]: start one and get a handle that unregisters
//!   the child when dropped (wait on `handle.child` yourself);
//! - [`terminate_all`]: terminate every registered group (what the second
//!   Ctrl-C does);
//! - [`ProcessId`]: a pid plus its start time, to tell a live process from a
//!   recycled pid when reading records a previous run left.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long [`terminate_all`] waits after SIGTERM before it sends SIGKILL.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(2);

/// The record file [`record_in`] keeps in the state folder.
const RECORD_FILE: &str = "children.json";

/// A process: its pid and its start time (clock ticks after boot, field 22 of
/// Linux's `/proc/PID/stat`; `None` where that is not available). Two
/// `ProcessId`s with the same pid but different start times are different
/// processes: the pid was reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
}

impl ProcessId {
    /// This plasma process.
    pub fn current() -> ProcessId {
        let pid = std::process::id();
        ProcessId {
            pid,
            started: start_time(pid),
        }
    }

    /// The process `pid` as it is now, if one runs under that pid.
    pub fn of(pid: u32) -> Option<ProcessId> {
        alive(pid).then(|| ProcessId {
            pid,
            started: start_time(pid),
        })
    }

    /// Whether this very process still runs (same pid and, where known, same
    /// start time). A zombie counts as gone.
    pub fn is_running(&self) -> bool {
        match ProcessId::of(self.pid) {
            Some(now) => {
                !is_zombie(self.pid) && (self.started.is_none() || now.started == self.started)
            }
            None => false,
        }
    }
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// `/proc/PID/stat`'s fields after the command name (which may hold spaces).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

fn start_time(pid: u32) -> Option<u64> {
    // Field 22 overall is the 20th after the name (state is field 3).
    stat_fields(pid)?.get(19)?.parse().ok()
}

fn is_zombie(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().map(String::as_str) == Some("Z"))
}

/// One running child: its process group (the child's pid, as it leads it).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    group: ProcessId,
    /// The program, for messages (`git`, `python`).
    program: String,
}

/// What `children.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    plasma: Option<ProcessId>,
    children: Vec<Entry>,
}

struct Registry {
    next: u64,
    running: BTreeMap<u64, Entry>,
    record: Option<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next: 0,
    running: BTreeMap::new(),
    record: None,
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    fn save(&self) {
        let Some(path) = &self.record else { return };
        let record = Record {
            plasma: Some(ProcessId::current()),
            children: self.running.values().cloned().collect(),
        };
        let text = serde_json::to_vec_pretty(&record).expect("records serialise");
        // Best effort: a missing record only costs the next run its orphan check.
        let _ = crate::fsutil::write_atomic(path, &text, Some(0o600));
    }
}

/// A registered child; unregistered when dropped.
#[derive(Debug)]
pub struct Registration {
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = registry();
        registry.running.remove(&self.key);
        registry.save();
    }
}

fn register(pid: u32, program: &std::ffi::OsStr) -> Registration {
    let mut registry = registry();
    let key = registry.next;
    registry.next += 1;
    let program = Path::new(program)
        .file_name()
        .unwrap_or(program)
        .to_string_lossy()
        .into_owned();
    registry.running.insert(
        key,
        Entry {
            group: ProcessId {
                pid,
                started: start_time(pid),
            },
            program,
        },
    );
    registry.save();
    Registration { key }
}

/// A `std` child started by [`spawn`]: wait on `child`; dropping the handle
/// unregisters it (after it has been waited for, or it may outlive plasma).
#[derive(Debug)]
pub struct Running {
    pub child: std::process::Child,
    _registration: Registration,
}

/// A `tokio` child started by [`spawn_async`].
#[derive(Debug)]
pub struct RunningAsync {
    pub child: tokio::process::Child,
    _registration: Registration,
}

/// Starts `cmd` in a process group of its own and registers it.
pub fn spawn(cmd: &mut std::process::Command) -> io::Result<Running> {
    use std::os::unix::process::CommandExt;
    let child = cmd.process_group(0).spawn()?;
    let registration = register(child.id(), cmd.get_program());
    Ok(Running {
        child,
        _registration: registration,
    })
}

/// Starts `cmd` in a process group of its own and registers it.
pub fn spawn_async(cmd: &mut tokio::process::Command) -> io::Result<RunningAsync> {
    let child = cmd.process_group(0).spawn()?;
    let program = cmd.as_std().get_program().to_os_string();
    let registration = register(child.id().unwrap_or_default(), &program);
    Ok(RunningAsync {
        child,
        _registration: registration,
    })
}

/// Runs `cmd` to completion in its own process group, registered while it
/// runs, like [`std::process::Command::output`] (standard output and error are
/// captured unless `cmd` set them).
pub fn output(cmd: &mut std::process::Command) -> io::Result<Output> {
    use std::process::Stdio;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let running = spawn(cmd)?;
    running.child.wait_with_output()
}

/// [`output`] for a `tokio` command.
pub async fn output_async(cmd: &mut tokio::process::Command) -> io::Result<Output> {
    use std::process::Stdio;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let running = spawn_async(cmd)?;
    running.child.wait_with_output().await
}

/// Whether any process is in the group `group` leads (or led).
fn group_exists(group: u32) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(group) else {
        return false;
    };
    // SAFETY: signal 0 to a process group only checks that it exists.
    pgid > 0 && unsafe { libc::kill(-pgid, 0) } == 0
}

fn signal_group(group: u32, signal: libc::c_int) {
    if let Ok(pgid) = libc::pid_t::try_from(group)
        && pgid > 0
    {
        // SAFETY: sends a signal to a process group plasma created.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// Sends SIGTERM to each group, waits up to `grace` for them to end, then
/// SIGKILLs what is left. Returns how many groups were signalled.
fn terminate_groups(groups: &[u32], grace: Duration) -> usize {
    let live: Vec<u32> = groups
        .iter()
        .copied()
        .filter(|g| group_exists(*g))
        .collect();
    for group in &live {
        signal_group(*group, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && live.iter().any(|g| group_exists(*g)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for group in &live {
        if group_exists(*group) {
            signal_group(*group, libc::SIGKILL);
        }
    }
    live.len()
}

/// Terminates every registered child's process group: SIGTERM, then SIGKILL
/// after `grace`. What the second Ctrl-C does before plasma exits.
pub fn terminate_all(grace: Duration) {
    let groups: Vec<u32> = registry().running.values().map(|e| e.group.pid).collect();
    terminate_groups(&groups, grace);
}

/// Keeps the registry in `<dir>/children.json` from now on, after terminating
/// what a previous plasma recorded there if that plasma no longer runs (an
/// apply that was killed): its children are orphans and would race this run.
/// Returns a sentence saying what was terminated, if anything.
pub fn record_in(dir: &Path) -> Option<String> {
    let path = dir.join(RECORD_FILE);
    let message = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Record>(&bytes)
            .ok()
            .and_then(|r| terminate_orphans(&r)),
        Err(_) => None,
    };
    let mut registry = registry();
    registry.record = Some(path);
    registry.save();
    message
}

fn terminate_orphans(record: &Record) -> Option<String> {
    if record.plasma.is_some_and(|p| p.is_running()) {
        return None; // another plasma: never ours to touch
    }
    let groups: Vec<u32> = record
        .children
        .iter()
        .filter(|e| {
            // The leader still runs as the very process recorded, or it is gone
            // but its group is not (a pid cannot be reused while its group lives).
            e.group.is_running()
                || (ProcessId::of(e.group.pid).is_none() && group_exists(e.group.pid))
        })
        .map(|e| e.group.pid)
        .collect();
    let programs: Vec<&str> = record
        .children
        .iter()
        .filter(|e| groups.contains(&e.group.pid))
        .map(|e| e.program.as_str())
        .collect();
    match terminate_groups(&groups, TERMINATE_GRACE) {
        0 => None,
        n => Some(format!(
            "stopped {n} process group{} ({}) that an interrupted plasma run left running",
            if n == 1 { "" } else { "s" },
            programs.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_running_and_a_changed_start_time_is_another_process() {
        let me = ProcessId::current();
        assert!(me.is_running());
        if let Some(started) = me.started {
            let recycled = ProcessId {
                pid: me.pid,
                started: Some(started + 1),
            };
            assert!(!recycled.is_running());
        }
    }

    #[test]
    fn a_child_runs_in_its_own_group_registered_until_dropped() {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("5");
        let mut running = spawn(&mut cmd).unwrap();
        let pid = running.child.id();
        // Field 5 of /proc/PID/stat (the 3rd after the name) is the process group.
        let pgrp: u32 = stat_fields(pid).unwrap()[2].parse().unwrap();
        assert_eq!(pgrp, pid);
        assert!(registry().running.values().any(|e| e.group.pid == pid));
        terminate_groups(&[pid], Duration::from_secs(1));
        assert!(!running.child.wait().unwrap().success());
        drop(running);
        assert!(registry().running.values().all(|e| e.group.pid != pid));
    }
}
