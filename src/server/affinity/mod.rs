//! The affinity decision: which Machine must answer a request, and whether this one may.
//!
//! fly-proxy sends a request to whichever Machine of the app it likes (usually the nearest).
//! flyby needs every request of a visitor to reach one particular Machine — their own Machine on
//! the ephemeral app, the launcher Machine running their launch on the launcher app — and needs
//! everyone else kept out. [`decide`] is that whole policy as a pure function of the request's
//! facts and of this Machine; [`layer`] only turns its answer into a response, before any route
//! or Leptos code runs.
//!
//! The rules, and why:
//! - `/health` (exact path) always passes: Fly's checks and the launcher's readiness probe have
//!   no cookie and must reach every Machine.
//! - A Machine is named by the path `/m/<id>/...` or by a cookie, never by the query string
//!   (queries end up in logs, history and Referers: the anchors' `?instance=` leak).
//!   Ids are validated (`MachineId::parse`, 14 lowercase hex) before anything else, so nothing
//!   untrusted can reach the `fly-replay` header; a malformed id is refused with 400.
//! - Wrong Machine: answer with a replay to the right one. A page, a server function or the
//!   live channel must learn that its Machine is gone, so its replay carries a `timeout` and
//!   `fallback=prefer_self` (a target that is gone comes back here as `fly-replay-failed`).
//!   A static file's replay is a plain `instance=<id>`: Fly's replay cache takes no replay with
//!   `timeout` or `fallback` (Fly docs, networking/dynamic-request-routing), and this one is
//!   what lets the session cache on the owner cookie send the owner's later requests straight
//!   to their Machine.
//! - Loop guard: a request that already carries `fly-replay-src` was replayed by a flyby Machine
//!   that decided on these same facts, so it is never replayed again (the proxy misdelivered
//!   it, or a client forged the header). The replay carries no `state`, so that Fly may cache it.
//! - `fly-replay-failed`: the target is gone. The ephemeral app answers "your Machine is gone"
//!   and clears the owner cookie; the launcher serves the visitor here and clears its launch pin.
//!   The one exception is the hand-over: its Machine has just started, and "there may be a
//!   short delay before all proxy nodes recognize that it is running" (Fly docs,
//!   reference/fly-proxy-autostop-autostart). A failed claim is sent back to be made again
//!   (`307`, the browser posts the same form), a few times (`?attempt=<n>`), before it is
//!   told the Machine is gone.
//! - Ownership on the ephemeral app: the owner cookie holds `<machine id>.<secret>`; the Machine
//!   knows only the secret's hash. Without a secret that verifies, 403. The single exception is
//!   the hand-over `POST /m/<id>/claim`, whose handler checks the secret in the form body.
//! - On the ephemeral app, a request naming no Machine belongs to nobody: refused, not served.
//! - A launch starts on the visitor's home launcher, whatever Machine fly-proxy delivered it
//!   to and whatever launch pin the visitor presents: one launcher per visitor keeps their
//!   launch budget and their one launch at a time whole across launchers (a visitor cannot
//!   collect a budget from each). The home is chosen by rendezvous hashing of `Fly-Client-IP`
//!   over the started launchers ([`home_launcher`]), so every launcher agrees on it without
//!   talking to the others, and a launcher joining or leaving moves only the visitors it wins
//!   or held. While the launchers' lists disagree (one poll at most), a launch replayed once
//!   is served where it lands; a home that cannot be reached gives it back
//!   (`fly-replay-failed`) and it is served here.

pub mod layer;
pub mod routes;

pub use super::cookies::{LAUNCH_COOKIE, OWNER_COOKIE};
use super::{
    cookies::{read as cookie, OwnerCookie},
    ownership::OwnerHash,
};
use crate::{fly::MachineId, role::Role};
use http::Method;

pub use layer::AffinityLayer;

/// The only path that is never pinned.
pub const HEALTH_PATH: &str = "/health";
pub use crate::server::arming::ARM_PATH;
/// Prefix of the paths that name a Machine: `/m/<id>` and below.
pub const MACHINE_PREFIX: &str = "/m/";
/// Where server functions live (and the live channels, which are server functions too).
pub const SERVER_FN_PREFIX: &str = "/api/";
/// The server function that starts a launch: the one request that goes to the visitor's home
/// launcher.
pub const LAUNCH_PATH: &str = "/api/launch";

/// This Machine, as far as the decision is concerned.
#[derive(Debug, Clone)]
pub struct Here {
    pub role: Role,
    /// `None` only for a launcher outside Fly (no `FLY_MACHINE_ID`): then nothing can be pinned.
    pub id: Option<MachineId>,
    /// The hash of the owner's secret; set on the ephemeral role only (once armed, on a
    /// Machine of the warm pool).
    pub owner: Option<OwnerHash>,
}

