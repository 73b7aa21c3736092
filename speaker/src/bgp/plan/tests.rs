use super::*;
use metalnet::testing::*;
use metalnet::validate::valid_config;
use serde_json::{Value, json};

/// The node this speaker plans for, with the address its router id comes from.
fn node1() -> NodeBuilder {
    node("node1").internal_ip("192.0.2.11")
}

/// A LoadBalancer Service holding `ips`, with this external traffic policy.
fn lb_service(name: &str, ips: &[&str], policy: &str) -> Value {
    service(name).traffic_policy(policy).ingress(ips).json()
}

fn base(extra: Vec<Value>) -> Vec<Value> {
    let mut v = vec![
        node1().label("zone", "a").ready().json(),
        pool("site", ["192.0.2.192/26", "2001:db8:0:1::200/124"]).json(),
        bgp_peer("router", "192.0.2.1", 64513, 64512).json(),
    ];
    v.extend(extra);
    v
}

fn run(objects: Vec<Value>) -> NodePlan {
    let snap = snapshot(objects);
    let (config, problems) = valid_config(&snap);
    assert!(problems.iter().all(|p| !p.is_error()), "{problems:?}");
    plan(&Inputs {
        snapshot: &snap,
        config: &config,
        node: "node1",
        ignore_exclude_label: false,
    })
}

