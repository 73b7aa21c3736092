//! Layer 2 mode: [`election`] decides which node announces each address, [`explain`] says
//! why, and the responder here makes the won addresses reachable.
//!
//! [`Layer2`] answers ARP and Neighbor Solicitations for the addresses this node announces,
//! on the eligible interfaces (up, Ethernet, not loopback, not NOARP, not enslaved to a
//! bridge or bond), through one pair of AF_PACKET sockets per interface
//! ([`metalnet::sys::packet`]). Frames are decided purely ([`decide_arp`], [`decide_ndp`]):
//! VLAN-tagged frames, senders that are not unicast and messages RFC 826/4861 call invalid
//! are dropped and counted by reason. It never adds the
//! address to an interface. BGP mode ([`crate::bgp`]) announces the same election's
//! addresses to routers instead.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use metalnet::sys::packet::{
    self, BpfInstruction, HardwareAddr, InterfaceQuery, PacketSocket, PacketType, Received,
};
use metalnet::wire::arp;
use metalnet::wire::ndp::{self, Icmpv6Type, NextHeader};
use metalnet::wire::responder;
use metalnet::wire::{EtherType, Mac};

pub mod election;
pub mod explain;

use crate::metrics::{EventLabel, InterfaceLabel, Metrics, ReasonLabel, ip_label};
use crate::ratelimit::{Verdict, WarnLimiter};
use election::Interfaces;

/// Gratuitous announcements on takeover: at once, then every 1.1 s while within 5 s (as
/// MetalLB), so hosts that missed one still move.
pub const GRATUITOUS_INTERVAL: Duration = Duration::from_millis(1100);
pub const GRATUITOUS_WINDOW: Duration = Duration::from_secs(5);
/// How often interfaces are re-listed (new, gone, changed MAC).
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(10);

pub use metalnet::wire::responder::{Decision, DropReason, RxMeta};

/// What the kernel says about a received frame, as the responder reads it.
pub fn rx_meta(r: &Received) -> RxMeta {
    RxMeta {
        vlan_tci: r.vlan_tci,
        other_host: r.packet_type == PacketType::OtherHost,
    }
}

/// Which addresses are announced, and where.
pub type Table = HashMap<IpAddr, Interfaces>;

/// [`metalnet::wire::responder::decide_arp`] for a frame received on `link`, answering for
/// the addresses of `table` announced there.
pub fn decide_arp(frame: &[u8], rx: RxMeta, link: &str, mac: Mac, table: &Table) -> Decision {
    responder::decide_arp(frame, rx, mac, |ip| {
        table.get(&ip).is_some_and(|ifs| ifs.allows(link))
    })
}

/// [`metalnet::wire::responder::decide_ndp`] for a frame received on `link`, answering for
/// the addresses of `table` announced there.
pub fn decide_ndp(frame: &[u8], rx: RxMeta, link: &str, mac: Mac, table: &Table) -> Decision {
    responder::decide_ndp(frame, rx, mac, |ip| {
        table.get(&ip).is_some_and(|ifs| ifs.allows(link))
    })
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

/// The pure decision of a receive path.
type Decide = fn(&[u8], RxMeta, &str, Mac, &Table) -> Decision;

/// What a rate-limited warning is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum WarnKey {
    /// Another station claims an address we announce. Keyed by the address alone: a flood
    /// from ever new sender MACs would otherwise log one line per MAC.
    Claim(IpAddr),
    /// Receiving on an interface (by index) failed.
    Receive(u32),
    /// Sending an answer on an interface (by index) failed.
    Send(u32),
}

impl WarnKey {
    fn event(&self) -> &'static str {
        match self {
            WarnKey::Claim(..) => "address_claimed_by_other_station",
            WarnKey::Receive(_) => "receive_failed",
            WarnKey::Send(_) => "send_failed",
        }
    }
}

/// One interface we listen on.
struct Link {
    info: LinkInfo,
    arp: AsyncFd<PacketSocket>,
    nd: AsyncFd<PacketSocket>,
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
    warnings: Mutex<WarnLimiter<WarnKey>>,
}

