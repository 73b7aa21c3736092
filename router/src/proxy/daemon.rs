//! The proxy loop: cluster state (Services, EndpointSlices, Nodes) in, BPF maps out. Each
//! pass computes the desired map contents, diffs them against what the maps hold and writes
//! only the difference, so a restart that finds the maps of the last run (pinned, with the
//! same ids) writes nothing when nothing changed, and no connection is dropped.
//!
//! Generic over the data path ([`Dataplane`]: the aya loader, or the in-memory recorder in
//! tests) and over the model ([`Model`]: Services to maps), so the loop is tested without
//! BPF.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use metalnet::daemon::{Readiness, Shutdown};
use metalnet::model::ObjectKey;
use metalnet::netlink::Netlink;
use metalnet::state::{ClusterState, EventRecord, EventType, Kind, ObjectRef, Snapshot};

use super::abi;
use super::dataplane::{Dataplane, DataplaneError};
use super::health::{HealthServers, ServiceHealth};
use super::metrics::Metrics;
use super::options::ProxyOptions;
use super::state::{MapDiff, MapState};

/// The kinds the proxy reads.
pub const KINDS: [Kind; 3] = [Kind::Node, Kind::Service, Kind::EndpointSlice];

/// The reporter of the proxy's Events.
pub const REPORTER: &str = "metalnet-router";

/// How long a change waits for others before a pass (a rollout changes many slices at once).
const DEBOUNCE: Duration = Duration::from_millis(5);
/// After a failed map write or a server that could not start, the next try.
const RETRY: Duration = Duration::from_secs(1);
/// How often the node's addresses are re-read without any other change.
const ADDRESS_CHECK: Duration = Duration::from_secs(5);
/// How often the conntrack fill and the data path counters are read at most often...
const FILL_MIN: Duration = Duration::from_secs(1);
/// ...and at least often.
const FILL_MAX: Duration = Duration::from_secs(60);
/// Walking the per-connection maps costs a syscall per entry: the next walk waits this many
/// times as long as the last took (1% of a core at most).
const FILL_COST_FACTOR: u32 = 100;

/// A problem the model found in a Service or EndpointSlice (a bad field): reported once as a
/// Warning Event on that object; the rest of it, and every other Service, keeps working.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceProblem {
    /// The object the Event is about: [`Kind::Service`] or [`Kind::EndpointSlice`].
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// The Event's reason (CamelCase).
    pub reason: String,
    pub message: String,
}

/// What a model computed for one pass.
pub trait Plan: Send + Sync + 'static {
    /// The desired contents of the control-plane maps.
    fn maps(&self) -> &MapState;
    /// What turns the maps the last plan asked for into [`Plan::maps`], when the model knows
    /// the maps hold those (the last plan's diff was committed with [`Model::committed_diff`]).
    fn diff(&self) -> Option<&MapDiff> {
        None
    }
    /// healthCheckNodePort servers: port -> the Service and its local endpoints.
    fn health_checks(&self) -> BTreeMap<u16, ServiceHealth>;
    fn problems(&self) -> Vec<ServiceProblem>;
    /// `explain service NS/NAME` against the maps as they are; `None` when the proxy does not
    /// handle that Service.
    fn explain_service(&self, live: &MapState, namespace: &str, name: &str) -> Option<String>;
    /// `dump`: the maps in readable form.
    fn dump(&self, live: &MapState) -> String;
}

/// Services and EndpointSlices to map contents, with ids that never change for a frontend
/// or backend that stays.
pub trait Model: Send {
    type Plan: Plan;
    /// Takes the ids the maps hold (what the last run left) as the starting assignment.
    fn restore(&mut self, live: &MapState);
    /// The plan for `snap`. `changed`: the objects changed since the last plan's snapshot
    /// (more is harmless), when known; `None`: the model compares snapshots itself.
    fn plan(&mut self, snap: &Snapshot, changed: Option<&BTreeSet<ObjectRef>>) -> Self::Plan;
    /// What the maps hold after a write (or read back after a failed one): ids no longer in
    /// them may be given to new objects.
    fn committed(&mut self, _live: &MapState) {}
    /// [`Model::committed`] after `diff` was written to maps that held `before`; called
    /// before the diff is applied to `before`.
    fn committed_diff(&mut self, before: &MapState, diff: &MapDiff) {
        let mut live = before.clone();
        super::state::apply(&mut live, diff);
        self.committed(&live);
    }
}

