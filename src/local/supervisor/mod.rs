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

pub mod config;
mod process;
mod runner;
pub mod spec;

pub use config::{
    DurationSpec, GuestConfig, HttpOptionsConfig, InitConfig, MachineConfig, PortConfig,
    RestartConfig, RestartPolicy, ServiceConfig, SignalSpec, StopConfig,
};
use process::signal_group;
use runner::Runner;
pub use spec::{machine_env, GuestKind, LaunchSpec};

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
