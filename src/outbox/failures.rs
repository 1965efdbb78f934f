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
        all.extend(shard.into_values());
    }
    all.sort_by(|a, b| (a.object_type.as_str(), &a.object_id).cmp(&(b.object_type.as_str(), &b.object_id)));
    let total = all.len();
    all.truncate(limit);
    Ok((all, total))
}

/// The failure stored for one record, if any.
pub fn find_failure(bridge: &Bridge, object_type: ObjectType, object_id: &str) -> Result<Option<Failure>, Fault> {
    let layout = settings::layout(bridge.config);
    let mut shard: BTreeMap<String, Failure> = read_map(bridge.kv, &failure_shard_key(object_type, shard_of(object_id, layout.failure_shards)))?;
    Ok(shard.remove(object_id))
}

/// Removes one failure explicitly; `false` when there was none.
pub fn discard_failure(bridge: &Bridge, object_type: ObjectType, object_id: &str) -> Result<bool, Fault> {
    let layout = settings::layout(bridge.config);
    under_flush_lease(bridge, |_| {
        let key = failure_shard_key(object_type, shard_of(object_id, layout.failure_shards));
        let mut shard: BTreeMap<String, Failure> = read_map(bridge.kv, &key)?;
        let Some(removed) = shard.remove(object_id) else { return Ok(false) };
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
    under_flush_lease(bridge, |_| {
        let now = bridge.clock.now().unix_timestamp();
        let mut requeued = 0;
        for key in failure_shard_keys(bridge, object_type)? {
            let Some((shard_type, _)) = shards::parse_shard_key(&key, FAILURE_SHARD_PREFIX) else { continue };
            let mut shard: BTreeMap<String, Failure> = read_map(bridge.kv, &key)?;
            let picked: Vec<String> = shard.keys().filter(|id| ids.is_none_or(|ids| ids.contains(id))).cloned().collect();
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
                    shard.remove(&picked[merged.tag]);
                    requeued += 1;
                }
            }
            write_map(bridge.kv, &key, &shard)?;
        }
        Ok(requeued)
    })
}