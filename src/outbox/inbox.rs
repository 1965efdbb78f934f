//! Accepting a delivery (one inbox key per delivery, nothing read-modify-written) and
//! compacting the inbox into the pending shards after the answer.

use std::collections::{BTreeMap, HashSet};

use super::lease::{self, Lease};
use super::pending::{merge_into_pending, Incoming};
use super::shards::{self, inbox_entries, inbox_key, pending_shard_key, read_map, shard_of, write_map, InboxEntry, InboxRecord, Layout, Merge, Shard, Slot, INBOX_PREFIX};
use super::{Buffered, FlushReport};
use crate::bridge::Bridge;
use crate::fault::{encoding, Fault};
use crate::gong::models::ObjectType;
use crate::settings;
use crate::validation::ValidRecord;

/// Inbox values one compaction loads at most (keys, and bytes), so one request stays bounded.
const COMPACT_MAX_KEYS: usize = 4_000;
const COMPACT_MAX_BYTES: usize = 32 * 1024 * 1024;

/// Stores a delivery's validated records in inbox keys of its own; 202 follows. Refused (503)
/// while the store is near its key cap, so that nothing is accepted that cannot be kept.
pub fn buffer_records(bridge: &Bridge, object_type: ObjectType, records: Vec<ValidRecord>, delivery: &str) -> Result<Buffered, Fault> {
    let layout = settings::layout(bridge.config);
    let now = bridge.clock.now().unix_timestamp();
    let count = records.len();
    let mut inbox_records = Vec::with_capacity(count);
    for r in records {
        inbox_records.push(InboxRecord { m: r.modified.unix_timestamp(), l: shards::raw_line(&r.line)?, id: r.object_id });
    }
    let entries = inbox_entries(object_type, delivery, now, inbox_records);
    let keys = bridge.kv.keys()?;
    let mut in_store = keys.len();
    let inbox_before = keys.iter().filter(|k| k.starts_with(INBOX_PREFIX)).count();
    drop(keys);
    if in_store + entries.len() >= layout.admit_below {
        // Make room first: compacting the inbox frees a key per delivery.
        if let Err(e) = compact_now(bridge, layout) {
            crate::log::warn(format!("compaction to make room: {e}")).emit();
        }
        in_store = bridge.kv.keys()?.len();
        if in_store + entries.len() >= layout.admit_below {
            return Err(Fault::StoreFull {
                detail: format!(
                    "the store holds {in_store} keys and kv_max_keys is {}: nothing was accepted; the bridge is flushing to make room, re-deliver later",
                    layout.max_keys
                ),
                retry_after: 30,
            });
        }
    }
    let written = entries.len();
    // Below the second, arrivals sort by their nanoseconds, so that compaction merges them in
    // arrival order (equal modifiedDate: the later arrival wins); a random part keeps keys
    // unique across replicas, and each part of a split delivery has a key of its own.
    let arrival = format!("{:09}{}", bridge.clock.now().nanosecond(), uuid::Uuid::new_v4().simple());
    for (part, entry) in entries.into_iter().enumerate() {
        let bytes = serde_json::to_vec(&entry).map_err(encoding)?;
        bridge.kv.set(&inbox_key(object_type, now, &format!("{arrival}-{part:04}")), &bytes)?;
    }
    // Accepted already; compacting is housekeeping, done after the answer.
    Ok(Buffered { accepted: count, superseded: 0, compact_inbox: inbox_before + written >= layout.inbox_compact_at })
}

/// Compacts the inbox now, unless another replica holds the flush lease (the work after a
/// webhook whose delivery filled the inbox).
pub fn compact_inbox_now(bridge: &Bridge) -> Result<(), Fault> {
    compact_now(bridge, settings::layout(bridge.config))
}

fn compact_now(bridge: &Bridge, layout: Layout) -> Result<(), Fault> {
    let Some(mut held) = lease::take_flush_lease(bridge)? else { return Ok(()) };
    let result = (|| {
        let inbox: Vec<String> = bridge.kv.keys()?.into_iter().filter(|k| k.starts_with(INBOX_PREFIX)).collect();
        compact_inbox(bridge, layout, inbox, &mut held, &mut FlushReport::default())
    })();
    lease::release(bridge.kv, held);
    result
}

/// The received time in an inbox key name, for oldest-first order.
fn inbox_received(key: &str) -> &str {
    key.strip_prefix(INBOX_PREFIX).and_then(|rest| rest.split('/').nth(1)).unwrap_or("")
}

/// Inbox keys whose records are merged and confirmed, with when (Unix seconds): kept until
/// `inbox_release_seconds` have passed, then checked against the shards again and deleted.
const SETTLING_KEY: &str = "buffer/settling";

/// Inbox keys merged already and waiting to be released (not "waiting" records).
pub(super) fn settling(bridge: &Bridge) -> Result<BTreeMap<String, i64>, Fault> {
    read_map(bridge.kv, SETTLING_KEY)
}

