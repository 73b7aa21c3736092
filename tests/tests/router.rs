//! `metalnet-router --run-router` end to end in the lab: node namespaces on one segment
//! (192.0.2.0/24, 2001:db8::/64), a pod behind each node (198.51.100.0/24, 2001:db8:100::/48),
//! one router process per node reading Node manifests from a state directory, and BIRD/FRR as
//! upstream routers. IPv4 and IPv6 throughout. Needs root, BIRD and FRR; each test is bounded
//! in time (every wait has a timeout, scaled by `METALNET_TEST_PATIENCE`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use metalnet::testing::{Manifest, endpoint_slice, service};
use metalnet_lab::lab::router::{
    BIRD_ASN, BIRD_V4, BIRD_V6, CLUSTER_ASN, ClusterOptions, FRR_ASN, FRR_V4, FRR_V6, METRICS_ADDR,
    RouterCluster, bird_protocol_since, frr_peer_uptimes, router_binary, routes_with_proto,
};
use metalnet_lab::lab::{BgpRouter, Community, StaticRoute, base64, can_run, wait_for};

/// Convergence of a small cluster.
const CONVERGE: Duration = Duration::from_secs(30);
/// A single step (a ping, a route appearing).
const STEP: Duration = Duration::from_secs(15);
const PASSWORD: &str = "lab-md5-secret";

fn net(s: &str) -> IpNet {
    s.parse().expect("a prefix literal")
}

/// `-4` or `-6` for an address or prefix (`ip route show ADDR` does not infer it).
fn family(s: &str) -> &'static str {
    if s.contains(':') { "-6" } else { "-4" }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address literal")
}

/// Every node's proto-17 routes, for failure messages.
fn all_routes(c: &RouterCluster) -> String {
    (0..c.nodes.len())
        .map(|i| format!("{}: {:?}\n", c.nodes[i].name, c.routes_proto17(i)))
        .collect()
}

fn converge(c: &RouterCluster) {
    let all: Vec<usize> = (0..c.nodes.len()).collect();
    c.wait_full_mesh_routes(&all, CONVERGE)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// No node has a proto-17 route to its own pod CIDRs.
fn assert_no_route_to_self(c: &RouterCluster) {
    for i in 0..c.nodes.len() {
        let have = c.proto17_destinations(i);
        for own in &c.nodes[i].pod_cidrs {
            assert!(
                !have.contains(&net(own)),
                "{} routes its own pod CIDR {own}: {have:?}",
                c.nodes[i].name
            );
        }
    }
}

/// The topology itself, without routers: hand-made proto-17 routes make pods on different
/// nodes reach each other, the readback sees them, and removing them cuts the path again.
#[test]
fn topology_carries_pod_traffic_with_hand_made_routes() {
    if !can_run(&["ethtool", "ping"]) {
        return;
    }
    let c = RouterCluster::new("router_topology", ClusterOptions::new(3)).unwrap();
    let (a, b) = (0, 1);
    // Without routes the pods are cut off from each other.
    assert!(!c.pod_ping(a, c.nodes[b].pod_v4()));
    let hand = |i: usize, j: usize, op: &str| {
        for (cidr, via) in [
            (&c.nodes[j].pod_cidrs[0], &c.nodes[j].v4),
            (&c.nodes[j].pod_cidrs[1], &c.nodes[j].v6),
        ] {
            c.nodes[i]
                .host
                .exec(&["ip", "route", op, cidr, "via", via, "proto", "17"])
                .unwrap();
        }
    };
    hand(a, b, "add");
    hand(b, a, "add");
    let r = c.routes_proto17(a).unwrap();
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r.contains(&(net(&c.nodes[b].pod_cidrs[0]), Some(ip(&c.nodes[b].v4)))));
    assert!(r.contains(&(net(&c.nodes[b].pod_cidrs[1]), Some(ip(&c.nodes[b].v6)))));
    assert!(c.has_full_pod_routes(a) || c.nodes.len() > 2);
    c.wait_pod_ping(a, c.nodes[b].pod_v4(), STEP).unwrap();
    c.wait_pod_ping(a, c.nodes[b].pod_v6(), STEP).unwrap();
    c.wait_pod_ping(b, c.nodes[a].pod_v6(), STEP).unwrap();
    // Routes of another protocol are not read back as ours.
    c.nodes[a]
        .host
        .exec(&[
            "ip",
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            &c.nodes[2].v4,
        ])
        .unwrap();
    assert_eq!(c.routes_proto17(a).unwrap().len(), 2);
    hand(a, b, "del");
    hand(b, a, "del");
    assert!(c.routes_proto17(a).unwrap().is_empty());
    assert!(!c.pod_ping(a, c.nodes[b].pod_v4()));
    // Node manifests are there for the routers, annotations rewritable.
    let m = c.node_manifest(0);
    assert_eq!(m["spec"]["podCIDRs"][0], c.nodes[0].pod_cidrs[0].as_str());
    assert_eq!(
        m["status"]["addresses"][1]["address"],
        c.nodes[0].v6.as_str()
    );
    assert!(c.state_dir().join("node-n1.json").exists());
}

