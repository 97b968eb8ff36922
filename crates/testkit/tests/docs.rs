//! The configuration reference in `docs/operations.md` matches the configuration structs:
//! every key of every service is documented with its default, and nothing else is.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use serde_json::Value;

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

fn defaults() -> Vec<(&'static str, BTreeMap<String, String>)> {
    let mut all = Vec::new();
    for (name, value) in [
        ("auth", serde_json::to_value(sakuga_auth::Config::default()).unwrap()),
        ("scheduler", serde_json::to_value(sakuga_scheduler::Config::default()).unwrap()),
        ("organizer", serde_json::to_value(sakuga_organizer::Config::default()).unwrap()),
        ("generator", serde_json::to_value(sakuga_generator::Config::default()).unwrap()),
    ] {
        let mut flat = BTreeMap::new();
        flatten("", &value, &mut flat);
        all.push((name, flat));
    }
    all
}

/// The rows of the table between `<!-- config:NAME -->` and `<!-- /config:NAME -->`:
/// key -> default (both in backticks in the first two columns).
fn documented(doc: &str, name: &str) -> BTreeMap<String, String> {
    let start = format!("<!-- config:{name} -->");
    let end = format!("<!-- /config:{name} -->");
    let a = doc.find(&start).unwrap_or_else(|| panic!("docs/operations.md has no {start} section"));
    let b = doc[a..].find(&end).unwrap_or_else(|| panic!("docs/operations.md has no {end}")) + a;
    doc[a..b]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let unquote = |c: &str| c.trim().trim_start_matches('|').trim().trim_matches('`').to_owned();
            (unquote(cells[0]), unquote(cells[1]))
        })
        .collect()
}

#[test]
fn the_configuration_reference_matches_the_structs() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md");
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let mut problems = Vec::new();
    for (name, flat) in defaults() {
        let docs = documented(&doc, name);
        if docs != flat {
            let expected: Vec<String> =
                flat.iter().map(|(k, v)| format!("| `{k}` | `{v}` | {} |", "…")).collect();
            for (k, v) in &flat {
                match docs.get(k) {
                    None => problems.push(format!("{name}: `{k}` is not documented")),
                    Some(d) if d != v => {
                        problems.push(format!("{name}: `{k}` default is `{v}`, documented `{d}`"));
                    }
                    Some(_) => {}
                }
            }
            for k in docs.keys().filter(|k| !flat.contains_key(*k)) {
                problems.push(format!("{name}: `{k}` is documented but is not a setting"));
            }
            problems.push(format!("expected rows for {name}:\n{}", expected.join("\n")));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The TOML documents embedded in a ConfigMap manifest: file name -> text.
fn embedded_configs(yaml: &str) -> BTreeMap<String, String> {
    let mut configs = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in yaml.lines() {
        if let Some((name, text)) = current.as_mut() {
            if line.is_empty() || line.starts_with("    ") {
                text.push_str(line.strip_prefix("    ").unwrap_or(line));
                text.push('\n');
                continue;
            }
            configs.insert(std::mem::take(name), std::mem::take(text));
            current = None;
        }
        if let Some(name) = line
            .trim()
            .strip_suffix(": |")
            .filter(|n| std::path::Path::new(n).extension().is_some_and(|e| e == "toml"))
        {
            current = Some((name.to_owned(), String::new()));
        }
    }
    if let Some((name, text)) = current {
        configs.insert(name, text);
    }
    configs
}

/// Reads `text` as the configuration of `service`, refusing unknown and renamed keys alike
/// (the shipped files use the current names).
fn parse_as(service: &str, text: &str) -> Result<(), String> {
    fn strict<T: serde::de::DeserializeOwned>(text: &str) -> Result<(), String> {
        toml::from_str::<T>(text).map(drop).map_err(|e| e.to_string())
    }
    match service {
        "auth" | "migrate" => strict::<sakuga_auth::Config>(text),
        "scheduler" => strict::<sakuga_scheduler::Config>(text),
        "organizer" => strict::<sakuga_organizer::Config>(text),
        "generator" => strict::<sakuga_generator::Config>(text),
        other => Err(format!("no service named {other}")),
    }
}

#[test]
fn the_kubernetes_configs_use_current_keys_only() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/k8s/base/configmaps.yaml");
    let configs = embedded_configs(&std::fs::read_to_string(path).unwrap());
    let names: Vec<&str> = configs.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["auth.toml", "generator.toml", "migrate.toml", "organizer.toml", "scheduler.toml"],
        "one config per service and the migration job"
    );
    for (name, text) in &configs {
        let service = name.trim_end_matches(".toml");
        if let Err(e) = parse_as(service, text) {
            panic!("deploy/k8s/base/configmaps.yaml, {name}: {e}");
        }
    }
    // The check would catch a key from before `[server]`.
    assert!(parse_as("scheduler", "listen = \"0.0.0.0:1\"\n").is_err());
}

#[test]
fn the_s3_component_configures_an_organizer_on_a_bucket() {
    let path =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/k8s/components/s3-storage/organizer-config.yaml");
    let configs = embedded_configs(&std::fs::read_to_string(path).unwrap());
    let text = configs.get("organizer.toml").expect("the component replaces organizer.toml");
    let config: sakuga_organizer::Config = toml::from_str(text).unwrap();
    let raw: toml::Table = toml::from_str(text).unwrap();
    assert_eq!(raw["storage"]["backend"].as_str(), Some("s3"), "{text}");
    assert!(config.validate().is_ok(), "{:?}", config.validate());
}

/// The lines between `start` and `end` markers of `file`, without the markers and without
/// the common indentation.
fn marked_region(file: &str, start: &str, end: &str) -> String {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../").to_owned() + file).unwrap();
    let a = text.find(start).unwrap_or_else(|| panic!("{file} has no {start:?}"));
    let region: Vec<&str> = text[a..].lines().skip(1).take_while(|l| !l.contains(end)).collect();
    let indent = region
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    region.iter().map(|l| l.get(indent..).unwrap_or("")).collect::<Vec<_>>().join("\n")
}

#[test]
fn the_webhook_verification_examples_are_the_tested_code() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/webhooks.md")).unwrap();
    for (file, start, end) in [
        ("services/scheduler/src/webhooks/secret.rs", "// --- verify", "// --- end verify"),
        ("scripts/webhook_receiver.py", "# --- verify", "# --- end verify"),
    ] {
        let code = marked_region(file, start, end);
        assert!(code.lines().count() >= 8, "{file}: the marked region is missing");
        assert!(
            doc.contains(code.trim_end()),
            "docs/webhooks.md does not show {file}'s verify as it is:\n{code}"
        );
    }
}
