//! What a launch holds and must give back however it ends: the time it may still spend, the
//! slot name of its create in flight, the Machine it created until it is handed over.
//!
//! A launch is a future, and a future can stop anywhere: at its deadline, in a panic, when its
//! task is aborted. What it holds is given back by `Drop`, not by code at its end, so no such
//! stop loses one of the cap's slots or leaves a Machine nobody will destroy.

use crate::{
    fly::MachineId,
    server::fly_api::{CreateMachineRequest, FlyApi},
};
use std::{
    collections::HashSet,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;

/// What is left of a launch's time (`FLYBY_LAUNCH_SECS` from the click). Every wait of a
/// launch takes at most what is left, so a launch ends by its deadline by itself, and its
/// failure path (destroying what it created) still runs.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    deadline: Instant,
}

impl Budget {
    pub fn new(total: Duration) -> Self {
        Budget {
            deadline: Instant::now() + total,
        }
    }

    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// `wait`, or what is left when that is less.
    pub fn at_most(&self, wait: Duration) -> Duration {
        wait.min(self.left())
    }

    /// Runs `step` for at most what is left; `None` when the deadline came first. Only for
    /// steps that may be abandoned halfway (they change nothing, like a wait).
    pub async fn bound<T>(&self, step: impl Future<Output = T>) -> Option<T> {
        tokio::time::timeout(self.left(), step).await.ok()
    }
}

/// A slot name this launcher holds for a create in flight (the tracker cannot see it yet),
/// given back when dropped, whichever way the create ends.
pub struct SlotHold<'a> {
    /// The launcher's names in flight, this one among them.
    reserved: &'a Mutex<HashSet<String>>,
    pub name: String,
}

impl<'a> SlotHold<'a> {
    /// Holds `name`; `None` when this launcher already does.
    pub fn take(reserved: &'a Mutex<HashSet<String>>, name: String) -> Option<Self> {
        reserved
            .lock()
            .expect("reserved lock")
            .insert(name.clone())
            .then_some(SlotHold { reserved, name })
    }
}

impl Drop for SlotHold<'_> {
    fn drop(&mut self) {
        self.reserved
            .lock()
            .expect("reserved lock")
            .remove(&self.name);
    }
}

/// A Machine a launch created and has not handed over, destroyed when dropped: a launch that
/// fails, panics or is abandoned leaves nothing behind. Its failure path awaits
/// [`Created::destroy`], so that the visitor hears of the failure once the Machine is gone.
pub struct Created {
    api: FlyApi,
    /// The visitors' app.
    app: String,
    /// `None` once handed over or destroyed.
    id: Option<MachineId>,
    /// Where a destroyed Machine is noted, so that its slot is free at once for this
    /// launcher, not only once the tracker's next list no longer shows it.
    destroyed: Destroyed,
}

/// Machines this launcher destroyed that its tracker may still list.
pub type Destroyed = Arc<Mutex<HashSet<MachineId>>>;

impl Created {
    pub fn new(api: &FlyApi, app: &str, id: MachineId, destroyed: &Destroyed) -> Self {
        Created {
            api: api.clone(),
            app: app.to_owned(),
            id: Some(id),
            destroyed: destroyed.clone(),
        }
    }

    /// The visitor has it now: from here on it ends by itself (claim window, show, TTL).
    pub fn hand_over(mut self) -> MachineId {
        self.id
            .take()
            .expect("a Created holds its Machine until handed over")
    }

    /// Lets the Machine go without destroying it: it turned out to be someone else's.
    pub fn disown(mut self) {
        self.id = None;
    }

    pub async fn destroy(mut self) {
        if let Some(id) = self.id.take() {
            destroy(&self.api, &self.app, id, &self.destroyed).await;
        }
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let (api, app) = (self.api.clone(), std::mem::take(&mut self.app));
        let destroyed = self.destroyed.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { destroy(&api, &app, id, &destroyed).await });
            }
            Err(_) => {
                tracing::warn!(machine = %id, "abandoned outside a runtime; the reaper will destroy it")
            }
        }
    }
}

/// After a create that failed in a way that may have created the Machine anyway (a timeout,
/// a 5xx), looks for it a few times while Fly may still be performing it, and destroys it if
/// it is there. In the background: the visitor is not kept waiting for a Machine that most
/// likely does not exist, and the Machine's own claim window and the reaper stay behind it.
pub fn sweep_doubtful_create(
    api: &FlyApi,
    app: &str,
    request: CreateMachineRequest,
    destroyed: &Destroyed,
) {
    let (api, app, destroyed) = (api.clone(), app.to_owned(), destroyed.clone());
    tokio::spawn(async move {
        for pause in [1, 4, 10].map(Duration::from_secs) {
            tokio::time::sleep(pause).await;
            if let Ok(Some(id)) = api.find_created(&app, &request).await {
                destroy(&api, &app, id, &destroyed).await;
                return;
            }
        }
    });
}

/// Destroys a Machine a launch created; a failure is left to the reaper.
async fn destroy(api: &FlyApi, app: &str, machine: MachineId, destroyed: &Destroyed) {
    match api.delete(app, machine, true).await.map(drop) {
        Ok(()) => {
            destroyed.lock().expect("destroyed lock").insert(machine);
            tracing::info!(%machine, "destroyed after a failed launch");
        }
        Err(e) => tracing::warn!(%machine, error = %e, "could not destroy; the reaper will"),
    }
}
