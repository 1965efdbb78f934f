//! The management API (issue: foundation): every route, the exact request Gong received, the
//! answer, the KV state afterwards, and each Gong error mapping.

use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

use crate::support::{refused_url, MockResponse, TestApp, GONG_ACCESS_KEY, GONG_ACCESS_KEY_SECRET};
use crate::{call, call_json, expect, registered_app, INTEGRATION_ID};

fn basic_auth() -> String {
    let raw = format!("{GONG_ACCESS_KEY}:{GONG_ACCESS_KEY_SECRET}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[tokio::test]
async fn healthz_needs_no_auth_and_names_missing_variables_only() {
    let app = TestApp::spawn().await;
    let ok = app.get("/healthz").await;
    let body = expect(&ok, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["missingVariables"], json!([]));

    let bare = TestApp::builder()
        .without_var("api_token")
        .without_var("gong_access_key")
        .build()
        .await;
    let body = expect(&bare.get("/healthz").await, 200);
    assert_eq!(body["status"], "misconfigured");
    let missing = body["missingVariables"].to_string();
    assert!(
        missing.contains("api_token") && missing.contains("gong_access_key"),
        "{missing}"
    );
    // Values are never echoed.
    assert!(!bare.get("/healthz").await.text().contains("test-secret"));
}

#[tokio::test]
async fn management_routes_require_the_bearer_token() {
    let app = registered_app().await;
    let none = app.request("GET", "/integration", &[], Vec::new()).await;
    let body = expect(&none, 401);
    assert!(body["detail"].as_str().unwrap().contains("Bearer"));
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let wrong = app
        .request(
            "GET",
            "/integration",
            &[("authorization", "Bearer nope")],
            Vec::new(),
        )
        .await;
    expect(&wrong, 401);
    assert!(
        app.mock().received().is_empty(),
        "nothing reaches Gong unauthenticated"
    );
    // Unknown routes and wrong methods are problem+json too.
    expect(&call(&app, "GET", "/nope", &[], Vec::new()).await, 404);
    let r = call(&app, "PATCH", "/integration", &[], Vec::new()).await;
    assert!(expect(&r, 405)["detail"]
        .as_str()
        .unwrap()
        .contains("GET, PUT, DELETE"));
}

#[tokio::test]
async fn register_sends_put_and_keeps_the_int64_id() {
    let app = TestApp::spawn().await;
    let r = call_json(
        &app,
        "PUT",
        "/integration",
        &json!({"name": "ACME CRM", "ownerEmail": "ops@acme.com"}),
    )
    .await;
    let body = expect(&r, 200);
    assert_eq!(body["integrationId"], INTEGRATION_ID.to_string());
    assert_eq!(body["adopted"], false);

    let sent = app.mock().received_on("PUT", "/v2/crm/integrations");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header("authorization"), Some(basic_auth().as_str()));
    assert_eq!(sent[0].header("content-type"), Some("application/json"));
    assert_eq!(
        sent[0].json(),
        json!({"name": "ACME CRM", "ownerEmail": "ops@acme.com"})
    );

    let kept = app
        .kv()
        .get_json("integration")
        .expect("integration kept in KV");
    assert_eq!(kept["integrationId"], json!(INTEGRATION_ID));
    assert_eq!(kept["source"], "registered");
}

#[tokio::test]
async fn register_validates_before_gong() {
    let app = TestApp::spawn().await;
    let r = call_json(
        &app,
        "PUT",
        "/integration",
        &json!({"name": "", "ownerEmail": "nope"}),
    )
    .await;
    let body = expect(&r, 422);
    let fields: Vec<_> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fields, vec!["name", "ownerEmail"]);
    expect(&call(&app, "PUT", "/integration", &[], "{oops").await, 400);
    assert!(app.mock().received().is_empty());
}

