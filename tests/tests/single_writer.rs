//! One writer per role on a state directory: a second controller stands by until the first
//! goes, `--once` refuses while a controller runs, and a second speaker or vxlan agent with
//! the same node name refuses to start (they would answer ARP twice or fight over routes).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metalnet::testing::{Manifest, Netns, node, patient, pool, service};
use metalnet_lab::bins::binary;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn readyz(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + patient(limit);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn controller(dir: &Path, port: u16) -> Killed {
    Killed(
        Command::new(binary("metalnet-controller").unwrap())
            .args([
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
                "--state-dir",
            ])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn site(dir: &Path) {
    std::fs::write(
        dir.join("site.yaml"),
        [
            pool("p", ["192.0.2.0/28"]).document(),
            service("web").document(),
        ]
        .concat(),
    )
    .unwrap();
}

#[test]
fn a_second_controller_stands_by_and_once_refuses() {
    let dir = tempfile::tempdir().unwrap();
    site(dir.path());
    let (p1, p2) = (free_port(), free_port());
    let first = controller(dir.path(), p1);
    wait(
        "the first controller ready",
        Duration::from_secs(20),
        || readyz(p1).is_some_and(|r| r.starts_with("HTTP/1.1 200")),
    );
    let mut second = controller(dir.path(), p2);
    wait(
        "the second controller's endpoint",
        Duration::from_secs(20),
        || readyz(p2).is_some(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let r = readyz(p2).unwrap();
    assert!(
        r.starts_with("HTTP/1.1 503") && r.contains("lock"),
        "standing by, not ready: {r}"
    );
    assert!(
        second.0.try_wait().unwrap().is_none(),
        "it waits, it does not exit"
    );

    let once = Command::new(binary("metalnet-controller").unwrap())
        .args(["--once", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        !once.status.success(),
        "--once refuses while a controller runs"
    );
    let err = String::from_utf8_lossy(&once.stderr);
    assert!(
        err.contains("controller.lock") && err.contains("pid"),
        "the message names the lock and its holder: {err}"
    );

    drop(first);
    wait(
        "the second controller takes over",
        Duration::from_secs(20),
        || readyz(p2).is_some_and(|r| r.starts_with("HTTP/1.1 200")),
    );
}

#[test]
fn a_second_speaker_with_the_same_node_name_refuses() {
    let Some(ns) = Netns::new("dupspk") else {
        eprintln!("skipping: needs root");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("nodes.yaml"),
        node("n1").ready().internal_ip("192.0.2.11").yaml(),
    )
    .unwrap();
    let speaker = |port: u16| {
        Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(binary("metalnet-speaker").unwrap())
            .args([
                "--node-name",
                "n1",
                "--gossip",
                "off",
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
                "--state-dir",
            ])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = Killed(speaker(free_port()));
    let lock = dir.path().join("status/locks/speaker-n1.lock");
    wait("the first speaker's lock", Duration::from_secs(20), || {
        std::fs::read_to_string(&lock).is_ok_and(|t| !t.is_empty())
    });
    let second = speaker(free_port()).wait_with_output().unwrap();
    assert!(!second.status.success(), "the duplicate refuses to start");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("--node-name n1") && err.contains("speaker-n1.lock"),
        "{err}"
    );
    drop(first);
}
