//! Layer 2 failover benchmark (root; builds its own labs):
//!
//! ```text
//! cargo bench -p metalnet-lab --bench l2_failover --profile dev -- [RUNS] [--skip-scale|--only-scale]
//! ```
//!
//! - SIGKILL: the announcing node "dies" (its speaker is SIGKILLed and it stops serving the
//!   address); measured from the kill to the client's first successful ping of the address
//!   (answered by the new node), pinging every 5 ms. Median and p90 over RUNS (default 10).
//! - SIGTERM: the announcing speaker is stopped and, once it has exited, its node stops
//!   serving the address (a drain); ping every 10 ms; lost exchanges counted.
//! - Scale: one speaker announcing 1,000 addresses (635 IPv4, 365 IPv6): resident memory,
//!   CPU time to settle and announce, CPU while idle, and while the client ARPs every IPv4
//!   address once.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metalnet::testing::l2_advertisement;
use metalnet_lab::Process;
use metalnet_lab::lab::l2site::{L2Site, NODES, site_objects};
use metalnet_lab::lab::wait_for;
use metalnet_speaker::layer2::election::first_ranked;

const VIP: &str = "192.0.2.200";

/// One pool over every address the bench uses, advertised everywhere, and `services`
/// (name, address) each with an endpoint on node1.
fn cluster_objects(services: &[(String, String)]) -> String {
    let services: Vec<(&str, &str)> = services
        .iter()
        .map(|(name, ip)| (name.as_str(), ip.as_str()))
        .collect();
    let pool = [
        "192.0.2.128/25",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "2001:db8:0:1::1:0/112",
    ];
    site_objects(&pool, l2_advertisement("l2"), &services)
}

fn winner(candidates: &[&str], ip: &str) -> String {
    first_ranked(candidates, &ip.parse::<IpAddr>().unwrap())
        .unwrap()
        .to_string()
}

fn site(name: &str, services: &[(String, String)], vips_on_lo: &[&str]) -> L2Site {
    L2Site::new(name, &cluster_objects(services), vips_on_lo).unwrap()
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Timestamps (`ping -D`) of the replies in a ping log.
fn reply_times(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('['))
        .filter_map(|l| l.split(']').next())
        .filter_map(|t| t.parse().ok())
        .collect()
}

fn ready_site(name: &str) -> (L2Site, Vec<Process>, String) {
    let site = site(name, &[("web".into(), VIP.into())], &[VIP]);
    let speakers = site.start_all(&[]).unwrap();
    let first = winner(&NODES, VIP);
    site.wait_reached(VIP, &first, Duration::from_secs(20))
        .unwrap();
    // Past the takeover announcements.
    std::thread::sleep(Duration::from_millis(5500));
    (site, speakers, first)
}

