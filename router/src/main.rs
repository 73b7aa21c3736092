//! metalnet-router: kube-router style pod routing over BGP and an eBPF service proxy (wiring
//! only; the logic is in the library).

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
use metalnet_router::proxy;
use metalnet_router::proxy::options::ProxyArgs;
use metalnet_router::routing::daemon::{self, Config, Daemon, SharedStatus, Status};
use metalnet_router::routing::kernel::Kernel;
use metalnet_router::routing::metrics::Metrics;
use metalnet_router::routing::options::RoutingArgs;
use metalnet_router::routing::sessions::{Listener, listen_addr};

/// The router's metrics port (controller 7472, speaker 7473, vxlan 7474, multus-shim 7476).
const METRICS_PORT: u16 = 7475;

/// Routes pod CIDRs over BGP between nodes and to upstream routers, and balances Services in
/// eBPF in place of kube-proxy (kube-router style).
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
/// With --run-service-proxy (kube-router's switch) it replaces kube-proxy: BPF programs
/// balance Services (ClusterIP, NodePort, LoadBalancer, externalIPs; TCP, UDP, SCTP) at the
/// sockets of the cgroup tree (--cgroup-root) and per packet on every interface, with
/// kube-proxy's semantics (traffic policies, session affinity, terminating endpoints, source
/// ranges, healthCheckNodePort). Its maps are pinned under --bpf-dir: a restart or upgrade
/// drops no connection. Both can run in one process, or the proxy alone with
/// --run-router=false.
///
/// `metalnet-router explain node NAME`, `explain route CIDR`, `explain service NS/NAME` and
/// `dump` ask the running daemon (its metrics endpoint) why.
#[derive(Parser, Debug)]
#[command(name = "metalnet-router", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Enables pod networking: advertises and learns the routes to pods over BGP
    /// (kube-router's switch; on by default as there).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", action = ArgAction::Set)]
    run_router: bool,

    /// Runs the eBPF service proxy, a kube-proxy replacement (kube-router's switch; off by
    /// default as there). Alone with --run-router=false, or beside the router in one
    /// process. Its flags: --bpf-dir, --cgroup-root, --socket-lb, --cluster-cidr,
    /// --nodeport-addresses, --service-proxy-name, --maglev-table-size, --masquerade-mark,
    /// --bpf-ct-max, --cleanup-config.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    run_service_proxy: bool,

    /// kube-router's network policy firewall. Not built: accepted so kube-router's
    /// arguments carry over, and ignored with a warning when true.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    run_firewall: bool,

    #[command(flatten)]
    routing: RoutingArgs,

    #[command(flatten)]
    proxy: ProxyArgs,

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
    /// The service proxy's maps in readable form (frontends, then their backends, as
    /// `ipvsadm -Ln`), asking the running daemon (--router, else 127.0.0.1 on the port of
    /// --metrics-addr).
    Dump {
        /// The running daemon's metrics endpoint.
        #[arg(long, value_name = "ADDR:PORT")]
        router: Option<SocketAddr>,
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
    /// A Service, as the service proxy handles it: its frontends (address, port, kind,
    /// scope), backends with their state (ready, terminating, local), traffic policies,
    /// affinity and source ranges, against what the maps hold.
    Service {
        /// NAMESPACE/NAME (NAME alone: the default namespace).
        #[arg(value_name = "NS/NAME")]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Explain { router, what }) => explain(&cli, *router, what),
        Some(Command::Dump { router }) => ask(&cli, *router, "/debug/proxy/dump"),
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
    if cli.run_firewall {
        tracing::warn!("--run-firewall: network policy is not built; ignored");
    }
    let proxy_opts = cli.proxy.options()?;
    if proxy_opts.cleanup_config {
        return proxy_cleanup(&proxy_opts);
    }
    if !cli.run_router && !cli.run_service_proxy {
        bail!(
            "--run-router=false and --run-service-proxy=false: nothing to run (the firewall is not built)"
        );
    }
    let routing_opts = if cli.run_router {
        Some(cli.routing.options()?)
    } else {
        None
    };
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    let node = cli.common.node_name()?.to_string();
    let health = Health::default();
    let metrics = Metrics::default();
    let proxy_metrics = proxy::metrics::Metrics::default();
    let status: SharedStatus = Arc::new(Mutex::new(Status::default()));
    let proxy_status: proxy::daemon::SharedStatus = Arc::default();
    // Readiness conditions exist before the server answers, so /readyz waits for both.
    let router_ready = cli.run_router.then(|| health.condition("router"));
    let proxy_ready = cli
        .run_service_proxy
        .then(|| health.condition("service-proxy"));
    if let Some(addr) = cli.common.metrics_addr(METRICS_PORT)? {
        let mut registry = prometheus_client::registry::Registry::default();
        if cli.run_router {
            metrics.register(&mut registry);
        }
        if cli.run_service_proxy {
            proxy_metrics.register(&mut registry);
        }
        let s = status.clone();
        let ps = proxy_status.clone();
        let debug: DebugHandler = Arc::new(move |path: &str| {
            if path.starts_with("/debug/proxy/") {
                let st = ps.lock().unwrap_or_else(|e| e.into_inner());
                return proxy::daemon::debug_answer(&st, path);
            }
            let st = s.lock().unwrap_or_else(|e| e.into_inner());
            daemon::debug_answer(&st, path)
        });
        serve_metrics_with_debug(addr, Arc::new(registry), health.clone(), Some(debug))
            .await
            .with_context(|| format!("serving metrics on {addr}"))?;
    }
    let state = cli
        .common
        .cluster_state(daemon::KINDS.into_iter().chain(proxy::daemon::KINDS))
        .await
        .context("starting the cluster state")?;

    let router = match (routing_opts, router_ready) {
        (Some(opts), Some(readiness)) => {
            // Two routers for one node would fight over its sessions and kernel routes.
            let lock = state
                .lock(&format!("router-{node}"))
                .with_context(|| format!("another metalnet-router runs with --node-name {node}"))?;
            let bind = listen_addr(opts.bgp_port);
            let listener =
                Listener::bind(bind).with_context(|| format!("listening for BGP on {bind}"))?;
            let kernel = Kernel::new(
                Netlink::connect().context("opening netlink")?,
                opts.injected_routes_sync_period,
            );
            tracing::info!(%node, cluster_asn = opts.cluster_asn, bgp_port = opts.bgp_port,
                graceful_restart = opts.graceful_restart, "metalnet-router starting");
            let d = Daemon::new(
                Config {
                    node: node.clone(),
                    opts,
                },
                kernel,
                Some(listener),
                metrics,
                readiness,
                status,
            )
            .await?;
            Some((d, lock))
        }
        _ => None,
    };
    let proxy = match proxy_ready {
        Some(readiness) => {
            // Two proxies for one node would fight over its maps.
            let lock = state
                .lock(&format!("service-proxy-{node}"))
                .with_context(|| format!("another service proxy runs with --node-name {node}"))?;
            let (d, attachments) =
                start_proxy(&node, proxy_opts, proxy_metrics, readiness, proxy_status)?;
            Some((d, attachments, lock))
        }
        None => None,
    };
    let run_router = async {
        if let Some((d, _lock)) = router {
            d.run(&state, &shutdown).await;
        }
    };
    let run_proxy = async {
        if let Some((d, attachments, _lock)) = proxy {
            d.run(&state, &shutdown).await;
            // Stops watching links; every attachment stays (the next run takes them over).
            attachments.stop();
        }
    };
    tokio::join!(run_router, run_proxy);
    Ok(())
}

/// The service proxy on the BPF data path.
type ProxyDaemon = proxy::daemon::Daemon<proxy::loader::Loader, proxy::model::ProxyModel>;

/// Opens the data path (maps pinned under --bpf-dir, reused from the last run) and the
/// daemon, then attaches the programs (socket-LB on the cgroup, TCX
/// on every interface, watched). The maps are read and `mn_config` written before anything
/// is attached, so a fresh node never runs the programs on an empty configuration.
fn start_proxy(
    node: &str,
    opts: proxy::options::ProxyOptions,
    metrics: proxy::metrics::Metrics,
    readiness: metalnet::daemon::Readiness,
    status: proxy::daemon::SharedStatus,
) -> anyhow::Result<(ProxyDaemon, proxy::attach::Attachments)> {
    use proxy::options::SocketLb;
    let cgroup_root = match opts.socket_lb {
        SocketLb::Off => None,
        SocketLb::All | SocketLb::HostOnly => {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
                .context("reading /proc/self/mountinfo to find the cgroup2 mount")?;
            Some(proxy::options::cgroup_root(&opts, &mountinfo)?)
        }
    };
    tracing::info!(%node, bpf_dir = %opts.bpf_dir.display(),
        cgroup_root = ?cgroup_root.as_ref().map(|p| p.display().to_string()),
        socket_lb = ?opts.socket_lb, "service proxy starting");
    let sizes = proxy::loader::Sizes {
        ct_max: opts.bpf_ct_max,
        maglev_m: opts.maglev_table_size,
        ..proxy::loader::Sizes::default()
    };
    let mut loader = proxy::loader::Loader::open(&opts.bpf_dir, &sizes)
        .with_context(|| format!("--bpf-dir {}", opts.bpf_dir.display()))?;
    let programs = loader
        .take_programs()
        .context("the BPF programs were already taken")?;
    // The programs masquerade by themselves. An older version's masquerade table would keep
    // netfilter conntrack on in the node for nothing (nothing marks packets for it any more).
    match proxy::nft::remove_if_present() {
        Ok(true) => tracing::info!("removed the masquerade table an older version installed"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "could not remove an older version's nftables table"),
    }
    let cookie =
        proxy::attach::host_netns_cookie().context("the node's network namespace cookie")?;
    let model = proxy::model::ProxyModel::new(
        node,
        &opts.cluster_cidrs,
        opts.service_proxy_name.as_deref().unwrap_or(""),
        opts.maglev_table_size,
        sizes.maglev_rows,
    );
    let attach = proxy::attach::AttachOptions {
        bpf_dir: opts.bpf_dir.clone(),
        cgroup_root,
        nodeport_addresses: opts.nodeport_addresses.clone(),
        // The watcher sees address changes at once; the daemon only reads them for the
        // healthCheckNodePort servers.
        node_addrs: true,
        tc_attach: opts.tc_attach,
    };
    let daemon = proxy::daemon::Daemon::new(
        proxy::daemon::Config {
            node: node.to_string(),
            opts,
            host_netns_cookie: cookie,
            write_node_addrs: false,
        },
        loader,
        model,
        Some(Netlink::connect().context("opening netlink")?),
        metrics,
        readiness,
        status,
    )
    .context("reading the pinned maps")?;
    let attachments =
        proxy::attach::Attachments::start(programs, attach).context("attaching the programs")?;
    Ok((daemon, attachments))
}

/// `--cleanup-config`: removes the proxy's programs (their pinned links), maps, pins, the
/// bpffs mount it made and the nftables table older versions installed, as kube-router's
/// flag does.
fn proxy_cleanup(opts: &proxy::options::ProxyOptions) -> anyhow::Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup_root = proxy::options::cgroup_root(opts, &mountinfo).ok();
    proxy::attach::cleanup_all(&opts.bpf_dir, cgroup_root.as_deref())
        .with_context(|| format!("--cleanup-config: {}", opts.bpf_dir.display()))?;
    tracing::info!(bpf_dir = %opts.bpf_dir.display(), "service proxy removed");
    Ok(())
}

