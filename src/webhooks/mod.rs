//! The webhook contract: Standard Webhooks authentication (`signature`) and the event payload
//! `{"type": ..., "timestamp": ..., "data": ...}`, parsed here into typed events.

pub mod signature;

use serde_json::{Map, Value};

use crate::validation::Violation;

pub const RECORD_UPSERTED: &str = "record.upserted";
pub const RECORD_DELETED: &str = "record.deleted";
pub const SCHEMA_UPDATED: &str = "schema.updated";
pub const INTEGRATION_REGISTERED: &str = "integration.registered";
pub const INTEGRATION_DELETED: &str = "integration.deleted";
pub const KNOWN_TYPES: [&str; 5] = [
    RECORD_UPSERTED,
    RECORD_DELETED,
    SCHEMA_UPDATED,
    INTEGRATION_REGISTERED,
    INTEGRATION_DELETED,
];

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Records to upsert (deleted ones carry `isDeleted: true`), moved out of the envelope (the
    /// body is parsed once).
    Records {
        object_type: String,
        records: Vec<Value>,
    },
    Schema {
        object_type: String,
        fields_json: Vec<u8>,
    },
    IntegrationRegistered {
        name: Option<String>,
        owner_email: Option<String>,
    },
    IntegrationDeleted,
}

fn violation(field: &str, rule: &str, message: impl Into<String>) -> Violation {
    Violation {
        index: None,
        line: None,
        object_id: None,
        field: Some(field.to_owned()),
        rule: rule.to_owned(),
        message: message.into(),
    }
}

fn string_field(data: &Map<String, Value>, name: &str) -> Option<String> {
    data.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// Parses a verified delivery's body.
pub fn parse_event(body: &[u8]) -> Result<Event, Vec<Violation>> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        vec![violation(
            "body",
            "body.json",
            format!("the body is not JSON: {e}"),
        )]
    })?;
    let Value::Object(mut envelope) = value else {
        return Err(vec![violation(
            "body",
            "body.object",
            "the body must be a JSON object {\"type\", \"timestamp\", \"data\"}",
        )]);
    };
    let Some(kind) = envelope
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return Err(vec![violation(
            "type",
            "type.required",
            format!("type is required; one of {}", KNOWN_TYPES.join(", ")),
        )]);
    };
    let empty = Map::new();
    let data = match envelope.get("data") {
        Some(Value::Object(map)) => map,
        None | Some(Value::Null) if kind == INTEGRATION_DELETED => &empty,
        _ => {
            return Err(vec![violation(
                "data",
                "data.object",
                "data must be a JSON object",
            )])
        }
    };
    match kind.as_str() {
        RECORD_UPSERTED | RECORD_DELETED => {
            let deleted = kind == RECORD_DELETED;
            let object_type = string_field(data, "objectType").ok_or_else(|| {
                vec![violation(
                    "data.objectType",
                    "objectType.required",
                    "data.objectType is required",
                )]
            })?;
            let shape = (data.get("record"), data.get("records"));
            let well_formed = matches!(
                shape,
                (Some(Value::Object(_)), None) | (None, Some(Value::Array(_)))
            );
            if !well_formed {
                return Err(vec![violation(
                    "data.records",
                    "records.shape",
                    "data must carry either \"record\" (an object) or \"records\" (an array of objects)",
                )]);
            }
            // Moved out of the envelope, not copied: a delivery may be a megabyte.
            let Some(Value::Object(mut data)) = envelope.remove("data") else {
                return Err(Vec::new());
            };
            let mut records = match (data.remove("record"), data.remove("records")) {
                (Some(one @ Value::Object(_)), None) => vec![one],
                (None, Some(Value::Array(many))) => many,
                _ => {
                    return Err(vec![violation(
                        "data.records",
                        "records.shape",
                        "data must carry either \"record\" (an object) or \"records\" (an array of objects)",
                    )])
                }
            };
            if deleted {
                // A delete may carry only objectId and modifiedDate; it is a delete either way.
                for record in records.iter_mut() {
                    if let Value::Object(map) = record {
                        map.insert("isDeleted".into(), Value::Bool(true));
                    }
                }
            }
            Ok(Event::Records {
                object_type,
                records,
            })
        }
        SCHEMA_UPDATED => {
            let object_type = string_field(data, "objectType").ok_or_else(|| {
                vec![violation(
                    "data.objectType",
                    "objectType.required",
                    "data.objectType is required",
                )]
            })?;
            let fields = data.get("fields").ok_or_else(|| {
                vec![violation(
                    "data.fields",
                    "fields.required",
                    "data.fields (an array) is required",
                )]
            })?;
            let fields_json = serde_json::to_vec(fields)
                .map_err(|e| vec![violation("data.fields", "body.json", e.to_string())])?;
            Ok(Event::Schema {
                object_type,
                fields_json,
            })
        }
        INTEGRATION_REGISTERED => Ok(Event::IntegrationRegistered {
            name: string_field(data, "name"),
            owner_email: string_field(data, "ownerEmail"),
        }),
        INTEGRATION_DELETED => Ok(Event::IntegrationDeleted),
        other => Err(vec![violation(
            "type",
            "type.unknown",
            format!(
                "unknown event type {other:?}; known: {}",
                KNOWN_TYPES.join(", ")
            ),
        )]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_many_records() {
        let one = parse_event(br#"{"type":"record.upserted","data":{"objectType":"ACCOUNT","record":{"objectId":"a"}}}"#).unwrap();
        assert_eq!(
            one,
            Event::Records {
                object_type: "ACCOUNT".into(),
                records: vec![serde_json::json!({"objectId": "a"})],
            }
        );
        let many = parse_event(br#"{"type":"record.deleted","data":{"objectType":"DEAL","records":[{"objectId":"a","modifiedDate":"2024-01-01T00:00:00Z"}]}}"#).unwrap();
        let Event::Records { records, .. } = many else {
            panic!()
        };
        assert_eq!(records[0]["isDeleted"], true);
    }

    #[test]
    fn unknown_type_lists_known_ones() {
        let err = parse_event(br#"{"type":"record.moved","data":{}}"#).unwrap_err();
        assert_eq!(err[0].rule, "type.unknown");
        assert!(err[0].message.contains("record.upserted"));
    }

    #[test]
    fn shape_errors() {
        assert_eq!(parse_event(b"[1]").unwrap_err()[0].rule, "body.object");
        assert_eq!(parse_event(b"{").unwrap_err()[0].rule, "body.json");
        assert_eq!(
            parse_event(br#"{"data":{}}"#).unwrap_err()[0].rule,
            "type.required"
        );
        assert_eq!(
            parse_event(br#"{"type":"record.upserted","data":{"objectType":"ACCOUNT","record":{},"records":[]}}"#).unwrap_err()[0].rule,
            "records.shape"
        );
        assert_eq!(
            parse_event(br#"{"type":"schema.updated","data":{"objectType":"ACCOUNT"}}"#)
                .unwrap_err()[0]
                .rule,
            "fields.required"
        );
        assert_eq!(
            parse_event(br#"{"type":"integration.deleted"}"#).unwrap(),
            Event::IntegrationDeleted
        );
    }
}
