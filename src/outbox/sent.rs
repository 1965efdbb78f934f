//! Where bulk uploads (`POST /records`, later a sync) put each record: the same per-record
//! tombstones (file, line, modifiedDate, digest) that webhook records get in their pending
//! shard, so "where is my record" answers for every path inside the bounded layout.
//!
//! The upload writes one blob per file (`blob/sent/{clientRequestId}/{n}`: a line
//! `objectId\tmodifiedDate\tdigest` per record, chunked like every blob): O(1) writes per file.
//! The engine, under its lease, folds it into the shards (at most one write per shard touched)
//! right after the upload's answer or in its next run, confirms by reading back after the
//! settle time, and only then deletes the blob. Until then, a lookup reads the blob itself.

use std::collections::BTreeMap;

use super::pending::{read_summary, set_stat, settle, write_summary};
use super::shards::{self, pending_shard_key, read_map, shard_of, write_map, Sent, Shard};
use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::gong::models::ObjectType;
use crate::settings;

/// The blob kind (`blob/sent/…`).
use crate::keys::BLOB_SENT as KIND;

/// Where the blobs of this kind start (`blob/sent/`).
fn prefix() -> String {
    format!("{}{KIND}/", crate::keys::BLOB_PREFIX)
}

/// One record of a bulk file.
#[derive(Debug, Clone, PartialEq)]
pub struct SentLine {
    pub object_id: String,
    pub modified: i64,
    pub digest: String,
}

/// The file's header line: objectType and when Gong accepted it.
fn encode(object_type: ObjectType, at: i64, lines: &[SentLine]) -> Vec<u8> {
    let mut out = format!("{}\t{at}\n", object_type.as_str());
    for l in lines {
        out.push_str(&format!("{}\t{}\t{}\n", l.object_id, l.modified, l.digest));
    }
    out.into_bytes()
}

fn decode(bytes: &[u8]) -> Option<(ObjectType, i64, Vec<SentLine>)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut rows = text.lines();
    let (t, at) = rows.next()?.split_once('\t')?;
    let object_type = ObjectType::parse_upload(t)?;
    let at = at.parse().ok()?;
    let mut lines = Vec::new();
    for row in rows {
        let mut parts = row.split('\t');
        let (Some(id), Some(m), Some(h)) = (parts.next(), parts.next(), parts.next()) else {
            return None;
        };
        lines.push(SentLine {
            object_id: id.to_owned(),
            modified: m.parse().ok()?,
            digest: h.to_owned(),
        });
    }
    Some((object_type, at, lines))
}

/// The lines of an LDJSON file the bridge built, in file order (line 1 first).
pub fn lines_of(ldjson: &[u8]) -> Vec<SentLine> {
    ldjson
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|line| {
            super::follow::identify(line).map(|(object_id, modified)| SentLine {
                object_id,
                modified,
                digest: shards::line_digest(line),
            })
        })
        .collect()
}

/// Records that Gong accepted `lines` of a bulk file (after its 201): one blob, folded into
/// the shards by the engine.
pub fn record_bulk(
    bridge: &Bridge,
    client_request_id: &str,
    object_type: ObjectType,
    lines: &[SentLine],
) -> Result<(), Fault> {
    if lines.is_empty() {
        return Ok(());
    }
    let at = bridge.clock.now().unix_timestamp();
    bridge
        .store()
        .put_blob(KIND, client_request_id, &encode(object_type, at, lines))?;
    Ok(())
}

/// Bulk files waiting to be folded in, with their chunk counts.
fn waiting(keys: &[String]) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    let prefix = prefix();
    for key in keys {
        let Some((id, n)) = key
            .strip_prefix(prefix.as_str())
            .and_then(|rest| rest.rsplit_once('/'))
        else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else { continue };
        let chunks = out.entry(id.to_owned()).or_default();
        *chunks = (*chunks).max(n + 1);
    }
    out
}

pub fn any_waiting(keys: &[String]) -> bool {
    keys.iter().any(|k| k.starts_with(prefix().as_str()))
}

