//! ARP for IPv4 over Ethernet (RFC 826).

use std::net::Ipv4Addr;

use super::ethernet::{self, EtherType, EthernetRepr};
use super::{Field, L2Error, Mac};

/// ARP hardware types (`ar$hrd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hardware {
    Ethernet,
    Unknown(u16),
}

impl From<u16> for Hardware {
    fn from(v: u16) -> Hardware {
        match v {
            1 => Hardware::Ethernet,
            other => Hardware::Unknown(other),
        }
    }
}

impl From<Hardware> for u16 {
    fn from(h: Hardware) -> u16 {
        match h {
            Hardware::Ethernet => 1,
            Hardware::Unknown(v) => v,
        }
    }
}

/// ARP operations (`ar$op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Request,
    Reply,
    Unknown(u16),
}

impl From<u16> for Operation {
    fn from(v: u16) -> Operation {
        match v {
            1 => Operation::Request,
            2 => Operation::Reply,
            other => Operation::Unknown(other),
        }
    }
}

impl From<Operation> for u16 {
    fn from(o: Operation) -> u16 {
        match o {
            Operation::Request => 1,
            Operation::Reply => 2,
            Operation::Unknown(v) => v,
        }
    }
}

mod field {
    use super::Field;
    pub const HTYPE: Field = 0..2;
    pub const PTYPE: Field = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Field = 6..8;
    // The address fields below are for Ethernet (6) / IPv4 (4) lengths, the only ones
    // parsed; other lengths are rejected before these are read.
    pub const SHA: Field = 8..14;
    pub const SPA: Field = 14..18;
    pub const THA: Field = 18..24;
    pub const TPA: Field = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = field::TPA.end;
const IPV4_LEN: u8 = 4;

/// A read/write view of an ARP packet (the Ethernet payload).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Packet<T>, L2Error> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the buffer holds an Ethernet/IPv4-sized packet.
    pub fn check_len(&self) -> Result<(), L2Error> {
        let len = self.buffer.as_ref().len();
        if len < PACKET_LEN {
            return Err(L2Error::Truncated {
                layer: "ARP packet",
                len,
                need: PACKET_LEN,
            });
        }
        Ok(())
    }

    fn u16_at(&self, f: Field) -> u16 {
        let b = &self.buffer.as_ref()[f];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn ipv4_at(&self, f: Field) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[f];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn hardware_type(&self) -> Hardware {
        Hardware::from(self.u16_at(field::HTYPE))
    }

    pub fn protocol_type(&self) -> EtherType {
        EtherType::from(self.u16_at(field::PTYPE))
    }

    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    pub fn operation(&self) -> Operation {
        Operation::from(self.u16_at(field::OPER))
    }

    pub fn source_hardware_addr(&self) -> Mac {
        Mac::from_bytes(&self.buffer.as_ref()[field::SHA]).unwrap_or_default()
    }

    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        self.ipv4_at(field::SPA)
    }

    pub fn target_hardware_addr(&self) -> Mac {
        Mac::from_bytes(&self.buffer.as_ref()[field::THA]).unwrap_or_default()
    }

    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        self.ipv4_at(field::TPA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_u16_at(&mut self, f: Field, v: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_hardware_type(&mut self, h: Hardware) {
        self.set_u16_at(field::HTYPE, h.into());
    }

    pub fn set_protocol_type(&mut self, t: EtherType) {
        self.set_u16_at(field::PTYPE, t.into());
    }

    pub fn set_hardware_len(&mut self, v: u8) {
        self.buffer.as_mut()[field::HLEN] = v;
    }

    pub fn set_protocol_len(&mut self, v: u8) {
        self.buffer.as_mut()[field::PLEN] = v;
    }

    pub fn set_operation(&mut self, o: Operation) {
        self.set_u16_at(field::OPER, o.into());
    }

    pub fn set_source_hardware_addr(&mut self, m: Mac) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&m.0);
    }

    pub fn set_source_protocol_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&a.octets());
    }

    pub fn set_target_hardware_addr(&mut self, m: Mac) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&m.0);
    }

    pub fn set_target_protocol_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&a.octets());
    }
}

/// An Ethernet/IPv4 ARP packet in typed form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    pub operation: Operation,
    pub source_hardware_addr: Mac,
    pub source_protocol_addr: Ipv4Addr,
    pub target_hardware_addr: Mac,
    pub target_protocol_addr: Ipv4Addr,
}

