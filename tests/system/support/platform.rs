//! The one way the integration tests run the local Fly platform: in the test's own process, on
//! free ports, with the images the suites use, its API and proxy reached over real HTTP, and
//! every Machine stopped when the test's [`Local`] is dropped (a failing test leaves nothing
//! behind either). Each suite adds only its own words, as `impl Local` blocks of its own.
#![allow(dead_code)]

use clap::Parser;
use flyby::local::{self, Args, Platform, RunningPlatform, EPHEMERAL_APP, LAUNCHER_IMAGE};
use reqwest::{redirect::Policy, Method, StatusCode};
use serde_json::Value;
use std::{
    ops::Deref,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};

/// The token every `/v1` call carries, and the launchers get.
pub const TOKEN: &str = "flyby-local-token";
/// The visitors' app: where most tests create their Machines.
pub const APP: &str = EPHEMERAL_APP;
/// A bound on every await of a platform, so that a broken one fails a test instead of hanging
/// it.
pub const BOUND: Duration = Duration::from_secs(30);

/// `target/<profile>`, where cargo put this build's binaries.
pub fn profile_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_flyby-local"))
        .parent()
        .expect("target/<profile>")
        .to_owned()
}

/// The `probe_machine` example: a tiny Machine image that reports what it received and does
/// what it is asked (see the example). `cargo test` builds examples; `cargo test --test x`
/// does not: then it is built here, once.
pub fn probe() -> PathBuf {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let dir = profile_dir();
            let path = dir.join("examples/probe_machine");
            if !path.is_file() {
                let mut build = std::process::Command::new(
                    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()),
                );
                build
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .args(["build", "--no-default-features", "--features", "ssr"])
                    .args(["--example", "probe_machine", "--target-dir"])
                    .arg(dir.parent().expect("target dir"));
                if dir.file_name().is_some_and(|n| n == "release") {
                    build.arg("--release");
                }
                let status = build.status().expect("cargo runs");
                assert!(
                    status.success(),
                    "building the probe_machine example failed"
                );
            }
            assert!(path.is_file(), "{} is missing", path.display());
            path
        })
        .clone()
}

/// What a test starts: flyby-local's command line, on free ports.
#[derive(Debug, Clone)]
pub struct Options {
    args: Vec<String>,
}

impl Options {
    /// The platform alone, for its own suites: no launcher, the `probe` image and a shell
    /// (`sh`), nearest-region balancing, no rate limits (a test about them says so).
    pub fn bare() -> Options {
        Options::base().args(&[
            "--launchers=0",
            "--rate-limits=off",
            "--image=sh=/bin/sh",
            &format!("--image=probe={}", probe().display()),
        ])
    }

    /// The product on it: two launchers of the real `flyby`, Fly's rate limits, and every
    /// request sent to a wrong Machine first (`--balance wrong-first`), so the affinity layer
    /// is what gets it to the right one.
    pub fn product() -> Options {
        let flyby = env!("CARGO_BIN_EXE_flyby");
        Options::base().args(&[
            "--balance=wrong-first",
            &format!("--image={LAUNCHER_IMAGE}={flyby}"),
            &format!("--site-root={}", super::site_root().display()),
        ])
    }

    fn base() -> Options {
        Options {
            args: vec![
                "flyby-local".into(),
                "--proxy-addr=127.0.0.1:0".into(),
                "--api-addr=127.0.0.1:0".into(),
                format!("--api-token={TOKEN}"),
            ],
        }
    }

    /// The command line for the `flyby-local` binary, without the program's name and without
    /// the token (give it as `FLY_API_TOKEN`, as a user would).
    pub fn binary_args(&self) -> Vec<String> {
        self.args
            .iter()
            .skip(1)
            .filter(|a| !a.starts_with("--api-token"))
            .cloned()
            .collect()
    }

    /// More flags; a flag given again overrides the earlier one.
    pub fn args(mut self, extra: &[&str]) -> Options {
        self.args.extend(extra.iter().map(|s| s.to_string()));
        self
    }
}

/// A running platform, and clients for its API and its proxy.
pub struct Local {
    running: Option<RunningPlatform>,
    /// Its registry, faults and network, for what no API shows.
    pub platform: Arc<Platform>,
    /// No redirects followed, `*.localhost` resolved to the proxy, no system proxy.
    pub http: reqwest::Client,
    /// `http://<the Machines API's address>`.
    pub api_url: String,
    pub proxy_port: u16,
}

impl Local {
    pub async fn start(options: Options) -> Local {
        let args = Args::try_parse_from(&options.args).expect("flyby-local arguments");
        let running = tokio::time::timeout(Duration::from_secs(90), local::start(args))
            .await
            .expect("flyby-local starts in time")
            .expect("flyby-local starts");
        let proxy = running.proxy_addr();
        let mut http = reqwest::Client::builder()
            .no_proxy()
            .redirect(Policy::none());
        // `*.localhost` need not resolve on every system: point the names at the proxy.
        for app in [APP, "flyby", "other", "nope"] {
            http = http.resolve(&format!("{app}.localhost"), proxy);
        }
        Local {
            platform: running.platform(),
            api_url: format!("http://{}", running.api_addr()),
            proxy_port: proxy.port(),
            running: Some(running),
            http: http.build().expect("a client"),
        }
    }

    /// Stops every Machine gracefully (their stop signal, then SIGKILL after their grace) and
    /// waits until none is left; dropping a `Local` kills them at once instead.
    pub async fn shutdown(mut self) {
        self.running.take().expect("running").shutdown().await;
    }

    /// `http://<app>.localhost:<proxy port><path>`: through the proxy, by Host.
    pub fn url(&self, app: &str, path: &str) -> String {
        format!("http://{app}.localhost:{}{path}", self.proxy_port)
    }

    /// An authorised call of the Machines API (or of the admin endpoint): its status and its
    /// JSON (`Null` when there is none).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.api_url))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = tokio::time::timeout(BOUND, request.send())
            .await
            .expect("the API answers in time")
            .expect("the API answers");
        let status = response.status();
        let text = response.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// Arms a fault (`POST /_local/faults`); the status it answers.
    pub async fn arm(&self, fault: Value) -> StatusCode {
        self.post("/_local/faults", fault).await.0
    }

    /// A counter of `/_local/stats`, 0 when it never moved.
    pub async fn counter(&self, name: &str) -> u64 {
        let (_, stats) = self.get("/_local/stats").await;
        stats["counters"][name].as_u64().unwrap_or(0)
    }
}

/// What the suites written against `RunningPlatform` (its addresses, its platform) still use.
impl Deref for Local {
    type Target = RunningPlatform;
    fn deref(&self) -> &RunningPlatform {
        self.running.as_ref().expect("running")
    }
}
