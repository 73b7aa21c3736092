//! `metalnet-router --run-service-proxy` end to end in the lab, as a new user meets it: node
//! namespaces on one segment, pods behind each node's bridge running servers that answer with
//! their own name, an outside client on the segment, Services and EndpointSlices written into
//! the state directory as an endpoint controller would, one proxy per node attached to a cgroup
//! and a bpffs of the test's own. IPv4 and IPv6 wherever it applies; every data-path test ends
//! by checking that no namespace counted a TCP or UDP checksum error. Needs root, python3,
//! ethtool, curl and nsenter; each test is bounded in time (every wait and probe has a
//! timeout, scaled by `METALNET_TEST_PATIENCE`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use metalnet_lab::lab::proxy::{
    Answer, At, CLIENT_ALT_V4, CLIENT_ALT_V6, CLIENT_V4, CLIENT_V6, Ep, Probe, ProxyCluster,
    ProxyOptions, SERVER_PORT, Svc,
};
use metalnet_lab::lab::wait_for;

/// One step (a Service programmed, an answer coming).
const STEP: Duration = Duration::from_secs(10);
/// The proxy reads its map fill levels and data-path counters every 10 s.
const METRICS_REFRESH: Duration = Duration::from_secs(25);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Family {
    V4,
    V6,
}
use Family::{V4, V6};
const FAMILIES: [Family; 2] = [V4, V6];

/// ClusterIP number `n` of a family.
fn vip(f: Family, n: u8) -> String {
    match f {
        V4 => format!("10.96.0.{n}"),
        V6 => format!("fd00:96::{n:x}"),
    }
}
/// LoadBalancer address number `n`.
fn lb_ip(f: Family, n: u8) -> String {
    match f {
        V4 => format!("203.0.113.{n}"),
        V6 => format!("2001:db8:0:203::{n:x}"),
    }
}
/// externalIP number `n`.
fn ext_ip(f: Family, n: u8) -> String {
    match f {
        V4 => format!("198.51.100.{n}"),
        V6 => format!("2001:db8:0:198::{n:x}"),
    }
}
fn client_ip(f: Family) -> &'static str {
    match f {
        V4 => CLIENT_V4,
        V6 => CLIENT_V6,
    }
}
fn client_alt_ip(f: Family) -> &'static str {
    match f {
        V4 => CLIENT_ALT_V4,
        V6 => CLIENT_ALT_V6,
    }
}
/// Both ClusterIPs of Service number `n`.
fn vips(n: u8) -> [String; 2] {
    [vip(V4, n), vip(V6, n)]
}
fn svc(name: &str, n: u8) -> Svc {
    let [a, b] = vips(n);
    Svc::cluster_ip(name, &[&a, &b])
}

fn can_run() -> bool {
    metalnet_lab::lab::can_run(&["ethtool", "curl", "python3", "nsenter", "ip"])
}

/// A cluster with these pods per node and every proxy running (with `extra` flags).
fn cluster(test: &str, pods: &[usize], extra: &[&str]) -> ProxyCluster {
    let mut c = ProxyCluster::new(test, ProxyOptions::new(pods)).unwrap_or_else(|e| panic!("{e}"));
    c.start_all(extra).unwrap_or_else(|e| panic!("{e}"));
    c
}

/// How many answers each backend gave; failures under `!error`.
fn tally(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        let key = match (a.backend(), &a.error) {
            (Some(b), _) => b.to_string(),
            (None, Some(e)) => format!("!{e}"),
            (None, None) => "!none".into(),
        };
        *m.entry(key).or_default() += 1;
    }
    m
}

/// Waits until `from` gets an answer from `addr:port` (the proxy has programmed it).
fn wait_answer(c: &ProxyCluster, from: At, addr: &str, port: u16) -> Answer {
    let a = c
        .until(from, addr, port, STEP, None)
        .unwrap_or_else(|e| panic!("probe {from:?} -> {addr}:{port}: {e}\n{}", c.logs()));
    assert!(
        a.ok(),
        "{from:?} got no answer from {addr}:{port} within {STEP:?}: {a:?}\n{}",
        c.logs()
    );
    a
}

/// `count` TCP connections that must all be answered; their tally.
fn all_answered(
    c: &ProxyCluster,
    from: At,
    addr: &str,
    port: u16,
    count: usize,
) -> BTreeMap<String, usize> {
    let answers = c
        .tcp(from, addr, port, &Probe::count(count))
        .unwrap_or_else(|e| panic!("probe {from:?} -> {addr}:{port}: {e}"));
    let t = tally(&answers);
    assert!(
        answers.len() == count && answers.iter().all(Answer::ok),
        "{from:?} -> {addr}:{port}: {count} connections, answers {t:?}\n{}",
        c.logs()
    );
    t
}

/// A connection that must not be answered (dropped, refused or unreachable).
fn not_answered(c: &ProxyCluster, from: At, addr: &str, port: u16, why: &str) -> Answer {
    let a = c.connect(from, addr, port);
    assert!(
        !a.ok(),
        "{from:?} -> {addr}:{port} was answered ({a:?}) but {why}"
    );
    a
}

/// No namespace of the lab counted a TCP or UDP checksum error: the data path's rewrites
/// keep checksums right (veth verifies them, offloads being off).
fn assert_checksums(c: &ProxyCluster) {
    let bad = c.csum_error_report();
    assert!(
        bad.is_empty(),
        "checksum errors (TcpInCsumErrors + UdpInCsumErrors) per namespace: {bad:?}"
    );
}

/// Every pinned object (not directory) under a bpffs directory.
fn pins(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(pins(&p));
        } else if !matches!(e.file_name().to_str(), Some("maps.debug" | "progs.debug")) {
            // maps.debug and progs.debug are the kernel's own (bpf_preload), in every bpffs.
            out.push(p);
        }
    }
    out
}

fn pod_ip(c: &ProxyCluster, pod: &str, f: Family) -> String {
    let p = &c.pods[c.pod(pod)];
    match f {
        V4 => p.v4.clone(),
        V6 => p.v6.clone(),
    }
}

