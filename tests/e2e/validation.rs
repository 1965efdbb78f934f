//! Validation end to end (issue: validation): each rule family through the real `.wasm`, with
//! the exact problem+json answer (every rejection names record, field and rule) and what the
//! mock Gong did or did not receive. The rules themselves are unit-tested in `src/validation`.

use serde_json::{json, Value};

use crate::support::{MockResponse, TestApp, TestResponse};
use crate::{call, call_json, expect, registered_app};

const ENTITIES: &str = "/v2/crm/entities";
const ENTITY_SCHEMA: &str = "/v2/crm/entity-schema";
const LDJSON: &str = "application/x-ndjson";

// ----- what an error names -------------------------------------------------------------------

/// The identifying part of one `errors[]` / `warnings[]` / `rejected[]` entry (`None` = absent).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    index: Option<u64>,
    line: Option<u64>,
    object_id: Option<String>,
    field: Option<String>,
    rule: String,
}

/// A record problem in a JSON body: index, objectId (if the record has one), field, rule.
fn rec(index: u64, object_id: Option<&str>, field: &str, rule: &str) -> Named {
    Named {
        index: Some(index),
        line: None,
        object_id: object_id.map(str::to_owned),
        field: Some(field.to_owned()),
        rule: rule.to_owned(),
    }
}

/// A record problem in an LDJSON body: as [`rec`], plus the 1-based line.
fn rec_line(
    index: u64,
    line: u64,
    object_id: Option<&str>,
    field: Option<&str>,
    rule: &str,
) -> Named {
    Named {
        index: Some(index),
        line: Some(line),
        object_id: object_id.map(str::to_owned),
        field: field.map(str::to_owned),
        rule: rule.to_owned(),
    }
}

/// A schema problem: the field's index in the request (if any), its name, the rule.
fn field_err(index: Option<u64>, field: &str, rule: &str) -> Named {
    Named {
        index,
        line: None,
        object_id: None,
        field: Some(field.to_owned()),
        rule: rule.to_owned(),
    }
}

/// Every entry of a list of violations, each checked to carry a message.
fn named_list(list: &Value) -> Vec<Named> {
    let items = list
        .as_array()
        .unwrap_or_else(|| panic!("not a list of violations: {list}"));
    items
        .iter()
        .map(|e| {
            assert!(
                e["message"].as_str().is_some_and(|m| !m.is_empty()),
                "violation without a message: {e}"
            );
            Named {
                index: e["index"].as_u64(),
                line: e["line"].as_u64(),
                object_id: e["objectId"].as_str().map(str::to_owned),
                field: e["field"].as_str().map(str::to_owned),
                rule: e["rule"]
                    .as_str()
                    .unwrap_or_else(|| panic!("violation without a rule: {e}"))
                    .to_owned(),
            }
        })
        .collect()
}

/// Asserts a complete (untruncated) 422 validation problem and returns what its errors name.
fn rejected(response: &TestResponse) -> Vec<Named> {
    let body = expect(response, 422);
    assert_eq!(
        body["type"], "urn:gong-crm-bridge:problem:validation",
        "{body}"
    );
    let errors = named_list(&body["errors"]);
    assert_eq!(body["totalErrors"], errors.len(), "{body}");
    assert_eq!(body["truncated"], false, "{body}");
    errors
}

// ----- what Gong received --------------------------------------------------------------------

fn assert_gong_untouched(app: &TestApp) {
    let got: Vec<String> = app
        .mock()
        .received()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(got.is_empty(), "Gong must receive nothing, got {got:?}");
}

fn entity_uploads(app: &TestApp) -> usize {
    app.mock().received_on("POST", ENTITIES).len()
}

/// The records of the only entity upload Gong received, in file order.
fn uploaded_records(app: &TestApp) -> Vec<Value> {
    let uploads = app.mock().received_on("POST", ENTITIES);
    assert_eq!(uploads.len(), 1, "exactly one upload expected");
    let part = uploads[0].part("dataFile").expect("a dataFile part");
    part.lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?} is not JSON: {e}")))
        .collect()
}

fn ids(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["objectId"].as_str().expect("objectId"))
        .collect()
}

/// The schema bodies Gong received, in order.
fn schema_uploads(app: &TestApp) -> Vec<Value> {
    app.mock()
        .received_on("POST", ENTITY_SCHEMA)
        .iter()
        .map(|r| r.json())
        .collect()
}

