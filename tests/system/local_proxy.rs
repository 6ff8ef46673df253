#![cfg(feature = "ssr")]
//! The local fly-proxy over real sockets: every `fly-replay` field and both fallbacks, the
//! `fly-replay-src` format, the 10-replay and 1 MB limits, the JSON form, WebSockets, the replay
//! cache, the client routing headers, the headers fly-proxy adds and strips, each `--balance`
//! mode and the `drop_listener` fault.
//!
//! Every test starts its own platform (`flyby::local::start`) on free ports and creates its
//! Machines through the Machines API with the `probe_machine` image, which reports who it is
//! and what it received, and replays on request (`?replay=`, `?replay_json=`, `?only=`). Where
//! a test needs a Machine behaviour the probe has no switch for (answering a fallback,
//! header-form cache directives, echoing a body), it plays that Machine in-process, registered
//! in the platform's registry like any Machine; the proxy cannot tell the difference.
//!
//! No test sleeps to synchronise and none asserts on durations: outcomes are read from the
//! answers, the Machines' reports and the platform's counters.

use axum::response::IntoResponse;
use bytes::Bytes;
use flyby::{
    fly::{MachineId, RegionCode},
    local::{
        proxy::{
            replay::{FailReason, ReplayFailed, ReplaySrc},
            ERROR_HEADER,
        },
        registry::{new_ulid, MachineRecord, MachineState},
    },
};
use futures_util::{SinkExt, StreamExt};
use reqwest::{header::HeaderMap, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{SystemTime, UNIX_EPOCH},
};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

use crate::support;

use support::platform::{Local, Options, APP, BOUND};

/// A platform with `--balance <balance>`, the probe image, no launcher.
async fn platform(balance: &str) -> Local {
    Local::start(Options::bare().args(&["--edge-region=ams", &format!("--balance={balance}")]))
        .await
}

/// The words of this suite: requests through the proxy, probe Machines, scripted Machines.
impl Local {
    /// A GET of `path` on the visitors' app, through the proxy.
    fn visit(&self, path: &str) -> RequestBuilder {
        self.http.get(self.url(APP, path))
    }

    fn visit_post(&self, path: &str) -> RequestBuilder {
        self.http.post(self.url(APP, path))
    }

    /// A GET of `path` sent straight to Machine `from` (`fly-force-instance-id`), whose probe
    /// answers with the replay `directive` (unless it is `target`).
    fn replay_from(
        &self,
        from: MachineId,
        path: &str,
        directive: impl Into<String>,
        target: MachineId,
    ) -> RequestBuilder {
        self.replaying(path, directive, target)
            .header("fly-force-instance-id", from.to_string())
    }

    /// A GET of `path` whose probe answers with the replay `directive`, unless it is `target`.
    fn replaying(
        &self,
        path: &str,
        directive: impl Into<String>,
        target: MachineId,
    ) -> RequestBuilder {
        self.visit(path).query(&replay(directive, target))
    }

    async fn send(&self, request: RequestBuilder) -> Answer {
        let response = tokio::time::timeout(BOUND, request.send())
            .await
            .expect("the proxy answers in time")
            .expect("the proxy answers");
        Answer {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes().await.expect("a body"),
        }
    }

    /// An API call that must succeed: its JSON.
    async fn api_ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, json) = self.call(method, path, body).await;
        assert!(status.is_success(), "{path}: {status} {json}");
        json
    }

    /// A started probe Machine of `app` in `region`.
    async fn machine(&self, app: &str, region: &str) -> MachineId {
        self.machine_with(app, region, Value::Null).await
    }

    /// A started probe Machine whose HTTP port has these `http_options`.
    async fn machine_with(&self, app: &str, region: &str, http_options: Value) -> MachineId {
        let mut port = json!({"port": 80, "handlers": ["http"]});
        if !http_options.is_null() {
            port["http_options"] = http_options;
        }
        let body = json!({
            "region": region,
            "config": {
                "image": "probe",
                "restart": {"policy": "no"},
                "services": [{"protocol": "tcp", "internal_port": 8080, "ports": [port]}],
            },
        });
        let machine = self
            .api_ok(
                reqwest::Method::POST,
                &format!("/v1/apps/{app}/machines"),
                Some(body),
            )
            .await;
        let id = machine["id"].as_str().expect("an id");
        self.api_ok(
            reqwest::Method::GET,
            &format!("/v1/apps/{app}/machines/{id}/wait?state=started&timeout=30"),
            None,
        )
        .await;
        MachineId::parse(id).unwrap()
    }

    /// Probe Machines of `APP`, one per region, created side by side.
    async fn machines(&self, regions: &[&str]) -> Vec<MachineId> {
        futures_util::future::join_all(regions.iter().map(|r| self.machine(APP, r))).await
    }

    async fn drop_listener(&self, machine: MachineId) {
        self.api_ok(
            reqwest::Method::POST,
            "/_local/faults",
            Some(json!({"kind": "drop_listener", "machine": machine})),
        )
        .await;
    }

    /// A Machine played in this process: `script` answers every request it gets. Registered
    /// as a started Machine with an HTTP service, like one the API created.
    async fn scripted<F>(&self, region: &str, script: F) -> MachineId
    where
        F: Fn(MachineId, Seen) -> axum::response::Response + Clone + Send + Sync + 'static,
    {
        let registry = &self.platform.registry;
        let net = self
            .platform
            .network
            .machine(&[8080])
            .await
            .expect("a place on the network");
        let listener = net.listen(8080).await.expect("listen in the Machine");
        let addrs = net.addrs;
        let id = MachineId::parse(&format!(
            "{:014x}",
            rand::random::<u64>() & 0x00ff_ffff_ffff_ffff
        ))
        .unwrap();
        let router = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let script = script.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                script(
                    id,
                    Seen {
                        headers: parts.headers,
                        path_and_query: parts.uri.path_and_query().unwrap().to_string(),
                        body,
                    },
                )
            }
        });
        tokio::spawn(async move {
            // The Machine's network lives as long as it serves.
            let _net = net;
            axum::serve(listener, router).await
        });
        let now = SystemTime::now();
        let config = json!({"services": [{"protocol": "tcp", "internal_port": 8080,
                                          "ports": [{"port": 80, "handlers": ["http"]}]}]});
        registry.insert(MachineRecord {
            id,
            name: format!("scripted-{id}"),
            app: APP.to_owned(),
            region: RegionCode::parse(region).unwrap(),
            state: MachineState::Started,
            instance_id: new_ulid(),
            addrs,
            spec: serde_json::from_value(config.clone()).unwrap(),
            config,
            created_at: now,
            updated_at: now,
            events: Vec::new(),
            pid: None,
            routable_from: None,
        });
        id
    }
}