/// Five nodes, full mesh: every node routes every other node's pod CIDRs (v4 and v6) with
/// protocol 17, directly via that node, and pods ping each other without an overlay.
#[test]
fn five_nodes_full_mesh() {
    if !can_run(&["ethtool", "ping"]) {
        return;
    }
    let mut c = RouterCluster::new("router_full_mesh", ClusterOptions::new(5)).unwrap();
    c.start_all(&[]).unwrap();
    converge(&c);
    assert_no_route_to_self(&c);
    // Exactly the other nodes' pod CIDRs, nothing else.
    for i in 0..5 {
        assert_eq!(
            c.proto17_destinations(i).len(),
            8,
            "{}: {:?}",
            c.nodes[i].name,
            c.routes_proto17(i)
        );
    }
    c.wait_all_pods_ping(STEP).unwrap_or_else(|e| panic!("{e}"));
    // No tunnel device anywhere: plain routes only.
    for n in &c.nodes {
        let links = n.host.exec_ok(&["ip", "-o", "link"]).unwrap();
        assert!(!links.contains("tun-"), "{}: {links}", n.name);
    }
    // What the router says about it: four sessions up in its metrics, and `explain route`
    // names the kernel route it installed.
    let metrics = c.metrics(0).unwrap();
    let up = metrics
        .lines()
        .filter(|l| l.starts_with("metalnet_router_bgp_session_up{") && l.ends_with(" 1"))
        .count();
    assert_eq!(up, 4, "{metrics}");
    let n2 = &c.nodes[1];
    let explain = c
        .router_get(
            0,
            &format!("/debug/routing/route?prefix={}", n2.pod_cidrs[0]),
        )
        .unwrap();
    assert!(
        explain.contains(&format!("{} via {} proto 17", n2.pod_cidrs[0], n2.v4)),
        "{explain}"
    );
    // The same through the command line, asking the router of the node it runs on.
    let bin = router_binary().unwrap();
    let out = c.nodes[0]
        .host
        .exec_ok(&[
            &bin.display().to_string(),
            "explain",
            "--router",
            METRICS_ADDR,
            "node",
            "n1",
        ])
        .unwrap();
    let sessions = metalnet_lab::lab::router::parse_explain_sessions(&out);
    for n in &c.nodes[1..] {
        assert_eq!(
            sessions.get(&ip(&n.v4)).map(|(s, _)| s.as_str()),
            Some("Established"),
            "{out}"
        );
    }
}

/// Route reflectors: n1 and n2 servers, n3..n5 clients of cluster id 42. Same reachability;
/// clients hold sessions only to the servers.
#[test]
fn route_reflectors_two_servers_three_clients() {
    if !can_run(&["ethtool", "ping", "ss"]) {
        return;
    }
    let mut c = RouterCluster::new("router_rr", ClusterOptions::new(5)).unwrap();
    for i in 0..2 {
        c.annotate(i, "kube-router.io/rr.server", "42");
        c.write_node(i).unwrap();
    }
    for i in 2..5 {
        c.annotate(i, "kube-router.io/rr.client", "42");
        c.write_node(i).unwrap();
    }
    c.start_all(&[]).unwrap();
    converge(&c);
    c.wait_all_pods_ping(STEP).unwrap_or_else(|e| panic!("{e}"));
    let servers: Vec<IpAddr> = c.nodes[..2]
        .iter()
        .flat_map(|n| [ip(&n.v4), ip(&n.v6)])
        .collect();
    for i in 2..5 {
        let peers = c.bgp_connections(i).unwrap();
        assert!(
            peers.iter().all(|p| servers.contains(p)),
            "client {} has sessions {peers:?}, servers are {servers:?}",
            c.nodes[i].name
        );
        for s in 0..2 {
            assert!(
                peers.contains(&ip(&c.nodes[s].v4)) || peers.contains(&ip(&c.nodes[s].v6)),
                "client {} has no session to server {}: {peers:?}",
                c.nodes[i].name,
                c.nodes[s].name
            );
        }
    }
    // Routes on a client toward another client's pods go straight to that client (the
    // reflector keeps the original next hop).
    let r = c.routes_proto17(2).unwrap();
    assert!(
        r.contains(&(net(&c.nodes[3].pod_cidrs[0]), Some(ip(&c.nodes[3].v4)))),
        "{r:?}"
    );
}

/// The global peers of every router: BIRD and FRR with MD5, by their IPv4 addresses (the
/// sessions carry IPv6 too; a global peer of the other family than the node's primary
/// address is skipped, as there is no flag for a per-peer source address).
fn global_peer_args() -> Vec<String> {
    let pw = base64(PASSWORD.as_bytes());
    vec![
        format!("--peer-router-ips={BIRD_V4},{FRR_V4}"),
        format!("--peer-router-asns={BIRD_ASN},{FRR_ASN}"),
        format!("--peer-router-passwords={pw},{pw}"),
    ]
}

/// Both upstream routers announce a default route (v4 and v6).
fn default_routes() -> Vec<StaticRoute> {
    vec![
        StaticRoute::new(net("0.0.0.0/0")),
        StaticRoute::new(net("::/0")),
    ]
}

