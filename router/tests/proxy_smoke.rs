//! A quick end-to-end check of `metalnet-router --run-service-proxy` on its own (the full
//! scenarios are in the lab tests): a node namespace with a backend (an HTTP server on the
//! node's address), a client namespace behind a veth, a ClusterIP Service in a state
//! directory. The client reaches the VIP per packet (TCX), a process of the node in the
//! proxy's cgroup reaches it through socket-LB, `explain service` and `dump` answer, a
//! restart writes nothing, and `--cleanup-config` leaves no mount behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use metalnet::testing::Netns;
use metalnet::testing::patience::patient;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_metalnet-router");
const VIP: &str = "10.96.0.10";
const NODE_IP: &str = "192.0.2.1";
const CLIENT_IP: &str = "192.0.2.2";

/// A child process, killed on drop.
struct Proc(Child);

impl Proc {
    /// SIGTERM and wait (at most 10 s); whether it exited with success.
    fn stop(mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
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

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A cgroup of the test's own under the cgroup2 mount, removed on drop.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Its processes are gone by now (they are dropped first); retry while the kernel
        // finishes reaping them.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The bpffs the proxy mounts under the temporary directory: cleaned up (the proxy's own
/// cleanup, then a lazy unmount) on drop.
struct BpfDir {
    path: PathBuf,
    cgroup: PathBuf,
    /// The node's namespace.
    netns: String,
}

impl Drop for BpfDir {
    fn drop(&mut self) {
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(BIN)
            .arg("--cleanup-config")
            .arg("--bpf-dir")
            .arg(&self.path)
            .arg("--cgroup-root")
            .arg(&self.cgroup)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

fn mounted(path: &Path) -> bool {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.to_string_lossy();
    mi.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_ref()))
}

fn cgroup2_root() -> Option<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    metalnet_router::proxy::options::cgroup2_mount(&mi)
}

fn in_ns(ns: &Netns, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", ns.name())).args(args);
    c
}

fn output(mut c: Command) -> Output {
    c.output().unwrap()
}

fn curl(ns: &Netns, url: &str) -> Option<String> {
    let out = output(in_ns(ns, &["curl", "-s", "-m", "3", url]));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool, log: &Path) {
    let limit = patient(limit);
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "not within {limit:?}: {what}\n--- {}\n{}",
        log.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn proxy(
    node: &Netns,
    state: &Path,
    bpf: &Path,
    cgroup: &Path,
    log: &Path,
    with_router: bool,
) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let router = if with_router {
        "--run-router=true"
    } else {
        "--run-router=false"
    };
    let child = in_ns(node, &[BIN, router, "--run-service-proxy"])
        .arg("--state-dir")
        .arg(state)
        .arg("--bpf-dir")
        .arg(bpf)
        .arg("--cgroup-root")
        .arg(cgroup)
        .args(["--node-name", "node1", "--metrics-addr", "127.0.0.1:7475"])
        .args(["--cluster-cidr", "198.51.100.0/24"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc(child)
}

#[test]
fn proxy_smoke() {
    let (Some(node), Some(client)) = (Netns::new("pxs"), Netns::new("pxs")) else {
        return;
    };
    let Some(cg_root) = cgroup2_root() else {
        eprintln!("skipping: no cgroup2 mount");
        return;
    };
    node.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        client.name(),
    ]);
    for (ns, ip) in [(&node, NODE_IP), (&client, CLIENT_IP)] {
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        // veth checks no L4 checksum unless offloads are off: a NAT bug would go unseen.
        let out = output(in_ns(
            ns,
            &["ethtool", "-K", "eth0", "tx", "off", "rx", "off"],
        ));
        assert!(out.status.success(), "ethtool: {out:?}");
    }
    client.ip(&["route", "add", "10.96.0.0/12", "via", NODE_IP]);

    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let www = tmp.path().join("www");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("name.txt"), "backend-1\n").unwrap();
    let log = tmp.path().join("proxy.log");
    let cgroup = Cgroup(cg_root.join(format!("mnl-pxs-{}", std::process::id())));
    std::fs::create_dir(&cgroup.0).unwrap();
    let bpf = BpfDir {
        path: tmp.path().join("bpf"),
        cgroup: cgroup.0.clone(),
        netns: node.name().to_string(),
    };

