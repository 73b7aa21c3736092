//! Announcers: the side-effecting part that makes won addresses reachable.
//!
//! [`Layer2`] answers ARP and Neighbor Solicitations for the addresses this node announces,
//! on the eligible interfaces (up, Ethernet, not loopback, not NOARP, not enslaved to a
//! bridge or bond), through one pair of AF_PACKET sockets per interface. It never adds the
//! address to an interface. A BGP announcer would sit beside it, fed by the same election.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use metalnet::wire::arp::{self, ArpFrame, Operation};
use metalnet::wire::ndp::{self, Icmpv6Type, NdiscRepr, NdpFrame};
use metalnet::wire::{EtherType, L2Error, Mac};

use crate::election::Interfaces;
use crate::metrics::{InterfaceLabel, Metrics, ip_label};

/// Gratuitous announcements on takeover: at once, then every 1.1 s while within 5 s (as
/// MetalLB), so hosts that missed one still move.
pub const GRATUITOUS_INTERVAL: Duration = Duration::from_millis(1100);
pub const GRATUITOUS_WINDOW: Duration = Duration::from_secs(5);
/// How often interfaces are re-listed (new, gone, changed MAC).
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(10);

const PACKET_OUTGOING: u8 = 4;

/// What to do with a received frame (pure decision, see [`decide_arp`] / [`decide_ndp`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not for us (another address, a reply, our own frame, ...).
    Ignore,
    /// Malformed: dropped and counted.
    Malformed(L2Error),
    /// A request for an announced address: send `frame`.
    Answer { ip: IpAddr, frame: Vec<u8> },
    /// Another station announces an address we announce (a gratuitous ARP or unsolicited
    /// NA from `mac`): the next node taking over while we leave, else a conflict.
    Claimed { ip: IpAddr, mac: Mac },
}

/// Which addresses are announced, and where.
pub type Table = HashMap<IpAddr, Interfaces>;

/// Decides about an ARP frame received on `link`.
pub fn decide_arp(frame: &[u8], link: &str, mac: Mac, table: &Table) -> Decision {
    let ArpFrame { ethernet: eth, arp: pkt } = match ArpFrame::parse(frame) {
        Ok(p) => p,
        Err(e) => return Decision::Malformed(e),
    };
    if pkt.source_hardware_addr != mac && eth.src_addr != mac {
        let sender = IpAddr::V4(pkt.source_protocol_addr);
        if table.get(&sender).is_some_and(|ifs| ifs.allows(link)) {
            return Decision::Claimed {
                ip: sender,
                mac: pkt.source_hardware_addr,
            };
        }
    }
    // Only requests to broadcast or to us (unicast refreshes); never our own frames.
    if pkt.operation != Operation::Request
        || (!eth.dst_addr.is_broadcast() && eth.dst_addr != mac)
        || eth.src_addr == mac
        || pkt.source_hardware_addr == mac
    {
        return Decision::Ignore;
    }
    let ip = IpAddr::V4(pkt.target_protocol_addr);
    match table.get(&ip) {
        Some(ifs) if ifs.allows(link) => Decision::Answer {
            ip,
            frame: arp::reply_to(&pkt, mac).emit(),
        },
        _ => Decision::Ignore,
    }
}

/// Decides about an IPv6 frame (expected to be a Neighbor Solicitation or Advertisement)
/// received on `link`.
pub fn decide_ndp(frame: &[u8], link: &str, mac: Mac, table: &Table) -> Decision {
    let nd = match NdpFrame::parse(frame) {
        Ok(Some(nd)) => nd,
        Ok(None) => return Decision::Ignore,
        Err(e) => return Decision::Malformed(e),
    };
    let eth_src = nd.ethernet.src_addr;
    let ip = IpAddr::V6(nd.ndisc.target_addr());
    if let NdiscRepr::NeighborAdvert { lladdr, .. } = nd.ndisc {
        let by = lladdr.unwrap_or(eth_src);
        if by != mac && eth_src != mac && table.get(&ip).is_some_and(|i| i.allows(link)) {
            return Decision::Claimed { ip, mac: by };
        }
        return Decision::Ignore;
    }
    if eth_src == mac {
        return Decision::Ignore;
    }
    match table.get(&ip) {
        Some(ifs) if ifs.allows(link) => Decision::Answer {
            ip,
            frame: ndp::answer(&nd, mac).emit(),
        },
        _ => Decision::Ignore,
    }
}

