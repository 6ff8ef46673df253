//! The product in a plural world: visitors on three continents, on a platform that plays the
//! distance between regions and Fly's boot times (`flyby-local --timings fly`). A region bug,
//! a distance bug or a wait that only a slow platform exposes shows here.
#![cfg(feature = "ssr")]

use crate::support;

use flyby::{
    app::{
        launcher::StartLaunch,
        protocol::{ClientMessage, LaunchTicket, MachineInfo, ServerMessage, Step},
        AppError,
    },
    fly::{distance_km, nearest_regions, MachineId, RegionCode},
    local::timings::fibre_round_trip,
};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::time::{Duration, Instant};
use support::local::{self, frame, unframe, Api, Visitor};

fn code(s: &str) -> RegionCode {
    RegionCode::parse(s).unwrap()
}

/// What a visitor's own Machine tells its page, and the round trip its live channel measures
/// (the best of five pings, as a page's reading settles).
async fn own_page(visitor: &Visitor) -> (MachineInfo, Duration) {
    let about = visitor
        .client()
        .post(visitor.machines("/api/machine"))
        .send()
        .await
        .unwrap();
    assert_eq!(about.status(), 200);
    let info: MachineInfo = local::answer(about).await;
    let mut ws = visitor.websocket(&visitor.machines("/api/channel")).await;
    let mut best = Duration::MAX;
    for seq in 0..5 {
        let sent = Instant::now();
        ws.send(frame(&ClientMessage::Ping { seq })).await.unwrap();
        loop {
            let message = ws.next().await.expect("open").unwrap();
            if let Some(ServerMessage::Pong { seq: s }) = unframe(message) {
                assert_eq!(s, seq);
                break;
            }
        }
        best = best.min(sent.elapsed());
    }
    (info, best)
}

/// A visitor entering Fly at `edge` launches and claims; their Machine's region, what their
/// page says and the round trip it measures.
async fn visit_from(
    platform: &support::platform::Local,
    api: &Api,
    ip: String,
    edge: &str,
) -> (RegionCode, MachineInfo, Duration) {
    let visitor = Visitor::from_region(platform, &ip, edge);
    let id: MachineId = visitor.launch_and_claim().await;
    let region = code(api.machine(id).await["region"].as_str().unwrap());
    let (info, rtt) = own_page(&visitor).await;
    assert_eq!(info.id, id.as_str());
    (region, info, rtt)
}

/// The round trip shown is the emulated one, give or take: never shorter (light does not go
/// faster), and not many times longer (a hop counted twice, a replay where none should be).
fn assert_round_trip_near(shown: Duration, edge: RegionCode, region: RegionCode) {
    let emulated = fibre_round_trip(edge, region);
    assert!(
        shown >= emulated.mul_f64(0.9),
        "{edge}->{region}: shown {shown:?} is shorter than the emulated {emulated:?}"
    );
    assert!(
        shown <= emulated * 3 + Duration::from_millis(150),
        "{edge}->{region}: shown {shown:?}, emulated {emulated:?}"
    );
}

#[tokio::test]
async fn visitors_on_three_continents_get_a_machine_in_their_region_and_see_its_round_trip() {
    let platform = local::start(&["--timings=fly"]).await;
    let api = Api::new(&platform);
    let edges = [
        ("syd", "Sydney"),
        ("gru", "São Paulo"),
        ("ams", "Amsterdam"),
    ];
    let visits =
        futures::future::join_all(edges.iter().enumerate().map(|(i, (edge, _))| {
            visit_from(&platform, &api, format!("203.0.113.{}", i + 1), edge)
        }))
        .await;
    for ((edge, city), (region, info, rtt)) in edges.iter().zip(visits) {
        assert_eq!(
            region.as_str(),
            *edge,
            "created in the visitor's edge region"
        );
        assert_eq!(info.region.as_deref(), Some(*edge));
        assert_eq!(info.edge_city.as_deref(), Some(region.city()));
        assert_eq!(info.city.as_deref(), Some(*city));
        assert_eq!(info.distance_km, Some(0), "the same region: no distance");
        assert_round_trip_near(rtt, code(edge), region);
    }
}

