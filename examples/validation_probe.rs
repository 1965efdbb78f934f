//! Validation figures of issue 3, the same code natively and inside WebAssembly.
//!
//! `benches/validation.rs` includes this file as a module for the native figures and also builds
//! it for `wasm32-wasip2` (as a plain binary depending on this crate, so that the host-only
//! dev-dependencies are not built for wasm) and runs it in wasmtime as a WASI command:
//!
//! - `validation_probe time <iterations>`: 100,000 records across the six object types, 20
//!   custom fields on ACCOUNT/CONTACT/DEAL/LEAD (typed by a generated schema covering all 14
//!   field types); median time of `validate_records` (which builds the LDJSON file) vs a plain
//!   serde_json parse + serialise of the same bytes. One `validate_records` call per object type
//!   (the API takes one type per call); a figure is the sum over the six types.
//! - `validation_probe mem <ldjson|json|ldjson-sorted> <bytes>`: peak heap during
//!   `validate_records_owned` (as `POST /records` calls it) on one ACCOUNT body of about `bytes` (`-sorted`: already in
//!   `modifiedDate` order, so the file is the output buffer itself), from the counting global allocator below (and, in wasm, the
//!   linear memory size at the end).
//!
//! Each command prints one JSON object on stdout.
//!
//! Natively, for a quick look: `cargo run --example validation_probe -- time 3`.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use gong_crm_bridge::gong::models::{ObjectType, SchemaField};
use gong_crm_bridge::validation::{
    validate_records, validate_records_owned, BodyFormat, RecordOptions,
};
use serde_json::{json, Map, Value};

// ----- counting allocator --------------------------------------------------------------------

/// The system allocator, counting the bytes currently allocated and their high-water mark.
pub struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated right now.
pub fn heap_now() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Restarts the high-water mark at the current level.
pub fn reset_peak() {
    PEAK.store(heap_now(), Ordering::Relaxed);
}

pub fn heap_peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// The wasm linear memory size in bytes (it never shrinks: the run's high-water mark).
pub fn linear_memory_bytes() -> Option<usize> {
    #[cfg(target_arch = "wasm32")]
    {
        Some(core::arch::wasm32::memory_size::<0>() * 65536)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        None
    }
}

// ----- generated data ------------------------------------------------------------------------

/// The 14 field types, then six repeated: 20 custom fields per schema type.
pub const CUSTOM_TYPES: [&str; 20] = [
    "DATE",
    "DATETIME",
    "NUMBER",
    "PERCENT",
    "CURRENCY",
    "ID",
    "URL",
    "STRING",
    "BOOLEAN",
    "PHONENUMBER",
    "EMAILADDRESS",
    "PICKLIST",
    "REFERENCE",
    "STRINGARRAY",
    "STRING",
    "STRING",
    "NUMBER",
    "DATETIME",
    "PICKLIST",
    "BOOLEAN",
];

/// Records per type in the 100,000-record workload (sums to 100,000).
pub const MIX: [(ObjectType, usize); 6] = [
    (ObjectType::Account, 20_000),
    (ObjectType::Contact, 25_000),
    (ObjectType::Deal, 25_000),
    (ObjectType::Lead, 20_000),
    (ObjectType::BusinessUser, 5_000),
    (ObjectType::Stage, 5_000),
];

fn custom_name(i: usize) -> String {
    format!("cf{i:02}_{}", CUSTOM_TYPES[i].to_ascii_lowercase())
}

/// The generated custom-field schema (the same for each of the four schema types).
pub fn schema() -> Vec<SchemaField> {
    CUSTOM_TYPES
        .iter()
        .enumerate()
        .map(|(i, t)| SchemaField {
            unique_name: Some(custom_name(i)),
            label: Some(format!("Custom {i}")),
            field_type: Some((*t).to_owned()),
            reference_to: (*t == "REFERENCE").then(|| "ACCOUNT".to_owned()),
            ordered_value_list: (*t == "PICKLIST")
                .then(|| (0..10).map(|v| format!("Value {v}")).collect()),
            ..Default::default()
        })
        .collect()
}

