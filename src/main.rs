//! `flyby`: reads its config, builds the server for its role, serves until told to stop.

use flyby::{
    role::Role,
    server::{config, shutdown_signal, telemetry, Application},
};
use std::process::ExitCode;

/// glibc's malloc was about a quarter of the samples of a profile of the SSR home page under
/// load (BENCHMARKS.md, row 3); mimalloc is faster for many small, short-lived allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        print!("{}", config::Help);
        return ExitCode::SUCCESS;
    }
    let config = match config::Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("flyby: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    // A visitor's Machine (and the concierge) serves one visitor on one shared vCPU: one
    // thread does, and one more reads its files, without a worker pool's threads, stacks and
    // allocator heaps. A launcher serves everyone, on every core it has.
    let runtime = match config.role {
        Role::Ephemeral | Role::Concierge => {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.max_blocking_threads(1);
            builder
        }
        Role::Launcher => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build();
    let served = match runtime {
        Ok(runtime) => runtime.block_on(serve(config)),
        Err(e) => Err(e.into()),
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: config::Config) -> anyhow::Result<()> {
    let role = config.role;
    let app = Application::build(config).await?;
    let stop = shutdown_signal();
    if let Some(metrics) = app.metrics_addr() {
        tracing::info!(addr = %metrics, "metrics");
    }
    tracing::info!(role = role.as_str(), addr = %app.local_addr()?, "serving");
    app.run(stop).await?;
    Ok(())
}
