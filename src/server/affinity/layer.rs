//! The tower adapter around the whole router: reads the request's facts, asks [`decide`], and
//! either calls the router or answers itself. It holds no policy of its own; what it adds is
//! only the shape of each answer.

use super::{
    claim_path, decide, home_launcher, is_claim_path,
    routes::{self, RouteLog},
    Decision, Here, Refusal, ReplayKind, RequestFacts, CLAIM_ATTEMPT_PARAM, LAUNCH_COOKIE,
    LAUNCH_PATH, OWNER_COOKIE, SERVER_FN_PREFIX,
};
use crate::{
    app::AppError,
    fly::MachineId,
    role::Role,
    server::{cookies, ownership::OwnerSlot},
};
use axum::{body::Body, response::Response};
use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};
use leptos::server_fn::{
    error::{FromServerFnError, SERVER_FN_ERROR_HEADER},
    ContentType,
};
use pin_project_lite::pin_project;
use std::{
    borrow::Cow,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};
use tower::{Layer, Service};

/// How long fly-proxy keeps trying to reach a replay's target before it gives the request back
/// to us with `fly-replay-failed`: long enough for a live Machine on another continent, short
/// enough that a visitor whose Machine is gone is told so quickly.
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(2);

/// The value of the `fly-replay` header sending a request to `target`. Built only from a
/// validated [`MachineId`] and constants.
pub fn replay_header(target: MachineId, kind: ReplayKind) -> String {
    match kind {
        ReplayKind::Guarded => format!(
            "instance={target};timeout={}s;fallback=prefer_self",
            REPLAY_TIMEOUT.as_secs()
        ),
        ReplayKind::Cacheable => format!("instance={target}"),
    }
}

/// Wraps a service (the whole router) with the affinity decision.
#[derive(Clone)]
pub struct AffinityLayer {
    shared: Arc<Shared>,
}

struct Shared {
    here: Here,
    /// Whose the Machine is now (empty off the ephemeral role): a pooled Machine is armed
    /// while it serves, so each decision reads it; `here.owner` is only its first value.
    owner: OwnerSlot,
    /// The launcher's "your Machine is gone" page, where the ephemeral app sends visitors whose
    /// Machine has vanished.
    gone_url: Option<HeaderValue>,
    /// On a launcher, the started launcher Machines as its tracker last listed them: where a
    /// visitor's launch must start.
    launchers: Option<tokio::sync::watch::Receiver<Vec<MachineId>>>,
    /// On a visitor's Machine, where the owner's requests are recorded for their routing
    /// panel.
    routes: Option<Arc<RouteLog>>,
}

impl AffinityLayer {
    pub fn new(
        here: Here,
        gone_url: Option<&str>,
        launchers: Option<tokio::sync::watch::Receiver<Vec<MachineId>>>,
    ) -> Self {
        let gone_url = gone_url.and_then(|url| HeaderValue::from_str(url).ok());
        AffinityLayer {
            shared: Arc::new(Shared {
                owner: here.owner.map(OwnerSlot::of).unwrap_or_default(),
                here,
                gone_url,
                launchers,
                routes: None,
            }),
        }
    }

    /// Reads the Machine's owner from `slot` on each request (it overrides `Here::owner`).
    pub fn with_owner(mut self, slot: OwnerSlot) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("with_owner is called while building the layer")
            .owner = slot;
        self
    }

    /// Records each request served to the owner into `log` (a visitor's Machine only).
    pub fn with_routes(mut self, log: Arc<RouteLog>) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("with_routes is called while building the layer")
            .routes = Some(log);
        self
    }

    /// What the owner's panel will show of a request this Machine serves them, up to the
    /// answer's time: `None` off a visitor's Machine.
    fn recording<B>(shared: &Shared, request: &Request<B>) -> Option<Recording> {
        let log = shared.routes.clone()?;
        let me = shared.here.id?;
        let (method, path) = (request.method(), request.uri().path());
        let claim = method == Method::POST && is_claim_path(path, me);
        let upgrade = header_str(request, &header::UPGRADE)
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        Some(Recording {
            log,
            what: routes::request_kind(method, path, claim, upgrade),
            path: path.to_owned(),
            arrival: routes::arrival_of(request.headers()),
            claim,
            started: tokio::time::Instant::now(),
        })
    }

    /// The visitor's home launcher, for the start of a launch only.
    fn home<B>(shared: &Shared, request: &Request<B>) -> Option<MachineId> {
        if request.method() != Method::POST || request.uri().path() != LAUNCH_PATH {
            return None;
        }
        let visitor = header_str(request, &FLY_CLIENT_IP)?;
        home_launcher(visitor, &shared.launchers.as_ref()?.borrow())
    }
}

