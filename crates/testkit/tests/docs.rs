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
