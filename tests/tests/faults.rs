//! Fault injection on the layer 2 site: the controller and the speakers are killed (SIGKILL)
//! or stopped (SIGTERM) at random points while Services churn in the shared state directory,
//! then restarted, for many iterations. At every probe:
//!
//! - no address is held by two Services (statuses read from the state directory);
//! - a Service whose manifest did not change keeps its address (a non-atomic rewrite of a file
//!   with the same content is not a change: the backend keeps the last good version);
//! - the client's ARP request for each pool address gets at most one answer, also while a
//!   speaker is down or leaving; once the site has settled, exactly one, from the node the
//!   election picks.
//!
//! The run is seeded: the seed is printed, and `FAULTS_SEED` replays it; `FAULTS_ITERATIONS`
//! sets the number of iterations; some restarts happen while a manifest is empty (being
//! rewritten in place), which `FAULTS_EMPTY_STARTS=0` turns off. Needs root (network
//! namespaces).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use metalnet::testing::{Manifest, endpoint_slice, l2_advertisement, service};
use metalnet_lab::Process;
use metalnet_lab::bins;
use metalnet_lab::lab::components::service_ingress;
use metalnet_lab::lab::demo::CLIENT_V4;
use metalnet_lab::lab::l2site::{self, L2Site, NODES};
use metalnet_speaker::layer2::election::first_ranked;

const DEFAULT_ITERATIONS: u64 = 200;
/// The pool: fewer addresses than Services, so some wait and take the addresses others free.
const POOL_FIRST: u8 = 200;
const POOL_SIZE: u8 = 14;
/// Services in `stable.yaml`, never changed (only rewritten with the same content).
const STABLE: usize = 4;
/// Services with a file each, created and deleted at random.
const CHURN: usize = 12;
/// How long an ARP probe listens for answers after sending its requests.
const ARP_WINDOW: &str = "0.15";
/// How long the controller may take to settle the statuses after an iteration.
const SETTLE_STATUS: Duration = Duration::from_secs(20);
/// How long the speakers may take to settle the answers after an iteration.
const SETTLE_ARP: Duration = Duration::from_secs(15);
/// How long a SIGTERMed daemon may take to exit (the speaker's leave grace is 2 s).
const EXIT_LIMIT: Duration = Duration::from_secs(8);

/// Sends one ARP request per target from `iface` and prints `TARGET MAC` for every reply
/// addressed to the prober (gratuitous announcements and other traffic are ignored).
const ARP_PROBE: &str = r#"
import socket, struct, sys, time
iface, mac, ip, window = sys.argv[1], bytes.fromhex(sys.argv[2].replace(':', '')), socket.inet_aton(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((iface, 0))
for t in sys.argv[5:]:
    s.send(b'\xff' * 6 + mac + b'\x08\x06' + struct.pack('!HHBBH', 1, 0x0800, 6, 4, 1) + mac + ip + b'\x00' * 6 + socket.inet_aton(t))
end = time.time() + window
while True:
    left = end - time.time()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        f = s.recv(2048)
    except socket.timeout:
        break
    if len(f) < 42 or f[12:14] != b'\x08\x06' or f[0:6] != mac:
        continue
    if struct.unpack('!H', f[20:22])[0] != 2 or f[38:42] != ip:
        continue
    print(socket.inet_ntoa(f[28:32]), f[22:28].hex(':'), flush=True)
"#;

/// SplitMix64: small, seedable, and the same sequence on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
    )
}

fn pool_addresses() -> Vec<String> {
    (0..POOL_SIZE)
        .map(|i| format!("192.0.2.{}", POOL_FIRST + i))
        .collect()
}

fn stable_name(i: usize) -> String {
    format!("keep-{i}")
}

fn churn_name(i: usize) -> String {
    format!("churn-{i:02}")
}

/// A Service (policy Cluster: any node may announce) with one ready endpoint on node1.
fn service_doc(name: &str) -> String {
    service(name).traffic_policy("Cluster").document()
        + &endpoint_slice(name).ready_on("node1").document()
}

/// Writes `path` as editors that rename do: a dot file (which the backend skips) renamed over.
fn write_atomic(path: &Path, text: &str) {
    let name = path.file_name().unwrap().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming {}: {e}", tmp.display()));
}

