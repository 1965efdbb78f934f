//! Serves the real component over HTTP with the in-process test host (no Spin CLI needed),
//! for curl, load tools and other black-box testing.
//!
//! ```text
//! cargo run --example serve -- --listen 127.0.0.1:3000 --mock-gong
//! cargo run --example serve -- --listen 127.0.0.1:3000 --gong http://127.0.0.1:9000 \
//!     --var api_token=secret --var gong_access_key=... --var gong_access_key_secret=...
//! ```
//!
//! Options:
//!   --listen ADDR        address to serve on (default 127.0.0.1:3000; port 0 picks one)
//!   --gong URL           sets the `gong_base_url` variable (and so the outbound allow-list)
//!   --mock-gong          starts the in-process MockGong and points gong_base_url at it
//!   --var NAME=VALUE     sets a Spin variable (repeatable; overrides the test defaults)
//!   --without-var NAME   leaves a variable undefined
//!   --quiet              hides the component's stderr
//!
//! Without `--var`, the test defaults apply (api_token=test-api-token, ...). The component is
//! rebuilt first (`cargo build --release --target wasm32-wasip2 --lib`) unless
//! `GONG_BRIDGE_WASM` points at a prebuilt one.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::process::ExitCode;

const USAGE: &str =
    "usage: serve [--listen ADDR] [--gong URL | --mock-gong] [--var NAME=VALUE]... \
                     [--without-var NAME]... [--quiet]";

struct Args {
    listen: SocketAddr,
    gong: Option<String>,
    mock_gong: bool,
    vars: Vec<(String, String)>,
    without: Vec<String>,
    quiet: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:3000".parse().expect("valid default address"),
        gong: None,
        mock_gong: false,
        vars: Vec::new(),
        without: Vec::new(),
        quiet: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        // Accept both `--opt value` and `--opt=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().ok_or_else(|| format!("{name} needs a value")),
            }
        };
        match flag.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                args.listen = v
                    .parse()
                    .map_err(|e| format!("--listen {v:?}: {e} (expected e.g. 127.0.0.1:3000)"))?;
            }
            "--gong" => args.gong = Some(value("--gong")?),
            "--mock-gong" => args.mock_gong = true,
            "--var" => {
                let v = value("--var")?;
                let (name, val) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--var {v:?}: expected NAME=VALUE"))?;
                args.vars.push((name.to_owned(), val.to_owned()));
            }
            "--without-var" => args.without.push(value("--without-var")?),
            "--quiet" => args.quiet = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.gong.is_some() && args.mock_gong {
        return Err("--gong and --mock-gong are exclusive".to_owned());
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("serve: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };

    let mut builder = support::TestApp::builder().guest_stderr(!args.quiet);
    if !args.mock_gong {
        builder = builder.no_mock();
    }
    if let Some(url) = &args.gong {
        if let Err(e) = support::Origin::parse(url) {
            eprintln!("serve: --gong: {e}");
            return ExitCode::from(2);
        }
        builder = builder.var("gong_base_url", url);
    }
    for (name, value) in &args.vars {
        builder = builder.var(name, value);
    }
    for name in &args.without {
        builder = builder.without_var(name);
    }
    // Loading may run `cargo build` and compile the component: do it off the async threads.
    if let Err(e) = tokio::task::spawn_blocking(|| {
        std::panic::catch_unwind(|| {
            support::runtime();
        })
    })
    .await
    .expect("the loader thread")
    {
        drop(e); // the panic message has been printed already
        return ExitCode::FAILURE;
    }
    let app = builder.build().await;

    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("serve: binding {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().expect("listener address");
    if let Some(mock) = app.try_mock() {
        println!("mock Gong on {}", mock.base_url());
    }
    match app.vars().get("gong_base_url") {
        Some(url) => println!("gong_base_url = {url}"),
        None => println!("gong_base_url is not set: every outbound request will be denied"),
    }
    println!("serving the component on http://{addr}");
    match support::serve_listener(app, listener).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}
