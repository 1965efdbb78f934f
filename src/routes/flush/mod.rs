//! Coalescing: buffering validated webhook records, flushing them to Gong as one file per
//! type, following each file until Gong's final status, and the failure store.
//! Design and failure analysis: `docs/buffer.md`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::app::Bridge;
use crate::buffer::{self, PendingKey, FLUSH_ORDER, PENDING_PREFIX};
use crate::gong::models::ObjectType;
use crate::idempotency::lease;
use crate::problem::ApiError;
use crate::quota::QuotaState;
use crate::routes::requests::{self, submit_tracked, Submission, PAYLOAD};
use crate::settings;
use crate::tracking::{RequestOperation, TrackedStatus};
use crate::validation::{self, ValidRecord};

mod compact;

const INFLIGHT_PREFIX: &str = "inflight/";
const FAILURE_PREFIX: &str = "fail/";
const LATEST_PREFIX: &str = "latest/";
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
/// Deliveries listed in a flushed file's request record (the rest are counted only).
const MAX_DELIVERIES_LISTED: usize = 1_000;

fn latest_key(object_type: ObjectType, object_id: &str) -> String {
    format!("{LATEST_PREFIX}{}/{object_id}", object_type.as_str())
}

pub fn failure_key(object_type: ObjectType, object_id: &str) -> String {
    format!("{FAILURE_PREFIX}{}/{object_id}", object_type.as_str())
}

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

/// A pending version's value: the delivery (webhook-id) that brought it, a newline, then the
/// LDJSON line. Header values cannot hold a newline and LDJSON lines hold none, so the first
/// newline always separates the two.
fn pending_value(delivery: &str, line: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(delivery.len() + 1 + line.len());
    value.extend_from_slice(delivery.as_bytes());
    value.push(b'\n');
    value.extend_from_slice(line);
    value
}

fn split_pending_value(value: &[u8]) -> (&str, &[u8]) {
    match value.iter().position(|b| *b == b'\n') {
        Some(at) => (std::str::from_utf8(&value[..at]).unwrap_or(""), &value[at + 1..]),
        None => ("", value),
    }
}

#[derive(Debug, Default)]
pub struct Buffered {
    pub accepted: usize,
    /// Versions older than one already accepted for the same record: kept out, never sent.
    pub superseded: usize,
}

/// Writes validated records to the pending buffer. Each version gets a key of its own, written
/// before anything else, so once this returns Ok the records are the bridge's responsibility.
pub fn buffer_records(bridge: &Bridge, object_type: ObjectType, records: Vec<ValidRecord>, delivery: &str) -> Result<Buffered, ApiError> {
    if let Some(layout) = settings::compact_layout(bridge.config) {
        return compact::buffer_records(bridge, layout, object_type, records, delivery);
    }
    let store = bridge.store();
    let now = bridge.clock.now().unix_timestamp();
    let mut outcome = Buffered::default();
    for record in records {
        let modified = record.modified.unix_timestamp();
        let latest: Option<i64> = store.get_json(&latest_key(object_type, &record.object_id))?;
        if latest.is_some_and(|l| l > modified) {
            outcome.superseded += 1;
            continue;
        }
        let key = PendingKey { object_type, object_id: record.object_id.clone(), modified, received: now, bytes: record.line.len(), attempt: 0 };
        bridge.kv.set(&key.encode(), &pending_value(delivery, &record.line))?;
        // A hint for late, older deliveries; pending versions themselves decide at flush time.
        if latest.is_none_or(|l| l < modified) {
            store.put_json(&latest_key(object_type, &record.object_id), &modified)?;
        }
        outcome.accepted += 1;
    }
    Ok(outcome)
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
    if let Some(layout) = settings::compact_layout(bridge.config) {
        return compact::run(bridge, layout, force, max_files);
    }
    let mut report = FlushReport { scanned: true, ..Default::default() };
    let mut keys = bridge.kv.keys()?;
    if keys.iter().any(|k| compact::is_compact_key(k)) {
        // kv_max_keys was unset: bring records kept in the compact layout back to a key each.
        compact::migrate_to_per_version(bridge, &keys, &mut report)?;
        keys = bridge.kv.keys()?;
    }
    let mut pending: Vec<PendingKey> = keys.iter().filter_map(|k| PendingKey::decode(k)).collect();
    let inflight: Vec<String> = keys.iter().filter_map(|k| k.strip_prefix(INFLIGHT_PREFIX)).map(str::to_owned).collect();
    drop(keys);
    let limits = settings::flush_limits(bridge.config);
    let now = bridge.clock.now().unix_timestamp();

    if let Some(until) = blocked_until(bridge, now)? {
        report.throttled_until = Some(until);
        report.note = Some(format!("Gong calls are paused until {until} (Unix time); records stay buffered and go then"));
    } else if !pending.is_empty() {
        flush_due(bridge, &mut pending, limits, force, now, max_files, &mut report)?;
    }
    if report.throttled_until.is_none() {
        poll_inflight(bridge, &inflight, &mut report)?;
    }
    report.pending = json!(buffer::summarize(&pending)
        .into_iter()
        .map(|(t, s)| (t.as_str().to_owned(), json!({"records": s.records, "versions": s.versions, "bytes": s.bytes, "oldestReceived": s.oldest_received})))
        .collect::<serde_json::Map<_, _>>());
    Ok(report)
}

