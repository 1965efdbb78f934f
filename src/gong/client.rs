//! Gong's eight Generic CRM operations as pure functions: build the HTTP request, and classify
//! the HTTP response. Sending is the caller's business (through `ports::Outbound`), so all of
//! this is tested natively.
//!
//! Traps handled here (API-NOTES §1): the upload's query parameters are undeclared in the spec
//! but required; get-entities takes its ids as a JSON body on a GET (and, since no source says
//! which form the server reads, also as the `objectsCrmIds` query); `integrationId` is an i64.

use base64::Engine as _;
use serde::de::DeserializeOwned;

use super::models::{ErrorResponse, ObjectType, RegistrationRequest, SchemaField};
use crate::ports::{Request, Response};

/// Gong returns at most this many objects per get-entities call and silently drops the rest.
pub const MAX_GET_IDS: usize = 100;

#[derive(Clone)]
pub enum Auth {
    /// Access key and secret, sent as HTTP Basic.
    Basic { access_key: String, secret: String },
    /// An OAuth access token.
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    // Never print credentials, even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Basic { .. } => f.write_str("Auth::Basic(<redacted>)"),
            Auth::Bearer(_) => f.write_str("Auth::Bearer(<redacted>)"),
        }
    }
}

impl Auth {
    fn header_value(&self) -> String {
        match self {
            Auth::Basic { access_key, secret } => {
                let raw = format!("{access_key}:{secret}");
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
            }
            Auth::Bearer(token) => format!("Bearer {token}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GongClient {
    /// `scheme://authority` plus the tenant's path prefix without a trailing `/` (a proxy may
    /// put Gong under a path); every operation's path is appended to it.
    base_url: String,
    auth: Auth,
}

/// `base` for an error message, with anything before an `@` in its authority replaced: a
/// refused base URL may hold a password, and the message reaches `/healthz` and the logs.
fn without_userinfo(base: &str) -> String {
    let (scheme, rest) = base.split_once("://").unwrap_or(("", base));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!(
            "{scheme}{}<redacted>{}",
            if scheme.is_empty() { "" } else { "://" },
            &rest[at..]
        ),
        None => base.to_owned(),
    }
}

/// The eight operations, for messages and for per-operation meaning of status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    RegisterIntegration,
    ListIntegrations,
    DeleteIntegration,
    UploadSchema,
    ListSchema,
    UploadEntities,
    GetEntities,
    RequestStatus,
}

impl Operation {
    pub fn describe(self) -> &'static str {
        match self {
            Operation::RegisterIntegration => "register integration (PUT /v2/crm/integrations)",
            Operation::ListIntegrations => "list integrations (GET /v2/crm/integrations)",
            Operation::DeleteIntegration => "delete integration (DELETE /v2/crm/integrations)",
            Operation::UploadSchema => "upload schema (POST /v2/crm/entity-schema)",
            Operation::ListSchema => "list schema (GET /v2/crm/entity-schema)",
            Operation::UploadEntities => "upload entities (POST /v2/crm/entities)",
            Operation::GetEntities => "get entities (GET /v2/crm/entities)",
            Operation::RequestStatus => "request status (GET /v2/crm/request-status)",
        }
    }
}

/// What Gong answered, when it was not the success the operation expects.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GongError {
    #[error("Gong rejected the request ({status}): {}", .error.summary())]
    Rejected { status: u16, error: ErrorResponse },
    #[error("Gong refused the bridge's credentials ({status}): {}", .error.summary())]
    Unauthorized { status: u16, error: ErrorResponse },
    #[error("Gong answered 409 Conflict: {}", .error.summary())]
    Conflict { error: ErrorResponse },
    #[error("Gong answered 404 Not Found (no integration, or the Generic CRM API is not in this plan): {}", .error.summary())]
    NotFound { error: ErrorResponse },
    #[error("Gong's rate limit was hit (429){}: {}", .retry_after.map(|s| format!(", retry after {s} s")).unwrap_or_default(), .error.summary())]
    RateLimited {
        retry_after: Option<u64>,
        error: ErrorResponse,
    },
    #[error("Gong failed ({status}): {}", .error.summary())]
    ServerError { status: u16, error: ErrorResponse },
    #[error("Gong answered {status}, which this operation does not expect: {}", .error.summary())]
    Unexpected { status: u16, error: ErrorResponse },
    #[error("Gong's {status} answer could not be read: {detail}")]
    BadBody { status: u16, detail: String },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    // Credentials belong in the secret variables, never in the URL (which is not secret).
    #[error("gong_base_url {0:?} is not an absolute http(s) URL (scheme://host[:port][/prefix], without user:password@)")]
    BadBaseUrl(String),
    #[error("{0}")]
    Serialize(String),
}

