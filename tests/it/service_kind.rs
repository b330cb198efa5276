//! The `service` kind end to end, with the `process` manager (this machine
//! runs no user systemd): plasma starts a **stand-in** for ComfyUI (a small
//! Python HTTP server written below, not ComfyUI) detached, checks its
//! health on 127.0.0.1, and notices when it was killed, changed, or when
//! something it depends on changed. The unit file and plist plasma writes
//! are checked by the tools that read them (`systemd-analyze verify`,
//! Python's `plistlib`). The real ComfyUI runs in `comfyui_real`.

use crate::support::free_port;
use crate::support::gitfix;
use crate::support::sandbox;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use sandbox::{Sandbox, StopServices};

/// A stand-in for ComfyUI's HTTP server, as far as a service needs one: it
/// takes `--listen HOST` and `--port N`, logs to stderr as v0.3.27 does,
/// answers `GET /system_stats` with v0.3.27's shape (contract, last
/// section), and writes what it was started with (argv, `SERVICE_MARK` from
/// its environment) to `started.json` in its working folder. While a file
/// `unhealthy` there holds its pid, it answers 503. `--crash`
/// dies at start as v0.3.27 does without `requests`; `--hang` never answers.
const STANDIN: &str = r#"
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
def opt(name, default):
    return args[args.index(name) + 1] if name in args else default

with open("started.json", "w") as f:
    json.dump({"argv": sys.argv, "mark": os.environ.get("SERVICE_MARK"), "pid": os.getpid()}, f)
print("stand-in for ComfyUI: starting", flush=True, file=sys.stderr)
if "--crash" in args:
    print("Traceback (most recent call last):", file=sys.stderr)
    print("ModuleNotFoundError: No module named 'requests'", file=sys.stderr, flush=True)
    sys.exit(1)
