//! Host side of the Spin interfaces the component imports (`fermyon:spin/key-value@2.0.0`,
//! `fermyon:spin/variables@2.0.0`) plus the per-request store data (`HostState`) that also
//! carries the WASI and `wasi:http` contexts.

use std::collections::HashMap;

use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::kv::MemKv;
use super::outbound::OutboundHooks;

/// The `store` resource's host representation: an open handle on the `default` store.
pub struct KvStoreHandle {
    pub label: String,
}

mod bindings {
    wasmtime::component::bindgen!({
        world: "spin-imports",
        path: "wit",
        imports: { default: async | trappable },
        additional_derives: [PartialEq, Eq],
        with: {
            "fermyon:spin/key-value.store": super::KvStoreHandle,
        },
    });
}

pub use bindings::fermyon::spin::key_value as kv_bindings;
pub use bindings::fermyon::spin::variables as variables_bindings;

/// Data of one request's `wasmtime::Store`.
pub struct HostState {
    /// Records the instance's linear-memory high-water mark (see [`MemoryWatch`]).
    pub memory: MemoryWatch,
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub table: ResourceTable,
    pub hooks: OutboundHooks,
    pub kv: MemKv,
    /// Snapshot of the app's variables taken when the request started.
    pub vars: HashMap<String, String>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Adds WASI p2, `wasi:http` and the two Spin interfaces to `linker`.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    bindings::SpinImports::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    Ok(())
}

impl kv_bindings::Host for HostState {}

/// Waits the store's simulated latency (zero by default): a uniformly random time up to it,
/// since a remote store's operations take unequal times, which is what opens race windows.
async fn kv_wait(latency: std::time::Duration) {
    if latency.is_zero() {
        return;
    }
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let fraction = (hasher.finish() % 1_000) as u32;
    tokio::time::sleep(latency * fraction / 1_000).await;
}

impl kv_bindings::HostStore for HostState {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<KvStoreHandle>, kv_bindings::Error>> {
        if let Err(e) = self.kv.guest_open(&label) {
            return Ok(Err(e));
        }
        Ok(Ok(self.table.push(KvStoreHandle { label })?))
    }

    async fn get(
        &mut self,
        store: Resource<KvStoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, kv_bindings::Error>> {
        self.table.get(&store)?;
        kv_wait(self.kv.latency()).await;
        Ok(self.kv.guest_get(&key))
    }

    async fn set(
        &mut self,
        store: Resource<KvStoreHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv_bindings::Error>> {
        self.table.get(&store)?;
        kv_wait(self.kv.latency()).await;
        Ok(self.kv.guest_set(&key, value))
    }

    async fn delete(
        &mut self,
        store: Resource<KvStoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<(), kv_bindings::Error>> {
        self.table.get(&store)?;
        kv_wait(self.kv.latency()).await;
        Ok(self.kv.guest_delete(&key))
    }

    async fn exists(
        &mut self,
        store: Resource<KvStoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<bool, kv_bindings::Error>> {
        self.table.get(&store)?;
        kv_wait(self.kv.latency()).await;
        Ok(self.kv.guest_exists(&key))
    }

    async fn get_keys(
        &mut self,
        store: Resource<KvStoreHandle>,
    ) -> wasmtime::Result<Result<Vec<String>, kv_bindings::Error>> {
        self.table.get(&store)?;
        kv_wait(self.kv.latency()).await;
        Ok(self.kv.guest_get_keys())
    }

    async fn drop(&mut self, store: Resource<KvStoreHandle>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

impl variables_bindings::Host for HostState {
    async fn get(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<String, variables_bindings::Error>> {
        // Spin variable names: lowercase letters, digits and underscores, starting with a letter.
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Ok(Err(variables_bindings::Error::InvalidName(name)));
        }
        Ok(match self.vars.get(&name) {
            Some(value) => Ok(value.clone()),
            None => Err(variables_bindings::Error::Undefined(name)),
        })
    }
}

/// A `ResourceLimiter` that allows every growth and remembers the largest linear memory an
/// instance asked for: the guest's whole-request memory high-water (heap, stacks, data),
/// shared with the `TestApp` that ran it.
pub struct MemoryWatch {
    pub peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl wasmtime::ResourceLimiter for MemoryWatch {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.peak
            .fetch_max(desired, std::sync::atomic::Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}
