//! In-process Spin-like host for the real `gong_crm_bridge.wasm`.
//!
//! The Spin CLI is not available to the test suite, so the tests run the built component in
//! wasmtime with the pieces of Spin it uses:
//!
//! * `wasi:http/incoming-handler` driven per request ([`TestApp::request`]), with the
//!   `spin-*` headers Spin adds for a `/...` route;
//! * `fermyon:spin/key-value@2.0.0` backed by a shared [`MemKv`] (Spin/Fermyon limits,
//!   failure injection, counters);
//! * `fermyon:spin/variables@2.0.0` from per-app [`Vars`];
//! * outbound `wasi:http` restricted like `allowed_outbound_hosts = ["{{ gong_base_url }}"]`,
//!   usually pointed at a [`MockGong`].
//!
//! One `Engine` + compiled `Component` + `ProxyPre` is shared by the whole process
//! ([`runtime`]); each request gets a fresh `Store` and instance, like Spin.
//!
//! Also used by `examples/serve.rs` (`#[path = "../tests/support/mod.rs"] mod support;`).

#![allow(dead_code)]

pub mod component;
pub mod kv;
pub mod mock_attio;
pub mod mock_close;
pub mod mock_gong;
pub mod mock_pipedrive;
pub mod outbound;
pub mod signing;
pub mod spin;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

// Re-exports for the tests; not every test binary uses every item.
#[allow(unused_imports)]
pub use component::{build_component, component_path, manifest_dir, target_dir, WASM_ENV};
#[allow(unused_imports)]
pub use kv::{KvStats, MemKv, INJECTED_FAILURE, MAX_KEY_BYTES, MAX_VALUE_BYTES};
#[allow(unused_imports)]
pub use mock_gong::{
    build_multipart, parse_multipart, refused_url, MockGong, MockResponse, MultipartPart,
    RecordedRequest,
};
#[allow(unused_imports)]
pub use outbound::{is_allowed, Origin, OutboundAttempt, OutboundLog};
pub use signing::*;
pub use spin::HostState;

// ----- defaults ------------------------------------------------------------------------------

/// The authority the component sees in incoming URLs (Spin's default listen address).
pub const SPIN_AUTHORITY: &str = "127.0.0.1:3000";

/// Upper bound on one request (guest + collecting the body) unless the builder says otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Env var: set to `1` to skip the on-disk cache of the compiled component.
pub const NO_CACHE_ENV: &str = "GONG_BRIDGE_NO_CACHE";

// ----- the shared runtime --------------------------------------------------------------------

/// Process-wide engine, compiled component and pre-instantiated proxy.
pub struct Runtime {
    pub engine: Engine,
    pub pre: ProxyPre<HostState>,
    pub wasm_path: PathBuf,
    /// Time spent in `cargo build` (zero when `GONG_BRIDGE_WASM` is set).
    pub build_time: Duration,
    /// Time spent compiling (or loading from cache) and linking the component.
    pub load_time: Duration,
    /// Whether the compiled component came from the on-disk cache.
    pub from_cache: bool,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The shared runtime, built on first use: runs `cargo build --release --target
/// wasm32-wasip2 --lib` (unless `GONG_BRIDGE_WASM` is set), compiles the component and
/// links it. Blocks the calling thread the first time. Panics with the cause on failure
/// (every later call panics with the same message, without retrying the build).
pub fn runtime() -> &'static Runtime {
    match RUNTIME.get_or_init(|| load_runtime().map_err(|e| format!("{e:#}"))) {
        Ok(rt) => rt,
        Err(e) => panic!("test host: the component could not be loaded:\n{e}"),
    }
}

fn new_engine() -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // Guests yield to the executor every epoch tick, so request timeouts fire and concurrent
    // requests make progress even when a guest computes without doing I/O.
    config.epoch_interruption(true);
    Engine::new(&config).map_err(anyhow::Error::from)
}

