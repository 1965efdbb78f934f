//! A custom source end to end, natively: its mapping stored (custom fields uploaded to Gong's
//! schema first), its deliveries verified by token or signature, read by the mapping's
//! `delivery` shape, and carried to Gong like every other source's.

use serde_json::{json, Value};

use crate::app::{follow_up, handle};
use crate::ports::Clock;
use crate::store::memory::MemoryKv;
use crate::testing::{bridge, configured, request, ScriptedGong, VirtualClock};

const TOKEN: &str = "custom-token-1";

fn call(
    b: &crate::bridge::Bridge,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Value, crate::app::Handled) {
    let answer = handle(b, request(method, path, headers, body));
    let status = answer.response.status().as_u16();
    let json = serde_json::from_slice(answer.response.body()).unwrap_or_default();
    (status, json, answer)
}

fn api(b: &crate::bridge::Bridge, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let (status, json, _) = call(
        b,
        method,
        path,
        &[("authorization", "Bearer token")],
        body.to_string().as_bytes(),
    );
    (status, json)
}

/// Zoho CRM's workflow webhook as a user would build it: the module and operation as URL-style
/// merge fields, the record's fields under `data`.
fn zoho_mapping(with_channel: bool) -> Value {
    let mut fields = json!({
        "objectId": {"path": "/id", "convert": "id"},
        "modifiedDate": {"path": "/Modified_Time", "convert": "datetime"},
        "name": {"path": "/Deal_Name"},
        "amount": {"path": "/Amount", "convert": "number"}
    });
    if with_channel {
        fields["leadChannel"] = json!({"path": "/Lead_Source", "schema": {"type": "PICKLIST", "label": "Lead channel", "values": ["Web", "Partner"]}});
    }
    json!({
        "delivery": {"records": "/data", "object": "/$event/module", "action": "/$event/operation"},
        "objects": [{"from": "Deals", "to": "DEAL", "idPrefix": "zoho-", "fields": fields}]
    })
}

