//! The server's whole configuration, read from the environment once at start.
//!
//! Every variable is declared once, in [`VARIABLES`]: `flyby --help` prints that table and
//! [`Config::from_lookup`] reads exactly those names, so the two cannot drift apart. A missing or
//! invalid variable stops the start with one line naming it and what was expected; the value of
//! a secret is never echoed.

use super::{
    fly_api::ApiToken, launcher::pool::WarmPool, ownership::OwnerHash, readiness::ReadinessKey,
};
use crate::{
    fly::{MachineId, RegionCode},
    role::Role,
};
use leptos::config::LeptosOptions;
use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

/// One environment variable `flyby` reads.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    pub name: &'static str,
    /// `None` when the variable is required.
    pub default: Option<&'static str>,
    /// What is expected, said the way the error line and `--help` say it.
    pub expected: &'static str,
    pub help: &'static str,
    /// Secrets are never printed back, not even in an error.
    pub secret: bool,
}

const fn var(
    name: &'static str,
    default: Option<&'static str>,
    expected: &'static str,
    help: &'static str,
) -> Variable {
    Variable {
        name,
        default,
        expected,
        help,
        secret: false,
    }
}

const fn secret(name: &'static str, expected: &'static str, help: &'static str) -> Variable {
    Variable {
        name,
        default: Some(""),
        expected,
        help,
        secret: true,
    }
}

/// Every variable, in the order `--help` lists them.
#[rustfmt::skip]
pub const VARIABLES: &[Variable] = &[
    var("FLYBY_ROLE", None, "`launcher`, `ephemeral` or `concierge`", "what this process is: the launcher, a visitor's Machine, or the visitors' app's concierge"),
    var("FLYBY_LOG_FORMAT", Some("human"), "`human` or `json`", "log line format"),
    var("FLYBY_EPHEMERAL_APP", Some("flyby-machines"), "a Fly app name", "the app the launcher creates visitors' Machines in"),
    var("FLYBY_TTL_SECS", Some("120"), "whole seconds, 10 to 3600", "how long a visitor's Machine may live at most"),
    var("FLYBY_CLAIM_SECS", Some("60"), "whole seconds, 5 to 600", "how long a new Machine waits for its owner before it switches itself off"),
    var("FLYBY_SHOW_SECS", Some("30"), "whole seconds, 3 to 600", "how long the owner's show lasts before the Machine switches itself off"),
    var("FLYBY_OWNER_HASH", Some(""), "64 lowercase hex characters", "ephemeral: SHA-256 of the owner's secret (required for the ephemeral role, unless it is a Machine of the warm pool: then FLYBY_READINESS_KEY arms it later)"),
    var("FLYBY_READINESS_KEY", Some(""), "64 lowercase hex characters", "ephemeral: set by the launcher, per launch; the Machine proves with it that it is the one the launcher created"),
    var("FLYBY_LAUNCHER_URL", Some(""), "an http(s) origin like https://flyby.fly.dev", "ephemeral, concierge: where the launcher is, for the way back; launcher: its own public origin, which the warm pool's Machines get (default: learned from the first visitor's page, so a launcher no visitor reached yet refills no pool)"),
    secret("FLY_API_TOKEN", "a Fly API token", "launcher: token for the Machines API (required for the launcher role)"),
    var("FLYBY_MACHINES_API", Some("http://_api.internal:4280"), "an http(s) URL", "launcher: the Machines API base URL"),
    var("FLYBY_EPHEMERAL_ORIGIN", Some(""), "an http(s) origin", "launcher: public origin of the ephemeral app (default: the launcher's host with the app name swapped)"),
    var("FLYBY_MAX_MACHINES", Some("8"), "a whole number, 1 to 100", "launcher: most visitor Machines alive at once, across all launchers"),
    var("FLYBY_LAUNCHES_PER_MINUTE", Some("3"), "a whole number, 1 to 600", "launcher: launches one visitor (Fly-Client-IP) may start per minute"),
    var("FLYBY_LAUNCH_SECS", Some("60"), "whole seconds, 5 to 300", "launcher: how long a launch may take from the click to serving; past it, it is abandoned and what it created destroyed"),
    var("FLYBY_WARM_POOL", Some(""), "`region=count` pairs such as `ams=2,syd=1,*=0` (`*`: every other Fly region), current Fly regions only, in all at most FLYBY_MAX_MACHINES", "launcher: how many Machines each region keeps created and stopped, started on a click instead of created (empty: no pool)"),
    var("FLYBY_POOL_MAX_AGE_SECS", Some("86400"), "whole seconds, 60 to 604800", "launcher: a pooled Machine older than this is replaced with a new one"),
    var("FLYBY_METRICS_PORT", Some("9091"), "a port number", "launcher: Prometheus /metrics, on every address of the Machine (no service forwards it)"),
    var("LEPTOS_SITE_ADDR", Some("127.0.0.1:3000"), "an address like [::]:8080", "where the server listens; [::] is every IPv6 and IPv4 address (the image's, on Fly)"),
    var("LEPTOS_SITE_ROOT", Some("target/site"), "a directory", "where the built site (pkg/, favicon) is"),
    var("LEPTOS_SITE_PKG_DIR", Some("pkg"), "a directory name", "the site-root folder with the JS, WASM and CSS bundle"),
    var("LEPTOS_OUTPUT_NAME", Some("flyby"), "a file stem", "the name of the JS/WASM/CSS bundle files"),
    var("FLY_APP_NAME", Some("flyby"), "a Fly app name", "set by Fly: the app this Machine belongs to"),
    var("FLY_MACHINE_ID", Some(""), "14 lowercase hex characters", "set by Fly: this Machine's id (required for the ephemeral role)"),
    var("FLY_REGION", Some(""), "a region code like `ams`", "set by Fly: the region this Machine runs in"),
    var("FLY_IMAGE_REF", Some(""), "an image reference", "set by Fly: the image this Machine runs, reused for visitors' Machines"),
];

