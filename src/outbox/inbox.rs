//! Accepting a delivery (one inbox key per delivery, nothing read-modify-written) and
//! compacting the inbox into the pending shards after the answer.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::lease::{self, Lease};
use super::pending::{merge_into_pending, Incoming};
use super::shards::{
    self, inbox_entries, inbox_key, pending_shard_key, read_map, shard_of, write_map, InboxEntry,
    InboxRecord, Layout, Merge, Shard, Slot, INBOX_PREFIX,
};
use super::{Buffered, FlushReport};
use crate::bridge::Bridge;
use crate::fault::{encoding, Fault};
use crate::gong::models::ObjectType;
use crate::settings;
use crate::validation::ValidRecord;

/// Inbox values one compaction loads at most (keys, and bytes), so one request stays bounded.
const COMPACT_MAX_KEYS: usize = 4_000;
const COMPACT_MAX_BYTES: usize = 32 * 1024 * 1024;

/// Stores a delivery's validated records in inbox keys of its own; 202 follows. At the
/// admission line the delivery waits for room ([`admit`]) instead of being refused at once.
pub fn buffer_records(
    bridge: &Bridge,
    object_type: ObjectType,
    records: Vec<ValidRecord>,
    rejected: Vec<shards::RejectedRecord>,
    delivery: &str,
) -> Result<Buffered, Fault> {
    let layout = settings::layout(bridge.config);
    let now = bridge.clock.now().unix_timestamp();
    let count = records.len();
    let mut inbox_records = Vec::with_capacity(count);
    for r in records {
        inbox_records.push(InboxRecord {
            m: r.modified.unix_timestamp(),
            l: shards::raw_line(&r.line)?,
            id: r.object_id,
        });
    }
    let mut entries = inbox_entries(object_type, delivery, now, inbox_records);
    shards::add_rejected(&mut entries, object_type, delivery, now, rejected);
    let inbox_before = admit(bridge, layout, entries.len())?;
    let written = entries.len();
    // Below the second, arrivals sort by their nanoseconds, so that compaction merges them in
    // arrival order (equal modifiedDate: the later arrival wins); a random part keeps keys
    // unique across replicas, and each part of a split delivery has a key of its own.
    let arrival = format!(
        "{:09}{}",
        bridge.clock.now().nanosecond(),
        uuid::Uuid::new_v4().simple()
    );
    for (part, entry) in entries.into_iter().enumerate() {
        let bytes = serde_json::to_vec(&entry).map_err(encoding)?;
        bridge.kv.set(
            &inbox_key(object_type, now, &format!("{arrival}-{part:04}")),
            &bytes,
        )?;
    }
    // Accepted already; compacting is housekeeping, done after the answer.
    Ok(Buffered {
        accepted: count,
        superseded: 0,
        compact_inbox: inbox_before + written >= layout.inbox_compact_at,
    })
}

