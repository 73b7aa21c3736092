//! Service-proxy benchmark (root; builds its own namespaces):
//!
//! ```text
//! cargo bench -p metalnet-lab --bench service_proxy
//! BENCH_N=100,1000,10000,50000 BENCH_ROUNDS=5 cargo bench -p metalnet-lab --bench service_proxy
//! ```
//!
//! (`--profile dev` works too and builds faster, but metalnet's programming times are then
//! those of unoptimised code.)
//!
//! For each N, N ClusterIP Services (`ns{i%100}/svc{i}:p80` -> 10.96.0.10+i:80, one endpoint
//! 203.0.113.2:8080) are programmed into every mode, then one more is added (Service N, the
//! last in every rule order); both are timed. Each mode has its own three namespaces, so all
//! rule sets stay loaded and the modes can be measured interleaved in the same minute:
//!
//! ```text
//! client (198.51.100.2) --veth-- node (198.51.100.1 | 203.0.113.1, forwarding) --veth-- backend (203.0.113.2:8080)
//! ```
//!
//! - `direct`: no proxy, the client connects to the backend address (the baseline for
//!   "latency added").
//! - `iptables`: kube-proxy's iptables rule set ([`metalnet_lab::kubeproxy::iptables`]) loaded
//!   with `iptables-restore --noflush --counters`: `iptables-nft-restore`, the nf_tables
//!   backend Debian's `iptables` points at (`BENCH_IPT_BACKEND=legacy` for
//!   iptables-legacy); jump rules first, as kube-proxy's `EnsureRule`. The add is the partial
//!   sync kube-proxy writes (every top-level chain in full, the new Service's chains).
//! - `nft`: kube-proxy's `ip kube-proxy` table loaded with `nft -f`; the add is the
//!   one-Service transaction.
//! - `metalnet`: the proxy's own code in-process: `loader::Loader` loads the programs with
//!   their maps pinned on a bpffs in the lab directory and `attach::Attachments` puts the tc
//!   programs on the node's interfaces (TCX), as the daemon does. The client is outside the
//!   cluster and the backend on no node, so every connection is masqueraded, by the programs
//!   themselves (no netfilter rule, no netfilter conntrack in the node). Programming is
//!   timed as the daemon's pass does it, from a snapshot of the
//!   objects (Services and EndpointSlices, as the state holds them) and the objects the
//!   state's subscription names as changed (every one at first, then the added Service's):
//!   the plan of `model::ProxyModel` (a full recomputation for N, an update of the added
//!   Service for the add) and its diff (handed over, or between the maps and the plan), the
//!   map writes, the model told what the maps hold and `state::apply` on the copy of the
//!   maps the daemon keeps; the split is reported. What the pass does besides (health
//!   servers, metrics, status) is not timed here: the ignored test
//!   `proxy::model::daemon_timing` times whole passes on the in-memory data path.
//! - `socket-lb`: the same maps and the socket programs on a cgroup of the run's own (under
//!   the cgroup2 mount); the client process joins it and connects to the VIP through a node
//!   with no programs.
//!
//! Loads are bounded (`BENCH_IPT_TIMEOUT`, `BENCH_NFT_TIMEOUT`, default 180 s each): a load
//! that takes longer is reported as "did not load in time" and that mode is skipped for that
//! N. `BENCH_N` (default `100,1000,10000`) selects the sizes; 50,000 is opt-in because
//! kube-proxy's rule sets take minutes to load at that size.
//!
//! Per round, per mode, per target (first, middle and last Service; the backend for
//! `direct`), a client process in the client namespace makes `BENCH_CONNS` (default 2,000)
//! connections after 100 unmeasured ones, each: `socket`, `SO_LINGER {1,0}`, send/receive
//! timeouts 1 s, timed blocking `connect`, read the answer, `close` (an RST: no TIME_WAIT).
//! Rounds (`BENCH_ROUNDS`, default 3) rotate the mode order; the report takes medians over
//! rounds of conn/s, connect p50 and p99. Every veth has checksum offload off and the
//! clients' and backends' `TcpInCsumErrors` are reported. Namespaces, cgroups and mounts are
//! removed at the end, on a panic and on Ctrl-C.
//!
//! Besides the raw conn/s of a run, the client reports a steady rate, 1 / the median
//! connection cycle (socket to close): on a shared machine a few cycles stalled by the
//! scheduler swing the raw rate 2-3x between runs, and connect p50 is bimodal (idle versus
//! busy CPUs), while the median cycle stays within a few percent. Ratios of rates and the
//! latency a mode adds over `direct` are computed from it; raw figures are shown beside.
//!
//! Environment: `BENCH_N`, `BENCH_ROUNDS`, `BENCH_CONNS`, `BENCH_RUN_SECS` (longest run, 3),
//! `BENCH_MODES` (e.g. `direct,metalnet,socket-lb`), `BENCH_IPT_TIMEOUT`,
//! `BENCH_NFT_TIMEOUT`, `BENCH_IPT_BACKEND=nft|legacy`, `BENCH_CPU` (the CPU clients and
//! backends are pinned to, 0; `none`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metalnet_lab::kubeproxy::{self, Cluster, ServicePort};
use metalnet_lab::lab::{Host, Lab};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const NODE_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const NODE_BACKEND_SIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const BACKEND_PORT: u16 = 8080;
const WARMUP: usize = 100;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// What the run is told by its environment.
#[derive(Clone, Debug)]
struct Settings {
    sizes: Vec<usize>,
    rounds: usize,
    conns: usize,
    /// Longest a single measured run may take (slow modes at large N make fewer connections).
    run_limit: Duration,
    nft_timeout: Duration,
    ipt_timeout: Duration,
    /// `nft` (iptables-nft, Debian's default `iptables`) or `legacy` (iptables-legacy).
    ipt_backend: String,
    modes: Vec<Mode>,
}

impl Settings {
    fn from_env() -> Settings {
        let sizes = std::env::var("BENCH_N")
            .unwrap_or_else(|_| "100,1000,10000".into())
            .split(',')
            .filter_map(|s| s.trim().replace('_', "").parse().ok())
            .filter(|n: &usize| *n > 0)
            .collect();
        let modes = match std::env::var("BENCH_MODES") {
            Ok(list) => list
                .split(',')
                .filter_map(|m| Mode::ALL.iter().copied().find(|x| x.name() == m.trim()))
                .collect(),
            Err(_) => Mode::ALL.to_vec(),
        };
        let mut modes: Vec<Mode> = modes;
        // Socket-LB reads the maps the metalnet mode programs.
        if modes.contains(&Mode::SockLb) && !modes.contains(&Mode::Metalnet) {
            modes.push(Mode::Metalnet);
        }
        modes.sort();
        modes.dedup();
        Settings {
            sizes,
            rounds: env_or("BENCH_ROUNDS", 3usize).max(1),
            conns: env_or("BENCH_CONNS", 2000usize).max(10),
            run_limit: Duration::from_secs_f64(env_or("BENCH_RUN_SECS", 3.0f64)),
            nft_timeout: Duration::from_secs(env_or("BENCH_NFT_TIMEOUT", 180u64)),
            ipt_timeout: Duration::from_secs(env_or("BENCH_IPT_TIMEOUT", 180u64)),
            ipt_backend: match std::env::var("BENCH_IPT_BACKEND").as_deref() {
                Ok("legacy") => "legacy".into(),
                _ => "nft".into(),
            },
            modes,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Direct,
    Iptables,
    Nft,
    Metalnet,
    SockLb,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::Direct,
        Mode::Iptables,
        Mode::Nft,
        Mode::Metalnet,
        Mode::SockLb,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Iptables => "iptables",
            Mode::Nft => "nft",
            Mode::Metalnet => "metalnet",
            Mode::SockLb => "socket-lb",
        }
    }

