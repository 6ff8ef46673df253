//! The Machines API client against a real `flyby-local` over HTTP: a Machine's whole life, each
//! typed error, and the retries under the platform's own fault knobs (`POST /_local/faults`),
//! counting Machines to prove that a retried create never makes two.
//!
//! Every test starts its own platform on free ports (`support::platform`), stopped with its
//! Machines when the test ends. Nothing sleeps to synchronise: the client's own `wait` and
//! bounded awaits do.
#![cfg(feature = "ssr")]

use crate::support;

use flyby::{
    fly::{MachineId, RegionCode},
    server::fly_api::{
        ApiToken, Autostop, CallRecord, Check, CreateMachineRequest, FlyApi, FlyApiConfig,
        FlyApiError, Guest, ListFilter, Machine, MachineConfig, MachineState, Outcome, Port,
        Restart, RestartPolicy, RetryPolicy, Service, StopConfig, WaitState,
    },
};
use serde_json::json;
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use support::platform::{Local, Options, APP, TOKEN};

/// The words of this suite: Machines API clients of the platform.
impl Local {
    /// A client with quick backoffs, and the records its observer received.
    fn client(&self, tweak: impl FnOnce(&mut FlyApiConfig)) -> (FlyApi, Records) {
        self.client_with_token(TOKEN, tweak)
    }

    fn client_with_token(
        &self,
        token: &str,
        tweak: impl FnOnce(&mut FlyApiConfig),
    ) -> (FlyApi, Records) {
        let records = Records::default();
        let sink = records.clone();
        let mut config = FlyApiConfig::new(&self.api_url, ApiToken::new(token).unwrap());
        config.retry = RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            max_elapsed: Duration::from_secs(20),
        };
        config.observer = Some(Arc::new(move |r: &CallRecord| sink.push(r)));
        tweak(&mut config);
        (FlyApi::new(config).unwrap(), records)
    }
}

/// What the client's observer saw.
#[derive(Clone, Default)]
struct Records(Arc<Mutex<Vec<CallRecord>>>);

impl Records {
    fn push(&self, r: &CallRecord) {
        self.0.lock().unwrap().push(r.clone());
    }

