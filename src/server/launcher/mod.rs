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

pub mod concierge;
pub mod limits;
pub mod machine_spec;
pub mod metrics;
mod tracker;

use super::{
    affinity::{claim_path, LAUNCH_COOKIE},
    config::{Config, LauncherConfig},
    cookies,
    fly_api::{CreateMachineRequest, FlyApi, FlyApiConfig, FlyApiError, WaitState},
    ownership::OwnerSecret,
};
use crate::{
    app::{
        launcher::{
            AliveMachine, Handover, LaunchEnd, LaunchProgress, LaunchTicket, LauncherInfo, Step,
            StepView,
        },
        AppError,
    },
    fly::{MachineId, RegionCode},
};
use futures::{SinkExt, StreamExt};
use http::HeaderMap;
use leptos::{prelude::use_context, server_fn::BoxedStream};
use limits::{TokenBucket, VisitorLimits};
use machine_spec::{MachineSpec, VisitorMachine};
use metrics::Metrics;
use std::{
    collections::HashMap,
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
/// How long a launch may take from request to serving before it is abandoned.
const LAUNCH_DEADLINE: Duration = Duration::from_secs(60);
/// How long a launch waits out the Machines API's rate limit before telling the visitor the
/// API is too busy.
const RATE_LIMIT_PATIENCE: Duration = Duration::from_secs(45);
/// How long the launch pin lives: a launch, and a little more for the hand-over.
const PIN_LIFETIME: Duration = Duration::from_secs(90);
/// How long a finished launch stays available to its watcher and hand-over.
const KEEP_FINISHED: Duration = Duration::from_secs(120);

/// What one launch has done, and its hand-over once ready.
struct Launch {
    visitor: String,
    progress: watch::Sender<LaunchProgress>,
    /// Given to the launch's visitor only, and again if they ask again: a proxy may cut their
    /// first request (asked at once, it waits for the whole launch) after the launch ended,
    /// with this server none the wiser, and the page then asks again (`app::launcher::run`).
    handover: Mutex<Option<Handover>>,
}

/// The launcher role's state, shared by its server functions and background tasks.
pub struct Launcher {
    /// What every Machine it creates is made of; `spec.launcher` is this launcher Machine, for
    /// the launch pin (`None` outside Fly).
    spec: MachineSpec,
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
    visitors: VisitorLimits,
    launches: Mutex<HashMap<String, Arc<Launch>>>,
    /// One visitor, one launch at a time: visitor -> launch id.
    active: Mutex<HashMap<String, String>>,
    alive: watch::Receiver<Vec<Tracked>>,
    /// The visitors' app's concierges as the tracker last saw them, and this launcher's work on
    /// them.
    concierges: concierge::Concierges,
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
            // Fly: 1 create per second per app, bursts of 3.
            creates: TokenBucket::new(1.0, 3),
            reserved: Mutex::default(),
            visitors: VisitorLimits::new(settings.launches_per_minute),
            launches: Mutex::default(),
            active: Mutex::default(),
            alive,
            concierges: concierge::Concierges::default(),
            metrics,
        });
        tracker::spawn(launcher.clone(), alive_tx);
        Ok(Some(launcher))
    }

    pub fn info(&self, headers: &HeaderMap) -> LauncherInfo {
        let edge = edge_region(headers);
        LauncherInfo {
            edge_region: edge.map(|r| r.to_string()),
            edge_city: edge.map(|r| r.city().to_owned()),
            cap: self.settings.max_machines,
        }
    }

    /// Starts a launch for the visitor behind `headers`, or returns the one they already have
    /// running. Sets the launch pin so that the rest of the launch reaches this Machine.
    pub fn begin_launch(self: &Arc<Self>, headers: &HeaderMap) -> Result<LaunchTicket, AppError> {
        let origin =
            request_origin(headers).ok_or_else(|| AppError::BadRequest("no Host header".into()))?;
        if !same_origin(headers, &origin) {
            self.metrics.launch("refused_cross_site");
            return Err(AppError::BadRequest(
                "a launch must come from the launcher's own page".into(),
            ));
        }
        let visitor = visitor(headers);
        if let Some(id) = self.active.lock().expect("active lock").get(&visitor) {
            return Ok(LaunchTicket { id: id.clone() });
        }
        if let Err(retry) = self.visitors.admit(&visitor) {
            self.metrics.launch("rate_limited");
            return Err(AppError::TooManyLaunches {
                retry_after_secs: retry.as_secs().max(1),
            });
        }
        let ephemeral_origin = match &self.settings.ephemeral_origin {
            Some(o) => o.clone(),
            None => swap_app(&origin, &self.app_name, &self.ephemeral_app).ok_or_else(|| {
                tracing::error!(%origin, "cannot derive the ephemeral app's origin: set FLYBY_EPHEMERAL_ORIGIN");
                AppError::Internal
            })?,
        };
        let id = hex::encode(rand::random::<[u8; 16]>());
        let launch = Arc::new(Launch {
            visitor: visitor.clone(),
            progress: watch::channel(LaunchProgress::default()).0,
            handover: Mutex::new(None),
        });
        self.launches
            .lock()
            .expect("launches lock")
            .insert(id.clone(), launch.clone());
        self.active
            .lock()
            .expect("active lock")
            .insert(visitor, id.clone());
        let region = edge_region(headers).filter(|r| r.region().is_some());
        let secure = origin.starts_with("https://");
        let this = self.clone();
        let launch_id = id.clone();
        // Visitors' Machines are about to exist, which may vanish under their visitors: from
        // now on the visitors' app has a concierge.
        if self.concierges.learn_origin(&origin) {
            self.tend_concierges();
        }
        tokio::spawn(async move {
            this.run(&launch_id, &launch, region, &origin, &ephemeral_origin)
                .await;
            this.active
                .lock()
                .expect("active lock")
                .remove(&launch.visitor);
            tokio::time::sleep(KEEP_FINISHED).await;
            this.launches
                .lock()
                .expect("launches lock")
                .remove(&launch_id);
        });
        if let Some(me) = self.spec.launcher {
            set_cookie(cookies::launch_pin(me, PIN_LIFETIME, secure));
        }
        Ok(LaunchTicket { id })
    }

    /// The progress of a launch, streamed whole on every change until it ends.
    pub fn watch_launch(
        self: Arc<Self>,
        mut input: BoxedStream<String, AppError>,
    ) -> BoxedStream<LaunchProgress, AppError> {
        let (mut tx, rx) = futures::channel::mpsc::channel(4);
        tokio::spawn(async move {
            let Some(Ok(id)) = input.next().await else {
                return;
            };
            let Some(launch) = self
                .launches
                .lock()
                .expect("launches lock")
                .get(&id)
                .cloned()
            else {
                let _ = tx
                    .send(Err(AppError::BadRequest("no such launch here".into())))
                    .await;
                return;
            };
            let mut changes = launch.progress.subscribe();
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
        let launch = self
            .launches
            .lock()
            .expect("launches lock")
            .get(id)
            .cloned()
            .filter(|launch| launch.visitor == visitor(headers))
            .ok_or_else(no_handover)?;
        // Every launch ends (LAUNCH_DEADLINE), and `launch` keeps its sender alive.
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
        let handover = launch.handover.lock().expect("handover lock").clone();
        set_cookie(cookies::clear(LAUNCH_COOKIE));
        Ok(LaunchEnd::HandedOver {
            steps: last.steps,
            handover: handover.ok_or_else(no_handover)?,
        })
    }

    /// The Machines alive, streamed on every change of the tracker's view.
    pub fn watch_machines(
        self: Arc<Self>,
        input: BoxedStream<(), AppError>,
    ) -> BoxedStream<Vec<AliveMachine>, AppError> {
        let (mut tx, rx) = futures::channel::mpsc::channel(2);
        let mut alive = self.alive.clone();
        tokio::spawn(async move {
            // The page never sends anything; its stream ending means it left.
            let mut input = input;
            loop {
                let view = alive
                    .borrow_and_update()
                    .iter()
                    .map(Tracked::view)
                    .collect();
                if tx.send(Ok(view)).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = alive.changed() => if changed.is_err() { return },
                    _ = input.next() => return,
                }
            }
        });
        rx.into()
    }

    /// One launch, from request to hand-over; whether it launched. Whatever it created is
    /// destroyed if it fails.
    async fn run(
        &self,
        id: &str,
        launch: &Launch,
        region: Option<RegionCode>,
        origin: &str,
        ephemeral_origin: &str,
    ) -> bool {
        let started = Instant::now();
        let step = |step: Step| {
            let at_ms = started.elapsed().as_millis() as u64;
            launch
                .progress
                .send_modify(|p| p.steps.push(StepView { step, at_ms }));
        };
        step(Step::Requested);
        let outcome = tokio::time::timeout(
            LAUNCH_DEADLINE,
            self.launch(id, region, origin, ephemeral_origin, &step),
        )
        .await
        .unwrap_or(Err((AppError::MachineDidNotStart, None)));
        let outcome = match outcome {
            Ok(handover) => {
                *launch.handover.lock().expect("handover lock") = Some(handover);
                self.metrics.launch("launched");
                self.metrics.phase("total", started.elapsed());
                Ok(())
            }
            Err((error, created)) => {
                if let Some(machine) = created {
                    self.destroy(machine).await;
                }
                self.metrics.launch(match error {
                    AppError::CapacityReached { .. } => "capacity",
                    AppError::FlyApiUnavailable => "api_failed",
                    AppError::NoRoomNearby => "no_room",
                    AppError::MachineDidNotStart => "did_not_start",
                    _ => "failed",
                });
                Err(error)
            }
        };
        let launched = outcome.is_ok();
        launch.progress.send_modify(|p| p.outcome = Some(outcome));
        launched
    }

    /// The steps of a launch; on failure, the error and the Machine to destroy, if any.
    async fn launch(
        &self,
        id: &str,
        region: Option<RegionCode>,
        origin: &str,
        ephemeral_origin: &str,
        step: &impl Fn(Step),
    ) -> Result<Handover, (AppError, Option<MachineId>)> {
        let image = self.image.clone().ok_or_else(|| {
            tracing::error!("FLY_IMAGE_REF is unset: this launcher cannot launch Machines");
            (AppError::Internal, None)
        })?;
        let secret = OwnerSecret::mint();
        let launched_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut request = CreateMachineRequest {
            name: None,
            region,
            config: self.spec.visitor(VisitorMachine {
                image: &image,
                launch: id,
                owner: &secret.hash(),
                origin,
                launched_at,
            }),
            ..CreateMachineRequest::default()
        };
        let phase = Instant::now();
        let machine = self
            .create_in_a_free_slot(&mut request, step)
            .await
            .map_err(|e| (e, None))?;
        self.metrics.phase("create", phase.elapsed());
        tracing::info!(machine = %machine.id, region = %machine.region, name = %machine.name, "launched");
        let created = Some(machine.id);
        step(Step::Created {
            region: machine.region.to_string(),
            city: machine.region.city().to_owned(),
        });

        let phase = Instant::now();
        self.api
            .wait(
                &self.ephemeral_app,
                machine.id,
                WaitState::Started,
                Duration::from_secs(30),
            )
            .await
            .map_err(|e| (visitor_error(&e, self.settings.max_machines), created))?;
        self.metrics.phase("start", phase.elapsed());
        step(Step::Started);

        let phase = Instant::now();
        self.until_serving(&machine.private_ip)
            .await
            .map_err(|()| (AppError::MachineDidNotStart, created))?;
        self.metrics.phase("serving", phase.elapsed());
        step(Step::Serving);
        Ok(Handover {
            claim_url: format!("{ephemeral_origin}{}", claim_path(machine.id)),
            secret: secret.expose().to_owned(),
        })
    }

    /// Creates the Machine under a free slot name; `CapacityReached` when none is.
    ///
    /// A slot is free when neither the tracker's view (up to one poll old) nor this launcher's
    /// own launches in flight hold it; Fly's name check settles the rest, including races with
    /// other launchers. A rate-limited create was not performed: it waits and tries again,
    /// and the visitor sees "waiting for a slot".
    async fn create_in_a_free_slot(
        &self,
        request: &mut CreateMachineRequest,
        step: &impl Fn(Step),
    ) -> Result<super::fly_api::Machine, AppError> {
        let cap = self.settings.max_machines;
        let mut tried: Vec<String> = Vec::new();
        let mut regions_tried: Vec<RegionCode> = Vec::new();
        let patience = Instant::now() + RATE_LIMIT_PATIENCE;
        loop {
            let Some(name) = self.reserve_slot(&tried) else {
                return Err(AppError::CapacityReached { cap });
            };
            let outcome = loop {
                self.creates.take(|| step(Step::WaitingForSlot)).await;
                request.name = Some(name.clone());
                match self.api.create(&self.ephemeral_app, request).await {
                    Err(FlyApiError::RateLimited { retry_after }) if Instant::now() < patience => {
                        // Other launchers spent the app's budget: hold back every launch of
                        // this one, not just this launch, then queue again.
                        step(Step::WaitingForSlot);
                        self.creates
                            .pause(retry_after.unwrap_or(Duration::from_secs(1)));
                    }
                    Err(FlyApiError::InsufficientCapacity { message }) => {
                        // That region is full: the next nearest to the visitor may not be.
                        let Some(next) = next_region(request.region, &mut regions_tried) else {
                            tracing::warn!(%message, "no capacity in the regions nearest the visitor");
                            break Err(FlyApiError::InsufficientCapacity { message });
                        };
                        tracing::info!(full = ?request.region, next = %next, "no capacity; trying the next nearest region");
                        request.region = Some(next);
                    }
                    other => break other,
                }
            };
            self.reserved.lock().expect("reserved lock").remove(&name);
            match outcome {
                Ok(machine) => return Ok(machine),
                Err(FlyApiError::NameTaken { .. }) => tried.push(name),
                Err(e) => {
                    tracing::warn!(error = %e, "create failed");
                    return Err(visitor_error(&e, cap));
                }
            }
        }
    }

    /// Picks and reserves a slot name that looks free and was not `tried`, at random so that
    /// launchers rarely collide.
    fn reserve_slot(&self, tried: &[String]) -> Option<String> {
        let alive = self.alive.borrow();
        let mut reserved = self.reserved.lock().expect("reserved lock");
        let free: Vec<String> = (0..self.settings.max_machines)
            .map(slot_name)
            .filter(|n| {
                !tried.contains(n) && !reserved.contains(n) && !alive.iter().any(|m| &m.name == n)
            })
            .collect();
        let name = free
            .get(rand::random::<u32>() as usize % free.len().max(1))?
            .clone();
        reserved.insert(name.clone());
        Some(name)
    }

    /// Polls the new Machine's `/health` over the private network until it answers 200.
    async fn until_serving(&self, private_ip: &str) -> Result<(), ()> {
        let ip: IpAddr = private_ip.parse().map_err(|_| {
            tracing::warn!(private_ip, "the new Machine has no usable private address");
        })?;
        let url = format!("http://{}/health", SocketAddr::new(ip, MACHINE_PORT));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(response) = self.probe.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        tracing::warn!(%url, "the new Machine never served");
        Err(())
    }

    /// Destroys a Machine this launcher created; a failure is left to the reaper.
    async fn destroy(&self, machine: MachineId) {
        match self.api.delete(&self.ephemeral_app, machine, true).await {
            Ok(()) => tracing::info!(%machine, "destroyed after a failed launch"),
            Err(e) => tracing::warn!(%machine, error = %e, "could not destroy; the reaper will"),
        }
    }
}

