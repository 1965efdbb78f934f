//! Pipedrive's webhooks, version 2 (`{meta, data, previous}`), authenticated by HTTP Basic auth
//! (`pipedrive_webhook_user` / `pipedrive_webhook_password`; Pipedrive signs nothing).
//! `create`/`change` upsert `data`; `delete` (data null) deletes `meta.entity_id`, as does the
//! delete half of a merge (`meta.merged_to_id` names the survivor, whose own `change` follows).

use base64::Engine;
use serde_json::Value;

use super::signature::same_secret;
use super::{Change, Delivery, Receiver, VerifyError};
use crate::ports::Config;

use crate::settings::{PIPEDRIVE_WEBHOOK_PASSWORD as PASSWORD, PIPEDRIVE_WEBHOOK_USER as USER};

pub struct Pipedrive;

/// An id Pipedrive sends as a string or a number.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Receiver for Pipedrive {
    fn name(&self) -> &str {
        "pipedrive"
    }

    fn default_mapping(&self) -> &str {
        include_str!("defaults/pipedrive.json")
    }

    fn verify(
        &self,
        config: &dyn Config,
        headers: &http::HeaderMap,
        _body: &[u8],
        _now: i64,
    ) -> Result<(), VerifyError> {
        let (Some(user), Some(password)) = (config.get(USER), config.get(PASSWORD)) else {
            return Err(VerifyError::NotConfigured(vec![
                USER.into(),
                PASSWORD.into(),
            ]));
        };
        let given = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let Some(encoded) = given
            .strip_prefix("Basic ")
            .or_else(|| given.strip_prefix("basic "))
        else {
            return Err(VerifyError::Refused("Pipedrive deliveries carry HTTP Basic auth (the webhook's http_auth_user and http_auth_password); none was sent".into()));
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .unwrap_or_default();
        let expected = format!("{user}:{password}");
        if same_secret(&decoded, expected.as_bytes()) {
            Ok(())
        } else {
            Err(VerifyError::Refused(
                "wrong Basic auth user or password for this Pipedrive webhook".into(),
            ))
        }
    }

    fn parse(&self, body: &[u8]) -> Result<Delivery, String> {
        let envelope: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let meta = envelope
            .get("meta")
            .filter(|m| m.is_object())
            .ok_or("no \"meta\" object: not a Pipedrive webhook v2 delivery")?;
        let id = meta
            .get("id")
            .and_then(id_text)
            .or_else(|| meta.get("correlation_id").and_then(id_text))
            .unwrap_or_default();
        let version = meta.get("version").and_then(Value::as_str).unwrap_or("");
        if version != "2.0" {
            return Ok(Delivery { id, changes: Vec::new(), ignored: Some(format!("webhook version {version:?}: the bridge reads Pipedrive's webhooks v2 (create the webhook with version \"2.0\")")) });
        }
        let entity = meta
            .get("entity")
            .and_then(Value::as_str)
            .ok_or("meta.entity is missing")?
            .to_owned();
        let action = meta
            .get("action")
            .and_then(Value::as_str)
            .ok_or("meta.action is missing")?;
        let entity_id = meta.get("entity_id").and_then(id_text);
        let at = match meta.get("timestamp") {
            Some(Value::String(s)) => s.clone(),
            // User events before 2025-06-30 sent Unix seconds.
            Some(Value::Number(n)) => n
                .as_i64()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .map(crate::validation::format_gong_datetime)
                .unwrap_or_default(),
            _ => String::new(),
        };
        let change = match action {
            "create" | "change" => match envelope.get("data").filter(|d| d.is_object()) {
                Some(data) => Change::Upsert {
                    object: entity,
                    record: data.clone(),
                    event: meta.clone(),
                },
                None => return Err(format!("a {action} of {entity} without \"data\"")),
            },
            "delete" => {
                let id = entity_id
                    .or_else(|| envelope.pointer("/previous/id").and_then(id_text))
                    .ok_or("a delete without meta.entity_id")?;
                Change::Delete {
                    object: entity,
                    id,
                    at,
                }
            }
            other => {
                return Ok(Delivery {
                    id,
                    changes: Vec::new(),
                    ignored: Some(format!("action {other:?} is not one the bridge acts on")),
                })
            }
        };
        Ok(Delivery {
            id,
            changes: vec![change],
            ignored: None,
        })
    }
}