fn load_runtime() -> anyhow::Result<Runtime> {
    let wasm_path = component_path();
    let build_time = if std::env::var_os(WASM_ENV).is_some_and(|p| !p.is_empty()) {
        Duration::ZERO
    } else {
        build_component()?
    };
    let started = Instant::now();
    let engine = new_engine()?;
    let wasm = std::fs::read(&wasm_path)
        .with_context(|| format!("reading the component {}", wasm_path.display()))?;
    let (component, from_cache) = compile_cached(&engine, &wasm)
        .with_context(|| format!("compiling {}", wasm_path.display()))?;

    let mut linker = Linker::<HostState>::new(&engine);
    spin::add_to_linker(&mut linker).map_err(anyhow::Error::from)?;
    let instance_pre = linker.instantiate_pre(&component).map_err(|e| {
        anyhow!(
            "linking {}: {e:#}\n(the component imports something this host does not provide; \
             `wasm-tools component wit` on it lists its imports)",
            wasm_path.display()
        )
    })?;
    let pre = ProxyPre::new(instance_pre).map_err(|e| {
        anyhow!(
            "{} does not export wasi:http/incoming-handler: {e:#}",
            wasm_path.display()
        )
    })?;
    let load_time = started.elapsed();

    // Epoch ticker for `epoch_deadline_async_yield_and_update`.
    let ticker = engine.clone();
    std::thread::Builder::new()
        .name("test-host-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(5));
            ticker.increment_epoch();
        })
        .context("spawning the epoch thread")?;

    eprintln!(
        "[test-host] loaded {} (build {:.1?}, {} {:.1?})",
        wasm_path.display(),
        build_time,
        if from_cache {
            "cached compile"
        } else {
            "compile"
        },
        load_time
    );
    Ok(Runtime {
        engine,
        pre,
        wasm_path,
        build_time,
        load_time,
        from_cache,
    })
}

/// Compiles `wasm`, reusing a previous compilation from `target/test-host-cache/` when the
/// bytes and the engine configuration are the same.
fn compile_cached(engine: &Engine, wasm: &[u8]) -> anyhow::Result<(Component, bool)> {
    use std::hash::{Hash, Hasher};
    if std::env::var_os(NO_CACHE_ENV).is_some_and(|v| v == "1") {
        return Ok((
            Component::new(engine, wasm).map_err(anyhow::Error::from)?,
            false,
        ));
    }
    let mut hasher = std::hash::DefaultHasher::new();
    wasm.hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    let dir = target_dir().join("test-host-cache");
    let path = dir.join(format!("{:016x}.cwasm", hasher.finish()));
    if path.exists() {
        // SAFETY: the file was written by `Component::serialize` below, for an engine with the
        // same compatibility hash; a stale or corrupt file makes deserialisation fail and we
        // fall back to compiling.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok((component, true)),
            Err(e) => eprintln!("[test-host] ignoring cache {}: {e}", path.display()),
        }
    }
    let component = Component::new(engine, wasm).map_err(anyhow::Error::from)?;
    let write = || -> anyhow::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let bytes = component.serialize().map_err(anyhow::Error::from)?;
        let tmp = path.with_extension(format!("cwasm.{}.tmp", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    };
    if let Err(e) = write() {
        eprintln!("[test-host] could not cache the compiled component: {e:#}");
    }
    prune_cache(&dir, 6);
    Ok((component, false))
}

/// Keeps the `keep` most recently written `.cwasm` files of `dir` (each is several MB).
fn prune_cache(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    files.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    for (_, old) in files.into_iter().skip(keep) {
        let _ = std::fs::remove_file(old);
    }
}

// ----- variables -----------------------------------------------------------------------------

/// The app's Spin variables. Cheap to clone (shared); each request snapshots them.
#[derive(Clone, Default, Debug)]
pub struct Vars {
    inner: Arc<RwLock<HashMap<String, String>>>,
}

impl Vars {
    pub fn get(&self, name: &str) -> Option<String> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn set(&self, name: &str, value: &str) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), value.to_owned());
    }

    pub fn remove(&self, name: &str) -> Option<String> {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
    }

    pub fn snapshot(&self) -> HashMap<String, String> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