/// What a scripted Machine received.
struct Seen {
    headers: http::HeaderMap,
    path_and_query: String,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The value of query parameter `name`, decoded.
    fn query(&self, name: &str) -> Option<String> {
        let query = self.path_and_query.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then(|| percent_decode(v))
        })
    }
}

/// What the client got.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    /// The probe's JSON report.
    fn report(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "not a probe report: {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The Machine whose probe answered.
    fn machine(&self) -> MachineId {
        let report = self.report();
        MachineId::parse(report["machine_id"].as_str().unwrap()).unwrap()
    }

    /// A request header the answering probe received.
    fn seen(&self, name: &str) -> Option<String> {
        self.report()["headers"][name].as_str().map(str::to_owned)
    }

    /// The proxy's error code, when the proxy answered instead of a Machine.
    fn error(&self) -> Option<&str> {
        self.headers.get(ERROR_HEADER).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Decodes a query value (`%XX` and `+`).
fn percent_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                out.push(u8::from_str_radix(&hex, 16).expect("%XX"));
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).expect("UTF-8")
}

/// Encodes a query value.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// `?replay=<value>&only=<id>`: every Machine but `only` answers with `fly-replay: <value>`.
fn replay(value: impl Into<String>, only: MachineId) -> [(&'static str, String); 2] {
    [("replay", value.into()), ("only", only.to_string())]
}

/// `?replay_json=<json>&only=<id>`: the JSON form.
fn replay_json(value: Value, only: MachineId) -> [(&'static str, String); 2] {
    [
        ("replay_json", value.to_string()),
        ("only", only.to_string()),
    ]
}

#[tokio::test]
async fn an_instance_replay_delivers_the_original_request_there_with_fly_replay_src() {
    // wrong-first: B is named in the query, so the request lands on A first.
    let local = platform("wrong-first").await;
    let ids = local.machines(&["ord", "syd"]).await;
    let (a, b) = (ids[0], ids[1]);
    let before = micros();
    let answer = local
        .send(
            local
                .visit_post("/some/path")
                .query(&replay(format!("instance={b}"), b))
                .query(&[("k", "v")])
                .header("x-client", "kept")
                .body("hello"),
        )
        .await;
    let after = micros();
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert!(
        answer.headers.get("fly-replay").is_none(),
        "A's answer is never shown"
    );
    let report = answer.report();
    assert_eq!(answer.machine(), b);
    assert_eq!(report["method"], "POST");
    assert_eq!(report["path"], "/some/path");
    assert!(report["query"].as_str().unwrap().ends_with("&k=v"));
    assert_eq!(report["body_len"], 5);
    assert_eq!(report["headers"]["x-client"], "kept");

    let src_header = answer.seen("fly-replay-src").expect("fly-replay-src");
    let src = ReplaySrc::parse(&src_header).unwrap();
    assert_eq!(
        src_header,
        format!("instance={a};region=ord;t={}", src.t_micros),
        "exactly Fly's format"
    );
    assert!(
        (before..=after).contains(&src.t_micros),
        "µs since the epoch"
    );
    assert_eq!(
        answer.seen("fly-replay-cache-status").as_deref(),
        Some("miss")
    );
    assert_eq!(local.counter("proxy.replays.delivered").await, 1);
    assert_eq!(local.counter("proxy.requests").await, 1);

    // `state` is echoed at the end of fly-replay-src.
    let answer = local
        .send(local.replaying("/", format!("instance={b};state=abc"), b))
        .await;
    assert_eq!(answer.machine(), b);
    let src = answer.seen("fly-replay-src").unwrap();
    assert!(src.starts_with(&format!("instance={a};region=ord;t=")));
    assert!(src.ends_with(";state=abc"), "{src}");
}

#[tokio::test]
async fn bodies_up_to_1_mb_are_replayed_byte_for_byte_and_larger_ones_refused() {
    let local = platform("wrong-first").await;
    let a = local.machine(APP, "ord").await;
    let received = Arc::new(AtomicUsize::new(0));
    let echo = local
        .scripted("ord", {
            let received = received.clone();
            move |_, seen| {
                received.fetch_add(1, Ordering::SeqCst);
                seen.body.into_response()
            }
        })
        .await;
    let body: Vec<u8> = (0..900 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let answer = local
        .send(
            local
                .visit_post("/upload")
                .query(&replay(format!("instance={echo}"), echo))
                .body(body.clone()),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert!(
        answer.body == body,
        "the replayed body is the very same bytes"
    );
    assert_eq!(local.counter("proxy.replays.delivered").await, 1);

    // A chunked body (no Content-Length) is buffered and replayed just the same.
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(100_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let answer = local
        .send(
            local
                .visit_post("/upload")
                .query(&replay(format!("instance={echo}"), echo))
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    chunks,
                ))),
        )
        .await;
    assert!(answer.body == body, "chunked: the very same bytes");
    assert_eq!(local.counter("proxy.replays.delivered").await, 2);

    let too_large = vec![b'x'; 1_100_000];
    let answer = local
        .send(
            local
                .visit_post("/upload")
                .query(&replay(format!("instance={echo}"), echo))
                .body(too_large),
        )
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.error(), Some("PA01"));
    assert_eq!(local.counter("proxy.replays.too_large").await, 1);
    assert_eq!(
        received.load(Ordering::SeqCst),
        2,
        "never delivered to the target"
    );

    // Without a replay, a large body simply streams through to the Machine.
    let answer = local
        .send(
            local
                .visit_post("/upload")
                .header("fly-force-instance-id", a.to_string())
                .body(vec![b'y'; 1_500_000]),
        )
        .await;
    assert_eq!(answer.machine(), a);
    assert_eq!(answer.report()["body_len"], 1_500_000);
}

/// Fly's proxy nodes learn of a started Machine a moment later (the `routing_delay` fault):
/// meanwhile nothing reaches it through the proxy, and a replay that keeps trying long enough
/// gets there once it is known.
#[tokio::test]
async fn a_machine_is_unknown_to_the_proxy_for_the_routing_delay_after_it_starts() {
    let local = platform("nearest").await;
    let a = local.machine(APP, "ord").await;
    local
        .api_ok(
            reqwest::Method::POST,
            "/_local/faults",
            // Longer than the proxy's own retries (about 1.5 s without a `timeout`).
            Some(json!({"kind": "routing_delay", "ms": 3000})),
        )
        .await;
    let b = local.machine(APP, "ord").await;
    let straight = local
        .send(
            local
                .visit("/")
                .header("fly-force-instance-id", b.to_string()),
        )
        .await;
    assert_eq!(
        straight.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not known yet"
    );
    // Balanced requests go to the Machine the proxy knows.
    assert_eq!(local.send(local.visit("/")).await.machine(), a);
    let replayed = local
        .send(local.replay_from(a, "/", format!("instance={b};timeout=10s"), b))
        .await;
    assert_eq!(replayed.machine(), b, "known once the delay is over");
}

#[tokio::test]
async fn the_json_form_replays_with_its_transform() {
    let local = platform("wrong-first").await;
    let ids = local.machines(&["ord", "ord"]).await;
    let (a, b) = (ids[0], ids[1]);
    let instruction = json!({
        "instance": b.to_string(),
        "transform": {
            "path": "/rewritten?y=1",
            "delete_headers": ["x-secret"],
            "set_headers": [{"name": "x-set", "value": "by-a"}, {"name": "x-client", "value": "overwritten"}],
        },
    });
    let answer = local
        .send(
            local
                .visit("/original")
                .query(&replay_json(instruction, b))
                .header("x-secret", "s")
                .header("x-client", "c"),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.machine(), b);
    let report = answer.report();
    assert_eq!(report["path"], "/rewritten");
    assert_eq!(report["query"], "y=1");
    assert_eq!(report["headers"]["x-set"], "by-a");
    assert_eq!(report["headers"]["x-client"], "overwritten");
    assert!(report["headers"].get("x-secret").is_none());
    assert!(answer
        .seen("fly-replay-src")
        .unwrap()
        .starts_with(&format!("instance={a};")));

    // A JSON answer that is not a valid replay is PA03, and its body never reaches the client.
    let answer = local
        .send(
            local
                .visit("/")
                .query(&replay_json(json!({"instance": "not-an-id"}), b)),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.error(), Some("PA03"));
    assert!(!answer.text().contains("not-an-id\"}"));
}

#[tokio::test]
async fn elsewhere_excludes_the_replaying_machine() {
    // Both in one region: a nearest-region choice could land on A again, were it not excluded.
    let local = platform("wrong-first").await;
    let ids = local.machines(&["ord", "ord"]).await;
    let (a, b) = (ids[0], ids[1]);
    for _ in 0..4 {
        let answer = local.send(local.replaying("/", "elsewhere=true", b)).await;
        assert_eq!(answer.machine(), b);
        assert!(answer.seen("fly-replay-src").unwrap().contains(a.as_str()));
    }
    assert_eq!(
        local.counter("proxy.replays.delivered").await,
        4,
        "one replay each: A was never picked again"
    );
}

#[tokio::test]
async fn region_replays_honour_codes_lists_and_aliases() {
    let local = platform("nearest").await;
    let ids = local.machines(&["ams", "syd", "iad"]).await;
    let (ams, syd, iad) = (ids[0], ids[1], ids[2]);
    let from_iad = |query: [(&'static str, String); 2]| {
        local
            .visit("/")
            .header("fly-force-instance-id", iad.to_string())
            .query(&query)
    };
    let answer = local.send(from_iad(replay("region=syd", syd))).await;
    assert_eq!(answer.machine(), syd);
    assert!(answer
        .seen("fly-replay-src")
        .unwrap()
        .contains(";region=iad;"));

    let answer = local.send(from_iad(replay("region=eu", ams))).await;
    assert_eq!(answer.machine(), ams, "eu is Europe");

    let answer = local
        .send(from_iad(replay("region=\"nrt,syd,ams\"", syd)))
        .await;
    assert_eq!(
        answer.machine(),
        syd,
        "the first listed region with a Machine"
    );

    let answer = local
        .send(from_iad(replay("region=\"nrt,any\"", ams)))
        .await;
    assert_eq!(answer.machine(), ams, "any: the nearest to the edge (ams)");

    let answer = local
        .send(from_iad(replay("region=nrt;timeout=200ms", ams)))
        .await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a hard target"
    );
    assert_eq!(answer.error(), Some("PR03"));
    assert!(answer.text().contains("could not find a good candidate"));
    assert_eq!(local.counter("proxy.replays.failed").await, 1);

    let answer = local.send(from_iad(replay("region=syd,any", ams))).await;
    assert_eq!(answer.error(), Some("PA03"), "a list must be quoted");
}

#[tokio::test]
async fn app_replays_reach_another_app_and_unknown_apps_are_pa04() {
    let local = platform("nearest").await;
    local.platform.registry.ensure_app("other");
    let a = local.machine(APP, "ord").await;
    let o = local.machine("other", "ord").await;
    let answer = local
        .send(local.replay_from(a, "/cross", "app=other", o))
        .await;
    assert_eq!(answer.machine(), o);
    assert_eq!(answer.report()["app"], "other");
    assert!(answer
        .seen("fly-replay-src")
        .unwrap()
        .starts_with(&format!("instance={a};")));

    let answer = local.send(local.replaying("/", "app=nope", o)).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.error(), Some("PA04"));
    assert_eq!(local.counter("proxy.replays.app_not_found").await, 1);

    // An app that exists but has no Machine: no candidate.
    let answer = local
        .send(local.replaying("/", "app=flyby;timeout=200ms", o))
        .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.error(), Some("PR03"));
}

