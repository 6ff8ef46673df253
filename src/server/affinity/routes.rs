//! What the owner is shown of how their requests reached their Machine: the routing panel's
//! facts. The affinity layer already reads the headers fly-proxy sets on a replayed request;
//! for each request it serves to the proven owner it records what the request was, how it
//! arrived and how long the Machine took, into a small ring the live channel streams.
//!
//! Only the owner's requests are recorded (a stranger's are refused before anything is kept,
//! another owner's are replayed away), only their path (never the query), and only facts the
//! proxy states: `fly-replay-src` (Fly docs, networking/dynamic-request-routing) and
//! `fly-replay-cache-status`. A forged header could only mislead its sender, the owner, about
//! their own requests, and its values are parsed as a Machine id and a region or dropped.

use crate::{
    app::protocol::{Arrival, RequestKind, RouteTotals, RouteView},
    fly::{MachineId, RegionCode},
};
use http::{HeaderMap, Method};
use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};
use tokio::sync::watch;

/// How many rows a Machine keeps: a page's requests (about ten) several times over, and a
/// flood of requests costs no more than this many rows.
pub const ROUTE_ROWS: usize = 64;
/// The longest path a row keeps, in bytes.
const PATH_BYTES: usize = 64;
/// A replay older than this is a clock that disagrees, not a replay's time.
const REPLAY_AGE_LIMIT_US: u64 = 60_000_000;

/// What kind of request this is, from its method, path and whether it asks for a WebSocket.
pub fn request_kind(method: &Method, path: &str, claim: bool, upgrade: bool) -> RequestKind {
    if claim {
        RequestKind::Handover
    } else if upgrade {
        RequestKind::LiveChannel
    } else if path.starts_with(super::SERVER_FN_PREFIX) {
        RequestKind::ServerFunction
    } else if path.starts_with(super::MACHINE_PREFIX) && method == Method::GET {
        RequestKind::Page
    } else if path.starts_with("/pkg/") {
        RequestKind::Bundle
    } else {
        RequestKind::File
    }
}

/// How the request arrived, from `fly-replay-src`, `fly-replay-cache-status` and the time now
/// (µs since the epoch, the clock of `t=`).
pub fn arrival(replay_src: Option<&str>, cache_status: Option<&str>, now_us: u64) -> Arrival {
    if let Some(src) = replay_src {
        let field = |name: &str| {
            src.split(';')
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value)
        };
        let machine = field("instance").and_then(|v| MachineId::parse(v).ok());
        let region = field("region").and_then(|v| RegionCode::parse(v).ok());
        if let (Some(machine), Some(region)) = (machine, region) {
            let after_ms = field("t")
                .and_then(|t| t.parse::<u64>().ok())
                .and_then(|t| now_us.checked_sub(t))
                .filter(|age| *age < REPLAY_AGE_LIMIT_US)
                .map(|age| (age / 1000) as u32);
            return Arrival::Replayed {
                machine: machine.to_string(),
                region: region.to_string(),
                after_ms,
            };
        }
    }
    if cache_status.is_some_and(|s| s.trim().eq_ignore_ascii_case("hit")) {
        return Arrival::ReplayCache;
    }
    Arrival::Direct
}

/// How the request with these headers arrived, as of now: [`arrival`] on fly-proxy's headers.
pub fn arrival_of(headers: &HeaderMap) -> Arrival {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default();
    arrival(
        header("fly-replay-src"),
        header("fly-replay-cache-status"),
        now_us,
    )
}

/// The path as a row keeps it: no query, at most [`PATH_BYTES`], cut at a character.
fn kept_path(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let mut end = path.len().min(PATH_BYTES);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path[..end].to_owned()
}

/// The Machine's rows and counts, and a signal for the live channels when they change.
pub struct RouteLog {
    ring: Mutex<Ring>,
    /// The last row's `seq`: each live channel waits on it and sends what is newer.
    changed: watch::Sender<u32>,
}

#[derive(Default)]
struct Ring {
    /// The last [`ROUTE_ROWS`] rows, oldest first.
    rows: VecDeque<RouteView>,
    /// Over every row ever recorded, kept or not.
    totals: RouteTotals,
}

impl Default for RouteLog {
    fn default() -> Self {
        RouteLog {
            ring: Mutex::default(),
            changed: watch::Sender::new(0),
        }
    }
}