impl Inner {
    /// Whether a warning about `key` may be logged now: `Some(n)` with the number of the
    /// same warnings suppressed since the last one, or `None` (counted as suppressed).
    fn warn_allowed(&self, key: WarnKey) -> Option<u64> {
        let event = key.event();
        match self.warnings.lock().unwrap().check(key, Instant::now()) {
            Verdict::Log { suppressed } => Some(suppressed),
            Verdict::Suppress => {
                self.metrics
                    .warnings_suppressed
                    .get_or_create(&EventLabel {
                        event: event.to_string(),
                    })
                    .inc();
                None
            }
        }
    }
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
                warnings: Mutex::new(WarnLimiter::default()),
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
        match link.nd.get_ref().set_multicast_membership(
            link.info.index,
            ndp::multicast_mac(*g),
            true,
        ) {
            Ok(()) => {
                have.insert(*g);
            }
            Err(e) => {
                tracing::warn!(interface = %link.info.name, group = %g, error = %e, "joining solicited-node group failed")
            }
        }
    }
    for g in have.clone().difference(&want) {
        let _ = link.nd.get_ref().set_multicast_membership(
            link.info.index,
            ndp::multicast_mac(*g),
            false,
        );
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
    let frames: Vec<(&PacketSocket, Vec<u8>)> = match ip {
        IpAddr::V4(v4) => arp::gratuitous(v4, link.info.mac)
            .into_iter()
            .map(|f| (link.arp.get_ref(), f.emit()))
            .collect(),
        IpAddr::V6(v6) => vec![(
            link.nd.get_ref(),
            ndp::unsolicited(v6, link.info.mac).emit(),
        )],
    };
    for (sock, frame) in frames {
        match sock.send(&frame) {
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
                    drain(&inner, &link, guard.get_inner(), &mut buf, decide_arp);
                    guard.clear_ready();
                }
                Err(e) => { tracing::error!(interface = %link.info.name, error = %e, "ARP socket failed"); return; }
            },
            r = link.nd.readable() => match r {
                Ok(mut guard) => {
                    drain(&inner, &link, guard.get_inner(), &mut buf, decide_ndp);
                    guard.clear_ready();
                }
                Err(e) => { tracing::error!(interface = %link.info.name, error = %e, "NDP socket failed"); return; }
            },
        }
    }
}

/// Reads every pending frame of `fd` and acts on it.
fn drain(inner: &Inner, link: &Link, sock: &PacketSocket, buf: &mut [u8], decide: Decide) {
    loop {
        let received = match sock.recv(buf) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                if let Some(suppressed) = inner.warn_allowed(WarnKey::Receive(link.info.index)) {
                    tracing::warn!(interface = %link.info.name, error = %e, suppressed, "receive failed");
                }
                return;
            }
        };
        if received.packet_type == PacketType::Outgoing {
            continue;
        }
        let frame = &buf[..received.len.min(buf.len())];
        let decision = {
            let table = inner.table.read().unwrap();
            decide(
                frame,
                rx_meta(&received),
                &link.info.name,
                link.info.mac,
                &table,
            )
        };
        if let Some(reason) = decision.drop_reason() {
            inner
                .metrics
                .frames_dropped
                .get_or_create(&ReasonLabel {
                    reason: reason.to_string(),
                })
                .inc();
        }
        match decision {
            Decision::Ignore => {}
            Decision::Dropped(r) => {
                tracing::debug!(interface = %link.info.name, reason = r.as_str(), "frame dropped");
            }
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
                } else if let Some(suppressed) = inner.warn_allowed(WarnKey::Claim(ip)) {
                    tracing::warn!(%ip, by = %mac, interface = %link.info.name, suppressed, "another station announces an address this node announces");
                }
            }
            Decision::Answer { ip, frame } => {
                inner
                    .metrics
                    .requests_received
                    .get_or_create(&ip_label(&ip))
                    .inc();
                match sock.send(&frame) {
                    Ok(()) => {
                        inner
                            .metrics
                            .responses_sent
                            .get_or_create(&ip_label(&ip))
                            .inc();
                    }
                    Err(e) => {
                        if let Some(suppressed) = inner.warn_allowed(WarnKey::Send(link.info.index))
                        {
                            tracing::warn!(interface = %link.info.name, %ip, error = %e, suppressed, "sending answer failed")
                        }
                    }
                }
            }
        }
    }
}

