//! The sync natively, against a fake Pipedrive API behind the same port as Gong: every object
//! read in Gong's order and sent once; a failed page at every step resumes where it stopped and
//! repeats at most that page; a crash between a page's records and its cursor repeats one page;
//! two engines at once waste reads but lose nothing and never move the cursor back; a webhook
//! that overtakes a page keeps its newer version.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::app::{follow_up, handle};
use crate::ports::{Clock, Kv, KvError, Request, Response};
use crate::store::memory::MemoryKv;
use crate::testing::{bridge, configured, request, MapConfig, ScriptedGong, VirtualClock};

/// Records per page the fake serves (Pipedrive decides its pages; the bridge asks for 500).
const PAGE: usize = 3;

fn dataset() -> BTreeMap<&'static str, Vec<Value>> {
    let at = "2026-01-01T10:00:00Z";
    let mut data = BTreeMap::new();
    data.insert("users", (1..=2).map(|i| json!({"id": i, "name": format!("U{i}"), "email": format!("u{i}@example.com"), "active_flag": true, "modified": "2026-01-01 10:00:00"})).collect());
    data.insert(
        "stages",
        (1..=4)
            .map(|i| json!({"id": i, "name": format!("S{i}"), "order_nr": i, "update_time": at}))
            .collect(),
    );
    data.insert(
        "organizations",
        (1..=5)
            .map(|i| json!({"id": i, "name": format!("Org {i}"), "update_time": at}))
            .collect(),
    );
    data.insert("persons", (1..=4).map(|i| json!({"id": i, "first_name": "P", "last_name": format!("{i}"), "emails": [{"value": format!("p{i}@example.com"), "primary": true}], "org_id": i, "update_time": at})).collect());
    data.insert("leads", (1..=2).map(|i| json!({"id": format!("lead-{i}"), "title": format!("L{i}"), "update_time": "2026-01-01T10:00:00.123Z"})).collect());
    data.insert("deals", (1..=7).map(|i| json!({"id": i, "title": format!("Deal {i}"), "value": 100 * i, "currency": "EUR", "status": "open", "stage_id": 1 + i % 4, "owner_id": 1, "org_id": 1 + i % 5, "update_time": at, "add_time": at})).collect());
    data
}

fn total_records() -> usize {
    dataset().values().map(Vec::len).sum()
}

/// Pages served, in order, by path (`/api/v2/deals?…`).
type Served = RefCell<Vec<String>>;

fn answer(status: u16, body: Value) -> Response {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap()
}

/// Pipedrive's list endpoints over `data`; the `fail_at`-th page request (0-based) answers 500.
fn fake_pipedrive<'t>(
    data: BTreeMap<&'static str, Vec<Value>>,
    served: &'t Served,
    fail_at: &'t Cell<Option<usize>>,
) -> impl Fn(&Request) -> Option<Response> + 't {
    move |req: &Request| {
        let path = req.uri().path().to_owned();
        let rest = path
            .strip_prefix("/api/v2/")
            .or_else(|| path.strip_prefix("/api/v1/"))?;
        let n = served.borrow().len();
        served
            .borrow_mut()
            .push(req.uri().path_and_query().unwrap().to_string());
        if fail_at.get() == Some(n) {
            return Some(answer(500, json!({"success": false, "error": "boom"})));
        }
        if req
            .headers()
            .get("x-api-token")
            .and_then(|v| v.to_str().ok())
            != Some("pd-api")
        {
            return Some(answer(
                401,
                json!({"success": false, "error": "unauthorized access"}),
            ));
        }
        let query: BTreeMap<String, String> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        if let Some((list, id)) = rest.split_once('/') {
            let found = data.get(list).and_then(|l| {
                l.iter()
                    .find(|r| r["id"].to_string().trim_matches('"') == id)
                    .cloned()
            });
            return Some(match found {
                Some(record) => answer(200, json!({"success": true, "data": record})),
                None => answer(404, json!({"success": false, "error": "not found"})),
            });
        }
        let items = data.get(rest).cloned().unwrap_or_default();
        if rest == "users" {
            return Some(answer(200, json!({"success": true, "data": items})));
        }
        let offset: usize = query
            .get(if rest == "leads" { "start" } else { "cursor" })
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let page: Vec<Value> = items.iter().skip(offset).take(PAGE).cloned().collect();
        let next = (offset + PAGE < items.len()).then(|| offset + PAGE);
        Some(if rest == "leads" {
            answer(
                200,
                json!({"success": true, "data": page, "additional_data": {"pagination": {"start": offset, "limit": 500, "more_items_in_collection": next.is_some(), "next_start": next}}}),
            )
        } else {
            answer(
                200,
                json!({"success": true, "data": page, "additional_data": {"next_cursor": next.map(|n| n.to_string())}}),
            )
        })
    }
}