/// An interface as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
}

/// Whether layer 2 mode can answer on an existing interface, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    Eligible,
    Down,
    Loopback,
    NoArp,
    NotEthernet,
    /// A bridge or bond port: its frames belong to the master.
    Enslaved,
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkState::Eligible => "eligible",
            LinkState::Down => "down",
            LinkState::Loopback => "loopback",
            LinkState::NoArp => "NOARP",
            LinkState::NotEthernet => "not Ethernet",
            LinkState::Enslaved => "enslaved to a bridge or bond",
        })
    }
}

/// Every interface of this node by name, with its state.
pub type NodeLinks = BTreeMap<String, LinkState>;

/// Why an address this node won cannot be announced here: no interface its L2Advertisements
/// name is eligible. Holds each named interface with its state (`None`: does not exist).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceFailure {
    pub interfaces: BTreeMap<String, Option<LinkState>>,
}

impl fmt::Display for AnnounceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .interfaces
            .iter()
            .map(|(name, state)| match state {
                None => format!("{name} (does not exist)"),
                Some(s) => format!("{name} ({s})"),
            })
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// Decides whether an address restricted to `wanted` can be announced on a node with `links`:
/// yes when it is not restricted or one named interface is eligible (as MetalLB, which
/// announces on the named ones that exist).
pub fn check_interfaces(wanted: &Interfaces, links: &NodeLinks) -> Result<(), AnnounceFailure> {
    let Interfaces::Only(names) = wanted else {
        return Ok(());
    };
    if names
        .iter()
        .any(|n| links.get(n) == Some(&LinkState::Eligible))
    {
        return Ok(());
    }
    Err(AnnounceFailure {
        interfaces: names
            .iter()
            .map(|n| (n.clone(), links.get(n).copied()))
            .collect(),
    })
}

/// The addresses of `announced` that cannot be announced on a node with `links`.
pub fn announce_failures(
    announced: &BTreeMap<IpAddr, Interfaces>,
    links: &NodeLinks,
) -> BTreeMap<IpAddr, AnnounceFailure> {
    announced
        .iter()
        .filter_map(|(ip, ifs)| check_interfaces(ifs, links).err().map(|f| (*ip, f)))
        .collect()
}

/// One interface we listen on.
struct Link {
    info: LinkInfo,
    arp: AsyncFd<OwnedFd>,
    nd: AsyncFd<OwnedFd>,
    /// Solicited-node groups joined on `nd`.
    groups: Mutex<BTreeSet<Ipv6Addr>>,
}

struct LinkEntry {
    link: Arc<Link>,
    task: JoinHandle<()>,
}

struct Inner {
    table: RwLock<Table>,
    /// Set when this speaker leaves: an address another node claims is dropped at once.
    leaving: std::sync::atomic::AtomicBool,
    links: Mutex<BTreeMap<String, LinkEntry>>,
    /// Every interface of the node with its state, as of the last rescan.
    states: Mutex<NodeLinks>,
    gratuitous: Mutex<HashMap<IpAddr, JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

/// The layer 2 announcer. Cheap to clone.
#[derive(Clone)]
pub struct Layer2 {
    inner: Arc<Inner>,
}

impl Layer2 {
    pub fn new(metrics: Arc<Metrics>) -> Layer2 {
        Layer2 {
            inner: Arc::new(Inner {
                table: RwLock::new(Table::new()),
                leaving: std::sync::atomic::AtomicBool::new(false),
                links: Mutex::new(BTreeMap::new()),
                states: Mutex::new(NodeLinks::new()),
                gratuitous: Mutex::new(HashMap::new()),
                metrics,
            }),
        }
    }

    /// The interfaces currently listened on.
    pub fn interfaces(&self) -> Vec<String> {
        self.inner.links.lock().unwrap().keys().cloned().collect()
    }

    /// Every interface of the node with its state, as of the last rescan.
    pub fn node_links(&self) -> NodeLinks {
        self.inner.states.lock().unwrap().clone()
    }

