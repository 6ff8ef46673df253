//! The `fly-replay` vocabulary, as pure functions: what a Machine may answer (the header form
//! and the `application/vnd.fly.replay+json` form), the path-based replay cache directives that
//! ride along, and what the proxy tells the next Machine (`fly-replay-src`,
//! `fly-replay-failed`). Nothing here touches a socket, so every rule is unit-tested.
//!
//! Source: Fly's docs, networking/dynamic-request-routing ("Dynamic Request Routing with
//! fly-replay"). Where Fly leaves a detail open, the choice made here is
//! marked "undocumented" and leans strict: a local platform that accepts what Fly might refuse
//! would hide an app's bug until production.

use crate::fly::{MachineId, RegionCode};
use http::{uri::PathAndQuery, HeaderName, HeaderValue};
use std::{borrow::Cow, fmt, time::Duration};

/// The header a Machine answers with to have its request replayed.
pub const FLY_REPLAY: &str = "fly-replay";
/// The content type of the JSON form of a replay.
pub const REPLAY_JSON_CONTENT_TYPE: &str = "application/vnd.fly.replay+json";
/// The minimum TTL of a path-based cache entry (Fly: "The TTL needs to be a minimum of 10
/// seconds").
pub const MIN_CACHE_TTL: Duration = Duration::from_secs(10);
/// Bounds a `state` so that a Machine cannot make the proxy copy megabytes into every replay.
/// Undocumented on Fly; generous for any real use.
const MAX_STATE_LEN: usize = 4096;

/// A replay a Machine asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replay {
    /// `instance=`: exactly this Machine, or (after retries) an error or the fallback.
    pub instance: Option<MachineId>,
    /// `prefer_instance=`: this Machine if it can be reached, else any other that fits.
    pub prefer_instance: Option<MachineId>,
    /// `region=`: in order of preference; empty means no constraint.
    pub regions: Vec<RegionChoice>,
    /// `app=`: another app of the (single, local) organisation.
    pub app: Option<String>,
    /// `elsewhere=true`: not the Machine that answered.
    pub elsewhere: bool,
    /// `state=`: echoed to the target in `fly-replay-src`.
    pub state: Option<String>,
    /// `timeout=`: how long to keep trying the target.
    pub timeout: Option<Duration>,
    /// `fallback=`: where the request goes when the target cannot be reached.
    pub fallback: Option<Fallback>,
    /// JSON form only: path and header changes on the way to the target.
    pub transform: Option<Transform>,
    /// JSON form only (`cache{...}`); the header form carries it in separate headers, see
    /// [`parse_cache_headers`].
    pub cache: Option<CacheDirective>,
}

impl Replay {
    /// Why this replay may not be stored in the replay cache, path- or session-based, if it
    /// may not. Fly (networking/dynamic-request-routing, the replay cache's limitations): "The
    /// `state` field cannot be set ... Transformations ... cannot be defined ... The `timeout`
    /// and `fallback` fields cannot be set in the `fly-replay` intended to be cached".
    pub fn cache_obstacle(&self) -> Option<&'static str> {
        if self.state.is_some() {
            Some("state")
        } else if self.timeout.is_some() {
            Some("timeout")
        } else if self.fallback.is_some() {
            Some("fallback")
        } else if self.transform.is_some() {
            Some("transform")
        } else {
            None
        }
    }
}

/// What the proxy does with a replay a Machine answered with, by the facts of the exchange so
/// far (fly-proxy-cases: the fallback's answer, the 10-replay limit, the 1 MB body, the
/// target app).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Deliver the request again, where the replay says.
    Replay,
    /// The Machine answering a fallback may not replay again (PA03).
    FallbackReplayed,
    /// The chain already has its [`MAX_CHAIN`] replays (PA02).
    Limit,
    /// The request's body was too large to keep for another delivery (PA01).
    TooLarge,
    /// The replay names an app there is no such thing as (PA04).
    NoSuchApp,
}

/// The most replays one request may go through. Fly: "up to 10 times"; the 11th `fly-replay`
/// of one request is PA02.
pub const MAX_CHAIN: u32 = 10;

