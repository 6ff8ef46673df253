//! Fly's replay cache: replay decisions the proxy remembers so that later requests go straight
//! to the target without bothering the Machine that would replay them.
//!
//! Two kinds, as Fly documents them: path-based (the replaying Machine sends
//! `fly-replay-cache: [host]/prefix/*` and a TTL) and session-based (the service config's
//! `http_options.replay_cache` rules: cache per value of a cookie or header). Either can be
//! invalidated by a Machine answering `fly-replay-cache: invalidate`, and entries whose target
//! Machine is gone are dropped. The cache is only a hint: a hit whose target cannot be
//! reached is forgotten and the request load-balanced as if there had been no entry.

use super::replay::{path_has_prefix, CachePattern, RegionChoice, Replay};
use crate::fly::MachineId;
use http::{header::COOKIE, HeaderMap, HeaderName};
use serde_json::Value;
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Past this many entries, expired ones are purged, and if that is not enough the cache is
/// emptied: it is a hint, and an unbounded map would let clients grow it without limit.
const MAX_ENTRIES: usize = 100_000;

/// Where a cached replay sends a request: the target part of the replay that created it
/// (`state`, `timeout`, `fallback` and transforms never apply to cache hits).
#[derive(Debug, Clone, PartialEq)]
pub struct CachedRoute {
    pub instance: Option<MachineId>,
    pub prefer_instance: Option<MachineId>,
    pub regions: Vec<RegionChoice>,
    /// The app the replay targeted (resolved: the replaying Machine's own when it named none).
    pub app: String,
    /// For `elsewhere=true`: the Machine that replayed.
    pub exclude: Option<MachineId>,
}

impl CachedRoute {
    pub fn of(replay: &Replay, app: &str, source: MachineId) -> CachedRoute {
        CachedRoute {
            instance: replay.instance,
            prefer_instance: replay.prefer_instance,
            regions: replay.regions.clone(),
            app: app.to_owned(),
            exclude: replay.elsewhere.then_some(source),
        }
    }

    /// The Machine this route depends on, if it names one.
    fn machine(&self) -> Option<MachineId> {
        self.instance.or(self.prefer_instance)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    route: CachedRoute,
    expires: Instant,
    allow_bypass: bool,
}

/// Which cookie or header a session rule keys on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionSource {
    Cookie(String),
    Header(HeaderName),
}

/// One `http_options.replay_cache` rule of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRule {
    /// From a `path_prefix` like `api.example.com/api`; `None` for any host.
    pub host: Option<String>,
    /// Without a trailing `/`; empty for `/`.
    pub path_prefix: String,
    pub ttl: Duration,
    pub source: SessionSource,
    /// fly.toml's `allow_bypass`: clients may skip the entry with
    /// `fly-replay-cache-control: skip`.
    pub allow_bypass: bool,
}

impl SessionRule {
    /// Reads a rule as the Machine config carries it:
    /// `{"path_prefix": "/", "ttl_seconds": 300, "type": "cookie", "name": "session_id"}`.
    pub fn parse(json: &Value) -> Result<SessionRule, String> {
        let field = |name: &str| json.get(name).ok_or(format!("{name} is missing"));
        let prefix = field("path_prefix")?
            .as_str()
            .ok_or("path_prefix is not a string")?;
        let (host, path) = match prefix.find('/') {
            Some(0) => (None, prefix),
            Some(i) => (Some(prefix[..i].to_ascii_lowercase()), &prefix[i..]),
            None => return Err("path_prefix is [host]/path".into()),
        };
        let ttl = field("ttl_seconds")?
            .as_u64()
            .filter(|t| *t > 0)
            .ok_or("ttl_seconds is not a positive integer")?;
        let name = field("name")?.as_str().ok_or("name is not a string")?;
        let source = match field("type")?.as_str() {
            Some("cookie") if !name.is_empty() => SessionSource::Cookie(name.to_owned()),
            Some("header") => SessionSource::Header(
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?,
            ),
            _ => return Err("type is cookie or header, with a name".into()),
        };
        Ok(SessionRule {
            host,
            path_prefix: path.trim_end_matches('/').to_owned(),
            ttl: Duration::from_secs(ttl),
            source,
            allow_bypass: json
                .get("allow_bypass")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    fn matches(&self, host: &str, path: &str) -> bool {
        self.host.as_deref().is_none_or(|h| h == host) && path_has_prefix(path, &self.path_prefix)
    }
}

/// The rule that applies to a request: the matching rule with the longest path prefix (Fly:
/// "When multiple rules match, the longest matching path takes precedence").
pub fn rule_for<'a>(rules: &'a [SessionRule], host: &str, path: &str) -> Option<&'a SessionRule> {
    rules
        .iter()
        .filter(|r| r.matches(host, path))
        .max_by_key(|r| (r.path_prefix.len(), r.host.is_some()))
}

/// The session a request belongs to under `rule`, when it carries the cookie or header.
pub fn session_key(rule: &SessionRule, host: &str, headers: &HeaderMap) -> Option<SessionKey> {
    let value = match &rule.source {
        SessionSource::Header(name) => headers.get(name)?.to_str().ok()?.to_owned(),
        SessionSource::Cookie(name) => cookie(headers, name)?.to_owned(),
    };
    if value.is_empty() {
        return None;
    }
    Some(SessionKey {
        host: host.to_owned(),
        rule: rule.clone(),
        value,
    })
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// One visitor's session under one rule. The value may be a secret (a session cookie): it is
/// kept in memory only and never logged.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    host: String,
    rule: SessionRule,
    value: String,
}

impl std::hash::Hash for SessionRule {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.host.hash(state);
        self.path_prefix.hash(state);
        match &self.source {
            SessionSource::Cookie(name) => ("cookie", name.as_str()).hash(state),
            SessionSource::Header(name) => ("header", name.as_str()).hash(state),
        }
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKey")
            .field("host", &self.host)
            .field("rule", &self.rule.path_prefix)
            .finish_non_exhaustive()
    }
}

