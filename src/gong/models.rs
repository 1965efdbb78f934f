//! Gong's Generic CRM API models (`../shared/gong/gong-crm-openapi.json`, API-NOTES §2).
//!
//! JSON names are exactly Gong's. Response fields are all optional (the spec declares no
//! `required` list) and unknown fields are tolerated (Gong may add fields without warning).
//! `integrationId` is an `i64`: parsing it as f64 or i32 truncates real ids.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Object types accepted by the schema and get-entities endpoints (case-sensitive).
pub const SCHEMA_OBJECT_TYPES: [&str; 4] = ["ACCOUNT", "CONTACT", "DEAL", "LEAD"];
/// Object types accepted by the upload endpoint (case-sensitive).
pub const UPLOAD_OBJECT_TYPES: [&str; 6] = [
    "ACCOUNT",
    "CONTACT",
    "DEAL",
    "LEAD",
    "BUSINESS_USER",
    "STAGE",
];
/// The 14 schema field types.
pub const FIELD_TYPES: [&str; 14] = [
    "DATE",
    "DATETIME",
    "NUMBER",
    "PERCENT",
    "CURRENCY",
    "ID",
    "URL",
    "STRING",
    "BOOLEAN",
    "PHONENUMBER",
    "EMAILADDRESS",
    "PICKLIST",
    "REFERENCE",
    "STRINGARRAY",
];
/// Targets of a REFERENCE field. Note `USER`, not `BUSINESS_USER` (API-NOTES §2.4).
pub const REFERENCE_TARGETS: [&str; 5] = ["ACCOUNT", "CONTACT", "DEAL", "LEAD", "USER"];

/// A CRM object type as Gong names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ObjectType {
    Account,
    Contact,
    Deal,
    Lead,
    BusinessUser,
    Stage,
}

impl ObjectType {
    pub const ALL: [ObjectType; 6] = [
        ObjectType::Account,
        ObjectType::Contact,
        ObjectType::Deal,
        ObjectType::Lead,
        ObjectType::BusinessUser,
        ObjectType::Stage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Account => "ACCOUNT",
            ObjectType::Contact => "CONTACT",
            ObjectType::Deal => "DEAL",
            ObjectType::Lead => "LEAD",
            ObjectType::BusinessUser => "BUSINESS_USER",
            ObjectType::Stage => "STAGE",
        }
    }

    /// Parses an upload object type (all six); case-sensitive like Gong.
    pub fn parse_upload(s: &str) -> Option<ObjectType> {
        ObjectType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Parses an object type valid for the schema and get-entities endpoints (four of six).
    pub fn parse_schema(s: &str) -> Option<ObjectType> {
        ObjectType::parse_upload(s).filter(|t| t.has_schema())
    }

    /// Whether Gong keeps a custom-field schema for this type (BUSINESS_USER and STAGE have none).
    pub fn has_schema(self) -> bool {
        !matches!(self, ObjectType::BusinessUser | ObjectType::Stage)
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Accepts an int64 as a JSON number or as a decimal string (some proxies stringify longs).
fn i64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrString {
        Num(i64),
        Str(String),
    }
    match Option::<NumOrString>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrString::Num(n)) => Ok(Some(n)),
        Some(NumOrString::Str(s)) => s.trim().parse::<i64>().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("integrationId {s:?} is not a 64-bit integer"))
        }),
    }
}

/// `GenericCrmRegistrationRequest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationRequest {
    pub name: String,
    pub owner_email: String,
}

/// `RegisterGenericCrmResponse`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "i64_lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub integration_id: Option<i64>,
}

/// `GenericCrmIntegration`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Integration {
    #[serde(
        default,
        deserialize_with = "i64_lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub integration_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `ListGenericCrmIntegrationsResponse`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListIntegrationsResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default)]
    pub integrations: Vec<Integration>,
}

/// `GenericSchemaFieldRequest`: one custom field of an object type's schema.
///
/// Every member is optional so that a bad request can be parsed and answered field by field
/// (validation says which rule failed) and so that list responses, whose items carry nulls and
/// the key `name` instead of `uniqueName` (API-NOTES §2.5), parse too.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaField {
    #[serde(default, alias = "name", skip_serializing_if = "Option::is_none")]
    pub unique_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub field_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_deleted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered_value_list: Option<Vec<String>>,
}

/// `ListSelectedFieldsResponse`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListSchemaResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub object_type_to_selected_fields: BTreeMap<String, Vec<SchemaField>>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `BaseResponse` and `SchemaUpdateResponse` (both only carry `requestId`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `AsyncProcessingResponse` (upload entities, delete integration).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsyncProcessingResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
}

/// `GetGenericCrmObjectsResponse`: CRM id → the object's fields, or null when Gong has not
/// processed (or never received) it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetObjectsResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub crm_objects_map: BTreeMap<String, Option<serde_json::Map<String, serde_json::Value>>>,
}

/// Status of an asynchronous Gong request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RequestStatus {
    Pending,
    InProgress,
    Done,
    Failed,
}

impl RequestStatus {
    pub fn is_final(self) -> bool {
        matches!(self, RequestStatus::Done | RequestStatus::Failed)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "PENDING",
            RequestStatus::InProgress => "IN_PROGRESS",
            RequestStatus::Done => "DONE",
            RequestStatus::Failed => "FAILED",
        }
    }
}

