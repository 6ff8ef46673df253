//! [`FlyApiError`]: every way a Machines API call fails, typed so the launcher can answer each
//! one (a visitor-facing message, a retry, a metric) without parsing strings.

use crate::fly::MachineId;
use reqwest::StatusCode;
use serde::Deserialize;
use std::time::Duration;

/// A failed Machines API call. Messages are one line, for logs; none carries the token (it
/// only ever travels in a header) and Fly's own error text is cut short and flattened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlyApiError {
    /// 401 or 403: the token is wrong, expired, or lacks the rights for this app.
    #[error("Fly API refused the token ({status})")]
    Unauthorized { status: u16 },
    /// 404: no such Machine (or no such app).
    #[error("not found: {message}")]
    NotFound { message: String },
    /// The app already has a Machine with this name (Fly: 409 `already_exists: unique machine
    /// name violation, machine ID <id> already exists with name "<name>"`).
    #[error("the Machine name {name:?} is taken{}", existing.map(|id| format!(" by {id}")).unwrap_or_default())]
    NameTaken {
        name: String,
        /// The Machine holding the name, when Fly said which.
        existing: Option<MachineId>,
    },
    /// 429: Fly's rate limit; the call was not performed.
    #[error("rate limited by the Fly API{}", retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// Fly has no room for this Machine in the region (`"status": "insufficient_capacity"`):
    /// retrying the same region will not help; another region might.
    #[error("insufficient capacity: {message}")]
    InsufficientCapacity { message: String },
    /// `wait` ended (408) before the Machine reached the state.
    #[error("the Machine did not reach the state in time")]
    WaitTimedOut,
    /// Any other answer that is not a success, with Fly's `{"error": ...}` text.
    #[error("Fly API answered {status}: {message}")]
    Api { status: u16, message: String },
    /// No answer within the call's deadline. The call may or may not have been performed.
    #[error("the Fly API did not answer in time")]
    Timeout,
    /// The API could not be reached, or dropped the connection before answering.
    #[error("the Fly API is unreachable: {reason}")]
    Unavailable { reason: String },
    /// A success whose body is not what Fly documents.
    #[error("unexpected Fly API answer: {message}")]
    Decode { message: String },
}

impl FlyApiError {
    /// Whether trying again may succeed: rate limits, server errors, timeouts and lost
    /// connections. Whether a given call *is* retried also depends on it being safe to repeat
    /// (see [`super::FlyApi::create`]).
    pub fn is_retryable(&self) -> bool {
        match self {
            FlyApiError::RateLimited { .. }
            | FlyApiError::Timeout
            | FlyApiError::Unavailable { .. } => true,
            FlyApiError::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// A stable, low-cardinality name for metrics and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            FlyApiError::Unauthorized { .. } => "unauthorized",
            FlyApiError::NotFound { .. } => "not_found",
            FlyApiError::NameTaken { .. } => "name_taken",
            FlyApiError::RateLimited { .. } => "rate_limited",
            FlyApiError::InsufficientCapacity { .. } => "insufficient_capacity",
            FlyApiError::WaitTimedOut => "wait_timed_out",
            FlyApiError::Api { .. } => "api",
            FlyApiError::Timeout => "timeout",
            FlyApiError::Unavailable { .. } => "unavailable",
            FlyApiError::Decode { .. } => "decode",
        }
    }

