//! The platform failing under a visitor: the Machines API slow or refusing connections, a
//! Machine crashing mid-visit, a launcher killed mid-launch, the proxy losing a Machine. For
//! each, what the visitor gets (a specific message or page, never a raw 5xx), and no Machine
//! left behind.
#![cfg(feature = "ssr")]

use crate::support;

use flyby::app::AppError;
use flyby::local::EPHEMERAL_APP;
use reqwest::StatusCode;
use serde_json::json;
use support::local::{self, Api, Visitor};

/// A launch `fault` makes fail (see `local::failed_launch`); then, once the API recovers, the
/// launcher works for the next visitor.
async fn failed_then_recovered(fault: serde_json::Value) -> AppError {
    let platform = local::start(&[]).await;
    let error = local::failed_launch(&platform, fault).await;
    Api::new(&platform).clear_faults().await;
    Visitor::new(&platform, "203.0.113.2")
        .launch_and_claim()
        .await;
    platform.shutdown().await;
    error
}

#[tokio::test]
async fn a_machines_api_slower_than_its_timeout_is_reported_and_leaves_nothing() {
    // Every `wait` hangs for longer than the launcher will wait for it.
    let error = failed_then_recovered(
        json!({"kind": "api", "action": "wait", "count": 20, "delay_ms": 120_000}),
    )
    .await;
    assert_eq!(error, AppError::FlyApiUnavailable);
}

#[tokio::test]
async fn a_machines_api_refusing_connections_is_reported_and_leaves_nothing() {
    let error = failed_then_recovered(
        json!({"kind": "api", "action": "create", "count": 50, "refuse": true}),
    )
    .await;
    assert_eq!(error, AppError::FlyApiUnavailable);
}

/// Two visitors with a Machine each; the second keeps the ephemeral app answering.
async fn two_owners(
    extra: &[&str],
) -> (
    support::platform::Local,
    Api,
    Visitor,
    flyby::fly::MachineId,
) {
    let platform = local::start(extra).await;
    let api = Api::new(&platform);
    let alice = Visitor::new(&platform, "203.0.113.1");
    let bob = Visitor::new(&platform, "203.0.113.2");
    let a = alice.launch_and_claim().await;
    bob.launch_and_claim().await;
    (platform, api, alice, a)
}

#[tokio::test]
async fn a_machine_crashing_mid_visit_ends_on_the_gone_page_and_is_destroyed() {
    let (_platform, api, alice, a) = two_owners(&[]).await;
    api.fault(json!({"kind": "crash", "machine": a.to_string()}))
        .await;
    api.wait_destroyed(a).await;
    // Her page's server function gets a typed error (and her cookie is cleared)...
    let call = alice
        .client()
        .post(alice.machines("/api/machine"))
        .send()
        .await
        .unwrap();
    assert_eq!(call.status(), StatusCode::GONE);
    assert_eq!(local::answer::<AppError>(call).await, AppError::MachineGone);
    // ... and reloading her page ends on the launcher's "gone" page.
    let page = alice.machine_page(a).await;
    alice.assert_sent_to_gone_page(&page);
}

#[tokio::test]
async fn the_proxy_losing_a_machines_listener_ends_on_the_gone_page() {
    let (_platform, api, alice, a) = two_owners(&["--launcher-env=FLYBY_TTL_SECS=15"]).await;
    api.fault(json!({"kind": "drop_listener", "machine": a.to_string()}))
        .await;
    let page = alice.machine_page(a).await;
    alice.assert_sent_to_gone_page(&page);
    // The unreachable Machine still ends by itself at its TTL.
    api.wait_destroyed(a).await;
}

