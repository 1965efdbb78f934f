//! Standard Webhooks verification (https://www.standardwebhooks.com/): HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{raw body}`, keyed with the base64 secret after `whsec_`,
//! sent as space-separated `v1,<base64>` signatures (several during key rotation), with the
//! timestamp within a tolerance. The raw body is verified before anything parses it.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far `webhook-timestamp` may be from now, either way.
pub const TOLERANCE_SECONDS: i64 = 5 * 60;

/// Why a delivery was refused. Messages name the failed check, never anything about the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a Unix time in seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is {0} s away from now; at most {TOLERANCE_SECONDS} s is accepted")]
    StaleTimestamp(i64),
    #[error("webhook-signature has no v1 signature")]
    NoV1Signature,
    #[error("no signature in webhook-signature matches the body")]
    NoMatch,
}

/// The signing secret, decoded once.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// `whsec_<base64>`; without the prefix the whole value is taken as base64, and if it is
    /// not base64 at all, as raw bytes (some senders configure a plain shared string).
    pub fn parse(configured: &str) -> WebhookSecret {
        let trimmed = configured.trim();
        let encoded = trimmed.strip_prefix("whsec_").unwrap_or(trimmed);
        match base64::engine::general_purpose::STANDARD.decode(encoded) {
            Ok(bytes) if !bytes.is_empty() => WebhookSecret(bytes),
            _ => WebhookSecret(trimmed.as_bytes().to_vec()),
        }
    }

    /// HMAC takes keys of any length, so this is always `Some`; it stays an Option only so
    /// that no panic path exists.
    fn mac(&self) -> Option<Hmac<Sha256>> {
        Hmac::<Sha256>::new_from_slice(&self.0).ok()
    }

    /// The `v1,<base64>` signature of a delivery (what a sender computes).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let Some(mut mac) = self.mac() else {
            return "v1,".to_owned();
        };
        feed(&mut mac, id, timestamp, body);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    }

    /// Verifies one delivery. `now` is Unix seconds.
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let id = id
            .filter(|s| !s.is_empty())
            .ok_or(SignatureError::MissingHeader("webhook-id"))?;
        let timestamp = timestamp
            .filter(|s| !s.is_empty())
            .ok_or(SignatureError::MissingHeader("webhook-timestamp"))?;
        let signatures = signatures
            .filter(|s| !s.trim().is_empty())
            .ok_or(SignatureError::MissingHeader("webhook-signature"))?;
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| SignatureError::BadTimestamp)?;
        let skew = now.saturating_sub(ts);
        if skew.abs() > TOLERANCE_SECONDS {
            return Err(SignatureError::StaleTimestamp(skew));
        }
        let mut saw_v1 = false;
        for candidate in signatures.split_whitespace() {
            let Some(encoded) = candidate.strip_prefix("v1,") else {
                continue;
            };
            saw_v1 = true;
            let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
                continue;
            };
            if expected.is_empty() {
                continue;
            }
            let Some(mut mac) = self.mac() else { continue };
            feed(&mut mac, id, ts, body);
            // `verify_slice` compares in constant time.
            if mac.verify_slice(&expected).is_ok() {
                return Ok(());
            }
        }
        Err(if saw_v1 {
            SignatureError::NoMatch
        } else {
            SignatureError::NoV1Signature
        })
    }
}

fn feed(mac: &mut Hmac<Sha256>, id: &str, timestamp: i64, body: &[u8]) {
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks reference test vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn reference_vector_signs_and_verifies() {
        let s = WebhookSecret::parse(SECRET);
        assert_eq!(s.sign(ID, TS, BODY), SIG);
        assert_eq!(
            s.verify(Some(ID), Some(&TS.to_string()), Some(SIG), BODY, TS + 10),
            Ok(())
        );
    }

    #[test]
    fn each_failed_check_is_named() {
        let s = WebhookSecret::parse(SECRET);
        let ts = TS.to_string();
        assert_eq!(
            s.verify(None, Some(&ts), Some(SIG), BODY, TS),
            Err(SignatureError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            s.verify(Some(ID), None, Some(SIG), BODY, TS),
            Err(SignatureError::MissingHeader("webhook-timestamp"))
        );
        assert_eq!(
            s.verify(Some(ID), Some(&ts), None, BODY, TS),
            Err(SignatureError::MissingHeader("webhook-signature"))
        );
        assert_eq!(
            s.verify(Some(ID), Some("soon"), Some(SIG), BODY, TS),
            Err(SignatureError::BadTimestamp)
        );
        assert!(matches!(
            s.verify(Some(ID), Some(&ts), Some(SIG), BODY, TS + 301),
            Err(SignatureError::StaleTimestamp(301))
        ));
        assert!(matches!(
            s.verify(Some(ID), Some(&ts), Some(SIG), BODY, TS - 301),
            Err(SignatureError::StaleTimestamp(-301))
        ));
        assert_eq!(
            s.verify(Some(ID), Some(&ts), Some(SIG), b"{}", TS),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            s.verify(Some(ID), Some(&ts), Some("v2,abc"), BODY, TS),
            Err(SignatureError::NoV1Signature)
        );
        // An empty v1 signature never matches.
        assert_eq!(
            s.verify(Some(ID), Some(&ts), Some("v1,"), BODY, TS),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn any_of_several_signatures_may_match_for_key_rotation() {
        let s = WebhookSecret::parse(SECRET);
        let header = format!("v1,Zm9vYmFy v1a,xyz {SIG}");
        assert_eq!(
            s.verify(Some(ID), Some(&TS.to_string()), Some(&header), BODY, TS),
            Ok(())
        );
        let other = WebhookSecret::parse("whsec_b3RoZXItc2VjcmV0");
        assert_eq!(
            other.verify(Some(ID), Some(&TS.to_string()), Some(SIG), BODY, TS),
            Err(SignatureError::NoMatch)
        );
        assert!(!format!("{other:?}").contains("b3Ro"));
    }
}
