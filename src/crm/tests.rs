//! The receivers natively: authentication, the vendors' documented deliveries through the
//! default mappings (`testdata/`, from `shared/crm/samples`, each file the vendor's example), and
//! a delivery's whole way through the bridge to Gong or the failure store.

use serde_json::{json, Value};

use super::pipedrive::Pipedrive;
use super::*;
use crate::app::{follow_up, handle};
use crate::ports::Clock;
use crate::store::memory::MemoryKv;
use crate::testing::{bridge, configured, request, ScriptedGong, VirtualClock};

fn sample(name: &str) -> Vec<u8> {
    let path = format!("{}/src/crm/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const PD_USER: &str = "pd-user";
const PD_PASSWORD: &str = "pd-secret";

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn pd_config() -> crate::testing::MapConfig {
    configured(&[
        ("pipedrive_webhook_user", PD_USER),
        ("pipedrive_webhook_password", PD_PASSWORD),
        ("gong_calls_per_second", "0"),
    ])
}

/// The Gong records a delivery maps to with `receiver`'s default mapping (thin changes have
/// none to show here).
fn mapped_by(receiver: &dyn Receiver, body: &[u8]) -> Vec<(ObjectType, Value)> {
    let delivery = receiver.parse(body).unwrap();
    let mapping = mapping(receiver).unwrap();
    let mut out = Vec::new();
    for change in delivery.changes {
        let (object, mapped) = match change {
            Change::Upsert {
                object,
                record,
                event,
            } => {
                let o = mapping.object(&object).unwrap();
                (
                    o.to,
                    mapping.apply(
                        o,
                        &Input {
                            record: &record,
                            event: &event,
                        },
                    ),
                )
            }
            Change::Delete { object, id, at } => {
                let o = mapping.object(&object).unwrap();
                (o.to, mapping.deleted(o, &id, &at))
            }
            thin @ (Change::Fetch { .. } | Change::Gone { .. }) => {
                panic!("a thin change: {thin:?}")
            }
        };
        out.push((object, mapped.unwrap()));
    }
    out
}

/// A Pipedrive sample, mapped.
fn mapped(name: &str) -> Vec<(ObjectType, Value)> {
    mapped_by(&Pipedrive, &sample(name))
}

/// A Close delivery, mapped.
fn close_mapped(body: &[u8]) -> Vec<(ObjectType, Value)> {
    mapped_by(&super::close::Close, body)
}

#[test]
fn pipedrive_basic_auth_good_wrong_missing_and_unconfigured() {
    let config = pd_config();
    let headers = |auth: Option<&str>| {
        let mut h = http::HeaderMap::new();
        if let Some(a) = auth {
            h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    };
    let body = sample("pipedrive/deal_create.json");
    assert_eq!(
        Pipedrive.verify(
            &config,
            &headers(Some(&basic(PD_USER, PD_PASSWORD))),
            &body,
            0
        ),
        Ok(())
    );
    assert!(matches!(
        Pipedrive.verify(&config, &headers(Some(&basic(PD_USER, "nope"))), &body, 0),
        Err(VerifyError::Refused(_))
    ));
    assert!(matches!(
        Pipedrive.verify(&config, &headers(Some("Basic !!!")), &body, 0),
        Err(VerifyError::Refused(_))
    ));
    assert!(matches!(
        Pipedrive.verify(&config, &headers(None), &body, 0),
        Err(VerifyError::Refused(_))
    ));
    let unset = configured(&[]);
    assert_eq!(
        Pipedrive.verify(
            &unset,
            &headers(Some(&basic(PD_USER, PD_PASSWORD))),
            &body,
            0
        ),
        Err(VerifyError::NotConfigured(vec![
            "pipedrive_webhook_user".into(),
            "pipedrive_webhook_password".into()
        ]))
    );
}

#[test]
fn the_default_pipedrive_mapping_is_a_valid_document() {
    assert_eq!(mapping(&Pipedrive).unwrap().check(), Vec::new());
}

/// CRM-NOTES §5, on Pipedrive's own examples.
#[test]
fn pipedrive_samples_map_to_the_documented_gong_records() {
    assert_eq!(
        mapped("pipedrive/organization_create.json"),
        vec![(
            ObjectType::Account,
            json!({"objectId": "1", "modifiedDate": "2022-11-24T13:18:55Z", "name": "Sample Org"})
        )]
    );
    assert_eq!(
        mapped("pipedrive/person_create.json"),
        vec![(
            ObjectType::Contact,
            json!({"objectId": "8", "modifiedDate": "2022-11-24T13:18:55Z", "firstName": "Sample", "accountId": "1"})
        )]
    );
    let deal = &mapped("pipedrive/deal_create.json")[0];
    assert_eq!(deal.0, ObjectType::Deal);
    for (field, value) in [
        ("objectId", json!("8")),
        ("name", json!("Sample Org deal")),
        ("status", json!("OPEN")),
        ("stage", json!("2")),
        ("ownerId", json!("12415231")),
        ("accountId", json!("1")),
        ("amount", json!(100)),
    ] {
        assert_eq!(deal.1[field], value, "{field}: {}", deal.1);
    }
    assert_eq!(
        deal.1["createdDate"], deal.1["modifiedDate"],
        "a deal's update_time is null on create: add_time"
    );
    assert_eq!(mapped("pipedrive/deal_delete.json")[0].1["isDeleted"], true);
    let lead = &mapped("pipedrive/lead_create.json")[0];
    assert_eq!(
        (lead.0, &lead.1["modifiedDate"]),
        (ObjectType::Lead, &json!("2022-11-24T15:35:58Z")),
        "milliseconds dropped"
    );
    let user = &mapped("pipedrive/user_change.json")[0];
    assert_eq!(
        user.1,
        json!({"objectId": "12415231", "modifiedDate": "2022-11-24T15:42:22Z", "emailAddress": "sample@mailforspam.com", "isDeleted": false})
    );
    assert_eq!(
        mapped("pipedrive/stage_change.json")[0].1,
        json!({"objectId": "48", "modifiedDate": "2024-09-02T10:36:49Z", "name": "Sample Stage", "sortOrder": 6, "isActive": true})
    );
}

#[test]
fn a_merge_deletes_the_losing_record_and_other_entities_are_ignored() {
    let merged = json!({"data": null, "previous": {"id": 5}, "meta": {"action": "delete", "entity": "person", "entity_id": "5", "merged_to_id": "6", "id": "m-1", "timestamp": "2024-05-01T10:00:00.123Z", "version": "2.0"}});
    let delivery = Pipedrive.parse(merged.to_string().as_bytes()).unwrap();
    assert_eq!(
        delivery.changes,
        vec![Change::Delete {
            object: "person".into(),
            id: "5".into(),
            at: "2024-05-01T10:00:00.123Z".into()
        }]
    );
    let v1 = json!({"current": {}, "previous": null, "event": "added.deal", "meta": {"v": 1}});
    assert!(
        Pipedrive
            .parse(v1.to_string().as_bytes())
            .unwrap()
            .ignored
            .unwrap()
            .contains("v2"),
        "a v1 delivery is said to be one"
    );
    assert!(Pipedrive.parse(b"[]").is_err(), "not a Pipedrive delivery");
    let old = json!({"data": {}, "meta": {"version": "1.0", "id": "x"}});
    assert!(Pipedrive
        .parse(old.to_string().as_bytes())
        .unwrap()
        .ignored
        .is_some());
}

fn pd_webhook(body: &[u8], auth: &str) -> crate::ports::Request {
    request(
        "POST",
        "/webhooks/pipedrive",
        &[
            ("authorization", auth),
            ("content-type", "application/json"),
        ],
        body,
    )
}

/// A delivery exactly as Pipedrive documents it reaches Gong as the mapped record; a retry of
/// it is one version; wrong auth is 401 and stores nothing.
#[test]
fn a_pipedrive_delivery_reaches_gong_mapped() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_700_000_000));
    let gong = ScriptedGong::new(&clock);
    let config = pd_config();
    let b = bridge(&kv, &config, &gong, &clock);
    let refused = handle(
        &b,
        pd_webhook(
            &sample("pipedrive/deal_create.json"),
            &basic(PD_USER, "wrong"),
        ),
    );
    assert_eq!(refused.response.status(), 401);
    assert!(kv.map.borrow().is_empty(), "nothing stored");
    for _ in 0..2 {
        let answer = handle(
            &b,
            pd_webhook(
                &sample("pipedrive/deal_create.json"),
                &basic(PD_USER, PD_PASSWORD),
            ),
        );
        let body: Value = serde_json::from_slice(answer.response.body()).unwrap();
        assert_eq!(
            (answer.response.status().as_u16(), &body["accepted"]),
            (202, &json!(1)),
            "{body}"
        );
        follow_up(&b.with_budget(clock.now()), answer.first);
    }
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
    let uploads: Vec<_> = gong
        .calls()
        .into_iter()
        .filter(|c| c.path.starts_with("/v2/crm/entities"))
        .collect();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert!(
        uploads[0].path.contains("objectType=DEAL"),
        "{}",
        uploads[0].path
    );
    let line: Value = serde_json::from_slice(&gong.bodies.borrow()[uploads[0].index]).unwrap();
    assert_eq!(
        (
            line["objectId"].as_str(),
            line["status"].as_str(),
            line["stage"].as_str()
        ),
        (Some("8"), Some("OPEN"), Some("2")),
        "{line}"
    );
}

