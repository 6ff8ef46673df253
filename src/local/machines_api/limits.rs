//! The one gate every `/v1` call passes: the bearer token (`Bearer` or, as Fly's Go client
//! sends macaroons, `FlyV1`), Fly's rate limits (a token bucket per action and app or Machine:
//! 1/s, bursts of 3; get 5/s, bursts of 10), then the armed API faults.

use super::*;

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

pub(super) struct Bucket {
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

/// Every `/v1` call: counted, then a refusal, token, rate limit and the other armed faults, in
/// that order.
pub(super) async fn gate(
    State(platform): State<Arc<Platform>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let action = Action::of(request.method(), route.as_deref());
    // The call's way to the API's region before the API acts on it, the answer's way back
    // after: a start's boot begins while its answer is still travelling, and a wait's answer
    // comes half a round trip after the state it waited for, as on Fly.
    let way = match platform.timings.mode() {
        TimingsMode::Fly => {
            platform
                .timings
                .api_round_trip(caller_region(&platform, &request))
                / 2
        }
        TimingsMode::Instant => Duration::ZERO,
    };
    tokio::time::sleep(way).await;
    let mut response = guarded(&platform, action, request, next).await;
    tokio::time::sleep(way).await;
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

/// Where an API call comes from: the region of the Machine at the peer's address, else (a
/// test, a human, every caller on the shared network's loopback) the edge region.
fn caller_region(platform: &Platform, request: &Request) -> RegionCode {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    peer.and_then(|ip| {
        platform
            .registry
            .all()
            .into_iter()
            .find(|m| m.addrs.private == ip || m.addrs.proxy == ip)
            .map(|m| m.region)
    })
    .unwrap_or(platform.args.edge_region)
}

pub(super) async fn guarded(
    platform: &Platform,
    action: Action,
    request: Request,
    next: Next,
) -> Response {
    // A refused connection never reaches the API: neither its token check nor its rate limit
    // sees it, and it spends none of the rate limit's budget.
    if let Some(delay) = platform.faults.take_api_refusal(action.name()) {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        return refuse(platform, action, hangup_of(&request)).await;
    }
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
            Some(ApiFailure::Refuse) => return refuse(platform, action, hangup_of(&request)).await,
            None => {}
        }
    }
    next.run(request).await
}

/// Closes the call's connection without an answer (a 502 where it has no connection to close).
async fn refuse(platform: &Platform, action: Action, hangup: Option<Arc<Notify>>) -> Response {
    platform
        .stats
        .incr(format!("api.{}.refused", action.name()));
    if let Some(hangup) = hangup {
        hangup.notify_one();
        return std::future::pending().await;
    }
    ApiError::Injected(StatusCode::BAD_GATEWAY).into_response()
}

/// What closes the call's connection, when it came over one.
fn hangup_of(request: &Request) -> Option<Arc<Notify>> {
    request
        .extensions()
        .get::<Hangup>()
        .map(|Hangup(hangup)| hangup.clone())
}

/// `Authorization: Bearer <token>`, or `FlyV1 <token>` as Fly's Go client sends macaroons.
/// Compared in constant time.
pub(super) fn authorized(expected: &str, headers: &axum::http::HeaderMap) -> bool {
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
}
