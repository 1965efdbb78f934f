//! Whole request bodies of records → the LDJSON file Gong wants (API-NOTES §1.6, §3).
//!
//! Bodies may be up to 200 MB, so they are streamed: an LDJSON body is walked line slice by
//! line slice, and a JSON array is deserialised element by element (serde `SeqAccess`), each
//! record validated as it arrives and only its compact output line kept, in one shared buffer.
//! The body is never held twice, nor as a `Vec<Value>`.
//!
//! The output follows Gong's file rules: one object per line, sorted by `modifiedDate`
//! ascending, each objectId at most once (its latest version).

use std::collections::hash_map::{Entry, HashMap};
use std::fmt;

use serde::de::{Deserializer as _, SeqAccess, Visitor};
use serde::Deserialize as _;
use serde_json::Value;
use time::OffsetDateTime;

use super::records::{serialize_failure, RecordOptions, RecordValidator, ValidRecord};
use super::{Capped, Violation, MAX_BODY_BYTES, MAX_VIOLATIONS};
use crate::gong::models::{ObjectType, SchemaField};

/// How a body of records is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// A JSON array of objects, or a single object.
    Json,
    /// One JSON object per line; blank lines are skipped.
    Ldjson,
}

/// Records ready for Gong.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordBatch {
    /// Lines joined by '\n' with a trailing '\n'.
    pub ldjson: Vec<u8>,
    /// `line_object_ids[i]` is the objectId on LDJSON line `i + 1` (Gong reports errors by line).
    pub line_object_ids: Vec<String>,
    /// Records in the body.
    pub received: usize,
    /// Records dropped because a later version of the same objectId was kept.
    pub merged_duplicates: usize,
    /// E.g. fields not in the schema (non-strict); at most `MAX_VIOLATIONS`.
    pub warnings: Vec<Violation>,
    /// Only with `partial`: violations of the records left out; at most `MAX_VIOLATIONS`.
    pub rejected: Vec<Violation>,
    /// How many records were left out (`partial`).
    pub rejected_records: usize,
}

/// Why nothing is forwarded.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// At most `MAX_VIOLATIONS`.
    pub violations: Vec<Violation>,
    /// All violations found, including those not listed.
    pub total_violations: usize,
    /// Records read from the body (up to the point where a malformed body stopped reading).
    pub received: usize,
    /// Records that had violations of their own (body-level problems count none).
    pub rejected_records: usize,
}

/// Validates a body of records of one type and builds the LDJSON file for Gong.
pub fn validate_records(
    object_type: ObjectType,
    body: &[u8],
    format: BodyFormat,
    schema: Option<&[SchemaField]>,
    opts: RecordOptions,
) -> Result<RecordBatch, Rejection> {
    validate_records_limited(object_type, body, format, schema, opts, MAX_BODY_BYTES)
}

/// [`validate_records`] with the size limit as a parameter, so it can be tested without
/// allocating 200 MB.
fn validate_records_limited(
    object_type: ObjectType,
    body: &[u8],
    format: BodyFormat,
    schema: Option<&[SchemaField]>,
    opts: RecordOptions,
    max_bytes: usize,
) -> Result<RecordBatch, Rejection> {
    let mut run = Run::new(
        RecordValidator::new(object_type, schema, opts),
        opts,
        body.len(),
    );
    read_body(&mut run, body, format, max_bytes);
    run.finish()
}

/// [`validate_records`] on a body it owns: the body is dropped once every record is read, so it
/// is not alive while the file is re-ordered (one body-sized buffer less at the peak).
pub fn validate_records_owned(
    object_type: ObjectType,
    body: Vec<u8>,
    format: BodyFormat,
    schema: Option<&[SchemaField]>,
    opts: RecordOptions,
) -> Result<RecordBatch, Rejection> {
    let mut run = Run::new(
        RecordValidator::new(object_type, schema, opts),
        opts,
        body.len(),
    );
    read_body(&mut run, &body, format, MAX_BODY_BYTES);
    drop(body);
    run.finish()
}

