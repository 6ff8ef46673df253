//! The admin endpoint, `/_local/…`, for tests and curious people on this machine only
//! (loopback peers, never a Machine): the counters, every Machine with its addresses and
//! process, and the fault knobs.

use super::*;

/// The admin endpoint is for this host only: a fault knob must not be reachable from the LAN
/// even when the API is bound to a wildcard address.
pub(super) async fn loopback_only(request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    if !peer.is_some_and(is_loopback) {
        return ApiError::NotLoopback.into_response();
    }
    next.run(request).await
}

pub(super) fn is_loopback(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

pub(super) async fn stats(State(platform): State<Arc<Platform>>) -> Json<Value> {
    let machines: BTreeMap<String, Value> = platform
        .registry
        .state_counts()
        .into_iter()
        .map(|(app, counts)| (app, json!(counts)))
        .collect();
    Json(json!({
        "counters": platform.stats.snapshot(),
        "machines": machines,
    }))
}

/// Every Machine with its OS process id: what tests need to prove no process is left behind.
pub(super) async fn admin_machines(State(platform): State<Arc<Platform>>) -> Json<Value> {
    let machines: Vec<Value> = platform
        .registry
        .all()
        .iter()
        .map(|m| {
            json!({
                "app": m.app,
                "id": m.id,
                "name": m.name,
                "state": m.state.as_str(),
                "region": m.region,
                "private_ip": m.addrs.private.to_string(),
                "proxy_ip": m.addrs.proxy.to_string(),
                "pid": m.pid,
                // A launcher's warm pool marks its Machines so (`flyby_pool`).
                "pool": m.metadata("flyby_pool"),
            })
        })
        .collect();
    Json(Value::Array(machines))
}

/// Where a launcher serves its Prometheus text (`FLYBY_METRICS_PORT`'s default).
const METRICS_PORT: u16 = 9091;

/// A Machine's `/metrics` (a launcher's phases and counters), fetched from inside the
/// platform's network: the host may not reach a Machine's own addresses (an isolated network
/// routes only the proxy's traffic), and the benchmarks read a launcher's launch phases there.
pub(super) async fn machine_metrics(
    State(platform): State<Arc<Platform>>,
    Path(id): Path<String>,
) -> Response {
    let Some(machine) = platform
        .registry
        .all()
        .into_iter()
        .find(|m| m.id.as_str() == id)
    else {
        return ApiError::MachineNotFound.into_response();
    };
    let addr = SocketAddr::new(machine.addrs.private, METRICS_PORT);
    let fetched = tokio::time::timeout(Duration::from_secs(2), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = platform.network.connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    })
    .await;
    match fetched {
        Ok(Ok(answer)) => {
            let text = String::from_utf8_lossy(&answer);
            match text.split_once("\r\n\r\n") {
                Some((head, body)) if head.starts_with("HTTP/1.1 200") => {
                    body.to_owned().into_response()
                }
                _ => (StatusCode::BAD_GATEWAY, "no metrics there\n").into_response(),
            }
        }
        _ => (StatusCode::BAD_GATEWAY, "no metrics there\n").into_response(),
    }
}

pub(super) async fn arm_fault(
    State(platform): State<Arc<Platform>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let fault: Fault = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid fault: {e}")))?;
    if let Fault::Crash { machine } = &fault {
        platform.supervisor.crash(*machine)?;
    }
    tracing::info!(?fault, "fault armed");
    platform.faults.arm(&fault);
    Ok(Json(json!({"ok": true})))
}

pub(super) async fn clear_faults(State(platform): State<Arc<Platform>>) -> Json<Value> {
    platform.faults.clear();
    Json(json!({"ok": true}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_peers_reach_the_admin_endpoint() {
        assert!(is_loopback("127.0.0.1:1".parse().unwrap()));
        assert!(is_loopback("[::1]:1".parse().unwrap()));
        assert!(is_loopback("[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(!is_loopback("192.168.1.2:1".parse().unwrap()));
        assert!(!is_loopback("[::ffff:10.0.0.1]:1".parse().unwrap()));
    }
}
