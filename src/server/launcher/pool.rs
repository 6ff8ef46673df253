//! The warm pool: per region, a few Machines of the visitors' app made before any visitor asks,
//! so that a click *starts* one (Fly: a few hundred ms) instead of *creating* one (seconds).
//!
//! - A pooled Machine is created with `skip_launch`: Fly prepares its image and root file
//!   system and leaves it `created`, never booted, costing its root file system only. Its
//!   config holds no owner (none exists yet) but a key of its own (`FLYBY_READINESS_KEY`).
//! - A click takes one ([`Launcher::take_warm`]): a start of a pooled Machine in the launch's
//!   region that must find it `created` or `stopped` (Fly refuses to start a Machine that is
//!   starting or started: of several launchers racing for it, one starts it, the others get a
//!   409 and try another; a Machine someone started by hand is no longer in the pool). No
//!   lease is taken first: it would put one more round trip to the API's region on the
//!   visitor's wait. Then the launcher arms it with the owner's hash over the private network
//!   (`server::arming`), which is also its readiness proof; a Machine arms once, so even two
//!   launchers that both believed they started it cannot both hand it over. Its answer is the
//!   hand-over's go while the app's concierge runs (`concierge`: the claim lands there while
//!   fly-proxy does not know the new Machine yet); without one, the hand-over also waits for
//!   the API's `wait`. A taken Machine is destroyed at the end of its show, as any other; it
//!   never returns to the pool.
//! - One launcher refills ([`refill_leader`]: the first of the started launchers, so a dead
//!   one's duty passes on with the next list), after each tracker poll, one Machine per region
//!   that lacks at most, within what its share of Fly's create budget has free and under the
//!   cap (pooled Machines take slots: capacity
//!   is spend). A pooled Machine of another image (a deploy happened) or older than
//!   `FLYBY_POOL_MAX_AGE_SECS` is destroyed under its lease (a take's start meanwhile is
//!   refused) and replaced; a destroy without `force` cannot end one a take just started.

use super::{
    holds::{Budget, Created},
    launch::Unproved,
    *,
};
use crate::server::{
    arming::{self, ARM_PATH, ARM_PROOF_HEADER, OWNER_HASH_HEADER},
    fly_api::Machine,
    ownership::OwnerHash,
    readiness::{ReadinessKey, CHALLENGE_HEADER},
};
use std::collections::BTreeMap;

/// The metadata that marks a pooled Machine (its value: `warm`).
pub const POOL_METADATA: &str = "flyby_pool";
/// How long a retiring launcher holds a pooled Machine's lease: enough for its destroy, short
/// enough that a launcher dying with it blocks nothing for long.
const RETIRE_LEASE: Duration = Duration::from_secs(10);

/// `FLYBY_WARM_POOL`: how many pooled Machines each region keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WarmPool {
    /// Regions named in the variable.
    by_region: BTreeMap<RegionCode, u32>,
    /// `*=<n>`: every other current Fly region.
    rest: u32,
}

