//! Declarative mappings: how a CRM's record becomes a Gong record, field by field, as data (one
//! JSON document per source) rather than code. Each Gong field names where its value comes from
//! (RFC 6901 JSON Pointers into the CRM record, with fallbacks; `/$event/…` points into the
//! delivery's own metadata) and a typed converter (`convert.rs`). The result is Gong-shaped JSON,
//! judged afterwards by the same validation as every other record (`intake`): a mapping never
//! decides what Gong accepts.

mod convert;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use convert::Convert;

use crate::gong::models::ObjectType;

/// One source's mapping: which CRM objects become which Gong objects, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mapping {
    pub source: String,
    /// Custom sources only: where a delivery's records, object name and action are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryShape>,
    pub objects: Vec<ObjectMapping>,
}

/// How a custom source's delivery (a body the user built in their CRM) is read. Pointers are
/// RFC 6901; `object`, `action` and `id` point into each record, or into the whole delivery with
/// `/$event/…`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryShape {
    /// Where the records are: an array (each element a record) or one record. Empty: the body.
    #[serde(default)]
    pub records: String,
    /// The CRM object's name (matched against `from`). Absent: the URL's `?object=`, else the
    /// mapping's only object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// What happened; a value in `deleteWhen` deletes the record (otherwise it is upserted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default = "default_delete_when")]
    pub delete_when: Vec<String>,
}

fn default_delete_when() -> Vec<String> {
    ["delete", "deleted", "remove", "removed"]
        .map(String::from)
        .to_vec()
}

/// A custom field's declaration: how Gong's schema for the object type holds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchemaDeclaration {
    /// One of Gong's field types (`STRING`, `NUMBER`, `PICKLIST`, …).
    #[serde(rename = "type")]
    pub field_type: String,
    pub label: String,
    /// `PICKLIST`: the values, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    /// `REFERENCE`: the object type referred to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_to: Option<String>,
}

/// One CRM object → one Gong object type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMapping {
    /// The CRM's name for the object (`organization`, `lead`, `companies`).
    pub from: String,
    pub to: ObjectType,
    /// Put before every id of this object, here and in every reference to it (so that two
    /// sources, or two objects of one source, never share a Gong objectId).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id_prefix: String,
    /// Gong field → where its value comes from. `objectId` and `modifiedDate` are required.
    pub fields: BTreeMap<String, FieldRule>,
}

/// Where one Gong field's value comes from, and how it is converted (`convert.rs` says what each
/// converter does and which of the arguments below it reads).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldRule {
    /// JSON Pointers, tried in order: the first that holds a non-null value is used.
    #[serde(default, skip_serializing_if = "Paths::is_empty")]
    pub path: Paths,
    #[serde(default)]
    pub convert: Convert,
    /// Apply the converter to each element of an array (an array comes out; a single value is
    /// taken as an array of one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub each: bool,
    /// `constant`: the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// `valueMap`: source value (as text) → Gong value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<BTreeMap<String, Value>>,
    /// `minorUnits`: how many minor units make one (100 for cents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// `firstMatching`: the element's field that must equal `equals` (else the first element).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    /// `firstMatching`: what to take from the element found (a pointer into it); with `each`,
    /// what to take from every element.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub take: Option<String>,
    /// `splitName`: `first` or `last`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
    /// `template`: text with `{/pointer}` placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// `reference`: the CRM object referred to (its id prefix is applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// A field that is not one of Gong's standard fields: its declaration in Gong's schema
    /// (required; saving the mapping uploads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<SchemaDeclaration>,
}

/// One pointer or several (fallbacks).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Paths {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Paths {
    pub fn is_empty(&self) -> bool {
        matches!(self, Paths::None)
    }

    /// The first pointer (where the value is looked for first).
    pub fn first(&self) -> Option<&str> {
        self.all().first().copied()
    }

    fn all(&self) -> Vec<&str> {
        match self {
            Paths::None => Vec::new(),
            Paths::One(p) => vec![p.as_str()],
            Paths::Many(ps) => ps.iter().map(String::as_str).collect(),
        }
    }
}