/// What the proxy is doing, for the debug endpoints and tests.
#[derive(Default)]
pub struct Status {
    pub node: String,
    pub plan: Option<Arc<dyn Plan>>,
    /// The maps as written (shared with the daemon: see [`Daemon::change_current`]).
    pub live: Arc<MapState>,
    /// Why the last pass did not program the maps (a map write failed).
    pub failing: Option<String>,
    pub passes: u64,
    /// healthCheckNodePort servers running.
    pub health_ports: BTreeMap<u16, Vec<std::net::SocketAddr>>,
}

pub type SharedStatus = Arc<Mutex<Status>>;

/// What one pass did (for tests and logs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Map operations written (0 when nothing changed).
    pub written: usize,
    /// Backends whose sockets were destroyed.
    pub destroyed: Vec<abi::Backend>,
    /// Problems reported for the first time in this pass.
    pub new_problems: Vec<ServiceProblem>,
    pub error: Option<String>,
}

/// How the daemon was asked to run.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub node: String,
    pub opts: ProxyOptions,
    /// `mn_config.host_netns_cookie`: the node's network namespace, for
    /// `--socket-lb=host-only`.
    pub host_netns_cookie: u64,
    /// Whether the daemon writes `mn_node_addr` itself; off when the attach watcher keeps it
    /// (it sees address changes at once). The addresses are read either way, for where the
    /// healthCheckNodePort servers listen.
    pub write_node_addrs: bool,
}

pub struct Daemon<D: Dataplane, M: Model> {
    node: String,
    opts: ProxyOptions,
    write_node_addrs: bool,
    dp: D,
    model: M,
    /// What the maps hold (read at start, then kept as written).
    current: Arc<MapState>,
    health: HealthServers,
    metrics: Metrics,
    readiness: Readiness,
    status: SharedStatus,
    reported: BTreeSet<ServiceProblem>,
    /// Where node addresses come from; `None` leaves them to [`Daemon::set_node_addrs`].
    netlink: Option<Netlink>,
    node_addrs: Option<BTreeSet<IpAddr>>,
    addrs_at: Instant,
    fill_at: Instant,
    /// The interval before the next fill walk (see [`FILL_COST_FACTOR`]).
    fill_every: Duration,
    retry_at: Option<Instant>,
    /// The objects changed since the last pass, from the state's subscription (`None`
    /// until it names every change: passes then compare snapshots).
    hints: Option<BTreeSet<ObjectRef>>,
    /// The EndpointSlices of the last pass, while passes compare snapshots.
    slices: Option<metalnet::state::Objects<metalnet::model::core::EndpointSlice>>,
    /// The trigger time last counted for each EndpointSlice (see
    /// [`Daemon::observe_programming`]).
    stamps: HashMap<ObjectKey, String>,
    /// EndpointSlices named as changed in passes that failed: counted once the maps are
    /// programmed.
    unprogrammed: BTreeSet<ObjectKey>,
}

impl<D: Dataplane, M: Model> Daemon<D, M> {
    /// Reads the maps the last run left and takes their ids; programs the data path's
    /// configuration (idempotent).
    pub fn new(
        cfg: Config,
        mut dp: D,
        mut model: M,
        netlink: Option<Netlink>,
        metrics: Metrics,
        readiness: Readiness,
        status: SharedStatus,
    ) -> Result<Self, DataplaneError> {
        let current = Arc::new(dp.read()?);
        if !current.svc.is_empty() || !current.backend.is_empty() {
            tracing::info!(
                frontends = current.svc.len(),
                backends = current.backend.len(),
                "found the maps of the last run: keeping their ids"
            );
        }
        model.restore(&current);
        let Config {
            node,
            opts,
            host_netns_cookie,
            write_node_addrs,
        } = cfg;
        dp.set_config(&abi::Config {
            host_netns_cookie,
            ..opts.abi_config()
        })?;
        dp.set_cluster_cidrs(&opts.cluster_cidrs)?;
        readiness.set(false);
        let long_ago = Instant::now()
            .checked_sub(FILL_MAX.max(ADDRESS_CHECK))
            .unwrap_or_else(Instant::now);
        Ok(Daemon {
            node,
            write_node_addrs,
            health: HealthServers::new(Vec::new()),
            opts,
            dp,
            model,
            current,
            metrics,
            readiness,
            status,
            reported: BTreeSet::new(),
            netlink,
            node_addrs: None,
            addrs_at: long_ago,
            fill_at: long_ago,
            fill_every: FILL_MIN,
            retry_at: None,
            hints: None,
            slices: None,
            stamps: HashMap::new(),
            unprogrammed: BTreeSet::new(),
        })
    }

