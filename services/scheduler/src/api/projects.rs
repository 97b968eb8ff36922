//! `ProjectService`: projects and their characters, scoped to the caller.

use sakuga_mesh::{api::Page, auth as mesh_auth};
use sakuga_proto::v1::{self as pb, project_service_server::ProjectService};
use tonic::{Request, Response, Status};

use crate::{
    convert::{self, parse_id},
    projects::{CharacterChanges, ProjectChanges, Projects},
};

/// The gRPC face of [`Projects`].
#[derive(Debug, Clone)]
pub(super) struct ProjectApi(pub(super) Projects);

#[tonic::async_trait]
impl ProjectService for ProjectApi {
    async fn create_project(
        &self,
        req: Request<pb::CreateProjectRequest>,
    ) -> Result<Response<pb::CreateProjectResponse>, Status> {
        let owner = mesh_auth::caller(&req)?.user_id()?.to_string();
        let r = req.into_inner();
        let project = self.0.create(&owner, &r.name, &r.slug, &r.description, r.retention_days).await?;
        let target = format!("project:{}", project.id);
        Ok(mesh_auth::audited(
            pb::CreateProjectResponse { project: Some(convert::project(&project)) },
            target,
        ))
    }

    async fn get_project(
        &self,
        req: Request<pb::GetProjectRequest>,
    ) -> Result<Response<pb::GetProjectResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let id = parse_id("project_id", &req.get_ref().project_id)?;
        let project = self.0.get(id, scope.as_deref()).await?;
        Ok(Response::new(pb::GetProjectResponse { project: Some(convert::project(&project)) }))
    }

    async fn list_projects(
        &self,
        req: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let r = req.into_inner();
        let page = Page::parse(r.page_size, &r.page_token)?;
        let mut projects =
            self.0.list(scope.as_deref(), r.include_archived, page.after, page.fetch()).await?;
        let next_page_token = page.finish(&mut projects, |p| (p.created_at, p.id));
        Ok(Response::new(pb::ListProjectsResponse {
            projects: projects.iter().map(convert::project).collect(),
            next_page_token,
        }))
    }

    async fn update_project(
        &self,
        req: Request<pb::UpdateProjectRequest>,
    ) -> Result<Response<pb::UpdateProjectResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let r = req.into_inner();
        let id = parse_id("project_id", &r.project_id)?;
        let changes = ProjectChanges {
            name: r.name,
            description: r.description,
            retention_days: r.retention_days,
            archived: r.archived,
        };
        let project = self.0.update(id, scope.as_deref(), &changes).await?;
        Ok(mesh_auth::audited(
            pb::UpdateProjectResponse { project: Some(convert::project(&project)) },
            format!("project:{id}"),
        ))
    }

    async fn create_character(
        &self,
        req: Request<pb::CreateCharacterRequest>,
    ) -> Result<Response<pb::CreateCharacterResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let r = req.into_inner();
        let project = parse_id("project_id", &r.project_id)?;
        let character = self
            .0
            .create_character(
                project,
                scope.as_deref(),
                &r.name,
                &r.description,
                &r.prompt_fragment,
                &r.negative_fragment,
            )
            .await?;
        let target = format!("character:{}", character.id);
        Ok(mesh_auth::audited(
            pb::CreateCharacterResponse { character: Some(convert::character(&character)) },
            target,
        ))
    }

    async fn list_characters(
        &self,
        req: Request<pb::ListCharactersRequest>,
    ) -> Result<Response<pb::ListCharactersResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let project = parse_id("project_id", &req.get_ref().project_id)?;
        let characters = self.0.characters(project, scope.as_deref()).await?;
        Ok(Response::new(pb::ListCharactersResponse {
            characters: characters.iter().map(convert::character).collect(),
        }))
    }

    async fn update_character(
        &self,
        req: Request<pb::UpdateCharacterRequest>,
    ) -> Result<Response<pb::UpdateCharacterResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let r = req.into_inner();
        let id = parse_id("character_id", &r.character_id)?;
        let changes = CharacterChanges {
            name: r.name,
            description: r.description,
            prompt_fragment: r.prompt_fragment,
            negative_fragment: r.negative_fragment,
        };
        let character = self.0.update_character(id, scope.as_deref(), &changes).await?;
        Ok(mesh_auth::audited(
            pb::UpdateCharacterResponse { character: Some(convert::character(&character)) },
            format!("character:{id}"),
        ))
    }

    async fn delete_character(
        &self,
        req: Request<pb::DeleteCharacterRequest>,
    ) -> Result<Response<pb::DeleteCharacterResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let id = parse_id("character_id", &req.get_ref().character_id)?;
        self.0.delete_character(id, scope.as_deref()).await?;
        Ok(mesh_auth::audited(pb::DeleteCharacterResponse {}, format!("character:{id}")))
    }
}
