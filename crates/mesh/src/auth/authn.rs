//! Authentication: who is calling. A person by the bearer credential (access token or API
//! key, checked by the [`Verifier`]); a mesh service by its certificate. Which of the two
//! the method takes comes from its rule: public methods read no credential at all, and
//! service-only methods read only the certificate, so a person's token never stands in
//! for a service identity. Unknown methods are passed on unauthenticated (authorization
//! refuses them without touching Redis or the database).

use std::sync::Arc;

use tonic::body::Body;

use super::{
    Access, Caller, Refusal, Verifier,
    context::Call,
    layer::Step,
    limit::{Decided, tier_of},
};
use crate::{
    identity::PeerIdentity,
    ratelimit::{Class, RateLimiter},
};

/// The authentication step.
#[derive(Debug, Clone)]
pub struct Authn {
    pub(crate) verifier: Option<Arc<Verifier>>,
    /// The rate limiter, asked here for a bearer credential's caller while the revocation
    /// check runs (one Redis round trip for both); the limit step uses its decision.
    pub(crate) limiter: Option<RateLimiter>,
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
    /// Who is calling, and for a bearer credential the rate-limit decision of `class` for
    /// that caller, taken at the same time as the revocation check.
    async fn caller(
        &self,
        access: Access,
        class: Option<Class>,
        peer: Option<&PeerIdentity>,
        headers: &http::HeaderMap,
    ) -> Result<(Caller, Option<Decided>), Refusal> {
        match access {
            Access::Public => Ok((Caller::Anonymous, None)),
            Access::Services(_) => match peer {
                Some(PeerIdentity::Service(name)) => Ok((Caller::Service(name.clone()), None)),
                Some(person @ PeerIdentity::Person(_)) => {
                    Err(Refusal::WrongIdentity { presented: person.uri() })
                }
                None => Err(Refusal::NoMeshIdentity),
            },
            Access::Authenticated | Access::User | Access::Admin => match bearer_of(headers)? {
                Some(bearer) => {
                    let verifier = self.verifier.as_ref().ok_or(Refusal::CredentialsNotAccepted)?;
                    let limiter = self.limiter.as_ref().zip(class);
                    verifier
                        .verify_and(&bearer, |caller| {
                            let (tier, subject) = tier_of(caller);
                            async move {
                                let (limiter, class) = limiter?;
                                let decision = limiter.check_tier(class, tier, &subject).await;
                                Some(Decided(decision.map_err(|e| e.to_string())))
                            }
                        })
                        .await
                }
                None => match peer {
                    Some(PeerIdentity::Service(name)) if access == Access::Authenticated => {
                        Ok((Caller::Service(name.clone()), None))
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
        let (access, class, peer) = match req.extensions().get::<Call>() {
            Some(Call { method: Some(m), peer, .. }) => (m.rule.access, m.rule.class, peer.clone()),
            _ => return Ok(Caller::Anonymous),
        };
        let (caller, decided) = self.caller(access, class, peer.as_ref(), req.headers()).await?;
        req.extensions_mut().insert(caller.clone());
        if let Some(decided) = decided {
            req.extensions_mut().insert(decided);
        }
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

    /// Who is calling, with no bearer credential (so no rate-limit decision either).
    async fn who(authn: &Authn, access: Access, peer: Option<&PeerIdentity>) -> Result<Caller, Refusal> {
        let (caller, decided) = authn.caller(access, None, peer, &http::HeaderMap::new()).await?;
        assert!(decided.is_none(), "no rate-limit decision without a bearer credential");
        Ok(caller)
    }

    #[tokio::test]
    async fn a_person_certificate_never_counts_as_a_service() {
        let authn = Authn { verifier: None, limiter: None };
        let alice = PeerIdentity::Person("alice".into());
        let generator = PeerIdentity::Service("generator".into());
        let only_generators = Access::Services(&["generator"]);
        assert!(matches!(
            who(&authn, only_generators, Some(&alice)).await,
            Err(Refusal::WrongIdentity { .. })
        ));
        assert_eq!(who(&authn, only_generators, None).await, Err(Refusal::NoMeshIdentity));
        assert_eq!(
            who(&authn, only_generators, Some(&generator)).await,
            Ok(Caller::Service("generator".into()))
        );
        assert_eq!(who(&authn, Access::Authenticated, Some(&alice)).await, Err(Refusal::MissingCredentials));
        assert_eq!(
            who(&authn, Access::Authenticated, Some(&generator)).await,
            Ok(Caller::Service("generator".into()))
        );
        assert_eq!(who(&authn, Access::User, Some(&generator)).await, Err(Refusal::MissingCredentials));
    }
}