/// Until when (Unix seconds, rounded up) Gong may not be called, if it may not be called at `now`.
fn blocked_until(bridge: &Bridge, now: i64) -> Result<Option<i64>, ApiError> {
    let state: QuotaState = bridge.store().get_json(crate::app::QUOTA_KEY)?.unwrap_or_default();
    Ok((state.blocked_until_ms > now * 1000).then_some((state.blocked_until_ms + 999).div_euclid(1000)))
}

fn flush_due(
    bridge: &Bridge,
    pending: &mut Vec<PendingKey>,
    limits: buffer::FlushLimits,
    force: bool,
    now: i64,
    max_files: usize,
    report: &mut FlushReport,
) -> Result<(), ApiError> {
    let summaries = buffer::summarize(pending);
    let due: Vec<ObjectType> = FLUSH_ORDER
        .into_iter()
        .filter(|t| summaries.get(t).is_some_and(|s| buffer::is_due(s, limits, force, now)))
        .collect();
    if due.is_empty() {
        return Ok(());
    }
    let Some(integration_id) = integration_for_flush(bridge, report) else { return Ok(()) };
    let settle = settings::idempotency_settle(bridge.config);
    let Some(held) = lease::acquire(bridge.kv, bridge.clock, FLUSH_LEASE, Duration::from_secs(120), settle)? else {
        report.note = Some("another replica is flushing right now".into());
        return Ok(());
    };
    let gong = bridge.gong();
    let result = (|| -> Result<(), ApiError> {
        let gong = gong?;
        for object_type in due {
            // Several files while the type stays due (e.g. far more than batch_max_records).
            loop {
                if report.files.len() >= max_files {
                    return Ok(());
                }
                let summary = buffer::summarize(pending).remove(&object_type).unwrap_or_default();
                if !buffer::is_due(&summary, limits, force, now) {
                    break;
                }
                let chosen = buffer::select_for_file(pending, object_type, limits);
                if chosen.is_empty() {
                    break;
                }
                match flush_file(bridge, &gong, integration_id, object_type, &chosen) {
                    Ok(file) => {
                        report.files.push(file);
                        pending.retain(|k| !chosen.contains(k));
                    }
                    Err(e) => return report_flush_failure(bridge, object_type, e, now, report),
                }
            }
        }
        Ok(())
    })();
    lease::release(bridge.kv, held);
    result
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
        }
    }
    Ok(())
}

