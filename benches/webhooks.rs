//! Per-webhook latency through the test host: a signed single-record `record.upserted`
//! delivery (verify, idempotency claim, validate, buffer, buffer check), with the buffer empty
//! and with 50,000 records pending (Gong paused by a 429, so nothing flushes: the situation in
//! which a large buffer builds up).
//!
//! cargo bench --profile dev --bench webhooks

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{MemKv, TestApp};

const WARMUP: usize = 100;
const SAMPLES: usize = 1_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // Nearest-rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

async fn measure(app: &TestApp, label: &str) {
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..(WARMUP + SAMPLES) {
        let id = format!(
            "{}-{i}",
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "")
        );
        let body = format!(
            r#"{{"type":"record.upserted","data":{{"objectType":"CONTACT","record":{{"objectId":"{id}","modifiedDate":"2024-01-01T00:00:00Z","accountId":"a1","emailAddress":"x@acme.com"}}}}}}"#
        )
        .into_bytes();
        let (ts, sig) = support::signed_now(&id, &body);
        let started = Instant::now();
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
        let took = started.elapsed();
        assert_eq!(r.status, 202, "{}", r.text());
        if i >= WARMUP {
            samples.push(took);
        }
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "| {label} | {SAMPLES} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
        percentile(&samples, 50.0).as_secs_f64() * 1e3,
        percentile(&samples, 99.0).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        println!("| buffer | idempotency_settle_ms | deliveries | p50 | p99 | max | mean |");
        println!("|---|---|---|---|---|---|---|");
        // A store without a key cap (the default key budget) and one capped at 1,024 keys
        // (kv_max_keys, Fermyon Cloud): no idempotency claim per record delivery, and now and
        // then a compaction of the inbox into the shards (under the flush lease, with its settle
        // time), after the answer.
        for (store, max_keys) in [("default budget", None), ("kv_max_keys 1024", Some(1_024usize))] {
            let settle = "100";
            let compact = |b: support::TestAppBuilder, kv: &MemKv| {
                let b = match max_keys {
                    Some(cap) => {
                        kv.set_max_keys(cap);
                        b.var("kv_max_keys", &cap.to_string())
                    }
                    None => b,
                };
                b.kv(kv.clone()).var("integration_id", "7").var("idempotency_settle_ms", settle).guest_stderr(false)
            };
            let empty_kv = MemKv::new();
            let empty = compact(TestApp::builder(), &empty_kv).build().await;
            measure(&empty, &format!("{store}, empty | {settle}")).await;

            let kv = MemKv::new();
            let until_ms = (SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 3_600) * 1000;
            kv.set_json("quota", &serde_json::json!({"second":0,"secondCount":0,"hour":0,"hourCount":0,"day":0,"dayCount":0,"blockedUntilMs":until_ms}));
            let full = compact(TestApp::builder(), &kv).build().await;
            // 50,000 records through the bridge itself, 1,000 per delivery, then compacted.
            for d in 0..50 {
                let records: Vec<_> = (0..1_000)
                    .map(|i| serde_json::json!({"objectId": format!("p{}", d * 1_000 + i), "modifiedDate": "2024-01-01T00:00:00Z", "accountId": "a1", "emailAddress": "x@acme.com"}))
                    .collect();
                let body = serde_json::to_vec(&serde_json::json!({"type": "record.upserted", "data": {"objectType": "CONTACT", "records": records}})).expect("json");
                let id = format!("bulk-{d}");
                let (ts, sig) = support::signed_now(&id, &body);
                let r = full.request("POST", "/webhooks", &[("webhook-id", &id), ("webhook-timestamp", &ts), ("webhook-signature", &sig)], body).await;
                assert_eq!(r.status, 202, "{}", r.text());
            }
            let token = format!("Bearer {}", support::API_TOKEN);
            let flushed = full.request("POST", "/flush", &[("authorization", &token)], Vec::new()).await;
            assert_eq!(flushed.json()["pending"]["CONTACT"]["records"], 50_000, "{}", flushed.text());
            measure(&full, &format!("{store}, 50,000 pending | {settle}")).await;
            let (peak_keys, peak_value) = kv.peaks();
            println!("({store}, 50,000 pending: at most {peak_keys} keys at once, largest value {peak_value} bytes)");
        }
    });
}
