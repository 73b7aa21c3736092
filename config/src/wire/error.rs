//! Why a layer-2 frame was not understood.

use std::net::Ipv6Addr;

/// A frame or packet that cannot be parsed, or breaks a rule of its protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum L2Error {
    #[error("{layer} of {len} bytes is shorter than the {need} bytes it needs")]
    Truncated {
        layer: &'static str,
        len: usize,
        need: usize,
    },
    #[error("ethertype {0:#06x} is not the one expected")]
    EtherType(u16),
    #[error(
        "ARP for hardware type {hardware} / protocol {protocol:#06x} with lengths {hardware_len}/{protocol_len} is not Ethernet/IPv4"
    )]
    ArpFormat {
        hardware: u16,
        protocol: u16,
        hardware_len: u8,
        protocol_len: u8,
    },
    #[error("IPv6 version field is {0}, not 6")]
    IpVersion(u8),
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
    #[error("neighbor discovery options end in a truncated option ({0} bytes left)")]
    OptionTruncated(usize),
    #[error("neighbor discovery target {0} is multicast")]
    MulticastTarget(Ipv6Addr),
    #[error("neighbor solicitation from :: carries a source link-layer address option")]
    UnspecifiedWithLinkLayer,
    #[error("neighbor solicitation from :: is sent to {0}, not a solicited-node group")]
    UnspecifiedToNonSolicited(Ipv6Addr),
}

impl L2Error {
    /// A short stable name for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            L2Error::Truncated { .. } => "truncated",
            L2Error::EtherType(_) => "ethertype",
            L2Error::ArpFormat { .. } => "arp_format",
            L2Error::IpVersion(_) => "ip_version",
            L2Error::PayloadLength { .. } => "payload_length",
            L2Error::Checksum => "checksum",
            L2Error::HopLimit(_) => "hop_limit",
            L2Error::IcmpType(..) => "icmp_type",
            L2Error::OptionLength => "option_length",
            L2Error::OptionTruncated(_) => "option_truncated",
            L2Error::MulticastTarget(_) => "multicast_target",
            L2Error::UnspecifiedWithLinkLayer => "dad_with_link_layer_option",
            L2Error::UnspecifiedToNonSolicited(_) => "dad_not_to_solicited_node",
        }
    }
}
