//! Build script: embeds `docs/openapi.json` minified and gzipped and the status page gzipped, and
//! links the component through `wasm-opt -Oz` (issue 12: both for the component's size).
//!
//! The checked-in document is indented for people; the component serves it without the
//! whitespace, and compressed: 108 kB of text become about 12 kB of the component.

use std::io::Write as _;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=docs/openapi.json");
    println!("cargo:rerun-if-changed=src/routes/status_page.html");
    println!("cargo:rerun-if-changed=src/build.rs");
    println!("cargo:rerun-if-changed=src/wasm-ld-then-wasm-opt.sh");
    println!("cargo:rerun-if-env-changed=WASM_OPT");
    link_through_wasm_opt();
    let out = std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo");
    let text = std::fs::read_to_string("docs/openapi.json").expect("reading docs/openapi.json");
    let document: serde_json::Value =
        serde_json::from_str(&text).expect("docs/openapi.json is not valid JSON");
    let minified = serde_json::to_string(&document).expect("serialising the document");
    gzip_into(
        minified.as_bytes(),
        &Path::new(&out).join("openapi.min.json.gz"),
    );
    let page =
        std::fs::read("src/routes/status_page.html").expect("reading src/routes/status_page.html");
    gzip_into(&page, &Path::new(&out).join("status_page.html.gz"));
}

/// For the component (wasm32, linked by wasm-component-ld), link through the script that runs
/// `wasm-opt -Oz` on the core module between wasm-ld and the component wrapping. The script is a
/// POSIX shell script, so only where one runs; it leaves the module alone without wasm-opt.
fn link_through_wasm_opt() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.starts_with("wasm32-wasip2") || !cfg!(unix) {
        return;
    }
    // The toolchain's own wasm-ld, which wasm-component-ld would otherwise have found itself;
    // the script gets it through the environment rustc passes to its linker. Without it, the
    // component is linked as usual.
    let Some(wasm_ld) = toolchain_wasm_ld() else {
        println!("cargo:warning=the toolchain's wasm-ld was not found; the component is linked without wasm-opt");
        return;
    };
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo");
    println!("cargo:rustc-cdylib-link-arg=--wasm-ld-path={dir}/src/wasm-ld-then-wasm-opt.sh");
    println!("cargo:rustc-env=GCB_WASM_LD={}", wasm_ld.display());
}

/// `<sysroot>/lib/rustlib/<host>/bin/gcc-ld/wasm-ld`, the lld rustc ships for wasm targets.
fn toolchain_wasm_ld() -> Option<std::path::PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let host = std::env::var("HOST").ok()?;
    let sysroot = String::from_utf8(sysroot.stdout).ok()?;
    let path = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/gcc-ld/wasm-ld");
    path.exists().then_some(path)
}

/// A gzip member with the plain 10-byte header (no name, no extra fields), which is what
/// `routes::embedded` skips to reach the deflate stream when a client wants identity.
fn gzip_into(bytes: &[u8], path: &Path) {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("compressing");
    let gz = encoder.finish().expect("compressing");
    assert_eq!(gz[3], 0, "the gzip header has optional fields");
    std::fs::write(path, gz).expect("writing the compressed file");
}
