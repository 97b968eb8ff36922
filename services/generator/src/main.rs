//! `sakuga-generator`: serve (default) or apply migrations and exit.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use sakuga_generator::{Application, Config};
use sakuga_mesh::{shutdown, telemetry, tls};

#[derive(Parser)]
#[command(name = "sakuga-generator", version, about = "Sakuga generator (worker)")]
struct Cli {
    /// TOML configuration file (environment: SAKUGA_GENERATOR__<KEY>).
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to the scheduler and work until SIGINT/SIGTERM (the default).
    Serve,
}

#[tokio::main]
async fn main() -> ExitCode {
    tls::install_crypto_provider();
    telemetry::init("generator");
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "scheduler stopped");
            eprintln!("sakuga-generator: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config: Config = sakuga_mesh::config::load("generator", cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let stop = shutdown::on_signals();
            let app = Application::build(config).await?;
            app.run_until_stopped(stop).await?;
        }
    }
    Ok(())
}
