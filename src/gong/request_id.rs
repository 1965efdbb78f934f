//! Gong's clientRequestId rule (1 to 64 letters, digits, `-` or `_`), defined once: the
//! management API's `Idempotency-Key`, the ids the bridge makes, and the ids it derives from a
//! webhook-id all go through it.

use sha2::{Digest, Sha256};

/// What a clientRequestId may be, for error texts.
pub const RULE: &str =
    "1 to 64 characters of letters, digits, '-' or '_' (Gong's clientRequestId rule)";

/// A clientRequestId Gong accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequestId(String);

impl ClientRequestId {
    /// `None` unless `raw` follows Gong's rule.
    pub fn parse(raw: &str) -> Option<ClientRequestId> {
        let valid = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        valid.then(|| ClientRequestId(raw.to_owned()))
    }

    /// A new one (`gcb-` and a random UUID).
    pub fn random() -> ClientRequestId {
        ClientRequestId(format!("gcb-{}", uuid::Uuid::new_v4().simple()))
    }

    /// `prefix` + the last `/` segment of `key` when that is a valid id, else `prefix` + 40 hex
    /// of the key's SHA-256: the same key always gives the same id, so a re-delivery can never
    /// create a second Gong request.
    pub fn derive(prefix: &str, key: &str) -> ClientRequestId {
        let leaf = key.rsplit('/').next().unwrap_or(key);
        ClientRequestId::parse(&format!("{prefix}{leaf}")).unwrap_or_else(|| {
            let hex: String = Sha256::digest(key.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            ClientRequestId(format!("{prefix}{}", &hex[..40]))
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        assert!(ClientRequestId::parse("abc-DEF_123").is_some());
        assert!(ClientRequestId::parse(&"x".repeat(64)).is_some());
        for bad in ["", "a b", "a.b", "a/b", "é"] {
            assert!(ClientRequestId::parse(bad).is_none(), "{bad:?}");
        }
        assert!(ClientRequestId::parse(&"x".repeat(65)).is_none());
        assert!(ClientRequestId::parse(ClientRequestId::random().as_str()).is_some());
    }

    #[test]
    fn derived_ids_are_stable_and_valid() {
        assert_eq!(
            ClientRequestId::derive("wh-", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W").as_str(),
            "wh-msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
        );
        let long = ClientRequestId::derive("wh-", &"x".repeat(100));
        assert!(ClientRequestId::parse(long.as_str()).is_some());
        assert_eq!(long, ClientRequestId::derive("wh-", &"x".repeat(100)));
        assert!(
            ClientRequestId::parse(ClientRequestId::derive("wh-", "a.b/c d").as_str()).is_some()
        );
    }
}
