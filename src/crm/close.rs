//! Close's webhooks (`{subscription_id, event: {object_type, action, data, previous_data, …}}`),
//! signed: `close-sig-hash` = hex(HMAC-SHA256(key = the hex-decoded `close_webhook_signature_key`,
//! message = `close-sig-timestamp` + raw body)), the timestamp within ±5 minutes (Close documents
//! no window; this is Standard Webhooks'). A lead also carries its contacts, each upserted as a
//! contact of that lead; `deleted` deletes `event.object_id`; `merged` deletes the source lead.

use serde_json::Value;

use super::signature::hmac_sha256_hex_matches;
use super::{Change, Delivery, Receiver, VerifyError};
use crate::ports::Config;
use crate::settings::CLOSE_WEBHOOK_SIGNATURE_KEY as KEY;

/// How far `close-sig-timestamp` may be from now (seconds), unless
/// `close_signature_max_age_seconds` says otherwise. Close documents no window, nor whether a
/// retry is signed afresh: if its retries keep the first attempt's timestamp, an outage longer
/// than the window makes every retry a 401, and the operator widens it (a replayed authentic
/// event changes nothing: its version is already there or older).
const TOLERANCE_SECONDS: i64 = 300;

pub struct Close;

impl Receiver for Close {
    fn name(&self) -> &str {
        "close"
    }

    fn default_mapping(&self) -> &str {
        include_str!("defaults/close.json")
    }

    fn verify(
        &self,
        config: &dyn Config,
        headers: &http::HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let Some(key_hex) = config.get(KEY) else {
            return Err(VerifyError::NotConfigured(vec![KEY.into()]));
        };
        let Ok(key) = hex::decode(key_hex.trim()) else {
            return Err(VerifyError::NotConfigured(vec![format!(
                "{KEY} (it must be the signature_key Close returned: 64 hex characters)"
            )]));
        };
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let (Some(timestamp), Some(hash)) =
            (header("close-sig-timestamp"), header("close-sig-hash"))
        else {
            return Err(VerifyError::Refused(
                "Close deliveries carry close-sig-hash and close-sig-timestamp; one is missing"
                    .into(),
            ));
        };
        let at: i64 = timestamp.parse().map_err(|_| {
            VerifyError::Refused(format!(
                "close-sig-timestamp {timestamp:?} is not Unix seconds"
            ))
        })?;
        let window = config
            .get(crate::settings::CLOSE_SIGNATURE_MAX_AGE_SECONDS)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|w| *w > 0)
            .unwrap_or(TOLERANCE_SECONDS);
        if (now - at).abs() > window {
            return Err(VerifyError::Refused(format!("close-sig-timestamp is {} s from now (at most {window} s, close_signature_max_age_seconds): a replay, a clock far off, or a retry after a long outage", (now - at).abs())));
        }
        if hmac_sha256_hex_matches(&key, &[timestamp.as_bytes(), body], hash) {
            Ok(())
        } else {
            Err(VerifyError::Refused("close-sig-hash does not match this body and timestamp (is close_webhook_signature_key the subscription's signature_key?)".into()))
        }
    }

    fn parse(&self, body: &[u8]) -> Result<Delivery, String> {
        let envelope: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let event = envelope
            .get("event")
            .filter(|e| e.is_object())
            .ok_or("no \"event\" object: not a Close webhook delivery")?;
        let text = |name: &str| {
            event
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        // Close updates an event in place (same id, later date_updated): both make the delivery.
        let id = format!("{}@{}", text("id"), text("date_updated"));
        let object = text("object_type");
        let action = text("action");
        let at = text("date_updated");
        let data = event.get("data").filter(|d| d.is_object());
        let mut changes = Vec::new();
        match action.as_str() {
            "created" | "updated" | "merged" => {
                let Some(data) = data else {
                    return Err(format!("a {object}.{action} without \"data\""));
                };
                if action == "merged" {
                    if let Some(source) = event
                        .pointer("/meta/merge_source_lead_id")
                        .and_then(Value::as_str)
                    {
                        changes.push(Change::Delete {
                            object: object.clone(),
                            id: source.to_owned(),
                            at: at.clone(),
                        });
                    }
                }
                changes.push(Change::Upsert {
                    object: object.clone(),
                    record: data.clone(),
                    event: event.clone(),
                });
                if object == "lead" {
                    // A lead's contacts come with it; each is a contact of this lead.
                    let lead_id = data.get("id").cloned().unwrap_or(Value::Null);
                    for contact in data
                        .get("contacts")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let mut contact = contact.clone();
                        if let Value::Object(map) = &mut contact {
                            map.entry("lead_id").or_insert(lead_id.clone());
                        }
                        changes.push(Change::Upsert {
                            object: "contact".into(),
                            record: contact,
                            event: event.clone(),
                        });
                    }
                }
            }
            "deleted" => {
                let id = event
                    .get("object_id")
                    .and_then(Value::as_str)
                    .ok_or("a deleted event without object_id")?;
                changes.push(Change::Delete {
                    object,
                    id: id.to_owned(),
                    at,
                });
            }
            other => {
                return Ok(Delivery {
                    id,
                    changes,
                    ignored: Some(format!(
                        "action {other:?} of {object} is not one the bridge acts on"
                    )),
                })
            }
        }
        Ok(Delivery {
            id,
            changes,
            ignored: None,
        })
    }
}
