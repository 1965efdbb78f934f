//! `GET /mappings/{source}/suggest`: a mapping override built from the CRM's own field
//! definitions (`crm::suggest`), read through the gateway with the source's API token; checked
//! to be a valid override before it is answered, ready for `PUT /mappings/{source}`.

use serde_json::Value;

use crate::bridge::Bridge;
use crate::crm::suggest::{self, Dialect, FieldList};
use crate::crm::sync::{self, SyncApi};
use crate::ports::{Config, Request, Response};
use crate::problem::{json_response, ApiError};

/// Pages of one field list read at most (500 fields each).
const MAX_PAGES: usize = 10;

pub fn suggest(bridge: &Bridge, source: &str) -> Result<Response, ApiError> {
    let (lists, get, api, dialect): (_, Getter, &dyn SyncApi, &Dialect) = match source {
        "pipedrive" => (suggest::PIPEDRIVE_FIELD_LISTS, sync::pipedrive::get, &sync::pipedrive::PipedriveApi, &suggest::PIPEDRIVE),
        "close" => (suggest::CLOSE_FIELD_LISTS, sync::close::get, &sync::close::CloseApi, &suggest::CLOSE),
        "attio" => return attio(bridge),
        _ => {
            return Err(ApiError::NotFoundResource(format!(
                "no field definitions to suggest from for {source:?}: suggestions read Pipedrive's, Close's and Attio's"
            )))
        }
    };
    let mut read = Vec::new();
    for list in lists {
        read.push((
            list,
            read_fields(bridge, list, get, api)?,
            Default::default(),
        ));
    }
    let suggestion = suggest::assemble(dialect, &read);
    let receiver = crate::crm::receiver(source)
        .ok_or_else(|| ApiError::NotFoundResource(format!("no receiver named {source:?}")))?;
    crate::crm::overrides::check(receiver, &suggestion).map_err(|problems| {
        ApiError::Internal(format!(
            "the suggested mapping does not hold: {}",
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    Ok(json_response(200, &suggestion))
}

/// The CRM's API is an option the deployment has not turned on: 409 naming what to set (the
/// bridge itself is configured, so not a 503).
fn not_enabled(variables: Vec<String>) -> ApiError {
    ApiError::Conflict(format!(
        "reading the CRM's field definitions needs {}: set it, then ask again",
        variables.join(", ")
    ))
}

/// How a CRM's API is asked (its authentication and host).
type Getter = fn(&dyn Config, &str) -> Result<Request, Vec<String>>;

fn read_fields(
    bridge: &Bridge,
    list: &FieldList,
    get: Getter,
    api: &dyn SyncApi,
) -> Result<Vec<Value>, ApiError> {
    let mut fields = Vec::new();
    let mut start = 0;
    for _ in 0..MAX_PAGES {
        // Pipedrive pages with start/limit, Close with _skip/_limit: both are sent.
        let request = get(
            bridge.config,
            &format!(
                "{}?limit=500&start={start}&_limit=100&_skip={start}",
                list.path
            ),
        )
        .map_err(not_enabled)?;
        let response = match crate::gateway::send(bridge, &api.upstream(), request)? {
            Ok(response) => response,
            Err(e) => {
                return Err(ApiError::CrmFailed(format!(
                    "{} could not be reached: {e}",
                    api.upstream().name
                )))
            }
        };
        let status = response.status().as_u16();
        let body: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
        if status != 200 {
            return Err(ApiError::CrmFailed(format!(
                "{} answered {status} for {}: {}",
                api.upstream().name,
                list.path,
                body.get("error").unwrap_or(&body)
            )));
        }
        let page = body["data"].as_array().cloned().unwrap_or_default();
        let read = page.len();
        fields.extend(page);
        let pagination = body["additional_data"]
            .get("pagination")
            .unwrap_or(&body["additional_data"]);
        // Pipedrive: more_items_in_collection; Close: has_more.
        let more = pagination["more_items_in_collection"] == Value::Bool(true)
            || body["has_more"] == Value::Bool(true);
        if !more || read == 0 {
            break;
        }
        start = pagination["next_start"]
            .as_u64()
            .map_or(start + read, |n| n as usize);
    }
    Ok(fields)
}

/// Attio: each object's attributes, and the options of its custom selects.
fn attio(bridge: &Bridge) -> Result<Response, ApiError> {
    let api = &sync::attio::AttioApi;
    let get = |path: &str| -> Result<Value, ApiError> {
        let request = crate::crm::attio::get(bridge.config, path)
            .map_err(|_| not_enabled(vec![crate::settings::ATTIO_API_TOKEN.into()]))?;
        let response = match crate::gateway::send(bridge, &api.upstream(), request)? {
            Ok(response) => response,
            Err(e) => {
                return Err(ApiError::CrmFailed(format!(
                    "Attio could not be reached: {e}"
                )))
            }
        };
        let body: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
        match response.status().as_u16() {
            200 => Ok(body),
            status => Err(ApiError::CrmFailed(format!(
                "Attio answered {status} for {path}: {}",
                body.get("message").unwrap_or(&body)
            ))),
        }
    };
    let mut read = Vec::new();
    for list in suggest::ATTIO_FIELD_LISTS {
        let attributes = get(list.path)?["data"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut options = std::collections::BTreeMap::new();
        for attribute in &attributes {
            let custom = attribute["is_system_attribute"] == Value::Bool(false);
            let Some(slug) = attribute["api_slug"]
                .as_str()
                .filter(|_| custom && attribute["type"] == "select")
            else {
                continue;
            };
            let titles: Vec<String> = get(&format!("{}/{slug}/options", list.path))?["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|o| o["is_archived"] != Value::Bool(true))
                .filter_map(|o| o["title"].as_str().map(str::to_owned))
                .collect();
            options.insert(slug.to_owned(), titles);
        }
        read.push((list, attributes, options));
    }
    let suggestion = suggest::assemble(&suggest::ATTIO, &read);
    crate::crm::overrides::check(&crate::crm::attio::Attio, &suggestion).map_err(|problems| {
        ApiError::Internal(format!(
            "the suggested mapping does not hold: {}",
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    Ok(json_response(200, &suggestion))
}
