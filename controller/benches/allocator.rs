//! Allocator benchmark: 10,000 Services over several pools (IPv4, IPv6, dual-stack, sharing,
//! requested addresses), then single-Service changes at that size.
//!
//! `cargo bench -p metalnet-controller --bench allocator`

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use metalnet_controller::allocator::{
    Allocator, FamilyRequest, IpFamily, Pool, Port, ServiceAllocation, ServiceKey, ServiceRequest,
};

const SERVICES: usize = 10_000;
const CHANGES: usize = 2_000;

fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn pools() -> Vec<Pool> {
    let net = |s: &str| s.parse().expect("benchmark CIDR");
    let mut team = Pool::new("team-a", vec![net("192.0.2.0/24"), net("198.51.100.0/24")]);
    team.service_allocation = Some(ServiceAllocation {
        priority: 1,
        namespace_selectors: vec![
            metalnet::labels::Selector::new(
                &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some(BTreeMap::from([("team".into(), "a".into())])),
                    match_expressions: None,
                },
            )
            .expect("selector"),
        ],
        ..Default::default()
    });
    let mut main4 = Pool::new("v4-main", vec![net("100.64.0.0/17")]);
    main4.avoid_buggy_ips = true;
    let main6 = Pool::new("v6-main", vec![net("2001:db8::/64")]);
    let mut dual = Pool::new("dual", vec![net("100.65.0.0/20"), net("2001:db8:1::/64")]);
    dual.auto_assign = false;
    let mut manual = Pool::new("manual", vec![net("100.66.0.0/20")]);
    manual.auto_assign = false;
    vec![team, main4, main6, dual, manual]
}

fn manual_ip(n: usize) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::from(0x6442_0000u32 + n as u32))
}

fn request(i: usize) -> ServiceRequest {
    let ns = format!("ns{}", i % 50);
    let mut r = ServiceRequest::simple(ServiceKey::new(ns, format!("svc{i}")));
    if i % 50 < 5 {
        r.namespace_labels.insert("team".into(), "a".into());
    }
    r.ports = vec![Port::new("TCP", 80), Port::new("TCP", 443)];
    match i % 10 {
        6 => r.families = FamilyRequest::Single(IpFamily::V6),
        7 => {
            r.families = FamilyRequest::RequireDual;
            r.requested_pool = Some("dual".into());
        }
        8 => {
            r.families = FamilyRequest::PreferDual {
                primary: IpFamily::V6,
            }
        }
        9 => {
            // Sharing groups of 4 with distinct ports.
            r.sharing_key = format!("group{}", i / 40);
            r.ports = vec![Port::new("TCP", 8000 + (i / 10 % 4) as i32)];
        }
        _ => {}
    }
    if i % 50 == 1 {
        r.requested_ips = vec![manual_ip(i / 50)];
    }
    r
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn main() {
    let reqs: Vec<ServiceRequest> = (0..SERVICES).map(request).collect();
    let mut a = Allocator::new();
    a.set_pools(pools());

    let cpu0 = cpu_time();
    let wall0 = Instant::now();
    let mut failures = 0;
    for r in &reqs {
        if a.assign(r).is_err() {
            failures += 1;
        }
    }
    let initial_cpu = cpu_time() - cpu0;
    let initial_wall = wall0.elapsed();

    // Steady-state reconcile of every Service (all Unchanged).
    let cpu1 = cpu_time();
    for r in &reqs {
        let _ = a.assign(r);
    }
    let resync_cpu = cpu_time() - cpu1;

    // One-Service changes at full size.
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng as usize
    };
    let mut delete_add = Vec::with_capacity(CHANGES);
    let mut ip_change = Vec::with_capacity(CHANGES);
    let mut fresh = 1000;
    for _ in 0..CHANGES {
        let r = &reqs[next() % SERVICES];
        let t = Instant::now();
        a.release(&r.key);
        let _ = a.assign(r);
        delete_add.push(t.elapsed());

        let mut changed = reqs[(next() % (SERVICES / 50)) * 50 + 1].clone();
        fresh += 1;
        changed.requested_ips = vec![manual_ip(fresh)];
        let t = Instant::now();
        let res = a.assign(&changed);
        ip_change.push(t.elapsed());
        assert!(res.is_ok(), "{res:?}");
    }
    delete_add.sort();
    ip_change.sort();
    a.check_consistency().expect("consistent state");

    let held = a.assignments().count();
    println!(
        "allocator benchmark: {SERVICES} services, {} pools",
        a.pool_names().count()
    );
    println!("{:<44} {:>14}", "measure", "value");
    println!("{:-<44} {:->14}", "", "");
    println!(
        "{:<44} {:>11.1} ms",
        "initial allocation, CPU",
        initial_cpu.as_secs_f64() * 1e3
    );
    println!(
        "{:<44} {:>11.1} ms",
        "initial allocation, wall",
        initial_wall.as_secs_f64() * 1e3
    );
    println!(
        "{:<44} {:>14}",
        "services holding addresses / failed",
        format!("{held} / {failures}")
    );
    println!(
        "{:<44} {:>11.1} ms",
        "re-assign all (unchanged), CPU",
        resync_cpu.as_secs_f64() * 1e3
    );
    for (name, v) in [
        ("delete+add one service", &delete_add),
        ("change requested IP", &ip_change),
    ] {
        println!(
            "{:<44} {:>11.1} µs",
            format!("{name}: median"),
            percentile(v, 0.5).as_secs_f64() * 1e6
        );
        println!(
            "{:<44} {:>11.1} µs",
            format!("{name}: p99"),
            percentile(v, 0.99).as_secs_f64() * 1e6
        );
        println!(
            "{:<44} {:>11.1} µs",
            format!("{name}: max"),
            v[v.len() - 1].as_secs_f64() * 1e6
        );
    }
    println!("{:<44} {:>10} KiB", "peak RSS (VmHWM)", peak_rss_kib());
    println!();
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>10}",
        "pool", "v4 total", "v4 used", "v6 used", "services"
    );
    for (name, c) in a.all_counters() {
        println!(
            "{:<10} {:>10} {:>10} {:>10} {:>10}",
            name,
            c.ipv4_addresses_total,
            c.ipv4_addresses_in_use,
            c.ipv6_addresses_in_use,
            c.services_allocated
        );
    }
}
