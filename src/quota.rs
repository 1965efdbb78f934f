//! Gong's quota (3 calls/s and 10,000/day per company, shared with every other integration the
//! company runs) and the platform's (Fermyon Cloud: 500 outbound requests/hour/app), kept as one
//! budget in KV so that every replica sees it.
//!
//! The budget is a single KV value updated read-modify-write. With last-write-wins two replicas
//! spending at the same instant can both count from the same state, so the counters may
//! undercount by the number of truly simultaneous calls; the bridge's own bulk traffic
//! (flushes and polls) runs under a single flush lease, so it does not race with itself. A 429
//! from Gong blocks every replica until its `Retry-After` has passed.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    pub per_second: u32,
    pub per_hour: u32,
    pub per_day: u32,
}

impl Default for QuotaLimits {
    fn default() -> QuotaLimits {
        // 9,000 of Gong's 10,000 daily calls leaves room for the company's other integrations;
        // 450 of Fermyon Cloud's 500 outbound requests per hour leaves room for retries.
        QuotaLimits {
            per_second: 3,
            per_hour: 450,
            per_day: 9_000,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaState {
    pub second: i64,
    pub second_count: u32,
    pub hour: i64,
    pub hour_count: u32,
    pub day: i64,
    pub day_count: u32,
    /// Unix milliseconds until which no replica calls Gong (after a 429 or a cap), and why.
    /// Milliseconds, because Gong's `Retry-After` counts from the instant of its answer.
    #[serde(default)]
    pub blocked_until_ms: i64,
    #[serde(default)]
    pub blocked_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Spend one call (the state has been updated).
    Go,
    /// This second's calls are used up: wait this many milliseconds and ask again.
    Wait(u64),
    /// No call until `until_ms` (Unix milliseconds).
    Blocked { until_ms: i64, reason: String },
}

/// Decides whether one more call may go now (`now_ms`: Unix milliseconds) and, if so,
/// counts it in `state`.
pub fn decide(state: &mut QuotaState, limits: QuotaLimits, now_ms: i64) -> Decision {
    let now = now_ms.div_euclid(1000);
    if state.blocked_until_ms > now_ms {
        return Decision::Blocked {
            until_ms: state.blocked_until_ms,
            reason: state
                .blocked_reason
                .clone()
                .unwrap_or_else(|| "Gong asked the bridge to wait (429)".into()),
        };
    }
    let (hour, day) = (now.div_euclid(3600), now.div_euclid(86_400));
    if state.day != day {
        state.day = day;
        state.day_count = 0;
    }
    if state.hour != hour {
        state.hour = hour;
        state.hour_count = 0;
    }
    if state.second != now {
        state.second = now;
        state.second_count = 0;
    }
    if limits.per_day > 0 && state.day_count >= limits.per_day {
        return Decision::Blocked {
            until_ms: (day + 1) * 86_400_000,
            reason: format!(
                "daily cap of {} Gong calls reached (variable gong_daily_call_cap)",
                limits.per_day
            ),
        };
    }
    if limits.per_hour > 0 && state.hour_count >= limits.per_hour {
        return Decision::Blocked {
            until_ms: (hour + 1) * 3_600_000,
            reason: format!(
                "hourly cap of {} outbound calls reached (variable outbound_hourly_cap)",
                limits.per_hour
            ),
        };
    }
    if limits.per_second > 0 && state.second_count >= limits.per_second {
        return Decision::Wait(1000 - now_ms.rem_euclid(1000) as u64);
    }
    state.second_count += 1;
    state.hour_count += 1;
    state.day_count += 1;
    Decision::Go
}

/// Counts one call of another upstream (a CRM's API) into the hour window only: the platform's
/// cap on outbound requests (`per_hour`) is the app's, whoever is called; Gong's per-second and
/// daily budget stay Gong's.
pub fn spend_hour(state: &mut QuotaState, per_hour: u32, now_ms: i64) -> Decision {
    let hour = now_ms.div_euclid(3_600_000);
    if state.hour != hour {
        state.hour = hour;
        state.hour_count = 0;
    }
    if per_hour > 0 && state.hour_count >= per_hour {
        return Decision::Blocked {
            until_ms: (hour + 1) * 3_600_000,
            reason: format!(
                "hourly cap of {per_hour} outbound calls reached (variable outbound_hourly_cap)"
            ),
        };
    }
    state.hour_count += 1;
    Decision::Go
}

/// The budget as seen at `now_ms`: calls spent in this second, hour and day (a window that
/// has passed counts 0, as [`decide`] would start it afresh), and any pause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub this_second: u32,
    pub this_hour: u32,
    pub today: u32,
    /// 0 = no limit.
    pub per_second: u32,
    pub per_hour: u32,
    pub per_day: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_until_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
}

pub fn usage(state: &QuotaState, limits: QuotaLimits, now_ms: i64) -> Usage {
    let now = now_ms.div_euclid(1000);
    let counted = |window: i64, current: i64, count: u32| if window == current { count } else { 0 };
    let paused = state.blocked_until_ms > now_ms;
    Usage {
        this_second: counted(state.second, now, state.second_count),
        this_hour: counted(state.hour, now.div_euclid(3600), state.hour_count),
        today: counted(state.day, now.div_euclid(86_400), state.day_count),
        per_second: limits.per_second,
        per_hour: limits.per_hour,
        per_day: limits.per_day,
        paused_until_ms: paused.then_some(state.blocked_until_ms),
        pause_reason: if paused {
            state.blocked_reason.clone()
        } else {
            None
        },
    }
}

/// Records Gong's 429 answered at `now_ms` (Unix milliseconds): every replica waits
/// `retry_after` seconds from that instant (60 when Gong gave none).
pub fn block_ms(state: &mut QuotaState, now_ms: i64, retry_after: Option<u64>, who: &str) {
    let seconds = retry_after.unwrap_or(60).clamp(1, 3600) as i64;
    state.blocked_until_ms = state.blocked_until_ms.max(now_ms + seconds * 1000);
    state.blocked_reason = Some(format!("{who} answered 429; Retry-After {seconds} s"));
}

/// Whole seconds from `now_ms` until `until_ms`, rounded up (a `Retry-After` never too early).
pub fn seconds_until(until_ms: i64, now_ms: i64) -> u64 {
    ((until_ms - now_ms).max(1) as u64).div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_per_second_then_wait_for_the_next_second() {
        let limits = QuotaLimits::default();
        let mut s = QuotaState::default();
        let t = 1_700_000_000_250;
        for _ in 0..3 {
            assert_eq!(decide(&mut s, limits, t), Decision::Go);
        }
        assert_eq!(decide(&mut s, limits, t + 100), Decision::Wait(650));
        assert_eq!(decide(&mut s, limits, t + 750), Decision::Go);
    }

    #[test]
    fn daily_and_hourly_caps_block_until_the_window_ends() {
        let limits = QuotaLimits {
            per_second: 0,
            per_hour: 2,
            per_day: 3,
        };
        let mut s = QuotaState::default();
        let t = 7_200_000; // 2 h in ms
        assert_eq!(decide(&mut s, limits, t), Decision::Go);
        assert_eq!(decide(&mut s, limits, t), Decision::Go);
        let Decision::Blocked { until_ms, reason } = decide(&mut s, limits, t) else {
            panic!()
        };
        assert_eq!(until_ms, 3 * 3_600_000);
        assert!(reason.contains("hourly"));
        assert_eq!(decide(&mut s, limits, 3 * 3_600_000), Decision::Go);
        let Decision::Blocked { until_ms, reason } = decide(&mut s, limits, 3 * 3_600_000) else {
            panic!()
        };
        assert_eq!(until_ms, 86_400_000);
        assert!(reason.contains("daily"));
    }

    #[test]
    fn a_429_blocks_every_caller_until_retry_after() {
        let mut s = QuotaState::default();
        block_ms(&mut s, 1_000_000, Some(30), "Gong");
        assert!(matches!(
            decide(&mut s, QuotaLimits::default(), 1_029_000),
            Decision::Blocked {
                until_ms: 1_030_000,
                ..
            }
        ));
        assert_eq!(
            decide(&mut s, QuotaLimits::default(), 1_030_000),
            Decision::Go
        );
        block_ms(&mut s, 2_000_000, None, "Gong");
        assert_eq!(s.blocked_until_ms, 2_060_000);
        assert_eq!(seconds_until(2_060_000, 2_000_001), 60);
    }

    /// Issue 10 finding 10: a 429 at x.250 s with `Retry-After: 3` allows no call before
    /// x+3.250 s (second-truncated arithmetic let one through after 2.75 s).
    #[test]
    fn retry_after_is_honoured_to_the_millisecond() {
        let mut s = QuotaState::default();
        let at_ms = 1_700_000_000_250;
        block_ms(&mut s, at_ms, Some(3), "Gong");
        assert!(matches!(
            decide(&mut s, QuotaLimits::default(), at_ms + 2_999),
            Decision::Blocked { .. }
        ));
        assert_eq!(
            decide(&mut s, QuotaLimits::default(), at_ms + 3_000),
            Decision::Go
        );
    }
}