/// The lab itself, without proxies: pods answer across nodes directly, the client reaches
/// the nodes, the per-node cgroups and bpffs mounts exist, and dropping the cluster removes
/// them.
#[test]
fn topology_without_proxy() {
    if !can_run() {
        return;
    }
    let c = ProxyCluster::new("proxy_topology", ProxyOptions::new(&[1, 1])).unwrap();
    let (a1, b1) = (c.pod("a1"), c.pod("b1"));
    for f in FAMILIES {
        let target = pod_ip(&c, "b1", f);
        let a = c.connect(At::Pod(a1), &target, SERVER_PORT);
        assert_eq!(a.backend(), Some("b1"), "{a:?}");
        // Pod to pod keeps the source: no masquerading between pods.
        assert_eq!(a.source(), Some(pod_ip(&c, "a1", f).as_str()), "{a:?}");
        let u = c
            .udp(At::Pod(b1), &pod_ip(&c, "a1", f), SERVER_PORT, false, 1)
            .unwrap();
        assert_eq!(u[0].backend(), Some("a1"), "{u:?}");
        let node = c.node_ip(1, client_ip(f)).to_string();
        assert!(c.client.ping(&node), "client -> {node}");
        // Held connections exchange data round after round.
        for udp in [false, true] {
            let mut held = c
                .hold(At::Pod(b1), &pod_ip(&c, "a1", f), SERVER_PORT, 50, udp)
                .unwrap();
            let o = held.opened(STEP).unwrap();
            assert_eq!((o.ok, o.answers.len()), (50, 1), "udp {udp}: {o:?}");
            for _ in 0..2 {
                let r = held.exchange(STEP).unwrap();
                assert_eq!(r.ok, 50, "udp {udp}: {r:?}");
            }
        }
    }
    // Nothing answers on a Service address without a proxy.
    not_answered(&c, At::Pod(a1), &vip(V4, 9), 80, "no proxy runs");
    let cgroups: Vec<_> = c.nodes.iter().map(|n| n.cgroup.clone()).collect();
    let mounts: Vec<_> = c.nodes.iter().map(|n| n.bpf_dir.clone()).collect();
    for cg in &cgroups {
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
        assert!(
            !procs.trim().is_empty(),
            "the pods' servers joined {}",
            cg.display()
        );
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for m in &mounts {
        assert!(
            mountinfo.contains(&format!(" {} ", m.display())),
            "{} is a bpffs mount",
            m.display()
        );
    }
    assert_checksums(&c);
    drop(c);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for m in &mounts {
        assert!(!mountinfo.contains(&format!(" {} ", m.display())));
    }
    for cg in &cgroups {
        assert!(!cg.exists(), "{} removed", cg.display());
    }
}

/// ClusterIP: from a pod through socket-LB (the pod's socket names the VIP as its peer), from
/// a node process, and from the outside client through a node (per-packet path); TCP and UDP
/// (connected and unconnected).
#[test]
fn cluster_ip_from_pod_node_and_outside() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_cluster_ip", &[2, 1], &[]);
    let (a1, a2, b1) = (c.pod("a1"), c.pod("a2"), c.pod("b1"));
    let s = svc("web", 10);
    c.apply(&s, &[a1, b1]).unwrap();
    for f in FAMILIES {
        let v = vip(f, 10);
        let a = wait_answer(&c, At::Pod(a2), &v, 80);
        assert_eq!(
            a.peer_ip(),
            Some(v.as_str()),
            "socket-LB: the pod's getpeername shows the VIP: {a:?}"
        );
        let a = wait_answer(&c, At::Node(0), &v, 80);
        assert_eq!(a.peer_ip(), Some(v.as_str()), "{a:?}");
        let a = wait_answer(&c, At::Client, &v, 80);
        assert_eq!(a.peer_ip(), Some(v.as_str()), "{a:?}");
        assert!(
            matches!(a.backend(), Some("a1" | "b1")),
            "the client through node1: {a:?}"
        );
        // The server saw the pod's own address (no masquerading inside the cluster).
        let a = c.connect(At::Pod(a2), &v, 80);
        assert_eq!(a.source(), Some(pod_ip(&c, "a2", f).as_str()), "{a:?}");
        for connected in [true, false] {
            for from in [At::Pod(a2), At::Node(1), At::Client] {
                let u = c.udp(from, &v, 80, connected, 3).unwrap();
                assert!(
                    u.iter().all(|a| a.ok() && a.peer_ip() == Some(v.as_str())),
                    "UDP (connected: {connected}) {from:?} -> {v}:80: the answers come from the VIP: {u:?}\n{}",
                    c.logs()
                );
            }
        }
    }
    assert_checksums(&c);
}

/// NodePort answers on every node's addresses from the outside client (TCP and UDP), also
/// for a backend on another node (masqueraded, with no netfilter NAT or conntrack in the
/// node), and not on 127.0.0.1 (as kube-proxy's nftables mode).
#[test]
fn node_port_on_node_addresses_not_localhost() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_nodeport", &[1, 0], &[]);
    let a1 = c.pod("a1");
    c.apply(&svc("np", 11).node_port(30080), &[a1]).unwrap();
    for f in FAMILIES {
        for node in 0..2 {
            let addr = c.node_ip(node, client_ip(f)).to_string();
            let a = wait_answer(&c, At::Client, &addr, 30080);
            assert_eq!(a.backend(), Some("a1"), "{a:?}");
            // Through node2 the backend is on another node: masqueraded (by the programs),
            // so the answer comes back through node2.
            if node == 1 {
                assert_ne!(a.source(), Some(client_ip(f)), "not masqueraded: {a:?}");
            }
            let u = c.udp(At::Client, &addr, 30081, false, 2).unwrap();
            assert!(
                u.iter().all(|a| a.backend() == Some("a1")),
                "UDP NodePort on {addr}: {u:?}"
            );
            // From a process of the node itself, on its own address.
            let a = c.connect(At::Node(node), &addr, 30080);
            assert_eq!(a.backend(), Some("a1"), "node{} -> {addr}: {a:?}", node + 1);
        }
    }
    // The programs masquerade by themselves: no nftables table, and netfilter conntrack
    // never turned on in the nodes (it tracks nothing) while masqueraded traffic works.
    for (i, node) in c.nodes.iter().enumerate() {
        let tables = node.host.exec_ok(&["nft", "list", "tables"]).unwrap();
        assert!(
            !tables.contains("metalnet-proxy"),
            "node{}: {tables}",
            i + 1
        );
        let tracked = node
            .host
            .exec_ok(&["cat", "/proc/net/nf_conntrack"])
            .unwrap();
        assert!(
            tracked.trim().is_empty(),
            "node{}: netfilter conntrack entries: {tracked}",
            i + 1
        );
    }
    not_answered(
        &c,
        At::Node(0),
        "127.0.0.1",
        30080,
        "NodePorts do not answer on 127.0.0.1",
    );
    not_answered(
        &c,
        At::Node(0),
        "::1",
        30080,
        "NodePorts do not answer on ::1",
    );
    assert_checksums(&c);
}

