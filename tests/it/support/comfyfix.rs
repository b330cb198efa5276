//! A **stand-in** for a ComfyUI v0.3.27 server, for the fast tests. It is
//! not ComfyUI: it runs no model. It answers the routes the benchmark uses
//! the way the contract's last section ("Observed on the real ComfyUI
//! v0.3.27") records them:
//!
//! - `/system_stats` with `comfyui_version` "0.3.27", python and torch
//!   versions, and one device (`cpu` by default, as `--cpu` reports it);
//! - `/object_info` with the loaders' option lists (file names with extensions);
//! - `POST /prompt`: 400 `{"error": "no prompt", "node_errors": []}` without
//!   a prompt, `invalid_prompt` with `node_errors: []` for an unknown class,
//!   `prompt_outputs_failed_validation` with a `value_not_in_list` entry for a
//!   model name not listed; a client-chosen `prompt_id` is ignored;
//! - `/ws?clientId=`: `status` with `sid` on connect; per run `status` ×2,
//!   `execution_start`, `execution_cached`, `executing` per node run,
//!   `progress` per sampler step, `executed` for SaveImage,
//!   `execution_success`, `status`, `executing {node: null}`; no
//!   `progress_state`; events only to the socket named by the prompt's `client_id`
//!   (only `progress` is broadcast when there is none);
//! - caching: the nodes of the previous prompt whose inputs (and inputs'
//!   inputs) did not change are not run; an identical prompt "finishes"
//!   at once, returning the previous file name and writing nothing new;
//! - `POST /interrupt` is global and takes effect at the next sampler step;
//! - `/history/{id}` with `status.messages`, `outputs`; `/view` serves the
//!   "images" (a few PNG-signature bytes).
//!
//! Faults a test can inject: an `execution_error` at a node class, the
//! socket dropped after N sampler steps (the run goes on), slow steps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// What the stand-in serves; change it between runs with [`StandIn::configure`].
#[derive(Debug, Clone)]
pub struct Config {
    /// `devices[0].type` and `name`: `cpu`, `mps`, `cuda`.
    pub device: String,
    pub checkpoints: Vec<String>,
    pub loras: Vec<String>,
    pub vaes: Vec<String>,
    /// Time per sampler step.
    pub step_delay: Duration,
    /// Nodes of this class raise (`execution_error`) when they run.
    pub fail_class: Option<String>,
    /// Close the client's socket after this many sampler steps (once).
    pub drop_socket_after_steps: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            device: "cpu".into(),
            checkpoints: vec!["test-sd15.safetensors".into()],
            loras: vec![],
            vaes: vec![],
            step_delay: Duration::from_millis(5),
            fail_class: None,
            drop_socket_after_steps: None,
        }
    }
}

#[derive(Default)]
struct Inner {
    config: Config,
    sockets: HashMap<String, mpsc::UnboundedSender<Message>>,
    history: serde_json::Map<String, Value>,
    /// The previous prompt's nodes, for caching, and its output file names.
    previous: Option<(Value, Vec<Value>)>,
    interrupt: bool,
    counter: u64,
    image_counter: u64,
    /// Sampler steps actually run, over all prompts.
    steps_run: u64,
    prompts: Vec<Value>,
}

/// A running stand-in on 127.0.0.1, on its own thread and runtime.
pub struct StandIn {
    addr: std::net::SocketAddr,
    inner: Arc<Mutex<Inner>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl StandIn {
    pub fn start(config: Config) -> StandIn {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let inner = Arc::new(Mutex::new(Inner {
            config,
            ..Inner::default()
        }));
        // Bound outside the runtime: tests may start the stand-in from async code.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (queue, mut queued) = mpsc::unbounded_channel::<(String, Value, String)>();
        let worker_inner = inner.clone();
        runtime.spawn(async move {
            while let Some((id, prompt, client)) = queued.recv().await {
                execute(&worker_inner, &id, &prompt, &client).await;
            }
        });
        let accept_inner = inner.clone();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("listener");
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, accept_inner.clone(), queue.clone()));
            }
        });
        StandIn {
            addr,
            inner,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn configure(&self, change: impl FnOnce(&mut Config)) {
        change(&mut self.inner.lock().unwrap().config);
    }

    /// Every prompt posted, as received.
    pub fn prompts(&self) -> Vec<Value> {
        self.inner.lock().unwrap().prompts.clone()
    }

    /// Sampler steps run so far (cached prompts run none).
    pub fn steps_run(&self) -> u64 {
        self.inner.lock().unwrap().steps_run
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q),
        None => (target.clone(), ""),
    };
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

async fn respond(stream: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}

async fn respond_json(stream: &mut TcpStream, status: u16, value: &Value) {
    respond(
        stream,
        status,
        "application/json",
        value.to_string().as_bytes(),
    )
    .await;
}

