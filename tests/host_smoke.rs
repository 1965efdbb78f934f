//! Tests of the test host itself (tests/support): the KV store, the mock Gong, the outbound
//! allow-list and sender, and one end-to-end request through the real component.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::kv::{KvStats, INJECTED_FAILURE};
use support::outbound::{send_request, OutboundHooks};
use support::spin::kv_bindings::Error as KvError;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiHttpHooks};

// ----- MemKv ---------------------------------------------------------------------------------

#[test]
fn kv_enforces_spin_key_and_value_limits() {
    let kv = MemKv::new();
    let max_key = "k".repeat(MAX_KEY_BYTES);
    kv.guest_set(&max_key, b"v".to_vec())
        .expect("a 255-byte key is allowed");
    assert_eq!(kv.get(&max_key).as_deref(), Some(&b"v"[..]));

    let long_key = "k".repeat(MAX_KEY_BYTES + 1);
    for result in [
        kv.guest_set(&long_key, b"v".to_vec()).map(|_| ()),
        kv.guest_get(&long_key).map(|_| ()),
        kv.guest_delete(&long_key).map(|_| ()),
        kv.guest_exists(&long_key).map(|_| ()),
    ] {
        match result {
            Err(KvError::Other(msg)) => assert!(msg.contains("key too long"), "{msg}"),
            other => panic!("256-byte key: expected other(key too long), got {other:?}"),
        }
    }
    // Multi-byte characters count in bytes, not chars.
    let wide_key = "é".repeat(128); // 256 bytes
    assert!(matches!(
        kv.guest_set(&wide_key, vec![]),
        Err(KvError::Other(_))
    ));

    kv.guest_set("big", vec![7; MAX_VALUE_BYTES])
        .expect("a 1 MiB value is allowed");
    assert_eq!(kv.get("big").map(|v| v.len()), Some(MAX_VALUE_BYTES));
    match kv.guest_set("big", vec![7; MAX_VALUE_BYTES + 1]) {
        Err(KvError::Other(msg)) => assert!(msg.contains("value too large"), "{msg}"),
        other => panic!("1 MiB + 1: expected other(value too large), got {other:?}"),
    }
    // The failed set left the previous value alone.
    assert_eq!(kv.get("big").map(|v| v.len()), Some(MAX_VALUE_BYTES));
    assert_eq!(kv.keys(), vec!["big".to_owned(), max_key]);
}

#[test]
fn kv_failure_injection_is_targeted_and_counted() {
    let kv = MemKv::new();
    kv.fail_sets_matching("req:", 2);
    let injected = Err(KvError::Other(INJECTED_FAILURE.to_owned()));

    assert_eq!(kv.guest_set("req:1", b"a".to_vec()), injected);
    assert_eq!(
        kv.guest_set("other", b"b".to_vec()),
        Ok(()),
        "non-matching key unaffected"
    );
    assert_eq!(kv.guest_set("req:2", b"c".to_vec()), injected);
    assert_eq!(
        kv.guest_set("req:3", b"d".to_vec()),
        Ok(()),
        "only 2 failures were injected"
    );
    assert_eq!(kv.keys(), vec!["other".to_owned(), "req:3".to_owned()]);
    assert_eq!(kv.pending_failures(), 0);

    kv.fail_next_sets(1);
    assert_eq!(kv.guest_set("x", b"1".to_vec()), injected);
    assert_eq!(kv.guest_set("x", b"1".to_vec()), Ok(()));

    kv.fail_gets_matching("x", 1);
    assert_eq!(kv.guest_get("other"), Ok(Some(b"b".to_vec())));
    assert_eq!(
        kv.guest_get("x"),
        Err(KvError::Other(INJECTED_FAILURE.to_owned()))
    );
    assert_eq!(kv.guest_get("x"), Ok(Some(b"1".to_vec())));
    assert_eq!(kv.guest_get("missing"), Ok(None));

    kv.fail_deletes_matching("x", 1);
    assert!(kv.guest_delete("x").is_err());
    assert!(kv.contains("x"), "a failed delete keeps the key");
    assert_eq!(kv.guest_delete("x"), Ok(()));
    assert_eq!(
        kv.guest_delete("x"),
        Ok(()),
        "deleting a missing key is not an error"
    );

    assert_eq!(kv.guest_open("default"), Ok(()));
    assert_eq!(kv.guest_open("other-store"), Err(KvError::NoSuchStore));

    assert_eq!(
        kv.stats(),
        KvStats {
            opens: 2,
            gets: 4,
            sets: 6,
            deletes: 3,
            exists: 0,
            get_keys: 0,
            errors: 6,
        }
    );
    assert_eq!((kv.gets(), kv.sets()), (4, 6));
}

