//! Every way a visitor's Machine ends makes the process exit with status 0, so that Fly's
//! `auto_destroy` removes it. (Through flyby-local, with the Machine destroyed: `tests/system/journey.rs`.)
#![cfg(feature = "ssr")]

use crate::support;

use reqwest::header;
use std::time::Duration;
use support::{Flyby, MACHINE_ID, OWNER_HASH, OWNER_SECRET};

async fn ephemeral(extra: &[(&str, &str)]) -> Flyby {
    let mut env = vec![
        ("FLYBY_ROLE", "ephemeral"),
        ("FLY_MACHINE_ID", MACHINE_ID),
        ("FLYBY_OWNER_HASH", OWNER_HASH),
    ];
    env.extend_from_slice(extra);
    Flyby::start(&env).await
}

/// Waits for the process to exit; the bound only keeps a broken build from hanging CI.
async fn exit_code(server: &mut Flyby) -> i32 {
    tokio::time::timeout(Duration::from_secs(60), server.child.wait())
        .await
        .expect("the Machine should have ended")
        .unwrap()
        .code()
        .expect("exited, not killed")
}

async fn claim(server: &Flyby) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .post(server.url(&format!("/m/{MACHINE_ID}/claim")))
        .form(&[("secret", OWNER_SECRET)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the hand-over answers with the owner's page"
    );
    format!("flyby_owner={MACHINE_ID}.{OWNER_SECRET}")
}

#[tokio::test]
async fn no_claim_within_the_window_ends_with_status_0() {
    let mut server = ephemeral(&[("FLYBY_CLAIM_SECS", "5")]).await;
    let ended = server.next_event(|e| e["message"] == "Machine ended").await;
    assert_eq!(ended["reason"], "NoClaim");
    assert_eq!(exit_code(&mut server).await, 0);
}

#[tokio::test]
async fn the_end_of_the_show_ends_with_status_0() {
    let mut server = ephemeral(&[("FLYBY_SHOW_SECS", "3")]).await;
    claim(&server).await;
    let ended = server.next_event(|e| e["message"] == "Machine ended").await;
    assert_eq!(ended["reason"], "ShowOver");
    assert_eq!(exit_code(&mut server).await, 0);
}

#[tokio::test]
async fn the_ttl_ends_with_status_0() {
    // The show would last longer than the Machine may live.
    let mut server = ephemeral(&[("FLYBY_TTL_SECS", "10"), ("FLYBY_SHOW_SECS", "600")]).await;
    claim(&server).await;
    let ended = server.next_event(|e| e["message"] == "Machine ended").await;
    assert_eq!(ended["reason"], "TtlExpired");
    assert_eq!(exit_code(&mut server).await, 0);
}

#[tokio::test]
async fn the_owners_button_ends_with_status_0() {
    let mut server = ephemeral(&[]).await;
    let owner = claim(&server).await;
    let response = reqwest::Client::new()
        .post(server.url("/api/switch-off"))
        .header(header::COOKIE, owner)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let ended = server.next_event(|e| e["message"] == "Machine ended").await;
    assert_eq!(ended["reason"], "SwitchedOff");
    assert_eq!(exit_code(&mut server).await, 0);
}

#[tokio::test]
async fn a_stranger_cannot_switch_it_off() {
    let mut server = ephemeral(&[]).await;
    claim(&server).await;
    let forged = format!("flyby_owner={MACHINE_ID}.{}", "2".repeat(64));
    let response = reqwest::Client::new()
        .post(server.url("/api/switch-off"))
        .header(header::COOKIE, forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // Still alive and serving its owner.
    assert_eq!(
        reqwest::get(server.url("/health")).await.unwrap().status(),
        200
    );
    assert!(server.child.try_wait().unwrap().is_none());
}

#[tokio::test]
async fn sigterm_and_sigint_end_with_status_0() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut server = ephemeral(&[]).await;
        let pid = server.child.id().unwrap() as i32;
        // SAFETY: signalling a child process this test started.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        assert_eq!(exit_code(&mut server).await, 0, "signal {signal}");
    }
}
