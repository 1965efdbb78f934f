//! Every call to Gong goes through here: the work budget (no call starts once it is spent), the
//! shared per-second/hour/day quota in KV, and Gong's 429 pause, honoured to the millisecond by
//! every replica.

use serde::de::DeserializeOwned;

use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::gong::client::{parse_response, Operation};
use crate::ports::{Request, Response};
use crate::quota::{self, Decision, QuotaState};
use crate::settings;

/// KV key of the shared Gong call budget (`quota::QuotaState`).
pub use crate::keys::QUOTA as QUOTA_KEY;
/// The longest one caller waits for the next second's calls before giving up (throttled).
const MAX_QUOTA_WAIT_MS: u64 = 3_000;

impl Bridge<'_> {
    /// How long the next Gong call may wait: `gong_timeout_ms`, cut to what is left of the
    /// work budget; an error once the budget is spent.
    fn call_timeout(&self) -> Result<std::time::Duration, Fault> {
        let configured = settings::gong_timeout(self.config);
        let Some(deadline) = self.deadline else {
            return Ok(configured);
        };
        let left = deadline - self.clock.now();
        match std::time::Duration::try_from(left) {
            Ok(left) if left >= std::time::Duration::from_millis(50) => Ok(configured.min(left)),
            _ => Err(Fault::OutOfTime {
                budget_ms: settings::work_budget(self.config).as_millis() as u64,
            }),
        }
    }

    /// Sends one request to Gong with the configured timeout, within the shared call budget.
    pub fn send(&self, op: Operation, request: Request) -> Result<Response, Fault> {
        self.call_timeout()?;
        self.spend_quota()?;
        let timeout = self.call_timeout()?;
        let started = self.clock.now();
        let sent = self.outbound.send(request, timeout);
        let ms = (self.clock.now() - started).whole_milliseconds().max(0) as u64;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                self.tally.gong_call(op, 0);
                crate::log::error("Gong call failed")
                    .field("operation", crate::tally::operation_label(op))
                    .field("ms", ms)
                    .field("error", error.to_string())
                    .emit();
                return Err(Fault::GongUnreachable { op, error });
            }
        };
        let status = response.status().as_u16();
        self.tally.gong_call(op, status);
        if !response.status().is_success() {
            // Logged once here, where every Gong call passes; what the bridge answered for it is
            // the request's own line.
            let level = if status >= 500 {
                crate::log::Level::Error
            } else {
                crate::log::Level::Warn
            };
            crate::log::Line::new(level, "Gong answered with an error")
                .field("operation", crate::tally::operation_label(op))
                .field("gongStatus", status)
                .field("ms", ms)
                .field(
                    "error",
                    crate::gong::client::classify_error(&response).to_string(),
                )
                .emit();
        }
        if response.status().as_u16() == 429 {
            let retry_after = crate::gong::client::retry_after_seconds(&response);
            let now_ms = (self.clock.now().unix_timestamp_nanos() / 1_000_000) as i64;
            if let Err(e) = self.update_quota(|state| quota::block_ms(state, now_ms, retry_after)) {
                crate::log::warn("could not record Gong's 429 for other replicas")
                    .field("error", e.to_string())
                    .emit();
            }
        }
        Ok(response)
    }

    /// Sends and parses the expected success; any other answer is a typed Gong error.
    pub fn call<T: DeserializeOwned>(
        &self,
        op: Operation,
        request: Request,
        success: &[u16],
    ) -> Result<T, Fault> {
        let response = self.send(op, request)?;
        parse_response(&response, success).map_err(|error| Fault::Gong { op, error })
    }

    /// Until when (Unix seconds, rounded up) Gong may not be called, if it may not at `now`.
    pub fn gong_blocked_until(&self, now: i64) -> Result<Option<i64>, Fault> {
        let state: QuotaState = self.store().get_json(QUOTA_KEY)?.unwrap_or_default();
        Ok((state.blocked_until_ms > now * 1000)
            .then_some((state.blocked_until_ms + 999).div_euclid(1000)))
    }

    fn update_quota(&self, change: impl FnOnce(&mut QuotaState)) -> Result<(), Fault> {
        let store = self.store();
        let mut state: QuotaState = store.get_json(QUOTA_KEY)?.unwrap_or_default();
        change(&mut state);
        store.put_json(QUOTA_KEY, &state)
    }

    /// Takes one call from the budget, waiting (at most 3 s) for the next second if this
    /// second's calls are used up.
    fn spend_quota(&self) -> Result<(), Fault> {
        let limits = settings::quota_limits(self.config);
        let store = self.store();
        let mut waited_ms = 0u64;
        loop {
            let mut state: QuotaState = store.get_json(QUOTA_KEY)?.unwrap_or_default();
            let now_ms = (self.clock.now().unix_timestamp_nanos() / 1_000_000) as i64;
            match quota::decide(&mut state, limits, now_ms) {
                Decision::Go => return store.put_json(QUOTA_KEY, &state),
                Decision::Wait(ms) if waited_ms + ms <= MAX_QUOTA_WAIT_MS => {
                    self.clock.sleep(std::time::Duration::from_millis(ms));
                    waited_ms += ms;
                }
                Decision::Wait(ms) => {
                    return Err(Fault::Throttled {
                        detail: format!("{} Gong calls per second are used up", limits.per_second),
                        retry_after: ms.div_ceil(1000).max(1),
                    })
                }
                Decision::Blocked { until_ms, reason } => {
                    return Err(Fault::Throttled {
                        detail: format!(
                            "no Gong call until {} (Unix time): {reason}",
                            (until_ms + 999).div_euclid(1000)
                        ),
                        retry_after: quota::seconds_until(until_ms, now_ms),
                    })
                }
            }
        }
    }
}
