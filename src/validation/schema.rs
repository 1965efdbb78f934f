//! Validation of a custom-field schema upload (`POST /v2/crm/entity-schema`, API-NOTES §1.4, §2.4).
//!
//! Besides the per-field rules, two rules protect the customer's data, because Gong enforces
//! them destructively or late:
//! - every request must carry the **full** field list (omitting a previously accepted field is
//!   an error at Gong; deleting is done by sending the field with `isDeleted: true`);
//! - changing a field's `type` makes Gong create a new field and **delete the old one's data**,
//!   so it is refused unless the caller explicitly allows it.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::datetime::parse_gong_datetime;
use super::{excerpt, json_kind, Capped, Violation, MAX_BODY_BYTES};
use crate::gong::models::{
    ObjectType, SchemaField, FIELD_TYPES, REFERENCE_TARGETS, SCHEMA_OBJECT_TYPES,
};

/// A schema upload that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSchema {
    pub object_type: ObjectType,
    /// Exactly what to send to Gong: the request's fields, in order. (Keys `SchemaField` does not
    /// know are dropped, and a legacy `name` key is sent as `uniqueName`.)
    pub fields: Vec<SchemaField>,
    /// What to keep as the "last accepted schema" once Gong accepts: `fields` minus those sent
    /// with `isDeleted: true`.
    pub stored_after_accept: Vec<SchemaField>,
    /// uniqueNames whose type changed (non-empty only when `allow_type_change`).
    pub type_changes: Vec<String>,
}

/// Validates a schema upload for `object_type` against Gong's rules and against `previous`, the
/// last schema Gong accepted for that type (if known).
pub fn validate_schema(
    object_type: &str,
    body: &[u8],
    previous: Option<&[SchemaField]>,
    allow_type_change: bool,
) -> Result<ValidSchema, Vec<Violation>> {
    let mut out = Capped::new(usize::MAX);

    let parsed_type = ObjectType::parse_schema(object_type);
    if parsed_type.is_none() {
        let hint = match ObjectType::parse_upload(object_type) {
            Some(t) => format!(" ({t} has no custom-field schema at Gong)"),
            None if ObjectType::parse_schema(&object_type.to_ascii_uppercase()).is_some() => {
                " (object types are case-sensitive)".to_owned()
            }
            None => String::new(),
        };
        out.push(
            Violation::new(
                "objectType.invalid",
                format!(
                    "objectType {:?} is not valid for a schema; allowed: {}{hint}",
                    excerpt(object_type),
                    SCHEMA_OBJECT_TYPES.join(", ")
                ),
            )
            .with_field("objectType"),
        );
    }

    let Some(items) = parse_body(body, &mut out) else {
        return Err(finish(out));
    };

    // Parse each element on its own, so one malformed field is reported with its index instead
    // of failing the whole body with a single serde error.
    let mut fields: Vec<SchemaField> = Vec::with_capacity(items.len());
    // The request index of each entry of `fields` (they differ once an element is malformed).
    let mut positions: Vec<usize> = Vec::with_capacity(items.len());
    // Every uniqueName the request mentions, even on malformed elements, so that a malformed
    // element is not also reported as "missing".
    let mut mentioned: HashSet<String> = HashSet::new();
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Value::Object(map) => {
                if let Some(name) = map
                    .get("uniqueName")
                    .or_else(|| map.get("name"))
                    .and_then(Value::as_str)
                {
                    mentioned.insert(name.to_owned());
                }
                if let Some(field) = parse_field(i, map, &mut out) {
                    fields.push(field);
                    positions.push(i);
                }
            }
            other => out.push(
                Violation::new(
                    "field.not_object",
                    format!(
                        "each schema field must be a JSON object, got {}",
                        json_kind(&other)
                    ),
                )
                .with_index(Some(i)),
            ),
        }
    }

    let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(fields.len());
    for (f, &i) in fields.iter().zip(&positions) {
        check_field(f, &mut by_name, i, &mut out);
    }

    let mut type_changes = Vec::new();
    if let Some(previous) = previous {
        let sent: HashMap<&str, (usize, &SchemaField)> = fields
            .iter()
            .zip(&positions)
            .filter_map(|(f, &i)| f.unique_name.as_deref().map(|n| (n, (i, f))))
            .rev() // the first occurrence wins on duplicates (already reported)
            .collect();
        let mut reported: HashSet<&str> = HashSet::new();
        for old in previous {
            if old.is_deleted == Some(true) {
                continue;
            }
            let Some(name) = old.unique_name.as_deref().filter(|n| !n.trim().is_empty()) else {
                continue;
            };
            if !reported.insert(name) {
                continue;
            }
            match sent.get(name) {
                None if mentioned.contains(name) => {}
                None => out.push(
                    Violation::new(
                        "schema.field_missing",
                        format!(
                            "field {:?} was accepted before but is missing: Gong requires the full list of custom fields on every upload; to remove a field, send it with \"isDeleted\": true",
                            excerpt(name)
                        ),
                    )
                    .with_field(name),
                ),
                Some(&(index, new)) => {
                    if new.is_deleted == Some(true) {
                        continue; // deleting: its data goes anyway, by request
                    }
                    let (Some(old_type), Some(new_type)) = (old.field_type.as_deref(), new.field_type.as_deref()) else {
                        continue;
                    };
                    if old_type == new_type || !FIELD_TYPES.contains(&new_type) {
                        continue;
                    }
                    if allow_type_change {
                        type_changes.push(name.to_owned());
                    } else {
                        out.push(
                            Violation::new(
                                "schema.type_change",
                                format!(
                                    "field {:?} would change type from {old_type} to {new_type}: Gong then creates a new field and deletes all data stored in the old one; send it with type {old_type}, or explicitly allow the type change",
                                    excerpt(name)
                                ),
                            )
                            .with_index(Some(index))
                            .with_field(name),
                        );
                    }
                }
            }
        }
    }

    match parsed_type {
        Some(object_type) if out.is_empty() => {
            let stored_after_accept = fields
                .iter()
                .filter(|f| f.is_deleted != Some(true))
                .cloned()
                .collect();
            Ok(ValidSchema {
                object_type,
                fields,
                stored_after_accept,
                type_changes,
            })
        }
        _ => Err(finish(out)),
    }
}

