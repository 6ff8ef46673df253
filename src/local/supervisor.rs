//! Machines as real OS processes. Each Machine gets one runner task that owns its process and
//! walks it through Fly's states (`created → starting → started → stopping → stopped →
//! destroyed`); the Machines API talks to the runner through commands, so every state change of
//! one Machine happens in one place, in order.
//!
//! What a runner does that Fly does too: the env a Fly Machine has, the stop signal (SIGINT by
//! default) then SIGKILL after the stop timeout (5 s by default, like `kill_timeout`), the
//! restart policy, `auto_destroy`, log lines prefixed like `fly logs`.
//! Each process runs in its Machine's network namespace ([`super::network`]), where it binds
//! what its config says, as in a VM.
//! What differs, because Machines are processes on one host, not VMs:
//! - a Machine is `started` only once something accepts TCP connections on each service's
//!   `internal_port`, at either of its addresses (on Fly, `started` means the VM booted);
//! - with `--network shared` only, `LEPTOS_SITE_ADDR` is set to `<its address>:<first
//!   internal_port>`, overriding the config: there a wildcard bind would collide between
//!   Machines;
//! - each process runs in its own process group, which is signalled as a whole, and dies with
//!   flyby-local (`PR_SET_PDEATHSIG` on Linux, `kill_on_drop` everywhere).

use crate::{
    fly::MachineId,
    local::{
        network::{join_netns, MachineNet, Network},
        registry::{MachineEvent, MachineRecord, MachineState, Registry},
        Platform,
    },
};
use serde::Deserialize;
use serde_json::json;
use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    net::{IpAddr, SocketAddr},
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::Child,
    sync::{mpsc, oneshot},
    task::{JoinHandle, JoinSet},
    time::{sleep, sleep_until, Instant},
};

/// Fly's default `kill_timeout`: how long a Machine has between its stop signal and SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Fly's default for `on-failure` when `max_retries` is not set.
pub const DEFAULT_MAX_RETRIES: u32 = 10;
/// When flyby-local itself stops, no Machine gets more than this to exit cleanly.
const SHUTDOWN_GRACE_CAP: Duration = Duration::from_secs(10);
/// How often a starting Machine's ports are tried. Readiness is a property of another process:
/// there is no event to await, so this one place polls.
const READINESS_INTERVAL: Duration = Duration::from_millis(20);
/// Crash-looping Machines are restarted after a growing pause, capped here.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(5);
/// How long the processes of a killed Machine may take to be gone.
const GROUP_EXIT_BOUND: Duration = Duration::from_secs(2);
/// Events kept per Machine (a crash loop must not grow a record forever).
const MAX_EVENTS: usize = 100;
/// Variables of flyby-local's own environment a Machine inherits; everything else a Fly
/// Machine would not have is left out.
const INHERITED_ENV: &[&str] = &["PATH", "RUST_LOG", "RUST_BACKTRACE", "HOME"];

/// The subset of a Machine config (`api.MachineConfig`) the platform acts on. Parsing it is
/// also how the API validates types: a config that does not parse is a bad request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MachineConfig {
    pub image: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub guest: Option<GuestConfig>,
    pub auto_destroy: Option<bool>,
    pub restart: Option<RestartConfig>,
    pub services: Option<Vec<ServiceConfig>>,
    pub stop_config: Option<StopConfig>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub init: Option<InitConfig>,
}

