//! `GET /mappings`, `GET /mappings/{source}` (the mapping in effect, with an ETag),
//! `PUT /mappings/{source}` (an override, checked: 422 naming each wrong entry) and
//! `POST /mappings/{source}/preview` (a delivery as the CRM sends it → the Gong records and every
//! problem; nothing stored or sent).

use serde_json::{json, Value};
use sha2::Digest;

use crate::bridge::Bridge;
use crate::crm::custom::{self, Custom};
use crate::crm::{self, overrides, Change, Receiver, Source};
use crate::mapping::{Input, MappingProblem};
use crate::ports::{Request, Response};
use crate::problem::{json_response, ApiError};
use crate::validation::{self, RecordOptions};

#[path = "mapping_schemas.rs"]
mod schemas;

fn receiver(bridge: &Bridge, source: &str) -> Result<Source, ApiError> {
    crm::source(bridge, source)?.ok_or_else(|| {
        let known: Vec<&str> = crm::RECEIVERS.iter().map(|r| r.name()).collect();
        ApiError::NotFoundResource(format!(
            "no source named {source:?} (built in: {}; a custom source exists once PUT /mappings/{source} stores its mapping)",
            known.join(", ")
        ))
    })
}

/// The sources with a stored custom mapping.
fn custom_sources(bridge: &Bridge) -> Result<Vec<String>, ApiError> {
    let keys = bridge.kv.keys().map_err(crate::fault::Fault::from)?;
    let mut names: Vec<String> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(crate::keys::MAPPING_PREFIX))
        .filter(|name| custom::valid_name(name).is_ok())
        .map(str::to_owned)
        .collect();
    names.sort();
    Ok(names)
}

/// The mapping in effect as JSON, answered with its ETag (of the mapping alone), plus `extra`.
fn with_etag(
    status: u16,
    mapping: &crate::mapping::Mapping,
    extra: Option<(&str, Value)>,
) -> Response {
    let mut body = serde_json::to_value(mapping).unwrap_or_default();
    let text = serde_json::to_vec(&body).unwrap_or_default();
    let etag = format!("\"{}\"", hex::encode(&sha2::Sha256::digest(&text)[..12]));
    if let (Some((name, value)), Some(object)) = (extra, body.as_object_mut()) {
        object.insert(name.to_owned(), value);
    }
    let mut response = json_response(status, &body);
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
    for name in custom_sources(bridge)? {
        out.push(
            json!({"source": name, "route": format!("/webhooks/custom/{name}"), "custom": true}),
        );
    }
    Ok(json_response(200, &json!({"mappings": out})))
}

pub fn get(bridge: &Bridge, source: &str) -> Result<Response, ApiError> {
    let mapping = overrides::effective(bridge, &*receiver(bridge, source)?)?;
    Ok(with_etag(200, &mapping, None))
}

fn problems(detail: String, problems: Vec<MappingProblem>) -> ApiError {
    let errors = problems
        .into_iter()
        .map(|p| json!({"field": p.field, "rule": p.rule, "message": p.message}))
        .collect();
    ApiError::unprocessable("Invalid mapping", detail, errors)
}

pub fn put(bridge: &Bridge, request: &Request, source: &str) -> Result<Response, ApiError> {
    // A name no built-in receiver has starts a custom source (its mapping is the whole document).
    let receiver = match crm::receiver(source) {
        Some(builtin) => Source::Builtin(builtin),
        None => {
            custom::valid_name(source).map_err(ApiError::bad_request)?;
            Source::Custom(Box::new(Custom::new(source, None, 0)))
        }
    };
    let over: Value = serde_json::from_slice(request.body())
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let mapping = overrides::check(&*receiver, &over).map_err(|found| {
        problems(
            format!(
                "the {source} mapping was not changed: {} problem(s)",
                found.len()
            ),
            found,
        )
    })?;
    let before = match overrides::stored(bridge, source)? {
        Some(_) => overrides::effective(bridge, &*receiver).ok(),
        None => crm::mapping(&*receiver)
            .ok()
            .filter(|_| crm::receiver(source).is_some()),
    };
    let uploads = schemas::upload_declared(bridge, request, before.as_ref(), &mapping)?;
    overrides::store(bridge, &*receiver, &over)?;
    Ok(with_etag(
        200,
        &mapping,
        Some(("schemaUploads", Value::Array(uploads))),
    ))
}

fn query_object(request: &Request) -> Option<String> {
    crate::app::query_pairs(request)
        .into_iter()
        .find(|(k, _)| k == "object")
        .map(|(_, v)| v)
}

/// Maps a delivery as the CRM would send it, with the mapping in effect, and validates the
/// result as the bridge would: nothing is stored, fetched or sent.
pub fn preview(bridge: &Bridge, request: &Request, source: &str) -> Result<Response, ApiError> {
    let receiver = receiver(bridge, source)?;
    let mapping = overrides::effective(bridge, &*receiver)?;
    let delivery = match &receiver {
        Source::Builtin(_) => receiver.parse(request.body()),
        Source::Custom(_) => Custom::new(
            source,
            Some(mapping.clone()),
            bridge.clock.now().unix_timestamp(),
        )
        .with_request(query_object(request), None)
        .parse(request.body()),
    };
    let delivery =
        delivery.map_err(|why| ApiError::bad_request(format!("not a {source} delivery: {why}")))?;
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
