//! Every error a route can return, as one typed enum, turned into an RFC 9457
//! `application/problem+json` response in exactly one place (`ApiError::into_response`).

use serde_json::{json, Map, Value};

use crate::fault::Fault;
use crate::gong::client::{GongError, Operation};
use crate::ports::{KvError, OutboundError, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("{0}")]
    NotFoundResource(String),
    #[error("{method} is not allowed here; allowed: {allowed}")]
    MethodNotAllowed { method: String, allowed: String },
    #[error("{detail}")]
    BadRequest { detail: String, errors: Vec<Value> },
    #[error("{detail}")]
    Unprocessable {
        title: &'static str,
        detail: String,
        errors: Vec<Value>,
        extra: Map<String, Value>,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{detail}")]
    InProgress { detail: String, retry_after: u64 },
    /// `size` is what was seen before refusing: the `content-length`, or the bytes read so far.
    #[error("the body has {size} bytes or more; at most {limit} are accepted{}", .variable.map(|v| format!(" (variable {v})")).unwrap_or_default())]
    PayloadTooLarge {
        size: usize,
        limit: usize,
        variable: Option<&'static str>,
    },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the bridge is not configured: missing variable(s) {}", .0.join(", "))]
    NotConfigured(Vec<String>),
    #[error("{0}")]
    BadConfig(String),
    /// Numeric variables that do not parse: the bridge refuses to guess what was meant.
    #[error("malformed variable(s): {}; fix them in the deployment's variables", .0.join(", "))]
    MalformedVariables(Vec<String>),
    /// `POST /flush` ran, but part of its work failed; the report says what was done.
    #[error("{detail}; records stay buffered and go with a later flush")]
    FlushFailed { detail: String, report: Value },
    /// The request's work budget (`work_budget_ms`) is spent: no further Gong call starts.
    #[error("the work budget of {budget_ms} ms (variable work_budget_ms) is spent; the rest waits for the next request or POST /flush")]
    OutOfTime { budget_ms: u64 },
    #[error("{0}")]
    Kv(#[from] KvError),
    /// A CRM's API (not Gong) failed or refused: what it said.
    #[error("{0}")]
    CrmFailed(String),
    #[error("{}: {error}", .op.describe())]
    Gong { op: Operation, error: GongError },
    #[error("{}: {error}", .op.describe())]
    GongUnreachable { op: Operation, error: OutboundError },
    #[error("{0}")]
    Internal(String),
    /// The shared Gong/platform budget does not allow a call now.
    #[error("{detail}")]
    Throttled { detail: String, retry_after: u64 },
    /// The store is near its key cap (`kv_max_keys`): nothing was accepted, retry later.
    #[error("{detail}")]
    StoreFull { detail: String, retry_after: u64 },
    /// A Gong failure after the bridge stored the data: the answer names the request under
    /// which it is kept and how to resend it.
    #[error("{inner}")]
    Kept {
        client_request_id: String,
        inner: Box<ApiError>,
    },
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn unprocessable(
        title: &'static str,
        detail: impl Into<String>,
        errors: Vec<Value>,
    ) -> ApiError {
        ApiError::Unprocessable {
            title,
            detail: detail.into(),
            errors,
            extra: Map::new(),
        }
    }

    /// Status, stable slug (the problem `type`), and title.
    fn classify(&self) -> (u16, &'static str, &'static str) {
        match self {
            ApiError::Unauthorized(_) => (401, "unauthorized", "Unauthorized"),
            ApiError::NotFound { .. } => (404, "no-such-route", "No such route"),
            ApiError::NotFoundResource(_) => (404, "not-found", "Not found"),
            ApiError::MethodNotAllowed { .. } => (405, "method-not-allowed", "Method not allowed"),
            ApiError::BadRequest { .. } => (400, "bad-request", "Bad request"),
            ApiError::Unprocessable { title, .. } => (422, "validation", title),
            ApiError::Conflict(_) => (409, "conflict", "Conflict"),
            ApiError::InProgress { .. } => (409, "in-progress", "Request still in progress"),
            ApiError::PayloadTooLarge { .. } => (413, "payload-too-large", "Payload too large"),
            ApiError::UnsupportedMediaType(_) => {
                (415, "unsupported-media-type", "Unsupported media type")
            }
            ApiError::NotConfigured(_) => (503, "not-configured", "Bridge not configured"),
            ApiError::BadConfig(_) => (503, "bad-configuration", "Bridge misconfigured"),
            ApiError::MalformedVariables(_) => (500, "malformed-variables", "Malformed variables"),
            ApiError::OutOfTime { .. } => (503, "work-budget-spent", "Work budget spent"),
            ApiError::FlushFailed { .. } => (502, "flush-failed", "The flush failed in part"),
            ApiError::Kv(_) => (503, "kv-unavailable", "Key-value store unavailable"),
            ApiError::CrmFailed(_) => (502, "crm-failed", "The CRM's API failed"),
            ApiError::Gong { error, .. } => match error {
                // Our validation passed, so a 400 from Gong is about the content: 422 with its words.
                GongError::Rejected { .. } => (422, "gong-rejected", "Gong rejected the request"),
                GongError::Unauthorized { .. } => {
                    (502, "gong-auth", "Gong refused the bridge's credentials")
                }
                GongError::NotFound { .. } => (502, "gong-not-found", "Gong answered 404"),
                GongError::Conflict { .. } => (409, "gong-conflict", "Gong answered 409 Conflict"),
                GongError::RateLimited { .. } => {
                    (503, "gong-rate-limited", "Gong's rate limit was hit")
                }
                GongError::ServerError { .. } => (502, "gong-failed", "Gong failed"),
                GongError::Unexpected { .. } => {
                    (502, "gong-unexpected", "Gong answered unexpectedly")
                }
                GongError::BadBody { .. } => {
                    (502, "gong-bad-body", "Gong's answer could not be read")
                }
            },
            ApiError::GongUnreachable { error, .. } => match error {
                OutboundError::Timeout(_) => (504, "gong-timeout", "Gong did not answer in time"),
                _ => (502, "gong-unreachable", "Gong could not be reached"),
            },
            ApiError::Internal(_) => (500, "internal", "Internal error"),
            ApiError::Throttled { .. } => (503, "throttled", "Gong call budget exhausted for now"),
            ApiError::StoreFull { .. } => (
                503,
                "store-full",
                "The key-value store is near its key limit",
            ),
            ApiError::Kept { inner, .. } => inner.classify(),
        }
    }

    /// The stable slug of the problem `type` (e.g. `unauthorized`).
    pub fn slug(&self) -> &'static str {
        self.classify().1
    }

    pub fn status(&self) -> u16 {
        self.classify().0
    }

    pub fn into_response(self) -> Response {
        if let ApiError::Kept {
            client_request_id,
            inner,
        } = self
        {
            return kept_response(*inner, &client_request_id);
        }
        let (status, slug, title) = self.classify();
        let mut body = Map::new();
        body.insert(
            "type".into(),
            json!(format!("urn:gong-crm-bridge:problem:{slug}")),
        );
        body.insert("title".into(), json!(title));
        body.insert("status".into(), json!(status));
        body.insert("detail".into(), json!(self.to_string()));
        let mut retry_after = None;
        let mut www_authenticate = false;
        let mut allow = None;
        match self {
            ApiError::BadRequest { errors, .. } if !errors.is_empty() => {
                body.insert("errors".into(), Value::Array(errors));
            }
            ApiError::Unprocessable { errors, extra, .. } => {
                if !errors.is_empty() {
                    body.insert("errors".into(), Value::Array(errors));
                }
                body.extend(extra);
            }
            ApiError::NotConfigured(missing) => {
                body.insert("missing".into(), json!(missing));
            }
            ApiError::MalformedVariables(malformed) => {
                body.insert("malformed".into(), json!(malformed));
            }
            ApiError::FlushFailed { report, .. } => {
                body.insert("report".into(), report);
            }
            ApiError::InProgress {
                retry_after: secs, ..
            }
            | ApiError::Throttled {
                retry_after: secs, ..
            }
            | ApiError::StoreFull {
                retry_after: secs, ..
            } => retry_after = Some(secs),
            ApiError::Unauthorized(_) => www_authenticate = true,
            ApiError::MethodNotAllowed { allowed, .. } => allow = Some(allowed.clone()),
            ApiError::Gong { op, error } => {
                body.insert("gongOperation".into(), json!(op.describe()));
                let said = match &error {
                    GongError::Rejected { status, error }
                    | GongError::Unauthorized { status, error }
                    | GongError::ServerError { status, error }
                    | GongError::Unexpected { status, error } => Some((*status, error)),
                    GongError::Conflict { error } => Some((409, error)),
                    GongError::NotFound { error } => Some((404, error)),
                    GongError::RateLimited {
                        retry_after: secs,
                        error,
                    } => {
                        retry_after = *secs;
                        Some((429, error))
                    }
                    GongError::BadBody { status, .. } => {
                        body.insert("gongStatus".into(), json!(status));
                        None
                    }
                };
                if let Some((gong_status, said)) = said {
                    body.insert("gongStatus".into(), json!(gong_status));
                    if let Some(id) = &said.request_id {
                        body.insert("gongRequestId".into(), json!(id));
                    }
                    body.insert("gongErrors".into(), json!(said.errors));
                }
            }
            ApiError::GongUnreachable { op, .. } => {
                body.insert("gongOperation".into(), json!(op.describe()));
            }
            _ => {}
        }
        let mut builder = http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/problem+json");
        if let Some(secs) = retry_after {
            builder = builder.header(http::header::RETRY_AFTER, secs.to_string());
        }
        if www_authenticate {
            builder = builder.header(http::header::WWW_AUTHENTICATE, "Bearer");
        }
        if let Some(allowed) = allow {
            builder = builder.header(http::header::ALLOW, allowed);
        }
        let bytes = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
        builder
            .body(bytes)
            .unwrap_or_else(|_| http::Response::new(Vec::new()))
    }
}

