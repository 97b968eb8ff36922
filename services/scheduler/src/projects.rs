//! ProjectService: projects (name, slug unique per owner, description, archived, file
//! retention) and their characters (prompt and negative fragments composed into jobs).
//! Everything is scoped to the caller; another user's project answers NOT_FOUND.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use sakuga_mesh::{
    api::{Page, timestamp},
    auth as mesh_auth,
};
use sakuga_proto::v1::{self as pb, project_service_server::ProjectService};
use tokio_postgres::Row;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{error::SchedulerError, validate::text_field};

const PROJECT_COLUMNS: &str = "id, owner_id, name, slug, description, archived, retention_days, created_at";
const CHARACTER_COLUMNS: &str = "id, project_id, name, description, prompt_fragment, negative_fragment";
/// Characters one job may name.
pub const MAX_CHARACTERS_PER_JOB: usize = 8;

fn project_from_row(r: &Row) -> pb::Project {
    pb::Project {
        id: r.get::<_, Uuid>("id").to_string(),
        owner_id: r.get("owner_id"),
        name: r.get("name"),
        slug: r.get("slug"),
        description: r.get("description"),
        archived: r.get("archived"),
        retention_days: u32::try_from(r.get::<_, i32>("retention_days")).unwrap_or(0),
        create_time: Some(timestamp(r.get("created_at"))),
    }
}

fn character_from_row(r: &Row) -> pb::Character {
    pb::Character {
        id: r.get::<_, Uuid>("id").to_string(),
        project_id: r.get::<_, Uuid>("project_id").to_string(),
        name: r.get("name"),
        description: r.get("description"),
        prompt_fragment: r.get("prompt_fragment"),
        negative_fragment: r.get("negative_fragment"),
    }
}

/// A response naming what it changed, for the audit row.
fn audited<T>(msg: T, target: String) -> Response<T> {
    let mut resp = Response::new(msg);
    resp.extensions_mut().insert(mesh_auth::AuditTarget(target));
    resp
}

fn parse_id(field: &'static str, s: &str) -> Result<Uuid, SchedulerError> {
    Uuid::parse_str(s).map_err(|_| SchedulerError::invalid(field, "must be a UUID"))
}

/// A slug from a name: lowercase ASCII letters and digits, other runs become one `-`.
pub fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.truncate(63);
    slug.trim_end_matches('-').to_owned()
}

fn check_slug(slug: &str) -> Result<String, SchedulerError> {
    let ok = !slug.is_empty()
        && slug.len() <= 63
        && slug.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && slug.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Err(SchedulerError::invalid(
            "slug",
            "must be 1 to 63 lowercase letters, digits or '-', starting with a letter or digit",
        ));
    }
    if slug == "unsorted" {
        return Err(SchedulerError::invalid("slug", "\"unsorted\" is the folder of files without a project"));
    }
    Ok(slug.to_owned())
}

fn check_retention(days: u32) -> Result<i32, SchedulerError> {
    i32::try_from(days)
        .ok()
        .filter(|d| *d <= 36_500)
        .ok_or_else(|| SchedulerError::invalid("retention_days", "must be at most 36500 (0 keeps files)"))
}

/// ALREADY_EXISTS with `why` for a unique violation, else the database error.
fn conflict(e: tokio_postgres::Error, why: impl FnOnce() -> String) -> SchedulerError {
    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        SchedulerError::AlreadyExists(why())
    } else {
        e.into()
    }
}

/// What a job gets from its project and characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composition {
    /// Prompt with the characters' fragments.
    pub prompt: String,
    /// Negative prompt with the characters' negative fragments.
    pub negative: String,
    /// The characters, in the order given.
    pub character_ids: Vec<Uuid>,
}

/// The service over the scheduler's database.
#[derive(Debug, Clone)]
pub struct Projects {
    pool: Pool,
}

