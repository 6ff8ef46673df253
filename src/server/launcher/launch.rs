//! One launch, from the request to the hand-over: a Machine of the warm pool started near the
//! visitor ([`super::pool`]), or else one created in a free slot (the next nearest region when
//! Fly has no room), waited for until it serves over the private network, and destroyed if
//! anything fails. Every wait is bounded by what is left of
//! the launch's time ([`Budget`]), and what the launch holds is given back on drop
//! ([`super::holds`]), so neither its deadline nor a panic leaves a slot or a Machine behind.

use super::holds::{sweep_doubtful_create, Budget, Created, SlotHold};
use super::*;
use crate::server::readiness::{self, Challenge, ReadinessKey, CHALLENGE_HEADER};

/// How long past its deadline a launch may run before it is dropped: its own waits end it by
/// the deadline, and this margin covers an API attempt under way then (at least a second) and
/// the failure path's destroy. Dropped, its holds still give back what it held.
const OVERRUN: Duration = Duration::from_secs(15);

/// A wait for the API's rate limit; [`LaunchProgress::record`] counts it into its row.
const WAITING: Step = Step::WaitingForSlot {
    waits: 1,
    waited_ms: 0,
};

impl Launcher {
    /// One launch, from request to hand-over; whether it launched. Whatever it created is
    /// destroyed if it fails.
    pub(super) async fn run(
        &self,
        id: &str,
        launch: &Launch,
        region: Option<RegionCode>,
        origin: &str,
        ephemeral_origin: &str,
    ) -> bool {
        let started = Instant::now();
        let step = |step: Step| {
            let at_ms = started.elapsed().as_millis() as u64;
            launch.progress.send_modify(|p| p.record(step, at_ms));
        };
        step(Step::Requested);
        let budget = Budget::new(self.settings.launch_deadline);
        let outcome = tokio::time::timeout(
            budget.left() + OVERRUN,
            self.launch(id, budget, region, origin, ephemeral_origin, &step),
        )
        .await
        .unwrap_or_else(|_| {
            tracing::error!(launch = id, "a launch overran its deadline; abandoned");
            Err((AppError::MachineDidNotStart, None))
        });
        let outcome = match outcome {
            Ok((handover, machine)) => {
                let machine = machine.hand_over();
                *launch.handover.lock().expect("handover lock") = Some((handover, machine));
                self.metrics.launch("launched");
                self.metrics.phase("total", started.elapsed());
                Ok(())
            }
            Err((error, created)) => {
                if let Some(machine) = created {
                    machine.destroy().await;
                }
                // How long a visitor waited to be told: a phase of its own.
                self.metrics.phase("failed", started.elapsed());
                self.metrics.launch(match error {
                    AppError::CapacityReached { .. } => "capacity",
                    AppError::FlyApiUnavailable => "api_failed",
                    AppError::NoRoomNearby => "no_room",
                    AppError::MachineDidNotStart => "did_not_start",
                    AppError::LauncherMisconfigured => "token_refused",
                    _ => "failed",
                });
                Err(error)
            }
        };
        let launched = outcome.is_ok();
        launch.progress.send_modify(|p| p.outcome = Some(outcome));
        launched
    }