/// Where a waiting (not yet folded) bulk file put this record: (clientRequestId, line, at).
pub fn find_waiting(
    bridge: &Bridge,
    object_type: ObjectType,
    object_id: &str,
) -> Result<Option<(String, usize, i64)>, Fault> {
    let keys = bridge.kv.keys()?;
    let mut found = None;
    for (id, chunks) in waiting(&keys) {
        let Some(bytes) = bridge.store().get_blob(KIND, &id, chunks)? else {
            continue;
        };
        let Some((t, at, lines)) = decode(&bytes) else {
            continue;
        };
        if t != object_type {
            continue;
        }
        if let Some(line) = lines.iter().position(|l| l.object_id == object_id) {
            // The newest upload wins.
            if found.as_ref().is_none_or(|(_, _, seen)| *seen <= at) {
                found = Some((id.clone(), line + 1, at));
            }
        }
    }
    Ok(found)
}

/// Folds waiting bulk files into the pending shards (the caller holds the flush lease).
/// Returns how many files were folded.
pub(super) fn fold_waiting(bridge: &Bridge) -> Result<usize, Fault> {
    let keys = bridge.kv.keys()?;
    let files = waiting(&keys);
    drop(keys);
    let layout = settings::layout(bridge.config);
    let mut folded = 0;
    for (client_request_id, chunks) in files {
        let Some(bytes) = bridge.store().get_blob(KIND, &client_request_id, chunks)? else {
            continue;
        };
        let Some((object_type, at, lines)) = decode(&bytes) else {
            crate::log::warn(format!(
                "the bulk index of {client_request_id} is unreadable; removed"
            ))
            .emit();
            let _ = bridge.store().delete_blob(KIND, &client_request_id, chunks);
            continue;
        };
        let mut by_shard: BTreeMap<u32, Vec<(usize, SentLine)>> = BTreeMap::new();
        for (i, line) in lines.into_iter().enumerate() {
            by_shard
                .entry(shard_of(&line.object_id, layout.pending_shards))
                .or_default()
                .push((i + 1, line));
        }
        let mut written = Vec::new();
        for (n, items) in &by_shard {
            let key = pending_shard_key(object_type, *n);
            let mut shard: Shard = read_map(bridge.kv, &key)?;
            for (line_no, l) in items {
                shards::record_sent(
                    &mut shard,
                    &l.object_id,
                    l.modified,
                    &l.digest,
                    Sent {
                        at,
                        c: client_request_id.clone(),
                        n: *line_no,
                        h: String::new(),
                    },
                );
            }
            shards::prune(
                &mut shard,
                bridge.clock.now().unix_timestamp(),
                settings::idempotency_ttl(bridge.config).as_secs() as i64,
                shards::SHARD_BUDGET_BYTES,
            );
            write_map(bridge.kv, &key, &shard)?;
            written.push((*n, key));
        }
        // Read back after the settle time, as every shard write is: a concurrent writer's
        // overwrite leaves the blob for the next run (folding it again changes nothing).
        settle(bridge);
        let mut summary = read_summary(bridge)?;
        let mut confirmed = true;
        for (n, key) in written {
            let stored: Shard = read_map(bridge.kv, &key)?;
            for (_, l) in &by_shard[&n] {
                // Held at this version or newer, or pruned for room (a tombstone may go).
                let held = stored
                    .get(&l.object_id)
                    .is_none_or(|slot| slot.modified >= l.modified);
                confirmed &= held;
            }
            set_stat(&mut summary, object_type, n, &stored);
        }
        write_summary(bridge, &summary)?;
        if confirmed {
            if let Err(e) = bridge.store().delete_blob(KIND, &client_request_id, chunks) {
                crate::log::warn(format!(
                    "the folded bulk index of {client_request_id} left in place: {e}"
                ))
                .emit();
            }
            folded += 1;
        }
    }
    Ok(folded)
}

/// Folds waiting bulk files now, waiting for the flush lease within the work budget (the
/// work after a bulk upload's answer); else the lease holder's next run folds them.
pub fn fold_now(bridge: &Bridge) -> Result<(), Fault> {
    super::lease::when_held(bridge, |_| fold_waiting(bridge)).map(|_| ())
}
