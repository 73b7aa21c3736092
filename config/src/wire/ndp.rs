//! IPv6 neighbor discovery over Ethernet (RFC 4861): the IPv6 header, ICMPv6 Neighbor
//! Solicitation and Advertisement messages, and their link-layer address options.

use std::net::Ipv6Addr;

use super::ethernet::{self, EtherType, EthernetRepr};
use super::{Field, L2Error, Mac, Rest};

/// ff02::1, all nodes.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Neighbor discovery messages are sent, and must be received, with this hop limit.
pub const ND_HOP_LIMIT: u8 = 255;

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

fn is_solicited_node(addr: &Ipv6Addr) -> bool {
    let s = addr.segments();
    s[..6] == [0xff02, 0, 0, 0, 0, 1] && s[6] >> 8 == 0xff
}

/// The Ethernet multicast MAC of an IPv6 multicast group (33:33 + last 32 bits, RFC 2464).
pub fn multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    Mac([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// IPv6 next header values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHeader {
    Icmpv6,
    Unknown(u8),
}

impl From<u8> for NextHeader {
    fn from(v: u8) -> NextHeader {
        match v {
            58 => NextHeader::Icmpv6,
            other => NextHeader::Unknown(other),
        }
    }
}

impl From<NextHeader> for u8 {
    fn from(n: NextHeader) -> u8 {
        match n {
            NextHeader::Icmpv6 => 58,
            NextHeader::Unknown(v) => v,
        }
    }
}

mod ipv6_field {
    use super::{Field, Rest};
    pub const VER_TC_FLOW: Field = 0..4;
    pub const LENGTH: Field = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
    pub const PAYLOAD: Rest = 40..;
}

/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = ipv6_field::PAYLOAD.start;

fn ipv6_at(b: &[u8], f: Field) -> Ipv6Addr {
    <[u8; 16]>::try_from(&b[f])
        .map(Ipv6Addr::from)
        .unwrap_or(Ipv6Addr::UNSPECIFIED)
}

/// A read/write view of an IPv6 packet.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    pub fn new_unchecked(buffer: T) -> Ipv6Packet<T> {
        Ipv6Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Ipv6Packet<T>, L2Error> {
        let p = Ipv6Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the header is whole and the payload length fits the buffer.
    pub fn check_len(&self) -> Result<(), L2Error> {
        let len = self.buffer.as_ref().len();
        if len < IPV6_HEADER_LEN {
            return Err(L2Error::Truncated {
                layer: "IPv6 packet",
                len,
                need: IPV6_HEADER_LEN,
            });
        }
        let available = len - IPV6_HEADER_LEN;
        let payload = usize::from(self.payload_len());
        if payload > available {
            return Err(L2Error::PayloadLength { payload, available });
        }
        Ok(())
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[ipv6_field::VER_TC_FLOW.start] >> 4
    }

    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[ipv6_field::LENGTH];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn next_header(&self) -> NextHeader {
        NextHeader::from(self.buffer.as_ref()[ipv6_field::NXT_HDR])
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[ipv6_field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        ipv6_at(self.buffer.as_ref(), ipv6_field::SRC_ADDR)
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        ipv6_at(self.buffer.as_ref(), ipv6_field::DST_ADDR)
    }

    /// The payload as its length field says (Ethernet padding excluded).
    pub fn payload(&self) -> &[u8] {
        let end = IPV6_HEADER_LEN + usize::from(self.payload_len());
        &self.buffer.as_ref()[IPV6_HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets version 6 with traffic class and flow label zero.
    pub fn set_version_6(&mut self) {
        self.buffer.as_mut()[ipv6_field::VER_TC_FLOW].copy_from_slice(&[0x60, 0, 0, 0]);
    }

    pub fn set_payload_len(&mut self, v: u16) {
        self.buffer.as_mut()[ipv6_field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_next_header(&mut self, n: NextHeader) {
        self.buffer.as_mut()[ipv6_field::NXT_HDR] = n.into();
    }

    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[ipv6_field::HOP_LIMIT] = v;
    }

    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[ipv6_field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[ipv6_field::DST_ADDR].copy_from_slice(&a.octets());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[ipv6_field::PAYLOAD]
    }
}

/// An IPv6 header in typed form (traffic class and flow label are not kept: ND sends zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub next_header: NextHeader,
    pub payload_len: usize,
    pub hop_limit: u8,
}

impl Ipv6Repr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv6Packet<T>) -> Result<Ipv6Repr, L2Error> {
        packet.check_len()?;
        if packet.version() != 6 {
            return Err(L2Error::IpVersion(packet.version()));
        }
        Ok(Ipv6Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        IPV6_HEADER_LEN
    }

    /// Writes the header; `packet` must hold at least [`IPV6_HEADER_LEN`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv6Packet<T>) {
        packet.set_version_6();
        packet.set_payload_len(u16::try_from(self.payload_len).unwrap_or(u16::MAX));
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

/// ICMPv6 message types met on a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Icmpv6Type {
    RouterSolicit,
    RouterAdvert,
    NeighborSolicit,
    NeighborAdvert,
    Redirect,
    Unknown(u8),
}

impl From<u8> for Icmpv6Type {
    fn from(v: u8) -> Icmpv6Type {
        match v {
            133 => Icmpv6Type::RouterSolicit,
            134 => Icmpv6Type::RouterAdvert,
            135 => Icmpv6Type::NeighborSolicit,
            136 => Icmpv6Type::NeighborAdvert,
            137 => Icmpv6Type::Redirect,
            other => Icmpv6Type::Unknown(other),
        }
    }
}

impl From<Icmpv6Type> for u8 {
    fn from(t: Icmpv6Type) -> u8 {
        match t {
            Icmpv6Type::RouterSolicit => 133,
            Icmpv6Type::RouterAdvert => 134,
            Icmpv6Type::NeighborSolicit => 135,
            Icmpv6Type::NeighborAdvert => 136,
            Icmpv6Type::Redirect => 137,
            Icmpv6Type::Unknown(v) => v,
        }
    }
}

/// Neighbor discovery option types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NdiscOptionType {
    SourceLinkLayerAddr,
    TargetLinkLayerAddr,
    Unknown(u8),
}

impl From<u8> for NdiscOptionType {
    fn from(v: u8) -> NdiscOptionType {
        match v {
            1 => NdiscOptionType::SourceLinkLayerAddr,
            2 => NdiscOptionType::TargetLinkLayerAddr,
            other => NdiscOptionType::Unknown(other),
        }
    }
}

impl From<NdiscOptionType> for u8 {
    fn from(t: NdiscOptionType) -> u8 {
        match t {
            NdiscOptionType::SourceLinkLayerAddr => 1,
            NdiscOptionType::TargetLinkLayerAddr => 2,
            NdiscOptionType::Unknown(v) => v,
        }
    }
}

mod icmp_field {
    use super::{Field, Rest};
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    /// Neighbor Advertisement flags (R, S, O); reserved in a solicitation.
    pub const FLAGS: usize = 4;
    pub const TARGET: Field = 8..24;
    pub const OPTIONS: Rest = 24..;
}

mod option_field {
    use super::Field;
    pub const TYPE: usize = 0;
    /// In units of 8 octets, the type and length bytes included.
    pub const LENGTH: usize = 1;
    pub const LINK_LAYER_ADDR: Field = 2..8;
}

/// Length of a Neighbor Solicitation or Advertisement without options.
pub const NDISC_LEN: usize = icmp_field::OPTIONS.start;
/// A link-layer address option for Ethernet: 1 unit of 8 octets.
const LL_OPTION_LEN: usize = 8;
const OPTION_UNIT: usize = 8;

const FLAG_ROUTER: u8 = 0x80;
const FLAG_SOLICITED: u8 = 0x40;
const FLAG_OVERRIDE: u8 = 0x20;

/// A read/write view of an ICMPv6 neighbor discovery message.
#[derive(Debug, Clone)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    pub fn new_unchecked(buffer: T) -> Icmpv6Packet<T> {
        Icmpv6Packet { buffer }
    }

    /// Checks the common ICMPv6 header (type, code, checksum) is whole.
    pub fn check_header_len(&self) -> Result<(), L2Error> {
        self.check(icmp_field::FLAGS, "ICMPv6 message")
    }

    /// Checks a whole NS/NA body (up to the target address) is there.
    pub fn check_len(&self) -> Result<(), L2Error> {
        self.check(NDISC_LEN, "neighbor discovery message")
    }

    fn check(&self, need: usize, layer: &'static str) -> Result<(), L2Error> {
        let len = self.buffer.as_ref().len();
        if len < need {
            return Err(L2Error::Truncated { layer, len, need });
        }
        Ok(())
    }

    pub fn msg_type(&self) -> Icmpv6Type {
        Icmpv6Type::from(self.buffer.as_ref()[icmp_field::TYPE])
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[icmp_field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        let b = &self.buffer.as_ref()[icmp_field::CHECKSUM];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn neighbor_flags(&self) -> NeighborFlags {
        let f = self.buffer.as_ref()[icmp_field::FLAGS];
        NeighborFlags {
            router: f & FLAG_ROUTER != 0,
            solicited: f & FLAG_SOLICITED != 0,
            override_: f & FLAG_OVERRIDE != 0,
        }
    }

    pub fn target_addr(&self) -> Ipv6Addr {
        ipv6_at(self.buffer.as_ref(), icmp_field::TARGET)
    }

    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[icmp_field::OPTIONS]
    }

    /// Whether the checksum over the pseudo-header and the message is right.
    pub fn verify_checksum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        icmpv6_checksum(src, dst, self.buffer.as_ref()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    pub fn set_msg_type(&mut self, t: Icmpv6Type) {
        self.buffer.as_mut()[icmp_field::TYPE] = t.into();
    }

    pub fn set_msg_code(&mut self, c: u8) {
        self.buffer.as_mut()[icmp_field::CODE] = c;
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[icmp_field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the flags byte and clears the 29 reserved bits after it.
    pub fn set_neighbor_flags(&mut self, f: NeighborFlags) {
        let mut b = 0;
        if f.router {
            b |= FLAG_ROUTER;
        }
        if f.solicited {
            b |= FLAG_SOLICITED;
        }
        if f.override_ {
            b |= FLAG_OVERRIDE;
        }
        self.buffer.as_mut()[icmp_field::FLAGS..icmp_field::TARGET.start]
            .copy_from_slice(&[b, 0, 0, 0]);
    }

    pub fn set_target_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[icmp_field::TARGET].copy_from_slice(&a.octets());
    }

    pub fn options_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[icmp_field::OPTIONS]
    }

    /// Computes and stores the checksum (the checksum field is taken as zero).
    pub fn fill_checksum(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let sum = icmpv6_checksum(src, dst, self.buffer.as_ref());
        self.set_checksum(sum);
    }
}

/// The ICMPv6 checksum over the pseudo-header and `icmp` (with its checksum field zero or
/// not: a correct message sums to zero).
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for chunk in bytes.chunks(2) {
            let word = match chunk {
                [a, b] => u16::from_be_bytes([*a, *b]),
                [a] => u16::from_be_bytes([*a, 0]),
                _ => 0,
            };
            sum += u64::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, u8::from(NextHeader::Icmpv6)]);
    add(icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The R, S and O flags of a Neighbor Advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NeighborFlags {
    pub router: bool,
    pub solicited: bool,
    pub override_: bool,
}

/// The link-layer address option of `kind` in `options`, checking every option is well
/// formed (RFC 4861 7.1.1/7.1.2: every option has a non-zero length and none is cut off).
/// Unknown options are skipped, as the RFC requires.
fn ll_option(mut options: &[u8], kind: NdiscOptionType) -> Result<Option<Mac>, L2Error> {
    let mut found = None;
    while !options.is_empty() {
        if options.len() <= option_field::LENGTH {
            return Err(L2Error::OptionTruncated(options.len()));
        }
        let len = usize::from(options[option_field::LENGTH]) * OPTION_UNIT;
        if len == 0 {
            return Err(L2Error::OptionLength);
        }
        if len > options.len() {
            return Err(L2Error::OptionTruncated(options.len()));
        }
        if NdiscOptionType::from(options[option_field::TYPE]) == kind && found.is_none() {
            found = Mac::from_bytes(&options[option_field::LINK_LAYER_ADDR]);
        }
        options = &options[len..];
    }
    Ok(found)
}

/// A Neighbor Solicitation or Advertisement in typed form (other options are not kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NdiscRepr {
    NeighborSolicit {
        target_addr: Ipv6Addr,
        /// The Source Link-Layer Address option.
        lladdr: Option<Mac>,
    },
    NeighborAdvert {
        flags: NeighborFlags,
        target_addr: Ipv6Addr,
        /// The Target Link-Layer Address option.
        lladdr: Option<Mac>,
    },
}

impl NdiscRepr {
    /// Parses and validates an NS or NA sent from `src` to `dst` as RFC 4861 7.1 requires
    /// of the message itself: code 0, at least 24 bytes, valid checksum, well-formed
    /// options, a target that is not multicast.
    pub fn parse<T: AsRef<[u8]>>(
        packet: &Icmpv6Packet<T>,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
    ) -> Result<NdiscRepr, L2Error> {
        packet.check_header_len()?;
        let t = packet.msg_type();
        if !matches!(t, Icmpv6Type::NeighborSolicit | Icmpv6Type::NeighborAdvert)
            || packet.msg_code() != 0
        {
            return Err(L2Error::IcmpType(t.into(), packet.msg_code()));
        }
        packet.check_len()?;
        if !packet.verify_checksum(src, dst) {
            return Err(L2Error::Checksum);
        }
        let target_addr = packet.target_addr();
        if target_addr.is_multicast() {
            return Err(L2Error::MulticastTarget(target_addr));
        }
        Ok(match t {
            Icmpv6Type::NeighborSolicit => NdiscRepr::NeighborSolicit {
                target_addr,
                lladdr: ll_option(packet.options(), NdiscOptionType::SourceLinkLayerAddr)?,
            },
            _ => NdiscRepr::NeighborAdvert {
                flags: packet.neighbor_flags(),
                target_addr,
                lladdr: ll_option(packet.options(), NdiscOptionType::TargetLinkLayerAddr)?,
            },
        })
    }

    pub fn target_addr(&self) -> Ipv6Addr {
        match self {
            NdiscRepr::NeighborSolicit { target_addr, .. }
            | NdiscRepr::NeighborAdvert { target_addr, .. } => *target_addr,
        }
    }

    pub fn lladdr(&self) -> Option<Mac> {
        match self {
            NdiscRepr::NeighborSolicit { lladdr, .. }
            | NdiscRepr::NeighborAdvert { lladdr, .. } => *lladdr,
        }
    }

    pub fn buffer_len(&self) -> usize {
        NDISC_LEN + self.lladdr().map_or(0, |_| LL_OPTION_LEN)
    }

    /// Writes the message with its checksum for `src` → `dst`; `packet` must hold
    /// [`NdiscRepr::buffer_len`] bytes exactly.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Icmpv6Packet<T>,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
    ) {
        packet.set_msg_code(0);
        let option = match *self {
            NdiscRepr::NeighborSolicit { target_addr, .. } => {
                packet.set_msg_type(Icmpv6Type::NeighborSolicit);
                packet.set_neighbor_flags(NeighborFlags::default());
                packet.set_target_addr(target_addr);
                NdiscOptionType::SourceLinkLayerAddr
            }
            NdiscRepr::NeighborAdvert {
                flags, target_addr, ..
            } => {
                packet.set_msg_type(Icmpv6Type::NeighborAdvert);
                packet.set_neighbor_flags(flags);
                packet.set_target_addr(target_addr);
                NdiscOptionType::TargetLinkLayerAddr
            }
        };
        if let Some(mac) = self.lladdr() {
            let opts = packet.options_mut();
            opts[option_field::TYPE] = option.into();
            opts[option_field::LENGTH] = (LL_OPTION_LEN / OPTION_UNIT) as u8;
            opts[option_field::LINK_LAYER_ADDR].copy_from_slice(&mac.0);
        }
        packet.fill_checksum(src, dst);
    }
}

