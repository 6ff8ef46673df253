//! Logs through `tracing`: readable in a terminal, JSON for log collectors, and one line per
//! request. The request line carries the path but never the query string, which is where a
//! careless client could put a secret.

use super::config::LogFormat;
use axum::{extract::Request, middleware::Next, response::Response};
use std::time::Instant;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` refines the default `info` level.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Middleware: one `request` line with method, path, status and latency.
pub async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    tracing::info!(
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        latency_us = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}
