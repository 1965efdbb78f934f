//! Each converter, mapping documents that are wrong, and a whole record through a mapping.

use serde_json::{json, Value};

use super::*;

fn mapping(fields: Value) -> Mapping {
    serde_json::from_value(json!({"source": "test", "objects": [
        {"from": "thing", "to": "DEAL", "idPrefix": "t-", "fields": fields},
        {"from": "org", "to": "ACCOUNT", "idPrefix": "o-", "fields": {"objectId": {"path": "/id", "convert": "id"}, "modifiedDate": {"path": "/m", "convert": "datetime"}}}
    ]}))
    .unwrap()
}

/// Maps `record` with one rule for `field` (plus objectId and modifiedDate).
fn convert(rule: Value, record: Value) -> Result<Option<Value>, Vec<MappingProblem>> {
    let m = mapping(
        json!({"objectId": {"path": "/id", "convert": "id"}, "modifiedDate": {"path": "/m", "convert": "datetime"}, "x": rule}),
    );
    let mut record = record;
    record["id"] = json!(7);
    record["m"] = json!("2024-01-02T03:04:05Z");
    let event = json!({"timestamp": "2024-05-06T07:08:09.123Z"});
    let out = m.apply(
        &m.objects[0],
        &Input {
            record: &record,
            event: &event,
        },
    )?;
    Ok(out.get("x").cloned())
}

fn ok(rule: Value, record: Value) -> Option<Value> {
    convert(rule, record).unwrap_or_else(|p| panic!("{p:?}"))
}

fn rule_of(rule: Value, record: Value) -> String {
    convert(rule, record).unwrap_err()[0].rule.clone()
}

#[test]
fn strings_numbers_integers_booleans() {
    assert_eq!(
        ok(json!({"path": "/a"}), json!({"a": "x"})),
        Some(json!("x"))
    );
    assert_eq!(
        ok(json!({"path": "/a"}), json!({"a": 12})),
        Some(json!("12")),
        "ids become strings"
    );
    assert_eq!(
        ok(json!({"path": "/a"}), json!({"a": null})),
        None,
        "null is absent"
    );
    assert_eq!(ok(json!({"path": "/a"}), json!({})), None);
    assert_eq!(
        rule_of(json!({"path": "/a"}), json!({"a": [1]})),
        "convert.string"
    );
    assert_eq!(
        ok(
            json!({"path": "/a", "convert": "number"}),
            json!({"a": "12.5"})
        ),
        Some(json!(12.5))
    );
    assert_eq!(
        rule_of(
            json!({"path": "/a", "convert": "number"}),
            json!({"a": "twelve"})
        ),
        "convert.number"
    );
    assert_eq!(
        ok(
            json!({"path": "/a", "convert": "integer"}),
            json!({"a": 6.0})
        ),
        Some(json!(6))
    );
    assert_eq!(
        rule_of(
            json!({"path": "/a", "convert": "integer"}),
            json!({"a": 6.5})
        ),
        "convert.integer"
    );
    assert_eq!(
        ok(
            json!({"path": "/a", "convert": "boolean"}),
            json!({"a": "false"})
        ),
        Some(json!(false))
    );
    assert_eq!(
        ok(json!({"path": "/a", "convert": "boolean"}), json!({"a": 1})),
        Some(json!(true))
    );
    assert_eq!(
        rule_of(
            json!({"path": "/a", "convert": "boolean"}),
            json!({"a": "yes"})
        ),
        "convert.boolean"
    );
    assert_eq!(
        ok(json!({"convert": "constant", "value": "X"}), json!({})),
        Some(json!("X"))
    );
}

#[test]
fn fallbacks_take_the_first_value_present() {
    let rule = json!({"path": ["/a", "/b", "/$event/timestamp"], "convert": "datetime"});
    assert_eq!(
        ok(
            rule.clone(),
            json!({"a": null, "b": "2024-01-01T00:00:00Z"})
        ),
        Some(json!("2024-01-01T00:00:00Z"))
    );
    assert_eq!(
        ok(rule, json!({})),
        Some(json!("2024-05-06T07:08:09Z")),
        "the delivery's own time, milliseconds dropped"
    );
}

