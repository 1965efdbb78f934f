//! `POST /webhooks`: the one URL a CRM is given. Authenticated (Standard Webhooks signature,
//! or a static bearer token for CRMs that cannot sign), acted on exactly once per
//! `webhook-id`, then dispatched to the same code as the management API.

use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::bridge::Bridge;
use crate::gong::models::{ObjectType, UPLOAD_OBJECT_TYPES};
use crate::idempotency::{self, Begin};
use crate::intake;
use crate::ports::{Request, Response};
use crate::problem::ApiError;
use crate::routes::{integration, schema, violations_to_problem};
use crate::settings;
use crate::validation::RecordOptions;
use crate::webhooks::signature::WebhookSecret;
use crate::webhooks::{parse_event, Event};

fn header<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Checks the delivery's authentication against the raw body; returns the delivery id.
fn authenticate(bridge: &Bridge, request: &Request) -> Result<String, ApiError> {
    let secret = bridge.config.get(settings::WEBHOOK_SECRET);
    let bearer = bridge.config.get(settings::WEBHOOK_BEARER_TOKEN);
    if secret.is_none() && bearer.is_none() {
        return Err(ApiError::NotConfigured(vec![format!(
            "{} (or {})",
            settings::WEBHOOK_SECRET,
            settings::WEBHOOK_BEARER_TOKEN
        )]));
    }
    let signed = header(request, "webhook-signature").is_some();
    if let (Some(token), false) = (&bearer, signed) {
        let given = header(request, "authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        let a = sha2::Sha256::digest(given.as_bytes());
        let b = sha2::Sha256::digest(token.as_bytes());
        if !bool::from(a.as_slice().ct_eq(b.as_slice())) {
            return Err(ApiError::Unauthorized(
                "webhook: missing or wrong bearer token".into(),
            ));
        }
        // Unsigned deliveries are keyed by webhook-id or Idempotency-Key, else by the body.
        let id = header(request, "webhook-id").or_else(|| header(request, "idempotency-key"));
        return Ok(match id {
            Some(id) if !id.trim().is_empty() => id.trim().to_owned(),
            _ => format!("body-{}", idempotency::fingerprint(request.body())),
        });
    }
    let Some(secret) = secret else {
        return Err(ApiError::Unauthorized(
            "webhook: signed deliveries are not configured (no webhook_secret)".into(),
        ));
    };
    let now = bridge.clock.now().unix_timestamp();
    WebhookSecret::parse(&secret)
        .verify(
            header(request, "webhook-id"),
            header(request, "webhook-timestamp"),
            header(request, "webhook-signature"),
            request.body(),
            now,
        )
        .map_err(|e| ApiError::Unauthorized(format!("webhook signature check failed: {e}")))?;
    Ok(header(request, "webhook-id").unwrap_or_default().to_owned())
}

pub fn receive(bridge: &Bridge, request: &Request) -> Result<Response, ApiError> {
    let delivery = authenticate(bridge, request)?;
    let event = parse_event(request.body()).map_err(|v| {
        violations_to_problem("Invalid webhook", "the webhook payload is invalid", v, None)
    })?;
    if matches!(event, Event::Records { .. }) {
        // A record delivery gets no idempotency key of its own (two keys for a week per webhook
        // would make the store grow without bound). A re-delivery is harmless without one: the
        // same record version merges as a duplicate, or is kept out if it was already sent.
        return act(bridge, event, String::new(), delivery);
    }
    let idem = bridge.idempotency();
    let claim = match idem.begin_checked(
        "webhooks",
        &delivery,
        &idempotency::fingerprint(request.body()),
    )? {
        Begin::Replay(response) => return Ok(response),
        Begin::Proceed(claim) => claim,
    };
    let client_request_id = claim.client_request_id("wh-");
    let response =
        act(bridge, event, client_request_id, delivery).unwrap_or_else(ApiError::into_response);
    if let Err(e) = idem.complete(claim, &response) {
        // The work is done; only its replay record is missing, and a re-delivery maps to the
        // same clientRequestId, which Gong (409) and the request record both recognise.
        crate::log::warn(format!(
            "could not store the webhook's idempotency record: {e}"
        ))
        .emit();
    }
    Ok(response)
}

fn act(
    bridge: &Bridge,
    event: Event,
    client_request_id: String,
    delivery: String,
) -> Result<Response, ApiError> {
    match event {
        Event::Records {
            object_type,
            records,
        } => buffer(bridge, &object_type, records, &delivery),
        Event::Schema {
            object_type,
            fields_json,
        } => schema::upload_schema(bridge, &object_type, &fields_json, false),
        Event::IntegrationRegistered { name, owner_email } => {
            integration::register_integration(bridge, name, owner_email)
        }
        Event::IntegrationDeleted => {
            integration::delete_integration(bridge, client_request_id, Some(delivery))
        }
    }
}

/// Validates a delivery's records and writes them to the pending buffer (`intake`): 202 once
/// they are stored; from then on delivering them to Gong is the bridge's job (see `outbox`).
fn buffer(
    bridge: &Bridge,
    object_type_raw: &str,
    records: Vec<serde_json::Value>,
    delivery: &str,
) -> Result<Response, ApiError> {
    let object_type = ObjectType::parse_upload(object_type_raw).ok_or_else(|| {
        ApiError::unprocessable(
            "Invalid object type",
            format!("objectType {object_type_raw:?} is not one of {} (case-sensitive)", UPLOAD_OBJECT_TYPES.join(", ")),
            vec![serde_json::json!({"field": "data.objectType", "rule": "objectType.enum", "allowed": UPLOAD_OBJECT_TYPES})],
        )
    })?;
    let accepted = match intake::accept_records(
        bridge,
        object_type,
        records,
        delivery,
        RecordOptions::default(),
    ) {
        Ok(accepted) => accepted,
        Err(intake::Refused::Invalid(violations)) => {
            return Err(violations_to_problem(
                "Invalid records",
                "the delivery's records are invalid; nothing was accepted",
                violations,
                None,
            ))
        }
        Err(intake::Refused::Fault(fault)) => return Err(fault.into()),
    };
    let status_urls: Vec<String> = accepted
        .object_ids
        .iter()
        .take(100)
        .map(|id| format!("/records/{}/{id}/status", object_type.as_str()))
        .collect();
    let mut response = crate::problem::json_response(
        202,
        &serde_json::json!({
            "status": "BUFFERED",
            "objectType": object_type,
            "delivery": delivery,
            "accepted": accepted.accepted,
            "superseded": accepted.superseded,
            "warnings": accepted.warnings,
            "statusUrls": status_urls,
        }),
    );
    if let Some(first) = status_urls
        .first()
        .and_then(|u| http::HeaderValue::from_str(u).ok())
    {
        response.headers_mut().insert(http::header::LOCATION, first);
    }
    if accepted.compact_inbox {
        response
            .extensions_mut()
            .insert(crate::app::FollowUp::CompactInbox);
    }
    Ok(response)
}
