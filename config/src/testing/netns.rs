//! A throwaway network namespace, and running async test code inside one.
//!
//! ```no_run
//! use metalnet::testing::Netns;
//!
//! let Some(ns) = Netns::with_veth("doc") else { return }; // not root: skipped
//! let links = ns.block_on(|| async { std::fs::read_to_string("/proc/thread-self/net/dev").unwrap() });
//! assert!(links.contains("eth0"));
//! // The namespace is deleted when `ns` drops, also when the test panics.
//! ```

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::patience::patient;
use crate::sys::netns::spawn_in;

/// How long [`Netns::block_on`] lets a future run before failing the test (scaled by the
/// patience factor).
pub const BLOCK_ON_LIMIT: Duration = Duration::from_secs(150);

/// Whether the tests run as root (network namespaces need it).
pub fn is_root() -> bool {
    // /proc/self belongs to the effective user of the process reading it.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A network namespace `mnl-TAG-PID-N` of our own (the `mnl` prefix the suite checks for
/// leftovers), deleted on drop (also while a failing
/// test unwinds).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A new empty namespace, or `None` (saying so on stderr) when not running as root, so
    /// that the test skips.
    pub fn new(tag: &str) -> Option<Netns> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        if !is_root() {
            eprintln!("skipping: network namespaces need root");
            return None;
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let ns = Netns {
            name: format!("mnl-{tag}-{}-{n}", std::process::id()),
        };
        run_ip(&["netns", "add", &ns.name]);
        ns.ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    /// [`Netns::new`] with a veth pair `eth0`–`eth1`, both up, and `192.0.2.1/24` on `eth0`.
    pub fn with_veth(tag: &str) -> Option<Netns> {
        let ns = Netns::new(tag)?;
        ns.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ]);
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["link", "set", "eth1", "up"]);
        Some(ns)
    }

    /// The namespace's name (`ip -n NAME`, `/run/netns/NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS…` and returns its standard output; fails the test with `ip`'s
    /// message if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// Runs the future `f` makes to completion on a current-thread tokio runtime on a thread
    /// inside the namespace, bounded by [`BLOCK_ON_LIMIT`]. A panic inside fails the caller
    /// with the same message.
    pub fn block_on<R, Fut>(&self, f: impl FnOnce() -> Fut + Send + 'static) -> R
    where
        R: Send + 'static,
        Fut: Future<Output = R>,
    {
        block_on_in(&self.name, patient(BLOCK_ON_LIMIT), f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs the future `f` makes on a current-thread tokio runtime on a new thread inside the
/// namespace `/run/netns/NETNS`, failing after `limit`. The caller's thread stays where it
/// is; a panic inside is resumed on the caller.
pub fn block_on_in<R, Fut>(
    netns: &str,
    limit: Duration,
    f: impl FnOnce() -> Fut + Send + 'static,
) -> R
where
    R: Send + 'static,
    Fut: Future<Output = R>,
{
    let handle = spawn_in(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        rt.block_on(async move { tokio::time::timeout(limit, f()).await })
    })
    .unwrap_or_else(|e| panic!("network namespace {netns}: {e}"));
    match handle.join() {
        Err(panic) => std::panic::resume_unwind(panic),
        Ok(Err(e)) => panic!("network namespace {netns}: {e}"),
        Ok(Ok(Err(_))) => panic!("network namespace {netns}: not done after {limit:?}"),
        Ok(Ok(Ok(r))) => r,
    }
}

fn run_ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_runs_inside_and_deletes_on_drop() {
        let Some(ns) = Netns::with_veth("fixture") else {
            return;
        };
        let name = ns.name().to_string();
        let dev =
            ns.block_on(|| async { std::fs::read_to_string("/proc/thread-self/net/dev").unwrap() });
        assert!(dev.contains("eth1"), "{dev}");
        drop(ns);
        assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
    }

    #[test]
    fn a_panic_inside_reaches_the_caller_and_the_namespace_goes() {
        let Some(ns) = Netns::new("panic") else {
            return;
        };
        let name = ns.name().to_string();
        let caught = std::panic::catch_unwind(move || {
            ns.block_on(|| async { panic!("inner failure") });
        });
        let msg = caught.unwrap_err();
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"inner failure"));
        assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
    }

    #[test]
    fn block_on_is_bounded() {
        let Some(ns) = Netns::new("bound") else {
            return;
        };
        let name = ns.name().to_string();
        let caught = std::panic::catch_unwind(|| {
            block_on_in(&name, Duration::from_millis(50), || {
                std::future::pending::<()>()
            })
        });
        let msg = caught.unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(msg.contains("not done after 50ms"), "{msg}");
    }
}
