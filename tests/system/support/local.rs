//! A local Fly platform for a test, and visitors that use it the way a browser would: through
//! the proxy, by Host, with a cookie jar, over HTTP and WebSockets.
#![allow(dead_code)]

use flyby::{
    app::{
        launcher::{StartLaunch, TakeHandover},
        protocol::{Handover, LaunchEnd, LaunchProgress, LaunchTicket},
        AppError,
    },
    fly::MachineId,
    local::{RunningPlatform, EPHEMERAL_APP},
};
use futures::{SinkExt, StreamExt};
use reqwest::{cookie::CookieStore, header, redirect::Policy};
use serde::{de::DeserializeOwned, Serialize};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, Message},
    MaybeTlsStream, WebSocketStream,
};

pub use super::platform::TOKEN;
use super::platform::{Local, Options};

/// Starts a platform with two launchers and `--balance wrong-first`, plus `extra` arguments.
pub async fn start(extra: &[&str]) -> Local {
    Local::start(Options::product().args(extra)).await
}

/// Awaits the platform's registry changes until `found` finds something; bounded (30 s), so a
/// platform that never gets there fails the test.
pub async fn until<T>(
    platform: &RunningPlatform,
    what: &str,
    found: impl Fn(&flyby::local::Registry) -> Option<T>,
) -> T {
    let view = platform.platform();
    let mut changes = view.registry.subscribe();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(out) = found(&view.registry) {
                return out;
            }
            changes.changed().await.expect("the registry lives");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within 30 s"))
}

/// Samples, every 50 ms, how many visitor Machines are alive (in a `flyby-slot-N`, not
/// destroyed), from the platform's registry, until stopped: the peak checks the cap.
pub struct AliveSampler {
    done: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(usize, u64)>,
}

impl AliveSampler {
    pub fn start(platform: &RunningPlatform) -> Self {
        use std::sync::atomic::Ordering;
        let view = platform.platform();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        let task = tokio::spawn(async move {
            let (mut peak, mut samples) = (0, 0u64);
            let mut ticks = tokio::time::interval(Duration::from_millis(50));
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                let alive = view
                    .registry
                    .list("flyby-machines")
                    .iter()
                    .filter(|m| {
                        m.state != flyby::local::registry::MachineState::Destroyed
                            && m.name.starts_with("flyby-slot-")
                    })
                    .count();
                peak = peak.max(alive);
                samples += 1;
            }
            (peak, samples)
        });
        AliveSampler { done, task }
    }

    /// Stops sampling: (peak alive, number of samples).
    pub async fn stop(self) -> (usize, u64) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("the sampler ran")
    }
}

/// A launch that `fault` makes fail: asserts nothing is left behind, returns the visitor's error.
pub async fn failed_launch(platform: &RunningPlatform, fault: serde_json::Value) -> AppError {
    let api = Api::new(platform);
    api.fault(fault).await;
    let visitor = Visitor::new(platform, "203.0.113.1");
    let launch = visitor.start_launch().await.unwrap();
    let outcome = visitor
        .follow_launch(&launch)
        .await
        .outcome
        .expect("an outcome");
    assert!(
        api.machines().await.is_empty(),
        "a failed launch left a Machine behind"
    );
    let error = outcome.unwrap_err();
    assert_eq!(
        visitor.take_handover(&launch).await.err(),
        Some(error.clone()),
        "the hand-over answers with the launch's error"
    );
    error
}

/// The Machines API of a platform, as an operator (or a test) uses it.
pub struct Api {
    base: String,
    http: reqwest::Client,
    /// The bearer token of the `/v1` calls.
    token: String,
}

impl Api {
    pub fn new(platform: &RunningPlatform) -> Self {
        Self::at(platform.api_addr())
    }

    pub fn at(api: SocketAddr) -> Self {
        Self::with_token(api, TOKEN)
    }

    pub fn with_token(api: SocketAddr, token: &str) -> Self {
        Api {
            base: format!("http://{api}"),
            http: reqwest::Client::new(),
            token: token.to_owned(),
        }
    }

