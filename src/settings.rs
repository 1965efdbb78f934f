//! The bridge's configuration, read from Spin variables through the `Config` port.
//! Secret values are held only as long as a request needs them and are never logged or returned.

use std::time::Duration;

use crate::fault::Fault;
use crate::gong::client::{Auth, GongClient};
use crate::ports::Config;
use crate::routes::table::BodyClass;

pub const GONG_BASE_URL: &str = "gong_base_url";
pub const GONG_ACCESS_KEY: &str = "gong_access_key";
pub const GONG_ACCESS_KEY_SECRET: &str = "gong_access_key_secret";
pub const GONG_BEARER_TOKEN: &str = "gong_bearer_token";
pub const API_TOKEN: &str = "api_token";
pub const INTEGRATION_ID: &str = "integration_id";
pub const WEBHOOK_SECRET: &str = "webhook_secret";
pub const GONG_TIMEOUT_MS: &str = "gong_timeout_ms";

/// Gong calls wait at most this long unless `gong_timeout_ms` says otherwise (Spin's own
/// default would be 600 s, far longer than any webhook sender waits).
pub const DEFAULT_GONG_TIMEOUT: Duration = Duration::from_secs(30);

/// Names (never values) of required variables that are missing.
pub fn missing_required(config: &dyn Config) -> Vec<String> {
    let mut missing = Vec::new();
    for name in [GONG_BASE_URL, API_TOKEN] {
        if config.get(name).is_none() {
            missing.push(name.to_owned());
        }
    }
    let has_key =
        config.get(GONG_ACCESS_KEY).is_some() && config.get(GONG_ACCESS_KEY_SECRET).is_some();
    if !has_key && config.get(GONG_BEARER_TOKEN).is_none() {
        missing.push(format!(
            "{GONG_ACCESS_KEY} and {GONG_ACCESS_KEY_SECRET} (or {GONG_BEARER_TOKEN})"
        ));
    }
    missing
}

/// Optional variables that are unset, by name.
pub fn unset_optional(config: &dyn Config) -> Vec<String> {
    [INTEGRATION_ID, WEBHOOK_SECRET]
        .iter()
        .filter(|n| config.get(n).is_none())
        .map(|n| n.to_string())
        .collect()
}

pub fn api_token(config: &dyn Config) -> Result<String, Fault> {
    config
        .get(API_TOKEN)
        .ok_or_else(|| Fault::NotConfigured(vec![API_TOKEN.to_owned()]))
}

pub fn gong_client(config: &dyn Config) -> Result<GongClient, Fault> {
    let base = config
        .get(GONG_BASE_URL)
        .ok_or_else(|| Fault::NotConfigured(vec![GONG_BASE_URL.to_owned()]))?;
    let auth = match (
        config.get(GONG_ACCESS_KEY),
        config.get(GONG_ACCESS_KEY_SECRET),
        config.get(GONG_BEARER_TOKEN),
    ) {
        (Some(access_key), Some(secret), _) => Auth::Basic { access_key, secret },
        (_, _, Some(token)) => Auth::Bearer(token),
        _ => {
            return Err(Fault::NotConfigured(vec![format!(
                "{GONG_ACCESS_KEY} and {GONG_ACCESS_KEY_SECRET} (or {GONG_BEARER_TOKEN})"
            )]))
        }
    };
    GongClient::new(&base, auth).map_err(|e| Fault::BadConfig(e.to_string()))
}

/// The `integration_id` variable, when set. A value that is not an int64 is a configuration
/// error rather than silently ignored.
pub fn integration_id_variable(config: &dyn Config) -> Result<Option<i64>, Fault> {
    match config.get(INTEGRATION_ID) {
        None => Ok(None),
        Some(raw) => raw.trim().parse::<i64>().map(Some).map_err(|_| {
            Fault::BadConfig(format!("variable {INTEGRATION_ID} is not a 64-bit integer"))
        }),
    }
}

pub fn gong_timeout(config: &dyn Config) -> Duration {
    config
        .get(GONG_TIMEOUT_MS)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_GONG_TIMEOUT)
}

pub const WEBHOOK_BEARER_TOKEN: &str = "webhook_bearer_token";
pub const IDEMPOTENCY_TTL_SECONDS: &str = "idempotency_ttl_seconds";
pub const IDEMPOTENCY_SETTLE_MS: &str = "idempotency_settle_ms";

