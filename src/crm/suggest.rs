//! Mappings suggested from the CRM's own field definitions (Pipedrive's `dealFields`,
//! `personFields`, `organizationFields`; Close's `custom_field/{lead,contact,opportunity}`;
//! Attio's object attributes): every custom field becomes a Gong custom field with a readable
//! `uniqueName`, its label, the Gong type that fits and, for options, a picklist in the CRM's
//! order. Pipedrive's rules read both shapes it sends (webhooks v2 wrap a value as
//! `{type, value}` or `{type, id}`; API v2 sends it bare). The result is an override document
//! for `PUT /mappings/{source}`; one assembler serves every CRM, each CRM says only how one of
//! its fields is read.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::gong::models::ObjectType;

/// One field list: the CRM object it describes and the Gong type it maps to.
pub struct FieldList {
    pub object: &'static str,
    pub to: ObjectType,
    /// The CRM API's path of the list (`/api/v1/dealFields`).
    pub path: &'static str,
}

const fn list(object: &'static str, to: ObjectType, path: &'static str) -> FieldList {
    FieldList { object, to, path }
}

pub const PIPEDRIVE_FIELD_LISTS: &[FieldList] = &[
    list(
        "organization",
        ObjectType::Account,
        "/api/v1/organizationFields",
    ),
    list("person", ObjectType::Contact, "/api/v1/personFields"),
    list("deal", ObjectType::Deal, "/api/v1/dealFields"),
];

/// Close's custom-field lists; values sit on the record as `custom.{id}` (developer.close.com,
/// "Custom Fields").
pub const CLOSE_FIELD_LISTS: &[FieldList] = &[
    list("lead", ObjectType::Account, "/api/v1/custom_field/lead/"),
    list(
        "contact",
        ObjectType::Contact,
        "/api/v1/custom_field/contact/",
    ),
    list(
        "opportunity",
        ObjectType::Deal,
        "/api/v1/custom_field/opportunity/",
    ),
];

/// Attio's attribute lists; a record holds each attribute's values as an array under
/// `values.{api_slug}`, the current one first.
pub const ATTIO_FIELD_LISTS: &[FieldList] = &[
    list(
        "companies",
        ObjectType::Account,
        "/v2/objects/companies/attributes",
    ),
    list(
        "people",
        ObjectType::Contact,
        "/v2/objects/people/attributes",
    ),
    list("deals", ObjectType::Deal, "/v2/objects/deals/attributes"),
];

/// One suggested rule: where the value is, how it is read, and its Gong declaration.
struct Rule {
    path: Value,
    kind: &'static str,
    convert: Option<&'static str>,
    each: bool,
    take: Option<&'static str>,
    map: Option<Map<String, Value>>,
    object: Option<&'static str>,
    values: Option<Vec<String>>,
    reference_to: Option<&'static str>,
}

fn at(path: impl Into<Value>, kind: &'static str) -> Rule {
    Rule {
        path: path.into(),
        kind,
        convert: None,
        each: false,
        take: None,
        map: None,
        object: None,
        values: None,
        reference_to: None,
    }
}

impl Rule {
    fn convert(mut self, convert: &'static str) -> Rule {
        self.convert = Some(convert);
        self
    }
    fn each(mut self, take: Option<&'static str>) -> Rule {
        self.each = true;
        self.take = take;
        self
    }
    fn map(mut self, map: Map<String, Value>) -> Rule {
        self.convert = Some("valueMap");
        self.map = Some(map);
        self
    }
    fn picklist(mut self, values: Vec<String>) -> Rule {
        self.values = Some(values);
        self
    }
    fn reference(mut self, object: &'static str, to: &'static str) -> Rule {
        self.convert = Some("reference");
        self.object = Some(object);
        self.reference_to = Some(to);
        self
    }
    fn into_value(self, label: &str) -> Value {
        let mut schema = Map::new();
        schema.insert("type".into(), self.kind.into());
        schema.insert("label".into(), label.into());
        if let Some(values) = self.values {
            schema.insert("values".into(), values.into());
        }
        if let Some(to) = self.reference_to {
            schema.insert("referenceTo".into(), to.into());
        }
        let mut rule = Map::new();
        rule.insert("path".into(), self.path);
        if let Some(convert) = self.convert {
            rule.insert("convert".into(), convert.into());
        }
        if self.each {
            rule.insert("each".into(), true.into());
        }
        if let Some(take) = self.take {
            rule.insert("take".into(), take.into());
        }
        if let Some(map) = self.map {
            rule.insert("map".into(), Value::Object(map));
        }
        if let Some(object) = self.object {
            rule.insert("object".into(), object.into());
        }
        rule.insert("schema".into(), Value::Object(schema));
        Value::Object(rule)
    }
}

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// How one CRM describes a field: its key, its label, whether it is a custom one, and its rule.
pub struct Dialect {
    key: &'static str,
    label: &'static str,
    custom: fn(&Value) -> bool,
    /// The rule for a field (`options`: a select's titles, when listed apart), or why none.
    rule: fn(&Value, &[String]) -> Result<Rule, String>,
}

