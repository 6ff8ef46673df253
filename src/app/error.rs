//! The one error type every server function returns: typed, so the page can say exactly what
//! went wrong, and free of internals, so nothing about the platform leaks to a visitor.

use leptos::server_fn::{
    codec::PostcardEncoding,
    error::{FromServerFnError, ServerFnErrorErr},
};
use serde::{Deserialize, Serialize};

/// What a visitor may be told about a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AppError {
    /// The Machine this request was meant for no longer exists.
    #[error("your Machine is gone")]
    MachineGone,
    /// The browser could not reach the server at all (its network, or a connection cut on the
    /// way): nothing is known of the Machine, so nothing is concluded; the page tries again.
    #[error("can't reach the server right now; trying again")]
    Unreachable,
    /// The request did not prove it belongs to this Machine's owner.
    #[error("this Machine is not yours")]
    NotYours,
    /// Every Machine slot is taken.
    #[error("capacity reached: all {cap} Machines are in use, try again in a minute")]
    CapacityReached { cap: u32 },
    /// This visitor launched too often.
    #[error("slow down: you can launch again in {retry_after_secs} s")]
    TooManyLaunches { retry_after_secs: u64 },
    /// The Fly Machines API is failing or too slow.
    #[error("the Fly Machines API is not answering properly right now, try again shortly")]
    FlyApiUnavailable,
    /// The launcher cannot reach Fly at all right now: launches wait until it can again.
    #[error("can't reach Fly right now: launches are paused, and resume by themselves")]
    LaunchesPaused,
    /// Fly refuses the launcher's credentials: only its operator can fix that.
    #[error("this launcher can't create Machines: Fly refuses its credentials, and its operator has been told")]
    LauncherMisconfigured,
    /// Fly has no room for a Machine in the regions nearest the visitor.
    #[error("Fly has no room for a Machine near you right now, try again in a minute")]
    NoRoomNearby,
    /// The new Machine did not come up in time.
    #[error("your Machine did not start in time; nothing was left behind, try again")]
    MachineDidNotStart,
    /// The request is not one flyby accepts (e.g. a cross-site launch).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Anything else; the details are in the server's log, not here.
    #[error("something went wrong on our side")]
    Internal,
}

impl AppError {
    /// The HTTP status a server function answers with. Refusals the visitor can act on are 4xx;
    /// only failures of the platform are 5xx.
    pub fn status(&self) -> u16 {
        match self {
            AppError::MachineGone => 410,
            AppError::Unreachable => 503,
            AppError::NotYours => 403,
            AppError::CapacityReached { .. } => 409,
            AppError::TooManyLaunches { .. } => 429,
            AppError::BadRequest(_) => 400,
            AppError::FlyApiUnavailable
            | AppError::NoRoomNearby
            | AppError::LaunchesPaused
            | AppError::LauncherMisconfigured => 503,
            AppError::MachineDidNotStart => 504,
            AppError::Internal => 500,
        }
    }
}

/// What every server function returns through: an error gets its own status instead of
/// Leptos' blanket 500.
#[cfg(feature = "ssr")]
pub fn reply<T>(result: Result<T, AppError>) -> Result<T, AppError> {
    if let (Err(error), Some(response)) = (
        &result,
        leptos::prelude::use_context::<leptos_axum::ResponseOptions>(),
    ) {
        if let Ok(status) = http::StatusCode::from_u16(error.status()) {
            response.set_status(status);
        }
    }
    result
}

impl FromServerFnError for AppError {
    type Encoder = PostcardEncoding;

    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        match value {
            // The client could not reach the server at all: a network down, a connection cut.
            // Only the server's own 410 says the Machine is gone.
            ServerFnErrorErr::Request(_) => AppError::Unreachable,
            ServerFnErrorErr::Args(m) | ServerFnErrorErr::MissingArg(m) => AppError::BadRequest(m),
            _ => AppError::Internal,
        }
    }
}
