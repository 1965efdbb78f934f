//! What saving a mapping asks of Gong's schemas: the custom fields it declares, merged into the
//! schema last accepted per object type (Gong wants the full list on every upload), with the
//! fields the source's previous mapping declared and this one drops sent as deleted, but only
//! when the user confirmed it (Gong deletes their data). Type changes are judged by the schema
//! validation itself (`allowTypeChange`), the same rule as `POST /schema/{objectType}`.

use std::collections::BTreeSet;

use crate::gong::models::{ObjectType, SchemaField};
use crate::mapping::{Mapping, MappingProblem};

/// One object type's schema to upload: the full list, in the order last accepted, new fields
/// after.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    pub object_type: ObjectType,
    pub fields: Vec<SchemaField>,
}

/// The uploads saving `new` (over `old`, the source's mapping before) needs; `previous` is the
/// schema last accepted for a type. Nothing to upload when the schema already holds every
/// declaration as declared.
pub fn plan(
    old: Option<&Mapping>,
    new: &Mapping,
    previous: &dyn Fn(ObjectType) -> Option<Vec<SchemaField>>,
    allow_removal: bool,
) -> Result<Vec<Upload>, Vec<MappingProblem>> {
    let declared_new = new.declared_fields();
    let declared_old = old.map(Mapping::declared_fields).unwrap_or_default();
    let types: BTreeSet<ObjectType> = declared_new
        .keys()
        .chain(declared_old.keys())
        .copied()
        .collect();
    let mut uploads = Vec::new();
    let mut problems = Vec::new();
    for object_type in types {
        let before = previous(object_type).unwrap_or_default();
        let wanted = declared_new.get(&object_type).cloned().unwrap_or_default();
        let mut fields: Vec<SchemaField> = before.clone();
        for declared in &wanted {
            match fields
                .iter_mut()
                .find(|f| f.unique_name == declared.unique_name)
            {
                Some(existing) => *existing = declared.clone(),
                None => fields.push(declared.clone()),
            }
        }
        let dropped: Vec<String> = declared_old
            .get(&object_type)
            .into_iter()
            .flatten()
            .filter_map(|f| f.unique_name.clone())
            .filter(|name| !wanted.iter().any(|w| w.unique_name.as_ref() == Some(name)))
            .filter(|name| before.iter().any(|b| b.unique_name.as_ref() == Some(name)))
            .collect();
        for name in &dropped {
            if !allow_removal {
                problems.push(MappingProblem {
                    field: format!("{object_type}.{name}"),
                    rule: "mapping.schema.removal".into(),
                    message: format!("{name} is no longer mapped, so it would be deleted from Gong's {object_type} schema, and Gong deletes its data: map it again, or confirm with ?allowFieldRemoval=true"),
                });
                continue;
            }
            if let Some(f) = fields
                .iter_mut()
                .find(|f| f.unique_name.as_ref() == Some(name))
            {
                f.is_deleted = Some(true);
            }
        }
        if fields != before {
            uploads.push(Upload {
                object_type,
                fields,
            });
        }
    }
    if problems.is_empty() {
        Ok(uploads)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping(extra: serde_json::Value) -> Mapping {
        let mut fields = json!({
            "objectId": {"path": "/id", "convert": "id"},
            "modifiedDate": {"path": "/m", "convert": "datetime"}
        });
        for (k, v) in extra.as_object().unwrap() {
            fields[k] = v.clone();
        }
        serde_json::from_value(
            json!({"source": "s", "objects": [{"from": "deal", "to": "DEAL", "fields": fields}]}),
        )
        .unwrap()
    }

    fn field(name: &str, kind: &str) -> SchemaField {
        SchemaField {
            unique_name: Some(name.into()),
            label: Some(name.into()),
            field_type: Some(kind.into()),
            ..SchemaField::default()
        }
    }

    #[test]
    fn declarations_join_the_accepted_schema_and_unchanged_ones_send_nothing() {
        let new = mapping(
            json!({"source_channel": {"path": "/c", "schema": {"type": "PICKLIST", "label": "Channel", "values": ["Web", "Phone"]}}}),
        );
        let kept = field("legacy", "STRING");
        let uploads = plan(None, &new, &|_| Some(vec![kept.clone()]), false).unwrap();
        assert_eq!(uploads.len(), 1);
        let names: Vec<_> = uploads[0]
            .fields
            .iter()
            .map(|f| f.unique_name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            ["legacy", "source_channel"],
            "the full list, old first"
        );
        assert_eq!(
            uploads[0].fields[1].ordered_value_list,
            Some(vec!["Web".into(), "Phone".into()])
        );
        let accepted = uploads[0].fields.clone();
        assert!(plan(Some(&new), &new, &|_| Some(accepted.clone()), false)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn dropping_a_declared_field_needs_confirmation() {
        let old = mapping(
            json!({"channel": {"path": "/c", "schema": {"type": "STRING", "label": "Channel"}}}),
        );
        let new = mapping(json!({}));
        let accepted = vec![field("channel", "STRING"), field("other", "STRING")];
        let problems = plan(Some(&old), &new, &|_| Some(accepted.clone()), false).unwrap_err();
        assert_eq!(
            (problems[0].field.as_str(), problems[0].rule.as_str()),
            ("DEAL.channel", "mapping.schema.removal")
        );
        let uploads = plan(Some(&old), &new, &|_| Some(accepted.clone()), true).unwrap();
        assert_eq!(uploads[0].fields[0].is_deleted, Some(true));
        assert_eq!(uploads[0].fields[1].is_deleted, None, "others stay");
        // A field Gong no longer has is not deleted again.
        assert!(plan(
            Some(&old),
            &new,
            &|_| Some(vec![field("other", "STRING")]),
            false
        )
        .unwrap()
        .is_empty());
    }
}
