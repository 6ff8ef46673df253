//! What the pages and the servers say to each other: the server functions' answers and the
//! live channels' messages, for the launcher's page and for a visitor's Machine's. Typed where
//! the bundle's bytes allow (Machine ids and region codes are checked on arrival, as anywhere);
//! a string stays where a comment says why.

use super::error::AppError;
use crate::fly::{MachineId, RegionCode};
use serde::{Deserialize, Serialize};

// --- the launcher's page ------------------------------------------------------------------

/// A step of a launch, in the order a visitor sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    Requested,
    /// The launcher is queueing to stay within the Machines API's rate limits: one row however
    /// often it queues, with how often and for how long so far.
    WaitingForSlot {
        waits: u32,
        waited_ms: u64,
    },
    /// Fly had no room in `full`: the launch tries `next`, the nearest region not tried yet.
    NoRoom {
        full: RegionCode,
        next: RegionCode,
    },
    Created {
        region: RegionCode,
    },
    /// A Machine of the warm pool was started for the visitor (no create to wait for).
    Warm {
        region: RegionCode,
    },
    /// The warm pool of `region` had none left: the launch creates one.
    NoWarm {
        region: RegionCode,
    },
    Started,
    Serving,
    SendingYou,
}

impl Step {
    pub fn label(&self) -> String {
        match self {
            Step::Requested => "Requested".into(),
            Step::WaitingForSlot { waits: 0..=1, .. } => "Waiting for a slot".into(),
            Step::WaitingForSlot { waits, waited_ms } => {
                format!("Waiting for a slot ({waits} tries, {} s)", waited_ms / 1000)
            }
            Step::NoRoom { full, next } => {
                format!("No room in {}: trying {}", full.city(), next.city())
            }
            Step::Created { region } => format!("Created in {}", region.city()),
            Step::Warm { region } => format!("Started a warm Machine in {}", region.city()),
            Step::NoWarm { region } => {
                format!("No warm Machine left in {}: creating one", region.city())
            }
            Step::Started => "Started".into(),
            Step::Serving => "Serving".into(),
            Step::SendingYou => "Sending you there".into(),
        }
    }
}

/// A step and when it happened, in ms since the launch was requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepView {
    pub step: Step,
    pub at_ms: u64,
}

/// Everything a launch has done so far; sent whole on every change, so a late watcher is
/// never out of step.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LaunchProgress {
    pub steps: Vec<StepView>,
    /// `Some(Ok)`: the Machine serves and the hand-over can be taken.
    pub outcome: Option<Result<(), AppError>>,
    /// Which launcher Machine runs the launch, and how the page's calls reached it.
    pub route: Option<LaunchRoute>,
}

/// How a launch's calls reached the launcher Machine that runs it: the start reaches the
/// visitor's home launcher, and the launch pin sends every later call there, by `fly-replay`
/// when fly-proxy delivered it to another launcher first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchRoute {
    pub launcher: MachineId,
    pub region: Option<RegionCode>,
    /// In the order they reached it.
    pub calls: Vec<(LaunchCall, Arrival)>,
}

/// A call of the launcher's page to the launcher that runs its launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LaunchCall {
    Start,
    /// The live channel of the launch's progress.
    Progress,
    Handover,
}

impl LaunchCall {
    pub fn label(self) -> &'static str {
        match self {
            LaunchCall::Start => "start",
            LaunchCall::Progress => "progress",
            LaunchCall::Handover => "hand-over",
        }
    }
}

impl LaunchProgress {
    /// Adds `step`, `at_ms` into the launch; a wait right after a wait updates that row (the
    /// page keeps to its few steps however long Fly's rate limit lasts).
    pub fn record(&mut self, step: Step, at_ms: u64) {
        if let (
            Step::WaitingForSlot { .. },
            Some(StepView {
                step: Step::WaitingForSlot { waits, waited_ms },
                at_ms: since,
            }),
        ) = (&step, self.steps.last_mut())
        {
            *waits += 1;
            *waited_ms = at_ms.saturating_sub(*since);
            return;
        }
        self.steps.push(StepView { step, at_ms });
    }
}

/// A launch's steps as the Machine's receipt tells them, in ms since the click. The
/// launcher's page posts them with the hand-over, beside the secret; the Machine keeps what it
/// received with the claim it accepted and gives it back to its owner's page with the rest of
/// [`MachineInfo`]. Never in an address, where a copied link would carry it and the page
/// would have to rewrite its address to drop it. Only the owner's
/// page shows it, to the browser that wrote it: parsed strictly all the same (known steps, at
/// most [`BootTimeline::MAX`]), and a claim with anything else is refused.
/// The launcher's times count from when it received the launch, the page's from the click:
/// apart by the launch request's way there, a few ms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootTimeline(pub Vec<(BootStep, u32)>);

