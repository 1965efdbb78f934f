//! The bridge as a plain function from request to response, given the four ports. The router
//! only dispatches; each area's handlers live in `routes/`.

use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::gong::client::{parse_response, GongClient, Operation};
use crate::ports::{Clock, Config, Kv, Outbound, Request, Response};
use crate::problem::ApiError;
use crate::quota::{self, Decision, QuotaState};
use crate::routes;
use crate::settings;
use crate::store::Store;

/// KV key of the shared Gong call budget (`quota::QuotaState`).
pub const QUOTA_KEY: &str = "quota";

/// Everything a handler may touch.
#[derive(Clone, Copy)]
pub struct Bridge<'a> {
    pub kv: &'a dyn Kv,
    pub config: &'a dyn Config,
    pub outbound: &'a dyn Outbound,
    pub clock: &'a dyn Clock,
    /// When set, no Gong call starts after this instant and none waits past it: the bound on
    /// work after the answer and on `POST /flush` (`work_budget_ms`).
    pub deadline: Option<time::OffsetDateTime>,
}

impl<'a> Bridge<'a> {
    /// The same bridge, bound to finish its Gong calls within `work_budget_ms` from `started`.
    pub fn with_budget(self, started: time::OffsetDateTime) -> Bridge<'a> {
        Bridge { deadline: Some(started + settings::work_budget(self.config)), ..self }
    }

    /// How long the next Gong call may wait: `gong_timeout_ms`, cut to what is left of the
    /// work budget; an error once the budget is spent.
    fn call_timeout(&self) -> Result<std::time::Duration, ApiError> {
        let configured = settings::gong_timeout(self.config);
        let Some(deadline) = self.deadline else { return Ok(configured) };
        let left = deadline - self.clock.now();
        match std::time::Duration::try_from(left) {
            Ok(left) if left >= std::time::Duration::from_millis(50) => Ok(configured.min(left)),
            _ => Err(ApiError::OutOfTime { budget_ms: settings::work_budget(self.config).as_millis() as u64 }),
        }
    }

    pub fn store(&self) -> Store<'a> {
        Store::new(self.kv)
    }

    /// Now, as RFC 3339 in UTC without fractional seconds.
    pub fn now(&self) -> String {
        crate::validation::format_gong_datetime(self.clock.now())
    }

    /// Idempotency keys over this bridge's store, with the configured expiry and settle time.
    pub fn idempotency(&self) -> crate::idempotency::Idempotency<'a> {
        crate::idempotency::Idempotency {
            kv: self.kv,
            clock: self.clock,
            ttl: settings::idempotency_ttl(self.config),
            settle: settings::idempotency_settle(self.config),
        }
    }

    pub fn gong(&self) -> Result<GongClient, ApiError> {
        settings::gong_client(self.config)
    }

    /// Sends one request to Gong with the configured timeout, within the shared call budget.
    pub fn send(&self, op: Operation, request: Request) -> Result<Response, ApiError> {
        self.call_timeout()?;
        self.spend_quota()?;
        let response = self
            .outbound
            .send(request, self.call_timeout()?)
            .map_err(|error| ApiError::GongUnreachable { op, error })?;
        if response.status().as_u16() == 429 {
            let retry_after = crate::gong::client::retry_after_seconds(&response);
            let now_ms = (self.clock.now().unix_timestamp_nanos() / 1_000_000) as i64;
            if let Err(e) = self.update_quota(|state| quota::block_ms(state, now_ms, retry_after)) {
                eprintln!("gong-crm-bridge: could not record Gong's 429 for other replicas: {e}");
            }
        }
        Ok(response)
    }

    fn update_quota(&self, change: impl FnOnce(&mut QuotaState)) -> Result<(), ApiError> {
        let store = self.store();
        let mut state: QuotaState = store.get_json(QUOTA_KEY)?.unwrap_or_default();
        change(&mut state);
        store.put_json(QUOTA_KEY, &state)
    }

    /// Takes one call from the budget, waiting (at most 3 s) for the next second if this
    /// second's calls are used up.
    fn spend_quota(&self) -> Result<(), ApiError> {
        let limits = settings::quota_limits(self.config);
        let store = self.store();
        let mut waited_ms = 0u64;
        loop {
            let mut state: QuotaState = store.get_json(QUOTA_KEY)?.unwrap_or_default();
            let now = self.clock.now();
            let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
            match quota::decide(&mut state, limits, now_ms) {
                Decision::Go => return store.put_json(QUOTA_KEY, &state),
                Decision::Wait(ms) if waited_ms + ms <= 3_000 => {
                    self.clock.sleep(std::time::Duration::from_millis(ms));
                    waited_ms += ms;
                }
                Decision::Wait(ms) => {
                    return Err(ApiError::Throttled {
                        detail: format!("{} Gong calls per second are used up", limits.per_second),
                        retry_after: ms.div_ceil(1000).max(1),
                    })
                }
                Decision::Blocked { until_ms, reason } => {
                    return Err(ApiError::Throttled {
                        detail: format!("no Gong call until {} (Unix time): {reason}", (until_ms + 999).div_euclid(1000)),
                        retry_after: quota::seconds_until(until_ms, now_ms),
                    })
                }
            }
        }
    }

    /// Sends and parses the expected success; any other answer is a typed Gong error.
    pub fn call<T: DeserializeOwned>(&self, op: Operation, request: Request, success: &[u16]) -> Result<T, ApiError> {
        let response = self.send(op, request)?;
        parse_response(&response, success).map_err(|error| ApiError::Gong { op, error })
    }

    /// The integrationId in use: the `integration_id` variable, else the one kept by
    /// `PUT /integration`; with neither, the caller must register first.
    pub fn integration_id(&self) -> Result<i64, ApiError> {
        if let Some(id) = settings::integration_id_variable(self.config)? {
            return Ok(id);
        }
        match self.store().integration()? {
            Some(kept) => Ok(kept.integration_id),
            None => Err(ApiError::Conflict(
                "no Gong integration yet: register one with PUT /integration, or set the integration_id variable".into(),
            )),
        }
    }
}