/// The facts of a request the decision depends on, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    /// The raw (still percent-encoded) path, without the query.
    pub path: &'a str,
    /// The raw query, read for the hand-over's attempt count only: never for a Machine id.
    pub query: Option<&'a str>,
    /// Every `Cookie` header value, joined with `; `.
    pub cookies: Option<&'a str>,
    /// `fly-replay-src`: set by fly-proxy on a replayed request.
    pub replay_src: Option<&'a str>,
    /// `fly-replay-failed`: set by fly-proxy when our replay could not be delivered.
    pub replay_failed: Option<&'a str>,
    /// On the launcher app, the visitor's home launcher ([`home_launcher`]), when the
    /// launchers are known.
    pub home: Option<MachineId>,
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `/health`: answered by every Machine, without any check.
    Pass,
    /// This is the right Machine (and, on the ephemeral app, the owner): serve.
    Serve,
    /// Serve here, and clear the visitor's launch pin: it names no launcher that can serve.
    ServeAndUnpin,
    /// Ask fly-proxy to deliver the request to that Machine instead.
    Replay(MachineId, ReplayKind),
    /// The Machine the request belongs to is gone: say so and clear the owner cookie.
    Gone(MachineId),
    /// The hand-over to that Machine could not be delivered yet: have it made again, as
    /// attempt number `.1`.
    RetryClaim(MachineId, u8),
    Refuse(Refusal),
}

/// What a replay must be able to do, by what the request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayKind {
    /// A page, a server function, the live channel: if the target is gone, the request comes
    /// back here to be told so (`timeout` and `fallback`); such a replay is never cached.
    Guarded,
    /// A static file, whose loss the page survives: a plain replay, which Fly may cache.
    Cacheable,
}