#[tokio::test]
async fn register_conflict_adopts_the_existing_integration() {
    let app = TestApp::spawn().await;
    app.mock().on(
        "PUT",
        "/v2/crm/integrations",
        MockResponse::json(
            409,
            json!({"requestId": "r9", "errors": ["An active integration already exists"]}),
        ),
    );
    app.mock().on(
        "GET",
        "/v2/crm/integrations",
        MockResponse::json(200, json!({"requestId": "r10", "integrations": [{"integrationId": 1234567890123456789i64, "name": "Old", "ownerEmail": "a@b.co"}]})),
    );
    let r = call_json(
        &app,
        "PUT",
        "/integration",
        &json!({"name": "New", "ownerEmail": "ops@acme.com"}),
    )
    .await;
    let body = expect(&r, 200);
    assert_eq!(body["adopted"], true);
    assert_eq!(body["integrationId"], "1234567890123456789");
    assert!(body["message"].as_str().unwrap().contains("adopted"));
    assert_eq!(
        app.kv().get_json("integration").unwrap()["source"],
        "adopted"
    );
    assert_eq!(app.mock().received().len(), 2);
}

#[tokio::test]
async fn list_integration_reports_gongs_list_and_the_id_in_use() {
    let app = registered_app().await;
    app.mock().on(
        "GET",
        "/v2/crm/integrations",
        MockResponse::json(200, json!({"requestId": "q", "integrations": [{"integrationId": INTEGRATION_ID, "name": "ACME", "ownerEmail": "o@acme.com"}]})),
    );
    let body = expect(
        &call(&app, "GET", "/integration", &[], Vec::new()).await,
        200,
    );
    assert_eq!(
        body["integrations"][0]["integrationId"],
        INTEGRATION_ID.to_string()
    );
    assert_eq!(body["bridgeIntegrationId"], INTEGRATION_ID.to_string());
    assert_eq!(body["bridgeIntegrationSource"], "variable");
    let sent = &app.mock().received()[0];
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("GET", "/v2/crm/integrations")
    );
}

#[tokio::test]
async fn delete_is_async_tracked_and_uses_the_idempotency_key() {
    let app = registered_app().await;
    let r = call(
        &app,
        "DELETE",
        "/integration",
        &[("idempotency-key", "del-1")],
        Vec::new(),
    )
    .await;
    let body = expect(&r, 202);
    assert_eq!(r.header("location"), Some("/requests/del-1"));
    assert_eq!(body["clientRequestId"], "del-1");
    assert_eq!(body["status"], "PENDING");
    let sent = app.mock().received_on("DELETE", "/v2/crm/integrations");
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].query_param("integrationId"),
        Some(INTEGRATION_ID.to_string().as_str())
    );
    assert_eq!(sent[0].query_param("clientRequestId"), Some("del-1"));
    let record = app.kv().get_json("request/del-1").expect("request record");
    assert_eq!(record["operation"], "DELETE_INTEGRATION");
    assert_eq!(record["integrationId"], INTEGRATION_ID.to_string());
    assert!(record["submittedAt"].as_str().unwrap().ends_with('Z'));

    // Replaying the same key answers the same thing and sends nothing.
    let again = call(
        &app,
        "DELETE",
        "/integration",
        &[("idempotency-key", "del-1")],
        Vec::new(),
    )
    .await;
    assert_eq!(again.status, 202);
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    assert_eq!(
        app.mock()
            .received_on("DELETE", "/v2/crm/integrations")
            .len(),
        1
    );

    // An invalid key is refused.
    expect(
        &call(
            &app,
            "DELETE",
            "/integration",
            &[("idempotency-key", "bad key!")],
            Vec::new(),
        )
        .await,
        400,
    );
    // Without a key a fresh clientRequestId is made.
    let fresh = expect(
        &call(&app, "DELETE", "/integration", &[], Vec::new()).await,
        202,
    );
    assert_ne!(fresh["clientRequestId"], "del-1");
}

