//! The agent loop: from each cluster-state update (and a periodic check) to the kernel,
//! the Node's annotations, `subnet.env` and the masquerade rules.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use metalnet::daemon::{Classify, Driver, Health, PassReport, Plan, Reconcile, Shutdown};
use metalnet::state::{ClusterState, ErrorClass, Kind, ObjectKey, ObjectRef, Snapshot};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::annotations::{BackendData, Mac, NodeView, Publication};
use crate::kernel::{Kernel, UnderlayInfo};
use crate::masq;
use crate::netconf::{Backend, NetConf, Pool};
use crate::plan::{Desired, FamilyInput, Observed, desired, device_name, diff};
use crate::subnet::{Choice, choose};
use crate::subnet_env::SubnetEnv;

/// How the agent was asked to run.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: String,
    pub netconf: NetConf,
    pub iface: Option<String>,
    pub public_ip: Option<IpAddr>,
    pub public_ipv6: Option<IpAddr>,
    pub ip_masq: bool,
    pub subnet_file: PathBuf,
    /// On the state directory a node without podCIDR leases a subnet itself.
    pub may_lease: bool,
    /// Full re-read of the kernel state (drift correction).
    pub resync: Duration,
    /// How often the device's presence is checked (Flannel watches link events).
    pub check: Duration,
}

/// The agent's Prometheus metrics.
#[derive(Clone, Default)]
pub struct Metrics {
    pub peers: Gauge,
    pub reconcile_errors: Counter,
    pub reconcile_seconds: Gauge<f64, AtomicU64>,
    /// The reconcile driver's own: passes, ops by result, retries waiting.
    pub driver: metalnet::daemon::DriverMetrics,
}

impl Metrics {
    pub fn register(&self, reg: &mut Registry) {
        self.driver.register(reg);
        reg.register(
            "metalnet_vxlan_peers_programmed",
            "Peer nodes whose entries are programmed",
            self.peers.clone(),
        );
        reg.register(
            "metalnet_vxlan_reconcile_errors",
            "Reconciliations that failed",
            self.reconcile_errors.clone(),
        );
        reg.register(
            "metalnet_vxlan_last_reconcile_seconds",
            "Duration of the last reconciliation",
            self.reconcile_seconds.clone(),
        );
    }
}

struct Family {
    v6: bool,
    pool: Pool,
    underlay: UnderlayInfo,
    mac: Option<Mac>,
    observed: Option<Observed>,
    observed_at: Instant,
    skipped: BTreeSet<(String, String)>,
    subnet: Option<ipnet::IpNet>,
}

pub struct Agent {
    cfg: AgentConfig,
    kernel: Kernel,
    fams: Vec<Family>,
    health: Health,
    metrics: Metrics,
    masq_applied: Option<String>,
    published: Option<BTreeMap<String, Option<String>>>,
    /// A subnet lease just published is trusted only after this moment, when agents that
    /// started at the same time have published theirs and a conflict would be visible.
    lease_settle_until: Option<Instant>,
}

/// How a reconcile pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The kernel, subnet.env and rules match the desired state.
    Done,
    /// A subnet lease was just published; the data path waits until it has stood.
    LeasePending,
}

/// How long a freshly published lease must stand before the node uses it: well above the
/// state directory's change latency (tens of ms), so two agents leasing at once see each
/// other and the loser re-leases before either hands the subnet to pods.
const LEASE_SETTLE: Duration = Duration::from_millis(500);

impl Agent {
    /// Resolves the underlay of each enabled family.
    pub async fn new(
        cfg: AgentConfig,
        kernel: Kernel,
        health: Health,
        metrics: Metrics,
    ) -> anyhow::Result<Agent> {
        let mut fams = Vec::new();
        for (pool, v6, public) in [
            (cfg.netconf.ipv4.clone(), false, cfg.public_ip),
            (cfg.netconf.ipv6.clone(), true, cfg.public_ipv6),
        ] {
            let Some(pool) = pool else { continue };
            let underlay = kernel
                .underlay(cfg.iface.as_deref(), public, v6)
                .await
                .with_context(|| {
                    format!("finding the {} underlay", if v6 { "IPv6" } else { "IPv4" })
                })?;
            tracing::info!(iface = %underlay.name, public_ip = %underlay.public_ip, mtu = underlay.underlay.mtu, "underlay");
            fams.push(Family {
                v6,
                pool,
                underlay,
                mac: None,
                observed: None,
                observed_at: Instant::now(),
                skipped: BTreeSet::new(),
                subnet: None,
            });
        }
        Ok(Agent {
            cfg,
            kernel,
            fams,
            health,
            metrics,
            masq_applied: None,
            published: None,
            lease_settle_until: None,
        })
    }

