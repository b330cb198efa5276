//! Interrupted applies: SIGKILL at random points, Ctrl-C at a real terminal
//! (a pty), and what a killed run leaves behind (a half checkout, git's
//! `index.lock`, a temporary clone folder, orphaned children). The next apply
//! finishes plasma's own work, and never loses a file of the user's.

use crate::support::gitfix;
use crate::support::pyfix::python_version;
use crate::support::sandbox;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gitfix::{GitFixture, git};
use sandbox::Sandbox;

fn repo_spec(url: &str, rev: &str, extra: &str) -> String {
    format!(
        "repo kohya {{\n    url \"{url}\"\n    rev \"{rev}\"\n    path \"tools/kohya_ss\"\n{extra}}}\n"
    )
}

fn head(path: &Path) -> String {
    git(path, &["rev-parse", "HEAD"])
}

/// Installs a `git` in `bin` that, for a `checkout`, writes its pid to `mark`
/// and sleeps `seconds` before running the real git: a slow checkout, long
/// enough to be interrupted. Returns a PATH with it first.
fn slow_checkout_git(bin: &Path, mark: &Path, seconds: u32) -> String {
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    fs::create_dir_all(bin).unwrap();
    let script = bin.join("git");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \" $* \" in *' checkout '*) echo $$ > '{mark}.tmp'; mv '{mark}.tmp' '{mark}'; sleep {seconds};; esac\nexec '{real}' \"$@\"\n",
            mark = mark.display(),
            real = real.trim()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap())
}

/// What a plasma run on a pty printed and how it ended.
struct PtyRun {
    output: String,
    code: i32,
}

/// Runs plasma with `args` on a new pseudo-terminal (as its controlling
/// terminal, in the foreground), waits until `mark` exists, then types Ctrl-C
/// `presses` times (0.3 s apart), and waits for plasma to exit. Python's `pty`
/// module does the terminal work.
fn run_on_pty(sb: &Sandbox, args: &[&str], path_env: &str, mark: &Path, presses: u32) -> PtyRun {
    const DRIVER: &str = r#"
import os, pty, select, sys, time
mark, presses, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
out = bytearray()
def pump(timeout):
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return True
    try:
        data = os.read(fd, 65536)
    except OSError:
        return False
    out.extend(data)
    return bool(data)
deadline = time.time() + 60
while not os.path.exists(mark) and time.time() < deadline:
    if not pump(0.05):
        break
for i in range(presses):
    if i:
        end = time.time() + 0.3
        while time.time() < end and pump(0.05):
            pass
    os.write(fd, b"\x03")
while pump(0.1):
    pass
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace"))
sys.stdout.write("\nEXIT=%d\n" % os.waitstatus_to_exitcode(status))
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(DRIVER)
        .arg(mark)
        .arg(presses.to_string())
        .arg(env!("CARGO_BIN_EXE_plasma"))
        .args(args)
        .current_dir(sb.root())
        .env("HOME", sb.home())
        .env("NO_COLOR", "1")
        .env("PATH", path_env)
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let code = text
        .rsplit("EXIT=")
        .next()
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(-1);
    PtyRun { output: text, code }
}

