//! The lab: a virtual bare-metal site built from network namespaces.
//!
//! Every [`Lab`] owns a unique short prefix (`mnl` + 5 characters); all of its namespaces are
//! named `<prefix>-<host>` and its files live in `<tmp>/<prefix>.lab/`. Dropping the lab (also
//! while unwinding from a panic) stops its processes, kills whatever else still runs in its
//! namespaces, deletes the namespaces and the directory. [`down`] removes leftovers of any lab.
//!
//! This is test infrastructure: it shells out to `ip` and friends on purpose. Nothing is ever
//! left in, or addressed in, the machine's root namespace: veth pairs are created directly
//! inside their namespaces.
//!
//! Every wait ([`wait_for`] and what is built on it) and [`Host::block_on`] scale their
//! timeouts by the patience factor in `METALNET_TEST_PATIENCE` (default 1; e.g. `3` on a
//! loaded machine), so slow runs get more time without editing tests.

use metalnet::testing::block_on_in;
use metalnet::testing::netns::BLOCK_ON_LIMIT;
pub use metalnet::testing::patience::{PATIENCE_VAR, patient};

pub mod bgp;
pub mod bird;
pub mod cni;
pub mod components;
pub mod demo;
mod down;
pub mod frr;
pub mod gobgp;
pub mod l2site;
pub mod pods;
mod process;
pub mod proxy;
pub mod router;

pub use bgp::{BgpNeighbor, BgpRouter, Community, LargeCommunity, Policy, Route, StaticRoute};
pub use bird::{Bird, BirdConfig, BirdProtocol};
pub use demo::DemoSite;
pub use down::{DownReport, down, down_orphans};
pub use frr::{Frr, FrrConfig};
pub use gobgp::{Gobgp, GobgpConfig};
pub use process::Process;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Every lab namespace and directory name starts with this marker; [`down`] relies on it.
pub const LAB_PREFIX_MARKER: &str = "mnl";
/// Name of the file in a lab directory that records which process owns the lab.
const OWNER_FILE: &str = "owner";
/// Maximum length of a Linux interface name.
const IFNAME_MAX: usize = 15;

/// Errors of the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
    #[error("cannot parse {what}: {reason}")]
    Parse { what: String, reason: String },
    #[error("invalid lab request: {0}")]
    Invalid(String),
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let context = context.into();
    move |source| LabError::Io { context, source }
}