// ----- responses -----------------------------------------------------------------------------

/// A complete response of the component.
#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl TestResponse {
    /// The body as JSON; panics with status and body if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body: {}",
                self.status,
                self.text()
            )
        })
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Panics (showing the body) unless the status is `expected`.
    #[track_caller]
    pub fn assert_status(&self, expected: u16) -> &Self {
        assert_eq!(
            self.status,
            expected,
            "unexpected status; body: {}",
            self.text()
        );
        self
    }
}

// ----- the app -------------------------------------------------------------------------------

struct AppInner {
    kv: MemKv,
    vars: Vars,
    mock: Option<MockGong>,
    outbound: Arc<OutboundLog>,
    extra_allowed: Vec<Origin>,
    request_timeout: Duration,
    guest_stderr: bool,
    /// The largest linear memory any instance of this app asked for (bytes).
    memory_peak: Arc<std::sync::atomic::AtomicUsize>,
}

/// The component as Spin would run it, with its own variables, a (possibly shared) KV store
/// and usually a `MockGong`. Cheap to clone; `Send + Sync`; requests may run concurrently.
#[derive(Clone)]
pub struct TestApp {
    inner: Arc<AppInner>,
}

/// Builder of a [`TestApp`]; see [`TestApp::builder`].
pub struct TestAppBuilder {
    overrides: Vec<(String, Option<String>)>,
    default_vars: bool,
    kv: Option<MemKv>,
    mock: MockChoice,
    extra_allowed: Vec<String>,
    request_timeout: Duration,
    guest_stderr: bool,
}

enum MockChoice {
    Fresh,
    Given(MockGong),
    Without,
}

impl TestAppBuilder {
    /// Sets a Spin variable (overrides the defaults).
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.overrides
            .push((name.to_owned(), Some(value.to_owned())));
        self
    }

    /// Leaves a variable undefined (`variables.get` returns `undefined`).
    pub fn without_var(mut self, name: &str) -> Self {
        self.overrides.push((name.to_owned(), None));
        self
    }

    /// Starts from no variables at all instead of the defaults.
    pub fn no_default_vars(mut self) -> Self {
        self.default_vars = false;
        self
    }

    /// Uses `kv` (e.g. shared with another app) instead of a fresh store.
    pub fn kv(mut self, kv: MemKv) -> Self {
        self.kv = Some(kv);
        self
    }

    /// Uses `mock` instead of starting a fresh `MockGong`.
    pub fn mock(mut self, mock: MockGong) -> Self {
        self.mock = MockChoice::Given(mock);
        self
    }

    /// No `MockGong` (then `gong_base_url` is only set if given with `var`).
    pub fn no_mock(mut self) -> Self {
        self.mock = MockChoice::Without;
        self
    }

    /// Also allows outbound requests to `url`'s origin (besides `gong_base_url`).
    pub fn allow_outbound(mut self, url: &str) -> Self {
        self.extra_allowed.push(url.to_owned());
        self
    }

    /// Fails a request (and aborts the guest) after `timeout`. Default 60 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Whether the guest's stderr is shown (default: yes).
    pub fn guest_stderr(mut self, show: bool) -> Self {
        self.guest_stderr = show;
        self
    }

    /// Loads the component (building it the first time) and starts the mock if needed.
    pub async fn build(self) -> TestApp {
        // Load eagerly so a broken build fails at `build()`, not in the middle of a test.
        runtime();
        let mock = match self.mock {
            MockChoice::Fresh => Some(MockGong::start().await),
            MockChoice::Given(m) => Some(m),
            MockChoice::Without => None,
        };
        let vars = Vars::default();
        if self.default_vars {
            if let Some(m) = &mock {
                vars.set("gong_base_url", &m.base_url());
            }
            vars.set("gong_access_key", GONG_ACCESS_KEY);
            vars.set("gong_access_key_secret", GONG_ACCESS_KEY_SECRET);
            vars.set("api_token", API_TOKEN);
            vars.set("webhook_secret", &webhook_secret());
        }
        for (name, value) in &self.overrides {
            match value {
                Some(v) => vars.set(name, v),
                None => {
                    vars.remove(name);
                }
            }
        }
        let extra_allowed = self
            .extra_allowed
            .iter()
            .map(|u| Origin::parse(u).unwrap_or_else(|e| panic!("allow_outbound: {e}")))
            .collect();
        TestApp {
            inner: Arc::new(AppInner {
                kv: self.kv.unwrap_or_default(),
                vars,
                mock,
                outbound: Arc::new(OutboundLog::default()),
                extra_allowed,
                request_timeout: self.request_timeout,
                guest_stderr: self.guest_stderr,
                memory_peak: Arc::default(),
            }),
        }
    }
}

