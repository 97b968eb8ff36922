//! AuthService: translates the wire to the domain (`login`, `tokens`, `users`,
//! `api_keys`) and its results back, and marks each response with its audit target.

use chrono::Utc;
use sakuga_mesh::{
    api::{Page, from_timestamp},
    auth::{self as mesh_auth, Caller, Role, audited},
};
use sakuga_proto::v1::{self as pb, auth_service_server::AuthService};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    api_keys::check_key_name,
    convert::{audit_to_pb, jwk_to_pb, key_to_pb, parse_id, role_from_pb, tokens_to_pb, user_to_pb},
    error::AuthError,
    service::{Auth, Origin},
};

/// AuthService over the domain.
#[derive(Debug, Clone)]
pub struct Api {
    /// The use cases.
    pub auth: Auth,
}

/// The gRPC services this module serves (health and reflection name them).
pub const SERVICES: &[&str] = &[sakuga_proto::service_names::AUTH];

/// The tonic service over `api`.
pub fn server(api: Api) -> sakuga_proto::v1::auth_service_server::AuthServiceServer<Api> {
    sakuga_proto::v1::auth_service_server::AuthServiceServer::new(api)
}

/// Where `req` came from, for the audit log.
fn origin<T>(req: &Request<T>) -> Origin {
    Origin { peer: mesh_auth::peer_addr(req), request_id: mesh_auth::request_id(req) }
}

#[tonic::async_trait]
impl AuthService for Api {
    async fn login(&self, req: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let from = origin(&req);
        let r = req.get_ref();
        let (user, tokens) = self.auth.login(&from, &r.username, &r.password).await?;
        Ok(audited(
            pb::LoginResponse { tokens: Some(tokens_to_pb(tokens)), user: Some(user_to_pb(&user)) },
            user.id.to_string(),
        ))
    }

    async fn refresh(
        &self,
        req: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let (user, tokens) = self.auth.refresh(&origin(&req), &req.get_ref().refresh_token).await?;
        Ok(audited(pb::RefreshResponse { tokens: Some(tokens_to_pb(tokens)) }, user.id.to_string()))
    }

    async fn logout(&self, req: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        let caller = mesh_auth::caller(&req)?;
        let user_id = caller.user_id()?;
        self.auth.logout(user_id, &caller, &req.get_ref().refresh_token).await?;
        Ok(audited(pb::LogoutResponse {}, user_id.to_string()))
    }

    async fn get_jwks(
        &self,
        _req: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse {
            keys: self.auth.keys.public.iter().map(jwk_to_pb).collect(),
            issuer: mesh_auth::ISSUER.to_owned(),
            audience: mesh_auth::AUDIENCE.to_owned(),
        }))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        match mesh_auth::caller(&req)? {
            Caller::User { id, .. } => {
                let user = self.auth.store.user(id).await?;
                Ok(Response::new(pb::WhoAmIResponse {
                    user: Some(user_to_pb(&user)),
                    service_identity: String::new(),
                }))
            }
            Caller::Service(name) => Ok(Response::new(pb::WhoAmIResponse {
                user: None,
                service_identity: sakuga_mesh::identity::spiffe_id(&name),
            })),
            Caller::Anonymous => Err(AuthError::Unauthenticated("no authenticated caller").into()),
        }
    }

    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let r = req.into_inner();
        crate::users::check_username(&r.username)?;
        crate::users::check_new_password(&r.password)?;
        let role = if r.role == 0 { Role::User } else { role_from_pb(r.role, "role")? };
        let user = self.auth.create_user(&r.username, r.password, role).await?;
        Ok(audited(pb::CreateUserResponse { user: Some(user_to_pb(&user)) }, user.id.to_string()))
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let r = req.into_inner();
        let page = Page::parse(r.page_size, &r.page_token)?;
        let mut users = self.auth.store.list_users(&page).await?;
        let next_page_token = page.finish(&mut users, |u| (u.created_at, u.id));
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(user_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn set_user_role(
        &self,
        req: Request<pb::SetUserRoleRequest>,
    ) -> Result<Response<pb::SetUserRoleResponse>, Status> {
        let r = req.into_inner();
        let id = parse_id("user_id", &r.user_id)?;
        let role = role_from_pb(r.role, "role")?;
        let user = self.auth.set_role(id, role).await?;
        Ok(audited(pb::SetUserRoleResponse { user: Some(user_to_pb(&user)) }, id.to_string()))
    }

    async fn set_user_disabled(
        &self,
        req: Request<pb::SetUserDisabledRequest>,
    ) -> Result<Response<pb::SetUserDisabledResponse>, Status> {
        let r = req.into_inner();
        let id = parse_id("user_id", &r.user_id)?;
        let user = self.auth.set_disabled(id, r.disabled).await?;
        Ok(audited(pb::SetUserDisabledResponse { user: Some(user_to_pb(&user)) }, id.to_string()))
    }

    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let user_id = mesh_auth::caller(&req)?.user_id()?;
        let r = req.into_inner();
        let name = check_key_name(&r.name)?;
        let expires = from_timestamp("expire_time", r.expire_time)?;
        if expires.is_some_and(|e| e <= Utc::now()) {
            return Err(AuthError::invalid("expire_time", "must be in the future").into());
        }
        let (key, secret) = self.auth.create_api_key(user_id, name, expires).await?;
        Ok(audited(pb::CreateApiKeyResponse { key: Some(key_to_pb(&key)), secret }, key.id.to_string()))
    }

    async fn list_api_keys(
        &self,
        req: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let caller = mesh_auth::caller(&req)?;
        let own = caller.user_id()?;
        let r = req.into_inner();
        let user = if r.user_id.is_empty() {
            own
        } else {
            let other = parse_id("user_id", &r.user_id)?;
            if other != own && caller.owner_scope()?.is_some() {
                return Err(AuthError::PermissionDenied("only admins list other users' keys").into());
            }
            other
        };
        let keys = self.auth.store.list_api_keys(user).await?;
        Ok(Response::new(pb::ListApiKeysResponse { keys: keys.iter().map(key_to_pb).collect() }))
    }

    async fn revoke_api_key(
        &self,
        req: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let caller = mesh_auth::caller(&req)?;
        let id = parse_id("key_id", &req.get_ref().key_id)?;
        let owner = caller
            .owner_scope()?
            .map(|o| Uuid::parse_str(&o))
            .transpose()
            .map_err(|_| Status::internal("internal error"))?;
        self.auth.store.revoke_api_key(id, owner).await?;
        Ok(audited(pb::RevokeApiKeyResponse {}, id.to_string()))
    }

    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let r = req.into_inner();
        let size = Page::parse(r.page_size, "")?.size;
        let before = if r.page_token.is_empty() {
            None
        } else {
            Some(
                r.page_token
                    .parse::<i64>()
                    .map_err(|_| AuthError::invalid("page_token", "not a token from a previous response"))?,
            )
        };
        let actor = Some(r.actor.as_str()).filter(|s| !s.is_empty());
        let action = Some(r.action.as_str()).filter(|s| !s.is_empty());
        let mut rows = self.auth.store.list_audit(actor, action, before, size + 1).await?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let next_page_token =
            if more { rows.last().map(|r| r.id.to_string()).unwrap_or_default() } else { String::new() };
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: rows.into_iter().map(audit_to_pb).collect(),
            next_page_token,
        }))
    }
}