/// Waits until the store has room for `needed` more keys below the admission line, and returns
/// how many inbox keys it holds then.
///
/// A burst (a CRM's bulk edit: one webhook per record) fills the inbox faster than one key at
/// a time, and a refusal is what makes a CRM give up on us (Pipedrive bans a webhook after ten
/// failed first attempts). Compaction frees a key per delivery it merges, but only under the
/// flush lease: so a waiting delivery compacts one bounded chunk itself whenever the lease is
/// free, and otherwise looks again shortly (jittered, so waiting deliveries do not all list the
/// store at once). Only after `admission_wait_ms` (well inside a sender's timeout) is it
/// refused, saying what it measured. Nothing here depends on the lease being exclusive: two
/// compactors at once merge the same records twice (duplicates), never lose one.
pub(super) fn admit(bridge: &Bridge, layout: Layout, needed: usize) -> Result<usize, Fault> {
    let started = bridge.clock.now();
    let wait = settings::admission_wait(bridge.config);
    loop {
        let keys = bridge.kv.keys()?;
        let in_store = keys.len();
        if in_store + needed < layout.admit_below {
            return Ok(keys.iter().filter(|k| k.starts_with(INBOX_PREFIX)).count());
        }
        drop(keys);
        let waited = bridge.clock.now() - started;
        let left = wait.saturating_sub(waited.try_into().unwrap_or_default());
        if left.is_zero() {
            return Err(Fault::StoreFull {
                detail: format!(
                    "the store holds {in_store} keys (kv_max_keys is {}, deliveries wait below {}); this delivery waited {} ms (admission_wait_ms) for compaction to make room and was not accepted: re-deliver later",
                    layout.max_keys,
                    layout.admit_below,
                    waited.whole_milliseconds()
                ),
                retry_after: 30,
            });
        }
        match compact_one_chunk(bridge, layout) {
            // Room was made (or looked for) by this delivery: look at the count again.
            Ok(Some(freed)) if freed > 0 => continue,
            Ok(_) => {}
            Err(e) => crate::log::warn(format!("compaction to make room: {e}")).emit(),
        }
        let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * ADMISSION_POLL_MS / 255;
        bridge
            .clock
            .sleep(Duration::from_millis(ADMISSION_POLL_MS + jitter).min(left));
    }
}

/// How often a waiting delivery looks for room (plus up to as much again, at random).
const ADMISSION_POLL_MS: u64 = 100;

/// Compacts one chunk of the inbox under the flush lease, if it is free (a delivery waiting for
/// room). `None`: someone else holds the lease; else the inbox keys freed.
fn compact_one_chunk(bridge: &Bridge, layout: Layout) -> Result<Option<usize>, Fault> {
    let Some(mut held) = lease::take_flush_lease(bridge)? else {
        return Ok(None);
    };
    let result = (|| {
        let inbox: Vec<String> = bridge
            .kv
            .keys()?
            .into_iter()
            .filter(|k| k.starts_with(INBOX_PREFIX))
            .collect();
        let before = inbox.len();
        compact(
            bridge,
            layout,
            inbox,
            &mut held,
            &mut FlushReport::default(),
            Chunks::One,
        )?;
        Ok(before.saturating_sub(
            bridge
                .kv
                .keys()?
                .iter()
                .filter(|k| k.starts_with(INBOX_PREFIX))
                .count(),
        ))
    })();
    lease::release(bridge.kv, held);
    result.map(Some)
}

/// Compacts the inbox now, unless another replica holds the flush lease (the work after a
/// webhook whose delivery filled the inbox).
pub fn compact_inbox_now(bridge: &Bridge) -> Result<(), Fault> {
    let layout = settings::layout(bridge.config);
    let Some(mut held) = lease::take_flush_lease(bridge)? else {
        return Ok(());
    };
    let result = (|| {
        let inbox: Vec<String> = bridge
            .kv
            .keys()?
            .into_iter()
            .filter(|k| k.starts_with(INBOX_PREFIX))
            .collect();
        compact_inbox(
            bridge,
            layout,
            inbox,
            &mut held,
            &mut FlushReport::default(),
        )
    })();
    lease::release(bridge.kv, held);
    result
}

/// The received time in an inbox key name, for oldest-first order.
fn inbox_received(key: &str) -> &str {
    key.strip_prefix(INBOX_PREFIX)
        .and_then(|rest| rest.split('/').nth(1))
        .unwrap_or("")
}

/// Inbox keys whose records are merged and confirmed, with when (Unix seconds): kept until
/// `inbox_release_seconds` have passed, then checked against the shards again and deleted.
use crate::keys::SETTLING as SETTLING_KEY;

/// Inbox keys merged already and waiting to be released (not "waiting" records).
pub(super) fn settling(bridge: &Bridge) -> Result<BTreeMap<String, i64>, Fault> {
    read_map(bridge.kv, SETTLING_KEY)
}