/// Checks the body as a whole (size, UTF-8), then reads every record into `run`.
fn read_body(run: &mut Run<'_>, body: &[u8], format: BodyFormat, max_bytes: usize) {
    if body.len() > max_bytes {
        run.body_error(Violation::new(
            "body.too_large",
            format!(
                "body has {} bytes; Gong accepts at most {max_bytes}",
                body.len()
            ),
        ));
        return;
    }
    if let Err(e) = std::str::from_utf8(body) {
        let offset = e.valid_up_to();
        let line = body
            .get(..offset)
            .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
            + 1;
        run.body_error(
            Violation::new(
                "body.utf8",
                format!("body is not valid UTF-8 at byte offset {offset} (line {line}); Gong requires UTF-8"),
            )
            .with_line(Some(line)),
        );
        return;
    }
    // A UTF-8 byte-order mark is harmless but serde_json refuses it.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    match format {
        BodyFormat::Json => read_json(body, run),
        BodyFormat::Ldjson => read_ldjson(body, run),
    }
}

fn read_ldjson(body: &[u8], run: &mut Run<'_>) {
    let mut index = 0;
    for (n, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line_no = n + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Value>(raw) {
            Ok(value) => run.accept(value, index, Some(line_no)),
            Err(e) => run.reject_record(vec![Violation::new(
                "line.json",
                format!("line {line_no} is not one valid JSON object: {e}"),
            )
            .with_index(Some(index))
            .with_line(Some(line_no))]),
        }
        index += 1;
    }
}

fn read_json(body: &[u8], run: &mut Run<'_>) {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = match first {
        None => return, // empty: reported by `finish`
        Some(b'[') => (&mut de)
            .deserialize_seq(Records { run: &mut *run })
            .and_then(|()| de.end()),
        Some(b'{') => Value::deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v))
            .map(|v| run.accept(v, 0, None)),
        Some(_) => {
            run.body_error(Violation::new(
                "body.json",
                "the body must be a JSON array of objects or a single JSON object",
            ));
            return;
        }
    };
    if let Err(e) = result {
        run.body_error(
            Violation::new("body.json", format!("the body is not valid JSON: {e}"))
                .with_line(Some(e.line())),
        );
    }
}

/// Feeds the elements of a JSON array to the validator one at a time.
struct Records<'r, 's> {
    run: &'r mut Run<'s>,
}

impl<'de> Visitor<'de> for Records<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(value) = seq.next_element::<Value>()? {
            self.run.accept(value, index, None);
            index += 1;
        }
        Ok(())
    }
}

/// A record's output line (with its '\n'), stored in the shared buffer.
struct Pending {
    object_id: String,
    modified: OffsetDateTime,
    start: usize,
    end: usize,
}

/// State of one `validate_records` call.
struct Run<'s> {
    validator: RecordValidator<'s>,
    opts: RecordOptions,
    /// All output lines, back to back; `Pending` points into it.
    lines: Vec<u8>,
    pending: Vec<Pending>,
    warnings: Capped,
    failures: Capped,
    received: usize,
    rejected_records: usize,
    body_broken: bool,
}

