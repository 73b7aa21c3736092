//! The Kubernetes code path of `metalnet-router --run-router`, end to end: one router per
//! node of a three-node lab cluster (see `metalnet_lab::lab::router`), every one started with
//! `--kubeconfig` against the in-repo API-server stand-in ([`ApiServer`], a test double, not
//! a real API server) listening on a lab host of its own on the nodes' segment (`api`,
//! 192.0.2.5:6443), so the routers reach it over the lab's links as they would reach a real
//! one. The Node objects (InternalIP v4+v6, `spec.podCIDRs` v4+v6, kube-router's
//! annotations) are written into the stand-in, never into a state directory.
//!
//! Checked: the mesh (protocol-17 routes, pods pinging across), live changes through the API
//! (a pod CIDR, route-reflector roles, a Node leaving and rejoining) without a restart, bad
//! annotations giving Warning Events created through the stand-in's events API while the
//! routes stay, an outage of the stand-in (stopped for seconds, its watch history gone so the
//! routers relist) that removes no installed route, even with a router restarted meanwhile
//! (graceful restart), and Services and EndpointSlices from the API deciding what an upstream
//! BIRD learns. Needs root (network namespaces), and BIRD for
//! the Service test; every wait is bounded (scaled by `METALNET_TEST_PATIENCE`) and the lab,
//! processes and stand-in go on failure.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use metalnet::state::Kind;
use metalnet::testing::{Manifest, endpoint_slice, service};
use metalnet_lab::Host;
use metalnet_lab::apiserver::{ApiServer, RequestRecord};
use metalnet_lab::lab::router::{
    BIRD_ASN, BIRD_V4, BIRD_V6, ClusterOptions, RouterCluster, pin_neighbours,
};
use metalnet_lab::lab::{BgpRouter, can_run, wait_for};
use serde_json::Value;

/// Convergence of the cluster.
const CONVERGE: Duration = Duration::from_secs(30);
/// A single step (a ping, a route appearing, an Event).
const STEP: Duration = Duration::from_secs(15);
/// How long the stand-in stays away in the outage test.
const OUTAGE: Duration = Duration::from_secs(6);
/// After an outage the routers' watchers come back with kube-runtime's default backoff
/// (800 ms doubling up to 30 s between attempts, jittered; 11 to 34 s seen after a 6 s
/// outage): how long a change may take to arrive then.
const AFTER_OUTAGE: Duration = Duration::from_secs(90);

/// The stand-in's lab host and where it listens (a free address of the nodes' segment).
const API_HOST: &str = "api";
const API_V4: &str = "192.0.2.5";
const API_V6: &str = "2001:db8::5";
const API_PORT: u16 = 6443;

fn net(s: &str) -> IpNet {
    s.parse().expect("a prefix literal")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address literal")
}

/// A router cluster whose routers read the stand-in. Fields drop in order: the routers and
/// namespaces first, then the stand-in, then the runtime serving it.
struct KubeCluster {
    c: RouterCluster,
    api: ApiServer,
    runtime: tokio::runtime::Runtime,
}

