//! A client for one ComfyUI server: HTTP with reqwest, the event socket with
//! tokio-tungstenite.
//!
//! One run ([`Client::run`]) follows the protocol as the real server needs
//! it: a fresh `clientId` per socket (two sockets sharing an id lose their
//! events), the socket connected before `POST /prompt` carries that id as
//! `client_id` (without it the server sends no `executing`/`execution_*`
//! events to anyone), progress from `progress` events, completion at
//! `executing` with `node: null` for our prompt id. A socket that drops
//! mid-run falls back to polling `/history/{id}`; a run past its timeout is
//! stopped with `POST /interrupt` (global in v0.3.27: it stops whatever runs).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// How long connecting and each plain HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the socket's first `status` message may take after connecting.
const GREETING_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `/history/{id}` is asked once the socket is gone.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Something went wrong talking to ComfyUI or running a prompt.
#[derive(Debug, thiserror::Error)]
pub enum ComfyError {
    /// No answer at all (connection refused, reset, timed out).
    #[error("cannot reach ComfyUI at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// An answer that is not what the API promises.
    #[error("unexpected answer from ComfyUI ({what}): {detail}")]
    Protocol { what: String, detail: String },
    /// `POST /prompt` refused the graph (HTTP 400): validation failed.
    #[error("ComfyUI refused the workflow: {message}{}", node_lines(.nodes))]
    Rejected {
        message: String,
        nodes: Vec<NodeError>,
    },
    /// A node raised while running (`execution_error`).
    #[error("node {node_id} ({class_type}) failed: {exception_type}: {exception_message}")]
    Execution {
        node_id: String,
        class_type: String,
        exception_type: String,
        exception_message: String,
    },
    /// The run was interrupted (`execution_interrupted`), by us or by someone else.
    #[error("the run was interrupted at node {node_id} ({class_type})")]
    Interrupted { node_id: String, class_type: String },
    /// The run did not finish in time; `POST /interrupt` was sent.
    #[error("the run did not finish within {}; it was interrupted", humantime::format_duration(*.after))]
    Timeout { after: Duration },
}

/// One node's validation errors, from the `node_errors` of a 400 answer.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeError {
    pub node_id: String,
    pub class_type: String,
    /// `type`, `message: details` of each error entry.
    pub errors: Vec<(String, String)>,
}

fn node_lines(nodes: &[NodeError]) -> String {
    let mut out = String::new();
    for node in nodes {
        for (kind, text) in &node.errors {
            out.push_str(&format!(
                "\n  node {} ({}): {kind}: {text}",
                node.node_id, node.class_type
            ));
        }
    }
    out
}

/// What `/system_stats` says about the server: versions and its first device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemStats {
    pub comfyui_version: Option<String>,
    pub python_version: Option<String>,
    pub pytorch_version: Option<String>,
    /// The first device's `type`: `cuda`, `mps` or `cpu`.
    pub device_type: String,
    /// The first device's `name` (`cuda:0 NVIDIA …`, `mps`, `cpu`).
    pub device_name: String,
}

/// An image a run saved, as `/view` serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRef {
    pub filename: String,
    #[serde(default)]
    pub subfolder: String,
    #[serde(default, rename = "type")]
    pub kind: String,
}

/// Sampler progress, as shown on the bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepProgress {
    pub value: u64,
    pub max: u64,
    /// Steps per second since the sampler node started, once known.
    pub it_per_s: Option<f64>,
}

/// How one prompt ended when it succeeded.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub prompt_id: String,
    /// Wall time from `POST /prompt` to the completion signal.
    pub seconds: f64,
    /// The last sampler progress seen (absent when the socket dropped first
    /// or no sampler ran).
    pub steps: Option<StepProgress>,
    /// Images of the output nodes, from `/history/{id}`.
    pub images: Vec<ImageRef>,
    /// Nodes ComfyUI answered from its cache instead of running.
    pub cached_nodes: Vec<String>,
    /// True when the socket dropped and the end was learnt by polling.
    pub polled: bool,
}

