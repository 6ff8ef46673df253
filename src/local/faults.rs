//! Knobs that make the local platform fail on purpose, set through `POST /_local/faults` (on the
//! API address, loopback only) and read by the Machines API, the supervisor and the proxy.
//!
//! Each knob is a [`Fault`]; most are consumed as they fire (`count`), so a test states exactly
//! how much failure it wants and nothing lingers into the next test.

use crate::fly::MachineId;
use serde::{Deserialize, Serialize};
use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};
use tokio::sync::broadcast;

/// One fault, as posted to `/_local/faults` (JSON, tagged by `kind`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// The next `count` calls of a Machines API action (`create`, `get`, `list`, `wait`,
    /// `start`, `stop`, `delete`, or `any`) fail: with `status` (and Fly's error body), after
    /// `delay_ms`, or by closing the connection without an answer (`refuse: true`). A delay
    /// alone delays the call and then performs it.
    Api {
        action: String,
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        status: Option<u16>,
        #[serde(default)]
        delay_ms: Option<u64>,
        #[serde(default)]
        refuse: bool,
    },
    /// The next `count` Machines created (whose name starts with `name_prefix`, if given)
    /// never reach `started` (their process is not run).
    NeverStart {
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        name_prefix: String,
    },
    /// The next `count` Machines created (whose name starts with `name_prefix`, if given)
    /// reach `started` (something listens on their port) but never answer a request.
    NeverServe {
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        name_prefix: String,
    },
    /// The next `count` Machines created (whose name starts with `name_prefix`, if given) are
    /// impostors: something else answers at their address, `200 ok` to every request with
    /// their id in `flyby-machine`, as a process on a recycled address could; it knows none of
    /// their config.
    Impostor {
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        name_prefix: String,
    },
    /// Kill this Machine's process now (SIGKILL), as a crash would.
    Crash { machine: MachineId },
    /// The proxy can no longer reach this Machine (connection refused), though its process
    /// still runs; cleared by `DELETE /_local/faults`.
    DropListener { machine: MachineId },
    /// Machines that start from now on are unknown to the proxy for `ms` after they start (no
    /// request is balanced to them, a replay to them finds no candidate), as Fly's proxy nodes
    /// learn of a started Machine a moment later; cleared by `DELETE /_local/faults`.
    RoutingDelay { ms: u64 },
    /// The proxy closes every WebSocket it tunnels to this Machine now, and answers `502` to
    /// new WebSocket upgrades to it for `for_ms`, as a network blip between a browser and a
    /// Machine would; the Machine and its process are untouched.
    CutWebsockets {
        machine: MachineId,
        #[serde(default)]
        for_ms: u64,
    },
    /// Fly has no room in `region`: every create there fails with `insufficient_capacity`
    /// until `DELETE /_local/faults`.
    NoCapacity { region: String },
}

fn one() -> u32 {
    1
}

/// What an API call should suffer, decided when it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiFailure {
    Status(u16),
    Refuse,
}

/// One armed `Api` fault and how many calls it still hits.
#[derive(Debug)]
struct ArmedApi {
    action: String,
    remaining: u32,
    status: Option<u16>,
    delay: Option<Duration>,
    refuse: bool,
}

/// The armed faults.
#[derive(Debug)]
pub struct Faults {
    inner: Mutex<Armed>,
    /// Tells the proxy's open WebSocket tunnels which Machine's tunnels to close now.
    cuts: broadcast::Sender<MachineId>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            inner: Mutex::default(),
            cuts: broadcast::channel(16).0,
        }
    }
}

#[derive(Debug, Default)]
struct Armed {
    api: Vec<ArmedApi>,
    never_start: Vec<(String, u32)>,
    never_serve: Vec<(String, u32)>,
    impostors: Vec<(String, u32)>,
    dropped: HashSet<MachineId>,
    routing_delay: Duration,
    full_regions: HashSet<String>,
    /// Until when WebSocket upgrades to a Machine are refused.
    upgrades_refused: HashMap<MachineId, Instant>,
}

impl Faults {
    /// Arms a fault. `Crash` is an action, not a state: the caller performs it.
    pub fn arm(&self, fault: &Fault) {
        let mut armed = self.inner.lock().expect("faults lock");
        match fault {
            Fault::Api {
                action,
                count,
                status,
                delay_ms,
                refuse,
            } => armed.api.push(ArmedApi {
                action: action.clone(),
                remaining: *count,
                status: *status,
                delay: delay_ms.map(Duration::from_millis),
                refuse: *refuse,
            }),
            Fault::NeverStart { count, name_prefix } => {
                armed.never_start.push((name_prefix.clone(), *count))
            }
            Fault::NeverServe { count, name_prefix } => {
                armed.never_serve.push((name_prefix.clone(), *count))
            }
            Fault::Impostor { count, name_prefix } => {
                armed.impostors.push((name_prefix.clone(), *count))
            }
            Fault::Crash { .. } => {}
            Fault::DropListener { machine } => {
                armed.dropped.insert(*machine);
            }
            Fault::RoutingDelay { ms } => armed.routing_delay = Duration::from_millis(*ms),
            Fault::NoCapacity { region } => {
                armed.full_regions.insert(region.clone());
            }
            Fault::CutWebsockets { machine, for_ms } => {
                let until = Instant::now() + Duration::from_millis(*for_ms);
                armed.upgrades_refused.insert(*machine, until);
                // No tunnel open is no receiver: nothing to cut.
                let _ = self.cuts.send(*machine);
            }
        }
    }

    /// Disarms everything.
    pub fn clear(&self) {
        *self.inner.lock().expect("faults lock") = Armed::default();
    }