    fn seen(&self) -> Vec<(&'static str, Outcome)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.action, r.outcome))
            .collect()
    }

    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// A Machine configured the way the launcher configures a visitor's, running the probe.
fn request(name: &str, launch: &str) -> CreateMachineRequest {
    let port = |port: u16, handlers: &[&str]| Port {
        port: Some(port),
        handlers: handlers.iter().map(|h| h.to_string()).collect(),
        ..Port::default()
    };
    CreateMachineRequest {
        name: Some(name.to_owned()),
        region: Some(RegionCode::parse("ord").unwrap()),
        config: MachineConfig {
            image: "probe".into(),
            env: BTreeMap::from([("FLYBY_ROLE".into(), "ephemeral".into())]),
            guest: Some(Guest {
                cpu_kind: "shared".into(),
                cpus: 1,
                memory_mb: 256,
            }),
            auto_destroy: false,
            restart: Some(Restart {
                policy: RestartPolicy::No,
                max_retries: None,
            }),
            services: vec![Service {
                protocol: "tcp".into(),
                internal_port: 8080,
                autostart: Some(false),
                autostop: Some(Autostop::Off),
                ports: vec![port(80, &["http"]), port(443, &["tls", "http"])],
                ..Service::default()
            }],
            checks: BTreeMap::from([(
                "health".into(),
                Check {
                    kind: "http".into(),
                    port: Some(8080),
                    interval: Some(Duration::from_secs(15).into()),
                    timeout: Some(Duration::from_secs(2).into()),
                    grace_period: Some(Duration::from_secs(1).into()),
                    method: Some("GET".into()),
                    path: Some("/health".into()),
                },
            )]),
            metadata: BTreeMap::from([
                ("flyby".into(), "ephemeral".into()),
                ("flyby_launch".into(), launch.into()),
            ]),
            stop_config: Some(StopConfig {
                signal: Some("SIGTERM".into()),
                timeout: Some(Duration::from_secs(5).into()),
            }),
        },
        ..CreateMachineRequest::default()
    }
}

async fn all_machines(api: &FlyApi) -> Vec<Machine> {
    api.list(APP, &ListFilter::default()).await.unwrap()
}

#[tokio::test]
async fn a_machine_lives_its_whole_life_through_the_client() {
    let local = Local::start(Options::bare()).await;
    let (api, records) = local.client(|_| {});

    let created = api
        .create(APP, &request("visitor-1", "launch-1"))
        .await
        .unwrap();
    assert_eq!(created.name, "visitor-1");
    assert_eq!(created.state, MachineState::Created);
    assert_eq!(created.region.as_str(), "ord");
    let other = api
        .create(APP, &request("visitor-2", "launch-2"))
        .await
        .unwrap();

    api.wait(APP, created.id, WaitState::Started, Duration::from_secs(30))
        .await
        .unwrap();
    let machine = api.get(APP, created.id).await.unwrap();
    assert_eq!(machine.state, MachineState::Started);
    assert_eq!(machine.metadata()["flyby_launch"], "launch-1");
    let config = machine.typed_config().unwrap();
    assert_eq!(config.image, "probe");
    assert_eq!(config.restart.unwrap().policy, RestartPolicy::No);

    let mine = ListFilter {
        metadata: vec![("flyby_launch".into(), "launch-1".into())],
        ..ListFilter::default()
    };
    let listed = api.list(APP, &mine).await.unwrap();
    assert_eq!(
        listed.iter().map(|m| m.id).collect::<Vec<_>>(),
        [created.id]
    );
    let flyby = ListFilter {
        metadata: vec![("flyby".into(), "ephemeral".into())],
        region: Some(RegionCode::parse("ord").unwrap()),
        include_deleted: false,
    };
    assert_eq!(api.list(APP, &flyby).await.unwrap().len(), 2);
    let elsewhere = ListFilter {
        region: Some(RegionCode::parse("syd").unwrap()),
        ..flyby.clone()
    };
    assert!(api.list(APP, &elsewhere).await.unwrap().is_empty());

    // flyby-local, like Fly's reference, refuses to delete a running Machine without force.
    let err = api.delete(APP, created.id, false).await.unwrap_err();
    assert!(matches!(err, FlyApiError::Api { status: 409, .. }), "{err}");

    api.stop(APP, created.id).await.unwrap();
    api.wait_for_instance(
        APP,
        created.id,
        &machine.instance_id,
        WaitState::Stopped,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(
        api.get(APP, created.id).await.unwrap().state,
        MachineState::Stopped
    );
    api.delete(APP, created.id, false).await.unwrap();
    api.wait(
        APP,
        created.id,
        WaitState::Destroyed,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    // Gone: listed only with `include_deleted`, and destroying it again is fine.
    assert!(api.list(APP, &mine).await.unwrap().is_empty());
    let with_deleted = ListFilter {
        include_deleted: true,
        ..mine
    };
    let deleted = api.list(APP, &with_deleted).await.unwrap();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].state, MachineState::Destroyed);
    api.delete(APP, created.id, true).await.unwrap();

    api.delete(APP, other.id, true).await.unwrap();
    api.wait(APP, other.id, WaitState::Destroyed, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(all_machines(&api).await.is_empty());
    // Nothing else failed, so nothing was retried.
    let failures: Vec<_> = records
        .seen()
        .into_iter()
        .filter(|(_, o)| !matches!(o, Outcome::Status(200..=299)))
        .collect();
    assert_eq!(
        failures,
        [
            ("delete", Outcome::Status(409)),
            ("delete", Outcome::Status(404))
        ]
    );
}

#[tokio::test]
async fn a_taken_name_is_name_taken_with_its_holder() {
    let local = Local::start(Options::bare()).await;
    let (api, _) = local.client(|_| {});
    let first = api
        .create(APP, &request("slot-1", "launch-a"))
        .await
        .unwrap();
    let err = api
        .create(APP, &request("slot-1", "launch-b"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        FlyApiError::NameTaken {
            name: "slot-1".into(),
            existing: Some(first.id),
        }
    );
    assert_eq!(all_machines(&api).await.len(), 1);
    api.delete(APP, first.id, true).await.unwrap();
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized_and_not_retried() {
    let local = Local::start(Options::bare()).await;
    let (api, records) = local.client_with_token("not-the-token", |_| {});
    let err = api.list(APP, &ListFilter::default()).await.unwrap_err();
    assert_eq!(err, FlyApiError::Unauthorized { status: 401 });
    assert_eq!(records.seen(), [("list", Outcome::Status(401))]);
    assert!(!err.to_string().contains("not-the-token"));
}

#[tokio::test]
async fn a_missing_machine_is_not_found_and_destroying_it_is_ok() {
    let local = Local::start(Options::bare()).await;
    let (api, records) = local.client(|_| {});
    let nobody = MachineId::parse("0123456789abcd").unwrap();
    let err = api.get(APP, nobody).await.unwrap_err();
    assert!(matches!(err, FlyApiError::NotFound { .. }), "{err}");
    api.delete(APP, nobody, true).await.unwrap();
    assert_eq!(
        records.seen(),
        [
            ("get", Outcome::Status(404)),
            ("delete", Outcome::Status(404))
        ]
    );
}

#[tokio::test]
async fn a_machine_that_never_starts_makes_wait_time_out() {
    let local = Local::start(Options::bare()).await;
    let (api, records) = local.client(|_| {});
    local.arm(json!({"kind": "never_start", "count": 1})).await;
    let machine = api
        .create(APP, &request("stuck", "launch-s"))
        .await
        .unwrap();
    let err = api
        .wait(APP, machine.id, WaitState::Started, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err, FlyApiError::WaitTimedOut);
    assert_eq!(records.seen().last(), Some(&("wait", Outcome::Status(408))));
    api.delete(APP, machine.id, true).await.unwrap();
}

#[tokio::test]
async fn a_get_succeeds_after_two_503s() {
    let local = Local::start(Options::bare()).await;
    let (api, records) = local.client(|_| {});
    let machine = api.create(APP, &request("m", "launch-g")).await.unwrap();
    records.clear();
    local
        .arm(json!({"kind": "api", "action": "get", "count": 2, "status": 503}))
        .await;
    assert_eq!(api.get(APP, machine.id).await.unwrap().id, machine.id);
    assert_eq!(
        records.seen(),
        [
            ("get", Outcome::Status(503)),
            ("get", Outcome::Status(503)),
            ("get", Outcome::Status(200)),
        ]
    );
    assert_eq!(local.counter("api.get.503").await, 2);
    api.delete(APP, machine.id, true).await.unwrap();
}

#[tokio::test]
async fn a_create_that_failed_with_500_is_retried_after_a_lookup_and_makes_one_machine() {
    let local = Local::start(Options::bare()).await;
    let (api, records) = local.client(|_| {});
    local
        .arm(json!({"kind": "api", "action": "create", "count": 1, "status": 500}))
        .await;
    let machine = api
        .create(APP, &request("slot-5", "launch-5"))
        .await
        .unwrap();
    assert_eq!(
        records.seen(),
        [
            ("create", Outcome::Status(500)),
            ("list", Outcome::Status(200)),
            ("create", Outcome::Status(200)),
        ]
    );
    let machines = all_machines(&api).await;
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0].id, machine.id);
    assert_eq!(local.counter("api.create.200").await, 1);
    api.delete(APP, machine.id, true).await.unwrap();
}

#[tokio::test]
async fn a_create_whose_connection_was_closed_is_retried_after_a_lookup_and_makes_one_machine() {
    let local = Local::start(Options::bare()).await;
    let (api, records) = local.client(|_| {});
    local
        .arm(json!({"kind": "api", "action": "create", "count": 1, "refuse": true}))
        .await;
    let machine = api
        .create(APP, &request("slot-6", "launch-6"))
        .await
        .unwrap();
    assert_eq!(
        records.seen(),
        [
            ("create", Outcome::Unavailable),
            ("list", Outcome::Status(200)),
            ("create", Outcome::Status(200)),
        ]
    );
    let machines = all_machines(&api).await;
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0].id, machine.id);
    api.delete(APP, machine.id, true).await.unwrap();
}

