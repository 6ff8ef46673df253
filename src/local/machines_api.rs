//! The Fly Machines REST API, played locally on `--api-addr` (Fly: `_api.internal:4280`), and
//! the admin endpoint under `/_local/` next to it.
//!
//! Same paths, JSON shapes, status codes and error body (`{"error": "..."}`) as Fly's, so that
//! `flyby`'s API client cannot tell the difference. Every `/v1` call passes one gate: the bearer
//! token, Fly's rate limits, then the armed API faults; and every one is counted as
//! `api.<action>.<status>`. Where Fly's answer is undocumented, the code says what was chosen.
//!
//! The listener is served by a small accept loop of our own rather than `axum::serve`: the
//! `refuse` fault must close a connection without answering, which only the code that owns the
//! connection can do.

use crate::{
    fly::{MachineId, RegionCode},
    local::{
        faults::{ApiFailure, Fault},
        registry::{new_ulid, MachineEvent, MachineRecord, MachineState, NameTaken},
        supervisor::{
            DurationSpec, GuestKind, LaunchSpec, MachineConfig, RestartPolicy, SignalSpec,
            SupervisorError,
        },
        Platform,
    },
};
use axum::{
    body::{Body, Bytes},
    extract::{rejection::QueryRejection, ConnectInfo, MatchedPath, Path, Query, Request, State},
    http::{Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};
use tokio::{net::TcpListener, sync::Notify, task::JoinSet};
use tower::ServiceExt;

/// The longest `wait` Fly accepts, in seconds; also its default.
const MAX_WAIT_SECONDS: u64 = 60;

/// Serves the Machines API and the admin endpoint until the listener fails for good (or the
/// task is aborted, which also drops every open connection).
pub async fn serve(listener: TcpListener, platform: Arc<Platform>) {
    let app = router(platform);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Small JSON answers: Nagle would only add latency to each of them.
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(stream, peer, app.clone()));
                }
                Err(e) if is_transient(&e) => {
                    tracing::warn!(error = %e, "Machines API: accept failed");
                    // Out of file descriptors and the like: give the system a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "Machines API: listener failed");
                    return;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    !matches!(
        e.kind(),
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::NotConnected
    )
}

/// A request's way to close its own connection without an answer (the `refuse` fault).
#[derive(Clone)]
struct Hangup(Arc<Notify>);

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, app: Router) {
    let hangup = Arc::new(Notify::new());
    let service = {
        let hangup = hangup.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(Hangup(hangup.clone()));
            app.clone().oneshot(request.map(Body::new))
        })
    };
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "Machines API connection ended");
            }
        }
        // Dropping the connection closes the socket before anything was written.
        () = hangup.notified() => {}
    }
}

/// The Machines API and the admin endpoint.
pub fn router(platform: Arc<Platform>) -> Router {
    let machines = Router::new()
        .route("/v1/apps/{app}/machines", post(create).get(list))
        .route("/v1/apps/{app}/machines/{id}", get(show).delete(destroy))
        .route("/v1/apps/{app}/machines/{id}/wait", get(wait))
        .route("/v1/apps/{app}/machines/{id}/start", post(start))
        .route("/v1/apps/{app}/machines/{id}/stop", post(stop))
        .route_layer(middleware::from_fn_with_state(platform.clone(), gate));
    let admin = Router::new()
        .route("/_local/stats", get(stats))
        .route("/_local/machines", get(admin_machines))
        .route("/_local/faults", post(arm_fault).delete(clear_faults))
        .route_layer(middleware::from_fn(loopback_only));
    machines
        .merge(admin)
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(platform)
}