#[test]
fn a_custom_source_is_mapped_by_its_stored_document_with_its_custom_fields() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_700_000_000));
    let gong = ScriptedGong::new(&clock);
    let config = configured(&[
        ("custom_webhook_token", TOKEN),
        ("gong_calls_per_second", "0"),
    ]);
    let b = bridge(&kv, &config, &gong, &clock);
    let delivery = json!({"module": "Deals", "operation": "update", "data": [
        {"id": "5001", "Modified_Time": "2026-12-01T10:00:00+01:00", "Deal_Name": "Big", "Amount": 1200, "Lead_Source": "Web"}
    ]});
    let body = delivery.to_string();
    let token = [("x-webhook-token", TOKEN)];

    // Before its mapping is stored: authentic → 404 naming what to do; not authentic → 401.
    let (status, problem, _) = call(&b, "POST", "/webhooks/custom/zoho", &token, body.as_bytes());
    assert_eq!(status, 404, "{problem}");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("PUT /mappings/zoho"));
    let (status, _, _) = call(
        &b,
        "POST",
        "/webhooks/custom/zoho",
        &[("x-webhook-token", "nope")],
        body.as_bytes(),
    );
    assert_eq!(status, 401);

    // A custom field without a declaration is named; a declared one goes to Gong's schema.
    let mut undeclared = zoho_mapping(false);
    undeclared["objects"][0]["fields"]["leadChannel"] = json!({"path": "/Lead_Source"});
    let (status, problem) = api(&b, "PUT", "/mappings/zoho", &undeclared);
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        (
            problem["errors"][0]["field"].as_str(),
            problem["errors"][0]["rule"].as_str()
        ),
        (Some("Deals.leadChannel"), Some("mapping.custom_field"))
    );
    assert_eq!(
        api(&b, "PUT", "/mappings/Bad_Name", &zoho_mapping(false)).0,
        400
    );
    assert!(gong.calls().is_empty());
    let (status, stored) = api(&b, "PUT", "/mappings/zoho", &zoho_mapping(true));
    assert_eq!(status, 200, "{stored}");
    let schema_calls: Vec<_> = gong
        .calls()
        .into_iter()
        .filter(|c| c.path.starts_with("/v2/crm/entity-schema"))
        .collect();
    assert_eq!(schema_calls.len(), 1, "{:?}", gong.calls());
    assert!(
        schema_calls[0].path.contains("objectType=DEAL"),
        "{}",
        schema_calls[0].path
    );
    let sent: Value = serde_json::from_slice(&gong.bodies.borrow()[schema_calls[0].index]).unwrap();
    assert_eq!(sent[0]["uniqueName"], "leadChannel", "{sent}");
    assert_eq!(sent[0]["orderedValueList"], json!(["Web", "Partner"]));
    assert_eq!(stored["schemaUploads"].as_array().map(Vec::len), Some(1));
    // Saving it again sends nothing; dropping the field needs confirmation.
    api(&b, "PUT", "/mappings/zoho", &zoho_mapping(true));
    assert_eq!(
        gong.calls().len(),
        1,
        "an unchanged schema is not sent again"
    );
    let (status, problem) = api(&b, "PUT", "/mappings/zoho", &zoho_mapping(false));
    assert_eq!(
        (status, problem["errors"][0]["rule"].as_str()),
        (422, Some("mapping.schema.removal")),
        "{problem}"
    );
    let (_, listed) = api(&b, "GET", "/mappings", &Value::Null);
    assert!(
        listed["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["route"] == "/webhooks/custom/zoho"),
        "{listed}"
    );

    // A delivery: accepted, mapped by the document, its custom field validated against the
    // schema Gong accepted, and uploaded.
    let (status, answer, handled) =
        call(&b, "POST", "/webhooks/custom/zoho", &token, body.as_bytes());
    assert_eq!((status, &answer["accepted"]), (202, &json!(1)), "{answer}");
    follow_up(&b.with_budget(clock.now()), handled.first);
    let mut bad = delivery.clone();
    bad["data"][0]["id"] = json!("5002");
    bad["data"][0]["Lead_Source"] = json!("Fax");
    let (status, answer, _) = call(
        &b,
        "POST",
        "/webhooks/custom/zoho",
        &token,
        bad.to_string().as_bytes(),
    );
    assert_eq!(
        (status, &answer["rejected"]),
        (202, &json!(1)),
        "a value the picklist lacks: {answer}"
    );
    let deleted = json!({"module": "Deals", "operation": "delete", "data": {"id": "5003"}});
    let (status, answer, _) = call(
        &b,
        "POST",
        "/webhooks/custom/zoho",
        &token,
        deleted.to_string().as_bytes(),
    );
    assert_eq!((status, &answer["accepted"]), (202, &json!(1)), "{answer}");
    let flushed = handle(
        &b.with_budget(clock.now()),
        request(
            "POST",
            "/flush?force=true",
            &[("authorization", "Bearer token")],
            b"",
        ),
    );
    assert_eq!(flushed.response.status(), 200);
    let upload = gong
        .calls()
        .into_iter()
        .find(|c| c.path.starts_with("/v2/crm/entities"))
        .expect("an upload");
    let lines: Vec<Value> = String::from_utf8(gong.bodies.borrow()[upload.index].clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let big = lines
        .iter()
        .find(|l| l["objectId"] == "zoho-5001")
        .expect("zoho-5001");
    assert_eq!(
        (&big["leadChannel"], &big["amount"]),
        (&json!("Web"), &json!(1200)),
        "{big}"
    );
    let gone = lines
        .iter()
        .find(|l| l["objectId"] == "zoho-5003")
        .expect("zoho-5003");
    assert_eq!(gone["isDeleted"], true);
    let (_, failures) = api(&b, "GET", "/failures", &Value::Null);
    assert!(failures.to_string().contains("zoho-5002"), "{failures}");
}

/// docs/crm/custom.md's worked preview, as written there.
#[test]
fn the_documented_zoho_preview() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_700_000_000));
    let gong = ScriptedGong::new(&clock);
    let config = configured(&[("gong_calls_per_second", "0")]);
    let b = bridge(&kv, &config, &gong, &clock);
    let doc = include_str!("../../docs/crm/custom.md");
    let put = {
        let from = doc.find("curl -sS -X PUT").unwrap();
        let body_at = from + doc[from..].find("-d '").unwrap() + 4;
        let text = &doc[body_at..body_at + doc[body_at..].find("'\n").unwrap()];
        serde_json::from_str::<Value>(text).unwrap()
    };
    let (status, stored) = api(&b, "PUT", "/mappings/zoho", &put);
    assert_eq!(status, 200, "{stored}");
    let preview_body = {
        let from = doc.find("/mappings/zoho/preview").unwrap();
        let body_at = from + doc[from..].find("-d '").unwrap() + 4;
        let text = &doc[body_at..body_at + doc[body_at..].find("'\n").unwrap()];
        serde_json::from_str::<Value>(text).unwrap()
    };
    let (status, preview) = api(&b, "POST", "/mappings/zoho/preview", &preview_body);
    assert_eq!(status, 200, "{preview}");
    let problem = &preview["rejected"][0]["problems"][0];
    assert!(
        doc.contains(&format!("\"rule\": {}", problem["rule"]))
            && doc.contains(&problem["message"].to_string())
            && doc.contains(&format!("\"delivery\": {}", preview["delivery"])),
        "{preview}"
    );
    let mut good = preview_body.clone();
    good["data"][0]["Lead_Source"] = json!("Web");
    let (_, preview) = api(&b, "POST", "/mappings/zoho/preview", &good);
    let record = &preview["records"][0]["record"];
    let documented = {
        let from = doc.rfind("```json\n").unwrap() + 8;
        serde_json::from_str::<Value>(&doc[from..from + doc[from..].find("```").unwrap()]).unwrap()
    };
    assert_eq!(record, &documented, "{preview}");
}

