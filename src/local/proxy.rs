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
//! Counters (`GET /_local/stats`): `proxy.requests`; `proxy.replays.{delivered, fallback,
//! failed, limit, too_large, invalid, app_not_found, preferred_unavailable}`;
//! `proxy.replay_cache.{hits, misses, bypass, stale}`; `proxy.websockets`;
//! `proxy.errors.<code>`.

mod balance;
mod body;
mod cache;
mod error;
pub mod replay;
mod table;

pub use body::REPLAY_BODY_LIMIT;
pub use error::{ProxyError, ERROR_HEADER};

use self::{
    balance::Strategy,
    body::{RequestBody, UpstreamBody},
    cache::{CachedRoute, Lookup, ReplayCache, SessionKey},
    replay::{
        CacheDirective, FailReason, Fallback, RegionAlias, RegionChoice, Replay, ReplayError,
        ReplayFailed, ReplaySrc, Transform,
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
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, info, warn};

/// Request header (local only, stripped): the edge region for this request instead of
/// `--edge-region`, e.g. `flyby-local-edge-region: syd`. Plays a visitor elsewhere on Earth.
pub const EDGE_REGION_HEADER: &str = "flyby-local-edge-region";
/// Request header (local only, stripped): the client address for this request instead of the
/// socket's, e.g. `flyby-local-client-ip: 203.0.113.7`. Plays several visitors from one host.
pub const CLIENT_IP_HEADER: &str = "flyby-local-client-ip";

/// Fly: "up to 10 times"; the 11th `fly-replay` of one request is PA02.
pub const MAX_REPLAYS: u32 = 10;
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

/// Serves the proxy on `listener` until the task running it is aborted; then every client
/// connection and WebSocket tunnel it opened ends too.
pub async fn serve(listener: TcpListener, platform: Arc<Platform>) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    // Dropped when this task ends (it is aborted at shutdown): that closes `shutdown`.
    let (_shutdown_guard, shutdown) = watch::channel(());
    let proxy = Arc::new(Proxy::new(platform, port, shutdown));
    info!(port, edge_region = %proxy.edge_region, balance = ?proxy.balance, "proxy serving");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                warn!(error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "TCP_NODELAY on a client socket");
        }
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let mut shutdown = proxy.shutdown.clone();
            let service = service_fn({
                let proxy = proxy.clone();
                move |request| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(request, peer).await) }
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        debug!(%peer, error = %e, "client connection ended");
                    }
                }
                _ = shutdown.changed() => {}
            }
        });
    }
}

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
    /// Changes (closes) when `serve` ends: connections and tunnels stop with it.
    shutdown: watch::Receiver<()>,
}

/// A request as the proxy sends it to Machines, kept to send it again on replay.
struct Outgoing {
    method: Method,
    path_and_query: PathAndQuery,
    headers: http::HeaderMap,
    body: RequestBody,
}

impl Outgoing {
    /// The request for one Machine, with this hop's own headers on top; `None` when the body
    /// streamed to an earlier Machine and cannot be sent again.
    fn to(
        &mut self,
        route: &Route,
        hop: &[(HeaderName, HeaderValue)],
    ) -> Option<Request<UpstreamBody>> {
        let body = self.body.take()?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(route.authority.clone());
        parts.path_and_query = Some(self.path_and_query.clone());
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path");
        let headers = request.headers_mut();
        *headers = self.headers.clone();
        for (name, value) in hop {
            headers.insert(name.clone(), value.clone());
        }
        Some(request)
    }

    /// A copy to send back to a Machine after a failed replay (buffered bodies only, which
    /// every replayed request has).
    fn replay_copy(&self) -> Option<Outgoing> {
        Some(Outgoing {
            method: self.method.clone(),
            path_and_query: self.path_and_query.clone(),
            headers: self.headers.clone(),
            body: self.body.replay_copy()?,
        })
    }