/// An incoming request for [`TestApp::send`].
#[derive(Debug, Clone)]
pub struct IncomingRequest {
    pub method: String,
    /// Must start with `/`.
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Authority of the URL the guest sees (default `127.0.0.1:3000`).
    pub authority: String,
    /// Value of `spin-client-addr` (default `127.0.0.1:0`).
    pub client_addr: String,
}

impl IncomingRequest {
    pub fn new(method: &str, path_and_query: &str) -> Self {
        Self {
            method: method.to_owned(),
            path_and_query: path_and_query.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            authority: SPIN_AUTHORITY.to_owned(),
            client_addr: "127.0.0.1:0".to_owned(),
        }
    }
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            overrides: Vec::new(),
            default_vars: true,
            kv: None,
            mock: MockChoice::Fresh,
            extra_allowed: Vec::new(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            guest_stderr: true,
        }
    }

    /// Defaults: a fresh `MockGong`, a fresh `MemKv`, the default variables.
    pub async fn spawn() -> TestApp {
        Self::builder().build().await
    }

    /// The app's `MockGong`; panics if it was built with `no_mock()`.
    pub fn mock(&self) -> &MockGong {
        self.inner
            .mock
            .as_ref()
            .expect("this TestApp was built with no_mock(): it has no MockGong")
    }

    pub fn try_mock(&self) -> Option<&MockGong> {
        self.inner.mock.as_ref()
    }

    /// The largest linear memory (bytes) any request's instance reached since the last reset:
    /// the guest's whole-request memory high-water, as the platform would see it.
    pub fn memory_peak(&self) -> usize {
        self.inner
            .memory_peak
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn reset_memory_peak(&self) {
        self.inner
            .memory_peak
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn kv(&self) -> &MemKv {
        &self.inner.kv
    }

    /// The app's variables; changes apply to requests started afterwards.
    pub fn vars(&self) -> &Vars {
        &self.inner.vars
    }

    /// Outbound HTTP attempts of this app (allowed and denied).
    pub fn outbound(&self) -> &OutboundLog {
        &self.inner.outbound
    }

    /// Number of outbound requests the guest attempted so far.
    pub fn outbound_count(&self) -> u64 {
        self.inner.outbound.attempts()
    }

    /// The origins outbound requests may go to right now (from `gong_base_url`).
    pub fn allowed_outbound(&self) -> Vec<Origin> {
        let mut allowed = Vec::new();
        if let Some(url) = self.inner.vars.get("gong_base_url") {
            match Origin::parse(&url) {
                Ok(o) => allowed.push(o),
                // Spin would refuse to start the app; the host just allows nothing.
                Err(e) => eprintln!("[test-host] gong_base_url is not a valid origin: {e}"),
            }
        }
        allowed.extend(self.inner.extra_allowed.iter().cloned());
        allowed
    }

    /// Sends a request to the component and returns its complete response. Panics if the
    /// host or the guest fails (trap, no response, timeout); see [`TestApp::try_request`].
    pub async fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> TestResponse {
        match self
            .try_request(method, path_and_query, headers, body)
            .await
        {
            Ok(r) => r,
            Err(e) => panic!("{method} {path_and_query} failed in the test host: {e:#}"),
        }
    }

    /// `GET path` with no headers.
    pub async fn get(&self, path_and_query: &str) -> TestResponse {
        self.request("GET", path_and_query, &[], Vec::new()).await
    }

    /// `method path` with a JSON body (`content-type: application/json` added) and headers.
    pub async fn send_json(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> TestResponse {
        let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        let body = serde_json::to_vec(body).expect("serialising a serde_json::Value");
        self.request(method, path_and_query, &all, body).await
    }

    /// Like [`TestApp::request`] but returns host/guest failures as errors.
    pub async fn try_request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> anyhow::Result<TestResponse> {
        let mut req = IncomingRequest::new(method, path_and_query);
        req.headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        req.body = body.into();
        self.send(req).await
    }

    /// Runs one request through a fresh instance of the component.
    pub async fn send(&self, req: IncomingRequest) -> anyhow::Result<TestResponse> {
        let rt = runtime();
        let inner = &self.inner;
        if !req.path_and_query.starts_with('/') {
            bail!("path must start with '/': {:?}", req.path_and_query);
        }
        let full_url = format!("http://{}{}", req.authority, req.path_and_query);
        let path = req
            .path_and_query
            .split_once('?')
            .map_or(req.path_and_query.as_str(), |(p, _)| p)
            .to_owned();

        let mut builder = hyper::Request::builder()
            .method(req.method.as_str())
            .uri(&full_url);
        let has = |name: &str| {
            req.headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(name))
        };
        if !has("host") {
            builder = builder.header("host", req.authority.as_str());
        }
        if !has("content-length") && !req.body.is_empty() {
            builder = builder.header("content-length", req.body.len());
        }
        for (k, v) in &req.headers {
            if k.to_ascii_lowercase().starts_with("spin-") {
                continue; // Spin sets these itself.
            }
            builder = builder.header(k.as_str(), v.as_str());
        }
        for (k, v) in [
            ("spin-full-url", full_url.as_str()),
            ("spin-path-info", path.as_str()),
            ("spin-matched-route", "/..."),
            ("spin-base-path", "/"),
            ("spin-raw-component-route", "/..."),
            ("spin-component-route", ""),
            ("spin-client-addr", req.client_addr.as_str()),
        ] {
            builder = builder.header(k, v);
        }
        let hyper_req = builder
            .body(Full::new(Bytes::from(req.body)))
            .context("building the incoming request")?;

        let mut wasi = WasiCtx::builder();
        if inner.guest_stderr {
            wasi.inherit_stderr();
        }
        let state = HostState {
            memory: spin::MemoryWatch {
                peak: inner.memory_peak.clone(),
            },
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: outbound::OutboundHooks {
                allowed: self.allowed_outbound(),
                log: inner.outbound.clone(),
            },
            kv: inner.kv.clone(),
            vars: inner.vars.snapshot(),
        };
        let mut store = Store::new(&rt.engine, state);
        store.limiter(|state| &mut state.memory);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);

        let (tx, rx) = tokio::sync::oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, hyper_req)
            .map_err(anyhow::Error::from)?;
        let outparam = store
            .data_mut()
            .http()
            .new_response_outparam(tx)
            .map_err(anyhow::Error::from)?;
        let pre = rt.pre.clone();
        let mut guest = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, outparam)
                .await
        });

        let timeout = inner.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let what = format!("{} {}", req.method, req.path_and_query);
        let response = match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => {
                guest.abort();
                bail!("{what}: the component did not respond within {timeout:?}");
            }
            Ok(Ok(Ok(response))) => response,
            Ok(Ok(Err(code))) => {
                // Spin answers 500 here; a test wants to know.
                if tokio::time::timeout_at(deadline, &mut guest).await.is_err() {
                    guest.abort();
                }
                bail!("{what}: the component set an error instead of a response: {code:?}");
            }
            Ok(Err(_)) => {
                return Err(match guest.await {
                    Ok(Ok(())) => anyhow!(
                        "{what}: the component returned without calling response-outparam.set"
                    ),
                    Ok(Err(trap)) => anyhow::Error::from(trap)
                        .context(format!("{what}: the component trapped before responding")),
                    Err(join) => anyhow!("{what}: the guest task failed: {join}"),
                });
            }
        };
        let (parts, body) = response.into_parts();
        let body = match tokio::time::timeout_at(deadline, body.collect()).await {
            Err(_) => {
                guest.abort();
                bail!("{what}: the response body was not complete within {timeout:?}");
            }
            Ok(Err(code)) => {
                let trap = match tokio::time::timeout_at(deadline, &mut guest).await {
                    Ok(Ok(Err(trap))) => format!("; guest: {:#}", anyhow::Error::from(trap)),
                    _ => String::new(),
                };
                bail!("{what}: the response body failed: {code:?}{trap}");
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        match tokio::time::timeout_at(deadline, &mut guest).await {
            Err(_) => {
                guest.abort();
                bail!(
                    "{what}: the component sent its response but did not return within {timeout:?}"
                );
            }
            Ok(Err(join)) => bail!("{what}: the guest task failed: {join}"),
            Ok(Ok(Err(trap))) => {
                return Err(anyhow::Error::from(trap).context(format!(
                    "{what}: the component trapped after sending its response"
                )))
            }
            Ok(Ok(Ok(()))) => {}
        }
        Ok(TestResponse {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
        })
    }
}