/// `config.init`. Locally an image is one executable, its entrypoint: `cmd` becomes its
/// arguments, as Docker's CMD does for an image with an ENTRYPOINT. `entrypoint` and `exec`
/// would replace the executable itself and are not supported (ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InitConfig {
    pub cmd: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct GuestConfig {
    pub cpu_kind: Option<String>,
    pub cpus: Option<u32>,
    pub memory_mb: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RestartConfig {
    pub policy: Option<String>,
    pub max_retries: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceConfig {
    pub internal_port: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StopConfig {
    pub signal: Option<SignalSpec>,
    pub timeout: Option<DurationSpec>,
}

/// A signal as Fly's API takes it: a name (`SIGTERM`, `TERM`) or a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SignalSpec {
    Number(i32),
    Name(String),
}

impl SignalSpec {
    pub fn resolve(&self) -> Option<i32> {
        match self {
            SignalSpec::Number(n) => (1..=64).contains(n).then_some(*n),
            SignalSpec::Name(name) => signal_by_name(name),
        }
    }
}

/// A duration as Fly's API takes it: a Go-style string (`"5s"`, `"1m30s"`, `"500ms"`), or a
/// number of seconds (undocumented by Fly; Fly's own clients send strings).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationSpec {
    Seconds(f64),
    Text(String),
}

impl DurationSpec {
    pub fn resolve(&self) -> Option<Duration> {
        match self {
            DurationSpec::Seconds(s) => Duration::try_from_secs_f64(*s).ok(),
            DurationSpec::Text(t) => parse_go_duration(t),
        }
    }
}

/// Parses Go's `time.Duration` text (`"5s"`, `"1m30s"`, `"1.5s"`, `"300ms"`); a bare number is
/// seconds.
fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let seconds_per_unit = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total +=
            Duration::try_from_secs_f64(number.parse::<f64>().ok()? * seconds_per_unit).ok()?;
        rest = after;
    }
    (!text.is_empty()).then_some(total)
}

fn signal_by_name(name: &str) -> Option<i32> {
    let name = name.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "ABRT" => libc::SIGABRT,
        "ALRM" => libc::SIGALRM,
        "FPE" => libc::SIGFPE,
        "HUP" => libc::SIGHUP,
        "ILL" => libc::SIGILL,
        "INT" => libc::SIGINT,
        "KILL" => libc::SIGKILL,
        "PIPE" => libc::SIGPIPE,
        "QUIT" => libc::SIGQUIT,
        "SEGV" => libc::SIGSEGV,
        "TERM" => libc::SIGTERM,
        "TRAP" => libc::SIGTRAP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        _ => return None,
    })
}

/// What to do when a Machine's process exits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    No,
    /// Restart after a non-zero exit (or death by signal), at most this many times in a row.
    OnFailure(u32),
    Always,
}

impl RestartPolicy {
    /// Fly's policy for a config; `None` when the policy name is not one Fly knows. With no
    /// policy at all, Fly defaults to `on-failure`.
    pub fn from_config(restart: Option<&RestartConfig>) -> Option<RestartPolicy> {
        let max = restart
            .and_then(|r| r.max_retries)
            .unwrap_or(DEFAULT_MAX_RETRIES);
        Some(match restart.and_then(|r| r.policy.as_deref()) {
            None | Some("") | Some("on-failure") | Some("on-fail") => RestartPolicy::OnFailure(max),
            Some("no") => RestartPolicy::No,
            Some("always") => RestartPolicy::Always,
            Some(_) => return None,
        })
    }
}

/// What runs as the Machine: its process, or a stand-in a fault asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    Process,
    /// The `never_start` fault: nothing runs and the Machine stays `starting`.
    NeverStart,
    /// The `never_serve` fault: a listener that accepts and never answers takes the place of
    /// the process; the Machine is `started`.
    NeverServe,
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

/// Why the supervisor refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisorError {
    /// Destroyed, or never existed.
    #[error("machine not found")]
    Gone,
    // Fly's reference shows this text, with 409, for a stop of a Machine that is not started.
    #[error("unable to stop machine, not currently started")]
    NotStarted,
    // Undocumented: the text flyd gives for a start of a running Machine.
    #[error("machine still active, refusing to start")]
    StillActive,
    // Fly's reference shows a 409 for this delete; the text is flyd's.
    #[error("unable to destroy machine, not currently stopped or suspended")]
    NotStopped,
    #[error("flyby-local is shutting down")]
    ShuttingDown,
}

type Reply<T> = oneshot::Sender<Result<T, SupervisorError>>;

