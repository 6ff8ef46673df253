#![cfg(feature = "ssr")]
//! The local Machines API and its supervisor, over real sockets: each endpoint and error code,
//! Machines as real processes (the `probe_machine` example, a shell, the real `flyby`), the fault
//! knobs, the counters, shutdown, and the JSON against Fly's OpenAPI schemas.
//!
//! Every test starts its own platform on free ports. Nothing sleeps to synchronise: tests await
//! the registry's change notifications (or the API's own `wait`), bounded so that a broken
//! platform fails a test instead of hanging it.

use bytes::Bytes;
use flyby::{
    fly::MachineId,
    local::registry::{MachineRecord, MachineState},
};
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines},
    process::{ChildStdout, Command},
};

use crate::support;

use support::platform::{Local, Options, APP, BOUND, TOKEN};

/// The words of this suite: probe and shell Machines, and their records.
impl Local {
    /// A raw body, for what `json()` cannot send.
    async fn post_raw(&self, path: &str, body: &'static str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.api_url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, app: &str, body: Value) -> Value {
        let (status, machine) = self.post(&format!("/v1/apps/{app}/machines"), body).await;
        assert_eq!(status, StatusCode::OK, "{machine}");
        machine
    }

    /// A probe Machine serving on 8080 in `ord`; `config` is merged into the default config.
    async fn create_probe(&self, config: Value) -> Value {
        let mut body = json!({
            "region": "ord",
            "config": {
                "image": "probe",
                "restart": {"policy": "no"},
                "services": [{
                    "protocol": "tcp",
                    "internal_port": 8080,
                    "ports": [{"port": 80, "handlers": ["http"]}],
                }],
            },
        });
        for (key, value) in config.as_object().unwrap() {
            body["config"][key] = value.clone();
        }
        self.create(APP, body).await
    }

    /// A shell Machine running `script`, without services (so `started` once spawned).
    async fn create_shell(&self, script: &str, config: Value) -> Value {
        let mut body = json!({
            "region": "ord",
            "config": {"image": "sh", "init": {"cmd": ["-c", script]}, "restart": {"policy": "no"}},
        });
        for (key, value) in config.as_object().unwrap() {
            body["config"][key] = value.clone();
        }
        self.create(APP, body).await
    }

    /// `wait` through the API; the status it answers.
    async fn wait(&self, machine: &Value, state: &str, timeout: u64) -> StatusCode {
        let (status, _) = self
            .get(&format!(
                "/v1/apps/{APP}/machines/{}/wait?state={state}&timeout={timeout}",
                machine["id"].as_str().unwrap()
            ))
            .await;
        status
    }

    async fn wait_started(&self, machine: &Value) {
        assert_eq!(self.wait(machine, "started", 30).await, StatusCode::OK);
    }

    fn record(&self, machine: &Value) -> MachineRecord {
        self.platform.registry.find(id(machine)).expect("machine")
    }

    /// Awaits registry changes until the Machine satisfies `condition`.
    async fn until(
        &self,
        machine: &Value,
        condition: impl Fn(&MachineRecord) -> bool,
    ) -> MachineRecord {
        let id = id(machine);
        let mut changes = self.platform.registry.subscribe();
        tokio::time::timeout(BOUND, async {
            loop {
                if let Some(record) = self.platform.registry.find(id) {
                    if condition(&record) {
                        return record;
                    }
                }
                changes.changed().await.expect("registry alive");
            }
        })
        .await
        .expect("the Machine never got there")
    }
}

fn id(machine: &Value) -> MachineId {
    MachineId::parse(machine["id"].as_str().unwrap()).unwrap()
}

fn machine_path(machine: &Value) -> String {
    format!(
        "/v1/apps/{APP}/machines/{}",
        machine["id"].as_str().unwrap()
    )
}

/// The Machine's 6PN address, where other Machines reach it.
fn private_ip(machine: &Value) -> IpAddr {
    machine["private_ip"].as_str().unwrap().parse().unwrap()
}