impl KubeCluster {
    /// Three nodes; `setup` annotates them and sets the routers' common arguments before the
    /// Nodes are written into the stand-in and the routers start.
    fn start(test: &str, setup: impl FnOnce(&mut RouterCluster)) -> KubeCluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut c = RouterCluster::new(test, ClusterOptions::new(3)).unwrap();
        setup(&mut c);
        let host = c.upstream_host(API_HOST, API_V4, API_V6).unwrap();
        c.pin_neighbours(&[(&host, API_V4, API_V6)])
            .expect("pinning neighbours");
        let api = runtime
            .block_on(ApiServer::start_in_netns(
                host.netns(),
                SocketAddr::new(ip(API_V4), API_PORT),
            ))
            .unwrap();
        let mut kc = KubeCluster { c, api, runtime };
        for i in 0..kc.c.nodes.len() {
            kc.push_node(i);
        }
        // Every node reaches the stand-in before its router starts: a router whose first
        // list fails waits out kube's backoff (seconds) before it tries again.
        let t = Instant::now();
        for n in &kc.c.nodes {
            n.host.wait_ping(API_V4, CONVERGE).unwrap_or_else(|e| {
                // The ARP table is one for all namespaces: a big lab elsewhere can fill it.
                panic!("the lab itself: {e} (kernel neighbour table full? see dmesg)")
            });
        }
        if t.elapsed() > Duration::from_secs(1) {
            eprintln!(
                "the nodes reached the stand-in's host after {:?}",
                t.elapsed()
            );
        }
        kc.c.kubeconfig = Some(kc.api.kubeconfig(kc.c.lab.dir()).unwrap());
        kc.c.start_all(&[]).unwrap();
        // The routers run on the Kubernetes path: no state directory on their command line.
        let args = kc.c.router_args(0, &[]).unwrap();
        assert!(
            args.iter().any(|a| a == "--kubeconfig") && !args.iter().any(|a| a == "--state-dir"),
            "{args:?}"
        );
        kc
    }

    /// Writes node `i`'s Node object, as it stands in the cluster, into the stand-in.
    fn push_node(&self, i: usize) {
        self.api.put(self.c.node_manifest(i)).unwrap();
    }

    /// Sets (or removes) an annotation of node `i` through the API.
    fn set_annotation(&mut self, i: usize, key: &str, value: Option<&str>) {
        let annotations = &mut self.c.nodes[i].annotations;
        match value {
            Some(v) => annotations.insert(key.to_string(), v.to_string()),
            None => annotations.remove(key),
        };
        self.push_node(i);
    }

    /// Replaces node `i`'s `spec.podCIDRs` through the API.
    fn set_pod_cidrs(&mut self, i: usize, cidrs: &[&str]) {
        self.c.nodes[i].pod_cidrs = cidrs.iter().map(|s| s.to_string()).collect();
        self.push_node(i);
    }

    fn converge(&self) {
        let all: Vec<usize> = (0..self.c.nodes.len()).collect();
        self.c
            .wait_full_mesh_routes(&all, CONVERGE)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.requests_summary()));
    }

    fn pids(&self) -> Vec<u32> {
        self.c
            .nodes
            .iter()
            .map(|n| n.router().expect("a running router").pid())
            .collect()
    }

    /// Every node's proto-17 routes, for failure messages.
    fn all_routes(&self) -> String {
        (0..self.c.nodes.len())
            .map(|i| format!("{}: {:?}\n", self.c.nodes[i].name, self.c.routes_proto17(i)))
            .collect()
    }

    /// How many requests the stand-in answered and which with an error, for failure messages.
    fn requests_summary(&self) -> String {
        let requests = self.api.requests();
        let odd: Vec<&RequestRecord> = requests.iter().filter(|r| r.status >= 400).collect();
        format!("stand-in: {} requests, errors {odd:?}", requests.len())
    }

    /// Requests the stand-in refused as malformed, unsupported or invalid, or failed on.
    fn refused(&self) -> Vec<RequestRecord> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| matches!(r.status, 400 | 405 | 415 | 422) || r.status >= 500)
            .collect()
    }

    /// The core/v1 Events in the stand-in about Node `name`.
    fn node_events(&self, name: &str) -> Vec<Value> {
        self.api
            .list(Kind::Event)
            .into_iter()
            .filter(|e| {
                e["involvedObject"]["kind"] == "Node" && e["involvedObject"]["name"] == name
            })
            .collect()
    }

    /// The Warning Events about Node `name` whose message names `annotation`.
    fn warnings_naming(&self, name: &str, annotation: &str) -> Vec<Value> {
        self.node_events(name)
            .into_iter()
            .filter(|e| {
                e["type"] == "Warning"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(annotation))
            })
            .collect()
    }

    /// Whether every node routes every other node's pod CIDRs (an instant check).
    fn all_full(&self) -> Result<(), String> {
        for i in 0..self.c.nodes.len() {
            if !self.c.has_full_pod_routes(i) {
                return Err(format!(
                    "{} lacks pod routes: {:?}",
                    self.c.nodes[i].name,
                    self.c.routes_proto17(i)
                ));
            }
        }
        Ok(())
    }

    /// For `period`, polls every 200 ms that every node keeps every pod route and every
    /// router runs; the first lapse fails the test.
    fn assert_routes_stay(&self, period: Duration, during: &str) {
        let until = Instant::now() + period;
        let mut checks = 0;
        while Instant::now() < until {
            if let Err(e) = self.all_full() {
                panic!(
                    "{during}: a route went after {checks} checks: {e}\n{}\n{}",
                    self.c.logs(),
                    self.requests_summary()
                );
            }
            for i in 0..self.c.nodes.len() {
                assert!(
                    self.c.router_running(i),
                    "{during}: router {} exited\n{}",
                    self.c.nodes[i].name,
                    self.c.logs()
                );
            }
            checks += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("{during}: every route stayed through {checks} checks over {period:?}");
    }
}

