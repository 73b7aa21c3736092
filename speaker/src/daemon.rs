//! The speaker daemon: membership, the layer 2 election and announcer, BGP sessions, and the
//! status writers of both modes, each loop on the common reconcile driver. In the library,
//! so it is tested without starting a process.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use std::convert::Infallible;

use metalnet::daemon::{Driver, Health, OwnedObjects, Plan, Reconcile, Shutdown};
use metalnet::state::{ClusterState, Kind, Snapshot};
use metalnet::validate::valid_config;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::bgp::{Bgp, PlannedServices};
use crate::eligibility::{self, IpChoice};
use crate::layer2::election::{self, Inputs, ServiceElection};
use crate::layer2::{Layer2, RESCAN_INTERVAL, announce_failures};
use crate::members::{Gossip, GossipOptions, Seed};
use crate::metrics::{AnnouncedLabels, Metrics};
use crate::status::{Failures, L2StatusPlanner, Round};

/// The kinds the speaker reads (and the status objects and Events it writes).
pub const KINDS: [Kind; 12] = [
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Node,
    Kind::IPAddressPool,
    Kind::L2Advertisement,
    Kind::ServiceL2Status,
    Kind::Event,
    // BGP mode
    Kind::BGPPeer,
    Kind::BGPAdvertisement,
    Kind::Community,
    Kind::Secret,
    Kind::ServiceBGPStatus,
];

/// Gossip settings from the flags.
#[derive(Clone, Debug)]
pub struct GossipSettings {
    pub port: u16,
    pub address: Option<IpAddr>,
    pub probe_period: Duration,
    pub suspect_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub node: String,
    /// Namespace of the ServiceL2Status objects.
    pub namespace: String,
    /// `None`: gossip off, Node Ready decides.
    pub gossip: Option<GossipSettings>,
    /// How long a starting speaker waits for the gossip to show every node before it
    /// announces anything (so it does not grab addresses other nodes hold).
    pub settle: Duration,
    /// How long a leaving speaker keeps answering after telling the others it leaves.
    pub leave_grace: Duration,
    pub ignore_exclude_label: bool,
}

fn seeds(snapshot: &Snapshot, port: u16, v4: bool) -> Vec<Seed> {
    snapshot
        .nodes
        .iter()
        .filter_map(|(k, n)| {
            eligibility::internal_ip(n, IpChoice::Prefer { v4 })
                .map(|ip| (k.name.clone(), SocketAddr::new(ip, port)))
        })
        .collect()
}