#[tokio::test]
async fn prefer_instance_goes_elsewhere_when_the_machine_is_unreachable() {
    let local = platform("nearest").await;
    let ids = local.machines(&["ord", "ord", "ord"]).await;
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let from_a = |query: [(&'static str, String); 2]| {
        local
            .visit("/")
            .header("fly-force-instance-id", a.to_string())
            .query(&query)
    };
    let answer = local
        .send(from_a(replay(format!("prefer_instance={b}"), b)))
        .await;
    assert_eq!(answer.machine(), b, "reachable: the preferred Machine");
    assert_eq!(answer.seen("fly-preferred-instance-unavailable"), None);

    local.drop_listener(b).await;
    let answer = local
        .send(from_a(replay(
            format!("prefer_instance={b};elsewhere=true"),
            c,
        )))
        .await;
    assert_eq!(answer.machine(), c);
    assert_eq!(
        answer.seen("fly-preferred-instance-unavailable"),
        Some(b.to_string())
    );
}

#[tokio::test]
async fn ten_chained_replays_are_followed_and_the_eleventh_is_pa02() {
    let local = platform("nearest").await;
    local.machines(&["ord", "ord"]).await;
    // Each Machine replays elsewhere, forever: ping-pong until the limit.
    let never = MachineId::parse("00000000000000").unwrap();
    let answer = local
        .send(local.replaying("/", "elsewhere=true", never))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.error(), Some("PA02"));
    assert!(answer.headers.get("fly-replay").is_none());
    assert_eq!(local.counter("proxy.replays.delivered").await, 10);
    assert_eq!(local.counter("proxy.replays.limit").await, 1);
    assert_eq!(local.counter("proxy.errors.PA02").await, 1);
}

