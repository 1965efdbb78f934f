//! Host-side benchmark of the real component in the in-process Spin-like host (tests/support).
//!
//! Measures, with plain `std::time` (no criterion):
//!
//! 1. the size of the release component (`target/wasm32-wasip2/release/gong_crm_bridge.wasm`,
//!    built by the support module unless `GONG_BRIDGE_WASM` points at a prebuilt one);
//! 2. the host's uncached compile time (`Component::new` from the bytes, on the host's own
//!    engine), link time, and the per-request cost of a fresh `Store` + instantiating the
//!    shared `ProxyPre` (no request handled);
//! 3. per-request latency, sequentially, of `GET /healthz` and `GET /integration` through the
//!    component (the latter forwards to the mock Gong's `GET /v2/crm/integrations`), and of the
//!    mock Gong called directly, so the bridge's own overhead reads as the difference.
//!
//! The request kinds are interleaved round-robin (one of each per round) so that drift on a
//! shared machine affects them alike. The report is Markdown on stdout (progress on stderr).
//!
//! ```text
//! cargo bench --profile dev --bench host          # deps at opt-level 2, no wasmtime rebuild
//! CARGO_PROFILE_DEV_OPT_LEVEL=2 cargo bench --profile dev --bench host
//! BENCH_HOST_REQUESTS=5000 cargo bench --profile dev --bench host
//! ```
//!
//! The second form is the one to publish: with the plain dev profile this crate itself (the
//! tests/support host glue and every wasmtime/hyper/tokio generic monomorphised for its
//! `HostState`) is at opt-level 0, which about doubles the request latencies. It recompiles
//! only this crate, not wasmtime (`--profile bench` would rebuild everything at opt-level 3).
//!
//! Knobs (env): `BENCH_HOST_REQUESTS` (measured per kind, default 2000), `BENCH_HOST_WARMUP`
//! (default 200), `BENCH_HOST_COMPILES` (uncached compiles, default 3).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::WasiHttpCtx;

use support::outbound::{OutboundHooks, OutboundLog};
use support::{HostState, MemKv, TestApp, API_TOKEN, GONG_ACCESS_KEY, GONG_ACCESS_KEY_SECRET};

/// The `integration_id` variable of the benchmarked app (any valid id will do).
const INTEGRATION_ID: &str = "5517027188234205706";
/// The mock Gong endpoint `GET /integration` forwards to.
const GONG_LIST_PATH: &str = "/v2/crm/integrations";

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a non-negative integer")),
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(e) => bail!("{name}: {e}"),
    }
}

// ----- statistics ----------------------------------------------------------------------------

/// Summary of a set of samples. Percentiles use the nearest-rank method on the sorted
/// samples: the p-th percentile is the smallest sample with at least p% of the samples at or
/// below it, i.e. `sorted[ceil(p/100 * n) - 1]` (computed in integers, no float rounding).
struct Stats {
    n: usize,
    min: Duration,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
    mean: Duration,
}

/// Nearest-rank percentile of `sorted` (ascending, non-empty); `per_mille` is p × 10
/// (500 = p50, 990 = p99, 999 = p99.9).
fn nearest_rank(sorted: &[Duration], per_mille: usize) -> Duration {
    assert!(!sorted.is_empty(), "percentile of no samples");
    assert!(per_mille <= 1000, "percentile above 100");
    let n = sorted.len();
    let rank = (per_mille * n).div_ceil(1000).max(1); // 1-based, in 1..=n
    sorted[rank - 1]
}