impl<'s> Run<'s> {
    fn new(validator: RecordValidator<'s>, opts: RecordOptions, body_len: usize) -> Run<'s> {
        Run {
            validator,
            opts,
            // Compact output is about the size of the input; reserving avoids repeated
            // reallocation (and copying) of a buffer that grows to hundreds of MB.
            lines: Vec::with_capacity(body_len),
            pending: Vec::new(),
            warnings: Capped::new(MAX_VIOLATIONS),
            failures: Capped::new(MAX_VIOLATIONS),
            received: 0,
            rejected_records: 0,
            body_broken: false,
        }
    }

    /// Output is only needed while it can still be forwarded.
    fn keeps_output(&self) -> bool {
        self.opts.partial || self.rejected_records == 0
    }

    fn accept(&mut self, value: Value, index: usize, line: Option<usize>) {
        let mark = self.warnings.mark();
        match self
            .validator
            .validate(value, index, line, &mut self.warnings)
        {
            Ok(checked) => {
                if !self.keeps_output() {
                    self.received += 1;
                    return;
                }
                let start = self.lines.len();
                match serde_json::to_writer(&mut self.lines, &checked.value) {
                    Ok(()) => {
                        self.received += 1;
                        self.lines.push(b'\n');
                        self.pending.push(Pending {
                            object_id: checked.object_id,
                            modified: checked.modified,
                            start,
                            end: self.lines.len(),
                        });
                    }
                    Err(e) => {
                        self.lines.truncate(start);
                        self.warnings.rollback(mark);
                        self.reject_record(vec![serialize_failure(
                            index,
                            line,
                            &checked.object_id,
                            &e,
                        )]);
                    }
                }
            }
            Err(violations) => {
                // The warnings of a record left out would only confuse.
                self.warnings.rollback(mark);
                self.reject_record(violations);
            }
        }
    }

    fn reject_record(&mut self, violations: Vec<Violation>) {
        self.received += 1;
        self.rejected_records += 1;
        for v in violations {
            self.failures.push(v);
        }
        if !self.keeps_output() {
            // Nothing will be forwarded: free the output built so far.
            self.lines = Vec::new();
            self.pending = Vec::new();
        }
    }

    fn body_error(&mut self, v: Violation) {
        self.body_broken = true;
        self.failures.push(v);
    }

    fn finish(mut self) -> Result<RecordBatch, Rejection> {
        if self.received == 0 && !self.body_broken {
            self.body_error(Violation::new("body.empty", "the body contains no records"));
        }
        if self.body_broken
            || self.pending.is_empty()
            || (self.rejected_records > 0 && !self.opts.partial)
        {
            return Err(Rejection {
                total_violations: self.failures.total(),
                violations: self.failures.into_list(),
                received: self.received,
                rejected_records: self.rejected_records,
            });
        }
        let (ldjson, line_object_ids, merged_duplicates) = assemble(self.lines, self.pending);
        Ok(RecordBatch {
            ldjson,
            line_object_ids,
            received: self.received,
            merged_duplicates,
            warnings: self.warnings.into_list(),
            rejected: self.failures.into_list(),
            rejected_records: self.rejected_records,
        })
    }
}

/// Which items to keep, in output order: per objectId only the latest version (latest
/// `modified`; on a tie, the later one in input order), sorted by `modified` ascending, ties in
/// input order. Returns the kept indices and how many were merged away.
///
/// Instants are compared as nanoseconds since the epoch, computed once per item: comparing
/// `OffsetDateTime`s converts both to UTC on every comparison.
fn dedup_and_order<'a, T>(
    items: &'a [T],
    object_id: impl Fn(&'a T) -> &'a str,
    modified: impl Fn(&T) -> OffsetDateTime,
) -> (Vec<usize>, usize) {
    // Keyed by client-supplied objectIds, so this map keeps std's DoS-resistant hasher.
    let mut latest: HashMap<&str, (i128, usize)> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let m = modified(item).unix_timestamp_nanos();
        match latest.entry(object_id(item)) {
            Entry::Vacant(e) => {
                e.insert((m, i));
            }
            Entry::Occupied(mut e) => {
                if m >= e.get().0 {
                    e.insert((m, i));
                }
            }
        }
    }
    let merged = items.len().saturating_sub(latest.len());
    // Sorting (modified, input index) pairs is a stable sort by modified.
    let mut kept: Vec<(i128, usize)> = latest.into_values().collect();
    crate::sorting::sort(&mut kept);
    (kept.into_iter().map(|(_, i)| i).collect(), merged)
}

/// The output file from the shared buffer, where each record's line already ends in '\n'.
fn assemble(lines: Vec<u8>, pending: Vec<Pending>) -> (Vec<u8>, Vec<String>, usize) {
    let (order, merged) = dedup_and_order(&pending, |p| p.object_id.as_str(), |p| p.modified);
    let in_place = order.len() == pending.len() && order.iter().enumerate().all(|(k, &i)| k == i);
    if in_place {
        // Already sorted and without duplicates (typical of a CRM export): the buffer is the
        // file, no copy needed.
        let ids = pending.into_iter().map(|p| p.object_id).collect();
        return (lines, ids, merged);
    }
    let mut slots: Vec<Option<Pending>> = pending.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(lines.len());
    let mut ids = Vec::with_capacity(order.len());
    for i in order {
        if let Some(p) = slots.get_mut(i).and_then(Option::take) {
            out.extend_from_slice(lines.get(p.start..p.end).unwrap_or_default());
            ids.push(p.object_id);
        }
    }
    (out, ids, merged)
}

