//! The Machines API's JSON, as Rust types.
//!
//! Two directions, two attitudes. What flyby *sends* (a [`CreateMachineRequest`]) is exact: every
//! field is one Fly documents, `None`s and empty collections are left out so the body says only
//! what the launcher chose, and a unit test checks the body against Fly's OpenAPI schema. What
//! flyby *receives* (a [`Machine`]) is tolerant: unknown fields are ignored, `null` where a
//! collection is expected reads as empty (Fly sends `"env": null`), an unknown state is kept as
//! [`MachineState::Other`], and the Machine's `config` is kept as raw JSON so that a config shape
//! Fly adds tomorrow can never make a `get` or a `list` fail.

use crate::fly::{MachineId, RegionCode};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::{collections::BTreeMap, fmt, time::Duration, time::SystemTime};

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

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

/// The filters of `GET /v1/apps/{app}/machines`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Every pair must match (`metadata.<key>=<value>`).
    pub metadata: Vec<(String, String)>,
    pub region: Option<RegionCode>,
    /// Also list destroyed Machines.
    pub include_deleted: bool,
}

impl ListFilter {
    /// Whether `machine` passes this filter. The client applies it again to what the server
    /// returns: a server that ignored a filter (an older API, a bug) must not make the reaper
    /// destroy a Machine that is not flyby's.
    pub fn matches(&self, machine: &Machine) -> bool {
        let metadata = machine.metadata();
        self.metadata
            .iter()
            .all(|(k, v)| metadata.get(k) == Some(v))
            && self.region.is_none_or(|r| machine.region == r)
            && (self.include_deleted || machine.state != MachineState::Destroyed)
    }
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// A Machine as Fly reports it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Machine {
    pub id: MachineId,
    /// Unique within the app.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    pub state: MachineState,
    pub region: RegionCode,
    /// Changes with each update of the Machine; `wait` for `stopped` needs it.
    #[serde(default, deserialize_with = "null_default")]
    pub instance_id: String,
    /// The 6PN (IPv6) address, or 127.0.0.N on flyby-local: kept as Fly's string.
    #[serde(default, deserialize_with = "null_default")]
    pub private_ip: String,
    /// The config as Fly echoes it, untyped on purpose: a field Fly adds or reshapes must not
    /// break reading Machines. See [`Machine::metadata`] and [`Machine::typed_config`].
    #[serde(default)]
    pub config: Value,
    /// `None` when absent or not RFC 3339.
    #[serde(default, deserialize_with = "lenient_time")]
    pub created_at: Option<SystemTime>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub updated_at: Option<SystemTime>,
    /// Newest first, as Fly returns them.
    #[serde(default, deserialize_with = "null_default")]
    pub events: Vec<MachineEvent>,
}

impl Machine {
    /// The config's metadata; values that are not strings are skipped.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.config
            .get("metadata")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The config as typed fields, for callers that need more than the metadata. Fails only on
    /// a field of a known name in an unexpected shape.
    pub fn typed_config(&self) -> Result<MachineConfig, serde_json::Error> {
        MachineConfig::deserialize(&self.config)
    }
}

/// One entry of a Machine's event log.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct MachineEvent {
    /// `launch`, `start`, `exit`, `stop`, `destroy`, ...
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_default")]
    pub status: String,
    #[serde(default, deserialize_with = "null_default")]
    pub source: String,
    /// Milliseconds since the epoch.
    #[serde(default, deserialize_with = "null_default")]
    pub timestamp: u64,
}

/// Where a Machine is in its life. Fly adds states now and then; an unknown one is kept in
/// [`MachineState::Other`] rather than failing the whole response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MachineState {
    Created,
    Starting,
    Started,
    Stopping,
    Stopped,
    Suspending,
    Suspended,
    Replacing,
    Destroying,
    Destroyed,
    Failed,
    Other(String),
}

impl MachineState {
    pub fn as_str(&self) -> &str {
        match self {
            MachineState::Created => "created",
            MachineState::Starting => "starting",
            MachineState::Started => "started",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::Suspending => "suspending",
            MachineState::Suspended => "suspended",
            MachineState::Replacing => "replacing",
            MachineState::Destroying => "destroying",
            MachineState::Destroyed => "destroyed",
            MachineState::Failed => "failed",
            MachineState::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "created" => MachineState::Created,
            "starting" => MachineState::Starting,
            "started" => MachineState::Started,
            "stopping" => MachineState::Stopping,
            "stopped" => MachineState::Stopped,
            "suspending" => MachineState::Suspending,
            "suspended" => MachineState::Suspended,
            "replacing" => MachineState::Replacing,
            "destroying" => MachineState::Destroying,
            "destroyed" => MachineState::Destroyed,
            "failed" => MachineState::Failed,
            other => MachineState::Other(other.to_owned()),
        }
    }

