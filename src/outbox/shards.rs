//! The outbox's one layout: a bounded set of keys per object type, sized from the key budget
//! (`kv_max_keys`, or 4,096 when the store is uncapped). Design: `docs/buffer.md`.
//!
//! Records are kept in *shard* keys, each a JSON map objectId → [`Slot`]:
//!
//! - `inbox/{TYPE}/{receivedUnix}/{random}`: what a webhook writes, one key per delivery (split if
//!   large). A key is never written twice, so concurrent webhooks cannot lose each other's
//!   records on a last-write-wins store. Nothing else is read or written on the webhook path.
//! - `pbuf/{TYPE}/{n}`: pending records (the newest version of each) and, for a while, a
//!   tombstone of each record sent (its modifiedDate, file and line), so a late, older
//!   re-delivery is recognised. Written only by the compactor and the flusher, which both run
//!   under the flush lease and read their writes back (two holders waste work, lose nothing).
//! - `pfail/{TYPE}/{n}`: the failure store, same rules.
//! - `buffer/summary`: count, bytes and oldest arrival of every pending shard, so that deciding
//!   whether a type is due reads one small value instead of every shard. A hint: the shards
//!   themselves are the truth, and a shard missing from it is read and summarised.
//!
//! Everything here is pure or goes through the `Kv` port, so it tests natively.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::fault::{encoding, Fault};
use crate::gong::models::ObjectType;
use crate::ports::Kv;

pub use crate::keys::{
    failure_shard as failure_shard_key, inbox as inbox_key, parse_shard as parse_shard_key,
    pending_shard as pending_shard_key, FAILURE_SHARD_PREFIX, INBOX_PREFIX, PENDING_SHARD_PREFIX,
    SUMMARY as SUMMARY_KEY,
};
/// What a shard or inbox key is planned to hold at most: Fermyon Cloud's value limit is 1 MB,
/// and the planning uses estimates, so a fifth is kept as headroom.
pub const SHARD_BUDGET_BYTES: usize = 800 * 1024;
/// Never written: the platform's value limit (1 MB).
pub const VALUE_LIMIT_BYTES: usize = 1_000_000;

/// How the key budget `max_keys` is shared out (see the table in `docs/buffer.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub max_keys: usize,
    /// Pending shards per object type.
    pub pending_shards: u32,
    /// Failure shards per object type.
    pub failure_shards: u32,
    /// Request records kept (the oldest finished ones are removed beyond this).
    pub request_retention: usize,
    /// A webhook that sees this many inbox keys compacts them on the spot.
    pub inbox_compact_at: usize,
    /// Webhooks are refused (503, Retry-After) while the store holds this many keys or more,
    /// so the flush always has room for its own keys. An eighth of the cap is kept free: a
    /// compaction may create one type's shards (1/16 of the cap) before it deletes the inbox keys
    /// they replace, and concurrent webhooks each check before they write
    /// (`benches/compact_race.rs` measures the peak).
    pub admit_below: usize,
}

impl Layout {
    pub fn for_max_keys(max_keys: usize) -> Layout {
        let max_keys = max_keys.max(128);
        Layout {
            max_keys,
            pending_shards: (max_keys / 16).clamp(4, 256) as u32,
            failure_shards: (max_keys / 64).clamp(2, 64) as u32,
            request_retention: (max_keys / 16).max(8),
            inbox_compact_at: (max_keys / 8).max(8),
            admit_below: max_keys - max_keys / 8,
        }
    }
}

/// A record's place in a pending shard: pending (with its line) or sent (a tombstone).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slot {
    /// modifiedDate, Unix seconds.
    #[serde(rename = "m")]
    pub modified: i64,
    /// When this record started waiting (Unix seconds): the flush age trigger.
    #[serde(rename = "r")]
    pub received: i64,
    /// Files that already failed as a whole with this record in them.
    #[serde(rename = "a", default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// The webhook delivery that brought this version.
    #[serde(rename = "d", default, skip_serializing_if = "String::is_empty")]
    pub delivery: String,
    /// The validated LDJSON line, while pending.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub line: Option<Box<RawValue>>,
    /// Once sent: which file carried it.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<Sent>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// Unix seconds.
    pub at: i64,
    /// The clientRequestId of the file.
    pub c: String,
    /// The record's 1-based line in that file.
    pub n: usize,
    /// [`line_digest`] of the line sent, so a later edit with the same modifiedDate is told
    /// apart from a re-delivery of the sent one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub h: String,
}

