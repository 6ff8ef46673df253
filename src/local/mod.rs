//! `flyby-local`: fly-proxy and the Machines API, played on one machine, so that the very same
//! `flyby` binary runs on a laptop and in CI as it runs on Fly.
//!
//! Module map:
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
//!
//! [`start`] binds both listeners, serves them and boots the launchers; the returned
//! [`RunningPlatform`] stops every Machine when shut down (or, as a backstop, when dropped).

pub mod faults;
pub mod launchers;
pub mod machines_api;
pub mod network;
pub mod proxy;
pub mod registry;
pub mod stats;
pub mod supervisor;

use clap::{Parser, ValueEnum};
use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
};
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

/// How the proxy picks a Machine for a request no header pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Balance {
    /// The Machine in the region nearest the edge, as fly-proxy does.
    Nearest,
    Random,
    RoundRobin,
    /// A Machine other than the one a `fly-replay` would name, whenever there is one: proves
    /// the affinity layer rather than getting lucky.
    WrongFirst,
}

/// A switch on the command line (`on` / `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// The token the Machines API expects; kept out of `Debug` so that printing the arguments
/// never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<hidden>)")
    }
}

impl FromStr for ApiToken {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Self, Infallible> {
        Ok(ApiToken(s.to_owned()))
    }
}

/// Command line of `flyby-local`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "flyby-local",
    about = "Plays fly-proxy and the Fly Machines API on this machine",
    // A flag given again overrides the earlier one (scripts append to a base command line).
    args_override_self = true
)]
pub struct Args {
    /// Where the proxy listens (apps are chosen by Host: <app>.localhost).
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub proxy_addr: SocketAddr,
    /// Where the Machines API (and the admin endpoint under /_local/) listens.
    #[arg(long, default_value = "127.0.0.1:4280")]
    pub api_addr: SocketAddr,
    /// Maps an image name to a local executable (repeatable): NAME=PATH.
    #[arg(long = "image", value_parser = parse_image)]
    pub images: Vec<(String, PathBuf)>,
    /// Launcher Machines started at boot, spread over regions.
    #[arg(long, default_value_t = 2)]
    pub launchers: usize,
    /// The edge region the emulated visitor connects to.
    #[arg(long, default_value = "ams")]
    pub edge_region: String,
    /// How the proxy load-balances.
    #[arg(long, value_enum, default_value_t = Balance::Nearest)]
    pub balance: Balance,
    /// Fly's Machines API rate limits (1 req/s per action, bursts of 3; get: 5/s, bursts of 10).
    /// Tests that are not about them turn them off.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub rate_limits: Switch,
    /// Extra environment for the launcher Machines (repeatable): KEY=VALUE.
    #[arg(long = "launcher-env", value_parser = parse_env)]
    pub launcher_env: Vec<(String, String)>,
    /// The built site the launchers serve (LEPTOS_SITE_ROOT); default: ../site next to the
    /// flyby-local executable, i.e. target/site.
    #[arg(long)]
    pub site_root: Option<PathBuf>,
    /// How Machines sit on the network: `isolated` gives each Machine a network namespace of
    /// its own with Fly's two addresses (IPv4 for the proxy, IPv6 6PN for other Machines);
    /// `shared` puts them all on loopback addresses and rewrites where they listen.
    #[arg(long, value_enum, default_value_t = NetworkMode::Isolated)]
    pub network: NetworkMode,
    /// The token the Machines API expects (and hands to the launchers).
    #[arg(long, env = "FLY_API_TOKEN", default_value = DEFAULT_API_TOKEN, hide_env_values = true)]
    pub api_token: ApiToken,
}

