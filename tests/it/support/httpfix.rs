//! A hand-written HTTP/1.1 server on 127.0.0.1 for tests, with injectable
//! faults. Written on a raw `TcpListener` so every byte and every broken
//! connection is under the test's control, which no real server allows.
//!
//! ```ignore
//! let server = HttpFixture::new()
//!     .route("/model.safetensors", Route::new(body).fault(Fault::DropAfter(1000)).times(1))
//!     .start()
//!     .await;
//! let url = server.url("/model.safetensors");
//! // ... later: server.requests() shows what the client sent.
//! ```
//!
//! Every response closes its connection (`Connection: close`): simpler, and
//! it makes "one request per connection" something tests can count on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A misbehaviour for a route.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Announce the full length, send this many body bytes, then close.
    DropAfter(usize),
    /// Send the right length of the wrong bytes.
    WrongBytes,
    /// 200 with `text/html` and a login page.
    HtmlLogin,
    /// 200 `application/octet-stream` whose body is a login page.
    HtmlDisguised,
    /// 401 unless `Authorization: Bearer <token>`.
    RequireBearer(String),
    /// Answer with this status and a short text body.
    Status(u16),
    /// 302 to this location (as Hugging Face does to its CDN).
    RedirectTo(String),
    /// Send the body in `chunk`-byte pieces with `pause` between them.
    Trickle { chunk: usize, pause: Duration },
    /// Send `after` bytes, then go silent for `pause`, then close.
    StallAfter { after: usize, pause: Duration },
    /// Announce `extra` more bytes than the body has, send the body, close.
    ShortBody { extra: usize },
    /// 200 with this `Content-Type` and this body instead of the route's
    /// (an API's error object answered with 200).
    Body {
        content_type: &'static str,
        body: &'static [u8],
    },
    /// The route's body, said to be `Content-Encoding: <this>` (the bytes
    /// are a gzip member's first bytes followed by the body: what matters is
    /// that they are not the file).
    Encoded(&'static str),
}

/// What one path serves.
#[derive(Debug, Clone)]
pub struct Route {
    /// Shared, so serving a large body does not copy it per request.
    body: Arc<[u8]>,
    fault: Option<Fault>,
    /// How many requests the fault applies to; later ones are served normally.
    fault_times: usize,
    /// Answer every request 200 with the whole body (never 206).
    ignore_ranges: bool,
    /// Send neither ETag nor Last-Modified.
    no_validators: bool,
    etag: String,
}

impl Route {
    pub fn new(body: Vec<u8>) -> Route {
        let etag = format!("\"{}\"", &blake3::hash(&body).to_hex()[..16]);
        Route {
            body: body.into(),
            fault: None,
            fault_times: usize::MAX,
            ignore_ranges: false,
            no_validators: false,
            etag,
        }
    }

    pub fn fault(mut self, fault: Fault) -> Route {
        self.fault = Some(fault);
        self
    }

    /// Limits the fault to the first `n` requests to this route.
    pub fn times(mut self, n: usize) -> Route {
        self.fault_times = n;
        self
    }

    /// Like a server without range support, whatever the fault.
    pub fn ignore_ranges(mut self) -> Route {
        self.ignore_ranges = true;
        self
    }

    /// Like a server that sends no ETag or Last-Modified, whatever the fault.
    pub fn without_validators(mut self) -> Route {
        self.no_validators = true;
        self
    }

