//! The system tests: the real `flyby` and `flyby-local` binaries, started by the tests, spoken
//! to over real HTTP (and the documents checked against them). One test binary, so that the
//! shared `support` code is compiled once and one binary is linked, not one per file; a
//! module per subject, run alone with its name as the filter (`cargo test --test system
//! journey::`).

mod support;

mod assets;
mod code_order;
mod deploy;
mod deploy_guide;
mod docs;
mod faults;
mod fly_api;
mod fuzz_corpus;
mod hostile;
mod journey;
mod lifecycle;
mod local_api;
mod local_proxy;
mod pool;
mod routing;
mod secrets;
mod server;
mod soak;
mod world;
