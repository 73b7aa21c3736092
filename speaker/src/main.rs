//! metalnet-speaker: per node, announces the LoadBalancer addresses the controller assigned.

#![forbid(unsafe_code)]

mod run;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use metalnet::addr::parse_go_duration;
use metalnet::cli::CommonArgs;
use metalnet::state::{Kind, ObjectRef};
use metalnet::telemetry::{Health, serve_metrics};
use metalnet::validate::valid_config;
use metalnet_speaker::eligibility;
use metalnet_speaker::layer2::election::{self, Inputs};
use metalnet_speaker::layer2::explain::{self, LiveSource};
use metalnet_speaker::metrics::{Metrics, parse_members};

const METRICS_PORT: u16 = 7473;

/// Announces LoadBalancer addresses from this node (MetalLB speaker compatible).
///
/// Runs on every node (a DaemonSet). Reads the addresses the controller wrote to Services'
/// status.loadBalancer.ingress, MetalLB's IPAddressPool and L2Advertisement objects, Nodes
/// and EndpointSlices.
///
/// Layer 2 mode: for every address an L2Advertisement covers, exactly one node answers ARP
/// (IPv4) and Neighbor Solicitations (IPv6) for it with its interface's MAC address, and sends
/// gratuitous ARP / unsolicited Neighbor Advertisements when it takes the address over. All
/// speakers elect the same node without asking each other: the candidates are the nodes with
/// a live speaker (gossip; Node Ready with --gossip off) that L2Advertisement nodeSelectors
/// select, that are not NetworkUnavailable or labelled
/// node.kubernetes.io/exclude-from-external-load-balancers and, for externalTrafficPolicy
/// Local, that run a serving endpoint; they are ordered by sha256(node + "#" + address) and
/// the first announces. The address is never added to an interface. On SIGTERM the speaker
/// leaves the gossip first (another node takes over at once) and keeps answering each
/// address until it sees the next node announce it (at most --leave-grace), then stops.
///
/// Status: a ServiceL2Status per announced Service (in --namespace), a `nodeAssigned` Event on
/// the Service when this node starts announcing it (an `announceFailed` Warning Event instead
/// when none of the interfaces the L2Advertisement names is usable here), metrics on
/// --metrics-addr, and
/// `metalnet-speaker explain NAMESPACE/NAME`.
///
/// BGP mode: for every address a BGPAdvertisement covers and selects this node for, the
/// speaker announces a route (the address masked to aggregationLength, with the
/// advertisement's communities and localPref) to each BGPPeer selecting this node, with the
/// session's local address as next hop, so routers spread traffic over all nodes (ECMP).
/// Under externalTrafficPolicy Local only nodes with a serving endpoint announce. On SIGTERM
/// the sessions close with a Cease (routes withdrawn) or, with enableGracefulRestart, just
/// close (the router keeps the routes for the restart time). Status: ServiceBGPStatus per
/// announced Service, metallb_bgp_* metrics, and BGP lines in `explain`.
#[derive(Parser, Debug)]
#[command(name = "metalnet-speaker", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Namespace where ServiceL2Status objects are written (MetalLB's namespace).
    #[arg(
        long,
        env = "METALLB_NAMESPACE",
        default_value = "metallb-system",
        global = true
    )]
    namespace: String,

    /// Liveness of speakers: `on` gossips (SWIM, over UDP --gossip-port, joined through the
    /// InternalIP addresses of the Node objects); `off` takes the Node Ready condition instead.
    #[arg(long, value_enum, default_value_t = OnOff::On, global = true)]
    gossip: OnOff,

    /// UDP port of the gossip, the same on every node (memberlist's default).
    #[arg(long, default_value_t = 7946, global = true)]
    gossip_port: u16,

    /// Address to gossip on and advertise; default: this node's InternalIP from its Node object.
    #[arg(long, value_name = "IP", global = true)]
    gossip_address: Option<IpAddr>,

    /// How often each speaker probes one other (Go duration). Failure detection takes about
    /// one to two periods plus --gossip-suspect-timeout.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = duration, global = true)]
    gossip_probe_period: Duration,

    /// How long a speaker that failed a probe stays suspected before it is declared gone.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = duration, global = true)]
    gossip_suspect_timeout: Duration,

    /// At start, how long to wait for the gossip to show every node before announcing
    /// anyway (a starting speaker must not grab addresses other live nodes hold).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = duration, global = true)]
    gossip_settle: Duration,

    /// On SIGTERM, the longest to keep answering for an address after leaving the gossip: it
    /// stops as soon as the next node is seen announcing it (gratuitous ARP / unsolicited NA).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration, global = true)]
    leave_grace: Duration,

    /// Let nodes labelled node.kubernetes.io/exclude-from-external-load-balancers announce.
    #[arg(long, global = true)]
    ignore_exclude_lb: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OnOff {
    On,
    Off,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Explain why this node (--node-name / NODE_NAME) does or does not announce a Service:
    /// pool, advertisements, endpoints, live speakers, the ranking and every exclusion. The
    /// live speakers are read from the running speaker's metrics endpoint (--speaker), else
    /// from the Node Ready conditions.
    Explain {
        /// The Service, as NAMESPACE/NAME.
        #[arg(value_name = "NAMESPACE/NAME")]
        service: String,
        /// The running speaker's metrics endpoint. Default: 127.0.0.1 on the port of
        /// --metrics-addr (7473).
        #[arg(long, value_name = "ADDR:PORT")]
        speaker: Option<SocketAddr>,
    },
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_go_duration(s).map_err(|e| e.to_string())
}