/// An authentic delivery whose record cannot be mapped (or breaks Gong's rules) is answered 2xx:
/// the record is in the failure store with the field, the rule and the source's id, and a retry
/// maps it again.
#[test]
fn an_unmappable_pipedrive_record_is_accepted_into_the_failure_store() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_700_000_000));
    let gong = ScriptedGong::new(&clock);
    let config = pd_config();
    let b = bridge(&kv, &config, &gong, &clock);
    let mut deal: Value = serde_json::from_slice(&sample("pipedrive/deal_create.json")).unwrap();
    deal["data"]["status"] = json!("deleted");
    deal["data"]["value"] = json!("a lot");
    let answer = handle(
        &b,
        pd_webhook(deal.to_string().as_bytes(), &basic(PD_USER, PD_PASSWORD)),
    );
    let body: Value = serde_json::from_slice(answer.response.body()).unwrap();
    assert_eq!(
        (
            answer.response.status().as_u16(),
            &body["accepted"],
            &body["rejected"]
        ),
        (202, &json!(0), &json!(1)),
        "{body}"
    );
    follow_up(&b.with_budget(clock.now()), answer.first);
    handle(
        &b.with_budget(clock.now()),
        request(
            "POST",
            "/flush?force=true",
            &[("authorization", "Bearer token")],
            b"",
        ),
    );
    let failures: Value = serde_json::from_slice(
        handle(
            &b,
            request(
                "GET",
                "/failures",
                &[("authorization", "Bearer token")],
                b"",
            ),
        )
        .response
        .body(),
    )
    .unwrap();
    let failure = &failures["failures"][0];
    assert_eq!(
        (
            failure["objectType"].as_str(),
            failure["objectId"].as_str(),
            failure["source"].as_str()
        ),
        (Some("DEAL"), Some("8"), Some("pipedrive")),
        "{failures}"
    );
    let why = failure["description"].as_str().unwrap();
    assert!(
        why.contains("amount")
            && why.contains("convert.number")
            && why.contains("status")
            && why.contains("convert.valueMap"),
        "{why}"
    );
    let status: Value = serde_json::from_slice(
        handle(
            &b,
            request(
                "GET",
                "/records/DEAL/8/status",
                &[("authorization", "Bearer token")],
                b"",
            ),
        )
        .response
        .body(),
    )
    .unwrap();
    assert_eq!(status["state"], "failed", "{status}");
    assert!(
        gong.calls()
            .iter()
            .all(|c| !c.path.starts_with("/v2/crm/entities")),
        "nothing unmappable went to Gong"
    );
    // A retry maps it again with the (unchanged) mapping: it stays a failure, with today's reason.
    let retry = handle(
        &b,
        request(
            "POST",
            "/failures/retry",
            &[("authorization", "Bearer token")],
            b"",
        ),
    );
    assert_eq!(retry.response.status(), 202);
    follow_up(&b.with_budget(clock.now()), retry.first);
    let failures: Value = serde_json::from_slice(
        handle(
            &b,
            request(
                "GET",
                "/failures",
                &[("authorization", "Bearer token")],
                b"",
            ),
        )
        .response
        .body(),
    )
    .unwrap();
    assert_eq!(failures["total"], 1, "{failures}");
    assert!(gong
        .calls()
        .iter()
        .all(|c| !c.path.starts_with("/v2/crm/entities")));
}