#[tokio::test]
async fn a_create_past_its_deadline_never_makes_two_machines() {
    // The platform holds the create for 2.5 s, then may perform it; the client gives up on the
    // attempt after 1 s. Whichever create wins, the name admits one Machine and the client
    // returns it.
    let local = Local::start(Options::bare()).await;
    let (api, records) = local.client(|c| c.call_timeout = Duration::from_secs(1));
    local
        .arm(json!({"kind": "api", "action": "create", "count": 1, "delay_ms": 2500}))
        .await;
    let machine = api
        .create(APP, &request("slot-7", "launch-7"))
        .await
        .unwrap();
    assert_eq!(records.seen()[0], ("create", Outcome::Timeout));
    assert_eq!(records.seen()[1].0, "list");
    let machines = all_machines(&api).await;
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0].id, machine.id);
    api.delete(APP, machine.id, true).await.unwrap();
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout_and_an_idempotent_call_is_retried() {
    let local = Local::start(Options::bare()).await;
    let (patient, _) = local.client(|_| {});
    let machine = patient
        .create(APP, &request("m", "launch-t"))
        .await
        .unwrap();
    let (api, records) = local.client(|c| c.call_timeout = Duration::from_secs(1));
    local
        .arm(json!({"kind": "api", "action": "get", "count": 1, "delay_ms": 3000}))
        .await;
    assert_eq!(api.get(APP, machine.id).await.unwrap().id, machine.id);
    assert_eq!(
        records.seen(),
        [("get", Outcome::Timeout), ("get", Outcome::Status(200))]
    );
    let (impatient, _) = local.client(|c| {
        c.call_timeout = Duration::from_secs(1);
        c.retry = RetryPolicy::never();
    });
    local
        .arm(json!({"kind": "api", "action": "get", "count": 1, "delay_ms": 3000}))
        .await;
    assert_eq!(
        impatient.get(APP, machine.id).await.unwrap_err(),
        FlyApiError::Timeout
    );
    patient.delete(APP, machine.id, true).await.unwrap();
}