/// A request's answer, and whether the buffer check should run once it has been sent.
pub struct Handled {
    pub response: Response,
    pub follow_up: bool,
    /// The inbox should be compacted first (a delivery filled it).
    pub compact_inbox: bool,
}

/// Work a route asks for after its answer, carried in the response's extensions (never sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowUp {
    CompactInbox,
}

/// Handles one request; never panics on bad input, and every error becomes problem+json.
/// No flush, compaction or poll runs here: that is [`follow_up`], after the answer is sent.
pub fn handle(bridge: &Bridge, request: Request) -> Handled {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let checks_buffer = !matches!(path.as_str(), "/healthz" | "/flush");
    match route(bridge, request) {
        // Only after a served (2xx) request: an unauthenticated caller cannot make the bridge
        // scan its store.
        Ok(mut response) => {
            let compact_inbox = response.extensions_mut().remove::<FollowUp>() == Some(FollowUp::CompactInbox);
            Handled { follow_up: checks_buffer && response.status().is_success(), compact_inbox, response }
        }
        Err(error) => Handled { response: refuse(&method, &path, error), follow_up: false, compact_inbox: false },
    }
}

/// The problem+json answer to `error`, logged once when it is the bridge's or Gong's fault
/// (without secrets: errors never carry credentials, see gong::client::Auth).
pub fn refuse(method: &http::Method, path: &str, error: ApiError) -> Response {
    if error.status() >= 500 {
        eprintln!("gong-crm-bridge: {method} {path} -> {}: {error}", error.status());
    }
    error.into_response()
}

/// The work after an answer: whether buffered records are due (cheap unless a scan is due),
/// flushed and followed within the work budget. A problem here is logged; the answer was sent.
pub fn follow_up(bridge: &Bridge, compact_inbox: bool) {
    if compact_inbox {
        if let Err(e) = routes::flush::compact_inbox_now(bridge) {
            eprintln!("gong-crm-bridge: inbox compaction after the answer: {e}");
        }
    }
    if let Err(e) = routes::flush::check(bridge) {
        eprintln!("gong-crm-bridge: buffer check after the answer: {e}");
    }
}

fn route(bridge: &Bridge, mut request: Request) -> Result<Response, ApiError> {
    use http::Method;
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let method = request.method().clone();

    if segments.as_slice() == ["healthz"] {
        return match method {
            Method::GET | Method::HEAD => Ok(routes::health::get(bridge)),
            _ => Err(not_allowed(&method, "GET")),
        };
    }
    // A malformed number (say `kv_max_keys=1,024`) would otherwise be read as its default.
    let malformed = settings::malformed(bridge.config);
    if !malformed.is_empty() {
        return Err(ApiError::MalformedVariables(malformed));
    }

    // Webhooks authenticate themselves (signature or their own bearer token).
    if segments.as_slice() == ["webhooks"] {
        return match method {
            Method::POST => routes::webhooks::receive(bridge, &request),
            _ => Err(not_allowed(&method, "POST")),
        };
    }

    // Refuse unknown paths before authentication only by shape, so that a scanner learns
    // nothing more than "unauthorized" for real routes.
    let allowed = allowed_methods(&segments).ok_or_else(|| ApiError::NotFound {
        method: method.to_string(),
        path: path.clone(),
    })?;
    authorize(bridge, &request)?;

    let changes_state = !matches!(method, Method::GET | Method::HEAD);
    if changes_state && request.headers().contains_key("idempotency-key") {
        return with_idempotency(bridge, &mut request, |request| dispatch(bridge, request, &method, &segments, allowed));
    }
    dispatch(bridge, &mut request, &method, &segments, allowed)
}

