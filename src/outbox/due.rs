//! Flush decisions shared by every object type: the order types go in, the limits that make a
//! type due (count, bytes, age of the oldest), and a pending version as "where is my record"
//! reports it. The records themselves live in `shards`; design: `docs/buffer.md`.

use crate::gong::models::ObjectType;

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

/// A pending version of one record, as the shards hold it.
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

/// What is pending for one type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeSummary {
    /// Distinct records (a record with several pending versions counts once).
    pub records: usize,
    pub versions: usize,
    pub bytes: usize,
    pub oldest_received: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub interval_seconds: i64,
}

impl Default for FlushLimits {
    fn default() -> FlushLimits {
        FlushLimits {
            max_records: 5_000,
            max_bytes: 8 * 1024 * 1024,
            interval_seconds: 60,
        }
    }
}

/// Why a type is due, if it is.
pub fn due_reason(summary: &TypeSummary, limits: FlushLimits, now: i64) -> Option<String> {
    if summary.records == 0 {
        return None;
    }
    if summary.records >= limits.max_records {
        return Some(format!(
            "{} records pending (batch_max_records {})",
            summary.records, limits.max_records
        ));
    }
    if summary.bytes >= limits.max_bytes {
        return Some(format!(
            "{} bytes pending (batch_max_bytes {})",
            summary.bytes, limits.max_bytes
        ));
    }
    let age = now - summary.oldest_received.unwrap_or(now);
    if age >= limits.interval_seconds {
        return Some(format!(
            "oldest pending record is {age} s old (flush_interval_seconds {})",
            limits.interval_seconds
        ));
    }
    None
}

/// Whether a type goes now: it is due, or `force` and anything is pending.
pub fn is_due(summary: &TypeSummary, limits: FlushLimits, force: bool, now: i64) -> bool {
    summary.records > 0 && (force || due_reason(summary, limits, now).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_trigger_makes_a_type_due() {
        let limits = FlushLimits {
            max_records: 3,
            max_bytes: 100,
            interval_seconds: 60,
        };
        let base = TypeSummary {
            records: 1,
            versions: 1,
            bytes: 10,
            oldest_received: Some(1_000),
        };
        assert_eq!(due_reason(&base, limits, 1_010), None);
        assert!(due_reason(
            &TypeSummary {
                records: 3,
                ..base.clone()
            },
            limits,
            1_010
        )
        .unwrap()
        .contains("records"));
        assert!(due_reason(
            &TypeSummary {
                bytes: 100,
                ..base.clone()
            },
            limits,
            1_010
        )
        .unwrap()
        .contains("bytes"));
        assert!(due_reason(&base, limits, 1_060).unwrap().contains("old"));
        assert_eq!(due_reason(&TypeSummary::default(), limits, 9_999), None);
        assert!(
            !is_due(&base, limits, false, 1_010) && is_due(&base, limits, true, 1_010),
            "force sends what is pending"
        );
        assert!(
            !is_due(&TypeSummary::default(), limits, true, 9_999),
            "force with nothing pending sends nothing"
        );
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
