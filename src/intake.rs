//! The one accept path: a delivery's records (Gong-shaped JSON, from our own webhook envelope, a
//! CRM receiver's mapping, a fetch or a sync page) are validated against Gong's rules and, only
//! if every one passes, stored in the inbox (one write per delivery; `outbox::buffer_records`).
//! No HTTP here: the caller renders the outcome.

use serde_json::Value;

use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::gong::models::ObjectType;
use crate::outbox::shards::RejectedRecord;
use crate::validation::{self, RecordOptions, Violation};

/// What was accepted: from here on, delivering the records to Gong is the engine's job.
#[derive(Debug)]
pub struct Accepted {
    pub accepted: usize,
    pub superseded: usize,
    /// Warnings of the validation (kept fields that Gong ignores, say).
    pub warnings: Vec<Violation>,
    /// objectIds in delivery order, for the answer's status URLs.
    pub object_ids: Vec<String>,
    /// The inbox has grown to where it should be compacted after the answer.
    pub compact_inbox: bool,
}

/// Why nothing was accepted.
#[derive(Debug)]
pub enum Refused {
    /// Records break Gong's rules: each violation names the record, the field and the rule.
    Invalid(Vec<Violation>),
    /// The store refused or failed (full, unavailable): nothing was kept.
    Fault(Fault),
}

impl From<Fault> for Refused {
    fn from(fault: Fault) -> Refused {
        Refused::Fault(fault)
    }
}

/// Validates every record of one delivery and stores them together, or none of them.
pub fn accept_records(
    bridge: &Bridge,
    object_type: ObjectType,
    records: Vec<Value>,
    delivery: &str,
    options: RecordOptions,
) -> Result<Accepted, Refused> {
    let schema = if object_type.has_schema() {
        bridge.store().schema(object_type)?
    } else {
        None
    };
    let mut valid = Vec::with_capacity(records.len());
    let mut violations = Vec::new();
    let mut warnings = Vec::new();
    for (index, record) in records.into_iter().enumerate() {
        match validation::validate_record(
            object_type,
            record,
            index,
            None,
            schema.as_deref(),
            options,
            &mut warnings,
        ) {
            Ok(record) => valid.push(record),
            Err(mut v) => violations.append(&mut v),
        }
    }
    if !violations.is_empty() {
        return Err(Refused::Invalid(violations));
    }
    let object_ids = valid.iter().map(|r| r.object_id.clone()).collect();
    let buffered = crate::outbox::buffer_records(bridge, object_type, valid, Vec::new(), delivery)?;
    Ok(Accepted {
        accepted: buffered.accepted,
        superseded: buffered.superseded,
        warnings,
        object_ids,
        compact_inbox: buffered.compact_inbox,
    })
}

/// What a CRM delivery came to for one Gong type.
#[derive(Debug)]
pub struct Partial {
    pub accepted: usize,
    pub rejected: usize,
    pub object_ids: Vec<String>,
    pub compact_inbox: bool,
}

/// For an authentic CRM delivery: every valid record is accepted and every invalid one (and
/// every one its mapping already rejected) goes to the failure store with its violations, in the
/// same single inbox write. Only the store can refuse (a `Fault`): the CRM then re-delivers.
pub fn accept_partial(
    bridge: &Bridge,
    object_type: ObjectType,
    source: &str,
    records: Vec<(Value, Value)>,
    mut rejected: Vec<RejectedRecord>,
    delivery: &str,
) -> Result<Partial, Fault> {
    let schema = if object_type.has_schema() {
        bridge.store().schema(object_type)?
    } else {
        None
    };
    // CRMs send fractions and times without offsets: made Gong's form, as `?normalize=true` does.
    let options = RecordOptions {
        normalize: true,
        ..RecordOptions::default()
    };
    let now = bridge.clock.now().unix_timestamp();
    let mut valid = Vec::with_capacity(records.len());
    let mut warnings = Vec::new();
    for (index, (record, raw)) in records.into_iter().enumerate() {
        let id = record
            .get("objectId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match validation::validate_record(
            object_type,
            record,
            index,
            None,
            schema.as_deref(),
            options,
            &mut warnings,
        ) {
            Ok(record) => valid.push(record),
            Err(violations) => {
                let problems: Vec<crate::mapping::MappingProblem> = violations
                    .into_iter()
                    .map(|v| crate::mapping::MappingProblem {
                        field: v.field.unwrap_or_default(),
                        rule: v.rule,
                        message: v.message,
                    })
                    .collect();
                rejected.push(crate::crm::rejected(source, id, now, &problems, raw)?);
            }
        }
    }
    let object_ids: Vec<String> = valid.iter().map(|r| r.object_id.clone()).collect();
    let rejected_count = rejected.len();
    let buffered = crate::outbox::buffer_records(bridge, object_type, valid, rejected, delivery)?;
    Ok(Partial {
        accepted: buffered.accepted,
        rejected: rejected_count,
        object_ids,
        compact_inbox: buffered.compact_inbox,
    })
}
