//! The trainer's command line: `accelerate launch [--config_file F] SCRIPT
//! ARGS…` or `python SCRIPT ARGS…`, both from the venv's `bin/`, run in the
//! script's folder (sd-scripts imports `library` and `networks` from there).

use std::path::{Path, PathBuf};

/// How the script is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launcher {
    /// `accelerate launch`, with accelerate's config file (`None`: its default,
    /// `~/.cache/huggingface/accelerate/default_config.yaml`).
    Accelerate { config: Option<PathBuf> },
    /// The venv's Python directly (one process).
    Python,
}

/// One argument of `train_network.py`: `--name=value`, or `--name` for a flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub name: String,
    pub value: Option<String>,
}

impl Arg {
    pub fn flag(name: &str) -> Arg {
        Arg {
            name: name.to_string(),
            value: None,
        }
    }

    pub fn value(name: &str, value: impl ToString) -> Arg {
        Arg {
            name: name.to_string(),
            value: Some(value.to_string()),
        }
    }

    fn render(&self) -> String {
        match &self.value {
            Some(v) => format!("--{}={v}", self.name),
            None => format!("--{}", self.name),
        }
    }
}

/// A complete invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The working folder: the script's.
    pub cwd: PathBuf,
    /// Variables added to plasma's environment.
    pub env: Vec<(String, String)>,
}

/// Builds the invocation of `script` with `args` (rendered in order) and
/// `extra` (passed verbatim after them).
pub fn build(
    launcher: &Launcher,
    venv: &Path,
    script: &Path,
    args: &[Arg],
    extra: &[String],
    env: &[(String, String)],
) -> Invocation {
    let bin = venv.join("bin");
    let (program, mut argv) = match launcher {
        Launcher::Accelerate { config } => {
            let mut argv = vec!["launch".to_string()];
            if let Some(config) = config {
                argv.push("--config_file".into());
                argv.push(config.display().to_string());
            }
            (bin.join("accelerate"), argv)
        }
        Launcher::Python => (bin.join("python"), Vec::new()),
    };
    argv.push(script.display().to_string());
    argv.extend(args.iter().map(Arg::render));
    argv.extend(extra.iter().cloned());
    Invocation {
        program,
        args: argv,
        cwd: script
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        env: env.to_vec(),
    }
}

impl Invocation {
    /// The command as a user would paste it into a POSIX shell:
    /// `cd DIR && VAR=value program args…`, each word quoted when needed.
    pub fn shell_line(&self) -> String {
        let mut words = vec![
            "cd".to_string(),
            quote(&self.cwd.display().to_string()),
            "&&".to_string(),
        ];
        for (k, v) in &self.env {
            words.push(format!("{k}={}", quote(v)));
        }
        words.push(quote(&self.program.display().to_string()));
        words.extend(self.args.iter().map(|a| quote(a)));
        words.join(" ")
    }
}

/// Single-quotes a word for a POSIX shell unless it is plain.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accelerate_invocation_runs_in_the_scripts_folder() {
        let inv = build(
            &Launcher::Accelerate {
                config: Some("/c/default_config.yaml".into()),
            },
            Path::new("/v"),
            Path::new("/k/sd-scripts/train_network.py"),
            &[Arg::value("network_dim", 32), Arg::flag("no_half_vae")],
            &["--noise_offset=0.05".into()],
            &[("PYTORCH_ENABLE_MPS_FALLBACK".into(), "1".into())],
        );
        assert_eq!(inv.program, PathBuf::from("/v/bin/accelerate"));
        assert_eq!(inv.cwd, PathBuf::from("/k/sd-scripts"));
        assert_eq!(
            inv.shell_line(),
            "cd /k/sd-scripts && PYTORCH_ENABLE_MPS_FALLBACK=1 /v/bin/accelerate launch \
             --config_file /c/default_config.yaml /k/sd-scripts/train_network.py \
             --network_dim=32 --no_half_vae --noise_offset=0.05"
        );
    }

    #[test]
    fn words_with_spaces_and_quotes_are_quoted() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
