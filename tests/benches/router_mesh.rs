//! metalnet-router benchmark (root; builds its own labs):
//!
//! ```text
//! cargo bench -p metalnet-lab --bench router_mesh --profile dev -- [--mesh-nodes=50] [--rr-nodes=50]
//!     [--trials=10] [--stagger-ms=0] [--skip-mesh|--skip-bulk|--bird-only]
//! ```
//!
//! - Mesh: router processes, one namespace each, on one segment: a full iBGP mesh of 50, and
//!   50 with two route reflectors. The segment's neighbour entries are pinned first: the
//!   kernel's one neighbour table, shared by every namespace, lets only 1,024 entries be
//!   resolved and collected, fewer than the 2,450 of a 50-node full mesh (permanent entries
//!   do not count); from the first start until every node's kernel holds a proto-17 route (v4 and v6)
//!   to every other node's pod CIDR. Times come from `ip -ts monitor route` in each
//!   namespace, so polling does not blur them.
//! - Pod-CIDR change: node n1's IPv4 pod CIDR is rewritten TRIALS times (default 10); per
//!   trial, from the write of the manifest to the new route in each other node's kernel
//!   (median over nodes, and the last node); the median over trials is reported.
//! - Bulk: BIRD announces 10,000 IPv6 /64s (2001:db8:f000::/52 ..) to one router (over an
//!   IPv4 session, MP-BGP), which
//!   installs them with protocol 17; in the same run a second BIRD learns the same 10,000
//!   from the first and installs them into its kernel table (`protocol kernel`). Both are
//!   timed from their first route in the kernel to the 10,000th (`ip -ts monitor route`), and
//!   from the announcing BIRD's start.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metalnet_lab::lab::router::{
    BIRD_ASN, BIRD_V4, BIRD_V6, ClusterOptions, RouterCluster, router_binary,
};
use metalnet_lab::lab::{BgpNeighbor, BgpRouter, Bird, BirdConfig, Host, StaticRoute, wait_for};

const BULK: usize = 10_000;

/// The routers' `--log-level` (`warn` unless `ROUTER_BENCH_LOG` says otherwise).
fn log_level() -> String {
    format!(
        "--log-level={}",
        std::env::var("ROUTER_BENCH_LOG").unwrap_or_else(|_| "warn".into())
    )
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `[2026-12-05T09:59:46.620870]` (local time, `offset` seconds east of UTC) → Unix seconds.
fn parse_ts(s: &str, offset: i64) -> Option<f64> {
    let s = s.strip_prefix('[')?.strip_suffix(']')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    let whole = days_from_civil(y, m, day) * 86_400 + h * 3600 + min * 60 - offset;
    Some(whole as f64 + sec)
}

/// The machine's UTC offset in seconds (`date +%z`), which `ip -ts` timestamps are in.
fn utc_offset() -> i64 {
    let out = std::process::Command::new("date")
        .arg("+%z")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let sign = if out.starts_with('-') { -1 } else { 1 };
    let digits = out.trim_start_matches(['+', '-']);
    let (h, m) = digits.split_at(digits.len().min(2));
    sign * (h.parse::<i64>().unwrap_or(0) * 3600 + m.parse::<i64>().unwrap_or(0) * 60)
}

/// One route event of `ip -ts monitor route`: time, added (or deleted), destination, proto.
#[derive(Debug, Clone)]
struct RouteEvent {
    at: f64,
    added: bool,
    dst: String,
    proto: String,
}

fn parse_monitor(text: &str, offset: i64) -> Vec<RouteEvent> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((ts, rest)) = line.split_once("] ") else {
            continue;
        };
        let Some(at) = parse_ts(&format!("{ts}]"), offset) else {
            continue;
        };
        let mut tokens: Vec<&str> = rest.split_whitespace().collect();
        let added = tokens.first() != Some(&"Deleted");
        if !added {
            tokens.remove(0);
        }
        let Some(dst) = tokens.first() else { continue };
        if ["local", "broadcast", "multicast", "anycast", "unreachable"].contains(dst) {
            continue;
        }
        let proto = tokens
            .iter()
            .position(|t| *t == "proto")
            .and_then(|i| tokens.get(i + 1))
            .map(|s| s.to_string())
            .unwrap_or_default();
        out.push(RouteEvent {
            at,
            added,
            dst: dst.to_string(),
            proto,
        });
    }
    out
}