/// One moment of a launch, as the receipt names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootStep {
    Requested,
    WaitedForFly,
    FullRegion,
    Created,
    Warm,
    NoWarm,
    Started,
    Serving,
    /// The launcher's page posted the hand-over (its own clock).
    HandedOver,
    /// The Machine's page received its first byte (its own clock, after the hand-over).
    FirstByte,
}

const BOOT_CODES: [(BootStep, u8, &str); 10] = [
    (BootStep::Requested, b'q', "launch requested"),
    (BootStep::WaitedForFly, b'l', "waited for Fly's rate limit"),
    (BootStep::FullRegion, b'f', "a full region passed over"),
    (BootStep::Created, b'c', "Machine created"),
    (BootStep::Warm, b'w', "warm Machine started"),
    (BootStep::NoWarm, b'n', "no warm Machine left"),
    (BootStep::Started, b's', "Machine started"),
    (BootStep::Serving, b'v', "Machine serving"),
    (BootStep::HandedOver, b'h', "hand-over posted"),
    (BootStep::FirstByte, b'b', "its page's first byte"),
];

impl BootStep {
    pub fn label(self) -> &'static str {
        BOOT_CODES
            .iter()
            .find(|(step, ..)| *step == self)
            .map_or("", |(.., label)| label)
    }
}

impl BootTimeline {
    /// The most steps a timeline holds (a launch shows about six).
    pub const MAX: usize = 12;

    /// A launch's steps, and the hand-over posted `handed_over_ms` after the click.
    pub fn of_launch(steps: &[StepView], handed_over_ms: u32) -> Self {
        let mut timeline: Vec<(BootStep, u32)> = steps
            .iter()
            .filter_map(|s| {
                let step = match s.step {
                    Step::Requested => BootStep::Requested,
                    Step::WaitingForSlot { .. } => BootStep::WaitedForFly,
                    Step::NoRoom { .. } => BootStep::FullRegion,
                    Step::Created { .. } => BootStep::Created,
                    Step::Warm { .. } => BootStep::Warm,
                    Step::NoWarm { .. } => BootStep::NoWarm,
                    Step::Started => BootStep::Started,
                    Step::Serving => BootStep::Serving,
                    Step::SendingYou => return None,
                };
                Some((step, u32::try_from(s.at_ms).unwrap_or(u32::MAX)))
            })
            .take(Self::MAX - 2)
            .collect();
        timeline.push((BootStep::HandedOver, handed_over_ms));
        BootTimeline(timeline)
    }

    /// `q0.c1234.s1900`: a letter per step, its ms.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        for (step, ms) in &self.0 {
            let Some((_, code, _)) = BOOT_CODES.iter().find(|(s, ..)| s == step) else {
                continue;
            };
            if !text.is_empty() {
                text.push('.');
            }
            text.push(char::from(*code));
            text.push_str(&ms.to_string());
        }
        text
    }

    /// What [`BootTimeline::encode`] wrote, or `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let mut steps = Vec::new();
        for part in text.split('.') {
            let (code, ms) = part.split_at_checked(1)?;
            let step = BOOT_CODES
                .iter()
                .find(|(_, c, _)| code.as_bytes() == [*c])
                .map(|(step, ..)| *step)?;
            if ms.is_empty() || ms.len() > 9 || !ms.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            steps.push((step, ms.parse().ok()?));
        }
        (steps.len() <= Self::MAX).then_some(BootTimeline(steps))
    }
}

/// What the launch server function gives back: the launch to follow. The page only sends the
/// id back; the launcher parses it (`launcher::request::LaunchId`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchTicket {
    pub id: String,
}

/// How the browser claims its Machine: a POST of the secret to the claim URL.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The Machine handed over: the launcher's page remembers it, to mark it on the map.
    pub machine: MachineId,
    pub claim_url: String,
    pub secret: String,
}

/// How a launch ended, for the page that asked for its hand-over. A failed launch is an answer
/// like the other (not an HTTP error): the page tells the visitor.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LaunchEnd {
    /// The Machine serves: how the browser claims it, and the launch's steps (the live channel
    /// may not have delivered the last ones yet).
    HandedOver {
        steps: Vec<StepView>,
        route: Option<LaunchRoute>,
        handover: Handover,
    },
    Failed(AppError),
}

/// The visitor's edge region and the cap, for the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LauncherInfo {
    pub edge_region: Option<RegionCode>,
    pub cap: u32,
    /// From the edge to each region of [`crate::fly::REGIONS`], in km, in that order (empty
    /// for an edge flyby does not know): worked out by the server, so the bundle carries no
    /// trigonometry.
    pub distances_km: Vec<u32>,
}

/// One Machine alive, for the map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliveMachine {
    pub id: MachineId,
    pub region: RegionCode,
}

