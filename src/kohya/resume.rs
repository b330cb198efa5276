//! Resuming a stopped run from its newest saved accelerate state, as far as
//! sd-scripts 3e6935a resumes correctly.
//!
//! What the trainer does (read in `train_network.py` and
//! `library/train_util.py` at 3e6935a; contract §5): with `--save_state`,
//! each checkpoint save also writes an accelerate state folder
//! `{name}-step{N:08}-state` (`{name}-{E:06}-state` at epoch saves, and
//! `{name}-state` at the end) holding the network weights, optimizer,
//! scheduler, RNG (`random_states_0.pkl`, written last) and
//! `train_state.json` = `{"current_epoch": E, "current_step": S}`.
//! `--resume DIR` loads it and reads `S`. Then:
//!
//! - without `--skip_until_initial_step`, `global_step` restarts at 0 (the
//!   step files are numbered again from 1 and the run trains `max_train_steps`
//!   more steps);
//! - with it, the trainer skips `S × gradient_accumulation_steps` batches and
//!   sets `global_step` to what is left of that after whole epochs are taken
//!   off: right (`S`) while `S` lies in the first epoch with no gradient
//!   accumulation, wrong past it (`S` minus the skipped epochs' batches) or
//!   with accumulation (the batch count, not the step).
//!
//! So plasma resumes, with `--resume DIR --skip_until_initial_step`, only
//! from a state inside the first epoch of a run without gradient
//! accumulation; otherwise it starts over and says why. It recognises a
//! state of the very run it is about to repeat through the run file it keeps
//! beside the checkpoints while a run is going ([`RunFile`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The file accelerate's `save_state` writes last into a state folder (the
/// RNG state of process 0): a folder without it was cut short.
const LAST_WRITTEN: &str = "random_states_0.pkl";

/// sd-scripts' own record of the step a state was saved at.
const TRAIN_STATE: &str = "train_state.json";

/// What plasma keeps beside the checkpoints while a run goes:
/// `{output}/{name}.plasma-run.json`. Removed when the run succeeds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunFile {
    /// The inputs' fingerprint: a state is resumed only for the same inputs.
    pub fingerprint: String,
    /// When the run (its first part, for a resumed run) started, in seconds
    /// since the Unix epoch: files older than this are not the run's.
    pub started: u64,
    /// `(step, average loss)` shown so far, kept at each checkpoint save.
    pub losses: Vec<(u64, f64)>,
}

impl RunFile {
    /// Its path for the run named `name` writing into `dir`.
    pub fn path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.plasma-run.json"))
    }

    /// The run file at `path`; `None` when absent or unreadable.
    pub fn load(path: &Path) -> Option<RunFile> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Writes it atomically (a kill never leaves half a file).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::fsutil::write_atomic(path, &text, None)
    }

    /// `started` as a time.
    pub fn started_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.started)
    }
}

/// Seconds since the Unix epoch of `time` (0 before it).
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A complete accelerate state folder and the step it was saved at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedState {
    pub dir: PathBuf,
    pub step: u64,
}

/// The complete state folder of `name` in `dir` with the highest step,
/// among those written since `since` (older ones belong to another run).
pub fn newest_state(dir: &Path, name: &str, since: SystemTime) -> Option<SavedState> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix(name).is_some_and(|rest| {
                rest == "-state" || (rest.starts_with('-') && rest.ends_with("-state"))
            })
        })
        .filter_map(|e| {
            let dir = e.path();
            let last = std::fs::metadata(dir.join(LAST_WRITTEN)).ok()?;
            if last.modified().ok()? < since {
                return None;
            }
            let text = std::fs::read(dir.join(TRAIN_STATE)).ok()?;
            let value: serde_json::Value = serde_json::from_slice(&text).ok()?;
            let step = value.get("current_step")?.as_u64()?;
            Some(SavedState { dir, step })
        })
        .max_by_key(|s| s.step)
}

/// What the next run does.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Resume {
    /// Nothing to resume: a run from step 0.
    #[default]
    Fresh,
    /// `--resume DIR --skip_until_initial_step`: the run goes on from there.
    From(SavedState),
    /// A saved state exists but the trainer would resume it wrongly: a run
    /// from step 0, and why.
    StartOver { state: SavedState, why: String },
}