    /// The addresses currently announced.
    pub fn announced(&self) -> BTreeMap<IpAddr, Interfaces> {
        self.inner
            .table
            .read()
            .unwrap()
            .iter()
            .map(|(ip, i)| (*ip, i.clone()))
            .collect()
    }

    /// Re-lists the interfaces: listens on new eligible ones, drops gone or changed ones.
    /// Returns whether the interfaces' states ([`Layer2::node_links`]) changed. Must run
    /// inside a tokio runtime.
    pub fn rescan(&self) -> io::Result<bool> {
        let LinkScan {
            eligible: found,
            states,
        } = scan_links()?;
        let states_changed = {
            let mut old = self.inner.states.lock().unwrap();
            let changed = *old != states;
            *old = states;
            changed
        };
        let mut added = Vec::new();
        {
            let mut links = self.inner.links.lock().unwrap();
            links.retain(|name, entry| {
                let keep = found.iter().any(|l| &l.name == name && *l == entry.link.info);
                if !keep {
                    tracing::info!(interface = %name, "interface gone or changed, no longer answering on it");
                    entry.task.abort();
                }
                keep
            });
            for info in found {
                if links.contains_key(&info.name) {
                    continue;
                }
                match open_link(&info) {
                    Ok(link) => {
                        let link = Arc::new(link);
                        let task = tokio::spawn(receive_loop(self.inner.clone(), link.clone()));
                        tracing::info!(interface = %info.name, index = info.index, mac = %info.mac, "answering ARP/NDP on interface");
                        links.insert(
                            info.name.clone(),
                            LinkEntry {
                                link: link.clone(),
                                task,
                            },
                        );
                        added.push(link);
                    }
                    Err(e) => {
                        tracing::warn!(interface = %info.name, error = %e, "cannot listen on interface")
                    }
                }
            }
        }
        let table = self.inner.table.read().unwrap().clone();
        for link in added {
            sync_groups(&link, &table);
            // Announce what we already hold on a new interface once.
            for (ip, ifs) in &table {
                if ifs.allows(&link.info.name) {
                    send_gratuitous_on(&self.inner.metrics, &link, *ip);
                }
            }
        }
        Ok(states_changed)
    }

    /// Makes `desired` the announced set: newly announced addresses get gratuitous
    /// announcements, withdrawn ones are no longer answered from this moment.
    pub fn set(&self, desired: BTreeMap<IpAddr, Interfaces>) {
        let (added, removed) = {
            let mut table = self.inner.table.write().unwrap();
            let removed: Vec<IpAddr> = table
                .keys()
                .filter(|ip| !desired.contains_key(ip))
                .copied()
                .collect();
            let added: Vec<IpAddr> = desired
                .iter()
                .filter(|(ip, ifs)| table.get(ip) != Some(ifs))
                .map(|(ip, _)| *ip)
                .collect();
            *table = desired.into_iter().collect();
            (added, removed)
        };
        if added.is_empty() && removed.is_empty() {
            return;
        }
        {
            let mut grat = self.inner.gratuitous.lock().unwrap();
            for ip in &removed {
                tracing::info!(%ip, "stopped announcing");
                if let Some(t) = grat.remove(ip) {
                    t.abort();
                }
            }
            for ip in &added {
                tracing::info!(%ip, "announcing");
                if let Some(t) = grat.remove(ip) {
                    t.abort();
                }
                grat.insert(*ip, tokio::spawn(gratuitous_loop(self.inner.clone(), *ip)));
            }
            grat.retain(|_, t| !t.is_finished());
        }
        self.inner
            .metrics
            .announced_addresses
            .set(self.inner.table.read().unwrap().len() as i64);
        let table = self.inner.table.read().unwrap().clone();
        for entry in self.inner.links.lock().unwrap().values() {
            sync_groups(&entry.link, &table);
        }
    }