/// A variable that is missing or does not hold what is expected. Displays as the one line
/// `flyby` prints before it exits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not set: expected {expected}")]
    Missing {
        name: &'static str,
        expected: &'static str,
    },
    #[error("{name} is invalid ({shown}): expected {expected}")]
    Invalid {
        name: &'static str,
        /// The offending value, or `<hidden>` for a secret.
        shown: String,
        expected: &'static str,
    },
}

/// The typed configuration of one `flyby` process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Decides which page and which routes this process serves.
    pub role: Role,
    /// Humans read the terminal; log collectors want JSON.
    pub log_format: LogFormat,
    /// Where the server listens (`LEPTOS_SITE_ADDR`); port 0 picks a free one, as tests do.
    pub site_addr: SocketAddr,
    /// The options Leptos needs to find and name the site's bundle.
    pub leptos: LeptosOptions,
    /// What Fly tells this Machine about itself.
    pub fly: FlyEnvironment,
    /// The app visitors' Machines are created in.
    pub ephemeral_app: String,
    /// Timings shared by the launcher (which passes them on) and the ephemeral role.
    pub timings: Timings,
    /// What only one of the two roles needs.
    pub role_config: RoleConfig,
}

/// How long a visitor's Machine lives, and its phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Hard limit on a Machine's life, from its start: the spend cap per visitor.
    pub ttl: Duration,
    /// A Machine nobody claims within this switches itself off.
    pub claim_window: Duration,
    /// How long the owner's page shows before the Machine switches itself off.
    pub show: Duration,
}

/// The settings of one role.
#[derive(Debug, Clone)]
pub enum RoleConfig {
    Launcher(LauncherConfig),
    Ephemeral(EphemeralConfig),
    Concierge {
        /// The launcher's origin, for the "gone" page.
        launcher_url: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct LauncherConfig {
    /// Authenticates the Machines API calls; never logged.
    pub api_token: ApiToken,
    /// `http://_api.internal:4280` on Fly, flyby-local's API address locally.
    pub machines_api: String,
    /// Overrides the ephemeral app's public origin, derived from the request's Host otherwise.
    pub ephemeral_origin: Option<String>,
    /// Its own public origin: the warm pool's Machines, made before any visitor, need it.
    pub launcher_url: Option<String>,
    /// The global cap on visitor Machines alive.
    pub max_machines: u32,
    /// Per-visitor launch budget.
    pub launches_per_minute: u32,
    /// How long a launch may take, from the click to serving: every wait of a launch is
    /// bounded by what is left of it.
    pub launch_deadline: Duration,
    /// Port of the Prometheus endpoint (0 picks a free one, as tests do).
    pub metrics_port: u16,
    /// How many stopped Machines each region keeps ready (`launcher::pool`).
    pub warm_pool: WarmPool,
    /// A pooled Machine older than this is replaced (its image may be behind).
    pub pool_max_age: Duration,
}

#[derive(Debug, Clone)]
pub struct EphemeralConfig {
    /// Proves the owner: the Machine knows only this hash of their secret. `None` on a Machine
    /// of the warm pool, which its launcher arms with it later (`server::arming`).
    pub owner_hash: Option<OwnerHash>,
    /// The launcher's origin, for "back to the launcher" and the "gone" page.
    pub launcher_url: Option<String>,
    /// What the Machine proves its identity to the launcher's readiness probe with; without
    /// it, no launcher hands a visitor over to this Machine.
    pub readiness_key: Option<ReadinessKey>,
}

/// The `FLY_*` variables a Fly Machine is started with. Optional outside Fly.
#[derive(Debug, Clone, Default)]
pub struct FlyEnvironment {
    pub app_name: String,
    pub machine_id: Option<MachineId>,
    pub region: Option<RegionCode>,
    pub image_ref: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

impl FromStr for LogFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            _ => Err(()),
        }
    }
}

