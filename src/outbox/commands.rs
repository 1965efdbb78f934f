//! Operator commands on the failure store (retry, discard: one record, a type, or all): recorded
//! at once, whatever the engine is doing, and applied by the engine under its lease.
//!
//! Why recorded rather than done on the spot: the failure shards have one writer, the flush
//! lease holder, and a busy bridge holds that lease most of the time (the status page's own
//! refresh starts flush work). Refusing an operator while it is held made Retry and Discard fail
//! at random. So a command is one new key (`command/{at}-{random}`, never rewritten, like an
//! inbox key) and is answered 202; the engine applies every waiting command in its next run
//! (usually the work right after that answer), then deletes it.
//!
//! The rules, the same for one engine or two at once:
//! - a command covers the failures stored when it was given (not one stored after it);
//! - for each failure, the latest command covering it wins (retry then discard: discarded);
//! - applying is idempotent: a re-queue merges as a duplicate, a discard of a discarded or
//!   re-queued failure does nothing. Two engines applying the same commands send nothing twice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::pending::{merge_into_pending, Incoming};
use super::shards::{
    self, failure_shard_key, read_map, shard_of, write_map, Slot, FAILURE_SHARD_PREFIX,
};
use super::{failures, inflight_key, Failure, InFlight};
use crate::bridge::Bridge;
use crate::fault::{encoding, Fault};
use crate::gong::models::ObjectType;
use crate::settings;

pub use crate::keys::COMMAND_PREFIX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Retry,
    Discard,
}

impl Action {
    /// What a record's status says until the command is applied.
    pub fn requested(self) -> &'static str {
        match self {
            Action::Retry => "retry requested",
            Action::Discard => "discard requested",
        }
    }
}

/// One operator command, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Command {
    pub action: Action,
    /// `None`: every type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_type: Option<ObjectType>,
    /// `None`: every failure of the type(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// When it was given (Unix milliseconds): the later command wins.
    pub at_ms: i64,
}

impl Command {
    /// Whether this command covers `failure` (given after it was stored).
    pub fn covers(&self, failure: &Failure) -> bool {
        self.object_type.is_none_or(|t| t == failure.object_type)
            && self
                .ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&failure.object_id))
            && failed_at_ms(failure).is_some_and(|stored| stored <= self.at_ms)
    }
}

fn failed_at_ms(failure: &Failure) -> Option<i64> {
    crate::validation::parse_gong_datetime(&failure.failed_at)
        .ok()
        .map(|t| t.unix_timestamp() * 1_000)
}

/// How long a command waits for the lease to apply the waiting ones when too many wait.
const MAKE_ROOM_WAIT: time::Duration = time::Duration::seconds(2);

/// Commands waiting at most at once: a button pressed in a loop must not fill the store.
fn max_waiting(bridge: &Bridge) -> usize {
    (settings::layout(bridge.config).max_keys / 64).max(4)
}

/// Records a command for the engine; the caller answers 202. Refused (503) only while the
/// store already holds as many waiting commands as the budget allows.
pub fn record(
    bridge: &Bridge,
    action: Action,
    object_type: Option<ObjectType>,
    ids: Option<Vec<String>>,
) -> Result<Command, Fault> {
    let count = |bridge: &Bridge| -> Result<usize, Fault> {
        Ok(bridge
            .kv
            .keys()?
            .iter()
            .filter(|k| k.starts_with(COMMAND_PREFIX))
            .count())
    };
    let mut waiting = count(bridge)?;
    if waiting >= max_waiting(bridge) {
        // Make room first: apply the waiting ones, waiting briefly for the lease if it is held.
        let briefly = Bridge {
            deadline: Some(bridge.clock.now() + MAKE_ROOM_WAIT),
            ..*bridge
        };
        if let Err(e) = super::lease::when_held(&briefly, |_| apply_waiting(bridge)) {
            crate::log::warn(format!(
                "applying waiting operator commands to make room: {e}"
            ))
            .emit();
        }
        waiting = count(bridge)?;
    }
    if waiting >= max_waiting(bridge) {
        return Err(Fault::StoreFull {
            detail: format!(
                "{waiting} operator commands are waiting to be applied (at most {} at once) and the engine's lease stayed busy; it applies them within seconds, send this one again then",
                max_waiting(bridge)
            ),
            retry_after: 5,
        });
    }
    let now = bridge.clock.now();
    let at_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
    let command = Command {
        action,
        object_type,
        ids,
        at_ms,
    };
    // Nanoseconds first, so that keys sort in the order the commands were given.
    let key = format!(
        "{COMMAND_PREFIX}{:020}-{}",
        now.unix_timestamp_nanos().max(0),
        uuid::Uuid::new_v4().simple()
    );
    bridge
        .kv
        .set(&key, &serde_json::to_vec(&command).map_err(encoding)?)?;
    Ok(command)
}