/// A deterministic pseudo-random number for record `n` (so dates are not pre-sorted).
fn mix(n: usize) -> u64 {
    let mut x = (n as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn datetime(r: u64, zulu: bool) -> String {
    let (mo, d, h, mi, s) = (
        1 + r % 12,
        1 + (r / 12) % 28,
        (r / 336) % 24,
        (r / 8064) % 60,
        (r / 483_840) % 60,
    );
    if zulu {
        format!("2024-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("2024-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}+02:00")
    }
}

fn custom_value(t: &str, n: usize) -> Value {
    let r = mix(n.wrapping_mul(31));
    match t {
        "DATE" => json!(format!("2024-{:02}-{:02}", 1 + r % 12, 1 + r % 28)),
        "DATETIME" => json!(datetime(r, n % 2 == 0)),
        "NUMBER" => json!(n as f64 * 1.25),
        "PERCENT" => json!((r % 100) as f64 + 0.5),
        "CURRENCY" => json!((r % 1_000_000) as f64 / 100.0),
        "ID" => json!(format!("ext-{r:x}")),
        "URL" => json!(format!("https://crm.example.com/record/{n}")),
        "STRING" => json!(format!("some text value {n}")),
        "BOOLEAN" => json!(r % 2 == 0),
        "PHONENUMBER" => json!(format!("+1405576{:04}", r % 10_000)),
        "EMAILADDRESS" => json!(format!("person{n}@example.com")),
        "PICKLIST" => json!(format!("Value {}", r % 10)),
        "REFERENCE" => json!(format!("acc-{}", r % 20_000)),
        _ => json!([format!("tag{}", r % 7), format!("tag{}", r % 11)]), // STRINGARRAY
    }
}

/// Record `n` of `object_type`: common fields, the type's standard fields and, for the four
/// schema types, the 20 custom fields.
pub fn record(object_type: ObjectType, n: usize) -> Value {
    record_dated(object_type, n, false)
}

/// [`record`], with `modifiedDate` growing with `n` when `sorted` (a CRM export in change order:
/// the file needs no reordering) instead of scattered over 2024.
pub fn record_dated(object_type: ObjectType, n: usize, sorted: bool) -> Value {
    let r = mix(n);
    let mut m = Map::new();
    let prefix = match object_type {
        ObjectType::Account => "acc",
        ObjectType::Contact => "con",
        ObjectType::Deal => "deal",
        ObjectType::Lead => "lead",
        ObjectType::BusinessUser => "user",
        ObjectType::Stage => "stage",
    };
    m.insert("objectId".into(), json!(format!("{prefix}-{n}")));
    let modified = if sorted {
        let (d, h, mi, s) = (1 + n / 86_400, (n / 3600) % 24, (n / 60) % 60, n % 60);
        format!("2024-01-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        datetime(r, true)
    };
    m.insert("modifiedDate".into(), json!(modified));
    m.insert(
        "url".into(),
        json!(format!("https://crm.example.com/{prefix}/{n}")),
    );
    let person = |m: &mut Map<String, Value>| {
        m.insert(
            "emailAddress".into(),
            json!(format!("person{n}@example.com")),
        );
        m.insert("firstName".into(), json!(format!("First{n}")));
        m.insert("lastName".into(), json!(format!("Last{n}")));
        m.insert("title".into(), json!("Head of Things"));
        m.insert(
            "phoneNumber".into(),
            json!(format!("+1405576{:04}", r % 10_000)),
        );
    };
    match object_type {
        ObjectType::Account => {
            m.insert("name".into(), json!(format!("Account {n}")));
            m.insert("domains".into(), json!([format!("acc{n}.example.com")]));
        }
        ObjectType::Contact => {
            m.insert("accountId".into(), json!(format!("acc-{}", r % 20_000)));
            person(&mut m);
        }
        ObjectType::Deal => {
            m.insert("accountId".into(), json!(format!("acc-{}", r % 20_000)));
            m.insert("ownerId".into(), json!(format!("user-{}", r % 5_000)));
            m.insert("name".into(), json!(format!("Deal {n}")));
            m.insert("createdDate".into(), json!(datetime(r / 7, false)));
            m.insert(
                "closeDate".into(),
                json!(format!("2024-{:02}-{:02}", 1 + r % 12, 1 + r % 28)),
            );
            m.insert(
                "status".into(),
                json!(["OPEN", "WON", "LOST"][(r % 3) as usize]),
            );
            m.insert("stage".into(), json!(format!("stage-{}", r % 5_000)));
            m.insert("amount".into(), json!((r % 10_000_000) as f64 / 100.0));
        }
        ObjectType::Lead => {
            person(&mut m);
            m.insert(
                "convertedToAccountId".into(),
                json!(format!("acc-{}", r % 20_000)),
            );
        }
        ObjectType::BusinessUser => {
            m.insert("emailAddress".into(), json!(format!("user{n}@example.com")));
        }
        ObjectType::Stage => {
            m.insert("name".into(), json!(format!("Stage {n}")));
            m.insert("isActive".into(), json!(r % 5 != 0));
            m.insert("sortOrder".into(), json!(1 + r % 20));
        }
    }
    if object_type.has_schema() {
        for (i, t) in CUSTOM_TYPES.iter().enumerate() {
            m.insert(custom_name(i), custom_value(t, n + i));
        }
    }
    Value::Object(m)
}

/// One object type's share of the workload, as both body formats.
pub struct TypeBody {
    pub object_type: ObjectType,
    pub records: usize,
    pub schema: Option<Vec<SchemaField>>,
    pub ldjson: Vec<u8>,
    pub json: Vec<u8>,
}

/// Writes records of `object_type` as LDJSON or as a JSON array, without keeping them (so that
/// generating a large body costs about the body): `count` records, or with `until_bytes` as
/// many as it takes to reach that size. Returns the body and the number of records.
pub fn body_of(
    object_type: ObjectType,
    count: usize,
    until_bytes: Option<usize>,
    format: BodyFormat,
    sorted: bool,
) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(until_bytes.map_or(0, |b| b + b / 16));
    if format == BodyFormat::Json {
        out.push(b'[');
    }
    let mut n = 0;
    while until_bytes.map_or(n < count, |b| out.len() < b) {
        if format == BodyFormat::Json && n > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, &record_dated(object_type, n, sorted))
            .expect("serialising a record");
        if format == BodyFormat::Ldjson {
            out.push(b'\n');
        }
        n += 1;
    }
    if format == BodyFormat::Json {
        out.push(b']');
    }
    (out, n)
}

pub fn body(object_type: ObjectType, count: usize, format: BodyFormat) -> Vec<u8> {
    body_of(object_type, count, None, format, false).0
}

/// The 100,000-record workload (`scale` = 1.0), one body per type.
pub fn workload(scale: f64) -> Vec<TypeBody> {
    MIX.iter()
        .map(|&(object_type, count)| {
            let count = ((count as f64) * scale).round().max(1.0) as usize;
            TypeBody {
                object_type,
                records: count,
                schema: object_type.has_schema().then(schema),
                ldjson: body(object_type, count, BodyFormat::Ldjson),
                json: body(object_type, count, BodyFormat::Json),
            }
        })
        .collect()
}

// ----- timings -------------------------------------------------------------------------------

/// Plain serde_json on an LDJSON body: parse each line to a `Value`, serialise it back.
pub fn serde_ldjson(body: &[u8]) -> usize {
    let mut out = Vec::with_capacity(body.len());
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(line).expect("generated LDJSON parses");
        serde_json::to_writer(&mut out, &v).expect("serialising");
        out.push(b'\n');
    }
    out.len()
}