// ----- Close ----------------------------------------------------------------------------------

const CLOSE_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn close_headers(body: &[u8], timestamp: i64, key_hex: &str) -> http::HeaderMap {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&hex::decode(key_hex).unwrap()).unwrap();
    mac.update(timestamp.to_string().as_bytes());
    mac.update(body);
    let mut h = http::HeaderMap::new();
    h.insert(
        "close-sig-hash",
        hex::encode(mac.finalize().into_bytes()).parse().unwrap(),
    );
    h.insert(
        "close-sig-timestamp",
        timestamp.to_string().parse().unwrap(),
    );
    h
}

#[test]
fn close_signature_good_wrong_missing_and_stale() {
    use super::close::Close;
    let config = configured(&[("close_webhook_signature_key", CLOSE_KEY)]);
    let body = sample("close/opportunity_updated_won.json");
    let now = 1_700_000_000;
    assert_eq!(
        Close.verify(&config, &close_headers(&body, now, CLOSE_KEY), &body, now),
        Ok(())
    );
    let other_key = "f".repeat(64);
    assert!(matches!(
        Close.verify(&config, &close_headers(&body, now, &other_key), &body, now),
        Err(VerifyError::Refused(_))
    ));
    assert!(
        matches!(
            Close.verify(&config, &close_headers(b"{}", now, CLOSE_KEY), &body, now),
            Err(VerifyError::Refused(_))
        ),
        "another body"
    );
    assert!(matches!(
        Close.verify(&config, &http::HeaderMap::new(), &body, now),
        Err(VerifyError::Refused(_))
    ));
    let stale = Close.verify(
        &config,
        &close_headers(&body, now - 301, CLOSE_KEY),
        &body,
        now,
    );
    assert!(
        matches!(&stale, Err(VerifyError::Refused(why)) if why.contains("301 s")),
        "{stale:?}"
    );
    let widened = configured(&[
        ("close_webhook_signature_key", CLOSE_KEY),
        ("close_signature_max_age_seconds", "86400"),
    ]);
    assert_eq!(
        Close.verify(
            &widened,
            &close_headers(&body, now - 3_600, CLOSE_KEY),
            &body,
            now
        ),
        Ok(()),
        "a retry an hour later, with the window widened"
    );
    assert!(matches!(
        Close.verify(
            &configured(&[]),
            &close_headers(&body, now, CLOSE_KEY),
            &body,
            now
        ),
        Err(VerifyError::NotConfigured(_))
    ));
}

