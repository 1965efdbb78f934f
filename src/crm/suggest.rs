//! Mappings suggested from the CRM's own field definitions (Pipedrive's `dealFields`,
//! `personFields`, `organizationFields`; Close's `custom_field/{lead,contact,opportunity}`): every
//! custom field becomes a Gong custom field with a
//! readable `uniqueName`, its label, the Gong type that fits and, for options, a picklist in the
//! CRM's order, read from both shapes Pipedrive sends (webhooks v2 wrap a value as
//! `{type, value}` or `{type, id}`; API v2 sends it bare). The result is an override document
//! for `PUT /mappings/{source}`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::gong::models::ObjectType;

/// One field list: the CRM object it describes and the Gong type it maps to.
pub struct FieldList {
    pub object: &'static str,
    pub to: ObjectType,
    /// Pipedrive's path of the list (`/api/v1/dealFields`).
    pub path: &'static str,
}

pub const PIPEDRIVE_FIELD_LISTS: &[FieldList] = &[
    FieldList {
        object: "organization",
        to: ObjectType::Account,
        path: "/api/v1/organizationFields",
    },
    FieldList {
        object: "person",
        to: ObjectType::Contact,
        path: "/api/v1/personFields",
    },
    FieldList {
        object: "deal",
        to: ObjectType::Deal,
        path: "/api/v1/dealFields",
    },
];

/// Close's custom-field lists (`/api/v1/custom_field/{object}/`); values sit on the record as
/// `custom.{id}` (developer.close.com, "Custom Fields").
pub const CLOSE_FIELD_LISTS: &[FieldList] = &[
    FieldList {
        object: "lead",
        to: ObjectType::Account,
        path: "/api/v1/custom_field/lead/",
    },
    FieldList {
        object: "contact",
        to: ObjectType::Contact,
        path: "/api/v1/custom_field/contact/",
    },
    FieldList {
        object: "opportunity",
        to: ObjectType::Deal,
        path: "/api/v1/custom_field/opportunity/",
    },
];

/// The rule for one Close custom field: choices → PICKLIST (several: STRINGARRAY), number →
/// NUMBER, date → DATE, datetime → DATETIME, url → URL, the rest (text, user, contact) → STRING.
fn close_rule(field: &Value) -> Result<Value, String> {
    let id = field["id"].as_str().unwrap_or_default();
    let label = field["name"].as_str().unwrap_or(id);
    // One JSON Pointer segment: the member's name has a dot, not a slash.
    let path = format!("/custom.{id}");
    let schema = |kind: &str| json!({"type": kind, "label": label});
    let many = field["accepts_multiple_values"] == Value::Bool(true);
    let choices: Vec<&str> = field["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    Ok(match field["type"].as_str().unwrap_or_default() {
        "choices" if many => json!({"path": path, "each": true, "schema": schema("STRINGARRAY")}),
        "choices" if !choices.is_empty() => {
            json!({"path": path, "schema": {"type": "PICKLIST", "label": label, "values": choices}})
        }
        "number" => json!({"path": path, "convert": "number", "schema": schema("NUMBER")}),
        "date" => json!({"path": path, "convert": "date", "schema": schema("DATE")}),
        "datetime" => json!({"path": path, "convert": "datetime", "schema": schema("DATETIME")}),
        "url" => json!({"path": path, "schema": schema("URL")}),
        _ if many => json!({"path": path, "each": true, "schema": schema("STRINGARRAY")}),
        "text" | "user" | "contact" | "textarea" => {
            json!({"path": path, "schema": schema("STRING")})
        }
        "hidden" => return Err(format!("{label:?} is hidden in Close")),
        other => {
            return Err(format!(
                "{label:?} is a {other:?} field, which has no Gong counterpart"
            ))
        }
    })
}

