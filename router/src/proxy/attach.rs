//! Where the programs run: the socket-LB programs on the cgroup v2 root (`--cgroup-root`),
//! the tc programs on TCX ingress and egress of every interface of the network namespace the
//! proxy was started in, except `lo`. Interfaces are watched (RTM_NEWLINK), so those created
//! later (CNI veths) get the programs within milliseconds; so are addresses, for
//! `mn_node_addr` (NodePort answers on the node's addresses, filtered by
//! `--nodeport-addresses`).
//!
//! Every attachment is a BPF link pinned under `<bpf-dir>/links/`, so it outlives the process:
//! SIGTERM leaves the data path running (as kube-proxy leaves its rules). A restarted proxy
//! finds the pinned links and swaps its freshly loaded programs into them with
//! `BPF_LINK_UPDATE`, which is atomic: no packet or connect between two programs goes
//! untranslated, and both programs share the pinned maps. A link whose interface went away
//! while the proxy was down fails the update (ENOLINK) and is replaced by a new one.
//!
//! [`cleanup`] (`--cleanup-config`) removes the pins (which detaches the links), the maps and
//! the bpffs mount if the loader made it. [`destroy_sockets`] closes sockets connected to
//! deleted backends in every network namespace this process can reach.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aya::programs::links::FdLink;
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType};
use futures::{FutureExt, StreamExt};
use ipnet::IpNet;
use metalnet::netlink::{Change, Netlink};
use metalnet::sys::bpf as sysbpf;
use tracing::{debug, info, warn};

use super::abi;
use super::dataplane::DataplaneError;
use super::loader::{MAPS_DIR, MOUNT_MARKER, Maps, Programs, remove_pins};

/// Where links are pinned, under the bpffs directory.
pub const LINKS_DIR: &str = "links";
/// The tc programs of `lb.c`.
pub const TC_INGRESS: &str = "mn_tc_ingress";
pub const TC_EGRESS: &str = "mn_tc_egress";

/// How the tc programs are put on the interfaces (`--tc-attach`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TcAttach {
    /// TCX links (Linux 6.6 and later), pinned, so a restart swaps the programs in place; a
    /// clsact filter on kernels without TCX.
    #[default]
    Auto,
    /// Always a clsact qdisc with a direct-action filter, the way before TCX (for kernels
    /// whose TCX misbehaves, and to test that way on a kernel that has TCX).
    Clsact,
}

/// The priority and handle of our clsact filters: fixed, so a restart replaces its own
/// filter in one netlink request (no moment without a program) instead of adding a second
/// one, and cleanup finds it. A priority of our own, away from the 1 most tools use.
pub const CLSACT_PRIORITY: u16 = 0x6d6e;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 1);

/// An attachment failed; names the program, the target and the reason.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("program {program} on {target}: {reason}")]
    Attach {
        program: String,
        target: String,
        reason: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("watching links: {0}")]
    Watch(String),
}

fn attach_err(program: &str, target: &str, reason: impl std::fmt::Display) -> AttachError {
    AttachError::Attach {
        program: program.to_string(),
        target: target.to_string(),
        reason: reason.to_string(),
    }
}

/// What to attach where.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub bpf_dir: PathBuf,
    /// The cgroup v2 directory for socket-LB; `None` attaches no socket program
    /// (`--socket-lb=off`) and removes those a previous run left.
    pub cgroup_root: Option<PathBuf>,
    /// `--nodeport-addresses`; empty: every address but loopback and IPv6 link-local.
    pub nodeport_addresses: Vec<IpNet>,
    /// Keep `mn_node_addr` equal to the node's (filtered) addresses. Off when the daemon sets
    /// them itself through [`super::dataplane::Dataplane::set_node_addrs`].
    pub node_addrs: bool,
    /// TCX (falling back to clsact) or clsact.
    pub tc_attach: TcAttach,
}