/// BIRD and FRR upstream as global peers with MD5: they learn every pod CIDR from its node;
/// with `--advertise-loadbalancer-ip` a Local Service's LoadBalancer addresses from the nodes
/// with endpoints only (ECMP in BIRD's kernel); never a ClusterIP; the default routes they
/// announce are not installed on the nodes.
#[test]
fn upstream_bird_and_frr_global_peers_md5() {
    if !can_run(&["ethtool", "ping", "bird", "vtysh"]) {
        return;
    }
    let mut c = RouterCluster::new("router_upstream", ClusterOptions::new(3)).unwrap();
    let bird = c
        .start_bird(Some(PASSWORD), |cfg| cfg.static_routes = default_routes())
        .unwrap();
    let frr = c
        .start_frr(Some(PASSWORD), |cfg| cfg.networks = default_routes())
        .unwrap();
    // A Local LoadBalancer Service with endpoints on n1 and n2, and a ClusterIP.
    let (lb4, lb6, cip) = ("203.0.113.10", "2001:db8:ff::10", "203.0.113.30");
    let svc = service("web")
        .traffic_policy("Local")
        .spec("clusterIP", serde_json::json!(cip))
        .spec("clusterIPs", serde_json::json!([cip]))
        .ingress([lb4, lb6])
        .families_of(&[lb4, lb6]);
    c.write_manifest("svc-web.json", &svc.json()).unwrap();
    c.write_manifest(
        "eps-web.json",
        &endpoint_slice("web").ready_on_each(["n1", "n2"]).json(),
    )
    .unwrap();
    c.write_manifest(
        "eps-web6.json",
        &endpoint_slice("web")
            .name("web-6")
            .address_type("IPv6")
            .ready_on_each(["n1", "n2"])
            .json(),
    )
    .unwrap();
    c.common_args = global_peer_args();
    c.start_all(&["--advertise-loadbalancer-ip"]).unwrap();

    for n in &c.nodes {
        bird.wait_established(&format!("{}_v4", n.name), CONVERGE)
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
        frr.wait_established(&n.v4, CONVERGE)
            .unwrap_or_else(|e| panic!("{e}\n{}\n{}", frr.logs(), c.logs()));
    }
    // Both learn every pod CIDR from its own node.
    for n in &c.nodes {
        let (c4, c6) = (&n.pod_cidrs[0], &n.pod_cidrs[1]);
        let (v4, v6) = (ip(&n.v4), ip(&n.v6));
        bird.wait_route(c4, &|r| r.next_hops.contains(&v4), STEP)
            .unwrap_or_else(|e| panic!("BIRD {c4}: {e}\n{}", c.logs()));
        bird.wait_route(c6, &|r| r.next_hops.contains(&v6), STEP)
            .unwrap_or_else(|e| panic!("BIRD {c6}: {e}\n{}", c.logs()));
        frr.wait_route(c4, &|r| r.next_hops.contains(&v4), STEP)
            .unwrap_or_else(|e| panic!("FRR {c4}: {e}\n{}", c.logs()));
        frr.wait_route(c6, &|r| r.next_hops.contains(&v6), STEP)
            .unwrap_or_else(|e| panic!("FRR {c6}: {e}\n{}", c.logs()));
    }
    // The LoadBalancer addresses, ECMP from n1 and n2 in BIRD's kernel, never from n3.
    let ecmp = |dst: &str, want: &[&str]| {
        wait_for(&format!("ECMP route {dst} in BIRD's kernel"), STEP, || {
            let out = bird
                .host()
                .exec_ok(&["ip", family(dst), "route", "show", dst])
                .unwrap_or_default();
            want.iter().all(|w| out.contains(&format!("via {w} ")))
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}\n{:?}\n{:?}\n{}",
                bird.birdc(&["show", "route", "all"]).unwrap_or_default(),
                bird.host().exec_ok(&["ip", "route"]),
                bird.host().exec_ok(&["ip", "-6", "route"]),
                c.logs()
            )
        });
    };
    ecmp(lb4, &[&c.nodes[0].v4, &c.nodes[1].v4]);
    ecmp(lb6, &[&c.nodes[0].v6, &c.nodes[1].v6]);
    frr.wait_route(&format!("{lb4}/32"), &|_| true, STEP)
        .unwrap();
    let from = |prefix: &str| -> Vec<IpAddr> {
        let p = net(prefix);
        let mut hops: Vec<IpAddr> = bird
            .routes()
            .unwrap()
            .into_iter()
            .filter(|r| r.prefix == p)
            .flat_map(|r| r.next_hops)
            .collect();
        hops.sort();
        hops.dedup();
        hops
    };
    assert_eq!(
        from(&format!("{lb4}/32")),
        vec![ip(&c.nodes[0].v4), ip(&c.nodes[1].v4)]
    );
    assert_eq!(
        from(&format!("{lb6}/128")),
        vec![ip(&c.nodes[0].v6), ip(&c.nodes[1].v6)]
    );
    // Never the ClusterIP (not asked), on either router.
    let cip_net = net(&format!("{cip}/32"));
    assert!(!bird.routes().unwrap().iter().any(|r| r.prefix == cip_net));
    assert!(!frr.routes().unwrap().iter().any(|r| r.prefix == cip_net));
    // The default routes they announce are not installed on any node.
    for (i, n) in c.nodes.iter().enumerate() {
        let routes = c.routes_proto17(i).unwrap();
        assert!(
            !routes.iter().any(|(d, _)| d.prefix_len() == 0),
            "{} installed a default route: {routes:?}",
            n.name
        );
        let defaults = n.host.exec_ok(&["ip", "route", "show", "default"]).unwrap();
        let defaults6 = n
            .host
            .exec_ok(&["ip", "-6", "route", "show", "default"])
            .unwrap();
        assert!(
            defaults.trim().is_empty() && defaults6.trim().is_empty(),
            "{}: {defaults}{defaults6}",
            n.name
        );
    }
    // And the nodes still route each other's pods.
    converge(&c);

    // Asked for by the Service (kube-router.io/service.advertise.clusterip), a ClusterIP is
    // announced, from every node; the other one still is not.
    let cip2 = "203.0.113.31";
    let api = service("api")
        .type_("ClusterIP")
        .annotation("kube-router.io/service.advertise.clusterip", "true")
        .spec("clusterIP", serde_json::json!(cip2))
        .spec("clusterIPs", serde_json::json!([cip2]));
    c.write_manifest("svc-api.json", &api.json()).unwrap();
    let all_v4: Vec<IpAddr> = c.nodes.iter().map(|n| ip(&n.v4)).collect();
    wait_for(
        "BIRD to learn the asked-for ClusterIP from every node",
        STEP,
        || {
            let p = net(&format!("{cip2}/32"));
            let hops: Vec<IpAddr> = bird
                .routes()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.prefix == p)
                .flat_map(|r| r.next_hops)
                .collect();
            all_v4.iter().all(|a| hops.contains(a))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(!bird.routes().unwrap().iter().any(|r| r.prefix == cip_net));

    // The endpoints (both slices: a node with a local endpoint of either family announces)
    // move to n3: the Local LoadBalancer address is now announced from n3 only.
    c.write_manifest(
        "eps-web.json",
        &endpoint_slice("web").ready_on_each(["n3"]).json(),
    )
    .unwrap();
    c.write_manifest(
        "eps-web6.json",
        &endpoint_slice("web")
            .name("web-6")
            .address_type("IPv6")
            .ready_on_each(["n3"])
            .json(),
    )
    .unwrap();
    let lb_net = net(&format!("{lb4}/32"));
    let n3 = ip(&c.nodes[2].v4);
    wait_for(
        "BIRD to learn the LoadBalancer address from n3 only",
        STEP,
        || {
            let mut hops: Vec<IpAddr> = bird
                .routes()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.prefix == lb_net)
                .flat_map(|r| r.next_hops)
                .collect();
            hops.dedup();
            hops == vec![n3]
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{:?}\nn1 explains: {:?}\n{}",
            bird.routes(),
            c.router_get(0, &format!("/debug/routing/route?prefix={lb4}/32")),
            c.logs()
        )
    });
    // The Service asking for its ClusterIP goes away: withdrawn.
    c.remove_manifest("svc-api.json").unwrap();
    bird.wait_no_route(&format!("{cip2}/32"), STEP)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

