//! The only module that touches Spin: it implements the ports on Spin's key-value store,
//! variables and outbound HTTP, and hands each request to `app::handle`.

use std::time::Duration;

use spin_sdk::http::{IncomingRequest, OutgoingResponse, ResponseOutparam};
use spin_sdk::http_component;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasi::io::streams::StreamError;

use crate::app::{follow_up, handle, refuse};
use crate::bridge::Bridge;
use crate::log::Access;
use crate::ports::{Config, Kv, KvError, Outbound, OutboundError, Request, Response, SystemClock};
use crate::problem::ApiError;
use crate::settings::{self, BodyLimit};

/// Answer first: the response is set and its body finished before any flush, compaction or
/// poll starts; that work then runs in the same invocation, bounded by `work_budget_ms`.
#[http_component]
fn handle_request(incoming: IncomingRequest, response_out: ResponseOutparam) {
    let started = crate::ports::Clock::now(&SystemClock);
    let store = SpinKv::open();
    let tally = crate::tally::Tally::new();
    let bridge = Bridge {
        kv: &store,
        config: &SpinConfig,
        outbound: &SpinOutbound,
        clock: &SystemClock,
        deadline: None,
        tally: &tally,
    };
    let method = http_method(&incoming.method());
    let path = incoming.path_with_query().unwrap_or_default();
    let limit = settings::body_limit(
        &SpinConfig,
        crate::routes::table::body_class(method.as_str(), &path),
    );
    let mut builder = http::Request::builder()
        .method(method.clone())
        .uri(incoming.uri());
    let mut declared = None;
    for (name, value) in incoming.headers().entries() {
        if name.eq_ignore_ascii_case("content-length") {
            declared = std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
        }
        builder = builder.header(name, value);
    }
    let Ok(incoming_body) = incoming.consume() else {
        answer(
            response_out,
            &Access::bare(&method, &path),
            refuse(
                &bridge,
                &path,
                ApiError::Internal("the request body was already taken".into()),
            ),
            started,
        );
        return;
    };
    let Ok(stream) = incoming_body.stream() else {
        answer(
            response_out,
            &Access::bare(&method, &path),
            refuse(
                &bridge,
                &path,
                ApiError::Internal("the request body stream is unavailable".into()),
            ),
            started,
        );
        return;
    };
    let read = read_body(&stream, limit, declared).and_then(|body| {
        builder
            .body(body)
            .map_err(|e| ApiError::bad_request(format!("unreadable request: {e}")))
    });
    let oversized = matches!(read, Err(ApiError::PayloadTooLarge { .. }));
    let (access, handled) = match read {
        Ok(request) => (Access::of(&request), handle(&bridge, request)),
        Err(error) => (
            Access::bare(&method, &path),
            crate::app::Handled {
                response: refuse(&bridge, &path, error),
                follow_up: false,
                first: None,
            },
        ),
    };
    answer(response_out, &access, handled.response, started);
    if oversized {
        // The 413 is sent; reading the rest (and dropping it) lets the sender read the answer
        // instead of meeting a reset connection.
        drain(&stream, bridge.with_budget(started).deadline);
    }
    drop(stream);
    drop(incoming_body);
    if handled.follow_up {
        follow_up(&bridge.with_budget(started), handled.first);
    }
    if let Err(e) = tally.save(&store) {
        crate::log::warn("could not save the counters")
            .field("error", e.to_string())
            .emit();
    }
}

/// Sends the answer, then writes the request's log line with the time it took.
fn answer(
    response_out: ResponseOutparam,
    access: &Access,
    response: Response,
    started: time::OffsetDateTime,
) {
    let line = access.line(&response);
    let sent = respond(response_out, response);
    let ms = (crate::ports::Clock::now(&SystemClock) - started)
        .whole_milliseconds()
        .max(0) as u64;
    let line = line.field("ms", ms);
    match sent {
        Ok(()) => line.emit(),
        Err(e) => line.field("level", "error").field("sendError", e).emit(),
    }
}

fn http_method(method: &spin_sdk::http::Method) -> http::Method {
    http::Method::from_bytes(method.to_string().as_bytes()).unwrap_or(http::Method::GET)
}

