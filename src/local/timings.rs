//! How long things take on the local platform. `instant` (the default, for tests about
//! behaviour): nothing takes longer than the machine running it needs. `fly` (for `make run`
//! and the benchmarks): light crosses the distance between regions, and Machines take Fly's
//! time to boot, so that a distance bug, a region bug or a wait that only a slow platform
//! exposes can show.
//!
//! The model, with its sources (the manual repeats it):
//! - A hop between the edge and a Machine, a replay, and a Machines API call cost the round
//!   trip of the great-circle distance in fibre: light in glass covers about 200 km per ms, and
//!   a route is about 1.5 times the great circle; each hop adds [`PER_HOP`] for the proxy's own
//!   work. The Machines API is in Virginia (`iad`): "If your users are in Sydney and the hardware
//!   for the Firecrackers are in Sydney and the API is in Virginia, 'boot me a VM' takes more
//!   like 300ms" (Fly's blog, "Fly Machines: an API for fast-booting VMs"). An API call pays
//!   half its round trip before the API acts on it and half after, so a start's boot runs
//!   while its answer travels back.
//! - A stopped Machine starts in a few hundred ms ("boot instances in about 300ms", the same
//!   post; "started and stopped at subsecond speeds", Fly's docs, "Fly Machines"); a create
//!   takes seconds (image laid out, Machine registered: "Start is lightning fast", create is
//!   not, Fly's blog, "Our Best Customers Are Now Robots"). Both are drawn from a seeded
//!   log-normal distribution with those medians, so a run is repeatable.

use crate::fly::{distance_km, RegionCode};
use std::{sync::Mutex, time::Duration};

/// How the platform spends time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TimingsMode {
    /// Nothing is delayed on purpose.
    #[default]
    Instant,
    /// Distance and boot times as on Fly.
    Fly,
}

/// Where the Machines API answers from (see the module's sources).
pub const API_REGION: &str = "iad";
/// Light in fibre, km per ms.
const FIBRE_KM_PER_MS: f64 = 200.0;
/// A route's length over the great circle's.
const ROUTE_FACTOR: f64 = 1.5;
/// The proxy's own work on a hop.
pub const PER_HOP: Duration = Duration::from_millis(1);

/// What boots: a new Machine, or a stopped one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    Create,
    Start,
}

impl Boot {
    /// Median, spread (the log-normal's sigma) and bounds of its time.
    fn distribution(self) -> (Duration, f64, Duration, Duration) {
        match self {
            Boot::Create => (
                Duration::from_millis(2_000),
                0.35,
                Duration::from_millis(1_000),
                Duration::from_millis(6_000),
            ),
            Boot::Start => (
                Duration::from_millis(400),
                0.5,
                Duration::from_millis(150),
                Duration::from_millis(1_500),
            ),
        }
    }
}

/// The round trip of a hop between two regions, as [`TimingsMode::Fly`] plays it.
pub fn fibre_round_trip(a: RegionCode, b: RegionCode) -> Duration {
    let km = distance_km(a, b).unwrap_or(0.0);
    Duration::from_secs_f64(2.0 * km * ROUTE_FACTOR / FIBRE_KM_PER_MS / 1000.0) + PER_HOP
}

/// The platform's clock model: the mode and the seeded draws.
#[derive(Debug)]
pub struct Timings {
    mode: TimingsMode,
    /// splitmix64's state: each draw advances it.
    state: Mutex<u64>,
}

impl Timings {
    pub fn new(mode: TimingsMode, seed: u64) -> Timings {
        Timings {
            mode,
            state: Mutex::new(seed),
        }
    }

    pub fn mode(&self) -> TimingsMode {
        self.mode
    }

    /// What a hop between `a` and `b` costs: its round trip, or nothing when instant.
    pub fn round_trip(&self, a: RegionCode, b: RegionCode) -> Duration {
        match self.mode {
            TimingsMode::Instant => Duration::ZERO,
            TimingsMode::Fly => fibre_round_trip(a, b),
        }
    }

    /// What a Machines API call from `caller` costs.
    pub fn api_round_trip(&self, caller: RegionCode) -> Duration {
        let api = RegionCode::parse(API_REGION).expect("a known region");
        self.round_trip(caller, api)
    }

    /// How long this boot takes, drawn (nothing when instant).
    pub fn boot(&self, boot: Boot) -> Duration {
        if self.mode == TimingsMode::Instant {
            return Duration::ZERO;
        }
        let (median, sigma, min, max) = boot.distribution();
        let z = self.standard_normal();
        median.mul_f64((sigma * z).exp()).clamp(min, max)
    }

    /// A draw of the standard normal distribution (Box-Muller over two uniform draws).
    fn standard_normal(&self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A draw in [0, 1).
    fn uniform(&self) -> f64 {
        let mut state = self.state.lock().expect("timings lock");
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> RegionCode {
        RegionCode::parse(s).unwrap()
    }

    #[test]
    fn a_hop_costs_light_in_fibre_over_the_distance_plus_the_proxys_work() {
        assert_eq!(fibre_round_trip(code("ams"), code("ams")), PER_HOP);
        // Amsterdam to Sydney is about 16,600 km: 2 x 16,600 x 1.5 / 200 = 249 ms.
        let far = fibre_round_trip(code("ams"), code("syd")).as_millis();
        assert!((240..=260).contains(&far), "{far} ms");
        // The blog's Sydney-to-Virginia API call: "more like 300ms".
        let api = Timings::new(TimingsMode::Fly, 1).api_round_trip(code("syd"));
        assert!((230..=330).contains(&api.as_millis()), "{api:?}");
        assert_eq!(
            Timings::new(TimingsMode::Instant, 1).round_trip(code("ams"), code("syd")),
            Duration::ZERO
        );
    }

    #[test]
    fn boots_take_fly_s_times_with_their_medians_repeatably() {
        let draws = |seed, boot| {
            let t = Timings::new(TimingsMode::Fly, seed);
            let mut all: Vec<Duration> = (0..401).map(|_| t.boot(boot)).collect();
            all.sort();
            all
        };
        for boot in [Boot::Create, Boot::Start] {
            let (median, _, min, max) = boot.distribution();
            let all = draws(7, boot);
            assert_eq!(all, draws(7, boot), "the same seed, the same draws");
            assert_ne!(all, draws(8, boot));
            let drawn = all[200].as_secs_f64() / median.as_secs_f64();
            assert!((0.85..1.15).contains(&drawn), "{boot:?}: median x {drawn}");
            assert!(all[0] >= min && all[400] <= max);
            assert!(all[0] < all[400], "spread");
        }
        let instant = Timings::new(TimingsMode::Instant, 7);
        assert_eq!(instant.boot(Boot::Create), Duration::ZERO);
    }
}
