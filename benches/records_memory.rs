//! Whole-request memory of `POST /records` inside the component: the linear-memory high-water
//! mark of the instance that handles one ~50 MB ACCOUNT upload (body received, validated,
//! re-ordered, stored in KV chunks, sent to the mock Gong as multipart), as the platform sees it.
//! Measured by the test host's `ResourceLimiter` (tests/support: `TestApp::memory_peak`). The
//! body is the validation bench's generated workload (20 custom fields of all 14 types).
//!
//! CARGO_PROFILE_DEV_OPT_LEVEL=2 cargo bench --profile dev --bench records_memory

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "../examples/validation_probe.rs"]
mod probe;

use std::time::Duration;

use gong_crm_bridge::gong::models::ObjectType;
use gong_crm_bridge::validation::BodyFormat;
use support::TestApp;

const TARGET_BYTES: usize = 50_000_000;

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        println!("| body | body size | linear memory high-water | × body | GET /healthz high-water (baseline) |");
        println!("|---|---|---|---|---|");
        for (label, sorted) in [("LDJSON, dates out of order", false), ("LDJSON, already sorted", true)] {
            let app = TestApp::builder()
                .var("integration_id", "7")
                .var("gong_calls_per_second", "0")
                .request_timeout(Duration::from_secs(600))
                .guest_stderr(false)
                .build()
                .await;
            app.kv().set_json("schema/ACCOUNT", &serde_json::to_value(probe::schema()).expect("schema json"));
            app.reset_memory_peak();
            assert_eq!(app.get("/healthz").await.status, 200);
            let baseline = app.memory_peak();
            let (body, count) = probe::body_of(ObjectType::Account, 0, Some(TARGET_BYTES), BodyFormat::Ldjson, sorted);
            let size = body.len();
            app.reset_memory_peak();
            let token = format!("Bearer {}", support::API_TOKEN);
            let r = app
                .request("POST", "/records/ACCOUNT", &[("authorization", &token), ("content-type", "application/x-ndjson")], body)
                .await;
            assert_eq!(r.status, 202, "{}", r.text());
            assert_eq!(r.json()["recordCount"], count, "{}", r.text());
            let peak = app.memory_peak();
            println!(
                "| {label} ({count} records) | {:.1} MB | {:.1} MB | **{:.2}×** | {:.1} MB |",
                mb(size),
                mb(peak),
                peak as f64 / size as f64,
                mb(baseline)
            );
        }
    });
}