/// Runs the speaker until `shutdown` is requested, then leaves cleanly: BGP Cease (or
/// graceful restart), gossip leave, and answering ARP/NDP until another node took over.
///
/// Five parts run side by side, each on the common driver except membership:
/// - membership: gossip (or Node Ready) → the live set;
/// - layer 2: the election over the live set → the ARP/NDP table;
/// - layer 2 status: ServiceL2Status objects and Events for what this node announces;
/// - BGP: sessions and routes;
/// - BGP status: ServiceBGPStatus objects.
pub async fn run(
    state: Arc<ClusterState>,
    opts: Options,
    metrics: Arc<Metrics>,
    health: Health,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let layer2 = Arc::new(Layer2::new(metrics.clone()));
    layer2.rescan().context("listing network interfaces")?;
    let membership = Membership::start(state.clone(), &opts, shutdown.clone());

    let (l2_tx, l2_rx) = watch::channel::<Option<Round>>(None);
    let l2 = Driver::new(Layer2Loop {
        layer2: layer2.clone(),
        opts: opts.clone(),
        metrics: metrics.clone(),
        live: membership.live.clone(),
        rescan: tokio::time::interval(RESCAN_INTERVAL),
        started: Instant::now(),
        settled: opts.gossip.is_none(),
        gossiping: opts.gossip.is_some(),
        last_live: None,
        last_problems: Vec::new(),
        elections: Arc::new(Vec::new()),
        failures_dirty: false,
        status: l2_tx,
    })
    .shutdown(shutdown.clone())
    .metrics(metrics.driver.clone())
    .readiness(health.condition("layer2"));
    let l2_status = Driver::new(OwnedObjects::new(
        "layer2-status",
        state.clone(),
        l2_rx,
        L2StatusPlanner::new(opts.namespace.clone(), opts.node.clone()),
    ))
    .shutdown(shutdown.clone())
    .metrics(metrics.driver.clone());

    let (bgp_tx, bgp_rx) = watch::channel::<Option<PlannedServices>>(None);
    let bgp = Driver::new(BgpLoop {
        bgp: Some(Bgp::start(opts.node.clone(), metrics.clone())),
        ignore_exclude_label: opts.ignore_exclude_label,
        metrics: metrics.clone(),
        status: bgp_tx,
    })
    .shutdown(shutdown.clone())
    .metrics(metrics.driver.clone())
    .readiness(health.condition("bgp"));
    let bgp_status = Driver::new(OwnedObjects::new(
        "bgp-status",
        state.clone(),
        bgp_rx,
        crate::bgp::status::planner(opts.namespace.clone(), opts.node.clone()),
    ))
    .shutdown(shutdown.clone())
    .metrics(metrics.driver.clone());

    let spawn = |name: &'static str| {
        move |e: tokio::task::JoinError| anyhow::anyhow!("the {name} loop failed: {e}")
    };
    let (s1, s2, s3) = (state.clone(), state.clone(), state.clone());
    let l2 = tokio::spawn(async move { l2.run(&s1).await });
    let l2_status = tokio::spawn(async move { l2_status.run(&s2).await });
    let bgp = tokio::spawn(async move { bgp.run(&s3).await });
    let bgp_status = tokio::spawn(async move { bgp_status.run(&state).await });
    shutdown.wait().await;
    health.set_ready(false);

    // Leave first, so another node takes over at once; keep answering each address until the
    // next node is seen announcing it (or the grace ends), then stop.
    // BGP: Cease to every peer (they withdraw our routes), or keep them under graceful restart.
    let mut bgp = bgp.await.map_err(spawn("BGP"))?;
    tracing::info!("stopping: closing the BGP sessions");
    if let Some(b) = bgp.bgp.take() {
        b.shutdown().await;
    }
    tracing::info!("stopping: leaving the membership");
    layer2.begin_leaving();
    membership.leave().await;
    let deadline = Instant::now() + opts.leave_grace;
    while !layer2.announced().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = layer2.announced();
    if !left.is_empty() {
        tracing::info!(
            addresses = left.len(),
            "no other node took these addresses over within --leave-grace"
        );
    }
    layer2.shutdown();
    let _ = l2.await.map_err(spawn("layer 2"))?;
    let _ = l2_status.await.map_err(spawn("layer 2 status"))?;
    let _ = bgp_status.await.map_err(spawn("BGP status"))?;
    tracing::info!("stopped answering; bye");
    Ok(())
}

/// The live speakers: from gossip (started once this node's address is known), else from
/// the Nodes' Ready condition (`None` in the channel).
struct Membership {
    live: watch::Receiver<Option<BTreeSet<String>>>,
    gossip: Arc<tokio::sync::Mutex<Option<Gossip>>>,
}

impl Membership {
    fn start(state: Arc<ClusterState>, opts: &Options, shutdown: Shutdown) -> Membership {
        let (tx, live) = watch::channel(None);
        let gossip: Arc<tokio::sync::Mutex<Option<Gossip>>> = Arc::default();
        if let Some(settings) = opts.gossip.clone() {
            let node = opts.node.clone();
            let slot = gossip.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.wait() => {}
                    r = gossip_loop(state, node, settings, slot, tx) => {
                        if let Err(e) = r {
                            tracing::error!(error = format!("{e:#}"), "gossip stopped; the live set is frozen");
                        }
                    }
                }
            });
        }
        Membership { live, gossip }
    }

    async fn leave(&self) {
        if let Some(g) = self.gossip.lock().await.as_ref() {
            g.leave().await;
        }
    }
}

/// Starts gossip once this node's address is known (flag or its Node object), keeps the
/// seeds current and forwards the live set.
async fn gossip_loop(
    state: Arc<ClusterState>,
    node: String,
    settings: GossipSettings,
    slot: Arc<tokio::sync::Mutex<Option<Gossip>>>,
    tx: watch::Sender<Option<BTreeSet<String>>>,
) -> anyhow::Result<()> {
    let mut sub = state.subscribe();
    let mut live_rx: Option<watch::Receiver<BTreeSet<String>>> = None;
    let mut last_seeds: Vec<Seed> = Vec::new();
    let mut warned_no_address = false;
    loop {
        let snapshot = state.snapshot();
        let own_node_ip = snapshot
            .nodes
            .iter()
            .find(|(k, _)| k.name == node)
            .and_then(|(_, n)| eligibility::internal_ip(n, IpChoice::First));
        if live_rx.is_none() {
            match settings.address.or(own_node_ip) {
                Some(ip) => {
                    let g = Gossip::start(GossipOptions {
                        node: node.clone(),
                        addr: SocketAddr::new(ip, settings.port),
                        probe_period: settings.probe_period,
                        suspect_timeout: settings.suspect_timeout,
                    })
                    .await
                    .with_context(|| {
                        format!("binding the gossip socket on {ip}:{}", settings.port)
                    })?;
                    live_rx = Some(g.live());
                    *slot.lock().await = Some(g);
                }
                None if !warned_no_address => {
                    tracing::warn!(node = %node, "waiting for Node {node} with an InternalIP address to start gossip (or pass --gossip-address)");
                    warned_no_address = true;
                }
                None => {}
            }
        }
        if let Some(g) = slot.lock().await.as_ref() {
            let v4 = settings
                .address
                .or(own_node_ip)
                .map(|a| a.is_ipv4())
                .unwrap_or(true);
            let s = seeds(&snapshot, settings.port, v4);
            if s != last_seeds {
                g.set_seeds(s.clone());
                last_seeds = s;
            }
        }
        if let Some(rx) = &live_rx {
            tx.send_replace(Some(rx.borrow().clone()));
        }
        tokio::select! {
            _ = sub.next() => {}
            r = async { live_rx.as_mut().expect("guarded").changed().await }, if live_rx.is_some() => {
                if r.is_err() {
                    anyhow::bail!("the gossip task ended");
                }
            }
        }
    }
}

