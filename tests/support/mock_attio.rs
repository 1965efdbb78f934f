//! A mock of Attio's REST API, as far as the bridge reads it: objects (`GET /v2/objects/{id or
//! slug}`), records (`GET /v2/objects/{object}/records/{record_id}`, and pages of them by
//! `POST /v2/objects/{object}/records/query` with `{limit, offset}`), attributes
//! (`GET /v2/objects/{object}/attributes`, a select's `…/{slug}/options`), answered as Attio
//! documents them (`{"data": …}`; errors `{status_code, type, code, message}`), behind a Bearer
//! token. Faults are scripted per request: a refused token (401), a record gone (404
//! `not_found`) or being merged (404 `merge_in_progress`), a rate limit (429 with `Retry-After`
//! as an HTTP-date, as Attio sends it), a server error (500) and slow answers. Built on
//! `MockGong`'s server, so every request is recorded the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::support::mock_gong::{MockGong, MockResponse, RecordedRequest};

#[derive(Default)]
struct AttioState {
    token: String,
    /// Object id → the object (`{id: {workspace_id, object_id}, api_slug, …}`).
    objects: BTreeMap<String, Value>,
    /// (object slug, record id) → the record.
    records: BTreeMap<(String, String), Value>,
    /// Record ids whose merge is still being applied.
    merging: BTreeSet<String>,
    /// Object slug → its attributes; (object slug, attribute slug) → option titles.
    attributes: BTreeMap<String, Vec<Value>>,
    options: BTreeMap<(String, String), Vec<String>>,
}

/// The mock Attio API. Cheap to clone.
#[derive(Clone)]
pub struct MockAttio {
    server: MockGong,
    state: Arc<Mutex<AttioState>>,
}

fn error(status: u16, kind: &str, code: &str, message: &str) -> MockResponse {
    MockResponse::json(
        status,
        json!({"status_code": status, "type": kind, "code": code, "message": message}),
    )
}

fn answer(state: &Mutex<AttioState>, req: &RecordedRequest) -> MockResponse {
    let state = state.lock().unwrap_or_else(|p| p.into_inner());
    if req.header("authorization") != Some(format!("Bearer {}", state.token).as_str()) {
        return error(
            401,
            "auth_error",
            "unauthorized",
            "Invalid or revoked access token",
        );
    }
    let parts: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), parts.as_slice()) {
        ("GET", ["v2", "objects", object]) => {
            let found = state.objects.get(*object).or_else(|| {
                state
                    .objects
                    .values()
                    .find(|o| o["api_slug"] == json!(object))
            });
            match found {
                Some(o) => MockResponse::json(200, json!({"data": o})),
                None => error(
                    404,
                    "invalid_request_error",
                    "not_found",
                    "Object not found",
                ),
            }
        }
        ("POST", ["v2", "objects", object, "records", "query"]) => {
            let query: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let limit = query["limit"].as_u64().unwrap_or(500) as usize;
            let offset = query["offset"].as_u64().unwrap_or(0) as usize;
            let page: Vec<&Value> = state
                .records
                .iter()
                .filter(|((o, _), _)| o == object)
                .map(|(_, r)| r)
                .skip(offset)
                .take(limit)
                .collect();
            MockResponse::json(200, json!({"data": page}))
        }
        ("GET", ["v2", "objects", object, "attributes"]) => MockResponse::json(
            200,
            json!({"data": state.attributes.get(*object).cloned().unwrap_or_default()}),
        ),
        ("GET", ["v2", "objects", object, "attributes", attribute, "options"]) => {
            let titles = state
                .options
                .get(&(object.to_string(), attribute.to_string()))
                .cloned()
                .unwrap_or_default();
            let options: Vec<Value> = titles
                .iter()
                .map(|t| json!({"title": t, "is_archived": false}))
                .collect();
            MockResponse::json(200, json!({"data": options}))
        }
        ("GET", ["v2", "objects", object, "records", record]) => {
            if state.merging.contains(*record) {
                return error(
                    404,
                    "invalid_request_error",
                    "merge_in_progress",
                    "Record is being merged",
                );
            }
            match state.records.get(&(object.to_string(), record.to_string())) {
                Some(r) => MockResponse::json(200, json!({"data": r})),
                None => error(
                    404,
                    "invalid_request_error",
                    "not_found",
                    "Record not found",
                ),
            }
        }
        _ => error(404, "invalid_request_error", "not_found", "No such route"),
    }
}

