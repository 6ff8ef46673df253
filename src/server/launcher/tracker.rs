//! One poll of the Machines API per launcher Machine (never one per visitor) keeps the view of
//! the Machines alive that every open page's map follows, that the launch uses to pick a free
//! slot, and that the reaper acts on.

use super::{concierge, Launcher, METADATA_ROLE};
use crate::{
    app::protocol::{AliveMachine, FlyReach},
    fly::{MachineId, RegionCode},
    server::fly_api::{Deleted, FlyApiError, ListFilter, Machine, MachineState},
};
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::sync::watch;

/// How often a launcher lists the Machines. Fly allows 1 list a second per app, in bursts of 3
/// (machines/api/working-with-machines-api), for all launchers together: `fly deploy` starts 2
/// of them, and a list every 4 s each leaves room for a third, and for a burst.
const POLL: Duration = Duration::from_secs(4);
/// The longest wait between two lists, after rate limits in a row.
const MAX_POLL: Duration = Duration::from_secs(30);
/// How long past its TTL a Machine may linger before the reaper destroys it: it is meant to
/// exit by itself at its TTL; the grace covers a slow exit and clock skew.
const REAPER_GRACE: Duration = Duration::from_secs(30);

/// A visitor's Machine as the tracker last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    pub id: MachineId,
    pub name: String,
    pub region: RegionCode,
    /// When its life began, in seconds since the epoch: its launch's metadata, else when Fly
    /// created it (a Machine made by hand, or by a launcher that wrote no such metadata); for
    /// a Machine of the warm pool, when it was last started (never, while it waits).
    pub born: Option<u64>,
    /// A Machine of the warm pool waiting to be taken: not on the map, never reaped.
    pub warm: Option<super::pool::Warm>,
}

impl Tracked {
    fn from_machine(machine: &Machine) -> Self {
        let metadata = machine.metadata();
        let born = if metadata.contains_key(super::pool::POOL_METADATA) {
            // Taken from the pool: its life began with the start (Fly's events, newest first).
            machine
                .events
                .iter()
                .filter(|e| e.kind == "start")
                .map(|e| e.timestamp / 1000)
                .max()
        } else {
            metadata
                .get("flyby_launched_at")
                .and_then(|t| t.parse().ok())
                .or_else(|| {
                    let created = machine.created_at?.duration_since(UNIX_EPOCH).ok()?;
                    Some(created.as_secs())
                })
        };
        Tracked {
            id: machine.id,
            name: machine.name.clone(),
            region: machine.region,
            born,
            warm: super::pool::Warm::of(machine),
        }
    }

    pub fn view(&self) -> AliveMachine {
        AliveMachine {
            id: self.id,
            region: self.region,
        }
    }

    /// Whether the Machine has outlived `ttl` plus the grace, at `now` (seconds since the epoch).
    fn overdue(&self, ttl: Duration, now: u64) -> bool {
        self.warm.is_none()
            && self
                .born
                .is_some_and(|at| now >= at + (ttl + REAPER_GRACE).as_secs())
    }
}

/// The wait before the next list: [`POLL`], or the back-off after rate limits, give or take a
/// quarter (`spread` in 0..1), so that launchers started together drift apart instead of
/// listing in step.
fn next_wait(backoff: Duration, spread: f64) -> Duration {
    let base = if backoff.is_zero() { POLL } else { backoff };
    base.mul_f64(0.75 + 0.5 * spread.clamp(0.0, 1.0))
}

/// The back-off after a list: none after an answer, twice the last (at least [`POLL`], at least
/// what Fly asked, at most [`MAX_POLL`]) after a rate limit.
fn backoff_after(last: Duration, rate_limited: Option<Option<Duration>>) -> Duration {
    match rate_limited {
        None => Duration::ZERO,
        Some(asked) => (last * 2)
            .max(POLL)
            .max(asked.unwrap_or_default())
            .min(MAX_POLL),
    }
}

/// What a list's outcome says of Fly's reach, after `before`: `dark_since` is when listing
/// started failing. A rate limit says nothing of it: Fly answered, and the tracker backs off.
fn reach_after(
    before: FlyReach,
    listed: &Result<Vec<Machine>, FlyApiError>,
    dark_since: &mut Option<tokio::time::Instant>,
) -> FlyReach {
    match listed {
        Ok(_) => {
            *dark_since = None;
            FlyReach::Reachable
        }
        Err(FlyApiError::RateLimited { .. }) => before,
        Err(FlyApiError::Unauthorized { .. }) => FlyReach::TokenRefused,
        Err(_) => FlyReach::Unreachable {
            for_secs: dark_since
                .get_or_insert_with(tokio::time::Instant::now)
                .elapsed()
                .as_secs(),
        },
    }
}

