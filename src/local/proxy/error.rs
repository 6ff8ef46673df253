//! What the proxy answers when it cannot deliver a request: a small page in the spirit of
//! fly-proxy's, with Fly's error code where Fly has one (PA01-PA04, PR01, PR03, PU02).
//!
//! Fly documents the codes but not the HTTP statuses its proxy answers them with; the
//! statuses here are this platform's choice and are kept stable (tests and the README rely on
//! them). Every error page carries `flyby-local-error: <code>` so a test can tell a proxy
//! error from an app's answer with the same status.

use super::replay::ReplayError;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The response header naming the proxy error (local only; fly-proxy logs the code instead).
pub const ERROR_HEADER: &str = "flyby-local-error";

/// Why the proxy answered instead of a Machine.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The Host is not `<app>.localhost[:port]`.
    #[error("no app is served at host {0:?}: use <app>.localhost")]
    UnknownHost(String),
    /// The Host names an app the platform does not have.
    #[error("app {0:?} does not exist")]
    UnknownApp(String),
    /// The Host names an app without public addresses: on Fly its name resolves to nothing.
    #[error(
        "app {0:?} has no public IP address (fly ips allocate-v6; fly ips allocate-v4 --shared)"
    )]
    NoPublicIp(String),
    /// A `flyby-local-*` or client routing header that cannot be understood.
    #[error("invalid {header} header: {reason}")]
    BadHeader {
        header: &'static str,
        reason: String,
    },
    /// The client's body could not be read.
    #[error("could not read the request body: {0}")]
    ClientBody(hyper::Error),
    /// The app has no started Machine with an HTTP service: no candidate.
    #[error("no started Machine of app {0:?} serves HTTP")]
    NoCandidate(String),
    /// Every attempt to reach a Machine failed (or none fitted), and there was no fallback.
    #[error("could not find a good candidate: {0}")]
    Unreachable(String),
    /// A Machine took the request but the exchange failed (connection reset, crash, a
    /// too-large body that cannot be sent again).
    #[error("the request to Machine {machine} failed: {reason}")]
    Upstream { machine: String, reason: String },
    /// A request body over the replay limit got a `fly-replay` answer.
    #[error("the request body is over 1 MB and cannot be replayed")]
    TooLargeToReplay,
    /// More than 10 chained replays.
    #[error("more than 10 fly-replay in a row")]
    ReplayLimit,
    /// A `fly-replay` the proxy cannot follow.
    #[error("{0}")]
    InvalidReplay(ReplayError),
    /// The Machine that got a fallback request answered with a `fly-replay` again.
    #[error("a fallback request cannot be replayed again")]
    FallbackReplayed,
    /// `app=` names an app the platform does not have.
    #[error("fly-replay target app {0:?} not found")]
    ReplayAppNotFound(String),
}

impl ProxyError {
    /// Fly's error code, or a local name where fly-proxy has no equivalent. Also the suffix of
    /// the `proxy.errors.<code>` counter.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::UnknownHost(_) | ProxyError::NoPublicIp(_) => "unknown_host",
            ProxyError::UnknownApp(_) => "unknown_app",
            ProxyError::BadHeader { .. } => "bad_header",
            ProxyError::ClientBody(_) => "client_body",
            ProxyError::NoCandidate(_) => "PR01",
            ProxyError::Unreachable(_) => "PR03",
            ProxyError::Upstream { .. } => "PU02",
            ProxyError::TooLargeToReplay => "PA01",
            ProxyError::ReplayLimit => "PA02",
            ProxyError::InvalidReplay(_) | ProxyError::FallbackReplayed => "PA03",
            ProxyError::ReplayAppNotFound(_) => "PA04",
        }
    }

    /// The status the client gets (the choice of this platform, see the module comment).
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UnknownHost(_) | ProxyError::UnknownApp(_) | ProxyError::NoPublicIp(_) => {
                StatusCode::NOT_FOUND
            }
            ProxyError::BadHeader { .. } | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoCandidate(_) | ProxyError::Unreachable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::TooLargeToReplay => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Upstream { .. }
            | ProxyError::ReplayLimit
            | ProxyError::InvalidReplay(_)
            | ProxyError::FallbackReplayed
            | ProxyError::ReplayAppNotFound(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The page. The message names only what the client sent or Machine ids and app names,
    /// never a header value a Machine might consider secret.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let code = self.code();
        let reason = status.canonical_reason().unwrap_or("Error");
        let message = html_escape(&self.to_string());
        let body = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{} {reason}</title></head>\n\
             <body><h1>{} {reason}</h1>\n<p>{message}</p>\n\
             <p><small>flyby-local proxy (playing fly-proxy) · error {code}</small></p></body></html>\n",
            status.as_u16(),
            status.as_u16(),
        );
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(ERROR_HEADER, HeaderValue::from_static(code));
        response
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_carry_status_code_and_escape_input() {
        let page = ProxyError::UnknownHost("<script>".into()).into_response();
        assert_eq!(page.status(), StatusCode::NOT_FOUND);
        assert_eq!(page.headers()[ERROR_HEADER], "unknown_host");
        let body = format!("{:?}", page.body());
        assert!(!body.contains("<script>"));
        assert_eq!(ProxyError::ReplayLimit.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(ProxyError::ReplayLimit.code(), "PA02");
        assert_eq!(
            ProxyError::TooLargeToReplay.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            ProxyError::Unreachable(String::new()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