#[test]
fn kv_clones_share_state_and_host_accessors_are_not_counted() {
    let kv = MemKv::new();
    let other = kv.clone();
    other.set_json("cfg", &json!({"integrationId": "42"}));
    kv.guest_set("b", b"2".to_vec()).expect("set");
    assert_eq!(kv.get_json("cfg"), Some(json!({"integrationId": "42"})));
    assert_eq!(other.get_string("b").as_deref(), Some("2"));
    assert_eq!(
        other.guest_get_keys(),
        Ok(vec!["b".to_owned(), "cfg".to_owned()])
    );
    assert_eq!(kv.keys_with_prefix("c"), vec!["cfg".to_owned()]);
    assert_eq!(kv.stats().sets, 1, "host-side set is not a guest operation");
    assert_eq!(kv.stats().get_keys, 1);
}

// ----- multipart parsing ---------------------------------------------------------------------

#[test]
fn multipart_parser_handles_real_world_framing() {
    // Body content with CRLFs, dash pairs, a partial boundary after CRLF and the full boundary
    // not preceded by CRLF (neither is a delimiter).
    let tricky = b"line1\r\n--not-the-boundary\r\n--Xy\r\nmid--XyZ\r\nend".to_vec();
    let (ct, body) = build_multipart(
        "XyZ",
        &[
            (
                "dataToUpload",
                Some("accounts.ldjson"),
                Some("application/x-ndjson"),
                &tricky,
            ),
            ("note", None, None, b""),
        ],
    );
    let parts = parse_multipart(&ct, &body).expect("valid multipart");
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].name, "dataToUpload");
    assert_eq!(parts[0].filename.as_deref(), Some("accounts.ldjson"));
    assert_eq!(
        parts[0].content_type.as_deref(),
        Some("application/x-ndjson")
    );
    assert_eq!(parts[0].body, tricky);
    assert_eq!(parts[1].name, "note");
    assert_eq!(parts[1].filename, None);
    assert!(parts[1].body.is_empty());

    // Quoted boundary, preamble, epilogue, lowercase header names, extra parameters.
    let body = b"preamble\r\n--a b\r\ncontent-disposition: form-data; name=\"f\"; filename=\"x \\\"y\\\".json\"\r\n\r\n{}\r\n--a b--\r\nepilogue";
    let parts = parse_multipart("multipart/form-data; charset=utf-8; boundary=\"a b\"", body)
        .expect("quoted boundary");
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].filename.as_deref(), Some("x \"y\".json"));
    assert_eq!(parts[0].body, b"{}");
}

#[test]
fn multipart_parser_rejects_broken_bodies() {
    let ct = "multipart/form-data; boundary=B";
    let cases: [(&str, &[u8]); 5] = [
        (
            "no closing delimiter",
            b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n",
        ),
        (
            "no name",
            b"--B\r\nContent-Disposition: form-data\r\n\r\nx\r\n--B--",
        ),
        (
            "no disposition",
            b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--",
        ),
        (
            "no blank line",
            b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\n--B--",
        ),
        ("no boundary at all", b"hello"),
    ];
    for (what, body) in cases {
        assert!(
            parse_multipart(ct, body).is_err(),
            "{what}: should be rejected"
        );
    }
    assert!(
        parse_multipart("multipart/form-data", b"--B--").is_err(),
        "missing boundary param"
    );
}

// ----- MockGong ------------------------------------------------------------------------------

/// Sends raw bytes to `addr` and reads until the server closes the connection.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the mock");
    stream.write_all(request).await.expect("write the request");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the mock answers within 10 s")
        .expect("read the response");
    out
}

