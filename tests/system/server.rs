//! The `flyby` binary as a user runs it: configuration errors, `--help`, pages, `/health`, logs,
//! the hand-over and the affinity answers of a single Machine (the proxy's part is tested
//! through flyby-local in `tests/system/journey.rs`).
#![cfg(feature = "ssr")]

use crate::support;

use flyby::{
    app::{
        protocol::{MachineInfo, PhaseView},
        AppError,
    },
    server::config::VARIABLES,
};
use reqwest::{header, redirect::Policy, StatusCode};
use std::process::Command;
use support::{Flyby, MACHINE_ID, OWNER_HASH, OWNER_SECRET};

fn flyby() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flyby"));
    command.env_clear();
    command
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

async fn ephemeral(extra: &[(&str, &str)]) -> Flyby {
    let mut env = vec![
        ("FLYBY_ROLE", "ephemeral"),
        ("FLY_MACHINE_ID", MACHINE_ID),
        ("FLY_REGION", "ams"),
        ("FLYBY_OWNER_HASH", OWNER_HASH),
        ("FLYBY_LAUNCHER_URL", "http://flyby.localhost:3000"),
    ];
    env.extend_from_slice(extra);
    Flyby::start(&env).await
}

async fn launcher() -> Flyby {
    Flyby::start(&[
        ("FLYBY_ROLE", "launcher"),
        ("FLY_API_TOKEN", "test-token"),
        ("FLYBY_METRICS_PORT", "0"),
    ])
    .await
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
fn a_secret_in_a_bad_variable_is_not_echoed() {
    let out = flyby()
        .env("FLYBY_ROLE", "launcher")
        .env("FLY_API_TOKEN", "sekrit")
        .env("FLYBY_MAX_MACHINES", "lots")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("FLYBY_MAX_MACHINES"), "{stderr}");
    assert!(!stderr.contains("sekrit"), "{stderr}");
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
async fn the_launcher_answers_health_and_renders_its_page() {
    let server = launcher().await;
    let health = reqwest::get(server.url("/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");
    let page = reqwest::get(server.url("/")).await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("<h1>flyby</h1>"), "{html}");
    assert!(html.contains("data-role=\"launcher\""), "{html}");
    // The button works once the page's code runs: the server's HTML shows it disabled, so a
    // press before then is visibly not taken (the browser tests see it enabled after).
    assert!(
        tag_with(&html, "class=\"launch\"").contains(" disabled"),
        "{html}"
    );
    assert!(
        html.split('"')
            .any(|s| s.starts_with("/pkg/flyby.") && s.ends_with(".js")),
        "no hydration script"
    );
    assert_eq!(
        reqwest::get(server.url("/favicon.ico"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(server.url("/no-such-page"))
            .await
            .unwrap()
            .status(),
        404
    );
    // The visitor's page exists only on the ephemeral app.
    assert_eq!(
        reqwest::get(server.url(&format!("/m/{MACHINE_ID}")))
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn the_ephemeral_machine_refuses_everyone_before_the_hand_over() {
    let server = ephemeral(&[]).await;
    let c = client();
    assert_eq!(
        c.get(server.url("/health")).send().await.unwrap().status(),
        200
    );
    for path in [
        "/",
        "/favicon.ico",
        "/pkg/flyby.js",
        &format!("/m/{MACHINE_ID}"),
    ] {
        let response = c.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
        assert!(
            response.text().await.unwrap().contains("<h1>"),
            "{path}: a plain page"
        );
    }
    // A server function gets a typed error instead of a page.
    let call = c.post(server.url("/api/machine")).send().await.unwrap();
    assert_eq!(call.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        call.headers()[header::CONTENT_TYPE],
        "application/x-postcard"
    );
    let body = call.bytes().await.unwrap();
    assert_eq!(
        postcard::from_bytes::<AppError>(&body).ok(),
        Some(AppError::NotYours)
    );
}

#[tokio::test]
async fn a_wrong_secret_is_refused_and_the_right_one_becomes_the_owner_cookie() {
    let server = ephemeral(&[]).await;
    let c = client();
    let claim = server.url(&format!("/m/{MACHINE_ID}/claim"));
    let wrong = c
        .post(&claim)
        .form(&[("secret", "2".repeat(64))])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    assert!(wrong.headers().get(header::SET_COOKIE).is_none());

    let right = c
        .post(&claim)
        .form(&[("secret", OWNER_SECRET)])
        .send()
        .await
        .unwrap();
    // The answer is the owner's page itself, never kept by a cache, and its first script
    // takes the page's own address, so that a reload loads the page instead of posting the
    // secret again.
    assert_eq!(right.status(), StatusCode::OK);
    assert_eq!(right.headers()[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(right.headers()[header::CACHE_CONTROL], "no-store");
    assert!(right.headers().get(header::LOCATION).is_none());
    let cookie = right.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.starts_with(&format!("flyby_owner={MACHINE_ID}.{OWNER_SECRET};")),
        "{cookie}"
    );
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let max_age: u64 = cookie
        .split("Max-Age=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (100..=120).contains(&max_age),
        "the cookie lives as long as the Machine: {cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    let answered = right.text().await.unwrap();
    assert!(
        answered.contains(MACHINE_ID) && answered.contains("Amsterdam"),
        "{answered}"
    );
    assert!(
        answered.contains("history.replaceState"),
        "the page takes its own address: {answered}"
    );
    assert!(
        !answered.contains(OWNER_SECRET),
        "the secret must not be in the page"
    );

    let owner = format!("flyby_owner={MACHINE_ID}.{OWNER_SECRET}");
    let page = c
        .get(server.url(&format!("/m/{MACHINE_ID}")))
        .header(header::COOKIE, &owner)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(MACHINE_ID) && html.contains("Amsterdam"),
        "{html}"
    );
    assert!(
        !html.contains(OWNER_SECRET),
        "the secret must not be in the page"
    );
    assert!(
        tag_with(&html, "class=\"switch-off\"").contains(" disabled"),
        "switched on only by the page's code: {html}"
    );
    let favicon = c
        .get(server.url("/favicon.ico"))
        .header(header::COOKIE, &owner)
        .send()
        .await
        .unwrap();
    assert_eq!(favicon.status(), 200);
    let root = c
        .get(server.url("/"))
        .header(header::COOKIE, &owner)
        .send()
        .await
        .unwrap();
    assert_eq!(
        root.headers()[header::LOCATION],
        format!("/m/{MACHINE_ID}").as_str()
    );
}

#[tokio::test]
async fn the_hand_over_brings_the_launchs_timeline_to_the_owners_page_and_a_bad_one_changes_nothing(
) {
    let server = ephemeral(&[]).await;
    let c = client();
    let claim = server.url(&format!("/m/{MACHINE_ID}/claim"));
    let owner = format!("flyby_owner={MACHINE_ID}.{OWNER_SECRET}");
    let about = || async {
        let response = c
            .post(server.url("/api/machine"))
            .header(header::COOKIE, &owner)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        support::local::answer::<MachineInfo>(response).await
    };
    for bad in ["q1<script>", "x1", "q1.c2.", "q99999999999"] {
        let refused = c
            .post(&claim)
            .form(&[("secret", OWNER_SECRET), ("boot", bad)])
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        assert!(refused.headers().get(header::SET_COOKIE).is_none());
    }
    let untouched = about().await;
    assert_eq!(untouched.phase, PhaseView::AwaitingOwner, "not claimed");
    assert_eq!(untouched.boot, None);

    let right = c
        .post(&claim)
        .form(&[("secret", OWNER_SECRET), ("boot", "q3.w612.v640.h655")])
        .send()
        .await
        .unwrap();
    // The page, whose address the timeline never is in (the test above).
    assert_eq!(right.status(), StatusCode::OK);
    let claimed = about().await;
    assert!(
        matches!(claimed.phase, PhaseView::Showing { .. }),
        "{claimed:?}"
    );
    assert_eq!(claimed.boot.as_deref(), Some("q3.w612.v640.h655"));
    // The owner's page carries it to the island that shows the receipt.
    let page = c
        .get(server.url(&format!("/m/{MACHINE_ID}")))
        .header(header::COOKIE, &owner)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let written = page
        .split("data-machine=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next();
    let written = written.and_then(flyby::app::island_data::decode::<MachineInfo>);
    assert_eq!(written.and_then(|w| w.boot), claimed.boot);
}

#[tokio::test]
async fn the_hand_over_is_secure_over_https() {
    let server = ephemeral(&[]).await;
    let response = client()
        .post(server.url(&format!("/m/{MACHINE_ID}/claim")))
        .header("x-forwarded-proto", "https")
        .form(&[("secret", OWNER_SECRET)])
        .send()
        .await
        .unwrap();
    assert!(response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("; Secure"));
}

#[tokio::test]
async fn requests_for_another_machine_are_replayed_and_bad_ids_refused() {
    let server = ephemeral(&[]).await;
    let c = client();
    let other = "fedcba98765432";
    let replay = c
        .get(server.url(&format!("/m/{other}")))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        replay.headers()["fly-replay"],
        format!("instance={other};timeout=2s;fallback=prefer_self").as_str()
    );
    for bad in ["/m/abc;app=evil", "/m/FEDCBA98765432", "/m/fedcba9876543"] {
        assert_eq!(
            c.get(server.url(bad)).send().await.unwrap().status(),
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    // A request already replayed once is never replayed again.
    let looped = c
        .get(server.url(&format!("/m/{other}")))
        .header("fly-replay-src", "instance=aaaaaaaaaaaaaa;region=ams;t=1")
        .send()
        .await
        .unwrap();
    assert_eq!(looped.status(), StatusCode::MISDIRECTED_REQUEST);
    // The replay failed: the Machine is gone; pages go to the launcher's "gone" page.
    let gone = c
        .get(server.url("/"))
        .header(header::COOKIE, format!("flyby_owner={other}.x"))
        .header(header::ACCEPT, "text/html")
        .header(
            "fly-replay-failed",
            "instance=fedcba98765432;reason=no_candidate;elapsed_ms=1",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        gone.headers()[header::LOCATION],
        "http://flyby.localhost:3000/gone"
    );
    assert!(gone.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .starts_with("flyby_owner=;"));
}

#[tokio::test]
async fn every_request_is_logged_once_with_method_path_status_and_latency() {
    let mut server = launcher().await;
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

/// The one inline script of a page, as the browser hashes it.
/// The island loader: the one inline script of a page without a nonce.
fn inline_script(html: &str) -> &str {
    let start = html.find("<script>").expect("an inline script") + "<script>".len();
    let end = start + html[start..].find("</script>").expect("its end");
    assert!(
        !html[end..].contains("<script>"),
        "one script without a nonce only: {html}"
    );
    &html[start..end]
}

#[tokio::test]
async fn both_apps_pages_allow_only_their_own_scripts_and_no_framing() {
    use base64::Engine;
    use sha2::Digest;
    let (launcher, machine) = (launcher().await, ephemeral(&[]).await);
    let owner = format!("flyby_owner={MACHINE_ID}.{OWNER_SECRET}");
    for (server, path, cookie) in [
        (&launcher, "/".to_owned(), String::new()),
        (&machine, format!("/m/{MACHINE_ID}"), owner),
    ] {
        let page = client()
            .get(server.url(&path))
            .header(header::COOKIE, cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "{path}");
        let headers = page.headers().clone();
        let policy = headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        let html = page.text().await.unwrap();
        let hash = base64::engine::general_purpose::STANDARD
            .encode(sha2::Sha256::digest(inline_script(&html).as_bytes()));
        assert!(
            policy.contains(&format!("script-src 'self' 'sha256-{hash}'")),
            "{path}: the loader is allowed by its hash: {policy}"
        );
        // Every other inline script carries the nonce the policy names.
        let nonce = policy
            .split("'nonce-")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .unwrap_or_else(|| panic!("{path}: a page's policy has its nonce: {policy}"));
        let scripts = html.matches("<script").count();
        let with_nonce = html.matches(&format!("<script nonce=\"{nonce}\">")).count();
        assert_eq!(scripts, with_nonce + 1, "{path}: {html}");
        // The one inline stylesheet, by its hash.
        assert_eq!(html.matches("<style").count(), 1, "{path}: {html}");
        let style = html
            .split("<style>")
            .nth(1)
            .and_then(|rest| rest.split("</style>").next())
            .unwrap_or_else(|| panic!("{path}: no stylesheet: {html}"));
        let style_hash = base64::engine::general_purpose::STANDARD
            .encode(sha2::Sha256::digest(style.as_bytes()));
        assert!(
            policy.contains(&format!("style-src 'self' 'sha256-{style_hash}';")),
            "{path}: the stylesheet is allowed by its hash: {policy}"
        );
        for directive in [
            "frame-ancestors 'none'",
            "object-src 'none'",
            "default-src 'self'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert!(!policy.contains("unsafe-inline"), "{path}: {policy}");
    }
    // Not only pages: a static file is not sniffed into something else either.
    let favicon = reqwest::get(launcher.url("/favicon.ico")).await.unwrap();
    assert_eq!(favicon.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
}

#[tokio::test]
async fn health_proves_the_machines_readiness_key_to_a_challenge_and_never_shows_it() {
    use flyby::server::readiness::{self, Challenge, ReadinessKey, CHALLENGE_HEADER, PROOF_HEADER};
    let key = ReadinessKey::mint();
    let server = ephemeral(&[("FLYBY_READINESS_KEY", key.expose())]).await;
    let challenge = Challenge::mint();
    let answer = client()
        .get(server.url("/health"))
        .header(CHALLENGE_HEADER, challenge.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(readiness::answered_by(
        answer.headers(),
        flyby::fly::MachineId::parse(MACHINE_ID).unwrap(),
        &key,
        &challenge
    ));
    let shown = format!("{:?}", answer.headers());
    assert!(!shown.contains(key.expose()), "{shown}");
    // No challenge, no proof: Fly's own health checks get a plain `ok`.
    let plain = reqwest::get(server.url("/health")).await.unwrap();
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get(PROOF_HEADER).is_none());
    // A Machine started without a key proves nothing, so no launcher would hand it a visitor.
    let keyless = ephemeral(&[]).await;
    let answer = client()
        .get(keyless.url("/health"))
        .header(CHALLENGE_HEADER, challenge.as_str())
        .send()
        .await
        .unwrap();
    assert!(answer.headers().get(PROOF_HEADER).is_none());
}

/// The opening tag of the first element that has `attribute` (written as the server writes it).
fn tag_with<'a>(html: &'a str, attribute: &str) -> &'a str {
    let at = html
        .find(attribute)
        .unwrap_or_else(|| panic!("no {attribute} in {html}"));
    let start = html[..at].rfind('<').expect("inside a tag");
    let end = at + html[at..].find('>').expect("a closed tag");
    &html[start..=end]
}
