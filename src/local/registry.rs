//! The local platform's record of apps and Machines: what the Machines API reports and
//! changes, and what the proxy routes on. One lock around plain data; every state change
//! bumps a version on a watch channel so `wait` and tests can await a change instead of polling.

use crate::{
    fly::{MachineId, RegionCode},
    local::{network::MachineAddrs, supervisor::MachineConfig},
};
use serde_json::Value;
use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
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
    /// A ULID, as Fly gives each event.
    pub id: String,
    /// `launch`, `start`, `exit`, `stop`, `restart`, `destroy`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The state the Machine is in after the event.
    pub status: String,
    /// `user` for what an API caller asked, `flyd` for what the platform did on its own.
    pub source: String,
    /// Milliseconds since the epoch, as Fly reports it.
    pub timestamp: u64,
    /// Details, as Fly attaches them to `exit` events (`{"exit_event": {...}}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
}

impl MachineEvent {
    pub fn new(kind: &str, status: MachineState, source: &str) -> MachineEvent {
        MachineEvent {
            id: new_ulid(),
            kind: kind.to_owned(),
            status: status.as_str().to_owned(),
            source: source.to_owned(),
            timestamp: epoch_millis(SystemTime::now()),
            request: None,
        }
    }

    pub fn with_request(mut self, request: Value) -> MachineEvent {
        self.request = Some(request);
        self
    }
}

/// A name that a live Machine of the same app already has. Displays as Fly's answer (Fly's
/// docs do not show it; this is the text of Fly's API that the launcher's client recognises,
/// naming the Machine that holds the name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("already_exists: unique machine name violation, machine ID {existing} already exists with name {name:?}")]
pub struct NameTaken {
    pub app: String,
    pub name: String,
    /// The Machine that has the name.
    pub existing: MachineId,
}

/// A fresh ULID: 48 bits of milliseconds then 80 random bits, in Crockford base32. Fly uses
/// them for `instance_id`, event ids and request ids.
pub fn new_ulid() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let millis = u128::from(epoch_millis(SystemTime::now())) & ((1 << 48) - 1);
    let value = (millis << 80) | (rand::random::<u128>() & ((1 << 80) - 1));
    (0..26)
        .map(|i| char::from(ALPHABET[((value >> (125 - 5 * i)) & 31) as usize]))
        .collect()
}

pub fn epoch_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
    /// Where the proxy reaches it, and where other Machines do (its `FLY_PRIVATE_IP`).
    pub addrs: MachineAddrs,
    /// The config exactly as the creator sent it: Fly echoes it back, and only that reads it.
    pub config: Value,
    /// The same config, parsed once at create: what the platform acts on.
    pub spec: MachineConfig,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub events: Vec<MachineEvent>,
    /// The OS process serving as this Machine, while there is one.
    pub pid: Option<u32>,
    /// When the proxy learns that this Machine, once started, is running. Fly: "After a Machine
    /// starts, there may be a short delay before all proxy nodes recognize that it is running"
    /// (reference/fly-proxy-autostop-autostart); the `routing_delay` fault plays it.
    pub routable_from: Option<std::time::Instant>,
}

impl MachineRecord {
    /// The `internal_port` of each service in the config, with the public ports it serves.
    pub fn services(&self) -> Vec<ServiceRoute> {
        let port = |n: Option<i64>| n.and_then(|n| u16::try_from(n).ok());
        self.spec
            .services
            .iter()
            .flatten()
            .filter_map(|s| {
                let ports = s.ports.iter().flatten();
                Some(ServiceRoute {
                    internal_port: port(s.internal_port)?,
                    ports: ports.clone().filter_map(|p| port(p.port)).collect(),
                    replay_cache: ports
                        .filter_map(|p| p.http_options.as_ref()?.replay_cache.clone())
                        .flatten()
                        .collect(),
                })
            })
            .collect()
    }

