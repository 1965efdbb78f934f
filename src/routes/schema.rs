//! `POST|GET /schema/{objectType}`: custom-field schemas, checked against Gong's rules and
//! against the schema last accepted (kept in KV) before Gong sees them.

use serde_json::json;

use crate::app::query_flag;
use crate::bridge::Bridge;
use crate::gong::client::Operation;
use crate::gong::models::{BaseResponse, ListSchemaResponse, ObjectType, SCHEMA_OBJECT_TYPES};
use crate::ports::{Request, Response};
use crate::problem::{json_response, ApiError};
use crate::routes::violations_to_problem;
use crate::store::schema_key;
use crate::validation;

pub fn upload(
    bridge: &Bridge,
    request: &Request,
    object_type_raw: &str,
) -> Result<Response, ApiError> {
    upload_schema(
        bridge,
        object_type_raw,
        request.body(),
        query_flag(request, "allowTypeChange")?,
    )
}

/// Validates a schema against Gong's rules and the last accepted one, sends it, and keeps it
/// once Gong accepts. Shared by `POST /schema` and `schema.updated` webhooks.
pub fn upload_schema(
    bridge: &Bridge,
    object_type_raw: &str,
    body: &[u8],
    allow_type_change: bool,
) -> Result<Response, ApiError> {
    let object_type = ObjectType::parse_schema(object_type_raw);
    let previous = match object_type {
        Some(t) => bridge.store().schema(t)?,
        None => None,
    };
    let valid = validation::validate_schema(
        object_type_raw,
        body,
        previous.as_deref(),
        allow_type_change,
    )
    .map_err(|violations| {
        violations_to_problem(
            "Invalid schema",
            "the schema was not sent to Gong",
            violations,
            None,
        )
    })?;
    let integration_id = bridge.integration_id()?;
    let gong = bridge.gong()?;
    let req = gong
        .upload_schema(integration_id, valid.object_type, &valid.fields)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let accepted: BaseResponse = bridge.call(Operation::UploadSchema, req, &[200, 201])?;
    bridge
        .store()
        .put_json(&schema_key(valid.object_type), &valid.stored_after_accept)?;
    let deleted: Vec<_> = valid
        .fields
        .iter()
        .filter(|f| f.is_deleted == Some(true))
        .filter_map(|f| f.unique_name.clone())
        .collect();
    Ok(json_response(
        200,
        &json!({
            "objectType": valid.object_type,
            "fieldsSent": valid.fields.len(),
            "fieldsKept": valid.stored_after_accept.len(),
            "deletedFields": deleted,
            "typeChanges": valid.type_changes,
            "gongRequestId": accepted.request_id,
        }),
    ))
}

/// Gong's current schema for one type (or, without a type, all of them).
pub fn list(bridge: &Bridge, object_type_raw: Option<&str>) -> Result<Response, ApiError> {
    let object_type = match object_type_raw {
        None => None,
        Some(raw) => Some(ObjectType::parse_schema(raw).ok_or_else(|| {
            ApiError::unprocessable(
                "Invalid object type",
                format!("objectType {raw:?} has no schema in Gong; allowed: {}", SCHEMA_OBJECT_TYPES.join(", ")),
                vec![json!({"field": "objectType", "rule": "objectType.enum", "allowed": SCHEMA_OBJECT_TYPES})],
            )
        })?),
    };
    let integration_id = bridge.integration_id()?;
    let gong = bridge.gong()?;
    let listed: ListSchemaResponse = bridge.call(
        Operation::ListSchema,
        gong.list_schema(integration_id, object_type),
        &[200],
    )?;
    Ok(json_response(
        200,
        &json!({
            "objectTypeToSelectedFields": listed.object_type_to_selected_fields,
            "gongRequestId": listed.request_id,
        }),
    ))
}
