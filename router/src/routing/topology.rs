//! Which BGP sessions this node should have, by kube-router's rules (`bgp_peers.go`):
//! full mesh or same-ASN peering among nodes, route-reflector clients peering only with
//! servers, external peers from the flags or else from the node's annotations. Pure: the
//! daemon feeds it the nodes and options and diffs the result against running sessions.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;
use metalnet::bgp::Password;

use super::annotations::NodeBgp;

/// A node as the routing logic sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    /// The node's InternalIP addresses (else ExternalIP), IPv4 first.
    pub addresses: Vec<IpAddr>,
    /// `spec.podCIDRs`, else the pod-cidr annotations.
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
    pub skipped: Vec<Skipped>,
    /// Why BGP does not run at all on this node, when `local_asn` is `None`.
    pub not_running: Option<String>,
}

/// The sessions `local` should have with the other `nodes` and external peers.
///
/// Skeleton: returns no peers yet.
pub fn plan_peers(
    opts: &super::options::RoutingOptions,
    local: &NodeView,
    nodes: &[NodeView],
) -> PeerPlan {
    let _ = (opts, local, nodes);
    PeerPlan::default()
}

/// A Node as the routing logic sees it, with the problems of its annotations. An
/// annotation that does not parse keeps its value from `previous` (the last good view of
/// this node), so one bad edit never tears down working sessions.
///
/// Skeleton: reads addresses and `spec.podCIDRs` only.
pub fn node_view(
    node: &metalnet::model::core::Node,
    previous: Option<&NodeView>,
) -> (NodeView, Vec<super::annotations::AnnotationProblem>) {
    let _ = previous;
    let name = node.metadata.name.clone().unwrap_or_default();
    let mut addresses: Vec<IpAddr> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    addresses.sort_by_key(|a: &IpAddr| a.is_ipv6());
    let pod_cidrs = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidrs.as_ref())
        .map(|c| c.iter().filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_default();
    (
        NodeView {
            name,
            addresses,
            pod_cidrs,
            bgp: NodeBgp::default(),
        },
        Vec::new(),
    )
}
