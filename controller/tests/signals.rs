//! The controller binary under ordinary process trouble: a closed stderr or stdout, and
//! signals in the middle of a large batch of writes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_metalnet-controller");

fn site(dir: &Path, services: usize) {
    let mut s = String::from(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: main\n  namespace: metallb-system\nspec:\n  addresses:\n    - 198.51.100.0/24\n    - 203.0.113.0/24\n    - 2001:db8::/112\n",
    );
    for i in 0..services {
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: s{i}\n  namespace: default\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n"
        ));
    }
    std::fs::write(dir.join("site.yaml"), s).unwrap();
}

fn statuses(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("status/patches/Service/default"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `--once 2>&1 | head -1` used to panic (exit 101) at the first log line after the reader
/// went away, writing none of the statuses.
#[test]
fn once_survives_a_closed_stderr_and_stdout() {
    let dir = tempfile::tempdir().unwrap();
    site(dir.path(), 50);
    let mut child = Command::new(BIN)
        .args(["--once", "--log-level", "debug", "--state-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close our ends at once: every write the controller makes to them fails with EPIPE.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(statuses(dir.path()), 50, "every Service got its status");
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid of our own child and a valid signal number.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill failed");
}

/// SIGTERM, SIGINT or SIGHUP in the middle of a batch of 1,000 writes: the controller
/// finishes the write in flight and exits cleanly within a second; every status file it
/// left is whole, and a restart completes the rest without moving any address.
#[test]
fn a_signal_mid_batch_stops_cleanly_within_a_second() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let dir = tempfile::tempdir().unwrap();
        site(dir.path(), 1000);
        let mut child = Command::new(BIN)
            .args(["--metrics-addr", "off", "--state-dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the batch is under way.
        let started = Instant::now();
        while statuses(dir.path()) < 20 && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(statuses(dir.path()) >= 20, "the batch started");
        signal(child.id(), sig);
        let asked = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if asked.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                panic!("signal {sig}: still running 5 s after the signal");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let took = asked.elapsed();
        assert!(status.success(), "signal {sig}: exit status {status}");
        assert!(
            took < Duration::from_millis(1500),
            "signal {sig}: took {took:?} to stop"
        );
        if sig != libc::SIGTERM {
            continue;
        }
        let written = statuses(dir.path());
        // What was written is whole and stays: a restart completes the batch.
        let before = addresses(dir.path());
        assert_eq!(before.len(), written);
        let done = Command::new(BIN)
            .args(["--once", "--state-dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(done.success());
        let after = addresses(dir.path());
        assert_eq!(after.len(), 1000);
        for (name, ip) in &before {
            assert_eq!(after.get(name), Some(ip), "{name} kept its address");
        }
    }
}

/// Service name → the address in its status patch.
fn addresses(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir.join("status/patches/Service/default")) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let ip = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("- ip: "))
            .unwrap_or_else(|| panic!("{name}: a whole status patch, got {text:?}"));
        out.insert(name, ip.trim_matches('\'').trim_matches('"').to_string());
    }
    out
}