/// Layer 2 mode as the driver runs it: the election over the live set decides the ARP/NDP
/// table and what the status loop writes.
struct Layer2Loop {
    layer2: Arc<Layer2>,
    opts: Options,
    metrics: Arc<Metrics>,
    live: watch::Receiver<Option<BTreeSet<String>>>,
    rescan: tokio::time::Interval,
    started: Instant,
    /// Whether membership settled: a starting speaker waits for the gossip to show every
    /// node (or --gossip-settle) before it announces anything, so it does not grab addresses
    /// other nodes hold.
    settled: bool,
    gossiping: bool,
    last_live: Option<BTreeSet<String>>,
    last_problems: Vec<String>,
    elections: Arc<Vec<ServiceElection>>,
    /// The interfaces changed since the failures were computed.
    failures_dirty: bool,
    status: watch::Sender<Option<Round>>,
}

/// One decision of the layer 2 loop.
pub enum Layer2Op {
    /// Answer for exactly these addresses (this node's wins) and publish the election.
    Announce {
        elections: Arc<Vec<ServiceElection>>,
    },
    /// Only the interfaces changed: recompute which won addresses cannot be announced.
    Interfaces,
}

impl Layer2Loop {
    fn live(&self, snapshot: &Snapshot) -> BTreeSet<String> {
        match &*self.live.borrow() {
            Some(live) => live.clone(),
            None if !self.gossiping => eligibility::ready_nodes(&eligibility::nodes(snapshot)),
            None => BTreeSet::new(),
        }
    }

    fn publish(&mut self) {
        let failures = Arc::new(announce_failures(
            &self.layer2.announced(),
            &self.layer2.node_links(),
        ));
        publish_announced(&self.metrics, &self.elections, &self.opts.node, &failures);
        self.status.send_replace(Some(Round {
            elections: self.elections.clone(),
            failures,
        }));
    }
}

impl Reconcile for Layer2Loop {
    type Op = Layer2Op;
    type Key = &'static str;
    type Error = Infallible;

