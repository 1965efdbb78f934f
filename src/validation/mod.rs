//! Validation of what a CRM sends before it is forwarded to Gong (API-NOTES §1.4, §2.4, §3).
//!
//! Gong answers an upload with "201, pending" and reports bad records only later, through
//! request-status, capped at 20 errors (API-NOTES §1.8). Everything Gong's documentation lets us
//! check up front is therefore checked here, and every broken rule is reported at once, each as a
//! [`Violation`] with a stable dotted `rule` code that clients can match on.
//!
//! - [`validate_schema`]: a custom-field schema upload (`POST /v2/crm/entity-schema`), including
//!   the "full list every time" rule and a guard against type changes that delete data.
//! - [`validate_record`] / [`validate_records`]: CRM records (JSON or LDJSON), streamed, then
//!   sorted and de-duplicated into the LDJSON file Gong wants ([`build_ldjson`]).
//! - [`parse_gong_datetime`] / [`format_gong_datetime`]: Gong's datetime format.
//!
//! Everything here is pure (no I/O) and never panics on any input.

mod datetime;
mod ldjson;
mod records;
mod schema;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use datetime::{
    format_gong_datetime, normalize_gong_datetime, parse_gong_date, parse_gong_datetime,
    DateTimeProblem,
};
pub use ldjson::{
    build_ldjson, validate_records, validate_records_owned, BodyFormat, RecordBatch, Rejection,
};
pub use records::{
    is_standard_field, looks_like_email, validate_record, RecordOptions, ValidRecord,
};
pub use schema::{validate_schema, ValidSchema};

/// At most this many violations (and warnings) are listed; totals are counted beyond it.
pub const MAX_VIOLATIONS: usize = 1000;
/// Gong's maximum upload payload (API-NOTES §1.6, §3.6).
pub const MAX_BODY_BYTES: usize = 200 * 1024 * 1024;

/// One broken rule. Serialises (camelCase, `None` fields skipped) as
/// `{"index":0,"line":1,"objectId":"a1","field":"modifiedDate","rule":"modifiedDate.no_millis","message":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    /// 0-based position of the record (or schema field) in the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// 1-based line of the request body, when the body is line-oriented (LDJSON) or the problem
    /// is a JSON syntax error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Stable code, `<field or scope>.<problem>`, e.g. `modifiedDate.no_millis`.
    pub rule: String,
    /// Human-readable explanation, including how to fix it where that is not obvious.
    pub message: String,
}

impl Violation {
    pub fn new(rule: impl Into<String>, message: impl Into<String>) -> Violation {
        Violation {
            index: None,
            line: None,
            object_id: None,
            field: None,
            rule: rule.into(),
            message: message.into(),
        }
    }

    pub fn with_index(mut self, index: Option<usize>) -> Violation {
        self.index = index;
        self
    }

    pub fn with_line(mut self, line: Option<usize>) -> Violation {
        self.line = line;
        self
    }

    pub fn with_object_id(mut self, object_id: Option<String>) -> Violation {
        self.object_id = object_id;
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Violation {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.rule, self.message)?;
        let mut sep = " (";
        if let Some(i) = self.index {
            write!(f, "{sep}index {i}")?;
            sep = ", ";
        }
        if let Some(l) = self.line {
            write!(f, "{sep}line {l}")?;
            sep = ", ";
        }
        if let Some(id) = &self.object_id {
            write!(f, "{sep}objectId {id}")?;
            sep = ", ";
        }
        if let Some(field) = &self.field {
            write!(f, "{sep}field {field}")?;
            sep = ", ";
        }
        if sep == ", " {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A capped list of violations that still counts everything pushed into it.
///
/// Violations are built lazily (`push_with`) so that a body with millions of identical
/// problems costs a counter increment per problem past the cap, not an allocation.
#[derive(Debug)]
pub(crate) struct Capped {
    list: Vec<Violation>,
    total: usize,
    cap: usize,
}

/// A point to roll a [`Capped`] back to (used to drop the warnings of a record that failed).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    len: usize,
    total: usize,
}

impl Capped {
    pub(crate) fn new(cap: usize) -> Capped {
        Capped {
            list: Vec::new(),
            total: 0,
            cap,
        }
    }

    pub(crate) fn push_with(&mut self, make: impl FnOnce() -> Violation) {
        self.total = self.total.saturating_add(1);
        if self.list.len() < self.cap {
            self.list.push(make());
        }
    }

    pub(crate) fn push(&mut self, v: Violation) {
        self.push_with(|| v);
    }

    pub(crate) fn total(&self) -> usize {
        self.total
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub(crate) fn mark(&self) -> Mark {
        Mark {
            len: self.list.len(),
            total: self.total,
        }
    }

    pub(crate) fn rollback(&mut self, mark: Mark) {
        self.list.truncate(mark.len);
        self.total = mark.total;
    }

    pub(crate) fn into_list(self) -> Vec<Violation> {
        self.list
    }
}

/// Shortens a value quoted in a message, so a 10 MB string does not end up in every violation.
pub(crate) fn excerpt(s: &str) -> String {
    const MAX_CHARS: usize = 80;
    match s.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", s.get(..cut).unwrap_or(s)),
        None => s.to_owned(),
    }
}

/// The JSON type of a value, for "expected X, got Y" messages.
pub(crate) fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violation_serialises_camel_case_and_skips_none() {
        let v = Violation::new("modifiedDate.no_millis", "m")
            .with_index(Some(0))
            .with_line(Some(1))
            .with_object_id(Some("a1".into()))
            .with_field("modifiedDate");
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"index":0,"line":1,"objectId":"a1","field":"modifiedDate","rule":"modifiedDate.no_millis","message":"m"}"#
        );
        let bare = Violation::new("body.empty", "x");
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            r#"{"rule":"body.empty","message":"x"}"#
        );
        let back: Violation =
            serde_json::from_str(r#"{"rule":"body.empty","message":"x"}"#).unwrap();
        assert_eq!(back, bare);
        assert_eq!(
            v.to_string(),
            "[modifiedDate.no_millis] m (index 0, line 1, objectId a1, field modifiedDate)"
        );
        assert_eq!(bare.to_string(), "[body.empty] x");
    }

    #[test]
    fn capped_lists_up_to_cap_counts_all_and_rolls_back() {
        let mut c = Capped::new(2);
        for i in 0..5 {
            c.push(Violation::new("r", i.to_string()));
        }
        assert_eq!(c.total(), 5);
        let m = c.mark();
        c.push(Violation::new("r", "x"));
        c.rollback(m);
        assert_eq!(c.total(), 5);
        assert_eq!(c.into_list().len(), 2);
    }

    #[test]
    fn excerpt_cuts_long_values_on_char_boundaries() {
        assert_eq!(excerpt("short"), "short");
        let long = "é".repeat(100);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), 81);
        assert!(cut.ends_with('…'));
    }
}
