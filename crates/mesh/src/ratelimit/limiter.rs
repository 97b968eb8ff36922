//! [`RateLimiter`]: GCRA in one atomic Lua script per check (see the module docs of
//! [`crate::ratelimit`]).

use std::{sync::LazyLock, time::Duration};

use redis::Script;
use sha2::{Digest as _, Sha256};

use super::limits::{Class, Limit, RateLimits, Tier};
use crate::redis::Redis;

/// The outcome of [`RateLimiter::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead; `remaining` more requests would be allowed right now.
    Allowed {
        /// Requests still allowed back to back after this one.
        remaining: u32,
    },
    /// Refused (and not counted); the next request is allowed after `retry_after`.
    Limited {
        /// Wait at least this long (> 0, at most `T`) before retrying.
        retry_after: Duration,
    },
}

/// The outcome of [`RateLimiter::check_login`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginDecision {
    /// Within all three limits (and counted in each).
    Allowed,
    /// Refused by the limit of `class` (`login_address`, `login_username` or `login`).
    Limited {
        /// The limit that refused.
        class: Class,
        /// Wait at least this long before retrying.
        retry_after: Duration,
    },
}

/// The limiter could not decide.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// Redis failed (connection refused, timeout, script error); the caller fails open or
    /// closed (see the module docs).
    #[error("rate limiter unavailable: {0}")]
    Unavailable(String),
}

impl From<redis::RedisError> for RateLimitError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// The GCRA parameters of a limit.
impl Limit {
    /// The emission interval `T` in µs (at least 1).
    fn interval_us(self) -> u64 {
        (60_000_000 / u64::from(self.per_minute.max(1))).max(1)
    }

    /// The tolerance `τ = T × (burst − 1)` in µs.
    fn tolerance_us(self) -> u64 {
        self.interval_us().saturating_mul(u64::from(self.burst.saturating_sub(1)))
    }
}

/// GCRA. KEYS[1]: the subject's key. ARGV[1]: T (µs). ARGV[2]: τ (µs).
/// Returns {allowed (0/1), remaining, retry_after_µs}. All numbers stay below 2^53, so
/// Lua's doubles hold them exactly (and `redis.call` passes them as integers).
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then
  return {0, 0, allow_at - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000))
local remaining = math.floor((now + tolerance - new_tat) / interval) + 1
if remaining < 0 then remaining = 0 end
return {1, remaining, 0}
";

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_LUA));

/// Checks requests against [`RateLimits`] in Redis. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    redis: Redis,
    limits: RateLimits,
}

impl RateLimiter {
    /// A limiter over `redis` (keys under its prefix) with `limits`.
    pub fn new(redis: Redis, limits: RateLimits) -> Self {
        Self { redis, limits }
    }

    /// The configured limits.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// Counts one request of `subject` (user id, `username|peer-ip`) against the `class`
    /// limit, in one atomic round trip. A `Limited` request is not counted. The same as
    /// [`RateLimiter::check_tier`] with [`Tier::User`].
    pub async fn check(&self, class: Class, subject: &str) -> Result<Decision, RateLimitError> {
        self.check_tier(class, Tier::User, subject).await
    }

    /// Counts one request of `subject` of `tier` against that tier's `class` limit (its
    /// override in `[rate_limits.admin]` / `[rate_limits.api_key]`, else the user limit).
    /// Each tier has its own buckets: a user's API key and their token do not share one.
    pub async fn check_tier(
        &self,
        class: Class,
        tier: Tier,
        subject: &str,
    ) -> Result<Decision, RateLimitError> {
        self.check_limit(self.limits.get_tier(class, tier), self.key(class, tier, subject)).await
    }

    /// Counts one login attempt of `username` from `address` (an IP, without port) against
    /// the per-address, per-pair and per-username limits, in that order, stopping at the
    /// first that refuses (which then names it). The username's bucket is charged only by
    /// attempts its address and pair allowed: one address (held to the pair limit) cannot
    /// use up a victim's username budget, and a sprayer refused per address charges no one
    /// else's.
    pub async fn check_login(&self, username: &str, address: &str) -> Result<LoginDecision, RateLimitError> {
        let checks = [
            (Class::LoginAddress, address.to_owned()),
            (Class::Login, format!("{username}|{address}")),
            (Class::LoginUsername, username.to_owned()),
        ];
        for (class, subject) in checks {
            if let Decision::Limited { retry_after } = self.check(class, &subject).await? {
                return Ok(LoginDecision::Limited { class, retry_after });
            }
        }
        Ok(LoginDecision::Allowed)
    }

    async fn check_limit(&self, limit: Limit, key: String) -> Result<Decision, RateLimitError> {
        if self.redis.is_down() {
            return Err(RateLimitError::Unavailable("redis is down (breaker open)".to_owned()));
        }
        let mut conn = self.redis.conn();
        let result: redis::RedisResult<(i64, i64, i64)> =
            GCRA.key(key).arg(limit.interval_us()).arg(limit.tolerance_us()).invoke_async(&mut conn).await;
        self.redis.note(&result);
        let (allowed, remaining, retry_us) = result?;
        Ok(if allowed == 1 {
            Decision::Allowed { remaining: u32::try_from(remaining).unwrap_or(0) }
        } else {
            Decision::Limited {
                retry_after: Duration::from_micros(u64::try_from(retry_us).unwrap_or(1).max(1)),
            }
        })
    }

