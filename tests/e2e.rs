//! End-to-end tests: the real built `gong_crm_bridge.wasm` in the in-process Spin-like host
//! (tests/support), with outbound HTTP going to a scripted mock Gong on 127.0.0.1.

mod support;

#[path = "e2e/compact.rs"]
mod compact;
#[path = "e2e/management.rs"]
mod management;
#[path = "e2e/nothing_lost.rs"]
mod nothing_lost;
#[path = "e2e/validation.rs"]
mod validation;
#[path = "e2e/webhooks.rs"]
mod webhooks;

use serde_json::Value;
use support::{TestApp, TestResponse, API_TOKEN};

pub const INTEGRATION_ID: i64 = 5517027188234205706;

pub fn auth() -> String {
    format!("Bearer {API_TOKEN}")
}

/// An app whose bridge already has an integration (the `integration_id` variable).
pub async fn registered_app() -> TestApp {
    TestApp::builder()
        .var("integration_id", &INTEGRATION_ID.to_string())
        .var("idempotency_settle_ms", "5")
        .build()
        .await
}

/// A request with the management API's bearer token.
pub async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Vec<u8>>,
) -> TestResponse {
    let token = auth();
    let mut all = vec![("authorization", token.as_str())];
    all.extend_from_slice(headers);
    app.request(method, path, &all, body).await
}

pub async fn call_json(app: &TestApp, method: &str, path: &str, body: &Value) -> TestResponse {
    call(
        app,
        method,
        path,
        &[("content-type", "application/json")],
        serde_json::to_vec(body).unwrap(),
    )
    .await
}

/// Asserts the status and that an error body is problem+json; returns the JSON body.
pub fn expect(response: &TestResponse, status: u16) -> Value {
    assert_eq!(
        response.status,
        status,
        "unexpected status; body: {}",
        response.text()
    );
    if status >= 400 {
        assert_eq!(
            response.header("content-type"),
            Some("application/problem+json"),
            "{}",
            response.text()
        );
        let body = response.json();
        assert_eq!(body["status"], status);
        assert!(body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:gong-crm-bridge:problem:")));
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        return body;
    }
    if response.body.is_empty() {
        Value::Null
    } else {
        response.json()
    }
}
