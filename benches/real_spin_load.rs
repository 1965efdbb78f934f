//! Speed on the real runtime with a real load generator (issue 12): `wrk` (Debian's) against a
//! `spin up` on 127.0.0.1, bounded in time. Single-record signed webhooks, sequential (1
//! connection) and 50 concurrent, on Spin's SQLite store and on Redis, with Gong (the mock)
//! answering at once and taking 10 s per upload; `GET /records/{t}/{id}/status` and `GET /healthz`;
//! and the time from `spin up` to its first answer with an empty and a warm compile cache.
//!
//! `PATH=$PATH:../shared/bin cargo bench --profile dev --bench real_spin_load`
//! (needs `spin`, `wrk`, and redis-server for the Redis rows). One signed delivery is replayed
//! for the whole run: every replay still does the whole accept path (signature, validation, the
//! store's key count, one inbox write); versions are de-duplicated later, at compaction.

#[path = "../tests/real_spin/shared.rs"]
#[allow(dead_code)]
mod shared;
pub(crate) use shared::{client, harness, support};

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::{AppDir, Redis, SpinOptions, SpinProcess};
use serde_json::json;
use support::mock_gong::{MockGong, MockResponse};
use support::signing::{sign_webhook_with, API_TOKEN, WEBHOOK_SECRET_BYTES};

const RUN_SECONDS: u32 = 10;

/// A wrk script sending `method path` with these headers and body.
fn wrk_script(
    dir: &Path,
    name: &str,
    method: &str,
    headers: &[(&str, String)],
    body: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let mut lua = format!("wrk.method = \"{method}\"\n");
    if !body.is_empty() {
        lua.push_str(&format!("wrk.body = {}\n", serde_json::to_string(body)?));
    }
    for (k, v) in headers {
        lua.push_str(&format!(
            "wrk.headers[\"{k}\"] = {}\n",
            serde_json::to_string(v)?
        ));
    }
    let path = dir.join(format!("{name}.lua"));
    std::fs::write(&path, lua)?;
    Ok(path)
}

