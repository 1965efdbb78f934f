//! Idempotency keys over a last-write-wins store (no compare-and-set, no transactions).
//!
//! A key moves in-progress → done(status, body). A replay of a done key returns the stored
//! answer; the same key with another body (fingerprint) is a 422; a key still in progress is a
//! 409 with `Retry-After`.
//!
//! Claiming without compare-and-set ("claim, settle, verify"): a request that finds no record
//! writes an in-progress claim carrying a random owner token, waits `settle`, and reads the
//! record back. Every concurrent request that also found nothing wrote its own claim within
//! that window (its read-to-write gap is far shorter than `settle`), so all of them read back
//! the same last-written owner and exactly one proceeds. The guarantee is as strong as "no
//! replica takes longer than `settle` between its read and its write"; see the README.
//!
//! Expiry: next to each record an index key `idemexp/{expiresAtUnix}/{scope}/{key}` (no value
//! needed) lets a sweep find expired records from key names alone, without reading values.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ports::{Clock, Kv, KvError, Response};
use crate::problem::ApiError;

pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(100);
/// An in-progress claim older than this is taken to be abandoned (its replica died).
pub const LEASE: Duration = Duration::from_secs(120);
use crate::keys::{IDEMPOTENCY_EXPIRY_PREFIX as EXPIRY_PREFIX, IDEMPOTENCY_PREFIX};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    state: State,
    fingerprint: String,
    owner: String,
    started_at: i64,
    expires_at: i64,
    #[serde(default)]
    status: u16,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    body: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    InProgress,
    Done,
}

/// What to do with a request that carries an idempotency key.
pub enum Begin {
    /// This request owns the key: run it, then `complete` or `abandon`.
    Proceed(Claim),
    /// Already done: answer this stored response.
    Replay(Response),
}

pub struct Claim {
    key: String,
    entry: Entry,
}

impl Claim {
    /// Gong's clientRequestId for the work behind this key: the key itself when it is a valid
    /// one, else derived from its hash, so a re-delivery can never create a second Gong request.
    pub fn client_request_id(&self, prefix: &str) -> String {
        crate::gong::request_id::ClientRequestId::derive(prefix, &self.key).into_string()
    }
}

