//! The bridge's configuration, read from Spin variables through the `Config` port.
//! Secret values are held only as long as a request needs them and are never logged or returned.

use std::time::Duration;

use crate::gong::client::{Auth, GongClient};
use crate::ports::Config;
use crate::problem::ApiError;

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
    let has_key = config.get(GONG_ACCESS_KEY).is_some() && config.get(GONG_ACCESS_KEY_SECRET).is_some();
    if !has_key && config.get(GONG_BEARER_TOKEN).is_none() {
        missing.push(format!("{GONG_ACCESS_KEY} and {GONG_ACCESS_KEY_SECRET} (or {GONG_BEARER_TOKEN})"));
    }
    missing
}

/// Optional variables that are unset, by name.
pub fn unset_optional(config: &dyn Config) -> Vec<String> {
    [INTEGRATION_ID, WEBHOOK_SECRET].iter().filter(|n| config.get(n).is_none()).map(|n| n.to_string()).collect()
}

pub fn api_token(config: &dyn Config) -> Result<String, ApiError> {
    config.get(API_TOKEN).ok_or_else(|| ApiError::NotConfigured(vec![API_TOKEN.to_owned()]))
}

pub fn gong_client(config: &dyn Config) -> Result<GongClient, ApiError> {
    let base = config.get(GONG_BASE_URL).ok_or_else(|| ApiError::NotConfigured(vec![GONG_BASE_URL.to_owned()]))?;
    let auth = match (config.get(GONG_ACCESS_KEY), config.get(GONG_ACCESS_KEY_SECRET), config.get(GONG_BEARER_TOKEN)) {
        (Some(access_key), Some(secret), _) => Auth::Basic { access_key, secret },
        (_, _, Some(token)) => Auth::Bearer(token),
        _ => {
            return Err(ApiError::NotConfigured(vec![format!(
                "{GONG_ACCESS_KEY} and {GONG_ACCESS_KEY_SECRET} (or {GONG_BEARER_TOKEN})"
            )]))
        }
    };
    GongClient::new(&base, auth).map_err(|e| ApiError::BadConfig(e.to_string()))
}

/// The `integration_id` variable, when set. A value that is not an int64 is a configuration
/// error rather than silently ignored.
pub fn integration_id_variable(config: &dyn Config) -> Result<Option<i64>, ApiError> {
    match config.get(INTEGRATION_ID) {
        None => Ok(None),
        Some(raw) => raw
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::BadConfig(format!("variable {INTEGRATION_ID} is not a 64-bit integer"))),
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

fn duration_variable(config: &dyn Config, name: &str, unit: fn(u64) -> Duration, default: Duration) -> Duration {
    config.get(name).and_then(|v| v.trim().parse::<u64>().ok()).map(unit).unwrap_or(default)
}

/// How long idempotency keys (and so webhook-ids) are remembered. Default 7 days.
pub fn idempotency_ttl(config: &dyn Config) -> Duration {
    duration_variable(config, IDEMPOTENCY_TTL_SECONDS, Duration::from_secs, crate::idempotency::DEFAULT_TTL)
}

/// How long a claim settles before it is verified (see `idempotency`). Default 100 ms.
pub fn idempotency_settle(config: &dyn Config) -> Duration {
    duration_variable(config, IDEMPOTENCY_SETTLE_MS, Duration::from_millis, crate::idempotency::DEFAULT_SETTLE)
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

pub fn flush_limits(config: &dyn Config) -> crate::buffer::FlushLimits {
    let d = crate::buffer::FlushLimits::default();
    crate::buffer::FlushLimits {
        max_records: number::<usize>(config, BATCH_MAX_RECORDS).filter(|n| *n > 0).unwrap_or(d.max_records),
        max_bytes: number::<usize>(config, BATCH_MAX_BYTES).filter(|n| *n > 0).unwrap_or(d.max_bytes),
        interval_seconds: number::<i64>(config, FLUSH_INTERVAL_SECONDS).filter(|n| *n >= 0).unwrap_or(d.interval_seconds),
    }
}

/// The compact layout when `kv_max_keys` is set (Fermyon Cloud: 1,024), else `None` (a key per
/// pending version; see `docs/buffer.md`).
pub fn compact_layout(config: &dyn Config) -> Option<crate::compact::Layout> {
    number::<usize>(config, KV_MAX_KEYS).filter(|n| *n > 0).map(crate::compact::Layout::for_max_keys)
}
