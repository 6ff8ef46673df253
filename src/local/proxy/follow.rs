//! The chain of replays: each Machine's answer read as far as needed to tell whether it is a
//! `fly-replay`, what the chain may do next ([`super::replay::next_step`]), the request sent on
//! with `fly-replay-src` or back with `fly-replay-failed`, and the replay cache kept up to date.

use super::*;

/// A Machine's answer, read as far as needed to tell whether it is a replay.
pub(super) enum Answer {
    Final {
        response: Response<Incoming>,
        /// It carried `fly-replay-cache: invalidate`.
        invalidate: bool,
    },
    Replay(Replay),
    Invalid(ReplayError),
}

impl Proxy {
    /// Follows replays until a Machine gives a final answer, then hands it to the client.
    pub(super) async fn follow(
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
                    return self.finish(response, upgrade, &current.route, exchange.edge);
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
            let target_app = replay.app.clone().unwrap_or_else(|| source.app.to_string());
            let facts = ChainFacts {
                from_fallback: current.fallback,
                replays,
                body_replayable: outgoing.body.is_replayable(),
                app_exists: self.table().app(&target_app).is_some()
                    || self.platform.registry.app_exists(&target_app),
            };
            match next_step(facts) {
                NextStep::Replay => replays += 1,
                NextStep::FallbackReplayed => {
                    self.count("proxy.replays.invalid");
                    return Err(ProxyError::FallbackReplayed);
                }
                NextStep::Limit => {
                    self.count("proxy.replays.limit");
                    return Err(ProxyError::ReplayLimit);
                }
                NextStep::TooLarge => {
                    self.count("proxy.replays.too_large");
                    return Err(ProxyError::TooLargeToReplay);
                }
                NextStep::NoSuchApp => {
                    self.count("proxy.replays.app_not_found");
                    return Err(ProxyError::ReplayAppNotFound(target_app));
                }
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

    /// Stores a replay in the replay cache when the Machine asked for it (path-based) or its
    /// service has a matching session rule, or drops the request's route on `invalidate`.
    pub(super) fn remember_replay(
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

    pub(super) fn remember_served(&self, exchange: &Exchange, machine: MachineId) {
        if let Some(visitor) = exchange.visitor {
            let mut last = self.last_served.lock().expect("last_served lock");
            if last.len() >= MAX_REMEMBERED_VISITORS {
                last.clear();
            }
            last.insert(visitor, machine);
        }
    }
}

/// Reads whether a Machine's answer is a replay. Its body is read only for the JSON form; a
/// replaying answer's body is drained (never shown to the client).
pub(super) async fn read_answer(response: Response<Incoming>) -> Answer {
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
pub(super) fn drain(body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    if body.size_hint().exact().is_some_and(|n| n <= DRAIN_LIMIT) {
        tokio::spawn(async move {
            let _ = body.collect().await;
        });
    }
}

pub(super) fn describe_target(replay: &Replay, app: &str) -> String {
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

pub(super) fn micros_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
