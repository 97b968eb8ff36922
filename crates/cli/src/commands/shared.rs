//! What several command families use: a password from the terminal or stdin, a project
//! by id or slug, the hint for the next page.

use std::io::{IsTerminal as _, Read as _};

use sakuga_proto::v1 as pb;

use crate::{CliError, args::ListArgs, session::Session};

/// The password, read from stdin (`--password-stdin`, or when stdin is not a terminal) or
/// asked for at the terminal without echo.
pub(super) fn read_password(from_stdin: bool, prompt: &str) -> Result<String, CliError> {
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
pub(super) async fn project_id(s: &Session, project: &str) -> Result<String, CliError> {
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
pub(super) async fn list_project_id(s: &Session, list: &ListArgs) -> Result<String, CliError> {
    match &list.project {
        Some(p) => project_id(s, p).await,
        None => Ok(String::new()),
    }
}

/// Tells people how to get the next page.
pub(super) fn page_note(json: bool, token: &str) {
    if !json && !token.is_empty() {
        eprintln!("more: --page-token {token}");
    }
}