/// The one place a domain fault becomes an HTTP problem.
impl From<Fault> for ApiError {
    fn from(fault: Fault) -> ApiError {
        match fault {
            Fault::Kv(e) => ApiError::Kv(e),
            Fault::Corrupt(detail) => ApiError::Internal(detail),
            Fault::Gong { op, error } => ApiError::Gong { op, error },
            Fault::GongUnreachable { op, error } => ApiError::GongUnreachable { op, error },
            Fault::Throttled {
                detail,
                retry_after,
            } => ApiError::Throttled {
                detail,
                retry_after,
            },
            Fault::OutOfTime { budget_ms } => ApiError::OutOfTime { budget_ms },
            Fault::Kept {
                client_request_id,
                inner,
            } => ApiError::Kept {
                client_request_id,
                inner: Box::new(ApiError::from(*inner)),
            },
            Fault::NotConfigured(missing) => ApiError::NotConfigured(missing),
            Fault::BadConfig(detail) => ApiError::BadConfig(detail),
            e @ Fault::NoIntegration => ApiError::Conflict(e.to_string()),
            e @ Fault::NoSuchRequest(_) => ApiError::NotFoundResource(e.to_string()),
            e @ Fault::RequestIdReused { .. } => {
                let first_use = match &e {
                    Fault::RequestIdReused {
                        client_request_id, ..
                    } => format!("/requests/{client_request_id}"),
                    _ => String::new(),
                };
                ApiError::unprocessable(
                    "Idempotency-Key reused",
                    e.to_string(),
                    vec![
                        json!({"field": "Idempotency-Key", "rule": "idempotencyKey.oneRequest", "firstUse": first_use}),
                    ],
                )
            }
            Fault::WrongState(detail) | Fault::Overwritten(detail) => ApiError::Conflict(detail),
            Fault::StoreFull {
                detail,
                retry_after,
            } => ApiError::StoreFull {
                detail,
                retry_after,
            },
        }
    }
}

