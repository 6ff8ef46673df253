//! `flyby-local`: see [`flyby::local`]. Starts the platform, prints the ready line, and on
//! Ctrl-C or SIGTERM stops every Machine before exiting.
//!
//! stdout carries the ready line and the Machines' log lines; flyby-local's own logs go to
//! stderr (`RUST_LOG` filters them), so that tools can read stdout.

use anyhow::Context;
use clap::Parser;
use flyby::local::{network, start, Args, NetworkMode};
use tokio::signal::unix::{signal, SignalKind};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.network == NetworkMode::Isolated {
        // Before any thread exists: the kernel lets only a single-threaded process enter a
        // user namespace. If it refuses, setting up the network says so, with what to do.
        let _ = network::enter_user_namespace_unless_root();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // Listen for the signals before any Machine exists, so none can be orphaned by an early one.
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;

    let running = tokio::select! {
        running = start(args) => running.context("flyby-local could not start")?,
        _ = interrupt.recv() => return Ok(()),
        _ = terminate.recv() => return Ok(()),
    };
    println!(
        "flyby-local ready: proxy=http://{} api=http://{}",
        running.proxy_addr(),
        running.api_addr()
    );
    let port = running.proxy_addr().port();
    println!("Open http://flyby.localhost:{port}/");
    // The edge region sticks to the browser's address until another such visit.
    println!(
        "From Sydney: http://flyby.localhost:{port}/?{}=syd (and back: ?{}=ams)",
        flyby::local::proxy::EDGE_REGION_QUERY,
        flyby::local::proxy::EDGE_REGION_QUERY
    );

    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping every Machine");
    running.shutdown().await;
    Ok(())
}