/// Waiting commands with their keys, oldest first (unreadable ones are skipped and logged).
pub fn waiting(bridge: &Bridge) -> Result<Vec<(String, Command)>, Fault> {
    let mut keys: Vec<String> = bridge
        .kv
        .keys()?
        .into_iter()
        .filter(|k| k.starts_with(COMMAND_PREFIX))
        .collect();
    crate::sorting::sort(&mut keys);
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(bytes) = bridge.kv.get(&key)? else {
            continue;
        };
        match serde_json::from_slice::<Command>(&bytes) {
            Ok(command) => out.push((key, command)),
            Err(e) => crate::log::warn(format!(
                "operator command {key} is unreadable ({e}); left in place"
            ))
            .emit(),
        }
    }
    Ok(out)
}

/// The command that will decide this failure's fate (the latest covering it), if any waits.
pub fn requested_for<'c>(
    commands: &'c [(String, Command)],
    failure: &Failure,
) -> Option<&'c Command> {
    commands
        .iter()
        .map(|(_, c)| c)
        .filter(|c| c.covers(failure))
        .max_by_key(|c| c.at_ms)
}

/// Applies every waiting command (the caller holds the flush lease), then deletes them.
/// Returns (re-queued, discarded). A command stays when its step fails: applying it again
/// later does the same, once.
pub(super) fn apply_waiting(bridge: &Bridge) -> Result<(usize, usize), Fault> {
    let commands = waiting(bridge)?;
    if commands.is_empty() {
        return Ok((0, 0));
    }
    let layout = settings::layout(bridge.config);
    let release_after = settings::inbox_release_seconds(bridge.config);
    let now = bridge.clock.now().unix_timestamp();
    let keep_discarded = settings::idempotency_ttl(bridge.config).as_secs() as i64;
    let mut retried: BTreeMap<String, i64> = BTreeMap::new();
    let (mut requeued, mut discarded) = (0, 0);
    let scope: Vec<String> = bridge
        .kv
        .keys()?
        .into_iter()
        .filter(|k| k.starts_with(FAILURE_SHARD_PREFIX))
        .collect();
    for key in scope {
        let Some((shard_type, _)) = shards::parse_shard_key(&key, FAILURE_SHARD_PREFIX) else {
            continue;
        };
        let mut shard: BTreeMap<String, Failure> = read_map(bridge.kv, &key)?;
        let before = shard.len();
        // Discarded failures are kept a while only to answer "where is my record".
        shard.retain(|_, f| f.discarded_at.is_none_or(|at| now - at < keep_discarded));
        let mut to_retry = Vec::new();
        let mut to_discard = Vec::new();
        for (id, f) in shard.iter().filter(|(_, f)| f.is_open()) {
            match requested_for(&commands, f).map(|c| c.action) {
                Some(Action::Retry) => to_retry.push(id.clone()),
                Some(Action::Discard) => to_discard.push(id.clone()),
                None => {}
            }
        }
        if to_retry.is_empty() && to_discard.is_empty() && shard.len() == before {
            continue;
        }
        for id in &to_discard {
            let Some(f) = shard.get_mut(id) else { continue };
            f.discarded_at = Some(now);
            // A file still settling would write the failure again on its second look.
            let marker_key = inflight_key(&f.client_request_id);
            if let Some(mut marker) = bridge.store().get_json::<InFlight>(&marker_key)? {
                if !marker.discarded.contains(id) {
                    marker.discarded.push(id.clone());
                    bridge.store().put_json(&marker_key, &marker)?;
                }
            }
            discarded += 1;
        }
        // Pending shards first, then the failure shard: a crash in between leaves a record in
        // both, never in neither.
        let mut incoming = Vec::with_capacity(to_retry.len());
        let mut still_failing = Vec::new();
        for (tag, id) in to_retry.iter().enumerate() {
            let f = &shard[id];
            // A CRM's record is mapped again (the mapping may have been fixed); a record Gong
            // refused is sent again as it was.
            let (object_id, modified, line) = match &f.source {
                None => (id.clone(), f.modified, shards::raw_line(f.line.as_bytes())?),
                Some(source) => match remapped(bridge, source, &f.line, shard_type) {
                    Ok((object_id, modified, line)) => {
                        (object_id, modified, shards::raw_line(&line)?)
                    }
                    Err(why) => {
                        still_failing.push((id.clone(), why));
                        continue;
                    }
                },
            };
            incoming.push(Incoming {
                object_id,
                slot: Slot::pending(modified, now, 0, "", line),
                requeue: true,
                tag,
            });
        }
        let now_text = crate::validation::format_gong_datetime(bridge.clock.now());
        for (id, why) in still_failing {
            if let Some(f) = shard.get_mut(&id) {
                f.description = format!("{}: {why}", f.source.as_deref().unwrap_or_default());
                f.failed_at = now_text.clone();
            }
        }
        let merged = if incoming.is_empty() {
            Vec::new()
        } else {
            merge_into_pending(bridge, layout, shard_type, incoming)?
        };
        for m in merged.into_iter().filter(|m| m.confirmed) {
            let id = &to_retry[m.tag];
            if release_after == 0 {
                shard.remove(id);
            } else if let Some(f) = shard.get_mut(id) {
                // Kept (hidden) until a second look finds it pending: a replica stalled
                // mid-write could still overwrite this re-queue.
                f.retried_at = Some(now);
                retried.entry(key.clone()).or_insert(now);
            }
            requeued += 1;
        }
        write_map(bridge.kv, &key, &shard)?;
    }
    if release_after > 0 && !retried.is_empty() {
        let mut settling: BTreeMap<String, i64> = read_map(bridge.kv, failures::RETRIED_KEY)?;
        for (key, at) in retried {
            settling.entry(key).or_insert(at);
        }
        write_map(bridge.kv, failures::RETRIED_KEY, &settling)?;
    }
    for (key, _) in &commands {
        if let Err(e) = bridge.kv.delete(key) {
            // Applied; applying it again later does nothing more.
            crate::log::warn(format!("applied operator command {key} left in place: {e}")).emit();
        }
    }
    Ok((requeued, discarded))
}

