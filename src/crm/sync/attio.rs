//! Attio's REST API as the sync reads it: `POST /v2/objects/{companies,people,deals}/records/query`
//! with `{limit, offset}` (a page shorter than the limit is the last), behind the Bearer token
//! the fetch queue uses (`attio_api_token`), on the same shared budget and 429 pause as the
//! fetch queue. Records come as `GET …/records/{id}` answers them, so the one mapping reads both.

use serde_json::Value;

use super::{Page, SyncApi};
use crate::crm::attio;
use crate::gateway::Upstream;
use crate::ports::{Config, Request};
use crate::settings::ATTIO_API_TOKEN;

pub struct AttioApi;

const LIMIT: u64 = 500;

fn missing(why: String) -> Vec<String> {
    if why.contains(ATTIO_API_TOKEN) {
        vec![ATTIO_API_TOKEN.to_owned()]
    } else {
        vec![crate::settings::ATTIO_BASE_URL.to_owned()]
    }
}

impl SyncApi for AttioApi {
    fn source(&self) -> &'static str {
        "attio"
    }

    fn objects(&self) -> &'static [&'static str] {
        &["companies", "people", "deals"]
    }

    fn upstream(&self) -> Upstream {
        crate::crm::fetch::upstream("attio")
    }

    fn page(
        &self,
        config: &dyn Config,
        object: &str,
        cursor: Option<&str>,
    ) -> Result<Request, Vec<String>> {
        let offset = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
        attio::query_records(config, object, LIMIT, offset).map_err(missing)
    }

    fn read_page(&self, _object: &str, cursor: Option<&str>, body: &[u8]) -> Result<Page, String> {
        let page: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let records = match page.get("data") {
            Some(Value::Array(records)) => records.clone(),
            _ => return Err("no \"data\" list".into()),
        };
        let offset: u64 = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
        // Attio says nothing of what is left: a full page may have a next one.
        let full = records.len() as u64 >= LIMIT;
        Ok(Page {
            next: full.then(|| (offset + records.len() as u64).to_string()),
            records,
        })
    }

    fn one(&self, config: &dyn Config, object: &str, id: &str) -> Result<Request, Vec<String>> {
        attio::get_record(config, object, id).map_err(missing)
    }
}