/// Reads variables by name through `lookup`, applying defaults and reporting errors by name.
struct Reader<F> {
    lookup: F,
}

fn missing(name: &str) -> ConfigError {
    let spec = spec(name);
    ConfigError::Missing {
        name: spec.name,
        expected: spec.expected,
    }
}

/// The declaration of a variable the code reads; reading an undeclared one is a bug.
fn spec(name: &str) -> &'static Variable {
    VARIABLES
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("{name} is read but not declared in VARIABLES"))
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    /// The raw value, or the default; `Missing` when neither exists. An empty value counts as
    /// unset, as it does for most shells' `${VAR:-default}`.
    fn raw(&self, name: &str) -> Result<String, ConfigError> {
        let spec = spec(name);
        match (self.lookup)(name).filter(|v| !v.is_empty()) {
            Some(value) => Ok(value),
            None => spec.default.map(str::to_owned).ok_or(ConfigError::Missing {
                name: spec.name,
                expected: spec.expected,
            }),
        }
    }

    /// The value of a variable whose default is empty but which this role needs.
    fn required(&self, name: &str) -> Result<String, ConfigError> {
        self.optional(name)?.ok_or_else(|| missing(name))
    }

    /// The value, or `None` when it is unset and its default is empty.
    fn optional(&self, name: &str) -> Result<Option<String>, ConfigError> {
        Ok(Some(self.raw(name)?).filter(|v| !v.is_empty()))
    }

    fn invalid(name: &str, value: &str) -> ConfigError {
        let spec = spec(name);
        let shown = if spec.secret {
            "<hidden>".to_owned()
        } else {
            format!("{value:?}")
        };
        ConfigError::Invalid {
            name: spec.name,
            shown,
            expected: spec.expected,
        }
    }

    fn parse<T>(&self, name: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T, ConfigError> {
        let value = self.raw(name)?;
        parse(&value).ok_or_else(|| Self::invalid(name, &value))
    }

    fn parse_optional<T>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.optional(name)? {
            None => Ok(None),
            Some(value) => parse(&value)
                .map(Some)
                .ok_or_else(|| Self::invalid(name, &value)),
        }
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup<F: Fn(&str) -> Option<String>>(lookup: F) -> Result<Self, ConfigError> {
        let r = Reader { lookup };
        let role = r.parse("FLYBY_ROLE", |s| Role::parse(s).ok())?;
        let log_format = r.parse("FLYBY_LOG_FORMAT", |s| s.parse().ok())?;
        let site_addr: SocketAddr = r.parse("LEPTOS_SITE_ADDR", |s| s.parse().ok())?;
        let site_root = r.raw("LEPTOS_SITE_ROOT")?;
        let site_pkg_dir = r.parse("LEPTOS_SITE_PKG_DIR", |s| {
            (!s.contains(['/', '\\']) && s != "..").then(|| s.to_owned())
        })?;
        let output_name = r.parse("LEPTOS_OUTPUT_NAME", |s| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                .then(|| s.to_owned())
        })?;
        let fly = FlyEnvironment {
            app_name: r.parse("FLY_APP_NAME", app_name)?,
            machine_id: r.parse_optional("FLY_MACHINE_ID", |s| MachineId::parse(s).ok())?,
            region: r.parse_optional("FLY_REGION", |s| RegionCode::parse(s).ok())?,
            image_ref: r.optional("FLY_IMAGE_REF")?,
        };
        let ephemeral_app = r.parse("FLYBY_EPHEMERAL_APP", app_name)?;
        let timings = Timings {
            ttl: r.parse("FLYBY_TTL_SECS", |s| seconds(s, 10..=3600))?,
            claim_window: r.parse("FLYBY_CLAIM_SECS", |s| seconds(s, 5..=600))?,
            show: r.parse("FLYBY_SHOW_SECS", |s| seconds(s, 3..=600))?,
        };
        let role_config = match role {
            Role::Launcher => RoleConfig::Launcher(LauncherConfig {
                api_token: {
                    let token = r.required("FLY_API_TOKEN")?;
                    ApiToken::new(&token)
                        .map_err(|_| Reader::<F>::invalid("FLY_API_TOKEN", &token))?
                },
                machines_api: r.parse("FLYBY_MACHINES_API", http_url)?,
                ephemeral_origin: r.parse_optional("FLYBY_EPHEMERAL_ORIGIN", http_url)?,
                launcher_url: r.parse_optional("FLYBY_LAUNCHER_URL", http_url)?,
                max_machines: r.parse("FLYBY_MAX_MACHINES", |s| number(s, 1..=100))?,
                launches_per_minute: r
                    .parse("FLYBY_LAUNCHES_PER_MINUTE", |s| number(s, 1..=600))?,
                launch_deadline: r.parse("FLYBY_LAUNCH_SECS", |s| seconds(s, 5..=300))?,
                metrics_port: r.parse("FLYBY_METRICS_PORT", |s| s.parse().ok())?,
                warm_pool: {
                    let cap = r.parse("FLYBY_MAX_MACHINES", |s| number(s, 1..=100))?;
                    r.parse("FLYBY_WARM_POOL", |s| {
                        WarmPool::parse(s).filter(|p| p.total() <= cap)
                    })?
                },
                pool_max_age: r.parse("FLYBY_POOL_MAX_AGE_SECS", |s| seconds(s, 60..=604_800))?,
            }),
            Role::Concierge => {
                if fly.machine_id.is_none() {
                    return Err(missing("FLY_MACHINE_ID"));
                }
                RoleConfig::Concierge {
                    launcher_url: r.parse_optional("FLYBY_LAUNCHER_URL", http_url)?,
                }
            }
            Role::Ephemeral => {
                if fly.machine_id.is_none() {
                    return Err(missing("FLY_MACHINE_ID"));
                }
                let owner_hash =
                    r.parse_optional("FLYBY_OWNER_HASH", |s| OwnerHash::parse(s).ok())?;
                let readiness_key =
                    r.parse_optional("FLYBY_READINESS_KEY", |s| ReadinessKey::parse(s).ok())?;
                // Without an owner, the Machine is one of the warm pool: only its key can arm it.
                if owner_hash.is_none() && readiness_key.is_none() {
                    return Err(missing("FLYBY_OWNER_HASH"));
                }
                RoleConfig::Ephemeral(EphemeralConfig {
                    owner_hash,
                    launcher_url: r.parse_optional("FLYBY_LAUNCHER_URL", http_url)?,
                    readiness_key,
                })
            }
        };
        let leptos = LeptosOptions::builder()
            .output_name(output_name)
            .site_root(site_root)
            .site_pkg_dir(site_pkg_dir)
            .site_addr(site_addr)
            .env(leptos::config::Env::PROD)
            .build();
        Ok(Config {
            role,
            log_format,
            site_addr,
            leptos,
            fly,
            ephemeral_app,
            timings,
            role_config,
        })
    }

    /// How long in-flight requests may take to finish once the server is asked to stop. Fly
    /// kills a Machine 5 s after the stop signal by default, so finish well before.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(4)
    }
}

