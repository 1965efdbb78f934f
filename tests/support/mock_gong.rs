//! `MockGong`: a scripted stand-in for Gong's Generic CRM API on `127.0.0.1:<random port>`.
//!
//! Every request is recorded (`RecordedRequest`, multipart bodies parsed into parts).
//! Responses come from, in order: the one-shot queue for the method+path (`on`), the sticky
//! response for it (`always`), else a spec-like default success (see `default_response`).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;

/// A scripted answer of the mock.
#[derive(Debug, Clone)]
pub struct MockResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Option<Duration>,
    /// Drop the connection without answering (after `delay`, if any).
    pub close: bool,
}

impl MockResponse {
    /// `status` with a JSON body (`content-type: application/json`).
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self::bytes(
            status,
            "application/json",
            serde_json::to_vec(&body).expect("serialising a serde_json::Value"),
        )
    }

    /// `status` with a text body (`content-type: text/plain; charset=utf-8`).
    pub fn text(status: u16, body: &str) -> Self {
        Self::bytes(
            status,
            "text/plain; charset=utf-8",
            body.as_bytes().to_vec(),
        )
    }

    /// `status` with an arbitrary body and content type.
    pub fn bytes(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("content-type".to_owned(), content_type.to_owned())],
            body: body.into(),
            delay: None,
            close: false,
        }
    }

    /// `status` with no body and no content type.
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: None,
            close: false,
        }
    }

    /// Drops the connection without sending a response.
    pub fn close() -> Self {
        Self {
            close: true,
            ..Self::empty(0)
        }
    }

    /// Adds a header (replaces an existing one with the same name, case-insensitively).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Waits `delay` before answering (the request is recorded first).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

/// One part of a `multipart/form-data` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartPart {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl MultipartPart {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone())
            .unwrap_or_else(|e| panic!("multipart part {:?} is not UTF-8: {e}", self.name))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "multipart part {:?} is not JSON ({e}): {}",
                self.name,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Non-empty lines of the body (LDJSON payloads).
    pub fn lines(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// A request received by the mock.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Parts of a `multipart/form-data` body (empty otherwise).
    pub parts: Vec<MultipartPart>,
    /// Why a `multipart/form-data` body could not be parsed.
    pub multipart_error: Option<String>,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// First value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn part(&self, name: &str) -> Option<&MultipartPart> {
        self.parts.iter().find(|p| p.name == name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {} body is not JSON ({e}): {}",
                self.method,
                self.path,
                self.text()
            )
        })
    }
}

type RouteKey = (String, String);

fn route_key(method: &str, path: &str) -> RouteKey {
    (method.to_ascii_uppercase(), path.to_owned())
}

#[derive(Default)]
struct MockState {
    received: Vec<RecordedRequest>,
    one_shot: HashMap<RouteKey, VecDeque<MockResponse>>,
    sticky: HashMap<RouteKey, MockResponse>,
}

/// What the server answers when nothing is scripted for a request.
pub type Responder = Box<dyn Fn(&RecordedRequest) -> MockResponse + Send + Sync>;

struct Shared {
    state: Mutex<MockState>,
    responder: Responder,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, MockState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct MockInner {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: tokio::task::AbortHandle,
}

impl Drop for MockInner {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// The mock Gong server. Cheap to clone; stops accepting when the last clone is dropped.
#[derive(Clone)]
pub struct MockGong {
    inner: Arc<MockInner>,
}

impl std::fmt::Debug for MockGong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockGong")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

impl MockGong {
    /// Starts the server on `127.0.0.1:0` in the current tokio runtime.
    pub async fn start() -> MockGong {
        Self::start_with(Box::new(default_response)).await
    }