/// Sends one file. Its pending versions are deleted only after Gong's 201.
fn flush_file(bridge: &Bridge, gong: &crate::gong::client::GongClient, integration_id: i64, object_type: ObjectType, chosen: &[PendingKey]) -> Result<Value, ApiError> {
    let mut records = Vec::with_capacity(chosen.len());
    let mut deliveries = Vec::new();
    let mut attempt = 0;
    for key in chosen {
        // A version deleted meanwhile (another flush) is simply not in this file.
        let Some(value) = bridge.kv.get(&key.encode())? else { continue };
        let Ok(modified) = time::OffsetDateTime::from_unix_timestamp(key.modified) else { continue };
        attempt = attempt.max(key.attempt);
        let (delivery, line) = split_pending_value(&value);
        // The request record lists the deliveries behind its file (capped: it must stay small).
        if !delivery.is_empty() && deliveries.len() < MAX_DELIVERIES_LISTED {
            deliveries.push(delivery.to_owned());
        }
        records.push(ValidRecord { object_id: key.object_id.clone(), modified, line: line.to_vec() });
    }
    let Some(sent) = send_file(bridge, gong, integration_id, object_type, records, deliveries, attempt)? else {
        return Ok(json!({"objectType": object_type, "records": 0}));
    };
    for key in chosen {
        // A failed delete only means the version is sent again later: duplicate, not lost.
        if let Err(e) = bridge.kv.delete(&key.encode()) {
            eprintln!("gong-crm-bridge: sent version left in the buffer ({e}); it will be sent again");
        }
    }
    Ok(sent.report(object_type))
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

fn poll_inflight(bridge: &Bridge, inflight: &[String], report: &mut FlushReport) -> Result<(), ApiError> {
    let store = bridge.store();
    for client_request_id in inflight.iter().take(POLLS_PER_REQUEST) {
        let Some(marker) = store.get_json::<InFlight>(&inflight_key(client_request_id))? else { continue };
        let mut record = match requests::load(bridge, client_request_id) {
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
        if !record.status.is_final() {
            match requests::poll(bridge, &mut record) {
                Ok(()) => report.polled += 1,
                Err(ApiError::Throttled { retry_after, .. }) => {
                    report.throttled_until = Some(bridge.clock.now().unix_timestamp() + retry_after as i64);
                    return Ok(());
                }
                Err(e) => {
                    eprintln!("gong-crm-bridge: polling {client_request_id}: {e}");
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
            for error in &record.errors {
                let Some(line) = usize::try_from(error.line - 1).ok().and_then(|i| lines.get(i)) else { continue };
                let Some((object_id, modified)) = identify(line) else { continue };
                failures.push(failure(line, object_id, modified, error.description.clone()));
            }
        }
        report.requeued += requeue.len();
        report.failures_added += failures.len();
        match settings::compact_layout(bridge.config) {
            Some(layout) => {
                compact::requeue(bridge, layout, marker.object_type, requeue)?;
                compact::add_failures(bridge, layout, failures)?;
            }
            None => {
                let now_unix = bridge.clock.now().unix_timestamp();
                for r in requeue {
                    let key = PendingKey { object_type: marker.object_type, object_id: r.object_id, modified: r.modified, received: now_unix, bytes: r.line.len(), attempt: r.attempt };
                    bridge.kv.set(&key.encode(), &pending_value("", &r.line))?;
                }
                for f in failures {
                    bridge.store().put_json(&failure_key(f.object_type, &f.object_id), &f)?;
                }
            }
        }
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
    if let Some(layout) = settings::compact_layout(bridge.config) {
        return compact::list_failures(bridge, layout, object_type, limit);
    }
    let prefix = match object_type {
        Some(t) => format!("{FAILURE_PREFIX}{}/", t.as_str()),
        None => FAILURE_PREFIX.to_owned(),
    };
    let mut keys: Vec<String> = bridge.kv.keys()?.into_iter().filter(|k| k.starts_with(&prefix)).collect();
    keys.sort();
    let total = keys.len();
    let mut out = Vec::new();
    for key in keys.iter().take(limit) {
        if let Some(f) = bridge.store().get_json::<Failure>(key)? {
            out.push(f);
        }
    }
    Ok((out, total))
}

/// Puts failures back into the buffer (all, one type, or some ids of one type).
pub fn retry_failures(bridge: &Bridge, object_type: Option<ObjectType>, ids: Option<&[String]>) -> Result<usize, ApiError> {
    if let Some(layout) = settings::compact_layout(bridge.config) {
        return compact::retry_failures(bridge, layout, object_type, ids);
    }
    let (failures, _) = list_failures(bridge, object_type, usize::MAX)?;
    let now = bridge.clock.now().unix_timestamp();
    let mut requeued = 0;
    for f in failures.into_iter().filter(|f| ids.is_none_or(|ids| ids.contains(&f.object_id))) {
        let key = PendingKey { object_type: f.object_type, object_id: f.object_id.clone(), modified: f.modified, received: now, bytes: f.line.len(), attempt: 0 };
        // Pending first, then the failure entry goes: a crash between leaves both, never neither.
        bridge.kv.set(&key.encode(), &pending_value("", f.line.as_bytes()))?;
        bridge.kv.delete(&failure_key(f.object_type, &f.object_id))?;
        requeued += 1;
    }
    Ok(requeued)
}

/// Pending versions of one record (for "where is my record").
pub fn pending_versions(bridge: &Bridge, object_type: ObjectType, object_id: &str) -> Result<Vec<PendingKey>, ApiError> {
    if let Some(layout) = settings::compact_layout(bridge.config) {
        return compact::pending_versions(bridge, layout, object_type, object_id);
    }
    let prefix = PendingKey::record_prefix(object_type, object_id);
    Ok(bridge
        .kv
        .keys()?
        .iter()
        .filter(|k| k.starts_with(&prefix))
        .filter_map(|k| PendingKey::decode(k))
        .filter(|k| k.object_id == object_id)
        .collect())
}

/// The failure stored for one record, if any.
pub fn find_failure(bridge: &Bridge, object_type: ObjectType, object_id: &str) -> Result<Option<Failure>, ApiError> {
    match settings::compact_layout(bridge.config) {
        Some(layout) => compact::find_failure(bridge, layout, object_type, object_id),
        None => bridge.store().get_json(&failure_key(object_type, object_id)),
    }
}

/// Removes one failure explicitly; `false` when there was none.
pub fn discard_failure(bridge: &Bridge, object_type: ObjectType, object_id: &str) -> Result<bool, ApiError> {
    if let Some(layout) = settings::compact_layout(bridge.config) {
        return compact::discard_failure(bridge, layout, object_type, object_id);
    }
    let key = failure_key(object_type, object_id);
    if bridge.kv.get(&key)?.is_none() {
        return Ok(false);
    }
    bridge.kv.delete(&key)?;
    Ok(true)
}

/// In the compact layout, the file and line that last carried a record to Gong (the
/// per-record index of the other layout would cost a key per record).
pub fn sent_entry(bridge: &Bridge, object_type: ObjectType, object_id: &str) -> Result<Option<requests::RecordIndexEntry>, ApiError> {
    match settings::compact_layout(bridge.config) {
        Some(layout) => compact::sent_entry(bridge, layout, object_type, object_id),
        None => Ok(None),
    }
}

pub fn is_pending_key(key: &str) -> bool {
    key.starts_with(PENDING_PREFIX)
}
