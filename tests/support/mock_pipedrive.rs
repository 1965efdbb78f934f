//! A mock of Pipedrive's REST API, as far as the bridge reads it: the API v2 lists with cursor
//! pagination (`/api/v2/{stages,organizations,persons,deals}?limit=&cursor=` →
//! `{success, data, additional_data: {next_cursor}}`), API v1 users (one unpaginated list) and
//! leads (`start`/`limit` → `additional_data.pagination`), single objects by id
//! (`/api/v2/{object}s/{id}`, `/api/v1/users/{id}`) and the field definitions
//! (`/api/v1/{deal,person,organization}Fields`), behind the `x-api-token` header. Faults are
//! scripted per request: 429 with Pipedrive's rate headers (`x-ratelimit-limit`,
//! `x-ratelimit-remaining`, `x-ratelimit-reset`), 500, and slow answers. Built on `MockGong`'s
//! server, so every request is recorded the same way.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::mock_gong::{MockGong, MockResponse, RecordedRequest};

#[derive(Default)]
struct PipedriveState {
    token: String,
    /// Most records a page holds (Pipedrive's own cap is 500).
    page_size: usize,
    /// `users`, `stages`, `organizations`, `persons`, `leads`, `deals` → records, in id order.
    lists: BTreeMap<String, Vec<Value>>,
    /// `dealFields`, … → field definitions.
    fields: BTreeMap<String, Vec<Value>>,
    /// Every request waits this long (a slow API).
    delay: Duration,
}

/// The mock Pipedrive API. Cheap to clone.
#[derive(Clone)]
pub struct MockPipedrive {
    server: MockGong,
    state: Arc<Mutex<PipedriveState>>,
}

fn error(status: u16, message: &str) -> MockResponse {
    MockResponse::json(
        status,
        json!({"success": false, "error": message, "errorCode": status}),
    )
}

fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn answer(state: &Mutex<PipedriveState>, req: &RecordedRequest) -> MockResponse {
    let state = state.lock().unwrap_or_else(|p| p.into_inner());
    let response = serve(&state, req);
    if state.delay.is_zero() {
        response
    } else {
        response.delay(state.delay)
    }
}

fn serve(state: &PipedriveState, req: &RecordedRequest) -> MockResponse {
    if req.header("x-api-token") != Some(state.token.as_str()) {
        return error(401, "unauthorized access");
    }
    let parts: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let (version, rest) = match parts.as_slice() {
        ["api", v @ ("v1" | "v2"), rest @ ..] => (*v, rest),
        _ => return error(404, "no such route"),
    };
    match (version, rest) {
        ("v1", [fields]) if fields.ends_with("Fields") => {
            let all = state.fields.get(*fields).cloned().unwrap_or_default();
            MockResponse::json(
                200,
                json!({"success": true, "data": all, "additional_data": {"pagination": {"start": 0, "limit": 500, "more_items_in_collection": false}}}),
            )
        }
        ("v1", ["users"]) => MockResponse::json(
            200,
            json!({"success": true, "data": state.lists.get("users").cloned().unwrap_or_default()}),
        ),
        ("v1", ["leads"]) => {
            let all = state.lists.get("leads").cloned().unwrap_or_default();
            let start: usize = req
                .query_param("start")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let limit = req
                .query_param("limit")
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(100)
                .min(state.page_size);
            let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
            let more = start + limit < all.len();
            let mut pagination =
                json!({"start": start, "limit": limit, "more_items_in_collection": more});
            if more {
                pagination["next_start"] = json!(start + limit);
            }
            MockResponse::json(
                200,
                json!({"success": true, "data": page, "additional_data": {"pagination": pagination}}),
            )
        }
        (_, [plural, id]) => {
            let list = if *plural == "users" && version == "v1" {
                "users"
            } else {
                plural
            };
            match state
                .lists
                .get(list)
                .and_then(|l| l.iter().find(|r| id_text(&r["id"]) == *id))
            {
                Some(record) => MockResponse::json(200, json!({"success": true, "data": record})),
                None => error(404, "not found"),
            }
        }
        ("v2", [plural]) => {
            let all = state.lists.get(*plural).cloned().unwrap_or_default();
            let offset: usize = req
                .query_param("cursor")
                .and_then(|c| c.strip_prefix("offset:"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let limit = req
                .query_param("limit")
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(100)
                .min(state.page_size);
            let page: Vec<Value> = all.iter().skip(offset).take(limit).cloned().collect();
            let next = (offset + limit < all.len()).then(|| format!("offset:{}", offset + limit));
            MockResponse::json(
                200,
                json!({"success": true, "data": page, "additional_data": {"next_cursor": next}}),
            )
        }
        _ => error(404, "no such route"),
    }
}

impl MockPipedrive {
    /// Starts the mock; requests must carry `x-api-token: {token}`.
    pub async fn start(token: &str) -> MockPipedrive {
        let state = Arc::new(Mutex::new(PipedriveState {
            token: token.to_owned(),
            page_size: 500,
            ..PipedriveState::default()
        }));
        let for_server = state.clone();
        let server = MockGong::start_with(Box::new(move |req: &RecordedRequest| {
            answer(&for_server, req)
        }))
        .await;
        MockPipedrive { server, state }
    }

    fn with<T>(&self, change: impl FnOnce(&mut PipedriveState) -> T) -> T {
        change(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `http://127.0.0.1:PORT`, for `pipedrive_base_url`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// Sets a list (`users`, `stages`, `organizations`, `persons`, `leads`, `deals`).
    pub fn set_list(&self, list: &str, records: Vec<Value>) {
        self.with(|s| s.lists.insert(list.to_owned(), records));
    }

    /// Sets field definitions (`dealFields`, `personFields`, `organizationFields`).
    pub fn set_fields(&self, kind: &str, fields: Vec<Value>) {
        self.with(|s| s.fields.insert(kind.to_owned(), fields));
    }

    /// Every answer waits `delay` (a slow API).
    pub fn set_delay(&self, delay: Duration) {
        self.with(|s| s.delay = delay);
    }

    /// The next request to `path` is rate limited: 429 with Pipedrive's rate headers, the
    /// window resetting in `reset_seconds`.
    pub fn rate_limit_next(&self, path: &str, reset_seconds: u64) {
        self.server.on(
            "GET",
            path,
            error(429, "Request over limit")
                .header("x-ratelimit-limit", "20")
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", &reset_seconds.to_string()),
        );
    }

    /// The next request to `path` fails with a 500.
    pub fn fail_next(&self, path: &str) {
        self.server
            .on("GET", path, error(500, "Internal server error"));
    }

    pub fn received(&self) -> Vec<RecordedRequest> {
        self.server.received()
    }
}