fn config() -> MapConfig {
    configured(&[
        ("pipedrive_api_token", "pd-api"),
        ("pipedrive_base_url", "https://pd.test"),
        ("pipedrive_webhook_user", "u"),
        ("pipedrive_webhook_password", "p"),
        ("gong_calls_per_second", "0"),
    ])
}

fn api(b: &crate::bridge::Bridge, method: &str, path: &str) -> (u16, Value) {
    let answer = handle(
        b,
        request(method, path, &[("authorization", "Bearer token")], b""),
    );
    let status = answer.response.status().as_u16();
    let body = serde_json::from_slice(answer.response.body()).unwrap_or_default();
    follow_up(&b.with_budget(b.clock.now()), answer.first);
    (status, body)
}

/// Flushes until the sync is finished and nothing is left to send (at most `rounds`).
fn run_to_the_end(b: &crate::bridge::Bridge, clock: &VirtualClock, rounds: usize) -> Value {
    let mut state = Value::Null;
    for _ in 0..rounds {
        clock.advance(std::time::Duration::from_secs(700));
        api(b, "POST", "/flush?force=true");
        state = api(b, "GET", "/sync/pipedrive").1;
        if state["status"] == "finished" {
            api(b, "POST", "/flush?force=true");
            break;
        }
    }
    state
}

/// Every line Gong received, with its object type, in upload order.
fn uploaded(gong: &ScriptedGong) -> Vec<(String, Value)> {
    gong.calls()
        .iter()
        .filter(|c| c.path.starts_with("/v2/crm/entities"))
        .flat_map(|c| {
            let kind = c
                .path
                .split("objectType=")
                .nth(1)
                .unwrap_or("")
                .split('&')
                .next()
                .unwrap_or("")
                .to_owned();
            String::from_utf8_lossy(&gong.bodies.borrow()[c.index])
                .lines()
                .map(|l| (kind.clone(), serde_json::from_str::<Value>(l).unwrap()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn each_once(lines: &[(String, Value)]) {
    let mut seen = BTreeMap::new();
    for (kind, line) in lines {
        *seen
            .entry((kind.clone(), line["objectId"].to_string()))
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), total_records(), "every record: {seen:?}");
    assert!(seen.values().all(|n| *n == 1), "each once: {seen:?}");
}

#[test]
fn a_sync_reads_every_object_in_gongs_order_and_sends_each_once() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_790_000_000));
    let (served, fail) = (Served::default(), Cell::new(None));
    let gong = ScriptedGong::new(&clock);
    *gong.other_api.borrow_mut() = Some(Box::new(fake_pipedrive(dataset(), &served, &fail)));
    let config = config();
    let b = bridge(&kv, &config, &gong, &clock);
    let post = || {
        handle(
            &b,
            request(
                "POST",
                "/sync/pipedrive",
                &[("authorization", "Bearer token")],
                b"",
            ),
        )
    };
    let first = post();
    let started: Value = serde_json::from_slice(first.response.body()).unwrap();
    assert_eq!(
        (first.response.status().as_u16(), &started["started"]),
        (202, &json!(true)),
        "{started}"
    );
    let second = post();
    let again: Value = serde_json::from_slice(second.response.body()).unwrap();
    assert_eq!(
        (second.response.status().as_u16(), &again["run"]),
        (200, &started["run"]),
        "one sync at a time"
    );
    assert!(
        served.borrow().is_empty(),
        "nothing is read before the answer"
    );
    follow_up(&b.with_budget(clock.now()), first.first);
    assert!(
        !served.borrow().is_empty(),
        "pages are read right after the answer"
    );
    let state = run_to_the_end(&b, &clock, 20);
    assert_eq!(state["status"], "finished", "{state}");
    assert_eq!(state["records"], json!(total_records()), "{state}");
    let lines = uploaded(&gong);
    each_once(&lines);
    // Gong's order: each type's first line after every line of the types before it.
    let order = [
        "BUSINESS_USER",
        "STAGE",
        "ACCOUNT",
        "CONTACT",
        "LEAD",
        "DEAL",
    ];
    let first = |t: &str| lines.iter().position(|(k, _)| k == t).unwrap();
    let last = |t: &str| lines.iter().rposition(|(k, _)| k == t).unwrap();
    for pair in order.windows(2) {
        assert!(
            last(pair[0]) < first(pair[1]),
            "{} before {}",
            pair[0],
            pair[1]
        );
    }
    // Where is my record: a synced record answers like any other.
    let (status, located) = api(&b, "GET", "/records/DEAL/7/status");
    assert_eq!(status, 200, "{located}");
    assert!(
        ["sent", "done"].contains(&located["state"].as_str().unwrap_or_default()),
        "{located}"
    );
    let pages = served.borrow().len();
    // users 1, stages 2, organizations 2, persons 2, leads 1, deals 3.
    assert_eq!(pages, 11, "{:?}", served.borrow());
    // Once finished, nothing more is read; a second sync sends nothing Gong already has, and
    // estimates its time left from the first.
    let second = handle(
        &b,
        request(
            "POST",
            "/sync/pipedrive",
            &[("authorization", "Bearer token")],
            b"",
        ),
    );
    let second: Value = serde_json::from_slice(second.response.body()).unwrap();
    assert_eq!(
        second["etaSeconds"],
        Value::Null,
        "nothing read yet: {second}"
    );
    assert!(
        second["etaBasis"]
            .as_str()
            .unwrap()
            .starts_with("the last finished sync"),
        "{second}"
    );
    run_to_the_end(&b, &clock, 20);
    assert_eq!(uploaded(&gong).len(), lines.len(), "nothing sent twice");
    assert!(kv
        .map
        .borrow()
        .keys()
        .all(|k| !k.starts_with("lease/sync/")));
}

/// A failed page at each step in turn: the sync waits (counted, said), then resumes at that
/// page; every record reaches Gong once and only the failed page is asked twice.
#[test]
fn a_failed_page_at_every_step_resumes_there() {
    for fail_at in 0..11 {
        let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_790_000_000));
        let (served, fail) = (Served::default(), Cell::new(Some(fail_at)));
        let gong = ScriptedGong::new(&clock);
        *gong.other_api.borrow_mut() = Some(Box::new(fake_pipedrive(dataset(), &served, &fail)));
        let config = config();
        let b = bridge(&kv, &config, &gong, &clock);
        api(&b, "POST", "/sync/pipedrive");
        let (_, waiting) = api(&b, "GET", "/sync/pipedrive");
        assert_eq!(waiting["status"], "waiting", "step {fail_at}: {waiting}");
        assert!(
            waiting["lastError"].as_str().unwrap().contains("500"),
            "{waiting}"
        );
        let state = run_to_the_end(&b, &clock, 30);
        assert_eq!(state["status"], "finished", "step {fail_at}: {state}");
        let errors: u64 = state["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["errors"].as_u64().unwrap())
            .sum();
        assert_eq!(errors, 1, "{state}");
        each_once(&uploaded(&gong));
        let served = served.borrow();
        assert_eq!(served.len(), 12, "step {fail_at}: {served:?}");
        assert_eq!(
            served[fail_at],
            served[fail_at + 1],
            "the failed page is asked again"
        );
    }
}

