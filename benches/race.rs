//! Measures the replica race window of the idempotency claim (README, "Several replicas"):
//! for each settle time and simulated store latency, TRIALS rounds of 50 concurrent deliveries
//! of one webhook-id (spread over two host instances sharing one store); counts the rounds in
//! which more than one delivery got past the claim (answered without being a replay). The
//! event is a `schema.updated`: record events are keyed by record version, not by claim.
//!
//! cargo bench --profile dev --bench race

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{MemKv, TestApp};

const TRIALS: usize = 20;
const DELIVERIES: usize = 50;

async fn round(apps: &[TestApp], id: &str) -> usize {
    let body = br#"{"type":"schema.updated","data":{"objectType":"ACCOUNT","fields":[{"uniqueName":"Tier","label":"Tier","type":"STRING"}]}}"#.to_vec();
    let (ts, sig) = support::signed_now(id, &body);
    let mut tasks = Vec::new();
    for i in 0..DELIVERIES {
        let app = apps[i % apps.len()].clone();
        let (id, ts, sig, body) = (id.to_owned(), ts.clone(), sig.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = app
                .request(
                    "POST",
                    "/webhooks",
                    &[
                        ("webhook-id", &id),
                        ("webhook-timestamp", &ts),
                        ("webhook-signature", &sig),
                    ],
                    body,
                )
                .await;
            r.status == 200 && r.header("idempotency-replayed").is_none()
        }));
    }
    let mut proceeded = 0;
    for t in tasks {
        if t.await.expect("delivery task") {
            proceeded += 1;
        }
    }
    proceeded
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        println!("| settle (ms) | store latency per op (ms, uniform 0..max) | rounds with >1 past the claim | max past the claim | mean round time |");
        println!("|---|---|---|---|---|");
        for latency_ms in [0u64, 10, 50] {
            for settle_ms in [0u64, 10, 100] {
                let kv = MemKv::new();
                kv.set_latency(Duration::from_millis(latency_ms));
                let a = TestApp::builder().kv(kv.clone()).var("integration_id", "7").var("idempotency_settle_ms", &settle_ms.to_string()).guest_stderr(false).build().await;
                let b = TestApp::builder().kv(kv.clone()).mock(a.mock().clone()).var("integration_id", "7").var("idempotency_settle_ms", &settle_ms.to_string()).guest_stderr(false).build().await;
                let apps = [a, b];
                let mut raced = 0;
                let mut worst = 0;
                let started = Instant::now();
                for trial in 0..TRIALS {
                    let proceeded = round(&apps, &format!("race-{latency_ms}-{settle_ms}-{trial}")).await;
                    worst = worst.max(proceeded);
                    if proceeded > 1 {
                        raced += 1;
                    }
                }
                println!(
                    "| {settle_ms} | {latency_ms} | {raced}/{TRIALS} | {worst} | {:.0} ms |",
                    started.elapsed().as_secs_f64() * 1000.0 / TRIALS as f64
                );
            }
        }
    });
}