impl<S> Layer<S> for AffinityLayer {
    type Service = Affinity<S>;
    fn layer(&self, inner: S) -> Affinity<S> {
        Affinity {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`AffinityLayer`] produces.
#[derive(Clone)]
pub struct Affinity<S> {
    inner: S,
    shared: Arc<Shared>,
}

fn header_str<'a, B>(request: &'a Request<B>, name: &HeaderName) -> Option<&'a str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

// The headers the layer reads on every request, named once: a lookup by `&str` parses the
// name each time.
const FLY_REPLAY_SRC: HeaderName = HeaderName::from_static("fly-replay-src");
const FLY_REPLAY_FAILED: HeaderName = HeaderName::from_static("fly-replay-failed");
const FLY_CLIENT_IP: HeaderName = HeaderName::from_static("fly-client-ip");

/// All `Cookie` headers as one string; borrowed in the usual case of a single header.
fn cookie_header<B>(request: &Request<B>) -> Option<Cow<'_, str>> {
    let mut values = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    match values.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => {
            let mut all = format!("{first}; {second}");
            for v in values {
                all.push_str("; ");
                all.push_str(v);
            }
            Some(Cow::Owned(all))
        }
    }
}

impl<S> Service<Request<Body>> for Affinity<S>
where
    S: Service<Request<Body>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = AffinityFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let decision = {
            let cookies = cookie_header(&request);
            let facts = RequestFacts {
                method: request.method(),
                path: request.uri().path(),
                query: request.uri().query(),
                cookies: cookies.as_deref(),
                replay_src: header_str(&request, &FLY_REPLAY_SRC),
                replay_failed: header_str(&request, &FLY_REPLAY_FAILED),
                home: AffinityLayer::home(&self.shared, &request),
            };
            let here = Here {
                owner: self.shared.owner.get(),
                ..self.shared.here.clone()
            };
            decide(&facts, &here)
        };
        match decision {
            Decision::Pass => AffinityFuture::inner(self.inner.call(request), None, None),
            Decision::Serve => {
                let recording = AffinityLayer::recording(&self.shared, &request);
                AffinityFuture::inner(self.inner.call(request), None, recording)
            }
            Decision::ServeAndUnpin => AffinityFuture::inner(
                self.inner.call(request),
                Some(cookies::clear(LAUNCH_COOKIE)),
                None,
            ),
            Decision::Replay(target, kind) => {
                AffinityFuture::ready(answered(request, replay(target, kind)))
            }
            Decision::Gone(target) => {
                let response = self.gone(&request, target);
                AffinityFuture::ready(answered(request, response))
            }
            Decision::RetryClaim(target, attempt) => {
                tracing::info!(machine = %target, attempt, "hand-over not delivered yet: made again");
                AffinityFuture::after(
                    CLAIM_RETRY_PAUSE,
                    answered(request, claim_again(target, attempt)),
                )
            }
            Decision::Refuse(refusal) => {
                let response = self.refuse(&request, refusal);
                AffinityFuture::ready(answered(request, response))
            }
        }
    }
}