/// Runs a command in the current namespace and returns its output, failing with its stderr.
pub(crate) fn run<S: AsRef<OsStr>>(args: &[S]) -> Result<Output> {
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| LabError::Invalid("empty command".into()))?;
    let output = Command::new(program)
        .args(rest)
        .output()
        .map_err(io_err(format!("running {}", display_cmd(args))))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(LabError::Command {
            command: display_cmd(args),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

pub(crate) fn display_cmd<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Standard base64 with padding: how Go's encoding/json writes `[]byte` (CNI caches) and how
/// kube-router reads its passwords.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Whether a lab test can run here: as root, with these commands on the PATH. When not, it
/// says why on stderr (the test then returns early, as a skip).
pub fn can_run(tools: &[&str]) -> bool {
    let root = metalnet::testing::is_root();
    let missing: Vec<_> = tools.iter().filter(|t| !have_command(t)).collect();
    if !root || !missing.is_empty() {
        eprintln!("skipping: root={root}, missing tools {missing:?}");
        return false;
    }
    true
}

/// Whether `command -v TOOL` finds it.
pub fn have_command(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Polls `cond` every 100 ms until it holds or `timeout` (scaled by the patience factor,
/// [`PATIENCE_VAR`]) passes.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let timeout = patient(timeout);
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: what.to_string(),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Like [`wait_for`] but the condition yields a value.
pub fn wait_for_value<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    let mut found = None;
    wait_for(what, timeout, || {
        found = probe();
        found.is_some()
    })?;
    found.ok_or_else(|| LabError::Timeout {
        what: what.to_string(),
        timeout: patient(timeout),
    })
}

/// State shared by a lab and its handles.
pub(crate) struct LabShared {
    prefix: String,
    dir: PathBuf,
    state: Mutex<LabState>,
}

#[derive(Default)]
struct LabState {
    /// Namespaces in creation order.
    namespaces: Vec<String>,
    processes: Vec<Arc<process::ProcessInner>>,
    /// Interface names taken per namespace (to pick unique switch port names).
    ifnames: std::collections::HashMap<String, HashSet<String>>,
    counter: u64,
}

impl LabShared {
    fn state(&self) -> MutexGuard<'_, LabState> {
        // A panic while holding the lock must not prevent cleanup.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn register_process(&self, p: Arc<process::ProcessInner>) {
        self.state().processes.push(p);
    }

    pub(crate) fn next_id(&self) -> u64 {
        let mut st = self.state();
        st.counter += 1;
        st.counter
    }

    fn claim_ifname(&self, netns: &str, name: &str) -> bool {
        self.state()
            .ifnames
            .entry(netns.to_string())
            .or_default()
            .insert(name.to_string())
    }
}

/// A lab instance. Cheap handles ([`Host`], [`Switch`]) refer back to it.
pub struct Lab {
    shared: Arc<LabShared>,
    test_name: String,
}

static LAB_COUNTER: AtomicU64 = AtomicU64::new(0);

fn short_id(seed: u64) -> String {
    // SplitMix64 finalizer spreads pid/counter/time into 5 base-36 characters.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..5)
        .map(|i| ALPHABET[((z >> (i * 6)) % 36) as usize] as char)
        .collect()
}

/// Directory holding a lab's files.
pub(crate) fn lab_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{prefix}.lab"))
}

impl Lab {
    /// Creates an empty lab with a fresh unique prefix. `test_name` is recorded for `down`.
    pub fn new(test_name: &str) -> Result<Lab> {
        for _ in 0..16 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default();
            let seed = (u64::from(std::process::id()) << 32)
                ^ LAB_COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(17)
                ^ nanos;
            let prefix = format!("{LAB_PREFIX_MARKER}{}", short_id(seed));
            let dir = lab_dir(&prefix);
            // create_dir is atomic: a collision with another lab retries with a new prefix.
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(format!("creating {}", dir.display()))(e)),
            }
            // Daemons that drop privileges (zebra runs as `frr`) must reach their subdirectory.
            set_mode(&dir, 0o755)?;
            fs::write(
                dir.join(OWNER_FILE),
                format!("{}\n{test_name}\n", std::process::id()),
            )
            .map_err(io_err(format!("writing owner file in {}", dir.display())))?;
            tracing::info!(lab = %prefix, test = test_name, dir = %dir.display(), "lab created");
            return Ok(Lab {
                shared: Arc::new(LabShared {
                    prefix,
                    dir,
                    state: Mutex::new(LabState::default()),
                }),
                test_name: test_name.to_string(),
            });
        }
        Err(LabError::Invalid(
            "could not find a free lab prefix after 16 attempts".into(),
        ))
    }

    /// The unique prefix of this lab (`mnl` + 5 characters).
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The test name given to [`Lab::new`].
    pub fn test_name(&self) -> &str {
        &self.test_name
    }

    /// The lab's temporary directory (configs, logs, sockets).
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    fn netns_name(&self, name: &str) -> Result<String> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(LabError::Invalid(format!(
                "host name {name:?} must be non-empty ASCII letters, digits, '-' or '_'"
            )));
        }
        Ok(format!("{}-{name}", self.shared.prefix))
    }

    fn add_netns(&self, name: &str) -> Result<String> {
        let netns = self.netns_name(name)?;
        run(&["ip", "netns", "add", &netns])?;
        self.shared.state().namespaces.push(netns.clone());
        run(&["ip", "-n", &netns, "link", "set", "lo", "up"])?;
        // Quick tests: no duplicate address detection, addresses usable at once.
        for key in ["all", "default"] {
            sysctl(&netns, &format!("net.ipv6.conf.{key}.accept_dad"), "0")?;
            sysctl(&netns, &format!("net.ipv6.conf.{key}.dad_transmits"), "0")?;
        }
        Ok(netns)
    }

    /// Creates a host: a namespace with `lo` up and IPv6 DAD off.
    pub fn host(&self, name: &str) -> Result<Host> {
        let netns = self.add_netns(name)?;
        let dir = self.shared.dir.join(name);
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        set_mode(&dir, 0o755)?;
        Ok(Host {
            name: name.to_string(),
            netns,
            dir,
            lab: self.shared.clone(),
        })
    }

    /// Creates a router-like host: like [`Lab::host`] with IPv4 and IPv6 forwarding on.
    pub fn router(&self, name: &str) -> Result<Host> {
        let host = self.host(name)?;
        host.set_forwarding(true)?;
        Ok(host)
    }

    /// Creates a switch: a bridge `br0` in its own namespace, multicast snooping off.
    pub fn switch(&self, name: &str) -> Result<Switch> {
        let netns = self.add_netns(name)?;
        run(&["ip", "-n", &netns, "link", "add", "br0", "type", "bridge"])?;
        run(&[
            "ip",
            "-n",
            &netns,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        run(&["ip", "-n", &netns, "link", "set", "br0", "up"])?;
        Ok(Switch {
            name: name.to_string(),
            netns,
        })
    }

    /// Connects `host` to `switch` with a veth pair; the host side is named `ifname` and up.
    pub fn connect(&self, host: &Host, switch: &Switch, ifname: &str) -> Result<Iface> {
        check_ifname(ifname)?;
        if !self.shared.claim_ifname(&host.netns, ifname) {
            return Err(LabError::Invalid(format!(
                "host {} already has an interface {ifname}",
                host.name
            )));
        }
        let port = self.switch_port_name(&switch.netns, &host.name, ifname);
        create_veth(&host.netns, ifname, &switch.netns, &port)?;
        run(&[
            "ip",
            "-n",
            &switch.netns,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ])?;
        host.set_up(ifname)?;
        Ok(Iface {
            netns: host.netns.clone(),
            name: ifname.to_string(),
            peer_netns: switch.netns.clone(),
            peer_name: port,
        })
    }

    /// A point-to-point veth link between two hosts; both ends are up.
    pub fn wire(&self, a: &Host, a_if: &str, b: &Host, b_if: &str) -> Result<Iface> {
        check_ifname(a_if)?;
        check_ifname(b_if)?;
        if a.netns == b.netns {
            return Err(LabError::Invalid(format!(
                "cannot wire host {} to itself",
                a.name
            )));
        }
        for (h, i) in [(a, a_if), (b, b_if)] {
            if !self.shared.claim_ifname(&h.netns, i) {
                return Err(LabError::Invalid(format!(
                    "host {} already has an interface {i}",
                    h.name
                )));
            }
        }
        create_veth(&a.netns, a_if, &b.netns, b_if)?;
        a.set_up(a_if)?;
        b.set_up(b_if)?;
        Ok(Iface {
            netns: a.netns.clone(),
            name: a_if.to_string(),
            peer_netns: b.netns.clone(),
            peer_name: b_if.to_string(),
        })
    }

    fn switch_port_name(&self, switch_netns: &str, host: &str, ifname: &str) -> String {
        let preferred = format!("{host}-{ifname}");
        if preferred.len() <= IFNAME_MAX && self.shared.claim_ifname(switch_netns, &preferred) {
            return preferred;
        }
        loop {
            let candidate = format!("p{}", self.shared.next_id());
            if self.shared.claim_ifname(switch_netns, &candidate) {
                return candidate;
            }
        }
    }

    /// Namespaces of this lab, in creation order.
    pub fn namespaces(&self) -> Vec<String> {
        self.shared.state().namespaces.clone()
    }

    /// Tears the lab down now (also done on drop).
    pub fn teardown(&self) {
        let (processes, namespaces) = {
            let mut st = self.shared.state();
            (
                std::mem::take(&mut st.processes),
                std::mem::take(&mut st.namespaces),
            )
        };
        process::stop_all(&processes, Duration::from_secs(3));
        for netns in namespaces.iter().rev() {
            down::kill_netns_pids(netns);
            if let Err(e) = run(&["ip", "netns", "del", netns]) {
                tracing::warn!(netns, error = %e, "deleting namespace failed");
            }
        }
        if std::env::var_os("METALNET_LAB_KEEP").is_some() {
            eprintln!(
                "metalnet-lab: keeping {} (METALNET_LAB_KEEP set)",
                self.shared.dir.display()
            );
        } else if let Err(e) = fs::remove_dir_all(&self.shared.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.shared.dir.display(), error = %e, "removing lab dir failed");
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.shared.prefix)
            .field("test_name", &self.test_name)
            .finish()
    }
}

fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains(['/', ' ', ':']) {
        return Err(LabError::Invalid(format!(
            "interface name {name:?} must be 1..=15 characters without '/', ':' or spaces"
        )));
    }
    Ok(())
}

fn create_veth(netns_a: &str, name_a: &str, netns_b: &str, name_b: &str) -> Result<()> {
    // Both ends are created directly inside their namespaces: nothing ever appears in the root
    // namespace, so names there cannot clash either.
    run(&[
        "ip", "link", "add", name_a, "netns", netns_a, "type", "veth", "peer", "name", name_b,
        "netns", netns_b,
    ])?;
    Ok(())
}

fn sysctl(netns: &str, key: &str, value: &str) -> Result<()> {
    run(&[
        "ip",
        "netns",
        "exec",
        netns,
        "sysctl",
        "-q",
        "-w",
        &format!("{key}={value}"),
    ])?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))
}

/// A switch: a bridge `br0` in its own namespace.
#[derive(Debug, Clone)]
pub struct Switch {
    name: String,
    netns: String,
}

impl Switch {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn netns(&self) -> &str {
        &self.netns
    }
}

/// One end of a veth link (host side) and its peer end.
#[derive(Debug, Clone)]
pub struct Iface {
    pub netns: String,
    pub name: String,
    pub peer_netns: String,
    pub peer_name: String,
}

