//! Real-Spin cases of the CRM receivers: deliveries exactly as the vendors document them
//! (`src/crm/testdata/`), through `spin up`, to the mock Gong.

use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::{json, Value};

use crate::client::Bridge;
use crate::support::mock_gong::{MockGong, MockResponse};
use crate::Ctx;

const USER: &str = "pd-hook";
const PASSWORD: &str = "pd-hook-password";

fn sample(name: &str) -> Value {
    let path = format!("{}/src/crm/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn basic(password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"))
    )
}

async fn pipedrive(
    bridge: Bridge,
    body: &Value,
    password: &str,
) -> anyhow::Result<crate::client::Reply> {
    let auth = basic(password);
    bridge
        .raw(
            "POST",
            "/webhooks/pipedrive",
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            serde_json::to_vec(body)?,
        )
        .await
}

/// Every line Gong received for `object_type`: the uploaded records, in order.
fn uploaded(mock: &MockGong, object_type: &str) -> Vec<Value> {
    mock.received_on("POST", "/v2/crm/entities")
        .into_iter()
        .filter(|u| u.query_param("objectType") == Some(object_type))
        .filter_map(|u| u.part("dataFile").map(|p| p.lines()))
        .flatten()
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

/// Pipedrive's documented deal delivery reaches Gong mapped; its retry is one version; an older
/// change after a newer one leaves the newer; a delete deletes; wrong auth is 401 and stores
/// nothing; an unmappable record is 202 and in the failure store.
pub async fn pipedrive_deliveries_reach_gong_mapped(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let options = ctx
        .options(&mock)
        .var("pipedrive_webhook_user", USER)
        .var("pipedrive_webhook_password", PASSWORD);
    let spin = ctx.start(&options, "spin").await?;
    let bridge = spin.bridge;

    let refused = pipedrive(bridge, &sample("pipedrive/deal_create.json"), "wrong").await?;
    refused.expect(401);
    ensure!(
        crate::harness::sqlite_keys_with_prefix(&spin.state_dir, "inbox/") == Some(0),
        "a refused delivery stored nothing"
    );

    let created = sample("pipedrive/deal_create.json");
    for _ in 0..2 {
        let reply = pipedrive(bridge, &created, PASSWORD).await?.expect(202);
        ensure!(reply["accepted"] == 1, "{reply}");
    }
    bridge.force_flush().await?.expect(200);
    let deals = uploaded(&mock, "DEAL");
    ensure!(deals.len() == 1, "a re-delivery is one version: {deals:?}");
    let deal = &deals[0];
    for (field, value) in [
        ("objectId", json!("8")),
        ("name", json!("Sample Org deal")),
        ("status", json!("OPEN")),
        ("stage", json!("2")),
        ("accountId", json!("1")),
        ("ownerId", json!("12415231")),
        ("amount", json!(100)),
    ] {
        ensure!(deal[field] == value, "{field} of the uploaded deal: {deal}");
    }

    // A newer change, then an older one arriving late: the newer stays.
    let mut newer = created.clone();
    newer["meta"]["action"] = json!("change");
    newer["data"]["update_time"] = json!("2024-01-02T00:00:00Z");
    newer["data"]["status"] = json!("won");
    let mut older = newer.clone();
    older["data"]["update_time"] = json!("2024-01-01T00:00:00Z");
    older["data"]["status"] = json!("lost");
    pipedrive(bridge, &newer, PASSWORD).await?.expect(202);
    pipedrive(bridge, &older, PASSWORD).await?.expect(202);
    bridge.force_flush().await?.expect(200);
    let last = uploaded(&mock, "DEAL").last().cloned().unwrap_or_default();
    ensure!(
        last["status"] == "WON" && last["modifiedDate"] == "2024-01-02T00:00:00Z",
        "the newest change is the last one sent: {last}"
    );

    // Pipedrive's own delete example.
    let mut deleted = sample("pipedrive/deal_delete.json");
    deleted["meta"]["timestamp"] = json!("2024-02-01T00:00:00.000Z");
    pipedrive(bridge, &deleted, PASSWORD).await?.expect(202);
    bridge.force_flush().await?.expect(200);
    let last = uploaded(&mock, "DEAL").last().cloned().unwrap_or_default();
    ensure!(
        last["isDeleted"] == true && last["objectId"] == "8",
        "the delete: {last}"
    );

    // Unmappable: 202, and in the failure store with the field and the rule.
    let mut bad = sample("pipedrive/organization_create.json");
    bad["data"]["website"] = json!("not a website");
    let reply = pipedrive(bridge, &bad, PASSWORD).await?.expect(202);
    ensure!(reply["rejected"] == 1, "{reply}");
    let mut failures = Value::Null;
    for _ in 0..20 {
        bridge.force_flush().await?.expect(200);
        failures = bridge.get("/failures").await?.expect(200);
        if failures["total"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let why = failures["failures"][0]["description"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        why.contains("domains") && why.contains("convert.domain"),
        "the failure store names the field and the rule: {failures}"
    );
    let metrics = bridge.get("/metrics").await?.text();
    for line in [
        r#"gcb_crm_total{source="pipedrive",event="records_rejected"} 1"#,
        r#"gcb_crm_total{source="pipedrive",event="refused"} 1"#,
    ] {
        ensure!(metrics.contains(line), "/metrics lacks {line}:\n{metrics}");
    }
    println!("real-spin: pipedrive: documented deal -> DEAL 8 mapped, re-delivery once, newer kept, delete sent, bad website -> failure store");
    Ok(())
}

/// A Pipedrive bulk edit: 5,000 single-record deliveries from 50 connections at 1,024 keys, each
/// sent once: every first attempt 2xx within 10 s, every latest version in Gong.
pub async fn a_pipedrive_bulk_edit_of_5000_at_1024_keys_is_accepted(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let options = ctx
        .options(&mock)
        .var("kv_max_keys", "1024")
        .var("pipedrive_webhook_user", USER)
        .var("pipedrive_webhook_password", PASSWORD);
    let spin = ctx.start(&options, "spin").await?;
    let bridge = spin.bridge;
    let template = sample("pipedrive/person_create.json");
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(50));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..5_000u32 {
        let mut body = template.clone();
        body["data"]["id"] = json!(i);
        body["data"]["first_name"] = json!(format!("Person {i}"));
        body["data"]["update_time"] = json!("2024-03-01T00:00:00Z");
        body["meta"]["id"] = json!(format!("bulk-{i}"));
        body["meta"]["entity_id"] = json!(i.to_string());
        body["meta"]["is_bulk_edit"] = json!(true);
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let auth = basic(PASSWORD);
            let sent = crate::client::send(
                bridge.addr,
                "POST",
                "/webhooks/pipedrive",
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                serde_json::to_vec(&body)?,
                Duration::from_secs(10),
            )
            .await;
            anyhow::Ok(match sent {
                Ok(reply) if reply.status == 202 => None,
                Ok(reply) => Some(format!("{} {}", reply.status, reply.text())),
                Err(e) => Some(format!("no answer within 10 s: {e:#}")),
            })
        });
    }
    let mut refused = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        refused.extend(joined??);
    }
    let seconds = started.elapsed().as_secs_f64();
    for _ in 0..10 {
        bridge.force_flush().await?.expect(200);
        if uploaded(&mock, "CONTACT").len() >= 5_000 {
            break;
        }
    }
    let contacts = uploaded(&mock, "CONTACT");
    let uploads = mock.received_on("POST", "/v2/crm/entities").len();
    println!("burst: 5000 Pipedrive deliveries, {} refused, {uploads} uploads, {seconds:.1} s (SQLite, kv_max_keys=1024)", refused.len());
    ensure!(
        refused.is_empty(),
        "{} first attempts not 2xx in time, e.g. {:?}",
        refused.len(),
        &refused[..refused.len().min(3)]
    );
    let ids: std::collections::BTreeSet<&str> = contacts
        .iter()
        .filter_map(|c| c["objectId"].as_str())
        .collect();
    ensure!(
        ids.len() == 5_000,
        "{} of 5000 persons reached Gong",
        ids.len()
    );
    Ok(())
}

