//! Real-Spin cases of the CRM receivers: deliveries exactly as the vendors document them
//! (`src/crm/testdata/`), through `spin up`, to the mock Gong.

use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::{json, Value};

use crate::client::Bridge;
use crate::support::mock_gong::MockGong;
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
    pipedrive_bulk_edit("SQLite, kv_max_keys=1024", &[spin.bridge], &mock).await
}

/// The same bulk edit spread over two replicas on one Redis (SpinKube): nothing refused, every
/// person in Gong, the key count within the cap.
pub async fn a_pipedrive_bulk_edit_of_5000_is_accepted_by_two_redis_replicas(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let redis = crate::harness::Redis::start(&ctx.dir.join("redis"), 4).await?;
    let mock = MockGong::start().await;
    let options = ctx
        .options(&mock)
        .redis(&redis.url)
        .var("kv_max_keys", "1024")
        .var("pipedrive_webhook_user", USER)
        .var("pipedrive_webhook_password", PASSWORD);
    let a = ctx.start(&options, "replica-a").await?;
    let b = ctx.start(&options, "replica-b").await?;
    pipedrive_bulk_edit(
        "two replicas on Redis, kv_max_keys=1024",
        &[a.bridge, b.bridge],
        &mock,
    )
    .await?;
    let keys = redis.key_count()?;
    ensure!(keys <= 1_024, "{keys} Redis keys after the burst");
    Ok(())
}