/// LoadBalancer addresses (status.loadBalancer.ingress) and externalIPs from the outside
/// client.
#[test]
fn load_balancer_and_external_ips() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_lb", &[1, 1], &[]);
    let (a1, b1) = (c.pod("a1"), c.pod("b1"));
    let s = svc("lb", 12)
        .load_balancer(30090, &[&lb_ip(V4, 12), &lb_ip(V6, 12)])
        .external_ips(&[&ext_ip(V4, 12), &ext_ip(V6, 12)]);
    c.apply(&s, &[a1, b1]).unwrap();
    for f in FAMILIES {
        for addr in [lb_ip(f, 12), ext_ip(f, 12)] {
            let a = wait_answer(&c, At::Client, &addr, 80);
            assert_eq!(a.peer_ip(), Some(addr.as_str()), "{a:?}");
            all_answered(&c, At::Client, &addr, 80, 10);
            let u = c.udp(At::Client, &addr, 80, true, 2).unwrap();
            assert!(u.iter().all(Answer::ok), "UDP to {addr}: {u:?}");
        }
    }
    assert_checksums(&c);
}

/// Both backends are used over many connections: random inside (socket-LB), spread by the
/// 5-tuple hash from outside.
#[test]
fn both_backends_used() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_spread", &[2, 1], &[]);
    let (a1, a2, b1) = (c.pod("a1"), c.pod("a2"), c.pod("b1"));
    c.apply(&svc("spread", 13), &[a1, b1]).unwrap();
    for f in FAMILIES {
        let v = vip(f, 13);
        wait_answer(&c, At::Pod(a2), &v, 80);
        for from in [At::Pod(a2), At::Client] {
            let t = all_answered(&c, from, &v, 80, 40);
            assert!(
                t.get("a1").copied().unwrap_or(0) >= 5 && t.get("b1").copied().unwrap_or(0) >= 5,
                "{from:?} -> {v}: 40 connections should use both backends: {t:?}"
            );
        }
        let u = c.udp(At::Pod(a2), &v, 80, false, 30).unwrap();
        let t = tally(&u);
        assert!(
            t.len() == 2 && !t.keys().any(|k| k.starts_with('!')),
            "unconnected UDP to {v} uses both backends: {t:?}"
        );
    }
    assert_checksums(&c);
}

/// externalTrafficPolicy: Local: the backend sees the client's own address, a node without
/// a local endpoint drops, and its healthCheckNodePort answers 503 while the other node's
/// answers 200 with its local endpoint count.
#[test]
fn external_traffic_policy_local() {
    if !can_run() {
        return;
    }
    let mut c = cluster("proxy_etp_local", &[0, 1], &[]);
    let b1 = c.pod("b1");
    let s = svc("local", 14)
        .load_balancer(30100, &[&lb_ip(V4, 14), &lb_ip(V6, 14)])
        .etp_local(32100);
    c.apply(&s, &[b1]).unwrap();
    c.route_client_via(1).unwrap();
    for f in FAMILIES {
        let addr = lb_ip(f, 14);
        let a = wait_answer(&c, At::Client, &addr, 80);
        assert_eq!(a.backend(), Some("b1"));
        assert_eq!(
            a.source(),
            Some(client_ip(f)),
            "eTP=Local keeps the client's source address: {a:?}"
        );
        // NodePort on node2's own address too.
        let np = c.node_ip(1, client_ip(f)).to_string();
        let a = wait_answer(&c, At::Client, &np, 30100);
        assert_eq!(a.source(), Some(client_ip(f)), "{a:?}");
    }
    for f in FAMILIES {
        let (node1, node2) = (
            c.node_ip(0, client_ip(f)).to_string(),
            c.node_ip(1, client_ip(f)).to_string(),
        );
        let (code, body) = c.http_get(&node2, 32100).unwrap();
        assert_eq!(code, 200, "healthCheckNodePort on node2 ({body})");
        // One pod (with an address of each family) is one endpoint, as kube-proxy counts.
        let count = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["localEndpoints"].as_u64());
        assert_eq!(
            count,
            Some(1),
            "the body names the local endpoint count (one pod): {body}"
        );
        let (code, body) = c.http_get(&node1, 32100).unwrap();
        assert_eq!(code, 503, "healthCheckNodePort on node1 ({body})");
        assert!(body.contains("localEndpoints"), "{body}");
        // node1 has no local endpoint: dropped, not forwarded to node2.
        let a = c.connect(At::Client, &node1, 30100);
        assert!(!a.ok(), "node1 without local endpoint answered: {a:?}");
    }
    c.route_client_via(0).unwrap();
    for f in FAMILIES {
        let a = c.connect(At::Client, &lb_ip(f, 14), 80);
        assert!(!a.ok(), "node1 without local endpoint answered: {a:?}");
    }
    assert_checksums(&c);
}

/// internalTrafficPolicy: Local: pods reach only the endpoints of their own node, and a pod
/// on a node without one gets no answer.
#[test]
fn internal_traffic_policy_local() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_itp_local", &[2, 2], &[]);
    let (a1, a2, b1, b2) = (c.pod("a1"), c.pod("a2"), c.pod("b1"), c.pod("b2"));
    c.apply(&svc("itp", 15).itp_local(), &[a1, b2]).unwrap();
    c.apply(&svc("itp-one", 16).itp_local(), &[a1]).unwrap();
    for f in FAMILIES {
        let v = vip(f, 15);
        wait_answer(&c, At::Pod(a2), &v, 80);
        let t = all_answered(&c, At::Pod(a2), &v, 80, 20);
        assert_eq!(t.keys().collect::<Vec<_>>(), ["a1"], "from node1: {t:?}");
        let t = all_answered(&c, At::Pod(b1), &v, 80, 20);
        assert_eq!(t.keys().collect::<Vec<_>>(), ["b2"], "from node2: {t:?}");
        let one = vip(f, 16);
        wait_answer(&c, At::Pod(a2), &one, 80);
        not_answered(
            &c,
            At::Pod(b1),
            &one,
            80,
            "node2 has no local endpoint of an internalTrafficPolicy: Local Service",
        );
    }
    assert_checksums(&c);
}

