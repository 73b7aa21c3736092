//! Tests of the lab itself. They need root (network namespaces) and the BIRD, FRR and GoBGP
//! binaries; every test builds its own lab, so they run in parallel.

use metalnet_lab::lab::{
    BgpNeighbor, BgpRouter, Bird, BirdConfig, Community, DemoSite, Frr, FrrConfig, Gobgp,
    GobgpConfig, Lab, LargeCommunity, StaticRoute, demo, wait_for,
};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

const SESSION_TIMEOUT: Duration = Duration::from_secs(30);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Two hosts on one switch with v4 and v6 addresses.
fn two_hosts(lab: &Lab) -> (metalnet_lab::Host, metalnet_lab::Host) {
    let sw = lab.switch("sw").unwrap();
    let a = lab.host("a").unwrap();
    let b = lab.host("b").unwrap();
    lab.connect(&a, &sw, "eth0").unwrap();
    lab.connect(&b, &sw, "eth0").unwrap();
    a.add_addr("eth0", "192.0.2.11/24").unwrap();
    a.add_addr("eth0", "2001:db8:0:1::11/64").unwrap();
    b.add_addr("eth0", "192.0.2.1/24").unwrap();
    b.add_addr("eth0", "2001:db8:0:1::1/64").unwrap();
    (a, b)
}

#[test]
fn hosts_on_a_switch_ping_v4_and_v6() {
    let lab = Lab::new("hosts_on_a_switch_ping").unwrap();
    let (a, b) = two_hosts(&lab);
    a.wait_ping("192.0.2.1", Duration::from_secs(5)).unwrap();
    a.wait_ping("2001:db8:0:1::1", Duration::from_secs(5))
        .unwrap();
    b.wait_ping("192.0.2.11", Duration::from_secs(5)).unwrap();
    assert_eq!(a.mac("eth0").unwrap().len(), 17);
    assert!(!a.ping("192.0.2.99"), "nobody has .99");
    // Point-to-point links work as well.
    let c = lab.host("c").unwrap();
    lab.wire(&a, "eth1", &c, "eth1").unwrap();
    a.add_addr("eth1", "198.51.100.1/30").unwrap();
    c.add_addr("eth1", "198.51.100.2/30").unwrap();
    c.wait_ping("198.51.100.1", Duration::from_secs(5)).unwrap();
    // Nothing of the lab is visible in the root namespace.
    let root_links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    let root_links = String::from_utf8_lossy(&root_links.stdout);
    assert!(!root_links.contains("a-eth0"), "{root_links}");
}