/// Why an API call failed; answered with Fly's error body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    // Fly's text for a missing or wrong token, as flyctl shows it.
    #[error("unauthorized")]
    Unauthorized,
    // Undocumented: Fly answers 404 for an app the token cannot see.
    #[error("app not found")]
    AppNotFound,
    #[error("machine not found")]
    MachineNotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    // Fly's docs call Machine names unique but do not show how a taken one is refused: 409
    // Conflict, as for Fly's other conflicts (leases, versions), with the text in
    // `NameTaken`. fly-go's `name_taken` status code is for app names, so none is set.
    #[error(transparent)]
    NameTaken(#[from] NameTaken),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("deadline_exceeded: timeout waiting for machine to be {0}")]
    WaitTimeout(String),
    // Undocumented: Fly names the limits but neither the status (429 assumed) nor the body.
    #[error("rate limit exceeded")]
    RateLimited,
    #[error("injected fault: {0}")]
    Injected(StatusCode),
    #[error("the admin endpoint answers loopback clients only")]
    NotLoopback,
    #[error("not found")]
    NoRoute,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The platform itself failed (its network); the text says how.
    #[error("{0}")]
    Internal(String),
    // Undocumented: Fly's status code for a region without room. fly-go (flaps_error.go) reads
    // the body's `status`, whatever the code; its comments call 422 the proper one.
    #[error("insufficient resources available to fulfill request: could not reserve resource for machine: insufficient memory available to fulfill request")]
    NoCapacity,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::AppNotFound | ApiError::MachineNotFound | ApiError::NoRoute => {
                StatusCode::NOT_FOUND
            }
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NameTaken(_) => StatusCode::CONFLICT,
            ApiError::Supervisor(SupervisorError::Gone) => StatusCode::NOT_FOUND,
            // Fly's reference answers a stop or delete in the wrong state with 409.
            ApiError::Supervisor(
                SupervisorError::NotStarted
                | SupervisorError::StillActive
                | SupervisorError::NotStopped,
            ) => StatusCode::CONFLICT,
            ApiError::Supervisor(SupervisorError::ShuttingDown) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::WaitTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Injected(status) => *status,
            ApiError::NotLoopback => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NoCapacity => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.to_string() });
        if let ApiError::NoCapacity = self {
            body["status"] = json!("insufficient_capacity");
        }
        (self.status(), Json(body)).into_response()
    }
}

/// The API actions Fly rate-limits separately, named as in the counters and the faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Create,
    List,
    Get,
    Wait,
    Start,
    Stop,
    Delete,
    Other,
}

impl Action {
    fn of(method: &Method, route: Option<&str>) -> Action {
        const MACHINES: &str = "/v1/apps/{app}/machines";
        const MACHINE: &str = "/v1/apps/{app}/machines/{id}";
        let route = route.unwrap_or_default();
        match (method.as_str(), route.strip_prefix(MACHINE)) {
            ("GET", Some("")) => Action::Get,
            ("DELETE", Some("")) => Action::Delete,
            ("GET", Some("/wait")) => Action::Wait,
            ("POST", Some("/start")) => Action::Start,
            ("POST", Some("/stop")) => Action::Stop,
            _ if route == MACHINES && method == Method::POST => Action::Create,
            _ if route == MACHINES && method == Method::GET => Action::List,
            _ => Action::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::List => "list",
            Action::Get => "get",
            Action::Wait => "wait",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Delete => "delete",
            Action::Other => "other",
        }
    }

    /// Fly's limits: (requests per second, burst).
    fn limit(self) -> (f64, f64) {
        match self {
            Action::Get => (5.0, 10.0),
            _ => (1.0, 3.0),
        }
    }

    /// Whether Fly counts this action per Machine (else per app).
    fn per_machine(self) -> bool {
        !matches!(self, Action::Create | Action::List)
    }
}