/// sessionAffinity: ClientIP: the same backend over 20 connections (from a pod and from the
/// outside client); once the timeout has passed without traffic another backend may be chosen.
#[test]
fn session_affinity_client_ip() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_affinity", &[2, 1], &[]);
    let (a1, a2, b1) = (c.pod("a1"), c.pod("a2"), c.pod("b1"));
    c.apply(&svc("sticky", 17).affinity(1), &[a1, b1]).unwrap();
    for f in FAMILIES {
        let v = vip(f, 17);
        wait_answer(&c, At::Pod(a2), &v, 80);
        for from in [At::Pod(a2), At::Client] {
            let t = all_answered(&c, from, &v, 80, 20);
            assert_eq!(
                t.len(),
                1,
                "{from:?} -> {v}: one backend with affinity: {t:?}"
            );
            let first = t.keys().next().cloned().unwrap_or_default();
            // After the 1 s timeout the choice is made afresh: within 12 tries, the other
            // backend comes (each try has a chance of one half).
            let mut seen = vec![first.clone()];
            for _ in 0..12 {
                std::thread::sleep(Duration::from_millis(2100));
                let a = c.connect(from, &v, 80);
                seen.push(a.backend().unwrap_or("!").to_string());
                if a.backend().is_some_and(|b| b != first) {
                    break;
                }
            }
            assert!(
                seen.iter().any(|b| b != &first && b != "!"),
                "{from:?} -> {v}: never another backend after the affinity timeout: {seen:?}"
            );
        }
    }
    assert_checksums(&c);
}

/// Serving-but-terminating endpoints are used only when no ready one remains; none left at
/// all: a reject.
#[test]
fn terminating_endpoints_only_as_last_resort() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_terminating", &[2, 1], &[]);
    let (a1, a2, b1) = (c.pod("a1"), c.pod("a2"), c.pod("b1"));
    let s = svc("term", 18);
    c.apply_service(&s).unwrap();
    c.set_endpoints("term", &[Ep::ready(a1), Ep::terminating(b1)])
        .unwrap();
    for f in FAMILIES {
        let v = vip(f, 18);
        wait_answer(&c, At::Pod(a2), &v, 80);
        for from in [At::Pod(a2), At::Client] {
            let t = all_answered(&c, from, &v, 80, 20);
            assert_eq!(t.keys().collect::<Vec<_>>(), ["a1"], "{from:?}: {t:?}");
        }
    }
    c.set_endpoints("term", &[Ep::gone(a1), Ep::terminating(b1)])
        .unwrap();
    for f in FAMILIES {
        let v = vip(f, 18);
        for from in [At::Pod(a2), At::Client] {
            let a = c
                .until(from, &v, 80, STEP, Some("b1"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(a.backend(), Some("b1"), "{from:?}: {a:?}\n{}", c.logs());
            let t = all_answered(&c, from, &v, 80, 10);
            assert_eq!(t.keys().collect::<Vec<_>>(), ["b1"], "{from:?}: {t:?}");
        }
    }
    assert_checksums(&c);
}

/// A Service without endpoints: the client is rejected at once (connection refused or ICMP
/// unreachable), not left to time out; from a pod and from outside, TCP and UDP.
#[test]
fn no_endpoints_reject_at_once() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_no_endpoints", &[2, 0], &[]);
    let (a1, a2) = (c.pod("a1"), c.pod("a2"));
    // One Service with an endpoint first, to know the proxy has programmed the lot.
    c.apply(&svc("empty", 19).node_port(30110), &[]).unwrap();
    c.apply(&svc("full", 20), &[a1]).unwrap();
    for f in FAMILIES {
        wait_answer(&c, At::Pod(a2), &vip(f, 20), 80);
        let np = c.node_ip(0, client_ip(f)).to_string();
        for (from, addr, port) in [
            (At::Pod(a2), vip(f, 19), 80),
            (At::Node(0), vip(f, 19), 80),
            (At::Client, vip(f, 19), 80),
            (At::Client, np, 30110),
        ] {
            let a = c.connect(from, &addr, port);
            let rejected = matches!(
                a.error.as_deref(),
                Some("ECONNREFUSED" | "EHOSTUNREACH" | "ENETUNREACH")
            );
            assert!(
                rejected && a.ms < 1500.0,
                "{from:?} -> {addr}:{port} without endpoints: want a reject at once, got {a:?}"
            );
        }
        // UDP: connected sockets see the ICMP error on receive.
        let u = c.udp(At::Client, &vip(f, 19), 80, true, 1).unwrap();
        assert!(
            u[0].error.as_deref().is_some_and(|e| e != "timeout") && u[0].ms < 1500.0,
            "UDP without endpoints: want an ICMP error at once, got {u:?}"
        );
    }
    assert_checksums(&c);
}

/// loadBalancerSourceRanges: a client inside the ranges is answered, the same client from an
/// address outside them is dropped.
#[test]
fn load_balancer_source_ranges() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_source_ranges", &[1, 1], &[]);
    let (a1, b1) = (c.pod("a1"), c.pod("b1"));
    let s = svc("ranged", 21)
        .load_balancer(30120, &[&lb_ip(V4, 21), &lb_ip(V6, 21)])
        .source_ranges(&[&format!("{CLIENT_V4}/32"), &format!("{CLIENT_V6}/128")]);
    c.apply(&s, &[a1, b1]).unwrap();
    for f in FAMILIES {
        let addr = lb_ip(f, 21);
        wait_answer(&c, At::Client, &addr, 80);
        let allowed = c
            .tcp(
                At::Client,
                &addr,
                80,
                &Probe {
                    count: 5,
                    src: client_ip(f).into(),
                    ..Probe::default()
                },
            )
            .unwrap();
        assert!(allowed.iter().all(Answer::ok), "{allowed:?}");
        let denied = c
            .tcp(
                At::Client,
                &addr,
                80,
                &Probe {
                    count: 2,
                    src: client_alt_ip(f).into(),
                    timeout: 1.5,
                    ..Probe::default()
                },
            )
            .unwrap();
        assert!(
            denied.iter().all(|a| !a.ok()),
            "{} is outside loadBalancerSourceRanges: {denied:?}",
            client_alt_ip(f)
        );
    }
    assert_checksums(&c);
}

/// Hairpin: a pod reaching its own Service through the VIP gets an answer from itself and sees
/// a routable source address: its own, its node's or its gateway's (masqueraded).
fn hairpin(socket_lb: &str) {
    let c = cluster(
        &format!("proxy_hairpin_{socket_lb}"),
        &[1, 0],
        &["--socket-lb", socket_lb],
    );
    let a1 = c.pod("a1");
    c.apply(&svc("hair", 22), &[a1]).unwrap();
    for f in FAMILIES {
        let v = vip(f, 22);
        let a = wait_answer(&c, At::Pod(a1), &v, 80);
        assert_eq!(a.backend(), Some("a1"));
        let src = a.source().unwrap_or_default().to_string();
        let gateway = match f {
            V4 => "10.244.1.1".to_string(),
            V6 => "fd00:244:1::1".to_string(),
        };
        let routable = [pod_ip(&c, "a1", f), c.node_ip(0, &v).to_string(), gateway];
        assert!(
            routable.contains(&src),
            "socket-lb {socket_lb}: the hairpinned pod saw source {src}, want one of {routable:?}: {a:?}"
        );
        assert_eq!(a.peer_ip(), Some(v.as_str()), "{a:?}");
    }
    assert_checksums(&c);
}

