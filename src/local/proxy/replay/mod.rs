//! The `fly-replay` vocabulary, as pure functions: what a Machine may answer (the header form
//! and the `application/vnd.fly.replay+json` form), the path-based replay cache directives that
//! ride along, and what the proxy tells the next Machine (`fly-replay-src`,
//! `fly-replay-failed`). Nothing here touches a socket, so every rule is unit-tested.
//!
//! Source: Fly's docs, networking/dynamic-request-routing ("Dynamic Request Routing with
//! fly-replay"). Where Fly leaves a detail open, the choice made here is
//! marked "undocumented" and leans strict: a local platform that accepts what Fly might refuse
//! would hide an app's bug until production.
//!
//! Rooms: `header` (the header form), `json` (the JSON form), `directives` (the replay
//! cache directives that ride along), `report` (`fly-replay-src` and `fly-replay-failed`);
//! this module holds the vocabulary they share and the chain's policy, [`next_step`].

mod directives;
mod header;
mod json;
mod report;
#[cfg(test)]
mod tests;

use directives::cache_set;
pub use directives::parse_cache_headers;
pub use directives::{path_has_prefix, CacheDirective, CachePattern};
use header::{check, fields, push_value, set_field};
pub use header::{is_app_name, parse_header};
pub use json::parse_json;
pub use report::{FailReason, ReplayFailed, ReplaySrc};

use crate::fly::{MachineId, RegionCode};
use http::{uri::PathAndQuery, HeaderName, HeaderValue};
use std::{borrow::Cow, fmt, time::Duration};

/// The header a Machine answers with to have its request replayed.
pub const FLY_REPLAY: &str = "fly-replay";
/// The content type of the JSON form of a replay.
pub const REPLAY_JSON_CONTENT_TYPE: &str = "application/vnd.fly.replay+json";
/// The minimum TTL of a path-based cache entry (Fly: "The TTL needs to be a minimum of 10
/// seconds").
pub const MIN_CACHE_TTL: Duration = Duration::from_secs(10);
/// Bounds a `state` so that a Machine cannot make the proxy copy megabytes into every replay.
/// Undocumented on Fly; generous for any real use.
const MAX_STATE_LEN: usize = 4096;

/// A replay a Machine asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replay {
    /// `instance=`: exactly this Machine, or (after retries) an error or the fallback.
    pub instance: Option<MachineId>,
    /// `prefer_instance=`: this Machine if it can be reached, else any other that fits.
    pub prefer_instance: Option<MachineId>,
    /// `region=`: in order of preference; empty means no constraint.
    pub regions: Vec<RegionChoice>,
    /// `app=`: another app of the (single, local) organisation.
    pub app: Option<String>,
    /// `elsewhere=true`: not the Machine that answered.
    pub elsewhere: bool,
    /// `state=`: echoed to the target in `fly-replay-src`.
    pub state: Option<String>,
    /// `timeout=`: how long to keep trying the target.
    pub timeout: Option<Duration>,
    /// `fallback=`: where the request goes when the target cannot be reached.
    pub fallback: Option<Fallback>,
    /// JSON form only: path and header changes on the way to the target.
    pub transform: Option<Transform>,
    /// JSON form only (`cache{...}`); the header form carries it in separate headers, see
    /// [`parse_cache_headers`].
    pub cache: Option<CacheDirective>,
}

impl Replay {
    /// Why this replay may not be stored in the replay cache, path- or session-based, if it
    /// may not. Fly (networking/dynamic-request-routing, the replay cache's limitations): "The
    /// `state` field cannot be set ... Transformations ... cannot be defined ... The `timeout`
    /// and `fallback` fields cannot be set in the `fly-replay` intended to be cached".
    pub fn cache_obstacle(&self) -> Option<&'static str> {
        if self.state.is_some() {
            Some("state")
        } else if self.timeout.is_some() {
            Some("timeout")
        } else if self.fallback.is_some() {
            Some("fallback")
        } else if self.transform.is_some() {
            Some("transform")
        } else {
            None
        }
    }
}

/// What the proxy does with a replay a Machine answered with, by the facts of the exchange so
/// far (fly-proxy-cases: the fallback's answer, the 10-replay limit, the 1 MB body, the
/// target app).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Deliver the request again, where the replay says.
    Replay,
    /// The Machine answering a fallback may not replay again (PA03).
    FallbackReplayed,
    /// The chain already has its [`MAX_CHAIN`] replays (PA02).
    Limit,
    /// The request's body was too large to keep for another delivery (PA01).
    TooLarge,
    /// The replay names an app there is no such thing as (PA04).
    NoSuchApp,
}

/// The most replays one request may go through. Fly: "up to 10 times"; the 11th `fly-replay`
/// of one request is PA02.
pub const MAX_CHAIN: u32 = 10;

/// The facts [`next_step`] decides on.
#[derive(Debug, Clone, Copy)]
pub struct ChainFacts {
    /// The answer came from the Machine a fallback brought the request back to.
    pub from_fallback: bool,
    /// Replays already followed for this request.
    pub replays: u32,
    /// The body can be sent again.
    pub body_replayable: bool,
    /// The replay's target app (the replaying Machine's own when it names none) exists.
    pub app_exists: bool,
}