/// Fly's Machines API rate limits: a token bucket per action, per Machine (per app for
/// create and list).
pub struct RateLimits {
    enabled: bool,
    buckets: Mutex<HashMap<(String, Action, String), Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimits {
    pub fn new(enabled: bool) -> RateLimits {
        RateLimits {
            enabled,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for one call; `false` when the bucket is empty.
    pub fn allow(&self, app: &str, action: Action, machine: &str) -> bool {
        if !self.enabled {
            return true;
        }
        let (rate, burst) = action.limit();
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limits lock");
        if buckets.len() > 10_000 {
            // Forget buckets that have refilled: they are indistinguishable from new ones.
            buckets.retain(|(_, action, _), b| {
                let (rate, burst) = action.limit();
                b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let key = (
            app.to_owned(),
            action,
            if action.per_machine() {
                machine.to_owned()
            } else {
                String::new()
            },
        );
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Every `/v1` call: counted, then token, rate limit and armed faults, in that order.
async fn gate(State(platform): State<Arc<Platform>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let action = Action::of(request.method(), route.as_deref());
    let mut response = guarded(&platform, action, request, next).await;
    // Fly tags every answer with a request id (`<ULID>-<region>`); clients log it.
    if let Ok(id) = format!("{}-{}", new_ulid(), platform.args.edge_region).parse() {
        response.headers_mut().insert("fly-request-id", id);
    }
    platform.stats.incr(format!(
        "api.{}.{}",
        action.name(),
        response.status().as_u16()
    ));
    response
}

async fn guarded(platform: &Platform, action: Action, request: Request, next: Next) -> Response {
    if !authorized(&platform.token, request.headers()) {
        return ApiError::Unauthorized.into_response();
    }
    let mut segments = request.uri().path().split('/').skip(3);
    let app = segments.next().unwrap_or_default().to_owned();
    let machine = segments.nth(1).unwrap_or_default().to_owned();
    if !platform.rate_limits.allow(&app, action, &machine) {
        return ApiError::RateLimited.into_response();
    }
    if let Some((delay, failure)) = platform.faults.take_api(action.name()) {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        match failure {
            Some(ApiFailure::Status(code)) => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return ApiError::Injected(status).into_response();
            }
            Some(ApiFailure::Refuse) => {
                platform
                    .stats
                    .incr(format!("api.{}.refused", action.name()));
                if let Some(Hangup(hangup)) = request.extensions().get::<Hangup>() {
                    hangup.notify_one();
                    return std::future::pending().await;
                }
                return ApiError::Injected(StatusCode::BAD_GATEWAY).into_response();
            }
            None => {}
        }
    }
    next.run(request).await
}

/// `Authorization: Bearer <token>`, or `FlyV1 <token>` as Fly's Go client sends macaroons.
/// Compared in constant time.
fn authorized(expected: &str, headers: &axum::http::HeaderMap) -> bool {
    use subtle::ConstantTimeEq;
    let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return false;
    };
    (scheme.eq_ignore_ascii_case("bearer") || scheme == "FlyV1")
        && bool::from(token.trim().as_bytes().ct_eq(expected.as_bytes()))
}

/// The create body (`CreateMachineRequest`). `lease_ttl`, `lsvd` and
/// `skip_service_registration` are accepted and ignored locally.
#[derive(Debug, Deserialize)]
struct CreateRequest {
    name: Option<String>,
    region: Option<String>,
    config: Option<Map<String, Value>>,
    skip_launch: Option<bool>,
    #[allow(dead_code)]
    skip_service_registration: Option<bool>,
    #[allow(dead_code)]
    lease_ttl: Option<u64>,
    #[allow(dead_code)]
    lsvd: Option<bool>,
}

async fn create(
    State(platform): State<Arc<Platform>>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let record = create_machine(&platform, &app, &body).await?;
    Ok(Json(machine_json(&record)))
}

/// Creates a Machine from a create body, as `POST /v1/apps/{app}/machines` does (the launchers
/// booted at start come through here too). Answers with the Machine as it is created, in state
/// `created`; its runner then boots it unless `skip_launch`.
pub async fn create_machine(
    platform: &Arc<Platform>,
    app: &str,
    body: &[u8],
) -> Result<MachineRecord, ApiError> {
    create_machine_with_secrets(platform, app, body, &[]).await
}

/// [`create_machine`], with `secrets` added to the process's environment but kept out of the
/// config the API shows, as Fly does with app secrets.
pub async fn create_machine_with_secrets(
    platform: &Arc<Platform>,
    app: &str,
    body: &[u8],
    secrets: &[(String, String)],
) -> Result<MachineRecord, ApiError> {
    if !platform.registry.app_exists(app) {
        return Err(ApiError::AppNotFound);
    }
    let request: CreateRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?;
    let mut config = request.config.ok_or_else(image_required)?;
    let typed: MachineConfig = serde_json::from_value(Value::Object(config.clone()))
        .map_err(|e| ApiError::BadRequest(format!("invalid config: {e}")))?;
    let image = typed
        .image
        .clone()
        .filter(|i| !i.trim().is_empty())
        .ok_or_else(image_required)?;
    let program = resolve_program(platform, &image)?;
    validate_config(&typed)?;
    let region = resolve_region(platform, request.region.as_deref())?;
    if platform.faults.region_full(region.as_str()) {
        return Err(ApiError::NoCapacity);
    }
    if platform.supervisor.is_closed() {
        return Err(SupervisorError::ShuttingDown.into());
    }
    // Fly fills in the guest it chose; a config without one gets the smallest Machine.
    config
        .entry("guest")
        .or_insert_with(|| json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}));
    let config = Value::Object(config);
    let internal_ports: Vec<u16> = typed
        .services
        .iter()
        .flatten()
        .filter_map(|s| u16::try_from(s.internal_port?).ok())
        .collect();
    let net = platform
        .network
        .machine(&internal_ports)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot set up the Machine's network: {e}")))?;
    let now = SystemTime::now();
    let mut record = MachineRecord {
        id: fresh_machine_id(platform),
        name: String::new(),
        app: app.to_owned(),
        region,
        state: MachineState::Created,
        instance_id: new_ulid(),
        addrs: net.addrs,
        config,
        created_at: now,
        updated_at: now,
        events: vec![MachineEvent::new("launch", MachineState::Created, "user")],
        pid: None,
        routable_from: None,
    };
    insert_named(
        platform,
        &mut record,
        request.name.filter(|n| !n.is_empty()),
    )?;

    let guest = if platform.faults.take_never_start(&record.name) {
        GuestKind::NeverStart
    } else if platform.faults.take_never_serve(&record.name) {
        GuestKind::NeverServe
    } else {
        GuestKind::Process
    };
    let mut spec = LaunchSpec::new(&record, &typed, program, guest, net);
    spec.add_secrets(secrets);
    if let Err(e) = platform.supervisor.launch(
        platform,
        &record,
        spec,
        request.skip_launch.unwrap_or(false),
    ) {
        platform.registry.update(app, record.id, |m| {
            m.state = MachineState::Destroyed;
        });
        return Err(e.into());
    }
    tracing::info!(app, machine = %record.id, name = %record.name, region = %record.region, image, "Machine created");
    Ok(record)
}

// Undocumented: Fly's exact answer to a config without an image; the docs only say it is the
// one required field.
fn image_required() -> ApiError {
    ApiError::Unprocessable("config.image is required".to_owned())
}

/// The executable an image maps to; it must exist now, so a typo fails the create instead of
/// the Machine.
fn resolve_program(platform: &Platform, image: &str) -> Result<std::path::PathBuf, ApiError> {
    let program = platform.image_program(image).ok_or_else(|| {
        ApiError::Unprocessable(format!(
            "image {image:?} is not mapped to a local executable: start flyby-local with \
             --image {image}=/path/to/executable"
        ))
    })?;
    if !program.is_file() {
        return Err(ApiError::Unprocessable(format!(
            "image {image:?} maps to {}, which is not a file (build it, or map the image with \
             --image {image}=/path/to/executable)",
            program.display()
        )));
    }
    Ok(program.to_owned())
}

fn validate_config(config: &MachineConfig) -> Result<(), ApiError> {
    for (i, service) in config.services.iter().flatten().enumerate() {
        if !matches!(service.internal_port, Some(1..=65535)) {
            return Err(ApiError::Unprocessable(format!(
                "services[{i}].internal_port must be between 1 and 65535"
            )));
        }
    }
    if RestartPolicy::from_config(config.restart.as_ref()).is_none() {
        return Err(ApiError::Unprocessable(
            "invalid restart.policy: expected \"no\", \"always\" or \"on-failure\"".to_owned(),
        ));
    }
    if let Some(memory) = config.guest.as_ref().and_then(|g| g.memory_mb) {
        if memory == 0 || !memory.is_multiple_of(256) {
            return Err(ApiError::Unprocessable(format!(
                "invalid guest.memory_mb {memory}: memory must be a multiple of 256 MB"
            )));
        }
    }
    if let Some(stop) = &config.stop_config {
        if stop.signal.as_ref().is_some_and(|s| s.resolve().is_none()) {
            return Err(ApiError::Unprocessable(
                "invalid stop_config.signal".to_owned(),
            ));
        }
        if stop.timeout.as_ref().is_some_and(|t| t.resolve().is_none()) {
            return Err(ApiError::Unprocessable(
                "invalid stop_config.timeout".to_owned(),
            ));
        }
    }
    Ok(())
}

/// The create's region, or the edge region (Fly: "the region nearest you") when absent.
fn resolve_region(platform: &Platform, region: Option<&str>) -> Result<RegionCode, ApiError> {
    let code = region
        .filter(|r| !r.is_empty())
        .unwrap_or(&platform.args.edge_region);
    RegionCode::parse(code)
        .ok()
        .filter(|r| r.region().is_some())
        .ok_or_else(|| ApiError::Unprocessable(format!("invalid region {code:?}")))
}

/// 14 random lowercase hex characters, unused on this platform.
fn fresh_machine_id(platform: &Platform) -> MachineId {
    loop {
        let hex = format!("{:014x}", rand::random::<u64>() & 0x00ff_ffff_ffff_ffff);
        let id = MachineId::parse(&hex).expect("14 lowercase hex characters");
        if platform.registry.find(id).is_none() {
            return id;
        }
    }
}

/// Inserts the Machine under its requested name (refused if taken), or under a generated one.
fn insert_named(
    platform: &Platform,
    record: &mut MachineRecord,
    requested: Option<String>,
) -> Result<(), ApiError> {
    if let Some(name) = requested {
        record.name = name;
        return Ok(platform.registry.insert_new(record.clone())?);
    }
    loop {
        record.name = generated_name();
        match platform.registry.insert_new(record.clone()) {
            Err(NameTaken { .. }) => continue,
            Ok(()) => return Ok(()),
        }
    }
}

/// A name like Fly generates them: `adjective-noun-1234`.
fn generated_name() -> String {
    const ADJECTIVES: &[&str] = &[
        "aged", "bold", "calm", "damp", "eager", "fancy", "gentle", "hidden", "icy", "jolly",
        "keen", "lively", "misty", "noisy", "old", "proud", "quiet", "rough", "silent", "tiny",
        "summer", "winter", "young", "wild",
    ];
    const NOUNS: &[&str] = &[
        "wind", "thunder", "river", "sun", "moon", "forest", "glade", "field", "flower", "leaf",
        "lake", "meadow", "night", "dawn", "sea", "snow", "star", "brook", "cloud", "rain",
    ];
    let pick = |words: &[&'static str]| words[rand::random_range(0..words.len())];
    format!(
        "{}-{}-{}",
        pick(ADJECTIVES),
        pick(NOUNS),
        rand::random_range(1000..10_000)
    )
}

/// A Machine as Fly's API shows it.
pub fn machine_json(machine: &MachineRecord) -> Value {
    let image = machine
        .config
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    json!({
        "id": machine.id,
        "name": machine.name,
        "state": machine.state.as_str(),
        "region": machine.region,
        "image_ref": image_ref(image),
        "instance_id": machine.instance_id,
        // Fly: the Machine's 6PN IPv6 address. Locally: its own 127.x.y.z.
        "private_ip": machine.addrs.private.to_string(),
        "config": machine.config,
        "events": machine.events,
        "created_at": rfc3339(machine.created_at),
        "updated_at": rfc3339(machine.updated_at),
        "host_status": "ok",
    })
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// `image_ref` as Fly splits an image reference: registry, repository, tag, digest.
fn image_ref(image: &str) -> Value {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let (name, tag) = match name.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (name, "latest"),
    };
    let (registry, repository) = match name.split_once('/') {
        Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
            (first.to_owned(), path.to_owned())
        }
        Some(_) => ("registry-1.docker.io".to_owned(), name.to_owned()),
        None => ("registry-1.docker.io".to_owned(), format!("library/{name}")),
    };
    let mut image_ref = json!({
        "registry": registry,
        "repository": repository,
        "tag": tag,
        "labels": {},
    });
    if let Some(digest) = digest {
        image_ref["digest"] = json!(digest);
    }
    image_ref
}

type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn query_pairs(query: QueryPairs) -> Result<Vec<(String, String)>, ApiError> {
    query
        .map(|Query(pairs)| pairs)
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))
}

/// A boolean query parameter, read as Go's `strconv.ParseBool` reads it.
fn parse_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ApiError::BadRequest(format!(
            "invalid {name} {value:?}: expected true or false"
        ))),
    }
}

