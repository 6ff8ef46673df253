//! The launches a launcher runs or has just run: what each has done, its hand-over, and which
//! one each visitor runs. Kept apart from the launcher's assembly and its server functions'
//! entry points, which read and change them through these few calls only.

use super::request::{LaunchId, VisitorKey};
use crate::{
    app::protocol::{Handover, LaunchCall, LaunchProgress},
    fly::MachineId,
    server::affinity::routes::arrival_of,
};
use http::HeaderMap;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use tokio::sync::watch;

/// What one launch has done, and its hand-over once ready.
pub(super) struct Launch {
    pub(super) visitor: VisitorKey,
    pub(super) progress: watch::Sender<LaunchProgress>,
    /// Given to the launch's visitor only, and again if they ask again: a proxy may cut their
    /// first request (asked at once, it waits for the whole launch) after the launch ended,
    /// with this server none the wiser, and the page then asks again (`app::launcher::run`);
    /// a second tab or a reload gets it again too, while the Machine lives. With the Machine
    /// it hands over.
    pub(super) handover: Mutex<Option<(Handover, MachineId)>>,
}

/// The most calls a launch's route keeps: a start, a progress channel and a hand-over, and a
/// few more of a page that reconnects or asks again; never more, however often it does.
const ROUTE_CALLS: usize = 8;

impl Launch {
    /// Records how one of the launch's calls reached this launcher, for its page.
    pub(super) fn reached(&self, call: LaunchCall, headers: &HeaderMap) {
        let arrival = arrival_of(headers);
        self.progress.send_if_modified(|p| match &mut p.route {
            Some(route) if route.calls.len() < ROUTE_CALLS => {
                route.calls.push((call, arrival));
                true
            }
            _ => false,
        });
    }

    pub(super) fn machine(&self) -> Option<MachineId> {
        self.handover
            .lock()
            .expect("handover lock")
            .as_ref()
            .map(|(_, m)| *m)
    }
}

/// The launches this launcher runs or has just run, by id, and which one each visitor runs:
/// one visitor, one launch at a time. One lock, so the two never disagree.
#[derive(Default)]
pub(super) struct Launches {
    inner: Mutex<LaunchesInner>,
}

#[derive(Default)]
struct LaunchesInner {
    by_id: HashMap<LaunchId, Arc<Launch>>,
    running: HashMap<VisitorKey, LaunchId>,
    /// The last launch of each visitor that handed over a Machine, while it is remembered.
    handed_over: HashMap<VisitorKey, LaunchId>,
}

impl Launches {
    fn lock(&self) -> std::sync::MutexGuard<'_, LaunchesInner> {
        self.inner.lock().expect("launches lock")
    }

    /// The launch the visitor runs now, if any.
    pub(super) fn running(&self, visitor: VisitorKey) -> Option<LaunchId> {
        self.lock().running.get(&visitor).cloned()
    }

    /// Records the visitor's new launch, unless a press of theirs at the same moment got
    /// there first: then that launch's id, and this one never starts.
    pub(super) fn begin(&self, id: LaunchId, launch: Arc<Launch>) -> Result<(), LaunchId> {
        let mut inner = self.lock();
        if let Some(first) = inner.running.get(&launch.visitor) {
            return Err(first.clone());
        }
        inner.running.insert(launch.visitor, id.clone());
        inner.by_id.insert(id, launch);
        Ok(())
    }

    pub(super) fn get(&self, id: &LaunchId) -> Option<Arc<Launch>> {
        self.lock().by_id.get(id).cloned()
    }

    /// The launch ended: its visitor may launch again; it stays readable until forgotten.
    pub(super) fn ended(&self, id: &LaunchId, launch: &Launch) {
        let mut inner = self.lock();
        inner.running.remove(&launch.visitor);
        if launch.machine().is_some() {
            inner.handed_over.insert(launch.visitor, id.clone());
        }
    }

    /// The visitor's Machine of launch `id` is gone: their next press launches anew.
    pub(super) fn no_longer_handed_over(&self, visitor: VisitorKey, id: &LaunchId) {
        let mut inner = self.lock();
        if inner.handed_over.get(&visitor) == Some(id) {
            inner.handed_over.remove(&visitor);
        }
    }

    /// The visitor's last launch that handed over a Machine, with that Machine.
    pub(super) fn handed_over(&self, visitor: VisitorKey) -> Option<(LaunchId, Arc<Launch>)> {
        let inner = self.lock();
        let id = inner.handed_over.get(&visitor)?;
        Some((id.clone(), inner.by_id.get(id)?.clone()))
    }

    pub(super) fn forget(&self, id: &LaunchId, launch: &Launch) {
        let mut inner = self.lock();
        inner.by_id.remove(id);
        if inner.handed_over.get(&launch.visitor) == Some(id) {
            inner.handed_over.remove(&launch.visitor);
        }
    }
}