impl<S> Affinity<S> {
    fn pin_cookie(&self) -> &'static str {
        match self.shared.here.role {
            Role::Launcher => LAUNCH_COOKIE,
            Role::Ephemeral | Role::Concierge => OWNER_COOKIE,
        }
    }

    fn gone<B>(&self, request: &Request<B>, target: MachineId) -> Response {
        tracing::info!(machine = %target, "replay failed: the visitor's Machine is gone");
        let mut response = if let Some(error) =
            server_fn_error(request, AppError::MachineGone, StatusCode::GONE)
        {
            error
        } else if let (true, Some(url)) = (wants_page(request), &self.shared.gone_url) {
            let mut r = plain(StatusCode::SEE_OTHER, "Your Machine is gone.\n");
            r.headers_mut().insert(header::LOCATION, url.clone());
            r
        } else {
            page(
                StatusCode::GONE,
                "Your Machine is gone",
                "It switched itself off and was destroyed.",
            )
        };
        set_cookie(&mut response, cookies::clear(OWNER_COOKIE));
        response
    }

    fn refuse<B>(&self, request: &Request<B>, refusal: Refusal) -> Response {
        let (status, title, text, error) = match refusal {
            Refusal::InvalidId { .. } => (
                StatusCode::BAD_REQUEST,
                "Bad request",
                "That is not a Fly Machine id.",
                AppError::BadRequest("invalid Machine id".into()),
            ),
            Refusal::NotOwner => (
                StatusCode::FORBIDDEN,
                "Not your Machine",
                "This Fly Machine belongs to someone else. Launch your own from the start page.",
                AppError::NotYours,
            ),
            Refusal::NoMachine => (
                StatusCode::FORBIDDEN,
                "No Machine of yours here",
                "Every page here belongs to one visitor's Machine, and none of them is yours.",
                AppError::NotYours,
            ),
            Refusal::Misdirected => (
                StatusCode::MISDIRECTED_REQUEST,
                "Misdirected request",
                "This request was delivered to the wrong Fly Machine. Reload to try again.",
                AppError::Internal,
            ),
        };
        tracing::info!(status = status.as_u16(), reason = ?refusal, "refused");
        let mut response =
            server_fn_error(request, error, status).unwrap_or_else(|| page(status, title, text));
        if let Refusal::InvalidId { unpin: true } = refusal {
            set_cookie(&mut response, cookies::clear(self.pin_cookie()));
        }
        response
    }
}

/// How much of a request body an answer made here still reads. A body the proxy could not
/// buffer for a replay (over 1 MB) is still arriving when the answer goes out; closing the
/// connection on it would reset it and lose the answer, so it is read (and dropped) up to
/// this much, past which the connection may close.
const DRAIN_LIMIT: usize = 4 << 20;

/// Returns `response` for `request`, reading whatever body it has in the background.
fn answered(request: Request<Body>, response: Response) -> Response {
    use axum::body::HttpBody as _;
    let body = request.into_body();
    if !body.is_end_stream() {
        tokio::spawn(async move {
            let mut stream = body.into_data_stream();
            let mut read = 0;
            while let Some(Ok(chunk)) = futures::StreamExt::next(&mut stream).await {
                read += chunk.len();
                if read > DRAIN_LIMIT {
                    break;
                }
            }
        });
    }
    response
}

fn replay(target: MachineId, kind: ReplayKind) -> Response {
    let mut response = plain(
        StatusCode::TEMPORARY_REDIRECT,
        "Replaying to the right Fly Machine.\n",
    );
    let value = HeaderValue::try_from(replay_header(target, kind))
        .expect("ids and constants are valid header text");
    response.headers_mut().insert("fly-replay", value);
    response
}