#[test]
fn datetimes_in_every_form_crms_send() {
    let dt = |v: Value| {
        ok(
            json!({"path": "/a", "convert": "datetime"}),
            json!({"a": v}),
        )
    };
    assert_eq!(
        dt(json!("2022-11-24T13:18:55Z")),
        Some(json!("2022-11-24T13:18:55Z"))
    );
    assert_eq!(
        dt(json!("2022-11-24T15:35:58.675Z")),
        Some(json!("2022-11-24T15:35:58Z")),
        "milliseconds (Pipedrive leads)"
    );
    assert_eq!(
        dt(json!("2019-01-15T12:48:23.395000")),
        Some(json!("2019-01-15T12:48:23Z")),
        "microseconds, no offset (Close): UTC"
    );
    assert_eq!(
        dt(json!("2019-01-15T14:48:23.395000+02:00")),
        Some(json!("2019-01-15T12:48:23Z")),
        "an offset is applied"
    );
    assert_eq!(
        dt(json!("2022-11-24 15:39:48")),
        Some(json!("2022-11-24T15:39:48Z")),
        "a space, no zone (Pipedrive users)"
    );
    assert_eq!(
        dt(json!(1669304542)),
        Some(json!("2022-11-24T15:42:22Z")),
        "epoch seconds"
    );
    assert_eq!(
        dt(json!(1669304542123i64)),
        Some(json!("2022-11-24T15:42:22Z")),
        "epoch milliseconds"
    );
    assert_eq!(
        rule_of(
            json!({"path": "/a", "convert": "datetime"}),
            json!({"a": "yesterday"})
        ),
        "convert.datetime"
    );
}

#[test]
fn dates_minor_units_and_value_maps() {
    assert_eq!(
        ok(
            json!({"path": "/a", "convert": "date"}),
            json!({"a": "2024-03-01"})
        ),
        Some(json!("2024-03-01"))
    );
    assert_eq!(
        ok(
            json!({"path": "/a", "convert": "date"}),
            json!({"a": "2024-03-01T10:00:00Z"})
        ),
        Some(json!("2024-03-01"))
    );
    assert_eq!(
        rule_of(
            json!({"path": "/a", "convert": "date"}),
            json!({"a": "03/01/2024"})
        ),
        "convert.date"
    );
    assert_eq!(
        ok(
            json!({"path": "/a", "convert": "minorUnits"}),
            json!({"a": 100000})
        ),
        Some(json!(1000.0)),
        "cents (Close)"
    );
    assert_eq!(
        ok(
            json!({"path": "/a", "convert": "minorUnits", "scale": 1000}),
            json!({"a": 1500})
        ),
        Some(json!(1.5))
    );
    let status = json!({"path": "/a", "convert": "valueMap", "map": {"won": "WON", "true": false}});
    assert_eq!(ok(status.clone(), json!({"a": "won"})), Some(json!("WON")));
    assert_eq!(
        ok(status.clone(), json!({"a": true})),
        Some(json!(false)),
        "booleans are looked up as text"
    );
    assert_eq!(rule_of(status, json!({"a": "deleted"})), "convert.valueMap");
}

