//! metalnet-speaker: per node, announces the LoadBalancer addresses the controller assigned.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use metalnet::addr::parse_go_duration;
use metalnet::daemon::{CommonArgs, Health, Shutdown, serve_metrics};
use metalnet_speaker::daemon::KINDS;
use metalnet_speaker::explain;
use metalnet_speaker::metrics::Metrics;

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            metalnet::daemon::stderr_line(format_args!(
                "metalnet-speaker: starting the runtime: {e}"
            ));
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
            metalnet::daemon::stderr_line(format_args!("metalnet-speaker: {e:#}"));
            ExitCode::from(1)
        }
    }
}

async fn daemon(cli: &Cli) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    let node = cli.common.node_name()?.to_string();
    let state = Arc::new(
        cli.common
            .cluster_state(KINDS)
            .await
            .context("loading the cluster state")?,
    );
    // Two speakers with one --node-name would both answer for that node's addresses.
    let _lock = state
        .lock(&format!("speaker-{node}"))
        .with_context(|| format!("another speaker runs with --node-name {node}"))?;
    let metrics = Arc::new(Metrics::default());
    let health = Health::default();
    if let Some(addr) = cli.common.metrics_addr(METRICS_PORT)? {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        serve_metrics(addr, Arc::new(registry), health.clone())
            .await
            .with_context(|| format!("serving metrics on {addr}"))?;
    }
    let gossip = (cli.gossip == OnOff::On).then_some(metalnet_speaker::daemon::GossipSettings {
        port: cli.gossip_port,
        address: cli.gossip_address,
        probe_period: cli.gossip_probe_period,
        suspect_timeout: cli.gossip_suspect_timeout,
    });
    tracing::info!(%node, gossip = gossip.is_some(), "metalnet-speaker starting (layer 2 and BGP modes)");
    metalnet_speaker::daemon::run(
        state,
        metalnet_speaker::daemon::Options {
            node,
            namespace: cli.namespace.clone(),
            gossip,
            settle: cli.gossip_settle,
            leave_grace: cli.leave_grace,
            ignore_exclude_label: cli.ignore_exclude_lb,
        },
        metrics,
        health,
        shutdown,
    )
    .await
}

async fn explain_cmd(cli: &Cli, service: &str, speaker: Option<SocketAddr>) -> anyhow::Result<()> {
    let state = cli
        .common
        .cluster_state(KINDS)
        .await
        .context("loading the cluster state")?;
    let port = cli
        .common
        .metrics_addr(METRICS_PORT)?
        .map(|a| a.port())
        .unwrap_or(METRICS_PORT);
    let opts = explain::Options {
        node: cli.common.node_name.clone(),
        speaker: speaker.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], port))),
        gossip: cli.gossip == OnOff::On,
        ignore_exclude_label: cli.ignore_exclude_lb,
    };
    print!("{}", explain::explain(&state, service, &opts).await?);
    Ok(())
}
