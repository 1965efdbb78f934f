//! The operator's read-only surface: `GET /` (the status page, whose bytes `routes::embedded`
//! carries), `GET /status` (its data, for monitoring scripts too) and `GET /metrics` (Prometheus
//! text). `GET /openapi.json` is `routes::embedded` alone.

use serde_json::{json, Value};

use crate::bridge::Bridge;
use crate::outbox::overview::{overview, Overview};
use crate::ports::{Request, Response};
use crate::problem::{json_response, ApiError};
use crate::settings;
use crate::tally::{self, Counters};

/// `GET /`: the page asks for the api token in the browser; it holds no data itself.
pub fn page(request: &Request) -> Response {
    let mut response = super::embedded::STATUS_PAGE.response(request);
    // Nothing on the page may come from elsewhere, and no other site may frame it.
    if let Ok(v) = http::HeaderValue::from_str("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; frame-ancestors 'none'") {
        response.headers_mut().insert(http::header::CONTENT_SECURITY_POLICY, v);
    }
    response
}

/// The integrationId in use and where it comes from (`variable` or what `PUT /integration` kept).
fn integration(bridge: &Bridge) -> Result<Value, ApiError> {
    if let Some(id) = settings::integration_id_variable(bridge.config)? {
        return Ok(json!({"integrationId": id.to_string(), "source": "variable"}));
    }
    Ok(match bridge.store().integration()? {
        Some(kept) => {
            json!({"integrationId": kept.integration_id.to_string(), "source": kept.source, "name": kept.name})
        }
        None => Value::Null,
    })
}

/// `GET /status`: health, the integration, the buffer per type, files in flight, quota, keys
/// and the counters, as JSON.
pub fn status(bridge: &Bridge) -> Result<Response, ApiError> {
    let overview = overview(bridge)?;
    let counters = tally::load(bridge.kv)?;
    let mut body = serde_json::to_value(&overview).unwrap_or_default();
    body["health"] = super::health::health(bridge);
    body["integration"] = integration(bridge)?;
    body["counters"] = serde_json::to_value(&counters).unwrap_or_default();
    let now = bridge.clock.now().unix_timestamp();
    let mut syncs = Vec::new();
    for api in crate::crm::sync::APIS {
        if let Some(state) = crate::crm::sync::state(bridge, api.source())? {
            syncs.push(crate::crm::sync::view(&state, now));
        }
    }
    body["syncs"] = serde_json::Value::Array(syncs);
    Ok(json_response(200, &body))
}

/// `GET /metrics`: the same numbers in Prometheus' text format (version 0.0.4).
pub fn metrics(bridge: &Bridge) -> Result<Response, ApiError> {
    let text = render_metrics(&overview(bridge)?, &tally::load(bridge.kv)?);
    Ok(http::Response::builder()
        .status(200)
        .header(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(text.into_bytes())
        .unwrap_or_else(|_| http::Response::new(Vec::new())))
}

/// Prometheus text exposition: `# HELP`, `# TYPE`, then one sample per line.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        self.0
            .push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let rendered: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            self.0.push_str(&format!("{{{}}}", rendered.join(",")));
        }
        self.0.push_str(&format!(" {value}\n"));
    }
}

/// The format's label-value escapes: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One per-type metric: its name, its help text, and how it is read from a type's overview.
type PerTypeMetric = (
    &'static str,
    &'static str,
    fn(&crate::outbox::overview::TypeOverview) -> Option<i64>,
);

