//! The parsers of untrusted text: Machine ids, region codes, owner tokens, and the fly-replay
//! family as flyby-local's proxy reads them. None may panic; what parses must round-trip.
//!
//! The body of the fuzz target, shared with `tests/system/fuzz_corpus.rs`, which replays the committed
//! corpus through it on every `cargo test`.

use flyby::{
    fly::{MachineId, RegionCode},
    local::proxy::replay::{parse_header, parse_json, ReplayFailed, ReplaySrc},
    server::ownership::{OwnerHash, OwnerSecret},
};

pub fn run(data: &[u8]) {
    let _ = parse_json(data);
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = MachineId::parse(s) {
        assert_eq!(id.as_str(), s);
    }
    if let Ok(region) = RegionCode::parse(s) {
        assert_eq!(region.as_str(), s);
        let _ = region.city();
    }
    if let Ok(secret) = OwnerSecret::parse(s) {
        assert!(secret.hash().verifies(s));
    }
    let _ = OwnerHash::parse(s);
    let _ = parse_header(s);
    if let Ok(src) = ReplaySrc::parse(s) {
        let again = ReplaySrc::parse(&src.to_header()).expect("a written fly-replay-src parses");
        assert_eq!(again.to_header(), src.to_header());
    }
    if let Ok(failed) = ReplayFailed::parse(s) {
        let again =
            ReplayFailed::parse(&failed.to_header()).expect("a written fly-replay-failed parses");
        assert_eq!(again.to_header(), failed.to_header());
    }
}