/// Runs the tracker (and the reaper) for as long as the process lives.
pub fn spawn(
    launcher: Arc<Launcher>,
    alive: watch::Sender<Vec<Tracked>>,
    reach: watch::Sender<FlyReach>,
) {
    tokio::spawn(async move {
        // All of the app's Machines: the visitors' and the concierge.
        let filter = ListFilter::default();
        let mut backoff = Duration::ZERO;
        let mut first = true;
        let reaping = Arc::new(Mutex::new(HashSet::new()));
        let mut dark_since = None;
        loop {
            if !std::mem::take(&mut first) {
                tokio::time::sleep(next_wait(backoff, rand::random::<f64>())).await;
            }
            let listed = launcher.api.list(&launcher.ephemeral_app, &filter).await;
            // Outside Fly a launcher has no id and no peers to share visitors with.
            if launcher.spec.launcher.is_some() {
                list_launchers(&launcher, &filter).await;
            }
            backoff = backoff_after(
                backoff,
                match &listed {
                    Err(FlyApiError::RateLimited { retry_after }) => Some(*retry_after),
                    _ => None,
                },
            );
            let before = *reach.borrow();
            let now = reach_after(before, &listed, &mut dark_since);
            if now == FlyReach::TokenRefused && before != FlyReach::TokenRefused {
                // Once, not every poll: the operator must act (a new FLY_API_TOKEN).
                tracing::error!("Fly refuses FLY_API_TOKEN: launches are stopped until it is replaced (fly tokens create deploy, fly secrets set)");
            }
            launcher.metrics.fly_reach(now);
            reach.send_if_modified(|seen| std::mem::replace(seen, now) != now);
            let machines = match listed {
                Ok(machines) => machines,
                Err(e) => {
                    tracing::warn!(error = %e, reach = ?now, "could not list Machines; keeping the last view");
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
            // What a list no longer shows needs no note of its destruction.
            launcher
                .destroyed
                .lock()
                .expect("destroyed lock")
                .retain(|id| machines.iter().any(|m| m.id == *id && living(&m)));
            launcher.concierges.saw(concierge::Seen::among(&machines));
            launcher.tend_concierges();
            launcher.metrics.machines_alive(now_alive.len());
            reap(&launcher, &now_alive, &reaping);
            launcher.refill(&now_alive);
            alive.send_if_modified(|seen| {
                let changed = *seen != now_alive;
                *seen = now_alive;
                changed
            });
        }
    });
}

/// Keeps [`Launcher::launchers`] to the started Machines of the launcher's own app; a list that
/// fails keeps the last view (a visitor's home moves only on what a list showed).
async fn list_launchers(launcher: &Launcher, filter: &ListFilter) {
    match launcher.api.list(&launcher.app_name, filter).await {
        Ok(machines) => {
            let mut started: Vec<MachineId> = machines
                .iter()
                .filter(|m| m.state == MachineState::Started)
                .map(|m| m.id)
                .collect();
            started.sort();
            // Fly's create budget is the app's, shared by every launcher Machine.
            launcher.creates.share_among(started.len());
            launcher.launchers.send_if_modified(|seen| {
                let changed = *seen != started;
                *seen = started;
                changed
            });
        }
        Err(e) => {
            tracing::debug!(error = %e, "could not list the launchers; keeping the last view")
        }
    }
}

/// Destroys Machines past their TTL plus grace. Idempotent: a Machine whose destroy is under
/// way (`reaping`) is not destroyed again by this launcher's next poll, and across launchers a
/// destroy of a Machine already gone is a success that only the launcher that destroyed it
/// counts.
fn reap(launcher: &Arc<Launcher>, alive: &[Tracked], reaping: &Arc<Mutex<HashSet<MachineId>>>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    for machine in alive
        .iter()
        .filter(|m| m.overdue(launcher.spec.timings.ttl, now))
    {
        let id = machine.id;
        if !reaping.lock().expect("reaping lock").insert(id) {
            continue;
        }
        let (launcher, reaping) = (launcher.clone(), reaping.clone());
        tokio::spawn(async move {
            match launcher.api.delete(&launcher.ephemeral_app, id, true).await {
                Ok(Deleted::Now) => {
                    launcher.metrics.reaped();
                    tracing::info!(machine = %id, "reaped an over-age Machine");
                }
                Ok(Deleted::AlreadyGone) => {
                    tracing::debug!(machine = %id, "over-age Machine already gone");
                }
                Err(e) => tracing::warn!(machine = %id, error = %e, "could not reap"),
            }
            reaping.lock().expect("reaping lock").remove(&id);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_come_every_poll_give_or_take_a_quarter() {
        assert_eq!(next_wait(Duration::ZERO, 0.0), POLL.mul_f64(0.75));
        assert_eq!(next_wait(Duration::ZERO, 1.0), POLL.mul_f64(1.25));
        assert_eq!(next_wait(Duration::ZERO, 0.5), POLL);
        assert_eq!(
            next_wait(Duration::ZERO, 7.0),
            POLL.mul_f64(1.25),
            "clamped"
        );
        // Two launchers' lists stay within Fly's 1 a second per app, with room for a third.
        assert!(3.0 / POLL.mul_f64(0.75).as_secs_f64() <= 1.0);
    }

    #[test]
    fn a_rate_limit_backs_off_doubling_to_a_bound_and_an_answer_resets() {
        let limited = |last, asked| backoff_after(last, Some(asked));
        let first = limited(Duration::ZERO, None);
        assert_eq!(first, POLL);
        assert_eq!(limited(first, None), POLL * 2);
        assert_eq!(
            limited(POLL * 2, Some(Duration::from_secs(20))),
            Duration::from_secs(20)
        );
        assert_eq!(limited(MAX_POLL, None), MAX_POLL);
        assert_eq!(backoff_after(MAX_POLL, None), Duration::ZERO);
        assert_eq!(next_wait(POLL * 2, 0.5), POLL * 2);
    }

    #[test]
    fn only_a_list_fly_did_not_answer_makes_it_unreachable_and_an_answer_ends_that() {
        let mut dark = None;
        let down = Err(FlyApiError::Timeout);
        let limited = Err(FlyApiError::RateLimited { retry_after: None });
        let refused = Err(FlyApiError::Unauthorized { status: 401 });
        let reachable = FlyReach::Reachable;
        assert_eq!(reach_after(reachable, &limited, &mut dark), reachable);
        assert!(dark.is_none(), "a rate limit is an answer");
        let now = reach_after(reachable, &down, &mut dark);
        assert!(matches!(now, FlyReach::Unreachable { .. }), "{now:?}");
        assert!(dark.is_some());
        // A rate limit while dark keeps it dark.
        assert_eq!(reach_after(now, &limited, &mut dark), now);
        assert_eq!(
            reach_after(now, &refused, &mut dark),
            FlyReach::TokenRefused
        );
        assert_eq!(reach_after(now, &Ok(Vec::new()), &mut dark), reachable);
        assert!(dark.is_none());
    }

    #[test]
    fn a_machine_without_launch_metadata_ages_from_when_fly_created_it() {
        let machine = |metadata: serde_json::Value| -> Machine {
            serde_json::from_value(serde_json::json!({
                "id": "0123456789abcd", "name": "flyby-slot-0", "state": "started",
                "region": "ams", "created_at": "2026-01-01T00:00:00Z",
                "config": {"metadata": metadata},
            }))
            .unwrap()
        };
        let created = 1_767_225_600;
        let by_hand = Tracked::from_machine(&machine(serde_json::json!({"flyby": "ephemeral"})));
        assert_eq!(by_hand.born, Some(created));
        let ttl = Duration::from_secs(120);
        assert!(by_hand.overdue(ttl, created + 150));
        // The launch's own clock comes first.
        let launched = Tracked::from_machine(&machine(
            serde_json::json!({"flyby": "ephemeral", "flyby_launched_at": "1767225700"}),
        ));
        assert_eq!(launched.born, Some(created + 100));
        assert!(!launched.overdue(ttl, created + 150));
    }

    #[test]
    fn a_machine_is_overdue_only_past_ttl_plus_grace() {
        let m = Tracked {
            id: MachineId::parse("0123456789abcd").unwrap(),
            name: "flyby-slot-0".into(),
            region: RegionCode::parse("ams").unwrap(),
            born: Some(1_000),
            warm: None,
        };
        let ttl = Duration::from_secs(120);
        assert!(!m.overdue(ttl, 1_000 + 149));
        assert!(m.overdue(ttl, 1_000 + 150));
        assert!(!Tracked { born: None, ..m }.overdue(ttl, u64::MAX));
    }
}
