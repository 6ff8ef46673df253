//! One poll of the Machines API per launcher Machine (never one per visitor) keeps the view of
//! the Machines alive that every open page's map follows, that the launch uses to pick a free
//! slot, and that the reaper acts on.

use super::{concierge, Launcher, METADATA_ROLE};
use crate::{
    app::launcher::AliveMachine,
    fly::MachineId,
    server::fly_api::{ListFilter, Machine, MachineState},
};
use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::sync::watch;

/// How often the launcher lists the Machines: a list per 2 s per launcher stays within Fly's
/// 1 list/s per app with two launchers, and the map is live enough.
const POLL: Duration = Duration::from_secs(2);
/// How long past its TTL a Machine may linger before the reaper destroys it: it is meant to
/// exit by itself at its TTL; the grace covers a slow exit and clock skew.
const REAPER_GRACE: Duration = Duration::from_secs(30);

/// A visitor's Machine as the tracker last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    pub id: MachineId,
    pub name: String,
    pub region: String,
    /// Seconds since the epoch, from the Machine's metadata.
    pub launched_at: Option<u64>,
}

impl Tracked {
    fn from_machine(machine: &Machine) -> Self {
        Tracked {
            id: machine.id,
            name: machine.name.clone(),
            region: machine.region.to_string(),
            launched_at: machine
                .metadata()
                .get("flyby_launched_at")
                .and_then(|t| t.parse().ok()),
        }
    }

    pub fn view(&self) -> AliveMachine {
        AliveMachine {
            id: self.id.to_string(),
            region: self.region.clone(),
        }
    }

    /// Whether the Machine has outlived `ttl` plus the grace, at `now` (seconds since the epoch).
    fn overdue(&self, ttl: Duration, now: u64) -> bool {
        self.launched_at
            .is_some_and(|at| now >= at + (ttl + REAPER_GRACE).as_secs())
    }
}

/// Runs the tracker (and the reaper) for as long as the process lives.
pub fn spawn(launcher: Arc<Launcher>, alive: watch::Sender<Vec<Tracked>>) {
    tokio::spawn(async move {
        // All of the app's Machines: the visitors' and the concierge.
        let filter = ListFilter::default();
        let mut ticks = tokio::time::interval(POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let machines = match launcher.api.list(&launcher.ephemeral_app, &filter).await {
                Ok(machines) => machines,
                Err(e) => {
                    tracing::warn!(error = %e, "could not list Machines; keeping the last view");
                    continue;
                }
            };
            let living = |m: &&Machine| {
                !matches!(m.state, MachineState::Destroyed | MachineState::Destroying)
            };
            let labelled = |m: &Machine, role: (&str, &str)| {
                m.metadata().get(role.0).map(String::as_str) == Some(role.1)
            };
            let now_alive: Vec<Tracked> = machines
                .iter()
                .filter(living)
                .filter(|m| labelled(m, METADATA_ROLE))
                .map(Tracked::from_machine)
                .collect();
            launcher.concierges.saw(concierge::Seen::among(&machines));
            launcher.tend_concierges();
            launcher.metrics.machines_alive(now_alive.len());
            reap(&launcher, &now_alive);
            alive.send_if_modified(|seen| {
                let changed = *seen != now_alive;
                *seen = now_alive;
                changed
            });
        }
    });
}

/// Destroys Machines past their TTL plus grace. Idempotent across launchers: a destroy of a
/// Machine already gone is a success.
fn reap(launcher: &Arc<Launcher>, alive: &[Tracked]) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    for machine in alive
        .iter()
        .filter(|m| m.overdue(launcher.timings.ttl, now))
    {
        let launcher = launcher.clone();
        let id = machine.id;
        tokio::spawn(async move {
            match launcher.api.delete(&launcher.ephemeral_app, id, true).await {
                Ok(()) => {
                    launcher.metrics.reaped();
                    tracing::info!(machine = %id, "reaped an over-age Machine");
                }
                Err(e) => tracing::warn!(machine = %id, error = %e, "could not reap"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_is_overdue_only_past_ttl_plus_grace() {
        let m = Tracked {
            id: MachineId::parse("0123456789abcd").unwrap(),
            name: "flyby-slot-0".into(),
            region: "ams".into(),
            launched_at: Some(1_000),
        };
        let ttl = Duration::from_secs(120);
        assert!(!m.overdue(ttl, 1_000 + 149));
        assert!(m.overdue(ttl, 1_000 + 150));
        assert!(!Tracked {
            launched_at: None,
            ..m
        }
        .overdue(ttl, u64::MAX));
    }
}
