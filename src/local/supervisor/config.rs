//! The Machine config (`api.MachineConfig`) as the platform acts on it: the fields it reads,
//! typed, and Fly's spellings of their values (Go durations, signal names, restart policies).
//! Parsing it is also how the Machines API validates a create: a config that does not parse is
//! a bad request.

use super::*;

/// The subset of a Machine config (`api.MachineConfig`) the platform acts on. Parsing it is
/// also how the API validates types: a config that does not parse is a bad request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MachineConfig {
    pub image: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub guest: Option<GuestConfig>,
    pub auto_destroy: Option<bool>,
    pub restart: Option<RestartConfig>,
    pub services: Option<Vec<ServiceConfig>>,
    pub stop_config: Option<StopConfig>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub init: Option<InitConfig>,
}

/// `config.init`. Locally an image is one executable, its entrypoint: `cmd` becomes its
/// arguments, as Docker's CMD does for an image with an ENTRYPOINT. `entrypoint` and `exec`
/// would replace the executable itself and are not supported (ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InitConfig {
    pub cmd: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct GuestConfig {
    pub cpu_kind: Option<String>,
    pub cpus: Option<u32>,
    pub memory_mb: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RestartConfig {
    pub policy: Option<String>,
    pub max_retries: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceConfig {
    pub internal_port: Option<i64>,
    pub ports: Option<Vec<PortConfig>>,
}

/// One public port of a service: what the proxy takes traffic for, and its HTTP options.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PortConfig {
    pub port: Option<i64>,
    pub http_options: Option<HttpOptionsConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct HttpOptionsConfig {
    /// The session-based replay cache rules, read by the proxy's cache (`proxy::cache`).
    pub replay_cache: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StopConfig {
    pub signal: Option<SignalSpec>,
    pub timeout: Option<DurationSpec>,
}

/// A signal as Fly's API takes it: a name (`SIGTERM`, `TERM`) or a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SignalSpec {
    Number(i32),
    Name(String),
}

impl SignalSpec {
    pub fn resolve(&self) -> Option<i32> {
        match self {
            SignalSpec::Number(n) => (1..=64).contains(n).then_some(*n),
            SignalSpec::Name(name) => signal_by_name(name),
        }
    }
}

/// A duration as Fly's API takes it: a Go-style string (`"5s"`, `"1m30s"`, `"500ms"`), or a
/// number of seconds (undocumented by Fly; Fly's own clients send strings).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationSpec {
    Seconds(f64),
    Text(String),
}

impl DurationSpec {
    pub fn resolve(&self) -> Option<Duration> {
        match self {
            DurationSpec::Seconds(s) => Duration::try_from_secs_f64(*s).ok(),
            DurationSpec::Text(t) => parse_go_duration(t),
        }
    }
}

/// Parses Go's `time.Duration` text (`"5s"`, `"1m30s"`, `"1.5s"`, `"300ms"`); a bare number is
/// seconds.
fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let seconds_per_unit = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total +=
            Duration::try_from_secs_f64(number.parse::<f64>().ok()? * seconds_per_unit).ok()?;
        rest = after;
    }
    (!text.is_empty()).then_some(total)
}

fn signal_by_name(name: &str) -> Option<i32> {
    let name = name.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "ABRT" => libc::SIGABRT,
        "ALRM" => libc::SIGALRM,
        "FPE" => libc::SIGFPE,
        "HUP" => libc::SIGHUP,
        "ILL" => libc::SIGILL,
        "INT" => libc::SIGINT,
        "KILL" => libc::SIGKILL,
        "PIPE" => libc::SIGPIPE,
        "QUIT" => libc::SIGQUIT,
        "SEGV" => libc::SIGSEGV,
        "TERM" => libc::SIGTERM,
        "TRAP" => libc::SIGTRAP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        _ => return None,
    })
}

/// What to do when a Machine's process exits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    No,
    /// Restart after a non-zero exit (or death by signal), at most this many times in a row.
    OnFailure(u32),
    Always,
}

impl RestartPolicy {
    /// Fly's policy for a config; `None` when the policy name is not one Fly knows. With no
    /// policy at all, Fly defaults to `on-failure`.
    pub fn from_config(restart: Option<&RestartConfig>) -> Option<RestartPolicy> {
        let max = restart
            .and_then(|r| r.max_retries)
            .unwrap_or(DEFAULT_MAX_RETRIES);
        Some(match restart.and_then(|r| r.policy.as_deref()) {
            None | Some("") | Some("on-failure") | Some("on-fail") => RestartPolicy::OnFailure(max),
            Some("no") => RestartPolicy::No,
            Some("always") => RestartPolicy::Always,
            Some(_) => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn go_durations_parse_like_go() {
        assert_eq!(parse_go_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("7"), Some(Duration::from_secs(7)));
        for bad in ["", "s", "5x", "-1s", "5 s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn signals_by_name_or_number() {
        let sig = |v: Value| serde_json::from_value::<SignalSpec>(v).unwrap().resolve();
        assert_eq!(sig(json!("SIGTERM")), Some(libc::SIGTERM));
        assert_eq!(sig(json!("int")), Some(libc::SIGINT));
        assert_eq!(sig(json!(9)), Some(libc::SIGKILL));
        assert_eq!(sig(json!("SIGNOPE")), None);
        assert_eq!(sig(json!(0)), None);
    }

    #[test]
    fn restart_policy_defaults_to_on_failure() {
        assert_eq!(
            RestartPolicy::from_config(None),
            Some(RestartPolicy::OnFailure(DEFAULT_MAX_RETRIES))
        );
        let cfg = |p: &str| RestartConfig {
            policy: Some(p.into()),
            max_retries: Some(2),
        };
        assert_eq!(
            RestartPolicy::from_config(Some(&cfg("on-failure"))),
            Some(RestartPolicy::OnFailure(2))
        );
        assert_eq!(
            RestartPolicy::from_config(Some(&cfg("no"))),
            Some(RestartPolicy::No)
        );
        assert_eq!(RestartPolicy::from_config(Some(&cfg("sometimes"))), None);
    }
}
