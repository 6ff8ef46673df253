//! The bundle under `/pkg` as `make build` leaves it: content-hashed names linked by the pages,
//! served precompressed and `immutable`; the plain names still answer, revalidated; the
//! stylesheet in the pages themselves.
#![cfg(feature = "ssr")]

use crate::support;

use reqwest::header;
use support::{Flyby, MACHINE_ID, OWNER_HASH, OWNER_SECRET};

async fn launcher() -> Flyby {
    Flyby::start(&[
        ("FLYBY_ROLE", "launcher"),
        ("FLY_API_TOKEN", "test-token"),
        ("FLYBY_METRICS_PORT", "0"),
    ])
    .await
}

/// The `/pkg/...` URLs in a page.
fn pkg_links(html: &str) -> Vec<&str> {
    html.split('"').filter(|s| s.starts_with("/pkg/")).collect()
}

#[tokio::test]
async fn the_pages_link_hashed_names_served_precompressed_and_immutable() {
    let server = launcher().await;
    let c = reqwest::Client::new();
    let html = text(&c, &server, "/").await;
    let links = pkg_links(&html);
    assert!(
        !links.iter().any(|l| l.ends_with(".css")),
        "the stylesheet is inline, not linked: {links:?}"
    );
    for ext in [".js", ".wasm"] {
        let link = links
            .iter()
            .find(|l| l.ends_with(ext))
            .unwrap_or_else(|| panic!("no {ext} link in {links:?}"));
        assert!(
            link.starts_with("/pkg/flyby.") && link.len() > "/pkg/flyby".len() + ext.len() + 1,
            "a hashed name: {link}"
        );
        for (accept, encoding) in [
            ("br, gzip", Some("br")),
            ("gzip", Some("gzip")),
            ("identity", None),
        ] {
            let r = c
                .get(server.url(link))
                .header(header::ACCEPT_ENCODING, accept)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{link} {accept}");
            assert_eq!(
                r.headers()
                    .get(header::CONTENT_ENCODING)
                    .map(|v| v.to_str().unwrap()),
                encoding,
                "{link} {accept}"
            );
            assert_eq!(
                r.headers()[header::CACHE_CONTROL],
                "public, max-age=31536000, immutable"
            );
        }
    }
    // The plain names are aliases, revalidated on each use.
    for plain in ["/pkg/flyby.css", "/pkg/flyby.js", "/pkg/flyby.wasm"] {
        let r = c.get(server.url(plain)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{plain}");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache", "{plain}");
    }
    let missing = c
        .get(server.url("/pkg/flyby.nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().get(header::CACHE_CONTROL).is_none());
}

/// The page carries the build's stylesheet itself: no request stands between its response and
/// its first paint. (That the policy allows it by its hash, on both apps' pages:
/// `tests/system/server.rs`.)
#[tokio::test]
async fn the_pages_carry_the_builds_stylesheet() {
    let server = launcher().await;
    let c = reqwest::Client::new();
    let html = text(&c, &server, "/").await;
    let css = text(&c, &server, "/pkg/flyby.css").await;
    assert!(css.contains(".machine"), "the site's stylesheet: {css}");
    assert!(
        html.contains(&format!("<style>{css}</style>")),
        "the page has the stylesheet inline"
    );
}

/// The body of `path`, uncompressed.
async fn text(c: &reqwest::Client, server: &Flyby, path: &str) -> String {
    let r = c
        .get(server.url(path))
        .header(header::ACCEPT_ENCODING, "identity")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.text().await.unwrap()
}

/// The JS glue a page links, fetched with `cookie`.
async fn linked_glue(c: &reqwest::Client, server: &Flyby, page: &str, cookie: &str) -> String {
    let get = |path: String| {
        c.get(server.url(&path))
            .header(header::COOKIE, cookie)
            .header(header::ACCEPT_ENCODING, "identity")
            .send()
    };
    let html = get(page.into()).await.unwrap().text().await.unwrap();
    let js = *pkg_links(&html)
        .iter()
        .find(|l| l.ends_with(".js"))
        .unwrap_or_else(|| panic!("{page} links no JS: {html}"));
    let glue = get(js.into()).await.unwrap();
    assert_eq!(glue.status(), 200, "{js}");
    glue.text().await.unwrap()
}

/// Each app's pages load a bundle that hydrates only that app's island: a visitor's Machine
/// page fetches and compiles no launcher code (BENCHMARKS.md, row 7), and the other way round.
#[tokio::test]
async fn each_app_links_the_bundle_with_only_its_own_island() {
    let ephemeral = Flyby::start(&[
        ("FLYBY_ROLE", "ephemeral"),
        ("FLY_MACHINE_ID", MACHINE_ID),
        ("FLY_REGION", "ams"),
        ("FLYBY_OWNER_HASH", OWNER_HASH),
        ("FLYBY_LAUNCHER_URL", "http://flyby.localhost:3000"),
    ])
    .await;
    let launcher = launcher().await;
    let c = reqwest::Client::new();
    let owner = format!("flyby_owner={MACHINE_ID}.{OWNER_SECRET}");
    let machine_js = linked_glue(&c, &ephemeral, &format!("/m/{MACHINE_ID}"), &owner).await;
    let launcher_js = linked_glue(&c, &launcher, "/", "").await;
    assert!(
        launcher_js.contains("LaunchPanel_"),
        "the launcher's island"
    );
    assert!(!launcher_js.contains("MachineView_"), "no Machine island");
    assert!(machine_js.contains("MachineView_"), "the Machine's island");
    assert!(!machine_js.contains("LaunchPanel_"), "no launcher island");
}
