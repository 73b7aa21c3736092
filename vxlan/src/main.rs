//! metalnet-vxlan: the Flannel-compatible VXLAN pod overlay agent (wiring only; the logic is
//! in the library).

#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Parser};
use metalnet::daemon::{CommonArgs, Health, Shutdown, serve_metrics};
use metalnet::netlink::{Netlink, RTPROT_METALNET_VXLAN};
use metalnet::state::Kind;
use metalnet_vxlan::agent::{Agent, AgentConfig, Metrics};
use metalnet_vxlan::kernel::Kernel;
use metalnet_vxlan::netconf::NetConf;
use prometheus_client::registry::Registry;

/// Connects the pod subnets of all nodes over VXLAN (Flannel vxlan backend compatible).
///
/// Runs on every node: takes the node's subnet from spec.podCIDR (or, on the state
/// directory, leases one), creates flannel.<VNI>, programs a neighbour entry, an FDB entry and
/// a route for every other node, publishes Flannel's node annotations and writes
/// /run/flannel/subnet.env so Flannel's CNI configuration keeps working. Flannel's flags keep
/// their names, so a Flannel DaemonSet's arguments carry over.
#[derive(Parser, Debug)]
#[command(name = "metalnet-vxlan", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Flannel's network configuration (net-conf.json).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/kube-flannel/net-conf.json"
    )]
    net_config_path: PathBuf,

    /// Where to write the subnet file the CNI plugin reads.
    #[arg(long, value_name = "PATH", default_value = "/run/flannel/subnet.env")]
    subnet_file: PathBuf,

    /// Underlay interface, by name or address (default: the default route's interface).
    #[arg(long, value_name = "NAME|IP")]
    iface: Option<String>,

    /// IPv4 address other nodes send VXLAN traffic to (default: the interface's address).
    #[arg(long, value_name = "IP")]
    public_ip: Option<IpAddr>,

    /// IPv6 address other nodes send VXLAN traffic to (default: the interface's address).
    #[arg(long, value_name = "IP")]
    public_ipv6: Option<IpAddr>,

    /// Install masquerade rules for traffic leaving the pod network (as flanneld --ip-masq).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    ip_masq: bool,

    /// Accepted for compatibility with Flannel's arguments: the subnets always come from
    /// Node objects (or the state directory).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "true", action = ArgAction::Set)]
    kube_subnet_mgr: bool,

    /// On exit, remove the devices, routes and rules (default: leave the data path in place
    /// so running pods keep their connectivity, as Flannel does).
    #[arg(long)]
    cleanup_on_exit: bool,

    /// How often the whole kernel state is re-read to correct drift.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    resync_period: u64,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    cli.common.init_logging();
    let code = match run(cli).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "metalnet-vxlan failed");
            metalnet::daemon::stderr_line(format_args!("metalnet-vxlan: {e:#}"));
            1
        }
    };
    // Exit now rather than wait for the runtime to join the state watcher's blocking thread
    // (up to a second or more): a restart should be quick. Nothing is left to flush.
    std::process::exit(code)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    let node = cli.common.node_name()?.to_string();
    let text = std::fs::read_to_string(&cli.net_config_path)
        .with_context(|| format!("reading {}", cli.net_config_path.display()))?;
    let netconf =
        NetConf::parse(&text).with_context(|| format!("{}", cli.net_config_path.display()))?;
    let health = Health::default();
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    if let Some(addr) = cli.common.metrics_addr(7474)? {
        serve_metrics(addr, Arc::new(registry), health.clone())
            .await
            .with_context(|| format!("serving metrics on {addr}"))?;
    }
    let state = cli
        .common
        .cluster_state([Kind::Node])
        .await
        .context("starting the cluster state")?;
    // Two agents for one node would fight over its device, routes and annotations.
    let _lock = state
        .lock(&format!("vxlan-{node}"))
        .context("another metalnet-vxlan runs for this node")?;
    let kernel = Kernel::new(Netlink::connect()?, RTPROT_METALNET_VXLAN);
    let cfg = AgentConfig {
        node,
        netconf,
        iface: cli.iface,
        public_ip: cli.public_ip,
        public_ipv6: cli.public_ipv6,
        ip_masq: cli.ip_masq,
        subnet_file: cli.subnet_file,
        may_lease: cli.common.state_dir.is_some(),
        resync: Duration::from_secs(cli.resync_period.max(1)),
        check: Duration::from_secs(1),
    };
    let agent = Agent::new(cfg, kernel, health, metrics).await?;
    let mut agent = agent.run(&state, &shutdown).await;
    if cli.cleanup_on_exit {
        tracing::info!("cleaning up the data path");
        agent.cleanup().await?;
    } else {
        tracing::info!("exiting; the data path stays in place");
    }
    Ok(())
}