/// The override document for Close's `lists`, and what was left out and why.
pub fn suggest_close(lists: &[(&FieldList, Vec<Value>)]) -> Value {
    let mut objects = Vec::new();
    let mut skipped = Vec::new();
    let mut count = 0;
    for (list, fields) in lists {
        let mut used: BTreeSet<String> = BTreeSet::new();
        let mut rules = Map::new();
        for field in fields {
            let mut name = unique_name(field["name"].as_str().unwrap_or("field"));
            while crate::validation::is_standard_field(list.to, &name) || used.contains(&name) {
                name.push('2');
            }
            match close_rule(field) {
                Ok(rule) => {
                    used.insert(name.clone());
                    rules.insert(name, rule);
                    count += 1;
                }
                Err(why) => {
                    skipped.push(json!({"object": list.object, "key": field["id"], "reason": why}))
                }
            }
        }
        if !rules.is_empty() {
            objects.push(json!({"from": list.object, "fields": rules}));
        }
    }
    json!({"objects": objects, "suggested": count, "skipped": skipped})
}

/// Attio's attribute lists (`GET /v2/objects/{object}/attributes`); a record holds each
/// attribute's values as an array under `values.{api_slug}`, the current one first.
pub const ATTIO_FIELD_LISTS: &[FieldList] = &[
    FieldList {
        object: "companies",
        to: ObjectType::Account,
        path: "/v2/objects/companies/attributes",
    },
    FieldList {
        object: "people",
        to: ObjectType::Contact,
        path: "/v2/objects/people/attributes",
    },
    FieldList {
        object: "deals",
        to: ObjectType::Deal,
        path: "/v2/objects/deals/attributes",
    },
];

/// The rule for one Attio attribute (`options`: a select's option titles, in Attio's order).
fn attio_rule(attribute: &Value, options: &[String]) -> Result<Value, String> {
    let slug = attribute["api_slug"].as_str().unwrap_or_default();
    let label = attribute["title"].as_str().unwrap_or(slug);
    let first = |member: &str| format!("/values/{slug}/0/{member}");
    let schema = |kind: &str| json!({"type": kind, "label": label});
    let many = attribute["is_multiselect"] == Value::Bool(true);
    Ok(match attribute["type"].as_str().unwrap_or_default() {
        "select" if many => {
            json!({"path": format!("/values/{slug}"), "each": true, "take": "/option/title", "schema": schema("STRINGARRAY")})
        }
        "select" if !options.is_empty() => {
            json!({"path": first("option/title"), "schema": {"type": "PICKLIST", "label": label, "values": options}})
        }
        "text" => json!({"path": first("value"), "schema": schema("STRING")}),
        "number" | "rating" => {
            json!({"path": first("value"), "convert": "number", "schema": schema("NUMBER")})
        }
        "currency" => {
            json!({"path": first("currency_value"), "convert": "number", "schema": schema("CURRENCY")})
        }
        "checkbox" => {
            json!({"path": first("value"), "convert": "boolean", "schema": schema("BOOLEAN")})
        }
        "date" => json!({"path": first("value"), "convert": "date", "schema": schema("DATE")}),
        "timestamp" => {
            json!({"path": first("value"), "convert": "datetime", "schema": schema("DATETIME")})
        }
        "status" => json!({"path": first("status/title"), "schema": schema("STRING")}),
        "email-address" => {
            json!({"path": first("email_address"), "schema": schema("EMAILADDRESS")})
        }
        "phone-number" => {
            json!({"path": first("original_phone_number"), "schema": schema("PHONENUMBER")})
        }
        "domain" => json!({"path": first("domain"), "schema": schema("STRING")}),
        "personal-name" => json!({"path": first("full_name"), "schema": schema("STRING")}),
        "record-reference" => {
            json!({"path": first("target_record_id"), "schema": schema("STRING")})
        }
        "actor-reference" => {
            json!({"path": first("referenced_actor_id"), "schema": schema("STRING")})
        }
        "select" => return Err(format!("select {label:?} has no options")),
        other => {
            return Err(format!(
                "{label:?} is a {other:?} attribute, which has no Gong counterpart"
            ))
        }
    })
}

/// One Attio object's attributes, and its selects' option titles by attribute slug.
pub type AttioList<'l> = (&'l FieldList, Vec<Value>, BTreeMap<String, Vec<String>>);

