//! Network namespaces: moving a thread into one, and running a closure on a thread that lives
//! in one while the caller's namespace stays as it is.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

/// Where `ip netns add NAME` keeps the namespace `NAME`.
pub fn path(name: &str) -> String {
    format!("/run/netns/{name}")
}

/// Moves the calling thread (only it) into the network namespace open as `ns`.
pub fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: setns takes a file descriptor and a namespace type and touches no memory of
    // ours; `ns` keeps the descriptor open for the call, and CLONE_NEWNET changes only the
    // calling thread's network namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Starts `f` on a new thread inside the namespace `/run/netns/NAME`. Opening the namespace,
/// starting the thread and entering the namespace fail with an error naming the step; a panic
/// in `f` comes back through the handle's `join`.
pub fn spawn_in<R: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> io::Result<JoinHandle<io::Result<R>>> {
    let path = path(name);
    let file = File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            enter(&file).map_err(|e| io::Error::new(e.kind(), format!("setns: {e}")))?;
            Ok(f())
        })
        .map_err(|e| io::Error::new(e.kind(), format!("spawning a thread: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_named() {
        let e = spawn_in("mn-sys-no-such-namespace", || ()).unwrap_err();
        assert!(
            e.to_string()
                .contains("/run/netns/mn-sys-no-such-namespace"),
            "{e}"
        );
    }
}
