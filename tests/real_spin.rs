//! The real-runtime suite: the release component under a real `spin up` (Spin's SQLite store, and
//! two replicas on one Redis), called over 127.0.0.1, with Gong played by the recording mock.
//!
//! Its own runner (`harness = false`) because libtest cannot report an *expected failure*: a case
//! marked with the issue that will fix it runs, and its failure is listed by name but counted
//! neither as passed nor as failed; if it passes, that is a failure (remove the mark).
//! Closing line: `real-spin: N passed, M failed`. Without Spin (or Redis, for the replica
//! cases) the suite says why and passes, except under CI (`CI=true`), where that is a failure.
//! Arguments: substrings of case names to run only those (`cargo test --test real_spin -- webhook`).

#[path = "real_spin/shared.rs"]
#[allow(dead_code)]
mod shared;
pub(crate) use shared::{client, harness, support};

#[path = "real_spin/burst.rs"]
mod burst;
#[path = "real_spin/crm.rs"]
mod crm;
#[path = "real_spin/engine.rs"]
mod engine;
#[path = "real_spin/management.rs"]
mod management;
#[path = "real_spin/operator.rs"]
mod operator;
#[path = "real_spin/replicas.rs"]
mod replicas;
#[path = "real_spin/sync.rs"]
mod sync;
#[path = "real_spin/webhooks.rs"]
mod webhooks;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use harness::{AppDir, SpinOptions, SpinProcess};
use support::mock_gong::MockGong;

/// What every case gets: where `spin` is, the app it serves, and a directory of its own.
pub struct Ctx {
    pub spin: PathBuf,
    /// Spin 3.6 (SpinKube's runtime) when `SPIN3_BIN` names it.
    pub spin3: Option<PathBuf>,
    pub app: AppDir,
    /// This case's directory under `target/real-spin/` (state dirs, logs); kept after the run.
    pub dir: PathBuf,
}

impl Ctx {
    /// The default options of a bridge pointed at `mock`.
    pub fn options(&self, mock: &MockGong) -> SpinOptions {
        SpinOptions::new(&self.spin, mock)
    }

    /// Starts `spin up` with its state in `<case dir>/<name>`.
    pub async fn start(&self, options: &SpinOptions, name: &str) -> anyhow::Result<SpinProcess> {
        SpinProcess::start(&self.app, options, &self.dir.join(name)).await
    }
}

type CaseFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + 'a>>;

/// What a case needs beyond Spin; without it the case is skipped (a failure under CI).
#[derive(Clone, Copy, PartialEq)]
enum Needs {
    Nothing,
    Redis,
    Spin3,
    /// python3 with schemathesis, openapi-spec-validator and prometheus_client.
    Python,
    /// chromium and chromedriver on PATH.
    Chromium,
}

struct Case {
    name: &'static str,
    needs: Needs,
    /// The issue that will make this case pass; until then its failure is expected.
    expected_failure: Option<Expected>,
    run: for<'a> fn(&'a Ctx) -> CaseFuture<'a>,
}

macro_rules! case {
    ($path:path) => {
        case!($path, needs: Nothing, expected: None)
    };
    ($path:path, needs: $needs:ident, expected: $expected:expr) => {
        Case {
            name: stringify!($path),
            needs: Needs::$needs,
            expected_failure: $expected,
            run: |ctx| Box::pin($path(ctx)),
        }
    };
}

/// A known failure, with the issue that fixes it.
#[derive(Clone, Copy)]
struct Expected {
    issue: &'static str,
    /// Fails on every run; a pass then means the mark is stale (a failure). A race may pass
    /// some runs: that pass is listed as such, never counted as passed.
    every_run: bool,
}