fn duration_variable(
    config: &dyn Config,
    name: &str,
    unit: fn(u64) -> Duration,
    default: Duration,
) -> Duration {
    config
        .get(name)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(unit)
        .unwrap_or(default)
}

/// How long idempotency keys (and so webhook-ids) are remembered. Default 7 days.
pub fn idempotency_ttl(config: &dyn Config) -> Duration {
    duration_variable(
        config,
        IDEMPOTENCY_TTL_SECONDS,
        Duration::from_secs,
        crate::idempotency::DEFAULT_TTL,
    )
}

/// How long a claim settles before it is verified (see `idempotency`). Default 100 ms.
pub fn idempotency_settle(config: &dyn Config) -> Duration {
    duration_variable(
        config,
        IDEMPOTENCY_SETTLE_MS,
        Duration::from_millis,
        crate::idempotency::DEFAULT_SETTLE,
    )
}

pub const GONG_CALLS_PER_SECOND: &str = "gong_calls_per_second";
pub const GONG_DAILY_CALL_CAP: &str = "gong_daily_call_cap";
pub const OUTBOUND_HOURLY_CAP: &str = "outbound_hourly_cap";
pub const BATCH_MAX_RECORDS: &str = "batch_max_records";
pub const BATCH_MAX_BYTES: &str = "batch_max_bytes";
pub const FLUSH_INTERVAL_SECONDS: &str = "flush_interval_seconds";
pub const KV_MAX_KEYS: &str = "kv_max_keys";

fn number<T: std::str::FromStr>(config: &dyn Config, name: &str) -> Option<T> {
    config.get(name).and_then(|v| v.trim().parse::<T>().ok())
}

/// The shared call budget; a variable set to 0 switches that limit off.
pub fn quota_limits(config: &dyn Config) -> crate::quota::QuotaLimits {
    let d = crate::quota::QuotaLimits::default();
    crate::quota::QuotaLimits {
        per_second: number(config, GONG_CALLS_PER_SECOND).unwrap_or(d.per_second),
        per_hour: number(config, OUTBOUND_HOURLY_CAP).unwrap_or(d.per_hour),
        per_day: number(config, GONG_DAILY_CALL_CAP).unwrap_or(d.per_day),
    }
}

pub fn flush_limits(config: &dyn Config) -> crate::outbox::due::FlushLimits {
    let d = crate::outbox::due::FlushLimits::default();
    crate::outbox::due::FlushLimits {
        max_records: number::<usize>(config, BATCH_MAX_RECORDS)
            .filter(|n| *n > 0)
            .unwrap_or(d.max_records),
        max_bytes: number::<usize>(config, BATCH_MAX_BYTES)
            .filter(|n| *n > 0)
            .unwrap_or(d.max_bytes),
        interval_seconds: number::<i64>(config, FLUSH_INTERVAL_SECONDS)
            .filter(|n| *n >= 0)
            .unwrap_or(d.interval_seconds),
    }
}

/// The key budget of a store without a cap of its own (Spin's SQLite, Redis): bounded all the
/// same, with more room than Fermyon Cloud's 1,024 before webhooks are asked to wait.
pub const DEFAULT_KEY_BUDGET: usize = 4_096;

/// How records are kept (inbox keys, pending and failure shards; see `docs/buffer.md`), sized by
/// `kv_max_keys` (Fermyon Cloud: 1,024), else by [`DEFAULT_KEY_BUDGET`].
pub fn layout(config: &dyn Config) -> crate::outbox::shards::Layout {
    crate::outbox::shards::Layout::for_max_keys(
        number::<usize>(config, KV_MAX_KEYS)
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_KEY_BUDGET),
    )
}

