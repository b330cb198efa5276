//! The files `train_network.py` writes into `--output_dir` (contract §5):
//! `{name}-step{step:08}.safetensors` every `--save_every_n_steps`, the
//! final `{name}.safetensors`, and with `--save_state` accelerate state
//! folders `{name}-step{step:08}-state` / `{name}-state`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The extension of every model file plasma asks for (`--save_model_as safetensors`).
pub const EXTENSION: &str = "safetensors";

/// The file name of the checkpoint saved at `step`.
pub fn step_file_name(name: &str, step: u64) -> String {
    format!("{name}-step{step:08}.{EXTENSION}")
}

/// The file name of the final model.
pub fn final_file_name(name: &str) -> String {
    format!("{name}.{EXTENSION}")
}

/// One model file found in the output folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    /// The step in the name; `None` for the final file.
    pub step: Option<u64>,
    pub modified: SystemTime,
}

/// The step in a step file's name (`name-step00000200.safetensors` → 200).
pub fn step_of(name: &str, file_name: &str) -> Option<u64> {
    let digits = file_name
        .strip_prefix(name)?
        .strip_prefix("-step")?
        .strip_suffix(&format!(".{EXTENSION}"))?;
    (digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Step files and the final file of `name` in `dir` (none when `dir` is
/// absent: a run killed before its first save leaves no output folder).
pub fn discover(dir: &Path, name: &str) -> io::Result<Vec<Found>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let final_name = final_file_name(name);
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let step = if file_name == final_name {
            None
        } else if let Some(step) = step_of(name, &file_name) {
            Some(step)
        } else {
            continue;
        };
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        found.push(Found {
            path: entry.path(),
            step,
            modified: meta.modified()?,
        });
    }
    found.sort_by_key(|f| f.step.unwrap_or(u64::MAX));
    Ok(found)
}

/// The newest accelerate state folder of `name` in `dir` with its
/// `train_state.json` `current_step`, for `--resume`.
pub fn latest_state(dir: &Path, name: &str) -> Option<(PathBuf, u64)> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(name) && n.ends_with("-state")
        })
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("train_state.json")).ok()?;
            let value: serde_json::Value = serde_json::from_str(&text).ok()?;
            Some((e.path(), value.get("current_step")?.as_u64()?))
        })
        .max_by_key(|(_, step)| *step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_trainer() {
        assert_eq!(
            step_file_name("spyke", 200),
            "spyke-step00000200.safetensors"
        );
        assert_eq!(
            step_of("spyke", "spyke-step00001400.safetensors"),
            Some(1400)
        );
        assert_eq!(step_of("spyke", "spyke.safetensors"), None);
        assert_eq!(step_of("spyke", "spyke_v2-step00001400.safetensors"), None);
    }

    #[test]
    fn discovery_orders_steps_then_final() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "x-step00000020.safetensors",
            "x.safetensors",
            "x-step00000010.safetensors",
            "y.safetensors",
            "x-loss.svg",
        ] {
            std::fs::write(dir.path().join(name), b"m").unwrap();
        }
        let found = discover(dir.path(), "x").unwrap();
        let steps: Vec<Option<u64>> = found.iter().map(|f| f.step).collect();
        assert_eq!(steps, [Some(10), Some(20), None]);
        assert!(
            discover(&dir.path().join("absent"), "x")
                .unwrap()
                .is_empty()
        );
    }
}
