//! Coalescing: buffering validated webhook records, flushing them to Gong as one file per
//! type, following each file until Gong's final status, and the failure store.
//! Design and failure analysis: `docs/buffer.md`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::app::Bridge;
use crate::buffer::PendingKey;
use crate::gong::models::ObjectType;
use crate::problem::ApiError;
use crate::quota::QuotaState;
use crate::routes::requests::{self, submit_tracked, Submission, PAYLOAD};
use crate::settings;
use crate::tracking::{RequestOperation, TrackedStatus};
use crate::validation::{self, ValidRecord};

mod compact;

const INFLIGHT_PREFIX: &str = "inflight/";
const FLUSH_LEASE: &str = "lease/flush";
const NEXT_CHECK_KEY: &str = "flush/next-check";
/// On ordinary requests the buffer is scanned at most this often (a scan lists every key).
const CHECK_EVERY_SECONDS: i64 = 5;
/// Status polls of in-flight files per request, so that a request stays fast.
pub const POLLS_PER_REQUEST: usize = 3;
/// Files one `POST /flush` may send, so that one request stays bounded.
const FILES_PER_REQUEST: usize = 12;
/// Files an ordinary request (a webhook, say) may send on the side, so that it stays fast.
const FILES_PER_ORDINARY_REQUEST: usize = 2;
/// Files a record whose outcome Gong did not list may go in before it is failed.
const UNLISTED_ATTEMPTS: u32 = 3;
/// Deliveries listed in a flushed file's request record (the rest are counted only).
const MAX_DELIVERIES_LISTED: usize = 1_000;


fn inflight_key(client_request_id: &str) -> String {
    format!("{INFLIGHT_PREFIX}{client_request_id}")
}

/// A file sent from the buffer whose final status has not been applied yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InFlight {
    object_type: ObjectType,
    /// The highest `attempt` among the file's records (file-level failures retry once).
    attempt: u32,
    sent_at: i64,
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
}

// ----- buffering ---------------------------------------------------------------------------

#[derive(Debug, Default)]
pub struct Buffered {
    pub accepted: usize,
    /// Versions older than one already accepted for the same record: kept out, never sent.
    pub superseded: usize,
    /// The inbox has grown to where it should be compacted, after the answer.
    pub compact_inbox: bool,
}

/// Compacts the inbox into the shards now, unless another replica holds the flush lease (the
/// work after a webhook whose delivery filled the inbox).
pub fn compact_inbox_now(bridge: &Bridge) -> Result<(), ApiError> {
    compact::compact_now(bridge, settings::layout(bridge.config))
}

/// Writes validated records to the inbox (one key per delivery), so once this returns Ok the
/// records are the bridge's responsibility.
pub fn buffer_records(bridge: &Bridge, object_type: ObjectType, records: Vec<ValidRecord>, delivery: &str) -> Result<Buffered, ApiError> {
    compact::buffer_records(bridge, settings::layout(bridge.config), object_type, records, delivery)
}

// ----- flushing ----------------------------------------------------------------------------

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
    /// Compact layout: inbox records merged into the pending shards by this run, those kept
    /// out as older than a version already held, and inbox keys still waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compacted: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbox_keys: Option<usize>,
}

/// On an ordinary request: scan only if the last scan is old enough, then flush what is due.
pub fn check(bridge: &Bridge) -> Result<FlushReport, ApiError> {
    let now = bridge.clock.now().unix_timestamp();
    let next: Option<i64> = bridge.store().get_json(NEXT_CHECK_KEY)?;
    if next.is_some_and(|n| n > now) {
        return Ok(FlushReport::default());
    }
    bridge.store().put_json(NEXT_CHECK_KEY, &(now + CHECK_EVERY_SECONDS))?;
    run_bounded(bridge, false, FILES_PER_ORDINARY_REQUEST)
}

/// Flushes every type that is due (all pending ones with `force`), in dependency order, then
/// polls in-flight files.
pub fn run(bridge: &Bridge, force: bool) -> Result<FlushReport, ApiError> {
    run_bounded(bridge, force, FILES_PER_REQUEST)
}

fn run_bounded(bridge: &Bridge, force: bool, max_files: usize) -> Result<FlushReport, ApiError> {
    compact::run(bridge, settings::layout(bridge.config), force, max_files)
}

/// Until when (Unix seconds, rounded up) Gong may not be called, if it may not be called at `now`.
fn blocked_until(bridge: &Bridge, now: i64) -> Result<Option<i64>, ApiError> {
    let state: QuotaState = bridge.store().get_json(crate::app::QUOTA_KEY)?.unwrap_or_default();
    Ok((state.blocked_until_ms > now * 1000).then_some((state.blocked_until_ms + 999).div_euclid(1000)))
}