    fn name(&self) -> &'static str {
        "layer2"
    }

    fn ignored_kinds(&self) -> &[Kind] {
        &[Kind::ServiceL2Status, Kind::ServiceBGPStatus, Kind::Event]
    }

    fn plan(&mut self, input: Plan<'_, &'static str>) -> Vec<Layer2Op> {
        let snapshot = input.snapshot;
        let live = self.live(snapshot);
        let live_changed = self.last_live.as_ref() != Some(&live);
        if live_changed {
            tracing::info!(live = ?live, "live speakers");
            self.metrics.set_members(&live);
        }
        self.last_live = Some(live.clone());
        // Settling by time wakes the loop with nothing changed: the first election must
        // still be applied then.
        let mut just_settled = false;
        if !self.settled {
            let nodes = eligibility::nodes(snapshot);
            let everyone = nodes.keys().all(|n| live.contains(n));
            let after = self.started.elapsed();
            if (self.live.borrow().is_some() && everyone) || after >= self.opts.settle {
                tracing::info!(
                    ?after,
                    all_nodes_seen = everyone,
                    "membership settled, announcing"
                );
                self.settled = true;
                just_settled = true;
            } else {
                return Vec::new();
            }
        }
        let state_changed = input.changed.is_none_or(|c| !c.is_empty());
        if !(state_changed || live_changed || just_settled) {
            return if std::mem::take(&mut self.failures_dirty) {
                vec![Layer2Op::Interfaces]
            } else {
                Vec::new()
            };
        }
        let (elections, problems) = elect(snapshot, &live, &self.opts);
        if problems != self.last_problems {
            for p in &problems {
                tracing::warn!(problem = %p, "configuration problem (the valid part is used)");
            }
            self.last_problems = problems;
        }
        self.failures_dirty = false;
        vec![Layer2Op::Announce {
            elections: Arc::new(elections),
        }]
    }

    fn key(&self, _op: &Layer2Op) -> &'static str {
        "layer2"
    }

    async fn apply(&mut self, op: Layer2Op) -> Result<(), Infallible> {
        if let Layer2Op::Announce { elections } = op {
            // Addresses whose interfaces are not usable here stay in the table: they are
            // answered as soon as a rescan finds a named interface eligible.
            self.layer2
                .set(election::announced_by(&elections, &self.opts.node));
            self.elections = elections;
        }
        self.publish();
        Ok(())
    }

    fn external(&mut self) -> impl std::future::Future<Output = ()> + Send {
        let settle_at = (!self.settled).then(|| self.started + self.opts.settle);
        let layer2 = self.layer2.clone();
        let live = &mut self.live;
        let rescan = &mut self.rescan;
        let dirty = &mut self.failures_dirty;
        async move {
            tokio::select! {
                r = live.changed() => {
                    if r.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                _ = rescan.tick() => match layer2.rescan() {
                    Ok(changed) => *dirty |= changed,
                    Err(e) => tracing::warn!(error = %e, "listing network interfaces failed"),
                },
                _ = async {
                    match settle_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    fn ready(&self) -> bool {
        self.settled
    }
}

/// BGP mode as the driver runs it.
struct BgpLoop {
    bgp: Option<Bgp>,
    ignore_exclude_label: bool,
    metrics: Arc<Metrics>,
    status: watch::Sender<Option<PlannedServices>>,
}

/// Apply the plan just made to the sessions.
pub struct ApplyBgpPlan;

impl Reconcile for BgpLoop {
    type Op = ApplyBgpPlan;
    type Key = &'static str;
    type Error = Infallible;

    fn name(&self) -> &'static str {
        "bgp"
    }

    fn ignored_kinds(&self) -> &[Kind] {
        &[Kind::ServiceL2Status, Kind::ServiceBGPStatus, Kind::Event]
    }

    fn plan(&mut self, input: Plan<'_, &'static str>) -> Vec<ApplyBgpPlan> {
        let Some(bgp) = self.bgp.as_mut() else {
            return Vec::new();
        };
        let (config, _) = valid_config(input.snapshot);
        bgp.plan(
            input.snapshot,
            &config,
            self.ignore_exclude_label,
            input.changed,
        );
        vec![ApplyBgpPlan]
    }

    fn key(&self, _op: &Self::Op) -> &'static str {
        "bgp"
    }

    async fn apply(&mut self, _op: ApplyBgpPlan) -> Result<(), Infallible> {
        if let Some(bgp) = self.bgp.as_mut() {
            let services = bgp.apply(&self.metrics);
            self.status.send_replace(Some(services));
        }
        Ok(())
    }
}

/// Runs the election (pure). Returns the elections and the configuration problems.
fn elect(
    snapshot: &Arc<Snapshot>,
    live: &BTreeSet<String>,
    opts: &Options,
) -> (Vec<ServiceElection>, Vec<String>) {
    let (config, problems) = valid_config(snapshot);
    let nodes = eligibility::nodes(snapshot);
    let elections = election::elect_all(&Inputs {
        snapshot,
        config: &config,
        nodes: &nodes,
        live,
        ignore_exclude_label: opts.ignore_exclude_label,
    });
    let problems = problems
        .iter()
        .filter(|p| p.is_error())
        .map(|p| p.to_string())
        .collect();
    (elections, problems)
}

/// Sets `metallb_speaker_announced` for the addresses this node announces. Unlike MetalLB
/// (which sets it even after `announceFailed`), addresses that failed are left out.
fn publish_announced(
    metrics: &Metrics,
    elections: &[ServiceElection],
    node: &str,
    failures: &Failures,
) {
    metrics.announced.clear();
    for e in elections.iter().filter(|e| e.winner() == Some(node)) {
        for ip in e.ips.iter().filter(|ip| !failures.contains_key(ip)) {
            metrics
                .announced
                .get_or_create(&AnnouncedLabels {
                    protocol: "layer2".into(),
                    service: format!("{}/{}", e.namespace, e.name),
                    node: node.to_string(),
                    ip: ip.to_string(),
                })
                .set(1);
        }
    }
}
