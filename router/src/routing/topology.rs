//! Which BGP sessions this node should have, by kube-router's rules (`bgp_peers.go`):
//! full mesh or same-ASN peering among nodes, route-reflector clients peering only with
//! servers, external peers from the flags or else from the node's annotations. Pure: the
//! daemon feeds it the nodes and options and diffs the result against running sessions.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;
use metalnet::bgp::Password;

use super::annotations::{AnnotationProblem, NodeBgp};
use super::options::{RouterIdChoice, RoutingOptions};

/// A node as the routing logic sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    /// The node's InternalIP addresses (else ExternalIP) in the order the Node lists them;
    /// the first is the primary address (kube-router's `GetPrimaryNodeIP`): the one nodes
    /// peer over and the router id comes from.
    pub addresses: Vec<IpAddr>,
    /// `spec.podCIDRs`, else `spec.podCIDR`, else the pod-cidr annotations.
    pub pod_cidrs: Vec<IpNet>,
    /// The node's annotations, last good value of each.
    pub bgp: NodeBgp,
}

/// Who a session is with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerKind {
    /// Another node of the cluster (iBGP, or eBGP between per-node ASNs).
    Node { name: String },
    /// An external router from `--peer-router-*`.
    GlobalExternal,
    /// An external router from this node's `kube-router.io/peers` (or `peer.*`) annotation.
    AnnotatedExternal,
}

/// Everything a session is built from; any change to it resets that session (and only it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub kind: PeerKind,
    pub address: IpAddr,
    pub port: u16,
    pub local_asn: u32,
    pub peer_asn: u32,
    pub local_address: Option<IpAddr>,
    pub router_id: Ipv4Addr,
    pub password: Option<Password>,
    pub multihop_ttl: Option<u8>,
    /// We are a route reflector and this peer is one of our clients.
    pub rr_client: bool,
    /// Wait for the peer's connection instead of connecting (between two nodes exactly one
    /// side connects, so connections never collide).
    pub passive: bool,
    pub hold_time: Duration,
    /// Graceful restart time announced, when enabled.
    pub graceful_restart: Option<Duration>,
}

impl PeerSpec {
    pub fn is_ibgp(&self) -> bool {
        self.local_asn == self.peer_asn
    }
    pub fn is_external(&self) -> bool {
        !matches!(self.kind, PeerKind::Node { .. })
    }
}

/// A node this node does not peer with, and why (for `explain node`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub node: String,
    pub reason: String,
}

/// The sessions this node should have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPlan {
    /// Our ASN; `None` when BGP cannot start (e.g. full mesh off and no `node.asn`).
    pub local_asn: Option<u32>,
    pub router_id: Option<Ipv4Addr>,
    /// Our route-reflector cluster id when this node is a server.
    pub cluster_id: Option<Ipv4Addr>,
    /// Keyed by peer address: one session per address.
    pub peers: BTreeMap<IpAddr, PeerSpec>,
    /// Other nodes not peered with (and external routers that cannot be, named
    /// `external router ADDRESS`).
    pub skipped: Vec<Skipped>,
    /// Why BGP does not run at all on this node, when `local_asn` is `None`.
    pub not_running: Option<String>,
    /// Why each peer of `peers` is one (for `explain node`).
    pub reasons: BTreeMap<IpAddr, String>,
}

impl NodeView {
    /// The primary address (the first InternalIP, else the first ExternalIP).
    pub fn primary(&self) -> Option<IpAddr> {
        self.addresses.first().copied()
    }

    /// This node's first address of the family of `like`.
    pub fn address_like(&self, like: &IpAddr) -> Option<IpAddr> {
        self.addresses
            .iter()
            .find(|a| a.is_ipv4() == like.is_ipv4())
            .copied()
    }

    /// This node's first address of the family of `prefix`.
    pub fn address_for(&self, prefix: &IpNet) -> Option<IpAddr> {
        self.addresses
            .iter()
            .find(|a| a.is_ipv4() == matches!(prefix, IpNet::V4(_)))
            .copied()
    }

    /// The route-reflector role the annotations give: `rr.server` wins over `rr.client`,
    /// as in kube-router.
    pub fn rr_role(&self) -> RrRole {
        match (self.bgp.rr_server, self.bgp.rr_client) {
            (Some(id), _) => RrRole::Server(id),
            (None, Some(id)) => RrRole::Client(id),
            (None, None) => RrRole::None,
        }
    }
}

