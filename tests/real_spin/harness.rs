//! Real processes for the real-Spin suite: finding `spin`, the app directory it serves, `spin up`
//! and `redis-server` started on free 127.0.0.1 ports and always stopped by PID (on drop, so
//! also when a case panics or times out).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use crate::client::{send, Bridge};
use crate::support::mock_gong::MockGong;
use crate::support::signing::{webhook_secret, API_TOKEN, GONG_ACCESS_KEY, GONG_ACCESS_KEY_SECRET};

/// The Gong integrationId most cases give the bridge as a variable.
pub const INTEGRATION_ID: i64 = 5517027188234205706;

/// How long `spin up` may take to answer `/healthz` (it compiles the component first).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// `$SPIN_BIN`, else `spin` on `PATH`; `Err` says why there is none. Checked by running
/// `spin --version`, whose first line is returned with the path.
pub fn find_spin(env_name: &str, program: &str) -> Result<(PathBuf, String), String> {
    let candidate = match std::env::var_os(env_name) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => match find_on_path(program) {
            Some(path) => path,
            None => return Err(format!("no `{program}` on PATH and {env_name} is not set")),
        },
    };
    let output = Command::new(&candidate)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} --version could not run: {e}", candidate.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} --version failed: {}",
            candidate.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let version = String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok((candidate, version))
}

/// The first executable `program` in `PATH`.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A free 127.0.0.1 port (bound, then released for the process that will listen on it).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The application `spin up` serves: our `spin.toml` and the release `.wasm`, copied into a
/// directory of their own so that the suite runs exactly what a user deploys.
pub struct AppDir {
    pub manifest: PathBuf,
}

impl AppDir {
    /// Copies the manifest and the component (at the manifest's `source` path) into `dir`.
    pub fn create(dir: &Path, wasm: &Path) -> anyhow::Result<AppDir> {
        let root = crate::support::component::manifest_dir();
        let manifest_text =
            std::fs::read_to_string(root.join("spin.toml")).context("reading spin.toml")?;
        let source = manifest_text
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("source = \"")
                    .and_then(|rest| rest.strip_suffix('"'))
            })
            .ok_or_else(|| anyhow!("spin.toml has no `source = \"...\"` line"))?;
        let target = dir.join(source);
        std::fs::create_dir_all(target.parent().unwrap_or(dir))?;
        std::fs::copy(wasm, &target)
            .with_context(|| format!("copying {} to {}", wasm.display(), target.display()))?;
        let manifest = dir.join("spin.toml");
        std::fs::write(&manifest, manifest_text)?;
        Ok(AppDir { manifest })
    }
}

/// Which key-value store backs `default`.
#[derive(Debug, Clone)]
pub enum Store {
    /// Spin's own SQLite store in the state directory.
    Sqlite,
    /// A Redis server, through a runtime-config file.
    Redis(String),
}

/// How one `spin up` is started.
#[derive(Debug, Clone)]
pub struct SpinOptions {
    pub spin: PathBuf,
    pub vars: BTreeMap<String, String>,
    pub store: Store,
    /// More arguments of `spin up` (say `--cache FILE`).
    pub args: Vec<String>,
}

impl SpinOptions {
    /// The bridge's test credentials, pointed at `mock`, with the integration given as a variable.
    pub fn new(spin: &Path, mock: &MockGong) -> SpinOptions {
        let mut vars = BTreeMap::new();
        for (name, value) in [
            ("api_token", API_TOKEN.to_owned()),
            ("gong_access_key", GONG_ACCESS_KEY.to_owned()),
            ("gong_access_key_secret", GONG_ACCESS_KEY_SECRET.to_owned()),
            ("webhook_secret", webhook_secret()),
            ("gong_base_url", mock.base_url()),
            ("integration_id", INTEGRATION_ID.to_string()),
            // The CRM receivers configured too, so that an unauthenticated delivery is a 401 (not
            // a 503 not-configured, which schemathesis rightly counts as a server error).
            ("pipedrive_webhook_user", "suite-pipedrive".to_owned()),
            (
                "pipedrive_webhook_password",
                "suite-pipedrive-password".to_owned(),
            ),
            ("close_webhook_signature_key", "5e".repeat(32)),
            ("attio_webhook_secret", "suite-attio-secret".to_owned()),
            ("custom_webhook_token", "suite-custom-token".to_owned()),
        ] {
            vars.insert(name.to_owned(), value);
        }
        SpinOptions {
            spin: spin.to_owned(),
            vars,
            store: Store::Sqlite,
            args: Vec::new(),
        }
    }

    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_owned(), value.to_owned());
        self
    }

    pub fn without(mut self, name: &str) -> Self {
        self.vars.remove(name);
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    pub fn redis(mut self, url: &str) -> Self {
        self.store = Store::Redis(url.to_owned());
        self
    }
}

/// A running `spin up`. Killed (SIGKILL) and reaped on drop.
pub struct SpinProcess {
    child: Option<Child>,
    pub bridge: Bridge,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    /// From spawning `spin up` to its first answered `/healthz` (polled every 20 ms).
    pub ready_after: Duration,
}