/// Sorts by `modified` ascending (stable) and keeps only the latest version of each objectId
/// (latest `modified`; on a tie, the later one in input order). Returns the LDJSON bytes (each
/// line followed by '\n'), the objectId of each line, and how many records were merged away.
pub fn build_ldjson(records: Vec<ValidRecord>) -> (Vec<u8>, Vec<String>, usize) {
    let (order, merged) = dedup_and_order(&records, |r| r.object_id.as_str(), |r| r.modified);
    let size: usize = order
        .iter()
        .filter_map(|&i| records.get(i))
        .map(|r| r.line.len() + 1)
        .sum();
    let mut slots: Vec<Option<ValidRecord>> = records.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(size);
    let mut ids = Vec::with_capacity(order.len());
    for i in order {
        if let Some(r) = slots.get_mut(i).and_then(Option::take) {
            out.extend_from_slice(&r.line);
            out.push(b'\n');
            ids.push(r.object_id);
        }
    }
    (out, ids, merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use time::macros::datetime;

    fn rec(id: &str, modified: &str) -> Value {
        json!({"objectId": id, "modifiedDate": modified, "name": format!("n-{id}-{modified}")})
    }

    fn ldjson(records: &[Value]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            out.extend(serde_json::to_vec(r).unwrap());
            out.push(b'\n');
        }
        out
    }

    fn opts() -> RecordOptions {
        RecordOptions::default()
    }

    fn ok(body: &[u8], format: BodyFormat) -> RecordBatch {
        match validate_records(ObjectType::Account, body, format, None, opts()) {
            Ok(b) => b,
            Err(r) => panic!("expected Ok, got {r:?}"),
        }
    }

    fn err(body: &[u8], format: BodyFormat) -> Rejection {
        match validate_records(ObjectType::Account, body, format, None, opts()) {
            Ok(b) => panic!("expected Err, got {b:?}"),
            Err(r) => r,
        }
    }

    fn lines(b: &RecordBatch) -> Vec<Value> {
        b.ldjson
            .split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn the_owned_variant_gives_the_same_file_and_refusals() {
        let body = ldjson(&[
            rec("b", "2024-02-01T00:00:00Z"),
            rec("a", "2024-01-01T00:00:00Z"),
            rec("b", "2024-01-15T00:00:00Z"),
        ]);
        let borrowed = ok(&body, BodyFormat::Ldjson);
        let owned = validate_records_owned(
            ObjectType::Account,
            body.clone(),
            BodyFormat::Ldjson,
            None,
            opts(),
        )
        .unwrap();
        assert_eq!(
            (owned.ldjson, owned.line_object_ids, owned.merged_duplicates),
            (
                borrowed.ldjson,
                borrowed.line_object_ids,
                borrowed.merged_duplicates
            )
        );
        let refused = validate_records_owned(
            ObjectType::Account,
            b"{not json}\n".to_vec(),
            BodyFormat::Ldjson,
            None,
            opts(),
        )
        .unwrap_err();
        assert_eq!(
            refused.violations[0].rule,
            err(b"{not json}\n", BodyFormat::Ldjson).violations[0].rule
        );
    }

    #[test]
    fn body_must_be_utf8_and_the_offset_is_reported() {
        let mut body = ldjson(&[rec("a", "2024-01-01T00:00:00Z")]);
        body.extend(b"{\"objectId\":\"b\xff\"}\n");
        let r = err(&body, BodyFormat::Ldjson);
        let at = body.iter().position(|&b| b == 0xff).unwrap();
        assert_eq!(r.violations[0].rule, "body.utf8");
        assert!(
            r.violations[0]
                .message
                .contains(&format!("byte offset {at}")),
            "{}",
            r.violations[0].message
        );
        assert_eq!(r.violations[0].line, Some(2));
        body.truncate(at);
        body.extend(b"\"}\n");
        // The fixed body gets past the UTF-8 check (and fails later for other reasons).
        assert_ne!(
            err(&body, BodyFormat::Ldjson).violations[0].rule,
            "body.utf8"
        );
    }

    #[test]
    fn body_size_is_limited() {
        let body = ldjson(&[rec("a", "2024-01-01T00:00:00Z")]);
        let limited = |max| {
            validate_records_limited(
                ObjectType::Account,
                &body,
                BodyFormat::Ldjson,
                None,
                opts(),
                max,
            )
        };
        assert_eq!(
            limited(body.len() - 1).unwrap_err().violations[0].rule,
            "body.too_large"
        );
        assert!(limited(body.len()).is_ok());
        assert_eq!(MAX_BODY_BYTES, 200 * 1024 * 1024);
    }

    #[test]
    fn json_body_is_an_array_of_objects_or_one_object() {
        let arr = serde_json::to_vec(&json!([
            rec("a", "2024-01-01T00:00:00Z"),
            rec("b", "2024-01-01T00:00:00Z")
        ]))
        .unwrap();
        let b = ok(&arr, BodyFormat::Json);
        assert_eq!((b.received, b.line_object_ids.len()), (2, 2));
        let one = serde_json::to_vec(&rec("a", "2024-01-01T00:00:00Z")).unwrap();
        assert_eq!(ok(&one, BodyFormat::Json).received, 1);
        assert_eq!(
            err(b"\"a\"", BodyFormat::Json).violations[0].rule,
            "body.json"
        );
        assert_eq!(
            err(b"[{}", BodyFormat::Json)
                .violations
                .last()
                .unwrap()
                .rule,
            "body.json"
        );
        let mut trailing = one.clone();
        trailing.extend(b" {}");
        assert_eq!(
            err(&trailing, BodyFormat::Json).violations[0].rule,
            "body.json"
        );
        // Elements that are not objects are record violations, with their index.
        let r = err(
            b"[1, {\"objectId\":\"a\",\"modifiedDate\":\"2024-01-01T00:00:00Z\"}]",
            BodyFormat::Json,
        );
        assert_eq!(
            (r.violations[0].rule.as_str(), r.violations[0].index),
            ("record.not_object", Some(0))
        );
        assert_eq!((r.received, r.rejected_records), (2, 1));
    }

    #[test]
    fn ldjson_is_one_object_per_line_with_blank_lines_skipped() {
        let mut body = b"\n".to_vec();
        body.extend(serde_json::to_vec(&rec("a", "2024-01-01T00:00:00Z")).unwrap());
        body.extend(b"\r\n  \n");
        body.extend(serde_json::to_vec(&rec("b", "2024-01-01T00:00:00Z")).unwrap());
        let b = ok(&body, BodyFormat::Ldjson);
        assert_eq!(b.received, 2);
        assert!(b.ldjson.ends_with(b"\n"));

        let bad = b"{\"objectId\":\"a\",\"modifiedDate\":\"2024-01-01T00:00:00Z\"}\n\n{\"objectId\":\"b\"} {}\n[]\n";
        let r = err(bad, BodyFormat::Ldjson);
        let got: Vec<(&str, Option<usize>, Option<usize>)> = r
            .violations
            .iter()
            .map(|v| (v.rule.as_str(), v.index, v.line))
            .collect();
        assert_eq!(
            got,
            [
                ("line.json", Some(1), Some(3)),
                ("record.not_object", Some(2), Some(4))
            ]
        );
    }

    #[test]
    fn any_failure_rejects_everything_without_partial() {
        let body = ldjson(&[
            rec("a", "2024-01-01T00:00:00Z"),
            rec("b", "2024-01-01T00:00:00.5Z"),
            rec("c", "x"),
        ]);
        let r = err(&body, BodyFormat::Ldjson);
        assert_eq!(
            (r.received, r.rejected_records, r.total_violations),
            (3, 2, 2)
        );
        assert_eq!(r.violations[0].object_id.as_deref(), Some("b"));
        assert_eq!(r.violations[0].rule, "modifiedDate.no_millis");
        assert_eq!(r.violations[0].line, Some(2));
    }

    #[test]
    fn violations_are_capped_but_counted() {
        let records: Vec<Value> = (0..1500)
            .map(|i| json!({"objectId": format!("r{i}")}))
            .collect();
        let r = err(&ldjson(&records), BodyFormat::Ldjson);
        assert_eq!(r.violations.len(), MAX_VIOLATIONS);
        assert_eq!(r.total_violations, 1500);
        assert_eq!(r.rejected_records, 1500);
    }

    #[test]
    fn partial_forwards_the_valid_records() {
        let body = ldjson(&[
            rec("a", "2024-01-01T00:00:00Z"),
            rec("b", "bad"),
            json!({"objectId": "c", "modifiedDate": "2024-01-01T00:00:00Z", "zz": 1}),
        ]);
        let p = RecordOptions {
            partial: true,
            ..opts()
        };
        let b = validate_records(ObjectType::Account, &body, BodyFormat::Ldjson, None, p).unwrap();
        assert_eq!(b.line_object_ids, ["a", "c"]);
        assert_eq!((b.received, b.rejected_records), (3, 1));
        assert_eq!(b.rejected.len(), 1);
        assert_eq!(b.rejected[0].object_id.as_deref(), Some("b"));
        assert_eq!(b.warnings.len(), 1);
        assert_eq!(b.warnings[0].object_id.as_deref(), Some("c"));
        // Nothing valid: rejected even with partial.
        let none = ldjson(&[rec("b", "bad")]);
        let r =
            validate_records(ObjectType::Account, &none, BodyFormat::Ldjson, None, p).unwrap_err();
        assert_eq!(r.rejected_records, 1);
    }

    #[test]
    fn warnings_of_rejected_records_are_dropped_and_warnings_are_capped() {
        let p = RecordOptions {
            partial: true,
            ..opts()
        };
        let body = ldjson(&[
            json!({"objectId": "x", "zz": 1}),
            rec("a", "2024-01-01T00:00:00Z"),
        ]);
        let b = validate_records(ObjectType::Account, &body, BodyFormat::Ldjson, None, p).unwrap();
        assert!(b.warnings.is_empty());
        let many: Vec<Value> = (0..1200)
            .map(|i| json!({"objectId": format!("r{i}"), "modifiedDate": "2024-01-01T00:00:00Z", "zz": 1}))
            .collect();
        let b = ok(&ldjson(&many), BodyFormat::Ldjson);
        assert_eq!(b.warnings.len(), MAX_VIOLATIONS);
        assert_eq!(b.line_object_ids.len(), 1200);
    }

    #[test]
    fn empty_bodies_are_rejected() {
        for (body, format) in [
            (&b""[..], BodyFormat::Json),
            (b"  \n", BodyFormat::Json),
            (b"[]", BodyFormat::Json),
            (b" [ ] ", BodyFormat::Json),
            (b"", BodyFormat::Ldjson),
            (b"\n\r\n  \n", BodyFormat::Ldjson),
        ] {
            let r = err(body, format);
            assert_eq!(r.violations.len(), 1, "{body:?}");
            assert_eq!(r.violations[0].rule, "body.empty", "{body:?}");
        }
        assert_eq!(
            ok(
                b"[{\"objectId\":\"a\",\"modifiedDate\":\"2024-01-01T00:00:00Z\"}]",
                BodyFormat::Json
            )
            .received,
            1
        );
    }

    #[test]
    fn byte_order_mark_is_tolerated() {
        let mut body = b"\xEF\xBB\xBF".to_vec();
        body.extend(serde_json::to_vec(&rec("a", "2024-01-01T00:00:00Z")).unwrap());
        assert_eq!(ok(&body, BodyFormat::Json).received, 1);
        assert_eq!(ok(&body, BodyFormat::Ldjson).received, 1);
    }

    #[test]
    fn output_is_sorted_and_deduplicated() {
        let body = ldjson(&[
            rec("a", "2024-01-03T00:00:00Z"),
            rec("b", "2024-01-01T00:00:00+00:00"),
            rec("a", "2024-01-02T00:00:00Z"), // older version of a: dropped
            rec("c", "2024-01-02T00:00:00+01:00"),
            rec("d", "2024-01-01T00:00:00Z"),
        ]);
        let b = ok(&body, BodyFormat::Ldjson);
        assert_eq!(b.line_object_ids, ["b", "d", "c", "a"]);
        assert_eq!(b.merged_duplicates, 1);
        assert_eq!(lines(&b)[3]["name"], "n-a-2024-01-03T00:00:00Z");
        assert_eq!(b.received, 5);
    }

    fn vr(id: &str, modified: OffsetDateTime, tag: &str) -> ValidRecord {
        ValidRecord {
            object_id: id.into(),
            modified,
            line: tag.as_bytes().to_vec(),
        }
    }

    #[test]
    fn build_ldjson_sorts_stably_by_modified() {
        let t1 = datetime!(2024-01-01 0:00 UTC);
        let t2 = datetime!(2024-01-02 0:00 UTC);
        let (bytes, ids, merged) =
            build_ldjson(vec![vr("x", t2, "x"), vr("y", t1, "y"), vr("z", t1, "z")]);
        assert_eq!(bytes, b"y\nz\nx\n");
        assert_eq!(ids, ["y", "z", "x"]);
        assert_eq!(merged, 0);
        // Equal instants in different offsets are ties.
        let t1_plus1 = datetime!(2024-01-01 1:00 +01:00);
        let (bytes, _, _) = build_ldjson(vec![vr("p", t1_plus1, "p"), vr("q", t1, "q")]);
        assert_eq!(bytes, b"p\nq\n");
        assert_eq!(build_ldjson(vec![]), (vec![], vec![], 0));
    }

    #[test]
    fn build_ldjson_keeps_only_the_latest_version() {
        let t1 = datetime!(2024-01-01 0:00 UTC);
        let t2 = datetime!(2024-01-02 0:00 UTC);
        let (bytes, ids, merged) = build_ldjson(vec![
            vr("a", t2, "new"),
            vr("b", t1, "b"),
            vr("a", t1, "old"),
        ]);
        assert_eq!(bytes, b"b\nnew\n");
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(merged, 1);
        // On a tie, the later one in input order wins.
        let (bytes, _, merged) = build_ldjson(vec![
            vr("a", t1, "first"),
            vr("a", t1, "second"),
            vr("a", t1, "third"),
        ]);
        assert_eq!(bytes, b"third\n");
        assert_eq!(merged, 2);
    }

    #[test]
    fn schema_and_options_reach_every_record() {
        let schema: Vec<SchemaField> = serde_json::from_value(
            json!([{"uniqueName": "score", "label": "S", "type": "NUMBER"}]),
        )
        .unwrap();
        let body = ldjson(&[
            json!({"objectId": "a", "modifiedDate": "2024-01-01T00:00:00.250", "score": 1}),
            json!({"objectId": "b", "modifiedDate": "2024-01-01T00:00:00Z", "score": "1"}),
        ]);
        let p = RecordOptions {
            partial: true,
            normalize: true,
            ..opts()
        };
        let b = validate_records(
            ObjectType::Deal,
            &body,
            BodyFormat::Ldjson,
            Some(&schema),
            p,
        )
        .unwrap();
        assert_eq!(b.line_object_ids, ["a"]);
        assert_eq!(lines(&b)[0]["modifiedDate"], "2024-01-01T00:00:00Z");
        assert_eq!(b.rejected[0].rule, "custom.type");
    }

    fn any_type() -> impl Strategy<Value = ObjectType> {
        prop::sample::select(ObjectType::ALL.to_vec())
    }

    fn any_opts() -> impl Strategy<Value = RecordOptions> {
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(normalize, strict, partial)| {
            RecordOptions {
                normalize,
                strict,
                partial,
            }
        })
    }

    /// JSON-ish values, biased toward what records contain.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e3f64..1e3).prop_map(Value::from),
            "[a-z0-9@._-]{0,12}".prop_map(Value::String),
            prop::sample::select(vec![
                "2024-01-02T03:04:05Z",
                "2024-01-02T03:04:05.123Z",
                "2024-01-02T03:04:05",
                "2024-01-02",
                "https://x.example/y",
                "a@b.co",
                "WON",
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn record() -> impl Strategy<Value = Value> {
        let key = prop::sample::select(vec![
            "objectId",
            "modifiedDate",
            "isDeleted",
            "url",
            "name",
            "emailAddress",
            "domains",
            "amount",
            "closeDate",
            "status",
            "sortOrder",
            "isActive",
            "createdDate",
            "score",
            "tier",
            "zz",
        ]);
        (
            "[a-c]{1,2}",
            prop::sample::select(vec![
                "2024-01-01T00:00:00Z",
                "2024-01-02T00:00:00+05:00",
                "2024-01-01T00:00:00.5Z",
            ]),
            prop::collection::vec((key, json_value()), 0..5),
        )
            .prop_map(|(id, modified, extra)| {
                let mut m = serde_json::Map::new();
                m.insert("objectId".into(), id.into());
                m.insert("modifiedDate".into(), modified.into());
                m.insert("emailAddress".into(), "u@example.com".into());
                m.insert("name".into(), "n".into());
                for (k, v) in extra {
                    m.insert(k.to_owned(), v);
                }
                Value::Object(m)
            })
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(
            body in prop::collection::vec(any::<u8>(), 0..300),
            t in any_type(),
            o in any_opts(),
        ) {
            let schema: Vec<SchemaField> = vec![];
            for format in [BodyFormat::Json, BodyFormat::Ldjson] {
                let _ = validate_records(t, &body, format, None, o);
                let _ = validate_records(t, &body, format, Some(&schema), o);
            }
        }

        #[test]
        fn json_like_text_never_panics(
            body in "[\\[\\]{}\":,0-9a-zA-Z .\\n\\\\-]{0,200}",
            t in any_type(),
            o in any_opts(),
        ) {
            for format in [BodyFormat::Json, BodyFormat::Ldjson] {
                let _ = validate_records(t, body.as_bytes(), format, None, o);
            }
        }

        #[test]
        fn generated_records_hold_the_batch_invariants(
            records in prop::collection::vec(record(), 0..12),
            t in any_type(),
            o in any_opts(),
            as_array in any::<bool>(),
        ) {
            let mut schema_json = json!([
                {"uniqueName": "score", "label": "S", "type": "NUMBER"},
                {"uniqueName": "tier", "label": "T", "type": "PICKLIST", "orderedValueList": ["a", "b"]},
            ]);
            if as_array { schema_json = json!([]); }
            let schema: Vec<SchemaField> = serde_json::from_value(schema_json).unwrap();
            let (body, format) = if as_array {
                (serde_json::to_vec(&records).unwrap(), BodyFormat::Json)
            } else {
                (ldjson(&records), BodyFormat::Ldjson)
            };
            match validate_records(t, &body, format, Some(&schema), o) {
                Ok(b) => {
                    prop_assert_eq!(b.received, records.len());
                    prop_assert!(o.partial || b.rejected_records == 0);
                    prop_assert_eq!(b.line_object_ids.len() + b.merged_duplicates + b.rejected_records, b.received);
                    let out = lines(&b);
                    prop_assert_eq!(out.len(), b.line_object_ids.len());
                    let mut seen = std::collections::HashSet::new();
                    let mut last = None;
                    for (line, id) in out.iter().zip(&b.line_object_ids) {
                        prop_assert_eq!(line["objectId"].as_str(), Some(id.as_str()));
                        prop_assert!(seen.insert(id.clone()), "duplicate objectId {}", id);
                        let m = super::super::parse_gong_datetime(line["modifiedDate"].as_str().unwrap_or(""));
                        prop_assert!(m.is_ok(), "unparseable modifiedDate forwarded: {}", line);
                        let m = m.ok();
                        prop_assert!(last <= m, "not sorted");
                        last = m;
                    }
                }
                Err(r) => {
                    prop_assert!(!r.violations.is_empty());
                    prop_assert!(r.total_violations >= r.violations.len());
                }
            }
        }
    }
}