// --- the AF_PACKET edge ------------------------------------------------------------------

/// A classic BPF program passing only ICMPv6 Neighbor Solicitations and Advertisements (no
/// extension headers), so the IPv6 socket does not copy every IPv6 frame to user space.
fn ns_filter() -> [BpfInstruction; 9] {
    use BpfInstruction as I;
    // Offsets in an untagged Ethernet frame: EtherType, IPv6 next header, ICMPv6 type.
    const ETHERTYPE_AT: u32 = 12;
    const NEXT_HEADER_AT: u32 = 14 + 6;
    const ICMP_TYPE_AT: u32 = 14 + 40;
    [
        I::new(I::LD_H_ABS, 0, 0, ETHERTYPE_AT),
        I::new(I::JEQ_K, 0, 6, u32::from(u16::from(EtherType::Ipv6))),
        I::new(I::LD_B_ABS, 0, 0, NEXT_HEADER_AT),
        I::new(I::JEQ_K, 0, 4, u32::from(u8::from(NextHeader::Icmpv6))),
        I::new(I::LD_B_ABS, 0, 0, ICMP_TYPE_AT),
        I::new(
            I::JEQ_K,
            1,
            0,
            u32::from(u8::from(Icmpv6Type::NeighborSolicit)),
        ),
        I::new(
            I::JEQ_K,
            0,
            1,
            u32::from(u8::from(Icmpv6Type::NeighborAdvert)),
        ),
        I::new(I::RET_K, 0, 0, 0xffff),
        I::new(I::RET_K, 0, 0, 0),
    ]
}

