//! The `flyby` server: one binary, two roles, chosen by [`config::Config::role`].
//!
//! [`Application::build`] binds the listener and assembles the router; `main` only reads the
//! config, builds and runs. Tests start an `Application` on port 0 the same way.

pub mod affinity;
pub mod config;
pub mod cookies;
pub mod fly_api;
pub mod ownership;
pub mod telemetry;

use crate::app::{shell, App};
use axum::{routing::get, serve::ListenerExt, Router};
use config::Config;
use leptos::prelude::*;
use leptos_axum::{generate_route_list, LeptosRoutes};
use std::{future::Future, io, net::SocketAddr};
use tokio::net::TcpListener;

/// A bound, ready-to-run server.
pub struct Application {
    /// Bound in `build`, so the port is known (and taken) before `run` is called.
    listener: TcpListener,
    router: Router,
}

impl Application {
    /// Binds `config.site_addr` and builds the router for the configured role.
    pub async fn build(config: Config) -> io::Result<Self> {
        let listener = TcpListener::bind(config.site_addr).await?;
        Ok(Application {
            listener,
            router: router(&config),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        // Without TCP_NODELAY a small response written in two pieces waits for the client's
        // delayed ACK (~40 ms) on a keep-alive connection (Nagle's algorithm).
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// The whole router of a role: Leptos pages, static files, `/health`, request logs.
pub fn router(config: &Config) -> Router {
    let role = config.role;
    let options = config.leptos.clone();
    let routes = generate_route_list(move || view! { <App role/> });
    Router::new()
        .route("/health", get(health))
        .leptos_routes(&options, routes, {
            let options = options.clone();
            move || shell(options.clone(), role)
        })
        .fallback(leptos_axum::file_and_error_handler(move |options| {
            shell(options, role)
        }))
        .with_state(options)
        .layer(axum::middleware::from_fn(telemetry::log_request))
}

/// Liveness for Fly's health checks and for the launcher waiting on a new Machine.
async fn health() -> &'static str {
    "ok"
}

/// Completes on SIGINT (what Fly sends on stop by default) or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping"),
    }
}
