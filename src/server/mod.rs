//! The `flyby` server: one binary, three roles (launcher, ephemeral, concierge), chosen by
//! [`config::Config::role`].
//!
//! [`Application::build`] binds the listener and assembles the router; `main` only reads the
//! config, builds and runs. Tests start an `Application` on port 0 the same way.
//!
//! Module map:
//! - [`config`]: the environment, read once into typed values.
//! - [`affinity`]: which Machine must answer a request, as a pure decision and a tower layer
//!   around the whole router.
//! - [`ownership`], [`cookies`]: owner secrets and the cookies that carry them and the pins.
//! - [`readiness`]: how a new Machine proves to the launcher's probe that it is the one created.
//! - [`arming`]: how a Machine of the warm pool learns its owner's hash from its launcher.
//! - [`ephemeral`], [`lifecycle`]: a visitor's Machine: the hand-over, the page's live channel,
//!   and the timeline that ends with the process exiting.
//! - [`launcher`], [`fly_api`]: the launcher role: launches through the Machines API, the
//!   tracker of Machines alive and its reaper, limits, metrics.
//! - [`assets`]: the JS/WASM/CSS bundle under `/pkg`, precompressed and cached by content hash.
//! - [`page_policy`]: what a browser lets our pages do (CSP, no framing, no sniffing).
//! - [`listen`]: the listening sockets, on both of a Fly Machine's networks.
//! - [`telemetry`]: the logs, one line per request.

pub mod affinity;
pub mod arming;
pub mod assets;
pub mod config;
pub mod cookies;
pub mod ephemeral;
pub mod fly_api;
pub mod launcher;
pub mod lifecycle;
pub mod listen;
pub mod ownership;
pub mod page_policy;
pub mod readiness;
pub mod telemetry;

use crate::{
    app::{shell, App},
    role::Role,
};
use affinity::{AffinityLayer, Here};
use axum::{
    routing::{get, MethodFilter},
    serve::ListenerExt,
    Router,
};
use config::{Config, RoleConfig};
use ephemeral::EphemeralMachine;
use launcher::Launcher;
use leptos::prelude::*;
use leptos_axum::{generate_route_list, LeptosRoutes};
use listen::SiteListener;
use std::{
    future::Future,
    io,
    net::{Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};
use tower::ServiceBuilder;
use tower_http::set_header::SetResponseHeaderLayer;

/// A bound, ready-to-run server.
pub struct Application {
    /// Bound in `build`, so the port is known (and taken) before `run` is called.
    listener: SiteListener,
    router: Router,
    /// The ephemeral role's Machine, whose end ends the process.
    ephemeral: Option<Arc<EphemeralMachine>>,
    /// How long in-flight requests may take once stopping.
    grace: Duration,
    /// The launcher's Prometheus endpoint, bound in `build`.
    metrics: Option<(SiteListener, Arc<launcher::metrics::Metrics>)>,
}

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error(transparent)]
    Launcher(#[from] launcher::LauncherError),
}

