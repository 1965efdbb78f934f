//! `POST /flush`, `GET /failures`, `POST /failures/retry`, `DELETE /failures/{type}/{id}`.

use serde::Deserialize;
use serde_json::json;

use crate::app::{json_body, query_flag, query_pairs};
use crate::bridge::Bridge;
use crate::gong::models::{ObjectType, UPLOAD_OBJECT_TYPES};
use crate::ports::{Request, Response};
use crate::problem::{json_response, ApiError};
use crate::outbox;

fn object_type_param(raw: &str) -> Result<ObjectType, ApiError> {
    ObjectType::parse_upload(raw).ok_or_else(|| {
        ApiError::unprocessable(
            "Invalid object type",
            format!("objectType {raw:?} is not one of {}", UPLOAD_OBJECT_TYPES.join(", ")),
            vec![json!({"field": "objectType", "rule": "objectType.enum", "allowed": UPLOAD_OBJECT_TYPES})],
        )
    })
}

/// `POST /flush[?force=true]`: for a Spin cron trigger or any external scheduler. Also sweeps
/// expired idempotency keys, so one scheduled call does all the housekeeping.
pub fn flush_now(bridge: &Bridge, request: &Request) -> Result<Response, ApiError> {
    let report = outbox::run(bridge, query_flag(request, "force")?)?;
    let mut body = serde_json::to_value(&report).unwrap_or_default();
    let idem = bridge.idempotency();
    match idem.sweep() {
        Ok(removed) => body["expiredKeysRemoved"] = json!(removed),
        Err(e) => body["sweepError"] = json!(e.to_string()),
    }
    if let Some(detail) = report.failed.clone() {
        // A scheduler needs a failure to be a failure: 502, with the report of what was done.
        return Err(ApiError::FlushFailed { detail, report: body });
    }
    let mut response = json_response(200, &body);
    if let Some(until) = report.throttled_until {
        let wait = (until - bridge.clock.now().unix_timestamp()).max(1);
        if let Ok(v) = http::HeaderValue::from_str(&wait.to_string()) {
            response.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
    }
    Ok(response)
}

pub fn list(bridge: &Bridge, request: &Request) -> Result<Response, ApiError> {
    let query = query_pairs(request);
    let object_type = match query.iter().find(|(k, _)| k == "objectType") {
        Some((_, v)) => Some(object_type_param(v)?),
        None => None,
    };
    let limit = match query.iter().find(|(k, _)| k == "limit") {
        Some((_, v)) => v.parse::<usize>().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| ApiError::bad_request("limit must be 1 to 1000"))?,
        None => 100,
    };
    let (failures, total) = outbox::list_failures(bridge, object_type, limit)?;
    Ok(json_response(200, &json!({"failures": failures, "total": total})))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RetryBody {
    object_type: Option<String>,
    ids: Option<Vec<String>>,
}

pub fn retry(bridge: &Bridge, request: &Request) -> Result<Response, ApiError> {
    let body: RetryBody = if request.body().iter().all(u8::is_ascii_whitespace) { RetryBody::default() } else { json_body(request)? };
    let object_type = body.object_type.as_deref().map(object_type_param).transpose()?;
    if body.ids.is_some() && object_type.is_none() {
        return Err(ApiError::bad_request("ids need an objectType: {\"objectType\": \"ACCOUNT\", \"ids\": [...]}"));
    }
    let requeued = outbox::retry_failures(bridge, object_type, body.ids.as_deref())?;
    Ok(json_response(200, &json!({"requeued": requeued})))
}

pub fn discard(bridge: &Bridge, object_type_raw: &str, object_id: &str) -> Result<Response, ApiError> {
    let object_type = object_type_param(object_type_raw)?;
    if !outbox::discard_failure(bridge, object_type, object_id)? {
        return Err(ApiError::NotFoundResource(format!("no failure stored for {object_type} {object_id}")));
    }
    Ok(json_response(200, &json!({"discarded": {"objectType": object_type, "objectId": object_id}})))
}