/// The facts [`next_step`] decides on.
#[derive(Debug, Clone, Copy)]
pub struct ChainFacts {
    /// The answer came from the Machine a fallback brought the request back to.
    pub from_fallback: bool,
    /// Replays already followed for this request.
    pub replays: u32,
    /// The body can be sent again.
    pub body_replayable: bool,
    /// The replay's target app (the replaying Machine's own when it names none) exists.
    pub app_exists: bool,
}

/// What to do with a replay: pure, so that its table is tested on its own.
pub fn next_step(facts: ChainFacts) -> NextStep {
    if facts.from_fallback {
        NextStep::FallbackReplayed
    } else if facts.replays >= MAX_CHAIN {
        NextStep::Limit
    } else if !facts.body_replayable {
        NextStep::TooLarge
    } else if !facts.app_exists {
        NextStep::NoSuchApp
    } else {
        NextStep::Replay
    }
}

/// `fallback=`: what happens when the replay target cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Back to the exact Machine that replayed; a proxy error if it is gone.
    ForceSelf,
    /// Back to that Machine, else any Machine of its app.
    PreferSelf,
}

/// One entry of a region list: a code or one of Fly's geographic aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionChoice {
    Code(RegionCode),
    Alias(RegionAlias),
}

impl RegionChoice {
    pub fn contains(self, region: RegionCode) -> bool {
        match self {
            RegionChoice::Code(code) => code == region,
            RegionChoice::Alias(alias) => alias.contains(region),
        }
    }
}

impl fmt::Display for RegionChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionChoice::Code(code) => f.write_str(code.as_str()),
            RegionChoice::Alias(alias) => f.write_str(alias.as_str()),
        }
    }
}

/// Fly's geographic aliases for `region` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionAlias {
    /// Earth: makes a list a preference instead of a hard target.
    Any,
    /// `us` and `usa`.
    Us,
    Na,
    Sa,
    Eu,
    Apac,
}

impl RegionAlias {
    fn parse(s: &str) -> Option<RegionAlias> {
        Some(match s {
            "any" => RegionAlias::Any,
            "us" | "usa" => RegionAlias::Us,
            "na" => RegionAlias::Na,
            "sa" => RegionAlias::Sa,
            "eu" => RegionAlias::Eu,
            "apac" => RegionAlias::Apac,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RegionAlias::Any => "any",
            RegionAlias::Us => "us",
            RegionAlias::Na => "na",
            RegionAlias::Sa => "sa",
            RegionAlias::Eu => "eu",
            RegionAlias::Apac => "apac",
        }
    }

    /// Fly names the aliases' areas but does not list their members (undocumented): these
    /// are the current regions by geography, plus retired codes a Machine record might carry.
    pub fn contains(self, region: RegionCode) -> bool {
        const US: &[&str] = &[
            "atl", "bos", "den", "dfw", "ewr", "iad", "lax", "mia", "ord", "phx", "sea", "sjc",
        ];
        const NA_ONLY: &[&str] = &["gdl", "qro", "yul", "yyz"];
        const SA: &[&str] = &["bog", "eze", "gig", "gru", "scl"];
        const EU: &[&str] = &["ams", "arn", "cdg", "fra", "lhr", "mad", "otp", "waw"];
        const APAC: &[&str] = &["bom", "hkg", "nrt", "sin", "syd"];
        let code = region.as_str();
        match self {
            RegionAlias::Any => true,
            RegionAlias::Us => US.contains(&code),
            RegionAlias::Na => US.contains(&code) || NA_ONLY.contains(&code),
            RegionAlias::Sa => SA.contains(&code),
            RegionAlias::Eu => EU.contains(&code),
            RegionAlias::Apac => APAC.contains(&code),
        }
    }
}

/// Whether a region list is a hard target. Fly: "a list is a hard target unless it ends in
/// `any`" (an `any` anywhere matches every region, so only the end position matters).
pub fn regions_are_hard(regions: &[RegionChoice]) -> bool {
    !regions.contains(&RegionChoice::Alias(RegionAlias::Any))
}

/// Parses a comma-separated list of region codes and aliases (`region=` of a replay,
/// `fly-prefer-region`, `fly-force-region`).
pub fn parse_region_list(s: &str) -> Result<Vec<RegionChoice>, ReplayError> {
    let mut out = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        let choice = if let Some(alias) = RegionAlias::parse(item) {
            RegionChoice::Alias(alias)
        } else {
            RegionChoice::Code(RegionCode::parse(item).map_err(|_| ReplayError::Value {
                field: "region",
                reason: format!("{item:?} is not a region code or alias"),
            })?)
        };
        out.push(choice);
    }
    Ok(out)
}

