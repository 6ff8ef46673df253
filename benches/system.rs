//! The system figures of BENCHMARKS.md: everything but the affinity decision
//! (`benches/affinity.rs`) and the click-to-own-page time (`benches/click/`, Playwright).
//!
//! - 2: the affinity layer's cost over loopback: the launcher's SSR home page served by the
//!   same router with and without the layer (`server::router_without_affinity`), loaded with `wrk`.
//! - 3: SSR of the home page vs. the same bytes as a static file from the same server
//!   (the release `flyby`), throughput with `wrk`, and latency at a fixed request rate.
//! - 4: cold start of the ephemeral role, exec -> first 200 on `/health`, 20 runs.
//! - 5: RSS of an ephemeral Machine idle and after its owner's whole journey over HTTP and
//!   its WebSocket (the claim answered with the page, bundle, server function, live channel).
//! - 6: first-load payload of each page, raw and brotli.
//! - 8: the local proxy's replay cost: one replay vs. none, same run.
//! - 9: static files on 1 keep-alive connection and on 32, vs. the SSR page; the 1-connection
//!   small-file rows catch a Nagle / `TCP_NODELAY` regression in `flyby` and in the proxy.
//!
//! The machine is shared and has 2 cores: every comparison runs its two sides alternately in
//! the same run, and ratios matter more than absolute numbers. Lines starting `ROW|` are the
//! rows `scripts/bench` puts in BENCHMARKS.md. `FLYBY_BENCH_SECS` sets each wrk run's length
//! (default 3 s). Needs `make build` (the release `flyby` and `target/site`) and `wrk`.
//!
//! Run: `cargo bench --no-default-features --features bench --bench system`

use axum::{serve::ListenerExt, Router};
use flyby::{
    local::{self, Args, LAUNCHER_APP, LAUNCHER_IMAGE},
    server::{
        config::Config, ephemeral::EphemeralMachine, launcher::Launcher, router,
        router_without_affinity,
    },
};
use futures::{SinkExt, StreamExt};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener as StdListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const ME: &str = "0123456789abcd";
/// Set by `scripts/code-order`: row 5's Machine then runs under callgrind, which writes the
/// functions it ran, from its start to the end of its owner's journey, to this file.
const CALLGRIND_ENV: &str = "FLYBY_BENCH_CALLGRIND";
/// The owner secret of the test suite, and its SHA-256.
const OWNER_SECRET: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const OWNER_HASH: &str = "3138bb9bc78df27c473ecfd1410f7bd45ebac1f59cf3ff9cfe4db77aab7aedd3";

fn flyby_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flyby"))
}

fn site_root() -> PathBuf {
    flyby_bin()
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("site")
}

