//! IPv6 Neighbor Discovery (RFC 4861): typed parse of Neighbor Solicitations and emit of
//! Neighbor Advertisements, with the ICMPv6 checksum.

use std::net::Ipv6Addr;

use crate::arp::{ETHERTYPE_IPV6, Ethernet, FrameError, Mac};

const IPV6_HEADER: usize = 40;
const ICMPV6: u8 = 58;
pub const TYPE_NS: u8 = 135;
pub const TYPE_NA: u8 = 136;
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;
/// ff02::1, all nodes.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The solicited-node multicast group of an address (ff02::1:ffXX:XXXX).
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet multicast MAC of an IPv6 multicast group (33:33 + last 32 bits).
pub fn multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// A Neighbor Solicitation as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Solicitation {
    pub eth_src: Mac,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub target: Ipv6Addr,
    /// The Source Link-Layer Address option, if present.
    pub source_ll: Option<Mac>,
}

/// A Neighbor Advertisement to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advertisement {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub target: Ipv6Addr,
    pub solicited: bool,
    pub override_: bool,
    /// Target Link-Layer Address option.
    pub target_ll: Mac,
}

/// The ICMPv6 checksum over the pseudo-header and `icmp` (with its checksum field zero or
/// not: a correct message sums to zero).
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for chunk in bytes.chunks(2) {
            let word = if chunk.len() == 2 {
                u16::from_be_bytes([chunk[0], chunk[1]])
            } else {
                u16::from_be_bytes([chunk[0], 0])
            };
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Reads the ND options, returning the link-layer address of the wanted kind.
fn ll_option(mut opts: &[u8], kind: u8) -> Result<Option<Mac>, FrameError> {
    let mut found = None;
    while opts.len() >= 2 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 {
            return Err(FrameError::OptionLength);
        }
        if len > opts.len() {
            return Err(FrameError::TooShort(opts.len()));
        }
        if opts[0] == kind && len >= 8 {
            found = Some(opts[2..8].try_into().expect("6 bytes"));
        }
        opts = &opts[len..];
    }
    Ok(found)
}

/// A Neighbor Advertisement as received (only what a speaker needs: who claims what).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub eth_src: Mac,
    pub target: Ipv6Addr,
    pub target_ll: Option<Mac>,
}

/// Parses a frame as a Neighbor Advertisement, with the same checks as solicitations.
pub fn parse_advertisement(frame: &[u8]) -> Result<Option<Claim>, FrameError> {
    let Some((eth, icmp)) = checked_icmp(frame, TYPE_NA)? else {
        return Ok(None);
    };
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[8..24]).expect("16 bytes"));
    Ok(Some(Claim {
        eth_src: eth.src,
        target,
        target_ll: ll_option(&icmp[24..], OPT_TARGET_LL)?,
    }))
}

/// Parses a frame as a Neighbor Solicitation. `Ok(None)`: a well-formed IPv6 frame that is
/// not an NS (nothing to do); `Err`: malformed.
pub fn parse_solicitation(frame: &[u8]) -> Result<Option<Solicitation>, FrameError> {
    let Some((eth, icmp)) = checked_icmp(frame, TYPE_NS)? else {
        return Ok(None);
    };
    let (src, dst) = addrs(&frame[Ethernet::LEN..]);
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[8..24]).expect("16 bytes"));
    if target.is_multicast() {
        return Err(FrameError::MulticastTarget(target));
    }
    let source_ll = ll_option(&icmp[24..], OPT_SOURCE_LL)?;
    Ok(Some(Solicitation {
        eth_src: eth.src,
        src,
        dst,
        target,
        source_ll,
    }))
}

/// The IPv6 source and destination of a header known to be complete.
fn addrs(ip: &[u8]) -> (Ipv6Addr, Ipv6Addr) {
    (
        Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).expect("16 bytes")),
        Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).expect("16 bytes")),
    )
}

/// The ICMPv6 message of type `want` in `frame`, checked as RFC 4861 requires of ND
/// messages (hop limit 255, code 0, at least 24 bytes, valid checksum). `Ok(None)`: another
/// message.
fn checked_icmp(frame: &[u8], want: u8) -> Result<Option<(Ethernet, &[u8])>, FrameError> {
    let (eth, ip) = Ethernet::parse(frame)?;
    if eth.ethertype != ETHERTYPE_IPV6 {
        return Err(FrameError::EtherType(eth.ethertype));
    }
    if ip.len() < IPV6_HEADER {
        return Err(FrameError::TooShort(frame.len()));
    }
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let next_header = ip[6];
    let hop_limit = ip[7];
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).expect("16 bytes"));
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).expect("16 bytes"));
    if next_header != ICMPV6 {
        return Ok(None);
    }
    let available = ip.len() - IPV6_HEADER;
    if payload_len > available {
        return Err(FrameError::PayloadLength {
            payload: payload_len,
            available,
        });
    }
    let icmp = &ip[IPV6_HEADER..IPV6_HEADER + payload_len];
    if icmp.len() < 4 {
        return Err(FrameError::TooShort(frame.len()));
    }
    if icmp[0] != want {
        return Ok(None);
    }
    if icmp[1] != 0 {
        return Err(FrameError::IcmpType(icmp[0], icmp[1]));
    }
    if icmp.len() < 24 {
        return Err(FrameError::TooShort(frame.len()));
    }
    if hop_limit != 255 {
        return Err(FrameError::HopLimit(hop_limit));
    }
    if icmpv6_checksum(&src, &dst, icmp) != 0 {
        return Err(FrameError::Checksum);
    }
    Ok(Some((eth, icmp)))
}

