//! spin.toml and the code agree: every variable the code reads is declared, mapped into the
//! component, secret where it holds a secret, and the outbound allow-list is the Gong base URL.

use std::collections::BTreeSet;

fn manifest() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/spin.toml")).expect("spin.toml")
}

/// Lines of one `[section]` of the manifest.
fn section<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("[{name}]");
    let mut lines = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            inside = trimmed == header;
            continue;
        }
        if inside && !trimmed.is_empty() && !trimmed.starts_with('#') {
            lines.push(trimmed);
        }
    }
    lines
}

fn names(lines: &[&str]) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k.trim().to_owned())
        .collect()
}

fn variables_read_by_the_code() -> BTreeSet<String> {
    let settings = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/settings.rs"))
        .expect("settings.rs");
    settings
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split_once(": &str = \""))
        .map(|(_, v)| v.trim_end_matches("\";").to_owned())
        .collect()
}

#[test]
fn every_variable_is_declared_and_mapped() {
    let text = manifest();
    let declared = names(&section(&text, "variables"));
    let mapped = names(&section(&text, "component.gong-crm-bridge.variables"));
    assert_eq!(
        declared, mapped,
        "application variables and component variables differ"
    );
    let read = variables_read_by_the_code();
    let missing: Vec<_> = read.difference(&declared).collect();
    assert!(
        missing.is_empty(),
        "read by the code but not in spin.toml: {missing:?}"
    );
}

#[test]
fn secrets_are_marked_secret_and_outbound_is_the_gong_host() {
    let text = manifest();
    let vars = section(&text, "variables");
    for secret in [
        "gong_access_key",
        "gong_access_key_secret",
        "gong_bearer_token",
        "api_token",
        "webhook_secret",
        "webhook_bearer_token",
        "pipedrive_webhook_user",
        "pipedrive_webhook_password",
        "close_webhook_signature_key",
        "attio_webhook_secret",
        "attio_api_token",
        "custom_webhook_token",
        "pipedrive_api_token",
        "close_api_key",
    ] {
        let line = vars
            .iter()
            .find(|l| l.starts_with(&format!("{secret} ")))
            .unwrap_or_else(|| panic!("{secret} not declared"));
        assert!(
            line.contains("secret = true"),
            "{secret} must be secret: {line}"
        );
    }
    let component = section(&text, "component.gong-crm-bridge");
    assert!(component
        .contains(&r#"allowed_outbound_hosts = ["{{ gong_base_url }}", "{{ attio_base_url }}", "{{ pipedrive_base_url }}", "{{ close_base_url }}"]"#));
    assert!(component.contains(&r#"key_value_stores = ["default"]"#));
    assert!(text.contains("route = \"/...\""));
}

/// Issue 18 item 4: the README's run command and its signed-webhook example use one secret, so
/// the example, pasted as it is, is accepted (it got a 401 when the run command made a random one).
#[test]
fn the_readme_example_signs_with_the_secret_the_run_command_sets() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let run = readme
        .lines()
        .find(|l| l.starts_with("spin up --build"))
        .expect("a run command");
    let given = run
        .split_whitespace()
        .find_map(|w| w.strip_prefix("webhook_secret="))
        .expect("the run command sets webhook_secret");
    let signed = readme
        .lines()
        .find_map(|l| {
            l.strip_prefix("SECRET='")
                .and_then(|rest| rest.strip_suffix('\''))
        })
        .expect("the example's SECRET");
    assert_eq!(
        given, signed,
        "the example signs with another secret than the run command sets"
    );
    assert!(
        given.starts_with("whsec_") && !given.contains('$'),
        "a fixed secret, not one made anew on each run: {given}"
    );
}
