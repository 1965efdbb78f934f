//! Build script: embeds `docs/openapi.json` minified (the checked-in file is indented for people;
//! the component serves the same document without the whitespace, about half the bytes).

fn main() {
    println!("cargo:rerun-if-changed=docs/openapi.json");
    println!("cargo:rerun-if-changed=src/build.rs");
    let text = std::fs::read_to_string("docs/openapi.json").expect("reading docs/openapi.json");
    let document: serde_json::Value = serde_json::from_str(&text).expect("docs/openapi.json is not valid JSON");
    let out = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo")).join("openapi.min.json");
    std::fs::write(out, serde_json::to_string(&document).expect("serialising the document")).expect("writing openapi.min.json");
}
