//! `sakuga-auth`: serve (default) or apply migrations and exit.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use sakuga_auth::{Application, Config};
use sakuga_mesh::{shutdown, telemetry, tls};

#[derive(Parser)]
#[command(name = "sakuga-auth", version, about = "Sakuga auth service")]
struct Cli {
    /// TOML configuration file (environment: SAKUGA_AUTH__<KEY>).
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC until SIGINT/SIGTERM (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> ExitCode {
    tls::install_crypto_provider();
    telemetry::init("auth");
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "scheduler stopped");
            eprintln!("sakuga-auth: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config: Config = sakuga_mesh::config::load("auth", cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            let applied = sakuga_mesh::db::migrate_with_vault(&config.vault, &config.database).await?;
            tracing::info!(?applied, "migrations done");
        }
        Command::Serve => {
            let stop = shutdown::on_signals();
            let app = Application::build(config).await?;
            app.run_until_stopped(stop).await?;
        }
    }
    Ok(())
}