#[tokio::test]
async fn an_invalid_fly_replay_is_pa03_and_hides_the_machines_answer() {
    let local = platform("nearest").await;
    local.machine(APP, "ord").await;
    let never = MachineId::parse("00000000000000").unwrap();
    for bad in ["bogus=1", "instance=nope", "", "timeout=soon"] {
        let answer = local.send(local.replaying("/", bad, never)).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{bad:?}");
        assert_eq!(answer.error(), Some("PA03"), "{bad:?}");
        assert!(answer.headers.get("fly-replay").is_none());
        assert!(
            !answer.text().contains("replaying"),
            "A's body is not shown"
        );
    }
    assert_eq!(local.counter("proxy.replays.invalid").await, 4);
}

#[tokio::test]
async fn an_unreachable_target_without_fallback_is_pr03() {
    let local = platform("wrong-first").await;
    let ids = local.machines(&["ord", "ord"]).await;
    let b = ids[1];
    local.drop_listener(b).await;
    // No timeout: the proxy's own retries (a few attempts), then 503.
    let answer = local
        .send(local.replaying("/", format!("instance={b}"), b))
        .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.error(), Some("PR03"));
    assert!(answer.text().contains("could not find a good candidate"));
    // A Machine that does not exist, with a timeout.
    let ghost = MachineId::parse("0123456789abcd").unwrap();
    let answer = local
        .send(local.replaying("/", format!("instance={ghost};timeout=150ms"), b))
        .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(local.counter("proxy.replays.failed").await, 2);
}

/// A scripted Machine that replays with the `r` query parameter, and answers a fallback by
/// echoing its `fly-replay-failed` header.
fn replays_then_reports_failure(_: MachineId, seen: Seen) -> axum::response::Response {
    match (seen.header("fly-replay-failed"), seen.query("r")) {
        (Some(failed), _) => (StatusCode::OK, format!("fallback:{failed}")).into_response(),
        (None, Some(r)) => (
            StatusCode::TEMPORARY_REDIRECT,
            [("fly-replay", r)],
            "replaying",
        )
            .into_response(),
        (None, None) => "plain".into_response(),
    }
}

#[tokio::test]
async fn fallbacks_bring_the_request_back_with_fly_replay_failed() {
    let local = platform("nearest").await;
    let b = local.machine(APP, "syd").await;
    let a = local.scripted("ord", replays_then_reports_failure).await;
    local.drop_listener(b).await;
    let ghost = MachineId::parse("0123456789abcd").unwrap();
    let via_a = |r: String| {
        local
            .visit("/x")
            .header("fly-force-instance-id", a.to_string())
            .query(&[("r", r)])
    };
    let failure = |answer: &Answer| -> ReplayFailed {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        let text = answer.text();
        let header = text.strip_prefix("fallback:").expect("A's fallback answer");
        ReplayFailed::parse(header).unwrap()
    };

    let answer = local
        .send(via_a(format!(
            "instance={b};timeout=300ms;fallback=prefer_self"
        )))
        .await;
    let failed = failure(&answer);
    assert_eq!(failed.instance, Some(b));
    assert_eq!(failed.app, APP);
    assert_eq!(failed.region.as_deref(), Some("syd"));
    assert_eq!(failed.replay_source, a);
    assert_eq!(failed.reason, FailReason::Timeout);

    let answer = local
        .send(via_a(format!("instance={b};fallback=force_self")))
        .await;
    assert_eq!(failure(&answer).reason, FailReason::RetriesExhausted);

    let answer = local
        .send(via_a(format!("instance={ghost};fallback=force_self")))
        .await;
    let failed = failure(&answer);
    assert_eq!(failed.reason, FailReason::NoCandidate);
    assert_eq!(failed.instance, Some(ghost));
    assert_eq!(failed.region, None, "an unknown Machine has no region");

    let answer = local
        .send(via_a(
            "region=nrt;timeout=100ms;fallback=prefer_self".into(),
        ))
        .await;
    let failed = failure(&answer);
    assert_eq!(failed.region.as_deref(), Some("nrt"));
    assert_eq!(failed.instance, None);
    assert_eq!(local.counter("proxy.replays.fallback").await, 4);
    assert_eq!(local.counter("proxy.replays.failed").await, 0);
}