if "--hang" in args:
    print("stand-in: loading forever", file=sys.stderr, flush=True)
    while True:
        time.sleep(1)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/system_stats":
            self.send_response(404); self.end_headers(); return
        if os.path.exists("unhealthy") and open("unhealthy").read() == str(os.getpid()):
            self.send_response(503); self.end_headers(); return
        body = json.dumps({
            "system": {"os": "posix", "comfyui_version": "0.3.27", "python_version": sys.version,
                       "pytorch_version": "2.5.1", "embedded_python": False, "argv": sys.argv},
            "devices": [{"name": "cpu", "type": "cpu", "index": None}],
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

host, port = opt("--listen", "127.0.0.1"), int(opt("--port", "8188"))
server = ThreadingHTTPServer((host, port), Handler)
print(f"To see the GUI go to: http://{host}:{port}", file=sys.stderr, flush=True)
server.serve_forever()
"#;

/// One GET on loopback; the status code, or `None` when nothing answers.
fn get_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// The record plasma keeps for service NAME.
fn record(sb: &Sandbox, name: &str) -> serde_json::Value {
    let text = sb.read(&format!(".plasma/services/{name}/record.json"));
    serde_json::from_str(&text).unwrap()
}

fn pid_of(sb: &Sandbox, name: &str) -> i32 {
    record(sb, name)["pid"].as_i64().expect("a pid is recorded") as i32
}

fn alive(pid: i32) -> bool {
    // A zombie is not alive: look at /proc where there is one.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => unsafe { libc::kill(pid, 0) == 0 },
    }
}

fn kill(pid: i32) {
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A spec with one stand-in service on `port`, its args after the port.
fn standin_spec(sb: &Sandbox, port: u16, extra_args: &str, env: &str, more: &str) -> String {
    sb.write("app/standin.py", STANDIN);
    format!(
        r#"
service web {{
    command "python3" "standin.py" "--listen" "127.0.0.1" "--port" "{port}" {extra_args}
    cwd "app"
    env {{
        {env}
    }}
    health {{
        url "http://127.0.0.1:{port}/system_stats"
        timeout "20s"
    }}
    manager "process"
    {more}
}}
"#
    )
}

fn started(sb: &Sandbox) -> serde_json::Value {
    serde_json::from_str(&sb.read("app/started.json")).unwrap()
}

#[test]
fn a_service_starts_healthy_and_a_second_plan_is_converged() {
    let sb = Sandbox::new();
    let _guard = StopServices(&sb);
    let port = free_port();
    sb.spec(&standin_spec(&sb, port, "", "SERVICE_MARK \"m1\"", ""));

    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains("service.web will be created"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains(&format!(
            "+ command: python3 standin.py --listen 127.0.0.1 --port {port}"
        )),
        "{}",
        plan.stdout
    );

    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(get_status(port, "/system_stats"), Some(200));
    let pid = pid_of(&sb, "web");
    assert!(alive(pid));
    let seen = started(&sb);
    assert_eq!(
        seen["mark"], "m1",
        "the spec's environment reaches the service"
    );
    assert_eq!(
        seen["pid"].as_i64(),
        Some(pid as i64),
        "the recorded pid is the service's"
    );
    // Detached: it leads its own session.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        fields[3],
        pid.to_string(),
        "the service is its own session leader"
    );
    // Its log has the server's stderr.
    assert!(
        sb.read(".plasma/services/web/service.log")
            .contains("To see the GUI go to")
    );

    let started_at = Instant::now();
    let again = sb.run(&["plan", "--detailed-exitcode"]);
    let took = started_at.elapsed();
    again.code(0);
    println!("converged plan with a running service: {took:?}");
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(
        pid_of(&sb, "web"),
        pid,
        "a converged apply leaves the service alone"
    );
    assert!(alive(pid));
}

#[test]
fn a_service_killed_by_hand_is_drift_and_apply_restarts_it() {
    let sb = Sandbox::new();
    let _guard = StopServices(&sb);
    let port = free_port();
    sb.spec(&standin_spec(&sb, port, "", "", ""));
    sb.run(&["apply", "--yes"]).code(0);
    let pid = pid_of(&sb, "web");
    kill(pid);

    let drift = sb.run(&["drift"]);
    drift.code(2);
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout.contains("start: not running"),
        "{}",
        plan.stdout
    );

    sb.run(&["apply", "--yes"]).code(0);
    let restarted = pid_of(&sb, "web");
    assert_ne!(restarted, pid);
    assert!(alive(restarted));
    assert_eq!(get_status(port, "/system_stats"), Some(200));
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn an_unhealthy_service_is_drift_and_apply_restarts_it() {
    let sb = Sandbox::new();
    let _guard = StopServices(&sb);
    let port = free_port();
    sb.spec(&standin_spec(&sb, port, "", "", ""));
    sb.run(&["apply", "--yes"]).code(0);
    let pid = pid_of(&sb, "web");
    sb.write("app/unhealthy", &pid.to_string());
    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains("restart: unhealthy") && plan.stdout.contains("answered 503"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_ne!(pid_of(&sb, "web"), pid, "restarted");
    assert!(!alive(pid));
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn a_recycled_pid_is_not_taken_for_the_service() {
    let sb = Sandbox::new();
    let _guard = StopServices(&sb);
    let port = free_port();
    sb.spec(&standin_spec(&sb, port, "", "", ""));
    sb.run(&["apply", "--yes"]).code(0);
    let pid = pid_of(&sb, "web");
    kill(pid);
    // The record now names a pid that another, living process has: this test.
    let path = sb.path(".plasma/services/web/record.json");
    let mut value = record(&sb, "web");
    value["pid"] = serde_json::json!(std::process::id());
    std::fs::write(&path, value.to_string()).unwrap();

    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout.contains("is now another process"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert!(
        alive(std::process::id() as i32),
        "plasma never signals a stranger"
    );
    assert_eq!(get_status(port, "/system_stats"), Some(200));
}

#[test]
fn a_service_that_never_gets_healthy_fails_quoting_its_log() {
    let sb = Sandbox::new();
    let _guard = StopServices(&sb);
    let port = free_port();
    sb.spec(&standin_spec(&sb, port, "\"--crash\"", "", ""));
    let run = sb.run(&["apply", "--yes"]);
    run.code(1);
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(out.contains("stopped before it became healthy"), "{out}");
    assert!(
        out.contains("No module named 'requests'"),
        "the log's tail is quoted: {out}"
    );

    // Running but never answering: the timeout ends the wait.
    sb.spec(&standin_spec(&sb, port, "\"--hang\"", "", "").replace("\"20s\"", "\"2s\""));
    let run = sb.run(&["apply", "--yes"]);
    run.code(1);
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(out.contains("did not become healthy within 2s"), "{out}");
    assert!(out.contains("stand-in: loading forever"), "{out}");
}

#[test]
fn a_changed_command_or_environment_restarts_it_and_never_shows_values() {
    const SECRET: &str = "s3cret-value-never-shown-9f2";
    let sb = Sandbox::new();
    let _guard = StopServices(&sb);
    let port = free_port();
    sb.spec(&standin_spec(
        &sb,
        port,
        "",
        &format!("SERVICE_MARK \"{SECRET}\""),
        "",
    ));
    let first = sb.run(&["apply", "--yes"]);
    first.code(0);
    let pid = pid_of(&sb, "web");

    // Another argument: the plan shows the command line old -> new.
    sb.spec(&standin_spec(
        &sb,
        port,
        "\"--verbose\"",
        &format!("SERVICE_MARK \"{SECRET}\""),
        "",
    ));
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout.contains("restart: command changed"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains(
            "--port {port} -> python3"
                .replace("{port}", &port.to_string())
                .as_str()
        ),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    let second = pid_of(&sb, "web");
    assert_ne!(second, pid);
    assert!(!alive(pid), "the old process was stopped");
    assert!(started(&sb)["argv"].to_string().contains("--verbose"));

    // Another value: restart, saying only that the environment changed.
    sb.spec(&standin_spec(
        &sb,
        port,
        "\"--verbose\"",
        "SERVICE_MARK \"other\"",
        "",
    ));
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout.contains("restart: environment changed"),
        "{}",
        plan.stdout
    );
    let json = sb.run(&["plan", "--json"]);
    let applied = sb.run(&["apply", "--yes"]);
    applied.code(0);
    assert_eq!(started(&sb)["mark"], "other");
    assert_ne!(pid_of(&sb, "web"), second);
    for text in [
        &first.stdout,
        &first.stderr,
        &plan.stdout,
        &json.stdout,
        &applied.stdout,
        &sb.read(".plasma/state.json"),
        &sb.read(".plasma/services/web/record.json"),
    ] {
        assert!(
            !text.contains(SECRET) && !text.contains("\"other\""),
            "a value leaked: {text}"
        );
    }
}

#[test]
fn prune_stops_and_removes_the_service() {
    let sb = Sandbox::new();
    let _guard = StopServices(&sb);
    let port = free_port();
    sb.spec(&standin_spec(&sb, port, "", "", ""));
    sb.run(&["apply", "--yes"]).code(0);
    let pid = pid_of(&sb, "web");

    sb.spec("");
    let plain = sb.run(&["apply", "--yes"]);
    plain.code(0);
    assert!(
        alive(pid),
        "without --prune a forgotten service keeps running"
    );
    sb.spec(&standin_spec(&sb, port, "", "", ""));
    sb.run(&["apply", "--yes"]).code(0);
    let pid = pid_of(&sb, "web");

    sb.spec("");
    sb.run(&["apply", "--yes", "--prune"]).code(0);
    assert!(!alive(pid), "--prune stops the service");
    assert!(
        !sb.path(".plasma/services/web").exists(),
        "and removes its record and log"
    );
    assert_eq!(get_status(port, "/system_stats"), None);
}

#[test]
fn a_changed_dependency_restarts_the_service() {
    let sb = Sandbox::new();
    let _guard = StopServices(&sb);
    let port = free_port();
    let spec = |value: &str| {
        format!(
            "file settings {{\n    path \"app/settings.txt\"\n    content \"{value}\"\n}}\n{}",
            standin_spec(&sb, port, "", "", "depends-on file.settings")
        )
    };
    sb.spec(&spec("one"));
    sb.run(&["apply", "--yes"]).code(0);
    let pid = pid_of(&sb, "web");
    sb.run(&["plan", "--detailed-exitcode"]).code(0);

    sb.spec(&spec("two"));
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout.contains("restart: file.settings changed"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    let restarted = pid_of(&sb, "web");
    assert_ne!(restarted, pid, "the service was restarted");
    assert!(!alive(pid));
    assert_eq!(get_status(port, "/system_stats"), Some(200));
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

/// A ComfyUI stand-in clone (a git repository whose `main.py` is the
/// stand-in server) and a custom node for it.
fn comfy_upstreams(sb: &Sandbox) {
    let comfy = sb.path("up/comfy");
    gitfix::init_repo(&comfy);
    gitfix::commit_file(
        &comfy,
        ".gitignore",
        "/custom_nodes/\n/venv/\n/started.json\n",
        "ignore (as ComfyUI ignores what it writes)",
    );
    gitfix::commit_file(&comfy, "main.py", STANDIN, "stand-in server");
    gitfix::git(&comfy, &["tag", "v1"]);
    let node = sb.path("up/node");
    gitfix::init_repo(&node);
    gitfix::commit_file(&node, "__init__.py", "NODE_CLASS_MAPPINGS = {}\n", "node");
    gitfix::git(&node, &["tag", "v1.0"]);
    gitfix::commit_file(
        &node,
        "__init__.py",
        "NODE_CLASS_MAPPINGS = {}  # 1.1\n",
        "node 1.1",
    );
    gitfix::git(&node, &["tag", "v1.1"]);
}

fn comfy_spec(sb: &Sandbox, args: &str, node_rev: &str) -> String {
    format!(
        r#"
repo comfyui {{
    url "{comfy}"
    rev "v1"
    path "comfy"
}}
venv comfyui {{
    path "comfy/venv"
    python "{python}"
}}
custom-node helper {{
    comfyui repo.comfyui
    venv venv.comfyui
    url "{node}"
    rev "{node_rev}"
}}
service comfyui {{
    comfyui repo.comfyui
    venv venv.comfyui
    args {args}
    env {{ SERVICE_MARK "comfy" }}
    manager "process"
}}
"#,
        comfy = sb.path("up/comfy").display(),
        node = sb.path("up/node").display(),
        python = crate::support::pyfix::python_version(),
    )
}

#[test]
fn a_comfyui_service_runs_main_py_with_its_venv_and_restarts_when_a_node_changes() {
    let sb = Sandbox::new();
    let _guard = StopServices(&sb);
    comfy_upstreams(&sb);
    let port = free_port();
    let args = format!("\"--cpu\" \"--listen\" \"127.0.0.1\" \"--port\" \"{port}\"");
    sb.spec(&comfy_spec(&sb, &args, "v1.0"));
    let plan = sb.run(&["plan"]);
    let venv_python = sb.path("comfy/venv/bin/python");
    assert!(
        plan.stdout.contains(&format!(
            "+ command: {} main.py --cpu",
            venv_python.display()
        )),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains(&format!("+ health: http://127.0.0.1:{port}/system_stats")),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(get_status(port, "/system_stats"), Some(200));
    let seen: serde_json::Value = serde_json::from_str(&sb.read("comfy/started.json")).unwrap();
    assert_eq!(
        seen["argv"][0], "main.py",
        "run as `python main.py` in the clone"
    );
    let pid = pid_of(&sb, "comfyui");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let venv_exe = std::fs::canonicalize(&venv_python).unwrap();
    assert_eq!(
        std::fs::canonicalize(exe).unwrap(),
        venv_exe,
        "the venv's python runs it"
    );
    sb.run(&["plan", "--detailed-exitcode"]).code(0);

    // A custom node moves: ComfyUI loads nodes only at start, so it restarts.
    sb.spec(&comfy_spec(&sb, &args, "v1.1"));
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout.contains("restart: custom-node.helper changed"),
        "{}",
        plan.stdout
    );
    let order = sb.run(&["graph"]);
    assert!(
        order.stdout.contains("custom-node.helper"),
        "{}",
        order.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_ne!(pid_of(&sb, "comfyui"), pid);
    assert!(!alive(pid));
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn comfyui_listening_beyond_loopback_is_a_lint_error() {
    let sb = Sandbox::new();
    comfy_upstreams(&sb);
    for (args, exposed) in [
        ("\"--listen\"", true),
        ("\"--listen\" \"0.0.0.0\"", true),
        ("\"--listen=::\"", true),
        ("\"--listen\" \"--port\" \"8188\"", true),
        ("\"--listen\" \"127.0.0.1\" \"--port\" \"8188\"", false),
        ("\"--port\" \"8188\"", false),
    ] {
        sb.spec(&comfy_spec(&sb, args, "v1.0"));
        let run = sb.run(&["validate"]);
        if exposed {
            run.code(1);
            assert!(
                run.stderr.contains("service-exposed"),
                "{args}: {}",
                run.stderr
            );
            assert!(
                run.stderr.contains("--listen 127.0.0.1"),
                "the help says what to write"
            );
        } else {
            run.code(0);
        }
    }
    // A trusted network: allowed explicitly.
    let spec = comfy_spec(&sb, "\"--listen\"", "v1.0").replace(
        "manager \"process\"",
        "manager \"process\"\n    allow \"service-exposed\"",
    );
    sb.spec(&spec);
    sb.run(&["validate"]).code(0);
}

#[test]
fn service_spec_errors_point_at_their_fields() {
    let sb = Sandbox::new();
    sb.spec(
        r#"
service a {
    log "a.log"
}
service b {
    command "x"
    health { url "ftp://nowhere"; timeout "soon" }
    manager "upstart"
    env { KEY 1 }
}
"#,
    );
    let run = sb.run(&["validate"]);
    run.code(1);
    for expected in [
        "needs `command` or `comfyui`",
        "is not an http(s) URL",
        "is not a duration",
        "is not a valid `manager`",
        "expected a string",
    ] {
        assert!(run.stderr.contains(expected), "{expected}: {}", run.stderr);
    }
}

fn sample_launch(dir: &Path) -> plasma::service::Launch {
    let mut env = BTreeMap::new();
    env.insert("PYTORCH_ENABLE_MPS_FALLBACK".to_string(), "1".to_string());
    env.insert("ODD".to_string(), "50% \"quoted\" $HOME".to_string());
    plasma::service::Launch {
        name: "comfyui".into(),
        argv: vec![
            "/usr/bin/python3".into(),
            "main.py".into(),
            "--listen".into(),
            "127.0.0.1".into(),
            "--extra".into(),
            "a b".into(),
        ],
        cwd: dir.to_path_buf(),
        env,
        log: dir.join("comfy ui.log"),
        run_dir: dir.join("run"),
    }
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let launch = sample_launch(dir.path());
    let text = plasma::service::systemd::unit_text(&launch, false);
    let unit = dir
        .path()
        .join(plasma::service::systemd::unit_name("comfyui"));
    std::fs::write(&unit, &text).unwrap();
    assert!(
        text.contains("ExecStart=\"/usr/bin/python3\" \"main.py\""),
        "{text}"
    );
    assert!(
        text.contains("Environment=\"ODD=50%% \\\"quoted\\\" $$HOME\""),
        "{text}"
    );
    let masked = plasma::service::systemd::unit_text(&launch, true);
    assert!(
        !masked.contains("50%%"),
        "values are masked for plans: {masked}"
    );

    // `--user` verify needs a running user manager; the unit's syntax and
    // settings are the same for the system manager, which verify loads offline.
    let verify = |path: &Path| {
        std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(path)
            .output()
    };
    let Ok(out) = verify(&unit) else {
        println!("skipped: systemd-analyze is not installed here");
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("plasma-comfyui"),
        "systemd-analyze verify: {stderr}"
    );
    // The check can fail: a unit with unbalanced quoting does.
    let bad = dir.path().join("plasma-bad.service");
    std::fs::write(&bad, text.replace("\"main.py\"", "\"main.py")).unwrap();
    let out = verify(&bad).unwrap();
    assert!(!out.status.success(), "verify accepts a broken unit");
}

#[test]
fn the_launch_agent_plist_reads_back_with_plistlib() {
    let dir = tempfile::tempdir().unwrap();
    let launch = sample_launch(dir.path());
    let text = plasma::service::launchd::plist_text(&launch, false).unwrap();
    let path = dir.path().join("dev.plasma.comfyui.plist");
    std::fs::write(&path, text).unwrap();
    let check = r#"
import plistlib, sys
d = plistlib.load(open(sys.argv[1], "rb"))
assert d["Label"] == "dev.plasma.comfyui", d
assert d["ProgramArguments"][-1] == "a b", d
assert d["EnvironmentVariables"]["ODD"] == '50% "quoted" $HOME', d
assert d["RunAtLoad"] is True and d["KeepAlive"] == {"SuccessfulExit": False}, d
assert d["StandardErrorPath"].endswith("comfy ui.log"), d
print("ok")
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", check])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plistlib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_systemd_service_plans_its_unit_file_with_values_masked() {
    const SECRET: &str = "unit-secret-never-shown-41c";
    let sb = Sandbox::new();
    let _guard = StopServices(&sb);
    let port = free_port();
    let spec = standin_spec(&sb, port, "", &format!("SERVICE_MARK \"{SECRET}\""), "")
        .replace("manager \"process\"", "manager \"systemd\"");
    sb.spec(&spec);
    let plan = sb.run(&["plan"]);
    plan.code(0);
    assert!(
        plan.stdout.contains("start under systemd"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("+ExecStart=\"python3\" \"standin.py\""),
        "the unit's diff: {}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("+Environment=\"SERVICE_MARK=(sensitive)\""),
        "{}",
        plan.stdout
    );
    assert!(!plan.stdout.contains(SECRET));

    if systemd_user_manager_runs() {
        println!("skipped the apply half: a user systemd runs here");
        return;
    }
    let run = sb.run(&["apply", "--yes"]);
    run.code(1);
    assert!(run.stderr.contains("systemctl --user"), "{}", run.stderr);
    assert!(
        run.stderr.contains("manager \"auto\" or \"process\""),
        "{}",
        run.stderr
    );
    let unit = sb.home().join(".config/systemd/user/plasma-web.service");
    let text = std::fs::read_to_string(&unit).expect("the unit file was written");
    assert!(text.contains(SECRET), "the unit itself holds the value");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&unit).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "and only its owner can read it");
    assert!(!run.stderr.contains(SECRET) && !run.stdout.contains(SECRET));
}

fn systemd_user_manager_runs() -> bool {
    plasma::service::systemd::user_manager_runs()
}

#[test]
fn a_server_plasma_did_not_start_is_left_alone() {
    let sb = Sandbox::new();
    let port = free_port();
    // Someone started a server by hand on the service's port.
    let mut by_hand = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(sb.root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while get_status(port, "/") != Some(200) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    sb.spec(&standin_spec(&sb, port, "", "", "").replace("/system_stats\"", "/\""));
    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    let json = sb.run(&["plan", "--json"]);
    let applied = sb.run(&["apply", "--yes"]);
    let _ = by_hand.kill();
    let _ = by_hand.wait();
    plan.code(0);
    assert!(
        json.stdout.contains("not started by plasma, left alone"),
        "{}",
        plan.stdout
    );
    applied.code(0);
    assert!(
        !sb.path(".plasma/services/web/record.json").exists(),
        "nothing was started"
    );
}
