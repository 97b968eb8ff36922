//! A SeaweedFS server (`weed server -s3`) on loopback, the S3-compatible store of the tests:
//! free ports, a temporary folder, one S3 identity, one bucket. Its access key is seeded
//! into the test's OpenBao where the organizer reads it. Killed on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::TestEnv;

/// The bucket every test store uses.
pub const BUCKET: &str = "sakuga";

/// A running SeaweedFS with an S3 gateway.
#[derive(Debug)]
pub struct Weed {
    /// The server; `None` while [`Weed::stop`]ped.
    child: Option<Child>,
    /// Its command line, for [`Weed::restart`].
    args: Vec<String>,
    s3_port: u16,
    /// `http://127.0.0.1:<port>` of the S3 gateway.
    pub endpoint: String,
    /// `https://127.0.0.1:<port>` of the same gateway, its certificate (for `127.0.0.1`)
    /// signed by the private CA in [`Weed::ca_file`].
    pub https_endpoint: String,
    /// PEM of the private CA of the HTTPS port.
    pub ca_file: PathBuf,
    /// Vault KV path of the access key (`access_key_id`, `secret_access_key`).
    pub vault_path: String,
    /// The access key.
    pub access_key_id: String,
    secret_access_key: String,
    dir: tempfile::TempDir,
}

fn weed_bin() -> PathBuf {
    std::env::var_os("SAKUGA_WEED_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/weed"),
        PathBuf::from,
    )
}

/// Starts `weed` with `args`, its output appended to `weed.log` in `dir`.
fn spawn(bin: &std::path::Path, args: &[String], dir: &std::path::Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("weed.log"))?;
    Ok(Command::new(bin).args(args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn()?)
}

/// Whether `GET path` on `port` answers 200.
async fn answers(port: u16, path: &str) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.is_ok() && head.ends_with(b"200")
}

/// A private CA and a certificate for `127.0.0.1` it signed, as PEM files in `dir`: (CA,
/// certificate, key).
fn write_tls(dir: &std::path::Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params.subject_alt_names.push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let cert = params.signed_by(&key, &issuer)?;
    let paths = (dir.join("ca.pem"), dir.join("s3.pem"), dir.join("s3-key.pem"));
    std::fs::write(&paths.0, ca_cert.pem())?;
    std::fs::write(&paths.1, cert.pem())?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    Ok(paths)
}