/// Applies waiting commands now, waiting for the flush lease within the work budget (the work
/// after a command's 202). If the budget runs out, the lease holder's next run applies them.
pub fn apply_now(bridge: &Bridge) -> Result<(), Fault> {
    super::lease::when_held(bridge, |_| apply_waiting(bridge)).map(|_| ())
}

/// Where the failure store says a record is: open (with the command waiting for it, if any),
/// re-queued (retry applied), or discarded.
pub fn failure_of(
    bridge: &Bridge,
    object_type: ObjectType,
    object_id: &str,
) -> Result<Option<Failure>, Fault> {
    let layout = settings::layout(bridge.config);
    let mut shard: BTreeMap<String, Failure> = read_map(
        bridge.kv,
        &failure_shard_key(object_type, shard_of(object_id, layout.failure_shards)),
    )?;
    Ok(shard.remove(object_id))
}

/// A CRM's failed change mapped again and validated: (objectId, modifiedDate, line), or why
/// it still fails.
fn remapped(
    bridge: &Bridge,
    source: &str,
    raw: &str,
    object_type: ObjectType,
) -> Result<(String, i64, Vec<u8>), String> {
    let (mapped_type, record) = crate::crm::remap(bridge, source, raw)?;
    if mapped_type != object_type {
        return Err(format!(
            "the mapping now makes it a {mapped_type}, not a {object_type}"
        ));
    }
    let options = crate::validation::RecordOptions {
        normalize: true,
        ..Default::default()
    };
    let schema = if object_type.has_schema() {
        bridge.store().schema(object_type).ok().flatten()
    } else {
        None
    };
    let valid = crate::validation::validate_record(
        object_type,
        record,
        0,
        None,
        schema.as_deref(),
        options,
        &mut Vec::new(),
    )
    .map_err(|violations| {
        violations
            .iter()
            .map(|v| {
                format!(
                    "{}: {} ({})",
                    v.field.clone().unwrap_or_default(),
                    v.message,
                    v.rule
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    Ok((valid.object_id, valid.modified.unix_timestamp(), valid.line))
}