/// What the watcher has done so far (for logs, metrics and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Interfaces with both tc programs attached: index -> name.
    pub interfaces: BTreeMap<u32, String>,
    /// Socket-LB programs attached to the cgroup.
    pub cgroup_programs: Vec<String>,
    /// What `mn_node_addr` was last set to.
    pub node_addrs: BTreeSet<IpAddr>,
    /// Attachments that failed (an interface that vanished at once, say).
    pub errors: u64,
}

/// The running attachments and their watcher thread. Dropping it (or [`Attachments::stop`])
/// stops watching and leaves every attachment in place.
pub struct Attachments {
    status: Arc<Mutex<Status>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Attachments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachments")
            .field("status", &self.status())
            .finish()
    }
}

impl Attachments {
    /// Attaches everything in the calling thread's network namespace and starts watching
    /// it; returns once the interfaces present now carry the programs.
    pub fn start(programs: Programs, opts: AttachOptions) -> Result<Attachments, AttachError> {
        let netns = File::open("/proc/thread-self/ns/net").map_err(|e| AttachError::Io {
            what: "opening /proc/thread-self/ns/net".into(),
            source: e,
        })?;
        let status = Arc::new(Mutex::new(Status::default()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), AttachError>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let st = status.clone();
        let thread = std::thread::Builder::new()
            .name("mn-proxy-attach".into())
            .spawn(move || {
                // The watcher acts on the namespace the proxy was started from, whatever
                // thread started it (tests start it from a thread that entered a netns).
                if let Err(e) = metalnet::sys::netns::enter(&netns) {
                    let _ = ready_tx.send(Err(AttachError::Io {
                        what: "entering the network namespace".into(),
                        source: e,
                    }));
                    return;
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(AttachError::Io {
                            what: "starting the watcher's runtime".into(),
                            source: e,
                        }));
                        return;
                    }
                };
                rt.block_on(watch(programs, opts, st, ready_tx, stop_rx));
            })
            .map_err(|e| AttachError::Io {
                what: "spawning the attach thread".into(),
                source: e,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Attachments {
                status,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(AttachError::Watch("the attach thread ended early".into()))
            }
        }
    }

    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops watching; attachments stay.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Attachments {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The cookie of the calling thread's network namespace (`mn_config.host_netns_cookie`,
/// for `--socket-lb=host-only`).
pub fn host_netns_cookie() -> io::Result<u64> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))?;
    sysbpf::netns_cookie(s.as_fd())
}

struct Attacher {
    links_dir: PathBuf,
    programs: Programs,
    maps: Option<Maps>,
    opts: AttachOptions,
    status: Arc<Mutex<Status>>,
    addrs: BTreeMap<u32, BTreeSet<IpNet>>,
}

fn tc_pin(dir: &Path, index: u32, t: TcAttachType) -> PathBuf {
    let kind = match t {
        TcAttachType::Ingress => "ingress",
        _ => "egress",
    };
    dir.join(format!("tcx-{index}-{kind}"))
}

fn tc_pin_index(name: &str) -> Option<u32> {
    name.strip_prefix("tcx-")?.split('-').next()?.parse().ok()
}

/// Swaps `prog` into the link pinned at `pin`, if there is one that still works. A dead
/// link's pin is removed. Returns whether the swap happened.
fn update_pinned(pin: &Path, prog: std::os::fd::BorrowedFd<'_>) -> Result<bool, io::Error> {
    let link = match sysbpf::obj_get(pin) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match sysbpf::link_update(link.as_fd(), prog) {
        Ok(()) => Ok(true),
        Err(e) => {
            debug!(pin = %pin.display(), error = %e, "pinned link is dead; replacing it");
            std::fs::remove_file(pin)?;
            Ok(false)
        }
    }
}

/// How often the watcher lists links and addresses besides following notifications.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(30);

