//! The first full sync (backfill) of a source from its CRM's API: every object the mapping
//! maps, read page by page in Gong's order (users, stages, accounts, contacts, leads, deals),
//! through the same mapping and the same inbox as the webhooks, so a webhook and a page carrying
//! an older copy of one record resolve by modification time.
//!
//! A handler lives seconds, so the sync is a resumable cursor: one KV key per source
//! (`sync/{source}`) says which object and which page come next. Each advance (the work after an
//! answer, `POST /flush`) reads pages within the work budget under the source's sync lease: a
//! page's records are accepted first, then the cursor moves, so a crash repeats at most that
//! page (its records merge as duplicates). Two engines at once (an expired lease) read a page
//! twice: wasted work, never a lost page, and a cursor never moves back (the write is dropped
//! when the stored one is ahead).

pub mod attio;
pub mod close;
pub mod pipedrive;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::Change;
use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::gateway::{self, Upstream};
use crate::ports::{Config, Request};

/// One CRM's API as the sync reads it.
pub trait SyncApi: Sync {
    /// The source (receiver and mapping) the records belong to.
    fn source(&self) -> &'static str;
    /// The objects read, in Gong's order (each a `from` of the source's mapping).
    fn objects(&self) -> &'static [&'static str];
    fn upstream(&self) -> Upstream;
    /// The request for one page of `object` from `cursor` (`None`: the first page); `Err`
    /// names the variables that are missing.
    fn page(
        &self,
        config: &dyn Config,
        object: &str,
        cursor: Option<&str>,
    ) -> Result<Request, Vec<String>>;
    /// A page's records and the cursor of the next page (`None`: the last one); `cursor` is
    /// the one the page was asked with.
    fn read_page(&self, object: &str, cursor: Option<&str>, body: &[u8]) -> Result<Page, String>;
    /// The request for one record of `object` by its id (a referenced object Gong lacks).
    fn one(&self, config: &dyn Config, object: &str, id: &str) -> Result<Request, Vec<String>>;
}

#[derive(Debug, Default, PartialEq)]
pub struct Page {
    pub records: Vec<Value>,
    pub next: Option<String>,
}

/// Every CRM the bridge can sync from.
pub const APIS: &[&dyn SyncApi] = &[&pipedrive::PipedriveApi, &close::CloseApi, &attio::AttioApi];

pub fn api(source: &str) -> Option<&'static dyn SyncApi> {
    APIS.iter().copied().find(|a| a.source() == source)
}

/// One object's progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectProgress {
    pub object: String,
    pub pages: u64,
    pub records: u64,
    /// Records mapped but refused (in the failure store).
    pub rejected: u64,
    /// Pages that failed (and were tried again).
    pub errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    pub done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
}

/// A source's sync, as kept in `sync/{source}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncState {
    pub source: String,
    /// This run's id: a new `POST /sync` starts another.
    pub run: String,
    pub started_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<i64>,
    /// Index into `objects` of the object being read.
    pub current: usize,
    pub objects: Vec<ObjectProgress>,
    /// Failed pages in a row (the backoff doubles with each).
    #[serde(default)]
    pub attempts: u32,
    /// Not before (Unix seconds): the backoff after a failed page.
    #[serde(default)]
    pub next_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Records per object of the last finished sync of this source: the CRMs' lists give no
    /// totals, so the time left is estimated from them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_records: Vec<u64>,
}

impl SyncState {
    pub fn running(&self) -> bool {
        self.finished_at.is_none() && self.cancelled_at.is_none()
    }

    /// Pages read over all objects: the cursor's position, which only moves forward.
    fn position(&self) -> (usize, u64) {
        (
            self.current,
            self.objects.get(self.current).map_or(0, |o| o.pages),
        )
    }
}

fn key(source: &str) -> String {
    format!("{}{source}", crate::keys::SYNC_PREFIX)
}

fn lease_key(source: &str) -> String {
    format!("{}{source}", crate::keys::SYNC_LEASE_PREFIX)
}

pub fn state(bridge: &Bridge, source: &str) -> Result<Option<SyncState>, Fault> {
    bridge.store().get_json(&key(source))
}

