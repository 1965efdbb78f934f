//! The converters a mapping's field rules name, each a small pure function from the value found
//! (or none) to the Gong value (or none: the field is left out). A value of the wrong type is a
//! problem naming the converter's rule (`convert.number`, …), never a guess.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{FieldRule, Input, Mapping, ObjectMapping};
use crate::validation;

/// The converter of a field rule; `string` unless said otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Convert {
    /// Text as is; a number or boolean as its text (ids become strings).
    #[default]
    String,
    Number,
    Integer,
    /// `true`/`false`, also from `"true"`, `"false"`, 1 and 0.
    Boolean,
    /// `value`, whatever the record holds.
    Constant,
    /// Gong's datetime (`2024-01-02T03:04:05Z`): RFC 3339 with or without fraction or offset
    /// (taken as UTC), a space instead of `T`, or epoch seconds/milliseconds as a number.
    Datetime,
    /// `YYYY-MM-DD`, from a date or the date part of a datetime.
    Date,
    /// A number of minor units (cents) divided by `scale` (default 100).
    MinorUnits,
    /// `map[text of the value]`; a value not in the map is a problem.
    ValueMap,
    /// From an array: the first element whose `when` equals `equals` (else the first element),
    /// then `take` (a pointer into it) from it.
    FirstMatching,
    /// A full name split at its last space: `part` = `first` or `last`.
    SplitName,
    /// The host of a URL, or the domain of an email address, lower-cased, without `www.`.
    Domain,
    /// `template` with each `{/pointer}` replaced by that value (absent: empty); left out if
    /// nothing was filled in.
    Template,
    /// An id of another CRM object (`object`), with that object's id prefix: the same rewrite
    /// as that object's own `objectId`.
    Reference,
    /// This object's id, with its id prefix.
    Id,
}

type Problem = (String, String);

fn problem(rule: &str, message: impl Into<String>) -> Problem {
    (format!("convert.{rule}"), message.into())
}

/// The pointers a rule reads beyond its `path` (for checking a mapping document).
pub(super) fn pointers(rule: &FieldRule) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    out.extend(rule.when.as_deref());
    out.extend(rule.take.as_deref());
    if let Some(template) = &rule.template {
        out.extend(placeholders(template));
    }
    out
}

/// Whether a rule has the arguments its converter needs.
pub(super) fn check(rule: &FieldRule) -> Result<(), String> {
    let need = |what: bool, message: &str| {
        if what {
            Ok(())
        } else {
            Err(message.to_owned())
        }
    };
    match rule.convert {
        Convert::Constant => need(rule.value.is_some(), "constant needs \"value\""),
        Convert::ValueMap => need(rule.map.is_some(), "valueMap needs \"map\""),
        Convert::SplitName => need(
            matches!(rule.part.as_deref(), Some("first" | "last")),
            "splitName needs \"part\": \"first\" or \"last\"",
        ),
        Convert::Template => need(rule.template.is_some(), "template needs \"template\""),
        Convert::Reference => need(rule.object.is_some(), "reference needs \"object\""),
        Convert::MinorUnits => need(
            rule.scale.is_none_or(|s| s > 0.0),
            "minorUnits needs a positive \"scale\"",
        ),
        _ => need(rule.path != super::Paths::None, "needs a \"path\""),
    }
}

fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        out.push(&rest[start + 1..start + end]);
        rest = &rest[start + end + 1..];
    }
    out
}