impl WarmPool {
    /// `ams=2,syd=1,*=0` (empty: no pool). Each code must be a current Fly region, named once;
    /// each count 0 to 100.
    pub fn parse(s: &str) -> Option<Self> {
        let mut pool = WarmPool::default();
        let mut rest = None;
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (code, count) = pair.split_once('=')?;
            let count: u32 = count.trim().parse().ok().filter(|n| *n <= 100)?;
            match code.trim() {
                "*" if rest.is_none() => rest = Some(count),
                "*" => return None,
                code => {
                    let region = RegionCode::parse(code)
                        .ok()
                        .filter(|r| r.region().is_some())?;
                    if pool.by_region.insert(region, count).is_some() {
                        return None;
                    }
                }
            }
        }
        pool.rest = rest.unwrap_or(0);
        Some(pool)
    }

    /// How many pooled Machines `region` keeps.
    pub fn target(&self, region: RegionCode) -> u32 {
        match self.by_region.get(&region) {
            Some(n) => *n,
            None if region.region().is_some() => self.rest,
            None => 0,
        }
    }

    /// Every region that keeps some, with how many.
    pub fn regions(&self) -> Vec<(RegionCode, u32)> {
        crate::fly::REGIONS
            .iter()
            .filter_map(|r| RegionCode::parse(r.code).ok())
            .map(|r| (r, self.target(r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// All the pool's Machines: they count against `FLYBY_MAX_MACHINES`.
    pub fn total(&self) -> u32 {
        self.regions().iter().map(|(_, n)| n).sum()
    }
}

/// What the tracker keeps of a pooled Machine that can be taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Warm {
    /// Where the launcher arms it.
    pub private_ip: String,
    /// What arms it: from its config, which only the org's token can read.
    pub key: ReadinessKey,
    /// The image it was made of: one of another image is replaced.
    pub image: String,
    /// When Fly created it, seconds since the epoch: one too old is replaced.
    pub created: u64,
}

impl Warm {
    /// A Machine of the pool that was never started (or was stopped): takeable.
    pub fn of(machine: &Machine) -> Option<Warm> {
        if machine.metadata().get(POOL_METADATA).map(String::as_str) != Some("warm")
            || !matches!(machine.state, MachineState::Created | MachineState::Stopped)
        {
            return None;
        }
        let config = &machine.config;
        Some(Warm {
            private_ip: machine.private_ip.clone(),
            key: ReadinessKey::parse(config["env"]["FLYBY_READINESS_KEY"].as_str()?).ok()?,
            image: config["image"].as_str()?.to_owned(),
            created: machine
                .created_at?
                .duration_since(UNIX_EPOCH)
                .ok()?
                .as_secs(),
        })
    }
}

/// The launcher that refills the pool: the first of the started launchers (the list is
/// sorted), or this one when it knows none (outside Fly).
pub fn refill_leader(launchers: &[MachineId], me: Option<MachineId>) -> bool {
    match (launchers.first(), me) {
        (Some(first), Some(me)) => *first == me,
        (None, _) | (_, None) => true,
    }
}

/// What the refill does after a list: which pooled Machines to retire (another image, too
/// old), and which regions need one more. Pure: the tracker's view in, decisions out. Creates
/// stop at the cap (`alive` counts every Machine holding a slot, pooled ones included).
pub fn refill_plan(
    pool: &WarmPool,
    alive: &[Tracked],
    image: &str,
    now: u64,
    max_age: Duration,
    cap: u32,
) -> (Vec<MachineId>, Vec<RegionCode>) {
    let stale = |w: &Warm| w.image != image || now >= w.created + max_age.as_secs();
    let retire: Vec<MachineId> = alive
        .iter()
        .filter(|m| m.warm.as_ref().is_some_and(stale))
        .map(|m| m.id)
        .collect();
    let mut room = (cap as usize).saturating_sub(alive.len());
    let mut create = Vec::new();
    for (region, target) in pool.regions() {
        let fresh = alive
            .iter()
            .filter(|m| m.region == region && m.warm.as_ref().is_some_and(|w| !stale(w)))
            .count();
        if fresh < target as usize && room > 0 {
            create.push(region);
            room -= 1;
        }
    }
    (retire, create)
}

impl Launcher {
    /// Takes a pooled Machine in `region` for the owner of `owner`: started and armed, ready
    /// for the hand-over. `None` when none could be taken (none left, all raced away, or the
    /// one taken never armed: destroyed then); the launch creates one instead.
    pub(super) async fn take_warm(
        &self,
        region: RegionCode,
        owner: &OwnerHash,
        budget: Budget,
    ) -> Option<(MachineId, Created)> {
        let mut candidates: Vec<(MachineId, Warm)> = self
            .alive
            .borrow()
            .iter()
            .filter(|m| m.region == region)
            .filter_map(|m| Some((m.id, m.warm.clone()?)))
            .filter(|(_, w)| Some(&w.image) == self.image.as_ref())
            .collect();
        // Launchers racing for the same pool start from different ends of it.
        let spin = rand::random::<u32>() as usize % candidates.len().max(1);
        candidates.rotate_left(spin);
        // Every one: a Machine lost to another launcher is one quick 409.
        for (id, warm) in candidates {
            // No lease first: that would be one more round trip to the API's region on the
            // visitor's wait. Fly's start is the first arbiter (it refuses a Machine that is
            // starting or started, or leased by a retiring launcher), the Machine's single
            // arming the last (it arms once and refuses every later arming).
            let started = budget.bound(self.api.start(&self.ephemeral_app, id));
            match started.await {
                Some(Ok(previous)) if previous == "created" || previous == "stopped" => {}
                Some(Ok(previous)) => {
                    // Started by someone else meanwhile: not the pool's any more.
                    tracing::info!(machine = %id, previous, "a pooled Machine was already started");
                    continue;
                }
                Some(Err(FlyApiError::Api { status: 409, .. })) => {
                    tracing::info!(machine = %id, "a pooled Machine was already taken");
                    continue;
                }
                // Others raced for it so often that Fly limits its starts for a moment.
                Some(Err(FlyApiError::RateLimited { .. })) => continue,
                Some(Err(e)) => {
                    tracing::warn!(machine = %id, error = %e, "could not start a pooled Machine");
                    continue;
                }
                None => return None,
            }
            // From here it is this launch's: destroyed unless handed over.
            let created = Created::new(&self.api, &self.ephemeral_app, id, &self.destroyed);
            // The arming goes as soon as the start is answered: it reaches the Machine when its
            // process listens, and only that Machine can answer it. Its answer is enough for the
            // hand-over when the app's concierge runs: the owner's claim lands there if fly-proxy
            // does not know the new Machine yet, and is replayed to it (the proxy retries a
            // replay's target until it knows it). Without a running concierge the claim could
            // find no Machine at all (a 503), so the hand-over also waits for the API to say
            // started, half a round trip to the API's region later, as a create's does.
            let landing = self.concierges.serving();
            let started = async {
                if landing {
                    return Ok(());
                }
                let wait = self.api.wait(
                    &self.ephemeral_app,
                    id,
                    WaitState::Started,
                    budget.at_most(Duration::from_secs(30)),
                );
                // Whichever fails first ends the other: `None` is a Machine that never started.
                match budget.bound(wait).await {
                    Some(Ok(())) => Ok(()),
                    _ => Err(None),
                }
            };
            let armed = async {
                self.until_armed(&warm, id, owner, budget)
                    .await
                    .map_err(Some)
            };
            match tokio::try_join!(started, armed) {
                Ok(_) => return Some((id, created)),
                // Armed by another launcher that started it too: its Machine, not this one's.
                Err(Some(Unproved::Refused)) => {
                    created.disown();
                    continue;
                }
                Err(None) => {
                    tracing::warn!(machine = %id, "a pooled Machine never reached started")
                }
                Err(Some(Unproved::Silent)) => {}
            }
            created.destroy().await;
            return None;
        }
        None
    }

    /// How many pooled Machines this launcher can see waiting (its `/health` says, so that a
    /// test knows when a pool is ready to take from).
    pub fn warm_waiting(&self) -> usize {
        self.alive
            .borrow()
            .iter()
            .filter(|m| m.warm.is_some())
            .count()
    }

    /// Arms the started Machine with the owner's hash over the private network, until it
    /// answers with its id and the readiness proof of the challenge (then it also serves).
    async fn until_armed(
        &self,
        warm: &Warm,
        machine: MachineId,
        owner: &OwnerHash,
        budget: Budget,
    ) -> Result<(), Unproved> {
        self.until_proved(
            &warm.private_ip,
            ARM_PATH,
            machine,
            &warm.key,
            budget,
            |url, challenge| {
                self.probe
                    .post(url)
                    .header(CHALLENGE_HEADER, challenge.as_str())
                    .header(OWNER_HASH_HEADER, owner.to_hex())
                    .header(
                        ARM_PROOF_HEADER,
                        arming::arm_proof(&warm.key, challenge, owner),
                    )
            },
        )
        .await
    }

    /// After a list: if this launcher is the one that refills, retires stale pooled Machines
    /// and creates what the pool lacks (one create a poll, within the create budget).
    pub(super) fn refill(self: &Arc<Self>, alive: &[Tracked]) {
        let pool = &self.settings.warm_pool;
        let Some(image) = self.image.clone() else {
            return;
        };
        // Its Machines' way back: the launcher's public origin (config, or its first visitor).
        let Some(origin) = self.origin.lock().expect("origin lock").clone() else {
            return;
        };
        if pool.total() == 0 && !alive.iter().any(|m| m.warm.is_some()) {
            return;
        }
        if !refill_leader(&self.launchers.borrow(), self.spec.launcher) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let in_flight = self.reserved.lock().expect("reserved lock").len();
        let cap = self.settings.max_machines.saturating_sub(in_flight as u32);
        let (retire, create) =
            refill_plan(pool, alive, &image, now, self.settings.pool_max_age, cap);
        for id in retire {
            let launcher = self.clone();
            tokio::spawn(async move { launcher.retire(id).await });
        }
        for region in create {
            // Launches queue on the same budget; the pool takes only what is free now.
            if self.creates.try_take().is_err() {
                break;
            }
            let (launcher, image, origin) = (self.clone(), image.clone(), origin.clone());
            tokio::spawn(async move { launcher.create_warm(region, image, origin).await });
        }
    }

    /// Destroys a stale pooled Machine, under its lease so no launch takes it meanwhile.
    async fn retire(&self, id: MachineId) {
        let lease = self.api.acquire_lease(
            &self.ephemeral_app,
            id,
            RETIRE_LEASE,
            "flyby: retiring from the warm pool",
        );
        if let Ok(Some(lease)) = lease.await {
            match self
                .api
                .delete_leased(&self.ephemeral_app, id, &lease)
                .await
            {
                Ok(_) => tracing::info!(machine = %id, "retired a stale pooled Machine"),
                Err(e) => {
                    tracing::warn!(machine = %id, error = %e, "could not retire a pooled Machine")
                }
            }
        }
    }

    /// Creates one pooled Machine in `region`, under a free slot.
    async fn create_warm(&self, region: RegionCode, image: String, origin: String) {
        let Some(slot) = self.reserve_slot(&[]) else {
            return;
        };
        let key = ReadinessKey::mint();
        let request = CreateMachineRequest {
            name: Some(slot.name.clone()),
            region: Some(region),
            skip_launch: true,
            config: self.spec.pooled(&image, &key, &origin),
            ..CreateMachineRequest::default()
        };
        match self.api.create(&self.ephemeral_app, &request).await {
            Ok(machine) => {
                tracing::info!(machine = %machine.id, %region, "a warm Machine joined the pool");
            }
            Err(e) => tracing::warn!(%region, error = %e, "could not add to the warm pool"),
        }
        // The slot is free again for this launcher's launches once the tracker lists it.
        drop(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> RegionCode {
        RegionCode::parse(s).unwrap()
    }

    #[test]
    fn the_pool_variable_names_current_regions_once_each() {
        let pool = WarmPool::parse("ams=2, syd=1,*=0").unwrap();
        assert_eq!((pool.target(code("ams")), pool.target(code("syd"))), (2, 1));
        assert_eq!(pool.target(code("ord")), 0);
        assert_eq!(pool.total(), 3);
        let everywhere = WarmPool::parse("*=1,ams=0").unwrap();
        assert_eq!(everywhere.target(code("ord")), 1);
        assert_eq!(everywhere.target(code("ams")), 0);
        assert_eq!(everywhere.total(), crate::fly::REGIONS.len() as u32 - 1);
        // A code Fly does not have (or retired) never gets a Machine from `*`.
        assert_eq!(everywhere.target(code("zzz")), 0);
        assert_eq!(WarmPool::parse(""), Some(WarmPool::default()));
        for bad in [
            "ams",
            "ams=x",
            "ams=-1",
            "ams=101",
            "zzz=1",
            "AMS=1",
            "ams=1,ams=2",
            "*=1,*=2",
            "=1",
        ] {
            assert_eq!(WarmPool::parse(bad), None, "{bad}");
        }
    }

    fn tracked(id: u8, region: &str, warm: Option<(&str, u64)>) -> Tracked {
        Tracked {
            id: MachineId::parse(&format!("{id:014x}")).unwrap(),
            name: format!("flyby-slot-{id}"),
            region: code(region),
            born: None,
            warm: warm.map(|(image, created)| Warm {
                private_ip: "127.0.0.1".into(),
                key: ReadinessKey::mint(),
                image: image.into(),
                created,
            }),
        }
    }

    #[test]
    fn the_refill_replaces_stale_machines_and_stops_at_the_cap() {
        let pool = WarmPool::parse("ams=2,syd=1").unwrap();
        let day = Duration::from_secs(86_400);
        let now = 1_000_000;
        // Empty: one for each region that lacks, nearest-first order does not matter.
        let (retire, create) = refill_plan(&pool, &[], "img:2", now, day, 8);
        assert!(retire.is_empty());
        assert_eq!(create, vec![code("ams"), code("syd")]);
        // Full and fresh: nothing to do; a visitor's Machine in ams is not the pool's.
        let full = [
            tracked(1, "ams", Some(("img:2", now))),
            tracked(2, "ams", Some(("img:2", now))),
            tracked(3, "syd", Some(("img:2", now))),
            tracked(4, "ams", None),
        ];
        assert_eq!(
            refill_plan(&pool, &full, "img:2", now, day, 8),
            (vec![], vec![])
        );
        // A deploy (another image) and age retire, and count as missing.
        let stale = [
            tracked(1, "ams", Some(("img:1", now))),
            tracked(2, "ams", Some(("img:2", now - day.as_secs()))),
            tracked(3, "syd", Some(("img:2", now))),
        ];
        let (retire, create) = refill_plan(&pool, &stale, "img:2", now, day, 8);
        assert_eq!(retire, vec![stale[0].id, stale[1].id]);
        assert_eq!(create, vec![code("ams")]);
        // At the cap (pooled Machines hold slots too), nothing is created.
        let (_, create) = refill_plan(&pool, &full[..2], "img:2", now, day, 2);
        assert!(create.is_empty());
        let (_, create) = refill_plan(&pool, &full[..1], "img:2", now, day, 2);
        assert_eq!(create, vec![code("ams")]);
    }

    #[test]
    fn one_launcher_refills_the_first_listed_or_a_lone_one() {
        let ids: Vec<MachineId> = (1..=3)
            .map(|i| MachineId::parse(&format!("{i:014x}")).unwrap())
            .collect();
        assert!(refill_leader(&ids, Some(ids[0])));
        assert!(!refill_leader(&ids, Some(ids[1])));
        assert!(refill_leader(&[], Some(ids[1])));
        assert!(refill_leader(&ids, None));
    }
}