/// `ip -ts monitor route` in a namespace, logging to a file.
struct Monitor {
    _p: metalnet_lab::Process,
    file: PathBuf,
}

impl Monitor {
    fn start(host: &Host) -> Monitor {
        let p = host
            .spawn("ip-monitor", &["ip", "-ts", "monitor", "route"])
            .unwrap();
        let file = p.stdout_path().to_path_buf();
        Monitor { _p: p, file }
    }

    fn events(&self, offset: i64) -> Vec<RouteEvent> {
        parse_monitor(
            &std::fs::read_to_string(&self.file).unwrap_or_default(),
            offset,
        )
    }
}

/// The first time the set of present `proto` routes reached `want` entries (or contained
/// every one of `need`), replaying the events in order.
fn reached(events: &[RouteEvent], proto: &str, want: usize) -> Option<f64> {
    let mut present = BTreeSet::new();
    for e in events.iter().filter(|e| e.proto == proto) {
        if e.added {
            present.insert(e.dst.clone());
        } else {
            present.remove(&e.dst);
        }
        if present.len() >= want {
            return Some(e.at);
        }
    }
    None
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// The machine's IPv4 neighbour table: `(entries, allocation failures)`. It is one table for
/// every namespace, with one hard limit (`gc_thresh3`, 1024 here) for all of them together.
fn arp_table() -> (u64, u64) {
    let out = std::process::Command::new("ip")
        .args(["-s", "ntable", "show", "name", "arp_cache"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let field = |name: &str| -> u64 {
        out.split_whitespace()
            .skip_while(|t| *t != name)
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("entries"), field("res_failed"))
}

/// How the nodes peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    FullMesh,
    /// n1 and n2 route reflectors (cluster id 42), every other node their client.
    Reflectors,
}

fn mesh(nodes: usize, trials: usize, stagger: Duration, topology: Topology) {
    let offset = utc_offset();
    router_binary().unwrap();
    let mut c =
        RouterCluster::new("bench_router_mesh", ClusterOptions { nodes, pods: false }).unwrap();
    if topology == Topology::Reflectors {
        for i in 0..nodes {
            let role = if i < 2 { "rr.server" } else { "rr.client" };
            c.annotate(i, &format!("kube-router.io/{role}"), "42");
            c.write_node(i).unwrap();
        }
    }
    // Resolved entries beyond 1,024 overflow the kernel's shared table (see the module docs).
    c.pin_neighbours(&[]).unwrap();
    let monitors: Vec<Monitor> = c.nodes.iter().map(|n| Monitor::start(&n.host)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let want = 2 * (nodes - 1);
    let (_, failed0) = arp_table();
    let t0 = now_epoch();
    if stagger.is_zero() {
        c.start_all(&[&log_level()]).unwrap();
    } else {
        for i in 0..nodes {
            c.start_router(i, &[&log_level()]).unwrap();
            std::thread::sleep(stagger);
        }
    }
    let spawned = now_epoch() - t0;
    let converged = wait_for(
        "every node to hold every other node's pod CIDRs",
        Duration::from_secs(120),
        || {
            monitors
                .iter()
                .all(|m| reached(&m.events(offset), "17", want).is_some())
        },
    );
    if let Err(e) = converged {
        let missing: Vec<String> = monitors
            .iter()
            .enumerate()
            .filter(|(_, m)| reached(&m.events(offset), "17", want).is_none())
            .map(|(i, _)| c.nodes[i].name.clone())
            .collect();
        panic!(
            "{e}; not converged: {missing:?}; ARP table (entries, failed resolutions since start): {:?}\n{}",
            {
                let (n, f) = arp_table();
                (n, f - failed0)
            },
            c.logs_tail(10)
        );
    }
    let mut per_node: Vec<f64> = monitors
        .iter()
        .map(|m| reached(&m.events(offset), "17", want).unwrap_or(f64::NAN) - t0)
        .collect();
    let last = per_node.iter().cloned().fold(0.0, f64::max);
    let med = median(&mut per_node);
    println!(
        "mesh ({topology:?}): {nodes} routers (spawned in {spawned:.2} s, {} ms apart): every kernel holds all {want} pod routes after {last:.2} s (median node {med:.2} s) from the first start; target < 5 s; ARP table entries {}, failed resolutions {}",
        stagger.as_millis(),
        arp_table().0,
        arp_table().1 - failed0
    );

    // Pod-CIDR changes on n1, seen in every other node's kernel.
    let mut per_trial_last = Vec::new();
    let mut per_trial_median = Vec::new();
    // The first node to have it: the floor (manifest seen by n1, UPDATE sent, route installed).
    let mut per_trial_first = Vec::new();
    let v6 = c.nodes[0].pod_cidrs[1].clone();
    for t in 0..trials {
        let new4 = format!("198.51.100.{}/30", 200 + 4 * (t % 13));
        std::thread::sleep(Duration::from_millis(300));
        let before = now_epoch();
        c.set_pod_cidrs(0, &[&new4, &v6]).unwrap();
        let seen = |m: &Monitor| -> Option<f64> {
            m.events(offset)
                .iter()
                .find(|e| e.added && e.proto == "17" && e.dst == new4 && e.at >= before)
                .map(|e| e.at - before)
        };
        wait_for(
            &format!("{new4} in every other kernel"),
            Duration::from_secs(30),
            || monitors[1..].iter().all(|m| seen(m).is_some()),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs_tail(10)));
        let mut lat: Vec<f64> = monitors[1..].iter().filter_map(seen).collect();
        let last = lat.iter().cloned().fold(0.0, f64::max);
        per_trial_last.push(last);
        per_trial_first.push(lat.iter().cloned().fold(f64::INFINITY, f64::min));
        per_trial_median.push(median(&mut lat));
    }
    let mut all_last = per_trial_last.clone();
    println!(
        "pod-CIDR change on n1 ({topology:?}) -> every other node's kernel: median over {trials} trials {:.0} ms (last node; per trial {:?} ms), median node {:.0} ms, first node {:.0} ms; target < 200 ms",
        median(&mut all_last) * 1e3,
        per_trial_last
            .iter()
            .map(|s| (s * 1e3).round() as i64)
            .collect::<Vec<_>>(),
        median(&mut per_trial_median) * 1e3,
        median(&mut per_trial_first) * 1e3,
    );
    drop(monitors);
    drop(c);
}

fn bulk(bird_only: bool) {
    let offset = utc_offset();
    router_binary().unwrap();
    let mut c = RouterCluster::new(
        "bench_router_bulk",
        ClusterOptions {
            nodes: 1,
            pods: false,
        },
    )
    .unwrap();
    let node_mon = Monitor::start(&c.nodes[0].host);
    // The second BIRD, which installs the same routes into its own kernel table.
    let birdk_v6 = "2001:db8::4";
    let birdk = c.upstream_host("birdk", "192.0.2.4", birdk_v6).unwrap();
    let birdk_mon = Monitor::start(&birdk);
    let mut kcfg = BirdConfig::new("192.0.2.4".parse().unwrap(), 64700);
    kcfg.kernel_export = true;
    let mut to_a = BgpNeighbor::new(BIRD_V6.parse().unwrap(), BIRD_ASN).named("upstream");
    to_a.ipv4 = false;
    kcfg.neighbors.push(to_a);
    let kbird = Bird::start(&birdk, kcfg).unwrap();

    // The node's router peers with BIRD over IPv6.
    c.common_args = vec![
        format!("--peer-router-ips={BIRD_V4}"),
        format!("--peer-router-asns={BIRD_ASN}"),
        log_level(),
    ];
    if !bird_only {
        c.start_all(&[]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let t0 = now_epoch();
    let bird = c
        .start_bird(None, |cfg| {
            cfg.kernel_export = false;
            cfg.neighbors.retain(|n| n.name.as_deref() == Some("n1_v4"));
            let mut to_k =
                BgpNeighbor::new(birdk_v6.parse::<IpAddr>().unwrap(), 64700).named("birdk");
            to_k.ipv4 = false;
            cfg.neighbors.push(to_k);
            for i in 0..BULK {
                let p = format!("2001:db8:f{:03x}:{:x}::/64", i / 0x1000, i % 0x1000);
                cfg.static_routes.push(StaticRoute::new(p.parse().unwrap()));
            }
        })
        .unwrap();
    let started = now_epoch() - t0;
    let done = wait_for(
        "10,000 routes in both kernels",
        Duration::from_secs(120),
        || {
            (bird_only || reached(&node_mon.events(offset), "17", BULK).is_some())
                && reached(&birdk_mon.events(offset), "bird", BULK).is_some()
        },
    );
    if let Err(e) = done {
        panic!(
            "{e}\nnode: {:?} proto-17 events, birdk: {:?} bird events\n{}\n{:?}",
            node_mon
                .events(offset)
                .iter()
                .filter(|e| e.proto == "17")
                .count(),
            birdk_mon
                .events(offset)
                .iter()
                .filter(|e| e.proto == "bird")
                .count(),
            c.logs_tail(20),
            bird.protocols()
        );
    }
    let report = |who: &str, events: &[RouteEvent], proto: &str| {
        let first = events
            .iter()
            .find(|e| e.added && e.proto == proto)
            .map(|e| e.at)
            .unwrap_or(f64::NAN);
        let last = reached(events, proto, BULK).unwrap_or(f64::NAN);
        println!(
            "bulk: {who}: 10,000 routes in the kernel {:.0} ms from the first to the last ({:.0} ms after the announcing BIRD started)",
            (last - first) * 1e3,
            (last - t0) * 1e3
        );
        last - first
    };
    let ours = if bird_only {
        f64::NAN
    } else {
        report("metalnet-router (proto 17)", &node_mon.events(offset), "17")
    };
    let theirs = report("BIRD protocol kernel", &birdk_mon.events(offset), "bird");
    println!(
        "bulk: announcing BIRD started in {started:.2} s; metalnet-router {:.0} ms vs BIRD {:.0} ms; target < 1 s",
        ours * 1e3,
        theirs * 1e3
    );
    let _ = kbird.is_established("upstream");
    drop(c);
}

fn main() {
    if !metalnet::testing::is_root() {
        eprintln!("router_mesh: needs root (network namespaces); skipped");
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let value = |name: &str| -> Option<usize> {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .and_then(|v| v.parse().ok())
    };
    let mesh_nodes = value("mesh-nodes").unwrap_or(50);
    let rr_nodes = value("rr-nodes").unwrap_or(50);
    let trials = value("trials").unwrap_or(10);
    let stagger = Duration::from_millis(value("stagger-ms").unwrap_or(0) as u64);
    println!(
        "command: cargo bench -p metalnet-lab --bench router_mesh --profile dev --{}",
        args.iter().map(|a| format!(" {a}")).collect::<String>()
    );
    let started = Instant::now();
    if !args.iter().any(|a| a == "--skip-mesh") {
        if mesh_nodes > 0 {
            mesh(mesh_nodes, trials, stagger, Topology::FullMesh);
        }
        if rr_nodes > 0 {
            mesh(rr_nodes, trials, stagger, Topology::Reflectors);
        }
    }
    if !args.iter().any(|a| a == "--skip-bulk") {
        bulk(args.iter().any(|a| a == "--bird-only"));
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