#[tokio::test]
async fn a_fallback_answered_with_fly_replay_is_an_error() {
    let local = platform("nearest").await;
    let always = local
        .scripted("ord", |_, seen| {
            let r = seen.query("r").unwrap();
            (
                StatusCode::TEMPORARY_REDIRECT,
                [("fly-replay", r)],
                "body-of-the-machine",
            )
                .into_response()
        })
        .await;
    let ghost = MachineId::parse("0123456789abcd").unwrap();
    let answer = local
        .send(
            local
                .visit("/")
                .header("fly-force-instance-id", always.to_string())
                .query(&[(
                    "r",
                    format!("instance={ghost};timeout=100ms;fallback=force_self"),
                )]),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.error(), Some("PA03"));
    assert!(!answer.text().contains("body-of-the-machine"));
    assert_eq!(
        local.counter("proxy.replays.fallback").await,
        1,
        "delivered, then refused"
    );
    assert_eq!(local.counter("proxy.replays.invalid").await, 1);
}

#[tokio::test]
async fn a_websocket_upgrade_is_replayed_and_completed_by_the_final_machine() {
    let local = platform("wrong-first").await;
    let ids = local.machines(&["ord", "ord"]).await;
    let b = ids[1];
    // A replays the upgrade (never completing it); the transform points it at B's /ws.
    let instruction = json!({"instance": b.to_string(), "transform": {"path": "/ws"}});
    let url = format!(
        "ws://{APP}.localhost:{}/socket?replay_json={}",
        local.proxy_port,
        percent_encode(&instruction.to_string())
    );
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", local.proxy_port))
        .await
        .unwrap();
    let (mut socket, response) =
        tokio::time::timeout(BOUND, tokio_tungstenite::client_async(url, stream))
            .await
            .expect("in time")
            .expect("the upgrade completes");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    socket.send(Message::text("ping")).await.unwrap();
    let echo = tokio::time::timeout(BOUND, socket.next())
        .await
        .expect("in time")
        .expect("a message")
        .unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), format!("{b}:ping"));
    socket.close(None).await.unwrap();
    assert_eq!(local.counter("proxy.websockets").await, 1);
    assert_eq!(local.counter("proxy.replays.delivered").await, 1);
}

#[tokio::test]
async fn a_cut_closes_the_machines_websockets_and_refuses_new_ones_for_a_while() {
    let local = platform("nearest").await;
    let ids = local.machines(&["ams", "ams"]).await;
    let (cut, spared) = (ids[0], ids[1]);
    let open = |id: MachineId| {
        let url = format!("ws://{APP}.localhost:{}/ws", local.proxy_port);
        let port = local.proxy_port;
        async move {
            let mut request = url.into_client_request().unwrap();
            request
                .headers_mut()
                .insert("fly-force-instance-id", id.to_string().parse().unwrap());
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            tokio::time::timeout(BOUND, tokio_tungstenite::client_async(request, stream))
                .await
                .expect("in time")
        }
    };
    let (mut a, _) = open(cut).await.expect("the upgrade completes");
    let (mut b, _) = open(spared).await.expect("the upgrade completes");

    let fault = json!({"kind": "cut_websockets", "machine": cut.to_string(), "for_ms": 60_000});
    assert!(local.arm(fault).await.is_success());
    let end = tokio::time::timeout(BOUND, a.next())
        .await
        .expect("in time");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)))),
        "the cut socket ends: {end:?}"
    );
    match open(cut).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(refused)) => {
            assert_eq!(refused.status(), StatusCode::BAD_GATEWAY)
        }
        other => panic!("a new upgrade is refused during the cut: {other:?}"),
    }
    b.send(Message::text("ping")).await.unwrap();
    let echo = tokio::time::timeout(BOUND, b.next())
        .await
        .expect("in time");
    assert_eq!(
        echo.expect("a message")
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        format!("{spared}:ping"),
        "another Machine's socket is untouched"
    );
    let process_alive = local
        .visit("/")
        .header("fly-force-instance-id", cut.to_string());
    assert_eq!(
        local.send(process_alive).await.machine(),
        cut,
        "the Machine still serves"
    );

    // Cleared, the Machine takes upgrades again.
    assert!(local.delete("/_local/faults").await.0.is_success());
    let (mut again, _) = open(cut)
        .await
        .expect("the upgrade completes after the cut");
    again.send(Message::text("ping")).await.unwrap();
    let echo = tokio::time::timeout(BOUND, again.next())
        .await
        .expect("in time");
    assert_eq!(
        echo.expect("a message")
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        format!("{cut}:ping")
    );
    assert_eq!(local.counter("proxy.websockets.refused").await, 1);
}

