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
    /// for a `101` to an upgrade request, the tunnel between client and `machine`.
    pub(super) fn finish(
        self: &Arc<Self>,
        mut response: Response<Incoming>,
        upgrade: Option<OnUpgrade>,
        machine: MachineId,
    ) -> Result<Response<ClientBody>, ProxyError> {
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
            self.tunnel(client, upgraded, machine);
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
    /// connection, until either side closes, the proxy stops, or a fault cuts `id`'s tunnels.
    pub(super) fn tunnel(&self, client: OnUpgrade, machine: OnUpgrade, id: MachineId) {
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
                tokio::io::copy_bidirectional(&mut client, &mut machine).await?;
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