/// A whole neighbor discovery frame: Ethernet, IPv6 and the NS/NA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdpFrame {
    pub ethernet: EthernetRepr,
    pub ip: Ipv6Repr,
    pub ndisc: NdiscRepr,
}

impl NdpFrame {
    /// Parses an Ethernet frame carrying an NS or NA. `Ok(None)`: a well-formed IPv6 frame
    /// that carries something else (nothing for neighbor discovery to do); `Err`: malformed
    /// or not valid as RFC 4861 7.1 defines it (hop limit 255; from :: only without a
    /// source link-layer address option and only to a solicited-node group).
    pub fn parse(frame: &[u8]) -> Result<Option<NdpFrame>, L2Error> {
        let eth = ethernet::Frame::new_checked(frame)?;
        let ethernet = EthernetRepr::parse(&eth)?;
        if ethernet.ethertype != EtherType::Ipv6 {
            return Err(L2Error::EtherType(ethernet.ethertype.into()));
        }
        let ip_packet = Ipv6Packet::new_checked(eth.payload())?;
        let ip = Ipv6Repr::parse(&ip_packet)?;
        if ip.next_header != NextHeader::Icmpv6 {
            return Ok(None);
        }
        let icmp = Icmpv6Packet::new_unchecked(ip_packet.payload());
        icmp.check_header_len()?;
        if !matches!(
            icmp.msg_type(),
            Icmpv6Type::NeighborSolicit | Icmpv6Type::NeighborAdvert
        ) {
            return Ok(None);
        }
        if ip.hop_limit != ND_HOP_LIMIT {
            return Err(L2Error::HopLimit(ip.hop_limit));
        }
        let ndisc = NdiscRepr::parse(&icmp, &ip.src_addr, &ip.dst_addr)?;
        if let NdiscRepr::NeighborSolicit { lladdr, .. } = ndisc
            && ip.src_addr.is_unspecified()
        {
            if lladdr.is_some() {
                return Err(L2Error::UnspecifiedWithLinkLayer);
            }
            if !is_solicited_node(&ip.dst_addr) {
                return Err(L2Error::UnspecifiedToNonSolicited(ip.dst_addr));
            }
        }
        Ok(Some(NdpFrame {
            ethernet,
            ip,
            ndisc,
        }))
    }