enum Command {
    /// Answers with the state the Machine was in.
    Start(Reply<MachineState>),
    Stop {
        signal: Option<i32>,
        timeout: Option<Duration>,
        reply: Reply<()>,
    },
    Destroy {
        force: bool,
        reply: Reply<()>,
    },
    /// SIGKILL now, as a crash would (the `crash` fault).
    Crash,
    /// flyby-local is stopping: stop gracefully and end.
    Shutdown,
}

/// The runners of all Machines that are not destroyed.
#[derive(Default)]
pub struct Supervisor {
    runners: Mutex<HashMap<MachineId, mpsc::UnboundedSender<Command>>>,
    tasks: Mutex<JoinSet<()>>,
    closed: AtomicBool,
}

impl Supervisor {
    /// Starts the runner of a Machine just inserted in the registry (state `created`); it
    /// boots the Machine unless `skip_launch`.
    pub fn launch(
        &self,
        platform: &Arc<Platform>,
        record: &MachineRecord,
        spec: LaunchSpec,
        skip_launch: bool,
    ) -> Result<(), SupervisorError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(SupervisorError::ShuttingDown);
        }
        let (commands, receiver) = mpsc::unbounded_channel();
        self.runners
            .lock()
            .expect("runners lock")
            .insert(record.id, commands);
        let runner = Runner {
            platform: platform.clone(),
            app: record.app.clone(),
            id: record.id,
            spec,
            commands: receiver,
            guest: None,
            retries: 0,
        };
        let mut tasks = self.tasks.lock().expect("tasks lock");
        while tasks.try_join_next().is_some() {}
        tasks.spawn(runner.run(!skip_launch));
        Ok(())
    }

    /// Whether [`Supervisor::shutdown`] has begun: no new Machine may start.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Starts a `stopped` (or never launched) Machine; answers with its previous state.
    pub async fn start(&self, id: MachineId) -> Result<MachineState, SupervisorError> {
        self.ask(id, Command::Start).await
    }

    /// Sends the stop signal (the config's, or `signal`), SIGKILL after the timeout. Answers
    /// once the stop has begun, as Fly does; `wait?state=stopped` tells when it is done. A
    /// Machine that is not running cannot be stopped.
    pub async fn stop(
        &self,
        id: MachineId,
        signal: Option<i32>,
        timeout: Option<Duration>,
    ) -> Result<(), SupervisorError> {
        self.ask(id, |reply| Command::Stop {
            signal,
            timeout,
            reply,
        })
        .await
    }

    /// Destroys a Machine; a running one only with `force` (then SIGKILL). Answers once it is
    /// destroyed and its process is gone.
    pub async fn destroy(&self, id: MachineId, force: bool) -> Result<(), SupervisorError> {
        self.ask(id, |reply| Command::Destroy { force, reply })
            .await
    }

    /// Kills the Machine's process now, as a crash would; what follows is up to its restart
    /// policy.
    pub fn crash(&self, id: MachineId) -> Result<(), SupervisorError> {
        self.sender(id)?
            .send(Command::Crash)
            .map_err(|_| SupervisorError::Gone)
    }

    async fn ask<T>(
        &self,
        id: MachineId,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, SupervisorError> {
        let (reply, answer) = oneshot::channel();
        self.sender(id)?
            .send(command(reply))
            .map_err(|_| SupervisorError::Gone)?;
        // A runner that ends (its Machine destroyed meanwhile) drops the reply.
        answer.await.unwrap_or(Err(SupervisorError::Gone))
    }

    fn sender(&self, id: MachineId) -> Result<mpsc::UnboundedSender<Command>, SupervisorError> {
        self.runners
            .lock()
            .expect("runners lock")
            .get(&id)
            .cloned()
            .ok_or(SupervisorError::Gone)
    }

    fn forget(&self, id: MachineId) {
        self.runners.lock().expect("runners lock").remove(&id);
    }

    /// Stops every Machine (its stop signal, SIGKILL after its timeout, at most 10 s) and
    /// waits until every process is gone. No Machine can be
    /// created afterwards.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let runners: Vec<_> = self
            .runners
            .lock()
            .expect("runners lock")
            .values()
            .cloned()
            .collect();
        for runner in runners {
            let _ = runner.send(Command::Shutdown);
        }
        let mut tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        let all_done = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE_CAP + Duration::from_secs(5), all_done)
            .await
            .is_err()
        {
            tracing::error!("Machines did not stop in time: killing them");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Synchronous last resort: SIGKILL to every Machine's process group, and every runner
    /// aborted (their `kill_on_drop` children die with them).
    pub fn kill_all_now(&self, registry: &Registry) {
        self.closed.store(true, Ordering::SeqCst);
        for machine in registry.all() {
            if let Some(pid) = machine.pid {
                signal_group(pid, libc::SIGKILL);
            }
        }
        self.tasks.lock().expect("tasks lock").abort_all();
    }
}