    /// Short host-name stem (namespace names stay short).
    fn tag(self) -> &'static str {
        match self {
            Mode::Direct => "d",
            Mode::Iptables => "i",
            Mode::Nft => "n",
            Mode::Metalnet => "m",
            Mode::SockLb => "s",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Cleanup on Ctrl-C: the signal thread tears down whatever is registered here.

#[derive(Default)]
struct Registry {
    labs: Vec<Arc<Lab>>,
    /// bpffs mounts and cgroups made for the metalnet modes.
    mounts: Vec<PathBuf>,
    cgroups: Vec<PathBuf>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
static STOP_SERVERS: AtomicBool = AtomicBool::new(false);

fn registry() -> std::sync::MutexGuard<'static, Option<Registry>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn cleanup_all() {
    STOP_SERVERS.store(true, Ordering::Relaxed);
    let reg = registry().take().unwrap_or_default();
    // bpffs mounts live in the lab directories: unmount before those are removed (which
    // unpins the links too); namespaces next, their processes (clients in the cgroup) with
    // them; cgroups last, once empty.
    for m in reg.mounts {
        unmount(&m);
    }
    for lab in reg.labs {
        lab.teardown();
    }
    for cg in reg.cgroups {
        remove_cgroup(&cg);
    }
}

fn unmount(dir: &std::path::Path) {
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}

fn remove_cgroup(cg: &std::path::Path) {
    // A cgroup can be removed once its processes are gone; they may take a moment to exit.
    for _ in 0..50 {
        if std::fs::remove_dir(cg).is_ok() || !cg.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("service_proxy: could not remove cgroup {}", cg.display());
}

/// Blocks SIGINT and SIGTERM in this thread and the threads it starts later, and starts one
/// thread that waits for them and cleans up. Spawned commands get a clean mask from std.
fn install_signal_cleanup() {
    // SAFETY: plain signal-set manipulation on a zeroed, then initialised, sigset_t that
    // lives on this stack frame for the calls.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialised signal set owned by this closure; `sig` is a valid
        // out pointer.
        unsafe {
            libc::sigwait(&set, &mut sig);
        }
        eprintln!("service_proxy: signal {sig}, cleaning up");
        cleanup_all();
        std::process::exit(130);
    });
}

// ---------------------------------------------------------------------------------------
// Socket helpers (the client and server need options std does not expose).

fn setsockopt<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: `value` points to a live T for the call and its size is passed alongside; the
    // kernel copies it and keeps no reference.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The CPU the clients and backends run on (`BENCH_CPU`, default 0; `none` lets them
/// float). On one CPU a connection's packets, the client and the backend share it the same
/// way in every run; floating, a run lands either way at random (client and backend apart:
/// a faster connect but a cross-CPU wake-up per answer) and the modes' figures scatter.
fn bench_cpu() -> Option<usize> {
    match std::env::var("BENCH_CPU").as_deref() {
        Ok("none") => None,
        Ok(v) => v.trim().parse().ok(),
        Err(_) => Some(0),
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data, zeroed then filled by the libc macros; the kernel
    // reads `size_of::<cpu_set_t>()` bytes from it and keeps no reference.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn timeval(d: Duration) -> libc::timeval {
    libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    }
}

/// One client connection: returns the connect time, or the error.
fn one_connection(dst: SocketAddrV4) -> std::io::Result<Duration> {
    // SAFETY: socket(2) takes no pointers; a non-negative result is a descriptor we own.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns; OwnedFd closes it once.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &linger)?;
    let tv = timeval(Duration::from_secs(1));
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)?;
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: dst.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*dst.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let t0 = Instant::now();
    // SAFETY: `sa` is a valid sockaddr_in for the call and its length is passed.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let took = t0.elapsed();
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut stream = std::net::TcpStream::from(fd);
    let mut buf = [0u8; 16];
    let n = stream.read(&mut buf)?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before the answer",
        ));
    }
    Ok(took)
}

/// A client run's figures.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    ok: usize,
    failed: usize,
    conn_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    /// 1 / the median connection cycle (socket to close): the rate without the stalls a
    /// shared machine's scheduler adds to a few cycles.
    steady_per_s: f64,
}