/// `explain node|route|service`: the running daemon renders it from its live state.
fn explain(cli: &Cli, router: Option<SocketAddr>, what: &Explain) -> anyhow::Result<()> {
    let path = match what {
        Explain::Node { name } => format!("/debug/routing/node?name={name}"),
        Explain::Route { cidr } => format!("/debug/routing/route?prefix={cidr}"),
        Explain::Service { name } => {
            let (ns, n) = name.split_once('/').unwrap_or(("default", name));
            if ns.is_empty() || n.is_empty() || n.contains('/') {
                bail!("explain service {name:?}: expected NAMESPACE/NAME");
            }
            format!("/debug/proxy/service?name={ns}/{n}")
        }
    };
    ask(cli, router, &path)
}

/// Asks the running daemon's debug endpoint and prints the answer.
fn ask(cli: &Cli, router: Option<SocketAddr>, path: &str) -> anyhow::Result<()> {
    let port = cli
        .common
        .metrics_addr(METRICS_PORT)?
        .map(|a| a.port())
        .unwrap_or(METRICS_PORT);
    let addr = router.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], port)));
    let (code, body) = http_get(addr, path).with_context(|| {
        format!("asking the running metalnet-router at {addr} (is it running? --router)")
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_and_subcommand_is_described() {
        let mut cmd = Cli::command();
        let text = cmd.render_long_help().to_string();
        assert!(
            metalnet::daemon::undescribed_flags(&text).is_empty(),
            "{text}"
        );
        for flag in [
            "--run-service-proxy",
            "--bpf-dir",
            "--cgroup-root",
            "--socket-lb",
            "--cluster-cidr",
            "--nodeport-addresses",
            "--service-proxy-name",
            "--maglev-table-size",
            "--masquerade-mark",
            "--bpf-ct-max",
            "--cleanup-config",
        ] {
            assert!(text.contains(flag), "{flag} missing from --help");
        }
        for sub in [&["explain", "service"][..], &["dump"]] {
            let mut c = Cli::command();
            let mut s = &mut c;
            for name in sub {
                s = s.find_subcommand_mut(name).expect("subcommand");
            }
            let t = s.render_long_help().to_string();
            assert!(metalnet::daemon::undescribed_flags(&t).is_empty(), "{t}");
        }
    }

    #[test]
    fn proxy_switches_and_subcommands_parse() {
        let cli = Cli::try_parse_from(["x", "--run-service-proxy", "--run-router=false"]).unwrap();
        assert!(cli.run_service_proxy && !cli.run_router);
        let cli = Cli::try_parse_from(["x", "--run-service-proxy=true"]).unwrap();
        assert!(cli.run_service_proxy && cli.run_router, "beside the router");
        assert!(!Cli::try_parse_from(["x"]).unwrap().run_service_proxy);
        let cli = Cli::try_parse_from(["x", "explain", "service", "kube-system/dns"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Explain { what: Explain::Service { ref name }, .. }) if name == "kube-system/dns"
        ));
        let cli = Cli::try_parse_from(["x", "dump", "--router", "127.0.0.1:7475"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Dump { router: Some(_) })
        ));
    }
}