    fn apply(&mut self, transform: &Transform) {
        if let Some(path) = &transform.path {
            self.path_and_query = path.clone();
        }
        for name in &transform.delete_headers {
            self.headers.remove(name);
        }
        for (name, value) in &transform.set_headers {
            self.headers.insert(name.clone(), value.clone());
        }
    }
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

/// A Machine's answer, and how it got there.
struct Delivered {
    route: Arc<Route>,
    response: Response<Incoming>,
    /// The headers this hop added, for a fallback to the same Machine.
    hop: Vec<(HeaderName, HeaderValue)>,
    /// A fallback's answer may not replay again.
    fallback: bool,
}

/// Which Machines fit a delivery.
enum Spec<'a> {
    /// Exactly this Machine of this app.
    Instance { app: &'a str, id: MachineId },
    /// Load-balanced among the app's Machines.
    Balance {
        app: &'a str,
        regions: &'a [RegionChoice],
        /// Never this one (`elsewhere=true`).
        exclude: Option<MachineId>,
        /// Only if no other (`wrong-first`).
        avoid: &'a [MachineId],
        strategy: Strategy,
    },
}

/// How hard a delivery tries.
#[derive(Clone, Copy)]
struct Retry {
    rounds: u32,
    deadline: Duration,
    /// Keep trying when no Machine fits yet (a replay's target may be starting); a client
    /// request to an app with no started Machine fails at once instead.
    wait_for_candidates: bool,
}

impl Retry {
    /// One pass over the fitting Machines: for hints (a cache hit, a preferred instance).
    const ONCE: Retry = Retry {
        rounds: 1,
        deadline: DEFAULT_REPLAY_TIMEOUT,
        wait_for_candidates: false,
    };
    /// A client request, or a fallback.
    const CLIENT: Retry = Retry {
        rounds: MAX_ROUNDS,
        deadline: DEFAULT_REPLAY_TIMEOUT,
        wait_for_candidates: false,
    };

