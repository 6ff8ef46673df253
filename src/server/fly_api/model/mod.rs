//! The Machines API's JSON, as Rust types.
//!
//! Two directions, two attitudes. What flyby *sends* (a [`CreateMachineRequest`]) is exact: every
//! field is one Fly documents, `None`s and empty collections are left out so the body says only
//! what the launcher chose, and a unit test checks the body against Fly's OpenAPI schema. What
//! flyby *receives* (a [`Machine`]) is tolerant: unknown fields are ignored, `null` where a
//! collection is expected reads as empty (Fly sends `"env": null`), an unknown state is kept as
//! [`MachineState::Other`], and the Machine's `config` is kept as raw JSON so that a config shape
//! Fly adds tomorrow can never make a `get` or a `list` fail.

use crate::fly::{MachineId, RegionCode};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::{collections::BTreeMap, fmt, time::Duration, time::SystemTime};

mod request;
mod response;
#[cfg(test)]
pub(crate) mod tests;

pub use request::*;
pub use response::*;

// ---------------------------------------------------------------------------------------------
// serde helpers
// ---------------------------------------------------------------------------------------------

pub(super) fn is_false(b: &bool) -> bool {
    !*b
}

/// `null` reads as the default: Fly's Go encoder writes nil maps and slices as `null`.
pub(super) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An RFC 3339 time, or `None` for anything else: a timestamp is informative, never a reason to
/// reject a Machine.
pub(super) fn lenient_time<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SystemTime>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(v.as_str()
        .and_then(|s| humantime::parse_rfc3339_weak(s).ok()))
}
