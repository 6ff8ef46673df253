//! The affinity decision on arbitrary requests, for both roles: it never panics, never replays
//! a request that already came through a replay, never replays to this Machine, and on the
//! ephemeral app never serves a request that neither claims nor presents the owner's secret.
#![no_main]

#[path = "bodies/affinity.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
