//! Any other CRM (Zoho CRM workflow webhooks, Freshsales, Copper, an in-house tool): the user
//! builds the webhook's body in their CRM and describes it in the source's mapping, stored with
//! `PUT /mappings/{source}` (no default: every object and field comes from the user). Auth is a
//! Standard Webhooks signature (`webhook_secret`, as `POST /webhooks`) or a shared token
//! (`custom_webhook_token`, in `X-Webhook-Token` or `Authorization: Bearer`).

use serde_json::Value;

use super::signature::same_secret;
use super::{Change, Delivery, Receiver, VerifyError};
use crate::mapping::{DeliveryShape, Input, Mapping};
use crate::ports::Config;
use crate::settings::{CUSTOM_WEBHOOK_TOKEN, WEBHOOK_SECRET};
use crate::webhooks::signature::WebhookSecret;

/// A custom source, as one delivery (or a retry from the failure store) sees it.
pub struct Custom {
    name: String,
    /// `{"source": name, "objects": []}`: the stored document is the whole mapping.
    empty: String,
    /// The mapping in effect (absent until the user stores one).
    mapping: Option<Mapping>,
    /// The URL's `?object=`, for bodies that do not say which object they carry.
    object_from_url: Option<String>,
    /// The delivery's `webhook-id` (else the body's fingerprint names it).
    delivery_id: Option<String>,
    /// Unix seconds: the time of a delete that carries none.
    now: i64,
}

