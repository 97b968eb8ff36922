//! Test fixtures on real components: an OpenBao dev server (started once per test process),
//! a fresh PostgreSQL database per test (cloned from a migrated template), a Redis ACL user
//! and key prefix per test, and helpers that run the services in-process on random
//! loopback ports with real mTLS.
//!
//! Environment (all optional): `SAKUGA_BAO_BIN` (the `bao` binary; default
//! `<workspace>/.tools/bin/bao`), `SAKUGA_TEST_VAULT_ADDR` + `SAKUGA_TEST_VAULT_TOKEN` (use a
//! running Vault instead of starting one), `SAKUGA_TEST_DATABASE_URL` (a role that may
//! create databases; default `postgres://postgres@127.0.0.1:5432/postgres`),
//! `SAKUGA_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`), `TEST_LOG=1` for logs.

#![allow(clippy::missing_panics_doc, clippy::unwrap_used)]

mod bao;
pub mod comfy;
pub mod otlp;
mod pg;
pub mod ports;
pub mod process;
mod services;
pub mod tls_proxy;
mod unique;
pub mod weed;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use sakuga_mesh::{
    config::{DatabaseConfig, RedisConfig, ServerConfig, TlsConfig, VaultAuth, VaultConfig},
    tls::MeshTls,
    vault::Vault,
};
use tempfile::TempDir;
use unique::random_suffix;

pub use process::{ProcessConfig, ServiceProcess};
pub use services::{
    Spawned, auth_config, generator_config, organizer_config, scheduler_config, spawn_auth, spawn_generator,
    spawn_organizer, spawn_organizer_with_faults, spawn_scheduler, test_rate_limits,
};

/// Logs to stderr when `TEST_LOG=1`.
pub fn init_logging() {
    if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
            )
            .with_test_writer()
            .try_init();
    }
}

/// `127.0.0.1:0`: a loopback address whose port the system picks when it is bound.
pub(crate) fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Everything one test needs: its own database, Redis user and prefix, Vault paths and a
/// scratch folder. Call [`TestEnv::cleanup`] at the end (leftovers of a failed test are
/// swept by later runs).
#[derive(Debug)]
pub struct TestEnv {
    /// Unique id of this test.
    pub id: String,
    /// Vault address.
    pub vault_addr: String,
    /// File holding a Vault token.
    pub token_file: PathBuf,
    /// PKI mount shared by this test process.
    pub pki_mount: String,
    /// KV paths holding this test's credentials.
    pub db_secret: String,
    /// KV path of the Redis credentials.
    pub redis_secret: String,
    /// Database name.
    pub db_name: String,
    /// Redis key prefix.
    pub redis_prefix: String,
    redis_user: String,
    /// Users made by [`TestEnv::redis_as`], removed by cleanup.
    service_redis_users: std::sync::Mutex<Vec<String>>,
    /// KV path of the auth signing keys.
    pub signing_secret: String,
    /// KV path of the bootstrap admin.
    pub admin_secret: String,
    /// KV path of the key that seals webhook secrets.
    pub webhook_key_secret: String,
    /// The bootstrap admin's password.
    pub admin_password: String,
    /// Scratch folder (storage roots live here).
    pub dir: TempDir,
    pg: pg::Admin,
}