/// Path and header changes a JSON replay asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transform {
    /// Replaces the path and query.
    pub path: Option<PathAndQuery>,
    /// Removed before the target sees the request.
    pub delete_headers: Vec<HeaderName>,
    /// Set (replacing any of the same name) before the target sees the request.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
}

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

fn cache_set(
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

/// Why a replay answer is not one the proxy can follow (PA03).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("fly-replay is empty")]
    Empty,
    #[error("fly-replay is not a list of key=value pairs separated by ';': {0}")]
    Syntax(&'static str),
    #[error("unknown fly-replay field {0:?}")]
    UnknownField(String),
    #[error("fly-replay field {0:?} given twice")]
    Duplicate(String),
    #[error("fly-replay field {field}: {reason}")]
    Value { field: &'static str, reason: String },
    #[error("fly-replay JSON body: {0}")]
    Json(String),
}

/// One `key=value` of a `;`-separated header, the value unquoted.
#[derive(Debug, PartialEq)]
struct Field<'a> {
    key: &'a str,
    value: Cow<'a, str>,
    /// Fly requires a list of regions to be quoted; the parser needs to know.
    quoted: bool,
}

/// Splits `a=1;b="x;y";c=\"q\"` into fields. Quoted values may contain `;` and escape `"` or
/// `\` with a backslash.
fn fields(s: &str) -> Result<Vec<Field<'_>>, ReplayError> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        if let Some(r) = rest.strip_prefix(';') {
            // Tolerates `a=1;;b=2` and a trailing `;`: harmless, and some apps build the
            // header by joining parts.
            rest = r;
            continue;
        }
        let eq = rest
            .find(['=', ';'])
            .filter(|&i| rest.as_bytes()[i] == b'=')
            .ok_or(ReplayError::Syntax("a field has no '='"))?;
        let key = rest[..eq].trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(ReplayError::Syntax("a field name is empty or not a word"));
        }
        rest = rest[eq + 1..].trim_start();
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return Err(ReplayError::Syntax("unterminated quoted value")),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err(ReplayError::Syntax("unterminated quoted value")),
                }
            };
            rest = quoted[end + 1..].trim_start();
            if !(rest.is_empty() || rest.starts_with(';')) {
                return Err(ReplayError::Syntax("text after a quoted value"));
            }
            out.push(Field {
                key,
                value: Cow::Owned(value),
                quoted: true,
            });
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            let value = rest[..end].trim();
            if value.contains('"') {
                return Err(ReplayError::Syntax("a quote inside an unquoted value"));
            }
            rest = &rest[end..];
            out.push(Field {
                key,
                value: Cow::Borrowed(value),
                quoted: false,
            });
        }
    }
    Ok(out)
}

/// Writes `value` as is when it is a plain token, quoted (with `\` escapes) otherwise, so that
/// [`fields`] reads it back unchanged.
fn push_value(out: &mut String, value: &str) {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b'"' | b'\\' | b',' | b'='));
    if plain {
        out.push_str(value);
    } else {
        out.push('"');
        for c in value.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
}

/// Which fields a replay has set, to refuse duplicates.
#[derive(Default)]
struct Seen(u16);

impl Seen {
    fn mark(&mut self, field: &'static str) -> Result<(), ReplayError> {
        let bit = 1u16
            << FIELDS
                .iter()
                .position(|f| *f == field)
                .expect("known field");
        if self.0 & bit != 0 {
            return Err(ReplayError::Duplicate(field.to_owned()));
        }
        self.0 |= bit;
        Ok(())
    }
}

const FIELDS: &[&str] = &[
    "instance",
    "prefer_instance",
    "region",
    "app",
    "elsewhere",
    "state",
    "timeout",
    "fallback",
];

