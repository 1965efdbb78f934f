//! The bridge as a plain function from request to response, given the four ports. The router
//! only dispatches; each area's handlers live in `routes/`.

use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::bridge::Bridge;
use crate::gong::request_id::{self, ClientRequestId};
use crate::ports::{Request, Response};
use crate::problem::ApiError;
use crate::routes::table::{self, Auth};
use crate::settings;

/// A request's answer, and whether the buffer check should run once it has been sent.
pub struct Handled {
    pub response: Response,
    pub follow_up: bool,
    /// Work the route asked for first (a delivery filled the inbox, an operator gave a command).
    pub first: Option<FollowUp>,
}

/// Work a route asks for after its answer, carried in the response's extensions (never sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowUp {
    CompactInbox,
    /// Apply the operator command just recorded (`outbox::commands`).
    ApplyCommands,
    /// Index the bulk file just uploaded, record by record (`outbox::sent`).
    IndexBulk,
    /// Read the records of the thin notifications just queued (`crm::fetch`).
    Fetch,
    /// Read the first pages of the sync just started (`crm::sync`).
    Sync,
    /// Complete what a CRM delivery's records refer to and the bridge never had
    /// (`crm::references`), after compacting the inbox if it asked for that.
    References {
        source: String,
        references: Vec<crate::gong::references::Reference>,
        compact_inbox: bool,
    },
}

/// Handles one request; never panics on bad input, and every error becomes problem+json.
/// No flush, compaction or poll runs here: that is [`follow_up`], after the answer is sent.
pub fn handle(bridge: &Bridge, request: Request) -> Handled {
    let path = request.uri().path().to_owned();
    let (result, check_after) = route(bridge, request);
    match result {
        // Only after a served (2xx) request: an unauthenticated caller cannot make the bridge
        // scan its store.
        Ok(mut response) => {
            let first = response.extensions_mut().remove::<FollowUp>();
            Handled {
                follow_up: check_after && response.status().is_success(),
                first,
                response,
            }
        }
        Err(error) => Handled {
            response: refuse(bridge, &path, error),
            follow_up: false,
            first: None,
        },
    }
}

/// The problem+json answer to `error`, from the router or from the edge (a body it could not
/// read). A refused webhook is counted here, by sampling: it does no engine work (see `tally`).
/// The request's log line, written by the edge once the answer is sent, carries status and detail.
pub fn refuse(bridge: &Bridge, path: &str, error: ApiError) -> Response {
    if table::body_class("POST", path) == table::BodyClass::Webhook {
        bridge
            .tally
            .webhook_refused(error.slug(), uuid::Uuid::new_v4().as_bytes()[0]);
    }
    error.into_response()
}

/// The work after an answer: whether buffered records are due (cheap unless a scan is due),
/// flushed and followed within the work budget. A problem here is logged; the answer was sent.
pub fn follow_up(bridge: &Bridge, first: Option<FollowUp>) {
    match first {
        Some(FollowUp::CompactInbox) => {
            if let Err(e) = crate::outbox::compact_inbox_now(bridge) {
                crate::log::error("inbox compaction after the answer failed")
                    .field("error", e.to_string())
                    .emit();
            }
        }
        Some(FollowUp::ApplyCommands) => {
            if let Err(e) = crate::outbox::commands::apply_now(bridge) {
                crate::log::error("applying operator commands after the answer failed")
                    .field("error", e.to_string())
                    .emit();
            }
        }
        Some(FollowUp::Fetch) => match crate::crm::fetch::drain(bridge, false) {
            Ok(drained) if drained.stopped.is_some() => crate::log::warn(format!(
                "the fetch queue stopped: {}",
                drained.stopped.unwrap_or_default()
            ))
            .emit(),
            Ok(_) => {}
            Err(e) => crate::log::error("reading queued notifications after the answer failed")
                .field("error", e.to_string())
                .emit(),
        },
        // Its pages are read below, with every running sync.
        Some(FollowUp::Sync) => {}
        Some(FollowUp::References {
            source,
            references,
            compact_inbox,
        }) => {
            if compact_inbox {
                if let Err(e) = crate::outbox::compact_inbox_now(bridge) {
                    crate::log::error("inbox compaction after the answer failed")
                        .field("error", e.to_string())
                        .emit();
                }
            }
            match crate::crm::references::resolve(bridge, &source, &references) {
                Ok(resolved) if !resolved.missing.is_empty() => crate::log::warn(format!(
                    "{source}: referenced objects still missing in Gong: {}",
                    resolved.missing.join("; ")
                ))
                .emit(),
                Ok(_) => {}
                Err(e) => crate::log::error("completing referenced objects failed")
                    .field("error", e.to_string())
                    .emit(),
            }
        }
        Some(FollowUp::IndexBulk) => {
            if let Err(e) = crate::outbox::sent::fold_now(bridge) {
                crate::log::error("indexing the bulk file after the answer failed")
                    .field("error", e.to_string())
                    .emit();
            }
        }
        None => {}
    }
    match crate::crm::sync::advance_running(bridge, false) {
        Ok(step) if step.stopped.is_some() => crate::log::warn(format!(
            "a sync stopped: {}",
            step.stopped.unwrap_or_default()
        ))
        .emit(),
        Ok(_) => {}
        Err(e) => crate::log::error("reading sync pages after the answer failed")
            .field("error", e.to_string())
            .emit(),
    }
    if let Err(e) = crate::outbox::check(bridge) {
        crate::log::error("the buffer check after the answer failed")
            .field("error", e.to_string())
            .emit();
    }
}

