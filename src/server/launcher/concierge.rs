//! The visitors' app's concierge: a Machine of flyby that belongs to nobody and never ends, so
//! that a visitor coming back to a Machine that is gone reaches flyby code (which sends them to
//! the launcher's "gone" page) even when no visitor's Machine is left to replay from. For the
//! same reason it is where a hand-over lands while fly-proxy does not know its new Machine yet
//! ("a short delay before all proxy nodes recognize that it is running", Fly docs,
//! reference/fly-proxy-autostop-autostart): an app with no Machine the proxy knows answers a
//! request with an error, while a request that lands on the concierge is replayed to the new
//! Machine, which the proxy retries until it knows it. So the visitors' app has one from its
//! first launch, or from the start when a warm pool fills it before any visitor.
//!
//! It is always running: Fly calls warm starts "not well-defined … for apps with multiple
//! Machines" (machines/api/machines-resource), so nothing here depends on fly-proxy waking it.
//! Its restart policy is `on-failure`, what Fly recommends for Machines with services
//! (machines/guides-examples/machine-restart-policy). It runs the launcher's image, which
//! changes with every deploy, so each image has its own concierge (the name says which): the
//! launchers of a new deploy create theirs, then retire the older ones. [`plan`] is that whole
//! policy, a pure function of one list of the app's Machines; the tracker runs it after each
//! poll.

use super::Launcher;
use crate::{
    fly::MachineId,
    server::fly_api::{CreateMachineRequest, FlyApiError, Machine, MachineState},
};
use sha2::{Digest, Sha256};
use std::{
    sync::{atomic::AtomicBool, Arc, Mutex},
    time::SystemTime,
};

/// Metadata that marks the visitors' app's concierges.
pub const CONCIERGE_ROLE: (&str, &str) = ("flyby", "concierge");
/// The prefix of every concierge's name; the rest names its image.
pub const NAME_PREFIX: &str = "flyby-concierge-";

/// The concierge of `image`: the same name from every launcher of one deploy, so that Fly's
/// unique names let only one of them create it.
pub fn name(image: &str) -> String {
    let digest = Sha256::digest(image.as_bytes());
    format!("{NAME_PREFIX}{}", &hex::encode(digest)[..10])
}

/// A concierge as one list of the app showed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub id: MachineId,
    pub image: String,
    pub state: MachineState,
    /// When it was created, and its ULID `instance_id`, which orders two created in the same
    /// second (Fly's times are to the second; a ULID is to the millisecond).
    pub born: (Option<SystemTime>, String),
}

impl Seen {
    /// The concierges among `machines` that are not gone.
    pub fn among(machines: &[Machine]) -> Vec<Seen> {
        machines
            .iter()
            .filter(|m| !matches!(m.state, MachineState::Destroyed | MachineState::Destroying))
            .filter(|m| {
                m.metadata().get(CONCIERGE_ROLE.0).map(String::as_str) == Some(CONCIERGE_ROLE.1)
            })
            .map(|m| Seen {
                id: m.id,
                image: m
                    .config
                    .get("image")
                    .and_then(|i| i.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                state: m.state.clone(),
                born: (m.created_at, m.instance_id.clone()),
            })
            .collect()
    }
}

/// What to do about the concierges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the concierge of this launcher's image.
    Create,
    /// Start it: it is there but not running (it must not wait for fly-proxy to wake it).
    Start(MachineId),
    /// Destroy a concierge of an older image, now that this image's one exists.
    Retire(MachineId),
}

/// The concierge policy for a launcher running `image`, from the concierges a list showed.
/// A concierge of another image is retired only once this image's exists (never a moment
/// without one) and only if it is older than this image's: while a deploy rolls, the old
/// launchers leave the new concierge alone, and the new ones retire the old. Without a
/// creation time to compare, nothing is retired: a spare concierge until the next deploy.
pub fn plan(seen: &[Seen], image: &str) -> Vec<Action> {
    let Some(mine) = seen
        .iter()
        .filter(|c| c.image == image)
        .min_by_key(|c| &c.born)
    else {
        return vec![Action::Create];
    };
    let mut actions = Vec::new();
    if matches!(mine.state, MachineState::Stopped | MachineState::Created) {
        actions.push(Action::Start(mine.id));
    }
    if mine.born.0.is_none() {
        return actions;
    }
    actions.extend(
        seen.iter()
            .filter(|c| c.image != image && c.born.0.is_some() && c.born < mine.born)
            .map(|c| Action::Retire(c.id)),
    );
    actions
}

/// What the launcher keeps for its concierge work.
#[derive(Default)]
pub struct Concierges {
    /// The concierges of the last list.
    seen: Mutex<Vec<Seen>>,
    /// The visitors' app has Machines of ours, or is about to: from the first launch, or from
    /// the start when a warm pool fills it before any visitor comes.
    wanted: AtomicBool,
    /// An action is under way here: the next list decides again once it is done.
    busy: AtomicBool,
}

impl Concierges {
    /// Concierges wanted from the start (a warm pool), or only once a launch wants one.
    pub fn new(wanted: bool) -> Self {
        Concierges {
            wanted: AtomicBool::new(wanted),
            ..Concierges::default()
        }
    }

    pub fn saw(&self, seen: Vec<Seen>) {
        *self.seen.lock().expect("concierges lock") = seen;
    }

