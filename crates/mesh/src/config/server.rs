//! `[server]`: the block every service shares — where it listens, how it reaches Vault,
//! the names on its certificate, the limits of its gRPC port and its shutdown grace.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::{Renamed, TlsConfig, VaultConfig};
use crate::{error::MeshError, listen::GrpcLimits};

/// The configuration every service shares (`[server]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus scrape address (`GET /metrics`, plain HTTP); `"off"`: none.
    #[serde(with = "super::switchable_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Plaintext gRPC health (only) for kubelet probes; unset: none.
    pub probe_listen: Option<SocketAddr>,
    /// Vault login and mounts.
    pub vault: VaultConfig,
    /// Names on the service certificate.
    pub tls: TlsConfig,
    /// Limits of the gRPC port: connections, handshakes, streams per connection, keepalive.
    pub grpc: GrpcLimits,
    /// Time in-flight work gets after SIGTERM before it is cut off or handed back.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: None,
            probe_listen: None,
            vault: VaultConfig::default(),
            tls: TlsConfig::default(),
            grpc: GrpcLimits::default(),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

impl ServerConfig {
    /// The defaults of `service`, listening on loopback `port` with metrics on loopback
    /// `metrics_port`; its certificate comes from its own PKI role.
    pub fn for_service(service: &str, port: u16, metrics_port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], metrics_port))),
            vault: VaultConfig::for_service(service),
            ..Self::default()
        }
    }

    /// Checks every field; errors name the key (`server.vault.role_id_file: …`).
    pub fn validate(&self) -> Result<(), MeshError> {
        self.vault.validate()?;
        self.grpc.validate()?;
        if self.shutdown_grace.is_zero() {
            return Err(MeshError::Config("server.shutdown_grace: must be positive".to_owned()));
        }
        Ok(())
    }
}

/// Where the keys of `[server]` were before it existed, and the durations that were
/// numbers, in the order they must be applied.
pub const RENAMED: &[Renamed] = &[
    Renamed::Moved { from: "listen", to: "server.listen" },
    Renamed::Moved { from: "metrics_listen", to: "server.metrics_listen" },
    Renamed::Moved { from: "probe_listen", to: "server.probe_listen" },
    Renamed::Moved { from: "vault", to: "server.vault" },
    Renamed::Moved { from: "tls", to: "server.tls" },
    Renamed::Moved { from: "grpc", to: "server.grpc" },
    Renamed::Secs { from: "shutdown_grace_secs", to: "server.shutdown_grace" },
    Renamed::Secs { from: "server.vault.cert_ttl_secs", to: "server.vault.cert_ttl" },
    Renamed::Millis { from: "server.vault.backoff_initial_ms", to: "server.vault.backoff_initial" },
    Renamed::Millis { from: "server.grpc.handshake_timeout_ms", to: "server.grpc.handshake_timeout" },
    Renamed::Secs { from: "server.grpc.keepalive_interval_secs", to: "server.grpc.keepalive_interval" },
    Renamed::Secs { from: "server.grpc.keepalive_timeout_secs", to: "server.grpc.keepalive_timeout" },
    Renamed::Secs { from: "database.acquire_timeout_secs", to: "database.acquire_timeout" },
];
