//! The failure store: records Gong refused, with its reason, kept in the failure shards until
//! discarded or re-queued (re-queue never puts an older version over a newer one).

use std::collections::BTreeMap;

use super::lease::under_flush_lease;
use super::pending::{merge_into_pending, Incoming};
use super::shards::{self, failure_shard_key, read_map, shard_of, write_map, Slot, FAILURE_SHARD_PREFIX};
use super::{inflight_key, Failure, InFlight};
use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::gong::models::ObjectType;
use crate::settings;

fn failure_shard_keys(bridge: &Bridge, object_type: Option<ObjectType>) -> Result<Vec<String>, Fault> {
    let prefix = match object_type {
        Some(t) => format!("{FAILURE_SHARD_PREFIX}{}/", t.as_str()),
        None => FAILURE_SHARD_PREFIX.to_owned(),
    };
    Ok(bridge.kv.keys()?.into_iter().filter(|k| k.starts_with(&prefix)).collect())
}

pub fn list_failures(bridge: &Bridge, object_type: Option<ObjectType>, limit: usize) -> Result<(Vec<Failure>, usize), Fault> {
    let mut all = Vec::new();
    for key in failure_shard_keys(bridge, object_type)? {
        let shard: BTreeMap<String, Failure> = read_map(bridge.kv, &key)?;
        all.extend(shard.into_values().filter(|f| f.retried_at.is_none()));
    }
    crate::sorting::sort_by(&mut all, |a, b| (a.object_type.as_str(), &a.object_id).cmp(&(b.object_type.as_str(), &b.object_id)));
    let total = all.len();
    all.truncate(limit);
    Ok((all, total))
}

/// The failure stored for one record, if any.
pub fn find_failure(bridge: &Bridge, object_type: ObjectType, object_id: &str) -> Result<Option<Failure>, Fault> {
    let layout = settings::layout(bridge.config);
    let mut shard: BTreeMap<String, Failure> = read_map(bridge.kv, &failure_shard_key(object_type, shard_of(object_id, layout.failure_shards)))?;
    Ok(shard.remove(object_id).filter(|f| f.retried_at.is_none()))
}

/// Removes one failure explicitly; `false` when there was none.
pub fn discard_failure(bridge: &Bridge, object_type: ObjectType, object_id: &str) -> Result<bool, Fault> {
    let layout = settings::layout(bridge.config);
    under_flush_lease(bridge, |_| {
        let key = failure_shard_key(object_type, shard_of(object_id, layout.failure_shards));
        let mut shard: BTreeMap<String, Failure> = read_map(bridge.kv, &key)?;
        let Some(removed) = shard.remove(object_id).filter(|f| f.retried_at.is_none()) else { return Ok(false) };
        // A file still settling would write the failure again on its second look.
        let marker_key = inflight_key(&removed.client_request_id);
        if let Some(mut marker) = bridge.store().get_json::<InFlight>(&marker_key)? {
            marker.discarded.push(object_id.to_owned());
            bridge.store().put_json(&marker_key, &marker)?;
        }
        write_map(bridge.kv, &key, &shard)?;
        Ok(true)
    })
}

