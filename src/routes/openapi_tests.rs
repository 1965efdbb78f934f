//! `docs/openapi.json` against the code: the document lists exactly the router's routes
//! (`app::ROUTES`), every route dispatches, and the bodies the routes really produce in a
//! delivery's whole life (accepted, flushed, failed, looked up, retried) fit their schemas.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::app::handle;
use crate::ports::Response;
use crate::routes::table::ROUTES;
use crate::store::memory::MemoryKv;
use crate::testing::{bridge, configured, request, Scripted, ScriptedGong, VirtualClock};

fn document() -> Value {
    serde_json::from_str(include_str!("../../docs/openapi.json"))
        .expect("docs/openapi.json is JSON")
}

fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "put", "post", "delete", "head", "patch", "options"]
                .contains(&method.as_str())
            {
                ops.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    ops
}

#[test]
fn the_document_lists_exactly_the_routes_of_the_router() {
    let documented = documented_operations(&document());
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty(),
        "routes missing from docs/openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "docs/openapi.json documents routes the router does not serve: {extra:?}"
    );
}

fn concrete(template: &str) -> String {
    template
        .replace("{objectType}", "ACCOUNT")
        .replace("{objectId}", "acc-1")
        .replace("{clientRequestId}", "req-1")
        .replace("{source}", "pipedrive")
}

/// A route in `ROUTES` that `dispatch` forgot would answer 405 (or 404 "no such route").
#[test]
fn every_listed_route_is_dispatched_and_every_other_method_is_405() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_700_000_000));
    let gong = ScriptedGong::new(&clock);
    let config = configured(&[]);
    let b = bridge(&kv, &config, &gong, &clock);
    let paths: BTreeSet<&str> = ROUTES.iter().map(|r| r.path).collect();
    for path in paths {
        for method in ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH"] {
            let listed = ROUTES.iter().any(|r| r.method == method && r.path == path);
            let response = handle(
                &b,
                request(
                    method,
                    &concrete(path),
                    &[
                        ("authorization", "Bearer token"),
                        ("content-type", "application/json"),
                    ],
                    b"{}",
                ),
            )
            .response;
            let problem: Value = serde_json::from_slice(response.body()).unwrap_or_default();
            let refused_as_unrouted = response.status() == 405
                || problem["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("no-such-route"));
            if listed {
                assert!(
                    !refused_as_unrouted,
                    "{method} {path} is in ROUTES but not dispatched: {} {problem}",
                    response.status()
                );
            } else {
                assert_eq!(
                    response.status(),
                    405,
                    "{method} {path} is not in ROUTES but answered {} {problem}",
                    response.status()
                );
            }
        }
    }
}

// ----- a small OpenAPI 3.0 schema check (types, nullable, enum, required, properties, items,
// additionalProperties, anyOf/oneOf/allOf, $ref) -----------------------------------------------

fn resolve<'d>(doc: &'d Value, schema: &'d Value) -> &'d Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut at = doc;
            for part in r.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            resolve(doc, at)
        }
        None => schema,
    }
}

/// Where `value` breaks `schema`, as paths with reasons (empty: it fits).
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            check(doc, s, value, at, out);
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(any) = schema.get(key).and_then(Value::as_array) {
            let fits_one = any.iter().any(|s| {
                let mut errors = Vec::new();
                check(doc, s, value, at, &mut errors);
                errors.is_empty()
            });
            if !fits_one {
                out.push(format!("{at}: fits none of {key}"));
            }
        }
    }
    if value.is_null() {
        if schema.get("type").is_some() && schema.get("nullable") != Some(&Value::Bool(true)) {
            out.push(format!("{at}: null but not nullable"));
        }
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            out.push(format!("{at}: {value} not in enum {allowed:?}"));
        }
    }
    let fits_type = match schema.get("type").and_then(Value::as_str) {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => panic!("unknown type {other}"),
    };
    if !fits_type {
        out.push(format!("{at}: {value} is not of type {}", schema["type"]));
        return;
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (i, v) in values.iter().enumerate() {
            check(doc, items, v, &format!("{at}[{i}]"), out);
        }
    }
    if let Some(object) = value.as_object() {
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(name) {
                out.push(format!("{at}: required member {name} missing"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (name, v) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(s) => check(doc, s, v, &format!("{at}.{name}"), out),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        out.push(format!("{at}: member {name} not allowed"))
                    }
                    Some(s) if s.is_object() => check(doc, s, v, &format!("{at}.{name}"), out),
                    // Open objects: an undeclared member is allowed by the document, but a
                    // declared-properties schema that misses one of ours is a drift to fix.
                    _ if properties.is_some() => {
                        out.push(format!("{at}: member {name} is not declared"))
                    }
                    _ => {}
                },
            }
        }
    }
}

