//! The speaker daemon: watches the cluster, keeps the live-speaker view, runs the election on
//! every change and hands the result to the announcer and the status writer.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metalnet::state::{ClusterState, Kind, ObjectRef, Snapshot};
use metalnet::telemetry::Health;
use metalnet::validate::valid_config;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::time::Instant;

use metalnet_speaker::bgp::Bgp;
use metalnet_speaker::eligibility::{self, IpChoice};
use metalnet_speaker::layer2::election::{self, Inputs, ServiceElection};
use metalnet_speaker::layer2::{Layer2, RESCAN_INTERVAL, announce_failures};
use metalnet_speaker::members::{Gossip, GossipOptions, Seed};
use metalnet_speaker::metrics::{AnnouncedLabels, Metrics};
use metalnet_speaker::status::{Failures, Round, StatusWriter};

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

pub async fn run(
    state: Arc<ClusterState>,
    opts: Options,
    metrics: Arc<Metrics>,
    health: Health,
) -> anyhow::Result<()> {
    let layer2 = Layer2::new(metrics.clone());
    layer2.rescan().context("listing network interfaces")?;
    let status = StatusWriter::start(state.clone(), opts.namespace.clone(), opts.node.clone());
    // BGP mode (issue 6): needs no membership, so it runs before the gossip settles; it
    // replans on every change except status objects and events.
    let mut bgp = Bgp::start(
        state.clone(),
        opts.namespace.clone(),
        opts.node.clone(),
        metrics.clone(),
    );
    let mut bgp_dirty = true;
    // Everything changed since the last BGP plan (`None`: unknown, the first plan).
    let mut bgp_changed: Option<BTreeSet<ObjectRef>> = None;
    let mut sub = state.subscribe();
    let mut snapshot = state.snapshot();
    let mut gossip: Option<Gossip> = None;
    let mut live_rx: Option<watch::Receiver<BTreeSet<String>>> = None;
    let mut last_seeds: Vec<Seed> = Vec::new();
    let mut warned_no_address = false;
    let started = Instant::now();
    let mut settled = opts.gossip.is_none();
    let mut last_live: Option<BTreeSet<String>> = None;
    let mut last_problems: Vec<String> = Vec::new();
    // Whether something the election depends on changed since the last reconcile (the
    // status objects and events the speaker writes itself do not count).
    let mut dirty = true;
    let mut last_inputs: Option<BTreeSet<String>> = None;
    let mut last_elections = Arc::new(Vec::new());
    // Addresses won but not announceable on this node's interfaces; recomputed when the
    // election or the interfaces change.
    let mut failures = Arc::new(Failures::new());
    let mut failures_dirty = false;
    let mut rescan = tokio::time::interval(RESCAN_INTERVAL);
    rescan.tick().await;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    loop {
        // Gossip starts once this node's address is known (flag or its Node object).
        if let Some(g) = &opts.gossip
            && gossip.is_none()
        {
            let own = g.address.or_else(|| {
                snapshot
                    .nodes
                    .iter()
                    .find(|(k, _)| k.name == opts.node)
                    .and_then(|(_, n)| eligibility::internal_ip(n, IpChoice::First))
            });
            match own {
                Some(ip) => {
                    let started_gossip = Gossip::start(GossipOptions {
                        node: opts.node.clone(),
                        addr: SocketAddr::new(ip, g.port),
                        probe_period: g.probe_period,
                        suspect_timeout: g.suspect_timeout,
                    })
                    .await
                    .with_context(|| format!("binding the gossip socket on {ip}:{}", g.port))?;
                    live_rx = Some(started_gossip.live());
                    gossip = Some(started_gossip);
                }
                None if !warned_no_address => {
                    tracing::warn!(node = %opts.node, "waiting for Node {} with an InternalIP address to start gossip (or pass --gossip-address)", opts.node);
                    warned_no_address = true;
                }
                None => {}
            }
        }
        if let (Some(g), Some(settings)) = (&gossip, &opts.gossip) {
            let v4 = settings
                .address
                .map(|a| a.is_ipv4())
                .or_else(|| {
                    snapshot
                        .nodes
                        .iter()
                        .find(|(k, _)| k.name == opts.node)
                        .and_then(|(_, n)| eligibility::internal_ip(n, IpChoice::First))
                        .map(|a| a.is_ipv4())
                })
                .unwrap_or(true);
            let s = seeds(&snapshot, settings.port, v4);
            if s != last_seeds {
                g.set_seeds(s.clone());
                last_seeds = s;
            }
        }

        let nodes = eligibility::nodes(&snapshot);
        let live = match &live_rx {
            Some(rx) => rx.borrow().clone(),
            None if opts.gossip.is_none() => eligibility::ready_nodes(&nodes),
            None => BTreeSet::new(),
        };
        if last_live.as_ref() != Some(&live) {
            tracing::info!(live = ?live, "live speakers");
            metrics.set_members(&live);
            last_live = Some(live.clone());
        }
        if !settled {
            let everyone = nodes.keys().all(|n| live.contains(n));
            if (gossip.is_some() && everyone) || started.elapsed() >= opts.settle {
                tracing::info!(after = ?started.elapsed(), all_nodes_seen = everyone, "membership settled, announcing");
                settled = true;
            }
        }
        if settled && (dirty || last_inputs.as_ref() != Some(&live)) {
            let (elections, problems) = reconcile(&snapshot, &live, &opts, &layer2);
            last_elections = Arc::new(elections);
            failures_dirty = true;
            if problems != last_problems {
                for p in &problems {
                    tracing::warn!(problem = %p, "configuration problem (the valid part is used)");
                }
                last_problems = problems;
            }
            dirty = false;
            last_inputs = Some(live.clone());
        }
        if failures_dirty {
            failures = Arc::new(announce_failures(&layer2.announced(), &layer2.node_links()));
            publish_announced(&metrics, &last_elections, &opts.node, &failures);
            failures_dirty = false;
        }
        if settled {
            status.update(Round {
                snapshot: snapshot.clone(),
                elections: last_elections.clone(),
                failures: failures.clone(),
            });
        }
        if bgp_dirty {
            bgp.reconcile(
                &snapshot,
                &valid_config(&snapshot).0,
                opts.ignore_exclude_label,
                bgp_changed.as_ref(),
                &metrics,
            );
            bgp_dirty = false;
            bgp_changed = Some(BTreeSet::new());
        }
        health.set_ready(settled);

        let settle_at = started + opts.settle;
        tokio::select! {
            u = sub.next() => {
                dirty |= u
                    .changed
                    .iter()
                    .any(|r| !matches!(r.kind, Kind::ServiceL2Status | Kind::ServiceBGPStatus | Kind::Event));
                bgp_dirty |= metalnet_speaker::bgp::replan_needed(&u.changed);
                if let Some(c) = &mut bgp_changed {
                    c.extend(u.changed.into_iter().filter(|r| {
                        !matches!(r.kind, Kind::ServiceL2Status | Kind::ServiceBGPStatus | Kind::Event)
                    }));
                }
                snapshot = u.snapshot;
            }
            r = async { live_rx.as_mut().expect("guarded").changed().await }, if live_rx.is_some() => {
                if r.is_err() { live_rx = None; }
            }
            _ = rescan.tick() => {
                match layer2.rescan() {
                    Ok(changed) => failures_dirty |= changed,
                    Err(e) => tracing::warn!(error = %e, "listing network interfaces failed"),
                }
            }
            _ = tokio::time::sleep_until(settle_at), if !settled => {}
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }

    // Leave first, so another node takes over at once; keep answering each address until the
    // next node is seen announcing it (or the grace ends), then stop.
    // BGP: Cease to every peer (they withdraw our routes), or keep them under graceful restart.
    tracing::info!("stopping: closing the BGP sessions");
    bgp.shutdown().await;
    tracing::info!("stopping: leaving the membership");
    health.set_ready(false);
    layer2.begin_leaving();
    if let Some(g) = &gossip {
        g.leave().await;
    }
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
    tracing::info!("stopped answering; bye");
    Ok(())
}

/// Runs the election and applies it. Returns the elections and the configuration problems.
fn reconcile(
    snapshot: &Arc<Snapshot>,
    live: &BTreeSet<String>,
    opts: &Options,
    layer2: &Layer2,
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
    // Addresses whose interfaces are not usable here stay in the table: they are answered
    // as soon as a rescan finds a named interface eligible.
    layer2.set(election::announced_by(&elections, &opts.node));
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
