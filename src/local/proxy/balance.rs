//! Which Machine gets a request: the load-balancing choices of the proxy, as pure functions
//! over the routing table's candidates, so each `--balance` mode is unit-tested.
//!
//! fly-proxy sends a request to the nearest region with a healthy Machine. The local proxy can
//! also spread requests (`random`, `round-robin`) or, for tests, pick the wrong Machine on
//! purpose (`wrong-first`, see [`avoided`]) so that the app's affinity layer is exercised on
//! every request instead of being lucky.

use super::{replay::RegionChoice, table::Route};
use crate::fly::{self, MachineId, RegionCode};
use std::sync::Arc;

/// How to choose among equally acceptable Machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Nearest region to the edge first (great-circle distance, unknown regions last); ties
    /// in turn.
    Nearest,
    Random,
    /// In turn, in the order of Machine ids.
    RoundRobin,
}

/// Distance from the edge to a Machine's region, unknown regions (retired codes) last.
pub fn distance(edge: RegionCode, region: RegionCode) -> f64 {
    fly::distance_km(edge, region).unwrap_or(f64::INFINITY)
}

/// The Machines of the first entry of `regions` that has any (all of `routes` when `regions`
/// is empty). An `any` entry matches every region, which is what makes a list ending in `any`
/// a preference rather than a hard target.
pub fn in_regions<'a>(routes: &[&'a Arc<Route>], regions: &[RegionChoice]) -> Vec<&'a Arc<Route>> {
    if regions.is_empty() {
        return routes.to_vec();
    }
    for choice in regions {
        let tier: Vec<_> = routes
            .iter()
            .filter(|r| choice.contains(r.region))
            .copied()
            .collect();
        if !tier.is_empty() {
            return tier;
        }
    }
    Vec::new()
}

/// The order in which to try `routes`: the one `strategy` picks first, then the others by
/// distance, so that a refused connection moves on to the next best Machine. `tick` is a
/// counter that advances with each choice (round-robin and ties); `random` maps a length to
/// a random index below it.
pub fn order<'a>(
    routes: &[&'a Arc<Route>],
    strategy: Strategy,
    edge: RegionCode,
    tick: usize,
    random: impl FnOnce(usize) -> usize,
) -> Vec<&'a Arc<Route>> {
    if routes.is_empty() {
        return Vec::new();
    }
    let mut by_distance: Vec<&Arc<Route>> = routes.to_vec();
    // A stable sort on (distance, id): the candidates arrive sorted by id.
    by_distance.sort_by(|a, b| {
        distance(edge, a.region)
            .total_cmp(&distance(edge, b.region))
            .then(a.id.cmp(&b.id))
    });
    let first = match strategy {
        Strategy::Nearest => {
            let best = distance(edge, by_distance[0].region);
            let ties = by_distance
                .iter()
                .take_while(|r| distance(edge, r.region) == best)
                .count();
            tick % ties
        }
        Strategy::RoundRobin => {
            let chosen = routes[tick % routes.len()];
            by_distance
                .iter()
                .position(|r| Arc::ptr_eq(r, chosen))
                .unwrap_or(0)
        }
        Strategy::Random => {
            let chosen = routes[random(routes.len()) % routes.len()];
            by_distance
                .iter()
                .position(|r| Arc::ptr_eq(r, chosen))
                .unwrap_or(0)
        }
    };
    let chosen = by_distance.remove(first);
    by_distance.insert(0, chosen);
    by_distance
}

/// `wrong-first`: the Machines a request should NOT land on first, when another exists:
/// (1) any candidate whose id appears in the request's path, query or cookies (the app would
/// replay to it), else (2) the Machine that last served this visitor (same Host and Cookie).
/// The result is only a preference: when every candidate is avoided, none is.
pub fn avoided(
    routes: &[&Arc<Route>],
    path_and_query: &str,
    cookie: &str,
    last_served: Option<MachineId>,
) -> Vec<MachineId> {
    let named: Vec<MachineId> = routes
        .iter()
        .filter(|r| path_and_query.contains(r.id.as_str()) || cookie.contains(r.id.as_str()))
        .map(|r| r.id)
        .collect();
    if !named.is_empty() && named.len() < routes.len() {
        return named;
    }
    match last_served {
        Some(last) if routes.len() > 1 && routes.iter().any(|r| r.id == last) => vec![last],
        _ => Vec::new(),
    }
}

