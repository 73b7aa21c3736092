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
use aya::programs::tc::TcAttachOptions;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType};
use futures::StreamExt;
use ipnet::IpNet;
use metalnet::netlink::{Change, Netlink};
use metalnet::sys::bpf as sysbpf;
use tracing::{debug, info, warn};

use super::abi;
use super::dataplane::DataplaneError;
use super::loader::{MAPS_DIR, MOUNT_MARKER, Maps, Programs};

/// Where links are pinned, under the bpffs directory.
pub const LINKS_DIR: &str = "links";
/// The tc programs of `lb.c`.
pub const TC_INGRESS: &str = "mn_tc_ingress";
pub const TC_EGRESS: &str = "mn_tc_egress";

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

impl Attacher {
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
        for l in &links {
            if first && l.name != "lo" {
                self.attach_tc(l.index, &l.name)?;
                self.set_status(|s| {
                    s.interfaces.insert(l.index, l.name.clone());
                });
            } else {
                self.link_seen(l.index, &l.name);
            }
        }
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
        let Some(root) = self.opts.cgroup_root.clone() else {
            // --socket-lb=off: a previous run's socket programs go.
            for e in std::fs::read_dir(&self.links_dir)
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.file_name().to_string_lossy().starts_with("cgroup-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            return Ok(());
        };
        let target = root.display().to_string();
        let cgroup = File::open(&root).map_err(|e| attach_err("socket-LB", &target, e))?;
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
            let pin = self.links_dir.join(format!("cgroup-{name}"));
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

    fn attach_tc(&mut self, index: u32, name: &str) -> Result<(), AttachError> {
        for (prog_name, t) in [
            (TC_INGRESS, TcAttachType::Ingress),
            (TC_EGRESS, TcAttachType::Egress),
        ] {
            let prog: &mut SchedClassifier = self
                .programs
                .lb
                .program_mut(prog_name)
                .ok_or_else(|| attach_err(prog_name, name, "not in lb.o"))?
                .try_into()
                .map_err(|e| attach_err(prog_name, name, e))?;
            let pin = tc_pin(&self.links_dir, index, t);
            let fd = prog.fd().map_err(|e| attach_err(prog_name, name, e))?;
            if update_pinned(&pin, fd.as_fd()).map_err(|e| attach_err(prog_name, name, e))? {
                continue;
            }
            let id = match prog.attach_with_options(
                name,
                t,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            ) {
                Ok(id) => id,
                Err(tcx) => {
                    // Kernels before 6.6 have no TCX: a clsact qdisc and a netlink filter,
                    // which outlives the process by itself (it cannot be pinned).
                    let _ = aya::programs::tc::qdisc_add_clsact(name);
                    let id = prog.attach(name, t).map_err(|e| {
                        attach_err(prog_name, name, format!("TCX: {tcx}; clsact: {e}"))
                    })?;
                    let link = prog
                        .take_link(id)
                        .map_err(|e| attach_err(prog_name, name, e))?;
                    std::mem::forget(link);
                    continue;
                }
            };
            let link = prog
                .take_link(id)
                .map_err(|e| attach_err(prog_name, name, e))?;
            let fd_link: FdLink = link
                .try_into()
                .map_err(|e| attach_err(prog_name, name, format!("{e:?}")))?;
            fd_link
                .pin(&pin)
                .map_err(|e| attach_err(prog_name, name, format!("pinning: {e}")))?;
        }
        Ok(())
    }

    fn link_seen(&mut self, index: u32, name: &str) {
        if name == "lo" || name.is_empty() {
            return;
        }
        let known = self
            .status
            .lock()
            .map(|s| s.interfaces.get(&index).is_some_and(|n| n == name))
            .unwrap_or(false);
        if known {
            return;
        }
        let t = Instant::now();
        match self.attach_tc(index, name) {
            Ok(()) => {
                info!(interface = name, index, took = ?t.elapsed(), "tc programs attached");
                self.set_status(|s| {
                    s.interfaces.insert(index, name.to_string());
                });
            }
            Err(e) => {
                warn!(interface = name, index, error = %e, "attaching the tc programs failed");
                self.set_status(|s| s.errors += 1);
            }
        }
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
                Some(Change::Link(l)) => a.link_seen(l.index, &l.name),
                Some(Change::LinkGone(i)) => {
                    a.link_gone(i);
                    a.sync_node_addrs();
                }
                Some(Change::Addr(i, n)) => {
                    a.addrs.entry(i).or_default().insert(n);
                    a.sync_node_addrs();
                }
                Some(Change::AddrGone(i, n)) => {
                    if let Some(s) = a.addrs.get_mut(&i) {
                        s.remove(&n);
                    }
                    a.sync_node_addrs();
                }
            }
        }
        if ended {
            changes = None;
        }
    }
    // Dropping the programs closes their descriptors; the pinned links keep them running.
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
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            std::fs::remove_file(e.path())
                .map_err(io_err(format!("removing {}", e.path().display())))?;
            removed += 1;
        }
        match std::fs::remove_dir(&d) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err(format!("removing {}", d.display()))(e));
            }
            _ => {}
        }
    }
    info!(dir = %bpf_dir.display(), pins = removed, cgroup = ?cgroup_root, "removed the proxy's pins");
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