#[test]
fn first_matching_split_name_domain_and_template() {
    let primary = json!({"path": "/emails", "convert": "firstMatching", "when": "/primary", "equals": true, "take": "/value"});
    let emails =
        json!([{"value": "a@x.com", "primary": false}, {"value": "b@x.com", "primary": true}]);
    assert_eq!(
        ok(primary.clone(), json!({"emails": emails})),
        Some(json!("b@x.com"))
    );
    assert_eq!(
        ok(
            primary.clone(),
            json!({"emails": [{"value": "a@x.com", "primary": false}]})
        ),
        Some(json!("a@x.com")),
        "else the first"
    );
    assert_eq!(ok(primary, json!({"emails": []})), None);
    assert_eq!(
        ok(
            json!({"path": "/n", "convert": "splitName", "part": "first"}),
            json!({"n": "Mary Ann Smith"})
        ),
        Some(json!("Mary Ann"))
    );
    assert_eq!(
        ok(
            json!({"path": "/n", "convert": "splitName", "part": "last"}),
            json!({"n": "Mary Ann Smith"})
        ),
        Some(json!("Smith"))
    );
    assert_eq!(
        ok(
            json!({"path": "/n", "convert": "splitName", "part": "last"}),
            json!({"n": "Cher"})
        ),
        None
    );
    let domain = |v: &str| ok(json!({"path": "/u", "convert": "domain"}), json!({"u": v}));
    assert_eq!(
        domain("https://www.Acme.com/about?x=1"),
        Some(json!("acme.com"))
    );
    assert_eq!(domain("acme.io"), Some(json!("acme.io")));
    assert_eq!(domain("jane@Example.org"), Some(json!("example.org")));
    assert_eq!(
        rule_of(
            json!({"path": "/u", "convert": "domain"}),
            json!({"u": "not a url"})
        ),
        "convert.domain"
    );
    assert_eq!(
        ok(
            json!({"path": "/u", "convert": "domain", "each": true}),
            json!({"u": ["a.com", "https://a.com", "b.org"]})
        ),
        Some(json!(["a.com", "b.org"]))
    );
    let template = json!({"convert": "template", "template": "{/lead} – {/label}"});
    assert_eq!(
        ok(template.clone(), json!({"lead": "Acme", "label": "Won"})),
        Some(json!("Acme – Won"))
    );
    assert_eq!(ok(template, json!({})), None, "nothing filled in: left out");
}

/// An id prefix is applied identically to an object's own id and to every reference to it.
#[test]
fn id_prefixes_apply_to_ids_and_references() {
    let m = mapping(
        json!({"objectId": {"path": "/id", "convert": "id"}, "modifiedDate": {"path": "/m", "convert": "datetime"}, "accountId": {"path": "/org", "convert": "reference", "object": "org"}}),
    );
    let record = json!({"id": 5, "m": "2024-01-01T00:00:00Z", "org": {"id": 9, "name": "Acme"}});
    let out = m
        .apply(
            &m.objects[0],
            &Input {
                record: &record,
                event: &json!({}),
            },
        )
        .unwrap();
    assert_eq!(
        (out["objectId"].as_str(), out["accountId"].as_str()),
        (Some("t-5"), Some("o-9"))
    );
    let org = m
        .apply(
            &m.objects[1],
            &Input {
                record: &json!({"id": 9, "m": "2024-01-01T00:00:00Z"}),
                event: &json!({}),
            },
        )
        .unwrap();
    assert_eq!(org["objectId"], "o-9");
    assert_eq!(
        m.deleted(&m.objects[0], "5", "2024-02-02T00:00:00.5Z")
            .unwrap(),
        json!({"objectId": "t-5", "modifiedDate": "2024-02-02T00:00:00Z", "isDeleted": true})
    );
}

#[test]
fn every_problem_of_a_record_is_reported_with_its_field_and_rule() {
    let m = mapping(
        json!({"objectId": {"path": "/id", "convert": "id"}, "modifiedDate": {"path": "/m", "convert": "datetime"}, "amount": {"path": "/v", "convert": "number"}}),
    );
    let problems = m
        .apply(
            &m.objects[0],
            &Input {
                record: &json!({"v": "lots"}),
                event: &json!({}),
            },
        )
        .unwrap_err();
    let named: Vec<(&str, &str)> = problems
        .iter()
        .map(|p| (p.field.as_str(), p.rule.as_str()))
        .collect();
    assert_eq!(
        named,
        vec![
            ("amount", "convert.number"),
            ("objectId", "mapping.required"),
            ("modifiedDate", "mapping.required")
        ]
    );
}