    /// A replay (or `fly-force-instance-id`): retried, bounded by its `timeout` if it has one.
    fn replay(timeout: Option<Duration>) -> Retry {
        match timeout {
            Some(timeout) => Retry {
                rounds: u32::MAX,
                deadline: timeout.min(MAX_REPLAY_TIMEOUT),
                wait_for_candidates: true,
            },
            None => Retry {
                rounds: MAX_ROUNDS,
                deadline: DEFAULT_REPLAY_TIMEOUT,
                wait_for_candidates: true,
            },
        }
    }
}

/// Why a delivery did not produce an answer.
enum Failure {
    /// No fitting Machine could be reached: a fallback applies.
    Unreachable(FailReason),
    /// A Machine took the request and the exchange broke, or the request cannot be sent
    /// again: no retry, no fallback.
    Fatal(ProxyError),
}

/// A Machine's answer, read as far as needed to tell whether it is a replay.
enum Answer {
    Final {
        response: Response<Incoming>,
        /// It carried `fly-replay-cache: invalidate`.
        invalidate: bool,
    },
    Replay(Replay),
    Invalid(ReplayError),
}

impl Proxy {
    fn new(platform: Arc<Platform>, port: u16, shutdown: watch::Receiver<()>) -> Proxy {
        let edge_region = RegionCode::parse(&platform.args.edge_region).unwrap_or_else(|_| {
            warn!(edge_region = %platform.args.edge_region, "not a region code; using ams");
            RegionCode::parse("ams").expect("a region code")
        });
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

        let headers = request.headers_mut();
        let edge = take_parsed(headers, EDGE_REGION_HEADER, |s| RegionCode::parse(s).ok())?
            .unwrap_or(self.edge_region);
        *edge_out = edge;
        let client_ip = take_parsed(headers, CLIENT_IP_HEADER, |s| s.parse::<IpAddr>().ok())?
            .unwrap_or(peer.ip());
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

    fn add_forwarding_headers(
        &self,
        headers: &mut http::HeaderMap,
        client_ip: IpAddr,
        edge: RegionCode,
    ) {
        let ip = HeaderValue::from_str(&client_ip.to_string()).expect("an address is ascii");
        // Appends the client to what it claims (several headers count as one list).
        let mut forwarded_for = Vec::new();
        for existing in headers.get_all("x-forwarded-for") {
            forwarded_for.extend_from_slice(existing.as_bytes());
            forwarded_for.extend_from_slice(b", ");
        }
        let forwarded_for = if forwarded_for.is_empty() {
            ip.clone()
        } else {
            forwarded_for.extend_from_slice(ip.as_bytes());
            HeaderValue::from_bytes(&forwarded_for).unwrap_or_else(|_| ip.clone())
        };
        let via = match headers.get(header::VIA) {
            Some(existing) => {
                let mut value = existing.as_bytes().to_vec();
                value.extend_from_slice(b", 2 fly.io");
                HeaderValue::from_bytes(&value).unwrap_or(HeaderValue::from_static("2 fly.io"))
            }
            // fly-platform.md: `Via: 2 fly.io` (the edge speaks HTTP/2 to the Machine's host).
            None => HeaderValue::from_static("2 fly.io"),
        };
        headers.insert("fly-client-ip", ip);
        headers.insert(
            "fly-region",
            if edge == self.edge_region {
                self.edge_region_value.clone()
            } else {
                HeaderValue::from_str(edge.as_str()).expect("ascii")
            },
        );
        headers.insert("fly-forwarded-port", self.port_value.clone());
        headers.insert("x-forwarded-for", forwarded_for);
        // Locally the proxy speaks plain HTTP; on Fly these say https for TLS clients.
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        headers.insert("x-forwarded-port", self.port_value.clone());
        headers.insert("x-forwarded-ssl", HeaderValue::from_static("off"));
        headers.insert(header::VIA, via);
    }

    /// The first Machine of a client request: a client routing header, else a replay cache
    /// hit, else load balancing.
    async fn first_hop(
        &self,
        table: &Table,
        exchange: &mut Exchange,
        routing: &ClientRouting,
        outgoing: &mut Outgoing,
    ) -> Result<Delivered, ProxyError> {
        let app = exchange.app.clone();
        if let Some(id) = routing.force_instance {
            // Fly: "will attempt to reach the Machine multiple times ... No fallback".
            return self
                .deliver(
                    exchange.edge,
                    outgoing,
                    &Spec::Instance { app: &app, id },
                    Retry::replay(None),
                    Vec::new(),
                )
                .await
                .map_err(|f| {
                    unreachable_error(f, || {
                        format!("fly-force-instance-id {id} cannot be reached")
                    })
                });
        }
        let mut hop = Vec::new();
        if let Some(id) = routing.prefer_instance {
            match self
                .deliver(
                    exchange.edge,
                    outgoing,
                    &Spec::Instance { app: &app, id },
                    Retry::ONCE,
                    Vec::new(),
                )
                .await
            {
                Ok(delivered) => return Ok(delivered),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Unreachable(_)) => {
                    self.count("proxy.replays.preferred_unavailable");
                    hop.push((
                        FLY_PREFERRED_UNAVAILABLE,
                        HeaderValue::from_str(id.as_str()).expect("hex"),
                    ));
                }
            }
        }
        let routes = table.app(&app);
        if routing.is_empty() {
            let rules = routes.map_or(&[][..], |r| &r.session_rules[..]);
            if let Some(rule) = cache::rule_for(rules, &exchange.host, exchange.path()) {
                exchange.session = cache::session_key(rule, &exchange.host, &outgoing.headers);
            }
            if !self.cache.is_empty() {
                let lookup = self.cache.lookup(
                    &exchange.host,
                    exchange.path(),
                    exchange.session.as_ref(),
                    routing.skip_cache,
                    Instant::now(),
                );
                match lookup {
                    Lookup::Hit(route) => {
                        if let Some(delivered) =
                            self.deliver_cached(exchange, outgoing, &route).await?
                        {
                            return Ok(delivered);
                        }
                    }
                    Lookup::Bypass => {
                        self.count("proxy.replay_cache.bypass");
                        exchange.bypassed = true;
                    }
                    Lookup::Miss => {}
                }
            }
        }
        let avoid = match (self.balance, routes) {
            (Balance::WrongFirst, Some(routes)) if routing.is_empty() => {
                let cookies = cookie_text(&outgoing.headers);
                let last = exchange.visitor.and_then(|v| {
                    self.last_served
                        .lock()
                        .expect("last_served lock")
                        .get(&v)
                        .copied()
                });
                let routes: Vec<&Arc<Route>> = routes.routes.iter().collect();
                balance::avoided(&routes, outgoing.path_and_query.as_str(), &cookies, last)
            }
            _ => Vec::new(),
        };
        let strategy = match self.balance {
            Balance::Nearest => Strategy::Nearest,
            Balance::Random => Strategy::Random,
            Balance::RoundRobin | Balance::WrongFirst => Strategy::RoundRobin,
        };
        let spec = Spec::Balance {
            app: &app,
            regions: &routing.regions,
            exclude: None,
            avoid: &avoid,
            strategy,
        };
        self.deliver(exchange.edge, outgoing, &spec, Retry::CLIENT, hop)
            .await
            .map_err(|f| match f {
                Failure::Unreachable(FailReason::NoCandidate) if routing.regions.is_empty() => {
                    ProxyError::NoCandidate(app.clone())
                }
                f => unreachable_error(f, || format!("no Machine of app {app:?} could be reached")),
            })
    }

    /// Sends a request where the replay cache says; `None` when the cached target cannot be
    /// reached (the entry is then dropped: the cache is only a hint).
    async fn deliver_cached(
        &self,
        exchange: &Exchange,
        outgoing: &mut Outgoing,
        route: &CachedRoute,
    ) -> Result<Option<Delivered>, ProxyError> {
        let spec = match route.instance.or(route.prefer_instance) {
            Some(id) => Spec::Instance {
                app: &route.app,
                id,
            },
            None => Spec::Balance {
                app: &route.app,
                regions: &route.regions,
                exclude: route.exclude,
                avoid: &[],
                strategy: self.replay_strategy(),
            },
        };
        let hop = vec![(FLY_REPLAY_CACHE_STATUS, HeaderValue::from_static("hit"))];
        match self
            .deliver(exchange.edge, outgoing, &spec, Retry::ONCE, hop)
            .await
        {
            Ok(delivered) => {
                self.count("proxy.replay_cache.hits");
                Ok(Some(delivered))
            }
            Err(Failure::Fatal(e)) => Err(e),
            Err(Failure::Unreachable(reason)) => {
                debug!(
                    reason = reason.as_str(),
                    "cached replay target unreachable; load-balancing"
                );
                self.count("proxy.replay_cache.stale");
                self.cache
                    .invalidate(&exchange.host, exchange.path(), exchange.session.as_ref());
                Ok(None)
            }
        }
    }

