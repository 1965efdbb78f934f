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
    // A CRM API that refused the bridge (Attio's token): its notifications wait until it is fixed.
    let sources = crate::crm::fetch::health(bridge).unwrap_or_default();
    let status = if !missing.is_empty() || !malformed.is_empty() {
        "misconfigured"
    } else if !sources.is_empty() {
        "degraded"
    } else {
        "ok"
    };
    json!({
        "status": status,
        "missingVariables": missing,
        "malformedVariables": malformed,
        "unsetOptionalVariables": settings::unset_optional(bridge.config),
        "sources": sources,
        "version": env!("CARGO_PKG_VERSION"),
    })
}
