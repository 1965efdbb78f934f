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
        QuotaLimits { per_second: 3, per_hour: 450, per_day: 9_000 }
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
    /// Unix seconds until which no replica calls Gong (after a 429), and why.
    pub blocked_until: i64,
    #[serde(default)]
    pub blocked_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Spend one call (the state has been updated).
    Go,
    /// This second's calls are used up: wait this many milliseconds and ask again.
    Wait(u64),
    /// No call until `until` (Unix seconds).
    Blocked { until: i64, reason: String },
}

/// Decides whether one more call may go now (`now_ms`: Unix milliseconds) and, if so,
/// counts it in `state`.
pub fn decide(state: &mut QuotaState, limits: QuotaLimits, now_ms: i64) -> Decision {
    let now = now_ms.div_euclid(1000);
    if state.blocked_until > now {
        return Decision::Blocked {
            until: state.blocked_until,
            reason: state.blocked_reason.clone().unwrap_or_else(|| "Gong asked the bridge to wait (429)".into()),
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
            until: (day + 1) * 86_400,
            reason: format!("daily cap of {} Gong calls reached (variable gong_daily_call_cap)", limits.per_day),
        };
    }
    if limits.per_hour > 0 && state.hour_count >= limits.per_hour {
        return Decision::Blocked {
            until: (hour + 1) * 3600,
            reason: format!("hourly cap of {} outbound calls reached (variable outbound_hourly_cap)", limits.per_hour),
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

/// Records Gong's 429: every replica waits `retry_after` seconds (60 when Gong gave none).
pub fn block(state: &mut QuotaState, now: i64, retry_after: Option<u64>) {
    let seconds = retry_after.unwrap_or(60).clamp(1, 3600) as i64;
    state.blocked_until = state.blocked_until.max(now + seconds);
    state.blocked_reason = Some(format!("Gong answered 429; Retry-After {seconds} s"));
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
        let limits = QuotaLimits { per_second: 0, per_hour: 2, per_day: 3 };
        let mut s = QuotaState::default();
        let t = 7_200_000; // 2 h in ms
        assert_eq!(decide(&mut s, limits, t), Decision::Go);
        assert_eq!(decide(&mut s, limits, t), Decision::Go);
        let Decision::Blocked { until, reason } = decide(&mut s, limits, t) else { panic!() };
        assert_eq!(until, 3 * 3600);
        assert!(reason.contains("hourly"));
        assert_eq!(decide(&mut s, limits, 3 * 3_600_000), Decision::Go);
        let Decision::Blocked { until, reason } = decide(&mut s, limits, 3 * 3_600_000) else { panic!() };
        assert_eq!(until, 86_400);
        assert!(reason.contains("daily"));
    }

    #[test]
    fn a_429_blocks_every_caller_until_retry_after() {
        let mut s = QuotaState::default();
        block(&mut s, 1_000, Some(30));
        assert!(matches!(decide(&mut s, QuotaLimits::default(), 1_029_000), Decision::Blocked { until: 1_030, .. }));
        assert_eq!(decide(&mut s, QuotaLimits::default(), 1_030_000), Decision::Go);
        block(&mut s, 2_000, None);
        assert_eq!(s.blocked_until, 2_060);
    }
}
