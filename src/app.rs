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
pub struct Bridge<'a> {
    pub kv: &'a dyn Kv,
    pub config: &'a dyn Config,
    pub outbound: &'a dyn Outbound,
    pub clock: &'a dyn Clock,
}

impl<'a> Bridge<'a> {
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
        self.spend_quota()?;
        let response = self
            .outbound
            .send(request, settings::gong_timeout(self.config))
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

/// Handles one request; never panics on bad input, and every error becomes problem+json.
pub fn handle(bridge: &Bridge, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let checks_buffer = !matches!(path.as_str(), "/healthz" | "/flush");
    match route(bridge, request) {
        Ok(response) => {
            // Every served request also checks whether buffered records are due (cheap unless
            // a scan is due); a problem there never changes this request's answer.
            // Only after a served (2xx) request: an unauthenticated caller cannot make the bridge
            // scan its store.
            if checks_buffer && response.status().is_success() {
                if let Err(e) = routes::flush::check(bridge) {
                    eprintln!("gong-crm-bridge: buffer check: {e}");
                }
            }
            response
        }
        Err(error) => {
            // Logged without secrets: errors never carry credentials (see gong::client::Auth).
            if error.status() >= 500 {
                eprintln!("gong-crm-bridge: {method} {path} -> {}: {error}", error.status());
            }
            error.into_response()
        }
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
        (&Method::POST, ["flush"]) => routes::failures::flush_now(bridge, request),
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