    /// Not destroyed nor on its way there: still counts against flyby's cap.
    pub fn is_alive(&self) -> bool {
        !matches!(self, MachineState::Destroying | MachineState::Destroyed)
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for MachineState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MachineState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        Ok(MachineState::parse(s.as_deref().unwrap_or("")))
    }
}

/// The states `GET .../{id}/wait` can wait for (Fly accepts no others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitState {
    Started,
    Stopped,
    Suspended,
    Destroyed,
}

impl WaitState {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitState::Started => "started",
            WaitState::Stopped => "stopped",
            WaitState::Suspended => "suspended",
            WaitState::Destroyed => "destroyed",
        }
    }
}

impl From<WaitState> for MachineState {
    fn from(s: WaitState) -> Self {
        match s {
            WaitState::Started => MachineState::Started,
            WaitState::Stopped => MachineState::Stopped,
            WaitState::Suspended => MachineState::Suspended,
            WaitState::Destroyed => MachineState::Destroyed,
        }
    }
}

impl TryFrom<MachineState> for WaitState {
    type Error = MachineState;
    fn try_from(s: MachineState) -> Result<Self, MachineState> {
        match s {
            MachineState::Started => Ok(WaitState::Started),
            MachineState::Stopped => Ok(WaitState::Stopped),
            MachineState::Suspended => Ok(WaitState::Suspended),
            MachineState::Destroyed => Ok(WaitState::Destroyed),
            other => Err(other),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// serde helpers
// ---------------------------------------------------------------------------------------------

fn is_false(b: &bool) -> bool {
    !*b
}

/// `null` reads as the default: Fly's Go encoder writes nil maps and slices as `null`.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An RFC 3339 time, or `None` for anything else: a timestamp is informative, never a reason to
/// reject a Machine.
fn lenient_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(v.as_str()
        .and_then(|s| humantime::parse_rfc3339_weak(s).ok()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::server::launcher::machine_spec::tests::create_request;
    use serde_json::json;

    /// The fields a visitor's Machine leaves unset, set on it, serialise as Fly spells them
    /// (what it sets is checked whole in `launcher::machine_spec`).
    #[test]
    fn the_fields_the_launcher_leaves_unset_serialise_as_fly_spells_them() {
        let mut request = create_request();
        request.config.services[0].concurrency = Some(Concurrency {
            kind: "requests".into(),
            soft_limit: Some(50),
            hard_limit: Some(100),
        });
        request.config.services[0].min_machines_running = Some(1);
        request.config.stop_config = Some(StopConfig {
            signal: Some("SIGTERM".into()),
            timeout: Some(Duration::from_secs(5).into()),
        });
        let body = serde_json::to_value(&request).unwrap();
        assert_eq!(
            body["config"]["services"][0]["concurrency"],
            json!({"type": "requests", "soft_limit": 50, "hard_limit": 100})
        );
        assert_eq!(body["config"]["services"][0]["min_machines_running"], 1);
        assert_eq!(
            body["config"]["stop_config"],
            json!({"signal": "SIGTERM", "timeout": "5s"})
        );
        assert_eq!(
            serde_json::from_value::<CreateMachineRequest>(body).unwrap(),
            request
        );
    }

    #[test]
    fn nones_and_empties_are_left_out() {
        let body = serde_json::to_value(CreateMachineRequest {
            config: MachineConfig {
                image: "nginx".into(),
                ..MachineConfig::default()
            },
            ..CreateMachineRequest::default()
        })
        .unwrap();
        assert_eq!(body, json!({"config": {"image": "nginx"}}));
    }

    #[test]
    fn the_create_body_round_trips() {
        let request = create_request();
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(
            serde_json::from_str::<CreateMachineRequest>(&json).unwrap(),
            request
        );
    }

    /// The create answer of Fly's docs (machines-resource, "Create a Machine").
    const DOCS_CREATE_RESPONSE: &str = r#"{
      "id": "1857156b526dd8",
      "name": "aged-thunder-7371",
      "state": "created",
      "region": "ord",
      "image_ref": {
        "registry": "registry-1.docker.io",
        "repository": "library/ubuntu",
        "tag": "latest",
        "digest": "sha256:c9cf959fd83770dfdefd8fb42cfef0761432af36a764c077aed54bbc5bb25368",
        "labels": {"org.opencontainers.image.ref.name": "ubuntu"}
      },
      "instance_id": "01HEPA330HZ37A78TK080NAK1M",
      "private_ip": "fdaa:ff:ff:a7b:195:e229:8038:2",
      "created_at": "2023-11-08T01:52:30Z",
      "updated_at": "2023-11-08T01:52:30Z",
      "config": {
        "init": {"exec": ["/bin/sleep", "inf"]},
        "image": "registry-1.docker.io/library/ubuntu:latest",
        "auto_destroy": true,
        "restart": {"policy": "always"},
        "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
        "dns": {}
      },
      "events": [
        {"type": "launch", "status": "created", "source": "user", "timestamp": 1699408350300}
      ]
    }"#;

    #[test]
    fn a_machine_from_the_fly_docs_deserializes() {
        let m: Machine = serde_json::from_str(DOCS_CREATE_RESPONSE).unwrap();
        assert_eq!(m.id.as_str(), "1857156b526dd8");
        assert_eq!(m.name, "aged-thunder-7371");
        assert_eq!(m.state, MachineState::Created);
        assert_eq!(m.region.as_str(), "ord");
        assert_eq!(m.instance_id, "01HEPA330HZ37A78TK080NAK1M");
        assert_eq!(m.private_ip, "fdaa:ff:ff:a7b:195:e229:8038:2");
        assert_eq!(
            m.created_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_699_408_350))
        );
        assert_eq!(m.events[0].kind, "launch");
        assert_eq!(m.events[0].timestamp, 1_699_408_350_300);
        let config = m.typed_config().unwrap();
        assert!(config.auto_destroy);
        assert_eq!(config.restart.unwrap().policy, RestartPolicy::Always);
        assert_eq!(config.guest.unwrap().memory_mb, 256);
        assert!(m.metadata().is_empty());
    }

    /// The update answer of Fly's docs: nulls, an empty policy, no `updated_at`.
    #[test]
    fn nulls_empty_strings_and_missing_fields_are_tolerated() {
        let m: Machine = serde_json::from_value(json!({
            "id": "73d8d46dbee589",
            "name": "lingering-moon-48",
            "state": "starting",
            "region": "cdg",
            "instance_id": "01G3SHPYE8XZ58GD4XRRF9CCKC",
            "private_ip": "fdaa:0:3ec2:a7b:5adc:6068:5b85:2",
            "config": {
                "env": null,
                "init": {"exec": null, "entrypoint": null, "cmd": null, "tty": false},
                "image": "flyio/fastify-functions",
                "metadata": null,
                "restart": {"policy": ""},
                "guest": {"cpu_kind": "", "cpus": 2, "memory_mb": 512}
            },
            "created_at": "2022-05-23T22:48:21Z",
            "events": null,
            "a_field_fly_adds_tomorrow": {"x": [1, 2]}
        }))
        .unwrap();
        assert_eq!(m.updated_at, None);
        assert!(m.events.is_empty());
        let config = m.typed_config().unwrap();
        assert!(config.env.is_empty());
        assert_eq!(
            config.restart.unwrap().policy,
            RestartPolicy::Other(String::new())
        );
    }

    #[test]
    fn an_unknown_state_is_kept_not_rejected() {
        let m: Machine = serde_json::from_value(json!({
            "id": "0123456789abcd", "state": "hibernating", "region": "ams"
        }))
        .unwrap();
        assert_eq!(m.state, MachineState::Other("hibernating".into()));
        assert_eq!(m.state.to_string(), "hibernating");
        assert!(m.state.is_alive());
        for s in [
            "created",
            "started",
            "stopped",
            "suspended",
            "destroyed",
            "failed",
        ] {
            assert_eq!(MachineState::parse(s).as_str(), s);
        }
    }

    #[test]
    fn metadata_reads_string_values_only() {
        let m: Machine = serde_json::from_value(json!({
            "id": "0123456789abcd", "state": "started", "region": "ams",
            "config": {"metadata": {"flyby": "ephemeral", "n": 3}}
        }))
        .unwrap();
        assert_eq!(
            m.metadata(),
            BTreeMap::from([("flyby".to_owned(), "ephemeral".to_owned())])
        );
    }

    #[test]
    fn autostop_reads_booleans_and_strings() {
        for (json, want) in [
            (json!(false), Autostop::Off),
            (json!(true), Autostop::Stop),
            (json!("off"), Autostop::Off),
            (json!("stop"), Autostop::Stop),
            (json!("suspend"), Autostop::Suspend),
        ] {
            assert_eq!(serde_json::from_value::<Autostop>(json).unwrap(), want);
        }
        assert!(serde_json::from_value::<Autostop>(json!("sometimes")).is_err());
        assert_eq!(
            serde_json::to_value(Autostop::Suspend).unwrap(),
            json!("suspend")
        );
    }

    #[test]
    fn durations_are_go_strings() {
        for (d, s) in [
            (Duration::from_secs(10), "10s"),
            (Duration::ZERO, "0s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_nanos(1_000_001), "1000001ns"),
        ] {
            assert_eq!(serde_json::to_value(FlyDuration(d)).unwrap(), json!(s));
            assert_eq!(
                serde_json::from_value::<FlyDuration>(json!(s)).unwrap(),
                FlyDuration(d)
            );
        }
        assert_eq!(
            serde_json::from_value::<FlyDuration>(json!("1m30s")).unwrap(),
            FlyDuration(Duration::from_secs(90))
        );
        assert_eq!(
            serde_json::from_value::<FlyDuration>(json!(2_000_000_000u64)).unwrap(),
            FlyDuration(Duration::from_secs(2))
        );
    }

    #[test]
    fn the_list_filter_is_applied_to_what_comes_back() {
        let machine = |state: &str, region: &str, flyby: &str| -> Machine {
            serde_json::from_value(json!({
                "id": "0123456789abcd", "state": state, "region": region,
                "config": {"metadata": {"flyby": flyby}}
            }))
            .unwrap()
        };
        let filter = ListFilter {
            metadata: vec![("flyby".into(), "ephemeral".into())],
            region: Some(RegionCode::parse("ams").unwrap()),
            include_deleted: false,
        };
        assert!(filter.matches(&machine("started", "ams", "ephemeral")));
        assert!(!filter.matches(&machine("started", "ams", "launcher")));
        assert!(!filter.matches(&machine("started", "lhr", "ephemeral")));
        assert!(!filter.matches(&machine("destroyed", "ams", "ephemeral")));
        let with_deleted = ListFilter {
            include_deleted: true,
            ..filter
        };
        assert!(with_deleted.matches(&machine("destroyed", "ams", "ephemeral")));
    }

    // --- The create body against Fly's OpenAPI description -----------------------------------

    const OPENAPI: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/fly-machines-openapi.yaml"
    );

    /// The `CreateMachineRequest` schema as a standalone JSON Schema: the OpenAPI components
    /// become `$defs` and their `$ref`s are rewritten to match. With `strict`, every object
    /// schema also refuses properties it does not declare, which catches a misspelt field (the
    /// plain schema allows anything extra).
    pub(crate) fn create_machine_schema(strict: bool) -> Value {
        let yaml = std::fs::read_to_string(OPENAPI).expect("tests/data/fly-machines-openapi.yaml");
        let openapi: Value = serde_yaml::from_str(&yaml).expect("valid YAML");
        let mut defs = openapi["components"]["schemas"].clone();
        assert!(defs.get("CreateMachineRequest").is_some());
        if strict {
            // Fields Fly documents elsewhere but this (older) OpenAPI file lacks.
            defs["api.HTTPOptions"]["properties"]["replay_cache"] = json!({
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["path_prefix", "ttl_seconds", "type", "name"],
                    "additionalProperties": false,
                    "properties": {
                        "path_prefix": {"type": "string"},
                        "ttl_seconds": {"type": "integer", "minimum": 10},
                        "type": {"enum": ["cookie", "header"]},
                        "name": {"type": "string"},
                        "allow_bypass": {"type": "boolean"}
                    }
                }
            });
            close_objects(&mut defs);
        }
        let mut schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": "#/$defs/CreateMachineRequest",
            "$defs": defs,
        });
        rewrite_refs(&mut schema);
        schema
    }

    fn rewrite_refs(v: &mut Value) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get_mut("$ref") {
                    if let Some(name) = r.strip_prefix("#/components/schemas/") {
                        *r = format!("#/$defs/{name}");
                    }
                }
                map.values_mut().for_each(rewrite_refs);
            }
            Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
            _ => {}
        }
    }

    fn close_objects(v: &mut Value) {
        match v {
            Value::Object(map) => {
                if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                    map.insert("additionalProperties".into(), Value::Bool(false));
                }
                map.values_mut().for_each(close_objects);
            }
            Value::Array(items) => items.iter_mut().for_each(close_objects),
            _ => {}
        }
    }

    pub(crate) fn schema_errors(schema: &Value, body: &Value) -> Vec<String> {
        let validator = jsonschema::validator_for(schema).expect("a valid JSON Schema");
        validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect()
    }

    #[test]
    fn the_schema_check_can_fail() {
        // Proof that the schema checks (`launcher::machine_spec`) are not vacuous: wrong types and
        // a misspelt field are caught.
        let mut body = serde_json::to_value(create_request()).unwrap();
        body["config"]["guest"]["memory_mb"] = json!("256");
        assert!(!schema_errors(&create_machine_schema(false), &body).is_empty());
        let mut body = serde_json::to_value(create_request()).unwrap();
        body["config"]["restart"]["policy"] = json!("never");
        assert!(!schema_errors(&create_machine_schema(false), &body).is_empty());
        let mut body = serde_json::to_value(create_request()).unwrap();
        body["config"]["auto_destory"] = json!(true);
        assert!(schema_errors(&create_machine_schema(false), &body).is_empty());
        assert!(!schema_errors(&create_machine_schema(true), &body).is_empty());
    }
}
