//! Authorization: the caller against the method's rule in the table ([`super::rules`]).
//! Any path that is not in the table is refused here, before rate limits or handlers.

use tonic::body::Body;

use super::{Access, Caller, Refusal, Role, context::Call, layer::Step};
use crate::identity::spiffe_id;

/// The authorization step.
#[derive(Debug, Clone)]
pub struct Authz;

/// Whether `caller` may call a method with `access`.
pub(crate) fn authorize(access: Access, caller: &Caller) -> Result<(), Refusal> {
    match (access, caller) {
        (Access::Public, _)
        | (Access::Authenticated, Caller::User { .. } | Caller::Service(_))
        | (Access::User, Caller::User { .. })
        | (Access::Admin, Caller::User { role: Role::Admin, .. }) => Ok(()),
        (Access::Services(allowed), Caller::Service(name)) if allowed.contains(&name.as_str()) => Ok(()),
        (Access::Services(_), Caller::Service(name)) => {
            Err(Refusal::WrongIdentity { presented: spiffe_id(name) })
        }
        (Access::Services(_), Caller::User { .. }) => {
            Err(Refusal::WrongIdentity { presented: "a person's credential".to_owned() })
        }
        (Access::Admin, Caller::User { .. }) => Err(Refusal::AdminRequired),
        (Access::Authenticated | Access::User | Access::Admin | Access::Services(_), Caller::Anonymous) => {
            Err(Refusal::MissingCredentials)
        }
        (Access::User | Access::Admin, Caller::Service(_)) => Err(Refusal::PersonRequired),
    }
}

impl Step for Authz {
    type State = ();

    async fn before(&self, req: &mut http::Request<Body>) -> Result<(), Refusal> {
        let Some(method) = req.extensions().get::<Call>().and_then(|c| c.method) else {
            return Err(Refusal::UnknownMethod);
        };
        let caller = req.extensions().get::<Caller>().unwrap_or(&Caller::Anonymous);
        authorize(method.rule.access, caller)
    }

    async fn after(&self, (): (), _resp: &mut http::Response<Body>) {}
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn the_table_decides() {
        let user =
            Caller::User { id: Uuid::nil(), role: Role::User, jti: None, expires_at: None, api_key: None };
        let admin =
            Caller::User { id: Uuid::nil(), role: Role::Admin, jti: None, expires_at: None, api_key: None };
        let generator = Caller::Service("generator".into());
        let scheduler = Caller::Service("scheduler".into());
        let gens = Access::Services(&["generator"]);
        assert_eq!(authorize(gens, &generator), Ok(()));
        assert!(matches!(authorize(gens, &scheduler), Err(Refusal::WrongIdentity { .. })));
        assert!(matches!(authorize(gens, &admin), Err(Refusal::WrongIdentity { .. })));
        assert_eq!(authorize(Access::Admin, &user), Err(Refusal::AdminRequired));
        assert_eq!(authorize(Access::Admin, &admin), Ok(()));
        assert_eq!(authorize(Access::User, &generator), Err(Refusal::PersonRequired));
        assert_eq!(authorize(Access::Authenticated, &generator), Ok(()));
        assert_eq!(authorize(Access::User, &Caller::Anonymous), Err(Refusal::MissingCredentials));
        assert_eq!(authorize(Access::Public, &Caller::Anonymous), Ok(()));
    }
}