impl GongClient {
    pub fn new(base_url: &str, auth: Auth) -> Result<GongClient, BuildError> {
        let bad = || BuildError::BadBaseUrl(without_userinfo(base_url.trim()));
        let parsed: http::Uri = base_url.trim().parse().map_err(|_| bad())?;
        let scheme = parsed.scheme_str().map(str::to_ascii_lowercase);
        let (Some(scheme @ ("http" | "https")), Some(authority)) =
            (scheme.as_deref(), parsed.authority())
        else {
            return Err(bad());
        };
        if authority.host().is_empty() || authority.as_str().contains('@') {
            return Err(bad());
        }
        let prefix = parsed.path().trim_end_matches('/');
        Ok(GongClient {
            base_url: format!("{scheme}://{authority}{prefix}"),
            auth,
        })
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> String {
        let mut url = format!("{}{path}", self.base_url);
        if !query.is_empty() {
            url.push('?');
            url.push_str(
                &form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(query.iter().copied())
                    .finish(),
            );
        }
        url
    }

    fn request(
        &self,
        method: http::Method,
        url: String,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Request {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(url.as_str())
            .header(http::header::AUTHORIZATION, self.auth.header_value())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("gong-crm-bridge/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(ct) = content_type {
            builder = builder.header(http::header::CONTENT_TYPE, ct);
        }
        if !body.is_empty() || content_type.is_some() {
            builder = builder.header(http::header::CONTENT_LENGTH, body.len());
        }
        // Every part above is a valid header value/URI by construction (the base was parsed as a
        // URI, paths are constants and the query is form-encoded; base64 and our constants are
        // ASCII), so the builder cannot fail; an empty
        // request with the same URL is still returned rather than panicking.
        match builder.body(body) {
            Ok(request) => request,
            Err(_) => {
                let mut request = http::Request::new(Vec::new());
                if let Ok(uri) = url.as_str().parse() {
                    *request.uri_mut() = uri;
                }
                request
            }
        }
    }

    /// 1. `PUT /v2/crm/integrations`
    pub fn register_integration(
        &self,
        registration: &RegistrationRequest,
    ) -> Result<Request, BuildError> {
        let body =
            serde_json::to_vec(registration).map_err(|e| BuildError::Serialize(e.to_string()))?;
        Ok(self.request(
            http::Method::PUT,
            self.url("/v2/crm/integrations", &[]),
            Some("application/json"),
            body,
        ))
    }

    /// 2. `GET /v2/crm/integrations`
    pub fn list_integrations(&self) -> Request {
        self.request(
            http::Method::GET,
            self.url("/v2/crm/integrations", &[]),
            None,
            Vec::new(),
        )
    }

    /// 3. `DELETE /v2/crm/integrations?integrationId&clientRequestId` (asynchronous)
    pub fn delete_integration(&self, integration_id: i64, client_request_id: &str) -> Request {
        let id = integration_id.to_string();
        let url = self.url(
            "/v2/crm/integrations",
            &[
                ("integrationId", id.as_str()),
                ("clientRequestId", client_request_id),
            ],
        );
        self.request(http::Method::DELETE, url, None, Vec::new())
    }

    /// 4. `POST /v2/crm/entity-schema?integrationId&objectType`, body a bare JSON array.
    pub fn upload_schema(
        &self,
        integration_id: i64,
        object_type: ObjectType,
        fields: &[SchemaField],
    ) -> Result<Request, BuildError> {
        let id = integration_id.to_string();
        let body = serde_json::to_vec(fields).map_err(|e| BuildError::Serialize(e.to_string()))?;
        let url = self.url(
            "/v2/crm/entity-schema",
            &[
                ("integrationId", id.as_str()),
                ("objectType", object_type.as_str()),
            ],
        );
        Ok(self.request(http::Method::POST, url, Some("application/json"), body))
    }

    /// 5. `GET /v2/crm/entity-schema?integrationId[&objectType]` (omitting the type lists all).
    pub fn list_schema(&self, integration_id: i64, object_type: Option<ObjectType>) -> Request {
        let id = integration_id.to_string();
        let mut query = vec![("integrationId", id.as_str())];
        if let Some(t) = object_type {
            query.push(("objectType", t.as_str()));
        }
        self.request(
            http::Method::GET,
            self.url("/v2/crm/entity-schema", &query),
            None,
            Vec::new(),
        )
    }

    /// 6. `POST /v2/crm/entities?integrationId&objectType&clientRequestId`, multipart/form-data
    ///    with one part `dataFile` holding the LDJSON file.
    pub fn upload_entities(
        &self,
        integration_id: i64,
        object_type: ObjectType,
        client_request_id: &str,
        ldjson: &[u8],
    ) -> Request {
        let id = integration_id.to_string();
        let url = self.url(
            "/v2/crm/entities",
            &[
                ("integrationId", id.as_str()),
                ("objectType", object_type.as_str()),
                ("clientRequestId", client_request_id),
            ],
        );
        let boundary = multipart_boundary();
        let body = multipart_body(
            &boundary,
            "dataFile",
            &format!("{}.ldjson", object_type.as_str()),
            "application/x-ndjson",
            ldjson,
        );
        self.request(
            http::Method::POST,
            url,
            Some(&format!("multipart/form-data; boundary={boundary}")),
            body,
        )
    }

    /// 7. `GET /v2/crm/entities?integrationId&objectType&objectsCrmIds=a,b` with the ids also as
    ///    a JSON array body: the prose says body, the spec says query (API-NOTES §1.7).
    pub fn get_entities(
        &self,
        integration_id: i64,
        object_type: ObjectType,
        ids: &[String],
    ) -> Result<Request, BuildError> {
        let id = integration_id.to_string();
        let csv = ids.join(",");
        let body = serde_json::to_vec(ids).map_err(|e| BuildError::Serialize(e.to_string()))?;
        let url = self.url(
            "/v2/crm/entities",
            &[
                ("integrationId", id.as_str()),
                ("objectType", object_type.as_str()),
                ("objectsCrmIds", csv.as_str()),
            ],
        );
        Ok(self.request(http::Method::GET, url, Some("application/json"), body))
    }

    /// 8. `GET /v2/crm/request-status?integrationId&clientRequestId`
    pub fn request_status(&self, integration_id: i64, client_request_id: &str) -> Request {
        let id = integration_id.to_string();
        let url = self.url(
            "/v2/crm/request-status",
            &[
                ("integrationId", id.as_str()),
                ("clientRequestId", client_request_id),
            ],
        );
        self.request(http::Method::GET, url, None, Vec::new())
    }
}

/// A random boundary (RFC 2046: at most 70 characters). LDJSON lines are JSON objects, so a
/// line starting with `--` followed by 128 random bits cannot occur in the file.
fn multipart_boundary() -> String {
    format!("gong-crm-bridge-{}", uuid::Uuid::new_v4().simple())
}

fn multipart_body(
    boundary: &str,
    name: &str,
    filename: &str,
    content_type: &str,
    content: &[u8],
) -> Vec<u8> {
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let mut body = Vec::with_capacity(head.len() + content.len() + tail.len());
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(content);
    body.extend_from_slice(tail.as_bytes());
    body
}

/// `Retry-After` in seconds (Gong sends seconds; an HTTP-date is read by
/// [`retry_after_seconds_at`], which knows the time).
pub fn retry_after_seconds(response: &Response) -> Option<u64> {
    retry_after_seconds_at(response, None)
}

/// `Retry-After` in seconds, either form (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date
/// (Attio sends `Tue, 23 May 2023 14:42:01 GMT`), counted from `now` and rounded up.
pub fn retry_after_seconds_at(
    response: &Response,
    now: Option<time::OffsetDateTime>,
) -> Option<u64> {
    let value = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .or_else(|| response.headers().get("x-retry-after"))?;
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(seconds);
    }
    let date =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc2822).ok()?;
    let left = date - now?;
    Some(left.as_seconds_f64().ceil().max(0.0) as u64)
}

