//! The client against a scripted stand-in for the Machines API: exact control over each answer
//! (a 500 after performing a create, a connection dropped mid-call, a `Retry-After`), and a
//! record of every request the client made.

use super::*;
use crate::fly::RegionCode;
use crate::server::launcher::machine_spec::tests::create_request as launcher_request;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
};
use tokio::net::TcpListener;

const TOKEN: &str = "test-token-Zq9";
const APP: &str = "flyby-machines";

/// What the stand-in does with the next request of an action.
#[derive(Debug, Clone)]
enum Script {
    /// Answer this instead of performing the call.
    Reply {
        status: u16,
        body: String,
        retry_after: Option<&'static str>,
    },
    /// Perform the call, then answer with this status and Fly's error body.
    PerformThen(u16),
    /// Close the connection without answering.
    Hangup,
    /// Perform the call, then close the connection without answering.
    PerformThenHangup,
}

fn reply(status: u16, body: Value) -> Script {
    Script::Reply {
        status,
        body: body.to_string(),
        retry_after: None,
    }
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
struct Seen {
    action: &'static str,
    method: String,
    path: String,
    query: Option<String>,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Option<Value>,
}

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
    script: VecDeque<(&'static str, Script)>,
    machines: Vec<Value>,
    next_id: u64,
}

struct Fake {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Fake {
    async fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Fake { addr, state }
    }

    fn script(&self, action: &'static str, script: Script, times: usize) {
        let mut state = self.state.lock().unwrap();
        for _ in 0..times {
            state.script.push_back((action, script.clone()));
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn actions(&self) -> Vec<&'static str> {
        self.seen().iter().map(|s| s.action).collect()
    }

    fn machines(&self) -> Vec<Value> {
        self.state.lock().unwrap().machines.clone()
    }

    /// Puts a Machine there directly, as another launcher would have.
    fn add_machine(&self, name: &str, metadata: Value) -> MachineId {
        let mut state = self.state.lock().unwrap();
        let body = json!({"name": name, "config": {"image": "x", "metadata": metadata}});
        let machine = new_machine(&mut state, &body);
        let id = MachineId::parse(machine["id"].as_str().unwrap()).unwrap();
        state.machines.push(machine);
        id
    }

    fn client(&self, token: &str) -> (FlyApi, Arc<Mutex<Vec<CallRecord>>>) {
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = records.clone();
        let mut config = FlyApiConfig::new(
            format!("http://{}", self.addr),
            ApiToken::new(token).unwrap(),
        );
        config.retry = RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            max_elapsed: Duration::from_secs(20),
        };
        config.observer = Some(Arc::new(move |r: &CallRecord| {
            sink.lock().unwrap().push(r.clone())
        }));
        (FlyApi::new(config).unwrap(), records)
    }
}

fn new_machine(state: &mut State, body: &Value) -> Value {
    state.next_id += 1;
    let id = format!("{:014x}", 0xe000_0000u64 + state.next_id);
    let name = body["name"]
        .as_str()
        .map_or_else(|| format!("generated-{}", state.next_id), str::to_owned);
    json!({
        "id": id,
        "name": name,
        "state": "created",
        "region": body.get("region").cloned().unwrap_or(json!("ams")),
        "instance_id": format!("01HEPA330HZ37A78TK080NAK{:02}", state.next_id),
        "private_ip": format!("127.0.0.{}", state.next_id + 1),
        "config": body["config"].clone(),
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "events": []
    })
}

fn action_of(method: &hyper::Method, path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", [_, _, _, "machines"]) => "create",
        ("GET", [_, _, _, "machines"]) => "list",
        ("GET", [_, _, _, "machines", _]) => "get",
        ("GET", [_, _, _, "machines", _, "wait"]) => "wait",
        ("POST", [_, _, _, "machines", _, "stop"]) => "stop",
        ("DELETE", [_, _, _, "machines", _]) => "delete",
        _ => "other",
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: hyper::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let path = parts.uri.path().to_owned();
    let action = action_of(&parts.method, &path);
    let json_body: Option<Value> = serde_json::from_slice(&body).ok();
    let mut state = state.lock().unwrap();
    state.seen.push(Seen {
        action,
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_owned),
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: json_body.clone(),
    });
    let respond = |status: u16, body: String, retry_after: Option<&str>| {
        let mut response = Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("content-type", "application/json");
        if let Some(seconds) = retry_after {
            response = response.header("retry-after", seconds);
        }
        Ok(response.body(Full::new(Bytes::from(body))).unwrap())
    };
    if header("authorization").as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return respond(
            401,
            json!({"error": "token validation error"}).to_string(),
            None,
        );
    }
    let scripted = state
        .script
        .iter()
        .position(|(a, _)| *a == action)
        .and_then(|i| state.script.remove(i))
        .map(|(_, s)| s);
    match &scripted {
        Some(Script::Reply {
            status,
            body,
            retry_after,
        }) => return respond(*status, body.clone(), *retry_after),
        Some(Script::Hangup) => return Err(std::io::Error::other("hang up")),
        Some(Script::PerformThen(_) | Script::PerformThenHangup) | None => {}
    }
    let id = path.rsplit('/').find(|s| s.len() == 14).map(str::to_owned);
    let (status, answer) = match action {
        "create" => {
            let body = json_body.unwrap_or_default();
            let taken = state
                .machines
                .iter()
                .find(|m| m["name"] == body["name"] && m["state"] != "destroyed");
            match taken {
                Some(m) => (
                    409,
                    json!({"error": format!(
                        "already_exists: unique machine name violation, machine ID {} already exists with name {}",
                        m["id"].as_str().unwrap(), m["name"]
                    )}),
                ),
                None => {
                    let machine = new_machine(&mut state, &body);
                    state.machines.push(machine.clone());
                    (200, machine)
                }
            }
        }
        "list" => (200, Value::Array(state.machines.clone())),
        "get" => match state
            .machines
            .iter()
            .find(|m| Some(m["id"].as_str().unwrap()) == id.as_deref())
        {
            Some(m) => (200, m.clone()),
            None => (404, json!({"error": "machine not found"})),
        },
        "delete" => match state
            .machines
            .iter()
            .position(|m| Some(m["id"].as_str().unwrap()) == id.as_deref())
        {
            Some(i) => {
                state.machines.remove(i);
                (200, json!({"ok": true}))
            }
            None => (404, json!({"error": "machine not found"})),
        },
        "wait" | "stop" => (200, json!({"ok": true})),
        _ => (404, json!({"error": "no such route"})),
    };
    match scripted {
        Some(Script::PerformThen(status)) => {
            respond(status, json!({"error": "internal error"}).to_string(), None)
        }
        Some(Script::PerformThenHangup) => Err(std::io::Error::other("hang up")),
        _ => respond(status, answer.to_string(), None),
    }
}

