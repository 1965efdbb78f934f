//! The test credentials and Standard Webhooks signing, computed independently of the component's
//! own code; shared by the in-process host and the real-Spin suite (no wasmtime here).

use base64::Engine as _;

/// Default `api_token` variable (the bearer token clients of the bridge use).
pub const API_TOKEN: &str = "test-api-token";
/// Default `gong_access_key` variable.
pub const GONG_ACCESS_KEY: &str = "test-key";
/// Default `gong_access_key_secret` variable.
pub const GONG_ACCESS_KEY_SECRET: &str = "test-secret";
/// The 32 raw bytes behind the default `webhook_secret` variable.
pub const WEBHOOK_SECRET_BYTES: &[u8; 32] = b"test-webhook-secret-0123456789ab";

/// Default `webhook_secret` variable: `whsec_` + base64(`WEBHOOK_SECRET_BYTES`).
pub fn webhook_secret() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(WEBHOOK_SECRET_BYTES)
    )
}

/// A Standard Webhooks `v1,<base64>` signature of a delivery under `key` (computed here,
/// independently of the component's own code).
pub fn sign_webhook_with(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The `webhook-timestamp` (now) and `webhook-signature` headers for a delivery signed with
/// the default test secret.
pub fn signed_now(id: &str, body: &[u8]) -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    (
        now.to_string(),
        sign_webhook_with(WEBHOOK_SECRET_BYTES, id, now, body),
    )
}