impl ArpRepr {
    /// Parses an Ethernet/IPv4 ARP packet; other hardware or protocol types are errors.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<ArpRepr, L2Error> {
        packet.check_len()?;
        if packet.hardware_type() != Hardware::Ethernet
            || packet.protocol_type() != EtherType::Ipv4
            || usize::from(packet.hardware_len()) != Mac::LEN
            || packet.protocol_len() != IPV4_LEN
        {
            return Err(L2Error::ArpFormat {
                hardware: packet.hardware_type().into(),
                protocol: packet.protocol_type().into(),
                hardware_len: packet.hardware_len(),
                protocol_len: packet.protocol_len(),
            });
        }
        Ok(ArpRepr {
            operation: packet.operation(),
            source_hardware_addr: packet.source_hardware_addr(),
            source_protocol_addr: packet.source_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the packet; `packet` must hold at least [`PACKET_LEN`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_hardware_type(Hardware::Ethernet);
        packet.set_protocol_type(EtherType::Ipv4);
        packet.set_hardware_len(Mac::LEN as u8);
        packet.set_protocol_len(IPV4_LEN);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(self.source_hardware_addr);
        packet.set_source_protocol_addr(self.source_protocol_addr);
        packet.set_target_hardware_addr(self.target_hardware_addr);
        packet.set_target_protocol_addr(self.target_protocol_addr);
    }
}

/// A whole ARP frame: the Ethernet header and the ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpFrame {
    pub ethernet: EthernetRepr,
    pub arp: ArpRepr,
}

impl ArpFrame {
    /// Parses a frame whose EtherType must be ARP (a VLAN tag is an error here: the caller
    /// decides what to do with tagged frames before they reach this parser).
    pub fn parse(frame: &[u8]) -> Result<ArpFrame, L2Error> {
        let eth = ethernet::Frame::new_checked(frame)?;
        let ethernet = EthernetRepr::parse(&eth)?;
        if ethernet.ethertype != EtherType::Arp {
            return Err(L2Error::EtherType(ethernet.ethertype.into()));
        }
        let arp = ArpRepr::parse(&Packet::new_unchecked(eth.payload()))?;
        Ok(ArpFrame { ethernet, arp })
    }

