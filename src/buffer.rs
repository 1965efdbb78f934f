//! The pending buffer: validated webhook records waiting to be coalesced into one Gong upload
//! per object type. Design notes: `docs/buffer.md`.
//!
//! Every accepted record *version* gets its own key, never overwritten:
//! `pend/{TYPE}/{objectId}/{modifiedUnix}/{receivedUnix}/{lineBytes}/{attempt}` → the LDJSON line.
//! So concurrent writers can never lose each other's updates (last-write-wins only matters
//! for a key written twice, and two writes of one key carry the same version). Everything a
//! flush decision needs (count, bytes, age of the oldest) is in the key names, so deciding
//! reads no values. The newest `modifiedDate` per objectId wins when a file is built, and a
//! flush deletes only the versions it sent (and older ones), so a newer version that arrived
//! meanwhile stays pending.

use std::collections::BTreeMap;

use crate::gong::models::ObjectType;

pub const PENDING_PREFIX: &str = "pend/";

/// The order in which types are flushed: users and stages before the deals that reference
/// them, accounts before contacts, leads and deals (API-NOTES §3.4).
pub const FLUSH_ORDER: [ObjectType; 6] = [
    ObjectType::BusinessUser,
    ObjectType::Stage,
    ObjectType::Account,
    ObjectType::Contact,
    ObjectType::Lead,
    ObjectType::Deal,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingKey {
    pub object_type: ObjectType,
    pub object_id: String,
    pub modified: i64,
    pub received: i64,
    pub bytes: usize,
    /// How many times this version already went to Gong in a file that failed as a whole.
    pub attempt: u32,
}

impl PendingKey {
    pub fn encode(&self) -> String {
        format!(
            "{PENDING_PREFIX}{}/{}/{:011}/{:011}/{}/{}",
            self.object_type.as_str(),
            self.object_id,
            self.modified,
            self.received,
            self.bytes,
            self.attempt
        )
    }

    /// Parses a key name; `None` for anything that is not a pending key.
    pub fn decode(key: &str) -> Option<PendingKey> {
        let rest = key.strip_prefix(PENDING_PREFIX)?;
        let (object_type, rest) = rest.split_once('/')?;
        // The objectId may in principle contain '/', so the numeric fields are split off the end.
        let mut tail = rest.rsplitn(5, '/');
        let attempt = tail.next()?.parse().ok()?;
        let bytes = tail.next()?.parse().ok()?;
        let received = tail.next()?.parse().ok()?;
        let modified = tail.next()?.parse().ok()?;
        let object_id = tail.next()?.to_owned();
        if object_id.is_empty() {
            return None;
        }
        Some(PendingKey { object_type: ObjectType::parse_upload(object_type)?, object_id, modified, received, bytes, attempt })
    }

    /// Prefix of every pending version of one record.
    pub fn record_prefix(object_type: ObjectType, object_id: &str) -> String {
        format!("{PENDING_PREFIX}{}/{object_id}/", object_type.as_str())
    }
}

/// What is pending for one type, from key names alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeSummary {
    /// Distinct records (a record with several pending versions counts once).
    pub records: usize,
    pub versions: usize,
    pub bytes: usize,
    pub oldest_received: Option<i64>,
}