/// How many regions a launch tries, nearest to the visitor first, when Fly has no room.
const CAPACITY_REGIONS: usize = 3;

/// After `full` had no room: the region to try next, the nearest to the first region tried
/// that was not tried yet; `None` once [`CAPACITY_REGIONS`] were, or without a region to
/// measure from (Fly chose it).
fn next_region(full: Option<RegionCode>, tried: &mut Vec<RegionCode>) -> Option<RegionCode> {
    let full = full?;
    if !tried.contains(&full) {
        tried.push(full);
    }
    if tried.len() >= CAPACITY_REGIONS {
        return None;
    }
    let next = crate::fly::nearest_regions(tried[0])
        .into_iter()
        .find(|r| !tried.contains(r))?;
    Some(next)
}

/// What a visitor is told about a Machines API failure.
fn visitor_error(error: &FlyApiError, cap: u32) -> AppError {
    match error {
        FlyApiError::NameTaken { .. } => AppError::CapacityReached { cap },
        FlyApiError::InsufficientCapacity { .. } => AppError::NoRoomNearby,
        FlyApiError::WaitTimedOut => AppError::MachineDidNotStart,
        FlyApiError::Unauthorized { .. } => {
            tracing::error!("the Machines API refused the token");
            AppError::Internal
        }
        _ => AppError::FlyApiUnavailable,
    }
}