fn cases() -> Vec<Case> {
    vec![
        case!(management::health_auth_and_unknown_routes),
        case!(management::all_eight_gong_operations),
        case!(management::gong_401_is_a_502_about_credentials),
        case!(management::gong_409_on_register_adopts_the_existing_integration),
        case!(management::gong_429_is_a_503_and_pauses_every_call),
        case!(management::gong_500_is_a_502_and_the_file_is_kept_for_retry),
        case!(management::gong_timeout_is_a_504),
        case!(management::an_idempotency_key_names_one_request),
        case!(webhooks::signed_webhook_is_buffered_then_delivered),
        case!(webhooks::replayed_webhook_takes_effect_once),
        case!(webhooks::bad_signature_is_refused),
        case!(webhooks::stale_timestamp_is_refused),
        case!(webhooks::invalid_record_names_record_field_and_rule),
        case!(webhooks::five_hundred_webhooks_make_at_most_two_uploads),
        case!(webhooks::restart_after_sigkill_loses_nothing_and_sends_nothing_twice),
        case!(webhooks::webhooks_answered_within_1s_while_gong_takes_10s),
        case!(webhooks::a_20_mb_delivery_is_refused_or_accepted_within_10s),
        case!(webhooks::a_delivery_at_the_limit_is_accepted_within_1s),
        case!(webhooks::where_is_my_record_answers_for_every_record_of_a_big_file),
        case!(webhooks::records_gong_did_not_list_are_sent_again),
        case!(webhooks::a_failed_flush_is_a_502_and_the_next_one_delivers),
        case!(webhooks::three_deliveries_of_300_records_leave_a_bounded_key_count),
        case!(webhooks::a_90000_record_delivery_is_accepted_within_10s_and_delivered),
        case!(webhooks::a_slow_file_is_polled_with_backoff),
        case!(webhooks::the_same_wasm_runs_on_spin_3_6, needs: Spin3, expected: None),
        case!(operator::openapi_validates_and_schemathesis_finds_no_failure, needs: Python, expected: None),
        case!(operator::the_status_page_works_in_chromium, needs: Chromium, expected: None),
        case!(operator::metrics_parse_with_the_prometheus_parser, needs: Python, expected: None),
        case!(operator::logs_are_json_lines_without_a_secret),
        case!(replicas::same_webhook_id_at_both_replicas_is_buffered_and_uploaded_once, needs: Redis, expected: None),
        case!(replicas::thousand_webhooks_over_two_replicas_keep_every_latest_version, needs: Redis, expected: None),
        case!(replicas::thousand_webhooks_over_two_replicas_within_1024_keys, needs: Redis, expected: None),
        case!(burst::a_burst_of_5000_webhooks_at_1024_keys_is_accepted_on_sqlite),
        case!(engine::retry_and_discard_while_a_flush_holds_the_lease_are_accepted_and_applied),
        case!(engine::a_bulk_uploaded_record_has_a_true_status_at_each_stage),
        case!(crm::pipedrive_deliveries_reach_gong_mapped),
        case!(crm::close_deliveries_reach_gong_mapped),
        case!(crm::attio_notifications_are_fetched_and_survive_an_api_outage),
        case!(crm::a_custom_source_with_a_custom_field_reaches_gong),
        case!(sync::a_sync_of_2000_pipedrive_deals_reaches_gong_in_order),
        case!(sync::a_restart_mid_sync_loses_nothing_and_repeats_at_most_one_page),
        case!(sync::a_suggested_pipedrive_mapping_is_saved_and_used),
        case!(sync::a_deal_whose_organization_was_never_synced_is_completed_by_a_fetch),
        case!(sync::a_close_sync_reaches_gong),
        case!(sync::an_attio_sync_and_suggestion_reach_gong),
        case!(crm::a_pipedrive_bulk_edit_of_5000_at_1024_keys_is_accepted),
        case!(burst::a_burst_of_5000_webhooks_at_1024_keys_is_accepted_by_two_redis_replicas, needs: Redis, expected: None),
        case!(crm::a_pipedrive_bulk_edit_of_5000_is_accepted_by_two_redis_replicas, needs: Redis, expected: None),
    ]
}

enum Outcome {
    Passed,
    Failed(String),
    ExpectedFailure(String),
    /// A case marked as a race-dependent expected failure passed this run.
    UnexpectedPass(String),
    Skipped(String),
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload
            .downcast::<&str>()
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "panic".into()),
    }
}

/// Bound on one case, processes included (they are killed when the case's future is dropped).
const CASE_TIMEOUT: Duration = Duration::from_secs(300);

fn run_case(case: &Case, ctx: &Ctx) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async { tokio::time::timeout(CASE_TIMEOUT, (case.run)(ctx)).await })
    }));
    // Tasks still running (senders, the mock) end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(format!("{e:#}")),
        Ok(Err(_)) => Err(format!("did not finish within {CASE_TIMEOUT:?}")),
        Err(payload) => Err(panic_message(payload)),
    }
}

/// Logs of the `spin up` processes of a case, for a failure report.
fn logs_of(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = walk(dir) else { return out };
    for log in entries.into_iter().filter(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("spin-"))
    }) {
        out.push_str(&format!(
            "--- last lines of {}\n{}\n",
            log.display(),
            harness::log_tail(&log, 25)
        ));
    }
    out
}

fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(walk(&path)?);
        } else {
            found.push(path);
        }
    }
    Ok(found)
}

/// The Python tools of the operator cases (installed by `.ci/run` with pip).
fn python_tools() -> Result<(), String> {
    let imports = std::process::Command::new("python3")
        .args([
            "-c",
            "import schemathesis, openapi_spec_validator, prometheus_client",
        ])
        .output();
    match imports {
        Ok(out) if out.status.success() && harness::find_on_path("schemathesis").is_some() => Ok(()),
        _ => Err("python3 lacks schemathesis, openapi-spec-validator or prometheus-client (pip install schemathesis openapi-spec-validator prometheus-client)".into()),
    }
}

