//! The fetch queue of thin notifications (Attio): answer first, fetch after. A delivery's
//! notifications are one key (`fetch/{source}/{received}/{unique}`, written before the answer,
//! never read-modify-written by a webhook). After an answer and in `POST /flush`, within the work
//! budget, the queue is drained under its own lease: each notification's object is resolved
//! (once, then remembered), its record read through the gateway (the CRM's rate and its 429
//! `Retry-After`, the platform's hourly cap), mapped and accepted like any delivery. A key goes
//! only once all of its notifications are accepted; a failed read keeps it, with a backoff. A 404
//! means the record is gone (deleted in Gong), unless Attio says a merge is in progress; a refused token stops the drain and is shown on
//! `/healthz` and `/status` while the notifications wait.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{attio, Change, Receiver};
use crate::bridge::Bridge;
use crate::fault::{encoding, Fault};
use crate::gateway::{self, Upstream};
use crate::keys::{FETCH_LEASE, FETCH_PREFIX};
use crate::quota::QuotaLimits;

/// One queued delivery's notifications.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Queued {
    source: String,
    delivery: String,
    received: i64,
    items: Vec<Item>,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    next_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Item {
    object_id: String,
    record_id: String,
    /// Deleted or merged away: nothing to read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    gone: bool,
}

/// What a source's API said last, for `/healthz` and `/status` (only a refused token is kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceHealth {
    pub source: String,
    pub problem: String,
    pub since: i64,
    pub waiting: usize,
}

/// The longest wait between two tries of one key (seconds).
const MAX_BACKOFF_SECONDS: i64 = 600;

fn health_key(source: &str) -> String {
    format!("{}{source}", crate::keys::SOURCE_HEALTH_PREFIX)
}

fn objects_key(source: &str) -> String {
    format!("{}{source}", crate::keys::SOURCE_OBJECTS_PREFIX)
}

/// Attio's API as an upstream of the gateway: its own shared budget (Attio allows 100 reads and
/// 25 writes a second across its API; the bridge keeps to 10) and its 429 pause (until the
/// HTTP-date its `Retry-After` names).
pub fn upstream(source: &str) -> Upstream {
    Upstream {
        name: "Attio",
        quota_key: format!("{}{source}", crate::keys::SOURCE_QUOTA_PREFIX),
        limits: QuotaLimits {
            per_second: 10,
            per_hour: 0,
            per_day: 0,
        },
        timeout: Duration::from_secs(10),
    }
}

/// Queues a delivery's thin notifications (one write, admitted like an inbox key). Returns
/// whether the inbox (the store) is full enough to be compacted after the answer.
pub fn enqueue(
    bridge: &Bridge,
    source: &str,
    delivery: &str,
    changes: Vec<Change>,
) -> Result<bool, Fault> {
    let items: Vec<Item> = changes
        .into_iter()
        .filter_map(|c| match c {
            Change::Fetch {
                object_id,
                record_id,
            } => Some(Item {
                object_id,
                record_id,
                gone: false,
            }),
            Change::Gone {
                object_id,
                record_id,
            } => Some(Item {
                object_id,
                record_id,
                gone: true,
            }),
            _ => None,
        })
        .collect();
    let now = bridge.clock.now();
    let queued = Queued {
        source: source.to_owned(),
        delivery: delivery.to_owned(),
        received: now.unix_timestamp(),
        items,
        attempts: 0,
        next_at: 0,
        last_error: None,
    };
    let inbox = crate::outbox::admit_keys(bridge, 1)?;
    let key = format!(
        "{FETCH_PREFIX}{source}/{:011}/{:09}{}",
        now.unix_timestamp(),
        now.nanosecond(),
        uuid::Uuid::new_v4().simple()
    );
    bridge
        .kv
        .set(&key, &serde_json::to_vec(&queued).map_err(encoding)?)?;
    Ok(inbox + 1 >= crate::settings::layout(bridge.config).inbox_compact_at)
}