fn process_exists(pid: &str) -> bool {
    Path::new(&format!("/proc/{}", pid.trim())).exists()
        && !fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn a_first_ctrl_c_at_a_terminal_lets_the_checkout_finish_then_exits_130() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.26", ""));
    sb.run(&["apply", "--yes"]).code(0);
    let clone = sb.path("tools/kohya_ss");
    assert_eq!(head(&clone), fx.c1);

    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));
    let mark = sb.path("checkout-started");
    let path = slow_checkout_git(&sb.path("bin"), &mark, 2);
    let run = run_on_pty(&sb, &["apply", "--yes"], &path, &mark, 1);

    assert_eq!(run.code, 130, "{}", run.output);
    assert!(run.output.contains("Interrupted"), "{}", run.output);
    // Had the Ctrl-C reached git (plasma's process group), the checkout would
    // have died inside the slow wrapper and the clone would still be at v0.3.26.
    assert_eq!(head(&clone), fx.c2, "{}", run.output);
    assert!(clone.join("sd-scripts/train_network.py").is_file());
    assert_eq!(
        sb.state()["resources"]["repo.kohya"]["outputs"]["commit"],
        fx.c2.as_str()
    );
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn a_second_ctrl_c_terminates_the_running_git_and_the_next_apply_finishes_it() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.26", ""));
    sb.run(&["apply", "--yes"]).code(0);
    let clone = sb.path("tools/kohya_ss");

    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));
    let mark = sb.path("checkout-started");
    let path = slow_checkout_git(&sb.path("bin"), &mark, 30);
    let started = Instant::now();
    let run = run_on_pty(&sb, &["apply", "--yes"], &path, &mark, 2);
    assert_eq!(run.code, 130, "{}", run.output);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "plasma waited for its child instead of terminating it"
    );
    let git_pid = fs::read_to_string(&mark).unwrap();
    assert!(
        !process_exists(&git_pid),
        "the git plasma started (pid {git_pid}) outlived it"
    );
    // The interrupted checkout is plasma's to finish, not local changes.
    let plan = sb.run(&["plan"]);
    plan.code(0);
    assert!(
        plan.stdout.contains("half-way through checkout"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(head(&clone), fx.c2);
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn a_first_ctrl_c_at_a_terminal_lets_a_venv_creation_finish() {
    let sb = Sandbox::new();
    sb.spec(&format!(
        "venv app {{\n    path \"venv\"\n    python \"{}\"\n    installer \"pip\"\n}}\n",
        python_version()
    ));
    // `python -m venv` (the pip installer's way, also when uv is on PATH)
    // writes pyvenv.cfg first, then spends seconds in ensurepip.
    let mark = sb.path("venv/pyvenv.cfg");
    let path = std::env::var("PATH").unwrap();
    let run = run_on_pty(&sb, &["apply", "--yes"], &path, &mark, 1);
    assert_eq!(run.code, 130, "{}", run.output);
    assert!(!run.output.contains("Traceback"), "{}", run.output);
    assert!(!run.output.contains("1 failed"), "{}", run.output);
    // A Ctrl-C that reached Python would have stopped ensurepip: no pip.
    assert!(sb.path("venv/bin/python").exists(), "{}", run.output);
    assert!(
        fs::read_dir(sb.path("venv/bin"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("pip")),
        "{}",
        run.output
    );
    assert!(sb.state()["resources"]["venv.app"].is_object());
}

/// Files of the user's in the clone, which no kill may lose: an untracked
/// file at the top, an ignored one inside the submodule, and a tracked edit
/// of a file no rev changes.
fn plant_user_files(clone: &Path) -> Vec<(PathBuf, String)> {
    let files = vec![
        (clone.join("notes.txt"), "my notes\n".to_string()),
        (
            clone.join("sd-scripts/outputs/lora.safetensors"),
            "weights\n".to_string(),
        ),
    ];
    let exclude = git(
        &clone.join("sd-scripts"),
        &["rev-parse", "--git-path", "info/exclude"],
    );
    let exclude = clone.join("sd-scripts").join(exclude);
    fs::create_dir_all(exclude.parent().unwrap()).unwrap();
    fs::write(&exclude, "outputs/\n").unwrap();
    for (path, text) in &files {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    files
}

fn kill_group(pid: u32) {
    // SAFETY: signals the process group this test created for plasma.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

#[test]
fn sigkill_of_plasmas_process_group_at_random_points_never_wedges_a_clone_or_loses_a_file() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    let keep = "    on-dirty \"keep\"\n";
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", keep));
    sb.run(&["apply", "--yes"]).code(0);
    let clone = sb.path("tools/kohya_ss");
    let user_files = plant_user_files(&clone);

    // Between v0.3.27 and main, main.py, sd-scripts (S1 -> S2) and its nested
    // submodule's checkout change: checkouts and submodule updates.
    let revs = [("main", &fx.c3), ("v0.3.27", &fx.c2)];
    // Kill points are spread over how long one such apply takes on this
    // machine (measured here: it is milliseconds on an idle machine and
    // seconds on a loaded one), so most kills land inside the apply.
    let mut longest = Duration::ZERO;
    for (rev, _) in revs {
        sb.spec(&repo_spec(&fx.file_url(), rev, keep));
        let started = std::time::Instant::now();
        sb.run(&["apply", "--yes"]).code(0);
        longest = longest.max(started.elapsed());
    }
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let rounds = 32;
    let mut interrupted = 0;
    for round in 0..rounds {
        let (rev, commit) = revs[round % 2];
        sb.spec(&repo_spec(&fx.file_url(), rev, keep));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = longest.mul_f64((seed % 1000) as f64 / 1000.0);
        let mut child = sb
            .command(&["apply", "--yes"])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            kill_group(child.id());
            interrupted += 1;
        }
        let _ = child.wait();

        // A child forked by the killed plasma holds its lock until it execs
        // (microseconds, longer on a loaded machine): wait for the lock.
        let next = sb.run(&["apply", "--yes", "--lock-timeout", "10s"]);
        assert_eq!(
            next.code, 0,
            "round {round} (killed after {delay:?}): the next apply did not converge\n{}\n{}",
            next.stdout, next.stderr
        );
        assert_eq!(head(&clone), *commit, "round {round}");
        for (path, text) in &user_files {
            assert_eq!(
                fs::read_to_string(path).ok().as_deref(),
                Some(text.as_str()),
                "round {round}: {} was lost",
                path.display()
            );
        }
        assert!(!clone.join(".git/index.lock").exists(), "round {round}");
    }
    assert!(
        interrupted >= rounds / 2,
        "only {interrupted} runs were killed"
    );
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
    let leftovers: Vec<String> = fs::read_dir(sb.path("tools"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("plasma-clone"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_killed_clone_leaves_a_temporary_folder_that_the_next_apply_removes_saying_so() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));
    // What a clone killed half-way leaves: a folder owned by a dead process.
    let orphan = sb.path("tools/.kohya_ss.plasma-clone-999999-1-0.disabled");
    fs::create_dir_all(orphan.join(".git")).unwrap();
    let plan = sb.run(&["plan"]);
    plan.code(0);
    assert!(
        plan.stdout
            .contains("remove 1 temporary folder(s) an interrupted clone left"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert!(!orphan.exists());
    assert_eq!(head(&sb.path("tools/kohya_ss")), fx.c2);
}

#[test]
fn a_stale_lock_of_plasmas_own_killed_checkout_is_repaired_but_a_users_lock_or_rebase_is_refused() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));
    sb.run(&["apply", "--yes"]).code(0);
    let clone = sb.path("tools/kohya_ss");

    // A lock plasma did not leave: refused, even under reset, naming the file.
    let lock = clone.join(".git/index.lock");
    fs::write(&lock, "").unwrap();
    sb.spec(&repo_spec(
        &fx.file_url(),
        "main",
        "    on-dirty \"reset\"\n",
    ));
    let plan = sb.run(&["plan"]);
    plan.code(1);
    assert!(
        format!("{}{}", plan.stdout, plan.stderr).contains("index.lock exists"),
        "{plan:?}"
    );
    fs::remove_file(&lock).unwrap();

    // A half checkout by a plasma that was killed: its record names a dead
    // process; git's lock and hundreds of changed files are plasma's own.
    git(&clone, &["read-tree", &fx.c1]); // the index of a half-done move
    fs::write(clone.join("main.py"), "half written").unwrap();
    fs::write(&lock, "").unwrap();
    fs::write(
        clone.join(".git/plasma-operation.json"),
        format!(
            "{{\"by\":{{\"pid\":999999,\"started\":1}},\"what\":\"checkout {}\",\"to\":\"{}\",\"submodules\":true}}",
            &fx.c3[..7],
            fx.c3
        ),
    )
    .unwrap();
    let plan = sb.run(&["plan"]);
    plan.code(0);
    assert!(
        plan.stdout.contains("half-way through checkout"),
        "{}",
        plan.stdout
    );
    assert!(!plan.stdout.contains("local change"), "{}", plan.stdout);
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(head(&clone), fx.c3);
    assert!(!lock.exists());
    sb.run(&["plan", "--detailed-exitcode"]).code(0);

    // A rebase of the user's in progress: refused.
    fs::create_dir_all(clone.join(".git/rebase-merge")).unwrap();
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));
    let plan = sb.run(&["plan"]);
    plan.code(1);
    assert!(
        format!("{}{}", plan.stdout, plan.stderr).contains("in the middle of a rebase"),
        "{plan:?}"
    );
}