    /// A server of the same kind (scripts, recording) answering unscripted requests with
    /// `responder`: another API's mock (`mock_attio`).
    pub async fn start_with(responder: Responder) -> MockGong {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("MockGong: binding 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("MockGong: local address of the listener");
        let shared = Arc::new(Shared {
            state: Mutex::new(MockState::default()),
            responder,
        });
        let accept_shared = shared.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        eprintln!("[mock-gong] accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { handle(shared, req).await }
                    });
                    // Errors here are mostly `MockResponse::close()` or clients hanging up.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
        .abort_handle();
        MockGong {
            inner: Arc::new(MockInner {
                addr,
                shared,
                accept_task,
            }),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// Queues a one-shot response for `method path` (FIFO, before any `always`).
    pub fn on(&self, method: &str, path: &str, response: MockResponse) {
        self.inner
            .shared
            .lock()
            .one_shot
            .entry(route_key(method, path))
            .or_default()
            .push_back(response);
    }

    /// Sets the response for `method path` once the one-shot queue is empty.
    pub fn always(&self, method: &str, path: &str, response: MockResponse) {
        self.inner
            .shared
            .lock()
            .sticky
            .insert(route_key(method, path), response);
    }

    /// Every request received so far, in arrival order.
    pub fn received(&self) -> Vec<RecordedRequest> {
        self.inner.shared.lock().received.clone()
    }

    /// Requests received on `method path` (path without query).
    pub fn received_on(&self, method: &str, path: &str) -> Vec<RecordedRequest> {
        let (method, path) = route_key(method, path);
        self.inner
            .shared
            .lock()
            .received
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .cloned()
            .collect()
    }

    pub fn request_count(&self) -> usize {
        self.inner.shared.lock().received.len()
    }

    /// Forgets the recorded requests (scripted responses are kept).
    pub fn clear(&self) {
        self.inner.shared.lock().received.clear();
    }

    /// Forgets recorded requests and every scripted response.
    pub fn reset(&self) {
        *self.inner.shared.lock() = MockState::default();
    }
    /// Drops every scripted response (one-shot and sticky) but keeps what was received:
    /// "the faults stop".
    pub fn unscript(&self) {
        let mut state = self.inner.shared.lock();
        state.one_shot.clear();
        state.sticky.clear();
    }

    /// One-shot responses not consumed yet: `(method, path, count)`, sorted.
    pub fn unused_responses(&self) -> Vec<(String, String, usize)> {
        let mut unused: Vec<_> = self
            .inner
            .shared
            .lock()
            .one_shot
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|((m, p), q)| (m.clone(), p.clone(), q.len()))
            .collect();
        unused.sort();
        unused
    }
}

/// A URL whose port refuses connections: binds `127.0.0.1:0` and releases the port.
pub fn refused_url() -> String {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 for refused_url");
    let addr = listener
        .local_addr()
        .expect("local address of the refused_url listener");
    drop(listener);
    format!("http://{addr}")
}

#[derive(Debug)]
struct CloseConnection;

impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MockResponse::close(): dropping the connection")
    }
}

impl std::error::Error for CloseConnection {}

async fn handle(
    shared: Arc<Shared>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, CloseConnection> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(e) => {
            eprintln!("[mock-gong] reading the request body failed: {e}");
            return Err(CloseConnection);
        }
    };
    let method = parts.method.as_str().to_ascii_uppercase();
    let path = parts.uri.path().to_owned();
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let content_type = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.clone());
    let (multipart_parts, multipart_error) = match content_type {
        Some(ct) if is_multipart_form_data(&ct) => match parse_multipart(&ct, &body) {
            Ok(p) => (p, None),
            Err(e) => (Vec::new(), Some(e)),
        },
        _ => (Vec::new(), None),
    };
    let recorded = RecordedRequest {
        method: method.clone(),
        path: path.clone(),
        query,
        headers,
        body,
        parts: multipart_parts,
        multipart_error,
    };

    let response = {
        let mut state = shared.lock();
        let key = route_key(&method, &path);
        let scripted = state
            .one_shot
            .get_mut(&key)
            .and_then(VecDeque::pop_front)
            .or_else(|| state.sticky.get(&key).cloned());
        let response = scripted.unwrap_or_else(|| (shared.responder)(&recorded));
        state.received.push(recorded);
        response
    };

    if let Some(delay) = response.delay {
        tokio::time::sleep(delay).await;
    }
    if response.close {
        return Err(CloseConnection);
    }
    let mut builder = hyper::Response::builder().status(response.status);
    for (k, v) in &response.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    Ok(builder
        .body(Full::new(Bytes::from(response.body)))
        .unwrap_or_else(|e| {
            // A bad status or header in a test script: answer 599 so the test notices.
            let msg = format!("MockGong: invalid scripted response: {e}");
            eprintln!("[mock-gong] {msg}");
            let mut r = hyper::Response::new(Full::new(Bytes::from(msg)));
            *r.status_mut() = hyper::StatusCode::from_u16(599).expect("599 is a valid status");
            r
        }))
}

/// The answer when nothing is scripted: Gong-like successes for the CRM endpoints, else 404.
pub fn default_response(req: &RecordedRequest) -> MockResponse {
    let client_request_id = req
        .query_param("clientRequestId")
        .map(|v| serde_json::Value::String(v.to_owned()))
        .unwrap_or(serde_json::Value::Null);
    match (req.method.as_str(), req.path.as_str()) {
        ("PUT", "/v2/crm/integrations") => MockResponse::json(
            200,
            json!({"requestId": "mock-req", "integrationId": 5517027188234205706u64}),
        ),
        ("GET", "/v2/crm/integrations") => {
            MockResponse::json(200, json!({"requestId": "mock-req", "integrations": []}))
        }
        ("DELETE", "/v2/crm/integrations") => MockResponse::json(
            201,
            json!({"requestId": "mock-req", "clientRequestId": client_request_id}),
        ),
        ("POST", "/v2/crm/entity-schema") => {
            MockResponse::json(201, json!({"requestId": "mock-req"}))
        }
        ("GET", "/v2/crm/entity-schema") => MockResponse::json(
            200,
            json!({"requestId": "mock-req", "objectTypeToSelectedFields": {}}),
        ),
        ("POST", "/v2/crm/entities") => MockResponse::json(
            201,
            json!({"requestId": "mock-req", "clientRequestId": client_request_id}),
        ),
        ("GET", "/v2/crm/entities") => {
            MockResponse::json(200, json!({"requestId": "mock-req", "crmObjectsMap": {}}))
        }
        ("GET", "/v2/crm/request-status") => MockResponse::json(
            200,
            json!({
                "requestId": "mock-req",
                "status": "DONE",
                "errors": [],
                "totalErrorCount": 0,
                "totalSuccessCount": 1
            }),
        ),
        _ => MockResponse::json(
            404,
            json!({
                "requestId": "mock-req",
                "errors": [format!("MockGong: no route for {} {}", req.method, req.path)]
            }),
        ),
    }
}