pub fn summarize(keys: &[PendingKey]) -> BTreeMap<ObjectType, TypeSummary> {
    let mut per_type: BTreeMap<ObjectType, (TypeSummary, std::collections::HashSet<&str>)> = BTreeMap::new();
    for key in keys {
        let (summary, ids) = per_type.entry(key.object_type).or_default();
        summary.versions += 1;
        summary.bytes += key.bytes + 1;
        summary.oldest_received = Some(summary.oldest_received.map_or(key.received, |o| o.min(key.received)));
        ids.insert(key.object_id.as_str());
    }
    per_type
        .into_iter()
        .map(|(t, (mut summary, ids))| {
            summary.records = ids.len();
            (t, summary)
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub interval_seconds: i64,
}

impl Default for FlushLimits {
    fn default() -> FlushLimits {
        FlushLimits { max_records: 5_000, max_bytes: 8 * 1024 * 1024, interval_seconds: 60 }
    }
}

/// Why a type is due, if it is.
pub fn due_reason(summary: &TypeSummary, limits: FlushLimits, now: i64) -> Option<String> {
    if summary.records == 0 {
        return None;
    }
    if summary.records >= limits.max_records {
        return Some(format!("{} records pending (batch_max_records {})", summary.records, limits.max_records));
    }
    if summary.bytes >= limits.max_bytes {
        return Some(format!("{} bytes pending (batch_max_bytes {})", summary.bytes, limits.max_bytes));
    }
    let age = now - summary.oldest_received.unwrap_or(now);
    if age >= limits.interval_seconds {
        return Some(format!("oldest pending record is {age} s old (flush_interval_seconds {})", limits.interval_seconds));
    }
    None
}

/// Whether a type goes now: it is due, or `force` and anything is pending.
pub fn is_due(summary: &TypeSummary, limits: FlushLimits, force: bool, now: i64) -> bool {
    summary.records > 0 && (force || due_reason(summary, limits, now).is_some())
}

/// The versions one file of `object_type` will carry: whole records (all their pending
/// versions), oldest arrivals first, until the record or byte limit. Returns the chosen keys.
pub fn select_for_file(keys: &[PendingKey], object_type: ObjectType, limits: FlushLimits) -> Vec<PendingKey> {
    let mut by_record: BTreeMap<&str, Vec<&PendingKey>> = BTreeMap::new();
    for key in keys.iter().filter(|k| k.object_type == object_type) {
        by_record.entry(key.object_id.as_str()).or_default().push(key);
    }
    let mut records: Vec<Vec<&PendingKey>> = by_record.into_values().collect();
    records.sort_by_key(|versions| versions.iter().map(|k| k.received).min().unwrap_or(0));
    let mut chosen = Vec::new();
    let mut bytes = 0usize;
    for (n, versions) in records.into_iter().enumerate() {
        // Only the latest version goes into the file; count its bytes.
        let latest = versions.iter().map(|k| k.bytes + 1).max().unwrap_or(0);
        if n >= limits.max_records || (n > 0 && bytes + latest > limits.max_bytes) {
            break;
        }
        bytes += latest;
        chosen.extend(versions.into_iter().cloned());
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: ObjectType, id: &str, modified: i64, received: i64, bytes: usize) -> PendingKey {
        PendingKey { object_type: t, object_id: id.into(), modified, received, bytes, attempt: 0 }
    }

    #[test]
    fn keys_round_trip_and_stay_under_255_bytes() {
        let long_id = format!("{}@{}.com", "a".repeat(40), "b".repeat(19));
        let k = key(ObjectType::BusinessUser, &long_id, 1_700_000_000, 1_700_000_100, 123_456);
        let encoded = k.encode();
        assert!(encoded.len() <= 255, "{}", encoded.len());
        assert_eq!(PendingKey::decode(&encoded), Some(k));
        let slash = key(ObjectType::Deal, "we/ird", -5, 0, 1);
        assert_eq!(PendingKey::decode(&slash.encode()), Some(slash));
        assert_eq!(PendingKey::decode("pend/NOPE/a/1/2/3/0"), None);
        assert_eq!(PendingKey::decode("request/x"), None);
        assert_eq!(PendingKey::decode("pend/ACCOUNT//1/2/3/0"), None);
        let retried = PendingKey { attempt: 1, ..key(ObjectType::Lead, "l", 1, 2, 3) };
        assert_eq!(PendingKey::decode(&retried.encode()), Some(retried));
    }

    #[test]
    fn summaries_count_records_once_and_track_the_oldest() {
        let keys = vec![
            key(ObjectType::Account, "a", 1, 100, 10),
            key(ObjectType::Account, "a", 2, 90, 10),
            key(ObjectType::Account, "b", 1, 95, 20),
            key(ObjectType::Deal, "d", 1, 50, 5),
        ];
        let s = summarize(&keys);
        assert_eq!(s[&ObjectType::Account], TypeSummary { records: 2, versions: 3, bytes: 43, oldest_received: Some(90) });
        assert_eq!(s[&ObjectType::Deal].records, 1);
    }

    #[test]
    fn each_trigger_makes_a_type_due() {
        let limits = FlushLimits { max_records: 3, max_bytes: 100, interval_seconds: 60 };
        let base = TypeSummary { records: 1, versions: 1, bytes: 10, oldest_received: Some(1_000) };
        assert_eq!(due_reason(&base, limits, 1_010), None);
        assert!(due_reason(&TypeSummary { records: 3, ..base.clone() }, limits, 1_010).unwrap().contains("records"));
        assert!(due_reason(&TypeSummary { bytes: 100, ..base.clone() }, limits, 1_010).unwrap().contains("bytes"));
        assert!(due_reason(&base, limits, 1_060).unwrap().contains("old"));
        assert_eq!(due_reason(&TypeSummary::default(), limits, 9_999), None);
        assert!(!is_due(&base, limits, false, 1_010) && is_due(&base, limits, true, 1_010), "force sends what is pending");
        assert!(!is_due(&TypeSummary::default(), limits, true, 9_999), "force with nothing pending sends nothing");
    }

    #[test]
    fn a_file_takes_whole_records_oldest_first_within_limits() {
        let keys = vec![
            key(ObjectType::Account, "late", 1, 300, 10),
            key(ObjectType::Account, "early", 1, 100, 10),
            key(ObjectType::Account, "early", 2, 200, 10),
            key(ObjectType::Account, "mid", 1, 150, 10),
            key(ObjectType::Contact, "c", 1, 1, 10),
        ];
        let two = select_for_file(&keys, ObjectType::Account, FlushLimits { max_records: 2, max_bytes: 1 << 20, interval_seconds: 60 });
        let ids: Vec<_> = two.iter().map(|k| k.object_id.as_str()).collect();
        assert_eq!(ids, vec!["early", "early", "mid"]);
        let by_bytes = select_for_file(&keys, ObjectType::Account, FlushLimits { max_records: 10, max_bytes: 15, interval_seconds: 60 });
        assert_eq!(by_bytes.iter().map(|k| k.object_id.as_str()).collect::<Vec<_>>(), vec!["early", "early"]);
    }

    #[test]
    fn flush_order_puts_users_and_stages_before_deals() {
        let pos = |t| FLUSH_ORDER.iter().position(|x| *x == t).unwrap();
        assert!(pos(ObjectType::BusinessUser) < pos(ObjectType::Deal));
        assert!(pos(ObjectType::Stage) < pos(ObjectType::Deal));
        assert!(pos(ObjectType::Account) < pos(ObjectType::Contact));
        assert_eq!(pos(ObjectType::Deal), 5);
    }
}
