//! `GET /healthz`: the one unauthenticated status answer, naming configuration problems only.

use serde_json::json;

use crate::bridge::Bridge;
use crate::ports::Response;
use crate::problem::json_response;
use crate::settings;

/// `GET /healthz`: always 200 (the component runs); says which required variables are
/// missing and which numeric ones are malformed, by name (and never a secret's value).
pub fn get(bridge: &Bridge) -> Response {
    json_response(200, &health(bridge))
}

/// What `/healthz` knows, also part of `GET /status`.
pub fn health(bridge: &Bridge) -> serde_json::Value {
    let missing = settings::missing_required(bridge.config);
    let malformed = settings::malformed(bridge.config);
    json!({
        "status": if missing.is_empty() && malformed.is_empty() { "ok" } else { "misconfigured" },
        "missingVariables": missing,
        "malformedVariables": malformed,
        "unsetOptionalVariables": settings::unset_optional(bridge.config),
        "version": env!("CARGO_PKG_VERSION"),
    })
}