/// Checks one answer against the documented response of `method template` for its status.
fn conforms(doc: &Value, method: &str, template: &str, response: &Response) {
    let status = response.status().as_u16();
    let operation = &doc["paths"][template][method.to_ascii_lowercase()];
    assert!(
        operation.is_object(),
        "{method} {template} is not documented"
    );
    let responses = &operation["responses"];
    let documented = resolve(
        doc,
        responses
            .get(status.to_string())
            .unwrap_or(&responses["default"]),
    );
    assert!(
        documented.is_object(),
        "{method} {template}: status {status} is not documented"
    );
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .to_owned();
    let Some(content) = documented.get("content") else {
        assert!(
            response.body().is_empty(),
            "{method} {template} {status}: a body where none is documented"
        );
        return;
    };
    let media = content.get(&content_type).unwrap_or_else(|| {
        panic!("{method} {template} {status}: content-type {content_type} is not documented")
    });
    if !content_type.ends_with("json") {
        return;
    }
    let body: Value = serde_json::from_slice(response.body()).expect("a JSON body");
    let mut errors = Vec::new();
    check(doc, &media["schema"], &body, "body", &mut errors);
    assert!(
        errors.is_empty(),
        "{method} {template} {status} does not fit docs/openapi.json:\n  {}\nbody: {body}",
        errors.join("\n  ")
    );
}

fn scripted(status: u16, body: &str) -> Scripted {
    Scripted {
        answer: Ok(http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec())
            .unwrap()),
        takes: std::time::Duration::from_millis(10),
    }
}

#[test]
fn the_bodies_of_a_delivery_s_whole_life_fit_the_document() {
    let doc = document();
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_700_000_000));
    let gong = ScriptedGong::new(&clock);
    let config = configured(&[
        ("gong_calls_per_second", "0"),
        ("inbox_release_seconds", "0"),
    ]);
    let b = bridge(&kv, &config, &gong, &clock);
    let auth = [
        ("authorization", "Bearer token"),
        ("content-type", "application/json"),
    ];
    let call = |method: &str, path: &str, template: &str, body: &[u8]| {
        let response = handle(&b, request(method, path, &auth, body)).response;
        conforms(&doc, method, template, &response);
        response
    };
    let upsert = |id: &str| {
        format!(
            r#"{{"type":"record.upserted","timestamp":"2024-01-01T00:00:00Z","data":{{"objectType":"ACCOUNT","records":[{{"objectId":"{id}","modifiedDate":"2024-05-01T10:00:00Z","name":"Acme"}}]}}}}"#
        )
    };
    let hook = |id: &str, body: &str| {
        let response = handle(
            &b,
            request(
                "POST",
                "/webhooks",
                &[
                    ("authorization", "Bearer hook-token"),
                    ("webhook-id", id),
                    ("content-type", "application/json"),
                ],
                body.as_bytes(),
            ),
        )
        .response;
        conforms(&doc, "POST", "/webhooks", &response);
        response
    };
    assert_eq!(hook("m1", &upsert("acc-1")).status(), 202);
    assert_eq!(hook("m2", "{\"type\":\"record.upserted\"}").status(), 422);
    call("GET", "/status", "/status", b"");
    call(
        "GET",
        "/records/ACCOUNT/acc-1/status",
        "/records/{objectType}/{objectId}/status",
        b"",
    );
    // Gong accepts the file, then fails its line 1: the record lands in the failure store.
    gong.queue
        .borrow_mut()
        .push_back(scripted(201, r#"{"requestId":"g-1"}"#));
    call("POST", "/flush?force=true", "/flush", b"");
    call("GET", "/status", "/status", b"");
    gong.queue.borrow_mut().push_back(scripted(200, r#"{"requestId":"g-1","status":"FAILED","errors":[{"line":1,"description":"bad name"}],"totalErrorCount":1}"#));
    call("POST", "/flush", "/flush", b"");
    let status: Value =
        serde_json::from_slice(call("GET", "/status", "/status", b"").body()).unwrap();
    assert_eq!(status["types"]["ACCOUNT"]["failures"], 1, "{status}");
    call("GET", "/failures", "/failures", b"");
    call(
        "GET",
        "/records/ACCOUNT/acc-1/status",
        "/records/{objectType}/{objectId}/status",
        b"",
    );
    call("GET", "/requests", "/requests", b"");
    let page: Value =
        serde_json::from_slice(call("GET", "/requests", "/requests", b"").body()).unwrap();
    if let Some(id) = page["requests"][0]["clientRequestId"].as_str() {
        call(
            "GET",
            &format!("/requests/{id}"),
            "/requests/{clientRequestId}",
            b"",
        );
    }
    call(
        "POST",
        "/failures/retry",
        "/failures/retry",
        br#"{"objectType":"ACCOUNT","ids":["acc-1"]}"#,
    );
    call(
        "DELETE",
        "/failures/ACCOUNT/acc-1",
        "/failures/{objectType}/{objectId}",
        b"",
    );
    call("POST", "/flush?force=true", "/flush", b"");
    call("GET", "/status", "/status", b"");
    call("GET", "/metrics", "/metrics", b"");
    call("GET", "/healthz", "/healthz", b"");
    call("GET", "/", "/", b"");
    call("GET", "/openapi.json", "/openapi.json", b"");
    call("POST", "/sweep", "/sweep", b"");
    call("GET", "/nowhere", "/status", b"");
}

/// The check above finds what it is for: a missing member, a wrong type, an undeclared member.
#[test]
fn the_schema_check_finds_a_drift() {
    let doc = document();
    let schema = serde_json::json!({"$ref": "#/components/schemas/QuotaUsage"});
    let mut errors = Vec::new();
    check(
        &doc,
        &schema,
        &serde_json::json!({"thisSecond": "1", "thisHour": 0, "perSecond": 3, "perHour": 0, "perDay": 0, "surprise": 1}),
        "body",
        &mut errors,
    );
    assert_eq!(errors.len(), 3, "{errors:?}");
}