/// Emits a Neighbor Advertisement frame.
pub fn emit_advertisement(na: &Advertisement) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[TYPE_NA, 0, 0, 0]);
    let flags = (if na.solicited { 0x40 } else { 0 }) | (if na.override_ { 0x20 } else { 0 });
    icmp.extend_from_slice(&[flags, 0, 0, 0]);
    icmp.extend_from_slice(&na.target.octets());
    icmp.extend_from_slice(&[OPT_TARGET_LL, 1]);
    icmp.extend_from_slice(&na.target_ll);
    let sum = icmpv6_checksum(&na.src, &na.dst, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut out = Vec::with_capacity(Ethernet::LEN + IPV6_HEADER + icmp.len());
    Ethernet {
        dst: na.eth_dst,
        src: na.eth_src,
        ethertype: ETHERTYPE_IPV6,
    }
    .emit(&mut out);
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    out.extend_from_slice(&[ICMPV6, 255]);
    out.extend_from_slice(&na.src.octets());
    out.extend_from_slice(&na.dst.octets());
    out.extend_from_slice(&icmp);
    out
}

/// The solicited advertisement answering `ns` for its target at `our_mac`. A DAD probe
/// (unspecified source) is answered to all nodes with S=0, as RFC 4861 7.2.4 says.
pub fn answer(ns: &Solicitation, our_mac: Mac) -> Vec<u8> {
    let (dst, eth_dst, solicited) = if ns.src.is_unspecified() {
        (ALL_NODES, multicast_mac(ALL_NODES), false)
    } else {
        (ns.src, ns.source_ll.unwrap_or(ns.eth_src), true)
    };
    emit_advertisement(&Advertisement {
        eth_dst,
        eth_src: our_mac,
        // The announced address itself: it is ours on this segment while we announce it.
        src: ns.target,
        dst,
        target: ns.target,
        solicited,
        override_: true,
        target_ll: our_mac,
    })
}

