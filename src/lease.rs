//! Leases: claim, settle, verify, renewed while work runs and expiring by itself if its holder
//! dies (any key; the engine's is the flush lease, `lease/flush`). A lease saves work, nothing
//! more: every step under it confirms its own writes by reading them back, so two holders at
//! once (a slow store, an expired lease) may waste work but never lose or regress a version.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bridge::Bridge;
use crate::fault::{encoding, Fault};
use crate::ports::{Clock, Kv};
use crate::settings;

/// KV key of the flush lease.
pub use crate::keys::FLUSH_LEASE;
/// How long the flush lease lasts without renewal: a replica that dies holding it (a crash,
/// SIGKILL) blocks flushing for at most this long.
pub const LEASE_SECONDS: i64 = 30;

#[derive(Serialize, Deserialize)]
struct Holder {
    owner: String,
    until: i64,
}

pub struct Lease {
    key: String,
    owner: String,
    /// Until when (Unix seconds) the stored claim says this holder has it.
    until: i64,
    ttl: i64,
}

fn holder(kv: &dyn Kv, key: &str) -> Result<Option<Holder>, Fault> {
    // An unreadable claim is treated as none: the lease only saves work.
    Ok(kv.get(key)?.and_then(|b| serde_json::from_slice(&b).ok()))
}

/// Takes the lease `key` for `ttl`, or returns `None` while someone else holds it.
pub fn acquire(
    kv: &dyn Kv,
    clock: &dyn Clock,
    key: &str,
    ttl: Duration,
    settle: Duration,
) -> Result<Option<Lease>, Fault> {
    let now = clock.now().unix_timestamp();
    if holder(kv, key)?.is_some_and(|h| h.until > now) {
        return Ok(None);
    }
    let owner = uuid::Uuid::new_v4().simple().to_string();
    let ttl = ttl.as_secs() as i64;
    let mine = Holder {
        owner: owner.clone(),
        until: now + ttl,
    };
    kv.set(key, &serde_json::to_vec(&mine).map_err(encoding)?)?;
    if !settle.is_zero() {
        clock.sleep(settle);
    }
    let after = holder(kv, key)?;
    Ok(after.filter(|h| h.owner == owner).map(|_| Lease {
        key: key.to_owned(),
        owner,
        until: now + ttl,
        ttl,
    }))
}

/// Extends the lease while work runs, once less than half of it is left (a KV write costs
/// ~10 ms on Spin's SQLite store, so not before every step). `false` when another holder has
/// taken it meanwhile (this one expired): the caller stops starting new work.
pub fn renew(kv: &dyn Kv, clock: &dyn Clock, lease: &mut Lease) -> Result<bool, Fault> {
    let now = clock.now().unix_timestamp();
    if lease.until - now > lease.ttl / 2 {
        return Ok(true);
    }
    match holder(kv, &lease.key)? {
        Some(h) if h.owner != lease.owner && h.until > now => return Ok(false),
        _ => {}
    }
    let mine = Holder {
        owner: lease.owner.clone(),
        until: now + lease.ttl,
    };
    kv.set(&lease.key, &serde_json::to_vec(&mine).map_err(encoding)?)?;
    lease.until = mine.until;
    Ok(true)
}

/// Gives the lease back (only if still ours); failing to is harmless: it expires.
pub fn release(kv: &dyn Kv, lease: Lease) {
    if holder(kv, &lease.key)
        .ok()
        .flatten()
        .is_some_and(|h| h.owner == lease.owner)
    {
        let _ = kv.delete(&lease.key);
    }
}

pub fn take_flush_lease(bridge: &Bridge) -> Result<Option<Lease>, Fault> {
    acquire(
        bridge.kv,
        bridge.clock,
        FLUSH_LEASE,
        Duration::from_secs(LEASE_SECONDS as u64),
        settings::idempotency_settle(bridge.config),
    )
}

/// Renews the flush lease; a store failure counts as "keep going" (the lease only saves work).
pub fn still_held(bridge: &Bridge, lease: &mut Lease) -> bool {
    renew(bridge.kv, bridge.clock, lease).unwrap_or(true)
}