    fn replay_strategy(&self) -> Strategy {
        match self.balance {
            // Replays follow an app's explicit choice; wrong-first only concerns client
            // requests, so replays balance as fly-proxy does.
            Balance::Nearest | Balance::WrongFirst => Strategy::Nearest,
            Balance::Random => Strategy::Random,
            Balance::RoundRobin => Strategy::RoundRobin,
        }
    }

    /// Follows replays until a Machine gives a final answer, then hands it to the client.
    async fn follow(
        self: &Arc<Self>,
        exchange: Exchange,
        mut outgoing: Outgoing,
        mut current: Delivered,
        upgrade: Option<OnUpgrade>,
    ) -> Result<Response<ClientBody>, ProxyError> {
        let mut replays = 0u32;
        loop {
            let replay = match read_answer(current.response).await {
                Answer::Final {
                    response,
                    invalidate,
                } => {
                    if invalidate {
                        self.cache.invalidate(
                            &exchange.host,
                            exchange.path(),
                            exchange.session.as_ref(),
                        );
                    }
                    self.remember_served(&exchange, current.route.id);
                    return Ok(self.finish(response, upgrade));
                }
                Answer::Invalid(e) => {
                    self.count("proxy.replays.invalid");
                    warn!(machine = %current.route.id, error = %e, "invalid fly-replay (PA03)");
                    return Err(if current.fallback {
                        ProxyError::FallbackReplayed
                    } else {
                        ProxyError::InvalidReplay(e)
                    });
                }
                Answer::Replay(replay) => replay,
            };
            let source = current.route.clone();
            if current.fallback {
                self.count("proxy.replays.invalid");
                return Err(ProxyError::FallbackReplayed);
            }
            replays += 1;
            if replays > MAX_REPLAYS {
                self.count("proxy.replays.limit");
                return Err(ProxyError::ReplayLimit);
            }
            if !outgoing.body.is_replayable() {
                self.count("proxy.replays.too_large");
                return Err(ProxyError::TooLargeToReplay);
            }
            let target_app = replay.app.clone().unwrap_or_else(|| source.app.to_string());
            if self.table().app(&target_app).is_none()
                && !self.platform.registry.app_exists(&target_app)
            {
                self.count("proxy.replays.app_not_found");
                return Err(ProxyError::ReplayAppNotFound(target_app));
            }
            self.remember_replay(&exchange, &outgoing, &replay, &source, &target_app);

            let back = replay
                .fallback
                .and_then(|_| Some((outgoing.replay_copy()?, current.hop.clone())));
            if let Some(transform) = &replay.transform {
                outgoing.apply(transform);
            }
            let src = ReplaySrc {
                instance: source.id,
                region: source.region,
                t_micros: micros_since_epoch(),
                state: replay.state.clone(),
            };
            // Fly: `miss` = "first hit another machine and got replayed here". Whether it is
            // sent for apps that never use the cache is undocumented: always, here.
            let status = if exchange.bypassed { "bypass" } else { "miss" };
            let hop = vec![
                (
                    FLY_REPLAY_SRC,
                    HeaderValue::from_str(&src.to_header()).expect("validated state"),
                ),
                (FLY_REPLAY_CACHE_STATUS, HeaderValue::from_static(status)),
            ];
            let started = Instant::now();
            match self
                .deliver_replay(
                    exchange.edge,
                    &mut outgoing,
                    &replay,
                    &target_app,
                    &source,
                    hop,
                )
                .await
            {
                Ok(delivered) => {
                    self.count("proxy.replays.delivered");
                    if !exchange.bypassed {
                        self.count("proxy.replay_cache.misses");
                    }
                    debug!(from = %source.id, to = %delivered.route.id, "replayed");
                    current = delivered;
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Unreachable(reason)) => {
                    let target = describe_target(&replay, &target_app);
                    let (Some(fallback), Some((back_request, mut back_hop))) =
                        (replay.fallback, back)
                    else {
                        self.count("proxy.replays.failed");
                        return Err(ProxyError::Unreachable(format!(
                            "{target} ({})",
                            reason.as_str()
                        )));
                    };
                    let failed = ReplayFailed {
                        instance: replay.instance.or(replay.prefer_instance),
                        app: target_app.clone(),
                        region: if replay.regions.is_empty() {
                            replay.instance.and_then(|id| {
                                self.table().machine(id).map(|m| m.region.to_string())
                            })
                        } else {
                            Some(replay::region_list_string(&replay.regions))
                        },
                        replay_source: source.id,
                        reason,
                        elapsed_ms: u64::try_from(started.elapsed().as_millis())
                            .unwrap_or(u64::MAX),
                    };
                    back_hop.retain(|(name, _)| *name != FLY_REPLAY_FAILED);
                    back_hop.push((
                        FLY_REPLAY_FAILED,
                        HeaderValue::from_str(&failed.to_header()).expect("ascii"),
                    ));
                    outgoing = back_request;
                    current = self
                        .deliver_fallback(exchange.edge, &mut outgoing, fallback, &source, back_hop)
                        .await?;
                    self.count("proxy.replays.fallback");
                    debug!(to = %current.route.id, reason = reason.as_str(), "replay fell back");
                }
            }
        }
    }

