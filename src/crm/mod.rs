//! CRM receivers: a CRM's own webhook, verified with its own authentication, turned into
//! normalised changes (upsert a record, delete an id), mapped to Gong records by the source's
//! mapping (`mapping`), and accepted through the one accept path (`intake`). One small adapter
//! file per CRM behind [`Receiver`]; no HTTP types, no I/O beyond the ports.
//!
//! An authentic delivery is never refused for its content (a CRM bans or pauses a webhook that
//! fails): a record that cannot be mapped or breaks Gong's rules goes to the failure store with
//! the field, the rule and the source's id, and the rest of the delivery goes on.

pub mod attio;
pub mod close;
pub mod custom;
pub mod fetch;
pub mod overrides;
pub mod pipedrive;
pub mod references;
pub mod schema_plan;
pub mod signature;
pub mod suggest;
pub mod sync;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::gong::models::ObjectType;
use crate::mapping::{Input, Mapping, MappingProblem};
use crate::outbox::shards::RejectedRecord;
use crate::ports::Config;

/// One change a delivery carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The record as the CRM sent it, with the delivery's metadata (`/$event/…` in mappings).
    Upsert {
        object: String,
        record: Value,
        event: Value,
    },
    /// The CRM's id of a deleted (or merged-away) record, and when (its own time text).
    Delete {
        object: String,
        id: String,
        at: String,
    },
    /// A thin notification (Attio): the record is read from the CRM's API after the answer.
    /// `object_id` is the CRM's id of the object (resolved to its name then).
    Fetch {
        object_id: String,
        record_id: String,
    },
    /// A thin notification that a record is gone (deleted, merged away): no fetch needed.
    Gone {
        object_id: String,
        record_id: String,
    },
}

/// A verified delivery: its id (for logs and the failure store) and its changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: String,
    pub changes: Vec<Change>,
    /// Why the delivery, though authentic, carries nothing the bridge acts on (an entity it does
    /// not map, a webhook version it does not read).
    pub ignored: Option<String>,
}

/// Why a delivery was not verified.
#[derive(Debug, Clone, PartialEq)]
pub enum VerifyError {
    /// These variables are not set: the bridge cannot verify anything yet.
    NotConfigured(Vec<String>),
    /// Not authentic: what was wrong (never echoing a secret).
    Refused(String),
}

/// One CRM's webhook.
pub trait Receiver: Sync {
    /// `pipedrive`: the route's path segment and the failure store's source name.
    fn name(&self) -> &str;
    /// The default mapping document (JSON): compiled in, or empty for a custom source.
    fn default_mapping(&self) -> &str;
    /// Checks the delivery's authentication against the raw body.
    fn verify(
        &self,
        config: &dyn Config,
        headers: &http::HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError>;
    /// Reads the delivery's changes; `Err` says why the body could not be read.
    fn parse(&self, body: &[u8]) -> Result<Delivery, String>;
}

/// Every receiver, by name.
pub const RECEIVERS: &[&dyn Receiver] = &[&pipedrive::Pipedrive, &close::Close, &attio::Attio];

pub fn receiver(name: &str) -> Option<&'static dyn Receiver> {
    RECEIVERS.iter().copied().find(|r| r.name() == name)
}

/// A source by name: a built-in receiver, or a custom source the user stored a mapping for.
pub enum Source {
    Builtin(&'static dyn Receiver),
    Custom(Box<custom::Custom>),
}

impl std::ops::Deref for Source {
    type Target = dyn Receiver;
    fn deref(&self) -> &(dyn Receiver + 'static) {
        match self {
            Source::Builtin(r) => *r,
            Source::Custom(c) => c.as_ref(),
        }
    }
}

/// The source named `name`, if it exists (a custom source exists once its mapping is stored).
pub fn source(bridge: &Bridge, name: &str) -> Result<Option<Source>, Fault> {
    if let Some(builtin) = receiver(name) {
        return Ok(Some(Source::Builtin(builtin)));
    }
    if custom::valid_name(name).is_err() || overrides::stored(bridge, name)?.is_none() {
        return Ok(None);
    }
    Ok(Some(Source::Custom(Box::new(custom::Custom::new(
        name,
        None,
        bridge.clock.now().unix_timestamp(),
    )))))
}

/// A source's default mapping (compiled in); the one in effect is `overrides::effective`.
pub fn mapping(receiver: &dyn Receiver) -> Result<Mapping, Fault> {
    serde_json::from_str(receiver.default_mapping()).map_err(|e| {
        Fault::Corrupt(format!(
            "the default mapping of {} is unreadable: {e}",
            receiver.name()
        ))
    })
}

/// What a delivery came to.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub accepted: usize,
    /// Records now in the failure store (field, rule, source id).
    pub rejected: usize,
    /// Changes of objects the mapping does not map.
    pub ignored: usize,
    /// Thin notifications kept to be read from the CRM's API after the answer.
    pub queued: usize,
    /// The Gong records accepted, `(type, objectId)`, in delivery order.
    pub records: Vec<(ObjectType, String)>,
    /// The inbox should be compacted after the answer.
    pub compact_inbox: bool,
    /// What the accepted records refer to (`gong::references`), to be checked after the answer.
    pub references: Vec<crate::gong::references::Reference>,
}

/// References checked per delivery at most (a bulk delivery's are left to the sync).
const MAX_REFERENCES: usize = 20;

/// The Gong record and what to keep if it fails: the change as received.
struct Mapped {
    record: Value,
    raw: Value,
}

