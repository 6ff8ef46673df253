//! The Machine resource's other endpoints: list (with Fly's filters), get, `wait` for a state,
//! start, stop, destroy (the last three refused while someone else holds the Machine's lease).

use super::*;
use json::machine_json;

pub(super) type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

pub(super) fn query_pairs(query: QueryPairs) -> Result<Vec<(String, String)>, ApiError> {
    query
        .map(|Query(pairs)| pairs)
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))
}

/// A boolean query parameter, read as Go's `strconv.ParseBool` reads it.
pub(super) fn parse_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ApiError::BadRequest(format!(
            "invalid {name} {value:?}: expected true or false"
        ))),
    }
}

pub(super) async fn list(
    State(platform): State<Arc<Platform>>,
    Path(app): Path<String>,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    if !platform.registry.app_exists(&app) {
        return Err(ApiError::AppNotFound);
    }
    let mut include_deleted = false;
    let mut region = None;
    let mut metadata = Vec::new();
    for (key, value) in query_pairs(query)? {
        match key.as_str() {
            "include_deleted" => include_deleted = parse_bool(&key, &value)?,
            "region" => region = Some(value),
            _ => {
                if let Some(meta_key) = key.strip_prefix("metadata.") {
                    metadata.push((meta_key.to_owned(), value));
                }
            }
        }
    }
    let mut machines = platform.registry.list(&app);
    machines.retain(|m| {
        (include_deleted || m.state != MachineState::Destroyed)
            && region.as_ref().is_none_or(|r| m.region.as_str() == r)
            && metadata
                .iter()
                .all(|(k, v)| m.metadata(k) == Some(v.as_str()))
    });
    machines.sort_by_key(|m| (m.created_at, m.id));
    Ok(Json(Value::Array(
        machines.iter().map(machine_json).collect(),
    )))
}

/// The Machine named by the path, destroyed ones included (Fly still shows them).
pub(super) fn find(platform: &Platform, app: &str, id: &str) -> Result<MachineRecord, ApiError> {
    if !platform.registry.app_exists(app) {
        return Err(ApiError::AppNotFound);
    }
    let id = MachineId::parse(id).map_err(|_| ApiError::MachineNotFound)?;
    platform
        .registry
        .get(app, id)
        .ok_or(ApiError::MachineNotFound)
}

pub(super) async fn show(
    State(platform): State<Arc<Platform>>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(machine_json(&find(&platform, &app, &id)?)))
}

/// `GET .../wait?state=<s>&timeout=<seconds>`: 200 once the Machine is in one of the states
/// (`state` may repeat, as fly-go sends it), 408 when the timeout ends first. Awaits registry
/// changes; nothing polls.
pub(super) async fn wait(
    State(platform): State<Arc<Platform>>,
    Path((app, id)): Path<(String, String)>,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let machine = find(&platform, &app, &id)?;
    let mut states = Vec::new();
    let mut timeout = MAX_WAIT_SECONDS;
    for (key, value) in query_pairs(query)? {
        match key.as_str() {
            "state" => states.push(wait_state(&value)?),
            "timeout" => {
                timeout = value
                    .parse::<u64>()
                    .ok()
                    .filter(|t| (1..=MAX_WAIT_SECONDS).contains(t))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "invalid timeout {value:?}: expected seconds, from 1 to {MAX_WAIT_SECONDS}"
                        ))
                    })?;
            }
            // Fly documents `instance_id` as required for `stopped`; it is accepted and not
            // enforced locally, like fly-go's `version` and `from_event_id`.
            _ => {}
        }
    }
    if states.is_empty() {
        states.push(Some(MachineState::Started));
    }
    let mut changes = platform.registry.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    loop {
        let state = platform
            .registry
            .get(&app, machine.id)
            .map_or(MachineState::Destroyed, |m| m.state);
        if states.contains(&Some(state)) {
            return Ok(Json(json!({"ok": true})));
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => {
                let wanted: Vec<&str> = states
                    .iter()
                    .map(|s| s.map_or("suspended", MachineState::as_str))
                    .collect();
                return Err(ApiError::WaitTimeout(wanted.join(" or ")));
            }
        }
    }
}

/// The states `wait` accepts: Fly's documented ones. `suspended` is `None`: local Machines
/// never suspend, so such a wait times out, as it would on Fly for a Machine that does not.
pub(super) fn wait_state(value: &str) -> Result<Option<MachineState>, ApiError> {
    match value {
        "started" => Ok(Some(MachineState::Started)),
        "stopped" => Ok(Some(MachineState::Stopped)),
        "destroyed" => Ok(Some(MachineState::Destroyed)),
        "suspended" => Ok(None),
        _ => Err(ApiError::BadRequest(format!(
            "invalid state {value:?}: expected started, stopped, suspended or destroyed"
        ))),
    }
}

pub(super) async fn start(
    State(platform): State<Arc<Platform>>,
    Path((app, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let machine = find(&platform, &app, &id)?;
    leases::permits(&platform, machine.id, &headers)?;
    let previous = platform.supervisor.start(machine.id).await?;
    Ok(Json(json!({
        "previous_state": previous.as_str(),
        "migrated": false,
        "new_host": "",
    })))
}

/// The optional stop body (`StopRequest`).
#[derive(Debug, Default, Deserialize)]
pub(super) struct StopRequest {
    signal: Option<SignalSpec>,
    timeout: Option<DurationSpec>,
}

pub(super) async fn stop(
    State(platform): State<Arc<Platform>>,
    Path((app, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let machine = find(&platform, &app, &id)?;
    leases::permits(&platform, machine.id, &headers)?;
    let request: StopRequest = if body.iter().all(u8::is_ascii_whitespace) {
        StopRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?
    };
    let signal = match &request.signal {
        Some(signal) => Some(
            signal
                .resolve()
                .ok_or_else(|| ApiError::BadRequest("invalid signal".to_owned()))?,
        ),
        None => None,
    };
    let timeout = match &request.timeout {
        Some(timeout) => Some(
            timeout
                .resolve()
                .ok_or_else(|| ApiError::BadRequest("invalid timeout".to_owned()))?,
        ),
        None => None,
    };
    platform
        .supervisor
        .stop(machine.id, signal, timeout)
        .await?;
    Ok(Json(json!({"ok": true})))
}

/// `DELETE .../{id}`: refused for a running Machine unless `force=true` (fly-go sends it as
/// `kill=true`, accepted too).
pub(super) async fn destroy(
    State(platform): State<Arc<Platform>>,
    Path((app, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let machine = find(&platform, &app, &id)?;
    leases::permits(&platform, machine.id, &headers)?;
    let mut force = false;
    for (key, value) in query_pairs(query)? {
        if key == "force" || key == "kill" {
            force |= parse_bool(&key, &value)?;
        }
    }
    platform.supervisor.destroy(machine.id, force).await?;
    Ok(Json(json!({"ok": true})))
}
