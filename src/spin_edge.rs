//! The only module that touches Spin: it implements the ports on Spin's key-value store,
//! variables and outbound HTTP, and hands each request to `app::handle`.

use std::time::Duration;

use spin_sdk::http_component;
use wasi::http::outgoing_handler;
use wasi::http::types::{ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme};
use wasi::io::streams::StreamError;

use crate::app::{handle, Bridge};
use crate::ports::{Config, Kv, KvError, Outbound, OutboundError, Request, Response, SystemClock};

#[http_component]
fn handle_request(request: http::Request<Vec<u8>>) -> http::Response<Vec<u8>> {
    let store = SpinKv::open();
    let bridge = Bridge { kv: &store, config: &SpinConfig, outbound: &SpinOutbound, clock: &SystemClock };
    handle(&bridge, request)
}

/// Spin's `default` store, opened once per request. If it cannot be opened (no
/// `key_value_stores = ["default"]` in spin.toml), every operation reports why.
struct SpinKv(Result<spin_sdk::key_value::Store, String>);

impl SpinKv {
    fn open() -> SpinKv {
        SpinKv(spin_sdk::key_value::Store::open_default().map_err(|e| format!("cannot open store \"default\": {e}")))
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
        self.store()?.set(key, value).map_err(|e| KvError(e.to_string()))
    }
    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.store()?.delete(key).map_err(|e| KvError(e.to_string()))
    }
    fn keys(&self) -> Result<Vec<String>, KvError> {
        self.store()?.get_keys().map_err(|e| KvError(e.to_string()))
    }
}

struct SpinConfig;

impl Config for SpinConfig {
    fn get(&self, name: &str) -> Option<String> {
        spin_sdk::variables::get(name).ok().filter(|v| !v.trim().is_empty())
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
    outgoing.set_method(&method).map_err(|_| other("method rejected"))?;
    let scheme = match parts.uri.scheme_str() {
        Some("http") => Scheme::Http,
        _ => Scheme::Https,
    };
    outgoing.set_scheme(Some(&scheme)).map_err(|_| other("scheme rejected"))?;
    let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
    outgoing.set_authority(authority.as_deref()).map_err(|_| other("authority rejected"))?;
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".to_owned());
    outgoing.set_path_with_query(Some(&path)).map_err(|_| other("path rejected"))?;

    let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    let options = RequestOptions::new();
    // Connecting gets at most 10 s of the budget; waiting for the answer gets the whole budget.
    let _ = options.set_connect_timeout(Some(nanos.min(10_000_000_000)));
    let _ = options.set_first_byte_timeout(Some(nanos));
    let _ = options.set_between_bytes_timeout(Some(nanos));

    let outgoing_body = outgoing.body().map_err(|_| other("request body unavailable"))?;
    let future = outgoing_handler::handle(outgoing, Some(options)).map_err(|e| map_error(e, timeout))?;
    let written = (|| {
        let stream = outgoing_body.write().map_err(|_| other("request body stream unavailable"))?;
        // `blocking-write-and-flush` takes at most 4096 bytes per call.
        for chunk in body.chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| stream_error("writing the request body", e))?;
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
    let incoming_body = incoming.consume().map_err(|_| other("response body unavailable"))?;
    let mut bytes = Vec::new();
    {
        let stream = incoming_body.stream().map_err(|_| other("response body stream unavailable"))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => return Err(stream_error("reading Gong's answer", e)),
            }
        }
    }
    drop(IncomingBody::finish(incoming_body));
    builder.body(bytes).map_err(|e| OutboundError::Other(format!("bad response: {e}")))
}

fn stream_error(what: &str, error: StreamError) -> OutboundError {
    match error {
        StreamError::Closed => OutboundError::Other(format!("{what}: stream closed")),
        StreamError::LastOperationFailed(e) => OutboundError::Other(format!("{what}: {}", e.to_debug_string())),
    }
}

fn map_error(code: ErrorCode, timeout: Duration) -> OutboundError {
    match code {
        ErrorCode::ConnectionTimeout | ErrorCode::ConnectionReadTimeout | ErrorCode::ConnectionWriteTimeout | ErrorCode::HttpResponseTimeout => {
            OutboundError::Timeout(timeout)
        }
        ErrorCode::ConnectionRefused | ErrorCode::DestinationNotFound | ErrorCode::DestinationUnavailable | ErrorCode::DestinationIpUnroutable => {
            OutboundError::Unreachable(format!("{code:?}"))
        }
        ErrorCode::DnsError(e) => OutboundError::Unreachable(format!("DNS: {e:?}")),
        ErrorCode::HttpRequestDenied => OutboundError::Denied("HttpRequestDenied".into()),
        other => OutboundError::Other(format!("{other:?}")),
    }
}