impl MockAttio {
    /// Starts the mock; requests must carry `Authorization: Bearer {token}`.
    pub async fn start(token: &str) -> MockAttio {
        let state = Arc::new(Mutex::new(AttioState {
            token: token.to_owned(),
            ..AttioState::default()
        }));
        let for_server = state.clone();
        let server = MockGong::start_with(Box::new(move |req: &RecordedRequest| {
            answer(&for_server, req)
        }))
        .await;
        MockAttio { server, state }
    }

    fn with<T>(&self, change: impl FnOnce(&mut AttioState) -> T) -> T {
        change(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `http://127.0.0.1:PORT`, for `attio_base_url`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// Adds an object as `GET /v2/objects/{object}` answers it (its `data`).
    pub fn add_object(&self, object: Value) {
        let id = object["id"]["object_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.with(|s| s.objects.insert(id, object));
    }

    /// Puts (or replaces) a record as `GET …/records/{record_id}` answers it (its `data`).
    pub fn put_record(&self, object_slug: &str, record: Value) {
        let id = record["id"]["record_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.with(|s| s.records.insert((object_slug.to_owned(), id), record));
    }

    /// Sets an object's attributes, and a select attribute's option titles.
    pub fn set_attributes(&self, object_slug: &str, attributes: Vec<Value>) {
        self.with(|s| s.attributes.insert(object_slug.to_owned(), attributes));
    }

    pub fn set_options(&self, object_slug: &str, attribute: &str, titles: &[&str]) {
        let titles = titles.iter().map(|t| (*t).to_owned()).collect();
        self.with(|s| {
            s.options
                .insert((object_slug.to_owned(), attribute.to_owned()), titles)
        });
    }

    /// Deletes a record: reads answer 404 `not_found`.
    pub fn remove_record(&self, object_slug: &str, record_id: &str) {
        self.with(|s| {
            s.records
                .remove(&(object_slug.to_owned(), record_id.to_owned()))
        });
    }

    /// While set, reads of the record answer 404 `merge_in_progress`.
    pub fn set_merging(&self, record_id: &str, merging: bool) {
        self.with(|s| {
            if merging {
                s.merging.insert(record_id.to_owned())
            } else {
                s.merging.remove(record_id)
            }
        });
    }

    /// Changes the token Attio accepts (the old one is then refused with 401).
    pub fn set_token(&self, token: &str) {
        self.with(|s| s.token = token.to_owned());
    }

    /// The next request to `path` is rate limited: 429 with `Retry-After` an HTTP-date
    /// `after` from now (Attio's form) and Attio's error body.
    pub fn rate_limit_next(&self, path: &str, after: Duration) {
        self.rate_limit_next_on("GET", path, after);
    }

    /// The same for another method (`POST …/records/query`).
    pub fn rate_limit_next_on(&self, method: &str, path: &str, after: Duration) {
        let date = httpdate(SystemTime::now() + after);
        self.server.on(
            method,
            path,
            error(
                429,
                "rate_limit_error",
                "rate_limit_exceeded",
                "Rate limit exceeded, please try again later",
            )
            .header("retry-after", &date),
        );
    }

    /// The next request to `path` fails with a 500.
    pub fn fail_next(&self, path: &str) {
        self.fail_next_on("GET", path);
    }

    /// The same for another method.
    pub fn fail_next_on(&self, method: &str, path: &str) {
        self.server.on(
            method,
            path,
            error(
                500,
                "api_error",
                "internal_error",
                "An internal error occurred",
            ),
        );
    }

    /// The next request to `path` is answered as usual, after `delay`.
    pub fn slow_next(&self, path: &str, delay: Duration) {
        let token = format!("Bearer {}", self.with(|s| s.token.clone()));
        let request = RecordedRequest {
            method: "GET".into(),
            path: path.to_owned(),
            query: Vec::new(),
            headers: vec![("authorization".into(), token)],
            body: Vec::new(),
            parts: Vec::new(),
            multipart_error: None,
        };
        let response = answer(&self.state, &request);
        self.server.on("GET", path, response.delay(delay));
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<RecordedRequest> {
        self.server.received()
    }
}

/// An IMF-fixdate (`Tue, 23 May 2023 14:42:01 GMT`), rounded up to the next second.
pub fn httpdate(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    let at = if at.nanosecond() > 0 {
        at.replace_nanosecond(0).unwrap_or(at) + time::Duration::SECOND
    } else {
        at
    };
    at.format(time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    ))
    .unwrap_or_default()
}
