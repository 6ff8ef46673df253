//! The proxy's routing table: a snapshot of the registry shaped for routing (started Machines
//! with an HTTP service, by app, with their address already parsed), rebuilt only when the
//! registry's version changes. A request then costs one version check and one `Arc` clone
//! instead of a registry lock and a walk over every Machine's JSON config.

use super::cache::SessionRule;
use crate::{
    fly::{MachineId, RegionCode},
    local::registry::{MachineState, Registry},
};
use http::uri::Authority;
use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Instant};
use tracing::warn;

/// The public ports whose services take HTTP from the proxy. Locally both are plain HTTP.
const HTTP_PORTS: [u16; 2] = [80, 443];

/// A Machine the proxy may send a request to.
#[derive(Debug)]
pub struct Route {
    pub id: MachineId,
    pub app: Arc<str>,
    pub region: RegionCode,
    /// `127.0.0.N:internal_port`, parsed once for every request's URI.
    pub authority: Authority,
    /// The session-based replay cache rules of its HTTP service.
    pub session_rules: Arc<[SessionRule]>,
}

impl Route {
    pub fn new(
        id: MachineId,
        app: Arc<str>,
        region: RegionCode,
        addr: SocketAddr,
        session_rules: Arc<[SessionRule]>,
    ) -> Route {
        Route {
            id,
            app,
            region,
            authority: Authority::try_from(addr.to_string()).expect("a socket address"),
            session_rules,
        }
    }
}

/// What the table knows of any Machine, routable or not.
#[derive(Debug)]
pub struct MachineInfo {
    pub app: Arc<str>,
    pub region: RegionCode,
    /// Set while the Machine is started with an HTTP service.
    pub route: Option<Arc<Route>>,
}

/// The routable Machines of one app.
#[derive(Debug, Default)]
pub struct AppRoutes {
    /// Sorted by Machine id, so that round-robin has a stable order.
    pub routes: Vec<Arc<Route>>,
    /// Every session-based replay cache rule of the app's Machines (normally all the same).
    pub session_rules: Vec<SessionRule>,
}

/// A snapshot of the registry at `version`.
#[derive(Debug, Default)]
pub struct Table {
    pub version: u64,
    /// When a started Machine the table leaves out becomes known to the proxy: the table is
    /// stale from then on, though the registry did not change.
    pub stale_at: Option<Instant>,
    apps: HashMap<Arc<str>, AppRoutes>,
    machines: HashMap<MachineId, MachineInfo>,
}

impl Table {
    /// An empty table no registry version matches, so the first request builds a real one.
    pub fn unbuilt() -> Table {
        Table {
            version: u64::MAX,
            ..Table::default()
        }
    }

    pub fn build(registry: &Registry, version: u64, now: Instant) -> Table {
        let mut table = Table {
            version,
            ..Table::default()
        };
        for record in registry.all() {
            let app: Arc<str> = match table.apps.get_key_value(record.app.as_str()) {
                Some((name, _)) => name.clone(),
                None => {
                    let name: Arc<str> = Arc::from(record.app.as_str());
                    table.apps.insert(name.clone(), AppRoutes::default());
                    name
                }
            };
            let service = record
                .services()
                .into_iter()
                .find(|s| s.ports.iter().any(|p| HTTP_PORTS.contains(p)));
            let known = match record.routable_from {
                Some(at) if at > now => {
                    table.stale_at = Some(table.stale_at.map_or(at, |s| s.min(at)));
                    false
                }
                _ => true,
            };
            let route = match service {
                Some(service) if record.state == MachineState::Started && known => {
                    let rules: Vec<SessionRule> = service
                        .replay_cache
                        .iter()
                        .filter_map(|rule| match SessionRule::parse(rule) {
                            Ok(rule) => Some(rule),
                            Err(e) => {
                                warn!(machine = %record.id, error = %e, "ignoring a replay_cache rule");
                                None
                            }
                        })
                        .collect();
                    let apps = table.apps.get_mut(&app).expect("inserted above");
                    for rule in &rules {
                        if !apps.session_rules.contains(rule) {
                            apps.session_rules.push(rule.clone());
                        }
                    }
                    let route = Arc::new(Route::new(
                        record.id,
                        app.clone(),
                        record.region,
                        SocketAddr::new(record.addrs.proxy, service.internal_port),
                        rules.into(),
                    ));
                    apps.routes.push(route.clone());
                    Some(route)
                }
                _ => None,
            };
            table.machines.insert(
                record.id,
                MachineInfo {
                    app,
                    region: record.region,
                    route,
                },
            );
        }
        for app in table.apps.values_mut() {
            app.routes.sort_by_key(|r| r.id);
        }
        table
    }

    /// The app's routable Machines; `None` when the app has no Machine at all (it may still
    /// exist, empty: ask the registry).
    pub fn app(&self, name: &str) -> Option<&AppRoutes> {
        self.apps.get(name)
    }

    pub fn machine(&self, id: MachineId) -> Option<&MachineInfo> {
        self.machines.get(&id)
    }

    /// The Machine's route if it is routable and belongs to `app`.
    pub fn route_in(&self, app: &str, id: MachineId) -> Option<&Arc<Route>> {
        self.machines
            .get(&id)
            .filter(|m| &*m.app == app)?
            .route
            .as_ref()
    }

    pub fn is_routable(&self, id: MachineId) -> bool {
        self.machines.get(&id).is_some_and(|m| m.route.is_some())
    }
}