fn outcomes(records: &Mutex<Vec<CallRecord>>) -> Vec<(&'static str, Outcome, bool)> {
    records
        .lock()
        .unwrap()
        .iter()
        .map(|r| (r.action, r.outcome, r.retry_in.is_some()))
        .collect()
}

// --- create --------------------------------------------------------------------------------

#[tokio::test]
async fn create_sends_the_token_and_the_exact_body_and_reads_the_machine() {
    let fake = Fake::start().await;
    let (api, records) = fake.client(TOKEN);
    let request = launcher_request();
    let machine = api.create(APP, &request).await.unwrap();
    assert_eq!(machine.name, "flyby-slot-3");
    assert_eq!(machine.state, MachineState::Created);
    assert_eq!(machine.region.as_str(), "ams");
    assert_eq!(machine.metadata(), request.config.metadata);
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v1/apps/flyby-machines/machines");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(
        seen[0].body.as_ref(),
        Some(&serde_json::to_value(&request).unwrap())
    );
    assert_eq!(
        outcomes(&records),
        vec![("create", Outcome::Status(200), false)]
    );
}

#[tokio::test]
async fn a_create_that_failed_with_500_is_retried_only_after_a_lookup_finds_nothing() {
    let fake = Fake::start().await;
    let (api, records) = fake.client(TOKEN);
    fake.script("create", reply(500, json!({"error": "boom"})), 1);
    let machine = api.create(APP, &launcher_request()).await.unwrap();
    assert_eq!(fake.actions(), ["create", "list", "create"]);
    assert_eq!(fake.machines().len(), 1);
    assert_eq!(fake.machines()[0]["id"], machine.id.as_str());
    assert_eq!(
        outcomes(&records),
        vec![
            ("create", Outcome::Status(500), true),
            ("list", Outcome::Status(200), false),
            ("create", Outcome::Status(200), false),
        ]
    );
}