    /// The data path (tests look at the recorder).
    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    /// The maps as written.
    pub fn current(&self) -> &MapState {
        &self.current
    }

    /// Runs until `shutdown`. The maps and attachments stay: the next run takes them over
    /// without dropping a connection (as kube-proxy leaves its rules).
    pub async fn run(mut self, state: &ClusterState, shutdown: &Shutdown) {
        let mut sub = state.subscribe();
        // The first update names every object present, not those gone since a pass before
        // it: the first pass compares snapshots, later ones read the changed objects only.
        self.hints = None;
        let mut first = true;
        loop {
            let wait = self.next_timer();
            let woke = tokio::select! {
                _ = shutdown.wait() => break,
                u = sub.next() => {
                    if let Some(h) = &mut self.hints {
                        h.extend(u.changed);
                    }
                    true
                }
                _ = tokio::time::sleep_until(wait.into()) => false,
            };
            if woke && !first {
                tokio::time::sleep(DEBOUNCE).await;
            }
            // A timer alone recomputes nothing unless a retry is due or the node's addresses
            // changed (where the health servers listen); metrics are refreshed either way.
            let due = self.retry_at.is_some_and(|r| r <= Instant::now());
            if woke || first || due || self.refresh_node_addrs().await {
                self.pass(state).await;
                // Every change after this pass's snapshot comes in a later update.
                self.hints.get_or_insert_default();
            } else if self.fill_at.elapsed() >= self.fill_every {
                self.observe_datapath();
            }
            first = false;
        }
        self.readiness.set(false);
        tracing::info!(
            frontends = self.current.svc.len(),
            backends = self.current.backend.len(),
            "service proxy stopping: the maps and programs stay in place"
        );
    }

    fn next_timer(&self) -> Instant {
        let mut t = self.fill_at + self.fill_every;
        if self.netlink.is_some() {
            t = t.min(self.addrs_at + ADDRESS_CHECK);
        }
        if let Some(r) = self.retry_at {
            t = t.min(r);
        }
        t.max(Instant::now())
    }

    /// One pass, with the Events of new problems recorded on their Services.
    pub async fn pass(&mut self, state: &ClusterState) -> PassReport {
        self.refresh_node_addrs().await;
        let snap = state.snapshot();
        let changed = self.hints.as_mut().map(std::mem::take);
        let report = self.pass_with(&snap, changed.as_ref());
        for p in &report.new_problems {
            let obj = ObjectRef::new(p.kind, Some(&p.namespace), &p.name);
            let event = EventRecord {
                type_: EventType::Warning,
                reason: p.reason.clone(),
                message: p.message.clone(),
                reporter: REPORTER.into(),
            };
            if let Err(e) = state.record_event(&obj, &event).await {
                tracing::warn!(service = %format!("{}/{}", p.namespace, p.name), error = %e,
                    "recording an Event about a problem");
            }
        }
        report
    }

    /// This node's addresses: the ones serving NodePorts go to `mn_node_addr` and are where
    /// the healthCheckNodePort servers listen.
    pub fn set_node_addrs(&mut self, all: &BTreeSet<IpAddr>) {
        let addrs: BTreeSet<IpAddr> = all
            .iter()
            .copied()
            .filter(|a| self.opts.serves_nodeports(*a) && !is_link_local(*a))
            .collect();
        if self.node_addrs.as_ref() == Some(&addrs) {
            return;
        }
        tracing::info!(addrs = ?addrs, "node addresses serving NodePorts");
        if self.write_node_addrs
            && let Err(e) = self.dp.set_node_addrs(&addrs)
        {
            tracing::warn!(error = %e, "writing the node addresses");
            self.retry_at = Some(Instant::now() + RETRY);
            return;
        }
        // With --nodeport-addresses the servers listen on the chosen addresses only; else on
        // the wildcard address, as kube-proxy.
        let listen = if self.opts.nodeport_addresses.is_empty() {
            Vec::new()
        } else {
            addrs.iter().copied().collect()
        };
        self.health.set_addresses(listen);
        self.node_addrs = Some(addrs);
    }

