//! Webhooks end to end (issue: webhooks): Standard Webhooks signatures, exactly-once effect per
//! webhook-id (also under concurrency and across two host instances sharing one KV), request
//! records and "where is my record", and the idempotency expiry sweep.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::support::{
    sign_webhook_with, webhook_secret, MemKv, MockResponse, TestApp, TestResponse,
    WEBHOOK_SECRET_BYTES,
};
use crate::{call, expect, INTEGRATION_ID};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign_with(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
    sign_webhook_with(key, id, ts, body)
}

fn sign(id: &str, ts: i64, body: &[u8]) -> String {
    sign_webhook_with(WEBHOOK_SECRET_BYTES, id, ts, body)
}

async fn app_with(kv: Option<MemKv>, settle_ms: &str) -> TestApp {
    let mut builder = TestApp::builder()
        .var("integration_id", &INTEGRATION_ID.to_string())
        .var("idempotency_settle_ms", settle_ms);
    if let Some(kv) = kv {
        builder = builder.kv(kv);
    }
    builder.build().await
}

async fn deliver_signed(
    app: &TestApp,
    id: &str,
    ts: i64,
    signature: &str,
    body: &[u8],
) -> TestResponse {
    let ts = ts.to_string();
    app.request(
        "POST",
        "/webhooks",
        &[
            ("content-type", "application/json"),
            ("webhook-id", id),
            ("webhook-timestamp", &ts),
            ("webhook-signature", signature),
        ],
        body.to_vec(),
    )
    .await
}

async fn deliver(app: &TestApp, id: &str, body: &Value) -> TestResponse {
    let bytes = serde_json::to_vec(body).unwrap();
    let ts = now();
    deliver_signed(app, id, ts, &sign(id, ts, &bytes), &bytes).await
}

/// Forces a flush of everything buffered and returns the report (also of a 502: part failed).
async fn flush(app: &TestApp) -> Value {
    crate::nothing_lost::flush_report(
        &call(app, "POST", "/flush?force=true", &[], Vec::new()).await,
    )
}

fn uploaded_lines(app: &TestApp) -> Vec<Value> {
    app.mock()
        .received_on("POST", "/v2/crm/entities")
        .iter()
        .flat_map(|u| {
            u.part("dataFile")
                .unwrap_or_else(|| panic!("no dataFile part: {:?}", u.multipart_error))
                .lines()
        })
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect()
}

/// How many versions of an ACCOUNT wait in the bridge, as "where is my record" says.
async fn waiting_versions(app: &TestApp, object_id: &str) -> u64 {
    let r = call(
        app,
        "GET",
        &format!("/records/ACCOUNT/{object_id}/status"),
        &[],
        Vec::new(),
    )
    .await;
    if r.status != 200 {
        return 0;
    }
    let body = r.json();
    if body["state"] == "waiting" {
        body["pendingVersions"].as_u64().unwrap_or(0)
    } else {
        0
    }
}

fn upsert(object_id: &str, modified: &str) -> Value {
    json!({"type": "record.upserted", "timestamp": "2024-01-01T00:00:00Z",
           "data": {"objectType": "ACCOUNT", "record": {"objectId": object_id, "modifiedDate": modified, "name": "Acme"}}})
}

