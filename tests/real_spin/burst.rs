//! Real-Spin cases for a CRM's bulk edit: 5,000 single-record signed webhooks from 50
//! connections against a store capped like Fermyon Cloud's (1,024 keys), on Spin's SQLite store
//! and on two replicas sharing one Redis. Every first attempt must be answered 2xx within the
//! 10 s a sender such as Pipedrive waits (it bans a webhook after 10 failed first attempts), and
//! every latest version must reach Gong in a few uploads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::Value;

use crate::client::Bridge;
use crate::harness::Redis;
use crate::support::mock_gong::MockGong;
use crate::webhooks::{flush_until_sent, modified_at, uploaded_versions, upsert};
use crate::Ctx;

const DELIVERIES: u32 = 5_000;
const CONNECTIONS: usize = 50;
/// What Pipedrive waits for an answer before it counts a failure.
const SENDER_TIMEOUT: Duration = Duration::from_secs(10);

/// One burst: 4,500 records, 500 of them edited twice (the second edit newer), in one order.
fn deliveries() -> (Vec<(String, Value)>, BTreeMap<String, String>) {
    let mut out = Vec::new();
    let mut latest = BTreeMap::new();
    for i in 0..DELIVERIES {
        let record = if i < 4_500 { i } else { i - 4_500 };
        let version = if i < 4_500 { 0 } else { 1 };
        let id = format!("acc-{record}");
        let modified = modified_at(60 + version * 3_600);
        out.push((
            format!("burst-{i}"),
            upsert(&id, &modified, &format!("v{version}")),
        ));
        latest.insert(id, modified);
    }
    (out, latest)
}

/// Sends every delivery once (no retry: the first attempt is what a CRM counts), `CONNECTIONS`
/// at a time over `bridges` in turn. Returns the refused ones (status and detail, or "no
/// answer within 10 s") and the slowest answer.
async fn send_once(
    bridges: &[Bridge],
    deliveries: Vec<(String, Value)>,
) -> anyhow::Result<(Vec<String>, Duration)> {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (id, body)) in deliveries.into_iter().enumerate() {
        let bridge = bridges[index % bridges.len()];
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let body = serde_json::to_vec(&body)?;
            let signed = crate::client::unix_now();
            let sent = bridge
                .webhook_signed(
                    crate::support::signing::WEBHOOK_SECRET_BYTES,
                    &id,
                    signed,
                    &body,
                    SENDER_TIMEOUT,
                )
                .await;
            anyhow::Ok(match sent {
                Ok(reply) if (200..300).contains(&reply.status) => (None, reply.elapsed),
                Ok(reply) => (
                    Some(format!("{} {}", reply.status, reply.text())),
                    reply.elapsed,
                ),
                Err(e) => (
                    Some(format!("no answer within {SENDER_TIMEOUT:?}: {e:#}")),
                    SENDER_TIMEOUT,
                ),
            })
        });
    }
    let (mut refused, mut slowest) = (Vec::new(), Duration::ZERO);
    while let Some(joined) = tasks.join_next().await {
        let (problem, elapsed) = joined??;
        refused.extend(problem);
        slowest = slowest.max(elapsed);
    }
    Ok((refused, slowest))
}

/// The burst against `bridges`, then flushes until nothing waits; checks and prints the counts.
async fn burst(label: &str, bridges: &[Bridge], mock: &MockGong) -> anyhow::Result<()> {
    let (deliveries, latest) = deliveries();
    let started = Instant::now();
    let (refused, slowest) = send_once(bridges, deliveries).await?;
    let seconds = started.elapsed().as_secs_f64();
    let ids: BTreeSet<String> = latest.keys().cloned().collect();
    flush_until_sent(bridges, &ids).await?;
    let uploads = mock.received_on("POST", "/v2/crm/entities").len();
    println!(
        "burst: {DELIVERIES} deliveries, {} refused, {uploads} uploads, {seconds:.1} s ({label}; slowest answer {} ms)",
        refused.len(),
        slowest.as_millis()
    );
    ensure!(
        refused.is_empty(),
        "{} of {DELIVERIES} first attempts not answered 2xx in time, e.g. {:?}",
        refused.len(),
        &refused[..refused.len().min(3)]
    );
    let mut last_sent: BTreeMap<String, String> = BTreeMap::new();
    for (id, modified) in uploaded_versions(mock)? {
        last_sent.insert(id, modified);
    }
    let wrong: Vec<_> = latest
        .iter()
        .filter(|(id, m)| last_sent.get(*id) != Some(*m))
        .take(3)
        .collect();
    ensure!(
        wrong.is_empty() && last_sent.len() == latest.len(),
        "latest versions not last in Gong, e.g. {wrong:?} ({} of {} records uploaded)",
        last_sent.len(),
        latest.len()
    );
    ensure!(uploads <= 8, "{uploads} uploads for one burst");
    Ok(())
}

pub async fn a_burst_of_5000_webhooks_at_1024_keys_is_accepted_on_sqlite(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let mock = MockGong::start().await;
    let options = ctx.options(&mock).var("kv_max_keys", "1024");
    let spin = ctx.start(&options, "spin").await?;
    burst("SQLite, kv_max_keys=1024", &[spin.bridge], &mock).await
}

pub async fn a_burst_of_5000_webhooks_at_1024_keys_is_accepted_by_two_redis_replicas(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let redis = Redis::start(&ctx.dir.join("redis"), 4).await?;
    let mock = MockGong::start().await;
    let options = ctx
        .options(&mock)
        .redis(&redis.url)
        .var("kv_max_keys", "1024");
    let a = ctx.start(&options, "replica-a").await?;
    let b = ctx.start(&options, "replica-b").await?;
    burst(
        "two replicas on Redis, kv_max_keys=1024",
        &[a.bridge, b.bridge],
        &mock,
    )
    .await?;
    let keys = redis.key_count()?;
    ensure!(keys <= 1_024, "{keys} Redis keys after the burst");
    Ok(())
}
