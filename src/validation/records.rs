//! Validation of one CRM record (one LDJSON line) against Gong's rules (API-NOTES §3.2, §3.3,
//! §3.5) and, for custom fields, against the object type's schema.
//!
//! Speed matters here (a 200 MB upload is hundreds of thousands of records), so: standard
//! fields are looked up with a `match` on `&str`, custom fields through a `HashMap` built once
//! per request ([`RecordValidator`]), and nothing is allocated for a value that passes except
//! the record's objectId and, when normalising, rewritten datetimes.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::datetime::{lex, parse_gong_date, write_gong_datetime};
use super::{excerpt, json_kind, Capped, Violation};
use crate::gong::models::{ObjectType, SchemaField};

/// How records are validated.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordOptions {
    /// Fix instead of reject what is mechanically fixable: fractional seconds are dropped and a
    /// datetime without offset is taken as UTC; every datetime is then sent in UTC `Z` form.
    pub normalize: bool,
    /// A field that is not in the schema is a violation rather than a warning.
    pub strict: bool,
    /// Forward the valid records and report the others, instead of rejecting the whole body.
    pub partial: bool,
}

/// One record that passed validation, already serialised as one compact LDJSON line (no
/// trailing newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRecord {
    pub object_id: String,
    pub modified: OffsetDateTime,
    pub line: Vec<u8>,
}

/// Validates one record and serialises it. Warnings (fields Gong will store but never show) are
/// appended to `warnings`; `index`/`line` only label the violations.
pub fn validate_record(
    object_type: ObjectType,
    record: Value,
    index: usize,
    line: Option<usize>,
    schema: Option<&[SchemaField]>,
    opts: RecordOptions,
    warnings: &mut Vec<Violation>,
) -> Result<ValidRecord, Vec<Violation>> {
    let validator = RecordValidator::new(object_type, schema, opts);
    let mut sink = Capped::new(usize::MAX);
    let checked = validator.validate(record, index, line, &mut sink);
    warnings.extend(sink.into_list());
    let checked = checked?;
    match serde_json::to_vec(&checked.value) {
        Ok(line_bytes) => Ok(ValidRecord {
            object_id: checked.object_id,
            modified: checked.modified,
            line: line_bytes,
        }),
        Err(e) => Err(vec![serialize_failure(index, line, &checked.object_id, &e)]),
    }
}

pub(crate) fn serialize_failure(
    index: usize,
    line: Option<usize>,
    object_id: &str,
    e: &serde_json::Error,
) -> Violation {
    Violation::new(
        "record.serialize",
        format!("record could not be serialised as JSON: {e}"),
    )
    .with_index(Some(index))
    .with_line(line)
    .with_object_id(Some(excerpt(object_id)))
}

/// Hashes field names and picklist values for the per-request lookup tables.
///
/// Every key of every record is looked up once, so the default SipHash was a measurable part of
/// validating a large body. These tables are built once from the schema and never grow with the
/// request, so a fast non-cryptographic (FxHash-style) hash is safe here: a crafted key can at
/// worst slow its own lookup in a table of schema size.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FieldHasher(u64);

type FieldHash = BuildHasherDefault<FieldHasher>;

impl FieldHasher {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for FieldHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// What a value of a field must look like.
#[derive(Debug)]
enum Check<'s> {
    Str,
    Email,
    StrArray,
    DateTime,
    Date,
    DealStatus,
    Number,
    Percent,
    Bool,
    SortOrder,
    Url,
    OneOf(HashSet<&'s str, FieldHash>),
    /// A schema field whose type this code does not know: anything goes.
    Any,
}

/// Whether `key` is one of Gong's own fields of `object_type` (the common four or a standard
/// one); every other key is a custom field, which Gong shows only if the schema declares it.
pub fn is_standard_field(object_type: ObjectType, key: &str) -> bool {
    matches!(key, "objectId" | "modifiedDate" | "isDeleted" | "url")
        || standard_check(object_type, key).is_some()
}

/// Gong's standard fields per object type (API-NOTES §3.3), besides the common four.
fn standard_check(object_type: ObjectType, key: &str) -> Option<Check<'static>> {
    use ObjectType::*;
    Some(match (object_type, key) {
        (BusinessUser, "emailAddress") => Check::Email,
        (Account, "name") => Check::Str,
        (Account, "domains") => Check::StrArray,
        (
            Contact,
            "accountId" | "emailAddress" | "firstName" | "lastName" | "title" | "phoneNumber",
        ) => Check::Str,
        (Deal, "accountId" | "ownerId" | "name" | "stage") => Check::Str,
        (Deal, "createdDate") => Check::DateTime,
        (Deal, "closeDate") => Check::Date,
        (Deal, "status") => Check::DealStatus,
        (Deal, "amount") => Check::Number,
        (
            Lead,
            "emailAddress"
            | "firstName"
            | "lastName"
            | "title"
            | "phoneNumber"
            | "convertedToDealId"
            | "convertedToContactId"
            | "convertedToAccountId",
        ) => Check::Str,
        (Stage, "name") => Check::Str,
        (Stage, "isActive") => Check::Bool,
        (Stage, "sortOrder") => Check::SortOrder,
        _ => return None,
    })
}

