//! Pipedrive's REST API as the sync reads it: API v2 lists with cursor pagination for stages,
//! organizations, persons and deals (`GET /api/v2/{object}s?limit=500&cursor=…` →
//! `{data, additional_data: {next_cursor}}`), API v1 for users (one unpaginated list) and leads
//! (`start`/`limit` → `additional_data.pagination.next_start`), the token in `x-api-token`
//! (`pipedrive_api_token`; never in the URL). Pipedrive's webhooks v2 and API v2 carry records
//! in the same shape, so the source's one mapping reads both.

use serde_json::Value;

use super::{Page, SyncApi};
use crate::gateway::Upstream;
use crate::ports::{Config, Request};
use crate::quota::QuotaLimits;
use crate::settings::{PIPEDRIVE_API_TOKEN, PIPEDRIVE_BASE_URL};

pub struct PipedriveApi;

/// Records per page: Pipedrive's maximum.
const LIMIT: u32 = 500;

/// Pipedrive's default API host (its docs advise `https://{company}.pipedrive.com` for speed).
pub const DEFAULT_BASE_URL: &str = "https://api.pipedrive.com";

pub fn base_url(config: &dyn Config) -> String {
    config
        .get(PIPEDRIVE_BASE_URL)
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A GET of Pipedrive's API with the token, or the missing variable.
pub fn get(config: &dyn Config, path_and_query: &str) -> Result<Request, Vec<String>> {
    let token = config
        .get(PIPEDRIVE_API_TOKEN)
        .ok_or_else(|| vec![PIPEDRIVE_API_TOKEN.to_owned()])?;
    http::Request::builder()
        .method("GET")
        .uri(format!("{}{path_and_query}", base_url(config)))
        .header("x-api-token", token)
        .header("accept", "application/json")
        .body(Vec::new())
        .map_err(|_| vec![PIPEDRIVE_BASE_URL.to_owned()])
}

/// Pipedrive's API as an upstream of the gateway: 5 calls a second (an API token's burst limit
/// is 20 per 2 s on the smallest plan: half of it is left to the customer's other tools), and
/// its 429 pause (`Retry-After`, else `x-ratelimit-reset`).
pub fn upstream() -> Upstream {
    Upstream {
        name: "Pipedrive",
        quota_key: format!("{}pipedrive", crate::keys::SOURCE_QUOTA_PREFIX),
        limits: QuotaLimits {
            per_second: 5,
            per_hour: 0,
            per_day: 0,
        },
        timeout: std::time::Duration::from_secs(10),
    }
}

fn encode(cursor: &str) -> String {
    form_urlencoded::byte_serialize(cursor.as_bytes()).collect()
}

impl SyncApi for PipedriveApi {
    fn source(&self) -> &'static str {
        "pipedrive"
    }

    fn objects(&self) -> &'static [&'static str] {
        &["user", "stage", "organization", "person", "lead", "deal"]
    }

    fn upstream(&self) -> Upstream {
        upstream()
    }

    fn page(
        &self,
        config: &dyn Config,
        object: &str,
        cursor: Option<&str>,
    ) -> Result<Request, Vec<String>> {
        let path = match object {
            "user" => "/api/v1/users".to_owned(),
            "lead" => format!(
                "/api/v1/leads?limit={LIMIT}&start={}",
                cursor.unwrap_or("0")
            ),
            other => {
                let mut path = format!("/api/v2/{other}s?limit={LIMIT}");
                if let Some(c) = cursor {
                    path.push_str(&format!("&cursor={}", encode(c)));
                }
                path
            }
        };
        get(config, &path)
    }

    fn one(&self, config: &dyn Config, object: &str, id: &str) -> Result<Request, Vec<String>> {
        let id: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
        match object {
            "user" | "lead" => get(config, &format!("/api/v1/{object}s/{id}")),
            other => get(config, &format!("/api/v2/{other}s/{id}")),
        }
    }

    fn read_page(&self, object: &str, _cursor: Option<&str>, body: &[u8]) -> Result<Page, String> {
        let page: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        if page.get("success") == Some(&Value::Bool(false)) {
            return Err(format!(
                "Pipedrive said: {}",
                page.get("error").unwrap_or(&page)
            ));
        }
        let records = match page.get("data") {
            Some(Value::Array(records)) => records.clone(),
            Some(Value::Null) | None => Vec::new(),
            Some(other) => return Err(format!("\"data\" is not a list: {other}")),
        };
        let more = page.get("additional_data");
        let next = match object {
            "user" => None,
            "lead" => {
                // Documented as additional_data.pagination; the spec's schema has it unwrapped.
                let pagination = more
                    .and_then(|m| m.get("pagination"))
                    .or(more)
                    .unwrap_or(&Value::Null);
                let more_items = pagination
                    .get("more_items_in_collection")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let start = pagination.get("start").and_then(Value::as_u64).unwrap_or(0);
                more_items.then(|| {
                    pagination
                        .get("next_start")
                        .and_then(Value::as_u64)
                        .unwrap_or(start + records.len() as u64)
                        .to_string()
                })
            }
            _ => more
                .and_then(|m| m.get("next_cursor"))
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .map(str::to_owned),
        };
        Ok(Page { records, next })
    }
}
