//! metalnet-speaker in BGP mode, end to end, against routers nobody here wrote (BIRD 2, FRR,
//! GoBGP) in their own namespaces: the demo site (three nodes, router, remote client behind
//! the router), one speaker per node on a shared state directory. Needs root.
//!
//! In MetalLB's BGP mode nothing on the node needs the address for the route; for the remote
//! client's ping to be answered, each node carries the service addresses on `lo` (the test's
//! stand-in for kube-proxy).

use std::time::{Duration, Instant};

use metalnet::testing::{
    Manifest, PeerBuilder, bgp_advertisement, bgp_peer, endpoint_slice, node, pool, service,
};
use metalnet_lab::lab::components;
use metalnet_lab::lab::demo::{NODE_ASN, ROUTER_ASN, ROUTER_SITE_V4, node_v4, node_v6};
use metalnet_lab::lab::l2site::service_yaml;
use metalnet_lab::lab::{
    BgpNeighbor, BgpRouter, Bird, Community, DemoSite, Frr, FrrConfig, Gobgp, GobgpConfig, Lab,
    LargeCommunity, Route, wait_for,
};
use metalnet_lab::{Host, Process, bins};
use serde_json::json;

const NODES: [&str; 3] = ["node1", "node2", "node3"];
const STEP: Duration = Duration::from_secs(20);

/// Three Ready nodes with v4 and v6 InternalIPs.
fn nodes_yaml() -> String {
    NODES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            node(name)
                .label("kubernetes.io/hostname", name)
                .internal_ip(&node_v4(i))
                .internal_ip(&node_v6(i))
                .ready()
                .document()
        })
        .collect()
}

/// The pool every test announces from.
fn pool_yaml() -> String {
    pool("site", ["192.0.2.192/26", "2001:db8:0:1::200/124"]).document()
}

/// A BGPPeer with a 9 s hold time.
fn peer(name: &str, address: &str, my_asn: u32, peer_asn: u32) -> PeerBuilder {
    bgp_peer(name, address, my_asn, peer_asn).hold_time("9s")
}

fn host_cidr(ip: &str) -> String {
    if ip.contains(':') {
        format!("{ip}/128")
    } else {
        format!("{ip}/32")
    }
}

/// The demo site with a state directory; the service addresses on every node's `lo`.
struct Site {
    // Dropped first: stops the processes and deletes the namespaces.
    _lab: Lab,
    demo: DemoSite,
    state: tempfile::TempDir,
}

impl Site {
    fn new(test: &str, vips: &[&str]) -> Site {
        let lab = Lab::new(test).unwrap();
        let demo = DemoSite::build(&lab).unwrap();
        for node in &demo.nodes {
            for vip in vips {
                node.add_addr("lo", &host_cidr(vip)).unwrap();
            }
        }
        let state = tempfile::tempdir().unwrap();
        Site {
            _lab: lab,
            demo,
            state,
        }
    }

    fn node(&self, name: &str) -> &Host {
        self.demo.node(name).unwrap()
    }

    /// Replaces the cluster objects (nodes are always there).
    fn write(&self, objects: &str) {
        let path = self.state.path().join("cluster.yaml");
        let tmp = self.state.path().join(".cluster.yaml.tmp");
        std::fs::write(&tmp, format!("{}{objects}", nodes_yaml())).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }

    fn start(&self, node: &str, process: &str) -> Process {
        let bin = bins::binary("metalnet-speaker").unwrap();
        self.node(node)
            .spawn(
                process,
                &[
                    bin.to_str().unwrap(),
                    "--state-dir",
                    self.state.path().to_str().unwrap(),
                    "--node-name",
                    node,
                    "--gossip",
                    "off",
                    "--metrics-addr",
                    "127.0.0.1:7473",
                    "--log-level",
                    "info,metalnet_speaker=debug",
                ],
            )
            .unwrap()
    }

    fn start_all(&self) -> Vec<Process> {
        NODES.iter().map(|n| self.start(n, "speaker")).collect()
    }

    fn metrics(&self, node: &str) -> String {
        self.node(node)
            .exec_ok(&[
                "curl",
                "-s",
                "--max-time",
                "2",
                "http://127.0.0.1:7473/metrics",
            ])
            .unwrap_or_default()
    }

    fn logs(&self) -> String {
        NODES
            .iter()
            .map(|n| {
                let dir = self.node(n).dir().to_path_buf();
                let mut s = format!("--- {n} ---\n");
                if let Ok(t) = std::fs::read_to_string(dir.join("speaker.err")) {
                    let tail: Vec<&str> = t.lines().rev().take(30).collect();
                    s.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
                    s.push('\n');
                }
                s
            })
            .collect()
    }
}

/// The routes of `prefix` the router holds, by the protocol/peer they came from.
fn routes_of(router: &dyn BgpRouter, prefix: &str) -> Vec<Route> {
    let p: ipnet::IpNet = prefix.parse().unwrap();
    router
        .routes()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.prefix == p)
        .collect()
}

