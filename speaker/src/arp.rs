//! ARP over Ethernet (RFC 826): typed parse and emit of the frames layer 2 mode handles.

use std::net::Ipv4Addr;

/// A MAC address.
pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// Frames shorter than this are padded on emit (Ethernet minimum without FCS).
const MIN_FRAME: usize = 60;

/// Why a frame was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is too short")]
    TooShort(usize),
    #[error("ethertype {0:#06x} is not the one expected")]
    EtherType(u16),
    #[error(
        "ARP for hardware type {htype} / protocol {ptype:#06x} with lengths {hlen}/{plen} is not Ethernet/IPv4"
    )]
    ArpFormat {
        htype: u16,
        ptype: u16,
        hlen: u8,
        plen: u8,
    },
    #[error("ARP operation {0} is neither request nor reply")]
    ArpOp(u16),
    #[error("IPv6 next header {0} is not ICMPv6")]
    NextHeader(u8),
    #[error("IPv6 payload length {payload} does not fit the frame ({available} bytes)")]
    PayloadLength { payload: usize, available: usize },
    #[error("ICMPv6 checksum mismatch")]
    Checksum,
    #[error("neighbor discovery message with hop limit {0}, not 255")]
    HopLimit(u8),
    #[error("ICMPv6 type {0} code {1} is not a neighbor solicitation/advertisement")]
    IcmpType(u8, u8),
    #[error("neighbor discovery option of length 0")]
    OptionLength,
    #[error("neighbor discovery target {0} is multicast")]
    MulticastTarget(std::net::Ipv6Addr),
}

/// An Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ethernet {
    pub dst: Mac,
    pub src: Mac,
    pub ethertype: u16,
}

impl Ethernet {
    pub const LEN: usize = 14;

    pub fn parse(frame: &[u8]) -> Result<(Ethernet, &[u8]), FrameError> {
        if frame.len() < Self::LEN {
            return Err(FrameError::TooShort(frame.len()));
        }
        let eth = Ethernet {
            dst: frame[0..6].try_into().expect("6 bytes"),
            src: frame[6..12].try_into().expect("6 bytes"),
            ethertype: u16::from_be_bytes([frame[12], frame[13]]),
        };
        Ok((eth, &frame[Self::LEN..]))
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.dst);
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.ethertype.to_be_bytes());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    Request,
    Reply,
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub op: ArpOp,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

impl Arp {
    pub const LEN: usize = 28;