pub fn any_waiting(keys: &[String]) -> bool {
    keys.iter().any(|k| k.starts_with(FETCH_PREFIX))
}

/// What a source's API said that stops its drain.
pub fn health(bridge: &Bridge) -> Result<Vec<SourceHealth>, Fault> {
    let keys = bridge.kv.keys()?;
    let mut out = Vec::new();
    for key in keys
        .iter()
        .filter(|k| k.starts_with(crate::keys::SOURCE_HEALTH_PREFIX))
    {
        if let Some(mut h) = bridge.store().get_json::<SourceHealth>(key)? {
            h.waiting = keys
                .iter()
                .filter(|k| k.starts_with(&format!("{FETCH_PREFIX}{}/", h.source)))
                .count();
            out.push(h);
        }
    }
    Ok(out)
}

/// What one drain did.
#[derive(Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drained {
    pub fetched: usize,
    pub gone: usize,
    pub keys_done: usize,
    pub keys_left: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// Why reading one record stopped.
enum Stop {
    /// Retry this key later (a 5xx, a timeout, a 429, the budget): with why.
    Later(String),
    /// The token is refused: nothing can be read until it is fixed.
    Token(String),
}

/// Drains the queue within the work budget, under the fetch lease (another holder: nothing to
/// do now). Two holders at once read some records twice: duplicates, never a loss. `force`
/// (`POST /flush?force=true`, an operator's "now") tries keys still in their backoff too.
pub fn drain(bridge: &Bridge, force: bool) -> Result<Drained, Fault> {
    let lease = crate::lease::acquire(
        bridge.kv,
        bridge.clock,
        FETCH_LEASE,
        Duration::from_secs(30),
        crate::settings::idempotency_settle(bridge.config),
    )?;
    let Some(held) = lease else {
        return Ok(Drained::default());
    };
    let result = drain_held(bridge, force);
    crate::lease::release(bridge.kv, held);
    result
}

fn drain_held(bridge: &Bridge, force: bool) -> Result<Drained, Fault> {
    let mut keys: Vec<String> = bridge
        .kv
        .keys()?
        .into_iter()
        .filter(|k| k.starts_with(FETCH_PREFIX))
        .collect();
    crate::sorting::sort(&mut keys);
    let mut report = Drained::default();
    let now = bridge.clock.now().unix_timestamp();
    for (n, key) in keys.iter().enumerate() {
        if report.stopped.is_some() || bridge.deadline.is_some_and(|d| bridge.clock.now() >= d) {
            report.keys_left = keys.len() - n;
            break;
        }
        let Some(mut queued) = bridge.store().get_json::<Queued>(key)? else {
            continue;
        };
        if queued.next_at > now && !force {
            report.keys_left += 1;
            continue;
        }
        let Some(receiver) = super::receiver(&queued.source) else {
            crate::log::warn(format!(
                "fetch queue key {key} names no receiver ({}); left in place",
                queued.source
            ))
            .emit();
            continue;
        };
        let mut changes = Vec::new();
        let mut done = 0;
        let mut stop = None;
        for item in &queued.items {
            match read(bridge, receiver, &queued.source, item) {
                Ok(change) => {
                    if matches!(change, Change::Delete { .. }) {
                        report.gone += 1;
                    } else {
                        report.fetched += 1;
                    }
                    changes.push(change);
                    done += 1;
                }
                Err(s) => {
                    stop = Some(s);
                    break;
                }
            }
        }
        if !changes.is_empty() {
            super::map_and_accept(bridge, receiver, &queued.delivery, changes)?;
        }
        match stop {
            None => {
                bridge.kv.delete(key)?;
                report.keys_done += 1;
                let _ = bridge.kv.delete(&health_key(&queued.source));
            }
            Some(why) => {
                let (message, token) = match why {
                    Stop::Later(m) => (m, false),
                    Stop::Token(m) => (m, true),
                };
                queued.items.drain(..done);
                queued.attempts += 1;
                let backoff = (10i64 << queued.attempts.min(6)).min(MAX_BACKOFF_SECONDS);
                queued.next_at = now + backoff;
                queued.last_error = Some(message.clone());
                bridge.store().put_json(key, &queued)?;
                report.keys_left += 1;
                if token {
                    let health = SourceHealth {
                        source: queued.source.clone(),
                        problem: message.clone(),
                        since: now,
                        waiting: 0,
                    };
                    bridge
                        .store()
                        .put_json(&health_key(&queued.source), &health)?;
                    report.stopped = Some(message);
                }
            }
        }
    }
    Ok(report)
}

