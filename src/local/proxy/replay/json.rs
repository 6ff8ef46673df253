//! The JSON form of a replay (`application/vnd.fly.replay+json`), with its transforms of path
//! and headers and its cache object.

use super::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JsonReplay {
    instance: Option<String>,
    prefer_instance: Option<String>,
    region: Option<JsonRegions>,
    app: Option<String>,
    elsewhere: Option<bool>,
    state: Option<String>,
    timeout: Option<String>,
    fallback: Option<String>,
    transform: Option<JsonTransform>,
    cache: Option<JsonCache>,
    /// Fly's page says "set the JSON field `allow_bypass`" without saying where; accepted
    /// here and inside `cache`.
    allow_bypass: Option<bool>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
pub(super) enum JsonRegions {
    /// Fly's form: `"iad,us"`.
    List(String),
    /// Also accepted (undocumented): `["iad", "us"]`.
    Array(Vec<String>),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JsonTransform {
    path: Option<String>,
    #[serde(default)]
    delete_headers: Vec<String>,
    #[serde(default)]
    set_headers: Vec<JsonHeader>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JsonHeader {
    name: String,
    value: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JsonCache {
    prefix: Option<String>,
    ttl: Option<u64>,
    #[serde(default)]
    invalidate: bool,
    allow_bypass: Option<bool>,
}

/// Parses the JSON form (a body of type `application/vnd.fly.replay+json`).
pub fn parse_json(body: &[u8]) -> Result<Replay, ReplayError> {
    let json: JsonReplay =
        serde_json::from_slice(body).map_err(|e| ReplayError::Json(e.to_string()))?;
    let mut replay = Replay::default();
    let strings = [
        ("instance", json.instance),
        ("prefer_instance", json.prefer_instance),
        ("app", json.app),
        ("state", json.state),
        ("timeout", json.timeout),
        ("fallback", json.fallback),
    ];
    for (name, value) in strings {
        if let Some(value) = value {
            set_field(&mut replay, name, &value)?;
        }
    }
    match json.region {
        Some(JsonRegions::List(list)) => replay.regions = parse_region_list(&list)?,
        Some(JsonRegions::Array(items)) => replay.regions = parse_region_list(&items.join(","))?,
        None => {}
    }
    replay.elsewhere = json.elsewhere.unwrap_or(false);
    if let Some(transform) = json.transform {
        replay.transform = Some(parse_transform(transform)?);
    }
    if let Some(cache) = json.cache {
        replay.cache = if cache.invalidate {
            Some(CacheDirective::Invalidate)
        } else {
            let prefix = cache.prefix.ok_or(ReplayError::Value {
                field: "cache.prefix",
                reason: "required unless invalidate is true".into(),
            })?;
            let ttl = cache.ttl.ok_or(ReplayError::Value {
                field: "cache.ttl",
                reason: "required unless invalidate is true".into(),
            })?;
            let allow_bypass = cache.allow_bypass.or(json.allow_bypass).unwrap_or(false);
            cache_set(CachePattern::parse(&prefix)?, ttl, allow_bypass)?
        };
    }
    let has_target = replay.instance.is_some()
        || replay.prefer_instance.is_some()
        || !replay.regions.is_empty()
        || replay.app.is_some()
        || replay.elsewhere
        || replay.state.is_some()
        || replay.transform.is_some()
        || replay.cache.is_some();
    if !has_target {
        return Err(ReplayError::Empty);
    }
    check(&replay)?;
    Ok(replay)
}

/// Headers a transform may not touch: the proxy's own (`fly-*`, so that no app can forge
/// `fly-replay-src` for another) and those that frame the request. Undocumented on Fly.
pub(super) fn is_reserved_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("fly-")
        || matches!(
            name,
            "host"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "upgrade"
                | "te"
                | "trailer"
                | "keep-alive"
        )
}

pub(super) fn parse_transform(json: JsonTransform) -> Result<Transform, ReplayError> {
    let bad = |field: &'static str, reason: String| ReplayError::Value { field, reason };
    let path = match json.path {
        Some(path) if path.starts_with('/') => Some(
            PathAndQuery::try_from(path.as_str())
                .map_err(|e| bad("transform.path", e.to_string()))?,
        ),
        Some(_) => {
            return Err(bad("transform.path", "must start with '/'".into()));
        }
        None => None,
    };
    let header_name = |field, name: &str| {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(field, e.to_string()))?;
        if is_reserved_header(&name) {
            return Err(bad(field, format!("{name} is reserved to the proxy")));
        }
        Ok(name)
    };
    let delete_headers = json
        .delete_headers
        .iter()
        .map(|name| header_name("transform.delete_headers", name))
        .collect::<Result<_, _>>()?;
    let set_headers = json
        .set_headers
        .iter()
        .map(|h| {
            let name = header_name("transform.set_headers", &h.name)?;
            let value = HeaderValue::from_str(&h.value)
                .map_err(|e| bad("transform.set_headers", e.to_string()))?;
            Ok((name, value))
        })
        .collect::<Result<_, _>>()?;
    Ok(Transform {
        path,
        delete_headers,
        set_headers,
    })
}