type Queue = mpsc::UnboundedSender<(String, Value, String)>;

async fn serve(mut stream: TcpStream, inner: Arc<Mutex<Inner>>, queue: Queue) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/ws") => socket(stream, request, inner).await,
        ("GET", "/system_stats") => {
            let device = inner.lock().unwrap().config.device.clone();
            let stats = json!({
                "system": {"os": "posix", "ram_total": 8_000_000_000u64, "ram_free": 4_000_000_000u64,
                    "comfyui_version": "0.3.27", "python_version": "3.11.2 (main) [GCC 12.2.0]",
                    "pytorch_version": "2.5.1+cpu", "embedded_python": false, "argv": ["main.py"]},
                "devices": [{"name": device, "type": device, "index": null,
                    "vram_total": 8_000_000_000u64, "vram_free": 4_000_000_000u64,
                    "torch_vram_total": 8_000_000_000u64, "torch_vram_free": 4_000_000_000u64}]});
            respond_json(&mut stream, 200, &stats).await;
        }
        ("GET", "/object_info") => {
            let info = object_info(&inner.lock().unwrap().config);
            respond_json(&mut stream, 200, &info).await;
        }
        ("POST", "/prompt") => {
            let (status, body) = post_prompt(&request.body, &inner, &queue);
            match body {
                Some(body) => respond_json(&mut stream, status, &body).await,
                None => {
                    respond(
                        &mut stream,
                        500,
                        "text/plain",
                        b"500 Internal Server Error\n\nServer got itself in trouble",
                    )
                    .await
                }
            }
        }
        ("POST", "/interrupt") => {
            inner.lock().unwrap().interrupt = true;
            respond(&mut stream, 200, "text/plain", b"").await;
        }
        ("GET", path) if path.starts_with("/history/") => {
            let id = &path["/history/".len()..];
            let entry = inner.lock().unwrap().history.get(id).cloned();
            let body = match entry {
                Some(e) => json!({ id: e }),
                None => json!({}),
            };
            respond_json(&mut stream, 200, &body).await;
        }
        ("GET", "/view") if request.query.contains_key("filename") => {
            let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
            png.extend_from_slice(request.query["filename"].as_bytes());
            respond(&mut stream, 200, "image/png", &png).await;
        }
        _ => respond(&mut stream, 404, "text/plain", b"404: Not Found").await,
    }
}

fn loader(input: &str, options: &[String]) -> Value {
    json!({"input": {"required": {input: [options, {"tooltip": "file name"}]}},
           "output_node": false, "category": "loaders"})
}