/// Starts a sync of `source` (a running one is answered as it is: one sync at a time).
pub fn start(bridge: &Bridge, api: &dyn SyncApi) -> Result<(SyncState, bool), Fault> {
    let before = state(bridge, api.source())?;
    if let Some(current) = before.clone().filter(SyncState::running) {
        // The mark may have been lost between the two writes of an earlier start: no write
        // when it is there.
        mark_running(bridge, api.source(), true)?;
        return Ok((current, false));
    }
    let previous_records = before
        .filter(|b| b.finished_at.is_some())
        .map(|b| b.objects.iter().map(|o| o.records).collect())
        .unwrap_or_default();
    let now = bridge.clock.now().unix_timestamp();
    let fresh = SyncState {
        source: api.source().to_owned(),
        run: uuid::Uuid::new_v4().simple().to_string(),
        started_at: now,
        finished_at: None,
        cancelled_at: None,
        current: 0,
        objects: api
            .objects()
            .iter()
            .map(|o| ObjectProgress {
                object: (*o).to_owned(),
                ..ObjectProgress::default()
            })
            .collect(),
        attempts: 0,
        next_at: 0,
        last_error: None,
        previous_records,
    };
    bridge.store().put_json(&key(api.source()), &fresh)?;
    mark_running(bridge, api.source(), true)?;
    Ok((fresh, true))
}

/// Cancels a running sync (what was read stays accepted); `None` when none runs.
pub fn cancel(bridge: &Bridge, source: &str) -> Result<Option<SyncState>, Fault> {
    let Some(mut current) = state(bridge, source)?.filter(SyncState::running) else {
        return Ok(None);
    };
    current.cancelled_at = Some(bridge.clock.now().unix_timestamp());
    bridge.store().put_json(&key(source), &current)?;
    mark_running(bridge, source, false)?;
    Ok(Some(current))
}

/// The sources with a running sync (one small key, read by every after-answer check).
fn running_sources(bridge: &Bridge) -> Result<Vec<String>, Fault> {
    Ok(bridge
        .store()
        .get_json(crate::keys::SYNC_RUNNING)?
        .unwrap_or_default())
}

fn mark_running(bridge: &Bridge, source: &str, running: bool) -> Result<(), Fault> {
    let mut sources = running_sources(bridge)?;
    let had = sources.iter().any(|s| s == source);
    if had == running {
        return Ok(());
    }
    if running {
        sources.push(source.to_owned());
    } else {
        sources.retain(|s| s != source);
    }
    bridge.store().put_json(crate::keys::SYNC_RUNNING, &sources)
}

/// What one advance did.
#[derive(Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Advanced {
    pub pages: u64,
    pub records: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// Advances every running sync within the budget (the work after an answer, `POST /flush`).
/// `force` ignores the backoff of a failed page.
pub fn advance_running(bridge: &Bridge, force: bool) -> Result<Advanced, Fault> {
    let mut total = Advanced::default();
    for source in running_sources(bridge)? {
        let Some(api) = api(&source) else { continue };
        let step = advance(bridge, api, force)?;
        total.pages += step.pages;
        total.records += step.records;
        total.stopped = total.stopped.or(step.stopped);
    }
    Ok(total)
}

/// Reads pages of `api`'s sync under its lease until the sync ends, a page fails, or the
/// budget is spent.
pub fn advance(bridge: &Bridge, api: &dyn SyncApi, force: bool) -> Result<Advanced, Fault> {
    let lease = crate::lease::acquire(
        bridge.kv,
        bridge.clock,
        &lease_key(api.source()),
        Duration::from_secs(30),
        crate::settings::idempotency_settle(bridge.config),
    )?;
    let Some(held) = lease else {
        return Ok(Advanced::default());
    };
    let result = advance_held(bridge, api, force);
    crate::lease::release(bridge.kv, held);
    result
}

/// The wait after `attempts` failed pages in a row: 20 s, doubling, at most 10 minutes.
fn backoff(attempts: u32) -> i64 {
    (10i64 << attempts.min(6)).min(600)
}

fn out_of_time(bridge: &Bridge) -> bool {
    bridge
        .deadline
        .is_some_and(|d| d - bridge.clock.now() < time::Duration::milliseconds(200))
}

