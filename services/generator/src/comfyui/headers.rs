//! Extra headers per ComfyUI server (`[[comfyui.headers]]`), typically the bearer token of
//! a reverse proxy in front of ComfyUI. Their values are read from Vault at start-up and
//! exist only here and in the clients: marked sensitive (so `http`'s `Debug` prints
//! `Sensitive`), never in an error or a log line, which name the setting instead.

use std::collections::BTreeMap;

use reqwest::{
    Url,
    header::{HeaderMap, HeaderName, HeaderValue},
};
use sakuga_mesh::vault::Vault;
use tracing::warn;

use super::{
    ComfyConfig,
    error::{ComfyError, setting},
};

/// The extra headers of each server, with their values. `Debug` shows header names only.
#[derive(Clone, Default)]
pub struct ServerHeaders(BTreeMap<Url, HeaderMap>);

impl std::fmt::Debug for ServerHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(url, map)| (url.as_str(), map.keys().collect::<Vec<_>>())))
            .finish()
    }
}

impl ServerHeaders {
    /// Reads the value of every `[[comfyui.headers]]` entry from Vault (`vault_path`, key
    /// `vault_key`, after `prefix`). The settings are checked first; a secret or key Vault
    /// does not have is an error naming the setting, never showing a value.
    pub async fn resolve(config: &ComfyConfig, vault: &Vault) -> Result<Self, ComfyError> {
        let mut headers = Self::default();
        for (url, h) in config.header_settings()? {
            let which = format!("{} for {url}", h.name);
            if url.scheme() == "http" {
                warn!(url = %url, header = %h.name, "a header from Vault goes to a plain http:// server, unencrypted");
            }
            let secret = vault
                .read_kv(&h.vault_path)
                .await
                .map_err(|e| setting("comfyui.headers.vault_path", format!("{which}: {e}")))?;
            let value = secret.get(&h.vault_key).filter(|v| !v.is_empty()).ok_or_else(|| {
                setting(
                    "comfyui.headers.vault_key",
                    format!("{which}: secret {:?} has no (non-empty) key {:?}", h.vault_path, h.vault_key),
                )
            })?;
            headers.insert(&url, &h.name, &format!("{}{value}", h.prefix)).map_err(|e| match e {
                ComfyError::Setting { reason, .. } => {
                    setting("comfyui.headers.vault_key", format!("{which}: the value in Vault {reason}"))
                }
                other => other,
            })?;
        }
        Ok(headers)
    }

    /// Adds header `name: value` for the server at `url`, marked sensitive. A bad name or
    /// value is an error naming the setting (`comfyui.headers.name`, `.vault_key`) without
    /// showing the value.
    pub fn insert(&mut self, url: &Url, name: &str, value: &str) -> Result<(), ComfyError> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| setting("comfyui.headers.name", format!("{name:?} is not a valid header name")))?;
        let mut value = HeaderValue::from_str(value).map_err(|_| {
            setting(
                "comfyui.headers.vault_key",
                "is not a valid header value (control characters, a line break or non-ASCII)",
            )
        })?;
        value.set_sensitive(true);
        self.0.entry(url.clone()).or_default().insert(name, value);
        Ok(())
    }

    /// Whether header `name` is set for `url`.
    pub fn has(&self, url: &Url, name: &str) -> bool {
        self.0.get(url).is_some_and(|map| map.contains_key(name))
    }

    /// The headers sent to the server at `url` (none when it has none).
    pub(super) fn for_server(&self, url: &Url) -> HeaderMap {
        self.0.get(url).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_marked_sensitive_and_never_shown() {
        let url = Url::parse("https://gpu-1.example:8443").unwrap();
        let mut h = ServerHeaders::default();
        h.insert(&url, "Authorization", "Bearer s3cr3t-token").unwrap();
        assert!(h.has(&url, "authorization"));
        let map = h.for_server(&url);
        assert!(map["authorization"].is_sensitive());
        assert!(!format!("{h:?}").contains("s3cr3t"), "{h:?}");
        assert!(!format!("{map:?}").contains("s3cr3t"), "{map:?}");
        let err = h.insert(&url, "X-Token", "bad\nvalue-s3cr3t").unwrap_err().to_string();
        assert!(err.starts_with("comfyui.headers.vault_key:") && !err.contains("s3cr3t"), "{err}");
        let err = h.insert(&url, "bad name", "v").unwrap_err().to_string();
        assert!(err.starts_with("comfyui.headers.name:"), "{err}");
        assert!(h.for_server(&Url::parse("http://other:8188").unwrap()).is_empty());
    }
}