    /// Re-reads the node's addresses when due; whether they changed.
    async fn refresh_node_addrs(&mut self) -> bool {
        let Some(nl) = &self.netlink else {
            return false;
        };
        if self.addrs_at.elapsed() < ADDRESS_CHECK && self.node_addrs.is_some() {
            return false;
        }
        self.addrs_at = Instant::now();
        match nl.addresses(0).await {
            Ok(list) => {
                let all: BTreeSet<IpAddr> = list.into_iter().map(|(_, n)| n.addr()).collect();
                let before = self.node_addrs.clone();
                self.set_node_addrs(&all);
                before != self.node_addrs
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading this node's addresses");
                false
            }
        }
    }

    /// One pass on a snapshot: model, diff, write, sockets of removed backends, health
    /// servers, metrics, status. Events are the caller's (see [`Daemon::pass`]).
    pub fn pass_on(&mut self, snap: &Snapshot) -> PassReport {
        self.pass_with(snap, None)
    }

    /// [`Daemon::pass_on`], told which objects changed since the last pass's snapshot (all
    /// of them, more is harmless), or `None` to compare snapshots.
    pub fn pass_with(
        &mut self,
        snap: &Snapshot,
        changed: Option<&BTreeSet<ObjectRef>>,
    ) -> PassReport {
        let started = Instant::now();
        let mut report = PassReport::default();
        let plan = {
            // The last plan may share the model's state: let go of it first, so the model
            // changes its state in place instead of copying it. Under the lock, so the debug
            // endpoints wait for the new plan rather than find none.
            let status = self.status.clone();
            let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
            s.plan = None;
            let plan: Arc<dyn Plan> = Arc::new(self.model.plan(snap, changed));
            s.plan = Some(plan.clone());
            plan
        };
        let diff = match plan.diff() {
            Some(d) => {
                debug_assert!(
                    {
                        let mut next = MapState::clone(&self.current);
                        super::state::apply(&mut next, d);
                        &next == plan.maps()
                    },
                    "the plan's diff does not turn the maps into its maps"
                );
                d.clone()
            }
            None => MapDiff::between(&self.current, plan.maps()),
        };
        let computed = started.elapsed();
        let mut failing = None;
        if diff.is_empty() {
            // Nothing to write: the maps are the plan's (ids handed out and unused are free).
            self.model.committed_diff(&self.current, &diff);
        } else {
            match self.dp.apply(&diff) {
                Ok(()) => {
                    report.written = diff.len();
                    let removed = removed_backends(&self.current, &diff);
                    self.model.committed_diff(&self.current, &diff);
                    self.change_current(|c| super::state::apply(c, &diff));
                    if !removed.is_empty() {
                        match self.dp.destroy_sockets(&removed) {
                            Ok(n) => tracing::info!(
                                backends = removed.len(),
                                sockets = n,
                                "destroyed the sockets connected to removed backends"
                            ),
                            Err(e) => tracing::warn!(error = %e, backends = removed.len(),
                                "destroying the sockets of removed backends"),
                        }
                        report.destroyed = removed;
                    }
                    tracing::info!(
                        written = report.written,
                        frontends = self.current.svc.len(),
                        backends = self.current.backend.len(),
                        computed = ?computed,
                        took = ?started.elapsed(),
                        "maps programmed"
                    );
                }
                Err(e) => {
                    let msg = e.to_string();
                    tracing::warn!(error = %msg, operations = diff.len(), "programming the maps; retrying");
                    self.metrics.sync_errors.inc();
                    // Part of the diff may be in: start the next diff from what the maps hold.
                    match self.dp.read() {
                        Ok(live) => {
                            self.current = Arc::new(live);
                            self.model.committed(&self.current);
                        }
                        Err(e) => tracing::warn!(error = %e, "reading the maps back"),
                    }
                    failing = Some(msg);
                }
            }
        }
        // Slices changed without a map change count as programmed too (nothing to do).
        if failing.is_none() {
            self.observe_programming(snap, changed);
        } else if let Some(refs) = changed {
            self.unprogrammed.extend(
                refs.iter()
                    .filter(|r| r.kind == Kind::EndpointSlice)
                    .map(|r| r.key()),
            );
        }
        // Health servers answer 503 while the maps are not what the cluster asks for.
        self.health.set_proxy_healthy(failing.is_none());
        let health_errors = self.health.update(&plan.health_checks());
        for e in &health_errors {
            tracing::warn!(error = %e, "healthCheckNodePort server");
        }
        let problems: BTreeSet<ServiceProblem> = plan.problems().into_iter().collect();
        for p in problems.difference(&self.reported) {
            tracing::warn!(service = %format!("{}/{}", p.namespace, p.name), reason = %p.reason,
                problem = %p.message, "Service not fully handled");
            report.new_problems.push(p.clone());
        }
        // A problem fixed and made again is reported again.
        self.reported = problems;
        self.retry_at =
            (failing.is_some() || !health_errors.is_empty()).then(|| Instant::now() + RETRY);
        if failing.is_none() {
            self.metrics
                .sync_duration
                .observe(started.elapsed().as_secs_f64());
            self.metrics.sync_last_timestamp.set(unix_now());
        }
        self.metrics.observe_state(&self.current);
        if self.fill_at.elapsed() >= self.fill_every {
            self.observe_datapath();
        }
        {
            let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
            s.node = self.node.clone();
            s.live = self.current.clone();
            s.failing = failing.clone();
            s.passes += 1;
            s.health_ports = self.health.bound();
        }
        if failing.is_none() {
            self.readiness.set(true);
        }
        report.error = failing;
        report
    }

