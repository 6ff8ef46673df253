//! The deploy recipe, checked without Docker and without a Fly account (`make deploy-check`):
//! - fly.toml against what the real `flyby` serves when it is started the way Fly starts it (the
//!   image's `ENV`, then fly.toml's `[env]`): the internal port, the health check, `/metrics`;
//! - fly.toml's `[env]` against the variables `flyby --help` knows;
//! - the Dockerfile against the Makefile: the image builds with `make build` and ships exactly
//!   what it produces, the server and the site, never `flyby-local`;
//! - the launcher stops with status 0 on SIGINT (Fly's default stop signal) and SIGTERM.
//!
//! The Dockerfile itself is linted by hadolint in `scripts/deploy-check`.
#![cfg(feature = "ssr")]

use crate::support;

use flyby::app::{
    launcher::{StartLaunch, TakeHandover},
    protocol::LaunchTicket,
};
use flyby::server::{
    affinity::HEALTH_PATH,
    config::{Config, VARIABLES},
};
use serde_json::Value;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};
use support::{site_root, Flyby, MACHINE_ID};
use tokio::io::{AsyncBufReadExt, BufReader};
use toml::Value as Toml;

// ---------------------------------------------------------------------------------------------
// The files under test.

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fly_toml() -> Toml {
    read("fly.toml").parse().expect("fly.toml is TOML")
}

fn cargo_toml() -> Toml {
    read("Cargo.toml").parse().expect("Cargo.toml is TOML")
}

/// `table.a.b.c`, or a panic naming the missing key.
fn at<'a>(table: &'a Toml, path: &str) -> &'a Toml {
    path.split('.').fold(table, |value, key| {
        value
            .get(key)
            .unwrap_or_else(|| panic!("`{path}` is missing"))
    })
}

fn str_at<'a>(table: &'a Toml, path: &str) -> &'a str {
    at(table, path)
        .as_str()
        .unwrap_or_else(|| panic!("`{path}` must be a string"))
}

fn int_at(table: &Toml, path: &str) -> i64 {
    at(table, path)
        .as_integer()
        .unwrap_or_else(|| panic!("`{path}` must be an integer"))
}

/// A duration of fly.toml: a string with a unit ("15s"), or a bare number of `unit`s.
fn fly_duration(value: &Toml, unit: Duration) -> Duration {
    match value {
        Toml::Integer(n) => unit * u32::try_from(*n).expect("a positive duration"),
        Toml::String(s) => humantime::parse_duration(s).unwrap_or_else(|e| panic!("{s:?}: {e}")),
        other => panic!("not a duration: {other}"),
    }
}

/// fly.toml's `[env]`: Fly requires string values.
fn fly_env() -> BTreeMap<String, String> {
    at(&fly_toml(), "env")
        .as_table()
        .expect("[env] is a table")
        .iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("[env] {k}: Fly takes only string values"));
            (k.clone(), v.to_owned())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A small Dockerfile reader: stages, their instructions, continuation lines and comments.

#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

#[derive(Debug)]
struct Stage {
    base: String,
    name: Option<String>,
    /// The `WORKDIR` inherited from the stage this one is built `FROM`, if any.
    inherited_workdir: Option<String>,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn all<'a>(&'a self, keyword: &'static str) -> impl Iterator<Item = &'a str> + 'a {
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
            .map(|i| i.args.as_str())
    }

    fn last(&self, keyword: &'static str) -> Option<&str> {
        self.all(keyword).last()
    }

    /// The `ENV` of this stage, in order; later values win.
    fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for args in self.all("ENV") {
            let words: Vec<&str> = args.split_whitespace().collect();
            if !words[0].contains('=') {
                // The legacy form `ENV KEY value words`.
                env.insert(words[0].to_owned(), words[1..].join(" "));
                continue;
            }
            for word in words {
                let (k, v) = word.split_once('=').expect("ENV KEY=value");
                env.insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
        }
        env
    }

    /// `(flags, sources, destination)` of each `COPY`.
    fn copies(&self) -> Vec<(Vec<String>, Vec<String>, String)> {
        self.all("COPY")
            .map(|args| {
                let (flags, mut paths): (Vec<String>, Vec<String>) = args
                    .split_whitespace()
                    .map(str::to_owned)
                    .partition(|w| w.starts_with("--"));
                let dest = paths.pop().expect("COPY needs a destination");
                (flags, paths, dest)
            })
            .collect()
    }

    /// The `WORKDIR` in force at the end of the stage (absolute in this Dockerfile).
    fn workdir(&self) -> &str {
        self.last("WORKDIR")
            .or(self.inherited_workdir.as_deref())
            .unwrap_or("/")
    }
}

