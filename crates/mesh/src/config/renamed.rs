//! Keys that were renamed. An old key keeps working: its value is moved (and converted,
//! for the `_ms`/`_secs` numbers that became duration strings such as `"10s"`) to its new
//! key before the configuration is read, and a warning names the new key. Giving both the
//! old and the new key is an error naming both.

use figment::value::{Dict, Value};

use crate::error::MeshError;

/// One renamed key: dotted paths in the current layout (a key inside a moved section is
/// listed under its new section, and the section's move is listed before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renamed {
    /// The key (or section) moved; its value means the same.
    Moved {
        /// The old dotted path.
        from: &'static str,
        /// The new dotted path.
        to: &'static str,
    },
    /// A whole number of milliseconds became a duration.
    Millis {
        /// The old dotted path.
        from: &'static str,
        /// The new dotted path.
        to: &'static str,
    },
    /// A whole number of seconds became a duration.
    Secs {
        /// The old dotted path.
        from: &'static str,
        /// The new dotted path.
        to: &'static str,
    },
}

impl Renamed {
    fn paths(self) -> (&'static str, &'static str) {
        match self {
            Self::Moved { from, to } | Self::Millis { from, to } | Self::Secs { from, to } => (from, to),
        }
    }

    /// The value under the new key.
    fn convert(self, value: Value) -> Result<Value, MeshError> {
        let (unit, suffix) = match self {
            Self::Moved { .. } => return Ok(value),
            Self::Millis { .. } => ("milliseconds", "ms"),
            Self::Secs { .. } => ("seconds", "s"),
        };
        let (from, to) = self.paths();
        let number = match &value {
            // TOML integers are signed; a negative one is no duration.
            Value::Num(_, n) => n.to_u128().or_else(|| n.to_i128().and_then(|i| u128::try_from(i).ok())),
            Value::String(_, s) => s.trim().parse::<u128>().ok(),
            _ => None,
        };
        number.map(|n| Value::from(format!("{n}{suffix}"))).ok_or_else(|| {
            MeshError::Config(format!(
                "{from}: expected a whole number of {unit}; this key is now `{to}`, a duration such as \"10{suffix}\""
            ))
        })
    }
}

/// Applies `renames` in order to the keys a file or the environment gave; returns the new
/// keys that were filled from old ones (empty: nothing was renamed).
pub(crate) fn apply(given: &mut Dict, renames: &[Renamed]) -> Result<Vec<Renamed>, MeshError> {
    let mut applied = Vec::new();
    for rename in renames {
        let (from, to) = rename.paths();
        let Some(value) = take(given, from) else { continue };
        if get(given, to).is_some() {
            return Err(MeshError::Config(format!(
                "`{from}` and `{to}` are both set: `{from}` is the old name of `{to}`; keep only `{to}`"
            )));
        }
        put(given, to, rename.convert(value)?)?;
        applied.push(*rename);
    }
    Ok(applied)
}

/// A line for the log about `rename`.
pub(crate) fn warning(rename: Renamed) -> String {
    let (from, to) = rename.paths();
    match rename {
        Renamed::Moved { .. } => format!("config key `{from}` is deprecated: it is now `{to}`"),
        Renamed::Millis { .. } | Renamed::Secs { .. } => {
            format!("config key `{from}` is deprecated: it is now `{to}`, a duration such as \"10s\"")
        }
    }
}

fn get<'a>(dict: &'a Dict, path: &str) -> Option<&'a Value> {
    let (head, rest) = split(path);
    let value = dict.get(head)?;
    match (rest, value) {
        (None, v) => Some(v),
        (Some(rest), Value::Dict(_, inner)) => get(inner, rest),
        (Some(_), _) => None,
    }
}

fn take(dict: &mut Dict, path: &str) -> Option<Value> {
    let (head, rest) = split(path);
    match rest {
        None => dict.remove(head),
        Some(rest) => match dict.get_mut(head)? {
            Value::Dict(_, inner) => take(inner, rest),
            _ => None,
        },
    }
}

fn put(dict: &mut Dict, path: &str, value: Value) -> Result<(), MeshError> {
    let (head, rest) = split(path);
    let Some(rest) = rest else {
        dict.insert(head.to_owned(), value);
        return Ok(());
    };
    let slot = dict.entry(head.to_owned()).or_insert_with(|| Value::from(Dict::new()));
    match slot {
        Value::Dict(_, inner) => put(inner, rest, value),
        _ => Err(MeshError::Config(format!("`{head}` must be a table, to hold `{rest}`"))),
    }
}

fn split(path: &str) -> (&str, Option<&str>) {
    match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(toml: &str) -> Dict {
        figment::Figment::from(figment::providers::Serialized::defaults(toml.parse::<toml::Table>().unwrap()))
            .extract()
            .unwrap()
    }

    const RENAMES: &[Renamed] = &[
        Renamed::Moved { from: "vault", to: "server.vault" },
        Renamed::Secs { from: "server.vault.cert_ttl_secs", to: "server.vault.cert_ttl" },
        Renamed::Millis { from: "lease_ttl_ms", to: "lease_ttl" },
    ];

    #[test]
    fn old_keys_move_and_numbers_become_durations() {
        let mut d = dict("lease_ttl_ms = 30000\n[vault]\naddr = \"http://v:1\"\ncert_ttl_secs = 60\n");
        let applied = apply(&mut d, RENAMES).unwrap();
        assert_eq!(applied.len(), 3);
        assert_eq!(get(&d, "lease_ttl").and_then(Value::as_str), Some("30000ms"));
        assert_eq!(get(&d, "server.vault.cert_ttl").and_then(Value::as_str), Some("60s"));
        assert_eq!(get(&d, "server.vault.addr").and_then(Value::as_str), Some("http://v:1"));
        assert!(get(&d, "vault").is_none() && get(&d, "lease_ttl_ms").is_none());
    }

    #[test]
    fn new_keys_are_left_alone() {
        let mut d = dict("lease_ttl = \"30s\"\n[server.vault]\ncert_ttl = \"1m\"\n");
        let before = d.clone();
        assert!(apply(&mut d, RENAMES).unwrap().is_empty());
        assert_eq!(d, before);
    }

    #[test]
    fn both_names_at_once_is_an_error_naming_both() {
        let mut d = dict("lease_ttl_ms = 30000\nlease_ttl = \"30s\"\n");
        let err = apply(&mut d, RENAMES).unwrap_err().to_string();
        assert!(err.contains("`lease_ttl_ms` and `lease_ttl` are both set"), "{err}");
    }

    #[test]
    fn an_old_number_key_with_a_duration_string_names_the_new_key() {
        let mut d = dict("lease_ttl_ms = \"30s\"\n");
        let err = apply(&mut d, RENAMES).unwrap_err().to_string();
        assert!(err.contains("lease_ttl_ms: expected a whole number of milliseconds"), "{err}");
        assert!(err.contains("now `lease_ttl`"), "{err}");
    }

    #[test]
    fn a_number_from_the_environment_as_text_converts_too() {
        let mut d = Dict::new();
        d.insert("lease_ttl_ms".to_owned(), Value::from("1500".to_owned()));
        apply(&mut d, RENAMES).unwrap();
        assert_eq!(get(&d, "lease_ttl").and_then(Value::as_str), Some("1500ms"));
    }
}
