//! How one call reaches the Machines API: attempts with their own timeouts inside the call's
//! deadline, retries of what may succeed (never a create that may have happened: that one is
//! looked up by name), the observer told of each attempt, and Fly's answers decoded.

use super::*;

/// One HTTP request of a call.
pub(super) struct Request<'a> {
    pub(super) action: &'static str,
    pub(super) method: Method,
    pub(super) url: Url,
    pub(super) body: Option<&'a Bytes>,
    /// The nonce of the Machine's lease this caller holds (`fly-machine-lease-nonce`).
    pub(super) lease: Option<&'a str>,
}

/// What one attempt produced.
pub(super) struct Attempt {
    pub(super) outcome: Outcome,
    pub(super) took: Duration,
    /// Fly's `fly-request-id`, for support; logged, not kept.
    pub(super) request_id: Option<String>,
    pub(super) result: Result<Bytes, FlyApiError>,
}

/// What a by-name lookup after a doubtful create found.
pub(super) enum Found {
    /// A Machine with the name and the request's metadata: the create happened.
    Ours(Machine),
    /// The name is held by a Machine that is not the one requested.
    Theirs(MachineId),
    Absent,
}

impl FlyApi {
    pub(super) async fn get_within(
        &self,
        app: &str,
        id: MachineId,
        budget: Duration,
    ) -> Result<Machine, FlyApiError> {
        let url = self.machines_url(app, &[id.as_str()]);
        let body = self
            .execute("get", Method::GET, None, budget, |left| {
                (url.clone(), self.attempt_timeout(left))
            })
            .await?;
        decode(&body)
    }

    pub(super) async fn list_within(
        &self,
        app: &str,
        filter: &ListFilter,
        budget: Duration,
    ) -> Result<Vec<Machine>, FlyApiError> {
        let mut url = self.machines_url(app, &[]);
        {
            let mut query = url.query_pairs_mut();
            if filter.include_deleted {
                query.append_pair("include_deleted", "true");
            }
            if let Some(region) = filter.region {
                query.append_pair("region", region.as_str());
            }
            for (key, value) in &filter.metadata {
                query.append_pair(&format!("metadata.{key}"), value);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let body = self
            .execute("list", Method::GET, None, budget, |left| {
                (url.clone(), self.attempt_timeout(left))
            })
            .await?;
        // Fly's Go encoder writes an empty list as `null`.
        let machines: Option<Vec<Machine>> = decode(&body)?;
        Ok(machines
            .unwrap_or_default()
            .into_iter()
            .filter(|m| filter.matches(m))
            .collect())
    }

    pub(super) async fn wait_inner(
        &self,
        app: &str,
        id: MachineId,
        instance_id: Option<&str>,
        state: WaitState,
        timeout: Duration,
    ) -> Result<(), FlyApiError> {
        let timeout = timeout.clamp(Duration::from_secs(1), MAX_WAIT);
        let base = self.machines_url(app, &[id.as_str(), "wait"]);
        let margin = self.inner.wait_margin;
        self.execute("wait", Method::GET, None, timeout, |left| {
            // Fly takes whole seconds; round up so a retry never asks for 0.
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            let secs = secs.clamp(1, MAX_WAIT.as_secs());
            let mut url = base.clone();
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("state", state.as_str());
                query.append_pair("timeout", &secs.to_string());
                if let Some(instance_id) = instance_id {
                    query.append_pair("instance_id", instance_id);
                }
            }
            (url, Duration::from_secs(secs) + margin)
        })
        .await
        .map(drop)
    }

    /// Runs an idempotent call: attempts until success, a final error, `max_attempts`, or
    /// `budget`. `prepare` gives each attempt its URL and deadline from the time left.
    pub(super) async fn execute(
        &self,
        action: &'static str,
        method: Method,
        body: Option<&Bytes>,
        budget: Duration,
        prepare: impl FnMut(Duration) -> (Url, Duration),
    ) -> Result<Bytes, FlyApiError> {
        self.execute_leased(action, method, body, None, budget, prepare)
            .await
    }

    /// [`FlyApi::execute`] on a Machine whose lease the caller holds (`lease`, its nonce).
    pub(super) async fn execute_leased(
        &self,
        action: &'static str,
        method: Method,
        body: Option<&Bytes>,
        lease: Option<&str>,
        budget: Duration,
        mut prepare: impl FnMut(Duration) -> (Url, Duration),
    ) -> Result<Bytes, FlyApiError> {
        let started = Instant::now();
        let ctx = Context { action, name: None };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (url, timeout) = prepare(budget.saturating_sub(started.elapsed()));
            let request = Request {
                action,
                method: method.clone(),
                url,
                body,
                lease,
            };
            let Attempt {
                outcome,
                took,
                request_id,
                result,
            } = self.attempt(&request, ctx, timeout).await;
            let (result, retry_in) = match result {
                Ok(bytes) => (Ok(bytes), None),
                Err(e) => {
                    let retry_in = self.retry_delay(&e, attempt, started, budget);
                    (Err(e), retry_in)
                }
            };
            self.record(
                &request,
                attempt,
                outcome,
                took,
                retry_in,
                request_id.as_deref(),
            );
            match (result, retry_in) {
                (Ok(bytes), _) => return Ok(bytes),
                (Err(e), None) => return Err(e),
                (Err(_), Some(delay)) => tokio::time::sleep(delay).await,
            }
        }
    }