impl Application {
    /// Binds `config.site_addr` and builds the router for the configured role.
    pub async fn build(config: Config) -> Result<Self, BuildError> {
        let bind = |addr: SocketAddr| {
            SiteListener::bind(addr).map_err(|source| BuildError::Listen { addr, source })
        };
        let listener = bind(config.site_addr)?;
        let ephemeral = EphemeralMachine::start(&config);
        let launcher = Launcher::start(&config)?;
        let metrics = match (&launcher, &config.role_config) {
            (Some(launcher), RoleConfig::Launcher(settings)) => {
                // On every address, as Fly's metrics docs ask: the scraper reaches it over the
                // private network. No public service forwards this port.
                let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, settings.metrics_port));
                Some((bind(addr)?, launcher.metrics.clone()))
            }
            _ => None,
        };
        let router = router(&config, ephemeral.clone(), launcher);
        Ok(Application {
            listener,
            router,
            ephemeral,
            grace: config.shutdown_grace(),
            metrics,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics` is served, on the launcher role.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serves until `stop` completes (a signal) or, on the ephemeral role, until the Machine's
    /// timeline ends; then lets in-flight requests finish, for at most the grace period.
    pub async fn run(self, stop: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        let ephemeral = self.ephemeral.clone();
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            match ephemeral {
                Some(machine) => {
                    tokio::select! {
                        () = stop => machine.lifecycle.apply(lifecycle::Event::Terminate),
                        reason = machine.lifecycle.ended() => {
                            tracing::info!(?reason, "Machine ended");
                            // The live channels get a moment to tell their pages the end;
                            // upgraded connections are not held by the graceful shutdown.
                            tokio::time::sleep(FAREWELL).await;
                        }
                    }
                }
                None => stop.await,
            }
            let _ = stopping_tx.send(());
        };
        // Without TCP_NODELAY a small response written in two pieces waits for the client's
        // delayed ACK (~40 ms) on a keep-alive connection (Nagle's algorithm).
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        if let Some((listener, metrics)) = self.metrics {
            let app = Router::new().route(
                "/metrics",
                get(move || {
                    let metrics = metrics.clone();
                    async move { metrics.render() }
                }),
            );
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        let serve = axum::serve(listener, self.router).with_graceful_shutdown(shutdown);
        let grace = self.grace;
        tokio::select! {
            served = serve => served,
            () = async move {
                if stopping_rx.await.is_ok() {
                    tokio::time::sleep(grace).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => {
                tracing::warn!("connections still open after the grace period; exiting anyway");
                Ok(())
            }
        }
    }
}

/// The whole router of a role: Leptos pages and server functions, static files, `/health`,
/// the role's own routes; all behind the affinity layer, and the request log around that.
pub fn router(
    config: &Config,
    ephemeral: Option<Arc<EphemeralMachine>>,
    launcher: Option<Arc<Launcher>>,
) -> Router {
    assemble(config, ephemeral, launcher, true)
}

/// [`router`] without the affinity layer: the same routes, state and outer layers, so that the
/// benchmarks (`benches/`) measure what the layer costs against the very same router. It
/// exists only with the `bench` feature, which no build that serves anything enables (the
/// release build's features are checked by `tests/system/deploy.rs`): the layer is what keeps
/// strangers off a visitor's Machine.
#[cfg(feature = "bench")]
pub fn router_without_affinity(
    config: &Config,
    ephemeral: Option<Arc<EphemeralMachine>>,
    launcher: Option<Arc<Launcher>>,
) -> Router {
    assemble(config, ephemeral, launcher, false)
}

fn assemble(
    config: &Config,
    ephemeral: Option<Arc<EphemeralMachine>>,
    launcher: Option<Arc<Launcher>>,
    affinity: bool,
) -> Router {
    let role = config.role;
    let options = config.leptos.clone();
    let bundle = assets::Bundle::find(&options, role);
    let links = bundle.links(&options);
    let (loader_hash, style_hash) = (links.loader_hash.clone(), links.style_hash.clone());
    let launchers = launcher.as_ref().map(|l| l.launchers.subscribe());
    let health_launcher = launcher.clone();
    let context = {
        let ephemeral = ephemeral.clone();
        move || {
            if let Some(machine) = &ephemeral {
                provide_context(machine.clone());
            }
            if let Some(launcher) = &launcher {
                provide_context(launcher.clone());
            }
        }
    };
    let readiness_key = match &config.role_config {
        RoleConfig::Ephemeral(e) => e.readiness_key.clone(),
        RoleConfig::Launcher(_) | RoleConfig::Concierge { .. } => None,
    };
    let mut router = Router::new().route(
        affinity::HEALTH_PATH,
        get({
            move |headers: http::HeaderMap| {
                health(readiness_key.clone(), health_launcher.clone(), headers)
            }
        }),
    );
    if role == Role::Launcher {
        // The visitor's page exists in the shared component tree, but never on the launcher:
        // without this, the fallback would render it (and its server function's refusal).
        router = router.route("/m/{*rest}", axum::routing::any(not_here));
    }
    let here = Here {
        role,
        id: config.fly.machine_id,
        // The layer reads it from the Machine's slot on each request (`with_owner`).
        owner: None,
    };
    // Where visitors of the visitors' app go when their Machine is gone.
    let gone_url = match &config.role_config {
        RoleConfig::Ephemeral(e) => e.launcher_url.as_deref(),
        RoleConfig::Concierge { launcher_url } => launcher_url.as_deref(),
        RoleConfig::Launcher(_) => None,
    }
    .map(|launcher| format!("{launcher}/gone"));
    // Which Machine answered: lets a visitor (and the tests) see affinity at work. A Machine id
    // is no secret; it is in every visitor's URL already.
    let answered_by = config
        .fly
        .machine_id
        .and_then(|id| http::HeaderValue::from_str(id.as_str()).ok());
    let app = {
        let (options, links) = (options.clone(), links.clone());
        move || shell(options.clone(), role, links.clone())
    };
    // A visitor's Machine's page, made once: at its route, and as the answer of its hand-over.
    let page: ephemeral::PageRender = Arc::new(leptos_axum::render_app_async_with_context(
        context.clone(),
        app.clone(),
    ));
    if let Some(machine) = &ephemeral {
        router = router.merge(ephemeral::routes(machine.clone(), page.clone()));
    }
    let router = match role {
        Role::Launcher => {
            let routes = generate_route_list(App)
                .into_iter()
                .filter(|route| belongs_to(role, route.path()))
                .collect::<Vec<_>>();
            router.leptos_routes_with_context(&options, routes, context, app)
        }
        // A visitor's Machine has one page, its owner's: registered with the very render
        // Leptos's route list would give it, beside the server functions that list would
        // bring. Generating that list walks the whole app, which left ~1.2 MB of code
        // resident on every idle Machine (BENCHMARKS.md, row 5); a test holds the two to the
        // same path (`MACHINE_PAGE_ROUTE`). Generating it also sets the executor Leptos
        // spawns its tasks on, which is done here instead.
        Role::Ephemeral => {
            let _ = any_spawner::Executor::init_tokio();
            server_functions(router, context).route(
                MACHINE_PAGE_ROUTE,
                get(move |request: axum::extract::Request| page(request)),
            )
        }
        // It serves no page: every request it gets is replayed, or refused.
        Role::Concierge => server_functions(router, context),
    };
    let pkg = format!("/{}", options.site_pkg_dir);
    let router = router
        .nest_service(&pkg, assets::service(&options, bundle))
        .route_service(
            crate::app::map::LAND_OUTLINE,
            assets::site_file(
                &options,
                crate::app::map::LAND_OUTLINE.trim_start_matches('/'),
            ),
        )
        .fallback(leptos_axum::file_and_error_handler(move |options| {
            shell(options, role, links.clone())
        }))
        .with_state(options);
    // The layers wrap the router whole, one tower stack, not each of its routes: a
    // `Router::layer` boxes every route once more per layer, which axum clones and boxes again
    // on every request (BENCHMARKS.md, row 2a).
    let affinity = affinity.then(|| {
        let layer = AffinityLayer::new(here, gone_url.as_deref(), launchers);
        match &ephemeral {
            Some(machine) => layer
                .with_owner(machine.owner.clone())
                .with_routes(machine.routes.clone()),
            None => layer,
        }
    });
    let stack = ServiceBuilder::new()
        .layer(axum::middleware::from_fn(telemetry::log_request))
        .layer(SetResponseHeaderLayer::if_not_present(
            MACHINE_HEADER,
            answered_by,
        ))
        .layer(page_policy::layers(&loader_hash, &style_hash))
        .option_layer(affinity);
    Router::new().fallback_service(stack.service(router))
}

/// How long an ended Machine waits before it stops serving, so the last phase message reaches
/// every open page.
const FAREWELL: Duration = Duration::from_millis(250);

/// The response header naming the Machine that answered.
pub const MACHINE_HEADER: http::HeaderName = http::HeaderName::from_static("flyby-machine");

/// The route of a visitor's Machine's page (the app's `/m/:id`), as the ephemeral role
/// registers it.
pub const MACHINE_PAGE_ROUTE: &str = "/m/{id}";

/// Every server function of the app at its endpoint, as `leptos_routes_with_context` adds them.
fn server_functions<S>(
    mut router: Router<S>,
    context: impl Fn() + Clone + Send + Sync + 'static,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    for (path, method) in leptos::server_fn::axum::server_fn_paths() {
        let context = context.clone();
        let handler = move |request: axum::extract::Request| {
            leptos_axum::handle_server_fns_with_context(context, request)
        };
        let method = MethodFilter::try_from(method)
            .expect("a server function is reached by GET, POST, PUT, PATCH or DELETE");
        router = router.route(path, axum::routing::on(method, handler));
    }
    router
}

/// Which pages each role serves: the visitor's page lives under `/m/` on the ephemeral app,
/// everything else on the launcher.
fn belongs_to(role: Role, path: &str) -> bool {
    let visitor_page = path.starts_with(affinity::MACHINE_PREFIX);
    match role {
        Role::Launcher => !visitor_page,
        Role::Ephemeral => visitor_page,
        // It serves no page: every request it gets is replayed, or refused.
        Role::Concierge => false,
    }
}

/// A path of the other role's pages.
async fn not_here() -> (http::StatusCode, &'static str) {
    (
        http::StatusCode::NOT_FOUND,
        "Nothing here: visitors' Machines live on their own app.\n",
    )
}

/// The headers of the request a server function is answering.
pub async fn request_headers() -> Result<http::HeaderMap, crate::app::AppError> {
    leptos_axum::extract().await.map_err(|e| {
        tracing::error!(error = %e, "no request in a server function's context");
        crate::app::AppError::Internal
    })
}

/// Liveness for Fly's health checks and for the launcher waiting on a new Machine, which
/// asks with a challenge that only this Machine can answer (`readiness`).
/// On a launcher's `/health`: how many started launchers it shares visitors with (itself
/// included), so that a deploy (and a test) can see the launchers found each other. A count,
/// not their ids.
pub const LAUNCHERS_HEADER: &str = "flyby-launchers";

/// On a launcher's `/health`: how many Machines of the warm pool it sees waiting. A count.
pub const WARM_HEADER: &str = "flyby-warm";

async fn health(
    key: Option<readiness::ReadinessKey>,
    launcher: Option<Arc<Launcher>>,
    headers: http::HeaderMap,
) -> impl axum::response::IntoResponse {
    let mut answer = http::HeaderMap::new();
    if let Some(proof) = key.and_then(|key| readiness::answer(&key, &headers)) {
        answer.insert(readiness::PROOF_HEADER, proof);
    }
    if let Some(launcher) = launcher {
        let count = launcher.launchers.borrow().len();
        answer.insert(LAUNCHERS_HEADER, http::HeaderValue::from(count));
        answer.insert(
            WARM_HEADER,
            http::HeaderValue::from(launcher.warm_waiting()),
        );
    }
    (answer, "ok")
}

/// Completes on SIGINT (what Fly sends on stop by default) or SIGTERM. The handlers are
/// installed when this is called, not when the future is first polled, so a signal that
/// arrives as soon as the server says it is serving is not lost (nor fatal).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ephemeral_role_registers_exactly_the_apps_machine_page_route() {
        let ephemeral: Vec<String> = generate_route_list(App)
            .into_iter()
            .filter(|route| belongs_to(Role::Ephemeral, route.path()))
            .map(|route| route.path().to_owned())
            .collect();
        assert_eq!(ephemeral, [MACHINE_PAGE_ROUTE]);
        assert!(!generate_route_list(App)
            .iter()
            .any(|route| belongs_to(Role::Concierge, route.path())));
    }
}
