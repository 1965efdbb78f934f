//! Structured logs: one JSON object per line on stderr (`ts`, `level`, `msg`, and fields such
//! as `route`, `status`, `ms`, `clientRequestId`, `webhookId`, `error`).
//!
//! Never a secret: callers pass only values the bridge derives itself (routes, ids, statuses,
//! error texts, which never carry credentials — see `gong::client::Auth`); the real-Spin suite
//! greps Spin's captured stderr for every secret it configured.

use serde_json::{Map, Value};

use crate::ports::{Request, Response};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// One log line, built field by field and written by [`Line::emit`].
#[must_use = "a log line is written only by emit()"]
pub struct Line {
    fields: Map<String, Value>,
}

impl Line {
    pub fn new(level: Level, msg: impl Into<String>) -> Line {
        let mut fields = Map::new();
        let ts = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        fields.insert("ts".into(), Value::String(ts));
        fields.insert("level".into(), Value::String(level.as_str().into()));
        fields.insert("msg".into(), Value::String(msg.into()));
        Line { fields }
    }

    /// Adds a field (a `None` value is left out).
    pub fn field(mut self, name: &str, value: impl Into<Value>) -> Line {
        let value = value.into();
        if !value.is_null() {
            self.fields.insert(name.to_owned(), value);
        }
        self
    }

    /// The line as written (without its newline).
    pub fn render(&self) -> String {
        Value::Object(self.fields.clone()).to_string()
    }

    /// One write of the whole line, newline included: `eprintln!` writes the text and its
    /// newline separately, so concurrent instances sharing one stderr could glue two lines
    /// together (seen in the in-process host's output).
    pub fn emit(self) {
        let mut line = self.render();
        line.push('\n');
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    }
}

pub fn info(msg: impl Into<String>) -> Line {
    Line::new(Level::Info, msg)
}

pub fn warn(msg: impl Into<String>) -> Line {
    Line::new(Level::Warn, msg)
}

pub fn error(msg: impl Into<String>) -> Line {
    Line::new(Level::Error, msg)
}

/// What the log line of one request says about it, taken before the request is handled.
pub struct Access {
    route: String,
    webhook_id: Option<String>,
    idempotency_key: Option<String>,
}

impl Access {
    pub fn of(request: &Request) -> Access {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(128).collect::<String>())
        };
        Access {
            route: format!("{} {}", request.method(), request.uri().path()),
            webhook_id: header("webhook-id"),
            idempotency_key: header("idempotency-key"),
        }
    }

    /// A request that could not be read (no headers worth naming).
    pub fn bare(method: &http::Method, path_with_query: &str) -> Access {
        let path = path_with_query.split('?').next().unwrap_or("");
        Access {
            route: format!("{method} {path}"),
            webhook_id: None,
            idempotency_key: None,
        }
    }

    /// The request's one log line: level by status (5xx error, 4xx warn), the clientRequestId
    /// (from `Location: /requests/…` or the `Idempotency-Key`), and a problem's type and detail.
    pub fn line(&self, response: &Response) -> Line {
        let status = response.status().as_u16();
        let level = match status {
            500.. => Level::Error,
            400..=499 => Level::Warn,
            _ => Level::Info,
        };
        let location = response
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.strip_prefix("/requests/"))
            .map(str::to_owned);
        let problem: Option<serde_json::Value> = (status >= 400)
            .then(|| serde_json::from_slice(response.body()).ok())
            .flatten();
        let member = |name: &str| {
            problem
                .as_ref()
                .and_then(|p| p.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        Line::new(level, "request")
            .field("route", self.route.as_str())
            .field("status", status)
            .field(
                "clientRequestId",
                location.or_else(|| self.idempotency_key.clone()),
            )
            .field("webhookId", self.webhook_id.clone())
            .field("problem", member("type"))
            .field("error", member("detail"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_its_fields() {
        let line = error("Gong call failed")
            .field("route", "POST /flush")
            .field("status", 502)
            .field("webhookId", None::<String>)
            .render();
        assert!(!line.contains('\n'));
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["level"], "error");
        assert_eq!(parsed["msg"], "Gong call failed");
        assert_eq!(parsed["route"], "POST /flush");
        assert_eq!(parsed["status"], 502);
        assert!(parsed.get("webhookId").is_none());
        assert!(time::OffsetDateTime::parse(
            parsed["ts"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok());
    }
}