    /// Marks this speaker as leaving: from now on, an address is no longer answered as soon
    /// as another node announces it (its gratuitous ARP / unsolicited NA is seen), so the
    /// handover has neither a gap nor two answering nodes.
    pub fn begin_leaving(&self) {
        self.inner
            .leaving
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops everything: nothing is answered any more.
    pub fn shutdown(&self) {
        self.set(BTreeMap::new());
        for (_, entry) in std::mem::take(&mut *self.inner.links.lock().unwrap()) {
            entry.task.abort();
        }
    }
}

/// Joins the solicited-node groups of the IPv6 addresses announced on `link`, leaves the
/// others, so NS sent to those groups reach us on NICs that filter multicast.
fn sync_groups(link: &Link, table: &Table) {
    let want: BTreeSet<Ipv6Addr> = table
        .iter()
        .filter(|(_, ifs)| ifs.allows(&link.info.name))
        .filter_map(|(ip, _)| match ip {
            IpAddr::V6(v6) => Some(ndp::solicited_node(*v6)),
            IpAddr::V4(_) => None,
        })
        .collect();
    let mut have = link.groups.lock().unwrap();
    for g in want.difference(&have.clone()) {
        match membership(link.nd.as_raw_fd(), link.info.index, g, true) {
            Ok(()) => {
                have.insert(*g);
            }
            Err(e) => {
                tracing::warn!(interface = %link.info.name, group = %g, error = %e, "joining solicited-node group failed")
            }
        }
    }
    for g in have.clone().difference(&want) {
        let _ = membership(link.nd.as_raw_fd(), link.info.index, g, false);
        have.remove(g);
    }
}

async fn gratuitous_loop(inner: Arc<Inner>, ip: IpAddr) {
    let start = tokio::time::Instant::now();
    loop {
        let links: Vec<Arc<Link>> = {
            let table = inner.table.read().unwrap();
            let Some(ifs) = table.get(&ip) else { return };
            inner
                .links
                .lock()
                .unwrap()
                .values()
                .filter(|e| ifs.allows(&e.link.info.name))
                .map(|e| e.link.clone())
                .collect()
        };
        for link in links {
            send_gratuitous_on(&inner.metrics, &link, ip);
        }
        tokio::time::sleep(GRATUITOUS_INTERVAL).await;
        if start.elapsed() >= GRATUITOUS_WINDOW {
            return;
        }
    }
}

fn send_gratuitous_on(metrics: &Metrics, link: &Link, ip: IpAddr) {
    let frames: Vec<(RawFd, Vec<u8>)> = match ip {
        IpAddr::V4(v4) => arp::gratuitous(v4, link.info.mac)
            .into_iter()
            .map(|f| (link.arp.as_raw_fd(), f.emit()))
            .collect(),
        IpAddr::V6(v6) => vec![(
            link.nd.as_raw_fd(),
            ndp::unsolicited(v6, link.info.mac).emit(),
        )],
    };
    for (fd, frame) in frames {
        match send(fd, &frame) {
            Ok(()) => {
                metrics.gratuitous_sent.get_or_create(&ip_label(&ip)).inc();
            }
            Err(e) => {
                tracing::warn!(interface = %link.info.name, %ip, error = %e, "sending gratuitous announcement failed")
            }
        };
    }
}

async fn receive_loop(inner: Arc<Inner>, link: Arc<Link>) {
    let mut buf = vec![0u8; 9216];
    loop {
        tokio::select! {
            r = link.arp.readable() => match r {
                Ok(mut guard) => {
                    drain(&inner, &link, guard.get_inner().as_raw_fd(), &mut buf, decide_arp);
                    guard.clear_ready();
                }
                Err(e) => { tracing::error!(interface = %link.info.name, error = %e, "ARP socket failed"); return; }
            },
            r = link.nd.readable() => match r {
                Ok(mut guard) => {
                    drain(&inner, &link, guard.get_inner().as_raw_fd(), &mut buf, decide_ndp);
                    guard.clear_ready();
                }
                Err(e) => { tracing::error!(interface = %link.info.name, error = %e, "NDP socket failed"); return; }
            },
        }
    }
}

/// Reads every pending frame of `fd` and acts on it.
fn drain(
    inner: &Inner,
    link: &Link,
    fd: RawFd,
    buf: &mut [u8],
    decide: fn(&[u8], &str, Mac, &Table) -> Decision,
) {
    loop {
        let (n, pkttype) = match recv(fd, buf) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::warn!(interface = %link.info.name, error = %e, "receive failed");
                return;
            }
        };
        if pkttype == PACKET_OUTGOING {
            continue;
        }
        let decision = {
            let table = inner.table.read().unwrap();
            decide(&buf[..n], &link.info.name, link.info.mac, &table)
        };
        match decision {
            Decision::Ignore => {}
            Decision::Malformed(e) => {
                tracing::debug!(interface = %link.info.name, error = %e, "malformed frame dropped");
                inner
                    .metrics
                    .malformed_frames
                    .get_or_create(&InterfaceLabel {
                        interface: link.info.name.clone(),
                    })
                    .inc();
            }
            Decision::Claimed { ip, mac } => {
                if inner.leaving.load(std::sync::atomic::Ordering::SeqCst) {
                    let removed = inner.table.write().unwrap().remove(&ip).is_some();
                    if removed {
                        tracing::info!(%ip, by = %mac, interface = %link.info.name, "taken over by the next node, stopped answering");
                        if let Some(t) = inner.gratuitous.lock().unwrap().remove(&ip) {
                            t.abort();
                        }
                    }
                } else {
                    tracing::warn!(%ip, by = %mac, interface = %link.info.name, "another station announces an address this node announces");
                }
            }
            Decision::Answer { ip, frame } => {
                inner
                    .metrics
                    .requests_received
                    .get_or_create(&ip_label(&ip))
                    .inc();
                match send(fd, &frame) {
                    Ok(()) => {
                        inner
                            .metrics
                            .responses_sent
                            .get_or_create(&ip_label(&ip))
                            .inc();
                    }
                    Err(e) => {
                        tracing::warn!(interface = %link.info.name, %ip, error = %e, "sending answer failed")
                    }
                }
            }
        }
    }
}