impl SpinProcess {
    /// Starts `spin up` for `app` with its state in `state_dir` and waits for `/healthz`.
    pub async fn start(
        app: &AppDir,
        options: &SpinOptions,
        state_dir: &Path,
    ) -> anyhow::Result<SpinProcess> {
        std::fs::create_dir_all(state_dir)?;
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = state_dir.join(format!("spin-{port}.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut command = Command::new(&options.spin);
        command
            .arg("up")
            .arg("--from")
            .arg(&app.manifest)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--state-dir")
            .arg(state_dir)
            .args(&options.args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // Only this suite's variables: none inherited from the caller's environment.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SPIN_VARIABLE_") {
                command.env_remove(name);
            }
        }
        for (name, value) in &options.vars {
            command.env(
                format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase()),
                value,
            );
        }
        if let Store::Redis(url) = &options.store {
            let config = state_dir.join("runtime-config.toml");
            std::fs::write(&config, redis_runtime_config(url)?)?;
            command.arg("--runtime-config-file").arg(config);
        }
        // `spin up` serves from a `spin trigger http` child: a group of their own lets one
        // signal stop both (killing only `spin up` would leave the server running).
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .with_context(|| format!("spawning {}", options.spin.display()))?;
        let mut process = SpinProcess {
            child: Some(child),
            bridge: Bridge { addr },
            state_dir: state_dir.to_owned(),
            log,
            ready_after: Duration::ZERO,
        };
        process.wait_ready().await?;
        Ok(process)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < STARTUP_TIMEOUT {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "spin up exited ({status}) before answering; its log:\n{}",
                        self.log_tail(40)
                    );
                }
            }
            if let Ok(reply) = send(
                self.bridge.addr,
                "GET",
                "/healthz",
                &[],
                Vec::new(),
                Duration::from_secs(2),
            )
            .await
            {
                if reply.status == 200 {
                    self.ready_after = started.elapsed();
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "spin up did not answer /healthz within {STARTUP_TIMEOUT:?}; its log:\n{}",
            self.log_tail(40)
        )
    }

    /// Kills `spin up` and its server at once (SIGKILL to the process group: no chance to
    /// finish anything) and reaps it.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            kill_group(child);
        }
    }

    /// The last `lines` lines of what `spin up` and the component printed.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for SpinProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The runtime-config the deploy guides give SpinKube (`docs/deploy/runtime-config.redis.toml`),
/// with only its `url` pointed at this suite's Redis: the Redis cases run the documented file.
pub fn redis_runtime_config(url: &str) -> anyhow::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deploy/runtime-config.redis.toml");
    let documented =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let url_lines = documented
        .lines()
        .filter(|l| l.trim_start().starts_with("url = "))
        .count();
    anyhow::ensure!(
        url_lines == 1,
        "{} must have exactly one `url = ...` line, has {url_lines}",
        path.display()
    );
    Ok(documented
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("url = ") {
                format!("url = \"{url}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n")
}

/// SIGKILL to the process group `child` leads (it was spawned with `process_group(0)`), then
/// reaps `child`.
fn kill_group(mut child: Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A Redis for the replica cases: the one `REAL_SPIN_REDIS_URL` names (started by `.ci/run`),
/// else a `redis-server` from PATH started here and stopped on drop.
pub struct Redis {
    pub url: String,
    own: Option<Child>,
}

impl Redis {
    pub fn available() -> Result<(), String> {
        if std::env::var_os("REAL_SPIN_REDIS_URL").is_some_and(|u| !u.is_empty()) {
            return Ok(());
        }
        match (find_on_path("redis-server"), find_on_path("redis-cli")) {
            (Some(_), Some(_)) => Ok(()),
            _ => Err("no redis-server/redis-cli on PATH and REAL_SPIN_REDIS_URL is not set".into()),
        }
    }

    /// An empty Redis database: database `db` of the given server, flushed first, or an own server.
    pub async fn start(dir: &Path, db: u8) -> anyhow::Result<Redis> {
        if let Some(url) = std::env::var("REAL_SPIN_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())
        {
            let redis = Redis {
                url: format!("{}/{db}", url.trim_end_matches('/')),
                own: None,
            };
            redis.cli(&["FLUSHDB"])?;
            return Ok(redis);
        }
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("redis.log"))?;
        let mut command = Command::new("redis-server");
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning redis-server")?;
        let redis = Redis {
            url: format!("redis://127.0.0.1:{port}/{db}"),
            own: Some(child),
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if redis.cli(&["PING"]).is_ok_and(|r| r == "PONG") {
                return Ok(redis);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("redis-server on port {port} did not answer PING within 20 s")
    }

    /// Runs one `redis-cli -u URL` command; returns its trimmed output.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("redis-cli")
            .arg("-u")
            .arg(&self.url)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running redis-cli")?;
        if !output.status.success() {
            bail!(
                "redis-cli {args:?}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Keys in the database.
    pub fn key_count(&self) -> anyhow::Result<u64> {
        self.cli(&["DBSIZE"])?.parse().context("DBSIZE answer")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = self.own.take() {
            kill_group(child);
        }
    }
}

/// Keys in Spin's SQLite store of `state_dir` (read with Python's sqlite3, which CI has; `None`
/// when it cannot be read, e.g. no python3).
pub fn sqlite_key_count(state_dir: &Path) -> Option<u64> {
    sqlite_keys_with_prefix(state_dir, "")
}

/// Keys starting with `prefix` in Spin's SQLite store of `state_dir` (see `sqlite_key_count`).
pub fn sqlite_keys_with_prefix(state_dir: &Path, prefix: &str) -> Option<u64> {
    let db = state_dir.join("sqlite_key_value.db");
    let script = "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from spin_key_value where substr(key, 1, length(?)) = ?', (sys.argv[2], sys.argv[2])).fetchone()[0])";
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(&db)
        .arg(prefix)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}
