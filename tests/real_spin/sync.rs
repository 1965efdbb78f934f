//! Real Spin: the first full sync from Pipedrive's API (`tests/support/mock_pipedrive.rs`)
//! through repeated `POST /flush` calls, as a scheduler would make them, and a restart mid-sync.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::{json, Value};

use crate::client::Bridge;
use crate::support::mock_gong::MockGong;
use crate::support::mock_pipedrive::MockPipedrive;
use crate::Ctx;

const TOKEN: &str = "pd-sync-token";
const AT: &str = "2026-01-01T10:00:00Z";

/// A Pipedrive account: `deals` deals with their organizations, persons, users and stages.
fn account(mock: &MockPipedrive, deals: usize) -> usize {
    let users: Vec<Value> = (1..=10)
        .map(|i| json!({"id": i, "name": format!("User {i}"), "email": format!("user{i}@example.com"), "active_flag": true, "modified": "2026-01-01 10:00:00"}))
        .collect();
    let stages: Vec<Value> = (1..=6)
        .map(|i| json!({"id": i, "name": format!("Stage {i}"), "order_nr": i, "pipeline_id": 1, "update_time": AT}))
        .collect();
    let orgs: Vec<Value> = (1..=deals / 5)
        .map(|i| json!({"id": i, "name": format!("Org {i}"), "owner_id": 1 + i % 10, "update_time": AT}))
        .collect();
    let persons: Vec<Value> = (1..=deals / 2)
        .map(|i| json!({"id": i, "first_name": "Person", "last_name": format!("{i}"), "emails": [{"value": format!("p{i}@example.com"), "primary": true, "label": "work"}], "org_id": 1 + i % (deals / 5), "update_time": AT}))
        .collect();
    let leads: Vec<Value> = (1..=deals / 20)
        .map(|i| json!({"id": format!("5b3f{i:04}-0e10-11eb-879b-05d71fb426ec"), "title": format!("Lead {i}"), "owner_id": 1, "update_time": "2026-01-01T10:00:00.551Z", "add_time": "2026-01-01T10:00:00.551Z"}))
        .collect();
    let deal_list: Vec<Value> = (1..=deals)
        .map(|i| json!({"id": i, "title": format!("Deal {i}"), "value": i * 10, "currency": "EUR", "status": "open", "stage_id": 1 + i % 6, "owner_id": 1 + i % 10, "org_id": 1 + i % (deals / 5), "add_time": AT, "update_time": AT}))
        .collect();
    let total =
        users.len() + stages.len() + orgs.len() + persons.len() + leads.len() + deal_list.len();
    mock.set_list("users", users);
    mock.set_list("stages", stages);
    mock.set_list("organizations", orgs);
    mock.set_list("persons", persons);
    mock.set_list("leads", leads);
    mock.set_list("deals", deal_list);
    total
}