    /// The steps of a launch, within `budget`: the hand-over and the Machine to hand over, or
    /// the error and the Machine to destroy, if any.
    pub(super) async fn launch(
        &self,
        id: &str,
        budget: Budget,
        region: Option<RegionCode>,
        origin: &str,
        ephemeral_origin: &str,
        step: &impl Fn(Step),
    ) -> Result<(Handover, Created), (AppError, Option<Created>)> {
        let image = self.image.clone().ok_or_else(|| {
            tracing::error!("FLY_IMAGE_REF is unset: this launcher cannot launch Machines");
            (AppError::Internal, None)
        })?;
        let secret = OwnerSecret::mint();
        // The warm pool first: a start instead of a create.
        if let Some(region) = region.filter(|r| self.settings.warm_pool.target(*r) > 0) {
            let phase = Instant::now();
            match self.take_warm(region, &secret.hash(), budget).await {
                Some((machine, created)) => {
                    self.metrics.phase("warm", phase.elapsed());
                    tracing::info!(%machine, %region, "launched from the warm pool");
                    step(Step::Warm { region });
                    step(Step::Serving);
                    let handover = Handover {
                        machine,
                        claim_url: format!("{ephemeral_origin}{}", claim_path(machine)),
                        secret: secret.expose().to_owned(),
                    };
                    return Ok((handover, created));
                }
                None => step(Step::NoWarm { region }),
            }
        }
        let readiness = ReadinessKey::mint();
        let launched_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut request = CreateMachineRequest {
            name: None,
            region,
            config: self.spec.visitor(VisitorMachine {
                image: &image,
                launch: id,
                owner: &secret.hash(),
                readiness: &readiness,
                origin,
                launched_at,
            }),
            ..CreateMachineRequest::default()
        };
        let phase = Instant::now();
        let machine = self
            .create_in_a_free_slot(&mut request, budget, step)
            .await
            .map_err(|e| (e, None))?;
        let created = Created::new(&self.api, &self.ephemeral_app, machine.id, &self.destroyed);
        self.metrics.phase("create", phase.elapsed());
        tracing::info!(machine = %machine.id, region = %machine.region, name = %machine.name, "launched");
        step(Step::Created {
            region: machine.region,
        });

        let phase = Instant::now();
        let wait = self.api.wait(
            &self.ephemeral_app,
            machine.id,
            WaitState::Started,
            budget.at_most(Duration::from_secs(30)),
        );
        match budget.bound(wait).await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                return Err((visitor_error(&e, self.settings.max_machines), Some(created)))
            }
            None => return Err((AppError::MachineDidNotStart, Some(created))),
        }
        self.metrics.phase("start", phase.elapsed());
        step(Step::Started);

        let phase = Instant::now();
        if self
            .until_serving(&machine.private_ip, machine.id, &readiness, budget)
            .await
            .is_err()
        {
            return Err((AppError::MachineDidNotStart, Some(created)));
        }
        self.metrics.phase("serving", phase.elapsed());
        step(Step::Serving);
        let handover = Handover {
            machine: machine.id,
            claim_url: format!("{ephemeral_origin}{}", claim_path(machine.id)),
            secret: secret.expose().to_owned(),
        };
        Ok((handover, created))
    }

    /// Creates the Machine under a free slot name; `CapacityReached` when none is.
    ///
    /// A slot is free when neither the tracker's view (up to one poll old) nor this launcher's
    /// own launches in flight hold it; Fly's name check settles the rest, including races with
    /// other launchers. A rate-limited create was not performed: it waits and tries again,
    /// and the visitor sees "waiting for a slot".
    pub(super) async fn create_in_a_free_slot(
        &self,
        request: &mut CreateMachineRequest,
        budget: Budget,
        step: &impl Fn(Step),
    ) -> Result<crate::server::fly_api::Machine, AppError> {
        let cap = self.settings.max_machines;
        let mut tried: Vec<String> = Vec::new();
        let mut regions_tried: Vec<RegionCode> = Vec::new();
        let patience = Instant::now() + budget.at_most(RATE_LIMIT_PATIENCE);
        loop {
            let Some(slot) = self.reserve_slot(&tried) else {
                return Err(AppError::CapacityReached { cap });
            };
            let outcome = loop {
                let queued = self.creates.take(|| step(WAITING));
                if budget.bound(queued).await.is_none() {
                    tracing::warn!("the launch's time ran out waiting for the API's rate limit");
                    break Err(FlyApiError::RateLimited { retry_after: None });
                }
                request.name = Some(slot.name.clone());
                let create = self
                    .api
                    .create_within(&self.ephemeral_app, request, budget.left());
                match create.await {
                    Err(FlyApiError::RateLimited { retry_after }) if Instant::now() < patience => {
                        // Other launchers spent the app's budget: hold back every launch of
                        // this one, not just this launch, then queue again.
                        step(WAITING);
                        self.creates
                            .pause(retry_after.unwrap_or(Duration::from_secs(1)));
                    }
                    Err(FlyApiError::InsufficientCapacity { message }) => {
                        // That region is full: the next nearest to the visitor may not be.
                        let Some(next) = next_region(request.region, &mut regions_tried) else {
                            tracing::warn!(%message, "no capacity in the regions nearest the visitor");
                            break Err(FlyApiError::InsufficientCapacity { message });
                        };
                        tracing::info!(full = ?request.region, next = %next, "no capacity; trying the next nearest region");
                        if let Some(full) = request.region {
                            step(Step::NoRoom { full, next });
                        }
                        request.region = Some(next);
                    }
                    other => break other,
                }
            };
            match outcome {
                Ok(machine) => return Ok(machine),
                Err(FlyApiError::NameTaken { .. }) => tried.push(slot.name.clone()),
                Err(e) => {
                    tracing::warn!(error = %e, "create failed");
                    if e.create_may_have_happened() {
                        sweep_doubtful_create(
                            &self.api,
                            &self.ephemeral_app,
                            request.clone(),
                            &self.destroyed,
                        );
                    }
                    return Err(visitor_error(&e, cap));
                }
            }
        }
    }

    /// Picks and reserves a slot name that looks free and was not `tried`, at random so that
    /// launchers rarely collide.
    pub(super) fn reserve_slot(&self, tried: &[String]) -> Option<SlotHold<'_>> {
        let free: Vec<String> = {
            let alive = self.alive.borrow();
            let reserved = self.reserved.lock().expect("reserved lock");
            let destroyed = self.destroyed.lock().expect("destroyed lock");
            (0..self.settings.max_machines)
                .map(slot_name)
                .filter(|n| {
                    !tried.contains(n)
                        && !reserved.contains(n)
                        && !alive
                            .iter()
                            .any(|m| &m.name == n && !destroyed.contains(&m.id))
                })
                .collect()
        };
        let name = free
            .get(rand::random::<u32>() as usize % free.len().max(1))?
            .clone();
        // Only launches of this launcher reserve, and this one picked among the free just now.
        SlotHold::take(&self.reserved, name)
    }

    /// Probes the new Machine's `/health` over the private network until it answers with its
    /// id and the readiness proof of the challenge.
    pub(super) async fn until_serving(
        &self,
        private_ip: &str,
        machine: MachineId,
        key: &ReadinessKey,
        budget: Budget,
    ) -> Result<(), Unproved> {
        self.until_proved(
            private_ip,
            "/health",
            machine,
            key,
            budget,
            |url, challenge| {
                self.probe
                    .get(url)
                    .header(CHALLENGE_HEADER, challenge.as_str())
            },
        )
        .await
    }

    /// Sends `ask` (built for the Machine's `path` on its private address and a fresh
    /// challenge) until the Machine answers a success with its id and the readiness proof of
    /// that challenge: then it is the Machine created, and it serves. Within `budget`, at most
    /// 20 s; a 409 is a refusal that asking again cannot change.
    pub(super) async fn until_proved(
        &self,
        private_ip: &str,
        path: &str,
        machine: MachineId,
        key: &ReadinessKey,
        budget: Budget,
        ask: impl Fn(&str, &Challenge) -> reqwest::RequestBuilder,
    ) -> Result<(), Unproved> {
        let ip: IpAddr = private_ip.parse().map_err(|_| {
            tracing::warn!(private_ip, "the Machine has no usable private address");
            Unproved::Silent
        })?;
        let url = format!("http://{}{path}", SocketAddr::new(ip, MACHINE_PORT));
        let deadline = Instant::now() + budget.at_most(Duration::from_secs(20));
        let mut impostor_seen = false;
        while Instant::now() < deadline {
            let challenge = Challenge::mint();
            if let Ok(response) = ask(&url, &challenge).send().await {
                let status = response.status();
                if status == http::StatusCode::CONFLICT {
                    tracing::warn!(%url, %machine, "the Machine refused: armed by someone else");
                    return Err(Unproved::Refused);
                }
                if status.is_success() {
                    if readiness::answered_by(response.headers(), machine, key, &challenge) {
                        return Ok(());
                    }
                    if !impostor_seen {
                        impostor_seen = true;
                        tracing::warn!(%url, %machine, "something else answers at the Machine's address");
                    }
                }
            }
            // The Machine's process may not listen yet: a short pause, then a fresh challenge.
            // Short, as the arming of a pooled Machine asks all through its boot and the
            // hand-over waits for the first answer after it (a refused connection on the
            // private network costs next to nothing).
            tokio::time::sleep(PROBE_PAUSE).await;
        }
        tracing::warn!(%url, "the Machine never answered with its proof");
        Err(Unproved::Silent)
    }
}

