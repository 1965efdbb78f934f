//! Attio's webhooks: thin notifications (`{webhook_id, events: [{event_type, id: {object_id,
//! record_id}}]}`) signed with `Attio-Signature` (or `X-Attio-Signature`) = hex(HMAC-SHA256(key =
//! `attio_webhook_secret` as text, message = raw body)). They carry no values: each is kept in
//! the fetch queue (`fetch.rs`) and the record is read from Attio's API after the answer. Requests
//! to the API are built here (sans I/O) and sent through the gateway.

use serde_json::Value;

use super::signature::hmac_sha256_hex_matches;
use super::{Change, Delivery, Receiver, VerifyError};
use crate::ports::{Config, Request};
use crate::settings::{ATTIO_API_TOKEN, ATTIO_BASE_URL, ATTIO_WEBHOOK_SECRET};

pub struct Attio;

/// Attio's own API host, unless `attio_base_url` says otherwise (tests point it at a mock).
pub const DEFAULT_BASE_URL: &str = "https://api.attio.com";

impl Receiver for Attio {
    fn name(&self) -> &str {
        "attio"
    }

    fn default_mapping(&self) -> &str {
        include_str!("defaults/attio.json")
    }

    fn verify(
        &self,
        config: &dyn Config,
        headers: &http::HeaderMap,
        body: &[u8],
        _now: i64,
    ) -> Result<(), VerifyError> {
        let Some(secret) = config.get(ATTIO_WEBHOOK_SECRET) else {
            return Err(VerifyError::NotConfigured(
                vec![ATTIO_WEBHOOK_SECRET.into()],
            ));
        };
        let given = ["attio-signature", "x-attio-signature"]
            .iter()
            .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()));
        let Some(given) = given else {
            return Err(VerifyError::Refused(
                "Attio deliveries carry Attio-Signature; none was sent".into(),
            ));
        };
        if hmac_sha256_hex_matches(secret.as_bytes(), &[body], given) {
            Ok(())
        } else {
            Err(VerifyError::Refused("Attio-Signature does not match this body (is attio_webhook_secret the webhook's secret?)".into()))
        }
    }

    fn parse(&self, body: &[u8]) -> Result<Delivery, String> {
        let envelope: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let events = envelope
            .get("events")
            .and_then(Value::as_array)
            .ok_or("no \"events\" array: not an Attio webhook delivery")?;
        let id = envelope
            .get("webhook_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut changes = Vec::new();
        for event in events {
            let kind = event
                .get("event_type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let at = |p: &str| event.pointer(p).and_then(Value::as_str).map(str::to_owned);
            let (Some(object_id), Some(record_id)) = (at("/id/object_id"), at("/id/record_id"))
            else {
                continue;
            };
            match kind {
                "record.created" | "record.updated" => changes.push(Change::Fetch {
                    object_id,
                    record_id,
                }),
                // Both merge semantics: the duplicate is gone, the record named by `id` is current.
                "record.merged" => {
                    if let (Some(duplicate_object), Some(duplicate)) =
                        (at("/duplicate_object_id"), at("/duplicate_record_id"))
                    {
                        changes.push(Change::Gone {
                            object_id: duplicate_object,
                            record_id: duplicate,
                        });
                    }
                    changes.push(Change::Fetch {
                        object_id,
                        record_id,
                    });
                }
                "record.deleted" => changes.push(Change::Gone {
                    object_id,
                    record_id,
                }),
                _ => {}
            }
        }
        let ignored = changes
            .is_empty()
            .then(|| "no record event the bridge acts on".to_owned());
        Ok(Delivery {
            id,
            changes,
            ignored,
        })
    }
}

fn base_url(config: &dyn Config) -> String {
    config
        .get(ATTIO_BASE_URL)
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A GET of Attio's API with the token, or why it cannot be made.
pub fn get(config: &dyn Config, path: &str) -> Result<Request, String> {
    let token = config
        .get(ATTIO_API_TOKEN)
        .ok_or_else(|| format!("{ATTIO_API_TOKEN} is not set: Attio's records cannot be read"))?;
    http::Request::builder()
        .method("GET")
        .uri(format!("{}{path}", base_url(config)))
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::ACCEPT, "application/json")
        .body(Vec::new())
        .map_err(|e| format!("{ATTIO_BASE_URL} does not make a URL: {e}"))
}

/// `GET /v2/objects/{object_id}`: the object's `api_slug` (`companies`, `people`, `deals`).
pub fn get_object(config: &dyn Config, object_id: &str) -> Result<Request, String> {
    get(config, &format!("/v2/objects/{object_id}"))
}

/// `POST /v2/objects/{object}/records/query` with `{limit, offset}`: a page of records.
pub fn query_records(
    config: &dyn Config,
    object: &str,
    limit: u64,
    offset: u64,
) -> Result<Request, String> {
    let mut request = get(config, &format!("/v2/objects/{object}/records/query"))?;
    *request.method_mut() = http::Method::POST;
    request.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    *request.body_mut() = serde_json::json!({"limit": limit, "offset": offset})
        .to_string()
        .into_bytes();
    Ok(request)
}

/// `GET /v2/objects/{object}/records/{record_id}`.
pub fn get_record(config: &dyn Config, object: &str, record_id: &str) -> Result<Request, String> {
    get(config, &format!("/v2/objects/{object}/records/{record_id}"))
}

/// The slug in an object answer.
pub fn object_slug(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .pointer("/data/api_slug")?
        .as_str()
        .map(str::to_owned)
}

/// The record in a record answer.
pub fn record(body: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get_mut("data")
        .map(Value::take)
        .filter(Value::is_object)
}

/// The `code` of an Attio error body (`not_found`, `merge_in_progress`, …).
pub fn error_code(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("code")?
        .as_str()
        .map(str::to_owned)
}