    /// The frame's bytes (with the IPv6 payload length and the checksum computed, hop limit
    /// as given), padded to the Ethernet minimum.
    pub fn emit(&self) -> Vec<u8> {
        let icmp_len = self.ndisc.buffer_len();
        let ip = Ipv6Repr {
            payload_len: icmp_len,
            ..self.ip
        };
        ethernet::emit_frame(&self.ethernet, IPV6_HEADER_LEN + icmp_len, |p| {
            let mut packet = Ipv6Packet::new_unchecked(p);
            ip.emit(&mut packet);
            let mut icmp = Icmpv6Packet::new_unchecked(&mut packet.payload_mut()[..icmp_len]);
            self.ndisc.emit(&mut icmp, &ip.src_addr, &ip.dst_addr);
        })
    }

    fn advertisement(
        eth_dst: Mac,
        our_mac: Mac,
        dst: Ipv6Addr,
        target: Ipv6Addr,
        solicited: bool,
    ) -> NdpFrame {
        NdpFrame {
            ethernet: EthernetRepr {
                dst_addr: eth_dst,
                src_addr: our_mac,
                ethertype: EtherType::Ipv6,
            },
            ip: Ipv6Repr {
                // The announced address itself: it is ours on this segment while announced.
                src_addr: target,
                dst_addr: dst,
                next_header: NextHeader::Icmpv6,
                payload_len: NDISC_LEN + LL_OPTION_LEN,
                hop_limit: ND_HOP_LIMIT,
            },
            ndisc: NdiscRepr::NeighborAdvert {
                flags: NeighborFlags {
                    router: false,
                    solicited,
                    override_: true,
                },
                target_addr: target,
                lladdr: Some(our_mac),
            },
        }
    }
}