/// A store that fails the `n`-th write of the sync's cursor: a crash between a page's records
/// (accepted) and its cursor.
struct CursorCrash {
    inner: MemoryKv,
    writes: Cell<usize>,
    crash_at: usize,
}

impl Kv for CursorCrash {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        if key == "sync/pipedrive" {
            self.writes.set(self.writes.get() + 1);
            if self.writes.get() == self.crash_at {
                return Err(KvError("crashed".into()));
            }
        }
        self.inner.set(key, value)
    }
    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.inner.delete(key)
    }
    fn keys(&self) -> Result<Vec<String>, KvError> {
        self.inner.keys()
    }
}

#[test]
fn a_crash_between_a_page_and_its_cursor_repeats_that_page_only() {
    // Write 1 starts the sync; 2.. move the cursor page by page.
    for crash_at in 2..=12 {
        let kv = CursorCrash {
            inner: MemoryKv::default(),
            writes: Cell::new(0),
            crash_at,
        };
        let clock = VirtualClock::at(1_790_000_000);
        let (served, fail) = (Served::default(), Cell::new(None));
        let gong = ScriptedGong::new(&clock);
        *gong.other_api.borrow_mut() = Some(Box::new(fake_pipedrive(dataset(), &served, &fail)));
        let config = config();
        let b = bridge(&kv, &config, &gong, &clock);
        api(&b, "POST", "/sync/pipedrive");
        // The crashed engine's lease expires.
        clock.advance(std::time::Duration::from_secs(31));
        let state = run_to_the_end(&b, &clock, 30);
        assert_eq!(state["status"], "finished", "crash at {crash_at}: {state}");
        each_once(&uploaded(&gong));
        let served = served.borrow();
        assert_eq!(
            served.len(),
            12,
            "crash at {crash_at}: one page read twice: {served:?}"
        );
    }
}