fn routes(p: &NodePlan, peer: &str) -> BTreeMap<IpNet, RouteAttrs> {
    p.peers[&format!("metallb-system/{peer}")].routes.clone()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn announces_host_route_with_session_parameters() {
    let p = run(base(vec![
        bgp_advertisement("all").json(),
        lb_service("web", &["192.0.2.200", "2001:db8:0:1::201"], "Cluster"),
        endpoint_slice("web").ready_on_each(["node2"]).json(),
    ]));
    let r = routes(&p, "router");
    assert_eq!(
        r.keys().copied().collect::<Vec<_>>(),
        vec![net("192.0.2.200/32"), net("2001:db8:0:1::201/128")]
    );
    let attrs = &r[&net("192.0.2.200/32")];
    assert_eq!(
        attrs.next_hop, None,
        "the engine uses the session's local address"
    );
    let cfg = p.peers["metallb-system/router"].config.as_ref().unwrap();
    assert_eq!((cfg.my_asn, cfg.peer_asn), (64513, 64512));
    assert_eq!(cfg.router_id, Some("192.0.2.11".parse().unwrap()));
    assert_eq!(
        p.services[0].peers(),
        BTreeSet::from(["router".to_string()])
    );
}

#[test]
fn ipv6_address_on_an_ipv4_only_session_is_not_announced() {
    let v4_only = json!({"disableMP": true});
    let objects = |peer_extra: Value, ips: &[&str]| {
        let mut v = base(vec![
            bgp_advertisement("all").json(),
            lb_service("web", ips, "Cluster"),
            endpoint_slice("web").ready_on_each(["node2"]).json(),
        ]);
        v[2] = bgp_peer("router", "192.0.2.1", 64513, 64512)
            .spec_fields(peer_extra)
            .json();
        v
    };
    // IPv6 only: nothing can be sent, and the plan says why.
    let p = run(objects(v4_only.clone(), &["2001:db8:0:1::201"]));
    assert!(routes(&p, "router").is_empty());
    let s = &p.services[0];
    assert!(s.contributions.is_empty() && s.peers().is_empty());
    assert_eq!(s.not_announced, Some(NotAnnounced::FamilyNotCarried));
    assert_eq!(
        s.unsent,
        vec![Unsent {
            ip: "2001:db8:0:1::201".parse().unwrap(),
            peer: "router".into(),
            reason: NotAnnounced::FamilyNotCarried,
        }]
    );
    let text = super::super::explain::render(&p, Some(s), None);
    assert!(
        text.contains("not announced from this node: the sessions"),
        "{text}"
    );
    assert!(
        text.contains("2001:db8:0:1::201 not sent to router"),
        "{text}"
    );

    // Dual stack: the IPv4 address is announced, the IPv6 one reported as not sent.
    let p = run(objects(v4_only, &["192.0.2.200", "2001:db8:0:1::201"]));
    assert_eq!(
        routes(&p, "router").keys().copied().collect::<Vec<_>>(),
        vec![net("192.0.2.200/32")]
    );
    let s = &p.services[0];
    assert_eq!(s.not_announced, None);
    assert_eq!(
        s.contributions.iter().map(|c| c.ip).collect::<Vec<_>>(),
        vec!["192.0.2.200".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(s.unsent.len(), 1);
    let text = super::super::explain::render(&p, Some(s), None);
    assert!(
        text.contains("2001:db8:0:1::201 not sent to router"),
        "{text}"
    );

    // With dualStackAddressFamily the one session carries both.
    let p = run(objects(
        json!({"disableMP": true, "dualStackAddressFamily": true}),
        &["2001:db8:0:1::201"],
    ));
    assert_eq!(routes(&p, "router").len(), 1);
    assert!(p.services[0].unsent.is_empty());
}

#[test]
fn aggregates_and_merges_communities_and_local_pref() {
    let p = run(base(vec![
        object("metallb.io/v1beta1", "Community", Some(METALLB_NS), "names")
            .field(
                "spec",
                json!({"communities": [{"name": "no-export", "value": "65535:65281"}]}),
            )
            .json(),
        bgp_advertisement("agg")
            .with_spec(json!({"aggregationLength": 27, "aggregationLengthV6": 124,
            "localPref": 50, "communities": ["64513:1", "large:64513:2:3"]}))
            .json(),
        bgp_advertisement("more")
            .with_spec(json!({"aggregationLength": 27, "localPref": 200,
            "communities": ["no-export"]}))
            .json(),
        lb_service("a", &["192.0.2.200"], "Cluster"),
        lb_service("b", &["192.0.2.201"], "Cluster"),
        lb_service("c", &["192.0.2.201"], "Cluster"),
        endpoint_slice("a").ready_on_each(["node1"]).json(),
        endpoint_slice("b").ready_on_each(["node1"]).json(),
        endpoint_slice("c").ready_on_each(["node1"]).json(),
    ]));
    let r = routes(&p, "router");
    assert_eq!(r.len(), 1, "one route for the aggregate: {r:?}");
    let a = &r[&net("192.0.2.192/27")];
    assert_eq!(a.communities, vec![(64513 << 16) | 1, 0xffff_ff01]);
    assert_eq!(
        a.large_communities,
        vec![LargeCommunity {
            global: 64513,
            local1: 2,
            local2: 3
        }]
    );
    assert_eq!(a.local_pref, Some(200));
}

#[test]
fn local_policy_needs_an_endpoint_on_this_node() {
    let objs = |eps: &[&str]| {
        base(vec![
            bgp_advertisement("all").json(),
            lb_service("web", &["192.0.2.200"], "Local"),
            endpoint_slice("web").ready_on_each(eps).json(),
        ])
    };
    let p = run(objs(&["node2"]));
    assert!(routes(&p, "router").is_empty());
    assert_eq!(
        p.services[0].not_announced,
        Some(NotAnnounced::NoLocalEndpoint)
    );
    let p = run(objs(&["node1", "node2"]));
    assert_eq!(routes(&p, "router").len(), 1);
    let p = run(objs(&[]));
    assert_eq!(
        p.services[0].not_announced,
        Some(NotAnnounced::NoServingEndpoint)
    );
}

#[test]
fn unusable_node_withdraws_everything_but_keeps_sessions() {
    for (node, why) in [
        (
            node1()
                .label(
                    "node.kubernetes.io/exclude-from-external-load-balancers",
                    "",
                )
                .ready(),
            Exclusion::ExcludedByLabel,
        ),
        (
            node1().condition("NetworkUnavailable", "True"),
            Exclusion::NetworkUnavailable,
        ),
    ] {
        let mut objs = base(vec![
            bgp_advertisement("all").json(),
            lb_service("web", &["192.0.2.200"], "Cluster"),
            endpoint_slice("web").ready_on_each(["node1"]).json(),
        ]);
        objs[0] = node.json();
        let p = run(objs);
        assert!(routes(&p, "router").is_empty());
        assert_eq!(p.node_exclusion, Some(why.clone()));
        assert_eq!(p.services[0].not_announced, Some(NotAnnounced::Node(why)));
    }
}

#[test]
fn selectors_and_peer_lists_filter() {
    let p = run(base(vec![
        bgp_peer("other", "192.0.2.2", 64513, 64512).json(),
        bgp_peer("elsewhere", "192.0.2.3", 64513, 64512)
            .spec_fields(json!({"nodeSelectors": [{"matchLabels": {"zone": "b"}}]}))
            .json(),
        bgp_advertisement("only-other")
            .with_spec(json!({"peers": ["other"]}))
            .json(),
        bgp_advertisement("zone-b")
            .with_spec(json!({"aggregationLength": 27,
            "nodeSelectors": [{"matchLabels": {"zone": "b"}}]}))
            .json(),
        lb_service("web", &["192.0.2.200"], "Cluster"),
        endpoint_slice("web").ready_on_each(["node1"]).json(),
    ]));
    assert_eq!(
        p.peers.keys().cloned().collect::<Vec<_>>(),
        vec!["metallb-system/other", "metallb-system/router"]
    );
    assert_eq!(p.unselected_peers, vec!["metallb-system/elsewhere"]);
    assert!(routes(&p, "router").is_empty());
    assert_eq!(
        routes(&p, "other").keys().copied().collect::<Vec<_>>(),
        vec![net("192.0.2.200/32")]
    );
    // Only advertisements not selecting the node: NotSelected.
    let p = run(base(vec![
        bgp_advertisement("zone-b")
            .with_spec(json!({
            "nodeSelectors": [{"matchLabels": {"zone": "b"}}]}))
            .json(),
        lb_service("web", &["192.0.2.200"], "Cluster"),
        endpoint_slice("web").ready_on_each(["node1"]).json(),
    ]));
    assert_eq!(p.services[0].not_announced, Some(NotAnnounced::NotSelected));
}

#[test]
fn password_from_secret_and_missing_secret() {
    let secret = object("v1", "Secret", Some(METALLB_NS), "bgp-pass")
        .field("type", json!("kubernetes.io/basic-auth"))
        .field("data", json!({"password": "czNjcjN0"}))
        .json();
    let md5 = bgp_peer("md5", "192.0.2.2", 64513, 64512)
        .spec_fields(json!({"passwordSecret": {"name": "bgp-pass"}}))
        .json();
    let p = run(base(vec![md5.clone(), secret]));
    let cfg = p.peers["metallb-system/md5"].config.as_ref().unwrap();
    assert_eq!(cfg.password, Some(Password::new("s3cr3t")));
    assert!(!format!("{cfg:?}").contains("s3cr3t"));
    let p = run(base(vec![md5]));
    let err = p.peers["metallb-system/md5"].config.as_ref().unwrap_err();
    assert!(
        err.contains("Secret/metallb-system/bgp-pass not found"),
        "{err}"
    );
}

#[test]
fn unusable_secret_passwords_are_configuration_errors() {
    let md5 = bgp_peer("md5", "192.0.2.2", 64513, 64512)
        .spec_fields(json!({"passwordSecret": {"name": "bgp-pass"}}))
        .json();
    let secret = |password: &str| {
        object("v1", "Secret", Some(METALLB_NS), "bgp-pass")
            .field("data", json!({"password": password}))
            .json()
    };
    let err = |password: &str| {
        let p = run(base(vec![md5.clone(), secret(password)]));
        p.peers["metallb-system/md5"].config.clone().unwrap_err()
    };
    assert_eq!(
        err("not-base64!"),
        "spec.passwordSecret: Secret metallb-system/bgp-pass key password: not valid \
         base64 (or another key of its data is not)"
    );
    // 81 and 80 bytes of "k", base64-encoded.
    let long = "a2tr".repeat(27);
    assert_eq!(
        err(&long),
        "spec.passwordSecret: Secret metallb-system/bgp-pass key password: 81 bytes, \
         above the 80 Linux accepts for a TCP MD5 key"
    );
    let ok = format!("{}a2s=", "a2tr".repeat(26));
    let p = run(base(vec![md5, secret(&ok)]));
    assert!(p.peers["metallb-system/md5"].config.is_ok());
}

// Incremental planning: a fixed configuration and a changing set of Services and
// EndpointSlices; after every step the incremental plan must equal a full plan.

fn config_objects() -> Vec<Value> {
    base(vec![
        bgp_peer("other", "192.0.2.2", 64513, 64512).json(),
        bgp_advertisement("agg")
            .with_spec(json!({"aggregationLength": 28, "localPref": 50,
            "communities": ["64513:1", "large:64513:2:3"]}))
            .json(),
        bgp_advertisement("host")
            .with_spec(json!({"localPref": 200, "communities": ["64513:7"], "peers": ["other"]}))
            .json(),
        bgp_advertisement("zone-b")
            .with_spec(json!({"aggregationLength": 26,
            "nodeSelectors": [{"matchLabels": {"zone": "b"}}]}))
            .json(),
    ])
}

const IPS: [&str; 6] = [
    "192.0.2.200",
    "192.0.2.201",
    "192.0.2.215",
    "2001:db8:0:1::201",
    "198.51.100.1",
    "192.0.2.200",
];
const NODES: [&str; 3] = ["node1", "node2", "node3"];

/// One Service's objects: None when absent.
#[derive(Clone, Debug)]
struct SvcState {
    load_balancer: bool,
    ips: Vec<usize>,
    local: bool,
    /// Per EndpointSlice (two at most): the Service it is labelled for, its nodes.
    slices: Vec<Option<(usize, Vec<usize>)>>,
}

fn objects_of(services: &[Option<SvcState>]) -> BTreeMap<ObjectRef, Value> {
    let mut out = BTreeMap::new();
    for (i, s) in services.iter().enumerate() {
        let Some(s) = s else { continue };
        let ips: Vec<&str> = s.ips.iter().map(|&i| IPS[i]).collect();
        let mut svc = service(&format!("s{i}"))
            .traffic_policy(if s.local { "Local" } else { "Cluster" })
            .ingress(ips);
        if !s.load_balancer {
            svc = svc.type_("ClusterIP");
        }
        let svc = svc.json();
        out.insert(ObjectRef::of_manifest(&svc).unwrap(), svc);
        for (j, sl) in s.slices.iter().enumerate() {
            let Some((owner, nodes)) = sl else { continue };
            let nodes: Vec<&str> = nodes.iter().map(|&n| NODES[n]).collect();
            let v = endpoint_slice(&format!("s{owner}"))
                .name(&format!("s{i}-{j}"))
                .ready_on_each(nodes)
                .json();
            out.insert(ObjectRef::of_manifest(&v).unwrap(), v);
        }
    }
    out
}

/// Plans `services` fully and incrementally (after `prev`) and compares.
fn step(
    planner: &mut Planner,
    prev: &BTreeMap<ObjectRef, Value>,
    now: &BTreeMap<ObjectRef, Value>,
) {
    let changed: BTreeSet<ObjectRef> = prev
        .keys()
        .chain(now.keys())
        .filter(|k| prev.get(*k) != now.get(*k))
        .cloned()
        .collect();
    let mut objs = config_objects();
    objs.extend(now.values().cloned());
    let snap = snapshot(objs);
    let (config, _) = valid_config(&snap);
    let inputs = Inputs {
        snapshot: &snap,
        config: &config,
        node: "node1",
        ignore_exclude_label: false,
    };
    let full = plan(&inputs);
    type PeerRoutes = BTreeMap<String, BTreeMap<IpNet, RouteAttrs>>;
    let before: Option<(u64, PeerRoutes)> = planner.cache.as_ref().map(|c| {
        let routes = c
            .plan
            .peers
            .iter()
            .map(|(k, p)| (k.clone(), p.routes.clone()));
        (c.plan.generation, routes.collect())
    });
    let inc = planner.plan(&inputs, Some(&changed));
    // The route changes turn the previous plan's routes into these, and are changes.
    if let Some((generation, mut routes)) = before {
        assert_eq!(inc.generation, generation + 1);
        let changes = inc.route_changes.as_ref().expect("an incremental plan");
        for (peer, changes) in changes {
            let routes = routes.get_mut(peer).expect("a known peer");
            for (prefix, attrs) in changes {
                let old = match attrs {
                    Some(a) => routes.insert(*prefix, a.clone()),
                    None => routes.remove(prefix),
                };
                assert_ne!(old.as_ref(), attrs.as_ref(), "not a change: {prefix}");
            }
        }
        for (k, p) in &inc.peers {
            assert_eq!(routes[k], p.routes, "{k}");
        }
    }
    assert_eq!(inc.services, full.services);
    assert_eq!(inc.node_exclusion, full.node_exclusion);
    assert_eq!(inc.unselected_peers, full.unselected_peers);
    let routes = |p: &NodePlan| {
        p.peers
            .iter()
            .map(|(k, v)| (k.clone(), v.routes.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(routes(inc), routes(&full));
}

fn svc_state() -> impl proptest::strategy::Strategy<Value = Option<SvcState>> {
    use proptest::prelude::*;
    let slice =
        proptest::option::weighted(0.7, (0..4usize, proptest::collection::vec(0..3usize, 0..3)));
    proptest::option::weighted(
        0.8,
        (
            proptest::bool::weighted(0.9),
            proptest::collection::vec(0..IPS.len(), 0..3),
            any::<bool>(),
            proptest::collection::vec(slice, 0..3),
        )
            .prop_map(|(load_balancer, ips, local, slices)| SvcState {
                load_balancer,
                ips,
                local,
                slices,
            }),
    )
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn incremental_plan_equals_full_plan(
        steps in proptest::collection::vec((0..4usize, svc_state()), 1..16)
    ) {
        let mut services: Vec<Option<SvcState>> = vec![None; 4];
        let mut planner = Planner::default();
        let mut prev = BTreeMap::new();
        // The first plan is a full one (nothing cached), from no Services at all.
        step(&mut planner, &prev, &prev);
        for (i, state) in steps {
            services[i] = state;
            let now = objects_of(&services);
            step(&mut planner, &prev, &now);
            prev = now;
        }
    }
}

#[test]
fn incremental_plan_follows_add_modify_delete() {
    let mut planner = Planner::default();
    let mut services: Vec<Option<SvcState>> = vec![None; 3];
    let mut prev = BTreeMap::new();
    step(&mut planner, &prev, &prev);
    let mut apply = |services: &[Option<SvcState>]| {
        let now = objects_of(services);
        step(&mut planner, &prev, &now);
        prev = now;
    };
    let announced = SvcState {
        load_balancer: true,
        ips: vec![0],
        local: false,
        slices: vec![Some((0, vec![0]))],
    };
    services[0] = Some(announced.clone());
    apply(&services);
    // A second Service in the same aggregate, then the first one's slice moves to it.
    services[1] = Some(SvcState {
        ips: vec![1, 2],
        slices: vec![],
        ..announced.clone()
    });
    apply(&services);
    services[1].as_mut().unwrap().slices = vec![Some((1, vec![1]))];
    services[0].as_mut().unwrap().slices = vec![Some((1, vec![0]))];
    apply(&services);
    services[0] = None;
    apply(&services);
    services[1] = None;
    apply(&services);
}

/// Service `s{i}` at `ip`, as the timing tests create and change it.
fn timed_service(i: usize, ip: &str) -> Value {
    lb_service(&format!("s{i}"), &[ip], "Cluster")
}

/// `n` Services at `ip(i)`, each with a slice of ready endpoints on node1 and node2.
fn timed_services(n: usize, ip: impl Fn(usize) -> String) -> Vec<Value> {
    (0..n)
        .flat_map(|i| {
            [
                timed_service(i, &ip(i)),
                endpoint_slice(&format!("s{i}"))
                    .name(&format!("s{i}-x"))
                    .ready_on_each(["node1", "node2"])
                    .json(),
            ]
        })
        .collect()
}

/// Prints the time of one Service change at 10,000 Services, full plan and incremental.
/// `cargo test -p metalnet-speaker --release plan_timing -- --ignored --nocapture`
#[test]
#[ignore]
fn plan_timing_at_10000_services() {
    const N: usize = 10_000;
    let mut objs = config_objects();
    objs.extend(timed_services(N, |i| {
        format!("2001:db8:0:1::{:x}", 0x200 + (i % 16))
    }));
    let snap = snapshot(objs.clone());
    let (config, _) = valid_config(&snap);
    let inputs = |snap: &'_ Snapshot, config: &'_ ParsedConfig| -> NodePlan {
        plan(&Inputs {
            snapshot: snap,
            config,
            node: "node1",
            ignore_exclude_label: false,
        })
    };
    let mut planner = Planner::default();
    planner.plan(
        &Inputs {
            snapshot: &snap,
            config: &config,
            node: "node1",
            ignore_exclude_label: false,
        },
        None,
    );
    // One Service changes its address.
    let changed_svc = timed_service(42, "192.0.2.201");
    let changed = BTreeSet::from([ObjectRef::of_manifest(&changed_svc).unwrap()]);
    objs.push(changed_svc);
    let snap2 = snapshot(objs);
    let t = std::time::Instant::now();
    let full = inputs(&snap2, &config);
    let full_time = t.elapsed();
    let t = std::time::Instant::now();
    let inc = planner.plan(
        &Inputs {
            snapshot: &snap2,
            config: &config,
            node: "node1",
            ignore_exclude_label: false,
        },
        Some(&changed),
    );
    let inc_time = t.elapsed();
    assert_eq!(inc.services, full.services);
    let t = std::time::Instant::now();
    let shared = inc.shared_services();
    let share_time = t.elapsed();
    assert_eq!(shared.len(), N);
    let t = std::time::Instant::now();
    let deep: Vec<ServiceBgp> = inc.services.iter().map(|s| (**s).clone()).collect();
    let deep_time = t.elapsed();
    assert_eq!(deep.len(), N);
    println!(
        "{N} Services, one changed: full plan {full_time:?}, incremental {inc_time:?} (+ {share_time:?} to share the per-Service view; a deep copy would take {deep_time:?})"
    );
}

/// Prints the time of one Service change at 10,000 routes (one per Service, two peers):
/// the incremental plan, and what the sessions then do with it.
/// `cargo test -p metalnet-speaker --release plan_timing -- --ignored --nocapture`
#[test]
#[ignore]
fn plan_timing_at_10000_routes() {
    use metalnet::bgp::rib;
    const N: usize = 10_000;
    let mut objs = vec![
        node1().label("zone", "a").ready().json(),
        pool("big", ["2001:db8:100::/112", "192.0.2.192/26"]).json(),
        bgp_peer("router", "192.0.2.1", 64513, 64512).json(),
        bgp_peer("other", "192.0.2.2", 64513, 64512).json(),
        bgp_advertisement("all")
            .with_spec(json!({"localPref": 50, "communities": ["64513:1"]}))
            .json(),
    ];
    objs.extend(timed_services(N, |i| format!("2001:db8:100::{:x}", i + 1)));
    let snap = snapshot(objs.clone());
    let (config, problems) = valid_config(&snap);
    assert!(problems.iter().all(|p| !p.is_error()), "{problems:?}");
    fn inputs<'a>(snapshot: &'a Snapshot, config: &'a ParsedConfig) -> Inputs<'a> {
        Inputs {
            snapshot,
            config,
            node: "node1",
            ignore_exclude_label: false,
        }
    }
    let neg = metalnet::bgp::Negotiated {
        peer_as: 64512,
        peer_id: "192.0.2.1".parse().unwrap(),
        local_id: "192.0.2.11".parse().unwrap(),
        local_addr: "2001:db8::11".parse().unwrap(),
        hold_time: 90,
        keepalive_time: 30,
        ctx: Default::default(),
        families: vec![
            metalnet::bgp::fsm::IPV4_UNICAST,
            metalnet::bgp::fsm::IPV6_UNICAST,
        ],
        route_refresh: true,
        graceful_restart: false,
        ibgp: false,
    };
    let mut planner = Planner::default();
    let first = planner.plan(&inputs(&snap, &config), None);
    assert_eq!(first.peers.len(), 2);
    // What each session advertised after the first plan.
    let mut advertised: BTreeMap<String, BTreeMap<IpNet, rib::Announced>> = first
        .peers
        .iter()
        .map(|(k, p)| (k.clone(), rib::outgoing(&p.routes, &neg)))
        .collect();
    assert!(advertised.values().all(|a| a.len() == N));
    // The sessions' tables, as started from the first plan.
    let mut desired: BTreeMap<String, rib::DesiredRoutes> = first
        .peers
        .iter()
        .map(|(k, p)| {
            let mut d = rib::DesiredRoutes::new(p.routes.clone());
            d.take_changes();
            (k.clone(), d)
        })
        .collect();
    // One Service changes its address.
    let changed_svc = timed_service(42, "2001:db8:100::ffff");
    let changed = BTreeSet::from([ObjectRef::of_manifest(&changed_svc).unwrap()]);
    objs.push(changed_svc);
    let snap2 = snapshot(objs);
    // A full plan first, as the other planning of the daemon would (the snapshot decodes
    // its objects on first use).
    let full = plan(&inputs(&snap2, &config));
    let t = std::time::Instant::now();
    let inc = planner.plan(&inputs(&snap2, &config), Some(&changed));
    let plan_time = t.elapsed();
    for (k, p) in &inc.peers {
        assert_eq!(p.routes, full.peers[k].routes);
    }
    // Before: per peer, the table copied to the session, which diffs all of it against
    // what it advertised.
    let t = std::time::Instant::now();
    let mut changes = 0;
    for (k, p) in &inc.peers {
        let desired = p.routes.clone();
        let want = rib::outgoing(&desired, &neg);
        let (announce, withdraw) = rib::diff(&advertised[k], &want);
        changes += announce.len() + withdraw.len();
    }
    let whole_time = t.elapsed();
    assert_eq!(changes, 4, "per peer: one withdrawn, one announced");
    // Now: per peer, the plan's route changes, and the session diffs those prefixes only.
    let t = std::time::Instant::now();
    let mut changes = 0;
    for (k, d) in &mut desired {
        let Some(c) = inc.route_changes.as_ref().and_then(|c| c.get(k)) else {
            continue;
        };
        d.update(c.iter().map(|(p, a)| (*p, a.clone())));
        let rib::DesiredChanges::Prefixes(prefixes) = d.take_changes() else {
            panic!("a change, not a new table");
        };
        let have = advertised.get_mut(k).unwrap();
        let (announce, withdraw) = rib::diff_prefixes(have, d.routes(), &prefixes, &neg);
        changes += announce.len() + withdraw.len();
        rib::apply_diff(have, announce, &withdraw);
    }
    let delta_time = t.elapsed();
    assert_eq!(changes, 4, "per peer: one withdrawn, one announced");
    for (k, p) in &inc.peers {
        assert_eq!(advertised[k], rib::outgoing(&p.routes, &neg));
    }
    println!(
        "{N} routes to 2 peers, one Service changed: incremental plan {plan_time:?}; sessions: route changes + diff of those {delta_time:?} (copying each table + diffing all of it took {whole_time:?})"
    );
}
