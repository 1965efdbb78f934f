//! What the bridge remembers about each asynchronous Gong request (entity upload, integration
//! delete), keyed by its `clientRequestId`, and how Gong's request-status answer updates it.

use serde::{Deserialize, Serialize};

use crate::gong::models::{ObjectType, RequestStatus, RequestStatusResponse};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RequestOperation {
    UploadEntities,
    DeleteIntegration,
}

/// Where a request stands. The first two are the bridge's own; the rest are Gong's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrackedStatus {
    /// Stored and about to be sent; if the bridge stopped here, Gong may or may not have it
    /// (a status poll or a retry settles which).
    Submitting,
    /// Gong did not accept it (error kept in `lastError`); the payload is kept for a retry.
    NotSent,
    Pending,
    InProgress,
    Done,
    Failed,
}

impl TrackedStatus {
    pub fn is_final(self) -> bool {
        matches!(self, TrackedStatus::Done | TrackedStatus::Failed)
    }

    /// Whether Gong may hold this request, so that asking Gong's request-status makes sense.
    pub fn worth_polling(self) -> bool {
        matches!(
            self,
            TrackedStatus::Submitting | TrackedStatus::Pending | TrackedStatus::InProgress
        )
    }

    pub fn from_gong(status: RequestStatus) -> TrackedStatus {
        match status {
            RequestStatus::Pending => TrackedStatus::Pending,
            RequestStatus::InProgress => TrackedStatus::InProgress,
            RequestStatus::Done => TrackedStatus::Done,
            RequestStatus::Failed => TrackedStatus::Failed,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub success: Option<i64>,
    pub error: Option<i64>,
}

/// One of Gong's line errors, with the record it points at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackedLineError {
    pub line: i64,
    /// The record on that LDJSON line; absent for line 0 (a file-level error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    pub client_request_id: String,
    pub operation: RequestOperation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_type: Option<ObjectType>,
    /// A string: JSON numbers above 2^53 lose digits in many clients.
    #[serde(with = "i64_as_string")]
    pub integration_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_count: Option<usize>,
    pub status: TrackedStatus,
    #[serde(default)]
    pub totals: Totals,
    #[serde(default)]
    pub errors: Vec<TrackedLineError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gong_request_id: Option<String>,
    pub submitted_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// KV chunks holding the LDJSON file until Gong accepts it (0 once accepted).
    #[serde(default)]
    pub payload_chunks: usize,
    /// KV chunks holding the line → objectId map (newline-separated ids, line 1 first).
    #[serde(default)]
    pub line_map_chunks: usize,
    /// Webhook deliveries (`webhook-id`s) that contributed to this request.
    #[serde(default)]
    pub deliveries: Vec<String>,
    /// A file flushed from the pending buffer: its payload is kept until Gong's final status
    /// has been applied (failed lines go to the failure store from it).
    #[serde(default)]
    pub from_buffer: bool,
    /// What was submitted (operation, object type, file), hashed: one clientRequestId names one
    /// request, so a reuse with anything else is refused instead of replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The clientRequestId Gong knows this request by, when Gong had the bridge's own already
    /// from someone else (a 409 for an id the bridge never sent) and the file went out anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_as: Option<String>,
    /// A nonce of the submission that wrote this record: after Gong's 409 on a first send, a
    /// different nonce in the store means another replica sent the same request (so it is Gong's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
    /// Unix seconds before which Gong is not asked about this request again (set after an
    /// answer that was not final, or a failed poll; doubling from `poll_backoff_seconds` to
    /// 10 minutes). Until then status reads answer from the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_poll_at: Option<i64>,
    /// Polls so far that did not end the request.
    #[serde(default)]
    pub polls: u32,
}

/// The longest wait between two polls of one request.
pub const MAX_POLL_BACKOFF_SECONDS: i64 = 600;

impl RequestRecord {
    /// Whether Gong may be asked about this request at `now` (Unix seconds).
    pub fn poll_due(&self, now: i64) -> bool {
        self.status.worth_polling() && self.next_poll_at.is_none_or(|at| at <= now)
    }

