//! The routing loop: cluster state (Nodes, Services, EndpointSlices), every session's
//! received routes and this node's connected subnets in; sessions and kernel routes out,
//! within tens of milliseconds of any change (a short debounce gathers a burst of changes
//! into one pass).
//!
//! Graceful restart (restarting side): when the router starts with `--bgp-graceful-restart`
//! and finds protocol-17 routes in the kernel, it keeps them, tells its peers it is
//! restarting (R and F bits), and only sweeps the routes no longer wanted once every peer has
//! re-sent its routes or `--bgp-graceful-restart-deferral-time` has passed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use metalnet::daemon::{Readiness, Shutdown};
use metalnet::netlink::NetlinkError;
use metalnet::state::{ClusterState, EventRecord, EventType, Kind, ObjectRef, Snapshot};
use tokio::sync::Notify;

use super::annotations::AnnotationProblem;
use super::kernel::Kernel;
use super::loc_rib::{self, Desired, Inputs};
use super::metrics::{FamilyLabel, Metrics, PeerLabel, state_number};
use super::options::RoutingOptions;
use super::policy;
use super::sessions::{self, SessionContext, SessionInfo, Sessions};
use super::topology::{self, NodeView};

/// The kinds the router reads.
pub const KINDS: [Kind; 3] = [Kind::Node, Kind::Service, Kind::EndpointSlice];

/// The reporter of the router's Events.
pub const REPORTER: &str = "metalnet-router";

/// How long a change waits for others before a pass: a burst (an annotation edit that
/// changes several sessions, a peer's UPDATEs) becomes one pass.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// How often the connected subnets are re-read without any other change.
const ADDRESS_CHECK: Duration = Duration::from_secs(5);
/// After a kernel failure, the next try.
const RETRY: Duration = Duration::from_secs(1);
/// Graceful restart: a peer that sends no End-of-RIB counts as back once its session has been
/// Established this long (peers send their table right after the OPEN).
const GR_SETTLE: Duration = Duration::from_secs(2);
/// How long a clean shutdown waits for the sessions to close.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("reading the kernel's routes: {0}")]
    Kernel(#[from] NetlinkError),
}

/// How the daemon was asked to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub opts: RoutingOptions,
}

/// What the router is doing, for `explain` (the debug endpoint) and tests.
#[derive(Debug, Default, Clone)]
pub struct Status {
    pub node: String,
    pub desired: Option<Desired>,
    pub sessions: BTreeMap<IpAddr, SessionInfo>,
    pub connected: Vec<IpNet>,
    /// Graceful restart: the routes of before the restart are kept until this moment at most.
    pub holding_until: Option<Instant>,
    /// Why the last pass could not run (e.g. our Node is missing).
    pub waiting: Option<String>,
    pub installed: usize,
}

pub type SharedStatus = Arc<Mutex<Status>>;

/// A Node's view, with the object it was made from and its annotations' problems.
struct CachedView {
    node: Arc<metalnet::model::core::Node>,
    view: NodeView,
    problems: Vec<AnnotationProblem>,
}

/// Graceful restart on our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// Keeping the routes found at start until every peer is back, or the deadline.
    Holding {
        until: Instant,
    },
    Done,
}

pub struct Daemon {
    cfg: Config,
    kernel: Kernel,
    sessions: Sessions,
    ctx: SessionContext,
    wake: Arc<Notify>,
    views: BTreeMap<String, CachedView>,
    /// Problems of our Node's annotations already reported as Events.
    reported: BTreeSet<String>,
    restart: Restart,
    metrics: Metrics,
    labels: BTreeMap<IpAddr, PeerLabel>,
    readiness: Readiness,
    status: SharedStatus,
    retry_at: Option<Instant>,
    connected_at: Instant,
    connected: Vec<IpNet>,
    received_counts: BTreeMap<IpAddr, usize>,
    /// The kernel requests that failed in the last pass.
    kernel_failures: BTreeSet<String>,
}

