//! The warm pool: Machines created ahead and left `created`, started on a click. The race for
//! them across launchers, their ownership at every moment of their life, an unarmed one
//! started by hand, and the refill within the cap, on a real flyby-local.
#![cfg(feature = "ssr")]

use crate::support;

use flyby::{
    app::protocol::Step,
    fly::MachineId,
    server::{
        arming::{arm_proof, ARM_PATH, ARM_PROOF_HEADER, OWNER_HASH_HEADER},
        ownership::OwnerSecret,
        readiness::{Challenge, ReadinessKey, CHALLENGE_HEADER},
    },
};
use serde_json::Value;
use std::{collections::HashSet, time::Duration};
use support::{
    local::{self, Api, Visitor},
    platform::Local,
};

/// The pool's waiting Machines (`created`, marked by the launcher), from the admin endpoint.
async fn waiting(api: &Api) -> Vec<Value> {
    api.machines()
        .await
        .into_iter()
        .filter(|m| m["pool"] == "warm" && m["state"] == "created")
        .collect()
}

/// How many pooled Machines the launcher `launcher` sees waiting (its `/health` says).
async fn seen_by(platform: &Local, launcher: MachineId) -> Option<usize> {
    let answer = platform
        .http
        .get(platform.url("flyby", "/health"))
        .header("fly-force-instance-id", launcher.as_str())
        .send()
        .await
        .unwrap();
    answer
        .headers()
        .get("flyby-warm")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Waits until the pool holds `n`, and every launcher's tracker has listed them (a click
/// takes only what its launcher saw). Bounded: a refill is about a create per poll.
async fn until_pool(platform: &Local, api: &Api, n: usize) -> Vec<Value> {
    let launchers = api.machine_ids("flyby").await;
    tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let now = waiting(api).await;
            let mut seen = true;
            for launcher in &launchers {
                seen &= seen_by(platform, *launcher).await == Some(n);
            }
            if now.len() == n && seen {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the pool never held {n}"))
}

/// A platform whose launchers keep a warm pool. No visitor has been to any launcher yet: the
/// pool's Machines get the launchers' origin from their config (`FLYBY_LAUNCHER_URL`).
async fn pooled(launchers: usize, env: &[&str]) -> (Local, Api, Vec<MachineId>) {
    let mut args = vec![format!("--launchers={launchers}")];
    args.extend(env.iter().map(|e| format!("--launcher-env={e}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let platform = local::start(&args).await;
    let api = Api::new(&platform);
    let ids = api.machine_ids("flyby").await;
    local::until_launchers_know_each_other(&platform, launchers).await;
    (platform, api, ids)
}

/// What a Machine's config says (the admin view has no config).
async fn readiness_key(api: &Api, id: MachineId) -> ReadinessKey {
    let machine = api.machine(id).await;
    ReadinessKey::parse(
        machine["config"]["env"]["FLYBY_READINESS_KEY"]
            .as_str()
            .unwrap(),
    )
    .unwrap()
}

fn id_of(machine: &Value) -> MachineId {
    MachineId::parse(machine["id"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn twenty_clicks_on_three_launchers_take_the_five_pooled_machines_once_each_and_create_the_rest(
) {
    let (platform, api, _) = pooled(
        3,
        &[
            "FLYBY_WARM_POOL=ams=5",
            "FLYBY_MAX_MACHINES=30",
            "FLYBY_LAUNCH_SECS=120",
        ],
    )
    .await;
    let pool: HashSet<MachineId> = until_pool(&platform, &api, 5)
        .await
        .iter()
        .map(id_of)
        .collect();

    let visitors: Vec<Visitor> = (0..20)
        .map(|i| Visitor::new(&platform, &format!("203.0.113.{}", 100 + i)))
        .collect();
    let launches = visitors.iter().map(|visitor| async move {
        let id = visitor.start_launch().await.expect("a launch");
        let progress = visitor.follow_launch(&id).await;
        assert_eq!(progress.outcome, Some(Ok(())), "{progress:?}");
        let handover = visitor.take_handover(&id).await.expect("hand-over");
        let machine = visitor.claim(&handover).await;
        // Their page answers them, checked at once: the first visitors' shows end (and their
        // Machines with them) long before the last of twenty launches does.
        assert_eq!(visitor.machine_page(machine).await.status(), 200);
        let warm = progress
            .steps
            .iter()
            .any(|s| matches!(s.step, Step::Warm { .. }));
        (machine, warm)
    });
    let results = futures::future::join_all(launches).await;

    let machines: HashSet<MachineId> = results.iter().map(|(m, _)| *m).collect();
    assert_eq!(
        machines.len(),
        20,
        "twenty visitors, twenty Machines: none handed out twice"
    );
    let from_pool: HashSet<MachineId> = results
        .iter()
        .filter(|(_, warm)| *warm)
        .map(|(m, _)| *m)
        .collect();
    assert_eq!(
        from_pool, pool,
        "the five pooled Machines, each started once, for one visitor"
    );
}

#[tokio::test]
async fn a_stranger_cannot_claim_or_arm_a_pooled_machine_before_during_or_after_arming() {
    let (platform, api, _) = pooled(1, &["FLYBY_WARM_POOL=ams=1"]).await;
    let pooled = id_of(&until_pool(&platform, &api, 1).await[0]);
    let key = readiness_key(&api, pooled).await;
    let stranger = Visitor::new(&platform, "192.0.2.66");
    let forged = OwnerSecret::mint();
    let arm = |owner: &OwnerSecret, key: &ReadinessKey| {
        let challenge = Challenge::mint();
        let hash = owner.hash();
        stranger
            .client()
            .post(stranger.machines(ARM_PATH))
            .header("fly-force-instance-id", pooled.as_str())
            .header(CHALLENGE_HEADER, challenge.as_str())
            .header(OWNER_HASH_HEADER, hash.to_hex())
            .header(ARM_PROOF_HEADER, arm_proof(key, &challenge, &hash))
            .send()
    };
    let claim = |secret: &str| {
        stranger
            .client()
            .post(stranger.machines(&format!("/m/{pooled}/claim")))
            .form(&[("secret", secret)])
            .send()
    };

    // Waiting (never started): nothing of it answers anyone, and no claim lands.
    let early = claim(forged.expose()).await.unwrap();
    // A claim that lands is answered with the owner's page and the owner cookie.
    let landed = early.status().is_success() || early.headers().get("set-cookie").is_some();
    assert!(
        !landed,
        "a claim before the Machine even runs: {:?}",
        early.status()
    );

    // A visitor's click takes it; between the arming and the owner's claim, a stranger's
    // claim and a stranger's arming (without the Machine's key) are refused.
    let owner = Visitor::new(&platform, "203.0.113.7");
    let launch = owner.start_launch().await.unwrap();
    let handover = owner.take_handover(&launch).await.unwrap();
    assert_eq!(
        handover.machine, pooled,
        "the click took the pooled Machine"
    );
    assert_eq!(claim(forged.expose()).await.unwrap().status(), 403);
    let wrong_key = ReadinessKey::mint();
    assert_eq!(arm(&forged, &wrong_key).await.unwrap().status(), 403);
    // Even the proof of the Machine's own key (which only the org can read) arms it for
    // nobody else: it is armed once, for its owner only.
    assert_eq!(arm(&forged, &key).await.unwrap().status(), 409);

    // After: the owner claims and reaches their page; the stranger still cannot.
    assert_eq!(owner.claim(&handover).await, pooled);
    assert_eq!(owner.machine_page(pooled).await.status(), 200);
    assert_eq!(claim(forged.expose()).await.unwrap().status(), 403);
    assert_eq!(stranger.machine_page(pooled).await.status(), 403);
    assert_eq!(arm(&forged, &wrong_key).await.unwrap().status(), 403);
}

#[tokio::test]
async fn a_pooled_machine_started_by_hand_and_never_armed_serves_nobody_and_ends() {
    let (platform, api, _) = pooled(1, &["FLYBY_WARM_POOL=ams=1", "FLYBY_CLAIM_SECS=5"]).await;
    let pooled = id_of(&until_pool(&platform, &api, 1).await[0]);
    let started = api
        .post(
            &format!("/v1/apps/flyby-machines/machines/{pooled}/start"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(started.status(), 200);
    let stranger = Visitor::new(&platform, "192.0.2.67");
    local::eventually("the started Machine answers its health check", || async {
        let health = stranger
            .client()
            .get(stranger.machines("/health"))
            .header("fly-force-instance-id", pooled.as_str())
            .send()
            .await
            .unwrap();
        health.status() == 200
    })
    .await;
    // Nobody's: its page refuses everyone, and nothing can claim it.
    assert_eq!(stranger.machine_page(pooled).await.status(), 403);
    let claim = stranger
        .client()
        .post(stranger.machines(&format!("/m/{pooled}/claim")))
        .form(&[("secret", OwnerSecret::mint().expose())])
        .send()
        .await
        .unwrap();
    assert_eq!(claim.status(), 403);
    // Its claim window over, it switches itself off and is destroyed; the pool refills.
    api.wait_destroyed(pooled).await;
    let refilled = until_pool(&platform, &api, 1).await;
    assert_ne!(id_of(&refilled[0]), pooled);
}

#[tokio::test]
async fn the_refill_never_goes_past_the_cap_and_fills_again_when_there_is_room() {
    let (platform, api, _) = pooled(1, &["FLYBY_WARM_POOL=ams=3", "FLYBY_MAX_MACHINES=3"]).await;
    until_pool(&platform, &api, 3).await;
    let sampler = local::AliveSampler::start(&platform);
    let owner = Visitor::new(&platform, "203.0.113.9");
    let machine = owner.launch_and_claim().await;
    // The pool lacks one, but the cap is full (two waiting, one visitor's): three more of the
    // launcher's polls (two lists each: both apps) make none.
    let lists = || async {
        api.stats().await["counters"]["api.list.200"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = lists().await;
    local::eventually("three more polls", || async { lists().await >= before + 6 }).await;
    assert_eq!(waiting(&api).await.len(), 2);
    owner.switch_off().await;
    api.wait_destroyed(machine).await;
    until_pool(&platform, &api, 3).await;
    let (peak, _) = sampler.stop().await;
    assert!(peak <= 3, "{peak} Machines at once, cap 3");
}

/// A pooled Machine is handed over on its arming's answer alone, without the API's `wait`
/// (half a round trip to the API's region on Fly): the pool brings the visitors' app its
/// concierge before any visitor, and the owner's claim, which fly-proxy cannot deliver to a
/// Machine it does not know yet, lands there and is replayed until it can. Here the proxy
/// learns of each started Machine 3 s late (the `routing_delay` fault), longer than the
/// hand-over's replay timeout.
#[tokio::test]
async fn a_pooled_machine_is_handed_over_once_armed_and_its_claim_waits_at_the_concierge() {
    let (platform, api, _) = pooled(1, &["FLYBY_WARM_POOL=ams=1"]).await;
    let pooled = id_of(&until_pool(&platform, &api, 1).await[0]);
    // No visitor has come yet: the pool alone brought the concierge.
    local::until(&platform, "the concierge running", |registry| {
        registry.list("flyby-machines").into_iter().find(|m| {
            m.config["metadata"]["flyby"] == "concierge"
                && m.state == flyby::local::registry::MachineState::Started
        })
    })
    .await;
    let counter = |name: &'static str| {
        let api = &api;
        async move { api.stats().await["counters"][name].as_u64().unwrap_or(0) }
    };
    // Two of the launcher's polls (each lists both apps): it has seen the concierge run.
    let lists = counter("api.list.200").await;
    local::eventually("two more polls", || async {
        counter("api.list.200").await >= lists + 4
    })
    .await;
    api.fault(serde_json::json!({"kind": "routing_delay", "ms": 3000}))
        .await;
    let fallbacks = counter("proxy.replays.fallback").await;

    let owner = Visitor::new(&platform, "203.0.113.7");
    let machine = owner.launch_and_claim().await;
    assert_eq!(machine, pooled, "the launch took the pooled Machine");
    let page = owner.machine_page(machine).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["flyby-machine"], machine.as_str());
    let stats = api.stats().await;
    let waits: u64 = stats["counters"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| name.starts_with("api.wait."))
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(waits, 0, "handed over on the arming, no wait: {stats}");
    assert!(
        counter("proxy.replays.fallback").await > fallbacks,
        "the hand-over came before the proxy knew its Machine, and was made again: {stats}"
    );
}