fn main() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected: Vec<Case> = cases()
        .into_iter()
        .filter(|c| filters.is_empty() || filters.iter().any(|f| c.name.contains(f.as_str())))
        .collect();
    if selected.is_empty() {
        println!("real-spin: no case matches {filters:?}");
        return;
    }

    let spin = match harness::find_spin("SPIN_BIN", "spin") {
        Ok((path, version)) => {
            println!("real-spin: using {} ({version})", path.display());
            path
        }
        Err(why) if ci => {
            println!("real-spin: CI=true and Spin is missing: {why}");
            println!("real-spin: 0 passed, 1 failed");
            std::process::exit(1);
        }
        Err(why) => {
            println!("real-spin: skipped, {why} (install Spin >= 3.6 or set SPIN_BIN to run it)");
            return;
        }
    };
    let spin3 = match harness::find_spin("SPIN3_BIN", "spin-3.6.3") {
        Ok((path, version)) => {
            println!(
                "real-spin: Spin 3.6 case uses {} ({version})",
                path.display()
            );
            Some(path)
        }
        Err(why) => {
            println!("real-spin: no Spin 3.6 ({why})");
            None
        }
    };
    let redis = harness::Redis::available();

    let root = support::component::target_dir().join("real-spin");
    let _ = std::fs::remove_dir_all(&root);
    let wasm = support::component::component_path();
    if std::env::var_os(support::component::WASM_ENV).is_none_or(|p| p.is_empty()) {
        if let Err(e) = support::component::build_component() {
            println!("real-spin: building the component failed: {e:#}");
            println!("real-spin: 0 passed, 1 failed");
            std::process::exit(1);
        }
    }
    let app = match std::fs::create_dir_all(root.join("app"))
        .map_err(anyhow::Error::from)
        .and_then(|_| AppDir::create(&root.join("app"), &wasm))
    {
        Ok(app) => app,
        Err(e) => {
            println!("real-spin: writing the app directory failed: {e:#}");
            println!("real-spin: 0 passed, 1 failed");
            std::process::exit(1);
        }
    };

    println!("\nrunning {} real-spin cases", selected.len());
    let suite_started = Instant::now();
    let mut results: Vec<(&'static str, Outcome)> = Vec::new();
    for case in &selected {
        let started = Instant::now();
        let ctx = Ctx {
            spin: spin.clone(),
            spin3: spin3.clone(),
            app: AppDir {
                manifest: app.manifest.clone(),
            },
            dir: root.join(case.name.replace("::", "-")),
        };
        let missing = match case.needs {
            Needs::Redis => redis.clone().err(),
            Needs::Spin3 if spin3.is_none() => {
                Some("no Spin 3.6: set SPIN3_BIN or put spin-3.6.3 on PATH".to_owned())
            }
            Needs::Python => python_tools().err(),
            Needs::Chromium => ["chromium", "chromedriver"]
                .iter()
                .find(|p| harness::find_on_path(p).is_none())
                .map(|p| format!("no {p} on PATH (apt-get install chromium chromium-driver)")),
            _ => None,
        };
        let outcome = match missing {
            Some(why) if !ci => Outcome::Skipped(why),
            Some(why) => Outcome::Failed(format!("CI=true and this case cannot run: {why}")),
            None => match (run_case(case, &ctx), case.expected_failure) {
                (Ok(()), None) => Outcome::Passed,
                (
                    Ok(()),
                    Some(Expected {
                        issue,
                        every_run: true,
                    }),
                ) => Outcome::Failed(format!(
                    "passed although marked as an expected failure of {issue}: remove the mark"
                )),
                (
                    Ok(()),
                    Some(Expected {
                        issue,
                        every_run: false,
                    }),
                ) => Outcome::UnexpectedPass(issue.to_owned()),
                (Err(e), None) => Outcome::Failed(format!("{e}\n{}", logs_of(&ctx.dir))),
                (Err(e), Some(Expected { issue, .. })) => Outcome::ExpectedFailure(format!(
                    "{issue}: {}",
                    e.lines().next().unwrap_or_default()
                )),
            },
        };
        let word = match &outcome {
            Outcome::Passed => "ok",
            Outcome::Failed(_) => "FAILED",
            Outcome::ExpectedFailure(_) => "expected failure",
            Outcome::UnexpectedPass(_) => "passed this run, still marked as an expected failure",
            Outcome::Skipped(_) => "skipped",
        };
        println!(
            "test {} ... {word} ({:.1} s)",
            case.name,
            started.elapsed().as_secs_f64()
        );
        results.push((case.name, outcome));
    }

    let passed = results
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Passed))
        .count();
    let failed = results
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
        .count();
    for (name, outcome) in &results {
        match outcome {
            Outcome::Failed(why) => println!("\n---- {name} FAILED:\n{why}"),
            Outcome::Skipped(why) => println!("real-spin skipped: {name} ({why})"),
            _ => {}
        }
    }
    for (name, outcome) in &results {
        match outcome {
            Outcome::ExpectedFailure(why) => println!("real-spin expected failure: {name} ({why})"),
            Outcome::UnexpectedPass(issue) => println!(
                "real-spin expected failure that passed this run (not counted): {name} ({issue})"
            ),
            _ => {}
        }
    }
    println!(
        "real-spin: the cases took {:.0} s",
        suite_started.elapsed().as_secs_f64()
    );
    println!("real-spin: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
