//! What every Sakuga service shares: layered config, logging, rustls mTLS with service
//! identities, the Vault client, the PostgreSQL pool and migrations, Redis, server assembly
//! (health, reflection, graceful shutdown).
//!
//! The default feature `server` brings what only a server needs: Vault, PostgreSQL, Redis,
//! OpenTelemetry, the guard's token verification, retries and backoff, the server assembly,
//! health reporting, the start-up assembly and the service runner. Without it (`default-features = false`, as the `sakuga` CLI depends on it) the
//! crate keeps the client side: TLS identities and channels, config types, the refusal
//! reasons and the authorization table.

pub mod api;
pub mod auth;
pub mod config;
#[cfg(feature = "server")]
pub mod db;
pub mod error;
#[cfg(feature = "server")]
pub mod health;
pub mod identity;
pub mod listen;
pub mod metrics;
#[cfg(feature = "server")]
pub mod node;
pub mod ratelimit;
#[cfg(feature = "server")]
pub mod redis;
#[cfg(feature = "server")]
pub mod retry;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod service;
pub mod shutdown;
#[cfg(feature = "server")]
pub mod telemetry;
pub mod tls;
#[cfg(feature = "server")]
pub mod vault;

pub use error::MeshError;
