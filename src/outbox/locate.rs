//! "Where is my record": one record's newest version, wherever it is — waiting in the inbox
//! or a shard, in a file Gong has (and what Gong said of its line), done, or failed.

use serde::Serialize;

use super::commands;
use super::due::PendingKey;
use super::requests::{self, RecordIndexEntry};
use super::shards::{
    pending_shard_key, read_map, shard_of, InboxEntry, Layout, Shard, Slot, INBOX_PREFIX,
};
use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::gong::models::ObjectType;
use crate::settings;
use crate::tracking::{TrackedLineError, TrackedStatus};
use crate::validation;

/// Where one record is, as `GET /records/{type}/{id}/status` answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    pub object_type: ObjectType,
    pub object_id: String,
    /// `waiting`, `sending`, `not_sent`, `sent`, `done`, `failed` or `discarded`.
    pub state: &'static str,
    pub explanation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_versions: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_modified_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_status: Option<TrackedStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<TrackedLineError>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploaded_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<&'static str>,
    /// An operator command waiting for the engine: `retry requested` or `discard requested`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_error: Option<String>,
    /// Objects the waiting version refers to that Gong never got from the bridge, in words
    /// ("ACCOUNT 123 was never sent to Gong: the deal will not show until it is").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_references: Option<Vec<String>>,
}

impl Location {
    fn new(
        object_type: ObjectType,
        object_id: &str,
        state: &'static str,
        explanation: String,
    ) -> Location {
        Location {
            object_type,
            object_id: object_id.to_owned(),
            state,
            explanation,
            pending_versions: None,
            latest_modified_date: None,
            client_request_id: None,
            line: None,
            request_status: None,
            errors: None,
            uploaded_at: None,
            failed_at: None,
            retry: None,
            requested: None,
            poll_error: None,
            missing_references: None,
        }
    }
}