/// Hairpin through socket-LB (the pod connects to itself).
#[test]
fn hairpin_socket_lb() {
    if can_run() {
        hairpin("all");
    }
}

/// Hairpin on the per-packet path (socket-LB off): DNAT to the pod itself, masqueraded.
#[test]
fn hairpin_per_packet() {
    if can_run() {
        hairpin("off");
    }
}

/// `service.kubernetes.io/service-proxy-name`: a Service labelled for another proxy is not
/// served; one without the label is.
#[test]
fn service_proxy_name_label() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_proxy_name", &[2, 0], &[]);
    let (a1, a2) = (c.pod("a1"), c.pod("a2"));
    c.apply(
        &svc("elsewhere", 23).label("service.kubernetes.io/service-proxy-name", "other-proxy"),
        &[a1],
    )
    .unwrap();
    c.apply(&svc("ours", 24), &[a1]).unwrap();
    for f in FAMILIES {
        wait_answer(&c, At::Pod(a2), &vip(f, 24), 80);
        not_answered(
            &c,
            At::Pod(a2),
            &vip(f, 23),
            80,
            "the Service is labelled for another service proxy",
        );
        not_answered(
            &c,
            At::Client,
            &vip(f, 23),
            80,
            "the Service is labelled for another service proxy",
        );
    }
    assert_checksums(&c);
}

/// Maglev: the same outside 5-tuple reaches the same backend through node1 and through node2
/// (no shared state between the nodes), while different tuples spread over the backends.
#[test]
fn maglev_same_backend_from_every_node() {
    if !can_run() {
        return;
    }
    let mut c = cluster("proxy_maglev", &[2, 2], &[]);
    let pods: Vec<usize> = ["a1", "a2", "b1", "b2"].iter().map(|p| c.pod(p)).collect();
    let s = svc("mag", 25).load_balancer(30130, &[&lb_ip(V4, 25), &lb_ip(V6, 25)]);
    c.apply(&s, &pods).unwrap();
    for f in FAMILIES {
        let addr = lb_ip(f, 25);
        let mut per_node = Vec::new();
        for node in [0, 1] {
            c.route_client_via(node).unwrap();
            wait_answer(&c, At::Client, &addr, 80);
            let mut chosen = Vec::new();
            for sport in 42000..42012u16 {
                let a = c
                    .tcp(
                        At::Client,
                        &addr,
                        80,
                        &Probe {
                            sport,
                            ..Probe::default()
                        },
                    )
                    .unwrap();
                chosen.push(a[0].backend().unwrap_or("!").to_string());
            }
            per_node.push(chosen);
        }
        assert_eq!(
            per_node[0], per_node[1],
            "{addr}: the backend per source port through node1 and node2"
        );
        let distinct: std::collections::BTreeSet<_> = per_node[0].iter().collect();
        assert!(
            distinct.len() >= 2 && !distinct.contains(&"!".to_string()),
            "{addr}: 12 source ports should spread over the 4 backends: {distinct:?}"
        );
    }
    c.route_client_via(0).unwrap();
    assert_checksums(&c);
}

/// A client reusing its source port on two Services with the same backends is load-balanced
/// afresh each time: no stale reverse-NAT entry hangs the connection.
#[test]
fn source_port_reuse_across_services() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_port_reuse", &[1, 1], &[]);
    let (a1, b1) = (c.pod("a1"), c.pod("b1"));
    c.apply(&svc("one", 26), &[a1, b1]).unwrap();
    c.apply(&svc("two", 27), &[a1, b1]).unwrap();
    for f in FAMILIES {
        let (one, two) = (vip(f, 26), vip(f, 27));
        wait_answer(&c, At::Client, &one, 80);
        wait_answer(&c, At::Client, &two, 80);
        for round in 0..8 {
            for v in [&one, &two] {
                let a = c
                    .tcp(
                        At::Client,
                        v,
                        80,
                        &Probe {
                            sport: 43000,
                            timeout: 1.5,
                            ..Probe::default()
                        },
                    )
                    .unwrap();
                assert!(
                    a[0].ok() && a[0].peer_ip() == Some(v.as_str()),
                    "round {round}: source port 43000 -> {v}: {a:?}\n{}",
                    c.logs()
                );
            }
        }
    }
    assert_checksums(&c);
}

/// A connected UDP socket whose backend is deleted gets an error (its socket is destroyed)
/// instead of talking to a backend that is gone.
#[test]
fn deleted_backend_udp_socket_gets_an_error() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_udp_destroy", &[2, 1], &[]);
    let (a1, a2, b1) = (c.pod("a1"), c.pod("a2"), c.pod("b1"));
    c.apply(&svc("dns", 28), &[a1, b1]).unwrap();
    for f in FAMILIES {
        c.apply(&svc("dns", 28), &[a1, b1]).unwrap();
        let v = vip(f, 28);
        wait_answer(&c, At::Pod(a2), &v, 80);
        let mut held = c.hold(At::Pod(a2), &v, 80, 1, true).unwrap();
        let opened = held.opened(STEP).unwrap();
        assert_eq!(opened.ok, 1, "{opened:?} {}", held.logs());
        let backend = opened.answers[0]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let keep = if backend == "a1" { b1 } else { a1 };
        c.set_endpoints("dns", &[Ep::ready(keep)]).unwrap();
        let mut last = None;
        let errored = wait_for(
            "the UDP socket to the deleted backend to fail",
            STEP,
            || {
                let r = held.exchange(STEP).unwrap();
                let failed = r.ok == 0 && !r.errors.is_empty();
                last = Some(r);
                failed
            },
        );
        assert!(
            errored.is_ok(),
            "{v}: the connected UDP socket to deleted backend {backend} still works: {last:?}\n{}",
            c.logs()
        );
    }
    assert_checksums(&c);
}