/// Waits until the router holds `prefix` from every one of `from` (protocol names or peer
/// addresses), with `check` true for each; returns them.
fn wait_routes_from(
    site: &Site,
    router: &dyn BgpRouter,
    prefix: &str,
    from: &[String],
    check: &dyn Fn(&Route) -> bool,
) -> Vec<Route> {
    let mut last = Vec::new();
    let ok = wait_for(&format!("{prefix} from {from:?}"), STEP, || {
        last = routes_of(router, prefix);
        from.iter().all(|f| {
            last.iter().any(|r| {
                (&r.from_protocol == f || r.next_hops.iter().any(|h| h.to_string() == *f))
                    && check(r)
            })
        })
    });
    if ok.is_err() {
        panic!(
            "{prefix}: expected routes from {from:?}, router has {last:#?}\n{}",
            site.logs()
        );
    }
    last
}

fn objects_demo(extra: &str) -> String {
    format!(
        "{}{}{}{}{}",
        pool_yaml(),
        peer("router-v4", ROUTER_SITE_V4, NODE_ASN, ROUTER_ASN).document(),
        peer("router-v6", "2001:db8:0:1::1", NODE_ASN, ROUTER_ASN).document(),
        bgp_advertisement("demo")
            .spec("communities", json!(["64513:100", "large:64513:1:2"]))
            .document(),
        extra
    )
}

