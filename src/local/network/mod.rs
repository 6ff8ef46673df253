//! Where a Machine sits on the network, as on Fly.
//!
//! A Fly Machine has two addresses (Fly docs, networking/app-services, "A note on IPv4 and IPv6
//! wildcards"): fly-proxy "reaches services through a private IPv4 address on each VM", so a
//! process must listen on `0.0.0.0` (or a dual-stack `[::]`) to get public traffic; other
//! Machines of the organization reach it over the 6PN, at its IPv6 `FLY_PRIVATE_IP`, so a
//! process must listen on `fly-local-6pn` or `[::]` to be reached privately. A process that
//! listens on the wrong one is unreachable by the other, and nothing tells it.
//!
//! [`NetworkMode::Isolated`] plays that for real. The platform gets a network namespace of its
//! own (the "fabric", where the proxy and the Machines API's private listener live, at
//! `fdaa::3` for `_api.internal`), and every Machine a namespace of its own with one veth into
//! the fabric, carrying its proxy address (`172.19.x.y`) and its 6PN address (`fdaa:…`). A
//! Machine's process binds exactly what its config says (`[::]:8080` collides with nobody), the
//! proxy connects to the IPv4 address, and a Machine connects to another's IPv6 one. Nothing of
//! this touches the host: no interface, route or sysctl outside namespaces the platform owns,
//! all of which vanish with it. It needs `CAP_SYS_ADMIN` over the current user namespace: root,
//! or the user namespace `flyby-local` enters at start when it is not root.
//!
//! [`NetworkMode::Shared`] is the fallback for hosts that allow neither: every Machine in the
//! caller's namespace, one loopback IPv4 address each for both kinds of traffic, and the
//! Machine's `LEPTOS_SITE_ADDR` rewritten to it (a wildcard bind would collide). It cannot tell
//! a Machine that listens on IPv4 only from one that listens on both.

mod netns;

pub use netns::{enter_user_namespace_unless_root, join_netns};
use netns::{
    in_namespace, into_raw, ip_tool, on_fresh_thread, open_own_netns, run_ip, unshare_net,
    write_sysctl, Worker,
};

use std::{
    ffi::CString,
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc, Mutex,
    },
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The fabric's address that Machines reach the Machines API at (Fly: `_api.internal`).
pub const API_IP: Ipv6Addr = Ipv6Addr::new(0xfdaa, 0, 0, 0, 0, 0, 0, 3);
/// The port of the Machines API on the private network, as on Fly.
pub const API_PORT: u16 = 4280;
/// How long the proxy tries to connect to a Machine's address.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// The fabric's end of every Machine's link: each Machine's default gateway.
const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// How Machines are put on the network (`--network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkMode {
    /// Each Machine in a network namespace of its own, with Fly's two addresses.
    Isolated,
    /// Every Machine in flyby-local's namespace, one loopback address each (less faithful).
    Shared,
}

/// Why the network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "--network isolated needs network namespaces, which this host refuses ({0}): run \
         flyby-local as root, allow unprivileged user namespaces (Debian: sysctl \
         kernel.unprivileged_userns_clone=1; Ubuntu: kernel.apparmor_restrict_unprivileged_userns=0), \
         or pass --network shared (less faithful: see the manual)"
    )]
    NoNamespaces(io::Error),
    #[error("--network isolated needs iproute2's `ip` (Debian: apt-get install iproute2)")]
    NoIpTool,
    #[error("cannot set up the platform's network: {0}")]
    Setup(io::Error),
}

/// The two addresses of one Machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineAddrs {
    /// Where fly-proxy delivers the Machine's public traffic (IPv4).
    pub proxy: IpAddr,
    /// `FLY_PRIVATE_IP`: where other Machines reach it (IPv6 6PN when isolated).
    pub private: IpAddr,
}

/// One Machine's place on the network; its namespace lives as long as this (and its
/// processes) do.
#[derive(Debug, Clone)]
pub struct MachineNet {
    pub addrs: MachineAddrs,
    /// The Machine's network namespace; `None` in shared mode.
    netns: Option<Arc<OwnedFd>>,
}

impl MachineNet {
    /// A Machine of the shared mode, or a stand-in whose addresses the caller chose.
    pub fn shared(ip: IpAddr) -> MachineNet {
        MachineNet {
            addrs: MachineAddrs {
                proxy: ip,
                private: ip,
            },
            netns: None,
        }
    }

    /// Whether a process must be told where to listen (shared mode: its config's wildcard
    /// would collide with every other Machine's).
    pub fn site_addr_override(&self, port: u16) -> Option<SocketAddr> {
        self.netns
            .is_none()
            .then_some(SocketAddr::new(self.addrs.proxy, port))
    }