/// The unsolicited advertisement sent on takeover: to all nodes, S=0, O=1.
pub fn unsolicited(target: Ipv6Addr, our_mac: Mac) -> Vec<u8> {
    emit_advertisement(&Advertisement {
        eth_dst: multicast_mac(ALL_NODES),
        eth_src: our_mac,
        src: target,
        dst: ALL_NODES,
        target,
        solicited: false,
        override_: true,
        target_ll: our_mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Mac = [0x02, 0, 0, 0, 0, 1];
    const CLIENT: Mac = [0x02, 0, 0, 0, 0, 0x64];

    /// A solicitation as a host sends it (built by hand, independent of the emit code).
    fn ns_frame(src: Ipv6Addr, target: Ipv6Addr, with_ll: bool, hop: u8) -> Vec<u8> {
        let dst = solicited_node(target);
        let mut icmp = vec![TYPE_NS, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&target.octets());
        if with_ll {
            icmp.extend_from_slice(&[OPT_SOURCE_LL, 1]);
            icmp.extend_from_slice(&CLIENT);
        }
        let sum = icmpv6_checksum(&src, &dst, &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut f = Vec::new();
        f.extend_from_slice(&multicast_mac(dst));
        f.extend_from_slice(&CLIENT);
        f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        f.extend_from_slice(&[ICMPV6, hop]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&icmp);
        f
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn solicited_node_group_and_mac() {
        let g = solicited_node(v6("2001:db8:0:1::abcd:1234"));
        assert_eq!(g, v6("ff02::1:ffcd:1234"));
        assert_eq!(multicast_mac(g), [0x33, 0x33, 0xff, 0xcd, 0x12, 0x34]);
    }

    #[test]
    fn checksum_matches_a_known_packet() {
        // Verified independently: a correct message including its checksum sums to zero.
        let f = ns_frame(v6("2001:db8:0:1::100"), v6("2001:db8:0:1::200"), true, 255);
        let icmp = &f[54..];
        assert_eq!(
            icmpv6_checksum(
                &v6("2001:db8:0:1::100"),
                &solicited_node(v6("2001:db8:0:1::200")),
                icmp
            ),
            0
        );
    }

    #[test]
    fn solicitation_parses() {
        let f = ns_frame(v6("2001:db8:0:1::100"), v6("2001:db8:0:1::200"), true, 255);
        let ns = parse_solicitation(&f).unwrap().unwrap();
        assert_eq!(ns.target, v6("2001:db8:0:1::200"));
        assert_eq!(ns.src, v6("2001:db8:0:1::100"));
        assert_eq!(ns.source_ll, Some(CLIENT));
        assert_eq!(ns.dst, solicited_node(ns.target));
    }

    #[test]
    fn answer_round_trips_with_flags_and_option() {
        let f = ns_frame(v6("2001:db8:0:1::100"), v6("2001:db8:0:1::200"), true, 255);
        let ns = parse_solicitation(&f).unwrap().unwrap();
        let na = answer(&ns, ME);
        let (eth, ip) = Ethernet::parse(&na).unwrap();
        assert_eq!(
            (eth.dst, eth.src, eth.ethertype),
            (CLIENT, ME, ETHERTYPE_IPV6)
        );
        assert_eq!(ip[7], 255, "hop limit");
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
        assert_eq!(dst, v6("2001:db8:0:1::100"));
        let icmp = &ip[40..];
        assert_eq!(icmp[0], TYPE_NA);
        assert_eq!(icmp[4], 0x60, "S and O set, R clear");
        assert_eq!(&icmp[8..24], &v6("2001:db8:0:1::200").octets());
        assert_eq!(&icmp[24..26], &[OPT_TARGET_LL, 1]);
        assert_eq!(&icmp[26..32], &ME);
        assert_eq!(icmpv6_checksum(&ns.target, &dst, icmp), 0);
    }

    #[test]
    fn dad_probe_and_unsolicited_go_to_all_nodes_without_s() {
        let f = ns_frame(Ipv6Addr::UNSPECIFIED, v6("2001:db8::200"), false, 255);
        let ns = parse_solicitation(&f).unwrap().unwrap();
        for frame in [answer(&ns, ME), unsolicited(v6("2001:db8::200"), ME)] {
            assert_eq!(&frame[0..6], &multicast_mac(ALL_NODES));
            assert_eq!(&frame[38..54], &ALL_NODES.octets());
            assert_eq!(frame[54 + 4], 0x20, "O only");
        }
    }

    #[test]
    fn malformed_solicitations_are_errors() {
        let src = v6("2001:db8::100");
        let target = v6("2001:db8::200");
        assert_eq!(
            parse_solicitation(&ns_frame(src, target, true, 64)),
            Err(FrameError::HopLimit(64))
        );
        let mut f = ns_frame(src, target, true, 255);
        let last = f.len() - 1;
        f[last] ^= 0xff;
        assert_eq!(parse_solicitation(&f), Err(FrameError::Checksum));
        let f = ns_frame(src, target, true, 255);
        assert!(parse_solicitation(&f[..f.len() - 10]).is_err());
        let mut f = ns_frame(src, target, true, 255);
        f[54 + 25] = 0; // option length 0
        let sum_fix = {
            let dst = solicited_node(target);
            f[56] = 0;
            f[57] = 0;
            icmpv6_checksum(&src, &dst, &f[54..])
        };
        f[56..58].copy_from_slice(&sum_fix.to_be_bytes());
        assert_eq!(parse_solicitation(&f), Err(FrameError::OptionLength));
        // Not an NS: ignored, not malformed.
        let mut f = ns_frame(src, target, true, 255);
        f[20] = 17;
        assert_eq!(parse_solicitation(&f), Ok(None));
    }

    #[test]
    fn advertisements_parse_as_claims() {
        let na = unsolicited(v6("2001:db8::200"), ME);
        let claim = parse_advertisement(&na).unwrap().unwrap();
        assert_eq!(claim.target, v6("2001:db8::200"));
        assert_eq!(claim.target_ll, Some(ME));
        assert_eq!(parse_solicitation(&na), Ok(None));
        let ns = ns_frame(v6("2001:db8::100"), v6("2001:db8::200"), true, 255);
        assert_eq!(parse_advertisement(&ns), Ok(None));
    }

    #[test]
    fn parse_never_panics_on_garbage() {
        let base = ns_frame(v6("2001:db8::100"), v6("2001:db8::200"), true, 255);
        let mut seed = 11u64;
        for i in 0..2000 {
            let mut f = base.clone();
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let pos = (seed >> 33) as usize % f.len();
            f[pos] = (seed >> 20) as u8;
            f.truncate(f.len() - (i % 30));
            let _ = parse_solicitation(&f);
        }
    }
}