// ----- requests ------------------------------------------------------------------------------

async fn post_schema(app: &TestApp, path: &str, fields: &Value) -> TestResponse {
    call_json(app, "POST", path, fields).await
}

async fn post_records(app: &TestApp, path: &str, records: &Value) -> TestResponse {
    call_json(app, "POST", path, records).await
}

async fn post_ldjson(app: &TestApp, path: &str, body: impl Into<Vec<u8>>) -> TestResponse {
    call(app, "POST", path, &[("content-type", LDJSON)], body).await
}

fn ldjson(records: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        serde_json::to_writer(&mut out, r).unwrap();
        out.push(b'\n');
    }
    out
}

// ----- records -------------------------------------------------------------------------------

/// Only the two fields every type needs (CONTACT, LEAD have no other required field).
fn bare(id: &str, modified: &str) -> Value {
    json!({"objectId": id, "modifiedDate": modified})
}

fn account(id: &str, modified: &str) -> Value {
    json!({"objectId": id, "modifiedDate": modified, "name": format!("Account {id}")})
}

fn deal(id: &str) -> Value {
    json!({"objectId": id, "modifiedDate": "2024-05-01T10:00:00Z", "accountId": "acc-1", "name": "Big deal",
           "status": "OPEN", "closeDate": "2024-09-04", "amount": 1200.5, "createdDate": "2024-04-01T08:00:00+02:00"})
}

fn with(mut record: Value, key: &str, value: Value) -> Value {
    record[key] = value;
    record
}

fn without(mut record: Value, key: &str) -> Value {
    record.as_object_mut().expect("a record object").remove(key);
    record
}

// =============================================================================================
// Schemas
// =============================================================================================

/// A fresh app refuses the schema with exactly `want`, says nothing went to Gong, sends nothing
/// and keeps nothing.
async fn assert_schema_rejected(
    object_type: &str,
    fields: Value,
    want: &[Named],
) -> (TestApp, Value) {
    let app = registered_app().await;
    let r = post_schema(&app, &format!("/schema/{object_type}"), &fields).await;
    assert_eq!(rejected(&r), want, "{}", r.text());
    let body = r.json();
    assert_eq!(body["title"], "Invalid schema");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("not sent to Gong"),
        "{body}"
    );
    assert_gong_untouched(&app);
    assert!(
        app.kv().keys_with_prefix("schema/").is_empty(),
        "nothing kept: {:?}",
        app.kv().keys()
    );
    (app, body)
}

/// The same app then accepts `fields` (a corrected body) and Gong receives exactly it.
async fn assert_schema_accepted(app: &TestApp, object_type: &str, fields: Value) {
    let r = post_schema(app, &format!("/schema/{object_type}"), &fields).await;
    assert_eq!(
        expect(&r, 200)["fieldsSent"],
        fields.as_array().unwrap().len()
    );
    assert_eq!(schema_uploads(app).last(), Some(&fields));
}

fn string_field(name: &str) -> Value {
    json!({"uniqueName": name, "label": name.to_uppercase(), "type": "STRING"})
}

#[tokio::test]
async fn schema_object_type_is_one_of_four_and_case_sensitive() {
    let fields = json!([string_field("x")]);
    for (object_type, hint) in [
        ("account", "case-sensitive"),
        ("BUSINESS_USER", "BUSINESS_USER has no custom-field schema"),
        ("STAGE", "STAGE has no custom-field schema"),
        ("OPPORTUNITY", "allowed: ACCOUNT, CONTACT, DEAL, LEAD"),
    ] {
        let (_, problem) = assert_schema_rejected(
            object_type,
            fields.clone(),
            &[field_err(None, "objectType", "objectType.invalid")],
        )
        .await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(hint), "{object_type}: {detail}");
    }
    // Control: the same fields for ACCOUNT are fine.
    let app = registered_app().await;
    assert_schema_accepted(&app, "ACCOUNT", fields).await;
}