impl Daemon {
    /// Reads the kernel's routes once (graceful restart needs to know whether any survived).
    pub async fn new(
        cfg: Config,
        kernel: Kernel,
        listener: Option<Arc<sessions::Listener>>,
        metrics: Metrics,
        readiness: Readiness,
        status: SharedStatus,
    ) -> Result<Daemon, DaemonError> {
        let found = kernel.observe().await?.count();
        let restart = if cfg.opts.graceful_restart && found > 0 {
            let until = Instant::now() + cfg.opts.graceful_restart_deferral;
            tracing::info!(routes = found, deferral = ?cfg.opts.graceful_restart_deferral,
                "graceful restart: keeping the routes found until the peers are back");
            Restart::Holding { until }
        } else {
            Restart::Done
        };
        let wake = Arc::new(Notify::new());
        Ok(Daemon {
            ctx: SessionContext {
                listener,
                restarting: matches!(restart, Restart::Holding { .. }),
                cluster_id: None,
            },
            sessions: Sessions::new(wake.clone()),
            wake,
            kernel,
            views: BTreeMap::new(),
            reported: BTreeSet::new(),
            restart,
            metrics,
            labels: BTreeMap::new(),
            readiness,
            status,
            retry_at: None,
            connected_at: Instant::now() - ADDRESS_CHECK,
            connected: Vec::new(),
            received_counts: BTreeMap::new(),
            kernel_failures: BTreeSet::new(),
            cfg,
        })
    }

    /// Runs until `shutdown`, then stops the sessions and, without graceful restart,
    /// removes our routes.
    pub async fn run(mut self, state: &ClusterState, shutdown: &Shutdown) {
        let mut sub = state.subscribe();
        let mut first = true;
        loop {
            let wait = self.next_timer();
            let woke = tokio::select! {
                _ = shutdown.wait() => break,
                _ = sub.next() => true,
                _ = self.wake.notified() => true,
                _ = tokio::time::sleep_until(wait.into()) => false,
            };
            if woke && !first {
                tokio::time::sleep(DEBOUNCE).await;
            }
            first = false;
            self.pass(state).await;
        }
        self.stop().await;
    }

    fn next_timer(&self) -> Instant {
        let mut t = self
            .kernel
            .resync_due()
            .min(self.connected_at + ADDRESS_CHECK);
        if let Some(r) = self.retry_at {
            t = t.min(r);
        }
        if let Restart::Holding { until } = self.restart {
            t = t
                .min(until)
                .min(Instant::now() + Duration::from_millis(500));
        }
        t.max(Instant::now())
    }

