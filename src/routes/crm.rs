//! `POST /webhooks/{crm}`: a CRM's own webhook (`crm::Receiver`). Verified on the raw body (401
//! when not authentic); then answered 2xx whatever its content: records that cannot be mapped or
//! break Gong's rules go to the failure store, unreadable or unmapped deliveries are ignored
//! (said in the answer and the log), and only the store can refuse (503, the CRM re-delivers).
//! `POST /webhooks/custom/{source}` is the same, read by the source's stored mapping.

use serde_json::json;

use crate::bridge::Bridge;
use crate::crm::custom::{self, Custom};
use crate::crm::{self, overrides, Receiver, VerifyError};
use crate::ports::{Request, Response};
use crate::problem::{json_response, ApiError};

pub fn receive(
    bridge: &Bridge,
    request: &Request,
    receiver: &dyn Receiver,
) -> Result<Response, ApiError> {
    let now = bridge.clock.now().unix_timestamp();
    receiver
        .verify(bridge.config, request.headers(), request.body(), now)
        .map_err(|e| refusal(bridge, receiver, e))?;
    accept_verified(bridge, request, receiver)
}

/// A custom source's delivery: verified before anything says whether the source exists, then
/// read by its mapping (404 until one is stored: a 2xx would promise records nobody can map).
pub fn receive_custom(
    bridge: &Bridge,
    request: &Request,
    source: &str,
) -> Result<Response, ApiError> {
    let now = bridge.clock.now().unix_timestamp();
    let mapping = match custom::valid_name(source) {
        Ok(()) if overrides::stored(bridge, source)?.is_some() => Some(overrides::effective(
            bridge,
            &Custom::new(source, None, now),
        )?),
        _ => None,
    };
    let object = crate::app::query_pairs(request)
        .into_iter()
        .find(|(k, _)| k == "object")
        .map(|(_, v)| v);
    let webhook_id = request
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let has_mapping = mapping.is_some();
    let receiver = Custom::new(source, mapping, now).with_request(object, webhook_id);
    let verified = receiver.verify(bridge.config, request.headers(), request.body(), now);
    verified.map_err(|e| refusal(bridge, &receiver, e))?;
    if !has_mapping {
        return Err(ApiError::NotFoundResource(format!(
            "no custom source named {source:?}: store its mapping first (PUT /mappings/{source}, docs/crm/custom.md)"
        )));
    }
    accept_verified(bridge, request, &receiver)
}

fn refusal(bridge: &Bridge, receiver: &dyn Receiver, e: VerifyError) -> ApiError {
    match e {
        VerifyError::NotConfigured(variables) => ApiError::NotConfigured(variables),
        VerifyError::Refused(why) => {
            bridge.tally.crm(receiver.name(), "refused", 1);
            ApiError::Unauthorized(format!("{} webhook: {why}", receiver.name()))
        }
    }
}

/// An authentic delivery: parsed, mapped and accepted (2xx whatever its content).
fn accept_verified(
    bridge: &Bridge,
    request: &Request,
    receiver: &dyn Receiver,
) -> Result<Response, ApiError> {
    let source = receiver.name();
    let delivery = match receiver.parse(request.body()) {
        Ok(delivery) => delivery,
        Err(why) => {
            return Ok(ignored(
                bridge,
                source,
                "",
                &format!("the delivery could not be read: {why}"),
            ))
        }
    };
    if let (Some(why), true) = (&delivery.ignored, delivery.changes.is_empty()) {
        return Ok(ignored(bridge, source, &delivery.id, why));
    }
    let id = delivery.id.clone();
    let outcome = crm::accept(bridge, receiver, delivery)?;
    for (event, n) in [
        ("deliveries", 1),
        ("records_accepted", outcome.accepted),
        ("records_rejected", outcome.rejected),
        ("ignored", outcome.ignored),
        ("queued", outcome.queued),
    ] {
        bridge.tally.crm(source, event, n as u64);
    }
    let status_urls: Vec<String> = outcome
        .records
        .iter()
        .take(100)
        .map(|(t, id)| format!("/records/{}/{id}/status", t.as_str()))
        .collect();
    let mut response = json_response(
        202,
        &json!({
            "status": "ACCEPTED",
            "source": source,
            "delivery": id,
            "accepted": outcome.accepted,
            "rejected": outcome.rejected,
            "ignored": outcome.ignored,
            "queued": outcome.queued,
            "statusUrls": status_urls,
        }),
    );
    if let Some(first) = status_urls
        .first()
        .and_then(|u| http::HeaderValue::from_str(u).ok())
    {
        response.headers_mut().insert(http::header::LOCATION, first);
    }
    if outcome.queued > 0 {
        // Thin notifications: their records are read right after this answer.
        response
            .extensions_mut()
            .insert(crate::app::FollowUp::Fetch);
    } else if !outcome.references.is_empty() && crm::references::can_resolve(bridge, source) {
        // Objects the records refer to and Gong may lack: read right after this answer.
        response
            .extensions_mut()
            .insert(crate::app::FollowUp::References {
                source: source.to_owned(),
                references: outcome.references,
                compact_inbox: outcome.compact_inbox,
            });
    } else if outcome.compact_inbox {
        response
            .extensions_mut()
            .insert(crate::app::FollowUp::CompactInbox);
    }
    Ok(response)
}

/// 202 for an authentic delivery the bridge does not act on, with why (also logged).
fn ignored(bridge: &Bridge, source: &str, delivery: &str, why: &str) -> Response {
    bridge.tally.crm(source, "deliveries", 1);
    bridge.tally.crm(source, "ignored", 1);
    crate::log::warn(format!("{source} delivery {delivery:?} ignored: {why}")).emit();
    json_response(
        202,
        &json!({"status": "IGNORED", "source": source, "delivery": delivery, "reason": why}),
    )
}
