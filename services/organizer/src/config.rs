//! File organizer configuration.

use std::{path::PathBuf, time::Duration};

use sakuga_mesh::{
    MeshError,
    config::{DatabaseConfig, RedisConfig, Renamed, ServerConfig},
    ratelimit::RateLimits,
};
use serde::{Deserialize, Serialize};

/// Everything the organizer reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Ports (FileService, health, reflection), Vault, certificate, limits of the gRPC port, shutdown grace.
    pub server: ServerConfig,
    /// PostgreSQL.
    pub database: DatabaseConfig,
    /// Redis (revocation list, rate limits).
    pub redis: RedisConfig,
    /// Auth service `host:port`, where the token verification keys come from.
    pub auth_addr: String,
    /// Rate limits per class and user.
    pub rate_limits: RateLimits,
    /// Where the bytes live: a local folder or an S3-compatible object store.
    pub storage: StorageConfig,
    /// Largest artifact accepted, in bytes.
    pub max_artifact_bytes: u64,
    /// Uploads (`StoreArtifact`) handled at once; more are refused with RESOURCE_EXHAUSTED
    /// and `retry-after`.
    pub max_concurrent_uploads: usize,
    /// An upload whose next message takes longer than this is ended (ABORTED).
    #[serde(with = "humantime_serde")]
    pub upload_idle_timeout: Duration,
    /// `ReadFile` and `GetThumbnail` streams one user may have open at once; more are
    /// refused with RESOURCE_EXHAUSTED and `retry-after`.
    pub max_reads_per_user: usize,
    /// A read stream the client stops reading for longer than this is ended (ABORTED),
    /// freeing its slot.
    #[serde(with = "humantime_serde")]
    pub read_idle_timeout: Duration,
    /// Longest side of thumbnails, in pixels.
    pub thumbnail_max_side: u32,
    /// The reconciler runs at start-up and then this often.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// Bytes no record points at are removed once this old (protects uploads in flight).
    #[serde(with = "humantime_serde")]
    pub orphan_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::for_service("organizer", 15053, 9103),
            database: DatabaseConfig::for_service("organizer"),
            redis: RedisConfig::for_service("organizer"),
            auth_addr: "127.0.0.1:15051".to_owned(),
            rate_limits: RateLimits::default(),
            storage: StorageConfig::default(),
            max_artifact_bytes: 256 * 1024 * 1024,
            max_concurrent_uploads: 8,
            upload_idle_timeout: Duration::from_secs(30),
            max_reads_per_user: 8,
            read_idle_timeout: Duration::from_secs(30),
            thumbnail_max_side: 256,
            reconcile_interval: Duration::from_hours(1),
            orphan_grace: Duration::from_mins(10),
        }
    }
}

impl Config {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), MeshError> {
        self.server.validate()?;
        self.database.validate()?;
        self.rate_limits.validate()?;
        self.storage.validate()?;
        if !(16..=1024).contains(&self.thumbnail_max_side) {
            return Err(MeshError::Config("thumbnail_max_side: must be between 16 and 1024".to_owned()));
        }
        if self.reconcile_interval.is_zero() {
            return Err(MeshError::Config("reconcile_interval: must be positive".to_owned()));
        }
        if self.max_artifact_bytes < 1024 {
            return Err(MeshError::Config("max_artifact_bytes: must be at least 1024".to_owned()));
        }
        for (key, value) in [
            ("max_concurrent_uploads", self.max_concurrent_uploads),
            ("max_reads_per_user", self.max_reads_per_user),
        ] {
            if value == 0 {
                return Err(MeshError::Config(format!("{key}: must be at least 1")));
            }
        }
        for (key, value) in
            [("upload_idle_timeout", self.upload_idle_timeout), ("read_idle_timeout", self.read_idle_timeout)]
        {
            if value.is_zero() {
                return Err(MeshError::Config(format!("{key}: must be positive")));
            }
        }
        Ok(())
    }
}

/// The organizer's keys that moved or were numbers of seconds.
pub const RENAMED: &[Renamed] = &[
    Renamed::Moved { from: "storage_root", to: "storage.root" },
    Renamed::Secs { from: "upload_idle_timeout_secs", to: "upload_idle_timeout" },
    Renamed::Secs { from: "read_idle_timeout_secs", to: "read_idle_timeout" },
    Renamed::Secs { from: "reconcile_interval_secs", to: "reconcile_interval" },
    Renamed::Secs { from: "orphan_grace_secs", to: "orphan_grace" },
];

