//! A quick end-to-end check of `metalnet-router --run-router` on its own (the full scenarios
//! are in the lab tests): two nodes in network namespaces on one veth link peer over iBGP,
//! each installs the other's pod CIDRs (IPv4 and IPv6) with protocol 17, a bad annotation
//! gives a Warning Event and changes nothing else, `explain` answers, and a clean shutdown
//! removes the node's routes and the other node's routes to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metalnet::state::dir::list_events;
use metalnet::state::{Kind, ObjectRef};
use metalnet::testing::Netns;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_metalnet-router");

/// A router process in a namespace, killed on drop.
struct Router(Child);

impl Router {
    fn start(ns: &Netns, dir: &Path, node: &str, log: &Path) -> Router {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                BIN,
                "--run-router",
                "--state-dir",
            ])
            .arg(dir)
            .args(["--node-name", node, "--metrics-addr", "127.0.0.1:7475"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Router(child)
    }

    /// SIGTERM and wait (at most 10 s).
    fn stop(mut self) -> bool {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(s)) = self.0.try_wait() {
                return s.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node_manifest(name: &str, v4: &str, v6: &str, pods: [&str; 2], asn: Option<&str>) -> String {
    let mut annotations = serde_json::Map::new();
    if let Some(a) = asn {
        annotations.insert("kube-router.io/node.asn".into(), json!(a));
    }
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"podCIDRs": pods},
        "status": {"addresses": [
            {"type": "InternalIP", "address": v4},
            {"type": "InternalIP", "address": v6},
        ]},
    })
    .to_string()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool, logs: &[PathBuf]) {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let logs: String = logs
        .iter()
        .map(|p| {
            format!(
                "--- {}\n{}",
                p.display(),
                std::fs::read_to_string(p).unwrap_or_default()
            )
        })
        .collect();
    panic!("not within {limit:?}: {what}\n{logs}");
}

fn proto17(ns: &Netns) -> String {
    ns.ip(&["route", "show", "proto", "17"]) + &ns.ip(&["-6", "route", "show", "proto", "17"])
}

#[test]
fn two_nodes_peer_install_routes_and_clean_up() {
    let (Some(a), Some(b)) = (Netns::new("rts"), Netns::new("rts")) else {
        return;
    };
    a.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        b.name(),
    ]);
    for (ns, v4, v6) in [
        (&a, "192.0.2.11/24", "2001:db8::11/64"),
        (&b, "192.0.2.12/24", "2001:db8::12/64"),
    ] {
        ns.ip(&["addr", "add", v4, "dev", "eth0"]);
        ns.ip(&["-6", "addr", "add", v6, "dev", "eth0", "nodad"]);
        ns.ip(&["link", "set", "eth0", "up"]);
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    let write_a = |asn: Option<&str>| {
        std::fs::write(
            dir.join("node-a.yaml"),
            node_manifest(
                "a",
                "192.0.2.11",
                "2001:db8::11",
                ["198.51.100.16/28", "2001:db8:100:1::/64"],
                asn,
            ),
        )
        .unwrap()
    };
    write_a(None);
    std::fs::write(
        dir.join("node-b.yaml"),
        node_manifest(
            "b",
            "192.0.2.12",
            "2001:db8::12",
            ["198.51.100.32/28", "2001:db8:100:2::/64"],
            None,
        ),
    )
    .unwrap();
    let logs = [tmp.path().join("a.log"), tmp.path().join("b.log")];
    let ra = Router::start(&a, &dir, "a", &logs[0]);
    let rb = Router::start(&b, &dir, "b", &logs[1]);

    let started = Instant::now();
    wait_for(
        "node a has b's pod routes and b has a's",
        Duration::from_secs(20),
        || {
            let (ta, tb) = (proto17(&a), proto17(&b));
            ta.contains("198.51.100.32/28 via 192.0.2.12")
                && ta.contains("2001:db8:100:2::/64 via 2001:db8::12")
                && tb.contains("198.51.100.16/28 via 192.0.2.11")
                && tb.contains("2001:db8:100:1::/64 via 2001:db8::11")
        },
        &logs,
    );
    eprintln!("converged in {:?}", started.elapsed());

    // A bad annotation: a Warning Event naming it; the routes stay.
    write_a(Some("not-a-number"));
    wait_for(
        "a Warning Event about kube-router.io/node.asn",
        Duration::from_secs(10),
        || {
            let node = ObjectRef::new(Kind::Node, None, "a");
            list_events(&dir, &node).iter().any(|e| {
                e["type"] == "Warning"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("kube-router.io/node.asn"))
            })
        },
        &logs,
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(proto17(&a).contains("198.51.100.32/28 via 192.0.2.12"));

    // explain asks the running router.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            a.name(),
            BIN,
            "explain",
            "node",
            "a",
            "--metrics-addr",
            "127.0.0.1:7475",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("192.0.2.12"), "{text}");

    // Clean shutdown without graceful restart: b removes its routes, a withdraws b's.
    assert!(rb.stop(), "b's router exits cleanly");
    assert!(proto17(&b).trim().is_empty(), "{}", proto17(&b));
    wait_for(
        "node a forgets b's pod routes",
        Duration::from_secs(10),
        || !proto17(&a).contains("198.51.100.32/28"),
        &logs,
    );
    assert!(ra.stop());
    assert!(proto17(&a).trim().is_empty(), "{}", proto17(&a));
}
