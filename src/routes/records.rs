//! `POST /records/{objectType}` (validate, build one LDJSON file, upload, track) and
//! `GET /records/{objectType}?ids=` (Gong's get-entities, for checking what Gong holds).

use serde_json::{json, Map};

use crate::app::{client_request_id, query_flag, query_pairs};
use crate::bridge::Bridge;
use crate::gong::client::{Operation, MAX_GET_IDS};
use crate::gong::models::{
    GetObjectsResponse, ObjectType, SCHEMA_OBJECT_TYPES, UPLOAD_OBJECT_TYPES,
};
use crate::outbox::requests::{submit_tracked, Submission};
use crate::ports::{Request, Response};
use crate::problem::{json_response, ApiError};
use crate::routes::requests::accepted_response;
use crate::routes::violations_to_problem;
use crate::tracking::RequestOperation;
use crate::validation::{self, BodyFormat, RecordOptions, MAX_BODY_BYTES};

fn invalid_object_type(raw: &str, allowed: &[&str]) -> ApiError {
    ApiError::unprocessable(
        "Invalid object type",
        format!(
            "objectType {raw:?} is not one of {} (case-sensitive)",
            allowed.join(", ")
        ),
        vec![json!({"field": "objectType", "rule": "objectType.enum", "allowed": allowed})],
    )
}

fn body_format(request: &Request) -> Result<BodyFormat, ApiError> {
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "" | "application/json" => Ok(BodyFormat::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/x-ldjson" | "application/ldjson" => {
            Ok(BodyFormat::Ldjson)
        }
        other => Err(ApiError::UnsupportedMediaType(format!(
            "content-type {other:?} is not accepted; send application/json (an array or one record) or application/x-ndjson (one record per line)"
        ))),
    }
}

pub fn upload(
    bridge: &Bridge,
    request: &mut Request,
    object_type_raw: &str,
) -> Result<Response, ApiError> {
    let format = body_format(request)?;
    let options = RecordOptions {
        normalize: query_flag(request, "normalize")?,
        strict: query_flag(request, "strict")?,
        partial: query_flag(request, "partial")?,
    };
    let client_request_id = client_request_id(request)?;
    // The body is taken, so validation can free it before it builds the file.
    let body = std::mem::take(request.body_mut());
    upload_records(
        bridge,
        UploadInput {
            object_type_raw,
            body,
            format,
            options,
            client_request_id,
            delivery: None,
        },
    )
}

pub struct UploadInput<'b> {
    pub object_type_raw: &'b str,
    /// Owned: validation drops it as soon as every record is read.
    pub body: Vec<u8>,
    pub format: BodyFormat,
    pub options: RecordOptions,
    pub client_request_id: String,
    pub delivery: Option<String>,
}

/// Validates records, builds one sorted, de-duplicated LDJSON file and submits it as one
/// tracked upload (202 + Location). Shared by `POST /records` and record webhooks.
pub fn upload_records(bridge: &Bridge, input: UploadInput) -> Result<Response, ApiError> {
    let object_type = ObjectType::parse_upload(input.object_type_raw)
        .ok_or_else(|| invalid_object_type(input.object_type_raw, &UPLOAD_OBJECT_TYPES))?;
    if input.body.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge {
            size: input.body.len(),
            limit: MAX_BODY_BYTES,
            variable: None,
        });
    }
    let integration_id = bridge.integration_id()?;
    let schema = if object_type.has_schema() {
        bridge.store().schema(object_type)?
    } else {
        None
    };
    let options = input.options;
    let batch = validation::validate_records_owned(
        object_type,
        input.body,
        input.format,
        schema.as_deref(),
        options,
    )
    .map_err(|rejection| {
        let detail = if rejection.received == 0 {
            "the body was refused before any record could be read; nothing was sent to Gong"
                .to_owned()
        } else {
            format!(
                "{} of {} record(s) failed validation; nothing was sent to Gong",
                rejection.rejected_records, rejection.received
            )
        };
        violations_to_problem(
            "Invalid records",
            &detail,
            rejection.violations,
            Some(rejection.total_violations),
        )
    })?;
    let gong = bridge.gong()?;
    let line_count = batch.line_object_ids.len();
    let sent_lines = crate::outbox::sent::lines_of(&batch.ldjson);
    let tracked = submit_tracked(
        bridge,
        &gong,
        Submission {
            client_request_id: input.client_request_id,
            operation: RequestOperation::UploadEntities,
            object_type: Some(object_type),
            integration_id,
            record_count: Some(line_count),
            ldjson: Some(batch.ldjson),
            line_object_ids: Some(batch.line_object_ids),
            delivery: input.delivery,
            from_buffer: false,
        },
    )?;
    let mut extra = Map::new();
    let index = !tracked.replayed && tracked.record.gong_request_id.is_some();
    if index {
        // Where each record went, for "where is my record" (one blob per file).
        if let Err(e) = crate::outbox::sent::record_bulk(
            bridge,
            &tracked.record.client_request_id,
            object_type,
            &sent_lines,
        ) {
            crate::log::warn(format!(
                "the records of {} cannot be looked up one by one: {e}",
                tracked.record.client_request_id
            ))
            .emit();
        }
    }
    if !tracked.replayed {
        extra.insert("received".into(), json!(batch.received));
        extra.insert("mergedDuplicates".into(), json!(batch.merged_duplicates));
        extra.insert("warnings".into(), json!(batch.warnings));
        if options.partial {
            extra.insert("rejectedRecords".into(), json!(batch.rejected_records));
            extra.insert("rejected".into(), json!(batch.rejected));
        }
    }
    let mut response = accepted_response(&tracked.record, tracked.replayed, extra);
    if index {
        response
            .extensions_mut()
            .insert(crate::app::FollowUp::IndexBulk);
    }
    Ok(response)
}

pub fn get(
    bridge: &Bridge,
    request: &Request,
    object_type_raw: &str,
) -> Result<Response, ApiError> {
    let object_type = ObjectType::parse_schema(object_type_raw)
        .ok_or_else(|| invalid_object_type(object_type_raw, &SCHEMA_OBJECT_TYPES))?;
    let ids: Vec<String> = query_pairs(request)
        .into_iter()
        .filter(|(k, _)| k == "ids")
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    if ids.is_empty() {
        return Err(ApiError::bad_request(
            "give the objectIds to look up: ?ids=a,b,c",
        ));
    }
    // Dropping empty ones silently would let a malformed list pass (and past the bound below).
    if let Some(position) = ids.iter().position(String::is_empty) {
        return Err(ApiError::bad_request(format!(
            "ids has an empty objectId at position {} (ids=a,b,c, none empty)",
            position + 1
        )));
    }
    if ids.len() > MAX_GET_IDS {
        return Err(ApiError::bad_request(format!(
            "{} ids given; Gong returns at most {MAX_GET_IDS} per call (and silently drops the rest), so ask in several calls",
            ids.len()
        )));
    }
    let integration_id = bridge.integration_id()?;
    let gong = bridge.gong()?;
    let req = gong
        .get_entities(integration_id, object_type, &ids)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let found: GetObjectsResponse = bridge.call(Operation::GetEntities, req, &[200])?;
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !matches!(found.crm_objects_map.get(*id), Some(Some(_))))
        .collect();
    Ok(json_response(
        200,
        &json!({
            "objectType": object_type,
            "objects": found.crm_objects_map,
            "notInGong": missing,
            "gongRequestId": found.request_id,
        }),
    ))
}