/// The override document for Attio's `lists` (each with its attributes and the option titles of
/// its select attributes by slug), and what was left out and why.
pub fn suggest_attio(lists: &[AttioList]) -> Value {
    let mut objects = Vec::new();
    let mut skipped = Vec::new();
    let mut count = 0;
    for (list, attributes, options) in lists {
        let mut used: BTreeSet<String> = BTreeSet::new();
        let mut rules = Map::new();
        for attribute in attributes {
            // Attio's own attributes are mapped by the default mapping (or have no Gong field).
            if attribute["is_system_attribute"] != Value::Bool(false) {
                continue;
            }
            let slug = attribute["api_slug"].as_str().unwrap_or_default();
            let mut name = unique_name(attribute["title"].as_str().unwrap_or(slug));
            while crate::validation::is_standard_field(list.to, &name) || used.contains(&name) {
                name.push('2');
            }
            let none = Vec::new();
            match attio_rule(attribute, options.get(slug).unwrap_or(&none)) {
                Ok(rule) => {
                    used.insert(name.clone());
                    rules.insert(name, rule);
                    count += 1;
                }
                Err(why) => {
                    skipped.push(json!({"object": list.object, "key": slug, "reason": why}))
                }
            }
        }
        if !rules.is_empty() {
            objects.push(json!({"from": list.object, "fields": rules}));
        }
    }
    json!({"objects": objects, "suggested": count, "skipped": skipped})
}

/// `Customer type` → `customerType`: ASCII letters and digits, camelCase, starting with a letter.
pub fn unique_name(label: &str) -> String {
    let mut out = String::new();
    for (n, word) in label
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .enumerate()
    {
        let lower = word.to_ascii_lowercase();
        if n == 0 {
            out.push_str(&lower);
        } else {
            let mut chars = lower.chars();
            if let Some(first) = chars.next() {
                out.push(first.to_ascii_uppercase());
                out.extend(chars);
            }
        }
    }
    if !out.starts_with(|c: char| c.is_ascii_alphabetic()) {
        out.insert_str(0, "field");
    }
    out.truncate(60);
    out
}