/// Two engines at once (the first one's lease expired while it waited on the CRM): the second
/// reads ahead; the first's late cursor write is dropped, so the cursor never moves back, and
/// every record reaches Gong once.
#[test]
fn two_engines_at_once_lose_nothing_and_never_move_the_cursor_back() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_790_000_000));
    let config = config();
    let (served, fail) = (Served::default(), Cell::new(None));
    let other = ScriptedGong::new(&clock);
    *other.other_api.borrow_mut() = Some(Box::new(fake_pipedrive(dataset(), &served, &fail)));
    let other_bridge = bridge(&kv, &config, &other, &clock);
    let gong = ScriptedGong::new(&clock);
    *gong.other_api.borrow_mut() = Some(Box::new(fake_pipedrive(dataset(), &served, &fail)));
    let b = bridge(&kv, &config, &gong, &clock);
    crate::crm::sync::start(&b, &super::pipedrive::PipedriveApi).unwrap();
    let kv_ref = &kv;
    let other_ref = &other_bridge;
    let clock_ref = &clock;
    *gong.meanwhile.borrow_mut() = Some(Box::new(move || {
        kv_ref.map.borrow_mut().remove("lease/sync/pipedrive");
        let budget = other_ref.with_budget(clock_ref.now());
        crate::crm::sync::advance(&budget, &super::pipedrive::PipedriveApi, true).unwrap();
    }));
    let budget = b.with_budget(clock.now());
    crate::crm::sync::advance(&budget, &super::pipedrive::PipedriveApi, true).unwrap();
    let state = crate::crm::sync::state(&b, "pipedrive").unwrap().unwrap();
    assert!(state.finished_at.is_some(), "{state:?}");
    for b in [&b, &other_bridge] {
        let f = handle(
            b,
            request(
                "POST",
                "/flush?force=true",
                &[("authorization", "Bearer token")],
                b"",
            ),
        );
        assert_eq!(f.response.status(), 200);
    }
    let mut lines = uploaded(&gong);
    lines.extend(uploaded(&other));
    each_once(&lines);
    assert_eq!(
        served.borrow().len(),
        12,
        "the first page twice: {:?}",
        served.borrow()
    );
}

/// A webhook that overtakes the page carrying an older copy of its record: the newer stays.
#[test]
fn a_webhook_newer_than_the_page_wins() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_790_000_000));
    let (served, fail) = (Served::default(), Cell::new(None));
    let gong = ScriptedGong::new(&clock);
    *gong.other_api.borrow_mut() = Some(Box::new(fake_pipedrive(dataset(), &served, &fail)));
    let config = config();
    let b = bridge(&kv, &config, &gong, &clock);
    let webhook = json!({"meta": {"version": "2.0", "action": "change", "entity": "deal", "entity_id": "7", "id": "w1", "timestamp": "2026-02-01T10:00:00Z"},
        "data": {"id": 7, "title": "Deal 7, renamed", "value": 700, "currency": "EUR", "status": "won", "stage_id": 1, "owner_id": 1, "org_id": 1, "update_time": "2026-02-01T10:00:00Z", "add_time": "2026-01-01T10:00:00Z"}, "previous": {}});
    use base64::Engine;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("u:p")
    );
    let answered = handle(
        &b,
        request(
            "POST",
            "/webhooks/pipedrive",
            &[("authorization", &auth)],
            webhook.to_string().as_bytes(),
        ),
    );
    assert_eq!(answered.response.status(), 202);
    api(&b, "POST", "/sync/pipedrive");
    run_to_the_end(&b, &clock, 20);
    let deal7: Vec<Value> = uploaded(&gong)
        .into_iter()
        .filter(|(k, l)| k == "DEAL" && l["objectId"] == "7")
        .map(|(_, l)| l)
        .collect();
    assert_eq!(deal7.len(), 1, "{deal7:?}");
    assert_eq!(deal7[0]["name"], "Deal 7, renamed", "{deal7:?}");
}

/// Without a token the sync waits and says which variable to set; a refused token shows on
/// `/healthz`; cancelling stops it.
#[test]
fn a_missing_or_refused_token_is_said_and_a_sync_can_be_cancelled() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_790_000_000));
    let (served, fail) = (Served::default(), Cell::new(None));
    let gong = ScriptedGong::new(&clock);
    *gong.other_api.borrow_mut() = Some(Box::new(fake_pipedrive(dataset(), &served, &fail)));
    let no_token = configured(&[("gong_calls_per_second", "0")]);
    let b = bridge(&kv, &no_token, &gong, &clock);
    api(&b, "POST", "/sync/pipedrive");
    let (_, state) = api(&b, "GET", "/sync/pipedrive");
    assert!(
        state["lastError"]
            .as_str()
            .unwrap()
            .contains("pipedrive_api_token"),
        "{state}"
    );
    let wrong = configured(&[
        ("gong_calls_per_second", "0"),
        ("pipedrive_api_token", "nope"),
        ("pipedrive_base_url", "https://pd.test"),
    ]);
    let b = bridge(&kv, &wrong, &gong, &clock);
    clock.advance(std::time::Duration::from_secs(700));
    api(&b, "POST", "/flush?force=true");
    let health: Value = serde_json::from_slice(
        handle(&b, request("GET", "/healthz", &[], b""))
            .response
            .body(),
    )
    .unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    let (status, cancelled) = api(&b, "DELETE", "/sync/pipedrive");
    assert_eq!(
        (status, &cancelled["status"]),
        (200, &json!("cancelled")),
        "{cancelled}"
    );
    assert_eq!(api(&b, "DELETE", "/sync/pipedrive").0, 404);
    assert_eq!(api(&b, "GET", "/sync/close").0, 404);
}

