//! What can go wrong below the HTTP layer (store, Gong calls, the outbox), in domain terms.
//! No status codes here: `problem` maps each fault to one at a single edge.

use crate::gong::client::{GongError, Operation};
use crate::ports::{KvError, OutboundError};

#[derive(Debug, thiserror::Error)]
pub enum Fault {
    #[error("{0}")]
    Kv(#[from] KvError),
    /// A value the bridge wrote itself cannot be read back (damage, or a bug).
    #[error("{0}")]
    Corrupt(String),
    #[error("{}: {error}", .op.describe())]
    Gong { op: Operation, error: GongError },
    #[error("{}: {error}", .op.describe())]
    GongUnreachable { op: Operation, error: OutboundError },
    /// The shared Gong/platform call budget does not allow a call now; no call was made.
    #[error("{detail}")]
    Throttled { detail: String, retry_after: u64 },
    /// The work budget (`work_budget_ms`) is spent: no further Gong call starts.
    #[error("the work budget of {budget_ms} ms (variable work_budget_ms) is spent; the rest waits for the next request or POST /flush")]
    OutOfTime { budget_ms: u64 },
    /// A Gong failure after the data was stored: it is kept under this clientRequestId.
    #[error("{inner}")]
    Kept {
        client_request_id: String,
        inner: Box<Fault>,
    },
    #[error("the bridge is not configured: missing variable(s) {}", .0.join(", "))]
    NotConfigured(Vec<String>),
    #[error("{0}")]
    BadConfig(String),
    #[error("no Gong integration yet: register one with PUT /integration, or set the integration_id variable")]
    NoIntegration,
    #[error("no request with clientRequestId {0}")]
    NoSuchRequest(String),
    /// A clientRequestId already names another request (operation, object type or file).
    #[error("clientRequestId {client_request_id} was first used at {first_used_at} for {first_use}; this request is a different one: use a new Idempotency-Key")]
    RequestIdReused {
        client_request_id: String,
        first_used_at: String,
        first_use: String,
    },
    /// The request cannot do what was asked in its current state.
    #[error("{0}")]
    WrongState(String),
    /// Nothing was accepted: the store is near its key cap (`kv_max_keys`).
    #[error("{detail}")]
    StoreFull { detail: String, retry_after: u64 },
    /// A concurrent writer overwrote this step's write; the step repeats on the next run.
    #[error("{0}")]
    Overwritten(String),
}

impl Fault {
    /// The Gong error behind this fault, if Gong answered.
    pub fn gong_error(&self) -> Option<&GongError> {
        match self {
            Fault::Gong { error, .. } => Some(error),
            Fault::Kept { inner, .. } => inner.gong_error(),
            _ => None,
        }
    }
}

/// A JSON encoding failure of the bridge's own types (cannot happen for the types it writes).
pub fn encoding(e: serde_json::Error) -> Fault {
    Fault::Corrupt(format!("could not encode a value: {e}"))
}
