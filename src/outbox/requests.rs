//! Asynchronous Gong requests (entity uploads, integration deletes) under a tracked
//! clientRequestId: submitting (identity-checked), resending, polling with backoff, listing.
//!
//! Order of writes, so nothing answered 2xx is lost: the payload and a SUBMITTING record are in
//! KV before Gong is called; only after Gong's 201 (or its 409 on a resend, which means an
//! earlier attempt got through) is the payload dropped.

use crate::bridge::Bridge;
use crate::fault::Fault;
use crate::gong::client::{parse_response, GongClient, GongError, Operation};
use crate::gong::models::{AsyncProcessingResponse, ObjectType, RequestStatusResponse};
use crate::store::{request_key, schema_key, INTEGRATION_KEY};
use crate::tracking::{object_id_on_line, RequestOperation, RequestRecord, Totals, TrackedStatus};

pub use crate::keys::BLOB_PAYLOAD as PAYLOAD;

use crate::keys::{request_index as request_index_key, REQUEST_INDEX_PREFIX};

/// Where the latest upload of one record went.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordIndexEntry {
    pub client_request_id: String,
    pub line: usize,
    pub at: String,
}
pub use crate::keys::BLOB_LINES as LINES;

pub struct Submission {
    pub client_request_id: String,
    pub operation: RequestOperation,
    pub object_type: Option<ObjectType>,
    pub integration_id: i64,
    pub record_count: Option<usize>,
    pub ldjson: Option<Vec<u8>>,
    pub line_object_ids: Option<Vec<String>>,
    /// The webhook delivery behind this submission, if any.
    pub delivery: Option<String>,
    /// A file flushed from the pending buffer (see `RequestRecord::from_buffer`).
    pub from_buffer: bool,
}

pub struct Tracked {
    pub record: RequestRecord,
    /// True when the clientRequestId was known already and nothing new was submitted.
    pub replayed: bool,
}

/// What a submission is, hashed: operation, object type, integration and file.
fn fingerprint(submission: &Submission) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(
        format!(
            "{:?}\n{:?}\n{}\n",
            submission.operation, submission.object_type, submission.integration_id
        )
        .as_bytes(),
    );
    hash.update(submission.ldjson.as_deref().unwrap_or_default());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A clientRequestId already names `existing`; refuses a submission that is another request.
fn check_same_request(
    existing: &RequestRecord,
    submission: &Submission,
    fingerprint: &str,
) -> Result<(), Fault> {
    let same = existing.operation == submission.operation
        && existing.object_type == submission.object_type
        && existing
            .fingerprint
            .as_deref()
            .is_none_or(|f| f == fingerprint);
    if same {
        return Ok(());
    }
    let first = match existing.object_type {
        Some(t) => format!(
            "{:?} of {} records of {}",
            existing.operation,
            existing.record_count.unwrap_or(0),
            t.as_str()
        ),
        None => format!("{:?}", existing.operation),
    };
    Err(Fault::RequestIdReused {
        client_request_id: existing.client_request_id.clone(),
        first_used_at: existing.submitted_at.clone(),
        first_use: first,
    })
}

