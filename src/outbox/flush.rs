//! Flushing: deciding which types are due, choosing their oldest pending records, sending
//! them as one LDJSON file per type under a tracked clientRequestId, and marking them sent.
//! Every run is bounded (files, `RUN_SECONDS`, the work budget) and renews its lease.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::due::{self, FLUSH_ORDER};
use super::lease::{self, Lease};
use super::pending::{pending_report, read_summary, set_stat, write_summary};
use super::requests::{self, submit_tracked, Submission, PAYLOAD};
use super::shards::{
    self, pending_shard_key, read_map, write_map, Sent, Shard, Slot, Summary, INBOX_PREFIX,
    PENDING_SHARD_PREFIX,
};
use super::{
    commands, failures, follow, inbox, inflight_key, retention, sent, FlushReport, InFlight,
    FLUSH_FILE_PREFIX, INFLIGHT_PREFIX, MAX_DELIVERIES_LISTED,
};
use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::gong::client::GongClient;
use crate::gong::models::ObjectType;
use crate::settings;
use crate::tracking::RequestOperation;
use crate::validation::{self, ValidRecord};

use crate::keys::NEXT_CHECK as NEXT_CHECK_KEY;
/// On ordinary requests the buffer is scanned at most this often (a scan lists every key).
const CHECK_EVERY_SECONDS: i64 = 5;
/// Files one `POST /flush` may send, so that one request stays bounded.
const FILES_PER_REQUEST: usize = 12;
/// Files the work after an ordinary request (a webhook, say) may send.
const FILES_PER_ORDINARY_REQUEST: usize = 2;
/// A run stops sending files after this long, inside the lease it renews (runs after an
/// answer stop sooner, at the work budget).
const RUN_SECONDS: i64 = 15;

/// On an ordinary request: scan only if the last scan is old enough, then flush what is due.
pub fn check(bridge: &Bridge) -> Result<FlushReport, Fault> {
    let now = bridge.clock.now().unix_timestamp();
    let next: Option<i64> = bridge.store().get_json(NEXT_CHECK_KEY)?;
    if next.is_some_and(|n| n > now) {
        return Ok(FlushReport::default());
    }
    bridge
        .store()
        .put_json(NEXT_CHECK_KEY, &(now + CHECK_EVERY_SECONDS))?;
    run_bounded(bridge, false, FILES_PER_ORDINARY_REQUEST)
}

/// Flushes every type that is due (all pending ones with `force`), in dependency order, then
/// polls in-flight files.
pub fn run(bridge: &Bridge, force: bool) -> Result<FlushReport, Fault> {
    run_bounded(bridge, force, FILES_PER_REQUEST)
}

/// The integration files go to; without one, records wait (noted in the report).
fn integration_for_flush(bridge: &Bridge, report: &mut FlushReport) -> Option<i64> {
    match bridge.integration_id() {
        Ok(id) => Some(id),
        Err(_) => {
            report.note = Some(
                "records are buffered but no Gong integration is registered yet (PUT /integration)"
                    .into(),
            );
            None
        }
    }
}