#[tokio::test]
async fn a_visitor_whose_region_is_full_gets_the_next_nearest_and_sees_how_far_it_is() {
    let platform = local::start(&["--timings=fly"]).await;
    let api = Api::new(&platform);
    api.fault(json!({"kind": "no_capacity", "region": "syd"}))
        .await;
    // The fallback is a step of the launch the visitor watches.
    let watcher = Visitor::from_region(&platform, "203.0.113.8", "syd");
    let launch = watcher.start_launch().await.unwrap();
    let progress = watcher.follow_launch(&launch).await;
    let next = nearest_regions(code("syd"))[1];
    assert!(
        progress.steps.iter().any(|s| s.step
            == Step::NoRoom {
                full: code("syd"),
                next
            }),
        "{:?}",
        progress.steps
    );
    let label = Step::NoRoom {
        full: code("syd"),
        next,
    }
    .label();
    assert_eq!(label, format!("No room in Sydney: trying {}", next.city()));
    let (region, info, rtt) = visit_from(&platform, &api, "203.0.113.9".into(), "syd").await;
    assert_eq!(region, next, "the next-nearest region");
    assert_eq!(info.edge_city.as_deref(), Some("Sydney"));
    let km = distance_km(code("syd"), next).unwrap().round() as u32;
    assert_eq!(info.distance_km, Some(km));
    assert!(km > 1000, "{km} km");
    assert_round_trip_near(rtt, code("syd"), next);
}

#[tokio::test]
async fn a_visitor_from_an_edge_flyby_does_not_know_gets_a_machine_and_a_page_without_a_distance() {
    let platform = local::start(&["--timings=fly"]).await;
    let api = Api::new(&platform);
    let (_, info, _) = visit_from(&platform, &api, "203.0.113.10".into(), "zzz").await;
    assert_eq!(info.edge_region.as_deref(), Some("zzz"));
    assert_eq!(
        info.edge_city.as_deref(),
        Some("zzz"),
        "the code, for want of a city"
    );
    assert_eq!(info.distance_km, None);
}

#[tokio::test]
async fn a_visitor_landing_on_each_of_three_launchers_in_turn_has_one_budget_and_one_launch() {
    let platform = local::start(&[
        "--launchers=3",
        "--launcher-env=FLYBY_LAUNCHES_PER_MINUTE=1",
    ])
    .await;
    let api = Api::new(&platform);
    let launchers = api.machine_ids("flyby").await;
    assert_eq!(launchers.len(), 3);
    local::until_launchers_know_each_other(&platform, 3).await;

    let visitor = Visitor::new(&platform, "203.0.113.50");
    let first = visitor
        .start_launch_on(Some(launchers[0]))
        .await
        .expect("a launch");
    // The same visitor pressing again on the other launchers while it runs: the same launch.
    for launcher in &launchers[1..] {
        assert_eq!(
            visitor.start_launch_on(Some(*launcher)).await.as_ref(),
            Ok(&first),
            "one launch at a time, across launchers (pressed on {launcher})"
        );
    }
    assert_eq!(visitor.follow_launch(&first).await.outcome, Some(Ok(())));
    let handover = visitor.take_handover(&first).await.expect("hand-over");
    let machine = visitor.claim(&handover).await;
    assert_eq!(api.machines().await.len(), 1, "one Machine for the visitor");
    visitor.switch_off().await;
    api.wait_destroyed(machine).await;
    // Their one launch a minute is spent, whichever launcher they land on.
    for launcher in &launchers {
        let again = visitor.start_launch_on(Some(*launcher)).await;
        assert!(
            matches!(again, Err(AppError::TooManyLaunches { .. })),
            "a second launch on {launcher}: {again:?}"
        );
    }
}

#[tokio::test]
async fn a_visitor_picking_a_region_on_the_map_gets_their_machine_there_and_a_bad_code_is_refused()
{
    let platform = local::start(&[]).await;
    let api = Api::new(&platform);
    // From Amsterdam's edge, Sydney picked on the map.
    let visitor = Visitor::new(&platform, "203.0.113.70");
    for bad in ["xyz", "SYD", "sydney", "<b>"] {
        let pick = StartLaunch {
            region: Some(bad.into()),
        };
        let refused = visitor.call::<LaunchTicket>("launch", &pick).await;
        assert!(
            matches!(&refused, Err(AppError::BadRequest(m)) if m.contains("is not a Fly region")),
            "{bad}: {refused:?}"
        );
    }
    assert!(
        api.machines().await.is_empty(),
        "a refused pick changes nothing"
    );
    let pick = StartLaunch {
        region: Some("syd".into()),
    };
    let ticket: LaunchTicket = visitor.call("launch", &pick).await.unwrap();
    assert_eq!(
        visitor.follow_launch(&ticket.id).await.outcome,
        Some(Ok(()))
    );
    let handover = visitor.take_handover(&ticket.id).await.unwrap();
    let machine = visitor.claim(&handover).await;
    assert_eq!(api.machine(machine).await["region"], "syd");
    let (info, _) = own_page(&visitor).await;
    assert_eq!(info.edge_city.as_deref(), Some("Amsterdam"));
    assert!(info.distance_km.is_some_and(|km| km > 16_000), "{info:?}");
}
