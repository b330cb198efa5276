//! The `model` kind end to end: the built binary against a real HTTP server
//! on 127.0.0.1 (`support/httpfix.rs`) with injected faults. Every fault ends
//! with a verified file at `path`, or no file there and a clear error. The
//! download layer's own tests (`download_layer.rs`) cover each fault in depth;
//! these check that the kind wires them through to the user intact.

use crate::support::httpfix;
use crate::support::sandbox;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use httpfix::{Fault, HttpFixture, Route, RunningServer, noise, pickle_file, safetensors_file};
use plasma::hashing::Sha256Digest;
use sandbox::{Run, Sandbox};

const TOKEN: &str = "plasma-TEST-TOKEN-must-never-leak-7c41d9";

/// A `.safetensors` file whose tensor names make it an SD 1.5 checkpoint,
/// padded with about a mebibyte of tensor data.
fn sd15_safetensors() -> Vec<u8> {
    let header = serde_json::json!({
        "__metadata__": { "format": "pt" },
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight":
            { "dtype": "F16", "shape": [4, 4], "data_offsets": [0, 32] },
        "model.diffusion_model.input_blocks.0.0.weight":
            { "dtype": "F16", "shape": [4, 4], "data_offsets": [32, 64] },
        "first_stage_model.decoder.conv_in.weight":
            { "dtype": "F32", "shape": [262144], "data_offsets": [64, 1048640] },
    })
    .to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(noise(64 + (1 << 20), 7));
    bytes
}

fn sha(bytes: &[u8]) -> String {
    Sha256Digest::of_bytes(bytes).to_hex()
}

/// Runs plasma off the async runtime, so the fixture server keeps serving.
async fn run(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = sb.command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = tokio::task::spawn_blocking(move || cmd.output().expect("plasma runs"))
        .await
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn serve(routes: Vec<(&str, Route)>) -> RunningServer {
    let mut fixture = HttpFixture::new();
    for (path, route) in routes {
        fixture = fixture.route(path, route);
    }
    fixture.start().await
}

fn part_of(path: &Path) -> PathBuf {
    plasma::download::part_path(path)
}

/// Nothing at `path` and no part left beside it.
#[track_caller]
fn assert_nothing_placed(path: &Path) {
    assert!(!path.exists(), "{} should not exist", path.display());
    assert!(!part_of(path).exists(), "no part should be left");
}

fn model_spec(name: &str, url: &str, path: &str, extra: &str) -> String {
    format!("model {name} {{\n    url \"{url}\"\n    path \"{path}\"\n{extra}}}\n")
}

/// Rewrites a file's bytes in place (same inode, same size) and sets its mtime.
fn rewrite_in_place(path: &Path, bytes: &[u8], mtime: SystemTime) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
    file.set_modified(mtime).unwrap();
    file.sync_all().unwrap();
}