    async fn deliver_replay(
        &self,
        edge: RegionCode,
        outgoing: &mut Outgoing,
        replay: &Replay,
        app: &str,
        source: &Route,
        mut hop: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<Delivered, Failure> {
        let retry = Retry::replay(replay.timeout);
        if let Some(id) = replay.instance {
            return self
                .deliver(edge, outgoing, &Spec::Instance { app, id }, retry, hop)
                .await;
        }
        if let Some(id) = replay.prefer_instance {
            match self
                .deliver(
                    edge,
                    outgoing,
                    &Spec::Instance { app, id },
                    Retry::ONCE,
                    hop.clone(),
                )
                .await
            {
                Err(Failure::Unreachable(_)) => {
                    self.count("proxy.replays.preferred_unavailable");
                    hop.push((
                        FLY_PREFERRED_UNAVAILABLE,
                        HeaderValue::from_str(id.as_str()).expect("hex"),
                    ));
                }
                done => return done,
            }
        }
        let spec = Spec::Balance {
            app,
            regions: &replay.regions,
            exclude: replay.elsewhere.then_some(source.id),
            avoid: &[],
            strategy: self.replay_strategy(),
        };
        self.deliver(edge, outgoing, &spec, retry, hop).await
    }

    async fn deliver_fallback(
        &self,
        edge: RegionCode,
        outgoing: &mut Outgoing,
        fallback: Fallback,
        source: &Route,
        hop: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<Delivered, ProxyError> {
        let own = Spec::Instance {
            app: &source.app,
            id: source.id,
        };
        let result = match fallback {
            Fallback::ForceSelf => self.deliver(edge, outgoing, &own, Retry::CLIENT, hop).await,
            Fallback::PreferSelf => {
                match self
                    .deliver(edge, outgoing, &own, Retry::ONCE, hop.clone())
                    .await
                {
                    Err(Failure::Unreachable(_)) => {
                        let any = Spec::Balance {
                            app: &source.app,
                            regions: &[],
                            exclude: None,
                            avoid: &[],
                            strategy: self.replay_strategy(),
                        };
                        self.deliver(edge, outgoing, &any, Retry::CLIENT, hop).await
                    }
                    done => done,
                }
            }
        };
        let mut delivered = result.map_err(|f| {
            self.count("proxy.replays.failed");
            unreachable_error(f, || {
                format!(
                    "the replay failed and so did its fallback to Machine {}",
                    source.id
                )
            })
        })?;
        delivered.fallback = true;
        Ok(delivered)
    }

    /// Tries the Machines that fit `spec`, in rounds with backoff, until one answers.
    async fn deliver(
        &self,
        edge: RegionCode,
        outgoing: &mut Outgoing,
        spec: &Spec<'_>,
        retry: Retry,
        hop: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<Delivered, Failure> {
        let deadline = Instant::now() + retry.deadline;
        let mut backoff = FIRST_BACKOFF;
        let mut saw_candidate = false;
        let mut round = 0;
        loop {
            round += 1;
            let order = self.order(&self.table(), edge, spec);
            saw_candidate |= !order.is_empty();
            for route in order {
                if self.platform.faults.listener_dropped(route.id) {
                    debug!(machine = %route.id, "listener dropped (fault): connection refused");
                    continue;
                }
                let Some(request) = outgoing.to(&route, &hop) else {
                    return Err(Failure::Fatal(ProxyError::Upstream {
                        machine: route.id.to_string(),
                        reason: "the request body streamed to a Machine that refused the \
                                 connection and cannot be sent again"
                            .into(),
                    }));
                };
                match self.client.request(request).await {
                    Ok(response) => {
                        return Ok(Delivered {
                            route,
                            response,
                            hop,
                            fallback: false,
                        })
                    }
                    Err(e) if e.is_connect() => {
                        debug!(machine = %route.id, error = %e, "connection refused");
                    }
                    Err(e) => {
                        return Err(Failure::Fatal(ProxyError::Upstream {
                            machine: route.id.to_string(),
                            reason: error_chain(&e),
                        }))
                    }
                }
            }
            let exhausted = if saw_candidate {
                FailReason::RetriesExhausted
            } else {
                FailReason::NoCandidate
            };
            if (!saw_candidate && !retry.wait_for_candidates) || round >= retry.rounds {
                return Err(Failure::Unreachable(exhausted));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Failure::Unreachable(if saw_candidate {
                    FailReason::Timeout
                } else {
                    FailReason::NoCandidate
                }));
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The Machines that fit `spec`, best first.
    fn order(&self, table: &Table, edge: RegionCode, spec: &Spec<'_>) -> Vec<Arc<Route>> {
        match *spec {
            Spec::Instance { app, id } => table.route_in(app, id).cloned().into_iter().collect(),
            Spec::Balance {
                app,
                regions,
                exclude,
                avoid,
                strategy,
            } => {
                let Some(routes) = table.app(app) else {
                    return Vec::new();
                };
                let pool: Vec<&Arc<Route>> = routes
                    .routes
                    .iter()
                    .filter(|r| Some(r.id) != exclude)
                    .collect();
                let pool = balance::in_regions(&pool, regions);
                let (first, last) = balance::avoiding(&pool, avoid);
                let tick = self.tick.fetch_add(1, Ordering::Relaxed);
                let mut order =
                    balance::order(&first, strategy, edge, tick, |n| rand::random_range(0..n));
                order.extend(last);
                order.into_iter().cloned().collect()
            }
        }
    }

    /// Stores a replay in the replay cache when the Machine asked for it (path-based) or its
    /// service has a matching session rule, or drops the request's route on `invalidate`.
    fn remember_replay(
        &self,
        exchange: &Exchange,
        outgoing: &Outgoing,
        replay: &Replay,
        source: &Route,
        target_app: &str,
    ) {
        let now = Instant::now();
        match &replay.cache {
            Some(CacheDirective::Invalidate) => {
                self.cache
                    .invalidate(&exchange.host, exchange.path(), exchange.session.as_ref());
                return;
            }
            Some(CacheDirective::Set {
                pattern,
                ttl,
                allow_bypass,
            }) => {
                if let Some(field) = replay.cache_obstacle() {
                    warn!(machine = %source.id, field, "fly-replay-cache ignored: a cached replay cannot carry {field}");
                } else if !pattern.matches(&exchange.host, exchange.path()) {
                    warn!(machine = %source.id, "fly-replay-cache ignored: the pattern must match the request");
                } else {
                    let route = CachedRoute::of(replay, target_app, source.id);
                    self.cache.insert_path(
                        &exchange.host,
                        pattern,
                        route,
                        *ttl,
                        *allow_bypass,
                        now,
                    );
                }
            }
            None => {}
        }
        // Session-based: the replaying Machine's service rules, under the same limitations:
        // Fly lists them for the replay cache as a whole.
        if replay.cache_obstacle().is_none() {
            if let Some(rule) =
                cache::rule_for(&source.session_rules, &exchange.host, exchange.path())
            {
                if let Some(key) = cache::session_key(rule, &exchange.host, &outgoing.headers) {
                    self.cache.insert_session(
                        key,
                        CachedRoute::of(replay, target_app, source.id),
                        now,
                    );
                }
            }
        }
    }

    fn remember_served(&self, exchange: &Exchange, machine: MachineId) {
        if let Some(visitor) = exchange.visitor {
            let mut last = self.last_served.lock().expect("last_served lock");
            if last.len() >= MAX_REMEMBERED_VISITORS {
                last.clear();
            }
            last.insert(visitor, machine);
        }
    }

    /// The final answer for the client: hop-by-hop headers and cache directives removed, and
    /// for a `101` to an upgrade request, the tunnel between client and Machine.
    fn finish(
        self: &Arc<Self>,
        mut response: Response<Incoming>,
        upgrade: Option<OnUpgrade>,
    ) -> Response<ClientBody> {
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(client)) = (switching, upgrade) {
            let machine = hyper::upgrade::on(&mut response);
            self.count("proxy.websockets");
            self.tunnel(client, machine);
        }
        let headers = response.headers_mut();
        for name in HOP_BY_HOP {
            if switching && matches!(*name, "connection" | "upgrade") {
                continue;
            }
            headers.remove(*name);
        }
        // Directives for the proxy, not for the client.
        for name in [
            FLY_REPLAY_CACHE,
            "fly-replay-cache-ttl-secs",
            "fly-replay-cache-allow-bypass",
        ] {
            headers.remove(name);
        }
        response.map(Either::Left)
    }

    /// Copies bytes both ways between an upgraded client connection and an upgraded Machine
    /// connection, until either side closes or the proxy stops.
    fn tunnel(&self, client: OnUpgrade, machine: OnUpgrade) {
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let pipe = async {
                let (client, machine) = tokio::try_join!(client, machine)?;
                let (mut client, mut machine) = (TokioIo::new(client), TokioIo::new(machine));
                tokio::io::copy_bidirectional(&mut client, &mut machine).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            };
            tokio::select! {
                result = pipe => {
                    if let Err(e) = result {
                        debug!(error = %e, "websocket tunnel ended");
                    }
                }
                _ = shutdown.changed() => {}
            }
        });
    }
}

/// Reads whether a Machine's answer is a replay. Its body is read only for the JSON form; a
/// replaying answer's body is drained (never shown to the client).
async fn read_answer(response: Response<Incoming>) -> Answer {
    let headers = response.headers();
    if let Some(value) = headers.get(replay::FLY_REPLAY) {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let parsed = value
            .to_str()
            .map_err(|_| ReplayError::Syntax("not visible ASCII"))
            .and_then(replay::parse_header)
            .map(|mut replay| {
                match replay::parse_cache_headers(
                    header(FLY_REPLAY_CACHE),
                    header("fly-replay-cache-ttl-secs"),
                    header("fly-replay-cache-allow-bypass"),
                ) {
                    Ok(cache) => replay.cache = cache,
                    // The replay itself stands; only its caching is dropped.
                    Err(e) => warn!(error = %e, "fly-replay-cache ignored"),
                }
                replay
            });
        drain(response.into_body());
        return match parsed {
            Ok(replay) => Answer::Replay(replay),
            Err(e) => Answer::Invalid(e),
        };
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case(replay::REPLAY_JSON_CONTENT_TYPE)
        });
    if is_json {
        return match Limited::new(response.into_body(), MAX_REPLAY_JSON)
            .collect()
            .await
        {
            Ok(body) => match replay::parse_json(&body.to_bytes()) {
                Ok(replay) => Answer::Replay(replay),
                Err(e) => Answer::Invalid(e),
            },
            Err(e) => Answer::Invalid(ReplayError::Json(format!(
                "unreadable or over {MAX_REPLAY_JSON} bytes: {e}"
            ))),
        };
    }
    let invalidate = headers
        .get(FLY_REPLAY_CACHE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"invalidate"));
    Answer::Final {
        response,
        invalidate,
    }
}

/// Reads a small body to its end in the background so that its pooled connection can be
/// reused; a large or unsized one is dropped (and its connection with it).
fn drain(body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    if body.size_hint().exact().is_some_and(|n| n <= DRAIN_LIMIT) {
        tokio::spawn(async move {
            let _ = body.collect().await;
        });
    }
}

/// `<app>.localhost[:port]` -> (app, host without port), lowercase.
fn app_of_host(host: &str) -> Option<(String, String)> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let app = name.strip_suffix(".localhost")?;
    replay::is_app_name(app).then(|| (app.to_owned(), name.clone()))
}

