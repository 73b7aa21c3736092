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
    fn start(ns: &Netns, dir: &Path, node: &str, log: &Path, extra: &[&str]) -> Router {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
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
            .args(extra)
            .args(
                std::env::var("SMOKE_LOG")
                    .ok()
                    .map(|l| format!("--log-level={l}")),
            )
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

impl Router {
    /// SIGKILL, as a crash.
    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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

/// Two nodes `a` (192.0.2.11) and `b` (192.0.2.12) on one veth link, with their Node
/// manifests in a state directory.
struct Pair {
    a: Netns,
    b: Netns,
    tmp: tempfile::TempDir,
    dir: PathBuf,
    logs: [PathBuf; 2],
}

const A_PODS: [&str; 2] = ["198.51.100.16/28", "2001:db8:100:1::/64"];
const B_PODS: [&str; 2] = ["198.51.100.32/28", "2001:db8:100:2::/64"];

impl Pair {
    fn new() -> Option<Pair> {
        let (Some(a), Some(b)) = (Netns::new("rts"), Netns::new("rts")) else {
            return None;
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
        // Permanent neighbours: the kernel's ARP/ND tables are shared by every namespace on
        // the host, and a big lab running alongside can fill them (dynamic entries then fail).
        let mac = |ns: &Netns| {
            let out = ns.ip(&["-br", "link", "show", "eth0"]);
            out.split_whitespace().nth(2).unwrap().to_string()
        };
        let (mac_a, mac_b) = (mac(&a), mac(&b));
        for (ns, v4, v6, lladdr) in [
            (&a, "192.0.2.12", "2001:db8::12", &mac_b),
            (&b, "192.0.2.11", "2001:db8::11", &mac_a),
        ] {
            for ip in [v4, v6] {
                ns.ip(&[
                    "neigh",
                    "replace",
                    ip,
                    "lladdr",
                    lladdr,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ]);
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        let logs = [tmp.path().join("a.log"), tmp.path().join("b.log")];
        let pair = Pair {
            a,
            b,
            tmp,
            dir,
            logs,
        };
        pair.write_a(None);
        std::fs::write(
            pair.dir.join("node-b.yaml"),
            node_manifest("b", "192.0.2.12", "2001:db8::12", B_PODS, None),
        )
        .unwrap();
        Some(pair)
    }

    fn write_a(&self, asn: Option<&str>) {
        std::fs::write(
            self.dir.join("node-a.yaml"),
            node_manifest("a", "192.0.2.11", "2001:db8::11", A_PODS, asn),
        )
        .unwrap()
    }

    fn start_a(&self, extra: &[&str]) -> Router {
        Router::start(&self.a, &self.dir, "a", &self.logs[0], extra)
    }

    fn start_b(&self, extra: &[&str]) -> Router {
        Router::start(&self.b, &self.dir, "b", &self.logs[1], extra)
    }

    fn a_has_b(&self) -> bool {
        let t = proto17(&self.a);
        t.contains("198.51.100.32/28 via 192.0.2.12")
            && t.contains("2001:db8:100:2::/64 via 2001:db8::12")
    }

    fn b_has_a(&self) -> bool {
        let t = proto17(&self.b);
        t.contains("198.51.100.16/28 via 192.0.2.11")
            && t.contains("2001:db8:100:1::/64 via 2001:db8::11")
    }

    fn wait(&self, what: &str, limit: Duration, f: impl FnMut() -> bool) {
        wait_for(what, limit, f, &self.logs)
    }
}

#[test]
fn two_nodes_peer_install_routes_and_clean_up() {
    let Some(p) = Pair::new() else { return };
    let (a, b, dir, logs) = (&p.a, &p.b, &p.dir, &p.logs);
    let _keep = &p.tmp;
    let ra = p.start_a(&[]);
    let rb = p.start_b(&[]);

    let started = Instant::now();
    p.wait(
        "node a has b's pod routes and b has a's",
        Duration::from_secs(20),
        || p.a_has_b() && p.b_has_a(),
    );
    eprintln!("converged in {:?}", started.elapsed());

    // A bad annotation: a Warning Event naming it; the routes stay.
    p.write_a(Some("not-a-number"));
    wait_for(
        "a Warning Event about kube-router.io/node.asn",
        Duration::from_secs(10),
        || {
            let node = ObjectRef::new(Kind::Node, None, "a");
            list_events(dir, &node).iter().any(|e| {
                e["type"] == "Warning"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("kube-router.io/node.asn"))
            })
        },
        logs,
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(proto17(a).contains("198.51.100.32/28 via 192.0.2.12"));

    // Metrics: kube-router's names and the per-session series.
    let out = Command::new("ip")
        .args(["netns", "exec", a.name(), "curl", "-s", "--max-time", "2"])
        .arg("http://127.0.0.1:7475/metrics")
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&out.stdout);
    for line in [
        "kube_router_controller_bgp_peers 1",
        r#"metalnet_router_bgp_session_up{peer="192.0.2.12",peer_asn="64512",kind="node"} 1"#,
        r#"metalnet_router_bgp_prefixes_received{peer="192.0.2.12",peer_asn="64512",kind="node"} 2"#,
        r#"metalnet_router_routes_installed{family="ipv4"} 1"#,
        r#"metalnet_router_routes_installed{family="ipv6"} 1"#,
        "metalnet_router_annotation_problems 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

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
    assert!(proto17(b).trim().is_empty(), "{}", proto17(b));
    wait_for(
        "node a forgets b's pod routes",
        Duration::from_secs(10),
        || !proto17(a).contains("198.51.100.32/28"),
        logs,
    );
    assert!(ra.stop());
    assert!(proto17(a).trim().is_empty(), "{}", proto17(a));
}

/// SIGKILL without graceful restart: the other node removes the dead node's routes when the
/// hold time expires (3 s here).
#[test]
fn a_killed_router_s_routes_go_within_the_hold_time() {
    let Some(p) = Pair::new() else { return };
    let args = ["--bgp-holdtime=3s"];
    let _ra = p.start_a(&args);
    let rb = p.start_b(&args);
    p.wait("converged", Duration::from_secs(20), || {
        p.a_has_b() && p.b_has_a()
    });
    rb.kill();
    let t = Instant::now();
    p.wait("a drops b's routes", Duration::from_secs(8), || {
        !proto17(&p.a).contains("198.51.100.32/28")
    });
    eprintln!("b's routes gone from a {:?} after the kill", t.elapsed());
    // The killed router left its own routes behind; a restarted one without graceful
    // restart replaces them with what it learns.
    assert!(p.b_has_a(), "{}", proto17(&p.b));
    let _rb = p.start_b(&args);
    p.wait("converged again", Duration::from_secs(20), || {
        p.a_has_b() && p.b_has_a()
    });
}

/// SIGKILL with graceful restart: the other node keeps the dead node's routes (stale), the
/// restarted router keeps its own kernel routes and both refresh; a SIGTERM with graceful
/// restart leaves the routes in place.
#[test]
fn graceful_restart_keeps_routes_across_a_kill() {
    let Some(p) = Pair::new() else { return };
    let args = [
        "--bgp-holdtime=3s",
        "--bgp-graceful-restart",
        "--bgp-graceful-restart-time=30s",
        "--bgp-graceful-restart-deferral-time=20s",
    ];
    let ra = p.start_a(&args);
    let rb = p.start_b(&args);
    p.wait("converged", Duration::from_secs(20), || {
        p.a_has_b() && p.b_has_a()
    });
    rb.kill();
    // Past the hold time, a still has b's routes (stale), and b its own copy of a's.
    std::thread::sleep(Duration::from_secs(5));
    assert!(p.a_has_b(), "{}", proto17(&p.a));
    assert!(p.b_has_a(), "{}", proto17(&p.b));
    let rb = p.start_b(&args);
    let t = Instant::now();
    // Never a moment without the routes on either side while b comes back.
    while t.elapsed() < Duration::from_secs(4) {
        assert!(
            p.a_has_b() && p.b_has_a(),
            "a: {}\nb: {}",
            proto17(&p.a),
            proto17(&p.b)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A clean stop with graceful restart leaves the routes.
    assert!(rb.stop());
    assert!(p.b_has_a(), "{}", proto17(&p.b));
    assert!(ra.stop());
    assert!(p.a_has_b(), "{}", proto17(&p.a));
}

/// CPU time (user + system, clock ticks) of a process.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn readyz(ns: &Netns) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "curl", "-s", "--max-time", "2"])
        .arg("http://127.0.0.1:7475/readyz")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A router whose Node is not in the cluster state waits without spinning and is not
/// ready; once the Node appears it peers and becomes ready.
#[test]
fn a_router_without_its_node_waits_quietly() {
    let Some(p) = Pair::new() else { return };
    std::fs::remove_file(p.dir.join("node-a.yaml")).unwrap();
    let ra = p.start_a(&[]);
    let _rb = p.start_b(&[]);
    std::thread::sleep(Duration::from_secs(3));
    let ticks = cpu_ticks(ra.0.id());
    // Startup takes a tick or two; a loop that spins while waiting takes many more.
    assert!(ticks < 8, "{ticks} ticks of CPU in 3 s while waiting");
    assert!(readyz(&p.a).contains("not ready"), "{}", readyz(&p.a));
    p.write_a(None);
    p.wait("converged", Duration::from_secs(20), || {
        p.a_has_b() && p.b_has_a()
    });
    assert_eq!(readyz(&p.a).trim(), "ready");
}
