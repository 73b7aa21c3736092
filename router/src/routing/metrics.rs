//! Prometheus metrics, with kube-router's names where it has them (`pkg/metrics`:
//! `kube_router_controller_bgp_peers`, `..._bgp_internal_peers_sync_time`,
//! `..._routes_sync_time`, `..._bgp_advertisements_received|sent`) and `metalnet_router_*`
//! for what kube-router does not export (per-session state and prefix counts, kernel routes,
//! annotation problems).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// One BGP session: the peer's address, its AS and what it is (`node`, `external`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
    pub peer_asn: String,
    pub kind: String,
}

/// A route family (`ipv4`, `ipv6`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    pub family: String,
}

/// The router's metrics; clones share the series.
#[derive(Clone)]
pub struct Metrics {
    /// `kube_router_controller_bgp_peers`: sessions configured.
    pub bgp_peers: Gauge,
    /// `kube_router_controller_bgp_internal_peers_sync_time`: one pass from inputs to
    /// sessions (seconds).
    pub peers_sync_time: Histogram,
    /// `kube_router_controller_routes_sync_time`: one kernel sync (seconds).
    pub routes_sync_time: Histogram,
    /// `kube_router_controller_bgp_advertisements_received`: routes received (added or
    /// changed) over all sessions.
    pub advertisements_received: Counter,
    /// `kube_router_controller_bgp_advertisements_sent`: route changes handed to sessions.
    pub advertisements_sent: Counter,
    /// 1 while the session is Established.
    pub session_up: Family<PeerLabel, Gauge>,
    /// The session's FSM state as a number (RFC 4271 order: Idle 1 .. Established 6).
    pub session_state: Family<PeerLabel, Gauge>,
    pub prefixes_received: Family<PeerLabel, Gauge>,
    pub prefixes_advertised: Family<PeerLabel, Gauge>,
    /// Protocol-17 routes in the kernel, by family.
    pub routes_installed: Family<FamilyLabel, Gauge>,
    /// Wanted routes not installed because a route of another protocol holds the
    /// destination.
    pub route_conflicts: Gauge,
    /// Kernel requests that failed.
    pub kernel_errors: Counter,
    /// Problems in this node's `kube-router.io/*` annotations now (each also an Event).
    pub annotation_problems: Gauge,
    /// Seconds since the last completed pass (0 right after one).
    pub last_sync_seconds: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let buckets = || exponential_buckets(0.0005, 2.0, 16);
        Metrics {
            bgp_peers: Gauge::default(),
            peers_sync_time: Histogram::new(buckets()),
            routes_sync_time: Histogram::new(buckets()),
            advertisements_received: Counter::default(),
            advertisements_sent: Counter::default(),
            session_up: Family::default(),
            session_state: Family::default(),
            prefixes_received: Family::default(),
            prefixes_advertised: Family::default(),
            routes_installed: Family::default(),
            route_conflicts: Gauge::default(),
            kernel_errors: Counter::default(),
            annotation_problems: Gauge::default(),
            last_sync_seconds: Gauge::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "kube_router_controller_bgp_peers",
            "BGP peers in the runtime configuration",
            self.bgp_peers.clone(),
        );
        reg.register(
            "kube_router_controller_bgp_internal_peers_sync_time",
            "Time it took to sync internal bgp peers",
            self.peers_sync_time.clone(),
        );
        reg.register(
            "kube_router_controller_routes_sync_time",
            "Time it took for controller to sync routes",
            self.routes_sync_time.clone(),
        );
        reg.register(
            "kube_router_controller_bgp_advertisements_received",
            "BGP advertisements received",
            self.advertisements_received.clone(),
        );
        reg.register(
            "kube_router_controller_bgp_advertisements_sent",
            "BGP advertisements sent",
            self.advertisements_sent.clone(),
        );
        reg.register(
            "metalnet_router_bgp_session_up",
            "BGP session state (1 is Established, 0 is not)",
            self.session_up.clone(),
        );
        reg.register(
            "metalnet_router_bgp_session_state",
            "BGP session FSM state (1 Idle, 2 Connect, 3 Active, 4 OpenSent, 5 OpenConfirm, 6 Established)",
            self.session_state.clone(),
        );
        reg.register(
            "metalnet_router_bgp_prefixes_received",
            "Prefixes the peer currently announces to us",
            self.prefixes_received.clone(),
        );
        reg.register(
            "metalnet_router_bgp_prefixes_advertised",
            "Prefixes this node advertises to the peer",
            self.prefixes_advertised.clone(),
        );
        reg.register(
            "metalnet_router_routes_installed",
            "Routes with protocol 17 in the kernel's main table",
            self.routes_installed.clone(),
        );
        reg.register(
            "metalnet_router_route_conflicts",
            "Wanted routes not installed because a route of another protocol holds the destination",
            self.route_conflicts.clone(),
        );
        reg.register(
            "metalnet_router_kernel_errors",
            "Kernel route requests that failed",
            self.kernel_errors.clone(),
        );
        reg.register(
            "metalnet_router_annotation_problems",
            "Problems in this node's kube-router.io annotations (each also a Warning Event)",
            self.annotation_problems.clone(),
        );
        reg.register(
            "metalnet_router_last_sync_seconds",
            "Duration of the last pass from inputs to sessions and kernel",
            self.last_sync_seconds.clone(),
        );
    }

    /// Drops the series of a session that stopped.
    pub fn forget(&self, label: &PeerLabel) {
        self.session_up.remove(label);
        self.session_state.remove(label);
        self.prefixes_received.remove(label);
        self.prefixes_advertised.remove(label);
    }
}

/// The number of an FSM state in RFC 4271's order.
pub fn state_number(state: metalnet::bgp::State) -> i64 {
    use metalnet::bgp::State;
    match state {
        State::Idle => 1,
        State::Connect => 2,
        State::Active => 3,
        State::OpenSent => 4,
        State::OpenConfirm => 5,
        State::Established => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_kube_router_names() {
        let m = Metrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        m.bgp_peers.set(3);
        let label = PeerLabel {
            peer: "192.0.2.12".into(),
            peer_asn: "64512".into(),
            kind: "node".into(),
        };
        m.session_up.get_or_create(&label).set(1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(
            text.contains("kube_router_controller_bgp_peers 3"),
            "{text}"
        );
        assert!(text.contains("kube_router_controller_routes_sync_time_bucket"));
        assert!(text.contains(
            r#"metalnet_router_bgp_session_up{peer="192.0.2.12",peer_asn="64512",kind="node"} 1"#
        ));
        m.forget(&label);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(!text.contains("192.0.2.12"));
    }
}