impl ReplayKind {
    /// Static files are GETs outside the pages (`/m/`) and the server functions (`/api/`).
    fn of(request: &RequestFacts<'_>) -> ReplayKind {
        let read = request.method == Method::GET || request.method == Method::HEAD;
        let dynamic =
            request.path.starts_with(MACHINE_PREFIX) || request.path.starts_with(SERVER_FN_PREFIX);
        if read && !dynamic {
            ReplayKind::Cacheable
        } else {
            ReplayKind::Guarded
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A Machine id in the path or a pin cookie is malformed (400). `unpin`: the bad value came
    /// from a cookie, which the answer clears so the visitor is not stuck with it.
    InvalidId { unpin: bool },
    /// This is the named Machine, but the request does not prove ownership (403).
    NotOwner,
    /// The ephemeral app got a request that names no Machine (403).
    NoMachine,
    /// A replayed request reached a Machine it was not meant for (421).
    Misdirected,
}

/// The whole affinity policy. Pure: no I/O, no clock, no randomness.
pub fn decide(request: &RequestFacts<'_>, here: &Here) -> Decision {
    if request.path == HEALTH_PATH {
        return Decision::Pass;
    }
    // Arming proves itself with the Machine's key (`server::arming`), whoever sends it.
    if here.role == Role::Ephemeral && request.method == Method::POST && request.path == ARM_PATH {
        return Decision::Pass;
    }
    match here.role {
        Role::Launcher => decide_launcher(request, here),
        // The concierge is a Machine of the visitors' app whose owner nobody is.
        Role::Ephemeral | Role::Concierge => decide_ephemeral(request, here),
    }
}

fn decide_launcher(request: &RequestFacts<'_>, here: &Here) -> Decision {
    let starts_launch = request.method == Method::POST && request.path == LAUNCH_PATH;
    if let (true, Some(home), Some(me)) = (starts_launch, request.home, here.id) {
        let replayed = request.replay_failed.is_some() || request.replay_src.is_some();
        return if home == me || replayed {
            Decision::Serve
        } else {
            Decision::Replay(home, ReplayKind::Guarded)
        };
    }
    let Some(pin) = cookie(request.cookies, LAUNCH_COOKIE) else {
        return Decision::Serve;
    };
    let Ok(target) = MachineId::parse(pin) else {
        return Decision::Refuse(Refusal::InvalidId { unpin: true });
    };
    match here.id {
        Some(me) if me == target => Decision::Serve,
        // Outside Fly, or the pinned launcher is gone, or the replay already happened once:
        // the launcher works anywhere, only the launch in progress is lost.
        None => Decision::ServeAndUnpin,
        Some(_) if request.replay_failed.is_some() || request.replay_src.is_some() => {
            Decision::ServeAndUnpin
        }
        // Nothing caches the launch pin's replays: keep the way back for a gone launcher.
        Some(_) => Decision::Replay(target, ReplayKind::Guarded),
    }
}

fn decide_ephemeral(request: &RequestFacts<'_>, here: &Here) -> Decision {
    let presented = cookie(request.cookies, OWNER_COOKIE).map(OwnerCookie::parse);
    let target = match machine_in_path(request.path) {
        Some(Ok(id)) => id,
        Some(Err(())) => return Decision::Refuse(Refusal::InvalidId { unpin: false }),
        None => match presented {
            Some(Some(ref owner)) => owner.machine,
            Some(None) => return Decision::Refuse(Refusal::InvalidId { unpin: true }),
            None => return Decision::Refuse(Refusal::NoMachine),
        },
    };
    let Some(me) = here.id else {
        return Decision::Refuse(Refusal::NoMachine);
    };
    if target != me {
        return if request.replay_failed.is_some() {
            match claim_attempt(request, target) {
                Some(attempt) if attempt + 1 < CLAIM_ATTEMPTS => {
                    Decision::RetryClaim(target, attempt + 1)
                }
                _ => Decision::Gone(target),
            }
        } else if request.replay_src.is_some() {
            Decision::Refuse(Refusal::Misdirected)
        } else {
            Decision::Replay(target, ReplayKind::of(request))
        };
    }
    // Only a Machine with an owner can be claimed (the concierge has none).
    if request.method == Method::POST && is_claim_path(request.path, me) && here.owner.is_some() {
        return Decision::Serve;
    }
    match (presented, here.owner) {
        (Some(Some(owner)), Some(hash)) if owner.machine == me && hash.verifies(owner.secret) => {
            Decision::Serve
        }
        _ => Decision::Refuse(Refusal::NotOwner),
    }
}

/// The launcher whose turn it is to run `visitor`'s launches (rendezvous hashing: the
/// launcher with the highest hash of visitor and launcher id), `None` without launchers. Every
/// launcher computes the same answer from the same list; a launcher joining takes only the
/// visitors it now wins, one leaving gives up only its own.
pub fn home_launcher(visitor: &str, launchers: &[MachineId]) -> Option<MachineId> {
    use sha2::{Digest, Sha256};
    launchers.iter().copied().max_by_key(|id| {
        let digest = Sha256::new()
            .chain_update(visitor.as_bytes())
            .chain_update([0])
            .chain_update(id.as_str().as_bytes())
            .finalize();
        (
            u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")),
            *id,
        )
    })
}

/// How many times a hand-over is made before its Machine counts as gone.
pub const CLAIM_ATTEMPTS: u8 = 4;
/// The query parameter that counts a hand-over's attempts.
pub const CLAIM_ATTEMPT_PARAM: &str = "attempt";

/// For a hand-over to `target` (`POST /m/<target>/claim`), which attempt this is (0: the
/// first); `None` for any other request. An attempt count that is not a small number counts as
/// the last.
fn claim_attempt(request: &RequestFacts<'_>, target: MachineId) -> Option<u8> {
    if request.method != Method::POST || !is_claim_path(request.path, target) {
        return None;
    }
    let Some(query) = request.query else {
        return Some(0);
    };
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix(CLAIM_ATTEMPT_PARAM)?.strip_prefix('='));
    Some(match value {
        None => 0,
        Some(n) => n.parse().unwrap_or(CLAIM_ATTEMPTS),
    })
}

/// The path of the hand-over for `machine`.
pub fn claim_path(machine: MachineId) -> String {
    format!("{MACHINE_PREFIX}{machine}/claim")
}

/// The path of a visitor's page on their Machine.
pub fn machine_page_path(machine: MachineId) -> String {
    format!("{MACHINE_PREFIX}{machine}")
}

fn is_claim_path(path: &str, me: MachineId) -> bool {
    path.strip_prefix(MACHINE_PREFIX)
        .and_then(|rest| rest.strip_prefix(me.as_str()))
        .is_some_and(|rest| rest == "/claim")
}

/// `Some(Ok(id))` for `/m/<id>` and `/m/<id>/...`, `Some(Err)` when the segment after `/m/`
/// is not a valid id, `None` for paths outside `/m/`.
fn machine_in_path(path: &str) -> Option<Result<MachineId, ()>> {
    let rest = path.strip_prefix(MACHINE_PREFIX)?;
    let segment = rest.split('/').next().unwrap_or(rest);
    Some(MachineId::parse(segment).map_err(|_| ()))
}

#[cfg(test)]
mod tests;