    /// Waits until no visitor Machine is left (bounded: a broken build fails instead of
    /// hanging). Each Machine found is awaited with the API's event-driven `wait`; the list is
    /// read again in case one appeared meanwhile.
    pub async fn until_no_machines(&self) {
        for _ in 0..10 {
            let machines = self.machines().await;
            if machines.is_empty() {
                return;
            }
            for m in machines {
                self.wait_destroyed(MachineId::parse(m["id"].as_str().unwrap()).unwrap())
                    .await;
            }
        }
        panic!(
            "visitor Machines keep appearing: {:?}",
            self.machines().await
        );
    }

    /// The visitors' Machines that are not destroyed, from the admin endpoint (which is not
    /// rate limited, unlike the API the launchers share).
    pub async fn machines(&self) -> Vec<serde_json::Value> {
        self.http
            .get(format!("{}/_local/machines", self.base))
            .send()
            .await
            .unwrap()
            .json::<Vec<serde_json::Value>>()
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m["app"] == EPHEMERAL_APP && m["state"] != "destroyed")
            // Visitors' Machines only: not the concierge, which never ends.
            .filter(|m| {
                m["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("flyby-slot-"))
            })
            .collect()
    }

    /// A launcher's Prometheus text, as the admin endpoint fetches it from inside the
    /// platform's network.
    pub async fn metrics(&self, id: MachineId) -> String {
        let response = self
            .http
            .get(format!("{}/_local/machines/{id}/metrics", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "metrics of {id}");
        response.text().await.unwrap()
    }

    pub async fn machine(&self, id: MachineId) -> serde_json::Value {
        self.http
            .get(format!(
                "{}/v1/apps/{EPHEMERAL_APP}/machines/{id}",
                self.base
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits (server side, event-driven) until the Machine is destroyed.
    pub async fn wait_destroyed(&self, id: MachineId) {
        let status = self
            .http
            .get(format!(
                "{}/v1/apps/{EPHEMERAL_APP}/machines/{id}/wait?state=destroyed&timeout=60",
                self.base
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "Machine {id} was not destroyed within 60 s");
    }

    pub async fn fault(&self, fault: serde_json::Value) {
        let status = self
            .http
            .post(format!("{}/_local/faults", self.base))
            .json(&fault)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "arming {fault}: {status}");
    }

    /// The Machines of `app` that are not destroyed, from the admin endpoint.
    pub async fn machine_ids(&self, app: &str) -> Vec<MachineId> {
        let all: Vec<serde_json::Value> = self
            .http
            .get(format!("{}/_local/machines", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        all.iter()
            .filter(|m| m["app"] == app && m["state"] != "destroyed")
            .map(|m| MachineId::parse(m["id"].as_str().unwrap()).unwrap())
            .collect()
    }

    /// Disarms every fault.
    pub async fn clear_faults(&self) {
        let status = self
            .http
            .delete(format!("{}/_local/faults", self.base))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "clearing faults: {status}");
    }

    pub async fn stats(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/_local/stats", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a visitor's Machine as a launcher would, but launched an hour ago: over any
    /// TTL, for the reaper. It belongs to nobody (an owner hash no secret has).
    pub async fn over_age_machine(&self) -> MachineId {
        let long_ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 3600;
        let created = self
            .post(
                "/v1/apps/flyby-machines/machines",
                serde_json::json!({
                    "name": "flyby-slot-0",
                    "config": {
                        "image": "registry.fly.io/flyby:local",
                        "env": {"FLYBY_ROLE": "ephemeral", "FLYBY_OWNER_HASH": "0".repeat(64), "FLYBY_CLAIM_SECS": "600", "FLYBY_TTL_SECS": "3600"},
                        "services": [{"protocol": "tcp", "internal_port": 8080, "ports": [{"port": 80, "handlers": ["http"]}]}],
                        "metadata": {"flyby": "ephemeral", "flyby_launched_at": long_ago.to_string()}
                    }
                }),
            )
            .await;
        assert_eq!(created.status(), 200);
        let created: serde_json::Value = created.json().await.unwrap();
        MachineId::parse(created["id"].as_str().unwrap()).unwrap()
    }
}

/// Waits until every launcher's `/health` says it knows `n` launchers: until then a visitor's
/// launches may start on more than one of them.
pub async fn until_launchers_know_each_other(platform: &Local, n: usize) {
    let launchers = Api::new(platform).machine_ids("flyby").await;
    assert_eq!(launchers.len(), n);
    let knows = |launcher: MachineId| {
        let request = platform
            .http
            .get(platform.url("flyby", "/health"))
            .header("fly-force-instance-id", launcher.as_str());
        async move {
            let answer = request.send().await.unwrap();
            answer
                .headers()
                .get("flyby-launchers")
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        }
    };
    eventually("every launcher knows the others", || async {
        for launcher in &launchers {
            if knows(*launcher).await != Some(n) {
                return false;
            }
        }
        true
    })
    .await;
}

/// Reads `condition` every 100 ms until it holds; bounded (30 s), so a platform that never
/// gets there fails the test.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    condition: impl Fn() -> F,
) {
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    tokio::time::timeout(Duration::from_secs(30), async {
        while !condition().await {
            ticks.tick().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within 30 s"))
}

/// One visitor: a browser's cookie jar, their own client address, and the two apps' origins.
pub struct Visitor {
    http: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
    proxy: SocketAddr,
    pub ip: String,
    /// The edge region this visitor enters Fly at, when not the platform's.
    edge: Option<String>,
}

/// A response of a server function: its value, or the typed error a page would show.
pub type Called<T> = Result<T, AppError>;

impl Visitor {
    pub fn new(platform: &RunningPlatform, ip: &str) -> Self {
        Self::at(platform.proxy_addr(), ip)
    }

    /// A visitor who reaches Fly at the edge in `region`, not the platform's `--edge-region`.
    pub fn from_region(platform: &RunningPlatform, ip: &str, region: &str) -> Self {
        Self::with_edge(platform.proxy_addr(), ip, Some(region))
    }

    /// A visitor of the proxy at `proxy` (for a platform running as a separate process).
    pub fn at(proxy: SocketAddr, ip: &str) -> Self {
        Self::with_edge(proxy, ip, None)
    }

    fn with_edge(proxy: SocketAddr, ip: &str, edge: Option<&str>) -> Self {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let mut headers = header::HeaderMap::new();
        headers.insert("flyby-local-client-ip", ip.parse().unwrap());
        if let Some(edge) = edge {
            headers.insert(
                flyby::local::proxy::EDGE_REGION_HEADER,
                edge.parse().unwrap(),
            );
        }
        let http = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(Policy::none())
            .resolve("flyby.localhost", proxy)
            .resolve("flyby-machines.localhost", proxy)
            .default_headers(headers)
            .build()
            .unwrap();
        Visitor {
            http,
            jar,
            proxy,
            ip: ip.to_owned(),
            edge: edge.map(str::to_owned),
        }
    }

    pub fn launcher(&self, path: &str) -> String {
        format!("http://flyby.localhost:{}{path}", self.proxy.port())
    }

    pub fn machines(&self, path: &str) -> String {
        format!(
            "http://flyby-machines.localhost:{}{path}",
            self.proxy.port()
        )
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }

    /// The value of one of this visitor's cookies for `url`, as the browser holds it.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        let header = self.jar.cookies(&url.parse().unwrap())?;
        header
            .to_str()
            .unwrap()
            .split("; ")
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")).map(str::to_owned))
    }

    /// Gives this visitor `from`'s cookie `name` for `url`, as if they had it too.
    pub fn copy_cookie(&self, from: &Visitor, url: &str, name: &str) {
        let value = from.cookie(url, name).expect("the cookie to copy");
        self.jar
            .add_cookie_str(&format!("{name}={value}; Path=/"), &url.parse().unwrap());
    }

    /// Calls a server function of the launcher the way the page does (a same-origin POST of
    /// its arguments, the struct `#[server]` makes of them, in postcard).
    pub async fn call<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        args: &impl Serialize,
    ) -> Called<T> {
        self.call_on(None, endpoint, args).await
    }

    /// [`Visitor::call`], delivered by the proxy to the launcher `on` when given (Fly's
    /// `fly-force-instance-id`, which any client may send).
    pub async fn call_on<T: DeserializeOwned>(
        &self,
        on: Option<MachineId>,
        endpoint: &str,
        args: &impl Serialize,
    ) -> Called<T> {
        let mut request = self
            .http
            .post(self.launcher(&format!("/api/{endpoint}")))
            .header(header::ORIGIN, self.launcher(""))
            .header(header::CONTENT_TYPE, POSTCARD)
            .body(postcard::to_allocvec(args).unwrap());
        if let Some(launcher) = on {
            request = request.header("fly-force-instance-id", launcher.as_str());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body = response.bytes().await.unwrap();
        if status.is_success() {
            Ok(postcard::from_bytes(&body).unwrap_or_else(|e| panic!("{endpoint}: {e}: {body:?}")))
        } else {
            assert!(
                status.is_client_error(),
                "{endpoint}: a server error is never an answer: {status} {body:?}"
            );
            Err(postcard::from_bytes(&body)
                .unwrap_or_else(|e| panic!("{endpoint}: {e}: {status} {body:?}")))
        }
    }

    pub async fn start_launch(&self) -> Called<String> {
        self.start_launch_on(None).await
    }

    /// Starts a launch by pressing the button on the launcher `on` (or wherever the proxy
    /// delivers it).
    pub async fn start_launch_on(&self, on: Option<MachineId>) -> Called<String> {
        self.call_on::<LaunchTicket>(on, "launch", &StartLaunch { region: None })
            .await
            .map(|t| t.id)
    }

    /// Follows a launch over its WebSocket until it ends; the last progress.
    pub async fn follow_launch(&self, id: &str) -> LaunchProgress {
        let mut ws = self.websocket(&self.launcher("/api/launch-progress")).await;
        ws.send(frame(&id)).await.unwrap();
        let mut last = None;
        while let Some(message) = tokio::time::timeout(Duration::from_secs(90), ws.next())
            .await
            .expect("launch progress")
        {
            let Some(progress) = unframe::<LaunchProgress>(message.unwrap()) else {
                continue;
            };
            let done = progress.outcome.is_some();
            last = Some(progress);
            if done {
                break;
            }
        }
        last.expect("some progress")
    }

    /// Asks for the hand-over, as the page does as soon as the launch is accepted; answers
    /// when the launch ends.
    pub async fn launch_end(&self, id: &str) -> Called<LaunchEnd> {
        let args = TakeHandover {
            launch: id.to_owned(),
        };
        self.call("handover", &args).await
    }

    /// The hand-over of a launch that worked; a failed launch's error.
    pub async fn take_handover(&self, id: &str) -> Called<Handover> {
        match self.launch_end(id).await? {
            LaunchEnd::HandedOver { handover, .. } => Ok(handover),
            LaunchEnd::Failed(error) => Err(error),
        }
    }

    /// Posts the secret to the claim URL, as the launcher's page does; the owner cookie lands
    /// in the jar.
    /// A `307` is followed as a browser follows it: the same form, posted again.
    pub async fn claim(&self, handover: &Handover) -> MachineId {
        let mut url = handover.claim_url.clone();
        let mut response;
        let mut redirects = 0;
        loop {
            response = self
                .http
                .post(&url)
                .form(&[("secret", &handover.secret)])
                .send()
                .await
                .unwrap();
            if response.status() != 307 {
                break;
            }
            redirects += 1;
            assert!(redirects <= 10, "a browser stops after that many redirects");
            let next = response.headers()[header::LOCATION].to_str().unwrap();
            url = response.url().join(next).unwrap().to_string();
        }
        assert_eq!(
            response.status(),
            200,
            "claim: its answer is the owner's page"
        );
        let page = response.url().path().trim_end_matches("/claim").to_owned();
        let machine = MachineId::parse(page.trim_start_matches("/m/")).unwrap();
        let html = response.text().await.unwrap();
        assert!(
            html.contains(machine.as_str()),
            "the page of {machine}: {html}"
        );
        machine
    }

    /// The whole launch: button, progress, hand-over, claim. Panics on any failure.
    pub async fn launch_and_claim(&self) -> MachineId {
        let id = self.start_launch().await.expect("launch accepted");
        let progress = self.follow_launch(&id).await;
        assert_eq!(
            progress.outcome,
            Some(Ok(())),
            "launch failed: {progress:?}"
        );
        let handover = self.take_handover(&id).await.expect("hand-over");
        self.claim(&handover).await
    }

    /// Loads the page of Machine `id` as a browser does (`Accept: text/html`).
    /// Presses "Switch it off now" on their Machine's page.
    pub async fn switch_off(&self) {
        let off = self
            .http
            .post(self.machines("/api/switch-off"))
            .send()
            .await
            .unwrap();
        assert!(off.status().is_success(), "switch-off: {}", off.status());
    }

    pub async fn machine_page(&self, id: MachineId) -> reqwest::Response {
        self.http
            .get(self.machines(&format!("/m/{id}")))
            .header(header::ACCEPT, "text/html")
            .send()
            .await
            .unwrap()
    }

    /// Asserts `response` sends this visitor to the launcher's "your Machine is gone" page.
    pub fn assert_sent_to_gone_page(&self, response: &reqwest::Response) {
        assert_eq!(
            response.status(),
            reqwest::StatusCode::SEE_OTHER,
            "a redirect to the gone page, not a 5xx"
        );
        assert_eq!(
            response.headers()[header::LOCATION],
            self.launcher("/gone").as_str()
        );
    }

    /// Opens a WebSocket with this visitor's cookies for that URL.
    pub async fn websocket(
        &self,
        url: &str,
    ) -> WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>> {
        self.try_websocket(url)
            .await
            .unwrap_or_else(|e| panic!("WebSocket {url}: {e}"))
    }

    pub async fn try_websocket(
        &self,
        url: &str,
    ) -> Result<
        WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
        tokio_tungstenite::tungstenite::Error,
    > {
        let (ws, _) = self.websocket_with_response(url).await?;
        Ok(ws)
    }

    /// Opens a WebSocket and returns the handshake response too (its headers say who answered).
    pub async fn websocket_with_response(
        &self,
        url: &str,
    ) -> Result<
        (
            WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
            tokio_tungstenite::tungstenite::handshake::client::Response,
        ),
        tokio_tungstenite::tungstenite::Error,
    > {
        let ws_url = url.replacen("http://", "ws://", 1);
        let mut request = ws_url.as_str().into_client_request().unwrap();
        if let Some(cookies) = self.jar.cookies(&url.parse().unwrap()) {
            request.headers_mut().insert(header::COOKIE, cookies);
        }
        request
            .headers_mut()
            .insert("flyby-local-client-ip", self.ip.parse().unwrap());
        if let Some(edge) = &self.edge {
            request.headers_mut().insert(
                flyby::local::proxy::EDGE_REGION_HEADER,
                edge.parse().unwrap(),
            );
        }
        let tcp = tokio::net::TcpStream::connect(self.proxy).await.unwrap();
        tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp)).await
    }
}

/// The content type of the server functions' postcard bodies.
pub const POSTCARD: &str = "application/x-postcard";

/// A server function's postcard answer (a value, or the `AppError` of an error status).
pub async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> T {
    let body = response.bytes().await.unwrap();
    postcard::from_bytes(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

/// A message of a Leptos WebSocket server function: a tag byte (0: Ok) and postcard.
pub fn frame(value: &impl Serialize) -> Message {
    let mut bytes = vec![0u8];
    bytes.extend(postcard::to_allocvec(value).unwrap());
    Message::Binary(bytes.into())
}

/// The value of an Ok message of a Leptos WebSocket server function; `None` for other frames.
pub fn unframe<T: DeserializeOwned>(message: Message) -> Option<T> {
    let Message::Binary(bytes) = message else {
        return None;
    };
    let (tag, body) = bytes.split_first()?;
    assert_eq!(*tag, 0, "an error frame: {body:?}");
    Some(postcard::from_bytes(body).unwrap())
}
