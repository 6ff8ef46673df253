//! A visitor's whole journey through the local Fly platform, with the proxy sending every
//! request to the wrong Machine first: the launch, the hand-over, the owner's page, server
//! function, WebSocket and static files, strangers refused, every way the Machine ends, and
//! the launcher's limits and failure paths, each leaving no Machine behind.
#![cfg(feature = "ssr")]

use crate::support;

use flyby::app::{
    launcher::StartLaunch,
    protocol::{Arrival, ClientMessage, LaunchCall, LaunchEnd, MachineInfo, ServerMessage, Step},
    AppError,
};
use flyby::server::affinity::LAUNCH_COOKIE;
use futures::{SinkExt, StreamExt};
use reqwest::{header, StatusCode};
use serde_json::json;
use support::local::{self, frame, unframe, Api, Visitor};

fn answered_by(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("flyby-machine")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_hand_over_asked_for_at_once_answers_when_the_machine_serves() {
    let platform = local::start(&[]).await;
    let api = Api::new(&platform);
    let visitor = Visitor::new(&platform, "203.0.113.1");
    let launch = visitor.start_launch().await.unwrap();
    // As the page does: no waiting for the progress channel, the hand-over right away.
    let Ok(LaunchEnd::HandedOver {
        steps,
        route,
        handover,
    }) = visitor.launch_end(&launch).await
    else {
        panic!("the launch did not hand over");
    };
    let steps: Vec<_> = steps.into_iter().map(|s| s.step).collect();
    assert_eq!(steps.last(), Some(&Step::Serving), "{steps:?}");
    // The launch's route: one of the two launchers ran it, and the hand-over, pinned to it,
    // reached the other first and was replayed from there.
    let route = route.expect("the launch's route");
    let launchers = api.machine_ids("flyby").await;
    assert!(launchers.contains(&route.launcher), "{route:?}");
    let other = launchers.iter().find(|l| **l != route.launcher).unwrap();
    let calls: Vec<_> = route.calls.iter().map(|(call, _)| *call).collect();
    assert_eq!(calls, [LaunchCall::Start, LaunchCall::Handover]);
    assert!(
        matches!(&route.calls[1].1, Arrival::Replayed { machine, .. } if machine == other.as_str()),
        "{route:?}"
    );
    // Its metrics (read through flyby-local's admin endpoint, from inside the platform's
    // network) count the launch and its phases.
    let metrics = api.metrics(route.launcher).await;
    assert!(
        metrics.contains("flyby_launch_phase_seconds_count{phase=\"total\"} 1"),
        "{metrics}"
    );
    // It answered once the Machine served: the claim lands on the owner's page at once.
    let machine = visitor.claim(&handover).await;
    assert_eq!(visitor.machine_page(machine).await.status(), StatusCode::OK);
    assert_eq!(api.machines().await.len(), 1);
}

/// The page asks for the hand-over at once, and that request waits for the whole launch: a
/// proxy may cut it after the launch ended, with the launcher none the wiser, and the page then
/// asks again (`app::launcher::run`). The visitor gets it again; a stranger holding the
/// launch's id and its pin never does.
#[tokio::test]
async fn the_hand_over_goes_to_its_visitor_whenever_they_ask_and_to_nobody_else() {
    let platform = local::start(&[]).await;
    let visitor = Visitor::new(&platform, "203.0.113.1");
    let launch = visitor.start_launch().await.unwrap();
    let pin = visitor.launcher("/");
    // The first request, whose answer the proxy cut: the visitor's own, from their address and
    // with their pin, but its answer (and the pin's clearing) never reached their browser.
    let cut = Visitor::new(&platform, &visitor.ip);
    cut.copy_cookie(&visitor, &pin, LAUNCH_COOKIE);
    let lost = cut
        .take_handover(&launch)
        .await
        .expect("the first hand-over");
    let stranger = Visitor::new(&platform, "203.0.113.2");
    stranger.copy_cookie(&visitor, &pin, LAUNCH_COOKIE);
    assert!(matches!(
        stranger.take_handover(&launch).await,
        Err(AppError::BadRequest(_))
    ));
    let again = visitor.take_handover(&launch).await.expect("asked again");
    assert!(again == lost, "the same hand-over");
    assert!(
        visitor.cookie(&pin, LAUNCH_COOKIE).is_none(),
        "the pin is cleared"
    );
    let machine = visitor.claim(&again).await;
    assert_eq!(visitor.machine_page(machine).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_launch_creates_a_machine_with_its_whole_config_and_hands_it_over() {
    let platform = local::start(&[]).await;
    let api = Api::new(&platform);
    // From Sydney, while the platform's own edge (where a create without a region would go)
    // is Amsterdam: the Machine's region shows that flyby asked for the visitor's.
    let visitor = Visitor::from_region(&platform, "203.0.113.1", "syd");
    let launch = visitor.start_launch().await.unwrap();
    let progress = visitor.follow_launch(&launch).await;
    assert_eq!(progress.outcome, Some(Ok(())));
    let steps: Vec<_> = progress.steps.iter().map(|s| s.step.clone()).collect();
    assert_eq!(steps[0], Step::Requested);
    assert!(
        matches!(&steps[1], Step::Created { region } if region.as_str() == "syd" && region.city() == "Sydney"),
        "{steps:?}"
    );
    assert_eq!(&steps[2..], &[Step::Started, Step::Serving]);
    assert!(
        progress.steps.windows(2).all(|w| w[0].at_ms <= w[1].at_ms),
        "times in order"
    );

    let machines = api.machines().await;
    assert_eq!(machines.len(), 1);
    let m = &api
        .machine(flyby::fly::MachineId::parse(machines[0]["id"].as_str().unwrap()).unwrap())
        .await;
    let config = &m["config"];
    assert_eq!(m["region"], "syd", "the visitor's edge region");
    assert!(m["name"].as_str().unwrap().starts_with("flyby-slot-"));
    assert_eq!(
        config["image"], "registry.fly.io/flyby:local",
        "the launcher's own image"
    );
    assert_eq!(config["env"]["FLYBY_ROLE"], "ephemeral");
    assert_eq!(
        config["env"]["FLYBY_OWNER_HASH"].as_str().unwrap().len(),
        64
    );
    assert_eq!(config["env"]["FLYBY_TTL_SECS"], "120");
    assert_eq!(config["auto_destroy"], true);
    assert_eq!(config["restart"]["policy"], "no");
    assert_eq!(config["guest"]["memory_mb"], 256);
    assert_eq!(config["services"][0]["internal_port"], 8080);
    assert_eq!(config["services"][0]["autostart"], false);
    assert_eq!(
        config["services"][0]["ports"][0]["http_options"]["replay_cache"][0]["name"],
        "flyby_owner"
    );
    assert_eq!(config["checks"]["health"]["path"], "/health");
    assert_eq!(config["metadata"]["flyby"], "ephemeral");
    assert_eq!(config["metadata"]["flyby_launch"], launch.as_str());

    let handover = visitor.take_handover(&launch).await.unwrap();
    assert!(
        handover.claim_url.starts_with(&visitor.machines("/m/")),
        "{}",
        handover.claim_url
    );
    assert!(
        !handover.claim_url.contains(&handover.secret),
        "the secret is never in a URL"
    );
    assert!(
        !config.to_string().contains(&handover.secret),
        "the Machine knows only the hash"
    );
    let machine = visitor.claim(&handover).await;
    assert_eq!(machine.as_str(), m["id"].as_str().unwrap());
}

/// Fly's session replay cache, keyed on the owner cookie, sends the owner's requests straight to
/// their Machine once a replay it may cache has gone there: one for a static file (replays
/// with `timeout` or `fallback` are never cached, Fly docs, networking/dynamic-request-routing).
#[tokio::test]
async fn the_owners_requests_go_straight_to_their_machine_once_the_replay_cache_knows_it() {
    let platform = local::start(&[]).await;
    let api = Api::new(&platform);
    let alice = Visitor::new(&platform, "203.0.113.1");
    let bob = Visitor::new(&platform, "203.0.113.2");
    let (a, _) = tokio::join!(alice.launch_and_claim(), bob.launch_and_claim());
    let hits = || async {
        api.stats().await["counters"]["proxy.replay_cache.hits"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = hits().await;
    // The first static file is replayed (to-the-wrong-Machine-first: --balance wrong-first),
    // and the replay cache learns where the owner's Machine is.
    let css = alice
        .client()
        .get(alice.machines("/pkg/flyby.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(answered_by(&css), a.as_str());
    // From then on, a page, a server function and a static file all go straight to it.
    let requests = [
        alice.client().get(alice.machines(&format!("/m/{a}"))),
        alice.client().post(alice.machines("/api/machine")),
        alice.client().get(alice.machines("/pkg/flyby.css")),
    ];
    for request in requests {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(answered_by(&response), a.as_str());
    }
    assert!(
        hits().await - before >= 3,
        "each of the owner's requests after the first static file is a cache hit"
    );
}

/// Fly's proxies learn of a Machine a moment after it starts, while the launcher sees it serve
/// at once over the private network: a hand-over that comes back undelivered is made again
/// (`307`), a few times, before its Machine counts as gone. Here the proxy learns of each new
/// Machine 3 s after it starts, longer than the hand-over's replay `timeout` (2 s).
#[tokio::test]
async fn a_hand_over_the_proxy_cannot_deliver_yet_is_made_again_until_it_can() {
    let platform = local::start(&[]).await;
    let api = Api::new(&platform);
    // A Machine the hand-over lands on first (wrong-first), which replays it to the new one.
    let bob = Visitor::new(&platform, "203.0.113.2");
    bob.launch_and_claim().await;
    api.fault(json!({"kind": "routing_delay", "ms": 3000}))
        .await;
    let alice = Visitor::new(&platform, "203.0.113.1");
    let a = alice.launch_and_claim().await;
    let page = alice.machine_page(a).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(answered_by(&page), a.as_str());
    let stats = api.stats().await;
    assert!(
        stats["counters"]["proxy.replays.fallback"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "the first hand-over did come back undelivered: {stats}"
    );
}

#[tokio::test]
async fn every_kind_of_request_of_the_owner_reaches_their_machine_and_nobody_elses() {
    let platform = local::start(&[]).await;
    let api = Api::new(&platform);
    let alice = Visitor::new(&platform, "203.0.113.1");
    let bob = Visitor::new(&platform, "203.0.113.2");
    let (a, b) = tokio::join!(alice.launch_and_claim(), bob.launch_and_claim());
    assert_ne!(a, b);
    // A replay, or a hit of the replay cache the first replay filled: either way the request
    // first reached the wrong Machine's proxy route and still ended on the right one.
    let rerouted = |stats: serde_json::Value| {
        let c = &stats["counters"];
        c["proxy.replays.delivered"].as_u64().unwrap_or(0)
            + c["proxy.replay_cache.hits"].as_u64().unwrap_or(0)
    };
    let rerouted_before = rerouted(api.stats().await);

    for (visitor, mine, theirs) in [(&alice, a, b), (&bob, b, a)] {
        let page = visitor
            .client()
            .get(visitor.machines(&format!("/m/{mine}")))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        assert_eq!(answered_by(&page), mine.as_str(), "page");
        let html = page.text().await.unwrap();
        assert!(html.contains(mine.as_str()) && !html.contains(theirs.as_str()));

        let css = visitor
            .client()
            .get(visitor.machines("/pkg/flyby.css"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            (css.status(), answered_by(&css)),
            (StatusCode::OK, mine.to_string()),
            "static file"
        );

        let call = visitor
            .client()
            .post(visitor.machines("/api/machine"))
            .send()
            .await
            .unwrap();
        assert_eq!(call.status(), 200);
        assert_eq!(answered_by(&call), mine.as_str(), "server function");
        let about: MachineInfo = local::answer(call).await;
        assert_eq!(about.id, mine.as_str());

        let (mut ws, handshake) = visitor
            .websocket_with_response(&visitor.machines("/api/channel"))
            .await
            .unwrap();
        assert_eq!(
            handshake.headers()["flyby-machine"],
            mine.as_str(),
            "WebSocket"
        );
        ws.send(frame(&ClientMessage::Ping { seq: 7 }))
            .await
            .unwrap();
        let mut ponged = false;
        while let Some(Ok(message)) = ws.next().await {
            if let Some(ServerMessage::Pong { seq }) = unframe(message) {
                assert_eq!(seq, 7);
                ponged = true;
                break;
            }
        }
        assert!(ponged, "the owner's WebSocket answers");

        // The other visitor's page, by its URL: refused, before any Leptos code.
        let theirs_page = visitor
            .client()
            .get(visitor.machines(&format!("/m/{theirs}")))
            .send()
            .await
            .unwrap();
        assert_eq!(theirs_page.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            answered_by(&theirs_page),
            theirs.as_str(),
            "refused by the Machine it names"
        );
    }
    let rerouted_after = rerouted(api.stats().await);
    assert!(
        rerouted_after >= rerouted_before + 8,
        "wrong-first rerouted every request: {rerouted_before} -> {rerouted_after}"
    );

    // A stranger with no cookie: refused on each kind of request.
    let stranger = Visitor::new(&platform, "198.51.100.9");
    for path in [
        format!("/m/{a}"),
        "/pkg/flyby.css".into(),
        "/".into(),
        "/favicon.ico".into(),
    ] {
        let r = stranger
            .client()
            .get(stranger.machines(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
    let call = stranger
        .client()
        .post(stranger.machines("/api/machine"))
        .send()
        .await
        .unwrap();
    assert_eq!(call.status(), StatusCode::FORBIDDEN);
    assert!(
        stranger
            .try_websocket(&stranger.machines("/api/channel"))
            .await
            .is_err(),
        "no WebSocket for strangers"
    );
}

/// Launches and claims a Machine for a visitor of a platform started with `env`.
async fn owned_machine(
    env: &[&str],
) -> (
    support::platform::Local,
    Api,
    Visitor,
    flyby::fly::MachineId,
) {
    let args: Vec<String> = env.iter().map(|e| format!("--launcher-env={e}")).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let platform = local::start(&args).await;
    let api = Api::new(&platform);
    let visitor = Visitor::new(&platform, "203.0.113.1");
    let machine = visitor.launch_and_claim().await;
    (platform, api, visitor, machine)
}

#[tokio::test]
async fn the_end_of_the_show_destroys_the_machine() {
    let (_platform, api, visitor, machine) = owned_machine(&["FLYBY_SHOW_SECS=3"]).await;
    let mut ws = visitor.websocket(&visitor.machines("/api/channel")).await;
    let mut phases = Vec::new();
    while let Some(Ok(message)) = ws.next().await {
        if let Some(ServerMessage::Phase(p)) = unframe(message) {
            phases.push(p);
        }
    }
    use flyby::app::protocol::{EndReason, PhaseView};
    assert!(
        matches!(phases.first(), Some(PhaseView::Showing { .. })),
        "{phases:?}"
    );
    assert!(
        phases.contains(&PhaseView::SwitchingOff {
            reason: EndReason::ShowOver
        }),
        "{phases:?}"
    );
    assert_eq!(
        phases.last(),
        Some(&PhaseView::Ended {
            reason: EndReason::ShowOver
        }),
        "{phases:?}"
    );
    assert!(
        phases
            .iter()
            .filter(|p| matches!(p, PhaseView::Ended { .. }))
            .count()
            == 1
    );
    api.wait_destroyed(machine).await;
    assert!(api.machines().await.is_empty());
}

#[tokio::test]
async fn the_owners_button_destroys_the_machine() {
    let (_platform, api, visitor, machine) = owned_machine(&[]).await;
    let r = visitor
        .client()
        .post(visitor.machines("/api/switch-off"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    api.wait_destroyed(machine).await;
}

#[tokio::test]
async fn the_ttl_destroys_the_machine() {
    let (_platform, api, _visitor, machine) =
        owned_machine(&["FLYBY_TTL_SECS=10", "FLYBY_SHOW_SECS=600"]).await;
    api.wait_destroyed(machine).await;
}

#[tokio::test]
async fn a_machine_nobody_claims_destroys_itself() {
    let platform = local::start(&["--launcher-env=FLYBY_CLAIM_SECS=5"]).await;
    let api = Api::new(&platform);
    let visitor = Visitor::new(&platform, "203.0.113.1");
    let launch = visitor.start_launch().await.unwrap();
    assert_eq!(visitor.follow_launch(&launch).await.outcome, Some(Ok(())));
    let machine =
        flyby::fly::MachineId::parse(api.machines().await[0]["id"].as_str().unwrap()).unwrap();
    api.wait_destroyed(machine).await;
}

#[tokio::test]
async fn a_stop_signal_destroys_the_machine() {
    let (_platform, api, _visitor, machine) = owned_machine(&[]).await;
    let r = api
        .post(
            &format!("/v1/apps/flyby-machines/machines/{machine}/stop"),
            json!({"signal": "SIGTERM"}),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    api.wait_destroyed(machine).await;
}

#[tokio::test]
async fn a_stale_pin_ends_on_the_gone_page_not_a_5xx() {
    let platform = local::start(&[]).await;
    let api = Api::new(&platform);
    let alice = Visitor::new(&platform, "203.0.113.1");
    let bob = Visitor::new(&platform, "203.0.113.2");
    let a = alice.launch_and_claim().await;
    let _b = bob.launch_and_claim().await;
    alice
        .client()
        .post(alice.machines("/api/switch-off"))
        .send()
        .await
        .unwrap();
    api.wait_destroyed(a).await;
    // Alice reloads her page: Bob's Machine gets it, its replay to Alice's fails, and Alice is
    // sent to the launcher's "gone" page with her cookie cleared.
    let page = alice.machine_page(a).await;
    alice.assert_sent_to_gone_page(&page);
    let gone = alice
        .client()
        .get(alice.launcher("/gone"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 200);
    assert!(gone.text().await.unwrap().contains("Your Machine is gone"));
    // Her server functions get a typed error.
    let call = alice
        .client()
        .post(alice.machines("/api/machine"))
        .send()
        .await
        .unwrap();
    assert!(call.status().is_client_error(), "{}", call.status());
}

#[tokio::test]
async fn the_launcher_refuses_a_cross_site_launch() {
    let platform = local::start(&[]).await;
    let visitor = Visitor::new(&platform, "203.0.113.1");
    let r = visitor
        .client()
        .post(visitor.launcher("/api/launch"))
        .header(header::ORIGIN, "http://evil.example")
        .header(header::CONTENT_TYPE, local::POSTCARD)
        .body(postcard::to_allocvec(&StartLaunch { region: None }).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16() / 100, 4);
    assert!(matches!(local::answer(r).await, AppError::BadRequest(m) if m.contains("own page")));
    assert!(Api::new(&platform).machines().await.is_empty());
}

#[tokio::test]
async fn each_visitor_has_a_launch_budget() {
    let platform = local::start(&[
        "--launcher-env=FLYBY_LAUNCHES_PER_MINUTE=1",
        "--launchers=1",
    ])
    .await;
    let api = Api::new(&platform);
    let visitor = Visitor::new(&platform, "203.0.113.1");
    let machine = visitor.launch_and_claim().await;
    // Their Machine ended, the next press would launch anew: it is one too many this minute.
    visitor.switch_off().await;
    api.wait_destroyed(machine).await;
    assert!(matches!(
        visitor.start_launch().await,
        Err(AppError::TooManyLaunches { .. })
    ));
    // Another visitor, another budget.
    Visitor::new(&platform, "203.0.113.2")
        .launch_and_claim()
        .await;
}

#[tokio::test]
async fn pressing_again_while_their_machine_lives_gives_the_visitor_that_machine_never_a_second() {
    let platform = local::start(&[]).await;
    local::until_launchers_know_each_other(&platform, 2).await;
    let api = Api::new(&platform);
    let visitor = Visitor::new(&platform, "203.0.113.1");
    // A double click: the launch in flight, twice.
    let (a, b) = tokio::join!(visitor.start_launch(), visitor.start_launch());
    let first = a.unwrap();
    assert_eq!(b.unwrap(), first, "one launch for a double click");
    assert_eq!(visitor.follow_launch(&first).await.outcome, Some(Ok(())));
    let handover = visitor.take_handover(&first).await.unwrap();
    let machine = visitor.claim(&handover).await;

    // A second tab, or a reload of the launcher, pressing again while the Machine lives: the
    // same launch, handed over again, to the same Machine.
    let again = visitor.start_launch().await.unwrap();
    assert_eq!(again, first);
    let handover_again = visitor.take_handover(&again).await.unwrap();
    assert_eq!(handover_again.claim_url, handover.claim_url);
    assert_eq!(visitor.claim(&handover_again).await, machine);
    assert_eq!(api.machines().await.len(), 1, "never a second Machine");
    // To that visitor only: someone else holding the launch's id gets no hand-over.
    let stranger = Visitor::new(&platform, "203.0.113.66");
    assert!(matches!(
        stranger.take_handover(&again).await,
        Err(AppError::BadRequest(_))
    ));

    // Once it is gone, a press launches anew (their budget allowing).
    visitor.switch_off().await;
    api.wait_destroyed(machine).await;
    let next = visitor.start_launch().await.unwrap();
    assert_ne!(next, first);
    assert_eq!(visitor.follow_launch(&next).await.outcome, Some(Ok(())));
}

/// A launch the platform makes fail: the visitor's message, and nothing left behind.
async fn failed_launch(fault: serde_json::Value) -> AppError {
    let platform = local::start(&[]).await;
    let error = local::failed_launch(&platform, fault).await;
    platform.shutdown().await;
    error
}

#[tokio::test]
async fn a_failing_create_is_reported_and_leaves_nothing() {
    let error =
        failed_launch(json!({"kind": "api", "action": "create", "count": 50, "status": 500})).await;
    assert_eq!(error, AppError::FlyApiUnavailable);
}

#[tokio::test]
async fn a_rate_limited_create_is_reported_and_leaves_nothing() {
    let error =
        failed_launch(json!({"kind": "api", "action": "create", "count": 100_000, "status": 429}))
            .await;
    assert_eq!(error, AppError::FlyApiUnavailable);
}

#[tokio::test]
async fn a_machine_that_never_starts_is_destroyed() {
    // Aimed at the visitor's Machine: the launch also creates the app's concierge.
    let error = failed_launch(json!({"kind": "never_start", "name_prefix": "flyby-slot-"})).await;
    assert_eq!(error, AppError::MachineDidNotStart);
}

#[tokio::test]
async fn a_machine_that_never_serves_is_destroyed() {
    let error = failed_launch(json!({"kind": "never_serve", "name_prefix": "flyby-slot-"})).await;
    assert_eq!(error, AppError::MachineDidNotStart);
}

#[tokio::test]
async fn something_else_answering_at_the_machines_address_never_gets_the_visitor() {
    // It answers 200 to every probe, even with the Machine's id, but cannot prove the launch's
    // readiness key: the launch fails and the Machine is destroyed, no hand-over is given.
    let error = failed_launch(json!({"kind": "impostor", "name_prefix": "flyby-slot-"})).await;
    assert_eq!(error, AppError::MachineDidNotStart);
}

#[tokio::test]
async fn concurrent_launches_never_exceed_the_cap() {
    let platform = local::start(&["--launcher-env=FLYBY_MAX_MACHINES=8"]).await;
    let api = Api::new(&platform);
    let sampler = local::AliveSampler::start(&platform);
    let visitors: Vec<Visitor> = (0..20)
        .map(|i| Visitor::new(&platform, &format!("203.0.113.{}", i + 10)))
        .collect();
    let outcomes = futures::future::join_all(visitors.iter().map(|v| async move {
        let id = v.start_launch().await?;
        v.follow_launch(&id).await.outcome.expect("an outcome")
    }))
    .await;
    println!("{outcomes:?}");
    let launched = outcomes.iter().filter(|o| o.is_ok()).count();
    let capacity = outcomes
        .iter()
        .filter(|o| matches!(o, Err(AppError::CapacityReached { cap: 8 })))
        .count();
    let (peak, samples) = sampler.stop().await;
    println!(
        "20 concurrent launches, cap 8: {launched} launched, {capacity} capacity reached; \
         peak {peak} alive over {samples} samples"
    );
    assert_eq!(launched, 8);
    assert_eq!(launched + capacity, 20, "{outcomes:?}");
    assert_eq!(api.machines().await.len(), 8);
    assert!(peak <= 8, "{peak} Machines alive at once (cap 8)");
}

#[tokio::test]
async fn the_reaper_destroys_an_over_age_machine() {
    let platform = local::start(&[]).await;
    let api = Api::new(&platform);
    let id = api.over_age_machine().await;
    api.wait_destroyed(id).await;
}

#[tokio::test]
async fn a_later_visit_after_the_last_machine_is_gone_still_ends_on_the_gone_page() {
    let platform = local::start(&[]).await;
    let api = Api::new(&platform);
    let alice = Visitor::new(&platform, "203.0.113.1");
    let a = alice.launch_and_claim().await;
    // The launch makes sure the visitors' app has its concierge, once it has handed over.
    let concierge = local::until(&platform, "a concierge", |registry| {
        registry
            .list("flyby-machines")
            .iter()
            .find(|m| m.id != a && m.state == flyby::local::registry::MachineState::Started)
            .map(|m| m.id)
    })
    .await;
    alice
        .client()
        .post(alice.machines("/api/switch-off"))
        .send()
        .await
        .unwrap();
    api.wait_destroyed(a).await;
    assert!(
        api.machines().await.is_empty(),
        "no visitor's Machine is left"
    );
    let page = alice.machine_page(a).await;
    assert_eq!(
        answered_by(&page),
        concierge.as_str(),
        "the concierge answered"
    );
    alice.assert_sent_to_gone_page(&page);
    // The concierge serves nobody itself.
    let own = alice
        .client()
        .get(alice.machines(&format!("/m/{concierge}")))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::FORBIDDEN);
}

/// The concierges of the visitors' app that are not destroyed: (id, image, state).
fn concierges(
    registry: &flyby::local::Registry,
) -> Vec<(
    flyby::fly::MachineId,
    String,
    flyby::local::registry::MachineState,
)> {
    registry
        .list("flyby-machines")
        .into_iter()
        .filter(|m| m.state != flyby::local::registry::MachineState::Destroyed)
        .filter(|m| m.config["metadata"]["flyby"] == "concierge")
        .map(|m| {
            (
                m.id,
                m.config["image"].as_str().unwrap().to_owned(),
                m.state,
            )
        })
        .collect()
}

/// The concierge runs the launcher's image, which a deploy changes: the new deploy's launchers
/// create the new image's concierge, then retire the old one, so that a visitor coming back to
/// a gone Machine always reaches flyby code of this deploy, through a Machine that is always
/// running (no autostop: fly-proxy's wake-up is not relied on) and restarts on failure.
#[tokio::test]
async fn a_deploy_that_changes_the_image_replaces_the_concierge() {
    use flyby::local::registry::MachineState::Started;
    use flyby::local::{launchers::launcher_request, machines_api::create_machine_with_secrets};
    const NEW_IMAGE: &str = "registry.fly.io/flyby:deployment-02NEW";
    let image = format!("--image={NEW_IMAGE}={}", env!("CARGO_BIN_EXE_flyby"));
    let platform = local::start(&[&image]).await;
    let view = platform.platform();
    let alice = Visitor::new(&platform, "203.0.113.1");
    let a = alice.launch_and_claim().await;
    let old = local::until(&platform, "the first concierge", |r| {
        match concierges(r).as_slice() {
            [(id, image, Started)] => Some((*id, image.clone())),
            _ => None,
        }
    })
    .await;
    assert_eq!(old.1, flyby::local::LAUNCHER_IMAGE);
    let config = view.registry.find(old.0).unwrap().config;
    assert_eq!(config["restart"]["policy"], "on-failure");
    assert_eq!(
        config["services"][0]["autostop"], false,
        "never stopped by fly-proxy"
    );
    assert_ne!(config["auto_destroy"], true);

    // The deploy, as fly deploy rolls it: new launcher Machines of the new image, then the old
    // ones destroyed.
    let old_launchers = view.registry.list("flyby");
    for region in ["ams", "ord"] {
        let mut body = launcher_request(&view, region);
        body["config"]["image"] = json!(NEW_IMAGE);
        let secrets = [("FLY_API_TOKEN".to_owned(), local::TOKEN.to_owned())];
        create_machine_with_secrets(&view, "flyby", body.to_string().as_bytes(), &secrets)
            .await
            .expect("a launcher of the new image");
    }
    local::until(&platform, "the new launchers", |r| {
        (r.list("flyby")
            .iter()
            .filter(|m| m.state == Started && m.config["image"] == NEW_IMAGE)
            .count()
            == 2)
            .then_some(())
    })
    .await;
    let api = Api::new(&platform);
    for launcher in old_launchers {
        let deleted = api
            .delete(&format!(
                "/v1/apps/flyby/machines/{}?force=true",
                launcher.id
            ))
            .await;
        assert_eq!(deleted.status(), 200);
    }

    // The first launch through the new deploy brings its concierge, and the old one goes.
    let bob = Visitor::new(&platform, "203.0.113.2");
    bob.launch_and_claim().await;
    let new = local::until(
        &platform,
        "the new image's concierge alone",
        |r| match concierges(r).as_slice() {
            [(id, image, Started)] if image == NEW_IMAGE => Some(*id),
            _ => None,
        },
    )
    .await;
    assert_ne!(new, old.0);

    // Alice's Machine goes; her next visit still ends on the gone page.
    alice
        .client()
        .post(alice.machines("/api/switch-off"))
        .send()
        .await
        .unwrap();
    api.wait_destroyed(a).await;
    alice.assert_sent_to_gone_page(&alice.machine_page(a).await);
}

/// A region without room (Fly's `insufficient_capacity`) sends the launch to the next nearest
/// region; with none of the nearest three free, the visitor is told so and nothing is left.
#[tokio::test]
async fn a_full_region_launches_in_the_next_nearest_one() {
    let platform = local::start(&[]).await;
    let api = Api::new(&platform);
    api.fault(json!({"kind": "no_capacity", "region": "ams"}))
        .await;
    let alice = Visitor::new(&platform, "203.0.113.1");
    let launch = alice.start_launch().await.unwrap();
    let progress = alice.follow_launch(&launch).await;
    assert_eq!(progress.outcome, Some(Ok(())), "{progress:?}");
    let created = progress
        .steps
        .iter()
        .find_map(|s| match &s.step {
            Step::Created { region } => Some(region.to_string()),
            _ => None,
        })
        .expect("a created step");
    // The visitor's edge is ams; its nearest regions are a few hundred km away.
    assert!(
        ["lhr", "cdg", "fra"].contains(&created.as_str()),
        "{created}"
    );
    let machines = api.machines().await;
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0]["region"], created.as_str());

    for region in ["lhr", "cdg", "fra"] {
        api.fault(json!({"kind": "no_capacity", "region": region}))
            .await;
    }
    let bob = Visitor::new(&platform, "203.0.113.2");
    let launch = bob.start_launch().await.unwrap();
    let progress = bob.follow_launch(&launch).await;
    assert_eq!(progress.outcome, Some(Err(AppError::NoRoomNearby)));
    assert_eq!(
        api.machines().await.len(),
        1,
        "nothing left of the failed launch"
    );
}

/// Three launchers list the visitors' app without ever hitting Fly's limit of 1 list a second
/// per app (bursts of 3): each lists every few seconds, at a jittered pace. (A list every 2 s
/// each, the old pace, is 1.5 a second: rate-limited within seconds.)
#[tokio::test]
async fn three_launchers_list_within_flys_rate_limit() {
    let platform = local::start(&["--launchers", "3"]).await;
    let api = Api::new(&platform);
    let counter =
        |stats: &serde_json::Value, name: &str| stats["counters"][name].as_u64().unwrap_or(0);
    // The one place this test waits on time: lists happen on a clock, not on an event. It
    // reads the platform's counters until enough lists were answered, bounded.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let stats = loop {
        let stats = api.stats().await;
        if counter(&stats, "api.list.200") >= 12 {
            break stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "too few lists: {stats}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert_eq!(counter(&stats, "api.list.429"), 0, "{stats}");
}
