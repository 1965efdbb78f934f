//! The buffer and the failure store in the compact layout (`kv_max_keys` set): the same
//! lifecycle as the per-version layout of `super`, over the shard keys of `crate::compact`.
//!
//! Who writes what, which is the whole argument for "no update lost" on a last-write-wins
//! store: webhooks write only inbox keys of their own (never read-modify-write); every shard
//! and the summary are read-modified-written only while holding the flush lease, and an inbox
//! key is deleted only after its records were read back from the shard they went to.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use super::{
    blocked_until, integration_for_flush, poll_inflight, report_flush_failure, send_file, Buffered, Failure, FlushReport, Requeue, FLUSH_LEASE, INFLIGHT_PREFIX,
    MAX_DELIVERIES_LISTED,
};
use crate::app::Bridge;
use crate::buffer::{self, PendingKey, FLUSH_ORDER};
use crate::compact::{
    self, failure_shard_key, inbox_entries, inbox_key, pending_shard_key, read_map, shard_of, write_map, InboxEntry, InboxRecord, Layout, Merge, Sent,
    Shard, Slot, Summary, FAILURE_SHARD_PREFIX, INBOX_PREFIX, PENDING_SHARD_PREFIX, SHARD_BUDGET_BYTES, SUMMARY_KEY,
};
use crate::gong::models::ObjectType;
use crate::idempotency::lease;
use crate::problem::ApiError;
use crate::routes::requests::{self, RecordIndexEntry, PAYLOAD};
use crate::settings;
use crate::tracking::{RequestRecord, TrackedStatus};
use crate::validation::{self, ValidRecord};

/// Inbox values one compaction loads at most (keys, and bytes), so one request stays bounded.
const COMPACT_MAX_KEYS: usize = 4_000;
const COMPACT_MAX_BYTES: usize = 32 * 1024 * 1024;
/// How long the flush lease lasts: a replica that dies holding it (a crash, SIGKILL) blocks
/// flushing for at most this long.
const LEASE_SECONDS: u64 = 30;
/// A run stops sending files after this long, well inside the lease, so that the lease cannot
/// expire under a holder still writing shards (runs after an answer stop sooner, at the work
/// budget).
const RUN_SECONDS: i64 = 15;

// ----- the lease -----------------------------------------------------------------------------

fn take_lease(bridge: &Bridge) -> Result<Option<lease::Lease>, ApiError> {
    lease::acquire(bridge.kv, bridge.clock, FLUSH_LEASE, Duration::from_secs(LEASE_SECONDS), settings::idempotency_settle(bridge.config))
}

/// Runs `work` under the flush lease; a busy lease is a 409 asking to retry shortly.
fn under_lease<T>(bridge: &Bridge, work: impl FnOnce() -> Result<T, ApiError>) -> Result<T, ApiError> {
    let Some(held) = take_lease(bridge)? else {
        return Err(ApiError::InProgress { detail: "a flush is running right now; retry in a moment".into(), retry_after: 2 });
    };
    let result = work();
    lease::release(bridge.kv, held);
    result
}

// ----- the summary ---------------------------------------------------------------------------