/// Stores, sends and tracks one asynchronous request. A clientRequestId seen before is not
/// submitted again: its record is returned (and, if Gong never accepted it, resent), provided
/// it is the same request; another request under the same id is a 422.
pub fn submit_tracked(
    bridge: &Bridge,
    gong: &GongClient,
    submission: Submission,
) -> Result<Tracked, Fault> {
    let store = bridge.store();
    let key = request_key(&submission.client_request_id);
    let fingerprint = fingerprint(&submission);
    if let Some(mut existing) = store.get_json::<RequestRecord>(&key)? {
        check_same_request(&existing, &submission, &fingerprint)?;
        if let Some(delivery) = submission
            .delivery
            .filter(|d| !existing.deliveries.contains(d))
        {
            existing.deliveries.push(delivery);
            store.put_json(&key, &existing)?;
        }
        if matches!(existing.status, TrackedStatus::NotSent) {
            resend(bridge, gong, &mut existing)?;
        }
        return Ok(Tracked {
            record: existing,
            replayed: true,
        });
    }
    let id = submission.client_request_id;
    let now = bridge.now();
    let payload_chunks = match &submission.ldjson {
        Some(bytes) => store.put_blob(PAYLOAD, &id, bytes)?,
        None => 0,
    };
    let line_map_chunks = match &submission.line_object_ids {
        Some(ids) => store.put_blob(LINES, &id, ids.join("\n").as_bytes())?,
        None => 0,
    };
    let mut record = RequestRecord {
        client_request_id: id,
        operation: submission.operation,
        object_type: submission.object_type,
        integration_id: submission.integration_id,
        record_count: submission.record_count,
        status: TrackedStatus::Submitting,
        totals: Totals::default(),
        errors: Vec::new(),
        gong_request_id: None,
        submitted_at: now.clone(),
        updated_at: now,
        last_error: None,
        payload_chunks,
        line_map_chunks,
        deliveries: submission.delivery.into_iter().collect(),
        from_buffer: submission.from_buffer,
        fingerprint: Some(fingerprint),
        sent_as: None,
        submitted_by: Some(uuid::Uuid::new_v4().simple().to_string()),
        next_poll_at: None,
        polls: 0,
    };
    store.put_json(&key, &record)?;
    // The newest-first listing, written before Gong is called, so it holds every request that
    // may reach Gong.
    store.put_json(
        &request_index_key(
            bridge.clock.now().unix_timestamp(),
            &record.client_request_id,
        ),
        &serde_json::json!({}),
    )?;
    match send(
        bridge,
        gong,
        &mut record,
        submission.ldjson.as_deref(),
        FirstAttempt::Yes,
    ) {
        // Gong had this id from a request the bridge never sent: the same file under a fresh id.
        Err(ref fault)
            if matches!(fault, Fault::Kept { .. })
                && matches!(fault.gong_error(), Some(GongError::Conflict { .. })) =>
        {
            record.sent_as = Some(crate::gong::request_id::ClientRequestId::random().into_string());
            send(
                bridge,
                gong,
                &mut record,
                submission.ldjson.as_deref(),
                FirstAttempt::No,
            )?;
        }
        other => other?,
    }
    Ok(Tracked {
        record,
        replayed: false,
    })
}

/// Whether the stored record of this clientRequestId was written by another submission (a
/// replica racing with this one for the same request), which makes Gong's 409 its acceptance.
fn sent_by_another_replica(bridge: &Bridge, record: &RequestRecord) -> Result<bool, Fault> {
    let stored: Option<RequestRecord> = bridge
        .store()
        .get_json(&request_key(&record.client_request_id))?;
    Ok(stored.is_some_and(|s| s.submitted_by != record.submitted_by))
}

/// Whether this is the bridge's first send under the record's clientRequestId: only then may a
/// 409 mean "someone else's request"; on a resend it means an earlier attempt got through.
#[derive(Clone, Copy, PartialEq)]
enum FirstAttempt {
    Yes,
    No,
}

fn resend(bridge: &Bridge, gong: &GongClient, record: &mut RequestRecord) -> Result<(), Fault> {
    let payload = if record.operation == RequestOperation::UploadEntities {
        let kept =
            bridge
                .store()
                .get_blob(PAYLOAD, &record.client_request_id, record.payload_chunks)?;
        match kept {
            Some(bytes) => Some(bytes),
            None => {
                return Err(Fault::WrongState(format!(
                    "request {} has no stored file any more; upload the records again",
                    record.client_request_id
                )))
            }
        }
    } else {
        None
    };
    send(bridge, gong, record, payload.as_deref(), FirstAttempt::No)
}

