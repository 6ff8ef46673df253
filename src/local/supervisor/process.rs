//! The operating-system side of a Machine: its process spawned in its own process group and
//! network namespace, its output shown like `fly logs`, signals to its whole group, and the
//! stand-ins of the faults: `never_serve`, which listens and never answers, and `impostor`,
//! which answers everything.

use super::*;

/// Awaits the end of every process of a group that was sent SIGKILL: a signal reaches a
/// process a moment before it is gone, and an orphan is reaped by init a moment after. Bounded,
/// and a poll: the kernel announces neither.
pub(super) async fn group_gone(pgid: u32) {
    let deadline = Instant::now() + GROUP_EXIT_BOUND;
    while group_exists(pgid) {
        if Instant::now() >= deadline {
            tracing::warn!(pgid, "processes of a Machine outlive SIGKILL");
            return;
        }
        sleep(READINESS_INTERVAL / 4).await;
    }
}

pub(super) fn group_exists(pgid: u32) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks for existence.
    let found = unsafe { libc::kill(-pgid, 0) } == 0;
    found || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Sends `signal` to the whole process group a Machine's process leads.
pub(super) fn signal_group(pgid: u32, signal: i32) {
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

/// Starts the Machine's process: its own process group, only its own environment, in its
/// network namespace; its output is piped, for [`forward_output`].
pub(super) fn spawn(spec: &LaunchSpec) -> std::io::Result<Child> {
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
pub(super) fn forward_output(child: &mut Child, prefix: &str) {
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
pub(super) async fn forward_lines(prefix: String, pipe: impl AsyncRead + Unpin) {
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
pub(super) fn tarpit(net: MachineNet, ports: &[u16]) -> JoinHandle<()> {
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

/// The `impostor` stand-in: on each port, answers every request `200 ok` with the Machine's
/// id in `flyby-machine` and nothing else it could only know from the Machine's config. Ends
/// when aborted.
pub(super) fn impostor(net: MachineNet, ports: &[u16], machine: MachineId) -> JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ports = ports.to_vec();
    tokio::spawn(async move {
        let answer = format!(
            "HTTP/1.1 200 OK\r\nflyby-machine: {machine}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        );
        let mut served = JoinSet::new();
        for port in ports {
            let listener = match net.listen(port).await {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(port, error = %e, "impostor: cannot listen");
                    continue;
                }
            };
            let answer = answer.clone();
            served.spawn(async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    let answer = answer.clone();
                    tokio::spawn(async move {
                        // The request's head, then the answer, whatever was asked.
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16_384 {
                            match socket.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = socket.write_all(answer.as_bytes()).await;
                    });
                }
            });
        }
        while served.join_next().await.is_some() {}
    })
}
