//! What flyby sends: exact, every field one Fly documents, `None`s and empty collections left
//! out.

use super::*;

/// The body of `POST /v1/apps/{app}/machines`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CreateMachineRequest {
    /// Unique within the app. Besides naming the Machine, it is what makes a create safe to
    /// retry: Fly refuses a second Machine with the same name, and the client looks a Machine
    /// up by name to learn whether a failed-looking create really happened. Without a name, a
    /// create is retried only when Fly said it did not perform it (429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where the Machine runs; `None` lets Fly choose (near the API's caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<RegionCode>,
    pub config: MachineConfig,
    /// Create without booting (the Machine stays `created`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_launch: bool,
    /// Keep fly-proxy from routing to the Machine until it is uncordoned.
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_service_registration: bool,
    /// Seconds of a lease taken at creation, so no other process updates the Machine while it
    /// comes up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<u32>,
}

/// A Machine's whole configuration: what to run, how big, how it is reached and checked.
///
/// Deserializes leniently (see [`Machine::typed_config`]): `null` collections read as empty.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MachineConfig {
    /// The image reference, e.g. the launcher's own `FLY_IMAGE_REF`.
    #[serde(default, deserialize_with = "null_default")]
    pub image: String,
    /// Environment variables of the Machine's process.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub env: BTreeMap<String, String>,
    /// CPU and memory; `None` takes Fly's default size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Guest>,
    /// Destroy the Machine when its process exits, so a visitor's Machine needs no cleanup
    /// once it has shut itself down.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "null_default"
    )]
    pub auto_destroy: bool,
    /// What flyd does when the process exits; flyby's Machines use `no` so an exit is final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Restart>,
    /// How fly-proxy reaches the Machine from the internet.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub services: Vec<Service>,
    /// Named top-level health checks.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub checks: BTreeMap<String, Check>,
    /// Free-form labels; the list endpoint filters on them (`metadata.<key>=<value>`), which is
    /// how flyby finds its own Machines and proves a Machine found by name is the one it created.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub metadata: BTreeMap<String, String>,
    /// The signal and grace time flyd uses to stop the Machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_config: Option<StopConfig>,
}

/// The Machine's size.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Guest {
    /// `shared` or `performance`.
    #[serde(default, deserialize_with = "null_default")]
    pub cpu_kind: String,
    #[serde(default, deserialize_with = "null_default")]
    pub cpus: u32,
    /// A multiple of 256 for shared CPUs.
    #[serde(default, deserialize_with = "null_default")]
    pub memory_mb: u32,
}

/// The restart policy and its bound.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Restart {
    pub policy: RestartPolicy,
    /// Only meaningful with `on-failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// Fly's restart policies. Fly answers `""` for a Machine created without one, hence
/// [`RestartPolicy::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Never restart: the Machine stops (or, with `auto_destroy`, is destroyed) when its process exits.
    #[default]
    No,
    OnFailure,
    Always,
    /// A policy this code does not know, kept as Fly spelled it.
    Other(String),
}

impl RestartPolicy {
    pub fn as_str(&self) -> &str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
            RestartPolicy::Other(s) => s,
        }
    }

    fn from_wire(s: &str) -> Self {
        match s {
            "no" => RestartPolicy::No,
            "on-failure" => RestartPolicy::OnFailure,
            "always" => RestartPolicy::Always,
            other => RestartPolicy::Other(other.to_owned()),
        }
    }
}

impl Serialize for RestartPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RestartPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        Ok(RestartPolicy::from_wire(s.as_deref().unwrap_or("")))
    }
}

/// One service: a process port exposed through fly-proxy on public ports.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Service {
    /// `tcp` or `udp`.
    #[serde(default, deserialize_with = "null_default")]
    pub protocol: String,
    /// Where the Machine's process listens.
    #[serde(default, deserialize_with = "null_default")]
    pub internal_port: u16,
    /// Whether fly-proxy starts a stopped Machine for a request; off for visitors' Machines,
    /// which must stay gone once they exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
    /// Whether fly-proxy stops an idle Machine; off, since the Machine ends its own life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostop: Option<Autostop>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_machines_running: Option<u32>,
}

