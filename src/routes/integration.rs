//! `PUT|GET|DELETE /integration`: the one Generic CRM integration Gong allows per company.

use serde::Deserialize;
use serde_json::json;

use crate::app::{client_request_id, json_body};
use crate::bridge::Bridge;
use crate::gong::client::{GongError, Operation};
use crate::gong::models::{ListIntegrationsResponse, RegisterResponse, RegistrationRequest};
use crate::outbox::requests::{submit_tracked, Submission};
use crate::ports::{Request, Response};
use crate::problem::{json_response, ApiError};
use crate::routes::requests::accepted_response;
use crate::settings;
use crate::store::{KeptIntegration, INTEGRATION_KEY};
use crate::tracking::RequestOperation;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterBody {
    name: Option<String>,
    owner_email: Option<String>,
}

/// Registers the integration and keeps its id. Gong's 409 (one exists already) is answered by
/// looking the existing one up and adopting it.
pub fn register(bridge: &Bridge, request: &Request) -> Result<Response, ApiError> {
    let body: RegisterBody = json_body(request)?;
    register_integration(bridge, body.name, body.owner_email)
}

/// Shared by `PUT /integration` and `integration.registered` webhooks.
pub fn register_integration(
    bridge: &Bridge,
    name: Option<String>,
    owner_email: Option<String>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let name = name.unwrap_or_default().trim().to_owned();
    let owner_email = owner_email.unwrap_or_default().trim().to_owned();
    if name.is_empty() {
        errors.push(json!({"field": "name", "rule": "required", "message": "name is required (e.g. \"ACME CRM\")"}));
    }
    if !crate::validation::looks_like_email(&owner_email) {
        errors.push(json!({"field": "ownerEmail", "rule": "email", "message": "ownerEmail must be an email address"}));
    }
    if !errors.is_empty() {
        return Err(ApiError::unprocessable(
            "Invalid registration",
            "the registration request is invalid",
            errors,
        ));
    }
    let gong = bridge.gong()?;
    let registration = RegistrationRequest {
        name: name.clone(),
        owner_email: owner_email.clone(),
    };
    let op = Operation::RegisterIntegration;
    let req = gong
        .register_integration(&registration)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let response = bridge.send(op, req)?;
    match crate::gong::client::parse_response::<RegisterResponse>(&response, &[200, 201]) {
        Ok(registered) => {
            let id = registered.integration_id.ok_or_else(|| ApiError::Gong {
                op,
                error: GongError::BadBody {
                    status: response.status().as_u16(),
                    detail: "no integrationId in the answer".into(),
                },
            })?;
            keep(bridge, id, "registered", Some(name), Some(owner_email))?;
            Ok(json_response(
                200,
                &json!({
                    "integrationId": id.to_string(),
                    "adopted": false,
                    "gongRequestId": registered.request_id,
                    "message": "registered a new Generic CRM integration in Gong",
                }),
            ))
        }
        Err(GongError::Conflict { error }) => adopt_existing(bridge, &gong, error.summary()),
        Err(error) => Err(ApiError::Gong { op, error }),
    }
}

fn adopt_existing(
    bridge: &Bridge,
    gong: &crate::gong::client::GongClient,
    conflict: String,
) -> Result<Response, ApiError> {
    let listed: ListIntegrationsResponse = bridge.call(
        Operation::ListIntegrations,
        gong.list_integrations(),
        &[200],
    )?;
    let Some((existing, id)) = listed
        .integrations
        .iter()
        .find_map(|i| i.integration_id.map(|id| (i, id)))
    else {
        return Err(ApiError::Conflict(format!(
            "Gong says an integration already exists ({conflict}) but lists none the bridge can adopt; \
             the company may use a native CRM integration (Salesforce, HubSpot), which must be removed first"
        )));
    };
    keep(
        bridge,
        id,
        "adopted",
        existing.name.clone(),
        existing.owner_email.clone(),
    )?;
    Ok(json_response(
        200,
        &json!({
            "integrationId": id.to_string(),
            "adopted": true,
            "name": existing.name,
            "ownerEmail": existing.owner_email,
            "message": "Gong already had a Generic CRM integration (409); the bridge adopted it instead of registering another",
        }),
    ))
}

/// Keeps the integrationId the bridge uses from now on, and where it came from.
fn keep(
    bridge: &Bridge,
    integration_id: i64,
    source: &str,
    name: Option<String>,
    owner_email: Option<String>,
) -> Result<(), ApiError> {
    let kept = KeptIntegration {
        integration_id,
        source: source.to_owned(),
        name,
        owner_email,
        kept_at: bridge.now(),
    };
    Ok(bridge.store().put_json(INTEGRATION_KEY, &kept)?)
}

/// Gong's list plus the integrationId the bridge uses (and where it comes from).
pub fn list(bridge: &Bridge) -> Result<Response, ApiError> {
    let gong = bridge.gong()?;
    let listed: ListIntegrationsResponse = bridge.call(
        Operation::ListIntegrations,
        gong.list_integrations(),
        &[200],
    )?;
    let (in_use, source) = match settings::integration_id_variable(bridge.config)? {
        Some(id) => (Some(id), Some("variable".to_owned())),
        None => match bridge.store().integration()? {
            Some(kept) => (Some(kept.integration_id), Some(kept.source)),
            None => (None, None),
        },
    };
    let integrations: Vec<_> = listed
        .integrations
        .iter()
        .map(|i| json!({"integrationId": i.integration_id.map(|id| id.to_string()), "name": i.name, "ownerEmail": i.owner_email}))
        .collect();
    Ok(json_response(
        200,
        &json!({
            "integrations": integrations,
            "bridgeIntegrationId": in_use.map(|id| id.to_string()),
            "bridgeIntegrationSource": source,
            "gongRequestId": listed.request_id,
        }),
    ))
}

/// Asynchronous delete: tracked under a clientRequestId, answered 202 + Location.
pub fn delete(bridge: &Bridge, request: &Request) -> Result<Response, ApiError> {
    delete_integration(bridge, client_request_id(request)?, None)
}

/// Shared by `DELETE /integration` and `integration.deleted` webhooks.
pub fn delete_integration(
    bridge: &Bridge,
    crid: String,
    delivery: Option<String>,
) -> Result<Response, ApiError> {
    let integration_id = bridge.integration_id()?;
    let gong = bridge.gong()?;
    let record = submit_tracked(
        bridge,
        &gong,
        Submission {
            client_request_id: crid,
            operation: RequestOperation::DeleteIntegration,
            object_type: None,
            integration_id,
            record_count: None,
            ldjson: None,
            line_object_ids: None,
            delivery,
            from_buffer: false,
        },
    )?;
    Ok(accepted_response(
        &record.record,
        record.replayed,
        serde_json::Map::new(),
    ))
}