fn dockerfile() -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    let mut pending = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        // Comments (and parser directives) are dropped, even inside a continuation.
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(part) = line.trim_end().strip_suffix('\\') {
            pending.push_str(part);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let text = std::mem::take(&mut pending);
        let (keyword, args) = text
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((text.trim(), ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.split_whitespace().collect::<Vec<_>>().join(" ");
        if keyword == "FROM" {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                _ => None,
            };
            let inherited_workdir = stages
                .iter()
                .find(|s| s.name.as_deref() == Some(words[0]))
                .map(|s| s.workdir().to_owned());
            stages.push(Stage {
                base: words[0].to_owned(),
                name,
                inherited_workdir,
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .expect("an instruction before FROM")
                .instructions
                .push(Instruction { keyword, args });
        }
    }
    assert!(
        pending.is_empty(),
        "the Dockerfile ends inside a continuation"
    );
    stages
}

fn stage<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages
        .iter()
        .find(|s| s.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no stage `{name}`"))
}

/// The image Fly runs: the last stage.
fn runtime(stages: &[Stage]) -> &Stage {
    stages.last().expect("a stage")
}

/// The stage the runtime copies from: the one and only build stage.
fn build_stage(stages: &[Stage]) -> &Stage {
    let from: BTreeSet<String> = runtime(stages)
        .copies()
        .iter()
        .map(|(flags, _, _)| {
            flags
                .iter()
                .find_map(|f| f.strip_prefix("--from="))
                .expect("the runtime stage copies only from the build stage")
                .to_owned()
        })
        .collect();
    assert_eq!(from.len(), 1, "one build stage: {from:?}");
    stage(stages, from.first().unwrap())
}

// ---------------------------------------------------------------------------------------------
// What Fly starts: the image's ENV, then fly.toml's [env] on top.

/// A token that no Fly API would accept; the API address below is the discard port anyway.
const DUMMY_TOKEN: &str = "deploy-test-token";

fn environment() -> BTreeMap<String, String> {
    let stages = dockerfile();
    let mut env = runtime(&stages).env();
    env.extend(fly_env());
    env
}

/// The variable's value in `env`, or its documented default.
fn effective<'a>(env: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    env.get(name).map(String::as_str).unwrap_or_else(|| {
        VARIABLES
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.default)
            .unwrap_or_else(|| panic!("{name} has no default"))
    })
}

fn config(env: &BTreeMap<String, String>) -> Config {
    let mut env = env.clone();
    env.insert("FLY_API_TOKEN".into(), DUMMY_TOKEN.into());
    Config::from_lookup(|name| env.get(name).cloned())
        .unwrap_or_else(|e| panic!("flyby would refuse to start on Fly: {e}"))
}

// ---------------------------------------------------------------------------------------------
// fly.toml on its own, against flyby's configuration.

#[test]
fn the_env_of_fly_toml_is_made_of_variables_flyby_knows() {
    let fly = fly_toml();
    let env = fly_env();
    let known: BTreeSet<&str> = VARIABLES.iter().map(|v| v.name).collect();
    for name in env.keys() {
        assert!(
            known.contains(name.as_str()),
            "[env] {name} is not a variable `flyby --help` knows"
        );
        // Fly reserves the FLY_ prefix for what it sets itself (fly.toml reference, [env]).
        assert!(
            !name.starts_with("FLY_"),
            "[env] {name}: Fly sets FLY_* itself"
        );
        let spec = VARIABLES.iter().find(|v| v.name == name.as_str()).unwrap();
        assert!(
            !spec.secret,
            "[env] {name} is a secret: use `fly secrets set`"
        );
    }
    assert_eq!(env["FLYBY_ROLE"], "launcher");
    let ephemeral = effective(&env, "FLYBY_EPHEMERAL_APP");
    assert_ne!(
        ephemeral,
        str_at(&fly, "app"),
        "visitors' Machines need an app of their own"
    );
    let stages = dockerfile();
    for name in runtime(&stages).env().keys() {
        assert!(
            known.contains(name.as_str()),
            "the image sets {name}, unknown to flyby"
        );
    }
    // The whole environment parses, as flyby will parse it on Fly.
    let config = config(&environment());
    assert_eq!(config.ephemeral_app, ephemeral);
}