/// Whether compaction has work for this inbox key now: not merged yet, or merged long enough
/// ago to be looked at again (`inbox_release_seconds`), or, under key pressure, a merged
/// delivery (folded into a kept copy, see [`compact`]); a kept copy itself waits for its time.
pub(super) fn has_work(
    settling: &BTreeMap<String, i64>,
    key: &str,
    now: i64,
    release_after: i64,
    pressure: bool,
) -> bool {
    settling
        .get(key)
        .is_none_or(|at| now - at >= release_after || (pressure && !is_kept_copy(key)))
}

/// The marker in the name of an inbox key that holds a compacted chunk's records for their
/// second look (written by the compactor, never by a webhook).
const KEPT_COPY: &str = "-kept";

fn is_kept_copy(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .is_some_and(|unique| unique.contains(KEPT_COPY))
}

/// How much of the inbox one call compacts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chunks {
    /// One chunk, under pressure: a delivery waiting for room must still be answered in time.
    One,
    /// Chunk after chunk until the inbox is done, the work budget is spent or the lease is lost.
    UntilDone,
}

/// Moves inbox records into the pending shards (caller holds the lease), and releases inbox
/// keys merged earlier.
pub(super) fn compact_inbox(
    bridge: &Bridge,
    layout: Layout,
    inbox: Vec<String>,
    held: &mut Lease,
    report: &mut FlushReport,
) -> Result<(), Fault> {
    compact(bridge, layout, inbox, held, report, Chunks::UntilDone)
}

/// Why an inbox key outlives its merge: without compare-and-swap, a replica that read a shard
/// before this merge and writes it after (its lease expired while it stalled) overwrites the
/// merge. The read-back after the settle wait catches such a write only if it lands within the
/// settle time. So a merged key is kept for `inbox_release_seconds`, then its records are looked
/// up again: present (at that version or newer) → the key goes; missing → merged again.
///
/// Under key pressure (a burst) the store cannot keep a key per merged delivery that long. The
/// inbox is then compacted in chunks of `inbox_compact_at` keys, so room appears chunk by chunk
/// for the deliveries waiting for it, and each chunk's confirmed records are written as one
/// *kept copy* (an inbox key of the compactor's own, split only above the value budget) before
/// the chunk's keys are deleted: the second look then costs one key per chunk instead of one per
/// delivery. Kept copies beyond an eighth of the inbox share (16 at 1,024 keys) are looked at
/// early, oldest first, and go without a copy: only then is the settle time the only guard.
fn compact(
    bridge: &Bridge,
    layout: Layout,
    mut inbox: Vec<String>,
    held: &mut Lease,
    report: &mut FlushReport,
    chunks: Chunks,
) -> Result<(), Fault> {
    let now = bridge.clock.now().unix_timestamp();
    let release_after = settings::inbox_release_seconds(bridge.config);
    // Lookups only: a hash set shares the component's one `HashSet<&str>` (issue 12).
    let present: HashSet<&str> = inbox.iter().map(String::as_str).collect();
    let mut settling = settling(bridge)?;
    let settling_before = settling.clone();
    settling.retain(|key, _| present.contains(key.as_str()));
    let unmerged = inbox.iter().filter(|k| !settling.contains_key(*k)).count();
    let pressure = chunks == Chunks::One
        || release_after == 0
        || unmerged >= layout.inbox_compact_at
        || inbox.len() >= 2 * layout.inbox_compact_at;
    let early = early_copies(&settling, layout);
    // Keys merged before are loaded again only once they may be released.
    inbox.retain(|key| {
        has_work(&settling, key, now, release_after, pressure) || early.contains(key.as_str())
    });
    crate::sorting::sort_by(&mut inbox, |a, b| {
        inbox_received(a).cmp(inbox_received(b)).then(a.cmp(b))
    });
    let chunk_size = if pressure {
        layout.inbox_compact_at
    } else {
        COMPACT_MAX_KEYS
    };
    let mut result = Ok(());
    for (n, chunk) in inbox.chunks(chunk_size).enumerate() {
        let out_of_time = bridge.deadline.is_some_and(|d| bridge.clock.now() >= d);
        if n > 0 && (chunks == Chunks::One || out_of_time || !lease::still_held(bridge, held)) {
            break;
        }
        let step = Step {
            now,
            release_after,
            pressure,
            early: &early,
        };
        if let Err(e) = compact_chunk(bridge, layout, chunk, &mut settling, step, held, report) {
            result = Err(e);
            break;
        }
    }
    if settling != settling_before {
        write_map(bridge.kv, SETTLING_KEY, &settling)?;
    }
    result
}