    /// The raw namespace a Machine's process must join before it runs (`setns` in the child).
    pub fn netns_fd(&self) -> Option<RawFd> {
        self.netns.as_ref().map(|fd| fd.as_raw_fd())
    }

    /// A listener on `port` inside the Machine, on both of its addresses, for stand-ins that
    /// play a Machine without a process of its own.
    pub async fn listen(&self, port: u16) -> io::Result<TcpListener> {
        let Some(netns) = self.netns.clone() else {
            return TcpListener::bind((self.addrs.proxy, port)).await;
        };
        let listener = in_namespace(netns, move || {
            let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
            socket.set_only_v6(false)?;
            socket.set_reuse_address(true)?;
            socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
            socket.listen(1024)?;
            socket.set_nonblocking(true)?;
            Ok(std::net::TcpListener::from(socket))
        })
        .await?;
        TcpListener::from_std(listener)
    }
}

/// The platform's network: how it reaches Machines and how Machines reach it. Cheap to clone.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

struct Inner {
    kind: Kind,
    /// Addresses handed out so far, so none is reused while a lingering connection might still
    /// reach an old Machine.
    next: AtomicU32,
}

enum Kind {
    /// Machines on 127.X.Y.N, X.Y random per platform so that two platforms side by side do
    /// not hand out the same addresses.
    Shared {
        block: u32,
    },
    Isolated(Fabric),
}

/// The platform's own namespace, with a thread that lives in it.
struct Fabric {
    worker: Worker,
    ip_tool: PathBuf,
}

impl Network {
    pub fn new(mode: NetworkMode) -> Result<Network, NetworkError> {
        let kind = match mode {
            NetworkMode::Shared => Kind::Shared {
                block: (rand::random_range(1u32..=254) << 16)
                    | (rand::random_range(0u32..=255) << 8),
            },
            NetworkMode::Isolated => Kind::Isolated(Fabric::new()?),
        };
        Ok(Network {
            inner: Arc::new(Inner {
                kind,
                next: AtomicU32::new(0),
            }),
        })
    }

    pub fn mode(&self) -> NetworkMode {
        match self.inner.kind {
            Kind::Shared { .. } => NetworkMode::Shared,
            Kind::Isolated(_) => NetworkMode::Isolated,
        }
    }

    /// A place for a new Machine that will listen on `ports`.
    pub async fn machine(&self, ports: &[u16]) -> io::Result<MachineNet> {
        match &self.inner.kind {
            Kind::Shared { block } => Ok(MachineNet::shared(self.free_loopback(*block, ports))),
            Kind::Isolated(fabric) => {
                let n = self.inner.next.fetch_add(1, Ordering::Relaxed) + 2;
                fabric.machine(n).await
            }
        }
    }