/// The per-node `kube-router.io/peers` annotation (no global peers): n1 peers with BIRD
/// (MD5), n2 with FRR; only they do, and each router learns that node's pod CIDRs.
#[test]
fn upstream_per_node_peers_annotation() {
    if !can_run(&["ethtool", "ping", "bird", "vtysh"]) {
        return;
    }
    let mut c = RouterCluster::new("router_node_peers", ClusterOptions::new(3)).unwrap();
    let bird = c.start_bird(Some(PASSWORD), |_| {}).unwrap();
    let frr = c.start_frr(None, |_| {}).unwrap();
    let peers = c.peers_annotation(0, &[(BIRD_V4, BIRD_V6, BIRD_ASN)], Some(PASSWORD));
    c.annotate(0, "kube-router.io/peers", &peers);
    c.write_node(0).unwrap();
    // n3 peers with BIRD with the wrong password: TCP-MD5 keeps the session from forming.
    let wrong = c.peers_annotation(2, &[(BIRD_V4, BIRD_V6, BIRD_ASN)], Some("not-the-secret"));
    c.annotate(2, "kube-router.io/peers", &wrong);
    c.write_node(2).unwrap();
    // The deprecated form on n2.
    c.annotate(1, "kube-router.io/peer.ips", &format!("{FRR_V4},{FRR_V6}"));
    c.annotate(
        1,
        "kube-router.io/peer.asns",
        &format!("{FRR_ASN},{FRR_ASN}"),
    );
    c.annotate(
        1,
        "kube-router.io/peer.localips",
        &format!("{},{}", c.nodes[1].v4, c.nodes[1].v6),
    );
    c.write_node(1).unwrap();
    c.start_all(&[]).unwrap();
    bird.wait_established("n1_v4", CONVERGE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    bird.wait_established("n1_v6", CONVERGE).unwrap();
    frr.wait_established(&c.nodes[1].v4, CONVERGE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    frr.wait_established(&c.nodes[1].v6, CONVERGE).unwrap();
    let n1 = &c.nodes[0];
    bird.wait_route(
        &n1.pod_cidrs[0],
        &|r| r.next_hops.contains(&ip(&n1.v4)),
        STEP,
    )
    .unwrap();
    bird.wait_route(
        &n1.pod_cidrs[1],
        &|r| r.next_hops.contains(&ip(&n1.v6)),
        STEP,
    )
    .unwrap();
    let n2 = &c.nodes[1];
    frr.wait_route(
        &n2.pod_cidrs[0],
        &|r| r.next_hops.contains(&ip(&n2.v4)),
        STEP,
    )
    .unwrap();
    converge(&c);
    // n3 (wrong MD5 password) has no session; n2 none with BIRD; nobody but n2 with FRR.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!bird.is_established("n3_v4").unwrap());
    assert!(!bird.is_established("n3_v6").unwrap());
    assert!(!bird.is_established("n2_v4").unwrap());
    assert!(!frr.is_established(&c.nodes[2].v4).unwrap());
}

/// FRR's sessions are the same as before: same states, and the Established ones since the
/// same moment (FRR computes the epoch from the uptime at each call: ±1 s).
fn assert_frr_kept(
    frr: &metalnet_lab::lab::Frr,
    before: &BTreeMap<String, (String, Option<u64>)>,
    c: &RouterCluster,
) {
    let now = frr_peer_uptimes(frr).unwrap();
    for (peer, (state, since)) in before {
        // FRR keeps trying the nodes that do not peer with it (Active, Connect, OpenSent...).
        if state != "Established" {
            continue;
        }
        let after = now.get(peer);
        let same = match (after, since) {
            (Some((s, Some(a))), Some(b)) => s == state && a.abs_diff(*b) <= 1,
            (Some((s, _)), None) => s == state,
            _ => false,
        };
        assert!(
            same,
            "FRR session {peer} changed: before {:?}, now {after:?}\n{}",
            (state, since),
            c.logs()
        );
    }
}

/// BIRD sessions `n<i>_v4`/`_v6` that are Established, with their `Since`.
fn bird_sessions(bird: &metalnet_lab::lab::Bird) -> BTreeMap<String, String> {
    bird_protocol_since(bird)
        .unwrap()
        .into_iter()
        .filter(|(_, (info, _))| info.starts_with("Established"))
        .map(|(k, (_, since))| (k, since))
        .collect()
}

/// Seconds of the day of BIRD's `Since` (`10:55:06.708`, maybe after a date).
fn since_secs(since: &str) -> Option<f64> {
    let t = since.split_whitespace().last()?;
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The BIRD sessions `keys` are still Established since the same moment. BIRD derives the
/// `Since` it shows from a monotonic clock, so it wanders by a millisecond or two between
/// calls; a reset moves it by far more (the test waits over a second between steps).
fn assert_bird_kept(
    bird: &metalnet_lab::lab::Bird,
    before: &BTreeMap<String, String>,
    keys: &[&str],
) {
    let now = bird_sessions(bird);
    for k in keys {
        let (b, a) = (before.get(*k), now.get(*k));
        let same = match (b.and_then(|b| since_secs(b)), a.and_then(|a| since_secs(a))) {
            (Some(b), Some(a)) => (a - b).abs() < 0.05,
            _ => false,
        };
        assert!(same, "BIRD session {k} was reset: since {b:?}, now {a:?}");
    }
}

/// Live reconfiguration on running routers: the peers annotation, the node ASN and the rr
/// annotations change on one node; routes converge without a restart (same pids) and the
/// sessions not concerned never leave Established (BIRD's `Since`, FRR's established epoch).
#[test]
fn live_reconfiguration_keeps_unconcerned_sessions() {
    if !can_run(&["ethtool", "ping", "bird", "vtysh"]) {
        return;
    }
    let mut c = RouterCluster::new("router_live", ClusterOptions::new(4)).unwrap();
    let bird = c.start_bird(None, |_| {}).unwrap();
    let frr = c.start_frr(None, |_| {}).unwrap();
    let bird_only = [(BIRD_V4, BIRD_V6, BIRD_ASN)];
    // Per-node ASNs (node.asn counts only without full mesh, as in kube-router).
    c.common_args = vec!["--nodes-full-mesh=false".into()];
    for i in 0..4 {
        let peers = c.peers_annotation(i, &bird_only, None);
        c.annotate(i, "kube-router.io/peers", &peers);
        c.annotate(i, "kube-router.io/node.asn", "64512");
        c.write_node(i).unwrap();
    }
    c.start_all(&[]).unwrap();
    let pids: Vec<u32> = c.nodes.iter().map(|n| n.router().unwrap().pid()).collect();
    converge(&c);
    for n in &c.nodes {
        for af in ["v4", "v6"] {
            bird.wait_established(&format!("{}_{af}", n.name), CONVERGE)
                .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
        }
    }
    // BIRD's `Since` has a resolution of a second (or a millisecond): let it tick.
    std::thread::sleep(Duration::from_millis(1500));
    let before = bird_sessions(&bird);
    assert_eq!(before.len(), 8, "{before:?}");
    let bird_addrs = [ip(BIRD_V4), ip(BIRD_V6)];
    let frr_addrs = [ip(FRR_V4), ip(FRR_V6)];
    let n1_before = c.session_snapshot(0);
    let n4_before = c.session_snapshot(3);

    // 1. n4 also peers with FRR: FRR sessions come up, every BIRD session stays.
    let peers_both = c.peers_annotation(
        3,
        &[(BIRD_V4, BIRD_V6, BIRD_ASN), (FRR_V4, FRR_V6, FRR_ASN)],
        None,
    );
    let t = Instant::now();
    c.set_annotation(3, "kube-router.io/peers", Some(&peers_both))
        .unwrap();
    frr.wait_established(&c.nodes[3].v4, CONVERGE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    frr.wait_established(&c.nodes[3].v6, CONVERGE).unwrap();
    frr.wait_route(&c.nodes[3].pod_cidrs[0], &|_| true, STEP)
        .unwrap();
    eprintln!(
        "peers annotation: FRR learned n4's pod CIDR after {:?}",
        t.elapsed()
    );
    assert_bird_kept(
        &bird,
        &before,
        &before.keys().map(String::as_str).collect::<Vec<_>>(),
    );
    // The routers' own view: n1's sessions to every node, n4's to the nodes and BIRD.
    let others: Vec<IpAddr> = (1..4).flat_map(|j| c.node_addrs(j)).collect();
    c.assert_sessions_kept(&n1_before, &others);
    let mut n4_peers: Vec<IpAddr> = (0..3).flat_map(|j| c.node_addrs(j)).collect();
    n4_peers.extend(bird_addrs);
    c.assert_sessions_kept(&n4_before, &n4_peers);
    std::thread::sleep(Duration::from_millis(1100));
    let frr_before = frr_peer_uptimes(&frr).unwrap();
    let n1_before = c.session_snapshot(0);
    let n4_before = c.session_snapshot(3);

    // 2. n3's ASN changes (without full mesh nodes peer only within their node.asn): n3
    // leaves the mesh, the others drop its pod routes; then it comes back. n3's sessions are
    // concerned; the sessions among n1, n2, n4 and theirs with BIRD and FRR are not.
    let n3_pods: Vec<IpNet> = c.nodes[2].pod_cidrs.iter().map(|s| net(s)).collect();
    c.set_annotation(2, "kube-router.io/node.asn", Some("64513"))
        .unwrap();
    for i in [0, 1, 3] {
        wait_for(
            &format!("{} to drop n3's pod routes", c.nodes[i].name),
            CONVERGE,
            || {
                let have = c.proto17_destinations(i);
                !n3_pods.iter().any(|d| have.contains(d))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", all_routes(&c), c.logs()));
    }
    c.set_annotation(2, "kube-router.io/node.asn", Some("64512"))
        .unwrap();
    converge(&c);
    assert_bird_kept(
        &bird,
        &before,
        &["n1_v4", "n1_v6", "n2_v4", "n2_v6", "n4_v4", "n4_v6"],
    );
    assert_frr_kept(&frr, &frr_before, &c);
    let mut n1_peers: Vec<IpAddr> = [1, 3].iter().flat_map(|&j| c.node_addrs(j)).collect();
    n1_peers.extend(bird_addrs);
    c.assert_sessions_kept(&n1_before, &n1_peers);
    let mut n4_peers: Vec<IpAddr> = [0, 1].iter().flat_map(|&j| c.node_addrs(j)).collect();
    n4_peers.extend(bird_addrs);
    n4_peers.extend(frr_addrs);
    c.assert_sessions_kept(&n4_before, &n4_peers);
    let n4_before = c.session_snapshot(3);

    // 3. Route reflection on n1 (server) and n2 (client): everything still routes, the
    // upstream sessions stay.
    c.set_annotation(0, "kube-router.io/rr.server", Some("7"))
        .unwrap();
    c.set_annotation(1, "kube-router.io/rr.client", Some("7"))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    converge(&c);
    c.wait_all_pods_ping(STEP).unwrap_or_else(|e| panic!("{e}"));
    assert_bird_kept(
        &bird,
        &before,
        &["n1_v4", "n1_v6", "n2_v4", "n2_v6", "n4_v4", "n4_v6"],
    );
    assert_frr_kept(&frr, &frr_before, &c);
    // n4's sessions to n3 (neither changed) and to the upstream routers.
    let mut n4_peers: Vec<IpAddr> = c.node_addrs(2).to_vec();
    n4_peers.extend(bird_addrs);
    n4_peers.extend(frr_addrs);
    c.assert_sessions_kept(&n4_before, &n4_peers);

    // No restart: the same processes throughout.
    for (i, n) in c.nodes.iter().enumerate() {
        assert_eq!(n.router().unwrap().pid(), pids[i]);
        assert!(c.router_running(i), "{}\n{}", n.name, c.logs());
    }
}

/// Bad annotations (a non-numeric ASN, a bad CIDR, `peers` YAML that does not parse, a
/// password that is not base64) each give a Warning Event on their Node naming the
/// annotation, and everything else keeps working.
#[test]
fn bad_annotations_give_warning_events() {
    if !can_run(&["ethtool", "ping"]) {
        return;
    }
    let mut c = RouterCluster::new("router_bad", ClusterOptions::new(5)).unwrap();
    c.start_all(&[]).unwrap();
    converge(&c);
    let bad = [
        (0, "kube-router.io/node.asn", "sixty-four"),
        (
            1,
            "kube-router.io/node.bgp.customimportreject",
            "203.0.113.0/33",
        ),
        (
            2,
            "kube-router.io/peers",
            "- remoteip: [unclosed\n  remoteasn: {",
        ),
        (3, "kube-router.io/peer.ips", BIRD_V4),
        (3, "kube-router.io/peer.asns", "64600"),
        (3, "kube-router.io/peer.passwords", "not base64!!"),
    ];
    for (i, k, v) in bad {
        c.set_annotation(i, k, Some(v)).unwrap();
    }
    for (i, k) in [
        (0, "kube-router.io/node.asn"),
        (1, "kube-router.io/node.bgp.customimportreject"),
        (2, "kube-router.io/peers"),
        (3, "kube-router.io/peer.passwords"),
    ] {
        let name = c.nodes[i].name.clone();
        wait_for(
            &format!("a Warning Event on {name} naming {k}"),
            STEP,
            || {
                c.node_events(&name)
                    .iter()
                    .any(|(t, _, m)| t == "Warning" && m.contains(k))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\nevents: {:?}\n{}", c.node_events(&name), c.logs()));
    }
    // Everything else keeps working.
    std::thread::sleep(Duration::from_secs(1));
    converge(&c);
    c.wait_all_pods_ping(STEP).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..5 {
        assert!(c.router_running(i), "{}", c.logs());
    }
    // n5, untouched, got no Warning.
    assert!(
        !c.node_events("n5").iter().any(|(t, _, _)| t == "Warning"),
        "{:?}",
        c.node_events("n5")
    );
}

/// Waits until no node but `dead` has a route to `dead`'s pod CIDRs; the time it took.
fn wait_routes_gone(c: &RouterCluster, dead: usize, timeout: Duration) -> Duration {
    let t = Instant::now();
    let theirs: Vec<IpNet> = c.nodes[dead].pod_cidrs.iter().map(|s| net(s)).collect();
    for i in (0..c.nodes.len()).filter(|&i| i != dead) {
        wait_for(
            &format!(
                "{} to drop {}'s routes",
                c.nodes[i].name, c.nodes[dead].name
            ),
            timeout,
            || {
                let have = c.proto17_destinations(i);
                !theirs.iter().any(|d| have.contains(d))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", all_routes(c)));
    }
    t.elapsed()
}

/// SIGKILL without graceful restart: the others remove the node's routes within the hold
/// time (3 s).
#[test]
fn sigkill_without_graceful_restart_routes_go_within_hold_time() {
    if !can_run(&["ethtool", "ping"]) {
        return;
    }
    let mut c = RouterCluster::new("router_kill", ClusterOptions::new(3)).unwrap();
    c.common_args = vec!["--bgp-holdtime=3s".into()];
    c.start_all(&[]).unwrap();
    converge(&c);
    c.kill_router(2);
    // The hold time plus the polling and scheduling slack of a loaded machine.
    let took = wait_routes_gone(&c, 2, Duration::from_secs(5));
    eprintln!("routes of the killed node gone after {took:?}");
    assert!(took <= Duration::from_secs(5), "{took:?}");
    // The survivors still route each other.
    let r = c.routes_proto17(0).unwrap();
    assert!(r.contains(&(net(&c.nodes[1].pod_cidrs[0]), Some(ip(&c.nodes[1].v4)))));
}

/// SIGKILL with graceful restart: the others keep the node's routes past the hold time; the
/// restarted router refreshes them; a pod-to-pod ping across the restart loses nothing.
#[test]
fn sigkill_with_graceful_restart_keeps_routes_and_traffic() {
    if !can_run(&["ethtool", "ping"]) {
        return;
    }
    let mut c = RouterCluster::new("router_gr", ClusterOptions::new(3)).unwrap();
    c.common_args = vec![
        "--bgp-holdtime=3s".into(),
        "--bgp-graceful-restart".into(),
        "--bgp-graceful-restart-time=30s".into(),
    ];
    c.start_all(&[]).unwrap();
    converge(&c);
    c.wait_all_pods_ping(STEP).unwrap();
    // 20 pings a second from n1's pod to n3's pod, across the kill and the restart.
    let target = c.nodes[2].pod_v4().to_string();
    let pinger = c.nodes[0]
        .pod
        .as_ref()
        .unwrap()
        .spawn("ping", &["ping", "-n", "-i", "0.05", "-w", "14", &target])
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    c.kill_router(2);
    // Past the hold time the others still hold n3's routes (stale, kept by GR).
    std::thread::sleep(Duration::from_secs(5));
    for i in 0..2 {
        assert!(
            c.has_full_pod_routes(i),
            "{} lost routes during the graceful restart: {:?}\n{}",
            c.nodes[i].name,
            c.routes_proto17(i),
            c.logs()
        );
    }
    c.start_router(2, &[]).unwrap();
    converge(&c);
    // Let the refreshed routes settle (End-of-RIB, stale sweep), then stop and count.
    let done = wait_for("the ping to finish", Duration::from_secs(20), || {
        !pinger.is_running()
    });
    let out = pinger.logs();
    done.unwrap_or_else(|e| panic!("{e}\n{out}"));
    let stats = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {out}"));
    eprintln!("ping across the graceful restart: {stats}");
    assert!(
        stats.contains(" 0% packet loss"),
        "packets lost across the graceful restart: {stats}\n{}",
        c.logs()
    );
    for i in 0..3 {
        assert!(c.has_full_pod_routes(i), "{}", all_routes(&c));
    }
}

/// SIGTERM without graceful restart: the node removes its own proto-17 routes, and the
/// others drop its routes at once (its sessions close with a Cease).
#[test]
fn sigterm_without_graceful_restart_removes_routes() {
    if !can_run(&["ethtool", "ping"]) {
        return;
    }
    let mut c = RouterCluster::new("router_term", ClusterOptions::new(3)).unwrap();
    c.start_all(&[]).unwrap();
    converge(&c);
    // A route of another protocol on the node survives the cleanup.
    c.nodes[2]
        .host
        .exec(&[
            "ip",
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            &c.nodes[0].v4,
        ])
        .unwrap();
    c.stop_router(2);
    let left = routes_with_proto(&c.nodes[2].host, 17).unwrap();
    assert!(left.is_empty(), "n3 left proto-17 routes: {left:?}");
    let other = c.nodes[2]
        .host
        .exec_ok(&["ip", "route", "show", "203.0.113.0/24"])
        .unwrap();
    assert!(!other.trim().is_empty(), "a foreign route was removed");
    let took = wait_routes_gone(&c, 2, Duration::from_secs(5));
    eprintln!("routes of the stopped node gone on the others after {took:?}");
}

/// The upstream routers of the lab start with MD5 and their default routes, with one v4 and
/// one v6 neighbor per node (no routers run: the sessions stay down), and reach the nodes.
#[test]
fn topology_upstream_routers_start() {
    if !can_run(&["ethtool", "ping", "bird", "vtysh"]) {
        return;
    }
    let c = RouterCluster::new("router_topology_up", ClusterOptions::new(2)).unwrap();
    let bird = c
        .start_bird(Some(PASSWORD), |cfg| cfg.static_routes = default_routes())
        .unwrap();
    let frr = c
        .start_frr(Some(PASSWORD), |cfg| cfg.networks = default_routes())
        .unwrap();
    let protocols = bird_protocol_since(&bird).unwrap();
    for n in ["n1_v4", "n1_v6", "n2_v4", "n2_v6"] {
        assert!(protocols.contains_key(n), "{protocols:?}");
    }
    let peers = frr_peer_uptimes(&frr).unwrap();
    for n in &c.nodes {
        for a in [&n.v4, &n.v6] {
            let (state, since) = &peers[a.as_str()];
            assert_ne!(state, "Established");
            assert!(since.is_none() || *since == Some(0), "{peers:?}");
        }
    }
    for n in &c.nodes {
        n.host.wait_ping(BIRD_V4, STEP).unwrap();
        n.host.wait_ping(FRR_V6, STEP).unwrap();
    }
    // Their own default routes are in their RIBs, ready to be announced.
    bird.wait_route("0.0.0.0/0", &|_| true, STEP).unwrap();
    frr.wait_route("::/0", &|_| true, STEP).unwrap();
}

/// The periodic resync (`--injected-routes-sync-period`) repairs proto-17 routes removed or
/// changed behind the router's back.
#[test]
fn resync_repairs_routes_changed_behind_its_back() {
    if !can_run(&["ethtool", "ping"]) {
        return;
    }
    let mut c = RouterCluster::new("router_resync", ClusterOptions::new(3)).unwrap();
    c.common_args = vec!["--injected-routes-sync-period=1s".into()];
    c.start_all(&[]).unwrap();
    converge(&c);
    let (cidr4, cidr6) = (
        c.nodes[1].pod_cidrs[0].clone(),
        c.nodes[1].pod_cidrs[1].clone(),
    );
    let n1 = c.nodes[0].host.clone();
    // Removed by hand.
    n1.exec(&["ip", "route", "del", &cidr4, "proto", "17"])
        .unwrap();
    n1.exec(&["ip", "-6", "route", "del", &cidr6, "proto", "17"])
        .unwrap();
    assert!(!c.has_full_pod_routes(0));
    c.wait_full_mesh_routes(&[0], Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    // Pointed elsewhere by hand.
    n1.exec(&[
        "ip",
        "route",
        "replace",
        &cidr4,
        "via",
        &c.nodes[2].v4,
        "proto",
        "17",
    ])
    .unwrap();
    c.wait_full_mesh_routes(&[0], Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    let r = c.routes_proto17(0).unwrap();
    assert!(
        r.contains(&(net(&cidr4), Some(ip(&c.nodes[1].v4))))
            && !r.contains(&(net(&cidr4), Some(ip(&c.nodes[2].v4)))),
        "{r:?}"
    );
    c.wait_pod_ping(0, c.nodes[1].pod_v4(), STEP).unwrap();
}

/// A router that hangs (SIGSTOP: its TCP connections stay open, nothing is sent) loses its
/// routes on the other nodes when the hold time (3 s) runs out, not before; once it runs
/// again (SIGCONT) the sessions and routes come back.
#[test]
fn frozen_router_routes_go_when_the_hold_time_runs_out() {
    if !can_run(&["ethtool", "ping"]) {
        return;
    }
    let mut c = RouterCluster::new("router_frozen", ClusterOptions::new(3)).unwrap();
    c.common_args = vec!["--bgp-holdtime=3s".into()];
    c.start_all(&[]).unwrap();
    converge(&c);
    let frozen = c.nodes[2].router().unwrap();
    frozen.signal(libc::SIGSTOP);
    let took = wait_routes_gone(&c, 2, Duration::from_secs(8));
    eprintln!("routes of the frozen node gone after {took:?}");
    // Keepalives every second, hold 3 s: gone after at least 2 s (the last keepalive may
    // have been sent just before the stop), well before 8 s.
    assert!(took >= Duration::from_secs(2), "gone too early: {took:?}");
    c.nodes[2].router().unwrap().signal(libc::SIGCONT);
    converge(&c);
}

/// A Node leaving the cluster (its manifest deleted) and joining again: the others drop its
/// routes and then learn them again, without a restart, and their sessions among themselves
/// stay up throughout.
#[test]
fn node_leaving_and_joining_live() {
    if !can_run(&["ethtool", "ping"]) {
        return;
    }
    let mut c = RouterCluster::new("router_join", ClusterOptions::new(4)).unwrap();
    c.start_all(&[]).unwrap();
    converge(&c);
    std::thread::sleep(Duration::from_millis(1100));
    let n1_before = c.session_snapshot(0);
    c.remove_manifest("node-n4.json").unwrap();
    let took = wait_routes_gone(&c, 3, Duration::from_secs(5));
    eprintln!("n4's routes gone {took:?} after its Node was deleted");
    c.write_node(3).unwrap();
    let t = Instant::now();
    converge(&c);
    eprintln!(
        "n4's routes back {:?} after its Node came back",
        t.elapsed()
    );
    let peers: Vec<IpAddr> = (1..3).flat_map(|j| c.node_addrs(j)).collect();
    c.assert_sessions_kept(&n1_before, &peers);
    for i in 0..4 {
        assert!(c.router_running(i), "{}", c.logs());
    }
}

/// Policies towards and from an upstream router: `kube-router.io/node.bgp.communities` and
/// `path-prepend.as`/`.repeat-n` on what a node announces; routes BIRD announces are
/// installed on the nodes (proto 17, via BIRD) except those a node's
/// `node.bgp.customimportreject` names, and never the default route.
#[test]
fn upstream_policies_communities_prepend_and_import_reject() {
    if !can_run(&["ethtool", "ping", "bird"]) {
        return;
    }
    let mut c = RouterCluster::new("router_policies", ClusterOptions::new(3)).unwrap();
    let (ext4, ext6) = ("203.0.113.128/25", "2001:db8:ee::/48");
    let bird = c
        .start_bird(None, |cfg| {
            cfg.static_routes = default_routes();
            cfg.static_routes.push(StaticRoute::new(net(ext4)));
            cfg.static_routes.push(StaticRoute::new(net(ext6)));
        })
        .unwrap();
    c.annotate(2, "kube-router.io/node.bgp.communities", "64512:100");
    c.annotate(2, "kube-router.io/path-prepend.as", "65000");
    c.annotate(2, "kube-router.io/path-prepend.repeat-n", "2");
    c.write_node(2).unwrap();
    c.annotate(0, "kube-router.io/node.bgp.customimportreject", ext4);
    c.write_node(0).unwrap();
    c.common_args = vec![
        format!("--peer-router-ips={BIRD_V4}"),
        format!("--peer-router-asns={BIRD_ASN}"),
    ];
    c.start_all(&[]).unwrap();
    converge(&c);
    let n3 = &c.nodes[2];
    let r = bird
        .wait_route(
            &n3.pod_cidrs[0],
            &|r| r.from_protocol == "n3_v4" && r.communities.contains(&Community::new(64512, 100)),
            STEP,
        )
        .unwrap_or_else(|e| panic!("{e}\n{:?}\n{}", bird.routes(), c.logs()));
    assert_eq!(r.as_path.len(), 3, "{r:?}");
    assert_eq!(
        r.as_path.iter().filter(|a| **a == 65000).count(),
        2,
        "{r:?}"
    );
    assert_eq!(r.as_path[0], CLUSTER_ASN, "{r:?}");
    // n1's routes carry neither.
    let r1 = bird
        .wait_route(&c.nodes[0].pod_cidrs[0], &|_| true, STEP)
        .unwrap();
    assert_eq!(r1.as_path, vec![CLUSTER_ASN]);
    assert!(r1.communities.is_empty(), "{r1:?}");
    // BIRD's routes on the nodes, via BIRD; not on n1 the one it rejects; no default.
    let via4 = Some(ip(BIRD_V4));
    let via6 = Some(ip(BIRD_V6));
    for i in [1, 2] {
        wait_for(
            &format!("{} to install BIRD's routes", c.nodes[i].name),
            STEP,
            || {
                let r = c.routes_proto17(i).unwrap_or_default();
                r.contains(&(net(ext4), via4)) && r.contains(&(net(ext6), via6))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", all_routes(&c)));
    }
    wait_for("n1 to install BIRD's IPv6 route", STEP, || {
        c.routes_proto17(0)
            .unwrap_or_default()
            .contains(&(net(ext6), via6))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", all_routes(&c)));
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..3 {
        let r = c.routes_proto17(i).unwrap();
        assert!(
            !r.iter().any(|(d, _)| d.prefix_len() == 0),
            "{}: {r:?}",
            c.nodes[i].name
        );
        if i == 0 {
            assert!(!r.iter().any(|(d, _)| *d == net(ext4)), "n1: {r:?}");
        }
    }
}
