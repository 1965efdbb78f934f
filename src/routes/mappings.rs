//! `GET /mappings`, `GET /mappings/{source}` (the mapping in effect, with an ETag),
//! `PUT /mappings/{source}` (an override, checked: 422 naming each wrong entry) and
//! `POST /mappings/{source}/preview` (a delivery as the CRM sends it → the Gong records and every
//! problem; nothing stored or sent).

use serde_json::{json, Value};
use sha2::Digest;

use crate::bridge::Bridge;
use crate::crm::{self, overrides, Change, Receiver};
use crate::mapping::{Input, MappingProblem};
use crate::ports::{Request, Response};
use crate::problem::{json_response, ApiError};
use crate::validation::{self, RecordOptions};

fn receiver(source: &str) -> Result<&'static dyn Receiver, ApiError> {
    crm::receiver(source).ok_or_else(|| {
        let known: Vec<&str> = crm::RECEIVERS.iter().map(|r| r.name()).collect();
        ApiError::NotFoundResource(format!(
            "no CRM receiver named {source:?} (known: {})",
            known.join(", ")
        ))
    })
}

/// The mapping in effect as JSON, answered with its ETag.
fn with_etag(status: u16, body: &Value) -> Response {
    let text = serde_json::to_vec(body).unwrap_or_default();
    let etag = format!("\"{}\"", hex::encode(&sha2::Sha256::digest(&text)[..12]));
    let mut response = json_response(status, body);
    if let Ok(v) = http::HeaderValue::from_str(&etag) {
        response.headers_mut().insert(http::header::ETAG, v);
    }
    response
}

pub fn list(bridge: &Bridge) -> Result<Response, ApiError> {
    let mut out = Vec::new();
    for r in crm::RECEIVERS {
        out.push(json!({"source": r.name(), "route": format!("/webhooks/{}", r.name()), "overridden": overrides::stored(bridge, r.name())?.is_some()}));
    }
    Ok(json_response(200, &json!({"mappings": out})))
}

pub fn get(bridge: &Bridge, source: &str) -> Result<Response, ApiError> {
    let mapping = overrides::effective(bridge, receiver(source)?)?;
    Ok(with_etag(
        200,
        &serde_json::to_value(&mapping).unwrap_or_default(),
    ))
}

fn problems(detail: String, problems: Vec<MappingProblem>) -> ApiError {
    let errors = problems
        .into_iter()
        .map(|p| json!({"field": p.field, "rule": p.rule, "message": p.message}))
        .collect();
    ApiError::unprocessable("Invalid mapping", detail, errors)
}

pub fn put(bridge: &Bridge, request: &Request, source: &str) -> Result<Response, ApiError> {
    let receiver = receiver(source)?;
    let over: Value = serde_json::from_slice(request.body())
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    match overrides::put(bridge, receiver, over)? {
        Ok(mapping) => Ok(with_etag(
            200,
            &serde_json::to_value(&mapping).unwrap_or_default(),
        )),
        Err(found) => Err(problems(
            format!(
                "the {source} mapping was not changed: {} problem(s)",
                found.len()
            ),
            found,
        )),
    }
}

/// Maps a delivery as the CRM would send it, with the mapping in effect, and validates the
/// result as the bridge would: nothing is stored, fetched or sent.
pub fn preview(bridge: &Bridge, request: &Request, source: &str) -> Result<Response, ApiError> {
    let receiver = receiver(source)?;
    let mapping = overrides::effective(bridge, receiver)?;
    let delivery = receiver
        .parse(request.body())
        .map_err(|why| ApiError::bad_request(format!("not a {source} delivery: {why}")))?;
    let options = RecordOptions {
        normalize: true,
        ..RecordOptions::default()
    };
    let mut records = Vec::new();
    let mut rejected = Vec::new();
    let mut thin = Vec::new();
    let mut ignored = Vec::new();
    for change in delivery.changes {
        let (object_name, mapped) = match &change {
            Change::Upsert {
                object,
                record,
                event,
            } => (
                object.clone(),
                mapping
                    .object(object)
                    .map(|o| (o, mapping.apply(o, &Input { record, event }))),
            ),
            Change::Delete { object, id, at } => (
                object.clone(),
                mapping
                    .object(object)
                    .map(|o| (o, mapping.deleted(o, id, at))),
            ),
            Change::Fetch {
                object_id,
                record_id,
            }
            | Change::Gone {
                object_id,
                record_id,
            } => {
                thin.push(json!({"objectId": object_id, "recordId": record_id, "gone": matches!(change, Change::Gone { .. })}));
                continue;
            }
        };
        let Some((object, mapped)) = mapped else {
            ignored.push(object_name);
            continue;
        };
        let problems = match mapped {
            Ok(record) => {
                let schema = if object.to.has_schema() {
                    bridge.store().schema(object.to)?
                } else {
                    None
                };
                match validation::validate_record(
                    object.to,
                    record.clone(),
                    0,
                    None,
                    schema.as_deref(),
                    options,
                    &mut Vec::new(),
                ) {
                    Ok(_) => {
                        records.push(
                            json!({"from": object_name, "objectType": object.to, "record": record}),
                        );
                        continue;
                    }
                    Err(violations) => violations
                        .into_iter()
                        .map(|v| json!({"field": v.field, "rule": v.rule, "message": v.message}))
                        .collect::<Vec<_>>(),
                }
            }
            Err(found) => found
                .into_iter()
                .map(|p| json!({"field": p.field, "rule": p.rule, "message": p.message}))
                .collect(),
        };
        rejected.push(json!({"from": object_name, "objectType": object.to, "problems": problems}));
    }
    Ok(json_response(
        200,
        &json!({"source": source, "delivery": delivery.id, "records": records, "rejected": rejected, "toFetch": thin, "ignored": ignored, "note": delivery.ignored}),
    ))
}