#[tokio::test]
async fn client_routing_headers_pick_the_machine() {
    let local = platform("nearest").await;
    let ids = local.machines(&["ams", "syd", "iad"]).await;
    let (ams, syd, iad) = (ids[0], ids[1], ids[2]);
    let with = |name: &str, value: String| local.visit("/").header(name, value);

    for id in [ams, syd, iad] {
        let answer = local
            .send(with("fly-force-instance-id", id.to_string()))
            .await;
        assert_eq!(answer.machine(), id);
        assert_eq!(answer.seen("fly-force-instance-id"), None, "consumed");
    }
    let answer = local
        .send(with("fly-prefer-instance-id", syd.to_string()))
        .await;
    assert_eq!(answer.machine(), syd);
    let answer = local.send(with("fly-prefer-region", "iad".into())).await;
    assert_eq!(answer.machine(), iad);
    let answer = local.send(with("fly-prefer-region", "nrt".into())).await;
    assert_eq!(answer.machine(), ams, "no Machine there: the nearest");
    let answer = local
        .send(with("fly-force-region", "nrt, syd".into()))
        .await;
    assert_eq!(answer.machine(), syd);
    let answer = local.send(with("fly-force-region", "nrt".into())).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a hard target"
    );

    local.drop_listener(syd).await;
    let answer = local
        .send(with("fly-prefer-instance-id", syd.to_string()))
        .await;
    assert_eq!(answer.machine(), ams);
    assert_eq!(
        answer.seen("fly-preferred-instance-unavailable"),
        Some(syd.to_string())
    );
    let answer = local
        .send(with("fly-force-instance-id", syd.to_string()))
        .await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no fallback"
    );
    assert_eq!(answer.error(), Some("PR03"));

    let answer = local
        .send(with("fly-force-instance-id", "nope".into()))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn fly_headers_are_added_and_client_copies_are_not_trusted() {
    let local = platform("wrong-first").await;
    let ids = local.machines(&["ord", "ord"]).await;
    let (a, b) = (ids[0], ids[1]);
    let forged = |request: RequestBuilder| {
        request
            .header("fly-replay-src", "instance=66666666666666;region=xxx;t=1")
            .header("fly-replay-failed", "reason=timeout")
            .header("fly-client-ip", "6.6.6.6")
            .header("fly-region", "xxx")
            .header("fly-anything", "x")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-proto", "https")
            .header("flyby-local-client-ip", "203.0.113.7")
            .header("flyby-local-edge-region", "syd")
    };
    let answer = local.send(forged(local.visit("/h"))).await;
    let report = answer.report();
    let headers = &report["headers"];
    assert_eq!(headers["fly-client-ip"], "203.0.113.7");
    assert_eq!(headers["fly-region"], "syd", "the edge region");
    assert_eq!(headers["fly-forwarded-port"], local.proxy_port.to_string());
    assert_eq!(headers["x-forwarded-port"], local.proxy_port.to_string());
    assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 203.0.113.7");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-ssl"], "off");
    assert_eq!(headers["via"], "2 fly.io");
    for gone in [
        "fly-replay-src",
        "fly-replay-failed",
        "fly-anything",
        "flyby-local-client-ip",
        "flyby-local-edge-region",
    ] {
        assert!(headers.get(gone).is_none(), "{gone} reached the Machine");
    }
    let request_id = answer.headers["fly-request-id"].to_str().unwrap();
    assert!(
        request_id.ends_with("-syd") && request_id.len() == 26 + 4,
        "{request_id}"
    );

    // Through a replay too: the target sees the proxy's fly-replay-src, not the client's.
    let answer = local
        .send(forged(local.replaying("/h", format!("instance={b}"), b)))
        .await;
    assert_eq!(answer.machine(), b);
    assert!(answer
        .seen("fly-replay-src")
        .unwrap()
        .starts_with(&format!("instance={a};region=ord;")));
    assert_eq!(answer.seen("fly-replay-failed"), None);
    assert_eq!(answer.seen("fly-client-ip").as_deref(), Some("203.0.113.7"));

    // Without the local headers: the socket's address and --edge-region.
    let answer = local.send(local.visit("/")).await;
    assert_eq!(answer.seen("fly-client-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(answer.seen("fly-region").as_deref(), Some("ams"));
    assert!(answer.headers["fly-request-id"]
        .to_str()
        .unwrap()
        .ends_with("-ams"));
    let answer = local
        .send(local.visit("/").header("flyby-local-edge-region", "Sydney"))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn hosts_route_to_apps_and_apps_without_machines_have_no_candidate() {
    let local = platform("nearest").await;
    let raw = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://127.0.0.1:{}/", local.proxy_port);
    let answer = raw.get(&base).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    assert_eq!(answer.headers()[ERROR_HEADER], "unknown_host");
    assert!(answer.headers().contains_key("fly-request-id"));

    let answer = local.send(local.http.get(local.url("nope", "/"))).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error(), Some("unknown_app"));

    let answer = local.send(local.http.get(local.url("flyby", "/"))).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "an app with no started Machine"
    );
    assert_eq!(answer.error(), Some("PR01"));
    assert_eq!(local.counter("proxy.errors.PR01").await, 1);

    // An app whose Machines come from the API has no public address until one is allocated
    // (Fly docs, networking/services): its name resolves to nothing.
    local.platform.registry.ensure_app("other");
    let o = local.machine("other", "ord").await;
    let answer = local.send(local.http.get(local.url("other", "/"))).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error(), Some("unknown_host"));
    assert!(
        answer.text().contains("fly ips allocate-v6"),
        "{}",
        answer.text()
    );
    assert!(local.platform.registry.allocate_public_ips("other"));
    let answer = local.send(local.http.get(local.url("other", "/"))).await;
    assert_eq!(answer.machine(), o);
}

#[tokio::test]
async fn nearest_sends_each_edge_to_its_closest_region() {
    let local = platform("nearest").await;
    let ids = local.machines(&["lhr", "syd"]).await;
    let (lhr, syd) = (ids[0], ids[1]);
    for _ in 0..3 {
        assert_eq!(
            local.send(local.visit("/")).await.machine(),
            lhr,
            "ams -> lhr"
        );
    }
    for edge in ["syd", "nrt", "sin"] {
        let answer = local
            .send(local.visit("/").header("flyby-local-edge-region", edge))
            .await;
        assert_eq!(answer.machine(), syd, "{edge} -> syd");
    }
}

#[tokio::test]
async fn round_robin_and_random_spread_requests() {
    let local = platform("round-robin").await;
    let ids = local.machines(&["ord", "syd"]).await;
    let mut served = Vec::new();
    for _ in 0..4 {
        served.push(local.send(local.visit("/")).await.machine());
    }
    assert_ne!(served[0], served[1]);
    assert_eq!(served[0], served[2]);
    assert_eq!(served[1], served[3]);
    assert!(served.iter().all(|m| ids.contains(m)));
    local.shutdown().await;

    let local = platform("random").await;
    let ids = local.machines(&["ord", "syd"]).await;
    let mut seen = std::collections::BTreeSet::new();
    // Both Machines show up: the chance that 64 draws all pick one is 2^-63.
    for _ in 0..64 {
        let machine = local.send(local.visit("/")).await.machine();
        assert!(ids.contains(&machine));
        seen.insert(machine);
    }
    assert_eq!(seen.len(), 2);
}

#[tokio::test]
async fn wrong_first_lands_away_from_the_machine_a_request_names() {
    let local = platform("wrong-first").await;
    let ids = local.machines(&["ord", "ord"]).await;
    let (a, b) = (ids[0], ids[1]);
    for _ in 0..3 {
        let answer = local
            .send(
                local
                    .visit("/page")
                    .header("cookie", format!("owner={b}; x=1")),
            )
            .await;
        assert_eq!(answer.machine(), a, "B is named in the cookie");
        let answer = local.send(local.visit(&format!("/m/{a}/page"))).await;
        assert_eq!(answer.machine(), b, "A is named in the path");
    }
    // No name: never the Machine that served this visitor (Host + Cookie) last time.
    let visitor = |cookie: &str| local.visit("/").header("cookie", cookie.to_owned());
    let first = local.send(visitor("v=1")).await.machine();
    let second = local.send(visitor("v=1")).await.machine();
    let third = local.send(visitor("v=1")).await.machine();
    assert_ne!(first, second);
    assert_ne!(second, third);
    // And a named request is replayed to the right Machine by the app: one replay each.
    let answer = local
        .send(local.replaying("/", format!("instance={b}"), b))
        .await;
    assert_eq!(answer.machine(), b);
    assert_eq!(local.counter("proxy.replays.delivered").await, 1);
}