/// Handlers get the request mutably only so that `POST /records` can take its body and free
/// it once validated (a body-sized copy less at the peak).
fn dispatch(bridge: &Bridge, request: &mut Request, method: &http::Method, segments: &[&str], allowed: &'static str) -> Result<Response, ApiError> {
    use http::Method;
    match (method, segments) {
        (&Method::PUT, ["integration"]) => routes::integration::register(bridge, request),
        (&Method::GET, ["integration"]) => routes::integration::list(bridge),
        (&Method::DELETE, ["integration"]) => routes::integration::delete(bridge, request),
        (&Method::POST, ["schema", object_type]) => routes::schema::upload(bridge, request, object_type),
        (&Method::GET, ["schema", object_type]) => routes::schema::list(bridge, Some(object_type)),
        (&Method::GET, ["schema"]) => routes::schema::list(bridge, None),
        (&Method::POST, ["records", object_type]) => routes::records::upload(bridge, request, object_type),
        (&Method::GET, ["records", object_type]) => routes::records::get(bridge, request, object_type),
        (&Method::GET, ["records", object_type, object_id, "status"]) => {
            routes::requests::record_status(bridge, object_type, object_id)
        }
        (&Method::GET, ["requests"]) => routes::requests::list(bridge, request),
        (&Method::GET, ["requests", id]) => routes::requests::get(bridge, id),
        (&Method::POST, ["requests", id, "retry"]) => routes::requests::retry(bridge, id),
        (&Method::POST, ["sweep"]) => sweep(bridge),
        (&Method::POST, ["flush"]) => routes::failures::flush_now(&bridge.with_budget(bridge.clock.now()), request),
        (&Method::GET, ["failures"]) => routes::failures::list(bridge, request),
        (&Method::POST, ["failures", "retry"]) => routes::failures::retry(bridge, request),
        (&Method::DELETE, ["failures", object_type, object_id]) => routes::failures::discard(bridge, object_type, object_id),
        _ => Err(not_allowed(method, allowed)),
    }
}

/// Runs a state-changing management request under its `Idempotency-Key`, scoped to the
/// method and path: a replay answers the stored response, a reuse with another body is 422.
fn with_idempotency(
    bridge: &Bridge,
    request: &mut Request,
    run: impl FnOnce(&mut Request) -> Result<Response, ApiError>,
) -> Result<Response, ApiError> {
    let key = request.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").trim().to_owned();
    if !is_valid_client_request_id(&key) {
        return Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 64 characters of letters, digits, '-' or '_' (Gong's clientRequestId rule)",
        ));
    }
    let idem = bridge.idempotency();
    let scope = format!("{} {}", request.method(), request.uri().path());
    let claim = match idem.begin_checked(&scope, &key, &crate::idempotency::fingerprint(request.body()))? {
        crate::idempotency::Begin::Replay(response) => return Ok(response),
        crate::idempotency::Begin::Proceed(claim) => claim,
    };
    let response = run(request).unwrap_or_else(ApiError::into_response);
    if let Err(e) = idem.complete(claim, &response) {
        eprintln!("gong-crm-bridge: could not store the idempotency record for {scope}: {e}");
    }
    Ok(response)
}

/// `POST /sweep`: removes expired idempotency keys (for a Spin cron trigger or any scheduler).
fn sweep(bridge: &Bridge) -> Result<Response, ApiError> {
    let idem = bridge.idempotency();
    let removed = idem.sweep()?;
    Ok(crate::problem::json_response(200, &serde_json::json!({ "expiredKeysRemoved": removed })))
}

fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    match segments {
        ["integration"] => Some("GET, PUT, DELETE"),
        ["schema"] => Some("GET"),
        ["schema", _] => Some("GET, POST"),
        ["records", _] => Some("GET, POST"),
        ["requests"] => Some("GET"),
        ["requests", _] => Some("GET"),
        ["records", _, _, "status"] => Some("GET"),
        ["sweep"] => Some("POST"),
        ["flush"] => Some("POST"),
        ["failures"] => Some("GET"),
        ["failures", "retry"] => Some("POST"),
        ["failures", _, _] => Some("DELETE"),
        ["requests", _, "retry"] => Some("POST"),
        _ => None,
    }
}

