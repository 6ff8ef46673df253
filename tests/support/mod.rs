//! What the integration tests share: starting the real `flyby` binary and reading its logs.
#![allow(dead_code)]

use serde_json::Value;
use std::{net::SocketAddr, process::Stdio, time::Duration};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStderr, Command},
};

/// The site folder `make build` writes; the server needs it for static files.
pub const SITE_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/site");

/// A `flyby` process started by a test; killed when dropped.
pub struct Flyby {
    pub child: Child,
    pub addr: SocketAddr,
    logs: Lines<BufReader<ChildStderr>>,
}

impl Flyby {
    /// Starts `flyby` with JSON logs on a free port and waits for its "serving" line.
    pub async fn start(env: &[(&str, &str)]) -> Flyby {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flyby"))
            .env_clear()
            .env("LEPTOS_SITE_ADDR", "127.0.0.1:0")
            .env("LEPTOS_SITE_ROOT", SITE_ROOT)
            .env("FLYBY_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn flyby");
        let mut logs = BufReader::new(child.stderr.take().unwrap()).lines();
        let serving = next_event(&mut logs, |e| e["message"] == "serving").await;
        let addr = serving["addr"].as_str().unwrap().parse().unwrap();
        Flyby { child, addr, logs }
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