impl Stats {
    fn parse(line: &str) -> Option<Stats> {
        let mut s = Stats::default();
        for kv in line.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            match k {
                "ok" => s.ok = v.parse().ok()?,
                "failed" => s.failed = v.parse().ok()?,
                "conn_per_s" => s.conn_per_s = v.parse().ok()?,
                "p50_us" => s.p50_us = v.parse().ok()?,
                "p99_us" => s.p99_us = v.parse().ok()?,
                "steady_per_s" => s.steady_per_s = v.parse().ok()?,
                _ => {}
            }
        }
        Some(s)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The client process: `--client NETNS IP PORT COUNT LIMIT_MS [CGROUP_DIR]`. Joins the
/// cgroup first (socket-LB follows the cgroup), then the namespace, then measures.
fn client_main(args: &[String]) -> Result<(), String> {
    let [netns, ip, port, count, limit_ms, rest @ ..] = args else {
        return Err(format!(
            "client: expected NETNS IP PORT COUNT LIMIT_MS [CGROUP], got {args:?}"
        ));
    };
    if let Some(cg) = rest.first() {
        let procs = PathBuf::from(cg).join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .map_err(|e| format!("client: joining {}: {e}", procs.display()))?;
    }
    if let Some(cpu) = bench_cpu() {
        pin_to(cpu).map_err(|e| format!("client: pinning to CPU {cpu}: {e}"))?;
    }
    let ns = std::fs::File::open(format!("/run/netns/{netns}"))
        .map_err(|e| format!("client: opening netns {netns}: {e}"))?;
    metalnet::sys::netns::enter(&ns).map_err(|e| format!("client: entering {netns}: {e}"))?;
    let dst = SocketAddrV4::new(
        ip.parse()
            .map_err(|e| format!("client: address {ip:?}: {e}"))?,
        port.parse()
            .map_err(|e| format!("client: port {port:?}: {e}"))?,
    );
    let count: usize = count
        .parse()
        .map_err(|e| format!("client: count {count:?}: {e}"))?;
    let limit = Duration::from_millis(
        limit_ms
            .parse()
            .map_err(|e| format!("client: limit {limit_ms:?}: {e}"))?,
    );
    let mut warm_failures = 0;
    for _ in 0..WARMUP {
        if one_connection(dst).is_err() {
            warm_failures += 1;
        }
    }
    if warm_failures == WARMUP {
        let e = one_connection(dst).err();
        return Err(format!(
            "client: every warm-up connection to {dst} failed: {e:?}"
        ));
    }
    let mut times = Vec::with_capacity(count);
    let mut cycles = Vec::with_capacity(count);
    let mut failed = 0usize;
    let start = Instant::now();
    while times.len() + failed < count && start.elapsed() < limit {
        let c0 = Instant::now();
        match one_connection(dst) {
            Ok(t) => {
                times.push(t.as_secs_f64() * 1e6);
                cycles.push(c0.elapsed().as_secs_f64() * 1e6);
            }
            Err(_) => failed += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    times.sort_by(|a, b| a.total_cmp(b));
    cycles.sort_by(|a, b| a.total_cmp(b));
    println!(
        "ok={} failed={failed} conn_per_s={:.1} p50_us={:.1} p99_us={:.1} steady_per_s={:.1}",
        times.len(),
        times.len() as f64 / secs,
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        1e6 / percentile(&cycles, 0.5)
    );
    Ok(())
}

fn run_client(
    netns: &str,
    dst: SocketAddrV4,
    settings: &Settings,
    cgroup: Option<&std::path::Path>,
) -> Result<Stats, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding the bench binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--client")
        .arg(netns)
        .arg(dst.ip().to_string())
        .arg(dst.port().to_string())
        .arg(settings.conns.to_string())
        .arg(settings.run_limit.as_millis().to_string());
    if let Some(cg) = cgroup {
        cmd.arg(cg);
    }
    let out = run_bounded(&mut cmd, settings.run_limit * 4 + Duration::from_secs(30))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "client to {dst} in {netns}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    text.lines()
        .rev()
        .find_map(Stats::parse)
        .ok_or_else(|| format!("client to {dst} in {netns}: no figures in {text:?}"))
}

/// Runs a command to completion, killing it when it outlives `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<std::process::Output, String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {what}: {e}"))?;
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                // A process inside a long system call (nft committing a huge batch) dies
                // only when the call returns: reap it in the background, do not wait here.
                std::thread::spawn(move || child.wait());
                return Err(format!(
                    "{what}: did not finish within {:.0} s",
                    limit.as_secs_f64()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    };
    Ok(std::process::Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

// ---------------------------------------------------------------------------------------
// The backend: accept, write one line, close.

fn start_backend(netns: &str) -> Result<std::thread::JoinHandle<std::io::Result<()>>, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = metalnet::sys::netns::spawn_in(netns, move || -> std::io::Result<()> {
        let listener =
            match TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, BACKEND_PORT)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(e);
                }
            };
        if let Some(cpu) = bench_cpu() {
            pin_to(cpu)?;
        }
        // accept() wakes every 200 ms to notice the end of the run.
        let tv = timeval(Duration::from_millis(200));
        setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv,
        )?;
        let _ = ready_tx.send(Ok(()));
        while !STOP_SERVERS.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(b"backend\n");
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        Ok(())
    })
    .map_err(|e| format!("backend in {netns}: {e}"))?;
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => Ok(handle.join_handle()),
        Ok(Err(e)) => Err(format!("backend in {netns}: {e}")),
        Err(_) => Err(format!("backend in {netns}: not listening after 10 s")),
    }
}

/// `spawn_in` hands back a handle whose result wraps the closure's; flatten it.
trait FlattenJoin {
    fn join_handle(self) -> std::thread::JoinHandle<std::io::Result<()>>;
}

impl FlattenJoin for std::thread::JoinHandle<std::io::Result<std::io::Result<()>>> {
    fn join_handle(self) -> std::thread::JoinHandle<std::io::Result<()>> {
        std::thread::spawn(move || match self.join() {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::other("backend thread panicked")),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Topology.

/// One mode's client, node and backend.
struct Path3 {
    client: Host,
    node: Host,
    backend: Host,
}

fn build_path(lab: &Lab, mode: Mode) -> Result<Path3, String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: metalnet_lab::LabError| format!("{} path: {what}: {err}", mode.name())
    };
    let client = lab.host(&format!("c{}", mode.tag())).map_err(e("client"))?;
    let node = lab.router(&format!("n{}", mode.tag())).map_err(e("node"))?;
    let backend = lab
        .host(&format!("b{}", mode.tag()))
        .map_err(e("backend"))?;
    lab.wire(&client, "eth0", &node, "c0")
        .map_err(e("client link"))?;
    lab.wire(&node, "b0", &backend, "eth0")
        .map_err(e("backend link"))?;
    client
        .add_addr("eth0", &format!("{CLIENT_IP}/24"))
        .map_err(e("client address"))?;
    node.add_addr("c0", &format!("{NODE_CLIENT_SIDE}/24"))
        .map_err(e("node address"))?;
    node.add_addr("b0", &format!("{NODE_BACKEND_SIDE}/24"))
        .map_err(e("node address"))?;
    backend
        .add_addr("eth0", &format!("{BACKEND_IP}/24"))
        .map_err(e("backend address"))?;
    client
        .add_route("default", &NODE_CLIENT_SIDE.to_string())
        .map_err(e("client route"))?;
    backend
        .add_route("default", &NODE_BACKEND_SIDE.to_string())
        .map_err(e("backend route"))?;
    client
        .sysctl("net.ipv4.ip_local_port_range", "1024 65535")
        .map_err(e("port range"))?;
    // veth verifies no L4 checksum unless offloads are off: a wrong NAT rewrite must fail.
    for (h, dev) in [
        (&client, "eth0"),
        (&node, "c0"),
        (&node, "b0"),
        (&backend, "eth0"),
    ] {
        h.exec(&["ethtool", "-K", dev, "tx", "off", "rx", "off"])
            .map_err(e("ethtool"))?;
    }
    Ok(Path3 {
        client,
        node,
        backend,
    })
}

/// `TcpInCsumErrors` of a host (/proc/net/snmp, the Tcp: InCsumErrors column).
fn csum_errors(host: &Host) -> Option<u64> {
    let snmp = host.exec_ok(&["cat", "/proc/net/snmp"]).ok()?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let idx = names.split_whitespace().position(|n| n == "InCsumErrors")?;
    values.split_whitespace().nth(idx)?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Programming the modes.

#[derive(Clone, Debug, Default)]
struct Programming {
    /// Time to program all N, or why it did not happen.
    full: Option<Result<Duration, String>>,
    /// Time to add Service N.
    add_one: Option<Result<Duration, String>>,
    /// Lines handed to the kernel tools (full, add).
    lines: (usize, usize),
}

fn ns_cmd(netns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns]).args(args);
    c
}