/// At the platform's hourly cap the sync pauses without counting a failed page, says why in its
/// progress, and goes on when the hour allows.
#[test]
fn the_hourly_cap_pauses_the_sync_and_says_so() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_790_000_000));
    let (served, fail) = (Served::default(), Cell::new(None));
    let gong = ScriptedGong::new(&clock);
    *gong.other_api.borrow_mut() = Some(Box::new(fake_pipedrive(dataset(), &served, &fail)));
    let capped = configured(&[
        ("pipedrive_api_token", "pd-api"),
        ("pipedrive_base_url", "https://pd.test"),
        ("gong_calls_per_second", "0"),
        ("outbound_hourly_cap", "4"),
    ]);
    let b = bridge(&kv, &capped, &gong, &clock);
    api(&b, "POST", "/sync/pipedrive");
    let (_, state) = api(&b, "GET", "/sync/pipedrive");
    assert_eq!(served.borrow().len(), 4, "{state}");
    assert_eq!(state["status"], "waiting", "{state}");
    assert!(
        state["lastError"]
            .as_str()
            .unwrap()
            .contains("outbound_hourly_cap"),
        "{state}"
    );
    let errors: u64 = state["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["errors"].as_u64().unwrap())
        .sum();
    assert_eq!(errors, 0, "a cap is not a failed page: {state}");
    let state = run_to_the_end(&b, &clock, 40);
    assert_eq!(state["status"], "finished", "{state}");
    // Gong's uploads share the cap: they follow hour by hour.
    for _ in 0..20 {
        clock.advance(std::time::Duration::from_secs(3_600));
        api(&b, "POST", "/flush?force=true");
    }
    each_once(&uploaded(&gong));
}

/// A deal whose organization, owner and stage the bridge never had: read from Pipedrive by id
/// right after the answer and sent first; without a token, the deal's status says what is
/// missing and what Gong will do.
#[test]
fn a_deal_s_missing_references_are_completed_or_named() {
    let deal = json!({"meta": {"version": "2.0", "action": "create", "entity": "deal", "entity_id": "7", "id": "w7", "timestamp": "2026-02-01T10:00:00Z"},
        "data": {"id": 7, "title": "Deal 7", "value": 700, "currency": "EUR", "status": "open", "stage_id": 2, "owner_id": 1, "org_id": 4, "update_time": "2026-02-01T10:00:00Z", "add_time": "2026-01-01T10:00:00Z"}, "previous": {}});
    use base64::Engine;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("u:p")
    );
    let webhook = || {
        request(
            "POST",
            "/webhooks/pipedrive",
            &[("authorization", &auth)],
            deal.to_string().as_bytes(),
        )
    };

    // Without an API token: the deal goes, and its status names what Gong lacks.
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_790_000_000));
    let gong = ScriptedGong::new(&clock);
    let no_api = configured(&[
        ("pipedrive_webhook_user", "u"),
        ("pipedrive_webhook_password", "p"),
        ("gong_calls_per_second", "0"),
    ]);
    let b = bridge(&kv, &no_api, &gong, &clock);
    let answered = handle(&b, webhook());
    assert_eq!(answered.response.status(), 202);
    follow_up(&b.with_budget(clock.now()), answered.first);
    let (_, status) = api(&b, "GET", "/records/DEAL/7/status");
    let missing = status["missingReferences"].to_string();
    assert!(
        missing.contains(
            "ACCOUNT 4 (accountId) was never sent to Gong: the deal will not show until it is"
        ) && missing.contains("BUSINESS_USER 1")
            && missing.contains("STAGE 2"),
        "{status}"
    );

    // With one: the three are read by id after the answer and go to Gong first.
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_790_000_000));
    let (served, fail) = (Served::default(), Cell::new(None));
    let gong = ScriptedGong::new(&clock);
    *gong.other_api.borrow_mut() = Some(Box::new(fake_pipedrive(dataset(), &served, &fail)));
    let config = config();
    let b = bridge(&kv, &config, &gong, &clock);
    let answered = handle(&b, webhook());
    assert_eq!(answered.response.status(), 202);
    assert!(
        served.borrow().is_empty(),
        "nothing is read before the answer"
    );
    follow_up(&b.with_budget(clock.now()), answered.first);
    let mut read = served.borrow().clone();
    read.sort();
    assert_eq!(
        read,
        [
            "/api/v1/users/1",
            "/api/v2/organizations/4",
            "/api/v2/stages/2"
        ]
    );
    let (_, status) = api(&b, "GET", "/records/DEAL/7/status");
    assert!(status.get("missingReferences").is_none(), "{status}");
    api(&b, "POST", "/flush?force=true");
    let lines = uploaded(&gong);
    let at = |kind: &str, id: &str| {
        lines
            .iter()
            .position(|(k, l)| k == kind && l["objectId"] == id)
    };
    let deal_at = at("DEAL", "7").expect("the deal");
    for (kind, id) in [("ACCOUNT", "4"), ("BUSINESS_USER", "1"), ("STAGE", "2")] {
        assert!(
            at(kind, id).is_some_and(|n| n < deal_at),
            "{kind} {id} before the deal: {lines:?}"
        );
    }
    // Known now: the next delivery reads nothing.
    let again = handle(&b, webhook());
    follow_up(&b.with_budget(clock.now()), again.first);
    assert_eq!(served.borrow().len(), 3, "{:?}", served.borrow());
}