/// The integration files go to; without one, records wait (noted in the report).
fn integration_for_flush(bridge: &Bridge, report: &mut FlushReport) -> Option<i64> {
    match bridge.integration_id() {
        Ok(id) => Some(id),
        Err(_) => {
            report.note = Some("records are buffered but no Gong integration is registered yet (PUT /integration)".into());
            None
        }
    }
}

/// Records why a file could not go (the records stay buffered) and when the next try can be;
/// the flush stops there. Shared by both layouts.
fn report_flush_failure(bridge: &Bridge, object_type: ObjectType, error: ApiError, now: i64, report: &mut FlushReport) -> Result<(), ApiError> {
    match error {
        ApiError::Throttled { detail, retry_after } => {
            report.throttled_until = Some(now + retry_after as i64);
            report.note = Some(format!("{detail}; records stay buffered"));
        }
        e => {
            if let Some(until) = blocked_until(bridge, now)? {
                report.throttled_until = Some(until);
            }
            report.note = Some(format!("flushing {object_type} failed, records stay buffered: {e}"));
            report.failed = Some(format!("flushing {object_type}: {e}"));
        }
    }
    Ok(())
}

/// A file Gong accepted (201, or 409 for its clientRequestId).
struct SentFile {
    client_request_id: String,
    /// objectId per line, line 1 first.
    line_ids: Vec<String>,
    merged: usize,
}

impl SentFile {
    fn report(&self, object_type: ObjectType) -> Value {
        json!({"objectType": object_type, "clientRequestId": self.client_request_id, "records": self.line_ids.len(), "mergedVersions": self.merged})
    }
}

/// Builds the LDJSON file from buffered records (newest version per record), marks it in
/// flight, stores and sends it. `None` when there was nothing to send. On any failure the
/// attempt is forgotten (marker and payload removed) and the records are still pending.
fn send_file(
    bridge: &Bridge,
    gong: &crate::gong::client::GongClient,
    integration_id: i64,
    object_type: ObjectType,
    records: Vec<ValidRecord>,
    deliveries: Vec<String>,
    attempt: u32,
) -> Result<Option<SentFile>, ApiError> {
    let (ldjson, line_ids, merged) = validation::build_ldjson(records);
    if line_ids.is_empty() {
        return Ok(None);
    }
    let client_request_id = format!("fl-{}-{}", object_type.as_str().to_ascii_lowercase(), uuid::Uuid::new_v4().simple());
    let marker = InFlight { object_type, attempt, sent_at: bridge.clock.now().unix_timestamp() };
    // The marker goes first: whatever happens next, a poll finds this file.
    bridge.store().put_json(&inflight_key(&client_request_id), &marker)?;
    let count = line_ids.len();
    // Known now, so a failure below can clean up even if the request record was never stored.
    let payload_chunks = ldjson.len().div_ceil(crate::store::CHUNK_BYTES);
    let line_map_chunks = line_ids.iter().map(|id| id.len() + 1).sum::<usize>().div_ceil(crate::store::CHUNK_BYTES);
    let submitted = submit_tracked(
        bridge,
        gong,
        Submission {
            client_request_id: client_request_id.clone(),
            operation: RequestOperation::UploadEntities,
            object_type: Some(object_type),
            integration_id,
            record_count: Some(count),
            ldjson: Some(ldjson),
            line_object_ids: Some(line_ids.clone()),
            delivery: None,
            from_buffer: true,
        },
    );
    match submitted {
        Ok(tracked) => {
            if !deliveries.is_empty() {
                let mut record = tracked.record;
                record.deliveries = deliveries;
                if let Err(e) = bridge.store().put_json(&crate::store::request_key(&client_request_id), &record) {
                    eprintln!("gong-crm-bridge: could not list the deliveries of {client_request_id}: {e}");
                }
            }
            Ok(Some(SentFile { client_request_id, line_ids, merged }))
        }
        Err(error) => {
            // Gong did not take the file: the records are still pending; forget the attempt
            // (the request record stays, NOT_SENT, as history of what Gong said).
            let _ = bridge.kv.delete(&inflight_key(&client_request_id));
            let _ = bridge.store().delete_blob(PAYLOAD, &client_request_id, payload_chunks);
            let _ = bridge.store().delete_blob(requests::LINES, &client_request_id, line_map_chunks);
            if let Ok(Some(mut record)) = bridge.store().get_json::<crate::tracking::RequestRecord>(&crate::store::request_key(&client_request_id)) {
                record.payload_chunks = 0;
                record.line_map_chunks = 0;
                let _ = bridge.store().put_json(&crate::store::request_key(&client_request_id), &record);
            }
            Err(match error {
                ApiError::Kept { inner, .. } => match *inner {
                    ApiError::Gong { error: crate::gong::client::GongError::RateLimited { retry_after, .. }, .. } => {
                        ApiError::Throttled { detail: "Gong answered 429".into(), retry_after: retry_after.unwrap_or(60) }
                    }
                    other => other,
                },
                other => other,
            })
        }
    }
}