pub const WEBHOOK_MAX_BYTES: &str = "webhook_max_bytes";
pub const MANAGEMENT_MAX_BYTES: &str = "management_max_bytes";
pub const WORK_BUDGET_MS: &str = "work_budget_ms";
pub const POLL_BACKOFF_SECONDS: &str = "poll_backoff_seconds";
pub const INBOX_RELEASE_SECONDS: &str = "inbox_release_seconds";
pub const ADMISSION_WAIT_MS: &str = "admission_wait_ms";
/// Pipedrive's webhook Basic auth (the webhook's `http_auth_user` / `http_auth_password`).
pub const PIPEDRIVE_WEBHOOK_USER: &str = "pipedrive_webhook_user";
pub const PIPEDRIVE_WEBHOOK_PASSWORD: &str = "pipedrive_webhook_password";
/// Close's webhook subscription `signature_key` (64 hex characters).
pub const CLOSE_WEBHOOK_SIGNATURE_KEY: &str = "close_webhook_signature_key";
/// How old (or far ahead) `close-sig-timestamp` may be, in seconds (default 300).
pub const CLOSE_SIGNATURE_MAX_AGE_SECONDS: &str = "close_signature_max_age_seconds";
/// Attio: the webhook's secret, the API token its records are read with, and the API's host.
pub const ATTIO_WEBHOOK_SECRET: &str = "attio_webhook_secret";
pub const ATTIO_API_TOKEN: &str = "attio_api_token";
pub const ATTIO_BASE_URL: &str = "attio_base_url";
/// `POST /webhooks/custom/{source}`: the shared token a CRM that cannot sign sends
/// (`X-Webhook-Token`); signed deliveries use `webhook_secret`.
pub const CUSTOM_WEBHOOK_TOKEN: &str = "custom_webhook_token";
/// Pipedrive's REST API (the first full sync, references): its token and host.
pub const PIPEDRIVE_API_TOKEN: &str = "pipedrive_api_token";
pub const PIPEDRIVE_BASE_URL: &str = "pipedrive_base_url";
/// Close's REST API (the first full sync, references): its API key and host.
pub const CLOSE_API_KEY: &str = "close_api_key";
pub const CLOSE_BASE_URL: &str = "close_base_url";

/// How long a webhook waits for room at the store's admission line before it is refused (503
/// `store-full`). Default 5 s: half of Pipedrive's 10 s, inside every CRM's timeout, and inside
/// Fermyon Cloud's 10 s per handler with the work budget (which counts from the request's start).
pub fn admission_wait(config: &dyn Config) -> Duration {
    duration_variable(
        config,
        ADMISSION_WAIT_MS,
        Duration::from_millis,
        Duration::from_millis(5_000),
    )
}

/// How long a compacted inbox key is kept before it is checked again and deleted, so that a
/// replica stalled between reading and writing a shard cannot lose a record (`docs/buffer.md`).
/// Default 60 s (twice the flush lease); 0 deletes right after the read-back.
pub fn inbox_release_seconds(config: &dyn Config) -> i64 {
    number::<i64>(config, INBOX_RELEASE_SECONDS)
        .filter(|n| *n >= 0)
        .unwrap_or(60)
}

/// The wait after a request-status answer that is not final (doubling per answer, at most
/// 10 minutes). Default 10 s; 0 polls whenever asked.
pub fn poll_backoff_seconds(config: &dyn Config) -> i64 {
    number::<i64>(config, POLL_BACKOFF_SECONDS)
        .filter(|n| *n >= 0)
        .unwrap_or(10)
}

/// A webhook delivery is at most this big unless `webhook_max_bytes` says otherwise: the size of
/// one value in Fermyon Cloud's store, far above one CRM event (bulk loads use `POST /records`).
pub const DEFAULT_WEBHOOK_MAX_BYTES: usize = 1024 * 1024;
/// Schemas, integrations and the other small management bodies.
pub const DEFAULT_MANAGEMENT_MAX_BYTES: usize = 1024 * 1024;
/// Work after the answer (and `POST /flush`) stops starting Gong calls after this long, well
/// inside Fermyon Cloud's 10 s per handler.
pub const DEFAULT_WORK_BUDGET: Duration = Duration::from_millis(8_000);

/// The most a request's body may hold, and the variable that sets it (named in the 413).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit {
    pub bytes: usize,
    pub variable: Option<&'static str>,
}