    /// One pass from inputs to sessions and kernel.
    pub async fn pass(&mut self, state: &ClusterState) {
        let started = Instant::now();
        let snap = state.snapshot();
        let problems = self.update_views(&snap);
        self.report_problems(state, problems).await;
        if self.connected_at.elapsed() >= ADDRESS_CHECK || self.connected.is_empty() {
            // Set first: a failure must not make the check due again at once.
            self.connected_at = Instant::now();
            match connected_subnets(&self.kernel).await {
                Ok(c) => {
                    if c != self.connected {
                        tracing::info!(subnets = ?c, "connected subnets");
                    }
                    self.connected = c;
                }
                Err(e) => tracing::warn!(error = %e, "reading this node's addresses"),
            }
        }
        let Some(local) = self.views.get(&self.cfg.node).map(|c| c.view.clone()) else {
            let why = format!("Node {} is not in the cluster state", self.cfg.node);
            self.set_waiting(why);
            return;
        };
        let vips = policy::service_vips(
            &self.cfg.opts,
            &self.cfg.node,
            snap.services.values().map(|s| &**s),
            snap.endpoint_slices.values().map(|s| &**s),
        );
        let nodes: Vec<NodeView> = self.views.values().map(|c| c.view.clone()).collect();
        let t_received = Instant::now();
        let received = self.sessions.received();
        let t_desired = Instant::now();
        let desired = loc_rib::desired(Inputs {
            opts: &self.cfg.opts,
            local: &local,
            nodes: &nodes,
            vips: &vips,
            received: &received,
            connected: &self.connected,
        });
        let t_computed = Instant::now();
        if let Some(why) = &desired.plan.not_running {
            self.set_waiting(format!("BGP does not run on this node: {why}"));
        }
        // Sessions started from now on drop routes carrying our cluster id.
        self.ctx.cluster_id = desired.plan.cluster_id;
        let applied = self
            .sessions
            .apply(&desired.plan.peers, &desired.exports, &self.ctx)
            .await;
        self.metrics
            .advertisements_sent
            .inc_by(applied.routes_sent as u64);
        self.metrics
            .peers_sync_time
            .observe(started.elapsed().as_secs_f64());
        // Graceful restart: hold the old routes until every peer is back, or the deadline.
        if let Restart::Holding { until } = self.restart {
            let back = self.sessions.all_back(GR_SETTLE);
            if restart_over(until, Instant::now(), desired.plan.peers.is_empty(), back) {
                tracing::info!(
                    peers_back = back,
                    "graceful restart: sweeping routes no longer wanted"
                );
                self.restart = Restart::Done;
                // Sessions started from now on are ordinary ones.
                self.ctx.restarting = false;
            }
        }
        let sweep = self.restart == Restart::Done;
        let kernel_started = Instant::now();
        match self.kernel.sync(&desired.kernel, sweep).await {
            Ok(report) => {
                self.metrics
                    .routes_sync_time
                    .observe(kernel_started.elapsed().as_secs_f64());
                if report.written + report.removed > 0 || !report.failed.is_empty() {
                    tracing::info!(
                        written = report.written,
                        removed = report.removed,
                        failed = report.failed.len(),
                        reread = report.reread,
                        took = ?report.took,
                        "kernel routes synced"
                    );
                }
                // Each failure is logged when it first appears, not on every retry.
                let failures: BTreeSet<String> =
                    report.failed.iter().map(|e| e.to_string()).collect();
                for e in failures.difference(&self.kernel_failures).take(5) {
                    tracing::warn!(error = %e, "kernel route");
                }
                self.kernel_failures = failures;
                self.metrics
                    .route_conflicts
                    .set(report.conflicts.len() as i64);
                self.metrics
                    .kernel_errors
                    .inc_by(report.failed.len() as u64);
                self.retry_at = (!report.failed.is_empty()).then(|| Instant::now() + RETRY);
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the kernel's routes");
                self.metrics.kernel_errors.inc();
                self.retry_at = Some(Instant::now() + RETRY);
            }
        }
        self.update_metrics(&received);
        let installed = self.kernel.installed();
        {
            let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
            s.node = self.cfg.node.clone();
            s.sessions = self.sessions.infos();
            s.connected = self.connected.clone();
            s.holding_until = match self.restart {
                Restart::Holding { until } => Some(until),
                Restart::Done => None,
            };
            s.waiting = desired.plan.not_running.clone();
            s.installed = installed;
            s.desired = Some(desired);
        }
        self.metrics
            .last_sync_seconds
            .set(started.elapsed().as_secs_f64());
        tracing::debug!(
            took = ?started.elapsed(),
            inputs = ?t_received.duration_since(started),
            received = ?t_desired.duration_since(t_received),
            computed = ?t_computed.duration_since(t_desired),
            kernel = ?kernel_started.elapsed(),
            routes = installed,
            "pass"
        );
        self.readiness.set(true);
    }

