//! `flyby-local`: fly-proxy and the Machines API, played on one machine, so that the very same
//! `flyby` binary runs on a laptop and in CI as it runs on Fly.
//!
//! Module map:
//! - [`registry`]: apps and Machines, their states and addresses; shared by everything below.
//! - [`supervisor`]: Machines as real OS processes on their own loopback address.
//! - [`machines_api`]: the Machines REST API (`/v1/apps/{app}/machines...`) and the admin
//!   endpoint (`/_local/stats`, `/_local/faults`).
//! - [`proxy`]: fly-proxy: routing by Host, load balancing, Fly's request headers, `fly-replay`
//!   and its replay cache, WebSockets.
//! - [`faults`]: knobs that make the platform fail on purpose, for tests.
//! - [`stats`]: counters that prove what a run exercised.

pub mod faults;
pub mod machines_api;
pub mod proxy;
pub mod registry;
pub mod stats;
pub mod supervisor;

use clap::{Parser, ValueEnum};
use std::{net::SocketAddr, path::PathBuf};

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

/// Command line of `flyby-local`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "flyby-local",
    about = "Plays fly-proxy and the Fly Machines API on this machine"
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
}

fn parse_image(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or("expected NAME=PATH")?;
    if name.is_empty() || path.is_empty() {
        return Err("expected NAME=PATH".into());
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}
