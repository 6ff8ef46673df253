//! The request as it goes on to a Machine: the headers fly-proxy adds (`Fly-Client-IP`,
//! `Fly-Region`, `X-Forwarded-*`, `Via`), the client's copies of them and its hop-by-hop
//! headers taken out, the local and routing headers read and consumed, and the request kept so
//! that it can be sent again (a replay, a fallback).

use super::*;

/// A request as the proxy sends it to Machines, kept to send it again on replay.
pub(super) struct Outgoing {
    pub(super) method: Method,
    pub(super) path_and_query: PathAndQuery,
    pub(super) headers: http::HeaderMap,
    pub(super) body: RequestBody,
}

impl Outgoing {
    /// The request for one Machine, with this hop's own headers on top; `None` when the body
    /// streamed to an earlier Machine and cannot be sent again.
    pub(super) fn to(
        &mut self,
        route: &Route,
        hop: &[(HeaderName, HeaderValue)],
    ) -> Option<Request<UpstreamBody>> {
        let body = self.body.take()?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(route.authority.clone());
        parts.path_and_query = Some(self.path_and_query.clone());
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path");
        let headers = request.headers_mut();
        *headers = self.headers.clone();
        for (name, value) in hop {
            headers.insert(name.clone(), value.clone());
        }
        Some(request)
    }

    /// A copy to send back to a Machine after a failed replay (buffered bodies only, which
    /// every replayed request has).
    pub(super) fn replay_copy(&self) -> Option<Outgoing> {
        Some(Outgoing {
            method: self.method.clone(),
            path_and_query: self.path_and_query.clone(),
            headers: self.headers.clone(),
            body: self.body.replay_copy()?,
        })
    }

    pub(super) fn apply(&mut self, transform: &Transform) {
        if let Some(path) = &transform.path {
            self.path_and_query = path.clone();
        }
        for name in &transform.delete_headers {
            self.headers.remove(name);
        }
        for (name, value) in &transform.set_headers {
            self.headers.insert(name.clone(), value.clone());
        }
    }
}

impl Proxy {
    pub(super) fn add_forwarding_headers(
        &self,
        headers: &mut http::HeaderMap,
        client_ip: IpAddr,
        edge: RegionCode,
    ) {
        let ip = HeaderValue::from_str(&client_ip.to_string()).expect("an address is ascii");
        // Appends the client to what it claims (several headers count as one list).
        let mut forwarded_for = Vec::new();
        for existing in headers.get_all("x-forwarded-for") {
            forwarded_for.extend_from_slice(existing.as_bytes());
            forwarded_for.extend_from_slice(b", ");
        }
        let forwarded_for = if forwarded_for.is_empty() {
            ip.clone()
        } else {
            forwarded_for.extend_from_slice(ip.as_bytes());
            HeaderValue::from_bytes(&forwarded_for).unwrap_or_else(|_| ip.clone())
        };
        let via = match headers.get(header::VIA) {
            Some(existing) => {
                let mut value = existing.as_bytes().to_vec();
                value.extend_from_slice(b", 2 fly.io");
                HeaderValue::from_bytes(&value).unwrap_or(HeaderValue::from_static("2 fly.io"))
            }
            // fly-platform.md: `Via: 2 fly.io` (the edge speaks HTTP/2 to the Machine's host).
            None => HeaderValue::from_static("2 fly.io"),
        };
        headers.insert("fly-client-ip", ip);
        headers.insert(
            "fly-region",
            if edge == self.edge_region {
                self.edge_region_value.clone()
            } else {
                HeaderValue::from_str(edge.as_str()).expect("ascii")
            },
        );
        headers.insert("fly-forwarded-port", self.port_value.clone());
        headers.insert("x-forwarded-for", forwarded_for);
        // Locally the proxy speaks plain HTTP; on Fly these say https for TLS clients.
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        headers.insert("x-forwarded-port", self.port_value.clone());
        headers.insert("x-forwarded-ssl", HeaderValue::from_static("off"));
        headers.insert(header::VIA, via);
    }
}