impl Projects {
    /// Over `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    async fn project_row(&self, id: Uuid, owner: Option<&str>) -> Result<Row, SchedulerError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2)"
        );
        client
            .query_opt(&sql, &[&id, &owner])
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("project {id}")))
    }

    /// Checks that `owner` may submit to the project and composes the prompt: the user's
    /// text, then each character's fragment, comma-separated.
    pub async fn compose(
        &self,
        owner: &str,
        project_id: &str,
        character_ids: &[String],
        prompt: &str,
        negative: &str,
    ) -> Result<(Option<Uuid>, Composition), SchedulerError> {
        let plain = Composition {
            prompt: prompt.to_owned(),
            negative: negative.to_owned(),
            character_ids: Vec::new(),
        };
        if project_id.is_empty() {
            if let Some(c) = character_ids.first() {
                return Err(SchedulerError::invalid(
                    "character_ids",
                    format!("character {c} needs a project_id"),
                ));
            }
            return Ok((None, plain));
        }
        let project = parse_id("project_id", project_id)?;
        let row = self.project_row(project, Some(owner)).await?;
        if row.get::<_, bool>("archived") {
            return Err(SchedulerError::FailedPrecondition(format!(
                "project {project} is archived; unarchive it to submit jobs"
            )));
        }
        if character_ids.len() > MAX_CHARACTERS_PER_JOB {
            return Err(SchedulerError::invalid(
                "character_ids",
                format!("at most {MAX_CHARACTERS_PER_JOB} characters per job"),
            ));
        }
        let mut ids = Vec::with_capacity(character_ids.len());
        for c in character_ids {
            let id = parse_id("character_ids", c)?;
            if ids.contains(&id) {
                return Err(SchedulerError::invalid(
                    "character_ids",
                    format!("character {id} is named twice"),
                ));
            }
            ids.push(id);
        }
        let client = self.pool.get().await?;
        let sql =
            format!("SELECT {CHARACTER_COLUMNS} FROM characters WHERE project_id = $1 AND id = ANY($2)");
        let rows = client.query(&sql, &[&project, &ids]).await?;
        let mut composed = plain;
        for id in &ids {
            let Some(r) = rows.iter().find(|r| r.get::<_, Uuid>("id") == *id) else {
                return Err(SchedulerError::NotFound(format!("character {id} in project {project}")));
            };
            for (text, fragment) in [
                (&mut composed.prompt, r.get::<_, String>("prompt_fragment")),
                (&mut composed.negative, r.get::<_, String>("negative_fragment")),
            ] {
                if !fragment.trim().is_empty() {
                    if !text.is_empty() {
                        text.push_str(", ");
                    }
                    text.push_str(fragment.trim());
                }
            }
        }
        composed.character_ids = ids;
        Ok((Some(project), composed))
    }

    async fn character_scoped(&self, id: Uuid, owner: Option<&str>) -> Result<Row, SchedulerError> {
        let client = self.pool.get().await?;
        let sql = "SELECT c.id, c.project_id, c.name, c.description, c.prompt_fragment, c.negative_fragment \
             FROM characters c JOIN projects p ON p.id = c.project_id \
             WHERE c.id = $1 AND ($2::text IS NULL OR p.owner_id = $2)";
        client
            .query_opt(sql, &[&id, &owner])
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("character {id}")))
    }
}

struct CharacterFields {
    name: String,
    description: String,
    prompt_fragment: String,
    negative_fragment: String,
}

fn character_fields(
    name: &str,
    description: &str,
    prompt_fragment: &str,
    negative_fragment: &str,
) -> Result<CharacterFields, SchedulerError> {
    Ok(CharacterFields {
        name: text_field("name", name, 1, 120)?,
        description: text_field("description", description, 0, 2000)?,
        prompt_fragment: text_field("prompt_fragment", prompt_fragment, 0, 1000)?,
        negative_fragment: text_field("negative_fragment", negative_fragment, 0, 1000)?,
    })
}

