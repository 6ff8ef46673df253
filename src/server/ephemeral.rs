//! The ephemeral role's server side: the Machine's identity and timeline, the hand-over that
//! turns the launcher's secret into the owner cookie, the live channel behind the page, and,
//! on a Machine of the warm pool, the arming that tells it whose it is.

use super::{
    affinity::{machine_page_path, routes::RouteLog},
    arming,
    config::{Config, RoleConfig},
    cookies,
    lifecycle::{Event, Lifecycle, Phase},
    ownership::OwnerSlot,
    readiness::{self, ReadinessKey},
    MACHINE_HEADER,
};
use crate::{
    app::{
        protocol::{BootTimeline, ClientMessage, MachineInfo, PhaseView, ServerMessage},
        AppError,
    },
    fly::{distance_km, MachineId, RegionCode},
};
use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Form, Router,
};
use futures::{SinkExt, StreamExt};
use leptos::{config::LeptosOptions, prelude::use_context, server_fn::BoxedStream};
use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
};

/// This Machine, as the ephemeral role's handlers and server functions see it.
pub struct EphemeralMachine {
    pub id: MachineId,
    pub region: Option<RegionCode>,
    /// Hash of the owner's secret: the hand-over checks the secret against it. Empty until
    /// armed on a Machine of the warm pool.
    pub owner: OwnerSlot,
    /// What arms a pooled Machine (and answers the readiness probe); from its config only.
    readiness_key: Option<ReadinessKey>,
    /// The launcher's origin, for the way back.
    launcher_url: Option<String>,
    pub lifecycle: Lifecycle,
    /// How the owner's requests reached this Machine (the affinity layer records, the live
    /// channel streams).
    pub routes: Arc<RouteLog>,
    /// The launch's timeline, as the first accepted hand-over carried it: the owner's receipt
    /// shows it.
    boot: OnceLock<BootTimeline>,
}

impl EphemeralMachine {
    /// Starts the timeline. `None` unless `config` is for the ephemeral role.
    pub fn start(config: &Config) -> Option<Arc<Self>> {
        let RoleConfig::Ephemeral(ephemeral) = &config.role_config else {
            return None;
        };
        let t = config.timings;
        Some(Arc::new(EphemeralMachine {
            id: config.fly.machine_id?,
            region: config.fly.region,
            owner: ephemeral.owner_hash.map(OwnerSlot::of).unwrap_or_default(),
            readiness_key: ephemeral.readiness_key.clone(),
            launcher_url: ephemeral.launcher_url.clone(),
            lifecycle: Lifecycle::start(t.ttl, t.claim_window, t.show),
            routes: Arc::default(),
            boot: OnceLock::new(),
        }))
    }

    pub fn phase_view(&self, phase: Phase) -> PhaseView {
        match phase {
            Phase::AwaitingOwner => PhaseView::AwaitingOwner,
            Phase::Showing { .. } => PhaseView::Showing {
                seconds_left: self
                    .lifecycle
                    .until_deadline(phase)
                    .unwrap_or_default()
                    .as_secs(),
            },
            Phase::SwitchingOff { reason, .. } => PhaseView::SwitchingOff { reason },
            Phase::Ended(reason) => PhaseView::Ended { reason },
        }
    }

    pub fn info(&self, edge: Option<RegionCode>) -> MachineInfo {
        MachineInfo {
            id: self.id.to_string(),
            region: self.region.map(|r| r.to_string()),
            city: self.region.map(|r| r.city().to_owned()),
            edge_region: edge.map(|r| r.to_string()),
            edge_city: edge.map(|r| r.city().to_owned()),
            distance_km: self
                .region
                .zip(edge)
                .and_then(|(a, b)| distance_km(a, b))
                .map(|km| km.round() as u32),
            launcher_url: self.launcher_url.clone(),
            phase: self.phase_view(self.lifecycle.phase()),
            boot: self.boot.get().map(BootTimeline::encode),
        }
    }

    pub fn switch_off(&self) {
        self.lifecycle.apply(Event::SwitchOff);
    }

    /// The live channel: answers pings, pushes every phase change and the owner's new routing
    /// rows; ends after the end.
    pub fn channel(
        self: Arc<Self>,
        mut input: BoxedStream<ClientMessage, AppError>,
    ) -> BoxedStream<ServerMessage, AppError> {
        let (mut tx, rx) = futures::channel::mpsc::channel(8);
        tokio::spawn(async move {
            let mut phases = self.lifecycle.subscribe();
            let mut routes = self.routes.subscribe();
            // Every new channel starts with all the rows kept: the requests before it opened.
            let mut routes_seen = None::<u32>;
            loop {
                let phase = *phases.borrow_and_update();
                if tx
                    .send(Ok(ServerMessage::Phase(self.phase_view(phase))))
                    .await
                    .is_err()
                {
                    return;
                }
                if matches!(phase, Phase::Ended(_)) {
                    return;
                }
                loop {
                    let last = *routes.borrow_and_update();
                    if routes_seen.is_none_or(|seen| last > seen) {
                        let (rows, totals) = self.routes.since(routes_seen.unwrap_or(0));
                        let fresh = routes_seen.is_none();
                        routes_seen = Some(last.max(rows.last().map_or(0, |r| r.seq)));
                        let message = ServerMessage::Routes {
                            fresh,
                            rows,
                            totals,
                        };
                        if tx.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                    tokio::select! {
                        message = input.next() => match message {
                            Some(Ok(ClientMessage::Ping { seq })) => {
                                if tx.send(Ok(ServerMessage::Pong { seq })).await.is_err() {
                                    return;
                                }
                            }
                            Some(Err(_)) | None => return,
                        },
                        changed = phases.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            break;
                        }
                        // The sender lives as long as the Machine: a closed one never comes.
                        Ok(()) = routes.changed() => {}
                    }
                }
            }
        });
        rx.into()
    }
}