#[test]
fn the_default_close_mapping_is_a_valid_document() {
    assert_eq!(mapping(&super::close::Close).unwrap().check(), Vec::new());
}

/// CRM-NOTES §5, on Close's own examples.
#[test]
fn close_samples_map_to_the_documented_gong_records() {
    let deal = close_mapped(&sample("close/opportunity_updated_won.json"));
    assert_eq!(
        deal,
        vec![(
            ObjectType::Deal,
            json!({
                "objectId": "oppo_8H4sjNso7FyBFaeR3RXi5PMJbilfo0c6UPCxsJtEhCO",
                "modifiedDate": "2019-01-15T12:48:23Z",
                "name": "KLine – Won",
                "accountId": "lead_zwqYhEFwzPyfCErS8uQ77is2wFLvr9BgVi6cTfbFM68",
                "amount": 1000.0,
                "status": "WON",
                "stage": "stat_wMS9M6HC2O3CSEOzF5g2vEGt6RM5R3RfhIQixdnmjf2",
                "ownerId": "user_N6KhMpzHRCYQHdn4gRNIFNN5JExnsrprKA6ekxM63XA",
                "closeDate": "2019-01-15",
                "createdDate": "2019-01-15T12:41:24Z"
            })
        )]
    );
    let lead = close_mapped(&sample("close/lead_created.json"));
    assert_eq!(lead.len(), 2, "the lead and its one contact: {lead:?}");
    assert_eq!(lead[0].0, ObjectType::Account);
    assert_eq!(
        (lead[0].1["name"].as_str(), &lead[0].1["domains"]),
        (
            Some("Bluth Company"),
            &json!(["thebluthcompany.tumblr.com"])
        )
    );
    let contact = &lead[1];
    assert_eq!(contact.0, ObjectType::Contact);
    assert_eq!(
        (
            contact.1["firstName"].as_str(),
            contact.1["emailAddress"].as_str(),
            contact.1["phoneNumber"].as_str(),
            contact.1["title"].as_str()
        ),
        (
            Some("Gob"),
            Some("gob@example.com"),
            Some("+18004445555"),
            Some("sr. vice president")
        )
    );
    assert_eq!(
        contact.1["accountId"], lead[0].1["objectId"],
        "the embedded contact belongs to the lead"
    );
}

