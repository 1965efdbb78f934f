//! `GET /mappings/{source}/suggest`: a mapping override built from the CRM's own field
//! definitions (`crm::suggest`), read through the gateway with the source's API token; checked
//! to be a valid override before it is answered, ready for `PUT /mappings/{source}`.

use serde_json::Value;

use crate::bridge::Bridge;
use crate::crm::suggest::{self, FieldList};
use crate::crm::sync::pipedrive as api;
use crate::ports::Response;
use crate::problem::{json_response, ApiError};

/// Pages of one field list read at most (500 fields each).
const MAX_PAGES: usize = 10;

pub fn suggest(bridge: &Bridge, source: &str) -> Result<Response, ApiError> {
    if source != "pipedrive" {
        return Err(ApiError::NotFoundResource(format!(
            "no field definitions to suggest from for {source:?}: suggestions read Pipedrive's (GET /mappings/pipedrive/suggest)"
        )));
    }
    let mut lists = Vec::new();
    for list in suggest::PIPEDRIVE_FIELD_LISTS {
        lists.push((list, read_fields(bridge, list)?));
    }
    let suggestion = suggest::suggest(&lists);
    crate::crm::overrides::check(&crate::crm::pipedrive::Pipedrive, &suggestion).map_err(
        |problems| {
            ApiError::Internal(format!(
                "the suggested mapping does not hold: {}",
                problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        },
    )?;
    Ok(json_response(200, &suggestion))
}

fn read_fields(bridge: &Bridge, list: &FieldList) -> Result<Vec<Value>, ApiError> {
    let mut fields = Vec::new();
    let mut start = 0;
    for _ in 0..MAX_PAGES {
        let request = api::get(
            bridge.config,
            &format!("{}?limit=500&start={start}", list.path),
        )
        .map_err(ApiError::NotConfigured)?;
        let response = match crate::gateway::send(bridge, &api::upstream(), request)? {
            Ok(response) => response,
            Err(e) => {
                return Err(ApiError::CrmFailed(format!(
                    "Pipedrive could not be reached: {e}"
                )))
            }
        };
        let status = response.status().as_u16();
        let body: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
        if status != 200 {
            return Err(ApiError::CrmFailed(format!(
                "Pipedrive answered {status} for {}: {}",
                list.path,
                body.get("error").unwrap_or(&body)
            )));
        }
        fields.extend(body["data"].as_array().cloned().unwrap_or_default());
        let pagination = body["additional_data"]
            .get("pagination")
            .unwrap_or(&body["additional_data"]);
        if pagination["more_items_in_collection"] != Value::Bool(true) {
            break;
        }
        start = pagination["next_start"]
            .as_u64()
            .map_or(start + 500, |n| n as usize);
    }
    Ok(fields)
}
