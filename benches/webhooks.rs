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
        let id = format!("{}-{i}", label.replace(|c: char| !c.is_ascii_alphanumeric(), ""));
        let body = format!(
            r#"{{"type":"record.upserted","data":{{"objectType":"CONTACT","record":{{"objectId":"{id}","modifiedDate":"2024-01-01T00:00:00Z","accountId":"a1","emailAddress":"x@acme.com"}}}}}}"#
        )
        .into_bytes();
        let (ts, sig) = support::signed_now(&id, &body);
        let started = Instant::now();
        let r = app
            .request("POST", "/webhooks", &[("webhook-id", &id), ("webhook-timestamp", &ts), ("webhook-signature", &sig)], body)
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
        "| {label} | {SAMPLES} | {:.2} ms | {:.2} ms | {:.2} ms |",
        percentile(&samples, 50.0).as_secs_f64() * 1e3,
        percentile(&samples, 99.0).as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    rt.block_on(async {
        println!("| buffer | idempotency_settle_ms | deliveries | p50 | p99 | mean |");
        println!("|---|---|---|---|---|---|");
        for settle in ["100", "0"] {
        let vars = |b: support::TestAppBuilder| {
            b.var("integration_id", "7").var("idempotency_settle_ms", settle).guest_stderr(false)
        };
        let empty = vars(TestApp::builder()).build().await;
        measure(&empty, &format!("empty | {settle}")).await;

        let kv = MemKv::new();
        let line = br#"{"accountId":"a1","emailAddress":"x@acme.com","modifiedDate":"2024-01-01T00:00:00Z","objectId":"p"}"#;
        for i in 0..50_000 {
            kv.set(&format!("pend/CONTACT/p{i}/01704067200/01704067200/{}/0", line.len()), line.to_vec());
        }
        // Gong answered 429 an hour's worth of Retry-After ago: nothing flushes, all is buffered.
        let until = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 3_600;
        kv.set_json("quota", &serde_json::json!({"second":0,"secondCount":0,"hour":0,"hourCount":0,"day":0,"dayCount":0,"blockedUntil":until}));
        let full = vars(TestApp::builder().kv(kv)).build().await;
        measure(&full, &format!("50,000 pending | {settle}")).await;
        }
    });
}