#[tokio::test]
async fn schema_fields_need_unique_name_and_label() {
    let (app, _) = assert_schema_rejected(
        "CONTACT",
        json!([
            {"label": "No name", "type": "STRING"},
            {"uniqueName": "noLabel", "type": "STRING"},
            {"uniqueName": "blankLabel", "label": "  ", "type": "STRING"},
            {"uniqueName": "", "label": "Empty name", "type": "STRING"}
        ]),
        &[
            field_err(Some(0), "uniqueName", "uniqueName.required"),
            field_err(Some(1), "noLabel", "label.required"),
            field_err(Some(2), "blankLabel", "label.required"),
            field_err(Some(3), "uniqueName", "uniqueName.required"),
        ],
    )
    .await;
    assert_schema_accepted(
        &app,
        "CONTACT",
        json!([string_field("a"), string_field("noLabel")]),
    )
    .await;
}

#[tokio::test]
async fn schema_unique_names_are_unique() {
    let (app, _) = assert_schema_rejected(
        "DEAL",
        json!([string_field("region"), string_field("tier"), {"uniqueName": "region", "label": "Again", "type": "NUMBER"}]),
        &[field_err(Some(2), "region", "uniqueName.duplicate")],
    )
    .await;
    assert_schema_accepted(
        &app,
        "DEAL",
        json!([string_field("region"), string_field("tier")]),
    )
    .await;
}

#[tokio::test]
async fn schema_type_is_required_and_one_of_fourteen_case_sensitive() {
    let (app, _) = assert_schema_rejected(
        "LEAD",
        json!([
            {"uniqueName": "a", "label": "A", "type": "TEXT"},
            {"uniqueName": "b", "label": "B", "type": "string"},
            {"uniqueName": "c", "label": "C"},
            {"uniqueName": "d", "label": "D", "type": 7}
        ]),
        // A member of the wrong JSON type is found while reading, before the per-field rules.
        &[
            field_err(Some(3), "d", "type.type"),
            field_err(Some(0), "a", "type.invalid"),
            field_err(Some(1), "b", "type.invalid"),
            field_err(Some(2), "c", "type.required"),
        ],
    )
    .await;
    let all: Vec<Value> = [
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
        "STRINGARRAY",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| json!({"uniqueName": format!("f{i}"), "label": format!("F{i}"), "type": t}))
    .collect();
    assert_schema_accepted(&app, "LEAD", Value::Array(all)).await;
}

#[tokio::test]
async fn schema_picklist_needs_values() {
    let (app, _) = assert_schema_rejected(
        "ACCOUNT",
        json!([
            {"uniqueName": "tier", "label": "Tier", "type": "PICKLIST"},
            {"uniqueName": "size", "label": "Size", "type": "PICKLIST", "orderedValueList": []},
            {"uniqueName": "rank", "label": "Rank", "type": "PICKLIST", "orderedValueList": ["A", "B", "A"]}
        ]),
        &[
            field_err(Some(0), "tier", "orderedValueList.required"),
            field_err(Some(1), "size", "orderedValueList.required"),
            field_err(Some(2), "rank", "orderedValueList.duplicate"),
        ],
    )
    .await;
    assert_schema_accepted(&app, "ACCOUNT", json!([{"uniqueName": "tier", "label": "Tier", "type": "PICKLIST", "orderedValueList": ["Gold"]}])).await;
}

