//! Runs a parsed command line: one module per command family, `shared` for what several
//! of them use (passwords, project names, paging), and here the session a command talks
//! through with its credentials.

mod admin;
mod auth;
mod characters;
mod files;
mod jobs;
mod profile;
mod projects;
mod shared;
mod submit;
mod webhooks;

use crate::{
    CliError,
    args::{Cli, Command},
    profile::ConfigFile,
    session::Session,
};

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let json = cli.json;
    match &cli.command {
        Command::Profile(cmd) => profile::run(cmd, json),
        Command::Login { username, password_stdin } => {
            auth::login(&session(&cli)?, username.as_deref(), *password_stdin, json).await
        }
        Command::Logout => auth::logout(&session(&cli)?, json).await,
        Command::Whoami => auth::whoami(&session(&cli)?, json).await,
        Command::Submit(args) => submit::run(&session(&cli)?, args, json).await,
        Command::Jobs(cmd) => jobs::run(&session(&cli)?, cmd, json).await,
        Command::Files(cmd) => files::run(&session(&cli)?, cmd, json).await,
        Command::Projects(cmd) => projects::run(&session(&cli)?, cmd, json).await,
        Command::Characters(cmd) => characters::run(&session(&cli)?, cmd, json).await,
        Command::Webhooks(cmd) => webhooks::run(&session(&cli)?, cmd, json).await,
        Command::Admin(cmd) => admin::run(&session(&cli)?, cmd, json).await,
    }
}

fn session(cli: &Cli) -> Result<Session, CliError> {
    let (name, profile) = ConfigFile::load()?.pick(cli.profile.as_deref())?;
    Session::open(name, profile, api_key(cli)?)
}

/// The API key of a script: from `--api-key-file`, else `$SAKUGA_API_KEY`; never argv.
fn api_key(cli: &Cli) -> Result<Option<String>, CliError> {
    if cli.api_key.is_some() {
        return Err(CliError::usage(
            "--api-key: not accepted on the command line (other users can read it in the process \
             list); use --api-key-file FILE or $SAKUGA_API_KEY",
        ));
    }
    if let Some(path) = &cli.api_key_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("--api-key-file {}: {e}", path.display())))?;
        let key = text.trim();
        if key.is_empty() {
            return Err(CliError::usage(format!("--api-key-file {}: the file is empty", path.display())));
        }
        return Ok(Some(key.to_owned()));
    }
    Ok(std::env::var("SAKUGA_API_KEY").ok().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()))
}