#[tokio::test]
async fn a_launcher_killed_mid_launch_leaves_no_machine_and_the_launcher_still_works() {
    let platform = local::start(&["--launcher-env=FLYBY_CLAIM_SECS=5"]).await;
    let api = Api::new(&platform);
    let visitor = Visitor::new(&platform, "203.0.113.1");
    // Slow the start down so the launch is surely in the middle when its launcher dies.
    api.fault(json!({"kind": "api", "action": "wait", "count": 1, "delay_ms": 3_000}))
        .await;
    visitor.start_launch().await.unwrap();
    let pinned = visitor
        .cookie(&visitor.launcher("/"), "flyby_launch")
        .expect("the launch pin");
    let pinned_id = flyby::fly::MachineId::parse(&pinned).unwrap();
    // The crash comes once the launch has created its Machine (and waits for it to start).
    local::until(&platform, "the launch's Machine", |r| {
        r.list(EPHEMERAL_APP)
            .iter()
            .find(|m| m.name.starts_with("flyby-slot-"))
            .map(|m| m.id)
    })
    .await;
    api.fault(json!({"kind": "crash", "machine": pinned})).await;
    // A request in flight when a process dies is a 502 on Fly too: the visitor's next request
    // comes once the platform has seen the crash and restarted the launcher.
    local::until(&platform, "the launcher restarted", |r| {
        let record = r.find(pinned_id)?;
        let crashed = record.events.iter().rposition(|e| e.kind == "exit")?;
        record.events[crashed..]
            .iter()
            .any(|e| e.kind == "start")
            .then_some(())
    })
    .await;
    // The Machine it may have created switches itself off when nobody claims it.
    api.until_no_machines().await;
    // The visitor's pin names a launcher that is gone (or restarted without the launch): the
    // launcher still serves them, and a new launch works.
    let page = visitor
        .client()
        .get(visitor.launcher("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    Visitor::new(&platform, "203.0.113.2")
        .launch_and_claim()
        .await;
}

#[tokio::test]
async fn a_launch_past_its_deadline_at_any_step_leaves_no_machine_and_no_slot_lost() {
    // One launcher and one slot: a slot that a launch kept would refuse the last launch.
    let platform = local::start(&[
        "--launchers=1",
        "--launcher-env=FLYBY_LAUNCH_SECS=6",
        "--launcher-env=FLYBY_MAX_MACHINES=1",
        "--launcher-env=FLYBY_LAUNCHES_PER_MINUTE=10",
    ])
    .await;
    let api = Api::new(&platform);
    for (step, fault) in [
        // Before the create: Fly's rate limit, waited out for longer than the launch may take.
        (
            "create",
            json!({"kind": "api", "action": "create", "count": 1000, "status": 429}),
        ),
        // After it: the start, awaited for longer than the launch may take.
        (
            "wait",
            json!({"kind": "api", "action": "wait", "count": 1000, "delay_ms": 60_000}),
        ),
        // A Machine that starts but never serves, probed until the deadline.
        ("serving", json!({"kind": "never_serve", "count": 1})),
    ] {
        let error = local::failed_launch(&platform, fault).await;
        assert!(
            matches!(
                error,
                AppError::FlyApiUnavailable | AppError::MachineDidNotStart
            ),
            "{step}: {error:?}"
        );
        api.clear_faults().await;
    }
    // The one slot is free: neither a Machine nor the launcher's reservation holds it.
    Visitor::new(&platform, "203.0.113.9")
        .launch_and_claim()
        .await;
}

/// Two launchers see the same over-age Machine and both destroy it: the Machine is destroyed
/// once and counted once, by the launcher whose destroy did it.
#[tokio::test]
async fn two_launchers_racing_to_reap_a_machine_count_it_once() {
    let platform = local::start(&["--launchers=0"]).await;
    let api = Api::new(&platform);
    let env = [
        ("FLYBY_ROLE", "launcher"),
        ("FLY_API_TOKEN", support::platform::TOKEN),
        ("FLYBY_MACHINES_API", &platform.api_url),
        ("FLYBY_METRICS_PORT", "0"),
        ("FLY_REGION", "ams"),
    ];
    let (a, b) = (
        support::Flyby::start(&env).await,
        support::Flyby::start(&env).await,
    );
    // Each destroy is held long enough for both launchers' lists (every 3-5 s) to see the
    // Machine still alive and both to destroy it.
    api.fault(json!({"kind": "api", "action": "delete", "count": 2, "delay_ms": 8_000}))
        .await;
    let id = api.over_age_machine().await;
    api.wait_destroyed(id).await;

    let client = reqwest::Client::new();
    // The sum of a launcher's samples whose line starts with `prefix`.
    let metric = |launcher: &support::Flyby, prefix: &'static str| {
        let url = format!("http://{}/metrics", launcher.metrics.expect("metrics"));
        let client = client.clone();
        async move {
            let text = client.get(url).send().await.unwrap().text().await.unwrap();
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>()
        }
    };
    const DELETES: &str = "flyby_fly_api_calls_total{action=\"delete\",";
    const REAPED: &str = "flyby_machines_reaped_total ";
    let deletes = |launcher| metric(launcher, DELETES);
    // Both launchers' destroys answered (the platform holds them 8 s each, at once).
    local::eventually("both launchers destroyed it", || async {
        deletes(&a).await >= 1 && deletes(&b).await >= 1
    })
    .await;
    let reaped = metric(&a, REAPED).await + metric(&b, REAPED).await;
    assert_eq!(
        reaped, 1,
        "one Machine reaped, counted once across launchers"
    );
    assert_eq!(
        deletes(&a).await + deletes(&b).await,
        2,
        "each destroyed it once"
    );
}
