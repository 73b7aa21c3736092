//! Long-running processes inside lab hosts.

use super::{Host, LabError, Result, io_err};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long [`Process::stop`] waits after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct ProcessInner {
    name: String,
    pid: u32,
    child: Mutex<Option<Child>>,
}

impl ProcessInner {
    /// Returns true once the process has exited (and reaps it).
    fn exited(&self) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            None => true,
            Some(child) => match child.try_wait() {
                Ok(Some(_)) | Err(_) => {
                    *guard = None;
                    true
                }
                Ok(None) => false,
            },
        }
    }

    fn signal(&self, sig: libc::c_int) {
        if !self.exited() {
            // SAFETY: kill(2) with a pid we spawned and have not reaped yet (so it cannot
            // have been recycled).
            unsafe {
                libc::kill(self.pid as libc::pid_t, sig);
            }
        }
    }

    fn stop(&self, timeout: Duration) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while !self.exited() {
            if Instant::now() >= deadline {
                tracing::debug!(process = %self.name, pid = self.pid, "SIGTERM timed out, SIGKILL");
                self.kill_now();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill_now(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = guard.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Stops many processes at once: SIGTERM to all, then SIGKILL to those still running.
pub(crate) fn stop_all(processes: &[Arc<ProcessInner>], timeout: Duration) {
    for p in processes {
        p.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + timeout;
    while processes.iter().any(|p| !p.exited()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in processes {
        p.kill_now();
    }
}

/// A process started with [`Host::spawn`]. Stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Process {
    inner: Arc<ProcessInner>,
    host: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.inner.name)
            .field("host", &self.host)
            .field("pid", &self.inner.pid)
            .finish()
    }
}

pub(crate) fn spawn(
    host: &Host,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<Process> {
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| LabError::Invalid(format!("empty command for process {name}")))?;
    if name.is_empty() || name.contains('/') {
        return Err(LabError::Invalid(format!("process name {name:?}")));
    }
    // Unique log file names even when the same name is used twice on one host.
    let mut base = name.to_string();
    while host.dir().join(format!("{base}.out")).exists() {
        base = format!("{name}.{}", host.lab().next_id());
    }
    let stdout = host.dir().join(format!("{base}.out"));
    let stderr = host.dir().join(format!("{base}.err"));
    let out = File::create(&stdout).map_err(io_err(format!("creating {}", stdout.display())))?;
    let err = File::create(&stderr).map_err(io_err(format!("creating {}", stderr.display())))?;
    let mut cmd = Command::new("ip");
    // `ip netns exec` execs the program itself (no fork), so the pid is the program's.
    cmd.args(["netns", "exec", host.netns(), program])
        .args(rest)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Callers may block signals (e.g. to `sigwait` for Ctrl-C); daemons must still see SIGTERM.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(io_err(format!(
        "spawning {name} ({program}) in {}",
        host.netns()
    )))?;
    let pid = child.id();
    tracing::debug!(process = name, host = host.name(), pid, "spawned");
    let inner = Arc::new(ProcessInner {
        name: name.to_string(),
        pid,
        child: Mutex::new(Some(child)),
    });
    host.lab().register_process(inner.clone());
    Ok(Process {
        inner,
        host: host.name().to_string(),
        stdout,
        stderr,
    })
}

impl Process {
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    pub fn is_running(&self) -> bool {
        !self.inner.exited()
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
    pub fn stop(&self) {
        self.inner.stop(STOP_TIMEOUT);
    }

    /// SIGTERM, then SIGKILL after `timeout`.
    pub fn stop_within(&self, timeout: Duration) {
        self.inner.stop(timeout);
    }

    /// SIGKILL at once.
    pub fn kill(&self) {
        self.inner.kill_now();
    }

    /// Sends an arbitrary signal (e.g. `libc::SIGHUP`).
    pub fn signal(&self, sig: libc::c_int) {
        self.inner.signal(sig);
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// Stdout followed by stderr, as written so far.
    pub fn logs(&self) -> String {
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        if err.is_empty() {
            out
        } else {
            format!("{out}--- stderr ---\n{err}")
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.inner.stop(STOP_TIMEOUT);
    }
}