    /// Runs on the common driver until `shutdown` is requested; the data path is left in
    /// place. A failed pass is retried with backoff (re-reading the kernel first).
    pub async fn run(self, state: &ClusterState, shutdown: &Shutdown) -> Agent {
        let readiness = self.health.condition("vxlan");
        let metrics = self.metrics.driver.clone();
        Driver::new(AgentLoop {
            node: ObjectRef::new(Kind::Node, None, &self.cfg.node),
            wait: Duration::ZERO,
            state,
            agent: self,
        })
        .shutdown(shutdown.clone())
        .metrics(metrics)
        .readiness(readiness)
        .run(state)
        .await
        .agent
    }

    /// One pass: subnets, annotations, kernel, subnet.env, masquerade.
    pub async fn reconcile(&mut self, state: &ClusterState) -> anyhow::Result<Pass> {
        if let Some(until) = self.lease_settle_until.take() {
            tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
        }
        let snap = state.snapshot();
        let me_key = ObjectKey {
            namespace: None,
            name: self.cfg.node.clone(),
        };
        let me_node = snap
            .nodes
            .get(&me_key)
            .ok_or_else(|| anyhow!("Node/{} not found in the cluster state", self.cfg.node))?;
        let me = NodeView::of(&self.cfg.node, me_node);
        let views = node_views(&snap);
        // 1. Subnets.
        let mut choices = Vec::new();
        for f in &self.fams {
            choices.push(choose(&f.pool, &me, &views, self.cfg.may_lease)?);
        }
        // 2. VTEP MACs: our annotation, else the existing device's, else a new one.
        if let Backend::Vxlan(vx) = &self.cfg.netconf.backend {
            for f in &mut self.fams {
                if f.mac.is_some() {
                    continue;
                }
                let from_annotation = me
                    .data(f.v6)
                    .filter(|d| d.vtep_mac.is_unicast())
                    .map(|d| d.vtep_mac);
                let from_device = match from_annotation {
                    Some(_) => None,
                    None => self
                        .kernel
                        .observe_device(&device_name(f.v6, vx.vni))
                        .await?
                        .and_then(|d| d.mac)
                        .filter(Mac::is_unicast),
                };
                f.mac = Some(
                    from_annotation
                        .or(from_device)
                        .unwrap_or_else(crate::annotations::random_mac),
                );
            }
        }
        // 3. Publish.
        let vni = match &self.cfg.netconf.backend {
            Backend::Vxlan(vx) => Some(vx.vni),
            Backend::HostGw => None,
        };
        let mut publication = Publication {
            backend_type: self.cfg.netconf.backend.type_name(),
            data_v4: None,
            data_v6: None,
            public_ip: None,
            public_ipv6: None,
            lease_v4: None,
            lease_v6: None,
        };
        for (f, choice) in self.fams.iter().zip(&choices) {
            let data = vni
                .zip(f.mac)
                .map(|(vni, vtep_mac)| BackendData { vni, vtep_mac });
            let lease = match choice {
                Choice::Lease(n) => Some(*n),
                Choice::PodCidr(_) => None,
            };
            if f.v6 {
                publication.data_v6 = data;
                publication.public_ipv6 =
                    Some(me.public_ipv6_overwrite.unwrap_or(f.underlay.public_ip));
                publication.lease_v6 = lease;
            } else {
                publication.data_v4 = data;
                publication.public_ip =
                    Some(me.public_ip_overwrite.unwrap_or(f.underlay.public_ip));
                publication.lease_v4 = lease;
            }
        }
        let current = me_node.metadata.annotations.clone().unwrap_or_default();
        let new_lease = [
            (publication.lease_v4, crate::annotations::LEASE_V4),
            (publication.lease_v6, crate::annotations::LEASE_V6),
        ]
        .into_iter()
        .any(|(lease, key)| {
            lease.is_some_and(|l| current.get(key).map(String::as_str) != Some(&l.to_string()))
        });
        if let Some(patch) = publication.patch_for(&current) {
            let wanted = publication.annotations();
            if self.published.as_ref() != Some(&wanted) {
                tracing::info!(node = %self.cfg.node, keys = ?patch.annotations.keys().collect::<Vec<_>>(), "publishing annotations");
            }
            state
                .patch_metadata(&ObjectRef::new(Kind::Node, None, &self.cfg.node), &patch)
                .await
                .context("patching the Node's annotations")?;
            self.published = Some(wanted);
        }
        if new_lease {
            // Not used until it has stood unchallenged (see LEASE_SETTLE).
            self.lease_settle_until = Some(Instant::now() + LEASE_SETTLE);
            return Ok(Pass::LeasePending);
        }
        // 4. Kernel.
        let mut peers = 0;
        let mut failures = Vec::new();
        for (f, choice) in self.fams.iter_mut().zip(&choices) {
            let own = choice.subnet();
            let input = FamilyInput {
                conf: &self.cfg.netconf,
                pool: &f.pool,
                own_subnet: own,
                public_ip: f.underlay.public_ip,
                underlay: &f.underlay.underlay,
                mac: f.mac.unwrap_or_default(),
            };
            let (want, skipped) = desired(&input, &self.cfg.node, &views);
            let now: BTreeSet<(String, String)> =
                skipped.into_iter().map(|s| (s.node, s.reason)).collect();
            for (node, reason) in now.difference(&f.skipped) {
                tracing::warn!(peer = %node, reason = %reason, "peer not programmed");
            }
            f.skipped = now;
            if f.subnet != Some(own) {
                tracing::info!(subnet = %own, "node subnet");
                f.subnet = Some(own);
                f.observed = None;
            }
            let errs = sync_family(&self.kernel, f, &want, self.cfg.resync).await?;
            peers += want.peers;
            failures.extend(errs);
        }
        self.metrics.peers.set(peers as i64);
        if !failures.is_empty() {
            return Err(anyhow!(
                "{} kernel operations failed; first: {}",
                failures.len(),
                failures[0]
            ));
        }
        // 5. subnet.env, after the routes are in place.
        let mtu = self
            .fams
            .iter()
            .filter_map(|f| f.observed.as_ref()?.device.as_ref().map(|d| d.mtu))
            .next()
            .unwrap_or_else(|| {
                self.fams
                    .first()
                    .map(|f| f.underlay.underlay.mtu)
                    .unwrap_or(1500)
            });
        let mut env = SubnetEnv {
            network: None,
            subnet: None,
            ipv6_network: None,
            ipv6_subnet: None,
            mtu,
            ip_masq: self.cfg.ip_masq,
        };
        for (f, c) in self.fams.iter().zip(&choices) {
            if f.v6 {
                env.ipv6_network = Some(f.pool.network);
                env.ipv6_subnet = Some(c.subnet());
            } else {
                env.network = Some(f.pool.network);
                env.subnet = Some(c.subnet());
            }
        }
        if env
            .write(&self.cfg.subnet_file)
            .with_context(|| format!("writing {}", self.cfg.subnet_file.display()))?
        {
            tracing::info!(path = %self.cfg.subnet_file.display(), "wrote subnet.env");
        }
        // 6. Masquerade.
        if self.cfg.ip_masq {
            let script: String = self
                .fams
                .iter()
                .zip(&choices)
                .map(|(f, c)| masq::render(&f.pool.network, &c.subnet()))
                .collect();
            if self.masq_applied.as_deref() != Some(script.as_str()) {
                masq::apply(&script).context("installing the masquerade rules")?;
                tracing::info!("masquerade rules installed");
                self.masq_applied = Some(script);
            }
        }
        Ok(Pass::Done)
    }