/// How long a hand-over that could not be delivered waits before it is made again: the
/// proxy may have given up at once (no candidate yet), and the proxies need a moment.
pub const CLAIM_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// `307` back to the hand-over: the browser posts the same form again (307 keeps the method
/// and the body), as attempt `attempt`.
fn claim_again(target: MachineId, attempt: u8) -> Response {
    let mut response = plain(
        StatusCode::TEMPORARY_REDIRECT,
        "Your Machine is almost there.\n",
    );
    let location = format!("{}?{CLAIM_ATTEMPT_PARAM}={attempt}", claim_path(target));
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        HeaderValue::try_from(location).expect("an id, constants and a number"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn wants_page<B>(request: &Request<B>) -> bool {
    (request.method() == Method::GET || request.method() == Method::HEAD)
        && request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html"))
}

/// For a server-function call, the typed error its caller decodes; `None` for anything else.
fn server_fn_error<B>(
    request: &Request<B>,
    error: AppError,
    status: StatusCode,
) -> Option<Response> {
    let path = request.uri().path();
    if !path.starts_with(SERVER_FN_PREFIX) {
        return None;
    }
    let mut response = Response::new(Body::from(error.ser()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(<AppError as FromServerFnError>::Encoder::CONTENT_TYPE),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(path) = HeaderValue::from_str(path) {
        headers.insert(SERVER_FN_ERROR_HEADER, path);
    }
    Some(response)
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A small self-contained page: refusals happen before Leptos, so no app shell is involved.
fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title></head><body><main><h1>{title}</h1><p>{text}</p></main></body></html>"
    );
    let mut response = Response::new(Body::from(html));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn set_cookie(response: &mut Response, cookie: String) {
    if let Ok(value) = HeaderValue::try_from(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

pin_project! {
    /// The router's answer (with what the layer owes it, if anything), or one the layer made,
    /// at once or after a pause. An enum, and what the router's answer is owed boxed: the
    /// common request (served, nothing owed) carries no more than the router's own future.
    #[project = Projected]
    pub enum AffinityFuture<F> {
        Inner {
            #[pin]
            future: F,
            owed: Option<Box<Owed>>,
        },
        Ready {
            response: Option<Response>,
        },
        Paused {
            #[pin]
            pause: tokio::time::Sleep,
            response: Option<Response>,
        },
    }
}

/// What the layer adds to the router's answer: a pin to clear, a row of the owner's panel.
pub struct Owed {
    unpin: Option<String>,
    recording: Option<Recording>,
}

/// A request served to the owner, recorded for their panel once its answer is known.
struct Recording {
    log: Arc<RouteLog>,
    what: crate::app::protocol::RequestKind,
    path: String,
    arrival: crate::app::protocol::Arrival,
    /// A hand-over is the owner's only if the Machine took its secret (its page, a 200).
    claim: bool,
    started: tokio::time::Instant,
}

impl Recording {
    fn answered(self, status: StatusCode) {
        if self.claim && !status.is_success() {
            return;
        }
        let took = self.started.elapsed().as_micros() as u64;
        self.log.record(self.what, &self.path, self.arrival, took);
    }
}

impl<F> AffinityFuture<F> {
    fn inner(future: F, unpin: Option<String>, recording: Option<Recording>) -> Self {
        let owed =
            (unpin.is_some() || recording.is_some()).then(|| Box::new(Owed { unpin, recording }));
        AffinityFuture::Inner { future, owed }
    }

    fn ready(response: Response) -> Self {
        AffinityFuture::Ready {
            response: Some(response),
        }
    }

    fn after(pause: Duration, response: Response) -> Self {
        AffinityFuture::Paused {
            pause: tokio::time::sleep(pause),
            response: Some(response),
        }
    }
}

impl<F, E> Future for AffinityFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Inner { future, owed } => {
                let mut response = ready!(future.poll(cx))?;
                if let Some(owed) = owed.take() {
                    let Owed { unpin, recording } = *owed;
                    if let Some(recording) = recording {
                        recording.answered(response.status());
                    }
                    if let Some(cookie) = unpin {
                        set_cookie(&mut response, cookie);
                    }
                }
                Poll::Ready(Ok(response))
            }
            Projected::Ready { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            Projected::Paused { pause, response } => {
                ready!(pause.poll(cx));
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_header_names_only_a_valid_id_and_fixed_fields() {
        let id = MachineId::parse("0123456789abcd").unwrap();
        assert_eq!(
            replay_header(id, ReplayKind::Guarded),
            "instance=0123456789abcd;timeout=2s;fallback=prefer_self"
        );
        assert_eq!(
            replay_header(id, ReplayKind::Cacheable),
            "instance=0123456789abcd"
        );
    }
}
