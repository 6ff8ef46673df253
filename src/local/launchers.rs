//! The launcher Machines flyby-local boots at start (app `flyby`), configured the way
//! `fly deploy` configures them from `fly.toml`, so that one command runs the whole product.
//!
//! They are created through the same code path as `POST /v1/apps/flyby/machines`, in regions
//! spread from the edge region, and start returns only once every one is `started`.

use crate::{
    fly::MachineId,
    local::{
        machines_api::{create_machine_with_secrets, ApiError},
        registry::MachineState,
        NetworkMode, Platform, EPHEMERAL_APP, LAUNCHER_APP, LAUNCHER_IMAGE,
    },
};
use serde_json::{json, Map, Value};
use std::{sync::Arc, time::Duration};

/// Launcher regions after the edge region, far apart so the map shows the spread.
pub const LAUNCHER_REGIONS: &[&str] = &[
    "ams", "ord", "sin", "syd", "gru", "jnb", "nrt", "lax", "iad", "fra", "lhr", "bom", "cdg",
    "dfw", "ewr", "arn", "sjc", "yyz",
];

/// Where flyby's image makes the server listen (its Dockerfile's `ENV LEPTOS_SITE_ADDR`):
/// every address, IPv4 for fly-proxy and IPv6 for the private network.
pub const IMAGE_SITE_ADDR: &str = "[::]:8080";

/// How long the launchers get to listen. A first start of a debug build can be slow.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the launchers did not come up.
#[derive(Debug, thiserror::Error)]
pub enum LaunchersError {
    #[error("cannot create launcher Machine #{index}: {source}")]
    Create { index: usize, source: ApiError },
    #[error("launcher Machine {id} is {state} instead of started (its log lines above say why)")]
    Failed { id: MachineId, state: &'static str },
    #[error("launcher Machines not started after {0:?} (their log lines above say why)")]
    Timeout(Duration),
}

/// `n` regions: the edge region first, then [`LAUNCHER_REGIONS`], round again if needed.
pub fn regions(edge: &str, n: usize) -> Vec<String> {
    let mut order = vec![edge.to_owned()];
    order.extend(
        LAUNCHER_REGIONS
            .iter()
            .filter(|r| **r != edge)
            .map(|r| (*r).to_owned()),
    );
    (0..n).map(|i| order[i % order.len()].clone()).collect()
}

/// The create body for one launcher: `fly.toml`'s `[env]`, `[http_service]` and `[[vm]]` as
/// flyctl turns them into a Machine config, adapted to the local platform.
pub fn launcher_request(platform: &Platform, region: &str) -> Value {
    let mut env = Map::new();
    let mut put = |k: &str, v: String| {
        env.insert(k.to_owned(), Value::String(v));
    };
    put("FLYBY_ROLE", "launcher".into());
    put("FLYBY_EPHEMERAL_APP", EPHEMERAL_APP.into());
    put(
        "LEPTOS_SITE_ROOT",
        platform.site_root().display().to_string(),
    );
    put(
        "FLYBY_MACHINES_API",
        format!(
            "http://{}",
            platform.network.api_for_machines(platform.api_addr)
        ),
    );
    // What the image sets (the Dockerfile's ENV), for the processes of every Machine of it.
    put("LEPTOS_SITE_ADDR", IMAGE_SITE_ADDR.into());
    if platform.network.mode() == NetworkMode::Shared {
        // One network for all: every launcher's `/metrics` on the same wildcard port would
        // collide (the site's address is rewritten by the supervisor).
        put("FLYBY_METRICS_PORT", "0".into());
    }
    // fly.toml's `[env]` names the app's public origin (the warm pool's Machines need it
    // before any visitor arrives); locally it is the proxy's host for the launcher app.
    put(
        "FLYBY_LAUNCHER_URL",
        format!(
            "http://{LAUNCHER_APP}.localhost:{}",
            platform.proxy_addr.port()
        ),
    );
    // flyctl puts fly.toml's primary_region here.
    put("PRIMARY_REGION", platform.args.edge_region.to_string());
    for (key, value) in &platform.args.launcher_env {
        put(key, value.clone());
    }
    json!({
        "region": region,
        "config": {
            "image": LAUNCHER_IMAGE,
            "env": env,
            "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
            "metadata": {"fly_platform_version": "v2", "fly_process_group": "app"},
            "services": [{
                "protocol": "tcp",
                "internal_port": 8080,
                "autostart": true,
                "autostop": "stop",
                "min_machines_running": 1,
                // Locally the proxy speaks plain HTTP only: fly.toml's force_https is left out.
                "ports": [
                    {"port": 80, "handlers": ["http"]},
                    {"port": 443, "handlers": ["tls", "http"]},
                ],
                "concurrency": {"type": "requests", "soft_limit": 200, "hard_limit": 250},
                "checks": [{
                    "type": "http",
                    "protocol": "http",
                    "method": "GET",
                    "path": "/health",
                    "interval": "15s",
                    "timeout": "2s",
                    "grace_period": "5s",
                }],
            }],
        },
    })
}

/// Creates `--launchers` launcher Machines and waits until each is `started`.
pub async fn boot(platform: &Arc<Platform>) -> Result<(), LaunchersError> {
    let regions = regions(platform.args.edge_region.as_str(), platform.args.launchers);
    // The token is a secret on Fly (`fly secrets set`): in the process's environment, not in
    // the Machine config that the API shows.
    let secrets = [("FLY_API_TOKEN".to_owned(), platform.token.clone())];
    let mut ids = Vec::with_capacity(regions.len());
    for (index, region) in regions.iter().enumerate() {
        let body = launcher_request(platform, region).to_string();
        let machine =
            create_machine_with_secrets(platform, LAUNCHER_APP, body.as_bytes(), &secrets)
                .await
                .map_err(|source| LaunchersError::Create { index, source })?;
        ids.push(machine.id);
    }
    wait_started(platform, &ids).await
}

async fn wait_started(platform: &Platform, ids: &[MachineId]) -> Result<(), LaunchersError> {
    let mut changes = platform.registry.subscribe();
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let mut all_started = true;
        for &id in ids {
            let state = platform
                .registry
                .get(LAUNCHER_APP, id)
                .map_or(MachineState::Destroyed, |m| m.state);
            match state {
                MachineState::Started => {}
                MachineState::Stopped | MachineState::Destroying | MachineState::Destroyed => {
                    return Err(LaunchersError::Failed {
                        id,
                        state: state.as_str(),
                    })
                }
                _ => all_started = false,
            }
        }
        if all_started {
            return Ok(());
        }
        if !matches!(
            tokio::time::timeout_at(deadline, changes.changed()).await,
            Ok(Ok(()))
        ) {
            return Err(LaunchersError::Timeout(READY_TIMEOUT));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_start_at_the_edge_and_spread() {
        assert_eq!(regions("ams", 2), vec!["ams", "ord"]);
        assert_eq!(regions("sin", 3), vec!["sin", "ams", "ord"]);
        assert_eq!(regions("ams", 0), Vec::<String>::new());
        let many = regions("ams", LAUNCHER_REGIONS.len() + 1);
        assert_eq!(many.last().unwrap(), "ams");
    }
}
