//! A client for the Fly Machines API: how the launcher creates, watches and destroys visitors'
//! Machines.
//!
//! It exists because the launcher's promises rest on it: no orphan Machine (a create is never
//! repeated unless it provably did not happen), a clear message for the visitor (every failure is
//! a typed [`FlyApiError`]), staying within Fly's rate limits (bounded, jittered retries that honour
//! `Retry-After`), and no leaked secret (the token lives in a redacting [`ApiToken`]). The same
//! code talks to Fly (`http://_api.internal:4280` from inside a Fly Machine) and to `flyby-local`
//! (`http://127.0.0.1:4280`), which plays the same API.
//!
//! What is retried, and why it is safe:
//! - `get`, `list`, `wait`, `stop`, `delete` are idempotent: retried on 429, 5xx, timeouts and
//!   lost connections.
//! - `create` is not idempotent. A 429 means Fly did not perform it, so it is retried. After a
//!   5xx, a timeout or a lost connection the Machine may exist, so the client first looks it up
//!   by its name and retries only if it is absent; if it is there (and its metadata is the
//!   request's), that Machine is the result. Fly refuses a second Machine with the same name,
//!   which closes the gap where a just-created Machine is not listed yet: the retry then gets a
//!   "name taken" that the client resolves the same way.
//!
//! Every HTTP attempt is logged at debug level (action, method, path, outcome, duration; never
//! the token) and reported to an optional [`Observer`] for the launcher's metrics.

mod auth;
mod error;
mod leases;
pub(crate) mod model;
mod retry;
mod transport;

use transport::{decode, Attempt, Found, Request};
#[cfg(test)]
mod tests;

pub use auth::{ApiToken, InvalidToken, TokenKind};
pub use error::FlyApiError;
pub use leases::{Lease, LEASE_NONCE_HEADER};
pub use model::{
    Autostop, Check, Concurrency, CreateMachineRequest, FlyDuration, Guest, HttpOptions,
    ListFilter, Machine, MachineConfig, MachineEvent, MachineState, Port, ReplayCacheKind,
    ReplayCacheRule, Restart, RestartPolicy, Service, StopConfig, StopRequest, WaitState,
};
pub use retry::RetryPolicy;

use crate::fly::MachineId;
use bytes::Bytes;
use error::{from_response, one_line, Context};
use reqwest::{header, Method, Url};
use serde::de::DeserializeOwned;
use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

/// The longest wait Fly serves in one call (its proxy cuts longer ones).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// A response body larger than this is refused rather than buffered: a list of flyby's
/// Machines is a few hundred KB at most.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// No attempt gets less time than this, even at the end of its call's budget: a shorter one
/// would only time out.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);

/// One HTTP attempt, as reported to an [`Observer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// `create`, `get`, `list`, `wait`, `stop` or `delete`.
    pub action: &'static str,
    pub outcome: Outcome,
    pub duration: Duration,
    /// 1 for the first attempt of a call.
    pub attempt: u32,
    /// `Some` when the client will try again after this long.
    pub retry_in: Option<Duration>,
}

/// How an attempt ended: Fly's status code, or no answer at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    Timeout,
    Unavailable,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Status(code) => write!(f, "{code}"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Unavailable => f.write_str("unavailable"),
        }
    }
}

/// Receives a [`CallRecord`] after every HTTP attempt (the launcher counts API calls by action
/// and status with it). Called inline: keep it cheap.
pub type Observer = Arc<dyn Fn(&CallRecord) + Send + Sync>;

/// How to reach the API and how patient to be.
#[derive(Clone)]
pub struct FlyApiConfig {
    /// `http://_api.internal:4280` on Fly, flyby-local's API address locally.
    pub base_url: String,
    pub token: ApiToken,
    /// To open a TCP connection; the API is near, so a slow connect means trouble.
    pub connect_timeout: Duration,
    /// The deadline of one attempt of any call but `wait`.
    pub call_timeout: Duration,
    /// What a `wait` attempt gets beyond the time it asks Fly to wait.
    pub wait_margin: Duration,
    pub retry: RetryPolicy,
    pub observer: Option<Observer>,
}