pub fn render_metrics(o: &Overview, counters: &Counters) -> String {
    let mut out = Exposition(String::new());
    let per_type: [PerTypeMetric; 5] = [
        (
            "gcb_pending_records",
            "Records waiting in the pending buffer",
            |t| Some(t.pending_records as i64),
        ),
        (
            "gcb_inbox_deliveries",
            "Webhook deliveries received and not merged into the buffer yet",
            |t| Some(t.inbox_deliveries as i64),
        ),
        (
            "gcb_oldest_pending_age_seconds",
            "Age of the oldest waiting record or delivery",
            |t| t.oldest_pending_age_seconds,
        ),
        (
            "gcb_files_in_flight",
            "Files sent to Gong whose final status is not applied yet",
            |t| Some(t.files_in_flight as i64),
        ),
        ("gcb_failures", "Records in the failure store", |t| {
            Some(t.failures as i64)
        }),
    ];
    for (name, help, value) in per_type {
        out.family(name, help, "gauge");
        for (object_type, t) in &o.types {
            if let Some(v) = value(t) {
                out.sample(name, &[("object_type", object_type)], v);
            }
        }
    }
    let q = &o.quota;
    out.family(
        "gcb_quota_used",
        "Gong calls spent in the current window",
        "gauge",
    );
    for (window, used) in [
        ("second", q.this_second),
        ("hour", q.this_hour),
        ("day", q.today),
    ] {
        out.sample("gcb_quota_used", &[("window", window)], used);
    }
    out.family(
        "gcb_quota_remaining",
        "Gong calls left in the current window (windows without a limit are left out)",
        "gauge",
    );
    for (window, used, limit) in [
        ("second", q.this_second, q.per_second),
        ("hour", q.this_hour, q.per_hour),
        ("day", q.today, q.per_day),
    ] {
        if limit > 0 {
            out.sample(
                "gcb_quota_remaining",
                &[("window", window)],
                limit.saturating_sub(used),
            );
        }
    }
    out.family(
        "gcb_gong_paused_seconds",
        "Seconds left of a pause of all Gong calls (a 429's Retry-After or a cap); 0 when none",
        "gauge",
    );
    let paused_ms = q
        .paused_until_ms
        .map_or(0, |until| (until - o.now * 1000).max(0));
    // Seconds with millisecond digits, from integers: no float formatting in the component.
    out.sample(
        "gcb_gong_paused_seconds",
        &[],
        format_args!("{}.{:03}", paused_ms / 1000, paused_ms % 1000),
    );
    out.family("gcb_kv_keys", "Keys in the key-value store", "gauge");
    out.sample("gcb_kv_keys", &[], o.keys.total);
    out.family(
        "gcb_kv_key_budget",
        "Keys the layout plans for (kv_max_keys, or 4096)",
        "gauge",
    );
    out.sample("gcb_kv_key_budget", &[], o.keys.budget);

    out.family(
        "gcb_webhook_deliveries_accepted_total",
        "Record deliveries merged into the buffer",
        "counter",
    );
    out.sample(
        "gcb_webhook_deliveries_accepted_total",
        &[],
        counters.deliveries_accepted,
    );
    out.family(
        "gcb_webhook_records_accepted_total",
        "Records of accepted deliveries merged into the buffer",
        "counter",
    );
    out.sample(
        "gcb_webhook_records_accepted_total",
        &[],
        counters.records_accepted,
    );
    out.family(
        "gcb_webhooks_refused_total",
        "Refused webhooks by problem type (an estimate: one in 8 is counted, with weight 8)",
        "counter",
    );
    for (reason, n) in &counters.webhooks_refused {
        out.sample("gcb_webhooks_refused_total", &[("reason", reason)], n);
    }
    out.family(
        "gcb_gong_calls_total",
        "Gong calls by operation and HTTP status (0: no answer)",
        "counter",
    );
    for (key, n) in &counters.gong_calls {
        let (operation, status) = key.split_once(' ').unwrap_or((key, "0"));
        out.sample(
            "gcb_gong_calls_total",
            &[("operation", operation), ("status", status)],
            n,
        );
    }
    out.family("gcb_crm_total", "Per CRM receiver: deliveries, refused, ignored, records accepted and rejected, notifications queued", "counter");
    for (key, n) in &counters.crm {
        let (source, event) = key.split_once(' ').unwrap_or((key, ""));
        out.sample("gcb_crm_total", &[("source", source), ("event", event)], n);
    }
    out.family(
        "gcb_records_delivered_total",
        "Records Gong applied",
        "counter",
    );
    out.sample(
        "gcb_records_delivered_total",
        &[],
        counters.records_delivered,
    );
    out.family(
        "gcb_records_failed_total",
        "Records moved to the failure store",
        "counter",
    );
    out.sample("gcb_records_failed_total", &[], counters.records_failed);
    out.family(
        "gcb_records_rejected_total",
        "Records of authentic CRM deliveries that could not be mapped or broke Gong's rules (in the failure store)",
        "counter",
    );
    out.sample("gcb_records_rejected_total", &[], counters.records_rejected);
    out.0
}