/// Plain serde_json on a JSON array body: parse it to `Vec<Value>`, serialise each as a line.
pub fn serde_json_array(body: &[u8]) -> usize {
    let all: Vec<Value> = serde_json::from_slice(body).expect("generated JSON parses");
    let mut out = Vec::with_capacity(body.len());
    for v in &all {
        serde_json::to_writer(&mut out, v).expect("serialising");
        out.push(b'\n');
    }
    out.len()
}

/// `validate_records` on one type's body; panics unless every record passes without warnings.
pub fn ours(t: &TypeBody, format: BodyFormat, opts: RecordOptions) -> usize {
    let body = match format {
        BodyFormat::Ldjson => &t.ldjson,
        BodyFormat::Json => &t.json,
    };
    let batch = validate_records(t.object_type, body, format, t.schema.as_deref(), opts)
        .unwrap_or_else(|r| {
            panic!(
                "{} records rejected: {:?}",
                t.object_type,
                r.violations.first()
            )
        });
    assert_eq!(batch.line_object_ids.len(), t.records, "{}", t.object_type);
    assert!(
        batch.warnings.is_empty(),
        "{}: {:?}",
        t.object_type,
        batch.warnings.first()
    );
    batch.ldjson.len()
}

/// The measured variants, in report order.
pub const VARIANTS: [&str; 5] = [
    "serde_ldjson",
    "ours_ldjson",
    "ours_ldjson_normalize",
    "serde_json_array",
    "ours_json_array",
];