    pub fn etag(&self) -> &str {
        &self.etag
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub authorization_present: bool,
    /// Every header, names in lower case.
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
pub struct HttpFixture {
    routes: HashMap<String, Route>,
}

struct Shared {
    routes: HashMap<String, Route>,
    served: HashMap<String, usize>,
    seen: Vec<SeenRequest>,
}

pub struct RunningServer {
    addr: std::net::SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

impl HttpFixture {
    pub fn new() -> HttpFixture {
        HttpFixture::default()
    }

    pub fn route(mut self, path: &str, route: Route) -> HttpFixture {
        self.routes.insert(path.to_string(), route);
        self
    }

    pub async fn start(self) -> RunningServer {
        self.start_on("127.0.0.1").await
    }

    /// Serves on `host` (any of 127.0.0.0/8 on Linux), so two servers can
    /// be two hosts.
    pub async fn start_on(self, host: &str) -> RunningServer {
        let listener = TcpListener::bind((host, 0)).await.expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let shared = Arc::new(Mutex::new(Shared {
            routes: self.routes,
            served: HashMap::new(),
            seen: Vec::new(),
        }));
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, accept_shared.clone()));
            }
        });
        RunningServer { addr, shared, task }
    }
}

impl RunningServer {
    /// `host:port` as a URL names it.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Serves `route` at `path` from now on (the file "changed on the server").
    pub fn replace_route(&self, path: &str, route: Route) {
        let mut shared = self.shared.lock().unwrap();
        shared.routes.insert(path.to_string(), route);
        shared.served.remove(path);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.lock().unwrap().seen.clone()
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct ParsedRequest {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

async fn read_request(stream: &mut TcpStream) -> Option<ParsedRequest> {
    let mut buffer = Vec::new();
    let mut byte = [0u8; 1024];
    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.ok()?;
        if n == 0 || buffer.len() > 64 * 1024 {
            return None;
        }
        buffer.extend_from_slice(&byte[..n]);
    }
    let text = String::from_utf8_lossy(&buffer).into_owned();
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split_whitespace();
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let headers = lines
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Some(ParsedRequest {
        method,
        path,
        headers,
    })
}

async fn serve_connection(mut stream: TcpStream, shared: Arc<Mutex<Shared>>) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let route_path = request.path.split('?').next().unwrap_or("").to_string();
    let route_and_fault = {
        let mut shared = shared.lock().unwrap();
        shared.seen.push(SeenRequest {
            method: request.method.clone(),
            path: request.path.clone(),
            range: request.headers.get("range").cloned(),
            if_range: request.headers.get("if-range").cloned(),
            authorization_present: request.headers.contains_key("authorization"),
            headers: request.headers.clone(),
        });
        shared.routes.get(&route_path).cloned().map(|route| {
            let served = shared.served.entry(route_path).or_insert(0);
            *served += 1;
            let fault = if *served <= route.fault_times {
                route.fault.clone()
            } else {
                None
            };
            (route, fault)
        })
    };
    match route_and_fault {
        Some((route, fault)) => {
            let _ = respond(&mut stream, &request, &route, fault).await;
        }
        None => {
            let _ = respond_simple(&mut stream, 404, "not found").await;
        }
    }
}

async fn respond_simple(stream: &mut TcpStream, status: u16, text: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        text.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(text.as_bytes()).await?;
    stream.shutdown().await
}

const LOGIN_PAGE: &str =
    "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in</body></html>\n";

async fn respond(
    stream: &mut TcpStream,
    request: &ParsedRequest,
    route: &Route,
    fault: Option<Fault>,
) -> std::io::Result<()> {
    match &fault {
        Some(Fault::Status(code)) => return respond_simple(stream, *code, "fault").await,
        Some(Fault::RedirectTo(location)) => {
            let head = format!(
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await?;
            return stream.shutdown().await;
        }
        Some(Fault::RequireBearer(token)) => {
            let expected = format!("Bearer {token}");
            if request.headers.get("authorization") != Some(&expected) {
                return respond_simple(stream, 401, "unauthorized").await;
            }
        }
        Some(Fault::Body { content_type, body }) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body).await?;
            return stream.shutdown().await;
        }
        Some(Fault::Encoded(encoding)) => {
            let mut body = b"\x1f\x8b\x08\x00\x00\x00\x00\x00".to_vec();
            body.extend_from_slice(&route.body);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Encoding: {encoding}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await?;
            return stream.shutdown().await;
        }
        Some(Fault::HtmlLogin) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                LOGIN_PAGE.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(LOGIN_PAGE.as_bytes()).await?;
            return stream.shutdown().await;
        }
        _ => {}
    }

    let full: Arc<[u8]> = match &fault {
        Some(Fault::WrongBytes) => route.body.iter().map(|b| b ^ 0x5a).collect(),
        Some(Fault::HtmlDisguised) => LOGIN_PAGE.as_bytes().into(),
        _ => route.body.clone(),
    };
    let validators = !route.no_validators;
    let honour_range = !route.ignore_ranges;
    let total = full.len();

    // Range handling as RFC 9110 describes it, for `bytes=N-` only.
    let mut start = 0;
    if honour_range && let Some(range) = request.headers.get("range") {
        let if_range_ok = match request.headers.get("if-range") {
            None => true,
            Some(v) => validators && (v == &route.etag || v == LAST_MODIFIED),
        };
        let asked: Option<usize> = range
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse().ok());
        if let (true, Some(asked)) = (if_range_ok, asked) {
            if asked >= total {
                let head = format!(
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).await?;
                return stream.shutdown().await;
            }
            start = asked;
        }
    }
    let body = &full[start..];
    let announced = match &fault {
        Some(Fault::ShortBody { extra }) => body.len() + extra,
        _ => body.len(),
    };
    let mut head = if start > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{total}\r\n",
            total - 1
        )
    } else {
        "HTTP/1.1 200 OK\r\n".to_string()
    };
    head.push_str(&format!(
        "Content-Type: application/octet-stream\r\nContent-Length: {announced}\r\nConnection: close\r\n"
    ));
    if honour_range {
        head.push_str("Accept-Ranges: bytes\r\n");
    }
    if validators {
        head.push_str(&format!(
            "ETag: {}\r\nLast-Modified: {LAST_MODIFIED}\r\n",
            route.etag
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    if request.method == "HEAD" {
        return stream.shutdown().await;
    }

    match fault {
        Some(Fault::DropAfter(k)) => {
            stream.write_all(&body[..k.min(body.len())]).await?;
            stream.flush().await?;
            // Dropping the stream closes the connection mid-body.
            return Ok(());
        }
        Some(Fault::Trickle { chunk, pause }) => {
            for piece in body.chunks(chunk.max(1)) {
                stream.write_all(piece).await?;
                stream.flush().await?;
                tokio::time::sleep(pause).await;
            }
        }
        Some(Fault::StallAfter { after, pause }) => {
            stream.write_all(&body[..after.min(body.len())]).await?;
            stream.flush().await?;
            tokio::time::sleep(pause).await;
            return Ok(());
        }
        _ => {
            for piece in body.chunks(64 * 1024) {
                stream.write_all(piece).await?;
            }
        }
    }
    stream.shutdown().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Deterministic bytes that look like nothing in particular (xorshift), so
/// a model body is not mistaken for text or HTML.
pub fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

/// A valid `.safetensors` file of exactly `len` bytes (at least 128): one
/// `U8` tensor named `weight` holding [`noise`], so a model body is both
/// random-looking and what its name says.
pub fn safetensors_file(len: usize, seed: u32) -> Vec<u8> {
    let header_for = |payload: usize| {
        format!(r#"{{"weight":{{"dtype":"U8","shape":[{payload}],"data_offsets":[0,{payload}]}}}}"#)
    };
    let payload = len - 8 - header_for(len).len();
    // Pad with spaces (the format allows them) to land on `len` exactly.
    let mut header = header_for(payload);
    while 8 + header.len() + payload < len {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(noise(payload, seed));
    assert_eq!(bytes.len(), len);
    bytes
}

/// `len` bytes that start like a pickle stream of protocol 2 (how
/// `torch.save` wrote checkpoints before zip), then [`noise`].
pub fn pickle_file(len: usize, seed: u32) -> Vec<u8> {
    let mut bytes = b"\x80\x02".to_vec();
    bytes.extend(noise(len - 2, seed));
    bytes
}