/// `<app>.localhost[:port]` -> (app, host without port), lowercase.
pub(super) fn app_of_host(host: &str) -> Option<(String, String)> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let app = name.strip_suffix(".localhost")?;
    replay::is_app_name(app).then(|| (app.to_owned(), name.clone()))
}

/// Removes header `name` and parses it; an unparsable value is the client's error.
pub(super) fn take_parsed<T>(
    headers: &mut http::HeaderMap,
    name: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, ProxyError> {
    let Some(value) = headers.remove(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|s| parse(s.trim()))
        .map(Some)
        .ok_or(ProxyError::BadHeader {
            header: name,
            reason: format!("{value:?} is not valid"),
        })
}

/// Reads (and removes) the client routing headers.
pub(super) fn client_routing(headers: &mut http::HeaderMap) -> Result<ClientRouting, ProxyError> {
    let instance = |s: &str| MachineId::parse(s).ok();
    let regions = |s: &str| replay::parse_region_list(s).ok();
    let force_instance = take_parsed(headers, "fly-force-instance-id", instance)?;
    let prefer_instance = take_parsed(headers, "fly-prefer-instance-id", instance)?;
    let force_region = take_parsed(headers, "fly-force-region", regions)?;
    let prefer_region = take_parsed(headers, "fly-prefer-region", regions)?;
    let skip_cache = headers
        .remove("fly-replay-cache-control")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"skip"));
    let regions = match (force_region, prefer_region) {
        (Some(hard), _) => hard,
        // Fly: "Falls back ... to the nearest region with healthy Machines".
        (None, Some(mut soft)) => {
            soft.push(RegionChoice::Alias(RegionAlias::Any));
            soft
        }
        (None, None) => Vec::new(),
    };
    Ok(ClientRouting {
        force_instance,
        prefer_instance,
        regions,
        skip_cache,
    })
}

