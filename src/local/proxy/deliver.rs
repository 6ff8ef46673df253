//! Getting a request to a Machine: which Machines fit (an instance, a balance over regions, a
//! replay-cache hit), tried in rounds with backoff until one answers or the retry's deadline
//! passes, and the fallback to the replaying Machine when a replay's target is out of reach.

use super::*;

/// A Machine's answer, and how it got there.
pub(super) struct Delivered {
    pub(super) route: Arc<Route>,
    pub(super) response: Response<Incoming>,
    /// The headers this hop added, for a fallback to the same Machine.
    pub(super) hop: Vec<(HeaderName, HeaderValue)>,
    /// A fallback's answer may not replay again.
    pub(super) fallback: bool,
}

/// Which Machines fit a delivery.
pub(super) enum Spec<'a> {
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
pub(super) struct Retry {
    pub(super) rounds: u32,
    pub(super) deadline: Duration,
    /// Keep trying when no Machine fits yet (a replay's target may be starting); a client
    /// request to an app with no started Machine fails at once instead.
    pub(super) wait_for_candidates: bool,
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
pub(super) enum Failure {
    /// No fitting Machine could be reached: a fallback applies.
    Unreachable(FailReason),
    /// A Machine took the request and the exchange broke, or the request cannot be sent
    /// again: no retry, no fallback.
    Fatal(ProxyError),
}

impl Proxy {
    /// The first Machine of a client request: a client routing header, else a replay cache
    /// hit, else load balancing.
    pub(super) async fn first_hop(
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
    pub(super) async fn deliver_cached(
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

    pub(super) fn replay_strategy(&self) -> Strategy {
        match self.balance {
            // Replays follow an app's explicit choice; wrong-first only concerns client
            // requests, so replays balance as fly-proxy does.
            Balance::Nearest | Balance::WrongFirst => Strategy::Nearest,
            Balance::Random => Strategy::Random,
            Balance::RoundRobin => Strategy::RoundRobin,
        }
    }

    pub(super) async fn deliver_replay(
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

    pub(super) async fn deliver_fallback(
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
    pub(super) async fn deliver(
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
                        // The request's way out and the answer's way back, under `--timings fly`.
                        let trip = self.platform.timings.round_trip(edge, route.region);
                        if !trip.is_zero() {
                            tokio::time::sleep(trip).await;
                        }
                        return Ok(Delivered {
                            route,
                            response,
                            hop,
                            fallback: false,
                        });
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
    pub(super) fn order(
        &self,
        table: &Table,
        edge: RegionCode,
        spec: &Spec<'_>,
    ) -> Vec<Arc<Route>> {
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
}

pub(super) fn unreachable_error(failure: Failure, describe: impl FnOnce() -> String) -> ProxyError {
    match failure {
        Failure::Fatal(e) => e,
        Failure::Unreachable(reason) => {
            ProxyError::Unreachable(format!("{} ({})", describe(), reason.as_str()))
        }
    }
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
