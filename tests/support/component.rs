//! Where the release component is and how it is built; shared by the in-process host and the
//! real-Spin suite (no wasmtime here).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Env var: path of a prebuilt component; when set the host does not run `cargo build`.
pub const WASM_ENV: &str = "GONG_BRIDGE_WASM";

/// The crate's root directory (where `Cargo.toml` and `spin.toml` are).
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => manifest_dir().join(dir),
        None => manifest_dir().join("target"),
    }
}

/// Where the component is read from: `$GONG_BRIDGE_WASM`, else the release wasm32-wasip2
/// artifact of this crate.
pub fn component_path() -> PathBuf {
    match std::env::var_os(WASM_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => target_dir()
            .join("wasm32-wasip2")
            .join("release")
            .join("gong_crm_bridge.wasm"),
    }
}

/// Runs `cargo build --release --target wasm32-wasip2 --lib` in the crate directory
/// (output inherited). Returns how long it took.
pub fn build_component() -> anyhow::Result<Duration> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    eprintln!(
        "[test-host] building the component: cargo build --release --target wasm32-wasip2 --lib"
    );
    let status = std::process::Command::new(&cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--lib"])
        .current_dir(manifest_dir())
        .stdin(std::process::Stdio::null())
        .status()
        .with_context(|| format!("spawning {cargo:?}"))?;
    if !status.success() {
        bail!(
            "`cargo build --release --target wasm32-wasip2 --lib` failed ({status}); \
             fix the build errors above, or set {WASM_ENV}=/path/to/component.wasm to test a \
             prebuilt component"
        );
    }
    Ok(started.elapsed())
}