// ----- serve mode ----------------------------------------------------------------------------

/// Serves `app` over HTTP/1.1 on `listen` until the task is dropped: each request goes
/// through [`TestApp::send`]; host failures become `500` with the error as text (Spin also
/// answers 500 when a component traps).
pub async fn serve(app: TestApp, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    serve_listener(app, listener).await
}

/// [`serve`] on an already bound listener (bind `127.0.0.1:0` to get a free port).
pub async fn serve_listener(app: TestApp, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let local = listener.local_addr().context("listener address")?;
    loop {
        let (stream, peer) = listener.accept().await.context("accepting a connection")?;
        let app = app.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(serve_one(&app, req, local, peer).await)
                    }
                });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                eprintln!("[test-host] connection from {peer}: {e}");
            }
        });
    }
}

async fn serve_one(
    app: &TestApp,
    req: hyper::Request<hyper::body::Incoming>,
    local: SocketAddr,
    peer: SocketAddr,
) -> hyper::Response<Full<Bytes>> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let result = async {
        let body = body
            .collect()
            .await
            .context("reading the request body")?
            .to_bytes();
        let mut incoming = IncomingRequest::new(parts.method.as_str(), &path_and_query);
        incoming.headers = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        incoming.body = body.to_vec();
        incoming.authority = parts
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .map_or_else(|| local.to_string(), str::to_owned);
        incoming.client_addr = peer.to_string();
        app.send(incoming).await
    }
    .await;
    let response = match result {
        Ok(r) => {
            let mut builder = hyper::Response::builder().status(r.status);
            for (k, v) in &r.headers {
                builder = builder.header(k.as_str(), v.as_str());
            }
            builder.body(Full::new(Bytes::from(r.body)))
        }
        Err(e) => {
            eprintln!("[test-host] {} {path_and_query}: {e:#}", parts.method);
            hyper::Response::builder()
                .status(500)
                .header("content-type", "text/plain; charset=utf-8")
                .body(Full::new(Bytes::from(format!("test host error: {e:#}\n"))))
        }
    };
    let response = response.unwrap_or_else(|e| {
        let mut r = hyper::Response::new(Full::new(Bytes::from(format!(
            "test host: invalid response from the component: {e}\n"
        ))));
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    });
    eprintln!(
        "[test-host] {} {} -> {} ({:.1?})",
        parts.method,
        path_and_query,
        response.status().as_u16(),
        started.elapsed()
    );
    response
}

// Compile-time checks of the concurrency contract.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<TestApp>();
    send_sync::<MemKv>();
    send_sync::<MockGong>();
    send_sync::<Vars>();
};