    /// The backoff before another attempt, or `None` when there must be none: the error is
    /// final, the attempts are used up, or the backoff would end past the budget.
    pub(super) fn retry_delay(
        &self,
        err: &FlyApiError,
        attempt: u32,
        started: Instant,
        budget: Duration,
    ) -> Option<Duration> {
        let policy = &self.inner.retry;
        if !err.is_retryable() || attempt >= policy.max_attempts {
            return None;
        }
        let delay = policy.random_backoff(attempt, err.retry_after());
        (started.elapsed() + delay < budget).then_some(delay)
    }

    pub(super) fn attempt_timeout(&self, left: Duration) -> Duration {
        self.inner.call_timeout.min(left).max(MIN_ATTEMPT)
    }

    /// One HTTP exchange, with its deadline, classified.
    pub(super) async fn attempt(
        &self,
        request: &Request<'_>,
        ctx: Context<'_>,
        timeout: Duration,
    ) -> Attempt {
        let started = Instant::now();
        let mut builder = self
            .inner
            .http
            .request(request.method.clone(), request.url.clone())
            .header(header::AUTHORIZATION, self.inner.token.header().clone())
            .header(header::ACCEPT, "application/json")
            .timeout(timeout);
        if let Some(nonce) = request.lease {
            builder = builder.header(LEASE_NONCE_HEADER, nonce);
        }
        if let Some(body) = request.body {
            builder = builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let exchange = async {
            let mut response = builder.send().await.map_err(transport_error)?;
            let status = response.status();
            let header_str = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let retry_after = header_str("retry-after")
                .as_deref()
                .and_then(retry::parse_retry_after);
            let request_id = header_str("fly-request-id");
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
                if body.len() + chunk.len() > MAX_BODY {
                    return Ok((
                        status,
                        request_id,
                        Err(FlyApiError::Decode {
                            message: format!("response body over {MAX_BODY} bytes"),
                        }),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            let result = if status.is_success() {
                Ok(Bytes::from(body))
            } else {
                Err(from_response(ctx, status, retry_after, &body))
            };
            Ok::<_, FlyApiError>((status, request_id, result))
        };
        let (outcome, request_id, result) = match exchange.await {
            Ok((status, request_id, result)) => {
                (Outcome::Status(status.as_u16()), request_id, result)
            }
            Err(e) => {
                let outcome = match e {
                    FlyApiError::Timeout => Outcome::Timeout,
                    _ => Outcome::Unavailable,
                };
                (outcome, None, Err(e))
            }
        };
        Attempt {
            outcome,
            took: started.elapsed(),
            request_id,
            result,
        }
    }

    pub(super) fn record(
        &self,
        request: &Request<'_>,
        attempt: u32,
        outcome: Outcome,
        took: Duration,
        retry_in: Option<Duration>,
        request_id: Option<&str>,
    ) {
        // The path names the app and the Machine; the query (filters, wait state) and the
        // headers (the token) stay out of the log.
        tracing::debug!(
            action = request.action,
            method = %request.method,
            path = request.url.path(),
            outcome = %outcome,
            attempt,
            duration_ms = took.as_millis() as u64,
            retry_in_ms = retry_in.map(|d| d.as_millis() as u64),
            fly_request_id = request_id,
            "fly api call"
        );
        if let Some(observer) = &self.inner.observer {
            observer(&CallRecord {
                action: request.action,
                outcome,
                duration: took,
                attempt,
                retry_in,
            });
        }
    }

    /// `{base}/v1/apps/{app}/machines/{rest...}`, each segment percent-encoded, so an app name
    /// cannot step out of its path.
    pub(super) fn machines_url(&self, app: &str, rest: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .expect("checked in FlyApi::new: an http(s) base")
            .pop_if_empty()
            .extend(["v1", "apps", app, "machines"])
            .extend(rest);
        url
    }

    /// After a create that may have happened: is there a Machine with its name, and is it
    /// this request's? `hint` is the Machine Fly named as holding the name, if it did.
    pub(super) async fn look_up_created(
        &self,
        app: &str,
        request: &CreateMachineRequest,
        name: &str,
        hint: Option<MachineId>,
        budget: Duration,
    ) -> Result<Found, FlyApiError> {
        let candidates = match hint {
            Some(id) => match self.get_within(app, id, budget).await {
                Ok(machine) => vec![machine],
                Err(FlyApiError::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(e),
            },
            None => {
                self.list_within(app, &ListFilter::default(), budget)
                    .await?
            }
        };
        let Some(machine) = candidates
            .into_iter()
            .find(|m| m.name == name && m.state.is_alive())
        else {
            return Ok(Found::Absent);
        };
        let metadata = machine.metadata();
        let ours = request
            .config
            .metadata
            .iter()
            .all(|(k, v)| metadata.get(k) == Some(v));
        Ok(if ours {
            Found::Ours(machine)
        } else {
            Found::Theirs(machine.id)
        })
    }
}

pub(super) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FlyApiError> {
    serde_json::from_slice(body).map_err(|e| FlyApiError::Decode {
        message: one_line(&e.to_string()),
    })
}

/// A request that got no (complete) answer. The message is the innermost cause ("connection
/// refused", "connection closed before message completed"), which names neither the URL nor,
/// of course, the token.
pub(super) fn transport_error(e: reqwest::Error) -> FlyApiError {
    if e.is_timeout() {
        return FlyApiError::Timeout;
    }
    let mut cause: &dyn std::error::Error = &e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let reason = if std::ptr::addr_eq(cause, &e) {
        if e.is_connect() {
            "connection failed".to_owned()
        } else {
            "no answer".to_owned()
        }
    } else {
        one_line(&cause.to_string())
    };
    FlyApiError::Unavailable { reason }
}