#[tokio::test]
async fn schema_reference_points_at_user_not_business_user() {
    let (app, problem) = assert_schema_rejected(
        "DEAL",
        json!([
            {"uniqueName": "owner2", "label": "Second owner", "type": "REFERENCE", "referenceTo": "BUSINESS_USER"},
            {"uniqueName": "parent", "label": "Parent", "type": "REFERENCE"},
            {"uniqueName": "acct", "label": "Account", "type": "REFERENCE", "referenceTo": "account"}
        ]),
        &[
            field_err(Some(0), "owner2", "referenceTo.invalid"),
            field_err(Some(1), "parent", "referenceTo.required"),
            field_err(Some(2), "acct", "referenceTo.invalid"),
        ],
    )
    .await;
    assert!(
        problem["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("must be USER, not BUSINESS_USER"),
        "{problem}"
    );
    assert_schema_accepted(
        &app,
        "DEAL",
        json!([{"uniqueName": "owner2", "label": "O", "type": "REFERENCE", "referenceTo": "USER"}]),
    )
    .await;
}

#[tokio::test]
async fn schema_last_modified_has_no_millis_and_an_offset() {
    let (app, _) = assert_schema_rejected(
        "ACCOUNT",
        json!([
            {"uniqueName": "a", "label": "A", "type": "DATE", "lastModified": "2020-12-17T13:45:01.000Z"},
            {"uniqueName": "b", "label": "B", "type": "DATE", "lastModified": "2020-12-17T13:45:01"},
            {"uniqueName": "c", "label": "C", "type": "DATE", "lastModified": "yesterday"}
        ]),
        &[
            field_err(Some(0), "a", "lastModified.no_millis"),
            field_err(Some(1), "b", "lastModified.offset_required"),
            field_err(Some(2), "c", "lastModified.invalid"),
        ],
    )
    .await;
    assert_schema_accepted(&app, "ACCOUNT", json!([{"uniqueName": "a", "label": "A", "type": "DATE", "lastModified": "2020-12-17T13:45:01Z"}])).await;
}

#[tokio::test]
async fn schema_must_be_the_full_list_and_deleting_is_explicit() {
    let app = registered_app().await;
    let x = json!({"uniqueName": "x", "label": "X", "type": "STRING"});
    let y = json!({"uniqueName": "y", "label": "Y", "type": "NUMBER"});
    assert_schema_accepted(&app, "ACCOUNT", json!([x, y])).await;
    assert_eq!(app.kv().get_json("schema/ACCOUNT").unwrap(), json!([x, y]));

    // Only x: y is missing. Nothing is sent, the kept schema is unchanged.
    let r = post_schema(&app, "/schema/ACCOUNT", &json!([x])).await;
    assert_eq!(rejected(&r), [field_err(None, "y", "schema.field_missing")]);
    assert!(
        r.json()["detail"].as_str().unwrap().contains("isDeleted"),
        "{}",
        r.text()
    );
    assert_eq!(schema_uploads(&app).len(), 1);
    assert_eq!(app.kv().get_json("schema/ACCOUNT").unwrap(), json!([x, y]));

    // y with isDeleted: accepted, forwarded as sent, and no longer kept.
    let deleting = json!([x, with(y.clone(), "isDeleted", json!(true))]);
    let r = post_schema(&app, "/schema/ACCOUNT", &deleting).await;
    let body = expect(&r, 200);
    assert_eq!(body["deletedFields"], json!(["y"]));
    assert_eq!(body["fieldsKept"], 1);
    assert_eq!(schema_uploads(&app).len(), 2);
    assert_eq!(schema_uploads(&app)[1], deleting);
    assert_eq!(app.kv().get_json("schema/ACCOUNT").unwrap(), json!([x]));

    // Now x alone is the full list.
    assert_schema_accepted(&app, "ACCOUNT", json!([x])).await;
    assert_eq!(schema_uploads(&app).len(), 3);
}

#[tokio::test]
async fn schema_type_change_is_refused_unless_allowed() {
    let app = registered_app().await;
    let x = json!({"uniqueName": "x", "label": "X", "type": "STRING"});
    let keep = json!({"uniqueName": "keep", "label": "Keep", "type": "DATE"});
    assert_schema_accepted(&app, "CONTACT", json!([keep, x])).await;

    let changed = json!([keep, with(x.clone(), "type", json!("NUMBER"))]);
    let r = post_schema(&app, "/schema/CONTACT", &changed).await;
    assert_eq!(
        rejected(&r),
        [field_err(Some(1), "x", "schema.type_change")]
    );
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("deletes all data"),
        "{}",
        r.text()
    );
    assert_eq!(
        schema_uploads(&app).len(),
        1,
        "a refused type change reaches Gong"
    );
    // A label change keeps the data: no guard.
    let relabelled = json!([keep, with(x.clone(), "label", json!("Renamed"))]);
    assert_eq!(
        expect(
            &post_schema(&app, "/schema/CONTACT", &relabelled).await,
            200
        )["typeChanges"],
        json!([])
    );

    let r = post_schema(&app, "/schema/CONTACT?allowTypeChange=true", &changed).await;
    let body = expect(&r, 200);
    assert_eq!(body["typeChanges"], json!(["x"]));
    let sent = schema_uploads(&app);
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[2], changed);
    assert_eq!(
        app.kv().get_json("schema/CONTACT").unwrap()[1]["type"],
        "NUMBER"
    );
}

// =============================================================================================
// Records
// =============================================================================================