fn not_allowed(method: &http::Method, allowed: &'static str) -> ApiError {
    ApiError::MethodNotAllowed { method: method.to_string(), allowed }
}

/// `Authorization: Bearer <api_token>`, compared in constant time (over SHA-256 digests, so
/// the token's length does not leak either).
fn authorize(bridge: &Bridge, request: &Request) -> Result<(), ApiError> {
    let expected = settings::api_token(bridge.config)?;
    let given = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthorized("send Authorization: Bearer <api_token>".into()))?;
    use sha2::Digest;
    let a = sha2::Sha256::digest(given.as_bytes());
    let b = sha2::Sha256::digest(expected.as_bytes());
    if bool::from(a.as_slice().ct_eq(b.as_slice())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("the bearer token is not valid".into()))
    }
}

/// Query parameters, decoded.
pub fn query_pairs(request: &Request) -> Vec<(String, String)> {
    url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes()).into_owned().collect()
}

/// A boolean query flag: absent → false; `true`/`1` → true; `false`/`0` → false; else 400.
pub fn query_flag(request: &Request, name: &str) -> Result<bool, ApiError> {
    match query_pairs(request).into_iter().find(|(k, _)| k == name).map(|(_, v)| v) {
        None => Ok(false),
        Some(v) => match v.as_str() {
            "" | "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            other => Err(ApiError::bad_request(format!("query parameter {name}={other:?} must be true or false"))),
        },
    }
}

/// Parses a JSON body into `T`, answering 400 with serde's precise message.
pub fn json_body<T: DeserializeOwned>(request: &Request) -> Result<T, ApiError> {
    serde_json::from_slice(request.body()).map_err(|e| ApiError::bad_request(format!("the body is not the expected JSON: {e}")))
}

/// A clientRequestId from the `Idempotency-Key` header, when it is one Gong accepts
/// (letters, digits, `-`, `_`; at most 64), else a new one.
pub fn client_request_id(request: &Request) -> Result<String, ApiError> {
    match request.headers().get("idempotency-key") {
        None => Ok(new_client_request_id()),
        Some(value) => {
            let key = value.to_str().unwrap_or("").trim();
            if is_valid_client_request_id(key) {
                Ok(key.to_owned())
            } else {
                Err(ApiError::bad_request(
                    "Idempotency-Key must be 1 to 64 characters of letters, digits, '-' or '_' (Gong's clientRequestId rule)",
                ))
            }
        }
    }
}

pub fn new_client_request_id() -> String {
    format!("gcb-{}", uuid::Uuid::new_v4().simple())
}

pub fn is_valid_client_request_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_request_id_rule() {
        assert!(is_valid_client_request_id("abc-DEF_123"));
        assert!(!is_valid_client_request_id(""));
        assert!(!is_valid_client_request_id("a b"));
        assert!(!is_valid_client_request_id("a.b"));
        assert!(!is_valid_client_request_id(&"x".repeat(65)));
        assert!(is_valid_client_request_id(&new_client_request_id()));
    }
}

#[cfg(test)]
mod engine_edge_tests {
    use super::*;

    /// Fresh doubles (store, clock at 2023-11-14, scripted Gong, variables) and a bridge over them.
    macro_rules! doubles {
        ($kv:ident, $clock:ident, $gong:ident, $config:ident, $bridge:ident, $vars:expr) => {
            let ($kv, $clock) = (MemoryKv::default(), VirtualClock::at(1_700_000_000));
            let $gong = ScriptedGong::new(&$clock);
            let $config = configured($vars);
            let $bridge = bridge(&$kv, &$config, &$gong, &$clock);
        };
    }
    use crate::store::memory::MemoryKv;
    use crate::testing::{bridge, configured, request, ScriptedGong, VirtualClock};

    fn upsert(object_id: &str) -> Vec<u8> {
        format!(
            r#"{{"type":"record.upserted","timestamp":"2024-01-01T00:00:00Z","data":{{"objectType":"ACCOUNT","record":{{"objectId":"{object_id}","modifiedDate":"2024-05-01T10:00:00Z","name":"Acme"}}}}}}"#
        )
        .into_bytes()
    }

    fn webhook(id: &str, body: &[u8]) -> Request {
        request("POST", "/webhooks", &[("authorization", "Bearer hook-token"), ("webhook-id", id), ("content-type", "application/json")], body)
    }