#[tokio::test]
async fn delete_done_forgets_the_kept_integration() {
    let app = TestApp::builder()
        .var("idempotency_settle_ms", "5")
        .build()
        .await;
    expect(
        &call_json(
            &app,
            "PUT",
            "/integration",
            &json!({"name": "A", "ownerEmail": "o@a.co"}),
        )
        .await,
        200,
    );
    let body = expect(
        &call(&app, "DELETE", "/integration", &[], Vec::new()).await,
        202,
    );
    let id = body["clientRequestId"].as_str().unwrap().to_owned();
    app.mock().on(
        "GET",
        "/v2/crm/request-status",
        MockResponse::json(
            200,
            json!({"requestId": "s", "status": "DONE", "errors": []}),
        ),
    );
    let status = expect(
        &call(&app, "GET", &format!("/requests/{id}"), &[], Vec::new()).await,
        200,
    );
    assert_eq!(status["status"], "DONE");
    assert!(
        app.kv().get("integration").is_none(),
        "a deleted integration is no longer used"
    );
    let r = call_json(&app, "POST", "/schema/ACCOUNT", &json!([])).await;
    assert!(expect(&r, 409)["detail"]
        .as_str()
        .unwrap()
        .contains("register"));
}

#[tokio::test]
async fn schema_and_record_routes_need_an_integration_first() {
    let app = TestApp::spawn().await;
    let r = call_json(
        &app,
        "POST",
        "/records/ACCOUNT",
        &json!([{"objectId": "a1", "modifiedDate": "2024-01-02T03:04:05Z"}]),
    )
    .await;
    let body = expect(&r, 409);
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("PUT /integration"));
    expect(
        &call(&app, "GET", "/schema/ACCOUNT", &[], Vec::new()).await,
        409,
    );
    assert!(app.mock().received().is_empty());
}

#[tokio::test]
async fn schema_upload_forwards_a_bare_array_and_keeps_it() {
    let app = registered_app().await;
    let fields = json!([
        {"uniqueName": "Tier", "label": "Tier", "type": "PICKLIST", "orderedValueList": ["Gold", "Silver"]},
        {"uniqueName": "Score", "label": "Score", "type": "NUMBER"}
    ]);
    let body = expect(
        &call_json(&app, "POST", "/schema/ACCOUNT", &fields).await,
        200,
    );
    assert_eq!(body["fieldsSent"], 2);
    let sent = app.mock().received_on("POST", "/v2/crm/entity-schema");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].query_param("objectType"), Some("ACCOUNT"));
    assert_eq!(
        sent[0].query_param("integrationId"),
        Some(INTEGRATION_ID.to_string().as_str())
    );
    assert_eq!(sent[0].json(), fields);
    assert_eq!(app.kv().get_json("schema/ACCOUNT").unwrap(), fields);
}

#[tokio::test]
async fn schema_list_reads_gong_with_name_or_unique_name() {
    let app = registered_app().await;
    app.mock().on(
        "GET",
        "/v2/crm/entity-schema",
        MockResponse::json(200, json!({"requestId": "l", "objectTypeToSelectedFields": {"DEAL": [{"name": "Region", "label": "Region", "type": "STRING", "lastModified": null}]}})),
    );
    let body = expect(
        &call(&app, "GET", "/schema/DEAL", &[], Vec::new()).await,
        200,
    );
    assert_eq!(
        body["objectTypeToSelectedFields"]["DEAL"][0]["uniqueName"],
        "Region"
    );
    let sent = &app.mock().received()[0];
    assert_eq!(sent.query_param("objectType"), Some("DEAL"));
    // STAGE has no schema in Gong.
    let r = call(&app, "GET", "/schema/STAGE", &[], Vec::new()).await;
    assert!(expect(&r, 422)["detail"]
        .as_str()
        .unwrap()
        .contains("ACCOUNT, CONTACT, DEAL, LEAD"));
}