#[tokio::test]
async fn signatures_valid_invalid_stale_rotated_and_empty() {
    let app = app_with(None, "5").await;
    let body = serde_json::to_vec(&upsert("a1", "2024-01-01T00:00:00Z")).unwrap();
    let ts = now();

    // Wrong secret.
    let wrong = sign_with(b"another-secret-entirely-0123456", "msg_1", ts, &body);
    let r = deliver_signed(&app, "msg_1", ts, &wrong, &body).await;
    assert!(expect(&r, 401)["detail"]
        .as_str()
        .unwrap()
        .contains("no signature"));
    // Body changed after signing.
    let r = deliver_signed(&app, "msg_1", ts, &sign("msg_1", ts, b"{}"), &body).await;
    expect(&r, 401);
    // Stale and future timestamps.
    let old = ts - 301;
    let r = deliver_signed(&app, "msg_1", old, &sign("msg_1", old, &body), &body).await;
    assert!(expect(&r, 401)["detail"]
        .as_str()
        .unwrap()
        .contains("away from now"));
    let future = ts + 400;
    expect(
        &deliver_signed(&app, "msg_1", future, &sign("msg_1", future, &body), &body).await,
        401,
    );
    // Empty v1 signature, and no v1 at all.
    expect(&deliver_signed(&app, "msg_1", ts, "v1,", &body).await, 401);
    assert!(expect(
        &deliver_signed(&app, "msg_1", ts, "v2,abc", &body).await,
        401
    )["detail"]
        .as_str()
        .unwrap()
        .contains("no v1"));
    // Missing headers name the header.
    let r = app
        .request(
            "POST",
            "/webhooks",
            &[("content-type", "application/json")],
            body.clone(),
        )
        .await;
    assert!(expect(&r, 401)["detail"]
        .as_str()
        .unwrap()
        .contains("webhook-id"));
    // Nothing about the secret leaks.
    assert!(!r.text().contains("whsec_") && !r.text().contains(&webhook_secret()));
    assert!(
        app.mock().received().is_empty(),
        "unauthenticated deliveries never reach Gong"
    );

    // Key rotation: an old signature first, the current one second.
    let rotated = format!("{} {}", wrong, sign("msg_1", ts, &body));
    let r = deliver_signed(&app, "msg_1", ts, &rotated, &body).await;
    assert_eq!(expect(&r, 202)["status"], "BUFFERED");
    assert_eq!(waiting_versions(&app, "a1").await, 1);
}

/// Record deliveries are keyed by record version, not by webhook-id (a key per webhook-id for a
/// week would make the store grow without bound): a re-delivery of a version takes effect once,
/// before and after the version went to Gong.
#[tokio::test]
async fn a_redelivery_takes_effect_once() {
    let app = app_with(None, "5").await;
    let event = upsert("a1", "2024-01-01T00:00:00Z");
    let first = deliver(&app, "msg_replay", &event).await;
    assert_eq!(expect(&first, 202)["accepted"], 1);
    let second = deliver(&app, "msg_replay", &event).await;
    expect(&second, 202);
    assert_eq!(second.header("location"), first.header("location"));
    assert_eq!(waiting_versions(&app, "a1").await, 1, "buffered once");
    flush(&app).await;
    assert_eq!(app.mock().received_on("POST", "/v2/crm/entities").len(), 1);
    assert_eq!(uploaded_lines(&app).len(), 1);
    // After it was sent, the same version again is kept out by the record's tombstone.
    expect(&deliver(&app, "msg_replay", &event).await, 202);
    let report = flush(&app).await;
    assert!(
        report["files"].as_array().is_none_or(|f| f.is_empty()),
        "{report}"
    );
    assert_eq!(
        app.mock().received_on("POST", "/v2/crm/entities").len(),
        1,
        "sent once"
    );
}

#[tokio::test]
async fn a_file_gong_refuses_stays_buffered_and_goes_with_the_next_flush() {
    let app = app_with(None, "5").await;
    app.mock().on(
        "POST",
        "/v2/crm/entities",
        MockResponse::json(500, json!({"errors": ["boom"]})),
    );
    expect(
        &deliver(&app, "msg_retry", &upsert("a1", "2024-01-01T00:00:00Z")).await,
        202,
    );
    let failed = call(&app, "POST", "/flush?force=true", &[], Vec::new()).await;
    assert_eq!(
        failed.status,
        502,
        "a flush whose work failed says so: {}",
        failed.text()
    );
    let report = crate::nothing_lost::flush_report(&failed);
    assert!(
        report["note"].as_str().unwrap().contains("boom"),
        "{report}"
    );
    assert_eq!(waiting_versions(&app, "a1").await, 1, "still buffered");
    let report = flush(&app).await;
    assert_eq!(report["files"][0]["records"], 1, "{report}");
    assert_eq!(waiting_versions(&app, "a1").await, 0);
    assert_eq!(app.mock().received_on("POST", "/v2/crm/entities").len(), 2);
}

