//! Where the server listens, so that both of a Fly Machine's networks reach it.
//!
//! fly-proxy "reaches services through a private IPv4 address on each VM", while other Machines
//! reach one over the 6PN, at its IPv6 address (Fly docs, networking/app-services, "A note on
//! IPv4 and IPv6 wildcards"). A launcher probes a visitor's Machine over the 6PN, and the
//! visitor reaches it through fly-proxy: it must listen on both. One `[::]` socket takes IPv4
//! too only where the VM has IPv4-mapped addresses enabled ("if enabled on the VM", the same
//! page), so `[::]:<port>` here is two sockets on one port, an IPv6-only one and `0.0.0.0`, and
//! does not depend on that setting. Any other address is one socket, as given.

use axum::serve::Listener;
use socket2::{Domain, Socket, Type};
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};
use tokio::net::{TcpListener, TcpStream};

/// The server's listening sockets: one, or the two of `[::]`.
pub struct SiteListener {
    main: TcpListener,
    /// `0.0.0.0` on the same port, beside an IPv6-only `[::]`.
    ipv4: Option<TcpListener>,
}

impl SiteListener {
    /// Binds `addr`; `[::]:<port>` binds every IPv6 and every IPv4 address (port 0: one free
    /// port for both).
    pub fn bind(addr: SocketAddr) -> io::Result<SiteListener> {
        if addr.ip() != Ipv6Addr::UNSPECIFIED {
            return Ok(SiteListener {
                main: listener(addr, false)?,
                ipv4: None,
            });
        }
        // A free port for IPv6 may be taken on IPv4: with port 0, try a few.
        let attempts = if addr.port() == 0 { 8 } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            let main = listener(addr, true)?;
            let port = main.local_addr()?.port();
            match listener(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), false) {
                Ok(ipv4) => {
                    return Ok(SiteListener {
                        main,
                        ipv4: Some(ipv4),
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// The address `bind` was asked for, with the port it got.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.main.local_addr()
    }
}

fn listener(addr: SocketAddr, ipv6_only: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if ipv6_only {
        socket.set_only_v6(true)?;
    }
    // As tokio's own `bind` does: a restarted server need not wait for old connections.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

impl Listener for SiteListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        match &mut self.ipv4 {
            None => Listener::accept(&mut self.main).await,
            // Both accepts are cancel-safe: a connection not taken now is taken next time.
            Some(ipv4) => tokio::select! {
                accepted = Listener::accept(&mut self.main) => accepted,
                accepted = Listener::accept(ipv4) => accepted,
            },
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        SiteListener::local_addr(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn reaches(listener: &mut SiteListener, to: SocketAddr) -> bool {
        let Ok(mut client) = TcpStream::connect(to).await else {
            return false;
        };
        client.write_all(b"x").await.unwrap();
        let (_, peer) = Listener::accept(listener).await;
        peer.ip().to_canonical() == to.ip().to_canonical()
    }

    #[tokio::test]
    async fn the_ipv6_wildcard_takes_ipv4_and_ipv6_on_one_port() {
        let mut site = SiteListener::bind("[::]:0".parse().unwrap()).unwrap();
        let port = site.local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(reaches(&mut site, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await);
        assert!(reaches(&mut site, SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await);
    }

    #[tokio::test]
    async fn the_ipv4_wildcard_takes_ipv4_only() {
        let mut site = SiteListener::bind("0.0.0.0:0".parse().unwrap()).unwrap();
        let port = site.local_addr().unwrap().port();
        assert!(reaches(&mut site, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await);
        assert!(TcpStream::connect((Ipv6Addr::LOCALHOST, port))
            .await
            .is_err());
    }
}