/// What a request finds in the cache.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    Miss,
    Hit(CachedRoute),
    /// There is an entry, it allows bypass, and the client asked to skip it.
    Bypass,
}

/// The cache itself, shared by every request of one proxy.
#[derive(Debug, Default)]
pub struct ReplayCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Host (no port) -> path prefix -> entry. Nested so that a lookup walks the request
    /// path's prefixes with borrowed strings.
    paths: HashMap<String, HashMap<String, Entry>>,
    sessions: HashMap<SessionKey, Entry>,
    len: usize,
}

impl ReplayCache {
    /// Cheap enough for every request: lets the common uncached case skip key building.
    pub fn is_empty(&self) -> bool {
        self.lock().len == 0
    }

    /// The cached route for a request to `host` (no port) and `path`, with its session under
    /// the app's rules. Session entries win over path entries (undocumented on Fly; a session
    /// is the more specific key). `skip` is the client's `fly-replay-cache-control: skip`.
    pub fn lookup(
        &self,
        host: &str,
        path: &str,
        session: Option<&SessionKey>,
        skip: bool,
        now: Instant,
    ) -> Lookup {
        let mut inner = self.lock();
        if inner.len == 0 {
            return Lookup::Miss;
        }
        if let Some(key) = session {
            match inner.sessions.get(key) {
                Some(entry) if entry.expires > now => return Self::found(entry, skip),
                Some(_) => {
                    inner.sessions.remove(key);
                    inner.len -= 1;
                }
                None => {}
            }
        }
        let Some(prefixes) = inner.paths.get_mut(host) else {
            return Lookup::Miss;
        };
        let mut prefix = path.trim_end_matches('/');
        loop {
            if let Some(entry) = prefixes.get(prefix) {
                if entry.expires > now {
                    return Self::found(entry, skip);
                }
                prefixes.remove(prefix);
                inner.len -= 1;
                return Lookup::Miss;
            }
            match prefix.rfind('/') {
                Some(i) => prefix = &prefix[..i],
                None => return Lookup::Miss,
            }
        }
    }

    fn found(entry: &Entry, skip: bool) -> Lookup {
        if skip && entry.allow_bypass {
            Lookup::Bypass
        } else {
            Lookup::Hit(entry.route.clone())
        }
    }

    /// Remembers a path-based replay for `host` (no port).
    pub fn insert_path(
        &self,
        host: &str,
        pattern: &CachePattern,
        route: CachedRoute,
        ttl: Duration,
        allow_bypass: bool,
        now: Instant,
    ) {
        let entry = Entry {
            route,
            expires: now + ttl,
            allow_bypass,
        };
        let mut inner = self.lock();
        inner.make_room(now);
        let host = pattern.host.as_deref().unwrap_or(host);
        let old = inner
            .paths
            .entry(host.to_owned())
            .or_default()
            .insert(pattern.prefix.clone(), entry);
        if old.is_none() {
            inner.len += 1;
        }
    }