/// A short digest of one LDJSON line (64 bits of SHA-256, hex).
pub fn line_digest(line: &[u8]) -> String {
    Sha256::digest(line)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Slot {
    pub fn pending(
        modified: i64,
        received: i64,
        attempt: u32,
        delivery: &str,
        line: Box<RawValue>,
    ) -> Slot {
        Slot {
            modified,
            received,
            attempt,
            delivery: delivery.to_owned(),
            line: Some(line),
            sent: None,
        }
    }

    pub fn is_pending(&self) -> bool {
        self.line.is_some()
    }

    /// An upper bound of this slot's JSON size inside a shard (ids and delivery ids may be
    /// escaped, doubling them at worst).
    pub fn estimated_bytes(&self, object_id: &str) -> usize {
        64 + 2 * object_id.len()
            + 2 * self.delivery.len()
            + self.line.as_ref().map_or(0, |l| l.get().len())
            + self.sent.as_ref().map_or(0, |s| 48 + s.c.len() + s.h.len())
    }
}

/// A line as stored in a shard: the validated JSON text, kept as is.
pub fn raw_line(line: &[u8]) -> Result<Box<RawValue>, Fault> {
    let text = String::from_utf8(line.to_vec())
        .map_err(|e| Fault::Corrupt(format!("a validated line is not UTF-8: {e}")))?;
    RawValue::from_string(text)
        .map_err(|e| Fault::Corrupt(format!("a validated line is not JSON: {e}")))
}

pub type Shard = BTreeMap<String, Slot>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// A record the shard did not hold.
    Added,
    /// A newer version (or a re-queued one) took the record's place.
    Replaced,
    /// This very version is already pending, or already sent.
    Duplicate,
    /// An older version than the one held: kept out.
    Superseded,
}

/// Puts one incoming version into a shard: the newer modifiedDate wins, and on equal ones the
/// later arrival; the same version again is a duplicate (also after it was sent), unless
/// `requeue` (a file-level failure or `POST /failures/retry` puts a sent version back on purpose).
pub fn merge(shard: &mut Shard, object_id: &str, incoming: Slot, requeue: bool) -> Merge {
    let Some(existing) = shard.get_mut(object_id) else {
        shard.insert(object_id.to_owned(), incoming);
        return Merge::Added;
    };
    if incoming.modified < existing.modified {
        return Merge::Superseded;
    }
    if incoming.modified == existing.modified {
        // The same modifiedDate: the same edit again is a duplicate; another edit (a CRM that
        // stamps seconds) is newer by arrival, so a later arrival wins, waiting or sent. A
        // re-queue brings back an edit that was sent before, so it never wins over another.
        let digest =
            |line: &Option<Box<RawValue>>| line.as_ref().map(|l| line_digest(l.get().as_bytes()));
        let incoming_digest = digest(&incoming.line);
        if existing.is_pending() {
            existing.attempt = existing.attempt.max(incoming.attempt);
            if requeue || digest(&existing.line) == incoming_digest {
                return Merge::Duplicate;
            }
            existing.line = incoming.line;
            existing.delivery = incoming.delivery;
            return Merge::Replaced;
        }
        // A tombstone without a digest predates digests: treated as the same edit.
        let same_as_sent = existing
            .sent
            .as_ref()
            .map(|s| s.h.as_str())
            .is_none_or(|h| h.is_empty() || Some(h) == incoming_digest.as_deref());
        match (requeue, same_as_sent) {
            (false, true) => return Merge::Duplicate,
            (true, false) => return Merge::Superseded,
            _ => {}
        }
    }
    // A record already waiting keeps its place in the queue (its age counts from then).
    let received = if existing.is_pending() {
        existing.received.min(incoming.received)
    } else {
        incoming.received
    };
    *existing = Slot {
        received,
        ..incoming
    };
    Merge::Replaced
}