#[tonic::async_trait]
impl ProjectService for Projects {
    async fn create_project(
        &self,
        req: Request<pb::CreateProjectRequest>,
    ) -> Result<Response<pb::CreateProjectResponse>, Status> {
        let owner = mesh_auth::caller(&req)?.user_id()?.to_string();
        let r = req.into_inner();
        let name = text_field("name", &r.name, 1, 120)?;
        let slug = check_slug(&if r.slug.is_empty() { slugify(&name) } else { r.slug })?;
        let description = text_field("description", &r.description, 0, 2000)?;
        let retention = check_retention(r.retention_days)?;
        let client = self.pool.get().await.map_err(SchedulerError::from)?;
        let sql = format!(
            "INSERT INTO projects (id, owner_id, name, slug, description, retention_days) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {PROJECT_COLUMNS}"
        );
        let row = client
            .query_one(&sql, &[&Uuid::now_v7(), &owner, &name, &slug, &description, &retention])
            .await
            .map_err(|e| conflict(e, || format!("slug: you already have a project with slug {slug:?}")))?;
        let project = project_from_row(&row);
        let target = format!("project:{}", project.id);
        Ok(audited(pb::CreateProjectResponse { project: Some(project) }, target))
    }

    async fn get_project(
        &self,
        req: Request<pb::GetProjectRequest>,
    ) -> Result<Response<pb::GetProjectResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let id = parse_id("project_id", &req.get_ref().project_id)?;
        let row = self.project_row(id, scope.as_deref()).await?;
        Ok(Response::new(pb::GetProjectResponse { project: Some(project_from_row(&row)) }))
    }

    async fn list_projects(
        &self,
        req: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let r = req.into_inner();
        let page = Page::parse(r.page_size, &r.page_token)?;
        let (after_ts, after_id) = page.after.map_or((None, None), |(t, i)| (Some(t), Some(i)));
        let client = self.pool.get().await.map_err(SchedulerError::from)?;
        let sql = format!(
            "SELECT {PROJECT_COLUMNS} FROM projects WHERE ($1::text IS NULL OR owner_id = $1) \
             AND ($2 OR NOT archived) \
             AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        );
        let rows = client
            .query(&sql, &[&scope, &r.include_archived, &after_ts, &after_id, &i64::from(page.fetch())])
            .await
            .map_err(SchedulerError::from)?;
        let mut rows: Vec<(DateTime<Utc>, Uuid, pb::Project)> =
            rows.iter().map(|r| (r.get("created_at"), r.get("id"), project_from_row(r))).collect();
        let next_page_token = page.finish(&mut rows, |(t, id, _)| (*t, *id));
        Ok(Response::new(pb::ListProjectsResponse {
            projects: rows.into_iter().map(|(_, _, p)| p).collect(),
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
        let name = r.name.as_deref().map(|n| text_field("name", n, 1, 120)).transpose()?;
        let description =
            r.description.as_deref().map(|d| text_field("description", d, 0, 2000)).transpose()?;
        let retention = r.retention_days.map(check_retention).transpose()?;
        let client = self.pool.get().await.map_err(SchedulerError::from)?;
        // The slug stays: it names the folder files already live in.
        let sql = format!(
            "UPDATE projects SET name = COALESCE($3, name), description = COALESCE($4, description), \
             retention_days = COALESCE($5, retention_days), archived = COALESCE($6, archived) \
             WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2) RETURNING {PROJECT_COLUMNS}"
        );
        let row = client
            .query_opt(&sql, &[&id, &scope, &name, &description, &retention, &r.archived])
            .await
            .map_err(SchedulerError::from)?
            .ok_or_else(|| SchedulerError::NotFound(format!("project {id}")))?;
        Ok(audited(
            pb::UpdateProjectResponse { project: Some(project_from_row(&row)) },
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
        let f = character_fields(&r.name, &r.description, &r.prompt_fragment, &r.negative_fragment)?;
        self.project_row(project, scope.as_deref()).await?;
        let client = self.pool.get().await.map_err(SchedulerError::from)?;
        let sql = format!(
            "INSERT INTO characters (id, project_id, name, description, prompt_fragment, negative_fragment) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {CHARACTER_COLUMNS}"
        );
        let row = client
            .query_one(
                &sql,
                &[
                    &Uuid::now_v7(),
                    &project,
                    &f.name,
                    &f.description,
                    &f.prompt_fragment,
                    &f.negative_fragment,
                ],
            )
            .await
            .map_err(|e| conflict(e, || format!("name: the project already has a character {:?}", f.name)))?;
        let character = character_from_row(&row);
        let target = format!("character:{}", character.id);
        Ok(audited(pb::CreateCharacterResponse { character: Some(character) }, target))
    }

    async fn list_characters(
        &self,
        req: Request<pb::ListCharactersRequest>,
    ) -> Result<Response<pb::ListCharactersResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let project = parse_id("project_id", &req.get_ref().project_id)?;
        self.project_row(project, scope.as_deref()).await?;
        let client = self.pool.get().await.map_err(SchedulerError::from)?;
        let sql =
            format!("SELECT {CHARACTER_COLUMNS} FROM characters WHERE project_id = $1 ORDER BY name, id");
        let rows = client.query(&sql, &[&project]).await.map_err(SchedulerError::from)?;
        Ok(Response::new(pb::ListCharactersResponse {
            characters: rows.iter().map(character_from_row).collect(),
        }))
    }

    async fn update_character(
        &self,
        req: Request<pb::UpdateCharacterRequest>,
    ) -> Result<Response<pb::UpdateCharacterResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let r = req.into_inner();
        let id = parse_id("character_id", &r.character_id)?;
        let current = character_from_row(&self.character_scoped(id, scope.as_deref()).await?);
        let f = character_fields(
            r.name.as_deref().unwrap_or(&current.name),
            r.description.as_deref().unwrap_or(&current.description),
            r.prompt_fragment.as_deref().unwrap_or(&current.prompt_fragment),
            r.negative_fragment.as_deref().unwrap_or(&current.negative_fragment),
        )?;
        let client = self.pool.get().await.map_err(SchedulerError::from)?;
        let sql = format!(
            "UPDATE characters SET name = $2, description = $3, prompt_fragment = $4, negative_fragment = $5 \
             WHERE id = $1 RETURNING {CHARACTER_COLUMNS}"
        );
        let row = client
            .query_opt(&sql, &[&id, &f.name, &f.description, &f.prompt_fragment, &f.negative_fragment])
            .await
            .map_err(|e| conflict(e, || format!("name: the project already has a character {:?}", f.name)))?
            .ok_or_else(|| SchedulerError::NotFound(format!("character {id}")))?;
        Ok(audited(
            pb::UpdateCharacterResponse { character: Some(character_from_row(&row)) },
            format!("character:{id}"),
        ))
    }

    async fn delete_character(
        &self,
        req: Request<pb::DeleteCharacterRequest>,
    ) -> Result<Response<pb::DeleteCharacterResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let id = parse_id("character_id", &req.get_ref().character_id)?;
        self.character_scoped(id, scope.as_deref()).await?;
        let client = self.pool.get().await.map_err(SchedulerError::from)?;
        client.execute("DELETE FROM characters WHERE id = $1", &[&id]).await.map_err(SchedulerError::from)?;
        Ok(audited(pb::DeleteCharacterResponse {}, format!("character:{id}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_come_from_names_and_are_checked() {
        assert_eq!(slugify("Opening Scene!"), "opening-scene");
        assert_eq!(slugify("  Ep. 01 — Sakura  "), "ep-01-sakura");
        assert_eq!(slugify("桜"), "");
        assert!(check_slug("opening-scene").is_ok());
        for bad in ["", "-x", "Upper", "a b", "unsorted", &"x".repeat(64)] {
            let err = check_slug(bad).unwrap_err();
            assert!(err.to_string().starts_with("slug: "), "{bad:?}: {err}");
        }
    }
}
