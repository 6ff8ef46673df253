//! The local platform's record of apps and Machines: what the Machines API reports and
//! changes, and what the proxy routes on. One lock around plain data; every state change
//! bumps a version on a watch channel so `wait` and tests can await a change instead of polling.

use crate::fly::{MachineId, RegionCode};
use serde_json::Value;
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::Mutex,
    time::SystemTime,
};
use tokio::sync::watch;

/// Where a Machine is in its life, with Fly's names for the states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    Created,
    Starting,
    Started,
    Stopping,
    Stopped,
    Destroying,
    Destroyed,
}

impl MachineState {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Created => "created",
            MachineState::Starting => "starting",
            MachineState::Started => "started",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::Destroying => "destroying",
            MachineState::Destroyed => "destroyed",
        }
    }
}

/// One entry of a Machine's `events` list, newest first as Fly returns them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MachineEvent {
    /// `launch`, `start`, `exit`, `stop`, `destroy`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub source: String,
    /// Milliseconds since the epoch, as Fly reports it.
    pub timestamp: u64,
}

/// Everything the platform knows of one Machine.
#[derive(Debug, Clone)]
pub struct MachineRecord {
    pub id: MachineId,
    pub name: String,
    pub app: String,
    pub region: RegionCode,
    pub state: MachineState,
    /// A ULID that changes with each update of the Machine, as on Fly.
    pub instance_id: String,
    /// 127.0.0.N: the Machine's own loopback address, its `FLY_PRIVATE_IP`.
    pub private_ip: Ipv4Addr,
    /// The config exactly as the creator sent it (Fly echoes it back), `image` resolved.
    pub config: Value,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub events: Vec<MachineEvent>,
    /// The OS process serving as this Machine, while there is one.
    pub pid: Option<u32>,
}

impl MachineRecord {
    /// The `internal_port` of each service in the config, with the public ports it serves.
    pub fn services(&self) -> Vec<ServiceRoute> {
        let Some(services) = self.config.get("services").and_then(Value::as_array) else {
            return Vec::new();
        };
        services
            .iter()
            .filter_map(|s| {
                let internal_port = u16::try_from(s.get("internal_port")?.as_u64()?).ok()?;
                let ports = s
                    .get("ports")
                    .and_then(Value::as_array)
                    .map(|ports| {
                        ports
                            .iter()
                            .filter_map(|p| u16::try_from(p.get("port")?.as_u64()?).ok())
                            .collect()
                    })
                    .unwrap_or_default();
                let replay_cache = s
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.pointer("/http_options/replay_cache")?.as_array().cloned())
                    .flatten()
                    .collect();
                Some(ServiceRoute {
                    internal_port,
                    ports,
                    replay_cache,
                })
            })
            .collect()
    }
}

/// What the proxy needs of one service of a Machine.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRoute {
    /// Where the Machine's process listens, on its private address.
    pub internal_port: u16,
    /// The public ports (80, 443, ...) this service takes traffic for.
    pub ports: Vec<u16>,
    /// `http_options.replay_cache` rules, as configured (session-based replay cache).
    pub replay_cache: Vec<Value>,
}

/// A started Machine the proxy may send a request to.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: MachineId,
    pub region: RegionCode,
    pub addr: SocketAddr,
}

#[derive(Debug, Default)]
struct Inner {
    /// App name -> its Machines. Destroyed Machines stay, in state `destroyed`, so that
    /// `include_deleted` and `wait?state=destroyed` can see them.
    apps: BTreeMap<String, BTreeMap<MachineId, MachineRecord>>,
    /// The last octet handed out in 127.0.0.0/8, so addresses are not reused while a
    /// lingering connection might still reach an old Machine.
    next_ip: u32,
}

/// The shared record. Cheap to read; every write notifies [`Registry::subscribe`]rs.
pub struct Registry {
    inner: Mutex<Inner>,
    version: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            inner: Mutex::new(Inner {
                next_ip: 2,
                ..Inner::default()
            }),
            version: watch::channel(0).0,
        }
    }
}

impl Registry {
    /// Creates the app if it does not exist yet (local apps need no `fly apps create`).
    pub fn ensure_app(&self, app: &str) {
        self.write(|inner| {
            inner.apps.entry(app.to_owned()).or_default();
        });
    }

    pub fn app_exists(&self, app: &str) -> bool {
        self.read(|inner| inner.apps.contains_key(app))
    }

    /// A fresh loopback address for a new Machine: 127.0.0.2, .3, ... then 127.0.1.0, ...
    pub fn allocate_ip(&self) -> Ipv4Addr {
        self.write(|inner| {
            let n = inner.next_ip;
            inner.next_ip += 1;
            Ipv4Addr::from(0x7f00_0000 | (n & 0x00ff_ffff))
        })
    }

    pub fn insert(&self, record: MachineRecord) {
        self.write(|inner| {
            inner
                .apps
                .entry(record.app.clone())
                .or_default()
                .insert(record.id, record);
        });
    }

    pub fn get(&self, app: &str, id: MachineId) -> Option<MachineRecord> {
        self.read(|inner| inner.apps.get(app)?.get(&id).cloned())
    }

    /// Finds a Machine by id in any app (ids are unique across the platform).
    pub fn find(&self, id: MachineId) -> Option<MachineRecord> {
        self.read(|inner| inner.apps.values().find_map(|m| m.get(&id).cloned()))
    }

    pub fn list(&self, app: &str) -> Vec<MachineRecord> {
        self.read(|inner| {
            inner
                .apps
                .get(app)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Every Machine of every app.
    pub fn all(&self) -> Vec<MachineRecord> {
        self.read(|inner| {
            inner
                .apps
                .values()
                .flat_map(|m| m.values().cloned())
                .collect()
        })
    }

    /// Applies `change` to one Machine and notifies; `None` if there is no such Machine.
    pub fn update<T>(
        &self,
        app: &str,
        id: MachineId,
        change: impl FnOnce(&mut MachineRecord) -> T,
    ) -> Option<T> {
        self.write(|inner| {
            let record = inner.apps.get_mut(app)?.get_mut(&id)?;
            let out = change(record);
            record.updated_at = SystemTime::now();
            Some(out)
        })
    }

    /// Started Machines of `app` with a service on `public_port`, with the address to reach it.
    pub fn candidates(&self, app: &str, public_port: u16) -> Vec<Candidate> {
        self.read(|inner| {
            let Some(machines) = inner.apps.get(app) else {
                return Vec::new();
            };
            machines
                .values()
                .filter(|m| m.state == MachineState::Started)
                .filter_map(|m| {
                    let service = m
                        .services()
                        .into_iter()
                        .find(|s| s.ports.contains(&public_port))?;
                    Some(Candidate {
                        id: m.id,
                        region: m.region,
                        addr: SocketAddr::from((m.private_ip, service.internal_port)),
                    })
                })
                .collect()
        })
    }

    /// A receiver that sees a new version after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        f(&self.inner.lock().expect("registry lock"))
    }

    fn write<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let out = f(&mut self.inner.lock().expect("registry lock"));
        self.version.send_modify(|v| *v += 1);
        out
    }
}