impl RouteLog {
    /// Records one served request of the owner.
    pub fn record(&self, what: RequestKind, path: &str, arrival: Arrival, answer_us: u64) {
        let seq = {
            let mut ring = self.ring.lock().expect("route log lock");
            let totals = &mut ring.totals;
            totals.served = totals.served.saturating_add(1);
            match arrival {
                Arrival::Replayed { .. } => totals.replayed = totals.replayed.saturating_add(1),
                Arrival::ReplayCache => totals.cache_hits = totals.cache_hits.saturating_add(1),
                Arrival::Direct => {}
            }
            let seq = totals.served;
            if ring.rows.len() == ROUTE_ROWS {
                ring.rows.pop_front();
            }
            ring.rows.push_back(RouteView {
                seq,
                what,
                path: kept_path(path),
                arrival,
                answer_tenths_ms: u32::try_from(answer_us / 100).unwrap_or(u32::MAX),
            });
            seq
        };
        self.changed.send_replace(seq);
    }

    /// The rows newer than `seq` that the Machine still keeps, and the counts.
    pub fn since(&self, seq: u32) -> (Vec<RouteView>, RouteTotals) {
        let ring = self.ring.lock().expect("route log lock");
        let rows = ring.rows.iter().filter(|r| r.seq > seq).cloned().collect();
        (rows, ring.totals)
    }

    pub fn subscribe(&self) -> watch::Receiver<u32> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000_000;

    #[test]
    fn a_replay_names_its_machine_region_and_age_and_a_cache_hit_is_told_apart() {
        let src = format!(
            "instance=0123456789abcd;region=ord;t={};state=x",
            NOW - 42_500
        );
        assert_eq!(
            arrival(Some(&src), None, NOW),
            Arrival::Replayed {
                machine: "0123456789abcd".into(),
                region: "ord".into(),
                after_ms: Some(42)
            }
        );
        assert_eq!(arrival(None, Some("hit"), NOW), Arrival::ReplayCache);
        assert_eq!(arrival(None, Some("miss"), NOW), Arrival::Direct);
        assert_eq!(arrival(None, None, NOW), Arrival::Direct);
        // A `t` from a clock ahead, or far behind, is no age; the replay still is one.
        for t in [NOW + 5, NOW - 120_000_000] {
            let src = format!("instance=0123456789abcd;region=ord;t={t}");
            assert!(matches!(
                arrival(Some(&src), None, NOW),
                Arrival::Replayed { after_ms: None, .. }
            ));
        }
    }

    #[test]
    fn a_replay_source_that_does_not_parse_is_not_shown() {
        for src in [
            "instance=<script>;region=ord",
            "instance=0123456789abcd;region=zzzz",
            "region=ord",
            "garbage",
            "",
        ] {
            assert_eq!(arrival(Some(src), None, NOW), Arrival::Direct, "{src}");
        }
    }

    #[test]
    fn requests_are_told_apart_by_method_path_and_upgrade() {
        let get = &Method::GET;
        let kind = |path, claim, upgrade| request_kind(get, path, claim, upgrade);
        assert_eq!(
            request_kind(&Method::POST, "/m/0123456789abcd/claim", true, false),
            RequestKind::Handover
        );
        assert_eq!(kind("/m/0123456789abcd", false, false), RequestKind::Page);
        assert_eq!(kind("/pkg/flyby.x.wasm", false, false), RequestKind::Bundle);
        assert_eq!(
            kind("/api/machine", false, false),
            RequestKind::ServerFunction
        );
        assert_eq!(kind("/api/channel", false, true), RequestKind::LiveChannel);
        assert_eq!(kind("/favicon.ico", false, false), RequestKind::File);
    }

    #[test]
    fn the_ring_keeps_its_last_rows_counts_everything_and_keeps_no_query() {
        let log = RouteLog::default();
        let mut seen = log.subscribe();
        for i in 0..1000 {
            let arrival = if i % 2 == 0 {
                Arrival::ReplayCache
            } else {
                Arrival::Direct
            };
            log.record(RequestKind::File, "/favicon.ico?secret=1", arrival, 1_234);
        }
        let (rows, totals) = log.since(0);
        assert_eq!(rows.len(), ROUTE_ROWS);
        assert_eq!(
            rows.first().map(|r| r.seq),
            Some(1000 - ROUTE_ROWS as u32 + 1)
        );
        assert_eq!(
            rows.last().map(|r| (r.seq, r.answer_tenths_ms)),
            Some((1000, 12))
        );
        assert!(rows.iter().all(|r| r.path == "/favicon.ico"));
        assert_eq!(
            totals,
            RouteTotals {
                served: 1000,
                replayed: 0,
                cache_hits: 500
            }
        );
        assert_eq!(log.since(998).0.len(), 2);
        assert!(seen.has_changed().unwrap());
        assert_eq!(*seen.borrow_and_update(), 1000);
        let long = format!("/{}", "é".repeat(100));
        log.record(RequestKind::File, &long, Arrival::Direct, 0);
        assert!(log.since(1000).0[0].path.len() <= PATH_BYTES);
    }
}