/// Classifies Gong's answer: the expected success statuses parse into `T`; anything else is a
/// typed [`GongError`] carrying what Gong said.
pub fn parse_response<T: DeserializeOwned>(
    response: &Response,
    success: &[u16],
) -> Result<T, GongError> {
    let status = response.status().as_u16();
    if success.contains(&status) {
        let body: &[u8] = if response.body().iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            response.body()
        };
        return serde_json::from_slice(body).map_err(|e| GongError::BadBody {
            status,
            detail: e.to_string(),
        });
    }
    Err(classify_error(response))
}

pub fn classify_error(response: &Response) -> GongError {
    let status = response.status().as_u16();
    let error = ErrorResponse::parse(response.body());
    match status {
        400 | 422 => GongError::Rejected { status, error },
        401 | 403 => GongError::Unauthorized { status, error },
        404 => GongError::NotFound { error },
        409 => GongError::Conflict { error },
        429 => GongError::RateLimited {
            retry_after: retry_after_seconds(response),
            error,
        },
        500..=599 => GongError::ServerError { status, error },
        _ => GongError::Unexpected { status, error },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gong::models::*;

    fn client() -> GongClient {
        GongClient::new(
            "https://us-55616.api.gong.io/",
            Auth::Basic {
                access_key: "key".into(),
                secret: "sec".into(),
            },
        )
        .unwrap()
    }

    fn query(req: &Request) -> Vec<(String, String)> {
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect()
    }

    #[test]
    fn basic_and_bearer_auth_headers() {
        let req = client().list_integrations();
        // base64("key:sec")
        assert_eq!(req.headers()["authorization"], "Basic a2V5OnNlYw==");
        let bearer = GongClient::new("https://api.gong.io", Auth::Bearer("tok".into())).unwrap();
        assert_eq!(
            bearer.list_integrations().headers()["authorization"],
            "Bearer tok"
        );
        assert!(!format!("{:?}", bearer).contains("tok"));
    }

    #[test]
    fn rejects_non_http_base_urls() {
        for bad in [
            "ftp://x",
            "not a url",
            "https://",
            "/v2",
            "https://user:pass@api.gong.io",
            "",
        ] {
            assert!(
                GongClient::new(bad, Auth::Bearer("t".into())).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_refused_base_url_is_shown_without_its_password() {
        let error = GongClient::new("https://bob:s3cret@api.gong.io/x", Auth::Bearer("t".into()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("https://<redacted>@api.gong.io/x")
                && !error.contains("s3cret")
                && !error.contains("bob"),
            "{error}"
        );
        let error = GongClient::new("ftp://api.gong.io/a@b", Auth::Bearer("t".into()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("ftp://api.gong.io/a@b"), "{error}");
    }

    #[test]
    fn a_base_url_keeps_its_port_and_path_prefix() {
        let uri = |base: &str| {
            GongClient::new(base, Auth::Bearer("t".into()))
                .unwrap()
                .list_integrations()
                .uri()
                .to_string()
        };
        assert_eq!(
            uri("https://us-55616.api.gong.io"),
            "https://us-55616.api.gong.io/v2/crm/integrations"
        );
        assert_eq!(
            uri(" HTTPS://us-55616.api.gong.io/ "),
            "https://us-55616.api.gong.io/v2/crm/integrations"
        );
        assert_eq!(
            uri("http://127.0.0.1:8080/gong/"),
            "http://127.0.0.1:8080/gong/v2/crm/integrations"
        );
        // A query or fragment on the base is not Gong's: each operation sets its own query.
        assert_eq!(
            uri("https://proxy.example/gong?x=1"),
            "https://proxy.example/gong/v2/crm/integrations"
        );
        let delete = GongClient::new("https://api.gong.io/p", Auth::Bearer("t".into()))
            .unwrap()
            .delete_integration(5, "a b&c");
        assert_eq!(
            query(&delete),
            vec![
                ("integrationId".to_owned(), "5".to_owned()),
                ("clientRequestId".to_owned(), "a b&c".to_owned())
            ]
        );
        assert!(delete
            .uri()
            .to_string()
            .starts_with("https://api.gong.io/p/v2/crm/integrations?"));
    }

    #[test]
    fn register_is_a_put_with_json_body() {
        let req = client()
            .register_integration(&RegistrationRequest {
                name: "ACME".into(),
                owner_email: "o@acme.com".into(),
            })
            .unwrap();
        assert_eq!(req.method(), http::Method::PUT);
        assert_eq!(
            req.uri().to_string(),
            "https://us-55616.api.gong.io/v2/crm/integrations"
        );
        let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"name":"ACME","ownerEmail":"o@acme.com"})
        );
    }

    #[test]
    fn delete_carries_int64_id_and_client_request_id() {
        let req = client().delete_integration(5517027188234205706, "abc-1");
        assert_eq!(req.method(), http::Method::DELETE);
        assert_eq!(req.uri().path(), "/v2/crm/integrations");
        assert_eq!(
            query(&req),
            vec![
                ("integrationId".into(), "5517027188234205706".into()),
                ("clientRequestId".into(), "abc-1".into())
            ]
        );
    }

    #[test]
    fn schema_upload_is_a_bare_array() {
        let fields = vec![SchemaField {
            unique_name: Some("Tier".into()),
            label: Some("Tier".into()),
            field_type: Some("STRING".into()),
            ..Default::default()
        }];
        let req = client()
            .upload_schema(7, ObjectType::Account, &fields)
            .unwrap();
        assert_eq!(
            query(&req),
            vec![
                ("integrationId".into(), "7".into()),
                ("objectType".into(), "ACCOUNT".into())
            ]
        );
        let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!([{"uniqueName":"Tier","label":"Tier","type":"STRING"}])
        );
        let list = client().list_schema(7, None);
        assert_eq!(query(&list), vec![("integrationId".into(), "7".into())]);
    }

    #[test]
    fn upload_is_multipart_with_datafile_part_and_query() {
        let req =
            client().upload_entities(7, ObjectType::Deal, "crid_1", b"{\"objectId\":\"a\"}\n");
        assert_eq!(
            query(&req),
            vec![
                ("integrationId".into(), "7".into()),
                ("objectType".into(), "DEAL".into()),
                ("clientRequestId".into(), "crid_1".into())
            ]
        );
        let ct = req.headers()["content-type"].to_str().unwrap().to_owned();
        let boundary = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
        assert!(
            boundary.len() <= 70,
            "RFC 2046 caps boundaries at 70 characters"
        );
        let body = String::from_utf8(req.body().clone()).unwrap();
        assert!(body.starts_with(&format!("--{boundary}\r\nContent-Disposition: form-data; name=\"dataFile\"; filename=\"DEAL.ldjson\"\r\n")));
        assert!(body.contains("\r\n\r\n{\"objectId\":\"a\"}\n\r\n"));
        assert!(body.ends_with(&format!("--{boundary}--\r\n")));
        assert_eq!(
            req.headers()["content-length"],
            body.len().to_string().as_str()
        );
    }

    #[test]
    fn get_entities_sends_ids_as_body_and_query() {
        let ids = vec!["a1".to_string(), "b2".to_string()];
        let req = client().get_entities(7, ObjectType::Contact, &ids).unwrap();
        assert_eq!(req.method(), http::Method::GET);
        assert_eq!(req.body(), br#"["a1","b2"]"#);
        assert!(query(&req).contains(&("objectsCrmIds".into(), "a1,b2".into())));
    }

    #[test]
    fn request_status_query() {
        let req = client().request_status(-5, "x");
        assert_eq!(
            query(&req),
            vec![
                ("integrationId".into(), "-5".into()),
                ("clientRequestId".into(), "x".into())
            ]
        );
    }

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(body.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn classifies_each_error_status() {
        let e = |s| classify_error(&response(s, &[], r#"{"errors":["nope"]}"#));
        assert!(matches!(e(400), GongError::Rejected { status: 400, .. }));
        assert!(matches!(e(401), GongError::Unauthorized { .. }));
        assert!(matches!(e(403), GongError::Unauthorized { .. }));
        assert!(matches!(e(404), GongError::NotFound { .. }));
        assert!(matches!(e(409), GongError::Conflict { .. }));
        assert!(matches!(e(500), GongError::ServerError { status: 500, .. }));
        assert!(matches!(e(418), GongError::Unexpected { .. }));
        let limited = classify_error(&response(429, &[("retry-after", "7")], ""));
        assert!(matches!(
            limited,
            GongError::RateLimited {
                retry_after: Some(7),
                ..
            }
        ));
        assert!(limited.to_string().contains("retry after 7 s"));
    }

    #[test]
    fn parses_success_and_reports_garbage() {
        let ok: RegisterResponse =
            parse_response(&response(200, &[], r#"{"integrationId":1}"#), &[200]).unwrap();
        assert_eq!(ok.integration_id, Some(1));
        let empty: BaseResponse = parse_response(&response(201, &[], ""), &[200, 201]).unwrap();
        assert_eq!(empty.request_id, None);
        let bad = parse_response::<RegisterResponse>(&response(200, &[], "<html>"), &[200]);
        assert!(matches!(bad, Err(GongError::BadBody { status: 200, .. })));
    }
}
