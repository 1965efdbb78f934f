//! A mock of Close's REST API, as far as the bridge reads it: the lead, contact and opportunity
//! lists with offset pagination (`GET /api/v1/{object}/?_skip=&_limit=` → `{data, has_more}`),
//! single objects (`GET /api/v1/{object}/{id}/`) and the custom-field lists
//! (`GET /api/v1/custom_field/{object}/`), behind HTTP Basic auth with the API key as the user.
//! Faults are scripted per request: 429 with `Retry-After` (seconds) and Close's `ratelimit`
//! header, 500, and slow answers. Built on `MockGong`'s server, so every request is recorded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::support::mock_gong::{MockGong, MockResponse, RecordedRequest};

#[derive(Default)]
struct CloseState {
    /// `Basic base64(key:)`.
    authorization: String,
    /// Most records a page holds (Close's lists take `_limit` up to 100 for leads).
    page_size: usize,
    /// `lead`, `contact`, `opportunity` → records in order.
    lists: BTreeMap<String, Vec<Value>>,
    /// `lead`, `contact`, `opportunity` → custom field definitions.
    fields: BTreeMap<String, Vec<Value>>,
    delay: Duration,
}

/// The mock Close API. Cheap to clone.
#[derive(Clone)]
pub struct MockClose {
    server: MockGong,
    state: Arc<Mutex<CloseState>>,
}

fn error(status: u16, message: &str) -> MockResponse {
    MockResponse::json(status, json!({"error": message}))
}

fn answer(state: &Mutex<CloseState>, req: &RecordedRequest) -> MockResponse {
    let state = state.lock().unwrap_or_else(|p| p.into_inner());
    let response = serve(&state, req);
    if state.delay.is_zero() {
        response
    } else {
        response.delay(state.delay)
    }
}

fn serve(state: &CloseState, req: &RecordedRequest) -> MockResponse {
    if req.header("authorization") != Some(state.authorization.as_str()) {
        return error(401, "The API key is invalid.");
    }
    let parts: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "custom_field", object] => MockResponse::json(
            200,
            json!({"data": state.fields.get(*object).cloned().unwrap_or_default(), "has_more": false}),
        ),
        ["api", "v1", object] => {
            let all = state.lists.get(*object).cloned().unwrap_or_default();
            let skip: usize = req
                .query_param("_skip")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let limit = req
                .query_param("_limit")
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(100)
                .min(state.page_size);
            let page: Vec<Value> = all.iter().skip(skip).take(limit).cloned().collect();
            MockResponse::json(
                200,
                json!({"data": page, "has_more": skip + limit < all.len()}),
            )
        }
        ["api", "v1", object, id] => match state
            .lists
            .get(*object)
            .and_then(|l| l.iter().find(|r| r["id"] == json!(id)))
        {
            Some(record) => MockResponse::json(200, record.clone()),
            None => error(404, "Empty query: not found"),
        },
        _ => error(404, "no such route"),
    }
}

impl MockClose {
    /// Starts the mock; requests must carry `Authorization: Basic base64({api_key}:)`.
    pub async fn start(api_key: &str) -> MockClose {
        let authorization = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{api_key}:"))
        );
        let state = Arc::new(Mutex::new(CloseState {
            authorization,
            page_size: 100,
            ..CloseState::default()
        }));
        let for_server = state.clone();
        let server = MockGong::start_with(Box::new(move |req: &RecordedRequest| {
            answer(&for_server, req)
        }))
        .await;
        MockClose { server, state }
    }

    fn with<T>(&self, change: impl FnOnce(&mut CloseState) -> T) -> T {
        change(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `http://127.0.0.1:PORT`, for `close_base_url`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// Sets a list (`lead`, `contact`, `opportunity`).
    pub fn set_list(&self, object: &str, records: Vec<Value>) {
        self.with(|s| s.lists.insert(object.to_owned(), records));
    }

    /// Sets an object's custom fields.
    pub fn set_fields(&self, object: &str, fields: Vec<Value>) {
        self.with(|s| s.fields.insert(object.to_owned(), fields));
    }

    /// Every answer waits `delay` (a slow API).
    pub fn set_delay(&self, delay: Duration) {
        self.with(|s| s.delay = delay);
    }

    /// The next request to `path` is rate limited: 429 with `Retry-After` seconds and Close's
    /// `ratelimit` header.
    pub fn rate_limit_next(&self, path: &str, retry_after: u64) {
        self.server.on(
            "GET",
            path,
            error(429, "API call count exceeded for this 1 second window")
                .header("retry-after", &retry_after.to_string())
                .header(
                    "ratelimit",
                    &format!("limit=40, remaining=0, reset={retry_after}"),
                ),
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
