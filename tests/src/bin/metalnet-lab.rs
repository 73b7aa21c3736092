//! `metalnet-lab`: build the demo site or clean up lab leftovers.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use metalnet_lab::lab::{self, BgpRouter, Bird, DemoSite, Lab, components};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The metalnet lab: a virtual bare-metal site made of network namespaces.
///
/// Needs root (it creates network namespaces). Every lab namespace is named
/// `mnl<id>-<host>`; nothing is added to the machine's own network namespace.
#[derive(Parser, Debug)]
#[command(name = "metalnet-lab", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Remove leftovers of any lab: processes in `mnl*` namespaces, the namespaces, their
    /// temporary directories. Prints what was removed.
    Down {
        /// Only labs whose creating process has exited (spares tests that are running).
        #[arg(long)]
        orphans: bool,
    },
    /// Build the demo site (3 nodes, router, client, remote client), start BIRD on the router
    /// (AS 64512, passive eBGP towards the nodes in AS 64513), print the topology and what to
    /// try, then wait for Ctrl-C / SIGTERM and tear everything down.
    Demo {
        /// Directory for the demo's state (topology description, component state).
        #[arg(long)]
        state_dir: PathBuf,
        /// Directory holding the metalnet binaries (controller, speaker, ...). Default: the
        /// directory of this executable (cargo builds them all into one).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Bring everything up, check that it works, tear it down and exit (0 when every
        /// check passed) instead of waiting for Ctrl-C. Used by the test suite.
        #[arg(long)]
        check: bool,
    },
    /// The demo pods' HTTP server: answers every request with TEXT (the pod's name).
    #[command(hide = true)]
    ServeHttp {
        /// Address and port to listen on (`[::]:80`: IPv4 and IPv6).
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The body of every answer.
        #[arg(long)]
        text: String,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Down { orphans } => {
            let report = if orphans {
                lab::down_orphans()
            } else {
                lab::down()
            };
            for (pid, comm) in &report.processes {
                println!("killed process {pid} ({comm})");
            }
            for ns in &report.namespaces {
                println!("deleted namespace {ns}");
            }
            for dir in &report.dirs {
                println!("removed directory {}", dir.display());
            }
            if report.namespaces.is_empty() && report.processes.is_empty() && report.dirs.is_empty()
            {
                println!("nothing to remove");
            }
            Ok(())
        }
        Command::Demo {
            state_dir,
            bin_dir,
            check,
        } => demo(&state_dir, bin_dir.as_deref(), check),
        Command::ServeHttp { listen, text } => components::serve_http(listen, &text)
            .with_context(|| format!("serving HTTP on {listen}")),
    }
}

/// Blocks SIGINT and SIGTERM in this thread (inherited by later threads) so `sigwait` can
/// collect them; spawned children get a clean signal mask from std.
fn block_termination_signals() -> Result<libc::sigset_t> {
    // SAFETY: plain libc signal-set manipulation on a zeroed, then initialised, sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            anyhow::bail!("pthread_sigmask failed: {rc}");
        }
        Ok(set)
    }
}

fn wait_for_termination(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is an initialised signal set; `sig` is a valid out pointer.
    unsafe {
        libc::sigwait(set, &mut sig);
    }
    sig
}

