//! Answering ARP and neighbor discovery for addresses a node announces: the pure decision
//! about one received frame (RFC 826, RFC 4861), with no socket. Strict on purpose: these
//! frames come from every host on the segment.

use std::net::IpAddr;

use super::arp::{self, ArpFrame, Operation};
use super::ndp::{self, NdiscRepr, NdpFrame};
use super::{EtherType, L2Error, Mac};

/// What to do with a received frame (pure decision, see [`decide_arp`] / [`decide_ndp`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not for us (another address, a reply, our own frame, ...).
    Ignore,
    /// Malformed: dropped and counted.
    Malformed(L2Error),
    /// Well formed but not to be answered (see [`DropReason`]): dropped and counted.
    Dropped(DropReason),
    /// A request for an announced address: send `frame`.
    Answer { ip: IpAddr, frame: Vec<u8> },
    /// Another station announces an address we announce (a gratuitous ARP or unsolicited
    /// NA from `mac`): the next node taking over while we leave, else a conflict.
    Claimed { ip: IpAddr, mac: Mac },
}

/// What the kernel says about a received frame, beside its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxMeta {
    /// The VLAN tag the kernel stripped and still reports.
    pub vlan_tci: Option<u16>,
    /// The kernel classed the frame as for another host: unicast to another MAC, or tagged
    /// with a VLAN this host has no interface for (the kernel removes that tag before
    /// protocol sockets see the frame, so this is how a tagged request shows).
    pub other_host: bool,
}

impl RxMeta {
    /// Why the kernel's word alone rules the frame out, before it is parsed.
    fn drop_reason(self) -> Option<DropReason> {
        if self.vlan_tci.is_some() {
            Some(DropReason::VlanTagged)
        } else if self.other_host {
            Some(DropReason::OtherHost)
        } else {
            None
        }
    }
}

/// Why a well-formed frame is dropped without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// It carried an 802.1Q/802.1ad tag: an answer on the untagged interface would reach
    /// another broadcast domain than the asker's.
    VlanTagged,
    /// The kernel classed it as for another host (see [`RxMeta::other_host`]).
    OtherHost,
    /// The sender (Ethernet source, ARP sender or link-layer option) is broadcast,
    /// multicast or zero: no station to answer, and an answer would be flooded.
    SenderNotUnicast,
}

impl DropReason {
    /// The `reason` label of `metalnet_speaker_frames_dropped`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::VlanTagged => "vlan_tagged",
            DropReason::OtherHost => "other_host",
            DropReason::SenderNotUnicast => "sender_not_unicast",
        }
    }
}

impl Decision {
    /// The `reason` label for a dropped frame, `None` for the other decisions.
    pub fn drop_reason(&self) -> Option<&'static str> {
        match self {
            Decision::Malformed(e) => Some(e.reason()),
            Decision::Dropped(r) => Some(r.as_str()),
            _ => None,
        }
    }
}

/// Decides about an ARP frame received on an interface with address `mac`; `rx` is what the
/// kernel says about it, `announced(ip)` whether this node answers for `ip` there.
pub fn decide_arp(
    frame: &[u8],
    rx: RxMeta,
    mac: Mac,
    announced: impl Fn(IpAddr) -> bool,
) -> Decision {
    if let Some(reason) = rx.drop_reason() {
        return Decision::Dropped(reason);
    }
    let ArpFrame {
        ethernet: eth,
        arp: pkt,
    } = match ArpFrame::parse(frame) {
        Ok(p) => p,
        Err(L2Error::EtherType(t)) if EtherType::from(t).is_vlan_tag() => {
            return Decision::Dropped(DropReason::VlanTagged);
        }
        Err(e) => return Decision::Malformed(e),
    };
    if !eth.src_addr.is_unicast() || !pkt.source_hardware_addr.is_unicast() {
        return Decision::Dropped(DropReason::SenderNotUnicast);
    }
    if pkt.source_hardware_addr != mac && eth.src_addr != mac {
        let sender = IpAddr::V4(pkt.source_protocol_addr);
        if announced(sender) {
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
    if announced(ip) {
        Decision::Answer {
            ip,
            frame: arp::reply_to(&pkt, mac).emit(),
        }
    } else {
        Decision::Ignore
    }
}

/// Decides about an IPv6 frame (expected to be a Neighbor Solicitation or Advertisement)
/// received on an interface with address `mac`; `rx` is what the kernel says about it,
/// `announced(ip)` whether this node answers for `ip` there.
pub fn decide_ndp(
    frame: &[u8],
    rx: RxMeta,
    mac: Mac,
    announced: impl Fn(IpAddr) -> bool,
) -> Decision {
    if let Some(reason) = rx.drop_reason() {
        return Decision::Dropped(reason);
    }
    let nd = match NdpFrame::parse(frame) {
        Ok(Some(nd)) => nd,
        Ok(None) => return Decision::Ignore,
        Err(L2Error::EtherType(t)) if EtherType::from(t).is_vlan_tag() => {
            return Decision::Dropped(DropReason::VlanTagged);
        }
        Err(e) => return Decision::Malformed(e),
    };
    let eth_src = nd.ethernet.src_addr;
    // Where an answer would go: the link-layer option, else the Ethernet source.
    let sender = nd.ndisc.lladdr().unwrap_or(eth_src);
    if !eth_src.is_unicast() || !sender.is_unicast() {
        return Decision::Dropped(DropReason::SenderNotUnicast);
    }
    let ip = IpAddr::V6(nd.ndisc.target_addr());
    if let NdiscRepr::NeighborAdvert { .. } = nd.ndisc {
        let by = sender;
        if by != mac && eth_src != mac && announced(ip) {
            return Decision::Claimed { ip, mac: by };
        }
        return Decision::Ignore;
    }
    if eth_src == mac {
        return Decision::Ignore;
    }
    if announced(ip) {
        Decision::Answer {
            ip,
            frame: ndp::answer(&nd, mac).emit(),
        }
    } else {
        Decision::Ignore
    }
}
