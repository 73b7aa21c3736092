//! BGP mode (MetalLB compatible): every node selected by a BGPAdvertisement announces the
//! Service addresses to its BGPPeers, so the routers spread traffic over the nodes (ECMP).
//!
//! - [`plan`]: pure; cluster objects + node → sessions and routes per peer, with reasons.
//! - [`sessions`]: one engine session ([`metalnet_config::bgp::Session`]) per selected peer.
//! - [`status`]: ServiceBGPStatus objects; [`metrics`]: MetalLB's `metallb_bgp_*` metrics;
//!   [`explain`]: the BGP part of `metalnet-speaker explain`.
//!
//! [`Bgp`] ties them together for the daemon loop: `reconcile` on every cluster change,
//! `shutdown` on SIGTERM.

pub mod explain;
pub mod metrics;
pub mod plan;
pub mod sessions;
pub mod status;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metalnet_config::model::core::Node;
use metalnet_config::state::{ClusterState, Snapshot};
use metalnet_config::validate::ParsedConfig;

use crate::metrics::{AnnouncedLabels, Metrics};
pub use metrics::BgpMetrics;
pub use plan::{Inputs, NodePlan, ServiceBgp};
use sessions::{Sessions, SharedSessions};
use status::BgpStatusWriter;

/// How often the session counters are copied into the metrics.
pub const METRICS_REFRESH: Duration = Duration::from_millis(500);

/// The first InternalIP of a node of the given family (v4 = true).
pub fn internal_ip(node: &Node, v4: bool) -> Option<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse::<IpAddr>().ok())
        .find(|a| a.is_ipv4() == v4)
}

/// BGP mode on this node.
pub struct Bgp {
    node: String,
    sessions: SharedSessions,
    status: BgpStatusWriter,
    metrics: Arc<Metrics>,
    announced: HashSet<AnnouncedLabels>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Bgp {
    /// Starts the status writer and the metrics refresher (no session until `reconcile`).
    pub fn start(
        state: Arc<ClusterState>,
        namespace: String,
        node: String,
        metrics: Arc<Metrics>,
    ) -> Bgp {
        let sessions: SharedSessions = Arc::new(Mutex::new(Sessions::default()));
        let refresher = {
            let sessions = sessions.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(METRICS_REFRESH);
                loop {
                    tick.tick().await;
                    if let Ok(mut s) = sessions.lock() {
                        s.refresh_metrics(&metrics.bgp);
                    }
                }
            })
        };
        Bgp {
            status: BgpStatusWriter::start(state, namespace, node.clone()),
            node,
            sessions,
            metrics,
            announced: HashSet::new(),
            refresher,
        }
    }

    /// Plans and applies BGP mode for a snapshot; returns the plan (for tests and logs).
    pub fn reconcile(
        &mut self,
        snapshot: &Arc<Snapshot>,
        config: &ParsedConfig,
        ignore_exclude_label: bool,
    ) -> Arc<Vec<ServiceBgp>> {
        let plan = plan::plan(&Inputs {
            snapshot,
            config,
            node: &self.node,
            ignore_exclude_label,
        });
        if let Ok(mut s) = self.sessions.lock() {
            s.apply(&plan, &self.metrics.bgp);
        }
        // metallb_speaker_announced{protocol="bgp"}: replace our previous series.
        let now: HashSet<AnnouncedLabels> = plan
            .services
            .iter()
            .flat_map(|s| {
                s.contributions.iter().map(|c| AnnouncedLabels {
                    protocol: "bgp".into(),
                    service: format!("{}/{}", s.namespace, s.name),
                    node: self.node.clone(),
                    ip: c.ip.to_string(),
                })
            })
            .collect();
        for gone in self.announced.difference(&now) {
            self.metrics.announced.remove(gone);
        }
        for l in &now {
            self.metrics.announced.get_or_create(l).set(1);
        }
        self.announced = now;
        let services = Arc::new(plan.services);
        self.status.update(snapshot.clone(), services.clone());
        services
    }

    /// Stops every session: the peers withdraw our routes (Cease), or keep them for the
    /// restart time when graceful restart was negotiated.
    pub async fn shutdown(self) {
        self.refresher.abort();
        let handles = match self.sessions.lock() {
            Ok(mut s) => s.take_all(),
            Err(_) => Vec::new(),
        };
        futures::future::join_all(handles.into_iter().map(|h| h.shutdown())).await;
    }
}
