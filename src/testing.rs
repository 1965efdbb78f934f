//! Native test doubles for the four ports: variables from a map, a virtual clock, and a scripted
//! Gong behind `Outbound` that records every call (the `Kv` is `store::memory::MemoryKv`).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use time::OffsetDateTime;

use crate::bridge::Bridge;
use crate::ports::{Clock, Config, Kv, KvError, Outbound, OutboundError, Request, Response};
use crate::store::memory::MemoryKv;

/// Spin variables from a map; empty values count as unset, as on Spin.
#[derive(Default)]
pub struct MapConfig(pub RefCell<HashMap<String, String>>);

impl MapConfig {
    pub fn with(pairs: &[(&str, &str)]) -> MapConfig {
        MapConfig(RefCell::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ))
    }
}

impl Config for MapConfig {
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .borrow()
            .get(name)
            .filter(|v| !v.trim().is_empty())
            .cloned()
    }
}

/// Time that moves only when someone sleeps or a scripted Gong call takes time.
pub struct VirtualClock {
    nanos: Cell<i128>,
}

impl VirtualClock {
    pub fn at(unix_seconds: i64) -> VirtualClock {
        VirtualClock {
            nanos: Cell::new(unix_seconds as i128 * 1_000_000_000),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.nanos.set(self.nanos.get() + by.as_nanos() as i128);
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(self.nanos.get())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    fn sleep(&self, duration: Duration) {
        self.advance(duration);
    }
}

/// One scripted answer: after `takes`, the response (or, if `takes` exceeds the caller's
/// timeout, a timeout after exactly that timeout).
pub struct Scripted {
    pub answer: Result<Response, OutboundError>,
    pub takes: Duration,
}

/// A call the bridge made: method, path with query, the timeout it allowed, and where its body
/// is in `ScriptedGong::bodies` (a multipart upload's LDJSON part, else the raw body).
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub timeout: Duration,
    pub index: usize,
}

/// Gong as a script: queued answers first, then Gong-like successes (201 for uploads, DONE for
/// request status, 200 `{}` otherwise), each taking `default_takes`.
pub struct ScriptedGong<'c> {
    pub clock: &'c VirtualClock,
    pub queue: RefCell<VecDeque<Scripted>>,
    pub calls: RefCell<Vec<Call>>,
    pub bodies: RefCell<Vec<Vec<u8>>>,
    pub default_takes: Cell<Duration>,
    /// Runs inside the next call, before Gong answers: what another replica does meanwhile.
    pub meanwhile: RefCell<Option<Box<dyn FnOnce() + 'c>>>,
    /// Answers first when it returns one: another API behind the same port (a CRM's).
    pub other_api: RefCell<Option<OtherApi<'c>>>,
}

/// An answer for requests another API serves (`None`: Gong's turn).
pub type OtherApi<'c> = Box<dyn Fn(&Request) -> Option<Response> + 'c>;

impl<'c> ScriptedGong<'c> {
    pub fn new(clock: &'c VirtualClock) -> ScriptedGong<'c> {
        ScriptedGong {
            clock,
            queue: RefCell::default(),
            calls: RefCell::default(),
            bodies: RefCell::default(),
            default_takes: Cell::new(Duration::from_millis(20)),
            meanwhile: RefCell::default(),
            other_api: RefCell::default(),
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    fn default_answer(request: &Request) -> Response {
        let (status, body) = match (request.method().as_str(), request.uri().path()) {
            ("POST", "/v2/crm/entities") => (201, r#"{"requestId":"scripted"}"#),
            ("GET", "/v2/crm/request-status") => (
                200,
                r#"{"requestId":"scripted","status":"DONE","errors":[],"totalErrorCount":0}"#,
            ),
            _ => (200, "{}"),
        };
        http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec())
            .unwrap_or_default()
    }
}

impl Outbound for ScriptedGong<'_> {
    fn send(&self, request: Request, timeout: Duration) -> Result<Response, OutboundError> {
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let index = self.bodies.borrow().len();
        self.bodies.borrow_mut().push(ldjson_part(request.body()));
        self.calls.borrow_mut().push(Call {
            method: request.method().to_string(),
            path,
            timeout,
            index,
        });
        let meanwhile = self.meanwhile.borrow_mut().take();
        if let Some(meanwhile) = meanwhile {
            meanwhile();
        }
        let other = self
            .other_api
            .borrow()
            .as_ref()
            .and_then(|api| api(&request));
        if let Some(answer) = other {
            self.clock.advance(self.default_takes.get());
            return Ok(answer);
        }
        let scripted = self.queue.borrow_mut().pop_front();
        let (answer, takes) = match scripted {
            Some(s) => (s.answer, s.takes),
            None => (Ok(Self::default_answer(&request)), self.default_takes.get()),
        };
        if takes > timeout {
            self.clock.advance(timeout);
            return Err(OutboundError::Timeout(timeout));
        }
        self.clock.advance(takes);
        answer
    }
}

/// The lines of a multipart upload's file part (from its first LDJSON line to the closing
/// boundary), or the body as it is.
fn ldjson_part(body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with('{')).collect();
    if lines.is_empty() {
        body.to_vec()
    } else {
        lines.join("\n").into_bytes()
    }
}

/// A bridge over the doubles.
pub fn bridge<'a, 'c: 'a>(
    kv: &'a dyn Kv,
    config: &'a MapConfig,
    gong: &'a ScriptedGong<'c>,
    clock: &'a VirtualClock,
) -> Bridge<'a> {
    Bridge {
        kv,
        config,
        outbound: gong,
        clock,
        deadline: None,
        tally: Box::leak(Box::default()),
    }
}

/// The variables of a configured bridge with an integration and no claim settle wait.
pub fn configured(extra: &[(&str, &str)]) -> MapConfig {
    let config = MapConfig::with(&[
        ("gong_base_url", "https://gong.test"),
        ("gong_access_key", "key"),
        ("gong_access_key_secret", "secret"),
        ("api_token", "token"),
        ("integration_id", "7"),
        ("webhook_bearer_token", "hook-token"),
        ("idempotency_settle_ms", "0"),
    ]);
    for (k, v) in extra {
        config.0.borrow_mut().insert(k.to_string(), v.to_string());
    }
    config
}

/// A request as the edge builds it.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Request {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:3000{path}"));
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(body.to_vec()).unwrap_or_default()
}

/// What another replica does between this one's read and write: it gets the store.
pub type KvMeanwhile<'h> = Box<dyn FnOnce(&dyn Kv) + 'h>;

/// A store whose next read of a key under `prefix` runs `meanwhile` right after reading:
/// another replica working between this one's read and write of a shard.
#[derive(Default)]
pub struct InterleavedKv<'h> {
    pub inner: MemoryKv,
    pub meanwhile: RefCell<Option<(String, KvMeanwhile<'h>)>>,
}

impl Kv for InterleavedKv<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let value = self.inner.get(key)?;
        let due = self
            .meanwhile
            .borrow()
            .as_ref()
            .is_some_and(|(prefix, _)| key.starts_with(prefix.as_str()));
        if due {
            let taken = self.meanwhile.borrow_mut().take();
            if let Some((_, run)) = taken {
                run(self);
            }
        }
        Ok(value)
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.inner.set(key, value)
    }
    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.inner.delete(key)
    }
    fn keys(&self) -> Result<Vec<String>, KvError> {
        self.inner.keys()
    }
}