impl Stats {
    fn of(samples: &[Duration]) -> Stats {
        assert!(!samples.is_empty(), "statistics of no samples");
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let total: u128 = sorted.iter().map(Duration::as_nanos).sum();
        let mean_ns = total / sorted.len() as u128;
        Stats {
            n: sorted.len(),
            min: sorted[0],
            p50: nearest_rank(&sorted, 500),
            p90: nearest_rank(&sorted, 900),
            p99: nearest_rank(&sorted, 990),
            max: sorted[sorted.len() - 1],
            mean: Duration::from_nanos(u64::try_from(mean_ns).unwrap_or(u64::MAX)),
        }
    }
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// Signed difference `a - b` in µs.
fn diff_us(a: Duration, b: Duration) -> String {
    format!("{:+.1}", (a.as_secs_f64() - b.as_secs_f64()) * 1e6)
}

fn table_header() {
    println!("| measurement | n | min µs | p50 µs | p90 µs | p99 µs | max µs | mean µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
}

fn table_row(label: &str, s: &Stats) {
    println!(
        "| {label} | {} | {} | {} | {} | {} | {} | {} |",
        s.n,
        us(s.min),
        us(s.p50),
        us(s.p90),
        us(s.p99),
        us(s.max),
        us(s.mean)
    );
}

// ----- machine -------------------------------------------------------------------------------

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The 1/5/15-minute load averages (other work on the machine skews every figure).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn cpus() -> String {
    std::thread::available_parallelism()
        .map(|n| n.to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

// ----- host-side costs -----------------------------------------------------------------------

/// A `HostState` like the one `TestApp::send` gives each request (empty vars, nothing allowed).
fn fresh_state() -> HostState {
    HostState {
        memory: support::spin::MemoryWatch {
            peak: Default::default(),
        },
        wasi: WasiCtx::builder().build(),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        hooks: OutboundHooks {
            allowed: Vec::new(),
            log: Arc::new(OutboundLog::default()),
        },
        kv: MemKv::default(),
        vars: HashMap::new(),
    }
}

struct InstantiateSamples {
    /// `HostState` + `Store::new` + epoch settings.
    store: Vec<Duration>,
    /// `ProxyPre::instantiate_async` into that store.
    instantiate: Vec<Duration>,
    /// Both of the above.
    total: Vec<Duration>,
    /// Dropping the store (and with it the instance).
    drop: Vec<Duration>,
}

async fn bench_instantiate(
    pre: &ProxyPre<HostState>,
    warmup: usize,
    n: usize,
) -> anyhow::Result<InstantiateSamples> {
    let engine = &support::runtime().engine;
    let mut out = InstantiateSamples {
        store: Vec::with_capacity(n),
        instantiate: Vec::with_capacity(n),
        total: Vec::with_capacity(n),
        drop: Vec::with_capacity(n),
    };
    for i in 0..warmup + n {
        let t0 = Instant::now();
        let mut store = Store::new(engine, fresh_state());
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        let t1 = Instant::now();
        let _proxy = pre
            .instantiate_async(&mut store)
            .await
            .map_err(anyhow::Error::from)
            .context("instantiating the component into a fresh store")?;
        let t2 = Instant::now();
        // The instance lives in the store: dropping the store tears both down.
        drop(store);
        let t3 = Instant::now();
        if i >= warmup {
            out.store.push(t1 - t0);
            out.instantiate.push(t2 - t1);
            out.total.push(t2 - t0);
            out.drop.push(t3 - t2);
        }
    }
    Ok(out)
}

// ----- requests ------------------------------------------------------------------------------

/// One request through the component; checks the status is 200.
async fn through_component(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let response = app.try_request("GET", path, headers, Vec::new()).await?;
    let elapsed = started.elapsed();
    ensure!(
        response.status == 200,
        "GET {path} through the component answered {}: {}",
        response.status,
        response.text()
    );
    Ok(elapsed)
}

fn mock_request(addr: SocketAddr, gong_auth: &str) -> anyhow::Result<hyper::Request<Empty<Bytes>>> {
    hyper::Request::get(GONG_LIST_PATH)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::AUTHORIZATION, gong_auth)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::new())
        .context("building the request to the mock Gong")
}

async fn check_mock_response(
    response: hyper::Response<hyper::body::Incoming>,
) -> anyhow::Result<()> {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the mock Gong's response body")?
        .to_bytes();
    ensure!(
        status == hyper::StatusCode::OK,
        "mock Gong answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

/// `GET /v2/crm/integrations` on the mock over a fresh HTTP/1.1 connection, as the host's
/// outbound sender does for each request of the component. The connection task is awaited
/// after the clock stops (the component path likewise answers before its connection closes).
async fn mock_direct_fresh(addr: SocketAddr, gong_auth: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the mock Gong at {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1 handshake with the mock Gong")?;
    let conn = tokio::spawn(conn);
    let response = sender
        .send_request(mock_request(addr, gong_auth)?)
        .await
        .context("sending to the mock Gong")?;
    check_mock_response(response).await?;
    let elapsed = started.elapsed();
    drop(sender);
    conn.await
        .context("the mock Gong connection task panicked")?
        .context("the mock Gong connection failed")?;
    Ok(elapsed)
}

/// A kept-alive HTTP/1.1 connection to the mock (reference: no connect/handshake per request).
struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
}

impl KeepAlive {
    async fn connect(addr: SocketAddr) -> anyhow::Result<KeepAlive> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the mock Gong at {addr}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1 handshake with the mock Gong")?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("[bench] keep-alive connection to the mock Gong failed: {e}");
            }
        });
        Ok(KeepAlive { sender, addr })
    }

