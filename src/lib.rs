//! gong-crm-bridge: a Spin component that lets any CRM push its data into Gong's Generic CRM API.
//!
//! Layout: Gong knowledge (models, client request building/parsing, validation, LDJSON,
//! request tracking) lives in pure modules that test natively; the Spin runtime is touched only
//! by `spin_edge`, behind the small traits in `ports`.

pub mod app;
pub mod bridge;
pub mod calls;
pub mod crm;
pub mod fault;
pub mod gateway;
pub mod gong;
pub mod idempotency;
pub mod intake;
pub mod keys;
pub mod lease;
pub mod log;
pub mod mapping;
pub mod outbox;
pub mod ports;
pub mod problem;
pub mod quota;
pub mod routes;
pub mod settings;
pub mod sorting;
pub mod store;
pub mod tally;
#[cfg(test)]
pub(crate) mod testing;
pub mod tracking;
pub mod validation;
pub mod webhooks;

#[cfg(target_arch = "wasm32")]
mod spin_edge;
