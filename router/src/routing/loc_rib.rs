//! The routes learned from every session: best path per prefix (RFC 4271 §9.1.2 as far as
//! kube-router's GoBGP applies it), what a route reflector reflects to whom (RFC 4456,
//! ORIGINATOR_ID and CLUSTER_LIST loop checks), and the kernel routes this node wants:
//! direct via the next hop when it is on a connected subnet, nothing otherwise (the overlay
//! is not available on this kernel). Pure.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use metalnet::bgp::{ReceivedRoute, RouteAttrs};

use super::options::RoutingOptions;
use super::policy::{self, ServiceVip};
use super::topology::{self, NodeView, PeerPlan};

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
    pub plan: PeerPlan,
    /// What each peer (by address) is sent.
    pub exports: BTreeMap<IpAddr, BTreeMap<IpNet, RouteAttrs>>,
    pub best: BTreeMap<IpNet, Best>,
    /// Keyed by destination.
    pub kernel: BTreeMap<IpNet, KernelRoute>,
    pub rejected: Vec<Rejected>,
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

/// From the inputs to the sessions, export tables and kernel routes wanted.
///
/// Skeleton: plans peers and exports; no best path yet.
pub fn desired(inputs: Inputs<'_>) -> Desired {
    let plan = topology::plan_peers(inputs.opts, inputs.local, inputs.nodes);
    let reflected = BTreeMap::new();
    let exports = plan
        .peers
        .iter()
        .map(|(addr, peer)| {
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
        plan,
        exports,
        vips: inputs.vips.to_vec(),
        ..Desired::default()
    }
}