    async fn get(&mut self, gong_auth: &str) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.sender
            .ready()
            .await
            .context("the kept-alive mock Gong connection closed")?;
        let response = self
            .sender
            .send_request(mock_request(self.addr, gong_auth)?)
            .await
            .context("sending to the mock Gong (keep-alive)")?;
        check_mock_response(response).await?;
        Ok(started.elapsed())
    }
}

// ----- main ----------------------------------------------------------------------------------

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench host: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let n = env_usize("BENCH_HOST_REQUESTS", 2000)?;
    let warmup = env_usize("BENCH_HOST_WARMUP", 200)?;
    let compiles = env_usize("BENCH_HOST_COMPILES", 3)?;
    ensure!(n > 0, "BENCH_HOST_REQUESTS must be at least 1");
    ensure!(compiles > 0, "BENCH_HOST_COMPILES must be at least 1");
    check_nearest_rank();
    let bench_started = Instant::now();
    let load_at_start = load_average();

    // Builds the component (cargo build --release --target wasm32-wasip2 --lib) and loads it
    // (possibly from the on-disk cache; the uncached compile is measured below).
    eprintln!("[bench] loading the shared runtime (builds the component if needed)");
    let rt = support::runtime();
    let wasm = std::fs::read(&rt.wasm_path)
        .with_context(|| format!("reading {}", rt.wasm_path.display()))?;

    // --- compile / link (uncached, on the host's own engine) ---
    eprintln!("[bench] compiling the component {compiles} time(s), uncached");
    let mut compile_times = Vec::with_capacity(compiles);
    let mut component = None;
    for _ in 0..compiles {
        let started = Instant::now();
        let c = Component::new(&rt.engine, &wasm)
            .map_err(anyhow::Error::from)
            .context("Component::new (uncached)")?;
        compile_times.push(started.elapsed());
        component = Some(c);
    }
    let component = component.context("no compile ran")?;

    let serialized = component
        .serialize()
        .map_err(anyhow::Error::from)
        .context("serialising the compiled component")?;
    let started = Instant::now();
    // SAFETY: `serialized` was produced just above by `Component::serialize` on this engine.
    let deserialized = unsafe { Component::deserialize(&rt.engine, &serialized) }
        .map_err(anyhow::Error::from)
        .context("deserialising the compiled component")?;
    let deserialize_time = started.elapsed();
    drop(deserialized);

    let started = Instant::now();
    let mut linker = Linker::<HostState>::new(&rt.engine);
    support::spin::add_to_linker(&mut linker)
        .map_err(anyhow::Error::from)
        .context("adding the host interfaces")?;
    let instance_pre = linker
        .instantiate_pre(&component)
        .map_err(anyhow::Error::from)
        .context("linking the component (instantiate_pre)")?;
    let pre = ProxyPre::new(instance_pre)
        .map_err(anyhow::Error::from)
        .context("ProxyPre::new")?;
    let link_time = started.elapsed();

    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;

    tokio_rt.block_on(async move {
        // --- instantiate (no request) ---
        eprintln!("[bench] instantiating {warmup} + {n} times");
        let inst = bench_instantiate(&pre, warmup, n).await?;

        // --- requests ---
        let app = TestApp::builder()
            .var("integration_id", INTEGRATION_ID)
            // The bridge's call budget (3 Gong calls/s, 450/hour, 9,000/day by default) would
            // pace or refuse the benchmark's calls; 0 switches each limit off. The budget's KV
            // bookkeeping still runs on every outbound call.
            .var("gong_calls_per_second", "0")
            .var("outbound_hourly_cap", "0")
            .var("gong_daily_call_cap", "0")
            .guest_stderr(false)
            .build()
            .await;
        let mock = app.mock().clone();
        let addr = mock.addr();
        let bearer = format!("Bearer {API_TOKEN}");
        let auth_headers = [("authorization", bearer.as_str())];
        let gong_auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{GONG_ACCESS_KEY}:{GONG_ACCESS_KEY_SECRET}"))
        );
        let mut keep_alive = KeepAlive::connect(addr).await?;

        eprintln!("[bench] {warmup} + {n} rounds of 4 sequential requests");
        let mut healthz = Vec::with_capacity(n);
        let mut integration = Vec::with_capacity(n);
        let mut direct_fresh = Vec::with_capacity(n);
        let mut direct_keep = Vec::with_capacity(n);
        let requests_started = Instant::now();
        for round in 0..warmup + n {
            let h = through_component(&app, "/healthz", &[]).await?;
            let i = through_component(&app, "/integration", &auth_headers).await?;
            let f = mock_direct_fresh(addr, &gong_auth).await?;
            let k = keep_alive.get(&gong_auth).await?;
            if round >= warmup {
                healthz.push(h);
                integration.push(i);
                direct_fresh.push(f);
                direct_keep.push(k);
            }
        }
        let requests_time = requests_started.elapsed();
        // Every `GET /integration` really reached the mock (plus the two direct kinds).
        let rounds = warmup + n;
        let seen = mock.received_on("GET", GONG_LIST_PATH).len();
        ensure!(
            seen == 3 * rounds,
            "the mock saw {seen} GET {GONG_LIST_PATH}, expected {} (3 per round)",
            3 * rounds
        );
        ensure!(
            app.outbound().denied() == 0,
            "the component's outbound requests were denied: {:?}",
            app.outbound().denied_urls()
        );

        // --- report ---
        let wasm_size = wasm.len();
        let compile = Stats::of(&compile_times);
        let h = Stats::of(&healthz);
        let i = Stats::of(&integration);
        let f = Stats::of(&direct_fresh);
        let k = Stats::of(&direct_keep);

        println!("## Host benchmark (`benches/host.rs`)");
        println!();
        println!("Machine: {}, {} CPUs available.", cpu_model(), cpus());
        println!(
            "Bench crate (tests/support host glue, plus the wasmtime/hyper/tokio generics \
             monomorphised for it): debug assertions {}, CARGO_PROFILE_DEV_OPT_LEVEL at build \
             time {}; dependencies per the Cargo profile in use.",
            if cfg!(debug_assertions) { "on" } else { "off" },
            option_env!("CARGO_PROFILE_DEV_OPT_LEVEL").unwrap_or("unset")
        );
        println!(
            "Warm-up {warmup}, then {n} measured per kind; requests sequential on one tokio \
             multi-thread runtime, the 4 kinds interleaved round-robin. Call budget off \
             (`gong_calls_per_second`, `outbound_hourly_cap`, `gong_daily_call_cap` = 0)."
        );
        println!();
        println!("### Component and host setup");
        println!();
        println!("| measurement | value |");
        println!("|---|---:|");
        println!(
            "| release component size (`{}`) | {wasm_size} bytes ({:.1} KiB) |",
            rt.wasm_path
                .strip_prefix(env!("CARGO_MANIFEST_DIR"))
                .unwrap_or(&rt.wasm_path)
                .display(),
            wasm_size as f64 / 1024.0
        );
        println!(
            "| compile, uncached (`Component::new` from bytes), {} run(s) | min {} ms, p50 {} ms, max {} ms |",
            compile.n,
            ms(compile.min),
            ms(compile.p50),
            ms(compile.max)
        );
        println!(
            "| load precompiled (`Component::deserialize`, {} bytes in memory) | {} ms |",
            serialized.len(),
            ms(deserialize_time)
        );
        println!(
            "| link (`Linker` + host interfaces + `instantiate_pre` + `ProxyPre::new`) | {} ms |",
            ms(link_time)
        );
        println!();
        println!("### Per-request instantiation (no request handled)");
        println!();
        table_header();
        table_row("fresh `Store` + `HostState`", &Stats::of(&inst.store));
        table_row("`ProxyPre::instantiate_async`", &Stats::of(&inst.instantiate));
        table_row("**store + instantiate**", &Stats::of(&inst.total));
        table_row("drop store + instance (after)", &Stats::of(&inst.drop));
        println!();
        println!("### Request latency (complete response, body read)");
        println!();
        table_header();
        table_row("`GET /healthz` via component", &h);
        table_row("`GET /integration` via component (→ mock Gong)", &i);
        table_row(
            "mock Gong `GET /v2/crm/integrations` direct, new connection",
            &f,
        );
        table_row(
            "mock Gong `GET /v2/crm/integrations` direct, kept-alive connection",
            &k,
        );
        println!();
        println!("### Derived (difference of the statistics above)");
        println!();
        println!("| difference | Δ p50 µs | Δ p99 µs | Δ mean µs |");
        println!("|---|---:|---:|---:|");
        println!(
            "| bridge overhead: `GET /integration` − mock direct (new connection, as the host's outbound sender) | {} | {} | {} |",
            diff_us(i.p50, f.p50),
            diff_us(i.p99, f.p99),
            diff_us(i.mean, f.mean)
        );
        println!(
            "| outbound call inside the component: `GET /integration` − `GET /healthz` | {} | {} | {} |",
            diff_us(i.p50, h.p50),
            diff_us(i.p99, h.p99),
            diff_us(i.mean, h.mean)
        );
        println!(
            "| connection setup: mock direct new connection − kept-alive | {} | {} | {} |",
            diff_us(f.p50, k.p50),
            diff_us(f.p99, k.p99),
            diff_us(f.mean, k.mean)
        );
        println!();
        println!(
            "Load average (1/5/15 min) at start {load_at_start}, at end {}.",
            load_average()
        );
        println!(
            "Request phase {:.1} s; whole run {:.1} s (component build {:.1} s, initial load {} ms{}).",
            requests_time.as_secs_f64(),
            bench_started.elapsed().as_secs_f64(),
            rt.build_time.as_secs_f64(),
            ms(rt.load_time),
            if rt.from_cache { " from the on-disk cache" } else { ", compiled" }
        );
        anyhow::Ok(())
    })
}