fn read_summary(bridge: &Bridge) -> Result<Summary, ApiError> {
    match bridge.kv.get(SUMMARY_KEY)? {
        None => Ok(Summary::new()),
        // A hint only: an unreadable one is rebuilt from the shards.
        Some(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
    }
}

fn write_summary(bridge: &Bridge, summary: &Summary) -> Result<(), ApiError> {
    bridge.store().put_json(SUMMARY_KEY, summary)
}

fn set_stat(summary: &mut Summary, object_type: ObjectType, n: u32, shard: &Shard) {
    let stat = compact::stat(shard);
    let per_type = summary.entry(object_type.as_str().to_owned()).or_default();
    if stat.records == 0 {
        per_type.remove(&n);
    } else {
        per_type.insert(n, stat);
    }
    if per_type.is_empty() {
        summary.remove(object_type.as_str());
    }
}

fn pending_report(summary: &Summary) -> serde_json::Value {
    json!(summary
        .iter()
        .map(|(t, stats)| {
            let s = compact::type_summary(stats);
            (t.clone(), json!({"records": s.records, "versions": s.versions, "bytes": s.bytes, "oldestReceived": s.oldest_received}))
        })
        .collect::<serde_json::Map<_, _>>())
}

// ----- merging into the pending shards ---------------------------------------------------------

struct Incoming {
    object_id: String,
    slot: Slot,
    requeue: bool,
    /// The caller's label (e.g. which inbox key brought it).
    tag: usize,
}

struct Merged {
    tag: usize,
    outcome: Merge,
    /// Read back from the shard after the write: the shard holds this version or a newer one.
    confirmed: bool,
}

/// Merges versions into a type's pending shards (the caller holds the flush lease). A version
/// that does not fit its shard's budget is left unconfirmed (its source keeps it).
fn merge_into_pending(bridge: &Bridge, layout: Layout, object_type: ObjectType, incoming: Vec<Incoming>) -> Result<Vec<Merged>, ApiError> {
    let now = bridge.clock.now().unix_timestamp();
    let keep = settings::idempotency_ttl(bridge.config).as_secs() as i64;
    let mut by_shard: BTreeMap<u32, Vec<Incoming>> = BTreeMap::new();
    for item in incoming {
        by_shard.entry(shard_of(&item.object_id, layout.pending_shards)).or_default().push(item);
    }
    let mut out = Vec::new();
    let mut written = Vec::new();
    for (n, items) in by_shard {
        let key = pending_shard_key(object_type, n);
        let mut shard: Shard = read_map(bridge.kv, &key)?;
        let mut size = compact::prune(&mut shard, now, keep, SHARD_BUDGET_BYTES);
        let mut expected = Vec::with_capacity(items.len());
        for item in items {
            let bytes = item.slot.estimated_bytes(&item.object_id);
            if size + bytes > SHARD_BUDGET_BYTES && shard.get(&item.object_id).is_none_or(|s| s.modified <= item.slot.modified) {
                out.push(Merged { tag: item.tag, outcome: Merge::Added, confirmed: false });
                continue;
            }
            let (modified, requeue) = (item.slot.modified, item.requeue);
            let outcome = compact::merge(&mut shard, &item.object_id, item.slot, item.requeue);
            if matches!(outcome, Merge::Added | Merge::Replaced) {
                size += bytes;
            }
            expected.push((item.tag, item.object_id, modified, requeue, outcome));
        }
        write_map(bridge.kv, &key, &shard)?;
        written.push((n, key, expected));
    }
    // Read back after the settle time: a writer that read a shard before our write and writes
    // it after would have to take longer than `settle` between its read and its write (the
    // same assumption as the lease and idempotency claims). So even if two replicas held the
    // lease at once, an overwritten version shows up here as unconfirmed and keeps its source.
    settle(bridge);
    let mut summary = read_summary(bridge)?;
    for (n, key, expected) in written {
        let stored: Shard = read_map(bridge.kv, &key)?;
        for (tag, object_id, modified, requeue, outcome) in expected {
            let confirmed = stored.get(&object_id).is_some_and(|s| {
                // A re-queued version must be pending again, not just known to have been sent.
                s.modified > modified || (s.modified == modified && (s.is_pending() || !requeue))
            });
            out.push(Merged { tag, outcome, confirmed });
        }
        set_stat(&mut summary, object_type, n, &stored);
    }
    write_summary(bridge, &summary)?;
    Ok(out)
}

fn settle(bridge: &Bridge) {
    let settle = settings::idempotency_settle(bridge.config);
    if !settle.is_zero() {
        bridge.clock.sleep(settle);
    }
}

// ----- webhooks: the inbox -------------------------------------------------------------------

/// Stores a delivery's validated records in inbox keys of its own; 202 follows. Refused (503)
/// while the store is near its key cap, so that nothing is accepted that cannot be kept.
pub fn buffer_records(bridge: &Bridge, layout: Layout, object_type: ObjectType, records: Vec<ValidRecord>, delivery: &str) -> Result<Buffered, ApiError> {
    let now = bridge.clock.now().unix_timestamp();
    let count = records.len();
    let mut inbox_records = Vec::with_capacity(count);
    for r in records {
        inbox_records.push(InboxRecord { m: r.modified.unix_timestamp(), l: compact::raw_line(&r.line)?, id: r.object_id });
    }
    let entries = inbox_entries(object_type, delivery, now, inbox_records);
    let keys = bridge.kv.keys()?;
    let mut in_store = keys.len();
    let inbox_before = keys.iter().filter(|k| k.starts_with(INBOX_PREFIX)).count();
    drop(keys);
    if in_store + entries.len() >= layout.admit_below {
        // Make room first: compacting the inbox frees a key per delivery.
        if let Err(e) = compact_now(bridge, layout) {
            eprintln!("gong-crm-bridge: compaction to make room: {e}");
        }
        in_store = bridge.kv.keys()?.len();
        if in_store + entries.len() >= layout.admit_below {
            return Err(ApiError::StoreFull {
                detail: format!(
                    "the store holds {in_store} keys and kv_max_keys is {}: nothing was accepted; the bridge is flushing to make room, re-deliver later",
                    layout.max_keys
                ),
                retry_after: 30,
            });
        }
    }
    let written = entries.len();
    for entry in entries {
        let bytes = serde_json::to_vec(&entry).map_err(|e| ApiError::Internal(e.to_string()))?;
        bridge.kv.set(&inbox_key(object_type, now, &uuid::Uuid::new_v4().simple().to_string()), &bytes)?;
    }
    // Accepted already; compacting is housekeeping, done after the answer.
    Ok(Buffered { accepted: count, superseded: 0, compact_inbox: inbox_before + written >= layout.inbox_compact_at })
}

/// Compacts the inbox if no other replica holds the flush lease.
pub(super) fn compact_now(bridge: &Bridge, layout: Layout) -> Result<(), ApiError> {
    let Some(held) = take_lease(bridge)? else { return Ok(()) };
    let result = (|| {
        let inbox: Vec<String> = bridge.kv.keys()?.into_iter().filter(|k| k.starts_with(INBOX_PREFIX)).collect();
        compact_inbox(bridge, layout, inbox, &mut FlushReport::default())
    })();
    lease::release(bridge.kv, held);
    result
}

/// The received time in an inbox key name, for oldest-first order.
fn inbox_received(key: &str) -> &str {
    key.strip_prefix(INBOX_PREFIX).and_then(|rest| rest.split('/').nth(1)).unwrap_or("")
}

/// Moves inbox records into the pending shards (caller holds the lease). An inbox key goes
/// only when every record in it is confirmed in its shard.
fn compact_inbox(bridge: &Bridge, layout: Layout, mut inbox: Vec<String>, report: &mut FlushReport) -> Result<(), ApiError> {
    inbox.sort_by(|a, b| inbox_received(a).cmp(inbox_received(b)).then(a.cmp(b)));
    let mut loaded: Vec<(String, InboxEntry)> = Vec::new();
    let mut bytes = 0;
    for key in inbox.into_iter().take(COMPACT_MAX_KEYS) {
        if bytes >= COMPACT_MAX_BYTES {
            break;
        }
        let Some(value) = bridge.kv.get(&key)? else { continue };
        bytes += value.len();
        match serde_json::from_slice::<InboxEntry>(&value) {
            Ok(entry) => loaded.push((key, entry)),
            // Left in place (and logged): it is the bridge's own write, so this means damage.
            Err(e) => eprintln!("gong-crm-bridge: inbox value {key} is unreadable ({e}); left in place"),
        }
    }
    let mut complete = vec![true; loaded.len()];
    let mut per_type: BTreeMap<ObjectType, Vec<Incoming>> = BTreeMap::new();
    for (tag, (_, entry)) in loaded.iter_mut().enumerate() {
        for r in std::mem::take(&mut entry.records) {
            per_type.entry(entry.t).or_default().push(Incoming {
                object_id: r.id,
                slot: Slot::pending(r.m, entry.r, 0, &entry.d, r.l),
                requeue: false,
                tag,
            });
        }
    }
    let (mut compacted, mut superseded) = (0, 0);
    for (object_type, incoming) in per_type {
        for merged in merge_into_pending(bridge, layout, object_type, incoming)? {
            if !merged.confirmed {
                complete[merged.tag] = false;
            } else if merged.outcome == Merge::Superseded {
                superseded += 1;
            } else {
                compacted += 1;
            }
        }
        // This type's inbox keys go before the next type's shards are created, so the store
        // needs room for at most one type's new shards at a time (see `Layout::admit_below`).
        for ((key, entry), done) in loaded.iter().zip(&complete) {
            if *done && entry.t == object_type {
                // A failed delete leaves records that merge again as duplicates: nothing lost.
                if let Err(e) = bridge.kv.delete(key) {
                    eprintln!("gong-crm-bridge: compacted inbox key {key} left in place: {e}");
                }
            }
        }
    }
    report.compacted = Some(report.compacted.unwrap_or(0) + compacted);
    report.superseded = Some(report.superseded.unwrap_or(0) + superseded);
    Ok(())
}

// ----- flushing --------------------------------------------------------------------------------

pub fn run(bridge: &Bridge, layout: Layout, force: bool, max_files: usize) -> Result<FlushReport, ApiError> {
    let mut report = FlushReport { scanned: true, ..Default::default() };
    let keys = bridge.kv.keys()?;
    let inbox: Vec<String> = keys.iter().filter(|k| k.starts_with(INBOX_PREFIX)).cloned().collect();
    let shards: Vec<(ObjectType, u32)> = keys.iter().filter_map(|k| compact::parse_shard_key(k, PENDING_SHARD_PREFIX)).collect();
    let inflight: Vec<String> = keys.iter().filter_map(|k| k.strip_prefix(INFLIGHT_PREFIX)).map(str::to_owned).collect();
    let requests_kept = keys.iter().filter(|k| k.starts_with("request/")).count();
    drop(keys);
    let limits = settings::flush_limits(bridge.config);
    let now = bridge.clock.now().unix_timestamp();
    let blocked = blocked_until(bridge, now)?;
    let summary = read_summary(bridge)?;
    let known = |t: ObjectType, n: u32| summary.get(t.as_str()).is_some_and(|s| s.contains_key(&n));
    let unknown: Vec<(ObjectType, u32)> = shards.iter().copied().filter(|(t, n)| !known(*t, *n)).collect();
    let stale = summary.iter().any(|(t, stats)| stats.keys().any(|n| !shards.iter().any(|(st, sn)| st.as_str() == t && sn == n)));
    let due = due_types(&summary, limits, force, now);
    let needs_lease = !inbox.is_empty() || !unknown.is_empty() || stale || (blocked.is_none() && (!due.is_empty() || !inflight.is_empty()));

    if needs_lease {
        match take_lease(bridge)? {
            None => report.note = Some("another replica is flushing right now".into()),
            Some(held) => {
                let result = (|| -> Result<(), ApiError> {
                    if !unknown.is_empty() || stale {
                        reconcile(bridge, &shards, &unknown)?;
                    }
                    // A store failure here leaves records in the inbox; what the shards hold
                    // can still go.
                    if let Err(e) = compact_inbox(bridge, layout, inbox, &mut report) {
                        report.note = Some(format!("compacting the inbox failed, its records stay there: {e}"));
                        report.failed = Some(format!("compacting the inbox: {e}"));
                    }
                    if let Some(until) = blocked {
                        report.throttled_until = Some(until);
                        report.note = Some(format!("Gong calls are paused until {until} (Unix time); records stay buffered and go then"));
                        return Ok(());
                    }
                    flush_due(bridge, limits, force, now, max_files, &mut report)?;
                    if report.throttled_until.is_none() {
                        poll_inflight(bridge, &inflight, &mut report)?;
                    }
                    Ok(())
                })();
                lease::release(bridge.kv, held);
                result?;
            }
        }
    } else if let Some(until) = blocked {
        report.throttled_until = Some(until);
        report.note = Some(format!("Gong calls are paused until {until} (Unix time); records stay buffered and go then"));
    }
    // Housekeeping that keeps the key count bounded: expired idempotency keys, old requests.
    if let Err(e) = bridge.idempotency().sweep() {
        eprintln!("gong-crm-bridge: idempotency sweep: {e}");
    }
    if requests_kept > layout.request_retention {
        if let Err(e) = retain_requests(bridge, layout) {
            eprintln!("gong-crm-bridge: request retention: {e}");
        }
    }
    report.pending = pending_report(&read_summary(bridge)?);
    report.inbox_keys = Some(bridge.kv.keys()?.iter().filter(|k| k.starts_with(INBOX_PREFIX)).count());
    Ok(report)
}

fn due_types(summary: &Summary, limits: buffer::FlushLimits, force: bool, now: i64) -> Vec<ObjectType> {
    FLUSH_ORDER
        .into_iter()
        .filter(|t| {
            summary.get(t.as_str()).is_some_and(|stats| {
                let s = compact::type_summary(stats);
                buffer::is_due(&s, limits, force, now)
            })
        })
        .collect()
}

/// Brings the summary in line with the shards that exist (a crash between a shard write and
/// the summary write, or a damaged summary).
fn reconcile(bridge: &Bridge, shards: &[(ObjectType, u32)], unknown: &[(ObjectType, u32)]) -> Result<(), ApiError> {
    let mut summary = read_summary(bridge)?;
    summary.retain(|t, stats| {
        stats.retain(|n, _| shards.iter().any(|(st, sn)| st.as_str() == t && sn == n));
        !stats.is_empty()
    });
    for (object_type, n) in unknown {
        let shard: Shard = read_map(bridge.kv, &pending_shard_key(*object_type, *n))?;
        set_stat(&mut summary, *object_type, *n, &shard);
    }
    write_summary(bridge, &summary)
}

fn flush_due(bridge: &Bridge, limits: buffer::FlushLimits, force: bool, now: i64, max_files: usize, report: &mut FlushReport) -> Result<(), ApiError> {
    let due = due_types(&read_summary(bridge)?, limits, force, now);
    if due.is_empty() {
        return Ok(());
    }
    let Some(integration_id) = integration_for_flush(bridge, report) else { return Ok(()) };
    let gong = bridge.gong()?;
    for object_type in due {
        loop {
            if report.files.len() >= max_files {
                return Ok(());
            }
            if bridge.clock.now().unix_timestamp() - now >= RUN_SECONDS {
                report.note = Some(format!("stopped after {RUN_SECONDS} s; the rest goes with the next flush"));
                return Ok(());
            }
            let summary = read_summary(bridge)?;
            let Some(stats) = summary.get(object_type.as_str()) else { break };
            let s = compact::type_summary(stats);
            if !buffer::is_due(&s, limits, force, now) {
                break;
            }
            // Oldest shards first; within a shard, oldest records first.
            let mut order: Vec<(i64, u32)> = stats.iter().map(|(n, st)| (st.oldest.unwrap_or(i64::MAX), *n)).collect();
            order.sort();
            let chosen = choose(bridge, object_type, &order, limits)?;
            if chosen.is_empty() {
                // The summary promised records the shards do not hold: rebuild it.
                let shards: Vec<(ObjectType, u32)> = order.iter().map(|(_, n)| (object_type, *n)).collect();
                reconcile(bridge, &shards, &shards)?;
                break;
            }
            match flush_chosen(bridge, &gong, integration_id, object_type, chosen) {
                Ok(file) => report.files.push(file),
                Err(e) => return report_flush_failure(bridge, object_type, e, now, report),
            }
        }
    }
    Ok(())
}

/// A pending record picked for a file.
struct Chosen {
    shard: u32,
    object_id: String,
    slot: Slot,
}

fn choose(bridge: &Bridge, object_type: ObjectType, order: &[(i64, u32)], limits: buffer::FlushLimits) -> Result<Vec<Chosen>, ApiError> {
    let mut chosen = Vec::new();
    let mut bytes = 0usize;
    for (_, n) in order {
        let shard: Shard = read_map(bridge.kv, &pending_shard_key(object_type, *n))?;
        let mut waiting: Vec<(String, Slot)> = shard.into_iter().filter(|(_, s)| s.is_pending()).collect();
        waiting.sort_by_key(|(_, s)| s.received);
        for (object_id, slot) in waiting {
            let len = slot.line.as_ref().map_or(0, |l| l.get().len()) + 1;
            if chosen.len() >= limits.max_records || (!chosen.is_empty() && bytes + len > limits.max_bytes) {
                return Ok(chosen);
            }
            bytes += len;
            chosen.push(Chosen { shard: *n, object_id, slot });
        }
    }
    Ok(chosen)
}

/// Sends the chosen records as one file; after Gong's 201 each is marked sent in its shard
/// (unless a newer version took its place meanwhile).
fn flush_chosen(bridge: &Bridge, gong: &crate::gong::client::GongClient, integration_id: i64, object_type: ObjectType, chosen: Vec<Chosen>) -> Result<serde_json::Value, ApiError> {
    let mut records = Vec::with_capacity(chosen.len());
    let mut deliveries = Vec::new();
    let mut attempt = 0;
    let mut sent_versions: BTreeMap<u32, Vec<(String, i64)>> = BTreeMap::new();
    for c in chosen {
        let (Some(line), Ok(modified)) = (c.slot.line, time::OffsetDateTime::from_unix_timestamp(c.slot.modified)) else { continue };
        attempt = attempt.max(c.slot.attempt);
        if !c.slot.delivery.is_empty() && deliveries.len() < MAX_DELIVERIES_LISTED {
            deliveries.push(c.slot.delivery);
        }
        sent_versions.entry(c.shard).or_default().push((c.object_id.clone(), c.slot.modified));
        records.push(ValidRecord { object_id: c.object_id, modified, line: line.get().as_bytes().to_vec() });
    }
    let Some(sent) = send_file(bridge, gong, integration_id, object_type, records, deliveries, attempt)? else {
        return Ok(json!({"objectType": object_type, "records": 0}));
    };
    let line_of: BTreeMap<&str, usize> = sent.line_ids.iter().enumerate().map(|(i, id)| (id.as_str(), i + 1)).collect();
    let at = bridge.clock.now().unix_timestamp();
    let mut summary = read_summary(bridge)?;
    for (n, versions) in sent_versions {
        let key = pending_shard_key(object_type, n);
        let marked = (|| -> Result<Shard, ApiError> {
            let mut shard: Shard = read_map(bridge.kv, &key)?;
            for (object_id, modified) in versions {
                let line = line_of.get(object_id.as_str()).copied().unwrap_or(0);
                compact::mark_sent(&mut shard, &object_id, modified, Sent { at, c: sent.client_request_id.clone(), n: line });
            }
            write_map(bridge.kv, &key, &shard)?;
            Ok(shard)
        })();
        match marked {
            Ok(shard) => set_stat(&mut summary, object_type, n, &shard),
            // The versions stay pending and are sent again later: a duplicate, never a loss.
            Err(e) => eprintln!("gong-crm-bridge: sent records left pending in {key} ({e}); they will be sent again"),
        }
    }
    write_summary(bridge, &summary)?;
    Ok(sent.report(object_type))
}

// ----- after Gong's final status ---------------------------------------------------------------

/// Puts records of a failed file back to pending (caller holds the lease). Any record that
/// cannot be confirmed fails the call, so the file stays in flight and the step repeats.
pub(super) fn requeue(bridge: &Bridge, layout: Layout, object_type: ObjectType, items: Vec<Requeue>) -> Result<(), ApiError> {
    if items.is_empty() {
        return Ok(());
    }
    let now = bridge.clock.now().unix_timestamp();
    let mut incoming = Vec::with_capacity(items.len());
    for (tag, r) in items.into_iter().enumerate() {
        incoming.push(Incoming { object_id: r.object_id, slot: Slot::pending(r.modified, now, r.attempt, "", compact::raw_line(&r.line)?), requeue: true, tag });
    }
    let merged = merge_into_pending(bridge, layout, object_type, incoming)?;
    let unconfirmed = merged.iter().filter(|m| !m.confirmed).count();
    if unconfirmed > 0 {
        return Err(ApiError::StoreFull { detail: format!("{unconfirmed} re-queued {object_type} records do not fit the pending shards yet"), retry_after: 60 });
    }
    Ok(())
}

/// Writes failures into the failure shards (caller holds the lease), and confirms them by
/// reading back after the settle time; an unconfirmed one fails the call, so the file stays in
/// flight and the step repeats.
pub(super) fn add_failures(bridge: &Bridge, layout: Layout, failures: Vec<Failure>) -> Result<(), ApiError> {
    if failures.is_empty() {
        return Ok(());
    }
    let mut by_key: BTreeMap<String, Vec<Failure>> = BTreeMap::new();
    for f in failures {
        by_key.entry(failure_shard_key(f.object_type, shard_of(&f.object_id, layout.failure_shards))).or_default().push(f);
    }
    let mut expected = Vec::new();
    for (key, failures) in by_key {
        let mut shard: BTreeMap<String, Failure> = read_map(bridge.kv, &key)?;
        let ids: Vec<(String, i64)> = failures.iter().map(|f| (f.object_id.clone(), f.modified)).collect();
        for f in failures {
            // A failure of a newer version of the record is not replaced by an older one.
            if shard.get(&f.object_id).is_none_or(|held| held.modified <= f.modified) {
                shard.insert(f.object_id.clone(), f);
            }
        }
        write_map(bridge.kv, &key, &shard)?;
        expected.push((key, ids));
    }
    settle(bridge);
    for (key, ids) in expected {
        let stored: BTreeMap<String, Failure> = read_map(bridge.kv, &key)?;
        let lost = ids.iter().filter(|(id, modified)| stored.get(id).is_none_or(|f| f.modified < *modified)).count();
        if lost > 0 {
            return Err(ApiError::Conflict(format!("{lost} failures were overwritten in {key} by a concurrent writer; the step repeats")));
        }
    }
    Ok(())
}

// ----- the failure store -----------------------------------------------------------------------

fn failure_shard_keys(bridge: &Bridge, object_type: Option<ObjectType>) -> Result<Vec<String>, ApiError> {
    let prefix = match object_type {
        Some(t) => format!("{FAILURE_SHARD_PREFIX}{}/", t.as_str()),
        None => FAILURE_SHARD_PREFIX.to_owned(),
    };
    Ok(bridge.kv.keys()?.into_iter().filter(|k| k.starts_with(&prefix)).collect())
}

pub fn list_failures(bridge: &Bridge, _layout: Layout, object_type: Option<ObjectType>, limit: usize) -> Result<(Vec<Failure>, usize), ApiError> {
    let mut all = Vec::new();
    for key in failure_shard_keys(bridge, object_type)? {
        let shard: BTreeMap<String, Failure> = read_map(bridge.kv, &key)?;
        all.extend(shard.into_values());
    }
    all.sort_by(|a, b| (a.object_type.as_str(), &a.object_id).cmp(&(b.object_type.as_str(), &b.object_id)));
    let total = all.len();
    all.truncate(limit);
    Ok((all, total))
}

pub fn find_failure(bridge: &Bridge, layout: Layout, object_type: ObjectType, object_id: &str) -> Result<Option<Failure>, ApiError> {
    let mut shard: BTreeMap<String, Failure> = read_map(bridge.kv, &failure_shard_key(object_type, shard_of(object_id, layout.failure_shards)))?;
    Ok(shard.remove(object_id))
}

pub fn discard_failure(bridge: &Bridge, layout: Layout, object_type: ObjectType, object_id: &str) -> Result<bool, ApiError> {
    under_lease(bridge, || {
        let key = failure_shard_key(object_type, shard_of(object_id, layout.failure_shards));
        let mut shard: BTreeMap<String, Failure> = read_map(bridge.kv, &key)?;
        if shard.remove(object_id).is_none() {
            return Ok(false);
        }
        write_map(bridge.kv, &key, &shard)?;
        Ok(true)
    })
}

/// Puts failures back to pending: pending shards first, then the failure shard, so a crash in
/// between leaves a record in both, never in neither.
pub fn retry_failures(bridge: &Bridge, layout: Layout, object_type: Option<ObjectType>, ids: Option<&[String]>) -> Result<usize, ApiError> {
    under_lease(bridge, || {
        let now = bridge.clock.now().unix_timestamp();
        let mut requeued = 0;
        for key in failure_shard_keys(bridge, object_type)? {
            let Some((shard_type, _)) = compact::parse_shard_key(&key, FAILURE_SHARD_PREFIX) else { continue };
            let mut shard: BTreeMap<String, Failure> = read_map(bridge.kv, &key)?;
            let picked: Vec<String> = shard.keys().filter(|id| ids.is_none_or(|ids| ids.contains(id))).cloned().collect();
            if picked.is_empty() {
                continue;
            }
            let mut incoming = Vec::new();
            for (tag, id) in picked.iter().enumerate() {
                let f = &shard[id];
                incoming.push(Incoming { object_id: id.clone(), slot: Slot::pending(f.modified, now, 0, "", compact::raw_line(f.line.as_bytes())?), requeue: true, tag });
            }
            for merged in merge_into_pending(bridge, layout, shard_type, incoming)? {
                if merged.confirmed {
                    shard.remove(&picked[merged.tag]);
                    requeued += 1;
                }
            }
            write_map(bridge.kv, &key, &shard)?;
        }
        Ok(requeued)
    })
}

// ----- where is my record ----------------------------------------------------------------------

fn slot_of(bridge: &Bridge, layout: Layout, object_type: ObjectType, object_id: &str) -> Result<Option<Slot>, ApiError> {
    let mut shard: Shard = read_map(bridge.kv, &pending_shard_key(object_type, shard_of(object_id, layout.pending_shards)))?;
    Ok(shard.remove(object_id))
}

/// The record's pending version in its shard, and any versions still in the inbox.
pub fn pending_versions(bridge: &Bridge, layout: Layout, object_type: ObjectType, object_id: &str) -> Result<Vec<PendingKey>, ApiError> {
    let mut out = Vec::new();
    let key = |slot: &Slot| PendingKey {
        object_type,
        object_id: object_id.to_owned(),
        modified: slot.modified,
        received: slot.received,
        bytes: slot.line.as_ref().map_or(0, |l| l.get().len()),
        attempt: slot.attempt,
    };
    let held = slot_of(bridge, layout, object_type, object_id)?;
    if let Some(slot) = held.as_ref().filter(|s| s.is_pending()) {
        out.push(key(slot));
    }
    let prefix = format!("{INBOX_PREFIX}{}/", object_type.as_str());
    for inbox in bridge.kv.keys()?.into_iter().filter(|k| k.starts_with(&prefix)) {
        let Some(value) = bridge.kv.get(&inbox)? else { continue };
        let Ok(entry) = serde_json::from_slice::<InboxEntry>(&value) else { continue };
        for r in entry.records.iter().filter(|r| r.id == object_id) {
            // Not yet compacted; an older version than the one held will be kept out.
            if held.as_ref().is_none_or(|h| r.m > h.modified || (r.m == h.modified && h.is_pending())) {
                out.push(PendingKey { object_type, object_id: object_id.to_owned(), modified: r.m, received: entry.r, bytes: r.l.get().len(), attempt: 0 });
            }
        }
    }
    // A version delivered several times is one version (compaction merges the copies).
    out.sort_by_key(|k| (k.modified, k.received));
    out.dedup_by_key(|k| k.modified);
    Ok(out)
}

/// The modifiedDate (Unix seconds) of the version last sent to Gong, from its tombstone.
pub fn sent_version(bridge: &Bridge, layout: Layout, object_type: ObjectType, object_id: &str) -> Result<Option<i64>, ApiError> {
    Ok(slot_of(bridge, layout, object_type, object_id)?.filter(|slot| slot.sent.is_some()).map(|slot| slot.modified))
}

pub fn sent_entry(bridge: &Bridge, layout: Layout, object_type: ObjectType, object_id: &str) -> Result<Option<RecordIndexEntry>, ApiError> {
    Ok(slot_of(bridge, layout, object_type, object_id)?.and_then(|slot| slot.sent).map(|sent| RecordIndexEntry {
        client_request_id: sent.c,
        line: sent.n,
        at: time::OffsetDateTime::from_unix_timestamp(sent.at).map(validation::format_gong_datetime).unwrap_or_default(),
    }))
}

// ----- retention -------------------------------------------------------------------------------

/// Keeps at most `request_retention` request records: the oldest finished ones go, with their
/// line maps and index keys. Requests still in flight, or holding a file for a retry, stay.
fn retain_requests(bridge: &Bridge, layout: Layout) -> Result<usize, ApiError> {
    let keys = bridge.kv.keys()?;
    let request_keys: Vec<&String> = keys.iter().filter(|k| k.starts_with("request/")).collect();
    if request_keys.len() <= layout.request_retention {
        return Ok(0);
    }
    let mut finished: Vec<RequestRecord> = Vec::new();
    for key in &request_keys {
        let Some(record) = bridge.store().get_json::<RequestRecord>(key).ok().flatten() else { continue };
        let in_flight = keys.iter().any(|k| k.strip_prefix(INFLIGHT_PREFIX) == Some(record.client_request_id.as_str()));
        let holds_file = record.status == TrackedStatus::NotSent && !record.from_buffer;
        if (record.status.is_final() || (record.status == TrackedStatus::NotSent && record.from_buffer)) && !in_flight && !holds_file {
            finished.push(record);
        }
    }
    finished.sort_by(|a, b| a.submitted_at.cmp(&b.submitted_at));
    let target = layout.request_retention * 3 / 4;
    let excess = request_keys.len().saturating_sub(target).min(finished.len());
    let store = bridge.store();
    for record in finished.iter().take(excess) {
        let id = &record.client_request_id;
        store.delete_blob(PAYLOAD, id, record.payload_chunks)?;
        store.delete_blob(requests::LINES, id, record.line_map_chunks)?;
        let suffix = format!("/{id}");
        for index in keys.iter().filter(|k| k.starts_with("reqidx/") && k.ends_with(&suffix)) {
            store.delete(index)?;
        }
        store.delete(&crate::store::request_key(id))?;
    }
    Ok(excess)
}