/// docs/crm/pipedrive.md's custom-field override, as written there: stored (one schema upload
/// per object type), and Pipedrive's documented custom-field deliveries carry the values.
#[test]
fn the_documented_pipedrive_custom_fields() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_700_000_000));
    let gong = ScriptedGong::new(&clock);
    let config = configured(&[("gong_calls_per_second", "0")]);
    let b = bridge(&kv, &config, &gong, &clock);
    let doc = include_str!("../../docs/crm/pipedrive.md");
    let adding = doc.find("**Adding a custom field.**").unwrap();
    let put_at = adding + doc[adding..].find("-d '").unwrap() + 4;
    let put: Value =
        serde_json::from_str(&doc[put_at..put_at + doc[put_at..].find("'\n").unwrap()]).unwrap();
    let (status, stored) = api(&b, "PUT", "/mappings/pipedrive", &put);
    assert_eq!(status, 200, "{stored}");
    let schema_types: Vec<String> = gong
        .calls()
        .iter()
        .filter(|c| c.path.starts_with("/v2/crm/entity-schema"))
        .map(|c| c.path.clone())
        .collect();
    assert_eq!(schema_types.len(), 2, "{schema_types:?}");
    for (sample, field, value) in [
        (
            "organization_change_custom_field.json",
            "employeeCount",
            json!(978),
        ),
        (
            "deal_change_custom_field.json",
            "location",
            json!("Tallinn, Estonia"),
        ),
    ] {
        let body = std::fs::read(format!(
            "{}/src/crm/testdata/pipedrive/{sample}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let (_, preview, _) = call(
            &b,
            "POST",
            "/mappings/pipedrive/preview",
            &[("authorization", "Bearer token")],
            &body,
        );
        assert_eq!(preview["records"][0]["record"][field], value, "{preview}");
        assert!(doc.contains(&format!(
            "\"{field}\": {}",
            value.to_string().trim_end_matches(".0")
        )));
    }
}