    pub fn parse(payload: &[u8]) -> Result<Arp, FrameError> {
        if payload.len() < Self::LEN {
            return Err(FrameError::TooShort(Ethernet::LEN + payload.len()));
        }
        let htype = u16::from_be_bytes([payload[0], payload[1]]);
        let ptype = u16::from_be_bytes([payload[2], payload[3]]);
        let (hlen, plen) = (payload[4], payload[5]);
        if htype != 1 || ptype != 0x0800 || hlen != 6 || plen != 4 {
            return Err(FrameError::ArpFormat {
                htype,
                ptype,
                hlen,
                plen,
            });
        }
        let op = match u16::from_be_bytes([payload[6], payload[7]]) {
            1 => ArpOp::Request,
            2 => ArpOp::Reply,
            other => return Err(FrameError::ArpOp(other)),
        };
        let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        Ok(Arp {
            op,
            sender_mac: payload[8..14].try_into().expect("6 bytes"),
            sender_ip: ip(&payload[14..18]),
            target_mac: payload[18..24].try_into().expect("6 bytes"),
            target_ip: ip(&payload[24..28]),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&0x0800u16.to_be_bytes());
        out.extend_from_slice(&[6, 4]);
        let op: u16 = match self.op {
            ArpOp::Request => 1,
            ArpOp::Reply => 2,
        };
        out.extend_from_slice(&op.to_be_bytes());
        out.extend_from_slice(&self.sender_mac);
        out.extend_from_slice(&self.sender_ip.octets());
        out.extend_from_slice(&self.target_mac);
        out.extend_from_slice(&self.target_ip.octets());
    }
}

/// Parses a whole ARP frame.
pub fn parse_frame(frame: &[u8]) -> Result<(Ethernet, Arp), FrameError> {
    let (eth, payload) = Ethernet::parse(frame)?;
    if eth.ethertype != ETHERTYPE_ARP {
        return Err(FrameError::EtherType(eth.ethertype));
    }
    Ok((eth, Arp::parse(payload)?))
}

/// Emits a whole ARP frame, padded to the Ethernet minimum.
pub fn emit_frame(eth: &Ethernet, arp: &Arp) -> Vec<u8> {
    let mut out = Vec::with_capacity(MIN_FRAME);
    eth.emit(&mut out);
    arp.emit(&mut out);
    out.resize(MIN_FRAME.max(out.len()), 0);
    out
}

/// The reply to `request` saying `request.target_ip` is at `our_mac`.
pub fn reply_to(request: &Arp, our_mac: Mac) -> Vec<u8> {
    emit_frame(
        &Ethernet {
            dst: request.sender_mac,
            src: our_mac,
            ethertype: ETHERTYPE_ARP,
        },
        &Arp {
            op: ArpOp::Reply,
            sender_mac: our_mac,
            sender_ip: request.target_ip,
            target_mac: request.sender_mac,
            target_ip: request.sender_ip,
        },
    )
}

/// The gratuitous frames announcing `ip` at `our_mac`: a broadcast request and a broadcast
/// reply, both with sender = target = `ip` (hosts differ in which one they honour).
pub fn gratuitous(ip: Ipv4Addr, our_mac: Mac) -> [Vec<u8>; 2] {
    let eth = Ethernet {
        dst: BROADCAST,
        src: our_mac,
        ethertype: ETHERTYPE_ARP,
    };
    let mk = |op, target_mac| Arp {
        op,
        sender_mac: our_mac,
        sender_ip: ip,
        target_mac,
        target_ip: ip,
    };
    [
        emit_frame(&eth, &mk(ArpOp::Request, [0; 6])),
        emit_frame(&eth, &mk(ArpOp::Reply, BROADCAST)),
    ]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_to_string(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Mac = [0x02, 0, 0, 0, 0, 1];
    const CLIENT: Mac = [0x02, 0, 0, 0, 0, 0x64];

    fn request(target: Ipv4Addr) -> Arp {
        Arp {
            op: ArpOp::Request,
            sender_mac: CLIENT,
            sender_ip: Ipv4Addr::new(192, 0, 2, 100),
            target_mac: [0; 6],
            target_ip: target,
        }
    }

    #[test]
    fn frames_round_trip() {
        let eth = Ethernet {
            dst: BROADCAST,
            src: CLIENT,
            ethertype: ETHERTYPE_ARP,
        };
        let arp = request(Ipv4Addr::new(192, 0, 2, 200));
        let frame = emit_frame(&eth, &arp);
        assert_eq!(frame.len(), 60);
        assert_eq!(parse_frame(&frame).unwrap(), (eth, arp));
    }

    #[test]
    fn reply_answers_the_requester_with_our_mac() {
        let req = request(Ipv4Addr::new(192, 0, 2, 200));
        let (eth, arp) = parse_frame(&reply_to(&req, ME)).unwrap();
        assert_eq!((eth.dst, eth.src), (CLIENT, ME));
        assert_eq!(arp.op, ArpOp::Reply);
        assert_eq!(
            (arp.sender_mac, arp.sender_ip),
            (ME, Ipv4Addr::new(192, 0, 2, 200))
        );
        assert_eq!(
            (arp.target_mac, arp.target_ip),
            (CLIENT, Ipv4Addr::new(192, 0, 2, 100))
        );
    }

    #[test]
    fn gratuitous_frames_have_sender_equal_target() {
        let ip = Ipv4Addr::new(192, 0, 2, 200);
        for f in gratuitous(ip, ME) {
            let (eth, arp) = parse_frame(&f).unwrap();
            assert_eq!(eth.dst, BROADCAST);
            assert_eq!((arp.sender_ip, arp.target_ip, arp.sender_mac), (ip, ip, ME));
        }
    }

    #[test]
    fn malformed_frames_are_rejected() {
        let eth = Ethernet {
            dst: BROADCAST,
            src: CLIENT,
            ethertype: ETHERTYPE_ARP,
        };
        let good = emit_frame(&eth, &request(Ipv4Addr::new(192, 0, 2, 1)));
        assert!(matches!(
            parse_frame(&good[..20]),
            Err(FrameError::TooShort(_))
        ));
        let mut bad = good.clone();
        bad[14 + 5] = 16; // IPv6-sized protocol addresses
        assert!(matches!(
            parse_frame(&bad),
            Err(FrameError::ArpFormat { .. })
        ));
        let mut bad = good.clone();
        bad[14 + 7] = 9;
        assert_eq!(parse_frame(&bad), Err(FrameError::ArpOp(9)));
        let mut bad = good;
        bad[12] = 0x08;
        bad[13] = 0x00;
        assert_eq!(parse_frame(&bad), Err(FrameError::EtherType(0x0800)));
    }

    #[test]
    fn parse_never_panics_on_garbage() {
        let mut seed = 7u64;
        for len in 0..80 {
            let frame: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 33) as u8
                })
                .collect();
            let _ = parse_frame(&frame);
        }
    }
}