/// Puts failures back to pending: pending shards first, then the failure shard, so a crash in
/// between leaves a record in both, never in neither.
pub fn retry_failures(bridge: &Bridge, object_type: Option<ObjectType>, ids: Option<&[String]>) -> Result<usize, Fault> {
    let layout = settings::layout(bridge.config);
    let release_after = settings::inbox_release_seconds(bridge.config);
    under_flush_lease(bridge, |_| {
        let now = bridge.clock.now().unix_timestamp();
        let mut requeued = 0;
        let mut retried: BTreeMap<String, i64> = BTreeMap::new();
        for key in failure_shard_keys(bridge, object_type)? {
            let Some((shard_type, _)) = shards::parse_shard_key(&key, FAILURE_SHARD_PREFIX) else { continue };
            let mut shard: BTreeMap<String, Failure> = read_map(bridge.kv, &key)?;
            let picked: Vec<String> =
                shard.iter().filter(|(id, f)| f.retried_at.is_none() && ids.is_none_or(|ids| ids.contains(id))).map(|(id, _)| id.clone()).collect();
            if picked.is_empty() {
                continue;
            }
            let mut incoming = Vec::new();
            for (tag, id) in picked.iter().enumerate() {
                let f = &shard[id];
                incoming.push(Incoming { object_id: id.clone(), slot: Slot::pending(f.modified, now, 0, "", shards::raw_line(f.line.as_bytes())?), requeue: true, tag });
            }
            for merged in merge_into_pending(bridge, layout, shard_type, incoming)? {
                if merged.confirmed {
                    let id = &picked[merged.tag];
                    if release_after == 0 {
                        shard.remove(id);
                    } else if let Some(f) = shard.get_mut(id) {
                        // Kept (hidden) until a second look finds it pending: a replica stalled
                        // mid-write could still overwrite this re-queue.
                        f.retried_at = Some(now);
                        retried.entry(key.clone()).or_insert(now);
                    }
                    requeued += 1;
                }
            }
            write_map(bridge.kv, &key, &shard)?;
        }
        if release_after > 0 && !retried.is_empty() {
            let mut settling: BTreeMap<String, i64> = read_map(bridge.kv, RETRIED_KEY)?;
            for (key, at) in retried {
                settling.entry(key).or_insert(at);
            }
            write_map(bridge.kv, RETRIED_KEY, &settling)?;
        }
        Ok(requeued)
    })
}

/// Failure shards holding re-queued failures, with the earliest re-queue in each.
pub(super) const RETRIED_KEY: &str = "buffer/retried";

/// The second look at re-queued failures (caller holds the lease): a failure whose record the
/// pending shards hold again (or a newer version, or a later send) goes; one whose re-queue was
/// overwritten is re-queued again.
pub(super) fn release_retried(bridge: &Bridge) -> Result<(), Fault> {
    let layout = settings::layout(bridge.config);
    let now = bridge.clock.now().unix_timestamp();
    let release_after = settings::inbox_release_seconds(bridge.config);
    let mut settling: BTreeMap<String, i64> = read_map(bridge.kv, RETRIED_KEY)?;
    let before = settling.clone();
    for (key, at) in before.iter() {
        if now - at < release_after {
            continue;
        }
        let Some((object_type, _)) = shards::parse_shard_key(key, FAILURE_SHARD_PREFIX) else {
            settling.remove(key);
            continue;
        };
        let mut shard: BTreeMap<String, Failure> = read_map(bridge.kv, key)?;
        let mut again = Vec::new();
        let mut released = Vec::new();
        let mut earliest = None;
        for (id, f) in shard.iter_mut() {
            let Some(retried_at) = f.retried_at else { continue };
            if now - retried_at < release_after {
                earliest = Some(earliest.map_or(retried_at, |e: i64| e.min(retried_at)));
                continue;
            }
            if super::follow::requeue_held(bridge, layout, object_type, id, f.modified, f.line.as_bytes(), retried_at)? {
                released.push(id.clone());
            } else {
                // Written again, and looked at again later (against this new time).
                crate::log::warn(format!("the re-queue of {object_type} {id} was overwritten by a concurrent writer; re-queuing it again")).emit();
                again.push(Incoming { object_id: id.clone(), slot: Slot::pending(f.modified, now, 0, "", shards::raw_line(f.line.as_bytes())?), requeue: true, tag: 0 });
                f.retried_at = Some(now);
                earliest = Some(earliest.map_or(now, |e: i64| e.min(now)));
            }
        }
        let merged = merge_into_pending(bridge, layout, object_type, again)?;
        if merged.iter().any(|m| !m.confirmed) {
            // Not written yet (a full shard): the failures stay for the next look.
            continue;
        }
        for id in released {
            shard.remove(&id);
        }
        write_map(bridge.kv, key, &shard)?;
        match earliest {
            Some(at) => settling.insert(key.clone(), at),
            None => settling.remove(key),
        };
    }
    if settling != before {
        write_map(bridge.kv, RETRIED_KEY, &settling)?;
    }
    Ok(())
}