/// Every line Gong received: (type, objectId), in upload order.
fn uploaded(gong: &MockGong) -> Vec<(String, String)> {
    gong.received_on("POST", "/v2/crm/entities")
        .into_iter()
        .flat_map(|u| {
            let kind = u.query_param("objectType").unwrap_or_default().to_owned();
            u.part("dataFile")
                .map(|p| p.lines())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
                .map(move |l| {
                    (
                        kind.clone(),
                        l["objectId"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `POST /flush?force=true` until the sync is finished and Gong has `total` lines (at most
/// `limit`); the sync's last state.
async fn flush_until_synced(
    bridges: &[Bridge],
    gong: &MockGong,
    total: usize,
    limit: Duration,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut state = Value::Null;
    let mut n = 0;
    while started.elapsed() < limit {
        let bridge = bridges[n % bridges.len()];
        n += 1;
        bridge.force_flush().await?;
        state = bridge.get("/sync/pipedrive").await?.json();
        if state["status"] == "finished" && uploaded(gong).len() >= total {
            break;
        }
    }
    Ok(state)
}

fn check_each_once_in_order(lines: &[(String, String)], total: usize) -> anyhow::Result<()> {
    let mut seen: BTreeMap<&(String, String), usize> = BTreeMap::new();
    for line in lines {
        *seen.entry(line).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(3).collect();
    ensure!(twice.is_empty(), "records sent twice: {twice:?}");
    ensure!(
        seen.len() == total,
        "{} of {total} records in Gong",
        seen.len()
    );
    let order = [
        "BUSINESS_USER",
        "STAGE",
        "ACCOUNT",
        "CONTACT",
        "LEAD",
        "DEAL",
    ];
    for pair in order.windows(2) {
        let last = lines.iter().rposition(|(k, _)| k == pair[0]);
        let first = lines.iter().position(|(k, _)| k == pair[1]);
        ensure!(
            last < first,
            "every {} before the first {}: {last:?} vs {first:?}",
            pair[0],
            pair[1]
        );
    }
    Ok(())
}

fn page_calls(api: &MockPipedrive) -> Vec<String> {
    api.received()
        .iter()
        .map(|r| {
            let query: Vec<String> = r.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{}?{}", r.path, query.join("&"))
        })
        .collect()
}

/// 2,000 Pipedrive deals with their organizations, persons, users and stages: the sync
/// completes through repeated `POST /flush` calls and every record reaches Gong once, in
/// dependency order; a 429 and a 500 on the way are waited out.
pub async fn a_sync_of_2000_pipedrive_deals_reaches_gong_in_order(ctx: &Ctx) -> anyhow::Result<()> {
    let gong = MockGong::start().await;
    let api = MockPipedrive::start(TOKEN).await;
    let total = account(&api, 2_000);
    api.rate_limit_next("/api/v2/organizations", 1);
    api.fail_next("/api/v2/deals");
    let options = ctx
        .options(&gong)
        .var("pipedrive_api_token", TOKEN)
        .var("pipedrive_base_url", &api.base_url());
    let spin = ctx.start(&options, "spin").await?;
    let bridge = spin.bridge;
    let started = Instant::now();
    let reply = bridge
        .call("POST", "/sync/pipedrive", &[], Vec::new())
        .await?
        .expect(202);
    ensure!(reply["status"] == "running", "{reply}");
    let state = flush_until_synced(&[bridge], &gong, total, Duration::from_secs(240)).await?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(state["status"] == "finished", "the sync: {state}");
    let lines = uploaded(&gong);
    check_each_once_in_order(&lines, total)?;
    let uploads = gong.received_on("POST", "/v2/crm/entities").len();
    let calls = api.received().len();
    let gong_calls = gong.request_count();
    println!("sync: {total} records, {uploads} Gong uploads, {calls} CRM calls, {seconds:.1} s (2,000 Pipedrive deals, a 429 and a 500 on the way; {gong_calls} Gong calls in all)");
    let errors: u64 = state["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| o["errors"].as_u64().unwrap_or(0))
        .sum();
    ensure!(errors == 2, "the 429 and the 500 are counted: {state}");
    Ok(())
}

/// Spin is killed while the sync runs (pages are slow), and started again on the same store:
/// the sync continues where it stopped, every record reaches Gong once, and at most one page is
/// read twice.
pub async fn a_restart_mid_sync_loses_nothing_and_repeats_at_most_one_page(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let gong = MockGong::start().await;
    let api = MockPipedrive::start(TOKEN).await;
    let total = account(&api, 1_000);
    api.set_delay(Duration::from_millis(700));
    let options = ctx
        .options(&gong)
        .var("pipedrive_api_token", TOKEN)
        .var("pipedrive_base_url", &api.base_url());
    let mut first = ctx.start(&options, "spin").await?;
    first
        .bridge
        .call("POST", "/sync/pipedrive", &[], Vec::new())
        .await?
        .expect(202);
    // Kill it while pages are being read (the work after the answer reads them).
    for _ in 0..100 {
        if api.received().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before_kill = api.received().len();
    first.kill();
    ensure!(
        before_kill >= 3,
        "pages were being read when spin was killed"
    );
    api.set_delay(Duration::ZERO);
    let second = crate::harness::SpinProcess::start(&ctx.app, &options, &first.state_dir).await?;
    let state =
        flush_until_synced(&[second.bridge], &gong, total, Duration::from_secs(240)).await?;
    ensure!(
        state["status"] == "finished",
        "the sync after the restart: {state}"
    );
    check_each_once_in_order(&uploaded(&gong), total)?;
    let calls = page_calls(&api);
    let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
    for c in &calls {
        *counts.entry(c).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(
        repeated.len() <= 1 && repeated.iter().all(|(_, n)| **n == 2),
        "at most one page read twice: {repeated:?}"
    );
    println!(
        "sync: {total} records, {} Gong uploads, {} CRM calls (killed after {before_kill}; {} page(s) read twice), restart mid-sync",
        gong.received_on("POST", "/v2/crm/entities").len(),
        calls.len(),
        repeated.len()
    );
    Ok(())
}

/// The suggestion for a Pipedrive account with custom fields of each type: answered from the
/// field definitions, saved with `PUT /mappings/pipedrive` (its schema uploaded to Gong), and
/// used: a webhook's custom fields reach Gong as the suggested fields.
pub async fn a_suggested_pipedrive_mapping_is_saved_and_used(ctx: &Ctx) -> anyhow::Result<()> {
    let gong = MockGong::start().await;
    let api = MockPipedrive::start(TOKEN).await;
    api.set_fields(
        "dealFields",
        vec![
            json!({"id": 1, "key": "title", "name": "Title", "field_type": "varchar", "edit_flag": false}),
            json!({"id": 2, "key": "9dc80c50d78a15643bfc4ca79d76156a73a1ca0e", "name": "Customer Type", "field_type": "enum", "edit_flag": true, "options": [{"id": 190, "label": "Private person"}, {"id": 191, "label": "Company"}]}),
            json!({"id": 3, "key": "a2b4c6d8e0f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0", "name": "ARR", "field_type": "monetary", "edit_flag": true}),
            json!({"id": 4, "key": "b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1", "name": "Renewal date", "field_type": "date", "edit_flag": true}),
            json!({"id": 5, "key": "c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2", "name": "Seats", "field_type": "double", "edit_flag": true}),
            json!({"id": 6, "key": "d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3", "name": "Account manager", "field_type": "user", "edit_flag": true}),
            json!({"id": 7, "key": "e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4", "name": "Products", "field_type": "set", "edit_flag": true, "options": [{"id": 1, "label": "Core"}, {"id": 2, "label": "Add-on"}]}),
            json!({"id": 8, "key": "f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5", "name": "Notes", "field_type": "text", "edit_flag": true}),
        ],
    );
    let options = ctx
        .options(&gong)
        .var("pipedrive_api_token", TOKEN)
        .var("pipedrive_base_url", &api.base_url())
        .var("pipedrive_webhook_user", "pd")
        .var("pipedrive_webhook_password", "pd-pass");
    let spin = ctx.start(&options, "spin").await?;
    let bridge = spin.bridge;
    let suggestion = bridge.get("/mappings/pipedrive/suggest").await?.expect(200);
    ensure!(suggestion["suggested"] == 7, "{suggestion}");
    let saved = bridge
        .call_json("PUT", "/mappings/pipedrive", &suggestion)
        .await?
        .expect(200);
    let schema = gong.received_on("POST", "/v2/crm/entity-schema");
    ensure!(
        schema.len() == 1 && schema[0].query_param("objectType") == Some("DEAL"),
        "the DEAL schema is uploaded: {saved}"
    );
    let sent_fields = schema[0].json();
    let customer_type = sent_fields
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["uniqueName"] == "customerType")
        .cloned()
        .unwrap_or_default();
    ensure!(
        customer_type["type"] == "PICKLIST"
            && customer_type["orderedValueList"] == json!(["Private person", "Company"]),
        "{sent_fields}"
    );
    let delivery = json!({"meta": {"version": "2.0", "action": "change", "entity": "deal", "entity_id": "42", "id": "d-42", "timestamp": "2026-03-01T10:00:00Z"},
        "data": {"id": 42, "title": "Big deal", "value": 1000, "currency": "EUR", "status": "open", "update_time": "2026-03-01T10:00:00Z", "add_time": "2026-01-01T10:00:00Z",
            "custom_fields": {
                "9dc80c50d78a15643bfc4ca79d76156a73a1ca0e": {"type": "enum", "id": 191},
                "a2b4c6d8e0f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0": {"type": "monetary", "value": 12000, "currency": "EUR"},
                "b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1": {"type": "date", "value": "2027-01-31"},
                "c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2": {"type": "double", "value": 25},
                "d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3": {"type": "user", "id": 7},
                "e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4": {"type": "set", "values": [{"id": 1}, {"id": 2}]},
                "f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5": {"type": "text", "value": "Renews yearly"}}},
        "previous": {}});
    use base64::Engine as _;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("pd:pd-pass")
    );
    let reply = bridge
        .raw(
            "POST",
            "/webhooks/pipedrive",
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            serde_json::to_vec(&delivery)?,
        )
        .await?
        .expect(202);
    ensure!(reply["accepted"] == 1, "{reply}");
    bridge.force_flush().await?.expect(200);
    let line = gong
        .received_on("POST", "/v2/crm/entities")
        .into_iter()
        .filter_map(|u| u.part("dataFile").map(|p| p.lines()))
        .flatten()
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .find(|l| l["objectId"] == "42")
        .unwrap_or_default();
    for (field, value) in [
        ("customerType", json!("Company")),
        ("arr", json!(12000)),
        ("renewalDate", json!("2027-01-31")),
        ("seats", json!(25)),
        ("accountManager", json!("7")),
        ("products", json!(["Core", "Add-on"])),
        ("notes", json!("Renews yearly")),
    ] {
        ensure!(line[field] == value, "{field} in Gong: {line}");
    }
    println!("real-spin: suggestion: 7 Pipedrive custom fields suggested, saved (DEAL schema uploaded) and their values in Gong");
    Ok(())
}

/// A deal whose organization was never synced: read from Pipedrive by id right after the
/// webhook's answer and sent to Gong before the deal.
pub async fn a_deal_whose_organization_was_never_synced_is_completed_by_a_fetch(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let gong = MockGong::start().await;
    let api = MockPipedrive::start(TOKEN).await;
    api.set_list(
        "organizations",
        vec![json!({"id": 77, "name": "Never synced Ltd", "update_time": AT})],
    );
    api.set_list("users", vec![json!({"id": 5, "name": "Owner", "email": "owner@example.com", "active_flag": true, "modified": "2026-01-01 10:00:00"})]);
    api.set_list(
        "stages",
        vec![json!({"id": 3, "name": "Proposal", "order_nr": 3, "update_time": AT})],
    );
    let options = ctx
        .options(&gong)
        .var("pipedrive_api_token", TOKEN)
        .var("pipedrive_base_url", &api.base_url())
        .var("pipedrive_webhook_user", "pd")
        .var("pipedrive_webhook_password", "pd-pass");
    let spin = ctx.start(&options, "spin").await?;
    let bridge = spin.bridge;
    let delivery = json!({"meta": {"version": "2.0", "action": "create", "entity": "deal", "entity_id": "501", "id": "d-501", "timestamp": "2026-03-01T10:00:00Z"},
        "data": {"id": 501, "title": "Deal of an unsynced org", "value": 10, "currency": "EUR", "status": "open", "stage_id": 3, "owner_id": 5, "org_id": 77, "update_time": "2026-03-01T10:00:00Z", "add_time": "2026-03-01T10:00:00Z"}, "previous": {}});
    use base64::Engine as _;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("pd:pd-pass")
    );
    bridge
        .raw(
            "POST",
            "/webhooks/pipedrive",
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            serde_json::to_vec(&delivery)?,
        )
        .await?
        .expect(202);
    let mut lines = Vec::new();
    for _ in 0..50 {
        bridge.force_flush().await?;
        lines = uploaded(&gong);
        if lines.iter().any(|(k, _)| k == "DEAL") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let at = |kind: &str, id: &str| lines.iter().position(|(k, i)| k == kind && i == id);
    let deal = at("DEAL", "501");
    ensure!(deal.is_some(), "the deal in Gong: {lines:?}");
    for (kind, id) in [("ACCOUNT", "77"), ("BUSINESS_USER", "5"), ("STAGE", "3")] {
        ensure!(
            at(kind, id) < deal && at(kind, id).is_some(),
            "{kind} {id} before the deal: {lines:?}"
        );
    }
    println!("real-spin: references: a deal's never-synced organization, owner and stage read from Pipedrive by id and sent before it ({} Pipedrive calls)", api.received().len());
    Ok(())
}

/// Close: leads, contacts and opportunities through `_skip`/`_limit` pages, a 429 (Retry-After)
/// and a 500 on the way; every record once in Gong, leads (accounts) first.
pub async fn a_close_sync_reaches_gong(ctx: &Ctx) -> anyhow::Result<()> {
    use crate::support::mock_close::MockClose;
    let gong = MockGong::start().await;
    let api = MockClose::start("close-sync-key").await;
    let at = "2026-01-01T10:00:00.000000+00:00";
    api.set_list("lead", (1..=300).map(|i| json!({"id": format!("lead_{i}"), "display_name": format!("Lead {i}"), "url": format!("https://lead{i}.example"), "date_updated": at, "contacts": []})).collect());
    api.set_list("contact", (1..=400).map(|i| json!({"id": format!("cont_{i}"), "name": format!("Ann Person{i}"), "lead_id": format!("lead_{}", 1 + i % 300), "emails": [{"email": format!("ann{i}@example.com")}], "date_updated": at})).collect());
    api.set_list("opportunity", (1..=250).map(|i| json!({"id": format!("oppo_{i}"), "lead_id": format!("lead_{}", 1 + i % 300), "lead_name": format!("Lead {i}"), "status_label": "Active", "status_type": "active", "value": 100 * i, "date_updated": at, "date_created": at})).collect());
    api.rate_limit_next("/api/v1/contact/", 1);
    api.fail_next("/api/v1/opportunity/");
    let total = 300 + 400 + 250;
    let options = ctx
        .options(&gong)
        .var("close_api_key", "close-sync-key")
        .var("close_base_url", &api.base_url());
    let spin = ctx.start(&options, "spin").await?;
    let started = Instant::now();
    spin.bridge
        .call("POST", "/sync/close", &[], Vec::new())
        .await?
        .expect(202);
    let mut state = Value::Null;
    for _ in 0..200 {
        spin.bridge.force_flush().await?;
        state = spin.bridge.get("/sync/close").await?.json();
        if state["status"] == "finished" && uploaded(&gong).len() >= total {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    ensure!(state["status"] == "finished", "{state}");
    let lines = uploaded(&gong);
    let mut seen: BTreeMap<&(String, String), usize> = BTreeMap::new();
    for line in &lines {
        *seen.entry(line).or_default() += 1;
    }
    ensure!(
        seen.len() == total && seen.values().all(|n| *n == 1),
        "{} of {total}, each once",
        seen.len()
    );
    let last_account = lines.iter().rposition(|(k, _)| k == "ACCOUNT");
    let first_deal = lines.iter().position(|(k, _)| k == "DEAL");
    ensure!(last_account < first_deal, "accounts before deals");
    println!(
        "sync: {total} records, {} Gong uploads, {} CRM calls, {seconds:.1} s (Close: 300 leads, 400 contacts, 250 opportunities; a 429 and a 500 on the way)",
        gong.received_on("POST", "/v2/crm/entities").len(),
        api.received().len()
    );
    Ok(())
}

/// Attio: companies, people and deals through `records/query` pages, a 429 (Retry-After as an
/// HTTP-date) and a 500 on the way; then the suggestion from its attributes, saved and used.
pub async fn an_attio_sync_and_suggestion_reach_gong(ctx: &Ctx) -> anyhow::Result<()> {
    use crate::support::mock_attio::MockAttio;
    let gong = MockGong::start().await;
    let api = MockAttio::start("attio-sync-token").await;
    let record = |object: &str, i: usize, values: Value| json!({"id": {"workspace_id": "w", "object_id": object, "record_id": format!("{object}-{i:04}")}, "created_at": "2026-01-01T00:00:00.000000000Z", "values": values});
    for i in 1..=600 {
        api.put_record("companies", record("companies", i, json!({"name": [{"value": format!("Co {i}")}], "domains": [{"domain": format!("co{i}.example")}], "tier": [{"option": {"title": if i % 2 == 0 { "Gold" } else { "Silver" }}}]})));
    }
    for i in 1..=300 {
        api.put_record("people", record("people", i, json!({"name": [{"first_name": "P", "last_name": format!("{i}"), "full_name": format!("P {i}")}], "email_addresses": [{"email_address": format!("p{i}@co1.example")}], "company": [{"target_object": "companies", "target_record_id": format!("companies-{:04}", 1 + i % 600)}]})));
        api.put_record("deals", record("deals", i, json!({"name": [{"value": format!("Deal {i}")}], "associated_company": [{"target_object": "companies", "target_record_id": format!("companies-{:04}", 1 + i % 600)}]})));
    }
    api.set_attributes("companies", vec![
        json!({"api_slug": "name", "title": "Name", "type": "text", "is_system_attribute": true}),
        json!({"api_slug": "tier", "title": "Tier", "type": "select", "is_system_attribute": false, "is_multiselect": false}),
    ]);
    api.set_options("companies", "tier", &["Gold", "Silver"]);
    api.rate_limit_next_on(
        "POST",
        "/v2/objects/companies/records/query",
        Duration::from_secs(1),
    );
    api.fail_next_on("POST", "/v2/objects/people/records/query");
    let options = ctx
        .options(&gong)
        .var("attio_api_token", "attio-sync-token")
        .var("attio_base_url", &api.base_url());
    let spin = ctx.start(&options, "spin").await?;
    let bridge = spin.bridge;
    // The suggestion first, saved: the sync's companies then carry the tier.
    let suggestion = bridge.get("/mappings/attio/suggest").await?.expect(200);
    ensure!(suggestion["suggested"] == 1, "{suggestion}");
    bridge
        .call_json("PUT", "/mappings/attio", &suggestion)
        .await?
        .expect(200);
    let started = Instant::now();
    bridge
        .call("POST", "/sync/attio", &[], Vec::new())
        .await?
        .expect(202);
    let total = 1_200;
    let mut state = Value::Null;
    for _ in 0..200 {
        bridge.force_flush().await?;
        state = bridge.get("/sync/attio").await?.json();
        if state["status"] == "finished" && uploaded(&gong).len() >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    ensure!(state["status"] == "finished", "{state}");
    let lines = uploaded(&gong);
    ensure!(
        lines.len() == total,
        "{} of {total} records in Gong",
        lines.len()
    );
    let tiers = gong
        .received_on("POST", "/v2/crm/entities")
        .into_iter()
        .filter(|u| u.query_param("objectType") == Some("ACCOUNT"))
        .filter_map(|u| u.part("dataFile").map(|p| p.lines()))
        .flatten()
        .filter(|l| l.contains("\"tier\":\"Gold\""))
        .count();
    ensure!(tiers == 300, "{tiers} companies with tier Gold in Gong");
    println!(
        "sync: {total} records, {} Gong uploads, {} CRM calls, {seconds:.1} s (Attio: 600 companies with a suggested custom field, 300 people, 300 deals; a 429 and a 500 on the way)",
        gong.received_on("POST", "/v2/crm/entities").len(),
        api.received().len()
    );
    Ok(())
}