/// What a mapping could not do with one record: the Gong field, the rule, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MappingProblem {
    pub field: String,
    pub rule: String,
    pub message: String,
}

impl std::fmt::Display for MappingProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.field, self.message, self.rule)
    }
}

/// The record and the delivery's metadata a mapping reads.
pub struct Input<'a> {
    pub record: &'a Value,
    /// Reached as `/$event/…` (Pipedrive's `meta`, Close's `event`, the time of arrival).
    pub event: &'a Value,
}

impl Input<'_> {
    /// The value at a pointer, `None` when absent or null.
    pub fn at(&self, pointer: &str) -> Option<&Value> {
        let found = match pointer.strip_prefix("/$event") {
            Some(rest) => self.event.pointer(rest),
            None => self.record.pointer(pointer),
        };
        found.filter(|v| !v.is_null())
    }
}

impl Mapping {
    pub fn object(&self, from: &str) -> Option<&ObjectMapping> {
        self.objects.iter().find(|o| o.from == from)
    }

    /// The id prefix of a CRM object (for references to it).
    pub fn prefix_of(&self, from: &str) -> &str {
        self.object(from).map_or("", |o| o.id_prefix.as_str())
    }

    /// Maps one record of `object`: the Gong record, or every problem found (all fields are
    /// tried, so the failure store lists them together).
    pub fn apply(
        &self,
        object: &ObjectMapping,
        input: &Input,
    ) -> Result<Value, Vec<MappingProblem>> {
        let mut out = Map::new();
        let mut problems = Vec::new();
        for (field, rule) in &object.fields {
            let found = rule.path.all().into_iter().find_map(|p| input.at(p));
            match convert::apply(rule, found, input, self, object) {
                Ok(Some(value)) => {
                    out.insert(field.clone(), value);
                }
                Ok(None) => {}
                Err((rule_name, message)) => problems.push(MappingProblem {
                    field: field.clone(),
                    rule: rule_name,
                    message,
                }),
            }
        }
        for required in ["objectId", "modifiedDate"] {
            if !out.contains_key(required) && !problems.iter().any(|p| p.field == required) {
                problems.push(MappingProblem {
                    field: required.into(),
                    rule: "mapping.required".into(),
                    message: format!(
                        "no value for {required} at {}",
                        object
                            .fields
                            .get(required)
                            .map_or("(not mapped)".to_owned(), |r| r.path.all().join(", "))
                    ),
                });
            }
        }
        if problems.is_empty() {
            Ok(Value::Object(out))
        } else {
            Err(problems)
        }
    }

    /// A deleted record in Gong's form: `{objectId, modifiedDate, isDeleted: true}`.
    pub fn deleted(
        &self,
        object: &ObjectMapping,
        id: &str,
        at: &str,
    ) -> Result<Value, Vec<MappingProblem>> {
        let modified =
            convert::datetime(&Value::String(at.to_owned())).map_err(|(rule, message)| {
                vec![MappingProblem {
                    field: "modifiedDate".into(),
                    rule,
                    message,
                }]
            })?;
        Ok(
            serde_json::json!({"objectId": format!("{}{id}", object.id_prefix), "modifiedDate": modified, "isDeleted": true}),
        )
    }

    /// Problems in the mapping document itself (unknown converter arguments are caught by its
    /// parser): pointers that are not RFC 6901, references to objects it does not map, and no
    /// rule for `objectId` or `modifiedDate`. Each names its entry.
    pub fn check(&self) -> Vec<MappingProblem> {
        let mut problems = Vec::new();
        for object in &self.objects {
            for required in ["objectId", "modifiedDate"] {
                if !object.fields.contains_key(required) {
                    problems.push(MappingProblem {
                        field: format!("{}.{required}", object.from),
                        rule: "mapping.required".into(),
                        message: format!("{} needs a rule for {required}", object.from),
                    });
                }
            }
            for (field, rule) in &object.fields {
                let entry = format!("{}.{field}", object.from);
                for pointer in rule.path.all().into_iter().chain(convert::pointers(rule)) {
                    if !(pointer.is_empty() || pointer.starts_with('/')) {
                        problems.push(MappingProblem { field: entry.clone(), rule: "mapping.pointer".into(), message: format!("{pointer:?} is not a JSON Pointer (RFC 6901: empty, or starting with '/')") });
                    }
                }
                if let Err(message) = convert::check(rule) {
                    problems.push(MappingProblem {
                        field: entry.clone(),
                        rule: "mapping.converter".into(),
                        message,
                    });
                }
                problems.extend(check_declaration(object.to, field, rule, &entry));
                if let Some(target) = rule
                    .object
                    .as_deref()
                    .filter(|_| rule.convert == Convert::Reference)
                {
                    if self.object(target).is_none() {
                        problems.push(MappingProblem {
                            field: entry.clone(),
                            rule: "mapping.reference".into(),
                            message: format!(
                                "refers to {target:?}, which this mapping does not map"
                            ),
                        });
                    }
                }
            }
        }
        problems
    }
}