/// A Service edited in the state directory takes effect within a second: its port moves, the
/// old port stops answering.
#[test]
fn live_service_change_within_a_second() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_live", &[2, 0], &[]);
    let (a1, a2) = (c.pod("a1"), c.pod("a2"));
    let s = svc("live", 29);
    c.apply(&s, &[a1]).unwrap();
    for f in FAMILIES {
        wait_answer(&c, At::Pod(a2), &vip(f, 29), 80);
        wait_answer(&c, At::Client, &vip(f, 29), 80);
    }
    let moved = s.clone().tcp_port(81);
    let t0 = Instant::now();
    c.apply_service(&moved).unwrap();
    let a = c
        .until(At::Pod(a2), &vip(V4, 29), 81, Duration::from_secs(5), None)
        .unwrap();
    let took = t0.elapsed();
    assert!(
        a.ok() && took <= metalnet_lab::lab::patient(Duration::from_millis(1000)),
        "the port change reached the pod's socket-LB in {took:?}: {a:?}\n{}",
        c.logs()
    );
    for f in FAMILIES {
        let a = c
            .until(At::Client, &vip(f, 29), 81, Duration::from_secs(1), None)
            .unwrap();
        assert!(a.ok(), "client -> {}:81: {a:?}", vip(f, 29));
        not_answered(
            &c,
            At::Pod(a2),
            &vip(f, 29),
            80,
            "the Service moved to port 81",
        );
        not_answered(
            &c,
            At::Client,
            &vip(f, 29),
            80,
            "the Service moved to port 81",
        );
    }
    assert_checksums(&c);
}

/// A restart of the proxy with 1,000 open TCP connections through the VIP (from the outside
/// client: the per-packet path with its conntrack) drops none: every connection still
/// exchanges data while the proxy is down and after it is back; new connections work.
#[test]
fn restart_keeps_1000_connections() {
    if !can_run() {
        return;
    }
    let mut c = cluster("proxy_restart", &[1, 1], &[]);
    let (a1, b1) = (c.pod("a1"), c.pod("b1"));
    c.apply(&svc("steady", 30), &[a1, b1]).unwrap();
    let v = vip(V4, 30);
    let v6 = vip(V6, 30);
    wait_answer(&c, At::Client, &v, 80);
    wait_answer(&c, At::Client, &v6, 80);
    let long = Duration::from_secs(60);
    let mut held = c.hold(At::Client, &v, 80, 800, false).unwrap();
    let mut held6 = c.hold(At::Client, &v6, 80, 200, false).unwrap();
    for (h, n) in [(&held, 800), (&held6, 200)] {
        let o = h.opened(long).unwrap();
        assert_eq!(o.ok, n, "opened: {o:?}");
        assert_eq!(o.answers.len(), 2, "both backends hold connections: {o:?}");
    }
    let check = |h: &mut metalnet_lab::lab::proxy::Held, n: usize, when: &str, c: &ProxyCluster| {
        let r = h.exchange(long).unwrap();
        assert_eq!(
            r.ok,
            n,
            "{when}: {} of {n} connections exchanged data: {r:?}\n{}",
            r.ok,
            c.logs()
        );
    };
    check(&mut held, 800, "before the restart", &c);
    check(&mut held6, 200, "before the restart", &c);
    c.stop_proxy(0);
    check(&mut held, 800, "while the proxy is stopped", &c);
    check(&mut held6, 200, "while the proxy is stopped", &c);
    c.start_proxy(0, &[]).unwrap();
    check(&mut held, 800, "after the restart", &c);
    check(&mut held6, 200, "after the restart", &c);
    all_answered(&c, At::Client, &v, 80, 10);
    all_answered(&c, At::Client, &v6, 80, 10);
    assert_checksums(&c);
}

/// Sends one UDP datagram with a TTL (hop limit) of 1 on a connected socket and prints what
/// the kernel queued for it: `ORIGIN TYPE CODE OFFENDER`, as traceroute reads it. The kernel
/// queues an ICMP error only when its quote matches the socket.
const HOP_LIMITED_PROBE: &str = r#"
import socket, struct, sys, time
addr, port = sys.argv[1], int(sys.argv[2])
v6 = ':' in addr
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
# Linux's IPV6_UNICAST_HOPS 16, IPV6_RECVERR 25, IP_TTL 2, IP_RECVERR 11, MSG_ERRQUEUE 0x2000.
if v6:
    s.setsockopt(socket.IPPROTO_IPV6, 16, 1)
    s.setsockopt(socket.IPPROTO_IPV6, 25, 1)
else:
    s.setsockopt(socket.IPPROTO_IP, 2, 1)
    s.setsockopt(socket.IPPROTO_IP, 11, 1)
s.connect((addr, port))
s.send(b'hop')
end = time.time() + 3
while time.time() < end:
    try:
        _, anc, _, _ = s.recvmsg(512, 512, 0x2000 | socket.MSG_DONTWAIT)
    except BlockingIOError:
        time.sleep(0.02)
        continue
    for _, _, data in anc:
        _, origin, typ, code = struct.unpack('=IBBB', data[:7])
        off = data[16:]
        fam = struct.unpack('=H', off[:2])[0]
        who = socket.inet_ntop(fam, off[8:24] if fam == socket.AF_INET6 else off[4:8])
        print(origin, typ, code, who)
    sys.exit(0)
print('none')
"#;

/// A hop-limited datagram from outside to a Service whose backend is on another node (so the
/// node masquerades it and forwards it past its stack) gets an ICMP time exceeded from the
/// Service's address, which the client's kernel matches to the socket, as traceroute needs.
#[test]
fn a_hop_limited_datagram_through_the_proxy_gets_time_exceeded() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_ttl", &[1, 1], &[]);
    let via = c.client_via();
    let remote = (0..c.pods.len())
        .find(|&p| c.pods[p].node != via)
        .expect("a pod on another node");
    c.apply(&svc("traced", 39), &[remote]).unwrap();
    for f in FAMILIES {
        let v = vip(f, 39);
        wait_answer(&c, At::Client, &v, 80);
        let out = c
            .client
            .exec_ok(&["python3", "-c", HOP_LIMITED_PROBE, &v, "80"])
            .unwrap();
        // SO_EE_ORIGIN_ICMP 2 with type 11, or SO_EE_ORIGIN_ICMP6 3 with type 3; code 0.
        let want = match f {
            V4 => format!("2 11 0 {v}"),
            V6 => format!("3 3 0 {v}"),
        };
        assert_eq!(out.trim(), want, "{f:?}\n{}", c.logs());
    }
    assert_checksums(&c);
}

