//! kube-router's routing flags (`pkg/options/options.go`), with its names and defaults, and
//! their validated form [`RoutingOptions`].

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use metalnet::bgp::Password;

/// kube-router's default cluster ASN (`--cluster-asn` 0 means this).
pub const DEFAULT_CLUSTER_ASN: u32 = 64512;

/// The validated routing options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingOptions {
    /// `--cluster-asn` (64512 when unset or 0).
    pub cluster_asn: u32,
    /// `--nodes-full-mesh` (true).
    pub nodes_full_mesh: bool,
    /// `--enable-ibgp` (true): peer with the other nodes at all.
    pub enable_ibgp: bool,
    /// `--peer-router-*`: the global external peers (when set, the per-node annotations are
    /// ignored, as kube-router does).
    pub global_peers: Vec<ExternalPeer>,
    /// `--advertise-pod-cidr` (true): pod CIDRs to external peers too.
    pub advertise_pod_cidr: bool,
    /// `--advertise-cluster-ip` (false).
    pub advertise_cluster_ip: bool,
    /// `--advertise-external-ip` (false).
    pub advertise_external_ip: bool,
    /// `--advertise-loadbalancer-ip` (false).
    pub advertise_loadbalancer_ip: bool,
    /// `--override-nexthop` (false): next hop self towards external peers.
    pub override_nexthop: bool,
    /// `--bgp-graceful-restart` (false).
    pub graceful_restart: bool,
    /// `--bgp-graceful-restart-time` (90 s, at most 4095 s).
    pub graceful_restart_time: Duration,
    /// `--bgp-graceful-restart-deferral-time` (360 s).
    pub graceful_restart_deferral: Duration,
    /// `--bgp-holdtime` (90 s; 3 s .. 18h12m16s).
    pub hold_time: Duration,
    /// `--bgp-port` (179): where this node listens and where it reaches other nodes.
    pub bgp_port: u16,
    /// `--router-id`: `None` = the node's IPv4 address; `generate` = FNV-32 of the node IP.
    pub router_id: RouterIdChoice,
    /// `--injected-routes-sync-period` (60 s): how often installed routes are re-checked.
    pub injected_routes_sync_period: Duration,
    /// `--enable-overlay` (true) / `--overlay-type` (subnet|full).
    pub enable_overlay: bool,
    pub overlay_type: OverlayType,
}

/// How the BGP identifier is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterIdChoice {
    /// The node's IPv4 address (kube-router's default).
    NodeAddress,
    /// `generate`: FNV-32 of the node's address (needed on IPv6-only nodes).
    Generate,
    Fixed(Ipv4Addr),
}

/// kube-router's `--overlay-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayType {
    /// A tunnel only when the next hop is outside every subnet of this node.
    Subnet,
    /// A tunnel to every node.
    Full,
}

/// An external BGP peer, from the global flags or a node's annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalPeer {
    pub address: IpAddr,
    pub asn: u32,
    pub password: Option<Password>,
    /// 179 unless set.
    pub port: u16,
    /// `--peer-router-multihop-ttl`: eBGP multihop with this TTL.
    pub multihop_ttl: Option<u8>,
    /// `localip` of the `kube-router.io/peers` annotation: the source address.
    pub local_address: Option<IpAddr>,
}

/// A flag value that is not acceptable, naming the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct OptionsError {
    pub flag: &'static str,
    pub reason: String,
}

impl Default for RoutingOptions {
    fn default() -> Self {
        Self {
            cluster_asn: DEFAULT_CLUSTER_ASN,
            nodes_full_mesh: true,
            enable_ibgp: true,
            global_peers: Vec::new(),
            advertise_pod_cidr: true,
            advertise_cluster_ip: false,
            advertise_external_ip: false,
            advertise_loadbalancer_ip: false,
            override_nexthop: false,
            graceful_restart: false,
            graceful_restart_time: Duration::from_secs(90),
            graceful_restart_deferral: Duration::from_secs(360),
            hold_time: Duration::from_secs(90),
            bgp_port: 179,
            router_id: RouterIdChoice::NodeAddress,
            injected_routes_sync_period: Duration::from_secs(60),
            enable_overlay: true,
            overlay_type: OverlayType::Subnet,
        }
    }
}

/// kube-router's routing flags as the command line gives them (flattened into
/// `metalnet-router`'s arguments).
///
/// Skeleton: only `--cluster-asn`; the rest follow with their kube-router names.
#[derive(Debug, Clone, clap::Args)]
pub struct RoutingArgs {
    /// ASN of the cluster's nodes for iBGP (kube-router's default 64512 when 0 or unset;
    /// 64512-65535 or 4200000000-4294967294).
    #[arg(long, value_name = "ASN", default_value_t = 0)]
    pub cluster_asn: u32,
}

impl RoutingArgs {
    /// The validated options.
    pub fn options(&self) -> Result<RoutingOptions, OptionsError> {
        let mut o = RoutingOptions::default();
        if self.cluster_asn != 0 {
            o.cluster_asn = self.cluster_asn;
        }
        Ok(o)
    }
}
