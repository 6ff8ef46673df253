//! Threads and commands inside network namespaces: a worker thread that lives in one, jobs
//! run on a fresh thread that joins or leaves one, the system calls, and iproute2's `ip` run
//! in the calling thread's namespace. A thread's namespace is part of it: no code runs in a
//! namespace it did not mean to.

use super::*;

/// Runs `job` on a thread that has joined `netns`, and returns its result.
pub(super) async fn in_namespace<T: Send + 'static>(
    netns: Arc<OwnedFd>,
    job: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    on_fresh_thread(move || {
        join_netns(netns.as_raw_fd())?;
        job()
    })
    .await
}

/// Runs `job` on a thread of its own, used once: a thread's network namespace is part of it,
/// and no other code may ever run in the one a job left it in.
pub(super) async fn on_fresh_thread<T: Send + 'static>(
    job: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(job());
    });
    rx.await
        .map_err(|_| io::Error::other("a namespace thread panicked"))?
}

/// A thread that lives in a network namespace of its own and runs jobs there.
pub(super) struct Worker {
    jobs: Mutex<mpsc::Sender<Job>>,
    /// The thread's id: `ip link … netns <tid>` puts an interface in its namespace.
    pub(super) tid: libc::pid_t,
}

pub(super) type Job = Box<dyn FnOnce() + Send>;

impl Worker {
    pub(super) fn in_new_namespace() -> io::Result<Worker> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel();
        std::thread::Builder::new()
            .name("flyby-local-fabric".into())
            .spawn(move || {
                let entered = unshare_net().map(|()| {
                    // SAFETY: gettid(2) has no preconditions.
                    unsafe { libc::gettid() }
                });
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    // Ends when the platform (the last sender) is dropped.
                    while let Ok(job) = queue.recv() {
                        job();
                    }
                }
            })?;
        let tid = ready
            .recv()
            .map_err(|_| io::Error::other("the fabric thread died"))??;
        Ok(Worker {
            jobs: Mutex::new(jobs),
            tid,
        })
    }

    pub(super) fn submit<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> io::Result<T> + Send + 'static,
        reply: impl FnOnce(io::Result<T>) + Send + 'static,
    ) -> io::Result<()> {
        self.jobs
            .lock()
            .expect("fabric queue lock")
            .send(Box::new(move || reply(job())))
            .map_err(|_| io::Error::other("the fabric thread is gone"))
    }

    pub(super) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(job, move |out| {
            let _ = tx.send(out);
        })?;
        rx.await
            .map_err(|_| io::Error::other("the fabric thread is gone"))?
    }

    /// [`Worker::run`] for synchronous callers (set-up, before any runtime needs it).
    pub(super) fn block_on<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = mpsc::channel();
        self.submit(job, move |out| {
            let _ = tx.send(out);
        })?;
        rx.recv()
            .map_err(|_| io::Error::other("the fabric thread is gone"))?
    }
}

/// The calling thread leaves for a new, empty network namespace.
pub(super) fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare(2) with CLONE_NEWNET changes only the calling thread's namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread joins `netns`. Safe to call between fork and exec: one system call.
pub fn join_netns(netns: RawFd) -> io::Result<()> {
    // SAFETY: setns(2) on a namespace file descriptor; it changes only the calling thread.
    if unsafe { libc::setns(netns, libc::CLONE_NEWNET) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn open_own_netns() -> io::Result<OwnedFd> {
    let path = CString::new("/proc/thread-self/ns/net").expect("no NUL");
    // SAFETY: open(2) on a NUL-terminated path; the descriptor is owned below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn into_raw(fd: OwnedFd) -> RawFd {
    std::os::fd::IntoRawFd::into_raw_fd(fd)
}

/// Writes a sysctl of the calling thread's network namespace (`/proc/sys/net` is the
/// namespace of whoever opens it).
pub(super) fn write_sysctl(name: &str, value: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/{name}"), value)
        .map_err(|e| io::Error::new(e.kind(), format!("{name}: {e}")))
}

/// Runs `ip -batch -` with `commands`, in the calling thread's network namespace.
pub(super) fn run_ip(tool: &PathBuf, commands: &[String]) -> io::Result<()> {
    let mut child = Command::new(tool)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        for command in commands {
            writeln!(stdin, "{command}")?;
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// iproute2's `ip`: on PATH, or in the sbin folders a non-root PATH often lacks.
pub(super) fn ip_tool() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join("ip"))
        .find(|candidate| candidate.is_file())
}

/// Enters a user namespace of its own, as root in it, when this process is not root, so that
/// [`NetworkMode::Isolated`] can create network namespaces without privileges. Must run before
/// any other thread exists (the kernel refuses a multi-threaded process), i.e. first thing in
/// `main`. Files keep their owner: the process's user maps to root inside.
pub fn enter_user_namespace_unless_root() -> io::Result<()> {
    // SAFETY: geteuid/getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid == 0 {
        return Ok(());
    }
    // SAFETY: unshare(2); the caller guarantees the process is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } == -1 {
        return Err(io::Error::last_os_error());
    }
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    Ok(())
}
