//! The delivery engine: accept validated records (inbox), compact them into the shards, flush
//! due types to Gong as files, follow each file to its final status, settle it (DONE, failed
//! lines to the failure store, unlisted lines out again), and answer "where is my record".
//! No HTTP here: functions return domain values or a [`Fault`]. Design: `docs/buffer.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::gong::models::ObjectType;

/// The lease lives at crate level (a sync needs one of its own); the engine's is the flush lease.
pub use crate::lease;
pub mod commands;
pub mod due;
pub mod failures;
pub mod flush;
mod follow;
mod inbox;
pub mod locate;
pub mod overview;
mod pending;
pub mod requests;
mod retention;
pub mod sent;
pub mod shards;

pub use failures::list_failures;
pub use flush::{check, run};
pub use inbox::{buffer_records, compact_inbox_now};

/// Waits for room for `needed` more keys below the admission line (as a delivery does); returns
/// the inbox keys seen then. For keys of the same kind written elsewhere (the fetch queue).
pub fn admit_keys(
    bridge: &crate::bridge::Bridge,
    needed: usize,
) -> Result<usize, crate::fault::Fault> {
    inbox::admit(bridge, crate::settings::layout(bridge.config), needed)
}
pub use locate::{locate, Location};

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use crate::keys::{inflight as inflight_key, INFLIGHT_PREFIX};
/// How the clientRequestId of every file flushed from the buffer begins (`fl-{type}-{uuid}`).
const FLUSH_FILE_PREFIX: &str = "fl-";
/// Deliveries listed in a flushed file's request record (the rest are counted only).
const MAX_DELIVERIES_LISTED: usize = 1_000;

/// A file sent from the buffer whose final status has not been applied yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InFlight {
    object_type: ObjectType,
    /// Per record (objectId; only those above 0): files that already gave no outcome for it. A
    /// file-level failure re-sends a record once, an unlisted line up to three times in all.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    attempts: BTreeMap<String, u32>,
    sent_at: i64,
    /// A failed file whose outcome was written at this time (Unix seconds): checked once more
    /// after `inbox_release_seconds`, then removed with its payload (see `follow::settle_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settled_at: Option<i64>,
    /// When the outcome was first written (Unix seconds), and when each record written again by
    /// a later look was (objectId → time): what a look checks a record's state against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settled_first: Option<i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    rewritten: BTreeMap<String, i64>,
    /// Failures of this file discarded by `DELETE /failures/…` while it settles: not written again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    discarded: Vec<String>,
}

/// A record Gong refused, with what Gong said.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub object_type: ObjectType,
    pub object_id: String,
    pub modified: i64,
    pub description: String,
    pub client_request_id: String,
    pub failed_at: String,
    /// The record as sent (one LDJSON line), so a retry resends exactly it.
    pub line: String,
    /// Re-queued by `POST /failures/retry` at this time (Unix seconds): hidden, and removed once
    /// a second look after `inbox_release_seconds` finds the record in the pending shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_at: Option<i64>,
    /// Discarded by an operator at this time (Unix seconds): hidden, kept for
    /// `idempotency_ttl_seconds` only so that the record's status can say so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discarded_at: Option<i64>,
    /// A record of a CRM's delivery that could not be mapped or broke Gong's rules (`line` is
    /// then the record as the CRM sent it): a retry maps it again with the current mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Failure {
    /// Listed, and open to a retry or discard: neither re-queued nor discarded.
    pub fn is_open(&self) -> bool {
        self.retried_at.is_none() && self.discarded_at.is_none()
    }
}

/// What accepting one delivery did.
#[derive(Debug, Default)]
pub struct Buffered {
    pub accepted: usize,
    /// Versions older than one already accepted for the same record: kept out, never sent.
    pub superseded: usize,
    /// The inbox has grown to where it should be compacted, after the answer.
    pub compact_inbox: bool,
}

/// What one flush run did; `POST /flush` answers it.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlushReport {
    pub scanned: bool,
    pub files: Vec<Value>,
    pub pending: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttled_until: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Why part of the work failed (Gong or the store refused it; records stay buffered). A
    /// throttle or a busy lease is not a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    pub polled: usize,
    pub failures_added: usize,
    pub requeued: usize,
    /// Inbox records merged into the pending shards by this run, those kept out as older than
    /// a version already held, and inbox keys still waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compacted: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbox_keys: Option<usize>,
}