/// Records why a file could not go (the records stay buffered) and when the next try can be;
/// the flush stops there.
fn report_flush_failure(
    bridge: &Bridge,
    object_type: ObjectType,
    error: Fault,
    now: i64,
    report: &mut FlushReport,
) -> Result<(), Fault> {
    match error {
        Fault::Throttled {
            detail,
            retry_after,
        } => {
            report.throttled_until = Some(now + retry_after as i64);
            report.note = Some(format!("{detail}; records stay buffered"));
        }
        e => {
            if let Some(until) = bridge.gong_blocked_until(now)? {
                report.throttled_until = Some(until);
            }
            report.note = Some(format!(
                "flushing {object_type} failed, records stay buffered: {e}"
            ));
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
    gong: &GongClient,
    integration_id: i64,
    object_type: ObjectType,
    records: Vec<ValidRecord>,
    deliveries: Vec<String>,
    attempts: BTreeMap<String, u32>,
) -> Result<Option<SentFile>, Fault> {
    let (ldjson, line_ids, merged) = validation::build_ldjson(records);
    if line_ids.is_empty() {
        return Ok(None);
    }
    let client_request_id = format!(
        "{FLUSH_FILE_PREFIX}{}-{}",
        object_type.as_str().to_ascii_lowercase(),
        uuid::Uuid::new_v4().simple()
    );
    let marker = InFlight {
        object_type,
        attempts,
        sent_at: bridge.clock.now().unix_timestamp(),
        settled_at: None,
        settled_first: None,
        rewritten: BTreeMap::new(),
        discarded: Vec::new(),
    };
    // The marker goes first: whatever happens next, a poll finds this file.
    bridge
        .store()
        .put_json(&inflight_key(&client_request_id), &marker)?;
    let count = line_ids.len();
    // Known now, so a failure below can clean up even if the request record was never stored.
    let payload_chunks = ldjson.len().div_ceil(crate::store::CHUNK_BYTES);
    let line_map_chunks = line_ids
        .iter()
        .map(|id| id.len() + 1)
        .sum::<usize>()
        .div_ceil(crate::store::CHUNK_BYTES);
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
                if let Err(e) = bridge
                    .store()
                    .put_json(&crate::store::request_key(&client_request_id), &record)
                {
                    crate::log::warn(format!(
                        "could not list the deliveries of {client_request_id}: {e}"
                    ))
                    .emit();
                }
            }
            Ok(Some(SentFile {
                client_request_id,
                line_ids,
                merged,
            }))
        }
        Err(error) => {
            // Gong did not take the file: the records are still pending; forget the attempt
            // (the request record stays, NOT_SENT, as history of what Gong said).
            let _ = bridge.kv.delete(&inflight_key(&client_request_id));
            let _ = bridge
                .store()
                .delete_blob(PAYLOAD, &client_request_id, payload_chunks);
            let _ =
                bridge
                    .store()
                    .delete_blob(requests::LINES, &client_request_id, line_map_chunks);
            if let Ok(Some(mut record)) = bridge.store().get_json::<crate::tracking::RequestRecord>(
                &crate::store::request_key(&client_request_id),
            ) {
                record.payload_chunks = 0;
                record.line_map_chunks = 0;
                let _ = bridge
                    .store()
                    .put_json(&crate::store::request_key(&client_request_id), &record);
            }
            Err(match error {
                Fault::Kept { inner, .. } => match *inner {
                    Fault::Gong {
                        error: crate::gong::client::GongError::RateLimited { retry_after, .. },
                        ..
                    } => Fault::Throttled {
                        detail: "Gong answered 429".into(),
                        retry_after: retry_after.unwrap_or(60),
                    },
                    other => other,
                },
                other => other,
            })
        }
    }
}

// ----- flushing --------------------------------------------------------------------------------

/// What one listing of the store says the engine has to do.
struct Scan {
    inbox: Vec<String>,
    shards: Vec<(ObjectType, u32)>,
    inflight: Vec<String>,
    requests_kept: usize,
    retried_failures: bool,
    commands_waiting: bool,
    bulk_waiting: bool,
}

fn scan(bridge: &Bridge) -> Result<Scan, Fault> {
    let keys = bridge.kv.keys()?;
    Ok(Scan {
        inbox: keys
            .iter()
            .filter(|k| k.starts_with(INBOX_PREFIX))
            .cloned()
            .collect(),
        shards: keys
            .iter()
            .filter_map(|k| shards::parse_shard_key(k, PENDING_SHARD_PREFIX))
            .collect(),
        inflight: keys
            .iter()
            .filter_map(|k| k.strip_prefix(INFLIGHT_PREFIX))
            .map(str::to_owned)
            .collect(),
        requests_kept: keys
            .iter()
            .filter(|k| k.starts_with(crate::keys::REQUEST_PREFIX))
            .count(),
        retried_failures: keys.iter().any(|k| k == failures::RETRIED_KEY),
        commands_waiting: keys.iter().any(|k| k.starts_with(commands::COMMAND_PREFIX)),
        bulk_waiting: sent::any_waiting(&keys),
    })
}

