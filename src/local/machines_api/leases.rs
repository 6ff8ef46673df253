//! Machine leases, as Fly has them: an exclusive lock on changing one Machine for a while
//! (`POST /{id}/lease {description, ttl}`), so that two callers racing for the same Machine
//! cannot both act on it. While a lease is live, a start, stop or destroy of that Machine needs
//! the lease's nonce in `fly-machine-lease-nonce`; anyone else gets 409, as Fly answers a
//! conflict. A lease ends when its TTL runs out or its holder releases it.
//!
//! Fly's answer shape is fly-go's (`MachineLease`: `{"status": "success", "data": {nonce,
//! expires_at, owner, description, version}}`); Fly's older OpenAPI file shows the lease
//! alone, and flyby's client reads either.

use super::*;

/// The header that carries a lease's nonce.
pub const NONCE_HEADER: &str = "fly-machine-lease-nonce";
/// Fly's default when a lease request names no TTL, in seconds (fly-go's default).
const DEFAULT_TTL: u64 = 30;
/// The longest lease flyby-local grants, in seconds: a forgotten lease must not pin a Machine
/// for the rest of a test run.
const MAX_TTL: u64 = 3600;

/// The live leases, by Machine.
#[derive(Default)]
pub struct Leases {
    held: Mutex<HashMap<MachineId, Lease>>,
}

#[derive(Debug, Clone)]
struct Lease {
    nonce: String,
    description: String,
    /// When it lapses, in seconds since the epoch.
    expires_at: u64,
    version: String,
}

impl Lease {
    fn json(&self) -> Value {
        json!({
            "status": "success",
            "data": {
                "nonce": self.nonce,
                "expires_at": self.expires_at,
                "owner": "flyby-local",
                "description": self.description,
                "version": self.version,
            },
        })
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Leases {
    /// The live lease of `id`, forgetting a lapsed one.
    fn live(held: &mut HashMap<MachineId, Lease>, id: MachineId) -> Option<&Lease> {
        if held.get(&id).is_some_and(|l| l.expires_at <= now_secs()) {
            held.remove(&id);
        }
        held.get(&id)
    }

    /// Whether a change of `id` may go ahead: no live lease, or its nonce presented.
    pub fn permits(&self, id: MachineId, nonce: Option<&str>) -> Result<(), ApiError> {
        let mut held = self.held.lock().expect("leases lock");
        match Self::live(&mut held, id) {
            Some(lease) if Some(lease.nonce.as_str()) != nonce => Err(ApiError::Leased),
            _ => Ok(()),
        }
    }

    fn forget(&self, id: MachineId) {
        self.held.lock().expect("leases lock").remove(&id);
    }
}

/// The create body (`CreateLeaseRequest`).
#[derive(Debug, Default, Deserialize)]
pub(super) struct LeaseRequest {
    description: Option<String>,
    ttl: Option<u64>,
}

fn nonce_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(NONCE_HEADER).and_then(|v| v.to_str().ok())
}

/// Acquires the lease, or extends it for its holder (the nonce presented); 409 while someone
/// else holds it.
pub(super) async fn acquire(
    State(platform): State<Arc<Platform>>,
    Path((app, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let machine = machines::find(&platform, &app, &id)?;
    if machine.state == MachineState::Destroyed {
        return Err(ApiError::MachineNotFound);
    }
    let request: LeaseRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LeaseRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?
    };
    let ttl = match request.ttl {
        None | Some(0) => DEFAULT_TTL,
        Some(ttl) if ttl > MAX_TTL => {
            return Err(ApiError::BadRequest(format!(
                "invalid ttl {ttl}: at most {MAX_TTL} seconds"
            )))
        }
        Some(ttl) => ttl,
    };
    let mut held = platform.leases.held.lock().expect("leases lock");
    let nonce = match Leases::live(&mut held, machine.id) {
        Some(lease) if Some(lease.nonce.as_str()) == nonce_of(&headers) => lease.nonce.clone(),
        Some(_) => return Err(ApiError::Leased),
        None => format!("{:032x}", rand::random::<u128>()),
    };
    let lease = Lease {
        nonce,
        description: request.description.unwrap_or_default(),
        expires_at: now_secs() + ttl,
        version: new_ulid(),
    };
    held.insert(machine.id, lease.clone());
    Ok(Json(lease.json()))
}

pub(super) async fn show(
    State(platform): State<Arc<Platform>>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let machine = machines::find(&platform, &app, &id)?;
    let mut held = platform.leases.held.lock().expect("leases lock");
    match Leases::live(&mut held, machine.id) {
        Some(lease) => Ok(Json(lease.json())),
        // Undocumented: Fly's answer for a Machine without a lease; 404 as fly-go expects.
        None => Err(ApiError::NoLease),
    }
}

/// Releases the lease; only its holder may (the nonce presented).
pub(super) async fn release(
    State(platform): State<Arc<Platform>>,
    Path((app, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let machine = machines::find(&platform, &app, &id)?;
    platform.leases.permits(machine.id, nonce_of(&headers))?;
    platform.leases.forget(machine.id);
    Ok(Json(json!({"ok": true})))
}

/// The lease check of a start, stop or destroy.
pub(super) fn permits(
    platform: &Platform,
    id: MachineId,
    headers: &axum::http::HeaderMap,
) -> Result<(), ApiError> {
    platform.leases.permits(id, nonce_of(headers))
}
