//! What the integration tests share: starting the real `flyby` binary and reading its logs.
#![allow(dead_code)]

use serde_json::Value;
use std::{net::SocketAddr, process::Stdio, time::Duration};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStderr, Command},
};

/// The site folder `make build` writes (`<target dir>/site`); the server needs it for static
/// files. Found from the binary's own path, so a custom `CARGO_TARGET_DIR` works too.
pub fn site_root() -> std::path::PathBuf {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_flyby"));
    bin.parent()
        .and_then(|profile| profile.parent())
        .expect("target dir")
        .join("site")
}

/// A fixed owner secret and its SHA-256, so tests can hand over an ephemeral Machine.
pub const OWNER_SECRET: &str = "1111111111111111111111111111111111111111111111111111111111111111";
pub const OWNER_HASH: &str = "3138bb9bc78df27c473ecfd1410f7bd45ebac1f59cf3ff9cfe4db77aab7aedd3";
pub const MACHINE_ID: &str = "0123456789abcd";

/// A `flyby` process started by a test; killed when dropped.
pub struct Flyby {
    pub child: Child,
    pub addr: SocketAddr,
    /// Where a launcher serves `/metrics`, from its "metrics" line.
    pub metrics: Option<SocketAddr>,
    logs: Lines<BufReader<ChildStderr>>,
}

impl Flyby {
    /// Starts `flyby` with JSON logs on a free port and waits for its "serving" line.
    pub async fn start(env: &[(&str, &str)]) -> Flyby {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flyby"))
            .env_clear()
            .env("LEPTOS_SITE_ADDR", "127.0.0.1:0")
            .env("LEPTOS_SITE_ROOT", site_root())
            .env("FLYBY_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn flyby");
        let mut logs = BufReader::new(child.stderr.take().unwrap()).lines();
        let address = |event: &Value| event["addr"].as_str().unwrap().parse().unwrap();
        let mut metrics = None;
        let addr = loop {
            let event = next_event(&mut logs, |e| {
                e["message"] == "serving" || e["message"] == "metrics"
            })
            .await;
            match event["message"].as_str() {
                Some("metrics") => metrics = Some(address(&event)),
                _ => break address(&event),
            }
        };
        Flyby {
            child,
            addr,
            metrics,
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next JSON log event that `matches`.
    pub async fn next_event(&mut self, matches: impl Fn(&Value) -> bool) -> Value {
        next_event(&mut self.logs, matches).await
    }
}

async fn next_event(
    logs: &mut Lines<BufReader<ChildStderr>>,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    // A generous bound so that a broken server fails the test instead of hanging it.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = logs
                .next_line()
                .await
                .unwrap()
                .expect("flyby closed its log");
            if let Ok(event) = serde_json::from_str::<Value>(&line) {
                if matches(&event) {
                    return event;
                }
            }
        }
    })
    .await
    .expect("log event")
}

pub mod local;
pub mod platform;