/// The check for a custom field of the given schema type (API-NOTES §3.5).
fn custom_check(field: &SchemaField) -> Check<'_> {
    match field.field_type.as_deref() {
        Some("BOOLEAN") => Check::Bool,
        Some("DATE") => Check::Date,
        Some("DATETIME") => Check::DateTime,
        Some("PICKLIST") => match field.ordered_value_list.as_deref() {
            // A schema without values cannot have passed `validate_schema`; rejecting every
            // value because of it would punish the records for the schema's fault.
            Some(values) if !values.is_empty() => {
                Check::OneOf(values.iter().map(String::as_str).collect())
            }
            _ => Check::Any,
        },
        Some("NUMBER" | "CURRENCY") => Check::Number,
        Some("PERCENT") => Check::Percent,
        Some("EMAILADDRESS") => Check::Email,
        Some("URL") => Check::Url,
        Some("STRINGARRAY") => Check::StrArray,
        Some("PHONENUMBER" | "REFERENCE" | "ID" | "STRING") => Check::Str,
        _ => Check::Any,
    }
}

/// A record that passed, with its (possibly normalised) content.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) object_id: String,
    pub(crate) modified: OffsetDateTime,
    pub(crate) value: Value,
}

/// Where the custom fields of a record are looked up.
#[derive(Debug)]
enum Custom<'s> {
    /// The type has a schema and we know it: live fields by uniqueName.
    Schema(HashMap<&'s str, Check<'s>, FieldHash>),
    /// The type has a schema but the caller does not know it: every custom key is unknown.
    Unknown,
    /// BUSINESS_USER and STAGE: Gong has no custom-field schema for them.
    NoSchema,
}

/// Validates records of one type against one schema; build once per request.
#[derive(Debug)]
pub(crate) struct RecordValidator<'s> {
    object_type: ObjectType,
    custom: Custom<'s>,
    opts: RecordOptions,
}

/// Collects the violations of one record, labelled with its position and objectId.
struct Problems<'a> {
    index: usize,
    line: Option<usize>,
    object_id: Option<&'a str>,
    list: Vec<Violation>,
}

impl Problems<'_> {
    fn make(&self, field: &str, rule: String, message: String) -> Violation {
        Violation::new(rule, message)
            .with_index(Some(self.index))
            .with_line(self.line)
            .with_object_id(self.object_id.map(excerpt))
            .with_field(field)
    }

    fn push(&mut self, field: &str, rule: String, message: String) {
        let v = self.make(field, rule, message);
        self.list.push(v);
    }
}