    /// Connects from the fabric (where fly-proxy and flyd sit) to a Machine's address.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        match &self.inner.kind {
            Kind::Shared { .. } => TcpStream::connect(addr).await,
            Kind::Isolated(fabric) => {
                let ipv6 = addr.is_ipv6();
                let socket = fabric
                    .worker
                    .run(move || {
                        let domain = if ipv6 {
                            socket2::Domain::IPV6
                        } else {
                            socket2::Domain::IPV4
                        };
                        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
                        socket.set_nonblocking(true)?;
                        Ok(OwnedFd::from(socket))
                    })
                    .await?;
                // SAFETY: a fresh, owned, non-blocking TCP socket.
                let socket = unsafe { TcpSocket::from_raw_fd(into_raw(socket)) };
                socket.connect(addr).await
            }
        }
    }

    /// Where Machines reach the Machines API; `public` is where the test or the operator does.
    pub fn api_for_machines(&self, public: SocketAddr) -> SocketAddr {
        match self.inner.kind {
            Kind::Shared { .. } => public,
            Kind::Isolated(_) => SocketAddr::from((API_IP, API_PORT)),
        }
    }

    /// The Machines API's listener on the private network; `None` in shared mode, where
    /// Machines use the public one.
    pub async fn api_listener(&self) -> io::Result<Option<TcpListener>> {
        let Kind::Isolated(fabric) = &self.inner.kind else {
            return Ok(None);
        };
        let listener = fabric
            .worker
            .run(|| {
                let listener = std::net::TcpListener::bind((API_IP, API_PORT))?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .await?;
        TcpListener::from_std(listener).map(Some)
    }

    /// A loopback address where each of `ports` is free right now (another program may hold
    /// one: a leftover of an earlier run, or another flyby-local).
    fn free_loopback(&self, block: u32, ports: &[u16]) -> IpAddr {
        let mut ip = self.loopback(block);
        for _ in 0..64 {
            if ports
                .iter()
                .all(|&port| std::net::TcpListener::bind((ip, port)).is_ok())
            {
                break;
            }
            tracing::debug!(%ip, "address busy, trying the next one");
            ip = self.loopback(block);
        }
        IpAddr::V4(ip)
    }

    /// 127.X.Y.2, .3, ... skipping the .0 and .255 of each /24, which some tools treat as
    /// network and broadcast addresses.
    fn loopback(&self, block: u32) -> Ipv4Addr {
        loop {
            let n = (block + 2 + self.inner.next.fetch_add(1, Ordering::Relaxed)) & 0x00ff_ffff;
            if !matches!(n & 0xff, 0 | 255) && n > 1 {
                return Ipv4Addr::from(0x7f00_0000 | n);
            }
        }
    }
}

/// A hyper connector that connects from the fabric: the proxy's way to Machines.
impl tower::Service<http::Uri> for Network {
    type Response = hyper_util::rt::TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = io::Result<Self::Response>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let network = self.clone();
        Box::pin(async move {
            // Routes are built from socket addresses: the authority is always `ip:port`.
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an ip:port"))?;
            // A gone Machine's link is gone with it (unreachable at once); this bounds only a
            // Machine whose process accepts nothing at all.
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, network.connect(addr))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            stream.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// The addresses of the `n`th Machine of an isolated platform.
fn isolated_addrs(n: u32) -> MachineAddrs {
    let [_, a, b, c] = n.to_be_bytes();
    MachineAddrs {
        proxy: IpAddr::V4(Ipv4Addr::new(172, 19 + a, b, c)),
        private: IpAddr::V6(Ipv6Addr::new(
            0xfdaa,
            0,
            0x0f1b,
            0x0a7b,
            0,
            (n >> 16) as u16,
            n as u16,
            2,
        )),
    }
}

impl Fabric {
    fn new() -> Result<Fabric, NetworkError> {
        let ip_tool = ip_tool().ok_or(NetworkError::NoIpTool)?;
        let worker = Worker::in_new_namespace().map_err(NetworkError::NoNamespaces)?;
        let tool = ip_tool.clone();
        worker
            .block_on(move || {
                // Addresses are usable at once (no duplicate address detection: nobody else is
                // on these links), and the fabric routes between Machines' 6PN addresses.
                write_sysctl("net/ipv6/conf/default/accept_dad", "0")?;
                write_sysctl("net/ipv6/conf/all/forwarding", "1")?;
                run_ip(
                    &tool,
                    &[
                        "link set lo up".to_owned(),
                        format!("addr add {API_IP}/128 dev lo nodad"),
                    ],
                )
            })
            .map_err(NetworkError::Setup)?;
        Ok(Fabric { worker, ip_tool })
    }

    /// A namespace for the `n`th Machine, linked to the fabric by a veth pair.
    async fn machine(&self, n: u32) -> io::Result<MachineNet> {
        let addrs = isolated_addrs(n);
        let link = format!("fm{n}");
        let fabric_tid = self.worker.tid;
        let tool = self.ip_tool.clone();
        let inside = {
            let link = link.clone();
            vec![
                format!("link add eth0 type veth peer name {link} netns {fabric_tid}"),
                "link set lo up".to_owned(),
                format!("addr add {}/32 dev eth0", addrs.proxy),
                format!("addr add {}/128 dev eth0 nodad", addrs.private),
                "link set eth0 up".to_owned(),
                format!("route add {GATEWAY_V4} dev eth0 scope link"),
                format!("route add default via {GATEWAY_V4} dev eth0"),
                format!("route add default via {GATEWAY_V6} dev eth0"),
            ]
        };
        let netns = on_fresh_thread(move || {
            unshare_net()?;
            write_sysctl("net/ipv6/conf/default/accept_dad", "0")?;
            write_sysctl("net/ipv6/conf/all/accept_dad", "0")?;
            let fd = open_own_netns()?;
            run_ip(&tool, &inside)?;
            Ok(fd)
        })
        .await?;
        let tool = self.ip_tool.clone();
        self.worker
            .run(move || {
                run_ip(
                    &tool,
                    &[
                        format!("addr add {GATEWAY_V4}/32 dev {link}"),
                        format!("addr add {GATEWAY_V6}/64 dev {link} nodad"),
                        format!("link set {link} up"),
                        format!("route add {}/32 dev {link}", addrs.proxy),
                        format!("route add {}/128 dev {link}", addrs.private),
                    ],
                )
            })
            .await?;
        Ok(MachineNet {
            addrs,
            netns: Some(Arc::new(netns)),
        })
    }
}

#[cfg(test)]
mod tests;
