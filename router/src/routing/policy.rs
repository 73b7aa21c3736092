//! kube-router's export and import policies (`bgp_policies.go`, `ecmp_vip.go`): pod CIDRs to
//! iBGP peers, and to external peers with `--advertise-pod-cidr`; Service VIPs only to
//! external peers, by flag and per-Service annotation, and only from nodes with a local
//! endpoint under `externalTrafficPolicy: Local`; communities, AS-path prepend and next hop
//! self; import rejects Service VIPs, default routes and the node's custom reject list. Pure.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use metalnet::bgp::RouteAttrs;
use metalnet::model::core::{EndpointSlice, Service};

use super::options::RoutingOptions;
use super::topology::{NodeView, PeerPlan, PeerSpec};

/// Which kind of Service address a VIP is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VipKind {
    ClusterIp,
    ExternalIp,
    LoadBalancer,
}

/// A Service address, with whether this node may advertise it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceVip {
    pub address: IpAddr,
    pub kind: VipKind,
    /// `NAMESPACE/NAME` of the Service (for explain).
    pub service: String,
    /// Flags and the per-Service annotations allow advertising it.
    pub advertise: bool,
    /// Local traffic policy: only nodes with a local ready endpoint advertise it.
    pub local_only: bool,
    pub has_local_endpoint: bool,
}

impl ServiceVip {
    /// This node announces the VIP (to external peers).
    pub fn announced(&self) -> bool {
        self.advertise && (!self.local_only || self.has_local_endpoint)
    }
}

/// Every Service address in the cluster, with this node's view of it. All of them are
/// rejected on import, announced or not.
///
/// Skeleton: none.
pub fn service_vips<'a>(
    opts: &RoutingOptions,
    node: &str,
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Vec<ServiceVip> {
    let _ = (
        opts,
        node,
        services.into_iter().count(),
        slices.into_iter().count(),
    );
    Vec::new()
}

/// What `peer` is sent: this node's own routes allowed to it and, on a route reflector,
/// the routes it reflects (`reflected`, already chosen by [`super::loc_rib`]).
///
/// Skeleton: nothing.
pub fn export_table(
    opts: &RoutingOptions,
    plan: &PeerPlan,
    local: &NodeView,
    peer: &PeerSpec,
    vips: &[ServiceVip],
    reflected: &BTreeMap<IpNet, RouteAttrs>,
) -> BTreeMap<IpNet, RouteAttrs> {
    let _ = (opts, plan, local, peer, vips, reflected);
    BTreeMap::new()
}

/// Why a received route is not imported, or `None` when it is.
pub fn import_rejects(prefix: &IpNet, local: &NodeView, vips: &[ServiceVip]) -> Option<String> {
    let _ = (prefix, local, vips);
    None
}