    /// `<prefix>rl:<class>:<sha256(subject)>` for users, `<prefix>rl:<class>:<tier>:<sha256>`
    /// for the other tiers.
    fn key(&self, class: Class, tier: Tier, subject: &str) -> String {
        let digest = hex::encode(Sha256::digest(subject.as_bytes()));
        match tier {
            Tier::User => self.redis.key(&format!("rl:{}:{digest}", class.as_str())),
            Tier::Admin | Tier::ApiKey => {
                self.redis.key(&format!("rl:{}:{}:{digest}", class.as_str(), tier.as_str()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::RedisConfig, ratelimit::TierLimits, vault::Credentials};

    fn redis_config(port: Option<u16>) -> RedisConfig {
        let url =
            std::env::var("SAKUGA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let rest = url.trim_start_matches("redis://");
        let hostport = rest.rsplit('@').next().unwrap_or(rest).trim_end_matches('/');
        let (host, default_port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().unwrap()),
            None => (hostport.to_owned(), 6379),
        };
        RedisConfig {
            host,
            port: port.unwrap_or(default_port),
            vault_path: "unused".to_owned(),
            key_prefix: format!("sakuga-test:rl-{}:", uuid::Uuid::new_v4().simple()),
        }
    }

    async fn connect(cfg: &RedisConfig) -> Redis {
        Redis::connect(cfg, &Credentials { username: None, password: None }).await.unwrap()
    }

    async fn limiter(limits: RateLimits) -> RateLimiter {
        RateLimiter::new(connect(&redis_config(None)).await, limits)
    }

    fn uniform(per_minute: u32, burst: u32) -> RateLimits {
        RateLimits::uniform(Limit { per_minute, burst })
    }

    /// Deletes every key under the limiter's prefix (they expire anyway).
    async fn cleanup(limiter: &RateLimiter) {
        let mut conn = limiter.redis.conn();
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(limiter.redis.key("*")).query_async(&mut conn).await.unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL").arg(keys).query_async(&mut conn).await.unwrap();
        }
    }

    async fn allowed_count(limiter: &RateLimiter, class: Class, subject: &str, n: usize) -> usize {
        let mut allowed = 0;
        for _ in 0..n {
            if matches!(limiter.check(class, subject).await.unwrap(), Decision::Allowed { .. }) {
                allowed += 1;
            }
        }
        allowed
    }

    #[tokio::test]
    async fn burst_then_limited_for_at_most_one_interval() {
        let limiter = limiter(uniform(10, 5)).await;
        for expected_remaining in (0..5).rev() {
            assert_eq!(
                limiter.check(Class::Submit, "user-1").await.unwrap(),
                Decision::Allowed { remaining: expected_remaining }
            );
        }
        match limiter.check(Class::Submit, "user-1").await.unwrap() {
            Decision::Limited { retry_after } => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(6));
            }
            other @ Decision::Allowed { .. } => panic!("expected Limited, got {other:?}"),
        }
        cleanup(&limiter).await;
    }

    #[tokio::test]
    async fn fifty_concurrent_calls_allow_exactly_the_burst() {
        let limiter = limiter(RateLimits::default()).await;
        let calls = (0..50).map(|_| limiter.check(Class::Submit, "user-1"));
        let decisions = futures_util::future::join_all(calls).await;
        let allowed =
            decisions.into_iter().filter(|d| matches!(d.as_ref().unwrap(), Decision::Allowed { .. })).count();
        assert_eq!(allowed, 30);
        cleanup(&limiter).await;
    }

    #[tokio::test]
    async fn subjects_and_classes_are_independent() {
        let limiter = limiter(uniform(10, 3)).await;
        assert_eq!(allowed_count(&limiter, Class::Submit, "alice", 5).await, 3);
        assert_eq!(allowed_count(&limiter, Class::Submit, "bob", 5).await, 3);
        assert_eq!(allowed_count(&limiter, Class::Read, "alice", 5).await, 3);
        assert_eq!(allowed_count(&limiter, Class::Login, "alice|10.0.0.1", 5).await, 3);
        assert_eq!(allowed_count(&limiter, Class::Login, "alice|10.0.0.2", 5).await, 3);
        cleanup(&limiter).await;
    }

    #[tokio::test]
    async fn allowed_again_after_retry_after() {
        // T = 100 ms.
        let limiter = limiter(uniform(600, 2)).await;
        assert_eq!(allowed_count(&limiter, Class::Write, "user-1", 2).await, 2);
        let Decision::Limited { retry_after } = limiter.check(Class::Write, "user-1").await.unwrap() else {
            panic!("expected Limited");
        };
        assert!(retry_after <= Duration::from_millis(100));
        tokio::time::sleep(retry_after).await;
        assert!(matches!(limiter.check(Class::Write, "user-1").await.unwrap(), Decision::Allowed { .. }));
        cleanup(&limiter).await;
    }

    /// Connects through a TCP relay to the real Redis, then kills the relay: checks fail on
    /// the dropped connection ("broken pipe"), then on the refused reconnect.
    #[tokio::test]
    async fn redis_gone_is_unavailable() {
        let upstream = redis_config(None);
        let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = relay.local_addr().unwrap().port();
        let target = format!("{}:{}", upstream.host, upstream.port);
        let relay_task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            loop {
                let (mut inbound, _) = relay.accept().await.unwrap();
                let mut outbound = tokio::net::TcpStream::connect(&target).await.unwrap();
                links.spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        let mut cfg = redis_config(Some(port));
        cfg.host = "127.0.0.1".to_owned();
        let limiter = RateLimiter::new(connect(&cfg).await, RateLimits::default());
        assert!(matches!(limiter.check(Class::Read, "u").await.unwrap(), Decision::Allowed { .. }));
        cleanup(&limiter).await;

        // Dropping the task drops the listener and (via the JoinSet) every relayed link.
        relay_task.abort();
        let _ = relay_task.await;
        let err = limiter.check(Class::Read, "u").await.unwrap_err();
        assert!(matches!(err, RateLimitError::Unavailable(_)));
        assert!(err.to_string().starts_with("rate limiter unavailable: "), "{err}");
        // The reconnect to the dead port is refused.
        let err = limiter.check(Class::Read, "u").await.unwrap_err();
        assert!(matches!(err, RateLimitError::Unavailable(_)));
    }

    #[tokio::test]
    async fn tiers_use_their_override_or_the_user_limit_in_buckets_of_their_own() {
        let mut limits = RateLimits::uniform(Limit { per_minute: 10, burst: 2 });
        limits.admin =
            TierLimits { submit: Some(Limit { per_minute: 10, burst: 4 }), ..TierLimits::default() };
        limits.api_key =
            TierLimits { submit: Some(Limit { per_minute: 10, burst: 3 }), ..TierLimits::default() };
        let limiter = limiter(limits).await;
        let count = |tier, class| {
            let limiter = limiter.clone();
            async move {
                let mut allowed = 0;
                for _ in 0..6 {
                    if matches!(
                        limiter.check_tier(class, tier, "s-1").await.unwrap(),
                        Decision::Allowed { .. }
                    ) {
                        allowed += 1;
                    }
                }
                allowed
            }
        };
        assert_eq!(count(Tier::User, Class::Submit).await, 2);
        assert_eq!(count(Tier::Admin, Class::Submit).await, 4, "the admin override, not the user bucket");
        assert_eq!(count(Tier::ApiKey, Class::Submit).await, 3);
        assert_eq!(count(Tier::Admin, Class::Read).await, 2, "no override: the user limit");
        // check() is the user tier: its bucket for s-1 is already spent.
        assert!(matches!(limiter.check(Class::Submit, "s-1").await.unwrap(), Decision::Limited { .. }));
        cleanup(&limiter).await;
    }

    fn login_limits() -> RateLimits {
        RateLimits {
            login: Limit { per_minute: 1, burst: 2 },
            login_username: Limit { per_minute: 1, burst: 3 },
            login_address: Limit { per_minute: 1, burst: 4 },
            ..RateLimits::default()
        }
    }

    async fn login_outcomes(limiter: &RateLimiter, attempts: &[(&str, &str)]) -> Vec<Option<Class>> {
        let mut out = Vec::new();
        for (user, addr) in attempts {
            out.push(match limiter.check_login(user, addr).await.unwrap() {
                LoginDecision::Allowed => None,
                LoginDecision::Limited { class, retry_after } => {
                    assert!(retry_after > Duration::ZERO);
                    Some(class)
                }
            });
        }
        out
    }

    #[tokio::test]
    async fn logins_are_limited_per_pair_per_username_and_per_address() {
        let limiter = limiter(login_limits()).await;
        // One pair: its own burst of 2.
        let pair = login_outcomes(&limiter, &[("alice", "10.0.0.1"); 3]).await;
        assert_eq!(pair, [None, None, Some(Class::Login)]);
        // The username from another address: one left of its 3 (2 used), then refused.
        let user = login_outcomes(&limiter, &[("alice", "10.0.0.2"), ("alice", "10.0.0.3")]).await;
        assert_eq!(user, [None, Some(Class::LoginUsername)]);
        // An address spraying distinct names: 4, whatever the names.
        let names: Vec<String> = (0..5).map(|i| format!("made-up-{i}")).collect();
        let spray: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "10.0.0.9")).collect();
        assert_eq!(
            login_outcomes(&limiter, &spray).await,
            [None, None, None, None, Some(Class::LoginAddress)]
        );
        // Refused per address: not charged to the username, which still logs in elsewhere.
        assert_eq!(login_outcomes(&limiter, &[("made-up-4", "10.0.0.10")]).await, [None]);
        cleanup(&limiter).await;
    }

    #[test]
    fn gcra_parameters() {
        let limit = Limit { per_minute: 10, burst: 5 };
        assert_eq!(limit.interval_us(), 6_000_000);
        assert_eq!(limit.tolerance_us(), 24_000_000);
    }
}