    /// Changes the daemon's record of the maps, which the status shares: the status lets go
    /// of it meanwhile (under its lock, so no reader sees it half done), so it is changed in
    /// place, not copied.
    fn change_current(&mut self, f: impl FnOnce(&mut MapState)) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.live = Arc::default();
        f(Arc::make_mut(&mut self.current));
        s.live = self.current.clone();
    }

    fn observe_datapath(&mut self) {
        let started = Instant::now();
        self.observe_datapath_now();
        self.fill_at = Instant::now();
        self.fill_every = fill_interval(started.elapsed());
    }

    fn observe_datapath_now(&mut self) {
        match self.dp.counters() {
            Ok(c) => self.metrics.observe_counters(&c),
            Err(e) => tracing::debug!(error = %e, "reading the data path counters"),
        }
        match self.dp.fill() {
            Ok(fill) => {
                for (map, entries, capacity) in self.metrics.observe_fill(&fill) {
                    tracing::warn!(%map, entries, capacity,
                        "BPF map over 90% full: raise its size (--bpf-ct-max for mn_ct) before new connections fail");
                }
            }
            Err(e) => tracing::debug!(error = %e, "reading the map fill levels"),
        }
    }

    /// kube-proxy's network programming latency: for each EndpointSlice changed since the
    /// last pass (`changed`, else found by comparing snapshots), from its
    /// last-change-trigger-time to now.
    fn observe_programming(&mut self, snap: &Snapshot, changed: Option<&BTreeSet<ObjectRef>>) {
        let now = SystemTime::now();
        let mut keys = std::mem::take(&mut self.unprogrammed);
        match changed {
            Some(refs) => keys.extend(
                refs.iter()
                    .filter(|r| r.kind == Kind::EndpointSlice)
                    .map(|r| r.key()),
            ),
            None => {
                let old = self.slices.take().unwrap_or_default();
                keys.extend(
                    super::model::changed_objects(&old, &snap.endpoint_slices)
                        .into_iter()
                        .map(|c| c.key.clone()),
                );
            }
        }
        // Kept only to compare with the next snapshot: a snapshot kept makes the state copy
        // its map on the next change instead of changing it in place.
        self.slices = changed.is_none().then(|| snap.endpoint_slices.clone());
        for key in keys {
            let stamp = snap.endpoint_slices.get(&key).and_then(|s| {
                s.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(TRIGGER_TIME))
                    .cloned()
            });
            let Some(stamp) = stamp else {
                self.stamps.remove(&key);
                continue;
            };
            // Each change has its own trigger time: one seen before is not counted again.
            if self.stamps.get(&key) == Some(&stamp) {
                continue;
            }
            if let Some(t) = parse_rfc3339(&stamp)
                && let Ok(d) = now.duration_since(t)
            {
                self.metrics.network_programming.observe(d.as_secs_f64());
            }
            self.stamps.insert(key, stamp);
        }
    }
}

