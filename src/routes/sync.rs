//! `POST /sync/{source}` (start the first full sync from the CRM's API; its pages are read
//! after the answer and by every later answer and `POST /flush`), `GET /sync/{source}` (its
//! progress per object) and `DELETE /sync/{source}` (cancel it; what was read stays).

use serde_json::json;

use crate::bridge::Bridge;
use crate::crm::sync::{self, SyncApi};
use crate::ports::Response;
use crate::problem::{json_response, ApiError};

fn api(source: &str) -> Result<&'static dyn SyncApi, ApiError> {
    sync::api(source).ok_or_else(|| {
        let known: Vec<&str> = sync::APIS.iter().map(|a| a.source()).collect();
        ApiError::NotFoundResource(format!(
            "no sync for {source:?}: the bridge syncs from {}",
            known.join(", ")
        ))
    })
}

pub fn start(bridge: &Bridge, source: &str) -> Result<Response, ApiError> {
    let api = api(source)?;
    let (state, started) = sync::start(bridge, api)?;
    let now = bridge.clock.now().unix_timestamp();
    let mut body = sync::view(&state, now);
    body["started"] = json!(started);
    let mut response = json_response(if started { 202 } else { 200 }, &body);
    let location = format!("/sync/{source}");
    if let Ok(v) = http::HeaderValue::from_str(&location) {
        response.headers_mut().insert(http::header::LOCATION, v);
    }
    response.extensions_mut().insert(crate::app::FollowUp::Sync);
    Ok(response)
}

pub fn get(bridge: &Bridge, source: &str) -> Result<Response, ApiError> {
    api(source)?;
    let state = sync::state(bridge, source)?.ok_or_else(|| {
        ApiError::NotFoundResource(format!(
            "no sync of {source} yet: start one with POST /sync/{source}"
        ))
    })?;
    Ok(json_response(
        200,
        &sync::view(&state, bridge.clock.now().unix_timestamp()),
    ))
}

pub fn cancel(bridge: &Bridge, source: &str) -> Result<Response, ApiError> {
    api(source)?;
    match sync::cancel(bridge, source)? {
        Some(state) => Ok(json_response(
            200,
            &sync::view(&state, bridge.clock.now().unix_timestamp()),
        )),
        None => Err(ApiError::NotFoundResource(format!(
            "no sync of {source} is running"
        ))),
    }
}