    /// After a poll that did not end the request: the next one waits `base`, doubled per
    /// such poll, at most 10 minutes (`base` 0: the next poll may come at once).
    pub fn schedule_next_poll(&mut self, now: i64, base: i64) {
        self.polls = self.polls.saturating_add(1);
        let wait = base
            .saturating_mul(1i64 << (self.polls - 1).min(20))
            .min(MAX_POLL_BACKOFF_SECONDS);
        self.next_poll_at = (wait > 0).then_some(now + wait);
    }

    /// The clientRequestId to give Gong for this request (uploads, deletes, status polls).
    pub fn gong_client_request_id(&self) -> &str {
        self.sent_as.as_deref().unwrap_or(&self.client_request_id)
    }

    /// Applies Gong's request-status answer; `object_id_of_line` resolves a 1-based LDJSON line.
    pub fn apply_status(
        &mut self,
        answer: &RequestStatusResponse,
        object_id_of_line: impl Fn(i64) -> Option<String>,
        now: String,
    ) {
        if let Some(status) = answer.status {
            self.status = TrackedStatus::from_gong(status);
        }
        if answer.request_id.is_some() && self.gong_request_id.is_none() {
            self.gong_request_id = answer.request_id.clone();
        }
        self.totals = Totals {
            success: answer.total_success_count,
            error: answer.total_error_count,
        };
        self.errors = answer
            .errors
            .iter()
            .map(|e| TrackedLineError {
                line: e.line,
                object_id: if e.line > 0 {
                    object_id_of_line(e.line)
                } else {
                    None
                },
                description: e.description.clone().unwrap_or_default(),
            })
            .collect();
        self.updated_at = now;
    }
}

/// Looks up line `line` (1-based) in a newline-separated id list.
pub fn object_id_on_line(line_map: &[u8], line: i64) -> Option<String> {
    let index = usize::try_from(line.checked_sub(1)?).ok()?;
    let id = line_map.split(|b| *b == b'\n').nth(index)?;
    std::str::from_utf8(id)
        .ok()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

mod i64_as_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(i64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(n),
            Either::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gong::models::LineError;

    fn record() -> RequestRecord {
        RequestRecord {
            client_request_id: "c1".into(),
            operation: RequestOperation::UploadEntities,
            object_type: Some(ObjectType::Account),
            integration_id: 5517027188234205706,
            record_count: Some(3),
            status: TrackedStatus::Pending,
            totals: Totals::default(),
            errors: vec![],
            gong_request_id: None,
            submitted_at: "t0".into(),
            updated_at: "t0".into(),
            last_error: None,
            payload_chunks: 0,
            line_map_chunks: 1,
            deliveries: vec![],
            from_buffer: false,
            fingerprint: None,
            sent_as: None,
            submitted_by: None,
            next_poll_at: None,
            polls: 0,
        }
    }

    #[test]
    fn line_errors_are_resolved_to_object_ids() {
        let map = b"acc-1\nacc-2\nacc-3";
        let mut r = record();
        r.apply_status(
            &RequestStatusResponse {
                request_id: Some("g".into()),
                status: Some(RequestStatus::Failed),
                errors: vec![
                    LineError {
                        line: 2,
                        description: Some("bad".into()),
                    },
                    LineError {
                        line: 0,
                        description: Some("file".into()),
                    },
                    LineError {
                        line: 9,
                        description: None,
                    },
                ],
                total_error_count: Some(1),
                total_success_count: Some(2),
            },
            |line| object_id_on_line(map, line),
            "t1".into(),
        );
        assert_eq!(r.status, TrackedStatus::Failed);
        assert_eq!(r.errors[0].object_id.as_deref(), Some("acc-2"));
        assert_eq!(r.errors[1].object_id, None);
        assert_eq!(r.errors[2].object_id, None);
        assert_eq!(r.totals.success, Some(2));
        assert_eq!(r.updated_at, "t1");
    }

    #[test]
    fn integration_id_is_a_string_on_the_wire() {
        let json = serde_json::to_value(record()).unwrap();
        assert_eq!(json["integrationId"], "5517027188234205706");
        let back: RequestRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back.integration_id, 5517027188234205706);
    }

    #[test]
    fn object_id_on_line_bounds() {
        assert_eq!(object_id_on_line(b"a\nb", 1).as_deref(), Some("a"));
        assert_eq!(object_id_on_line(b"a\nb", 0), None);
        assert_eq!(object_id_on_line(b"a\nb", -3), None);
        assert_eq!(object_id_on_line(b"a\nb", 3), None);
    }
}
