//! The command line of `flyby-local`, parsed once by clap into typed values: a bad flag
//! stops it at start with clap's one line naming it.

use super::{NetworkMode, TimingsMode, DEFAULT_API_TOKEN};
use crate::fly::RegionCode;
use clap::{Parser, ValueEnum};
use std::{convert::Infallible, fmt, net::SocketAddr, path::PathBuf, str::FromStr};

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
    pub edge_region: RegionCode,
    /// How the proxy load-balances.
    #[arg(long, value_enum, default_value_t = Balance::Nearest)]
    pub balance: Balance,
    /// Fly's Machines API rate limits (1 req/s per action, bursts of 3; get: 5/s, bursts of 10).
    /// Tests that are not about them turn them off.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub rate_limits: Switch,
    /// How long things take: `instant` (nothing is delayed on purpose, for tests) or `fly`
    /// (distance between regions and Fly's boot times; see the manual's timing model).
    #[arg(long, value_enum, default_value_t = TimingsMode::Instant)]
    pub timings: TimingsMode,
    /// The seed of `--timings fly`'s draws: the same seed, the same boot times.
    #[arg(long, default_value_t = 1)]
    pub timings_seed: u64,
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
