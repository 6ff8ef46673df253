//! Hostile input, through the local Fly platform: each attempt refused cleanly (a 4xx, never a
//! 5xx or a crash), and nothing changes: the owner keeps their Machine, nothing is replayed
//! where it should not be, no file outside the site is served.
#![cfg(feature = "ssr")]

use crate::support;

use reqwest::{header, StatusCode};
use std::net::SocketAddr;
use support::local::{self, Api, Visitor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw bytes as a request (no client-side normalisation of the path) and returns the
/// status line and the whole answer.
async fn raw(proxy: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn hostile_requests_are_refused_and_change_nothing() {
    let platform = local::start(&[]).await;
    let api = Api::new(&platform);
    let alice = Visitor::new(&platform, "203.0.113.1");
    let bob = Visitor::new(&platform, "203.0.113.2");
    let a = alice.launch_and_claim().await;
    let b = bob.launch_and_claim().await;
    let mallory = Visitor::new(&platform, "198.51.100.66");

    // Ids that try to inject into fly-replay, in the path.
    for path in [
        "/m/abc;app=evil",
        "/m/0123456789abcd;app=evil",
        "/m/%0d%0afly-replay:%20app=evil",
        "/m/0123456789abcde",
        "/m/0123456789ABCD",
        "/m/0123456789abc%C3%A9",
        "/m/%FF%FE",
    ] {
        let r = mallory
            .client()
            .get(mallory.machines(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
    }
    // ... and in the owner cookie.
    for cookie in [
        "flyby_owner=abc;app=evil.x",
        "flyby_owner=0123456789ABCD.x",
        "flyby_owner=0123456789abcde.x",
    ] {
        let r = mallory
            .client()
            .get(mallory.machines("/"))
            .header(header::COOKIE, cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{cookie}");
        assert!(
            r.headers()[header::SET_COOKIE]
                .to_str()
                .unwrap()
                .starts_with("flyby_owner=;"),
            "the bad cookie is cleared"
        );
    }
    // A cookie header that is not even text is no cookie at all: a stranger, refused.
    let r = mallory
        .client()
        .get(mallory.machines("/"))
        .header(header::COOKIE, "flyby_owner=\u{e9}\u{e9}.x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A forged owner cookie, and the secret of another Machine: refused.
    let forged = format!("flyby_owner={a}.{}", "7".repeat(64));
    let r = mallory
        .client()
        .get(mallory.machines(&format!("/m/{a}")))
        .header(header::COOKIE, forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Another visitor's Machine id: refused by that Machine.
    let r = bob
        .client()
        .get(bob.machines(&format!("/m/{a}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A client cannot provoke a replay loop or a fake "gone": fly-proxy drops client-sent
    // fly-replay-src / fly-replay-failed headers.
    let r = alice
        .client()
        .get(alice.machines(&format!("/m/{a}")))
        .header("fly-replay-src", format!("instance={b};region=ams;t=1"))
        .header(
            "fly-replay-failed",
            format!("instance={a};reason=no_candidate"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the owner is served as usual");
    // Oversized cookies and headers.
    let huge = "x".repeat(256 * 1024);
    let r = mallory
        .client()
        .get(mallory.machines("/"))
        .header(header::COOKIE, format!("c={huge}"))
        .send()
        .await
        .expect("an oversized request is answered, not dropped");
    assert!(r.status().is_client_error(), "{}", r.status());
    let r = mallory
        .client()
        .get(mallory.launcher("/"))
        .header("x-junk", &huge[..64 * 1024])
        .send()
        .await
        .expect("a large header is answered, not dropped");
    assert!(
        r.status().is_client_error() || r.status() == StatusCode::OK,
        "{}",
        r.status()
    );
    // `..` and invalid UTF-8 in paths, sent raw so nothing normalises them.
    let proxy = platform.proxy_addr();
    for path in [
        "/pkg/../../Cargo.toml",
        "/pkg/..%2f..%2fCargo.toml",
        "/%2e%2e/%2e%2e/Cargo.toml",
        "/pkg/\u{00ff}\u{00fe}",
    ] {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: flyby.localhost\r\nConnection: close\r\n\r\n");
        let (status, answer) = raw(proxy, request.as_bytes()).await;
        assert!((400..500).contains(&status), "{path}: {status}");
        assert!(
            !answer.contains("[package]"),
            "{path} served a file outside the site"
        );
    }
    let (status, _) = raw(
        proxy,
        b"GET /pkg/\xff\xfe HTTP/1.1\r\nHost: flyby.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!((400..500).contains(&status), "invalid UTF-8: {status}");
    // A body over 1 MB to a path that would be replayed: the proxy refuses to replay it.
    let big = vec![b'a'; 1_100_000];
    let r = mallory
        .client()
        .post(mallory.machines(&format!("/m/{a}/claim")))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(big)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    assert!(
        r.headers().get(header::SET_COOKIE).is_none(),
        "never claimed"
    );

    // Nothing changed: both owners still have their Machines, and only them.
    for (visitor, mine) in [(&alice, a), (&bob, b)] {
        let page = visitor
            .client()
            .get(visitor.machines(&format!("/m/{mine}")))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK);
    }
    assert_eq!(api.machines().await.len(), 2);
}