fn plan_json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_verifies_converges_and_shows_the_header() {
    let data = sd15_safetensors();
    let server = serve(vec![("/ckpt", Route::new(data.clone()))]).await;
    let sb = Sandbox::new();
    let extra = format!(
        "    sha256 \"{}\"\n    size {}\n    arch \"sd15\"\n",
        sha(&data),
        data.len()
    );
    sb.spec(&model_spec(
        "ckpt",
        &server.url("/ckpt"),
        "comfy/models/checkpoints/ckpt.safetensors",
        &extra,
    ));
    let dest = sb.path("comfy/models/checkpoints/ckpt.safetensors");

    let plan = run(&sb, &["plan", "--detailed-exitcode"], &[]).await;
    plan.code(2);
    assert!(
        plan.stdout
            .contains("# model.ckpt will be created (the file does not exist)"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains(&format!("+ sha256: {}", sha(&data))),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains(&format!("+ size: {}", data.len())),
        "{}",
        plan.stdout
    );

    run(&sb, &["apply", "--yes"], &[]).await.code(0);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(!part_of(&dest).exists());

    let again = run(&sb, &["plan", "--detailed-exitcode"], &[]).await;
    again.code(0);
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);

    let state = sb.state();
    let outputs = &state["resources"]["model.ckpt"]["outputs"];
    assert_eq!(outputs["sha256"], sha(&data));
    assert_eq!(outputs["architecture"], "sd15");
    assert_eq!(outputs["tensor_count"], 3);
    assert_eq!(outputs["dtype"], "F16");

    let show = run(&sb, &["show", "model.ckpt"], &[]).await;
    show.code(0);
    for line in ["architecture_name: SD 1.5", "tensor_count: 3", "dtype: F16"] {
        assert!(show.stdout.contains(line), "{line}: {}", show.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_with_range_and_ends_verified() {
    let data = pickle_file(1_500_000, 1);
    let route = Route::new(data.clone())
        .fault(Fault::DropAfter(600_000))
        .times(1);
    let etag = route.etag().to_string();
    let ignoring = Route::new(data.clone())
        .ignore_ranges()
        .fault(Fault::DropAfter(600_000))
        .times(1);
    let short = Route::new(data.clone())
        .fault(Fault::ShortBody { extra: 5000 })
        .times(1);
    let slow = Route::new(data.clone()).fault(Fault::Trickle {
        chunk: 200_000,
        pause: Duration::from_millis(20),
    });
    let server = serve(vec![
        ("/drop", route),
        ("/ignore", ignoring),
        ("/short", short),
        ("/slow", slow),
    ])
    .await;
    let sb = Sandbox::new();
    let extra = format!("    sha256 \"{}\"\n    allow-pickle #true\n", sha(&data));
    let mut spec = String::new();
    for name in ["drop", "ignore", "short", "slow"] {
        spec.push_str(&model_spec(
            name,
            &server.url(&format!("/{name}")),
            &format!("models/{name}.pt"),
            &extra,
        ));
    }
    sb.spec(&spec);

    run(&sb, &["apply", "--yes", "--parallelism", "4"], &[])
        .await
        .code(0);
    for name in ["drop", "ignore", "short", "slow"] {
        let dest = sb.path(&format!("models/{name}.pt"));
        assert_eq!(std::fs::read(&dest).unwrap(), data, "{name}");
        assert!(!part_of(&dest).exists(), "{name}");
    }
    let seen = server.requests();
    let to = |path: &str| -> Vec<_> { seen.iter().filter(|r| r.path == path).collect() };
    // Dropped mid-body: the second request asks for the rest only.
    let drop = to("/drop");
    assert_eq!(drop.len(), 2, "{drop:?}");
    assert_eq!(drop[1].range.as_deref(), Some("bytes=600000-"));
    assert_eq!(drop[1].if_range.as_deref(), Some(etag.as_str()));
    // A server that ignores Range sends everything again, and that is what lands.
    assert_eq!(to("/ignore").len(), 2, "{:?}", to("/ignore"));
    // A body shorter than Content-Length: the resume finds nothing left to
    // fetch (416), so the layer starts again from zero.
    let short = to("/short");
    assert_eq!(short.len(), 3, "{short:?}");
    assert_eq!(short[2].range, None);
    assert_eq!(to("/slow").len(), 1);
}

/// A route, the spec lines it needs, the environment, the messages expected.
type FaultCase<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, Vec<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_end_with_no_file_and_an_error_the_user_can_act_on() {
    let data = pickle_file(300_000, 2);
    let server = serve(vec![
        ("/wrong", Route::new(data.clone()).fault(Fault::WrongBytes)),
        ("/login", Route::new(data.clone()).fault(Fault::HtmlLogin)),
        (
            "/disguised",
            Route::new(data.clone()).fault(Fault::HtmlDisguised),
        ),
        (
            "/auth",
            Route::new(data.clone()).fault(Fault::RequireBearer(TOKEN.into())),
        ),
        ("/data", Route::new(data.clone())),
    ])
    .await;
    let wrong: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
    let pinned = format!("    sha256 \"{}\"\n", sha(&data));
    let cases: Vec<FaultCase> = vec![
        (
            "/wrong",
            pinned.clone(),
            vec![],
            vec![
                format!("has sha256 {}", sha(&wrong)),
                format!("the spec expects {}", sha(&data)),
                "the download was deleted and nothing was placed".into(),
            ],
        ),
        (
            "/login",
            pinned.clone(),
            vec![],
            vec!["the server sent a web page, not the file: a login is probably needed".into()],
        ),
        (
            "/disguised",
            pinned.clone(),
            vec![],
            vec!["the server sent a web page, not the file: a login is probably needed".into()],
        ),
        (
            "/missing",
            pinned.clone(),
            vec![],
            vec!["was not found (404)".into()],
        ),
        (
            "/auth",
            format!("{pinned}    token-env MODEL_TOKEN\n"),
            vec![],
            vec![
                "refused the download (401)".into(),
                "$MODEL_TOKEN is not set: export it and run again".into(),
            ],
        ),
        (
            "/auth",
            format!("{pinned}    token-env MODEL_TOKEN\n"),
            vec![("MODEL_TOKEN", "not-the-right-token")],
            vec!["the token in $MODEL_TOKEN was sent and rejected".into()],
        ),
        (
            "/auth",
            pinned.clone(),
            vec![],
            vec!["no token-env is set for this model".into()],
        ),
        (
            "/data",
            format!("{pinned}    size 12345\n"),
            vec![],
            vec![format!(
                "is {} bytes, but the spec's size says 12345",
                data.len()
            )],
        ),
    ];
    for (route, extra, env, messages) in cases {
        let sb = Sandbox::new();
        let extra = format!("{extra}    allow-pickle #true\n");
        sb.spec(&model_spec("m", &server.url(route), "models/m.bin", &extra));
        let apply = run(&sb, &["apply", "--yes"], &env).await;
        apply.code(1);
        for message in &messages {
            assert!(
                apply.stderr.contains(message.as_str()),
                "{route}: expected {message:?} in\n{}",
                apply.stderr
            );
        }
        assert!(
            apply.stdout.contains("model.m: failed:"),
            "{route}: {}",
            apply.stdout
        );
        assert_nothing_placed(&sb.path("models/m.bin"));
        // The failure is in the resource's log too.
        let log = sb.read(".plasma/logs/model.m.log");
        assert!(log.contains(messages[0].as_str()), "{route}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_source_is_copied_with_the_same_verification() {
    let data = pickle_file(200_000, 3);
    let sb = Sandbox::new();
    std::fs::write(sb.path("downloaded.bin"), &data).unwrap();
    sb.spec(&format!(
        "model m {{\n    source \"downloaded.bin\"\n    path \"models/m.bin\"\n    sha256 \"{}\"\n    allow-pickle #true\n}}\n",
        sha(&data)
    ));
    run(&sb, &["apply", "--yes"], &[]).await.code(0);
    assert_eq!(std::fs::read(sb.path("models/m.bin")).unwrap(), data);

    let other = Sandbox::new();
    std::fs::write(other.path("downloaded.bin"), &data).unwrap();
    other.spec(&format!(
        "model m {{\n    source \"downloaded.bin\"\n    path \"models/m.bin\"\n    sha256 \"{}\"\n    allow-pickle #true\n}}\n",
        sha(b"something else")
    ));
    let apply = run(&other, &["apply", "--yes"], &[]).await;
    apply.code(1);
    assert!(
        apply.stderr.contains(&format!("has sha256 {}", sha(&data))),
        "{}",
        apply.stderr
    );
    assert_nothing_placed(&other.path("models/m.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arch_that_disagrees_with_the_header_is_an_error() {
    let data = sd15_safetensors();
    let server = serve(vec![("/ckpt", Route::new(data.clone()))]).await;
    let sb = Sandbox::new();
    sb.spec(&model_spec(
        "anything-xl",
        &server.url("/ckpt"),
        "models/AnythingXL_inkBase.safetensors",
        &format!("    sha256 \"{}\"\n    arch \"sdxl\"\n", sha(&data)),
    ));
    let apply = run(&sb, &["apply", "--yes"], &[]).await;
    apply.code(1);
    let expected =
        "is a SD 1.5 model by its safetensors header (3 tensors), but the spec says arch sdxl";
    assert!(apply.stderr.contains(expected), "{}", apply.stderr);
    assert!(
        apply.stderr.contains("write `arch \"sd15\"`"),
        "{}",
        apply.stderr
    );
    // The plan keeps saying so until the spec is fixed.
    let plan = run(&sb, &["plan"], &[]).await;
    plan.code(1);
    assert!(plan.stdout.contains(expected), "{}", plan.stdout);
}

#[test]
fn spec_mistakes_are_reported_together_with_spans() {
    let sb = Sandbox::new();
    sb.spec(
        r#"model a {
    url "https://example.com/a.safetensors"
    path "models/a.safetensors"
    sha256 "0123456789"
}
model b {
    path "models/b.safetensors"
    sha256 "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
    arch "sd3"
}
model c {
    url "ftp://example.com/c"
    path "models/c.safetensors"
    sha256 "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    token-env "hf_abcdef0123456789-token"
}
"#,
    );
    let run = sb.run(&["validate"]);
    run.code(1);
    for text in [
        "malformed sha256",
        "a sha256 in hex has 64 characters, this one has 10",
        "a model needs a `url` or a `source`",
        "unknown arch `sd3`",
        "not a download URL",
        "`token-env` names an environment variable, not the token itself",
        "plasma.kdl:4:12",
    ] {
        assert!(run.stderr.contains(text), "{text}:\n{}", run.stderr);
    }
}

#[test]
fn pickles_need_allow_pickle_and_unpinned_models_warn() {
    let sb = Sandbox::new();
    sb.spec(
        r#"model pose {
    url "https://example.com/control_v11p_sd15_openpose.pth"
    path "models/control_v11p_sd15_openpose.pth"
    sha256 "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
}
"#,
    );
    let run = sb.run(&["validate"]);
    run.code(1);
    assert!(run.stderr.contains("pickle-model"), "{}", run.stderr);
    assert!(run.stderr.contains("is a pickle (.pth)"), "{}", run.stderr);
    assert!(run.stderr.contains("allow-pickle #true"), "{}", run.stderr);

    sb.spec(
        r#"model pose {
    url "https://example.com/control_v11p_sd15_openpose.yaml"
    path "models/control_v11p_sd15_openpose.yaml"
}
"#,
    );
    let run = sb.run(&["validate"]);
    run.code(0);
    assert!(run.stderr.contains("unpinned-model"), "{}", run.stderr);
    assert!(run.stderr.contains("plasma pin"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_file_at_path_is_drift_with_both_digests_and_apply_replaces_it() {
    let data = safetensors_file(400_000, 4);
    let server = serve(vec![("/m", Route::new(data.clone()))]).await;
    let sb = Sandbox::new();
    sb.spec(&model_spec(
        "m",
        &server.url("/m"),
        "models/m.safetensors",
        &format!("    sha256 \"{}\"\n", sha(&data)),
    ));
    // Someone else's file is already there.
    let other = noise(1000, 5);
    std::fs::create_dir_all(sb.path("models")).unwrap();
    std::fs::write(sb.path("models/m.safetensors"), &other).unwrap();

    let drift = run(&sb, &["drift"], &[]).await;
    drift.code(2);
    assert!(
        drift.stdout.contains(&format!(
            "the file's sha256 is {}…, the spec says {}…",
            &sha(&other)[..12],
            &sha(&data)[..12]
        )),
        "{}",
        drift.stdout
    );
    let plan = plan_json(&run(&sb, &["plan", "--json"], &[]).await);
    let change = &plan["changes"][0];
    assert_eq!(change["action"], "replace");
    assert_eq!(change["attributes"][0]["name"], "sha256");
    assert_eq!(change["attributes"][0]["old"], sha(&other));
    assert_eq!(change["attributes"][0]["new"], sha(&data));

    run(&sb, &["apply", "--yes"], &[]).await.code(0);
    assert_eq!(
        std::fs::read(sb.path("models/m.safetensors")).unwrap(),
        data
    );
    run(&sb, &["drift"], &[]).await.code(0);
}

/// A converged plan trusts the hash cache and reads no model bytes; a new
/// mtime costs exactly one re-hash; `--verify` reads everything.
///
/// Reading is detected without timing: the file's bytes are rewritten in
/// place with its identity (inode, size, mtime) restored, so only a run that
/// reads the contents can see the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converged_plans_read_no_bytes_and_verify_catches_silent_corruption() {
    let data = safetensors_file(2_000_000, 6);
    let server = serve(vec![("/m", Route::new(data.clone()))]).await;
    let sb = Sandbox::new();
    sb.spec(&model_spec(
        "m",
        &server.url("/m"),
        "models/m.safetensors",
        &format!("    sha256 \"{}\"\n", sha(&data)),
    ));
    run(&sb, &["apply", "--yes"], &[]).await.code(0);
    let dest = sb.path("models/m.safetensors");
    let mtime = std::fs::metadata(&dest).unwrap().modified().unwrap();

    // Bit rot: same size, same mtime, same inode, different bytes.
    let mut rotten = data.clone();
    rotten[1_000_000] ^= 0xff;
    rewrite_in_place(&dest, &rotten, mtime);
    run(&sb, &["plan", "--detailed-exitcode"], &[])
        .await
        .code(0);
    run(&sb, &["drift"], &[]).await.code(0);

    // --verify re-reads it, in plan and drift.
    let verify = run(&sb, &["plan", "--verify", "--json"], &[]).await;
    let plan = plan_json(&verify);
    assert_eq!(plan["changes"][0]["action"], "replace");
    assert_eq!(plan["changes"][0]["attributes"][0]["old"], sha(&rotten));
    let drift = run(&sb, &["drift", "--verify"], &[]).await;
    drift.code(2);
    assert!(
        drift.stdout.contains(&sha(&rotten)[..12]),
        "{}",
        drift.stdout
    );

    // Repair, then touch: the first plan re-hashes once...
    run(&sb, &["apply", "--yes"], &[]).await.code(0);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let touched = SystemTime::now() + Duration::from_secs(5);
    let mut first = data.clone();
    first[10] ^= 0x01;
    rewrite_in_place(&dest, &first, touched);
    let once = plan_json(&run(&sb, &["plan", "--json"], &[]).await);
    assert_eq!(once["changes"][0]["attributes"][0]["old"], sha(&first));
    // ...and the next one trusts that digest: bytes changed behind its back
    // (identity kept) are not seen, so it did not read the file again.
    let mut second = data.clone();
    second[20] ^= 0x01;
    rewrite_in_place(&dest, &second, touched);
    let twice = plan_json(&run(&sb, &["plan", "--json"], &[]).await);
    assert_eq!(twice["changes"][0]["attributes"][0]["old"], sha(&first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_writes_recorded_digests_keeping_comments_and_layout() {
    let yaml = b"model:\n  target: cldm.cldm.ControlLDM\n".to_vec();
    let vae = safetensors_file(50_000, 8);
    let server = serve(vec![
        ("/pose.yaml", Route::new(yaml.clone())),
        ("/vae", Route::new(vae.clone())),
    ])
    .await;
    let spec = format!(
        r#"// My models.   Comments and odd spacing stay as they are.
vars {{
    comfy "comfy"
}}

model pose-yaml {{
    url "{yaml_url}"   // no digest published
    path "{{comfy}}/models/controlnet/pose.yaml" // trust on first use

    // a comment after a blank line
}}

model vae {{ url "{vae_url}"; path "{{comfy}}/models/vae/vae.safetensors"; }}

model pinned {{
        source "pinned.bin"
        path "pinned.bin.copy"
        sha256 "{pinned}"
}}
"#,
        yaml_url = server.url("/pose.yaml"),
        vae_url = server.url("/vae"),
        pinned = sha(b"pinned"),
    );
    let sb = Sandbox::new();
    std::fs::write(sb.path("pinned.bin"), b"pinned").unwrap();
    sb.spec(&spec);

    // Before any download there is nothing to pin.
    let early = run(&sb, &["pin"], &[]).await;
    early.code(0);
    assert!(
        early
            .stdout
            .contains("model.pose-yaml: no digest recorded yet"),
        "{}",
        early.stdout
    );
    assert_eq!(sb.read("plasma.kdl"), spec);

    run(&sb, &["apply", "--yes"], &[]).await.code(0);
    let pin = run(&sb, &["pin"], &[]).await;
    pin.code(0);
    assert!(
        pin.stdout
            .contains(&format!("model.pose-yaml: pinned sha256 {}", sha(&yaml))),
        "{}",
        pin.stdout
    );
    let expected = spec
        .replace(
            "path \"{comfy}/models/controlnet/pose.yaml\" // trust on first use\n",
            &format!(
                "path \"{{comfy}}/models/controlnet/pose.yaml\" // trust on first use\n    sha256 \"{}\"\n",
                sha(&yaml)
            ),
        )
        .replace(
            "path \"{comfy}/models/vae/vae.safetensors\";",
            &format!(
                "sha256 \"{}\"; path \"{{comfy}}/models/vae/vae.safetensors\";",
                sha(&vae)
            ),
        );
    assert_ne!(expected, spec);
    assert_eq!(sb.read("plasma.kdl"), expected);

    // Pinned: no unpinned warning, still converged, and pinning again is a no-op.
    let plan = run(&sb, &["plan", "--detailed-exitcode"], &[]).await;
    plan.code(0);
    assert!(!plan.stderr.contains("unpinned-model"), "{}", plan.stderr);
    let again = run(&sb, &["pin"], &[]).await;
    again.code(0);
    assert!(again.stdout.contains("Nothing to pin."), "{}", again.stdout);
    assert_eq!(sb.read("plasma.kdl"), expected);
}

/// Every command runs with a recognisable token in the environment (and in a
/// mirror URL's query); none of their output, logs, plan files or state may
/// contain it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_appears_anywhere() {
    let data = safetensors_file(300_000, 9);
    let server = serve(vec![
        (
            "/gated",
            Route::new(data.clone()).fault(Fault::RequireBearer(TOKEN.into())),
        ),
        (
            "/other",
            Route::new(data.clone()).fault(Fault::RequireBearer("another-token".into())),
        ),
        (
            "/bad",
            Route::new(data.clone()).fault(Fault::RequireBearer(TOKEN.into())),
        ),
    ])
    .await;
    // The first mirror is gone; its URL carries the token in its query.
    let gone = format!("{}?token={TOKEN}", server.url("/gone"));
    let sb = Sandbox::new();
    sb.spec(&format!(
        r#"model gated {{
    url "{gone}" "{gated}"
    path "models/gated.safetensors"
    sha256 "{sha}"
    token-env HF_TOKEN
}}
model rejected {{
    url "{other}"
    path "models/rejected.safetensors"
    sha256 "{sha}"
    token-env HF_TOKEN
}}
model wrong {{
    url "{bad}"
    path "models/wrong.safetensors"
    sha256 "{wrong}"
    token-env HF_TOKEN
}}
"#,
        gated = server.url("/gated"),
        other = server.url("/other"),
        bad = server.url("/bad"),
        sha = sha(&data),
        wrong = sha(b"not it"),
    ));
    let env = [("HF_TOKEN", TOKEN)];
    let mut seen = String::new();
    for args in [
        vec!["validate"],
        vec!["validate", "--json"],
        vec!["graph"],
        vec!["plan"],
        vec!["plan", "--json"],
        vec!["plan", "--out", "saved.plan"],
        vec!["apply", "--yes"],
        vec!["plan"],
        vec!["plan", "--verify", "--json"],
        vec!["drift"],
        vec!["drift", "--verify", "--json"],
        vec!["show", "model.gated"],
        vec!["show", "model.gated", "--json"],
        vec!["state", "list"],
        vec!["state", "show", "model.gated"],
        vec!["pin"],
        vec!["apply", "--yes"],
    ] {
        let out = run(&sb, &args, &env).await;
        seen.push_str(&format!("$ {args:?}\n{}\n{}\n", out.stdout, out.stderr));
    }
    // The runs did reach the places the token could leak through.
    assert_eq!(
        std::fs::read(sb.path("models/gated.safetensors")).unwrap(),
        data
    );
    assert!(
        seen.contains("the token in $HF_TOKEN was sent and rejected"),
        "{seen}"
    );
    assert!(seen.contains("token=***"), "{seen}");
    assert!(seen.contains("has sha256"), "{seen}");
    assert!(
        !seen.contains(TOKEN),
        "the token leaked into output:\n{seen}"
    );

    let mut files = vec![sb.path("saved.plan")];
    let mut dirs = vec![sb.path(".plasma")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(files.iter().any(|f| f.ends_with("model.gated.log")));
    assert!(files.iter().any(|f| f.ends_with("state.json")));
    for file in files {
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        assert!(
            !text.contains(TOKEN),
            "the token leaked into {}",
            file.display()
        );
    }
}

// ---- Issue 9: secrets in URLs, unpinned content, deadlines, messages.

/// Three kinds of URL secret (user-info, `?token=`, an S3 signature), each on
/// a one-line model so every diagnostic quotes it. No command's output, no
/// log, no plan file and no state may show any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_secrets_reach_no_output_log_plan_or_state() {
    let data = safetensors_file(100_000, 11);
    let server = serve(vec![
        ("/a.safetensors", Route::new(data.clone())),
        ("/b", Route::new(data.clone())),
        ("/c", Route::new(data.clone())),
    ])
    .await;
    let authority = server.authority();
    const SECRETS: [&str; 4] = [
        "userinfo-secret-1",
        "query-secret-2",
        "amz-signature-secret-3",
        "AKIAcredential4",
    ];
    let sb = Sandbox::new();
    sb.spec(&format!(
        "model a {{ url \"http://alice:userinfo-secret-1@{authority}/a.safetensors\"; path \"models/a.safetensors\"; }}\n\
         model b {{ url \"http://{authority}/b?type=Model&token=query-secret-2\"; path \"models/b.safetensors\"; }}\n\
         model c {{ url \"http://{authority}/c?X-Amz-Signature=amz-signature-secret-3&X-Amz-Credential=AKIAcredential4\"; path \"models/c.safetensors\"; }}\n"
    ));
    let mut seen = String::new();
    for args in [
        vec!["validate"],
        vec!["validate", "--json"],
        vec!["graph"],
        vec!["plan"],
        vec!["plan", "--json"],
        vec!["plan", "--out", "saved.plan"],
        vec!["show", "model.b"],
        vec!["apply", "--yes"],
        vec!["plan"],
        vec!["plan", "--json"],
        vec!["drift"],
        vec!["drift", "--json"],
        vec!["show", "model.c"],
        vec!["show", "model.c", "--json"],
        vec!["state", "show", "model.a"],
        vec!["pin"],
        vec!["plan"],
    ] {
        let out = run(&sb, &args, &[]).await;
        seen.push_str(&format!("$ {args:?}\n{}\n{}\n", out.stdout, out.stderr));
    }
    // The runs reached the places a secret could leak through.
    for name in ["a", "b", "c"] {
        assert_eq!(
            std::fs::read(sb.path(&format!("models/{name}.safetensors"))).unwrap(),
            data
        );
    }
    assert!(
        seen.contains("unpinned-model"),
        "lints quoted the lines:\n{seen}"
    );
    assert!(seen.contains("token=***"), "{seen}");
    assert!(seen.contains("X-Amz-Signature=***"), "{seen}");
    assert!(seen.contains("http://***@"), "{seen}");
    for secret in SECRETS {
        assert!(
            !seen.contains(secret),
            "{secret} leaked into output:\n{seen}"
        );
    }
    let mut files = vec![sb.path("saved.plan")];
    let mut dirs = vec![sb.path(".plasma")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(files.iter().any(|f| f.ends_with("model.b.log")));
    assert!(files.iter().any(|f| f.ends_with("state.json")));
    for file in files {
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        for secret in SECRETS {
            assert!(
                !text.contains(secret),
                "{secret} leaked into {}",
                file.display()
            );
        }
    }
}

/// Unpinned, a JSON error answered with 200 is refused: no file, no digest
/// recorded, nothing for `pin` to write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpinned_error_body_is_not_placed_recorded_or_pinned() {
    let server = serve(vec![(
        "/m",
        Route::new(vec![]).fault(Fault::Body {
            content_type: "application/json",
            body: br#"{"error":"Unauthorized"}"#,
        }),
    )])
    .await;
    let sb = Sandbox::new();
    sb.spec(&model_spec(
        "m",
        &server.url("/m"),
        "models/m.safetensors",
        "",
    ));
    let apply = run(&sb, &["apply", "--yes"], &[]).await;
    apply.code(1);
    assert!(
        apply
            .stderr
            .contains("what was received is not a safetensors file")
            && apply.stderr.contains("Content-Type application/json")
            && apply.stderr.contains(r#"{\"error\":\"Unauthorized\"}"#),
        "{}",
        apply.stderr
    );
    assert_nothing_placed(&sb.path("models/m.safetensors"));
    let pin = run(&sb, &["pin"], &[]).await;
    assert!(!sb.read("plasma.kdl").contains("sha256"), "{pin:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_page_names_the_unset_token_variable() {
    let server = serve(vec![("/m", Route::new(vec![]).fault(Fault::HtmlLogin))]).await;
    let sb = Sandbox::new();
    sb.spec(&model_spec(
        "m",
        &server.url("/m"),
        "models/m.safetensors",
        "    token-env CIVITAI_TOKEN\n",
    ));
    let apply = run(&sb, &["apply", "--yes"], &[]).await;
    apply.code(1);
    assert!(
        apply
            .stderr
            .contains("the server sent a web page, not the file")
            && apply
                .stderr
                .contains("the model's token-env is CIVITAI_TOKEN, but $CIVITAI_TOKEN is not set"),
        "{}",
        apply.stderr
    );
    assert_nothing_placed(&sb.path("models/m.safetensors"));
}

/// A shared models folder on an unmounted disk: a symlink to nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dangling_models_folder_is_named_in_plan_and_apply() {
    let server = serve(vec![("/m", Route::new(safetensors_file(1000, 1)))]).await;
    let sb = Sandbox::new();
    std::os::unix::fs::symlink("/nonexistent/Volumes/External/models", sb.path("models")).unwrap();
    sb.spec(&model_spec(
        "m",
        &server.url("/m"),
        "models/ckpt/m.safetensors",
        "",
    ));
    let said = "is a symbolic link to /nonexistent/Volumes/External/models, which does not \
                exist (an external disk that is not mounted?)";
    for args in [vec!["plan"], vec!["apply", "--yes"]] {
        let out = run(&sb, &args, &[]).await;
        out.code(1);
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(all.contains(said), "{args:?}: {all}");
        assert!(all.contains("mount the disk"), "{args:?}: {all}");
        assert!(!all.contains("File exists"), "{args:?}: {all}");
    }
    assert!(server.requests().is_empty());
}

#[test]
fn sizes_that_overflow_or_split_a_byte_are_spec_errors_at_their_span() {
    let sb = Sandbox::new();
    sb.spec(
        r#"model a {
    url "https://example.com/a.safetensors"
    path "models/a.safetensors"
    size "20000000000GB"
}
model b {
    url "https://example.com/b.safetensors"
    path "models/b.safetensors"
    size "1.5"
}
model c {
    url "https://example.com/c.safetensors"
    path "models/c.safetensors"
    size 2.5
}
model d {
    url "https://example.com/d.safetensors"
    path "models/d.safetensors"
    size "2.1GB"
    timeout "2h"
    min-speed "10KB/s"
}
model e {
    url "https://example.com/e.safetensors"
    url "https://mirror.example/e.safetensors" token-env="hf_abc123-not-a-name"
    path "models/e.safetensors"
    min-speed "fast"
}
"#,
    );
    let out = sb.run(&["validate"]);
    out.code(1);
    for said in [
        "spec::size-too-large",
        "`20000000000GB` is more bytes than a file can have",
        "spec::fractional-size",
        "`1.5` is a fraction of a byte",
        "`2.5` is a fraction of a byte",
        "spec::malformed-speed",
        "`fast` is not a speed",
        "spec::malformed-token-env",
    ] {
        assert!(out.stderr.contains(said), "{said}: {}", out.stderr);
    }
    // At their spans: the quoted lines are underlined.
    assert!(
        out.stderr.contains("size \"20000000000GB\""),
        "{}",
        out.stderr
    );
    // d is valid: only its lint (no sha256) may quote it, never a size error.
    for line in ["size \"2.1GB\"", "timeout \"2h\"", "min-speed \"10KB/s\""] {
        assert!(!out.stderr.contains(line), "d is valid: {}", out.stderr);
    }
}

/// `size "0.3MB"` holds a 300 000-byte file within 0.05 MB; `"0.2MB"` does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_size_matches_at_the_precision_it_was_written() {
    let data = safetensors_file(310_000, 3);
    let server = serve(vec![("/m", Route::new(data.clone()))]).await;
    let sb = Sandbox::new();
    sb.spec(&model_spec(
        "m",
        &server.url("/m"),
        "models/m.safetensors",
        "    size \"0.3MB\"\n",
    ));
    run(&sb, &["apply", "--yes"], &[]).await.code(0);
    assert_eq!(
        std::fs::read(sb.path("models/m.safetensors")).unwrap(),
        data
    );
    let plan = run(&sb, &["plan", "--detailed-exitcode"], &[]).await;
    plan.code(0);

    let other = Sandbox::new();
    other.spec(&model_spec(
        "m",
        &server.url("/m"),
        "models/m.safetensors",
        "    size \"0.2MB\"\n",
    ));
    let apply = run(&other, &["apply", "--yes"], &[]).await;
    apply.code(1);
    assert!(
        apply
            .stderr
            .contains("is 310000 bytes, but the spec's size says 0.2MB (150000 to 250000 bytes)"),
        "{}",
        apply.stderr
    );
    assert_nothing_placed(&other.path("models/m.safetensors"));
}

/// One byte every 2 s would hold apply (and the state lock) for days; the
/// model's `timeout` ends it, keeping the bytes so far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_server_ends_within_the_models_timeout() {
    let server = serve(vec![(
        "/m",
        Route::new(safetensors_file(10_000, 4)).fault(Fault::Trickle {
            chunk: 1,
            pause: Duration::from_secs(2),
        }),
    )])
    .await;
    let sb = Sandbox::new();
    sb.spec(&model_spec(
        "m",
        &server.url("/m"),
        "models/m.safetensors",
        "    timeout \"3s\"\n",
    ));
    let started = std::time::Instant::now();
    let apply = run(&sb, &["apply", "--yes"], &[]).await;
    let took = started.elapsed();
    apply.code(1);
    assert!(took < Duration::from_secs(15), "apply took {took:?}");
    assert!(
        apply
            .stderr
            .contains("did not finish within 3s (the model's `timeout`)")
            && apply.stderr.contains("longer `timeout`"),
        "{}",
        apply.stderr
    );
    assert!(!sb.path("models/m.safetensors").exists());
}

/// `url "…" token-env=VAR` gives a mirror on another host its own token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_url_carries_its_own_token_env() {
    let data = safetensors_file(50_000, 5);
    let main = serve(vec![]).await;
    let mirror = HttpFixture::new()
        .route(
            "/m",
            Route::new(data.clone()).fault(Fault::RequireBearer("mirror-token-77".into())),
        )
        .start_on("127.0.0.2")
        .await;
    let sb = Sandbox::new();
    sb.spec(&format!(
        "model m {{\n    url \"{}\"\n    url \"{}\" token-env=MIRROR_TOKEN\n    path \"models/m.safetensors\"\n    token-env MAIN_TOKEN\n}}\n",
        main.url("/m"),
        mirror.url("/m")
    ));
    let env = [("MAIN_TOKEN", TOKEN), ("MIRROR_TOKEN", "mirror-token-77")];
    run(&sb, &["apply", "--yes"], &env).await.code(0);
    assert_eq!(
        std::fs::read(sb.path("models/m.safetensors")).unwrap(),
        data
    );
    assert!(main.requests().iter().all(|r| r.authorization_present));
    for seen in mirror.requests() {
        assert_eq!(
            seen.headers.get("authorization").map(String::as_str),
            Some("Bearer mirror-token-77")
        );
    }
}

/// Mirrors that answer 404 and 410: each is said as it is, and nothing
/// promises a resume, since nothing was kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_gone_mirrors_promise_no_resume() {
    let server = serve(vec![(
        "/gone",
        Route::new(vec![]).fault(Fault::Status(410)),
    )])
    .await;
    let sb = Sandbox::new();
    sb.spec(&format!(
        "model m {{\n    url \"{}\" \"{}\"\n    path \"models/m.safetensors\"\n}}\n",
        server.url("/missing"),
        server.url("/gone")
    ));
    let apply = run(&sb, &["apply", "--yes"], &[]).await;
    apply.code(1);
    assert!(
        apply.stderr.contains("was not found (404)") && apply.stderr.contains("is gone (410)"),
        "{}",
        apply.stderr
    );
    assert!(!apply.stderr.contains("resume"), "{}", apply.stderr);
    assert_nothing_placed(&sb.path("models/m.safetensors"));
}