async fn list(
    State(platform): State<Arc<Platform>>,
    Path(app): Path<String>,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    if !platform.registry.app_exists(&app) {
        return Err(ApiError::AppNotFound);
    }
    let mut include_deleted = false;
    let mut region = None;
    let mut metadata = Vec::new();
    for (key, value) in query_pairs(query)? {
        match key.as_str() {
            "include_deleted" => include_deleted = parse_bool(&key, &value)?,
            "region" => region = Some(value),
            _ => {
                if let Some(meta_key) = key.strip_prefix("metadata.") {
                    metadata.push((meta_key.to_owned(), value));
                }
            }
        }
    }
    let mut machines = platform.registry.list(&app);
    machines.retain(|m| {
        (include_deleted || m.state != MachineState::Destroyed)
            && region.as_ref().is_none_or(|r| m.region.as_str() == r)
            && metadata.iter().all(|(k, v)| {
                m.config
                    .pointer(&format!("/metadata/{}", pointer_escape(k)))
                    == Some(&Value::String(v.clone()))
            })
    });
    machines.sort_by_key(|m| (m.created_at, m.id));
    Ok(Json(Value::Array(
        machines.iter().map(machine_json).collect(),
    )))
}

fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The Machine named by the path, destroyed ones included (Fly still shows them).
fn find(platform: &Platform, app: &str, id: &str) -> Result<MachineRecord, ApiError> {
    if !platform.registry.app_exists(app) {
        return Err(ApiError::AppNotFound);
    }
    let id = MachineId::parse(id).map_err(|_| ApiError::MachineNotFound)?;
    platform
        .registry
        .get(app, id)
        .ok_or(ApiError::MachineNotFound)
}

