//! One OpenBao dev server per test process (or a running Vault named by the environment),
//! with a PKI mount of its own.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::OnceCell;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};

pub(crate) struct Bao {
    pub(crate) addr: String,
    pub(crate) token: String,
    pub(crate) pki_mount: String,
    /// The AppRole mount holding one role per service.
    pub(crate) approle_mount: String,
}

impl Bao {
    pub(crate) fn client(&self) -> anyhow::Result<VaultClient> {
        Ok(VaultClient::new(
            VaultClientSettingsBuilder::default().address(&self.addr).token(&self.token).build()?,
        )?)
    }
}

static SHARED: OnceCell<Bao> = OnceCell::const_new();
/// The watchdog shell holding the dev server; its stdin closes when this process exits,
/// which makes it kill the server.
static WATCHDOG: Mutex<Option<Child>> = Mutex::new(None);

fn bao_bin() -> PathBuf {
    std::env::var_os("SAKUGA_BAO_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/bao"), PathBuf::from)
}

fn free_port() -> anyhow::Result<u16> {
    // Below the ephemeral range: the child binds it a moment after it is picked.
    let [port] = crate::ports::free_ports::<1>()?;
    Ok(port)
}

/// Starts a dev server that dies with this process.
fn start_dev_server() -> anyhow::Result<(String, String)> {
    let bin = bao_bin();
    anyhow::ensure!(
        bin.exists(),
        "no OpenBao binary at {} (run `make tools` or set SAKUGA_BAO_BIN)",
        bin.display()
    );
    let port = free_port()?;
    let token = uuid::Uuid::new_v4().to_string();
    let script = format!(
        "\"$0\" server -dev -dev-listen-address=127.0.0.1:{port} >/dev/null 2>&1 & child=$!; \
         read _; kill $child; wait $child"
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(&bin)
        .env("BAO_DEV_ROOT_TOKEN_ID", &token)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Keep stdin open for the life of the process.
    if let Some(stdin) = child.stdin.as_mut() {
        stdin.flush()?;
    }
    *WATCHDOG.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(child);
    Ok((format!("http://127.0.0.1:{port}"), token))
}

async fn wait_ready(client: &VaultClient, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        match client.lookup().await {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() > limit => {
                anyhow::bail!("OpenBao dev server did not come up: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The mesh services; each has its own PKI role, policy and AppRole.
pub(crate) const SERVICES: &[&str] = &["auth", "scheduler", "organizer", "generator"];

/// Kubernetes service names a service's certificate may carry besides `<service>.sakuga`
/// and `localhost` (the names the manifests in deploy/k8s use).
fn service_domains(service: &str) -> Vec<String> {
    vec![
        format!("{service}.sakuga"),
        service.to_owned(),
        format!("{service}.sakuga.svc"),
        format!("{service}.sakuga.svc.cluster.local"),
    ]
}

/// A root CA, one PKI role per service (its own names and SPIFFE id, server and client
/// use), and the client-only role for people (`spiffe://sakuga/user/*`): the same roles
/// `make up` creates.
async fn seed_pki(client: &VaultClient, mount: &str) -> anyhow::Result<()> {
    use vaultrs::api::{
        pki::requests::{GenerateRootRequest, SetRoleRequest},
        sys::requests::{EnableEngineDataConfig, EnableEngineRequest},
    };
    let mut mount_opts = EnableEngineRequest::builder();
    mount_opts.config(EnableEngineDataConfig { max_lease_ttl: Some("87600h".into()), ..Default::default() });
    vaultrs::sys::mount::enable(client, mount, "pki", Some(&mut mount_opts)).await?;
    let mut root = GenerateRootRequest::builder();
    root.common_name("sakuga-test-root").ttl("87600h").key_type("ec").key_bits(256_u64);
    vaultrs::pki::cert::ca::generate(client, mount, "internal", Some(&mut root)).await?;
    for service in SERVICES {
        let mut role = SetRoleRequest::builder();
        role.allowed_domains(service_domains(service))
            .allow_bare_domains(true)
            .allow_subdomains(false)
            .allow_glob_domains(false)
            .allow_localhost(true)
            .allow_ip_sans(true)
            .allowed_uri_sans(vec![sakuga_mesh::identity::spiffe_id(service)])
            .server_flag(true)
            .client_flag(true)
            .key_type("ec")
            .key_bits(256_u64)
            .max_ttl("72h");
        vaultrs::pki::role::set(client, mount, &sakuga_mesh::config::pki_role_of(service), Some(&mut role))
            .await?;
    }
    let mut user = SetRoleRequest::builder();
    user.allowed_domains(vec!["user.sakuga".into()])
        .allow_bare_domains(false)
        .allow_subdomains(true)
        .allow_glob_domains(false)
        .allow_localhost(false)
        .allow_ip_sans(false)
        .allowed_uri_sans(vec!["spiffe://sakuga/user/*".into()])
        .server_flag(false)
        .client_flag(true)
        .key_type("ec")
        .key_bits(256_u64)
        .max_ttl("72h");
    vaultrs::pki::role::set(client, mount, sakuga_mesh::config::USER_PKI_ROLE, Some(&mut user)).await?;
    Ok(())
}

/// Per service: a policy that may issue from its own PKI role only, and an AppRole with
/// it, under the AppRole mount `approle_mount` of this test process.
async fn seed_approles(client: &VaultClient, pki_mount: &str, approle_mount: &str) -> anyhow::Result<()> {
    use vaultrs::api::auth::approle::requests::SetAppRoleRequest;
    vaultrs::sys::auth::enable(client, approle_mount, "approle", None).await?;
    for service in SERVICES {
        let policy = format!("{pki_mount}-{service}");
        let role = sakuga_mesh::config::pki_role_of(service);
        let text = format!("path \"{pki_mount}/issue/{role}\" {{\n  capabilities = [\"update\"]\n}}\n");
        vaultrs::sys::policy::set(client, &policy, &text).await?;
        let mut approle = SetAppRoleRequest::builder();
        approle.token_policies(vec![policy]).token_ttl("1h").secret_id_ttl("0");
        vaultrs::auth::approle::role::set(client, approle_mount, service, Some(&mut approle)).await?;
    }
    Ok(())
}

pub(crate) async fn shared() -> anyhow::Result<&'static Bao> {
    SHARED
        .get_or_try_init(|| async {
            let suffix = crate::unique::random_suffix();
            let pki_mount = format!("pki-test-{suffix}");
            let approle_mount = format!("approle-test-{suffix}");
            let bao =
                match (std::env::var("SAKUGA_TEST_VAULT_ADDR"), std::env::var("SAKUGA_TEST_VAULT_TOKEN")) {
                    (Ok(addr), Ok(token)) => {
                        let bao = Bao { addr, token, pki_mount, approle_mount };
                        wait_ready(&bao.client()?, Duration::from_secs(20)).await?;
                        bao
                    }
                    _ => start_with_retries(pki_mount, approle_mount).await?,
                };
            seed_pki(&bao.client()?, &bao.pki_mount).await?;
            seed_approles(&bao.client()?, &bao.pki_mount, &bao.approle_mount).await?;
            Ok(bao)
        })
        .await
}

/// Another process may grab the port between our probe and the server's bind: try a few
/// ports before giving up.
async fn start_with_retries(pki_mount: String, approle_mount: String) -> anyhow::Result<Bao> {
    let mut last = None;
    for _ in 0..3 {
        let (addr, token) = start_dev_server()?;
        let bao = Bao { addr, token, pki_mount: pki_mount.clone(), approle_mount: approle_mount.clone() };
        match wait_ready(&bao.client()?, Duration::from_secs(10)).await {
            Ok(()) => return Ok(bao),
            Err(e) => {
                stop_dev_server();
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("OpenBao dev server did not start")))
}

fn stop_dev_server() {
    if let Some(mut child) = WATCHDOG.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
        drop(child.stdin.take());
        let _ = child.wait();
    }
}