/// `ip -o monitor route` in every node: the kernel's own record of every route change, so
/// that a route removed and put back between two polls is seen too.
struct RouteMonitor {
    monitors: Vec<metalnet_lab::Process>,
}

impl RouteMonitor {
    fn start(kc: &KubeCluster) -> RouteMonitor {
        let monitors =
            kc.c.nodes
                .iter()
                .map(|n| {
                    n.host
                        .spawn("route-monitor", &["ip", "-o", "monitor", "route"])
                        .unwrap()
                })
                .collect();
        // Time to subscribe before anything happens.
        std::thread::sleep(Duration::from_millis(300));
        RouteMonitor { monitors }
    }

    /// The protocol-17 routes node `i`'s kernel deleted so far, as `ip monitor` prints them.
    fn deleted(&self, i: usize) -> Vec<String> {
        self.monitors[i]
            .logs()
            .lines()
            .filter(|l| l.starts_with("Deleted") && l.contains("proto 17"))
            .map(str::to_string)
            .collect()
    }

    /// Every node's deletions, for assertions: `(node index, line)`.
    fn all_deleted(&self) -> Vec<(usize, String)> {
        (0..self.monitors.len())
            .flat_map(|i| self.deleted(i).into_iter().map(move |l| (i, l)))
            .collect()
    }
}

/// Whether node `i` has a proto-17 route to none of `cidrs`.
fn routes_none_of(kc: &KubeCluster, i: usize, cidrs: &[IpNet]) -> bool {
    let have = kc.c.proto17_destinations(i);
    !cidrs.iter().any(|d| have.contains(d))
}

/// Three nodes from Node objects in the API: every node routes the other two nodes' pod
/// CIDRs (v4 and v6) with protocol 17 directly via that node, nothing else, and pods on
/// different nodes ping each other; the routers' requests were all ones the stand-in serves.
#[test]
fn kube_three_nodes_route_pod_cidrs_from_node_objects() {
    if !can_run(&["ethtool", "ping"]) {
        return;
    }
    let kc = KubeCluster::start("rkube_mesh", |_| {});
    kc.converge();
    for i in 0..3 {
        let have = kc.c.proto17_destinations(i);
        assert_eq!(have.len(), 4, "{}: {have:?}", kc.c.nodes[i].name);
        for own in &kc.c.nodes[i].pod_cidrs {
            assert!(
                !have.contains(&net(own)),
                "{} routes its own pod CIDR {own}: {have:?}",
                kc.c.nodes[i].name
            );
        }
    }
    kc.c.wait_all_pods_ping(STEP)
        .unwrap_or_else(|e| panic!("{e}\n{}", kc.c.logs()));
    // The routers follow Nodes, Services and EndpointSlices through watches on the stand-in.
    let requests = kc.api.requests();
    for path in [
        "/api/v1/nodes",
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
    ] {
        assert!(
            requests
                .iter()
                .any(|r| r.path == path && r.is_watch() && r.status == 200),
            "no watch of {path}: {requests:?}"
        );
    }
    let refused = kc.refused();
    assert!(refused.is_empty(), "requests refused: {refused:?}");
    for i in 0..3 {
        assert!(kc.c.router_running(i), "{}", kc.c.logs());
    }
}