/// Shards the summary does not know yet, and whether it lists shards that are gone.
fn drift(summary: &Summary, shards: &[(ObjectType, u32)]) -> (Vec<(ObjectType, u32)>, bool) {
    let known = |t: ObjectType, n: u32| summary.get(t.as_str()).is_some_and(|s| s.contains_key(&n));
    let unknown = shards
        .iter()
        .copied()
        .filter(|(t, n)| !known(*t, *n))
        .collect();
    let stale = summary.iter().any(|(t, stats)| {
        stats
            .keys()
            .any(|n| !shards.iter().any(|(st, sn)| st.as_str() == t && sn == n))
    });
    (unknown, stale)
}

fn run_bounded(bridge: &Bridge, force: bool, max_files: usize) -> Result<FlushReport, Fault> {
    let layout = settings::layout(bridge.config);
    let mut report = FlushReport {
        scanned: true,
        ..Default::default()
    };
    // This listing only decides whether the lease is needed; the work reads a fresh one once it
    // holds the lease (a holder that finished meanwhile may have written shards since: with the
    // old listing, the summary would have been "reconciled" down to the shards listed then).
    let Scan {
        inbox,
        shards,
        inflight,
        requests_kept,
        retried_failures,
        commands_waiting,
        bulk_waiting,
    } = scan(bridge)?;
    let limits = settings::flush_limits(bridge.config);
    let now = bridge.clock.now().unix_timestamp();
    let blocked = bridge.gong_blocked_until(now)?;
    let summary = read_summary(bridge)?;
    let (unknown, stale) = drift(&summary, &shards);
    let due = due_types(&summary, limits, force, now);
    // Inbox keys merged already need the lease only once they may be released.
    let settling = inbox::settling(bridge)?;
    let release_after = settings::inbox_release_seconds(bridge.config);
    let inbox_work = inbox
        .iter()
        .any(|key| inbox::has_work(&settling, key, now, release_after, false));
    let needs_lease = inbox_work
        || retried_failures
        || commands_waiting
        || bulk_waiting
        || !unknown.is_empty()
        || stale
        || (blocked.is_none() && (!due.is_empty() || !inflight.is_empty()));

    if needs_lease {
        // `force` (an operator, a scheduler) waits for the lease within its budget: the holder is
        // usually the short work after an earlier answer.
        let lease = if force {
            lease::wait_for_flush_lease(bridge)?
        } else {
            lease::take_flush_lease(bridge)?
        };
        match lease {
            None => report.note = Some(lease::busy_note(bridge)),
            Some(mut held) => {
                let result = (|| -> Result<(), Fault> {
                    let Scan {
                        inbox,
                        shards,
                        inflight,
                        retried_failures,
                        commands_waiting,
                        bulk_waiting,
                        ..
                    } = scan(bridge)?;
                    let (unknown, stale) = drift(&read_summary(bridge)?, &shards);
                    if !unknown.is_empty() || stale {
                        reconcile(bridge, &shards, &unknown)?;
                    }
                    // A store failure here leaves records in the inbox; what the shards hold
                    // can still go.
                    if let Err(e) =
                        inbox::compact_inbox(bridge, layout, inbox, &mut held, &mut report)
                    {
                        report.note = Some(format!(
                            "compacting the inbox failed, its records stay there: {e}"
                        ));
                        report.failed = Some(format!("compacting the inbox: {e}"));
                    }
                    if commands_waiting {
                        match commands::apply_waiting(bridge) {
                            Ok((requeued, _)) => report.requeued += requeued,
                            Err(e) => {
                                crate::log::warn(format!("applying operator commands: {e}")).emit()
                            }
                        }
                    }
                    if bulk_waiting {
                        if let Err(e) = sent::fold_waiting(bridge) {
                            crate::log::warn(format!("indexing bulk files: {e}")).emit();
                        }
                    }
                    if retried_failures {
                        if let Err(e) = failures::release_retried(bridge) {
                            crate::log::warn(format!("the second look at re-queued failures: {e}"))
                                .emit();
                        }
                    }
                    if let Some(until) = blocked {
                        report.throttled_until = Some(until);
                        report.note = Some(format!("Gong calls are paused until {until} (Unix time); records stay buffered and go then"));
                        return Ok(());
                    }
                    flush_due(
                        bridge,
                        limits,
                        force,
                        now,
                        max_files,
                        &mut held,
                        &mut report,
                    )?;
                    if report.throttled_until.is_none() {
                        follow::poll_inflight(bridge, &inflight, &mut held, &mut report)?;
                    }
                    Ok(())
                })();
                lease::release(bridge.kv, held);
                result?;
            }
        }
    } else if let Some(until) = blocked {
        report.throttled_until = Some(until);
        report.note = Some(format!(
            "Gong calls are paused until {until} (Unix time); records stay buffered and go then"
        ));
    }
    // Housekeeping that keeps the key count bounded: expired idempotency keys, old requests.
    if let Err(e) = bridge.idempotency().sweep() {
        crate::log::warn(format!("idempotency sweep: {e}")).emit();
    }
    if retention::due(bridge, layout, requests_kept).unwrap_or(false) {
        if let Err(e) = retention::retain_requests(bridge, layout) {
            crate::log::warn(format!("request retention: {e}")).emit();
        }
    }
    report.pending = pending_report(&read_summary(bridge)?);
    // Keys whose records wait to be merged; merged ones waiting for release are not counted.
    let settling = inbox::settling(bridge)?;
    report.inbox_keys = Some(
        bridge
            .kv
            .keys()?
            .iter()
            .filter(|k| k.starts_with(INBOX_PREFIX) && !settling.contains_key(*k))
            .count(),
    );
    Ok(report)
}

