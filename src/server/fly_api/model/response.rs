//! What flyby receives: tolerant, so that a field Fly adds or reshapes tomorrow never makes a
//! `get` or a `list` fail.

use super::*;

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