    /// Removes what the agent installed (on `--cleanup-on-exit`): routes, devices, rules.
    pub async fn cleanup(&mut self) -> anyhow::Result<()> {
        for f in &mut self.fams {
            if let Some(obs) = &f.observed {
                let steps = obs
                    .routes
                    .values()
                    .filter(|r| r.ours)
                    .map(|r| crate::plan::Step {
                        ops: vec![crate::plan::Op::RouteDel(r.spec)],
                    })
                    .collect();
                let mut obs = obs.clone();
                let errs = self
                    .kernel
                    .apply_steps(steps, f.underlay.underlay.index, &mut obs)
                    .await;
                for (op, e) in errs {
                    tracing::warn!(?op, error = %e, "cleanup");
                }
                if let Some(dev) = &obs.device {
                    self.kernel.netlink().delete_link(dev.index).await?;
                }
            }
            f.observed = None;
        }
        if self.masq_applied.take().is_some() {
            let script: String = self
                .fams
                .iter()
                .map(|f| masq::render_delete(f.v6))
                .collect();
            masq::apply(&script)?;
        }
        Ok(())
    }
}

fn node_views(snap: &Snapshot) -> Vec<NodeView> {
    snap.nodes
        .iter()
        .map(|(k, n)| NodeView::of(&k.name, n))
        .collect()
}