#[test]
fn fly_toml_stops_flyby_the_way_it_stops_gracefully() {
    let fly = fly_toml();
    // flyby's shutdown_signal() handles these two; Fly's default is SIGINT.
    let signal = fly
        .get("kill_signal")
        .and_then(Toml::as_str)
        .unwrap_or("SIGINT");
    assert!(
        ["SIGINT", "SIGTERM"].contains(&signal),
        "kill_signal {signal}"
    );
    // The image says the same, for visitors' Machines, which have no fly.toml.
    let stages = dockerfile();
    assert_eq!(runtime(&stages).last("STOPSIGNAL"), Some(signal));
    // Fly kills after kill_timeout (seconds; default 5, at most 300): flyby must be done by then.
    let timeout = fly
        .get("kill_timeout")
        .map(|v| fly_duration(v, Duration::from_secs(1)))
        .unwrap_or(Duration::from_secs(5));
    let grace = config(&environment()).shutdown_grace();
    assert!(
        timeout > grace && timeout <= Duration::from_secs(300),
        "kill_timeout {timeout:?} must leave flyby its {grace:?} of grace"
    );
}

/// The benchmarks' router without its affinity layer exists only with the `bench` feature: the
/// build that is deployed (`make build`: the server with `$(SSR)`, the bundles of
/// scripts/site with `<app>-bundle`) must never enable it.
#[test]
fn the_deployed_build_cannot_serve_without_the_affinity_layer() {
    let cargo = cargo_toml();
    let make = read("Makefile");
    let ssr = make
        .lines()
        .find_map(|l| l.strip_prefix("SSR := "))
        .expect("the Makefile's SSR features");
    assert_eq!(ssr, "--no-default-features --features ssr");
    let (_, recipe) = &makefile()["build"];
    assert!(
        recipe
            .iter()
            .filter(|l| l.starts_with("cargo "))
            .all(|l| l.contains("$(SSR)") && !l.contains("bench")),
        "make build compiles the server with $(SSR) only: {recipe:?}"
    );
    let site = read("scripts/site");
    assert!(site.contains(r#"--features "${app}-bundle""#));
    for feature in ["ssr", "launcher-bundle", "machine-bundle"] {
        let implied = at(&cargo, &format!("features.{feature}"))
            .as_array()
            .unwrap();
        assert!(
            !implied.iter().any(|f| f.as_str() == Some("bench")),
            "{feature} enables bench"
        );
    }
}

#[test]
fn fly_toml_describes_the_service_flyby_binds() {
    let fly = fly_toml();
    let env = environment();
    let stages = dockerfile();
    let internal_port = int_at(&fly, "http_service.internal_port");
    // fly-proxy reaches a Machine on its private IPv4 address, the 6PN (a launcher's readiness
    // probe, Fly's metrics scraper) on its IPv6 one: `0.0.0.0` takes only the first, so only
    // `[::]` will do (flyby binds it as IPv6 and IPv4 both, `server::listen`).
    let addr: SocketAddr = effective(&env, "LEPTOS_SITE_ADDR").parse().unwrap();
    assert_eq!(
        addr.ip(),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        "LEPTOS_SITE_ADDR {addr} on Fly: the private network needs [::]"
    );
    // flyby-local runs the launchers as the image would.
    assert_eq!(
        addr.to_string(),
        flyby::local::launchers::IMAGE_SITE_ADDR,
        "flyby-local's launchers listen where the image says"
    );
    assert_eq!(i64::from(addr.port()), internal_port);
    assert_eq!(
        runtime(&stages).last("EXPOSE"),
        Some(internal_port.to_string().as_str())
    );

    assert_eq!(at(&fly, "http_service.force_https").as_bool(), Some(true));
    assert_eq!(
        at(&fly, "http_service.auto_start_machines").as_bool(),
        Some(true)
    );
    assert!(["stop", "suspend"].contains(&str_at(&fly, "http_service.auto_stop_machines")));
    assert!(int_at(&fly, "http_service.min_machines_running") >= 1);
    let soft = int_at(&fly, "http_service.concurrency.soft_limit");
    let hard = int_at(&fly, "http_service.concurrency.hard_limit");
    assert!(0 < soft && soft <= hard, "concurrency {soft}/{hard}");

    let checks = at(&fly, "http_service.checks")
        .as_array()
        .expect("[[http_service.checks]]");
    assert!(!checks.is_empty());
    for check in checks {
        assert_eq!(str_at(check, "path"), HEALTH_PATH);
        // Times are milliseconds unless they carry a unit.
        let timeout = fly_duration(at(check, "timeout"), Duration::from_millis(1));
        let interval = fly_duration(at(check, "interval"), Duration::from_millis(1));
        assert!(
            timeout < interval,
            "a check's timeout must be shorter than its interval"
        );
        // With force_https, Fly's docs ask checks to say they came over https.
        assert_eq!(str_at(check, "headers.X-Forwarded-Proto"), "https");
    }

    let metrics_port = int_at(&fly, "metrics.port");
    assert_eq!(
        metrics_port.to_string(),
        effective(&env, "FLYBY_METRICS_PORT"),
        "[metrics] port is not where flyby serves /metrics"
    );
    assert_ne!(
        metrics_port, internal_port,
        "/metrics must stay off the public service"
    );
    assert_eq!(str_at(&fly, "metrics.path"), "/metrics");

    let vms = at(&fly, "vm").as_array().expect("[[vm]]");
    for vm in vms {
        assert!(
            str_at(vm, "size").starts_with("shared-cpu-1x"),
            "a small Machine"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// fly.toml against the running flyby.

/// A `flyby` started with fly.toml's values, or the address it could not bind.
struct Started {
    child: tokio::process::Child,
    serving: SocketAddr,
    metrics: SocketAddr,
}

/// Starts `flyby` with exactly `env` and reads its log until it serves or exits.
async fn start(env: &BTreeMap<String, String>) -> Result<Started, String> {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flyby"))
        .env_clear()
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn flyby");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut metrics = None;
    let mut seen = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let message = event["message"].as_str().unwrap_or_default();
            let addr = || {
                event["addr"]
                    .as_str()
                    .unwrap()
                    .parse::<SocketAddr>()
                    .unwrap()
            };
            match message {
                "metrics" => metrics = Some(addr()),
                "serving" => return Ok((addr(), metrics)),
                m if m.starts_with("cannot listen on ") => return Err(m.to_owned()),
                _ => {}
            }
        }
        panic!("flyby exited before serving:\n{}", seen.join("\n"))
    })
    .await
    .expect("flyby neither served nor failed within 30 s");
    let (serving, metrics) = outcome?;
    // Keep draining the log so that flyby never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Started {
        child,
        serving,
        metrics: metrics.expect("the launcher logs its metrics address before serving"),
    })
}