fn number(s: &str, range: std::ops::RangeInclusive<u32>) -> Option<u32> {
    s.parse().ok().filter(|n| range.contains(n))
}

fn seconds(s: &str, range: std::ops::RangeInclusive<u32>) -> Option<Duration> {
    number(s, range).map(|n| Duration::from_secs(n.into()))
}

/// An http(s) URL without a trailing slash, so paths can be appended.
fn http_url(s: &str) -> Option<String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))?;
    let ok = !rest.is_empty()
        && !rest.starts_with('/')
        && s.bytes().all(|b| b.is_ascii_graphic())
        && !s.contains(['"', '<', '>', '\\', '`']);
    ok.then(|| s.trim_end_matches('/').to_owned())
}

fn app_name(s: &str) -> Option<String> {
    let ok = (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-');
    ok.then(|| s.to_owned())
}

/// The text of `flyby --help`.
pub struct Help;

impl fmt::Display for Help {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "flyby: the launcher and the per-visitor Machine of flyby, chosen by FLYBY_ROLE."
        )?;
        writeln!(f)?;
        writeln!(f, "Usage: flyby [--help]")?;
        writeln!(f)?;
        writeln!(f, "Configuration comes from the environment only:")?;
        for v in VARIABLES {
            let default = match v.default {
                None => "required".to_owned(),
                Some("") => "unset".to_owned(),
                Some(d) => format!("default {d}"),
            };
            writeln!(f, "  {:<26} {} ({default}; {})", v.name, v.help, v.expected)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