/// Between two asks of a Machine that did not answer with its proof.
const PROBE_PAUSE: Duration = Duration::from_millis(5);

/// Why a Machine's proof never came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unproved {
    /// It answered 409: it is armed for someone else, so it is another launch's Machine.
    Refused,
    /// It never answered with the proof within the budget (or had no address to ask).
    Silent,
}

/// How many regions a launch tries, nearest to the visitor first, when Fly has no room.
const CAPACITY_REGIONS: usize = 3;

/// After `full` had no room: the region to try next, the nearest to the first region tried
/// that was not tried yet; `None` once [`CAPACITY_REGIONS`] were, or without a region to
/// measure from (Fly chose it).
fn next_region(full: Option<RegionCode>, tried: &mut Vec<RegionCode>) -> Option<RegionCode> {
    let full = full?;
    if !tried.contains(&full) {
        tried.push(full);
    }
    if tried.len() >= CAPACITY_REGIONS {
        return None;
    }
    let next = crate::fly::nearest_regions(tried[0])
        .into_iter()
        .find(|r| !tried.contains(r))?;
    Some(next)
}

/// What a visitor is told about a Machines API failure.
fn visitor_error(error: &FlyApiError, cap: u32) -> AppError {
    match error {
        FlyApiError::NameTaken { .. } => AppError::CapacityReached { cap },
        FlyApiError::InsufficientCapacity { .. } => AppError::NoRoomNearby,
        FlyApiError::WaitTimedOut => AppError::MachineDidNotStart,
        // The tracker says so to the operator, once.
        FlyApiError::Unauthorized { .. } => AppError::LauncherMisconfigured,
        _ => AppError::FlyApiUnavailable,
    }
}

fn slot_name(n: u32) -> String {
    format!("flyby-slot-{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_region_sends_the_launch_to_the_next_nearest_twice_at_most() {
        let code = |c: &str| RegionCode::parse(c).unwrap();
        let mut tried = Vec::new();
        let first = next_region(Some(code("ams")), &mut tried).unwrap();
        // Amsterdam's nearest other regions are London, Paris, Frankfurt (a few hundred km).
        assert!(["lhr", "cdg", "fra"].contains(&first.as_str()), "{first}");
        let second = next_region(Some(first), &mut tried).unwrap();
        assert!(second != first && second.as_str() != "ams");
        assert!(
            crate::fly::distance_km(code("ams"), second).unwrap() < 1000.0,
            "still near the visitor: {second}"
        );
        assert_eq!(
            next_region(Some(second), &mut tried),
            None,
            "three regions at most"
        );
        // Without a region to start from (Fly chose one), there is no nearest to go to.
        assert_eq!(next_region(None, &mut Vec::new()), None);
    }
}