fn timed(cmd: &mut Command, limit: Duration) -> Result<Duration, String> {
    let t0 = Instant::now();
    let out = run_bounded(cmd, limit)?;
    let took = t0.elapsed();
    if out.status.success() {
        Ok(took)
    } else {
        Err(format!(
            "{cmd:?}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn program_iptables(
    lab: &Lab,
    node: &Host,
    cluster: &Cluster,
    services: &[ServicePort],
    n: usize,
    limit: Duration,
    backend: &str,
) -> Result<Programming, String> {
    let ns = node.netns();
    let iptables = format!("iptables-{backend}");
    let iptables_save = format!("iptables-{backend}-save");
    let iptables_restore = format!("iptables-{backend}-restore");
    // EnsureChain + EnsureRule (prepend) for the jump rules, as kube-proxy before a full sync.
    for (table, chain) in kubeproxy::iptables::jump_targets() {
        let _ = run_bounded(
            &mut ns_cmd(ns, &[&iptables, "-w", "-t", table, "-N", chain]),
            limit,
        );
    }
    for args in kubeproxy::iptables::jump_rules() {
        let mut full = vec![iptables.as_str(), "-w"];
        full.extend(args.iter().map(String::as_str));
        timed(&mut ns_cmd(ns, &full), limit)?;
    }
    let full_text = kubeproxy::iptables::full(cluster, &services[..n]);
    let add_text = kubeproxy::iptables::partial(cluster, services, &[n]);
    let full_file = lab.dir().join(format!("iptables-{n}.rules"));
    let add_file = lab.dir().join(format!("iptables-{n}-add.rules"));
    std::fs::write(&full_file, &full_text).map_err(|e| format!("{}: {e}", full_file.display()))?;
    std::fs::write(&add_file, &add_text).map_err(|e| format!("{}: {e}", add_file.display()))?;
    // Below the large-cluster threshold every sync first lists the nat table to delete stale
    // chains; above it kube-proxy skips that.
    let save = |large: bool| -> Result<Duration, String> {
        if large {
            Ok(Duration::ZERO)
        } else {
            timed(&mut ns_cmd(ns, &[&iptables_save, "-t", "nat"]), limit)
        }
    };
    let restore = |file: &std::path::Path| -> Result<Duration, String> {
        let input =
            std::fs::File::open(file).map_err(|e| format!("opening {}: {e}", file.display()))?;
        // The file on stdin, no shell: a kill on timeout reaches iptables-restore itself.
        let mut cmd = ns_cmd(
            ns,
            &[&iptables_restore, "-w", "5", "--noflush", "--counters"],
        );
        cmd.stdin(input);
        timed(&mut cmd, limit)
    };
    let full = save(kubeproxy::iptables::large_cluster(&services[..n]))
        .and_then(|s| restore(&full_file).map(|r| s + r));
    let add_one = match &full {
        Ok(_) => Some(
            save(kubeproxy::iptables::large_cluster(services))
                .and_then(|s| restore(&add_file).map(|r| s + r)),
        ),
        Err(_) => None,
    };
    Ok(Programming {
        full: Some(full),
        add_one,
        lines: (full_text.lines().count(), add_text.lines().count()),
    })
}

fn program_nft(
    lab: &Lab,
    node: &Host,
    cluster: &Cluster,
    services: &[ServicePort],
    n: usize,
    limit: Duration,
) -> Result<Programming, String> {
    let ns = node.netns();
    let full_text = kubeproxy::nft::full(cluster, &services[..n]);
    let add_text = kubeproxy::nft::add(cluster, &services[n..=n]);
    let full_file = lab.dir().join(format!("nft-{n}.nft"));
    let add_file = lab.dir().join(format!("nft-{n}-add.nft"));
    std::fs::write(&full_file, &full_text).map_err(|e| format!("{}: {e}", full_file.display()))?;
    std::fs::write(&add_file, &add_text).map_err(|e| format!("{}: {e}", add_file.display()))?;
    let load = |file: &std::path::Path| {
        let path = file.to_string_lossy().into_owned();
        timed(&mut ns_cmd(ns, &["nft", "-f", &path]), limit)
    };
    let full = load(&full_file);
    let add_one = match &full {
        Ok(_) => Some(load(&add_file)),
        Err(_) => None,
    };
    Ok(Programming {
        full: Some(full),
        add_one,
        lines: (full_text.lines().count(), add_text.lines().count()),
    })
}

// ---------------------------------------------------------------------------------------
// One N.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    First,
    Middle,
    Last,
    Backend,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::First => "first",
            Target::Middle => "middle",
            Target::Last => "last",
            Target::Backend => "backend",
        }
    }
}