/// Converts the value found for one field.
pub(super) fn apply(
    rule: &FieldRule,
    found: Option<&Value>,
    input: &Input,
    mapping: &Mapping,
    object: &ObjectMapping,
) -> Result<Option<Value>, Problem> {
    match rule.convert {
        Convert::Constant => return Ok(rule.value.clone()),
        Convert::Template => return Ok(template(rule.template.as_deref().unwrap_or(""), input)),
        _ => {}
    }
    let Some(found) = found else { return Ok(None) };
    if !rule.each {
        return one(rule, found, mapping, object);
    }
    let items: Vec<&Value> = match found {
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        // `take` reads a member of each element (Attio's `domains[].domain`); a scalar element
        // is taken as it is (Pipedrive's API sends a set's option ids bare, its webhooks as
        // `{id}` objects: one rule reads both).
        let item = match (&rule.take, rule.convert) {
            (Some(_), _) if !(item.is_object() || item.is_array()) => item,
            (Some(pointer), c) if c != Convert::FirstMatching => match item.pointer(pointer) {
                Some(v) if !v.is_null() => v,
                _ => continue,
            },
            _ => item,
        };
        if let Some(v) = one(rule, item, mapping, object)? {
            if !out.contains(&v) {
                out.push(v);
            }
        }
    }
    Ok((!out.is_empty()).then_some(Value::Array(out)))
}

fn one(
    rule: &FieldRule,
    found: &Value,
    mapping: &Mapping,
    object: &ObjectMapping,
) -> Result<Option<Value>, Problem> {
    let text = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    };
    Ok(Some(match rule.convert {
        Convert::String => Value::String(
            text(found).ok_or_else(|| problem("string", format!("{} is not text", kind(found))))?,
        ),
        Convert::Id => Value::String(format!(
            "{}{}",
            object.id_prefix,
            text(found).ok_or_else(|| problem("id", format!("{} is not an id", kind(found))))?
        )),
        Convert::Reference => {
            let target = rule.object.as_deref().unwrap_or("");
            let id = match found {
                // Pipedrive sends some references as `{id, name, …}` objects.
                Value::Object(o) => o.get("id").and_then(&text),
                v => text(v),
            };
            Value::String(format!(
                "{}{}",
                mapping.prefix_of(target),
                id.ok_or_else(|| problem("reference", format!("{} is not an id", kind(found))))?
            ))
        }
        Convert::Number => number(found)?,
        Convert::Integer => {
            let n = number(found)?;
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
                _ => return Err(problem("integer", format!("{n} is not a whole number"))),
            }
        }
        Convert::Boolean => match found {
            Value::Bool(b) => Value::Bool(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Value::Bool(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Value::Bool(false),
            Value::Number(n) if n.as_f64() == Some(1.0) => Value::Bool(true),
            Value::Number(n) if n.as_f64() == Some(0.0) => Value::Bool(false),
            other => {
                return Err(problem(
                    "boolean",
                    format!("{} is not a boolean", kind(other)),
                ))
            }
        },
        Convert::Datetime => Value::String(datetime(found)?),
        Convert::Date => {
            let raw = text(found)
                .ok_or_else(|| problem("date", format!("{} is not a date", kind(found))))?;
            let day = raw
                .get(..10)
                .filter(|d| validation::parse_gong_date(d).is_some())
                .ok_or_else(|| problem("date", format!("{raw:?} is not a date (YYYY-MM-DD)")))?;
            Value::String(day.to_owned())
        }
        Convert::MinorUnits => {
            let n = number(found)?.as_f64().unwrap_or(0.0);
            let units = n / rule.scale.unwrap_or(100.0);
            serde_json::Number::from_f64(units)
                .map(Value::Number)
                .ok_or_else(|| problem("minorUnits", format!("{n} cannot be converted")))?
        }
        Convert::ValueMap => {
            let key = text(found).ok_or_else(|| {
                problem("valueMap", format!("{} cannot be looked up", kind(found)))
            })?;
            rule.map
                .as_ref()
                .and_then(|m| m.get(&key))
                .cloned()
                .ok_or_else(|| problem("valueMap", format!("{key:?} is not in the map")))?
        }
        Convert::FirstMatching => {
            let Value::Array(items) = found else {
                return Err(problem(
                    "firstMatching",
                    format!("{} is not an array", kind(found)),
                ));
            };
            let matches = |item: &&Value| match (&rule.when, &rule.equals) {
                (Some(when), Some(equals)) => item.pointer(when) == Some(equals),
                _ => true,
            };
            let Some(item) = items.iter().find(matches).or_else(|| items.first()) else {
                return Ok(None);
            };
            let taken = match &rule.take {
                Some(pointer) => item.pointer(pointer),
                None => Some(item),
            };
            match taken.filter(|v| !v.is_null()) {
                Some(v) => {
                    Value::String(text(v).ok_or_else(|| {
                        problem("firstMatching", format!("{} is not text", kind(v)))
                    })?)
                }
                None => return Ok(None),
            }
        }
        Convert::SplitName => {
            let full = text(found)
                .ok_or_else(|| problem("splitName", format!("{} is not a name", kind(found))))?;
            let full = full.trim();
            let (first, last) = match full.rsplit_once(' ') {
                Some((first, last)) => (first.trim(), last.trim()),
                None => (full, ""),
            };
            let part = if rule.part.as_deref() == Some("last") {
                last
            } else {
                first
            };
            if part.is_empty() {
                return Ok(None);
            }
            Value::String(part.to_owned())
        }
        Convert::Domain => {
            let raw = text(found).ok_or_else(|| {
                problem("domain", format!("{} is not a URL or email", kind(found)))
            })?;
            match domain(&raw) {
                Some(d) => Value::String(d),
                None => return Err(problem("domain", format!("no domain in {raw:?}"))),
            }
        }
        Convert::Constant | Convert::Template => return Ok(None),
    }))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn number(v: &Value) -> Result<Value, Problem> {
    match v {
        Value::Number(n) => Ok(Value::Number(n.clone())),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| problem("number", format!("{s:?} is not a number"))),
        other => Err(problem(
            "number",
            format!("{} is not a number", kind(other)),
        )),
    }
}