/// Marks a sent version as sent, unless a newer one took its place meanwhile (that one stays
/// pending). Returns whether the slot was marked.
pub fn mark_sent(
    shard: &mut Shard,
    object_id: &str,
    modified: i64,
    digest: &str,
    sent: Sent,
) -> bool {
    match shard.get_mut(object_id) {
        Some(slot)
            if slot.modified == modified
                && slot
                    .line
                    .as_ref()
                    .is_some_and(|l| line_digest(l.get().as_bytes()) == digest) =>
        {
            slot.line = None;
            slot.delivery.clear();
            slot.attempt = 0;
            slot.sent = Some(Sent {
                h: digest.to_owned(),
                ..sent
            });
            true
        }
        _ => false,
    }
}

/// Records that a version was sent by another path (a bulk upload): a tombstone with its file
/// and line, unless the shard holds something newer. A pending older version is dropped (Gong
/// has a newer one), as is a pending copy of this very edit (it would go twice); a pending
/// other edit of the same modifiedDate stays and goes (which one is later is unknown here).
pub fn record_sent(shard: &mut Shard, object_id: &str, modified: i64, digest: &str, sent: Sent) {
    let sent = Sent {
        h: digest.to_owned(),
        ..sent
    };
    let tombstone = |received| Slot {
        modified,
        received,
        attempt: 0,
        delivery: String::new(),
        line: None,
        sent: Some(sent.clone()),
    };
    match shard.get_mut(object_id) {
        None => {
            shard.insert(object_id.to_owned(), tombstone(sent.at));
        }
        Some(slot) if slot.modified > modified => {}
        Some(slot)
            if slot.modified == modified
                && slot
                    .line
                    .as_ref()
                    .is_some_and(|l| line_digest(l.get().as_bytes()) != digest) => {}
        Some(slot) => *slot = tombstone(slot.received),
    }
}

/// Drops tombstones older than `keep_seconds`, then the oldest ones while the shard is over
/// `budget` bytes (estimated). Pending records are never dropped. Returns the estimate.
pub fn prune(shard: &mut Shard, now: i64, keep_seconds: i64, budget: usize) -> usize {
    shard.retain(|_, slot| slot.sent.as_ref().is_none_or(|s| now - s.at < keep_seconds));
    let mut size = estimated_bytes(shard);
    if size > budget {
        let mut tombstones: Vec<(i64, String)> = shard
            .iter()
            .filter_map(|(id, slot)| {
                slot.sent
                    .as_ref()
                    .filter(|_| !slot.is_pending())
                    .map(|s| (s.at, id.clone()))
            })
            .collect();
        crate::sorting::sort(&mut tombstones);
        for (_, id) in tombstones {
            if size <= budget {
                break;
            }
            if let Some(slot) = shard.remove(&id) {
                size = size.saturating_sub(slot.estimated_bytes(&id));
            }
        }
    }
    size
}

pub fn estimated_bytes(shard: &Shard) -> usize {
    2 + shard
        .iter()
        .map(|(id, slot)| slot.estimated_bytes(id))
        .sum::<usize>()
}

/// What a pending shard holds, for flush decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStat {
    /// Pending records.
    pub records: usize,
    /// Their LDJSON bytes (lines plus newlines).
    pub bytes: usize,
    /// The earliest `received` among them.
    pub oldest: Option<i64>,
}

pub fn stat(shard: &Shard) -> ShardStat {
    let mut s = ShardStat::default();
    for slot in shard.values() {
        if let Some(line) = &slot.line {
            s.records += 1;
            s.bytes += line.get().len() + 1;
            s.oldest = Some(s.oldest.map_or(slot.received, |o| o.min(slot.received)));
        }
    }
    s
}

/// objectType → shard number → stat.
pub type Summary = BTreeMap<String, BTreeMap<u32, ShardStat>>;

/// Folds a type's shard stats into the buffer's per-type summary.
pub fn type_summary(stats: &BTreeMap<u32, ShardStat>) -> super::due::TypeSummary {
    let mut t = super::due::TypeSummary::default();
    for s in stats.values() {
        t.records += s.records;
        t.versions += s.records;
        t.bytes += s.bytes;
        if let Some(o) = s.oldest {
            t.oldest_received = Some(t.oldest_received.map_or(o, |x: i64| x.min(o)));
        }
    }
    t
}

