//! Counters of the local platform, read by tests and benchmarks through `GET /_local/stats`:
//! proof that a run really exercised what it claims (replays, cache hits, API calls).

use std::{collections::BTreeMap, sync::Mutex};

/// Named counters. Names are dotted paths, e.g. `proxy.requests`,
/// `proxy.replays.delivered`, `proxy.replay_cache.hits`, `api.create.200`.
#[derive(Debug, Default)]
pub struct Stats {
    counters: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    pub fn incr(&self, name: impl Into<String>) {
        self.add(name, 1);
    }

    pub fn add(&self, name: impl Into<String>, n: u64) {
        *self
            .counters
            .lock()
            .expect("stats lock")
            .entry(name.into())
            .or_default() += n;
    }

    pub fn get(&self, name: &str) -> u64 {
        self.counters
            .lock()
            .expect("stats lock")
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counters.lock().expect("stats lock").clone()
    }
}
