//! Webhook latency under a real `spin up`: 1,000 sequential single-record signed deliveries, then
//! 1,000 more 50 at a time, on Spin's SQLite store and on Redis, in both layouts. Gong is the
//! (fast) mock; the flush interval is long, so these are the buffering answers alone.
//!
//! `PATH=$PATH:../shared/bin cargo bench --profile dev --bench real_spin_webhooks`
//! (needs `spin` on PATH or SPIN_BIN, and redis-server for the Redis rows).

#[path = "../tests/real_spin/shared.rs"]
#[allow(dead_code)]
mod shared;
pub(crate) use shared::{client, harness, support};

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{AppDir, Redis, SpinOptions, SpinProcess};
use serde_json::json;
use support::mock_gong::MockGong;

const DELIVERIES: u32 = 1_000;
const CONCURRENCY: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(label: &str, mut latencies: Vec<Duration>, refused: usize, wall: Duration) {
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {label} | {} | {refused} | {:.1} ms | {:.1} ms | {:.1} ms | {:.0}/s |",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
        latencies.len() as f64 / wall.as_secs_f64()
    );
}

fn delivery(i: u32) -> serde_json::Value {
    json!({"type": "record.upserted", "timestamp": "2024-01-01T00:00:00Z",
           "data": {"objectType": "ACCOUNT", "record": {"objectId": format!("acc-{i}"), "modifiedDate": "2024-05-01T10:00:00Z", "name": "bench"}}})
}

/// Delivers until accepted, as a sender does: a 503 with Retry-After (the compact layout's
/// store-full line) is re-delivered after 100 ms. Returns the accepted answer's latency and the
/// number of refusals before it.
async fn deliver(
    bridge: client::Bridge,
    i: u32,
    prefix: &str,
) -> anyhow::Result<(Duration, usize)> {
    let mut refused = 0;
    loop {
        let reply = bridge
            .webhook(&format!("{prefix}-{i}"), &delivery(i))
            .await?;
        match reply.status {
            202 => return Ok((reply.elapsed, refused)),
            503 if reply.header("retry-after").is_some() && refused < 600 => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => anyhow::bail!("{} {}", reply.status, reply.text()),
        }
    }
}

async fn measure(label: &str, spin: &SpinProcess) -> anyhow::Result<()> {
    let bridge = spin.bridge;
    let started = Instant::now();
    let (mut sequential, mut refused) = (Vec::new(), 0);
    for i in 0..DELIVERIES {
        let (latency, refusals) = deliver(bridge, i, "seq").await?;
        sequential.push(latency);
        refused += refusals;
    }
    summary(
        &format!("{label}, sequential"),
        sequential,
        refused,
        started.elapsed(),
    );

    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in DELIVERIES..2 * DELIVERIES {
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            deliver(bridge, i, "par").await
        });
    }
    let (mut concurrent, mut refused) = (Vec::new(), 0);
    while let Some(joined) = tasks.join_next().await {
        let (latency, refusals) = joined??;
        concurrent.push(latency);
        refused += refusals;
    }
    summary(
        &format!("{label}, {CONCURRENCY} concurrent"),
        concurrent,
        refused,
        started.elapsed(),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (spin, version) =
        harness::find_spin("SPIN_BIN", "spin").map_err(|why| anyhow::anyhow!(why))?;
    println!("{} ({version})", spin.display());
    let root = support::component::target_dir().join("real-spin-bench");
    let _ = std::fs::remove_dir_all(&root);
    if std::env::var_os(support::component::WASM_ENV).is_none() {
        support::component::build_component()?;
    }
    std::fs::create_dir_all(root.join("app"))?;
    let app = AppDir::create(&root.join("app"), &support::component::component_path())?;
    let mock = MockGong::start().await;
    let redis = match Redis::available() {
        Ok(()) => Some(Redis::start(&root.join("redis"), 3).await?),
        Err(why) => {
            println!("no Redis rows: {why}");
            None
        }
    };
    println!("| store, layout, load | accepted | 503 re-deliveries | p50 | p99 | max | accepted/s |\n|---|---|---|---|---|---|---|");
    for (layout, max_keys) in [("default budget", "0"), ("kv_max_keys 1024", "1024")] {
        let options = SpinOptions::new(&spin, &mock)
            .var("kv_max_keys", max_keys)
            .var("flush_interval_seconds", "3600");
        let sqlite =
            SpinProcess::start(&app, &options, &root.join(format!("sqlite-{layout}"))).await?;
        measure(&format!("SQLite, {layout}"), &sqlite).await?;
        drop(sqlite);
        if let Some(redis) = &redis {
            redis.cli(&["FLUSHDB"])?;
            let on_redis = SpinProcess::start(
                &app,
                &options.clone().redis(&redis.url),
                &root.join(format!("redis-{layout}")),
            )
            .await?;
            measure(&format!("Redis, {layout}"), &on_redis).await?;
        }
    }
    Ok(())
}