/// Posts `[valid, bad]` of `object_type` as a JSON array to a fresh app: a 422 naming exactly
/// record 1 (with its objectId, if it has one) with `field` and `rule`; Gong receives nothing.
async fn assert_second_record_rejected(
    object_type: &str,
    valid: Value,
    bad: Value,
    field: &str,
    rule: &str,
) -> TestApp {
    let app = registered_app().await;
    let r = post_records(
        &app,
        &format!("/records/{object_type}"),
        &json!([valid, bad]),
    )
    .await;
    let object_id = bad["objectId"].as_str();
    assert_eq!(
        rejected(&r),
        [rec(1, object_id, field, rule)],
        "{}",
        r.text()
    );
    let body = r.json();
    assert_eq!(body["title"], "Invalid records");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("1 of 2 record(s) failed validation; nothing was sent to Gong"),
        "{body}"
    );
    assert_gong_untouched(&app);
    app
}

const T0: &str = "2024-05-01T09:00:00Z";

#[tokio::test]
async fn records_need_an_object_id() {
    let app = assert_second_record_rejected(
        "ACCOUNT",
        account("a1", T0),
        without(account("a2", T0), "objectId"),
        "objectId",
        "objectId.required",
    )
    .await;
    // Control: with it, the batch goes.
    expect(
        &post_records(
            &app,
            "/records/ACCOUNT",
            &json!([account("a1", T0), account("a2", T0)]),
        )
        .await,
        202,
    );
    assert_eq!(ids(&uploaded_records(&app)), ["a1", "a2"]);
}

#[tokio::test]
async fn records_object_id_has_at_most_64_characters() {
    let long = "a".repeat(65);
    let app = assert_second_record_rejected(
        "CONTACT",
        bare("c1", T0),
        bare(&long, T0),
        "objectId",
        "objectId.too_long",
    )
    .await;
    expect(
        &post_records(
            &app,
            "/records/CONTACT",
            &json!([bare(&"a".repeat(64), T0)]),
        )
        .await,
        202,
    );
    assert_eq!(entity_uploads(&app), 1);
}

#[tokio::test]
async fn records_modified_date_with_millis_is_rejected_unless_normalised() {
    let bad = account("a2", "2024-05-01T12:00:00.250+02:00");
    let app = assert_second_record_rejected(
        "ACCOUNT",
        account("a1", T0),
        bad.clone(),
        "modifiedDate",
        "modifiedDate.no_millis",
    )
    .await;
    let r = post_records(
        &app,
        "/records/ACCOUNT?normalize=true",
        &json!([account("a1", T0), bad]),
    )
    .await;
    expect(&r, 202);
    let sent = uploaded_records(&app);
    assert_eq!(ids(&sent), ["a1", "a2"]);
    assert_eq!(
        sent[1]["modifiedDate"], "2024-05-01T10:00:00Z",
        "normalised to whole seconds in UTC"
    );
    assert_eq!(sent[0]["modifiedDate"], T0);
}

#[tokio::test]
async fn records_modified_date_needs_an_offset_unless_normalised() {
    let bad = bare("l2", "2024-05-01T10:00:00");
    let app = assert_second_record_rejected(
        "LEAD",
        bare("l1", T0),
        bad.clone(),
        "modifiedDate",
        "modifiedDate.offset_required",
    )
    .await;
    expect(
        &post_records(&app, "/records/LEAD?normalize=true", &json!([bad])).await,
        202,
    );
    assert_eq!(
        uploaded_records(&app)[0]["modifiedDate"],
        "2024-05-01T10:00:00Z",
        "taken as UTC"
    );
}

#[tokio::test]
async fn records_modified_date_is_required() {
    assert_second_record_rejected(
        "ACCOUNT",
        account("a1", T0),
        without(account("a2", T0), "modifiedDate"),
        "modifiedDate",
        "modifiedDate.required",
    )
    .await;
}

#[tokio::test]
async fn deal_status_close_date_and_amount_are_typed() {
    let app = registered_app().await;
    let body = json!([
        deal("d0"),
        with(deal("d1"), "status", json!("won")),
        with(deal("d2"), "closeDate", json!("2024-09-04T00:00:00Z")),
        with(deal("d3"), "amount", json!("1200")),
        with(deal("d4"), "closeDate", json!("2024-02-30"))
    ]);
    let r = post_records(&app, "/records/DEAL", &body).await;
    assert_eq!(
        rejected(&r),
        [
            rec(1, Some("d1"), "status", "status.invalid"),
            rec(2, Some("d2"), "closeDate", "closeDate.invalid"),
            rec(3, Some("d3"), "amount", "amount.type"),
            rec(4, Some("d4"), "closeDate", "closeDate.invalid"),
        ]
    );
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("4 of 5 record(s)"),
        "{}",
        r.text()
    );
    assert_gong_untouched(&app);
    // Control: the valid deal with every standard field goes, unchanged.
    expect(
        &post_records(&app, "/records/DEAL", &json!([deal("d0")])).await,
        202,
    );
    assert_eq!(uploaded_records(&app), [deal("d0")]);
}