/// A host: a network namespace with its own directory for configs and logs.
#[derive(Clone)]
pub struct Host {
    name: String,
    netns: String,
    dir: PathBuf,
    lab: Arc<LabShared>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.name)
            .field("netns", &self.netns)
            .finish()
    }
}

impl Host {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace name (`<prefix>-<host>`), usable with `ip netns exec`.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Runs the future `f` makes to completion on a current-thread tokio runtime on a thread
    /// inside this host's namespace (sockets opened there belong to the host), bounded by
    /// [`BLOCK_ON_LIMIT`] scaled by the patience factor. A panic inside fails the caller with
    /// the same message.
    pub fn block_on<R, Fut>(&self, f: impl FnOnce() -> Fut + Send + 'static) -> R
    where
        R: Send + 'static,
        Fut: std::future::Future<Output = R>,
    {
        block_on_in(&self.netns, patient(BLOCK_ON_LIMIT), f)
    }

    /// This host's directory inside the lab directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn lab(&self) -> &Arc<LabShared> {
        &self.lab
    }

    /// Runs `ip -n <netns> <args>`.
    fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["ip", "-n", self.netns.as_str()];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Adds an address (`"192.0.2.11/24"` or `"2001:db8::11/64"`; IPv6 without DAD).
    pub fn add_addr(&self, ifname: &str, cidr: &str) -> Result<()> {
        let net: ipnet::IpNet = cidr
            .parse()
            .map_err(|e| LabError::Invalid(format!("address {cidr:?} on {ifname}: {e}")))?;
        match net {
            ipnet::IpNet::V4(_) => self.ip(&["addr", "add", cidr, "dev", ifname])?,
            ipnet::IpNet::V6(_) => self.ip(&["-6", "addr", "add", cidr, "dev", ifname, "nodad"])?,
        };
        Ok(())
    }

