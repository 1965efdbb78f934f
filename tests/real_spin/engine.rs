//! Real-Spin cases of issue 18 beyond the burst: operator commands while a flush holds the lease,
//! and "where is my record" for a bulk upload at each stage.

use std::time::Duration;

use anyhow::ensure;
use serde_json::json;

use crate::support::mock_gong::{MockGong, MockResponse};
use crate::webhooks::upsert;
use crate::Ctx;

/// Two records fail in Gong; then, while a slow upload holds the flush lease, one is retried and
/// the other discarded: both commands are answered 202 (they were 409) and are applied.
pub async fn retry_and_discard_while_a_flush_holds_the_lease_are_accepted_and_applied(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let spin = ctx
        .start(&ctx.options(&mock).var("poll_backoff_seconds", "0"), "spin")
        .await?;
    let bridge = spin.bridge;
    mock.on(
        "GET",
        "/v2/crm/request-status",
        MockResponse::json(200, json!({"requestId": "r", "status": "FAILED", "errors": [{"line": 1, "description": "bad-1 is invalid"}, {"line": 2, "description": "bad-2 is invalid"}], "totalErrorCount": 2, "totalSuccessCount": 0})),
    );
    bridge
        .webhook(
            "hook-bad-1",
            &upsert("bad-1", "2024-01-01T00:00:00Z", "Bad"),
        )
        .await?
        .expect(202);
    bridge
        .webhook(
            "hook-bad-2",
            &upsert("bad-2", "2024-01-01T00:00:01Z", "Bad"),
        )
        .await?
        .expect(202);
    bridge.force_flush().await?.expect(200);
    for _ in 0..50 {
        bridge.force_flush().await?;
        if bridge.get("/failures").await?.expect(200)["total"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        bridge.get("/failures").await?.expect(200)["total"] == 2,
        "two failures expected"
    );
    // A slow upload: the flush that sends it holds the lease for 4 s.
    mock.on(
        "POST",
        "/v2/crm/entities",
        MockResponse::json(201, json!({"requestId": "slow"})).delay(Duration::from_secs(4)),
    );
    bridge
        .webhook(
            "hook-other",
            &upsert("other-1", "2024-01-02T00:00:00Z", "Other"),
        )
        .await?
        .expect(202);
    let flushing = tokio::spawn(async move {
        bridge
            .call("POST", "/flush?force=true", &[], Vec::new())
            .await
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let retry = bridge
        .call_json(
            "POST",
            "/failures/retry",
            &json!({"objectType": "ACCOUNT", "ids": ["bad-1"]}),
        )
        .await?;
    let retried = retry.expect(202);
    ensure!(retried["status"] == "retry requested", "{retried}");
    let discard = bridge
        .call("DELETE", "/failures/ACCOUNT/bad-2", &[], Vec::new())
        .await?
        .expect(202);
    ensure!(discard["status"] == "discard requested", "{discard}");
    flushing.await??;
    // Applied by the work after those answers (which waited for the lease), or the next run.
    // Applied by the work after those answers (which waited for the lease): the re-queue is
    // written to the pending shards first, then the failure store (a record may be in both for a
    // moment, never in neither), so wait for both.
    let mut states = (String::new(), String::new());
    let mut left = serde_json::Value::Null;
    for _ in 0..50 {
        states = (
            bridge.record_state("ACCOUNT", "bad-1").await?["state"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            bridge.record_state("ACCOUNT", "bad-2").await?["state"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        left = bridge.get("/failures").await?.expect(200);
        if states.0 != "failed" && states.1 == "discarded" && left["total"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        states.0 == "waiting" || states.0 == "sent" || states.0 == "done",
        "bad-1 after its retry: {}",
        states.0
    );
    ensure!(
        states.1 == "discarded",
        "bad-2 after its discard: {}",
        states.1
    );
    ensure!(left["total"] == 0, "the failure store is not empty: {left}");
    println!(
        "real-spin: retry and discard during a 4 s flush: both 202, applied (bad-1 {}, bad-2 {})",
        states.0, states.1
    );
    Ok(())
}

/// A record of a 150-record `POST /records` file has a true status at each stage: sent (file and
/// line) while Gong processes it, then failed with Gong's reason or done (it was 404).
pub async fn a_bulk_uploaded_record_has_a_true_status_at_each_stage(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let spin = ctx
        .start(&ctx.options(&mock).var("poll_backoff_seconds", "0"), "spin")
        .await?;
    let bridge = spin.bridge;
    let records: Vec<serde_json::Value> =
        (0..150).map(|i| json!({"objectId": format!("bulk-{i}"), "modifiedDate": "2024-05-01T10:00:00Z", "name": format!("Bulk {i}")})).collect();
    let accepted = bridge
        .call(
            "POST",
            "/records/ACCOUNT",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "bulk-150"),
            ],
            serde_json::to_vec(&records)?,
        )
        .await?
        .expect(202);
    ensure!(accepted["clientRequestId"] == "bulk-150", "{accepted}");
    mock.on(
        "GET",
        "/v2/crm/request-status",
        MockResponse::json(
            200,
            json!({"requestId": "r", "status": "IN_PROGRESS", "errors": []}),
        ),
    );
    let sent = bridge.record_state("ACCOUNT", "bulk-41").await?;
    ensure!(
        sent["state"] == "sent" && sent["clientRequestId"] == "bulk-150" && sent["line"] == 42,
        "while Gong processes it: {sent}"
    );
    mock.on(
        "GET",
        "/v2/crm/request-status",
        MockResponse::json(200, json!({"requestId": "r", "status": "FAILED", "errors": [{"line": 7, "description": "name is too long"}], "totalErrorCount": 1, "totalSuccessCount": 149})),
    );
    let failed = bridge.record_state("ACCOUNT", "bulk-6").await?;
    ensure!(
        failed["state"] == "failed"
            && failed["explanation"]
                .as_str()
                .unwrap_or_default()
                .contains("name is too long"),
        "{failed}"
    );
    let done = bridge.record_state("ACCOUNT", "bulk-149").await?;
    ensure!(done["state"] == "done" && done["line"] == 150, "{done}");
    println!("real-spin: bulk file of 150: sent (line 42) -> failed with Gong's reason (line 7) / done (line 150)");
    Ok(())
}