/// The demo: BIRD as the upstream router (eBGP, v4 and v6 sessions per node) learns the
/// address from all three nodes (ECMP in its kernel table), with the communities, and the
/// remote client behind the router reaches it. Then: eTP Local is announced only from the
/// endpoint's node, a deleted Service is withdrawn at once, SIGTERM withdraws a node's
/// routes, the session comes back after BIRD restarts, status and metrics tell all.
#[test]
fn bird_ecmp_from_three_nodes_and_remote_client_reaches_the_address() {
    let (v4, v6, local) = ("192.0.2.200", "2001:db8:0:1::200", "192.0.2.201");
    let site = Site::new("bgp_bird_demo", &[v4, v6, local]);
    let bird = Bird::start(&site.demo.router, site.demo.router_bird_config()).unwrap();
    site.write(&objects_demo(&format!(
        "{}{}",
        service_yaml("web", &[v4, v6], "Cluster", &NODES),
        service_yaml("local", &[local], "Local", &["node2"]),
    )));
    let speakers = site.start_all();

    for n in NODES {
        for af in ["v4", "v6"] {
            bird.wait_established(&format!("{n}_{af}"), STEP)
                .unwrap_or_else(|e| panic!("{e}\n{}", site.logs()));
        }
    }
    let from = |af: &str| -> Vec<String> { NODES.iter().map(|n| format!("{n}_{af}")).collect() };
    let routes = wait_routes_from(&site, &bird, &format!("{v4}/32"), &from("v4"), &|r| {
        r.as_path == vec![NODE_ASN]
            && r.communities.contains(&Community::new(64513, 100))
            && r.large_communities
                .contains(&LargeCommunity::new(64513, 1, 2))
    });
    for (i, n) in NODES.iter().enumerate() {
        let r = routes
            .iter()
            .find(|r| r.from_protocol == format!("{n}_v4"))
            .unwrap();
        assert_eq!(
            r.next_hops,
            vec![node_v4(i).parse::<std::net::IpAddr>().unwrap()],
            "{r:?}"
        );
    }
    let routes6 = wait_routes_from(&site, &bird, &format!("{v6}/128"), &from("v6"), &|_| true);
    for (i, n) in NODES.iter().enumerate() {
        let r = routes6
            .iter()
            .find(|r| r.from_protocol == format!("{n}_v6"))
            .unwrap();
        assert!(
            r.next_hops.contains(&node_v6(i).parse().unwrap()),
            "next hop of {n}: {r:?}"
        );
    }
    // ECMP in the router's kernel table: one nexthop per node.
    wait_for("an ECMP route with three next hops", STEP, || {
        let out = site
            .demo
            .router
            .exec_ok(&["ip", "route", "show", v4])
            .unwrap_or_default();
        (0..3).all(|i| out.contains(&format!("via {} ", node_v4(i))))
    })
    .unwrap();
    site.demo.remote.wait_ping(v4, STEP).unwrap();
    site.demo.remote.wait_ping(v6, STEP).unwrap();

    // externalTrafficPolicy Local: only node2, which has the endpoint.
    wait_routes_from(
        &site,
        &bird,
        &format!("{local}/32"),
        &["node2_v4".into()],
        &|_| true,
    );
    let from_local: Vec<String> = routes_of(&bird, &format!("{local}/32"))
        .into_iter()
        .map(|r| r.from_protocol)
        .collect();
    assert_eq!(from_local, vec!["node2_v4".to_string()]);

    // Status objects and metrics.
    let status_dir = site
        .state
        .path()
        .join("status/objects/ServiceBGPStatus/metallb-system");
    wait_for(
        "a ServiceBGPStatus per node for web, one for local",
        STEP,
        || {
            let texts: Vec<String> = std::fs::read_dir(&status_dir)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                        .collect()
                })
                .unwrap_or_default();
            let web = texts
                .iter()
                .filter(|t| t.contains("serviceName: web"))
                .count();
            let local = texts
                .iter()
                .filter(|t| t.contains("serviceName: local"))
                .count();
            web == 3 && local == 1 && texts.iter().all(|t| t.contains("router-v4"))
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}",
            std::fs::read_dir(&status_dir).map(|d| d.count())
        )
    });
    wait_for("session metrics", STEP, || {
        let m = site.metrics("node1");
        m.contains("metallb_bgp_session_up{peer=\"192.0.2.1:179\"} 1")
            && m.contains("metallb_bgp_announced_prefixes_total{peer=\"192.0.2.1:179\"} 1")
            && m.contains("metallb_bgp_updates_total{peer=\"192.0.2.1:179\"}")
            && m.contains("metallb_speaker_announced{protocol=\"bgp\",service=\"default/web\",node=\"node1\",ip=\"192.0.2.200\"} 1")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", site.metrics("node1")));

    // Deleting the Service withdraws it at once, from every node.
    site.write(&objects_demo(&service_yaml(
        "local",
        &[local],
        "Local",
        &["node2"],
    )));
    let t = Instant::now();
    bird.wait_no_route(&format!("{v4}/32"), STEP).unwrap();
    bird.wait_no_route(&format!("{v6}/128"), STEP).unwrap();
    eprintln!(
        "deleted Service withdrawn from BIRD after {:?}",
        t.elapsed()
    );

    // The session comes back after BIRD restarts, and the route with it.
    bird.restart().unwrap();
    wait_routes_from(
        &site,
        &bird,
        &format!("{local}/32"),
        &["node2_v4".into()],
        &|_| true,
    );

    // SIGTERM: node2's speaker closes its sessions (Cease) and BIRD drops its routes.
    speakers[1].signal(libc::SIGTERM);
    bird.wait_no_route(&format!("{local}/32"), STEP)
        .unwrap_or_else(|e| panic!("{e}\n{}", site.logs()));
    wait_for("node2's speaker to exit", STEP, || {
        !speakers[1].is_running()
    })
    .unwrap();
    let log = std::fs::read_to_string(site.node("node2").dir().join("speaker.err")).unwrap();
    assert!(log.contains("closing the BGP sessions"), "{log}");
}

/// BIRD's line for the route of `prefix` from `protocol` (`<prefix> unicast [<protocol>
/// <since>] ...`), if it has that route.
fn bird_route_line(bird: &Bird, prefix: &str, protocol: &str) -> Option<String> {
    let out = bird.birdc(&["show", "route", prefix]).ok()?;
    out.lines()
        .find(|l| l.contains(&format!("[{protocol} ")))
        .map(|l| l.trim().to_string())
}

/// Whether BIRD is helping `protocol`'s peer through a graceful restart: it keeps the peer's
/// routes, marked stale, until the restart time runs out or the peer's End-of-RIB.
fn bird_gr_active(bird: &Bird, protocol: &str) -> bool {
    bird.birdc(&["show", "protocols", "all", protocol])
        .is_ok_and(|t| t.contains("Neighbor graceful restart active"))
}

/// Graceful restart (RFC 4724) with BIRD as the helper: whether the speaker dies (SIGKILL)
/// or is stopped (SIGTERM, no Cease since GR was negotiated), BIRD keeps its routes as stale
/// while it is down; the restarted speaker announces them again and its End-of-RIB ends the
/// restart (stale flags cleared) and makes BIRD sweep the rest, so a Service deleted
/// meanwhile is withdrawn then (well before the 120 s restart time).
#[test]
fn bird_graceful_restart_keeps_routes_across_speaker_restarts() {
    let (kept, gone) = ("192.0.2.232/32", "192.0.2.233/32");
    let site = Site::new("bgp_bird_gr", &["192.0.2.232", "192.0.2.233"]);
    let mut cfg = site.demo.router_bird_config();
    for n in &mut cfg.neighbors {
        n.graceful_restart = Some(120);
    }
    let bird = Bird::start(&site.demo.router, cfg).unwrap();
    // Route and state traces in BIRD's log, for the failure messages.
    bird.birdc(&["debug", "node1_v4", "all"]).unwrap();
    let objects = |with_gone: bool| {
        format!(
            "{}{}{}{}{}",
            pool_yaml(),
            peer("router-v4", ROUTER_SITE_V4, NODE_ASN, ROUTER_ASN)
                .spec("enableGracefulRestart", json!(true))
                .document(),
            bgp_advertisement("gr").document(),
            service_yaml("kept", &["192.0.2.232"], "Cluster", &NODES),
            if with_gone {
                service_yaml("gone", &["192.0.2.233"], "Cluster", &NODES)
            } else {
                String::new()
            },
        )
    };
    site.write(&objects(true));
    let proto = "node1_v4";
    let from = [proto.to_string()];
    let mut speaker = site.start("node1", "speaker");
    wait_routes_from(&site, &bird, kept, &from, &|_| true);
    wait_routes_from(&site, &bird, gone, &from, &|_| true);
    wait_for("BIRD to have the End-of-RIB", STEP, || {
        !bird_gr_active(&bird, proto)
    })
    .unwrap();

    for (round, stop) in [("SIGKILL", libc::SIGKILL), ("SIGTERM", libc::SIGTERM)] {
        let context = |speaker: &Process| {
            format!(
                "{round}\n{}\n--- current speaker ---\n{}\n--- BIRD ---\n{}",
                site.logs(),
                speaker.logs(),
                bird.logs()
            )
        };
        speaker.signal(stop);
        wait_for("the speaker to exit", STEP, || !speaker.is_running()).unwrap();
        wait_for("BIRD to see the session go", STEP, || {
            !bird.is_established(proto).unwrap_or(true)
        })
        .unwrap_or_else(|e| panic!("{e}: {}", context(&speaker)));
        // Down, yet BIRD keeps the routes (stale) and helps the restart.
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            bird_gr_active(&bird, proto),
            "no graceful restart: {}",
            context(&speaker)
        );
        assert!(
            bird_route_line(&bird, kept, proto).is_some(),
            "{}",
            context(&speaker)
        );
        if round == "SIGKILL" {
            assert!(bird_route_line(&bird, gone, proto).is_some());
            site.write(&objects(false));
        }
        speaker = site.start("node1", &format!("speaker-after-{round}"));
        bird.wait_established(proto, STEP)
            .unwrap_or_else(|e| panic!("{e}: {}", context(&speaker)));
        // End-of-RIB: the restart is over (no stale route left) ...
        wait_for("BIRD to end the graceful restart", STEP, || {
            !bird_gr_active(&bird, proto)
        })
        .unwrap_or_else(|e| panic!("{e}: {}", context(&speaker)));
        assert!(
            bird_route_line(&bird, kept, proto).is_some(),
            "{}",
            context(&speaker)
        );
        // ... and the Service deleted while the speaker was down is swept.
        bird.wait_no_route(gone, STEP)
            .unwrap_or_else(|e| panic!("{e}: {}", context(&speaker)));
    }
    let log = std::fs::read_to_string(speaker.stderr_path()).unwrap_or_default();
    assert!(!log.contains("sending BGP NOTIFICATION"), "{log}");
    // BIRD's route trace: the kept route was refreshed, never withdrawn (no flap), and the
    // deleted Service's route went once, in the sweep.
    let trace = bird.logs();
    let lines = |prefix: &str, what: &str| {
        trace
            .lines()
            .filter(|l| l.contains(prefix) && l.contains(what))
            .count()
    };
    assert_eq!(lines(kept, "removed"), 0, "{trace}");
    assert_eq!(
        lines(kept, "ignored"),
        2,
        "refreshed once per restart: {trace}"
    );
    assert_eq!(lines(gone, "removed"), 1, "{trace}");
    assert_eq!(lines(proto, "graceful restart done"), 2, "{trace}");
}

