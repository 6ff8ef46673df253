//! The owner's routing panel, from the Machine's side: its live channel tells the owner how
//! each of their requests arrived (here, with every request sent to a wrong Machine first, by
//! `fly-replay` or the replay cache), never a stranger's request or another owner's, and keeps
//! a bounded number of rows however many requests come.
#![cfg(feature = "ssr")]

use crate::support;

use flyby::{
    app::protocol::{Arrival, RequestKind, RouteTotals, RouteView, ServerMessage},
    fly::MachineId,
    server::affinity::routes::ROUTE_ROWS,
};
use futures::StreamExt;
use reqwest::header;
use support::local::{self, unframe, Api, Visitor};

/// The rows and counts the owner's page gets when it opens its live channel.
async fn panel(owner: &Visitor) -> (Vec<RouteView>, RouteTotals) {
    let mut ws = owner.websocket(&owner.machines("/api/channel")).await;
    while let Some(Ok(message)) = ws.next().await {
        if let Some(ServerMessage::Routes {
            fresh,
            rows,
            totals,
        }) = unframe(message)
        {
            assert!(fresh, "a new channel starts with every row kept");
            return (rows, totals);
        }
    }
    panic!("the channel closed before its routing rows");
}

/// The resident set of the Machine's process, in KB.
async fn rss_kb(api: &Api, machine: MachineId) -> u64 {
    let pid = api
        .machines()
        .await
        .into_iter()
        .find(|m| m["id"] == machine.to_string())
        .and_then(|m| m["pid"].as_u64())
        .expect("a running Machine's pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn the_panel_shows_the_owners_requests_replayed_and_never_a_strangers_or_another_owners() {
    let platform = local::start(&[]).await;
    // The other owner first: so that there is a wrong Machine for the owner's hand-over too.
    let other = Visitor::new(&platform, "203.0.113.11");
    let theirs = other.launch_and_claim().await;
    let owner = Visitor::new(&platform, "203.0.113.10");
    let mine = owner.launch_and_claim().await;
    assert_ne!(mine, theirs);

    // The owner's page (again: the hand-over answered with it) and a file.
    assert_eq!(owner.machine_page(mine).await.status(), 200);
    let favicon = owner
        .client()
        .get(owner.machines("/favicon.ico"))
        .send()
        .await
        .unwrap();
    assert_eq!(favicon.status(), 200);
    // A stranger, without a cookie or with a forged one, and the other owner with theirs.
    let stranger = Visitor::new(&platform, "198.51.100.7");
    let refused = stranger
        .client()
        .get(stranger.machines(&format!("/m/{mine}/stranger")))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let forged = stranger
        .client()
        .get(stranger.machines(&format!("/m/{mine}/forged")))
        .header(header::COOKIE, format!("flyby_owner={mine}.not-the-secret"))
        .send()
        .await
        .unwrap();
    assert!(forged.status().is_client_error(), "{}", forged.status());
    let claim = stranger
        .client()
        .post(stranger.machines(&format!("/m/{mine}/claim")))
        .form(&[("secret", "guessed")])
        .send()
        .await
        .unwrap();
    assert!(claim.status().is_client_error(), "{}", claim.status());
    let trespass = other
        .client()
        .get(other.machines(&format!("/m/{mine}/other-owner")))
        .send()
        .await
        .unwrap();
    assert_eq!(trespass.status(), 403);
    // The other owner's own requests reach their Machine, never this one.
    assert_eq!(other.machine_page(theirs).await.status(), 200);

    let (rows, totals) = panel(&owner).await;
    let kinds: Vec<RequestKind> = rows.iter().map(|r| r.what).collect();
    assert_eq!(
        kinds,
        [
            RequestKind::Handover,
            RequestKind::Page,
            RequestKind::File,
            RequestKind::LiveChannel
        ],
        "{rows:#?}"
    );
    assert!(rows
        .iter()
        .all(|r| r.path.starts_with(&format!("/m/{mine}"))
            || r.path == "/favicon.ico"
            || r.path == "/api/channel"));
    // Every one reached a wrong Machine first: replayed, or sent on by the replay cache that
    // a replay taught; the first (the hand-over) can only have been replayed.
    assert!(
        matches!(rows[0].arrival, Arrival::Replayed { .. }),
        "{rows:#?}"
    );
    for row in &rows {
        match &row.arrival {
            Arrival::Replayed {
                machine, region, ..
            } => {
                let from = MachineId::parse(machine).unwrap();
                assert_ne!(from, mine, "a replay comes from another Machine");
                assert_eq!(region.len(), 3);
            }
            Arrival::ReplayCache => {}
            Arrival::Direct => panic!("a request went straight to its Machine: {row:?}"),
        }
    }
    assert_eq!(totals.served as usize, rows.len());
    assert_eq!(
        (totals.replayed + totals.cache_hits) as usize,
        rows.len(),
        "{totals:?}"
    );

    // The other owner's panel has their requests only.
    let (theirs_rows, _) = panel(&other).await;
    assert!(
        theirs_rows
            .iter()
            .all(|r| !r.path.contains(&mine.to_string())),
        "{theirs_rows:#?}"
    );
}

#[tokio::test]
async fn a_flood_of_the_owners_requests_keeps_the_panel_bounded() {
    let platform = local::start(&[]).await;
    let api = Api::new(&platform);
    let owner = Visitor::new(&platform, "203.0.113.20");
    let mine = owner.launch_and_claim().await;
    let favicon = owner.machines("/favicon.ico");
    let flood = |n: usize| {
        futures::stream::iter(0..n)
            .map(|_| owner.client().get(&favicon).send())
            .buffer_unordered(16)
            .for_each(|r| async move {
                assert_eq!(r.unwrap().status(), 200);
            })
    };
    // Memory after a warm-up, then after two floods of 4,000: the ring's rows are the same
    // 64 however many came, so the second flood adds (next to) nothing.
    flood(200).await;
    let warm = rss_kb(&api, mine).await;
    flood(4_000).await;
    let first = rss_kb(&api, mine).await;
    flood(4_000).await;
    let second = rss_kb(&api, mine).await;
    println!(
        "routing ring: the Machine's RSS after 200 requests {warm} KB, after 4,200 {first} KB, \
         after 8,200 {second} KB ({:+} KB over the last 4,000)",
        second as i64 - first as i64
    );
    let (rows, totals) = panel(&owner).await;
    assert_eq!(rows.len(), ROUTE_ROWS);
    assert!(totals.served as usize > 8_200, "{totals:?}");
    // The newest rows are kept, in order.
    assert!(rows.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(rows.last().map(|r| r.what), Some(RequestKind::LiveChannel));
}