fn advance_held(bridge: &Bridge, api: &dyn SyncApi, force: bool) -> Result<Advanced, Fault> {
    let mut report = Advanced::default();
    let receiver = super::receiver(api.source())
        .ok_or_else(|| Fault::Corrupt(format!("no receiver for the sync of {}", api.source())))?;
    loop {
        let Some(mut sync) = state(bridge, api.source())?.filter(SyncState::running) else {
            return Ok(report);
        };
        let now = bridge.clock.now().unix_timestamp();
        if out_of_time(bridge) || (!force && sync.next_at > now) {
            return Ok(report);
        }
        let Some(progress) = sync.objects.get(sync.current).cloned() else {
            finish(bridge, &mut sync, now)?;
            return Ok(report);
        };
        let request = match api.page(bridge.config, &progress.object, progress.cursor.as_deref()) {
            Ok(request) => request,
            Err(missing) => {
                let why = format!("set {} to sync {}", missing.join(", "), api.source());
                failed(bridge, &mut sync, now, why.clone(), None)?;
                report.stopped = Some(why);
                return Ok(report);
            }
        };
        let page = match read(
            bridge,
            api,
            &progress.object,
            progress.cursor.as_deref(),
            request,
        ) {
            Ok(page) => page,
            Err(PageError::Later(why)) => {
                failed(bridge, &mut sync, now, why.clone(), None)?;
                report.stopped = Some(why);
                return Ok(report);
            }
            Err(PageError::Token(why)) => {
                failed(bridge, &mut sync, now, why.clone(), Some(api.source()))?;
                report.stopped = Some(why);
                return Ok(report);
            }
            Err(PageError::NotNow(why)) => {
                // No call was made (the CRM's pause, the hourly cap, the budget): not a failed
                // page; the next advance tries again. A cap is said once in the progress.
                if !why.contains("work budget") && sync.last_error.as_deref() != Some(why.as_str())
                {
                    sync.last_error = Some(why.clone());
                    bridge.store().put_json(&key(api.source()), &sync)?;
                }
                report.stopped = Some(why);
                return Ok(report);
            }
            Err(PageError::Fault(fault)) => return Err(fault),
        };
        // The records first, then the cursor: a crash in between repeats this page only.
        let at = crate::validation::format_gong_datetime(bridge.clock.now());
        // `fetched_at`: Attio's records carry no modification time (the read's time stands in).
        let event = json!({"timestamp": at, "fetched_at": at, "sync": sync.run});
        let changes: Vec<Change> = page
            .records
            .into_iter()
            .map(|record| Change::Upsert {
                object: progress.object.clone(),
                record,
                event: event.clone(),
            })
            .collect();
        let delivery = format!(
            "sync-{}-{}-{}",
            &sync.run[..8],
            progress.object,
            progress.pages + 1
        );
        let outcome = super::map_and_accept(bridge, receiver, &delivery, changes)?;
        if outcome.compact_inbox {
            crate::outbox::compact_inbox_now(bridge)?;
        }
        let read_at = bridge.clock.now().unix_timestamp();
        let moved = {
            let o = &mut sync.objects[sync.current];
            o.pages += 1;
            o.records += outcome.accepted as u64;
            o.rejected += outcome.rejected as u64;
            o.started_at.get_or_insert(now);
            o.cursor = page.next.clone();
            if page.next.is_none() {
                o.done = true;
                o.finished_at = Some(read_at);
            }
            o.done
        };
        if moved {
            sync.current += 1;
        }
        sync.attempts = 0;
        sync.next_at = 0;
        sync.last_error = None;
        if sync.current >= sync.objects.len() {
            sync.finished_at = Some(read_at);
        }
        report.pages += 1;
        report.records += outcome.accepted as u64;
        if !save_forward(bridge, &sync)? {
            // Another engine is ahead (or the run was cancelled or replaced): leave it to it.
            return Ok(report);
        }
        let _ = bridge.kv.delete(&health_key(api.source()));
        if sync.finished_at.is_some() {
            mark_running(bridge, api.source(), false)?;
            return Ok(report);
        }
    }
}

fn health_key(source: &str) -> String {
    format!("{}{source}", crate::keys::SOURCE_HEALTH_PREFIX)
}

/// Writes `sync` unless the stored one is another run, stopped, or further along.
fn save_forward(bridge: &Bridge, sync: &SyncState) -> Result<bool, Fault> {
    if let Some(stored) = state(bridge, &sync.source)? {
        if stored.run != sync.run || !stored.running() || stored.position() >= sync.position() {
            return Ok(false);
        }
    }
    bridge.store().put_json(&key(&sync.source), sync)?;
    Ok(true)
}

fn finish(bridge: &Bridge, sync: &mut SyncState, now: i64) -> Result<(), Fault> {
    sync.finished_at = Some(now);
    bridge.store().put_json(&key(&sync.source), sync)?;
    mark_running(bridge, &sync.source, false)
}