    /// Consumes the first armed API fault matching `action`: the delay to wait first, then the
    /// failure to answer with (if any).
    pub fn take_api(&self, action: &str) -> Option<(Option<Duration>, Option<ApiFailure>)> {
        self.take_api_if(action, |_| true)
    }

    /// Consumes the first armed API fault matching `action` only if it refuses the connection:
    /// the delay to wait before refusing.
    pub fn take_api_refusal(&self, action: &str) -> Option<Option<Duration>> {
        self.take_api_if(action, |fault| fault.refuse)
            .map(|(delay, _)| delay)
    }

    fn take_api_if(
        &self,
        action: &str,
        wanted: impl Fn(&ArmedApi) -> bool,
    ) -> Option<(Option<Duration>, Option<ApiFailure>)> {
        let mut armed = self.inner.lock().expect("faults lock");
        let i = armed
            .api
            .iter()
            .position(|a| (a.action == action || a.action == "any") && a.remaining > 0)?;
        if !wanted(&armed.api[i]) {
            return None;
        }
        let fault = &mut armed.api[i];
        fault.remaining -= 1;
        let failure = if fault.refuse {
            Some(ApiFailure::Refuse)
        } else {
            fault.status.map(ApiFailure::Status)
        };
        let out = (fault.delay, failure);
        if fault.remaining == 0 {
            armed.api.remove(i);
        }
        Some(out)
    }

    /// Whether the Machine being created now, called `name`, must never start (consumes one).
    pub fn take_never_start(&self, name: &str) -> bool {
        take_one(
            &mut self.inner.lock().expect("faults lock").never_start,
            name,
        )
    }

    /// Whether the Machine being created now, called `name`, must never serve (consumes one).
    pub fn take_never_serve(&self, name: &str) -> bool {
        take_one(
            &mut self.inner.lock().expect("faults lock").never_serve,
            name,
        )
    }

    /// Whether the Machine being created now, called `name`, is an impostor (consumes one).
    pub fn take_impostor(&self, name: &str) -> bool {
        take_one(&mut self.inner.lock().expect("faults lock").impostors, name)
    }

    /// Whether Fly has no room in `region`.
    pub fn region_full(&self, region: &str) -> bool {
        self.inner
            .lock()
            .expect("faults lock")
            .full_regions
            .contains(region)
    }

    /// How long after it starts a Machine stays unknown to the proxy.
    pub fn routing_delay(&self) -> Duration {
        self.inner.lock().expect("faults lock").routing_delay
    }

    /// Where an open WebSocket tunnel hears that its Machine's tunnels are cut.
    pub fn websocket_cuts(&self) -> broadcast::Receiver<MachineId> {
        self.cuts.subscribe()
    }

    /// Whether a WebSocket upgrade to this Machine is refused now.
    pub fn upgrade_refused(&self, machine: MachineId) -> bool {
        let mut armed = self.inner.lock().expect("faults lock");
        match armed.upgrades_refused.get(&machine) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                armed.upgrades_refused.remove(&machine);
                false
            }
            None => false,
        }
    }

    /// Whether the proxy has lost this Machine's listener.
    pub fn listener_dropped(&self, machine: MachineId) -> bool {
        self.inner
            .lock()
            .expect("faults lock")
            .dropped
            .contains(&machine)
    }
}

/// Consumes one of the first armed fault whose prefix `name` has.
fn take_one(armed: &mut Vec<(String, u32)>, name: &str) -> bool {
    let Some(i) = armed
        .iter()
        .position(|(prefix, n)| *n > 0 && name.starts_with(prefix.as_str()))
    else {
        return false;
    };
    armed[i].1 -= 1;
    if armed[i].1 == 0 {
        armed.remove(i);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_faults_fire_count_times_then_vanish() {
        let faults = Faults::default();
        faults.arm(
            &serde_json::from_str(r#"{"kind":"api","action":"create","count":2,"status":500}"#)
                .unwrap(),
        );
        assert_eq!(faults.take_api("get"), None);
        assert_eq!(
            faults.take_api("create"),
            Some((None, Some(ApiFailure::Status(500))))
        );
        assert_eq!(
            faults.take_api("create"),
            Some((None, Some(ApiFailure::Status(500))))
        );
        assert_eq!(faults.take_api("create"), None);
    }

    #[test]
    fn a_delay_alone_delays_without_failing() {
        let faults = Faults::default();
        faults
            .arm(&serde_json::from_str(r#"{"kind":"api","action":"any","delay_ms":50}"#).unwrap());
        assert_eq!(
            faults.take_api("wait"),
            Some((Some(Duration::from_millis(50)), None))
        );
        assert_eq!(faults.take_api("wait"), None);
    }

    #[test]
    fn machine_faults_are_consumed() {
        let faults = Faults::default();
        faults.arm(&Fault::NeverStart {
            count: 1,
            name_prefix: String::new(),
        });
        assert!(faults.take_never_start("any"));
        assert!(!faults.take_never_start("any"));
        faults.arm(&Fault::NeverServe {
            count: 1,
            name_prefix: "flyby-slot-".into(),
        });
        assert!(
            !faults.take_never_serve("flyby-concierge-1"),
            "not its prefix"
        );
        assert!(faults.take_never_serve("flyby-slot-3"));
        assert!(!faults.take_never_serve("flyby-slot-4"));
        faults.arm(&Fault::Impostor {
            count: 1,
            name_prefix: String::new(),
        });
        assert!(faults.take_impostor("flyby-slot-4"));
        assert!(!faults.take_impostor("flyby-slot-4"));
        let id = MachineId::parse("0123456789abcd").unwrap();
        faults.arm(&Fault::DropListener { machine: id });
        assert!(faults.listener_dropped(id));
        faults.clear();
        assert!(!faults.listener_dropped(id));
    }
}