/// The shard an objectId lives in: stable across replicas and versions.
pub fn shard_of(object_id: &str, shards: u32) -> u32 {
    let digest = Sha256::digest(object_id.as_bytes());
    let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    n % shards.max(1)
}

/// One record in an inbox key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxRecord {
    pub id: String,
    pub m: i64,
    pub l: Box<RawValue>,
}

/// One inbox key's value: (part of) one delivery.
#[derive(Debug, Serialize, Deserialize)]
pub struct InboxEntry {
    pub t: ObjectType,
    pub d: String,
    pub r: i64,
    pub records: Vec<InboxRecord>,
    /// Records of an authentic delivery that could not be mapped or broke Gong's rules: the
    /// compactor moves them into the failure store (the webhook itself never writes a shard).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<RejectedRecord>,
}

/// A record the bridge could not send, with why, and its source as received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RejectedRecord {
    /// Its Gong objectId (or the source's id, when even that could not be mapped).
    pub id: String,
    /// Its modification time (Unix seconds), else the arrival's.
    pub m: i64,
    /// The field, the rule and the message.
    pub why: String,
    /// The source it came from (`pipedrive`, …) and the record as the source sent it
    /// (`{object, record, event}`), so a retry maps it again.
    pub source: String,
    pub raw: Box<RawValue>,
}

/// Splits a delivery's records into inbox values that each stay within the shard budget.
pub fn inbox_entries(
    object_type: ObjectType,
    delivery: &str,
    received: i64,
    records: Vec<InboxRecord>,
) -> Vec<InboxEntry> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut size = 128 + 2 * delivery.len();
    for record in records {
        let bytes = 48 + 2 * record.id.len() + record.l.get().len();
        if !current.is_empty() && size + bytes > SHARD_BUDGET_BYTES {
            out.push(InboxEntry {
                t: object_type,
                d: delivery.to_owned(),
                r: received,
                records: std::mem::take(&mut current),
                rejected: Vec::new(),
            });
            size = 128 + 2 * delivery.len();
        }
        size += bytes;
        current.push(record);
    }
    if !current.is_empty() {
        out.push(InboxEntry {
            t: object_type,
            d: delivery.to_owned(),
            r: received,
            records: current,
            rejected: Vec::new(),
        });
    }
    out
}

/// Adds a delivery's rejected records to its inbox values, within the same value budget (into
/// the last value while it has room, else into values of their own).
pub fn add_rejected(
    entries: &mut Vec<InboxEntry>,
    object_type: ObjectType,
    delivery: &str,
    received: i64,
    rejected: Vec<RejectedRecord>,
) {
    let estimate = |e: &InboxEntry| {
        128 + 2 * delivery.len()
            + e.records
                .iter()
                .map(|r| 48 + 2 * r.id.len() + r.l.get().len())
                .sum::<usize>()
            + e.rejected
                .iter()
                .map(|r| 96 + 2 * (r.id.len() + r.why.len() + r.source.len()) + r.raw.get().len())
                .sum::<usize>()
    };
    for record in rejected {
        let bytes = 96
            + 2 * (record.id.len() + record.why.len() + record.source.len())
            + record.raw.get().len();
        let fits = entries
            .last()
            .is_some_and(|e| estimate(e) + bytes <= SHARD_BUDGET_BYTES);
        if !fits {
            entries.push(InboxEntry {
                t: object_type,
                d: delivery.to_owned(),
                r: received,
                records: Vec::new(),
                rejected: Vec::new(),
            });
        }
        if let Some(last) = entries.last_mut() {
            last.rejected.push(record);
        }
    }
}

/// Reads a JSON map kept under `key` (absent: empty).
pub fn read_map<V: DeserializeOwned>(kv: &dyn Kv, key: &str) -> Result<BTreeMap<String, V>, Fault> {
    match kv.get(key)? {
        None => Ok(BTreeMap::new()),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Fault::Corrupt(format!("stored value under {key:?} is unreadable: {e}"))),
    }
}