#[tokio::test]
async fn business_user_needs_an_email_unless_deleted() {
    let user = |id: &str| json!({"objectId": id, "modifiedDate": T0, "emailAddress": format!("{id}@acme.com")});
    let app = assert_second_record_rejected(
        "BUSINESS_USER",
        user("u1"),
        without(user("u2"), "emailAddress"),
        "emailAddress",
        "emailAddress.required",
    )
    .await;
    let deleted = json!({"objectId": "u2", "modifiedDate": T0, "isDeleted": true});
    expect(
        &post_records(&app, "/records/BUSINESS_USER", &json!([deleted])).await,
        202,
    );
    assert_eq!(uploaded_records(&app), [deleted]);
}

/// An app with an ACCOUNT schema accepted (through `POST /schema`, so it is the stored one).
async fn app_with_account_schema(fields: Value) -> TestApp {
    let app = registered_app().await;
    expect(&post_schema(&app, "/schema/ACCOUNT", &fields).await, 200);
    app.mock().clear();
    app
}

#[tokio::test]
async fn custom_fields_are_typed_by_the_stored_schema() {
    let app = app_with_account_schema(json!([
        {"uniqueName": "tier", "label": "Tier", "type": "PICKLIST", "orderedValueList": ["Gold", "Silver"]},
        {"uniqueName": "pct", "label": "Share", "type": "PERCENT"},
        {"uniqueName": "active", "label": "Active", "type": "BOOLEAN"}
    ]))
    .await;
    let good =
        json!({"objectId": "a0", "modifiedDate": T0, "tier": "Gold", "pct": 100, "active": false});
    let body = json!([
        good,
        with(
            with(good.clone(), "objectId", json!("a1")),
            "tier",
            json!("Bronze")
        ),
        with(
            with(good.clone(), "objectId", json!("a2")),
            "pct",
            json!(100.5)
        ),
        with(
            with(good.clone(), "objectId", json!("a3")),
            "active",
            json!("yes")
        ),
        with(
            with(good.clone(), "objectId", json!("a4")),
            "tier",
            json!("gold")
        )
    ]);
    let r = post_records(&app, "/records/ACCOUNT", &body).await;
    assert_eq!(
        rejected(&r),
        [
            rec(1, Some("a1"), "tier", "custom.not_in_list"),
            rec(2, Some("a2"), "pct", "custom.range"),
            rec(3, Some("a3"), "active", "custom.type"),
            rec(4, Some("a4"), "tier", "custom.not_in_list"),
        ]
    );
    assert_gong_untouched(&app);
    // Control: the good record goes, with no warning (its fields are all in the schema).
    let body = expect(
        &post_records(&app, "/records/ACCOUNT", &json!([good])).await,
        202,
    );
    assert_eq!(body["warnings"], json!([]));
    assert_eq!(uploaded_records(&app), [good]);
}

#[tokio::test]
async fn a_field_not_in_the_schema_warns_or_fails_when_strict() {
    let app = app_with_account_schema(
        json!([{"uniqueName": "score", "label": "Score", "type": "NUMBER"}]),
    )
    .await;
    let records = json!([
        {"objectId": "a1", "modifiedDate": T0, "score": 3},
        {"objectId": "a2", "modifiedDate": T0, "score": 4, "zz": "raw"}
    ]);
    let r = post_records(&app, "/records/ACCOUNT", &records).await;
    let body = expect(&r, 202);
    assert_eq!(
        named_list(&body["warnings"]),
        [rec(1, Some("a2"), "zz", "field.not_in_schema")]
    );
    assert_eq!(
        uploaded_records(&app)[1]["zz"],
        "raw",
        "a warning does not drop the field"
    );

    let r = post_records(&app, "/records/ACCOUNT?strict=true", &records).await;
    assert_eq!(
        rejected(&r),
        [rec(1, Some("a2"), "zz", "field.not_in_schema")]
    );
    assert_eq!(entity_uploads(&app), 1, "strict: nothing more sent");
}

