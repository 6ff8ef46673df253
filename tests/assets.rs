//! The bundle under `/pkg` as `make build` leaves it: content-hashed names linked by the pages,
//! served precompressed and `immutable`; the plain names still answer, revalidated.
#![cfg(feature = "ssr")]

mod support;

use reqwest::header;
use support::Flyby;

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
    let html = c
        .get(server.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let links = pkg_links(&html);
    for ext in [".css", ".js", ".wasm"] {
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
