//! The router's own tests: request ids, and the bodies and queries schemathesis found accepted.

use super::*;
use crate::testing::{bridge, configured, request, ScriptedGong, VirtualClock};

/// A configured bridge over fresh doubles, as `$bridge`, with its scripted Gong as `$gong`.
macro_rules! doubles {
    ($gong:ident, $bridge:ident) => {
        let (kv, clock) = (
            crate::store::memory::MemoryKv::default(),
            VirtualClock::at(1_700_000_000),
        );
        let $gong = ScriptedGong::new(&clock);
        let config = configured(&[]);
        let $bridge = bridge(&kv, &config, &$gong, &clock);
    };
}

/// Found by schemathesis on real Spin: serde reads a struct from a JSON array too, so
/// `[null, null]` was a valid `POST /failures/retry` body (retry everything). Bodies of
/// these routes are objects; anything else is a 400.
#[test]
fn a_json_body_that_is_not_an_object_is_refused() {
    doubles!(gong, b);
    let auth = [
        ("authorization", "Bearer token"),
        ("content-type", "application/json"),
    ];
    for (method, path, body) in [
        ("POST", "/failures/retry", "[null, null]"),
        ("PUT", "/integration", r#"["ACME", "ops@acme.com"]"#),
        ("POST", "/failures/retry", "null"),
    ] {
        let response = handle(&b, request(method, path, &auth, body.as_bytes())).response;
        assert_eq!(
            response.status(),
            400,
            "{method} {path} {body}: {}",
            String::from_utf8_lossy(response.body())
        );
    }
    assert!(gong.calls().is_empty());
}

/// Found by schemathesis on real Spin: the same Idempotency-Key and body with another query
/// (`?strict=-58800`) replayed the first answer (202) instead of being refused: the query is
/// part of the request the key names.
#[test]
fn an_idempotency_key_reused_with_another_query_is_not_a_replay() {
    doubles!(gong, b);
    let headers = [
        ("authorization", "Bearer token"),
        ("content-type", "application/json"),
        ("idempotency-key", "key-1"),
    ];
    let body =
        br#"[{"objectId": "0", "modifiedDate": "2024-05-01T10:00:00Z", "isDeleted": false}]"#;
    assert_eq!(
        handle(&b, request("POST", "/records/ACCOUNT", &headers, body))
            .response
            .status(),
        202
    );
    let again = handle(&b, request("POST", "/records/ACCOUNT", &headers, body)).response;
    assert_eq!(
        again
            .headers()
            .get("idempotency-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let other = handle(
        &b,
        request("POST", "/records/ACCOUNT?strict=-58800", &headers, body),
    )
    .response;
    assert_eq!(
        other.status(),
        422,
        "{}",
        String::from_utf8_lossy(other.body())
    );
}

/// Found by schemathesis on real Spin: `?ids=a,,,b` dropped the empty ids silently, so a
/// list of more than 100 items (the documented bound) could pass. An empty id is a 400.
#[test]
fn an_empty_id_in_a_lookup_is_refused() {
    doubles!(gong, b);
    for query in ["ids=a,,b", "ids=a,", "ids="] {
        let response = handle(
            &b,
            request(
                "GET",
                &format!("/records/ACCOUNT?{query}"),
                &[("authorization", "Bearer token")],
                b"",
            ),
        )
        .response;
        assert_eq!(
            response.status(),
            400,
            "{query}: {}",
            String::from_utf8_lossy(response.body())
        );
    }
    assert!(gong.calls().is_empty());
}