    /// Adds a route, e.g. `add_route("default", "192.0.2.1")` or `("203.0.113.0/24", "192.0.2.1")`.
    pub fn add_route(&self, dest: &str, via: &str) -> Result<()> {
        let family = match via.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => "-6",
            Ok(IpAddr::V4(_)) => "-4",
            Err(e) => return Err(LabError::Invalid(format!("gateway {via:?}: {e}"))),
        };
        self.ip(&[family, "route", "add", dest, "via", via])?;
        Ok(())
    }

    /// Adds a route with raw `ip route add` arguments (e.g. `["203.0.113.0/24", "dev", "eth0"]`).
    pub fn add_route_raw(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["route", "add"];
        full.extend_from_slice(args);
        self.ip(&full)?;
        Ok(())
    }

    /// Brings an interface up.
    pub fn set_up(&self, ifname: &str) -> Result<()> {
        self.ip(&["link", "set", ifname, "up"])?;
        Ok(())
    }

    /// Brings an interface down.
    pub fn set_down(&self, ifname: &str) -> Result<()> {
        self.ip(&["link", "set", ifname, "down"])?;
        Ok(())
    }

    /// Turns IPv4 and IPv6 forwarding on or off.
    pub fn set_forwarding(&self, on: bool) -> Result<()> {
        let v = if on { "1" } else { "0" };
        sysctl(&self.netns, "net.ipv4.ip_forward", v)?;
        sysctl(&self.netns, "net.ipv6.conf.all.forwarding", v)?;
        Ok(())
    }

    /// Sets a sysctl inside this host.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        sysctl(&self.netns, key, value)
    }

    /// The MAC address of an interface.
    pub fn mac(&self, ifname: &str) -> Result<String> {
        let out = self.ip(&["-j", "link", "show", "dev", ifname])?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| LabError::Parse {
                what: format!("`ip -j link show {ifname}` in {}", self.netns),
                reason: e.to_string(),
            })?;
        v.get(0)
            .and_then(|l| l.get("address"))
            .and_then(|a| a.as_str())
            .map(str::to_string)
            .ok_or_else(|| LabError::Parse {
                what: format!("link {ifname} in {}", self.netns),
                reason: "no address field".into(),
            })
    }

    /// Runs a command inside the host; fails (with its stderr) on a non-zero exit.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["ip", "netns", "exec", self.netns.as_str()];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Like [`Host::exec`], but the command is killed (SIGTERM, then SIGKILL 1 s later) when
    /// it runs longer than `timeout`.
    pub fn exec_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let secs = format!("{:.3}", timeout.as_secs_f64());
        let mut full = vec!["timeout", "-k", "1", secs.as_str()];
        full.extend_from_slice(args);
        self.exec(&full)
    }

    /// Runs a command inside the host and returns its stdout as a string.
    pub fn exec_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.exec(args)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a command inside the host and returns its output whatever the exit status.
    pub fn exec_status(&self, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(args)
            .output()
            .map_err(io_err(format!(
                "running {} in {}",
                display_cmd(args),
                self.netns
            )))
    }

    /// Starts a long-running process inside the host; its stdout/stderr go to
    /// `<host dir>/<name>.out|.err`. The environment is inherited.
    pub fn spawn(&self, name: &str, args: &[&str]) -> Result<Process> {
        self.spawn_env(name, args, &[])
    }

    /// Like [`Host::spawn`] with extra environment variables.
    pub fn spawn_env(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Process> {
        process::spawn(self, name, args, env)
    }

    /// One ping (`-c1 -W1`); true when a reply came back.
    pub fn ping(&self, addr: &str) -> bool {
        self.exec_status(&["ping", "-n", "-q", "-c1", "-W1", addr])
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// The MACs that answered `count` ARP requests for `ip` sent from `iface` (one per reply,
    /// lower case; `arping -r`). Empty when nobody answered.
    pub fn arping(&self, iface: &str, ip: &str, count: u32) -> Result<Vec<String>> {
        let count_s = count.to_string();
        let deadline = (count + 1).to_string();
        let out = self.exec_status(&[
            "arping", "-r", "-c", &count_s, "-w", &deadline, "-i", iface, ip,
        ])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_lowercase())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Pings until a reply comes back or `timeout` passes.
    pub fn wait_ping(&self, addr: &str, timeout: Duration) -> Result<()> {
        wait_for(&format!("{} to reach {addr}", self.name), timeout, || {
            self.ping(addr)
        })
    }
}