/// Parses the header form: `fly-replay: instance=...;region="a,b";...`.
///
/// Undocumented on Fly and strict here: unknown fields, duplicate fields, an unquoted list of
/// regions (Fly: "A comma-separated list of regions must be quoted") and both `instance` and
/// `prefer_instance` are refused.
pub fn parse_header(value: &str) -> Result<Replay, ReplayError> {
    let fields = fields(value)?;
    if fields.is_empty() {
        return Err(ReplayError::Empty);
    }
    let mut replay = Replay::default();
    let mut seen = Seen::default();
    for field in fields {
        let name = FIELDS
            .iter()
            .copied()
            .find(|f| f.eq_ignore_ascii_case(field.key))
            .ok_or_else(|| ReplayError::UnknownField(field.key.to_owned()))?;
        if name == "region" && !field.quoted && field.value.contains(',') {
            return Err(ReplayError::Value {
                field: "region",
                reason: "a list of regions must be quoted".into(),
            });
        }
        seen.mark(name)?;
        set_field(&mut replay, name, &field.value)?;
    }
    check(&replay)?;
    Ok(replay)
}

fn set_field(replay: &mut Replay, name: &'static str, value: &str) -> Result<(), ReplayError> {
    let bad = |reason: String| ReplayError::Value {
        field: name,
        reason,
    };
    match name {
        "instance" | "prefer_instance" => {
            let id = MachineId::parse(value).map_err(|e| bad(e.to_string()))?;
            if name == "instance" {
                replay.instance = Some(id);
            } else {
                replay.prefer_instance = Some(id);
            }
        }
        "region" => replay.regions = parse_region_list(value)?,
        "app" => {
            if !is_app_name(value) {
                return Err(bad(format!("{value:?} is not an app name")));
            }
            replay.app = Some(value.to_owned());
        }
        "elsewhere" => {
            replay.elsewhere = match value {
                "true" => true,
                "false" => false,
                _ => return Err(bad("true or false".into())),
            }
        }
        "state" => {
            if value.len() > MAX_STATE_LEN || HeaderValue::from_str(value).is_err() {
                return Err(bad(format!("at most {MAX_STATE_LEN} printable characters")));
            }
            replay.state = Some(value.to_owned());
        }
        "timeout" => {
            let timeout = humantime::parse_duration(value).map_err(|e| bad(e.to_string()))?;
            if timeout.is_zero() {
                return Err(bad("must be more than zero".into()));
            }
            replay.timeout = Some(timeout);
        }
        "fallback" => {
            replay.fallback = Some(match value {
                "force_self" => Fallback::ForceSelf,
                "prefer_self" => Fallback::PreferSelf,
                _ => return Err(bad("force_self or prefer_self".into())),
            })
        }
        _ => unreachable!("FIELDS lists every field"),
    }
    Ok(())
}

fn check(replay: &Replay) -> Result<(), ReplayError> {
    if replay.instance.is_some() && replay.prefer_instance.is_some() {
        return Err(ReplayError::Value {
            field: "prefer_instance",
            reason: "cannot be combined with instance".into(),
        });
    }
    Ok(())
}

