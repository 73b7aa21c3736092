//! BGP mode (MetalLB compatible): every node selected by a BGPAdvertisement announces the
//! Service addresses to its BGPPeers, so the routers spread traffic over the nodes (ECMP).
//!
//! - [`plan`]: pure; cluster objects + node → sessions and routes per peer, with reasons.
//! - [`sessions`]: one engine session ([`metalnet::bgp::Session`]) per selected peer.
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

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metalnet::state::{ObjectRef, Snapshot};
use metalnet::validate::ParsedConfig;

use crate::metrics::{AnnouncedLabels, Metrics};
pub use metrics::BgpMetrics;
pub use plan::{Inputs, NodePlan, PlannedServices, Planner, ServiceBgp};
use sessions::{Sessions, SharedSessions};

/// How often the session counters are copied into the metrics.
pub const METRICS_REFRESH: Duration = Duration::from_millis(500);

/// Whether a change can alter the BGP plan (our own status writes and events cannot).
pub fn replan_needed(changed: &std::collections::BTreeSet<metalnet::state::ObjectRef>) -> bool {
    use metalnet::state::Kind;
    changed.iter().any(|r| {
        !matches!(
            r.kind,
            Kind::ServiceL2Status | Kind::ServiceBGPStatus | Kind::Event
        )
    })
}

/// The Services last planned, for the metrics refresher (`None`: unchanged since taken).
type Published = Arc<Mutex<Option<PlannedServices>>>;

/// BGP mode on this node.
pub struct Bgp {
    node: String,
    sessions: SharedSessions,
    published: Published,
    refresher: tokio::task::JoinHandle<()>,
    planner: Planner,
}

/// `metallb_speaker_announced{protocol="bgp"}` series of a plan.
fn announced_labels(node: &str, services: &[Arc<ServiceBgp>]) -> HashSet<AnnouncedLabels> {
    services
        .iter()
        .flat_map(|s| {
            s.contributions.iter().map(|c| AnnouncedLabels {
                protocol: "bgp".into(),
                service: format!("{}/{}", s.namespace, s.name),
                node: node.to_string(),
                ip: c.ip.to_string(),
            })
        })
        .collect()
}

/// Copies session counters into the metrics and keeps the announced series current, off the
/// path from a cluster change to the UPDATE. The layer 2 loop clears the announced family on
/// each of its rounds; the series are put back when that happened.
async fn refresh_loop(
    node: String,
    sessions: SharedSessions,
    published: Published,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(METRICS_REFRESH);
    let mut announced: HashSet<AnnouncedLabels> = HashSet::new();
    loop {
        tick.tick().await;
        if let Ok(mut s) = sessions.lock() {
            s.refresh_metrics(&metrics.bgp);
        }
        let fresh = published.lock().ok().and_then(|mut p| p.take());
        if let Some(services) = fresh {
            let now = announced_labels(&node, &services);
            for gone in announced.difference(&now) {
                metrics.announced.remove(gone);
            }
            for l in now.difference(&announced) {
                metrics.announced.get_or_create(l).set(1);
            }
            announced = now;
        }
        if announced
            .iter()
            .next()
            .is_some_and(|l| metrics.announced.get(l).is_none())
        {
            for l in &announced {
                metrics.announced.get_or_create(l).set(1);
            }
        }
    }
}

impl Bgp {
    /// Starts the metrics refresher (no session until `reconcile`).
    pub fn start(node: String, metrics: Arc<Metrics>) -> Bgp {
        let sessions: SharedSessions = Arc::new(Mutex::new(Sessions::default()));
        let published: Published = Arc::new(Mutex::new(None));
        let refresher = tokio::spawn(refresh_loop(
            node.clone(),
            sessions.clone(),
            published.clone(),
            metrics.clone(),
        ));
        Bgp {
            node,
            sessions,
            published,
            refresher,
            planner: Planner::default(),
        }
    }

    /// Plans BGP mode for a snapshot (pure: only the planner's cache changes). `changed`:
    /// every object changed since the previous call (`None`: unknown, replan everything); when
    /// only Services and EndpointSlices changed, only those Services are replanned.
    pub fn plan(
        &mut self,
        snapshot: &Arc<Snapshot>,
        config: &ParsedConfig,
        ignore_exclude_label: bool,
        changed: Option<&BTreeSet<ObjectRef>>,
    ) {
        let started = std::time::Instant::now();
        self.planner.plan(
            &Inputs {
                snapshot,
                config,
                node: &self.node,
                ignore_exclude_label,
            },
            changed,
        );
        tracing::debug!(elapsed = ?started.elapsed(), "BGP plan");
    }

    /// Applies the last plan to the sessions; returns the per-Service view.
    pub fn apply(&mut self, metrics: &Metrics) -> PlannedServices {
        let Some(plan) = self.planner.last() else {
            return PlannedServices::default();
        };
        if let Ok(mut s) = self.sessions.lock() {
            s.apply(plan, &metrics.bgp);
        }
        // Shared with the plan: a reference count per Service, not a copy of each.
        let services = plan.shared_services();
        if let Ok(mut p) = self.published.lock() {
            *p = Some(services.clone());
        }
        services
    }

    /// Plans and applies in one step (see [`Bgp::plan`] and [`Bgp::apply`]).
    pub fn reconcile(
        &mut self,
        snapshot: &Arc<Snapshot>,
        config: &ParsedConfig,
        ignore_exclude_label: bool,
        changed: Option<&BTreeSet<ObjectRef>>,
        metrics: &Metrics,
    ) -> PlannedServices {
        self.plan(snapshot, config, ignore_exclude_label, changed);
        self.apply(metrics)
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