// ----- multipart/form-data ---------------------------------------------------------------

fn is_multipart_form_data(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("multipart/form-data"))
}

/// Splits `header-value; k=v; k2="v 2"` into the value and its (lowercased-name) parameters.
fn split_params(value: &str) -> (String, Vec<(String, String)>) {
    let mut params = Vec::new();
    let (head, mut rest) = match value.find(';') {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => (value, ""),
    };
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            break;
        }
        let Some(eq) = rest.find('=') else {
            // A parameter without a value: skip it.
            rest = rest.find(';').map_or("", |i| &rest[i..]);
            continue;
        };
        let name = rest[..eq].trim().to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            out.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => out.push(c),
                }
            }
            value = out;
            rest = &quoted[end.min(quoted.len())..];
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        params.push((name, value));
    }
    (head.trim().to_owned(), params)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > haystack.len() || needle.is_empty() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Parses a `multipart/form-data` body (RFC 7578 / RFC 2046) using the boundary of
/// `content_type`. Strict about framing: every part needs a `Content-Disposition: form-data`
/// with a `name`, and the body must end with the closing delimiter.
pub fn parse_multipart(content_type: &str, body: &[u8]) -> Result<Vec<MultipartPart>, String> {
    let (mime, params) = split_params(content_type);
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(format!("not multipart/form-data: {content_type:?}"));
    }
    let boundary = params
        .iter()
        .find(|(k, _)| k == "boundary")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| format!("no boundary parameter in {content_type:?}"))?;
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(format!("invalid boundary length {}", boundary.len()));
    }
    let dash_boundary = format!("--{boundary}").into_bytes();
    let delimiter = format!("\r\n--{boundary}").into_bytes();

    // The first dash-boundary is at the very start or after a preamble ending in CRLF.
    let mut pos = if body.starts_with(&dash_boundary) {
        dash_boundary.len()
    } else {
        find(body, &delimiter, 0).ok_or("opening boundary not found")? + delimiter.len()
    };

    let mut parts = Vec::new();
    loop {
        // After a boundary: `--` closes, else optional padding then CRLF starts a part.
        if body[pos..].starts_with(b"--") {
            return Ok(parts);
        }
        while matches!(body.get(pos), Some(b' ' | b'\t')) {
            pos += 1;
        }
        if !body[pos..].starts_with(b"\r\n") {
            return Err(format!("expected CRLF after boundary at byte {pos}"));
        }
        pos += 2;
        let end = find(body, &delimiter, pos).ok_or_else(|| {
            format!(
                "part {} is not terminated by a boundary (missing closing --{boundary}--?)",
                parts.len()
            )
        })?;
        parts.push(parse_part(&body[pos..end], parts.len())?);
        pos = end + delimiter.len();
        if pos >= body.len() {
            return Err("body ends right after a boundary (missing closing `--`)".to_owned());
        }
    }
}

fn parse_part(raw: &[u8], index: usize) -> Result<MultipartPart, String> {
    let (head, content) = if raw.starts_with(b"\r\n") {
        (&raw[..0], &raw[2..])
    } else {
        let sep = find(raw, b"\r\n\r\n", 0)
            .ok_or_else(|| format!("part {index}: no blank line after the part headers"))?;
        (&raw[..sep], &raw[sep + 4..])
    };
    let head = std::str::from_utf8(head)
        .map_err(|e| format!("part {index}: headers are not UTF-8: {e}"))?;
    let mut disposition = None;
    let mut content_type = None;
    for line in head.split("\r\n") {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("part {index}: malformed header line {line:?}"))?;
        let name = name.trim();
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-disposition") {
            disposition = Some(split_params(value));
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.to_owned());
        }
    }
    let (kind, params) =
        disposition.ok_or_else(|| format!("part {index}: no Content-Disposition header"))?;
    if !kind.eq_ignore_ascii_case("form-data") {
        return Err(format!(
            "part {index}: Content-Disposition is {kind:?}, not form-data"
        ));
    }
    let param = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let name = param("name").ok_or_else(|| format!("part {index}: no name parameter"))?;
    Ok(MultipartPart {
        name,
        filename: param("filename"),
        content_type,
        body: content.to_vec(),
    })
}

/// One part for [`build_multipart`]: `(name, filename, content_type, body)`.
pub type PartSpec<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

/// Builds a `multipart/form-data` body (for tests of the parser and of the mock).
/// Returns `(content_type, body)`.
pub fn build_multipart(boundary: &str, parts: &[PartSpec<'_>]) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    for (name, filename, content_type, content) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{name}\"");
        if let Some(f) = filename {
            disposition.push_str(&format!("; filename=\"{f}\""));
        }
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"\r\n");
        if let Some(ct) = content_type {
            body.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
