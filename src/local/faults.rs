//! Knobs that make the local platform fail on purpose, set through `POST /_local/faults`.