/// FRR as an iBGP route reflector-less peer with TCP MD5: the password comes from a
/// `kubernetes.io/basic-auth` Secret; LOCAL_PREF is sent (iBGP); a node whose router-side
/// password differs never gets a session, fails cleanly, and no password shows in logs or
/// metrics.
#[test]
fn frr_ibgp_with_md5_local_pref_and_a_wrong_password() {
    let vip = "192.0.2.210";
    let site = Site::new("bgp_frr_ibgp", &[vip]);
    let mut cfg = FrrConfig::new(ROUTER_SITE_V4.parse().unwrap(), NODE_ASN);
    for i in 0..3 {
        let mut n = BgpNeighbor::new(node_v4(i).parse().unwrap(), NODE_ASN).passive();
        n.ipv6 = false;
        n.hold_time = Some(9);
        n.password = Some(if i == 2 { "wrong-one" } else { "s3cr3t-md5" }.into());
        cfg.neighbors.push(n);
    }
    let frr = Frr::start(&site.demo.router, cfg).unwrap();
    let secret = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: bgp-md5, namespace: metallb-system}\n\
                  type: kubernetes.io/basic-auth\ndata: {password: czNjcjN0LW1kNQ==}\n";
    site.write(&format!(
        "{}{}{}{}{}",
        pool_yaml(),
        secret,
        peer("frr", ROUTER_SITE_V4, NODE_ASN, NODE_ASN)
            .spec(
                "passwordSecret",
                json!({"name": "bgp-md5", "namespace": "metallb-system"})
            )
            .document(),
        bgp_advertisement("pref")
            .spec("localPref", json!(250))
            .spec("communities", json!(["64513:250"]))
            .document(),
        service_yaml("web", &[vip], "Cluster", &NODES),
    ));
    let _speakers = site.start_all();
    let good: Vec<String> = (0..2).map(node_v4).collect();
    for n in &good {
        frr.wait_established(n, STEP)
            .unwrap_or_else(|e| panic!("{e}\n{}", site.logs()));
    }
    let routes = wait_routes_from(&site, &frr, &format!("{vip}/32"), &good, &|r| {
        r.local_pref == Some(250)
            && r.as_path.is_empty()
            && r.communities.contains(&Community::new(64513, 250))
    });
    assert!(
        routes
            .iter()
            .all(|r| !r.next_hops.contains(&node_v4(2).parse().unwrap())),
        "node3 has the wrong password: {routes:?}"
    );
    // node3 keeps failing, cleanly: no session, the metric says so, no secret anywhere.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!frr.is_established(&node_v4(2)).unwrap());
    let m = site.metrics("node3");
    assert!(
        m.contains("metallb_bgp_session_up{peer=\"192.0.2.1:179\"} 0"),
        "{m}"
    );
    assert!(site.node("node3").exec_ok(&["true"]).is_ok());
    for n in NODES {
        let log = std::fs::read_to_string(site.node(n).dir().join("speaker.err")).unwrap();
        assert!(!log.contains("s3cr3t"), "password in the log of {n}");
        assert!(!site.metrics(n).contains("s3cr3t"));
    }
    let status: String = walk_text(&site.state.path().join("status"));
    assert!(!status.contains("s3cr3t"), "password in a status object");

    // FRR's bgpd restarts (Cease to us, then nothing listening for a while): the sessions
    // come back with the reconnect backoff and FRR has the route from both nodes again.
    let t = Instant::now();
    frr.restart()
        .unwrap_or_else(|e| panic!("{e}\n{}", frr.logs()));
    wait_routes_from(&site, &frr, &format!("{vip}/32"), &good, &|r| {
        r.local_pref == Some(250)
    });
    eprintln!(
        "routes back in FRR {:?} after its restart began",
        t.elapsed()
    );
}