fn due_types(
    summary: &Summary,
    limits: due::FlushLimits,
    force: bool,
    now: i64,
) -> Vec<ObjectType> {
    FLUSH_ORDER
        .into_iter()
        .filter(|t| {
            summary.get(t.as_str()).is_some_and(|stats| {
                let s = shards::type_summary(stats);
                due::is_due(&s, limits, force, now)
            })
        })
        .collect()
}

/// Brings the summary in line with the shards that exist (a crash between a shard write and
/// the summary write, or a damaged summary).
fn reconcile(
    bridge: &Bridge,
    shards: &[(ObjectType, u32)],
    unknown: &[(ObjectType, u32)],
) -> Result<(), Fault> {
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

#[allow(clippy::too_many_arguments)]
fn flush_due(
    bridge: &Bridge,
    limits: due::FlushLimits,
    force: bool,
    now: i64,
    max_files: usize,
    held: &mut Lease,
    report: &mut FlushReport,
) -> Result<(), Fault> {
    let due = due_types(&read_summary(bridge)?, limits, force, now);
    if due.is_empty() {
        return Ok(());
    }
    let Some(integration_id) = integration_for_flush(bridge, report) else {
        return Ok(());
    };
    let gong = bridge.gong()?;
    for object_type in due {
        loop {
            if report.files.len() >= max_files {
                return Ok(());
            }
            if bridge.clock.now().unix_timestamp() - now >= RUN_SECONDS {
                report.note = Some(format!(
                    "stopped after {RUN_SECONDS} s; the rest goes with the next flush"
                ));
                return Ok(());
            }
            if !lease::still_held(bridge, held) {
                report.note =
                    Some("another replica took the flush lease over; it sends the rest".into());
                return Ok(());
            }
            let summary = read_summary(bridge)?;
            let Some(stats) = summary.get(object_type.as_str()) else {
                break;
            };
            let s = shards::type_summary(stats);
            if !due::is_due(&s, limits, force, now) {
                break;
            }
            // Oldest shards first; within a shard, oldest records first.
            let mut order: Vec<(i64, u32)> = stats
                .iter()
                .map(|(n, st)| (st.oldest.unwrap_or(i64::MAX), *n))
                .collect();
            crate::sorting::sort(&mut order);
            let chosen = choose(bridge, object_type, &order, limits)?;
            if chosen.is_empty() {
                // The summary promised records the shards do not hold: rebuild it.
                let shards: Vec<(ObjectType, u32)> =
                    order.iter().map(|(_, n)| (object_type, *n)).collect();
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

fn choose(
    bridge: &Bridge,
    object_type: ObjectType,
    order: &[(i64, u32)],
    limits: due::FlushLimits,
) -> Result<Vec<Chosen>, Fault> {
    let mut chosen = Vec::new();
    let mut bytes = 0usize;
    for (_, n) in order {
        let shard: Shard = read_map(bridge.kv, &pending_shard_key(object_type, *n))?;
        let mut waiting: Vec<(String, Slot)> =
            shard.into_iter().filter(|(_, s)| s.is_pending()).collect();
        crate::sorting::sort_by_key(&mut waiting, |(_, s)| s.received);
        for (object_id, slot) in waiting {
            let len = slot.line.as_ref().map_or(0, |l| l.get().len()) + 1;
            if chosen.len() >= limits.max_records
                || (!chosen.is_empty() && bytes + len > limits.max_bytes)
            {
                return Ok(chosen);
            }
            bytes += len;
            chosen.push(Chosen {
                shard: *n,
                object_id,
                slot,
            });
        }
    }
    Ok(chosen)
}

/// Sends the chosen records as one file; after Gong's 201 each is marked sent in its shard
/// (unless a newer version took its place meanwhile).
fn flush_chosen(
    bridge: &Bridge,
    gong: &GongClient,
    integration_id: i64,
    object_type: ObjectType,
    chosen: Vec<Chosen>,
) -> Result<serde_json::Value, Fault> {
    let mut records = Vec::with_capacity(chosen.len());
    let mut deliveries = Vec::new();
    let mut attempts = BTreeMap::new();
    let mut sent_versions: BTreeMap<u32, Vec<(String, i64, String)>> = BTreeMap::new();
    for c in chosen {
        let (Some(line), Ok(modified)) = (
            c.slot.line,
            time::OffsetDateTime::from_unix_timestamp(c.slot.modified),
        ) else {
            continue;
        };
        if c.slot.attempt > 0 {
            attempts.insert(c.object_id.clone(), c.slot.attempt);
        }
        if !c.slot.delivery.is_empty() && deliveries.len() < MAX_DELIVERIES_LISTED {
            deliveries.push(c.slot.delivery);
        }
        sent_versions.entry(c.shard).or_default().push((
            c.object_id.clone(),
            c.slot.modified,
            shards::line_digest(line.get().as_bytes()),
        ));
        records.push(ValidRecord {
            object_id: c.object_id,
            modified,
            line: line.get().as_bytes().to_vec(),
        });
    }
    let Some(sent) = send_file(
        bridge,
        gong,
        integration_id,
        object_type,
        records,
        deliveries,
        attempts,
    )?
    else {
        return Ok(json!({"objectType": object_type, "records": 0}));
    };
    let line_of: std::collections::HashMap<&str, usize> = sent
        .line_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i + 1))
        .collect();
    let at = bridge.clock.now().unix_timestamp();
    let mut summary = read_summary(bridge)?;
    for (n, versions) in sent_versions {
        let key = pending_shard_key(object_type, n);
        let marked = (|| -> Result<Shard, Fault> {
            let mut shard: Shard = read_map(bridge.kv, &key)?;
            for (object_id, modified, digest) in versions {
                let line = line_of.get(object_id.as_str()).copied().unwrap_or(0);
                shards::mark_sent(
                    &mut shard,
                    &object_id,
                    modified,
                    &digest,
                    Sent {
                        at,
                        c: sent.client_request_id.clone(),
                        n: line,
                        h: String::new(),
                    },
                );
            }
            write_map(bridge.kv, &key, &shard)?;
            Ok(shard)
        })();
        match marked {
            Ok(shard) => set_stat(&mut summary, object_type, n, &shard),
            // The versions stay pending and are sent again later: a duplicate, never a loss.
            Err(e) => crate::log::warn(format!(
                "sent records left pending in {key} ({e}); they will be sent again"
            ))
            .emit(),
        }
    }
    write_summary(bridge, &summary)?;
    Ok(sent.report(object_type))
}
