//! The failure store: records Gong refused, with its reason, kept in the failure shards until
//! discarded or re-queued (re-queue never puts an older version over a newer one). Operators act
//! on it through commands (`commands.rs`); the second look at re-queues is here.

use std::collections::BTreeMap;

use super::pending::{merge_into_pending, Incoming};
use super::shards::{
    self, failure_shard_key, read_map, shard_of, write_map, Slot, FAILURE_SHARD_PREFIX,
};
use super::Failure;
use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::gong::models::ObjectType;
use crate::settings;

fn failure_shard_keys(
    bridge: &Bridge,
    object_type: Option<ObjectType>,
) -> Result<Vec<String>, Fault> {
    let prefix = match object_type {
        Some(t) => format!("{FAILURE_SHARD_PREFIX}{}/", t.as_str()),
        None => FAILURE_SHARD_PREFIX.to_owned(),
    };
    Ok(bridge
        .kv
        .keys()?
        .into_iter()
        .filter(|k| k.starts_with(&prefix))
        .collect())
}

pub fn list_failures(
    bridge: &Bridge,
    object_type: Option<ObjectType>,
    limit: usize,
) -> Result<(Vec<Failure>, usize), Fault> {
    let mut all = Vec::new();
    for key in failure_shard_keys(bridge, object_type)? {
        let shard: BTreeMap<String, Failure> = read_map(bridge.kv, &key)?;
        all.extend(shard.into_values().filter(Failure::is_open));
    }
    crate::sorting::sort_by(&mut all, |a, b| {
        (a.object_type.as_str(), &a.object_id).cmp(&(b.object_type.as_str(), &b.object_id))
    });
    let total = all.len();
    all.truncate(limit);
    Ok((all, total))
}

/// The failure stored for one record, if any.
pub fn find_failure(
    bridge: &Bridge,
    object_type: ObjectType,
    object_id: &str,
) -> Result<Option<Failure>, Fault> {
    let layout = settings::layout(bridge.config);
    let mut shard: BTreeMap<String, Failure> = read_map(
        bridge.kv,
        &failure_shard_key(object_type, shard_of(object_id, layout.failure_shards)),
    )?;
    Ok(shard.remove(object_id).filter(Failure::is_open))
}

/// Failure shards holding re-queued failures, with the earliest re-queue in each.
pub(super) use crate::keys::RETRIED as RETRIED_KEY;

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
            let Some(retried_at) = f.retried_at else {
                continue;
            };
            if now - retried_at < release_after {
                earliest = Some(earliest.map_or(retried_at, |e: i64| e.min(retried_at)));
                continue;
            }
            if super::follow::requeue_held(
                bridge,
                layout,
                object_type,
                id,
                f.modified,
                f.line.as_bytes(),
                retried_at,
            )? {
                released.push(id.clone());
            } else {
                // Written again, and looked at again later (against this new time).
                crate::log::warn(format!("the re-queue of {object_type} {id} was overwritten by a concurrent writer; re-queuing it again")).emit();
                again.push(Incoming {
                    object_id: id.clone(),
                    slot: Slot::pending(
                        f.modified,
                        now,
                        0,
                        "",
                        shards::raw_line(f.line.as_bytes())?,
                    ),
                    requeue: true,
                    tag: 0,
                });
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