/// What one probe saw.
#[derive(Default)]
struct Seen {
    /// Address of each present Service (empty when it has none).
    ingress: BTreeMap<String, Vec<String>>,
    /// Answering MACs per probed address, one per reply.
    arp: BTreeMap<String, Vec<String>>,
}

struct Faults {
    site: L2Site,
    rng: Rng,
    seed: u64,
    controller: Process,
    speakers: Vec<Process>,
    node_of_mac: BTreeMap<String, String>,
    client_mac: String,
    present: BTreeSet<usize>,
    /// Services whose manifest was (re)created since the last settled probe: their status may
    /// still be the one a former incarnation left behind.
    fresh: BTreeSet<String>,
    /// The address of each Service whose manifest has not changed since it was seen settled.
    pinned: BTreeMap<String, String>,
    /// What this iteration did, for the failure message.
    journal: Vec<String>,
    /// The journals of the iterations before, one line each.
    history: Vec<String>,
    iteration: u64,
    probes: u64,
    arp_requests: u64,
    faults: BTreeMap<&'static str, u64>,
    /// Whether a daemon may be restarted while a manifest is empty (on unless
    /// `FAULTS_EMPTY_STARTS=0`).
    empty_starts: bool,
}

impl Faults {
    fn state(&self) -> &Path {
        self.site.state_dir()
    }

    fn churn_path(&self, i: usize) -> PathBuf {
        self.state().join(format!("svc-{}.yaml", churn_name(i)))
    }

    fn stable_path(&self) -> PathBuf {
        self.state().join("stable.yaml")
    }

    fn stable_text() -> String {
        (0..STABLE).map(|i| service_doc(&stable_name(i))).collect()
    }

    fn present_names(&self) -> Vec<String> {
        (0..STABLE)
            .map(stable_name)
            .chain(self.present.iter().map(|&i| churn_name(i)))
            .collect()
    }

    fn note(&mut self, what: impl Into<String>) {
        self.journal.push(what.into());
    }

