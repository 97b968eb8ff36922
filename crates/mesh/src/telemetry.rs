//! Logging to stderr: `tracing` with an env filter (`RUST_LOG`, default `info`),
//! human-readable (colored only on a terminal) or JSON (`SAKUGA_LOG_FORMAT=json`).

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Without `RUST_LOG`: info, but not the Vault client's own per-request errors (we report
/// Vault failures ourselves, once, with the reason).
const DEFAULT_FILTER: &str = "info,rustify=off,vaultrs=off";

/// Installs the global subscriber. Safe to call once per process.
pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = std::env::var("SAKUGA_LOG_FORMAT").is_ok_and(|v| v == "json");
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry.with(fmt::layer().json().with_current_span(true).with_writer(std::io::stderr)).try_init()
    } else {
        let ansi = std::io::stderr().is_terminal();
        registry.with(fmt::layer().with_target(false).with_ansi(ansi).with_writer(std::io::stderr)).try_init()
    };
    if result.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
    }
}
