//! Vault (OpenBao) client on vaultrs: log in with a token or AppRole, read KV v2 secrets
//! and issue the service's certificate from the PKI engine.
//!
//! Start-up retries with exponential backoff (backon); after the last attempt the service exits with
//! one message that names Vault and its address.

use std::{collections::HashMap, time::Duration};

use backon::{ExponentialBuilder, Retryable as _};
use secrecy::{ExposeSecret, SecretString};
use tracing::{info, warn};
use vaultrs::{
    api::pki::requests::GenerateCertificateRequest,
    client::{Client as _, VaultClient, VaultClientSettingsBuilder},
    error::ClientError,
};

use crate::{
    config::{VaultAuth, VaultConfig},
    error::MeshError,
};

/// A logged-in Vault client.
pub struct Vault {
    client: VaultClient,
    config: VaultConfig,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("addr", &self.config.addr).finish_non_exhaustive()
    }
}

/// A certificate issued by the PKI engine.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// Leaf certificate followed by the CA chain, PEM.
    pub chain_pem: String,
    /// Private key, PEM.
    pub key_pem: SecretString,
    /// The issuing CA, PEM: what this service trusts for its peers.
    pub ca_pem: String,
    /// Serial number, for logs.
    pub serial: String,
    /// Seconds since the epoch when the certificate expires.
    pub expires_at: u64,
}

/// A username/password pair read from KV.
#[derive(Clone)]
pub struct Credentials {
    /// Username; `None` when the secret has none.
    pub username: Option<String>,
    /// Password; `None` when the secret has none.
    pub password: Option<SecretString>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Reads Vault's own reason out of a vaultrs error (its `Display` hides it).
fn describe(e: &ClientError) -> String {
    match e {
        ClientError::APIError { code, errors } if errors.is_empty() => format!("status {code}"),
        ClientError::APIError { code, errors } => format!("status {code}: {}", errors.join("; ")),
        ClientError::RestClientError { source } => {
            // The transport's reason (connection refused, timeout) is deep in the chain.
            let mut parts = vec![format!("request failed: {source}")];
            let mut cause = std::error::Error::source(source);
            while let Some(c) = cause {
                parts.push(c.to_string());
                cause = c.source();
            }
            parts.join(": ")
        }
        other => other.to_string(),
    }
}

fn read_file_trimmed(field: &str, path: &std::path::Path) -> Result<SecretString, MeshError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| MeshError::Config(format!("{field}: cannot read {}: {e}", path.display())))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(MeshError::Config(format!("{field}: {} is empty", path.display())));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

impl Vault {
    /// Logs in, retrying with exponential backoff while Vault is unreachable or sealed.
    /// Gives up after `connect_attempts` with an error that names Vault and its address.
    pub async fn connect(config: &VaultConfig) -> Result<Self, MeshError> {
        config.validate()?;
        let delays = ExponentialBuilder::new()
            .with_min_delay(config.backoff_initial)
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(usize::try_from(config.connect_attempts.saturating_sub(1)).unwrap_or(usize::MAX));
        let mut attempt = 0_u32;
        let login = || {
            attempt += 1;
            let attempt = attempt;
            async move {
                let result = Self::login(config).await;
                match &result {
                    Ok(_) => info!(addr = %config.addr, attempt, "logged in to vault"),
                    Err(LoginError::Unreachable(msg)) => {
                        warn!(addr = %config.addr, attempt, error = %msg, "vault not reachable, retrying");
                    }
                    Err(LoginError::Refused(_) | LoginError::Local(_)) => {}
                }
                result
            }
        };
        // A refused login will not get better by retrying.
        match login.retry(delays).when(|e| matches!(e, LoginError::Unreachable(_))).await {
            Ok(vault) => Ok(vault),
            Err(LoginError::Refused(msg)) => {
                Err(MeshError::Vault(format!("login to vault at {} refused: {msg}", config.addr)))
            }
            Err(LoginError::Local(e)) => Err(e),
            Err(LoginError::Unreachable(last)) => Err(MeshError::Vault(format!(
                "vault at {} unreachable after {} attempts: {last}",
                config.addr, config.connect_attempts
            ))),
        }
    }

    async fn login(config: &VaultConfig) -> Result<Self, LoginError> {
        let client = |token: &str| {
            VaultClientSettingsBuilder::default()
                .address(&config.addr)
                .token(token)
                .timeout(Some(Duration::from_secs(10)))
                .build()
                .map_err(|e| LoginError::Local(MeshError::Config(format!("vault: {e}"))))
                .and_then(|s| {
                    VaultClient::new(s).map_err(|e| LoginError::Local(MeshError::Vault(describe(&e))))
                })
        };
        let vault = match config.auth {
            VaultAuth::Token => {
                let path = config.token_file.as_deref().unwrap_or(std::path::Path::new(""));
                let token = read_file_trimmed("vault.token_file", path).map_err(LoginError::Local)?;
                let c = client(token.expose_secret())?;
                c.lookup().await.map_err(|e| classify(&e))?;
                c
            }
            VaultAuth::Kubernetes => {
                let jwt = read_file_trimmed("vault.kubernetes_token_file", &config.kubernetes_token_file)
                    .map_err(LoginError::Local)?;
                let mut c = client("")?;
                let auth = vaultrs::auth::kubernetes::login(
                    &c,
                    &config.kubernetes_mount,
                    &config.kubernetes_role,
                    jwt.expose_secret(),
                )
                .await
                .map_err(|e| classify(&e))?;
                c.set_token(&auth.client_token);
                c
            }
            VaultAuth::Approle => {
                let empty = std::path::Path::new("");
                let role_id =
                    read_file_trimmed("vault.role_id_file", config.role_id_file.as_deref().unwrap_or(empty))
                        .map_err(LoginError::Local)?;
                let secret_id = read_file_trimmed(
                    "vault.secret_id_file",
                    config.secret_id_file.as_deref().unwrap_or(empty),
                )
                .map_err(LoginError::Local)?;
                let mut c = client("")?;
                let auth = vaultrs::auth::approle::login(
                    &c,
                    &config.approle_mount,
                    role_id.expose_secret(),
                    secret_id.expose_secret(),
                )
                .await
                .map_err(|e| classify(&e))?;
                c.set_token(&auth.client_token);
                c
            }
        };
        Ok(Self { client: vault, config: config.clone() })
    }