fn run_variant(name: &str, w: &[TypeBody]) -> usize {
    let normalize = RecordOptions {
        normalize: true,
        ..RecordOptions::default()
    };
    w.iter()
        .map(|t| match name {
            "serde_ldjson" => serde_ldjson(&t.ldjson),
            "ours_ldjson" => ours(t, BodyFormat::Ldjson, RecordOptions::default()),
            "ours_ldjson_normalize" => ours(t, BodyFormat::Ldjson, normalize),
            "serde_json_array" => serde_json_array(&t.json),
            "ours_json_array" => ours(t, BodyFormat::Json, RecordOptions::default()),
            other => panic!("unknown variant {other}"),
        })
        .sum()
}

pub fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Times every variant `iterations` times, interleaved (one round = each variant once, so that
/// drift of the machine affects all alike) after one warm-up round. Seconds per variant.
pub fn time_all(w: &[TypeBody], iterations: usize) -> Vec<(&'static str, Vec<f64>)> {
    let mut samples: Vec<(&'static str, Vec<f64>)> =
        VARIANTS.iter().map(|v| (*v, Vec::new())).collect();
    for round in 0..=iterations {
        for (name, list) in samples.iter_mut() {
            let started = Instant::now();
            black_box(run_variant(name, black_box(w)));
            if round > 0 {
                list.push(started.elapsed().as_secs_f64());
            }
        }
    }
    samples
}

/// The `time` command's report.
pub fn time_report(iterations: usize) -> Value {
    let w = workload(1.0);
    let records: usize = w.iter().map(|t| t.records).sum();
    let ldjson_bytes: usize = w.iter().map(|t| t.ldjson.len()).sum();
    let json_bytes: usize = w.iter().map(|t| t.json.len()).sum();
    let samples = time_all(&w, iterations);
    let mut medians = Map::new();
    for (name, list) in &samples {
        medians.insert(
            (*name).to_owned(),
            json!({"median_s": median(list), "samples_s": list}),
        );
    }
    json!({
        "records": records,
        "ldjson_bytes": ldjson_bytes,
        "json_bytes": json_bytes,
        "iterations": iterations,
        "variants": medians,
        "linear_memory_bytes": linear_memory_bytes(),
    })
}

// ----- memory --------------------------------------------------------------------------------

/// Peak heap while `validate_records_owned` runs on one ACCOUNT body of at least `target` bytes
/// (records with scattered `modifiedDate`s unless `sorted`).
pub fn memory_report(format: BodyFormat, sorted: bool, target: usize) -> Value {
    let (body, count) = body_of(ObjectType::Account, 0, Some(target), format, sorted);
    let schema = schema();
    let body_bytes = body.len();
    let before = heap_now();
    reset_peak();
    let started = Instant::now();
    // As `POST /records` does: the body is handed over and freed once every record is read.
    let batch = validate_records_owned(
        ObjectType::Account,
        body,
        format,
        Some(&schema),
        RecordOptions::default(),
    )
    .expect("valid body");
    let took = started.elapsed().as_secs_f64();
    let peak_extra = heap_peak() - before;
    let output = batch.ldjson.len();
    assert_eq!(batch.line_object_ids.len(), count);
    drop(batch);
    json!({
        "format": if format == BodyFormat::Json { "json" } else { "ldjson" },
        "sorted": sorted,
        "records": count,
        "body_bytes": body_bytes,
        "output_bytes": output,
        "heap_before_bytes": before,
        "peak_extra_bytes": peak_extra,
        "seconds": took,
        "linear_memory_bytes": linear_memory_bytes(),
    })
}

pub fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let report = match (arg(1), arg(2), arg(3)) {
        (Some("time"), n, _) => time_report(n.and_then(|n| n.parse().ok()).unwrap_or(5)),
        (Some("mem"), Some(f @ ("ldjson" | "json" | "ldjson-sorted")), bytes) => {
            let format = if f == "json" {
                BodyFormat::Json
            } else {
                BodyFormat::Ldjson
            };
            memory_report(
                format,
                f == "ldjson-sorted",
                bytes.and_then(|b| b.parse().ok()).unwrap_or(50_000_000),
            )
        }
        _ => {
            eprintln!("usage: validation_probe time [iterations] | mem <ldjson|json|ldjson-sorted> [bytes]");
            std::process::exit(2);
        }
    };
    println!("{report}");
}