#[test]
fn process_is_spawned_logged_and_stopped() {
    let lab = Lab::new("process_spawn").unwrap();
    let h = lab.host("h").unwrap();
    let p = h
        .spawn_env(
            "talker",
            &[
                "sh",
                "-c",
                "echo hello $MNL_GREETING; echo oops >&2; exec sleep 60",
            ],
            &[("MNL_GREETING", "lab")],
        )
        .unwrap();
    wait_for("talker output", Duration::from_secs(5), || {
        p.logs().contains("hello lab") && p.logs().contains("oops")
    })
    .unwrap();
    assert!(p.is_running());
    p.stop();
    assert!(!p.is_running());
    // A process that ignores SIGTERM is killed after the timeout.
    let stubborn = h
        .spawn(
            "stubborn",
            &["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stubborn.stop_within(Duration::from_millis(300));
    assert!(!stubborn.is_running());
    // exec reports failures with stderr.
    let err = h
        .exec(&["sh", "-c", "echo broken >&2; exit 3"])
        .unwrap_err();
    assert!(err.to_string().contains("broken"), "{err}");
    assert_eq!(h.exec_ok(&["echo", "hi"]).unwrap().trim(), "hi");
    let started = std::time::Instant::now();
    assert!(
        h.exec_timeout(&["sleep", "30"], Duration::from_millis(300))
            .is_err()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn panicking_test_leaves_nothing_behind() {
    let mut seen = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new("panicking").unwrap();
        let h = lab.host("h").unwrap();
        let sw = lab.switch("sw").unwrap();
        lab.connect(&h, &sw, "eth0").unwrap();
        // A process the lab did not start itself (double fork) is found via `ip netns pids`.
        h.exec(&["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 &"])
            .unwrap();
        let _p = h.spawn("sleeper", &["sleep", "300"]).unwrap();
        seen = lab.namespaces();
        seen.push(lab.dir().display().to_string());
        panic!("test failure inside the lab");
    }));
    assert!(result.is_err());
    assert_eq!(seen.len(), 3);
    for ns in &seen[..2] {
        assert!(!netns_exists(ns), "namespace {ns} left behind");
    }
    assert!(!Path::new(&seen[2]).exists(), "lab dir left behind");
}

#[test]
fn bird_and_gobgp_exchange_routes() {
    let lab = Lab::new("bird_gobgp").unwrap();
    let (node, router) = two_hosts(&lab);

    let mut bird_cfg = BirdConfig::new("192.0.2.1".parse().unwrap(), 64512);
    // GoBGP is slow (~10 s) to connect as the active side: let BIRD connect.
    bird_cfg
        .neighbors
        .push(BgpNeighbor::new(ip("192.0.2.11"), 64513).named("gob"));
    let mut st = StaticRoute::new("203.0.113.9/32".parse().unwrap());
    st.communities.push(Community::new(64512, 5));
    bird_cfg.static_routes.push(st);
    bird_cfg.kernel_export = true;
    let bird = Bird::start(&router, bird_cfg).unwrap();

    let mut gob_cfg = GobgpConfig::new("192.0.2.11".parse().unwrap(), 64513);
    gob_cfg
        .neighbors
        .push(BgpNeighbor::new(ip("192.0.2.1"), 64512).passive());
    let gobgp = Gobgp::start(&node, gob_cfg).unwrap();

    bird.wait_established("gob", SESSION_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\nbird: {}\ngobgp: {}", bird.logs(), gobgp.logs()));
    gobgp
        .wait_established("192.0.2.1", SESSION_TIMEOUT)
        .unwrap();

    // GoBGP → BIRD, typed, with the node as next hop.
    let mut announced = StaticRoute::new("203.0.113.5/32".parse().unwrap());
    announced.communities.push(Community::new(64513, 7));
    announced
        .large_communities
        .push(LargeCommunity::new(64513, 1, 2));
    gobgp.announce(&announced).unwrap();
    let r = bird
        .wait_route("203.0.113.5/32", &|_| true, Duration::from_secs(10))
        .unwrap();
    assert_eq!(r.next_hops, vec![ip("192.0.2.11")]);
    assert_eq!(r.as_path, vec![64513]);
    assert_eq!(r.communities, vec![Community::new(64513, 7)]);
    assert_eq!(r.large_communities, vec![LargeCommunity::new(64513, 1, 2)]);
    assert_eq!(r.from_protocol, "gob");
    assert!(r.best);
    // kernel_export put it into the router's kernel table.
    wait_for(
        "kernel route on the router",
        Duration::from_secs(10),
        || {
            router
                .exec_ok(&["ip", "route", "show", "203.0.113.5"])
                .is_ok_and(|o| o.contains("via 192.0.2.11"))
        },
    )
    .unwrap();

    // BIRD → GoBGP: the static route with the router as next hop.
    let r = gobgp
        .wait_route("203.0.113.9/32", &|_| true, Duration::from_secs(10))
        .unwrap();
    assert_eq!(r.next_hops, vec![ip("192.0.2.1")]);
    assert_eq!(r.as_path, vec![64512]);
    assert_eq!(r.communities, vec![Community::new(64512, 5)]);

    gobgp.withdraw("203.0.113.5/32").unwrap();
    bird.wait_no_route("203.0.113.5/32", Duration::from_secs(10))
        .unwrap();

    // Reconfiguring BIRD adds a route; restarting it re-establishes the session.
    let mut cfg = bird.current_config();
    cfg.static_routes
        .push(StaticRoute::new("203.0.113.64/26".parse().unwrap()));
    bird.reconfigure(cfg).unwrap();
    gobgp
        .wait_route(
            "203.0.113.64/26",
            &|r| r.next_hops == [ip("192.0.2.1")],
            Duration::from_secs(10),
        )
        .unwrap();
    bird.restart().unwrap();
    bird.wait_established("gob", SESSION_TIMEOUT).unwrap();
}

#[test]
fn bird_and_frr_exchange_routes() {
    let lab = Lab::new("bird_frr").unwrap();
    let (node, router) = two_hosts(&lab);

    let mut bird_cfg = BirdConfig::new("192.0.2.1".parse().unwrap(), 64512);
    bird_cfg.neighbors.push(
        BgpNeighbor::new(ip("192.0.2.11"), 64513)
            .named("frr")
            .passive(),
    );
    let mut st = StaticRoute::new("203.0.113.9/32".parse().unwrap());
    st.large_communities.push(LargeCommunity::new(64512, 1, 1));
    bird_cfg.static_routes.push(st);
    let bird = Bird::start(&router, bird_cfg).unwrap();

    let mut frr_cfg = FrrConfig::new("192.0.2.11".parse().unwrap(), 64513);
    let mut n = BgpNeighbor::new(ip("192.0.2.1"), 64512);
    n.ipv6 = false;
    frr_cfg.neighbors.push(n);
    let mut network = StaticRoute::new("203.0.113.7/32".parse().unwrap());
    network.communities.push(Community::new(64513, 9));
    network
        .large_communities
        .push(LargeCommunity::new(64513, 2, 3));
    frr_cfg.networks.push(network);
    let frr = Frr::start(&node, frr_cfg).unwrap();

    bird.wait_established("frr", SESSION_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\nbird: {}\nfrr: {}", bird.logs(), frr.logs()));
    frr.wait_established("192.0.2.1", SESSION_TIMEOUT).unwrap();

    let r = bird
        .wait_route("203.0.113.7/32", &|_| true, Duration::from_secs(10))
        .unwrap();
    assert_eq!(r.next_hops, vec![ip("192.0.2.11")]);
    assert_eq!(r.as_path, vec![64513]);
    assert_eq!(r.communities, vec![Community::new(64513, 9)]);
    assert_eq!(r.large_communities, vec![LargeCommunity::new(64513, 2, 3)]);

    let r = frr
        .wait_route("203.0.113.9/32", &|_| true, Duration::from_secs(10))
        .unwrap();
    assert_eq!(r.next_hops, vec![ip("192.0.2.1")]);
    assert_eq!(r.as_path, vec![64512]);
    assert_eq!(r.large_communities, vec![LargeCommunity::new(64512, 1, 1)]);
    assert_eq!(r.from_protocol, "192.0.2.1");
    // zebra installed it into the node's kernel table.
    wait_for("kernel route on the node", Duration::from_secs(10), || {
        node.exec_ok(&["ip", "route", "show", "203.0.113.9"])
            .is_ok_and(|o| o.contains("via 192.0.2.1"))
    })
    .unwrap();
}

#[test]
fn demo_site_routes_remote_to_nodes() {
    let lab = Lab::new("demo_site").unwrap();
    let site = DemoSite::build(&lab).unwrap();
    assert_eq!(site.nodes.len(), 3);
    site.remote
        .wait_ping(&demo::node_v4(0), Duration::from_secs(5))
        .unwrap();
    site.remote
        .wait_ping(&demo::node_v6(2), Duration::from_secs(5))
        .unwrap();
    site.client
        .wait_ping(demo::REMOTE_V4, Duration::from_secs(5))
        .unwrap();
    // The router's BIRD config is accepted and its sessions wait for the nodes.
    let bird = Bird::start(&site.router, site.router_bird_config()).unwrap();
    let protocols = bird.protocols().unwrap();
    assert!(
        protocols
            .iter()
            .any(|p| p.name == "node1_v4" && p.proto == "BGP")
    );
    assert!(protocols.iter().any(|p| p.name == "node3_v6"));
}

#[test]
fn demo_router_learns_node_routes_and_forwards_to_them() {
    let lab = Lab::new("demo_bgp").unwrap();
    let site = DemoSite::build(&lab).unwrap();
    let bird = Bird::start(&site.router, site.router_bird_config()).unwrap();
    let node1 = &site.nodes[0];
    node1.add_addr("lo", "203.0.113.10/32").unwrap();
    node1.add_addr("lo", "2001:db8:ff::10/128").unwrap();

    let mut cfg = GobgpConfig::new(demo::node_v4(0).parse().unwrap(), demo::NODE_ASN);
    let mut v4 = BgpNeighbor::new(ip(demo::ROUTER_SITE_V4), demo::ROUTER_ASN);
    v4.ipv6 = false;
    let mut v6 = BgpNeighbor::new(ip(demo::ROUTER_SITE_V6), demo::ROUTER_ASN);
    v6.ipv4 = false;
    cfg.neighbors = vec![v4, v6];
    let gobgp = Gobgp::start(node1, cfg).unwrap();
    bird.wait_established("node1_v4", SESSION_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\nbird: {}\ngobgp: {}", bird.logs(), gobgp.logs()));
    bird.wait_established("node1_v6", SESSION_TIMEOUT).unwrap();

    gobgp
        .announce(&StaticRoute::new("203.0.113.10/32".parse().unwrap()))
        .unwrap();
    gobgp
        .announce(&StaticRoute::new("2001:db8:ff::10/128".parse().unwrap()))
        .unwrap();
    let r = bird
        .wait_route("2001:db8:ff::10/128", &|_| true, Duration::from_secs(10))
        .unwrap();
    assert_eq!(r.next_hops, vec![ip(&demo::node_v6(0))]);
    site.remote
        .wait_ping("203.0.113.10", Duration::from_secs(10))
        .unwrap();
    site.remote
        .wait_ping("2001:db8:ff::10", Duration::from_secs(10))
        .unwrap();
}

#[test]
fn down_orphans_removes_dead_labs_only() {
    let live = Lab::new("down_orphans_live").unwrap();
    let live_host = live.host("h").unwrap();
    // Fake the leftovers of a lab whose process died: a namespace with a process in it and
    // a lab dir whose owner pid is gone.
    let dead_pid = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let prefix = format!("mnlz{:04}", dead_pid % 10000);
    let ns = format!("{prefix}-h");
    let dir = std::env::temp_dir().join(format!("{prefix}.lab"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("owner"), format!("{dead_pid}\nfake\n")).unwrap();
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "sh",
            "-c",
            "setsid sleep 300 >/dev/null 2>&1 &",
        ])
        .status();

    let report = metalnet_lab::lab::down_orphans();
    assert!(report.namespaces.contains(&ns), "{report:?}");
    assert!(!netns_exists(&ns));
    assert!(!dir.exists());
    assert!(netns_exists(live_host.netns()), "a live lab was removed");
}

#[test]
fn router_installs_ecmp_routes_from_two_nodes() {
    let lab = Lab::new("demo_ecmp").unwrap();
    let site = DemoSite::build(&lab).unwrap();
    // The router connects (GoBGP is slow as the active side); v4 sessions only.
    let mut router_cfg = site.router_bird_config();
    router_cfg.neighbors.retain(|n| n.ipv4);
    for n in &mut router_cfg.neighbors {
        n.passive = false;
    }
    let bird = Bird::start(&site.router, router_cfg).unwrap();
    let mut speakers = Vec::new();
    for (i, node) in site.nodes.iter().take(2).enumerate() {
        node.add_addr("lo", "203.0.113.10/32").unwrap();
        let mut cfg = GobgpConfig::new(demo::node_v4(i).parse().unwrap(), demo::NODE_ASN);
        let mut n = BgpNeighbor::new(ip(demo::ROUTER_SITE_V4), demo::ROUTER_ASN).passive();
        n.ipv6 = false;
        cfg.neighbors.push(n);
        let gobgp = Gobgp::start(node, cfg).unwrap();
        gobgp
            .announce(&StaticRoute::new("203.0.113.10/32".parse().unwrap()))
            .unwrap();
        speakers.push(gobgp);
    }
    for name in ["node1_v4", "node2_v4"] {
        bird.wait_established(name, SESSION_TIMEOUT).unwrap();
    }
    wait_for("two kernel next hops", Duration::from_secs(10), || {
        site.router
            .exec_ok(&["ip", "route", "show", "203.0.113.10"])
            .is_ok_and(|o| {
                o.contains("nexthop via 192.0.2.11") && o.contains("nexthop via 192.0.2.12")
            })
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}",
            site.router
                .exec_ok(&["ip", "route", "show", "203.0.113.10"])
        )
    });
    let routes: Vec<_> = bird
        .routes()
        .unwrap()
        .into_iter()
        .filter(|r| r.prefix.to_string() == "203.0.113.10/32")
        .collect();
    assert_eq!(routes.len(), 2, "{routes:?}");
    site.remote
        .wait_ping("203.0.113.10", Duration::from_secs(5))
        .unwrap();
}
