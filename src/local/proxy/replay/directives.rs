//! The path-based replay cache directives a Machine sends along with a replay (`fly-replay-cache`,
//! `fly-replay-cache-ttl-secs`, `fly-replay-cache-allow-bypass`), and the patterns they name.

use super::*;

/// A replay cache instruction from a Machine.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheDirective {
    /// Route requests matching `pattern` straight to this replay's target for `ttl`.
    Set {
        pattern: CachePattern,
        ttl: Duration,
        /// Clients may skip the entry with `fly-replay-cache-control: skip`.
        allow_bypass: bool,
    },
    /// Drop the cached route of the current request.
    Invalidate,
}

/// Where a path-based cache entry applies: an optional host (no port) and a path prefix that
/// "implicitly ends with a wildcard `/*`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePattern {
    /// Lowercase, without port; `None` means the request's own host.
    pub host: Option<String>,
    /// Without the trailing `/*` (`/m/abc/*` is `/m/abc`; `/*` is the empty string).
    pub prefix: String,
}

impl CachePattern {
    pub fn parse(s: &str) -> Result<CachePattern, ReplayError> {
        let bad = |reason: &str| ReplayError::Value {
            field: "fly-replay-cache",
            reason: reason.to_owned(),
        };
        let s = s.trim();
        let (host, path) = match s.find('/') {
            Some(0) => (None, s),
            Some(i) => (Some(&s[..i]), &s[i..]),
            None => return Err(bad("a pattern is [host]/path/*")),
        };
        if let Some(host) = host {
            if host.contains(':') {
                return Err(bad("the host of a pattern has no port"));
            }
            if !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                return Err(bad("the host of a pattern is a domain name"));
            }
        }
        let prefix = path.strip_suffix('*').unwrap_or(path);
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        if prefix.contains('*') || prefix.contains('?') || prefix.contains(char::is_whitespace) {
            return Err(bad("only a trailing /* wildcard is allowed"));
        }
        Ok(CachePattern {
            host: host.map(str::to_ascii_lowercase),
            prefix: prefix.to_owned(),
        })
    }

    /// Whether a request to `host` (no port) and `path` falls under this pattern.
    pub fn matches(&self, host: &str, path: &str) -> bool {
        self.host.as_deref().is_none_or(|h| h == host) && path_has_prefix(path, &self.prefix)
    }
}

/// `path` is `prefix` or below it, segment-wise (`/api` covers `/api` and `/api/x`, not
/// `/apix`). The empty prefix covers everything.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The path-based cache headers a Machine may send with a header-form `fly-replay`
/// (`fly-replay-cache`, `fly-replay-cache-ttl-secs`, `fly-replay-cache-allow-bypass`); `None`
/// when there is no `fly-replay-cache`.
pub fn parse_cache_headers(
    cache: Option<&str>,
    ttl_secs: Option<&str>,
    allow_bypass: Option<&str>,
) -> Result<Option<CacheDirective>, ReplayError> {
    let Some(cache) = cache else {
        return Ok(None);
    };
    if cache.trim().eq_ignore_ascii_case("invalidate") {
        return Ok(Some(CacheDirective::Invalidate));
    }
    let pattern = CachePattern::parse(cache)?;
    let ttl = ttl_secs
        .and_then(|t| t.trim().parse::<u64>().ok())
        .ok_or(ReplayError::Value {
            field: "fly-replay-cache-ttl-secs",
            reason: "a number of seconds is required with fly-replay-cache".into(),
        })?;
    let allow_bypass = allow_bypass.is_some_and(|v| v.trim().eq_ignore_ascii_case("yes"));
    cache_set(pattern, ttl, allow_bypass)
}

pub(super) fn cache_set(
    pattern: CachePattern,
    ttl_secs: u64,
    allow_bypass: bool,
) -> Result<Option<CacheDirective>, ReplayError> {
    let ttl = Duration::from_secs(ttl_secs);
    if ttl < MIN_CACHE_TTL {
        return Err(ReplayError::Value {
            field: "fly-replay-cache-ttl-secs",
            reason: format!("the minimum is {}", MIN_CACHE_TTL.as_secs()),
        });
    }
    Ok(Some(CacheDirective::Set {
        pattern,
        ttl,
        allow_bypass,
    }))
}
