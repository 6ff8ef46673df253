//! When and how long to wait before trying a call again.

use std::time::Duration;

/// Bounds on retrying one call. Several launcher Machines share Fly's per-app rate limit, so
/// retries back off exponentially with jitter (they do not retry in lockstep) and stop after a
/// few attempts or a total time, whichever comes first: a visitor is waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 disables retries.
    pub max_attempts: u32,
    /// The backoff before the second attempt; doubles with each further one.
    pub initial_backoff: Duration,
    /// The backoff never grows past this (a `Retry-After` may ask for more).
    pub max_backoff: Duration,
    /// No new attempt starts once this much time has passed since the first one started, and no
    /// backoff is slept that would end past it. `wait` uses its own timeout plus a margin
    /// instead.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(3),
            max_elapsed: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn never() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The wait after failed attempt number `attempt` (1-based): "equal jitter", between half
    /// and all of the exponential step, so that it grows yet never collapses to zero. `unit` is
    /// a random number in `[0, 1]`. Fly's `Retry-After`, when given, is a floor.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        let exp = self.initial_backoff.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let step = exp.min(self.max_backoff);
        let half = step / 2;
        let jittered = half + half.mul_f64(unit.clamp(0.0, 1.0));
        retry_after.map_or(jittered, |floor| jittered.max(floor))
    }

    /// [`Self::backoff`] with a fresh random jitter.
    pub(crate) fn random_backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        use rand::Rng;
        let unit: f64 = rand::rng().random_range(0.0..=1.0);
        self.backoff(attempt, retry_after, unit)
    }
}

/// `Retry-After` as delta-seconds. The HTTP-date form is not used by Fly and reads as absent,
/// which falls back to the client's own backoff.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_its_jitter_band_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            max_elapsed: Duration::from_secs(60),
        };
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(p.backoff(1, None, 0.0)), 50);
        assert_eq!(ms(p.backoff(1, None, 1.0)), 100);
        assert_eq!(ms(p.backoff(2, None, 0.0)), 100);
        assert_eq!(ms(p.backoff(2, None, 1.0)), 200);
        assert_eq!(ms(p.backoff(3, None, 0.5)), 300);
        assert_eq!(ms(p.backoff(5, None, 1.0)), 1000);
        assert_eq!(ms(p.backoff(40, None, 1.0)), 1000, "no overflow");
        for attempt in 1..12 {
            let d = p.random_backoff(attempt, None);
            let step = (100u128 << (attempt - 1).min(20)).min(1000);
            assert!((step / 2..=step).contains(&ms(d)), "{attempt}: {d:?}");
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(2)), 1.0),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.backoff(1, Some(Duration::ZERO), 1.0),
            p.backoff(1, None, 1.0)
        );
    }

    #[test]
    fn retry_after_reads_seconds_only() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