impl<'s> RecordValidator<'s> {
    pub(crate) fn new(
        object_type: ObjectType,
        schema: Option<&'s [SchemaField]>,
        opts: RecordOptions,
    ) -> RecordValidator<'s> {
        let custom = if !object_type.has_schema() {
            Custom::NoSchema
        } else if let Some(fields) = schema {
            let mut map = HashMap::with_capacity_and_hasher(fields.len(), FieldHash::default());
            for f in fields {
                // A field sent with isDeleted=true is gone at Gong, with its data.
                if f.is_deleted == Some(true) {
                    continue;
                }
                if let Some(name) = f.unique_name.as_deref().filter(|n| !n.is_empty()) {
                    map.insert(name, custom_check(f));
                }
            }
            Custom::Schema(map)
        } else {
            Custom::Unknown
        };
        RecordValidator {
            object_type,
            custom,
            opts,
        }
    }

    pub(crate) fn validate(
        &self,
        record: Value,
        index: usize,
        line: Option<usize>,
        warnings: &mut Capped,
    ) -> Result<Checked, Vec<Violation>> {
        let mut map: Map<String, Value> = match record {
            Value::Object(map) => map,
            other => {
                let v = Violation::new(
                    "record.not_object",
                    format!("a record must be a JSON object, got {}", json_kind(&other)),
                )
                .with_index(Some(index))
                .with_line(line);
                return Err(vec![v]);
            }
        };

        // Read first, because they label (objectId) or relax (isDeleted) the other checks.
        let object_id: Option<String> = match map.get("objectId") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let deleted = matches!(map.get("isDeleted"), Some(Value::Bool(true)));
        let mut p = Problems {
            index,
            line,
            object_id: object_id.as_deref(),
            list: Vec::new(),
        };

        match map.get("objectId") {
            None | Some(Value::Null) => p.push(
                "objectId",
                "objectId.required".into(),
                "objectId is required: the CRM's unique id of the object".into(),
            ),
            Some(Value::String(id)) => check_object_id(id, &mut p),
            Some(other) => p.push(
                "objectId",
                "objectId.type".into(),
                format!("objectId must be a string, got {}", json_kind(other)),
            ),
        }

        let mut modified = None;
        let mut saw_modified = false;
        for (key, value) in map.iter_mut() {
            let key = key.as_str();
            match key {
                "objectId" => {}
                "modifiedDate" => {
                    saw_modified = true;
                    if value.is_null() {
                        p.push(
                            key,
                            "modifiedDate.required".into(),
                            "modifiedDate is required (not null)".into(),
                        );
                    } else {
                        modified = self.check_value(key, key, &Check::DateTime, value, &mut p);
                    }
                }
                "isDeleted" => {
                    if !value.is_null() && !value.is_boolean() {
                        p.push(
                            key,
                            "isDeleted.type".into(),
                            format!("isDeleted must be true or false, got {}", json_kind(value)),
                        );
                    }
                }
                "url" => {
                    if !value.is_null() {
                        self.check_value(key, key, &Check::Url, value, &mut p);
                    }
                }
                _ => {
                    if let Some(check) = standard_check(self.object_type, key) {
                        if !value.is_null() {
                            self.check_value(key, key, &check, value, &mut p);
                        }
                    } else {
                        self.check_custom(key, value, &mut p, warnings);
                    }
                }
            }
        }

        if !saw_modified {
            p.push(
                "modifiedDate",
                "modifiedDate.required".into(),
                "modifiedDate is required, e.g. \"2024-01-02T03:04:05Z\"; if the CRM has none, send the time of the change".into(),
            );
        }
        // Required standard fields; a deletion needs only objectId and modifiedDate.
        if !deleted {
            match self.object_type {
                ObjectType::BusinessUser if map.get("emailAddress").is_none_or(Value::is_null) => p.push(
                    "emailAddress",
                    "emailAddress.required".into(),
                    "emailAddress is required for BUSINESS_USER (unless isDeleted is true): Gong maps the CRM user to the Gong user with this email".into(),
                ),
                ObjectType::Stage
                    if map.get("name").is_none_or(|v| v.is_null() || v.as_str() == Some("")) =>
                {
                    p.push(
                        "name",
                        "name.required".into(),
                        "name (the stage's display name) is required for STAGE (unless isDeleted is true)".into(),
                    )
                }
                _ => {}
            }
        }

        let mut errors = p.list;
        match (object_id, modified) {
            (Some(object_id), Some(modified)) if errors.is_empty() => Ok(Checked {
                object_id,
                modified,
                value: Value::Object(map),
            }),
            (object_id, _) => {
                if errors.is_empty() {
                    // Unreachable by construction (a missing objectId or modifiedDate is always
                    // reported above), but never let a record through without them.
                    errors.push(
                        Violation::new("record.internal", "record lacks objectId or modifiedDate")
                            .with_index(Some(index))
                            .with_line(line)
                            .with_object_id(object_id.as_deref().map(excerpt)),
                    );
                }
                Err(errors)
            }
        }
    }

    /// A key that is not a standard field: typed by the schema, or unknown to Gong's UI.
    fn check_custom(
        &self,
        key: &str,
        value: &mut Value,
        p: &mut Problems<'_>,
        warnings: &mut Capped,
    ) {
        let message = match &self.custom {
            Custom::Schema(fields) => match fields.get(key) {
                Some(check) => {
                    if !value.is_null() {
                        self.check_value(key, "custom", check, value, p);
                    }
                    return;
                }
                None => format!(
                    "field {:?} is not in the {} schema: Gong stores it but never shows it; add it to the schema or drop it",
                    excerpt(key),
                    self.object_type
                ),
            },
            Custom::Unknown => format!(
                "field {:?} is not a standard {} field and no {} schema is known: Gong stores it but never shows it unless the schema declares it",
                excerpt(key),
                self.object_type,
                self.object_type
            ),
            Custom::NoSchema => format!(
                "field {:?} is not a {} field (Gong has no custom fields for this type): Gong stores it but never shows it",
                excerpt(key),
                self.object_type
            ),
        };
        let v = p.make(key, "field.not_in_schema".into(), message);
        if self.opts.strict {
            p.list.push(v);
        } else {
            warnings.push(v);
        }
    }

    /// Checks a non-null value; `scope` is the first half of the rule code (the standard field's
    /// name, or "custom" so that codes stay stable whatever the customer's field names are).
    /// Returns the instant for datetimes, normalising the value in place when asked to.
    fn check_value(
        &self,
        field: &str,
        scope: &str,
        check: &Check<'_>,
        value: &mut Value,
        p: &mut Problems<'_>,
    ) -> Option<OffsetDateTime> {
        let type_error = |p: &mut Problems<'_>, expected: &str, value: &Value| {
            p.push(
                field,
                format!("{scope}.type"),
                format!("{field} must be {expected}, got {}", json_kind(value)),
            );
        };
        match check {
            Check::Any => {}
            Check::Str => {
                if !value.is_string() {
                    type_error(p, "a string", value);
                }
            }
            Check::Email => match value.as_str() {
                Some(s) if looks_like_email(s) => {}
                Some(s) => p.push(
                    field,
                    format!("{scope}.invalid"),
                    format!("{field} {:?} is not an email address", excerpt(s)),
                ),
                None => type_error(p, "an email address string", value),
            },
            Check::StrArray => match value.as_array() {
                Some(items) => {
                    if let Some((i, bad)) = items.iter().enumerate().find(|(_, v)| !v.is_string()) {
                        p.push(
                            field,
                            format!("{scope}.type"),
                            format!(
                                "{field} must be an array of strings; item {i} is {}",
                                json_kind(bad)
                            ),
                        );
                    }
                }
                None => type_error(p, "an array of strings", value),
            },
            Check::DateTime => return self.check_datetime(field, scope, value, p),
            Check::Date => match value.as_str() {
                Some(s) if parse_gong_date(s).is_some() => {}
                Some(s) => p.push(
                    field,
                    format!("{scope}.invalid"),
                    format!(
                        "{field} {:?} is not a date like \"2022-09-04\" (YYYY-MM-DD, no time)",
                        excerpt(s)
                    ),
                ),
                None => type_error(p, "a date string like \"2022-09-04\"", value),
            },
            Check::DealStatus => match value.as_str() {
                Some("WON" | "LOST" | "OPEN") => {}
                Some(s) => p.push(
                    field,
                    format!("{scope}.invalid"),
                    format!(
                        "{field} {:?} is not one of WON, LOST, OPEN (case-sensitive)",
                        excerpt(s)
                    ),
                ),
                None => type_error(p, "one of \"WON\", \"LOST\", \"OPEN\"", value),
            },
            Check::Number => {
                if !value.is_number() {
                    type_error(p, "a number", value);
                }
            }
            Check::Percent => match value.as_f64() {
                Some(n) if (0.0..=100.0).contains(&n) => {}
                // `value` shows the number as it was sent (and keeps float formatting out of the
                // component, issue 12).
                Some(_) => p.push(
                    field,
                    format!("{scope}.range"),
                    format!("{field} is a percentage and must be between 0 and 100, got {value}"),
                ),
                None => type_error(p, "a number between 0 and 100", value),
            },
            Check::Bool => {
                if !value.is_boolean() {
                    type_error(p, "true or false", value);
                }
            }
            Check::SortOrder => match (value.as_i64(), value.as_u64()) {
                (_, Some(n)) if n >= 1 => {}
                (Some(_), _) | (_, Some(_)) => p.push(
                    field,
                    format!("{scope}.range"),
                    format!("{field} must be at least 1, got {value}"),
                ),
                _ => type_error(p, "an integer of at least 1", value),
            },
            Check::Url => match value.as_str() {
                Some(s) if is_absolute_http_url(s) => {}
                Some(s) => p.push(
                    field,
                    format!("{scope}.invalid"),
                    format!("{field} {:?} is not an absolute http(s) URL", excerpt(s)),
                ),
                None => type_error(p, "an absolute URL string", value),
            },
            Check::OneOf(allowed) => match value.as_str() {
                Some(s) if allowed.contains(s) => {}
                Some(s) => {
                    let mut listed: Vec<&str> = allowed.iter().copied().collect();
                    crate::sorting::sort(&mut listed);
                    let shown = listed
                        .iter()
                        .take(20)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ");
                    let more = if listed.len() > 20 { ", …" } else { "" };
                    p.push(
                        field,
                        format!("{scope}.not_in_list"),
                        format!(
                            "{field} {:?} is not one of the picklist values in the schema ({shown}{more})",
                            excerpt(s)
                        ),
                    )
                }
                None => type_error(p, "a string from the picklist", value),
            },
        }
        None
    }

    fn check_datetime(
        &self,
        field: &str,
        scope: &str,
        value: &mut Value,
        p: &mut Problems<'_>,
    ) -> Option<OffsetDateTime> {
        let Value::String(s) = value else {
            p.push(
                field,
                format!("{scope}.type"),
                format!(
                    "{field} must be a datetime string like \"2024-01-02T03:04:05Z\", got {}",
                    json_kind(value)
                ),
            );
            return None;
        };
        let Some(lexed) = lex(s) else {
            p.push(
                field,
                format!("{scope}.invalid"),
                format!(
                    "{field} {:?} {}",
                    excerpt(s),
                    super::DateTimeProblem::Invalid
                ),
            );
            return None;
        };
        if self.opts.normalize {
            if !lexed.is_canonical(s) {
                s.clear();
                write_gong_datetime(s, lexed.at);
            }
            return Some(lexed.at);
        }
        let mut ok = true;
        if !lexed.has_offset {
            ok = false;
            p.push(
                field,
                format!("{scope}.offset_required"),
                format!(
                    "{field} {:?} {} (or let the bridge normalise it, assuming UTC)",
                    excerpt(s),
                    super::DateTimeProblem::MissingOffset
                ),
            );
        }
        if lexed.has_fraction {
            ok = false;
            p.push(
                field,
                format!("{scope}.no_millis"),
                format!(
                    "{field} {:?} {} (or let the bridge normalise it)",
                    excerpt(s),
                    super::DateTimeProblem::HasMillis
                ),
            );
        }
        ok.then_some(lexed.at)
    }
}