/// A failed page: counted, backed off; a refused token also shows on `/healthz`.
fn failed(
    bridge: &Bridge,
    sync: &mut SyncState,
    now: i64,
    why: String,
    token_of: Option<&str>,
) -> Result<(), Fault> {
    if let Some(o) = sync.objects.get_mut(sync.current) {
        o.errors += 1;
    }
    sync.attempts += 1;
    sync.next_at = now + backoff(sync.attempts);
    sync.last_error = Some(why.clone());
    bridge.store().put_json(&key(&sync.source), sync)?;
    if let Some(source) = token_of {
        let health = super::fetch::SourceHealth {
            source: source.to_owned(),
            problem: why,
            since: now,
            waiting: 0,
        };
        bridge.store().put_json(&health_key(source), &health)?;
    }
    Ok(())
}

enum PageError {
    /// No call was made: the upstream's pause, a cap, or the work budget.
    NotNow(String),
    Later(String),
    Token(String),
    Fault(Fault),
}

fn read(
    bridge: &Bridge,
    api: &dyn SyncApi,
    object: &str,
    cursor: Option<&str>,
    request: Request,
) -> Result<Page, PageError> {
    let name = api.upstream().name;
    let response = match gateway::send(bridge, &api.upstream(), request) {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            return Err(PageError::Later(format!(
                "{name} could not be reached: {error}"
            )))
        }
        Err(fault @ (Fault::Throttled { .. } | Fault::OutOfTime { .. })) => {
            return Err(PageError::NotNow(fault.to_string()))
        }
        Err(fault) => return Err(PageError::Fault(fault)),
    };
    let status = response.status().as_u16();
    let body = response.body();
    let said = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    match status {
        200 => api
            .read_page(object, cursor, body)
            .map_err(|why| PageError::Later(format!("{name}'s {object} page: {why}"))),
        401 | 403 => Err(PageError::Token(format!(
            "{name} refused the API token ({status}): {}",
            said()
        ))),
        _ => Err(PageError::Later(format!(
            "{name} answered {status} for {object}: {}",
            said()
        ))),
    }
}

/// Progress as `GET /sync/{source}` and the status page show it.
pub fn view(sync: &SyncState, now: i64) -> Value {
    let records: u64 = sync.objects.iter().map(|o| o.records).sum();
    let elapsed = sync.finished_at.or(sync.cancelled_at).unwrap_or(now) - sync.started_at;
    let per_minute = if elapsed > 0 {
        records * 60 / elapsed as u64
    } else {
        records
    };
    // Time left: what the last finished sync read per object, less what this one has, at this
    // one's pace; unknown for a first sync.
    let eta_seconds =
        (sync.running() && !sync.previous_records.is_empty() && records > 0).then(|| {
            let left: u64 = sync
                .objects
                .iter()
                .zip(&sync.previous_records)
                .map(|(o, before)| {
                    if o.done {
                        0
                    } else {
                        before.saturating_sub(o.records)
                    }
                })
                .sum();
            left * elapsed.max(1) as u64 / records
        });
    let status = match (&sync.finished_at, &sync.cancelled_at, &sync.last_error) {
        (Some(_), _, _) => "finished",
        (_, Some(_), _) => "cancelled",
        (_, _, Some(_)) => "waiting",
        _ => "running",
    };
    json!({
        "source": sync.source,
        "run": sync.run,
        "status": status,
        "startedAt": sync.started_at,
        "finishedAt": sync.finished_at,
        "cancelledAt": sync.cancelled_at,
        "current": sync.objects.get(sync.current).map(|o| o.object.clone()),
        "records": records,
        "recordsPerMinute": per_minute,
        // The CRMs' list APIs give no totals, so the time left is known per object only once it
        // is done; what is known is the pace and what is left to read.
        "objectsLeft": sync.objects.iter().filter(|o| !o.done).map(|o| o.object.clone()).collect::<Vec<_>>(),
        "nextAttemptAt": (sync.next_at > now).then_some(sync.next_at),
        "etaSeconds": eta_seconds,
        "etaBasis": if sync.previous_records.is_empty() { "none yet: the CRM's lists give no totals; the next sync estimates from this one" } else { "the last finished sync's record counts at this sync's pace" },
        "lastError": sync.last_error,
        "objects": sync.objects,
    })
}

#[cfg(test)]
mod tests;