fn kept_response(inner: ApiError, client_request_id: &str) -> Response {
    let mut response = inner.into_response();
    if let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(response.body()) {
        body.insert("clientRequestId".into(), json!(client_request_id));
        body.insert("kept".into(), json!(true));
        body.insert(
            "retry".into(),
            json!(format!("the validated data is kept by the bridge; POST /requests/{client_request_id}/retry resends it")),
        );
        *response.body_mut() = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
    }
    response
}

/// A JSON success response.
pub fn json_response(status: u16, value: &Value) -> Response {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(bytes)
        .unwrap_or_else(|_| http::Response::new(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gong::models::ErrorResponse;

    fn body(r: &Response) -> Value {
        serde_json::from_slice(r.body()).unwrap()
    }

    #[test]
    fn gong_429_becomes_503_with_retry_after_and_gongs_words() {
        let r = ApiError::Gong {
            op: Operation::UploadEntities,
            error: GongError::RateLimited {
                retry_after: Some(12),
                error: ErrorResponse::parse(br#"{"requestId":"q","errors":["too many"]}"#),
            },
        }
        .into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "12");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let b = body(&r);
        assert_eq!(b["gongErrors"], json!(["too many"]));
        assert_eq!(b["gongRequestId"], "q");
        assert_eq!(b["status"], 503);
    }

    #[test]
    fn mapping_of_gong_failures() {
        let e = |error| {
            ApiError::Gong {
                op: Operation::ListIntegrations,
                error,
            }
            .status()
        };
        let er = ErrorResponse::default();
        assert_eq!(
            e(GongError::Rejected {
                status: 400,
                error: er.clone()
            }),
            422
        );
        assert_eq!(
            e(GongError::Unauthorized {
                status: 401,
                error: er.clone()
            }),
            502
        );
        assert_eq!(
            e(GongError::ServerError {
                status: 500,
                error: er.clone()
            }),
            502
        );
        let t = ApiError::GongUnreachable {
            op: Operation::ListIntegrations,
            error: OutboundError::Timeout(std::time::Duration::from_secs(1)),
        };
        assert_eq!(t.status(), 504);
        let u = ApiError::GongUnreachable {
            op: Operation::ListIntegrations,
            error: OutboundError::Unreachable("refused".into()),
        };
        assert_eq!(u.status(), 502);
    }

    /// Issue 10 item 11: RFC 9110 requires `Allow` on a 405.
    #[test]
    fn method_not_allowed_carries_allow() {
        let r = ApiError::MethodNotAllowed {
            method: "PATCH".into(),
            allowed: "GET, PUT, DELETE".into(),
        }
        .into_response();
        assert_eq!(r.status(), 405);
        assert_eq!(
            r.headers().get("allow").map(|v| v.as_bytes()),
            Some(&b"GET, PUT, DELETE"[..])
        );
    }

    #[test]
    fn validation_errors_are_listed() {
        let r = ApiError::unprocessable(
            "Invalid records",
            "1 record failed",
            vec![json!({"objectId":"a","field":"x","rule":"r"})],
        )
        .into_response();
        assert_eq!(r.status(), 422);
        assert_eq!(body(&r)["errors"][0]["rule"], "r");
    }
}