/// Which store holds the bytes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A folder on this machine (`storage.root`).
    #[default]
    Local,
    /// An S3-compatible object store (`[storage.s3]`); the organizer keeps no local state.
    S3,
}

/// `[storage]`: the backend and its settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `local` or `s3`.
    pub backend: Backend,
    /// Local backend: the folder of the stored files.
    pub root: PathBuf,
    /// S3 backend: where the bucket is and how to reach it.
    pub s3: S3Config,
    /// `GetDownloadUrl`: how long a URL works when the request names no TTL.
    #[serde(with = "humantime_serde")]
    pub download_url_ttl: Duration,
    /// `GetDownloadUrl`: the longest TTL a request may ask for; a longer one is refused
    /// (INVALID_ARGUMENT), not shortened. At most 7 days (S3's limit for presigned URLs).
    #[serde(with = "humantime_serde")]
    pub download_url_max_ttl: Duration,
    /// Also place each file's bytes at its human name under `export/` (a hard link or a
    /// server-side copy of its blob), a view for people browsing the folder or bucket.
    pub export: bool,
}

/// The longest a presigned S3 URL may work (SigV4's limit).
pub const MAX_PRESIGNED_TTL: Duration = Duration::from_hours(7 * 24);

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Local,
            root: PathBuf::from("files"),
            s3: S3Config::default(),
            download_url_ttl: Duration::from_mins(5),
            download_url_max_ttl: Duration::from_hours(1),
            export: false,
        }
    }
}

/// `[storage.s3]`: an S3-compatible server. The access key comes from Vault, never from
/// configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Base URL of the server (`http://127.0.0.1:8333`); empty: AWS for the region.
    pub endpoint: String,
    /// Region.
    pub region: String,
    /// Bucket (it must exist).
    pub bucket: String,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted ones.
    pub path_style: bool,
    /// Allow an `http://` endpoint (plain text); off, only HTTPS is spoken.
    pub allow_http: bool,
    /// PEM file of a private certificate authority the endpoint's certificate chains to;
    /// empty: the system's roots.
    pub ca_file: PathBuf,
    /// Key prefix inside the bucket (empty: none).
    pub prefix: String,
    /// Vault KV v2 secret with `access_key_id` and `secret_access_key`.
    pub vault_path: String,
    /// Base URL clients reach the server at, when it is not `endpoint` (the organizer's
    /// in-cluster address): `GetDownloadUrl` signs its URLs for this one. The organizer
    /// never connects to it. Empty: `endpoint`.
    pub public_endpoint: String,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            region: "us-east-1".to_owned(),
            bucket: "sakuga".to_owned(),
            path_style: true,
            allow_http: false,
            ca_file: PathBuf::new(),
            prefix: String::new(),
            vault_path: "sakuga/organizer/s3".to_owned(),
            public_endpoint: String::new(),
        }
    }
}

