//! Authentication: who is calling. A person by the bearer credential (access token or API
//! key, checked by the [`Verifier`]); a mesh service by its certificate. Which of the two
//! the method takes comes from its rule: public methods read no credential at all, and
//! service-only methods read only the certificate, so a person's token never stands in
//! for a service identity. Unknown methods are passed on unauthenticated (authorization
//! refuses them without touching Redis or the database).

use std::sync::Arc;

use tonic::body::Body;

use super::{Access, Caller, Refusal, Verifier, context::Call, layer::Step};
use crate::identity::PeerIdentity;

/// The authentication step.
#[derive(Debug, Clone)]
pub struct Authn {
    pub(crate) verifier: Option<Arc<Verifier>>,
}

/// Extracts `Bearer <credential>` from the authorization header.
pub(crate) fn bearer_of(headers: &http::HeaderMap) -> Result<Option<String>, Refusal> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else { return Ok(None) };
    let value = value.to_str().map_err(|_| Refusal::MalformedAuthorization)?;
    let (scheme, credential) = value.split_once(' ').ok_or(Refusal::MalformedAuthorization)?;
    if !scheme.eq_ignore_ascii_case("bearer") || credential.trim().is_empty() {
        return Err(Refusal::MalformedAuthorization);
    }
    Ok(Some(credential.trim().to_owned()))
}

impl Authn {
    async fn caller(
        &self,
        access: Access,
        peer: Option<&PeerIdentity>,
        headers: &http::HeaderMap,
    ) -> Result<Caller, Refusal> {
        match access {
            Access::Public => Ok(Caller::Anonymous),
            Access::Services(_) => match peer {
                Some(PeerIdentity::Service(name)) => Ok(Caller::Service(name.clone())),
                Some(person @ PeerIdentity::Person(_)) => {
                    Err(Refusal::WrongIdentity { presented: person.uri() })
                }
                None => Err(Refusal::NoMeshIdentity),
            },
            Access::Authenticated | Access::User | Access::Admin => match bearer_of(headers)? {
                Some(bearer) => {
                    let verifier = self.verifier.as_ref().ok_or(Refusal::CredentialsNotAccepted)?;
                    verifier.verify(&bearer).await
                }
                None => match peer {
                    Some(PeerIdentity::Service(name)) if access == Access::Authenticated => {
                        Ok(Caller::Service(name.clone()))
                    }
                    _ => Err(Refusal::MissingCredentials),
                },
            },
        }
    }
}

impl Step for Authn {
    type State = Caller;

    async fn before(&self, req: &mut http::Request<Body>) -> Result<Self::State, Refusal> {
        let (access, peer) = match req.extensions().get::<Call>() {
            Some(Call { method: Some(m), peer, .. }) => (m.rule.access, peer.clone()),
            _ => return Ok(Caller::Anonymous),
        };
        let caller = self.caller(access, peer.as_ref(), req.headers()).await?;
        req.extensions_mut().insert(caller.clone());
        Ok(caller)
    }

    async fn after(&self, caller: Self::State, resp: &mut http::Response<Body>) {
        // For the audit step, which runs outside this one.
        resp.extensions_mut().insert(caller);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer_of(&h).unwrap(), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer_of(&h).unwrap().as_deref(), Some("abc"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_of(&h).unwrap_err(), Refusal::MalformedAuthorization);
    }

    #[tokio::test]
    async fn a_person_certificate_never_counts_as_a_service() {
        let authn = Authn { verifier: None };
        let h = http::HeaderMap::new();
        let alice = PeerIdentity::Person("alice".into());
        let generator = PeerIdentity::Service("generator".into());
        let only_generators = Access::Services(&["generator"]);
        assert!(matches!(
            authn.caller(only_generators, Some(&alice), &h).await,
            Err(Refusal::WrongIdentity { .. })
        ));
        assert_eq!(authn.caller(only_generators, None, &h).await, Err(Refusal::NoMeshIdentity));
        assert_eq!(
            authn.caller(only_generators, Some(&generator), &h).await,
            Ok(Caller::Service("generator".into()))
        );
        assert_eq!(
            authn.caller(Access::Authenticated, Some(&alice), &h).await,
            Err(Refusal::MissingCredentials)
        );
        assert_eq!(
            authn.caller(Access::Authenticated, Some(&generator), &h).await,
            Ok(Caller::Service("generator".into()))
        );
        assert_eq!(authn.caller(Access::User, Some(&generator), &h).await, Err(Refusal::MissingCredentials));
    }
}