const KINDS: [Kind; 12] = [
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("metalnet-speaker: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match &cli.command {
        Some(Command::Explain { service, speaker }) => {
            runtime.block_on(explain_cmd(&cli, service, *speaker))
        }
        None => {
            cli.common.init_logging();
            runtime.block_on(daemon(&cli))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metalnet-speaker: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn daemon(cli: &Cli) -> anyhow::Result<()> {
    let node = cli.common.node_name()?.to_string();
    let state = Arc::new(
        cli.common
            .cluster_state(KINDS)
            .await
            .context("loading the cluster state")?,
    );
    let metrics = Arc::new(Metrics::default());
    let health = Health::default();
    if let Some(addr) = cli.common.metrics_addr(METRICS_PORT)? {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        serve_metrics(addr, Arc::new(registry), health.clone())
            .await
            .with_context(|| format!("serving metrics on {addr}"))?;
    }
    let gossip = (cli.gossip == OnOff::On).then_some(run::GossipSettings {
        port: cli.gossip_port,
        address: cli.gossip_address,
        probe_period: cli.gossip_probe_period,
        suspect_timeout: cli.gossip_suspect_timeout,
    });
    tracing::info!(%node, gossip = gossip.is_some(), "metalnet-speaker starting (layer 2 and BGP modes)");
    run::run(
        state,
        run::Options {
            node,
            namespace: cli.namespace.clone(),
            gossip,
            settle: cli.gossip_settle,
            leave_grace: cli.leave_grace,
            ignore_exclude_label: cli.ignore_exclude_lb,
        },
        metrics,
        health,
    )
    .await
}

/// Reads the live members from a running speaker's /metrics.
fn live_from_speaker(addr: SocketAddr) -> anyhow::Result<BTreeSet<String>> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: speaker\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    if !body.starts_with("HTTP/1.1 200") {
        bail!("unexpected answer: {}", body.lines().next().unwrap_or(""));
    }
    Ok(parse_members(&body))
}

async fn explain_cmd(cli: &Cli, service: &str, speaker: Option<SocketAddr>) -> anyhow::Result<()> {
    let Some((namespace, name)) = service.split_once('/') else {
        bail!("expected NAMESPACE/NAME, got {service:?}");
    };
    let state = cli
        .common
        .cluster_state(KINDS)
        .await
        .context("loading the cluster state")?;
    let snapshot = state.snapshot();
    let svc = snapshot
        .services
        .iter()
        .find(|(k, _)| k.namespace.as_deref() == Some(namespace) && k.name == name)
        .map(|(_, s)| s.clone())
        .with_context(|| format!("Service/{namespace}/{name} not found"))?;
    let nodes = eligibility::nodes(&snapshot);
    let port = cli
        .common
        .metrics_addr(METRICS_PORT)?
        .map(|a| a.port())
        .unwrap_or(METRICS_PORT);
    let speaker = speaker.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], port)));
    let (live, source) = if cli.gossip == OnOff::Off {
        (
            eligibility::ready_nodes(&nodes),
            LiveSource::NodeReady("--gossip off".into()),
        )
    } else {
        match tokio::task::spawn_blocking(move || live_from_speaker(speaker)).await? {
            Ok(live) => (live, LiveSource::Speaker(speaker.to_string())),
            Err(e) => (
                eligibility::ready_nodes(&nodes),
                LiveSource::NodeReady(format!("no speaker answered at {speaker}: {e}")),
            ),
        }
    };
    let (config, _) = valid_config(&snapshot);
    let e = election::elect(
        &Inputs {
            snapshot: &snapshot,
            config: &config,
            nodes: &nodes,
            live: &live,
            ignore_exclude_label: cli.ignore_exclude_lb,
        },
        &svc,
    );
    print!(
        "{}",
        explain::render(&e, cli.common.node_name.as_deref(), &live, &source)
    );
    // BGP mode (issue 6).
    if let Some(node) = cli.common.node_name.as_deref() {
        print!(
            "{}",
            bgp_explain(
                &snapshot,
                &config,
                node,
                &svc,
                speaker,
                cli.ignore_exclude_lb
            )
            .await
        );
    }
    let obj = ObjectRef::new(Kind::Service, Some(namespace), name);
    match state.render_events_about(&obj).await {
        Ok(events) => print!("{events}"),
        Err(e) => println!("events: not readable: {e}"),
    }
    Ok(())
}

/// The BGP part of `explain`, with session states from the running speaker when it answers.
async fn bgp_explain(
    snapshot: &metalnet::state::Snapshot,
    config: &metalnet::validate::ParsedConfig,
    node: &str,
    svc: &metalnet::model::core::Service,
    speaker: SocketAddr,
    ignore_exclude_label: bool,
) -> String {
    use metalnet_speaker::bgp::{explain as bgp_explain, plan};
    let plan = plan::plan(&plan::Inputs {
        snapshot,
        config,
        node,
        ignore_exclude_label,
    });
    let sessions = tokio::task::spawn_blocking(move || metrics_text(speaker))
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|text| bgp_explain::parse_session_up(&text));
    let service = plan.services.iter().find(|s| {
        Some(&s.namespace) == svc.metadata.namespace.as_ref()
            && Some(&s.name) == svc.metadata.name.as_ref()
    });
    bgp_explain::render(&plan, service.map(|s| &**s), sessions.as_ref())
}

/// The body of a running speaker's /metrics.
fn metrics_text(addr: SocketAddr) -> anyhow::Result<String> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: speaker\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}
