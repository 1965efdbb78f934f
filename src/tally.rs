//! The bridge's counters (`GET /metrics`): added up in memory during one invocation and written
//! to KV at most once, at its end, and only by an invocation that already did engine work.
//!
//! Why not a write per request: on Spin's SQLite store a write costs ~10 ms, and a webhook that
//! is refused writes nothing at all today. So counts come from the work that writes anyway:
//! record deliveries are counted when compaction merges them, Gong calls and records delivered
//! or failed where the engine makes and settles them. Refused webhooks are the exception (they
//! do no work): each is counted with probability 1/[`REFUSAL_SAMPLE`] and weight
//! [`REFUSAL_SAMPLE`], an unbiased estimate that costs one write per eight refusals on average.
//! The exact count of refusals is in the logs (one JSON line each).
//!
//! Across replicas the stored counters are last-write-wins read-modify-writes: two invocations
//! saving at the same moment can lose one's increments. Engine counts are mostly saved under
//! the flush lease, so that is rare; the README says how exact the numbers are.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::fault::Fault;
use crate::gong::client::Operation;
use crate::ports::Kv;
use crate::store::Store;

/// KV key of the saved counters.
pub use crate::keys::COUNTERS as COUNTERS_KEY;
/// One refused webhook in this many is counted, with this weight.
pub const REFUSAL_SAMPLE: u64 = 8;

/// Monotonic counters since the store was created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Record deliveries (webhooks and their records) merged into the pending buffer.
    #[serde(default)]
    pub deliveries_accepted: u64,
    #[serde(default)]
    pub records_accepted: u64,
    /// Estimated refused webhooks by reason (the problem `type` slug).
    #[serde(default)]
    pub webhooks_refused: BTreeMap<String, u64>,
    /// Gong calls by "operation status" (status `0`: no answer — timeout or unreachable).
    #[serde(default)]
    pub gong_calls: BTreeMap<String, u64>,
    /// Records Gong applied (a file that ended DONE, less its failed and re-sent lines).
    #[serde(default)]
    pub records_delivered: u64,
    /// Records moved to the failure store.
    #[serde(default)]
    pub records_failed: u64,
    /// Records of authentic CRM deliveries that could not be mapped or broke Gong's rules (also
    /// in the failure store; answered 2xx all the same).
    #[serde(default)]
    pub records_rejected: u64,
    /// Per CRM receiver, by "source event": `deliveries` (authentic, answered 2xx), `refused`
    /// (not authentic), `ignored` (nothing to act on), `records_accepted`, `records_rejected`
    /// (to the failure store), `queued` (thin notifications to read).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub crm: BTreeMap<String, u64>,
}

impl Counters {
    fn is_empty(&self) -> bool {
        *self == Counters::default()
    }

    fn add(&mut self, other: &Counters) {
        self.deliveries_accepted += other.deliveries_accepted;
        self.records_accepted += other.records_accepted;
        self.records_delivered += other.records_delivered;
        self.records_failed += other.records_failed;
        self.records_rejected += other.records_rejected;
        for (k, v) in &other.crm {
            *self.crm.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.webhooks_refused {
            *self.webhooks_refused.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.gong_calls {
            *self.gong_calls.entry(k.clone()).or_default() += v;
        }
    }
}

/// The snake_case name of a Gong operation, as used in metric labels.
pub fn operation_label(op: Operation) -> &'static str {
    match op {
        Operation::RegisterIntegration => "register_integration",
        Operation::ListIntegrations => "list_integrations",
        Operation::DeleteIntegration => "delete_integration",
        Operation::UploadSchema => "upload_schema",
        Operation::ListSchema => "list_schema",
        Operation::UploadEntities => "upload_entities",
        Operation::GetEntities => "get_entities",
        Operation::RequestStatus => "request_status",
    }
}

/// One invocation's increments, not yet saved.
#[derive(Debug, Default)]
pub struct Tally {
    delta: RefCell<Counters>,
}

impl Tally {
    pub fn new() -> Tally {
        Tally::default()
    }

