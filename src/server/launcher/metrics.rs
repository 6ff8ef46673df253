//! The launcher's Prometheus metrics: what an operator needs to see the spend and the health
//! of launches. Served on its own port (`FLYBY_METRICS_PORT`) on the Machine's private address,
//! never through the public service.

use crate::app::protocol::FlyReach;
use std::{collections::BTreeMap, fmt::Write, sync::Mutex, time::Duration};

/// Upper bounds (seconds) of the launch phase histogram buckets.
const BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    launches: BTreeMap<&'static str, u64>,
    phases: BTreeMap<&'static str, Histogram>,
    api_calls: BTreeMap<(&'static str, String), u64>,
    machines_alive: u64,
    reaped: u64,
    fly: FlyReach,
}

/// All of the launcher's metrics, behind one lock (they change a few times per launch).
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// A launch ended with `outcome` (`launched`, `capacity`, `rate_limited`, `failed`, ...).
    pub fn launch(&self, outcome: &'static str) {
        *self.lock().launches.entry(outcome).or_default() += 1;
    }

    /// A launch phase (`create`, `start`, `serving`, ...) took `took`.
    pub fn phase(&self, phase: &'static str, took: Duration) {
        let mut inner = self.lock();
        let h = inner.phases.entry(phase).or_default();
        let secs = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// One Machines API attempt.
    pub fn api_call(&self, action: &'static str, status: String) {
        *self.lock().api_calls.entry((action, status)).or_default() += 1;
    }

    pub fn machines_alive(&self, n: usize) {
        self.lock().machines_alive = n as u64;
    }

    pub fn reaped(&self) {
        self.lock().reaped += 1;
    }

    /// Whether the last list of Machines reached Fly.
    pub fn fly_reach(&self, reach: FlyReach) {
        self.lock().fly = reach;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("metrics lock")
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP flyby_launches_total Launches by outcome.\n# TYPE flyby_launches_total counter"
        );
        for (outcome, n) in &inner.launches {
            let _ = writeln!(out, "flyby_launches_total{{outcome=\"{outcome}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP flyby_launch_phase_seconds Duration of each launch phase.\n# TYPE flyby_launch_phase_seconds histogram");
        for (phase, h) in &inner.phases {
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "flyby_launch_phase_seconds_bucket{{phase=\"{phase}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "flyby_launch_phase_seconds_bucket{{phase=\"{phase}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "flyby_launch_phase_seconds_sum{{phase=\"{phase}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "flyby_launch_phase_seconds_count{{phase=\"{phase}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(out, "# HELP flyby_fly_api_calls_total Machines API attempts by action and status.\n# TYPE flyby_fly_api_calls_total counter");
        for ((action, status), n) in &inner.api_calls {
            let _ = writeln!(
                out,
                "flyby_fly_api_calls_total{{action=\"{action}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP flyby_machines_alive Visitor Machines alive, as last seen.\n# TYPE flyby_machines_alive gauge");
        let _ = writeln!(out, "flyby_machines_alive {}", inner.machines_alive);
        let _ = writeln!(out, "# HELP flyby_machines_reaped_total Over-age Machines destroyed by the reaper.\n# TYPE flyby_machines_reaped_total counter");
        let _ = writeln!(out, "flyby_machines_reaped_total {}", inner.reaped);
        let (unreachable, refused) = match inner.fly {
            FlyReach::Reachable => (0, 0),
            FlyReach::Unreachable { for_secs } => (for_secs, 0),
            FlyReach::TokenRefused => (0, 1),
        };
        let _ = writeln!(out, "# HELP flyby_fly_unreachable_seconds How long listing Machines has failed (0: it answers).\n# TYPE flyby_fly_unreachable_seconds gauge");
        let _ = writeln!(out, "flyby_fly_unreachable_seconds {unreachable}");
        let _ = writeln!(out, "# HELP flyby_fly_token_refused 1 while Fly refuses the launcher's API token.\n# TYPE flyby_fly_token_refused gauge");
        let _ = writeln!(out, "flyby_fly_token_refused {refused}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.launch("launched");
        m.launch("launched");
        m.phase("create", Duration::from_millis(80));
        m.api_call("create", "200".into());
        m.machines_alive(3);
        let text = m.render();
        assert!(
            text.contains("flyby_launches_total{outcome=\"launched\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("flyby_launch_phase_seconds_bucket{phase=\"create\",le=\"0.05\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("flyby_launch_phase_seconds_bucket{phase=\"create\",le=\"0.1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("flyby_fly_api_calls_total{action=\"create\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("flyby_machines_alive 3"), "{text}");
    }
}
