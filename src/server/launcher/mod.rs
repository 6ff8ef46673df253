//! The launcher role's server side: launches (one visitor, one Machine), the shared tracker of
//! Machines alive with the reaper behind it, the limits, and the metrics endpoint.
//!
//! - Capacity: a Machine takes one of `max_machines` names (`flyby-slot-<n>`). Fly refuses a
//!   second Machine with a taken name, so the cap holds across every launcher Machine at once
//!   without any coordination between them, and without a check-then-create race.
//! - Every failure after a create destroys what was created; a launcher that dies mid-launch
//!   leaves a Machine that switches itself off when nobody claims it, and the reaper of any
//!   launcher destroys whatever outlives its TTL.
//! - The token for the Machines API stays in [`FlyApi`]; nothing here logs it.
//!
//! Rooms: this module (the [`Launcher`] and its server functions' entry points), `launch` (one
//! launch, create to hand-over), `launches` (the launches it keeps, by id and by visitor),
//! `holds` (what a launch gives back however it ends), [`request`] (what a launch learns from
//! its request, typed), [`machine_spec`] (the configs of the Machines it creates),
//! [`concierge`], `tracker` (the list and the reaper), [`pool`] (the warm pool: Machines made
//! ahead, started on the click), [`limits`], [`metrics`].

pub mod concierge;
mod holds;
mod launch;
mod launches;
pub mod limits;
pub mod machine_spec;
pub mod metrics;
pub mod pool;
pub mod request;
mod tracker;

use super::{
    affinity::{claim_path, LAUNCH_COOKIE},
    config::{Config, LauncherConfig},
    cookies,
    fly_api::{CreateMachineRequest, FlyApi, FlyApiConfig, FlyApiError, MachineState, WaitState},
    ownership::OwnerSecret,
};
use crate::{
    app::{
        protocol::{
            FlyReach, Handover, LaunchCall, LaunchEnd, LaunchProgress, LaunchRoute, LaunchTicket,
            LauncherInfo, MapView, Step,
        },
        AppError,
    },
    fly::{MachineId, RegionCode},
};
use futures::{SinkExt, StreamExt};
use http::HeaderMap;
use launches::{Launch, Launches};
use leptos::{prelude::use_context, server_fn::BoxedStream};
use limits::{TokenBucket, VisitorLimits};
use machine_spec::{MachineSpec, VisitorMachine};
use metrics::Metrics;
use request::{edge_region, LaunchId, Origin, VisitorKey};
use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{sync::watch, time::Instant};
pub use tracker::Tracked;

/// The port a visitor's Machine serves on (its service's `internal_port`).
pub const MACHINE_PORT: u16 = 8080;
/// Metadata that marks a Machine as a visitor's Machine launched by flyby.
pub const METADATA_ROLE: (&str, &str) = ("flyby", "ephemeral");
pub use concierge::CONCIERGE_ROLE;
/// How long a launch waits out the Machines API's rate limit before telling the visitor the
/// API is too busy.
const RATE_LIMIT_PATIENCE: Duration = Duration::from_secs(45);
/// How long the launch pin lives: a launch, and a little more for the hand-over.
const PIN_LIFETIME: Duration = Duration::from_secs(90);
/// How long a finished launch stays available to its watcher and hand-over; a launch that
/// handed over a Machine stays while the Machine lives, for its visitor's next press.
const KEEP_FINISHED: Duration = Duration::from_secs(120);
/// How long a press waits for Fly to say whether the visitor's Machine still lives.
const LIVING_CHECK: Duration = Duration::from_secs(2);

/// The launcher role's state, shared by its server functions and background tasks.
pub struct Launcher {
    /// What every Machine it creates is made of; `spec.launcher` is this launcher Machine, for
    /// the launch pin (`None` outside Fly).
    spec: MachineSpec,
    /// The region this launcher Machine runs in, for the launch's route.
    region: Option<RegionCode>,
    /// The launcher's own app name, to derive the ephemeral app's host from the request's.
    app_name: String,
    /// The app visitors' Machines are created in.
    ephemeral_app: String,
    /// The image visitors' Machines run: the launcher's own.
    image: Option<String>,
    settings: LauncherConfig,
    api: FlyApi,
    /// Probes a new Machine's `/health` over the private network.
    probe: reqwest::Client,
    creates: TokenBucket,
    /// Slot names of this launcher's creates in flight, which the tracker cannot see yet.
    reserved: Mutex<std::collections::HashSet<String>>,
    /// Machines this launcher destroyed that the tracker may still list: their slots are free.
    destroyed: holds::Destroyed,
    visitors: VisitorLimits,
    launches: Launches,
    alive: watch::Receiver<Vec<Tracked>>,
    /// Whether the tracker's last list reached Fly: launches wait while it does not.
    reach: watch::Receiver<FlyReach>,
    /// The visitors' app's concierges as the tracker last saw them, and this launcher's work on
    /// them.
    concierges: concierge::Concierges,
    /// The launcher's public origin (`FLYBY_LAUNCHER_URL`, or the first page a visitor loaded
    /// from it): the way back of the warm pool's Machines, which are made before any launch.
    origin: Mutex<Option<String>>,
    /// The started launcher Machines (this one among them), sorted, as the tracker last
    /// listed them: the affinity layer starts each visitor's launch on one of them.
    pub launchers: watch::Sender<Vec<MachineId>>,
    pub metrics: Arc<Metrics>,
}

