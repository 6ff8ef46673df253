//! fly-proxy, played on one machine: the front door every local request goes through, so that
//! the `flyby` binary meets here what it meets on Fly.
//!
//! - **Routing by Host**: `<app>.localhost[:port]` goes to that app's started Machines that have
//!   a service on port 80 or 443 (plain HTTP locally). Any other Host: 404 `unknown_host`.
//! - **Load balancing** (`--balance`): nearest region to the edge (fly-proxy's rule), random,
//!   round-robin, or `wrong-first`, which sends each client request to a Machine the app will
//!   have to replay away from (see the `balance` module). The edge region is `--edge-region`, or per
//!   request the header [`EDGE_REGION_HEADER`].
//! - **Fly's request headers** (`Fly-Client-IP`, `Fly-Region`, `Fly-Forwarded-Port`,
//!   `X-Forwarded-*`, `Via`), the response header `fly-request-id`, and the client routing
//!   headers (`fly-force-instance-id`, `fly-prefer-instance-id`, `fly-prefer-region`,
//!   `fly-force-region`). Every other client-sent `fly-*` header is dropped: only the proxy
//!   may tell a Machine where a request comes from.
//! - **`fly-replay`** in header and JSON form with every field, `fly-replay-src`, fallbacks
//!   with `fly-replay-failed`, the 10-replay limit, the 1 MB replay body limit, and the replay
//!   cache (path- and session-based, see the `cache` module).
//! - **WebSockets**: an upgrade is forwarded like any request, replayed like any request, and
//!   completed only with the final Machine's `101`.
//!
//! Error statuses (Fly documents codes, not statuses; see the `error` module): 404 unknown host or app,
//! 400 invalid local or routing header, 503 PR01 no started Machine, 503 PR03 could not find a
//! good candidate (unreachable target, no fallback), 413 PA01 body too large to replay, 502 PA02
//! replay limit, 502 PA03 invalid replay (or a replay answering a fallback), 502 PA04 unknown
//! replay app, 502 PU02 a Machine's exchange broke.
//!
//! Rooms: [`serve`] (the accept loop, the final answer and WebSocket tunnels), `forward` (the
//! request as it goes on: Fly's headers added, the client's sanitised), `deliver` (which
//! Machines fit, tried in rounds until one answers, fallbacks, the replay cache's hits),
//! `follow` (the chain of replays, its policy the pure [`replay::next_step`]), and the pure
//! vocabulary in [`replay`], `balance`, `cache`, `table`, `body` and `error`.
//!
//! Counters (`GET /_local/stats`): `proxy.requests`; `proxy.replays.{delivered, fallback,
//! failed, limit, too_large, invalid, app_not_found, preferred_unavailable}`;
//! `proxy.replay_cache.{hits, misses, bypass, stale}`; `proxy.websockets`;
//! `proxy.errors.<code>`.

mod balance;
mod body;
mod cache;
mod deliver;
mod error;
mod follow;
mod forward;
pub mod replay;
mod serve;
mod table;

use deliver::{Delivered, Failure};
use forward::{
    app_of_host, client_routing, cookie_text, is_upgrade, sanitize, take_edge_query, take_parsed,
    Outgoing,
};
pub use serve::serve;

pub use body::REPLAY_BODY_LIMIT;
pub use error::{ProxyError, ERROR_HEADER};

