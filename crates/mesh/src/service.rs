//! The one `main` every service binary shares: parse the command line, load the layered
//! configuration, then serve until SIGINT/SIGTERM or apply migrations and exit. Errors end
//! the process with one line on stderr and exit code 1.

use std::{future::Future, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::sync::CancellationToken;

use crate::{
    MeshError,
    config::{DatabaseConfig, Renamed, VaultConfig},
};

/// What a service binary runs.
pub trait Service: Sized + Send + 'static {
    /// Lowercase name: selects `SAKUGA_<NAME>__` variables and names the certificate.
    const NAME: &'static str;
    /// The binary's name, `sakuga-<NAME>`.
    const BINARY: &'static str;
    /// One line for `--help`.
    const ABOUT: &'static str;
    /// The configuration.
    type Config: DeserializeOwned + Serialize + Default + Send;
    /// Keys of the configuration that were renamed (those of `[server]` are known to the
    /// mesh); the old names keep working.
    const RENAMED: &'static [Renamed] = &[];

    /// Connects to everything and binds the listener.
    fn build(config: Self::Config) -> impl Future<Output = Result<Self, MeshError>> + Send;
    /// The bound address.
    fn local_addr(&self) -> SocketAddr;
    /// The bound metrics address, if the service has one.
    fn metrics_addr(&self) -> Option<SocketAddr>;
    /// Serves until `shutdown`, then drains.
    fn run_until_stopped(
        self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), MeshError>> + Send;
    /// Vault and database settings, for services that own tables (`migrate`).
    fn database(config: &Self::Config) -> Option<(&VaultConfig, &DatabaseConfig)>;
}

#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file; `SAKUGA_<SERVICE>__<KEY>` environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGINT/SIGTERM (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
}

/// Runs the binary of service `S`.
pub fn main<S: Service>() -> ExitCode {
    crate::tls::install_crypto_provider();
    let cli = <Cli as clap::CommandFactory>::command().name(S::BINARY).about(S::ABOUT);
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&cli.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(S::NAME, S::BINARY, &MeshError::Io(e)),
    };
    // The OTLP exporter runs on the runtime.
    let provider = runtime.block_on(async { crate::telemetry::init(S::NAME) });
    let result = runtime.block_on(run::<S>(cli));
    if let Some(p) = provider {
        // Flush what is batched before exiting.
        let _ = runtime.block_on(async move { tokio::task::spawn_blocking(move || p.shutdown()).await });
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(S::NAME, S::BINARY, &e),
    }
}

fn fail(name: &str, binary: &str, e: &MeshError) -> ExitCode {
    tracing::error!(error = %e, "{name} stopped");
    eprintln!("{binary}: {e}");
    ExitCode::FAILURE
}

async fn run<S: Service>(cli: Cli) -> Result<(), MeshError> {
    let config: S::Config = crate::config::load(S::NAME, cli.config.as_deref(), S::RENAMED)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            let Some((vault, database)) = S::database(&config) else {
                return Err(MeshError::Config(format!("the {} has no database to migrate", S::NAME)));
            };
            let applied = crate::db::migrate_with_vault(vault, database).await?;
            tracing::info!(?applied, "migrations done");
            Ok(())
        }
        Command::Serve => {
            let stop = crate::shutdown::on_signals();
            let app = S::build(config).await?;
            tracing::info!(addr = %app.local_addr(), "ready");
            app.run_until_stopped(stop).await
        }
    }
}
