//! What the proxy, the Machines API and the supervisor share: one `Platform`.

use super::*;
use std::path::Path;

/// Everything the local platform shares between the proxy, the Machines API and the
/// supervisor.
pub struct Platform {
    /// The command line, as given.
    pub args: Args,
    /// Apps and Machines.
    pub registry: Registry,
    /// Counters for `/_local/stats`.
    pub stats: Stats,
    /// Armed fault knobs.
    pub faults: Faults,
    /// The bearer token every `/v1` call must carry.
    pub token: String,
    /// Image name -> the executable a Machine of that image runs.
    pub images: BTreeMap<String, PathBuf>,
    /// The Machines' processes.
    pub supervisor: Supervisor,
    /// Fly's per-action token buckets.
    pub rate_limits: RateLimits,
    /// Where the proxy really listens (the port may have been 0 on the command line).
    pub proxy_addr: SocketAddr,
    /// Where the Machines API really listens.
    pub api_addr: SocketAddr,
    /// How the proxy reaches Machines and Machines reach each other and the API.
    pub network: Network,
    /// How long hops, API calls and boots take.
    pub timings: Timings,
    /// Machine leases: who may change a Machine now.
    pub leases: crate::local::machines_api::Leases,
}

impl Platform {
    /// A platform with no Machines; `proxy_addr` and `api_addr` are where its listeners are.
    pub fn new(
        args: Args,
        network: Network,
        proxy_addr: SocketAddr,
        api_addr: SocketAddr,
    ) -> Platform {
        let mut images: BTreeMap<String, PathBuf> = BTreeMap::new();
        if let Some(flyby) = sibling_executable("flyby") {
            images.insert(LAUNCHER_IMAGE.to_owned(), flyby);
        }
        images.extend(args.images.iter().cloned());
        Platform {
            token: args.api_token.expose().to_owned(),
            rate_limits: RateLimits::new(args.rate_limits == Switch::On),
            registry: Registry::default(),
            stats: Stats::default(),
            faults: Faults::default(),
            supervisor: Supervisor::default(),
            images,
            proxy_addr,
            api_addr,
            network,
            timings: Timings::new(args.timings, args.timings_seed),
            leases: Default::default(),
            args,
        }
    }

    /// The executable an image maps to, if any.
    pub fn image_program(&self, image: &str) -> Option<&Path> {
        self.images.get(image).map(PathBuf::as_path)
    }

    /// `LEPTOS_SITE_ROOT` for the launchers.
    pub fn site_root(&self) -> PathBuf {
        self.args.site_root.clone().unwrap_or_else(|| {
            let default = std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.parent()?.join("site")))
                .unwrap_or_else(|| PathBuf::from("target/site"));
            default.canonicalize().unwrap_or(default)
        })
    }
}

/// `name` in the directory of the running executable (where cargo puts every binary).
fn sibling_executable(name: &str) -> Option<PathBuf> {
    Some(std::env::current_exe().ok()?.parent()?.join(name))
}
