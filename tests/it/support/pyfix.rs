//! Test fixture: small wheels built on the spot and served as a PEP 503
//! simple index over real HTTP on 127.0.0.1. No network is needed.
//!
//! Wheels are zip files written by a short Python script using only the
//! standard library (`zipfile`, `hashlib`); the index is a folder of
//! `simple/<name>/index.html` pages served by `python3 -m http.server`,
//! which is killed when the [`PyIndex`] is dropped.
//!
//! Use from a test module with `use crate::support::pyfix;`.

#![allow(dead_code)] // the bench includes this file too and uses only part of it

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

/// One wheel to build: `name-version`, its `Requires-Dist` lines, and a
/// `FLAVOUR` string written into its `__init__.py` (so a test can tell two
/// builds of the same version apart, e.g. which index one came from).
#[derive(Debug, Clone)]
pub struct Wheel {
    pub name: String,
    pub version: String,
    pub requires: Vec<String>,
    pub flavour: String,
    /// The wheel's compatibility tag (`py3-none-any`, or a platform's
    /// such as `py3-none-macosx_11_0_arm64`).
    pub tag: String,
}

impl Wheel {
    pub fn new(name: &str, version: &str) -> Wheel {
        Wheel {
            name: name.into(),
            version: version.into(),
            requires: Vec::new(),
            flavour: "default".into(),
            tag: "py3-none-any".into(),
        }
    }
    /// Builds the wheel for one platform only (`py3-none-macosx_11_0_arm64`).
    pub fn tag(mut self, tag: &str) -> Wheel {
        self.tag = tag.into();
        self
    }
    pub fn requires(mut self, requirement: &str) -> Wheel {
        self.requires.push(requirement.into());
        self
    }
    pub fn flavour(mut self, flavour: &str) -> Wheel {
        self.flavour = flavour.into();
        self
    }
    /// The importable module name (`needs-xformers` -> `needs_xformers`).
    pub fn module(&self) -> String {
        self.name.replace(['-', '.'], "_").to_lowercase()
    }
}

/// The standard set: two torch-like versions, a helper in two versions, a
/// custom-node-like package wanting a newer torch, one pulling a forbidden
/// package (directly) and one pulling it through a middle package.
pub fn standard_wheels() -> Vec<Wheel> {
    vec![
        Wheel::new("torchlike", "2.5.1"),
        Wheel::new("torchlike", "2.6.0"),
        Wheel::new("visionlike", "0.20.1").requires("torchlike==2.5.1"),
        Wheel::new("helper", "1.0"),
        Wheel::new("helper", "1.1"),
        Wheel::new("newnode", "1.0")
            .requires("torchlike>=2.6")
            .requires("helper"),
        Wheel::new("xformerslike", "0.1"),
        Wheel::new("needs-xformers", "1.0").requires("xformerslike>=0.1"),
        Wheel::new("fancy_node", "2.0").requires("needs-xformers"),
    ]
}

/// Builds wheels into `dir/files` and a simple index into `dir/simple`;
/// a name's page lists the wheels already in `dir/files` too, so calling it
/// again publishes new versions next to the old ones (whose bytes stay).
pub fn build_index(dir: &Path, wheels: &[Wheel]) {
    let spec: Vec<String> = wheels
        .iter()
        .map(|w| {
            let requires: Vec<String> = w.requires.iter().map(|r| format!("{r:?}")).collect();
            format!(
                "{{\"name\": {:?}, \"version\": {:?}, \"module\": {:?}, \"flavour\": {:?}, \"tag\": {:?}, \"requires\": [{}]}}",
                w.name,
                w.version,
                w.module(),
                w.flavour,
                w.tag,
                requires.join(", ")
            )
        })
        .collect();
    let mut child = Command::new("python3")
        .args(["-I", "-c", BUILD_SCRIPT])
        .arg(dir)
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3 must be on PATH to build test wheels");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("[{}]", spec.join(",")).as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "building test wheels failed"
    );
}

const BUILD_SCRIPT: &str = r#"
import base64, hashlib, json, os, re, sys, zipfile
root = sys.argv[1]
wheels = json.load(sys.stdin)
os.makedirs(os.path.join(root, "files"), exist_ok=True)
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
def record_hash(data): return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
links = {}
for w in wheels:
    dist = w["name"].replace("-", "_")
    info = f"{dist}-{w['version']}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {w['name']}\nVersion: {w['version']}\n"
    metadata += "".join(f"Provides-Extra: {x}\n" for x in sorted({m for r in w["requires"] for m in re.findall(r"extra\s*==\s*['\"]([^'\"]+)", r)}))
    metadata += "".join(f"Requires-Dist: {r}\n" for r in w["requires"])
    files = {
        f"{w['module']}/__init__.py": f"VERSION = {w['version']!r}\nFLAVOUR = {w['flavour']!r}\n",
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: plasma-pyfix\nRoot-Is-Purelib: true\nTag: {w['tag']}\n",
    }
    record = "".join(f"{p},{record_hash(c.encode())},{len(c.encode())}\n" for p, c in files.items()) + f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record
    filename = f"{dist}-{w['version']}-{w['tag']}.whl"
    path = os.path.join(root, "files", filename)
    with zipfile.ZipFile(path, "w") as z:
        for p, c in files.items():
            z.writestr(p, c)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    links.setdefault(norm(w["name"]), []).append(f'<a href="../../files/{filename}#sha256={digest}">{filename}</a>')
