//! What the proxy tells the next Machine: `fly-replay-src` on a replayed request, and
//! `fly-replay-failed` on a request a fallback brought back, each in Fly's format.

use super::*;

/// What a replayed request tells its target: `fly-replay-src`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaySrc {
    /// The Machine that answered with the replay.
    pub instance: MachineId,
    /// That Machine's region.
    pub region: RegionCode,
    /// When the replay happened, in microseconds since the Unix epoch.
    pub t_micros: u64,
    /// The replay's `state`, verbatim.
    pub state: Option<String>,
}

impl ReplaySrc {
    /// `instance=<id>;region=<code>;t=<µs>[;state=<state>]`. A state that is not a plain token
    /// is quoted (undocumented on Fly, which shows only plain states).
    pub fn to_header(&self) -> String {
        let mut out = String::with_capacity(64);
        out.push_str("instance=");
        out.push_str(self.instance.as_str());
        out.push_str(";region=");
        out.push_str(self.region.as_str());
        out.push_str(";t=");
        out.push_str(&self.t_micros.to_string());
        if let Some(state) = &self.state {
            out.push_str(";state=");
            push_value(&mut out, state);
        }
        out
    }

    pub fn parse(s: &str) -> Result<ReplaySrc, ReplayError> {
        let (mut instance, mut region, mut t, mut state) = (None, None, None, None);
        for field in fields(s)? {
            let value = field.value;
            let bad = |field: &'static str| ReplayError::Value {
                field,
                reason: format!("{value:?}"),
            };
            match field.key {
                "instance" => {
                    instance = Some(MachineId::parse(&value).map_err(|_| bad("instance"))?)
                }
                "region" => region = Some(RegionCode::parse(&value).map_err(|_| bad("region"))?),
                "t" => t = Some(value.parse::<u64>().map_err(|_| bad("t"))?),
                "state" => state = Some(value.into_owned()),
                other => return Err(ReplayError::UnknownField(other.to_owned())),
            }
        }
        let missing = |field: &'static str| ReplayError::Value {
            field,
            reason: "missing".into(),
        };
        Ok(ReplaySrc {
            instance: instance.ok_or_else(|| missing("instance"))?,
            region: region.ok_or_else(|| missing("region"))?,
            t_micros: t.ok_or_else(|| missing("t"))?,
            state,
        })
    }
}

/// Why a replay could not reach its target (`reason=` of `fly-replay-failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The replay's `timeout` (or the proxy's default) ran out.
    Timeout,
    /// Every attempt failed to connect.
    RetriesExhausted,
    /// No Machine fits the target at all.
    NoCandidate,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Timeout => "timeout",
            FailReason::RetriesExhausted => "retries_exhausted",
            FailReason::NoCandidate => "no_candidate",
        }
    }
}

/// What a fallback request tells the Machine that replayed: `fly-replay-failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayFailed {
    /// The Machine the replay targeted, when it named one.
    pub instance: Option<MachineId>,
    /// The app the replay targeted (the replaying Machine's own when it named none).
    pub app: String,
    /// The region(s) the replay targeted, as a list in `fly-replay` syntax, when it named any
    /// (or the region of the Machine it named).
    pub region: Option<String>,
    /// The Machine that answered with the replay (and gets the fallback).
    pub replay_source: MachineId,
    pub reason: FailReason,
    /// Time spent trying the target.
    pub elapsed_ms: u64,
}

impl ReplayFailed {
    /// `instance=..;app=..;region=..;replay_source=..;reason=..;elapsed_ms=..`, in Fly's order.
    /// Fields the replay did not name are left out (undocumented: Fly's one example has all).
    pub fn to_header(&self) -> String {
        let mut out = String::with_capacity(128);
        if let Some(instance) = self.instance {
            out.push_str("instance=");
            out.push_str(instance.as_str());
            out.push(';');
        }
        out.push_str("app=");
        out.push_str(&self.app);
        if let Some(region) = &self.region {
            out.push_str(";region=");
            push_value(&mut out, region);
        }
        out.push_str(";replay_source=");
        out.push_str(self.replay_source.as_str());
        out.push_str(";reason=");
        out.push_str(self.reason.as_str());
        out.push_str(";elapsed_ms=");
        out.push_str(&self.elapsed_ms.to_string());
        out
    }

    pub fn parse(s: &str) -> Result<ReplayFailed, ReplayError> {
        let (mut instance, mut app, mut region, mut source, mut reason, mut elapsed) =
            (None, None, None, None, None, None);
        for field in fields(s)? {
            let value = field.value;
            let bad = |field: &'static str| ReplayError::Value {
                field,
                reason: format!("{value:?}"),
            };
            match field.key {
                "instance" => {
                    instance = Some(MachineId::parse(&value).map_err(|_| bad("instance"))?)
                }
                "app" => app = Some(value.into_owned()),
                "region" => region = Some(value.into_owned()),
                "replay_source" => {
                    source = Some(MachineId::parse(&value).map_err(|_| bad("replay_source"))?)
                }
                "reason" => {
                    reason = Some(match value.as_ref() {
                        "timeout" => FailReason::Timeout,
                        "retries_exhausted" => FailReason::RetriesExhausted,
                        "no_candidate" => FailReason::NoCandidate,
                        _ => return Err(bad("reason")),
                    })
                }
                "elapsed_ms" => elapsed = Some(value.parse().map_err(|_| bad("elapsed_ms"))?),
                other => return Err(ReplayError::UnknownField(other.to_owned())),
            }
        }
        let missing = |field: &'static str| ReplayError::Value {
            field,
            reason: "missing".into(),
        };
        Ok(ReplayFailed {
            instance,
            app: app.ok_or_else(|| missing("app"))?,
            region,
            replay_source: source.ok_or_else(|| missing("replay_source"))?,
            reason: reason.ok_or_else(|| missing("reason"))?,
            elapsed_ms: elapsed.ok_or_else(|| missing("elapsed_ms"))?,
        })
    }
}