const CLOSE_KEY: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

async fn close(
    bridge: Bridge,
    body: &Value,
    key_hex: &str,
) -> anyhow::Result<crate::client::Reply> {
    use hmac::Mac;
    let body = serde_json::to_vec(body)?;
    let timestamp = crate::client::unix_now().to_string();
    let key = hex::decode(key_hex).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key)?;
    mac.update(timestamp.as_bytes());
    mac.update(&body);
    let hash = hex::encode(mac.finalize().into_bytes());
    bridge
        .raw(
            "POST",
            "/webhooks/close",
            &[
                ("close-sig-hash", hash.as_str()),
                ("close-sig-timestamp", timestamp.as_str()),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await
}

/// Close's documented deliveries reach Gong mapped: the won opportunity as a DEAL (cents to
/// units), the created lead as an ACCOUNT with its contact; a wrong key is 401.
pub async fn close_deliveries_reach_gong_mapped(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let options = ctx
        .options(&mock)
        .var("close_webhook_signature_key", CLOSE_KEY);
    let spin = ctx.start(&options, "spin").await?;
    let bridge = spin.bridge;
    close(
        bridge,
        &sample("close/opportunity_updated_won.json"),
        &"0".repeat(64),
    )
    .await?
    .expect(401);
    let won = close(
        bridge,
        &sample("close/opportunity_updated_won.json"),
        CLOSE_KEY,
    )
    .await?
    .expect(202);
    ensure!(won["accepted"] == 1, "{won}");
    let lead = close(bridge, &sample("close/lead_created.json"), CLOSE_KEY)
        .await?
        .expect(202);
    ensure!(lead["accepted"] == 2, "the lead and its contact: {lead}");
    bridge.force_flush().await?.expect(200);
    let deal = uploaded(&mock, "DEAL").pop().unwrap_or_default();
    ensure!(
        deal["amount"] == 1000.0 && deal["status"] == "WON" && deal["closeDate"] == "2019-01-15",
        "the won opportunity: {deal}"
    );
    let account = uploaded(&mock, "ACCOUNT").pop().unwrap_or_default();
    let contact = uploaded(&mock, "CONTACT").pop().unwrap_or_default();
    ensure!(
        account["name"] == "Bluth Company"
            && contact["accountId"] == account["objectId"]
            && contact["emailAddress"] == "gob@example.com",
        "{account} {contact}"
    );
    println!("real-spin: close: won opportunity -> DEAL (1000.0, WON), lead -> ACCOUNT + CONTACT of it, wrong key -> 401");
    Ok(())
}

const ATTIO_SECRET: &str = "attio-webhook-secret-for-the-suite";

async fn attio(bridge: Bridge, body: &Value) -> anyhow::Result<crate::client::Reply> {
    use hmac::Mac;
    let body = serde_json::to_vec(body)?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(ATTIO_SECRET.as_bytes())?;
    mac.update(&body);
    let signature = hex::encode(mac.finalize().into_bytes());
    bridge
        .raw(
            "POST",
            "/webhooks/attio",
            &[
                ("attio-signature", signature.as_str()),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await
}

/// Attio's documented notification, answered first and fetched after, with Attio's API (a second
/// recording mock, answering as Attio documents) failing (500, then a refused token) and then
/// recovering: nothing is lost, the person reaches Gong mapped, `/healthz` says what is wrong
/// while it is.
pub async fn attio_notifications_are_fetched_and_survive_an_api_outage(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let gong = MockGong::start().await;
    let attio_api = MockGong::start().await;
    let options = ctx
        .options(&gong)
        .var("attio_webhook_secret", ATTIO_SECRET)
        .var("attio_api_token", "attio-api-token")
        .var("attio_base_url", &attio_api.base_url());
    let spin = ctx.start(&options, "spin").await?;
    let bridge = spin.bridge;
    let object_path = "/v2/objects/97052eb9-e65e-443f-a297-f2d9a4a7f795";
    let record_path = "/v2/objects/people/records/bf071e1f-6035-429d-b874-d83ea64ea13b";
    // Down first: a 500, then a refused token.
    attio_api.on(
        "GET",
        object_path,
        MockResponse::json(500, json!({"message": "boom"})),
    );
    attio_api.on(
        "GET",
        object_path,
        MockResponse::json(
            401,
            json!({"status_code": 401, "type": "auth_error", "message": "invalid token"}),
        ),
    );
    let reply = attio(bridge, &sample("attio/webhook_record_updated.json"))
        .await?
        .expect(202);
    ensure!(reply["queued"] == 1, "{reply}");
    let mut health = Value::Null;
    for _ in 0..100 {
        bridge.force_flush().await?;
        health = bridge.raw("GET", "/healthz", &[], Vec::new()).await?.json();
        if health["status"] == "degraded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        health["status"] == "degraded"
            && health["sources"][0]["problem"]
                .as_str()
                .unwrap_or_default()
                .contains("attio_api_token"),
        "/healthz while the token is refused: {health}"
    );
    ensure!(uploaded(&gong, "CONTACT").is_empty(), "nothing sent yet");
    // Recovered: Attio answers as it documents.
    attio_api.always(
        "GET",
        object_path,
        MockResponse::json(200, sample("attio/get_object_people.json")),
    );
    attio_api.always(
        "GET",
        record_path,
        MockResponse::json(200, sample("attio/get_record_person.json")),
    );
    let mut contacts = Vec::new();
    for _ in 0..100 {
        bridge.force_flush().await?.expect(200);
        contacts = uploaded(&gong, "CONTACT");
        if !contacts.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let contact = contacts.first().cloned().unwrap_or_default();
    ensure!(
        contact["emailAddress"] == "john-smith@attio.com"
            && contact["objectId"] == "bf071e1f-6035-429d-b874-d83ea64ea13b",
        "the person in Gong: {contact}"
    );
    let health = bridge.raw("GET", "/healthz", &[], Vec::new()).await?.json();
    ensure!(health["status"] == "ok", "recovered: {health}");
    ensure!(
        attio_api
            .received()
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer attio-api-token")),
        "every read carries the token"
    );
    println!("real-spin: attio: notification answered first; Attio 500 then 401 (healthz degraded) then recovered -> CONTACT in Gong, {} Attio calls", attio_api.request_count());
    Ok(())
}