    /// Issue 10 finding 4: a webhook that makes a flush due is answered without any Gong call;
    /// the flush is the follow-up, run after the answer.
    #[test]
    fn a_webhook_is_answered_before_any_gong_call() {
        doubles!(kv, clock, gong, config, bridge, &[("batch_max_records", "1")]);
        let handled = handle(&bridge, webhook("msg-1", &upsert("acc-1")));
        assert_eq!(handled.response.status(), 202);
        assert!(handled.follow_up);
        assert!(gong.calls().is_empty(), "Gong was called before the answer: {:?}", gong.calls());
        follow_up(&bridge.with_budget(clock.now()), false);
        assert!(gong.calls().iter().any(|c| c.method == "POST" && c.path.starts_with("/v2/crm/entities")), "{:?}", gong.calls());
    }

    /// Issue 10 item 3/9: the follow-up's Gong calls wait at most what is left of
    /// `work_budget_ms`, and none starts once it is spent.
    #[test]
    fn work_after_the_answer_stays_within_its_budget() {
        doubles!(kv, clock, gong, config, bridge, &[("batch_max_records", "1"), ("work_budget_ms", "5000")]);
        gong.default_takes.set(std::time::Duration::from_secs(20));
        for (i, object_type) in ["ACCOUNT", "CONTACT"].iter().enumerate() {
            let body = String::from_utf8(upsert(&format!("r-{i}"))).unwrap().replace("ACCOUNT", object_type);
            assert_eq!(handle(&bridge, webhook(&format!("msg-{i}"), body.as_bytes())).response.status(), 202);
        }
        let started = clock.now();
        follow_up(&bridge.with_budget(started), false);
        let calls = gong.calls();
        assert_eq!(calls.len(), 1, "a second call started after the budget was spent: {calls:?}");
        assert_eq!(calls[0].timeout, std::time::Duration::from_secs(5), "the call may wait only what is left of the budget");
        assert!(clock.now() - started <= time::Duration::seconds(5));
    }

    /// Issue 10 item 11: a malformed number is named by /healthz and refuses work with a 500.
    #[test]
    fn a_malformed_variable_is_reported_and_refuses_work() {
        doubles!(kv, clock, gong, config, bridge, &[("kv_max_keys", "1,024")]);
        let health = handle(&bridge, request("GET", "/healthz", &[], b"")).response;
        let body: serde_json::Value = serde_json::from_slice(health.body()).unwrap();
        assert_eq!(body["status"], "misconfigured");
        assert!(body["malformedVariables"][0].as_str().unwrap().starts_with("kv_max_keys"), "{body}");
        let refused = handle(&bridge, webhook("msg-1", &upsert("acc-1")));
        assert_eq!(refused.response.status(), 500);
        assert!(!refused.follow_up);
        let problem: serde_json::Value = serde_json::from_slice(refused.response.body()).unwrap();
        assert_eq!(problem["malformed"][0], "kv_max_keys (\"1,024\" is not a whole number)");
        assert!(kv.map.borrow().is_empty(), "nothing was buffered");
        assert!(gong.calls().is_empty());
    }

    fn upload(path: &str, key: &str, body: &str) -> Request {
        request("POST", path, &[("authorization", "Bearer token"), ("idempotency-key", key), ("content-type", "application/json")], body.as_bytes())
    }

    fn scripted(status: u16, body: &str) -> crate::testing::Scripted {
        let response = http::Response::builder().status(status).header("content-type", "application/json").body(body.as_bytes().to_vec()).unwrap();
        crate::testing::Scripted { answer: Ok(response), takes: std::time::Duration::from_millis(10) }
    }

    /// Issue 10 finding 1: one Idempotency-Key (= clientRequestId) on a second, different request
    /// is a 422 naming the first use, never a 202 replaying the first request's record.
    #[test]
    fn a_client_request_id_reused_for_another_request_is_refused() {
        doubles!(kv, clock, gong, config, bridge, &[]);
        let accounts = r#"[{"objectId":"a1","modifiedDate":"2024-05-01T10:00:00Z","name":"Acme"}]"#;
        let leads = r#"[{"objectId":"l1","modifiedDate":"2024-05-01T10:00:00Z","firstName":"Ada","lastName":"L","emailAddress":"ada@acme.com"}]"#;
        assert_eq!(handle(&bridge, upload("/records/ACCOUNT", "key-1", accounts)).response.status(), 202);
        let reused = handle(&bridge, upload("/records/LEAD", "key-1", leads)).response;
        let body: serde_json::Value = serde_json::from_slice(reused.body()).unwrap();
        assert_eq!(reused.status(), 422, "{body}");
        assert!(body["detail"].as_str().unwrap().contains("ACCOUNT"), "the problem names the first use: {body}");
        let uploads = gong.calls().into_iter().filter(|c| c.path.starts_with("/v2/crm/entities")).count();
        assert_eq!(uploads, 1, "the leads were neither sent nor reported as sent");
    }

