//! One runner task per Machine: it owns the Machine's process (or the stand-in a fault asked
//! for) and walks it through Fly's states, one command or event at a time, so that every state
//! change of one Machine happens in one place, in order.

use super::*;
use crate::local::timings::Boot;
use process::{forward_output, group_gone, impostor, spawn, tarpit};
use std::ops::ControlFlow;

/// How a Machine's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Exit {
    pub(super) code: Option<i32>,
    pub(super) signal: Option<i32>,
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
pub(super) enum Body {
    Process {
        child: Child,
        pid: u32,
    },
    StandIn(JoinHandle<()>),
    Inert,
    /// Waiting to restart a crashed process, or for the emulated boot to end.
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

pub(super) struct Guest {
    pub(super) body: Body,
    /// `started` has been reached.
    pub(super) ready: bool,
    /// A stop (or shutdown, or forced destroy) is under way: the exit is not a crash.
    pub(super) stopping: bool,
    /// When the stop signal's grace ends and SIGKILL follows.
    pub(super) kill_at: Option<Instant>,
}

/// What woke a runner up.
pub(super) enum Wake {
    Exited(Exit),
    Ready,
    KillNow,
    Respawn,
    Command(Option<Command>),
}

/// Whether the runner goes on after handling something (`Break`: its Machine is destroyed, or
/// flyby-local stops).
type Flow = ControlFlow<()>;

pub(super) struct Runner {
    pub(super) platform: Arc<Platform>,
    pub(super) app: String,
    pub(super) id: MachineId,
    pub(super) spec: LaunchSpec,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    /// `None` while `created` or `stopped`.
    pub(super) guest: Option<Guest>,
    /// Restarts since the last start by a user.
    pub(super) retries: u32,
}

impl Runner {
    pub(super) async fn run(mut self, launch: bool) {
        let mut flow = if launch {
            self.boot(Boot::Create)
        } else {
            ControlFlow::Continue(())
        };
        while flow.is_continue() {
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
                let flow = self.boot(Boot::Start);
                let _ = reply.send(Ok(previous));
                flow
            }
            Some(Command::Stop { reply, .. }) => {
                let _ = reply.send(Err(SupervisorError::NotStarted));
                ControlFlow::Continue(())
            }
            Some(Command::Destroy { reply, .. }) => {
                self.destroy("user");
                let _ = reply.send(Ok(()));
                ControlFlow::Break(())
            }
            Some(Command::Crash) => ControlFlow::Continue(()),
            Some(Command::Shutdown) | None => ControlFlow::Break(()),
        }
    }