fn split_response(raw: &[u8]) -> (u16, String, Vec<u8>) {
    let text = String::from_utf8_lossy(raw);
    let (head, _) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let body = raw[head.len() + 4..].to_vec();
    (status, head.to_ascii_lowercase(), body)
}

fn http_request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {target} HTTP/1.1\r\nhost: gong\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[tokio::test]
async fn mock_gong_records_multipart_uploads_and_answers_like_gong() {
    let mock = MockGong::start().await;
    let ldjson = b"{\"objectId\":\"1\"}\n{\"objectId\":\"2\"}\n";
    let (ct, body) = build_multipart(
        "----bridge7MA4YWxk",
        &[(
            "dataToUpload",
            Some("data.ldjson"),
            Some("application/x-ldjson"),
            ldjson,
        )],
    );
    let raw = raw_exchange(
        mock.addr(),
        &http_request(
            "POST",
            "/v2/crm/entities?integrationId=551&objectType=ACCOUNT&clientRequestId=a%20b%2Bc+d",
            &[("content-type", &ct), ("Authorization", "Basic dGVzdA==")],
            &body,
        ),
    )
    .await;
    let (status, head, resp_body) = split_response(&raw);
    assert_eq!(status, 201);
    assert!(head.contains("content-type: application/json"), "{head}");
    let json: serde_json::Value = serde_json::from_slice(&resp_body).expect("JSON answer");
    assert_eq!(
        json,
        json!({"requestId": "mock-req", "clientRequestId": "a b+c d"})
    );

    let recorded = mock.received_on("post", "/v2/crm/entities");
    assert_eq!(recorded.len(), 1);
    let r = &recorded[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.query,
        vec![
            ("integrationId".to_owned(), "551".to_owned()),
            ("objectType".to_owned(), "ACCOUNT".to_owned()),
            ("clientRequestId".to_owned(), "a b+c d".to_owned()),
        ]
    );
    assert_eq!(r.header("authorization"), Some("Basic dGVzdA=="));
    assert!(r.headers.iter().all(|(k, _)| k == &k.to_ascii_lowercase()));
    assert_eq!(r.multipart_error, None);
    let part = r.part("dataToUpload").expect("the dataToUpload part");
    assert_eq!(part.filename.as_deref(), Some("data.ldjson"));
    assert_eq!(part.content_type.as_deref(), Some("application/x-ldjson"));
    assert_eq!(part.body, ldjson);
    assert_eq!(part.lines().len(), 2);

    // A broken multipart body is recorded with the reason.
    raw_exchange(
        mock.addr(),
        &http_request(
            "POST",
            "/v2/crm/entities",
            &[("content-type", "multipart/form-data; boundary=Q")],
            b"--Q\r\n",
        ),
    )
    .await;
    let last = mock.received().pop().expect("second request recorded");
    assert!(last.parts.is_empty());
    assert!(last.multipart_error.is_some());
}

#[tokio::test]
async fn mock_gong_scripts_are_fifo_then_sticky_then_default() {
    let mock = MockGong::start().await;
    mock.on(
        "GET",
        "/v2/crm/integrations",
        MockResponse::json(500, json!({"errors": ["first"]})),
    );
    mock.on(
        "GET",
        "/v2/crm/integrations",
        MockResponse::text(429, "slow down").header("Retry-After", "3"),
    );
    let get = http_request("GET", "/v2/crm/integrations", &[], b"");

    let (s1, _, b1) = split_response(&raw_exchange(mock.addr(), &get).await);
    assert_eq!(
        (
            s1,
            serde_json::from_slice::<serde_json::Value>(&b1).expect("json")
        ),
        (500, json!({"errors": ["first"]}))
    );
    let (s2, h2, b2) = split_response(&raw_exchange(mock.addr(), &get).await);
    assert_eq!((s2, b2.as_slice()), (429, &b"slow down"[..]));
    assert!(h2.contains("retry-after: 3"), "{h2}");
    let (s3, _, b3) = split_response(&raw_exchange(mock.addr(), &get).await);
    assert_eq!(s3, 200, "queue empty: default answer");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&b3).expect("json")["integrations"],
        json!([])
    );

    mock.always("GET", "/v2/crm/integrations", MockResponse::empty(503));
    mock.on("GET", "/v2/crm/integrations", MockResponse::empty(204));
    let statuses: Vec<u16> = [
        raw_exchange(mock.addr(), &get).await,
        raw_exchange(mock.addr(), &get).await,
        raw_exchange(mock.addr(), &get).await,
    ]
    .iter()
    .map(|r| split_response(r).0)
    .collect();
    assert_eq!(statuses, vec![204, 503, 503], "one-shot before sticky");

    let (s404, _, _) =
        split_response(&raw_exchange(mock.addr(), &http_request("GET", "/nope", &[], b"")).await);
    assert_eq!(s404, 404);
    let del = raw_exchange(
        mock.addr(),
        &http_request(
            "DELETE",
            "/v2/crm/integrations?integrationId=1&clientRequestId=r-1",
            &[],
            b"",
        ),
    )
    .await;
    let (sd, _, bd) = split_response(&del);
    assert_eq!(sd, 201);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&bd).expect("json")["clientRequestId"],
        json!("r-1")
    );

    assert_eq!(mock.request_count(), 8);
    assert_eq!(mock.received_on("GET", "/v2/crm/integrations").len(), 6);
    assert!(mock.unused_responses().is_empty());
    mock.clear();
    assert!(mock.received().is_empty());
}