/// A Fly app name: lowercase letters, digits and dashes (what `fly apps create` accepts).
pub fn is_app_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonReplay {
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
enum JsonRegions {
    /// Fly's form: `"iad,us"`.
    List(String),
    /// Also accepted (undocumented): `["iad", "us"]`.
    Array(Vec<String>),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonTransform {
    path: Option<String>,
    #[serde(default)]
    delete_headers: Vec<String>,
    #[serde(default)]
    set_headers: Vec<JsonHeader>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonHeader {
    name: String,
    value: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonCache {
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
fn is_reserved_header(name: &HeaderName) -> bool {
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

fn parse_transform(json: JsonTransform) -> Result<Transform, ReplayError> {
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

/// What a replayed request tells its target: `fly-replay-src`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaySrc {
    /// The Machine that answered with the replay.
    pub instance: MachineId,
    /// That Machine's region.
    pub region: RegionCode,
    /// When the replay happened, in microseconds since the Unix epoch.
    pub t_micros: u64,
    /// The replay's `state`, verbatim.
    pub state: Option<String>,
}

impl ReplaySrc {
    /// `instance=<id>;region=<code>;t=<µs>[;state=<state>]`. A state that is not a plain token
    /// is quoted (undocumented on Fly, which shows only plain states).
    pub fn to_header(&self) -> String {
        let mut out = String::with_capacity(64);
        out.push_str("instance=");
        out.push_str(self.instance.as_str());
        out.push_str(";region=");
        out.push_str(self.region.as_str());
        out.push_str(";t=");
        out.push_str(&self.t_micros.to_string());
        if let Some(state) = &self.state {
            out.push_str(";state=");
            push_value(&mut out, state);
        }
        out
    }

    pub fn parse(s: &str) -> Result<ReplaySrc, ReplayError> {
        let (mut instance, mut region, mut t, mut state) = (None, None, None, None);
        for field in fields(s)? {
            let value = field.value;
            let bad = |field: &'static str| ReplayError::Value {
                field,
                reason: format!("{value:?}"),
            };
            match field.key {
                "instance" => {
                    instance = Some(MachineId::parse(&value).map_err(|_| bad("instance"))?)
                }
                "region" => region = Some(RegionCode::parse(&value).map_err(|_| bad("region"))?),
                "t" => t = Some(value.parse::<u64>().map_err(|_| bad("t"))?),
                "state" => state = Some(value.into_owned()),
                other => return Err(ReplayError::UnknownField(other.to_owned())),
            }
        }
        let missing = |field: &'static str| ReplayError::Value {
            field,
            reason: "missing".into(),
        };
        Ok(ReplaySrc {
            instance: instance.ok_or_else(|| missing("instance"))?,
            region: region.ok_or_else(|| missing("region"))?,
            t_micros: t.ok_or_else(|| missing("t"))?,
            state,
        })
    }
}

/// Why a replay could not reach its target (`reason=` of `fly-replay-failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The replay's `timeout` (or the proxy's default) ran out.
    Timeout,
    /// Every attempt failed to connect.
    RetriesExhausted,
    /// No Machine fits the target at all.
    NoCandidate,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Timeout => "timeout",
            FailReason::RetriesExhausted => "retries_exhausted",
            FailReason::NoCandidate => "no_candidate",
        }
    }
}

/// What a fallback request tells the Machine that replayed: `fly-replay-failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayFailed {
    /// The Machine the replay targeted, when it named one.
    pub instance: Option<MachineId>,
    /// The app the replay targeted (the replaying Machine's own when it named none).
    pub app: String,
    /// The region(s) the replay targeted, as a list in `fly-replay` syntax, when it named any
    /// (or the region of the Machine it named).
    pub region: Option<String>,
    /// The Machine that answered with the replay (and gets the fallback).
    pub replay_source: MachineId,
    pub reason: FailReason,
    /// Time spent trying the target.
    pub elapsed_ms: u64,
}

impl ReplayFailed {
    /// `instance=..;app=..;region=..;replay_source=..;reason=..;elapsed_ms=..`, in Fly's order.
    /// Fields the replay did not name are left out (undocumented: Fly's one example has all).
    pub fn to_header(&self) -> String {
        let mut out = String::with_capacity(128);
        if let Some(instance) = self.instance {
            out.push_str("instance=");
            out.push_str(instance.as_str());
            out.push(';');
        }
        out.push_str("app=");
        out.push_str(&self.app);
        if let Some(region) = &self.region {
            out.push_str(";region=");
            push_value(&mut out, region);
        }
        out.push_str(";replay_source=");
        out.push_str(self.replay_source.as_str());
        out.push_str(";reason=");
        out.push_str(self.reason.as_str());
        out.push_str(";elapsed_ms=");
        out.push_str(&self.elapsed_ms.to_string());
        out
    }