#[tokio::test]
async fn a_create_that_happened_but_answered_500_is_found_not_repeated() {
    let fake = Fake::start().await;
    let (api, _) = fake.client(TOKEN);
    fake.script("create", Script::PerformThen(500), 1);
    let machine = api.create(APP, &launcher_request()).await.unwrap();
    assert_eq!(fake.actions(), ["create", "list"]);
    assert_eq!(fake.machines().len(), 1);
    assert_eq!(fake.machines()[0]["id"], machine.id.as_str());
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_is_found_not_repeated() {
    let fake = Fake::start().await;
    let (api, records) = fake.client(TOKEN);
    fake.script("create", Script::PerformThenHangup, 1);
    let machine = api.create(APP, &launcher_request()).await.unwrap();
    assert_eq!(fake.actions(), ["create", "list"]);
    assert_eq!(fake.machines().len(), 1);
    assert_eq!(fake.machines()[0]["id"], machine.id.as_str());
    assert_eq!(records.lock().unwrap()[0].outcome, Outcome::Unavailable);
}

#[tokio::test]
async fn a_create_refused_before_it_happened_is_retried_after_the_lookup() {
    let fake = Fake::start().await;
    let (api, _) = fake.client(TOKEN);
    fake.script("create", Script::Hangup, 1);
    api.create(APP, &launcher_request()).await.unwrap();
    assert_eq!(fake.actions(), ["create", "list", "create"]);
    assert_eq!(fake.machines().len(), 1);
}

#[tokio::test]
async fn a_created_machine_not_listed_yet_is_recognised_by_the_name_conflict() {
    // Fly's list is eventually consistent: the lookup may miss a Machine created a moment ago.
    // The retry then hits the name's uniqueness, which names the Machine holding it.
    let fake = Fake::start().await;
    let (api, _) = fake.client(TOKEN);
    fake.script("create", Script::PerformThen(503), 1);
    fake.script("list", reply(200, json!([])), 1);
    let machine = api.create(APP, &launcher_request()).await.unwrap();
    assert_eq!(fake.actions(), ["create", "list", "create", "get"]);
    assert_eq!(fake.machines().len(), 1);
    assert_eq!(fake.machines()[0]["id"], machine.id.as_str());
}

#[tokio::test]
async fn a_name_held_by_another_machine_is_name_taken() {
    let fake = Fake::start().await;
    let (api, _) = fake.client(TOKEN);
    let theirs = fake.add_machine("flyby-slot-3", json!({"flyby_launch": "someone-else"}));
    let err = api.create(APP, &launcher_request()).await.unwrap_err();
    assert_eq!(
        err,
        FlyApiError::NameTaken {
            name: "flyby-slot-3".into(),
            existing: Some(theirs)
        }
    );
    assert_eq!(fake.actions(), ["create"]);

    // The same after a doubtful attempt: the lookup finds theirs, nothing is retried.
    fake.script("create", reply(502, json!({"error": "bad gateway"})), 1);
    let err = api.create(APP, &launcher_request()).await.unwrap_err();
    assert!(matches!(err, FlyApiError::NameTaken { existing: Some(id), .. } if id == theirs));
    assert_eq!(fake.actions(), ["create", "create", "list"]);
    assert_eq!(fake.machines().len(), 1);
}

#[tokio::test]
async fn a_create_without_a_name_is_not_retried_after_a_doubtful_failure() {
    let fake = Fake::start().await;
    let (api, _) = fake.client(TOKEN);
    fake.script("create", Script::PerformThen(500), 1);
    let request = CreateMachineRequest {
        name: None,
        ..launcher_request()
    };
    let err = api.create(APP, &request).await.unwrap_err();
    assert!(matches!(err, FlyApiError::Api { status: 500, .. }), "{err}");
    assert!(err.create_may_have_happened());
    assert_eq!(fake.actions(), ["create"]);
}

#[tokio::test]
async fn when_absence_cannot_be_proven_the_create_is_not_repeated() {
    let fake = Fake::start().await;
    let (api, _) = fake.client(TOKEN);
    fake.script("create", reply(500, json!({"error": "boom"})), 1);
    fake.script("list", reply(503, json!({"error": "down"})), 100);
    let err = api.create(APP, &launcher_request()).await.unwrap_err();
    assert!(matches!(err, FlyApiError::Api { status: 500, .. }), "{err}");
    assert_eq!(fake.actions().iter().filter(|a| **a == "create").count(), 1);
}

#[tokio::test]
async fn a_rate_limited_create_is_retried_without_a_lookup() {
    let fake = Fake::start().await;
    let (api, records) = fake.client(TOKEN);
    fake.script(
        "create",
        Script::Reply {
            status: 429,
            body: json!({"error": "rate limited"}).to_string(),
            retry_after: Some("1"),
        },
        1,
    );
    api.create(APP, &launcher_request()).await.unwrap();
    assert_eq!(fake.actions(), ["create", "create"]);
    let first = records.lock().unwrap()[0].clone();
    assert_eq!(first.outcome, Outcome::Status(429));
    assert!(
        first.retry_in.unwrap() >= Duration::from_secs(1),
        "Retry-After is a floor: {first:?}"
    );
}

#[tokio::test]
async fn a_rate_limit_that_outlasts_the_budget_is_reported_not_slept() {
    let fake = Fake::start().await;
    let (api, _) = fake.client(TOKEN);
    fake.script(
        "get",
        Script::Reply {
            status: 429,
            body: "{}".into(),
            retry_after: Some("3600"),
        },
        1,
    );
    let id = fake.add_machine("m", json!({}));
    let err = api.get(APP, id).await.unwrap_err();
    assert_eq!(
        err,
        FlyApiError::RateLimited {
            retry_after: Some(Duration::from_secs(3600))
        }
    );
    assert_eq!(fake.actions(), ["get"]);
}

#[tokio::test]
async fn capacity_errors_are_typed_and_not_retried() {
    let fake = Fake::start().await;
    let (api, _) = fake.client(TOKEN);
    fake.script(
        "create",
        reply(
            422,
            json!({"error": "insufficient resources", "status": "insufficient_capacity"}),
        ),
        1,
    );
    let err = api.create(APP, &launcher_request()).await.unwrap_err();
    assert!(
        matches!(err, FlyApiError::InsufficientCapacity { .. }),
        "{err}"
    );
    assert_eq!(fake.actions(), ["create"]);
}

// --- idempotent calls ------------------------------------------------------------------------

#[tokio::test]
async fn idempotent_calls_are_retried_on_5xx_and_lost_connections() {
    let fake = Fake::start().await;
    let (api, records) = fake.client(TOKEN);
    let id = fake.add_machine("m", json!({}));
    fake.script("get", reply(503, json!({"error": "unavailable"})), 1);
    fake.script("get", Script::Hangup, 1);
    let machine = api.get(APP, id).await.unwrap();
    assert_eq!(machine.id, id);
    assert_eq!(
        outcomes(&records),
        vec![
            ("get", Outcome::Status(503), true),
            ("get", Outcome::Unavailable, true),
            ("get", Outcome::Status(200), false),
        ]
    );
}

#[tokio::test]
async fn retries_stop_after_max_attempts() {
    let fake = Fake::start().await;
    let (api, records) = fake.client(TOKEN);
    fake.script("list", reply(500, json!({"error": "still broken"})), 100);
    let err = api.list(APP, &ListFilter::default()).await.unwrap_err();
    assert_eq!(
        err,
        FlyApiError::Api {
            status: 500,
            message: "still broken".into()
        }
    );
    assert_eq!(fake.actions().len(), 4);
    assert_eq!(records.lock().unwrap().last().unwrap().retry_in, None);
}

#[tokio::test]
async fn final_errors_are_not_retried() {
    let fake = Fake::start().await;
    let id = MachineId::parse("0123456789abcd").unwrap();
    let (api, _) = fake.client(TOKEN);
    let err = api.get(APP, id).await.unwrap_err();
    assert!(matches!(err, FlyApiError::NotFound { .. }), "{err}");
    fake.script("stop", reply(400, json!({"error": "bad request"})), 1);
    let err = api.stop(APP, id).await.unwrap_err();
    assert!(matches!(err, FlyApiError::Api { status: 400, .. }), "{err}");
    let (wrong, _) = fake.client("not-the-token");
    let err = wrong.get(APP, id).await.unwrap_err();
    assert_eq!(err, FlyApiError::Unauthorized { status: 401 });
    assert_eq!(fake.actions(), ["get", "stop", "get"]);
}

#[tokio::test]
async fn delete_is_idempotent_and_force_is_sent() {
    let fake = Fake::start().await;
    let (api, _) = fake.client(TOKEN);
    let id = fake.add_machine("m", json!({}));
    api.delete(APP, id, true).await.unwrap();
    assert!(fake.machines().is_empty());
    // Already gone: still Ok.
    api.delete(APP, id, false).await.unwrap();
    let seen = fake.seen();
    assert_eq!(seen[0].method, "DELETE");
    assert_eq!(seen[0].path, format!("/v1/apps/{APP}/machines/{id}"));
    assert_eq!(seen[0].query.as_deref(), Some("force=true"));
    assert_eq!(seen[1].query, None);
    // A delete whose first attempt succeeded but whose answer was lost: the retry sees 404.
    let id = fake.add_machine("m2", json!({}));
    fake.script("delete", Script::PerformThenHangup, 1);
    api.delete(APP, id, false).await.unwrap();
    assert!(fake.machines().is_empty());
}

#[tokio::test]
async fn stop_sends_its_body() {
    let fake = Fake::start().await;
    let (api, _) = fake.client(TOKEN);
    let id = fake.add_machine("m", json!({}));
    api.stop(APP, id).await.unwrap();
    api.stop_with(
        APP,
        id,
        &StopRequest {
            signal: Some("SIGTERM".into()),
            timeout: Some(Duration::from_secs(3).into()),
        },
    )
    .await
    .unwrap();
    let seen = fake.seen();
    assert_eq!(seen[0].path, format!("/v1/apps/{APP}/machines/{id}/stop"));
    assert_eq!(seen[0].body, Some(json!({})));
    assert_eq!(
        seen[1].body,
        Some(json!({"signal": "SIGTERM", "timeout": "3s"}))
    );
}

#[tokio::test]
async fn wait_asks_for_the_state_and_the_time_left_and_types_its_timeout() {
    let fake = Fake::start().await;
    let (api, records) = fake.client(TOKEN);
    let id = fake.add_machine("m", json!({}));
    api.wait(APP, id, WaitState::Started, Duration::from_secs(30))
        .await
        .unwrap();
    fake.script("wait", reply(408, json!({"error": "deadline exceeded"})), 1);
    let err = api
        .wait(APP, id, WaitState::Destroyed, Duration::from_secs(90))
        .await
        .unwrap_err();
    assert_eq!(err, FlyApiError::WaitTimedOut);
    fake.script("wait", reply(502, json!({})), 1);
    api.wait_for_instance(
        APP,
        id,
        "01HXYZ",
        WaitState::Stopped,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let seen = fake.seen();
    let query = |i: usize| seen[i].query.clone().unwrap();
    assert_eq!(seen[0].path, format!("/v1/apps/{APP}/machines/{id}/wait"));
    assert_eq!(query(0), "state=started&timeout=30");
    assert_eq!(
        query(1),
        "state=destroyed&timeout=60",
        "clamped to Fly's maximum"
    );
    assert_eq!(query(2), "state=stopped&timeout=20&instance_id=01HXYZ");
    let retried: u64 = query(3)
        .split('&')
        .find_map(|kv| kv.strip_prefix("timeout="))
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retried), "{}", query(3));
    assert_eq!(
        outcomes(&records)[1],
        ("wait", Outcome::Status(408), false),
        "a wait timeout is an answer, not retried"
    );
}