    fn fail(&self, why: &str) -> ! {
        let mut logs = String::new();
        for (name, p) in std::iter::once(("controller".to_string(), &self.controller)).chain(
            self.speakers
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("speaker {}", NODES[i]), p)),
        ) {
            let text = p.logs();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            logs.push_str(&format!("--- {name} (pid {}) ---\n", p.pid()));
            logs.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            logs.push('\n');
        }
        panic!(
            "iteration {} (FAULTS_SEED={}): {why}\nthe iterations before:\n  {}\nthis iteration:\n  {}\npinned: {:?}\n{logs}",
            self.iteration,
            self.seed,
            self.history[self.history.len().saturating_sub(10)..].join("\n  "),
            self.journal.join("\n  "),
            self.pinned,
        );
    }

    fn start_controller(&self) -> Process {
        start_controller(&self.site)
    }

    fn read_ingress(&self) -> BTreeMap<String, Vec<String>> {
        self.present_names()
            .into_iter()
            .map(|n| {
                let ips = service_ingress(self.state(), "default", &n);
                (n, ips)
            })
            .collect()
    }

    fn arp_probe(&mut self) -> BTreeMap<String, Vec<String>> {
        let targets = pool_addresses();
        let mut args = vec![
            "python3",
            "-c",
            ARP_PROBE,
            "eth0",
            self.client_mac.as_str(),
            CLIENT_V4,
            ARP_WINDOW,
        ];
        args.extend(targets.iter().map(String::as_str));
        let out = self
            .site
            .demo
            .client
            .exec_ok(&args)
            .unwrap_or_else(|e| panic!("ARP probe: {e}"));
        self.arp_requests += targets.len() as u64;
        let mut answers: BTreeMap<String, Vec<String>> =
            targets.into_iter().map(|t| (t, Vec::new())).collect();
        for line in out.lines() {
            let mut words = line.split_whitespace();
            if let (Some(ip), Some(mac)) = (words.next(), words.next())
                && let Some(macs) = answers.get_mut(ip)
            {
                macs.push(mac.to_lowercase());
            }
        }
        answers
    }

    fn describe_macs(&self, macs: &[String]) -> String {
        macs.iter()
            .map(|m| {
                let node = self.node_of_mac.get(m).map_or("?", String::as_str);
                format!("{m} ({node})")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks the invariants on what the state directory (and, with `arp`, the wire) shows now.
    fn probe(&mut self, phase: &str, arp: bool) -> Seen {
        self.probes += 1;
        let ingress = self.read_ingress();
        // No address held by two Services (a re-created Service may still show the status of
        // its former incarnation until the controller has seen it).
        let mut holders: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, ips) in &ingress {
            if self.fresh.contains(name) {
                continue;
            }
            for ip in ips {
                holders.entry(ip).or_default().push(name);
            }
        }
        if let Some((ip, names)) = holders.iter().find(|(_, n)| n.len() > 1) {
            self.fail(&format!("{phase}: {ip} is held by {names:?}"));
        }
        // Nothing moves while its manifest is unchanged.
        for (name, pin) in &self.pinned {
            let now = ingress.get(name).cloned().unwrap_or_default();
            if now.as_slice() != std::slice::from_ref(pin) {
                self.fail(&format!(
                    "{phase}: Service default/{name} had {pin} and now has {now:?}, its manifest unchanged"
                ));
            }
        }
        let mut seen = Seen {
            ingress,
            arp: BTreeMap::new(),
        };
        if arp {
            let answers = self.arp_probe();
            for (ip, macs) in &answers {
                if macs.len() > 1 {
                    self.fail(&format!(
                        "{phase}: one ARP request for {ip} got {} answers: {}",
                        macs.len(),
                        self.describe_macs(macs)
                    ));
                }
            }
            seen.arp = answers;
        }
        seen
    }

    /// Fails when a daemon that was not told to stop has exited.
    fn check_alive(&self, down: Option<Target>) {
        if down != Some(Target::Controller) && !self.controller.is_running() {
            self.fail("the controller exited on its own");
        }
        for (i, p) in self.speakers.iter().enumerate() {
            if down != Some(Target::Speaker(i)) && !p.is_running() {
                self.fail(&format!("the speaker on {} exited on its own", NODES[i]));
            }
        }
    }

    /// Waits until the controller has settled every present Service and the speakers answer
    /// each assigned address exactly once, from the elected node; then pins the addresses.
    fn settle(&mut self) {
        let start = Instant::now();
        let want = self.present_names().len().min(usize::from(POOL_SIZE));
        let mut last: Option<BTreeMap<String, Vec<String>>> = None;
        let mut stable_polls = 0;
        loop {
            self.check_alive(None);
            let seen = self.probe("settling statuses", false);
            let assigned = seen.ingress.values().filter(|ips| !ips.is_empty()).count();
            let mut all: Vec<&String> = seen.ingress.values().flatten().collect();
            let n = all.len();
            all.sort();
            all.dedup();
            let ok =
                assigned == want && all.len() == n && seen.ingress.values().all(|v| v.len() <= 1);
            if ok && last.as_ref() == Some(&seen.ingress) {
                stable_polls += 1;
            } else {
                stable_polls = 0;
            }
            last = Some(seen.ingress);
            if stable_polls >= 3 {
                break;
            }
            if start.elapsed() > SETTLE_STATUS {
                self.fail(&format!(
                    "the statuses did not settle within {SETTLE_STATUS:?} ({want} Services should have an address, one each): {:?}",
                    last.unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let ingress = last.unwrap_or_default();
        self.fresh.clear();
        for (name, ips) in &ingress {
            if let Some(ip) = ips.first() {
                self.pinned.insert(name.clone(), ip.clone());
            }
        }
        let assigned: BTreeMap<String, String> = ingress
            .iter()
            .filter_map(|(n, ips)| ips.first().map(|ip| (ip.clone(), n.clone())))
            .collect();
        let start = Instant::now();
        loop {
            self.check_alive(None);
            let seen = self.probe("settling answers", true);
            let wrong: Vec<String> = seen
                .arp
                .iter()
                .filter_map(|(ip, macs)| {
                    let expected = match assigned.get(ip) {
                        Some(_) => {
                            let winner = first_ranked(&NODES, &ip.parse::<IpAddr>().ok()?)?;
                            vec![self.site.mac(winner).ok()?]
                        }
                        None => Vec::new(),
                    };
                    (macs != &expected).then(|| {
                        format!(
                            "{ip} ({}): answered by [{}], expected [{}]",
                            assigned.get(ip).map_or("unassigned", String::as_str),
                            self.describe_macs(macs),
                            self.describe_macs(&expected)
                        )
                    })
                })
                .collect();
            if wrong.is_empty() {
                break;
            }
            if start.elapsed() > SETTLE_ARP {
                self.fail(&format!(
                    "the answers did not settle within {SETTLE_ARP:?}:\n  {}",
                    wrong.join("\n  ")
                ));
            }
        }
    }

    /// One step of churn: create, delete, or rewrite a file in place (truncate, then write in
    /// two halves, probing while it is empty). A rewrite restarts `restart_during` while the
    /// file is empty, so the daemon starts on a directory where those Services seem gone;
    /// returns whether it did.
    fn churn_step(&mut self, restart_during: Option<Target>) -> bool {
        let i = self.rng.below(CHURN as u64) as usize;
        let roll = self.rng.below(100);
        if !self.present.contains(&i) {
            let name = churn_name(i);
            self.note(format!("create {name}"));
            write_atomic(&self.churn_path(i), &service_doc(&name));
            self.present.insert(i);
            self.fresh.insert(name);
            false
        } else if roll < 45 {
            let name = churn_name(i);
            self.note(format!("delete {name}"));
            let path = self.churn_path(i);
            std::fs::remove_file(&path)
                .unwrap_or_else(|e| panic!("deleting {}: {e}", path.display()));
            self.present.remove(&i);
            self.pinned.remove(&name);
            self.fresh.remove(&name);
            false
        } else {
            let (path, text) = if roll < 75 {
                (self.churn_path(i), service_doc(&churn_name(i)))
            } else {
                (self.stable_path(), Self::stable_text())
            };
            // Long enough for a restarted daemon to start and read the directory meanwhile.
            let pause = match restart_during {
                Some(_) => Duration::from_millis(200 + self.rng.below(300)),
                None => Duration::from_millis(20 + self.rng.below(100)),
            };
            self.note(format!(
                "rewrite {} in place, empty for {pause:?}",
                path.file_name().unwrap().to_string_lossy()
            ));
            let mut f = std::fs::File::create(&path)
                .unwrap_or_else(|e| panic!("truncating {}: {e}", path.display()));
            if let Some(target) = restart_during {
                *self
                    .faults
                    .entry("restarts while a manifest is empty")
                    .or_default() += 1;
                self.restart(target);
            }
            let arp = self.rng.chance(50);
            self.probe("while a manifest is empty", arp);
            std::thread::sleep(pause);
            let (a, b) = text.as_bytes().split_at(text.len() / 2);
            f.write_all(a)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            std::thread::sleep(pause / 2);
            self.probe("while a manifest is half written", false);
            f.write_all(b)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            restart_during.is_some()
        }
    }

    fn process(&self, target: Target) -> &Process {
        match target {
            Target::Controller => &self.controller,
            Target::Speaker(i) => &self.speakers[i],
        }
    }

    /// Stops `target` with `sigterm` or SIGKILL; after SIGTERM, probes while it leaves.
    fn stop(&mut self, target: Target, sigterm: bool) {
        let sig = if sigterm { "SIGTERM" } else { "SIGKILL" };
        self.note(format!("{sig} {target:?}"));
        *self
            .faults
            .entry(if sigterm { "SIGTERM" } else { "SIGKILL" })
            .or_default() += 1;
        if sigterm {
            self.process(target).signal(libc::SIGTERM);
            let start = Instant::now();
            while self.process(target).is_running() {
                if start.elapsed() > EXIT_LIMIT {
                    self.fail(&format!(
                        "{target:?} still runs {EXIT_LIMIT:?} after SIGTERM"
                    ));
                }
                self.probe("while a daemon leaves", true);
            }
        } else {
            self.process(target).kill();
        }
    }

    fn restart(&mut self, target: Target) {
        self.note(format!("restart {target:?}"));
        match target {
            Target::Controller => self.controller = self.start_controller(),
            Target::Speaker(i) => {
                self.speakers[i] = self
                    .site
                    .start(NODES[i], "speaker", &[])
                    .unwrap_or_else(|e| panic!("restarting the speaker on {}: {e}", NODES[i]))
            }
        }
    }

    fn iterate(&mut self) {
        let done = std::mem::take(&mut self.journal).join("; ");
        self.history.push(format!("{}: {done}", self.iteration - 1));
        let target = match self.rng.below(2 + NODES.len() as u64) {
            0 | 1 => Target::Controller,
            n => Target::Speaker(n as usize - 2),
        };
        let sigterm = self.rng.chance(50);
        let steps = 1 + self.rng.below(4) as usize;
        let stop_at = self.rng.below(steps as u64 + 1) as usize;
        let restart_at = stop_at + self.rng.below((steps - stop_at) as u64 + 1) as usize;
        let stop_delay = Duration::from_millis(self.rng.below(250));
        for step in 0..=steps {
            if step == stop_at {
                // A random moment: the daemon may be in the middle of the previous step's batch.
                std::thread::sleep(stop_delay);
                self.note(format!("after {stop_delay:?}"));
                self.stop(target, sigterm);
                self.check_alive(Some(target));
                self.probe("with a daemon down", true);
            }
            let mut churned = false;
            if step == restart_at {
                if step < steps && self.rng.chance(35) && self.empty_starts {
                    churned = true;
                    if !self.churn_step(Some(target)) {
                        self.restart(target);
                    }
                } else {
                    self.restart(target);
                }
                self.probe("after a restart", true);
            }
            if step < steps {
                if !churned {
                    self.churn_step(None);
                }
                self.check_alive(if step >= stop_at && step < restart_at {
                    Some(target)
                } else {
                    None
                });
                self.probe("after a churn step", false);
            }
        }
        self.settle();
    }
}

/// The controller on node1 (as a Deployment's replica would run on some node), on the site's
/// state directory.
fn start_controller(site: &L2Site) -> Process {
    let bin = bins::binary("metalnet-controller").unwrap();
    let dir = site.state_dir().display().to_string();
    site.node("node1")
        .spawn(
            "controller",
            &[
                &bin.display().to_string(),
                "--state-dir",
                &dir,
                "--metrics-addr",
                "127.0.0.1:7472",
            ],
        )
        .unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Controller,
    Speaker(usize),
}

#[test]
fn killed_and_restarted_daemons_never_move_double_or_double_answer_an_address() {
    let seed = env_u64("FAULTS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let iterations = env_u64("FAULTS_ITERATIONS").unwrap_or(DEFAULT_ITERATIONS);
    eprintln!("faults: FAULTS_SEED={seed} FAULTS_ITERATIONS={iterations}");

    let pool = format!(
        "192.0.2.{POOL_FIRST}-192.0.2.{}",
        POOL_FIRST + POOL_SIZE - 1
    );
    let objects = l2site::site_objects(&[pool.as_str()], l2_advertisement("l2"), &[]);
    let site = L2Site::new("faults", &objects, &[])
        .unwrap()
        .with_speaker_args(&["--log-level", "info"]);
    let node_of_mac = NODES
        .iter()
        .map(|n| (site.mac(n).unwrap(), n.to_string()))
        .collect();
    let client_mac = site.demo.client.mac("eth0").unwrap();
    std::fs::write(site.state_dir().join("stable.yaml"), Faults::stable_text()).unwrap();
    let speakers = site.start_all(&[]).unwrap();
    let mut rng = Rng(seed);
    let present: BTreeSet<usize> = (0..CHURN).filter(|_| rng.chance(70)).collect();
    for &i in &present {
        let path = site.state_dir().join(format!("svc-{}.yaml", churn_name(i)));
        write_atomic(&path, &service_doc(&churn_name(i)));
    }
    let controller = start_controller(&site);
    let mut f = Faults {
        site,
        rng,
        seed,
        controller,
        speakers,
        node_of_mac,
        client_mac,
        present,
        fresh: BTreeSet::new(),
        pinned: BTreeMap::new(),
        journal: Vec::new(),
        history: Vec::new(),
        iteration: 0,
        probes: 0,
        arp_requests: 0,
        faults: BTreeMap::new(),
        empty_starts: env_u64("FAULTS_EMPTY_STARTS") != Some(0),
    };
    f.note("initial start");
    f.settle();

    let start = Instant::now();
    for it in 1..=iterations {
        f.iteration = it;
        f.iterate();
        if it % 20 == 0 {
            eprintln!(
                "faults: {it}/{iterations} iterations in {:.0?}, {} probes, {} ARP requests",
                start.elapsed(),
                f.probes,
                f.arp_requests
            );
        }
    }
    eprintln!(
        "faults: done, seed {seed}, {iterations} iterations in {:.1?} ({:?}), {} probes, {} ARP requests, {} Services pinned at the end",
        start.elapsed(),
        f.faults,
        f.probes,
        f.arp_requests,
        f.pinned.len()
    );
}

/// Runs `metalnet-controller --once` on `dir`, which must succeed (`what` names the step).
fn controller_once(dir: &Path, what: &str) {
    let out = std::process::Command::new(bins::binary("metalnet-controller").unwrap())
        .args(["--once", "--state-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "controller --once ({what}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A state directory with a pool of one address for the `--once` reproductions below: a
/// Service is a file `NAME.yaml`, and each step runs `metalnet-controller --once`.
struct OneAddress(tempfile::TempDir);

impl OneAddress {
    const IP: &str = "192.0.2.200";

    fn new() -> OneAddress {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pool.yaml"),
            metalnet::testing::pool("p", [format!("{}/32", Self::IP)]).document(),
        )
        .unwrap();
        OneAddress(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.path().join(format!("{name}.yaml"))
    }

    fn create(&self, name: &str) {
        write_atomic(&self.file(name), &service(name).document());
    }

    fn delete(&self, name: &str) {
        std::fs::remove_file(self.file(name)).unwrap();
    }

    fn once(&self, what: &str) {
        controller_once(self.0.path(), what);
    }

    /// Whether each of `names` holds the address (and nothing else).
    fn holding(&self, names: &[&str]) -> Vec<bool> {
        names
            .iter()
            .map(|n| {
                let ips = service_ingress(self.0.path(), "default", n);
                assert!(ips.is_empty() || ips == [Self::IP], "{n}: {ips:?}");
                !ips.is_empty()
            })
            .collect()
    }
}

/// The smallest reproduction of what the random run above once found: a controller that
/// starts while the file holding a Service is being rewritten (empty for a moment) gave that
/// Service's address to a Service waiting for one, so the address moved when the file was
/// back. It now reads the manifest's last good version kept under `status/last-good/`.
#[test]
fn a_controller_starting_while_a_manifest_is_empty_keeps_its_services_addresses() {
    let site = OneAddress::new();
    site.create("a");
    site.once("a alone");
    assert_eq!(site.holding(&["a"]), [true]);

    // b waits for an address; a's file is truncated, as a shell `>` redirect does, when the
    // controller starts.
    site.create("b");
    std::fs::File::create(site.file("a")).unwrap();
    site.once("a's file empty");
    site.create("a");
    site.once("a's file back");
    assert_eq!(
        site.holding(&["a", "b"]),
        [true, false],
        "a keeps its address; b waits"
    );
}

/// A Service deleted while no controller runs: its address goes to another Service, and a
/// Service of the first name created again waits, the current holder keeping the address.
#[test]
fn a_recreated_service_does_not_take_its_old_address_from_the_current_holder() {
    let site = OneAddress::new();
    site.create("a");
    site.once("a alone");
    assert_eq!(site.holding(&["a"]), [true]);
    site.delete("a");
    site.create("b");
    site.once("b created");
    assert_eq!(site.holding(&["b"]), [true], "b takes the freed address");

    site.create("a");
    site.once("a created again");
    assert_eq!(
        site.holding(&["a", "b"]),
        [false, true],
        "b keeps its address; a waits"
    );
}

/// The smallest reproduction of what the random run above found next: `a`, created again
/// while its old status was still on disk, took its old address back at a controller start;
/// at the next start `b`, created again too, claimed the same address with a later
/// allocation time in its own old status, and won it from `a`. A deleted Service's status now
/// goes with it, so neither comes back with a claim.
#[test]
fn a_service_created_again_never_takes_an_address_with_its_old_status() {
    let site = OneAddress::new();
    site.create("a");
    site.once("a alone");
    assert_eq!(site.holding(&["a"]), [true]);

    site.delete("a");
    site.create("b");
    site.once("a deleted, b created");
    assert_eq!(site.holding(&["b"]), [true], "b takes the freed address");

    site.delete("b");
    site.create("a");
    site.once("b deleted, a created again");
    assert_eq!(site.holding(&["a"]), [true], "a takes the freed address");

    site.create("b");
    site.once("b created again");
    assert_eq!(
        site.holding(&["a", "b"]),
        [true, false],
        "a keeps its address; b waits"
    );
}