/// The rule for one custom field, or why it is left out.
fn rule(field: &Value, unique: &str) -> Result<Value, String> {
    let key = field["key"].as_str().unwrap_or_default();
    let label = field["name"].as_str().unwrap_or(unique);
    let at = |member: &str| {
        json!([
            format!("/custom_fields/{key}/{member}"),
            format!("/custom_fields/{key}")
        ])
    };
    let schema = |kind: &str| json!({"type": kind, "label": label});
    let options: Vec<(String, String)> = field["options"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| {
            let id = match &o["id"] {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some((id, o["label"].as_str()?.to_owned()))
        })
        .collect();
    let map: Map<String, Value> = options
        .iter()
        .map(|(id, label)| (id.clone(), Value::String(label.clone())))
        .collect();
    let labels: Vec<&String> = options.iter().map(|(_, l)| l).collect();
    let kind = field["field_type"].as_str().unwrap_or_default();
    Ok(match kind {
        "varchar" | "varchar_auto" | "text" | "address" | "time" | "timerange" => {
            json!({"path": at("value"), "schema": schema("STRING")})
        }
        "phone" => json!({"path": at("value"), "schema": schema("PHONENUMBER")}),
        "double" | "int" => {
            json!({"path": at("value"), "convert": "number", "schema": schema("NUMBER")})
        }
        "monetary" => {
            json!({"path": format!("/custom_fields/{key}/value"), "convert": "number", "schema": schema("CURRENCY")})
        }
        "date" | "daterange" => {
            json!({"path": at("value"), "convert": "date", "schema": schema("DATE")})
        }
        "enum" if !options.is_empty() => {
            json!({"path": at("id"), "convert": "valueMap", "map": map,
            "schema": {"type": "PICKLIST", "label": label, "values": labels}})
        }
        "set" if !options.is_empty() => {
            json!({"path": at("values"), "each": true, "take": "/id", "convert": "valueMap", "map": map,
            "schema": schema("STRINGARRAY")})
        }
        "user" => json!({"path": at("id"), "convert": "reference", "object": "user",
            "schema": {"type": "REFERENCE", "label": label, "referenceTo": "USER"}}),
        "org" => json!({"path": at("id"), "convert": "reference", "object": "organization",
            "schema": {"type": "REFERENCE", "label": label, "referenceTo": "ACCOUNT"}}),
        "people" => json!({"path": at("id"), "convert": "reference", "object": "person",
            "schema": {"type": "REFERENCE", "label": label, "referenceTo": "CONTACT"}}),
        "enum" | "set" => return Err(format!("{kind} field {label:?} has no options")),
        other => {
            return Err(format!(
                "{label:?} is a {other:?} field, which has no Gong counterpart"
            ))
        }
    })
}

/// The override document for `lists` (each `(list, its field definitions)`), and what was left
/// out and why.
pub fn suggest(lists: &[(&FieldList, Vec<Value>)]) -> Value {
    let mut objects = Vec::new();
    let mut skipped = Vec::new();
    let mut count = 0;
    for (list, fields) in lists {
        let mut used: BTreeSet<String> = BTreeSet::new();
        let mut rules = Map::new();
        for field in fields {
            // Pipedrive's own fields have a plain key and edit_flag false.
            if field["edit_flag"] != Value::Bool(true) {
                continue;
            }
            let label = field["name"].as_str().unwrap_or("field");
            let mut name = unique_name(label);
            while crate::validation::is_standard_field(list.to, &name) || used.contains(&name) {
                name.push('2');
            }
            match rule(field, &name) {
                Ok(rule) => {
                    used.insert(name.clone());
                    rules.insert(name, rule);
                    count += 1;
                }
                Err(why) => {
                    skipped.push(json!({"object": list.object, "key": field["key"], "reason": why}))
                }
            }
        }
        if !rules.is_empty() {
            objects.push(json!({"from": list.object, "fields": rules}));
        }
    }
    json!({"objects": objects, "suggested": count, "skipped": skipped})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_custom_fields_are_suggested_and_read_from_custom_members() {
        let fields = vec![
            json!({"id": "cf_A", "name": "Source", "type": "choices", "choices": ["Web", "Referral"], "accepts_multiple_values": false}),
            json!({"id": "cf_B", "name": "Seats", "type": "number"}),
            json!({"id": "cf_C", "name": "Tags", "type": "choices", "choices": ["x", "y"], "accepts_multiple_values": true}),
            json!({"id": "cf_D", "name": "Secret", "type": "hidden"}),
        ];
        let suggestion = suggest_close(&[(&CLOSE_FIELD_LISTS[2], fields)]);
        assert_eq!(suggestion["suggested"], 3, "{suggestion}");
        let mapping = super::super::overrides::check(&super::super::close::Close, &suggestion)
            .expect("a valid override");
        let opportunity = mapping.object("opportunity").unwrap();
        let record = json!({"id": "oppo_1", "date_updated": "2026-01-01T00:00:00+00:00", "lead_id": "lead_1",
            "custom.cf_A": "Referral", "custom.cf_B": 12, "custom.cf_C": ["x", "y"]});
        let out = mapping
            .apply(
                opportunity,
                &crate::mapping::Input {
                    record: &record,
                    event: &json!({}),
                },
            )
            .unwrap();
        assert_eq!(
            (&out["source"], &out["seats"], &out["tags"]),
            (&json!("Referral"), &json!(12), &json!(["x", "y"])),
            "{out}"
        );
    }

    #[test]
    fn attio_attributes_are_suggested_from_their_value_arrays() {
        let attributes = vec![
            json!({"api_slug": "name", "title": "Name", "type": "text", "is_system_attribute": true}),
            json!({"api_slug": "tier", "title": "Tier", "type": "select", "is_system_attribute": false, "is_multiselect": false}),
            json!({"api_slug": "arr", "title": "ARR", "type": "currency", "is_system_attribute": false}),
            json!({"api_slug": "tags", "title": "Tags", "type": "select", "is_system_attribute": false, "is_multiselect": true}),
            json!({"api_slug": "where", "title": "HQ", "type": "location", "is_system_attribute": false}),
        ];
        let options = BTreeMap::from([(
            "tier".to_owned(),
            vec!["Gold".to_owned(), "Silver".to_owned()],
        )]);
        let suggestion = suggest_attio(&[(&ATTIO_FIELD_LISTS[0], attributes, options)]);
        assert_eq!(suggestion["suggested"], 3, "{suggestion}");
        assert_eq!(suggestion["skipped"][0]["key"], "where");
        let mapping = super::super::overrides::check(&super::super::attio::Attio, &suggestion)
            .expect("valid");
        let companies = mapping.object("companies").unwrap();
        let record = json!({"id": {"record_id": "c1"}, "values": {"name": [{"value": "Acme"}],
            "tier": [{"option": {"title": "Gold"}}], "arr": [{"currency_value": "499.00", "currency_code": "EUR"}],
            "tags": [{"option": {"title": "a"}}, {"option": {"title": "b"}}]}});
        let out = mapping
            .apply(
                companies,
                &crate::mapping::Input {
                    record: &record,
                    event: &json!({"fetched_at": "2026-01-01T00:00:00Z"}),
                },
            )
            .unwrap();
        assert_eq!(
            (&out["tier"], &out["arr"], &out["tags"]),
            (&json!("Gold"), &json!(499.0), &json!(["a", "b"])),
            "{out}"
        );
    }

    #[test]
    fn labels_become_readable_unique_names() {
        assert_eq!(unique_name("Customer Type"), "customerType");
        assert_eq!(unique_name("ARR (€, 2026)"), "arr2026");
        assert_eq!(unique_name("2nd contact"), "field2ndContact");
    }

    #[test]
    fn each_field_type_gets_its_gong_type_and_the_suggestion_is_a_valid_override() {
        let fields = vec![
            json!({"key": "title", "name": "Title", "field_type": "varchar", "edit_flag": false}),
            json!({"key": "a1", "name": "Segment", "field_type": "enum", "edit_flag": true, "options": [{"id": 12, "label": "SMB"}, {"id": 13, "label": "Enterprise"}]}),
            json!({"key": "a2", "name": "ARR", "field_type": "monetary", "edit_flag": true}),
            json!({"key": "a3", "name": "Renewal", "field_type": "date", "edit_flag": true}),
            json!({"key": "a4", "name": "Seats", "field_type": "double", "edit_flag": true}),
            json!({"key": "a5", "name": "CSM", "field_type": "user", "edit_flag": true}),
            json!({"key": "a6", "name": "Tags", "field_type": "set", "edit_flag": true, "options": [{"id": 1, "label": "A"}, {"id": 2, "label": "B"}]}),
            json!({"key": "a7", "name": "Name", "field_type": "varchar", "edit_flag": true}),
            json!({"key": "a8", "name": "Picture", "field_type": "picture", "edit_flag": true}),
        ];
        let suggestion = suggest(&[(&PIPEDRIVE_FIELD_LISTS[2], fields)]);
        let rules = &suggestion["objects"][0]["fields"];
        assert_eq!(
            rules["segment"]["schema"]["values"],
            json!(["SMB", "Enterprise"])
        );
        assert_eq!(rules["arr"]["schema"]["type"], "CURRENCY");
        assert_eq!(rules["renewal"]["schema"]["type"], "DATE");
        assert_eq!(rules["seats"]["schema"]["type"], "NUMBER");
        assert_eq!(rules["csm"]["schema"]["referenceTo"], "USER");
        assert_eq!(rules["tags"]["schema"]["type"], "STRINGARRAY");
        assert!(
            rules.get("name").is_none() && rules["name2"].is_object(),
            "a standard name is not taken"
        );
        assert_eq!(suggestion["skipped"][0]["key"], "a8");
        let mapping =
            super::super::overrides::check(&super::super::pipedrive::Pipedrive, &suggestion)
                .expect("the suggestion is a valid override");
        let deal = mapping.object("deal").unwrap();
        // Both shapes Pipedrive sends map alike.
        let event = json!({});
        for record in [
            json!({"id": 1, "update_time": "2026-01-01T00:00:00Z", "custom_fields": {"a1": {"type": "enum", "id": 13}, "a2": {"type": "monetary", "value": 5000, "currency": "EUR"}, "a6": {"type": "set", "values": [{"id": 1}, {"id": 2}]}, "a5": {"type": "user", "id": 7}}}),
            json!({"id": 1, "update_time": "2026-01-01T00:00:00Z", "custom_fields": {"a1": 13, "a2": {"value": 5000, "currency": "EUR"}, "a6": [1, 2], "a5": 7}}),
        ] {
            let out = mapping
                .apply(
                    deal,
                    &crate::mapping::Input {
                        record: &record,
                        event: &event,
                    },
                )
                .unwrap();
            assert_eq!(
                (&out["segment"], &out["arr"], &out["tags"], &out["csm"]),
                (
                    &json!("Enterprise"),
                    &json!(5000),
                    &json!(["A", "B"]),
                    &json!("7")
                ),
                "{out}"
            );
        }
    }
}