#[tokio::test]
async fn records_upload_is_multipart_ldjson_with_query_and_tracked() {
    let app = registered_app().await;
    let records = json!([
        {"objectId": "acc-2", "modifiedDate": "2024-01-02T00:00:00Z", "name": "Two"},
        {"objectId": "acc-1", "modifiedDate": "2024-01-01T00:00:00Z", "name": "One"}
    ]);
    let r = call(
        &app,
        "POST",
        "/records/ACCOUNT",
        &[
            ("content-type", "application/json"),
            ("idempotency-key", "up-1"),
        ],
        serde_json::to_vec(&records).unwrap(),
    )
    .await;
    let body = expect(&r, 202);
    assert_eq!(r.header("location"), Some("/requests/up-1"));
    assert_eq!(body["recordCount"], 2);
    assert_eq!(body["status"], "PENDING");

    let sent = app.mock().received_on("POST", "/v2/crm/entities");
    assert_eq!(sent.len(), 1);
    let upload = &sent[0];
    assert_eq!(
        upload.query_param("integrationId"),
        Some(INTEGRATION_ID.to_string().as_str())
    );
    assert_eq!(upload.query_param("objectType"), Some("ACCOUNT"));
    assert_eq!(upload.query_param("clientRequestId"), Some("up-1"));
    assert_eq!(upload.header("authorization"), Some(basic_auth().as_str()));
    assert!(upload
        .header("content-type")
        .unwrap()
        .starts_with("multipart/form-data; boundary="));
    assert_eq!(upload.parts.len(), 1);
    let part = upload.part("dataFile").expect("a dataFile part");
    assert_eq!(part.content_type.as_deref(), Some("application/x-ndjson"));
    let lines = part.lines();
    // Sorted by modifiedDate ascending.
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&lines[0]).unwrap()["objectId"],
        "acc-1"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&lines[1]).unwrap()["objectId"],
        "acc-2"
    );

    let record = app.kv().get_json("request/up-1").unwrap();
    assert_eq!(record["status"], "PENDING");
    assert_eq!(
        record["payloadChunks"], 0,
        "the file is dropped once Gong accepted it"
    );
    assert_eq!(
        app.kv().get_string("blob/lines/up-1/0").unwrap(),
        "acc-1\nacc-2"
    );
}

#[tokio::test]
async fn records_accept_ldjson_bodies() {
    let app = registered_app().await;
    let body = "{\"objectId\":\"u1\",\"modifiedDate\":\"2024-01-01T00:00:00Z\",\"emailAddress\":\"u1@acme.com\"}\n\n{\"objectId\":\"u2\",\"modifiedDate\":\"2024-01-01T00:00:01Z\",\"emailAddress\":\"u2@acme.com\"}\n";
    let r = call(
        &app,
        "POST",
        "/records/BUSINESS_USER",
        &[("content-type", "application/x-ndjson")],
        body,
    )
    .await;
    assert_eq!(expect(&r, 202)["recordCount"], 2);
    let sent = app.mock().received_on("POST", "/v2/crm/entities");
    assert_eq!(sent[0].query_param("objectType"), Some("BUSINESS_USER"));
    expect(
        &call(
            &app,
            "POST",
            "/records/ACCOUNT",
            &[("content-type", "text/csv")],
            "a,b",
        )
        .await,
        415,
    );
    expect(
        &call(
            &app,
            "POST",
            "/records/account",
            &[("content-type", "application/json")],
            "[]",
        )
        .await,
        422,
    );
}