/// Maps a verified delivery and hands it to the accept path, one inbox write per Gong type;
/// thin notifications go to the fetch queue (one write) and are read after the answer.
pub fn accept(
    bridge: &Bridge,
    receiver: &dyn Receiver,
    delivery: Delivery,
) -> Result<Outcome, Fault> {
    let (thin, changes): (Vec<Change>, Vec<Change>) = delivery
        .changes
        .into_iter()
        .partition(|c| matches!(c, Change::Fetch { .. } | Change::Gone { .. }));
    let mut outcome = map_and_accept(bridge, receiver, &delivery.id, changes)?;
    if !thin.is_empty() {
        outcome.queued = thin.len();
        outcome.compact_inbox |= fetch::enqueue(bridge, receiver.name(), &delivery.id, thin)?;
    }
    Ok(outcome)
}

/// Maps changes that carry their record (or a delete) and accepts them.
pub fn map_and_accept(
    bridge: &Bridge,
    receiver: &dyn Receiver,
    delivery: &str,
    changes: Vec<Change>,
) -> Result<Outcome, Fault> {
    // A stored override that no longer holds must not make an authentic delivery fail (the CRM
    // would retry, then give up on us): the default maps it, and the log says why.
    let mapping = match overrides::effective(bridge, receiver) {
        Ok(mapping) => mapping,
        Err(e) => {
            crate::log::error(
                "the stored mapping override does not hold; the default mapping is used",
            )
            .field("source", receiver.name())
            .field("error", e.to_string())
            .emit();
            mapping(receiver)?
        }
    };
    let now = bridge.clock.now();
    let mut by_type: BTreeMap<ObjectType, (Vec<Mapped>, Vec<RejectedRecord>)> = BTreeMap::new();
    let mut outcome = Outcome::default();
    for change in changes {
        let object_name = match &change {
            Change::Upsert { object, .. } | Change::Delete { object, .. } => object.clone(),
            Change::Fetch { .. } | Change::Gone { .. } => continue,
        };
        let Some(object) = mapping.object(&object_name) else {
            outcome.ignored += 1;
            continue;
        };
        let (mapped, raw, source_id) = match change {
            Change::Upsert { record, event, .. } => {
                let source_id = object
                    .fields
                    .get("objectId")
                    .and_then(|rule| rule.path.first())
                    .and_then(|p| record.pointer(p))
                    .map(text_of)
                    .unwrap_or_default();
                let mapped = mapping.apply(
                    object,
                    &Input {
                        record: &record,
                        event: &event,
                    },
                );
                (
                    mapped,
                    json!({"object": object_name, "record": record, "event": event}),
                    source_id,
                )
            }
            Change::Delete { id, at, .. } => (
                mapping.deleted(object, &id, &at),
                json!({"object": object_name, "deleted": id, "at": at}),
                id,
            ),
            Change::Fetch { .. } | Change::Gone { .. } => continue,
        };
        let slot = by_type.entry(object.to).or_default();
        match mapped {
            Ok(record) => {
                for reference in crate::gong::references::of(object.to, &record) {
                    if outcome.references.len() < MAX_REFERENCES
                        && !outcome.references.contains(&reference)
                    {
                        outcome.references.push(reference);
                    }
                }
                slot.0.push(Mapped { record, raw })
            }
            Err(problems) => slot.1.push(rejected(
                receiver.name(),
                format!("{}{source_id}", object.id_prefix),
                now.unix_timestamp(),
                &problems,
                raw,
            )?),
        }
    }
    for (object_type, (mapped, rejected)) in by_type {
        let accepted = crate::intake::accept_partial(
            bridge,
            object_type,
            receiver.name(),
            mapped.into_iter().map(|m| (m.record, m.raw)).collect(),
            rejected,
            delivery,
        )?;
        outcome.accepted += accepted.accepted;
        outcome.rejected += accepted.rejected;
        outcome.compact_inbox |= accepted.compact_inbox;
        outcome
            .records
            .extend(accepted.object_ids.into_iter().map(|id| (object_type, id)));
    }
    Ok(outcome)
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A record the failure store keeps: why (every problem: field, message, rule) and the change.
pub fn rejected(
    source: &str,
    id: String,
    at: i64,
    problems: &[MappingProblem],
    raw: Value,
) -> Result<RejectedRecord, Fault> {
    let why = problems
        .iter()
        .map(|p| format!("{p}"))
        .collect::<Vec<_>>()
        .join("; ");
    let raw = serde_json::value::to_raw_value(&raw).map_err(crate::fault::encoding)?;
    Ok(RejectedRecord {
        id: if id.is_empty() { "(no id)".into() } else { id },
        m: at,
        why: format!("{source}: {why}"),
        source: source.to_owned(),
        raw,
    })
}

/// Maps a failed change again with the source's current mapping (a retry from the failure
/// store): the Gong record, or why it still cannot be mapped.
pub fn remap(bridge: &Bridge, source: &str, raw: &str) -> Result<(ObjectType, Value), String> {
    let receiver = self::source(bridge, source)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!("no source named {source:?} (a custom source's mapping was removed?)")
        })?;
    let mapping = overrides::effective(bridge, &*receiver).map_err(|e| e.to_string())?;
    let raw: Value =
        serde_json::from_str(raw).map_err(|e| format!("the kept change is unreadable: {e}"))?;
    let object_name = raw["object"].as_str().unwrap_or_default();
    let object = mapping
        .object(object_name)
        .ok_or_else(|| format!("the mapping of {source} no longer maps {object_name:?}"))?;
    let mapped = match raw.get("deleted").and_then(Value::as_str) {
        Some(id) => mapping.deleted(object, id, raw["at"].as_str().unwrap_or_default()),
        None => mapping.apply(
            object,
            &Input {
                record: &raw["record"],
                event: &raw["event"],
            },
        ),
    };
    mapped
        .map(|record| (object.to, record))
        .map_err(|problems| {
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod custom_tests;