/// Writes a JSON map under `key`; an empty map deletes the key (it frees a key of the budget).
pub fn write_map<V: Serialize>(
    kv: &dyn Kv,
    key: &str,
    map: &BTreeMap<String, V>,
) -> Result<(), Fault> {
    if map.is_empty() {
        return kv.delete(key).map_err(Fault::from);
    }
    let bytes = serde_json::to_vec(map).map_err(encoding)?;
    if bytes.len() > VALUE_LIMIT_BYTES {
        return Err(Fault::Corrupt(format!(
            "{key} would hold {} bytes, over the 1 MB value limit",
            bytes.len()
        )));
    }
    kv.set(key, &bytes).map_err(Fault::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, m: i64) -> Box<RawValue> {
        raw_line(format!(r#"{{"objectId":"{id}","m":{m}}}"#).as_bytes()).unwrap()
    }

    fn pending(id: &str, m: i64, r: i64) -> Slot {
        Slot::pending(m, r, 0, "d", line(id, m))
    }

    fn digest(id: &str, m: i64) -> String {
        line_digest(line(id, m).get().as_bytes())
    }

    fn sent(at: i64) -> Sent {
        Sent {
            at,
            c: "fl-x".into(),
            n: 1,
            h: String::new(),
        }
    }

    #[test]
    fn the_newer_version_wins_and_a_waiting_record_keeps_its_place() {
        let mut shard = Shard::new();
        assert_eq!(
            merge(&mut shard, "a", pending("a", 10, 100), false),
            Merge::Added
        );
        assert_eq!(
            merge(&mut shard, "a", pending("a", 5, 200), false),
            Merge::Superseded
        );
        assert_eq!(shard["a"].modified, 10);
        assert_eq!(
            merge(&mut shard, "a", pending("a", 10, 300), false),
            Merge::Duplicate
        );
        assert_eq!(
            merge(&mut shard, "a", pending("a", 20, 400), false),
            Merge::Replaced
        );
        assert_eq!((shard["a"].modified, shard["a"].received), (20, 100));
    }

    #[test]
    fn a_sent_version_is_a_tombstone_that_keeps_late_versions_out() {
        let mut shard = Shard::new();
        merge(&mut shard, "a", pending("a", 10, 100), false);
        assert!(
            !mark_sent(&mut shard, "a", 9, &digest("a", 9), sent(150)),
            "only the version that was sent"
        );
        assert!(mark_sent(&mut shard, "a", 10, &digest("a", 10), sent(150)));
        assert!(!shard["a"].is_pending());
        assert_eq!(
            merge(&mut shard, "a", pending("a", 10, 200), false),
            Merge::Duplicate,
            "a re-delivery is not resent"
        );
        assert_eq!(
            merge(&mut shard, "a", pending("a", 8, 200), false),
            Merge::Superseded
        );
        assert!(!shard["a"].is_pending());
        // A requeue puts the same version back, waiting from now.
        assert_eq!(
            merge(
                &mut shard,
                "a",
                Slot {
                    attempt: 1,
                    ..pending("a", 10, 300)
                },
                true
            ),
            Merge::Replaced
        );
        assert_eq!(
            (
                shard["a"].received,
                shard["a"].attempt,
                shard["a"].is_pending()
            ),
            (300, 1, true)
        );
        // A newer version after a send is pending again.
        mark_sent(&mut shard, "a", 10, &digest("a", 10), sent(350));
        assert_eq!(
            merge(&mut shard, "a", pending("a", 11, 400), false),
            Merge::Replaced
        );
        assert_eq!(shard["a"].received, 400);
    }

    /// Issue 10 finding 5: two edits with the same modifiedDate (a CRM with second precision):
    /// the later arrival wins, whether the first is still waiting or already sent, and a send
    /// of the first does not mark the second as sent.
    #[test]
    fn equal_modified_dates_the_later_arrival_wins() {
        let edit = |text: &str| {
            raw_line(format!(r#"{{"objectId":"a","name":"{text}"}}"#).as_bytes()).unwrap()
        };
        let mut shard = Shard::new();
        merge(
            &mut shard,
            "a",
            Slot::pending(10, 100, 0, "d1", edit("first")),
            false,
        );
        assert_eq!(
            merge(
                &mut shard,
                "a",
                Slot::pending(10, 101, 0, "d2", edit("second")),
                false
            ),
            Merge::Replaced
        );
        assert!(shard["a"].line.as_ref().unwrap().get().contains("second"));
        assert_eq!(shard["a"].received, 100, "it keeps its place in the queue");
        assert_eq!(
            merge(
                &mut shard,
                "a",
                Slot::pending(10, 102, 0, "d2", edit("second")),
                false
            ),
            Merge::Duplicate,
            "the same edit again"
        );
        // A file carried "second"; "third" arrived meanwhile with the same modifiedDate.
        let carried = line_digest(edit("second").get().as_bytes());
        merge(
            &mut shard,
            "a",
            Slot::pending(10, 103, 0, "d3", edit("third")),
            false,
        );
        assert!(
            !mark_sent(&mut shard, "a", 10, &carried, sent(150)),
            "the file did not carry this edit"
        );
        assert!(shard["a"].is_pending());
        let carried = line_digest(edit("third").get().as_bytes());
        assert!(mark_sent(&mut shard, "a", 10, &carried, sent(160)));
        assert_eq!(
            merge(
                &mut shard,
                "a",
                Slot::pending(10, 170, 0, "d3", edit("third")),
                false
            ),
            Merge::Duplicate,
            "a re-delivery of what was sent"
        );
        assert_eq!(
            merge(
                &mut shard,
                "a",
                Slot::pending(10, 180, 0, "d4", edit("fourth")),
                false
            ),
            Merge::Replaced,
            "a later edit after the send"
        );
        assert!(shard["a"].is_pending());
    }

    /// Found by the model test: a re-queue of an edit Gong failed must not replace a later edit
    /// with the same modifiedDate, waiting or already sent.
    #[test]
    fn a_requeued_edit_does_not_replace_a_later_one_with_the_same_modified_date() {
        let edit = |text: &str| {
            raw_line(format!(r#"{{"objectId":"a","name":"{text}"}}"#).as_bytes()).unwrap()
        };
        let mut shard = Shard::new();
        merge(
            &mut shard,
            "a",
            Slot::pending(10, 100, 0, "d1", edit("first")),
            false,
        );
        assert!(mark_sent(
            &mut shard,
            "a",
            10,
            &line_digest(edit("first").get().as_bytes()),
            sent(110)
        ));
        assert_eq!(
            merge(
                &mut shard,
                "a",
                Slot::pending(10, 120, 0, "d2", edit("second")),
                false
            ),
            Merge::Replaced
        );
        assert_eq!(
            merge(
                &mut shard,
                "a",
                Slot::pending(10, 130, 1, "", edit("first")),
                true
            ),
            Merge::Duplicate
        );
        assert!(shard["a"].line.as_ref().unwrap().get().contains("second"));
        assert!(mark_sent(
            &mut shard,
            "a",
            10,
            &line_digest(edit("second").get().as_bytes()),
            sent(140)
        ));
        assert_eq!(
            merge(
                &mut shard,
                "a",
                Slot::pending(10, 150, 1, "", edit("first")),
                true
            ),
            Merge::Superseded
        );
        assert!(!shard["a"].is_pending());
        assert_eq!(
            merge(
                &mut shard,
                "a",
                Slot::pending(10, 160, 1, "", edit("second")),
                true
            ),
            Merge::Replaced,
            "the sent edit itself is re-queued"
        );
    }

    #[test]
    fn a_newer_version_that_arrived_meanwhile_stays_pending() {
        let mut shard = Shard::new();
        merge(&mut shard, "a", pending("a", 10, 100), false);
        merge(&mut shard, "a", pending("a", 12, 120), false);
        assert!(!mark_sent(&mut shard, "a", 10, &digest("a", 10), sent(150)));
        assert!(shard["a"].is_pending());
    }

    #[test]
    fn pruning_drops_old_tombstones_then_the_oldest_but_never_pending_records() {
        let mut shard = Shard::new();
        for i in 0..50 {
            let id = format!("t{i:02}");
            merge(&mut shard, &id, pending(&id, 1, 1), false);
            mark_sent(&mut shard, &id, 1, &digest(&id, 1), sent(1_000 + i));
        }
        merge(&mut shard, "p", pending("p", 1, 1), false);
        prune(&mut shard, 1_030, 20, usize::MAX);
        assert_eq!(
            shard.len(),
            1 + 39,
            "tombstones sent at 1011..=1049 are younger than 20 s"
        );
        let budget = shard["p"].estimated_bytes("p") + 2 + 3 * shard["t49"].estimated_bytes("t49");
        let size = prune(&mut shard, 1_030, 20, budget);
        assert!(size <= budget);
        assert!(shard.contains_key("p") && shard.contains_key("t49") && !shard.contains_key("t41"));
        // Pending records stay even over budget.
        prune(&mut shard, 1_030, 20, 0);
        assert_eq!(shard.keys().collect::<Vec<_>>(), vec!["p"]);
    }

    #[test]
    fn stats_count_only_pending_records() {
        let mut shard = Shard::new();
        merge(&mut shard, "a", pending("a", 1, 50), false);
        merge(&mut shard, "b", pending("b", 1, 40), false);
        mark_sent(&mut shard, "b", 1, &digest("b", 1), sent(60));
        let s = stat(&shard);
        assert_eq!((s.records, s.oldest), (1, Some(50)));
        assert_eq!(s.bytes, shard["a"].line.as_ref().unwrap().get().len() + 1);
        let mut per_shard = BTreeMap::new();
        per_shard.insert(0, s);
        per_shard.insert(
            1,
            ShardStat {
                records: 2,
                bytes: 10,
                oldest: Some(30),
            },
        );
        let t = type_summary(&per_shard);
        assert_eq!((t.records, t.oldest_received), (3, Some(30)));
    }

    #[test]
    fn estimates_bound_the_real_size() {
        let mut shard = Shard::new();
        for i in 0..200 {
            let id = format!("id-\"{i}\"\\");
            let mut slot = Slot::pending(i, i, 1, "msg_\"q\"", line("x", i));
            if i % 3 == 0 {
                slot.line = None;
                slot.sent = Some(Sent {
                    at: i,
                    c: "fl-account-0123456789abcdef".into(),
                    n: 4_999,
                    h: "0123456789abcdef".into(),
                });
            }
            shard.insert(id, slot);
        }
        assert!(serde_json::to_vec(&shard).unwrap().len() <= estimated_bytes(&shard));
    }

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("acc-1", 64), shard_of("acc-1", 64));
        let used: std::collections::BTreeSet<u32> = (0..1_000)
            .map(|i| shard_of(&format!("acc-{i}"), 64))
            .collect();
        assert_eq!(used.len(), 64);
        assert!(used.iter().all(|n| *n < 64));
        let key = pending_shard_key(ObjectType::Account, 7);
        assert_eq!(key, "pbuf/ACCOUNT/007");
        assert_eq!(
            parse_shard_key(&key, PENDING_SHARD_PREFIX),
            Some((ObjectType::Account, 7))
        );
        assert_eq!(parse_shard_key("pbuf/NOPE/1", PENDING_SHARD_PREFIX), None);
    }

    #[test]
    fn the_layout_fits_the_key_budget() {
        let l = Layout::for_max_keys(1_024);
        assert_eq!(
            (
                l.pending_shards,
                l.failure_shards,
                l.request_retention,
                l.inbox_compact_at,
                l.admit_below
            ),
            (64, 16, 64, 128, 896)
        );
        // All shards full, retained requests with a line map and an in-flight file each,
        // a full inbox, and the fixed keys: still under the admission line.
        let worst = 6 * l.pending_shards as usize
            + 6 * l.failure_shards as usize
            + 3 * l.request_retention
            + l.inbox_compact_at
            + 16;
        assert!(worst < l.admit_below, "{worst}");
    }

    #[test]
    fn large_deliveries_split_into_several_inbox_values() {
        let records: Vec<InboxRecord> = (0..3_000)
            .map(|i| InboxRecord {
                id: format!("r{i}"),
                m: i,
                l: raw_line(
                    format!(r#"{{"objectId":"r{i}","pad":"{}"}}"#, "x".repeat(500)).as_bytes(),
                )
                .unwrap(),
            })
            .collect();
        let entries = inbox_entries(ObjectType::Deal, "msg_1", 7, records);
        assert!(entries.len() >= 2);
        assert_eq!(
            entries.iter().map(|e| e.records.len()).sum::<usize>(),
            3_000
        );
        for e in &entries {
            assert!(serde_json::to_vec(e).unwrap().len() <= SHARD_BUDGET_BYTES);
        }
    }
}
