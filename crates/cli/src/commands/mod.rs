//! Runs a parsed command line: one module per command family, and what they share (the
//! session a command talks through, credentials, passwords, project names).

mod admin;
mod auth;
mod characters;
mod files;
mod jobs;
mod profile;
mod projects;
mod submit;

use std::io::{IsTerminal as _, Read as _};

use sakuga_proto::v1 as pb;

use crate::{
    CliError,
    args::{Cli, Command, ListArgs},
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

fn read_password(from_stdin: bool, prompt: &str) -> Result<String, CliError> {
    let password = if from_stdin || !std::io::stdin().is_terminal() {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| CliError::other(e.to_string()))?;
        s.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        rpassword::prompt_password(prompt).map_err(|e| CliError::other(e.to_string()))?
    };
    if password.is_empty() {
        return Err(CliError::usage("the password is empty"));
    }
    Ok(password)
}

/// A project id from an id or a slug.
async fn project_id(s: &Session, project: &str) -> Result<String, CliError> {
    if uuid::Uuid::parse_str(project).is_ok() {
        return Ok(project.to_owned());
    }
    let mut projects = s.projects().await?;
    let mut token = String::new();
    loop {
        let page = projects
            .list_projects(pb::ListProjectsRequest {
                page_size: 100,
                page_token: token,
                include_archived: true,
            })
            .await?
            .into_inner();
        if let Some(p) = page.projects.iter().find(|p| p.slug == project) {
            return Ok(p.id.clone());
        }
        if page.next_page_token.is_empty() {
            return Err(CliError::not_found(format!("no project with id or slug {project:?}")));
        }
        token = page.next_page_token;
    }
}

/// The project id a list filter names (empty: none).
async fn list_project_id(s: &Session, list: &ListArgs) -> Result<String, CliError> {
    match &list.project {
        Some(p) => project_id(s, p).await,
        None => Ok(String::new()),
    }
}

/// Tells people how to get the next page.
fn page_note(json: bool, token: &str) {
    if !json && !token.is_empty() {
        eprintln!("more: --page-token {token}");
    }
}