/// Gong's objectId rule (API-NOTES §3.2): 1..=64 characters of ASCII letters, digits, `-` and
/// `_` (the official examples use `_` although the prose does not list it), or an email address.
fn check_object_id(id: &str, p: &mut Problems<'_>) {
    if id.is_empty() {
        p.push(
            "objectId",
            "objectId.required".into(),
            "objectId must not be empty".into(),
        );
        return;
    }
    let chars = id.chars().count();
    if chars > 64 {
        p.push(
            "objectId",
            "objectId.too_long".into(),
            format!("objectId has {chars} characters; Gong allows at most 64"),
        );
        return;
    }
    let plain = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !plain && !looks_like_email(id) {
        p.push(
            "objectId",
            "objectId.invalid".into(),
            format!(
                "objectId {:?} may contain only ASCII letters, digits, '-' and '_', or be an email address",
                excerpt(id)
            ),
        );
    }
}

/// A plausible email address: `local@domain.tld`, no whitespace, one `@`, a dotted domain of
/// letter/digit/hyphen labels and a top-level label of at least two characters. Deliberately
/// not full RFC 5322 (quoted local parts and IP literals are not CRM user emails).
pub fn looks_like_email(s: &str) -> bool {
    if s.len() > 254 {
        return false;
    }
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    if !local_ok {
        return false;
    }
    let mut labels = 0usize;
    let mut last = "";
    for label in domain.split('.') {
        let label_ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_alphanumeric() || c == '-');
        if !label_ok {
            return false;
        }
        labels += 1;
        last = label;
    }
    labels >= 2 && last.chars().count() >= 2 && !last.chars().all(|c| c.is_ascii_digit())
}

