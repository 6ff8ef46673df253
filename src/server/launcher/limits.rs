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
/// limits this way (1 req/s per action and app, bursts of 3), for the app: the launcher
/// Machines that call it share one budget, so each takes its share ([`TokenBucket::share_among`]).
pub struct TokenBucket {
    /// The whole budget's rate, per second.
    rate: f64,
    /// The whole budget's burst.
    burst: f64,
    state: Mutex<BucketState>,
}

struct BucketState {
    tokens: f64,
    last: Instant,
    /// How many callers share the budget: this one takes `1/sharers` of the rate and of the
    /// burst (at least one token, so a lone launch can always proceed).
    sharers: u32,
}

impl BucketState {
    fn rate(&self, rate: f64) -> f64 {
        rate / f64::from(self.sharers)
    }

    fn burst(&self, burst: f64) -> f64 {
        (burst / f64::from(self.sharers)).max(1.0)
    }
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> Self {
        TokenBucket {
            rate,
            burst: burst.into(),
            state: Mutex::new(BucketState {
                tokens: burst.into(),
                last: Instant::now(),
                sharers: 1,
            }),
        }
    }

    /// From now on `sharers` callers (launcher Machines, at least this one) share the budget.
    pub fn share_among(&self, sharers: usize) {
        let mut state = self.state.lock().expect("bucket lock");
        state.sharers = u32::try_from(sharers).unwrap_or(u32::MAX).max(1);
        state.tokens = state.tokens.min(state.burst(self.burst));
    }

    /// Takes a token now, or says how long until one is available (and takes nothing).
    pub fn try_take(&self) -> Result<(), Duration> {
        let mut state = self.state.lock().expect("bucket lock");
        let now = Instant::now();
        let rate = state.rate(self.rate);
        let tokens = (state.tokens + now.duration_since(state.last).as_secs_f64() * rate)
            .min(state.burst(self.burst));
        state.last = now;
        if tokens >= 1.0 {
            state.tokens = tokens - 1.0;
            Ok(())
        } else {
            state.tokens = tokens;
            Err(Duration::from_secs_f64((1.0 - tokens) / rate))
        }
    }

    /// Makes every taker wait `pause` longer: the API said (429) that callers sharing its
    /// limit, such as other launcher Machines, used the budget this bucket thought it had.
    pub fn pause(&self, pause: Duration) {
        let mut state = self.state.lock().expect("bucket lock");
        let rate = state.rate(self.rate);
        state.tokens = state.tokens.min(0.0) - pause.as_secs_f64() * rate;
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
    async fn launchers_sharing_a_budget_each_take_their_share_of_rate_and_burst() {
        let bucket = TokenBucket::new(1.0, 3);
        bucket.share_among(3);
        // A third of a burst of 3: one token, then one every 3 s.
        assert_eq!(bucket.try_take(), Ok(()));
        assert_eq!(bucket.try_take(), Err(Duration::from_secs(3)));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(bucket.try_take(), Ok(()));
        // Three launchers, each at its share for a minute, stay within the whole budget.
        let launchers: Vec<TokenBucket> = (0..3)
            .map(|_| {
                let b = TokenBucket::new(1.0, 3);
                b.share_among(3);
                b
            })
            .collect();
        let mut taken = 0;
        for _ in 0..600 {
            taken += launchers.iter().filter(|b| b.try_take().is_ok()).count();
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert!((60..=63).contains(&taken), "{taken} creates in 60 s");
        // A launcher left alone gets the whole rate back.
        bucket.share_among(1);
        tokio::time::advance(Duration::from_secs(3)).await;
        for _ in 0..3 {
            assert_eq!(bucket.try_take(), Ok(()));
        }
        // None known (a list not answered yet) counts as this one alone.
        bucket.share_among(0);
        assert_eq!(bucket.try_take(), Err(Duration::from_secs(1)));
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
