//! What the buffer holds right now, per object type, for the status page, `GET /status` and
//! `GET /metrics`: read-only, from one key listing plus the summary, the in-flight markers with
//! their request records, and the failure shards.

use std::collections::BTreeMap;

use serde::Serialize;

use super::pending::read_summary;
use super::shards::{self, read_map, FAILURE_SHARD_PREFIX, INBOX_PREFIX};
use super::{inflight_key, Failure, InFlight, INFLIGHT_PREFIX};
use crate::bridge::Bridge;
use crate::calls::QUOTA_KEY;
use crate::fault::Fault;
use crate::gong::models::ObjectType;
use crate::quota::{self, QuotaState, Usage};
use crate::settings;
use crate::tracking::TrackedStatus;

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeOverview {
    /// Records waiting in the pending shards (distinct records).
    pub pending_records: usize,
    /// Webhook deliveries received but not merged into the shards yet (their records are not
    /// in `pendingRecords`).
    pub inbox_deliveries: usize,
    /// Unix seconds of the oldest waiting record or delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_pending_received: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_pending_age_seconds: Option<i64>,
    pub files_in_flight: usize,
    pub failures: usize,
}

/// A file sent from the buffer whose final status has not been applied yet.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileOverview {
    pub client_request_id: String,
    pub object_type: ObjectType,
    pub records: usize,
    pub gong_status: TrackedStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gong_request_id: Option<String>,
    pub sent_at: i64,
    /// Unix seconds of the next status poll (absent: at the next run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_poll_at: Option<i64>,
    pub polls: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Keys {
    pub total: usize,
    /// What the layout plans for (`kv_max_keys`, or 4,096 on an uncapped store).
    pub budget: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    pub now: i64,
    pub types: BTreeMap<String, TypeOverview>,
    pub files_in_flight: Vec<FileOverview>,
    pub quota: Usage,
    pub keys: Keys,
}

/// Reads the overview; nothing is written.
pub fn overview(bridge: &Bridge) -> Result<Overview, Fault> {
    let now_ms = (bridge.clock.now().unix_timestamp_nanos() / 1_000_000) as i64;
    let now = now_ms.div_euclid(1000);
    let keys = bridge.kv.keys()?;
    let mut types: BTreeMap<String, TypeOverview> = BTreeMap::new();

    for (object_type, stats) in read_summary(bridge)? {
        let summary = shards::type_summary(&stats);
        let t = types.entry(object_type).or_default();
        t.pending_records = summary.records;
        t.oldest_pending_received = summary.oldest_received;
    }
    // Inbox keys are `inbox/{TYPE}/{received}/{unique}`; those merged already wait only to be
    // released, and their records are counted in the shards.
    let merged: std::collections::HashSet<String> =
        super::inbox::settling(bridge)?.into_keys().collect();
    for key in keys
        .iter()
        .filter(|k| k.starts_with(INBOX_PREFIX) && !merged.contains(*k))
    {
        let mut parts = key[INBOX_PREFIX.len()..].split('/');
        let (Some(object_type), Some(received)) = (
            parts.next(),
            parts.next().and_then(|r| r.parse::<i64>().ok()),
        ) else {
            continue;
        };
        let t = types.entry(object_type.to_owned()).or_default();
        t.inbox_deliveries += 1;
        t.oldest_pending_received = Some(
            t.oldest_pending_received
                .map_or(received, |o| o.min(received)),
        );
    }

    let mut files = Vec::new();
    for key in keys.iter().filter(|k| k.starts_with(INFLIGHT_PREFIX)) {
        let id = &key[INFLIGHT_PREFIX.len()..];
        let Some(marker) = bridge.store().get_json::<InFlight>(&inflight_key(id))? else {
            continue;
        };
        let record = match super::requests::load(bridge, id) {
            Ok(record) => record,
            Err(Fault::NoSuchRequest(_)) => continue,
            Err(e) => return Err(e),
        };
        types
            .entry(marker.object_type.as_str().to_owned())
            .or_default()
            .files_in_flight += 1;
        files.push(FileOverview {
            client_request_id: id.to_owned(),
            object_type: marker.object_type,
            records: record.record_count.unwrap_or(0),
            gong_status: record.status,
            gong_request_id: record.gong_request_id,
            sent_at: marker.sent_at,
            next_poll_at: record.next_poll_at,
            polls: record.polls,
        });
    }
    crate::sorting::sort_by_key(&mut files, |f| (f.sent_at, f.client_request_id.clone()));

    for key in keys.iter().filter(|k| k.starts_with(FAILURE_SHARD_PREFIX)) {
        let shard: BTreeMap<String, Failure> = read_map(bridge.kv, key)?;
        for failure in shard.values().filter(|f| f.is_open()) {
            types
                .entry(failure.object_type.as_str().to_owned())
                .or_default()
                .failures += 1;
        }
    }
    for t in types.values_mut() {
        t.oldest_pending_age_seconds = t.oldest_pending_received.map(|r| (now - r).max(0));
    }
    let state: QuotaState = bridge.store().get_json(QUOTA_KEY)?.unwrap_or_default();
    Ok(Overview {
        now,
        types,
        files_in_flight: files,
        quota: quota::usage(&state, settings::quota_limits(bridge.config), now_ms),
        keys: Keys {
            total: keys.len(),
            budget: settings::layout(bridge.config).max_keys,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{bridge, configured, ScriptedGong, VirtualClock};

    #[test]
    fn an_empty_store_has_an_empty_overview() {
        let kv = crate::store::memory::MemoryKv::default();
        let config = configured(&[]);
        let clock = VirtualClock::at(1_700_000_000);
        let gong = ScriptedGong::new(&clock);
        let o = overview(&bridge(&kv, &config, &gong, &clock)).unwrap();
        assert!(o.types.is_empty() && o.files_in_flight.is_empty());
        assert_eq!((o.quota.this_second, o.quota.today), (0, 0));
        assert_eq!(o.keys.total, 0);
    }
}
