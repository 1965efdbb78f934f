//! Every key the bridge writes in the key-value store, named in one place, so that the key budget
//! (`docs/buffer.md`, "Key budget") can be audited from here. Keys stay under 255 bytes: an
//! objectId or clientRequestId is at most 64 characters.

use crate::gong::models::ObjectType;

// ----- Gong state kept by the management API -------------------------------------------------

/// The integration registered or adopted (`store::KeptIntegration`).
pub const INTEGRATION: &str = "integration";

/// The schema uploaded for one object type.
pub fn schema(object_type: ObjectType) -> String {
    format!("schema/{}", object_type.as_str())
}

/// A tracked Gong request (`tracking::RequestRecord`).
pub const REQUEST_PREFIX: &str = "request/";

pub fn request(client_request_id: &str) -> String {
    format!("{REQUEST_PREFIX}{client_request_id}")
}

/// `reqidx/{inverted unix time}/{clientRequestId}`: sorting key names lists newest first.
pub const REQUEST_INDEX_PREFIX: &str = "reqidx/";

pub fn request_index(unix: i64, client_request_id: &str) -> String {
    format!(
        "{REQUEST_INDEX_PREFIX}{:012}/{client_request_id}",
        999_999_999_999i64.saturating_sub(unix)
    )
}

/// Chunked values (`blob/{kind}/{id}/{n}`); the kinds below.
pub const BLOB_PREFIX: &str = "blob/";

pub fn blob(kind: &str, id: &str, n: usize) -> String {
    format!("{BLOB_PREFIX}{kind}/{id}/{n}")
}

/// A request's LDJSON file, kept until Gong accepted it.
pub const BLOB_PAYLOAD: &str = "payload";
/// A file's line → objectId map.
pub const BLOB_LINES: &str = "lines";
/// A bulk file's per-record index, until the engine folds it into the shards.
pub const BLOB_SENT: &str = "sent";

// ----- shared budgets, counters and replay records -------------------------------------------

/// The shared Gong call budget (`quota::QuotaState`).
pub const QUOTA: &str = "quota";
/// The `/metrics` counters.
pub const COUNTERS: &str = "metrics/counters";
/// Idempotency records (`idem/{scope}/{key}`) and their expiry index
/// (`idemexp/{expiresAtUnix}/{scope}/{key}`).
pub const IDEMPOTENCY_PREFIX: &str = "idem/";
pub const IDEMPOTENCY_EXPIRY_PREFIX: &str = "idemexp/";

// ----- the delivery engine (`outbox`) ---------------------------------------------------------

/// One key per delivery, never rewritten: `inbox/{TYPE}/{receivedUnix}/{unique}`.
pub const INBOX_PREFIX: &str = "inbox/";

pub fn inbox(object_type: ObjectType, received: i64, unique: &str) -> String {
    format!(
        "{INBOX_PREFIX}{}/{received:011}/{unique}",
        object_type.as_str()
    )
}

/// Pending records and tombstones, `pbuf/{TYPE}/{n}`.
pub const PENDING_SHARD_PREFIX: &str = "pbuf/";
/// The failure store, `pfail/{TYPE}/{n}`.
pub const FAILURE_SHARD_PREFIX: &str = "pfail/";

pub fn pending_shard(object_type: ObjectType, n: u32) -> String {
    format!("{PENDING_SHARD_PREFIX}{}/{n:03}", object_type.as_str())
}

pub fn failure_shard(object_type: ObjectType, n: u32) -> String {
    format!("{FAILURE_SHARD_PREFIX}{}/{n:03}", object_type.as_str())
}

/// (type, shard number) of a `pbuf/` or `pfail/` key.
pub fn parse_shard(key: &str, prefix: &str) -> Option<(ObjectType, u32)> {
    let (t, n) = key.strip_prefix(prefix)?.split_once('/')?;
    Some((ObjectType::parse_upload(t)?, n.parse().ok()?))
}

/// Records, bytes and oldest arrival per pending shard.
pub const SUMMARY: &str = "buffer/summary";
/// Merged inbox keys waiting for their second look.
pub const SETTLING: &str = "buffer/settling";
/// Failure shards holding re-queued failures waiting for their second look.
pub const RETRIED: &str = "buffer/retried";

/// A file sent from the buffer whose final status is not applied yet.
pub const INFLIGHT_PREFIX: &str = "inflight/";

pub fn inflight(client_request_id: &str) -> String {
    format!("{INFLIGHT_PREFIX}{client_request_id}")
}

/// The flush lease (`lease`).
pub const FLUSH_LEASE: &str = "lease/flush";
/// When the next cheap check scans the store.
pub const NEXT_CHECK: &str = "flush/next-check";
/// When finished request records are next swept by age.
pub const NEXT_AGE_SWEEP: &str = "retention/next-sweep";
/// Operator commands waiting for the engine, `command/{nanos}-{random}`.
pub const COMMAND_PREFIX: &str = "command/";

// ----- the CRM receivers (`crm`) -----------------------------------------------------------------

/// Thin notifications waiting to be read from the CRM's API, `fetch/{source}/{received}/{unique}`.
pub const FETCH_PREFIX: &str = "fetch/";
/// The lease of whoever drains the fetch queue.
pub const FETCH_LEASE: &str = "lease/fetch";
/// `crm/health/{source}`: the CRM's API refused the bridge (a rejected token).
pub const SOURCE_HEALTH_PREFIX: &str = "crm/health/";
/// `crm/objects/{source}`: the CRM's object ids → names, read once.
pub const SOURCE_OBJECTS_PREFIX: &str = "crm/objects/";
/// `quota/{source}`: the shared call budget of a CRM's API.
pub const SOURCE_QUOTA_PREFIX: &str = "quota/";
/// `sync/{source}`: a source's first full sync, its cursor and progress (`crm::sync`).
pub const SYNC_PREFIX: &str = "sync/";
/// `lease/sync/{source}`: whoever reads the source's next pages.
pub const SYNC_LEASE_PREFIX: &str = "lease/sync/";
/// The sources whose sync is running (what the after-answer work advances).
pub const SYNC_RUNNING: &str = "crm/sync-running";
/// `mapping/{source}`: the user's override of a source's default mapping (`PUT /mappings/{source}`).
pub const MAPPING_PREFIX: &str = "mapping/";