/// The next notification; once the stream ended, never (the periodic listing goes on).
async fn next_change<S>(changes: &mut Option<S>) -> Option<Change>
where
    S: futures::Stream<Item = Change> + Unpin,
{
    match changes {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Parallel TCX attachments (each mostly waits for an RCU grace period).
const TC_ATTACH_THREADS: usize = 16;

/// One tc program on one direction of one interface: swapped into the link pinned for it, or
/// attached with a new link that is then pinned.
fn attach_tcx(
    links_dir: &Path,
    prog: std::os::fd::BorrowedFd<'_>,
    index: u32,
    egress: bool,
) -> io::Result<()> {
    let t = if egress {
        TcAttachType::Egress
    } else {
        TcAttachType::Ingress
    };
    let pin = tc_pin(links_dir, index, t);
    if update_pinned(&pin, prog)? {
        return Ok(());
    }
    let link = sysbpf::tcx_link_create(prog, index, egress)?;
    sysbpf::obj_pin(link.as_fd(), &pin)
}

impl Attacher {
    /// Applies notifications in order; the interfaces to attach are attached at the end,
    /// together (an interface created and deleted within the batch is skipped).
    fn handle(&mut self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let mut pending: Vec<(u32, String)> = Vec::new();
        for c in changes {
            match c {
                Change::Link(l) => {
                    pending.retain(|(i, _)| *i != l.index);
                    pending.push((l.index, l.name));
                }
                Change::LinkGone(i) => {
                    pending.retain(|(p, _)| *p != i);
                    self.link_gone(i);
                }
                Change::Addr(i, n) => {
                    self.addrs.entry(i).or_default().insert(n);
                }
                Change::AddrGone(i, n) => {
                    if let Some(s) = self.addrs.get_mut(&i) {
                        s.remove(&n);
                    }
                }
            }
        }
        let _ = self.links_seen(pending, false);
        self.sync_node_addrs();
    }

    /// Lists links and addresses: attaches to links not seen yet, forgets gone ones, rebuilds
    /// the addresses. At start (`first`) a failed attachment fails the start.
    async fn resync(&mut self, nl: &Netlink, first: bool) -> Result<(), AttachError> {
        let links = nl
            .links()
            .await
            .map_err(|e| AttachError::Watch(e.to_string()))?;
        let present: BTreeSet<u32> = links.iter().map(|l| l.index).collect();
        self.prune(&present);
        let known: Vec<u32> = self
            .status
            .lock()
            .map(|s| s.interfaces.keys().copied().collect())
            .unwrap_or_default();
        for i in known {
            if !present.contains(&i) {
                self.link_gone(i);
            }
        }
        self.links_seen(
            links.iter().map(|l| (l.index, l.name.clone())).collect(),
            first,
        )?;
        let mut addrs: BTreeMap<u32, BTreeSet<IpNet>> = BTreeMap::new();
        for (index, net) in nl
            .addresses(0)
            .await
            .map_err(|e| AttachError::Watch(e.to_string()))?
        {
            addrs.entry(index).or_default().insert(net);
        }
        self.addrs = addrs;
        self.sync_node_addrs();
        Ok(())
    }

    fn set_status(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    fn attach_cgroup(&mut self) -> Result<(), AttachError> {
        // Pins are named after the cgroup (its id, the directory's inode): a pin of another
        // cgroup (the flag changed) or of none (--socket-lb=off) is removed, which detaches it.
        let (root, cgroup, id) = match self.opts.cgroup_root.clone() {
            Some(root) => {
                let target = root.display().to_string();
                let cgroup = File::open(&root).map_err(|e| attach_err("socket-LB", &target, e))?;
                let id = cgroup
                    .metadata()
                    .map_err(|e| attach_err("socket-LB", &target, e))?
                    .ino();
                (Some(root), Some(cgroup), Some(id))
            }
            None => (None, None, None),
        };
        let ours = id.map(|i| format!("cgroup-{i}-"));
        for e in std::fs::read_dir(&self.links_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("cgroup-") && !ours.as_ref().is_some_and(|o| n.starts_with(o)) {
                debug!(pin = %n, "removing the socket-LB link of another cgroup");
                let _ = std::fs::remove_file(e.path());
            }
        }
        let (Some(root), Some(cgroup), Some(id)) = (root, cgroup, id) else {
            return Ok(());
        };
        let target = root.display().to_string();
        let names: Vec<String> = self
            .programs
            .sock
            .programs()
            .map(|(n, _)| n.to_string())
            .collect();
        let mut done = Vec::new();
        for name in names {
            let prog: &mut CgroupSockAddr = self
                .programs
                .sock
                .program_mut(&name)
                .ok_or_else(|| attach_err(&name, &target, "not in sock.o"))?
                .try_into()
                .map_err(|e| attach_err(&name, &target, e))?;
            let pin = self.links_dir.join(format!("cgroup-{id}-{name}"));
            let fd = prog.fd().map_err(|e| attach_err(&name, &target, e))?;
            if update_pinned(&pin, fd.as_fd()).map_err(|e| attach_err(&name, &target, e))? {
                debug!(program = %name, "swapped into the pinned cgroup link");
            } else {
                let id = prog
                    .attach(&cgroup, CgroupAttachMode::Single)
                    .map_err(|e| attach_err(&name, &target, e))?;
                let link = prog
                    .take_link(id)
                    .map_err(|e| attach_err(&name, &target, e))?;
                let fd_link: FdLink = link
                    .try_into()
                    .map_err(|e| attach_err(&name, &target, format!("{e:?}")))?;
                fd_link
                    .pin(&pin)
                    .map_err(|e| attach_err(&name, &target, format!("pinning: {e}")))?;
            }
            done.push(name);
        }
        info!(cgroup = %target, programs = ?done, "socket-LB attached");
        self.set_status(|s| s.cgroup_programs = done);
        Ok(())
    }

    /// The old way, for kernels without TCX (before 6.6): a clsact qdisc and a netlink
    /// filter, which outlives the process by itself (it cannot be pinned). A filter of ours
    /// already there (a restart) gets the new program in place.
    fn attach_clsact(&mut self, name: &str, egress: bool) -> Result<(), AttachError> {
        let (prog_name, t) = if egress {
            (TC_EGRESS, TcAttachType::Egress)
        } else {
            (TC_INGRESS, TcAttachType::Ingress)
        };
        let prog: &mut SchedClassifier = self
            .programs
            .lb
            .program_mut(prog_name)
            .ok_or_else(|| attach_err(prog_name, name, "not in lb.o"))?
            .try_into()
            .map_err(|e| attach_err(prog_name, name, e))?;
        // The interface may have the qdisc already (ours or another tool's).
        let _ = aya::programs::tc::qdisc_add_clsact(name);
        let replaced = SchedClassifierLink::attached(name, t, CLSACT_PRIORITY, CLSACT_HANDLE, None)
            .map_err(|e| e.to_string())
            .and_then(|link| prog.attach_to_link(link).map_err(|e| e.to_string()));
        let id = match replaced {
            Ok(id) => id,
            Err(replace) => prog
                .attach_with_options(
                    name,
                    t,
                    TcAttachOptions::Netlink(NlOptions {
                        priority: CLSACT_PRIORITY,
                        handle: CLSACT_HANDLE,
                        classid: None,
                    }),
                )
                .map_err(|e| {
                    attach_err(
                        prog_name,
                        name,
                        format!("clsact: {e} (replacing: {replace})"),
                    )
                })?,
        };
        let link = prog
            .take_link(id)
            .map_err(|e| attach_err(prog_name, name, e))?;
        // Dropping the link would detach it: the filter must outlive this process.
        std::mem::forget(link);
        Ok(())
    }

    fn tc_fd(&self, prog_name: &str) -> Result<std::os::fd::BorrowedFd<'_>, AttachError> {
        match self.programs.lb.program(prog_name) {
            Some(aya::programs::Program::SchedClassifier(p)) => p
                .fd()
                .map(|fd| fd.as_fd())
                .map_err(|e| attach_err(prog_name, "lb.o", e)),
            Some(_) => Err(attach_err(prog_name, "lb.o", "not a tc program")),
            None => Err(attach_err(prog_name, "lb.o", "not in lb.o")),
        }
    }

    /// Attaches both tc programs to these interfaces, in parallel: each TCX attachment waits
    /// for an RCU grace period (~10 ms), and concurrent waits share one, so a burst of new
    /// interfaces costs a few grace periods instead of two per interface. Returns the result
    /// per interface.
    fn attach_tc_many(&mut self, links: &[(u32, String)]) -> Vec<Result<(), AttachError>> {
        if self.opts.tc_attach == TcAttach::Clsact {
            return links
                .iter()
                .map(|(index, name)| {
                    // TCX links a run in the other mode pinned would run the programs twice.
                    for t in [TcAttachType::Ingress, TcAttachType::Egress] {
                        let _ = std::fs::remove_file(tc_pin(&self.links_dir, *index, t));
                    }
                    self.attach_clsact(name, false)?;
                    self.attach_clsact(name, true)
                })
                .collect();
        }
        let fds = match (self.tc_fd(TC_INGRESS), self.tc_fd(TC_EGRESS)) {
            (Ok(i), Ok(e)) => [i, e],
            (Err(e), _) | (_, Err(e)) => {
                let msg = e.to_string();
                return links
                    .iter()
                    .map(|(_, n)| Err(attach_err("tc", n, &msg)))
                    .collect();
            }
        };
        let items: Vec<(usize, bool)> = (0..links.len())
            .flat_map(|i| [(i, false), (i, true)])
            .collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Mutex<Vec<(usize, bool, io::Result<()>)>> = Mutex::new(Vec::new());
        let dir = &self.links_dir;
        std::thread::scope(|scope| {
            for _ in 0..items.len().min(TC_ATTACH_THREADS) {
                scope.spawn(|| {
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(i, egress)) = items.get(k) else {
                            return;
                        };
                        let r = attach_tcx(dir, fds[usize::from(egress)], links[i].0, egress);
                        if let Ok(mut v) = results.lock() {
                            v.push((i, egress, r));
                        }
                    }
                });
            }
        });
        let mut out: Vec<Result<(), AttachError>> = links.iter().map(|_| Ok(())).collect();
        for (i, egress, r) in results.into_inner().unwrap_or_default() {
            let name = links[i].1.clone();
            let prog = if egress { TC_EGRESS } else { TC_INGRESS };
            let r = match r {
                Ok(()) => Ok(()),
                // No TCX on this kernel (unknown attach type).
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self
                    .attach_clsact(&name, egress)
                    .map_err(|c| attach_err(prog, &name, format!("TCX: {e}; {c}"))),
                Err(e) => Err(attach_err(prog, &name, e)),
            };
            if let Err(e) = r
                && out[i].is_ok()
            {
                out[i] = Err(e);
            }
        }
        out
    }

    /// Attaches to new or renamed interfaces and records them; failures are logged and
    /// counted (an interface may vanish at once), or returned when `strict`.
    fn links_seen(&mut self, links: Vec<(u32, String)>, strict: bool) -> Result<(), AttachError> {
        let new: Vec<(u32, String)> = {
            let st = self
                .status
                .lock()
                .map(|s| s.interfaces.clone())
                .unwrap_or_default();
            links
                .into_iter()
                .filter(|(i, n)| n != "lo" && !n.is_empty() && st.get(i) != Some(n))
                .collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let results = self.attach_tc_many(&new);
        let took = t.elapsed();
        if strict && self.opts.tc_attach == TcAttach::Auto {
            // Filters a run with --tc-attach=clsact left would run the programs twice.
            for (_, name) in &new {
                if let Ok(true) = detach_clsact(name) {
                    info!(interface = %name, "removed the clsact filters of an earlier run");
                }
            }
        }
        for ((index, name), r) in new.into_iter().zip(results) {
            match r {
                Ok(()) => {
                    info!(interface = %name, index, ?took, "tc programs attached");
                    self.set_status(|s| {
                        s.interfaces.insert(index, name);
                    });
                }
                Err(e) if strict => return Err(e),
                Err(e) => {
                    warn!(interface = %name, index, error = %e, "attaching the tc programs failed");
                    self.set_status(|s| s.errors += 1);
                }
            }
        }
        Ok(())
    }

    fn link_gone(&mut self, index: u32) {
        for t in [TcAttachType::Ingress, TcAttachType::Egress] {
            let _ = std::fs::remove_file(tc_pin(&self.links_dir, index, t));
        }
        self.addrs.remove(&index);
        let name = self
            .status
            .lock()
            .ok()
            .and_then(|mut s| s.interfaces.remove(&index));
        if let Some(name) = name {
            debug!(interface = %name, index, "interface gone");
        }
    }

    /// Pins of interfaces that no longer exist (removed while the proxy was down).
    fn prune(&self, present: &BTreeSet<u32>) {
        for e in std::fs::read_dir(&self.links_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(i) = tc_pin_index(&name)
                && !present.contains(&i)
            {
                debug!(pin = %name, "removing the pin of a vanished interface");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn node_addrs(&self) -> BTreeSet<IpAddr> {
        self.addrs
            .values()
            .flatten()
            .map(|n| n.addr())
            .filter(|a| node_addr_eligible(*a, &self.opts.nodeport_addresses))
            .collect()
    }

    fn sync_node_addrs(&mut self) {
        if !self.opts.node_addrs {
            return;
        }
        let want = self.node_addrs();
        if self.status.lock().is_ok_and(|s| s.node_addrs == want) {
            return;
        }
        let Some(maps) = self.maps.as_mut() else {
            return;
        };
        match maps.set_node_addrs(&want) {
            Ok(()) => {
                info!(addrs = ?want, "node addresses for NodePort");
                self.set_status(|s| s.node_addrs = want);
            }
            Err(e) => {
                warn!(error = %e, "writing the node addresses failed");
                self.set_status(|s| s.errors += 1);
            }
        }
    }
}

/// NodePort answers on an address unless it is loopback or IPv6 link-local (as kube-proxy's
/// nftables mode), and, when `--nodeport-addresses` is set, only inside those ranges.
pub fn node_addr_eligible(a: IpAddr, filter: &[IpNet]) -> bool {
    if a.is_loopback() || a.is_unspecified() {
        return false;
    }
    if let IpAddr::V6(v6) = a
        && (v6.segments()[0] & 0xffc0) == 0xfe80
    {
        return false;
    }
    filter.is_empty() || filter.iter().any(|n| n.contains(&a))
}

async fn watch(
    programs: Programs,
    opts: AttachOptions,
    status: Arc<Mutex<Status>>,
    ready: std::sync::mpsc::Sender<Result<(), AttachError>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let links_dir = opts.bpf_dir.join(LINKS_DIR);
    let mut a = Attacher {
        links_dir: links_dir.clone(),
        programs,
        maps: None,
        opts,
        status,
        addrs: BTreeMap::new(),
    };
    let setup = async {
        std::fs::create_dir_all(&links_dir).map_err(|e| AttachError::Io {
            what: format!("creating {}", links_dir.display()),
            source: e,
        })?;
        if a.opts.node_addrs {
            a.maps =
                Some(Maps::open(&a.opts.bpf_dir).map_err(|e| AttachError::Watch(e.to_string()))?);
        }
        a.attach_cgroup()?;
        let (nl, changes) = Netlink::monitor().map_err(|e| AttachError::Watch(e.to_string()))?;
        a.resync(&nl, true).await?;
        Ok::<_, AttachError>((nl, changes))
    };
    let (nl, changes) = match setup.await {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    // Netlink drops notifications when the socket's buffer overflows (a burst of CNI
    // veths): a periodic listing catches what was missed.
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    let mut changes = Some(changes);
    loop {
        let mut got = Vec::new();
        let mut ended = false;
        tokio::select! {
            _ = &mut stop => break,
            _ = resync.tick() => {
                if let Err(e) = a.resync(&nl, false).await {
                    warn!(error = %e, "listing links and addresses failed");
                }
            }
            ch = next_change(&mut changes) => match ch {
                None => {
                    warn!("the link monitor ended; relying on the periodic listing");
                    ended = true;
                }
                Some(c) => got.push(c),
            }
        }
        if ended {
            changes = None;
        }
        // Whatever else is already queued is handled together: new interfaces are attached
        // in parallel.
        if let Some(c) = changes.as_mut() {
            while let Some(Some(ch)) = c.next().now_or_never() {
                got.push(ch);
            }
        }
        a.handle(got);
    }
    // Dropping the programs closes their descriptors; the pinned links keep them running.
}

/// Removes our clsact filters (both directions) from an interface; whether there were any.
pub fn detach_clsact(name: &str) -> Result<bool, TcError> {
    let mut removed = false;
    for (t, prog) in [
        (TcAttachType::Ingress, TC_INGRESS),
        (TcAttachType::Egress, TC_EGRESS),
    ] {
        match aya::programs::tc::qdisc_detach_program(name, t, prog) {
            Ok(()) => removed = true,
            Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
            // No clsact qdisc on the interface: no filter either.
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Removes what the proxy left in the kernel: the pinned links (which detaches the programs
/// from the cgroup and the interfaces), the pinned maps, the directory, and the bpffs mount
/// if the loader made it. `cgroup_root` is only logged: socket-LB links are pinned like the
/// others, and go with their pins.
pub fn cleanup(bpf_dir: &Path, cgroup_root: Option<&Path>) -> Result<(), AttachError> {
    let io_err = |what: String| move |e: io::Error| AttachError::Io { what, source: e };
    if !bpf_dir.exists() {
        return Ok(());
    }
    let on_bpffs =
        sysbpf::is_bpffs(bpf_dir).map_err(io_err(format!("statfs {}", bpf_dir.display())))?;
    if !on_bpffs {
        debug!(dir = %bpf_dir.display(), "not a bpffs: nothing pinned");
        return Ok(());
    }
    let mut removed = 0usize;
    for sub in [LINKS_DIR, MAPS_DIR] {
        let d = bpf_dir.join(sub);
        removed +=
            remove_pins(&d).map_err(io_err(format!("removing the pins in {}", d.display())))?;
        match std::fs::remove_dir(&d) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err(format!("removing {}", d.display()))(e));
            }
            _ => {}
        }
    }
    info!(dir = %bpf_dir.display(), pins = removed, cgroup = ?cgroup_root, "removed the proxy's pins");
    // Filters of --tc-attach=clsact (or of a kernel without TCX) are not pinned.
    for (_, name) in metalnet::sys::packet::interface_names().unwrap_or_default() {
        match detach_clsact(&name) {
            Ok(true) => info!(interface = %name, "removed the proxy's clsact filters"),
            Ok(false) => {}
            Err(e) => warn!(interface = %name, error = %e, "removing the clsact filters failed"),
        }
    }
    // The mount: ours when the marker is in the directory or the bpffs root above it.
    let mut root = bpf_dir.to_path_buf();
    while let Some(p) = root.parent() {
        if p.as_os_str().is_empty() || !sysbpf::is_bpffs(p).unwrap_or(false) {
            break;
        }
        root = p.to_path_buf();
    }
    if root != bpf_dir {
        let _ = std::fs::remove_dir(bpf_dir);
    }
    let marker = root.join(MOUNT_MARKER);
    if marker.exists() {
        let others = std::fs::read_dir(&root)
            .map(|rd| {
                // Dotted names (maps.debug, progs.debug) are the kernel's own preloaded
                // iterators; users cannot create such names on a bpffs.
                rd.flatten()
                    .filter(|e| {
                        let n = e.file_name();
                        n != MOUNT_MARKER && !n.to_string_lossy().contains('.')
                    })
                    .count()
            })
            .unwrap_or(0);
        if others == 0 {
            std::fs::remove_dir(&marker)
                .map_err(io_err(format!("removing {}", marker.display())))?;
            sysbpf::unmount(&root).map_err(io_err(format!("unmounting {}", root.display())))?;
            info!(path = %root.display(), "unmounted our bpffs");
        } else {
            warn!(path = %root.display(), "our bpffs holds other entries: left mounted");
        }
    }
    Ok(())
}

/// Network namespaces this process can reach: its own, every process', and the named ones
/// (`/run/netns`), each once (by inode).
fn namespaces() -> Vec<PathBuf> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut consider = |p: PathBuf| {
        if let Ok(m) = std::fs::metadata(&p)
            && seen.insert((m.dev(), m.ino()))
        {
            out.push(p);
        }
    };
    consider(PathBuf::from("/proc/thread-self/ns/net"));
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        consider(e.path());
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if e.file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            consider(e.path().join("ns/net"));
        }
    }
    out
}

/// Destroys TCP and UDP sockets connected to these backends in every network namespace this
/// process can reach (netlink SOCK_DESTROY): connected UDP clients (DNS) would otherwise keep
/// sending to a backend that is gone. Returns how many sockets were destroyed.
pub fn destroy_sockets(backends: &[abi::Backend]) -> Result<usize, DataplaneError> {
    if backends.is_empty() {
        return Ok(0);
    }
    let targets: Vec<(IpAddr, u16, u8)> = backends
        .iter()
        .map(|b| (b.addr, b.port, b.proto.number()))
        .collect();
    let mut total = 0;
    let mut failures = Vec::new();
    for ns in namespaces() {
        let targets = targets.clone();
        let path = ns.clone();
        let res = std::thread::Builder::new()
            .name("mn-sock-destroy".into())
            .spawn(move || -> io::Result<usize> {
                let f = File::open(&path)?;
                metalnet::sys::netns::enter(&f)?;
                metalnet::sys::sockdiag::destroy_connected_to(&targets)
            })
            .map_err(|e| e.to_string())
            .and_then(|h| h.join().map_err(|_| "the thread panicked".to_string()))
            .and_then(|r| r.map_err(|e| e.to_string()));
        match res {
            Ok(n) => total += n,
            // A process that exited meanwhile is no failure.
            Err(e) if e.contains("No such file") => {}
            Err(e) => failures.push(format!("{}: {e}", ns.display())),
        }
    }
    if total > 0 {
        info!(
            sockets = total,
            backends = backends.len(),
            "destroyed sockets of deleted backends"
        );
    }
    if failures.is_empty() || total > 0 {
        for f in &failures {
            warn!(namespace = %f, "destroying sockets failed");
        }
        Ok(total)
    } else {
        Err(DataplaneError::Other {
            what: "destroying sockets of deleted backends".into(),
            reason: failures.join("; "),
        })
    }
}

/// Opening the data path failed at one of its steps.
#[derive(Debug, thiserror::Error)]
pub enum DataPathError {
    #[error(transparent)]
    Load(#[from] super::loader::LoaderError),
    #[error(transparent)]
    Config(#[from] DataplaneError),
    #[error(transparent)]
    Nft(#[from] super::nft::NftError),
    #[error(transparent)]
    Attach(#[from] AttachError),
}

/// Everything `--run-service-proxy` needs from the kernel, in the order that never exposes a
/// half-configured data path: load (maps pinned or reused), `mn_config` written, then the
/// programs attached (or swapped into the links a previous run pinned). No netfilter rule:
/// the programs masquerade by themselves. Call it from a thread in the node's network namespace. The daemon then
/// applies its diffs to the returned [`super::loader::Loader`] (on a restart the maps
/// already hold the last run's state: read them first).
pub fn open_data_path(
    sizes: &super::loader::Sizes,
    config: &abi::Config,
    opts: AttachOptions,
) -> Result<(super::loader::Loader, Attachments), DataPathError> {
    use super::dataplane::Dataplane;
    let mut loader = super::loader::Loader::open(&opts.bpf_dir, sizes)?;
    loader.set_config(config)?;
    let programs = loader
        .take_programs()
        .ok_or_else(|| AttachError::Watch("the programs were taken already".into()))?;
    let attachments = Attachments::start(programs, opts)?;
    Ok((loader, attachments))
}

/// `--cleanup-config`: the pins, links, maps and mount ([`cleanup`]) and the nftables table
/// an older version installed.
pub fn cleanup_all(bpf_dir: &Path, cgroup_root: Option<&Path>) -> Result<(), DataPathError> {
    cleanup(bpf_dir, cgroup_root)?;
    super::nft::remove()?;
    Ok(())
}