/// Every file's text under `dir`, concatenated.
fn walk_text(dir: &std::path::Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push_str(&walk_text(&p));
            } else if let Ok(t) = std::fs::read_to_string(&p) {
                out.push_str(&t);
            }
        }
    }
    out
}

/// `dynamicASN` instead of `peerASN`, against FRR over eBGP: `external` takes FRR's AS from
/// its OPEN and announces the route; a BGPPeer saying `internal` for the same (eBGP) router
/// gets no session, the speaker answering FRR's OPEN with Bad Peer AS.
#[test]
fn frr_dynamic_asn_external_and_a_wrong_kind() {
    let vip = "192.0.2.215";
    let site = Site::new("bgp_frr_dynasn", &[vip]);
    let mut cfg = FrrConfig::new(ROUTER_SITE_V4.parse().unwrap(), ROUTER_ASN);
    for i in 0..3 {
        let mut n = BgpNeighbor::new(node_v4(i).parse().unwrap(), NODE_ASN).passive();
        n.ipv6 = false;
        n.hold_time = Some(9);
        cfg.neighbors.push(n);
    }
    let frr = Frr::start(&site.demo.router, cfg).unwrap();
    let on = |nodes: &[&str]| {
        json!([{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": nodes}
        ]}])
    };
    site.write(&format!(
        "{}{}{}{}{}",
        pool_yaml(),
        peer("frr-ext", ROUTER_SITE_V4, NODE_ASN, 0)
            .spec("dynamicASN", json!("external"))
            .spec("nodeSelectors", on(&["node1", "node2"]))
            .document(),
        peer("frr-int", ROUTER_SITE_V4, NODE_ASN, 0)
            .spec("dynamicASN", json!("internal"))
            .spec("nodeSelectors", on(&["node3"]))
            .document(),
        bgp_advertisement("dyn").document(),
        service_yaml("web", &[vip], "Cluster", &NODES),
    ));
    let _speakers = site.start_all();
    let good: Vec<String> = (0..2).map(node_v4).collect();
    wait_routes_from(&site, &frr, &format!("{vip}/32"), &good, &|r| {
        r.as_path == vec![NODE_ASN]
    });
    let log3 = site.node("node3").dir().join("speaker.err");
    wait_for("node3 to refuse FRR's AS", STEP, || {
        std::fs::read_to_string(&log3).is_ok_and(|l| l.contains("bad peer AS"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", site.logs()));
    assert!(!frr.is_established(&node_v4(2)).unwrap());
    assert!(
        routes_of(&frr, &format!("{vip}/32"))
            .iter()
            .all(|r| !r.next_hops.contains(&node_v4(2).parse().unwrap())),
        "node3 must not have a session"
    );
}

/// GoBGP as the upstream router over eBGP, one IPv4 and one IPv6 session per node, with
/// aggregation: both addresses are announced as the aggregates (/27, /124) from all nodes,
/// next hops the nodes' addresses of each family; withdrawn when the Service goes.
#[test]
fn gobgp_ebgp_v4_and_v6_with_aggregation() {
    let (v4, v6) = ("192.0.2.220", "2001:db8:0:1::20a");
    let site = Site::new("bgp_gobgp", &[v4, v6]);
    let mut cfg = GobgpConfig::new(ROUTER_SITE_V4.parse().unwrap(), ROUTER_ASN);
    for i in 0..3 {
        for (is_v4, addr) in [(true, node_v4(i)), (false, node_v6(i))] {
            let mut n = BgpNeighbor::new(addr.parse().unwrap(), NODE_ASN).passive();
            n.ipv4 = is_v4;
            n.ipv6 = !is_v4;
            cfg.neighbors.push(n);
        }
    }
    let gobgp = Gobgp::start(&site.demo.router, cfg).unwrap();
    let objects = |with_service: bool| {
        format!(
            "{}{}{}{}{}",
            pool_yaml(),
            peer("gobgp-v4", ROUTER_SITE_V4, NODE_ASN, ROUTER_ASN).document(),
            peer("gobgp-v6", "2001:db8:0:1::1", NODE_ASN, ROUTER_ASN).document(),
            bgp_advertisement("agg")
                .spec("aggregationLength", json!(27))
                .spec("aggregationLengthV6", json!(124))
                .spec("communities", json!(["64513:7"]))
                .document(),
            if with_service {
                service_yaml("web", &[v4, v6], "Cluster", &NODES)
            } else {
                String::new()
            },
        )
    };
    site.write(&objects(true));
    let _speakers = site.start_all();
    let from4: Vec<String> = (0..3).map(node_v4).collect();
    let from6: Vec<String> = (0..3).map(node_v6).collect();
    wait_routes_from(&site, &gobgp, "192.0.2.192/27", &from4, &|r| {
        r.as_path == vec![NODE_ASN] && r.communities.contains(&Community::new(64513, 7))
    });
    wait_routes_from(&site, &gobgp, "2001:db8:0:1::200/124", &from6, &|r| {
        r.as_path == vec![NODE_ASN]
    });

    // gobgpd restarts with an empty RIB: every session comes back and brings the routes.
    let t = Instant::now();
    gobgp
        .restart()
        .unwrap_or_else(|e| panic!("{e}\n{}", gobgp.logs()));
    wait_routes_from(&site, &gobgp, "192.0.2.192/27", &from4, &|r| {
        r.communities.contains(&Community::new(64513, 7))
    });
    wait_routes_from(&site, &gobgp, "2001:db8:0:1::200/124", &from6, &|_| true);
    eprintln!(
        "routes back in GoBGP {:?} after its restart began",
        t.elapsed()
    );

    site.write(&objects(false));
    gobgp.wait_no_route("192.0.2.192/27", STEP).unwrap();
    gobgp.wait_no_route("2001:db8:0:1::200/124", STEP).unwrap();
}

/// The "done when": the demo (controller and speakers as `components` starts them,
/// the router's BIRD as the demo configures it) — the router learns the address the
/// controller assigned from all three nodes, and the remote client reaches it through it.
#[test]
fn demo_router_learns_the_assigned_address_from_all_three_nodes() {
    let lab = Lab::new("bgp_demo").unwrap();
    let demo = DemoSite::build(&lab).unwrap();
    let state = tempfile::tempdir().unwrap();
    let bird = Bird::start(&demo.router, demo.router_bird_config()).unwrap();
    bins::binary("metalnet-controller").unwrap();
    bins::binary("metalnet-vxlan").unwrap();
    let speaker = bins::binary("metalnet-speaker").unwrap();
    let bin_dir = speaker.parent().unwrap();
    let components = components::start(&lab, &demo, state.path(), bin_dir).unwrap();
    let ips = components::wait_service_ingress(state.path(), "demo", "web", STEP).unwrap();
    let ip = &ips[0];
    components::expose_on_nodes(&demo, ip).unwrap();
    for (i, n) in NODES.iter().enumerate() {
        let proto = format!("{n}_v4");
        let hop: std::net::IpAddr = node_v4(i).parse().unwrap();
        bird.wait_route(
            &host_cidr(ip),
            &|r| r.from_protocol == proto && r.next_hops == vec![hop],
            STEP,
        )
        .unwrap_or_else(|e| {
            let logs: String = demo
                .nodes
                .iter()
                .map(|n| {
                    std::fs::read_to_string(n.dir().join("metalnet-speaker.err"))
                        .unwrap_or_default()
                })
                .collect();
            panic!("{e}\n{logs}")
        });
    }
    demo.remote.wait_ping(ip, STEP).unwrap();
    components.stop();
}

// ---------------------------------------------------------------------------------------
// Benchmark (not a timed test): run with
//   cargo test -p metalnet-lab --test speaker_bgp -- --ignored --nocapture bench_
// SPEAKER_BIN=/path/to/metalnet-speaker uses another build (e.g. `cargo build --release -p
// metalnet-speaker`); BENCH_ROUTES changes the count (default 10000).

/// An MRT TABLE_DUMP_V2 file (RFC 6396) with one IPv6 /128 route per address, for
/// `gobgp mrt inject global FILE COUNT`.
fn mrt_v6(prefixes: &[std::net::Ipv6Addr], next_hop: std::net::Ipv6Addr) -> Vec<u8> {
    fn record(out: &mut Vec<u8>, subtype: u16, body: &[u8]) {
        out.extend(0u32.to_be_bytes());
        out.extend(13u16.to_be_bytes()); // TABLE_DUMP_V2
        out.extend(subtype.to_be_bytes());
        out.extend((body.len() as u32).to_be_bytes());
        out.extend(body);
    }
    let mut out = Vec::new();
    let mut b = Vec::new();
    b.extend([192, 0, 2, 100]); // collector BGP ID
    b.extend(0u16.to_be_bytes()); // view name length
    b.extend(1u16.to_be_bytes()); // peer count
    b.push(0b11); // IPv6 address, 4-octet AS
    b.extend([192, 0, 2, 100]);
    b.extend(next_hop.octets());
    b.extend(64514u32.to_be_bytes());
    record(&mut out, 1, &b); // PEER_INDEX_TABLE
    for (seq, p) in prefixes.iter().enumerate() {
        let mut b = Vec::new();
        b.extend((seq as u32).to_be_bytes());
        b.push(128);
        b.extend(p.octets());
        b.extend(1u16.to_be_bytes()); // entry count
        b.extend(0u16.to_be_bytes()); // peer index
        b.extend(0u32.to_be_bytes()); // originated time
        // ORIGIN IGP; AS_PATH [64514] (4-octet); MP_REACH_NLRI in full (GoBGP does not take
        // RFC 6396's abbreviated form).
        let mut attrs = vec![0x40, 1, 1, 0, 0x40, 2, 6, 2, 1];
        attrs.extend(64514u32.to_be_bytes());
        let mut mp = vec![0, 2, 1, 16];
        mp.extend(next_hop.octets());
        mp.extend([0, 128]);
        mp.extend(p.octets());
        attrs.extend([0x80, 14, mp.len() as u8]);
        attrs.extend(mp);
        b.extend((attrs.len() as u16).to_be_bytes());
        b.extend(attrs);
        record(&mut out, 4, &b); // RIB_IPV6_UNICAST
    }
    out
}

/// Routes BIRD holds from `protocol` (`show route protocol P count`).
fn bird_count(bird: &Bird, protocol: &str) -> usize {
    bird.birdc(&["show", "route", "protocol", protocol, "count"])
        .ok()
        .and_then(|out| {
            out.lines()
                .find(|l| l.contains("routes"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Polls until BIRD's session `protocol` is Established and then holds `n` routes from it;
/// returns (time to Established, time to all routes) from `t0`.
fn time_until_all(bird: &Bird, protocol: &str, n: usize, t0: Instant) -> (Duration, Duration) {
    let deadline = t0 + Duration::from_secs(300);
    let mut established = None;
    loop {
        if established.is_none() && bird.is_established(protocol).unwrap_or(false) {
            established = Some(t0.elapsed());
        }
        if established.is_some() && bird_count(bird, protocol) >= n {
            return (established.unwrap_or_default(), t0.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "{protocol}: {} of {n} routes after 300 s",
            bird_count(bird, protocol)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn bench_service(i: usize, ip: &std::net::Ipv6Addr) -> String {
    let name = format!("s{i}");
    let slice = endpoint_slice(&name).address_type("IPv6").endpoint_at(
        "2001:db8:ff::1",
        "node1",
        Some(true),
    );
    service(&name).ingress([ip.to_string()]).document() + &slice.document()
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
fn bench_announce_10000_routes_to_bird_vs_gobgp() {
    let n: usize = std::env::var("BENCH_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let base: u128 = "2001:db8:100::"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .into();
    let addrs: Vec<std::net::Ipv6Addr> = (0..n as u128).map(|i| (base + i).into()).collect();

    let lab = Lab::new("bgp_bench").unwrap();
    let demo = DemoSite::build(&lab).unwrap();
    let mut bird_cfg =
        metalnet_lab::lab::BirdConfig::new(ROUTER_SITE_V4.parse().unwrap(), ROUTER_ASN);
    for (name, addr, asn) in [
        ("speaker", node_v6(0), NODE_ASN),
        ("gobgp", "2001:db8:0:1::100".to_string(), 64514),
    ] {
        let mut nb = BgpNeighbor::new(addr.parse().unwrap(), asn)
            .named(name)
            .passive();
        nb.ipv4 = false;
        nb.local_address = Some("2001:db8:0:1::1".parse().unwrap());
        bird_cfg.neighbors.push(nb);
    }
    let bird = Bird::start(&demo.router, bird_cfg).unwrap();

    // GoBGP: the routes go into its RIB while its session is administratively down.
    let mut g = GobgpConfig::new("192.0.2.100".parse().unwrap(), 64514);
    g.listen_port = Some(-1);
    let mut nb = BgpNeighbor::new("2001:db8:0:1::1".parse().unwrap(), ROUTER_ASN);
    nb.ipv4 = false;
    g.neighbors.push(nb);
    let gobgp = Gobgp::start(&demo.client, g).unwrap();
    bird.wait_established("gobgp", STEP).unwrap();
    gobgp
        .cli(&["neighbor", "2001:db8:0:1::1", "disable"])
        .unwrap();
    wait_for("GoBGP session down", STEP, || {
        !bird.is_established("gobgp").unwrap_or(true)
    })
    .unwrap();
    let mrt = lab.dir().join("bench.mrt");
    // `gobgp mrt inject` loses the last few hundred records of a dump: pad it with
    // repeats of the first route, which change nothing when they arrive.
    let mut padded = addrs.clone();
    padded.extend(std::iter::repeat_n(addrs[0], 2000));
    std::fs::write(&mrt, mrt_v6(&padded, "2001:db8:0:1::100".parse().unwrap())).unwrap();
    gobgp
        .cli(&[
            "mrt",
            "inject",
            "global",
            mrt.to_str().unwrap(),
            &(padded.len() + 1).to_string(),
        ])
        .unwrap();
    wait_for("GoBGP to hold the routes", STEP, || {
        gobgp
            .cli(&["global", "rib", "-a", "ipv6", "summary"])
            .is_ok_and(|s| s.contains(&format!("Destination: {n},")))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}",
            gobgp.cli(&["global", "rib", "-a", "ipv6", "summary"])
        )
    });
    let t0 = Instant::now();
    gobgp
        .cli(&["neighbor", "2001:db8:0:1::1", "enable"])
        .unwrap();
    let (g_est, g_all) = time_until_all(&bird, "gobgp", n, t0);

    // metalnet-speaker: the Services are loaded; the BGPPeer appears at t0.
    let state = tempfile::tempdir().unwrap();
    let mut objects = nodes_yaml();
    objects.push_str(&pool("bench", ["2001:db8:100::/112"]).document());
    objects.push_str(&bgp_advertisement("bench").document());
    for (i, a) in addrs.iter().enumerate() {
        objects.push_str(&bench_service(i, a));
    }
    std::fs::write(state.path().join("services.yaml"), objects).unwrap();
    let bin = std::env::var("SPEAKER_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| bins::binary("metalnet-speaker").unwrap());
    let speaker = demo.nodes[0]
        .spawn(
            "speaker",
            &[
                bin.to_str().unwrap(),
                "--state-dir",
                state.path().to_str().unwrap(),
                "--node-name",
                "node1",
                "--gossip",
                "off",
                "--log-level",
                "info,metalnet_speaker::bgp=debug",
            ],
        )
        .unwrap();
    // Let it load and plan the Services (its status writes settle down too).
    std::thread::sleep(Duration::from_secs(10));
    let peer_file = state.path().join("peer.yaml");
    let tmp = state.path().join(".peer.tmp");
    std::fs::write(
        &tmp,
        peer("router", "2001:db8:0:1::1", NODE_ASN, ROUTER_ASN).document(),
    )
    .unwrap();
    let t0 = Instant::now();
    std::fs::rename(&tmp, &peer_file).unwrap();
    let (s_est, s_all) = time_until_all(&bird, "speaker", n, t0);

    // Latency: a new Service with its address, until the route is in BIRD's table.
    let mut latencies = Vec::new();
    for k in 0..10usize {
        let ip: std::net::Ipv6Addr = (base + 0xf000 + k as u128).into();
        let file = state.path().join(format!("new{k}.yaml"));
        let tmp = state.path().join(format!(".new{k}.tmp"));
        std::fs::write(&tmp, bench_service(100_000 + k, &ip)).unwrap();
        let t0 = Instant::now();
        std::fs::rename(&tmp, &file).unwrap();
        let want = format!("{ip}/128");
        loop {
            let out = bird.birdc(&["show", "route", &want]).unwrap_or_default();
            if out.contains(&want) {
                latencies.push(t0.elapsed());
                break;
            }
            assert!(
                t0.elapsed() < STEP,
                "{want} not in BIRD\n{}",
                speaker.logs()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    latencies.sort();
    let transfer = |est: Duration, all: Duration| all.saturating_sub(est);
    eprintln!("BENCH routes={n}");
    eprintln!(
        "BENCH gobgp:   established after {g_est:?}, all routes in BIRD after {g_all:?} (transfer {:?})",
        transfer(g_est, g_all)
    );
    eprintln!(
        "BENCH speaker: established after {s_est:?}, all routes in BIRD after {s_all:?} (transfer {:?})",
        transfer(s_est, s_all)
    );
    eprintln!(
        "BENCH ratio speaker/gobgp: total {:.2}, transfer {:.2}",
        s_all.as_secs_f64() / g_all.as_secs_f64(),
        transfer(s_est, s_all).as_secs_f64() / transfer(g_est, g_all).as_secs_f64().max(1e-6)
    );
    eprintln!(
        "BENCH Service address -> route in BIRD: min {:?}, median {:?}, max {:?} (with {n} announced; birdc polled every ms)",
        latencies[0],
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    let log = speaker.logs();
    let reconciles: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("BGP reconcile"))
        .collect();
    eprintln!(
        "BENCH last BGP reconcile rounds:\n{}",
        reconciles[reconciles.len().saturating_sub(12)..].join("\n")
    );
    drop(speaker);
}
