//! `GET /requests`, `GET /requests/{id}`, `POST /requests/{id}/retry` and
//! `GET /records/{type}/{id}/status`: parse, ask the outbox, render.

use serde_json::{json, Map, Value};

use crate::app::query_pairs;
use crate::bridge::Bridge;
use crate::gong::models::ObjectType;
use crate::outbox::{self, requests};
use crate::ports::{Request, Response};
use crate::problem::{json_response, ApiError};
use crate::tracking::{RequestRecord, TrackedStatus};

/// A request record as the API shows it (without its internal chunk counts).
fn record_body(record: &RequestRecord) -> Map<String, Value> {
    let mut body = match serde_json::to_value(record) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    body.remove("payloadChunks");
    body.remove("lineMapChunks");
    body
}

/// 202 Accepted with `Location: /requests/{id}` and the record.
pub fn accepted_response(
    record: &RequestRecord,
    replayed: bool,
    extra: Map<String, Value>,
) -> Response {
    let mut body = record_body(record);
    body.insert(
        "location".into(),
        json!(format!("/requests/{}", record.client_request_id)),
    );
    body.insert("replayed".into(), json!(replayed));
    body.extend(extra);
    let mut response = json_response(202, &Value::Object(body));
    if let Ok(v) = http::HeaderValue::from_str(&format!("/requests/{}", record.client_request_id)) {
        response.headers_mut().insert(http::header::LOCATION, v);
    }
    if replayed {
        response.headers_mut().insert(
            "idempotency-replayed",
            http::HeaderValue::from_static("true"),
        );
    }
    response
}

/// `GET /requests/{id}`: the stored record, polled first when its next poll is due; if Gong
/// cannot be asked, the stored state with `pollError`.
pub fn get(bridge: &Bridge, id: &str) -> Result<Response, ApiError> {
    let (record, poll_error) = requests::refresh(bridge, requests::load(bridge, id)?);
    let mut body = record_body(&record);
    if let Some(error) = poll_error {
        body.insert("pollError".into(), json!(error));
    }
    Ok(json_response(200, &Value::Object(body)))
}

/// `POST /requests/{id}/retry`: resend a request Gong did not accept.
pub fn retry(bridge: &Bridge, id: &str) -> Result<Response, ApiError> {
    let record = requests::retry(bridge, id)?;
    Ok(accepted_response(&record, false, Map::new()))
}

/// `GET /requests?status=&limit=&after=`: newest first.
pub fn list(bridge: &Bridge, request: &Request) -> Result<Response, ApiError> {
    let query = query_pairs(request);
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let limit = match param("limit") {
        None => 50,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::bad_request("limit must be 1 to 500"))?,
    };
    let status = match param("status") {
        None => None,
        Some(v) => Some(
            serde_json::from_value::<TrackedStatus>(json!(v))
                .map_err(|_| ApiError::bad_request("status must be one of SUBMITTING, NOT_SENT, PENDING, IN_PROGRESS, DONE, FAILED"))?,
        ),
    };
    let (records, next) = requests::page(bridge, status, limit, param("after").as_deref())?;
    Ok(json_response(
        200,
        &json!({
            "requests": records.iter().map(|r| Value::Object(record_body(r))).collect::<Vec<_>>(),
            "next": next.map(|cursor| format!("/requests?limit={limit}&after={cursor}")),
        }),
    ))
}

/// `GET /records/{objectType}/{objectId}/status`: where the newest version of one record is.
pub fn record_status(
    bridge: &Bridge,
    object_type_raw: &str,
    object_id: &str,
) -> Result<Response, ApiError> {
    let object_type = ObjectType::parse_upload(object_type_raw).ok_or_else(|| {
        ApiError::NotFoundResource(format!(
            "objectType {object_type_raw:?} is not a Gong upload type"
        ))
    })?;
    let location = outbox::locate(bridge, object_type, object_id)?.ok_or_else(|| {
        ApiError::NotFoundResource(format!(
            "the bridge has no webhook delivery of {object_type} {object_id} on record (files of POST /records are tracked per request: see GET /requests)"
        ))
    })?;
    Ok(json_response(
        200,
        &serde_json::to_value(&location).unwrap_or_default(),
    ))
}