/// Runs `work` under the flush lease, waiting for it while the work budget lasts (the work
/// after an answer: an operator command, a bulk file to index). `Ok(None)` when the budget ran
/// out first: the holder's next run does the work instead, so nothing is refused for it.
pub fn when_held<T>(
    bridge: &Bridge,
    work: impl FnOnce(&mut Lease) -> Result<T, Fault>,
) -> Result<Option<T>, Fault> {
    let Some(mut held) = wait_for_flush_lease(bridge)? else {
        return Ok(None);
    };
    let result = work(&mut held);
    release(bridge.kv, held);
    result.map(Some)
}

/// The flush lease, waited for while the work budget (`bridge.deadline`) lasts; `None` when it
/// ran out first (or there is no budget and the lease is held).
pub fn wait_for_flush_lease(bridge: &Bridge) -> Result<Option<Lease>, Fault> {
    loop {
        if let Some(held) = take_flush_lease(bridge)? {
            return Ok(Some(held));
        }
        let left = bridge.deadline.map(|d| d - bridge.clock.now());
        if left.is_none_or(|l| l <= time::Duration::milliseconds(WAIT_STEP_MS as i64)) {
            return Ok(None);
        }
        bridge.clock.sleep(Duration::from_millis(WAIT_STEP_MS));
    }
}

/// What a caller is told while other work holds the flush lease: who can hold it, and until when
/// at the latest (a holder renews it only while it works).
pub fn busy_note(bridge: &Bridge) -> String {
    let now = bridge.clock.now().unix_timestamp();
    match held_until(bridge) {
        Ok(Some(until)) => format!(
            "the flush lease is held by other work (the work after an earlier answer, on this instance or another replica) until {} ({} s from now) unless renewed; it is released as soon as that work ends, and POST /flush?force=true waits for it within work_budget_ms",
            time::OffsetDateTime::from_unix_timestamp(until).map(crate::validation::format_gong_datetime).unwrap_or_default(),
            (until - now).max(0)
        ),
        _ => "the flush lease was held by other work a moment ago and has been released since: ask again".to_owned(),
    }
}

/// How often work waiting for the flush lease looks again.
const WAIT_STEP_MS: u64 = 200;

/// Until when (Unix seconds) someone else holds the flush lease, if anyone does.
pub fn held_until(bridge: &Bridge) -> Result<Option<i64>, Fault> {
    let now = bridge.clock.now().unix_timestamp();
    Ok(holder(bridge.kv, FLUSH_LEASE)?
        .filter(|h| h.until > now)
        .map(|h| h.until))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryKv;
    use crate::testing::VirtualClock;

    /// Issue 10 finding 7: a lease held through a long run is renewed, so it does not expire
    /// under its holder and let a second replica in.
    #[test]
    fn a_renewed_lease_keeps_a_second_holder_out() {
        let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_700_000_000));
        let ttl = Duration::from_secs(30);
        let mut first = acquire(&kv, &clock, "lease/x", ttl, Duration::ZERO)
            .unwrap()
            .unwrap();
        for _ in 0..10 {
            clock.advance(Duration::from_secs(10));
            assert!(renew(&kv, &clock, &mut first).unwrap(), "still ours");
        }
        assert!(
            acquire(&kv, &clock, "lease/x", ttl, Duration::ZERO)
                .unwrap()
                .is_none(),
            "100 s in, the holder still has it"
        );
        release(&kv, first);
        assert!(acquire(&kv, &clock, "lease/x", ttl, Duration::ZERO)
            .unwrap()
            .is_some());
    }

    #[test]
    fn an_expired_lease_taken_by_another_is_not_renewed() {
        let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_700_000_000));
        let ttl = Duration::from_secs(30);
        let mut first = acquire(&kv, &clock, "lease/x", ttl, Duration::ZERO)
            .unwrap()
            .unwrap();
        clock.advance(Duration::from_secs(31));
        let second = acquire(&kv, &clock, "lease/x", ttl, Duration::ZERO)
            .unwrap()
            .unwrap();
        assert!(
            !renew(&kv, &clock, &mut first).unwrap(),
            "the first holder learns it lost the lease"
        );
        release(&kv, first);
        assert!(
            acquire(&kv, &clock, "lease/x", ttl, Duration::ZERO)
                .unwrap()
                .is_none(),
            "releasing a lost lease leaves the new holder's claim"
        );
        release(&kv, second);
    }
}