/// Whether compaction has work for this inbox key now: not merged yet, or merged long enough
/// ago to be looked at again (`inbox_release_seconds`), or any merged key under key pressure.
pub(super) fn has_work(settling: &BTreeMap<String, i64>, key: &str, now: i64, release_after: i64, pressure: bool) -> bool {
    settling.get(key).is_none_or(|at| pressure || now - at >= release_after)
}

/// Moves inbox records into the pending shards (caller holds the lease), and releases inbox
/// keys merged earlier.
///
/// Why an inbox key outlives its merge: without compare-and-swap, a replica that read a shard
/// before this merge and writes it after (its lease expired while it stalled) overwrites the
/// merge. The read-back after the settle wait catches such a write only if it lands within the
/// settle time. So a merged key is kept for `inbox_release_seconds`, then its records are looked
/// up again: present (at that version or newer) → the key goes; missing → merged again. Under
/// key pressure (a full inbox) keys go right after the read-back, as the store needs the room.
pub(super) fn compact_inbox(bridge: &Bridge, layout: Layout, mut inbox: Vec<String>, held: &mut Lease, report: &mut FlushReport) -> Result<(), Fault> {
    let now = bridge.clock.now().unix_timestamp();
    let release_after = settings::inbox_release_seconds(bridge.config);
    // Lookups only: a hash set shares the component's one `HashSet<&str>` (issue 12).
    let present: HashSet<&str> = inbox.iter().map(String::as_str).collect();
    let mut settling = settling(bridge)?;
    let settling_before = settling.clone();
    settling.retain(|key, _| present.contains(key.as_str()));
    let unmerged = inbox.iter().filter(|k| !settling.contains_key(*k)).count();
    let pressure = release_after == 0 || unmerged >= layout.inbox_compact_at || inbox.len() >= 2 * layout.inbox_compact_at;
    // Keys merged before are loaded again only once they may be released.
    inbox.retain(|key| has_work(&settling, key, now, release_after, pressure));
    crate::sorting::sort_by(&mut inbox, |a, b| inbox_received(a).cmp(inbox_received(b)).then(a.cmp(b)));
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
            Err(e) => crate::log::warn(format!("inbox value {key} is unreadable ({e}); left in place")).emit(),
        }
    }
    // Release the keys merged before whose records the shards still hold; merge the others again.
    let mut shards_read: BTreeMap<String, Shard> = BTreeMap::new();
    let mut to_merge = Vec::with_capacity(loaded.len());
    // Inbox keys merged for the first time (not a second look): what the counters count.
    let mut first_merges: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for (key, entry) in loaded {
        if settling.remove(&key).is_none() {
            first_merges.insert(key.clone(), (entry.d.clone(), entry.records.len()));
            to_merge.push((key, entry));
            continue;
        }
        let mut held_by_shards = true;
        for r in &entry.records {
            let shard_key = pending_shard_key(entry.t, shard_of(&r.id, layout.pending_shards));
            if !shards_read.contains_key(&shard_key) {
                shards_read.insert(shard_key.clone(), read_map(bridge.kv, &shard_key)?);
            }
            if shards_read[&shard_key].get(&r.id).is_none_or(|slot| slot.modified < r.m) {
                held_by_shards = false;
                break;
            }
        }
        if held_by_shards {
            // A failed delete leaves records that merge again as duplicates: nothing lost.
            if let Err(e) = bridge.kv.delete(&key) {
                crate::log::warn(format!("released inbox key {key} left in place: {e}")).emit();
            }
        } else {
            crate::log::warn(format!("records of {key} were overwritten in their shard by a concurrent writer; merging them again")).emit();
            to_merge.push((key, entry));
        }
    }
    let mut loaded = to_merge;
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
        if !lease::still_held(bridge, held) {
            // Another replica has the lease now (this run outlived it): it compacts the rest.
            break;
        }
        for merged in merge_into_pending(bridge, layout, object_type, incoming)? {
            if !merged.confirmed {
                complete[merged.tag] = false;
            } else if merged.outcome == Merge::Superseded {
                superseded += 1;
            } else {
                compacted += 1;
            }
        }
        for ((key, entry), done) in loaded.iter().zip(&complete) {
            if !*done || entry.t != object_type {
                continue;
            }
            if pressure {
                // This type's inbox keys go before the next type's shards are created, so the
                // store needs room for at most one type's new shards (`Layout::admit_below`).
                if let Err(e) = bridge.kv.delete(key) {
                    crate::log::warn(format!("compacted inbox key {key} left in place: {e}")).emit();
                }
            } else {
                settling.insert(key.clone(), now);
            }
        }
    }
    if settling != settling_before {
        write_map(bridge.kv, SETTLING_KEY, &settling)?;
    }
    let counted: Vec<&(String, usize)> = loaded.iter().zip(&complete).filter(|(_, done)| **done).filter_map(|((key, _), _)| first_merges.get(key)).collect();
    let deliveries: HashSet<&str> = counted.iter().map(|(delivery, _)| delivery.as_str()).collect();
    bridge.tally.records_accepted(deliveries.len() as u64, counted.iter().map(|(_, n)| *n as u64).sum());
    report.compacted = Some(report.compacted.unwrap_or(0) + compacted);
    report.superseded = Some(report.superseded.unwrap_or(0) + superseded);
    Ok(())
}