/// Kept copies over their bound (an eighth of the inbox share), oldest first: looked at early.
fn early_copies(settling: &BTreeMap<String, i64>, layout: Layout) -> HashSet<String> {
    let mut copies: Vec<(i64, &String)> = settling
        .iter()
        .filter(|(k, _)| is_kept_copy(k))
        .map(|(k, at)| (*at, k))
        .collect();
    let bound = (layout.inbox_compact_at / 8).max(1);
    if copies.len() <= bound {
        return HashSet::new();
    }
    crate::sorting::sort(&mut copies);
    let over = copies.len() - bound;
    copies
        .into_iter()
        .take(over)
        .map(|(_, k)| k.clone())
        .collect()
}

/// What one compaction call decided, for each of its chunks.
#[derive(Clone, Copy)]
struct Step<'a> {
    now: i64,
    release_after: i64,
    pressure: bool,
    early: &'a HashSet<String>,
}

/// Compacts one chunk of inbox keys (oldest first): loads them, releases those merged before
/// whose records the shards still hold, merges the rest, then keeps or deletes the sources.
fn compact_chunk(
    bridge: &Bridge,
    layout: Layout,
    chunk: &[String],
    settling: &mut BTreeMap<String, i64>,
    step: Step,
    held: &mut Lease,
    report: &mut FlushReport,
) -> Result<(), Fault> {
    let Step {
        now,
        release_after,
        pressure,
        early,
    } = step;
    let mut loaded: Vec<(String, InboxEntry)> = Vec::new();
    let mut bytes = 0;
    for key in chunk.iter().take(COMPACT_MAX_KEYS) {
        if bytes >= COMPACT_MAX_BYTES {
            break;
        }
        let Some(value) = bridge.kv.get(key)? else {
            continue;
        };
        bytes += value.len();
        match serde_json::from_slice::<InboxEntry>(&value) {
            Ok(entry) => loaded.push((key.clone(), entry)),
            // Left in place (and logged): it is the bridge's own write, so this means damage.
            Err(e) => crate::log::warn(format!(
                "inbox value {key} is unreadable ({e}); left in place"
            ))
            .emit(),
        }
    }
    // Release the keys merged before whose records the shards still hold; merge the others again.
    let mut shards_read: BTreeMap<String, Shard> = BTreeMap::new();
    let mut to_merge = Vec::with_capacity(loaded.len());
    // Merged deliveries released early under pressure: their records go into the chunk's copy.
    let mut folded: Vec<(String, InboxEntry)> = Vec::new();
    // Inbox keys merged for the first time (not a second look): what the counters count.
    let mut first_merges: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for (key, entry) in loaded {
        let Some(merged_at) = settling.remove(&key) else {
            first_merges.insert(key.clone(), (entry.d.clone(), entry.records.len()));
            to_merge.push((key, entry));
            continue;
        };
        let mut missing = Vec::new();
        for (i, r) in entry.records.iter().enumerate() {
            let shard_key = pending_shard_key(entry.t, shard_of(&r.id, layout.pending_shards));
            if !shards_read.contains_key(&shard_key) {
                shards_read.insert(shard_key.clone(), read_map(bridge.kv, &shard_key)?);
            }
            if shards_read[&shard_key]
                .get(&r.id)
                .is_none_or(|slot| slot.modified < r.m)
            {
                missing.push(i);
            }
        }
        if !missing.is_empty() {
            crate::log::warn(format!("{} records of {key} were overwritten in their shard by a concurrent writer; merging them again", missing.len())).emit();
            // Only those: a record held at its version (or a later edit of the same second) stays.
            let mut entry = entry;
            let records = std::mem::take(&mut entry.records);
            entry.records = records
                .into_iter()
                .enumerate()
                .filter(|(i, _)| missing.contains(i))
                .map(|(_, r)| r)
                .collect();
            to_merge.push((key, entry));
        } else if now - merged_at < release_after && !early.contains(&key) {
            // Its second look is not due yet: it lives on in the chunk's kept copy.
            folded.push((key, entry));
        } else if let Err(e) = bridge.kv.delete(&key) {
            // A failed delete leaves records that merge again as duplicates: nothing lost.
            crate::log::warn(format!("released inbox key {key} left in place: {e}")).emit();
        }
    }
    let mut loaded = to_merge;
    let mut complete = vec![true; loaded.len()];
    let mut per_type: BTreeMap<ObjectType, Vec<Incoming>> = BTreeMap::new();
    // Under pressure, each key's records (for the kept copy), by position in `loaded`.
    let mut copies: Vec<Vec<InboxRecord>> = Vec::new();
    for (tag, (_, entry)) in loaded.iter_mut().enumerate() {
        if pressure {
            copies.push(entry.records.clone());
        }
        for r in std::mem::take(&mut entry.records) {
            per_type.entry(entry.t).or_default().push(Incoming {
                object_id: r.id,
                slot: Slot::pending(r.m, entry.r, 0, &entry.d, r.l),
                requeue: false,
                tag,
            });
        }
    }
    for (_, entry) in &folded {
        per_type.entry(entry.t).or_default();
    }
    // Rejected records go to the failure store first; a key whose failures are not confirmed
    // stays in the inbox (merged again later: duplicates).
    let now_text = crate::validation::format_gong_datetime(bridge.clock.now());
    let mut failures = Vec::new();
    let mut with_failures = Vec::new();
    for (tag, (key, entry)) in loaded.iter_mut().enumerate() {
        per_type.entry(entry.t).or_default();
        if entry.rejected.is_empty() {
            continue;
        }
        with_failures.push(tag);
        for r in std::mem::take(&mut entry.rejected) {
            failures.push(super::Failure {
                object_type: entry.t,
                object_id: r.id,
                modified: r.m,
                description: r.why,
                client_request_id: format!(
                    "{}:{}",
                    r.source,
                    if entry.d.is_empty() {
                        key.as_str()
                    } else {
                        entry.d.as_str()
                    }
                ),
                failed_at: now_text.clone(),
                line: r.raw.get().to_owned(),
                retried_at: None,
                discarded_at: None,
                source: Some(r.source),
            });
        }
    }
    if !failures.is_empty() {
        let count = failures.len();
        match super::follow::add_failures(bridge, layout, failures) {
            Ok(()) => bridge.tally.records_rejected(count as u64),
            Err(e) => {
                crate::log::warn(format!("rejected records stay in the inbox for now: {e}")).emit();
                for tag in with_failures {
                    complete[tag] = false;
                }
            }
        }
    }
    let (mut compacted, mut superseded) = (0, 0);
    for (object_type, incoming) in per_type {
        if !lease::still_held(bridge, held) {
            // Another replica has the lease now (this run outlived it): it compacts the rest.
            break;
        }
        let merged_now = if incoming.is_empty() {
            Vec::new()
        } else {
            merge_into_pending(bridge, layout, object_type, incoming)?
        };
        for merged in merged_now {
            if !merged.confirmed {
                complete[merged.tag] = false;
            } else if merged.outcome == Merge::Superseded {
                superseded += 1;
            } else {
                compacted += 1;
            }
        }
        let done: Vec<usize> = (0..loaded.len())
            .filter(|i| complete[*i] && loaded[*i].1.t == object_type)
            .collect();
        if !pressure {
            for i in done {
                settling.insert(loaded[i].0.clone(), now);
            }
            continue;
        }
        // This type's inbox keys go before the next type's shards are created, so the store
        // needs room for at most one type's new shards (`Layout::admit_below`); their records
        // stay in one kept copy until its second look.
        let mut sources: Vec<(&String, i64, Vec<InboxRecord>)> = Vec::new();
        for i in done {
            sources.push((&loaded[i].0, loaded[i].1.r, std::mem::take(&mut copies[i])));
        }
        for (key, entry) in folded.iter_mut().filter(|(_, e)| e.t == object_type) {
            sources.push((key, entry.r, std::mem::take(&mut entry.records)));
        }
        if sources.is_empty() {
            continue;
        }
        // In arrival order, so that a later look merges them as they arrived.
        crate::sorting::sort_by(&mut sources, |a, b| {
            inbox_received(a.0)
                .cmp(inbox_received(b.0))
                .then(a.0.cmp(b.0))
        });
        let received = sources.iter().map(|(_, r, _)| *r).min().unwrap_or(now);
        let kept: Vec<InboxRecord> = sources
            .iter_mut()
            .flat_map(|(_, _, records)| std::mem::take(records))
            .collect();
        let sources: Vec<&String> = sources.into_iter().map(|(key, _, _)| key).collect();
        match keep_copy(bridge, object_type, received, kept) {
            Ok(keys) => {
                for key in keys {
                    settling.insert(key, now);
                }
                for key in sources {
                    if let Err(e) = bridge.kv.delete(key) {
                        crate::log::warn(format!("compacted inbox key {key} left in place: {e}"))
                            .emit();
                    }
                }
            }
            // The sources stay, merged: each waits for its own second look.
            Err(e) => {
                crate::log::warn(format!("no kept copy of {} compacted {object_type} keys ({e}); they stay for their second look", sources.len())).emit();
                for key in sources {
                    settling.insert(key.clone(), now);
                }
            }
        }
    }
    let counted: Vec<&(String, usize)> = loaded
        .iter()
        .zip(&complete)
        .filter(|(_, done)| **done)
        .filter_map(|((key, _), _)| first_merges.get(key))
        .collect();
    let deliveries: HashSet<&str> = counted
        .iter()
        .map(|(delivery, _)| delivery.as_str())
        .collect();
    bridge.tally.records_accepted(
        deliveries.len() as u64,
        counted.iter().map(|(_, n)| *n as u64).sum(),
    );
    report.compacted = Some(report.compacted.unwrap_or(0) + compacted);
    report.superseded = Some(report.superseded.unwrap_or(0) + superseded);
    Ok(())
}

/// Writes a compacted chunk's records as kept copies (one key unless they exceed the value
/// budget), named to sort where the chunk's oldest delivery did; returns their keys.
fn keep_copy(
    bridge: &Bridge,
    object_type: ObjectType,
    received: i64,
    records: Vec<InboxRecord>,
) -> Result<Vec<String>, Fault> {
    let unique = format!("{:09}{}{KEPT_COPY}", 0, uuid::Uuid::new_v4().simple());
    let mut keys = Vec::new();
    for (part, entry) in inbox_entries(object_type, "", received, records)
        .into_iter()
        .enumerate()
    {
        let key = inbox_key(object_type, received, &format!("{unique}{part:04}"));
        bridge
            .kv
            .set(&key, &serde_json::to_vec(&entry).map_err(encoding)?)?;
        keys.push(key);
    }
    Ok(keys)
}
