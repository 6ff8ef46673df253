//! Everything a runner needs to start a Machine's process, decided once at create: the program
//! of its image, its arguments, its whole environment (what Fly sets, then its config's), its
//! place on the network, its stop signal and timeout, its restart policy.

use super::*;

/// What runs as the Machine: its process, or a stand-in a fault asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    Process,
    /// The `never_start` fault: nothing runs and the Machine stays `starting`.
    NeverStart,
    /// The `never_serve` fault: a listener that accepts and never answers takes the place of
    /// the process; the Machine is `started`.
    NeverServe,
    /// The `impostor` fault: a listener that answers `200 ok` to everything, naming the Machine
    /// but knowing nothing of its config, takes the place of the process.
    Impostor,
}

/// Everything a runner needs to start a Machine's process, decided at create time.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The executable the image maps to.
    pub program: PathBuf,
    /// `config.init.cmd`.
    pub args: Vec<String>,
    /// The complete environment of the process.
    pub env: Vec<(String, String)>,
    /// The Machine's place on the network: its addresses and its namespace.
    pub net: MachineNet,
    /// `internal_port` of each service: `started` waits until each accepts connections.
    pub ports: Vec<u16>,
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    pub restart: RestartPolicy,
    pub auto_destroy: bool,
    pub guest: GuestKind,
    /// `<app>[<id>] <region> [info]`, the prefix of each log line, as `fly logs` shows it.
    pub log_prefix: String,
}

impl LaunchSpec {
    /// The spec for a Machine whose `config` has been validated. `restart` and the stop config
    /// must already have been checked by the caller; invalid values fall back to Fly's defaults.
    pub fn new(
        record: &MachineRecord,
        config: &MachineConfig,
        program: PathBuf,
        guest: GuestKind,
        net: MachineNet,
    ) -> LaunchSpec {
        let ports: Vec<u16> =
            record
                .services()
                .iter()
                .map(|s| s.internal_port)
                .fold(Vec::new(), |mut ports, p| {
                    if !ports.contains(&p) {
                        ports.push(p);
                    }
                    ports
                });
        let stop = config.stop_config.as_ref();
        LaunchSpec {
            program,
            args: config
                .init
                .as_ref()
                .and_then(|i| i.cmd.clone())
                .unwrap_or_default(),
            env: machine_env(record, config, &net, ports.first().copied()),
            net,
            ports,
            stop_signal: stop
                .and_then(|s| s.signal.as_ref()?.resolve())
                .unwrap_or(libc::SIGINT),
            stop_timeout: stop
                .and_then(|s| s.timeout.as_ref()?.resolve())
                .unwrap_or(DEFAULT_STOP_TIMEOUT),
            restart: RestartPolicy::from_config(config.restart.as_ref())
                .unwrap_or(RestartPolicy::OnFailure(DEFAULT_MAX_RETRIES)),
            auto_destroy: config.auto_destroy.unwrap_or(false),
            guest,
            log_prefix: format!("{}[{}] {} [info]", record.app, record.id, record.region),
        }
    }
}

impl LaunchSpec {
    /// Adds variables the process sees but the Machine config does not show; they never
    /// override the `LEPTOS_SITE_ADDR` the shared network imposes.
    pub fn add_secrets(&mut self, secrets: &[(String, String)]) {
        let imposed = self.net.site_addr_override(0).is_some();
        for (key, value) in secrets {
            if imposed && key == SITE_ADDR {
                continue;
            }
            self.env.retain(|(k, _)| k != key);
            self.env.push((key.clone(), value.clone()));
        }
    }
}

/// Where the Machine's server listens, by the convention of flyby's images.
const SITE_ADDR: &str = "LEPTOS_SITE_ADDR";

/// The environment of a Machine's process: the few inherited variables, what Fly sets in every
/// Machine, `config.env`, then, on the shared network only, `LEPTOS_SITE_ADDR` (see the module
/// docs).
pub fn machine_env(
    record: &MachineRecord,
    config: &MachineConfig,
    net: &MachineNet,
    first_port: Option<u16>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = INHERITED_ENV
        .iter()
        .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
        .collect();
    let id = record.id.to_string();
    let memory = config
        .guest
        .as_ref()
        .and_then(|g| g.memory_mb)
        .unwrap_or(256);
    let fly = [
        ("FLY_APP_NAME", record.app.clone()),
        ("FLY_MACHINE_ID", id.clone()),
        ("FLY_ALLOC_ID", id),
        ("FLY_REGION", record.region.to_string()),
        ("FLY_IMAGE_REF", config.image.clone().unwrap_or_default()),
        ("FLY_PRIVATE_IP", record.addrs.private.to_string()),
        ("FLY_MACHINE_VERSION", record.instance_id.clone()),
        ("FLY_PROCESS_GROUP", "app".to_owned()),
        ("FLY_VM_MEMORY_MB", memory.to_string()),
        ("PRIMARY_REGION", record.region.to_string()),
    ];
    env.extend(fly.into_iter().map(|(k, v)| (k.to_owned(), v)));
    env.extend(config.env.clone().unwrap_or_default());
    if let Some(addr) = net.site_addr_override(first_port.unwrap_or(8080)) {
        env.insert(SITE_ADDR.to_owned(), addr.to_string());
    }
    env.into_iter().collect()
}