/// Checks `nearest_rank` on known cases (the bench has no test harness, so it runs at start).
fn check_nearest_rank() {
    let d = |v: &[u64]| -> Vec<Duration> { v.iter().map(|&x| Duration::from_micros(x)).collect() };
    let hundred = d(&(1..=100).collect::<Vec<_>>());
    assert_eq!(nearest_rank(&hundred, 0), Duration::from_micros(1));
    assert_eq!(nearest_rank(&hundred, 500), Duration::from_micros(50));
    assert_eq!(nearest_rank(&hundred, 990), Duration::from_micros(99));
    assert_eq!(nearest_rank(&hundred, 1000), Duration::from_micros(100));
    let five = d(&[10, 20, 30, 40, 50]);
    assert_eq!(nearest_rank(&five, 500), Duration::from_micros(30));
    assert_eq!(nearest_rank(&five, 990), Duration::from_micros(50));
    assert_eq!(nearest_rank(&d(&[7]), 990), Duration::from_micros(7));
    let two_thousand = d(&(1..=2000).collect::<Vec<_>>());
    assert_eq!(
        nearest_rank(&two_thousand, 500),
        Duration::from_micros(1000)
    );
    assert_eq!(
        nearest_rank(&two_thousand, 990),
        Duration::from_micros(1980)
    );
}