/// A ComfyUI server at a base URL such as `http://127.0.0.1:8188`.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for `base_url` (`http://host:port`, no trailing path).
    pub fn new(base_url: &str) -> Result<Client, ComfyError> {
        let http = reqwest::Client::builder()
            .connect_timeout(REQUEST_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| ComfyError::Unreachable {
                url: base_url.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            base: base_url.trim_end_matches('/').to_string(),
            http,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> ComfyError {
        ComfyError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        }
    }

    async fn get_json(&self, path: &str) -> Result<Value, ComfyError> {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(protocol(
                format!("GET {path}"),
                format!("HTTP {status}: {}", snippet(&bytes)),
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| protocol(format!("GET {path}"), e))
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<(u16, Value), ComfyError> {
        let response = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        if bytes.is_empty() {
            return Ok((status, Value::Null));
        }
        match serde_json::from_slice(&bytes) {
            Ok(v) => Ok((status, v)),
            Err(_) if !(200..300).contains(&status) => Err(protocol(
                format!("POST {path}"),
                format!("HTTP {status}: {}", snippet(&bytes)),
            )),
            Err(_) => Ok((status, Value::Null)),
        }
    }

    /// `GET /system_stats`: versions and the first device.
    pub async fn system_stats(&self) -> Result<SystemStats, ComfyError> {
        let v = self.get_json("/system_stats").await?;
        let system = &v["system"];
        let text = |x: &Value| x.as_str().map(str::to_string);
        let device = v["devices"]
            .as_array()
            .and_then(|d| d.first())
            .ok_or_else(|| protocol("GET /system_stats", "no `devices` listed"))?;
        Ok(SystemStats {
            comfyui_version: text(&system["comfyui_version"]),
            python_version: text(&system["python_version"]),
            pytorch_version: text(&system["pytorch_version"]),
            device_type: text(&device["type"]).unwrap_or_else(|| "unknown".into()),
            device_name: text(&device["name"]).unwrap_or_default(),
        })
    }

    /// `GET /object_info`: every node class the server knows, with its inputs.
    pub async fn object_info(&self) -> Result<Value, ComfyError> {
        self.get_json("/object_info").await
    }

    /// `GET /history/{id}`: the prompt's entry once it finished, else `None`.
    pub async fn history(&self, prompt_id: &str) -> Result<Option<Value>, ComfyError> {
        let v = self.get_json(&format!("/history/{prompt_id}")).await?;
        Ok(v.get(prompt_id).cloned())
    }

    /// `POST /interrupt`. In v0.3.27 this stops whatever runs, whoever queued it.
    pub async fn interrupt(&self) -> Result<(), ComfyError> {
        self.post_json("/interrupt", &json!({})).await.map(|_| ())
    }

    /// `GET /view`: an image's bytes.
    pub async fn view(&self, image: &ImageRef) -> Result<Vec<u8>, ComfyError> {
        let kind = if image.kind.is_empty() {
            "output"
        } else {
            &image.kind
        };
        let response = self
            .http
            .get(self.url("/view"))
            .query(&[
                ("filename", image.filename.as_str()),
                ("subfolder", image.subfolder.as_str()),
                ("type", kind),
            ])
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(protocol(
                format!("GET /view {}", image.filename),
                format!("HTTP {status}"),
            ));
        }
        Ok(bytes.to_vec())
    }

    /// The WebSocket URL for a client id: `ws://host:port/ws?clientId=…`.
    fn socket_url(&self, client_id: &str) -> String {
        let base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.base.clone()
        };
        format!("{base}/ws?clientId={client_id}")
    }

    /// Runs one API-format `prompt` and waits for it to end, calling
    /// `on_progress` for each sampler step. Past `timeout` the run is
    /// interrupted and [`ComfyError::Timeout`] returned.
    pub async fn run(
        &self,
        prompt: &Value,
        timeout: Duration,
        on_progress: &(dyn Fn(StepProgress) + Send + Sync),
    ) -> Result<RunOutcome, ComfyError> {
        // A fresh id per socket: the server routes a prompt's events by it.
        let client_id = crate::fsutil::random_hex(16);
        let (mut socket, _) = tokio::time::timeout(
            REQUEST_TIMEOUT,
            tokio_tungstenite::connect_async(self.socket_url(&client_id)),
        )
        .await
        .map_err(|_| self.unreachable("the WebSocket did not connect in time"))?
        .map_err(|e| self.unreachable(format!("WebSocket: {e}")))?;
        // The first message (`status` with our `sid`) shows the server has
        // registered the socket: only then is it safe to submit.
        match tokio::time::timeout(GREETING_TIMEOUT, socket.next()).await {
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(self.unreachable(format!("WebSocket: {e}"))),
            Ok(None) | Err(_) => {
                return Err(protocol(
                    "GET /ws",
                    "the socket sent no `status` message after connecting",
                ));
            }
        }

        let started = Instant::now();
        let deadline = started + timeout;
        let prompt_id = self.submit(prompt, &client_id).await?;
        let mut watch = Watch::new(prompt_id.clone());
        let mut polled = false;
        let ended = loop {
            let next = tokio::time::timeout_at(deadline.into(), socket.next()).await;
            match next {
                Err(_) => {
                    let _ = socket.close(None).await;
                    return Err(self.stop(timeout).await);
                }
                Ok(Some(Ok(Message::Text(text)))) => {
                    let Ok(event) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    if let Some(end) = watch.event(&event, on_progress) {
                        break end;
                    }
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                    // The socket is gone: learn the end from the history.
                    polled = true;
                    break self.poll(&prompt_id, deadline, timeout).await?;
                }
                Ok(Some(Ok(_))) => {} // binary previews, pings
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        let _ = socket.close(None).await;
        ended?;
        // The history holds the outputs (and is what the official example reads).
        let entry = self.history(&prompt_id).await?.ok_or_else(|| {
            protocol(
                format!("GET /history/{prompt_id}"),
                "no entry after the run",
            )
        })?;
        if let Some(failure) = failure_in_history(&entry) {
            return Err(failure);
        }
        Ok(RunOutcome {
            prompt_id,
            seconds,
            steps: watch.last_progress,
            images: images_in(&entry),
            cached_nodes: watch.cached,
            polled,
        })
    }

    /// `POST /prompt` with our `client_id`; the prompt id, or why it was refused.
    async fn submit(&self, prompt: &Value, client_id: &str) -> Result<String, ComfyError> {
        let (status, body) = self
            .post_json(
                "/prompt",
                &json!({"prompt": prompt, "client_id": client_id}),
            )
            .await?;
        if status == 200 {
            return body["prompt_id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| protocol("POST /prompt", "no `prompt_id` in the answer"));
        }
        if status == 400 {
            return Err(rejection(&body));
        }
        Err(protocol("POST /prompt", format!("HTTP {status}: {body}")))
    }

    /// Polls `/history/{id}` until the prompt's entry appears or the deadline.
    async fn poll(
        &self,
        prompt_id: &str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Result<(), ComfyError>, ComfyError> {
        loop {
            if let Some(entry) = self.history(prompt_id).await? {
                let completed = entry["status"]["completed"].as_bool().unwrap_or(true);
                let failure = failure_in_history(&entry);
                if completed || failure.is_some() {
                    return Ok(failure.map_or(Ok(()), Err));
                }
            }
            if Instant::now() + POLL_INTERVAL >= deadline {
                return Err(self.stop(timeout).await);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Interrupts the run that went past its timeout.
    async fn stop(&self, timeout: Duration) -> ComfyError {
        let _ = self.interrupt().await;
        ComfyError::Timeout { after: timeout }
    }
}

/// Follows one prompt's events on the socket.
struct Watch {
    prompt_id: String,
    /// When the node currently executing started, and its id.
    node_started: Option<(String, Instant)>,
    last_progress: Option<StepProgress>,
    cached: Vec<String>,
}

impl Watch {
    fn new(prompt_id: String) -> Watch {
        Watch {
            prompt_id,
            node_started: None,
            last_progress: None,
            cached: Vec::new(),
        }
    }

    fn ours(&self, data: &Value) -> bool {
        data["prompt_id"].as_str() == Some(self.prompt_id.as_str())
    }

    /// Handles one event; `Some` when the run ended (with how).
    fn event(
        &mut self,
        event: &Value,
        on_progress: &(dyn Fn(StepProgress) + Send + Sync),
    ) -> Option<Result<(), ComfyError>> {
        let data = &event["data"];
        match event["type"].as_str()? {
            "executing" if self.ours(data) => match data["node"].as_str() {
                None => return Some(Ok(())),
                Some(node) => self.node_started = Some((node.to_string(), Instant::now())),
            },
            "execution_cached" if self.ours(data) => {
                self.cached = string_list(&data["nodes"]);
            }
            // Progress carries our prompt id when we posted with a client id;
            // an event of another prompt is not ours.
            "progress" if data["prompt_id"].is_null() || self.ours(data) => {
                let value = data["value"].as_u64().unwrap_or(0);
                let max = data["max"].as_u64().unwrap_or(0);
                let it_per_s = self.node_started.as_ref().and_then(|(_, at)| {
                    let secs = at.elapsed().as_secs_f64();
                    (value > 0 && secs > 0.0).then(|| value as f64 / secs)
                });
                let step = StepProgress {
                    value,
                    max,
                    it_per_s,
                };
                self.last_progress = Some(step);
                on_progress(step);
            }
            "execution_error" if self.ours(data) => {
                return Some(Err(execution_error(data)));
            }
            "execution_interrupted" if self.ours(data) => {
                return Some(Err(ComfyError::Interrupted {
                    node_id: text_of(&data["node_id"]),
                    class_type: text_of(&data["node_type"]),
                }));
            }
            _ => {}
        }
        None
    }
}

fn execution_error(data: &Value) -> ComfyError {
    ComfyError::Execution {
        node_id: text_of(&data["node_id"]),
        class_type: text_of(&data["node_type"]),
        exception_type: text_of(&data["exception_type"]),
        exception_message: data["exception_message"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// A failure recorded in a history entry's `status.messages`.
fn failure_in_history(entry: &Value) -> Option<ComfyError> {
    let messages = entry["status"]["messages"].as_array()?;
    for message in messages {
        let (Some(kind), data) = (message[0].as_str(), &message[1]) else {
            continue;
        };
        match kind {
            "execution_error" => return Some(execution_error(data)),
            "execution_interrupted" => {
                return Some(ComfyError::Interrupted {
                    node_id: text_of(&data["node_id"]),
                    class_type: text_of(&data["node_type"]),
                });
            }
            _ => {}
        }
    }
    (entry["status"]["status_str"].as_str() == Some("error")).then(|| ComfyError::Protocol {
        what: "the history".into(),
        detail: "the prompt ended with status `error` and no error message".into(),
    })
}

/// Every image of every output node in a history entry, in node order.
fn images_in(entry: &Value) -> Vec<ImageRef> {
    let mut images = Vec::new();
    if let Some(outputs) = entry["outputs"].as_object() {
        for output in outputs.values() {
            for image in output["images"].as_array().into_iter().flatten() {
                if let Ok(image) = serde_json::from_value::<ImageRef>(image.clone()) {
                    images.push(image);
                }
            }
        }
    }
    images
}

/// A 400 from `POST /prompt`, in both shapes: `error` an object (later
/// releases) or a string (v0.3.27); `node_errors` a map or a list.
fn rejection(body: &Value) -> ComfyError {
    let error = &body["error"];
    let message = match error {
        Value::String(s) => s.clone(),
        Value::Object(_) => {
            let message = text_of(&error["message"]);
            match error["details"].as_str().filter(|d| !d.is_empty()) {
                Some(details) => format!("{message}: {details}"),
                None => message,
            }
        }
        other => other.to_string(),
    };
    let mut nodes = Vec::new();
    if let Some(map) = body["node_errors"].as_object() {
        for (node_id, entry) in map {
            let errors = entry["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let text = match e["details"].as_str().filter(|d| !d.is_empty()) {
                        Some(d) => format!("{}: {d}", text_of(&e["message"])),
                        None => text_of(&e["message"]),
                    };
                    (text_of(&e["type"]), text)
                })
                .collect();
            nodes.push(NodeError {
                node_id: node_id.clone(),
                class_type: text_of(&entry["class_type"]),
                errors,
            });
        }
    }
    ComfyError::Rejected { message, nodes }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn string_list(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().map(text_of).collect()
}

fn protocol(what: impl Into<String>, detail: impl std::fmt::Display) -> ComfyError {
    ComfyError::Protocol {
        what: what.into(),
        detail: detail.to_string(),
    }
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_of_both_releases_name_node_class_and_error() {
        let later = json!({"error": {"type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
          "node_errors": {"4": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
            "details": "ckpt_name: 'missing.safetensors' not in ['v1-5.safetensors']", "extra_info": {}}],
            "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"}}});
        let text = rejection(&later).to_string();
        assert!(text.contains("Prompt outputs failed validation"), "{text}");
        assert!(
            text.contains("node 4 (CheckpointLoaderSimple): value_not_in_list: Value not in list: ckpt_name: 'missing.safetensors'"),
            "{text}"
        );
        let old = json!({"error": "no prompt", "node_errors": []});
        assert_eq!(
            rejection(&old).to_string(),
            "ComfyUI refused the workflow: no prompt"
        );
    }

    #[test]
    fn history_failures_become_errors_naming_the_node() {
        let entry = json!({"status": {"status_str": "error", "completed": false, "messages": [
            ["execution_start", {"prompt_id": "p"}],
            ["execution_error", {"prompt_id": "p", "node_id": "10", "node_type": "LoraLoader",
              "exception_type": "safetensors._safetensors_rust.SafetensorError",
              "exception_message": "Error while deserializing header: header too large\n"}]]}});
        assert_eq!(
            failure_in_history(&entry).unwrap().to_string(),
            "node 10 (LoraLoader) failed: safetensors._safetensors_rust.SafetensorError: \
             Error while deserializing header: header too large"
        );
        let ok = json!({"status": {"status_str": "success", "completed": true, "messages": []},
            "outputs": {"9": {"images": [{"filename": "a_00001_.png", "subfolder": "", "type": "output"}]}}});
        assert!(failure_in_history(&ok).is_none());
        assert_eq!(images_in(&ok)[0].filename, "a_00001_.png");
    }

    #[test]
    fn completion_is_executing_null_for_our_prompt_only() {
        let mut watch = Watch::new("ours".into());
        let quiet = |_: StepProgress| {};
        let theirs = json!({"type": "executing", "data": {"node": null, "prompt_id": "theirs"}});
        assert!(watch.event(&theirs, &quiet).is_none());
        let reconnect = json!({"type": "executing", "data": {"node": "3"}});
        assert!(watch.event(&reconnect, &quiet).is_none());
        let done = json!({"type": "executing", "data": {"node": null, "prompt_id": "ours"}});
        assert!(matches!(watch.event(&done, &quiet), Some(Ok(()))));
    }

    #[test]
    fn socket_urls_follow_the_base_scheme() {
        let c = Client::new("http://127.0.0.1:8188/").unwrap();
        assert_eq!(c.socket_url("abc"), "ws://127.0.0.1:8188/ws?clientId=abc");
    }
}
