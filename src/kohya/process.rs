//! Running the trainer in its own process group, so that a kill reaches
//! every process of the run: `accelerate launch` killed alone leaves
//! `train_network.py` running (observed on 3e6935a), and data-loader
//! workers are children of the trainer.
//!
//! A small local helper until the shared `child` module (process groups for
//! every subprocess) lands on main.

use std::os::unix::process::CommandExt;

/// Makes `command` start a new process group whose id is the child's pid.
pub fn own_group(command: &mut tokio::process::Command) {
    command.as_std_mut().process_group(0);
}

/// Sends `signal` to the whole group `pgid`. A group that is already gone
/// is not an error.
pub fn signal_group(pgid: u32, signal: i32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals a process group; it has no
    // memory effects.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Whether any process of group `pgid` is still alive.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(-pgid, 0) == 0 }
}