/// The launcher of this process, for server functions.
pub fn current() -> Result<Arc<Launcher>, AppError> {
    use_context::<Arc<Launcher>>().ok_or(AppError::BadRequest("not a launcher".into()))
}

/// Why the launcher could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    #[error("Machines API client: {0}")]
    Api(#[from] super::fly_api::BuildError),
}

impl Launcher {
    /// Builds the launcher and starts its tracker and reaper. `None` unless `config` is for the
    /// launcher role.
    pub fn start(config: &Config) -> Result<Option<Arc<Self>>, LauncherError> {
        let super::config::RoleConfig::Launcher(settings) = &config.role_config else {
            return Ok(None);
        };
        let metrics = Arc::new(Metrics::default());
        let mut api_config =
            FlyApiConfig::new(settings.machines_api.clone(), settings.api_token.clone());
        let observed = metrics.clone();
        api_config.observer = Some(Arc::new(move |call| {
            observed.api_call(call.action, call.outcome.to_string())
        }));
        let api = FlyApi::new(api_config)?;
        let (alive_tx, alive) = watch::channel(Vec::new());
        let (reach_tx, reach) = watch::channel(FlyReach::Reachable);
        let launcher = Arc::new(Launcher {
            spec: MachineSpec {
                timings: config.timings,
                log_format: match config.log_format {
                    super::config::LogFormat::Human => "human",
                    super::config::LogFormat::Json => "json",
                },
                site_root: config.leptos.site_root.to_string(),
                launcher: config.fly.machine_id,
            },
            region: config.fly.region,
            app_name: config.fly.app_name.clone(),
            ephemeral_app: config.ephemeral_app.clone(),
            image: config.fly.image_ref.clone(),
            settings: settings.clone(),
            api,
            probe: reqwest::Client::builder()
                .timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .build()
                .expect("a plain HTTP client builds"),
            // Fly: 1 create per second per app, bursts of 3, shared by the launchers the
            // tracker lists.
            creates: TokenBucket::new(1.0, 3),
            reserved: Mutex::default(),
            destroyed: holds::Destroyed::default(),
            visitors: VisitorLimits::new(settings.launches_per_minute),
            launches: Launches::default(),
            alive,
            reach,
            // With a warm pool, the visitors' app has Machines before any visitor.
            concierges: concierge::Concierges::new(settings.warm_pool.total() > 0),
            launchers: watch::channel(Vec::new()).0,
            origin: Mutex::new(settings.launcher_url.clone()),
            metrics,
        });
        tracker::spawn(launcher.clone(), alive_tx, reach_tx);
        Ok(Some(launcher))
    }

    pub fn info(&self, headers: &HeaderMap) -> LauncherInfo {
        if let Some(origin) = Origin::of(headers) {
            self.learn_origin(&origin);
        }
        let edge = edge_region(headers);
        let distances_km = edge
            .map(|edge| {
                crate::fly::REGIONS
                    .iter()
                    .filter_map(|r| RegionCode::parse(r.code).ok())
                    .filter_map(|r| crate::fly::distance_km(edge, r))
                    .map(|km| km.round() as u32)
                    .collect::<Vec<_>>()
            })
            .filter(|d| d.len() == crate::fly::REGIONS.len())
            .unwrap_or_default();
        LauncherInfo {
            edge_region: edge,
            cap: self.settings.max_machines,
            distances_km,
        }
    }

    fn learn_origin(&self, origin: &Origin) {
        self.origin
            .lock()
            .expect("origin lock")
            .get_or_insert_with(|| origin.to_string());
    }