fn open_link(info: &LinkInfo) -> io::Result<Link> {
    let arp = PacketSocket::open(info.index, EtherType::Arp.into(), None)?;
    let nd = PacketSocket::open(info.index, EtherType::Ipv6.into(), Some(&ns_filter()))?;
    Ok(Link {
        info: info.clone(),
        arp: arp.into_async()?,
        nd: nd.into_async()?,
        groups: Mutex::new(BTreeSet::new()),
    })
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
    let query = InterfaceQuery::new()?;
    let mut scan = LinkScan::default();
    for (index, name) in packet::interface_names()? {
        // None: gone since listed, or unreadable.
        let Some(info) = link_info(&query, index, &name) else {
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

/// The interface's details if eligible, else why not; `None` if it cannot be read.
fn link_info(
    query: &InterfaceQuery,
    index: u32,
    name: &str,
) -> Option<Result<LinkInfo, LinkState>> {
    let flags = query.flags(name)?;
    if flags.loopback {
        return Some(Err(LinkState::Loopback));
    }
    if !flags.up {
        return Some(Err(LinkState::Down));
    }
    if flags.noarp {
        return Some(Err(LinkState::NoArp));
    }
    let HardwareAddr::Ethernet(mac) = query.hardware_addr(name)? else {
        return Some(Err(LinkState::NotEthernet));
    };
    if has_master(index, name) {
        return Some(Err(LinkState::Enslaved));
    }
    Some(Ok(LinkInfo {
        name: name.to_string(),
        index,
        mac,
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
    use metalnet::wire::L2Error;
    use metalnet::wire::arp::{ArpFrame, Operation};
    use metalnet::wire::ndp::{NdiscRepr, NdpFrame};
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
        match decide_arp_untagged(&arp_request(BROADCAST, vip), "eth0", ME, &t) {
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
            decide_arp_untagged(&arp_request(ME, vip), "eth0", ME, &t),
            Decision::Answer { .. }
        ));
        assert_eq!(
            decide_arp_untagged(&arp_request(Mac([2, 9, 9, 9, 9, 9]), vip), "eth0", ME, &t),
            Decision::Ignore
        );
        // Another address, or an address restricted to another interface.
        assert_eq!(
            decide_arp_untagged(
                &arp_request(BROADCAST, Ipv4Addr::new(192, 0, 2, 12)),
                "eth0",
                ME,
                &t
            ),
            Decision::Ignore
        );
        let only_eth1 = Ipv4Addr::new(192, 0, 2, 201);
        assert_eq!(
            decide_arp_untagged(&arp_request(BROADCAST, only_eth1), "eth0", ME, &t),
            Decision::Ignore
        );
        assert!(matches!(
            decide_arp_untagged(&arp_request(BROADCAST, only_eth1), "eth1", ME, &t),
            Decision::Answer { .. }
        ));
        // Malformed frames are reported as such.
        assert!(matches!(
            decide_arp_untagged(&arp_request(BROADCAST, vip)[..30], "eth0", ME, &t),
            Decision::Malformed(_)
        ));
    }

    fn decide_arp_untagged(frame: &[u8], link: &str, mac: Mac, table: &Table) -> Decision {
        decide_arp(frame, RxMeta::default(), link, mac, table)
    }

    fn decide_ndp_untagged(frame: &[u8], link: &str, mac: Mac, table: &Table) -> Decision {
        decide_ndp(frame, RxMeta::default(), link, mac, table)
    }

    fn run_filter(prog: &[BpfInstruction], frame: &[u8]) -> u32 {
        BpfInstruction::run(prog, frame).expect("filter uses known opcodes")
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
                decide_arp_untagged(&f.emit(), "eth0", ME, &t),
                Decision::Claimed {
                    ip: IpAddr::V4(vip),
                    mac: CLIENT
                }
            );
        }
        // Our own announcement is not a claim.
        let [req, _] = arp::gratuitous(vip, ME);
        assert_eq!(
            decide_arp_untagged(&req.emit(), "eth0", ME, &t),
            Decision::Ignore
        );
        let mut t6 = Table::new();
        let v6: std::net::Ipv6Addr = "2001:db8::200".parse().unwrap();
        t6.insert(IpAddr::V6(v6), Interfaces::All);
        assert_eq!(
            decide_ndp_untagged(&ndp::unsolicited(v6, CLIENT).emit(), "eth0", ME, &t6),
            Decision::Claimed {
                ip: IpAddr::V6(v6),
                mac: CLIENT
            }
        );
        assert_eq!(
            decide_ndp_untagged(&ndp::unsolicited(v6, ME).emit(), "eth0", ME, &t6),
            Decision::Ignore
        );
    }

    fn v6_table(vip: std::net::Ipv6Addr) -> Table {
        [(IpAddr::V6(vip), Interfaces::All)].into()
    }

    fn ns(src: std::net::Ipv6Addr, target: std::net::Ipv6Addr, lladdr: Option<Mac>) -> Vec<u8> {
        let group = ndp::solicited_node(target);
        NdpFrame {
            ethernet: EthernetRepr {
                dst_addr: ndp::multicast_mac(group),
                src_addr: CLIENT,
                ethertype: EtherType::Ipv6,
            },
            ip: ndp::Ipv6Repr {
                src_addr: src,
                dst_addr: group,
                next_header: NextHeader::Icmpv6,
                payload_len: 0,
                hop_limit: ndp::ND_HOP_LIMIT,
            },
            ndisc: NdiscRepr::NeighborSolicit {
                target_addr: target,
                lladdr,
            },
        }
        .emit()
    }

    /// Sets the IPv6 payload length to the rest of `frame` and recomputes the checksum, as
    /// a sender of a deliberately odd (but checksummed) message would.
    fn reseal(frame: &mut [u8]) {
        let icmp_len = (frame.len() - 54) as u16;
        frame[18..20].copy_from_slice(&icmp_len.to_be_bytes());
        frame[56..58].copy_from_slice(&[0, 0]);
        let src = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&frame[22..38]).unwrap());
        let dst = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&frame[38..54]).unwrap());
        let sum = ndp::icmpv6_checksum(&src, &dst, &frame[54..]);
        frame[56..58].copy_from_slice(&sum.to_be_bytes());
    }

    fn tag(vid: u16) -> RxMeta {
        RxMeta {
            vlan_tci: Some(vid),
            other_host: false,
        }
    }

    /// `frame` with an 802.1Q tag for `vid` inserted after the addresses.
    fn tagged(frame: &[u8], vid: u16) -> Vec<u8> {
        let mut out = frame[..12].to_vec();
        out.extend_from_slice(&0x8100u16.to_be_bytes());
        out.extend_from_slice(&vid.to_be_bytes());
        out.extend_from_slice(&frame[12..]);
        out
    }

    #[test]
    fn vlan_tagged_frames_are_dropped_not_answered_untagged() {
        let t = table();
        let vip = Ipv4Addr::new(192, 0, 2, 200);
        let req = arp_request(BROADCAST, vip);
        // Tag stripped by the kernel (reported beside the frame), or left in the frame.
        let d = decide_arp(&req, tag(100), "eth0", ME, &t);
        assert_eq!(d, Decision::Dropped(DropReason::VlanTagged));
        assert_eq!(d.drop_reason(), Some("vlan_tagged"));
        assert_eq!(
            decide_arp(&tagged(&req, 100), RxMeta::default(), "eth0", ME, &t),
            Decision::Dropped(DropReason::VlanTagged)
        );
        // Priority-tagged (VLAN 0) frames are tagged too.
        assert_eq!(
            decide_arp(&req, tag(0), "eth0", ME, &t),
            Decision::Dropped(DropReason::VlanTagged)
        );
        let vip6: std::net::Ipv6Addr = "2001:db8::200".parse().unwrap();
        let t6 = v6_table(vip6);
        let f = ns("2001:db8::100".parse().unwrap(), vip6, Some(CLIENT));
        assert!(matches!(
            decide_ndp(&f, RxMeta::default(), "eth0", ME, &t6),
            Decision::Answer { .. }
        ));
        assert_eq!(
            decide_ndp(&f, tag(7), "eth0", ME, &t6),
            Decision::Dropped(DropReason::VlanTagged)
        );
        assert_eq!(
            decide_ndp(&tagged(&f, 7), RxMeta::default(), "eth0", ME, &t6),
            Decision::Dropped(DropReason::VlanTagged)
        );
        // Tagged with a VLAN the node has no interface for, the kernel removes the tag and
        // classes the frame as for another host: that is how a tagged request arrives.
        let other = RxMeta {
            vlan_tci: None,
            other_host: true,
        };
        let d = decide_arp(&req, other, "eth0", ME, &t);
        assert_eq!(d, Decision::Dropped(DropReason::OtherHost));
        assert_eq!(d.drop_reason(), Some("other_host"));
        assert_eq!(
            decide_ndp(&f, other, "eth0", ME, &t6),
            Decision::Dropped(DropReason::OtherHost)
        );
    }

    #[test]
    fn solicitations_rfc4861_forbids_are_dropped() {
        let vip6: std::net::Ipv6Addr = "2001:db8::200".parse().unwrap();
        let t6 = v6_table(vip6);
        let unspecified = std::net::Ipv6Addr::UNSPECIFIED;
        // A DAD probe (from ::) is answered to all nodes, but not one carrying a source
        // link-layer address option (RFC 4861 7.1.1).
        match decide_ndp_untagged(&ns(unspecified, vip6, None), "eth0", ME, &t6) {
            Decision::Answer { frame, .. } => {
                assert_eq!(&frame[..6], &ndp::multicast_mac(ndp::ALL_NODES).0)
            }
            other => panic!("{other:?}"),
        }
        let d = decide_ndp_untagged(&ns(unspecified, vip6, Some(CLIENT)), "eth0", ME, &t6);
        assert_eq!(d, Decision::Malformed(L2Error::UnspecifiedWithLinkLayer));
        assert_eq!(d.drop_reason(), Some("dad_with_link_layer_option"));

        let good = ns("2001:db8::100".parse().unwrap(), vip6, Some(CLIENT));
        // A zero-length option.
        let mut zero = good.clone();
        zero[54 + 25] = 0;
        reseal(&mut zero);
        let d = decide_ndp_untagged(&zero, "eth0", ME, &t6);
        assert_eq!(d, Decision::Malformed(L2Error::OptionLength));
        assert_eq!(d.drop_reason(), Some("option_length"));
        // A truncated option: one byte after the link-layer option, or an option whose
        // length runs past the message.
        let mut one_byte = good.clone();
        one_byte.push(1);
        reseal(&mut one_byte);
        assert_eq!(
            decide_ndp_untagged(&one_byte, "eth0", ME, &t6),
            Decision::Malformed(L2Error::OptionTruncated(1))
        );
        let mut long = good;
        long[54 + 25] = 2;
        reseal(&mut long);
        let d = decide_ndp_untagged(&long, "eth0", ME, &t6);
        assert_eq!(d, Decision::Malformed(L2Error::OptionTruncated(8)));
        assert_eq!(d.drop_reason(), Some("option_truncated"));
    }

    #[test]
    fn never_answers_a_broadcast_zero_or_multicast_sender() {
        let t = table();
        let vip = Ipv4Addr::new(192, 0, 2, 200);
        let bad_macs = [Mac::BROADCAST, Mac::ZERO, Mac([0x01, 0, 0x5e, 0, 0, 1])];
        for bad in bad_macs {
            // As the Ethernet source.
            let mut f = arp_request(BROADCAST, vip);
            f[6..12].copy_from_slice(&bad.0);
            let d = decide_arp_untagged(&f, "eth0", ME, &t);
            assert_eq!(d, Decision::Dropped(DropReason::SenderNotUnicast), "{bad}");
            assert_eq!(d.drop_reason(), Some("sender_not_unicast"));
            // As the ARP sender hardware address (where the reply would go).
            let mut f = arp_request(BROADCAST, vip);
            f[14 + 8..14 + 14].copy_from_slice(&bad.0);
            assert_eq!(
                decide_arp_untagged(&f, "eth0", ME, &t),
                Decision::Dropped(DropReason::SenderNotUnicast),
                "{bad}"
            );
        }
        let vip6: std::net::Ipv6Addr = "2001:db8::200".parse().unwrap();
        let t6 = v6_table(vip6);
        let src: std::net::Ipv6Addr = "2001:db8::100".parse().unwrap();
        for bad in bad_macs {
            assert_eq!(
                decide_ndp_untagged(&ns(src, vip6, Some(bad)), "eth0", ME, &t6),
                Decision::Dropped(DropReason::SenderNotUnicast),
                "{bad}"
            );
            let mut f = ns(src, vip6, None);
            f[6..12].copy_from_slice(&bad.0);
            assert_eq!(
                decide_ndp_untagged(&f, "eth0", ME, &t6),
                Decision::Dropped(DropReason::SenderNotUnicast),
                "{bad}"
            );
        }
    }

    #[test]
    fn claims_of_one_address_from_many_macs_log_once_per_interval() {
        let metrics = Arc::new(Metrics::default());
        let l2 = Layer2::new(metrics.clone());
        let vip: IpAddr = "192.0.2.200".parse().unwrap();
        let other: IpAddr = "192.0.2.201".parse().unwrap();
        let logged = (0..1000u64)
            .filter(|i| {
                let by = Mac::local_from_seed(*i);
                let d = decide_arp_untagged(
                    &arp::gratuitous(Ipv4Addr::new(192, 0, 2, 200), by)[0].emit(),
                    "eth0",
                    ME,
                    &table(),
                );
                assert_eq!(d, Decision::Claimed { ip: vip, mac: by });
                l2.inner.warn_allowed(WarnKey::Claim(vip)).is_some()
            })
            .count();
        assert_eq!(
            logged, 1,
            "one line per address per interval, whatever the MAC"
        );
        let suppressed = metrics
            .warnings_suppressed
            .get_or_create(&EventLabel {
                event: "address_claimed_by_other_station".into(),
            })
            .get();
        assert_eq!(suppressed, 999);
        // Another address is warned about on its own.
        assert!(l2.inner.warn_allowed(WarnKey::Claim(other)).is_some());
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