/// Close: leads (Gong's accounts), contacts and opportunities through `_skip`/`_limit` pages
/// and `has_more`, with the API key as the Basic user; each record once, accounts first.
#[test]
fn a_close_sync_reads_leads_contacts_and_opportunities() {
    let served = Served::default();
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_790_000_000));
    let gong = ScriptedGong::new(&clock);
    let at = "2026-01-01T10:00:00.000000+00:00";
    let mut data: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    data.insert("lead", (1..=5).map(|i| json!({"id": format!("lead_{i}"), "display_name": format!("Lead {i}"), "date_updated": at, "contacts": []})).collect());
    data.insert("contact", (1..=4).map(|i| json!({"id": format!("cont_{i}"), "name": format!("Ann {i}"), "lead_id": "lead_1", "emails": [{"email": format!("a{i}@example.com")}], "date_updated": at})).collect());
    data.insert("opportunity", (1..=3).map(|i| json!({"id": format!("oppo_{i}"), "lead_id": "lead_2", "lead_name": "Lead 2", "status_label": "Active", "status_type": "active", "value": 10000, "date_updated": at, "date_created": at})).collect());
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "close-key:")
    );
    let served_ref = &served;
    *gong.other_api.borrow_mut() = Some(Box::new(move |req: &Request| {
        let object = req
            .uri()
            .path()
            .strip_prefix("/api/v1/")?
            .trim_end_matches('/')
            .to_owned();
        served_ref.borrow_mut().push(req.uri().to_string());
        if req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            != Some(basic.as_str())
        {
            return Some(answer(401, json!({"error": "unauthorized"})));
        }
        let query: BTreeMap<String, String> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let skip: usize = query["_skip"].parse().unwrap();
        let all = data.get(object.as_str()).cloned().unwrap_or_default();
        let page: Vec<Value> = all.iter().skip(skip).take(2).cloned().collect();
        Some(answer(
            200,
            json!({"data": page, "has_more": skip + 2 < all.len()}),
        ))
    }));
    let config = configured(&[
        ("close_api_key", "close-key"),
        ("close_base_url", "https://close.test"),
        ("gong_calls_per_second", "0"),
    ]);
    let b = bridge(&kv, &config, &gong, &clock);
    let (status, _) = api(&b, "POST", "/sync/close");
    assert_eq!(status, 202);
    let mut state = Value::Null;
    for _ in 0..10 {
        api(&b, "POST", "/flush?force=true");
        state = api(&b, "GET", "/sync/close").1;
        if state["status"] == "finished" {
            break;
        }
    }
    assert_eq!(state["status"], "finished", "{state}");
    api(&b, "POST", "/flush?force=true");
    let lines = uploaded(&gong);
    let count = |kind: &str| lines.iter().filter(|(k, _)| k == kind).count();
    assert_eq!(
        (count("ACCOUNT"), count("CONTACT"), count("DEAL")),
        (5, 4, 3),
        "{lines:?}"
    );
    let last_account = lines.iter().rposition(|(k, _)| k == "ACCOUNT").unwrap();
    let first_deal = lines.iter().position(|(k, _)| k == "DEAL").unwrap();
    assert!(last_account < first_deal);
    // 3 + 2 + 2 pages, each asked once.
    assert_eq!(served.borrow().len(), 7, "{:?}", served.borrow());
    assert!(served
        .borrow()
        .iter()
        .any(|u| u.ends_with("/api/v1/lead/?_skip=4&_limit=100")));
}