pub fn fingerprint(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// What one management request under an `Idempotency-Key` is: its query and its body (the
/// method and path are the key's scope). Another query is another request, not a replay.
pub fn request_fingerprint(query: &str, body: &[u8]) -> String {
    let mut digest = Sha256::new();
    digest.update((query.len() as u64).to_be_bytes());
    digest.update(query.as_bytes());
    digest.update(body);
    hex(&digest.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key part safe for KV key names: itself when short and plain, else `h-` + its SHA-256.
fn key_part(raw: &str) -> String {
    if !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        raw.to_owned()
    } else {
        format!("h-{}", hex(&Sha256::digest(raw.as_bytes())))
    }
}

pub struct Idempotency<'a> {
    pub kv: &'a dyn Kv,
    pub clock: &'a dyn Clock,
    pub ttl: Duration,
    pub settle: Duration,
}

impl<'a> Idempotency<'a> {
    fn now(&self) -> i64 {
        self.clock.now().unix_timestamp()
    }

    fn read(&self, key: &str) -> Result<Option<Entry>, ApiError> {
        match self.kv.get(key)? {
            None => Ok(None),
            // An unreadable entry is treated as absent: it can only be a damaged claim.
            Some(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        }
    }

    fn write(&self, key: &str, entry: &Entry) -> Result<(), KvError> {
        let bytes = serde_json::to_vec(entry).map_err(|e| KvError(e.to_string()))?;
        self.kv.set(key, &bytes)
    }

    /// Starts a request under `scope`/`raw_key` with the body's fingerprint.
    pub fn begin(&self, scope: &str, raw_key: &str, fingerprint: &str) -> Result<Begin, ApiError> {
        let key = format!(
            "{IDEMPOTENCY_PREFIX}{}/{}",
            key_part(scope),
            key_part(raw_key)
        );
        let now = self.now();
        if let Some(existing) = self.read(&key)? {
            let live = existing.expires_at > now;
            let abandoned = existing.state == State::InProgress
                && now - existing.started_at > LEASE.as_secs() as i64;
            if live && !abandoned {
                return self.answer_existing(&existing);
            }
        }
        // Claim, settle, verify.
        let entry = Entry {
            state: State::InProgress,
            fingerprint: fingerprint.to_owned(),
            owner: uuid::Uuid::new_v4().simple().to_string(),
            started_at: now,
            expires_at: now + self.ttl.as_secs() as i64,
            status: 0,
            content_type: None,
            location: None,
            body: String::new(),
        };
        self.write(&key, &entry)?;
        if !self.settle.is_zero() {
            self.clock.sleep(self.settle);
        }
        match self.read(&key)? {
            Some(current) if current.owner == entry.owner => {
                // Index for the sweep; losing it only delays cleanup.
                let _ = self.kv.set(&expiry_key(entry.expires_at, &key), b"");
                Ok(Begin::Proceed(Claim { key, entry }))
            }
            Some(other) => self.answer_existing(&other),
            None => Err(ApiError::InProgress {
                detail: "another delivery with this key is being handled".into(),
                retry_after: 1,
            }),
        }
    }

    fn answer_existing(&self, existing: &Entry) -> Result<Begin, ApiError> {
        match existing.state {
            State::Done => Ok(Begin::Replay(replay(existing))),
            State::InProgress => Err(ApiError::InProgress {
                detail: "a request with this idempotency key is still being handled; retry shortly"
                    .into(),
                retry_after: 2,
            }),
        }
    }

    /// Like `begin`, but first refuses a key reused with a different body.
    pub fn begin_checked(
        &self,
        scope: &str,
        raw_key: &str,
        fingerprint: &str,
    ) -> Result<Begin, ApiError> {
        let key = format!(
            "{IDEMPOTENCY_PREFIX}{}/{}",
            key_part(scope),
            key_part(raw_key)
        );
        if let Some(existing) = self.read(&key)? {
            if existing.expires_at > self.now() && existing.fingerprint != fingerprint {
                return Err(ApiError::unprocessable(
                    "Idempotency key reused",
                    "this idempotency key was already used with a different request (body or query)",
                    vec![serde_json::json!({"field": "idempotencyKey", "rule": "idempotency.fingerprint_mismatch",
                        "message": "same key, different payload: use a new key for a new payload"})],
                ));
            }
        }
        self.begin(scope, raw_key, fingerprint)
    }

    /// Stores the final answer of a request that took effect (2xx/3xx). Any other answer
    /// releases the key, as Stripe and the IETF draft do: a request refused by validation, or
    /// one that failed on Gong's side, changed nothing, so the same key may be used again with
    /// a corrected body or for a retry (data a failed request carried is kept elsewhere, see
    /// `routes::requests`).
    pub fn complete(&self, claim: Claim, response: &Response) -> Result<(), KvError> {
        let status = response.status().as_u16();
        if status >= 400 {
            return self.abandon(claim);
        }
        let mut entry = claim.entry;
        entry.state = State::Done;
        entry.status = status;
        entry.content_type = header(response, http::header::CONTENT_TYPE);
        entry.location = header(response, http::header::LOCATION);
        entry.body = String::from_utf8_lossy(response.body()).into_owned();
        self.write(&claim.key, &entry)
    }

    /// Releases a claim so the next delivery runs the work again.
    pub fn abandon(&self, claim: Claim) -> Result<(), KvError> {
        self.kv.delete(&claim.key)?;
        self.kv
            .delete(&expiry_key(claim.entry.expires_at, &claim.key))
    }

    /// Deletes expired keys, reading key names only (never values). Returns how many.
    pub fn sweep(&self) -> Result<usize, KvError> {
        let now = self.now();
        let mut removed = 0;
        for index_key in self.kv.keys()? {
            let Some(rest) = index_key.strip_prefix(EXPIRY_PREFIX) else {
                continue;
            };
            let Some((expires, key)) = rest.split_once('/') else {
                continue;
            };
            let Ok(expires) = expires.parse::<i64>() else {
                continue;
            };
            if expires <= now {
                self.kv.delete(&format!("{IDEMPOTENCY_PREFIX}{key}"))?;
                self.kv.delete(&index_key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn expiry_key(expires_at: i64, key: &str) -> String {
    format!(
        "{EXPIRY_PREFIX}{expires_at:012}/{}",
        key.trim_start_matches(IDEMPOTENCY_PREFIX)
    )
}

fn header(response: &Response, name: http::header::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn replay(entry: &Entry) -> Response {
    let mut builder = http::Response::builder()
        .status(entry.status)
        .header("idempotency-replayed", "true");
    if let Some(ct) = &entry.content_type {
        builder = builder.header(http::header::CONTENT_TYPE, ct.as_str());
    }
    if let Some(location) = &entry.location {
        builder = builder.header(http::header::LOCATION, location.as_str());
    }
    builder
        .body(entry.body.clone().into_bytes())
        .unwrap_or_else(|_| http::Response::new(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryKv;
    use std::cell::Cell;
    use time::OffsetDateTime;

    struct FakeClock(Cell<i64>);
    impl Clock for FakeClock {
        fn now(&self) -> OffsetDateTime {
            OffsetDateTime::from_unix_timestamp(self.0.get()).unwrap()
        }
        fn sleep(&self, _: Duration) {}
    }

    fn ok(status: u16, body: &str) -> Response {
        http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec())
            .unwrap()
    }

    #[test]
    fn done_key_replays_and_other_fingerprint_is_refused() {
        let kv = MemoryKv::default();
        let clock = FakeClock(Cell::new(1_000));
        let idem = Idempotency {
            kv: &kv,
            clock: &clock,
            ttl: DEFAULT_TTL,
            settle: Duration::ZERO,
        };
        let Begin::Proceed(claim) = idem.begin_checked("webhooks", "msg_1", "fp1").unwrap() else {
            panic!("first must proceed")
        };
        // While in progress: 409 with Retry-After.
        let err = idem
            .begin_checked("webhooks", "msg_1", "fp1")
            .err()
            .unwrap();
        assert_eq!(err.status(), 409);
        idem.complete(claim, &ok(202, r#"{"a":1}"#)).unwrap();
        match idem.begin_checked("webhooks", "msg_1", "fp1").unwrap() {
            Begin::Replay(r) => {
                assert_eq!(r.status(), 202);
                assert_eq!(r.body(), br#"{"a":1}"#);
                assert_eq!(r.headers()["idempotency-replayed"], "true");
            }
            Begin::Proceed(_) => panic!("must replay"),
        }
        assert_eq!(
            idem.begin_checked("webhooks", "msg_1", "fp2")
                .err()
                .unwrap()
                .status(),
            422
        );
        // Scopes are separate.
        assert!(matches!(
            idem.begin_checked("other", "msg_1", "fp2").unwrap(),
            Begin::Proceed(_)
        ));
    }

    #[test]
    fn refused_requests_release_the_key_for_a_corrected_body() {
        let kv = MemoryKv::default();
        let clock = FakeClock(Cell::new(1_000));
        let idem = Idempotency {
            kv: &kv,
            clock: &clock,
            ttl: DEFAULT_TTL,
            settle: Duration::ZERO,
        };
        let Begin::Proceed(claim) = idem.begin_checked("s", "k", "bad-body").unwrap() else {
            panic!()
        };
        idem.complete(claim, &ok(422, "{}")).unwrap();
        assert!(matches!(
            idem.begin_checked("s", "k", "fixed-body").unwrap(),
            Begin::Proceed(_)
        ));
    }

    #[test]
    fn server_errors_release_the_key() {
        let kv = MemoryKv::default();
        let clock = FakeClock(Cell::new(1_000));
        let idem = Idempotency {
            kv: &kv,
            clock: &clock,
            ttl: DEFAULT_TTL,
            settle: Duration::ZERO,
        };
        let Begin::Proceed(claim) = idem.begin("s", "k", "f").unwrap() else {
            panic!()
        };
        idem.complete(claim, &ok(502, "{}")).unwrap();
        assert!(matches!(
            idem.begin("s", "k", "f").unwrap(),
            Begin::Proceed(_)
        ));
    }

    #[test]
    fn abandoned_claims_are_taken_over_after_the_lease() {
        let kv = MemoryKv::default();
        let clock = FakeClock(Cell::new(1_000));
        let idem = Idempotency {
            kv: &kv,
            clock: &clock,
            ttl: DEFAULT_TTL,
            settle: Duration::ZERO,
        };
        let Begin::Proceed(_lost) = idem.begin("s", "k", "f").unwrap() else {
            panic!()
        };
        clock.0.set(1_000 + LEASE.as_secs() as i64 + 1);
        assert!(matches!(
            idem.begin("s", "k", "f").unwrap(),
            Begin::Proceed(_)
        ));
    }

    #[test]
    fn sweep_removes_only_expired_keys_without_reading_values() {
        let kv = MemoryKv::default();
        let clock = FakeClock(Cell::new(1_000));
        let idem = Idempotency {
            kv: &kv,
            clock: &clock,
            ttl: Duration::from_secs(10),
            settle: Duration::ZERO,
        };
        let Begin::Proceed(a) = idem.begin("s", "old", "f").unwrap() else {
            panic!()
        };
        idem.complete(a, &ok(200, "{}")).unwrap();
        clock.0.set(1_005);
        let Begin::Proceed(b) = idem.begin("s", "new", "f").unwrap() else {
            panic!()
        };
        idem.complete(b, &ok(200, "{}")).unwrap();
        clock.0.set(1_011);
        assert_eq!(idem.sweep().unwrap(), 1);
        let keys: Vec<String> = kv.map.borrow().keys().cloned().collect();
        assert_eq!(
            keys,
            vec![
                "idem/s/new".to_string(),
                "idemexp/000000001015/s/new".to_string()
            ]
        );
        // An expired record no longer replays even before a sweep.
        clock.0.set(1_016);
        assert!(matches!(
            idem.begin("s", "new", "f").unwrap(),
            Begin::Proceed(_)
        ));
    }
}
