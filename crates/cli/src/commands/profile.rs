//! `profile …`: where the services are and which certificate to use. No connection needed.

use crate::{
    CliError,
    args::ProfileCmd,
    output,
    profile::{self, ConfigFile},
};

/// Runs a `profile` command.
pub(super) fn run(cmd: &ProfileCmd, json: bool) -> Result<(), CliError> {
    let mut config = ConfigFile::load()?;
    match cmd {
        ProfileCmd::ImportDev { dir, name } => {
            let mut p = profile::from_stack_env(dir)?;
            for path in [&mut p.ca, &mut p.cert, &mut p.key] {
                if let Ok(abs) = std::fs::canonicalize(&*path) {
                    *path = abs;
                }
            }
            config.profiles.insert(name.clone(), p);
            config.default.get_or_insert_with(|| name.clone());
            config.save()?;
            println!("profile {name:?} imported from {}; next: `sakuga login`", dir.display());
        }
        ProfileCmd::Add { name, auth, scheduler, organizer, ca, cert, key } => {
            config.profiles.insert(
                name.clone(),
                profile::Profile {
                    auth: auth.clone(),
                    scheduler: scheduler.clone(),
                    organizer: organizer.clone(),
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                },
            );
            config.default.get_or_insert_with(|| name.clone());
            config.save()?;
            println!("profile {name:?} saved");
        }
        ProfileCmd::List => {
            let rows: Vec<output::ProfileRow> = config
                .profiles
                .iter()
                .map(|(n, p)| output::ProfileRow {
                    auth: p.auth.clone(),
                    default: config.default.as_deref() == Some(n.as_str()),
                    name: n.clone(),
                    organizer: p.organizer.clone(),
                    scheduler: p.scheduler.clone(),
                })
                .collect();
            output::print(json, &rows, &["name", "default", "auth", "scheduler", "organizer"]);
        }
        ProfileCmd::Use { name } => {
            if !config.profiles.contains_key(name) {
                return Err(CliError::usage(format!("no profile named {name:?}")));
            }
            config.default = Some(name.clone());
            config.save()?;
            println!("default profile: {name}");
        }
    }
    Ok(())
}
