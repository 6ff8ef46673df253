//! `flyby-local`: fly-proxy and the Machines API, played on one machine, so that the very same
//! `flyby` binary runs on a laptop and in CI as it runs on Fly.
//!
//! Module map:
//! - `args`: the command line ([`Args`]); `platform`: what everything below shares
//!   ([`Platform`]).
//! - [`registry`]: apps and Machines, their states and addresses; shared by everything below.
//! - [`network`]: each Machine's two addresses, Fly's proxy address and 6PN address, in a
//!   network namespace of its own.
//! - [`supervisor`]: Machines as real OS processes, each in its place on the network.
//! - [`machines_api`]: the Machines REST API (`/v1/apps/{app}/machines...`) and the admin
//!   endpoint (`/_local/stats`, `/_local/faults`).
//! - [`proxy`]: fly-proxy: routing by Host, load balancing, Fly's request headers, `fly-replay`
//!   and its replay cache, WebSockets.
//! - [`launchers`]: the launcher Machines booted at start, configured as `fly.toml` would.
//! - [`faults`]: knobs that make the platform fail on purpose, for tests.
//! - [`stats`]: counters that prove what a run exercised.
//! - [`timings`]: how long hops, API calls and boots take (`--timings instant|fly`).
//!
//! [`start`] binds both listeners, serves them and boots the launchers; the returned
//! [`RunningPlatform`] stops every Machine when shut down (or, as a backstop, when dropped).

mod args;
mod platform;

pub mod faults;
pub mod launchers;
pub mod machines_api;
pub mod network;
pub mod proxy;
pub mod registry;
pub mod stats;
pub mod supervisor;
pub mod timings;

pub use args::{ApiToken, Args, Balance, Switch};
pub use faults::Faults;
pub use machines_api::RateLimits;
pub use network::{Network, NetworkMode};
pub use platform::Platform;
pub use registry::Registry;
pub use stats::Stats;
pub use supervisor::Supervisor;
pub use timings::{Timings, TimingsMode};

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc};
use tokio::{net::TcpListener, task::JoinHandle};

/// The Fly app of the launcher Machines (the public front app, `fly.toml`'s `app`).
pub const LAUNCHER_APP: &str = "flyby";
/// The Fly app visitors' Machines are created in; it starts empty.
pub const EPHEMERAL_APP: &str = "flyby-machines";
/// The image launcher Machines run. On Fly it would be `registry.fly.io/flyby:deployment-<ULID>`;
/// locally it maps to the `flyby` executable next to `flyby-local` unless `--image` says otherwise.
pub const LAUNCHER_IMAGE: &str = "registry.fly.io/flyby:local";
/// The API token expected when `FLY_API_TOKEN` is not set. Local only: it guards nothing real.
pub const DEFAULT_API_TOKEN: &str = "flyby-local-token";

/// Why the platform could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} for the {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    #[error(transparent)]
    Launchers(#[from] launchers::LaunchersError),
}

/// A started platform: both listeners served, launchers started.
pub struct RunningPlatform {
    platform: Arc<Platform>,
    servers: Vec<JoinHandle<()>>,
    shut_down: bool,
}

impl RunningPlatform {
    pub fn proxy_addr(&self) -> SocketAddr {
        self.platform.proxy_addr
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.platform.api_addr
    }

    pub fn platform(&self) -> Arc<Platform> {
        self.platform.clone()
    }

    /// Stops serving, then stops every Machine (its stop signal, SIGKILL after its grace) and
    /// waits until no Machine process is left.
    pub async fn shutdown(mut self) {
        self.shut_down = true;
        for server in &self.servers {
            server.abort();
        }
        self.platform.supervisor.shutdown().await;
    }
}

impl Drop for RunningPlatform {
    fn drop(&mut self) {
        if !self.shut_down {
            // A backstop for a platform dropped without `shutdown` (a failing test, a panic):
            // no Machine may outlive it.
            for server in &self.servers {
                server.abort();
            }
            self.platform
                .supervisor
                .kill_all_now(&self.platform.registry);
        }
    }
}

/// Binds the proxy and the Machines API, serves them, creates the apps `flyby` and
/// `flyby-machines`, and starts `--launchers` launcher Machines; returns once they are started.
pub async fn start(args: Args) -> Result<RunningPlatform, StartError> {
    let api = bind("Machines API", args.api_addr).await?;
    let proxy = bind("proxy", args.proxy_addr).await?;
    let local_addr = |listener: &TcpListener, what, addr| {
        listener
            .local_addr()
            .map_err(|source| StartError::Bind { what, addr, source })
    };
    let api_addr = local_addr(&api, "Machines API", args.api_addr)?;
    let proxy_addr = local_addr(&proxy, "proxy", args.proxy_addr)?;
    let network = Network::new(args.network)?;
    let private_api = network
        .api_listener()
        .await
        .map_err(|e| StartError::Network(network::NetworkError::Setup(e)))?;
    let platform = Arc::new(Platform::new(args, network, proxy_addr, api_addr));
    // What the deploy guide does: `fly apps create` both apps, then `fly ips allocate-v6` and
    // `fly ips allocate-v4 --shared` for both (`fly deploy` does it for the launcher's).
    for app in [LAUNCHER_APP, EPHEMERAL_APP] {
        platform.registry.ensure_app(app);
        platform.registry.allocate_public_ips(app);
    }

    let mut servers = vec![
        tokio::spawn(machines_api::serve(api, platform.clone())),
        tokio::spawn(proxy::serve(proxy, platform.clone())),
    ];
    if let Some(private_api) = private_api {
        servers.push(tokio::spawn(machines_api::serve(
            private_api,
            platform.clone(),
        )));
    }
    let running = RunningPlatform {
        platform: platform.clone(),
        servers,
        shut_down: false,
    };
    tracing::info!(%api_addr, %proxy_addr, "flyby-local listening");
    if let Err(e) = launchers::boot(&platform).await {
        running.shutdown().await;
        return Err(e.into());
    }
    Ok(running)
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}