/// A WebSocket (or other) upgrade: `Connection: upgrade` with an `Upgrade` header.
pub(super) fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Drops what a client may not tell a Machine: every `fly-*` header (only the proxy sets
/// them; the routing ones were consumed before), the local `flyby-local-*` headers, and the
/// hop-by-hop headers (kept for an upgrade, which must reach the Machine).
pub(super) fn sanitize(headers: &mut http::HeaderMap, upgrade: bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.to_str().unwrap_or("").split(',') {
            let token = token.trim();
            if token.is_empty()
                || ["keep-alive", "close", "upgrade"]
                    .iter()
                    .any(|t| token.eq_ignore_ascii_case(t))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                doomed.push(name);
            }
        }
    }
    for name in headers.keys() {
        let s = name.as_str();
        let hop = HOP_BY_HOP.contains(&s) && !(upgrade && matches!(s, "connection" | "upgrade"));
        if hop || s.starts_with("fly-") || s.starts_with("flyby-local-") {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The request's cookies as one string, for `wrong-first` to look for Machine ids in.
pub(super) fn cookie_text(headers: &http::HeaderMap) -> String {
    let mut out = String::new();
    for value in headers.get_all(header::COOKIE) {
        out.push_str(&String::from_utf8_lossy(value.as_bytes()));
        out.push(';');
    }
    out
}

/// Takes `flyby-local-edge=<region>` out of the query (the app never sees it): the region,
/// `None` without one, an error naming the parameter for a code that is not a region.
pub(super) fn take_edge_query(uri: &mut http::Uri) -> Result<Option<RegionCode>, ProxyError> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    let mut chosen = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((super::EDGE_REGION_QUERY, code)) => {
                chosen = Some(RegionCode::parse(code).map_err(|_| ProxyError::BadHeader {
                    header: super::EDGE_REGION_QUERY,
                    reason: format!("{code:?} is not a region code (three lowercase letters)"),
                })?);
            }
            _ => kept.push(pair),
        }
    }
    if chosen.is_none() {
        return Ok(None);
    }
    let path = uri.path();
    let rest = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = rest.parse().ok();
    *uri = http::Uri::from_parts(parts).map_err(|_| ProxyError::BadHeader {
        header: super::EDGE_REGION_QUERY,
        reason: "the rest of the URL does not parse".into(),
    })?;
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_query_is_taken_out_of_the_url_and_a_bad_code_refused() {
        let take = |url: &str| {
            let mut uri: http::Uri = url.parse().unwrap();
            take_edge_query(&mut uri).map(|edge| (edge.map(|e| e.to_string()), uri.to_string()))
        };
        assert_eq!(
            take("/?flyby-local-edge=syd").unwrap(),
            (Some("syd".into()), "/".into())
        );
        assert_eq!(
            take("/m/x?a=1&flyby-local-edge=gru&b=2").unwrap(),
            (Some("gru".into()), "/m/x?a=1&b=2".into())
        );
        assert_eq!(take("/?a=1").unwrap(), (None, "/?a=1".into()));
        assert_eq!(take("/").unwrap(), (None, "/".into()));
        assert!(matches!(
            take("/?flyby-local-edge=SYD1"),
            Err(ProxyError::BadHeader {
                header: "flyby-local-edge",
                ..
            })
        ));
    }

    #[test]
    fn hosts_name_apps_under_localhost() {
        assert_eq!(
            app_of_host("flyby.localhost:3000"),
            Some(("flyby".into(), "flyby.localhost".into()))
        );
        assert_eq!(
            app_of_host("Flyby-Machines.LOCALHOST."),
            Some(("flyby-machines".into(), "flyby-machines.localhost".into()))
        );
        for bad in [
            "localhost:3000",
            "127.0.0.1:3000",
            "a.b.localhost",
            "flyby.fly.dev",
            "",
            ".localhost",
        ] {
            assert_eq!(app_of_host(bad), None, "{bad}");
        }
    }

    #[test]
    fn clients_cannot_pass_fly_headers_or_hop_headers() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("fly-replay-src", "instance=0123456789abcd;region=ams;t=1"),
            ("fly-replay-failed", "x"),
            ("fly-replay-cache-status", "hit"),
            ("fly-client-ip", "1.2.3.4"),
            ("flyby-local-anything", "x"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "x"),
            ("transfer-encoding", "chunked"),
            ("cookie", "a=b"),
            ("x-kept", "y"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        sanitize(&mut headers, false);
        let mut names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["cookie", "x-kept"]);

        let mut upgrade = http::HeaderMap::new();
        upgrade.insert("connection", HeaderValue::from_static("Upgrade"));
        upgrade.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&upgrade));
        sanitize(&mut upgrade, true);
        assert_eq!(upgrade["connection"], "upgrade");
        assert_eq!(upgrade["upgrade"], "websocket");
    }

    #[test]
    fn routing_headers_are_consumed_and_validated() {
        let mut headers = http::HeaderMap::new();
        headers.insert("fly-prefer-region", HeaderValue::from_static("syd, eu"));
        headers.insert(
            "fly-prefer-instance-id",
            HeaderValue::from_static("0123456789abcd"),
        );
        headers.insert("fly-replay-cache-control", HeaderValue::from_static("skip"));
        let routing = client_routing(&mut headers).unwrap();
        assert!(headers.is_empty());
        assert_eq!(routing.regions.len(), 3, "a preference ends with any");
        assert!(routing.skip_cache);
        assert_eq!(routing.prefer_instance.unwrap().as_str(), "0123456789abcd");

        let mut headers = http::HeaderMap::new();
        headers.insert("fly-force-region", HeaderValue::from_static("syd"));
        assert!(replay::regions_are_hard(
            &client_routing(&mut headers).unwrap().regions
        ));

        let mut headers = http::HeaderMap::new();
        headers.insert("fly-force-instance-id", HeaderValue::from_static("zz"));
        assert!(matches!(
            client_routing(&mut headers),
            Err(ProxyError::BadHeader {
                header: "fly-force-instance-id",
                ..
            })
        ));
    }
}
