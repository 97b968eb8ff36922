//! AuthService. So far it answers WhoAmI for callers identified by their mesh
//! certificate; logins, tokens, API keys and user management are not implemented yet and
//! answer UNIMPLEMENTED.

use sakuga_mesh::identity;
use sakuga_proto::v1::{WhoAmIRequest, WhoAmIResponse, auth_service_server::AuthService};
use tonic::{Request, Response, Status};

/// The AuthService implementation.
#[derive(Debug, Clone, Default)]
pub struct Api;

#[tonic::async_trait]
impl AuthService for Api {
    async fn who_am_i(&self, req: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        let id = identity::peer_identity(&req)
            .ok_or_else(|| Status::unauthenticated("client certificate carries no mesh identity"))?;
        Ok(Response::new(WhoAmIResponse { user: None, service_identity: id.uri() }))
    }
}
