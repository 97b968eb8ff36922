//! The `sakuga` command: log in, submit and watch jobs, download files, manage projects,
//! characters, webhooks, users and API keys. Tables for people, `--json` for scripts.
//!
//! One way through: [`args`] parses the command line, [`commands`] runs it (one module per
//! command family) through a [`session::Session`] (connections and credentials), and
//! [`output`] prints the answer; [`error`] maps every failure to its exit code.
//!
//! Exit codes: 0 ok, 1 other errors (service unreachable, conflicts, a webhook test the
//! endpoint failed), 2 usage (bad arguments, refused input), 3 authentication or
//! permission, 4 not found, 5 the job failed or was canceled.

pub mod args;
pub mod commands;
pub mod error;
pub mod output;
pub mod profile;
pub mod progress;
pub mod session;

use std::process::ExitCode;

use clap::Parser as _;

pub use crate::{
    args::{Cli, Command},
    commands::run,
    error::CliError,
};

/// Runs the command line of this process.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sakuga: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sakuga: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