/// Live changes written through the API reach the running routers: a changed pod CIDR
/// replaces the old routes on the other nodes without resetting any session, changing it back
/// restores pod traffic, and route-reflector roles (n1 `rr.server`, n2 and n3 `rr.client`)
/// leave the clients with sessions to the server only, routes and pod traffic intact; a Node
/// deleted and written again leaves and rejoins. The same router processes throughout.
#[test]
fn kube_live_changes_through_the_api_converge_without_restart() {
    if !can_run(&["ethtool", "ping", "ss"]) {
        return;
    }
    let mut kc = KubeCluster::start("rkube_live", |_| {});
    kc.converge();
    let pids = kc.pids();
    // Let the session uptimes tick past a second so a reset would show.
    std::thread::sleep(Duration::from_millis(1100));
    let n1_before = kc.c.session_snapshot(0);
    let n2_before = kc.c.session_snapshot(1);

    // 1. n3's pod CIDRs change in the API: the others route the new ones, drop the old.
    let old: Vec<IpNet> = kc.c.nodes[2].pod_cidrs.iter().map(|s| net(s)).collect();
    let new = ["198.51.100.128/28", "2001:db8:100:ff::/64"];
    let t = Instant::now();
    kc.set_pod_cidrs(2, &new);
    for i in [0, 1] {
        wait_for(
            &format!("{} to route n3's new pod CIDRs only", kc.c.nodes[i].name),
            STEP,
            || kc.c.has_full_pod_routes(i) && routes_none_of(&kc, i, &old),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", kc.all_routes(), kc.c.logs()));
    }
    eprintln!(
        "pod CIDR change through the API reached both kernels after {:?}",
        t.elapsed()
    );
    // Exactly the new prefixes, via n3.
    let via_n3 = kc.c.routes_proto17(0).unwrap();
    for cidr in new {
        assert!(
            via_n3.iter().any(|(d, _)| *d == net(cidr)),
            "n1 lacks {cidr}: {via_n3:?}"
        );
    }
    // A pod CIDR change is an UPDATE, not a reason to reset a session.
    kc.c.assert_sessions_kept(
        &n1_before,
        &[kc.c.node_addrs(1), kc.c.node_addrs(2)].concat(),
    );
    kc.c.assert_sessions_kept(
        &n2_before,
        &[kc.c.node_addrs(0), kc.c.node_addrs(2)].concat(),
    );

    // 2. Back again: pods on n3 (addressed from the original CIDRs) are reachable again.
    let original: Vec<String> = old.iter().map(IpNet::to_string).collect();
    let original: Vec<&str> = original.iter().map(String::as_str).collect();
    kc.set_pod_cidrs(2, &original);
    kc.converge();
    for i in [0, 1] {
        let stale = [net(new[0]), net(new[1])];
        wait_for(
            &format!("{} to drop n3's interim pod CIDRs", kc.c.nodes[i].name),
            STEP,
            || routes_none_of(&kc, i, &stale),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", kc.all_routes(), kc.c.logs()));
    }
    kc.c.wait_all_pods_ping(STEP)
        .unwrap_or_else(|e| panic!("{e}\n{}", kc.c.logs()));

    // 3. Route reflection: n1 server, n2 and n3 its clients (cluster id 42). The clients
    // drop their session to each other and keep the one to the server; every node still
    // routes every pod CIDR (the reflector passes the original next hop on).
    let t = Instant::now();
    kc.set_annotation(0, "kube-router.io/rr.server", Some("42"));
    kc.set_annotation(1, "kube-router.io/rr.client", Some("42"));
    kc.set_annotation(2, "kube-router.io/rr.client", Some("42"));
    let server = kc.c.node_addrs(0);
    for i in [1, 2] {
        wait_for(
            &format!("client {} to peer with the server only", kc.c.nodes[i].name),
            CONVERGE,
            || {
                kc.c.bgp_connections(i).is_ok_and(|peers| {
                    // (One session per node pair carries both families.)
                    !peers.is_empty() && peers.iter().all(|p| server.contains(p))
                })
            },
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}: sessions {:?}\n{}",
                kc.c.bgp_connections(i),
                kc.c.logs()
            )
        });
    }
    kc.converge();
    eprintln!(
        "route reflector roles through the API converged after {:?}",
        t.elapsed()
    );
    let r = kc.c.routes_proto17(1).unwrap();
    assert!(
        r.contains(&(
            net(&kc.c.nodes[2].pod_cidrs[0]),
            Some(ip(&kc.c.nodes[2].v4))
        )),
        "client n2 routes n3's pods via n3: {r:?}"
    );
    kc.c.wait_all_pods_ping(STEP)
        .unwrap_or_else(|e| panic!("{e}\n{}", kc.c.logs()));

    // 4. n3 leaves the cluster (its Node object deleted in the API): the others drop its
    // pod routes; written again, it joins again and pod traffic flows.
    let n3_pods: Vec<IpNet> = kc.c.nodes[2].pod_cidrs.iter().map(|s| net(s)).collect();
    assert!(kc.api.delete(Kind::Node, None, "n3"));
    for i in [0, 1] {
        wait_for(
            &format!(
                "{} to drop the pod routes of deleted n3",
                kc.c.nodes[i].name
            ),
            STEP,
            || routes_none_of(&kc, i, &n3_pods),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", kc.all_routes(), kc.c.logs()));
    }
    kc.push_node(2);
    kc.converge();
    kc.c.wait_all_pods_ping(STEP)
        .unwrap_or_else(|e| panic!("after n3 joined again: {e}\n{}", kc.c.logs()));

    // Valid changes only: no Warning Event anywhere.
    let warnings: Vec<Value> = kc
        .api
        .list(Kind::Event)
        .into_iter()
        .filter(|e| e["type"] == "Warning")
        .collect();
    assert!(
        warnings.is_empty(),
        "Warnings on valid changes: {warnings:?}"
    );

    // No restart: the same processes throughout.
    assert_eq!(kc.pids(), pids, "a router restarted\n{}", kc.c.logs());
    for i in 0..3 {
        assert!(kc.c.router_running(i), "{}", kc.c.logs());
    }
    let refused = kc.refused();
    assert!(refused.is_empty(), "requests refused: {refused:?}");
}