    /// One CRM receiver's event, `n` times (see [`Counters::crm`]).
    pub fn crm(&self, source: &str, event: &str, n: u64) {
        if n > 0 {
            *self
                .delta
                .borrow_mut()
                .crm
                .entry(format!("{source} {event}"))
                .or_default() += n;
        }
    }

    pub fn records_rejected(&self, records: u64) {
        self.delta.borrow_mut().records_rejected += records;
    }

    pub fn records_accepted(&self, deliveries: u64, records: u64) {
        let mut d = self.delta.borrow_mut();
        d.deliveries_accepted += deliveries;
        d.records_accepted += records;
    }

    pub fn gong_call(&self, op: Operation, status: u16) {
        *self
            .delta
            .borrow_mut()
            .gong_calls
            .entry(format!("{} {status}", operation_label(op)))
            .or_default() += 1;
    }

    pub fn records_settled(&self, delivered: u64, failed: u64) {
        let mut d = self.delta.borrow_mut();
        d.records_delivered += delivered;
        d.records_failed += failed;
    }

    /// A refused webhook, counted when `sample` (a uniform random byte, say) falls in the
    /// 1/[`REFUSAL_SAMPLE`] that is kept.
    pub fn webhook_refused(&self, reason: &str, sample: u8) {
        if u64::from(sample) % REFUSAL_SAMPLE == 0 {
            *self
                .delta
                .borrow_mut()
                .webhooks_refused
                .entry(reason.to_owned())
                .or_default() += REFUSAL_SAMPLE;
        }
    }

    /// Adds this invocation's increments to the saved counters: one read and one write, none
    /// when nothing was counted.
    pub fn save(&self, kv: &dyn Kv) -> Result<(), Fault> {
        let delta = std::mem::take(&mut *self.delta.borrow_mut());
        if delta.is_empty() {
            return Ok(());
        }
        let store = Store::new(kv);
        // Unreadable counters are restarted rather than blocking every later save.
        let mut saved: Counters = store
            .get_json(COUNTERS_KEY)
            .unwrap_or(None)
            .unwrap_or_default();
        saved.add(&delta);
        store.put_json(COUNTERS_KEY, &saved)
    }
}

/// The saved counters (zero before the first save).
pub fn load(kv: &dyn Kv) -> Result<Counters, Fault> {
    Ok(Store::new(kv)
        .get_json(COUNTERS_KEY)
        .unwrap_or(None)
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryKv as MemKv;

    #[test]
    fn increments_are_saved_once_and_added_to_what_is_stored() {
        let kv = MemKv::default();
        let tally = Tally::new();
        tally.records_accepted(2, 5);
        tally.gong_call(Operation::UploadEntities, 201);
        tally.gong_call(Operation::UploadEntities, 201);
        tally.gong_call(Operation::RequestStatus, 0);
        tally.save(&kv).unwrap();
        let second = Tally::new();
        second.records_settled(4, 1);
        second.save(&kv).unwrap();
        let saved = load(&kv).unwrap();
        assert_eq!(
            (
                saved.deliveries_accepted,
                saved.records_accepted,
                saved.records_delivered,
                saved.records_failed
            ),
            (2, 5, 4, 1)
        );
        assert_eq!(saved.gong_calls["upload_entities 201"], 2);
        assert_eq!(saved.gong_calls["request_status 0"], 1);
    }

    #[test]
    fn nothing_counted_writes_nothing() {
        let kv = MemKv::default();
        Tally::new().save(&kv).unwrap();
        assert!(kv.keys().unwrap().is_empty());
    }

    #[test]
    fn refusals_are_sampled_with_their_weight() {
        let tally = Tally::new();
        for sample in 0..=255u8 {
            tally.webhook_refused("unauthorized", sample);
        }
        // 256 refusals, one byte value in eight kept, each weighing eight: exactly 256.
        assert_eq!(tally.delta.borrow().webhooks_refused["unauthorized"], 256);
    }
}