async fn pipedrive_bulk_edit(
    setting: &str,
    bridges: &[Bridge],
    mock: &MockGong,
) -> anyhow::Result<()> {
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
        let bridge = bridges[i as usize % bridges.len()];
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
    for round in 0..20 {
        bridges[round % bridges.len()].force_flush().await?;
        if uploaded(mock, "CONTACT").len() >= 5_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let contacts = uploaded(mock, "CONTACT");
    let uploads = mock.received_on("POST", "/v2/crm/entities").len();
    println!(
        "burst: 5000 Pipedrive deliveries, {} refused, {uploads} uploads, {seconds:.1} s ({setting})",
        refused.len()
    );
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
/// units), the created lead as an ACCOUNT with its contact. Its retry is one version; an older
/// change after a newer leaves the newer; a delete and a merge delete; a wrong key is 401 and
/// stores nothing; an unmappable opportunity is 202 and in the failure store.
pub async fn close_deliveries_reach_gong_mapped(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let options = ctx
        .options(&mock)
        .var("close_webhook_signature_key", CLOSE_KEY);
    let spin = ctx.start(&options, "spin").await?;
    let bridge = spin.bridge;
    let won_sample = sample("close/opportunity_updated_won.json");
    close(bridge, &won_sample, &"0".repeat(64))
        .await?
        .expect(401);
    ensure!(
        crate::harness::sqlite_keys_with_prefix(&spin.state_dir, "inbox/") == Some(0),
        "a refused delivery stored nothing"
    );
    for _ in 0..2 {
        let won = close(bridge, &won_sample, CLOSE_KEY).await?.expect(202);
        ensure!(won["accepted"] == 1, "{won}");
    }
    // An older copy of the same opportunity (an earlier date_updated, another name) after it.
    let mut older = won_sample.clone();
    older["event"]["id"] = json!("ev_older");
    older["event"]["date_updated"] = json!("2019-01-15T12:40:00.000000");
    older["event"]["data"]["date_updated"] = json!("2019-01-15T12:40:00.000000+00:00");
    older["event"]["data"]["lead_name"] = json!("Older name");
    close(bridge, &older, CLOSE_KEY).await?.expect(202);
    let lead = close(bridge, &sample("close/lead_created.json"), CLOSE_KEY)
        .await?
        .expect(202);
    ensure!(lead["accepted"] == 2, "the lead and its contact: {lead}");
    let deleted = json!({"subscription_id": "whsub_1", "event": {"id": "ev_del", "object_type": "contact", "object_id": "cont_gone", "action": "deleted", "date_updated": "2024-05-01T10:00:00.123456", "data": null}});
    close(bridge, &deleted, CLOSE_KEY).await?.expect(202);
    let merged = json!({"subscription_id": "whsub_1", "event": {"id": "ev_merge", "object_type": "lead", "object_id": "lead_dest", "action": "merged", "date_updated": "2024-05-01T10:00:00",
        "meta": {"merge_source_lead_id": "lead_src", "merge_destination_lead_id": "lead_dest"},
        "data": {"id": "lead_dest", "display_name": "Dest", "date_updated": "2024-05-01T10:00:00+00:00", "contacts": []}}});
    close(bridge, &merged, CLOSE_KEY).await?.expect(202);
    let mut unmappable = won_sample.clone();
    unmappable["event"]["id"] = json!("ev_bad");
    unmappable["event"]["object_id"] = json!("oppo_bad");
    unmappable["event"]["data"]["id"] = json!("oppo_bad");
    unmappable["event"]["data"]["value"] = json!("a lot");
    let bad = close(bridge, &unmappable, CLOSE_KEY).await?.expect(202);
    ensure!(bad["rejected"] == 1, "{bad}");

    let lines = flush_until(
        bridge,
        || {
            (
                uploaded(&mock, "DEAL"),
                uploaded(&mock, "ACCOUNT"),
                uploaded(&mock, "CONTACT"),
            )
        },
        |(d, a, c)| !d.is_empty() && a.len() >= 2 && c.len() >= 2,
    )
    .await?;
    let (deals, accounts, contacts) = lines;
    let won_id = won_sample["event"]["data"]["id"]
        .as_str()
        .unwrap_or_default();
    let versions: Vec<&Value> = deals.iter().filter(|d| d["objectId"] == won_id).collect();
    ensure!(
        versions.len() == 1
            && versions[0]["amount"] == 1000.0
            && versions[0]["status"] == "WON"
            && versions[0]["closeDate"] == "2019-01-15"
            && versions[0]["name"] != "Older name – Won",
        "one version of the won opportunity, the newer: {deals:?}"
    );
    ensure!(
        deals.iter().all(|d| d["objectId"] != "oppo_bad"),
        "the unmappable one is not sent: {deals:?}"
    );
    let account = accounts
        .iter()
        .find(|a| a["name"] == "Bluth Company")
        .cloned()
        .unwrap_or_default();
    ensure!(
        contacts.iter().any(
            |c| c["accountId"] == account["objectId"] && c["emailAddress"] == "gob@example.com"
        ),
        "{account} {contacts:?}"
    );
    ensure!(
        contacts
            .iter()
            .any(|c| c["objectId"] == "cont_gone" && c["isDeleted"] == true),
        "the deleted contact: {contacts:?}"
    );
    ensure!(
        accounts
            .iter()
            .any(|a| a["objectId"] == "lead_src" && a["isDeleted"] == true)
            && accounts
                .iter()
                .any(|a| a["objectId"] == "lead_dest" && a["isDeleted"] != true),
        "the merge: source deleted, destination kept: {accounts:?}"
    );
    let failures = bridge.get("/failures").await?.expect(200);
    ensure!(failures.to_string().contains("oppo_bad"), "{failures}");
    println!("real-spin: close: won opportunity -> DEAL (1000.0, WON) once, older copy kept out, lead -> ACCOUNT + CONTACT, delete and merge, unmappable -> failure store, wrong key -> 401");
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

/// Flushes until `done` holds (or about 20 s pass), answering the last state seen.
async fn flush_until<T>(
    bridge: Bridge,
    mut look: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> anyhow::Result<T> {
    let mut seen = look();
    for _ in 0..80 {
        if done(&seen) {
            break;
        }
        bridge.force_flush().await?;
        tokio::time::sleep(Duration::from_millis(250)).await;
        seen = look();
    }
    Ok(seen)
}

/// Attio's documented notification, answered first and fetched after, against the mock of
/// Attio's API (`tests/support/mock_attio.rs`) failing every way it documents and recovering:
/// a 500, a refused token (`/healthz` degraded while it lasts), a 429 whose `Retry-After` is an
/// HTTP-date, a slow answer, a record being merged (404 `merge_in_progress`: waited for, never
/// deleted), and finally a record gone (404 `not_found`: deleted in Gong). Nothing is lost.
pub async fn attio_notifications_are_fetched_and_survive_an_api_outage(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    use crate::support::mock_attio::MockAttio;
    let gong = MockGong::start().await;
    let attio_api = MockAttio::start("attio-api-token").await;
    attio_api.add_object(sample("attio/get_object_people.json")["data"].clone());
    attio_api.put_record(
        "people",
        sample("attio/get_record_person.json")["data"].clone(),
    );
    let options = ctx
        .options(&gong)
        .var("attio_webhook_secret", ATTIO_SECRET)
        .var("attio_api_token", "attio-api-token")
        .var("attio_base_url", &attio_api.base_url());
    let spin = ctx.start(&options, "spin").await?;
    let bridge = spin.bridge;
    let object_path = "/v2/objects/97052eb9-e65e-443f-a297-f2d9a4a7f795";
    let record_id = "bf071e1f-6035-429d-b874-d83ea64ea13b";
    let record_path = format!("/v2/objects/people/records/{record_id}");
    let contacts = || uploaded(&gong, "CONTACT");

    // Down first: a 500, then the token refused.
    attio_api.fail_next(object_path);
    attio_api.set_token("rotated-token");
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
    ensure!(contacts().is_empty(), "nothing sent yet");

    // Recovered, but rate limited (Retry-After as a date) and then slow.
    attio_api.set_token("attio-api-token");
    attio_api.rate_limit_next(&record_path, Duration::from_secs(1));
    attio_api.slow_next(&record_path, Duration::from_secs(2));
    let seen = flush_until(bridge, contacts, |c| !c.is_empty()).await?;
    let contact = seen.first().cloned().unwrap_or_default();
    ensure!(
        contact["emailAddress"] == "john-smith@attio.com" && contact["objectId"] == record_id,
        "the person in Gong: {contact}"
    );
    let health = bridge.raw("GET", "/healthz", &[], Vec::new()).await?.json();
    ensure!(health["status"] == "ok", "recovered: {health}");
    let record_reads = |api: &MockAttio| {
        api.received()
            .iter()
            .filter(|r| r.path == record_path)
            .map(|r| r.header("authorization").unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    ensure!(
        record_reads(&attio_api).len() == 2,
        "the 429, then the slow answer that reached Gong: {:?}",
        record_reads(&attio_api)
    );

    // Being merged: Attio answers 404 merge_in_progress until it is done; never a delete.
    attio_api.set_merging(record_id, true);
    tokio::time::sleep(Duration::from_millis(1_100)).await; // a new second: a new version
    attio(bridge, &sample("attio/webhook_record_updated.json"))
        .await?
        .expect(202);
    let reads_before = record_reads(&attio_api).len();
    flush_until(
        bridge,
        || record_reads(&attio_api).len(),
        |n| *n > reads_before,
    )
    .await?;
    bridge.force_flush().await?;
    ensure!(
        contacts().iter().all(|c| c["isDeleted"] != true),
        "a record being merged is not deleted: {:?}",
        contacts()
    );
    attio_api.set_merging(record_id, false);
    let seen = flush_until(bridge, contacts, |c| c.len() >= 2).await?;
    ensure!(
        seen.len() == 2 && seen.iter().all(|c| c["isDeleted"] != true),
        "after the merge, the person again, not deleted: {seen:?}"
    );

    // Gone: 404 not_found deletes it in Gong.
    attio_api.remove_record("people", record_id);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    attio(bridge, &sample("attio/webhook_record_updated.json"))
        .await?
        .expect(202);
    let seen = flush_until(bridge, contacts, |c| {
        c.iter().any(|c| c["isDeleted"] == true)
    })
    .await?;
    ensure!(
        seen.iter()
            .any(|c| c["objectId"] == record_id && c["isDeleted"] == true),
        "deleted in Gong: {seen:?}"
    );
    ensure!(
        attio_api
            .received()
            .iter()
            .all(|r| matches!(r.header("authorization"), Some("Bearer attio-api-token"))),
        "every read carries the configured token"
    );
    println!(
        "real-spin: attio: answered first; Attio 500, 401 (healthz degraded), 429 with an HTTP-date, slow, merge_in_progress (no delete), then recovered and a 404 delete; {} Attio calls, {} CONTACT lines in Gong",
        attio_api.received().len(),
        contacts().len()
    );
    Ok(())
}

/// A custom source end to end (docs/crm/custom.md): its mapping stored with a custom field (the
/// schema reaches Gong first), deliveries by token and by Standard Webhooks signature, a retry
/// is one version, an older change after a newer leaves the newer, a delete deletes, wrong auth
/// is 401 and stores nothing, a value the picklist lacks is 202 and in the failure store, and the
/// custom field's value is in the line Gong receives.
pub async fn a_custom_source_with_a_custom_field_reaches_gong(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let options = ctx
        .options(&mock)
        .var("custom_webhook_token", "zoho-token-1");
    let spin = ctx.start(&options, "spin").await?;
    let bridge = spin.bridge;
    let mapping = json!({
        "delivery": {"records": "/data", "object": "/$event/module", "action": "/$event/operation"},
        "objects": [{"from": "Deals", "to": "DEAL", "idPrefix": "zoho-", "fields": {
            "objectId": {"path": "/id", "convert": "id"},
            "modifiedDate": {"path": "/Modified_Time", "convert": "datetime"},
            "name": {"path": "/Deal_Name"},
            "leadSource": {"path": "/Lead_Source", "schema": {"type": "PICKLIST", "label": "Lead source", "values": ["Web", "Partner"]}}
        }}]
    });
    let deal = |id: &str, at: &str, name: &str, source: &str| {
        json!({"module": "Deals", "operation": "update", "data": [
            {"id": id, "Modified_Time": at, "Deal_Name": name, "Lead_Source": source}]})
    };
    let by_token = |token: &'static str, body: Value| async move {
        bridge
            .raw(
                "POST",
                "/webhooks/custom/zoho",
                &[
                    ("x-webhook-token", token),
                    ("content-type", "application/json"),
                ],
                serde_json::to_vec(&body)?,
            )
            .await
    };
    // Before the mapping: 404, saying what to do.
    let early = by_token(
        "zoho-token-1",
        deal("1", "2026-12-01T10:00:00Z", "A", "Web"),
    )
    .await?;
    ensure!(
        early.status == 404 && early.text().contains("PUT /mappings/zoho"),
        "{}",
        early.text()
    );

    let stored = bridge
        .call_json("PUT", "/mappings/zoho", &mapping)
        .await?
        .expect(200);
    let refused = by_token("wrong-token", deal("4", "2026-12-01T10:00:00Z", "D", "Web")).await?;
    ensure!(refused.status == 401, "wrong token: {}", refused.status);
    ensure!(
        crate::harness::sqlite_keys_with_prefix(&spin.state_dir, "inbox/") == Some(0),
        "a refused delivery stored nothing"
    );
    let schema = mock.received_on("POST", "/v2/crm/entity-schema");
    ensure!(
        schema.len() == 1
            && schema[0].query_param("objectType") == Some("DEAL")
            && schema[0].json()[0]["uniqueName"] == "leadSource",
        "one DEAL schema upload with the field: {:?} / {stored}",
        schema.iter().map(|r| r.text()).collect::<Vec<_>>()
    );

    by_token(
        "zoho-token-1",
        deal("1", "2026-12-01T10:00:00Z", "A v1", "Web"),
    )
    .await?
    .expect(202);
    by_token(
        "zoho-token-1",
        deal("1", "2026-12-01T10:00:00Z", "A v1", "Web"),
    )
    .await?
    .expect(202);
    by_token(
        "zoho-token-1",
        deal("2", "2026-12-01T11:00:00Z", "B new", "Partner"),
    )
    .await?
    .expect(202);
    // Signed with Standard Webhooks instead of the token; then an older copy of B.
    let older = serde_json::to_vec(&deal("2", "2026-12-01T09:00:00Z", "B old", "Web"))?;
    let (ts, signature) = crate::support::signing::signed_now("zoho-msg-1", &older);
    bridge
        .raw(
            "POST",
            "/webhooks/custom/zoho",
            &[
                ("webhook-id", "zoho-msg-1"),
                ("webhook-timestamp", ts.as_str()),
                ("webhook-signature", signature.as_str()),
                ("content-type", "application/json"),
            ],
            older,
        )
        .await?
        .expect(202);
    let deleted = json!({"module": "Deals", "operation": "delete", "data": {"id": "3", "Modified_Time": "2026-12-01T12:00:00Z"}});
    by_token("zoho-token-1", deleted).await?.expect(202);
    let bad = by_token(
        "zoho-token-1",
        deal("5", "2026-12-01T10:00:00Z", "E", "Fax"),
    )
    .await?
    .expect(202);
    ensure!(bad["rejected"] == 1, "{bad}");

    let lines = flush_until(bridge, || uploaded(&mock, "DEAL"), |l| l.len() >= 3).await?;
    let of = |id: &str| {
        lines
            .iter()
            .filter(|l| l["objectId"] == id)
            .cloned()
            .collect::<Vec<_>>()
    };
    ensure!(
        of("zoho-1").len() == 1 && of("zoho-1")[0]["leadSource"] == "Web",
        "one version of zoho-1, with its custom field: {lines:?}"
    );
    ensure!(
        of("zoho-2").len() == 1 && of("zoho-2")[0]["name"] == "B new",
        "the newer B stays: {lines:?}"
    );
    ensure!(
        of("zoho-3").first().is_some_and(|l| l["isDeleted"] == true),
        "{lines:?}"
    );
    ensure!(
        of("zoho-4").is_empty() && of("zoho-5").is_empty(),
        "{lines:?}"
    );
    let failures = bridge.get("/failures").await?.expect(200);
    ensure!(failures.to_string().contains("zoho-5"), "{failures}");
    println!(
        "real-spin: custom source: 1 schema upload, {} DEAL lines, 1 in the failure store, 401 for a wrong token",
        lines.len()
    );
    Ok(())
}
