//! `login`, `logout`, `whoami`.

use sakuga_proto::v1 as pb;

use super::shared::read_password;
use crate::{CliError, output, session::Session};

/// Logs in, asking for what the command line did not give.
pub(super) async fn login(
    s: &Session,
    username: Option<&str>,
    password_stdin: bool,
    json: bool,
) -> Result<(), CliError> {
    let username = if let Some(u) = username {
        u.to_owned()
    } else {
        eprint!("username: ");
        let mut u = String::new();
        std::io::stdin().read_line(&mut u).map_err(|e| CliError::other(e.to_string()))?;
        u.trim().to_owned()
    };
    let password = read_password(password_stdin, "password: ")?;
    let user = s.login(&username, &password).await?;
    if json {
        output::print(true, &output::User::from(&user), &[]);
    } else {
        println!("logged in to {} as {}", s.name, user.username);
    }
    Ok(())
}

/// Revokes the stored tokens.
pub(super) async fn logout(s: &Session, json: bool) -> Result<(), CliError> {
    let was = s.logout().await?;
    if !json {
        println!("{}", if was { "logged out" } else { "was not logged in" });
    }
    Ok(())
}

/// Who the credential belongs to.
pub(super) async fn whoami(s: &Session, json: bool) -> Result<(), CliError> {
    let me = s.auth().await?.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
    output::print(json, &output::User::from(&me.user.unwrap_or_default()), &[]);
    Ok(())
}