    /// Logs in again (AppRole tokens expire; certificate renewal calls this first).
    pub async fn relogin(&mut self) -> Result<(), MeshError> {
        let fresh = Self::connect(&self.config).await?;
        self.client = fresh.client;
        Ok(())
    }

    /// Reads a KV v2 secret as string fields.
    pub async fn read_kv(&self, path: &str) -> Result<HashMap<String, String>, MeshError> {
        vaultrs::kv2::read::<HashMap<String, String>>(&self.client, &self.config.kv_mount, path)
            .await
            .map_err(|e| {
                MeshError::Vault(format!("reading secret {}/{path}: {}", self.config.kv_mount, describe(&e)))
            })
    }

    /// Reads a KV v2 secret that may not exist (`None` when Vault answers 404).
    pub async fn read_kv_optional(&self, path: &str) -> Result<Option<HashMap<String, String>>, MeshError> {
        match vaultrs::kv2::read::<HashMap<String, String>>(&self.client, &self.config.kv_mount, path).await {
            Ok(v) => Ok(Some(v)),
            Err(ClientError::APIError { code: 404, .. }) => Ok(None),
            Err(e) => Err(MeshError::Vault(format!(
                "reading secret {}/{path}: {}",
                self.config.kv_mount,
                describe(&e)
            ))),
        }
    }

    /// Reads `username` and `password` from a KV v2 secret; both are optional.
    pub async fn read_credentials(&self, path: &str) -> Result<Credentials, MeshError> {
        let mut fields = self.read_kv(path).await?;
        Ok(Credentials {
            username: fields.remove("username").filter(|s| !s.is_empty()),
            password: fields.remove("password").filter(|s| !s.is_empty()).map(SecretString::from),
        })
    }

    /// Issues a certificate for `service` from the PKI engine under the service's own role
    /// (`vault.pki_role`, by default `sakuga-<service>`): CN `<service>.sakuga`, URI SAN
    /// `spiffe://sakuga/<service>` (the identity peers authorize), plus the given DNS and IP
    /// SANs. The role allows only that service's names, so a name it does not list is
    /// refused by Vault.
    pub async fn issue_certificate(
        &self,
        service: &str,
        dns_names: &[String],
        ip_addresses: &[String],
    ) -> Result<IssuedCert, MeshError> {
        let mut req = GenerateCertificateRequest::builder();
        let mut alt = vec![format!("{service}.sakuga")];
        alt.extend(dns_names.iter().cloned());
        req.common_name(format!("{service}.sakuga"))
            .alt_names(alt.join(","))
            .ip_sans(ip_addresses.join(","))
            .uri_sans(crate::identity::spiffe_id(service))
            .ttl(format!("{}s", self.config.cert_ttl.as_secs()));
        let role = self.config.pki_role_for(service);
        let r = vaultrs::pki::cert::generate(&self.client, &self.config.pki_mount, &role, Some(&mut req))
            .await
            .map_err(|e| {
                MeshError::Vault(format!("issuing certificate for {service} (role {role}): {}", describe(&e)))
            })?;
        let mut chain_pem = r.certificate.trim_end().to_owned();
        chain_pem.push('\n');
        // Behind an intermediate CA the leaf alone does not verify: send the chain too.
        for ca in r.ca_chain.unwrap_or_default() {
            chain_pem.push_str(ca.trim_end());
            chain_pem.push('\n');
        }
        Ok(IssuedCert {
            chain_pem,
            key_pem: SecretString::from(r.private_key),
            ca_pem: r.issuing_ca,
            serial: r.serial_number,
            expires_at: r.expiration.unwrap_or(0),
        })
    }

    /// The address, for messages.
    pub fn addr(&self) -> &str {
        &self.config.addr
    }
}

enum LoginError {
    Unreachable(String),
    Refused(String),
    Local(MeshError),
}

fn classify(e: &ClientError) -> LoginError {
    match e {
        // Sealed or standby Vault answers 503; keep trying.
        ClientError::APIError { code, .. } if *code >= 500 => LoginError::Unreachable(describe(e)),
        ClientError::APIError { .. } => LoginError::Refused(describe(e)),
        _ => LoginError::Unreachable(describe(e)),
    }
}
