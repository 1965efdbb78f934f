//! Close's REST API as the sync reads it: `GET /api/v1/{lead,contact,opportunity}/?_skip=&_limit=100`
//! → `{data, has_more}` (offset pagination, developer.close.com/topics/pagination), the API key
//! as the HTTP Basic user with an empty password (`close_api_key`). Leads first (they become
//! Gong's accounts), then contacts, then opportunities. Close caps how deep `_skip` may go per
//! resource; an account past that cap needs Close's export API (not read here).

use base64::Engine;
use serde_json::Value;

use super::{Page, SyncApi};
use crate::gateway::Upstream;
use crate::ports::{Config, Request};
use crate::quota::QuotaLimits;
use crate::settings::{CLOSE_API_KEY, CLOSE_BASE_URL};

pub struct CloseApi;

const LIMIT: u64 = 100;

/// A GET of Close's API with the key, or the missing variable.
pub fn get(config: &dyn Config, path_and_query: &str) -> Result<Request, Vec<String>> {
    let key = config
        .get(CLOSE_API_KEY)
        .ok_or_else(|| vec![CLOSE_API_KEY.to_owned()])?;
    let base = config
        .get(CLOSE_BASE_URL)
        .unwrap_or_else(|| "https://api.close.com".to_owned());
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
    http::Request::builder()
        .method("GET")
        .uri(format!("{}{path_and_query}", base.trim_end_matches('/')))
        .header("authorization", format!("Basic {basic}"))
        .header("accept", "application/json")
        .body(Vec::new())
        .map_err(|_| vec![CLOSE_BASE_URL.to_owned()])
}

impl SyncApi for CloseApi {
    fn source(&self) -> &'static str {
        "close"
    }

    fn objects(&self) -> &'static [&'static str] {
        &["lead", "contact", "opportunity"]
    }

    /// Close's limits are per API key and endpoint group; 5 calls a second stays well inside
    /// them, and its 429 `Retry-After` (seconds) pauses every replica.
    fn upstream(&self) -> Upstream {
        Upstream {
            name: "Close",
            quota_key: format!("{}close", crate::keys::SOURCE_QUOTA_PREFIX),
            limits: QuotaLimits {
                per_second: 5,
                per_hour: 0,
                per_day: 0,
            },
            timeout: std::time::Duration::from_secs(10),
        }
    }

    fn page(
        &self,
        config: &dyn Config,
        object: &str,
        cursor: Option<&str>,
    ) -> Result<Request, Vec<String>> {
        let skip: u64 = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
        get(
            config,
            &format!("/api/v1/{object}/?_skip={skip}&_limit={LIMIT}"),
        )
    }

    fn read_page(&self, _object: &str, cursor: Option<&str>, body: &[u8]) -> Result<Page, String> {
        let page: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let records = match page.get("data") {
            Some(Value::Array(records)) => records.clone(),
            _ => return Err("no \"data\" list".into()),
        };
        // The cursor is the next `_skip`: where this page started plus what it held.
        let skip: u64 = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
        let more = page.get("has_more") == Some(&Value::Bool(true)) && !records.is_empty();
        Ok(Page {
            next: more.then(|| (skip + records.len() as u64).to_string()),
            records,
        })
    }

    fn one(&self, config: &dyn Config, object: &str, id: &str) -> Result<Request, Vec<String>> {
        let id: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
        get(config, &format!("/api/v1/{object}/{id}/"))
    }
}