/// An upgrade that changed a map's layout: the proxy of the new version, starting over the
/// maps an older one pinned, makes every map afresh (with a WARN) and serves again, rather
/// than refusing to start until someone runs --cleanup-config.
#[test]
fn a_start_over_maps_of_another_layout_makes_them_afresh() {
    if !can_run() {
        return;
    }
    let mut c = cluster("proxy_layout", &[1, 1], &[]);
    let (a1, b1) = (c.pod("a1"), c.pod("b1"));
    c.apply(&svc("upgraded", 38), &[a1, b1]).unwrap();
    for f in FAMILIES {
        wait_answer(&c, At::Client, &vip(f, 38), 80);
    }
    let via = c.client_via();
    c.stop_proxy(via);
    // What an older version left: its conntrack map, with values of another size.
    let ct = c.nodes[via]
        .bpf_dir
        .join("maps")
        .join(metalnet_router::proxy::abi::names::CT);
    std::fs::remove_file(&ct).unwrap();
    let old = aya::maps::HashMap::<aya::maps::MapData, [u8; 40], [u8; 48]>::create(64, 0)
        .expect("creating a map");
    old.pin(&ct).expect("pinning it");
    c.start_proxy(via, &[]).unwrap();
    let logs = c.logs();
    assert!(logs.contains("another layout"), "{logs}");
    let pod_here = (0..c.pods.len())
        .find(|&p| c.pods[p].node == via)
        .expect("a pod on the node");
    for f in FAMILIES {
        all_answered(&c, At::Client, &vip(f, 38), 80, 10);
        all_answered(&c, At::Pod(pod_here), &vip(f, 38), 80, 10);
    }
    assert_checksums(&c);
}

/// SCTP through the VIP when the kernel has it (skipped with a message otherwise).
#[test]
fn sctp_when_the_kernel_has_it() {
    if !can_run() {
        return;
    }
    // The kernel's SCTP is checked pod to pod before any proxy starts.
    let mut c = ProxyCluster::new("proxy_sctp", ProxyOptions::new(&[2, 0])).unwrap();
    let (a1, a2) = (c.pod("a1"), c.pod("a2"));
    let direct = c
        .tcp(
            At::Pod(a2),
            &pod_ip(&c, "a1", V4),
            SERVER_PORT,
            &Probe {
                proto: "sctp",
                ..Probe::default()
            },
        )
        .unwrap();
    if direct[0].error.as_deref() == Some("EPROTONOSUPPORT") || direct[0].error.is_some() {
        eprintln!("skipping SCTP: the kernel has no SCTP here: {direct:?}");
        return;
    }
    c.start_all(&[]).unwrap_or_else(|e| panic!("{e}"));
    c.apply(&svc("sctp", 31).with_sctp(), &[a1]).unwrap();
    for f in FAMILIES {
        let v = vip(f, 31);
        wait_answer(&c, At::Pod(a2), &v, 80);
        for from in [At::Pod(a2), At::Client] {
            let a = c
                .tcp(
                    from,
                    &v,
                    80,
                    &Probe {
                        proto: "sctp",
                        ..Probe::default()
                    },
                )
                .unwrap();
            assert_eq!(a[0].backend(), Some("a1"), "SCTP {from:?} -> {v}: {a:?}");
        }
    }
}

/// `explain service` and `dump` name the frontends and the backends.
#[test]
fn explain_and_dump_name_frontends_and_backends() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_explain", &[1, 1], &[]);
    let (a1, b1) = (c.pod("a1"), c.pod("b1"));
    let s = svc("shown", 32).load_balancer(30140, &[&lb_ip(V4, 32), &lb_ip(V6, 32)]);
    c.apply(&s, &[a1, b1]).unwrap();
    wait_answer(&c, At::Client, &vip(V4, 32), 80);
    let explain = c
        .explain(0, "default/shown")
        .unwrap_or_else(|e| panic!("explain: {e}"));
    let dump = c.dump(0).unwrap_or_else(|e| panic!("dump: {e}"));
    for f in FAMILIES {
        for needle in [
            vip(f, 32),
            lb_ip(f, 32),
            pod_ip(&c, "a1", f),
            pod_ip(&c, "b1", f),
        ] {
            assert!(
                explain.contains(&needle),
                "explain service names {needle}:\n{explain}"
            );
            assert!(dump.contains(&needle), "dump names {needle}:\n{dump}");
        }
    }
    assert!(explain.contains("30140"), "the NodePort: {explain}");
    assert!(
        c.explain(0, "default/missing").is_err() || {
            let t = c.explain(0, "default/missing").unwrap_or_default();
            t.contains("not") || t.contains("no ")
        },
        "explain of a missing Service says so"
    );
}