impl FlyApiConfig {
    /// The defaults: 2 s to connect, 10 s per call, `wait` + 5 s, [`RetryPolicy::default`].
    pub fn new(base_url: impl Into<String>, token: ApiToken) -> Self {
        FlyApiConfig {
            base_url: base_url.into(),
            token,
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(10),
            wait_margin: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            observer: None,
        }
    }
}

impl fmt::Debug for FlyApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlyApiConfig")
            .field("base_url", &self.base_url)
            .field("token", &self.token)
            .field("connect_timeout", &self.connect_timeout)
            .field("call_timeout", &self.call_timeout)
            .field("wait_margin", &self.wait_margin)
            .field("retry", &self.retry)
            .field("observer", &self.observer.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid Fly API base URL {url:?}: {reason}")]
    BaseUrl { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// What a delete did: counted by whoever destroyed a Machine, once, however many asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// This call destroyed it.
    Now,
    /// It was gone already (another launcher's reaper, or an earlier attempt of this call).
    AlreadyGone,
}

/// What a start reports: the state the Machine was in.
#[derive(serde::Deserialize)]
struct StartAnswer {
    #[serde(default)]
    previous_state: String,
}

/// The Machines API client. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct FlyApi {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    token: ApiToken,
    call_timeout: Duration,
    wait_margin: Duration,
    retry: RetryPolicy,
    observer: Option<Observer>,
}

impl fmt::Debug for FlyApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlyApi")
            .field("base", &self.inner.base.as_str())
            .field("token", &self.inner.token)
            .finish_non_exhaustive()
    }
}

impl FlyApi {
    pub fn new(config: FlyApiConfig) -> Result<Self, BuildError> {
        let bad = |reason: &str| BuildError::BaseUrl {
            url: config.base_url.clone(),
            reason: reason.to_owned(),
        };
        let mut base = Url::parse(&config.base_url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad("expected an http(s) URL"));
        }
        if !base.username().is_empty() || base.password().is_some() {
            // Credentials belong in the token, not in a URL that gets logged.
            return Err(bad("credentials are not allowed in the URL"));
        }
        base.set_query(None);
        base.set_fragment(None);
        let http = reqwest::Client::builder()
            // The API is on Fly's private network (or loopback): an HTTP(S)_PROXY from the
            // environment must not receive the calls, nor the token with them.
            .no_proxy()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("flyby/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError::Http(e.to_string()))?;
        Ok(FlyApi {
            inner: Arc::new(Inner {
                http,
                base,
                token: config.token,
                call_timeout: config.call_timeout,
                wait_margin: config.wait_margin,
                retry: config.retry,
                observer: config.observer,
            }),
        })
    }

    /// Creates (and, unless `skip_launch`, starts) a Machine; Fly answers at once with the
    /// Machine in state `created`.
    ///
    /// Retried only when it provably did not happen (see the module docs). Give the request a
    /// `name`, and a per-launch value in `config.metadata` (a launch id): the name is what lets
    /// a doubtful create be retried at all, the metadata is what proves that a Machine found
    /// under that name is this request's and not another launcher's (without metadata, the name
    /// alone is taken as proof).
    ///
    /// On an error for which [`FlyApiError::create_may_have_happened`] is true, the Machine may
    /// exist anyway (the API failed in a way the client could not see through within its
    /// budget): cleanup should look for it by name ([`FlyApi::find_by_name`]) or leave it to
    /// the reaper.
    pub async fn create(
        &self,
        app: &str,
        request: &CreateMachineRequest,
    ) -> Result<Machine, FlyApiError> {
        self.create_within(app, request, self.inner.retry.max_elapsed)
            .await
    }