/// The body, refused (413) from `content-length` or as soon as more than `limit` bytes arrive,
/// so that an oversized delivery is never held whole.
fn read_body(
    stream: &wasi::io::streams::InputStream,
    limit: BodyLimit,
    declared: Option<usize>,
) -> Result<Vec<u8>, ApiError> {
    let too_large = |size| ApiError::PayloadTooLarge {
        size,
        limit: limit.bytes,
        variable: limit.variable,
    };
    if let Some(size) = declared.filter(|size| *size > limit.bytes) {
        return Err(too_large(size));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(limit.bytes));
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                body.extend_from_slice(&chunk);
                if body.len() > limit.bytes {
                    return Err(too_large(body.len()));
                }
            }
            Err(StreamError::Closed) => return Ok(body),
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(ApiError::bad_request(format!(
                    "reading the request body failed: {}",
                    e.to_debug_string()
                )))
            }
        }
    }
}

/// Reads and discards the rest of a refused body, at most 256 MiB and until `deadline`.
fn drain(stream: &wasi::io::streams::InputStream, deadline: Option<time::OffsetDateTime>) {
    let mut left: u64 = 256 * 1024 * 1024;
    while left > 0 && deadline.is_none_or(|d| crate::ports::Clock::now(&SystemClock) < d) {
        match stream.blocking_skip(left.min(1024 * 1024)) {
            Ok(skipped) => left = left.saturating_sub(skipped.max(1)),
            Err(_) => return,
        }
    }
}

/// Sets the response and writes and finishes its body: from here on the caller has its answer.
fn respond(response_out: ResponseOutparam, response: Response) -> Result<(), String> {
    let (parts, body) = response.into_parts();
    let headers: Vec<(String, Vec<u8>)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let fields = spin_sdk::http::Fields::from_list(&headers)
        .map_err(|e| format!("response headers: {e:?}"))?;
    let outgoing = OutgoingResponse::new(fields);
    outgoing
        .set_status_code(parts.status.as_u16())
        .map_err(|()| "response status rejected".to_owned())?;
    let outgoing_body = outgoing
        .body()
        .map_err(|()| "response body unavailable".to_owned())?;
    response_out.set(outgoing);
    {
        let stream = outgoing_body
            .write()
            .map_err(|()| "response body stream unavailable".to_owned())?;
        // `blocking-write-and-flush` takes at most 4096 bytes per call.
        for chunk in body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| format!("writing the response body: {e:?}"))?;
        }
    }
    spin_sdk::http::OutgoingBody::finish(outgoing_body, None)
        .map_err(|e| format!("finishing the response body: {e:?}"))
}

/// Spin's `default` store, opened once per request. If it cannot be opened (no
/// `key_value_stores = ["default"]` in spin.toml), every operation reports why.
struct SpinKv(Result<spin_sdk::key_value::Store, String>);

impl SpinKv {
    fn open() -> SpinKv {
        SpinKv(
            spin_sdk::key_value::Store::open_default()
                .map_err(|e| format!("cannot open store \"default\": {e}")),
        )
    }

    fn store(&self) -> Result<&spin_sdk::key_value::Store, KvError> {
        self.0.as_ref().map_err(|e| KvError(e.clone()))
    }
}

impl Kv for SpinKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.store()?.get(key).map_err(|e| KvError(e.to_string()))
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.store()?
            .set(key, value)
            .map_err(|e| KvError(e.to_string()))
    }
    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.store()?
            .delete(key)
            .map_err(|e| KvError(e.to_string()))
    }
    fn keys(&self) -> Result<Vec<String>, KvError> {
        self.store()?.get_keys().map_err(|e| KvError(e.to_string()))
    }
}

struct SpinConfig;

impl Config for SpinConfig {
    fn get(&self, name: &str) -> Option<String> {
        spin_sdk::variables::get(name)
            .ok()
            .filter(|v| !v.trim().is_empty())
    }
}

/// Outbound HTTP through `wasi:http/outgoing-handler` directly, because
/// `spin_sdk::http::send` passes no request options and so cannot bound the wait.
struct SpinOutbound;

impl Outbound for SpinOutbound {
    fn send(&self, request: Request, timeout: Duration) -> Result<Response, OutboundError> {
        send_blocking(request, timeout)
    }
}

fn other(what: &str) -> OutboundError {
    OutboundError::Other(what.to_owned())
}

