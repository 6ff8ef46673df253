//! The one error type every server function returns: typed, so the page can say exactly what
//! went wrong, and free of internals, so nothing about the platform leaks to a visitor.

use leptos::server_fn::{
    codec::JsonEncoding,
    error::{FromServerFnError, ServerFnErrorErr},
};
use serde::{Deserialize, Serialize};

/// What a visitor may be told about a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AppError {
    /// The Machine this request was meant for no longer exists.
    #[error("your Machine is gone")]
    MachineGone,
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

impl FromServerFnError for AppError {
    type Encoder = JsonEncoding;

    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        match value {
            // The client could not reach the server at all (network down, Machine gone).
            ServerFnErrorErr::Request(_) => AppError::MachineGone,
            ServerFnErrorErr::Args(m) | ServerFnErrorErr::MissingArg(m) => AppError::BadRequest(m),
            _ => AppError::Internal,
        }
    }
}