/// Awaits the end of every process of a group that was sent SIGKILL: a signal reaches a
/// process a moment before it is gone, and an orphan is reaped by init a moment after. Bounded,
/// and a poll: the kernel announces neither.
async fn group_gone(pgid: u32) {
    let deadline = Instant::now() + GROUP_EXIT_BOUND;
    while group_exists(pgid) {
        if Instant::now() >= deadline {
            tracing::warn!(pgid, "processes of a Machine outlive SIGKILL");
            return;
        }
        sleep(READINESS_INTERVAL / 4).await;
    }
}

fn group_exists(pgid: u32) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks for existence.
    let found = unsafe { libc::kill(-pgid, 0) } == 0;
    found || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Sends `signal` to the whole process group a Machine's process leads.
fn signal_group(pgid: u32, signal: i32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid > 1 {
        // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names a group.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// How a Machine's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exit {
    code: Option<i32>,
    signal: Option<i32>,
}

impl Exit {
    fn failed(&self) -> bool {
        self.code != Some(0)
    }

    fn killed() -> Exit {
        Exit {
            code: None,
            signal: Some(libc::SIGKILL),
        }
    }
}

impl From<ExitStatus> for Exit {
    fn from(status: ExitStatus) -> Exit {
        Exit {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

/// What is running as a Machine right now.
enum Body {
    Process {
        child: Child,
        pid: u32,
    },
    Tarpit(JoinHandle<()>),
    Inert,
    /// Waiting to restart a crashed process.
    Backoff(Instant),
}

impl Body {
    /// Resolves when the process exits; never for the stand-ins.
    async fn exited(&mut self) -> Exit {
        match self {
            Body::Process { child, .. } => match child.wait().await {
                Ok(status) => status.into(),
                Err(e) => {
                    tracing::error!(error = %e, "cannot wait for a Machine's process");
                    Exit::killed()
                }
            },
            _ => std::future::pending().await,
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Body::Process { pid, .. } => Some(*pid),
            _ => None,
        }
    }
}

struct Guest {
    body: Body,
    /// `started` has been reached.
    ready: bool,
    /// A stop (or shutdown, or forced destroy) is under way: the exit is not a crash.
    stopping: bool,
    /// When the stop signal's grace ends and SIGKILL follows.
    kill_at: Option<Instant>,
}

/// What woke a runner up.
enum Wake {
    Exited(Exit),
    Ready,
    KillNow,
    Respawn,
    Command(Option<Command>),
}

/// Whether the runner goes on after handling something.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    End,
}

struct Runner {
    platform: Arc<Platform>,
    app: String,
    id: MachineId,
    spec: LaunchSpec,
    commands: mpsc::UnboundedReceiver<Command>,
    /// `None` while `created` or `stopped`.
    guest: Option<Guest>,
    /// Restarts since the last start by a user.
    retries: u32,
}

impl Runner {
    async fn run(mut self, launch: bool) {
        let mut flow = if launch { self.boot() } else { Flow::Continue };
        while flow == Flow::Continue {
            flow = if self.guest.is_some() {
                self.running().await
            } else {
                self.idle().await
            };
        }
        self.platform.supervisor.forget(self.id);
    }

    /// `created` or `stopped`: only commands can happen.
    async fn idle(&mut self) -> Flow {
        match self.commands.recv().await {
            Some(Command::Start(reply)) => {
                let previous = self.state();
                self.retries = 0;
                let flow = self.boot();
                let _ = reply.send(Ok(previous));
                flow
            }
            Some(Command::Stop { reply, .. }) => {
                let _ = reply.send(Err(SupervisorError::NotStarted));
                Flow::Continue
            }
            Some(Command::Destroy { reply, .. }) => {
                self.destroy("user");
                let _ = reply.send(Ok(()));
                Flow::End
            }
            Some(Command::Crash) => Flow::Continue,
            Some(Command::Shutdown) | None => Flow::End,
        }
    }

    async fn running(&mut self) -> Flow {
        let network = &self.platform.network;
        let addrs = [self.spec.net.addrs.proxy, self.spec.net.addrs.private];
        let ports = &self.spec.ports;
        let guest = self.guest.as_mut().expect("running has a guest");
        let probing = !guest.ready && !guest.stopping && matches!(guest.body, Body::Process { .. });
        let kill_at = guest.kill_at;
        let backoff = match guest.body {
            Body::Backoff(at) => Some(at),
            _ => None,
        };
        let wake = tokio::select! {
            exit = guest.body.exited() => Wake::Exited(exit),
            () = probe_ready(network, addrs, ports), if probing => Wake::Ready,
            () = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => Wake::KillNow,
            () = sleep_until(backoff.unwrap_or_else(Instant::now)), if backoff.is_some() => Wake::Respawn,
            command = self.commands.recv() => Wake::Command(command),
        };
        match wake {
            Wake::Exited(exit) => self.on_exit(exit).await,
            Wake::Ready => {
                self.mark_started();
                Flow::Continue
            }
            Wake::KillNow => {
                if let Some(guest) = self.guest.as_mut() {
                    guest.kill_at = None;
                    if let Some(pid) = guest.body.pid() {
                        tracing::info!(machine = %self.id, "stop timeout over: SIGKILL");
                        signal_group(pid, libc::SIGKILL);
                    }
                }
                Flow::Continue
            }
            Wake::Respawn => self.spawn_guest(),
            Wake::Command(Some(command)) => self.on_command(command).await,
            Wake::Command(None) => {
                self.kill_and_reap().await;
                Flow::End
            }
        }
    }

    async fn on_command(&mut self, command: Command) -> Flow {
        match command {
            Command::Start(reply) => {
                let _ = reply.send(Err(SupervisorError::StillActive));
                Flow::Continue
            }
            Command::Stop {
                signal,
                timeout,
                reply,
            } => {
                let flow = self.begin_stop(
                    signal.unwrap_or(self.spec.stop_signal),
                    timeout.unwrap_or(self.spec.stop_timeout),
                    "user",
                );
                let _ = reply.send(Ok(()));
                flow
            }
            Command::Destroy {
                force: false,
                reply,
            } => {
                let _ = reply.send(Err(SupervisorError::NotStopped));
                Flow::Continue
            }
            Command::Destroy { force: true, reply } => {
                self.kill_and_reap().await;
                self.destroy("user");
                let _ = reply.send(Ok(()));
                Flow::End
            }
            Command::Crash => self.crash().await,
            Command::Shutdown => {
                self.stop_for_shutdown().await;
                Flow::End
            }
        }
    }

    /// Sends the stop signal; the exit (or the SIGKILL at `timeout`) completes the stop.
    fn begin_stop(&mut self, signal: i32, timeout: Duration, source: &str) -> Flow {
        let Some(guest) = self.guest.as_mut() else {
            return Flow::Continue;
        };
        if guest.stopping {
            return Flow::Continue;
        }
        guest.stopping = true;
        let pid = guest.body.pid();
        if let Some(pid) = pid {
            guest.kill_at = Some(Instant::now() + timeout);
            signal_group(pid, signal);
        }
        self.set_state(
            MachineState::Stopping,
            Some(MachineEvent::new("stop", MachineState::Stopping, source)),
        );
        if pid.is_none() {
            // Nothing to wait for: a stand-in or a pending restart stops at once.
            let guest = self.guest.take().expect("guest");
            if let Body::Tarpit(listener) = guest.body {
                listener.abort();
            }
            return self.settle_stopped();
        }
        Flow::Continue
    }

    async fn crash(&mut self) -> Flow {
        let Some(guest) = self.guest.as_mut() else {
            return Flow::Continue;
        };
        match &guest.body {
            Body::Process { pid, .. } => {
                signal_group(*pid, libc::SIGKILL);
                Flow::Continue
            }
            Body::Backoff(_) => Flow::Continue,
            Body::Tarpit(_) | Body::Inert => self.on_exit(Exit::killed()).await,
        }
    }

    /// flyby-local is stopping: the stop signal, a bounded grace, SIGKILL, and the process
    /// reaped before the runner ends.
    async fn stop_for_shutdown(&mut self) {
        let grace = self.spec.stop_timeout.min(SHUTDOWN_GRACE_CAP);
        if let Some(Guest {
            body: Body::Process { child, pid },
            ..
        }) = self.guest.as_mut()
        {
            signal_group(*pid, self.spec.stop_signal);
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                signal_group(*pid, libc::SIGKILL);
            }
        }
        self.kill_and_reap().await;
        self.set_state(
            MachineState::Stopped,
            Some(MachineEvent::new("stop", MachineState::Stopped, "flyd")),
        );
    }

    /// SIGKILL to the whole group and wait for the process: nothing of it is left after.
    async fn kill_and_reap(&mut self) {
        if let Some(guest) = self.guest.take() {
            match guest.body {
                Body::Process { mut child, pid } => {
                    signal_group(pid, libc::SIGKILL);
                    let _ = child.wait().await;
                    group_gone(pid).await;
                }
                Body::Tarpit(listener) => listener.abort(),
                Body::Inert | Body::Backoff(_) => {}
            }
        }
    }

    /// The process ended: a stop completes, or the restart policy and `auto_destroy` decide.
    /// Restart comes first: with `auto_destroy`, a Machine is destroyed when it would
    /// otherwise stop (which is why Fly's `fly m run --rm` defaults the policy to `no`).
    async fn on_exit(&mut self, exit: Exit) -> Flow {
        let Some(guest) = self.guest.take() else {
            return Flow::Continue;
        };
        match &guest.body {
            // Whatever the process left behind in its group dies with it, as in a VM.
            Body::Process { pid, .. } => {
                signal_group(*pid, libc::SIGKILL);
                group_gone(*pid).await;
            }
            Body::Tarpit(listener) => listener.abort(),
            Body::Inert | Body::Backoff(_) => {}
        }
        self.platform
            .registry
            .update(&self.app, self.id, |m| m.pid = None);
        let restarting = !guest.stopping
            && match self.spec.restart {
                RestartPolicy::No => false,
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure(max) => exit.failed() && self.retries < max,
            };
        tracing::info!(
            machine = %self.id,
            code = ?exit.code,
            signal = ?exit.signal,
            restarting,
            "Machine process exited"
        );
        let exit_event = json!({"exit_event": {
            "exit_code": exit.code.unwrap_or(-1),
            "guest_exit_code": exit.code.unwrap_or(-1),
            "guest_signal": exit.signal.unwrap_or(-1),
            "signal": exit.signal.unwrap_or(-1),
            "oom_killed": false,
            "requested_stop": guest.stopping,
            "restarting": restarting,
        }});
        let status = if restarting {
            MachineState::Starting
        } else {
            MachineState::Stopped
        };
        self.push_event(MachineEvent::new("exit", status, "flyd").with_request(exit_event));
        if !restarting {
            return self.settle_stopped();
        }
        self.retries += 1;
        self.set_state(
            MachineState::Starting,
            Some(MachineEvent::new("restart", MachineState::Starting, "flyd")),
        );
        let pause = Duration::from_millis(100)
            .saturating_mul(2u32.saturating_pow(self.retries.saturating_sub(1)))
            .min(MAX_RESTART_BACKOFF);
        self.guest = Some(Guest {
            body: Body::Backoff(Instant::now() + pause),
            ready: false,
            stopping: false,
            kill_at: None,
        });
        Flow::Continue
    }

    /// The Machine no longer runs: `destroyed` with `auto_destroy`, else `stopped`.
    fn settle_stopped(&mut self) -> Flow {
        if self.spec.auto_destroy {
            self.destroy("flyd");
            return Flow::End;
        }
        self.set_state(MachineState::Stopped, None);
        Flow::Continue
    }

    /// `starting`, then the guest.
    fn boot(&mut self) -> Flow {
        self.set_state(MachineState::Starting, None);
        self.spawn_guest()
    }

    fn spawn_guest(&mut self) -> Flow {
        let (body, ready) = match self.spec.guest {
            GuestKind::NeverStart => (Body::Inert, false),
            GuestKind::NeverServe => (
                Body::Tarpit(tarpit(self.spec.net.clone(), &self.spec.ports)),
                true,
            ),
            GuestKind::Process => match spawn(&self.spec) {
                Ok(mut child) => {
                    let pid = child.id().unwrap_or_default();
                    // Recorded before its first line is shown: whoever reads that line can
                    // find the process.
                    self.platform
                        .registry
                        .update(&self.app, self.id, |m| m.pid = Some(pid));
                    forward_output(&mut child, &self.spec.log_prefix);
                    let ready = self.spec.ports.is_empty();
                    (Body::Process { child, pid }, ready)
                }
                Err(e) => {
                    // Nothing to retry: a missing or non-executable program stays so.
                    tracing::error!(machine = %self.id, program = %self.spec.program.display(), error = %e, "cannot start the Machine's process");
                    self.push_event(
                        MachineEvent::new("exit", MachineState::Stopped, "flyd")
                            .with_request(json!({"error": e.to_string()})),
                    );
                    return self.settle_stopped();
                }
            },
        };
        let pid = body.pid();
        self.platform
            .registry
            .update(&self.app, self.id, |m| m.pid = pid);
        self.guest = Some(Guest {
            body,
            ready: false,
            stopping: false,
            kill_at: None,
        });
        if ready {
            self.mark_started();
        }
        Flow::Continue
    }

    fn mark_started(&mut self) {
        if let Some(guest) = self.guest.as_mut() {
            guest.ready = true;
        }
        let routable_from = Instant::now().into_std() + self.platform.faults.routing_delay();
        self.platform.registry.update(&self.app, self.id, |m| {
            m.routable_from = Some(routable_from);
        });
        self.set_state(
            MachineState::Started,
            Some(MachineEvent::new("start", MachineState::Started, "flyd")),
        );
    }

    fn destroy(&mut self, source: &str) {
        self.set_state(MachineState::Destroying, None);
        self.set_state(
            MachineState::Destroyed,
            Some(MachineEvent::new(
                "destroy",
                MachineState::Destroyed,
                source,
            )),
        );
    }

    fn state(&self) -> MachineState {
        self.platform
            .registry
            .get(&self.app, self.id)
            .map_or(MachineState::Destroyed, |m| m.state)
    }

    fn set_state(&self, state: MachineState, event: Option<MachineEvent>) {
        tracing::info!(app = %self.app, machine = %self.id, state = state.as_str(), "Machine state");
        let running = matches!(
            state,
            MachineState::Starting | MachineState::Started | MachineState::Stopping
        );
        self.platform.registry.update(&self.app, self.id, |m| {
            m.state = state;
            if !running {
                m.pid = None;
            }
            if let Some(event) = event {
                push_event(m, event);
            }
        });
    }

    fn push_event(&self, event: MachineEvent) {
        self.platform
            .registry
            .update(&self.app, self.id, |m| push_event(m, event));
    }
}

fn push_event(machine: &mut MachineRecord, event: MachineEvent) {
    machine.events.insert(0, event);
    machine.events.truncate(MAX_EVENTS);
}

/// Resolves once every port accepts a TCP connection at one of `addrs`.
async fn probe_ready(network: &Network, addrs: [IpAddr; 2], ports: &[u16]) {
    loop {
        let mut all = true;
        for &port in ports {
            let mut open = false;
            for ip in addrs {
                if network.connect(SocketAddr::new(ip, port)).await.is_ok() {
                    open = true;
                    break;
                }
            }
            if !open {
                all = false;
                break;
            }
        }
        if all {
            return;
        }
        sleep(READINESS_INTERVAL).await;
    }
}

/// Starts the Machine's process: its own process group, only its own environment, in its
/// network namespace; its output is piped, for [`forward_output`].
fn spawn(spec: &LaunchSpec) -> std::io::Result<Child> {
    let mut command = tokio::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let netns = spec.net.netns_fd();
    // SAFETY: the closure runs between fork and exec and only calls prctl(2) and setns(2),
    // which are async-signal-safe. PDEATHSIG fires when the thread that forked exits; that is a
    // tokio worker, which lives as long as the runtime, i.e. as long as flyby-local. The
    // namespace's descriptor is held by the spec, open until after the spawn.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(netns) = netns {
                join_netns(netns)?;
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Shows the process's output, line by line, with the `fly logs` prefix.
fn forward_output(child: &mut Child, prefix: &str) {
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward_lines(prefix.to_owned(), stdout));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward_lines(prefix.to_owned(), stderr));
    }
}