/// The solicited advertisement answering a solicitation `ns` (as parsed) for its target at
/// `our_mac`. A duplicate address detection probe (from ::) is answered to all nodes with
/// S=0, as RFC 4861 7.2.4 says.
pub fn answer(ns: &NdpFrame, our_mac: Mac) -> NdpFrame {
    let target = ns.ndisc.target_addr();
    if ns.ip.src_addr.is_unspecified() {
        NdpFrame::advertisement(multicast_mac(ALL_NODES), our_mac, ALL_NODES, target, false)
    } else {
        let eth_dst = ns.ndisc.lladdr().unwrap_or(ns.ethernet.src_addr);
        NdpFrame::advertisement(eth_dst, our_mac, ns.ip.src_addr, target, true)
    }
}

/// The unsolicited advertisement sent on takeover: to all nodes, S=0, O=1.
pub fn unsolicited(target: Ipv6Addr, our_mac: Mac) -> NdpFrame {
    NdpFrame::advertisement(multicast_mac(ALL_NODES), our_mac, ALL_NODES, target, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{self, CLIENT_MAC, RESPONDER_MAC, hex};
    use proptest::prelude::*;

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn captured_ns() -> NdpFrame {
        NdpFrame {
            ethernet: EthernetRepr {
                dst_addr: Mac([0x33, 0x33, 0xff, 0x00, 0x02, 0x00]),
                src_addr: CLIENT_MAC,
                ethertype: EtherType::Ipv6,
            },
            ip: Ipv6Repr {
                src_addr: v6("fe80::ff:fe00:64"),
                dst_addr: v6("ff02::1:ff00:200"),
                next_header: NextHeader::Icmpv6,
                payload_len: 32,
                hop_limit: 255,
            },
            ndisc: NdiscRepr::NeighborSolicit {
                target_addr: v6("2001:db8::200"),
                lladdr: Some(CLIENT_MAC),
            },
        }
    }

    #[test]
    fn deconstruct() {
        let bytes = hex(fixtures::NDISC6_SOLICITATION);
        let ip = Ipv6Packet::new_checked(&bytes[14..]).unwrap();
        assert_eq!(ip.version(), 6);
        assert_eq!(ip.payload_len(), 32);
        assert_eq!(ip.next_header(), NextHeader::Icmpv6);
        assert_eq!(ip.hop_limit(), 255);
        assert_eq!(ip.src_addr(), v6("fe80::ff:fe00:64"));
        assert_eq!(ip.dst_addr(), v6("ff02::1:ff00:200"));
        let icmp = Icmpv6Packet::new_unchecked(ip.payload());
        assert_eq!(icmp.msg_type(), Icmpv6Type::NeighborSolicit);
        assert_eq!(icmp.msg_code(), 0);
        assert_eq!(icmp.checksum(), 0x479d);
        assert_eq!(icmp.target_addr(), v6("2001:db8::200"));
        assert_eq!(icmp.options(), &[1, 1, 2, 0, 0, 0, 0, 0x64]);
        assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));

        let bytes = hex(fixtures::KERNEL_ADVERTISEMENT);
        let ip = Ipv6Packet::new_checked(&bytes[14..]).unwrap();
        let icmp = Icmpv6Packet::new_unchecked(ip.payload());
        assert_eq!(icmp.msg_type(), Icmpv6Type::NeighborAdvert);
        assert_eq!(
            icmp.neighbor_flags(),
            NeighborFlags {
                router: false,
                solicited: true,
                override_: true
            }
        );
    }

    #[test]
    fn construct() {
        let bytes = hex(fixtures::KERNEL_ADVERTISEMENT);
        let mut out = vec![0u8; bytes.len() - 14];
        let mut ip = Ipv6Packet::new_unchecked(&mut out[..]);
        ip.set_version_6();
        ip.set_payload_len(32);
        ip.set_next_header(NextHeader::Icmpv6);
        ip.set_hop_limit(255);
        ip.set_src_addr(v6("2001:db8::200"));
        ip.set_dst_addr(v6("fe80::ff:fe00:64"));
        let mut icmp = Icmpv6Packet::new_unchecked(ip.payload_mut());
        icmp.set_msg_type(Icmpv6Type::NeighborAdvert);
        icmp.set_msg_code(0);
        icmp.set_neighbor_flags(NeighborFlags {
            router: false,
            solicited: true,
            override_: true,
        });
        icmp.set_target_addr(v6("2001:db8::200"));
        icmp.options_mut()
            .copy_from_slice(&[2, 1, 2, 0, 0, 0, 0, 0x01]);
        icmp.fill_checksum(&v6("2001:db8::200"), &v6("fe80::ff:fe00:64"));
        assert_eq!(&out[..], &bytes[14..]);
    }

    #[test]
    fn parse() {
        let ns = NdpFrame::parse(&hex(fixtures::NDISC6_SOLICITATION))
            .unwrap()
            .unwrap();
        assert_eq!(ns, captured_ns());
        let na = NdpFrame::parse(&hex(fixtures::KERNEL_ADVERTISEMENT))
            .unwrap()
            .unwrap();
        assert_eq!(na.ndisc.lladdr(), Some(RESPONDER_MAC));
        // The kernel's DAD probe: from ::, a nonce option (skipped), no link-layer address.
        let dad = NdpFrame::parse(&hex(fixtures::KERNEL_DAD_SOLICITATION))
            .unwrap()
            .unwrap();
        assert!(dad.ip.src_addr.is_unspecified());
        assert_eq!(
            dad.ndisc,
            NdiscRepr::NeighborSolicit {
                target_addr: v6("2001:db8::300"),
                lladdr: None
            }
        );
        // Another ICMPv6 message: nothing to do.
        assert_eq!(
            NdpFrame::parse(&hex(fixtures::KERNEL_ROUTER_SOLICITATION)),
            Ok(None)
        );
    }

    #[test]
    fn emit() {
        // Our answer to ndisc6's solicitation is, byte for byte, the kernel's answer.
        let ns = NdpFrame::parse(&hex(fixtures::NDISC6_SOLICITATION))
            .unwrap()
            .unwrap();
        assert_eq!(
            answer(&ns, RESPONDER_MAC).emit(),
            hex(fixtures::KERNEL_ADVERTISEMENT)
        );
        // A solicitation emitted from its repr parses back to it.
        let again = NdpFrame::parse(&captured_ns().emit()).unwrap().unwrap();
        assert_eq!(again, captured_ns());
    }

    #[test]
    fn solicited_node_group_and_mac() {
        let g = solicited_node(v6("2001:db8:0:1::abcd:1234"));
        assert_eq!(g, v6("ff02::1:ffcd:1234"));
        assert!(is_solicited_node(&g) && !is_solicited_node(&ALL_NODES));
        assert_eq!(multicast_mac(g), Mac([0x33, 0x33, 0xff, 0xcd, 0x12, 0x34]));
    }

    /// `frame` with its ICMPv6 part replaced by `icmp` (checksum recomputed).
    fn with_icmp(frame: &[u8], src: Ipv6Addr, icmp: &[u8]) -> Vec<u8> {
        let mut out = frame[..14 + 40].to_vec();
        out[18..20].copy_from_slice(&(icmp.len() as u16).to_be_bytes());
        out[22..38].copy_from_slice(&src.octets());
        let dst = ipv6_at(&out[14..], ipv6_field::DST_ADDR);
        let mut icmp = icmp.to_vec();
        icmp[2..4].copy_from_slice(&[0, 0]);
        let sum = icmpv6_checksum(&src, &dst, &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        out.extend_from_slice(&icmp);
        out
    }

    #[test]
    fn invalid_solicitations_are_errors() {
        let good = hex(fixtures::NDISC6_SOLICITATION);
        let src = v6("fe80::ff:fe00:64");
        let icmp = good[54..].to_vec();
        let mut f = good.clone();
        f[21] = 64;
        assert_eq!(NdpFrame::parse(&f), Err(L2Error::HopLimit(64)));
        let mut f = good.clone();
        let last = f.len() - 1;
        f[last] ^= 0xff;
        assert_eq!(NdpFrame::parse(&f), Err(L2Error::Checksum));
        assert!(matches!(
            NdpFrame::parse(&good[..good.len() - 10]),
            Err(L2Error::PayloadLength { .. })
        ));
        // Zero-length option.
        let mut z = icmp.clone();
        z[25] = 0;
        assert_eq!(
            NdpFrame::parse(&with_icmp(&good, src, &z)),
            Err(L2Error::OptionLength)
        );
        // An option cut short: its type byte alone, or fewer bytes than its length says.
        let mut t = icmp[..24].to_vec();
        t.push(1);
        assert_eq!(
            NdpFrame::parse(&with_icmp(&good, src, &t)),
            Err(L2Error::OptionTruncated(1))
        );
        assert_eq!(
            NdpFrame::parse(&with_icmp(&good, src, &icmp[..28])),
            Err(L2Error::OptionTruncated(4))
        );
        // From :: with a source link-layer address option.
        assert_eq!(
            NdpFrame::parse(&with_icmp(&good, Ipv6Addr::UNSPECIFIED, &icmp)),
            Err(L2Error::UnspecifiedWithLinkLayer)
        );
        // Multicast target.
        let mut m = icmp.clone();
        m[8..24].copy_from_slice(&ALL_NODES.octets());
        assert_eq!(
            NdpFrame::parse(&with_icmp(&good, src, &m)),
            Err(L2Error::MulticastTarget(ALL_NODES))
        );
        // Not ICMPv6: ignored, not malformed.
        let mut f = good;
        f[20] = 17;
        assert_eq!(NdpFrame::parse(&f), Ok(None));
    }

    #[test]
    fn dad_probe_and_unsolicited_go_to_all_nodes_without_s() {
        let dad = NdpFrame::parse(&hex(fixtures::KERNEL_DAD_SOLICITATION))
            .unwrap()
            .unwrap();
        for f in [
            answer(&dad, RESPONDER_MAC),
            unsolicited(v6("2001:db8::300"), RESPONDER_MAC),
        ] {
            assert_eq!(f.ethernet.dst_addr, multicast_mac(ALL_NODES));
            assert_eq!(f.ip.dst_addr, ALL_NODES);
            assert_eq!(
                f.ndisc,
                NdiscRepr::NeighborAdvert {
                    flags: NeighborFlags {
                        router: false,
                        solicited: false,
                        override_: true
                    },
                    target_addr: v6("2001:db8::300"),
                    lladdr: Some(RESPONDER_MAC)
                }
            );
            assert_eq!(NdpFrame::parse(&f.emit()).unwrap().unwrap(), f);
        }
    }

    fn any_mac() -> impl Strategy<Value = Mac> {
        any::<[u8; 6]>().prop_map(Mac)
    }

    fn unicast_v6() -> impl Strategy<Value = Ipv6Addr> {
        any::<u128>()
            .prop_map(Ipv6Addr::from)
            .prop_filter("not multicast", |a| !a.is_multicast())
    }

    prop_compose! {
        fn any_frame()(dst in any_mac(), src in any_mac(), ip_src in unicast_v6(), ip_dst in any::<u128>(),
                       target in unicast_v6(), ll in proptest::option::of(any_mac()),
                       advert in any::<bool>(), r in any::<bool>(), s in any::<bool>(), o in any::<bool>()) -> NdpFrame {
            let ndisc = if advert {
                NdiscRepr::NeighborAdvert { flags: NeighborFlags { router: r, solicited: s, override_: o }, target_addr: target, lladdr: ll }
            } else {
                NdiscRepr::NeighborSolicit { target_addr: target, lladdr: ll }
            };
            NdpFrame {
                ethernet: EthernetRepr { dst_addr: dst, src_addr: src, ethertype: EtherType::Ipv6 },
                ip: Ipv6Repr { src_addr: ip_src, dst_addr: Ipv6Addr::from(ip_dst), next_header: NextHeader::Icmpv6,
                               payload_len: ndisc.buffer_len(), hop_limit: ND_HOP_LIMIT },
                ndisc,
            }
        }
    }

    proptest! {
        #[test]
        fn repr_round_trip(f in any_frame()) {
            prop_assert_eq!(NdpFrame::parse(&f.emit()).unwrap().unwrap(), f);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = NdpFrame::parse(&bytes);
        }

        #[test]
        fn mutated_captures_never_panic(which in 0usize..6, pos in 0usize..90, val in any::<u8>(), cut in 0usize..90) {
            let mut f = hex(fixtures::ALL[which]);
            let pos = pos % f.len();
            f[pos] = val;
            f.truncate(f.len().saturating_sub(cut));
            let _ = NdpFrame::parse(&f);
            let _ = crate::wire::arp::ArpFrame::parse(&f);
        }
    }
}
