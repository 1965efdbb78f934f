//! `POST /flush`, `POST /sweep`, `GET /failures`, `POST /failures/retry`, `DELETE /failures/{type}/{id}` (the
//! last two record operator commands that the engine applies: `outbox::commands`).

use serde::Deserialize;
use serde_json::json;

use crate::app::{json_body, query_flag, query_pairs};
use crate::bridge::Bridge;
use crate::gong::models::{ObjectType, UPLOAD_OBJECT_TYPES};
use crate::outbox;
use crate::outbox::commands::{self, Action};
use crate::ports::{Request, Response};
use crate::problem::{json_response, ApiError};

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
    let force = query_flag(request, "force")?;
    // Thin notifications first (their records join this flush), within the same budget.
    let fetched = crate::crm::fetch::drain(bridge, force)?;
    // Then sync pages, which join this flush too.
    let synced = crate::crm::sync::advance_running(bridge, force)?;
    let report = outbox::run(bridge, force)?;
    let mut body = serde_json::to_value(&report).unwrap_or_default();
    if fetched != crate::crm::fetch::Drained::default() {
        body["fetched"] = serde_json::to_value(&fetched).unwrap_or_default();
    }
    if synced != crate::crm::sync::Advanced::default() {
        body["synced"] = serde_json::to_value(&synced).unwrap_or_default();
    }
    let idem = bridge.idempotency();
    match idem.sweep() {
        Ok(removed) => body["expiredKeysRemoved"] = json!(removed),
        Err(e) => body["sweepError"] = json!(e.to_string()),
    }
    if let Some(detail) = report.failed.clone() {
        // A scheduler needs a failure to be a failure: 502, with the report of what was done.
        return Err(ApiError::FlushFailed {
            detail,
            report: body,
        });
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
        Some((_, v)) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::bad_request("limit must be 1 to 1000"))?,
        None => 100,
    };
    let (failures, total) = outbox::list_failures(bridge, object_type, limit)?;
    // A failure an operator command waits for says which, until the engine applies it.
    let waiting = commands::waiting(bridge)?;
    let listed: Vec<serde_json::Value> = failures
        .iter()
        .map(|f| {
            let mut value = serde_json::to_value(f).unwrap_or_default();
            if let Some(command) = commands::requested_for(&waiting, f) {
                value["requested"] = json!(command.action.requested());
            }
            value
        })
        .collect();
    Ok(json_response(
        200,
        &json!({"failures": listed, "total": total}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RetryBody {
    object_type: Option<String>,
    ids: Option<Vec<String>>,
}

/// `POST /failures/retry`: recorded for the engine and answered 202, whatever it is doing.
pub fn retry(bridge: &Bridge, request: &Request) -> Result<Response, ApiError> {
    let body: RetryBody = if request.body().iter().all(u8::is_ascii_whitespace) {
        RetryBody::default()
    } else {
        json_body(request)?
    };
    let object_type = body
        .object_type
        .as_deref()
        .map(object_type_param)
        .transpose()?;
    if body.ids.is_some() && object_type.is_none() {
        return Err(ApiError::bad_request(
            "ids need an objectType: {\"objectType\": \"ACCOUNT\", \"ids\": [...]}",
        ));
    }
    // What it covers now; the engine looks again when it applies it.
    let (open, _) = outbox::list_failures(bridge, object_type, usize::MAX)?;
    let covered = open
        .iter()
        .filter(|f| {
            body.ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&f.object_id))
        })
        .count();
    if covered == 0 {
        return Ok(json_response(
            200,
            &json!({"status": "nothing to retry", "failures": 0}),
        ));
    }
    let command = commands::record(bridge, Action::Retry, object_type, body.ids)?;
    Ok(requested(command, covered))
}

/// `DELETE /failures/{type}/{id}`: recorded for the engine and answered 202.
pub fn discard(
    bridge: &Bridge,
    object_type_raw: &str,
    object_id: &str,
) -> Result<Response, ApiError> {
    let object_type = object_type_param(object_type_raw)?;
    match commands::failure_of(bridge, object_type, object_id)? {
        Some(f) if f.is_open() => {
            let command = commands::record(bridge, Action::Discard, Some(object_type), Some(vec![object_id.to_owned()]))?;
            Ok(requested(command, 1))
        }
        Some(f) if f.discarded_at.is_some() => Ok(json_response(200, &json!({"status": "discarded", "objectType": object_type, "objectId": object_id}))),
        Some(_) => Err(ApiError::Conflict(format!(
            "{object_type} {object_id} was re-queued by a retry and waits to go to Gong; it is no longer in the failure store (GET /records/{object_type}/{object_id}/status)"
        ))),
        None => Err(ApiError::NotFoundResource(format!("no failure stored for {object_type} {object_id}"))),
    }
}

/// 202: what the command will do, applied right after this answer (or by the lease holder's
/// next run); until then the records' status says so.
fn requested(command: commands::Command, failures: usize) -> Response {
    let status = command.action.requested();
    let mut response = json_response(
        202,
        &json!({
            "status": status,
            "failures": failures,
            "command": command,
            "detail": format!("the engine applies it right after this answer, or in its next run if a flush holds its lease; until then each record's status says \"{status}\""),
        }),
    );
    response
        .extensions_mut()
        .insert(crate::app::FollowUp::ApplyCommands);
    response
}

/// `POST /sweep`: removes expired idempotency keys (for a Spin cron trigger or any scheduler).
pub fn sweep(bridge: &Bridge) -> Result<Response, ApiError> {
    let removed = bridge.idempotency().sweep()?;
    Ok(json_response(
        200,
        &json!({ "expiredKeysRemoved": removed }),
    ))
}
