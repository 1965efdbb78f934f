//! Real-Spin cases for webhooks on Spin's SQLite store: signatures, exactly-once effect,
//! batching, a SIGKILL restart, time to answer, a large delivery, and Spin 3.6.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure};
use serde_json::{json, Value};

use crate::client::{unix_now, Bridge, Reply, CALL_TIMEOUT};
use crate::harness::{sqlite_key_count, sqlite_keys_with_prefix, SpinProcess};
use crate::support::mock_gong::{MockGong, MockResponse};
use crate::support::signing::WEBHOOK_SECRET_BYTES;
use crate::Ctx;

/// A `record.upserted` delivery of one ACCOUNT record.
pub fn upsert(object_id: &str, modified: &str, name: &str) -> Value {
    json!({"type": "record.upserted", "timestamp": "2024-01-01T00:00:00Z",
           "data": {"objectType": "ACCOUNT", "record": {"objectId": object_id, "modifiedDate": modified, "name": name}}})
}

/// `2024-01-01T00:00:00Z` plus `seconds`.
pub fn modified_at(seconds: u32) -> String {
    format!(
        "2024-01-01T{:02}:{:02}:{:02}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// Every record line Gong received in uploads, in arrival order: (objectId, modifiedDate).
pub fn uploaded_versions(mock: &MockGong) -> anyhow::Result<Vec<(String, String)>> {
    let mut versions = Vec::new();
    for upload in mock.received_on("POST", "/v2/crm/entities") {
        let Some(part) = upload.part("dataFile") else {
            bail!(
                "an upload without a dataFile part: {:?}",
                upload.multipart_error
            )
        };
        for line in part.lines() {
            let record: Value = serde_json::from_str(&line)?;
            versions.push((
                record["objectId"].as_str().unwrap_or_default().to_owned(),
                record["modifiedDate"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
    }
    Ok(versions)
}

/// "N Gong calls (U uploads of R records, P status polls)" for a case's closing line.
pub fn upload_report(mock: &MockGong) -> String {
    let uploads = mock.received_on("POST", "/v2/crm/entities");
    let records: usize = uploads
        .iter()
        .filter_map(|u| u.part("dataFile"))
        .map(|p| p.lines().len())
        .sum();
    let polls = mock.received_on("GET", "/v2/crm/request-status").len();
    format!(
        "{} Gong calls ({} uploads of {records} records, {polls} status polls)",
        mock.request_count(),
        uploads.len()
    )
}

/// Delivers each `(webhook-id, body)` to `bridges` in turn (delivery `i` to bridge `i % n`),
/// `concurrency` at a time. Like a real sender, a 409 (in progress) or 503 with `Retry-After` is
/// retried (a few times, shortly). Returns the final reply of each delivery, in input order.
pub async fn deliver_all(
    bridges: &[Bridge],
    deliveries: Vec<(String, Value)>,
    concurrency: usize,
) -> anyhow::Result<Vec<Reply>> {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (id, body)) in deliveries.into_iter().enumerate() {
        let bridge = bridges[index % bridges.len()];
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let mut attempt = 0;
            loop {
                let reply = bridge.webhook(&id, &body).await?;
                let retry =
                    matches!(reply.status, 409 | 503) && reply.header("retry-after").is_some();
                if !retry || attempt == 5 {
                    return anyhow::Ok((index, reply));
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
        });
    }
    let mut replies: Vec<Option<Reply>> = vec![None; tasks.len()];
    while let Some(joined) = tasks.join_next().await {
        let (index, reply) = joined??;
        replies[index] = Some(reply);
    }
    Ok(replies.into_iter().flatten().collect())
}

/// A deterministic shuffle (a fixed-seed LCG), so that versions arrive out of order.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    for i in (1..items.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        items.swap(i, (state >> 33) as usize % (i + 1));
    }
}

/// Flushes with `force` until no record of `ids` is waiting in the bridge (at most 10 rounds).
pub async fn flush_until_sent(bridges: &[Bridge], ids: &BTreeSet<String>) -> anyhow::Result<()> {
    for _ in 0..10 {
        for bridge in bridges {
            bridge.force_flush().await?.expect(200);
        }
        let mut waiting = 0;
        for id in ids {
            // A 404 is not "waiting" (issue 10 finding 6: a record of a file of more than 100
            // records is not found; its own case marks that as an expected failure).
            let reply = bridges[0]
                .get(&format!("/records/ACCOUNT/{id}/status"))
                .await?;
            if reply.status == 200 && reply.json()["state"] == "waiting" {
                waiting += 1;
            }
        }
        if waiting == 0 {
            return Ok(());
        }
    }
    bail!("records still waiting in the bridge after 10 forced flushes")
}

pub async fn signed_webhook_is_buffered_then_delivered(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let spin = ctx.start(&ctx.options(&mock), "spin").await?;
    let bridge = spin.bridge;
    let reply = bridge
        .webhook("msg_1", &upsert("acc-1", "2024-05-01T10:00:00Z", "ACME"))
        .await?;
    assert_eq!(
        reply.header("location"),
        Some("/records/ACCOUNT/acc-1/status")
    );
    let body = reply.expect(202);
    assert_eq!(body["status"], "BUFFERED", "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
    ensure!(
        mock.received_on("POST", "/v2/crm/entities").is_empty(),
        "a single webhook waits for its batch"
    );
    let waiting = bridge.record_state("ACCOUNT", "acc-1").await?;
    assert_eq!(waiting["state"], "waiting", "{waiting}");

    bridge.force_flush().await?.expect(200);
    assert_eq!(
        uploaded_versions(&mock)?,
        vec![("acc-1".to_owned(), "2024-05-01T10:00:00Z".to_owned())]
    );
    // Gong's request-status says DONE (the mock's default); the bridge follows it.
    bridge.force_flush().await?.expect(200);
    let done = bridge.record_state("ACCOUNT", "acc-1").await?;
    assert_eq!(done["state"], "done", "{done}");
    Ok(())
}

pub async fn replayed_webhook_takes_effect_once(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let spin = ctx.start(&ctx.options(&mock), "spin").await?;
    let bridge = spin.bridge;
    let body = upsert("acc-1", "2024-05-01T10:00:00Z", "ACME");
    bridge.webhook("msg_replay", &body).await?.expect(202);
    bridge.webhook("msg_replay", &body).await?.expect(202);
    assert_eq!(
        bridge.record_state("ACCOUNT", "acc-1").await?["pendingVersions"],
        1,
        "buffered once"
    );
    bridge.force_flush().await?.expect(200);
    assert_eq!(
        uploaded_versions(&mock)?,
        vec![("acc-1".to_owned(), "2024-05-01T10:00:00Z".to_owned())]
    );
    // Once sent, the same version is kept out by its tombstone; an older one too.
    bridge.webhook("msg_replay", &body).await?.expect(202);
    bridge
        .webhook(
            "msg_older",
            &upsert("acc-1", "2024-04-01T10:00:00Z", "older"),
        )
        .await?
        .expect(202);
    bridge.force_flush().await?.expect(200);
    bridge.force_flush().await?.expect(200);
    assert_eq!(
        mock.received_on("POST", "/v2/crm/entities").len(),
        1,
        "sent once"
    );
    assert_eq!(
        bridge.record_state("ACCOUNT", "acc-1").await?["state"],
        "done"
    );
    Ok(())
}

pub async fn bad_signature_is_refused(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let spin = ctx.start(&ctx.options(&mock), "spin").await?;
    let bridge = spin.bridge;
    let body = serde_json::to_vec(&upsert("acc-1", "2024-05-01T10:00:00Z", "ACME"))?;
    let wrong_key = bridge
        .webhook_signed(
            b"another-secret-entirely-0123456",
            "msg_bad",
            unix_now(),
            &body,
            CALL_TIMEOUT,
        )
        .await?;
    let problem = wrong_key.expect(401);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("signature"),
        "{problem}"
    );
    // Signed correctly, then changed in transit.
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    let signature = crate::support::signing::sign_webhook_with(
        WEBHOOK_SECRET_BYTES,
        "msg_bad",
        unix_now(),
        &body,
    );
    let ts = unix_now().to_string();
    let headers = [
        ("content-type", "application/json"),
        ("webhook-id", "msg_bad"),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", signature.as_str()),
    ];
    bridge
        .raw("POST", "/webhooks", &headers, tampered)
        .await?
        .expect(401);
    bridge
        .raw(
            "POST",
            "/webhooks",
            &[("content-type", "application/json")],
            body,
        )
        .await?
        .expect(401);
    bridge
        .get("/records/ACCOUNT/acc-1/status")
        .await?
        .expect(404);
    bridge.force_flush().await?.expect(200);
    ensure!(
        mock.received().is_empty(),
        "nothing reaches Gong: {:?}",
        mock.received()
    );
    Ok(())
}

pub async fn stale_timestamp_is_refused(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let spin = ctx.start(&ctx.options(&mock), "spin").await?;
    let body = serde_json::to_vec(&upsert("acc-1", "2024-05-01T10:00:00Z", "ACME"))?;
    for skew in [-600, 600] {
        let stale = spin
            .bridge
            .webhook_signed(
                WEBHOOK_SECRET_BYTES,
                "msg_old",
                unix_now() + skew,
                &body,
                CALL_TIMEOUT,
            )
            .await?;
        let problem = stale.expect(401);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("webhook-timestamp"),
            "{problem}"
        );
    }
    spin.bridge
        .get("/records/ACCOUNT/acc-1/status")
        .await?
        .expect(404);
    Ok(())
}

pub async fn invalid_record_names_record_field_and_rule(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let spin = ctx.start(&ctx.options(&mock), "spin").await?;
    let problem = spin
        .bridge
        .webhook("msg_invalid", &upsert("acc-1", "yesterday", "ACME"))
        .await?
        .expect(422);
    let first = &problem["errors"][0];
    assert_eq!(first["objectId"], "acc-1", "{problem}");
    assert_eq!(first["field"], "modifiedDate", "{problem}");
    assert!(
        first["rule"].as_str().is_some_and(|r| !r.is_empty()),
        "{problem}"
    );
    spin.bridge
        .get("/records/ACCOUNT/acc-1/status")
        .await?
        .expect(404);
    Ok(())
}

pub async fn five_hundred_webhooks_make_at_most_two_uploads(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let spin = ctx.start(&ctx.options(&mock), "spin").await?;
    let keys_before = sqlite_key_count(&spin.state_dir);
    // 400 records; the first 100 also get a newer version; sent in shuffled order.
    let mut deliveries = Vec::new();
    let mut latest = BTreeMap::new();
    for i in 0..400u32 {
        let id = format!("acc-{i}");
        deliveries.push((format!("msg-{i}-v1"), upsert(&id, &modified_at(i), "v1")));
        latest.insert(id.clone(), modified_at(i));
        if i < 100 {
            deliveries.push((
                format!("msg-{i}-v2"),
                upsert(&id, &modified_at(i + 5000), "v2"),
            ));
            latest.insert(id, modified_at(i + 5000));
        }
    }
    shuffle(&mut deliveries, 500);
    let replies = deliver_all(&[spin.bridge], deliveries, 8).await?;
    let refused: Vec<_> = replies
        .iter()
        .filter(|r| r.status != 202)
        .map(|r| format!("{} {}", r.status, r.text()))
        .collect();
    ensure!(
        refused.is_empty(),
        "{} of 500 webhooks not accepted: {:?}",
        refused.len(),
        &refused[..refused.len().min(3)]
    );

    let ids: BTreeSet<String> = latest.keys().cloned().collect();
    flush_until_sent(&[spin.bridge], &ids).await?;
    let uploads = mock.received_on("POST", "/v2/crm/entities").len();
    ensure!(uploads <= 2, "500 webhooks made {uploads} uploads");
    let mut in_gong: BTreeMap<String, String> = BTreeMap::new();
    for (id, modified) in uploaded_versions(&mock)? {
        ensure!(
            in_gong.insert(id.clone(), modified).is_none(),
            "{id} uploaded twice"
        );
    }
    assert_eq!(
        in_gong, latest,
        "every record in Gong at its latest version"
    );
    println!(
        "real-spin: batching: 500 webhooks -> {}; SQLite keys {:?} before, {:?} after",
        upload_report(&mock),
        keys_before,
        sqlite_key_count(&spin.state_dir)
    );
    Ok(())
}

pub async fn restart_after_sigkill_loses_nothing_and_sends_nothing_twice(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let options = ctx.options(&mock);
    let mut first = ctx.start(&options, "spin").await?;
    let bridge = first.bridge;
    // A sender keeps delivering; spin is killed while deliveries are in flight.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let sender_accepted = accepted.clone();
    let sender = tokio::spawn(async move {
        for i in 0..300u32 {
            let id = format!("acc-{i}");
            match bridge
                .webhook(
                    &format!("msg-{i}"),
                    &upsert(&id, &modified_at(i), "before the kill"),
                )
                .await
            {
                Ok(reply) if reply.status == 202 => sender_accepted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(id),
                Ok(_) | Err(_) => {}
            }
        }
    });
    while accepted.lock().unwrap_or_else(|p| p.into_inner()).len() < 60 {
        ensure!(
            !sender.is_finished(),
            "the sender stopped before 60 deliveries were accepted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill();
    sender.await?;
    let accepted: Vec<String> = accepted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    ensure!(
        accepted.len() < 300,
        "spin was killed after every delivery had been answered"
    );

    // Same state directory, a new process.
    let second = SpinProcess::start(&ctx.app, &options, &first.state_dir).await?;
    // A sender that got no answer delivers again; one that did may too: both take effect once.
    for (i, id) in accepted.iter().enumerate().take(10) {
        let number: u32 = id.trim_start_matches("acc-").parse()?;
        let again = second
            .bridge
            .webhook(
                &format!("msg-{number}"),
                &upsert(id, &modified_at(number), "before the kill"),
            )
            .await?;
        ensure!(
            again.status == 202,
            "re-delivery {i} of an accepted webhook: {}",
            again.text()
        );
    }
    let ids: BTreeSet<String> = accepted.iter().cloned().collect();
    flush_until_sent(&[second.bridge], &ids).await?;
    let mut in_gong = BTreeSet::new();
    for (id, _) in uploaded_versions(&mock)? {
        ensure!(in_gong.insert(id.clone()), "{id} uploaded twice");
    }
    let missing: Vec<_> = ids.difference(&in_gong).collect();
    ensure!(
        missing.is_empty(),
        "{} accepted records never reached Gong: {:?}",
        missing.len(),
        missing
    );
    println!(
        "real-spin: restart: {} deliveries accepted before SIGKILL, {} records in Gong after the restart (10 re-delivered), none twice",
        accepted.len(),
        in_gong.len()
    );
    Ok(())
}

pub async fn webhooks_answered_within_1s_while_gong_takes_10s(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    mock.always(
        "POST",
        "/v2/crm/entities",
        MockResponse::json(201, json!({"requestId": "slow"})).delay(Duration::from_secs(10)),
    );
    // Every delivery makes a flush due at once.
    let spin = ctx
        .start(&ctx.options(&mock).var("batch_max_records", "1"), "spin")
        .await?;
    let mut slowest = Duration::ZERO;
    for i in 0..10u32 {
        let body = serde_json::to_vec(&upsert(&format!("acc-{i}"), &modified_at(i), "slow Gong"))?;
        let reply = spin
            .bridge
            .webhook_signed(
                WEBHOOK_SECRET_BYTES,
                &format!("msg-{i}"),
                unix_now(),
                &body,
                Duration::from_secs(30),
            )
            .await?;
        reply.expect(202);
        ensure!(
            reply.elapsed <= Duration::from_secs(1),
            "webhook {i} was answered after {:.1} s (at most 1 s)",
            reply.elapsed.as_secs_f64()
        );
        slowest = slowest.max(reply.elapsed);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ensure!(
        !mock.received_on("POST", "/v2/crm/entities").is_empty(),
        "the flushes due never reached Gong"
    );
    println!("real-spin: time to answer: 10 webhooks while each upload takes 10 s, slowest answer {:.0} ms", slowest.as_secs_f64() * 1000.0);
    Ok(())
}

pub async fn a_20_mb_delivery_is_refused_or_accepted_within_10s(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let spin = ctx.start(&ctx.options(&mock), "spin").await?;
    let padding = "x".repeat(440);
    let records: Vec<Value> = (0..40_000u32).map(|i| json!({"objectId": format!("big-{i}"), "modifiedDate": modified_at(i % 80_000), "name": format!("{i} {padding}")})).collect();
    let body = serde_json::to_vec(
        &json!({"type": "record.upserted", "timestamp": "2024-01-01T00:00:00Z", "data": {"objectType": "ACCOUNT", "records": records}}),
    )?;
    ensure!(
        body.len() >= 20_000_000,
        "the delivery is only {} bytes",
        body.len()
    );
    let reply = spin
        .bridge
        .webhook_signed(
            WEBHOOK_SECRET_BYTES,
            "msg-big",
            unix_now(),
            &body,
            Duration::from_secs(10),
        )
        .await?;
    match reply.status {
        413 => {
            let problem = reply.expect(413);
            assert!(
                problem["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("webhook_max_bytes"),
                "the 413 names the variable: {problem}"
            );
        }
        202 => assert_eq!(reply.json()["accepted"], 40_000),
        other => bail!(
            "a {} byte delivery got {other}: {}",
            body.len(),
            reply.text()
        ),
    }
    println!(
        "real-spin: large delivery: {} bytes -> {} in {:.1} s",
        body.len(),
        reply.status,
        reply.elapsed.as_secs_f64()
    );
    Ok(())
}

/// Issue 10 item 10: a delivery just within `webhook_max_bytes` (1 MiB by default) is accepted
/// within 1 s on Spin's SQLite store.
pub async fn a_delivery_at_the_limit_is_accepted_within_1s(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let spin = ctx.start(&ctx.options(&mock), "spin").await?;
    // Records are added while the whole delivery stays within 1 MiB (envelope + records + commas).
    let envelope = serde_json::to_vec(&json!({"type": "record.upserted", "timestamp": "2024-01-01T00:00:00Z", "data": {"objectType": "ACCOUNT", "records": []}}))?.len();
    let (mut records, mut size) = (Vec::new(), envelope);
    for i in 0.. {
        let record = json!({"objectId": format!("lim-{i}"), "modifiedDate": modified_at(i % 80_000), "name": format!("record {i} of a delivery at the limit")});
        let record_size = serde_json::to_vec(&record)?.len() + usize::from(!records.is_empty());
        if size + record_size > 1024 * 1024 {
            break;
        }
        size += record_size;
        records.push(record);
    }
    let body = serde_json::to_vec(
        &json!({"type": "record.upserted", "timestamp": "2024-01-01T00:00:00Z", "data": {"objectType": "ACCOUNT", "records": records}}),
    )?;
    ensure!(
        body.len() == size && size <= 1024 * 1024,
        "the delivery is {} bytes, expected {size}",
        body.len()
    );
    let reply = spin
        .bridge
        .webhook_signed(
            WEBHOOK_SECRET_BYTES,
            "msg-limit",
            unix_now(),
            &body,
            Duration::from_secs(60),
        )
        .await?;
    println!(
        "real-spin: a {} byte delivery of {} records -> {} in {:.2} s",
        body.len(),
        records.len(),
        reply.status,
        reply.elapsed.as_secs_f64()
    );
    assert_eq!(reply.expect(202)["accepted"], records.len());
    ensure!(
        reply.elapsed <= Duration::from_secs(1),
        "a delivery within the limit took {:.1} s to accept",
        reply.elapsed.as_secs_f64()
    );
    Ok(())
}

pub async fn the_same_wasm_runs_on_spin_3_6(ctx: &Ctx) -> anyhow::Result<()> {
    let Some(spin3) = &ctx.spin3 else {
        bail!("no Spin 3.6 (set SPIN3_BIN)")
    };
    let mock = MockGong::start().await;
    let mut options = ctx.options(&mock);
    options.spin = spin3.clone();
    let spin = ctx.start(&options, "spin-3.6").await?;
    spin.bridge
        .webhook("msg_1", &upsert("acc-1", "2024-05-01T10:00:00Z", "ACME"))
        .await?
        .expect(202);
    spin.bridge.force_flush().await?.expect(200);
    assert_eq!(
        uploaded_versions(&mock)?,
        vec![("acc-1".to_owned(), "2024-05-01T10:00:00Z".to_owned())]
    );
    spin.bridge.force_flush().await?.expect(200);
    assert_eq!(
        spin.bridge.record_state("ACCOUNT", "acc-1").await?["state"],
        "done"
    );
    Ok(())
}

pub async fn where_is_my_record_answers_for_every_record_of_a_big_file(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let spin = ctx.start(&ctx.options(&mock), "spin").await?;
    let records: Vec<Value> = (0..150u32).map(|i| json!({"objectId": format!("acc-{i}"), "modifiedDate": modified_at(i), "name": "one file"})).collect();
    let delivery = json!({"type": "record.upserted", "timestamp": "2024-01-01T00:00:00Z", "data": {"objectType": "ACCOUNT", "records": records}});
    assert_eq!(
        spin.bridge.webhook("msg-150", &delivery).await?.expect(202)["accepted"],
        150
    );
    spin.bridge.force_flush().await?.expect(200);
    spin.bridge.force_flush().await?.expect(200);
    assert_eq!(
        uploaded_versions(&mock)?.len(),
        150,
        "one file of 150 records"
    );
    let mut unknown = Vec::new();
    for i in 0..150u32 {
        let reply = spin
            .bridge
            .get(&format!("/records/ACCOUNT/acc-{i}/status"))
            .await?;
        if reply.status != 200 || reply.json()["state"] != "done" {
            unknown.push(format!("acc-{i}: {} {}", reply.status, reply.text()));
        }
    }
    ensure!(
        unknown.is_empty(),
        "{} of 150 records of a delivered file are not reported done, e.g. {}",
        unknown.len(),
        unknown[0]
    );
    Ok(())
}

/// Issue 10 finding 2, from outside: Gong lists 20 of 25 failed lines; the 5 unlisted records go
/// out again (and only they), the 20 listed ones are in the failure store with Gong's words.
pub async fn records_gong_did_not_list_are_sent_again(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let errors: Vec<Value> = (1..=20)
        .map(|line| json!({"line": line, "description": "bad value"}))
        .collect();
    mock.on("GET", "/v2/crm/request-status", MockResponse::json(200, json!({"requestId": "r", "status": "FAILED", "errors": errors, "totalErrorCount": 25, "totalSuccessCount": 0})));
    let spin = ctx.start(&ctx.options(&mock), "spin").await?;
    let records: Vec<Value> = (0..25u32).map(|i| json!({"objectId": format!("f{i:02}"), "modifiedDate": modified_at(i), "name": "twenty-five"})).collect();
    let delivery = json!({"type": "record.upserted", "timestamp": "2024-01-01T00:00:00Z", "data": {"objectType": "ACCOUNT", "records": records}});
    spin.bridge.webhook("msg-25", &delivery).await?.expect(202);
    for _ in 0..5 {
        spin.bridge.force_flush().await?.expect(200);
        if mock.received_on("POST", "/v2/crm/entities").len() >= 2 {
            break;
        }
    }
    let uploads = mock.received_on("POST", "/v2/crm/entities");
    ensure!(
        uploads.len() == 2,
        "{} uploads: the unlisted records were not sent again",
        uploads.len()
    );
    let resent: Vec<String> = uploads[1]
        .part("dataFile")
        .map(|p| p.lines())
        .unwrap_or_default()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["objectId"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(resent, vec!["f20", "f21", "f22", "f23", "f24"]);
    let failures = spin.bridge.get("/failures").await?.expect(200);
    assert_eq!(failures["total"], 20, "{failures}");
    Ok(())
}

/// Issue 10 item 11, from outside: a flush whose upload Gong refuses answers 502 `flush-failed`
/// with its report (a scheduler sees the failure); the records stay and go with the next flush.
pub async fn a_failed_flush_is_a_502_and_the_next_one_delivers(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    mock.on(
        "POST",
        "/v2/crm/entities",
        MockResponse::json(
            500,
            json!({"requestId": "r500", "errors": ["upload backend down"]}),
        ),
    );
    let spin = ctx.start(&ctx.options(&mock), "spin").await?;
    spin.bridge
        .webhook("msg-1", &upsert("acc-1", "2024-05-01T10:00:00Z", "ACME"))
        .await?
        .expect(202);
    let mut failed = spin.bridge.force_flush().await?;
    // The work after the webhook's answer may have met the 500 first; then this flush delivers.
    if failed.status == 200 && mock.received_on("POST", "/v2/crm/entities").len() == 1 {
        failed = spin.bridge.force_flush().await?;
    }
    let uploads = mock.received_on("POST", "/v2/crm/entities").len();
    if failed.status == 502 {
        let problem = failed.expect(502);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("upload backend down"),
            "{problem}"
        );
        assert!(problem["report"].is_object(), "{problem}");
        spin.bridge.force_flush().await?.expect(200);
    } else {
        ensure!(
            uploads >= 2,
            "the refused upload was neither reported (502) nor retried: {}",
            failed.text()
        );
    }
    assert_eq!(
        uploaded_versions(&mock)?.last().map(|v| v.0.as_str()),
        Some("acc-1")
    );
    assert_eq!(
        mock.received_on("POST", "/v2/crm/entities").len(),
        2,
        "one refused upload, one delivered"
    );
    Ok(())
}

/// Issue 10 "done when": after 300 records in 3 deliveries are delivered, the store holds at
/// most a bounded number of keys more than before. Measured twice on Spin's SQLite store: from
/// empty, and for 300 more records once the shards exist (the steady state), at the default
/// key budget and at Fermyon Cloud's 1,024 keys.
pub async fn three_deliveries_of_300_records_leave_a_bounded_key_count(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    for kv_max_keys in ["0", "1024"] {
        let mock = MockGong::start().await;
        // A short second look, so that the case also sees merged inbox keys released.
        let options = ctx
            .options(&mock)
            .var("kv_max_keys", kv_max_keys)
            .var("inbox_release_seconds", "2");
        let spin = ctx
            .start(&options, &format!("spin-keys-{kv_max_keys}"))
            .await?;
        let mut counts = vec![sqlite_key_count(&spin.state_dir)];
        for round in 0..2u32 {
            let mut ids = BTreeSet::new();
            for delivery in 0..3u32 {
                let records: Vec<Value> = (0..100u32)
                    .map(|i| {
                        let id = format!("acc-{round}-{delivery}-{i}");
                        ids.insert(id.clone());
                        json!({"objectId": id, "modifiedDate": modified_at(i), "name": "bounded"})
                    })
                    .collect();
                let body = json!({"type": "record.upserted", "timestamp": "2024-01-01T00:00:00Z", "data": {"objectType": "ACCOUNT", "records": records}});
                spin.bridge
                    .webhook(&format!("msg-{round}-{delivery}"), &body)
                    .await?
                    .expect(202);
            }
            flush_until_sent(&[spin.bridge], &ids).await?;
            // Follow the files to DONE, so that nothing is left in flight.
            spin.bridge.force_flush().await?.expect(200);
            counts.push(sqlite_key_count(&spin.state_dir));
        }
        // After the second look: the merged inbox keys are released.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        spin.bridge.force_flush().await?.expect(200);
        counts.push(sqlite_key_count(&spin.state_dir));
        let inbox_left = sqlite_keys_with_prefix(&spin.state_dir, "inbox/");
        ensure!(
            inbox_left == Some(0),
            "inbox keys left after their release: {inbox_left:?}"
        );
        let [Some(empty), Some(first), Some(second), Some(released)] = counts[..] else {
            bail!("the SQLite store could not be read: {counts:?}")
        };
        // Steady state: the shards exist; 300 more records add their files' request records
        // (and the odd shard they are the first record of), not a key per record.
        let limit = if kv_max_keys == "1024" { 16 } else { 64 };
        // Signed: the second round may end with fewer keys (inbox keys of the first released,
        // old request records retired), which an unsigned subtraction would overflow on.
        let added = second as i64 - first as i64;
        ensure!(
            added <= limit,
            "300 more records added {added} keys (from {first} to {second}), over {limit}"
        );
        println!(
            "real-spin: keys (kv_max_keys={kv_max_keys}): {empty} empty, {first} after 300 records in 3 deliveries ({:+}), {second} after 300 more ({added:+}), {released} once their inbox keys were released",
            first as i64 - empty as i64
        );
    }
    Ok(())
}

/// Issue 10 "done when": a 90,000-record delivery is answered within 10 s (with
/// `webhook_max_bytes` raised to take it: the default 1 MiB refuses it at once), and every
/// record of it reaches Gong.
pub async fn a_90000_record_delivery_is_accepted_within_10s_and_delivered(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let options = ctx
        .options(&mock)
        .var("webhook_max_bytes", "16777216")
        .var("gong_calls_per_second", "10");
    let spin = ctx.start(&options, "spin").await?;
    let records: Vec<Value> = (0..90_000u32).map(|i| json!({"objectId": format!("n-{i}"), "modifiedDate": modified_at(i % 80_000), "name": "ninety thousand"})).collect();
    let body = serde_json::to_vec(
        &json!({"type": "record.upserted", "timestamp": "2024-01-01T00:00:00Z", "data": {"objectType": "ACCOUNT", "records": records}}),
    )?;
    let reply = spin
        .bridge
        .webhook_signed(
            WEBHOOK_SECRET_BYTES,
            "msg-90k",
            unix_now(),
            &body,
            Duration::from_secs(30),
        )
        .await?;
    let accepted_in = reply.elapsed;
    assert_eq!(reply.expect(202)["accepted"], 90_000);
    ensure!(
        accepted_in <= Duration::from_secs(10),
        "a 90,000-record delivery took {:.1} s to answer",
        accepted_in.as_secs_f64()
    );
    let mut in_gong = BTreeSet::new();
    for _ in 0..8 {
        spin.bridge.force_flush().await?.expect(200);
        in_gong = uploaded_versions(&mock)?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if in_gong.len() == 90_000 {
            break;
        }
    }
    ensure!(
        in_gong.len() == 90_000,
        "{} of 90,000 records reached Gong after 8 forced flushes",
        in_gong.len()
    );
    println!(
        "real-spin: a {} byte delivery of 90,000 records -> 202 in {:.2} s; all in Gong after {}",
        body.len(),
        accepted_in.as_secs_f64(),
        upload_report(&mock)
    );
    Ok(())
}

/// Issue 10 finding 3, from outside: a file Gong keeps IN_PROGRESS is polled on a backoff
/// schedule, not on every flush (here `poll_backoff_seconds=1`: 1, 2, 4, 8 s apart).
pub async fn a_slow_file_is_polled_with_backoff(ctx: &Ctx) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    mock.always(
        "GET",
        "/v2/crm/request-status",
        MockResponse::json(
            200,
            json!({"requestId": "r", "status": "IN_PROGRESS", "errors": []}),
        ),
    );
    let spin = ctx
        .start(&ctx.options(&mock).var("poll_backoff_seconds", "1"), "spin")
        .await?;
    spin.bridge
        .webhook(
            "msg-slow",
            &upsert("slow-1", "2024-05-01T10:00:00Z", "slow"),
        )
        .await?
        .expect(202);
    let started = std::time::Instant::now();
    let mut flushes = 0;
    while started.elapsed() < Duration::from_secs(16) {
        spin.bridge.force_flush().await?.expect(200);
        flushes += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let polls = mock.received_on("GET", "/v2/crm/request-status").len();
    ensure!(
        (2..=7).contains(&polls),
        "{flushes} flushes in 16 s polled the slow file {polls} times"
    );
    let status = spin
        .bridge
        .get("/records/ACCOUNT/slow-1/status")
        .await?
        .expect(200);
    assert_eq!(status["state"], "sent", "{status}");
    println!("real-spin: slow file: {flushes} flushes in 16 s -> {polls} status polls (backoff from 1 s)");
    Ok(())
}