    /// From now on the visitors' app has a concierge; true the first time.
    pub fn want(&self) -> bool {
        !self.wanted.swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Whether the last list showed a concierge running: a Machine of the visitors' app that
    /// fly-proxy has known for a while, where a request for a Machine it does not know yet
    /// lands and is replayed from (the proxy retries a replay's target until it knows it).
    pub fn serving(&self) -> bool {
        self.seen
            .lock()
            .expect("concierges lock")
            .iter()
            .any(|c| c.state == MachineState::Started)
    }
}

impl Launcher {
    /// Does what [`plan`] says about the last list's concierges, one action at a time, in the
    /// background. Nothing until one is wanted and this launcher knows its image and its
    /// public origin.
    pub(super) fn tend_concierges(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if !self.concierges.wanted.load(Ordering::Acquire) {
            return;
        }
        let Some(image) = self.image.clone() else {
            return;
        };
        let Some(origin) = self.origin.lock().expect("origin lock").clone() else {
            return;
        };
        let actions = plan(
            &self.concierges.seen.lock().expect("concierges lock"),
            &image,
        );
        if actions.is_empty() || self.concierges.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            for action in actions {
                this.act(action, &image, &origin).await;
            }
            this.concierges.busy.store(false, Ordering::Release);
        });
    }

    async fn act(&self, action: Action, image: &str, origin: &str) {
        let app = &self.ephemeral_app;
        match action {
            Action::Create => {
                self.creates.take(|| ()).await;
                let request = CreateMachineRequest {
                    name: Some(name(image)),
                    config: self.spec.concierge(image, origin),
                    ..CreateMachineRequest::default()
                };
                match self.api.create(app, &request).await {
                    Ok(machine) => tracing::info!(machine = %machine.id, "created the concierge"),
                    // Another launcher of this deploy was first: its concierge is ours.
                    Err(FlyApiError::NameTaken { .. }) => {}
                    Err(e) => tracing::warn!(error = %e, "could not create the concierge"),
                }
            }
            Action::Start(id) => match self.api.start(app, id).await {
                Ok(_) => tracing::info!(machine = %id, "started the concierge"),
                Err(e) => {
                    tracing::warn!(machine = %id, error = %e, "could not start the concierge")
                }
            },
            Action::Retire(id) => match self.api.delete(app, id, true).await.map(drop) {
                Ok(()) => tracing::info!(machine = %id, "retired a concierge of an older image"),
                Err(e) => tracing::warn!(machine = %id, error = %e, "could not retire a concierge"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const OLD: &str = "registry.fly.io/flyby:deployment-01OLD";
    const NEW: &str = "registry.fly.io/flyby:deployment-02NEW";

    fn id(n: u8) -> MachineId {
        MachineId::parse(&format!("{n:014x}")).unwrap()
    }

    fn seen(n: u8, image: &str, state: MachineState, age_secs: u64) -> Seen {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age_secs);
        Seen {
            id: id(n),
            image: image.to_owned(),
            state,
            born: (Some(at), format!("01J{n:023}")),
        }
    }

    #[test]
    fn each_image_has_its_own_name_the_same_from_every_launcher() {
        assert_eq!(name(NEW), name(NEW));
        assert_ne!(name(NEW), name(OLD));
        assert!(name(NEW).starts_with(NAME_PREFIX));
        // A Fly Machine name: lowercase letters, digits and dashes.
        assert!(name(NEW)
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    }

    #[test]
    fn none_of_this_image_is_created_and_nothing_is_retired_before() {
        assert_eq!(plan(&[], NEW), vec![Action::Create]);
        let old = seen(1, OLD, MachineState::Started, 600);
        assert_eq!(plan(&[old], NEW), vec![Action::Create]);
    }

    #[test]
    fn once_this_images_concierge_exists_older_ones_are_retired() {
        let old = seen(1, OLD, MachineState::Started, 600);
        let new = seen(2, NEW, MachineState::Started, 5);
        assert_eq!(
            plan(&[old.clone(), new.clone()], NEW),
            vec![Action::Retire(id(1))]
        );
        // The old deploy's launchers, still rolling, leave the newer concierge alone.
        assert_eq!(plan(&[old, new], OLD), vec![]);
    }

    #[test]
    fn a_concierge_that_is_not_running_is_started_not_left_to_the_proxy() {
        for state in [MachineState::Stopped, MachineState::Created] {
            let mine = seen(2, NEW, state.clone(), 5);
            assert_eq!(plan(&[mine], NEW), vec![Action::Start(id(2))], "{state:?}");
        }
        for state in [MachineState::Started, MachineState::Starting] {
            let mine = seen(2, NEW, state.clone(), 5);
            assert_eq!(plan(&[mine], NEW), vec![], "{state:?}");
        }
    }

    #[test]
    fn of_two_created_in_the_same_second_the_instance_ulid_tells_the_older() {
        // Same second; the ULIDs (…01 before …02) were minted in that order.
        let a = seen(1, OLD, MachineState::Started, 5);
        let b = seen(2, NEW, MachineState::Started, 5);
        assert_eq!(
            plan(&[a.clone(), b.clone()], NEW),
            vec![Action::Retire(id(1))]
        );
        assert_eq!(plan(&[a, b], OLD), vec![]);
    }

    #[test]
    fn without_creation_times_nothing_is_retired() {
        let mut old = seen(1, OLD, MachineState::Started, 600);
        let mut new = seen(2, NEW, MachineState::Started, 5);
        new.born.0 = None;
        assert_eq!(plan(&[old.clone(), new.clone()], NEW), vec![]);
        old.born.0 = None;
        new.born.0 = Some(SystemTime::UNIX_EPOCH);
        assert_eq!(plan(&[old, new], NEW), vec![]);
    }
}
