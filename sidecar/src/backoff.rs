//! Retrying the API server: back-off with jitter, and logs that say when
//! its state changes rather than on every failed call.

use std::time::Duration;

/// How long to wait after `failures` consecutive failures: doubling from
/// `base` up to `cap`, with ±20% jitter so that pods do not retry in step.
pub fn delay(base: Duration, cap: Duration, failures: u32, jitter: f64) -> Duration {
    let exp = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    let raw = base.saturating_mul(exp).min(cap);
    raw.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

/// The back-off of the Lease and Pod watches. kube's default grows to 30 s
/// and forgets past errors only after 120 s without one, so after an API
/// server restart (watch errors, then `410 Gone`) a standby could miss a
/// release for tens of seconds and fall back to waiting out the Lease. This
/// one follows the sidecar's own retry period, as its calls do: from half
/// of it, doubling, at most four times it, and from the start again after
/// any event.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    retry_period: Duration,
    failures: u32,
}

impl WatchBackoff {
    pub fn new(retry_period: Duration) -> Self {
        Self {
            retry_period,
            failures: 0,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        Some(delay(
            self.retry_period / 2,
            self.retry_period * 4,
            self.failures,
            fastrand::f64(),
        ))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Tracks whether the API server answers, so that only the transitions
/// are logged.
#[derive(Debug, Clone, Default)]
pub struct ApiState {
    failing_since_errors: Option<u32>,
}

impl ApiState {
    pub fn reachable(&self) -> bool {
        self.failing_since_errors.is_none()
    }

    /// Records a failure; returns the number of consecutive failures (the
    /// first one is worth a log line).
    pub fn failed(&mut self) -> u32 {
        let n = self.failing_since_errors.map_or(1, |n| n + 1);
        self.failing_since_errors = Some(n);
        n
    }

    /// Records a success; the failures it ends, if any: log that.
    pub fn succeeded(&mut self) -> Option<u32> {
        self.failing_since_errors.take()
    }

    #[cfg(test)]
    pub fn failures(&self) -> u32 {
        self.failing_since_errors.unwrap_or(0)
    }
}

/// Consecutive failures of one action, so that they are logged when they
/// start and when they end rather than on every retry. (`ApiState` cannot
/// tell: a holder whose renewals already failed has it failing, and every
/// later failure of another call is then silent.)
#[derive(Debug, Clone, Default)]
pub struct Streak {
    failures: u32,
}

impl Streak {
    /// Records a failure; true for the first of a streak: log it.
    pub fn failed(&mut self) -> bool {
        self.failures += 1;
        self.failures == 1
    }

    /// Failures in the current streak.
    pub fn count(&self) -> u32 {
        self.failures
    }

    /// Records a success; the failures it ends, if any: log that.
    pub fn succeeded(&mut self) -> Option<u32> {
        Some(std::mem::take(&mut self.failures)).filter(|n| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_up_to_the_cap_with_bounded_jitter() {
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(4));
        assert_eq!(delay(base, cap, 1, 0.5), Duration::from_secs(1));
        assert_eq!(delay(base, cap, 2, 0.5), Duration::from_secs(2));
        assert_eq!(delay(base, cap, 3, 0.5), Duration::from_secs(4));
        assert_eq!(delay(base, cap, 30, 0.5), Duration::from_secs(4));
        assert_eq!(delay(base, cap, 1, 0.0), Duration::from_millis(800));
        assert_eq!(delay(base, cap, 1, 1.0), Duration::from_millis(1200));
    }

    #[test]
    fn a_streak_is_reported_when_it_starts_and_when_it_ends_only() {
        let mut s = Streak::default();
        assert_eq!(s.succeeded(), None, "no streak to end");
        assert!(s.failed(), "the first failure starts a streak");
        assert!(!s.failed(), "a retry failing again is no news");
        assert!(!s.failed());
        assert_eq!(s.succeeded(), Some(3), "the success ends it");
        assert_eq!(s.succeeded(), None);
        assert!(s.failed(), "a new streak");
    }

    #[test]
    fn failures_are_counted_until_a_success() {
        let mut s = ApiState::default();
        assert_eq!(s.failed(), 1);
        assert_eq!(s.failed(), 2);
        assert!(!s.reachable());
        assert_eq!(s.succeeded(), Some(2), "the failures it ends");
        assert!(s.reachable());
        assert_eq!(s.succeeded(), None);
        assert_eq!(s.failures(), 0);
    }

    #[test]
    fn watches_retry_within_four_retry_periods_and_start_over_after_an_event() {
        use kube::runtime::utils::Backoff as _;
        let retry = Duration::from_secs(1);
        let mut b = WatchBackoff::new(retry);
        let first = b.next().expect("a delay");
        assert!(first <= retry.mul_f64(0.6), "{first:?}");
        let later: Vec<Duration> = (0..20).map(|_| b.next().expect("a delay")).collect();
        assert!(
            later.iter().all(|d| *d <= retry.mul_f64(4.0 * 1.2)),
            "{later:?}"
        );
        assert!(later.iter().any(|d| *d >= retry * 3), "{later:?}");
        b.reset();
        assert!(b.next().expect("a delay") <= retry.mul_f64(0.6));
    }
}