fn sigkill_run(i: usize) -> f64 {
    let (site, speakers, first) = ready_site(&format!("bench_kill_{i}"));
    let ping = site
        .demo
        .client
        .spawn("ping", &["ping", "-D", "-n", "-i", "0.005", VIP])
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let index = NODES.iter().position(|n| *n == first).unwrap();
    site.stop_serving(&first, VIP).unwrap();
    let t0 = now_epoch();
    speakers[index].kill();
    let mut failover = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if let Some(t) = reply_times(&ping.logs()).into_iter().find(|t| *t > t0) {
            failover = Some(t - t0);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ping.stop();
    drop(site);
    failover.expect("traffic never resumed within 15 s")
}

fn sigterm_run(i: usize) -> (u64, u64) {
    let (site, speakers, first) = ready_site(&format!("bench_term_{i}"));
    let ping = site
        .demo
        .client
        .spawn(
            "ping",
            &["ping", "-n", "-q", "-i", "0.01", "-c", "300", VIP],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let index = NODES.iter().position(|n| *n == first).unwrap();
    speakers[index].stop();
    // Drained: the node stops serving the address once its speaker has exited.
    site.stop_serving(&first, VIP).unwrap();
    wait_for("ping to finish", Duration::from_secs(20), || {
        !ping.is_running()
    })
    .unwrap();
    let log = ping.logs();
    let line = log
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {log}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn scale() {
    let mut services = Vec::new();
    let v4 = (128..255)
        .map(|i| format!("192.0.2.{i}"))
        .chain((1..255).map(|i| format!("198.51.100.{i}")))
        .chain((1..255).map(|i| format!("203.0.113.{i}")));
    for ip in v4.chain((0..).map(|i| format!("2001:db8:0:1::1:{:x}", i + 1))) {
        if services.len() == 1000 {
            break;
        }
        services.push((format!("s{}", services.len()), ip));
    }
    let site = site("bench_scale", &services, &[]);
    let started = Instant::now();
    let speaker = site.start("node1", "speaker", &[]).unwrap();
    let pid = speaker.pid();
    wait_for("1,000 addresses announced", Duration::from_secs(60), || {
        site.metrics("node1")
            .contains("metalnet_speaker_announced_addresses 1000")
    })
    .unwrap();
    let announced_after = started.elapsed();
    println!("announced after {announced_after:?}");
    // Let the takeover announcements (5 s) and the status writes finish.
    let statuses = || {
        std::fs::read_dir(
            site.state_dir()
                .join("status/objects/ServiceL2Status/metallb-system"),
        )
        .map(|d| d.count())
        .unwrap_or(0)
    };
    let mut last_print = Instant::now();
    wait_for("1,000 status objects", Duration::from_secs(600), || {
        if last_print.elapsed() > Duration::from_secs(10) {
            println!(
                "  {} status objects after {:?}",
                statuses(),
                started.elapsed()
            );
            last_print = Instant::now();
        }
        statuses() >= 1000
    })
    .unwrap();
    let statuses_after = started.elapsed();
    println!("statuses after {statuses_after:?}");
    std::thread::sleep(Duration::from_secs(6));
    let hz = 100.0;
    let startup_cpu = cpu_ticks(pid) as f64 / hz;
    let t = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(10));
    let idle = (cpu_ticks(pid) - t) as f64 / hz / 10.0 * 100.0;
    let t = cpu_ticks(pid);
    let load_started = Instant::now();
    let v4: Vec<&String> = services
        .iter()
        .map(|(_, ip)| ip)
        .filter(|ip| !ip.contains(':'))
        .collect();
    // One ARP request per IPv4 address, 64 arpings at a time.
    let list = v4.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ");
    let out = site
        .demo
        .client
        .exec_status(&[
            "sh",
            "-c",
            &format!("printf '%s\\n' {list} | xargs -P 64 -I@ arping -r -c 1 -w 2 -i eth0 @"),
        ])
        .unwrap();
    let answered = String::from_utf8_lossy(&out.stdout).lines().count();
    let load_secs = load_started.elapsed().as_secs_f64();
    let load_cpu = (cpu_ticks(pid) - t) as f64 / hz;
    println!(
        "scale: 1000 addresses announced {:.2} s after start; RSS {} KiB; CPU {:.2} s to start, \
         announce, write 1000 statuses and send 5 rounds of gratuitous frames; idle {:.2}% of a core; \
         {} ARP requests ({answered} answered) in {load_secs:.1} s cost {:.3} s CPU",
        announced_after.as_secs_f64(),
        rss_kib(pid),
        startup_cpu,
        idle,
        v4.len(),
        load_cpu
    );
    drop(speaker);
    drop(site);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10);
    if args.iter().any(|a| a == "--only-scale") {
        scale();
        return;
    }
    let mut kills: Vec<f64> = (0..runs).map(sigkill_run).collect();
    kills.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "SIGKILL failover over {runs} runs: median {:.0} ms, p90 {:.0} ms, min {:.0} ms, max {:.0} ms",
        percentile(&kills, 0.5) * 1000.0,
        percentile(&kills, 0.9) * 1000.0,
        kills[0] * 1000.0,
        kills[kills.len() - 1] * 1000.0
    );
    let term_runs = runs.min(5);
    let mut lost = Vec::new();
    for i in 0..term_runs {
        let (sent, received) = sigterm_run(i);
        lost.push(sent - received);
    }
    println!("SIGTERM handover over {term_runs} runs: lost exchanges per run (of 300) {lost:?}");
    if !args.iter().any(|a| a == "--skip-scale") {
        scale();
    }
}
