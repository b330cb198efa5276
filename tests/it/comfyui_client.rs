//! The ComfyUI client against the stand-in server (support/comfyfix.rs: a
//! stand-in honouring the contract's observed v0.3.27 behaviour, not ComfyUI).

use std::sync::Mutex;
use std::time::Duration;

use plasma::comfyui::workflow::{Txt2Img, vary_seed};
use plasma::comfyui::{Client, ComfyError, StepProgress};
use serde_json::Value;

use crate::support::comfyfix::{Config, StandIn};

fn graph(steps: u64) -> Value {
    Txt2Img {
        checkpoint: "test-sd15.safetensors".into(),
        vae: None,
        lora: None,
        prompt: "a cat".into(),
        negative: "".into(),
        width: 64,
        height: 64,
        steps,
        sampler: "euler_ancestral".into(),
        scheduler: "normal".into(),
        cfg: 7.0,
        seed: 42,
    }
    .graph()
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_run_reports_progress_images_and_the_device() {
    let server = StandIn::start(Config::default());
    let client = Client::new(&server.url()).unwrap();
    let seen = Mutex::new(Vec::new());
    let outcome = client
        .run(&graph(5), MINUTE, &|p: StepProgress| {
            seen.lock().unwrap().push((p.value, p.max))
        })
        .await
        .unwrap();
    assert_eq!(
        seen.into_inner().unwrap(),
        [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    );
    assert_eq!(outcome.steps.unwrap().value, 5);
    assert!(outcome.steps.unwrap().it_per_s.is_some());
    assert_eq!(outcome.images[0].filename, "plasma-benchmark_00001_.png");
    assert!(!outcome.polled);
    // The prompt went out with the socket's client id.
    let posted = server.prompts();
    assert!(
        posted[0]["client_id"]
            .as_str()
            .is_some_and(|s| s.len() == 32)
    );
    let stats = client.system_stats().await.unwrap();
    assert_eq!(
        (stats.device_type.as_str(), stats.comfyui_version.as_deref()),
        ("cpu", Some("0.3.27"))
    );
    server.configure(|c| c.device = "mps".into());
    assert_eq!(client.system_stats().await.unwrap().device_type, "mps");
    let bytes = client.view(&outcome.images[0]).await.unwrap();
    assert!(bytes.starts_with(b"\x89PNG"));
}

#[tokio::test]
async fn a_repeated_prompt_is_answered_from_the_cache_and_a_new_seed_runs() {
    let server = StandIn::start(Config::default());
    let client = Client::new(&server.url()).unwrap();
    let g = graph(4);
    client.run(&g, MINUTE, &|_| {}).await.unwrap();
    let again = client.run(&g, MINUTE, &|_| {}).await.unwrap();
    assert_eq!(
        server.steps_run(),
        4,
        "the stand-in ran nothing the second time"
    );
    assert_eq!(again.cached_nodes.len(), 7, "{:?}", again.cached_nodes);
    assert!(again.steps.is_none());
    client
        .run(&vary_seed(&g, 1).unwrap(), MINUTE, &|_| {})
        .await
        .unwrap();
    assert_eq!(server.steps_run(), 8);
}

#[tokio::test]
async fn a_dropped_socket_falls_back_to_the_history() {
    let server = StandIn::start(Config {
        drop_socket_after_steps: Some(2),
        step_delay: Duration::from_millis(50),
        ..Config::default()
    });
    let client = Client::new(&server.url()).unwrap();
    let outcome = client.run(&graph(6), MINUTE, &|_| {}).await.unwrap();
    assert!(outcome.polled);
    assert_eq!(server.steps_run(), 6);
    assert_eq!(outcome.images.len(), 1);
    assert!(
        outcome.seconds >= 0.3,
        "the end came from the history: {}",
        outcome.seconds
    );
}

#[tokio::test]
async fn an_execution_error_names_the_node_its_class_and_the_exception() {
    let server = StandIn::start(Config {
        fail_class: Some("CheckpointLoaderSimple".into()),
        ..Config::default()
    });
    let client = Client::new(&server.url()).unwrap();
    let err = client.run(&graph(3), MINUTE, &|_| {}).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "node 4 (CheckpointLoaderSimple) failed: safetensors._safetensors_rust.SafetensorError: \
         Error while deserializing header: header too large"
    );
}

#[tokio::test]
async fn a_model_name_not_listed_is_refused_with_the_node_errors() {
    let server = StandIn::start(Config::default());
    let client = Client::new(&server.url()).unwrap();
    let mut g = graph(3);
    g["4"]["inputs"]["ckpt_name"] = "test-sd15".into();
    let err = client.run(&g, MINUTE, &|_| {}).await.unwrap_err();
    assert!(matches!(err, ComfyError::Rejected { .. }));
    let text = err.to_string();
    assert!(
        text.contains("node 4 (CheckpointLoaderSimple): value_not_in_list: Value not in list: ckpt_name: 'test-sd15' not in ['test-sd15.safetensors']"),
        "{text}"
    );
}

#[tokio::test]
async fn a_run_past_its_timeout_is_interrupted() {
    let server = StandIn::start(Config {
        step_delay: Duration::from_millis(100),
        ..Config::default()
    });
    let client = Client::new(&server.url()).unwrap();
    let err = client
        .run(&graph(50), Duration::from_millis(400), &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ComfyError::Timeout { .. }), "{err}");
    // The interrupt stopped the sampler at its next step.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(server.steps_run() < 10, "{}", server.steps_run());
}
