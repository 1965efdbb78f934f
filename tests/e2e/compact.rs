//! The compact layout (`kv_max_keys`, Fermyon Cloud's 1,024 keys per store): 100,000 pending
//! records fit in a store capped at 1,024 keys with no value over 1 MB, every latest version
//! then reaches Gong, and a store near its cap refuses deliveries instead of losing them.
//! (Faults and concurrent replicas in this layout: `nothing_lost.rs`.)

use std::collections::HashMap;

use serde_json::json;

use crate::nothing_lost::{deliver, drain, received_in_gong, report, Layout};
use crate::support::{MemKv, TestApp, MAX_VALUE_BYTES};
use crate::{call, expect, INTEGRATION_ID};

fn modified(version: i64) -> String {
    gong_crm_bridge::validation::format_gong_datetime(
        time::OffsetDateTime::from_unix_timestamp(1_700_000_000 + version).unwrap(),
    )
}

/// One delivery carrying many ACCOUNT records (`data.records`), ~200 bytes each.
fn many(ids: std::ops::Range<usize>, version: i64) -> Vec<u8> {
    let records: Vec<_> = ids
        .map(|i| json!({"objectId": format!("acc-{i:06}"), "modifiedDate": modified(version), "name": format!("Account {i} v{version}"), "domain": format!("account-{i}.example.com"), "industry": "Software"}))
        .collect();
    serde_json::to_vec(
        &json!({"type": "record.upserted", "data": {"objectType": "ACCOUNT", "records": records}}),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_pending_records_fit_in_1024_keys_and_all_reach_gong() {
    let kv = MemKv::new();
    let builder = TestApp::builder()
        .var("integration_id", &INTEGRATION_ID.to_string())
        .var("idempotency_settle_ms", "0")
        .var("gong_calls_per_second", "0")
        // Nothing is due while the buffer fills (Gong unavailable for a long time, say).
        .var("batch_max_records", "1000000")
        .var("batch_max_bytes", "1000000000")
        .var("flush_interval_seconds", "100000000");
    let app = Layout::Compact.apply(builder, &kv).build().await;

    // 100,000 records in 100 deliveries; then newer versions of 10,000 of them, and older
    // versions of another 5,000 arriving late.
    let mut plan: Vec<Vec<u8>> = (0..100)
        .map(|d| many(d * 1_000..(d + 1) * 1_000, 10))
        .collect();
    plan.extend((0..10).map(|d| many(d * 1_000..(d + 1) * 1_000, 20)));
    plan.extend((10..15).map(|d| many(d * 1_000..(d + 1) * 1_000, 5)));
    let started = std::time::Instant::now();
    for (n, body) in plan.iter().enumerate() {
        let r = deliver(&app, &format!("bulk-{n}"), body).await;
        assert_eq!(r.status, 202, "delivery {n}: {}", r.text());
    }
    let accept_seconds = started.elapsed().as_secs_f64();
    let report_body = expect(&call(&app, "POST", "/flush", &[], Vec::new()).await, 200);
    assert_eq!(
        report_body["pending"]["ACCOUNT"]["records"], 100_000,
        "{report_body}"
    );
    assert_eq!(report_body["inboxKeys"], 0, "{report_body}");
    let (peak_keys, peak_value) = kv.peaks();
    let shards = kv.keys_with_prefix("pbuf/").len();
    assert!(peak_keys <= 1_024 && peak_value <= MAX_VALUE_BYTES);

    // "Where is my record": the newer version waits; the late older one was kept out.
    let status = expect(
        &call(
            &app,
            "GET",
            "/records/ACCOUNT/acc-000005/status",
            &[],
            Vec::new(),
        )
        .await,
        200,
    );
    assert_eq!(
        (
            status["state"].as_str(),
            status["latestModifiedDate"].as_str()
        ),
        (Some("waiting"), Some(modified(20).as_str())),
        "{status}"
    );
    let status = expect(
        &call(
            &app,
            "GET",
            "/records/ACCOUNT/acc-012345/status",
            &[],
            Vec::new(),
        )
        .await,
        200,
    );
    assert_eq!(
        status["latestModifiedDate"].as_str(),
        Some(modified(10).as_str()),
        "{status}"
    );

    // Gong is back, with the default batch size.
    app.vars().set("batch_max_records", "5000");
    app.vars()
        .set("batch_max_bytes", &(8 * 1024 * 1024).to_string());
    let rounds = drain(&app).await;
    let uploads = app.mock().received_on("POST", "/v2/crm/entities").len();
    let in_gong = received_in_gong(&app).await;
    let mut wrong = Vec::new();
    for i in 0..100_000 {
        let expected = modified(if i < 10_000 { 20 } else { 10 });
        let got = in_gong.get(&("ACCOUNT".to_owned(), format!("acc-{i:06}")));
        if got != Some(&vec![expected]) {
            wrong.push((i, got.cloned()));
        }
    }
    let after = expect(
        &call(
            &app,
            "GET",
            "/records/ACCOUNT/acc-000005/status",
            &[],
            Vec::new(),
        )
        .await,
        200,
    );
    let (final_peak, _) = kv.peaks();
    report(&[
        "compact layout (kv_max_keys 1024): 100,000 pending records (115 deliveries of 1,000; 10,000 newer and 5,000 older-late versions)".into(),
        format!("  while pending: {shards} shard keys; at most {final_peak} keys at once; largest value {peak_value} bytes (limit {MAX_VALUE_BYTES})"),
        format!("  accepting took {accept_seconds:.1} s in the test host; then {uploads} Gong uploads in {rounds} flush rounds; records not exactly once at their latest version: {}", wrong.len()),
    ]);
    assert!(
        wrong.is_empty(),
        "{} records wrong, first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(uploads, 20, "5,000 records per file");
    assert_eq!(after["state"], "done", "{after}");
    assert!(
        after["clientRequestId"]
            .as_str()
            .is_some_and(|c| c.starts_with("fl-account-")),
        "{after}"
    );
}

#[tokio::test]
async fn a_store_near_its_key_cap_refuses_deliveries_instead_of_losing_them() {
    let kv = MemKv::new();
    let builder = TestApp::builder()
        .var("integration_id", &INTEGRATION_ID.to_string())
        .var("idempotency_settle_ms", "0")
        .var("flush_interval_seconds", "100000000")
        .var("admission_wait_ms", "300");
    let app = Layout::Compact.apply(builder, &kv).build().await;
    // Someone else's keys fill the store up to the admission line (896 of 1,024): compaction
    // cannot make room, so after waiting admission_wait_ms the delivery is refused, saying so.
    for i in 0..896 {
        kv.set(&format!("other/{i}"), "x");
    }
    let body = crate::nothing_lost::event("ACCOUNT", "a1", 1);
    let r = deliver(&app, "full-1", &body).await;
    let problem = expect(&r, 503);
    assert_eq!(
        problem["type"], "urn:gong-crm-bridge:problem:store-full",
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("holds 896 keys (kv_max_keys is 1024"),
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("admission_wait_ms"),
        "{problem}"
    );
    assert!(r.header("retry-after").is_some());
    assert!(
        kv.keys_with_prefix("inbox/").is_empty(),
        "nothing was accepted"
    );
    // Room again: the re-delivery is accepted and reaches Gong.
    for i in 0..100 {
        kv.delete(&format!("other/{i}"));
    }
    assert_eq!(deliver(&app, "full-1", &body).await.status, 202);
    drain(&app).await;
    let in_gong: HashMap<_, _> = received_in_gong(&app).await;
    assert_eq!(
        in_gong
            .get(&("ACCOUNT".to_owned(), "a1".to_owned()))
            .map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn failures_in_the_compact_layout_are_listed_explained_and_discarded() {
    let kv = MemKv::new();
    let builder = TestApp::builder()
        .var("integration_id", &INTEGRATION_ID.to_string())
        .var("idempotency_settle_ms", "0")
        .var("gong_calls_per_second", "0");
    let app = Layout::Compact.apply(builder, &kv).build().await;
    app.mock().on(
        "GET",
        "/v2/crm/request-status",
        crate::support::MockResponse::json(
            200,
            json!({"status": "FAILED", "errors": [{"line": 2, "description": "unknown owner"}]}),
        ),
    );
    let body = serde_json::to_vec(
        &json!({"type": "record.upserted", "data": {"objectType": "DEAL", "records": [
            {"objectId": "d1", "modifiedDate": modified(1), "name": "One"},
            {"objectId": "d2", "modifiedDate": modified(1), "name": "Two"},
        ]}}),
    )
    .unwrap();
    assert_eq!(deliver(&app, "f1", &body).await.status, 202);
    let sent = expect(
        &call(&app, "POST", "/flush?force=true", &[], Vec::new()).await,
        200,
    );
    assert_eq!(sent["files"][0]["records"], 2, "{sent}");
    // The next flush follows the file to Gong's final status.
    let flushed = expect(&call(&app, "POST", "/flush", &[], Vec::new()).await, 200);
    assert_eq!(flushed["failuresAdded"], 1, "{flushed}");
    let failures = expect(
        &call(&app, "GET", "/failures?objectType=DEAL", &[], Vec::new()).await,
        200,
    );
    assert_eq!(
        (
            failures["total"].as_u64(),
            failures["failures"][0]["objectId"].as_str()
        ),
        (Some(1), Some("d2")),
        "{failures}"
    );
    assert_eq!(failures["failures"][0]["description"], "unknown owner");
    let status = expect(
        &call(&app, "GET", "/records/DEAL/d2/status", &[], Vec::new()).await,
        200,
    );
    assert_eq!(
        (status["state"].as_str(), status["explanation"].as_str()),
        (Some("failed"), Some("unknown owner")),
        "{status}"
    );
    let sent = expect(
        &call(&app, "GET", "/records/DEAL/d1/status", &[], Vec::new()).await,
        200,
    );
    assert_eq!(
        (sent["state"].as_str(), sent["line"].as_u64()),
        (Some("done"), Some(1)),
        "{sent}"
    );
    // Issue 18: recorded (202) and applied by the engine right after the answer.
    let requested = expect(
        &call(&app, "DELETE", "/failures/DEAL/d2", &[], Vec::new()).await,
        202,
    );
    assert_eq!(requested["status"], "discard requested", "{requested}");
    let mut total = serde_json::Value::Null;
    for _ in 0..50 {
        total =
            expect(&call(&app, "GET", "/failures", &[], Vec::new()).await, 200)["total"].clone();
        if total == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(total, 0, "the discard was applied");
    let again = expect(
        &call(&app, "DELETE", "/failures/DEAL/d2", &[], Vec::new()).await,
        200,
    );
    assert_eq!(again["status"], "discarded", "{again}");
    let status = expect(
        &call(&app, "GET", "/records/DEAL/d2/status", &[], Vec::new()).await,
        200,
    );
    assert_eq!(status["state"], "discarded", "{status}");
    expect(
        &call(
            &app,
            "DELETE",
            "/failures/DEAL/never-failed",
            &[],
            Vec::new(),
        )
        .await,
        404,
    );
}

/// With a key cap, request records are not kept forever: beyond the newest ones (1/16 of the
/// cap), the oldest finished requests go with their keys, and a record they carried still
/// answers "where is my record".
#[tokio::test]
async fn old_request_records_are_retired_within_the_key_budget() {
    let kv = MemKv::new();
    kv.set_max_keys(256);
    let app = TestApp::builder()
        .kv(kv.clone())
        .var("kv_max_keys", "256")
        .var("integration_id", &INTEGRATION_ID.to_string())
        .var("idempotency_settle_ms", "0")
        .var("gong_calls_per_second", "0")
        .build()
        .await;
    for i in 0..30 {
        assert_eq!(
            deliver(
                &app,
                &format!("ret-{i}"),
                &crate::nothing_lost::event("ACCOUNT", &format!("r{i}"), 1)
            )
            .await
            .status,
            202
        );
        let sent = expect(
            &call(&app, "POST", "/flush?force=true", &[], Vec::new()).await,
            200,
        );
        assert_eq!(sent["files"].as_array().map(Vec::len), Some(1), "{sent}");
        expect(&call(&app, "POST", "/flush", &[], Vec::new()).await, 200);
        if i == 0 {
            // Requests are ordered by their submission time, to the second: r0's is the oldest.
            tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        }
    }
    let kept = kv.keys_with_prefix("request/").len();
    assert!(
        kept <= 16,
        "{kept} request records kept; the budget keeps 16 (256/16)"
    );
    assert_eq!(
        kv.keys_with_prefix("reqidx/").len(),
        kept,
        "index keys go with their records"
    );
    assert_eq!(
        kv.keys_with_prefix("blob/lines/").len(),
        kept,
        "line maps go with their records"
    );
    let old = expect(
        &call(&app, "GET", "/records/ACCOUNT/r0/status", &[], Vec::new()).await,
        200,
    );
    assert_eq!(old["state"], "done", "{old}");
    assert!(
        old["explanation"]
            .as_str()
            .unwrap()
            .contains("keeps the records of its newest"),
        "{old}"
    );
    let recent = expect(
        &call(&app, "GET", "/records/ACCOUNT/r29/status", &[], Vec::new()).await,
        200,
    );
    assert_eq!(
        (recent["state"].as_str(), recent["requestStatus"].as_str()),
        (Some("done"), Some("DONE")),
        "{recent}"
    );
    let listed = expect(
        &call(&app, "GET", "/requests?limit=100", &[], Vec::new()).await,
        200,
    );
    assert_eq!(listed["requests"].as_array().map(Vec::len), Some(kept));
}