    // The backend: an HTTP server on the node's address.
    let server = Proc(
        in_ns(
            &node,
            &["python3", "-m", "http.server", "8080", "--bind", NODE_IP],
        )
        .current_dir(&www)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    wait_for(
        "the backend answers",
        Duration::from_secs(10),
        || curl(&client, &format!("http://{NODE_IP}:8080/name.txt")).is_some(),
        &log,
    );

    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": VIP, "clusterIPs": [VIP],
                 "ipFamilies": ["IPv4"], "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}});
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [NODE_IP], "nodeName": "node1", "conditions": {"ready": true}}]});
    std::fs::write(state.join("web.yaml"), service.to_string()).unwrap();
    std::fs::write(state.join("web-slice.yaml"), slice.to_string()).unwrap();

    let p = proxy(&node, &state, &bpf.path, &cgroup.0, &log, false);
    let ready =
        || curl(&node, "http://127.0.0.1:7475/readyz").is_some_and(|b| b.starts_with("ready"));
    wait_for("the proxy is ready", Duration::from_secs(30), ready, &log);

    // Per packet: the client namespace through the node's eth0.
    wait_for(
        "the client reaches the VIP",
        Duration::from_secs(10),
        || curl(&client, &format!("http://{VIP}/name.txt")).as_deref() == Some("backend-1\n"),
        &log,
    );
    // Socket-LB: a process of the node in the proxy's cgroup (the node has no route to the
    // VIP, so only the connect hook gets it there).
    let procs = cgroup.0.join("cgroup.procs");
    let script = format!(
        "echo $$ > {} && exec nsenter --net=/run/netns/{} curl -s -m 3 http://{VIP}/name.txt",
        procs.display(),
        node.name()
    );
    let out = output({
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    });
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "backend-1\n",
        "socket-LB: {out:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // explain and dump ask the running daemon.
    let explain = output(in_ns(
        &node,
        &[
            BIN,
            "explain",
            "service",
            "default/web",
            "--router",
            "127.0.0.1:7475",
        ],
    ));
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(explain.status.success(), "{explain:?}");
    assert!(text.contains(VIP) && text.contains(NODE_IP), "{text}");
    let dump = output(in_ns(&node, &[BIN, "dump", "--router", "127.0.0.1:7475"]));
    assert!(
        String::from_utf8_lossy(&dump.stdout).contains(VIP),
        "{dump:?}"
    );
    let missing = output(in_ns(
        &node,
        &[
            BIN,
            "explain",
            "service",
            "default/nope",
            "--router",
            "127.0.0.1:7475",
        ],
    ));
    assert!(!missing.status.success());

    // A restart with the same Services writes nothing, and serves at once; this time beside
    // the router, in one process (one metrics server, whose /readyz waits for both).
    assert!(p.stop(), "SIGTERM: a clean exit");
    assert!(mounted(&bpf.path), "the maps stay pinned after SIGTERM");
    let node_obj = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node1"},
        "spec": {"podCIDRs": ["198.51.100.0/28"]},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}});
    std::fs::write(state.join("node1.yaml"), node_obj.to_string()).unwrap();
    let before = std::fs::read_to_string(&log).unwrap_or_default().len();
    let p = proxy(&node, &state, &bpf.path, &cgroup.0, &log, true);
    assert_eq!(
        curl(&client, &format!("http://{VIP}/name.txt")).as_deref(),
        Some("backend-1\n"),
        "served by the maps of the last run while the new one starts"
    );
    wait_for(
        "the restarted proxy is ready",
        Duration::from_secs(30),
        ready,
        &log,
    );
    let second = std::fs::read_to_string(&log).unwrap_or_default()[before..].to_string();
    assert!(
        !second.contains("maps programmed"),
        "a restart wrote to the maps:\n{second}"
    );
    assert!(
        second.contains("found the maps of the last run"),
        "{second}"
    );

    // The Service goes: the client no longer reaches a backend through the VIP.
    std::fs::remove_file(state.join("web.yaml")).unwrap();
    wait_for(
        "the VIP stops answering",
        Duration::from_secs(10),
        || curl(&client, &format!("http://{VIP}/name.txt")).is_none(),
        &log,
    );

    assert!(p.stop());
    drop(server);
    let nft = || output(in_ns(&node, &["nft", "list", "tables"]));
    assert!(
        !String::from_utf8_lossy(&nft().stdout).contains("metalnet-proxy"),
        "the proxy masquerades in BPF: no nftables table"
    );
    // A table an older version left: --cleanup-config removes it.
    let out = output(in_ns(
        &node,
        &["nft", "add", "table", "inet", "metalnet-proxy"],
    ));
    assert!(out.status.success(), "nft add table: {out:?}");
    let mut cleanup = in_ns(&node, &[BIN, "--cleanup-config"]);
    cleanup
        .arg("--bpf-dir")
        .arg(&bpf.path)
        .arg("--cgroup-root")
        .arg(&cgroup.0);
    let out = output(cleanup);
    assert!(out.status.success(), "--cleanup-config: {out:?}");
    assert!(
        !mounted(&bpf.path),
        "--cleanup-config left the bpffs mounted"
    );
    assert!(
        !String::from_utf8_lossy(&nft().stdout).contains("metalnet-proxy"),
        "--cleanup-config left the nftables table"
    );
}
