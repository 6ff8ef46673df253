//! What a launch learns from the request that starts it, checked at the edge into types that
//! cannot hold anything else: who the visitor is, which origin they came from and whether the
//! request came from that origin's own page, their edge region, and the launch's id.

use crate::fly::RegionCode;
use http::HeaderMap;
use std::{fmt, net::IpAddr};

/// Who a visitor is, for their launch budget and their hand-over: `Fly-Client-IP`, which
/// fly-proxy sets (never the socket address: that is fly-proxy's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VisitorKey(IpAddr);

impl VisitorKey {
    /// `None` without a valid `Fly-Client-IP`: the request did not come through fly-proxy.
    pub fn of(headers: &HeaderMap) -> Option<VisitorKey> {
        headers
            .get("fly-client-ip")?
            .to_str()
            .ok()?
            .parse()
            .ok()
            .map(VisitorKey)
    }
}

impl fmt::Display for VisitorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An origin a visitor used: a scheme and a host that can only be a host name (with a port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    https: bool,
    /// Lowercase letters, digits, `-`, `.`, `:`, `[`, `]`: nothing that could break out of a
    /// URL or a header.
    host: String,
}

impl Origin {
    /// The origin of the request: the scheme from `X-Forwarded-Proto` (fly-proxy), the host
    /// from `Host`; `None` without a Host, or with one that is not a host name.
    pub fn of(headers: &HeaderMap) -> Option<Origin> {
        let host = headers.get(http::header::HOST)?.to_str().ok()?;
        let valid = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
        if !valid {
            return None;
        }
        let https = headers
            .get("x-forwarded-proto")
            .is_some_and(|p| p.as_bytes() == b"https");
        Some(Origin {
            https,
            host: host.to_ascii_lowercase(),
        })
    }

    /// Whether cookies set for it must be `Secure`.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// CSRF: whether the request came from a page of this very origin (its `Origin` header,
    /// or, without one, `Sec-Fetch-Site: same-origin`).
    pub fn sent_from_itself(&self, headers: &HeaderMap) -> bool {
        match headers
            .get(http::header::ORIGIN)
            .and_then(|v| v.to_str().ok())
        {
            Some(sent) => sent.eq_ignore_ascii_case(&self.to_string()),
            None => headers
                .get("sec-fetch-site")
                .is_some_and(|v| v.as_bytes() == b"same-origin"),
        }
    }

    /// The same origin with the app's name swapped for another's:
    /// `http://flyby.example:3000` -> `http://flyby-machines.example:3000`; `None` when the
    /// host does not start with `app.`.
    pub fn swap_app(&self, app: &str, other: &str) -> Option<Origin> {
        let rest = self.host.strip_prefix(app)?.strip_prefix('.')?;
        Some(Origin {
            https: self.https,
            host: format!("{other}.{rest}"),
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.host)
    }
}

/// The edge region fly-proxy says the visitor came through (`Fly-Region`), if it is a region
/// code at all.
pub fn edge_region(headers: &HeaderMap) -> Option<RegionCode> {
    headers
        .get("fly-region")?
        .to_str()
        .ok()
        .and_then(|v| RegionCode::parse(v).ok())
}

/// A launch's id: 32 lowercase hex digits, minted here; the page holds it to follow its launch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LaunchId(String);

impl LaunchId {
    pub fn mint() -> LaunchId {
        LaunchId(hex::encode(rand::random::<[u8; 16]>()))
    }

    /// `None` for anything that is not an id this launcher could have minted.
    pub fn parse(text: &str) -> Option<LaunchId> {
        (text.len() == 32
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| LaunchId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn the_ephemeral_origin_swaps_the_app_name() {
        let origin = |h: &str, proto: &str| {
            Origin::of(&headers(&[("host", h), ("x-forwarded-proto", proto)])).unwrap()
        };
        let swapped = |o: Origin| o.swap_app("flyby", "flyby-machines").map(|o| o.to_string());
        assert_eq!(
            swapped(origin("flyby.fly.dev", "https")).as_deref(),
            Some("https://flyby-machines.fly.dev")
        );
        assert_eq!(
            swapped(origin("flyby.localhost:3000", "http")).as_deref(),
            Some("http://flyby-machines.localhost:3000")
        );
        assert_eq!(swapped(origin("evil.example", "http")), None);
        assert_eq!(swapped(origin("flybyx.example", "http")), None);
    }

    #[test]
    fn the_origin_comes_from_host_and_forwarded_proto() {
        let https = Origin::of(&headers(&[
            ("host", "Flyby.fly.dev"),
            ("x-forwarded-proto", "https"),
        ]))
        .unwrap();
        assert_eq!(https.to_string(), "https://flyby.fly.dev");
        assert!(https.is_https());
        let local = Origin::of(&headers(&[("host", "flyby.localhost:3000")])).unwrap();
        assert_eq!(local.to_string(), "http://flyby.localhost:3000");
        assert!(!local.is_https());
        assert_eq!(Origin::of(&headers(&[("host", "a\"b")])), None);
        assert_eq!(Origin::of(&headers(&[("host", "a/b")])), None);
        assert_eq!(Origin::of(&headers(&[])), None);
    }

    #[test]
    fn a_launch_must_be_same_origin() {
        let origin = Origin::of(&headers(&[("host", "flyby.localhost:3000")])).unwrap();
        let sent = |pairs: &[(&'static str, &str)]| origin.sent_from_itself(&headers(pairs));
        assert!(sent(&[("origin", "http://flyby.localhost:3000")]));
        assert!(sent(&[("origin", "HTTP://Flyby.localhost:3000")]));
        assert!(!sent(&[("origin", "http://evil.example")]));
        assert!(!sent(&[("origin", "https://flyby.localhost:3000")]));
        assert!(sent(&[("sec-fetch-site", "same-origin")]));
        assert!(!sent(&[("sec-fetch-site", "cross-site")]));
        assert!(!sent(&[]));
    }

    #[test]
    fn visitors_are_keyed_on_fly_client_ip_and_nothing_else() {
        let key = |v: &str| VisitorKey::of(&headers(&[("fly-client-ip", v)]));
        assert_eq!(key("203.0.113.7").unwrap().to_string(), "203.0.113.7");
        assert_eq!(key("2001:db8::1").unwrap().to_string(), "2001:db8::1");
        assert_eq!(key("not an ip"), None);
        assert_eq!(VisitorKey::of(&headers(&[])), None);
    }

    #[test]
    fn launch_ids_are_what_this_launcher_mints() {
        let id = LaunchId::mint();
        assert_eq!(LaunchId::parse(id.as_str()), Some(id.clone()));
        assert_ne!(LaunchId::mint(), id);
        for bad in ["", "xyz", &"A".repeat(32), &"a".repeat(31), &"0".repeat(33)] {
            assert_eq!(LaunchId::parse(bad), None, "{bad}");
        }
    }
}