/// Sends the request described by `record` and stores the outcome. On failure the record is
/// NOT_SENT with Gong's words, its payload stays in KV, and the error says how to retry.
fn send(
    bridge: &Bridge,
    gong: &GongClient,
    record: &mut RequestRecord,
    payload: Option<&[u8]>,
    attempt: FirstAttempt,
) -> Result<(), Fault> {
    let (op, request) = match (record.operation, record.object_type) {
        (RequestOperation::UploadEntities, Some(object_type)) => (
            Operation::UploadEntities,
            gong.upload_entities(
                record.integration_id,
                object_type,
                record.gong_client_request_id(),
                payload.unwrap_or_default(),
            ),
        ),
        (RequestOperation::DeleteIntegration, _) => (
            Operation::DeleteIntegration,
            gong.delete_integration(record.integration_id, record.gong_client_request_id()),
        ),
        (RequestOperation::UploadEntities, None) => {
            return Err(Fault::Corrupt(format!(
                "request {} has no object type",
                record.client_request_id
            )))
        }
    };
    let outcome = bridge.send(op, request).and_then(|response| {
        match parse_response::<AsyncProcessingResponse>(&response, &[200, 201, 202]) {
            Ok(accepted) => Ok((accepted.request_id, None)),
            // First send, and no other replica wrote this request meanwhile: Gong knows the id
            // from elsewhere (an expired key, another client). The caller resends under a fresh id.
            Err(error @ GongError::Conflict { .. })
                if attempt == FirstAttempt::Yes && !sent_by_another_replica(bridge, record)? =>
            {
                Err(Fault::Gong { op, error })
            }
            // A resend: Gong has this clientRequestId already, so an earlier attempt got through.
            Err(GongError::Conflict { error }) => Ok((
                error.request_id.clone(),
                Some(format!(
                    "Gong already had this clientRequestId (409: {})",
                    error.summary()
                )),
            )),
            Err(error) => Err(Fault::Gong { op, error }),
        }
    });
    let store = bridge.store();
    record.updated_at = bridge.now();
    match outcome {
        Ok((gong_request_id, note)) => {
            record.status = TrackedStatus::Pending;
            record.gong_request_id = gong_request_id.or(record.gong_request_id.take());
            record.last_error = note;
            let chunks = if record.from_buffer {
                0
            } else {
                std::mem::take(&mut record.payload_chunks)
            };
            // Gong has the file now; if this write fails the record stays SUBMITTING, which a
            // status poll resolves, so the 202 still holds.
            if let Err(e) = store.put_json(&request_key(&record.client_request_id), record) {
                crate::log::error("request accepted by Gong but its record was not updated")
                    .field("clientRequestId", record.client_request_id.as_str())
                    .field("error", e.to_string())
                    .emit();
                if !record.from_buffer {
                    record.payload_chunks = chunks;
                }
                return Ok(());
            }
            if let Err(e) = store.delete_blob(PAYLOAD, &record.client_request_id, chunks) {
                crate::log::warn("leftover payload chunks")
                    .field("clientRequestId", record.client_request_id.as_str())
                    .field("error", e.to_string())
                    .emit();
            }
            Ok(())
        }
        Err(error) => {
            record.status = TrackedStatus::NotSent;
            record.last_error = Some(error.to_string());
            store.put_json(&request_key(&record.client_request_id), record)?;
            Err(Fault::Kept {
                client_request_id: record.client_request_id.clone(),
                inner: Box::new(error),
            })
        }
    }
}

pub fn load(bridge: &Bridge, id: &str) -> Result<RequestRecord, Fault> {
    if crate::gong::request_id::ClientRequestId::parse(id).is_none() {
        return Err(Fault::NoSuchRequest(format!("{id:?}")));
    }
    bridge
        .store()
        .get_json(&request_key(id))?
        .ok_or_else(|| Fault::NoSuchRequest(id.to_owned()))
}