    /// The frame's bytes, padded to the Ethernet minimum.
    pub fn emit(&self) -> Vec<u8> {
        ethernet::emit_frame(&self.ethernet, PACKET_LEN, |p| {
            self.arp.emit(&mut Packet::new_unchecked(p))
        })
    }
}

/// The reply to `request` saying `request.target_protocol_addr` is at `our_mac`.
pub fn reply_to(request: &ArpRepr, our_mac: Mac) -> ArpFrame {
    ArpFrame {
        ethernet: EthernetRepr {
            dst_addr: request.source_hardware_addr,
            src_addr: our_mac,
            ethertype: EtherType::Arp,
        },
        arp: ArpRepr {
            operation: Operation::Reply,
            source_hardware_addr: our_mac,
            source_protocol_addr: request.target_protocol_addr,
            target_hardware_addr: request.source_hardware_addr,
            target_protocol_addr: request.source_protocol_addr,
        },
    }
}

/// The gratuitous frames announcing `ip` at `our_mac`: a broadcast request and a broadcast
/// reply, both with sender = target = `ip` (hosts differ in which one they honour).
pub fn gratuitous(ip: Ipv4Addr, our_mac: Mac) -> [ArpFrame; 2] {
    let ethernet = EthernetRepr {
        dst_addr: Mac::BROADCAST,
        src_addr: our_mac,
        ethertype: EtherType::Arp,
    };
    let mk = |operation, target_hardware_addr| ArpFrame {
        ethernet,
        arp: ArpRepr {
            operation,
            source_hardware_addr: our_mac,
            source_protocol_addr: ip,
            target_hardware_addr,
            target_protocol_addr: ip,
        },
    };
    [
        mk(Operation::Request, Mac::ZERO),
        mk(Operation::Reply, Mac::BROADCAST),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{self, CLIENT_MAC, RESPONDER_MAC, hex};
    use proptest::prelude::*;

    const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
    const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);

    fn request_repr() -> ArpRepr {
        ArpRepr {
            operation: Operation::Request,
            source_hardware_addr: CLIENT_MAC,
            source_protocol_addr: CLIENT_IP,
            target_hardware_addr: Mac::ZERO,
            target_protocol_addr: VIP,
        }
    }

    fn reply_repr() -> ArpRepr {
        ArpRepr {
            operation: Operation::Reply,
            source_hardware_addr: RESPONDER_MAC,
            source_protocol_addr: VIP,
            target_hardware_addr: CLIENT_MAC,
            target_protocol_addr: CLIENT_IP,
        }
    }

    #[test]
    fn deconstruct() {
        let bytes = hex(fixtures::ARPING_REQUEST);
        let p = Packet::new_checked(&bytes[14..]).unwrap();
        assert_eq!(p.hardware_type(), Hardware::Ethernet);
        assert_eq!(p.protocol_type(), EtherType::Ipv4);
        assert_eq!((p.hardware_len(), p.protocol_len()), (6, 4));
        assert_eq!(p.operation(), Operation::Request);
        assert_eq!(p.source_hardware_addr(), CLIENT_MAC);
        assert_eq!(p.source_protocol_addr(), CLIENT_IP);
        assert_eq!(p.target_hardware_addr(), Mac::ZERO);
        assert_eq!(p.target_protocol_addr(), VIP);
    }

    #[test]
    fn construct() {
        let bytes = hex(fixtures::KERNEL_ARP_REPLY);
        let mut out = [0u8; PACKET_LEN];
        let mut p = Packet::new_unchecked(&mut out[..]);
        p.set_hardware_type(Hardware::Ethernet);
        p.set_protocol_type(EtherType::Ipv4);
        p.set_hardware_len(6);
        p.set_protocol_len(4);
        p.set_operation(Operation::Reply);
        p.set_source_hardware_addr(RESPONDER_MAC);
        p.set_source_protocol_addr(VIP);
        p.set_target_hardware_addr(CLIENT_MAC);
        p.set_target_protocol_addr(CLIENT_IP);
        assert_eq!(&out[..], &bytes[14..]);
    }

    #[test]
    fn parse() {
        let req = ArpFrame::parse(&hex(fixtures::ARPING_REQUEST)).unwrap();
        assert_eq!(req.arp, request_repr());
        assert_eq!(req.ethernet.dst_addr, Mac::BROADCAST);
        let rep = ArpFrame::parse(&hex(fixtures::KERNEL_ARP_REPLY)).unwrap();
        assert_eq!(rep.arp, reply_repr());
        assert_eq!(
            (rep.ethernet.src_addr, rep.ethernet.dst_addr),
            (RESPONDER_MAC, CLIENT_MAC)
        );
    }

    #[test]
    fn emit() {
        // Our reply to the captured request is the kernel's reply, padded to 60 bytes.
        let req = ArpFrame::parse(&hex(fixtures::ARPING_REQUEST)).unwrap();
        let ours = reply_to(&req.arp, RESPONDER_MAC).emit();
        let mut kernel = hex(fixtures::KERNEL_ARP_REPLY);
        kernel.resize(60, 0);
        assert_eq!(ours, kernel);
    }

    #[test]
    fn malformed_packets_are_rejected() {
        let good = hex(fixtures::ARPING_REQUEST);
        assert!(matches!(
            ArpFrame::parse(&good[..20]),
            Err(L2Error::Truncated { len: 6, .. })
        ));
        let mut bad = good.clone();
        bad[14 + 5] = 16; // IPv6-sized protocol addresses
        assert!(matches!(
            ArpFrame::parse(&bad),
            Err(L2Error::ArpFormat {
                protocol_len: 16,
                ..
            })
        ));
        let mut bad = good.clone();
        bad[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(ArpFrame::parse(&bad), Err(L2Error::EtherType(0x0800)));
        // An unknown operation parses as such (the caller decides).
        let mut odd = good;
        odd[14 + 7] = 9;
        assert_eq!(
            ArpFrame::parse(&odd).unwrap().arp.operation,
            Operation::Unknown(9)
        );
    }

    #[test]
    fn gratuitous_frames_have_sender_equal_target() {
        for f in gratuitous(VIP, RESPONDER_MAC) {
            let back = ArpFrame::parse(&f.emit()).unwrap();
            assert_eq!(back, f);
            assert_eq!(back.ethernet.dst_addr, Mac::BROADCAST);
            assert_eq!(back.arp.source_protocol_addr, back.arp.target_protocol_addr);
        }
    }

    fn any_mac() -> impl Strategy<Value = Mac> {
        any::<[u8; 6]>().prop_map(Mac)
    }

    fn any_ip() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>().prop_map(Ipv4Addr::from)
    }

    prop_compose! {
        fn any_frame()(dst in any_mac(), src in any_mac(), op in any::<u16>(),
                       sha in any_mac(), spa in any_ip(), tha in any_mac(), tpa in any_ip()) -> ArpFrame {
            ArpFrame {
                ethernet: EthernetRepr { dst_addr: dst, src_addr: src, ethertype: EtherType::Arp },
                arp: ArpRepr {
                    operation: Operation::from(op),
                    source_hardware_addr: sha,
                    source_protocol_addr: spa,
                    target_hardware_addr: tha,
                    target_protocol_addr: tpa,
                },
            }
        }
    }

    proptest! {
        #[test]
        fn repr_round_trip(f in any_frame()) {
            let bytes = f.emit();
            prop_assert_eq!(bytes.len(), 60);
            prop_assert_eq!(ArpFrame::parse(&bytes).unwrap(), f);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = ArpFrame::parse(&bytes);
        }

        #[test]
        fn mutated_captures_never_panic(pos in 0usize..60, val in any::<u8>(), cut in 0usize..60) {
            let mut f = hex(fixtures::ARPING_REQUEST);
            let pos = pos % f.len();
            f[pos] = val;
            f.truncate(f.len().saturating_sub(cut));
            let _ = ArpFrame::parse(&f);
        }
    }
}