async fn show(
    State(platform): State<Arc<Platform>>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(machine_json(&find(&platform, &app, &id)?)))
}

/// `GET .../wait?state=<s>&timeout=<seconds>`: 200 once the Machine is in one of the states
/// (`state` may repeat, as fly-go sends it), 408 when the timeout ends first. Awaits registry
/// changes; nothing polls.
async fn wait(
    State(platform): State<Arc<Platform>>,
    Path((app, id)): Path<(String, String)>,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let machine = find(&platform, &app, &id)?;
    let mut states = Vec::new();
    let mut timeout = MAX_WAIT_SECONDS;
    for (key, value) in query_pairs(query)? {
        match key.as_str() {
            "state" => states.push(wait_state(&value)?),
            "timeout" => {
                timeout = value
                    .parse::<u64>()
                    .ok()
                    .filter(|t| (1..=MAX_WAIT_SECONDS).contains(t))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "invalid timeout {value:?}: expected seconds, from 1 to {MAX_WAIT_SECONDS}"
                        ))
                    })?;
            }
            // Fly documents `instance_id` as required for `stopped`; it is accepted and not
            // enforced locally, like fly-go's `version` and `from_event_id`.
            _ => {}
        }
    }
    if states.is_empty() {
        states.push(Some(MachineState::Started));
    }
    let mut changes = platform.registry.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    loop {
        let state = platform
            .registry
            .get(&app, machine.id)
            .map_or(MachineState::Destroyed, |m| m.state);
        if states.contains(&Some(state)) {
            return Ok(Json(json!({"ok": true})));
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => {
                let wanted: Vec<&str> = states
                    .iter()
                    .map(|s| s.map_or("suspended", MachineState::as_str))
                    .collect();
                return Err(ApiError::WaitTimeout(wanted.join(" or ")));
            }
        }
    }
}