/// `LineErrorResponse`. Line 0 is a file-level error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineError {
    #[serde(default)]
    pub line: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `RequestStatusResponse`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestStatusResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RequestStatus>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub errors: Vec<LineError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_error_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_success_count: Option<i64>,
}

/// `ErrorResponse`, parsed leniently: Gong's 429/5xx bodies are not promised to follow it, so
/// the raw text is always kept and `errors` may also be a single string or an object.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub errors: Vec<String>,
    #[serde(skip)]
    pub raw: String,
}

impl ErrorResponse {
    pub fn parse(body: &[u8]) -> ErrorResponse {
        let raw = String::from_utf8_lossy(body).into_owned();
        let mut parsed = ErrorResponse {
            raw,
            ..Default::default()
        };
        let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body)
        else {
            return parsed;
        };
        parsed.request_id = map
            .get("requestId")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        match map.get("errors") {
            Some(serde_json::Value::Array(items)) => {
                parsed.errors = items
                    .iter()
                    .map(|v| match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
            }
            Some(serde_json::Value::String(s)) => parsed.errors = vec![s.clone()],
            Some(serde_json::Value::Null) | None => {}
            Some(other) => parsed.errors = vec![other.to_string()],
        }
        if parsed.errors.is_empty() {
            if let Some(msg) = map.get("message").and_then(|v| v.as_str()) {
                parsed.errors.push(msg.to_owned());
            }
        }
        parsed
    }

    /// What Gong said, in one line: its error messages, else its raw body (truncated).
    pub fn summary(&self) -> String {
        if !self.errors.is_empty() {
            return self.errors.join("; ");
        }
        let raw = self.raw.trim();
        if raw.is_empty() {
            return "(empty body)".to_owned();
        }
        let mut cut: String = raw.chars().take(300).collect();
        if cut.len() < raw.len() {
            cut.push('…');
        }
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integration_id_keeps_all_64_bits_as_number_or_string() {
        let r: RegisterResponse =
            serde_json::from_str(r#"{"requestId":"r","integrationId":5517027188234205706}"#)
                .unwrap();
        assert_eq!(r.integration_id, Some(5517027188234205706));
        let r: RegisterResponse =
            serde_json::from_str(r#"{"integrationId":"5517027188234205706","extra":1}"#).unwrap();
        assert_eq!(r.integration_id, Some(5517027188234205706));
        assert!(serde_json::from_str::<RegisterResponse>(r#"{"integrationId":"12x"}"#).is_err());
    }

    #[test]
    fn schema_list_items_accept_name_or_unique_name_and_nulls() {
        let body = r#"{"requestId":"x","objectTypeToSelectedFields":{"ACCOUNT":[
            {"name":"Tier","label":"Tier","type":"PICKLIST","lastModified":null,"referenceTo":null,"orderedValueList":["A"]},
            {"uniqueName":"Score","label":"Score","type":"NUMBER"}]}}"#;
        let r: ListSchemaResponse = serde_json::from_str(body).unwrap();
        let fields = &r.object_type_to_selected_fields["ACCOUNT"];
        assert_eq!(fields[0].unique_name.as_deref(), Some("Tier"));
        assert_eq!(fields[0].last_modified, None);
        assert_eq!(fields[1].unique_name.as_deref(), Some("Score"));
        // Serialised for Gong it is always `uniqueName`.
        assert!(serde_json::to_string(&fields[0])
            .unwrap()
            .contains("\"uniqueName\":\"Tier\""));
    }

    #[test]
    fn error_response_is_lenient_and_keeps_raw_text() {
        let e = ErrorResponse::parse(br#"{"requestId":"4al","errors":["An error has occurred"]}"#);
        assert_eq!(e.request_id.as_deref(), Some("4al"));
        assert_eq!(e.summary(), "An error has occurred");
        let e = ErrorResponse::parse(b"<html>Bad Gateway</html>");
        assert!(e.errors.is_empty());
        assert_eq!(e.summary(), "<html>Bad Gateway</html>");
        let e = ErrorResponse::parse(br#"{"errors":"quota"}"#);
        assert_eq!(e.errors, vec!["quota"]);
        assert_eq!(ErrorResponse::parse(b"").summary(), "(empty body)");
    }

    #[test]
    fn request_status_parses_spec_example() {
        let r: RequestStatusResponse = serde_json::from_str(
            r#"{"requestId":"r","status":"FAILED","errors":[{"line":3,"description":"objectId missing"}],"totalErrorCount":1,"totalSuccessCount":2}"#,
        )
        .unwrap();
        assert_eq!(r.status, Some(RequestStatus::Failed));
        assert_eq!(r.errors[0].line, 3);
        assert_eq!(r.total_success_count, Some(2));
    }

    #[test]
    fn object_types_are_case_sensitive_and_scoped() {
        assert_eq!(ObjectType::parse_upload("STAGE"), Some(ObjectType::Stage));
        assert_eq!(ObjectType::parse_upload("account"), None);
        assert_eq!(ObjectType::parse_schema("STAGE"), None);
        assert_eq!(ObjectType::parse_schema("DEAL"), Some(ObjectType::Deal));
    }
}