fn parse_image(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or("expected NAME=PATH")?;
    if name.is_empty() || path.is_empty() {
        return Err("expected NAME=PATH".into());
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    let (key, value) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    if key.is_empty() {
        return Err("expected KEY=VALUE".into());
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// Everything the local platform shares between the proxy, the Machines API and the
/// supervisor.
pub struct Platform {
    /// The command line, as given.
    pub args: Args,
    /// Apps and Machines.
    pub registry: Registry,
    /// Counters for `/_local/stats`.
    pub stats: Stats,
    /// Armed fault knobs.
    pub faults: Faults,
    /// The bearer token every `/v1` call must carry.
    pub token: String,
    /// Image name -> the executable a Machine of that image runs.
    pub images: BTreeMap<String, PathBuf>,
    /// The Machines' processes.
    pub supervisor: Supervisor,
    /// Fly's per-action token buckets.
    pub rate_limits: RateLimits,
    /// Where the proxy really listens (the port may have been 0 on the command line).
    pub proxy_addr: SocketAddr,
    /// Where the Machines API really listens.
    pub api_addr: SocketAddr,
    /// How the proxy reaches Machines and Machines reach each other and the API.
    pub network: Network,
}

pub use faults::Faults;
pub use machines_api::RateLimits;
pub use network::{Network, NetworkMode};
pub use registry::Registry;
pub use stats::Stats;
pub use supervisor::Supervisor;

impl Platform {
    /// A platform with no Machines; `proxy_addr` and `api_addr` are where its listeners are.
    pub fn new(
        args: Args,
        network: Network,
        proxy_addr: SocketAddr,
        api_addr: SocketAddr,
    ) -> Platform {
        let mut images: BTreeMap<String, PathBuf> = BTreeMap::new();
        if let Some(flyby) = sibling_executable("flyby") {
            images.insert(LAUNCHER_IMAGE.to_owned(), flyby);
        }
        images.extend(args.images.iter().cloned());
        Platform {
            token: args.api_token.expose().to_owned(),
            rate_limits: RateLimits::new(args.rate_limits == Switch::On),
            registry: Registry::default(),
            stats: Stats::default(),
            faults: Faults::default(),
            supervisor: Supervisor::default(),
            images,
            proxy_addr,
            api_addr,
            network,
            args,
        }
    }

    /// The executable an image maps to, if any.
    pub fn image_program(&self, image: &str) -> Option<&Path> {
        self.images.get(image).map(PathBuf::as_path)
    }

    /// `LEPTOS_SITE_ROOT` for the launchers.
    pub fn site_root(&self) -> PathBuf {
        self.args.site_root.clone().unwrap_or_else(|| {
            let default = std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.parent()?.join("site")))
                .unwrap_or_else(|| PathBuf::from("target/site"));
            default.canonicalize().unwrap_or(default)
        })
    }
}

/// `name` in the directory of the running executable (where cargo puts every binary).
fn sibling_executable(name: &str) -> Option<PathBuf> {
    Some(std::env::current_exe().ok()?.parent()?.join(name))
}

/// Why the platform could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} for the {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--edge-region {0:?} is not a Fly region code")]
    EdgeRegion(String),
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
    if crate::fly::RegionCode::parse(&args.edge_region).is_err() {
        return Err(StartError::EdgeRegion(args.edge_region.clone()));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let args = Args::try_parse_from(["flyby-local", "--api-token", "s3cret"]).unwrap();
        assert_eq!(args.api_token.expose(), "s3cret");
        assert!(!format!("{args:?}").contains("s3cret"));
    }

    #[test]
    fn launcher_env_and_images_parse_as_pairs() {
        let args = Args::try_parse_from([
            "flyby-local",
            "--launcher-env",
            "A=b=c",
            "--image",
            "probe=/bin/true",
            "--rate-limits",
            "off",
        ])
        .unwrap();
        assert_eq!(args.launcher_env, vec![("A".into(), "b=c".into())]);
        assert_eq!(args.images, vec![("probe".into(), "/bin/true".into())]);
        assert_eq!(args.rate_limits, Switch::Off);
        assert!(Args::try_parse_from(["flyby-local", "--launcher-env", "novalue"]).is_err());
    }
}
