//! Errors of the shared plumbing. Messages are lowercase, name what failed, and never
//! carry a secret.

/// Everything that can go wrong while a service assembles itself.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// Bad configuration; the message names the field.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Vault could not be reached or refused a request; the message says which.
    #[error("vault: {0}")]
    Vault(String),
    /// A certificate or key could not be used.
    #[error("tls: {0}")]
    Tls(String),
    /// PostgreSQL could not be reached or a migration failed.
    #[error("database: {0}")]
    Database(String),
    /// Redis could not be reached.
    #[error("redis: {0}")]
    Redis(String),
    /// Socket or file error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("server: {0}")]
    Server(String),
}