    fn set_waiting(&mut self, why: String) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if s.waiting.as_deref() != Some(why.as_str()) {
            tracing::warn!(reason = %why, "waiting");
        }
        s.waiting = Some(why);
    }

    /// Every node's view (a bad annotation keeps its last good value); returns the
    /// problems of our own Node's annotations, `None` when our Node is missing.
    fn update_views(&mut self, snap: &Snapshot) -> Option<Vec<AnnotationProblem>> {
        let mut views = BTreeMap::new();
        for (key, node) in snap.nodes.iter() {
            // A snapshot keeps the same object for a Node that did not change: its view
            // (annotations parsed) stands as it is.
            let cached = match self.views.remove(&key.name) {
                Some(c) if Arc::ptr_eq(&c.node, node) => c,
                previous => {
                    let (view, problems) =
                        topology::node_view(node, previous.as_ref().map(|c| &c.view));
                    CachedView {
                        node: node.clone(),
                        view,
                        problems,
                    }
                }
            };
            views.insert(key.name.clone(), cached);
        }
        self.views = views;
        self.views.get(&self.cfg.node).map(|c| c.problems.clone())
    }

    /// A Warning Event on our Node for each new problem in its annotations (the Node's own
    /// router reports them, so each problem is reported once, not by every node).
    async fn report_problems(
        &mut self,
        state: &ClusterState,
        problems: Option<Vec<AnnotationProblem>>,
    ) {
        let Some(problems) = problems else { return };
        self.metrics.annotation_problems.set(problems.len() as i64);
        let now: BTreeSet<String> = problems.iter().map(|p| p.to_string()).collect();
        let obj = ObjectRef::new(Kind::Node, None, &self.cfg.node);
        for message in now.difference(&self.reported) {
            tracing::warn!(node = %self.cfg.node, problem = %message, "annotation not used; the last good value stays");
            let event = EventRecord {
                type_: EventType::Warning,
                reason: "InvalidAnnotation".into(),
                message: format!("{message}; the last good value stays in force"),
                reporter: REPORTER.into(),
            };
            if let Err(e) = state.record_event(&obj, &event).await {
                tracing::warn!(error = %e, "recording an Event on the Node");
            }
        }
        // A problem fixed and made again is reported again.
        self.reported = now;
    }

    fn update_metrics(
        &mut self,
        received: &BTreeMap<IpAddr, BTreeMap<IpNet, metalnet::bgp::ReceivedRoute>>,
    ) {
        let infos = self.sessions.infos();
        self.metrics.bgp_peers.set(infos.len() as i64);
        let mut labels = BTreeMap::new();
        for (addr, info) in &infos {
            let label = PeerLabel {
                peer: addr.to_string(),
                peer_asn: info.spec.peer_asn.to_string(),
                kind: sessions::kind_name(&info.spec.kind).to_string(),
            };
            let up = info.status.state == metalnet::bgp::State::Established;
            self.metrics
                .session_up
                .get_or_create(&label)
                .set(i64::from(up));
            self.metrics
                .session_state
                .get_or_create(&label)
                .set(state_number(info.status.state));
            self.metrics
                .prefixes_received
                .get_or_create(&label)
                .set(info.received as i64);
            self.metrics
                .prefixes_advertised
                .get_or_create(&label)
                .set(info.sent as i64);
            labels.insert(*addr, label);
        }
        for (addr, old) in &self.labels {
            if labels.get(addr) != Some(old) {
                self.metrics.forget(old);
            }
        }
        self.labels = labels;
        // Received advertisements: growth of each session's table (a rough count, as
        // kube-router's counter of best-path events).
        let counts: BTreeMap<IpAddr, usize> = received.iter().map(|(a, r)| (*a, r.len())).collect();
        for (addr, n) in &counts {
            let before = self.received_counts.get(addr).copied().unwrap_or(0);
            self.metrics
                .advertisements_received
                .inc_by(n.saturating_sub(before) as u64);
        }
        self.received_counts = counts;
        if let Some(o) = self.kernel.observed() {
            let (mut v4, mut v6) = (0i64, 0i64);
            for dst in o.ours.keys() {
                let n = o.ours[dst].len() as i64;
                if dst.addr().is_ipv4() {
                    v4 += n;
                } else {
                    v6 += n;
                }
            }
            for (fam, n) in [("ipv4", v4), ("ipv6", v6)] {
                self.metrics
                    .routes_installed
                    .get_or_create(&FamilyLabel { family: fam.into() })
                    .set(n);
            }
        }
    }

    /// Clean shutdown: sessions closed (Cease, or a plain close with graceful restart so
    /// the peers keep our routes); without graceful restart our routes are removed.
    async fn stop(mut self) {
        self.readiness.set(false);
        self.sessions.shutdown(SHUTDOWN_LIMIT).await;
        if self.cfg.opts.graceful_restart {
            tracing::info!(
                routes = self.kernel.installed(),
                "graceful restart: leaving our routes in the kernel"
            );
            return;
        }
        match self.kernel.cleanup().await {
            Ok(r) => {
                tracing::info!(
                    removed = r.removed,
                    failed = r.failed.len(),
                    "removed our routes"
                );
                for e in r.failed.iter().take(5) {
                    tracing::warn!(error = %e, "removing a route");
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the kernel's routes to remove ours"),
        }
    }
}

/// Graceful restart on our side is over (the routes of before the restart may be swept):
/// every planned peer has been back long enough to have re-sent its routes, there is no peer
/// to wait for, or the deferral time has passed. Pure.
fn restart_over(until: Instant, now: Instant, no_peers: bool, all_back: bool) -> bool {
    no_peers || all_back || now >= until
}

/// The subnets of this node's interfaces (loopback and link-local left out), for direct
/// routes.
async fn connected_subnets(kernel: &Kernel) -> Result<Vec<IpNet>, NetlinkError> {
    let mut out: Vec<IpNet> = kernel
        .netlink()
        .addresses(0)
        .await?
        .into_iter()
        .map(|(_, n)| n)
        .filter(|n| match n.addr() {
            IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local(),
            IpAddr::V6(a) => !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// The query parameter `key` of a request path.
fn query<'a>(path: &'a str, key: &str) -> Option<&'a str> {
    path.split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Answers the debug endpoint: `/debug/routing/node?name=NAME` and
/// `/debug/routing/route?prefix=CIDR` (what `explain` prints); `None` for other paths.
pub fn debug_answer(status: &Status, path: &str) -> Option<Result<String, String>> {
    let route = path.split('?').next().unwrap_or("");
    let Some(desired) = &status.desired else {
        return Some(Err(match &status.waiting {
            Some(w) => format!("the router has not computed its routes yet: {w}\n"),
            None => "the router has not computed its routes yet\n".to_string(),
        }));
    };
    match route {
        "/debug/routing/node" => {
            let Some(name) = query(path, "name").filter(|n| !n.is_empty()) else {
                return Some(Err("name= is missing\n".into()));
            };
            let views = session_views(&status.sessions);
            let mut text = super::explain::node(desired, &views, name);
            if name == status.node {
                text.push_str(&daemon_lines(status));
            }
            Some(Ok(text))
        }
        "/debug/routing/route" => {
            let Some(prefix) = query(path, "prefix") else {
                return Some(Err("prefix= is missing\n".into()));
            };
            match prefix.parse::<IpNet>() {
                Ok(p) => Some(Ok(super::explain::route(desired, p))),
                Err(e) => Some(Err(format!("prefix {prefix:?}: {e}\n"))),
            }
        }
        _ => None,
    }
}

/// The sessions as `explain` shows them.
pub fn session_views(
    sessions: &BTreeMap<IpAddr, SessionInfo>,
) -> BTreeMap<IpAddr, super::explain::SessionView> {
    sessions
        .iter()
        .map(|(a, s)| {
            (
                *a,
                super::explain::SessionView {
                    state: s.status.state.to_string(),
                    uptime: s.uptime,
                    last_error: s.status.last_error.clone(),
                    sent: s.sent,
                    received: s.received,
                },
            )
        })
        .collect()
}

/// What only the daemon knows: the kernel routes installed, a graceful restart under way.
fn daemon_lines(status: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  kernel routes installed (proto 17): {}",
        status.installed
    );
    if let Some(until) = status.holding_until {
        let _ = writeln!(
            out,
            "  graceful restart: the routes of before the restart are kept until the peers are back, {}s at most",
            until.saturating_duration_since(Instant::now()).as_secs()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graceful_restart_waits_for_the_peers_or_the_deferral() {
        let now = Instant::now();
        let later = now + Duration::from_secs(360);
        assert!(!restart_over(later, now, false, false));
        assert!(restart_over(later, now, false, true));
        assert!(restart_over(later, now, true, false), "no peer to wait for");
        assert!(restart_over(later, later, false, false), "deferral over");
    }

    #[test]
    fn debug_paths_and_queries() {
        assert_eq!(query("/x?name=n1&y=2", "name"), Some("n1"));
        assert_eq!(
            query("/x?y=2&prefix=198.51.100.0/28", "prefix"),
            Some("198.51.100.0/28")
        );
        assert_eq!(query("/x", "name"), None);
        let mut st = Status {
            node: "n1".into(),
            ..Status::default()
        };
        assert!(
            debug_answer(&st, "/debug/routing/node?name=n1")
                .unwrap()
                .is_err()
        );
        st.desired = Some(Desired {
            node: "n1".into(),
            ..Desired::default()
        });
        st.installed = 3;
        let t = debug_answer(&st, "/debug/routing/node?name=n1")
            .unwrap()
            .unwrap();
        assert!(t.contains("kernel routes installed (proto 17): 3"), "{t}");
        let t = debug_answer(&st, "/debug/routing/route?prefix=198.51.100.0/28")
            .unwrap()
            .unwrap();
        assert!(t.contains("198.51.100.0/28"), "{t}");
        assert!(
            debug_answer(&st, "/debug/routing/route?prefix=x")
                .unwrap()
                .is_err()
        );
        assert!(debug_answer(&st, "/debug/other").is_none());
    }
}