#[tokio::test]
async fn a_dropped_listener_makes_a_machine_unreachable_until_cleared() {
    let local = platform("round-robin").await;
    let ids = local.machines(&["ord", "ord"]).await;
    let (a, b) = (ids[0], ids[1]);
    local.drop_listener(a).await;
    for _ in 0..4 {
        assert_eq!(local.send(local.visit("/")).await.machine(), b);
    }
    let answer = local
        .send(
            local
                .visit("/")
                .header("fly-force-instance-id", a.to_string()),
        )
        .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    local
        .api_ok(reqwest::Method::DELETE, "/_local/faults", None)
        .await;
    let answer = local
        .send(
            local
                .visit("/")
                .header("fly-force-instance-id", a.to_string()),
        )
        .await;
    assert_eq!(answer.machine(), a);
}

#[tokio::test]
async fn the_path_replay_cache_skips_the_replaying_machine_until_invalidated() {
    let local = platform("wrong-first").await;
    let ids = local.machines(&["ord", "ord"]).await;
    let (a, b) = (ids[0], ids[1]);
    let pattern = format!("/m/{b}/*");
    let cache = json!({"instance": b.to_string(), "cache": {"prefix": pattern, "ttl": 60}});
    let answer = local
        .send(
            local
                .visit(&format!("/m/{b}/one"))
                .query(&replay_json(cache.clone(), b)),
        )
        .await;
    assert_eq!(answer.machine(), b);
    assert_eq!(
        answer.seen("fly-replay-cache-status").as_deref(),
        Some("miss")
    );
    assert_eq!(local.counter("proxy.replay_cache.misses").await, 1);

    // Same prefix: straight to B, without A and without fly-replay-src.
    let answer = local
        .send(
            local
                .visit(&format!("/m/{b}/two"))
                .query(&replay_json(cache.clone(), b)),
        )
        .await;
    assert_eq!(answer.machine(), b);
    assert_eq!(
        answer.seen("fly-replay-cache-status").as_deref(),
        Some("hit")
    );
    assert_eq!(answer.seen("fly-replay-src"), None);
    assert_eq!(local.counter("proxy.replay_cache.hits").await, 1);
    assert_eq!(
        local.counter("proxy.replays.delivered").await,
        1,
        "no replay"
    );

    // Another prefix is not cached.
    let answer = local
        .send(
            local
                .visit(&format!("/n/{b}"))
                .query(&[("only", b.to_string())]),
        )
        .await;
    assert_eq!(answer.machine(), a);

    // B invalidates (replaying back to A): the route is dropped.
    let invalidate = json!({"instance": a.to_string(), "cache": {"invalidate": true}});
    let answer = local
        .send(
            local
                .visit(&format!("/m/{b}/three"))
                .query(&replay_json(invalidate, a)),
        )
        .await;
    assert_eq!(answer.machine(), a);
    assert_eq!(local.counter("proxy.replay_cache.hits").await, 2);
    let answer = local
        .send(
            local
                .visit(&format!("/m/{b}/four"))
                .query(&[("only", b.to_string())]),
        )
        .await;
    assert_eq!(
        answer.machine(),
        a,
        "no cache any more: load-balanced (to A)"
    );
    assert_eq!(local.counter("proxy.replay_cache.hits").await, 2);
}

#[tokio::test]
async fn clients_may_bypass_the_cache_only_when_the_entry_allows_it() {
    let local = platform("wrong-first").await;
    let ids = local.machines(&["ord", "ord"]).await;
    let b = ids[1];
    let entry = |prefix: &str, bypass: bool| {
        json!({"instance": b.to_string(),
               "cache": {"prefix": format!("{prefix}/*"), "ttl": 60, "allow_bypass": bypass}})
    };
    for (prefix, bypass) in [("/open", true), ("/closed", false)] {
        let answer = local
            .send(
                local
                    .visit(&format!("{prefix}/{b}"))
                    .query(&replay_json(entry(prefix, bypass), b)),
            )
            .await;
        assert_eq!(answer.machine(), b);
    }
    let skip = |path: String| {
        local
            .visit(&path)
            .header("fly-replay-cache-control", "skip")
            .query(&replay_json(entry("/open", true), b))
    };
    let answer = local.send(skip(format!("/open/{b}"))).await;
    assert_eq!(answer.machine(), b);
    assert_eq!(
        answer.seen("fly-replay-cache-status").as_deref(),
        Some("bypass")
    );
    assert!(answer.seen("fly-replay-src").is_some(), "replayed by A");
    assert_eq!(local.counter("proxy.replay_cache.bypass").await, 1);

    let answer = local.send(skip(format!("/closed/{b}"))).await;
    assert_eq!(
        answer.seen("fly-replay-cache-status").as_deref(),
        Some("hit")
    );
}

