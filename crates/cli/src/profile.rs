//! Profiles (`config.toml`: endpoints and the mTLS files of each) and stored tokens
//! (`tokens/<profile>.json`, mode 0600), under `$SAKUGA_CONFIG_DIR`, else
//! `$XDG_CONFIG_HOME/sakuga`, else `~/.config/sakuga`.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::CliError;

/// One deployment to talk to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Auth service `host:port`.
    pub auth: String,
    /// Scheduler `host:port` (jobs, projects).
    pub scheduler: String,
    /// Organizer `host:port` (files).
    pub organizer: String,
    /// CA certificate (PEM) the services' certificates chain to.
    pub ca: PathBuf,
    /// Client certificate (PEM).
    pub cert: PathBuf,
    /// Client key (PEM).
    pub key: PathBuf,
}

/// `config.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Profile used without `--profile`.
    #[serde(default)]
    pub default: Option<String>,
    /// Profiles by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// Tokens of a profile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tokens {
    /// Who.
    pub username: String,
    /// Access token.
    pub access_token: String,
    /// Its expiry, seconds since the epoch.
    pub access_expires: i64,
    /// Refresh token.
    pub refresh_token: String,
}

/// The configuration folder.
pub fn config_dir() -> Result<PathBuf, CliError> {
    if let Some(d) = std::env::var_os("SAKUGA_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("sakuga"));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).ok_or_else(|| {
        CliError::usage("HOME is not set; set SAKUGA_CONFIG_DIR to a folder for the configuration")
    })?;
    Ok(PathBuf::from(home).join(".config").join("sakuga"))
}

fn io_err(path: &Path, e: &std::io::Error) -> CliError {
    CliError::other(format!("{}: {e}", path.display()))
}

/// Writes `text` to `path` with mode 0600 (the file is private before anything is written).
fn write_private(path: &Path, text: &str) -> Result<(), CliError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, &e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(|e| io_err(&tmp, &e))?;
    f.write_all(text.as_bytes()).map_err(|e| io_err(&tmp, &e))?;
    f.sync_all().map_err(|e| io_err(&tmp, &e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, &e))
}

impl ConfigFile {
    fn path() -> Result<PathBuf, CliError> {
        Ok(config_dir()?.join("config.toml"))
    }

    /// Reads the file (empty when there is none).
    pub fn load() -> Result<Self, CliError> {
        let path = Self::path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).map_err(|e| CliError::usage(format!("{}: {e}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(io_err(&path, &e)),
        }
    }

    /// Writes the file.
    pub fn save(&self) -> Result<(), CliError> {
        let text = toml::to_string_pretty(self).map_err(|e| CliError::other(e.to_string()))?;
        write_private(&Self::path()?, &text)
    }

    /// The profile to use: `name`, else `$SAKUGA_PROFILE`, else the default, else the only one.
    pub fn pick(&self, name: Option<&str>) -> Result<(String, Profile), CliError> {
        let wanted = name
            .map(str::to_owned)
            .or_else(|| std::env::var("SAKUGA_PROFILE").ok().filter(|p| !p.is_empty()))
            .or_else(|| self.default.clone())
            .or_else(|| (self.profiles.len() == 1).then(|| self.profiles.keys().next().cloned()).flatten());
        let Some(wanted) = wanted else {
            return Err(CliError::usage(
                "no profile configured: run `sakuga profile import-dev` (local stack) or `sakuga profile add`",
            ));
        };
        let profile = self.profiles.get(&wanted).cloned().ok_or_else(|| {
            CliError::usage(format!(
                "no profile named {wanted:?} (have: {}); see `sakuga profile list`",
                self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        Ok((wanted, profile))
    }
}

/// Reads the local stack's `stack.env` (written by `make up`) into a profile.
pub fn from_stack_env(dev_dir: &Path) -> Result<Profile, CliError> {
    let path = dev_dir.join("stack.env");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        CliError::usage(format!("{}: {e} (is the local stack up? run `make up`)", path.display()))
    })?;
    let mut vars = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((k, v)) = line.split_once('=') {
            vars.insert(k.trim().to_owned(), v.trim().trim_matches(['\'', '"']).to_owned());
        }
    }
    let get = |k: &str| {
        vars.get(k).cloned().ok_or_else(|| CliError::usage(format!("{}: {k} is missing", path.display())))
    };
    Ok(Profile {
        auth: get("SAKUGA_AUTH_ADDR")?,
        scheduler: get("SAKUGA_SCHEDULER_ADDR")?,
        organizer: get("SAKUGA_ORGANIZER_ADDR")?,
        ca: get("SAKUGA_CA")?.into(),
        cert: get("SAKUGA_CLIENT_CERT")?.into(),
        key: get("SAKUGA_CLIENT_KEY")?.into(),
    })
}

fn tokens_path(profile: &str) -> Result<PathBuf, CliError> {
    Ok(config_dir()?.join("tokens").join(format!("{profile}.json")))
}

/// The stored tokens of `profile`, if any.
pub fn load_tokens(profile: &str) -> Result<Option<Tokens>, CliError> {
    let path = tokens_path(profile)?;
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(serde_json::from_str(&text).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path, &e)),
    }
}

/// Stores tokens (mode 0600).
pub fn save_tokens(profile: &str, tokens: &Tokens) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(tokens).map_err(|e| CliError::other(e.to_string()))?;
    write_private(&tokens_path(profile)?, &text)
}

/// Forgets the tokens of `profile`.
pub fn forget_tokens(profile: &str) -> Result<(), CliError> {
    let path = tokens_path(profile)?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path, &e)),
        _ => Ok(()),
    }
}
