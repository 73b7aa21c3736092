//! The routes learned from every session: best path per prefix (RFC 4271 §9.1.2 as far as
//! kube-router's GoBGP applies it), what a route reflector reflects to whom (RFC 4456,
//! ORIGINATOR_ID and CLUSTER_LIST loop checks), and the kernel routes this node wants:
//! direct via the next hop when it is on a connected subnet, nothing otherwise (the overlay
//! is not available on this kernel). Pure.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use metalnet::bgp::{ReceivedRoute, RouteAttrs};

use super::options::RoutingOptions;
use super::policy::{self, ServiceVip};
use super::topology::{self, NodeView, PeerKind, PeerPlan, PeerSpec};

/// A route this node wants in its kernel (main table, protocol 17).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelRoute {
    pub dst: IpNet,
    pub gateway: IpAddr,
}

/// A received route that is not used, and why (for `explain route`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub peer: IpAddr,
    pub prefix: IpNet,
    pub reason: String,
}

/// The best route for a prefix and the session it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Best {
    pub peer: IpAddr,
    pub route: ReceivedRoute,
}

/// Everything the router wants at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// The name of the node this is computed for.
    pub node: String,
    /// This node's pod CIDRs (announced, never learned).
    pub pod_cidrs: Vec<IpNet>,
    pub plan: PeerPlan,
    /// What each peer (by address) is sent.
    pub exports: BTreeMap<IpAddr, BTreeMap<IpNet, RouteAttrs>>,
    pub best: BTreeMap<IpNet, Best>,
    /// Keyed by destination.
    pub kernel: BTreeMap<IpNet, KernelRoute>,
    pub rejected: Vec<Rejected>,
    /// Imported routes that are not the best for their prefix, and what beat them.
    pub lost: Vec<Rejected>,
    pub vips: Vec<ServiceVip>,
}

/// The inputs of one computation.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub opts: &'a RoutingOptions,
    pub local: &'a NodeView,
    /// Every node, `local` included.
    pub nodes: &'a [NodeView],
    pub vips: &'a [ServiceVip],
    /// What each running session (by peer address) received.
    pub received: &'a BTreeMap<IpAddr, BTreeMap<IpNet, ReceivedRoute>>,
    /// The subnets of this node's interfaces (for direct routes).
    pub connected: &'a [IpNet],
}

/// LOCAL_PREF as compared: routes from eBGP carry none and count as the default.
fn local_pref(r: &ReceivedRoute) -> u32 {
    r.local_pref
        .unwrap_or(metalnet::bgp::rib::DEFAULT_LOCAL_PREF)
}

/// The BGP identifier a peer runs with, as far as it is known: the identifier the peer
/// node's options give it, else its address when that is IPv4. ORIGINATOR_ID, when a
/// reflector set one, takes its place for the routes that carry it.
fn peer_router_id(opts: &RoutingOptions, nodes: &[NodeView], peer: &PeerSpec) -> Option<Ipv4Addr> {
    let node_id = match &peer.kind {
        PeerKind::Node { name } => nodes
            .iter()
            .find(|n| &n.name == name)
            .and_then(|n| topology::router_id(opts, n).ok())
            // A fixed --router-id is per node and unknown to the others.
            .filter(|_| !matches!(opts.router_id, super::options::RouterIdChoice::Fixed(_))),
        _ => None,
    };
    node_id.or(match peer.address {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    })
}

struct Candidate<'a> {
    peer: &'a PeerSpec,
    route: &'a ReceivedRoute,
    id: Option<Ipv4Addr>,
}