impl TestEnv {
    /// Creates a fresh environment (OpenBao started on first use in this process).
    pub async fn new() -> anyhow::Result<Self> {
        init_logging();
        sakuga_mesh::tls::install_crypto_provider();
        let id = random_suffix();
        let bao = bao::shared().await?;
        let dir = tempfile::tempdir()?;
        let token_file = dir.path().join("vault-token");
        std::fs::write(&token_file, &bao.token)?;
        let pg = pg::Admin::from_env()?;
        let db_name = pg.create_test_database(&id).await?;
        let (redis_user, redis_password, redis_prefix) = pg::create_redis_user(&id).await?;
        let root = bao.client()?;
        let db_secret = format!("sakuga-test/{id}/database");
        let redis_secret = format!("sakuga-test/{id}/redis");
        vaultrs::kv2::set(&root, "secret", &db_secret, &pg.credentials()).await?;
        let mut redis_creds = std::collections::HashMap::new();
        redis_creds.insert("username", redis_user.clone());
        redis_creds.insert("password", redis_password);
        vaultrs::kv2::set(&root, "secret", &redis_secret, &redis_creds).await?;
        let signing_secret = format!("sakuga-test/{id}/auth/signing");
        vaultrs::kv2::set(&root, "secret", &signing_secret, &signing_keys(&["k1", "k2"], "k2")?).await?;
        let webhook_key_secret = format!("sakuga-test/{id}/scheduler/webhooks");
        let mut webhook_key = std::collections::HashMap::new();
        let mut key = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        webhook_key
            .insert("key", base64::engine::Engine::encode(&base64::engine::general_purpose::STANDARD, key));
        vaultrs::kv2::set(&root, "secret", &webhook_key_secret, &webhook_key).await?;
        let admin_secret = format!("sakuga-test/{id}/auth/bootstrap-admin");
        let admin_password = format!("admin-{}", uuid::Uuid::new_v4().simple());
        let mut admin = std::collections::HashMap::new();
        admin.insert("username", "admin".to_owned());
        admin.insert("password", admin_password.clone());
        vaultrs::kv2::set(&root, "secret", &admin_secret, &admin).await?;
        Ok(Self {
            signing_secret,
            webhook_key_secret,
            admin_secret,
            admin_password,
            id,
            vault_addr: bao.addr.clone(),
            token_file,
            pki_mount: bao.pki_mount.clone(),
            db_secret,
            redis_secret,
            db_name,
            redis_prefix,
            redis_user,
            service_redis_users: std::sync::Mutex::default(),
            dir,
            pg,
        })
    }

    /// Vault settings for a service of this environment (token auth).
    pub fn vault_config(&self) -> VaultConfig {
        VaultConfig {
            addr: self.vault_addr.clone(),
            auth: VaultAuth::Token,
            token_file: Some(self.token_file.clone()),
            pki_mount: self.pki_mount.clone(),
            connect_attempts: 2,
            backoff_initial: Duration::from_millis(50),
            ..VaultConfig::default()
        }
    }