struct SizeResult {
    n: usize,
    programming: BTreeMap<Mode, Programming>,
    /// (mode, target) -> one Stats per round.
    runs: BTreeMap<(Mode, Target), Vec<Stats>>,
    errors: Vec<String>,
    csum_errors: u64,
    /// metalnet's programming split into model, diff and map writes.
    breakdown: Vec<String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

impl SizeResult {
    /// Medians over rounds: (conn/s, p50 us, p99 us, steady conn/s).
    fn med(&self, mode: Mode, target: Target) -> Option<(f64, f64, f64, f64)> {
        let runs = self.runs.get(&(mode, target))?;
        if runs.is_empty() {
            return None;
        }
        Some((
            median(runs.iter().map(|s| s.conn_per_s).collect()),
            median(runs.iter().map(|s| s.p50_us).collect()),
            median(runs.iter().map(|s| s.p99_us).collect()),
            median(runs.iter().map(|s| s.steady_per_s).collect()),
        ))
    }
}

fn bench_size(settings: &Settings, n: usize) -> Result<SizeResult, String> {
    let lab = Arc::new(Lab::new(&format!("service_proxy-{n}")).map_err(|e| format!("lab: {e}"))?);
    if let Some(reg) = registry().as_mut() {
        reg.labs.push(lab.clone());
    }
    let endpoint = SocketAddrV4::new(BACKEND_IP, BACKEND_PORT);
    // N Services programmed in full, then Service N added: the last in every rule order.
    let services = kubeproxy::bench_services(n + 1, |_| endpoint);
    let cluster = Cluster {
        node_ips: vec![NODE_CLIENT_SIDE, NODE_BACKEND_SIDE],
        ..Cluster::default()
    };
    let mut paths = BTreeMap::new();
    let mut backends = Vec::new();
    for &mode in &settings.modes {
        let p = build_path(&lab, mode)?;
        backends.push(start_backend(p.backend.netns())?);
        paths.insert(mode, p);
    }
    let mut result = SizeResult {
        n,
        programming: BTreeMap::new(),
        runs: BTreeMap::new(),
        errors: Vec::new(),
        csum_errors: 0,
        breakdown: Vec::new(),
    };
    // metalnet: the proxy's programs on the node's interfaces (TCX) and, for socket-LB, on a
    // cgroup of the run's own; one set of maps serves both.
    let mut side = None;
    if let Some(node) = paths.get(&Mode::Metalnet).map(|p| &p.node) {
        match metalnet_side::Side::start(&lab, node, paths.contains_key(&Mode::SockLb)) {
            Ok(s) => side = Some(s),
            Err(e) => {
                eprintln!("  N={n} metalnet: {e}");
                result.errors.push(format!("metalnet: {e}"));
            }
        }
    }
    for (&mode, p) in &paths {
        let prog = match mode {
            Mode::Direct | Mode::SockLb => continue,
            Mode::Metalnet => match side.as_mut() {
                Some(side) => side.program(&services, n),
                None => continue,
            },
            Mode::Iptables => program_iptables(
                &lab,
                &p.node,
                &cluster,
                &services,
                n,
                settings.ipt_timeout,
                &settings.ipt_backend,
            ),
            Mode::Nft => program_nft(&lab, &p.node, &cluster, &services, n, settings.nft_timeout),
        };
        match prog {
            Ok(prog) => {
                eprintln!(
                    "  N={n} {}: program {} / add one {}",
                    mode.name(),
                    fmt_prog(&prog.full),
                    fmt_prog(&prog.add_one)
                );
                for r in [&prog.full, &prog.add_one].into_iter().flatten() {
                    if let Err(e) = r {
                        result.errors.push(format!("{}: {e}", mode.name()));
                    }
                }
                result.programming.insert(mode, prog);
            }
            Err(e) => {
                eprintln!("  N={n} {}: {e}", mode.name());
                result.errors.push(e);
            }
        }
    }
    let targets = [
        (Target::First, 0usize),
        (Target::Middle, n / 2),
        (Target::Last, n),
    ];
    let usable = |mode: Mode| -> bool {
        match mode {
            Mode::Direct => true,
            Mode::SockLb => {
                side.as_ref().is_some_and(|s| s.cgroup().is_some())
                    && programmed(&result, Mode::Metalnet)
            }
            _ => programmed(&result, mode),
        }
    };
    let modes: Vec<Mode> = settings
        .modes
        .iter()
        .copied()
        .filter(|m| usable(*m))
        .collect();
    for round in 0..settings.rounds {
        // Rotate the order each round so no mode always runs first (caches, noise).
        let mut order = modes.clone();
        if !order.is_empty() {
            let k = round % order.len();
            order.rotate_left(k);
        }
        for mode in order {
            let p = &paths[&mode];
            let list: Vec<(Target, SocketAddrV4)> = match mode {
                Mode::Direct => vec![(Target::Backend, endpoint)],
                _ => targets
                    .iter()
                    .map(|&(t, i)| {
                        (
                            t,
                            SocketAddrV4::new(services[i].cluster_ip, services[i].port),
                        )
                    })
                    .collect(),
            };
            let cgroup = match mode {
                Mode::SockLb => side.as_ref().and_then(|s| s.cgroup()),
                _ => None,
            };
            for (target, dst) in list {
                match run_client(p.client.netns(), dst, settings, cgroup) {
                    Ok(s) => {
                        eprintln!(
                            "  N={n} round {round} {} {}: {:.0} conn/s ({:.0} steady) p50 {:.1} us p99 {:.1} us ({} failed)",
                            mode.name(),
                            target.name(),
                            s.conn_per_s,
                            s.steady_per_s,
                            s.p50_us,
                            s.p99_us,
                            s.failed
                        );
                        result.runs.entry((mode, target)).or_default().push(s);
                    }
                    Err(e) => {
                        eprintln!("  N={n} {}: {e}", mode.name());
                        result.errors.push(e);
                    }
                }
            }
        }
    }
    for p in paths.values() {
        result.csum_errors +=
            csum_errors(&p.client).unwrap_or(0) + csum_errors(&p.backend).unwrap_or(0);
    }
    let mut cgroup = None;
    if let Some(side) = side {
        for b in &side.breakdown {
            eprintln!("  N={n} metalnet: {b}");
        }
        result.breakdown = side.breakdown.clone();
        cgroup = side.stop();
    }
    STOP_SERVERS.store(true, Ordering::Relaxed);
    for b in backends {
        let _ = b.join();
    }
    STOP_SERVERS.store(false, Ordering::Relaxed);
    if let Some(reg) = registry().as_mut() {
        reg.labs.retain(|l| !Arc::ptr_eq(l, &lab));
    }
    lab.teardown();
    if let Some(cg) = cgroup {
        remove_cgroup(&cg);
        if let Some(reg) = registry().as_mut() {
            reg.cgroups.retain(|c| c != &cg);
        }
    }
    Ok(result)
}

fn programmed(result: &SizeResult, mode: Mode) -> bool {
    matches!(
        result
            .programming
            .get(&mode)
            .and_then(|p| p.add_one.as_ref()),
        Some(Ok(_))
    )
}

fn fmt_prog(p: &Option<Result<Duration, String>>) -> String {
    match p {
        None => "-".into(),
        Some(Ok(d)) => fmt_dur(*d),
        Some(Err(e)) if e.contains("did not finish within") => format!(
            "did not load within {}",
            e.rsplit("did not finish within ")
                .next()
                .unwrap_or("the limit")
        ),
        Some(Err(_)) => "failed".into(),
    }
}

fn fmt_dur(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 0.001 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} us", s * 1e6)
    }
}

// ---------------------------------------------------------------------------------------
// metalnet: the proxy's loader, attach and model, in-process.

mod metalnet_side {
    use super::*;
    use metalnet::model::core::{EndpointSlice, Service};
    use metalnet::model::{Kind, ObjectKey, ObjectRef};
    use metalnet::state::Snapshot;
    use metalnet_router::proxy::daemon::{Model as _, Plan as _};
    use metalnet_router::proxy::dataplane::Dataplane;
    use metalnet_router::proxy::state::{self, MapDiff, MapState};
    use metalnet_router::proxy::{abi, attach, loader, model};
    use std::sync::Arc;

    const NODE_NAME: &str = "bench-node";
    const MAGLEV_M: u32 = 1021;