/// RFC 4271 §9.1.2.2 as GoBGP applies it, best first; returns the ordering and, when the
/// second loses, the step that decided.
fn compare(a: &Candidate<'_>, b: &Candidate<'_>) -> (Ordering, &'static str) {
    let steps: [(&'static str, Ordering); 7] = [
        (
            "LOCAL_PREF (higher wins)",
            local_pref(b.route).cmp(&local_pref(a.route)),
        ),
        (
            "AS_PATH length (shorter wins)",
            a.route.as_path.len().cmp(&b.route.as_path.len()),
        ),
        (
            "ORIGIN (IGP < EGP < incomplete)",
            a.route.origin.cmp(&b.route.origin),
        ),
        (
            "MED from the same neighbour AS (lower wins)",
            if a.route.as_path.first() == b.route.as_path.first() {
                a.route.med.unwrap_or(0).cmp(&b.route.med.unwrap_or(0))
            } else {
                Ordering::Equal
            },
        ),
        // eBGP (true) over iBGP.
        ("eBGP over iBGP", a.peer.is_ibgp().cmp(&b.peer.is_ibgp())),
        (
            "router id (lower wins)",
            match (a.id, b.id) {
                (Some(x), Some(y)) => x.cmp(&y),
                _ => Ordering::Equal,
            },
        ),
        (
            "CLUSTER_LIST length (shorter wins)",
            a.route.cluster_list.len().cmp(&b.route.cluster_list.len()),
        ),
    ];
    for (why, o) in steps {
        if o != Ordering::Equal {
            return (o, why);
        }
    }
    (
        a.peer.address.cmp(&b.peer.address),
        "peer address (lower wins)",
    )
}

/// Why a received route is not even a candidate: the import policy and the loop checks.
fn unusable(
    inputs: &Inputs<'_>,
    plan: &PeerPlan,
    peer: &PeerSpec,
    prefix: &IpNet,
    r: &ReceivedRoute,
) -> Option<String> {
    if let Some(why) = policy::import_rejects(prefix, inputs.local, inputs.vips) {
        return Some(why);
    }
    if let (Some(ours), Some(theirs)) = (plan.router_id, r.originator_id)
        && ours == theirs
    {
        return Some(format!(
            "ORIGINATOR_ID {theirs} is our router id (a reflected copy of our own route)"
        ));
    }
    if let Some(cluster) = plan.cluster_id
        && r.cluster_list.contains(&cluster)
    {
        return Some(format!(
            "CLUSTER_LIST holds our cluster id {cluster} (a reflection loop)"
        ));
    }
    if !peer.is_ibgp() && r.as_path.contains(&peer.local_asn) {
        return Some(format!("AS_PATH holds our ASN {} (a loop)", peer.local_asn));
    }
    if r.next_hop.is_unspecified() || inputs.local.addresses.contains(&r.next_hop) {
        return Some(format!("next hop {} is this node", r.next_hop));
    }
    None
}

/// What a route reflector sends `to` of the best routes (RFC 4456 §6): routes from clients
/// to every iBGP peer but the one they came from, routes from non-client iBGP peers to
/// clients only; eBGP routes are not passed on (kube-router's nodes announce only their
/// own). ORIGINATOR_ID is set when absent, our cluster id goes first in CLUSTER_LIST,
/// next hop and path stay.
fn reflected_for(
    plan: &PeerPlan,
    ids: &BTreeMap<IpAddr, Option<Ipv4Addr>>,
    best: &BTreeMap<IpNet, Best>,
    to: &PeerSpec,
) -> BTreeMap<IpNet, RouteAttrs> {
    let mut out = BTreeMap::new();
    let Some(cluster) = plan.cluster_id else {
        return out;
    };
    if !to.is_ibgp() {
        return out;
    }
    for (prefix, b) in best {
        let Some(from) = plan.peers.get(&b.peer) else {
            continue;
        };
        if !from.is_ibgp() || from.address == to.address {
            continue;
        }
        if !from.rr_client && !to.rr_client {
            continue;
        }
        let r = &b.route;
        let originator = r
            .originator_id
            .or(ids.get(&from.address).copied().flatten());
        let mut cluster_list = Vec::with_capacity(r.cluster_list.len() + 1);
        cluster_list.push(cluster);
        cluster_list.extend_from_slice(&r.cluster_list);
        out.insert(
            *prefix,
            RouteAttrs {
                next_hop: Some(r.next_hop),
                local_pref: r.local_pref,
                med: r.med,
                communities: r.communities.clone(),
                large_communities: r.large_communities.clone(),
                as_path: r.as_path.clone(),
                originator_id: originator,
                cluster_list,
            },
        );
    }
    out
}

/// From the inputs to the sessions, export tables and kernel routes wanted.
pub fn desired(inputs: Inputs<'_>) -> Desired {
    let plan = topology::plan_peers(inputs.opts, inputs.local, inputs.nodes);
    let ids: BTreeMap<IpAddr, Option<Ipv4Addr>> = plan
        .peers
        .iter()
        .map(|(a, p)| (*a, peer_router_id(inputs.opts, inputs.nodes, p)))
        .collect();
    let mut rejected = Vec::new();
    let mut lost = Vec::new();

    // Candidates per prefix, from planned sessions only (a session on its way out no
    // longer counts).
    let mut candidates: BTreeMap<IpNet, Vec<Candidate<'_>>> = BTreeMap::new();
    for (addr, routes) in inputs.received {
        let Some(peer) = plan.peers.get(addr) else {
            continue;
        };
        for (prefix, r) in routes {
            let prefix = prefix.trunc();
            if let Some(reason) = unusable(&inputs, &plan, peer, &prefix, r) {
                rejected.push(Rejected {
                    peer: *addr,
                    prefix,
                    reason,
                });
                continue;
            }
            candidates.entry(prefix).or_default().push(Candidate {
                peer,
                route: r,
                id: r.originator_id.or(ids.get(addr).copied().flatten()),
            });
        }
    }

    let mut best = BTreeMap::new();
    for (prefix, mut cands) in candidates {
        cands.sort_by(|a, b| compare(a, b).0);
        let Some((winner, rest)) = cands.split_first() else {
            continue;
        };
        for c in rest {
            let (_, why) = compare(winner, c);
            lost.push(Rejected {
                peer: c.peer.address,
                prefix,
                reason: format!(
                    "not best: lost to the route from {} on {why}",
                    winner.peer.address
                ),
            });
        }
        best.insert(
            prefix,
            Best {
                peer: winner.peer.address,
                route: winner.route.clone(),
            },
        );
    }

    let mut kernel = BTreeMap::new();
    for (prefix, b) in &best {
        let nh = b.route.next_hop;
        if inputs
            .connected
            .iter()
            .any(|c| c.contains(&nh) && c.addr().is_ipv4() == nh.is_ipv4())
        {
            kernel.insert(
                *prefix,
                KernelRoute {
                    dst: *prefix,
                    gateway: nh,
                },
            );
        } else {
            rejected.push(Rejected {
                peer: b.peer,
                prefix: *prefix,
                reason: format!(
                    "best route, but its next hop {nh} is on no connected subnet: nothing installed \
                     (kube-router would need its ipip/fou overlay, which this kernel lacks)"
                ),
            });
        }
    }

    let exports = plan
        .peers
        .iter()
        .map(|(addr, peer)| {
            let reflected = reflected_for(&plan, &ids, &best, peer);
            let table = policy::export_table(
                inputs.opts,
                &plan,
                inputs.local,
                peer,
                inputs.vips,
                &reflected,
            );
            (*addr, table)
        })
        .collect();
    Desired {
        node: inputs.local.name.clone(),
        pod_cidrs: inputs.local.pod_cidrs.clone(),
        plan,
        exports,
        best,
        kernel,
        rejected,
        lost,
        vips: inputs.vips.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::options::ExternalPeer;
    use crate::routing::policy::VipKind;
    use crate::routing::topology::testing::{node, with};
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn route(nh: &str) -> ReceivedRoute {
        ReceivedRoute {
            next_hop: ip(nh),
            origin: 0,
            as_path: vec![],
            med: None,
            local_pref: Some(100),
            communities: vec![],
            large_communities: vec![],
            originator_id: None,
            cluster_list: vec![],
            stale: false,
        }
    }

    type Received = BTreeMap<IpAddr, BTreeMap<IpNet, ReceivedRoute>>;

    fn recv(items: &[(&str, &str, ReceivedRoute)]) -> Received {
        let mut m: Received = BTreeMap::new();
        for (peer, prefix, r) in items {
            m.entry(ip(peer))
                .or_default()
                .insert(net(prefix), r.clone());
        }
        m
    }

    fn mesh() -> Vec<NodeView> {
        vec![
            node(
                "n1",
                &["192.0.2.1", "2001:db8::1"],
                &["10.244.1.0/24", "fd00:1::/64"],
            ),
            node(
                "n2",
                &["192.0.2.2", "2001:db8::2"],
                &["10.244.2.0/24", "fd00:2::/64"],
            ),
            node("n3", &["192.0.2.3"], &["10.244.3.0/24"]),
        ]
    }

    fn run(
        opts: &RoutingOptions,
        nodes: &[NodeView],
        local: usize,
        vips: &[ServiceVip],
        received: &Received,
        connected: &[IpNet],
    ) -> Desired {
        desired(Inputs {
            opts,
            local: &nodes[local],
            nodes,
            vips,
            received,
            connected,
        })
    }

    fn lan() -> Vec<IpNet> {
        vec![net("192.0.2.0/24"), net("2001:db8::/64")]
    }

    #[test]
    fn full_mesh_installs_direct_routes() {
        let nodes = mesh();
        let o = RoutingOptions::default();
        let rx = recv(&[
            ("192.0.2.2", "10.244.2.0/24", route("192.0.2.2")),
            ("192.0.2.2", "fd00:2::/64", route("2001:db8::2")),
            ("192.0.2.3", "10.244.3.0/24", route("192.0.2.3")),
        ]);
        let d = run(&o, &nodes, 0, &[], &rx, &lan());
        assert_eq!(d.kernel.len(), 3);
        assert_eq!(d.kernel[&net("fd00:2::/64")].gateway, ip("2001:db8::2"));
        assert!(d.rejected.is_empty() && d.lost.is_empty());
        assert_eq!(d.exports[&ip("192.0.2.2")].len(), 2);
        assert_eq!(
            d.exports[&ip("192.0.2.3")].len(),
            2,
            "IPv6 over the IPv4 session too"
        );
        assert_eq!(d.best[&net("10.244.3.0/24")].peer, ip("192.0.2.3"));
    }

    #[test]
    fn off_subnet_next_hop_installs_nothing() {
        let nodes = mesh();
        let rx = recv(&[("192.0.2.2", "10.244.2.0/24", route("198.51.100.7"))]);
        let d = run(&RoutingOptions::default(), &nodes, 0, &[], &rx, &lan());
        assert!(d.kernel.is_empty());
        assert!(d.best.contains_key(&net("10.244.2.0/24")));
        assert!(
            d.rejected[0].reason.contains("no connected subnet"),
            "{:?}",
            d.rejected
        );
    }

    #[test]
    fn import_policy_and_unplanned_sessions() {
        let nodes = mesh();
        let vips = vec![ServiceVip {
            address: ip("203.0.113.10"),
            kind: VipKind::LoadBalancer,
            service: "d/web".into(),
            advertise: false,
            local_only: false,
            has_local_endpoint: false,
        }];
        let rx = recv(&[
            ("192.0.2.2", "0.0.0.0/0", route("192.0.2.2")),
            ("192.0.2.2", "::/0", route("2001:db8::2")),
            ("192.0.2.2", "203.0.113.10/32", route("192.0.2.2")),
            ("192.0.2.2", "10.244.1.0/24", route("192.0.2.2")),
            ("192.0.2.9", "10.244.9.0/24", route("192.0.2.9")),
        ]);
        let d = run(&RoutingOptions::default(), &nodes, 0, &vips, &rx, &lan());
        assert!(d.kernel.is_empty() && d.best.is_empty());
        assert_eq!(d.rejected.len(), 4, "{:?}", d.rejected);
    }

    #[test]
    fn best_path_order() {
        let nodes = mesh();
        let o = RoutingOptions {
            global_peers: vec![ExternalPeer {
                address: ip("192.0.2.100"),
                asn: 65100,
                password: None,
                port: 179,
                multihop_ttl: None,
                local_address: None,
            }],
            ..RoutingOptions::default()
        };
        let p = "10.50.0.0/16";
        let best_of = |a: ReceivedRoute, b: ReceivedRoute| {
            let rx = recv(&[("192.0.2.2", p, a), ("192.0.2.3", p, b)]);
            let d = run(&o, &nodes, 0, &[], &rx, &lan());
            assert_eq!(d.lost.len(), 1);
            (d.best[&net(p)].peer, d.lost[0].reason.clone())
        };
        let r = route;
        let (w, why) = best_of(
            ReceivedRoute {
                local_pref: Some(50),
                ..r("192.0.2.2")
            },
            r("192.0.2.3"),
        );
        assert_eq!(w, ip("192.0.2.3"));
        assert!(why.contains("LOCAL_PREF"), "{why}");
        let (w, why) = best_of(
            r("192.0.2.2"),
            ReceivedRoute {
                as_path: vec![1],
                ..r("192.0.2.3")
            },
        );
        assert_eq!(w, ip("192.0.2.2"));
        assert!(why.contains("AS_PATH"));
        let (w, _) = best_of(
            ReceivedRoute {
                origin: 2,
                ..r("192.0.2.2")
            },
            r("192.0.2.3"),
        );
        assert_eq!(w, ip("192.0.2.3"));
        let (w, why) = best_of(
            ReceivedRoute {
                med: Some(10),
                ..r("192.0.2.2")
            },
            ReceivedRoute {
                med: Some(5),
                ..r("192.0.2.3")
            },
        );
        assert_eq!(w, ip("192.0.2.3"));
        assert!(why.contains("MED"));
        // Stale routes still count.
        let (w, why) = best_of(
            ReceivedRoute {
                stale: true,
                ..r("192.0.2.2")
            },
            r("192.0.2.3"),
        );
        assert_eq!(w, ip("192.0.2.2"));
        assert!(why.contains("router id"), "{why}");
        // eBGP over iBGP.
        let rx = recv(&[
            ("192.0.2.2", p, r("192.0.2.2")),
            (
                "192.0.2.100",
                p,
                ReceivedRoute {
                    local_pref: None,
                    ..r("192.0.2.100")
                },
            ),
        ]);
        let d = run(&o, &nodes, 0, &[], &rx, &lan());
        assert_eq!(d.best[&net(p)].peer, ip("192.0.2.100"));
        assert!(d.lost[0].reason.contains("iBGP"));
        // Our ASN in an eBGP path is a loop.
        let rx = recv(&[(
            "192.0.2.100",
            p,
            ReceivedRoute {
                as_path: vec![65100, 64512],
                ..r("192.0.2.100")
            },
        )]);
        let d = run(&o, &nodes, 0, &[], &rx, &lan());
        assert!(d.best.is_empty() && d.rejected[0].reason.contains("AS_PATH"));
    }

    fn rr_nodes() -> Vec<NodeView> {
        let id: Ipv4Addr = "0.0.0.42".parse().unwrap();
        vec![
            with(node("s1", &["192.0.2.1"], &["10.244.1.0/24"]), |b| {
                b.rr_server = Some(id)
            }),
            with(node("s2", &["192.0.2.2"], &["10.244.2.0/24"]), |b| {
                b.rr_server = Some(id)
            }),
            with(node("c1", &["192.0.2.3"], &["10.244.3.0/24"]), |b| {
                b.rr_client = Some(id)
            }),
            with(node("c2", &["192.0.2.4"], &["10.244.4.0/24"]), |b| {
                b.rr_client = Some(id)
            }),
        ]
    }

    #[test]
    fn reflector_reflects_by_rfc4456() {
        let nodes = rr_nodes();
        let o = RoutingOptions::default();
        let rx = recv(&[
            ("192.0.2.3", "10.244.3.0/24", route("192.0.2.3")),
            ("192.0.2.2", "10.244.2.0/24", route("192.0.2.2")),
        ]);
        let d = run(&o, &nodes, 0, &[], &rx, &lan());
        // The client's route goes to s2 and c2, not back to c1.
        let c = net("10.244.3.0/24");
        let to_s2 = &d.exports[&ip("192.0.2.2")][&c];
        assert_eq!(to_s2.next_hop, Some(ip("192.0.2.3")));
        assert_eq!(to_s2.originator_id, Some("192.0.2.3".parse().unwrap()));
        assert_eq!(
            to_s2.cluster_list,
            vec!["0.0.0.42".parse::<Ipv4Addr>().unwrap()]
        );
        assert!(d.exports[&ip("192.0.2.4")].contains_key(&c));
        assert!(!d.exports[&ip("192.0.2.3")].contains_key(&c));
        // The non-client s2's route goes to the clients only.
        let n = net("10.244.2.0/24");
        assert!(d.exports[&ip("192.0.2.3")].contains_key(&n));
        assert!(d.exports[&ip("192.0.2.4")].contains_key(&n));
        assert!(!d.exports[&ip("192.0.2.2")].contains_key(&n));
        // A client reflects nothing.
        let rx = recv(&[("192.0.2.1", "10.244.2.0/24", route("192.0.2.2"))]);
        let d = run(&o, &nodes, 2, &[], &rx, &lan());
        assert_eq!(d.exports[&ip("192.0.2.1")].len(), 1);
        assert_eq!(d.kernel[&n].gateway, ip("192.0.2.2"));
    }

    #[test]
    fn reflection_loops_are_dropped() {
        let nodes = rr_nodes();
        let o = RoutingOptions::default();
        let rx = recv(&[
            (
                "192.0.2.2",
                "10.244.8.0/24",
                ReceivedRoute {
                    cluster_list: vec!["0.0.0.42".parse().unwrap()],
                    ..route("192.0.2.8")
                },
            ),
            (
                "192.0.2.3",
                "10.244.9.0/24",
                ReceivedRoute {
                    originator_id: Some("192.0.2.1".parse().unwrap()),
                    ..route("192.0.2.9")
                },
            ),
        ]);
        let d = run(&o, &nodes, 0, &[], &rx, &lan());
        assert!(d.best.is_empty());
        assert_eq!(d.rejected.len(), 2);
        assert!(d.rejected.iter().any(|r| r.reason.contains("CLUSTER_LIST")));
        assert!(
            d.rejected
                .iter()
                .any(|r| r.reason.contains("ORIGINATOR_ID"))
        );
        // A reflected route keeps its originator and grows the cluster list.
        let rx = recv(&[(
            "192.0.2.2",
            "10.244.7.0/24",
            ReceivedRoute {
                originator_id: Some("192.0.2.7".parse().unwrap()),
                cluster_list: vec!["0.0.0.7".parse().unwrap()],
                ..route("192.0.2.7")
            },
        )]);
        let d = run(&o, &nodes, 0, &[], &rx, &lan());
        let a = &d.exports[&ip("192.0.2.3")][&net("10.244.7.0/24")];
        assert_eq!(a.originator_id, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(
            a.cluster_list,
            vec![
                "0.0.0.42".parse::<Ipv4Addr>().unwrap(),
                "0.0.0.7".parse().unwrap()
            ]
        );
    }

    fn arb_route() -> impl Strategy<Value = ReceivedRoute> {
        (
            0u8..3,
            proptest::collection::vec(64512u32..64515, 0..3),
            proptest::option::of(0u32..3),
            proptest::option::of(prop_oneof![Just(100u32), Just(200)]),
            1u8..5,
            any::<bool>(),
        )
            .prop_map(
                |(origin, as_path, med, local_pref, nh, stale)| ReceivedRoute {
                    origin,
                    as_path,
                    med,
                    local_pref,
                    stale,
                    ..route(&format!("192.0.2.{nh}"))
                },
            )
    }

    fn arb_prefix() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            Just(net("0.0.0.0/0")),
            Just(net("::/0")),
            Just(net("203.0.113.10/32")),
            Just(net("10.244.1.0/24")),
            Just(net("10.244.1.128/25")),
            Just(net("10.244.2.0/24")),
            Just(net("10.50.0.0/16")),
            Just(net("fd00:2::/64")),
        ]
    }

    proptest! {
        #[test]
        fn kernel_never_gets_vips_defaults_or_own_pod_cidrs(
            items in proptest::collection::vec((1u8..4, arb_prefix(), arb_route()), 0..20),
            local in 0usize..3,
        ) {
            let nodes = mesh();
            let vips = vec![ServiceVip {
                address: ip("203.0.113.10"), kind: VipKind::ClusterIp, service: "d/s".into(),
                advertise: false, local_only: false, has_local_endpoint: false,
            }];
            let mut rx: Received = BTreeMap::new();
            for (p, prefix, r) in &items {
                rx.entry(ip(&format!("192.0.2.{p}"))).or_default().insert(*prefix, r.clone());
            }
            let d = run(&RoutingOptions::default(), &nodes, local, &vips, &rx, &lan());
            for k in d.kernel.keys() {
                prop_assert!(k.prefix_len() != 0);
                prop_assert!(!vips.iter().any(|v| IpNet::from(v.address) == *k));
                prop_assert!(!nodes[local].pod_cidrs.iter().any(|c| c.contains(k)), "{k}");
            }
            // Nothing depends on the order of the nodes or connected subnets.
            let mut rev = nodes.clone();
            rev.reverse();
            let local_rev = rev.iter().position(|n| n.name == nodes[local].name).unwrap();
            let mut conn = lan();
            conn.reverse();
            let d2 = run(&RoutingOptions::default(), &rev, local_rev, &vips, &rx, &conn);
            prop_assert_eq!(d, d2);
        }
    }
}

#[cfg(test)]
mod scale {
    use super::*;
    use crate::routing::policy::VipKind;
    use crate::routing::topology::testing::node;

    /// 50 nodes, 10,000 learned routes from 49 sessions and 1,000 VIPs: one pass stays
    /// well inside the daemon's budget (printed with `--nocapture`).
    #[test]
    fn ten_thousand_routes() {
        let nodes: Vec<NodeView> = (1..=50)
            .map(|i| {
                node(
                    &format!("n{i}"),
                    &[&format!("192.0.2.{i}")],
                    &[&format!("10.{i}.0.0/24")],
                )
            })
            .collect();
        let vips: Vec<ServiceVip> = (0..1000u32)
            .map(|i| ServiceVip {
                address: IpAddr::V4(Ipv4Addr::from(0xcb00_7100 + i)),
                kind: VipKind::LoadBalancer,
                service: format!("d/s{i}"),
                advertise: true,
                local_only: false,
                has_local_endpoint: false,
            })
            .collect();
        let mut received: BTreeMap<IpAddr, BTreeMap<IpNet, ReceivedRoute>> = BTreeMap::new();
        for r in 0..10_000u32 {
            let peer = 2 + (r % 49);
            let nh: IpAddr = format!("192.0.2.{peer}").parse().unwrap();
            let prefix =
                IpNet::new(IpAddr::V4(Ipv4Addr::from(0x6400_0000 + (r << 8))), 24).unwrap();
            received.entry(nh).or_default().insert(
                prefix,
                ReceivedRoute {
                    next_hop: nh,
                    origin: 0,
                    as_path: vec![],
                    med: None,
                    local_pref: Some(100),
                    communities: vec![],
                    large_communities: vec![],
                    originator_id: None,
                    cluster_list: vec![],
                    stale: false,
                },
            );
        }
        let opts = RoutingOptions::default();
        let connected = ["192.0.2.0/24".parse().unwrap()];
        let start = std::time::Instant::now();
        let d = desired(Inputs {
            opts: &opts,
            local: &nodes[0],
            nodes: &nodes,
            vips: &vips,
            received: &received,
            connected: &connected,
        });
        let took = start.elapsed();
        println!("desired(): 50 nodes, 10000 routes, 1000 VIPs in {took:?}");
        assert_eq!(d.kernel.len(), 10_000);
        assert_eq!(d.plan.peers.len(), 49);
    }
}
