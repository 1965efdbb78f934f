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

/// The Gong records one sample maps to (through the same path as a delivery).
fn mapped(name: &str) -> Vec<(ObjectType, Value)> {
    let delivery = Pipedrive.parse(&sample(name)).unwrap();
    let mapping = mapping(&Pipedrive).unwrap();
    let mut out = Vec::new();
    for change in delivery.changes {
        match change {
            Change::Upsert {
                object,
                record,
                event,
            } => {
                let o = mapping.object(&object).unwrap();
                out.push((
                    o.to,
                    mapping
                        .apply(
                            o,
                            &Input {
                                record: &record,
                                event: &event,
                            },
                        )
                        .unwrap(),
                ));
            }
            Change::Delete { object, id, at } => {
                let o = mapping.object(&object).unwrap();
                out.push((o.to, mapping.deleted(o, &id, &at).unwrap()));
            }
        }
    }
    out
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

/// The Close records one sample maps to.
fn close_mapped(body: &[u8]) -> Vec<(ObjectType, Value)> {
    use super::close::Close;
    let delivery = Close.parse(body).unwrap();
    let mapping = mapping(&Close).unwrap();
    delivery
        .changes
        .into_iter()
        .map(|change| match change {
            Change::Upsert {
                object,
                record,
                event,
            } => {
                let o = mapping.object(&object).unwrap();
                (
                    o.to,
                    mapping
                        .apply(
                            o,
                            &Input {
                                record: &record,
                                event: &event,
                            },
                        )
                        .unwrap(),
                )
            }
            Change::Delete { object, id, at } => {
                let o = mapping.object(&object).unwrap();
                (o.to, mapping.deleted(o, &id, &at).unwrap())
            }
        })
        .collect()
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