#[tokio::test]
async fn ldjson_errors_name_the_line() {
    let app = registered_app().await;
    let mut body = ldjson(&[account("a1", T0)]);
    body.extend_from_slice(b"\n"); // line 2: blank, skipped (not a record)
    body.extend_from_slice(b"{\"objectId\": \"a2\", \"modifiedDate\": \n"); // line 3: broken JSON
    body.extend_from_slice(&ldjson(&[account("a3", "2024-05-01T09:00:00.5Z")])); // line 4
    body.extend_from_slice(b"[1]\n"); // line 5: not an object
    let r = post_ldjson(&app, "/records/ACCOUNT", body).await;
    assert_eq!(
        rejected(&r),
        [
            rec_line(1, 3, None, None, "line.json"),
            rec_line(
                2,
                4,
                Some("a3"),
                Some("modifiedDate"),
                "modifiedDate.no_millis"
            ),
            rec_line(3, 5, None, None, "record.not_object"),
        ]
    );
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("3 of 4 record(s)"),
        "{}",
        r.text()
    );
    assert_gong_untouched(&app);
}

#[tokio::test]
async fn partial_forwards_the_valid_records_and_lists_the_rejected() {
    let app = registered_app().await;
    let records = json!([
        account("a1", T0),
        account("a2", "2024-05-01T09:00:00.123Z"),
        account("a3", "2024-05-01T08:00:00Z"),
        without(account("a4", T0), "objectId")
    ]);
    // Without partial: nothing goes.
    let r = post_records(&app, "/records/ACCOUNT", &records).await;
    assert_eq!(rejected(&r).len(), 2);
    assert_gong_untouched(&app);

    let r = post_records(&app, "/records/ACCOUNT?partial=true", &records).await;
    let body = expect(&r, 202);
    assert_eq!(body["received"], 4);
    assert_eq!(body["recordCount"], 2);
    assert_eq!(body["rejectedRecords"], 2);
    assert_eq!(
        named_list(&body["rejected"]),
        [
            rec(1, Some("a2"), "modifiedDate", "modifiedDate.no_millis"),
            rec(3, None, "objectId", "objectId.required")
        ]
    );
    assert_eq!(
        uploaded_records(&app),
        [account("a3", "2024-05-01T08:00:00Z"), account("a1", T0)]
    );

    // Partial with nothing valid is still a 422, and sends nothing.
    let r = post_records(
        &app,
        "/records/ACCOUNT?partial=true",
        &json!([without(account("a5", T0), "modifiedDate")]),
    )
    .await;
    assert_eq!(
        rejected(&r),
        [rec(0, Some("a5"), "modifiedDate", "modifiedDate.required")]
    );
    assert_eq!(entity_uploads(&app), 1);
}

#[tokio::test]
async fn a_good_batch_is_sorted_by_modified_date_and_deduplicated() {
    let app = registered_app().await;
    let newest_b = with(account("b", "2024-05-01T12:00:00Z"), "name", json!("new"));
    let older_b = with(account("b", "2024-05-01T11:00:00Z"), "name", json!("old"));
    // 13:30+02:00 is 11:30Z: sorted by instant, not by text.
    let c = account("c", "2024-05-01T13:30:00+02:00");
    let a = account("a", "2024-05-01T10:00:00Z");
    let r = post_records(&app, "/records/ACCOUNT", &json!([newest_b, a, older_b, c])).await;
    let body = expect(&r, 202);
    assert_eq!(body["received"], 4);
    assert_eq!(body["mergedDuplicates"], 1);
    assert_eq!(body["recordCount"], 3);
    assert_eq!(uploaded_records(&app), [a, c, newest_b]);
}

