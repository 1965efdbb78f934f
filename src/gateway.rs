//! Every outbound API call goes through here, to Gong or (for the CRM receivers) a CRM's API:
//! the work budget (no call starts once it is spent, none waits past it), the upstream's own rate
//! (a budget in KV every replica shares), its 429 `Retry-After` (honoured to the millisecond by
//! every replica), and the platform's outbound cap (Fermyon Cloud: 500 requests an hour per
//! app), which every upstream spends from together.

use std::time::Duration;

use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::ports::{OutboundError, Request, Response};
use crate::quota::{self, Decision, QuotaLimits, QuotaState};
use crate::settings;

/// The longest one caller waits for the next second's calls before giving up (throttled).
const MAX_QUOTA_WAIT_MS: u64 = 3_000;

/// One API the bridge calls.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// For messages: "Gong", "Attio".
    pub name: &'static str,
    /// Where its shared budget lives (`keys::QUOTA` for Gong).
    pub quota_key: String,
    /// Its rate (per second, per day). The platform's hourly cap is Gong's budget's `per_hour`,
    /// which every upstream counts into.
    pub limits: QuotaLimits,
    /// The most one call may take.
    pub timeout: Duration,
}

impl Upstream {
    fn is_gong(&self) -> bool {
        self.quota_key == crate::keys::QUOTA
    }
}

/// How long the next call may wait: the upstream's timeout, cut to what is left of the work
/// budget; an error once the budget is spent.
fn call_timeout(bridge: &Bridge, upstream: &Upstream) -> Result<Duration, Fault> {
    let Some(deadline) = bridge.deadline else {
        return Ok(upstream.timeout);
    };
    match Duration::try_from(deadline - bridge.clock.now()) {
        Ok(left) if left >= Duration::from_millis(50) => Ok(upstream.timeout.min(left)),
        _ => Err(Fault::OutOfTime {
            budget_ms: settings::work_budget(bridge.config).as_millis() as u64,
        }),
    }
}

/// Sends one request within the budgets. `Err` when no call was made (out of time, throttled,
/// the store failed); `Ok(Err)` when the call was made and the transport failed; else the
/// upstream's answer, whatever its status (a 429 has paused every replica already).
pub fn send(
    bridge: &Bridge,
    upstream: &Upstream,
    request: Request,
) -> Result<Result<Response, OutboundError>, Fault> {
    call_timeout(bridge, upstream)?;
    spend(bridge, upstream)?;
    let timeout = call_timeout(bridge, upstream)?;
    let sent = bridge.outbound.send(request, timeout);
    if let Ok(response) = &sent {
        if response.status().as_u16() == 429 {
            // Pipedrive documents `x-ratelimit-reset` (seconds left in its window) instead.
            let retry_after =
                crate::gong::client::retry_after_seconds_at(response, Some(bridge.clock.now()))
                    .or_else(|| {
                        response
                            .headers()
                            .get("x-ratelimit-reset")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                    });
            let now_ms = now_ms(bridge);
            if let Err(e) = update(bridge, &upstream.quota_key, |state| {
                quota::block_ms(state, now_ms, retry_after, upstream.name)
            }) {
                crate::log::warn(format!(
                    "could not record {}'s 429 for other replicas",
                    upstream.name
                ))
                .field("error", e.to_string())
                .emit();
            }
        }
    }
    Ok(sent)
}

/// Until when (Unix seconds, rounded up) the upstream may not be called, if it may not at `now`.
pub fn blocked_until(bridge: &Bridge, quota_key: &str, now: i64) -> Result<Option<i64>, Fault> {
    let state: QuotaState = bridge.store().get_json(quota_key)?.unwrap_or_default();
    Ok((state.blocked_until_ms > now * 1000)
        .then_some((state.blocked_until_ms + 999).div_euclid(1000)))
}

fn now_ms(bridge: &Bridge) -> i64 {
    (bridge.clock.now().unix_timestamp_nanos() / 1_000_000) as i64
}

fn update(bridge: &Bridge, key: &str, change: impl FnOnce(&mut QuotaState)) -> Result<(), Fault> {
    let store = bridge.store();
    let mut state: QuotaState = store.get_json(key)?.unwrap_or_default();
    change(&mut state);
    store.put_json(key, &state)
}

