//! Real-Spin cases for the management API: every Gong operation once, and how Gong's failures
//! (401, 409, 429, 500, no answer) reach the caller.

use std::time::Duration;

use anyhow::ensure;
use serde_json::json;

use crate::harness::INTEGRATION_ID;
use crate::support::mock_gong::{MockGong, MockResponse};
use crate::support::signing::{GONG_ACCESS_KEY, GONG_ACCESS_KEY_SECRET};
use crate::Ctx;

fn basic_auth() -> String {
    use base64::Engine as _;
    let pair = format!("{GONG_ACCESS_KEY}:{GONG_ACCESS_KEY_SECRET}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

pub async fn health_auth_and_unknown_routes(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let spin = ctx.start(&ctx.options(&mock), "spin").await?;
    let bridge = spin.bridge;
    let health = bridge
        .raw("GET", "/healthz", &[], Vec::new())
        .await?
        .expect(200);
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["missingVariables"], json!([]));

    let refused = bridge.raw("GET", "/integration", &[], Vec::new()).await?;
    refused.expect(401);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    bridge
        .raw(
            "GET",
            "/integration",
            &[("authorization", "Bearer wrong")],
            Vec::new(),
        )
        .await?
        .expect(401);
    bridge.get("/nope").await?.expect(404);
    let not_allowed = bridge
        .call("PATCH", "/integration", &[], Vec::new())
        .await?;
    assert_eq!(not_allowed.header("allow"), Some("GET, PUT, DELETE"));
    let not_allowed = not_allowed.expect(405);
    assert!(
        not_allowed["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("GET, PUT, DELETE"),
        "{not_allowed}"
    );
    ensure!(
        mock.received().is_empty(),
        "nothing reaches Gong: {:?}",
        mock.received()
    );

    // Without credentials the bridge says which are missing, by name only.
    let bare = ctx
        .start(
            &ctx.options(&mock)
                .without("gong_access_key")
                .without("gong_access_key_secret"),
            "bare",
        )
        .await?;
    let health = bare.bridge.raw("GET", "/healthz", &[], Vec::new()).await?;
    let text = health.text();
    assert!(
        text.contains("gong_access_key") && text.contains("misconfigured"),
        "{text}"
    );
    assert!(
        !text.contains(GONG_ACCESS_KEY_SECRET),
        "a secret in /healthz: {text}"
    );
    Ok(())
}

pub async fn all_eight_gong_operations(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    // No integration_id variable: the bridge registers one and keeps it in Spin's store.
    let spin = ctx
        .start(&ctx.options(&mock).without("integration_id"), "spin")
        .await?;
    let bridge = spin.bridge;
    let id = INTEGRATION_ID.to_string();

    // 1. register
    let registered = bridge
        .call_json(
            "PUT",
            "/integration",
            &json!({"name": "ACME CRM", "ownerEmail": "ops@acme.com"}),
        )
        .await?
        .expect(200);
    assert_eq!(registered["integrationId"], id);
    let put = mock.received_on("PUT", "/v2/crm/integrations");
    assert_eq!(put.len(), 1);
    assert_eq!(
        put[0].json(),
        json!({"name": "ACME CRM", "ownerEmail": "ops@acme.com"})
    );
    assert_eq!(put[0].header("authorization"), Some(basic_auth().as_str()));

    // 2. list integrations: the kept id is the one in use.
    mock.on("GET", "/v2/crm/integrations", MockResponse::json(200, json!({"requestId": "r", "integrations": [{"integrationId": INTEGRATION_ID, "name": "ACME CRM", "ownerEmail": "ops@acme.com"}]})));
    let listed = bridge.get("/integration").await?.expect(200);
    assert_eq!(listed["bridgeIntegrationId"], id, "{listed}");
    assert_eq!(listed["integrations"][0]["integrationId"], id, "{listed}");

    // 3. upload a schema, 4. read it back
    let fields = json!([{"uniqueName": "Tier", "label": "Tier", "type": "PICKLIST", "orderedValueList": ["Gold", "Silver"]}]);
    assert_eq!(
        bridge
            .call_json("POST", "/schema/ACCOUNT", &fields)
            .await?
            .expect(200)["fieldsSent"],
        1
    );
    let schema = mock.received_on("POST", "/v2/crm/entity-schema");
    assert_eq!(schema.len(), 1);
    assert_eq!(schema[0].query_param("integrationId"), Some(id.as_str()));
    assert_eq!(schema[0].json(), fields);
    mock.on(
        "GET",
        "/v2/crm/entity-schema",
        MockResponse::json(
            200,
            json!({"requestId": "r", "objectTypeToSelectedFields": {"ACCOUNT": fields}}),
        ),
    );
    let read = bridge.get("/schema/ACCOUNT").await?.expect(200);
    assert_eq!(
        read["objectTypeToSelectedFields"]["ACCOUNT"][0]["uniqueName"], "Tier",
        "{read}"
    );

    // 5. upload records (tracked under the Idempotency-Key)
    let records = json!([
        {"objectId": "acc-2", "modifiedDate": "2024-05-02T00:00:00Z", "name": "Beta", "Tier": "Silver"},
        {"objectId": "acc-1", "modifiedDate": "2024-05-01T00:00:00Z", "name": "Acme", "Tier": "Gold"}
    ]);
    let upload = bridge
        .call(
            "POST",
            "/records/ACCOUNT",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "up-1"),
            ],
            serde_json::to_vec(&records)?,
        )
        .await?;
    assert_eq!(upload.header("location"), Some("/requests/up-1"));
    assert_eq!(upload.expect(202)["recordCount"], 2);
    let sent = mock.received_on("POST", "/v2/crm/entities");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].query_param("clientRequestId"), Some("up-1"));
    assert_eq!(sent[0].query_param("objectType"), Some("ACCOUNT"));
    let lines = sent[0]
        .part("dataFile")
        .map(|p| p.lines())
        .unwrap_or_default();
    let ids: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["objectId"].to_string()))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        ids,
        vec!["\"acc-1\"", "\"acc-2\""],
        "sorted by modifiedDate"
    );

    // 6. get entities
    mock.on("GET", "/v2/crm/entities", MockResponse::json(200, json!({"requestId": "r", "crmObjectsMap": {"acc-1": {"objectId": "acc-1", "name": "Acme"}}})));
    let got = bridge.get("/records/ACCOUNT?ids=acc-1").await?.expect(200);
    assert_eq!(got["objects"]["acc-1"]["name"], "Acme", "{got}");
    let asked = mock.received_on("GET", "/v2/crm/entities");
    assert_eq!(asked.len(), 1);

    // 7. request status: final, and "where is my record" follows it.
    let status = bridge.get("/requests/up-1").await?.expect(200);
    assert_eq!(status["status"], "DONE", "{status}");
    let polled = mock.received_on("GET", "/v2/crm/request-status");
    assert_eq!(polled.len(), 1);
    assert_eq!(polled[0].query_param("clientRequestId"), Some("up-1"));
    let listed = bridge.get("/requests").await?.expect(200);
    assert!(
        listed["requests"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["clientRequestId"] == "up-1" && r["status"] == "DONE")),
        "{listed}"
    );

    // 8. delete the integration (asynchronous, tracked)
    let deleted = bridge
        .call(
            "DELETE",
            "/integration",
            &[("idempotency-key", "del-1")],
            Vec::new(),
        )
        .await?;
    assert_eq!(deleted.header("location"), Some("/requests/del-1"));
    assert_eq!(deleted.expect(202)["status"], "PENDING");
    let delete = mock.received_on("DELETE", "/v2/crm/integrations");
    assert_eq!(delete.len(), 1);
    assert_eq!(delete[0].query_param("integrationId"), Some(id.as_str()));
    assert_eq!(
        mock.request_count(),
        8,
        "one Gong call per operation: {:?}",
        mock.received()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// A bridge whose one `GET /v2/crm/integrations` gets `response`; returns the problem body.
async fn list_with(
    ctx: &Ctx,
    mock: &MockGong,
    response: MockResponse,
    status: u16,
) -> anyhow::Result<serde_json::Value> {
    mock.on("GET", "/v2/crm/integrations", response);
    let spin = ctx.start(&ctx.options(mock), "spin").await?;
    let body = spin.bridge.get("/integration").await?.expect(status);
    Ok(body)
}

pub async fn gong_401_is_a_502_about_credentials(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let body = list_with(
        ctx,
        &mock,
        MockResponse::json(
            401,
            json!({"requestId": "r401", "errors": ["bad credentials"]}),
        ),
        502,
    )
    .await?;
    assert_eq!(body["gongStatus"], 401, "{body}");
    assert_eq!(body["gongRequestId"], "r401", "{body}");
    assert!(
        body["title"]
            .as_str()
            .unwrap_or_default()
            .contains("credentials"),
        "{body}"
    );
    assert!(!body.to_string().contains(GONG_ACCESS_KEY_SECRET), "{body}");
    assert_eq!(mock.request_count(), 1);
    Ok(())
}

pub async fn gong_409_on_register_adopts_the_existing_integration(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    mock.on(
        "PUT",
        "/v2/crm/integrations",
        MockResponse::json(
            409,
            json!({"requestId": "r9", "errors": ["An active integration already exists"]}),
        ),
    );
    mock.on("GET", "/v2/crm/integrations", MockResponse::json(200, json!({"requestId": "r", "integrations": [{"integrationId": "1234567890123456789", "name": "Old", "ownerEmail": "ops@acme.com"}]})));
    let spin = ctx
        .start(&ctx.options(&mock).without("integration_id"), "spin")
        .await?;
    let body = spin
        .bridge
        .call_json(
            "PUT",
            "/integration",
            &json!({"name": "New", "ownerEmail": "ops@acme.com"}),
        )
        .await?
        .expect(200);
    assert_eq!(body["adopted"], true, "{body}");
    assert_eq!(body["integrationId"], "1234567890123456789", "{body}");
    assert_eq!(mock.request_count(), 2);
    // The adopted id is what the bridge uses from now on (kept in Spin's store).
    let schema = json!([{"uniqueName": "Score", "label": "Score", "type": "NUMBER"}]);
    spin.bridge
        .call_json("POST", "/schema/ACCOUNT", &schema)
        .await?
        .expect(200);
    assert_eq!(
        mock.received_on("POST", "/v2/crm/entity-schema")[0].query_param("integrationId"),
        Some("1234567890123456789")
    );
    Ok(())
}

pub async fn gong_429_is_a_503_and_pauses_every_call(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let limited = MockResponse::json(429, json!({"requestId": "r429", "errors": ["rate limit"]}))
        .header("retry-after", "30");
    mock.on("GET", "/v2/crm/integrations", limited);
    let spin = ctx.start(&ctx.options(&mock), "spin").await?;
    let first = spin.bridge.get("/integration").await?;
    assert_eq!(first.header("retry-after"), Some("30"));
    assert_eq!(first.expect(503)["gongStatus"], 429);
    // The pause is shared through the store: the next call does not reach Gong.
    let second = spin.bridge.get("/integration").await?;
    let body = second.expect(503);
    let wait: u64 = second.header("retry-after").unwrap_or("0").parse()?;
    ensure!(
        (25..=30).contains(&wait),
        "Retry-After {wait} during Gong's 30 s pause: {body}"
    );
    assert_eq!(
        mock.request_count(),
        1,
        "no Gong call while Gong asked to wait"
    );
    Ok(())
}

pub async fn gong_500_is_a_502_and_the_file_is_kept_for_retry(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    mock.on(
        "POST",
        "/v2/crm/entities",
        MockResponse::json(
            500,
            json!({"requestId": "r500", "errors": ["internal error"]}),
        ),
    );
    let spin = ctx.start(&ctx.options(&mock), "spin").await?;
    let records =
        json!([{"objectId": "acc-1", "modifiedDate": "2024-05-01T00:00:00Z", "name": "Acme"}]);
    let failed = spin
        .bridge
        .call(
            "POST",
            "/records/ACCOUNT",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "up-500"),
            ],
            serde_json::to_vec(&records)?,
        )
        .await?
        .expect(502);
    assert_eq!(failed["gongStatus"], 500, "{failed}");
    assert_eq!(failed["gongErrors"], json!(["internal error"]), "{failed}");
    assert_eq!(failed["kept"], true, "{failed}");
    assert_eq!(failed["clientRequestId"], "up-500", "{failed}");
    // The kept file goes out again, byte for byte, under the same clientRequestId.
    let retried = spin
        .bridge
        .call("POST", "/requests/up-500/retry", &[], Vec::new())
        .await?
        .expect(202);
    assert_eq!(retried["clientRequestId"], "up-500", "{retried}");
    let uploads = mock.received_on("POST", "/v2/crm/entities");
    assert_eq!(uploads.len(), 2);
    assert_eq!(uploads[1].query_param("clientRequestId"), Some("up-500"));
    assert_eq!(
        uploads[0].part("dataFile").map(|p| p.body.clone()),
        uploads[1].part("dataFile").map(|p| p.body.clone())
    );
    Ok(())
}

