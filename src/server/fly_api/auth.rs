//! The Fly API token: turned into an `Authorization` header once, and never shown again.

use reqwest::header::HeaderValue;
use std::{fmt, str::FromStr};

/// A Fly API token, ready to authorize calls.
///
/// Its `Debug` and `Display` print `<redacted>` and its kind, never the token: a token is
/// worth an organisation's Machines, and a config dump, an error or a panic message must not be
/// able to leak it. The header it produces is marked sensitive, so HTTP-level debug output
/// redacts it too.
#[derive(Clone)]
pub struct ApiToken {
    header: HeaderValue,
    kind: TokenKind,
}

/// How the token authenticates, which decides the `Authorization` scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A macaroon (`fm1r_`, `fm1a_`, `fm2_`: what `fly tokens create` makes): `FlyV1 <token>`.
    Macaroon,
    /// Anything else (a user's OAuth token, flyby-local's token): `Bearer <token>`.
    Bearer,
}

/// A token that cannot be sent: empty, or with characters a header cannot carry.
/// Says why, never what the token was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidToken {
    #[error("the Fly API token is empty")]
    Empty,
    #[error("the Fly API token contains characters an HTTP header cannot carry")]
    NotAHeaderValue,
}

/// Prefixes of Fly's macaroon tokens, as Fly's Go client (`fly-go/tokens`) recognises them.
const MACAROON_PREFIXES: [&str; 3] = ["fm1r", "fm1a", "fm2"];

impl ApiToken {
    /// Reads a token as `FLY_API_TOKEN` holds it. Follows Fly's Go client: any leading
    /// `Bearer`/`FlyV1` scheme is stripped, the rest may be a comma-separated list; if it holds
    /// macaroons, only they are sent, under `FlyV1`; otherwise everything is sent as `Bearer`.
    /// A token that came with an explicit `FlyV1` scheme keeps it, whatever its prefix.
    pub fn new(raw: &str) -> Result<Self, InvalidToken> {
        let (rest, explicit_flyv1) = strip_schemes(raw);
        let parts: Vec<&str> = rest
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        if parts.is_empty() {
            return Err(InvalidToken::Empty);
        }
        let macaroons: Vec<&str> = parts.iter().copied().filter(|t| is_macaroon(t)).collect();
        let (kind, sent) = if !macaroons.is_empty() {
            (TokenKind::Macaroon, macaroons)
        } else if explicit_flyv1 {
            (TokenKind::Macaroon, parts)
        } else {
            (TokenKind::Bearer, parts)
        };
        let scheme = match kind {
            TokenKind::Macaroon => "FlyV1",
            TokenKind::Bearer => "Bearer",
        };
        let mut header = HeaderValue::from_str(&format!("{scheme} {}", sent.join(",")))
            .map_err(|_| InvalidToken::NotAHeaderValue)?;
        header.set_sensitive(true);
        Ok(ApiToken { header, kind })
    }

    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    /// The `Authorization` header value (marked sensitive).
    pub(crate) fn header(&self) -> &HeaderValue {
        &self.header
    }
}

fn is_macaroon(token: &str) -> bool {
    token
        .split_once('_')
        .is_some_and(|(prefix, _)| MACAROON_PREFIXES.contains(&prefix))
}

/// Strips leading `Bearer `/`FlyV1 ` schemes (any case, repeated), and says whether one of them
/// was `FlyV1`.
fn strip_schemes(raw: &str) -> (&str, bool) {
    let mut rest = raw.trim();
    let mut flyv1 = false;
    while let Some((scheme, after)) = rest.split_once(char::is_whitespace) {
        if scheme.eq_ignore_ascii_case("FlyV1") {
            flyv1 = true;
        } else if !scheme.eq_ignore_ascii_case("Bearer") {
            break;
        }
        rest = after.trim();
    }
    // A scheme with nothing after it is no token.
    if rest.eq_ignore_ascii_case("Bearer") || rest.eq_ignore_ascii_case("FlyV1") {
        return ("", flyv1);
    }
    (rest, flyv1)
}

impl FromStr for ApiToken {
    type Err = InvalidToken;
    fn from_str(s: &str) -> Result<Self, InvalidToken> {
        ApiToken::new(s)
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiToken(<redacted>, {:?})", self.kind)
    }
}

impl fmt::Display for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(raw: &str) -> String {
        ApiToken::new(raw)
            .unwrap()
            .header()
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn macaroons_use_flyv1_and_others_bearer() {
        assert_eq!(header("fm2_abc"), "FlyV1 fm2_abc");
        assert_eq!(header("fm1r_abc"), "FlyV1 fm1r_abc");
        assert_eq!(header("fm1a_abc"), "FlyV1 fm1a_abc");
        assert_eq!(header("flyby-local-token"), "Bearer flyby-local-token");
        assert_eq!(header("fm3_abc"), "Bearer fm3_abc");
        assert_eq!(header("xfm2_abc"), "Bearer xfm2_abc");
        assert_eq!(header("fm2abc"), "Bearer fm2abc");
        assert_eq!(
            ApiToken::new("fm2_abc").unwrap().kind(),
            TokenKind::Macaroon
        );
        assert_eq!(ApiToken::new("abc").unwrap().kind(), TokenKind::Bearer);
    }

    #[test]
    fn a_scheme_already_present_is_not_doubled() {
        // `fly tokens create` prints the token with its scheme.
        assert_eq!(header("FlyV1 fm2_abc,fm2_def"), "FlyV1 fm2_abc,fm2_def");
        assert_eq!(header("  FlyV1   fm2_abc "), "FlyV1 fm2_abc");
        assert_eq!(header("FlyV1 opaque"), "FlyV1 opaque");
        assert_eq!(header("Bearer abc"), "Bearer abc");
        assert_eq!(header("bearer fm2_abc"), "FlyV1 fm2_abc");
    }

    #[test]
    fn a_mixed_list_sends_only_its_macaroons() {
        // Fly's Go client does the same: the Machines API takes macaroons alone.
        assert_eq!(header("oauth123, fm2_abc ,fm1r_x"), "FlyV1 fm2_abc,fm1r_x");
        assert_eq!(header("a,b"), "Bearer a,b");
    }

    #[test]
    fn unusable_tokens_are_refused_without_echoing_them() {
        assert_eq!(ApiToken::new("").unwrap_err(), InvalidToken::Empty);
        assert_eq!(ApiToken::new(" Bearer ").unwrap_err(), InvalidToken::Empty);
        assert_eq!(ApiToken::new(" , ").unwrap_err(), InvalidToken::Empty);
        let err = ApiToken::new("secret\nvalue").unwrap_err();
        assert_eq!(err, InvalidToken::NotAHeaderValue);
        assert!(!err.to_string().contains("secret"));
    }

    #[test]
    fn the_token_never_prints() {
        let secret = "fm2_s3cr3t-token-value";
        let token = ApiToken::new(secret).unwrap();
        for shown in [
            format!("{token}"),
            format!("{token:?}"),
            format!("{token:#?}"),
            format!("{:?}", Some(token.clone())),
            format!("{:?}", token.header()),
        ] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
        assert!(token.header().is_sensitive());
    }
}