/// Brings one family's kernel state to `want`, re-reading the kernel when due or when the
/// device changed behind our back. Returns the per-peer failures.
async fn sync_family(
    kernel: &Kernel,
    f: &mut Family,
    want: &Desired,
    resync: Duration,
) -> anyhow::Result<Vec<String>> {
    let underlay_index = f.underlay.underlay.index;
    let due = f.observed.is_none() || f.observed_at.elapsed() >= resync;
    if !due && let Some(spec) = &want.device {
        let now = kernel.observe_device(&spec.name).await?;
        let cached = f.observed.as_ref().and_then(|o| o.device.as_ref());
        if now.as_ref() != cached {
            if now.is_none() {
                tracing::warn!(device = %spec.name, "device vanished; recreating it");
            }
            f.observed = None;
        }
    }
    if f.observed.is_none() || f.observed_at.elapsed() >= resync {
        f.observed = Some(kernel.observe(want, underlay_index).await?);
        f.observed_at = Instant::now();
    }
    let obs = f.observed.as_mut().expect("observed above");
    if let Some(spec) = &want.device {
        kernel.apply_device(spec, obs).await?;
    }
    let (removals, additions) = diff(want, obs);
    if removals.is_empty() && additions.is_empty() {
        return Ok(Vec::new());
    }
    tracing::debug!(?removals, ?additions, "steps");
    let started = Instant::now();
    let (nr, na) = (removals.len(), additions.len());
    let mut errors = kernel.apply_steps(removals, underlay_index, obs).await;
    errors.extend(kernel.apply_steps(additions, underlay_index, obs).await);
    tracing::info!(removed = nr, added_or_changed = na, failed = errors.len(), took = ?started.elapsed(), v6 = f.v6, "programmed peers");
    Ok(errors
        .into_iter()
        .map(|(op, e)| format!("{op:?}: {e}"))
        .collect())
}

/// A failed pass of the agent: kernel, API and file errors alike are worth another try.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct PassError(anyhow::Error);

impl Classify for PassError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Transient
    }
}

/// The agent as the driver runs it. The agent's pass reads the kernel and the snapshot
/// itself, so the plan is one op, keyed by this node: "bring the data path in line".
struct AgentLoop<'s> {
    agent: Agent,
    state: &'s ClusterState,
    node: ObjectRef,
    /// When to check again without a change: the device check, or a lease settling.
    wait: Duration,
}

impl Reconcile for AgentLoop<'_> {
    type Op = ();
    type Key = ObjectRef;
    type Error = PassError;

    fn name(&self) -> &'static str {
        "vxlan"
    }

    fn plan(&mut self, _input: Plan<'_, ObjectRef>) -> Vec<()> {
        vec![()]
    }

    fn key(&self, _op: &()) -> ObjectRef {
        self.node.clone()
    }

    async fn apply(&mut self, _op: ()) -> Result<(), PassError> {
        let started = Instant::now();
        let result = self.agent.reconcile(self.state).await;
        self.agent
            .metrics
            .reconcile_seconds
            .set(started.elapsed().as_secs_f64());
        match result {
            Ok(Pass::Done) => {
                self.wait = self.agent.cfg.check;
                Ok(())
            }
            Ok(Pass::LeasePending) => {
                self.wait = LEASE_SETTLE;
                Ok(())
            }
            Err(e) => {
                self.agent.metrics.reconcile_errors.inc();
                // Re-read the kernel next time: what failed may have changed it.
                for f in &mut self.agent.fams {
                    f.observed = None;
                }
                // The driver's backoff decides when.
                self.wait = Duration::MAX;
                Err(PassError(e))
            }
        }
    }

    fn external(&mut self) -> impl std::future::Future<Output = ()> + Send {
        let wait = self.wait;
        async move {
            if wait == Duration::MAX {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn ready(&self) -> bool {
        self.wait == self.agent.cfg.check
    }

    fn finished(&mut self, _report: &PassReport) {}
}
