//! The affinity decision and the affinity layer, in process (BENCHMARKS.md rows 1 and 2a).
//!
//! - `decide/*`: ns per decision for each kind of request the layer sees, and `decide/mix`, a
//!   realistic mix (per element = per request). Budget: < 1 µs per decision.
//! - `layer/*`: the launcher's SSR home page through the whole router, with and without
//!   `AffinityLayer` (`server::router` and `server::router_without_affinity`), in process (no sockets), so the layer is all
//!   that differs. Budget: < 1 % time per request (and < 1 % of its instructions under
//!   callgrind, row 2b, which `scripts/bench` counts with `FLYBY_BENCH_COUNT`).
//!
//! After criterion, an interleaved run over four routers of each kind (blocks of requests on
//! each in turn, so that other load on the machine hits both kinds alike) prints the ratio,
//! and beside it the same ratio between two halves of the routers without the layer: the
//! method's own error, which a reader weighs the ratio against. Lines starting `ROW|` are the
//! rows `scripts/bench` puts in BENCHMARKS.md.
//!
//! Run: `cargo bench --no-default-features --features bench --bench affinity`
//! (the layer part needs the built site: `make build`; without it, it is skipped).

use axum::{body::Body, Router};
use criterion::{black_box, criterion_group, BenchmarkId, Criterion, Throughput};
use flyby::{
    fly::MachineId,
    role::Role,
    server::{
        affinity::{decide, Here, RequestFacts, LAUNCH_COOKIE, OWNER_COOKIE},
        config::Config,
        ephemeral::EphemeralMachine,
        launcher::Launcher,
        ownership::OwnerSecret,
        router, router_without_affinity,
    },
};
use http::{Method, Request};
use http_body_util::BodyExt;
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};
use tower::ServiceExt;

const ME: &str = "0123456789abcd";
const OTHER: &str = "fedcba98765432";
/// What a browser typically sends besides ours.
const OTHER_COOKIES: &str = "_ga=GA1.1.123456789.1700000000; theme=dark";

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    cookies: Option<String>,
    replay_src: Option<&'static str>,
    ephemeral: bool,
}

fn cases(secret: &OwnerSecret) -> Vec<Case> {
    let owner = format!("{OWNER_COOKIE}={ME}.{}", secret.expose());
    let case = |name, method, path: String, cookies: Option<String>, ephemeral| Case {
        name,
        method,
        path,
        cookies,
        replay_src: None,
        ephemeral,
    };
    let mut cases = vec![
        case(
            "ephemeral_owner_page",
            Method::GET,
            format!("/m/{ME}"),
            Some(format!("{OTHER_COOKIES}; {owner}")),
            true,
        ),
        case(
            "ephemeral_owner_static",
            Method::GET,
            "/pkg/flyby.wasm".into(),
            Some(format!("{OTHER_COOKIES}; {owner}")),
            true,
        ),
        case(
            "ephemeral_wrong_machine_replay",
            Method::GET,
            format!("/m/{OTHER}"),
            Some(format!("{OWNER_COOKIE}={OTHER}.{}", secret.expose())),
            true,
        ),
        case(
            "ephemeral_stranger_refused",
            Method::GET,
            format!("/m/{ME}"),
            Some(OTHER_COOKIES.into()),
            true,
        ),
        case(
            "ephemeral_health",
            Method::GET,
            "/health".into(),
            None,
            true,
        ),
        case(
            "launcher_pinned_here",
            Method::POST,
            "/api/launch_progress".into(),
            Some(format!("{OTHER_COOKIES}; {LAUNCH_COOKIE}={ME}")),
            false,
        ),
        case(
            "launcher_pinned_elsewhere_replay",
            Method::POST,
            "/api/handover".into(),
            Some(format!("{LAUNCH_COOKIE}={OTHER}")),
            false,
        ),
        case(
            "launcher_unpinned",
            Method::GET,
            "/".into(),
            Some(OTHER_COOKIES.into()),
            false,
        ),
    ];
    // A request fly-proxy already replayed to us (loop guard).
    cases.push(Case {
        replay_src: Some("instance=fedcba98765432;app=flyby-machines"),
        ..case(
            "ephemeral_replayed_misdirected",
            Method::GET,
            format!("/m/{OTHER}"),
            Some(format!("{OWNER_COOKIE}={OTHER}.{}", secret.expose())),
            true,
        )
    });
    cases
}