    async fn running(&mut self) -> Flow {
        let network = &self.platform.network;
        let addrs = [self.spec.net.addrs.proxy, self.spec.net.addrs.private];
        let ports = &self.spec.ports;
        let guest = self.guest.as_mut().expect("running has a guest");
        // A stand-in listens from a task of its own: like a process, it is started once its
        // ports accept, not when it was spawned.
        let probing = !guest.ready
            && !guest.stopping
            && matches!(guest.body, Body::Process { .. } | Body::StandIn(_));
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
                ControlFlow::Continue(())
            }
            Wake::KillNow => {
                if let Some(guest) = self.guest.as_mut() {
                    guest.kill_at = None;
                    if let Some(pid) = guest.body.pid() {
                        tracing::info!(machine = %self.id, "stop timeout over: SIGKILL");
                        signal_group(pid, libc::SIGKILL);
                    }
                }
                ControlFlow::Continue(())
            }
            Wake::Respawn => self.spawn_guest(),
            Wake::Command(Some(command)) => self.on_command(command).await,
            Wake::Command(None) => {
                self.kill_and_reap().await;
                ControlFlow::Break(())
            }
        }
    }

    async fn on_command(&mut self, command: Command) -> Flow {
        match command {
            Command::Start(reply) => {
                let _ = reply.send(Err(SupervisorError::StillActive));
                ControlFlow::Continue(())
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
                ControlFlow::Continue(())
            }
            Command::Destroy { force: true, reply } => {
                self.kill_and_reap().await;
                self.destroy("user");
                let _ = reply.send(Ok(()));
                ControlFlow::Break(())
            }
            Command::Crash => self.crash().await,
            Command::Shutdown => {
                self.stop_for_shutdown().await;
                ControlFlow::Break(())
            }
        }
    }

    /// Sends the stop signal; the exit (or the SIGKILL at `timeout`) completes the stop.
    fn begin_stop(&mut self, signal: i32, timeout: Duration, source: &str) -> Flow {
        let Some(guest) = self.guest.as_mut() else {
            return ControlFlow::Continue(());
        };
        if guest.stopping {
            return ControlFlow::Continue(());
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
            if let Body::StandIn(listener) = guest.body {
                listener.abort();
            }
            return self.settle_stopped();
        }
        ControlFlow::Continue(())
    }

    async fn crash(&mut self) -> Flow {
        let Some(guest) = self.guest.as_mut() else {
            return ControlFlow::Continue(());
        };
        match &guest.body {
            Body::Process { pid, .. } => {
                signal_group(*pid, libc::SIGKILL);
                ControlFlow::Continue(())
            }
            Body::Backoff(_) => ControlFlow::Continue(()),
            Body::StandIn(_) | Body::Inert => self.on_exit(Exit::killed()).await,
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
                Body::StandIn(listener) => listener.abort(),
                Body::Inert | Body::Backoff(_) => {}
            }
        }
    }

    /// The process ended: a stop completes, or the restart policy and `auto_destroy` decide.
    /// Restart comes first: with `auto_destroy`, a Machine is destroyed when it would
    /// otherwise stop (which is why Fly's `fly m run --rm` defaults the policy to `no`).
    async fn on_exit(&mut self, exit: Exit) -> Flow {
        let Some(guest) = self.guest.take() else {
            return ControlFlow::Continue(());
        };
        match &guest.body {
            // Whatever the process left behind in its group dies with it, as in a VM.
            Body::Process { pid, .. } => {
                signal_group(*pid, libc::SIGKILL);
                group_gone(*pid).await;
            }
            Body::StandIn(listener) => listener.abort(),
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
        ControlFlow::Continue(())
    }

    /// The Machine no longer runs: `destroyed` with `auto_destroy`, else `stopped`.
    fn settle_stopped(&mut self) -> Flow {
        if self.spec.auto_destroy {
            self.destroy("flyd");
            return ControlFlow::Break(());
        }
        self.set_state(MachineState::Stopped, None);
        ControlFlow::Continue(())
    }

    /// `starting`, then the guest.
    fn boot(&mut self, boot: Boot) -> Flow {
        self.set_state(MachineState::Starting, None);
        // Under `--timings fly` the VM takes Fly's time to boot before its process runs.
        let delay = self.platform.timings.boot(boot);
        if delay.is_zero() {
            return self.spawn_guest();
        }
        self.platform
            .stats
            .add("timings.boot_ms", delay.as_millis() as u64);
        self.guest = Some(Guest {
            body: Body::Backoff(Instant::now() + delay),
            ready: false,
            stopping: false,
            kill_at: None,
        });
        ControlFlow::Continue(())
    }

    fn spawn_guest(&mut self) -> Flow {
        let (body, ready) = match self.spec.guest {
            GuestKind::NeverStart => (Body::Inert, false),
            GuestKind::NeverServe => (
                Body::StandIn(tarpit(self.spec.net.clone(), &self.spec.ports)),
                self.spec.ports.is_empty(),
            ),
            GuestKind::Impostor => (
                Body::StandIn(impostor(self.spec.net.clone(), &self.spec.ports, self.id)),
                self.spec.ports.is_empty(),
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
        ControlFlow::Continue(())
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

pub(super) fn push_event(machine: &mut MachineRecord, event: MachineEvent) {
    machine.events.insert(0, event);
    machine.events.truncate(MAX_EVENTS);
}

/// Resolves once every port accepts a TCP connection at one of `addrs`.
pub(super) async fn probe_ready(network: &Network, addrs: [IpAddr; 2], ports: &[u16]) {
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
