//! What the CRM receivers verify with: HMAC-SHA256 given in hex (Close, Attio) and secrets
//! compared in constant time (Pipedrive's Basic auth). Standard Webhooks stay in
//! `webhooks/signature.rs`.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Whether `given_hex` is HMAC-SHA256(`key`, the concatenation of `parts`), compared in
/// constant time; a signature that is not hex is simply wrong.
pub fn hmac_sha256_hex_matches(key: &[u8], parts: &[&[u8]], given_hex: &str) -> bool {
    let Ok(given) = hex::decode(given_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(&given).is_ok()
}

/// Compares two secrets in constant time (over SHA-256 digests, so their lengths do not leak).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    bool::from(
        Sha256::digest(a)
            .as_slice()
            .ct_eq(Sha256::digest(b).as_slice()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_hmacs_match_only_the_right_key_and_message() {
        // RFC 4231 test case 2.
        let key = b"Jefe";
        let good = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert!(hmac_sha256_hex_matches(
            key,
            &[b"what do ya want ", b"for nothing?"],
            good
        ));
        assert!(hmac_sha256_hex_matches(
            key,
            &[b"what do ya want for nothing?"],
            &good.to_uppercase()
        ));
        assert!(!hmac_sha256_hex_matches(
            b"jefe",
            &[b"what do ya want for nothing?"],
            good
        ));
        assert!(!hmac_sha256_hex_matches(
            key,
            &[b"what do ya want for nothing!"],
            good
        ));
        assert!(!hmac_sha256_hex_matches(
            key,
            &[b"what do ya want for nothing?"],
            "zz"
        ));
        assert!(same_secret(b"a:b", b"a:b") && !same_secret(b"a:b", b"a:c"));
    }
}