/// A node's route-reflector role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RrRole {
    None,
    /// `rr.server`, with its cluster id.
    Server(Ipv4Addr),
    /// `rr.client`: peers only with servers.
    Client(Ipv4Addr),
}

/// kube-router's `--router-id generate`: FNV-1a 32 over the address as Go holds it
/// (`net.ParseIP` gives 16 bytes, IPv4 mapped into IPv6), written as an IPv4 address.
pub fn generated_router_id(address: IpAddr) -> Ipv4Addr {
    let bytes = match address {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    Ipv4Addr::from(h)
}

/// This node's BGP identifier per `--router-id`.
pub fn router_id(opts: &RoutingOptions, local: &NodeView) -> Result<Ipv4Addr, String> {
    match opts.router_id {
        RouterIdChoice::Fixed(id) => Ok(id),
        RouterIdChoice::Generate => local
            .primary()
            .map(generated_router_id)
            .ok_or_else(|| "the node has no InternalIP or ExternalIP address".to_string()),
        RouterIdChoice::NodeAddress => match local.primary() {
            Some(IpAddr::V4(a)) => Ok(a),
            Some(IpAddr::V6(a)) => Err(format!(
                "the primary address {a} is IPv6: set --router-id (an IPv4 address or generate)"
            )),
            None => Err("the node has no InternalIP or ExternalIP address".to_string()),
        },
    }
}

/// This node's ASN, or why BGP cannot start: with the full mesh every node runs the
/// cluster ASN (kube-router ignores `node.asn` then); without it `node.asn` is required.
pub fn local_asn(opts: &RoutingOptions, local: &NodeView) -> Result<u32, String> {
    if opts.nodes_full_mesh {
        Ok(opts.cluster_asn)
    } else {
        local.bgp.asn.ok_or_else(|| {
            format!(
                "--nodes-full-mesh=false and the node has no (valid) {} annotation",
                super::annotations::NODE_ASN
            )
        })
    }
}

/// Why `local` and `other` do not peer, or `None` when they do. Symmetric: both nodes
/// reach the same answer, so a session is wanted by both sides or by neither.
fn node_pair_skip(opts: &RoutingOptions, local: &NodeView, other: &NodeView) -> Option<String> {
    if !opts.enable_ibgp {
        return Some("--enable-ibgp=false: no BGP sessions between nodes".into());
    }
    let (Some(a), Some(b)) = (local.primary(), other.primary()) else {
        return Some("it has no InternalIP or ExternalIP address".into());
    };
    if a.is_ipv4() != b.is_ipv4() {
        return Some(format!(
            "its primary address {b} and ours {a} are of different families"
        ));
    }
    match (local.rr_role(), other.rr_role()) {
        (RrRole::Client(_), RrRole::Client(_) | RrRole::None) => {
            return Some(
                "we are a route-reflector client (rr.client): clients peer only with nodes carrying rr.server"
                    .into(),
            );
        }
        (RrRole::None, RrRole::Client(_)) => {
            return Some(
                "it is a route-reflector client (rr.client) and we are not a route-reflector server"
                    .into(),
            );
        }
        _ => {}
    }
    if !opts.nodes_full_mesh {
        match (local.bgp.asn, other.bgp.asn) {
            (_, None) => {
                return Some(format!(
                    "--nodes-full-mesh=false and it has no (valid) {} annotation",
                    super::annotations::NODE_ASN
                ));
            }
            (Some(ours), Some(theirs)) if ours != theirs => {
                return Some(format!(
                    "--nodes-full-mesh=false and its ASN {theirs} differs from ours {ours}"
                ));
            }
            _ => {}
        }
    }
    None
}

/// The sessions `local` should have with the other `nodes` and external peers, by
/// kube-router's rules. `nodes` may or may not contain `local` (matched by name).
pub fn plan_peers(opts: &RoutingOptions, local: &NodeView, nodes: &[NodeView]) -> PeerPlan {
    let mut plan = PeerPlan::default();
    let others = {
        let mut o: Vec<&NodeView> = nodes.iter().filter(|n| n.name != local.name).collect();
        o.sort_by(|a, b| a.name.cmp(&b.name));
        o.dedup_by(|a, b| a.name == b.name);
        o
    };
    let start = local_asn(opts, local).and_then(|asn| Ok((asn, router_id(opts, local)?)));
    let (asn, id) = match start {
        Ok(x) => x,
        Err(reason) => {
            plan.skipped = others
                .iter()
                .map(|n| Skipped {
                    node: n.name.clone(),
                    reason: format!("BGP does not run on this node: {reason}"),
                })
                .collect();
            plan.not_running = Some(reason);
            return plan;
        }
    };
    plan.local_asn = Some(asn);
    plan.router_id = Some(id);
    let role = local.rr_role();
    if let RrRole::Server(cluster) = role {
        plan.cluster_id = Some(cluster);
    }
    let graceful_restart = opts.graceful_restart.then_some(opts.graceful_restart_time);
    let mut owners: BTreeMap<IpAddr, Vec<&str>> = BTreeMap::new();
    for n in others.iter().copied().chain(std::iter::once(local)) {
        if let Some(a) = n.primary() {
            owners.entry(a).or_default().push(&n.name);
        }
    }
    owners.values_mut().for_each(|v| v.sort_unstable());

    for other in others {
        if let Some(reason) = node_pair_skip(opts, local, other) {
            plan.skipped.push(Skipped {
                node: other.name.clone(),
                reason,
            });
            continue;
        }
        // Both present and of the same family: checked by node_pair_skip.
        let (Some(ours), Some(theirs)) = (local.primary(), other.primary()) else {
            continue;
        };
        // A primary address several nodes claim makes the session ambiguous: nobody peers
        // with it, which every node can tell alike.
        let claimed = |a: &IpAddr| owners.get(a).map_or(0, Vec::len) > 1;
        if claimed(&ours) || claimed(&theirs) {
            let (addr, names) = if claimed(&theirs) {
                (theirs, &owners[&theirs])
            } else {
                (ours, &owners[&ours])
            };
            plan.skipped.push(Skipped {
                node: other.name.clone(),
                reason: format!(
                    "address {addr} is the primary address of several nodes ({})",
                    names.join(", ")
                ),
            });
            continue;
        }
        let spec = PeerSpec {
            kind: PeerKind::Node {
                name: other.name.clone(),
            },
            address: theirs,
            port: opts.bgp_port,
            local_asn: asn,
            // Nodes always peer within one ASN: the cluster ASN, or with the full mesh off
            // only nodes of the same `node.asn`.
            peer_asn: asn,
            local_address: Some(ours),
            router_id: id,
            password: None,
            multihop_ttl: None,
            rr_client: matches!(role, RrRole::Server(_)) && other.bgp.rr_client.is_some(),
            // The lower address connects; the higher one waits for it.
            passive: ours > theirs,
            // kube-router leaves GoBGP's 90 s on node sessions; here --bgp-holdtime covers
            // them too, so a shorter one also finds a dead node sooner.
            hold_time: opts.hold_time,
            graceful_restart,
        };
        let reason = match (role, other.rr_role()) {
            (RrRole::Server(c), _) if spec.rr_client => {
                format!("we are a route reflector (cluster id {c}) and it is our client")
            }
            (RrRole::Server(_), _) => {
                "we are a route reflector: reflectors peer with every node".into()
            }
            (RrRole::Client(_), _) => {
                "we are a route-reflector client and it is a route reflector".into()
            }
            (RrRole::None, RrRole::Server(_)) => {
                "it is a route reflector: reflectors peer with every node".into()
            }
            _ if opts.nodes_full_mesh => {
                format!("full mesh (--nodes-full-mesh): iBGP in the cluster AS {asn}")
            }
            _ => format!("--nodes-full-mesh=false and it has our node.asn {asn}"),
        };
        plan.reasons.insert(theirs, reason);
        plan.peers.insert(theirs, spec);
    }

    let (kind, external) = if !opts.global_peers.is_empty() {
        (PeerKind::GlobalExternal, &opts.global_peers)
    } else {
        (PeerKind::AnnotatedExternal, &local.bgp.peers)
    };
    let why = match kind {
        PeerKind::GlobalExternal => "external router from --peer-router-ips",
        _ => "external router from this node's kube-router.io/peers (or peer.*) annotation",
    };
    for peer in external {
        if local.addresses.contains(&peer.address) || plan.peers.contains_key(&peer.address) {
            // A node of the cluster or ourselves: the node session stands.
            continue;
        }
        // The source is the node's primary address unless the peer names one (kube-router
        // sets it so the router sees the address it was configured with); of another
        // family it cannot work, and kube-router skips the peer.
        let source = peer.local_address.or(local.primary());
        if let Some(src) = source
            && src.is_ipv4() != peer.address.is_ipv4()
        {
            plan.skipped.push(Skipped {
                node: format!("external router {}", peer.address),
                reason: format!(
                    "our local address {src} and its address are of different families (set localip)"
                ),
            });
            continue;
        }
        plan.reasons.insert(peer.address, why.to_string());
        plan.peers.insert(
            peer.address,
            PeerSpec {
                kind: kind.clone(),
                address: peer.address,
                port: peer.port,
                local_asn: asn,
                peer_asn: peer.asn,
                local_address: source,
                router_id: id,
                password: peer.password.clone(),
                multihop_ttl: peer.multihop_ttl.or(opts.peer_multihop_ttl),
                rr_client: false,
                passive: false,
                hold_time: opts.hold_time,
                graceful_restart,
            },
        );
    }
    plan
}

/// A Node as the routing logic sees it, with the problems of its annotations. An
/// annotation that does not parse keeps its value from `previous` (the last good view of
/// this node), so one bad edit never tears down working sessions.
pub fn node_view(
    node: &metalnet::model::core::Node,
    previous: Option<&NodeView>,
) -> (NodeView, Vec<AnnotationProblem>) {
    let name = node.metadata.name.clone().unwrap_or_default();
    let listed = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let of_type = |t: &str| -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = Vec::new();
        for a in listed.iter().filter(|a| a.type_ == t) {
            if let Ok(ip) = a.address.trim().parse::<IpAddr>()
                && !v.contains(&ip)
            {
                v.push(ip);
            }
        }
        v
    };
    let mut addresses = of_type("InternalIP");
    if addresses.is_empty() {
        addresses = of_type("ExternalIP");
    }
    let spec = node.spec.as_ref();
    let parse_all = |list: &[String]| -> Vec<IpNet> {
        list.iter()
            .filter_map(|c| super::annotations::parse_cidr(c).ok())
            .collect()
    };
    let from_spec = spec
        .and_then(|s| s.pod_cidrs.as_deref())
        .map(parse_all)
        .filter(|v| !v.is_empty())
        .or_else(|| {
            spec.and_then(|s| s.pod_cidr.as_ref())
                .map(|c| parse_all(std::slice::from_ref(c)))
                .filter(|v| !v.is_empty())
        });
    let empty = BTreeMap::new();
    let annotations = node.metadata.annotations.as_ref().unwrap_or(&empty);
    let default_bgp = NodeBgp::default();
    let prev_bgp = previous.map(|p| &p.bgp).unwrap_or(&default_bgp);
    let (bgp, problems) = super::annotations::parse(annotations, prev_bgp);
    let pod_cidrs = from_spec.unwrap_or_else(|| bgp.pod_cidrs.clone());
    (
        NodeView {
            name,
            addresses,
            pod_cidrs,
            bgp,
        },
        problems,
    )
}

