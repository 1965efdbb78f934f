//! "No update lost under concurrent writers" in the compact layout (`kv_max_keys = 1024`), with
//! a remote store's latency: two host instances (replicas) share one store capped at 1,024
//! keys; 16 concurrent senders deliver single-record webhooks (two versions of each record, in
//! shuffled order, some twice) while both replicas also run `POST /flush`. So compaction,
//! flushing and webhooks overlap, and the flush lease is contended. Then the buffer is drained
//! and every record's latest version is looked up among the files the mock Gong received.
//!
//! cargo bench --profile dev --bench compact_race

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{MemKv, TestApp};

const RECORDS: usize = 500;
const SENDERS: usize = 16;

fn modified(version: i64) -> String {
    format!("2024-01-01T00:00:{version:02}Z")
}

fn event(id: &str, version: i64) -> Vec<u8> {
    format!(r#"{{"type":"record.upserted","data":{{"objectType":"ACCOUNT","record":{{"objectId":"{id}","modifiedDate":"{}","name":"{id} v{version}"}}}}}}"#, modified(version)).into_bytes()
}

async fn deliver(app: &TestApp, id: &str, body: &[u8]) -> u16 {
    let (ts, sig) = support::signed_now(id, body);
    app.request(
        "POST",
        "/webhooks",
        &[
            ("webhook-id", id),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &sig),
        ],
        body.to_vec(),
    )
    .await
    .status
}

async fn flush(app: &TestApp, force: bool) -> (u16, serde_json::Value) {
    let token = format!("Bearer {}", support::API_TOKEN);
    let r = app
        .request(
            "POST",
            if force { "/flush?force=true" } else { "/flush" },
            &[("authorization", &token)],
            Vec::new(),
        )
        .await;
    let body = if r.body.is_empty() {
        serde_json::Value::Null
    } else {
        r.json()
    };
    (r.status, body)
}

struct Outcome {
    missing: usize,
    uploads: usize,
    refused: usize,
    peak_keys: usize,
    seconds: f64,
}

async fn run(latency_ms: u64, settle_ms: u64) -> Outcome {
    let kv = MemKv::new();
    kv.set_max_keys(1_024);
    kv.set_latency(Duration::from_millis(latency_ms));
    let builder = || {
        TestApp::builder()
            .kv(kv.clone())
            .var("kv_max_keys", "1024")
            .var("integration_id", "7")
            .var("gong_calls_per_second", "0")
            .var("batch_max_records", "100")
            .var("flush_interval_seconds", "1")
            .var("idempotency_settle_ms", &settle_ms.to_string())
            .guest_stderr(false)
    };
    let a = builder().build().await;
    let b = builder().mock(a.mock().clone()).build().await;
    let replicas = [a.clone(), b.clone()];

    // Two versions of each record, delivered in a shuffled order; every 10th delivery twice.
    let mut deliveries: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..RECORDS {
        for v in [1, 2] {
            deliveries.push((format!("d{i}-{v}"), event(&format!("r{i}"), v)));
        }
    }
    for i in (0..deliveries.len()).step_by(10) {
        deliveries.push(deliveries[i].clone());
    }
    let n = deliveries.len();
    for i in 0..n {
        deliveries.swap(i, (i * 7_919 + 13) % n);
    }
    let started = Instant::now();
    let queue = Arc::new(tokio::sync::Mutex::new(deliveries));
    let refused = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    // Both replicas flush now and then while the webhooks arrive.
    let mut flushers = Vec::new();
    for app in replicas.clone() {
        let done = done.clone();
        flushers.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                flush(&app, false).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let (app, queue, refused) = (replicas[s % 2].clone(), queue.clone(), refused.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let Some((id, body)) = queue.lock().await.pop() else {
                    break;
                };
                // A CRM re-delivers until it gets a 2xx.
                for _ in 0..100 {
                    let status = deliver(&app, &id, &body).await;
                    if status == 202 {
                        break;
                    }
                    refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    for s in senders {
        s.await.expect("sender");
    }
    done.store(true, Ordering::Relaxed);
    for f in flushers {
        f.await.expect("flusher");
    }
    // Drain: flush until nothing is pending, in the inbox or in flight.
    for _ in 0..200 {
        let (status, report) = flush(&a, true).await;
        let pending = report["pending"].as_object().map_or(1, |m| m.len());
        if status == 200
            && pending == 0
            && report["inboxKeys"] == 0
            && kv.keys_with_prefix("inflight/").is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut in_gong: HashMap<String, Vec<String>> = HashMap::new();
    let uploads = a.mock().received_on("POST", "/v2/crm/entities");
    for upload in &uploads {
        let Some(part) = upload.part("dataFile") else {
            continue;
        };
        for line in part.lines() {
            let v: serde_json::Value = serde_json::from_str(&line).expect("LDJSON");
            in_gong
                .entry(v["objectId"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push(v["modifiedDate"].as_str().unwrap_or_default().to_owned());
        }
    }
    let missing = (0..RECORDS)
        .filter(|i| {
            !in_gong
                .get(&format!("r{i}"))
                .is_some_and(|v| v.contains(&modified(2)))
        })
        .count();
    Outcome {
        missing,
        uploads: uploads.len(),
        refused: refused.load(Ordering::Relaxed),
        peak_keys: kv.peaks().0,
        seconds,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        println!("| store latency per op (ms, uniform 0..max) | settle (ms) | deliveries | latest versions missing | Gong uploads | refused, re-delivered | keys at most | run time |");
        println!("|---|---|---|---|---|---|---|---|");
        for latency_ms in [0u64, 5, 20] {
            for settle_ms in [0u64, 100] {
                let o = run(latency_ms, settle_ms).await;
                println!(
                    "| {latency_ms} | {settle_ms} | {} | {}/{RECORDS} | {} | {} | {} | {:.1} s |",
                    RECORDS * 2 + RECORDS / 5,
                    o.missing,
                    o.uploads,
                    o.refused,
                    o.peak_keys,
                    o.seconds
                );
            }
        }
    });
}