/// Where the newest version of one record is, whichever path brought it (a webhook, or a file of
/// `POST /records`); `None` when the bridge never had it. A file whose status is due for a poll
/// is polled first (within the shared quota).
pub fn locate(
    bridge: &Bridge,
    object_type: ObjectType,
    object_id: &str,
) -> Result<Option<Location>, Fault> {
    let layout = settings::layout(bridge.config);
    let pending = pending_versions(bridge, layout, object_type, object_id)?;
    if let Some(latest) = pending.iter().max_by_key(|k| k.modified) {
        let mut at = Location::new(
            object_type,
            object_id,
            "waiting",
            format!("buffered in the bridge; it goes to Gong with the next {object_type} flush"),
        );
        at.pending_versions = Some(pending.len());
        at.latest_modified_date = time::OffsetDateTime::from_unix_timestamp(latest.modified)
            .ok()
            .map(validation::format_gong_datetime);
        let missing = missing_references(bridge, layout, object_type, object_id)?;
        if !missing.is_empty() {
            at.explanation = format!("{}; {}", at.explanation, missing.join("; "));
            at.missing_references = Some(missing);
        }
        return Ok(Some(at));
    }
    let held = slot_of(bridge, layout, object_type, object_id)?;
    // A failure of an older version than the one last sent says nothing about the record now.
    let sent_version = held
        .as_ref()
        .filter(|s| s.sent.is_some())
        .map(|s| s.modified);
    let failure = commands::failure_of(bridge, object_type, object_id)?
        .filter(|f| sent_version.is_none_or(|sent| sent <= f.modified));
    if let Some(failure) = failure.filter(|f| f.is_open() || f.discarded_at.is_some()) {
        let discarded = failure.discarded_at.is_some();
        let mut at = Location::new(
            object_type,
            object_id,
            if discarded { "discarded" } else { "failed" },
            failure.description.clone(),
        );
        if discarded {
            at.explanation = format!("Gong refused it ({}); an operator discarded the failure, so this version is not sent again", failure.description);
        } else {
            at.retry = Some("POST /failures/retry with {\"objectType\", \"ids\"} re-queues it");
            // A command waits for the engine: say what will happen.
            let waiting = commands::waiting(bridge)?;
            if let Some(command) = commands::requested_for(&waiting, &failure) {
                at.requested = Some(command.action.requested());
                at.explanation = format!(
                    "{}; {} (the engine applies it within seconds)",
                    failure.description,
                    command.action.requested()
                );
            }
        }
        at.client_request_id = Some(failure.client_request_id);
        at.failed_at = Some(failure.failed_at);
        return Ok(Some(at));
    }
    let at_text = |at: i64| {
        time::OffsetDateTime::from_unix_timestamp(at)
            .map(validation::format_gong_datetime)
            .unwrap_or_default()
    };
    let tombstone = held
        .and_then(|slot| slot.sent)
        .map(|sent| RecordIndexEntry {
            client_request_id: sent.c,
            line: sent.n,
            at: at_text(sent.at),
        });
    // A bulk file not folded into the shards yet (right after its upload) says it too.
    let entry = match tombstone {
        Some(entry) => entry,
        None => match super::sent::find_waiting(bridge, object_type, object_id)? {
            Some((client_request_id, line, at)) => RecordIndexEntry {
                client_request_id,
                line,
                at: at_text(at),
            },
            None => return Ok(None),
        },
    };
    let record = match requests::load(bridge, &entry.client_request_id) {
        Ok(record) => record,
        // Only finished request records are removed (retention): a record whose file finished
        // and that is not in the failure store is done.
        Err(Fault::NoSuchRequest(_))
            if !entry
                .client_request_id
                .starts_with(super::FLUSH_FILE_PREFIX) =>
        {
            // A bulk file's failed lines are not in the failure store: without its request
            // record the bridge cannot say more than this.
            let explanation = format!(
                "sent to Gong in {} (line {}); the bridge keeps the outcome of its newest {} requests only, and that one is gone",
                entry.client_request_id, entry.line, layout.request_retention
            );
            return Ok(Some(sent_at(
                Location::new(object_type, object_id, "sent", explanation),
                &entry,
            )));
        }
        Err(Fault::NoSuchRequest(_)) => {
            let explanation = format!(
                "Gong processed the file that carried it ({}, line {}); the bridge keeps the records of its newest {} requests only",
                entry.client_request_id, entry.line, layout.request_retention
            );
            return Ok(Some(sent_at(
                Location::new(object_type, object_id, "done", explanation),
                &entry,
            )));
        }
        Err(e) => return Err(e),
    };
    let (record, poll_error) = requests::refresh(bridge, record);
    let own_errors: Vec<TrackedLineError> = record
        .errors
        .iter()
        .filter(|e| e.object_id.as_deref() == Some(object_id) || e.line == 0)
        .cloned()
        .collect();
    let (state, explanation) = match record.status {
        TrackedStatus::Submitting => ("sending", "being sent to Gong".to_owned()),
        TrackedStatus::NotSent => (
            "not_sent",
            format!(
                "Gong did not accept the upload ({}); POST /requests/{}/retry resends it",
                record.last_error.clone().unwrap_or_default(),
                record.client_request_id
            ),
        ),
        TrackedStatus::Pending | TrackedStatus::InProgress => (
            "sent",
            format!("sent to Gong; Gong's status is {:?}", record.status),
        ),
        TrackedStatus::Done => ("done", "Gong processed the upload".to_owned()),
        // Not listed among the failed lines: once the file is settled the record is either
        // pending again (answered above) or covered by this FAILED status as done.
        TrackedStatus::Failed if own_errors.is_empty() => (
            "done",
            "Gong processed this record; other records of the upload failed".to_owned(),
        ),
        TrackedStatus::Failed => (
            "failed",
            own_errors
                .iter()
                .map(|e| e.description.clone())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let mut at = sent_at(
        Location::new(object_type, object_id, state, explanation),
        &entry,
    );
    at.request_status = Some(record.status);
    at.errors = Some(own_errors);
    at.poll_error = poll_error;
    Ok(Some(at))
}

/// Whether the bridge has (or had) the record at all: pending, sent, or in a bulk file.
pub fn known(bridge: &Bridge, object_type: ObjectType, object_id: &str) -> Result<bool, Fault> {
    let layout = settings::layout(bridge.config);
    Ok(slot_of(bridge, layout, object_type, object_id)?.is_some()
        || !pending_versions(bridge, layout, object_type, object_id)?.is_empty()
        || super::sent::find_waiting(bridge, object_type, object_id)?.is_some())
}

/// What the shard's waiting version refers to that the bridge never had, in words.
fn missing_references(
    bridge: &Bridge,
    layout: Layout,
    object_type: ObjectType,
    object_id: &str,
) -> Result<Vec<String>, Fault> {
    let Some(line) = slot_of(bridge, layout, object_type, object_id)?.and_then(|s| s.line) else {
        return Ok(Vec::new());
    };
    let record: serde_json::Value = serde_json::from_str(line.get()).unwrap_or_default();
    let mut missing = Vec::new();
    for reference in crate::gong::references::of(object_type, &record) {
        if !known(bridge, reference.object_type, &reference.object_id)? {
            missing.push(format!(
                "{} {} ({}) was never sent to Gong: {}",
                reference.object_type,
                reference.object_id,
                reference.field,
                crate::gong::references::consequence(object_type, reference.field)
            ));
        }
    }
    Ok(missing)
}

fn sent_at(mut at: Location, entry: &RecordIndexEntry) -> Location {
    at.client_request_id = Some(entry.client_request_id.clone());
    at.line = Some(entry.line);
    at.uploaded_at = Some(entry.at.clone());
    at
}

fn slot_of(
    bridge: &Bridge,
    layout: Layout,
    object_type: ObjectType,
    object_id: &str,
) -> Result<Option<Slot>, Fault> {
    let mut shard: Shard = read_map(
        bridge.kv,
        &pending_shard_key(object_type, shard_of(object_id, layout.pending_shards)),
    )?;
    Ok(shard.remove(object_id))
}

/// The record's pending version in its shard, and any versions still in the inbox.
pub fn pending_versions(
    bridge: &Bridge,
    layout: Layout,
    object_type: ObjectType,
    object_id: &str,
) -> Result<Vec<PendingKey>, Fault> {
    let mut out = Vec::new();
    let key = |slot: &Slot| PendingKey {
        object_type,
        object_id: object_id.to_owned(),
        modified: slot.modified,
        received: slot.received,
        bytes: slot.line.as_ref().map_or(0, |l| l.get().len()),
        attempt: slot.attempt,
    };
    let held = slot_of(bridge, layout, object_type, object_id)?;
    if let Some(slot) = held.as_ref().filter(|s| s.is_pending()) {
        out.push(key(slot));
    }
    let prefix = format!("{INBOX_PREFIX}{}/", object_type.as_str());
    // Keys merged already (waiting out their second look) hold records the shard confirmed: they
    // are read only for a record the shard has no slot for (a stalled replica's overwrite, say).
    // Reading them for every lookup cost a minute of deliveries per lookup (issue 12).
    let merged = if held.is_some() {
        super::inbox::settling(bridge)?
    } else {
        Default::default()
    };
    for inbox in bridge
        .kv
        .keys()?
        .into_iter()
        .filter(|k| k.starts_with(&prefix) && !merged.contains_key(k))
    {
        let Some(value) = bridge.kv.get(&inbox)? else {
            continue;
        };
        let Ok(entry) = serde_json::from_slice::<InboxEntry>(&value) else {
            continue;
        };
        for r in entry.records.iter().filter(|r| r.id == object_id) {
            // Not yet compacted; an older version than the one held will be kept out.
            if held
                .as_ref()
                .is_none_or(|h| r.m > h.modified || (r.m == h.modified && h.is_pending()))
            {
                out.push(PendingKey {
                    object_type,
                    object_id: object_id.to_owned(),
                    modified: r.m,
                    received: entry.r,
                    bytes: r.l.get().len(),
                    attempt: 0,
                });
            }
        }
    }
    // A version delivered several times is one version (compaction merges the copies).
    crate::sorting::sort_by_key(&mut out, |k| (k.modified, k.received));
    out.dedup_by_key(|k| k.modified);
    Ok(out)
}