impl Resume {
    /// Decides for a saved `state` of a run of `total` optimization steps,
    /// `steps_per_epoch` steps an epoch, with `accumulation` batches per step.
    pub fn decide(
        state: Option<SavedState>,
        steps_per_epoch: u64,
        total: u64,
        accumulation: u64,
    ) -> Resume {
        let Some(state) = state else {
            return Resume::Fresh;
        };
        let why = if state.step == 0 {
            return Resume::Fresh;
        } else if state.step >= total {
            format!(
                "the newest saved state is at the run's last step ({} of {total}), and the trainer refuses to resume there",
                state.step
            )
        } else if accumulation > 1 {
            format!(
                "sd-scripts 3e6935a resumes with gradient-accumulation-steps {accumulation} at the wrong step (it counts the skipped batches as steps)"
            )
        } else if state.step >= steps_per_epoch {
            format!(
                "the newest saved state (step {}) is past the first epoch ({steps_per_epoch} steps), where sd-scripts 3e6935a resumes with a wrong step count (it would number the rest from step {})",
                state.step,
                state.step % steps_per_epoch
            )
        } else {
            return Resume::From(state);
        };
        Resume::StartOver { state, why }
    }

    /// The trainer arguments that resume, if any.
    pub fn args(&self) -> Vec<super::command::Arg> {
        match self {
            Resume::From(state) => vec![
                super::command::Arg::value("resume", state.dir.display()),
                super::command::Arg::flag("skip_until_initial_step"),
            ],
            _ => Vec::new(),
        }
    }

    /// The step the run goes on from (0 for a run from the start).
    pub fn offset(&self) -> u64 {
        match self {
            Resume::From(state) => state.step,
            _ => 0,
        }
    }

    /// The plan's words for it; `None` for a plain fresh run.
    pub fn describe(&self, total: u64) -> Option<String> {
        match self {
            Resume::Fresh => None,
            Resume::From(s) => Some(format!(
                "resumes at step {} of {total} from {}",
                s.step,
                s.dir.display()
            )),
            Resume::StartOver { why, .. } => Some(format!("starts over: {why}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(dir: &Path, folder: &str, step: u64, complete: bool) -> PathBuf {
        let d = dir.join(folder);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join(TRAIN_STATE),
            format!(r#"{{"current_epoch": 1, "current_step": {step}}}"#),
        )
        .unwrap();
        if complete {
            std::fs::write(d.join(LAST_WRITTEN), b"rng").unwrap();
        }
        d
    }

    #[test]
    fn the_newest_complete_state_of_the_run_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let since = SystemTime::now() - Duration::from_secs(60);
        state(dir.path(), "x-step00000002-state", 2, true);
        let four = state(dir.path(), "x-step00000004-state", 4, true);
        state(dir.path(), "x-step00000006-state", 6, false); // cut short
        state(dir.path(), "xy-step00000008-state", 8, true); // another name
        assert_eq!(
            newest_state(dir.path(), "x", since),
            Some(SavedState { dir: four, step: 4 })
        );
        // Folders from before the run are another run's.
        assert_eq!(
            newest_state(dir.path(), "x", SystemTime::now() + Duration::from_secs(60)),
            None
        );
        assert_eq!(newest_state(&dir.path().join("absent"), "x", since), None);
    }

    #[test]
    fn only_a_state_in_the_first_epoch_without_accumulation_is_resumed() {
        let s = |step| SavedState {
            dir: PathBuf::from("/o/x-state"),
            step,
        };
        assert_eq!(Resume::decide(None, 460, 1840, 1), Resume::Fresh);
        assert_eq!(
            Resume::decide(Some(s(400)), 460, 1840, 1),
            Resume::From(s(400))
        );
        let past = Resume::decide(Some(s(600)), 460, 1840, 1);
        assert!(
            past.describe(1840).unwrap().contains(
                "past the first epoch (460 steps), where sd-scripts 3e6935a resumes with a wrong step count (it would number the rest from step 140)"
            ),
            "{past:?}"
        );
        assert!(matches!(
            Resume::decide(Some(s(200)), 460, 1840, 2),
            Resume::StartOver { .. }
        ));
        assert!(matches!(
            Resume::decide(Some(s(1840)), 460, 1840, 1),
            Resume::StartOver { .. }
        ));
        assert_eq!(Resume::decide(Some(s(400)), 460, 1840, 1).offset(), 400);
        let args: Vec<String> = Resume::From(s(4))
            .args()
            .iter()
            .map(|a| format!("{}={:?}", a.name, a.value))
            .collect();
        assert_eq!(
            args,
            [
                "resume=Some(\"/o/x-state\")",
                "skip_until_initial_step=None"
            ]
        );
    }
}
