//! `manager "systemd"`: a systemd user unit, `plasma-NAME.service` under
//! `~/.config/systemd/user/`, enabled (it starts again at login/boot with
//! lingering) and driven with `systemctl --user`. The unit file is owned by
//! plasma; its text is what a plan compares, with environment values masked
//! when shown.

use std::path::{Path, PathBuf};

use super::{Launch, Manager, Record, Running, Started, base_record, run_tool};
use crate::resource::ResourceError;

/// What a plan shows in place of an environment value.
pub const MASK: &str = "(sensitive)";

/// Whether a user systemd runs for this user: its private socket exists
/// (`$XDG_RUNTIME_DIR/systemd/private`, systemd(1)). No subprocess.
pub fn user_manager_runs() -> bool {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        // SAFETY: getuid(2) cannot fail.
        .unwrap_or_else(|| PathBuf::from(format!("/run/user/{}", unsafe { libc::getuid() })));
    runtime.join("systemd").join("private").exists()
}

/// `plasma-NAME.service`.
pub fn unit_name(name: &str) -> String {
    format!("plasma-{name}.service")
}

/// `$XDG_CONFIG_HOME/systemd/user/plasma-NAME.service` (default `~/.config`).
pub fn unit_path(name: &str) -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| crate::spec::reader::home_dir().join(".config"));
    config.join("systemd").join("user").join(unit_name(name))
}

/// The unit file's text. `mask` replaces environment values (for plans).
pub fn unit_text(launch: &Launch, mask: bool) -> String {
    let exec: Vec<String> = launch.argv.iter().map(|a| quote(a)).collect();
    let mut text = format!(
        "# Written by plasma for service.{name}; plasma owns this file.\n\
         [Unit]\n\
         Description=plasma service {name}\n\
         \n\
         [Service]\n\
         Type=simple\n\
         WorkingDirectory={cwd}\n\
         ExecStart={exec}\n",
        name = launch.name,
        cwd = escape_specifiers(&launch.cwd.display().to_string()),
        exec = exec.join(" "),
    );
    for (key, value) in &launch.env {
        let value = if mask { MASK } else { value };
        text.push_str(&format!(
            "Environment={}\n",
            quote(&format!("{key}={value}"))
        ));
    }
    let log = escape_specifiers(&launch.log.display().to_string());
    text.push_str(&format!(
        "StandardOutput=append:{log}\n\
         StandardError=append:{log}\n\
         Restart=on-failure\n\
         RestartSec=5\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n"
    ));
    text
}

/// One word in systemd's quoting (systemd.syntax(7)): double quotes, with
/// `\`, `"` escaped, `%` doubled (specifiers) and `$` doubled (variables).
fn quote(word: &str) -> String {
    let escaped = word
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .replace('$', "$$");
    format!("\"{}\"", escape_specifiers(&escaped))
}

fn escape_specifiers(text: &str) -> String {
    text.replace('%', "%%")
}

/// Writes the unit, reloads systemd, enables and (re)starts the unit.
pub async fn start(launch: &Launch) -> Result<Started, ResourceError> {
    let path = unit_path(&launch.name);
    write_unit(&path, &unit_text(launch, false))?;
    let unit = unit_name(&launch.name);
    run_tool("systemctl", &["--user", "daemon-reload"]).await?;
    run_tool("systemctl", &["--user", "enable", &unit]).await?;
    run_tool("systemctl", &["--user", "restart", &unit]).await?;
    let mut record = base_record(launch, Manager::Systemd);
    record.unit = Some(path);
    record.label = Some(unit);
    Ok(Started {
        record,
        child: None,
    })
}

fn write_unit(path: &Path, text: &str) -> Result<(), ResourceError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ResourceError::io("cannot create", dir, e))?;
    }
    // 0600: the unit holds the environment's values.
    crate::fsutil::write_atomic(path, text.as_bytes(), Some(0o600))
        .map_err(|e| ResourceError::io("cannot write", path, e))
}

/// `systemctl --user show`: active with its main pid, or not.
pub fn status(record: &Record) -> Running {
    let Some(unit) = &record.label else {
        return Running::No;
    };
    let Ok(out) = std::process::Command::new("systemctl")
        .args(["--user", "show", "-p", "ActiveState", "-p", "MainPID", unit])
        .output()
    else {
        return Running::No;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    if field("ActiveState").as_deref() != Some("active") {
        return Running::No;
    }
    let pid = field("MainPID")
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != 0);
    Running::Yes { pid }
}

pub async fn stop(record: &Record) -> Result<(), ResourceError> {
    if let Some(unit) = &record.label {
        run_tool("systemctl", &["--user", "stop", unit]).await?;
    }
    Ok(())
}

/// Disables the unit, deletes its file and reloads systemd.
pub async fn remove(record: &Record, path: &Path) -> Result<(), ResourceError> {
    if let Some(unit) = &record.label {
        // Disabling a unit whose file is already gone fails; that is fine.
        let _ = run_tool("systemctl", &["--user", "disable", unit]).await;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ResourceError::io("cannot delete", path, e)),
    }
    run_tool("systemctl", &["--user", "daemon-reload"]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("50%"), "\"50%%\"");
        assert_eq!(quote("$HOME"), "\"$$HOME\"");
        assert_eq!(quote("say \"hi\""), "\"say \\\"hi\\\"\"");
    }
}
