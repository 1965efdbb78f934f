//! Typed access to the key-value store: what is kept under which key, and how values too big
//! for one key (Fermyon Cloud: 1 MB per value) are split into chunks.
//!
//! Keys (all ≤ 255 bytes; ids are at most 64 characters):
//! - `integration`                 → [`KeptIntegration`]
//! - `schema/{OBJECT_TYPE}`        → the schema last accepted by Gong (`Vec<SchemaField>`)
//! - `request/{clientRequestId}`   → [`crate::tracking::RequestRecord`]
//! - `blob/{kind}/{clientRequestId}/{n}` → chunk n of a large value (LDJSON payload, line map)

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::fault::{encoding, Fault};
use crate::gong::models::{ObjectType, SchemaField};
use crate::ports::{Kv, KvError};

pub use crate::keys::INTEGRATION as INTEGRATION_KEY;
/// Chunk size for large values: under Fermyon Cloud's 1 MB value limit with room to spare.
pub const CHUNK_BYTES: usize = 512 * 1024;

pub use crate::keys::schema as schema_key;

pub use crate::keys::request as request_key;

use crate::keys::blob as blob_key;

/// The integration the bridge registered or adopted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeptIntegration {
    pub integration_id: i64,
    /// `registered` (this bridge created it) or `adopted` (it already existed in Gong).
    pub source: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub owner_email: Option<String>,
    pub kept_at: String,
}

pub struct Store<'a> {
    kv: &'a dyn Kv,
}

impl<'a> Store<'a> {
    pub fn new(kv: &'a dyn Kv) -> Store<'a> {
        Store { kv }
    }

    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Fault> {
        match self.kv.get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Fault::Corrupt(format!("stored value under {key:?} is unreadable: {e}"))
            }),
        }
    }

    pub fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), Fault> {
        let bytes = serde_json::to_vec(value).map_err(encoding)?;
        self.kv.set(key, &bytes).map_err(Fault::from)
    }

    pub fn delete(&self, key: &str) -> Result<(), KvError> {
        self.kv.delete(key)
    }

    pub fn integration(&self) -> Result<Option<KeptIntegration>, Fault> {
        self.get_json(INTEGRATION_KEY)
    }

    pub fn schema(&self, object_type: ObjectType) -> Result<Option<Vec<SchemaField>>, Fault> {
        self.get_json(&schema_key(object_type))
    }

    /// Writes `bytes` as chunks and returns how many; the caller records the count.
    pub fn put_blob(&self, kind: &str, id: &str, bytes: &[u8]) -> Result<usize, Fault> {
        let mut count = 0;
        for (n, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
            self.kv.set(&blob_key(kind, id, n), chunk)?;
            count = n + 1;
        }
        Ok(count)
    }

    pub fn get_blob(&self, kind: &str, id: &str, chunks: usize) -> Result<Option<Vec<u8>>, Fault> {
        let mut out = Vec::new();
        for n in 0..chunks {
            match self.kv.get(&blob_key(kind, id, n))? {
                Some(chunk) => out.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    }

    /// Best effort: a chunk left behind wastes a key but loses nothing.
    pub fn delete_blob(&self, kind: &str, id: &str, chunks: usize) -> Result<(), KvError> {
        for n in 0..chunks {
            self.kv.delete(&blob_key(kind, id, n))?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod memory {
    //! An in-memory `Kv` for native unit tests.
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use crate::ports::{Kv, KvError};

    #[derive(Default)]
    pub struct MemoryKv {
        pub map: RefCell<BTreeMap<String, Vec<u8>>>,
        pub fail_sets: RefCell<bool>,
    }

    impl Kv for MemoryKv {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
            Ok(self.map.borrow().get(key).cloned())
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
            if *self.fail_sets.borrow() {
                return Err(KvError("injected".into()));
            }
            self.map.borrow_mut().insert(key.to_owned(), value.to_vec());
            Ok(())
        }
        fn delete(&self, key: &str) -> Result<(), KvError> {
            self.map.borrow_mut().remove(key);
            Ok(())
        }
        fn keys(&self) -> Result<Vec<String>, KvError> {
            Ok(self.map.borrow().keys().cloned().collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryKv;
    use super::*;

    #[test]
    fn blobs_round_trip_across_chunks_and_delete() {
        let kv = MemoryKv::default();
        let store = Store::new(&kv);
        let data: Vec<u8> = (0..(CHUNK_BYTES * 2 + 10))
            .map(|i| (i % 251) as u8)
            .collect();
        let chunks = store.put_blob("payload", "abc", &data).unwrap();
        assert_eq!(chunks, 3);
        assert!(kv.map.borrow().values().all(|v| v.len() <= CHUNK_BYTES));
        assert_eq!(
            store.get_blob("payload", "abc", chunks).unwrap().unwrap(),
            data
        );
        store.delete_blob("payload", "abc", chunks).unwrap();
        assert!(kv.map.borrow().is_empty());
        assert_eq!(store.get_blob("payload", "abc", chunks).unwrap(), None);
    }

    #[test]
    fn unreadable_json_is_an_error_not_a_panic() {
        let kv = MemoryKv::default();
        kv.set("integration", b"{not json").unwrap();
        assert!(Store::new(&kv).integration().is_err());
    }
}
