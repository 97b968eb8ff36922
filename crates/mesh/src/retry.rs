//! Exponential backoff, one way everywhere. A bounded retry (a connect at start-up, an
//! upload) is backon's [`Retryable`](backon::Retryable) with an
//! [`ExponentialBuilder`]. A long-lived loop that reconnects whenever its connection drops
//! and starts again from the first delay once it was up does not fit `Retryable` (it never
//! "succeeds" for good); it takes its delays from a [`Backoff`], built on the same builder.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

type Delays = <ExponentialBuilder as backon::BackoffBuilder>::Backoff;

/// Reaching PostgreSQL or Redis at start-up: 250 ms apart at first, the wait doubling up to
/// 5 s, for about a minute (16 attempts). A service that starts while a restarting Redis or
/// PostgreSQL is away for a few seconds waits for it instead of exiting; one that cannot
/// reach it for a minute exits with the error (and Kubernetes starts it again).
pub(crate) fn start_up() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(15)
}

/// Delays that start at `initial` and double up to `max`, without end; [`Backoff::reset`]
/// starts them again.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    max: Duration,
    delays: Delays,
}

impl Backoff {
    /// `initial`, `2 × initial`, `4 × initial`, ... at most `max` (never less than `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        let max = max.max(initial);
        let builder = ExponentialBuilder::new()
            .with_min_delay(initial)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times();
        Self { builder, max, delays: builder.build() }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // Without a limit on attempts the iterator never ends.
        self.delays.next().unwrap_or(self.max)
    }

    /// After a success: the next delay is the first again.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }

    /// Sleeps the next delay; false when `cancel` fired first.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(b: &mut Backoff, n: usize) -> Vec<u128> {
        // backon computes in f32 seconds: compare to the nearest millisecond.
        (0..n).map(|_| (b.next_delay().as_micros() + 500) / 1000).collect()
    }

    #[test]
    fn delays_double_from_the_first_up_to_the_cap_and_stay_there() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        assert_eq!(millis(&mut b, 8), [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_mins(1));
        assert_eq!(millis(&mut b, 9), [1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000]);
    }

    #[test]
    fn the_cap_is_exact_and_never_below_the_first_delay() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert_eq!(delays[9], Duration::from_secs(5));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_millis(100));
        assert_eq!(millis(&mut b, 3), [200, 200, 200]);
    }

    #[test]
    fn start_up_waits_about_a_minute() {
        let delays: Vec<u128> = start_up().build().map(|d| (d.as_micros() + 500) / 1000).collect();
        assert_eq!(delays[..6], [250, 500, 1000, 2000, 4000, 5000]);
        assert_eq!(delays.len(), 15);
        assert_eq!(delays.iter().sum::<u128>(), 57_750);
    }

    #[test]
    fn reset_starts_again_from_the_first_delay() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        assert_eq!(millis(&mut b, 3), [200, 400, 800]);
        b.reset();
        assert_eq!(millis(&mut b, 3), [200, 400, 800]);
    }

    #[tokio::test]
    async fn wait_sleeps_the_next_delay_unless_canceled() {
        let mut b = Backoff::new(Duration::from_millis(20), Duration::from_secs(5));
        let cancel = CancellationToken::new();
        let start = std::time::Instant::now();
        assert!(b.wait(&cancel).await);
        assert!(b.wait(&cancel).await);
        assert!(start.elapsed() >= Duration::from_millis(60), "20 ms, then 40 ms");
        let mut b = Backoff::new(Duration::from_secs(30), Duration::from_secs(30));
        cancel.cancel();
        let start = std::time::Instant::now();
        assert!(!b.wait(&cancel).await, "a canceled wait says so");
        assert!(start.elapsed() < Duration::from_secs(30));
    }
}
