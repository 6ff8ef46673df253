//! Secrets (the Machines API token, owners' secrets) never reach a response, a URL that
//! outlives the hand-over, or a log line: a whole journey through the local platform, run as
//! a separate process whose every log line (its own and every Machine's) is kept and searched.
#![cfg(feature = "ssr")]

use crate::support;

use flyby::local::LAUNCHER_IMAGE;
use reqwest::header;
use std::{process::Stdio, sync::Arc, time::Duration};
use support::local::{Api, Visitor};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
    sync::Mutex,
};

const TOKEN: &str = "tok3n-that-must-never-show-9f8e7d";

#[tokio::test]
async fn no_secret_reaches_a_log_line_a_response_or_a_lasting_url() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flyby-local"))
        .args([
            "--proxy-addr=127.0.0.1:0",
            "--api-addr=127.0.0.1:0",
            "--balance=wrong-first",
        ])
        .arg(format!(
            "--image={LAUNCHER_IMAGE}={}",
            env!("CARGO_BIN_EXE_flyby")
        ))
        .arg(format!("--site-root={}", support::site_root().display()))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FLY_API_TOKEN", TOKEN)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<(String, String)>();
    let mut ready_tx = Some(ready_tx);
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let out_logs = logs.clone();
    let out = tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            if let Some(rest) = line.strip_prefix("flyby-local ready: proxy=http://") {
                let (proxy, api) = rest.split_once(" api=http://").unwrap();
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send((proxy.to_owned(), api.to_owned()));
                }
            }
            out_logs.lock().await.push_str(&line);
            out_logs.lock().await.push('\n');
        }
    });
    let err_logs = logs.clone();
    let err = tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            err_logs.lock().await.push_str(&line);
            err_logs.lock().await.push('\n');
        }
    });
    let (proxy, api) = tokio::time::timeout(Duration::from_secs(60), ready_rx)
        .await
        .unwrap()
        .unwrap();
    let visitor = Visitor::at(proxy.parse().unwrap(), "203.0.113.1");
    let api = Api::with_token(api.parse().unwrap(), TOKEN);

    // The whole journey, collecting every response the visitor sees.
    let mut seen = String::new();
    let launch = visitor.start_launch().await.unwrap();
    let progress = visitor.follow_launch(&launch).await;
    seen.push_str(&format!("{progress:?}"));
    let handover = visitor.take_handover(&launch).await.unwrap();
    let secret = handover.secret.clone();
    assert!(
        !handover.claim_url.contains(&secret),
        "the claim URL carries no secret"
    );
    let claim = visitor
        .client()
        .post(&handover.claim_url)
        .form(&[("secret", &secret)])
        .send()
        .await
        .unwrap();
    // The hand-over answers with the owner's page, whose first script gives it the page's own
    // address: neither address carries the secret, nor does the page.
    assert_eq!(claim.status(), 200, "the hand-over answers with the page");
    assert!(
        !claim.url().as_str().contains(&secret),
        "the hand-over's URL carries no secret"
    );
    assert_eq!(claim.headers()[header::REFERRER_POLICY], "no-referrer");
    let location = format!("/m/{}", handover.machine);
    seen.push_str(&claim.text().await.unwrap());
    for path in [location.as_str(), "/pkg/flyby.css", "/favicon.ico"] {
        let r = visitor
            .client()
            .get(visitor.machines(path))
            .send()
            .await
            .unwrap();
        seen.push_str(&format!("{:?}", r.headers()));
        seen.push_str(&r.text().await.unwrap());
    }
    let about = visitor
        .client()
        .post(visitor.machines("/api/machine"))
        .send()
        .await
        .unwrap();
    seen.push_str(&about.text().await.unwrap());
    for path in ["/", "/gone"] {
        seen.push_str(
            &visitor
                .client()
                .get(visitor.launcher(path))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    let machine = flyby::fly::MachineId::parse(location.trim_start_matches("/m/")).unwrap();
    let config = api.machine(machine).await;
    seen.push_str(&config.to_string());
    visitor
        .client()
        .post(visitor.machines("/api/switch-off"))
        .send()
        .await
        .unwrap();
    api.wait_destroyed(machine).await;

    // Stop the platform and every Machine, then read everything they logged.
    let pid = child.id().unwrap() as i32;
    // SAFETY: signalling the child process this test started.
    unsafe { libc::kill(pid, libc::SIGINT) };
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    out.await.unwrap();
    err.await.unwrap();
    let logs = logs.lock().await;
    assert!(
        logs.contains("owner arrived"),
        "the Machines' logs were captured"
    );
    assert!(
        logs.contains("\"POST\"") || logs.contains("POST"),
        "request lines were captured"
    );
    for (what, needle) in [("API token", TOKEN), ("owner secret", secret.as_str())] {
        assert!(!logs.contains(needle), "the {what} is in a log line");
        assert!(
            !seen.contains(needle),
            "the {what} reached a response after the hand-over"
        );
    }
    assert!(
        !config.to_string().contains(TOKEN),
        "the token is not in a Machine's config"
    );
}
