//! BGP metrics under MetalLB's names, labelled by `peer` (address:port).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

#[derive(Default)]
pub struct BgpMetrics {
    pub session_up: Family<PeerLabel, Gauge>,
    /// Exposed as `metallb_bgp_updates_total` (OpenMetrics counter suffix).
    pub updates: Family<PeerLabel, Counter>,
    pub announced_prefixes: Family<PeerLabel, Gauge>,
    pub pending_prefixes: Family<PeerLabel, Gauge>,
    /// Received UPDATEs withdrawn for a malformed attribute (RFC 7606), session kept.
    pub updates_treated_as_withdraw: Family<PeerLabel, Counter>,
    /// Malformed attributes dropped from received UPDATEs (RFC 7606), session kept.
    pub attributes_discarded: Family<PeerLabel, Counter>,
}

impl BgpMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "metallb_bgp_session_up",
            "BGP session state (1 is up, 0 is down)",
            self.session_up.clone(),
        );
        registry.register(
            "metallb_bgp_updates",
            "Number of BGP UPDATE messages sent",
            self.updates.clone(),
        );
        registry.register(
            "metallb_bgp_announced_prefixes_total",
            "Number of prefixes currently being advertised on the BGP session",
            self.announced_prefixes.clone(),
        );
        registry.register(
            "metallb_bgp_pending_prefixes_total",
            "Number of prefixes that should be advertised on the BGP session",
            self.pending_prefixes.clone(),
        );
        registry.register(
            "metalnet_bgp_updates_treated_as_withdraw",
            "Received BGP UPDATEs whose routes were withdrawn for a malformed attribute (RFC 7606)",
            self.updates_treated_as_withdraw.clone(),
        );
        registry.register(
            "metalnet_bgp_attributes_discarded",
            "Malformed path attributes dropped from received BGP UPDATEs (RFC 7606)",
            self.attributes_discarded.clone(),
        );
    }

    /// Drops the series of a peer whose session stopped.
    pub fn forget(&self, label: &PeerLabel) {
        self.session_up.remove(label);
        self.updates.remove(label);
        self.announced_prefixes.remove(label);
        self.pending_prefixes.remove(label);
        self.updates_treated_as_withdraw.remove(label);
        self.attributes_discarded.remove(label);
    }
}