    /// The wait Fly asked for, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FlyApiError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// Whether a create that failed this way may nevertheless have created the Machine: the
    /// request may have reached Fly and been performed before the answer was lost or failed.
    pub fn create_may_have_happened(&self) -> bool {
        match self {
            FlyApiError::Timeout | FlyApiError::Unavailable { .. } => true,
            FlyApiError::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// Fly's error body: `{"error": "...", "status": "unknown"|"insufficient_capacity"|...}`;
/// some endpoints say `message` instead of `error`.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

/// What the caller was doing, which some answers need to be understood.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context<'a> {
    pub action: &'static str,
    /// The Machine name of a create.
    pub name: Option<&'a str>,
}

/// Turns a non-success answer into a [`FlyApiError`].
pub(crate) fn from_response(
    ctx: Context<'_>,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> FlyApiError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let text = parsed
        .message
        .clone()
        .filter(|m| !m.is_empty())
        .or_else(|| parsed.error.clone())
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let message = one_line(&text);
    let code = status.as_u16();
    if parsed.status.as_deref() == Some("insufficient_capacity") {
        return FlyApiError::InsufficientCapacity { message };
    }
    match code {
        401 | 403 => FlyApiError::Unauthorized { status: code },
        404 => FlyApiError::NotFound { message },
        408 if ctx.action == "wait" => FlyApiError::WaitTimedOut,
        429 => FlyApiError::RateLimited { retry_after },
        409 | 422 if ctx.action == "create" && is_name_taken(parsed.status.as_deref(), &text) => {
            FlyApiError::NameTaken {
                name: ctx.name.unwrap_or_default().to_owned(),
                existing: existing_machine(&text),
            }
        }
        _ => FlyApiError::Api {
            status: code,
            message,
        },
    }
}

/// Fly says `already_exists: unique machine name violation, ...` with 409; its Go client also
/// knows a `name_taken` status (for app names). Either counts.
fn is_name_taken(status: Option<&str>, text: &str) -> bool {
    status == Some("name_taken")
        || text.contains("unique machine name violation")
        || text.starts_with("already_exists")
}

/// The id in `... machine ID <id> already exists ...`, when it is a valid one.
fn existing_machine(text: &str) -> Option<MachineId> {
    let (_, after) = text.split_once("machine ID ")?;
    let id = after.split(|c: char| !c.is_ascii_alphanumeric()).next()?;
    MachineId::parse(id).ok()
}

/// Fly's text made fit for one log line: control characters flattened, length bounded.
pub(crate) fn one_line(text: &str) -> String {
    const MAX: usize = 300;
    let flat: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > MAX {
        let cut: String = flat.chars().take(MAX).collect();
        format!("{cut}…")
    } else if flat.is_empty() {
        "(no message)".to_owned()
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(action: &'static str, status: u16, body: &str) -> FlyApiError {
        from_response(
            Context {
                action,
                name: Some("flyby-slot-1"),
            },
            StatusCode::from_u16(status).unwrap(),
            None,
            body.as_bytes(),
        )
    }

    #[test]
    fn fly_error_bodies_become_typed_errors() {
        assert_eq!(
            classify(
                "get",
                401,
                r#"{"error":"Authenticate: token validation error"}"#
            ),
            FlyApiError::Unauthorized { status: 401 }
        );
        assert_eq!(
            classify("get", 404, r#"{"error":"machine not found"}"#),
            FlyApiError::NotFound {
                message: "machine not found".into()
            }
        );
        assert_eq!(classify("wait", 408, "{}"), FlyApiError::WaitTimedOut);
        assert_eq!(
            classify(
                "create",
                422,
                r#"{"error":"no capacity in ams","status":"insufficient_capacity"}"#
            ),
            FlyApiError::InsufficientCapacity {
                message: "no capacity in ams".into()
            }
        );
        assert_eq!(
            classify(
                "stop",
                409,
                r#"{"error":"unable to stop machine, not currently started"}"#
            ),
            FlyApiError::Api {
                status: 409,
                message: "unable to stop machine, not currently started".into()
            }
        );
        assert_eq!(
            classify("get", 502, "<html>Bad gateway</html>"),
            FlyApiError::Api {
                status: 502,
                message: "<html>Bad gateway</html>".into()
            }
        );
        assert_eq!(
            classify("get", 500, ""),
            FlyApiError::Api {
                status: 500,
                message: "(no message)".into()
            }
        );
    }

    #[test]
    fn a_taken_machine_name_is_recognised_with_its_holder() {
        let body = r#"{"error":"already_exists: unique machine name violation, machine ID 0123456789abcd already exists with name \"flyby-slot-1\""}"#;
        assert_eq!(
            classify("create", 409, body),
            FlyApiError::NameTaken {
                name: "flyby-slot-1".into(),
                existing: Some(MachineId::parse("0123456789abcd").unwrap())
            }
        );
        // Same text, an id that is not a Machine id: still taken, holder unknown.
        let body = r#"{"error":"already_exists: unique machine name violation, machine ID m-1 already exists with name \"x\""}"#;
        assert_eq!(
            classify("create", 409, body),
            FlyApiError::NameTaken {
                name: "flyby-slot-1".into(),
                existing: None
            }
        );
        assert!(matches!(
            classify("create", 409, r#"{"error":"x","status":"name_taken"}"#),
            FlyApiError::NameTaken { .. }
        ));
        // A conflict that is not about the name stays a plain API error.
        assert!(matches!(
            classify("create", 409, r#"{"error":"lease currently held"}"#),
            FlyApiError::Api { status: 409, .. }
        ));
    }

    #[test]
    fn retry_classification() {
        let retryable = [
            FlyApiError::RateLimited { retry_after: None },
            FlyApiError::Timeout,
            FlyApiError::Unavailable {
                reason: "connection refused".into(),
            },
            FlyApiError::Api {
                status: 503,
                message: String::new(),
            },
        ];
        for e in &retryable {
            assert!(e.is_retryable(), "{e}");
        }
        let final_ = [
            FlyApiError::Unauthorized { status: 401 },
            FlyApiError::NotFound {
                message: String::new(),
            },
            FlyApiError::NameTaken {
                name: "n".into(),
                existing: None,
            },
            FlyApiError::InsufficientCapacity {
                message: String::new(),
            },
            FlyApiError::WaitTimedOut,
            FlyApiError::Api {
                status: 400,
                message: String::new(),
            },
            FlyApiError::Decode {
                message: String::new(),
            },
        ];
        for e in &final_ {
            assert!(!e.is_retryable(), "{e}");
            assert!(!e.create_may_have_happened(), "{e}");
        }
        // A 429 was not performed; a 5xx, a timeout or a lost connection may have been.
        assert!(!retryable[0].create_may_have_happened());
        for e in &retryable[1..] {
            assert!(e.create_may_have_happened(), "{e}");
        }
    }

    #[test]
    fn messages_are_one_bounded_line() {
        let long = format!("line one\nline two\r\n{}", "x".repeat(1000));
        let e = classify(
            "get",
            500,
            &serde_json::json!({ "error": long }).to_string(),
        );
        let shown = e.to_string();
        assert!(!shown.contains('\n') && !shown.contains('\r'), "{shown}");
        assert!(shown.chars().count() < 400, "{}", shown.len());
        assert_eq!(
            FlyApiError::RateLimited {
                retry_after: Some(Duration::from_secs(2))
            }
            .to_string(),
            "rate limited by the Fly API (retry after 2s)"
        );
    }
}
