//! Connections to the services (mTLS from the profile's files) and the credential every
//! call carries: an API key, or the stored access token, refreshed when it is about to
//! expire.

use std::sync::Arc;

use sakuga_mesh::tls::MeshTls;
use sakuga_proto::v1::{
    LoginRequest, LogoutRequest, RefreshRequest, auth_service_client::AuthServiceClient,
    file_service_client::FileServiceClient, job_service_client::JobServiceClient,
    project_service_client::ProjectServiceClient, webhook_service_client::WebhookServiceClient,
};
use tonic::{
    Code,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use crate::{
    CliError,
    profile::{self, Profile, Tokens},
};

/// Adds `authorization: Bearer <credential>` to every call.
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A client whose calls carry the credential.
pub type Authed = InterceptedService<Channel, Bearer>;

/// A profile, connected.
#[derive(Debug)]
pub struct Session {
    /// Profile name.
    pub name: String,
    /// Its settings.
    pub profile: Profile,
    tls: Arc<MeshTls>,
    api_key: Option<String>,
}

fn read(path: &std::path::Path, what: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| {
        CliError::usage(format!("{what} {}: {e} (fix the profile with `sakuga profile add`)", path.display()))
    })
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Session {
    /// Loads the mTLS files of `profile`.
    pub fn open(name: String, profile: Profile, api_key: Option<String>) -> Result<Self, CliError> {
        sakuga_mesh::tls::install_crypto_provider();
        let tls = MeshTls::from_pem(
            "cli",
            &read(&profile.cert, "client certificate")?,
            &read(&profile.key, "client key")?,
            &read(&profile.ca, "CA certificate")?,
        )
        .map_err(|e| CliError::usage(format!("profile {name:?}: {e}")))?;
        Ok(Self { name, profile, tls: Arc::new(tls), api_key: api_key.filter(|k| !k.is_empty()) })
    }

    /// A channel to the service `peer` at `addr`; the server must present that service's
    /// own SPIFFE id (a certificate of another service, or a person's, fails the handshake).
    fn channel(&self, addr: &str, peer: &str) -> Result<Channel, CliError> {
        self.tls.channel_to(addr, peer).map_err(|e| CliError::usage(format!("profile {:?}: {e}", self.name)))
    }

    fn authed(&self, addr: &str, peer: &str, credential: Option<&str>) -> Result<Authed, CliError> {
        let value = credential
            .map(|c| format!("Bearer {c}").parse::<MetadataValue<Ascii>>())
            .transpose()
            .map_err(|_| CliError::auth("the credential is not valid text"))?;
        Ok(InterceptedService::new(self.channel(addr, peer)?, Bearer(value)))
    }

    /// The credential for a call: the API key, or a fresh access token.
    pub async fn credential(&self) -> Result<String, CliError> {
        if let Some(key) = &self.api_key {
            return Ok(key.clone());
        }
        let Some(tokens) = profile::load_tokens(&self.name)? else {
            return Err(CliError::auth(format!(
                "not logged in to {:?}: run `sakuga login` (or use --api-key-file / $SAKUGA_API_KEY)",
                self.name
            )));
        };
        if tokens.access_expires - 30 > now() {
            return Ok(tokens.access_token);
        }
        let mut auth = AuthServiceClient::new(self.channel(&self.profile.auth, "auth")?);
        match auth.refresh(RefreshRequest { refresh_token: tokens.refresh_token.clone() }).await {
            Ok(resp) => {
                let pair = resp.into_inner().tokens.unwrap_or_default();
                let fresh = Tokens {
                    username: tokens.username,
                    access_token: pair.access_token,
                    access_expires: pair.access_expire_time.map_or(0, |t| t.seconds),
                    refresh_token: pair.refresh_token,
                };
                profile::save_tokens(&self.name, &fresh)?;
                Ok(fresh.access_token)
            }
            Err(s) if s.code() == Code::Unauthenticated => {
                let _ = profile::forget_tokens(&self.name);
                Err(CliError::auth("session expired: run `sakuga login`"))
            }
            Err(s) => Err(CliError::from(s)),
        }
    }

    /// Logs in and stores the tokens.
    pub async fn login(&self, username: &str, password: &str) -> Result<sakuga_proto::v1::User, CliError> {
        let mut auth = AuthServiceClient::new(self.channel(&self.profile.auth, "auth")?);
        let resp = auth
            .login(LoginRequest { username: username.to_owned(), password: password.to_owned() })
            .await?
            .into_inner();
        let pair = resp.tokens.unwrap_or_default();
        profile::save_tokens(
            &self.name,
            &Tokens {
                username: username.to_owned(),
                access_token: pair.access_token,
                access_expires: pair.access_expire_time.map_or(0, |t| t.seconds),
                refresh_token: pair.refresh_token,
            },
        )?;
        Ok(resp.user.unwrap_or_default())
    }

    /// Revokes the refresh token (best effort) and forgets the tokens.
    pub async fn logout(&self) -> Result<bool, CliError> {
        let Some(tokens) = profile::load_tokens(&self.name)? else { return Ok(false) };
        let mut auth = self.auth().await.ok();
        if let Some(auth) = auth.as_mut() {
            let _ = auth.logout(LogoutRequest { refresh_token: tokens.refresh_token }).await;
        }
        profile::forget_tokens(&self.name)?;
        Ok(true)
    }

    /// AuthService with the credential.
    pub async fn auth(&self) -> Result<AuthServiceClient<Authed>, CliError> {
        let c = self.credential().await?;
        Ok(AuthServiceClient::new(self.authed(&self.profile.auth, "auth", Some(&c))?))
    }

    /// JobService.
    pub async fn jobs(&self) -> Result<JobServiceClient<Authed>, CliError> {
        let c = self.credential().await?;
        Ok(JobServiceClient::new(self.authed(&self.profile.scheduler, "scheduler", Some(&c))?))
    }

    /// ProjectService.
    pub async fn projects(&self) -> Result<ProjectServiceClient<Authed>, CliError> {
        let c = self.credential().await?;
        Ok(ProjectServiceClient::new(self.authed(&self.profile.scheduler, "scheduler", Some(&c))?))
    }

    /// WebhookService (served by the scheduler).
    pub async fn webhooks(&self) -> Result<WebhookServiceClient<Authed>, CliError> {
        let c = self.credential().await?;
        Ok(WebhookServiceClient::new(self.authed(&self.profile.scheduler, "scheduler", Some(&c))?))
    }

    /// FileService.
    pub async fn files(&self) -> Result<FileServiceClient<Authed>, CliError> {
        let c = self.credential().await?;
        Ok(FileServiceClient::new(self.authed(&self.profile.organizer, "organizer", Some(&c))?))
    }
}
