//! Following files to their end: polling in-flight files when due (soonest first, backoff,
//! shared quota, under the renewed lease) and settling a final status — failed lines to the
//! failure store, records Gong did not account for out again, a whole-file failure retried once.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::lease::{self, Lease};
use super::pending::{merge_into_pending, settle, Incoming};
use super::requests::{self, PAYLOAD};
use super::shards::{
    self, failure_shard_key, pending_shard_key, read_map, shard_of, write_map, Layout, Shard, Slot,
};
use super::{inflight_key, Failure, FlushReport, InFlight};
use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::gong::models::ObjectType;
use crate::settings;
use crate::tracking::{RequestRecord, TrackedLineError, TrackedStatus};
use crate::validation;

/// Status polls of in-flight files per run, so that a run stays short.
pub const POLLS_PER_REQUEST: usize = 3;
/// Files a record whose outcome Gong did not list may go in before it is failed.
const UNLISTED_ATTEMPTS: u32 = 3;

/// Gong keeps a request's status for 24 h; a file still unresolved after that is failed as a
/// whole (its records go out again once, then to the failure store).
const GONG_STATUS_TTL_SECONDS: i64 = 86_400;

/// Follows in-flight files: those whose next poll is due, soonest first (a file that keeps
/// erroring waits longer each time and cannot starve the others), at most
/// `POLLS_PER_REQUEST` Gong calls per run.
pub(super) fn poll_inflight(
    bridge: &Bridge,
    inflight: &[String],
    held: &mut Lease,
    report: &mut FlushReport,
) -> Result<(), Fault> {
    let store = bridge.store();
    let now = bridge.clock.now().unix_timestamp();
    let mut files = Vec::new();
    for client_request_id in inflight {
        let Some(marker) = store.get_json::<InFlight>(&inflight_key(client_request_id))? else {
            continue;
        };
        let record = match requests::load(bridge, client_request_id) {
            Ok(record) => record,
            // No record: the file never reached Gong (the bridge stopped before storing it);
            // its versions are still pending.
            Err(Fault::NoSuchRequest(_)) => {
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
    crate::sorting::sort_by_key(&mut files, |(marker, record)| {
        (record.next_poll_at.unwrap_or(0), marker.sent_at)
    });
    let mut polls = 0;
    for (marker, mut record) in files {
        if !record.status.is_final() && now - marker.sent_at > GONG_STATUS_TTL_SECONDS {
            record.status = TrackedStatus::Failed;
            record.errors = vec![TrackedLineError {
                line: 0,
                object_id: None,
                description: "Gong gave no final status within 24 hours".into(),
            }];
            store.put_json(
                &crate::store::request_key(&record.client_request_id),
                &record,
            )?;
        }
        if !record.status.is_final() {
            if polls >= POLLS_PER_REQUEST || !record.poll_due(now) {
                continue;
            }
            if !lease::still_held(bridge, held) {
                return Ok(());
            }
            polls += 1;
            match requests::poll(bridge, &mut record) {
                Ok(()) => report.polled += 1,
                Err(Fault::Throttled { retry_after, .. }) => {
                    report.throttled_until = Some(now + retry_after as i64);
                    return Ok(());
                }
                Err(e) => {
                    crate::log::warn("polling a file failed")
                        .field("clientRequestId", record.client_request_id.as_str())
                        .field("error", e.to_string())
                        .emit();
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

/// What a failed file's final status means for its records: those that go out again, and
/// those that go to the failure store.
type Outcome = (Vec<Requeue>, Vec<Failure>);

/// The [`Outcome`] of a failed file; `None` when its payload is gone.
fn outcome(
    bridge: &Bridge,
    record: &RequestRecord,
    marker: &InFlight,
) -> Result<Option<Outcome>, Fault> {
    let id = &record.client_request_id;
    let Some(payload) = bridge
        .store()
        .get_blob(PAYLOAD, id, record.payload_chunks)?
    else {
        return Ok(None);
    };
    let lines: Vec<&[u8]> = payload
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let file_level: Vec<&str> = record
        .errors
        .iter()
        .filter(|e| e.line <= 0)
        .map(|e| e.description.as_str())
        .collect();
    let now = bridge.now();
    let failure = |line: &[u8], object_id: String, modified: i64, description: String| Failure {
        object_type: marker.object_type,
        object_id,
        modified,
        description,
        client_request_id: id.clone(),
        failed_at: now.clone(),
        line: String::from_utf8_lossy(line).into_owned(),
        retried_at: None,
        discarded_at: None,
        source: None,
    };
    let mut requeue = Vec::new();
    let mut failures = Vec::new();
    if !file_level.is_empty() {
        let description = format!("Gong failed the whole file: {}", file_level.join("; "));
        for line in &lines {
            let Some((object_id, modified)) = identify(line) else {
                continue;
            };
            if marker.attempts.get(&object_id).copied().unwrap_or(0) == 0 {
                requeue.push(Requeue {
                    object_id,
                    modified,
                    line: line.to_vec(),
                    attempt: 1,
                });
            } else {
                failures.push(failure(line, object_id, modified, description.clone()));
            }
        }
    } else {
        let mut listed = std::collections::BTreeSet::new();
        for error in &record.errors {
            let Some(line) = usize::try_from(error.line - 1)
                .ok()
                .and_then(|i| lines.get(i))
            else {
                continue;
            };
            let Some((object_id, modified)) = identify(line) else {
                continue;
            };
            listed.insert(error.line);
            failures.push(failure(
                line,
                object_id,
                modified,
                error.description.clone(),
            ));
        }
        // Gong lists at most 20 failed lines per file ("upload the entire file repeatedly
        // until you receive a DONE status"): when it counts more failures than it lists, or
        // lists none, no unlisted record is known to be done. They go out again, without the
        // listed ones, until a DONE or a listed failure covers each; after three such files a
        // record goes to the failure store saying Gong gave no reason.
        let counted = record.totals.error.unwrap_or(0).max(0) as usize;
        if listed.is_empty() || counted > listed.len() {
            let description = format!("Gong failed the file ({counted} failures, {} listed) without a reason for this record, three times", listed.len());
            for (_, line) in lines
                .iter()
                .enumerate()
                .filter(|(i, _)| !listed.contains(&(*i as i64 + 1)))
            {
                let Some((object_id, modified)) = identify(line) else {
                    continue;
                };
                let attempt = marker.attempts.get(&object_id).copied().unwrap_or(0);
                if attempt + 1 < UNLISTED_ATTEMPTS {
                    requeue.push(Requeue {
                        object_id,
                        modified,
                        line: line.to_vec(),
                        attempt: attempt + 1,
                    });
                } else {
                    failures.push(failure(line, object_id, modified, description.clone()));
                }
            }
        }
    }
    failures.retain(|f| !marker.discarded.contains(&f.object_id));
    Ok(Some((requeue, failures)))
}

/// Applies a final status: failed lines go to the failure store; a file-level failure puts the
/// file's records back to pending once, then into the failure store. Everything is written
/// before the marker is removed, so a crash in between repeats this step (idempotently).
///
/// A failed file's marker and payload then stay, and every `inbox_release_seconds` the step is
/// checked again until a look finds it whole: a replica stalled mid-write may have overwritten
/// a re-queue or a failure (no compare-and-swap), and what is missing is written again.
fn settle_file(
    bridge: &Bridge,
    record: &RequestRecord,
    marker: &InFlight,
    report: &mut FlushReport,
) -> Result<(), Fault> {
    let store = bridge.store();
    let id = &record.client_request_id;
    let now = bridge.clock.now().unix_timestamp();
    let release_after = settings::inbox_release_seconds(bridge.config);
    if record.status == TrackedStatus::Failed {
        if marker.settled_at.is_some_and(|at| now - at < release_after) {
            return Ok(());
        }
        let Some((mut requeue, mut failures)) = outcome(bridge, record, marker)? else {
            // Cannot happen unless a chunk was removed by hand; failing here on every poll would
            // stop all later polling, so the file is let go. Its failed lines stay visible by
            // objectId in GET /requests/{id}.
            crate::log::warn(format!(
                "file {id} failed but its payload is gone; see GET /requests/{id}"
            ))
            .emit();
            store.delete(&inflight_key(id))?;
            return Ok(());
        };
        let layout = settings::layout(bridge.config);
        if marker.settled_at.is_some() {
            // A later look: keep only what a concurrent writer took away, each record checked
            // against the time it was itself last written.
            let first = marker.settled_first.or(marker.settled_at).unwrap_or(0);
            let since = |id: &str| marker.rewritten.get(id).copied().unwrap_or(first);
            requeue.retain(|r| {
                !requeue_held(
                    bridge,
                    layout,
                    marker.object_type,
                    r.object_id.as_str(),
                    r.modified,
                    &r.line,
                    since(&r.object_id),
                )
                .unwrap_or(false)
            });
            failures
                .retain(|f| !failure_held(bridge, layout, f, since(&f.object_id)).unwrap_or(false));
            if !requeue.is_empty() || !failures.is_empty() {
                crate::log::warn(format!("{} re-queues and {} failures were overwritten by a concurrent writer; writing them again", requeue.len(), failures.len())).field("clientRequestId", id.as_str()).emit();
            }
        } else {
            report.requeued += requeue.len();
            report.failures_added += failures.len();
            let applied = record
                .record_count
                .unwrap_or(0)
                .saturating_sub(requeue.len() + failures.len());
            bridge
                .tally
                .records_settled(applied as u64, failures.len() as u64);
        }
        let written: Vec<String> = requeue
            .iter()
            .map(|r| r.object_id.clone())
            .chain(failures.iter().map(|f| f.object_id.clone()))
            .collect();
        requeue_records(bridge, layout, marker.object_type, requeue)?;
        add_failures(bridge, layout, failures)?;
        // Looked at again until a look finds everything held; a record written again is
        // checked against its own write time, so records held once stay held.
        if release_after > 0 && (marker.settled_at.is_none() || !written.is_empty()) {
            let mut next = InFlight {
                settled_at: Some(now),
                settled_first: marker.settled_first.or(Some(now)),
                ..marker.clone()
            };
            if marker.settled_at.is_some() {
                next.rewritten
                    .extend(written.into_iter().map(|id| (id, now)));
            }
            return store.put_json(&inflight_key(id), &next);
        }
    }
    if record.status != TrackedStatus::Failed {
        bridge
            .tally
            .records_settled(record.record_count.unwrap_or(0) as u64, 0);
    }
    store.delete_blob(PAYLOAD, id, record.payload_chunks)?;
    store.delete(&inflight_key(id))?;
    Ok(())
}

/// Whether the pending shard holds the edit `line` re-queued at `since` (Unix seconds), or has
/// moved past it: pending, sent after `since` (a send in the same second counts as missing: at
/// worst a duplicate), a later edit, or a newer version. A tombstone of this edit's send before it (the failed file, or a duplicate another replica sent) is no
/// evidence.
#[allow(clippy::too_many_arguments)]
pub(super) fn requeue_held(
    bridge: &Bridge,
    layout: Layout,
    object_type: ObjectType,
    object_id: &str,
    modified: i64,
    line: &[u8],
    since: i64,
) -> Result<bool, Fault> {
    let shard: Shard = read_map(
        bridge.kv,
        &pending_shard_key(object_type, shard_of(object_id, layout.pending_shards)),
    )?;
    let digest = shards::line_digest(line);
    Ok(shard.get(object_id).is_some_and(|slot| {
        let other_edit = slot
            .sent
            .as_ref()
            .is_some_and(|s| !s.h.is_empty() && s.h != digest);
        slot.modified > modified
            || (slot.modified == modified
                && (slot.is_pending()
                    || other_edit
                    || slot.sent.as_ref().is_some_and(|s| s.at > since)))
    }))
}

/// Whether a failure written at `since` is in the failure store, or its record went on
/// (re-queued by `POST /failures/retry`, or a newer version).
fn failure_held(
    bridge: &Bridge,
    layout: Layout,
    failure: &Failure,
    since: i64,
) -> Result<bool, Fault> {
    let stored: BTreeMap<String, Failure> = read_map(
        bridge.kv,
        &failure_shard_key(
            failure.object_type,
            shard_of(&failure.object_id, layout.failure_shards),
        ),
    )?;
    if stored
        .get(&failure.object_id)
        .is_some_and(|f| f.modified >= failure.modified)
    {
        return Ok(true);
    }
    requeue_held(
        bridge,
        layout,
        failure.object_type,
        &failure.object_id,
        failure.modified,
        failure.line.as_bytes(),
        since,
    )
}

/// A record going back to pending (a file-level failure, or `POST /failures/retry`).
struct Requeue {
    object_id: String,
    modified: i64,
    line: Vec<u8>,
    attempt: u32,
}

/// objectId and modifiedDate of an LDJSON line the bridge itself wrote.
pub(super) fn identify(line: &[u8]) -> Option<(String, i64)> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        object_id: String,
        modified_date: String,
    }
    let head: Head = serde_json::from_slice(line).ok()?;
    let modified = validation::parse_gong_datetime(&head.modified_date)
        .ok()?
        .unix_timestamp();
    Some((head.object_id, modified))
}

// ----- after Gong's final status ---------------------------------------------------------------

/// Puts records of a failed file back to pending (caller holds the lease). Any record that
/// cannot be confirmed fails the call, so the file stays in flight and the step repeats.
fn requeue_records(
    bridge: &Bridge,
    layout: Layout,
    object_type: ObjectType,
    items: Vec<Requeue>,
) -> Result<(), Fault> {
    if items.is_empty() {
        return Ok(());
    }
    let now = bridge.clock.now().unix_timestamp();
    let mut incoming = Vec::with_capacity(items.len());
    for (tag, r) in items.into_iter().enumerate() {
        incoming.push(Incoming {
            object_id: r.object_id,
            slot: Slot::pending(r.modified, now, r.attempt, "", shards::raw_line(&r.line)?),
            requeue: true,
            tag,
        });
    }
    let merged = merge_into_pending(bridge, layout, object_type, incoming)?;
    let unconfirmed = merged.iter().filter(|m| !m.confirmed).count();
    if unconfirmed > 0 {
        return Err(Fault::StoreFull {
            detail: format!(
                "{unconfirmed} re-queued {object_type} records do not fit the pending shards yet"
            ),
            retry_after: 60,
        });
    }
    Ok(())
}

/// Writes failures into the failure shards (caller holds the lease), and confirms them by
/// reading back after the settle time; an unconfirmed one fails the call, so the file stays in
/// flight and the step repeats.
pub(super) fn add_failures(
    bridge: &Bridge,
    layout: Layout,
    failures: Vec<Failure>,
) -> Result<(), Fault> {
    if failures.is_empty() {
        return Ok(());
    }
    // A failure of an edit the record has moved past (a newer modifiedDate, or a later edit of
    // the same one, waiting or sent) says nothing about it any more: it is not stored, so it can
    // neither replace the later edit's own failure nor be re-queued over it.
    let mut pending_read: BTreeMap<String, Shard> = BTreeMap::new();
    let mut current = Vec::with_capacity(failures.len());
    for f in failures {
        let key = pending_shard_key(f.object_type, shard_of(&f.object_id, layout.pending_shards));
        if !pending_read.contains_key(&key) {
            pending_read.insert(key.clone(), read_map(bridge.kv, &key)?);
        }
        let digest = shards::line_digest(f.line.as_bytes());
        let moved_on = pending_read[&key].get(&f.object_id).is_some_and(|slot| {
            let other_edit = match (&slot.line, &slot.sent) {
                (Some(line), _) => shards::line_digest(line.get().as_bytes()) != digest,
                (None, Some(sent)) => !sent.h.is_empty() && sent.h != digest,
                (None, None) => false,
            };
            slot.modified > f.modified || (slot.modified == f.modified && other_edit)
        });
        if !moved_on {
            current.push(f);
        }
    }
    let mut by_key: BTreeMap<String, Vec<Failure>> = BTreeMap::new();
    for f in current {
        by_key
            .entry(failure_shard_key(
                f.object_type,
                shard_of(&f.object_id, layout.failure_shards),
            ))
            .or_default()
            .push(f);
    }
    let mut expected = Vec::new();
    for (key, failures) in by_key {
        let mut shard: BTreeMap<String, Failure> = read_map(bridge.kv, &key)?;
        let ids: Vec<(String, i64)> = failures
            .iter()
            .map(|f| (f.object_id.clone(), f.modified))
            .collect();
        for f in failures {
            // A failure of a newer version of the record is not replaced by an older one.
            if shard
                .get(&f.object_id)
                .is_none_or(|held| held.modified <= f.modified)
            {
                shard.insert(f.object_id.clone(), f);
            }
        }
        write_map(bridge.kv, &key, &shard)?;
        expected.push((key, ids));
    }
    settle(bridge);
    for (key, ids) in expected {
        let stored: BTreeMap<String, Failure> = read_map(bridge.kv, &key)?;
        let lost = ids
            .iter()
            .filter(|(id, modified)| stored.get(id).is_none_or(|f| f.modified < *modified))
            .count();
        if lost > 0 {
            return Err(Fault::Overwritten(format!("{lost} failures were overwritten in {key} by a concurrent writer; the step repeats")));
        }
    }
    Ok(())
}