use self::{
    balance::Strategy,
    body::{RequestBody, UpstreamBody},
    cache::{CachedRoute, Lookup, ReplayCache, SessionKey},
    replay::{
        next_step, CacheDirective, ChainFacts, FailReason, Fallback, NextStep, RegionAlias,
        RegionChoice, Replay, ReplayError, ReplayFailed, ReplaySrc, Transform,
    },
    table::{Route, Table},
};
use crate::{
    fly::{MachineId, RegionCode},
    local::{registry::new_ulid, Balance, Network, Platform},
};
use bytes::Bytes;
use http::{
    header::{self, HeaderName, HeaderValue},
    uri::{PathAndQuery, Scheme},
    Method, Request, Response, StatusCode, Uri,
};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::{
    body::{Body, Incoming},
    server::conn::http1,
    service::service_fn,
    upgrade::OnUpgrade,
};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use std::{
    collections::HashMap,
    convert::Infallible,
    hash::{Hash, Hasher},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tokio::{
    net::TcpListener,
    sync::{broadcast, watch},
};
use tracing::{debug, info, warn};

/// Request header (local only, stripped): the edge region for this request instead of
/// `--edge-region`, e.g. `flyby-local-edge-region: syd`. Plays a visitor elsewhere on Earth.
pub const EDGE_REGION_HEADER: &str = "flyby-local-edge-region";
/// Request header (local only, stripped): the client address for this request instead of the
/// socket's, e.g. `flyby-local-client-ip: 203.0.113.7`. Plays several visitors from one host.
pub const CLIENT_IP_HEADER: &str = "flyby-local-client-ip";
/// Query parameter (local only, stripped): `?flyby-local-edge=syd` on any request makes `syd`
/// the edge region of every later request from the same client address (until another such
/// query), for a browser, which cannot set [`EDGE_REGION_HEADER`]; the header still wins.
pub const EDGE_REGION_QUERY: &str = "flyby-local-edge";

/// How long a replay without `timeout` keeps trying its target at most. Fly's own default is
/// undocumented ("the default error timeout"); see also [`MAX_ROUNDS`].
pub const DEFAULT_REPLAY_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts (rounds over the fitting Machines) of a delivery without `timeout`: with the
/// backoff below, about 1.5 s before "could not find a good candidate". A replay with a
/// `timeout` keeps trying until it runs out instead.
pub const MAX_ROUNDS: u32 = 6;
/// Caps a replay's `timeout` (Fly states no maximum; a request should not hang for hours
/// because a Machine wrote `timeout=1000h`).
pub const MAX_REPLAY_TIMEOUT: Duration = Duration::from_secs(300);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A JSON replay body is a few hundred bytes; more is a Machine's mistake (PA03).
const MAX_REPLAY_JSON: usize = 64 * 1024;
/// A replaying Machine's own body is read to its end (so its connection returns to the pool)
/// when it is at most this large; larger ones are dropped with their connection.
const DRAIN_LIMIT: u64 = 64 * 1024;
/// Bounds the `wrong-first` memory of who served whom.
const MAX_REMEMBERED_VISITORS: usize = 10_000;

const FLY_REPLAY_SRC: HeaderName = HeaderName::from_static("fly-replay-src");
const FLY_REPLAY_FAILED: HeaderName = HeaderName::from_static("fly-replay-failed");
const FLY_REPLAY_CACHE: &str = "fly-replay-cache";
const FLY_REPLAY_CACHE_STATUS: HeaderName = HeaderName::from_static("fly-replay-cache-status");
const FLY_PREFERRED_UNAVAILABLE: HeaderName =
    HeaderName::from_static("fly-preferred-instance-unavailable");
const FLY_REQUEST_ID: HeaderName = HeaderName::from_static("fly-request-id");

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What the client receives: a Machine's streamed body, or the proxy's own page.
type ClientBody = Either<Incoming, Full<Bytes>>;

/// The proxy's shared state.
struct Proxy {
    /// Registry, stats and faults.
    platform: Arc<Platform>,
    /// `--edge-region`: where the emulated visitor connects unless a request says otherwise.
    edge_region: RegionCode,
    /// Its `Fly-Region` value, made once.
    edge_region_value: HeaderValue,
    balance: Balance,
    /// The port clients connect to: `Fly-Forwarded-Port` and `X-Forwarded-Port`.
    port_value: HeaderValue,
    /// Pooled keep-alive connections to Machines.
    client: Client<Network, UpstreamBody>,
    /// The routing snapshot and the registry version it was built from.
    table: Mutex<Arc<Table>>,
    /// Tells when the registry changed since the snapshot.
    registry_version: watch::Receiver<u64>,
    cache: ReplayCache,
    /// Advances with each load-balancing choice (round-robin and ties).
    tick: AtomicUsize,
    /// `wrong-first`: hash of (Host, Cookie) -> the Machine that last served it.
    last_served: Mutex<HashMap<u64, MachineId>>,
    /// The edge region a client address chose with [`EDGE_REGION_QUERY`].
    chosen_edges: Mutex<HashMap<IpAddr, RegionCode>>,
    /// Changes (closes) when `serve` ends: connections and tunnels stop with it.
    shutdown: watch::Receiver<()>,
}

/// What one client request is about, beyond the request itself.
struct Exchange {
    /// The app the Host names.
    app: String,
    /// The Host without port, lowercase: the replay cache's domain.
    host: String,
    /// The client's path (before any transform): what cache patterns match.
    path: PathAndQuery,
    edge: RegionCode,
    /// The request's session under the app's session-based cache rules, if any.
    session: Option<SessionKey>,
    /// The client skipped the cache (`bypass`): replays tell their target so.
    bypassed: bool,
    /// `wrong-first`: the visitor's (Host, Cookie) hash.
    visitor: Option<u64>,
}

impl Exchange {
    fn path(&self) -> &str {
        self.path.path()
    }
}

/// The client's routing headers, consumed by the proxy.
#[derive(Default)]
struct ClientRouting {
    force_instance: Option<MachineId>,
    prefer_instance: Option<MachineId>,
    /// From `fly-force-region` (hard) or `fly-prefer-region` (ends with `any`).
    regions: Vec<RegionChoice>,
    /// `fly-replay-cache-control: skip`.
    skip_cache: bool,
}

impl ClientRouting {
    fn is_empty(&self) -> bool {
        self.force_instance.is_none() && self.prefer_instance.is_none() && self.regions.is_empty()
    }
}

impl Proxy {
    fn new(platform: Arc<Platform>, port: u16, shutdown: watch::Receiver<()>) -> Proxy {
        let edge_region = platform.args.edge_region;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(platform.network.clone());
        let registry_version = platform.registry.subscribe();
        Proxy {
            edge_region,
            edge_region_value: HeaderValue::from_str(edge_region.as_str()).expect("ascii"),
            balance: platform.args.balance,
            port_value: HeaderValue::from(port),
            client,
            table: Mutex::new(Arc::new(Table::unbuilt())),
            registry_version,
            cache: ReplayCache::default(),
            tick: AtomicUsize::new(0),
            last_served: Mutex::new(HashMap::new()),
            chosen_edges: Mutex::new(HashMap::new()),
            shutdown,
            platform,
        }
    }

    fn count(&self, name: &str) {
        self.platform.stats.incr(name);
    }

    /// The routing snapshot, rebuilt if the registry changed since.
    fn table(&self) -> Arc<Table> {
        let version = *self.registry_version.borrow();
        let now = std::time::Instant::now();
        let mut table = self.table.lock().expect("table lock");
        if table.version != version || table.stale_at.is_some_and(|at| at <= now) {
            let fresh = Arc::new(Table::build(&self.platform.registry, version, now));
            // Fly drops cached routes to Machines that are gone; so does this cache.
            self.cache.retain_machines(|id| fresh.is_routable(id));
            *table = fresh;
        }
        table.clone()
    }

    async fn handle(
        self: &Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ClientBody> {
        self.count("proxy.requests");
        let mut edge = self.edge_region;
        let mut response = match self.exchange(request, peer, &mut edge).await {
            Ok(response) => response,
            Err(e) => {
                let code = e.code();
                self.platform.stats.incr(format!("proxy.errors.{code}"));
                if e.status().is_server_error() {
                    warn!(code, error = %e, "proxy error");
                } else {
                    debug!(code, error = %e, "proxy refused a request");
                }
                e.into_response().map(Either::Right)
            }
        };
        // Fly: `<ULID>-<edge region>`.
        let id = format!("{}-{}", new_ulid(), edge);
        let headers = response.headers_mut();
        headers.insert(FLY_REQUEST_ID, HeaderValue::from_str(&id).expect("ascii"));
        // Undocumented for responses; fly-proxy's answers carry it (HTTP/1.1 to the client).
        headers.append(header::VIA, HeaderValue::from_static("1.1 fly.io"));
        response
    }

    async fn exchange(
        self: &Arc<Self>,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        edge_out: &mut RegionCode,
    ) -> Result<Response<ClientBody>, ProxyError> {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        let (app, host) =
            app_of_host(host).ok_or_else(|| ProxyError::UnknownHost(host.to_owned()))?;
        let table = self.table();
        if table.app(&app).is_none() && !self.platform.registry.app_exists(&app) {
            return Err(ProxyError::UnknownApp(app));
        }
        if !self.platform.registry.has_public_ips(&app) {
            return Err(ProxyError::NoPublicIp(app));
        }

        let chosen = take_edge_query(request.uri_mut())?;
        let headers = request.headers_mut();
        let client_ip = take_parsed(headers, CLIENT_IP_HEADER, |s| s.parse::<IpAddr>().ok())?
            .unwrap_or(peer.ip());
        let edge = take_parsed(headers, EDGE_REGION_HEADER, |s| RegionCode::parse(s).ok())?;
        let edge = {
            let mut chosen_edges = self.chosen_edges.lock().expect("edges lock");
            if let Some(region) = chosen {
                chosen_edges.insert(client_ip, region);
            }
            edge.or_else(|| chosen_edges.get(&client_ip).copied())
        }
        .unwrap_or(self.edge_region);
        *edge_out = edge;
        let routing = client_routing(headers)?;
        let upgrade = is_upgrade(headers);
        sanitize(headers, upgrade);
        self.add_forwarding_headers(headers, client_ip, edge);
        let upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));

        let (parts, incoming) = request.into_parts();
        let content_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let body = RequestBody::read(incoming, content_length)
            .await
            .map_err(ProxyError::ClientBody)?;
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut outgoing = Outgoing {
            method: parts.method,
            path_and_query: path_and_query.clone(),
            headers: parts.headers,
            body,
        };
        let visitor = (self.balance == Balance::WrongFirst).then(|| {
            let mut hasher = std::hash::DefaultHasher::new();
            host.hash(&mut hasher);
            for cookie in outgoing.headers.get_all(header::COOKIE) {
                cookie.as_bytes().hash(&mut hasher);
            }
            hasher.finish()
        });
        let mut exchange = Exchange {
            app,
            host,
            path: path_and_query,
            edge,
            session: None,
            bypassed: false,
            visitor,
        };
        let first = self
            .first_hop(&table, &mut exchange, &routing, &mut outgoing)
            .await?;
        drop(table);
        self.follow(exchange, outgoing, first, upgrade).await
    }
}
