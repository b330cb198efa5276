//! Signals to the trainer's process group (started in a group of its own
//! by [`crate::child::spawn_async`]), so that a stop reaches every process
//! of the run: `accelerate launch` killed alone leaves `train_network.py`
//! running (observed on 3e6935a), and data-loader workers are children of
//! the trainer.

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
