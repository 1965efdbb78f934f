use serde_json::json;

use crate::app::Bridge;
use crate::ports::Response;
use crate::problem::json_response;
use crate::settings;

/// `GET /healthz`: always 200 (the component runs); says which required variables are
/// missing, by name only.
pub fn get(bridge: &Bridge) -> Response {
    let missing = settings::missing_required(bridge.config);
    json_response(
        200,
        &json!({
            "status": if missing.is_empty() { "ok" } else { "misconfigured" },
            "missingVariables": missing,
            "unsetOptionalVariables": settings::unset_optional(bridge.config),
            "version": env!("CARGO_PKG_VERSION"),
        }),
    )
}