/// The ephemeral Machine of this process, for server functions.
pub fn current() -> Result<Arc<EphemeralMachine>, AppError> {
    use_context::<Arc<EphemeralMachine>>().ok_or(AppError::NotYours)
}

/// The hand-over form the launcher's page posts.
#[derive(serde::Deserialize)]
pub struct ClaimForm {
    secret: String,
    /// The launch's timeline for the receipt ([`BootTimeline::encode`]); a hand-over by other
    /// means than the launcher's page may leave it out.
    #[serde(default)]
    boot: Option<String>,
}

/// The Machine's page as the router renders it (Leptos's render of its route): the hand-over
/// answers with it.
pub type PageRender = Arc<
    dyn Fn(axum::extract::Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync,
>;

/// What the hand-over needs: this Machine, and its page to answer with.
#[derive(Clone)]
struct HandOver {
    machine: Arc<EphemeralMachine>,
    page: PageRender,
}

/// Routes only the ephemeral role has.
pub fn routes(machine: Arc<EphemeralMachine>, page: PageRender) -> Router<LeptosOptions> {
    let hand_over = HandOver {
        machine: machine.clone(),
        page,
    };
    Router::new()
        .route("/", get(root))
        .route("/m/{id}/claim", post(claim).with_state(hand_over))
        .route(arming::ARM_PATH, post(arm))
        .with_state(machine)
}

/// The owner reached the app's root (the affinity layer checked the cookie): their page.
async fn root(State(machine): State<Arc<EphemeralMachine>>) -> Redirect {
    Redirect::to(&machine_page_path(machine.id))
}

/// The launcher arms this pooled Machine with its owner's hash (`server::arming`): accepted with
/// the proof of this Machine's key, once; answered with the readiness proof of the challenge
/// beside the Machine's id, so the launcher knows whom it armed.
async fn arm(State(machine): State<Arc<EphemeralMachine>>, headers: HeaderMap) -> Response {
    let owner = machine
        .readiness_key
        .as_ref()
        .and_then(|key| arming::verified_owner(key, &headers).map(|owner| (key, owner)));
    let Some((key, owner)) = owner else {
        tracing::warn!(machine = %machine.id, "arming refused: no proof of this Machine's key");
        return (StatusCode::FORBIDDEN, "Not armed.\n").into_response();
    };
    if let Phase::Ended(_) = machine.lifecycle.phase() {
        return (StatusCode::GONE, "This Machine is no more.\n").into_response();
    }
    if machine.owner.arm(owner).is_err() {
        tracing::warn!(machine = %machine.id, "arming refused: this Machine has an owner already");
        return (StatusCode::CONFLICT, "This Machine has an owner already.\n").into_response();
    }
    tracing::info!(machine = %machine.id, "armed for its owner");
    let mut answer = HeaderMap::new();
    if let Some(proof) = readiness::answer(key, &headers) {
        answer.insert(readiness::PROOF_HEADER, proof);
    }
    if let Ok(id) = HeaderValue::from_str(machine.id.as_str()) {
        answer.insert(MACHINE_HEADER, id);
    }
    (answer, "armed\n").into_response()
}

/// The hand-over: the secret arrives in a POST body, never in a URL, so no history entry,
/// Referer or log line ever holds it; the answer sets the owner cookie and is the owner's page
/// itself, not a `303` to it (one round trip fewer through the proxies, on every launch). The
/// page's first script replaces its address with the page's own (`history.replaceState`), so
/// its history entry is a `GET` of `/m/<id>`: a reload or a return to it loads the page and
/// never posts the form again. The launch's timeline comes in the same body; one that is not
/// what the launcher's page writes is refused before anything changes.
async fn claim(
    State(HandOver { machine, page }): State<HandOver>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ClaimForm>,
) -> Response {
    let owner = machine.owner.get();
    if id != machine.id.as_str() || !owner.is_some_and(|o| o.verifies(&form.secret)) {
        tracing::info!(machine = %machine.id, "hand-over refused: wrong secret");
        return (
            StatusCode::FORBIDDEN,
            "This Fly Machine belongs to someone else.\n",
        )
            .into_response();
    }
    let boot = form
        .boot
        .as_deref()
        .filter(|text| !text.is_empty())
        .map(BootTimeline::parse);
    if boot == Some(None) {
        tracing::info!(machine = %machine.id, "hand-over refused: not a launch's timeline");
        return (
            StatusCode::BAD_REQUEST,
            "The hand-over's launch timeline is not one the launcher writes.\n",
        )
            .into_response();
    }
    if let Phase::Ended(_) = machine.lifecycle.phase() {
        return (StatusCode::GONE, "This Machine is no more.\n").into_response();
    }
    if let Some(boot) = boot.flatten() {
        // The first hand-over's is the launch's; another is the same owner's again.
        let _ = machine.boot.set(boot);
    }
    machine.lifecycle.apply(Event::Claimed);
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = cookies::owner(
        machine.id,
        &form.secret,
        machine.lifecycle.remaining(),
        secure,
    );
    tracing::info!(machine = %machine.id, "owner arrived");
    let mut request = axum::extract::Request::new(axum::body::Body::empty());
    *request.uri_mut() = machine_page_path(machine.id)
        .parse()
        .expect("a path of an id");
    *request.headers_mut() = headers;
    for form_header in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        request.headers_mut().remove(form_header);
    }
    let mut response = page(request).await;
    let response_headers = response.headers_mut();
    if let Ok(value) = HeaderValue::try_from(cookie) {
        response_headers.append(header::SET_COOKIE, value);
    }
    response_headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
