//! The mapping in effect for a source: its compiled-in default, overridden field by field by the
//! document the user stored with `PUT /mappings/{source}` (`mapping/{source}` in KV).
//!
//! An override names objects by `from`; for one the default maps, its `fields` replace the
//! default's field by field (`null` removes a field) and `to` / `idPrefix` replace the default's
//! when given; an object the default does not map is added whole. The merged document must parse
//! and pass `Mapping::check`, or the override is refused (422) naming each entry.

use serde_json::{Map, Value};

use super::Receiver;
use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::mapping::{Mapping, MappingProblem};

fn key(source: &str) -> String {
    format!("{}{source}", crate::keys::MAPPING_PREFIX)
}

/// The stored override of a source, if any.
pub fn stored(bridge: &Bridge, source: &str) -> Result<Option<Value>, Fault> {
    bridge.store().get_json(&key(source))
}

/// The default document merged with an override (both as JSON).
pub fn merged(default: &str, over: Option<&Value>) -> Result<Value, Vec<MappingProblem>> {
    let problem = |field: &str, message: String| {
        vec![MappingProblem {
            field: field.into(),
            rule: "mapping.document".into(),
            message,
        }]
    };
    let mut doc: Value =
        serde_json::from_str(default).map_err(|e| problem("(default)", e.to_string()))?;
    let Some(over) = over else { return Ok(doc) };
    if let Some(delivery) = over.get("delivery") {
        doc["delivery"] = delivery.clone();
    }
    let Some(over_objects) = over.get("objects").and_then(Value::as_array) else {
        return Err(problem(
            "objects",
            "an override is {\"objects\": [{\"from\": …, \"fields\": {…}}]}".into(),
        ));
    };
    let objects = doc
        .get_mut("objects")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| problem("(default)", "no objects".into()))?;
    for (n, o) in over_objects.iter().enumerate() {
        let Some(from) = o.get("from").and_then(Value::as_str) else {
            return Err(problem(
                &format!("objects[{n}].from"),
                "each object names the CRM object it maps (\"from\")".into(),
            ));
        };
        match objects
            .iter_mut()
            .find(|d| d.get("from").and_then(Value::as_str) == Some(from))
        {
            Some(existing) => {
                for member in ["to", "idPrefix"] {
                    if let Some(v) = o.get(member) {
                        existing[member] = v.clone();
                    }
                }
                let fields = existing
                    .get_mut("fields")
                    .and_then(Value::as_object_mut)
                    .ok_or_else(|| problem(from, "the default has no fields".into()))?;
                for (field, rule) in o
                    .get("fields")
                    .and_then(Value::as_object)
                    .unwrap_or(&Map::new())
                {
                    if rule.is_null() {
                        fields.remove(field);
                    } else {
                        fields.insert(field.clone(), rule.clone());
                    }
                }
            }
            None => objects.push(o.clone()),
        }
    }
    Ok(doc)
}

/// Parses and checks a merged document.
pub fn parse(doc: Value) -> Result<Mapping, Vec<MappingProblem>> {
    let mapping: Mapping = serde_json::from_value(doc).map_err(|e| {
        vec![MappingProblem {
            field: "(document)".into(),
            rule: "mapping.document".into(),
            message: e.to_string(),
        }]
    })?;
    let problems = mapping.check();
    if problems.is_empty() {
        Ok(mapping)
    } else {
        Err(problems)
    }
}

/// The mapping in effect (a stored override that no longer parses is reported, not ignored).
pub fn effective(bridge: &Bridge, receiver: &dyn Receiver) -> Result<Mapping, Fault> {
    let over = stored(bridge, receiver.name())?;
    merged(receiver.default_mapping(), over.as_ref())
        .and_then(parse)
        .map_err(|problems| {
            Fault::Corrupt(format!(
                "the mapping of {} does not hold: {}",
                receiver.name(),
                problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })
}

/// Checks an override against the source's default: the mapping it makes, or every problem.
pub fn check(receiver: &dyn Receiver, over: &Value) -> Result<Mapping, Vec<MappingProblem>> {
    if over.get("delivery").is_some() && super::receiver(receiver.name()).is_some() {
        return Err(vec![MappingProblem {
            field: "delivery".into(),
            rule: "mapping.delivery".into(),
            message: format!(
                "{} deliveries are read by its receiver; \"delivery\" describes a custom source's body",
                receiver.name()
            ),
        }]);
    }
    merged(receiver.default_mapping(), Some(over)).and_then(parse)
}

/// Stores a checked override (the caller has done what the mapping asks of Gong first).
pub fn store(bridge: &Bridge, receiver: &dyn Receiver, over: &Value) -> Result<(), Fault> {
    bridge.store().put_json(&key(receiver.name()), over)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEFAULT: &str = r#"{"source": "s", "objects": [{"from": "deal", "to": "DEAL", "fields": {
        "objectId": {"path": "/id", "convert": "id"}, "modifiedDate": {"path": "/m", "convert": "datetime"}, "name": {"path": "/title"}, "amount": {"path": "/value", "convert": "number"}}}]}"#;

    #[test]
    fn an_override_replaces_removes_and_adds_field_by_field() {
        let over = json!({"objects": [
            {"from": "deal", "fields": {"name": {"path": "/name"}, "amount": null, "stage": {"path": "/stage_id"}}},
            {"from": "org", "to": "ACCOUNT", "fields": {"objectId": {"path": "/id", "convert": "id"}, "modifiedDate": {"path": "/m", "convert": "datetime"}}}
        ]});
        let mapping = parse(merged(DEFAULT, Some(&over)).unwrap()).unwrap();
        let deal = mapping.object("deal").unwrap();
        assert_eq!(deal.fields["name"].path.first(), Some("/name"));
        assert!(
            !deal.fields.contains_key("amount")
                && deal.fields.contains_key("stage")
                && deal.fields.contains_key("objectId")
        );
        assert!(mapping.object("org").is_some());
    }

    #[test]
    fn a_wrong_override_names_the_entry() {
        let unknown = json!({"objects": [{"from": "deal", "fields": {"name": {"path": "/title", "convert": "upper"}}}]});
        let problems = merged(DEFAULT, Some(&unknown)).and_then(parse).unwrap_err();
        assert!(problems[0].message.contains("upper"), "{problems:?}");
        let pointer = json!({"objects": [{"from": "deal", "fields": {"name": {"path": "title"}}}]});
        let problems = merged(DEFAULT, Some(&pointer)).and_then(parse).unwrap_err();
        assert_eq!(
            (problems[0].field.as_str(), problems[0].rule.as_str()),
            ("deal.name", "mapping.pointer")
        );
        let no_id = json!({"objects": [{"from": "deal", "fields": {"objectId": null}}]});
        assert_eq!(
            merged(DEFAULT, Some(&no_id)).and_then(parse).unwrap_err()[0].rule,
            "mapping.required"
        );
        assert!(merged(DEFAULT, Some(&json!({"fields": {}}))).is_err());
    }
}
