//! Handlers, one module per area of the management API.
pub mod crm;
pub mod embedded;
pub mod failures;
pub mod health;
pub mod integration;
pub mod mappings;
pub mod records;
pub mod requests;
pub mod schema;
pub mod status;
pub mod suggest;
pub mod sync;
pub mod table;
pub mod webhooks;

use crate::problem::ApiError;
use crate::validation::{Violation, MAX_VIOLATIONS};

/// A 422 listing validation violations (at most [`MAX_VIOLATIONS`], with the total).
pub fn violations_to_problem(
    title: &'static str,
    detail: &str,
    violations: Vec<Violation>,
    total: Option<usize>,
) -> ApiError {
    let total = total.unwrap_or(violations.len());
    let listed: Vec<serde_json::Value> = violations
        .into_iter()
        .take(MAX_VIOLATIONS)
        .map(|v| serde_json::to_value(v).unwrap_or_default())
        .collect();
    let mut extra = serde_json::Map::new();
    extra.insert("totalErrors".into(), serde_json::json!(total));
    extra.insert("truncated".into(), serde_json::json!(total > listed.len()));
    let detail = match listed
        .first()
        .and_then(|v| v.get("message"))
        .and_then(|m| m.as_str())
    {
        Some(first) if total == 1 => format!("{detail}: {first}"),
        _ => format!("{detail} ({total} error(s))"),
    };
    ApiError::Unprocessable {
        title,
        detail,
        errors: listed,
        extra,
    }
}

#[cfg(test)]
mod openapi_tests;