/// Reads one notification's record: the change to accept, or why not now.
fn read(
    bridge: &Bridge,
    receiver: &dyn Receiver,
    source: &str,
    item: &Item,
) -> Result<Change, Stop> {
    let object = resolve(bridge, source, &item.object_id)?;
    let now = crate::validation::format_gong_datetime(bridge.clock.now());
    if item.gone {
        return Ok(Change::Delete {
            object,
            id: item.record_id.clone(),
            at: now,
        });
    }
    let request =
        attio::get_record(bridge.config, &object, &item.record_id).map_err(Stop::Token)?;
    let response = send(bridge, source, request)?;
    match response.status().as_u16() {
        200 => {
            let record = attio::record(response.body()).ok_or_else(|| {
                Stop::Later(format!(
                    "{} answered a record without \"data\"",
                    receiver.name()
                ))
            })?;
            // Attio records carry no modification time: the time of this read, so the newest read wins.
            Ok(Change::Upsert {
                object,
                record,
                event: json!({"fetched_at": now, "record_id": item.record_id}),
            })
        }
        // Only `not_found` means gone: during a merge Attio answers 404 `merge_in_progress` for
        // the record that survives it.
        404 if attio::error_code(response.body()).as_deref() != Some("merge_in_progress") => {
            Ok(Change::Delete {
                object,
                id: item.record_id.clone(),
                at: now,
            })
        }
        status => Err(classify(status, response.body())),
    }
}

fn send(
    bridge: &Bridge,
    source: &str,
    request: crate::ports::Request,
) -> Result<crate::ports::Response, Stop> {
    match gateway::send(bridge, &upstream(source), request) {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(Stop::Later(format!("Attio could not be reached: {error}"))),
        Err(fault) => Err(Stop::Later(fault.to_string())),
    }
}

fn classify(status: u16, body: &[u8]) -> Stop {
    let said = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    match status {
        401 | 403 => Stop::Token(format!("Attio refused attio_api_token ({status}): {said}")),
        _ => Stop::Later(format!("Attio answered {status}: {said}")),
    }
}

/// The object's name (`people`) for its id, read from the API once and remembered.
fn resolve(bridge: &Bridge, source: &str, object_id: &str) -> Result<String, Stop> {
    let key = objects_key(source);
    let mut known: BTreeMap<String, String> = bridge
        .store()
        .get_json(&key)
        .map_err(|e| Stop::Later(e.to_string()))?
        .unwrap_or_default();
    if let Some(slug) = known.get(object_id) {
        return Ok(slug.clone());
    }
    let request = attio::get_object(bridge.config, object_id).map_err(Stop::Token)?;
    let response = send(bridge, source, request)?;
    if response.status().as_u16() != 200 {
        return Err(classify(response.status().as_u16(), response.body()));
    }
    let slug = attio::object_slug(response.body())
        .ok_or_else(|| Stop::Later(format!("Attio's object {object_id} has no api_slug")))?;
    known.insert(object_id.to_owned(), slug.clone());
    if let Err(e) = bridge.store().put_json(&key, &known) {
        crate::log::warn(format!("could not remember Attio object {object_id}: {e}")).emit();
    }
    Ok(slug)
}
