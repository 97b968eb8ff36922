//! The configured limits (`[rate_limits]` in each service's TOML) and the classes and tiers
//! of callers they apply to.

use serde::{Deserialize, Serialize};

use crate::error::MeshError;

/// One limit: `per_minute` sustained rate, `burst` requests allowed at once.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Sustained rate: one request every `60 s / per_minute`.
    pub per_minute: u32,
    /// Requests allowed back to back from idle.
    pub burst: u32,
}

/// Per-tier overrides of the per-user classes (`[rate_limits.admin]`,
/// `[rate_limits.api_key]`): a class left unset (`null`) uses the user limit.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TierLimits {
    /// Job submissions per subject of this tier; unset: `rate_limits.submit`.
    pub submit: Option<Limit>,
    /// Reads per subject of this tier; unset: `rate_limits.read`.
    pub read: Option<Limit>,
    /// Other writes per subject of this tier; unset: `rate_limits.write`.
    pub write: Option<Limit>,
}

impl TierLimits {
    fn get(&self, class: Class) -> Option<Limit> {
        match class {
            Class::Submit => self.submit,
            Class::Read => self.read,
            Class::Write => self.write,
            Class::Login | Class::LoginAddress | Class::LoginUsername => None,
        }
    }
}

/// Limits per class of RPC, from config (`[rate_limits]` table in each service's TOML).
///
/// Login attempts are limited three ways, each a GCRA limit of its own (see
/// [`RateLimiter::check_login`]): per (username, address) pair, per username (from any
/// address) and per address (for any username). The defaults are chosen so that
///
/// - one person mistyping a password gets a burst of 5 and then one try every 6 s (pair);
/// - the per-username limit (20/min) is twice the pair limit, so a single address can never
///   use up a victim's username budget and lock them out; only many addresses together
///   can, and they are held to 20 guesses a minute on that account;
/// - one address spraying made-up usernames is held to 30 attempts a minute, each of which
///   costs an Argon2 verification; a studio behind one NAT still logs in at the start of
///   the day (burst 20; refresh tokens make logins rare afterwards).
///
/// Per-user classes (`submit`, `read`, `write`) apply per user id; `[rate_limits.admin]`
/// and `[rate_limits.api_key]` override them for admins and for API keys (per key), see
/// [`RateLimiter::check_tier`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Login attempts per (username, peer address) pair.
    pub login: Limit,
    /// Login attempts per peer address, whatever the username.
    pub login_address: Limit,
    /// Login attempts per username, whatever the address.
    pub login_username: Limit,
    /// Generation requests (SubmitJob), per user.
    pub submit: Limit,
    /// Read RPCs, per user.
    pub read: Limit,
    /// Other mutating RPCs, per user.
    pub write: Limit,
    /// Overrides for callers with the admin role.
    pub admin: TierLimits,
    /// Overrides for callers authenticated by an API key (counted per key).
    pub api_key: TierLimits,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            login: Limit { per_minute: 10, burst: 5 },
            login_address: Limit { per_minute: 30, burst: 20 },
            login_username: Limit { per_minute: 20, burst: 10 },
            // A studio member queueing 20 variations of a shot at once is normal use: the
            // burst takes 30 submissions back to back, then one a second; the active-job
            // cap (`max_active_jobs_per_user`) bounds the queue, this bounds the rate.
            submit: Limit { per_minute: 60, burst: 30 },
            read: Limit { per_minute: 600, burst: 100 },
            write: Limit { per_minute: 120, burst: 30 },
            admin: TierLimits::default(),
            api_key: TierLimits::default(),
        }
    }
}

impl RateLimits {
    /// The same `limit` for every class and tier (tests and benchmarks).
    pub fn uniform(limit: Limit) -> Self {
        let tier = TierLimits { submit: Some(limit), read: Some(limit), write: Some(limit) };
        Self {
            login: limit,
            login_address: limit,
            login_username: limit,
            submit: limit,
            read: limit,
            write: limit,
            admin: tier,
            api_key: tier,
        }
    }

    /// Every rate and burst must be at least 1; the error names the field.
    pub fn validate(&self) -> Result<(), MeshError> {
        let tiers = [("", None), ("admin.", Some(&self.admin)), ("api_key.", Some(&self.api_key))];
        for (prefix, tier) in tiers {
            for class in Class::ALL {
                let limit = match tier {
                    None => Some(self.get(class)),
                    Some(t) => t.get(class),
                };
                let Some(limit) = limit else { continue };
                for (field, value) in [("per_minute", limit.per_minute), ("burst", limit.burst)] {
                    if value == 0 {
                        return Err(MeshError::Config(format!(
                            "rate_limits.{prefix}{}.{field}: must be at least 1",
                            class.as_str()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The limit of `class` (for users).
    pub fn get(&self, class: Class) -> Limit {
        match class {
            Class::Login => self.login,
            Class::LoginAddress => self.login_address,
            Class::LoginUsername => self.login_username,
            Class::Submit => self.submit,
            Class::Read => self.read,
            Class::Write => self.write,
        }
    }

    /// The limit of `class` for a caller of `tier`: the tier's override, else the user's.
    pub fn get_tier(&self, class: Class, tier: Tier) -> Limit {
        let over = match tier {
            Tier::User => None,
            Tier::Admin => self.admin.get(class),
            Tier::ApiKey => self.api_key.get(class),
        };
        over.unwrap_or_else(|| self.get(class))
    }
}

/// Who is calling, for per-tier limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// A person with an access token and the user role (subject: user id).
    User,
    /// A person with an access token and the admin role (subject: user id).
    Admin,
    /// A script with an API key (subject: the key id, whoever owns it).
    ApiKey,
}

impl Tier {
    /// The config table and key segment: `user`, `admin`, `api_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
            Self::ApiKey => "api_key",
        }
    }
}

/// A class of RPC, each with its own [`Limit`] and key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Logins (subject: `username|peer-ip`).
    Login,
    /// Logins (subject: peer ip).
    LoginAddress,
    /// Logins (subject: username).
    LoginUsername,
    /// Job submissions (subject: user id).
    Submit,
    /// Reads (subject: user id).
    Read,
    /// Other writes (subject: user id).
    Write,
}

impl Class {
    /// Every class.
    pub const ALL: [Self; 6] =
        [Self::Login, Self::LoginAddress, Self::LoginUsername, Self::Submit, Self::Read, Self::Write];

    /// The config field and key segment: `login`, `login_address`, `login_username`,
    /// `submit`, `read`, `write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::LoginAddress => "login_address",
            Self::LoginUsername => "login_username",
            Self::Submit => "submit",
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_zero_is_refused_by_name() {
        RateLimits::default().validate().unwrap();
        let mut limits = RateLimits::default();
        limits.submit.burst = 0;
        let err = limits.validate().unwrap_err().to_string();
        assert!(err.contains("rate_limits.submit.burst: must be at least 1"), "{err}");
        let mut limits = RateLimits::default();
        limits.login.per_minute = 0;
        let err = limits.validate().unwrap_err().to_string();
        assert!(err.contains("rate_limits.login.per_minute: must be at least 1"), "{err}");
    }

    #[test]
    fn the_default_submit_burst_takes_twenty_variations_at_once() {
        assert!(RateLimits::default().submit.burst >= 20);
    }

    #[test]
    fn zero_in_a_tier_override_is_refused_by_name() {
        let mut limits = RateLimits::default();
        limits.api_key.read = Some(Limit { per_minute: 0, burst: 1 });
        let err = limits.validate().unwrap_err().to_string();
        assert!(err.contains("rate_limits.api_key.read.per_minute: must be at least 1"), "{err}");
    }
}