pub async fn gong_timeout_is_a_504(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    mock.on(
        "GET",
        "/v2/crm/integrations",
        MockResponse::json(200, json!({"requestId": "r", "integrations": []}))
            .delay(Duration::from_secs(6)),
    );
    let spin = ctx
        .start(&ctx.options(&mock).var("gong_timeout_ms", "1000"), "spin")
        .await?;
    let reply = spin.bridge.get("/integration").await?;
    let body = reply.expect(504);
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("time"),
        "{body}"
    );
    ensure!(
        reply.elapsed < Duration::from_secs(5),
        "the 504 came after {:?}, not after gong_timeout_ms",
        reply.elapsed
    );
    assert_eq!(mock.request_count(), 1);
    Ok(())
}

/// Issue 10 finding 1, from outside: one Idempotency-Key names one request, and Gong's 409 for
/// an id the bridge never sent is not taken as "accepted".
pub async fn an_idempotency_key_names_one_request(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let spin = ctx
        .start(
            &ctx.options(&mock).var("idempotency_settle_ms", "5"),
            "spin",
        )
        .await?;
    let json = [
        ("content-type", "application/json"),
        ("idempotency-key", "key-1"),
    ];
    let accounts =
        json!([{"objectId": "a1", "modifiedDate": "2024-05-01T10:00:00Z", "name": "Acme"}]);
    let leads = json!([{"objectId": "l1", "modifiedDate": "2024-05-01T10:00:00Z", "firstName": "Ada", "lastName": "L", "emailAddress": "ada@acme.com"}]);
    spin.bridge
        .call(
            "POST",
            "/records/ACCOUNT",
            &json,
            serde_json::to_vec(&accounts)?,
        )
        .await?
        .expect(202);
    let reused = spin
        .bridge
        .call("POST", "/records/LEAD", &json, serde_json::to_vec(&leads)?)
        .await?
        .expect(422);
    assert!(
        reused["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("ACCOUNT"),
        "{reused}"
    );
    assert_eq!(
        mock.received_on("POST", "/v2/crm/entities").len(),
        1,
        "the leads were not reported as sent"
    );

    mock.on(
        "POST",
        "/v2/crm/entities",
        MockResponse::json(
            409,
            json!({"requestId": "g409", "errors": ["clientRequestId already exists"]}),
        ),
    );
    let fresh = [
        ("content-type", "application/json"),
        ("idempotency-key", "used-elsewhere"),
    ];
    let answer = spin
        .bridge
        .call("POST", "/records/LEAD", &fresh, serde_json::to_vec(&leads)?)
        .await?
        .expect(202);
    let uploads = mock.received_on("POST", "/v2/crm/entities");
    assert_eq!(uploads.len(), 3, "the 409 was followed by a resend");
    assert_eq!(
        uploads[1].query_param("clientRequestId"),
        Some("used-elsewhere")
    );
    let resent_as = uploads[2]
        .query_param("clientRequestId")
        .unwrap_or_default()
        .to_owned();
    ensure!(resent_as != "used-elsewhere", "resent under the same id");
    assert_eq!(answer["sentAs"], resent_as, "{answer}");
    // Following the request asks Gong about the id it really has.
    spin.bridge
        .get("/requests/used-elsewhere")
        .await?
        .expect(200);
    let polled = mock.received_on("GET", "/v2/crm/request-status");
    assert_eq!(
        polled.last().and_then(|p| p.query_param("clientRequestId")),
        Some(resent_as.as_str())
    );
    Ok(())
}