/// Attio: companies, people and deals through `records/query` pages (`limit`, `offset`; a short
/// page is the last), with the Bearer token; each record once, companies first.
#[test]
fn an_attio_sync_queries_companies_people_and_deals() {
    let served = Served::default();
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_790_000_000));
    let gong = ScriptedGong::new(&clock);
    let record = |object: &str, i: usize, values: Value| json!({"id": {"workspace_id": "w", "object_id": object, "record_id": format!("{object}-{i}")}, "created_at": "2026-01-01T00:00:00.000000000Z", "values": values});
    let mut data: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    data.insert("companies", (1..=3).map(|i| record("companies", i, json!({"name": [{"value": format!("Co {i}")}], "domains": [{"domain": format!("co{i}.example")}]}))).collect());
    data.insert("people", (1..=2).map(|i| record("people", i, json!({"name": [{"first_name": "P", "last_name": format!("{i}")}], "email_addresses": [{"email_address": format!("p{i}@co1.example")}], "company": [{"target_object": "companies", "target_record_id": "companies-1"}]}))).collect());
    data.insert("deals", (1..=2).map(|i| record("deals", i, json!({"name": [{"value": format!("Deal {i}")}], "associated_company": [{"target_object": "companies", "target_record_id": "companies-2"}]}))).collect());
    let served_ref = &served;
    *gong.other_api.borrow_mut() = Some(Box::new(move |req: &Request| {
        let rest = req.uri().path().strip_prefix("/v2/objects/")?;
        let object = rest.strip_suffix("/records/query")?;
        served_ref
            .borrow_mut()
            .push(format!("{} {}", req.method(), req.uri().path()));
        if req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            != Some("Bearer attio-token")
        {
            return Some(answer(
                401,
                json!({"status_code": 401, "code": "unauthorized"}),
            ));
        }
        let query: Value = serde_json::from_slice(req.body()).unwrap();
        let offset = query["offset"].as_u64().unwrap() as usize;
        assert_eq!(query["limit"], 500);
        let page: Vec<Value> = data
            .get(object)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .skip(offset)
            .collect();
        Some(answer(200, json!({"data": page})))
    }));
    let config = configured(&[
        ("attio_api_token", "attio-token"),
        ("attio_base_url", "https://attio.test"),
        ("gong_calls_per_second", "0"),
    ]);
    let b = bridge(&kv, &config, &gong, &clock);
    assert_eq!(api(&b, "POST", "/sync/attio").0, 202);
    let mut state = Value::Null;
    for _ in 0..10 {
        api(&b, "POST", "/flush?force=true");
        state = api(&b, "GET", "/sync/attio").1;
        if state["status"] == "finished" {
            break;
        }
    }
    assert_eq!(state["status"], "finished", "{state}");
    api(&b, "POST", "/flush?force=true");
    let lines = uploaded(&gong);
    let count = |kind: &str| lines.iter().filter(|(k, _)| k == kind).count();
    assert_eq!(
        (count("ACCOUNT"), count("CONTACT"), count("DEAL")),
        (3, 2, 2),
        "{lines:?}"
    );
    assert!(lines
        .iter()
        .any(|(k, l)| k == "DEAL" && l["accountId"] == "companies-2"));
    assert_eq!(
        served.borrow().len(),
        3,
        "one short page each: {:?}",
        served.borrow()
    );
}

/// `GET /mappings/close/suggest` reads Close's three custom-field lists with the API key and
/// answers an override that `PUT /mappings/close` takes as it is.
#[test]
fn a_close_suggestion_is_read_and_saved() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_790_000_000));
    let gong = ScriptedGong::new(&clock);
    *gong.other_api.borrow_mut() = Some(Box::new(|req: &Request| {
        let object = req
            .uri()
            .path()
            .strip_prefix("/api/v1/custom_field/")?
            .trim_end_matches('/')
            .to_owned();
        let fields = match object.as_str() {
            "lead" => {
                json!([{"id": "cf_L", "name": "Industry", "type": "choices", "choices": ["SaaS", "Retail"]}])
            }
            "opportunity" => json!([{"id": "cf_O", "name": "Seats", "type": "number"}]),
            _ => json!([]),
        };
        Some(answer(200, json!({"data": fields, "has_more": false})))
    }));
    let config = configured(&[
        ("close_api_key", "close-key"),
        ("close_base_url", "https://close.test"),
        ("gong_calls_per_second", "0"),
    ]);
    let b = bridge(&kv, &config, &gong, &clock);
    let (status, suggestion) = api(&b, "GET", "/mappings/close/suggest");
    assert_eq!(
        (status, &suggestion["suggested"]),
        (200, &json!(2)),
        "{suggestion}"
    );
    let put = handle(
        &b,
        request(
            "PUT",
            "/mappings/close",
            &[("authorization", "Bearer token")],
            suggestion.to_string().as_bytes(),
        ),
    );
    assert_eq!(
        put.response.status(),
        200,
        "{}",
        String::from_utf8_lossy(put.response.body())
    );
    let schema_uploads = gong
        .calls()
        .iter()
        .filter(|c| c.path.starts_with("/v2/crm/entity-schema"))
        .count();
    assert_eq!(schema_uploads, 2, "ACCOUNT and DEAL");
    assert_eq!(api(&b, "GET", "/mappings/zoho/suggest").0, 404);
    let (status, problem) = api(&b, "GET", "/mappings/attio/suggest");
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("attio_api_token"),
        "{problem}"
    );
}