// ----- following files to their end --------------------------------------------------------

/// Gong keeps a request's status for 24 h; a file still unresolved after that is failed as a
/// whole (its records go out again once, then to the failure store).
const GONG_STATUS_TTL_SECONDS: i64 = 86_400;

/// Follows in-flight files: those whose next poll is due, soonest first (a file that keeps
/// erroring waits longer each time and cannot starve the others), at most
/// `POLLS_PER_REQUEST` Gong calls per run.
fn poll_inflight(bridge: &Bridge, inflight: &[String], report: &mut FlushReport) -> Result<(), ApiError> {
    let store = bridge.store();
    let now = bridge.clock.now().unix_timestamp();
    let mut files = Vec::new();
    for client_request_id in inflight {
        let Some(marker) = store.get_json::<InFlight>(&inflight_key(client_request_id))? else { continue };
        let record = match requests::load(bridge, client_request_id) {
            Ok(record) => record,
            // No record: the file never reached Gong (the bridge stopped before storing it);
            // its versions are still pending.
            Err(ApiError::NotFoundResource(_)) => {
                store.delete(&inflight_key(client_request_id))?;
                continue;
            }
            // Anything else (the store failing) must not drop the marker of a file Gong may
            // hold: its failed lines would never reach the failure store.
            Err(e) => return Err(e),
        };
        if record.status == TrackedStatus::NotSent {
            store.delete(&inflight_key(client_request_id))?;
            continue;
        }
        files.push((marker, record));
    }
    files.sort_by_key(|(marker, record)| (record.next_poll_at.unwrap_or(0), marker.sent_at));
    let mut polls = 0;
    for (marker, mut record) in files {
        if !record.status.is_final() && now - marker.sent_at > GONG_STATUS_TTL_SECONDS {
            record.status = TrackedStatus::Failed;
            record.errors = vec![crate::tracking::TrackedLineError {
                line: 0,
                object_id: None,
                description: "Gong gave no final status within 24 hours".into(),
            }];
            store.put_json(&crate::store::request_key(&record.client_request_id), &record)?;
        }
        if !record.status.is_final() {
            if polls >= POLLS_PER_REQUEST || !record.poll_due(now) {
                continue;
            }
            polls += 1;
            match requests::poll(bridge, &mut record) {
                Ok(()) => report.polled += 1,
                Err(ApiError::Throttled { retry_after, .. }) => {
                    report.throttled_until = Some(now + retry_after as i64);
                    return Ok(());
                }
                Err(e) => {
                    eprintln!("gong-crm-bridge: polling {}: {e}", record.client_request_id);
                    continue;
                }
            }
        }
        if record.status.is_final() {
            settle_file(bridge, &record, &marker, report)?;
        }
    }
    Ok(())
}