async fn fifty_at_once(apps: &[TestApp], id: &str) -> Vec<u16> {
    let event = upsert("a1", "2024-01-01T00:00:00Z");
    let bytes = serde_json::to_vec(&event).unwrap();
    let ts = now();
    let signature = sign(id, ts, &bytes);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let app = apps[i % apps.len()].clone();
        let (id, signature, bytes) = (id.to_owned(), signature.clone(), bytes.clone());
        tasks.push(tokio::spawn(async move {
            deliver_signed(&app, &id, ts, &signature, &bytes)
                .await
                .status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_deliveries_of_one_id_reach_gong_once() {
    let kv = MemKv::new();
    kv.set_latency(std::time::Duration::from_millis(10));
    let app = app_with(Some(kv), "100").await;
    let statuses = fifty_at_once(std::slice::from_ref(&app), "msg_concurrent").await;
    assert!(
        statuses.iter().all(|s| *s == 202),
        "every copy is accepted, as one version: {statuses:?}"
    );
    app.kv().set_latency(std::time::Duration::ZERO);
    assert_eq!(waiting_versions(&app, "a1").await, 1);
    flush(&app).await;
    assert_eq!(app.mock().received_on("POST", "/v2/crm/entities").len(), 1);
    assert_eq!(uploaded_lines(&app).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_sharing_one_kv_forward_once() {
    let kv = MemKv::new();
    kv.set_latency(std::time::Duration::from_millis(10));
    let a = app_with(Some(kv.clone()), "100").await;
    let b = TestApp::builder()
        .kv(kv.clone())
        .mock(a.mock().clone())
        .var("integration_id", &INTEGRATION_ID.to_string())
        .var("idempotency_settle_ms", "100")
        .build()
        .await;
    let statuses = fifty_at_once(&[a.clone(), b], "msg_replicas").await;
    assert!(
        statuses.iter().all(|s| *s == 202),
        "every copy is accepted, as one version: {statuses:?}"
    );
    kv.set_latency(std::time::Duration::ZERO);
    flush(&a).await;
    assert_eq!(
        a.mock().received_on("POST", "/v2/crm/entities").len(),
        1,
        "{statuses:?}"
    );
    assert_eq!(uploaded_lines(&a).len(), 1);
}

#[tokio::test]
async fn unknown_event_types_and_bad_records_are_422_and_never_forwarded() {
    let app = app_with(None, "5").await;
    let r = deliver(
        &app,
        "msg_unknown",
        &json!({"type": "record.moved", "data": {}}),
    )
    .await;
    let body = expect(&r, 422);
    assert!(body["detail"].as_str().unwrap().contains("record.upserted"));
    let bad = deliver(&app, "msg_bad", &upsert("a1", "2024-01-01T00:00:00.123Z")).await;
    let body = expect(&bad, 422);
    assert_eq!(body["errors"][0]["objectId"], "a1");
    assert_eq!(body["errors"][0]["field"], "modifiedDate");
    assert!(app.mock().received().is_empty());
}

#[tokio::test]
async fn deletes_schema_and_integration_events() {
    let app = app_with(None, "5").await;
    let del = json!({"type": "record.deleted", "data": {"objectType": "DEAL", "records": [{"objectId": "d1", "modifiedDate": "2024-01-01T00:00:00Z"}]}});
    expect(&deliver(&app, "msg_del", &del).await, 202);
    flush(&app).await;
    let upload = &app.mock().received_on("POST", "/v2/crm/entities")[0];
    let line: Value = serde_json::from_str(&upload.part("dataFile").unwrap().lines()[0]).unwrap();
    assert_eq!(line["isDeleted"], true);
    assert_eq!(upload.query_param("objectType"), Some("DEAL"));

    let schema = json!({"type": "schema.updated", "data": {"objectType": "LEAD", "fields": [{"uniqueName": "Source", "label": "Source", "type": "STRING"}]}});
    expect(&deliver(&app, "msg_schema", &schema).await, 200);
    assert_eq!(
        app.mock().received_on("POST", "/v2/crm/entity-schema")[0].query_param("objectType"),
        Some("LEAD")
    );

    let gone = json!({"type": "integration.deleted", "data": {}});
    let r = deliver(&app, "msg_gone", &gone).await;
    assert_eq!(expect(&r, 202)["clientRequestId"], "wh-msg_gone");
    assert_eq!(
        app.mock().received_on("DELETE", "/v2/crm/integrations")[0].query_param("clientRequestId"),
        Some("wh-msg_gone")
    );

    let fresh = TestApp::builder()
        .var("idempotency_settle_ms", "5")
        .build()
        .await;
    let reg = json!({"type": "integration.registered", "data": {"name": "ACME", "ownerEmail": "o@acme.com"}});
    assert_eq!(
        expect(&deliver(&fresh, "msg_reg", &reg).await, 200)["integrationId"],
        INTEGRATION_ID.to_string()
    );
}

#[tokio::test]
async fn static_bearer_for_crms_that_cannot_sign() {
    let app = TestApp::builder()
        .var("integration_id", "7")
        .var("idempotency_settle_ms", "5")
        .without_var("webhook_secret")
        .var("webhook_bearer_token", "crm-token")
        .build()
        .await;
    let body = serde_json::to_vec(&upsert("a1", "2024-01-01T00:00:00Z")).unwrap();
    let r = app
        .request(
            "POST",
            "/webhooks",
            &[("authorization", "Bearer wrong")],
            body.clone(),
        )
        .await;
    expect(&r, 401);
    let ok = app
        .request(
            "POST",
            "/webhooks",
            &[
                ("authorization", "Bearer crm-token"),
                ("webhook-id", "evt-9"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(expect(&ok, 202)["delivery"], "evt-9");
    let again = app
        .request(
            "POST",
            "/webhooks",
            &[
                ("authorization", "Bearer crm-token"),
                ("webhook-id", "evt-9"),
            ],
            body,
        )
        .await;
    expect(&again, 202);
    assert_eq!(
        waiting_versions(&app, "a1").await,
        1,
        "a re-delivery is the same version"
    );
}

#[tokio::test]
async fn a_records_status_through_its_life_and_request_listing() {
    // No backoff between polls, so that each flush here asks Gong (the schedule has unit tests).
    let app = TestApp::builder()
        .var("integration_id", &INTEGRATION_ID.to_string())
        .var("idempotency_settle_ms", "5")
        .var("poll_backoff_seconds", "0")
        .build()
        .await;
    let status = |app: TestApp| async move {
        expect(
            &call(&app, "GET", "/records/ACCOUNT/a1/status", &[], Vec::new()).await,
            200,
        )
    };
    // Not known yet.
    expect(
        &call(&app, "GET", "/records/ACCOUNT/a1/status", &[], Vec::new()).await,
        404,
    );
    // Accepted: waiting in the bridge.
    expect(
        &deliver(&app, "msg_life", &upsert("a1", "2024-01-01T00:00:00Z")).await,
        202,
    );
    let s = status(app.clone()).await;
    assert_eq!(s["state"], "waiting");
    // Gong refuses the file: still waiting.
    app.mock().on(
        "POST",
        "/v2/crm/entities",
        MockResponse::json(503, json!({"errors": ["maintenance"]})),
    );
    flush(&app).await;
    assert_eq!(status(app.clone()).await["state"], "waiting");
    // Sent, pending at Gong.
    app.mock().on(
        "GET",
        "/v2/crm/request-status",
        MockResponse::json(200, json!({"status": "PENDING", "errors": []})),
    );
    let report = flush(&app).await;
    let sent_in = report["files"][0]["clientRequestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = status(app.clone()).await;
    assert_eq!(s["state"], "sent", "{s}");
    assert_eq!(s["clientRequestId"], sent_in.as_str());
    // Gong fails the record's line: it moves to the failure store with Gong's words.
    app.mock().on(
        "GET",
        "/v2/crm/request-status",
        MockResponse::json(200, json!({"status": "FAILED", "errors": [{"line": 1, "description": "name too long"}], "totalErrorCount": 1, "totalSuccessCount": 0})),
    );
    let report = flush(&app).await;
    assert_eq!(report["failuresAdded"], 1, "{report}");
    let s = status(app.clone()).await;
    assert_eq!(s["state"], "failed");
    assert_eq!(s["explanation"], "name too long");
    let request = expect(
        &call(
            &app,
            "GET",
            &format!("/requests/{sent_in}"),
            &[],
            Vec::new(),
        )
        .await,
        200,
    );
    assert_eq!(
        request["deliveries"],
        json!(["msg_life"]),
        "the request names the delivery behind it"
    );
    assert_eq!(request["errors"][0]["objectId"], "a1");

    // Listing, newest first, filtered and paginated.
    expect(
        &deliver(&app, "msg_second", &upsert("b1", "2024-01-01T00:00:00Z")).await,
        202,
    );
    flush(&app).await;
    let all = expect(&call(&app, "GET", "/requests", &[], Vec::new()).await, 200);
    let ids: Vec<_> = all["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["clientRequestId"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.len() >= 2, "{ids:?}");
    assert!(ids.contains(&sent_in));
    let failed = expect(
        &call(&app, "GET", "/requests?status=FAILED", &[], Vec::new()).await,
        200,
    );
    assert_eq!(failed["requests"].as_array().unwrap().len(), 1);
    assert_eq!(failed["requests"][0]["clientRequestId"], sent_in.as_str());
    let page = expect(
        &call(&app, "GET", "/requests?limit=1", &[], Vec::new()).await,
        200,
    );
    assert_eq!(page["requests"].as_array().unwrap().len(), 1);
    let next = page["next"].as_str().expect("a next page").to_owned();
    let page2 = expect(&call(&app, "GET", &next, &[], Vec::new()).await, 200);
    assert_eq!(page2["requests"].as_array().unwrap().len(), 1);
    assert_ne!(
        page2["requests"][0]["clientRequestId"],
        page["requests"][0]["clientRequestId"]
    );
    expect(
        &call(&app, "GET", "/requests?status=LOST", &[], Vec::new()).await,
        400,
    );
}

#[tokio::test]
async fn the_sweep_removes_expired_idempotency_keys() {
    let app = TestApp::builder()
        .var("integration_id", "7")
        .var("idempotency_settle_ms", "5")
        .var("idempotency_ttl_seconds", "1")
        .build()
        .await;
    // Schema (and integration) events keep their webhook-id for a replay; record events do not.
    let schema = json!({"type": "schema.updated", "data": {"objectType": "ACCOUNT", "fields": [{"uniqueName": "Tier", "label": "Tier", "type": "STRING"}]}});
    expect(&deliver(&app, "msg_expiring", &schema).await, 200);
    assert_eq!(app.kv().keys_with_prefix("idem/").len(), 1);
    assert_eq!(app.kv().keys_with_prefix("idemexp/").len(), 1);
    let swept_early = expect(&call(&app, "POST", "/sweep", &[], Vec::new()).await, 200);
    assert_eq!(swept_early["expiredKeysRemoved"], 0);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let swept = expect(&call(&app, "POST", "/sweep", &[], Vec::new()).await, 200);
    assert_eq!(swept["expiredKeysRemoved"], 1);
    assert!(app.kv().keys_with_prefix("idem/").is_empty());
    assert!(app.kv().keys_with_prefix("idemexp/").is_empty());
    // The schema stays: only the replay memory expired.
    assert!(app.kv().get("schema/ACCOUNT").is_some());
}