/// `routes` without the avoided ones, unless that leaves nothing; the avoided ones follow, so
/// that they are still tried when all the others refuse.
pub fn avoiding<'a>(
    routes: &[&'a Arc<Route>],
    avoid: &[MachineId],
) -> (Vec<&'a Arc<Route>>, Vec<&'a Arc<Route>>) {
    let (bad, good): (Vec<_>, Vec<_>) = routes.iter().partition(|r| avoid.contains(&r.id));
    if good.is_empty() {
        (bad, Vec::new())
    } else {
        (good, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::proxy::replay::{RegionAlias, RegionChoice};

    fn route(id: &str, region: &str) -> Arc<Route> {
        Arc::new(Route::new(
            MachineId::parse(id).unwrap(),
            Arc::from("app"),
            RegionCode::parse(region).unwrap(),
            "127.0.0.2:8080".parse().unwrap(),
            Arc::from(Vec::new()),
        ))
    }

    fn ids(routes: &[&Arc<Route>]) -> Vec<String> {
        routes.iter().map(|r| r.id.to_string()).collect()
    }

    fn region(s: &str) -> RegionCode {
        RegionCode::parse(s).unwrap()
    }

    #[test]
    fn nearest_picks_the_closest_region_and_turns_among_ties() {
        let routes = [
            route("00000000000001", "syd"),
            route("00000000000002", "lhr"),
            route("00000000000003", "sea"),
            route("00000000000004", "lhr"),
            route("00000000000005", "fra"),
        ];
        let refs: Vec<_> = routes.iter().collect();
        let ams = region("ams");
        let first = order(&refs, Strategy::Nearest, ams, 0, |_| 0);
        assert_eq!(
            ids(&first),
            [
                "00000000000002",
                "00000000000004",
                "00000000000005",
                "00000000000001",
                "00000000000003"
            ],
            "lhr twice, fra, then far syd, then unknown sea last"
        );
        let second = order(&refs, Strategy::Nearest, ams, 1, |_| 0);
        assert_eq!(second[0].id.as_str(), "00000000000004");
        assert_eq!(second[1].id.as_str(), "00000000000002");
        let from_sydney = order(&refs, Strategy::Nearest, region("syd"), 7, |_| 0);
        assert_eq!(from_sydney[0].id.as_str(), "00000000000001");
    }

    #[test]
    fn an_unknown_edge_makes_every_machine_a_tie() {
        let routes = [
            route("00000000000001", "ams"),
            route("00000000000002", "syd"),
        ];
        let refs: Vec<_> = routes.iter().collect();
        let picks: Vec<_> = (0..4)
            .map(|t| order(&refs, Strategy::Nearest, region("zzz"), t, |_| 0)[0].id)
            .collect();
        assert_eq!(picks[0], picks[2]);
        assert_ne!(picks[0], picks[1]);
    }

    #[test]
    fn round_robin_and_random_visit_everyone() {
        let routes = [
            route("00000000000001", "ams"),
            route("00000000000002", "ams"),
            route("00000000000003", "syd"),
        ];
        let refs: Vec<_> = routes.iter().collect();
        let rr: Vec<_> = (0..3)
            .map(|t| order(&refs, Strategy::RoundRobin, region("ams"), t, |_| 0)[0].id)
            .collect();
        assert_eq!(rr, routes.iter().map(|r| r.id).collect::<Vec<_>>());
        let random = order(&refs, Strategy::Random, region("ams"), 0, |n| {
            assert_eq!(n, 3);
            2
        });
        assert_eq!(random[0].id.as_str(), "00000000000003");
        assert_eq!(random.len(), 3);
    }

    #[test]
    fn region_lists_pick_the_first_tier_with_machines() {
        let routes = [
            route("00000000000001", "ams"),
            route("00000000000002", "syd"),
            route("00000000000003", "iad"),
        ];
        let routes: Vec<_> = routes.iter().collect();
        let code = |s| RegionChoice::Code(region(s));
        assert_eq!(
            ids(&in_regions(&routes, &[code("syd")])),
            ["00000000000002"]
        );
        assert!(in_regions(&routes, &[code("nrt")]).is_empty());
        assert_eq!(
            in_regions(
                &routes,
                &[code("nrt"), RegionChoice::Alias(RegionAlias::Any)]
            )
            .len(),
            3
        );
        assert_eq!(
            ids(&in_regions(
                &routes,
                &[
                    code("nrt"),
                    RegionChoice::Alias(RegionAlias::Us),
                    code("ams")
                ]
            )),
            ["00000000000003"]
        );
        assert_eq!(in_regions(&routes, &[]).len(), 3);
    }

    #[test]
    fn wrong_first_avoids_the_named_machine_then_the_last_one() {
        let owned = [
            route("0000000000000a", "ams"),
            route("0000000000000b", "ams"),
        ];
        let routes: Vec<_> = owned.iter().collect();
        let a = routes[0].id;
        let b = routes[1].id;
        assert_eq!(avoided(&routes, "/m/0000000000000b/x", "", Some(a)), [b]);
        assert_eq!(avoided(&routes, "/?x=1", "pin=0000000000000b", None), [b]);
        assert_eq!(
            avoided(&routes, "/", "", Some(a)),
            [a],
            "no name: the last one"
        );
        assert!(avoided(&routes, "/", "", None).is_empty());
        // Both named: naming is no signal, fall back to the last Machine.
        assert_eq!(
            avoided(&routes, "/0000000000000a/0000000000000b", "", Some(b)),
            [b]
        );
        let single = route("0000000000000a", "ams");
        assert!(avoided(&[&single], "/0000000000000a", "", Some(a)).is_empty());

        let refs = routes.clone();
        let (first, then) = avoiding(&refs, &[b]);
        assert_eq!(ids(&first), ["0000000000000a"]);
        assert_eq!(ids(&then), ["0000000000000b"]);
        let (first, then) = avoiding(&refs, &[a, b]);
        assert_eq!(first.len(), 2);
        assert!(then.is_empty());
    }
}