fn slot_name(n: u32) -> String {
    format!("flyby-slot-{n}")
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

/// The edge region fly-proxy says the visitor came through.
fn edge_region(headers: &HeaderMap) -> Option<RegionCode> {
    headers
        .get("fly-region")?
        .to_str()
        .ok()
        .and_then(|v| RegionCode::parse(v).ok())
}

/// Who the visitor is, for their launch budget: `Fly-Client-IP`, set by fly-proxy (never the
/// socket address, which is fly-proxy's own).
fn visitor(headers: &HeaderMap) -> String {
    headers
        .get("fly-client-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<IpAddr>().ok())
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// The origin the visitor used: scheme from `X-Forwarded-Proto` (fly-proxy), host from `Host`.
fn request_origin(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(http::header::HOST)?.to_str().ok()?;
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if !valid {
        return None;
    }
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|p| p.as_bytes() == b"https");
    Some(format!(
        "{}://{}",
        if https { "https" } else { "http" },
        host.to_ascii_lowercase()
    ))
}

/// CSRF: a launch must come from a page of this very origin.
fn same_origin(headers: &HeaderMap, origin: &str) -> bool {
    match headers
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    {
        Some(sent) => sent.eq_ignore_ascii_case(origin),
        None => headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"same-origin"),
    }
}

/// `http://flyby.example:3000` -> `http://flyby-machines.example:3000`.
fn swap_app(origin: &str, app: &str, ephemeral_app: &str) -> Option<String> {
    let (scheme, host) = origin.split_once("://")?;
    let rest = host.strip_prefix(app)?.strip_prefix('.')?;
    Some(format!("{scheme}://{ephemeral_app}.{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn a_full_region_sends_the_launch_to_the_next_nearest_twice_at_most() {
        let code = |c: &str| RegionCode::parse(c).unwrap();
        let mut tried = Vec::new();
        let first = next_region(Some(code("ams")), &mut tried).unwrap();
        // Amsterdam's nearest other regions are London, Paris, Frankfurt (a few hundred km).
        assert!(["lhr", "cdg", "fra"].contains(&first.as_str()), "{first}");
        let second = next_region(Some(first), &mut tried).unwrap();
        assert!(second != first && second.as_str() != "ams");
        assert!(
            crate::fly::distance_km(code("ams"), second).unwrap() < 1000.0,
            "still near the visitor: {second}"
        );
        assert_eq!(
            next_region(Some(second), &mut tried),
            None,
            "three regions at most"
        );
        // Without a region to start from (Fly chose one), there is no nearest to go to.
        assert_eq!(next_region(None, &mut Vec::new()), None);
    }

    #[test]
    fn the_ephemeral_origin_swaps_the_app_name() {
        assert_eq!(
            swap_app("https://flyby.fly.dev", "flyby", "flyby-machines").as_deref(),
            Some("https://flyby-machines.fly.dev")
        );
        assert_eq!(
            swap_app("http://flyby.localhost:3000", "flyby", "flyby-machines").as_deref(),
            Some("http://flyby-machines.localhost:3000")
        );
        assert_eq!(
            swap_app("http://evil.example", "flyby", "flyby-machines"),
            None
        );
        assert_eq!(
            swap_app("http://flybyx.example", "flyby", "flyby-machines"),
            None
        );
    }

    #[test]
    fn the_origin_comes_from_host_and_forwarded_proto() {
        assert_eq!(
            request_origin(&headers(&[
                ("host", "Flyby.fly.dev"),
                ("x-forwarded-proto", "https")
            ]))
            .as_deref(),
            Some("https://flyby.fly.dev")
        );
        assert_eq!(
            request_origin(&headers(&[("host", "flyby.localhost:3000")])).as_deref(),
            Some("http://flyby.localhost:3000")
        );
        assert_eq!(request_origin(&headers(&[("host", "a\"b")])), None);
        assert_eq!(request_origin(&headers(&[])), None);
    }

    #[test]
    fn a_launch_must_be_same_origin() {
        let origin = "http://flyby.localhost:3000";
        assert!(same_origin(&headers(&[("origin", origin)]), origin));
        assert!(!same_origin(
            &headers(&[("origin", "http://evil.example")]),
            origin
        ));
        assert!(same_origin(
            &headers(&[("sec-fetch-site", "same-origin")]),
            origin
        ));
        assert!(!same_origin(
            &headers(&[("sec-fetch-site", "cross-site")]),
            origin
        ));
        assert!(!same_origin(&headers(&[]), origin));
    }

    #[test]
    fn visitors_are_keyed_on_fly_client_ip() {
        assert_eq!(
            visitor(&headers(&[("fly-client-ip", "203.0.113.7")])),
            "203.0.113.7"
        );
        assert_eq!(
            visitor(&headers(&[("fly-client-ip", "not an ip")])),
            "unknown"
        );
        assert_eq!(visitor(&headers(&[])), "unknown");
    }
}