    /// The config's metadata value for `key`.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.spec.metadata.as_ref()?.get(key).map(String::as_str)
    }

    /// The config's image.
    pub fn image(&self) -> &str {
        self.spec.image.as_deref().unwrap_or_default()
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

#[derive(Debug, Default)]
struct Inner {
    /// App name -> its Machines. Destroyed Machines stay, in state `destroyed`, so that
    /// `include_deleted` and `wait?state=destroyed` can see them.
    apps: BTreeMap<String, BTreeMap<MachineId, MachineRecord>>,
    /// Apps with public addresses (`fly ips allocate-v6`, `fly ips allocate-v4 --shared`):
    /// only those are reachable by their `<app>.fly.dev` name. Fly: an app whose services come
    /// from Machine configs, not a deployed fly.toml, gets none by itself (networking/services).
    public: std::collections::BTreeSet<String>,
}

/// The shared record. Cheap to read; every write notifies [`Registry::subscribe`]rs.
pub struct Registry {
    inner: Mutex<Inner>,
    version: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            inner: Mutex::default(),
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

    /// Gives an existing app its public addresses, as `fly ips allocate-v6` and
    /// `fly ips allocate-v4 --shared` do; false if there is no such app.
    pub fn allocate_public_ips(&self, app: &str) -> bool {
        self.write(|inner| {
            inner.apps.contains_key(app) && {
                inner.public.insert(app.to_owned());
                true
            }
        })
    }

    /// Whether the app's public name resolves to anything.
    pub fn has_public_ips(&self, app: &str) -> bool {
        self.read(|inner| inner.public.contains(app))
    }

    /// Every app, with or without Machines.
    pub fn apps(&self) -> Vec<String> {
        self.read(|inner| inner.apps.keys().cloned().collect())
    }

    /// Inserts a new Machine unless a Machine of its app that is not destroyed already has its
    /// name (Fly: "Unique name for this Machine"). Check and insert happen under one lock.
    pub fn insert_new(&self, record: MachineRecord) -> Result<(), NameTaken> {
        let mut inner = self.inner.lock().expect("registry lock");
        let machines = inner.apps.entry(record.app.clone()).or_default();
        if let Some(holder) = machines
            .values()
            .find(|m| m.name == record.name && m.state != MachineState::Destroyed)
        {
            return Err(NameTaken {
                existing: holder.id,
                app: record.app,
                name: record.name,
            });
        }
        machines.insert(record.id, record);
        drop(inner);
        self.version.send_modify(|v| *v += 1);
        Ok(())
    }

    /// How many Machines each app has in each state.
    pub fn state_counts(&self) -> BTreeMap<String, BTreeMap<&'static str, u64>> {
        self.read(|inner| {
            inner
                .apps
                .iter()
                .map(|(app, machines)| {
                    let mut counts = BTreeMap::new();
                    for m in machines.values() {
                        *counts.entry(m.state.as_str()).or_default() += 1;
                    }
                    (app.clone(), counts)
                })
                .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::network::MachineNet;

    fn record(app: &str, name: &str, id: &str) -> MachineRecord {
        let now = SystemTime::now();
        MachineRecord {
            id: MachineId::parse(id).unwrap(),
            name: name.to_owned(),
            app: app.to_owned(),
            region: RegionCode::parse("ams").unwrap(),
            state: MachineState::Created,
            instance_id: new_ulid(),
            addrs: MachineNet::shared(std::net::Ipv4Addr::LOCALHOST.into()).addrs,
            config: Value::Null,
            spec: MachineConfig::default(),
            created_at: now,
            updated_at: now,
            events: Vec::new(),
            pid: None,
            routable_from: None,
        }
    }

    #[test]
    fn ulids_are_26_crockford_characters_in_time_order() {
        let a = new_ulid();
        assert_eq!(a.len(), 26);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_digit() || (c.is_ascii_uppercase() && !"ILOU".contains(c))));
        assert_ne!(a, new_ulid());
        // The first 10 characters are the time: never smaller later.
        assert!(new_ulid()[..10] >= a[..10]);
    }

    #[test]
    fn names_are_unique_among_live_machines_of_one_app() {
        let registry = Registry::default();
        registry
            .insert_new(record("a", "alpha", "00000000000001"))
            .unwrap();
        let taken = registry
            .insert_new(record("a", "alpha", "00000000000002"))
            .unwrap_err();
        assert_eq!(taken.name, "alpha");
        assert_eq!(taken.existing.as_str(), "00000000000001");
        registry
            .insert_new(record("b", "alpha", "00000000000003"))
            .unwrap();
        registry.update("a", MachineId::parse("00000000000001").unwrap(), |m| {
            m.state = MachineState::Destroyed
        });
        registry
            .insert_new(record("a", "alpha", "00000000000004"))
            .unwrap();
        assert_eq!(
            registry.state_counts()["a"],
            BTreeMap::from([("created", 1), ("destroyed", 1)])
        );
    }
}