// --- the AF_PACKET edge ------------------------------------------------------------------

fn last_os_error<T>() -> io::Result<T> {
    Err(io::Error::last_os_error())
}

/// A classic BPF program passing only ICMPv6 Neighbor Solicitations and Advertisements (no
/// extension headers), so the IPv6 socket does not copy every IPv6 frame to user space.
fn ns_filter() -> [libc::sock_filter; 9] {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    const LD_H_ABS: u16 = 0x28;
    const LD_B_ABS: u16 = 0x30;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    [
        op(LD_H_ABS, 0, 0, 12),
        op(JEQ_K, 0, 6, u32::from(u16::from(EtherType::Ipv6))),
        op(LD_B_ABS, 0, 0, 20),
        op(JEQ_K, 0, 4, 58),
        op(LD_B_ABS, 0, 0, 54),
        op(JEQ_K, 1, 0, u32::from(u8::from(Icmpv6Type::NeighborSolicit))),
        op(JEQ_K, 0, 1, u32::from(u8::from(Icmpv6Type::NeighborAdvert))),
        op(RET_K, 0, 0, 0xffff),
        op(RET_K, 0, 0, 0),
    ]
}

/// Opens a packet socket bound to one interface and protocol.
fn packet_socket(
    index: u32,
    protocol: u16,
    filter: Option<&[libc::sock_filter]>,
) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0, // receive nothing until bound, so no frame of another interface slips in
        )
    };
    if fd < 0 {
        return last_os_error();
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(prog) = filter {
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: fprog points to a live program for the duration of the call.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                &fprog as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return last_os_error();
        }
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = index as i32;
    // SAFETY: sll is a valid sockaddr_ll of the given size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return last_os_error();
    }
    Ok(fd)
}

fn open_link(info: &LinkInfo) -> io::Result<Link> {
    let arp = packet_socket(info.index, EtherType::Arp.into(), None)?;
    let nd = packet_socket(info.index, EtherType::Ipv6.into(), Some(&ns_filter()))?;
    Ok(Link {
        info: info.clone(),
        // SAFETY: OwnedFd keeps the descriptor open and unchanged for the AsyncFd's life.
        arp: unsafe { AsyncFd::register(arp) }.map_err(io::Error::from)?,
        // SAFETY: as above.
        nd: unsafe { AsyncFd::register(nd) }.map_err(io::Error::from)?,
        groups: Mutex::new(BTreeSet::new()),
    })
}

