//! What the real-Spin suite and its latency bench share: the wasmtime-free parts of
//! `tests/support`, the HTTP client and the process harness. Included by `#[path]`; the includer
//! re-exports `support`, `client` and `harness` at its crate root, where those files look for them.

#[path = "../support/component.rs"]
pub(crate) mod component_file;
// The latency bench shares this file and has no Attio case.
#[allow(dead_code)]
#[path = "../support/mock_attio.rs"]
pub(crate) mod mock_attio_file;
// The latency bench shares this file and has no Close case.
#[allow(dead_code)]
#[path = "../support/mock_close.rs"]
pub(crate) mod mock_close_file;
#[path = "../support/mock_gong.rs"]
pub(crate) mod mock_gong_file;
#[allow(dead_code)]
#[path = "../support/mock_pipedrive.rs"]
pub(crate) mod mock_pipedrive_file;
#[path = "../support/signing.rs"]
pub(crate) mod signing_file;

/// The parts of `tests/support` that need no wasmtime, under the names the other tests use.
pub(crate) mod support {
    pub(crate) use super::component_file as component;
    #[allow(unused_imports)]
    pub(crate) use super::mock_attio_file as mock_attio;
    #[allow(unused_imports)]
    pub(crate) use super::mock_close_file as mock_close;
    pub(crate) use super::mock_gong_file as mock_gong;
    #[allow(unused_imports)]
    pub(crate) use super::mock_pipedrive_file as mock_pipedrive;
    pub(crate) use super::signing_file as signing;
}

#[path = "client.rs"]
pub(crate) mod client;
#[path = "harness.rs"]
pub(crate) mod harness;