/// Is `error` flyby's "cannot listen on <addr>: address in use"?
fn address_in_use(error: &str, addr: &str) -> bool {
    error.starts_with(&format!("cannot listen on {addr}: ")) && error.contains("in use")
}

/// flyby started with fly.toml's values serves fly.toml's health check on the internal port and
/// `/metrics` on the metrics port, and stops with status 0 on fly.toml's kill signal.
///
/// The ports are fly.toml's own (8080, 9091), on a machine that may already use them (CI, other
/// tests' Machines on 127.0.0.N:8080). When one is taken, flyby's own error line names the exact
/// address it tried, which proves it binds what fly.toml says; only then is that port replaced
/// by 0, and the paths are checked on the free port flyby picked (the router does not depend on
/// the port). The test prints which of the two happened.
#[tokio::test]
async fn flyby_serves_what_fly_toml_expects() {
    let fly = fly_toml();
    let internal_port = int_at(&fly, "http_service.internal_port");
    let metrics_port = int_at(&fly, "metrics.port");
    let private_ip = IpAddr::V6(Ipv6Addr::LOCALHOST);

    let mut env = environment();
    // What Fly sets on a Machine. Its private (6PN) address is IPv6: loopback here.
    env.insert("FLY_APP_NAME".into(), str_at(&fly, "app").into());
    env.insert("FLY_REGION".into(), str_at(&fly, "primary_region").into());
    env.insert("FLY_MACHINE_ID".into(), MACHINE_ID.into());
    env.insert(
        "FLY_IMAGE_REF".into(),
        "registry.fly.io/flyby:deployment-test".into(),
    );
    // The secret, and an API address where nothing answers (the discard port): nothing real is
    // called. The image's site folder (/app/site) is the local build's here.
    env.insert("FLY_API_TOKEN".into(), DUMMY_TOKEN.into());
    env.insert("FLYBY_MACHINES_API".into(), "http://127.0.0.1:9".into());
    env.insert("LEPTOS_SITE_ROOT".into(), site_root().display().to_string());
    env.insert("FLYBY_LOG_FORMAT".into(), "json".into());
    let site_addr = env["LEPTOS_SITE_ADDR"].clone();
    let metrics_addr =
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), metrics_port as u16).to_string();

    let mut exact = (true, true);
    let mut server = None;
    for _ in 0..3 {
        match start(&env).await {
            Ok(started) => {
                server = Some(started);
                break;
            }
            Err(e) if address_in_use(&e, &site_addr) => {
                eprintln!("port {internal_port} is taken here ({e}); flyby tried fly.toml's address, now checking on a free port");
                exact.0 = false;
                let any: SocketAddr = site_addr.parse().unwrap();
                env.insert(
                    "LEPTOS_SITE_ADDR".into(),
                    SocketAddr::new(any.ip(), 0).to_string(),
                );
            }
            Err(e) if address_in_use(&e, &metrics_addr) => {
                eprintln!("port {metrics_port} is taken here ({e}); flyby tried fly.toml's address, now checking on a free port");
                exact.1 = false;
                env.insert("FLYBY_METRICS_PORT".into(), "0".into());
            }
            Err(e) => panic!("flyby could not start with fly.toml's values: {e}"),
        }
    }
    let mut server = server.expect("flyby started");
    if exact.0 {
        assert_eq!(server.serving.to_string(), site_addr);
        assert_eq!(i64::from(server.serving.port()), internal_port);
    }
    if exact.1 {
        assert_eq!(server.metrics.to_string(), metrics_addr);
    }
    assert!(
        server.metrics.ip().is_unspecified(),
        "/metrics on every address, as Fly's metrics docs ask"
    );
    eprintln!(
        "flyby served on {} (internal_port {internal_port}: {}) and /metrics on {} ([metrics] port {metrics_port}: {})",
        server.serving,
        if exact.0 { "exact" } else { "taken, proven by flyby's error" },
        server.metrics,
        if exact.1 { "exact" } else { "taken, proven by flyby's error" },
    );

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let public = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), server.serving.port());
    // The private network reaches the same server on IPv6 (FLY_PRIVATE_IP on Fly).
    let private = SocketAddr::new(private_ip, server.serving.port());
    let health = client
        .get(format!("http://{private}{HEALTH_PATH}"))
        .send()
        .await
        .expect("flyby answers on IPv6");
    assert_eq!(health.status(), 200);

    // Each health check, as Fly sends it: method, path, headers, and its timeout.
    for check in at(&fly, "http_service.checks").as_array().unwrap() {
        let method = check.get("method").and_then(Toml::as_str).unwrap_or("GET");
        let mut request = client.request(
            method.to_ascii_uppercase().parse().unwrap(),
            format!("http://{public}{}", str_at(check, "path")),
        );
        for (name, value) in check
            .get("headers")
            .and_then(Toml::as_table)
            .into_iter()
            .flatten()
        {
            request = request.header(name, value.as_str().unwrap());
        }
        let timeout = fly_duration(at(check, "timeout"), Duration::from_millis(1));
        let asked = Instant::now();
        let response = request
            .timeout(timeout)
            .send()
            .await
            .expect("the check answers in time");
        assert!(asked.elapsed() < timeout);
        assert_eq!(
            response.status(),
            200,
            "a check needs 200, and follows no redirect"
        );
    }

    // The public service is the launcher's page, and never exposes /metrics.
    let page = client
        .get(format!("http://{public}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("data-role=\"launcher\""));
    let leak = client
        .get(format!("http://{public}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(leak.status(), 404, "/metrics must not be public");

    // A visitor's launch, through the public service as fly-proxy forwards it. The Machines API
    // here answers nothing, so it fails; its hand-over answers when it has.
    // By the app's host name, from which the launcher derives the visitors' app's.
    let host = format!("{}.localhost:{}", str_at(&fly, "app"), public.port());
    let origin = format!("http://{host}");
    // The server functions' arguments and answers are postcard (what the pages send).
    let launch = client
        .post(format!("http://{public}/api/launch"))
        .header(reqwest::header::HOST, &host)
        .header(reqwest::header::ORIGIN, &origin)
        .header("fly-client-ip", "203.0.113.7")
        .body(postcard::to_allocvec(&StartLaunch { region: None }).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(launch.status(), 200);
    let ticket: LaunchTicket = postcard::from_bytes(&launch.bytes().await.unwrap()).unwrap();
    let handover = client
        .post(format!("http://{public}/api/handover"))
        .header(reqwest::header::HOST, &host)
        .header(reqwest::header::ORIGIN, &origin)
        .header("fly-client-ip", "203.0.113.7")
        .body(postcard::to_allocvec(&TakeHandover { launch: ticket.id }).unwrap())
        .send()
        .await
        .unwrap();
    assert!(handover.status().is_success(), "{}", handover.status());

    // [metrics]: Prometheus text at the port and path Fly scrapes, on IPv4 and IPv6, which
    // counts that launch, how long it took, and its calls to the API.
    for ip in [IpAddr::from(Ipv4Addr::LOCALHOST), private_ip] {
        let metrics = client
            .get(format!(
                "http://{}{}",
                SocketAddr::new(ip, server.metrics.port()),
                str_at(&fly, "metrics.path")
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(metrics.status(), 200);
        let text = metrics.text().await.unwrap();
        for counted in [
            "flyby_launches_total{outcome=\"api_failed\"} 1",
            "flyby_launch_phase_seconds_count{phase=\"failed\"} 1",
            "flyby_fly_api_calls_total{action=\"create\"",
        ] {
            assert!(text.contains(counted), "{counted} in {text}");
        }
    }

    // Stopped the way fly.toml says, flyby exits 0 within kill_timeout.
    let signal = match fly
        .get("kill_signal")
        .and_then(Toml::as_str)
        .unwrap_or("SIGINT")
    {
        "SIGINT" => libc::SIGINT,
        "SIGTERM" => libc::SIGTERM,
        other => panic!("kill_signal {other}"),
    };
    let kill_timeout = fly
        .get("kill_timeout")
        .map(|v| fly_duration(v, Duration::from_secs(1)))
        .unwrap_or(Duration::from_secs(5));
    let pid = server.child.id().unwrap() as i32;
    // SAFETY: signalling a child process this test started.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let status = tokio::time::timeout(kill_timeout, server.child.wait())
        .await
        .expect("flyby exits before Fly would kill it")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// The launcher role stops with status 0 on both signals flyby handles. (The ephemeral role's
/// twin is in tests/system/lifecycle.rs.)
#[tokio::test]
async fn the_launcher_stops_with_status_0_on_sigint_and_sigterm() {
    for (signal, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        let mut server = Flyby::start(&[
            ("FLYBY_ROLE", "launcher"),
            ("FLY_API_TOKEN", DUMMY_TOKEN),
            ("FLYBY_MACHINES_API", "http://127.0.0.1:9"),
            ("FLYBY_METRICS_PORT", "0"),
        ])
        .await;
        let pid = server.child.id().unwrap() as i32;
        // SAFETY: signalling a child process this test started.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let stopping = server.next_event(|e| e["message"] == "stopping").await;
        assert_eq!(stopping["signal"], name);
        let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
            .await
            .expect("the launcher should have stopped")
            .unwrap();
        assert_eq!(status.code(), Some(0), "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// The image recipe against the Makefile.

/// `target: prerequisites` and the recipe lines of each target of the Makefile.
fn makefile() -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    let mut targets = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in read("Makefile").lines() {
        if let Some(recipe) = line.strip_prefix('\t') {
            if let Some(target) = &current {
                let entry: &mut (Vec<String>, Vec<String>) = targets.get_mut(target).unwrap();
                entry.1.push(recipe.trim().to_owned());
            }
            continue;
        }
        current = None;
        if line.starts_with('#') || line.starts_with('.') || line.contains(":=") {
            continue;
        }
        if let Some((target, prerequisites)) = line.split_once(':') {
            let target = target.trim().to_owned();
            let prerequisites = prerequisites
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            targets.insert(target.clone(), (prerequisites, Vec::new()));
            current = Some(target);
        }
    }
    targets
}

#[test]
fn the_image_is_built_by_make_build_like_make_run_and_ci() {
    let make = makefile();
    let (build_deps, build_recipe) = &make["build"];
    // `make run` and `make test` (what CI runs) go through `make build`.
    assert!(
        make["run"].0.contains(&"build".to_owned()),
        "make run builds with make build"
    );
    assert!(
        make["test"].0.contains(&"build".to_owned()),
        "make test builds with make build"
    );
    assert!(build_deps.contains(&"setup-build".to_owned()));
    assert!(
        build_recipe.iter().any(|l| l == "scripts/site")
            && build_recipe
                .iter()
                .any(|l| l.starts_with("cargo build --release")),
        "make build is the site and the release build: {build_recipe:?}"
    );
    // The image's tools layer runs what `make setup-build` runs.
    assert_eq!(make["setup-build"].1, ["scripts/setup build"]);

    let stages = dockerfile();
    let runs = |s: &Stage| s.all("RUN").map(str::to_owned).collect::<Vec<_>>();
    assert!(
        runs(stage(&stages, "tools"))
            .iter()
            .any(|r| r.contains("scripts/setup build") || r.contains("make setup-build")),
        "the tools layer is make setup-build"
    );
    // Nothing compiles but make: no cargo build, scripts/site or cargo install of its own.
    for s in &stages {
        for run in runs(s) {
            for direct in [
                "cargo build",
                "scripts/site",
                "cargo install",
                "cargo rustc",
            ] {
                assert!(
                    !run.contains(direct),
                    "the image runs `{direct}` itself: {run}"
                );
            }
        }
    }
    // The build stage: `make build` on the sources (after the dependency layer's, if any).
    let build = build_stage(&stages);
    let sources_copied = build
        .instructions
        .iter()
        .position(|i| i.keyword == "COPY" && i.args == ". .")
        .expect("the build stage copies the sources: COPY . .");
    assert!(
        build.instructions[sources_copied..]
            .iter()
            .any(|i| i.keyword == "RUN" && i.args.starts_with("make build")),
        "the build stage runs make build on the sources"
    );
}

#[test]
fn the_image_ships_exactly_what_make_build_produces_for_the_server() {
    let cargo = cargo_toml();
    // make build writes the server to target/release/flyby and the site (scripts/site) to
    // target/site, whose bundle files are flyby.<hash>.<ext> in pkg/: the defaults of
    // LEPTOS_SITE_ROOT, LEPTOS_OUTPUT_NAME and LEPTOS_SITE_PKG_DIR.
    let (bin, site_dir, output, pkg_dir) = ("flyby", "target/site", "flyby", "pkg");
    let expected: BTreeSet<String> = [format!("target/release/{bin}"), site_dir.to_owned()].into();

    let stages = dockerfile();
    let runtime = runtime(&stages);
    let copies = runtime.copies();
    let build = build_stage(&stages);
    let workdir = Path::new(build.workdir());
    let mut shipped = BTreeMap::new();
    for (_, sources, dest) in &copies {
        for source in sources {
            let relative = Path::new(source)
                .strip_prefix(workdir)
                .unwrap_or_else(|_| panic!("{source} is outside the build's {workdir:?}"));
            shipped.insert(relative.display().to_string(), dest.clone());
        }
    }
    let shipped_paths: BTreeSet<String> = shipped.keys().cloned().collect();
    assert_eq!(
        shipped_paths, expected,
        "the image ships exactly the server and the site"
    );
    assert!(
        !shipped_paths.iter().any(|p| p.contains("flyby-local")),
        "flyby-local stays out of the image"
    );
    assert!(
        runtime.last("ADD").is_none(),
        "nothing else enters the image"
    );

    // Where they land is where the image's ENV and ENTRYPOINT look for them.
    let env = runtime.env();
    assert_eq!(env.get("LEPTOS_SITE_ROOT"), shipped.get(site_dir));
    let entrypoint: Vec<String> =
        serde_json::from_str(runtime.last("ENTRYPOINT").expect("ENTRYPOINT [...]")).unwrap();
    assert_eq!(
        Some(&entrypoint[0]),
        shipped.get(&format!("target/release/{bin}"))
    );

    // The runtime has no toolchain, runs unprivileged, on the Debian release the build used.
    assert!(!runtime.base.contains("rust") && !runtime.base.contains("node"));
    let user = runtime.last("USER").expect("USER");
    assert!(!["root", "0", "0:0"].contains(&user), "USER {user}");
    let codename = |image: &str| -> String {
        let tag = image.rsplit(':').next().unwrap();
        tag.split('-')
            .find(|w| ["bookworm", "trixie", "forky"].contains(w))
            .unwrap_or_else(|| panic!("{image}: name the Debian release in the tag"))
            .to_owned()
    };
    let tools = stage(&stages, "tools");
    assert_eq!(
        codename(&tools.base),
        codename(&runtime.base),
        "the binary needs the glibc it was linked against"
    );
    // The toolchain of the image is the one Cargo.toml asks for.
    let rust_version = str_at(&cargo, "package.rust-version");
    assert!(
        tools.base.starts_with(&format!("rust:{rust_version}-")),
        "{} vs rust-version {rust_version}",
        tools.base
    );

    // And `make build` did produce these, here: the server and the site with its bundle
    // (`<output>.js`, or `<output>.<hash>.js` with hash-files).
    let target = site_root().parent().unwrap().to_owned();
    assert!(target.join("release").join(bin).is_file());
    assert!(site_root().join("favicon.ico").is_file());
    let pkg: Vec<String> = std::fs::read_dir(site_root().join(pkg_dir))
        .expect("make build made the site's pkg folder")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for ext in ["js", "wasm", "css"] {
        assert!(
            pkg.iter()
                .any(|f| f.starts_with(&format!("{output}.")) && f.ends_with(&format!(".{ext}"))),
            "make build made no {output} .{ext} in the site: {pkg:?}"
        );
    }
    // The site names its own files: scripts/site lists each app's in its hash file at the
    // site's root, hash.txt (the launcher's bundle) and machine-hash.txt (the Machines').
    for hashes in ["hash.txt", "machine-hash.txt"] {
        let text = std::fs::read_to_string(site_root().join(hashes)).unwrap_or_else(|_| {
            panic!("the site has no {hashes}: the image's server could not find its bundle")
        });
        for (ext, hash) in text.lines().filter_map(|l| l.split_once(": ")) {
            let file = format!("{output}.{hash}.{ext}");
            assert!(
                pkg.contains(&file),
                "{hashes} names {file}, not in the site: {pkg:?}"
            );
        }
    }
}

#[test]
fn the_build_context_leaves_local_builds_out_and_keeps_what_the_image_needs() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches("**/").trim_matches('/').to_owned())
        .collect();
    for out in ["target", "node_modules"] {
        assert!(
            patterns.iter().any(|p| p == out),
            ".dockerignore must leave {out}/ out"
        );
    }
    // Every path the Dockerfile copies from the context is in it.
    let stages = dockerfile();
    for s in &stages {
        for (flags, sources, _) in s.copies() {
            if flags.iter().any(|f| f.starts_with("--from=")) {
                continue;
            }
            for source in sources.iter().filter(|s| s.as_str() != ".") {
                assert!(repo(source).exists(), "COPY {source}: no such file");
                let ignored = patterns
                    .iter()
                    .any(|p| source == p || source.starts_with(&format!("{p}/")));
                assert!(!ignored, "COPY {source}, but .dockerignore leaves it out");
            }
        }
    }
}