fn membership(fd: RawFd, index: u32, group: &Ipv6Addr, add: bool) -> io::Result<()> {
    // SAFETY: packet_mreq is plain data.
    let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mreq.mr_ifindex = index as i32;
    mreq.mr_type = libc::PACKET_MR_MULTICAST as u16;
    mreq.mr_alen = 6;
    mreq.mr_address[..6].copy_from_slice(&ndp::multicast_mac(*group).0);
    let opt = if add {
        libc::PACKET_ADD_MEMBERSHIP
    } else {
        libc::PACKET_DROP_MEMBERSHIP
    };
    // SAFETY: mreq is a valid packet_mreq for the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            opt,
            &mreq as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
        )
    };
    if r < 0 { last_os_error() } else { Ok(()) }
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, u8)> {
    // SAFETY: sockaddr_ll is plain data.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: buf and from are valid for writes of the given lengths.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
            &mut from as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    };
    if n < 0 {
        return last_os_error();
    }
    Ok((n as usize, from.sll_pkttype))
}

fn send(fd: RawFd, frame: &[u8]) -> io::Result<()> {
    // SAFETY: frame is valid for reads of its length; the socket is bound to an interface.
    let n = unsafe { libc::send(fd, frame.as_ptr() as *const libc::c_void, frame.len(), 0) };
    if n < 0 { last_os_error() } else { Ok(()) }
}

/// The interfaces of this node: the eligible ones to listen on, and every one's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkScan {
    pub eligible: Vec<LinkInfo>,
    pub states: NodeLinks,
}

/// Lists the interfaces of this node; layer 2 mode answers on those up, Ethernet, not
/// loopback, not NOARP, not enslaved (a bridge port's frames belong to the bridge).
pub fn scan_links() -> io::Result<LinkScan> {
    // SAFETY: a datagram socket used only for interface ioctls.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return last_os_error();
    }
    // SAFETY: fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    let mut scan = LinkScan::default();
    for (index, name) in interface_names()? {
        // None: gone since listed, or unreadable.
        let Some(info) = link_info(sock.as_raw_fd(), index, &name) else {
            continue;
        };
        match info {
            Ok(info) => {
                scan.states.insert(name, LinkState::Eligible);
                scan.eligible.push(info);
            }
            Err(state) => {
                scan.states.insert(name, state);
            }
        }
    }
    Ok(scan)
}

/// Lists the interfaces layer 2 mode answers on (see [`scan_links`]).
pub fn eligible_links() -> io::Result<Vec<LinkInfo>> {
    Ok(scan_links()?.eligible)
}

fn interface_names() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return last_os_error();
    }
    let mut out = Vec::new();
    let mut p = list;
    // SAFETY: walking the array up to its terminator; names are NUL-terminated.
    unsafe {
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            out.push(((*p).if_index, name));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(out)
}

fn ifreq_for(name: &str) -> Option<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Some(req)
}

/// The interface's details if eligible, else why not; `None` if it cannot be read.
fn link_info(sock: RawFd, index: u32, name: &str) -> Option<Result<LinkInfo, LinkState>> {
    let mut req = ifreq_for(name)?;
    // SAFETY: SIOCGIFFLAGS fills ifr_flags of a valid ifreq.
    if unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return None;
    }
    // SAFETY: the union member written by SIOCGIFFLAGS.
    let flags = unsafe { req.ifr_ifru.ifru_flags } as i32;
    if flags & libc::IFF_LOOPBACK != 0 {
        return Some(Err(LinkState::Loopback));
    }
    if flags & libc::IFF_UP == 0 {
        return Some(Err(LinkState::Down));
    }
    if flags & libc::IFF_NOARP != 0 {
        return Some(Err(LinkState::NoArp));
    }
    let mut req = ifreq_for(name)?;
    // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr of a valid ifreq.
    if unsafe { libc::ioctl(sock, libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return None;
    }
    // SAFETY: the union member written by SIOCGIFHWADDR.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return Some(Err(LinkState::NotEthernet));
    }
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *m = *b as u8;
    }
    if has_master(index, name) {
        return Some(Err(LinkState::Enslaved));
    }
    Some(Ok(LinkInfo {
        name: name.to_string(),
        index,
        mac: Mac(mac),
    }))
}