fn demo(state_dir: &Path, bin_dir: Option<&Path>, check: bool) -> Result<()> {
    let signals = block_termination_signals()?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating state dir {}", state_dir.display()))?;
    let lab = Lab::new("demo").context("creating the lab")?;
    let site = DemoSite::build(&lab).context("building the demo site")?;
    let bird = Bird::start(&site.router, site.router_bird_config())
        .context("starting BIRD on the router")?;
    site.remote
        .wait_ping(&lab::demo::node_v4(0), Duration::from_secs(5))
        .context("remote client cannot reach node1 through the router")?;
    let bin_dir = components::bin_dir(bin_dir)?;
    let mut running = components::start(&lab, &site, state_dir, &bin_dir)
        .context("starting the metalnet components")?;
    // Pods on different nodes talk over the overlay (IPv4 and IPv6).
    let (first, last) = (&running.pods[0], &running.pods[running.pods.len() - 1]);
    for dst in [last.v4.as_deref(), last.v6.as_deref()]
        .into_iter()
        .flatten()
    {
        first
            .host
            .wait_ping(dst, Duration::from_secs(10))
            .with_context(|| {
                format!(
                    "{} cannot reach {dst} over the overlay; metalnet-vxlan on node1:\n{}",
                    first.host.name(),
                    running.vxlan[0].logs()
                )
            })?;
    }
    // The service proxy on every node, and a web server in every pod for it to reach.
    let web_program = std::env::current_exe().context("locating metalnet-lab")?;
    let proxy = components::start_service_proxy(
        &lab,
        &site,
        &running.pods,
        state_dir,
        &bin_dir,
        &web_program,
    )
    .context("starting the service proxy")?;
    components::checksum_offloads_off(&lab).context("turning checksum offloads off")?;
    let ips = components::wait_service_ingress(state_dir, "demo", "web", Duration::from_secs(20))
        .with_context(|| {
        format!(
            "the controller did not assign an address; its log:\n{}",
            running.controller.logs()
        )
    })?;

    let vip = ips[0].clone();
    components::expose_on_nodes(&site, &vip)?;
    let speaker_logs = |running: &components::Components| -> String {
        running
            .speakers
            .iter()
            .map(|p| p.logs())
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Layer 2: the client on the segment reaches the address through the elected node.
    site.client
        .wait_ping(&vip, Duration::from_secs(20))
        .with_context(|| {
            format!(
                "client cannot reach {vip} over layer 2\n{}",
                speaker_logs(&running)
            )
        })?;
    let announcer = lab::wait_for_value(
        "a ServiceL2Status for demo/web",
        Duration::from_secs(10),
        || components::l2_announcer(state_dir, "demo", "web"),
    )?;
    // BGP: the router learns the addresses from all three nodes and the remote client reaches
    // them.
    for ip in &ips {
        let prefix = if ip.contains(':') {
            format!("{ip}/128")
        } else {
            format!("{ip}/32")
        };
        lab::wait_for(
            "the router to learn the address from all three nodes",
            Duration::from_secs(20),
            || {
                bird.routes()
                    .map(|rs| {
                        rs.iter().filter(|r| r.prefix.to_string() == prefix).count()
                            == site.nodes.len()
                    })
                    .unwrap_or(false)
            },
        )
        .with_context(|| format!("BGP routes for {prefix}\n{}", speaker_logs(&running)))?;
    }
    site.remote
        .wait_ping(&vip, Duration::from_secs(10))
        .with_context(|| format!("remote client cannot reach {vip} through the router"))?;
    // The service proxy: BGP takes the remote client's request to one node, its proxy to a
    // pod, on another node over the overlay for most requests.
    proxy.check_running()?;
    let checks = ips
        .iter()
        .map(|ip| http_step(&site, &proxy, ip))
        .collect::<Result<Vec<_>>>()?;
    for host in running.pods.iter().map(|p| &p.host).chain([&site.remote]) {
        let errors = components::host_tcp_in_csum_errors(host)?;
        if errors != 0 {
            bail!(
                "{} counted {errors} TCP segments with a bad checksum: the proxy's NAT rewrite is wrong",
                host.name()
            );
        }
    }
    // Failover: SIGKILL the announcing node's speaker; the client's neighbour entry moves to
    // the new announcer's MAC (it saw the gratuitous ARP) and the address answers again.
    let failover = failover_demo(&site, &running, state_dir, &vip, &announcer)?;
    // Bring the killed speaker back, as its DaemonSet would; the election (hash order, as in
    // MetalLB) then gives the address back to that node.
    if let Some(i) = site.nodes.iter().position(|n| n.name() == announcer) {
        running.speakers[i] = components::start_speaker(&site, i, state_dir, &bin_dir)?;
    }

    // The proxies' own account (their counters are read every few seconds): the delivering
    // nodes balanced the requests, the others none.
    let mut expected = vec![0u64; site.nodes.len()];
    for (check, _) in &checks {
        expected[check.delivered_index] += check.requests as u64;
    }
    let mut counted = Vec::new();
    let balanced = lab::wait_for_value(
        "the proxies' counters of balanced connections",
        Duration::from_secs(15),
        || {
            let counts: Vec<u64> = (0..site.nodes.len())
                .map(|i| proxy.datapath_counter(&site, i, "lb_new"))
                .collect::<Option<_>>()?;
            counted = counts.clone();
            counts
                .iter()
                .zip(&expected)
                .all(|(&c, &e)| if e == 0 { c == 0 } else { c >= e })
                .then_some(counts)
        },
    )
    .with_context(|| {
        format!(
            "the proxies' lb_new counters {counted:?} do not match the requests each node got {expected:?}\n{}",
            proxy.logs()
        )
    })?;
    let balanced = site
        .nodes
        .iter()
        .zip(&balanced)
        .filter(|(_, c)| **c > 0)
        .map(|(n, c)| format!("{} {c}", n.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = site.describe();
    text.push_str(&format!(
        "  birdc -s {} show protocols     # BGP sessions of the router\n",
        bird.socket().display()
    ));
    text.push_str(&format!(
        "  birdc -s {} show route all\n",
        bird.socket().display()
    ));
    let dir = state_dir.display();
    let ctl_ns = site.nodes[0].netns();
    let bin = bin_dir.display();
    let metrics = lab::demo::node_v4(0);
    // The proxy BGP delivers the remote client's requests to: its answers show them.
    let delivered = checks[0].0.delivered_index;
    let proxy_ns = site.nodes[delivered].netns();
    let proxy_addr = format!("{}:7475", lab::demo::node_v4(delivered));
    for line in [
        format!("\nmetalnet on the embedded default, state directory {dir}:"),
        format!(
            "  metalnet-controller   ns {ctl_ns}; Service demo/web got {}",
            ips.join(", ")
        ),
        format!(
            "  metalnet-speaker      on every node; {vip}: layer 2 from {announcer}, BGP from all three nodes to the router"
        ),
        format!(
            "  failover              {failover}; that speaker was then restarted and takes the address back"
        ),
        format!(
            "  metalnet-vxlan        on every node; pods: {}",
            running
                .pods
                .iter()
                .map(|p| format!(
                    "{} {}",
                    p.host.name(),
                    [p.v4.as_deref(), p.v6.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" / ")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!(
            "  metalnet-router       service proxy on every node; {}; balanced connections counted by the proxies: {balanced}, the other nodes none",
            checks
                .iter()
                .map(|(c, answers)| format!(
                    "{} from the remote client goes by BGP to {}, {} requests answered by {answers}",
                    c.url, c.delivered_to, c.requests
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        "\nTry:".to_string(),
        format!(
            "  ip netns exec {} arping -c3 -I eth0 {vip}     # one answer, from the elected node",
            site.client.netns()
        ),
        format!(
            "  ip netns exec {} ping -c3 {vip}               # through the router (BGP, ECMP)",
            site.remote.netns()
        ),
        format!("  {bin}/metalnet-speaker --state-dir {dir} --node-name node1 explain demo/web"),
        format!(
            "  ip netns exec {} ping -c3 {}      # pod1 -> pod3 across nodes over VXLAN",
            first.host.netns(),
            last.v4.as_deref().unwrap_or("?")
        ),
        format!(
            "  ip netns exec {ctl_ns} ip -d link show flannel.1; ip netns exec {ctl_ns} bridge fdb show dev flannel.1"
        ),
        format!(
            "  ip netns exec {} curl -s {}    # BGP to a node, its proxy to a pod (often on another node)",
            site.remote.netns(),
            checks.iter().map(|(c, _)| c.url.as_str()).collect::<Vec<_>>().join(" ")
        ),
        format!(
            "  ip netns exec {proxy_ns} {bin}/metalnet-router explain service demo/web --router {proxy_addr}"
        ),
        format!(
            "  ip netns exec {proxy_ns} {bin}/metalnet-router dump --router {proxy_addr}    # the proxy's maps, as ipvsadm -Ln"
        ),
        format!(
            "  ip netns exec {proxy_ns} curl -s http://{proxy_addr}/metrics | grep metalnet_proxy_datapath"
        ),
        format!("  {bin}/metalnet-controller --state-dir {dir} explain demo/web"),
        format!("  cat {dir}/status/patches/Service/demo/web.yaml     # what the controller wrote"),
        format!(
            "  $EDITOR {dir}/demo.yaml    # add a Service, change the pool: metalnet reacts at once"
        ),
        format!(
            "  ip netns exec {ctl_ns} curl -s http://{metrics}:7472/metrics | grep metallb_allocator"
        ),
    ] {
        text.push_str(&line);
        text.push('\n');
    }
    text.push_str(&format!("\nLab files: {}\n", lab.dir().display()));
    std::fs::write(state_dir.join("topology.txt"), &text)
        .with_context(|| format!("writing {}", state_dir.join("topology.txt").display()))?;
    if check {
        println!(
            "{text}\ndemo check passed, tearing down lab {}",
            lab.prefix()
        );
    } else {
        println!("{text}\nPress Ctrl-C to tear the site down.");
        let sig = wait_for_termination(&signals);
        println!("\nsignal {sig} received, tearing down lab {}", lab.prefix());
    }
    proxy.stop();
    running.stop();
    bird.stop();
    drop(proxy);
    drop(lab);
    println!("done");
    Ok(())
}

/// The remote client's requests to `http://IP/`: every one answered, at least one by a pod on
/// another node than the one BGP delivers to. Returns the check and its answers as text.
fn http_step(
    site: &DemoSite,
    proxy: &components::ServiceProxy,
    ip: &str,
) -> Result<(components::HttpCheck, String)> {
    let http = components::http_through_proxy(site, ip, 12, Duration::from_secs(20))
        .with_context(|| {
            format!(
                "the remote client's requests to {ip} through the service proxy; what node1's proxy says:\n{}\nthe proxies' logs:\n{}",
                proxy.diagnose(site, 0),
                proxy.logs()
            )
        })?;
    let url = &http.url;
    let answers = http
        .answers
        .iter()
        .map(|(a, n)| format!("{a} x{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    if http.failed > 0 {
        bail!(
            "{} of {} requests to {url} from the remote client got no answer (the others: {answers})\n{}\n{}",
            http.failed,
            http.requests,
            proxy.diagnose(site, http.delivered_index),
            proxy.logs()
        );
    }
    if !http.crossed_nodes() {
        bail!(
            "every answer to {url} came from {}, the node BGP delivers to ({answers}): none crossed the overlay\n{}\n{}",
            http.delivered_to,
            proxy.diagnose(site, http.delivered_index),
            proxy.logs()
        );
    }
    Ok((http, answers))
}

/// Kills the announcing node's speaker and reports how the address moved.
fn failover_demo(
    site: &DemoSite,
    running: &components::Components,
    state_dir: &Path,
    vip: &str,
    announcer: &str,
) -> Result<String> {
    let index = site
        .nodes
        .iter()
        .position(|n| n.name() == announcer)
        .with_context(|| format!("announcer {announcer} is not a demo node"))?;
    let old_mac = site.nodes[index].mac("eth0")?;
    let neighbour_mac = || -> Option<String> {
        let out = site.client.exec_ok(&["ip", "neigh", "show", vip]).ok()?;
        let mut words = out.split_whitespace();
        words.find(|w| *w == "lladdr")?;
        words.next().map(str::to_string)
    };
    let started = std::time::Instant::now();
    running.speakers[index].kill();
    let new_mac = lab::wait_for_value(
        "the client's neighbour entry to move",
        Duration::from_secs(10),
        || neighbour_mac().filter(|m| !m.eq_ignore_ascii_case(&old_mac)),
    )?;
    site.client.wait_ping(vip, Duration::from_secs(10))?;
    let took = started.elapsed();
    let new_node = site
        .nodes
        .iter()
        .find(|n| {
            n.mac("eth0")
                .is_ok_and(|m| m.eq_ignore_ascii_case(&new_mac))
        })
        .map(|n| n.name().to_string())
        .unwrap_or_else(|| new_mac.clone());
    let status = components::l2_announcer(state_dir, "demo", "web").unwrap_or_default();
    Ok(format!(
        "killed the speaker on {announcer}: the client moved to {new_node} and reached {vip} again after {} ms (status says {status})",
        took.as_millis()
    ))
}
