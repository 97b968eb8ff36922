//! The auth service. It owns users, API keys, refresh tokens, the signing key and the
//! audit log; for now it serves WhoAmI, health and reflection, and keeps its schema
//! migrated.

pub mod config;
pub mod grpc;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use sakuga_mesh::{
    MeshError, db,
    redis::Redis,
    server::{GrpcServer, HealthCheck},
    service::Service,
    tls::MeshTls,
    vault::Vault,
};
use sakuga_proto::{service_names, v1::auth_service_server::AuthServiceServer};
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// A built, not yet running auth service.
#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    config: Config,
    pool: deadpool_postgres::Pool,
    redis: Redis,
    tls: Arc<MeshTls>,
    vault: Vault,
}

impl Service for Application {
    const NAME: &'static str = "auth";
    const BINARY: &'static str = "sakuga-auth";
    const ABOUT: &'static str = "Sakuga auth service";
    type Config = Config;

    /// Logs in to Vault, loads secrets and the certificate, connects to PostgreSQL (and
    /// migrates) and Redis, and binds the listener.
    async fn build(config: Config) -> Result<Self, MeshError> {
        config.validate()?;
        let (vault, tls) = MeshTls::bootstrap(Self::NAME, &config.vault, &config.tls).await?;
        let pool = db::connect_with_vault(&vault, &config.database).await?;
        let redis = Redis::connect_with_vault(&vault, &config.redis).await?;
        let server = GrpcServer::bind(config.listen, &[service_names::AUTH]).await?;
        Ok(Self { server, config, pool, redis, tls, vault })
    }

    /// The bound address.
    fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown`, then drains.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), MeshError> {
        let Self { server, config, pool, redis, tls, vault } = self;
        let renewal = tls.spawn_renewal(vault, config.tls.clone(), shutdown.clone());
        let checks: Vec<(&'static str, HealthCheck)> =
            vec![("postgres", db::health_check(&pool)), ("redis", redis.health_check())];
        let result = server
            .add_service(AuthServiceServer::new(grpc::Api))
            .serve(
                tls,
                checks,
                Duration::from_secs(2),
                Duration::from_secs(config.shutdown_grace_secs),
                shutdown,
            )
            .await;
        renewal.abort();
        result
    }

    fn database(
        config: &Config,
    ) -> Option<(&sakuga_mesh::config::VaultConfig, &sakuga_mesh::config::DatabaseConfig)> {
        Some((&config.vault, &config.database))
    }
}