fn wrk_secs() -> u64 {
    std::env::var("FLYBY_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

fn row(number: &str, figure: &str, result: &str, budget: &str, verdict: &str) {
    println!("ROW|{number}|{figure}|{result}|{budget}|{verdict}");
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A `flyby` process; killed when dropped.
struct Flyby {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Flyby {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn launcher_env(site: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("FLYBY_ROLE", "launcher".into()),
        ("FLY_API_TOKEN", "bench-token".into()),
        // Nothing listens there: the tracker's polls fail at once and keep an empty map.
        ("FLYBY_MACHINES_API", "http://127.0.0.1:9".into()),
        ("FLY_MACHINE_ID", ME.into()),
        ("FLY_REGION", "ams".into()),
        ("FLYBY_METRICS_PORT", "0".into()),
        ("LEPTOS_SITE_ROOT", site.display().to_string()),
    ]
}

fn ephemeral_env(site: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("FLYBY_ROLE", "ephemeral".into()),
        ("FLY_MACHINE_ID", ME.into()),
        ("FLY_REGION", "ams".into()),
        ("FLYBY_OWNER_HASH", OWNER_HASH.into()),
        ("FLYBY_TTL_SECS", "3600".into()),
        ("FLYBY_CLAIM_SECS", "600".into()),
        ("FLYBY_SHOW_SECS", "600".into()),
        ("FLYBY_LAUNCHER_URL", "http://flyby.localhost:3000".into()),
        ("LEPTOS_SITE_ROOT", site.display().to_string()),
    ]
}

/// Spawns the release `flyby` with `env` (and nothing else) on a free port; logs (JSON, one
/// line per request, as on Fly) go to /dev/null.
fn spawn_flyby(env: &[(&'static str, String)]) -> (Flyby, Instant) {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let started = Instant::now();
    let mut command = match std::env::var_os(CALLGRIND_ENV) {
        Some(out) => {
            let mut valgrind = Command::new("valgrind");
            let mut file = std::ffi::OsString::from("--callgrind-out-file=");
            file.push(out);
            // Names as the linker sees them: scripts/ordered-cc matches them to its symbols.
            valgrind
                .args(["--tool=callgrind", "--demangle=no", "--dump-instr=no"])
                .arg(file)
                .arg(flyby_bin());
            valgrind
        }
        None => Command::new(flyby_bin()),
    };
    let child = command
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("LEPTOS_SITE_ADDR", addr.to_string())
        .env("FLYBY_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn flyby");
    (Flyby { child, addr }, started)
}

/// Polls `GET /health` (a fresh connection every 0.2 ms) until it answers 200.
fn until_healthy(addr: SocketAddr, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(mut tcp) = TcpStream::connect(addr) {
            let _ = tcp.set_nodelay(true);
            let _ =
                tcp.write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
            let mut head = [0u8; 12];
            if tcp.read_exact(&mut head).is_ok() && &head[9..12] == b"200" {
                return Some(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    None
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------------
// Load

#[derive(Debug, Clone, Copy, Default)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Responses that were not 2xx/3xx, or socket errors.
    errors: u64,
}

impl Load {
    fn show(&self) -> String {
        let errors = if self.errors > 0 {
            format!(" ({} errors!)", self.errors)
        } else {
            String::new()
        };
        format!(
            "{} req/s, p50 {} ms, p99 {} ms{errors}",
            thousands(self.rps),
            short(self.p50_ms),
            short(self.p99_ms)
        )
    }
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn short(ms: f64) -> String {
    if ms >= 10.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

fn kb(bytes: u64) -> String {
    format!("{:.1} KB", bytes as f64 / 1000.0)
}

/// Runs `wrk` on `url` with `conns` keep-alive connections for `FLYBY_BENCH_SECS`.
async fn wrk(url: &str, conns: u32, headers: &[(&str, &str)]) -> Load {
    let threads = conns.min(2);
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{}s", wrk_secs()))
        .arg("--latency");
    for (name, value) in headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    let out = cmd
        .arg(url)
        .output()
        .await
        .expect("wrk (make bench installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut load = Load::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => load.p50_ms = duration_ms(v),
            ["99%", v] => load.p99_ms = duration_ms(v),
            ["Requests/sec:", v] => load.rps = v.parse().unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", n] => load.errors += n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                load.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>()
            }
            _ => {}
        }
    }
    if load.rps == 0.0 {
        eprintln!("wrk {url}: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    load
}

fn duration_ms(v: &str) -> f64 {
    let (number, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    number.parse::<f64>().unwrap_or(f64::NAN) * factor
}

/// Two sides loaded alternately.
struct Sides {
    /// The median of each side's runs.
    a: Load,
    b: Load,
    /// The median, over the rounds, of a's throughput over b's in the same round: the two runs
    /// of a round are back to back, so the machine's drift (other tenants, two shared cores)
    /// cancels out better than in the ratio of the medians.
    paired: f64,
}

/// `a` and `b` loaded alternately (ABBA...), `rounds` times each, after one run of each that
/// is not counted (whichever side ran first would otherwise pay for the warm-up).
async fn alternate(
    rounds: usize,
    conns: u32,
    a: (&str, &[(&str, &str)]),
    b: (&str, &[(&str, &str)]),
) -> Sides {
    wrk(a.0, conns, a.1).await;
    wrk(b.0, conns, b.1).await;
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            xs.push(wrk(a.0, conns, a.1).await);
            ys.push(wrk(b.0, conns, b.1).await);
        } else {
            ys.push(wrk(b.0, conns, b.1).await);
            xs.push(wrk(a.0, conns, a.1).await);
        }
    }
    let mut ratios: Vec<f64> = xs.iter().zip(&ys).map(|(x, y)| x.rps / y.rps).collect();
    ratios.sort_by(f64::total_cmp);
    Sides {
        paired: ratios[ratios.len() / 2],
        a: median_load(xs),
        b: median_load(ys),
    }
}

fn median_load(loads: Vec<Load>) -> Load {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Load {
        rps: median(loads.iter().map(|l| l.rps).collect()),
        p50_ms: median(loads.iter().map(|l| l.p50_ms).collect()),
        p99_ms: median(loads.iter().map(|l| l.p99_ms).collect()),
        errors: loads.iter().map(|l| l.errors).sum(),
    }
}

/// Open-loop load at a fixed rate on keep-alive connections: latency is measured from when
/// each request was due, so a stall is counted in full (no coordinated omission).
async fn fixed_rate(url: &str, rate: u32, secs: u64) -> (f64, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let n = rate as u64 * secs;
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let client = client.clone();
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let ok = match client.get(&url).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            (ok, due.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (ok, took) = task.await.unwrap();
        assert!(ok, "fixed-rate request to {url} failed");
        latencies.push(took.as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (at(0.50), at(0.99))
}

/// Serves `router` the way `Application::run` does (TCP_NODELAY on every connection).
async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// The `/pkg/...` URLs a page links, in order of appearance, without duplicates.
fn pkg_links(html: &str) -> Vec<String> {
    let mut links = Vec::new();
    for (i, _) in html.match_indices("/pkg/") {
        let rest = &html[i..];
        let end = rest.find(['"', '\'', ' ', '>']).unwrap_or(rest.len());
        let link = rest[..end].to_owned();
        if !links.contains(&link) {
            links.push(link);
        }
    }
    links
}

fn brotli_len(bytes: &[u8]) -> Option<u64> {
    let mut child = Command::new("brotli")
        .args(["-c", "-q", "11"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(bytes).ok()?;
    let out = child.wait_with_output().ok()?;
    Some(out.stdout.len() as u64)
}

// ---------------------------------------------------------------------------------------------
// The figures

/// 2: the same router with and without the layer, in this process, over loopback.
async fn layer_cost(site: &Path) {
    let env: Vec<(&str, String)> = launcher_env(site);
    let config = Config::from_lookup(|name| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| (name == "LEPTOS_SITE_ADDR").then(|| "127.0.0.1:0".into()))
    })
    .expect("bench config");
    let launcher = Launcher::start(&config).expect("launcher");
    let none: Option<std::sync::Arc<EphemeralMachine>> = None;
    let with = serve(router(&config, none.clone(), launcher.clone())).await;
    let without = serve(router_without_affinity(&config, none, launcher)).await;
    let cookie = format!("theme=dark; flyby_launch={ME}");
    let headers: &[(&str, &str)] = &[("Cookie", &cookie), ("Accept", "text/html")];
    let Sides { a, b, paired } = alternate(
        8,
        32,
        (&format!("http://{with}/"), headers),
        (&format!("http://{without}/"), headers),
    )
    .await;
    let cost = (1.0 - paired) * 100.0;
    row(
        "2",
        "Affinity layer cost over loopback: SSR home page, whole router with vs without the \
         layer, wrk 32 connections, 8 alternating runs each (same process), cost from the \
         median of the paired runs' ratios",
        &format!(
            "with {} req/s, without {} req/s: cost {cost:.1} % of throughput",
            thousands(a.rps),
            thousands(b.rps)
        ),
        "< 3 %",
        verdict(cost < 3.0),
    );
}

/// 3 and 9 (and the launcher's part of 6): the release `flyby` launcher.
async fn launcher_http(site: &Path, payload: &mut Vec<(String, String)>) {
    // A copy of the site with the home page's HTML as a file, served by the same server.
    let tmp = std::env::temp_dir().join(format!("flyby-bench-site-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    copy_dir(site, &tmp);
    let (server, _) = spawn_flyby(&launcher_env(&tmp));
    until_healthy(server.addr, Duration::from_secs(20)).expect("launcher serving");
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let home = client
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::fs::write(tmp.join("home.html"), &home).unwrap();
    let html = String::from_utf8_lossy(&home).into_owned();

    // 3: SSR vs the same bytes from a file.
    let Sides {
        a: ssr,
        b: file,
        paired: ratio,
    } = alternate(
        4,
        32,
        (&format!("{base}/"), &[]),
        (&format!("{base}/home.html"), &[]),
    )
    .await;
    row(
        "3",
        &format!(
            "SSR home page vs the same {} as a static file, same server (release flyby, JSON \
             request logs), wrk 32 connections, 4 alternating runs each, ratio from the paired runs",
            kb(home.len() as u64)
        ),
        &format!(
            "SSR {} req/s, static {} req/s: ratio {ratio:.2}",
            thousands(ssr.rps),
            thousands(file.rps)
        ),
        "≥ 0.5",
        verdict(ratio >= 0.5),
    );
    let rate = 200;
    let (s50, s99) = fixed_rate(&format!("{base}/"), rate, 5).await;
    let (f50, f99) = fixed_rate(&format!("{base}/home.html"), rate, 5).await;
    row(
        "3b",
        &format!("Latency at a fixed {rate} req/s (open loop, 5 s, keep-alive), SSR vs static"),
        &format!(
            "SSR p50 {} ms, p99 {} ms; static p50 {} ms, p99 {} ms",
            short(s50),
            short(s99),
            short(f50),
            short(f99)
        ),
        "-",
        "-",
    );

    // 9: the bundle and the favicon, 1 connection and 32, next to the SSR page (the stylesheet
    // is in the page).
    let links = pkg_links(&html);
    let find = |ext: &str| {
        links
            .iter()
            .find(|l| l.ends_with(ext))
            .cloned()
            .unwrap_or_else(|| format!("/pkg/flyby{ext}"))
    };
    let br: &[(&str, &str)] = &[("Accept-Encoding", "br, gzip")];
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let targets: Vec<(String, String, Headers)> = vec![
        ("/favicon.ico".into(), "favicon.ico".into(), &[]),
        (find(".js"), "JS, br".into(), br),
        (find(".wasm"), "WASM, br".into(), br),
        ("/".into(), "SSR home page".into(), &[]),
    ];
    for (path, what, headers) in &targets {
        let size = client
            .get(format!("{base}{path}"))
            .headers(header_map(headers))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len() as u64;
        let one = wrk(&format!("{base}{path}"), 1, headers).await;
        let many = wrk(&format!("{base}{path}"), 32, headers).await;
        let small = size < 16_000 && path != "/";
        row(
            "9",
            &format!("{path} ({what}, {} on the wire)", kb(size)),
            &format!("1 conn: {}; 32 conns: {}", one.show(), many.show()),
            if small {
                "1 conn ≥ 1,000 req/s (Nagle check)"
            } else {
                "-"
            },
            if small {
                verdict(one.rps >= 1000.0 && one.errors == 0)
            } else {
                "-"
            },
        );
    }

    // 6: the launcher's pages (the home page's bytes were fetched above).
    for page in ["/", "/gone"] {
        let html = match page {
            "/" => home.clone(),
            _ => client
                .get(format!("{base}{page}"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
        };
        payload.push((
            format!("launcher {page}"),
            first_load(&client, &base, &html, &reqwest::header::HeaderMap::new()).await,
        ));
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&tmp);
}

fn header_map(headers: &[(&str, &str)]) -> reqwest::header::HeaderMap {
    let mut map = reqwest::header::HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    map
}

/// HTML + the bundle it links, raw and brotli; and the WASM + JS budget.
async fn first_load(
    client: &reqwest::Client,
    base: &str,
    html: &[u8],
    headers: &reqwest::header::HeaderMap,
) -> String {
    let text = String::from_utf8_lossy(html);
    let html_br = brotli_len(html);
    let mut parts = vec![format!(
        "HTML {} / {}",
        kb(html.len() as u64),
        html_br.map_or("?".into(), kb)
    )];
    let (mut raw_total, mut br_total) = (html.len() as u64, html_br.unwrap_or(0));
    let mut budget = 0;
    for link in pkg_links(&text) {
        let get = |encoding: &'static str| {
            let mut h = headers.clone();
            h.insert(reqwest::header::ACCEPT_ENCODING, encoding.parse().unwrap());
            client.get(format!("{base}{link}")).headers(h).send()
        };
        let raw = get("identity").await.unwrap().bytes().await.unwrap().len() as u64;
        let br = get("br").await.unwrap().bytes().await.unwrap().len() as u64;
        let kind = link.rsplit('.').next().unwrap_or("").to_uppercase();
        if kind == "JS" || kind == "WASM" {
            budget += br;
        }
        raw_total += raw;
        br_total += br;
        parts.push(format!("{kind} {} / {}", kb(raw), kb(br)));
    }
    format!(
        "{}; total {} / {} (WASM + JS {} brotli)",
        parts.join(", "),
        kb(raw_total),
        kb(br_total),
        kb(budget)
    ) + &format!("|{budget}")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// 4: exec -> first 200 on `/health`, 20 runs.
fn cold_start(site: &Path) {
    let env = ephemeral_env(site);
    let mut times = Vec::new();
    for _ in 0..21 {
        let (machine, started) = spawn_flyby(&env);
        let ready = until_healthy(machine.addr, Duration::from_secs(20)).expect("serving");
        times.push((ready - started).as_secs_f64() * 1000.0);
    }
    // The first run warms the page cache for the binary; it is left out.
    times.remove(0);
    times.sort_by(f64::total_cmp);
    let p50 = times[times.len() / 2];
    row(
        "4",
        "Cold start of the ephemeral role: exec -> first 200 on /health (polled every 0.2 ms), \
         20 runs",
        &format!(
            "p50 {p50:.1} ms (min {:.1}, max {:.1})",
            times[0],
            times[times.len() - 1]
        ),
        "< 25 ms",
        verdict(p50 < 25.0),
    );
}

/// 5 (and the ephemeral page's part of 6): an ephemeral Machine and its owner's journey.
async fn memory(site: &Path, payload: &mut Vec<(String, String)>) {
    let (machine, _) = spawn_flyby(&ephemeral_env(site));
    until_healthy(machine.addr, Duration::from_secs(20)).expect("serving");
    let pid = machine.child.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = status_kb(pid, "VmRSS:");
    // Where the bytes are: the process's own (heap, stacks) and the mapped files' (its code).
    let (idle_anon, idle_file) = (status_kb(pid, "RssAnon:"), status_kb(pid, "RssFile:"));

    let base = format!("http://{}", machine.addr);
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let claim = client
        .post(format!("{base}/m/{ME}/claim"))
        .form(&[("secret", OWNER_SECRET)])
        .send()
        .await
        .unwrap();
    // The hand-over answers with the owner's page itself, as the browser's form POST gets it.
    assert_eq!(claim.status(), 200, "claim");
    let html = claim.bytes().await.unwrap();
    let owner_headers = reqwest::header::HeaderMap::new();
    // The bundle, both encodings, as browsers fetch it; the favicon.
    payload.push((
        "ephemeral /m/<id>".into(),
        first_load(&client, &base, &html, &owner_headers).await,
    ));
    let favicon = client
        .get(format!("{base}/favicon.ico"))
        .send()
        .await
        .unwrap();
    assert_eq!(favicon.status(), 200);
    for _ in 0..3 {
        let about = client
            .post(format!("{base}/api/machine"))
            .send()
            .await
            .unwrap();
        assert_eq!(about.status(), 200, "server function");
    }
    // The live channel: the page pings about once a second for its whole show.
    let url = base.replacen("http://", "ws://", 1) + "/api/channel";
    let mut request = url.as_str().into_client_request().unwrap();
    let cookies = reqwest::cookie::CookieStore::cookies(&*jar, &base.parse().unwrap()).unwrap();
    request.headers_mut().insert("cookie", cookies);
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("channel");
    // Frames as the page sends them: a tag byte (0) and the message in postcard.
    use flyby::app::protocol::{ClientMessage, ServerMessage};
    for seq in 0..50u32 {
        let mut bytes = vec![0u8];
        bytes.extend(postcard::to_allocvec(&ClientMessage::Ping { seq }).unwrap());
        ws.send(Message::Binary(bytes.into())).await.unwrap();
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    let message = postcard::from_bytes::<ServerMessage>(&b[1..]);
                    if matches!(message, Ok(ServerMessage::Pong { seq: s }) if s == seq) {
                        break;
                    }
                }
                Some(Ok(_)) => continue,
                other => panic!("channel ended: {other:?}"),
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = status_kb(pid, "VmRSS:");
    let (after_anon, after_file) = (status_kb(pid, "RssAnon:"), status_kb(pid, "RssFile:"));
    let _ = ws.close(None).await;
    let peak = status_kb(pid, "VmHWM:");
    row(
        "5",
        "Memory (VmRSS) of an ephemeral Machine: idle, then after its owner's journey (claim \
         answered with the page, bundle in both encodings, favicon, 3 server-function calls, \
         50 WebSocket pings); in brackets, its own memory (RssAnon) + mapped files, its code \
         mostly (RssFile)",
        &format!(
            "idle {:.1} MB ({:.1} + {:.1}); after the journey {:.1} MB ({:.1} + {:.1}; peak {:.1} MB)",
            mb(idle),
            mb(idle_anon),
            mb(idle_file),
            mb(after),
            mb(after_anon),
            mb(after_file),
            mb(peak)
        ),
        "≤ 8 MB idle, ≤ 9 MB after",
        verdict(mb(idle) <= 8.0 && mb(after) <= 9.0),
    );
    if std::env::var_os(CALLGRIND_ENV).is_some() {
        // Ended the way Fly ends a Machine, so that callgrind writes what it saw.
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "SIGTERM to the Machine");
        let mut machine = machine;
        machine.child.wait().expect("the Machine ends");
    }
}

/// 8 and 9 through `flyby-local`'s proxy.
async fn proxy(site: &Path) {
    let flyby = flyby_bin();
    let argv = [
        "flyby-local".to_owned(),
        "--proxy-addr=127.0.0.1:0".into(),
        "--api-addr=127.0.0.1:0".into(),
        "--balance=nearest".into(),
        format!("--image={LAUNCHER_IMAGE}={}", flyby.display()),
        format!("--site-root={}", site.display()),
        "--launcher-env=FLYBY_LOG_FORMAT=json".into(),
    ];
    use clap::Parser;
    let platform = local::start(Args::try_parse_from(argv).unwrap())
        .await
        .expect("flyby-local");
    let proxy = platform.proxy_addr();
    let mut launchers = platform.platform().registry.list(LAUNCHER_APP);
    launchers.sort_by_key(|m| m.region.as_str() != "ams");
    let (near, far) = (launchers[0].id.to_string(), launchers[1].id.to_string());
    let host = format!("flyby.localhost:{}", proxy.port());
    let url = format!("http://{proxy}/favicon.ico");
    let direct = format!("flyby_launch={near}");
    let replayed = format!("flyby_launch={far}");
    // Check what each request does before timing it.
    let client = reqwest::Client::new();
    for (cookie, expected) in [(&direct, &near), (&replayed, &far)] {
        let r = client
            .get(&url)
            .header("host", &host)
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["flyby-machine"], expected.as_str());
    }
    let plain: &[(&str, &str)] = &[("Host", &host)];
    let one = wrk(&url, 1, plain).await;
    let many = wrk(&url, 32, plain).await;
    row(
        "9",
        "/favicon.ico through flyby-local's proxy (Nagle check of both proxy sides)",
        &format!("1 conn: {}; 32 conns: {}", one.show(), many.show()),
        "1 conn ≥ 1,000 req/s (Nagle check)",
        verdict(one.rps >= 1000.0 && one.errors == 0),
    );
    let a: &[(&str, &str)] = &[("Host", &host), ("Cookie", &direct)];
    let b: &[(&str, &str)] = &[("Host", &host), ("Cookie", &replayed)];
    let Sides { a: d1, b: r1, .. } = alternate(2, 1, (&url, a), (&url, b)).await;
    let Sides { a: d32, b: r32, .. } = alternate(2, 32, (&url, a), (&url, b)).await;
    row(
        "8",
        "flyby-local proxy replay cost: /favicon.ico pinned to the launcher the proxy picks vs \
         to the other one (one fly-replay), alternating, same run",
        &format!(
            "1 conn: {} -> {} req/s (mean {} -> {} ms; p50 {} -> {} ms, p99 {} -> {} ms); \
             32 conns: {} -> {} req/s ({:.2}x)",
            thousands(d1.rps),
            thousands(r1.rps),
            short(1000.0 / d1.rps),
            short(1000.0 / r1.rps),
            short(d1.p50_ms),
            short(r1.p50_ms),
            short(d1.p99_ms),
            short(r1.p99_ms),
            thousands(d32.rps),
            thousands(r32.rps),
            r32.rps / d32.rps
        ),
        "-",
        "-",
    );
    platform.shutdown().await;
}

fn main() {
    let site = site_root();
    assert!(
        site.join("pkg").is_dir(),
        "no site at {} (make build)",
        site.display()
    );
    let only = std::env::var("FLYBY_BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut payload = Vec::new();
    if run("cold") {
        cold_start(&site);
    }
    rt.block_on(async {
        if run("memory") {
            memory(&site, &mut payload).await;
        }
        if run("layer") {
            layer_cost(&site).await;
        }
        if run("http") {
            launcher_http(&site, &mut payload).await;
        }
        if run("proxy") {
            proxy(&site).await;
        }
    });
    for (page, line) in payload {
        let (text, bundle) = line.rsplit_once('|').unwrap();
        let bundle: u64 = bundle.parse().unwrap();
        // A visitor's Machine page waits on its bundle right after the hand-over: the
        // smaller budget.
        let budget_kb = if page.starts_with("ephemeral") {
            90
        } else {
            100
        };
        row(
            "6",
            &format!("First-load payload of {page}: raw / brotli"),
            text,
            &format!("WASM + JS ≤ {budget_kb} KB brotli"),
            verdict(bundle <= budget_kb * 1000),
        );
    }
    rt.shutdown_timeout(Duration::from_secs(1));
}