#[tokio::test]
async fn mock_gong_close_drops_the_connection_and_delay_delays() {
    let mock = MockGong::start().await;
    mock.on("POST", "/v2/crm/entity-schema", MockResponse::close());
    let raw = raw_exchange(
        mock.addr(),
        &http_request("POST", "/v2/crm/entity-schema", &[], b"{}"),
    )
    .await;
    assert!(
        raw.is_empty(),
        "close() must not answer, got {:?}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(
        mock.received_on("POST", "/v2/crm/entity-schema").len(),
        1,
        "still recorded"
    );

    mock.on(
        "GET",
        "/v2/crm/request-status",
        MockResponse::json(200, json!({"status": "PENDING"})).delay(Duration::from_millis(300)),
    );
    let started = Instant::now();
    let (status, _, _) = split_response(
        &raw_exchange(
            mock.addr(),
            &http_request("GET", "/v2/crm/request-status", &[], b""),
        )
        .await,
    );
    assert_eq!(status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "delay honoured: {:?}",
        started.elapsed()
    );
}

// ----- outbound allow-list and sender --------------------------------------------------------

#[test]
fn allow_list_matches_scheme_host_and_port_exactly() {
    let allowed = vec![Origin::parse("http://127.0.0.1:4567").expect("origin")];
    let ok = |u: &str| is_allowed(&allowed, &u.parse::<http::Uri>().expect("uri"));
    assert!(ok("http://127.0.0.1:4567/v2/crm/entities?x=1"));
    assert!(!ok("http://127.0.0.1:4568/v2/crm/entities"), "other port");
    assert!(!ok("https://127.0.0.1:4567/"), "other scheme");
    assert!(!ok("http://localhost:4567/"), "other host name");
    assert!(!ok("http://127.0.0.1/"), "default port 80 differs");

    let gong = vec![Origin::parse("https://US-55616.api.gong.io/").expect("origin")];
    let ok = |u: &str| is_allowed(&gong, &u.parse::<http::Uri>().expect("uri"));
    assert!(
        ok("https://us-55616.api.gong.io/v2/crm/integrations"),
        "host case-insensitive, path ignored"
    );
    assert!(
        ok("https://us-55616.api.gong.io:443/"),
        "explicit default port"
    );
    assert!(!ok("http://us-55616.api.gong.io/"), "http is not https");
    assert!(
        !ok("https://us-55616.api.gong.io.evil.com/"),
        "suffix attack"
    );
    assert!(!ok("https://evil.com/us-55616.api.gong.io"));

    assert!(Origin::parse("ftp://x").is_err());
    assert!(Origin::parse("not a url").is_err());
    assert!(
        !is_allowed(
            &[],
            &"http://127.0.0.1:1/".parse::<http::Uri>().expect("uri")
        ),
        "empty allow-list"
    );
}