    /// Starts a launch for the visitor behind `headers`, or returns the one they already have
    /// running. Sets the launch pin so that the rest of the launch reaches this Machine.
    pub async fn begin_launch(
        self: &Arc<Self>,
        headers: &HeaderMap,
        chosen: Option<&str>,
    ) -> Result<LaunchTicket, AppError> {
        // A region picked on the map must be one of Fly's, today's: checked before anything
        // is counted or created.
        let chosen = match chosen.filter(|c| !c.is_empty()) {
            None => None,
            Some(code) => Some(
                RegionCode::parse(code)
                    .ok()
                    .filter(|r| r.region().is_some())
                    .ok_or_else(|| {
                        AppError::BadRequest(format!(
                            "{:?} is not a Fly region a Machine can be launched in",
                            code.chars().take(8).collect::<String>()
                        ))
                    })?,
            ),
        };
        let origin =
            Origin::of(headers).ok_or_else(|| AppError::BadRequest("no Host header".into()))?;
        if !origin.sent_from_itself(headers) {
            self.metrics.launch("refused_cross_site");
            return Err(AppError::BadRequest(
                "a launch must come from the launcher's own page".into(),
            ));
        }
        let visitor = VisitorKey::of(headers).ok_or_else(|| {
            AppError::BadRequest("a launch comes through fly-proxy (no Fly-Client-IP)".into())
        })?;
        // Get or create: a second press, a second tab or a reload gets the visitor's launch in
        // flight, or the Machine they have, and never a second one.
        let existing = match self.launches.running(visitor) {
            Some(id) => Some(id),
            None => self.living_launch_of(visitor).await,
        };
        if let Some(id) = existing {
            if let Some(launch) = self.launches.get(&id) {
                launch.reached(LaunchCall::Start, headers);
            }
            if let Some(me) = self.spec.launcher {
                set_cookie(cookies::launch_pin(me, PIN_LIFETIME, origin.is_https()));
            }
            return Ok(LaunchTicket {
                id: id.as_str().to_owned(),
            });
        }
        // Before the visitor's budget is spent: a launch now could only fail.
        match *self.reach.borrow() {
            FlyReach::Reachable => {}
            FlyReach::Unreachable { .. } => {
                self.metrics.launch("paused");
                return Err(AppError::LaunchesPaused);
            }
            FlyReach::TokenRefused => {
                self.metrics.launch("token_refused");
                return Err(AppError::LauncherMisconfigured);
            }
        }
        if let Err(retry) = self.visitors.admit(visitor) {
            self.metrics.launch("rate_limited");
            return Err(AppError::TooManyLaunches {
                retry_after_secs: retry.as_secs().max(1),
            });
        }
        let ephemeral_origin = match &self.settings.ephemeral_origin {
            Some(o) => o.clone(),
            None => origin
                .swap_app(&self.app_name, &self.ephemeral_app)
                .map(|o| o.to_string())
                .ok_or_else(|| {
                    tracing::error!(%origin, "cannot derive the ephemeral app's origin: set FLYBY_EPHEMERAL_ORIGIN");
                    AppError::Internal
                })?,
        };
        let id = LaunchId::mint();
        let route = self.spec.launcher.map(|launcher| LaunchRoute {
            launcher,
            region: self.region,
            calls: Vec::new(),
        });
        let launch = Arc::new(Launch {
            visitor,
            progress: watch::channel(LaunchProgress {
                route,
                ..LaunchProgress::default()
            })
            .0,
            handover: Mutex::new(None),
        });
        launch.reached(LaunchCall::Start, headers);
        if let Err(first) = self.launches.begin(id.clone(), launch.clone()) {
            return Ok(LaunchTicket {
                id: first.as_str().to_owned(),
            });
        }
        let region = chosen.or_else(|| edge_region(headers).filter(|r| r.region().is_some()));
        let origin_text = origin.to_string();
        self.learn_origin(&origin);
        // Visitors' Machines are about to exist, which may vanish under their visitors: from
        // now on the visitors' app has a concierge.
        if self.concierges.want() {
            self.tend_concierges();
        }
        let this = self.clone();
        let launch_id = id.clone();
        tokio::spawn(async move {
            this.run(
                launch_id.as_str(),
                &launch,
                region,
                &origin_text,
                &ephemeral_origin,
            )
            .await;
            this.launches.ended(&launch_id, &launch);
            tokio::time::sleep(KEEP_FINISHED).await;
            if let Some(machine) = launch.machine() {
                // Remembered while its Machine lives (a TTL at most): the tracker says when not.
                let mut alive = this.alive.clone();
                let _ = alive
                    .wait_for(|alive| !alive.iter().any(|m| m.id == machine))
                    .await;
            }
            this.launches.forget(&launch_id, &launch);
        });
        if let Some(me) = self.spec.launcher {
            set_cookie(cookies::launch_pin(me, PIN_LIFETIME, origin.is_https()));
        }
        Ok(LaunchTicket {
            id: id.as_str().to_owned(),
        })
    }