/// Bad annotations written through the API (a `kube-router.io/peers` that is not YAML on
/// n2, a non-numeric `kube-router.io/node.asn` on n3 with `--nodes-full-mesh=false`) each give
/// one Warning Event on that Node, created through the stand-in's core/v1 events API and
/// naming the annotation; the last good values stay (n3 keeps its ASN, so stays in the
/// mesh) and no route goes. Fixed and broken again, the problem is counted again on the same
/// Event.
#[test]
fn kube_bad_annotations_give_warning_events_and_routes_stay() {
    if !can_run(&["ethtool", "ping"]) {
        return;
    }
    let mut kc = KubeCluster::start("rkube_bad", |c| {
        // node.asn counts only without full mesh (as in kube-router): a lost ASN would
        // take n3 out of the mesh.
        c.common_args = vec!["--nodes-full-mesh=false".into()];
        for i in 0..3 {
            c.annotate(i, "kube-router.io/node.asn", "64512");
        }
    });
    kc.converge();
    let pids = kc.pids();
    let monitor = RouteMonitor::start(&kc);

    kc.set_annotation(
        1,
        "kube-router.io/peers",
        Some("- remoteip: [unclosed\n  remoteasn: {"),
    );
    kc.set_annotation(2, "kube-router.io/node.asn", Some("abc"));
    for (i, annotation) in [(1, "kube-router.io/peers"), (2, "kube-router.io/node.asn")] {
        let name = kc.c.nodes[i].name.clone();
        wait_for(
            &format!("a Warning Event on Node {name} naming {annotation}"),
            STEP,
            || !kc.warnings_naming(&name, annotation).is_empty(),
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nevents: {:?}\n{}\n{}",
                kc.api.list(Kind::Event),
                kc.c.logs(),
                kc.requests_summary()
            )
        });
    }
    // The routes stay meanwhile and after (n3 keeps its last good ASN 64512).
    kc.assert_routes_stay(Duration::from_secs(3), "after the bad annotations");
    let deleted = monitor.all_deleted();
    assert!(
        deleted.is_empty(),
        "routes deleted after the bad annotations: {deleted:?}\n{}",
        kc.c.logs()
    );
    kc.c.wait_all_pods_ping(STEP)
        .unwrap_or_else(|e| panic!("{e}\n{}", kc.c.logs()));

    // Each problem was reported once, as a core/v1 Event POSTed to the events API, about
    // the Node object itself (its uid), from the router.
    for (i, annotation) in [(1, "kube-router.io/peers"), (2, "kube-router.io/node.asn")] {
        let name = &kc.c.nodes[i].name;
        let events = kc.warnings_naming(name, annotation);
        assert_eq!(
            events.len(),
            1,
            "one Event for {annotation} on {name}: {events:?}"
        );
        let e = &events[0];
        assert_eq!(e["count"], 1, "reported once: {e}");
        assert_eq!(e["metadata"]["namespace"], "default", "{e}");
        assert_eq!(e["source"]["component"], "metalnet-router", "{e}");
        let node = kc.api.get(Kind::Node, None, name).unwrap();
        assert_eq!(
            e["involvedObject"]["uid"], node["metadata"]["uid"],
            "the Event is about Node {name} itself: {e}"
        );
    }
    assert!(
        kc.api.requests().iter().any(|r| r.method == "POST"
            && r.path == "/api/v1/namespaces/default/events"
            && r.status == 201),
        "no Event created through the events API: {}",
        kc.requests_summary()
    );
    // The router's gauge agrees: n3 has one problem now.
    let problems = |kc: &KubeCluster, i: usize| -> Option<f64> {
        let text = kc.c.metrics(i).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("metalnet_router_annotation_problems "))
            .and_then(|v| v.trim().parse().ok())
    };
    assert_eq!(
        problems(&kc, 2),
        Some(1.0),
        "{}",
        kc.c.metrics(2).unwrap_or_default()
    );

    // Fixed, then broken again: reported again, as a repeat of the same Event (its count
    // goes up, written with a PATCH, as kube's event recorder does).
    kc.set_annotation(2, "kube-router.io/node.asn", Some("64512"));
    wait_for("n3's annotation problem to clear", STEP, || {
        problems(&kc, 2) == Some(0.0)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", kc.c.logs()));
    kc.set_annotation(2, "kube-router.io/node.asn", Some("abc"));
    wait_for(
        "the node.asn Warning on n3 to be counted twice",
        STEP,
        || {
            let events = kc.warnings_naming("n3", "kube-router.io/node.asn");
            events.len() == 1 && events[0]["count"] == 2
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}\n{}",
            kc.warnings_naming("n3", "kube-router.io/node.asn"),
            kc.requests_summary()
        )
    });
    assert!(
        kc.api.requests().iter().any(|r| r.method == "PATCH"
            && r.path.starts_with("/api/v1/namespaces/default/events/n3.")
            && r.status == 200),
        "the repeat was not a PATCH of the Event: {}",
        kc.requests_summary()
    );
    kc.assert_routes_stay(Duration::from_secs(1), "after the repeat");
    let deleted = monitor.all_deleted();
    assert!(
        deleted.is_empty(),
        "routes deleted: {deleted:?}\n{}",
        kc.c.logs()
    );

    // n1, untouched, got no Warning.
    let n1 = kc.node_events("n1");
    assert!(
        !n1.iter().any(|e| e["type"] == "Warning"),
        "n1 got a Warning: {n1:?}"
    );
    assert_eq!(kc.pids(), pids, "a router restarted\n{}", kc.c.logs());
    let refused = kc.refused();
    assert!(refused.is_empty(), "requests refused: {refused:?}");
}

