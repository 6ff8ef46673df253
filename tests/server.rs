//! The `flyby` binary as a user runs it: configuration errors, `--help`, pages, `/health`, logs.
#![cfg(feature = "ssr")]

mod support;

use flyby::server::config::VARIABLES;
use std::process::Command;
use support::Flyby;

const MACHINE_ID: &str = "0123456789abcd";

fn flyby() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flyby"));
    command.env_clear();
    command
}

#[test]
fn a_missing_role_stops_the_start_with_one_line_naming_it() {
    let out = flyby().output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("FLYBY_ROLE"), "{stderr}");
}

#[test]
fn an_invalid_variable_stops_the_start_with_one_line_naming_it() {
    let out = flyby()
        .env("FLYBY_ROLE", "ephemeral")
        .env("FLY_MACHINE_ID", "not-an-id")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("FLY_MACHINE_ID"), "{stderr}");
}

#[test]
fn help_lists_every_variable() {
    let out = flyby().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for v in VARIABLES {
        assert!(help.contains(v.name), "{} missing from --help", v.name);
    }
}

#[tokio::test]
async fn both_roles_answer_health_and_render_their_page() {
    for (role, heading) in [("launcher", "flyby"), ("ephemeral", "Your own Fly Machine")] {
        let server = Flyby::start(&[("FLYBY_ROLE", role), ("FLY_MACHINE_ID", MACHINE_ID)]).await;
        let health = reqwest::get(server.url("/health")).await.unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(health.text().await.unwrap(), "ok");

        let page = reqwest::get(server.url("/")).await.unwrap();
        assert_eq!(page.status(), 200);
        let html = page.text().await.unwrap();
        assert!(
            html.contains(&format!("<h1>{heading}</h1>")),
            "{role}: {html}"
        );
        assert!(
            html.contains(&format!("data-role=\"{role}\"")),
            "{role}: {html}"
        );
        assert!(
            html.contains("/pkg/flyby.js"),
            "{role}: no hydration script"
        );

        let favicon = reqwest::get(server.url("/favicon.ico")).await.unwrap();
        assert_eq!(favicon.status(), 200, "{role}: favicon");
        let missing = reqwest::get(server.url("/no-such-page")).await.unwrap();
        assert_eq!(missing.status(), 404, "{role}: unknown path");
    }
}

#[tokio::test]
async fn every_request_is_logged_once_with_method_path_status_and_latency() {
    let mut server = Flyby::start(&[("FLYBY_ROLE", "launcher")]).await;
    let status = reqwest::get(server.url("/health?secret=hunter2"))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let line = server.next_event(|e| e["message"] == "request").await;
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/health");
    assert_eq!(line["status"], 200);
    assert!(line["latency_us"].is_u64(), "{line}");
    assert!(
        !line.to_string().contains("hunter2"),
        "the query string was logged: {line}"
    );
}
