//! Load: 50 visitors at once make 200 launch attempts against a cap of 8, with Fly-like API
//! rate limits. Alive Machines, sampled every 50 ms, never exceed the cap; every attempt ends
//! in a defined outcome; nothing answers 5xx; nothing is left at the end. Heavy: `make soak`
//! runs it (`cargo test --release --features ssr --test system soak:: -- --ignored --nocapture`).
#![cfg(feature = "ssr")]

use crate::support;

use flyby::app::{protocol::Handover, AppError};
use std::{collections::BTreeMap, time::Instant};
use support::local::{self, Api, Visitor};

const VISITORS: usize = 50;
const ATTEMPTS_EACH: usize = 4;
const CAP: usize = 8;

#[tokio::test]
#[ignore = "heavy: run by make soak"]
async fn with_a_warm_pool_fifty_visitors_leave_only_the_pool_waiting_and_no_orphan() {
    let platform = local::start(&[
        "--launcher-env=FLYBY_MAX_MACHINES=8",
        "--launcher-env=FLYBY_SHOW_SECS=3",
        "--launcher-env=FLYBY_WARM_POOL=ams=3",
    ])
    .await;
    let api = Api::new(&platform);
    // A visitor's first page gives each launcher its public origin; then the pool fills.
    let first = Visitor::new(&platform, "10.7.0.1");
    for launcher in api.machine_ids("flyby").await {
        first
            .call_on::<flyby::app::protocol::LauncherInfo>(Some(launcher), "launcher", &())
            .await
            .unwrap();
    }
    let waiting = || async {
        api.machines()
            .await
            .into_iter()
            .filter(|m| m["pool"] == "warm" && m["state"] == "created")
            .count()
    };
    local::eventually("the pool fills", || async { waiting().await == 3 }).await;
    let sampler = local::AliveSampler::start(&platform);
    let started = Instant::now();
    let counts = storm(&platform, "10.6", 2).await;
    println!(
        "soak with a pool of 3: {VISITORS} visitors x 2 attempts in {:.1} s: {counts:?}",
        started.elapsed().as_secs_f64()
    );
    // Every Machine but the pool's waiting ones ends (none orphaned), and the pool refills.
    local::eventually("only the pool is left, full", || async {
        let left = api.machines().await;
        left.len() == 3
            && left
                .iter()
                .all(|m| m["pool"] == "warm" && m["state"] == "created")
    })
    .await;
    let (peak, samples) = sampler.stop().await;
    println!("soak with a pool: peak alive {peak} (cap {CAP}) over {samples} samples; 0 orphans");
    assert!(peak <= CAP, "peak {peak} > cap {CAP}");
    assert_eq!(counts.values().sum::<usize>(), VISITORS * 2);
    assert!(
        counts.get("launched").copied().unwrap_or(0) >= CAP,
        "{counts:?}"
    );
}

#[tokio::test]
#[ignore = "heavy: run by make soak"]
async fn fifty_visitors_two_hundred_launches_never_exceed_the_cap_and_leave_nothing() {
    let platform = local::start(&[
        "--launcher-env=FLYBY_MAX_MACHINES=8",
        "--launcher-env=FLYBY_SHOW_SECS=3",
    ])
    .await;
    let api = Api::new(&platform);
    let sampler = local::AliveSampler::start(&platform);
    let started = Instant::now();
    let counts = storm(&platform, "10.9", ATTEMPTS_EACH).await;
    let elapsed = started.elapsed();
    api.until_no_machines().await;
    let (peak, samples) = sampler.stop().await;
    let stats = api.stats().await;
    println!(
        "soak: {VISITORS} visitors x {ATTEMPTS_EACH} attempts in {:.1} s: {counts:?}",
        elapsed.as_secs_f64()
    );
    println!("soak: peak alive {peak} (cap {CAP}) over {samples} samples every 50 ms");
    println!("soak: Machines API calls: {}", stats["counters"]);
    assert_eq!(
        counts.values().sum::<usize>(),
        VISITORS * ATTEMPTS_EACH,
        "every attempt has an outcome"
    );
    assert!(peak <= CAP, "peak {peak} > cap {CAP}");
    assert!(
        counts.get("launched").copied().unwrap_or(0) >= CAP,
        "{counts:?}"
    );
    assert!(api.machines().await.is_empty());

    // No slot lost: with nothing alive, the cap's worth of new visitors get a Machine each,
    // all alive at once (unclaimed, a Machine waits for its owner). A visitor refused for
    // capacity tries again a second later (a launcher's view of Machines that ended by
    // themselves is up to one list old), as a new visitor each time: refusals count against a
    // visitor's launches per minute.
    let held: Vec<(Visitor, Handover)> = futures::future::join_all((0..CAP).map(|i| {
        let platform = &platform;
        async move {
            for attempt in 0..30 {
                let v = Visitor::new(platform, &format!("10.8.{attempt}.{}", i + 1));
                let id = v.start_launch().await.expect("a launch");
                match v.take_handover(&id).await {
                    Ok(handover) => return Some((v, handover)),
                    Err(AppError::CapacityReached { .. }) => {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await
                    }
                    Err(other) => panic!("a launch ended with {other:?}"),
                }
            }
            None
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    let alive = api.machines().await.len();
    println!(
        "soak: slots free at the end: {} of {CAP} ({alive} alive at once)",
        held.len()
    );
    assert_eq!(held.len(), CAP, "every slot is free again");
    assert_eq!(alive, CAP, "all at once");
    // Claimed, each show ends by itself.
    for (v, handover) in &held {
        v.claim(handover).await;
    }
    api.until_no_machines().await;
}

/// 50 visitors (addresses `<net>.x.y`) at once, `attempts` launches each, every launched
/// Machine claimed and switched off at once: how the attempts ended.
async fn storm(
    platform: &support::platform::Local,
    net: &str,
    attempts: usize,
) -> BTreeMap<&'static str, usize> {
    let visitors: Vec<Visitor> = (0..VISITORS)
        .map(|i| Visitor::new(platform, &format!("{net}.{}.{}", i / 200, i % 200 + 1)))
        .collect();
    let outcomes: Vec<Vec<&'static str>> =
        futures::future::join_all(visitors.iter().map(|v| async move {
            let mut outcomes = Vec::new();
            for _ in 0..attempts {
                let outcome = match v.start_launch().await {
                    Err(AppError::TooManyLaunches { .. }) => "rate-limited",
                    Err(other) => panic!("launch refused with {other:?}"),
                    Ok(id) => match v.follow_launch(&id).await.outcome.expect("an outcome") {
                        Ok(()) => {
                            let handover = v.take_handover(&id).await.expect("hand-over");
                            v.claim(&handover).await;
                            // The owner is done at once: the slot frees for the next visitor.
                            let off = v
                                .client()
                                .post(v.machines("/api/switch-off"))
                                .send()
                                .await
                                .unwrap();
                            assert!(off.status().is_success(), "switch-off: {}", off.status());
                            "launched"
                        }
                        Err(AppError::CapacityReached { .. }) => "capacity",
                        Err(other) => panic!("a launch ended with {other:?}"),
                    },
                };
                outcomes.push(outcome);
            }
            outcomes
        }))
        .await;
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for o in outcomes.iter().flatten() {
        *counts.entry(*o).or_default() += 1;
    }
    counts
}