    /// Remembers a session-based replay.
    pub fn insert_session(&self, key: SessionKey, route: CachedRoute, now: Instant) {
        let entry = Entry {
            expires: now + key.rule.ttl,
            allow_bypass: key.rule.allow_bypass,
            route,
        };
        let mut inner = self.lock();
        inner.make_room(now);
        if inner.sessions.insert(key, entry).is_none() {
            inner.len += 1;
        }
    }

    /// Drops the entries a request to `host` and `path` (with `session`) would use: Fly's
    /// "Invalidate the cache for the current route", also used when a hit's target is gone.
    pub fn invalidate(&self, host: &str, path: &str, session: Option<&SessionKey>) {
        let mut inner = self.lock();
        if let Some(key) = session {
            if inner.sessions.remove(key).is_some() {
                inner.len -= 1;
            }
        }
        let mut removed = 0;
        if let Some(prefixes) = inner.paths.get_mut(host) {
            let before = prefixes.len();
            prefixes.retain(|prefix, _| !path_has_prefix(path, prefix));
            removed = before - prefixes.len();
        }
        inner.len -= removed;
    }

    /// Drops every entry whose target Machine is gone.
    pub fn retain_machines(&self, alive: impl Fn(MachineId) -> bool) {
        let mut inner = self.lock();
        if inner.len == 0 {
            return;
        }
        let keep = |e: &Entry| e.route.machine().is_none_or(&alive);
        inner.sessions.retain(|_, e| keep(e));
        for prefixes in inner.paths.values_mut() {
            prefixes.retain(|_, e| keep(e));
        }
        inner.paths.retain(|_, p| !p.is_empty());
        inner.len = inner.sessions.len() + inner.paths.values().map(HashMap::len).sum::<usize>();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("replay cache lock")
    }
}