fn send_blocking(request: Request, timeout: Duration) -> Result<Response, OutboundError> {
    let (parts, body) = request.into_parts();
    let headers = Fields::new();
    for (name, value) in parts.headers.iter() {
        headers
            .append(&name.as_str().to_owned(), &value.as_bytes().to_vec())
            .map_err(|e| OutboundError::Other(format!("header {name}: {e:?}")))?;
    }
    let outgoing = OutgoingRequest::new(headers);
    let method = match parts.method.as_str() {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_owned()),
    };
    outgoing
        .set_method(&method)
        .map_err(|_| other("method rejected"))?;
    let scheme = match parts.uri.scheme_str() {
        Some("http") => Scheme::Http,
        _ => Scheme::Https,
    };
    outgoing
        .set_scheme(Some(&scheme))
        .map_err(|_| other("scheme rejected"))?;
    let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
    outgoing
        .set_authority(authority.as_deref())
        .map_err(|_| other("authority rejected"))?;
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    outgoing
        .set_path_with_query(Some(&path))
        .map_err(|_| other("path rejected"))?;

    let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    let options = RequestOptions::new();
    // Connecting gets at most 10 s of the budget; waiting for the answer gets the whole budget.
    let _ = options.set_connect_timeout(Some(nanos.min(10_000_000_000)));
    let _ = options.set_first_byte_timeout(Some(nanos));
    let _ = options.set_between_bytes_timeout(Some(nanos));

    let outgoing_body = outgoing
        .body()
        .map_err(|_| other("request body unavailable"))?;
    let future =
        outgoing_handler::handle(outgoing, Some(options)).map_err(|e| map_error(e, timeout))?;
    let written = (|| {
        let stream = outgoing_body
            .write()
            .map_err(|_| other("request body stream unavailable"))?;
        // `blocking-write-and-flush` takes at most 4096 bytes per call.
        for chunk in body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| stream_error("writing the request body", e))?;
        }
        drop(stream);
        OutgoingBody::finish(outgoing_body, None).map_err(|e| map_error(e, timeout))
    })();
    if let Err(write_error) = written {
        // A refused, denied or timed-out request closes the body stream first; the response
        // future then carries the real reason, which is what the caller needs to see.
        loop {
            match future.get() {
                Some(Ok(Err(code))) => return Err(map_error(code, timeout)),
                Some(_) => return Err(write_error),
                None => future.subscribe().block(),
            }
        }
    }

    let incoming = loop {
        match future.get() {
            Some(Ok(Ok(response))) => break response,
            Some(Ok(Err(code))) => return Err(map_error(code, timeout)),
            Some(Err(())) => return Err(other("response already taken")),
            None => future.subscribe().block(),
        }
    };
    let mut builder = http::Response::builder().status(incoming.status());
    for (name, value) in incoming.headers().entries() {
        builder = builder.header(name, value);
    }
    let incoming_body = incoming
        .consume()
        .map_err(|_| other("response body unavailable"))?;
    let mut bytes = Vec::new();
    {
        let stream = incoming_body
            .stream()
            .map_err(|_| other("response body stream unavailable"))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => return Err(stream_error("reading Gong's answer", e)),
            }
        }
    }
    drop(IncomingBody::finish(incoming_body));
    builder
        .body(bytes)
        .map_err(|e| OutboundError::Other(format!("bad response: {e}")))
}

fn stream_error(what: &str, error: StreamError) -> OutboundError {
    match error {
        StreamError::Closed => OutboundError::Other(format!("{what}: stream closed")),
        StreamError::LastOperationFailed(e) => {
            OutboundError::Other(format!("{what}: {}", e.to_debug_string()))
        }
    }
}

fn map_error(code: ErrorCode, timeout: Duration) -> OutboundError {
    match code {
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout => OutboundError::Timeout(timeout),
        ErrorCode::ConnectionRefused
        | ErrorCode::DestinationNotFound
        | ErrorCode::DestinationUnavailable
        | ErrorCode::DestinationIpUnroutable => OutboundError::Unreachable(format!("{code:?}")),
        ErrorCode::DnsError(e) => OutboundError::Unreachable(format!("DNS: {e:?}")),
        ErrorCode::HttpRequestDenied => OutboundError::Denied("HttpRequestDenied".into()),
        other => OutboundError::Other(format!("{other:?}")),
    }
}