#[tokio::test]
async fn get_records_sends_ids_as_body_and_query_and_caps_at_100() {
    let app = registered_app().await;
    app.mock().on(
        "GET",
        "/v2/crm/entities",
        MockResponse::json(
            200,
            json!({"requestId": "g", "crmObjectsMap": {"a1": {"name": "A"}, "b2": null}}),
        ),
    );
    let body = expect(
        &call(&app, "GET", "/records/ACCOUNT?ids=a1,b2", &[], Vec::new()).await,
        200,
    );
    assert_eq!(body["objects"]["a1"]["name"], "A");
    assert_eq!(body["notInGong"], json!(["b2"]));
    let sent = &app.mock().received()[0];
    assert_eq!(sent.method, "GET");
    assert_eq!(sent.json(), json!(["a1", "b2"]));
    assert_eq!(sent.query_param("objectsCrmIds"), Some("a1,b2"));
    assert_eq!(sent.query_param("objectType"), Some("ACCOUNT"));

    let ids: Vec<String> = (0..101).map(|i| format!("id{i}")).collect();
    let r = call(
        &app,
        "GET",
        &format!("/records/ACCOUNT?ids={}", ids.join(",")),
        &[],
        Vec::new(),
    )
    .await;
    assert!(expect(&r, 400)["detail"]
        .as_str()
        .unwrap()
        .contains("at most 100"));
    expect(
        &call(&app, "GET", "/records/ACCOUNT", &[], Vec::new()).await,
        400,
    );
    assert_eq!(app.mock().received().len(), 1);
}

#[tokio::test]
async fn request_status_is_polled_until_final_and_line_errors_name_records() {
    // No backoff between polls, so that each read here asks Gong (the schedule has unit tests).
    let app = TestApp::builder()
        .var("integration_id", &INTEGRATION_ID.to_string())
        .var("idempotency_settle_ms", "5")
        .var("poll_backoff_seconds", "0")
        .build()
        .await;
    let records = json!([
        {"objectId": "c1", "modifiedDate": "2024-01-01T00:00:00Z", "accountId": "a"},
        {"objectId": "c2", "modifiedDate": "2024-01-01T00:00:01Z", "accountId": "a"}
    ]);
    let r = call(
        &app,
        "POST",
        "/records/CONTACT",
        &[
            ("content-type", "application/json"),
            ("idempotency-key", "st-1"),
        ],
        serde_json::to_vec(&records).unwrap(),
    )
    .await;
    expect(&r, 202);
    app.mock().on(
        "GET",
        "/v2/crm/request-status",
        MockResponse::json(
            200,
            json!({"requestId": "s1", "status": "IN_PROGRESS", "errors": []}),
        ),
    );
    let first = expect(
        &call(&app, "GET", "/requests/st-1", &[], Vec::new()).await,
        200,
    );
    assert_eq!(first["status"], "IN_PROGRESS");
    app.mock().on(
        "GET",
        "/v2/crm/request-status",
        MockResponse::json(200, json!({"requestId": "s1", "status": "FAILED", "errors": [{"line": 2, "description": "accountId unknown"}], "totalErrorCount": 1, "totalSuccessCount": 1})),
    );
    let second = expect(
        &call(&app, "GET", "/requests/st-1", &[], Vec::new()).await,
        200,
    );
    assert_eq!(second["status"], "FAILED");
    assert_eq!(second["errors"][0]["objectId"], "c2");
    assert_eq!(second["errors"][0]["description"], "accountId unknown");
    assert_eq!(second["totals"]["success"], 1);
    let polls = app.mock().received_on("GET", "/v2/crm/request-status");
    assert_eq!(polls.len(), 2);
    assert_eq!(polls[0].query_param("clientRequestId"), Some("st-1"));
    // Final: no more polling.
    expect(
        &call(&app, "GET", "/requests/st-1", &[], Vec::new()).await,
        200,
    );
    assert_eq!(
        app.mock()
            .received_on("GET", "/v2/crm/request-status")
            .len(),
        2
    );
    assert_eq!(
        app.kv().get_json("request/st-1").unwrap()["status"],
        "FAILED"
    );
    expect(
        &call(&app, "GET", "/requests/unknown-id", &[], Vec::new()).await,
        404,
    );
}