/// The body limit of a route's body class (`routes::table`), decided from its path before the
/// body is read: webhooks by `webhook_max_bytes`, `POST /records` by Gong's 200 MB file limit, the
/// rest by `management_max_bytes`.
pub fn body_limit(config: &dyn Config, class: BodyClass) -> BodyLimit {
    match class {
        BodyClass::Webhook => BodyLimit {
            bytes: number(config, WEBHOOK_MAX_BYTES).unwrap_or(DEFAULT_WEBHOOK_MAX_BYTES),
            variable: Some(WEBHOOK_MAX_BYTES),
        },
        BodyClass::Records => BodyLimit {
            bytes: crate::validation::MAX_BODY_BYTES,
            variable: None,
        },
        BodyClass::Management => BodyLimit {
            bytes: number(config, MANAGEMENT_MAX_BYTES).unwrap_or(DEFAULT_MANAGEMENT_MAX_BYTES),
            variable: Some(MANAGEMENT_MAX_BYTES),
        },
    }
}

/// How long a request's work after its answer (and `POST /flush`) may start Gong calls.
pub fn work_budget(config: &dyn Config) -> Duration {
    duration_variable(
        config,
        WORK_BUDGET_MS,
        Duration::from_millis,
        DEFAULT_WORK_BUDGET,
    )
}

/// Every numeric variable, so that a malformed value is reported instead of silently replaced
/// by its default.
const NUMERIC_VARIABLES: &[&str] = &[
    GONG_TIMEOUT_MS,
    IDEMPOTENCY_TTL_SECONDS,
    IDEMPOTENCY_SETTLE_MS,
    GONG_CALLS_PER_SECOND,
    GONG_DAILY_CALL_CAP,
    OUTBOUND_HOURLY_CAP,
    BATCH_MAX_RECORDS,
    BATCH_MAX_BYTES,
    FLUSH_INTERVAL_SECONDS,
    KV_MAX_KEYS,
    WEBHOOK_MAX_BYTES,
    MANAGEMENT_MAX_BYTES,
    WORK_BUDGET_MS,
    POLL_BACKOFF_SECONDS,
    INBOX_RELEASE_SECONDS,
    ADMISSION_WAIT_MS,
];

/// Numeric variables whose value is not a whole number, as "name (value)": these values are no
/// secret. `/healthz` lists them and every other route refuses to work until they are fixed.
pub fn malformed(config: &dyn Config) -> Vec<String> {
    NUMERIC_VARIABLES
        .iter()
        .filter_map(|name| {
            config
                .get(name)
                .filter(|v| v.trim().parse::<u64>().is_err())
                .map(|v| format!("{name} ({v:?} is not a whole number)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Vars(HashMap<&'static str, &'static str>);
    impl Config for Vars {
        fn get(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }

    #[test]
    fn body_limits_follow_the_route_and_the_variables() {
        use crate::routes::table::body_class;
        let none = Vars(HashMap::new());
        assert_eq!(
            body_limit(&none, body_class("POST", "/webhooks")),
            BodyLimit {
                bytes: DEFAULT_WEBHOOK_MAX_BYTES,
                variable: Some(WEBHOOK_MAX_BYTES)
            }
        );
        assert_eq!(
            body_limit(&none, body_class("POST", "/records/ACCOUNT")).bytes,
            crate::validation::MAX_BODY_BYTES
        );
        assert_eq!(
            body_limit(&none, body_class("POST", "/schema/ACCOUNT")).variable,
            Some(MANAGEMENT_MAX_BYTES)
        );
        let set = Vars(HashMap::from([
            (WEBHOOK_MAX_BYTES, "2048"),
            (MANAGEMENT_MAX_BYTES, "512"),
        ]));
        assert_eq!(
            body_limit(&set, body_class("POST", "/webhooks")).bytes,
            2048
        );
        assert_eq!(
            body_limit(&set, body_class("POST", "/integration")).bytes,
            512
        );
    }

    /// Issue 10 item 11: `kv_max_keys=1,024` is named, not silently read as "no cap".
    #[test]
    fn malformed_numbers_are_named() {
        let vars = Vars(HashMap::from([
            (KV_MAX_KEYS, "1,024"),
            (BATCH_MAX_RECORDS, "500"),
            (API_TOKEN, "x y"),
        ]));
        assert_eq!(
            malformed(&vars),
            vec!["kv_max_keys (\"1,024\" is not a whole number)".to_owned()]
        );
        assert!(malformed(&Vars(HashMap::new())).is_empty());
    }
}