/// Asks Gong where the request is and stores the answer. Any answer that does not end the
/// request, and any failure to get one, schedules the next poll later (backoff), so that one
/// slow or failing request cannot spend the quota or starve the others.
pub fn poll(bridge: &Bridge, record: &mut RequestRecord) -> Result<(), Fault> {
    let gong = bridge.gong()?;
    let now = bridge.clock.now().unix_timestamp();
    let base = crate::settings::poll_backoff_seconds(bridge.config);
    let answer: RequestStatusResponse = match bridge.call(
        Operation::RequestStatus,
        gong.request_status(record.integration_id, record.gong_client_request_id()),
        &[200],
    ) {
        Ok(answer) => answer,
        // The shared budget said no: no call was made, so no backoff either.
        Err(e @ (Fault::Throttled { .. } | Fault::OutOfTime { .. })) => return Err(e),
        Err(e) => {
            record.schedule_next_poll(now, base);
            bridge
                .store()
                .put_json(&request_key(&record.client_request_id), record)?;
            return Err(e);
        }
    };
    let store = bridge.store();
    let line_map = if answer.errors.iter().any(|e| e.line > 0) && record.line_map_chunks > 0 {
        store
            .get_blob(LINES, &record.client_request_id, record.line_map_chunks)?
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let was_submitting = record.status == TrackedStatus::Submitting;
    record.apply_status(
        &answer,
        |line| object_id_on_line(&line_map, line),
        bridge.now(),
    );
    if record.status.is_final() {
        record.next_poll_at = None;
    } else {
        record.schedule_next_poll(now, base);
    }
    if was_submitting && record.payload_chunks > 0 && !record.from_buffer {
        // Gong knows the request, so the kept file is no longer needed.
        let chunks = std::mem::take(&mut record.payload_chunks);
        let _ = store.delete_blob(PAYLOAD, &record.client_request_id, chunks);
    }
    store.put_json(&request_key(&record.client_request_id), record)?;
    if record.operation == RequestOperation::DeleteIntegration
        && record.status == TrackedStatus::Done
    {
        forget_deleted_integration(bridge, record.integration_id)?;
    }
    Ok(())
}

/// Once Gong has deleted the integration, the kept id and schemas describe nothing.
fn forget_deleted_integration(bridge: &Bridge, integration_id: i64) -> Result<(), Fault> {
    let store = bridge.store();
    if store.integration()?.map(|k| k.integration_id) == Some(integration_id) {
        store.delete(INTEGRATION_KEY)?;
        for t in ObjectType::ALL.into_iter().filter(|t| t.has_schema()) {
            store.delete(&schema_key(t))?;
        }
    }
    Ok(())
}

/// `POST /requests/{id}/retry`: resends a request Gong did not accept, with the same
/// clientRequestId and the kept file.
pub fn retry(bridge: &Bridge, id: &str) -> Result<RequestRecord, Fault> {
    let mut record = load(bridge, id)?;
    if !matches!(
        record.status,
        TrackedStatus::NotSent | TrackedStatus::Submitting
    ) {
        return Err(Fault::WrongState(format!(
            "request {id} was accepted by Gong (status {:?}); there is nothing to resend",
            record.status
        )));
    }
    let gong = bridge.gong()?;
    resend(bridge, &gong, &mut record)?;
    Ok(record)
}

/// The stored record, after asking Gong first when its next poll is due; a failed poll leaves
/// the stored state, with what went wrong.
pub fn refresh(bridge: &Bridge, mut record: RequestRecord) -> (RequestRecord, Option<String>) {
    let mut poll_error = None;
    if record.poll_due(bridge.clock.now().unix_timestamp()) {
        if let Err(e) = poll(bridge, &mut record) {
            poll_error = Some(e.to_string());
        }
    }
    (record, poll_error)
}

/// One page of request records, newest first, and the cursor of the next page. Reads key
/// names to order and page, then only the records of the page (more when filtering).
pub fn page(
    bridge: &Bridge,
    status: Option<TrackedStatus>,
    limit: usize,
    after: Option<&str>,
) -> Result<(Vec<RequestRecord>, Option<String>), Fault> {
    let store = bridge.store();
    let mut index: Vec<String> = bridge
        .kv
        .keys()?
        .into_iter()
        .filter(|k| k.starts_with(REQUEST_INDEX_PREFIX))
        .collect();
    crate::sorting::sort(&mut index);
    let mut page: Vec<(String, RequestRecord)> = Vec::new();
    let mut next = None;
    for key in index
        .iter()
        .filter(|k| after.is_none_or(|a| k.as_str() > a))
    {
        let Some(id) = key.rsplit('/').next() else {
            continue;
        };
        let Some(record) = store.get_json::<RequestRecord>(&request_key(id))? else {
            continue;
        };
        if status.is_some_and(|s| s != record.status) {
            continue;
        }
        if page.len() == limit {
            next = page.last().map(|(k, _)| k.clone());
            break;
        }
        page.push((key.clone(), record));
    }
    Ok((page.into_iter().map(|(_, r)| r).collect(), next))
}
