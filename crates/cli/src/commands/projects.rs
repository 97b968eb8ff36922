//! `projects …`.

use sakuga_proto::v1 as pb;

use super::shared::project_id;
use crate::{CliError, args::ProjectsCmd, output, session::Session};

/// Runs a `projects` command.
pub(super) async fn run(s: &Session, cmd: &ProjectsCmd, json: bool) -> Result<(), CliError> {
    let mut projects = s.projects().await?;
    let project = match cmd {
        ProjectsCmd::List { archived } => {
            let resp = projects
                .list_projects(pb::ListProjectsRequest {
                    page_size: 100,
                    page_token: String::new(),
                    include_archived: *archived,
                })
                .await?
                .into_inner();
            let rows: Vec<output::Project> = output::all(&resp.projects);
            output::print(json, &rows, &["id", "slug", "name", "archived", "retention_days", "created"]);
            return Ok(());
        }
        ProjectsCmd::Create { name, slug, description, retention_days } => {
            projects
                .create_project(pb::CreateProjectRequest {
                    name: name.clone(),
                    slug: slug.clone(),
                    description: description.clone(),
                    retention_days: *retention_days,
                })
                .await?
                .into_inner()
                .project
        }
        ProjectsCmd::Get { project } => {
            let id = project_id(s, project).await?;
            projects.get_project(pb::GetProjectRequest { project_id: id }).await?.into_inner().project
        }
        ProjectsCmd::Update { project, name, description, retention_days } => {
            let id = project_id(s, project).await?;
            projects
                .update_project(pb::UpdateProjectRequest {
                    project_id: id,
                    name: name.clone(),
                    description: description.clone(),
                    retention_days: *retention_days,
                    archived: None,
                })
                .await?
                .into_inner()
                .project
        }
        ProjectsCmd::Archive { project } | ProjectsCmd::Unarchive { project } => {
            let id = project_id(s, project).await?;
            let archived = matches!(cmd, ProjectsCmd::Archive { .. });
            projects
                .update_project(pb::UpdateProjectRequest {
                    project_id: id,
                    archived: Some(archived),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .project
        }
    };
    output::print(json, &output::Project::from(&project.unwrap_or_default()), &[]);
    Ok(())
}
