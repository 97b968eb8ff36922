//! Services as child processes, for tests that must read what the operating system sees
//! (resident memory) or kill a process: the service binary is built once per test process
//! (`cargo build -p <package> --bin <binary>` into the target directory of the running test),
//! started with its configuration in a TOML file in a temporary folder, on random loopback
//! ports (gRPC, plaintext health probe, metrics), and awaited until its overall health is
//! SERVING. It is killed when the [`ServiceProcess`] is dropped.
//!
//! The configurations come from the in-process helpers ([`crate::auth_config`] and the
//! others), so the child uses the test's OpenBao, database and Redis exactly as an
//! in-process service would.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;
use tempfile::TempDir;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A service configuration the harness can run as a process.
pub trait ProcessConfig: Serialize {
    /// The Cargo package holding the binary.
    const PACKAGE: &'static str;
    /// The binary.
    const BINARY: &'static str;
    /// Sets the gRPC, probe and metrics listen addresses.
    fn set_addrs(&mut self, listen: SocketAddr, probe: SocketAddr, metrics: SocketAddr);
}

macro_rules! process_config {
    ($config:ty, $package:literal, $binary:literal) => {
        impl ProcessConfig for $config {
            const PACKAGE: &'static str = $package;
            const BINARY: &'static str = $binary;
            fn set_addrs(&mut self, listen: SocketAddr, probe: SocketAddr, metrics: SocketAddr) {
                self.server.listen = listen;
                self.server.probe_listen = Some(probe);
                self.server.metrics_listen = Some(metrics);
            }
        }
    };
}

process_config!(sakuga_auth::Config, "sakuga-auth", "sakuga-auth");
process_config!(sakuga_scheduler::Config, "sakuga-scheduler", "sakuga-scheduler");
process_config!(sakuga_organizer::Config, "sakuga-organizer", "sakuga-organizer");
process_config!(sakuga_generator::Config, "sakuga-generator", "sakuga-generator");

/// How long a service may take to report SERVING (Vault login, migrations, certificates).
const START_TIMEOUT: Duration = Duration::from_mins(2);

static BUILT: Mutex<Option<HashMap<&'static str, PathBuf>>> = Mutex::new(None);

/// The target directory and profile of the running test executable
/// (`<target>/<profile dir>/deps/<test>-<hash>`).
fn target_of_current_exe() -> anyhow::Result<(PathBuf, String)> {
    let exe = std::env::current_exe()?;
    let deps = exe.parent().ok_or_else(|| anyhow!("test executable has no folder"))?;
    let profile_dir = if deps.file_name().is_some_and(|n| n == "deps") { deps.parent() } else { Some(deps) }
        .ok_or_else(|| anyhow!("no profile folder above {}", exe.display()))?;
    let target = profile_dir.parent().ok_or_else(|| anyhow!("no target folder above {}", exe.display()))?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    Ok((target.to_path_buf(), profile))
}

/// The path of `binary` of `package`, built (once per test process, blocking) into the
/// running test's target directory and profile.
pub fn binary(package: &'static str, binary: &'static str) -> anyhow::Result<PathBuf> {
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(binary) {
        return Ok(path.clone());
    }
    let (target, profile) = target_of_current_exe()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let out = Command::new(cargo)
        .args(["build", "--quiet", "--package", package, "--bin", binary, "--profile", &profile])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("cargo build -p {package} --bin {binary} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let dir = if profile == "dev" { "debug" } else { profile.as_str() };
    let path = target.join(dir).join(binary);
    if !path.is_file() {
        bail!("{} was not built", path.display());
    }
    built.insert(binary, path.clone());
    Ok(path)
}

/// A service binary running as a child process; killed on drop.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Child,
    name: &'static str,
    /// gRPC (mTLS) address.
    pub addr: SocketAddr,
    /// Plaintext health address.
    pub probe: SocketAddr,
    /// Prometheus scrape address.
    pub metrics: SocketAddr,
    dir: TempDir,
}

impl ServiceProcess {
    /// Starts the binary of `config`'s service with `config` (its listen addresses replaced
    /// by free loopback ports) and waits until its overall health is SERVING.
    pub async fn start<C: ProcessConfig>(mut config: C) -> anyhow::Result<Self> {
        let bin = tokio::task::spawn_blocking(|| binary(C::PACKAGE, C::BINARY)).await??;
        // Below the ephemeral range: the child binds them a moment after they are picked.
        let [addr, probe, metrics] =
            crate::ports::free_ports::<3>()?.map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
        config.set_addrs(addr, probe, metrics);
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, toml::to_string(&config)?)?;
        let log = std::fs::File::create(dir.path().join("service.log"))?;
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .env_remove("SAKUGA_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut process = Self { child, name: C::BINARY, addr, probe, metrics, dir };
        process.wait_serving().await?;
        Ok(process)
    }

    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.probe))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2));
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status} before serving; its log:\n{}", self.name, self.log());
            }
            if let Ok(channel) = endpoint.connect().await {
                let status = HealthClient::new(channel)
                    .check(HealthCheckRequest { service: String::new() })
                    .await
                    .map(|r| r.into_inner().status);
                if status.is_ok_and(|s| s == i32::from(ServingStatus::Serving)) {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} not SERVING after {START_TIMEOUT:?}; its log:\n{}", self.name, self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `127.0.0.1:port` of the gRPC listener.
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// Resident set size (`VmRSS` of `/proc/<pid>/status`) in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .ok_or_else(|| anyhow!("no VmRSS in /proc/{}/status", self.pid()))?;
        let kib: u64 = line.trim().trim_end_matches("kB").trim().parse()?;
        Ok(kib * 1024)
    }

    /// What the service logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