    pub fn parse(s: &str) -> Result<ReplayFailed, ReplayError> {
        let (mut instance, mut app, mut region, mut source, mut reason, mut elapsed) =
            (None, None, None, None, None, None);
        for field in fields(s)? {
            let value = field.value;
            let bad = |field: &'static str| ReplayError::Value {
                field,
                reason: format!("{value:?}"),
            };
            match field.key {
                "instance" => {
                    instance = Some(MachineId::parse(&value).map_err(|_| bad("instance"))?)
                }
                "app" => app = Some(value.into_owned()),
                "region" => region = Some(value.into_owned()),
                "replay_source" => {
                    source = Some(MachineId::parse(&value).map_err(|_| bad("replay_source"))?)
                }
                "reason" => {
                    reason = Some(match value.as_ref() {
                        "timeout" => FailReason::Timeout,
                        "retries_exhausted" => FailReason::RetriesExhausted,
                        "no_candidate" => FailReason::NoCandidate,
                        _ => return Err(bad("reason")),
                    })
                }
                "elapsed_ms" => elapsed = Some(value.parse().map_err(|_| bad("elapsed_ms"))?),
                other => return Err(ReplayError::UnknownField(other.to_owned())),
            }
        }
        let missing = |field: &'static str| ReplayError::Value {
            field,
            reason: "missing".into(),
        };
        Ok(ReplayFailed {
            instance,
            app: app.ok_or_else(|| missing("app"))?,
            region,
            replay_source: source.ok_or_else(|| missing("replay_source"))?,
            reason: reason.ok_or_else(|| missing("reason"))?,
            elapsed_ms: elapsed.ok_or_else(|| missing("elapsed_ms"))?,
        })
    }
}

