//! References that resolve: after a delivery's answer, each object its records refer to (a
//! deal's account, owner and stage; a contact's account) that the bridge never had is read from
//! the CRM's API by id and accepted like any record, so it goes to Gong with (Gong's order: before)
//! the record that needs it. Without an API token, or when the read fails, the record still goes,
//! and its status says which object was never sent (`outbox::locate`). The check reads the
//! existing layout (the record's shard slot, the inbox): no key per object.

use serde_json::json;

use super::sync::SyncApi;
use super::{Change, Receiver};
use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::gong::references::Reference;

/// What resolving a delivery's references did.
#[derive(Debug, Default, PartialEq)]
pub struct Resolved {
    pub known: usize,
    pub fetched: usize,
    /// Why each one that is still missing is (the record goes anyway).
    pub missing: Vec<String>,
}

/// Whether the references of `source`'s deliveries can be completed (an API to read them).
pub fn can_resolve(bridge: &Bridge, source: &str) -> bool {
    super::sync::api(source)
        .is_some_and(|api| api.one(bridge.config, api.objects()[0], "0").is_ok())
}

pub fn resolve(bridge: &Bridge, source: &str, references: &[Reference]) -> Result<Resolved, Fault> {
    let mut report = Resolved::default();
    let (Some(api), Some(receiver)) = (super::sync::api(source), super::receiver(source)) else {
        return Ok(report);
    };
    let mapping = super::overrides::effective(bridge, receiver)?;
    for reference in references {
        if crate::outbox::locate::known(bridge, reference.object_type, &reference.object_id)? {
            report.known += 1;
            continue;
        }
        if bridge.deadline.is_some_and(|d| bridge.clock.now() >= d) {
            report.missing.push(format!(
                "{} {}: the work budget is spent",
                reference.object_type, reference.object_id
            ));
            continue;
        }
        // The CRM object that becomes this Gong type, and its id without the prefix.
        let Some((object, id)) = mapping
            .objects
            .iter()
            .filter(|o| o.to == reference.object_type)
            .find_map(|o| {
                reference
                    .object_id
                    .strip_prefix(o.id_prefix.as_str())
                    .map(|id| (o.from.clone(), id.to_owned()))
            })
        else {
            continue;
        };
        match fetch(bridge, api, receiver, &object, &id) {
            Ok(()) => report.fetched += 1,
            Err(why) => report.missing.push(format!(
                "{} {}: {why}",
                reference.object_type, reference.object_id
            )),
        }
    }
    Ok(report)
}

fn fetch(
    bridge: &Bridge,
    api: &dyn SyncApi,
    receiver: &dyn Receiver,
    object: &str,
    id: &str,
) -> Result<(), String> {
    let request = api
        .one(bridge.config, object, id)
        .map_err(|missing| format!("set {} to read it", missing.join(", ")))?;
    let response = match crate::gateway::send(bridge, &api.upstream(), request) {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Err(format!("{} could not be reached: {e}", api.upstream().name)),
        Err(e) => return Err(e.to_string()),
    };
    let status = response.status().as_u16();
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap_or_default();
    if status != 200 || !body["data"].is_object() {
        return Err(format!(
            "{} answered {status} for {object} {id}",
            api.upstream().name
        ));
    }
    let at = crate::validation::format_gong_datetime(bridge.clock.now());
    let change = Change::Upsert {
        object: object.to_owned(),
        record: body["data"].clone(),
        event: json!({"timestamp": at, "fetched_at": at, "reference": true}),
    };
    super::map_and_accept(
        bridge,
        receiver,
        &format!("ref-{object}-{id}"),
        vec![change],
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}