/// Whether the launcher reaches the Fly Machines API, as its last list of Machines found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum FlyReach {
    #[default]
    Reachable,
    /// Listing has failed for `for_secs`: the map is that old, and launches wait until a list
    /// answers again.
    Unreachable { for_secs: u64 },
    /// Fly refuses the launcher's token: no launch can work until an operator fixes it.
    TokenRefused,
}

/// What the launcher's map shows: the Machines alive, and whether that view is current.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MapView {
    pub machines: Vec<AliveMachine>,
    pub fly: FlyReach,
}

// --- a visitor's Machine's page -----------------------------------------------------------

/// Why a Machine ended, as the page tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndReason {
    /// The show ran its course.
    ShowOver,
    /// The owner pressed "switch it off now".
    SwitchedOff,
    /// The Machine reached its maximum lifetime.
    TtlExpired,
    /// Nobody claimed the Machine in time.
    NoClaim,
    /// The platform asked it to stop.
    Stopped,
}

/// Where the Machine is in its life, as the page needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PhaseView {
    #[default]
    AwaitingOwner,
    /// The show runs; the Machine switches itself off in `seconds_left`.
    Showing {
        seconds_left: u64,
    },
    SwitchingOff {
        reason: EndReason,
    },
    Ended {
        reason: EndReason,
    },
}

/// What the page shows about its Machine, which it only shows: strings, not `MachineId` and
/// `RegionCode`, whose checks on arrival cost the Machine's bundle 844 B of brotli
/// (`scripts/wasm-size`, 2026-12-03), the page's first bytes. The cities come with their codes:
/// that bundle carries no region table (the launcher's does, for its map).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MachineInfo {
    pub id: String,
    /// The region code, and its city (or the code again for an unknown region).
    pub region: Option<String>,
    pub city: Option<String>,
    /// The Fly edge region the visitor's request came through.
    pub edge_region: Option<String>,
    pub edge_city: Option<String>,
    /// Great-circle distance between the two, when both are known regions.
    pub distance_km: Option<u32>,
    /// The launcher's origin, for the way back.
    pub launcher_url: Option<String>,
    pub phase: PhaseView,
    /// The launch's timeline the accepted hand-over carried ([`BootTimeline::encode`]), for
    /// the receipt; `None` for a hand-over without one.
    pub boot: Option<String>,
}

/// Messages from the page over the live channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientMessage {
    Ping { seq: u32 },
}

/// Messages from the Machine over the live channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ServerMessage {
    Pong {
        seq: u32,
    },
    Phase(PhaseView),
    /// How the owner's requests reached the Machine: the rows the page does not have yet
    /// (`fresh`: all the Machine keeps, replacing what the page had, on each new channel), and
    /// the counts over the Machine's whole life.
    Routes {
        fresh: bool,
        rows: Vec<RouteView>,
        totals: RouteTotals,
    },
}

/// One request of the owner, as it reached their Machine (the routing panel's row). Machine
/// ids and regions are strings for the reason [`MachineInfo`] gives; the Machine checked them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteView {
    /// Its order of arrival on the Machine, from 1.
    pub seq: u32,
    pub what: RequestKind,
    /// The path without its query (which may carry what a visitor typed), at most 64 bytes.
    pub path: String,
    pub arrival: Arrival,
    /// From the request reaching the Machine to the head of its answer, in tenths of a ms.
    pub answer_tenths_ms: u32,
}

/// What a request was, by its method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestKind {
    /// The hand-over's POST, which made the visitor the owner.
    Handover,
    /// The Machine's page.
    Page,
    /// A file of the page's bundle (`/pkg/`: JS, WASM, CSS).
    Bundle,
    ServerFunction,
    /// The upgrade of the live channel.
    LiveChannel,
    /// Any other file (the favicon).
    File,
}

impl RequestKind {
    pub fn label(self) -> &'static str {
        match self {
            RequestKind::Handover => "hand-over",
            RequestKind::Page => "page",
            RequestKind::Bundle => "bundle file",
            RequestKind::ServerFunction => "server function",
            RequestKind::LiveChannel => "live channel",
            RequestKind::File => "file",
        }
    }
}

/// How a request reached the Machine, as fly-proxy's headers say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arrival {
    /// The proxy sent it here first.
    Direct,
    /// Another Machine answered it with `fly-replay` and the proxy delivered it here
    /// (`fly-replay-src`): that Machine, its region, and how long ago it replayed it, in ms.
    Replayed {
        machine: String,
        region: String,
        after_ms: Option<u32>,
    },
    /// The proxy's replay cache sent it straight here, from an earlier replay
    /// (`fly-replay-cache-status: hit`).
    ReplayCache,
}

/// Counts over all the owner's requests the Machine served, however many rows it keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTotals {
    pub served: u32,
    pub replayed: u32,
    pub cache_hits: u32,
}