impl Inner {
    fn make_room(&mut self, now: Instant) {
        if self.len < MAX_ENTRIES {
            return;
        }
        self.sessions.retain(|_, e| e.expires > now);
        for prefixes in self.paths.values_mut() {
            prefixes.retain(|_, e| e.expires > now);
        }
        self.paths.retain(|_, p| !p.is_empty());
        self.len = self.sessions.len() + self.paths.values().map(HashMap::len).sum::<usize>();
        if self.len >= MAX_ENTRIES {
            *self = Inner::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(s: &str) -> MachineId {
        MachineId::parse(s).unwrap()
    }

    fn to(machine: &str) -> CachedRoute {
        CachedRoute {
            instance: Some(id(machine)),
            prefer_instance: None,
            regions: Vec::new(),
            app: "app".into(),
            exclude: None,
        }
    }

    const B: &str = "0000000000000b";
    const C: &str = "0000000000000c";

    #[test]
    fn path_entries_match_the_longest_prefix_until_they_expire() {
        let cache = ReplayCache::default();
        let now = Instant::now();
        assert!(cache.is_empty());
        let ttl = Duration::from_secs(60);
        cache.insert_path(
            "a.localhost",
            &CachePattern::parse("/m/*").unwrap(),
            to(B),
            ttl,
            false,
            now,
        );
        cache.insert_path(
            "a.localhost",
            &CachePattern::parse("/m/c/*").unwrap(),
            to(C),
            ttl,
            false,
            now,
        );
        assert_eq!(
            cache.lookup("a.localhost", "/m/c/x", None, false, now),
            Lookup::Hit(to(C))
        );
        assert_eq!(
            cache.lookup("a.localhost", "/m/cd", None, false, now),
            Lookup::Hit(to(B))
        );
        assert_eq!(
            cache.lookup("a.localhost", "/m", None, false, now),
            Lookup::Hit(to(B))
        );
        assert_eq!(
            cache.lookup("a.localhost", "/n", None, false, now),
            Lookup::Miss
        );
        assert_eq!(
            cache.lookup("b.localhost", "/m/c", None, false, now),
            Lookup::Miss
        );
        let later = now + Duration::from_secs(61);
        assert_eq!(
            cache.lookup("a.localhost", "/m/c/x", None, false, later),
            Lookup::Miss
        );
    }

    #[test]
    fn a_root_pattern_covers_every_path() {
        let cache = ReplayCache::default();
        let now = Instant::now();
        cache.insert_path(
            "h",
            &CachePattern::parse("/*").unwrap(),
            to(B),
            Duration::from_secs(10),
            false,
            now,
        );
        assert_eq!(cache.lookup("h", "/", None, false, now), Lookup::Hit(to(B)));
        assert_eq!(
            cache.lookup("h", "/a/b", None, false, now),
            Lookup::Hit(to(B))
        );
    }

    #[test]
    fn bypass_needs_both_the_entry_and_the_client() {
        let cache = ReplayCache::default();
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        cache.insert_path(
            "h",
            &CachePattern::parse("/open/*").unwrap(),
            to(B),
            ttl,
            true,
            now,
        );
        cache.insert_path(
            "h",
            &CachePattern::parse("/closed/*").unwrap(),
            to(B),
            ttl,
            false,
            now,
        );
        assert_eq!(
            cache.lookup("h", "/open/x", None, true, now),
            Lookup::Bypass
        );
        assert_eq!(
            cache.lookup("h", "/open/x", None, false, now),
            Lookup::Hit(to(B))
        );
        assert_eq!(
            cache.lookup("h", "/closed/x", None, true, now),
            Lookup::Hit(to(B))
        );
    }

    fn rule(prefix: &str, kind: &str, name: &str) -> SessionRule {
        SessionRule::parse(
            &json!({"path_prefix": prefix, "ttl_seconds": 300, "type": kind, "name": name}),
        )
        .unwrap()
    }

    #[test]
    fn session_rules_parse_and_pick_the_longest_prefix() {
        let rules = vec![
            rule("/", "cookie", "pin"),
            rule("/api", "header", "Authorization"),
        ];
        assert_eq!(rule_for(&rules, "h", "/page").unwrap().path_prefix, "");
        assert_eq!(rule_for(&rules, "h", "/api/x").unwrap().path_prefix, "/api");
        let hosted = vec![rule("other.localhost/", "cookie", "pin")];
        assert!(rule_for(&hosted, "h", "/").is_none());
        for bad in [
            json!({"path_prefix": "/", "ttl_seconds": 0, "type": "cookie", "name": "x"}),
            json!({"path_prefix": "/", "ttl_seconds": 10, "type": "query", "name": "x"}),
            json!({"path_prefix": "/", "ttl_seconds": 10, "type": "cookie", "name": ""}),
            json!({"path_prefix": "nohost", "ttl_seconds": 10, "type": "cookie", "name": "x"}),
            json!({"ttl_seconds": 10, "type": "cookie", "name": "x"}),
        ] {
            assert!(SessionRule::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn session_entries_are_per_cookie_value_and_invalidate() {
        let cache = ReplayCache::default();
        let now = Instant::now();
        let pin = rule("/", "cookie", "pin");
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "a=1; pin=v1".parse().unwrap());
        let v1 = session_key(&pin, "h", &headers).unwrap();
        headers.insert(COOKIE, "pin=v2".parse().unwrap());
        let v2 = session_key(&pin, "h", &headers).unwrap();
        assert!(session_key(&pin, "h", &HeaderMap::new()).is_none());
        cache.insert_session(v1.clone(), to(B), now);
        assert_eq!(
            cache.lookup("h", "/x", Some(&v1), false, now),
            Lookup::Hit(to(B))
        );
        assert_eq!(cache.lookup("h", "/x", Some(&v2), false, now), Lookup::Miss);
        cache.invalidate("h", "/x", Some(&v1));
        assert_eq!(cache.lookup("h", "/x", Some(&v1), false, now), Lookup::Miss);
        assert!(cache.is_empty());
        assert!(
            !format!("{v1:?}").contains("v1"),
            "a session value is never printed"
        );
    }

    #[test]
    fn invalidation_and_gone_machines_drop_entries() {
        let cache = ReplayCache::default();
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        cache.insert_path(
            "h",
            &CachePattern::parse("/m/b/*").unwrap(),
            to(B),
            ttl,
            false,
            now,
        );
        cache.insert_path(
            "h",
            &CachePattern::parse("/m/c/*").unwrap(),
            to(C),
            ttl,
            false,
            now,
        );
        cache.invalidate("h", "/m/b/page", None);
        assert_eq!(
            cache.lookup("h", "/m/b/page", None, false, now),
            Lookup::Miss
        );
        assert_eq!(
            cache.lookup("h", "/m/c/page", None, false, now),
            Lookup::Hit(to(C))
        );
        cache.retain_machines(|m| m != id(C));
        assert_eq!(
            cache.lookup("h", "/m/c/page", None, false, now),
            Lookup::Miss
        );
        assert!(cache.is_empty());
    }
}