#[test]
fn close_deletes_and_merges() {
    let deleted = json!({"event": {"id": "ev_1", "object_type": "contact", "object_id": "cont_1", "action": "deleted", "date_updated": "2024-05-01T10:00:00.123456", "data": null}});
    assert_eq!(
        close_mapped(deleted.to_string().as_bytes()),
        vec![(
            ObjectType::Contact,
            json!({"objectId": "cont_1", "modifiedDate": "2024-05-01T10:00:00Z", "isDeleted": true})
        )]
    );
    let merged = json!({"event": {"id": "ev_2", "object_type": "lead", "object_id": "lead_dest", "action": "merged", "date_updated": "2024-05-01T10:00:00",
        "meta": {"merge_source_lead_id": "lead_src", "merge_destination_lead_id": "lead_dest"},
        "data": {"id": "lead_dest", "display_name": "Dest", "date_updated": "2024-05-01T10:00:00+00:00", "contacts": []}}});
    let out = close_mapped(merged.to_string().as_bytes());
    assert_eq!(
        out[0],
        (
            ObjectType::Account,
            json!({"objectId": "lead_src", "modifiedDate": "2024-05-01T10:00:00Z", "isDeleted": true})
        ),
        "the source lead is deleted"
    );
    assert_eq!(out[1].1["objectId"], "lead_dest");
}

// ----- Attio ----------------------------------------------------------------------------------

const ATTIO_SECRET: &str = "attio-secret-text";