/// Removes header `name` and parses it; an unparsable value is the client's error.
fn take_parsed<T>(
    headers: &mut http::HeaderMap,
    name: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, ProxyError> {
    let Some(value) = headers.remove(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|s| parse(s.trim()))
        .map(Some)
        .ok_or(ProxyError::BadHeader {
            header: name,
            reason: format!("{value:?} is not valid"),
        })
}

/// Reads (and removes) the client routing headers.
fn client_routing(headers: &mut http::HeaderMap) -> Result<ClientRouting, ProxyError> {
    let instance = |s: &str| MachineId::parse(s).ok();
    let regions = |s: &str| replay::parse_region_list(s).ok();
    let force_instance = take_parsed(headers, "fly-force-instance-id", instance)?;
    let prefer_instance = take_parsed(headers, "fly-prefer-instance-id", instance)?;
    let force_region = take_parsed(headers, "fly-force-region", regions)?;
    let prefer_region = take_parsed(headers, "fly-prefer-region", regions)?;
    let skip_cache = headers
        .remove("fly-replay-cache-control")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"skip"));
    let regions = match (force_region, prefer_region) {
        (Some(hard), _) => hard,
        // Fly: "Falls back ... to the nearest region with healthy Machines".
        (None, Some(mut soft)) => {
            soft.push(RegionChoice::Alias(RegionAlias::Any));
            soft
        }
        (None, None) => Vec::new(),
    };
    Ok(ClientRouting {
        force_instance,
        prefer_instance,
        regions,
        skip_cache,
    })
}