/// One CRM object's fields, and option titles listed apart (Attio's selects) by field key.
pub type Fields<'l> = (&'l FieldList, Vec<Value>, BTreeMap<String, Vec<String>>);

/// The override document for `lists`, read in `dialect`, and what was left out and why.
pub fn assemble(dialect: &Dialect, lists: &[Fields]) -> Value {
    let mut objects = Vec::new();
    let mut skipped = Vec::new();
    let mut count = 0;
    for (list, fields, options) in lists {
        let mut used: BTreeSet<String> = BTreeSet::new();
        let mut rules = Map::new();
        for field in fields.iter().filter(|f| (dialect.custom)(f)) {
            let key = text(field, dialect.key);
            let label = Some(text(field, dialect.label))
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| key.clone());
            let mut name = unique_name(&label);
            while crate::validation::is_standard_field(list.to, &name) || used.contains(&name) {
                name.push('2');
            }
            match (dialect.rule)(field, options.get(&key).map_or(&[][..], Vec::as_slice)) {
                Ok(rule) => {
                    used.insert(name.clone());
                    rules.insert(name, rule.into_value(&label));
                    count += 1;
                }
                Err(why) => {
                    let mut entry = Map::new();
                    entry.insert("object".into(), list.object.into());
                    entry.insert("key".into(), key.into());
                    entry.insert("reason".into(), why.into());
                    skipped.push(Value::Object(entry));
                }
            }
        }
        if !rules.is_empty() {
            let mut object = Map::new();
            object.insert("from".into(), list.object.into());
            object.insert("fields".into(), Value::Object(rules));
            objects.push(Value::Object(object));
        }
    }
    let mut out = Map::new();
    out.insert("objects".into(), objects.into());
    out.insert("suggested".into(), count.into());
    out.insert("skipped".into(), skipped.into());
    Value::Object(out)
}

/// `(option id → label)` and the labels in order, of a field's `options: [{id, label}]`.
fn options_of(field: &Value, label_key: &str) -> (Map<String, Value>, Vec<String>) {
    let mut map = Map::new();
    let mut labels = Vec::new();
    for option in field["options"].as_array().into_iter().flatten() {
        let (id, label) = (text(option, "id"), text(option, label_key));
        if !id.is_empty() && !label.is_empty() {
            map.insert(id, label.clone().into());
            labels.push(label);
        }
    }
    (map, labels)
}

/// Pipedrive: custom fields have `edit_flag: true`; values under `custom_fields.{key}`.
pub const PIPEDRIVE: Dialect = Dialect {
    key: "key",
    label: "name",
    custom: |f| f["edit_flag"] == Value::Bool(true),
    rule: pipedrive_rule,
};

fn pipedrive_rule(field: &Value, _: &[String]) -> Result<Rule, String> {
    let key = text(field, "key");
    let label = text(field, "name");
    // The webhook's wrapped member first, then the API's bare value.
    let both = |member: &str| {
        Value::from(vec![
            format!("/custom_fields/{key}/{member}"),
            format!("/custom_fields/{key}"),
        ])
    };
    let (map, labels) = options_of(field, "label");
    let kind = text(field, "field_type");
    Ok(match kind.as_str() {
        "varchar" | "varchar_auto" | "text" | "address" | "time" | "timerange" => {
            at(both("value"), "STRING")
        }
        "phone" => at(both("value"), "PHONENUMBER"),
        "double" | "int" => at(both("value"), "NUMBER").convert("number"),
        "monetary" => at(format!("/custom_fields/{key}/value"), "CURRENCY").convert("number"),
        "date" | "daterange" => at(both("value"), "DATE").convert("date"),
        "enum" if !labels.is_empty() => at(both("id"), "PICKLIST").map(map).picklist(labels),
        "set" if !labels.is_empty() => at(both("values"), "STRINGARRAY").each(Some("/id")).map(map),
        "user" => at(both("id"), "REFERENCE").reference("user", "USER"),
        "org" => at(both("id"), "REFERENCE").reference("organization", "ACCOUNT"),
        "people" => at(both("id"), "REFERENCE").reference("person", "CONTACT"),
        "enum" | "set" => return Err(format!("{kind} field {label:?} has no options")),
        other => {
            return Err(format!(
                "{label:?} is a {other:?} field, which has no Gong counterpart"
            ))
        }
    })
}

