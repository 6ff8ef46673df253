//! The parsers of untrusted text: Machine ids, region codes, owner tokens, and the fly-replay
//! family as flyby-local's proxy reads them. None may panic; what parses must round-trip.
#![no_main]

#[path = "bodies/parsers.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