/// Each Gong failure on an upload maps to the documented status, says what Gong said, and
/// leaves the validated file in KV under a NOT_SENT request that a retry resends.
#[tokio::test]
async fn gong_error_mapping_keeps_the_data() {
    let cases: Vec<(MockResponse, u16, &str)> = vec![
        (
            MockResponse::json(
                400,
                json!({"requestId": "e1", "errors": ["objectType is invalid"]}),
            ),
            422,
            "objectType is invalid",
        ),
        (
            MockResponse::json(401, json!({"errors": ["Access denied"]})),
            502,
            "Access denied",
        ),
        (
            MockResponse::json(403, json!({"errors": ["forbidden scope"]})),
            502,
            "forbidden scope",
        ),
        (
            MockResponse::json(429, json!({"errors": ["slow down"]})).header("retry-after", "17"),
            503,
            "slow down",
        ),
        (
            MockResponse::json(500, json!({"errors": ["Failed to complete the operation"]})),
            502,
            "Failed to complete",
        ),
        (
            MockResponse::text(502, "<html>bad gateway</html>"),
            502,
            "bad gateway",
        ),
    ];
    for (i, (response, status, said)) in cases.into_iter().enumerate() {
        let app = registered_app().await;
        app.mock().on("POST", "/v2/crm/entities", response);
        let key = format!("err-{i}");
        let r = call(
            &app,
            "POST",
            "/records/ACCOUNT",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", &key),
            ],
            r#"[{"objectId":"a1","modifiedDate":"2024-01-01T00:00:00Z"}]"#,
        )
        .await;
        let body = expect(&r, status);
        assert!(r.text().contains(said), "case {i}: {}", r.text());
        assert_eq!(body["clientRequestId"], key.as_str());
        assert_eq!(body["kept"], true);
        if status == 503 {
            assert_eq!(r.header("retry-after"), Some("17"));
        }
        let record = app.kv().get_json(&format!("request/{key}")).unwrap();
        assert_eq!(record["status"], "NOT_SENT", "case {i}");
        assert!(
            app.kv().get(&format!("blob/payload/{key}/0")).is_some(),
            "case {i}: file kept"
        );
        if status == 503 {
            // After a 429 every caller waits Retry-After: a retry now is refused, data still kept.
            let retried = call(
                &app,
                "POST",
                &format!("/requests/{key}/retry"),
                &[],
                Vec::new(),
            )
            .await;
            assert!(expect(&retried, 503)["detail"]
                .as_str()
                .unwrap()
                .contains("429"));
            assert_eq!(app.mock().received_on("POST", "/v2/crm/entities").len(), 1);
            continue;
        }
        // A retry resends the kept file with the same clientRequestId.
        let retried = call(
            &app,
            "POST",
            &format!("/requests/{key}/retry"),
            &[],
            Vec::new(),
        )
        .await;
        assert_eq!(expect(&retried, 202)["status"], "PENDING", "case {i}");
        let uploads = app.mock().received_on("POST", "/v2/crm/entities");
        assert_eq!(uploads.len(), 2);
        assert_eq!(
            uploads[1].query_param("clientRequestId"),
            Some(key.as_str())
        );
        assert_eq!(
            uploads[0].part("dataFile").unwrap().body,
            uploads[1].part("dataFile").unwrap().body
        );
        assert!(app.kv().get(&format!("blob/payload/{key}/0")).is_none());
    }
}