    /// `[server]` settings for a service of this environment: loopback ports picked by the
    /// system, token auth to this environment's Vault, a 2 s shutdown grace.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            listen: loopback(),
            metrics_listen: Some(loopback()),
            vault: self.vault_config(),
            tls: self.tls_config(),
            shutdown_grace: Duration::from_secs(2),
            ..ServerConfig::default()
        }
    }

    /// Database settings.
    pub fn database_config(&self) -> DatabaseConfig {
        DatabaseConfig {
            host: self.pg.host.clone(),
            port: self.pg.port,
            dbname: self.db_name.clone(),
            vault_path: self.db_secret.clone(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
        }
    }

    /// Redis settings.
    pub fn redis_config(&self) -> RedisConfig {
        let (host, port) = pg::redis_host_port();
        RedisConfig {
            host,
            port,
            vault_path: self.redis_secret.clone(),
            key_prefix: self.redis_prefix.clone(),
        }
    }

    /// TLS names (loopback).
    pub fn tls_config(&self) -> TlsConfig {
        TlsConfig::default()
    }

    /// A mesh identity issued by the test PKI: a service's (`generator`) from that
    /// service's own PKI role, anyone else's (`operator`) a client-only certificate from
    /// the people's role, as [`TestEnv::user_identity`].
    pub async fn identity(&self, name: &str) -> anyhow::Result<Arc<MeshTls>> {
        if !bao::SERVICES.contains(&name) {
            return self.user_identity(name).await;
        }
        let vault = Vault::connect(&self.vault_config()).await?;
        Ok(Arc::new(MeshTls::issue(&vault, name, &self.tls_config()).await?))
    }

    /// A person's client certificate from the client-only role: CN `<name>.user.sakuga`,
    /// URI `spiffe://sakuga/user/<name>`.
    pub async fn user_identity(&self, name: &str) -> anyhow::Result<Arc<MeshTls>> {
        let uri = format!("spiffe://{}/user/{name}", sakuga_mesh::identity::TRUST_DOMAIN);
        let issued = self
            .issue_with_role(sakuga_mesh::config::USER_PKI_ROLE, &format!("{name}.user.sakuga"), &[], &uri)
            .await?;
        Ok(Arc::new(MeshTls::from_pem(name, &issued.chain_pem, &issued.key_pem, &issued.ca_pem)?))
    }

    /// Asks the test PKI (as root, so only the role's own rules apply) for a certificate
    /// from `role`; Vault's refusal is the error.
    pub async fn issue_with_role(
        &self,
        role: &str,
        common_name: &str,
        alt_names: &[&str],
        uri_san: &str,
    ) -> anyhow::Result<IssuedPem> {
        let root = bao::shared().await?.client()?;
        let mut req = vaultrs::api::pki::requests::GenerateCertificateRequest::builder();
        req.common_name(common_name).alt_names(alt_names.join(",")).uri_sans(uri_san).ttl("1h");
        let r = vaultrs::pki::cert::generate(&root, &self.pki_mount, role, Some(&mut req))
            .await
            .map_err(|e| anyhow::anyhow!("issuing from {role}: {e:?}"))?;
        let chain = r.ca_chain.clone().unwrap_or_else(|| vec![r.issuing_ca.clone()]);
        let mut chain_pem = r.certificate.trim_end().to_owned();
        for ca in chain {
            chain_pem.push('\n');
            chain_pem.push_str(ca.trim_end());
        }
        chain_pem.push('\n');
        Ok(IssuedPem { chain_pem, key_pem: r.private_key, ca_pem: r.issuing_ca })
    }

    /// Vault settings with which `service` logs in through its own AppRole of this test
    /// process (its policy may issue only from the service's own PKI role).
    pub async fn service_vault_config(&self, service: &str) -> anyhow::Result<VaultConfig> {
        let bao = bao::shared().await?;
        let root = bao.client()?;
        let role_id = vaultrs::auth::approle::role::read_id(&root, &bao.approle_mount, service)
            .await
            .map_err(|e| anyhow::anyhow!("role id of {service}: {e:?}"))?
            .role_id;
        let secret_id =
            vaultrs::auth::approle::role::secret::generate(&root, &bao.approle_mount, service, None)
                .await
                .map_err(|e| anyhow::anyhow!("secret id of {service}: {e:?}"))?
                .secret_id;
        let role_id_file = self.dir.path().join(format!("{service}-role-id"));
        let secret_id_file = self.dir.path().join(format!("{service}-secret-id"));
        std::fs::write(&role_id_file, role_id)?;
        std::fs::write(&secret_id_file, secret_id)?;
        Ok(VaultConfig {
            auth: VaultAuth::Approle,
            token_file: None,
            role_id_file: Some(role_id_file),
            secret_id_file: Some(secret_id_file),
            approle_mount: bao.approle_mount.clone(),
            ..self.vault_config()
        })
    }

    /// A connection to this test's database (as the test role).
    pub async fn db(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.pg.connect(&self.db_name).await
    }

    /// A connection to this test's database whose privileges are those of the group role
    /// `role` (`sakuga_organizer`, ...): `SET ROLE` on a connection of the test role.
    pub async fn db_as(&self, role: &str) -> anyhow::Result<tokio_postgres::Client> {
        anyhow::ensure!(role.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "bad role name {role:?}");
        let client = self.pg.connect(&self.db_name).await?;
        client.batch_execute(&format!("SET ROLE {role}")).await?;
        Ok(client)
    }

    /// A Redis connection as `service`'s own ACL user, with the rules `make up` gives it
    /// (deploy/redis/acl.conf), on this test's key prefix.
    pub async fn redis_as(&self, service: &str) -> anyhow::Result<sakuga_mesh::redis::Redis> {
        let (user, password) = pg::create_service_redis_user(&self.id, service, &self.redis_prefix).await?;
        self.service_redis_users.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(user.clone());
        let creds = sakuga_mesh::vault::Credentials {
            username: Some(user),
            password: Some(secrecy::SecretString::from(password)),
        };
        Ok(sakuga_mesh::redis::Redis::connect(&self.redis_config(), &creds).await?)
    }

    /// Writes a KV secret under this test's Vault path; returns the path.
    pub async fn put_secret(
        &self,
        name: &str,
        fields: &std::collections::HashMap<&str, String>,
    ) -> anyhow::Result<String> {
        let root = bao::shared().await?.client()?;
        let path = format!("sakuga-test/{}/{name}", self.id);
        vaultrs::kv2::set(&root, "secret", &path, fields).await?;
        Ok(path)
    }

    /// Enables a Kubernetes auth mount for this test whose token reviews go to `host` (a
    /// stand-in for the Kubernetes API), with role `role` bound to the service account
    /// `namespace/account`; returns the mount.
    pub async fn kubernetes_auth(
        &self,
        host: &str,
        role: &str,
        namespace: &str,
        account: &str,
    ) -> anyhow::Result<String> {
        let root = bao::shared().await?.client()?;
        let mount = format!("k8s-{}", self.id);
        let why = |step: &'static str| move |e: vaultrs::error::ClientError| anyhow::anyhow!("{step}: {e:?}");
        vaultrs::sys::auth::enable(&root, &mount, "kubernetes", None).await.map_err(why("enable"))?;
        // Required by the method; unused with an http:// host.
        let ca = rcgen::generate_simple_self_signed(vec!["kubernetes.default.svc".to_owned()])?.cert.pem();
        vaultrs::auth::kubernetes::configure(
            &root,
            &mount,
            host,
            Some(
                vaultrs::api::auth::kubernetes::requests::ConfigureKubernetesAuthRequest::builder()
                    .disable_local_ca_jwt(true)
                    .disable_iss_validation(true)
                    .kubernetes_ca_cert(ca),
            ),
        )
        .await
        .map_err(why("configure"))?;
        vaultrs::auth::kubernetes::role::create(
            &root,
            &mount,
            role,
            Some(
                vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest::builder()
                    .bound_service_account_names(vec![account.to_owned()])
                    .bound_service_account_namespaces(vec![namespace.to_owned()])
                    .token_policies(vec!["default".to_owned()]),
            ),
        )
        .await
        .map_err(why("role"))?;
        Ok(mount)
    }

    /// The private key (PKCS#8 PEM) stored under `kid` in this test's signing secret.
    pub async fn signing_key_pem(&self, kid: &str) -> anyhow::Result<String> {
        let root = bao::shared().await?.client()?;
        let mut keys: std::collections::HashMap<String, String> =
            vaultrs::kv2::read(&root, "secret", &self.signing_secret).await?;
        keys.remove(kid).ok_or_else(|| anyhow::anyhow!("no signing key {kid}"))
    }

    /// Drops the database and the Redis user.
    pub async fn cleanup(self) {
        let _ = self.pg.drop_database(&self.db_name).await;
        let _ = pg::delete_redis_user(&self.redis_user).await;
        let users = std::mem::take(
            &mut *self.service_redis_users.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for user in users {
            let _ = pg::delete_redis_user(&user).await;
        }
    }
}

/// A certificate straight from the test PKI, PEM.
#[derive(Debug, Clone)]
pub struct IssuedPem {
    /// Leaf followed by the CA chain.
    pub chain_pem: String,
    /// Private key.
    pub key_pem: String,
    /// The issuing CA.
    pub ca_pem: String,
}

/// A KV secret of Ed25519 signing keys (`active` plus one PKCS#8 PEM per key id).
pub fn signing_keys(
    kids: &[&str],
    active: &str,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    use ed25519_dalek::pkcs8::{EncodePrivateKey as _, spki::der::pem::LineEnding};
    let mut m = std::collections::HashMap::new();
    m.insert("active".to_owned(), active.to_owned());
    for kid in kids {
        let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        m.insert((*kid).to_owned(), key.to_pkcs8_pem(LineEnding::LF)?.to_string());
    }
    Ok(m)
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Debug, Clone)]
pub struct Bearer(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    /// For a token or API key.
    pub fn new(token: &str) -> Self {
        Self(format!("Bearer {token}").parse().unwrap())
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A channel whose calls carry a bearer credential.
pub type Authed = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

/// Logs in over `channel` (to the auth service) and returns the access token.
pub async fn login(
    channel: tonic::transport::Channel,
    username: &str,
    password: &str,
) -> anyhow::Result<String> {
    let mut auth = sakuga_proto::v1::auth_service_client::AuthServiceClient::new(channel);
    let resp = auth
        .login(sakuga_proto::v1::LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        })
        .await?
        .into_inner();
    Ok(resp.tokens.ok_or_else(|| anyhow::anyhow!("login returned no tokens"))?.access_token)
}

/// A client identity signed by a CA the mesh does not trust, for refusal tests.
pub fn foreign_identity(service: &str) -> anyhow::Result<Arc<MeshTls>> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params.subject_alt_names.push(SanType::URI(sakuga_mesh::identity::spiffe_id(service).try_into()?));
    params.subject_alt_names.push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let cert = params.signed_by(&key, &issuer)?;
    // It trusts its own CA, so the only thing that can fail is the server refusing it.
    Ok(Arc::new(MeshTls::from_pem(service, &cert.pem(), &key.serialize_pem(), &ca_cert.pem())?))
}
