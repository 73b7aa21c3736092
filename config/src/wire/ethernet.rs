//! Ethernet II frames (IEEE 802.3 with an EtherType), with 802.1Q tags recognised.

use super::{Field, L2Error, Mac, Rest};

/// The EtherTypes layer 2 mode deals with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EtherType {
    Ipv4,
    Arp,
    /// An IEEE 802.1Q VLAN tag follows (customer VLAN).
    Vlan,
    /// IEEE 802.1ad service VLAN tag (QinQ).
    ServiceVlan,
    Ipv6,
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(v: u16) -> EtherType {
        match v {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x8100 => EtherType::Vlan,
            0x88a8 => EtherType::ServiceVlan,
            0x86dd => EtherType::Ipv6,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(t: EtherType) -> u16 {
        match t {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Vlan => 0x8100,
            EtherType::ServiceVlan => 0x88a8,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(v) => v,
        }
    }
}

impl EtherType {
    /// Whether a VLAN tag (802.1Q or 802.1ad) follows instead of the payload.
    pub fn is_vlan_tag(self) -> bool {
        matches!(self, EtherType::Vlan | EtherType::ServiceVlan)
    }
}

mod field {
    use super::{Field, Rest};
    pub const DESTINATION: Field = 0..6;
    pub const SOURCE: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const PAYLOAD: Rest = 14..;
}

/// Length of the Ethernet II header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;
/// Shortest frame on the wire without the FCS; shorter frames are padded on emit.
pub const MIN_FRAME_LEN: usize = 60;

/// A read/write view of an Ethernet II frame in a buffer.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps `buffer` without checking its length: accessors may panic on a short buffer.
    pub fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps `buffer` after checking it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Frame<T>, L2Error> {
        let f = Frame::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    pub fn check_len(&self) -> Result<(), L2Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(L2Error::Truncated {
                layer: "Ethernet frame",
                len,
                need: HEADER_LEN,
            });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn dst_addr(&self) -> Mac {
        Mac::from_bytes(&self.buffer.as_ref()[field::DESTINATION]).unwrap_or_default()
    }

    pub fn src_addr(&self) -> Mac {
        Mac::from_bytes(&self.buffer.as_ref()[field::SOURCE]).unwrap_or_default()
    }

    pub fn ethertype(&self) -> EtherType {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EtherType::from(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_dst_addr(&mut self, m: Mac) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&m.0);
    }

    pub fn set_src_addr(&mut self, m: Mac) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&m.0);
    }

    pub fn set_ethertype(&mut self, t: EtherType) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&u16::from(t).to_be_bytes());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// An Ethernet II header in typed form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    pub src_addr: Mac,
    pub dst_addr: Mac,
    pub ethertype: EtherType,
}

impl EthernetRepr {
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Result<EthernetRepr, L2Error> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header; `frame` must hold at least [`HEADER_LEN`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype);
    }
}

/// A whole frame: `header` then `payload_len` bytes written by `fill`, padded to
/// [`MIN_FRAME_LEN`].
pub fn emit_frame(
    header: &EthernetRepr,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let mut out = vec![0u8; (HEADER_LEN + payload_len).max(MIN_FRAME_LEN)];
    let mut frame = Frame::new_unchecked(&mut out[..]);
    header.emit(&mut frame);
    fill(&mut frame.payload_mut()[..payload_len]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // An ARP request as arping sent it in a lab namespace (see `fixtures`): broadcast from
    // 02:00:00:00:00:64, EtherType ARP.
    fn captured() -> Vec<u8> {
        crate::wire::fixtures::hex(crate::wire::fixtures::ARPING_REQUEST)
    }

    #[test]
    fn deconstruct() {
        let bytes = captured();
        let f = Frame::new_checked(&bytes[..]).unwrap();
        assert_eq!(f.dst_addr(), Mac::BROADCAST);
        assert_eq!(f.src_addr(), crate::wire::fixtures::CLIENT_MAC);
        assert_eq!(f.ethertype(), EtherType::Arp);
        assert_eq!(f.payload(), &bytes[14..]);
    }

    #[test]
    fn construct() {
        let bytes = captured();
        let mut out = vec![0u8; bytes.len()];
        let mut f = Frame::new_unchecked(&mut out[..]);
        f.set_dst_addr(Mac::BROADCAST);
        f.set_src_addr(crate::wire::fixtures::CLIENT_MAC);
        f.set_ethertype(EtherType::Arp);
        f.payload_mut().copy_from_slice(&bytes[14..]);
        assert_eq!(out, bytes);
    }

    #[test]
    fn parse() {
        let bytes = captured();
        let repr = EthernetRepr::parse(&Frame::new_unchecked(&bytes[..])).unwrap();
        assert_eq!(
            repr,
            EthernetRepr {
                src_addr: crate::wire::fixtures::CLIENT_MAC,
                dst_addr: Mac::BROADCAST,
                ethertype: EtherType::Arp,
            }
        );
        assert!(matches!(
            EthernetRepr::parse(&Frame::new_unchecked(&bytes[..13])),
            Err(L2Error::Truncated { len: 13, .. })
        ));
    }

    #[test]
    fn emit() {
        let bytes = captured();
        let repr = EthernetRepr::parse(&Frame::new_unchecked(&bytes[..])).unwrap();
        let out = emit_frame(&repr, bytes.len() - HEADER_LEN, |p| {
            p.copy_from_slice(&bytes[14..])
        });
        // arping padded to 58 bytes; emit pads to the 60-byte minimum with zeros.
        assert_eq!(&out[..bytes.len()], &bytes[..]);
        assert_eq!(out.len(), MIN_FRAME_LEN);
        assert!(out[bytes.len()..].iter().all(|b| *b == 0));
    }

    #[test]
    fn ethertype_numbers() {
        for (t, v) in [
            (EtherType::Ipv4, 0x0800),
            (EtherType::Arp, 0x0806),
            (EtherType::Vlan, 0x8100),
            (EtherType::ServiceVlan, 0x88a8),
            (EtherType::Ipv6, 0x86dd),
            (EtherType::Unknown(0x1234), 0x1234),
        ] {
            assert_eq!(u16::from(t), v);
            assert_eq!(EtherType::from(v), t);
        }
    }

    proptest! {
        #[test]
        fn repr_round_trip(dst in any::<[u8; 6]>(), src in any::<[u8; 6]>(), et in any::<u16>()) {
            let repr = EthernetRepr { dst_addr: Mac(dst), src_addr: Mac(src), ethertype: EtherType::from(et) };
            let out = emit_frame(&repr, 0, |_| {});
            prop_assert_eq!(EthernetRepr::parse(&Frame::new_unchecked(&out[..])).unwrap(), repr);
            prop_assert_eq!(u16::from(repr.ethertype), et);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = EthernetRepr::parse(&Frame::new_unchecked(&bytes[..]));
        }
    }
}