os.makedirs(os.path.join(root, "simple"), exist_ok=True)
for name in links:
    page = os.path.join(root, "simple", name, "index.html")
    if os.path.exists(page):
        old = open(page).read().replace("<html><body>", "").replace("</body></html>", "")
        links[name] = [a for a in re.findall(r"<a [^>]*>[^<]*</a>", old) if a not in links[name]] + links[name]
for entry in os.listdir(os.path.join(root, "simple")):
    if os.path.isdir(os.path.join(root, "simple", entry)):
        links.setdefault(entry, None)
with open(os.path.join(root, "simple", "index.html"), "w") as f:
    f.write("<html><body>" + "".join(f'<a href="{n}/">{n}</a>' for n in sorted(links)) + "</body></html>")
for name, anchors in links.items():
    if anchors is None:
        continue
    os.makedirs(os.path.join(root, "simple", name), exist_ok=True)
    with open(os.path.join(root, "simple", name, "index.html"), "w") as f:
        f.write("<html><body>" + "".join(anchors) + "</body></html>")
"#;

/// Writes a local Python project at `dir` (`pyproject.toml` and an in-tree
/// PEP 517/660 build backend using only the standard library), so that
/// `pip install -e dir` and `uv pip install -e dir` work without fetching
/// setuptools from an index. Its module `name` (with `_`) records
/// `FLAVOUR = "local"`.
pub fn local_project(dir: &Path, name: &str, version: &str, requires: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let requires: Vec<String> = requires.iter().map(|r| format!("{r:?}")).collect();
    std::fs::write(
        dir.join("pyproject.toml"),
        format!(
            "[project]\nname = {name:?}\nversion = {version:?}\n\n[build-system]\nrequires = []\nbuild-backend = \"pyfix_backend\"\nbackend-path = [\".\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("pyfix_backend.py"),
        format!(
            "NAME = {name:?}\nVERSION = {version:?}\nREQUIRES = [{}]\n{LOCAL_BACKEND}",
            requires.join(", ")
        ),
    )
    .unwrap();
    let module = dir.join(name.replace(['-', '.'], "_").to_lowercase());
    std::fs::create_dir_all(&module).unwrap();
    std::fs::write(
        module.join("__init__.py"),
        format!("VERSION = {version:?}\nFLAVOUR = 'local'\n"),
    )
    .unwrap();
}

const LOCAL_BACKEND: &str = r#"
import base64, hashlib, os, zipfile
HERE = os.path.dirname(os.path.abspath(__file__))
DIST = NAME.replace("-", "_")
def get_requires_for_build_wheel(config_settings=None): return []
def get_requires_for_build_editable(config_settings=None): return []
def get_requires_for_build_sdist(config_settings=None): return []
def _hash(data): return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
def _build(directory, files):
    info = f"{DIST}-{VERSION}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n" + "".join(f"Requires-Dist: {r}\n" for r in REQUIRES)
    files[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: plasma-pyfix\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/RECORD"] = "".join(f"{p},{_hash(c.encode())},{len(c.encode())}\n" for p, c in files.items()) + f"{info}/RECORD,,\n"
    name = f"{DIST}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, name), "w") as z:
        for p, c in files.items():
            z.writestr(p, c)
    return name
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    module = DIST.lower()
    source = open(os.path.join(HERE, module, "__init__.py")).read()
    return _build(wheel_directory, {f"{module}/__init__.py": source})
def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _build(wheel_directory, {f"__editable__.{DIST}.pth": HERE + "\n"})
def build_sdist(sdist_directory, config_settings=None):
    raise NotImplementedError("pyfix projects build wheels only")
"#;

/// A simple index served on 127.0.0.1 until dropped.
pub struct PyIndex {
    root: tempfile::TempDir,
    server: Child,
    _stdout: BufReader<ChildStdout>,
    pub port: u16,
}

impl PyIndex {
    pub fn standard() -> PyIndex {
        PyIndex::serve(&standard_wheels())
    }

    pub fn serve(wheels: &[Wheel]) -> PyIndex {
        let root = tempfile::tempdir().unwrap();
        build_index(root.path(), wheels);
        // Port 0: the OS picks a free port and the server prints it.
        let mut server = Command::new("python3")
            .args([
                "-I",
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(root.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let mut stdout = BufReader::new(server.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected http.server banner: {line:?}"));
        PyIndex {
            root,
            server,
            _stdout: stdout,
            port,
        }
    }

    /// `http://127.0.0.1:PORT/simple`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/simple", self.port)
    }

    /// The same index with `user:password@` in the URL (the server ignores it).
    pub fn url_with_credentials(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@127.0.0.1:{}/simple", self.port)
    }

    /// Publishes more wheels on the running index, next to those it serves.
    pub fn publish(&self, wheels: &[Wheel]) {
        build_index(self.root.path(), wheels);
    }

    /// The folder of built wheels, usable as `find-links`.
    pub fn wheel_dir(&self) -> PathBuf {
        self.root.path().join("files")
    }
}

impl Drop for PyIndex {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// `3.11` for the `python3` on PATH: what specs in tests ask for.
pub fn python_version() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .expect("python3 on PATH");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The packages installed in a venv (normalised name -> version), read the
/// way plasma observes them.
pub fn venv_packages(venv: &Path) -> std::collections::BTreeMap<String, String> {
    match plasma::python::observe_venv(venv).unwrap() {
        plasma::python::VenvObservation::Present(observed) => observed.packages,
        plasma::python::VenvObservation::Missing => panic!("no venv at {}", venv.display()),
    }
}