/// A custom field needs a declaration Gong's schema can hold; a standard one needs none.
fn check_declaration(
    to: ObjectType,
    field: &str,
    rule: &FieldRule,
    entry: &str,
) -> Option<MappingProblem> {
    use crate::gong::models::{FIELD_TYPES, REFERENCE_TARGETS};
    let problem = |rule: &str, message: String| {
        Some(MappingProblem {
            field: entry.to_owned(),
            rule: rule.into(),
            message,
        })
    };
    let standard = crate::validation::is_standard_field(to, field);
    match (&rule.schema, standard) {
        (None, true) => None,
        (Some(_), true) => problem(
            "mapping.schema",
            format!("{field} is a standard {to} field: it takes no schema declaration"),
        ),
        (_, false) if !to.has_schema() => problem(
            "mapping.custom_field",
            format!("{field} is not a {to} field, and Gong has no custom fields for {to}"),
        ),
        (None, false) => problem(
            "mapping.custom_field",
            format!(
                "{field} is not a standard {to} field: declare it, e.g. \"schema\": {{\"type\": \"STRING\", \"label\": \"{field}\"}} (types: {})",
                FIELD_TYPES.join(", ")
            ),
        ),
        (Some(d), false) => {
            if !FIELD_TYPES.contains(&d.field_type.as_str()) {
                problem(
                    "mapping.schema.type",
                    format!(
                        "{:?} is not a Gong field type (types: {})",
                        d.field_type,
                        FIELD_TYPES.join(", ")
                    ),
                )
            } else if d.label.trim().is_empty() {
                problem("mapping.schema.label", format!("{field} needs a label"))
            } else if d.field_type == "PICKLIST" && d.values.as_ref().is_none_or(Vec::is_empty) {
                problem(
                    "mapping.schema.values",
                    format!("{field} is a PICKLIST: list its values, in order (\"values\")"),
                )
            } else if d.field_type == "REFERENCE"
                && !d
                    .reference_to
                    .as_deref()
                    .is_some_and(|t| REFERENCE_TARGETS.contains(&t))
            {
                problem(
                    "mapping.schema.referenceTo",
                    format!(
                        "{field} is a REFERENCE: say to what (\"referenceTo\": one of {})",
                        REFERENCE_TARGETS.join(", ")
                    ),
                )
            } else {
                None
            }
        }
    }
}

impl Mapping {
    /// The custom fields this mapping declares, per Gong object type, as schema fields
    /// (`uniqueName` = the Gong field's name). Two objects mapped to one type share its schema.
    pub fn declared_fields(&self) -> BTreeMap<ObjectType, Vec<crate::gong::models::SchemaField>> {
        let mut out: BTreeMap<ObjectType, Vec<crate::gong::models::SchemaField>> = BTreeMap::new();
        for object in &self.objects {
            for (name, rule) in &object.fields {
                let Some(d) = &rule.schema else { continue };
                let fields = out.entry(object.to).or_default();
                if fields
                    .iter()
                    .any(|f| f.unique_name.as_deref() == Some(name))
                {
                    continue;
                }
                fields.push(crate::gong::models::SchemaField {
                    unique_name: Some(name.clone()),
                    label: Some(d.label.clone()),
                    field_type: Some(d.field_type.clone()),
                    reference_to: d.reference_to.clone(),
                    ordered_value_list: d.values.clone(),
                    ..Default::default()
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