fn facts(case: &Case) -> RequestFacts<'_> {
    RequestFacts {
        method: &case.method,
        path: &case.path,
        query: None,
        cookies: case.cookies.as_deref(),
        replay_src: case.replay_src,
        replay_failed: None,
        home: None,
    }
}

fn bench_decide(c: &mut Criterion) {
    let secret = OwnerSecret::mint();
    let me = MachineId::parse(ME).unwrap();
    let ephemeral = Here {
        role: Role::Ephemeral,
        id: Some(me),
        owner: Some(secret.hash()),
    };
    let launcher = Here {
        role: Role::Launcher,
        id: Some(me),
        owner: None,
    };
    let cases = cases(&secret);
    let here = |case: &Case| {
        if case.ephemeral {
            &ephemeral
        } else {
            &launcher
        }
    };
    let mut group = c.benchmark_group("decide");
    for case in &cases {
        group.bench_with_input(BenchmarkId::from_parameter(case.name), case, |b, case| {
            let here = here(case);
            b.iter(|| decide(black_box(&facts(case)), black_box(here)))
        });
    }
    // The mix a Machine sees: mostly its owner (page, static files, server functions), some
    // health checks, the odd stranger and replay; the launcher, mostly unpinned visitors.
    let mix: Vec<&Case> = [0, 1, 1, 1, 0, 4, 2, 3, 5, 6, 7, 7, 8]
        .iter()
        .map(|&i| &cases[i])
        .collect();
    group.throughput(Throughput::Elements(mix.len() as u64));
    group.bench_function("mix", |b| {
        b.iter(|| {
            for case in &mix {
                black_box(decide(black_box(&facts(case)), here(case)));
            }
        })
    });
    group.finish();

    // The per-decision figure of the mix, for BENCHMARKS.md.
    let rounds = 200_000u32;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..rounds {
            for case in &mix {
                black_box(decide(black_box(&facts(case)), here(case)));
            }
        }
        let ns = start.elapsed().as_nanos() as f64 / (rounds as f64 * mix.len() as f64);
        best = best.min(ns);
    }
    println!(
        "ROW|1|Affinity decision: ns per request, a realistic mix of {} (owner page and static \
         files, wrong Machine -> replay, stranger, health, launcher pinned and unpinned, a \
         misdirected replay); criterion per kind in target/criterion/decide|{best:.0} ns|< 1 µs|{}",
        mix.len(),
        verdict(best < 1000.0)
    );
}

/// The site `make build` wrote, next to the binaries of this target dir.
fn site_root() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flyby"))
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("site")
}

/// How many routers of each kind the interleaved comparison alternates. Two routers built
/// alike, neither with the layer, read up to +0.55 % apart when one was timed against the
/// other (where each one's state lands in memory, in the caches): with four of each, built
/// in the order with, without, without, with, and so on, that weighs on both kinds alike.
const ROUTERS_OF_EACH: usize = 4;

/// One of the routers the layer benchmark compares.
struct Built {
    /// With the affinity layer.
    layer: bool,
    /// Its rank among the routers of its kind, in the order they were built.
    rank: usize,
    router: Router,
}

/// The launcher role's routers, `count` with and `count` without the layer, as `main` would
/// build them, in the order they are built: with, without, without, with, and so on.
fn launcher_routers(rt: &tokio::runtime::Runtime, count: usize) -> Option<Vec<Built>> {
    let site = site_root();
    if !site.join("pkg").is_dir() {
        eprintln!(
            "no site at {} (make build): layer benchmark skipped",
            site.display()
        );
        return None;
    }
    let env = [
        ("FLYBY_ROLE", "launcher".to_owned()),
        ("FLY_API_TOKEN", "bench-token".into()),
        // Nothing listens there: the tracker's polls fail at once and keep an empty map.
        ("FLYBY_MACHINES_API", "http://127.0.0.1:9".into()),
        ("FLY_MACHINE_ID", ME.into()),
        ("FLY_REGION", "ams".into()),
        ("LEPTOS_SITE_ADDR", "127.0.0.1:0".into()),
        ("LEPTOS_SITE_ROOT", site.display().to_string()),
    ];
    let config =
        Config::from_lookup(|name| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()))
            .expect("bench config");
    let _guard = rt.enter();
    let launcher = Launcher::start(&config).expect("launcher");
    let ephemeral: Option<std::sync::Arc<EphemeralMachine>> = None;
    let mut built = Vec::new();
    for rank in 0..count {
        for layer in [rank % 2 == 0, rank % 2 == 1] {
            let (ephemeral, launcher) = (ephemeral.clone(), launcher.clone());
            let router = if layer {
                router(&config, ephemeral, launcher)
            } else {
                router_without_affinity(&config, ephemeral, launcher)
            };
            built.push(Built {
                layer,
                rank,
                router,
            });
        }
    }
    Some(built)
}