    /// [`FlyApi::create`] within `budget` (its retries and look-ups included; an attempt gets
    /// at least a second), for a caller with a deadline of its own.
    pub async fn create_within(
        &self,
        app: &str,
        request: &CreateMachineRequest,
        budget: Duration,
    ) -> Result<Machine, FlyApiError> {
        // Plain structs with string keys: serializing cannot fail.
        let body = Bytes::from(serde_json::to_vec(request).expect("a create body serializes"));
        let name = request.name.as_deref();
        let ctx = Context {
            action: "create",
            name,
        };
        let started = Instant::now();
        // Whether an earlier attempt may have created the Machine.
        let mut maybe_created = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request_http = Request {
                action: "create",
                method: Method::POST,
                url: self.machines_url(app, &[]),
                body: Some(&body),
                lease: None,
            };
            let timeout = self.attempt_timeout(budget.saturating_sub(started.elapsed()));
            let Attempt {
                outcome,
                took,
                request_id,
                result,
            } = self.attempt(&request_http, ctx, timeout).await;
            let record = |retry_in| {
                self.record(
                    &request_http,
                    attempt,
                    outcome,
                    took,
                    retry_in,
                    request_id.as_deref(),
                )
            };
            let err = match result.and_then(|b| decode::<Machine>(&b)) {
                Ok(machine) => {
                    record(None);
                    return Ok(machine);
                }
                Err(err) => err,
            };
            if let (FlyApiError::NameTaken { existing, .. }, true, Some(name)) =
                (&err, maybe_created, name)
            {
                // The name may be held by the Machine an earlier, doubtful attempt created.
                record(None);
                let left = budget.saturating_sub(started.elapsed());
                return match self
                    .look_up_created(app, request, name, *existing, left)
                    .await
                {
                    Ok(Found::Ours(machine)) => Ok(machine),
                    _ => Err(err),
                };
            }
            let doubtful = err.create_may_have_happened();
            let may_retry =
                matches!(err, FlyApiError::RateLimited { .. }) || (doubtful && name.is_some());
            let retry_in = may_retry
                .then(|| self.retry_delay(&err, attempt, started, budget))
                .flatten();
            record(retry_in);
            let Some(delay) = retry_in else {
                if doubtful {
                    if let Some(name) = name {
                        // Out of retries, but the Machine may exist: one last look spares the
                        // caller an error for a Machine it actually has.
                        let left = budget.saturating_sub(started.elapsed());
                        if let Ok(Found::Ours(machine)) =
                            self.look_up_created(app, request, name, None, left).await
                        {
                            return Ok(machine);
                        }
                    }
                }
                return Err(err);
            };
            // Waiting first also gives Fly time to list a Machine it has just created.
            tokio::time::sleep(delay).await;
            if doubtful {
                maybe_created = true;
                let name = name.expect("doubtful creates are retried only with a name");
                let left = budget.saturating_sub(started.elapsed());
                match self.look_up_created(app, request, name, None, left).await {
                    Ok(Found::Ours(machine)) => return Ok(machine),
                    Ok(Found::Theirs(id)) => {
                        return Err(FlyApiError::NameTaken {
                            name: name.to_owned(),
                            existing: Some(id),
                        })
                    }
                    Ok(Found::Absent) => {}
                    // Absence not proven: retrying could make a second Machine.
                    Err(_) => return Err(err),
                }
            }
        }
    }

    /// One Machine.
    pub async fn get(&self, app: &str, id: MachineId) -> Result<Machine, FlyApiError> {
        self.get_within(app, id, self.inner.retry.max_elapsed).await
    }

    /// The app's Machines that pass `filter` (destroyed ones only with `include_deleted`). The
    /// filter is sent to Fly and applied again to its answer.
    pub async fn list(&self, app: &str, filter: &ListFilter) -> Result<Vec<Machine>, FlyApiError> {
        self.list_within(app, filter, self.inner.retry.max_elapsed)
            .await
    }

    /// The live Machine that `request` (which must carry a name) created, if a create of it
    /// that failed doubtfully ([`FlyApiError::create_may_have_happened`]) was performed after
    /// all: a Machine of that name whose metadata is the request's.
    pub async fn find_created(
        &self,
        app: &str,
        request: &CreateMachineRequest,
    ) -> Result<Option<MachineId>, FlyApiError> {
        let Some(name) = request.name.as_deref() else {
            return Ok(None);
        };
        let found = self
            .look_up_created(app, request, name, None, self.inner.retry.max_elapsed)
            .await?;
        Ok(match found {
            Found::Ours(machine) => Some(machine.id),
            Found::Theirs(_) | Found::Absent => None,
        })
    }

    /// The live Machine of `app` named `name`, if there is one.
    pub async fn find_by_name(
        &self,
        app: &str,
        name: &str,
    ) -> Result<Option<Machine>, FlyApiError> {
        let machines = self.list(app, &ListFilter::default()).await?;
        Ok(machines
            .into_iter()
            .find(|m| m.name == name && m.state.is_alive()))
    }

    /// Waits until the Machine reaches `state`, for at most `timeout` (clamped to 1–60 s, what
    /// Fly serves). [`FlyApiError::WaitTimedOut`] when it did not. A retried attempt asks Fly
    /// only for the time that is left.
    pub async fn wait(
        &self,
        app: &str,
        id: MachineId,
        state: WaitState,
        timeout: Duration,
    ) -> Result<(), FlyApiError> {
        self.wait_inner(app, id, None, state, timeout).await
    }

    /// [`FlyApi::wait`] for one version of the Machine (its `instance_id`), which Fly needs to
    /// wait for `stopped`.
    pub async fn wait_for_instance(
        &self,
        app: &str,
        id: MachineId,
        instance_id: &str,
        state: WaitState,
        timeout: Duration,
    ) -> Result<(), FlyApiError> {
        self.wait_inner(app, id, Some(instance_id), state, timeout)
            .await
    }

    /// Starts a created or stopped Machine; answers the state it was in (`created` or
    /// `stopped` when this call started it). Fly answers once the start has begun; `wait`
    /// tells when it is done. Fly refuses (409) to start a Machine that is starting or
    /// started, or whose lease someone else holds.
    pub async fn start(&self, app: &str, id: MachineId) -> Result<String, FlyApiError> {
        let url = self.machines_url(app, &[id.as_str(), "start"]);
        let bytes = self
            .execute(
                "start",
                Method::POST,
                None,
                self.inner.retry.max_elapsed,
                |left| (url.clone(), self.attempt_timeout(left)),
            )
            .await?;
        Ok(decode::<StartAnswer>(&bytes)
            .map(|a| a.previous_state)
            .unwrap_or_default())
    }

    /// Stops the Machine with its configured signal and grace time.
    ///
    /// Fly answers 409 for a Machine that is not started. When a first attempt stopped the
    /// Machine but its answer was lost, the retry gets that 409: a caller that only needs the
    /// Machine stopped can take [`FlyApiError::Api`] with status 409 as done.
    pub async fn stop(&self, app: &str, id: MachineId) -> Result<(), FlyApiError> {
        self.stop_with(app, id, &StopRequest::default()).await
    }

    /// Stops the Machine with this signal and grace time.
    pub async fn stop_with(
        &self,
        app: &str,
        id: MachineId,
        request: &StopRequest,
    ) -> Result<(), FlyApiError> {
        let body = Bytes::from(serde_json::to_vec(request).expect("a stop body serializes"));
        let url = self.machines_url(app, &[id.as_str(), "stop"]);
        self.execute(
            "stop",
            Method::POST,
            Some(&body),
            self.inner.retry.max_elapsed,
            |left| (url.clone(), self.attempt_timeout(left)),
        )
        .await
        .map(drop)
    }

    /// Destroys the Machine; `force` kills it if it is running.
    ///
    /// A Machine that does not exist counts as destroyed (`Ok(Deleted::AlreadyGone)`): destroy
    /// is called on every failure path and by several reapers at once, and a retried delete
    /// whose first attempt succeeded sees a 404. The flip side: a wrong app name also answers
    /// 404, so a typo in the app is not caught here (it is by `list` and `create`).
    pub async fn delete(
        &self,
        app: &str,
        id: MachineId,
        force: bool,
    ) -> Result<Deleted, FlyApiError> {
        let mut url = self.machines_url(app, &[id.as_str()]);
        if force {
            url.query_pairs_mut().append_pair("force", "true");
        }
        let result = self
            .execute(
                "delete",
                Method::DELETE,
                None,
                self.inner.retry.max_elapsed,
                |left| (url.clone(), self.attempt_timeout(left)),
            )
            .await;
        match result {
            Ok(_) => Ok(Deleted::Now),
            Err(FlyApiError::NotFound { .. }) => Ok(Deleted::AlreadyGone),
            Err(e) => Err(e),
        }
    }
}