#[tokio::test]
async fn header_form_cache_directives_are_honoured_with_their_minimum_ttl() {
    let local = platform("nearest").await;
    let b = local.machine(APP, "syd").await;
    // A replays with the header form and the cache headers its `ttl` parameter asks for.
    let a = local
        .scripted("ams", move |_, seen| {
            let ttl = seen.query("ttl").unwrap();
            (
                StatusCode::TEMPORARY_REDIRECT,
                [
                    ("fly-replay", format!("instance={b}")),
                    ("fly-replay-cache", "/cached/*".to_owned()),
                    ("fly-replay-cache-ttl-secs", ttl),
                ],
                "replaying",
            )
                .into_response()
        })
        .await;
    // ttl 5 is below Fly's minimum of 10: replayed but not cached.
    for _ in 0..2 {
        let answer = local.send(local.visit("/cached/x?ttl=5")).await;
        assert_eq!(answer.machine(), b);
        assert_eq!(
            answer.seen("fly-replay-cache-status").as_deref(),
            Some("miss")
        );
    }
    let answer = local.send(local.visit("/cached/x?ttl=10")).await;
    assert_eq!(
        answer.seen("fly-replay-cache-status").as_deref(),
        Some("miss")
    );
    let answer = local.send(local.visit("/cached/y?ttl=10")).await;
    assert_eq!(
        answer.seen("fly-replay-cache-status").as_deref(),
        Some("hit")
    );
    assert_eq!(answer.seen("fly-replay-src"), None);
    assert_eq!(local.counter("proxy.replays.delivered").await, 3);
    assert_eq!(local.counter("proxy.replay_cache.hits").await, 1);
    let answer = local
        .send(
            local
                .visit("/cached/z?ttl=10")
                .header("fly-force-instance-id", a.to_string()),
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "a client routing header skips the cache"
    );
    assert_eq!(answer.machine(), b);
    assert_eq!(
        answer.seen("fly-replay-cache-status").as_deref(),
        Some("miss")
    );
}

#[tokio::test]
async fn the_session_replay_cache_remembers_each_cookie_value() {
    let local = platform("wrong-first").await;
    let rules = json!({"replay_cache": [
        {"path_prefix": "/", "ttl_seconds": 300, "type": "cookie", "name": "pin"}
    ]});
    let (a, b) = tokio::join!(
        local.machine_with(APP, "ord", rules.clone()),
        local.machine_with(APP, "ord", rules)
    );
    let as_visitor = |pin: &str| {
        local
            .visit("/page")
            .header("cookie", format!("pin={pin}"))
            .query(&replay(format!("instance={b}"), b))
    };
    let answer = local.send(as_visitor("v1")).await;
    assert_eq!(answer.machine(), b);
    assert_eq!(
        answer.seen("fly-replay-cache-status").as_deref(),
        Some("miss")
    );
    let answer = local.send(as_visitor("v1")).await;
    assert_eq!(answer.machine(), b);
    assert_eq!(
        answer.seen("fly-replay-cache-status").as_deref(),
        Some("hit")
    );
    let answer = local.send(as_visitor("v2")).await;
    assert_eq!(
        answer.seen("fly-replay-cache-status").as_deref(),
        Some("miss"),
        "another session"
    );
    assert_eq!(local.counter("proxy.replay_cache.hits").await, 1);
    assert_eq!(local.counter("proxy.replays.delivered").await, 2);

    // B invalidates v1's session (replaying back to A).
    let answer = local
        .send(
            local
                .visit("/page")
                .header("cookie", "pin=v1")
                .query(&replay_json(
                    json!({"instance": a.to_string(), "cache": {"invalidate": true}}),
                    a,
                )),
        )
        .await;
    assert_eq!(answer.machine(), a);
    let answer = local.send(as_visitor("v1")).await;
    assert_eq!(
        answer.seen("fly-replay-cache-status").as_deref(),
        Some("miss")
    );
}

/// Fly's replay cache takes no replay with `state`, `timeout`, `fallback` or a transform (Fly
/// docs, networking/dynamic-request-routing): the session cache does not remember one either.
#[tokio::test]
async fn the_session_cache_remembers_no_replay_with_timeout_or_fallback() {
    let local = platform("wrong-first").await;
    let rules = json!({"replay_cache": [
        {"path_prefix": "/", "ttl_seconds": 300, "type": "cookie", "name": "pin"}
    ]});
    let (_, b) = tokio::join!(
        local.machine_with(APP, "ord", rules.clone()),
        local.machine_with(APP, "ord", rules)
    );
    for (pin, directive) in [
        ("t", format!("instance={b};timeout=2s")),
        ("f", format!("instance={b};fallback=prefer_self")),
        ("s", format!("instance={b};state=x")),
    ] {
        for _ in 0..2 {
            let answer = local
                .send(
                    local
                        .visit("/page")
                        .header("cookie", format!("pin={pin}"))
                        .query(&replay(directive.clone(), b)),
                )
                .await;
            assert_eq!(answer.machine(), b);
            assert_eq!(
                answer.seen("fly-replay-cache-status").as_deref(),
                Some("miss"),
                "{directive} is never cached"
            );
        }
    }
    assert_eq!(local.counter("proxy.replay_cache.hits").await, 0);
}

#[tokio::test]
async fn cached_routes_to_gone_or_unreachable_machines_are_dropped() {
    let local = platform("wrong-first").await;
    let ids = local.machines(&["ord", "ord", "ord"]).await;
    let (b, c) = (ids[1], ids[2]);
    let cache_to = |m: MachineId| json!({"instance": m.to_string(), "cache": {"prefix": format!("/m/{m}/*"), "ttl": 60}});
    for m in [b, c] {
        let answer = local
            .send(
                local
                    .visit(&format!("/m/{m}/a"))
                    .query(&replay_json(cache_to(m), m)),
            )
            .await;
        assert_eq!(answer.machine(), m);
    }
    // B unreachable but still started: the hit fails, the entry is dropped, and the request
    // is load-balanced as if there had been no entry.
    local.drop_listener(b).await;
    let answer = local
        .send(
            local
                .visit(&format!("/m/{b}/b"))
                .query(&[("only", b.to_string())]),
        )
        .await;
    assert_ne!(answer.machine(), b);
    assert_eq!(local.counter("proxy.replay_cache.stale").await, 1);

    // C stopped: its entry goes with it, before any request tries it.
    local
        .api_ok(
            reqwest::Method::POST,
            &format!("/v1/apps/{APP}/machines/{c}/stop"),
            Some(json!({})),
        )
        .await;
    local
        .api_ok(
            reqwest::Method::GET,
            &format!("/v1/apps/{APP}/machines/{c}/wait?state=stopped&timeout=30"),
            None,
        )
        .await;
    let answer = local
        .send(
            local
                .visit(&format!("/m/{c}/b"))
                .query(&[("only", c.to_string())]),
        )
        .await;
    assert_ne!(answer.machine(), c);
    assert_eq!(
        local.counter("proxy.replay_cache.stale").await,
        1,
        "not tried"
    );
    assert_eq!(local.counter("proxy.replay_cache.hits").await, 0);
}
