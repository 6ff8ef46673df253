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

mod admin;
mod create;
mod json;
mod leases;
mod limits;
mod machines;

pub use create::{create_machine, create_machine_with_secrets};
pub use leases::{Leases, NONCE_HEADER};
use limits::gate;
pub use limits::RateLimits;

use crate::{
    fly::{MachineId, RegionCode},
    local::{
        faults::{ApiFailure, Fault},
        registry::{new_ulid, MachineEvent, MachineRecord, MachineState, NameTaken},
        supervisor::{
            DurationSpec, GuestKind, LaunchSpec, MachineConfig, RestartPolicy, SignalSpec,
            SupervisorError,
        },
        Platform, TimingsMode,
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
        .route(
            "/v1/apps/{app}/machines",
            post(create::create).get(machines::list),
        )
        .route(
            "/v1/apps/{app}/machines/{id}",
            get(machines::show).delete(machines::destroy),
        )
        .route("/v1/apps/{app}/machines/{id}/wait", get(machines::wait))
        .route("/v1/apps/{app}/machines/{id}/start", post(machines::start))
        .route("/v1/apps/{app}/machines/{id}/stop", post(machines::stop))
        .route(
            "/v1/apps/{app}/machines/{id}/lease",
            post(leases::acquire)
                .get(leases::show)
                .delete(leases::release),
        )
        .route_layer(middleware::from_fn_with_state(platform.clone(), gate));
    let admin = Router::new()
        .route("/_local/stats", get(admin::stats))
        .route("/_local/machines", get(admin::admin_machines))
        .route("/_local/machines/{id}/metrics", get(admin::machine_metrics))
        .route(
            "/_local/faults",
            post(admin::arm_fault).delete(admin::clear_faults),
        )
        .route_layer(middleware::from_fn(admin::loopback_only));
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
    // Fly's conflict for a Machine someone else holds the lease of (text as flyctl shows it).
    #[error(
        "lease currently held by another client: the machine cannot be changed without its nonce"
    )]
    Leased,
    #[error("no lease found for machine")]
    NoLease,
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
            ApiError::NameTaken(_) | ApiError::Leased => StatusCode::CONFLICT,
            ApiError::NoLease => StatusCode::NOT_FOUND,
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
