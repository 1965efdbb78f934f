//! Gong's side of the gateway (`gateway.rs`): every Gong call is sent through it with Gong's
//! budget (`gong_calls_per_second`, `gong_daily_call_cap`, the platform's `outbound_hourly_cap`),
//! counted per operation for `/metrics`, logged when Gong answers an error, and turned into
//! typed faults.

use serde::de::DeserializeOwned;

use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::gateway::{self, Upstream};
use crate::gong::client::{parse_response, Operation};
use crate::ports::{Request, Response};
use crate::settings;

/// KV key of the shared Gong call budget (`quota::QuotaState`).
pub use crate::keys::QUOTA as QUOTA_KEY;

/// Gong as an upstream of the gateway.
pub fn gong_upstream(bridge: &Bridge) -> Upstream {
    Upstream {
        name: "Gong",
        quota_key: QUOTA_KEY.to_owned(),
        limits: settings::quota_limits(bridge.config),
        timeout: settings::gong_timeout(bridge.config),
    }
}

impl Bridge<'_> {
    /// Sends one request to Gong with the configured timeout, within the shared call budget.
    pub fn send(&self, op: Operation, request: Request) -> Result<Response, Fault> {
        let started = self.clock.now();
        let sent = gateway::send(self, &gong_upstream(self), request)?;
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
        gateway::blocked_until(self, QUOTA_KEY, now)
    }
}
