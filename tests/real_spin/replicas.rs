//! Real-Spin cases for two replicas (two `spin up` processes) sharing one Redis store.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::ensure;

use crate::harness::Redis;
use crate::support::mock_gong::MockGong;
use crate::webhooks::{
    deliver_all, flush_until_sent, modified_at, shuffle, upload_report, uploaded_versions, upsert,
};
use crate::Ctx;

pub async fn same_webhook_id_at_both_replicas_is_buffered_and_uploaded_once(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let redis = Redis::start(&ctx.dir.join("redis"), 1).await?;
    let mock = MockGong::start().await;
    let options = ctx.options(&mock).redis(&redis.url);
    let a = ctx.start(&options, "replica-a").await?;
    let b = ctx.start(&options, "replica-b").await?;
    let mut ids = BTreeSet::new();
    for round in 0..10u32 {
        let id = format!("acc-{round}");
        let body = upsert(&id, &modified_at(round), "both replicas");
        let webhook_id = format!("msg-{round}");
        let (at_a, at_b) = tokio::join!(
            a.bridge.webhook(&webhook_id, &body),
            b.bridge.webhook(&webhook_id, &body)
        );
        let statuses = [at_a?.status, at_b?.status];
        // Both are accepted: a record delivery is the same version however often it comes.
        ensure!(statuses == [202, 202], "round {round}: {statuses:?}");
        let state = a.bridge.record_state("ACCOUNT", &id).await?;
        ensure!(
            state["pendingVersions"] == 1,
            "round {round}: buffered {} times: {state}",
            state["pendingVersions"]
        );
        ids.insert(id);
    }
    flush_until_sent(&[a.bridge, b.bridge], &ids).await?;
    let versions = uploaded_versions(&mock)?;
    let uploaded: BTreeSet<String> = versions.iter().map(|(id, _)| id.clone()).collect();
    ensure!(
        versions.len() == ids.len() && uploaded == ids,
        "each record uploaded once: {versions:?}"
    );
    println!(
        "real-spin: replicas, same webhook-id: 10 rounds -> {}",
        upload_report(&mock)
    );
    Ok(())
}

/// 1,000 webhooks with duplicates and out-of-order versions over two replicas, with the key
/// budget `kv_max_keys` ("0": the default for a store without a cap).
async fn thousand_webhooks_over_two_replicas(
    ctx: &Ctx,
    kv_max_keys: &str,
    db: u8,
) -> anyhow::Result<()> {
    let redis = Redis::start(&ctx.dir.join("redis"), db).await?;
    let mock = MockGong::start().await;
    // Small batches, so that both replicas flush while deliveries still arrive.
    let options = ctx
        .options(&mock)
        .redis(&redis.url)
        .var("batch_max_records", "150")
        .var("kv_max_keys", kv_max_keys);
    let a = ctx.start(&options, "replica-a").await?;
    let b = ctx.start(&options, "replica-b").await?;

    // 300 records with 3 versions each, plus 100 re-deliveries, in shuffled order.
    let mut deliveries = Vec::new();
    let mut latest = BTreeMap::new();
    for i in 0..300u32 {
        let id = format!("acc-{i}");
        for version in 0..3u32 {
            let modified = modified_at(i + version * 1000);
            deliveries.push((
                format!("msg-{i}-{version}"),
                upsert(&id, &modified, &format!("v{version}")),
            ));
            latest.insert(id.clone(), modified);
        }
    }
    let duplicates: Vec<_> = deliveries.iter().step_by(9).take(100).cloned().collect();
    deliveries.extend(duplicates);
    shuffle(&mut deliveries, 1000);
    let replies = deliver_all(&[a.bridge, b.bridge], deliveries, 16).await?;
    let refused: Vec<_> = replies
        .iter()
        .filter(|r| r.status != 202)
        .map(|r| format!("{} {}", r.status, r.text()))
        .collect();
    ensure!(
        refused.is_empty(),
        "{} of 1000 webhooks not accepted: {:?}",
        refused.len(),
        &refused[..refused.len().min(3)]
    );

    let ids: BTreeSet<String> = latest.keys().cloned().collect();
    flush_until_sent(&[a.bridge, b.bridge], &ids).await?;
    let mut last_sent: BTreeMap<String, String> = BTreeMap::new();
    for (id, modified) in uploaded_versions(&mock)? {
        if let Some(previous) = last_sent.get(&id) {
            // RFC 3339 in UTC with the same shape: text order is time order.
            ensure!(
                &modified >= previous,
                "{id}: {modified} uploaded after the newer {previous}"
            );
        }
        last_sent.insert(id, modified);
    }
    assert_eq!(
        last_sent, latest,
        "every record's last upload is its latest version"
    );
    println!("real-spin: replicas (kv_max_keys={kv_max_keys}), 1000 webhooks (300 records x 3 versions + 100 re-deliveries) -> {}; {} Redis keys after", upload_report(&mock), redis.key_count()?);
    Ok(())
}

pub async fn thousand_webhooks_over_two_replicas_keep_every_latest_version(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    thousand_webhooks_over_two_replicas(ctx, "0", 2).await
}

/// The same on a store budgeted like Fermyon Cloud's (1,024 keys).
pub async fn thousand_webhooks_over_two_replicas_within_1024_keys(ctx: &Ctx) -> anyhow::Result<()> {
    thousand_webhooks_over_two_replicas(ctx, "1024", 3).await
}