/// wrk's duration text (`812.00us`, `1.20ms`, `2.01s`) in milliseconds.
fn millis(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

/// Runs wrk and prints one table row: requests, non-2xx, p50, p99, max, requests per second.
fn wrk(label: &str, url: &str, script: &Path, connections: u32) -> anyhow::Result<()> {
    let threads = connections.min(2).to_string();
    let out = Command::new("wrk")
        .args([
            "-t",
            &threads,
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{RUN_SECONDS}s"),
            "--timeout",
            "30s",
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "wrk: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |prefix: &str, index: usize| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(index))
            .unwrap_or("?")
            .to_owned()
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("?")
        .to_owned();
    let non_2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("0")
        .to_owned();
    println!(
        "| {label} | {connections} | {requests} | {non_2xx} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
        millis(&field("50%", 1)),
        millis(&field("99%", 1)),
        millis(&field("Latency", 3)),
        field("Requests/sec:", 1)
    );
    Ok(())
}

async fn webhooks(label: &str, dir: &Path, spin: &SpinProcess) -> anyhow::Result<()> {
    let body = serde_json::to_string(
        &json!({"type": "record.upserted", "timestamp": "2024-01-01T00:00:00Z",
        "data": {"objectType": "ACCOUNT", "record": {"objectId": "acc-1", "modifiedDate": "2024-05-01T10:00:00Z", "name": "bench"}}}),
    )?;
    let id = format!("bench-{}", client::unix_now());
    let ts = client::unix_now();
    let headers = [
        ("content-type", "application/json".to_owned()),
        ("webhook-id", id.clone()),
        ("webhook-timestamp", ts.to_string()),
        (
            "webhook-signature",
            sign_webhook_with(WEBHOOK_SECRET_BYTES, &id, ts, body.as_bytes()),
        ),
    ];
    let script = wrk_script(dir, "webhook", "POST", &headers, &body)?;
    let url = format!("http://{}/webhooks", spin.bridge.addr);
    wrk(
        &format!("{label}: POST /webhooks, sequential"),
        &url,
        &script,
        1,
    )?;
    wrk(
        &format!("{label}: POST /webhooks, 50 concurrent"),
        &url,
        &script,
        50,
    )?;
    Ok(())
}

/// Reads on a settled store: 200 records delivered and sent, their inbox keys merged (a store
/// right after a burst instead holds its backlog, which a lookup must read: see BENCHMARKS.md).
async fn reads(label: &str, dir: &Path, spin: &SpinProcess) -> anyhow::Result<()> {
    for i in 0..200u32 {
        let body = json!({"type": "record.upserted", "timestamp": "2024-01-01T00:00:00Z",
            "data": {"objectType": "ACCOUNT", "record": {"objectId": format!("acc-{i}"), "modifiedDate": "2024-05-01T10:00:00Z", "name": "bench"}}});
        spin.bridge
            .webhook(&format!("settle-{i}"), &body)
            .await?
            .expect(202);
    }
    spin.bridge.force_flush().await?.expect(200);
    spin.bridge.force_flush().await?.expect(200);
    let auth = [("authorization", format!("Bearer {API_TOKEN}"))];
    let status = wrk_script(dir, "status", "GET", &auth, "")?;
    wrk(
        &format!("{label}: GET /records/ACCOUNT/acc-1/status"),
        &format!("http://{}/records/ACCOUNT/acc-1/status", spin.bridge.addr),
        &status,
        50,
    )?;
    let health = wrk_script(dir, "healthz", "GET", &[], "")?;
    wrk(
        &format!("{label}: GET /healthz"),
        &format!("http://{}/healthz", spin.bridge.addr),
        &health,
        50,
    )?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (spin, version) =
        harness::find_spin("SPIN_BIN", "spin").map_err(|why| anyhow::anyhow!(why))?;
    anyhow::ensure!(
        harness::find_on_path("wrk").is_some(),
        "no wrk on PATH (apt-get install wrk)"
    );
    println!(
        "{} ({version}); wrk {RUN_SECONDS} s per row",
        spin.display()
    );
    let root = support::component::target_dir().join("real-spin-load");
    let _ = std::fs::remove_dir_all(&root);
    if std::env::var_os(support::component::WASM_ENV).is_none() {
        support::component::build_component()?;
    }
    let wasm = support::component::component_path();
    println!("component: {} bytes", std::fs::metadata(&wasm)?.len());
    std::fs::create_dir_all(root.join("app"))?;
    let app = AppDir::create(&root.join("app"), &wasm)?;
    let redis = match Redis::available() {
        Ok(()) => Some(Redis::start(&root.join("redis"), 3).await?),
        Err(why) => {
            println!("no Redis rows: {why}");
            None
        }
    };

    println!("\n| what | connections | requests | non-2xx | p50 | p99 | max | requests/s |\n|---|---|---|---|---|---|---|---|");
    for (gong, upload_takes) in [
        ("Gong fast", Duration::ZERO),
        ("Gong 10 s per upload", Duration::from_secs(10)),
    ] {
        let mock = MockGong::start().await;
        mock.always(
            "POST",
            "/v2/crm/entities",
            MockResponse::json(201, json!({"requestId": "bench"})).delay(upload_takes),
        );
        // A flush becomes due every second, so uploads (and their wait) run during the load.
        let options = SpinOptions::new(&spin, &mock).var("flush_interval_seconds", "1");
        let dir = root.join(gong.replace(' ', "-"));
        let sqlite = SpinProcess::start(&app, &options, &dir.join("sqlite")).await?;
        if upload_takes.is_zero() {
            reads("SQLite", &dir, &sqlite).await?;
        }
        webhooks(&format!("SQLite, {gong}"), &dir, &sqlite).await?;
        drop(sqlite);
        if let Some(redis) = &redis {
            redis.cli(&["FLUSHDB"])?;
            let on_redis =
                SpinProcess::start(&app, &options.clone().redis(&redis.url), &dir.join("redis"))
                    .await?;
            if upload_takes.is_zero() {
                reads("Redis", &dir, &on_redis).await?;
            }
            webhooks(&format!("Redis, {gong}"), &dir, &on_redis).await?;
        }
        println!(
            "| ({gong}: {} uploads reached Gong) | | | | | | | |",
            mock.received_on("POST", "/v2/crm/entities").len()
        );
    }

    // From `spin up` to the first answered /healthz: a fresh wasmtime cache directory each time
    // (Spin compiles the component), then the same directory again (a cache hit).
    println!("\n| spin up → first answer | run 1 | run 2 | run 3 |\n|---|---|---|---|");
    let mock = MockGong::start().await;
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for run in 0..3 {
        let cache_dir = root.join(format!("cache-{run}"));
        std::fs::create_dir_all(&cache_dir)?;
        let cache_file = root.join(format!("cache-{run}.toml"));
        std::fs::write(
            &cache_file,
            format!("[cache]\ndirectory = {:?}\n", cache_dir.to_string_lossy()),
        )?;
        let options = SpinOptions::new(&spin, &mock)
            .arg("--cache")
            .arg(&cache_file.to_string_lossy());
        for (times, name) in [(&mut cold, "cold"), (&mut warm, "warm")] {
            let process =
                SpinProcess::start(&app, &options, &root.join(format!("start-{run}-{name}")))
                    .await?;
            times.push(process.ready_after);
        }
    }
    let row = |label: &str, times: &[Duration]| {
        let cells: Vec<String> = times
            .iter()
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    row("empty compile cache", &cold);
    row("warm compile cache", &warm);
    Ok(())
}