/// Issue 10 finding 1: on a first send, Gong's 409 means the id is someone else's (an expired
/// key, another client): the file goes out again under a fresh id. On a resend of the bridge's
/// own request it means an earlier attempt got through.
#[tokio::test]
async fn gong_409_on_a_first_upload_resends_and_on_a_resend_means_accepted() {
    let app = registered_app().await;
    app.mock().on(
        "POST",
        "/v2/crm/entities",
        MockResponse::json(409, json!({"errors": ["clientRequestId already used"]})),
    );
    let r = call(
        &app,
        "POST",
        "/records/ACCOUNT",
        &[("content-type", "application/json")],
        r#"[{"objectId":"a1","modifiedDate":"2024-01-01T00:00:00Z"}]"#,
    )
    .await;
    let body = expect(&r, 202);
    assert_eq!(body["status"], "PENDING");
    let uploads = app.mock().received_on("POST", "/v2/crm/entities");
    assert_eq!(uploads.len(), 2);
    assert_eq!(
        uploads[0].query_param("clientRequestId"),
        body["clientRequestId"].as_str()
    );
    assert_eq!(
        uploads[1].query_param("clientRequestId"),
        body["sentAs"].as_str()
    );
    assert_ne!(body["sentAs"], body["clientRequestId"]);

    app.mock().on(
        "POST",
        "/v2/crm/entities",
        MockResponse::json(500, json!({"errors": ["boom"]})),
    );
    app.mock().on(
        "POST",
        "/v2/crm/entities",
        MockResponse::json(409, json!({"errors": ["clientRequestId already used"]})),
    );
    let json = [
        ("content-type", "application/json"),
        ("idempotency-key", "own-409"),
    ];
    expect(
        &call(
            &app,
            "POST",
            "/records/ACCOUNT",
            &json,
            r#"[{"objectId":"a2","modifiedDate":"2024-01-01T00:00:00Z"}]"#,
        )
        .await,
        502,
    );
    let retried = expect(
        &call(&app, "POST", "/requests/own-409/retry", &[], Vec::new()).await,
        202,
    );
    assert_eq!(retried["status"], "PENDING");
    assert!(retried["lastError"].as_str().unwrap().contains("409"));
    assert!(retried.get("sentAs").is_none(), "{retried}");
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_504_and_502() {
    let app = TestApp::builder()
        .var("integration_id", "7")
        .var("gong_timeout_ms", "300")
        .build()
        .await;
    app.mock().on(
        "GET",
        "/v2/crm/integrations",
        MockResponse::json(200, json!({})).delay(Duration::from_secs(3)),
    );
    let r = call(&app, "GET", "/integration", &[], Vec::new()).await;
    assert!(expect(&r, 504)["detail"]
        .as_str()
        .unwrap()
        .contains("timed out"));

    let refused = TestApp::builder()
        .var("integration_id", "7")
        .var("gong_base_url", &refused_url())
        .build()
        .await;
    let r = call(&refused, "GET", "/integration", &[], Vec::new()).await;
    expect(&r, 502);

    let garbage = registered_app().await;
    garbage.mock().on(
        "GET",
        "/v2/crm/integrations",
        MockResponse::text(200, "not json"),
    );
    let r = call(&garbage, "GET", "/integration", &[], Vec::new()).await;
    assert_eq!(expect(&r, 502)["gongStatus"], 200);
}

#[tokio::test]
async fn kv_failure_before_sending_answers_503_and_sends_nothing() {
    let app = registered_app().await;
    app.kv().fail_sets_matching("request/", 1);
    let r = call(
        &app,
        "POST",
        "/records/ACCOUNT",
        &[("content-type", "application/json")],
        r#"[{"objectId":"a1","modifiedDate":"2024-01-01T00:00:00Z"}]"#,
    )
    .await;
    expect(&r, 503);
    assert!(
        app.mock()
            .received_on("POST", "/v2/crm/entities")
            .is_empty(),
        "nothing is sent that is not stored"
    );
}

#[tokio::test]
async fn bearer_auth_to_gong_when_configured() {
    let app = TestApp::builder()
        .without_var("gong_access_key")
        .without_var("gong_access_key_secret")
        .var("gong_bearer_token", "oauth-tok")
        .var("integration_id", "7")
        .build()
        .await;
    expect(
        &call(&app, "GET", "/integration", &[], Vec::new()).await,
        200,
    );
    assert_eq!(
        app.mock().received()[0].header("authorization"),
        Some("Bearer oauth-tok")
    );
}
