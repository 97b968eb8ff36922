//! `admin …`: users, API keys and the audit log.

use sakuga_proto::v1 as pb;

use super::shared::read_password;
use crate::{
    CliError,
    args::{AdminCmd, KeysCmd, UsersCmd},
    output,
    session::Session,
};

/// Runs an `admin` command.
pub(super) async fn run(s: &Session, cmd: &AdminCmd, json: bool) -> Result<(), CliError> {
    let mut auth = s.auth().await?;
    match cmd {
        AdminCmd::Users(UsersCmd::List) => {
            let resp = auth
                .list_users(pb::ListUsersRequest { page_size: 100, page_token: String::new() })
                .await?
                .into_inner();
            let rows: Vec<output::User> = output::all(&resp.users);
            output::print(json, &rows, &["id", "username", "role", "disabled", "created"]);
        }
        AdminCmd::Users(UsersCmd::Create { username, admin, password_stdin }) => {
            let password = read_password(*password_stdin, "password for the new user: ")?;
            let role = if *admin { pb::Role::Admin } else { pb::Role::User };
            let user = auth
                .create_user(pb::CreateUserRequest {
                    username: username.clone(),
                    password,
                    role: role.into(),
                })
                .await?
                .into_inner()
                .user;
            output::print(json, &output::User::from(&user.unwrap_or_default()), &[]);
        }
        AdminCmd::Users(UsersCmd::Disable { id } | UsersCmd::Enable { id }) => {
            let disabled = matches!(cmd, AdminCmd::Users(UsersCmd::Disable { .. }));
            let user = auth
                .set_user_disabled(pb::SetUserDisabledRequest { user_id: id.clone(), disabled })
                .await?
                .into_inner()
                .user;
            output::print(json, &output::User::from(&user.unwrap_or_default()), &[]);
        }
        AdminCmd::Keys(KeysCmd::List { user }) => {
            let resp =
                auth.list_api_keys(pb::ListApiKeysRequest { user_id: user.clone() }).await?.into_inner();
            let rows: Vec<output::ApiKey> = output::all(&resp.keys);
            output::print(json, &rows, &["id", "name", "prefix", "revoked", "created", "last_used"]);
        }
        AdminCmd::Keys(KeysCmd::Create { name }) => {
            let resp = auth
                .create_api_key(pb::CreateApiKeyRequest { name: name.clone(), expire_time: None })
                .await?
                .into_inner();
            if json {
                let key = output::ApiKey::with_secret(&resp.key.unwrap_or_default(), resp.secret);
                output::print(true, &key, &[]);
            } else {
                println!("{}", resp.secret);
                eprintln!("this secret is shown once; use it with --api-key or SAKUGA_API_KEY");
            }
        }
        AdminCmd::Keys(KeysCmd::Revoke { id }) => {
            auth.revoke_api_key(pb::RevokeApiKeyRequest { key_id: id.clone() }).await?;
            if !json {
                println!("revoked {id}");
            }
        }
        AdminCmd::Audit { actor, action, limit } => {
            let resp = auth
                .list_audit_events(pb::ListAuditEventsRequest {
                    page_size: *limit,
                    page_token: String::new(),
                    actor: actor.clone(),
                    action: action.clone(),
                })
                .await?
                .into_inner();
            let rows: Vec<output::Audit> = output::all(&resp.events);
            output::print(json, &rows, &["time", "actor", "action", "target", "result"]);
        }
    }
    Ok(())
}