/// The stand-in goes away for seconds (stopped: connections refused, open watches cut) and
/// comes back without its watch history (the routers' watches get 410 Gone and relist): no
/// installed route goes at any moment, pods keep pinging, and a change made after it is back
/// still reaches every kernel (the routers' watchers recovered on their own).
#[test]
fn kube_api_outage_removes_no_route() {
    if !can_run(&["ethtool", "ping"]) {
        return;
    }
    let mut kc = KubeCluster::start("rkube_outage", |_| {});
    kc.converge();
    kc.c.wait_all_pods_ping(STEP)
        .unwrap_or_else(|e| panic!("{e}\n{}", kc.c.logs()));
    let pids = kc.pids();
    let requests_before = kc.api.requests().len();
    let monitor = RouteMonitor::start(&kc);

    let KubeCluster { api, runtime, .. } = &mut kc;
    runtime.block_on(api.stop());
    // A restarted API server's watch cache starts anew: resuming watches get 410 Gone.
    api.compact();
    kc.assert_routes_stay(OUTAGE, "while the API is away");
    kc.c.wait_all_pods_ping(STEP)
        .unwrap_or_else(|e| panic!("during the outage: {e}\n{}", kc.c.logs()));

    let KubeCluster { api, runtime, .. } = &mut kc;
    runtime.block_on(api.resume()).unwrap();
    let back = Instant::now();
    // The routers come back and relist (after their backoff): still no route goes.
    wait_for(
        "the routers to relist after the outage",
        AFTER_OUTAGE,
        || {
            let requests = kc.api.requests();
            let relists = requests[requests_before..]
                .iter()
                .filter(|r| r.path == "/api/v1/nodes" && !r.is_watch() && r.status == 200)
                .count();
            // One per router.
            relists >= 3
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}\n{}",
            &kc.api.requests()[requests_before..],
            kc.c.logs()
        )
    });
    eprintln!(
        "all three routers relisted Nodes {:?} after the stand-in came back",
        back.elapsed()
    );
    kc.assert_routes_stay(Duration::from_secs(3), "after the relist");
    // Not even for a moment: the kernels deleted no route all along.
    let deleted = monitor.all_deleted();
    assert!(
        deleted.is_empty(),
        "routes deleted during or after the outage: {deleted:?}\n{}",
        kc.c.logs()
    );

    // A change after the outage still arrives: n2's pod CIDRs move.
    let old: Vec<IpNet> = kc.c.nodes[1].pod_cidrs.iter().map(|s| net(s)).collect();
    let t = Instant::now();
    kc.set_pod_cidrs(1, &["198.51.100.128/28", "2001:db8:100:fe::/64"]);
    for i in [0, 2] {
        wait_for(
            &format!("{} to follow n2's new pod CIDRs", kc.c.nodes[i].name),
            AFTER_OUTAGE,
            || kc.c.has_full_pod_routes(i) && routes_none_of(&kc, i, &old),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", kc.all_routes(), kc.c.logs()));
    }
    eprintln!(
        "a change after the outage reached the kernels in {:?}",
        t.elapsed()
    );
    // The monitor does see deletions: the old prefixes of n2, on n1 and n3.
    for i in [0, 2] {
        let deleted = monitor.deleted(i);
        for cidr in &old {
            assert!(
                deleted.iter().any(|l| l.contains(&cidr.to_string())),
                "{}'s monitor missed the deletion of {cidr}: {deleted:?}",
                kc.c.nodes[i].name
            );
        }
    }
    assert_eq!(kc.pids(), pids, "a router restarted\n{}", kc.c.logs());
    let refused = kc.refused();
    assert!(refused.is_empty(), "requests refused: {refused:?}");
}