/// Copies a Machine's output to flyby-local's stdout, one prefixed line at a time. Bytes that
/// are not UTF-8 are shown replaced rather than ending the copy (which would block the Machine
/// on a full pipe).
async fn forward_lines(prefix: String, pipe: impl AsyncRead + Unpin) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{prefix} {text}");
            }
        }
    }
}

/// The `never_serve` stand-in: accepts on each port, holds every connection open, answers
/// nothing. Ends (closing everything) when aborted.
fn tarpit(net: MachineNet, ports: &[u16]) -> JoinHandle<()> {
    let ports = ports.to_vec();
    tokio::spawn(async move {
        let mut listeners = Vec::new();
        for port in ports {
            match net.listen(port).await {
                Ok(listener) => listeners.push(listener),
                Err(e) => tracing::warn!(port, error = %e, "never_serve: cannot listen"),
            }
        }
        let mut held = JoinSet::new();
        for listener in listeners {
            held.spawn(async move {
                let mut sockets = Vec::new();
                while let Ok((socket, _)) = listener.accept().await {
                    sockets.push(socket);
                }
            });
        }
        while held.join_next().await.is_some() {}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn go_durations_parse_like_go() {
        assert_eq!(parse_go_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("7"), Some(Duration::from_secs(7)));
        for bad in ["", "s", "5x", "-1s", "5 s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn signals_by_name_or_number() {
        let sig = |v: Value| serde_json::from_value::<SignalSpec>(v).unwrap().resolve();
        assert_eq!(sig(json!("SIGTERM")), Some(libc::SIGTERM));
        assert_eq!(sig(json!("int")), Some(libc::SIGINT));
        assert_eq!(sig(json!(9)), Some(libc::SIGKILL));
        assert_eq!(sig(json!("SIGNOPE")), None);
        assert_eq!(sig(json!(0)), None);
    }

    #[test]
    fn restart_policy_defaults_to_on_failure() {
        assert_eq!(
            RestartPolicy::from_config(None),
            Some(RestartPolicy::OnFailure(DEFAULT_MAX_RETRIES))
        );
        let cfg = |p: &str| RestartConfig {
            policy: Some(p.into()),
            max_retries: Some(2),
        };
        assert_eq!(
            RestartPolicy::from_config(Some(&cfg("on-failure"))),
            Some(RestartPolicy::OnFailure(2))
        );
        assert_eq!(
            RestartPolicy::from_config(Some(&cfg("no"))),
            Some(RestartPolicy::No)
        );
        assert_eq!(RestartPolicy::from_config(Some(&cfg("sometimes"))), None);
    }
}
