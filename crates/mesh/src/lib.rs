//! What every Sakuga service shares: layered config, logging, rustls mTLS with service
//! identities, the Vault client, the PostgreSQL pool and migrations, Redis, server assembly
//! (health, reflection, graceful shutdown).

pub mod api;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod health;
pub mod identity;
pub mod listen;
pub mod metrics;
pub mod node;
pub mod ratelimit;
pub mod redis;
pub mod retry;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod vault;

pub use error::MeshError;
