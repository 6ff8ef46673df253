//! The header form of `fly-replay`: `field=value;field=value`, each field checked the way Fly
//! checks it (PA03 for anything else).

use super::*;

/// One `key=value` of a `;`-separated header, the value unquoted.
#[derive(Debug, PartialEq)]
pub(super) struct Field<'a> {
    pub(super) key: &'a str,
    pub(super) value: Cow<'a, str>,
    /// Fly requires a list of regions to be quoted; the parser needs to know.
    pub(super) quoted: bool,
}

/// Splits `a=1;b="x;y";c=\"q\"` into fields. Quoted values may contain `;` and escape `"` or
/// `\` with a backslash.
pub(super) fn fields(s: &str) -> Result<Vec<Field<'_>>, ReplayError> {
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
pub(super) fn push_value(out: &mut String, value: &str) {
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
pub(super) struct Seen(u16);

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

pub(super) const FIELDS: &[&str] = &[
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

pub(super) fn set_field(
    replay: &mut Replay,
    name: &'static str,
    value: &str,
) -> Result<(), ReplayError> {
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

pub(super) fn check(replay: &Replay) -> Result<(), ReplayError> {
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