/// What fly-proxy does with an idle Machine. Fly accepts `"off"`/`"stop"`/`"suspend"` or the
/// older booleans, and answers with booleans for off and stop; flyby sends booleans too, the
/// form every version of the API (and its OpenAPI schema) accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autostop {
    Off,
    Stop,
    Suspend,
}

impl Serialize for Autostop {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Autostop::Off => s.serialize_bool(false),
            Autostop::Stop => s.serialize_bool(true),
            Autostop::Suspend => s.serialize_str("suspend"),
        }
    }
}

impl<'de> Deserialize<'de> for Autostop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(false) => Ok(Autostop::Off),
            Value::Bool(true) => Ok(Autostop::Stop),
            Value::String(s) => match s.as_str() {
                "off" => Ok(Autostop::Off),
                "stop" => Ok(Autostop::Stop),
                "suspend" => Ok(Autostop::Suspend),
                other => Err(de::Error::unknown_variant(
                    other,
                    &["off", "stop", "suspend"],
                )),
            },
            other => Err(de::Error::custom(format!(
                "autostop is a boolean or a string, not {other}"
            ))),
        }
    }
}

/// A public port of a service and how fly-proxy handles it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// e.g. `["http"]` on 80, `["tls", "http"]` on 443. `fly-replay` needs the `http` handler.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub handlers: Vec<String>,
    /// Redirect plain http to https.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "null_default"
    )]
    pub force_https: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_options: Option<HttpOptions>,
}

/// fly-proxy's HTTP options for a port.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HttpOptions {
    /// Session-based replay cache: lets fly-proxy remember a `fly-replay` per cookie or header
    /// value, saving the wrong-Machine hop on later requests (a hint, never a guarantee).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub replay_cache: Vec<ReplayCacheRule>,
}

/// One session-based replay cache rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayCacheRule {
    /// The requests the rule covers, e.g. `/`.
    pub path_prefix: String,
    /// How long a cached replay holds.
    pub ttl_seconds: u32,
    /// What the cache is keyed on.
    #[serde(rename = "type")]
    pub kind: ReplayCacheKind,
    /// The cookie or header name.
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayCacheKind {
    Cookie,
    Header,
}

/// fly-proxy's load-balancing limits for a service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Concurrency {
    /// `connections` or `requests`.
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_limit: Option<u32>,
}

/// A top-level health check.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Check {
    /// `http` or `tcp`.
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<FlyDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<FlyDuration>,
    /// Time after start before failures count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<FlyDuration>,
    /// For `http` checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// For `http` checks; a 2xx without redirects passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// How flyd stops the Machine.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StopConfig {
    /// e.g. `SIGINT` (Fly's default) or `SIGTERM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Grace time before SIGKILL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<FlyDuration>,
}

/// The body of `POST .../{id}/stop`: both optional, Fly's defaults otherwise.
pub type StopRequest = StopConfig;

/// A duration as Fly's Go API writes it: a string such as `"10s"` or `"500ms"`.
/// Reads the same strings (and, leniently, a bare number of nanoseconds, Go's own encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlyDuration(pub Duration);

impl From<Duration> for FlyDuration {
    fn from(d: Duration) -> Self {
        FlyDuration(d)
    }
}

impl fmt::Display for FlyDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Go's time.ParseDuration reads all three forms.
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl Serialize for FlyDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FlyDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => humantime::parse_duration(&s)
                .map(FlyDuration)
                .map_err(|e| de::Error::custom(format!("duration {s:?}: {e}"))),
            Value::Number(n) => n
                .as_u64()
                .map(|ns| FlyDuration(Duration::from_nanos(ns)))
                .ok_or_else(|| {
                    de::Error::custom("a duration in nanoseconds is a positive integer")
                }),
            other => Err(de::Error::custom(format!(
                "a duration is a string like \"10s\", not {other}"
            ))),
        }
    }
}