/// The proxy exports its map fill levels and data-path counters, conntrack among them.
#[test]
fn metrics_show_map_fill() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_metrics", &[1, 1], &[]);
    let (a1, b1) = (c.pod("a1"), c.pod("b1"));
    c.apply(&svc("counted", 33), &[a1, b1]).unwrap();
    wait_answer(&c, At::Client, &vip(V4, 33), 80);
    all_answered(&c, At::Client, &vip(V4, 33), 80, 10);
    // Connections closed by a reset leave no entry behind: hold some open.
    let _held = c
        .hold(At::Client, &vip(V4, 33), 80, 5, false)
        .unwrap_or_else(|e| panic!("holding connections: {e}"));
    // The fill levels are read every 10 s.
    let mut text = String::new();
    let ct = r#"metalnet_proxy_map_entries{map="mn_ct"}"#;
    let filled = wait_for("conntrack entries in the metrics", METRICS_REFRESH, || {
        text = c.metrics(0).unwrap_or_default();
        metric(&text, ct).is_some_and(|v| v > 0.0)
    });
    assert!(
        filled.is_ok(),
        "conntrack entries with 5 connections open through node1: {:?}\n{text}",
        metric(&text, ct)
    );
    let value = |series: &str| metric(&text, series);
    assert!(
        value(r#"metalnet_proxy_map_capacity{map="mn_ct"}"#).is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert!(text.contains("metalnet_proxy_frontends"), "{text}");
}

/// `--cleanup-config` removes what the proxy left (maps, programs, the nftables table): the
/// Service stops answering through that node and its bpffs is empty.
#[test]
fn cleanup_config_removes_everything() {
    if !can_run() {
        return;
    }
    let mut c = cluster("proxy_cleanup", &[1, 1], &[]);
    let (a1, b1) = (c.pod("a1"), c.pod("b1"));
    c.apply(&svc("gone", 34), &[a1, b1]).unwrap();
    wait_answer(&c, At::Client, &vip(V4, 34), 80);
    c.stop_proxy(0);
    // Kept over a plain stop, as kube-proxy keeps its rules.
    all_answered(&c, At::Client, &vip(V4, 34), 80, 3);
    let out = c.run_proxy_once(0, &["--cleanup-config"]).unwrap();
    assert!(
        out.status.success(),
        "--cleanup-config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The kernel frees a detached program after an RCU grace period, and a connection made in
    // that window is still balanced: wait for the Service to stop answering, within a bound.
    for f in FAMILIES {
        let mut last = None;
        let gone = wait_for(
            "the Service to stop answering through node1",
            Duration::from_secs(5),
            || {
                let a = c.connect(At::Client, &vip(f, 34), 80);
                let ok = a.ok();
                last = Some(a);
                !ok
            },
        );
        assert!(
            gone.is_ok(),
            "{f:?}: still answered after node1's proxy was cleaned up: {last:?}"
        );
    }
    let left = pins(&c.nodes[0].bpf_dir);
    assert!(left.is_empty(), "pins left in the bpffs: {left:?}");
    let tables = c.nodes[0].host.exec_ok(&["nft", "list", "tables"]).unwrap();
    assert!(tables.trim().is_empty(), "nftables tables left: {tables}");
}

/// Interfaces created after the proxy started (a pod's veth added by a CNI plugin later) get
/// the per-packet data path: with socket-LB off, a new pod reaches a Service through its
/// veth's ingress program.
#[test]
fn late_interfaces_get_the_data_path() {
    if !can_run() {
        return;
    }
    let mut c = cluster("proxy_late_iface", &[1, 1], &["--socket-lb", "off"]);
    let (a1, b1) = (c.pod("a1"), c.pod("b1"));
    c.apply(&svc("late", 35), &[a1, b1]).unwrap();
    wait_answer(&c, At::Pod(a1), &vip(V4, 35), 80);
    let late = c.add_pod(0).unwrap();
    c.wait_server(late).unwrap();
    for f in FAMILIES {
        let v = vip(f, 35);
        let a = wait_answer(&c, At::Pod(late), &v, 80);
        assert_eq!(a.peer_ip(), Some(v.as_str()), "{a:?}");
        let t = all_answered(&c, At::Pod(late), &v, 80, 20);
        assert_eq!(
            t.len(),
            2,
            "per-packet from the late pod uses both backends: {t:?}"
        );
    }
    assert_checksums(&c);
}

/// The value of a metric line starting with `series` (name and labels), when present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `--socket-lb host-only` (for service meshes): processes of the node's own namespace are
/// balanced at connect (the node has no route to the VIP: only socket-LB can answer), while
/// pods, though in the same cgroup, go through the per-packet path (new connections counted
/// by the data path).
#[test]
fn socket_lb_host_only() {
    if !can_run() {
        return;
    }
    let c = cluster("proxy_host_only", &[2, 1], &["--socket-lb", "host-only"]);
    let (a1, a2, b1) = (c.pod("a1"), c.pod("a2"), c.pod("b1"));
    c.apply(&svc("mesh", 36), &[a1, b1]).unwrap();
    let lb_new = r#"metalnet_proxy_datapath_total{event="lb_new"}"#;
    for f in FAMILIES {
        let v = vip(f, 36);
        let a = wait_answer(&c, At::Node(0), &v, 80);
        assert_eq!(a.peer_ip(), Some(v.as_str()), "{a:?}");
        wait_answer(&c, At::Pod(a2), &v, 80);
        // The counters are read every 10 s: `before` may be stale (lower), which only adds
        // the pod's earlier per-packet connection; socket-LB connections never count here.
        let read = || metric(&c.metrics(0).unwrap_or_default(), lb_new).unwrap_or(0.0);
        let before = read();
        all_answered(&c, At::Pod(a2), &v, 80, 10);
        let mut after = before;
        let _ = wait_for("the pod's connections counted", METRICS_REFRESH, || {
            after = read();
            after - before >= 10.0
        });
        let text = c.metrics(0).unwrap_or_default();
        assert!(
            after - before >= 10.0,
            "host-only: the pod's 10 connections go through the per-packet path: {lb_new} {before} -> {after}\n{text}"
        );
    }
    assert_checksums(&c);
}

/// Our tc filters on node 1 (`--tc-attach=clsact`), over every interface and both hooks.
fn clsact_filters(c: &ProxyCluster) -> usize {
    let out = c
        .node(0)
        .host
        .exec_ok(&[
            "sh",
            "-c",
            "for d in $(ls /sys/class/net); do tc filter show dev $d ingress; tc filter show dev $d egress; done",
        ])
        .unwrap_or_else(|e| panic!("tc filter show: {e}"));
    out.matches("mn_tc_").count()
}

/// `--tc-attach=clsact`, the way of kernels before TCX: the per-packet path serves the outside
/// client, a restart keeps held connections and leaves one filter per hook, and
/// `--cleanup-config` removes the filters.
#[test]
fn clsact_attachment() {
    if !can_run() {
        return;
    }
    let mut c = cluster("proxy_clsact", &[1, 1], &["--tc-attach=clsact"]);
    let (a1, b1) = (c.pod("a1"), c.pod("b1"));
    c.apply(&svc("filtered", 37).node_port(30137), &[a1, b1])
        .unwrap();
    for f in FAMILIES {
        wait_answer(&c, At::Client, &vip(f, 37), 80);
        let node = c.node_ip(0, client_ip(f)).to_string();
        wait_answer(&c, At::Client, &node, 30137);
    }
    let filters = clsact_filters(&c);
    assert!(
        filters >= 4,
        "both hooks of the node's interfaces: {filters}"
    );
    assert!(
        pins(&c.node(0).bpf_dir)
            .iter()
            .all(|p| !p.to_string_lossy().contains("tcx-")),
        "no TCX links"
    );
    let long = Duration::from_secs(30);
    let mut held = c.hold(At::Client, &vip(V4, 37), 80, 50, false).unwrap();
    assert_eq!(held.opened(long).unwrap().ok, 50);
    c.stop_proxy(0);
    c.start_proxy(0, &["--tc-attach=clsact"]).unwrap();
    let r = held.exchange(long).unwrap();
    assert_eq!(r.ok, 50, "after the restart: {r:?}\n{}", c.logs());
    assert_eq!(clsact_filters(&c), filters, "replaced, not added");
    all_answered(&c, At::Client, &vip(V6, 37), 80, 5);
    assert_checksums(&c);
    drop(held);

    c.stop_proxy(0);
    let out = c.run_proxy_once(0, &["--cleanup-config"]).unwrap();
    assert!(
        out.status.success(),
        "--cleanup-config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        clsact_filters(&c),
        0,
        "--cleanup-config removes the filters"
    );
}