/// Applies a final status: failed lines go to the failure store; a file-level failure puts the
/// file's records back to pending once, then into the failure store. Everything is written
/// before the marker is removed, so a crash in between repeats this step (idempotently).
fn settle_file(bridge: &Bridge, record: &crate::tracking::RequestRecord, marker: &InFlight, report: &mut FlushReport) -> Result<(), ApiError> {
    let store = bridge.store();
    let id = &record.client_request_id;
    if record.status == TrackedStatus::Failed {
        let Some(payload) = store.get_blob(PAYLOAD, id, record.payload_chunks)? else {
            // Cannot happen unless a chunk was removed by hand; failing here on every poll would
            // stop all later polling, so the file is let go. Its failed lines stay visible by
            // objectId in GET /requests/{id}.
            eprintln!("gong-crm-bridge: file {id} failed but its payload is gone; see GET /requests/{id}");
            store.delete(&inflight_key(id))?;
            return Ok(());
        };
        let lines: Vec<&[u8]> = payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        let file_level: Vec<&str> = record.errors.iter().filter(|e| e.line <= 0).map(|e| e.description.as_str()).collect();
        let now = bridge.now();
        let failure = |line: &[u8], object_id: String, modified: i64, description: String| Failure {
            object_type: marker.object_type,
            object_id,
            modified,
            description,
            client_request_id: id.clone(),
            failed_at: now.clone(),
            line: String::from_utf8_lossy(line).into_owned(),
        };
        let mut requeue = Vec::new();
        let mut failures = Vec::new();
        if !file_level.is_empty() {
            let description = format!("Gong failed the whole file: {}", file_level.join("; "));
            for line in &lines {
                let Some((object_id, modified)) = identify(line) else { continue };
                if marker.attempt == 0 {
                    requeue.push(Requeue { object_id, modified, line: line.to_vec(), attempt: 1 });
                } else {
                    failures.push(failure(line, object_id, modified, description.clone()));
                }
            }
        } else {
            let mut listed = std::collections::BTreeSet::new();
            for error in &record.errors {
                let Some(line) = usize::try_from(error.line - 1).ok().and_then(|i| lines.get(i)) else { continue };
                let Some((object_id, modified)) = identify(line) else { continue };
                listed.insert(error.line);
                failures.push(failure(line, object_id, modified, error.description.clone()));
            }
            // Gong lists at most 20 failed lines per file ("upload the entire file repeatedly
            // until you receive a DONE status"): when it counts more failures than it lists, or
            // lists none, no unlisted record is known to be done. They go out again, without the
            // listed ones, until a DONE or a listed failure covers each; after three such files a
            // record goes to the failure store saying Gong gave no reason.
            let counted = record.totals.error.unwrap_or(0).max(0) as usize;
            if listed.is_empty() || counted > listed.len() {
                let description = format!("Gong failed the file ({counted} failures, {} listed) without a reason for this record, three times", listed.len());
                for (_, line) in lines.iter().enumerate().filter(|(i, _)| !listed.contains(&(*i as i64 + 1))) {
                    let Some((object_id, modified)) = identify(line) else { continue };
                    if marker.attempt + 1 < UNLISTED_ATTEMPTS {
                        requeue.push(Requeue { object_id, modified, line: line.to_vec(), attempt: marker.attempt + 1 });
                    } else {
                        failures.push(failure(line, object_id, modified, description.clone()));
                    }
                }
            }
        }
        report.requeued += requeue.len();
        report.failures_added += failures.len();
        let layout = settings::layout(bridge.config);
        compact::requeue(bridge, layout, marker.object_type, requeue)?;
        compact::add_failures(bridge, layout, failures)?;
    }
    store.delete_blob(PAYLOAD, id, record.payload_chunks)?;
    store.delete(&inflight_key(id))?;
    Ok(())
}

/// A record going back to pending (a file-level failure, or `POST /failures/retry`).
struct Requeue {
    object_id: String,
    modified: i64,
    line: Vec<u8>,
    attempt: u32,
}

/// objectId and modifiedDate of an LDJSON line the bridge itself wrote.
fn identify(line: &[u8]) -> Option<(String, i64)> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        object_id: String,
        modified_date: String,
    }
    let head: Head = serde_json::from_slice(line).ok()?;
    let modified = validation::parse_gong_datetime(&head.modified_date).ok()?.unix_timestamp();
    Some((head.object_id, modified))
}

// ----- the failure store -------------------------------------------------------------------

pub fn list_failures(bridge: &Bridge, object_type: Option<ObjectType>, limit: usize) -> Result<(Vec<Failure>, usize), ApiError> {
    compact::list_failures(bridge, settings::layout(bridge.config), object_type, limit)
}

/// Puts failures back into the buffer (all, one type, or some ids of one type).
pub fn retry_failures(bridge: &Bridge, object_type: Option<ObjectType>, ids: Option<&[String]>) -> Result<usize, ApiError> {
    compact::retry_failures(bridge, settings::layout(bridge.config), object_type, ids)
}

/// Pending versions of one record (for "where is my record").
pub fn pending_versions(bridge: &Bridge, object_type: ObjectType, object_id: &str) -> Result<Vec<PendingKey>, ApiError> {
    compact::pending_versions(bridge, settings::layout(bridge.config), object_type, object_id)
}

/// The failure stored for one record, if any.
pub fn find_failure(bridge: &Bridge, object_type: ObjectType, object_id: &str) -> Result<Option<Failure>, ApiError> {
    compact::find_failure(bridge, settings::layout(bridge.config), object_type, object_id)
}

/// Removes one failure explicitly; `false` when there was none.
pub fn discard_failure(bridge: &Bridge, object_type: ObjectType, object_id: &str) -> Result<bool, ApiError> {
    compact::discard_failure(bridge, settings::layout(bridge.config), object_type, object_id)
}

/// The file and line that last carried a record to Gong (its tombstone in the shard).
/// The modifiedDate of the version of one record last sent to Gong, if any.
pub fn sent_version(bridge: &Bridge, object_type: ObjectType, object_id: &str) -> Result<Option<i64>, ApiError> {
    compact::sent_version(bridge, settings::layout(bridge.config), object_type, object_id)
}

pub fn sent_entry(bridge: &Bridge, object_type: ObjectType, object_id: &str) -> Result<Option<requests::RecordIndexEntry>, ApiError> {
    compact::sent_entry(bridge, settings::layout(bridge.config), object_type, object_id)
}

