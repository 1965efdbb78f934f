//! Retention of request records: the store keeps at most `request_retention` of them (from the
//! key budget), removing the oldest finished ones with their line maps and index keys.

use super::requests::{self, PAYLOAD};
use super::shards::Layout;
use super::INFLIGHT_PREFIX;
use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::tracking::{RequestRecord, TrackedStatus};

/// Keeps at most `request_retention` request records: the oldest finished ones go, with their
/// line maps and index keys. Requests still in flight, or holding a file for a retry, stay.
pub(super) fn retain_requests(bridge: &Bridge, layout: Layout) -> Result<usize, Fault> {
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