/// Takes one call from the upstream's budget, waiting (at most 3 s) for the next second if this
/// second's calls are used up; a CRM call also counts into the platform's hourly cap.
fn spend(bridge: &Bridge, upstream: &Upstream) -> Result<(), Fault> {
    let store = bridge.store();
    let mut waited_ms = 0u64;
    loop {
        let mut state: QuotaState = store.get_json(&upstream.quota_key)?.unwrap_or_default();
        let now = now_ms(bridge);
        match quota::decide(&mut state, upstream.limits, now) {
            Decision::Go => break store.put_json(&upstream.quota_key, &state)?,
            Decision::Wait(ms) if waited_ms + ms <= MAX_QUOTA_WAIT_MS => {
                bridge.clock.sleep(Duration::from_millis(ms));
                waited_ms += ms;
            }
            Decision::Wait(ms) => {
                return Err(Fault::Throttled {
                    detail: format!(
                        "{} {} calls per second are used up",
                        upstream.limits.per_second, upstream.name
                    ),
                    retry_after: ms.div_ceil(1000).max(1),
                })
            }
            Decision::Blocked { until_ms, reason } => {
                return Err(Fault::Throttled {
                    detail: format!(
                        "no {} call until {} (Unix time): {reason}",
                        upstream.name,
                        (until_ms + 999).div_euclid(1000)
                    ),
                    retry_after: quota::seconds_until(until_ms, now),
                })
            }
        }
    }
    if upstream.is_gong() {
        return Ok(());
    }
    // The platform counts every outbound request of the app: it lives in Gong's budget.
    let platform = settings::quota_limits(bridge.config).per_hour;
    let mut state: QuotaState = store.get_json(crate::keys::QUOTA)?.unwrap_or_default();
    match quota::spend_hour(&mut state, platform, now_ms(bridge)) {
        Decision::Go => store.put_json(crate::keys::QUOTA, &state),
        Decision::Blocked { until_ms, reason } => Err(Fault::Throttled {
            detail: format!(
                "no {} call until {}: {reason}",
                upstream.name,
                (until_ms + 999).div_euclid(1000)
            ),
            retry_after: quota::seconds_until(until_ms, now_ms(bridge)),
        }),
        Decision::Wait(ms) => Err(Fault::Throttled {
            detail: "the platform's outbound budget is used up".into(),
            retry_after: ms.div_ceil(1000).max(1),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Clock;
    use crate::testing::{bridge, configured, ScriptedGong, VirtualClock};

    fn crm() -> Upstream {
        Upstream {
            name: "Attio",
            quota_key: "quota/attio".into(),
            limits: QuotaLimits {
                per_second: 2,
                per_hour: 0,
                per_day: 0,
            },
            timeout: Duration::from_secs(5),
        }
    }

    fn request() -> Request {
        http::Request::builder()
            .uri("https://api.attio.test/v2/objects")
            .body(Vec::new())
            .unwrap()
    }

    /// A CRM's calls count into the platform's hourly cap (Gong's budget), and its 429 pauses
    /// that CRM only.
    #[test]
    fn a_crm_upstream_shares_the_platform_cap_and_keeps_its_own_pause() {
        let kv = crate::store::memory::MemoryKv::default();
        let clock = VirtualClock::at(1_700_000_000);
        let outbound = ScriptedGong::new(&clock);
        let config = configured(&[("outbound_hourly_cap", "3"), ("gong_calls_per_second", "0")]);
        let b = bridge(&kv, &config, &outbound, &clock);
        for _ in 0..3 {
            assert!(send(&b, &crm(), request()).unwrap().is_ok());
        }
        let capped = send(&b, &crm(), request()).unwrap_err();
        assert!(
            matches!(&capped, Fault::Throttled { detail, .. } if detail.contains("outbound_hourly_cap")),
            "{capped:?}"
        );
        assert!(
            send(&b, &crate::calls::gong_upstream(&b), request()).is_err(),
            "Gong shares the same hour"
        );

        clock.advance(Duration::from_secs(3_600));
        let answer = http::Response::builder()
            .status(429)
            .header("retry-after", "30")
            .body(Vec::new())
            .unwrap();
        outbound
            .queue
            .borrow_mut()
            .push_back(crate::testing::Scripted {
                answer: Ok(answer),
                takes: Duration::from_millis(5),
            });
        assert_eq!(send(&b, &crm(), request()).unwrap().unwrap().status(), 429);
        let now = clock.now().unix_timestamp();
        assert!(
            blocked_until(&b, "quota/attio", now).unwrap().is_some(),
            "the CRM is paused"
        );
        assert!(
            blocked_until(&b, crate::keys::QUOTA, now)
                .unwrap()
                .is_none(),
            "Gong is not"
        );
        assert!(send(&b, &crm(), request()).is_err());
    }

    /// Attio sends `Retry-After` as an HTTP-date (developers.attio.com, "Rate limiting"): the
    /// pause lasts until that date, not a default minute, and says who asked for it.
    #[test]
    fn a_retry_after_date_pauses_until_that_date() {
        let kv = crate::store::memory::MemoryKv::default();
        let clock = VirtualClock::at(1_684_852_920); // Tue, 23 May 2023 14:42:00 GMT
        let outbound = ScriptedGong::new(&clock);
        let config = configured(&[("gong_calls_per_second", "0")]);
        let b = bridge(&kv, &config, &outbound, &clock);
        let answer = http::Response::builder()
            .status(429)
            .header("retry-after", "Tue, 23 May 2023 14:42:02 GMT")
            .body(Vec::new())
            .unwrap();
        outbound
            .queue
            .borrow_mut()
            .push_back(crate::testing::Scripted {
                answer: Ok(answer),
                takes: Duration::ZERO,
            });
        assert_eq!(send(&b, &crm(), request()).unwrap().unwrap().status(), 429);
        let now = clock.now().unix_timestamp();
        assert_eq!(
            blocked_until(&b, "quota/attio", now).unwrap(),
            Some(now + 2),
            "two seconds, as the date says"
        );
        let state: QuotaState = b.store().get_json("quota/attio").unwrap().unwrap();
        assert!(
            state
                .blocked_reason
                .as_deref()
                .unwrap_or("")
                .starts_with("Attio answered 429"),
            "{:?}",
            state.blocked_reason
        );
    }
}
