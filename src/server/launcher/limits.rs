//! Rate limits the launcher applies to itself: a per-visitor launch budget, and token buckets
//! that keep its own calls within the Machines API's limits (queueing rather than failing).

use super::request::VisitorKey;
use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};
use tokio::time::Instant;

/// A token bucket: `rate` tokens per second, at most `burst` saved up. Fly documents its API
/// limits this way (1 req/s per action and app, bursts of 3).
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> Self {
        TokenBucket {
            rate,
            burst: burst.into(),
            state: Mutex::new((burst.into(), Instant::now())),
        }
    }

    /// Takes a token now, or says how long until one is available (and takes nothing).
    pub fn try_take(&self) -> Result<(), Duration> {
        let mut state = self.state.lock().expect("bucket lock");
        let now = Instant::now();
        let (tokens, last) = *state;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }

    /// Makes every taker wait `pause` longer: the API said (429) that callers sharing its
    /// limit, such as other launcher Machines, used the budget this bucket thought it had.
    pub fn pause(&self, pause: Duration) {
        let mut state = self.state.lock().expect("bucket lock");
        state.0 = state.0.min(0.0) - pause.as_secs_f64() * self.rate;
    }

    /// Waits for a token; `on_wait` runs once if the caller has to wait.
    pub async fn take(&self, on_wait: impl FnOnce()) {
        let mut on_wait = Some(on_wait);
        while let Err(wait) = self.try_take() {
            if let Some(f) = on_wait.take() {
                f();
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// How many launches each visitor started in the last minute.
pub struct VisitorLimits {
    per_minute: usize,
    recent: Mutex<HashMap<VisitorKey, VecDeque<Instant>>>,
}

impl VisitorLimits {
    pub fn new(per_minute: u32) -> Self {
        VisitorLimits {
            per_minute: per_minute as usize,
            recent: Mutex::default(),
        }
    }

    /// Records a launch of `visitor`, or says how long until they may launch again.
    pub fn admit(&self, visitor: VisitorKey) -> Result<(), Duration> {
        const WINDOW: Duration = Duration::from_secs(60);
        let now = Instant::now();
        let mut recent = self.recent.lock().expect("visitor limits lock");
        // Forget visitors whose launches all left the window, so the map stays small.
        recent.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.duration_since(*t) < WINDOW)
        });
        let times = recent.entry(visitor).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            times.pop_front();
        }
        if times.len() >= self.per_minute {
            let oldest = *times.front().expect("non-empty");
            return Err(WINDOW - now.duration_since(oldest));
        }
        times.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_its_burst_then_its_rate() {
        let bucket = TokenBucket::new(1.0, 3);
        for _ in 0..3 {
            assert_eq!(bucket.try_take(), Ok(()));
        }
        let wait = bucket.try_take().unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        let before = Instant::now();
        let mut waited = false;
        bucket.take(|| waited = true).await;
        assert!(waited);
        assert!(Instant::now() - before >= Duration::from_millis(999));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_taker_back() {
        let bucket = TokenBucket::new(1.0, 3);
        bucket.pause(Duration::from_secs(2));
        let wait = bucket.try_take().unwrap_err();
        assert_eq!(wait, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn each_visitor_has_their_own_budget_per_minute() {
        let visitor = |ip: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("fly-client-ip", ip.parse().unwrap());
            VisitorKey::of(&headers).unwrap()
        };
        let (a, b) = (visitor("1.2.3.4"), visitor("5.6.7.8"));
        let limits = VisitorLimits::new(2);
        assert_eq!(limits.admit(a), Ok(()));
        assert_eq!(limits.admit(a), Ok(()));
        let retry = limits.admit(a).unwrap_err();
        assert_eq!(retry, Duration::from_secs(60));
        assert_eq!(limits.admit(b), Ok(()));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(limits.admit(a), Ok(()));
    }
}
