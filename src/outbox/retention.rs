//! Retention of request records: the store keeps at most `request_retention` of them (from the
//! key budget), removing the oldest finished ones with their line maps and index keys.

use super::requests::{self, PAYLOAD};
use super::shards::Layout;
use super::INFLIGHT_PREFIX;
use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::tracking::{RequestRecord, TrackedStatus};

/// When the next age sweep of request records is due (Unix seconds).
use crate::keys::NEXT_AGE_SWEEP as NEXT_AGE_SWEEP_KEY;
/// Age sweeps run at most this often (each reads every request record).
const AGE_SWEEP_EVERY_SECONDS: i64 = 3_600;

/// Whether retention has work: more records than `request_retention`, or an age sweep due.
pub(super) fn due(bridge: &Bridge, layout: Layout, requests_kept: usize) -> Result<bool, Fault> {
    if requests_kept > layout.request_retention {
        return Ok(true);
    }
    let next: Option<i64> = bridge.store().get_json(NEXT_AGE_SWEEP_KEY)?;
    Ok(requests_kept > 0 && next.is_none_or(|at| at <= bridge.clock.now().unix_timestamp()))
}

/// Keeps at most `request_retention` request records, and none finished longer ago than
/// `idempotency_ttl_seconds` (7 days): the oldest finished ones go, with their line maps and
/// index keys. Requests still in flight, or holding a file for a retry, stay.
pub(super) fn retain_requests(bridge: &Bridge, layout: Layout) -> Result<usize, Fault> {
    let now = bridge.clock.now().unix_timestamp();
    bridge
        .store()
        .put_json(NEXT_AGE_SWEEP_KEY, &(now + AGE_SWEEP_EVERY_SECONDS))?;
    let max_age = crate::settings::idempotency_ttl(bridge.config).as_secs() as i64;
    let keys = bridge.kv.keys()?;
    let request_keys: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with(crate::keys::REQUEST_PREFIX))
        .collect();
    let mut finished: Vec<RequestRecord> = Vec::new();
    for key in &request_keys {
        let Some(record) = bridge.store().get_json::<RequestRecord>(key).ok().flatten() else {
            continue;
        };
        let in_flight = keys
            .iter()
            .any(|k| k.strip_prefix(INFLIGHT_PREFIX) == Some(record.client_request_id.as_str()));
        let holds_file = record.status == TrackedStatus::NotSent && !record.from_buffer;
        if (record.status.is_final()
            || (record.status == TrackedStatus::NotSent && record.from_buffer))
            && !in_flight
            && !holds_file
        {
            finished.push(record);
        }
    }
    crate::sorting::sort_by(&mut finished, |a, b| a.submitted_at.cmp(&b.submitted_at));
    let finished_at = |r: &RequestRecord| {
        crate::validation::parse_gong_datetime(&r.updated_at)
            .map(|t| t.unix_timestamp())
            .unwrap_or(now)
    };
    let target = layout.request_retention * 3 / 4;
    let over = if request_keys.len() > layout.request_retention {
        request_keys.len().saturating_sub(target)
    } else {
        0
    };
    // Every expired one, and the oldest others while over the count.
    let (expired, rest): (Vec<RequestRecord>, Vec<RequestRecord>) = finished
        .into_iter()
        .partition(|r| now - finished_at(r) > max_age);
    let extra = over.saturating_sub(expired.len());
    let removed: Vec<RequestRecord> = expired
        .into_iter()
        .chain(rest.into_iter().take(extra))
        .collect();
    let excess = removed.len();
    let store = bridge.store();
    for record in removed.iter() {
        let id = &record.client_request_id;
        store.delete_blob(PAYLOAD, id, record.payload_chunks)?;
        store.delete_blob(requests::LINES, id, record.line_map_chunks)?;
        let suffix = format!("/{id}");
        for index in keys
            .iter()
            .filter(|k| k.starts_with(crate::keys::REQUEST_INDEX_PREFIX) && k.ends_with(&suffix))
        {
            store.delete(index)?;
        }
        store.delete(&crate::store::request_key(id))?;
    }
    Ok(excess)
}
