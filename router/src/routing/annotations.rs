//! The node annotations kube-router reads, parsed per node. A bad value is a
//! [`AnnotationProblem`] naming the annotation and the reason (the daemon turns it into a
//! Warning Event on the Node) and the previous good value of that annotation stays in force.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::options::ExternalPeer;

pub const NODE_ASN: &str = "kube-router.io/node.asn";
pub const RR_SERVER: &str = "kube-router.io/rr.server";
pub const RR_CLIENT: &str = "kube-router.io/rr.client";
pub const PEERS: &str = "kube-router.io/peers";
pub const PEER_IPS: &str = "kube-router.io/peer.ips";
pub const PEER_ASNS: &str = "kube-router.io/peer.asns";
pub const PEER_PASSWORDS: &str = "kube-router.io/peer.passwords";
pub const PEER_LOCALIPS: &str = "kube-router.io/peer.localips";
pub const PEER_PORTS: &str = "kube-router.io/peer.ports";
pub const COMMUNITIES: &str = "kube-router.io/node.bgp.communities";
pub const CUSTOM_IMPORT_REJECT: &str = "kube-router.io/node.bgp.customimportreject";
pub const PATH_PREPEND_AS: &str = "kube-router.io/path-prepend.as";
pub const PATH_PREPEND_REPEAT_N: &str = "kube-router.io/path-prepend.repeat-n";
pub const POD_CIDR: &str = "kube-router.io/pod-cidr";
pub const POD_CIDRS: &str = "kube-router.io/pod-cidrs";
pub const BGP_LOCAL_ADDRESSES: &str = "kube-router.io/bgp-local-addresses";

/// What one node's annotations say, every field already validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeBgp {
    /// `node.asn`.
    pub asn: Option<u32>,
    /// `rr.server`: this node is a route reflector with this cluster id.
    pub rr_server: Option<Ipv4Addr>,
    /// `rr.client`: this node is a client of the reflectors with this cluster id.
    pub rr_client: Option<Ipv4Addr>,
    /// `peers` (or the deprecated `peer.*`): this node's external peers.
    pub peers: Vec<ExternalPeer>,
    /// `node.bgp.communities`, as 32-bit values.
    pub communities: Vec<u32>,
    /// `node.bgp.customimportreject`.
    pub import_reject: Vec<IpNet>,
    /// `path-prepend.as` repeated `repeat-n` times.
    pub path_prepend: Option<(u32, u8)>,
    /// `pod-cidr` / `pod-cidrs` (used only when the Node has no `spec.podCIDRs`).
    pub pod_cidrs: Vec<IpNet>,
    /// `bgp-local-addresses`.
    pub local_addresses: Vec<IpAddr>,
}

/// One annotation that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {reason}")]
pub struct AnnotationProblem {
    pub annotation: &'static str,
    pub reason: String,
}