#[tokio::test]
async fn line_errors_come_back_by_object_id_after_sort_and_dedup() {
    let app = registered_app().await;
    // Input order d, c, d(older), b, a; file order c, a, b, d.
    let records = json!([
        account("d", "2024-05-01T14:00:00Z"),
        account("c", "2024-05-01T11:00:00Z"),
        account("d", "2024-05-01T10:00:00Z"),
        account("b", "2024-05-01T13:00:00Z"),
        account("a", "2024-05-01T12:00:00Z")
    ]);
    let r = call(
        &app,
        "POST",
        "/records/ACCOUNT",
        &[
            ("content-type", "application/json"),
            ("idempotency-key", "val-lines-1"),
        ],
        serde_json::to_vec(&records).unwrap(),
    )
    .await;
    expect(&r, 202);
    assert_eq!(ids(&uploaded_records(&app)), ["c", "a", "b", "d"]);
    app.mock().on(
        "GET",
        "/v2/crm/request-status",
        MockResponse::json(
            200,
            json!({"requestId": "s1", "status": "FAILED", "totalErrorCount": 2, "totalSuccessCount": 2,
                   "errors": [{"line": 2, "description": "accountId unknown"}, {"line": 4, "description": "bad owner"}]}),
        ),
    );
    let body = expect(
        &call(&app, "GET", "/requests/val-lines-1", &[], Vec::new()).await,
        200,
    );
    assert_eq!(body["status"], "FAILED");
    let named: Vec<(u64, &str, &str)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["objectId"].as_str().unwrap(),
                e["description"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        named,
        [(2, "a", "accountId unknown"), (4, "d", "bad owner")]
    );
}

#[tokio::test]
async fn more_than_1000_violations_list_1000_and_count_all() {
    let app = registered_app().await;
    // 600 deals with two violations each.
    let records: Vec<Value> = (0..600)
        .map(|i| {
            with(
                with(
                    deal(&format!("d{i}")),
                    "modifiedDate",
                    json!("2024-05-01T10:00:00.5Z"),
                ),
                "status",
                json!("won"),
            )
        })
        .collect();
    let r = post_ldjson(&app, "/records/DEAL", ldjson(&records)).await;
    let body = expect(&r, 422);
    let errors = named_list(&body["errors"]);
    assert_eq!(errors.len(), 1000);
    assert_eq!(body["totalErrors"], 1200);
    assert_eq!(body["truncated"], true);
    assert_eq!(
        errors[0],
        rec_line(
            0,
            1,
            Some("d0"),
            Some("modifiedDate"),
            "modifiedDate.no_millis"
        )
    );
    assert_eq!(
        errors[999],
        rec_line(499, 500, Some("d499"), Some("status"), "status.invalid")
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("600 of 600 record(s)"),
        "{body}"
    );
    assert_gong_untouched(&app);
}

#[tokio::test]
async fn invalid_utf8_is_a_422_naming_the_byte_offset() {
    let app = registered_app().await;
    let prefix = br#"[{"objectId":"a1","modifiedDate":"2024-05-01T10:00:00Z","name":"caf"#;
    let mut body = prefix.to_vec();
    body.extend_from_slice(b"\xC3\"}]");
    let r = call(
        &app,
        "POST",
        "/records/ACCOUNT",
        &[("content-type", "application/json")],
        body,
    )
    .await;
    let body = expect(&r, 422);
    let errors = named_list(&body["errors"]);
    assert_eq!(
        errors,
        [Named {
            index: None,
            line: Some(1),
            object_id: None,
            field: None,
            rule: "body.utf8".into()
        }]
    );
    let offset = prefix.len();
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("byte offset {offset}")),
        "{body}"
    );

    // LDJSON: the offset and the line.
    let mut ld = ldjson(&[account("a1", T0)]);
    let offset = ld.len() + 2;
    ld.extend_from_slice(b"{\"\xFF\":1}\n");
    let r = post_ldjson(&app, "/records/ACCOUNT", ld).await;
    let body = expect(&r, 422);
    assert_eq!(body["errors"][0]["rule"], "body.utf8");
    assert_eq!(body["errors"][0]["line"], 2);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("byte offset {offset}")),
        "{body}"
    );
    assert_gong_untouched(&app);
}

/// Schema violations are capped like record violations: 1,000 listed, `totalErrors` the true
/// count, `truncated: true`.
#[tokio::test]
async fn schema_with_more_than_1000_violations_counts_all() {
    let app = registered_app().await;
    let fields: Vec<Value> = (0..1500)
        .map(|i| json!({"uniqueName": format!("f{i}"), "type": "STRING"}))
        .collect();
    let r = post_schema(&app, "/schema/ACCOUNT", &Value::Array(fields)).await;
    let body = expect(&r, 422);
    let errors = named_list(&body["errors"]);
    assert_eq!(errors.len(), 1000);
    assert_eq!(errors[0], field_err(Some(0), "f0", "label.required"));
    assert_eq!(body["totalErrors"], 1500, "{}", body["detail"]);
    assert_eq!(body["truncated"], true);
    assert_gong_untouched(&app);
}