/// Whether `name` can name a custom source: short, lower-case, URL-safe, and not a built-in one.
pub fn valid_name(name: &str) -> Result<(), String> {
    let shaped = (1..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !shaped {
        return Err(format!("{name:?} cannot name a custom source: 1–40 characters, lower-case letters, digits, '-' and '_', starting with a letter"));
    }
    if super::RECEIVERS.iter().any(|r| r.name() == name) || name == "custom" {
        return Err(format!("{name:?} is a built-in receiver's name"));
    }
    Ok(())
}

impl Custom {
    pub fn new(name: &str, mapping: Option<Mapping>, now: i64) -> Custom {
        Custom {
            name: name.to_owned(),
            empty: serde_json::json!({"source": name, "objects": []}).to_string(),
            mapping,
            object_from_url: None,
            delivery_id: None,
            now,
        }
    }

    /// The delivery's context the body does not carry.
    pub fn with_request(mut self, object: Option<String>, delivery_id: Option<String>) -> Custom {
        self.object_from_url = object.filter(|o| !o.is_empty());
        self.delivery_id = delivery_id.filter(|d| !d.trim().is_empty());
        self
    }

    pub fn mapping(&self) -> Option<&Mapping> {
        self.mapping.as_ref()
    }

    /// The CRM object a record is (by the shape's pointer, the URL, or the only mapped one).
    fn object_of(&self, mapping: &Mapping, shape: &DeliveryShape, input: &Input) -> Option<String> {
        if let Some(pointer) = &shape.object {
            return input.at(pointer).map(text);
        }
        if let Some(object) = &self.object_from_url {
            return Some(object.clone());
        }
        match mapping.objects.as_slice() {
            [only] => Some(only.from.clone()),
            _ => None,
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Receiver for Custom {
    fn name(&self) -> &str {
        &self.name
    }

    fn default_mapping(&self) -> &str {
        &self.empty
    }

    fn verify(
        &self,
        config: &dyn Config,
        headers: &http::HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let secret = config.get(WEBHOOK_SECRET);
        let token = config.get(CUSTOM_WEBHOOK_TOKEN);
        if secret.is_none() && token.is_none() {
            return Err(VerifyError::NotConfigured(vec![
                CUSTOM_WEBHOOK_TOKEN.into(),
                WEBHOOK_SECRET.into(),
            ]));
        }
        if let (Some(secret), Some(_)) = (&secret, header("webhook-signature")) {
            return WebhookSecret::parse(secret)
                .verify(
                    header("webhook-id"),
                    header("webhook-timestamp"),
                    header("webhook-signature"),
                    body,
                    now,
                )
                .map_err(|e| VerifyError::Refused(format!("Standard Webhooks signature: {e}")));
        }
        let Some(token) = token else {
            return Err(VerifyError::Refused(
                "no webhook-signature header (Standard Webhooks, signed with webhook_secret)"
                    .into(),
            ));
        };
        let given = header("x-webhook-token")
            .or_else(|| header("authorization").and_then(|v| v.strip_prefix("Bearer ")))
            .map(str::trim);
        match given {
            Some(given) if same_secret(given.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(VerifyError::Refused("wrong webhook token".into())),
            None => Err(VerifyError::Refused(
                "no X-Webhook-Token header (or Authorization: Bearer), and no Standard Webhooks signature".into(),
            )),
        }
    }

    fn parse(&self, body: &[u8]) -> Result<Delivery, String> {
        let id = self
            .delivery_id
            .clone()
            .unwrap_or_else(|| format!("body-{}", &crate::idempotency::fingerprint(body)[..16]));
        let Some(mapping) = &self.mapping else {
            return Err(format!(
                "custom source {:?} has no mapping: store one with PUT /mappings/{}",
                self.name, self.name
            ));
        };
        let shape = mapping.delivery.clone().unwrap_or_default();
        let mut envelope: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        // The records leave the envelope, which stays as each record's `/$event/…`.
        let records = match envelope.pointer_mut(&shape.records).map(Value::take) {
            Some(Value::Array(records)) => records,
            Some(record @ Value::Object(_)) => vec![record],
            Some(Value::Null) | None => {
                return Err(format!(
                    "no records at {:?} (the mapping's delivery.records)",
                    shape.records
                ))
            }
            Some(other) => {
                return Err(format!(
                    "the records at {:?} are neither an array nor an object: {other}",
                    shape.records
                ))
            }
        };
        let at_now = time::OffsetDateTime::from_unix_timestamp(self.now)
            .map(crate::validation::format_gong_datetime)
            .unwrap_or_default();
        let mut changes = Vec::with_capacity(records.len());
        let mut unnamed = 0;
        for record in records {
            let input = Input {
                record: &record,
                event: &envelope,
            };
            let Some(object) = self.object_of(mapping, &shape, &input) else {
                unnamed += 1;
                continue;
            };
            let action = shape
                .action
                .as_deref()
                .and_then(|p| input.at(p))
                .map(|v| text(v).to_ascii_lowercase());
            let deleted = action
                .is_some_and(|a| shape.delete_when.iter().any(|d| d.eq_ignore_ascii_case(&a)));
            let rules = mapping.object(&object).map(|o| &o.fields);
            let first_at = |field: &str| {
                rules
                    .and_then(|f| f.get(field))
                    .and_then(|rule| rule.path.first())
                    .and_then(|p| input.at(p))
                    .map(text)
            };
            match (deleted, first_at("objectId")) {
                (true, Some(id)) => changes.push(Change::Delete {
                    at: first_at("modifiedDate").unwrap_or_else(|| at_now.clone()),
                    object,
                    id,
                }),
                _ => changes.push(Change::Upsert {
                    object,
                    event: envelope.clone(),
                    record,
                }),
            }
        }
        let ignored = (unnamed > 0).then(|| {
            format!("{unnamed} record(s) name no object: set the mapping's delivery.object, or add ?object= to the webhook's URL")
        });
        Ok(Delivery {
            id,
            changes,
            ignored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn zoho() -> Mapping {
        serde_json::from_value(json!({
            "source": "zoho",
            "delivery": {"records": "/data", "object": "/$event/module", "action": "/$event/operation"},
            "objects": [{"from": "Deals", "to": "DEAL", "idPrefix": "z-", "fields": {
                "objectId": {"path": "/id", "convert": "id"},
                "modifiedDate": {"path": "/Modified_Time", "convert": "datetime"},
                "name": {"path": "/Deal_Name"}
            }}]
        }))
        .unwrap()
    }

    #[test]
    fn a_built_body_becomes_changes_by_its_shape() {
        let custom = Custom::new("zoho", Some(zoho()), 1_700_000_000);
        let body = json!({"module": "Deals", "operation": "update", "data": [
            {"id": "1", "Modified_Time": "2026-12-01T10:00:00+01:00", "Deal_Name": "A"},
            {"id": "2", "Modified_Time": "2026-12-01T10:00:01+01:00", "Deal_Name": "B"}
        ]});
        let delivery = custom.parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(delivery.changes.len(), 2);
        let Change::Upsert {
            object,
            record,
            event,
        } = &delivery.changes[1]
        else {
            panic!("{:?}", delivery.changes)
        };
        assert_eq!((object.as_str(), &record["id"]), ("Deals", &json!("2")));
        assert!(
            event.get("data").is_some_and(Value::is_null),
            "records leave the envelope"
        );
        assert!(delivery.id.starts_with("body-") && delivery.ignored.is_none());

        let deleted = json!({"module": "Deals", "operation": "DELETE", "data": {"id": "7"}});
        let delivery = custom.parse(deleted.to_string().as_bytes()).unwrap();
        assert_eq!(
            delivery.changes,
            vec![Change::Delete {
                object: "Deals".into(),
                id: "7".into(),
                at: "2023-11-14T22:13:20Z".into()
            }]
        );
    }

    #[test]
    fn the_object_comes_from_the_url_or_the_only_mapping() {
        let mut mapping = zoho();
        mapping.delivery = Some(DeliveryShape {
            records: String::new(),
            ..DeliveryShape::default()
        });
        let only = Custom::new("zoho", Some(mapping.clone()), 0);
        let body = json!({"id": "1", "Modified_Time": "2026-12-01T10:00:00Z"}).to_string();
        let delivery = only.parse(body.as_bytes()).unwrap();
        assert!(matches!(&delivery.changes[0], Change::Upsert { object, .. } if object == "Deals"));
        mapping.objects.push(mapping.objects[0].clone());
        mapping.objects[1].from = "Leads".into();
        let two = Custom::new("zoho", Some(mapping.clone()), 0);
        let delivery = two.parse(body.as_bytes()).unwrap();
        assert!(delivery.changes.is_empty() && delivery.ignored.is_some());
        let by_url = Custom::new("zoho", Some(mapping), 0)
            .with_request(Some("Leads".into()), Some("wh-1".into()));
        let delivery = by_url.parse(body.as_bytes()).unwrap();
        assert!(matches!(&delivery.changes[0], Change::Upsert { object, .. } if object == "Leads"));
        assert_eq!(delivery.id, "wh-1");
    }

    #[test]
    fn unreadable_bodies_and_missing_mappings_say_why() {
        let custom = Custom::new("zoho", Some(zoho()), 0);
        assert!(custom.parse(b"{").unwrap_err().contains("not JSON"));
        assert!(custom
            .parse(b"{\"other\": 1}")
            .unwrap_err()
            .contains("/data"));
        let unmapped = Custom::new("zoho", None, 0);
        assert!(unmapped
            .parse(b"{}")
            .unwrap_err()
            .contains("PUT /mappings/zoho"));
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("zoho-crm").is_ok());
        for bad in ["", "Zoho", "pipedrive", "custom", "a/b", "1abc"] {
            assert!(valid_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn auth_is_a_token_or_a_standard_webhooks_signature() {
        use crate::testing::MapConfig;
        let custom = Custom::new("zoho", None, 0);
        let body = b"{}";
        let now = 1_700_000_000;
        let none = MapConfig::with(&[]);
        assert!(matches!(
            custom.verify(&none, &http::HeaderMap::new(), body, now),
            Err(VerifyError::NotConfigured(_))
        ));
        let config = MapConfig::with(&[
            (CUSTOM_WEBHOOK_TOKEN, "tok-123"),
            (WEBHOOK_SECRET, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ]);
        let mut headers = http::HeaderMap::new();
        assert!(matches!(
            custom.verify(&config, &headers, body, now),
            Err(VerifyError::Refused(_))
        ));
        headers.insert("x-webhook-token", "tok-124".parse().unwrap());
        assert!(custom.verify(&config, &headers, body, now).is_err());
        headers.insert("x-webhook-token", "tok-123".parse().unwrap());
        assert!(custom.verify(&config, &headers, body, now).is_ok());
        let mut bearer = http::HeaderMap::new();
        bearer.insert("authorization", "Bearer tok-123".parse().unwrap());
        assert!(custom.verify(&config, &bearer, body, now).is_ok());
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let mut signed = http::HeaderMap::new();
        signed.insert("webhook-id", "msg_1".parse().unwrap());
        signed.insert("webhook-timestamp", now.to_string().parse().unwrap());
        signed.insert(
            "webhook-signature",
            secret.sign("msg_1", now, body).parse().unwrap(),
        );
        assert!(custom.verify(&config, &signed, body, now).is_ok());
        assert!(
            custom.verify(&config, &signed, body, now + 600).is_err(),
            "stale"
        );
        assert!(
            custom.verify(&config, &signed, b"{ }", now).is_err(),
            "another body"
        );
    }
}