    /// The proxy's data path for one N: maps under a bpffs of the run's own, programs on the
    /// metalnet node's interfaces (TCX) and on the socket-LB cgroup.
    pub struct Side {
        dir: PathBuf,
        cgroup: Option<PathBuf>,
        loader: loader::Loader,
        attachments: Option<attach::Attachments>,
        /// The daemon's model (with its ids), kept between syncs as the daemon keeps it.
        model: model::ProxyModel,
        /// The last plan, as the daemon's status keeps it (let go of before the next one).
        plan: Option<model::ProxyPlan>,
        /// What the maps hold, as the daemon keeps it.
        current: MapState,
        /// How the last programming split: model, diff, map writes.
        pub breakdown: Vec<String>,
    }

    /// The cgroup v2 mount (the hybrid layout mounts it at /sys/fs/cgroup/unified).
    fn cgroup2_mount() -> Option<PathBuf> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        info.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            if post.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            pre.split_whitespace().nth(4).map(PathBuf::from)
        })
    }

    impl Side {
        /// Loads the programs with their maps pinned under `<lab>/bpf`, attaches the tc
        /// programs to every interface of `node` and the socket programs to a cgroup of
        /// the run's own (when socket-LB is measured).
        pub fn start(lab: &Lab, node: &Host, socket_lb: bool) -> Result<Side, String> {
            let dir = lab.dir().join("bpf");
            if let Some(reg) = registry().as_mut() {
                reg.mounts.push(dir.clone());
            }
            let sizes = loader::Sizes {
                ct_max: 65_536,
                ..loader::Sizes::default()
            };
            let mut loader = loader::Loader::open(&dir, &sizes)
                .map_err(|e| format!("loading the data path under {}: {e}", dir.display()))?;
            loader
                .set_config(&abi::Config {
                    host_netns_cookie: 0,
                    socket_lb: 1,
                    maglev_m: MAGLEV_M,
                    masq_mark: 0x4000,
                    ct_timeout_tcp: 7440,
                    ct_timeout_other: 60,
                    ..abi::Config::default()
                })
                .map_err(|e| format!("mn_config: {e}"))?;
            let cgroup = if socket_lb {
                let root = cgroup2_mount().ok_or("no cgroup2 mount in /proc/self/mountinfo")?;
                let cg = root.join(format!("{}-socklb", lab.prefix()));
                std::fs::create_dir(&cg).map_err(|e| format!("creating {}: {e}", cg.display()))?;
                if let Some(reg) = registry().as_mut() {
                    reg.cgroups.push(cg.clone());
                }
                Some(cg)
            } else {
                None
            };
            let programs = loader
                .take_programs()
                .ok_or("the loader handed its programs out already")?;
            let opts = attach::AttachOptions {
                bpf_dir: dir.clone(),
                cgroup_root: cgroup.clone(),
                nodeport_addresses: Vec::new(),
                node_addrs: true,
                tc_attach: attach::TcAttach::Auto,
            };
            // TCX attaches in the calling thread's namespace: start from one inside the node.
            let attachments = metalnet::sys::netns::spawn_in(node.netns(), move || {
                // No netfilter rule: the programs masquerade by themselves (the client is
                // outside the cluster and the backend not on the node, so every connection
                // is masqueraded), and the node runs without netfilter conntrack.
                attach::Attachments::start(programs, opts).map_err(|e| e.to_string())
            })
            .map_err(|e| format!("attaching in {}: {e}", node.netns()))?
            .join()
            .map_err(|_| "the attach thread panicked".to_string())?
            .map_err(|e| format!("attaching in {}: {e}", node.netns()))?
            .map_err(|e| format!("attaching in {}: {e}", node.netns()))?;
            let status = attachments.status();
            if !status.interfaces.values().any(|i| i == "c0") {
                return Err(format!(
                    "tc programs not on c0 of {}: {status:?}",
                    node.netns()
                ));
            }
            Ok(Side {
                dir,
                cgroup,
                loader,
                attachments: Some(attachments),
                model: {
                    let mut m =
                        model::ProxyModel::new(NODE_NAME, &[], "", MAGLEV_M, sizes.maglev_rows);
                    m.restore(&MapState::default());
                    m
                },
                plan: None,
                current: MapState::default(),
                breakdown: Vec::new(),
            })
        }

        pub fn cgroup(&self) -> Option<&std::path::Path> {
            self.cgroup.as_deref()
        }

        /// Programs Services `..n` (timed: model, diff, map writes), then adds Service `n`.
        pub fn program(
            &mut self,
            services: &[ServicePort],
            n: usize,
        ) -> Result<Programming, String> {
            // The objects as the state holds them: decoding is not programming.
            let objs: Vec<(Service, EndpointSlice)> = services
                .iter()
                .map(objects)
                .collect::<Result<Vec<_>, _>>()?;
            let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| ObjectKey {
                namespace: m.namespace.clone(),
                name: m.name.clone().unwrap_or_default(),
            };
            let refs = |(svc, slice): &(Service, EndpointSlice)| {
                let (s, e) = (key(&svc.metadata), key(&slice.metadata));
                [
                    ObjectRef::new(Kind::Service, s.namespace.as_deref(), &s.name),
                    ObjectRef::new(Kind::EndpointSlice, e.namespace.as_deref(), &e.name),
                ]
            };
            let mut snap = Snapshot::default();
            let mut svcs = BTreeMap::new();
            let mut slices = BTreeMap::new();
            let mut changed = BTreeSet::new();
            for o in &objs[..n] {
                svcs.insert(key(&o.0.metadata), Arc::new(o.0.clone()));
                slices.insert(key(&o.1.metadata), Arc::new(o.1.clone()));
                changed.extend(refs(o));
            }
            snap.services = Arc::new(svcs);
            snap.endpoint_slices = Arc::new(slices);
            // As the daemon on the state's subscription: the first update names every object.
            let full = self.sync(&snap, &changed, false);
            let full_ops = full.as_ref().map(|(_, ops)| *ops).unwrap_or(0);
            let add = full.as_ref().ok().map(|_| {
                // The state takes the new objects in (not timed: the daemon keeps no
                // snapshot, so they go in in place), and names them as changed.
                let added = &objs[n];
                Arc::make_mut(&mut snap.services)
                    .insert(key(&added.0.metadata), Arc::new(added.0.clone()));
                Arc::make_mut(&mut snap.endpoint_slices)
                    .insert(key(&added.1.metadata), Arc::new(added.1.clone()));
                self.sync(&snap, &refs(added).into(), true)
            });
            let add_ops = match &add {
                Some(Ok((_, ops))) => *ops,
                _ => 0,
            };
            Ok(Programming {
                full: Some(full.map(|(d, _)| d)),
                add_one: add.map(|r| r.map(|(d, _)| d)),
                lines: (full_ops, add_ops),
            })
        }

        /// The daemon's pass, less what does not touch the maps (health servers, metrics,
        /// status): the plan for the snapshot and the objects changed (every Service at
        /// first, then only the changed ones), the diff it hands over (or the one between the
        /// maps and it) written to the maps, the model and the record of the maps told.
        fn sync(
            &mut self,
            snap: &Snapshot,
            changed: &BTreeSet<ObjectRef>,
            update: bool,
        ) -> Result<(Duration, usize), String> {
            let t0 = Instant::now();
            // The daemon lets go of the last plan first: it shares the model's state.
            self.plan = None;
            let plan = self.model.plan(snap, Some(changed));
            let diff = match plan.diff() {
                Some(d) => d.clone(),
                None => MapDiff::between(&self.current, plan.maps()),
            };
            let t1 = Instant::now();
            self.loader
                .apply(&diff)
                .map_err(|e| format!("writing {} map operations: {e}", diff.len()))?;
            let t2 = Instant::now();
            // As the daemon: the ids from the diff, then its copy of the maps.
            self.model.committed_diff(&self.current, &diff);
            state::apply(&mut self.current, &diff);
            let t3 = Instant::now();
            let problems = &plan.0.problems;
            if let Some(p) = problems.first() {
                return Err(format!(
                    "the model reported {} problems, first: {p}",
                    problems.len()
                ));
            }
            self.breakdown.push(format!(
                "{} Services ({}): model and diff {}, map writes {} ({} operations), ids and bookkeeping {}",
                snap.services.len(),
                if update { "update" } else { "full" },
                fmt_dur(t1 - t0),
                fmt_dur(t2 - t1),
                diff.len(),
                fmt_dur(t3 - t2)
            ));
            self.plan = Some(plan);
            Ok((t3 - t0, diff.len()))
        }

        /// Detaches and unpins everything (and unmounts the bpffs the loader mounted);
        /// returns the cgroup to remove once its processes are gone.
        pub fn stop(mut self) -> Option<PathBuf> {
            if let Some(a) = self.attachments.take() {
                a.stop();
            }
            drop(self.loader);
            if let Err(e) = attach::cleanup(&self.dir, self.cgroup.as_deref()) {
                eprintln!("service_proxy: cleaning {}: {e}", self.dir.display());
                unmount(&self.dir);
            }
            if let Some(reg) = registry().as_mut() {
                reg.mounts.retain(|m| m != &self.dir);
            }
            self.cgroup
        }
    }

    /// A benchmark Service as the API server would hand it over: the Service and its one
    /// EndpointSlice (the endpoint on another node, ready).
    fn objects(svc: &ServicePort) -> Result<(Service, EndpointSlice), String> {
        let ep = svc
            .endpoints
            .first()
            .ok_or("a bench Service has one endpoint")?;
        let service = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"namespace": svc.namespace, "name": svc.name},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": svc.cluster_ip.to_string(),
                "clusterIPs": [svc.cluster_ip.to_string()],
                "ports": [{"name": svc.port_name, "port": svc.port, "protocol": "TCP", "targetPort": ep.port()}]
            }
        });
        let slice = serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "namespace": svc.namespace,
                "name": format!("{}-bench", svc.name),
                "labels": {"kubernetes.io/service-name": svc.name}
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ep.ip().to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "backend-node"}],
            "ports": [{"name": svc.port_name, "port": ep.port(), "protocol": "TCP"}]
        });
        Ok((
            serde_json::from_value(service).map_err(|e| format!("Service {}: {e}", svc.name))?,
            serde_json::from_value(slice)
                .map_err(|e| format!("EndpointSlice {}: {e}", svc.name))?,
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Report.

fn report(settings: &Settings, results: &[SizeResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nservice_proxy: medians of {} interleaved rounds, {} connections per run (100 warm-up), 1 endpoint per Service; iptables = iptables-{}",
        settings.rounds, settings.conns, settings.ipt_backend
    );
    let _ = writeln!(
        out,
        "\n| N | mode | program N | add one | first: conn/s [steady] (connect p50/p99 us) | middle | last | last/first (steady) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for r in results {
        for &mode in &settings.modes {
            let prog = r.programming.get(&mode);
            let cell = |t: Target| match r.med(mode, t) {
                Some((c, p50, p99, steady)) => {
                    format!("{c:.0} [{steady:.0}] ({p50:.0}/{p99:.0})")
                }
                None => "-".into(),
            };
            let flat = match (r.med(mode, Target::First), r.med(mode, Target::Last)) {
                (Some(f), Some(l)) => format!("{:.2}", l.3 / f.3),
                _ => "-".into(),
            };
            if mode == Mode::Direct {
                let _ = writeln!(
                    out,
                    "| {} | direct | - | - | {} (backend address) | | | |",
                    r.n,
                    cell(Target::Backend)
                );
                continue;
            }
            // Socket-LB reads metalnet's maps: its programming is metalnet's.
            let prog = if mode == Mode::SockLb {
                r.programming.get(&Mode::Metalnet)
            } else {
                prog
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.n,
                mode.name(),
                prog.map(|p| fmt_prog(&p.full)).unwrap_or("-".into()),
                prog.map(|p| fmt_prog(&p.add_one)).unwrap_or("-".into()),
                cell(Target::First),
                cell(Target::Middle),
                cell(Target::Last),
                flat
            );
        }
    }
    let _ = writeln!(
        out,
        "\nrule-set sizes, full / add one (lines given to iptables-restore or nft; map operations for metalnet):"
    );
    for r in results {
        for (mode, p) in &r.programming {
            let _ = writeln!(
                out,
                "  N={} {}: {} / {}",
                r.n,
                mode.name(),
                p.lines.0,
                p.lines.1
            );
        }
    }
    for r in results {
        for b in &r.breakdown {
            let _ = writeln!(out, "  N={} metalnet: {b}", r.n);
        }
    }
    let _ = writeln!(
        out,
        "\nlatency added over direct, last Service: per connection (median cycle, socket to close) and connect p50:"
    );
    for r in results {
        let direct = r.med(Mode::Direct, Target::Backend);
        for &mode in &settings.modes {
            if mode == Mode::Direct {
                continue;
            }
            if let (Some(d), Some(l)) = (direct, r.med(mode, Target::Last)) {
                let _ = writeln!(
                    out,
                    "  N={} {}: {:+.1} us per connection, {:+.1} us connect p50",
                    r.n,
                    mode.name(),
                    cycle_added(&l, &d),
                    l.1 - d.1
                );
            }
        }
    }
    out.push_str(&targets(results));
    let csum: u64 = results.iter().map(|r| r.csum_errors).sum();
    let _ = writeln!(out, "\nTcpInCsumErrors in clients and backends: {csum}");
    let errors: Vec<&String> = results.iter().flat_map(|r| &r.errors).collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\nerrors:");
        for e in errors {
            let _ = writeln!(out, "  {e}");
        }
    }
    out
}

/// What a mode adds to a connection's median cycle over the direct path, in us (from the
/// steady rates: a cycle is 1 / rate).
fn cycle_added(mode: &(f64, f64, f64, f64), direct: &(f64, f64, f64, f64)) -> f64 {
    1e6 / mode.3 - 1e6 / direct.3
}

/// nft's added latency over metalnet's; an added latency at or under zero (within noise of
/// the direct path) counts as 1 us so the ratio stays meaningful.
fn added_ratio(nft: f64, metalnet: f64) -> f64 {
    nft.max(1.0) / metalnet.max(1.0)
}

/// The issue's targets, each with the figure, the bar and whether it is met. The connection
/// targets are checked for both of metalnet's paths: socket-LB is what a pod's (or the host's)
/// connection to a ClusterIP takes by default (`--socket-lb=all`); the per-packet TCX path is
/// what a connection from outside the node takes (and a pod's when socket-LB is off).
fn targets(results: &[SizeResult]) -> String {
    let mut out = String::from(
        "\ntargets (medians; conn/s ratios on the steady rate, raw in brackets; each connection target for socket-LB, the default path of a pod's connection to a ClusterIP, and for the per-packet TCX path, the path from outside the node):\n",
    );
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut line = |text: String, ok: Option<bool>| {
        let v = ok.map(verdict).unwrap_or("no figure");
        let _ = writeln!(out, "  {text}: {v}");
    };
    let at = |n: usize| results.iter().find(|r| r.n == n);
    let pair = |r: &SizeResult, a: Mode, b: Mode, t: Target| Some((r.med(a, t)?, r.med(b, t)?));
    // The rate to the last Service against iptables', on the steady rate (raw in brackets).
    let rate_vs_iptables = |r: &SizeResult, path: Mode, name: &str, bar: f64| {
        let p = pair(r, path, Mode::Iptables, Target::Last);
        let n = if r.n >= 1000 {
            format!("{},{:03}", r.n / 1000, r.n % 1000)
        } else {
            r.n.to_string()
        };
        (
            format!(
                "N={n} last Service, conn/s {name} / iptables = {} (>= {bar})",
                p.map(|(m, i)| format!("{:.2} [{:.2}]", m.3 / i.3, m.0 / i.0))
                    .unwrap_or("-".into())
            ),
            p.map(|(m, i)| m.3 / i.3 >= bar),
        )
    };
    for (path, name) in [(Mode::SockLb, "socket-LB"), (Mode::Metalnet, "TCX")] {
        if let Some(r) = at(10_000) {
            let p = pair(r, path, Mode::Iptables, Target::Last);
            let (text, ok) = rate_vs_iptables(r, path, name, 4.0);
            line(text, ok);
            line(
                format!(
                    "N=10,000 last Service, p50 connect iptables / {name} = {} (>= 5)",
                    p.map(|(m, i)| format!("{:.2}", i.1 / m.1))
                        .unwrap_or("-".into())
                ),
                p.map(|(m, i)| i.1 / m.1 >= 5.0),
            );
        } else {
            line(
                format!("N=10,000 not run: no iptables ratio for {name}"),
                None,
            );
        }
        for r in results {
            let f = pair(r, path, path, Target::First)
                .and_then(|(first, _)| Some((first, r.med(path, Target::Last)?)));
            line(
                format!(
                    "N={} {name} last/first conn/s = {} (>= 0.9)",
                    r.n,
                    f.map(|(a, b)| format!("{:.2} [{:.2}]", b.3 / a.3, b.0 / a.0))
                        .unwrap_or("-".into())
                ),
                f.map(|(a, b)| b.3 / a.3 >= 0.9),
            );
        }
        for r in results {
            let direct = r.med(Mode::Direct, Target::Backend);
            let m = r.med(path, Target::Last);
            let nf = r.med(Mode::Nft, Target::Last);
            let (text, ok) = match (direct, m, nf) {
                (Some(d), Some(m), Some(nf)) => (
                    format!(
                        "N={} latency added over direct per connection, last Service: nft {:+.1} us / {name} {:+.1} us = {:.2} (>= 0.95) [connect p50: nft {:+.1} / {name} {:+.1}]; conn/s {name} / nft = {:.2}",
                        r.n,
                        cycle_added(&nf, &d),
                        cycle_added(&m, &d),
                        added_ratio(cycle_added(&nf, &d), cycle_added(&m, &d)),
                        nf.1 - d.1,
                        m.1 - d.1,
                        m.3 / nf.3
                    ),
                    Some(added_ratio(cycle_added(&nf, &d), cycle_added(&m, &d)) >= 0.95),
                ),
                _ => (format!("N={} {name} vs nft", r.n), None),
            };
            line(text, ok);
        }
        if let Some(r) = at(100) {
            let (text, ok) = rate_vs_iptables(r, path, name, 0.9);
            line(text, ok);
        }
    }
    let prog = |r: &SizeResult, add: bool| -> Option<Duration> {
        let p = r.programming.get(&Mode::Metalnet)?;
        match if add { &p.add_one } else { &p.full } {
            Some(Ok(d)) => Some(*d),
            _ => None,
        }
    };
    if let Some(r) = at(10_000) {
        let full = prog(r, false);
        line(
            format!(
                "programming 10,000 Services = {} (<= 100 ms)",
                full.map(fmt_dur).unwrap_or("-".into())
            ),
            full.map(|d| d <= Duration::from_millis(100)),
        );
        let add = prog(r, true);
        line(
            format!(
                "adding one Service at 10,000 = {} (<= 1 ms)",
                add.map(fmt_dur).unwrap_or("-".into())
            ),
            add.map(|d| d <= Duration::from_millis(1)),
        );
    }
    for r in results {
        let p = r
            .med(Mode::SockLb, Target::Last)
            .zip(r.med(Mode::Direct, Target::Backend));
        line(
            format!(
                "N={} socket-LB / direct conn/s = {} (>= 0.95)",
                r.n,
                p.map(|(s, d)| format!("{:.2} [{:.2}]", s.3 / d.3, s.0 / d.0))
                    .unwrap_or("-".into())
            ),
            p.map(|(s, d)| s.3 / d.3 >= 0.95),
        );
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--client") {
        if let Err(e) = client_main(&args[2..]) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
    }
    if !metalnet::testing::netns::is_root() {
        eprintln!("service_proxy: needs root (network namespaces, iptables, nft); skipped");
        return;
    }
    *registry() = Some(Registry::default());
    install_signal_cleanup();
    let settings = Settings::from_env();
    eprintln!("service_proxy: {settings:?}");
    let started = Instant::now();
    let mut results = Vec::new();
    for &n in &settings.sizes {
        eprintln!("N = {n}");
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bench_size(&settings, n))) {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => eprintln!("N = {n}: {e}"),
            Err(_) => {
                cleanup_all();
                *registry() = Some(Registry::default());
                eprintln!("N = {n}: panicked");
            }
        }
    }
    print!("{}", report(&settings, &results));
    println!("\ntotal run time {:.0} s", started.elapsed().as_secs_f64());
    cleanup_all();
}
