//! The proxy's front door: the accept loop on the proxy's port, one HTTP/1 connection per
//! client, and the way back: the final answer without hop-by-hop headers or cache directives,
//! and for an upgrade, the tunnel between the client and the Machine that said `101`.

use super::*;

/// Serves the proxy on `listener` until the task running it is aborted; then every client
/// connection and WebSocket tunnel it opened ends too.
pub async fn serve(listener: TcpListener, platform: Arc<Platform>) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    // Dropped when this task ends (it is aborted at shutdown): that closes `shutdown`.
    let (_shutdown_guard, shutdown) = watch::channel(());
    let proxy = Arc::new(Proxy::new(platform, port, shutdown));
    info!(port, edge_region = %proxy.edge_region, balance = ?proxy.balance, "proxy serving");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                warn!(error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "TCP_NODELAY on a client socket");
        }
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let mut shutdown = proxy.shutdown.clone();
            let service = service_fn({
                let proxy = proxy.clone();
                move |request| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(request, peer).await) }
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        debug!(%peer, error = %e, "client connection ended");
                    }
                }
                _ = shutdown.changed() => {}
            }
        });
    }
}

impl Proxy {
    /// The final answer for the client: hop-by-hop headers and cache directives removed, and
    /// for a `101` to an upgrade request, the tunnel between client (at `edge`) and `route`.
    pub(super) fn finish(
        self: &Arc<Self>,
        mut response: Response<Incoming>,
        upgrade: Option<OnUpgrade>,
        route: &Route,
        edge: RegionCode,
    ) -> Result<Response<ClientBody>, ProxyError> {
        let machine = route.id;
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching && self.platform.faults.upgrade_refused(machine) {
            // Dropping the Machine's answer closes its side of the upgrade.
            self.count("proxy.websockets.refused");
            return Err(ProxyError::Upstream {
                machine: machine.to_string(),
                reason: "WebSocket upgrade refused (a cut_websockets fault)".into(),
            });
        }
        if let (true, Some(client)) = (switching, upgrade) {
            let upgraded = hyper::upgrade::on(&mut response);
            self.count("proxy.websockets");
            let trip = self.platform.timings.round_trip(edge, route.region);
            self.tunnel(client, upgraded, machine, trip / 2);
        }
        let headers = response.headers_mut();
        for name in HOP_BY_HOP {
            if switching && matches!(*name, "connection" | "upgrade") {
                continue;
            }
            headers.remove(*name);
        }
        // Directives for the proxy, not for the client.
        for name in [
            FLY_REPLAY_CACHE,
            "fly-replay-cache-ttl-secs",
            "fly-replay-cache-allow-bypass",
        ] {
            headers.remove(name);
        }
        Ok(response.map(Either::Left))
    }

    /// Copies bytes both ways between an upgraded client connection and an upgraded Machine
    /// connection, each way `one_way` late, until either side closes, the proxy stops, or a
    /// fault cuts `id`'s tunnels.
    pub(super) fn tunnel(
        &self,
        client: OnUpgrade,
        machine: OnUpgrade,
        id: MachineId,
        one_way: Duration,
    ) {
        let mut shutdown = self.shutdown.clone();
        let mut cuts = self.platform.faults.websocket_cuts();
        let cut = async move {
            loop {
                match cuts.recv().await {
                    Ok(cut) if cut == id => return,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                }
            }
        };
        tokio::spawn(async move {
            let pipe = async {
                let (client, machine) = tokio::try_join!(client, machine)?;
                let (mut client, mut machine) = (TokioIo::new(client), TokioIo::new(machine));
                if one_way.is_zero() {
                    tokio::io::copy_bidirectional(&mut client, &mut machine).await?;
                } else {
                    let (client_in, client_out) = tokio::io::split(client);
                    let (machine_in, machine_out) = tokio::io::split(machine);
                    tokio::try_join!(
                        copy_late(client_in, machine_out, one_way),
                        copy_late(machine_in, client_out, one_way),
                    )?;
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            };
            tokio::select! {
                result = pipe => {
                    if let Err(e) = result {
                        debug!(error = %e, "websocket tunnel ended");
                    }
                }
                _ = shutdown.changed() => {}
                _ = cut => debug!(machine = %id, "websocket tunnel cut by a fault"),
            }
        });
    }
}

/// Copies `from` to `to`, each piece `late` after it was read, as a long link delivers it: the
/// link's delay without its throughput falling (reading goes on while pieces are in flight).
async fn copy_late(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    late: Duration,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Bytes)>();
    let reading = async move {
        let mut buffer = vec![0; 16 * 1024];
        loop {
            let n = from.read(&mut buffer).await?;
            if n == 0
                || tx
                    .send((Instant::now() + late, Bytes::copy_from_slice(&buffer[..n])))
                    .is_err()
            {
                return Ok::<_, std::io::Error>(());
            }
        }
    };
    let writing = async move {
        while let Some((due, piece)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            to.write_all(&piece).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(reading, writing).map(|_| ())
}