/// A WebSocket (or other) upgrade: `Connection: upgrade` with an `Upgrade` header.
fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Drops what a client may not tell a Machine: every `fly-*` header (only the proxy sets
/// them; the routing ones were consumed before), the local `flyby-local-*` headers, and the
/// hop-by-hop headers (kept for an upgrade, which must reach the Machine).
fn sanitize(headers: &mut http::HeaderMap, upgrade: bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.to_str().unwrap_or("").split(',') {
            let token = token.trim();
            if token.is_empty()
                || ["keep-alive", "close", "upgrade"]
                    .iter()
                    .any(|t| token.eq_ignore_ascii_case(t))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                doomed.push(name);
            }
        }
    }
    for name in headers.keys() {
        let s = name.as_str();
        let hop = HOP_BY_HOP.contains(&s) && !(upgrade && matches!(s, "connection" | "upgrade"));
        if hop || s.starts_with("fly-") || s.starts_with("flyby-local-") {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The request's cookies as one string, for `wrong-first` to look for Machine ids in.
fn cookie_text(headers: &http::HeaderMap) -> String {
    let mut out = String::new();
    for value in headers.get_all(header::COOKIE) {
        out.push_str(&String::from_utf8_lossy(value.as_bytes()));
        out.push(';');
    }
    out
}

fn describe_target(replay: &Replay, app: &str) -> String {
    if let Some(id) = replay.instance {
        format!("fly-replay target Machine {id} of app {app:?} cannot be reached")
    } else if !replay.regions.is_empty() {
        format!(
            "no Machine of app {app:?} in region {} can be reached",
            replay::region_list_string(&replay.regions)
        )
    } else {
        format!("no Machine of app {app:?} can be reached")
    }
}

fn unreachable_error(failure: Failure, describe: impl FnOnce() -> String) -> ProxyError {
    match failure {
        Failure::Fatal(e) => e,
        Failure::Unreachable(reason) => {
            ProxyError::Unreachable(format!("{} ({})", describe(), reason.as_str()))
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

fn micros_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_apps_under_localhost() {
        assert_eq!(
            app_of_host("flyby.localhost:3000"),
            Some(("flyby".into(), "flyby.localhost".into()))
        );
        assert_eq!(
            app_of_host("Flyby-Machines.LOCALHOST."),
            Some(("flyby-machines".into(), "flyby-machines.localhost".into()))
        );
        for bad in [
            "localhost:3000",
            "127.0.0.1:3000",
            "a.b.localhost",
            "flyby.fly.dev",
            "",
            ".localhost",
        ] {
            assert_eq!(app_of_host(bad), None, "{bad}");
        }
    }

    #[test]
    fn clients_cannot_pass_fly_headers_or_hop_headers() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("fly-replay-src", "instance=0123456789abcd;region=ams;t=1"),
            ("fly-replay-failed", "x"),
            ("fly-client-ip", "1.2.3.4"),
            ("flyby-local-anything", "x"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "x"),
            ("transfer-encoding", "chunked"),
            ("cookie", "a=b"),
            ("x-kept", "y"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        sanitize(&mut headers, false);
        let mut names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["cookie", "x-kept"]);

        let mut upgrade = http::HeaderMap::new();
        upgrade.insert("connection", HeaderValue::from_static("Upgrade"));
        upgrade.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&upgrade));
        sanitize(&mut upgrade, true);
        assert_eq!(upgrade["connection"], "upgrade");
        assert_eq!(upgrade["upgrade"], "websocket");
    }

    #[test]
    fn routing_headers_are_consumed_and_validated() {
        let mut headers = http::HeaderMap::new();
        headers.insert("fly-prefer-region", HeaderValue::from_static("syd, eu"));
        headers.insert(
            "fly-prefer-instance-id",
            HeaderValue::from_static("0123456789abcd"),
        );
        headers.insert("fly-replay-cache-control", HeaderValue::from_static("skip"));
        let routing = client_routing(&mut headers).unwrap();
        assert!(headers.is_empty());
        assert_eq!(routing.regions.len(), 3, "a preference ends with any");
        assert!(routing.skip_cache);
        assert_eq!(routing.prefer_instance.unwrap().as_str(), "0123456789abcd");

        let mut headers = http::HeaderMap::new();
        headers.insert("fly-force-region", HeaderValue::from_static("syd"));
        assert!(replay::regions_are_hard(
            &client_routing(&mut headers).unwrap().regions
        ));

        let mut headers = http::HeaderMap::new();
        headers.insert("fly-force-instance-id", HeaderValue::from_static("zz"));
        assert!(matches!(
            client_routing(&mut headers),
            Err(ProxyError::BadHeader {
                header: "fly-force-instance-id",
                ..
            })
        ));
    }
}
