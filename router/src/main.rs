//! metalnet-router: kube-router style pod routing over BGP (wiring only; the logic is in the
//! library).

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{ArgAction, Parser, Subcommand};
use ipnet::IpNet;
use metalnet::daemon::{CommonArgs, DebugHandler, Health, Shutdown, serve_metrics_with_debug};
use metalnet::netlink::Netlink;
use metalnet_router::routing::daemon::{self, Config, Daemon, SharedStatus, Status};
use metalnet_router::routing::kernel::Kernel;
use metalnet_router::routing::metrics::Metrics;
use metalnet_router::routing::options::RoutingArgs;
use metalnet_router::routing::sessions::{Listener, listen_addr};

/// The router's metrics port (controller 7472, speaker 7473, vxlan 7474, multus-shim 7476).
const METRICS_PORT: u16 = 7475;

/// Routes pod CIDRs over BGP between nodes and to upstream routers (kube-router style).
///
/// Runs on every node (a DaemonSet with hostNetwork). With --run-router (kube-router's
/// switch, on by default) it peers with the other nodes (iBGP full mesh with --cluster-asn,
/// per-node ASNs with kube-router.io/node.asn, route reflectors with
/// kube-router.io/rr.server|rr.client) and with external routers (--peer-router-* or the
/// node's kube-router.io/peers annotation), advertises this node's pod CIDRs (and Service
/// addresses to external peers when asked), and installs the routes it learns into the main
/// table with protocol 17, as kube-router does (`ip route show proto 17`), directly via next
/// hops on a connected subnet. Annotation changes apply live: only the sessions concerned are
/// reset. A bad annotation gives a Warning Event on the Node and its last good value stays.
///
/// `metalnet-router explain node NAME` and `explain route CIDR` ask the running router (its
/// metrics endpoint) why.
#[derive(Parser, Debug)]
#[command(name = "metalnet-router", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Enables pod networking: advertises and learns the routes to pods over BGP
    /// (kube-router's switch; on by default as there).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", action = ArgAction::Set)]
    run_router: bool,

    /// kube-router's service proxy. Not built yet: `true` is refused (keep kube-proxy, or
    /// pass --run-service-proxy=false as kube-router manifests that use kube-proxy do).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    run_service_proxy: bool,

    /// kube-router's network policy firewall. Not built: accepted so kube-router's
    /// arguments carry over, and ignored with a warning when true.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    run_firewall: bool,

    #[command(flatten)]
    routing: RoutingArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Explain what the running router on this machine does, asking it through its metrics
    /// endpoint (--router, else 127.0.0.1 on the port of --metrics-addr).
    Explain {
        /// The running router's metrics endpoint.
        #[arg(long, value_name = "ADDR:PORT", global = true)]
        router: Option<SocketAddr>,
        #[command(subcommand)]
        what: Explain,
    },
}

#[derive(Subcommand, Debug)]
enum Explain {
    /// A node: for this node its sessions (state, uptime, routes sent and received); for
    /// another node whether this node peers with it and why (not).
    Node {
        /// The Node's name.
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// A prefix: the best route, the other candidates and why they lost or were rejected,
    /// and the kernel route.
    Route {
        /// The prefix, e.g. 198.51.100.16/28.
        #[arg(value_name = "CIDR")]
        cidr: IpNet,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Explain { router, what }) => explain(&cli, *router, what),
        None => {
            cli.common.init_logging();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    metalnet::daemon::stderr_line(format_args!(
                        "metalnet-router: starting the runtime: {e}"
                    ));
                    return ExitCode::from(2);
                }
            };
            let r = runtime.block_on(run(&cli));
            if let Err(e) = &r {
                tracing::error!(error = %format!("{e:#}"), "metalnet-router failed");
            }
            r
        }
    };
    match result {
        Ok(()) => {
            // Exit now rather than wait for the runtime to join the state watcher's blocking
            // thread: a restart should be quick and nothing is left to flush.
            std::process::exit(0)
        }
        Err(e) => {
            metalnet::daemon::stderr_line(format_args!("metalnet-router: {e:#}"));
            ExitCode::from(1)
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    if cli.run_service_proxy {
        bail!(
            "--run-service-proxy: the service proxy is not built yet; run kube-proxy and pass --run-service-proxy=false"
        );
    }
    if cli.run_firewall {
        tracing::warn!("--run-firewall: network policy is not built; ignored");
    }
    if !cli.run_router {
        bail!(
            "--run-router=false: nothing else to run (the service proxy and firewall are not built)"
        );
    }
    let opts = cli.routing.options()?;
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    let node = cli.common.node_name()?.to_string();
    let health = Health::default();
    let readiness = health.condition("router");
    let metrics = Metrics::default();
    let status: SharedStatus = Arc::new(Mutex::new(Status::default()));
    if let Some(addr) = cli.common.metrics_addr(METRICS_PORT)? {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let s = status.clone();
        let debug: DebugHandler = Arc::new(move |path: &str| {
            let st = s.lock().unwrap_or_else(|e| e.into_inner());
            daemon::debug_answer(&st, path)
        });
        serve_metrics_with_debug(addr, Arc::new(registry), health.clone(), Some(debug))
            .await
            .with_context(|| format!("serving metrics on {addr}"))?;
    }
    let state = cli
        .common
        .cluster_state(daemon::KINDS)
        .await
        .context("starting the cluster state")?;
    // Two routers for one node would fight over its sessions and kernel routes.
    let _lock = state
        .lock(&format!("router-{node}"))
        .with_context(|| format!("another metalnet-router runs with --node-name {node}"))?;
    let bind = listen_addr(opts.bgp_port);
    let listener = Listener::bind(bind).with_context(|| format!("listening for BGP on {bind}"))?;
    let kernel = Kernel::new(
        Netlink::connect().context("opening netlink")?,
        opts.injected_routes_sync_period,
    );
    tracing::info!(%node, cluster_asn = opts.cluster_asn, bgp_port = opts.bgp_port,
        graceful_restart = opts.graceful_restart, "metalnet-router starting");
    let d = Daemon::new(
        Config { node, opts },
        kernel,
        Some(listener),
        metrics,
        readiness,
        status,
    )
    .await?;
    d.run(&state, &shutdown).await;
    Ok(())
}

/// `explain node|route`: the running router renders it from its live state.
fn explain(cli: &Cli, router: Option<SocketAddr>, what: &Explain) -> anyhow::Result<()> {
    let port = cli
        .common
        .metrics_addr(METRICS_PORT)?
        .map(|a| a.port())
        .unwrap_or(METRICS_PORT);
    let addr = router.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], port)));
    let path = match what {
        Explain::Node { name } => format!("/debug/routing/node?name={name}"),
        Explain::Route { cidr } => format!("/debug/routing/route?prefix={cidr}"),
    };
    let (code, body) = http_get(addr, &path).with_context(|| {
        format!("asking the running router at {addr} (is it running? --router)")
    })?;
    if code != 200 {
        bail!("{}", body.trim_end());
    }
    metalnet::daemon::stdout_text(format_args!("{body}"));
    Ok(())
}

/// A plain HTTP/1.1 GET: the status code and body.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .context("a malformed HTTP answer")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("a malformed HTTP status line")?;
    Ok((code, body.to_string()))
}
