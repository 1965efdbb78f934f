//! The pending shards and their summary: merging versions in (newer wins; equal modifiedDate:
//! the later arrival wins) and confirming each merge by reading the shard back.

use std::collections::BTreeMap;

use serde_json::json;

use super::shards::{
    self, pending_shard_key, read_map, shard_of, write_map, Layout, Merge, Shard, Slot, Summary,
    SHARD_BUDGET_BYTES, SUMMARY_KEY,
};
use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::gong::models::ObjectType;
use crate::settings;

pub(super) fn read_summary(bridge: &Bridge) -> Result<Summary, Fault> {
    match bridge.kv.get(SUMMARY_KEY)? {
        None => Ok(Summary::new()),
        // A hint only: an unreadable one is rebuilt from the shards.
        Some(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
    }
}

pub(super) fn write_summary(bridge: &Bridge, summary: &Summary) -> Result<(), Fault> {
    bridge.store().put_json(SUMMARY_KEY, summary)
}

pub(super) fn set_stat(summary: &mut Summary, object_type: ObjectType, n: u32, shard: &Shard) {
    let stat = shards::stat(shard);
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

pub(super) fn pending_report(summary: &Summary) -> serde_json::Value {
    // Inserted one by one: collecting would instantiate a sort for the map (crate::sorting).
    let mut report = serde_json::Map::new();
    for (t, stats) in summary {
        let s = shards::type_summary(stats);
        report.insert(t.clone(), json!({"records": s.records, "versions": s.versions, "bytes": s.bytes, "oldestReceived": s.oldest_received}));
    }
    serde_json::Value::Object(report)
}

// ----- merging into the pending shards ---------------------------------------------------------

pub(super) struct Incoming {
    pub object_id: String,
    pub slot: Slot,
    pub requeue: bool,
    /// The caller's label (e.g. which inbox key brought it).
    pub tag: usize,
}

pub(super) struct Merged {
    pub tag: usize,
    pub outcome: Merge,
    /// Read back from the shard after the write: the shard holds this version or a newer one.
    pub confirmed: bool,
}

/// Merges versions into a type's pending shards (the caller holds the flush lease). A version
/// that does not fit its shard's budget is left unconfirmed (its source keeps it).
pub(super) fn merge_into_pending(
    bridge: &Bridge,
    layout: Layout,
    object_type: ObjectType,
    incoming: Vec<Incoming>,
) -> Result<Vec<Merged>, Fault> {
    let now = bridge.clock.now().unix_timestamp();
    let keep = settings::idempotency_ttl(bridge.config).as_secs() as i64;
    let mut by_shard: BTreeMap<u32, Vec<Incoming>> = BTreeMap::new();
    for item in incoming {
        by_shard
            .entry(shard_of(&item.object_id, layout.pending_shards))
            .or_default()
            .push(item);
    }
    let mut out = Vec::new();
    let mut written = Vec::new();
    for (n, items) in by_shard {
        let key = pending_shard_key(object_type, n);
        let mut shard: Shard = read_map(bridge.kv, &key)?;
        let mut size = shards::prune(&mut shard, now, keep, SHARD_BUDGET_BYTES);
        let mut expected = Vec::with_capacity(items.len());
        for item in items {
            let bytes = item.slot.estimated_bytes(&item.object_id);
            if size + bytes > SHARD_BUDGET_BYTES
                && shard
                    .get(&item.object_id)
                    .is_none_or(|s| s.modified <= item.slot.modified)
            {
                out.push(Merged {
                    tag: item.tag,
                    outcome: Merge::Added,
                    confirmed: false,
                });
                continue;
            }
            let (modified, requeue) = (item.slot.modified, item.requeue);
            let digest = item
                .slot
                .line
                .as_ref()
                .map(|l| shards::line_digest(l.get().as_bytes()))
                .unwrap_or_default();
            let outcome = shards::merge(&mut shard, &item.object_id, item.slot, item.requeue);
            if matches!(outcome, Merge::Added | Merge::Replaced) {
                size += bytes;
            }
            expected.push((item.tag, item.object_id, modified, digest, requeue, outcome));
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
        for (tag, object_id, modified, digest, requeue, outcome) in expected {
            let confirmed = stored.get(&object_id).is_some_and(|s| {
                // A re-queued version must be pending again, not just known to have been sent;
                // an arrival held as sent must be the edit that was sent.
                let sent_this = s
                    .sent
                    .as_ref()
                    .is_some_and(|sent| sent.h.is_empty() || sent.h == digest);
                // A re-queue kept out by another edit of the same modifiedDate, sent since, is done too.
                let sent_other = s
                    .sent
                    .as_ref()
                    .is_some_and(|sent| !sent.h.is_empty() && sent.h != digest);
                s.modified > modified
                    || (s.modified == modified
                        && (s.is_pending() || if requeue { sent_other } else { sent_this }))
            });
            out.push(Merged {
                tag,
                outcome,
                confirmed,
            });
        }
        set_stat(&mut summary, object_type, n, &stored);
    }
    write_summary(bridge, &summary)?;
    Ok(out)
}

pub(super) fn settle(bridge: &Bridge) {
    let settle = settings::idempotency_settle(bridge.config);
    if !settle.is_zero() {
        bridge.clock.sleep(settle);
    }
}