/// The local ready endpoints a healthCheckNodePort reports: distinct addresses of the larger
/// family. kube-proxy runs one proxier per family, each answering its own family's count, so
/// a dual-stack pod counts once, not twice. Pure.
pub fn local_ready_per_family(backends: &[super::model::BackendView]) -> usize {
    let (mut v4, mut v6) = (BTreeSet::new(), BTreeSet::new());
    for b in backends.iter().filter(|b| b.local && b.ready) {
        if b.addr.is_ipv4() {
            v4.insert(b.addr);
        } else {
            v6.insert(b.addr);
        }
    }
    v4.len().max(v6.len())
}

/// The interval before the next fill walk when the last one took `took`. Pure.
fn fill_interval(took: Duration) -> Duration {
    took.saturating_mul(FILL_COST_FACTOR)
        .clamp(FILL_MIN, FILL_MAX)
}

/// The annotation the EndpointSlice controller sets to when the change that made the slice
/// happened.
pub const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The backends a diff removes, as they were (their sockets are to be destroyed).
fn removed_backends(before: &MapState, diff: &MapDiff) -> Vec<abi::Backend> {
    diff.backend_remove
        .iter()
        .filter_map(|id| before.backend.get(id).copied())
        .collect()
}

fn is_link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` (RFC 3339, as Kubernetes writes times); `None`
/// for anything else.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let f = &frac[..digits.min(9)];
        nanos = f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32);
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

/// What only the daemon knows about a Service: its healthCheckNodePort server.
fn health_lines(status: &Status, plan: &dyn Plan, ns: &str, name: &str) -> String {
    let mut out = String::new();
    for (port, h) in plan.health_checks() {
        if h.namespace != ns || h.name != name {
            continue;
        }
        let answer = if h.local_endpoints > 0 && status.failing.is_none() {
            "200"
        } else {
            "503"
        };
        match status.health_ports.get(&port) {
            Some(addrs) => {
                let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                out.push_str(&format!(
                    "  healthCheckNodePort {port}: listening on {}, answering {answer} ({} local endpoints)\n",
                    addrs.join(", "),
                    h.local_endpoints
                ));
            }
            None => out.push_str(&format!(
                "  healthCheckNodePort {port}: NOT listening (the port is taken? see the log)\n"
            )),
        }
    }
    out
}

/// The query parameter `key` of a request path.
fn query<'a>(path: &'a str, key: &str) -> Option<&'a str> {
    path.split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Answers the debug endpoints: `/debug/proxy/service?name=NS/NAME` (what `explain service`
/// prints) and `/debug/proxy/dump` (what `dump` prints); `None` for other paths.
pub fn debug_answer(status: &Status, path: &str) -> Option<Result<String, String>> {
    let route = path.split('?').next().unwrap_or("");
    if !matches!(route, "/debug/proxy/service" | "/debug/proxy/dump") {
        return None;
    }
    let Some(plan) = &status.plan else {
        return Some(Err(
            "the service proxy has not computed its maps yet\n".to_string()
        ));
    };
    let mut text = match route {
        "/debug/proxy/service" => {
            let Some(full) = query(path, "name").filter(|n| !n.is_empty()) else {
                return Some(Err("name=NAMESPACE/NAME is missing\n".into()));
            };
            let (ns, name) = full.split_once('/').unwrap_or(("default", full));
            match plan.explain_service(&status.live, ns, name) {
                Some(mut t) => {
                    t.push_str(&health_lines(status, plan.as_ref(), ns, name));
                    t
                }
                None => {
                    return Some(Err(format!(
                        "Service {ns}/{name}: not handled by this proxy (missing, headless, ExternalName, or another service-proxy-name)\n"
                    )));
                }
            }
        }
        _ => plan.dump(&status.live),
    };
    if let Some(f) = &status.failing {
        text.push_str(&format!(
            "\nWARNING: the last pass could not program the maps: {f}\n"
        ));
    }
    Some(Ok(text))
}

#[cfg(test)]
mod tests;
