//! Rate limiting in Redis with GCRA (the generic cell rate algorithm): one atomic Lua
//! script, one round trip per check, shared by every replica of a service.
//!
//! # Algorithm
//!
//! A [`Limit`] of `per_minute` requests with `burst` gives an emission interval
//! `T = 60 s / per_minute` and a tolerance `τ = T × (burst − 1)`. Redis stores one number
//! per subject, the theoretical arrival time `TAT` (µs), absent when the subject is idle.
//! A request arriving at `now` is
//!
//! - **allowed** when `now ≥ TAT − τ` (with `TAT = max(TAT, now)`); then
//!   `TAT ← TAT + T`, stored with an expiry of `TAT − now` so that the key disappears
//!   exactly when it would mean "idle" again;
//! - **limited** otherwise, with `retry_after = TAT − τ − now`; nothing is stored.
//!
//! From idle this allows exactly `burst` requests back to back, then one every `T`.
//! `remaining` is how many more requests would be allowed at this instant.
//!
//! `now` is Redis' own clock (`TIME`), so replicas with skewed clocks agree. The script
//! reads and writes one key, so it is atomic and Redis Cluster friendly; it is sent with
//! EVALSHA (reloaded on NOSCRIPT by [`redis::Script`]).
//!
//! # Keys
//!
//! `<prefix>rl:<class>:<sha256(subject) hex>` (users, logins) and
//! `<prefix>rl:<class>:<tier>:<sha256(subject) hex>` (admins, API keys): the subject (user
//! id, API key id, `username|peer-ip`, peer ip, username) is hashed, so it can hold any
//! character and no username or address lands in Redis; the key always goes through [`Redis::key`] to stay under the service's ACL key prefix.
//!
//! # When Redis is down
//!
//! [`RateLimiter::check`] returns [`RateLimitError::Unavailable`] and decides nothing: the
//! caller chooses. Fail **closed** where abuse is costly (`Login`: password guessing;
//! `Submit`: GPU time), fail **open** where availability matters more (`Read`, usually
//! `Write`), logging the failure either way.
//!
//! # Modules
//!
//! `limits`: the configured limits and the classes and tiers of callers they apply to
//! (plain data); `limiter`: [`RateLimiter`], which checks requests against them in Redis.

#[cfg(feature = "server")]
mod limiter;
mod limits;

#[cfg(feature = "server")]
pub use limiter::{Decision, LoginDecision, RateLimitError, RateLimiter};
pub use limits::{Class, Limit, RateLimits, Tier, TierLimits};