fn object_info(config: &Config) -> Value {
    json!({
        "CheckpointLoaderSimple": loader("ckpt_name", &config.checkpoints),
        "LoraLoader": loader("lora_name", &config.loras),
        "VAELoader": loader("vae_name", &config.vaes),
        "ControlNetLoader": loader("control_net_name", &[]),
        "CLIPTextEncode": {"input": {"required": {"text": ["STRING", {}], "clip": ["CLIP"]}}, "output_node": false},
        "EmptyLatentImage": {"input": {"required": {"width": ["INT", {}], "height": ["INT", {}], "batch_size": ["INT", {}]}}, "output_node": false},
        "KSampler": {"input": {"required": {"seed": ["INT", {}], "steps": ["INT", {}]}}, "output_node": false},
        "VAEDecode": {"input": {"required": {"samples": ["LATENT"], "vae": ["VAE"]}}, "output_node": false},
        "SaveImage": {"input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {}]}}, "output_node": true},
    })
}

/// Validates and queues a prompt: (status, JSON body), or `None` for the 500
/// ComfyUI gives a body that is not JSON.
fn post_prompt(body: &[u8], inner: &Arc<Mutex<Inner>>, queue: &Queue) -> (u16, Option<Value>) {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return (500, None);
    };
    let mut inner = inner.lock().unwrap();
    inner.prompts.push(request.clone());
    let Some(prompt) = request.get("prompt").filter(|p| p.is_object()) else {
        return (400, Some(json!({"error": "no prompt", "node_errors": []})));
    };
    let info = object_info(&inner.config);
    let mut node_errors = serde_json::Map::new();
    for (id, node) in prompt.as_object().unwrap() {
        let class = node["class_type"].as_str().unwrap_or_default();
        if info.get(class).is_none() {
            return (
                400,
                Some(json!({"error": {"type": "invalid_prompt",
                    "message": format!("Cannot execute because node {class} does not exist."),
                    "details": format!("Node ID '#{id}'"), "extra_info": {}}, "node_errors": []})),
            );
        }
        for input in ["ckpt_name", "lora_name", "vae_name", "control_net_name"] {
            let Some(value) = node["inputs"][input].as_str() else {
                continue;
            };
            let options = &info[class]["input"]["required"][input][0];
            let listed: Vec<&str> = options
                .as_array()
                .map(|l| l.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if !listed.contains(&value) {
                let list: Vec<String> = listed.iter().map(|s| format!("'{s}'")).collect();
                node_errors.insert(
                    id.clone(),
                    json!({
                    "errors": [{"type": "value_not_in_list", "message": "Value not in list",
                        "details": format!("{input}: '{value}' not in [{}]", list.join(", ")),
                        "extra_info": {"input_name": input, "received_value": value}}],
                    "dependent_outputs": ["9"], "class_type": class}),
                );
            }
        }
    }
    if !node_errors.is_empty() {
        return (
            400,
            Some(json!({"error": {"type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
                "node_errors": node_errors})),
        );
    }
    // v0.3.27 ignores a client-chosen prompt_id.
    let id = format!("{:08x}-standin-{}", inner.counter, inner.prompts.len());
    let number = inner.counter;
    inner.counter += 1;
    let client = request["client_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let _ = queue.send((id.clone(), prompt.clone(), client));
    (
        200,
        Some(json!({"prompt_id": id, "number": number, "node_errors": {}})),
    )
}

/// Upgrades to a WebSocket registered under `clientId`.
async fn socket(mut stream: TcpStream, request: Request, inner: Arc<Mutex<Inner>>) {
    let Some(key) = request.headers.get("sec-websocket-key") else {
        respond(&mut stream, 400, "text/plain", b"not a websocket request").await;
        return;
    };
    let accept = derive_accept_key(key.as_bytes());
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let ws = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
    let (mut sink, mut incoming) = ws.split();
    let client_id = request
        .query
        .get("clientId")
        .cloned()
        .unwrap_or_else(|| "anonymous".into());
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let _ = tx.send(event(
        "status",
        json!({"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}),
    ));
    inner.lock().unwrap().sockets.insert(client_id.clone(), tx);
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let close = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || close {
                break;
            }
        }
    });
    while let Some(Ok(message)) = incoming.next().await {
        if matches!(message, Message::Close(_)) {
            break;
        }
    }
    inner.lock().unwrap().sockets.remove(&client_id);
    writer.abort();
}

fn event(kind: &str, data: Value) -> Message {
    Message::text(json!({"type": kind, "data": data}).to_string())
}

/// Sends to the prompt's client socket, if it is connected.
fn to_client(inner: &Arc<Mutex<Inner>>, client: &str, message: Message) {
    if let Some(tx) = inner.lock().unwrap().sockets.get(client) {
        let _ = tx.send(message);
    }
}

fn broadcast(inner: &Arc<Mutex<Inner>>, message: Message) {
    for tx in inner.lock().unwrap().sockets.values() {
        let _ = tx.send(message.clone());
    }
}

/// Which nodes the cache answers: same inputs as the previous prompt's node
/// of that id, and every linked input cached too.
fn cached_nodes(prompt: &Value, previous: Option<&Value>) -> Vec<String> {
    fn is_cached(
        id: &str,
        prompt: &Value,
        previous: &Value,
        memo: &mut HashMap<String, bool>,
    ) -> bool {
        if let Some(known) = memo.get(id) {
            return *known;
        }
        let node = &prompt[id];
        let mut cached = previous.get(id) == Some(node);
        if cached {
            for value in node["inputs"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, v)| v)
            {
                if let Some(source) = value.as_array().and_then(|l| l[0].as_str()) {
                    cached &= is_cached(source, prompt, previous, memo);
                }
            }
        }
        memo.insert(id.to_string(), cached);
        cached
    }
    let Some(previous) = previous else {
        return Vec::new();
    };
    let mut memo = HashMap::new();
    let mut ids: Vec<String> = prompt.as_object().unwrap().keys().cloned().collect();
    ids.sort();
    ids.into_iter()
        .filter(|id| is_cached(id, prompt, previous, &mut memo))
        .collect()
}

/// Runs one prompt the way v0.3.27 reports it.
async fn execute(inner: &Arc<Mutex<Inner>>, id: &str, prompt: &Value, client: &str) {
    let (cached, previous_outputs, config) = {
        let mut state = inner.lock().unwrap();
        state.interrupt = false;
        let cached = cached_nodes(prompt, state.previous.as_ref().map(|(p, _)| p));
        let outputs = state
            .previous
            .as_ref()
            .map(|(_, o)| o.clone())
            .unwrap_or_default();
        (cached, outputs, state.config.clone())
    };
    let queue = |n: u64| {
        event(
            "status",
            json!({"status": {"exec_info": {"queue_remaining": n}}}),
        )
    };
    broadcast(inner, queue(1));
    broadcast(inner, queue(1));
    let mut messages = vec![json!(["execution_start", {"prompt_id": id}])];
    to_client(
        inner,
        client,
        event("execution_start", json!({"prompt_id": id})),
    );
    to_client(
        inner,
        client,
        event(
            "execution_cached",
            json!({"nodes": cached, "prompt_id": id}),
        ),
    );
    let mut images = Vec::new();
    let mut failure: Option<(&str, Value)> = None;
    let mut steps_done = 0u64;
    // Loaders first, then encoders, sampler, decoder, saver: the dependency order of txt2img.
    let order = [
        "CheckpointLoaderSimple",
        "VAELoader",
        "ControlNetLoader",
        "LoraLoader",
        "CLIPTextEncode",
        "EmptyLatentImage",
        "KSampler",
        "VAEDecode",
        "SaveImage",
    ];
    let mut nodes: Vec<(&String, &Value)> = prompt.as_object().unwrap().iter().collect();
    nodes.sort_by_key(|(nid, n)| {
        let class = n["class_type"].as_str().unwrap_or_default();
        (
            order.iter().position(|c| *c == class).unwrap_or(99),
            nid.to_string(),
        )
    });
    'nodes: for (node_id, node) in nodes {
        let class = node["class_type"].as_str().unwrap_or_default();
        if cached.contains(node_id) {
            if class == "SaveImage" {
                images = previous_outputs.clone();
                to_client(
                    inner,
                    client,
                    event(
                        "executed",
                        json!({"node": node_id, "output": {"images": images}, "prompt_id": id}),
                    ),
                );
            }
            continue;
        }
        to_client(
            inner,
            client,
            event("executing", json!({"node": node_id, "prompt_id": id})),
        );
        if config.fail_class.as_deref() == Some(class) {
            let data = json!({"prompt_id": id, "node_id": node_id, "node_type": class,
                "executed": [], "exception_message": "Error while deserializing header: header too large\n",
                "exception_type": "safetensors._safetensors_rust.SafetensorError",
                "traceback": ["  File \"execution.py\", line 327\n"], "current_inputs": {}, "current_outputs": {}});
            failure = Some(("execution_error", data));
            break;
        }
        if class == "KSampler" {
            let max = node["inputs"]["steps"].as_u64().unwrap_or(20);
            for step in 1..=max {
                tokio::time::sleep(config.step_delay).await;
                let interrupted = std::mem::take(&mut inner.lock().unwrap().interrupt);
                if interrupted {
                    let data = json!({"prompt_id": id, "node_id": node_id, "node_type": class, "executed": []});
                    failure = Some(("execution_interrupted", data));
                    break 'nodes;
                }
                inner.lock().unwrap().steps_run += 1;
                steps_done += 1;
                let progress = event(
                    "progress",
                    json!({"value": step, "max": max, "prompt_id": id, "node": node_id}),
                );
                if client.is_empty() {
                    broadcast(inner, progress);
                } else {
                    to_client(inner, client, progress);
                }
                if config.drop_socket_after_steps == Some(steps_done) {
                    let mut state = inner.lock().unwrap();
                    state.config.drop_socket_after_steps = None;
                    if let Some(tx) = state.sockets.remove(client) {
                        let _ = tx.send(Message::Close(None));
                    }
                }
            }
        }
        if class == "SaveImage" {
            let prefix = node["inputs"]["filename_prefix"]
                .as_str()
                .unwrap_or("ComfyUI");
            let n = {
                let mut state = inner.lock().unwrap();
                state.image_counter += 1;
                state.image_counter
            };
            images = vec![
                json!({"filename": format!("{prefix}_{n:05}_.png"), "subfolder": "", "type": "output"}),
            ];
            to_client(
                inner,
                client,
                event(
                    "executed",
                    json!({"node": node_id, "output": {"images": images}, "prompt_id": id}),
                ),
            );
        }
    }
    let (status_str, outputs) = match &failure {
        Some((kind, data)) => {
            to_client(inner, client, event(kind, data.clone()));
            messages.push(json!([kind, data]));
            ("error", json!({}))
        }
        None => {
            to_client(
                inner,
                client,
                event("execution_success", json!({"prompt_id": id})),
            );
            messages.push(json!(["execution_success", {"prompt_id": id}]));
            ("success", json!({"9": {"images": images}}))
        }
    };
    {
        let mut state = inner.lock().unwrap();
        state.history.insert(id.to_string(), json!({
            "prompt": [0, id, prompt, {"client_id": client}, ["9"]],
            "outputs": outputs,
            "status": {"status_str": status_str, "completed": failure.is_none(), "messages": messages},
            "meta": {}}));
        if failure.is_none() {
            state.previous = Some((prompt.clone(), images.clone()));
        }
    }
    broadcast(inner, queue(0));
    to_client(
        inner,
        client,
        event("executing", json!({"node": null, "prompt_id": id})),
    );
}