impl Local {
    /// A GET to the Machine's port 8080 over the private network, as another Machine sends it.
    async fn probe_get(&self, machine: &Value, path: &str) -> (StatusCode, String) {
        let client = Client::builder(TokioExecutor::new())
            .build::<_, Empty<Bytes>>(self.platform.network.clone());
        let uri = format!(
            "http://{}{path}",
            SocketAddr::new(private_ip(machine), 8080)
        );
        let response = client
            .get(uri.parse().unwrap())
            .await
            .expect("the Machine answers");
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Asks the probe to exit with `code`. It may be gone before its answer is out, so only
    /// the exit counts, not the answer.
    async fn probe_exit(&self, machine: &Value, code: i32) {
        let client = Client::builder(TokioExecutor::new())
            .build::<_, Empty<Bytes>>(self.platform.network.clone());
        let uri = format!(
            "http://{}/exit?code={code}",
            SocketAddr::new(private_ip(machine), 8080)
        );
        let _ = client.get(uri.parse().unwrap()).await;
    }
}

fn alive(pid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let signalled = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    signalled || std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Awaits a condition on another process that no event announces (what it has done with its
/// signals, what it has forked): the one place tests poll, briefly and bounded.
async fn until_proc(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not after {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `pid` ignores `signal` (`SigIgn` in /proc/<pid>/status).
fn ignores(pid: u32, signal: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

/// The processes of process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // pid (comm) state ppid pgrp ...
                    let after = stat.rsplit_once(')')?.1;
                    after.split_whitespace().nth(2)?.parse::<u32>().ok()
                })
                == Some(pgid)
        })
        .collect()
}

fn events(record: &MachineRecord) -> Vec<&str> {
    record.events.iter().map(|e| e.kind.as_str()).collect()
}

#[tokio::test]
async fn every_call_needs_the_token() {
    let local = Local::start(Options::bare()).await;
    let url = format!("{}/v1/apps/{APP}/machines", local.api_url);
    let none = local.http.get(&url).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        none.json::<Value>().await.unwrap(),
        json!({"error": "unauthorized"})
    );
    let wrong = local
        .http
        .get(&url)
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let create = local
        .http
        .post(&url)
        .json(&json!({"config": {"image": "probe"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), StatusCode::UNAUTHORIZED);
    assert!(local.platform.registry.list(APP).is_empty());

    let bearer = local
        .http
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
    assert!(bearer.headers().contains_key("fly-request-id"));
    let flyv1 = local
        .http
        .get(&url)
        .header("authorization", format!("FlyV1 {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(flyv1.status(), StatusCode::OK);
    assert_eq!(local.counter("api.list.401").await, 2);
    assert_eq!(local.counter("api.create.401").await, 1);
}

#[tokio::test]
async fn unknown_apps_and_machines_are_404() {
    let local = Local::start(Options::bare()).await;
    for (status, body) in [
        local.get("/v1/apps/nope/machines").await,
        local
            .post(
                "/v1/apps/nope/machines",
                json!({"config": {"image": "probe"}}),
            )
            .await,
        local.get("/v1/apps/nope/machines/0123456789abcd").await,
    ] {
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, json!({"error": "app not found"}));
    }
    let unknown = format!("/v1/apps/{APP}/machines/0123456789abcd");
    for (status, body) in [
        local.get(&unknown).await,
        local.get(&format!("{unknown}/wait?timeout=1")).await,
        local.post(&format!("{unknown}/start"), json!({})).await,
        local.post(&format!("{unknown}/stop"), json!({})).await,
        local.delete(&format!("{unknown}?force=true")).await,
        local
            .get(&format!("/v1/apps/{APP}/machines/not-an-id"))
            .await,
    ] {
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, json!({"error": "machine not found"}));
    }
}

#[tokio::test]
async fn bad_create_bodies_are_refused_and_change_nothing() {
    let local = Local::start(Options::bare()).await;
    let path = format!("/v1/apps/{APP}/machines");
    let (status, body) = local.post_raw(&path, "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("invalid request body"));
    assert_eq!(
        local.post_raw(&path, "[1, 2]").await.0,
        StatusCode::BAD_REQUEST
    );

    let cases = [
        (
            json!({}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "config.image is required",
        ),
        (
            json!({"config": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "config.image is required",
        ),
        (
            json!({"config": {"image": ""}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "config.image is required",
        ),
        (
            json!({"config": {"image": "probe", "env": {"N": 1}}}),
            StatusCode::BAD_REQUEST,
            "invalid config",
        ),
        (
            json!({"config": {"image": "nginx:latest"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "--image nginx:latest=",
        ),
        (
            json!({"region": "zzz", "config": {"image": "probe"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid region",
        ),
        (
            json!({"region": "AMS", "config": {"image": "probe"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid region",
        ),
        (
            json!({"config": {"image": "probe", "guest": {"memory_mb": 300}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "multiple of 256",
        ),
        (
            json!({"config": {"image": "probe", "restart": {"policy": "sometimes"}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "restart.policy",
        ),
        (
            json!({"config": {"image": "probe", "services": [{"internal_port": 0}]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "internal_port",
        ),
        (
            json!({"config": {"image": "probe", "stop_config": {"signal": "SIGNOPE"}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "stop_config.signal",
        ),
    ];
    for (body, status, message) in cases {
        let (got, answer) = local.post(&path, body.clone()).await;
        assert_eq!(got, status, "{body} -> {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(message), "{body} -> {error}");
    }
    let (_, all) = local.get(&format!("{path}?include_deleted=true")).await;
    assert_eq!(all, json!([]));
    assert!(local.platform.registry.all().is_empty());
}

#[tokio::test]
async fn a_created_machine_is_a_real_process_that_serves() {
    let local = Local::start(Options::bare()).await;
    let machine = local.create_probe(json!({})).await;
    assert_eq!(machine["state"], "created");
    let id_text = machine["id"].as_str().unwrap();
    assert!(
        id_text.len() == 14
            && id_text
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    let instance = machine["instance_id"].as_str().unwrap();
    assert_eq!(instance.len(), 26, "a ULID");
    // Fly's two addresses: IPv4 for the proxy, IPv6 (the 6PN) for other Machines.
    assert!(
        private_ip(&machine).is_ipv6()
            && machine["private_ip"].as_str().unwrap().starts_with("fdaa:"),
        "{}",
        machine["private_ip"]
    );
    humantime::parse_rfc3339(machine["created_at"].as_str().unwrap()).expect("RFC 3339");
    humantime::parse_rfc3339(machine["updated_at"].as_str().unwrap()).expect("RFC 3339");
    assert_eq!(machine["region"], "ord");
    assert_eq!(machine["events"][0]["type"], "launch");
    assert_eq!(machine["events"][0]["status"], "created");
    assert_eq!(machine["config"]["image"], "probe");
    assert_eq!(
        machine["config"]["guest"]["memory_mb"], 256,
        "Fly fills in the guest"
    );
    assert!(machine["name"].as_str().is_some_and(|n| !n.is_empty()));

    local.wait_started(&machine).await;
    assert_eq!(
        local.probe_get(&machine, "/health").await,
        (StatusCode::OK, "ok".to_owned())
    );
    let (_, report) = local.probe_get(&machine, "/whoami").await;
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["machine_id"], id_text);
    assert_eq!(report["region"], "ord");
    assert_eq!(report["app"], APP);

    let (status, shown) = local.get(&machine_path(&machine)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["state"], "started");
    assert_eq!(shown["events"][0]["type"], "start", "newest first");
    let stamps: Vec<u64> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["timestamp"].as_u64().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] >= w[1]), "{stamps:?}");
    let pid = local.record(&machine).pid.expect("a process");
    assert!(alive(pid));
    local.shutdown().await;
    assert!(!alive(pid));
}

#[tokio::test]
async fn a_machine_gets_the_environment_of_a_fly_machine_and_nothing_else() {
    let local = Local::start(Options::bare()).await;
    let machine = local
        .create_probe(json!({
            "env": {"CUSTOM": "yes", "LEPTOS_SITE_ADDR": "[::]:8080"},
            "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 512},
        }))
        .await;
    local.wait_started(&machine).await;
    let pid = local.record(&machine).pid.unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let env: Vec<(String, String)> = environ
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let id_text = machine["id"].as_str().unwrap();
    let ip_text = machine["private_ip"].as_str().unwrap();
    assert_eq!(get("FLY_APP_NAME"), Some(APP));
    assert_eq!(get("FLY_MACHINE_ID"), Some(id_text));
    assert_eq!(get("FLY_ALLOC_ID"), Some(id_text));
    assert_eq!(get("FLY_REGION"), Some("ord"));
    assert_eq!(get("PRIMARY_REGION"), Some("ord"));
    assert_eq!(get("FLY_IMAGE_REF"), Some("probe"));
    assert_eq!(get("FLY_PRIVATE_IP"), Some(ip_text));
    assert_eq!(get("FLY_PROCESS_GROUP"), Some("app"));
    assert_eq!(get("FLY_VM_MEMORY_MB"), Some("512"));
    assert_eq!(get("CUSTOM"), Some("yes"));
    assert_eq!(
        get("LEPTOS_SITE_ADDR"),
        Some("[::]:8080"),
        "the config's own: in its own network namespace, a Machine binds what it says"
    );
    // Nothing of the test process's environment leaks in, but the few inherited variables.
    let inherited = ["PATH", "RUST_LOG", "RUST_BACKTRACE", "HOME"];
    for (name, _) in std::env::vars() {
        if !inherited.contains(&name.as_str()) && get(&name).is_some() {
            assert!(
                name.starts_with("FLY_")
                    || ["CUSTOM", "PRIMARY_REGION", "LEPTOS_SITE_ADDR"].contains(&name.as_str()),
                "{name} leaked into the Machine"
            );
        }
    }
}

/// Fly's two networks (Fly docs, networking/app-services): fly-proxy delivers to a Machine's
/// private IPv4 address, other Machines reach its 6PN IPv6 address. A process that listens on
/// `0.0.0.0` gets the first only; one that listens on `[::]`, both. (Until flyby-local modelled
/// this, every Machine was reached on one loopback IPv4 address, and an IPv4-only server
/// looked fine.)
#[tokio::test]
async fn the_proxy_reaches_ipv4_and_other_machines_reach_the_6pn_ipv6_address() {
    let local = Local::start(Options::bare()).await;
    let ipv4_only = local
        .create_probe(json!({"env": {"LEPTOS_SITE_ADDR": "0.0.0.0:8080"}}))
        .await;
    let every_address = local
        .create_probe(json!({"env": {"LEPTOS_SITE_ADDR": "[::]:8080"}}))
        .await;
    local.wait_started(&ipv4_only).await;
    local.wait_started(&every_address).await;
    let network = &local.platform.network;
    for (machine, private_ok) in [(&ipv4_only, false), (&every_address, true)] {
        let addrs = local.record(machine).addrs;
        assert!(
            addrs.proxy.is_ipv4() && addrs.private.is_ipv6(),
            "{addrs:?}"
        );
        assert_eq!(
            addrs.private,
            private_ip(machine),
            "FLY_PRIVATE_IP is the 6PN one"
        );
        assert!(
            network
                .connect(SocketAddr::new(addrs.proxy, 8080))
                .await
                .is_ok(),
            "the proxy reaches {}",
            machine["config"]["env"]["LEPTOS_SITE_ADDR"]
        );
        assert_eq!(
            network
                .connect(SocketAddr::new(addrs.private, 8080))
                .await
                .is_ok(),
            private_ok,
            "the 6PN reaches {}: {private_ok}",
            machine["config"]["env"]["LEPTOS_SITE_ADDR"]
        );
    }
    // And what reaches a Machine is only its own: its neighbour's port is not its own.
    let a = local.record(&ipv4_only).addrs;
    let b = local.record(&every_address).addrs;
    assert_ne!(a.proxy, b.proxy);
    assert_ne!(a.private, b.private);
}

#[tokio::test]
async fn auto_destroy_destroys_a_machine_whose_process_exits() {
    let local = Local::start(Options::bare()).await;
    let machine = local.create_probe(json!({"auto_destroy": true})).await;
    local.wait_started(&machine).await;
    let pid = local.record(&machine).pid.unwrap();
    local.probe_exit(&machine, 0).await;
    assert_eq!(local.wait(&machine, "destroyed", 30).await, StatusCode::OK);
    let (_, shown) = local.get(&machine_path(&machine)).await;
    assert_eq!(shown["state"], "destroyed");
    assert_eq!(shown["events"][0]["type"], "destroy");
    assert_eq!(shown["events"][1]["type"], "exit");
    assert_eq!(shown["events"][1]["request"]["exit_event"]["exit_code"], 0);
    assert!(!alive(pid));
    let (_, listed) = local.get(&format!("/v1/apps/{APP}/machines")).await;
    assert_eq!(listed, json!([]));
    let (_, listed) = local
        .get(&format!("/v1/apps/{APP}/machines?include_deleted=true"))
        .await;
    assert_eq!(listed[0]["id"], machine["id"]);
    let (status, _) = local
        .post(&format!("{}/start", machine_path(&machine)), json!({}))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a destroyed Machine cannot start"
    );
}

#[tokio::test]
async fn the_restart_policy_decides_what_follows_an_exit() {
    let local = Local::start(Options::bare()).await;

    // on-failure: a failure restarts, up to max_retries; then the Machine stops.
    let machine = local
        .create_probe(json!({"restart": {"policy": "on-failure", "max_retries": 1}}))
        .await;
    local.wait_started(&machine).await;
    let first = local.record(&machine).pid.unwrap();
    local.probe_exit(&machine, 3).await;
    let restarted = local
        .until(&machine, |m| {
            m.state == MachineState::Started && events(m).contains(&"restart")
        })
        .await;
    assert_ne!(restarted.pid, Some(first), "a new process");
    assert!(!alive(first));
    local.probe_exit(&machine, 3).await;
    let stopped = local
        .until(&machine, |m| m.state == MachineState::Stopped)
        .await;
    assert_eq!(
        events(&stopped).iter().filter(|e| **e == "restart").count(),
        1
    );
    assert_eq!(
        stopped.events[0].request.as_ref().unwrap()["exit_event"]["exit_code"],
        3
    );

    // on-failure after a clean exit: stopped.
    let clean = local
        .create_probe(json!({"restart": {"policy": "on-failure"}}))
        .await;
    local.wait_started(&clean).await;
    local.probe_exit(&clean, 0).await;
    let record = local
        .until(&clean, |m| m.state == MachineState::Stopped)
        .await;
    assert!(!events(&record).contains(&"restart"));

    // no: stopped even after a failure (and not destroyed without auto_destroy).
    let never = local
        .create_probe(json!({"restart": {"policy": "no"}}))
        .await;
    local.wait_started(&never).await;
    local.probe_exit(&never, 1).await;
    assert_eq!(local.wait(&never, "stopped", 30).await, StatusCode::OK);
    assert!(!events(&local.record(&never)).contains(&"restart"));

    // always: restarted even after a clean exit.
    let always = local
        .create_probe(json!({"restart": {"policy": "always"}}))
        .await;
    local.wait_started(&always).await;
    local.probe_exit(&always, 0).await;
    local
        .until(&always, |m| {
            m.state == MachineState::Started && events(m).contains(&"restart")
        })
        .await;
    assert_eq!(local.probe_get(&always, "/health").await.0, StatusCode::OK);
}

#[tokio::test]
async fn stop_then_start() {
    let local = Local::start(Options::bare()).await;
    let machine = local.create_probe(json!({})).await;
    let path = machine_path(&machine);
    local.wait_started(&machine).await;
    let pid = local.record(&machine).pid.unwrap();

    let (status, body) = local.post(&format!("{path}/start"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("still active"));
    assert_eq!(
        local.post_raw(&format!("{path}/stop"), "{nope").await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, _) = local
        .post(&format!("{path}/stop"), json!({"signal": "SIGNOPE"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let response = local
        .http
        .post(format!("{}{path}/stop", local.api_url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the body is optional");
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"ok": true}));
    assert_eq!(local.wait(&machine, "stopped", 30).await, StatusCode::OK);
    assert!(!alive(pid));
    assert_eq!(local.record(&machine).pid, None);
    let (status, body) = local.post(&format!("{path}/stop"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "not started: {body}");
    assert_eq!(
        body,
        json!({"error": "unable to stop machine, not currently started"})
    );

    let (status, body) = local.post(&format!("{path}/start"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"previous_state": "stopped", "migrated": false, "new_host": ""})
    );
    local.wait_started(&machine).await;
    assert_eq!(local.probe_get(&machine, "/health").await.0, StatusCode::OK);
    assert_ne!(local.record(&machine).pid, Some(pid));
}

/// A started Machine whose process ignores SIGTERM (and SIGINT), and its pid.
async fn stubborn_machine(local: &Local) -> (Value, u32) {
    // Ignored signals stay ignored across exec: this Machine cannot be stopped politely.
    let machine = local
        .create_shell("trap '' INT TERM; exec sleep 600", json!({}))
        .await;
    local.wait_started(&machine).await;
    let pid = local.record(&machine).pid.unwrap();
    until_proc("the Machine ignores SIGTERM", || {
        ignores(pid, libc::SIGTERM)
    })
    .await;
    (machine, pid)
}

#[tokio::test]
async fn a_stop_ends_with_sigkill_after_the_timeout() {
    let local = Local::start(Options::bare()).await;
    let (machine, pid) = stubborn_machine(&local).await;
    let started = Instant::now();
    let (status, _) = local
        .post(
            &format!("{}/stop", machine_path(&machine)),
            json!({"signal": "SIGTERM", "timeout": "1s"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(local.wait(&machine, "stopped", 30).await, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "SIGKILL only after the timeout"
    );
    let record = local.record(&machine);
    let exit = &record
        .events
        .iter()
        .find(|e| e.kind == "exit")
        .unwrap()
        .request
        .as_ref()
        .unwrap()["exit_event"];
    assert_eq!(exit["signal"], libc::SIGKILL);
    assert_eq!(exit["requested_stop"], true);
    assert!(!alive(pid));
}

#[tokio::test]
async fn deleting_a_running_machine_needs_force() {
    let local = Local::start(Options::bare()).await;
    let machine = local.create_probe(json!({})).await;
    let path = machine_path(&machine);
    local.wait_started(&machine).await;
    let pid = local.record(&machine).pid.unwrap();

    let (status, body) = local.delete(&path).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not currently stopped"),
        "{body}"
    );
    assert_eq!(local.record(&machine).state, MachineState::Started);
    assert_eq!(
        local.delete(&format!("{path}?force=false")).await.0,
        StatusCode::CONFLICT
    );

    let (status, body) = local.delete(&format!("{path}?force=true")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"ok": true}));
    assert_eq!(local.record(&machine).state, MachineState::Destroyed);
    assert!(!alive(pid), "destroyed means the process is gone");
    assert_eq!(
        local.delete(&format!("{path}?force=true")).await.0,
        StatusCode::NOT_FOUND
    );

    // A stopped Machine needs no force.
    let other = local.create_probe(json!({})).await;
    local.wait_started(&other).await;
    local
        .post(&format!("{}/stop", machine_path(&other)), json!({}))
        .await;
    assert_eq!(local.wait(&other, "stopped", 30).await, StatusCode::OK);
    assert_eq!(local.delete(&machine_path(&other)).await.0, StatusCode::OK);
    assert_eq!(local.wait(&other, "destroyed", 5).await, StatusCode::OK);
}

#[tokio::test]
async fn a_forced_destroy_kills_at_once_and_never_lists_destroyed_while_the_process_lives() {
    let local = Local::start(Options::bare()).await;
    let (machine, pid) = stubborn_machine(&local).await;
    let path = machine_path(&machine);
    let (status, _) = local
        .post(
            &format!("{path}/stop"),
            json!({"signal": "SIGTERM", "timeout": "60s"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(local.record(&machine).state, MachineState::Stopping);
    // Stopping is not stopped: a plain destroy is refused, and changes nothing.
    assert_eq!(local.delete(&path).await.0, StatusCode::CONFLICT);
    assert!(alive(pid));

    // Watch the process table and the Machine's state side by side through the destroy.
    let platform = local.platform.clone();
    let id = id(&machine);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = tokio::spawn({
        let done = done.clone();
        async move {
            let mut seen = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let state = platform.registry.find(id).map(|m| m.state);
                if state == Some(MachineState::Destroyed) && alive(pid) {
                    return Err(format!("listed destroyed while {pid} lives"));
                }
                seen += 1;
                tokio::task::yield_now().await;
            }
            Ok(seen)
        }
    });
    let (status, _) = local.delete(&format!("{path}?force=true")).await;
    assert_eq!(status, StatusCode::OK);
    // Answered: the process is gone already, not at the stop's 60 s timeout.
    assert!(!alive(pid), "a forced destroy kills with SIGKILL");
    assert_eq!(local.record(&machine).state, MachineState::Destroyed);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = watcher.await.unwrap().unwrap();
    assert!(samples > 0);
}

#[tokio::test]
async fn machine_names_are_unique_among_live_machines_of_an_app() {
    let local = Local::start(Options::bare()).await;
    let named =
        |name: &str| json!({"name": name, "skip_launch": true, "config": {"image": "probe"}});
    let alpha = local.create(APP, named("alpha")).await;
    assert_eq!(alpha["name"], "alpha");
    let (status, body) = local
        .post(&format!("/v1/apps/{APP}/machines"), named("alpha"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body["error"],
        format!(
            "already_exists: unique machine name violation, machine ID {} already exists with name \"alpha\"",
            alpha["id"].as_str().unwrap()
        )
    );
    // Another app may use it.
    local.create("flyby", named("alpha")).await;
    // Once destroyed, the name is free again.
    assert_eq!(local.delete(&machine_path(&alpha)).await.0, StatusCode::OK);
    local.create(APP, named("alpha")).await;

    let a = local
        .create(
            APP,
            json!({"skip_launch": true, "config": {"image": "probe"}}),
        )
        .await;
    let b = local
        .create(
            APP,
            json!({"skip_launch": true, "config": {"image": "probe"}}),
        )
        .await;
    for generated in [&a, &b] {
        let name = generated["name"].as_str().unwrap();
        let parts: Vec<&str> = name.split('-').collect();
        assert_eq!(parts.len(), 3, "{name}");
        assert!(
            parts[2].len() == 4 && parts[2].chars().all(|c| c.is_ascii_digit()),
            "{name}"
        );
    }
    assert_ne!(a["name"], b["name"]);
    assert_eq!(a["state"], "created");
    assert_eq!(
        local.record(&a).state,
        MachineState::Created,
        "skip_launch: not booted"
    );
}

#[tokio::test]
async fn list_filters_by_metadata_and_region() {
    let local = Local::start(Options::bare()).await;
    let make = |region: &str, metadata: Value| json!({"region": region, "skip_launch": true, "config": {"image": "probe", "metadata": metadata}});
    let a = local
        .create(APP, make("ams", json!({"role": "a", "tier": "1"})))
        .await;
    let b = local
        .create(APP, make("ord", json!({"role": "a", "tier": "2"})))
        .await;
    let c = local.create(APP, make("ord", json!({"role": "b"}))).await;
    let ids = |list: &Value| -> BTreeSet<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let set = |machines: &[&Value]| -> BTreeSet<String> {
        machines
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let list = |query: &str| {
        let path = format!("/v1/apps/{APP}/machines{query}");
        let local = &local;
        async move {
            let (status, body) = local.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    assert_eq!(ids(&list("").await), set(&[&a, &b, &c]));
    assert_eq!(ids(&list("?metadata.role=a").await), set(&[&a, &b]));
    assert_eq!(
        ids(&list("?metadata.role=a&metadata.tier=2").await),
        set(&[&b])
    );
    assert_eq!(ids(&list("?region=ord").await), set(&[&b, &c]));
    assert_eq!(ids(&list("?region=ord&metadata.role=b").await), set(&[&c]));
    assert_eq!(ids(&list("?metadata.role=zzz").await), set(&[]));
    assert_eq!(ids(&list("?region=syd").await), set(&[]));
    assert_eq!(local.delete(&machine_path(&a)).await.0, StatusCode::OK);
    assert_eq!(ids(&list("").await), set(&[&b, &c]));
    assert_eq!(
        ids(&list("?include_deleted=true").await),
        set(&[&a, &b, &c])
    );
    assert_eq!(
        local
            .get(&format!("/v1/apps/{APP}/machines?include_deleted=maybe"))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn rate_limits_answer_429_beyond_the_burst() {
    let local = Local::start(Options::bare().args(&["--rate-limits=on"])).await;
    let machine = local
        .create(
            APP,
            json!({"skip_launch": true, "config": {"image": "probe"}}),
        )
        .await;
    let path = format!("/v1/apps/{APP}/machines");
    let mut statuses = Vec::new();
    let mut limited = None;
    // A burst of 3 then 1 per second: among 20 quick calls, some must be refused.
    for _ in 0..20 {
        let (status, body) = local.get(&path).await;
        statuses.push(status);
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(body);
            break;
        }
    }
    assert!(
        statuses[..3].iter().all(|s| *s == StatusCode::OK),
        "the burst passes: {statuses:?}"
    );
    assert_eq!(
        limited,
        Some(json!({"error": "rate limit exceeded"})),
        "{statuses:?}"
    );
    // Another action has its own bucket.
    assert_eq!(local.get(&machine_path(&machine)).await.0, StatusCode::OK);
    assert!(local.counter("api.list.429").await >= 1);
}

/// An API out of reach cannot answer "too many requests": a refused call spends none of the
/// rate limit, however many a client retries.
#[tokio::test]
async fn refused_calls_never_meet_the_rate_limit_nor_spend_it() {
    let local = Local::start(Options::bare().args(&["--rate-limits=on"])).await;
    let path = format!("/v1/apps/{APP}/machines");
    local
        .arm(json!({"kind": "api", "action": "list", "count": 10, "refuse": true}))
        .await;
    for call in 0..10 {
        let refused = local
            .http
            .get(format!("{}{path}", local.api_url))
            .bearer_auth(TOKEN)
            .send()
            .await;
        assert!(refused.is_err(), "call {call}: {refused:?}");
    }
    assert_eq!(local.counter("api.list.refused").await, 10);
    assert_eq!(local.counter("api.list.429").await, 0);
    // The whole burst is still there.
    for call in 0..3 {
        assert_eq!(local.get(&path).await.0, StatusCode::OK, "call {call}");
    }
}

#[tokio::test]
async fn wait_validates_its_query_and_times_out_with_408() {
    let local = Local::start(Options::bare()).await;
    let machine = local
        .create(
            APP,
            json!({"skip_launch": true, "config": {"image": "probe"}}),
        )
        .await;
    let path = machine_path(&machine);
    for query in [
        "timeout=61",
        "timeout=0",
        "timeout=soon",
        "state=bogus",
        "state=started&timeout=-1",
    ] {
        let (status, body) = local.get(&format!("{path}/wait?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body["error"].is_string());
    }
    let (status, body) = local
        .get(&format!("{path}/wait?state=started&timeout=1"))
        .await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert!(
        body["error"].as_str().unwrap().contains("started"),
        "{body}"
    );
    // Any of several states (fly-go repeats `state`).
    let (status, _) = local
        .get(&format!(
            "{path}/wait?state=started&state=destroyed&timeout=1"
        ))
        .await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(local.delete(&path).await.0, StatusCode::OK);
    let (status, body) = local
        .get(&format!(
            "{path}/wait?state=started&state=destroyed&timeout=5"
        ))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"ok": true})));
}

#[tokio::test]
async fn api_faults_fail_delay_or_refuse_the_next_calls() {
    let local = Local::start(Options::bare()).await;
    let list = format!("/v1/apps/{APP}/machines");
    assert_eq!(
        local
            .arm(json!({"kind": "api", "action": "list", "count": 2, "status": 503}))
            .await,
        StatusCode::OK
    );
    for _ in 0..2 {
        let (status, body) = local.get(&list).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body["error"].is_string());
    }
    assert_eq!(local.get(&list).await.0, StatusCode::OK, "consumed");

    local
        .arm(json!({"kind": "api", "action": "list", "delay_ms": 300}))
        .await;
    let before = Instant::now();
    assert_eq!(
        local.get(&list).await.0,
        StatusCode::OK,
        "a delay alone still answers"
    );
    assert!(before.elapsed() >= Duration::from_millis(300));

    local
        .arm(json!({"kind": "api", "action": "create", "refuse": true}))
        .await;
    let refused = local
        .http
        .post(format!("{}{list}", local.api_url))
        .bearer_auth(TOKEN)
        .json(&json!({"config": {"image": "probe"}, "skip_launch": true}))
        .send()
        .await;
    let error = refused.expect_err("the connection closes without an answer");
    assert!(!error.is_status(), "{error}");
    assert_eq!(local.counter("api.create.refused").await, 1);
    assert!(
        local.platform.registry.list(APP).is_empty(),
        "nothing was created"
    );
    local
        .create(
            APP,
            json!({"config": {"image": "probe"}, "skip_launch": true}),
        )
        .await;

    local
        .arm(json!({"kind": "api", "action": "any", "count": 5, "status": 500}))
        .await;
    assert_eq!(local.delete("/_local/faults").await.0, StatusCode::OK);
    assert_eq!(local.get(&list).await.0, StatusCode::OK, "cleared");
    assert_eq!(
        local.arm(json!({"kind": "nonsense"})).await,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn never_start_keeps_the_next_machine_starting() {
    let local = Local::start(Options::bare()).await;
    local.arm(json!({"kind": "never_start"})).await;
    let stuck = local.create_probe(json!({})).await;
    assert_eq!(
        local.wait(&stuck, "started", 1).await,
        StatusCode::REQUEST_TIMEOUT
    );
    let record = local.record(&stuck);
    assert_eq!(record.state, MachineState::Starting);
    assert_eq!(record.pid, None, "no process runs");
    assert_eq!(
        local.delete(&machine_path(&stuck)).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        local
            .delete(&format!("{}?force=true", machine_path(&stuck)))
            .await
            .0,
        StatusCode::OK
    );

    let next = local.create_probe(json!({})).await;
    local.wait_started(&next).await;
}

#[tokio::test]
async fn never_serve_listens_but_never_answers() {
    let local = Local::start(Options::bare()).await;
    local.arm(json!({"kind": "never_serve"})).await;
    let machine = local.create_probe(json!({})).await;
    local.wait_started(&machine).await;
    assert_eq!(
        local.record(&machine).pid,
        None,
        "a stand-in, not the process"
    );
    let mut socket = local
        .platform
        .network
        .connect(SocketAddr::new(private_ip(&machine), 8080))
        .await
        .expect("it accepts");
    socket
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    // It never answers: no byte within a generous half second (this can only ever fail if
    // the stand-in answers).
    assert!(
        tokio::time::timeout(Duration::from_millis(500), socket.read(&mut buf))
            .await
            .is_err()
    );
    local
        .post(&format!("{}/stop", machine_path(&machine)), json!({}))
        .await;
    assert_eq!(local.wait(&machine, "stopped", 30).await, StatusCode::OK);
    let closed = tokio::time::timeout(BOUND, socket.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "stopping closes what it held"
    );
}

#[tokio::test]
async fn a_crash_kills_the_process_now() {
    let local = Local::start(Options::bare()).await;
    let machine = local.create_probe(json!({})).await;
    local.wait_started(&machine).await;
    let pid = local.record(&machine).pid.unwrap();
    assert_eq!(
        local
            .arm(json!({"kind": "crash", "machine": machine["id"]}))
            .await,
        StatusCode::OK
    );
    assert_eq!(local.wait(&machine, "stopped", 30).await, StatusCode::OK);
    assert!(!alive(pid));
    let record = local.record(&machine);
    assert_eq!(
        record.events[0].request.as_ref().unwrap()["exit_event"]["signal"],
        libc::SIGKILL
    );
    assert_eq!(
        local
            .arm(json!({"kind": "crash", "machine": "0123456789abcd"}))
            .await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn drop_listener_is_armed_for_the_proxy_until_cleared() {
    let local = Local::start(Options::bare()).await;
    let machine = local
        .create(
            APP,
            json!({"skip_launch": true, "config": {"image": "probe"}}),
        )
        .await;
    local
        .arm(json!({"kind": "drop_listener", "machine": machine["id"]}))
        .await;
    assert!(local.platform.faults.listener_dropped(id(&machine)));
    local.delete("/_local/faults").await;
    assert!(!local.platform.faults.listener_dropped(id(&machine)));
}

#[tokio::test]
async fn stats_count_api_calls_by_action_and_status_and_machines_by_state() {
    let local = Local::start(Options::bare()).await;
    let running = local.create_probe(json!({})).await;
    local
        .create(
            APP,
            json!({"skip_launch": true, "config": {"image": "probe"}}),
        )
        .await;
    local.wait_started(&running).await;
    local
        .get(&format!("/v1/apps/{APP}/machines/0123456789abcd"))
        .await;
    let (status, stats) = local.get("/_local/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["counters"]["api.create.200"], 2);
    assert_eq!(stats["counters"]["api.wait.200"], 1);
    assert_eq!(stats["counters"]["api.get.404"], 1);
    assert_eq!(stats["machines"][APP], json!({"started": 1, "created": 1}));
    assert_eq!(stats["machines"]["flyby"], json!({}));
    let (_, machines) = local.get("/_local/machines").await;
    let shown = machines
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == running["id"])
        .unwrap();
    assert_eq!(shown["pid"], local.record(&running).pid.unwrap());
}

#[tokio::test]
async fn shutdown_leaves_no_process_behind() {
    let local = Local::start(Options::bare()).await;
    let probe = local
        .create_probe(json!({"restart": {"policy": "always"}}))
        .await;
    // A child of the Machine's process, in its process group: it must go too.
    let shell = local.create_shell("sleep 600 & sleep 600", json!({})).await;
    local.wait_started(&probe).await;
    local.wait_started(&shell).await;
    let pids = [
        local.record(&probe).pid.unwrap(),
        local.record(&shell).pid.unwrap(),
    ];
    assert!(pids.iter().all(|p| alive(*p)));
    until_proc("the shell forks its background sleep", || {
        group_members(pids[1]).len() >= 2
    })
    .await;
    let group = group_members(pids[1]);
    local.shutdown().await;
    for pid in pids.iter().chain(&group) {
        assert!(!alive(*pid), "{pid} outlived flyby-local");
    }
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(BOUND, lines.next_line())
        .await
        .expect("a line")
        .unwrap()
        .expect("flyby-local closed stdout")
}

#[tokio::test]
async fn ctrl_c_on_the_binary_stops_every_machine() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flyby-local"))
        .args(Options::bare().binary_args())
        .env("FLY_API_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    // Machines may log before the platform is ready: the ready line is found by its prefix.
    let mut ready = next_line(&mut stdout).await;
    while !ready.starts_with("flyby-local ready: ") {
        ready = next_line(&mut stdout).await;
    }
    let rest = ready
        .strip_prefix("flyby-local ready: proxy=http://")
        .expect(&ready);
    let (proxy, api) = rest.split_once(" api=http://").unwrap();
    let proxy: std::net::SocketAddr = proxy.parse().unwrap();
    let api: std::net::SocketAddr = api.parse().unwrap();
    assert_eq!(
        next_line(&mut stdout).await,
        format!("Open http://flyby.localhost:{}/", proxy.port())
    );

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let machine: Value = http
        .post(format!("http://{api}/v1/apps/{APP}/machines"))
        .bearer_auth(TOKEN)
        .json(&json!({"region": "ord", "config": {
            "image": "sh",
            "init": {"cmd": ["-c", "echo hello-from-machine; exec sleep 600"]},
        }}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = machine["id"].as_str().expect("created");
    let expected = format!("{APP}[{id}] ord [info] hello-from-machine");
    while next_line(&mut stdout).await != expected {}

    let machines: Value = http
        .get(format!("http://{api}/_local/machines"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = machines[0]["pid"].as_u64().expect("a process") as u32;
    assert!(alive(pid));

    let flyby_local = child.id().unwrap() as libc::pid_t;
    // SAFETY: kill(2) to our own child.
    unsafe { libc::kill(flyby_local, libc::SIGINT) };
    let status = tokio::time::timeout(BOUND, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(!alive(pid), "the Machine outlived flyby-local");
}

#[tokio::test]
async fn two_launchers_boot_in_two_regions_and_serve() {
    let local = Local::start(Options::product().args(&[
        "--rate-limits=off",
        "--balance=nearest",
        "--launcher-env=FLYBY_TEST_MARK=1",
    ]))
    .await;
    let (status, launchers) = local.get("/v1/apps/flyby/machines").await;
    assert_eq!(status, StatusCode::OK);
    let launchers = launchers.as_array().unwrap().clone();
    assert_eq!(launchers.len(), 2);
    let regions: BTreeSet<&str> = launchers
        .iter()
        .map(|m| m["region"].as_str().unwrap())
        .collect();
    assert_eq!(regions, BTreeSet::from(["ams", "ord"]));
    for launcher in &launchers {
        assert_eq!(launcher["state"], "started");
        assert_eq!(launcher["config"]["image"], "registry.fly.io/flyby:local");
        assert_eq!(launcher["config"]["env"]["FLYBY_ROLE"], "launcher");
        assert_eq!(launcher["config"]["env"]["FLYBY_TEST_MARK"], "1");
        assert!(
            launcher["config"]["env"].get("FLY_API_TOKEN").is_none(),
            "a secret, not config"
        );
        assert_eq!(launcher["config"]["services"][0]["internal_port"], 8080);
        assert_eq!(local.probe_get(launcher, "/health").await.0, StatusCode::OK);
        let pid = local.record(launcher).pid.unwrap();
        let environ =
            String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
                .into_owned();
        assert!(environ
            .split('\0')
            .any(|kv| kv == format!("FLY_API_TOKEN={TOKEN}")));
        // The API on the private network, as `_api.internal:4280` is on Fly.
        assert!(environ
            .split('\0')
            .any(|kv| kv == "FLYBY_MACHINES_API=http://[fdaa::3]:4280"));
    }
    let (_, ephemeral) = local.get(&format!("/v1/apps/{APP}/machines")).await;
    assert_eq!(ephemeral, json!([]), "the ephemeral app starts empty");
}

/// Fly's OpenAPI description, with its component schemas as JSON Schema `$defs`.
fn fly_schemas() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/fly-machines-openapi.yaml"
    ))
    .unwrap();
    let openapi: Value = serde_yaml::from_str(&text).unwrap();
    let mut defs = openapi["components"]["schemas"].clone();
    rewrite_refs(&mut defs);
    defs
}

/// OpenAPI 3 points at `#/components/schemas/X`; the validated document keeps them in `$defs`.
fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "$ref" {
                    if let Some(target) = v
                        .as_str()
                        .and_then(|r| r.strip_prefix("#/components/schemas/"))
                    {
                        *v = Value::String(format!("#/$defs/{target}"));
                    }
                } else {
                    rewrite_refs(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

fn validator(defs: &Value, schema: Value) -> jsonschema::Validator {
    let mut document = schema;
    document["$defs"] = defs.clone();
    jsonschema::validator_for(&document).expect("a valid schema")
}

fn assert_valid(validator: &jsonschema::Validator, instance: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match Fly's schema: {errors:#?}\n{instance:#}"
    );
}

#[tokio::test]
async fn create_list_and_get_json_match_fly_openapi_schemas() {
    let defs = fly_schemas();
    let request_schema = validator(&defs, json!({"$ref": "#/$defs/CreateMachineRequest"}));
    let machine_schema = validator(&defs, json!({"$ref": "#/$defs/Machine"}));
    let list_schema = validator(
        &defs,
        json!({"type": "array", "items": {"$ref": "#/$defs/Machine"}}),
    );
    let error_schema = validator(&defs, json!({"$ref": "#/$defs/ErrorResponse"}));
    // The validator can fail: a Machine whose events are not a list is refused.
    assert!(!machine_schema.is_valid(&json!({"id": "x", "events": "nope"})));
    assert!(!request_schema.is_valid(&json!({"config": {"image": 42}})));

    let request = json!({
        "name": "schema-check",
        "region": "ord",
        "skip_launch": false,
        "config": {
            "image": "probe",
            "env": {"A": "b"},
            "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
            "auto_destroy": true,
            "restart": {"policy": "no"},
            "metadata": {"owner": "test"},
            "stop_config": {"signal": "SIGINT", "timeout": "5s"},
            "services": [{
                "protocol": "tcp",
                "internal_port": 8080,
                "autostart": true,
                "ports": [{"port": 80, "handlers": ["http"], "force_https": false}],
                "concurrency": {"type": "requests", "soft_limit": 20, "hard_limit": 25},
                "checks": [{"type": "http", "port": 8080, "method": "GET", "path": "/health", "interval": "15s", "timeout": "2s"}],
            }],
            "checks": {"alive": {"type": "tcp", "port": 8080, "interval": "15s", "timeout": "2s"}},
        },
    });
    assert_valid(&request_schema, &request, "the create request");

    let local = Local::start(Options::bare()).await;
    let created = local.create(APP, request).await;
    assert_valid(&machine_schema, &created, "the create response");
    local.wait_started(&created).await;
    let (_, shown) = local.get(&machine_path(&created)).await;
    assert_valid(&machine_schema, &shown, "the get response");
    let (_, listed) = local.get(&format!("/v1/apps/{APP}/machines")).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_valid(&list_schema, &listed, "the list response");
    let (_, error) = local.get("/v1/apps/nope/machines").await;
    assert_valid(&error_schema, &error, "an error");
}