/// The states `wait` accepts: Fly's documented ones. `suspended` is `None`: local Machines
/// never suspend, so such a wait times out, as it would on Fly for a Machine that does not.
fn wait_state(value: &str) -> Result<Option<MachineState>, ApiError> {
    match value {
        "started" => Ok(Some(MachineState::Started)),
        "stopped" => Ok(Some(MachineState::Stopped)),
        "destroyed" => Ok(Some(MachineState::Destroyed)),
        "suspended" => Ok(None),
        _ => Err(ApiError::BadRequest(format!(
            "invalid state {value:?}: expected started, stopped, suspended or destroyed"
        ))),
    }
}

async fn start(
    State(platform): State<Arc<Platform>>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let machine = find(&platform, &app, &id)?;
    let previous = platform.supervisor.start(machine.id).await?;
    Ok(Json(json!({
        "previous_state": previous.as_str(),
        "migrated": false,
        "new_host": "",
    })))
}

/// The optional stop body (`StopRequest`).
#[derive(Debug, Default, Deserialize)]
struct StopRequest {
    signal: Option<SignalSpec>,
    timeout: Option<DurationSpec>,
}

async fn stop(
    State(platform): State<Arc<Platform>>,
    Path((app, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let machine = find(&platform, &app, &id)?;
    let request: StopRequest = if body.iter().all(u8::is_ascii_whitespace) {
        StopRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?
    };
    let signal = match &request.signal {
        Some(signal) => Some(
            signal
                .resolve()
                .ok_or_else(|| ApiError::BadRequest("invalid signal".to_owned()))?,
        ),
        None => None,
    };
    let timeout = match &request.timeout {
        Some(timeout) => Some(
            timeout
                .resolve()
                .ok_or_else(|| ApiError::BadRequest("invalid timeout".to_owned()))?,
        ),
        None => None,
    };
    platform
        .supervisor
        .stop(machine.id, signal, timeout)
        .await?;
    Ok(Json(json!({"ok": true})))
}

/// `DELETE .../{id}`: refused for a running Machine unless `force=true` (fly-go sends it as
/// `kill=true`, accepted too).
async fn destroy(
    State(platform): State<Arc<Platform>>,
    Path((app, id)): Path<(String, String)>,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let machine = find(&platform, &app, &id)?;
    let mut force = false;
    for (key, value) in query_pairs(query)? {
        if key == "force" || key == "kill" {
            force |= parse_bool(&key, &value)?;
        }
    }
    platform.supervisor.destroy(machine.id, force).await?;
    Ok(Json(json!({"ok": true})))
}

/// The admin endpoint is for this host only: a fault knob must not be reachable from the LAN
/// even when the API is bound to a wildcard address.
async fn loopback_only(request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    if !peer.is_some_and(is_loopback) {
        return ApiError::NotLoopback.into_response();
    }
    next.run(request).await
}

fn is_loopback(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

async fn stats(State(platform): State<Arc<Platform>>) -> Json<Value> {
    let machines: BTreeMap<String, Value> = platform
        .registry
        .state_counts()
        .into_iter()
        .map(|(app, counts)| (app, json!(counts)))
        .collect();
    Json(json!({
        "counters": platform.stats.snapshot(),
        "machines": machines,
    }))
}

/// Every Machine with its OS process id: what tests need to prove no process is left behind.
async fn admin_machines(State(platform): State<Arc<Platform>>) -> Json<Value> {
    let machines: Vec<Value> = platform
        .registry
        .all()
        .iter()
        .map(|m| {
            json!({
                "app": m.app,
                "id": m.id,
                "name": m.name,
                "state": m.state.as_str(),
                "region": m.region,
                "private_ip": m.addrs.private.to_string(),
                "proxy_ip": m.addrs.proxy.to_string(),
                "pid": m.pid,
            })
        })
        .collect();
    Json(Value::Array(machines))
}

async fn arm_fault(
    State(platform): State<Arc<Platform>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let fault: Fault = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid fault: {e}")))?;
    if let Fault::Crash { machine } = &fault {
        platform.supervisor.crash(*machine)?;
    }
    tracing::info!(?fault, "fault armed");
    platform.faults.arm(&fault);
    Ok(Json(json!({"ok": true})))
}

async fn clear_faults(State(platform): State<Arc<Platform>>) -> Json<Value> {
    platform.faults.clear();
    Json(json!({"ok": true}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_follow_the_matched_route() {
        let of = |m: Method, r: &str| Action::of(&m, Some(r));
        assert_eq!(of(Method::POST, "/v1/apps/{app}/machines"), Action::Create);
        assert_eq!(of(Method::GET, "/v1/apps/{app}/machines"), Action::List);
        assert_eq!(of(Method::GET, "/v1/apps/{app}/machines/{id}"), Action::Get);
        assert_eq!(
            of(Method::DELETE, "/v1/apps/{app}/machines/{id}"),
            Action::Delete
        );
        assert_eq!(
            of(Method::GET, "/v1/apps/{app}/machines/{id}/wait"),
            Action::Wait
        );
        assert_eq!(
            of(Method::POST, "/v1/apps/{app}/machines/{id}/stop"),
            Action::Stop
        );
        assert_eq!(of(Method::GET, "/_local/stats"), Action::Other);
    }

    #[test]
    fn bearer_and_flyv1_tokens_are_accepted_and_nothing_else() {
        let headers = |v: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(axum::http::header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert!(authorized("tok", &headers("Bearer tok")));
        assert!(authorized("tok", &headers("bearer tok")));
        assert!(authorized("tok", &headers("FlyV1 tok")));
        assert!(!authorized("tok", &headers("Bearer tok2")));
        assert!(!authorized("tok", &headers("Basic tok")));
        assert!(!authorized("tok", &headers("tok")));
        assert!(!authorized("tok", &axum::http::HeaderMap::new()));
    }

    #[test]
    fn rate_limits_allow_a_burst_then_refuse() {
        let limits = RateLimits::new(true);
        for _ in 0..3 {
            assert!(limits.allow("a", Action::List, ""));
        }
        assert!(!limits.allow("a", Action::List, ""));
        // Another app, another action, another Machine: other buckets.
        assert!(limits.allow("b", Action::List, ""));
        assert!(limits.allow("a", Action::Create, ""));
        for _ in 0..10 {
            assert!(limits.allow("a", Action::Get, "m1"));
        }
        assert!(!limits.allow("a", Action::Get, "m1"));
        assert!(limits.allow("a", Action::Get, "m2"));
        assert!(RateLimits::new(false).allow("a", Action::List, ""));
    }

    #[test]
    fn image_refs_split_like_docker() {
        assert_eq!(
            image_ref("registry.fly.io/flyby:local"),
            json!({"registry": "registry.fly.io", "repository": "flyby", "tag": "local", "labels": {}})
        );
        assert_eq!(image_ref("ubuntu")["repository"], "library/ubuntu");
        assert_eq!(image_ref("ubuntu")["tag"], "latest");
        assert_eq!(image_ref("flyio/app:1")["registry"], "registry-1.docker.io");
        assert_eq!(
            image_ref("localhost:5000/app@sha256:abc")["digest"],
            "sha256:abc"
        );
    }

    #[test]
    fn only_loopback_peers_reach_the_admin_endpoint() {
        assert!(is_loopback("127.0.0.1:1".parse().unwrap()));
        assert!(is_loopback("[::1]:1".parse().unwrap()));
        assert!(is_loopback("[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(!is_loopback("192.168.1.2:1".parse().unwrap()));
        assert!(!is_loopback("[::ffff:10.0.0.1]:1".parse().unwrap()));
    }
}