/// Gong's datetime from what CRMs send.
pub(super) fn datetime(v: &Value) -> Result<String, Problem> {
    let at = match v {
        // Epoch seconds, or milliseconds (beyond year 2286 in seconds).
        Value::Number(n) => {
            let raw = n
                .as_f64()
                .ok_or_else(|| problem("datetime", format!("{n} is not a time")))?;
            let seconds = if raw.abs() >= 1.0e11 {
                raw / 1000.0
            } else {
                raw
            };
            time::OffsetDateTime::from_unix_timestamp(seconds.floor() as i64)
                .map_err(|_| problem("datetime", format!("{n} is out of range")))?
        }
        Value::String(s) => {
            let mut text = s.trim().to_owned();
            // Pipedrive's users: `2022-11-24 15:39:48` (a space, no zone: UTC).
            if text.len() > 10 && text.as_bytes()[10] == b' ' {
                text.replace_range(10..11, "T");
            }
            validation::normalize_gong_datetime(&text)
                .map_err(|_| problem("datetime", format!("{s:?} is not a datetime")))?
        }
        other => {
            return Err(problem(
                "datetime",
                format!("{} is not a datetime", kind(other)),
            ))
        }
    };
    Ok(validation::format_gong_datetime(at))
}

/// The domain of a URL (`https://www.acme.com/x` → `acme.com`) or an email (`a@acme.com`).
fn domain(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = match raw.rsplit_once('@') {
        Some((_, host)) if !raw.contains("://") => host,
        _ => {
            let rest = raw.split_once("://").map_or(raw, |(_, r)| r);
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            authority.split(':').next().unwrap_or("")
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let host = host.strip_prefix("www.").unwrap_or(&host).to_owned();
    (host.contains('.')
        && !host.starts_with('.')
        && host
            .chars()
            .all(|c| c.is_alphanumeric() || c == '.' || c == '-'))
    .then_some(host)
}

fn template(template: &str, input: &Input) -> Option<Value> {
    let mut out = String::new();
    let mut filled = false;
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let pointer = &rest[start + 1..start + end];
        if let Some(v) = input.at(pointer) {
            filled = true;
            match v {
                Value::String(s) => out.push_str(s),
                other => out.push_str(&other.to_string()),
            }
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    (filled && !out.is_empty()).then_some(Value::String(out))
}