/// Finds the request's row, checks who may call it, and runs its handler; also says whether
/// the engine's check should run after a 2xx answer.
fn route(bridge: &Bridge, mut request: Request) -> (Result<Response, ApiError>, bool) {
    let path = request.uri().path().to_owned();
    let segments = table::segments(&path);
    let method = request.method().clone();
    let rows = table::rows_for(&segments);
    // Unknown paths are refused by shape alone, before authentication: a scanner learns nothing
    // more than "unauthorized" for real routes.
    let Some(first) = rows.first() else {
        return (
            Err(ApiError::NotFound {
                method: method.to_string(),
                path,
            }),
            false,
        );
    };
    let row = rows.iter().find(|r| r.method == method.as_str());
    let auth = row.map_or(first.auth, |r| r.auth);
    if auth != Auth::Open {
        // A malformed number (say `kv_max_keys=1,024`) would otherwise be read as its default.
        let malformed = settings::malformed(bridge.config);
        if !malformed.is_empty() {
            return (Err(ApiError::MalformedVariables(malformed)), false);
        }
    }
    if auth == Auth::Bearer {
        if let Err(e) = authorize(bridge, &request) {
            return (Err(e), false);
        }
    }
    let Some(row) = row else {
        let allowed: Vec<&str> = rows.iter().map(|r| r.method).collect();
        return (Err(not_allowed(&method, &allowed.join(", "))), false);
    };
    let params = table::params(row, &segments);
    let changes_state = !matches!(method, http::Method::GET | http::Method::HEAD);
    let result = if auth == Auth::Bearer
        && changes_state
        && request.headers().contains_key("idempotency-key")
    {
        with_idempotency(bridge, &mut request, |request| {
            (row.handler)(bridge, request, &params)
        })
    } else {
        (row.handler)(bridge, &mut request, &params)
    };
    (result, row.check_after)
}

/// Runs a state-changing management request under its `Idempotency-Key`, scoped to the
/// method and path: a replay answers the stored response, a reuse with another body or query is 422.
fn with_idempotency(
    bridge: &Bridge,
    request: &mut Request,
    run: impl FnOnce(&mut Request) -> Result<Response, ApiError>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(
        request
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    )?;
    let idem = bridge.idempotency();
    let scope = format!("{} {}", request.method(), request.uri().path());
    let claim = match idem.begin_checked(
        &scope,
        &key,
        &crate::idempotency::request_fingerprint(
            request.uri().query().unwrap_or(""),
            request.body(),
        ),
    )? {
        crate::idempotency::Begin::Replay(response) => return Ok(response),
        crate::idempotency::Begin::Proceed(claim) => claim,
    };
    let response = run(request).unwrap_or_else(ApiError::into_response);
    if let Err(e) = idem.complete(claim, &response) {
        crate::log::error("could not store the idempotency record")
            .field("route", scope.as_str())
            .field("error", e.to_string())
            .emit();
    }
    Ok(response)
}

fn not_allowed(method: &http::Method, allowed: &str) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        allowed: allowed.to_owned(),
    }
}

/// `Authorization: Bearer <api_token>`, compared in constant time (over SHA-256 digests, so
/// the token's length does not leak either).
fn authorize(bridge: &Bridge, request: &Request) -> Result<(), ApiError> {
    let expected = settings::api_token(bridge.config)?;
    let given = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthorized("send Authorization: Bearer <api_token>".into()))?;
    use sha2::Digest;
    let a = sha2::Sha256::digest(given.as_bytes());
    let b = sha2::Sha256::digest(expected.as_bytes());
    if bool::from(a.as_slice().ct_eq(b.as_slice())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "the bearer token is not valid".into(),
        ))
    }
}

/// Query parameters, decoded.
pub fn query_pairs(request: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// A boolean query flag: absent → false; `true`/`1` → true; `false`/`0` → false; else 400.
pub fn query_flag(request: &Request, name: &str) -> Result<bool, ApiError> {
    match query_pairs(request)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
    {
        None => Ok(false),
        Some(v) => match v.as_str() {
            "" | "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            other => Err(ApiError::bad_request(format!(
                "query parameter {name}={other:?} must be true or false"
            ))),
        },
    }
}

/// Parses a JSON object body into `T`, answering 400 with serde's precise message. Only an
/// object: serde would also read a struct from an array (`[null, null]`), by position.
pub fn json_body<T: DeserializeOwned>(request: &Request) -> Result<T, ApiError> {
    if request.body().iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    serde_json::from_slice(request.body())
        .map_err(|e| ApiError::bad_request(format!("the body is not the expected JSON: {e}")))
}

/// A clientRequestId from the `Idempotency-Key` header, when it is one Gong accepts, else a
/// new one.
pub fn client_request_id(request: &Request) -> Result<String, ApiError> {
    match request.headers().get("idempotency-key") {
        None => Ok(ClientRequestId::random().into_string()),
        Some(value) => idempotency_key(value.to_str().unwrap_or("")),
    }
}

/// An `Idempotency-Key` is a clientRequestId (400 otherwise).
fn idempotency_key(raw: &str) -> Result<String, ApiError> {
    ClientRequestId::parse(raw.trim())
        .map(ClientRequestId::into_string)
        .ok_or_else(|| {
            ApiError::bad_request(format!("Idempotency-Key must be {}", request_id::RULE))
        })
}

#[cfg(test)]
#[path = "app_tests.rs"]
mod tests;
