//! The four things the bridge needs from its runtime, as small traits. Spin implements them in
//! `spin_edge`; native unit tests implement them in memory. Nothing else touches Spin.

use std::time::Duration;

use time::OffsetDateTime;

pub type Request = http::Request<Vec<u8>>;
pub type Response = http::Response<Vec<u8>>;

/// A key-value store with Spin's semantics: last write wins, no transactions.
pub trait Kv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError>;
    fn delete(&self, key: &str) -> Result<(), KvError>;
    /// Every key in the store (Spin's `get-keys`; there is no prefix query).
    fn keys(&self) -> Result<Vec<String>, KvError>;
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("key-value store: {0}")]
pub struct KvError(pub String);

/// Application variables (Spin variables). `None` when undefined or empty.
pub trait Config {
    fn get(&self, name: &str) -> Option<String>;
}

/// Outbound HTTP with a bound on how long the whole exchange may wait.
pub trait Outbound {
    fn send(&self, request: Request, timeout: Duration) -> Result<Response, OutboundError>;
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OutboundError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("could not connect: {0}")]
    Unreachable(String),
    #[error("the runtime refused the request (is the host in allowed_outbound_hosts?): {0}")]
    Denied(String),
    #[error("{0}")]
    Other(String),
}

pub trait Clock {
    fn now(&self) -> OffsetDateTime;
    /// Waits; used only to let concurrent writers' claims land (see `idempotency`).
    fn sleep(&self, duration: Duration);
}

/// The wall clock; works natively and on wasm32-wasip2 (wasi:clocks).
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }

    #[cfg(target_arch = "wasm32")]
    fn sleep(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        wasi::clocks::monotonic_clock::subscribe_duration(nanos).block();
    }
}