fn outgoing(method: &str, url: &str) -> http::Request<wasmtime_wasi_http::WasiBody> {
    use http_body_util::BodyExt;
    http::Request::builder()
        .method(method)
        .uri(url)
        .body(
            http_body_util::Empty::<bytes::Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("request")
}

#[tokio::test]
async fn hooks_deny_hosts_outside_the_allow_list_and_send_the_rest() {
    let mock = MockGong::start().await;
    let log = std::sync::Arc::new(OutboundLog::default());
    let mut hooks = OutboundHooks {
        allowed: vec![Origin::parse(&mock.base_url()).expect("origin")],
        log: log.clone(),
    };
    let denied = Box::into_pin(hooks.send_request(
        outgoing("GET", "http://127.0.0.1:1/v2/crm/integrations"),
        None,
        Box::new(async { Ok(()) }),
    ))
    .await;
    assert!(
        matches!(denied, Err(HttpError::HttpRequestDenied)),
        "{:?}",
        denied.err()
    );
    assert_eq!(mock.request_count(), 0);

    let sent = Box::into_pin(hooks.send_request(
        outgoing(
            "GET",
            &format!("{}/v2/crm/integrations?integrationId=7", mock.base_url()),
        ),
        None,
        Box::new(async { Ok(()) }),
    ))
    .await;
    let (resp, _io) = sent.expect("allowed request is sent");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        mock.received_on("GET", "/v2/crm/integrations")[0].query_param("integrationId"),
        Some("7")
    );

    assert_eq!((log.attempts(), log.sent(), log.denied()), (2, 1, 1));
    assert_eq!(
        log.denied_urls(),
        vec!["http://127.0.0.1:1/v2/crm/integrations".to_owned()]
    );
}

#[tokio::test]
async fn sender_honours_timeouts_and_reports_refused_connections() {
    let mock = MockGong::start().await;
    mock.on(
        "GET",
        "/slow",
        MockResponse::text(200, "late").delay(Duration::from_secs(5)),
    );
    let options = RequestOptions {
        connect_timeout: Some(Duration::from_secs(2)),
        first_byte_timeout: Some(Duration::from_millis(200)),
        between_bytes_timeout: None,
    };
    let started = Instant::now();
    let result = send_request(
        outgoing("GET", &format!("{}/slow", mock.base_url())),
        Some(options),
    )
    .await;
    assert!(
        matches!(result, Err(HttpError::ConnectionReadTimeout)),
        "{:?}",
        result.err()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "first-byte timeout: {:?}",
        started.elapsed()
    );

    let result = send_request(
        outgoing("GET", &format!("{}/x", refused_url())),
        Some(options),
    )
    .await;
    assert!(
        matches!(result, Err(HttpError::Connect(_))),
        "{:?}",
        result.err()
    );

    mock.on("GET", "/dropped", MockResponse::close());
    let result = send_request(
        outgoing("GET", &format!("{}/dropped", mock.base_url())),
        Some(options),
    )
    .await;
    assert!(result.is_err(), "a dropped connection is an error");
}

// ----- the component -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_answers_healthz_with_a_status() {
    let app = TestApp::spawn().await;
    let rt = runtime();
    eprintln!(
        "component {} (build {:.1?}, load {:.1?}, from cache: {})",
        rt.wasm_path.display(),
        rt.build_time,
        rt.load_time,
        rt.from_cache
    );
    let first = app.get("/healthz").await;
    assert!(
        (100..=599).contains(&first.status),
        "status {}",
        first.status
    );
    eprintln!("GET /healthz -> {} {}", first.status, first.text());

    // Sequential cost per request (fresh instance each time).
    let n = 20;
    let started = Instant::now();
    for _ in 0..n {
        let r = app.get("/healthz").await;
        assert_eq!(r.status, first.status);
    }
    eprintln!(
        "{n} sequential GET /healthz: {:.2?} per request",
        started.elapsed() / n
    );

    // Concurrent requests on clones of one app, and on a second app sharing the KV store.
    let other = TestApp::builder().kv(app.kv().clone()).build().await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let a = if i % 2 == 0 {
                app.clone()
            } else {
                other.clone()
            };
            tokio::spawn(async move { a.get("/healthz").await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("request task"), first.status);
    }
    eprintln!(
        "16 concurrent GET /healthz: {:.2?} total",
        started.elapsed()
    );
}