/// An absolute `http`/`https` URL with a host, as a link back into the CRM must be: Gong's
/// "qualified URI", read as an IRI (RFC 3987) so a host or path in any script is accepted.
fn is_absolute_http_url(s: &str) -> bool {
    match fluent_uri::Iri::parse(s) {
        Ok(iri) => {
            let scheme = iri.scheme().as_str();
            (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
                && iri.authority().is_some_and(|a| !a.host().is_empty())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts() -> RecordOptions {
        RecordOptions::default()
    }

    fn field(name: &str, ty: &str) -> SchemaField {
        SchemaField {
            unique_name: Some(name.into()),
            label: Some(name.into()),
            field_type: Some(ty.into()),
            ..Default::default()
        }
    }

    fn schema() -> Vec<SchemaField> {
        let mut pick = field("tier", "PICKLIST");
        pick.ordered_value_list = Some(vec!["Gold".into(), "Silver".into()]);
        let mut gone = field("legacy", "STRING");
        gone.is_deleted = Some(true);
        vec![
            field("active", "BOOLEAN"),
            field("renewal", "DATE"),
            field("lastCall", "DATETIME"),
            pick,
            field("score", "NUMBER"),
            field("arr", "CURRENCY"),
            field("pct", "PERCENT"),
            field("phone", "PHONENUMBER"),
            field("billing", "EMAILADDRESS"),
            field("parent", "REFERENCE"),
            field("extId", "ID"),
            field("note", "STRING"),
            field("site", "URL"),
            field("tags", "STRINGARRAY"),
            gone,
        ]
    }

    fn run_with(
        t: ObjectType,
        v: Value,
        schema: Option<&[SchemaField]>,
        o: RecordOptions,
    ) -> (Result<ValidRecord, Vec<Violation>>, Vec<Violation>) {
        let mut w = Vec::new();
        let r = validate_record(t, v, 3, Some(4), schema, o, &mut w);
        (r, w)
    }

    /// Validates `extra` merged into a minimal valid record of type `t` (with `schema()`).
    fn check(t: ObjectType, extra: Value) -> Result<ValidRecord, Vec<Violation>> {
        check_opts(t, extra, opts())
    }

    fn check_opts(
        t: ObjectType,
        extra: Value,
        o: RecordOptions,
    ) -> Result<ValidRecord, Vec<Violation>> {
        let mut base = json!({"objectId": "a1", "modifiedDate": "2024-01-02T03:04:05Z"});
        match t {
            ObjectType::BusinessUser => base["emailAddress"] = json!("u@example.com"),
            ObjectType::Stage => base["name"] = json!("Qualified"),
            _ => {}
        }
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                if v == &json!("<remove>") {
                    b.remove(k);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        let s = schema();
        run_with(t, base, Some(&s), o).0
    }

    fn assert_ok(t: ObjectType, extra: Value) {
        if let Err(v) = check(t, extra.clone()) {
            panic!("{t} {extra} should pass, got {v:?}");
        }
    }

    /// Fails with exactly the given rule (among possibly others) on the given field.
    fn assert_rule(t: ObjectType, extra: Value, rule: &str) {
        match check(t, extra.clone()) {
            Ok(_) => panic!("{t} {extra} should fail with {rule}"),
            Err(v) => assert!(
                v.iter().any(|x| x.rule == rule),
                "{t} {extra}: want {rule}, got {v:?}"
            ),
        }
    }

    #[test]
    fn record_must_be_an_object() {
        let (r, _) = run_with(ObjectType::Account, json!([1]), None, opts());
        let v = r.unwrap_err();
        assert_eq!(v[0].rule, "record.not_object");
        assert_eq!((v[0].index, v[0].line), (Some(3), Some(4)));
        assert_ok(ObjectType::Account, json!({}));
    }

    #[test]
    fn object_id_is_required_and_a_string() {
        assert_rule(
            ObjectType::Account,
            json!({"objectId": "<remove>"}),
            "objectId.required",
        );
        assert_rule(
            ObjectType::Account,
            json!({"objectId": null}),
            "objectId.required",
        );
        assert_rule(
            ObjectType::Account,
            json!({"objectId": ""}),
            "objectId.required",
        );
        assert_rule(
            ObjectType::Account,
            json!({"objectId": 17}),
            "objectId.type",
        );
        assert_ok(ObjectType::Account, json!({"objectId": "17"}));
    }

    #[test]
    fn object_id_has_at_most_64_characters() {
        assert_ok(ObjectType::Contact, json!({"objectId": "a".repeat(64)}));
        assert_rule(
            ObjectType::Contact,
            json!({"objectId": "a".repeat(65)}),
            "objectId.too_long",
        );
    }

    #[test]
    fn object_id_is_plain_or_an_email() {
        for ok in [
            "user1_Id_In_The_CRM",
            "0061a-B2",
            "jane.doe+crm@example.co.uk",
        ] {
            assert_ok(ObjectType::Lead, json!({ "objectId": ok }));
        }
        for bad in [
            "a b",
            "a/b",
            "a.b",
            "jane@localhost",
            "jane doe@example.com",
            "ä1",
        ] {
            assert_rule(
                ObjectType::Lead,
                json!({ "objectId": bad }),
                "objectId.invalid",
            );
        }
    }

    #[test]
    fn violations_carry_position_object_id_and_field() {
        let r = check(ObjectType::Deal, json!({"objectId": "d9", "amount": "12"}));
        let v = r.unwrap_err();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].index, Some(3));
        assert_eq!(v[0].line, Some(4));
        assert_eq!(v[0].object_id.as_deref(), Some("d9"));
        assert_eq!(v[0].field.as_deref(), Some("amount"));
        assert_eq!(v[0].rule, "amount.type");
    }

    #[test]
    fn modified_date_is_required_for_every_type_including_stage() {
        for t in ObjectType::ALL {
            assert_ok(t, json!({}));
            assert_rule(
                t,
                json!({"modifiedDate": "<remove>"}),
                "modifiedDate.required",
            );
            assert_rule(t, json!({"modifiedDate": null}), "modifiedDate.required");
        }
    }

    #[test]
    fn modified_date_must_be_a_string() {
        assert_rule(
            ObjectType::Account,
            json!({"modifiedDate": 1704164645}),
            "modifiedDate.type",
        );
        assert_rule(
            ObjectType::Account,
            json!({"modifiedDate": "yesterday"}),
            "modifiedDate.invalid",
        );
        assert_ok(
            ObjectType::Account,
            json!({"modifiedDate": "2024-01-02T03:04:05+01:00"}),
        );
    }

    #[test]
    fn modified_date_without_millis_or_normalised() {
        let bad = json!({"modifiedDate": "2024-01-02T03:04:05.123Z"});
        assert_rule(ObjectType::Account, bad.clone(), "modifiedDate.no_millis");
        let fixed = check_opts(
            ObjectType::Account,
            bad,
            RecordOptions {
                normalize: true,
                ..opts()
            },
        )
        .unwrap();
        assert!(String::from_utf8(fixed.line)
            .unwrap()
            .contains(r#""modifiedDate":"2024-01-02T03:04:05Z""#));
    }

    #[test]
    fn modified_date_needs_offset_or_is_normalised_to_utc() {
        let bad = json!({"modifiedDate": "2024-01-02T03:04:05"});
        assert_rule(
            ObjectType::Account,
            bad.clone(),
            "modifiedDate.offset_required",
        );
        let fixed = check_opts(
            ObjectType::Account,
            bad,
            RecordOptions {
                normalize: true,
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(
            fixed.modified,
            time::macros::datetime!(2024-01-02 03:04:05 UTC)
        );
        assert!(String::from_utf8(fixed.line)
            .unwrap()
            .contains(r#""modifiedDate":"2024-01-02T03:04:05Z""#));
        // Both problems at once are both reported.
        let both = check(
            ObjectType::Account,
            json!({"modifiedDate": "2024-01-02T03:04:05.1"}),
        )
        .unwrap_err();
        assert_eq!(both.len(), 2);
    }

    #[test]
    fn normalising_rewrites_offsets_to_utc_and_keeps_valid_values_otherwise() {
        let n = RecordOptions {
            normalize: true,
            ..opts()
        };
        let r = check_opts(
            ObjectType::Deal,
            json!({"modifiedDate": "2024-01-02T03:04:05+01:00"}),
            n,
        )
        .unwrap();
        assert!(String::from_utf8(r.line)
            .unwrap()
            .contains("\"2024-01-02T02:04:05Z\""));
        let r = check(
            ObjectType::Deal,
            json!({"modifiedDate": "2024-01-02T03:04:05+01:00"}),
        )
        .unwrap();
        assert!(String::from_utf8(r.line)
            .unwrap()
            .contains("\"2024-01-02T03:04:05+01:00\""));
        // Normalising does not make garbage acceptable.
        assert!(check_opts(ObjectType::Deal, json!({"modifiedDate": "soon"}), n).is_err());
    }

    #[test]
    fn is_deleted_must_be_boolean() {
        assert_rule(
            ObjectType::Account,
            json!({"isDeleted": "true"}),
            "isDeleted.type",
        );
        assert_ok(ObjectType::Account, json!({"isDeleted": false}));
        assert_ok(ObjectType::Account, json!({"isDeleted": null}));
    }

    #[test]
    fn url_must_be_absolute_http() {
        assert_ok(
            ObjectType::Account,
            json!({"url": "https://crm.example.com/account/6d4r578f"}),
        );
        assert_ok(ObjectType::Account, json!({"url": null}));
        // A qualified URI or IRI: any script in host and path, percent-escapes, ports, queries.
        for good in [
            "HTTP://CRM.example.com:8443/a?b=c#d",
            "https://bücher.example/konto/ä%20b",
            "https://例え.jp/取引先/1",
            "https://[2001:db8::1]/a",
        ] {
            assert_ok(ObjectType::Account, json!({ "url": good }));
        }
        for bad in [
            "/account/1",
            "crm.example.com/a",
            "ftp://crm.example.com/a",
            "javascript:alert(1)",
            "https:///no-host",
            "https://crm.example.com/a b",
            "https://crm.example.com/%zz",
        ] {
            assert_rule(ObjectType::Account, json!({ "url": bad }), "url.invalid");
        }
        assert_rule(ObjectType::Account, json!({"url": 5}), "url.type");
    }

    #[test]
    fn business_user_needs_an_email_unless_deleted() {
        assert_ok(ObjectType::BusinessUser, json!({}));
        assert_rule(
            ObjectType::BusinessUser,
            json!({"emailAddress": "<remove>"}),
            "emailAddress.required",
        );
        assert_rule(
            ObjectType::BusinessUser,
            json!({"emailAddress": null}),
            "emailAddress.required",
        );
        assert_rule(
            ObjectType::BusinessUser,
            json!({"emailAddress": "not-an-email"}),
            "emailAddress.invalid",
        );
        assert_rule(
            ObjectType::BusinessUser,
            json!({"emailAddress": 3}),
            "emailAddress.type",
        );
        assert_ok(
            ObjectType::BusinessUser,
            json!({"emailAddress": "<remove>", "isDeleted": true}),
        );
    }

    #[test]
    fn account_standard_fields() {
        assert_ok(
            ObjectType::Account,
            json!({"name": "Acme", "domains": ["acme.com", "acme.io"]}),
        );
        assert_rule(ObjectType::Account, json!({"name": 1}), "name.type");
        assert_rule(
            ObjectType::Account,
            json!({"domains": "acme.com"}),
            "domains.type",
        );
        assert_rule(
            ObjectType::Account,
            json!({"domains": ["acme.com", 2]}),
            "domains.type",
        );
    }

    #[test]
    fn contact_standard_fields_are_strings() {
        let keys = [
            "accountId",
            "emailAddress",
            "firstName",
            "lastName",
            "title",
            "phoneNumber",
        ];
        for k in keys {
            assert_ok(ObjectType::Contact, json!({ k: "x" }));
            assert_rule(ObjectType::Contact, json!({ k: 5 }), &format!("{k}.type"));
        }
    }

    #[test]
    fn deal_standard_fields() {
        for k in ["accountId", "ownerId", "name", "stage"] {
            assert_ok(ObjectType::Deal, json!({ k: "x" }));
            assert_rule(ObjectType::Deal, json!({ k: false }), &format!("{k}.type"));
        }
        assert_ok(
            ObjectType::Deal,
            json!({"createdDate": "2022-01-01T10:00:00-08:00"}),
        );
        assert_rule(
            ObjectType::Deal,
            json!({"createdDate": "2022-01-01T10:00:00.000Z"}),
            "createdDate.no_millis",
        );
        assert_rule(
            ObjectType::Deal,
            json!({"createdDate": "2022-01-01T10:00:00"}),
            "createdDate.offset_required",
        );
        assert_ok(ObjectType::Deal, json!({"closeDate": "2022-09-04"}));
        assert_rule(
            ObjectType::Deal,
            json!({"closeDate": "2022-09-04T00:00:00Z"}),
            "closeDate.invalid",
        );
        assert_rule(
            ObjectType::Deal,
            json!({"closeDate": 20220904}),
            "closeDate.type",
        );
        for s in ["WON", "LOST", "OPEN"] {
            assert_ok(ObjectType::Deal, json!({ "status": s }));
        }
        assert_rule(
            ObjectType::Deal,
            json!({"status": "open"}),
            "status.invalid",
        );
        assert_ok(ObjectType::Deal, json!({"amount": 1234.5}));
        assert_rule(ObjectType::Deal, json!({"amount": "1234.5"}), "amount.type");
    }

    #[test]
    fn lead_standard_fields_are_strings() {
        let keys = [
            "emailAddress",
            "firstName",
            "lastName",
            "title",
            "phoneNumber",
            "convertedToDealId",
            "convertedToContactId",
            "convertedToAccountId",
        ];
        for k in keys {
            assert_ok(ObjectType::Lead, json!({ k: "x" }));
            assert_rule(ObjectType::Lead, json!({ k: ["x"] }), &format!("{k}.type"));
        }
    }

    #[test]
    fn stage_fields() {
        assert_rule(
            ObjectType::Stage,
            json!({"name": "<remove>"}),
            "name.required",
        );
        assert_rule(ObjectType::Stage, json!({"name": ""}), "name.required");
        assert_rule(ObjectType::Stage, json!({"name": 4}), "name.type");
        assert_ok(
            ObjectType::Stage,
            json!({"name": "<remove>", "isDeleted": true}),
        );
        assert_ok(
            ObjectType::Stage,
            json!({"isActive": false, "sortOrder": 1}),
        );
        assert_rule(
            ObjectType::Stage,
            json!({"isActive": "yes"}),
            "isActive.type",
        );
        assert_rule(
            ObjectType::Stage,
            json!({"sortOrder": 0}),
            "sortOrder.range",
        );
        assert_rule(
            ObjectType::Stage,
            json!({"sortOrder": -3}),
            "sortOrder.range",
        );
        assert_rule(
            ObjectType::Stage,
            json!({"sortOrder": 1.5}),
            "sortOrder.type",
        );
        assert_rule(
            ObjectType::Stage,
            json!({"sortOrder": "1"}),
            "sortOrder.type",
        );
    }

    #[test]
    fn null_is_allowed_for_optional_standard_fields() {
        assert_ok(
            ObjectType::Account,
            json!({"name": null, "domains": null, "url": null}),
        );
        assert_ok(
            ObjectType::Deal,
            json!({"closeDate": null, "status": null, "amount": null, "createdDate": null}),
        );
        assert_ok(
            ObjectType::Stage,
            json!({"sortOrder": null, "isActive": null}),
        );
        assert_ok(ObjectType::Contact, json!({"accountId": null}));
    }

    #[test]
    fn deleted_records_need_only_id_and_date_but_present_fields_are_still_typed() {
        assert_ok(
            ObjectType::BusinessUser,
            json!({"emailAddress": "<remove>", "isDeleted": true}),
        );
        assert_rule(
            ObjectType::BusinessUser,
            json!({"emailAddress": "nope", "isDeleted": true}),
            "emailAddress.invalid",
        );
        assert_rule(
            ObjectType::Deal,
            json!({"isDeleted": true, "amount": "x"}),
            "amount.type",
        );
        assert_rule(
            ObjectType::Deal,
            json!({"isDeleted": true, "modifiedDate": "<remove>"}),
            "modifiedDate.required",
        );
        assert_rule(
            ObjectType::Deal,
            json!({"isDeleted": true, "objectId": "<remove>"}),
            "objectId.required",
        );
    }

    #[test]
    fn custom_field_types() {
        let t = ObjectType::Account;
        let cases: &[(&str, Value, Value, &str)] = &[
            ("active", json!(true), json!("true"), "custom.type"),
            (
                "renewal",
                json!("2025-03-01"),
                json!("2025-03-01T00:00:00Z"),
                "custom.invalid",
            ),
            (
                "lastCall",
                json!("2020-12-17T07:37:21+02:00"),
                json!("2020-12-17T05:37:21.000Z"),
                "custom.no_millis",
            ),
            (
                "lastCall",
                json!("2020-12-17T05:37:21Z"),
                json!("2020-12-17T05:37:21"),
                "custom.offset_required",
            ),
            ("tier", json!("Gold"), json!("gold"), "custom.not_in_list"),
            ("tier", json!("Silver"), json!(1), "custom.type"),
            ("score", json!(45.66), json!("45.66"), "custom.type"),
            ("arr", json!(34), json!("$34"), "custom.type"),
            ("pct", json!(67.3), json!(100.5), "custom.range"),
            ("pct", json!(0), json!(-1), "custom.range"),
            ("pct", json!(100), json!("50%"), "custom.type"),
            (
                "phone",
                json!("+14055766687"),
                json!(14055766687u64),
                "custom.type",
            ),
            (
                "billing",
                json!("john.doe@anywhere.com"),
                json!("john.doe"),
                "custom.invalid",
            ),
            ("parent", json!("48b009drax"), json!(48), "custom.type"),
            ("extId", json!("843hf8484jr84htg"), json!({}), "custom.type"),
            ("note", json!("any"), json!(true), "custom.type"),
            (
                "site",
                json!("https://crm.com/account/6d4r578f"),
                json!("crm.com/account"),
                "custom.invalid",
            ),
            (
                "tags",
                json!(["http://customer.com"]),
                json!(["a", null]),
                "custom.type",
            ),
            ("tags", json!([]), json!("a,b"), "custom.type"),
        ];
        for (key, good, bad, rule) in cases {
            assert_ok(t, json!({ *key: good.clone() }));
            assert_ok(t, json!({ *key: null }));
            assert_rule(t, json!({ *key: bad.clone() }), rule);
        }
        // Custom DATETIME values are normalised too.
        let n = RecordOptions {
            normalize: true,
            ..opts()
        };
        let r = check_opts(t, json!({"lastCall": "2020-12-17T05:37:21.000Z"}), n).unwrap();
        assert!(String::from_utf8(r.line)
            .unwrap()
            .contains(r#""lastCall":"2020-12-17T05:37:21Z""#));
    }

    #[test]
    fn unknown_fields_warn_or_fail_when_strict() {
        let rec = json!({"objectId": "a1", "modifiedDate": "2024-01-02T03:04:05Z", "mystery": 1, "note": "x"});
        let s = schema();
        let (r, w) = run_with(ObjectType::Account, rec.clone(), Some(&s), opts());
        assert!(r.is_ok());
        assert_eq!(w.len(), 1);
        assert_eq!(
            (w[0].rule.as_str(), w[0].field.as_deref()),
            ("field.not_in_schema", Some("mystery"))
        );
        assert!(w[0].message.contains("never shows"));

        let strict = RecordOptions {
            strict: true,
            ..opts()
        };
        let (r, w) = run_with(ObjectType::Account, rec, Some(&s), strict);
        assert_eq!(r.unwrap_err()[0].rule, "field.not_in_schema");
        assert!(w.is_empty());

        // Known custom fields and standard fields never warn.
        let (r, w) = run_with(
            ObjectType::Account,
            json!({"objectId": "a1", "modifiedDate": "2024-01-02T03:04:05Z", "name": "n", "note": "x"}),
            Some(&s),
            strict,
        );
        assert!(r.is_ok() && w.is_empty());
    }

    #[test]
    fn deleted_schema_fields_count_as_absent() {
        let s = schema();
        let (r, w) = run_with(
            ObjectType::Account,
            json!({"objectId": "a1", "modifiedDate": "2024-01-02T03:04:05Z", "legacy": "x"}),
            Some(&s),
            opts(),
        );
        assert!(r.is_ok());
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].field.as_deref(), Some("legacy"));
    }

    #[test]
    fn without_a_schema_every_custom_key_warns() {
        let rec = json!({"objectId": "a1", "modifiedDate": "2024-01-02T03:04:05Z", "note": "x", "name": "Acme"});
        let (r, w) = run_with(ObjectType::Account, rec.clone(), None, opts());
        assert!(r.is_ok());
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].field.as_deref(), Some("note"));
        let (r, _) = run_with(
            ObjectType::Account,
            rec,
            None,
            RecordOptions {
                strict: true,
                ..opts()
            },
        );
        assert!(r.is_err());
    }

    #[test]
    fn business_user_and_stage_unknown_keys_warn_even_with_a_schema() {
        let s = schema();
        for (t, extra) in [
            (
                ObjectType::BusinessUser,
                json!({"emailAddress": "u@example.com"}),
            ),
            (ObjectType::Stage, json!({"name": "S"})),
        ] {
            let mut rec =
                json!({"objectId": "a1", "modifiedDate": "2024-01-02T03:04:05Z", "note": "x"});
            if let (Some(r), Some(e)) = (rec.as_object_mut(), extra.as_object()) {
                r.extend(e.clone());
            }
            let (r, w) = run_with(t, rec.clone(), Some(&s), opts());
            assert!(r.is_ok(), "{t}");
            assert_eq!(w.len(), 1, "{t}");
            let (r, _) = run_with(
                t,
                rec,
                None,
                RecordOptions {
                    strict: true,
                    ..opts()
                },
            );
            assert!(r.is_err(), "{t}");
        }
    }

    #[test]
    fn valid_record_is_one_compact_line() {
        let r = check(
            ObjectType::Account,
            json!({"objectId": "x-1", "name": "A  B"}),
        )
        .unwrap();
        assert_eq!(r.object_id, "x-1");
        assert_eq!(r.modified, time::macros::datetime!(2024-01-02 03:04:05 UTC));
        let line = String::from_utf8(r.line).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap()["name"],
            "A  B"
        );
        assert!(!line.contains(": "));
    }

    #[test]
    fn email_plausibility() {
        for ok in [
            "a@b.co",
            "john.doe+x@sub.example.com",
            "o'neil@example.ie",
            "名@例え.jp",
        ] {
            assert!(looks_like_email(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@b",
            "a@b.c",
            "@b.co",
            "a@@b.co",
            "a b@c.co",
            "a@b .co",
            "a@-b.co",
            "a..b@c.co",
            "a@b.123",
            "a@.b.co",
        ] {
            assert!(!looks_like_email(bad), "{bad}");
        }
    }
}