#[tokio::test]
async fn a_rate_limited_create_is_retried_without_a_lookup() {
    let local = Local::start(Options::bare()).await;
    let (api, records) = local.client(|_| {});
    local
        .arm(json!({"kind": "api", "action": "create", "count": 2, "status": 429}))
        .await;
    let machine = api
        .create(APP, &request("slot-9", "launch-9"))
        .await
        .unwrap();
    assert_eq!(
        records.seen(),
        [
            ("create", Outcome::Status(429)),
            ("create", Outcome::Status(429)),
            ("create", Outcome::Status(200)),
        ]
    );
    assert_eq!(all_machines(&api).await.len(), 1);
    api.delete(APP, machine.id, true).await.unwrap();
}

#[tokio::test]
async fn the_platform_rate_limits_are_absorbed_by_retries() {
    // Fly's limits as flyby-local plays them: creates at 1/s with bursts of 3. Six creates in a
    // row go beyond the burst; the client waits and retries the refused ones (a 429 was not
    // performed) and every create succeeds, once.
    let local = Local::start(Options::bare().args(&["--rate-limits=on"])).await;
    let (api, records) = local.client(|c| {
        c.retry = RetryPolicy {
            max_attempts: 12,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(800),
            max_elapsed: Duration::from_secs(30),
        }
    });
    let mut ids = Vec::new();
    for n in 0..6 {
        let machine = api
            .create(APP, &request(&format!("burst-{n}"), &format!("launch-{n}")))
            .await
            .unwrap();
        ids.push(machine.id);
    }
    let seen = records.seen();
    assert!(
        seen.contains(&("create", Outcome::Status(429))),
        "the burst was exceeded: {seen:?}"
    );
    assert_eq!(
        seen.iter()
            .filter(|r| **r == ("create", Outcome::Status(200)))
            .count(),
        6
    );
    assert!(
        !seen.iter().any(|(action, _)| *action == "list"),
        "{seen:?}"
    );
    assert_eq!(all_machines(&api).await.len(), 6);
    for id in ids {
        api.delete(APP, id, true).await.unwrap();
    }
}