impl Weed {
    /// Starts a server, waits until its S3 gateway answers, creates [`BUCKET`] and seeds the
    /// access key into `env`'s Vault.
    pub async fn start(env: &TestEnv) -> anyhow::Result<Self> {
        let bin = weed_bin();
        anyhow::ensure!(
            bin.exists(),
            "no SeaweedFS binary at {} (run `make tools` or set SAKUGA_WEED_BIN)",
            bin.display()
        );
        let access_key_id = format!("AK{}", crate::random_suffix().to_uppercase());
        let secret_access_key = uuid::Uuid::new_v4().simple().to_string();
        let identities = serde_json::json!({ "identities": [{
            "name": "organizer",
            "credentials": [{ "accessKey": access_key_id, "secretKey": secret_access_key }],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        let mut attempt = 0;
        let (weed, master, master_grpc) = loop {
            attempt += 1;
            let dir = tempfile::tempdir()?;
            let data = dir.path().join("data");
            std::fs::create_dir_all(&data)?;
            let s3_config = dir.path().join("s3.json");
            std::fs::write(&s3_config, identities.to_string())?;
            let [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, s3_https] =
                crate::ports::free_ports::<9>()?;
            let (ca_file, cert_file, key_file) = write_tls(dir.path())?;
            let args: Vec<String> = [
                "server".to_owned(),
                format!("-dir={}", data.display()),
                "-ip=127.0.0.1".to_owned(),
                "-ip.bind=127.0.0.1".to_owned(),
                format!("-master.port={master}"),
                format!("-master.port.grpc={master_grpc}"),
                format!("-volume.port={volume}"),
                format!("-volume.port.grpc={volume_grpc}"),
                format!("-filer.port={filer}"),
                format!("-filer.port.grpc={filer_grpc}"),
                format!("-filer.localSocket={}", dir.path().join("filer.sock").display()),
                "-s3".to_owned(),
                format!("-s3.port={s3}"),
                format!("-s3.port.grpc={s3_grpc}"),
                format!("-s3.port.https={s3_https}"),
                format!("-s3.cert.file={}", cert_file.display()),
                format!("-s3.key.file={}", key_file.display()),
                // Both default to fixed ports; off.
                "-s3.port.iceberg=0".to_owned(),
                "-s3.port.lance=0".to_owned(),
                format!("-s3.config={}", s3_config.display()),
                "-volume.max=0".to_owned(),
                "-master.volumeSizeLimitMB=64".to_owned(),
            ]
            .into();
            let child = spawn(&bin, &args, dir.path())?;
            let mut weed = Self {
                child: Some(child),
                args,
                s3_port: s3,
                endpoint: format!("http://127.0.0.1:{s3}"),
                https_endpoint: format!("https://127.0.0.1:{s3_https}"),
                ca_file,
                vault_path: String::new(),
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.clone(),
                dir,
            };
            // The ports were free when picked and are then released: another process may
            // take one before SeaweedFS binds it. Then it exits at once; try other ports.
            match weed.until_ready().await {
                Ok(()) => break (weed, master, master_grpc),
                Err(e) if attempt < 3 && weed.log().contains("address already in use") => {
                    tracing::warn!(error = %e, "SeaweedFS lost a port to another process; starting it again");
                }
                Err(e) => return Err(e),
            }
        };
        let mut weed = weed;
        let deadline = Instant::now() + Duration::from_mins(1);
        // The shell reaches the cluster once the filer has registered with the master. It
        // takes the master's gRPC port as `host:port.grpc_port` (else it assumes port + 10000).
        loop {
            let mut shell = tokio::process::Command::new(&bin)
                .arg("shell")
                .arg(format!("-master=127.0.0.1:{master}.{master_grpc}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            if let Some(mut stdin) = shell.stdin.take() {
                stdin.write_all(format!("s3.bucket.create -name {BUCKET}\n").as_bytes()).await?;
            }
            let Ok(out) = tokio::time::timeout(Duration::from_secs(10), shell.wait_with_output()).await
            else {
                anyhow::ensure!(Instant::now() < deadline, "bucket not created: the shell did not finish");
                continue;
            };
            let out = out?;
            let text =
                String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            if text.contains("created bucket") {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "bucket not created: {text}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut fields = std::collections::HashMap::new();
        fields.insert("access_key_id", weed.access_key_id.clone());
        fields.insert("secret_access_key", weed.secret_access_key.clone());
        weed.vault_path = env.put_secret("organizer/s3", &fields).await?;
        Ok(weed)
    }

    /// Waits (up to a minute) until the S3 gateway answers.
    async fn until_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_mins(1);
        while !answers(self.s3_port, "/healthz").await {
            anyhow::ensure!(Instant::now() < deadline, "SeaweedFS not ready within a minute: {}", self.log());
            let exited = match self.child.as_mut() {
                Some(c) => c.try_wait()?.is_some(),
                None => true,
            };
            anyhow::ensure!(!exited, "SeaweedFS exited: {}", self.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Kills the server (SIGKILL: a store that vanishes mid-request); its data stays for
    /// [`Weed::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again on the same ports and data (the bucket and its
    /// objects are still there) and waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.child = Some(spawn(&weed_bin(), &self.args, self.dir.path())?);
        self.until_ready().await
    }

    /// Points `storage` at this server's bucket (key prefix `prefix`).
    pub fn configure(&self, storage: &mut sakuga_organizer::config::StorageConfig, prefix: &str) {
        storage.backend = sakuga_organizer::config::Backend::S3;
        storage.s3 = sakuga_organizer::config::S3Config {
            endpoint: self.endpoint.clone(),
            region: "us-east-1".to_owned(),
            bucket: BUCKET.to_owned(),
            path_style: true,
            allow_http: true,
            prefix: prefix.to_owned(),
            vault_path: self.vault_path.clone(),
            ..sakuga_organizer::config::S3Config::default()
        };
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        // Killed outright: its graceful shutdown takes seconds, and the folder goes anyway.
        self.stop();
    }
}