/// Builders for tests of this module and the others.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub fn node(name: &str, addrs: &[&str], pods: &[&str]) -> NodeView {
        NodeView {
            name: name.into(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            pod_cidrs: pods.iter().map(|a| a.parse().unwrap()).collect(),
            bgp: NodeBgp::default(),
        }
    }

    pub fn with(mut n: NodeView, f: impl FnOnce(&mut NodeBgp)) -> NodeView {
        f(&mut n.bgp);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::routing::options::ExternalPeer;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn three() -> Vec<NodeView> {
        vec![
            node("a", &["192.0.2.1"], &["10.244.0.0/24"]),
            node("b", &["192.0.2.2"], &["10.244.1.0/24"]),
            node("c", &["192.0.2.3"], &["10.244.2.0/24"]),
        ]
    }

    #[test]
    fn full_mesh_ibgp_with_cluster_asn() {
        let nodes = three();
        let o = RoutingOptions::default();
        let p = plan_peers(&o, &nodes[1], &nodes);
        assert_eq!(p.local_asn, Some(64512));
        assert_eq!(p.router_id, Some(Ipv4Addr::new(192, 0, 2, 2)));
        assert_eq!(p.peers.len(), 2);
        let a = &p.peers[&ip("192.0.2.1")];
        assert!(a.is_ibgp() && !a.is_external() && !a.rr_client);
        assert_eq!(a.kind, PeerKind::Node { name: "a".into() });
        assert_eq!((a.port, a.local_address), (179, Some(ip("192.0.2.2"))));
        assert!(a.passive, "b waits for a, whose address is lower");
        assert!(!p.peers[&ip("192.0.2.3")].passive, "b connects to c");
        assert!(p.skipped.is_empty() && p.not_running.is_none());
        assert_eq!(a.hold_time, Duration::from_secs(90));
        assert_eq!(a.graceful_restart, None);
        let o = RoutingOptions {
            graceful_restart: true,
            bgp_port: 1179,
            ..RoutingOptions::default()
        };
        let a = &plan_peers(&o, &nodes[1], &nodes).peers[&ip("192.0.2.1")];
        assert_eq!(
            (a.graceful_restart, a.port),
            (Some(Duration::from_secs(90)), 1179)
        );
    }

    #[test]
    fn node_asn_ignored_with_full_mesh() {
        let mut nodes = three();
        nodes[0].bgp.asn = Some(65001);
        let p = plan_peers(&RoutingOptions::default(), &nodes[0], &nodes);
        assert_eq!(p.local_asn, Some(64512));
        assert_eq!(p.peers.len(), 2);
    }

    #[test]
    fn without_full_mesh_only_same_asn() {
        let o = RoutingOptions {
            nodes_full_mesh: false,
            ..RoutingOptions::default()
        };
        let mut nodes = three();
        nodes.push(node("d", &["192.0.2.4"], &[]));
        nodes[0].bgp.asn = Some(65001);
        nodes[1].bgp.asn = Some(65001);
        nodes[2].bgp.asn = Some(65002);
        let p = plan_peers(&o, &nodes[0], &nodes);
        assert_eq!(p.local_asn, Some(65001));
        assert_eq!(
            p.peers.keys().copied().collect::<Vec<_>>(),
            vec![ip("192.0.2.2")]
        );
        assert_eq!(p.peers[&ip("192.0.2.2")].peer_asn, 65001);
        let reasons: BTreeMap<_, _> = p
            .skipped
            .iter()
            .map(|s| (s.node.as_str(), s.reason.as_str()))
            .collect();
        assert!(reasons["c"].contains("65002"), "{reasons:?}");
        assert!(reasons["d"].contains("node.asn"), "{reasons:?}");
        // Without its own node.asn, BGP does not start.
        let p = plan_peers(&o, &nodes[3], &nodes);
        assert!(p.local_asn.is_none() && p.peers.is_empty());
        assert!(p.not_running.as_deref().unwrap().contains("node.asn"));
        assert_eq!(p.skipped.len(), 3);
    }

    #[test]
    fn ibgp_disabled_keeps_external_peers() {
        let o = RoutingOptions {
            enable_ibgp: false,
            global_peers: vec![ExternalPeer {
                address: ip("198.51.100.1"),
                asn: 65100,
                password: None,
                port: 179,
                multihop_ttl: Some(3),
                local_address: None,
            }],
            ..RoutingOptions::default()
        };
        let nodes = three();
        let p = plan_peers(&o, &nodes[0], &nodes);
        assert_eq!(p.peers.len(), 1);
        let e = &p.peers[&ip("198.51.100.1")];
        assert_eq!(
            (e.kind.clone(), e.peer_asn, e.multihop_ttl, e.passive),
            (PeerKind::GlobalExternal, 65100, Some(3), false)
        );
        assert!(e.is_external() && !e.is_ibgp());
        assert_eq!(p.skipped.len(), 2);
        assert!(p.skipped[0].reason.contains("--enable-ibgp=false"));
    }

    #[test]
    fn annotated_peers_only_without_global_ones() {
        let mut nodes = three();
        nodes[0].bgp.peers = vec![ExternalPeer {
            address: ip("203.0.113.1"),
            asn: 65200,
            password: Some(Password::new("x")),
            port: 1179,
            multihop_ttl: None,
            local_address: Some(ip("192.0.2.1")),
        }];
        let o = RoutingOptions {
            peer_multihop_ttl: Some(5),
            ..RoutingOptions::default()
        };
        let p = plan_peers(&o, &nodes[0], &nodes);
        let e = &p.peers[&ip("203.0.113.1")];
        assert_eq!(e.kind, PeerKind::AnnotatedExternal);
        assert!(p.reasons[&ip("203.0.113.1")].contains("kube-router.io/peers"));
        assert_eq!(
            (e.port, e.multihop_ttl, e.local_address),
            (1179, Some(5), Some(ip("192.0.2.1")))
        );
        assert_eq!(e.password, Some(Password::new("x")));
        let o = RoutingOptions {
            global_peers: vec![ExternalPeer {
                address: ip("198.51.100.1"),
                asn: 65100,
                password: None,
                port: 179,
                multihop_ttl: None,
                local_address: None,
            }],
            ..RoutingOptions::default()
        };
        let p = plan_peers(&o, &nodes[0], &nodes);
        assert!(!p.peers.contains_key(&ip("203.0.113.1")));
        assert!(p.peers.contains_key(&ip("198.51.100.1")));
        // Without localip the source is the primary address; another family cannot peer.
        let o = RoutingOptions {
            global_peers: vec![
                ExternalPeer {
                    address: ip("198.51.100.1"),
                    asn: 65100,
                    password: None,
                    port: 179,
                    multihop_ttl: None,
                    local_address: None,
                },
                ExternalPeer {
                    address: ip("2001:db8:ff::1"),
                    asn: 65100,
                    password: None,
                    port: 179,
                    multihop_ttl: None,
                    local_address: None,
                },
            ],
            ..RoutingOptions::default()
        };
        let p = plan_peers(&o, &nodes[0], &nodes);
        assert_eq!(
            p.peers[&ip("198.51.100.1")].local_address,
            Some(ip("192.0.2.1"))
        );
        assert!(!p.peers.contains_key(&ip("2001:db8:ff::1")));
        let s = p
            .skipped
            .iter()
            .find(|s| s.node == "external router 2001:db8:ff::1")
            .unwrap();
        assert!(s.reason.contains("different families"), "{}", s.reason);
        // An external peer at a node's address does not replace the node session.
        nodes[0].bgp.peers[0].address = ip("192.0.2.2");
        let p = plan_peers(&RoutingOptions::default(), &nodes[0], &nodes);
        assert_eq!(
            p.peers[&ip("192.0.2.2")].kind,
            PeerKind::Node { name: "b".into() }
        );
    }

    #[test]
    fn route_reflectors() {
        let id = Ipv4Addr::new(0, 0, 0, 42);
        let nodes = vec![
            with(node("s1", &["192.0.2.1"], &[]), |b| b.rr_server = Some(id)),
            with(node("s2", &["192.0.2.2"], &[]), |b| b.rr_server = Some(id)),
            with(node("c1", &["192.0.2.3"], &[]), |b| b.rr_client = Some(id)),
            with(node("c2", &["192.0.2.4"], &[]), |b| b.rr_client = Some(id)),
            node("plain", &["192.0.2.5"], &[]),
        ];
        let o = RoutingOptions::default();
        let s1 = plan_peers(&o, &nodes[0], &nodes);
        assert_eq!(s1.cluster_id, Some(id));
        assert_eq!(s1.peers.len(), 4);
        assert!(!s1.peers[&ip("192.0.2.2")].rr_client);
        assert!(s1.peers[&ip("192.0.2.3")].rr_client && s1.peers[&ip("192.0.2.4")].rr_client);
        assert!(!s1.peers[&ip("192.0.2.5")].rr_client);
        assert!(s1.reasons[&ip("192.0.2.3")].contains("our client"));
        assert_eq!(s1.reasons.len(), s1.peers.len());
        let c1 = plan_peers(&o, &nodes[2], &nodes);
        assert_eq!(c1.cluster_id, None);
        assert_eq!(
            c1.peers.keys().copied().collect::<Vec<_>>(),
            vec![ip("192.0.2.1"), ip("192.0.2.2")]
        );
        assert_eq!(c1.skipped.len(), 2);
        assert!(c1.reasons[&ip("192.0.2.1")].contains("client"));
        assert!(c1.skipped.iter().all(|s| s.reason.contains("rr.client")));
        let plain = plan_peers(&o, &nodes[4], &nodes);
        assert_eq!(plain.peers.len(), 2, "{plain:?}");
        // rr.server wins when a node carries both.
        let both = with(node("x", &["192.0.2.9"], &[]), |b| {
            b.rr_server = Some(id);
            b.rr_client = Some(id);
        });
        assert_eq!(both.rr_role(), RrRole::Server(id));
    }

    #[test]
    fn router_ids() {
        let n = node("a", &["192.0.2.10", "2001:db8::10"], &[]);
        let o = RoutingOptions::default();
        assert_eq!(router_id(&o, &n), Ok(Ipv4Addr::new(192, 0, 2, 10)));
        let g = RoutingOptions {
            router_id: RouterIdChoice::Generate,
            ..RoutingOptions::default()
        };
        // FNV-1a 32 of the 16-byte forms, as Go's hash/fnv gives them.
        assert_eq!(router_id(&g, &n), Ok(Ipv4Addr::new(209, 181, 193, 155)));
        let v6 = node("b", &["2001:db8::10"], &[]);
        assert_eq!(router_id(&g, &v6), Ok(Ipv4Addr::new(95, 90, 237, 87)));
        assert!(router_id(&o, &v6).unwrap_err().contains("--router-id"));
        let p = plan_peers(&o, &v6, std::slice::from_ref(&v6));
        assert!(p.not_running.is_some());
        let f = RoutingOptions {
            router_id: RouterIdChoice::Fixed(Ipv4Addr::new(1, 2, 3, 4)),
            ..RoutingOptions::default()
        };
        assert_eq!(router_id(&f, &v6), Ok(Ipv4Addr::new(1, 2, 3, 4)));
        assert!(router_id(&o, &node("c", &[], &[])).is_err());
    }

    #[test]
    fn nodes_without_usable_address_are_skipped() {
        let nodes = vec![
            node("a", &["192.0.2.1"], &[]),
            node("b", &[], &[]),
            node("c", &["2001:db8::3"], &[]),
            node("d", &["192.0.2.1"], &[]),
        ];
        let p = plan_peers(&RoutingOptions::default(), &nodes[0], &nodes);
        assert!(p.peers.is_empty());
        assert_eq!(p.skipped.len(), 3);
    }

    fn k8s_node(json: serde_json::Value) -> metalnet::model::core::Node {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn node_view_reads_addresses_pod_cidrs_and_annotations() {
        let n = k8s_node(serde_json::json!({
            "metadata": {"name": "n1", "annotations": {
                "kube-router.io/node.asn": "65001",
                "kube-router.io/pod-cidrs": "10.9.0.0/24",
            }},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "ExternalIP", "address": "203.0.113.5"},
                {"type": "InternalIP", "address": "2001:db8::1"},
                {"type": "InternalIP", "address": "192.0.2.1"},
            ]},
        }));
        let (v, p) = node_view(&n, None);
        assert!(p.is_empty());
        assert_eq!(v.name, "n1");
        assert_eq!(v.addresses, vec![ip("2001:db8::1"), ip("192.0.2.1")]);
        assert_eq!(v.primary(), Some(ip("2001:db8::1")));
        assert_eq!(v.pod_cidrs.len(), 2);
        assert_eq!(v.bgp.asn, Some(65001));
        assert_eq!(
            v.address_for(&"10.0.0.0/8".parse().unwrap()),
            Some(ip("192.0.2.1"))
        );
        // ExternalIP when there is no InternalIP; spec.podCIDR; annotations last.
        let n = k8s_node(serde_json::json!({
            "metadata": {"name": "n2"},
            "spec": {"podCIDR": "10.244.2.0/24"},
            "status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.5"}]},
        }));
        let (v, _) = node_view(&n, None);
        assert_eq!(v.addresses, vec![ip("203.0.113.5")]);
        assert_eq!(v.pod_cidrs, vec!["10.244.2.0/24".parse::<IpNet>().unwrap()]);
        let n = k8s_node(serde_json::json!({
            "metadata": {"name": "n3", "annotations": {"kube-router.io/pod-cidr": "10.9.0.0/24"}},
        }));
        let (v, _) = node_view(&n, None);
        assert!(v.addresses.is_empty());
        assert_eq!(v.pod_cidrs, vec!["10.9.0.0/24".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn node_view_keeps_last_good_annotation() {
        let good = k8s_node(serde_json::json!({
            "metadata": {"name": "n1", "annotations": {"kube-router.io/node.asn": "65001"}},
        }));
        let bad = k8s_node(serde_json::json!({
            "metadata": {"name": "n1", "annotations": {"kube-router.io/node.asn": "65k"}},
        }));
        let (v1, _) = node_view(&good, None);
        let (v2, p) = node_view(&bad, Some(&v1));
        assert_eq!(v2.bgp.asn, Some(65001));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].annotation, "kube-router.io/node.asn");
        let (v3, _) = node_view(&bad, None);
        assert_eq!(v3.bgp.asn, None);
    }

    fn arb_nodes() -> impl Strategy<Value = (RoutingOptions, Vec<NodeView>)> {
        let one = (
            0u8..12,
            proptest::option::of(prop_oneof![Just(65001u32), Just(65002)]),
            0u8..4,
            any::<bool>(),
        );
        (
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(one, 1..10),
        )
            .prop_map(|(full_mesh, ibgp, ns)| {
                let o = RoutingOptions {
                    nodes_full_mesh: full_mesh,
                    enable_ibgp: ibgp,
                    ..RoutingOptions::default()
                };
                let id = Ipv4Addr::new(0, 0, 0, 1);
                let nodes = ns
                    .into_iter()
                    .enumerate()
                    .map(|(i, (addr, asn, rr, v6))| {
                        let a = if v6 && addr % 5 == 0 {
                            format!("2001:db8::{addr}")
                        } else {
                            format!("192.0.2.{addr}")
                        };
                        with(node(&format!("n{i}"), &[&a], &[]), |b| {
                            b.asn = asn;
                            match rr {
                                1 => b.rr_server = Some(id),
                                2 => b.rr_client = Some(id),
                                3 => {
                                    b.rr_server = Some(id);
                                    b.rr_client = Some(id)
                                }
                                _ => {}
                            }
                        })
                    })
                    .collect();
                (o, nodes)
            })
    }

    proptest! {
        #[test]
        fn peering_is_symmetric((o, nodes) in arb_nodes()) {
            let plans: Vec<PeerPlan> = nodes.iter().map(|n| plan_peers(&o, n, &nodes)).collect();
            for (i, a) in nodes.iter().enumerate() {
                for (j, b) in nodes.iter().enumerate() {
                    if i == j { continue; }
                    let (Some(aa), Some(ba)) = (a.primary(), b.primary()) else { continue };
                    let ab = plans[i].peers.get(&ba).filter(|p| p.kind == PeerKind::Node { name: b.name.clone() });
                    let ba_ = plans[j].peers.get(&aa).filter(|p| p.kind == PeerKind::Node { name: a.name.clone() });
                    prop_assert_eq!(ab.is_some(), ba_.is_some(), "{} vs {}: {:?} / {:?}", a.name, b.name, plans[i], plans[j]);
                    if let (Some(x), Some(y)) = (ab, ba_) {
                        prop_assert!(x.passive != y.passive, "exactly one side connects");
                        prop_assert_eq!(x.local_asn, y.peer_asn);
                        prop_assert_eq!(x.peer_asn, y.local_asn);
                    }
                    // Every other node is either peered with or skipped with a reason.
                    let skipped = plans[i].skipped.iter().any(|s| s.node == b.name && !s.reason.is_empty());
                    prop_assert!(ab.is_some() != skipped);
                }
            }
        }

        #[test]
        fn rr_clients_never_peer_with_clients((o, nodes) in arb_nodes()) {
            for n in nodes.iter().filter(|n| matches!(n.rr_role(), RrRole::Client(_))) {
                let p = plan_peers(&o, n, &nodes);
                for peer in p.peers.values() {
                    if let PeerKind::Node { name } = &peer.kind {
                        let other = nodes.iter().find(|m| &m.name == name).unwrap();
                        prop_assert!(matches!(other.rr_role(), RrRole::Server(_)));
                    }
                }
            }
        }

        #[test]
        fn plan_does_not_depend_on_node_order((o, nodes) in arb_nodes(), seed in any::<u64>()) {
            let mut shuffled = nodes.clone();
            let len = shuffled.len();
            for i in 0..len {
                shuffled.swap(i, (seed as usize).wrapping_add(i * 7) % len);
            }
            for n in &nodes {
                prop_assert_eq!(plan_peers(&o, n, &nodes), plan_peers(&o, n, &shuffled));
            }
        }
    }
}