/// What to do with a replay: pure, so that its table is tested on its own.
pub fn next_step(facts: ChainFacts) -> NextStep {
    if facts.from_fallback {
        NextStep::FallbackReplayed
    } else if facts.replays >= MAX_CHAIN {
        NextStep::Limit
    } else if !facts.body_replayable {
        NextStep::TooLarge
    } else if !facts.app_exists {
        NextStep::NoSuchApp
    } else {
        NextStep::Replay
    }
}

/// `fallback=`: what happens when the replay target cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Back to the exact Machine that replayed; a proxy error if it is gone.
    ForceSelf,
    /// Back to that Machine, else any Machine of its app.
    PreferSelf,
}

/// One entry of a region list: a code or one of Fly's geographic aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionChoice {
    Code(RegionCode),
    Alias(RegionAlias),
}

impl RegionChoice {
    pub fn contains(self, region: RegionCode) -> bool {
        match self {
            RegionChoice::Code(code) => code == region,
            RegionChoice::Alias(alias) => alias.contains(region),
        }
    }
}

impl fmt::Display for RegionChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionChoice::Code(code) => f.write_str(code.as_str()),
            RegionChoice::Alias(alias) => f.write_str(alias.as_str()),
        }
    }
}

/// Fly's geographic aliases for `region` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionAlias {
    /// Earth: makes a list a preference instead of a hard target.
    Any,
    /// `us` and `usa`.
    Us,
    Na,
    Sa,
    Eu,
    Apac,
}

impl RegionAlias {
    fn parse(s: &str) -> Option<RegionAlias> {
        Some(match s {
            "any" => RegionAlias::Any,
            "us" | "usa" => RegionAlias::Us,
            "na" => RegionAlias::Na,
            "sa" => RegionAlias::Sa,
            "eu" => RegionAlias::Eu,
            "apac" => RegionAlias::Apac,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RegionAlias::Any => "any",
            RegionAlias::Us => "us",
            RegionAlias::Na => "na",
            RegionAlias::Sa => "sa",
            RegionAlias::Eu => "eu",
            RegionAlias::Apac => "apac",
        }
    }

    /// Fly names the aliases' areas but does not list their members (undocumented): these
    /// are the current regions by geography, plus retired codes a Machine record might carry.
    pub fn contains(self, region: RegionCode) -> bool {
        const US: &[&str] = &[
            "atl", "bos", "den", "dfw", "ewr", "iad", "lax", "mia", "ord", "phx", "sea", "sjc",
        ];
        const NA_ONLY: &[&str] = &["gdl", "qro", "yul", "yyz"];
        const SA: &[&str] = &["bog", "eze", "gig", "gru", "scl"];
        const EU: &[&str] = &["ams", "arn", "cdg", "fra", "lhr", "mad", "otp", "waw"];
        const APAC: &[&str] = &["bom", "hkg", "nrt", "sin", "syd"];
        let code = region.as_str();
        match self {
            RegionAlias::Any => true,
            RegionAlias::Us => US.contains(&code),
            RegionAlias::Na => US.contains(&code) || NA_ONLY.contains(&code),
            RegionAlias::Sa => SA.contains(&code),
            RegionAlias::Eu => EU.contains(&code),
            RegionAlias::Apac => APAC.contains(&code),
        }
    }
}

/// Whether a region list is a hard target. Fly: "a list is a hard target unless it ends in
/// `any`" (an `any` anywhere matches every region, so only the end position matters).
pub fn regions_are_hard(regions: &[RegionChoice]) -> bool {
    !regions.contains(&RegionChoice::Alias(RegionAlias::Any))
}

/// Parses a comma-separated list of region codes and aliases (`region=` of a replay,
/// `fly-prefer-region`, `fly-force-region`).
pub fn parse_region_list(s: &str) -> Result<Vec<RegionChoice>, ReplayError> {
    let mut out = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        let choice = if let Some(alias) = RegionAlias::parse(item) {
            RegionChoice::Alias(alias)
        } else {
            RegionChoice::Code(RegionCode::parse(item).map_err(|_| ReplayError::Value {
                field: "region",
                reason: format!("{item:?} is not a region code or alias"),
            })?)
        };
        out.push(choice);
    }
    Ok(out)
}

/// Path and header changes a JSON replay asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transform {
    /// Replaces the path and query.
    pub path: Option<PathAndQuery>,
    /// Removed before the target sees the request.
    pub delete_headers: Vec<HeaderName>,
    /// Set (replacing any of the same name) before the target sees the request.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
}

/// Why a replay answer is not one the proxy can follow (PA03).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("fly-replay is empty")]
    Empty,
    #[error("fly-replay is not a list of key=value pairs separated by ';': {0}")]
    Syntax(&'static str),
    #[error("unknown fly-replay field {0:?}")]
    UnknownField(String),
    #[error("fly-replay field {0:?} given twice")]
    Duplicate(String),
    #[error("fly-replay field {field}: {reason}")]
    Value { field: &'static str, reason: String },
    #[error("fly-replay JSON body: {0}")]
    Json(String),
}

/// A region list back in `fly-replay` syntax (for `fly-replay-failed`).
pub fn region_list_string(regions: &[RegionChoice]) -> String {
    regions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