/// A region list back in `fly-replay` syntax (for `fly-replay-failed`).
pub fn region_list_string(regions: &[RegionChoice]) -> String {
    regions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_step_of_a_replay_follows_flys_rules_in_their_order() {
        let ok = ChainFacts {
            from_fallback: false,
            replays: 0,
            body_replayable: true,
            app_exists: true,
        };
        assert_eq!(next_step(ok), NextStep::Replay);
        assert_eq!(
            next_step(ChainFacts {
                replays: MAX_CHAIN - 1,
                ..ok
            }),
            NextStep::Replay
        );
        assert_eq!(
            next_step(ChainFacts {
                replays: MAX_CHAIN,
                ..ok
            }),
            NextStep::Limit
        );
        assert_eq!(
            next_step(ChainFacts {
                body_replayable: false,
                ..ok
            }),
            NextStep::TooLarge
        );
        assert_eq!(
            next_step(ChainFacts {
                app_exists: false,
                ..ok
            }),
            NextStep::NoSuchApp
        );
        // A fallback's answer may not replay at all, whatever else holds.
        let all_wrong = ChainFacts {
            from_fallback: true,
            replays: MAX_CHAIN,
            body_replayable: false,
            app_exists: false,
        };
        assert_eq!(next_step(all_wrong), NextStep::FallbackReplayed);
        // Then the limit before the body, and the body before the app.
        assert_eq!(
            next_step(ChainFacts {
                from_fallback: false,
                ..all_wrong
            }),
            NextStep::Limit
        );
        assert_eq!(
            next_step(ChainFacts {
                from_fallback: false,
                replays: 0,
                ..all_wrong
            }),
            NextStep::TooLarge
        );
    }

    const A: &str = "0123456789abcd";
    const B: &str = "fedcba98765432";

    fn id(s: &str) -> MachineId {
        MachineId::parse(s).unwrap()
    }

    fn code(s: &str) -> RegionChoice {
        RegionChoice::Code(RegionCode::parse(s).unwrap())
    }

    #[test]
    fn every_header_field_parses() {
        let r = parse_header(&format!(
            "instance={A}; region=\"syd,any\";app=other-app;elsewhere=true;state=abc;timeout=800ms;fallback=prefer_self"
        ))
        .unwrap();
        assert_eq!(r.instance, Some(id(A)));
        assert_eq!(
            r.regions,
            vec![code("syd"), RegionChoice::Alias(RegionAlias::Any)]
        );
        assert_eq!(r.app.as_deref(), Some("other-app"));
        assert!(r.elsewhere);
        assert_eq!(r.state.as_deref(), Some("abc"));
        assert_eq!(r.timeout, Some(Duration::from_millis(800)));
        assert_eq!(r.fallback, Some(Fallback::PreferSelf));
        assert!(!regions_are_hard(&r.regions));

        let r = parse_header(&format!("prefer_instance={B};fallback=force_self;")).unwrap();
        assert_eq!(r.prefer_instance, Some(id(B)));
        assert_eq!(r.fallback, Some(Fallback::ForceSelf));
        assert!(regions_are_hard(
            &parse_header("region=syd").unwrap().regions
        ));
        assert_eq!(
            parse_header("region=\"iad,us,eu\"").unwrap().regions,
            vec![
                code("iad"),
                RegionChoice::Alias(RegionAlias::Us),
                RegionChoice::Alias(RegionAlias::Eu)
            ]
        );
        assert_eq!(
            parse_header("state=\"a;b \\\"c\\\"\"")
                .unwrap()
                .state
                .as_deref(),
            Some("a;b \"c\"")
        );
    }

    #[test]
    fn invalid_headers_are_refused() {
        for bad in [
            "",
            "  ",
            ";",
            "instance",
            "instance=nope",
            &format!("instance={}", A.to_uppercase()),
            "region=syd,any",
            "region=\"syd,zz1\"",
            "region=\"syd",
            "region=\"syd\"x",
            "elsewhere=yes",
            "timeout=soon",
            "timeout=0s",
            "fallback=self",
            "app=Other",
            "app=",
            "colour=blue",
            "=x",
            &format!("instance={A};instance={B}"),
            &format!("instance={A};prefer_instance={B}"),
            "state=a\u{1}b",
            "st\"ate=x",
        ] {
            assert!(parse_header(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_json_form_carries_transform_and_cache() {
        let r = parse_json(
            format!(
                r#"{{"instance":"{A}","region":"iad,us","elsewhere":true,
                    "transform":{{"path":"/x?y=1","delete_headers":["cookie"],
                                 "set_headers":[{{"name":"x-h","value":"v"}}]}},
                    "cache":{{"prefix":"/m/*","ttl":60,"allow_bypass":true}}}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(r.instance, Some(id(A)));
        assert_eq!(r.regions.len(), 2);
        assert!(r.elsewhere);
        let t = r.transform.unwrap();
        assert_eq!(t.path.unwrap().as_str(), "/x?y=1");
        assert_eq!(t.delete_headers, vec![HeaderName::from_static("cookie")]);
        assert_eq!(t.set_headers[0].0, "x-h");
        assert_eq!(
            r.cache,
            Some(CacheDirective::Set {
                pattern: CachePattern {
                    host: None,
                    prefix: "/m".into()
                },
                ttl: Duration::from_secs(60),
                allow_bypass: true
            })
        );
        let r = parse_json(br#"{"app":"origin","cache":{"invalidate":true}}"#).unwrap();
        assert_eq!(r.cache, Some(CacheDirective::Invalidate));
        assert_eq!(
            parse_json(br#"{"region":["syd","any"]}"#)
                .unwrap()
                .regions
                .len(),
            2
        );
    }

    #[test]
    fn invalid_json_is_refused() {
        for bad in [
            &b"not json"[..],
            b"{}",
            b"{\"instance\":\"x\"}",
            b"{\"colour\":\"blue\"}",
            b"{\"transform\":{\"path\":\"no-slash\"}}",
            b"{\"transform\":{\"set_headers\":[{\"name\":\"fly-replay-src\",\"value\":\"x\"}]}}",
            b"{\"transform\":{\"delete_headers\":[\"host\"]}}",
            b"{\"transform\":{\"set_headers\":[{\"name\":\"x\",\"value\":\"a\\nb\"}]}}",
            b"{\"app\":\"a\",\"cache\":{\"prefix\":\"/x/*\",\"ttl\":5}}",
            b"{\"app\":\"a\",\"cache\":{\"ttl\":50}}",
            b"{\"elsewhere\":\"yes\"}",
        ] {
            assert!(
                parse_json(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn cache_headers_parse_with_their_minimum_ttl() {
        assert_eq!(parse_cache_headers(None, Some("60"), None), Ok(None));
        assert_eq!(
            parse_cache_headers(Some("invalidate"), None, None),
            Ok(Some(CacheDirective::Invalidate))
        );
        assert_eq!(
            parse_cache_headers(Some("Example.com/m/b/*"), Some("10"), Some("yes")),
            Ok(Some(CacheDirective::Set {
                pattern: CachePattern {
                    host: Some("example.com".into()),
                    prefix: "/m/b".into()
                },
                ttl: Duration::from_secs(10),
                allow_bypass: true
            }))
        );
        assert!(parse_cache_headers(Some("/m/*"), Some("9"), None).is_err());
        assert!(parse_cache_headers(Some("/m/*"), None, None).is_err());
        assert!(parse_cache_headers(Some("example.com:80/m/*"), Some("60"), None).is_err());
        assert!(parse_cache_headers(Some("m"), Some("60"), None).is_err());
        assert!(parse_cache_headers(Some("/m/*/x"), Some("60"), None).is_err());
    }

    #[test]
    fn cache_patterns_match_segment_wise() {
        let p = CachePattern::parse("/m/abc/*").unwrap();
        assert!(p.matches("x.localhost", "/m/abc"));
        assert!(p.matches("x.localhost", "/m/abc/"));
        assert!(p.matches("x.localhost", "/m/abc/d/e"));
        assert!(!p.matches("x.localhost", "/m/abcd"));
        assert!(!p.matches("x.localhost", "/m"));
        let all = CachePattern::parse("/*").unwrap();
        assert!(all.matches("h", "/") && all.matches("h", "/anything"));
        let hosted = CachePattern::parse("a.localhost/x").unwrap();
        assert!(hosted.matches("a.localhost", "/x/y"));
        assert!(!hosted.matches("b.localhost", "/x/y"));
        assert!(path_has_prefix("/api/x", "/api/"));
    }

    #[test]
    fn replay_src_has_fly_format_and_round_trips() {
        let src = ReplaySrc {
            instance: id(A),
            region: RegionCode::parse("ams").unwrap(),
            t_micros: 1_700_000_000_123_456,
            state: None,
        };
        assert_eq!(
            src.to_header(),
            format!("instance={A};region=ams;t=1700000000123456")
        );
        assert_eq!(ReplaySrc::parse(&src.to_header()), Ok(src.clone()));
        let with_state = ReplaySrc {
            state: Some("abc".into()),
            ..src.clone()
        };
        assert!(with_state.to_header().ends_with(";state=abc"));
        let odd = ReplaySrc {
            state: Some("a;b=\"c\"".into()),
            ..src
        };
        assert_eq!(ReplaySrc::parse(&odd.to_header()), Ok(odd));
        assert!(ReplaySrc::parse("instance=x;region=ams;t=1").is_err());
        assert!(ReplaySrc::parse(&format!("instance={A};t=1")).is_err());
    }

    #[test]
    fn replay_failed_has_fly_order_and_round_trips() {
        let failed = ReplayFailed {
            instance: Some(id(B)),
            app: "flyby-machines".into(),
            region: Some("syd,any".into()),
            replay_source: id(A),
            reason: FailReason::Timeout,
            elapsed_ms: 800,
        };
        assert_eq!(
            failed.to_header(),
            format!(
                "instance={B};app=flyby-machines;region=\"syd,any\";replay_source={A};reason=timeout;elapsed_ms=800"
            )
        );
        assert_eq!(ReplayFailed::parse(&failed.to_header()), Ok(failed));
        let bare = ReplayFailed {
            instance: None,
            app: "a".into(),
            region: None,
            replay_source: id(A),
            reason: FailReason::NoCandidate,
            elapsed_ms: 0,
        };
        assert_eq!(
            bare.to_header(),
            format!("app=a;replay_source={A};reason=no_candidate;elapsed_ms=0")
        );
        assert_eq!(ReplayFailed::parse(&bare.to_header()), Ok(bare));
    }

    #[test]
    fn aliases_cover_their_areas() {
        let r = |s| RegionCode::parse(s).unwrap();
        assert!(RegionAlias::Eu.contains(r("ams")));
        assert!(!RegionAlias::Eu.contains(r("iad")));
        assert!(RegionAlias::Us.contains(r("iad")) && !RegionAlias::Us.contains(r("yyz")));
        assert!(RegionAlias::Na.contains(r("yyz")));
        assert!(RegionAlias::Apac.contains(r("syd")));
        assert!(RegionAlias::Sa.contains(r("gru")));
        assert!(RegionAlias::Any.contains(r("jnb")));
        for region in crate::fly::REGIONS {
            let n = [
                RegionAlias::Na,
                RegionAlias::Sa,
                RegionAlias::Eu,
                RegionAlias::Apac,
            ]
            .iter()
            .filter(|a| a.contains(region.code()))
            .count();
            // Every current region is in exactly one continent alias, except Johannesburg.
            assert_eq!(n, usize::from(region.code != "jnb"), "{}", region.code);
        }
    }
}