#[test]
fn a_wrong_mapping_document_names_the_entry() {
    let unknown: Result<Mapping, _> = serde_json::from_value(
        json!({"source": "s", "objects": [{"from": "a", "to": "DEAL", "fields": {"x": {"path": "/a", "convert": "guess"}}}]}),
    );
    assert!(
        unknown.unwrap_err().to_string().contains("guess"),
        "an unknown converter is refused by name"
    );
    let typo: Result<Mapping, _> = serde_json::from_value(
        json!({"source": "s", "objects": [{"from": "a", "to": "DEAL", "fields": {"x": {"pathh": "/a"}}}]}),
    );
    assert!(typo.unwrap_err().to_string().contains("pathh"));
    let m: Mapping = serde_json::from_value(
        json!({"source": "s", "objects": [{"from": "a", "to": "DEAL", "fields": {
            "objectId": {"path": "id"},
            "x": {"path": "/x", "convert": "valueMap"},
            "y": {"path": "/y", "convert": "reference", "object": "nowhere"}
        }}]}),
    )
    .unwrap();
    let problems: Vec<(String, String)> =
        m.check().into_iter().map(|p| (p.field, p.rule)).collect();
    assert!(
        problems.contains(&("a.modifiedDate".into(), "mapping.required".into())),
        "{problems:?}"
    );
    assert!(
        problems.contains(&("a.objectId".into(), "mapping.pointer".into())),
        "{problems:?}"
    );
    assert!(
        problems.contains(&("a.x".into(), "mapping.converter".into())),
        "{problems:?}"
    );
    assert!(
        problems.contains(&("a.y".into(), "mapping.reference".into())),
        "{problems:?}"
    );
}

/// A field that is not one of Gong's standard fields must declare how Gong's schema holds it
/// (type, label, picklist values, reference target); a standard one must not.
#[test]
fn custom_fields_declare_their_schema() {
    let with = |rule: Value| {
        mapping(json!({"objectId": {"path": "/id", "convert": "id"}, "modifiedDate": {"path": "/m", "convert": "datetime"}, "x": rule}))
            .check()
            .into_iter()
            .map(|p| (p.field, p.rule))
            .collect::<Vec<_>>()
    };
    let named = |rule: &str| vec![("thing.x".to_owned(), rule.to_owned())];
    assert_eq!(with(json!({"path": "/x"})), named("mapping.custom_field"));
    assert_eq!(
        with(json!({"path": "/x", "schema": {"type": "TEXT", "label": "X"}})),
        named("mapping.schema.type")
    );
    assert_eq!(
        with(json!({"path": "/x", "schema": {"type": "STRING", "label": " "}})),
        named("mapping.schema.label")
    );
    assert_eq!(
        with(json!({"path": "/x", "schema": {"type": "PICKLIST", "label": "X"}})),
        named("mapping.schema.values")
    );
    assert_eq!(
        with(
            json!({"path": "/x", "schema": {"type": "REFERENCE", "label": "X", "referenceTo": "STAGE"}})
        ),
        named("mapping.schema.referenceTo")
    );
    assert!(with(
        json!({"path": "/x", "schema": {"type": "PICKLIST", "label": "X", "values": ["a"]}})
    )
    .is_empty());
    let standard = mapping(
        json!({"objectId": {"path": "/id", "convert": "id"}, "modifiedDate": {"path": "/m", "convert": "datetime"}, "name": {"path": "/n", "schema": {"type": "STRING", "label": "N"}}}),
    );
    assert_eq!(standard.check()[0].rule, "mapping.schema");
    let declared = mapping(json!({"objectId": {"path": "/id", "convert": "id"}, "modifiedDate": {"path": "/m", "convert": "datetime"}, "x": {"path": "/x", "schema": {"type": "NUMBER", "label": "X"}}})).declared_fields();
    assert_eq!(
        declared[&ObjectType::Deal][0].unique_name.as_deref(),
        Some("x")
    );
    let stage: Mapping = serde_json::from_value(json!({"source": "s", "objects": [{"from": "st", "to": "STAGE", "fields": {"objectId": {"path": "/id"}, "modifiedDate": {"path": "/m", "convert": "datetime"}, "x": {"path": "/x", "schema": {"type": "STRING", "label": "X"}}}}]})).unwrap();
    assert_eq!(
        stage.check()[0].rule,
        "mapping.custom_field",
        "STAGE has no custom fields"
    );
}