    /// Issue 10 finding 1: Gong's 409 for a clientRequestId the bridge never sent (an expired
    /// key, another client) is not "accepted": the file goes out again under a fresh id.
    #[test]
    fn a_gong_409_for_an_unknown_client_request_id_resends_under_a_fresh_id() {
        doubles!(kv, clock, gong, config, bridge, &[]);
        gong.queue.borrow_mut().push_back(scripted(409, r#"{"requestId":"g409","errors":["clientRequestId already used"]}"#));
        let accounts = r#"[{"objectId":"a1","modifiedDate":"2024-05-01T10:00:00Z","name":"Acme"}]"#;
        let answer = handle(&bridge, upload("/records/ACCOUNT", "old-key", accounts)).response;
        assert_eq!(answer.status(), 202, "{}", String::from_utf8_lossy(answer.body()));
        let uploads: Vec<_> = gong.calls().into_iter().filter(|c| c.path.starts_with("/v2/crm/entities")).collect();
        assert_eq!(uploads.len(), 2, "{uploads:?}");
        assert!(uploads[0].path.contains("clientRequestId=old-key"));
        assert!(!uploads[1].path.contains("clientRequestId=old-key"), "resent under a fresh id: {uploads:?}");
        let record: serde_json::Value = serde_json::from_slice(&kv.map.borrow()["request/old-key"]).unwrap();
        assert_eq!(record["status"], "PENDING", "{record}");
    }

    /// The other side of finding 1: when another replica wrote the same request meanwhile (a
    /// claim race), Gong's 409 is that replica's acceptance and the file is not sent a third time.
    #[test]
    fn a_gong_409_after_a_replica_sent_the_same_request_is_accepted() {
        doubles!(kv, clock, gong, config, bridge, &[]);
        gong.queue.borrow_mut().push_back(scripted(409, r#"{"requestId":"g409","errors":["clientRequestId already used"]}"#));
        gong.queue.borrow_mut().push_back(scripted(409, r#"{"requestId":"g409","errors":["clientRequestId already used"]}"#));
        let kv_ref = &kv;
        *gong.meanwhile.borrow_mut() = Some(Box::new(move || {
            let key = "request/race-key";
            let mut other: serde_json::Value = serde_json::from_slice(&kv_ref.map.borrow()[key]).unwrap();
            other["submittedBy"] = serde_json::json!("the-other-replica");
            kv_ref.map.borrow_mut().insert(key.to_owned(), serde_json::to_vec(&other).unwrap());
        }));
        let accounts = r#"[{"objectId":"a1","modifiedDate":"2024-05-01T10:00:00Z","name":"Acme"}]"#;
        let answer = handle(&bridge, upload("/records/ACCOUNT", "race-key", accounts)).response;
        assert_eq!(answer.status(), 202, "{}", String::from_utf8_lossy(answer.body()));
        let uploads: Vec<_> = gong.calls().into_iter().filter(|c| c.path.starts_with("/v2/crm/entities")).collect();
        assert_eq!(uploads.len(), 1, "{uploads:?}");
    }

    /// Answer first, also for housekeeping: a delivery that fills the inbox is answered before
    /// the inbox is compacted into the shards; the follow-up compacts it.
    #[test]
    fn a_delivery_that_fills_the_inbox_is_answered_before_compaction() {
        doubles!(kv, clock, gong, config, bridge, &[("kv_max_keys", "128")]);
        let inbox = |kv: &MemoryKv| kv.map.borrow().keys().filter(|k| k.starts_with("inbox/")).count();
        let mut last = None;
        for i in 0..16 {
            last = Some(handle(&bridge, webhook(&format!("msg-{i}"), &upsert(&format!("acc-{i}")))));
        }
        let last = last.unwrap();
        assert_eq!(last.response.status(), 202);
        assert!(last.compact_inbox, "16 inbox keys reach the compaction line of a 128-key budget");
        assert_eq!(inbox(&kv), 16, "nothing was compacted before the answer");
        follow_up(&bridge.with_budget(clock.now()), last.compact_inbox);
        assert_eq!(inbox(&kv), 0, "the follow-up compacted the inbox");
        assert!(kv.map.borrow().keys().any(|k| k.starts_with("pbuf/ACCOUNT/")));
    }

    fn flush(bridge: &Bridge, force: bool) -> serde_json::Value {
        let path = if force { "/flush?force=true" } else { "/flush" };
        let answer = handle(bridge, request("POST", path, &[("authorization", "Bearer token")], b"")).response;
        assert_eq!(answer.status(), 200, "{}", String::from_utf8_lossy(answer.body()));
        serde_json::from_slice(answer.body()).unwrap()
    }

    fn uploaded_ids(gong: &ScriptedGong, upload: usize) -> Vec<String> {
        let uploads: Vec<_> = gong.calls().into_iter().filter(|c| c.method == "POST" && c.path.starts_with("/v2/crm/entities")).collect();
        let bodies = gong.bodies.borrow();
        let body = &bodies[uploads[upload].index];
        String::from_utf8_lossy(body).lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter_map(|v| v["objectId"].as_str().map(str::to_owned)).collect()
    }

    /// Issue 10 finding 2: Gong lists at most 20 failed lines per file. When it counts more
    /// failures than it lists, the unlisted records go out again (without the listed ones) instead
    /// of being reported done.
    #[test]
    fn records_whose_outcome_gong_did_not_list_are_sent_again() {
        doubles!(kv, clock, gong, config, bridge, &[("gong_calls_per_second", "0")]);
        let records: Vec<String> = (0..25)
            .map(|i| format!(r#"{{"objectId":"a{i:02}","modifiedDate":"2024-05-01T10:00:{i:02}Z","name":"Acme"}}"#))
            .collect();
        let body = format!(r#"{{"type":"record.upserted","timestamp":"2024-01-01T00:00:00Z","data":{{"objectType":"ACCOUNT","records":[{}]}}}}"#, records.join(","));
        assert_eq!(handle(&bridge, webhook("msg-25", body.as_bytes())).response.status(), 202);
        flush(&bridge, true);
        assert_eq!(uploaded_ids(&gong, 0).len(), 25);
        let errors: Vec<String> = (1..=20).map(|line| format!(r#"{{"line":{line},"description":"bad value"}}"#)).collect();
        let failed = format!(r#"{{"requestId":"r","status":"FAILED","errors":[{}],"totalErrorCount":25,"totalSuccessCount":0}}"#, errors.join(","));
        gong.queue.borrow_mut().push_back(scripted(200, &failed));
        flush(&bridge, false);
        flush(&bridge, true);
        let resent = uploaded_ids(&gong, 1);
        assert_eq!(resent, vec!["a20", "a21", "a22", "a23", "a24"], "only the records Gong did not list go again");
        let failures = handle(&bridge, request("GET", "/failures", &[("authorization", "Bearer token")], b"")).response;
        let failures: serde_json::Value = serde_json::from_slice(failures.body()).unwrap();
        assert_eq!(failures["total"], 20, "{failures}");
        let status = handle(&bridge, request("GET", "/records/ACCOUNT/a24/status", &[("authorization", "Bearer token")], b"")).response;
        let status: serde_json::Value = serde_json::from_slice(status.body()).unwrap();
        // Done now, and because the second file's DONE covers it, not the first file's FAILED.
        let second = gong.calls().into_iter().filter(|c| c.path.starts_with("/v2/crm/entities")).nth(1).unwrap().path;
        assert_eq!(status["state"], "done", "{status}");
        assert!(second.contains(status["clientRequestId"].as_str().unwrap()), "{status} / {second}");
    }

    /// Issue 10 finding 2: a FAILED status with no line listed is not a success for its records.
    #[test]
    fn a_failed_file_with_no_listed_error_is_sent_again() {
        doubles!(kv, clock, gong, config, bridge, &[("gong_calls_per_second", "0")]);
        assert_eq!(handle(&bridge, webhook("msg-1", &upsert("acc-1"))).response.status(), 202);
        flush(&bridge, true);
        gong.queue.borrow_mut().push_back(scripted(200, r#"{"requestId":"r","status":"FAILED","errors":[]}"#));
        flush(&bridge, false);
        flush(&bridge, true);
        assert_eq!(uploaded_ids(&gong, 1), vec!["acc-1"]);
    }

    fn in_progress(gong: &ScriptedGong, answers: usize) {
        for _ in 0..answers {
            gong.queue.borrow_mut().push_back(scripted(200, r#"{"requestId":"r","status":"IN_PROGRESS","errors":[]}"#));
        }
    }

    fn status_polls(gong: &ScriptedGong) -> usize {
        gong.calls().iter().filter(|c| c.path.starts_with("/v2/crm/request-status")).count()
    }

    /// Issue 10 finding 3: following one file Gong is slow on, with a flush every 5 s for an
    /// hour, costs a dozen status polls (backoff 10 s doubling to 10 min), not 720.
    #[test]
    fn following_a_slow_file_for_an_hour_costs_a_dozen_polls() {
        doubles!(kv, clock, gong, config, bridge, &[("gong_calls_per_second", "0")]);
        assert_eq!(handle(&bridge, webhook("msg-1", &upsert("acc-1"))).response.status(), 202);
        flush(&bridge, true);
        gong.calls.borrow_mut().clear();
        in_progress(&gong, 1_000);
        for _ in 0..720 {
            clock.advance(std::time::Duration::from_secs(5));
            flush(&bridge, false);
        }
        let polls = status_polls(&gong);
        eprintln!("one slow file followed for an hour: {polls} Gong calls");
        assert!((8..=15).contains(&polls), "{polls} status polls in an hour");
        // Reading its status answers from the store between polls.
        let before = status_polls(&gong);
        handle(&bridge, request("GET", "/records/ACCOUNT/acc-1/status", &[("authorization", "Bearer token")], b""));
        assert_eq!(status_polls(&gong), before, "a status read before the next poll is due asks Gong nothing");
    }

    /// Issue 10 finding 3: Gong keeps a status for 24 h; a file still unresolved then goes out again.
    #[test]
    fn a_file_unresolved_after_24_hours_is_sent_again() {
        doubles!(kv, clock, gong, config, bridge, &[("gong_calls_per_second", "0"), ("gong_daily_call_cap", "0"), ("outbound_hourly_cap", "0")]);
        assert_eq!(handle(&bridge, webhook("msg-1", &upsert("acc-1"))).response.status(), 202);
        flush(&bridge, true);
        in_progress(&gong, 1_000);
        for _ in 0..(25 * 6) {
            clock.advance(std::time::Duration::from_secs(600));
            flush(&bridge, false);
        }
        let uploads = gong.calls().iter().filter(|c| c.path.starts_with("/v2/crm/entities")).count();
        assert_eq!(uploads, 2, "the unresolved file's record went out again after 24 h");
    }

    /// Issue 10 finding 5: the status answer is about the newest version. A failure of an older
    /// version does not shadow a newer one Gong processed, and retrying it puts nothing back.
    #[test]
    fn a_stale_failure_does_not_shadow_a_newer_success() {
        doubles!(kv, clock, gong, config, bridge, &[("gong_calls_per_second", "0")]);
        let version = |modified: &str| String::from_utf8(upsert("acc-1")).unwrap().replace("2024-05-01T10:00:00Z", modified);
        assert_eq!(handle(&bridge, webhook("v1", version("2024-05-01T10:00:00Z").as_bytes())).response.status(), 202);
        flush(&bridge, true);
        gong.queue.borrow_mut().push_back(scripted(200, r#"{"requestId":"r","status":"FAILED","errors":[{"line":1,"description":"bad name"}],"totalErrorCount":1}"#));
        flush(&bridge, false);
        assert_eq!(handle(&bridge, webhook("v2", version("2024-05-02T10:00:00Z").as_bytes())).response.status(), 202);
        flush(&bridge, true);
        flush(&bridge, false);
        let status = handle(&bridge, request("GET", "/records/ACCOUNT/acc-1/status", &[("authorization", "Bearer token")], b"")).response;
        let status: serde_json::Value = serde_json::from_slice(status.body()).unwrap();
        assert_eq!(status["state"], "done", "the newer version is done: {status}");
        let retry = handle(&bridge, request("POST", "/failures/retry", &[("authorization", "Bearer token"), ("content-type", "application/json")], b"{}"));
        assert_eq!(retry.response.status(), 200, "{}", String::from_utf8_lossy(retry.response.body()));
        flush(&bridge, true);
        let uploads = gong.calls().iter().filter(|c| c.path.starts_with("/v2/crm/entities")).count();
        assert_eq!(uploads, 2, "the older, failed version was not sent after the newer one");
    }

    /// Issue 10 item 11: `POST /flush` answers non-2xx when its work failed (a scheduler must see
    /// it), with the report of what was done; a later flush sends the records.
    #[test]
    fn a_flush_gong_refuses_answers_502_with_its_report() {
        doubles!(kv, clock, gong, config, bridge, &[("gong_calls_per_second", "0")]);
        gong.queue.borrow_mut().push_back(scripted(500, r#"{"requestId":"r","errors":["boom"]}"#));
        assert_eq!(handle(&bridge, webhook("msg-1", &upsert("acc-1"))).response.status(), 202);
        let failed = handle(&bridge, request("POST", "/flush?force=true", &[("authorization", "Bearer token")], b"")).response;
        let problem: serde_json::Value = serde_json::from_slice(failed.body()).unwrap();
        assert_eq!(failed.status(), 502, "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains("boom"), "{problem}");
        assert!(problem["report"]["note"].as_str().unwrap().contains("stay buffered"), "{problem}");
        flush(&bridge, true);
        assert_eq!(uploaded_ids(&gong, 1), vec!["acc-1"]);
    }
}
