//! The schema half of `PUT /mappings/{source}`: the custom fields a mapping declares reach
//! Gong's schemas (through the same upload as `POST /schema/{objectType}`) before the mapping is
//! stored, so no record carries a field Gong does not know. All schemas are checked first; a
//! removal or a type change needs the same explicit confirmation as on the schema route.

use serde_json::Value;

use crate::app::query_flag;
use crate::bridge::Bridge;
use crate::crm::schema_plan;
use crate::mapping::Mapping;
use crate::ports::Request;
use crate::problem::ApiError;
use crate::routes::{schema, violations_to_problem};
use crate::validation;

/// Uploads what `mapping` declares (over `before`), answering what each upload did.
pub fn upload_declared(
    bridge: &Bridge,
    request: &Request,
    before: Option<&Mapping>,
    mapping: &Mapping,
) -> Result<Vec<Value>, ApiError> {
    let allow_removal = query_flag(request, "allowFieldRemoval")?;
    let allow_type_change = query_flag(request, "allowTypeChange")?;
    let store = bridge.store();
    let mut accepted = std::collections::BTreeMap::new();
    for object_type in mapping.declared_fields().into_keys().chain(
        before
            .map(Mapping::declared_fields)
            .unwrap_or_default()
            .into_keys(),
    ) {
        accepted.insert(object_type, store.schema(object_type)?);
    }
    let previous = |t| accepted.get(&t).cloned().flatten();
    let planned = schema_plan::plan(before, mapping, &previous, allow_removal);
    let uploads = planned.map_err(|found| {
        let errors = found
            .into_iter()
            .map(|p| serde_json::json!({"field": p.field, "rule": p.rule, "message": p.message}))
            .collect();
        ApiError::unprocessable(
            "Invalid mapping",
            "the mapping was not changed: it would delete custom fields from Gong's schema",
            errors,
        )
    })?;
    let bodies: Vec<(String, Vec<u8>)> = uploads
        .iter()
        .map(|u| {
            serde_json::to_vec(&u.fields)
                .map(|body| (u.object_type.as_str().to_owned(), body))
                .map_err(|e| ApiError::Internal(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    // Every schema is judged before any is sent: one wrong declaration changes nothing at Gong.
    for (upload, (object_type, body)) in uploads.iter().zip(&bodies) {
        let previous = previous(upload.object_type);
        validation::validate_schema(object_type, body, previous.as_deref(), allow_type_change)
            .map_err(|violations| {
                violations_to_problem(
                    "Invalid mapping",
                    &format!("the mapping was not changed: its {object_type} custom fields break Gong's schema rules"),
                    violations,
                    None,
                )
            })?;
    }
    let mut answers = Vec::new();
    for (object_type, body) in &bodies {
        let response = schema::upload_schema(bridge, object_type, body, allow_type_change)?;
        answers.push(serde_json::from_slice(response.body()).unwrap_or(Value::Null));
    }
    Ok(answers)
}