    /// The launch of `visitor`'s Machine, if they have one that Fly says is alive. Asked of
    /// Fly, not of the tracker's view: that is up to a poll old either way (a Machine just
    /// created is not in it yet, one that just ended still is).
    async fn living_launch_of(&self, visitor: VisitorKey) -> Option<LaunchId> {
        let (id, launch) = self.launches.handed_over(visitor)?;
        let machine = launch.machine()?;
        let asked =
            tokio::time::timeout(LIVING_CHECK, self.api.get(&self.ephemeral_app, machine)).await;
        match asked {
            Ok(Ok(m))
                if matches!(
                    m.state,
                    MachineState::Created | MachineState::Starting | MachineState::Started
                ) =>
            {
                Some(id)
            }
            Ok(Ok(_)) | Ok(Err(FlyApiError::NotFound { .. })) => {
                self.launches.no_longer_handed_over(visitor, &id);
                None
            }
            // Fly not answering: a new launch is refused or paused by what follows.
            _ => None,
        }
    }

    /// The progress of a launch, streamed whole on every change until it ends.
    pub fn watch_launch(
        self: Arc<Self>,
        headers: HeaderMap,
        mut input: BoxedStream<String, AppError>,
    ) -> BoxedStream<LaunchProgress, AppError> {
        let (mut tx, rx) = futures::channel::mpsc::channel(4);
        tokio::spawn(async move {
            let Some(Ok(id)) = input.next().await else {
                return;
            };
            let Some(launch) = LaunchId::parse(&id).and_then(|id| self.launches.get(&id)) else {
                let _ = tx
                    .send(Err(AppError::BadRequest("no such launch here".into())))
                    .await;
                return;
            };
            let mut changes = launch.progress.subscribe();
            launch.reached(LaunchCall::Progress, &headers);
            loop {
                let progress = changes.borrow_and_update().clone();
                let done = progress.outcome.is_some();
                if tx.send(Ok(progress)).await.is_err() || done || changes.changed().await.is_err()
                {
                    return;
                }
            }
        });
        rx.into()
    }

    /// The hand-over of a launch, when the launch ends, to the visitor who started it (anyone
    /// else holding the launch's id gets nothing): the page asks for it as soon as the launch
    /// is accepted, and the answer leaves the moment the Machine serves, not a round trip
    /// after the progress channel says so. A launch that failed answers with its error. The
    /// hand-over clears the launch pin: nothing of the launch is left to reach.
    pub async fn take_handover(
        &self,
        id: &str,
        headers: &HeaderMap,
    ) -> Result<LaunchEnd, AppError> {
        let no_handover = || AppError::BadRequest("no hand-over for this launch".into());
        let visitor = VisitorKey::of(headers);
        let launch = LaunchId::parse(id)
            .and_then(|id| self.launches.get(&id))
            .filter(|launch| Some(launch.visitor) == visitor)
            .ok_or_else(no_handover)?;
        launch.reached(LaunchCall::Handover, headers);
        // Every launch ends (by its deadline, `FLYBY_LAUNCH_SECS`), and `launch` keeps its sender alive.
        let mut changes = launch.progress.subscribe();
        let last = changes
            .wait_for(|p| p.outcome.is_some())
            .await
            .map_err(|_| no_handover())?
            .clone();
        if let Some(Err(error)) = last.outcome {
            // The pin stays: the visitor's next try reaches this launcher, which counts their
            // launches (the per-visitor limit is per launcher).
            return Ok(LaunchEnd::Failed(error));
        }
        let handover = launch
            .handover
            .lock()
            .expect("handover lock")
            .as_ref()
            .map(|(handover, _)| handover.clone());
        set_cookie(cookies::clear(LAUNCH_COOKIE));
        Ok(LaunchEnd::HandedOver {
            steps: last.steps,
            route: last.route,
            handover: handover.ok_or_else(no_handover)?,
        })
    }

    /// The Machines alive and Fly's reach, streamed on every change of the tracker's view.
    pub fn watch_machines(
        self: Arc<Self>,
        input: BoxedStream<(), AppError>,
    ) -> BoxedStream<MapView, AppError> {
        let (mut tx, rx) = futures::channel::mpsc::channel(2);
        let (mut alive, mut reach) = (self.alive.clone(), self.reach.clone());
        tokio::spawn(async move {
            // The page never sends anything; its stream ending means it left.
            let mut input = input;
            loop {
                let view = MapView {
                    // The warm pool's waiting Machines are nobody's yet: not on the map.
                    machines: alive
                        .borrow_and_update()
                        .iter()
                        .filter(|m| m.warm.is_none())
                        .map(Tracked::view)
                        .collect(),
                    fly: *reach.borrow_and_update(),
                };
                if tx.send(Ok(view)).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = alive.changed() => if changed.is_err() { return },
                    changed = reach.changed() => if changed.is_err() { return },
                    _ = input.next() => return,
                }
            }
        });
        rx.into()
    }
}

/// Sets a cookie on the server function's response.
fn set_cookie(cookie: String) {
    if let (Some(response), Ok(value)) = (
        use_context::<leptos_axum::ResponseOptions>(),
        http::HeaderValue::try_from(cookie),
    ) {
        response.append_header(http::header::SET_COOKIE, value);
    }
}