/// BIRD's next hops for `prefix` (every path it holds), sorted.
fn bird_next_hops(bird: &metalnet_lab::lab::Bird, prefix: &str) -> Vec<IpAddr> {
    let p = net(prefix);
    let mut hops: Vec<IpAddr> = bird
        .routes()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.prefix == p)
        .flat_map(|r| r.next_hops)
        .collect();
    hops.sort();
    hops.dedup();
    hops
}

/// Services and EndpointSlices come through the API too: with `--advertise-loadbalancer-ip`
/// and BIRD as global peer, a LoadBalancer Service put into the stand-in is announced by
/// every node (`Cluster`), only by the node with a ready endpoint once it turns `Local` with
/// an EndpointSlice, and withdrawn when deleted; BIRD holds the pod CIDRs throughout.
#[test]
fn kube_services_from_the_api_reach_the_upstream_router() {
    if !can_run(&["ethtool", "ping", "bird"]) {
        return;
    }
    let kc = KubeCluster::start("rkube_svc", |c| {
        c.common_args = vec![
            // IPv4 only: an external peer of the other family than the node's primary
            // address is skipped (as in kube-router) unless it names a localip.
            format!("--peer-router-ips={BIRD_V4}"),
            format!("--peer-router-asns={BIRD_ASN}"),
            "--advertise-loadbalancer-ip".into(),
        ];
    });
    let bird = kc.c.start_bird(None, |_| {}).unwrap();
    // BIRD joins the segment: its neighbour entries and the nodes' ones for it are pinned too.
    let bird_end: Vec<(&Host, &str, &str)> = vec![(bird.host(), BIRD_V4, BIRD_V6)];
    pin_neighbours(&kc.c.segment_ends(&bird_end)).expect("pinning neighbours");
    for n in &kc.c.nodes {
        bird.wait_established(&format!("{}_v4", n.name), CONVERGE)
            .unwrap_or_else(|e| panic!("{e}\n{}", kc.c.logs()));
    }
    for n in &kc.c.nodes {
        let c4 = n.pod_cidrs[0].clone();
        let v4 = ip(&n.v4);
        wait_for(&format!("BIRD to learn {c4} from {}", n.name), STEP, || {
            bird_next_hops(&bird, &c4) == vec![v4]
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", kc.c.logs()));
    }

    let lb4 = "203.0.113.10";
    let p4 = format!("{lb4}/32");
    let expect = |kc: &KubeCluster, nodes: &[usize], what: &str| {
        let want: Vec<IpAddr> = nodes.iter().map(|&j| ip(&kc.c.nodes[j].v4)).collect();
        wait_for(what, STEP, || bird_next_hops(&bird, &p4) == want).unwrap_or_else(|e| {
            panic!(
                "{e}: {p4} via {:?}\n{}\n{}",
                bird_next_hops(&bird, &p4),
                kc.c.logs(),
                kc.requests_summary()
            )
        });
    };
    let svc = || service("web").ingress([lb4]).families_of(&[lb4]);

    // 1. A Cluster Service: every node announces its addresses.
    kc.api.put(svc().traffic_policy("Cluster").json()).unwrap();
    expect(
        &kc,
        &[0, 1, 2],
        "BIRD to learn the LoadBalancer addresses from every node",
    );

    // 2. Local, with a ready endpoint on n2 only: only n2 announces.
    kc.api
        .put(endpoint_slice("web").ready_on("n2").json())
        .unwrap();
    kc.api.put(svc().traffic_policy("Local").json()).unwrap();
    expect(
        &kc,
        &[1],
        "only n2 (the node with the endpoint) to announce",
    );

    // 3. Deleted: withdrawn everywhere; the pod CIDRs stay.
    assert!(kc.api.delete(Kind::Service, Some("default"), "web"));
    expect(&kc, &[], "the LoadBalancer addresses to be withdrawn");
    for n in &kc.c.nodes {
        assert_eq!(
            bird_next_hops(&bird, &n.pod_cidrs[0]),
            vec![ip(&n.v4)],
            "BIRD lost {}'s pod CIDR",
            n.name
        );
    }
    kc.converge();
    let refused = kc.refused();
    assert!(refused.is_empty(), "requests refused: {refused:?}");
}

/// A router restarted while the API is away (SIGKILL, with `--bgp-graceful-restart`): the new
/// process waits for the API without touching the kernel, the other nodes keep its routes as
/// graceful-restart helpers, and once the API is back it starts, peers again and catches up.
/// No proto-17 route is deleted anywhere from the outage to the end, and a change made
/// afterwards reaches the restarted router's kernel.
#[test]
fn kube_router_restarted_during_an_api_outage_keeps_routes() {
    if !can_run(&["ethtool", "ping"]) {
        return;
    }
    let mut kc = KubeCluster::start("rkube_gr", |c| {
        c.common_args = vec!["--bgp-graceful-restart=true".into()];
    });
    kc.converge();
    let monitor = RouteMonitor::start(&kc);

    let KubeCluster { api, runtime, .. } = &mut kc;
    runtime.block_on(api.stop());
    api.compact();
    kc.c.kill_router(2);
    kc.c.start_router(2, &[]).unwrap();
    kc.assert_routes_stay(OUTAGE, "n3 restarted while the API is away");
    let KubeCluster { api, runtime, .. } = &mut kc;
    runtime.block_on(api.resume()).unwrap();
    let back = Instant::now();

    // The new n3 starts once it has listed the cluster, and peers with both nodes again.
    let others = [ip(&kc.c.nodes[0].v4), ip(&kc.c.nodes[1].v4)];
    wait_for("the restarted n3 to peer again", AFTER_OUTAGE, || {
        kc.c.router_sessions(2).is_ok_and(|s| {
            others
                .iter()
                .all(|p| s.get(p).is_some_and(|(state, _)| state == "Established"))
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", kc.c.logs()));
    eprintln!(
        "the restarted n3 peered again {:?} after the API came back",
        back.elapsed()
    );
    kc.assert_routes_stay(Duration::from_secs(3), "after n3 caught up");
    let deleted = monitor.all_deleted();
    assert!(
        deleted.is_empty(),
        "routes deleted across the restart during the outage: {deleted:?}\n{}",
        kc.c.logs()
    );

    // The restarted router follows the API: n1's pod CIDRs move.
    let old: Vec<IpNet> = kc.c.nodes[0].pod_cidrs.iter().map(|s| net(s)).collect();
    kc.set_pod_cidrs(0, &["198.51.100.128/28", "2001:db8:100:fd::/64"]);
    wait_for("n3 to follow n1's new pod CIDRs", STEP, || {
        kc.c.has_full_pod_routes(2) && routes_none_of(&kc, 2, &old)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", kc.all_routes(), kc.c.logs()));
    let refused = kc.refused();
    assert!(refused.is_empty(), "requests refused: {refused:?}");
}