#[tokio::test]
async fn list_sends_its_filters_and_applies_them_to_the_answer() {
    let fake = Fake::start().await;
    let (api, _) = fake.client(TOKEN);
    let ours = fake.add_machine("a", json!({"flyby": "ephemeral"}));
    fake.add_machine("b", json!({"flyby": "launcher"}));
    fake.add_machine("c", json!({}));
    let filter = ListFilter {
        metadata: vec![("flyby".into(), "ephemeral".into())],
        region: Some(RegionCode::parse("ams").unwrap()),
        include_deleted: false,
    };
    // The stand-in ignores filters, as an older API might: the client still returns only matches.
    let machines = api.list(APP, &filter).await.unwrap();
    assert_eq!(machines.iter().map(|m| m.id).collect::<Vec<_>>(), [ours]);
    assert_eq!(
        fake.seen()[0].query.as_deref(),
        Some("region=ams&metadata.flyby=ephemeral")
    );
    assert_eq!(
        api.list(APP, &ListFilter::default()).await.unwrap().len(),
        3
    );
    assert_eq!(fake.seen()[1].query, None);
    assert_eq!(
        api.find_by_name(APP, "b").await.unwrap().map(|m| m.name),
        Some("b".to_owned())
    );
    assert_eq!(api.find_by_name(APP, "zz").await.unwrap(), None);
    // An empty app, as Fly's Go encoder writes it.
    fake.script(
        "list",
        Script::Reply {
            status: 200,
            body: "null".into(),
            retry_after: None,
        },
        1,
    );
    assert!(api
        .list(APP, &ListFilter::default())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn an_unreachable_api_is_unavailable() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut config = FlyApiConfig::new(format!("http://{addr}"), ApiToken::new(TOKEN).unwrap());
    config.retry = RetryPolicy::never();
    let api = FlyApi::new(config).unwrap();
    let err = api.list(APP, &ListFilter::default()).await.unwrap_err();
    assert!(matches!(err, FlyApiError::Unavailable { .. }), "{err}");
    assert!(!err.to_string().contains(&addr.to_string()), "{err}");
}

#[test]
fn app_names_cannot_step_out_of_their_path() {
    let api = FlyApi::new(FlyApiConfig::new(
        "http://127.0.0.1:4280/",
        ApiToken::new(TOKEN).unwrap(),
    ))
    .unwrap();
    let url = |app: &str| api.machines_url(app, &["0123456789abcd"]).to_string();
    assert_eq!(
        url("flyby-machines"),
        "http://127.0.0.1:4280/v1/apps/flyby-machines/machines/0123456789abcd"
    );
    assert_eq!(
        url("a/b?c#d"),
        "http://127.0.0.1:4280/v1/apps/a%2Fb%3Fc%23d/machines/0123456789abcd"
    );
    assert!(
        url("..").starts_with("http://127.0.0.1:4280/v1/apps/"),
        "{}",
        url("..")
    );
    // A base with a path prefix keeps it.
    let api = FlyApi::new(FlyApiConfig::new(
        "https://proxy.example/fly",
        ApiToken::new(TOKEN).unwrap(),
    ))
    .unwrap();
    assert_eq!(
        api.machines_url("x", &[]).to_string(),
        "https://proxy.example/fly/v1/apps/x/machines"
    );
}

#[test]
fn bad_base_urls_are_refused() {
    for bad in [
        "",
        "127.0.0.1:4280",
        "ftp://x",
        "mailto:x@y",
        "http://user:pass@host",
    ] {
        let config = FlyApiConfig::new(bad, ApiToken::new(TOKEN).unwrap());
        assert!(FlyApi::new(config).is_err(), "{bad}");
    }
}

/// Collects what `tracing` writes while a test runs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_token_appears_in_no_log_line_and_no_error() {
    // tracing caches each callsite's interest for the whole process, when the callsite is
    // first hit. While a single dispatcher is registered, that interest is asked of the hitting
    // thread's own subscriber: a sibling test's thread (none) that hits "fly api call" first
    // caches it as never, and this test's subscriber would see nothing. With a second
    // dispatcher registered for the test's length, every dispatcher is asked, this one too.
    let _anchor = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = Fake::start().await;
    let (api, _) = fake.client(TOKEN);
    let mut shown = vec![format!("{api:?}")];
    fake.script("create", Script::Hangup, 1);
    fake.script("list", reply(500, json!({"error": "list broke"})), 100);
    shown.push(format!("{:?}", api.create(APP, &launcher_request()).await));
    let id = fake.add_machine("m", json!({}));
    fake.script("get", reply(429, json!({})), 100);
    shown.push(format!("{:?}", api.get(APP, id).await));
    let (wrong, _) = fake.client(&format!("{TOKEN}-wrong"));
    let err = wrong.get(APP, id).await.unwrap_err();
    shown.push(format!("{err:?}"));
    shown.push(err.to_string());

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("fly api call"), "calls are logged: {logs}");
    assert!(logs.contains("/v1/apps/flyby-machines/machines"), "{logs}");
    for text in shown.iter().chain([&logs]) {
        assert!(!text.contains(TOKEN), "token leaked: {text}");
    }
}