/// `GET /mappings/attio/suggest` reads each object's attributes and its custom selects' options.
#[test]
fn an_attio_suggestion_reads_attributes_and_select_options() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_790_000_000));
    let gong = ScriptedGong::new(&clock);
    *gong.other_api.borrow_mut() = Some(Box::new(|req: &Request| {
        let path = req.uri().path().strip_prefix("/v2/objects/")?.to_owned();
        Some(match path.as_str() {
            "deals/attributes" => answer(
                200,
                json!({"data": [
                {"api_slug": "name", "title": "Deal name", "type": "text", "is_system_attribute": true},
                {"api_slug": "segment", "title": "Segment", "type": "select", "is_system_attribute": false, "is_multiselect": false}]}),
            ),
            "deals/attributes/segment/options" => answer(
                200,
                json!({"data": [
                {"title": "SMB", "is_archived": false}, {"title": "Old", "is_archived": true}, {"title": "Enterprise", "is_archived": false}]}),
            ),
            _ => answer(200, json!({"data": []})),
        })
    }));
    let config = configured(&[
        ("attio_api_token", "attio-token"),
        ("attio_base_url", "https://attio.test"),
        ("gong_calls_per_second", "0"),
    ]);
    let b = bridge(&kv, &config, &gong, &clock);
    let (status, suggestion) = api(&b, "GET", "/mappings/attio/suggest");
    assert_eq!(status, 200, "{suggestion}");
    assert_eq!(
        suggestion["objects"][0]["fields"]["segment"]["schema"]["values"],
        json!(["SMB", "Enterprise"]),
        "{suggestion}"
    );
}

/// The time left comes from the last finished sync's counts at this sync's pace.
#[test]
fn the_eta_is_the_last_sync_s_counts_at_this_pace() {
    use crate::crm::sync::{view, ObjectProgress, SyncState};
    let object = |name: &str, records: u64, done: bool| ObjectProgress {
        object: name.into(),
        records,
        done,
        ..ObjectProgress::default()
    };
    let sync = SyncState {
        source: "pipedrive".into(),
        run: "r".into(),
        started_at: 1_000,
        finished_at: None,
        cancelled_at: None,
        current: 1,
        objects: vec![object("user", 10, true), object("deal", 290, false)],
        attempts: 0,
        next_at: 0,
        last_error: None,
        previous_records: vec![10, 1_000],
    };
    // 300 records in 60 s; 710 deals left: 142 s.
    assert_eq!(view(&sync, 1_060)["etaSeconds"], 142);
    let first = SyncState {
        previous_records: Vec::new(),
        ..sync
    };
    assert_eq!(view(&first, 1_060)["etaSeconds"], Value::Null);
}

/// A start whose "running" mark was lost (the store failed between the two writes) is not
/// stuck: asking again marks it, and the next advance reads its pages.
#[test]
fn a_sync_whose_running_mark_was_lost_is_picked_up_again() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_790_000_000));
    let (served, fail) = (Served::default(), Cell::new(None));
    let gong = ScriptedGong::new(&clock);
    *gong.other_api.borrow_mut() = Some(Box::new(fake_pipedrive(dataset(), &served, &fail)));
    let config = config();
    let b = bridge(&kv, &config, &gong, &clock);
    handle(
        &b,
        request(
            "POST",
            "/sync/pipedrive",
            &[("authorization", "Bearer token")],
            b"",
        ),
    );
    kv.map.borrow_mut().remove("crm/sync-running");
    api(&b, "POST", "/flush?force=true");
    assert!(
        served.borrow().is_empty(),
        "without the mark nothing advances it"
    );
    let (status, _) = api(&b, "POST", "/sync/pipedrive");
    assert_eq!(status, 200, "the same sync");
    let state = run_to_the_end(&b, &clock, 20);
    assert_eq!(state["status"], "finished", "{state}");
}