/// Every violation: a schema is small (one entry per custom field), and the caller caps the
/// list it answers with at [`super::MAX_VIOLATIONS`] while reporting the true total.
fn finish(out: Capped) -> Vec<Violation> {
    out.into_list()
}

/// The body's elements; `None` (with the violation in `out`) when it is not a JSON array.
fn parse_body(body: &[u8], out: &mut Capped) -> Option<Vec<Value>> {
    let problem = if body.len() > MAX_BODY_BYTES {
        Violation::new(
            "body.too_large",
            format!(
                "body has {} bytes; at most {MAX_BODY_BYTES} are accepted",
                body.len()
            ),
        )
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(items)) => return Some(items),
            Ok(other) => Violation::new(
            "body.json",
            format!(
                "the body must be a bare JSON array of field objects, not wrapped in anything; got {}",
                json_kind(&other)
                ),
            ),
            Err(e) => Violation::new("body.json", format!("the body is not valid JSON: {e}")).with_line(Some(e.line())),
        }
    };
    out.push(problem);
    None
}

/// Checks the JSON types of the known members, then deserialises. `None` when malformed (the
/// violations are in `out`).
fn parse_field(i: usize, map: Map<String, Value>, out: &mut Capped) -> Option<SchemaField> {
    let label = map
        .get("uniqueName")
        .or_else(|| map.get("name"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("uniqueName")
        .to_owned();
    let mut ok = true;
    for (key, value) in &map {
        let expected = match key.as_str() {
            "uniqueName" | "name" | "label" | "type" | "lastModified" | "referenceTo" => {
                (value.is_null() || value.is_string())
                    .then_some(())
                    .ok_or("a string")
            }
            "isDeleted" => (value.is_null() || value.is_boolean())
                .then_some(())
                .ok_or("true or false"),
            "orderedValueList" => {
                let fine = value.is_null()
                    || value
                        .as_array()
                        .is_some_and(|a| a.iter().all(Value::is_string));
                fine.then_some(()).ok_or("an array of strings")
            }
            _ => Ok(()), // unknown keys are ignored, as Gong may add some
        };
        if let Err(expected) = expected {
            ok = false;
            out.push(
                Violation::new(
                    format!("{key}.type"),
                    format!("{key} must be {expected}, got {}", json_kind(value)),
                )
                .with_index(Some(i))
                .with_field(label.clone()),
            );
        }
    }
    if !ok {
        return None;
    }
    match serde_json::from_value::<SchemaField>(Value::Object(map)) {
        Ok(f) => Some(f),
        Err(e) => {
            // E.g. both `uniqueName` and its legacy alias `name`.
            out.push(
                Violation::new(
                    "field.invalid",
                    format!("schema field could not be read: {e}"),
                )
                .with_index(Some(i))
                .with_field(label),
            );
            None
        }
    }
}

/// The per-field rules of API-NOTES §2.4.
fn check_field<'f>(
    f: &'f SchemaField,
    by_name: &mut HashMap<&'f str, usize>,
    i: usize,
    out: &mut Capped,
) {
    let name = f.unique_name.as_deref().filter(|n| !n.trim().is_empty());
    let label = name.unwrap_or("uniqueName");
    let at = |rule: &str, message: String| {
        Violation::new(rule, message)
            .with_index(Some(i))
            .with_field(label)
    };

    match name {
        None => out.push(at(
            "uniqueName.required",
            "uniqueName is required (the field's key in records)".into(),
        )),
        Some(n) => {
            if let Some(first) = by_name.get(n) {
                out.push(at(
                    "uniqueName.duplicate",
                    format!(
                        "uniqueName {:?} is also used by field {first}; uniqueNames must be unique",
                        excerpt(n)
                    ),
                ));
            } else {
                by_name.insert(n, i);
            }
        }
    }

    if f.label.as_deref().is_none_or(|l| l.trim().is_empty()) {
        out.push(at(
            "label.required",
            "label is required (the name shown in Gong)".into(),
        ));
    }

    let field_type = f.field_type.as_deref();
    match field_type {
        None => out.push(at(
            "type.required",
            format!("type is required; one of {}", FIELD_TYPES.join(", ")),
        )),
        Some(t) if FIELD_TYPES.contains(&t) => {}
        Some(t) => {
            let hint = if FIELD_TYPES.contains(&t.to_ascii_uppercase().as_str()) {
                " (types are case-sensitive)"
            } else {
                ""
            };
            out.push(at(
                "type.invalid",
                format!(
                    "type {:?} is not one of {}{hint}",
                    excerpt(t),
                    FIELD_TYPES.join(", ")
                ),
            ));
        }
    }

    if field_type == Some("PICKLIST") {
        match f.ordered_value_list.as_deref() {
            None | Some([]) => out.push(at(
                "orderedValueList.required",
                "a PICKLIST needs a non-empty orderedValueList".into(),
            )),
            Some(values) => {
                let mut seen = HashSet::with_capacity(values.len());
                let mut dups: Vec<&str> = values
                    .iter()
                    .map(String::as_str)
                    .filter(|v| !seen.insert(*v))
                    .collect();
                dups.dedup();
                if let Some(first) = dups.first() {
                    out.push(at(
                        "orderedValueList.duplicate",
                        format!(
                            "orderedValueList repeats {:?}; values must be unique",
                            excerpt(first)
                        ),
                    ));
                }
            }
        }
    }

    if field_type == Some("REFERENCE") {
        match f.reference_to.as_deref() {
            None | Some("") => out.push(at(
                "referenceTo.required",
                format!(
                    "a REFERENCE needs referenceTo, one of {}",
                    REFERENCE_TARGETS.join(", ")
                ),
            )),
            Some(t) if REFERENCE_TARGETS.contains(&t) => {}
            Some("BUSINESS_USER") => out.push(at(
                "referenceTo.invalid",
                "referenceTo must be USER, not BUSINESS_USER, to point at business users".into(),
            )),
            Some(t) => out.push(at(
                "referenceTo.invalid",
                format!(
                    "referenceTo {:?} is not one of {} (case-sensitive)",
                    excerpt(t),
                    REFERENCE_TARGETS.join(", ")
                ),
            )),
        }
    }

    if let Some(s) = f.last_modified.as_deref() {
        if let Err(problem) = parse_gong_datetime(s) {
            out.push(at(
                &format!("lastModified.{}", problem.rule_suffix()),
                format!("lastModified {:?} {problem}", excerpt(s)),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn f(name: &str, ty: &str) -> Value {
        json!({"uniqueName": name, "label": name, "type": ty})
    }

    fn body(fields: Value) -> Vec<u8> {
        serde_json::to_vec(&fields).unwrap()
    }

    fn prev(fields: Value) -> Vec<SchemaField> {
        serde_json::from_value(fields).unwrap()
    }

    fn rules(r: Result<ValidSchema, Vec<Violation>>) -> Vec<String> {
        match r {
            Ok(_) => vec![],
            Err(v) => v.into_iter().map(|v| v.rule).collect(),
        }
    }

    fn validate(fields: Value) -> Result<ValidSchema, Vec<Violation>> {
        validate_schema("ACCOUNT", &body(fields), None, false)
    }

    #[test]
    fn object_type_is_one_of_four_case_sensitive() {
        for t in ["ACCOUNT", "CONTACT", "DEAL", "LEAD"] {
            assert!(validate_schema(t, b"[]", None, false).is_ok(), "{t}");
        }
        for t in ["account", "BUSINESS_USER", "STAGE", "USER", ""] {
            let v = validate_schema(t, b"[]", None, false).unwrap_err();
            assert_eq!(v[0].rule, "objectType.invalid");
            assert!(
                v[0].message.contains("ACCOUNT, CONTACT, DEAL, LEAD"),
                "{}",
                v[0].message
            );
        }
    }

    #[test]
    fn body_must_be_a_json_array_of_objects() {
        assert_eq!(
            rules(validate_schema("LEAD", b"{\"fields\":[]}", None, false)),
            ["body.json"]
        );
        assert_eq!(
            rules(validate_schema("LEAD", b"[", None, false)),
            ["body.json"]
        );
        assert_eq!(
            rules(validate_schema("LEAD", b"", None, false)),
            ["body.json"]
        );
        assert_eq!(
            rules(validate(json!([f("a", "STRING"), 3]))),
            ["field.not_object"]
        );
        let ok = validate(json!([f("a", "STRING")])).unwrap();
        assert_eq!(ok.object_type, ObjectType::Account);
        assert_eq!(ok.fields.len(), 1);
    }

    #[test]
    fn members_must_have_json_types() {
        let v = validate(json!([{"uniqueName": "a", "label": 5, "type": "STRING"}])).unwrap_err();
        assert_eq!(v[0].rule, "label.type");
        assert_eq!((v[0].index, v[0].field.as_deref()), (Some(0), Some("a")));
        assert_eq!(
            rules(validate(
                json!([{"uniqueName": "a", "label": "A", "type": "PICKLIST", "orderedValueList": [1]}])
            )),
            ["orderedValueList.type"]
        );
        assert_eq!(
            rules(validate(
                json!([{"uniqueName": "a", "label": "A", "type": "STRING", "isDeleted": "no"}])
            )),
            ["isDeleted.type"]
        );
        // Unknown keys are tolerated; nulls are absent values.
        assert!(validate(json!([{"uniqueName": "a", "label": "A", "type": "STRING", "extra": 1, "referenceTo": null}])).is_ok());
    }

    #[test]
    fn unique_name_is_required() {
        assert_eq!(
            rules(validate(json!([{"label": "A", "type": "STRING"}]))),
            ["uniqueName.required"]
        );
        assert_eq!(
            rules(validate(
                json!([{"uniqueName": " ", "label": "A", "type": "STRING"}])
            )),
            ["uniqueName.required"]
        );
        // The legacy `name` key is accepted and sent as uniqueName.
        let ok = validate(json!([{"name": "a", "label": "A", "type": "STRING"}])).unwrap();
        assert_eq!(ok.fields[0].unique_name.as_deref(), Some("a"));
    }

    #[test]
    fn unique_name_is_unique() {
        let v = validate(json!([
            f("a", "STRING"),
            f("b", "STRING"),
            f("a", "NUMBER")
        ]))
        .unwrap_err();
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].rule.as_str(), v[0].index),
            ("uniqueName.duplicate", Some(2))
        );
        assert!(validate(json!([f("a", "STRING"), f("A", "STRING")])).is_ok());
    }

    #[test]
    fn label_is_required() {
        assert_eq!(
            rules(validate(json!([{"uniqueName": "a", "type": "STRING"}]))),
            ["label.required"]
        );
        assert_eq!(
            rules(validate(
                json!([{"uniqueName": "a", "label": "", "type": "STRING"}])
            )),
            ["label.required"]
        );
    }

    #[test]
    fn type_is_one_of_fourteen_case_sensitive() {
        for t in FIELD_TYPES {
            let mut field = f("a", t);
            field["orderedValueList"] = json!(["x"]);
            field["referenceTo"] = json!("ACCOUNT");
            assert!(validate(json!([field])).is_ok(), "{t}");
        }
        let v = validate(json!([f("a", "string")])).unwrap_err();
        assert_eq!(v[0].rule, "type.invalid");
        assert!(v[0].message.contains("DATE, DATETIME, NUMBER"));
        assert!(v[0].message.contains("case-sensitive"));
        assert_eq!(
            rules(validate(json!([{"uniqueName": "a", "label": "a"}]))),
            ["type.required"]
        );
    }

    #[test]
    fn picklist_needs_unique_values() {
        assert_eq!(
            rules(validate(json!([f("a", "PICKLIST")]))),
            ["orderedValueList.required"]
        );
        let mut p = f("a", "PICKLIST");
        p["orderedValueList"] = json!([]);
        assert_eq!(
            rules(validate(json!([p.clone()]))),
            ["orderedValueList.required"]
        );
        p["orderedValueList"] = json!(["Analyst", "Buyer", "Analyst"]);
        let v = validate(json!([p.clone()])).unwrap_err();
        assert_eq!(v[0].rule, "orderedValueList.duplicate");
        assert!(v[0].message.contains("Analyst"));
        p["orderedValueList"] = json!(["Analyst", "Buyer"]);
        assert!(validate(json!([p])).is_ok());
    }

    #[test]
    fn reference_needs_a_valid_target() {
        assert_eq!(
            rules(validate(json!([f("a", "REFERENCE")]))),
            ["referenceTo.required"]
        );
        let mut r = f("a", "REFERENCE");
        r["referenceTo"] = json!("BUSINESS_USER");
        let v = validate(json!([r.clone()])).unwrap_err();
        assert_eq!(v[0].rule, "referenceTo.invalid");
        assert!(v[0].message.contains("USER, not BUSINESS_USER"));
        r["referenceTo"] = json!("account");
        assert_eq!(rules(validate(json!([r.clone()]))), ["referenceTo.invalid"]);
        r["referenceTo"] = json!("USER");
        assert!(validate(json!([r])).is_ok());
    }

    #[test]
    fn last_modified_is_a_gong_datetime() {
        let mut a = f("a", "STRING");
        a["lastModified"] = json!("2020-12-17T13:45:01.000Z");
        assert_eq!(
            rules(validate(json!([a.clone()]))),
            ["lastModified.no_millis"]
        );
        a["lastModified"] = json!("2020-12-17T13:45:01");
        assert_eq!(
            rules(validate(json!([a.clone()]))),
            ["lastModified.offset_required"]
        );
        a["lastModified"] = json!("2020-12-17T13:45:01Z");
        assert!(validate(json!([a])).is_ok());
    }

    #[test]
    fn previous_fields_must_all_be_sent() {
        let previous = prev(
            json!([f("a", "STRING"), f("b", "NUMBER"), {"uniqueName": "old", "label": "o", "type": "STRING", "isDeleted": true}]),
        );
        let v = validate_schema(
            "DEAL",
            &body(json!([f("a", "STRING")])),
            Some(&previous),
            false,
        )
        .unwrap_err();
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].rule.as_str(), v[0].field.as_deref()),
            ("schema.field_missing", Some("b"))
        );
        assert!(v[0].message.contains("isDeleted"));
        // Sending it again, or sending it as deleted, satisfies the rule.
        assert!(validate_schema(
            "DEAL",
            &body(json!([f("a", "STRING"), f("b", "NUMBER")])),
            Some(&previous),
            false
        )
        .is_ok());
        let mut del = f("b", "NUMBER");
        del["isDeleted"] = json!(true);
        let ok = validate_schema(
            "DEAL",
            &body(json!([f("a", "STRING"), del])),
            Some(&previous),
            false,
        )
        .unwrap();
        assert_eq!(ok.fields.len(), 2);
        assert_eq!(ok.stored_after_accept.len(), 1);
        assert_eq!(ok.stored_after_accept[0].unique_name.as_deref(), Some("a"));
        assert_eq!(
            serde_json::to_value(&ok.fields).unwrap()[1]["isDeleted"],
            json!(true)
        );
    }

    #[test]
    fn empty_schema_only_when_nothing_live_was_accepted() {
        assert!(validate_schema("LEAD", b"[]", None, false).is_ok());
        let gone =
            prev(json!([{"uniqueName": "x", "label": "x", "type": "STRING", "isDeleted": true}]));
        assert!(validate_schema("LEAD", b"[]", Some(&gone), false).is_ok());
        let live = prev(json!([f("x", "STRING")]));
        assert_eq!(
            rules(validate_schema("LEAD", b"[]", Some(&live), false)),
            ["schema.field_missing"]
        );
    }

    #[test]
    fn type_changes_are_refused_unless_allowed() {
        let previous = prev(json!([f("a", "STRING"), f("b", "NUMBER")]));
        let changed = body(json!([f("a", "STRING"), f("b", "CURRENCY")]));
        let v = validate_schema("CONTACT", &changed, Some(&previous), false).unwrap_err();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].rule, "schema.type_change");
        assert_eq!(v[0].index, Some(1));
        assert!(
            v[0].message.contains("NUMBER")
                && v[0].message.contains("CURRENCY")
                && v[0].message.contains("delete")
        );
        let ok = validate_schema("CONTACT", &changed, Some(&previous), true).unwrap();
        assert_eq!(ok.type_changes, ["b"]);
        let same = validate_schema(
            "CONTACT",
            &body(json!([f("a", "STRING"), f("b", "NUMBER")])),
            Some(&previous),
            false,
        )
        .unwrap();
        assert!(same.type_changes.is_empty());
        assert_eq!(same.stored_after_accept, same.fields);
    }

    #[test]
    fn all_violations_are_reported_together() {
        let v = validate_schema(
            "account",
            &body(json!([{"type": "nope"}, f("a", "PICKLIST")])),
            None,
            false,
        )
        .unwrap_err();
        let r: Vec<&str> = v.iter().map(|v| v.rule.as_str()).collect();
        assert_eq!(
            r,
            [
                "objectType.invalid",
                "uniqueName.required",
                "label.required",
                "type.invalid",
                "orderedValueList.required"
            ]
        );
    }

    #[test]
    fn all_violations_are_returned() {
        let many: Vec<Value> = (0..1500)
            .map(|i| json!({"uniqueName": format!("f{i}"), "label": "x"}))
            .collect();
        let v = validate(Value::Array(many)).unwrap_err();
        // All are returned (the HTTP layer lists 1,000 and reports the total).
        assert_eq!(v.len(), 1500);
        assert!(
            v.iter()
                .all(|x| x.rule == "label.required" || x.rule == "type.required"),
            "{:?}",
            &v[..3]
        );
    }

    fn field_value() -> impl Strategy<Value = Value> {
        let name = prop::sample::select(vec!["a", "b", "c", "", " "]).prop_map(Value::from);
        let ty = prop::sample::select(vec![
            "STRING",
            "NUMBER",
            "PICKLIST",
            "REFERENCE",
            "string",
            "BOGUS",
        ])
        .prop_map(Value::from);
        let any_leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            "[A-Z_]{0,8}".prop_map(Value::String),
            prop::collection::vec("[a-c]{0,2}".prop_map(Value::String), 0..4)
                .prop_map(Value::Array),
            Just(json!("2020-12-17T13:45:01Z")),
            Just(json!("USER")),
        ];
        let key = prop::sample::select(vec![
            "uniqueName",
            "name",
            "label",
            "type",
            "lastModified",
            "isDeleted",
            "referenceTo",
            "orderedValueList",
            "x",
        ]);
        (
            name,
            ty,
            prop::collection::vec((key, any_leaf), 0..4),
            any::<bool>(),
        )
            .prop_map(|(n, t, extra, keep)| {
                let mut m = serde_json::Map::new();
                if keep {
                    m.insert("uniqueName".into(), n.clone());
                    m.insert("label".into(), n);
                    m.insert("type".into(), t);
                }
                for (k, v) in extra {
                    m.insert(k.to_owned(), v);
                }
                Value::Object(m)
            })
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(
            body in prop::collection::vec(any::<u8>(), 0..300),
            t in prop::sample::select(vec!["ACCOUNT", "LEAD", "STAGE", "account", ""]),
            with_previous in any::<bool>(),
            allow in any::<bool>(),
        ) {
            let previous = prev(json!([f("a", "STRING"), {"uniqueName": "b"}, {}]));
            let previous = with_previous.then_some(previous.as_slice());
            let _ = validate_schema(t, &body, previous, allow);
        }

        #[test]
        fn generated_schemas_never_panic_and_ok_means_clean(
            fields in prop::collection::vec(field_value(), 0..6),
            previous in prop::collection::vec(field_value(), 0..4),
            allow in any::<bool>(),
        ) {
            let previous: Vec<SchemaField> = previous
                .into_iter()
                .filter_map(|v| serde_json::from_value(v).ok())
                .collect();
            let body = serde_json::to_vec(&fields).unwrap();
            if let Ok(ok) = validate_schema("DEAL", &body, Some(&previous), allow) {
                prop_assert_eq!(ok.fields.len(), fields.len());
                prop_assert!(ok.stored_after_accept.iter().all(|f| f.is_deleted != Some(true)));
                prop_assert!(allow || ok.type_changes.is_empty());
                // Every live previous field was sent again.
                for p in previous.iter().filter(|p| p.is_deleted != Some(true)) {
                    if let Some(n) = p.unique_name.as_deref().filter(|n| !n.trim().is_empty()) {
                        prop_assert!(ok.fields.iter().any(|f| f.unique_name.as_deref() == Some(n)));
                    }
                }
            }
        }
    }
}