/// Whether the interface is enslaved, from sysfs; only trusted when sysfs shows this
/// network namespace (its ifindex matches), else assumed not.
fn has_master(index: u32, name: &str) -> bool {
    let base = std::path::Path::new("/sys/class/net").join(name);
    let same_netns = std::fs::read_to_string(base.join("ifindex"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        == Some(index);
    same_netns && base.join("master").exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use metalnet::wire::EthernetRepr;
    use metalnet::wire::arp::ArpRepr;

    const ME: Mac = Mac([0x02, 0, 0, 0, 0, 1]);
    const CLIENT: Mac = Mac([0x02, 0, 0, 0, 0, 0x64]);
    const BROADCAST: Mac = Mac::BROADCAST;

    fn arp_request(dst: Mac, target: Ipv4Addr) -> Vec<u8> {
        ArpFrame {
            ethernet: EthernetRepr {
                dst_addr: dst,
                src_addr: CLIENT,
                ethertype: EtherType::Arp,
            },
            arp: ArpRepr {
                operation: Operation::Request,
                source_hardware_addr: CLIENT,
                source_protocol_addr: Ipv4Addr::new(192, 0, 2, 100),
                target_hardware_addr: Mac::ZERO,
                target_protocol_addr: target,
            },
        }
        .emit()
    }

    fn table() -> Table {
        let mut t = Table::new();
        t.insert("192.0.2.200".parse().unwrap(), Interfaces::All);
        t.insert(
            "192.0.2.201".parse().unwrap(),
            Interfaces::Only(["eth1".to_string()].into()),
        );
        t
    }

    #[test]
    fn answers_only_announced_addresses_on_allowed_interfaces() {
        let t = table();
        let vip = Ipv4Addr::new(192, 0, 2, 200);
        match decide_arp(&arp_request(BROADCAST, vip), "eth0", ME, &t) {
            Decision::Answer { ip, frame } => {
                assert_eq!(ip, IpAddr::V4(vip));
                let f = ArpFrame::parse(&frame).unwrap();
                assert_eq!(
                    (
                        f.ethernet.dst_addr,
                        f.arp.source_hardware_addr,
                        f.arp.source_protocol_addr
                    ),
                    (CLIENT, ME, vip)
                );
            }
            other => panic!("{other:?}"),
        }
        // Unicast to us (a refresh) is answered too; unicast to someone else is not.
        assert!(matches!(
            decide_arp(&arp_request(ME, vip), "eth0", ME, &t),
            Decision::Answer { .. }
        ));
        assert_eq!(
            decide_arp(&arp_request(Mac([2, 9, 9, 9, 9, 9]), vip), "eth0", ME, &t),
            Decision::Ignore
        );
        // Another address, or an address restricted to another interface.
        assert_eq!(
            decide_arp(
                &arp_request(BROADCAST, Ipv4Addr::new(192, 0, 2, 12)),
                "eth0",
                ME,
                &t
            ),
            Decision::Ignore
        );
        let only_eth1 = Ipv4Addr::new(192, 0, 2, 201);
        assert_eq!(
            decide_arp(&arp_request(BROADCAST, only_eth1), "eth0", ME, &t),
            Decision::Ignore
        );
        assert!(matches!(
            decide_arp(&arp_request(BROADCAST, only_eth1), "eth1", ME, &t),
            Decision::Answer { .. }
        ));
        // Malformed frames are reported as such.
        assert!(matches!(
            decide_arp(&arp_request(BROADCAST, vip)[..30], "eth0", ME, &t),
            Decision::Malformed(_)
        ));
    }

    /// Runs the classic BPF program on a frame (the subset of opcodes it uses).
    fn run_filter(prog: &[libc::sock_filter], frame: &[u8]) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let ins = &prog[pc];
            let k = ins.k as usize;
            match ins.code {
                0x28 => match frame.get(k..k + 2) {
                    Some(b) => a = u32::from(u16::from_be_bytes([b[0], b[1]])),
                    None => return 0,
                },
                0x30 => match frame.get(k) {
                    Some(b) => a = u32::from(*b),
                    None => return 0,
                },
                0x15 => {
                    pc += usize::from(if a == ins.k { ins.jt } else { ins.jf });
                }
                0x06 => return ins.k,
                other => panic!("opcode {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn bpf_filter_passes_ns_and_na_only() {
        let prog = ns_filter();
        let na = ndp::unsolicited("2001:db8::200".parse().unwrap(), ME).emit();
        assert_eq!(run_filter(&prog, &na), 0xffff);
        let mut ns = na.clone();
        ns[54] = Icmpv6Type::NeighborSolicit.into();
        assert_eq!(run_filter(&prog, &ns), 0xffff);
        let mut echo = na.clone();
        echo[54] = 128;
        assert_eq!(run_filter(&prog, &echo), 0);
        let mut udp = na.clone();
        udp[20] = 17;
        assert_eq!(run_filter(&prog, &udp), 0);
        assert_eq!(
            run_filter(&prog, &arp_request(BROADCAST, Ipv4Addr::new(192, 0, 2, 1))),
            0
        );
        assert_eq!(run_filter(&prog, &na[..30]), 0);
    }

    #[test]
    fn claims_by_other_stations_are_reported() {
        let t = table();
        let vip = Ipv4Addr::new(192, 0, 2, 200);
        let [req, reply] = arp::gratuitous(vip, CLIENT);
        for f in [req, reply] {
            assert_eq!(
                decide_arp(&f.emit(), "eth0", ME, &t),
                Decision::Claimed {
                    ip: IpAddr::V4(vip),
                    mac: CLIENT
                }
            );
        }
        // Our own announcement is not a claim.
        let [req, _] = arp::gratuitous(vip, ME);
        assert_eq!(decide_arp(&req.emit(), "eth0", ME, &t), Decision::Ignore);
        let mut t6 = Table::new();
        let v6: std::net::Ipv6Addr = "2001:db8::200".parse().unwrap();
        t6.insert(IpAddr::V6(v6), Interfaces::All);
        assert_eq!(
            decide_ndp(&ndp::unsolicited(v6, CLIENT).emit(), "eth0", ME, &t6),
            Decision::Claimed {
                ip: IpAddr::V6(v6),
                mac: CLIENT
            }
        );
        assert_eq!(
            decide_ndp(&ndp::unsolicited(v6, ME).emit(), "eth0", ME, &t6),
            Decision::Ignore
        );
    }

    fn links(states: &[(&str, LinkState)]) -> NodeLinks {
        states.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }

    fn only(names: &[&str]) -> Interfaces {
        Interfaces::Only(names.iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn interfaces_check_fails_only_when_no_named_interface_is_eligible() {
        let node = links(&[
            ("lo", LinkState::Loopback),
            ("eth0", LinkState::Eligible),
            ("eth1", LinkState::Down),
            ("br0", LinkState::Eligible),
            ("eth2", LinkState::Enslaved),
        ]);
        // Not restricted: always announced (even with no eligible interface at all).
        assert_eq!(check_interfaces(&Interfaces::All, &node), Ok(()));
        assert_eq!(
            check_interfaces(&Interfaces::All, &NodeLinks::new()),
            Ok(())
        );
        // One eligible named interface is enough; the others are ignored.
        assert_eq!(check_interfaces(&only(&["eth0", "nope"]), &node), Ok(()));
        // None usable: every named interface is reported with its state.
        let failure = check_interfaces(&only(&["does-not-exist", "eth1", "eth2"]), &node)
            .expect_err("no eligible interface");
        assert_eq!(
            failure.interfaces,
            [
                ("does-not-exist".to_string(), None),
                ("eth1".to_string(), Some(LinkState::Down)),
                ("eth2".to_string(), Some(LinkState::Enslaved)),
            ]
            .into()
        );
        assert_eq!(
            failure.to_string(),
            "does-not-exist (does not exist), eth1 (down), eth2 (enslaved to a bridge or bond)"
        );
    }

    #[test]
    fn announce_failures_lists_only_the_addresses_that_cannot_be_announced() {
        let node = links(&[("eth0", LinkState::Eligible)]);
        let ok: IpAddr = "192.0.2.200".parse().unwrap();
        let failing: IpAddr = "2001:db8::200".parse().unwrap();
        let announced: BTreeMap<IpAddr, Interfaces> =
            [(ok, only(&["eth0"])), (failing, only(&["does-not-exist"]))].into();
        let failures = announce_failures(&announced, &node);
        assert_eq!(failures.keys().copied().collect::<Vec<_>>(), vec![failing]);
        // Once the interface shows up, nothing fails.
        let node = links(&[
            ("eth0", LinkState::Eligible),
            ("does-not-exist", LinkState::Eligible),
        ]);
        assert!(announce_failures(&announced, &node).is_empty());
    }
}