fn attio_sign(body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(ATTIO_SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn attio_config() -> crate::testing::MapConfig {
    configured(&[
        ("attio_webhook_secret", ATTIO_SECRET),
        ("attio_api_token", "attio-token"),
        ("attio_base_url", "https://attio.test"),
        ("gong_calls_per_second", "0"),
    ])
}

fn attio_webhook(body: &[u8]) -> crate::ports::Request {
    let signature = attio_sign(body);
    request(
        "POST",
        "/webhooks/attio",
        &[
            ("attio-signature", &signature),
            ("content-type", "application/json"),
        ],
        body,
    )
}

fn answer(status: u16, body: &[u8]) -> crate::testing::Scripted {
    let response = http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("retry-after", "2")
        .body(body.to_vec())
        .unwrap();
    crate::testing::Scripted {
        answer: Ok(response),
        takes: std::time::Duration::from_millis(5),
    }
}

#[test]
fn attio_signature_good_wrong_missing_and_both_header_names() {
    use super::attio::Attio;
    let config = attio_config();
    let body = sample("attio/webhook_record_updated.json");
    let headers = |name: &str, value: &str| {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    };
    assert_eq!(
        Attio.verify(
            &config,
            &headers("attio-signature", &attio_sign(&body)),
            &body,
            0
        ),
        Ok(())
    );
    assert_eq!(
        Attio.verify(
            &config,
            &headers("x-attio-signature", &attio_sign(&body)),
            &body,
            0
        ),
        Ok(())
    );
    assert!(matches!(
        Attio.verify(
            &config,
            &headers("attio-signature", &attio_sign(b"other")),
            &body,
            0
        ),
        Err(VerifyError::Refused(_))
    ));
    assert!(matches!(
        Attio.verify(&config, &http::HeaderMap::new(), &body, 0),
        Err(VerifyError::Refused(_))
    ));
    assert!(matches!(
        Attio.verify(
            &configured(&[]),
            &headers("attio-signature", "00"),
            &body,
            0
        ),
        Err(VerifyError::NotConfigured(_))
    ));
}

#[test]
fn attio_notifications_are_thin_changes() {
    use super::attio::Attio;
    let updated = Attio
        .parse(&sample("attio/webhook_record_updated.json"))
        .unwrap();
    assert_eq!(
        updated.changes,
        vec![Change::Fetch {
            object_id: "97052eb9-e65e-443f-a297-f2d9a4a7f795".into(),
            record_id: "bf071e1f-6035-429d-b874-d83ea64ea13b".into()
        }]
    );
    let merged = Attio
        .parse(&sample("attio/webhook_record_merged_legacy.json"))
        .unwrap();
    assert_eq!(
        merged.changes,
        vec![
            Change::Gone {
                object_id: "97052eb9-e65e-443f-a297-f2d9a4a7f795".into(),
                record_id: "3405be95-8375-46a0-bde0-03b3753f8c79".into()
            },
            Change::Fetch {
                object_id: "97052eb9-e65e-443f-a297-f2d9a4a7f795".into(),
                record_id: "bf071e1f-6035-429d-b874-d83ea64ea13b".into()
            },
        ]
    );
    let deleted = Attio
        .parse(&sample("attio/webhook_record_deleted.json"))
        .unwrap();
    assert!(
        matches!(deleted.changes.as_slice(), [Change::Gone { .. }]),
        "{deleted:?}"
    );
    assert_eq!(mapping(&Attio).unwrap().check(), Vec::new());
}

#[test]
fn an_attio_person_maps_to_the_documented_contact() {
    use super::attio::Attio;
    let record = super::attio::record(&sample("attio/get_record_person.json")).unwrap();
    let m = mapping(&Attio).unwrap();
    let out = m
        .apply(
            m.object("people").unwrap(),
            &Input {
                record: &record,
                event: &json!({"fetched_at": "2024-06-01T00:00:00Z"}),
            },
        )
        .unwrap();
    assert_eq!(
        out,
        json!({"objectId": "bf071e1f-6035-429d-b874-d83ea64ea13b", "modifiedDate": "2024-06-01T00:00:00Z", "firstName": "John", "lastName": "Smith",
               "emailAddress": "john-smith@attio.com", "phoneNumber": "+15558675309", "title": "Software Engineer", "accountId": "f528bd86-8142-4359-9a8c-b651d50a27b1"})
    );
}

/// Answer first, fetch after: the notification is queued (no API call before the answer), the
/// record is read after it and reaches Gong; an API outage keeps the notification (backoff), a
/// refused token shows on /healthz, a 404 deletes; nothing is lost.
#[test]
fn attio_notifications_are_fetched_after_the_answer_and_survive_api_failures() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_700_000_000));
    let outbound = ScriptedGong::new(&clock);
    let config = attio_config();
    let b = bridge(&kv, &config, &outbound, &clock);
    let body = sample("attio/webhook_record_updated.json");
    let answer_first = handle(&b, attio_webhook(&body));
    let reply: Value = serde_json::from_slice(answer_first.response.body()).unwrap();
    assert_eq!(
        (answer_first.response.status().as_u16(), &reply["queued"]),
        (202, &json!(1)),
        "{reply}"
    );
    assert!(outbound.calls().is_empty(), "no API call before the answer");
    assert!(kv
        .map
        .borrow()
        .keys()
        .any(|k| k.starts_with("fetch/attio/")));

    // Attio fails (500): the notification stays, with a backoff.
    outbound
        .queue
        .borrow_mut()
        .push_back(answer(500, br#"{"message":"boom"}"#));
    follow_up(&b.with_budget(clock.now()), answer_first.first);
    assert!(
        kv.map
            .borrow()
            .keys()
            .any(|k| k.starts_with("fetch/attio/")),
        "kept after a failed read"
    );
    // The token is refused: /healthz says so, the notification waits.
    clock.advance(std::time::Duration::from_secs(30));
    outbound
        .queue
        .borrow_mut()
        .push_back(answer(401, br#"{"message":"invalid token"}"#));
    crate::crm::fetch::drain(&b.with_budget(clock.now()), false).unwrap();
    let health: Value = serde_json::from_slice(
        handle(&b, request("GET", "/healthz", &[], b""))
            .response
            .body(),
    )
    .unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["sources"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("attio_api_token"),
        "{health}"
    );
    assert!(kv
        .map
        .borrow()
        .keys()
        .any(|k| k.starts_with("fetch/attio/")));
    // Fixed: the object is resolved once, the record read, mapped and flushed to Gong.
    clock.advance(std::time::Duration::from_secs(60));
    outbound
        .queue
        .borrow_mut()
        .push_back(answer(200, &sample("attio/get_object_people.json")));
    outbound
        .queue
        .borrow_mut()
        .push_back(answer(200, &sample("attio/get_record_person.json")));
    let flushed: Value = serde_json::from_slice(
        handle(
            &b.with_budget(clock.now()),
            request(
                "POST",
                "/flush?force=true",
                &[("authorization", "Bearer token")],
                b"",
            ),
        )
        .response
        .body(),
    )
    .unwrap();
    assert_eq!(flushed["fetched"]["fetched"], 1, "{flushed}");
    assert!(
        !kv.map.borrow().keys().any(|k| k.starts_with("fetch/")),
        "the notification is done"
    );
    let health: Value = serde_json::from_slice(
        handle(&b, request("GET", "/healthz", &[], b""))
            .response
            .body(),
    )
    .unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    let uploads: Vec<_> = outbound
        .calls()
        .into_iter()
        .filter(|c| c.path.starts_with("/v2/crm/entities"))
        .collect();
    assert_eq!(uploads.len(), 1, "{:?}", outbound.calls());
    let line: Value = serde_json::from_slice(&outbound.bodies.borrow()[uploads[0].index]).unwrap();
    assert_eq!(
        (line["objectId"].as_str(), line["emailAddress"].as_str()),
        (
            Some("bf071e1f-6035-429d-b874-d83ea64ea13b"),
            Some("john-smith@attio.com")
        )
    );
    let reads = outbound
        .calls()
        .iter()
        .filter(|c| c.path.starts_with("/v2/objects/"))
        .count();

    // The same record again, now gone (404): deleted in Gong, the object not resolved again.
    clock.advance(std::time::Duration::from_secs(60));
    let again = handle(&b, attio_webhook(&body));
    outbound
        .queue
        .borrow_mut()
        .push_back(answer(404, br#"{"status_code":404,"code":"not_found"}"#));
    follow_up(&b.with_budget(clock.now()), again.first);
    assert_eq!(
        outbound
            .calls()
            .iter()
            .filter(|c| c.path.starts_with("/v2/objects/"))
            .count(),
        reads + 1,
        "one read, no second object lookup"
    );
    handle(
        &b.with_budget(clock.now()),
        request(
            "POST",
            "/flush?force=true",
            &[("authorization", "Bearer token")],
            b"",
        ),
    );
    let last = outbound
        .calls()
        .into_iter()
        .rev()
        .find(|c| c.path.starts_with("/v2/crm/entities"))
        .unwrap();
    let line: Value = serde_json::from_slice(&outbound.bodies.borrow()[last.index]).unwrap();
    assert_eq!(line["isDeleted"], true, "{line}");
}

/// Attio answers 404 `merge_in_progress` while a merge runs, for the record that survives it
/// (developers.attio.com, "Merging records"): that is "later", never "gone". Reported by the
/// CRM-NOTES check; the bridge used to delete the surviving record in Gong.
#[test]
fn attio_merge_in_progress_is_retried_not_deleted() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_700_000_000));
    let outbound = ScriptedGong::new(&clock);
    let config = attio_config();
    let b = bridge(&kv, &config, &outbound, &clock);
    let body = sample("attio/webhook_record_updated.json");
    let answered = handle(&b, attio_webhook(&body));
    assert_eq!(answered.response.status(), 202);
    outbound
        .queue
        .borrow_mut()
        .push_back(answer(200, &sample("attio/get_object_people.json")));
    outbound.queue.borrow_mut().push_back(answer(
        404,
        br#"{"status_code":404,"type":"invalid_request_error","code":"merge_in_progress","message":"Record is being merged"}"#,
    ));
    follow_up(&b.with_budget(clock.now()), answered.first);
    assert!(
        kv.map
            .borrow()
            .keys()
            .any(|k| k.starts_with("fetch/attio/")),
        "the notification waits for the merge"
    );
    clock.advance(std::time::Duration::from_secs(60));
    outbound
        .queue
        .borrow_mut()
        .push_back(answer(200, &sample("attio/get_record_person.json")));
    handle(
        &b.with_budget(clock.now()),
        request(
            "POST",
            "/flush?force=true",
            &[("authorization", "Bearer token")],
            b"",
        ),
    );
    let lines: Vec<Value> = outbound
        .calls()
        .iter()
        .filter(|c| c.path.starts_with("/v2/crm/entities"))
        .map(|c| serde_json::from_slice(&outbound.bodies.borrow()[c.index]).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        lines[0]["isDeleted"],
        Value::Null,
        "not deleted: {}",
        lines[0]
    );
    assert_eq!(lines[0]["emailAddress"], "john-smith@attio.com");
}

// ----- the mapping API ----------------------------------------------------------------------

fn api(
    b: &crate::bridge::Bridge,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Value, Option<String>) {
    let response = handle(
        b,
        request(
            method,
            path,
            &[
                ("authorization", "Bearer token"),
                ("content-type", "application/json"),
            ],
            body,
        ),
    )
    .response;
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        response.status().as_u16(),
        serde_json::from_slice(response.body()).unwrap_or_default(),
        etag,
    )
}

/// `PUT /mappings/{source}` checks an override (422 naming each entry, nothing changed), stores a
/// good one (the new ETag), and the next delivery is mapped with it; a preview maps a delivery
/// without storing or sending anything.
#[test]
fn mappings_are_overridden_field_by_field_checked_and_previewed() {
    let (kv, clock) = (MemoryKv::default(), VirtualClock::at(1_700_000_000));
    let gong = ScriptedGong::new(&clock);
    let config = pd_config();
    let b = bridge(&kv, &config, &gong, &clock);
    let (status, listed, _) = api(&b, "GET", "/mappings", b"");
    assert_eq!(
        (status, listed["mappings"].as_array().map(Vec::len)),
        (200, Some(3)),
        "{listed}"
    );
    let (status, before, etag_before) = api(&b, "GET", "/mappings/pipedrive", b"");
    assert_eq!(
        (status, before["source"].as_str()),
        (200, Some("pipedrive"))
    );
    assert_eq!(api(&b, "GET", "/mappings/nocrm", b"").0, 404);

    let wrong = br#"{"objects": [{"from": "deal", "fields": {"name": {"path": "title"}, "amount": {"path": "/value", "convert": "minorUnits", "scale": -1}}}]}"#;
    let (status, problem, _) = api(&b, "PUT", "/mappings/pipedrive", wrong);
    assert_eq!(status, 422, "{problem}");
    let named: Vec<(&str, &str)> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["field"].as_str().unwrap(), e["rule"].as_str().unwrap()))
        .collect();
    assert!(
        named.contains(&("deal.name", "mapping.pointer"))
            && named.contains(&("deal.amount", "mapping.converter")),
        "{named:?}"
    );
    assert_eq!(
        api(&b, "GET", "/mappings/pipedrive", b"").2,
        etag_before,
        "a refused override changes nothing"
    );

    let good = br#"{"objects": [{"from": "deal", "fields": {"name": {"convert": "template", "template": "{/title} ({/currency})"}}}]}"#;
    let (status, after, etag_after) = api(&b, "PUT", "/mappings/pipedrive", good);
    assert_eq!(status, 200, "{after}");
    assert_ne!(etag_after, etag_before);
    let (_, preview, _) = api(
        &b,
        "POST",
        "/mappings/pipedrive/preview",
        &sample("pipedrive/deal_create.json"),
    );
    assert_eq!(
        preview["records"][0]["record"]["name"], "Sample Org deal (EUR)",
        "{preview}"
    );
    assert!(
        kv.map.borrow().keys().all(|k| !k.starts_with("inbox/")),
        "a preview stores nothing"
    );
    assert!(gong.calls().is_empty(), "and sends nothing");
    let mut deal: Value = serde_json::from_slice(&sample("pipedrive/deal_create.json")).unwrap();
    deal["data"]["value"] = json!("lots");
    let (_, preview, _) = api(
        &b,
        "POST",
        "/mappings/pipedrive/preview",
        deal.to_string().as_bytes(),
    );
    assert_eq!(
        preview["rejected"][0]["problems"][0]["rule"], "convert.number",
        "{preview}"
    );
    // The next delivery is mapped with the override.
    let answer = handle(
        &b,
        pd_webhook(
            &sample("pipedrive/deal_create.json"),
            &basic(PD_USER, PD_PASSWORD),
        ),
    );
    follow_up(&b.with_budget(clock.now()), answer.first);
    handle(
        &b.with_budget(clock.now()),
        request(
            "POST",
            "/flush?force=true",
            &[("authorization", "Bearer token")],
            b"",
        ),
    );
    let upload = gong
        .calls()
        .into_iter()
        .find(|c| c.path.starts_with("/v2/crm/entities"))
        .unwrap();
    let line: Value = serde_json::from_slice(&gong.bodies.borrow()[upload.index]).unwrap();
    assert_eq!(line["name"], "Sample Org deal (EUR)", "{line}");
}
