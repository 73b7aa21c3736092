//! 200 concurrent ADDs through the thick daemon, with the real bridge + host-local plugins as
//! the cluster network in throwaway namespaces. Each client acts as a shim that the runtime
//! retries: on error 11 it tries again 100 ms later. Reports the peak RSS of the daemon and
//! of its whole process tree (the daemon plus every delegate running), p50/p99 ADD time,
//! refusals, and that DEL frees every address; once with the daemon's default limits and
//! once practically unbounded, to show what the limits save.
//!
//! `cargo bench -p multus-shim --bench daemon_burst` (root; BENCH_PODS=200 by default).

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::*;

struct Outcome {
    /// Time of the first attempt, when it was served.
    first_served: Option<Duration>,
    /// From the first attempt to success.
    total: Duration,
    refusals: u32,
    error: Option<String>,
}

fn add_with_retries(socket: &std::path::Path, body: &str) -> Outcome {
    let start = Instant::now();
    let mut refusals = 0;
    loop {
        let t = Instant::now();
        match http(socket, "POST", "/cni", body) {
            Ok((200, _)) => {
                return Outcome {
                    first_served: (refusals == 0).then(|| t.elapsed()),
                    total: start.elapsed(),
                    refusals,
                    error: None,
                };
            }
            Ok((_, b))
                if b.contains("\"code\":11") && start.elapsed() < Duration::from_secs(120) =>
            {
                refusals += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            other => {
                return Outcome {
                    first_served: None,
                    total: start.elapsed(),
                    refusals,
                    error: Some(format!("{other:?}")),
                };
            }
        }
    }
}

fn run(label: &str, pods: usize, flags: &[&str]) {
    let mut lab = Lab::new("bb", pods);
    lab.start_daemon(flags);
    let pid = lab.daemon_pid();
    let idle = rss_kib(pid).map_or(0, |r| r.0);
    let sampler = Sampler::start(pid);
    let conf = lab.multus_conf();
    let socket = lab.socket();
    let bodies: Vec<String> = (0..pods)
        .map(|i| cni_body(&lab.env("ADD", i, &format!("burst{i}")), &conf))
        .collect();
    let start = Instant::now();
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| {
                let socket = &socket;
                s.spawn(move || add_with_retries(socket, b))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = start.elapsed();
    let (daemon_peak, tree_peak) = sampler.finish();
    let (after, hwm) = rss_kib(pid).unwrap_or((0, 0));
    let errors: Vec<&String> = outcomes.iter().filter_map(|o| o.error.as_ref()).collect();
    let allocated = lab.allocated();

    // Tear down: every DEL, sequentially as the runtime would over time.
    let mut dels = Vec::new();
    for i in 0..pods {
        let t = Instant::now();
        let r = http(
            &socket,
            "POST",
            "/cni",
            &cni_body(&lab.env("DEL", i, &format!("burst{i}")), &conf),
        );
        dels.push(t.elapsed());
        if !matches!(r, Ok((200, _))) {
            eprintln!("DEL pod-{i}: {r:?}");
        }
    }
    let left = lab.allocated();
    lab.stop_daemon();

    let mut first: Vec<Duration> = outcomes.iter().filter_map(|o| o.first_served).collect();
    let mut total: Vec<Duration> = outcomes.iter().map(|o| o.total).collect();
    let refusals: u32 = outcomes.iter().map(|o| o.refusals).sum();
    println!("== {pods} concurrent ADDs, {label}");
    println!(
        "  all done in {} ({} failed{})",
        ms(wall),
        errors.len(),
        errors
            .first()
            .map(|e| format!(", first: {e}"))
            .unwrap_or_default()
    );
    println!(
        "  refused with error 11 and retried: {refusals} times; served at the first try: {}",
        first.len()
    );
    println!(
        "  ADD served at first try: p50 {} p99 {}",
        ms(percentile(&mut first, 50.0)),
        ms(percentile(&mut first, 99.0))
    );
    println!(
        "  ADD until success (with retries): p50 {} p99 {}",
        ms(percentile(&mut total, 50.0)),
        ms(percentile(&mut total, 99.0))
    );
    println!(
        "  daemon RSS: idle {} MiB, peak {} MiB (VmHWM {} MiB), after {} MiB",
        mib(idle),
        mib(daemon_peak),
        mib(hwm),
        mib(after)
    );
    println!(
        "  daemon + delegates RSS peak (sampled every 20 ms): {} MiB",
        mib(tree_peak)
    );
    println!(
        "  addresses allocated after the burst: {allocated}; after DEL: {left} (DEL p50 {})",
        ms(percentile(&mut dels, 50.0))
    );
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn main() {
    maybe_run_daemon();
    if !lab_available() {
        return;
    }
    let pods = env_usize("BENCH_PODS", 200);
    run(
        "default limits (--max-concurrent 2×CPUs, --max-queued 128)",
        pods,
        &[],
    );
    run(
        "practically unbounded (--max-concurrent 1000 --max-queued 1000)",
        pods,
        &["--max-concurrent", "1000", "--max-queued", "1000"],
    );
}