impl StorageConfig {
    /// Checks the settings of the chosen backend.
    pub fn validate(&self) -> Result<(), MeshError> {
        let bad = |key: &str, why: &str| Err(MeshError::Config(format!("storage.{key}: {why}")));
        if self.download_url_ttl.is_zero() {
            return bad("download_url_ttl", "must be positive");
        }
        if self.download_url_max_ttl < self.download_url_ttl {
            return bad("download_url_max_ttl", "must be at least storage.download_url_ttl");
        }
        if self.download_url_max_ttl > MAX_PRESIGNED_TTL {
            return bad("download_url_max_ttl", "must be at most 7 days (S3's limit for presigned URLs)");
        }
        match self.backend {
            Backend::Local if self.root.as_os_str().is_empty() => bad("root", "must not be empty"),
            Backend::Local => Ok(()),
            Backend::S3 => {
                let s3 = &self.s3;
                if s3.bucket.is_empty() {
                    return bad("s3.bucket", "must not be empty");
                }
                if s3.region.is_empty() {
                    return bad("s3.region", "must not be empty");
                }
                if s3.vault_path.is_empty() {
                    return bad("s3.vault_path", "must name the Vault secret of the access key");
                }
                if s3.endpoint.starts_with("http://") && !s3.allow_http {
                    return bad("s3.endpoint", "is http:// but storage.s3.allow_http is false");
                }
                if !s3.endpoint.is_empty()
                    && !s3.endpoint.starts_with("http://")
                    && !s3.endpoint.starts_with("https://")
                {
                    return bad("s3.endpoint", "must start with http:// or https://");
                }
                if s3.prefix.starts_with('/') || s3.prefix.split('/').any(|p| p == "..") {
                    return bad("s3.prefix", "must be a relative key prefix");
                }
                // Its URLs carry a credential: plain text only where plain text is allowed.
                if s3.public_endpoint.starts_with("http://") && !s3.allow_http {
                    return bad("s3.public_endpoint", "is http:// but storage.s3.allow_http is false");
                }
                if !s3.public_endpoint.is_empty()
                    && !s3.public_endpoint.starts_with("http://")
                    && !s3.public_endpoint.starts_with("https://")
                {
                    return bad("s3.public_endpoint", "must start with http:// or https://");
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, MeshError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("organizer.toml");
        std::fs::write(&path, text).unwrap();
        sakuga_mesh::config::load("organizer", Some(&path), RENAMED)
    }

    #[test]
    fn storage_root_still_loads_as_storage_root_and_s3_is_read_from_its_table() {
        let old = load("storage_root = \"/srv/files\"\n").unwrap();
        assert_eq!(old.storage.root, PathBuf::from("/srv/files"));
        assert_eq!(old.storage.backend, Backend::Local);
        let s3 = load(
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"http://127.0.0.1:8333\"\nallow_http = true\n\
             bucket = \"b\"\nprefix = \"p/q\"\n",
        )
        .unwrap();
        assert_eq!(s3.storage.backend, Backend::S3);
        assert_eq!((s3.storage.s3.bucket.as_str(), s3.storage.s3.prefix.as_str()), ("b", "p/q"));
        assert_eq!(s3.storage.s3.vault_path, "sakuga/organizer/s3");
        s3.storage.validate().unwrap();
        assert!(load("[storage.s3]\naccess_key_id = \"x\"\n").is_err(), "no key in configuration");
    }

    #[test]
    fn s3_settings_that_make_no_sense_are_refused() {
        let mut c = Config::default();
        c.storage.backend = Backend::S3;
        c.storage.validate().unwrap();
        for (adjust, key) in [
            (
                (|s: &mut S3Config| s.endpoint = "http://x:1".to_owned()) as fn(&mut S3Config),
                "storage.s3.endpoint",
            ),
            (|s: &mut S3Config| s.endpoint = "x:1".to_owned(), "storage.s3.endpoint"),
            (|s: &mut S3Config| s.bucket.clear(), "storage.s3.bucket"),
            (|s: &mut S3Config| s.vault_path.clear(), "storage.s3.vault_path"),
            (|s: &mut S3Config| s.prefix = "../up".to_owned(), "storage.s3.prefix"),
            (|s: &mut S3Config| s.public_endpoint = "http://x:1".to_owned(), "storage.s3.public_endpoint"),
            (|s: &mut S3Config| s.public_endpoint = "x:1".to_owned(), "storage.s3.public_endpoint"),
        ] {
            let mut bad = c.clone();
            adjust(&mut bad.storage.s3);
            let err = bad.storage.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn download_url_ttls_are_durations_and_the_max_is_at_least_the_default_and_at_most_a_week() {
        let c = load("[storage]\ndownload_url_ttl = \"90s\"\ndownload_url_max_ttl = \"2h\"\n").unwrap();
        assert_eq!(c.storage.download_url_ttl, Duration::from_secs(90));
        assert_eq!(c.storage.download_url_max_ttl, Duration::from_hours(2));
        c.storage.validate().unwrap();
        for (ttl, max, key) in [
            (Duration::ZERO, Duration::from_hours(1), "storage.download_url_ttl"),
            (Duration::from_hours(2), Duration::from_hours(1), "storage.download_url_max_ttl"),
            (Duration::from_mins(5), Duration::from_hours(7 * 24 + 1), "storage.download_url_max_ttl"),
        ] {
            let mut bad = Config::default();
            (bad.storage.download_url_ttl, bad.storage.download_url_max_ttl) = (ttl, max);
            let err = bad.storage.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}