/// The first router built with the layer (`true`) or without it.
fn first(built: &[Built], layer: bool) -> &Router {
    &built
        .iter()
        .find(|b| b.layer == layer)
        .expect("routers of both kinds")
        .router
}

fn home_request() -> Request<Body> {
    Request::get("/")
        .header("host", "flyby.localhost")
        .header("accept", "text/html")
        .header("cookie", format!("{OTHER_COOKIES}; {LAUNCH_COOKIE}={ME}"))
        .body(Body::empty())
        .unwrap()
}

async fn serve_home(router: &Router) -> usize {
    let response = router.clone().oneshot(home_request()).await.unwrap();
    assert_eq!(response.status(), 200);
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .len()
}

fn bench_layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some(built) = launcher_routers(&rt, ROUTERS_OF_EACH) else {
        return;
    };
    let (with, without) = (first(&built, true), first(&built, false));
    let mut group = c.benchmark_group("layer");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ssr_home_with_affinity", |b| {
        b.iter(|| rt.block_on(serve_home(with)))
    });
    group.bench_function("ssr_home_without_affinity", |b| {
        b.iter(|| rt.block_on(serve_home(without)))
    });
    group.finish();

    // Interleaved: in each round, a block of `n` requests on every router, in the order they
    // were built (reversed every other round), so that other load on the machine hits both
    // kinds alike; the median over the rounds of the with / without ratio of their times.
    // The control: the same ratio between two halves of the routers without the layer (the
    // first and last built against the two between), which should read 0: what it reads is
    // the method's own error.
    let (n, rounds) = (50, 100);
    let (mut ratios, mut control) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for built in &built {
            for _ in 0..n {
                serve_home(&built.router).await;
            }
        }
        for round in 0..rounds {
            let mut times = Vec::new();
            let mut order: Vec<_> = built.iter().collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for built in order {
                let start = Instant::now();
                for _ in 0..n {
                    serve_home(&built.router).await;
                }
                times.push((built, start.elapsed().as_secs_f64()));
            }
            let sum = |keep: &dyn Fn(&Built) -> bool| -> f64 {
                times.iter().filter(|(b, _)| keep(b)).map(|(_, t)| t).sum()
            };
            let outer = |b: &Built| b.rank == 0 || b.rank == ROUTERS_OF_EACH - 1;
            ratios.push(sum(&|b| b.layer) / sum(&|b| !b.layer));
            control.push(sum(&|b| !b.layer && outer(b)) / sum(&|b| !b.layer && !outer(b)));
        }
    });
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        (values[values.len() / 2] - 1.0) * 100.0
    };
    let (cost, error) = (median(ratios), median(control));
    println!(
        "ROW|2a|Affinity layer cost, in process: SSR home page through the whole router with vs \
         without the layer ({ROUTERS_OF_EACH} routers of each, blocks of {n} requests on each \
         in turn, median of {rounds} rounds; criterion in target/criterion/layer)|{cost:+.2} % \
         time per request (the method's own error, two halves of the routers without it: \
         {error:+.2} %)|< 1 %|{}",
        verdict(cost < 1.0)
    );
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_decide, bench_layer
}

/// `FLYBY_BENCH_COUNT=with:N` (or `without:N`): serves the SSR home page N times through the
/// router with (or without) the layer, after a warm-up, and exits. `scripts/bench` runs it
/// under callgrind for N and 3N requests of each: the difference over 2N requests is what one
/// request costs, in instructions, whatever else the machine is doing (row 2b).
fn count_only(spec: &str) {
    let (which, n) = spec.split_once(':').expect("with:N or without:N");
    let n: usize = n.parse().expect("a number of requests");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let built = launcher_routers(&rt, 1).expect("a built site");
    let router = first(&built, which == "with");
    rt.block_on(async {
        for _ in 0..20 {
            serve_home(router).await;
        }
        for _ in 0..n {
            serve_home(router).await;
        }
    });
}

fn main() {
    if let Ok(spec) = std::env::var("FLYBY_BENCH_COUNT") {
        return count_only(&spec);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