/// Close: every listed field is custom; values on the record as `custom.{id}`.
pub const CLOSE: Dialect = Dialect {
    key: "id",
    label: "name",
    custom: |_| true,
    rule: close_rule,
};

fn close_rule(field: &Value, _: &[String]) -> Result<Rule, String> {
    let label = text(field, "name");
    // One JSON Pointer segment: the member's name has a dot, not a slash.
    let path = format!("/custom.{}", text(field, "id"));
    let many = field["accepts_multiple_values"] == Value::Bool(true);
    let choices: Vec<String> = field["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    Ok(match text(field, "type").as_str() {
        "choices" if many => at(path, "STRINGARRAY").each(None),
        "choices" if !choices.is_empty() => at(path, "PICKLIST").picklist(choices),
        "number" => at(path, "NUMBER").convert("number"),
        "date" => at(path, "DATE").convert("date"),
        "datetime" => at(path, "DATETIME").convert("datetime"),
        "url" => at(path, "URL"),
        _ if many => at(path, "STRINGARRAY").each(None),
        "text" | "user" | "contact" | "textarea" => at(path, "STRING"),
        "hidden" => return Err(format!("{label:?} is hidden in Close")),
        other => {
            return Err(format!(
                "{label:?} is a {other:?} field, which has no Gong counterpart"
            ))
        }
    })
}

/// Attio: custom attributes have `is_system_attribute: false`; values under `values.{slug}`.
pub const ATTIO: Dialect = Dialect {
    key: "api_slug",
    label: "title",
    custom: |a| a["is_system_attribute"] == Value::Bool(false),
    rule: attio_rule,
};

fn attio_rule(attribute: &Value, options: &[String]) -> Result<Rule, String> {
    let slug = text(attribute, "api_slug");
    let label = text(attribute, "title");
    let first = |member: &str| format!("/values/{slug}/0/{member}");
    let many = attribute["is_multiselect"] == Value::Bool(true);
    Ok(match text(attribute, "type").as_str() {
        "select" if many => {
            at(format!("/values/{slug}"), "STRINGARRAY").each(Some("/option/title"))
        }
        "select" if !options.is_empty() => {
            at(first("option/title"), "PICKLIST").picklist(options.to_vec())
        }
        "text" => at(first("value"), "STRING"),
        "number" | "rating" => at(first("value"), "NUMBER").convert("number"),
        "currency" => at(first("currency_value"), "CURRENCY").convert("number"),
        "checkbox" => at(first("value"), "BOOLEAN").convert("boolean"),
        "date" => at(first("value"), "DATE").convert("date"),
        "timestamp" => at(first("value"), "DATETIME").convert("datetime"),
        "status" => at(first("status/title"), "STRING"),
        "email-address" => at(first("email_address"), "EMAILADDRESS"),
        "phone-number" => at(first("original_phone_number"), "PHONENUMBER"),
        "domain" => at(first("domain"), "STRING"),
        "personal-name" => at(first("full_name"), "STRING"),
        "record-reference" => at(first("target_record_id"), "STRING"),
        "actor-reference" => at(first("referenced_actor_id"), "STRING"),
        "select" => return Err(format!("select {label:?} has no options")),
        other => {
            return Err(format!(
                "{label:?} is a {other:?} attribute, which has no Gong counterpart"
            ))
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn close_custom_fields_are_suggested_and_read_from_custom_members() {
        let fields = vec![
            json!({"id": "cf_A", "name": "Source", "type": "choices", "choices": ["Web", "Referral"], "accepts_multiple_values": false}),
            json!({"id": "cf_B", "name": "Seats", "type": "number"}),
            json!({"id": "cf_C", "name": "Tags", "type": "choices", "choices": ["x", "y"], "accepts_multiple_values": true}),
            json!({"id": "cf_D", "name": "Secret", "type": "hidden"}),
        ];
        let suggestion = assemble(&CLOSE, &[(&CLOSE_FIELD_LISTS[2], fields, BTreeMap::new())]);
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
        let suggestion = assemble(&ATTIO, &[(&ATTIO_FIELD_LISTS[0], attributes, options)]);
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
        let suggestion = assemble(
            &PIPEDRIVE,
            &[(&PIPEDRIVE_FIELD_LISTS[2], fields, BTreeMap::new())],
        );
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
