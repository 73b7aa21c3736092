//! The map layouts of `router/bpf/proxy.h`, as typed values that encode to and decode from
//! the exact bytes the BPF programs read (the way smoltcp's `wire` module pairs a typed
//! representation with emit and parse). Keys and values cross into aya as byte arrays, so no
//! `unsafe` is needed for `Pod`.
//!
//! Addresses are 16 bytes, IPv4 as IPv4-mapped IPv6; addresses and ports in network byte
//! order, everything else in host (little-endian on every target we build) order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The pinned map names (the C variable names in `proxy.h`).
pub mod names {
    pub const SVC: &str = "mn_svc";
    pub const SLOT: &str = "mn_slot";
    pub const BACKEND: &str = "mn_backend";
    pub const REV_NAT: &str = "mn_rev_nat";
    pub const AFFINITY_MATCH: &str = "mn_affinity_match";
    pub const CT: &str = "mn_ct";
    pub const SOCK_REV: &str = "mn_sock_rev";
    pub const AFFINITY: &str = "mn_affinity";
    pub const SRC_RANGE: &str = "mn_src_range";
    pub const MAGLEV: &str = "mn_maglev";
    pub const NODE_ADDR: &str = "mn_node_addr";
    pub const CLUSTER_CIDR: &str = "mn_cluster_cidr";
    pub const CONFIG: &str = "mn_config";
    pub const COUNTERS: &str = "mn_counters";
    pub const FRAG: &str = "mn_frag";
}

/// A malformed map entry read back from the kernel (a layout mismatch or a foreign writer).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("map {map}: {reason}")]
pub struct DecodeError {
    pub map: &'static str,
    pub reason: String,
}

/// An address as the maps hold it.
pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address the maps hold, IPv4-mapped ones as IPv4.
pub fn addr_from(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The NodePort wildcard frontend address of a family (all zeros; IPv4 `::ffff:0.0.0.0`).
pub fn nodeport_wildcard(v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    }
}

/// L4 protocols (IANA numbers, as in the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }
    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            _ => None,
        }
    }
    /// Kubernetes' spelling (`TCP`, `UDP`, `SCTP`); `None` for anything else.
    pub fn from_k8s(s: &str) -> Option<Proto> {
        match s {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }
}

/// `MN_SCOPE_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every frontend has one; external interfaces use it.
    External = 0,
    /// The in-cluster view when it differs (iTP=Local, or eTP=Local on an external frontend).
    Internal = 1,
}

impl Scope {
    fn from_u8(n: u8) -> Option<Scope> {
        match n {
            0 => Some(Scope::External),
            1 => Some(Scope::Internal),
            _ => None,
        }
    }
}

/// `MN_SVC_F_*`.
pub mod svc_flags {
    pub const CLUSTER_IP: u16 = 1 << 0;
    pub const NODEPORT: u16 = 1 << 1;
    pub const EXTERNAL_IP: u16 = 1 << 2;
    pub const LOADBALANCER: u16 = 1 << 3;
    pub const LOCAL: u16 = 1 << 4;
    pub const HAS_INTERNAL: u16 = 1 << 5;
    pub const AFFINITY: u16 = 1 << 6;
    pub const SRC_RANGE: u16 = 1 << 7;
    pub const MAGLEV: u16 = 1 << 8;
    pub const TERMINATING: u16 = 1 << 9;
}

/// `MN_BE_F_*`.
pub mod backend_flags {
    pub const LOCAL: u8 = 1 << 0;
    pub const TERMINATING: u8 = 1 << 1;
}

/// `MN_CT_F_*`.
pub mod ct_flags {
    pub const MASQ: u16 = 1 << 0;
    pub const CLOSING: u16 = 1 << 1;
    /// Masqueraded because another connection holds its reply tuple: no reply entry of its
    /// own.
    pub const SHARED_REPLY: u16 = 1 << 2;
}

/// `MN_CT_DIR_*`: which entry of a connection a conntrack key is.
pub mod ct_dir {
    /// The client's tuple -> the backend (and the masqueraded source).
    pub const FORWARD: u8 = 0;
    /// The backend's reply to the client -> the frontend.
    pub const REPLY: u8 = 1;
    /// The backend's reply to a masqueraded source -> the client.
    pub const SNAT: u8 = 2;
}

/// Masquerade's default source ports (`MN_SNAT_PORT_MIN`..`MN_SNAT_PORT_MAX`), above Linux's
/// default ephemeral range (32768-60999).
pub const SNAT_PORTS_DEFAULT: (u16, u16) = (61000, 65535);

/// `MN_CNT_*`: the per-CPU counters' indexes and their metric names.
pub const COUNTERS: [(u32, &str); 11] = [
    (0, "lb_new"),
    (1, "sock_lb"),
    (2, "reject"),
    (3, "drop_local"),
    (4, "drop_src_range"),
    (5, "ct_full"),
    (6, "affinity_hit"),
    (7, "rev_nat"),
    (8, "snat_no_port"),
    (9, "snat_no_route"),
    (10, "ttl_exceeded"),
];
pub const COUNTERS_LEN: u32 = 16;

/// `struct mn_svc_key`: a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SvcKey {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub scope: Scope,
}

/// `struct mn_svc_val`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SvcVal {
    pub rev_id: u32,
    pub count: u16,
    pub flags: u16,
    pub affinity_timeout: u32,
    pub maglev_row: u32,
}

/// `struct mn_slot_key` (value: a backend id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotKey {
    pub rev_id: u32,
    pub slot: u16,
    pub scope: Scope,
}

/// `struct mn_backend` (key: its id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub flags: u8,
}

/// `struct mn_rev_nat` (key: a frontend's rev_id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevNat {
    pub addr: IpAddr,
    pub port: u16,
}

/// `struct mn_affinity_match_key` (value: 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AffinityMatch {
    pub backend_id: u32,
    pub rev_id: u32,
}

/// `struct mn_src_range_key` (value: 1): one loadBalancerSourceRanges entry of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SrcRange {
    pub rev_id: u32,
    pub net: ipnet::IpNet,
}

/// `struct mn_ct_key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtKey {
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// [`ct_dir`]: 0 forward (client -> frontend), 1 reply (backend -> client), 2 the
    /// backend's reply to a masqueraded source.
    pub dir: u8,
}

/// `struct mn_ct_val`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtVal {
    pub nat_addr: IpAddr,
    pub nat_port: u16,
    pub flags: u16,
    pub rev_id: u32,
    pub backend_id: u32,
    pub last_seen: u32,
    /// Forward entry of a masqueraded connection: the source the node gives it; dir 2
    /// entry: the frontend the client used. Unspecified (`::`) and 0 otherwise.
    pub snat_addr: IpAddr,
    pub snat_port: u16,
}

/// The size of `struct mn_ct_val`.
pub const CT_VAL_LEN: usize = 52;

/// `struct mn_config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    pub host_netns_cookie: u64,
    /// 0 off, 1 all, 2 host-only.
    pub socket_lb: u32,
    pub maglev_m: u32,
    /// Unused by the data path (it masquerades itself); kept so the layout stays.
    pub masq_mark: u32,
    pub ct_timeout_tcp: u32,
    pub ct_timeout_other: u32,
    /// Masquerade's source ports, inclusive; 0/0: [`SNAT_PORTS_DEFAULT`].
    pub snat_port_min: u16,
    pub snat_port_max: u16,
}

// --- byte codecs ------------------------------------------------------------------------

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}
fn get16(buf: &[u8], at: usize) -> [u8; 16] {
    let mut a = [0; 16];
    a.copy_from_slice(&buf[at..at + 16]);
    a
}
fn u16_ne(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}
fn u16_he(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}
fn u32_he(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}
fn err(map: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError {
        map,
        reason: reason.into(),
    }
}

impl SvcKey {
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut b = [0; 20];
        put(&mut b, 0, &addr_bytes(self.addr));
        put(&mut b, 16, &self.port.to_be_bytes());
        b[18] = self.proto.number();
        b[19] = self.scope as u8;
        b
    }
    pub fn from_bytes(b: &[u8; 20]) -> Result<Self, DecodeError> {
        Ok(SvcKey {
            addr: addr_from(get16(b, 0)),
            port: u16_ne(b, 16),
            proto: Proto::from_number(b[18])
                .ok_or_else(|| err(names::SVC, format!("protocol {}", b[18])))?,
            scope: Scope::from_u8(b[19])
                .ok_or_else(|| err(names::SVC, format!("scope {}", b[19])))?,
        })
    }
}

impl SvcVal {
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0; 16];
        put(&mut b, 0, &self.rev_id.to_le_bytes());
        put(&mut b, 4, &self.count.to_le_bytes());
        put(&mut b, 6, &self.flags.to_le_bytes());
        put(&mut b, 8, &self.affinity_timeout.to_le_bytes());
        put(&mut b, 12, &self.maglev_row.to_le_bytes());
        b
    }
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        SvcVal {
            rev_id: u32_he(b, 0),
            count: u16_he(b, 4),
            flags: u16_he(b, 6),
            affinity_timeout: u32_he(b, 8),
            maglev_row: u32_he(b, 12),
        }
    }
}

impl SlotKey {
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0; 8];
        put(&mut b, 0, &self.rev_id.to_le_bytes());
        put(&mut b, 4, &self.slot.to_le_bytes());
        b[6] = self.scope as u8;
        b
    }
    pub fn from_bytes(b: &[u8; 8]) -> Result<Self, DecodeError> {
        Ok(SlotKey {
            rev_id: u32_he(b, 0),
            slot: u16_he(b, 4),
            scope: Scope::from_u8(b[6])
                .ok_or_else(|| err(names::SLOT, format!("scope {}", b[6])))?,
        })
    }
}

impl Backend {
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut b = [0; 20];
        put(&mut b, 0, &addr_bytes(self.addr));
        put(&mut b, 16, &self.port.to_be_bytes());
        b[18] = self.proto.number();
        b[19] = self.flags;
        b
    }
    pub fn from_bytes(b: &[u8; 20]) -> Result<Self, DecodeError> {
        Ok(Backend {
            addr: addr_from(get16(b, 0)),
            port: u16_ne(b, 16),
            proto: Proto::from_number(b[18])
                .ok_or_else(|| err(names::BACKEND, format!("protocol {}", b[18])))?,
            flags: b[19],
        })
    }
}

impl RevNat {
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut b = [0; 20];
        put(&mut b, 0, &addr_bytes(self.addr));
        put(&mut b, 16, &self.port.to_be_bytes());
        b
    }
    pub fn from_bytes(b: &[u8; 20]) -> Self {
        RevNat {
            addr: addr_from(get16(b, 0)),
            port: u16_ne(b, 16),
        }
    }
}

impl AffinityMatch {
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0; 8];
        put(&mut b, 0, &self.backend_id.to_le_bytes());
        put(&mut b, 4, &self.rev_id.to_le_bytes());
        b
    }
    pub fn from_bytes(b: &[u8; 8]) -> Self {
        AffinityMatch {
            backend_id: u32_he(b, 0),
            rev_id: u32_he(b, 4),
        }
    }
}

impl SrcRange {
    /// The LPM key: prefixlen covers the 32-bit rev_id and the range in IPv6 terms.
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut b = [0; 24];
        let (bits, addr) = match self.net {
            ipnet::IpNet::V4(n) => (
                96 + n.prefix_len() as u32,
                addr_bytes(IpAddr::V4(n.network())),
            ),
            ipnet::IpNet::V6(n) => (n.prefix_len() as u32, addr_bytes(IpAddr::V6(n.network()))),
        };
        put(&mut b, 0, &(32 + bits).to_le_bytes());
        put(&mut b, 4, &self.rev_id.to_be_bytes());
        put(&mut b, 8, &addr);
        b
    }
    pub fn from_bytes(b: &[u8; 24]) -> Result<Self, DecodeError> {
        let prefixlen = u32_he(b, 0);
        if !(32..=160).contains(&prefixlen) {
            return Err(err(names::SRC_RANGE, format!("prefix length {prefixlen}")));
        }
        let rev_id = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        let bits = prefixlen - 32;
        let addr = addr_from(get16(b, 8));
        let net = match addr {
            IpAddr::V4(a) if bits >= 96 => ipnet::IpNet::V4(
                ipnet::Ipv4Net::new(a, (bits - 96) as u8)
                    .map_err(|e| err(names::SRC_RANGE, e.to_string()))?,
            ),
            IpAddr::V4(a) => ipnet::IpNet::V6(
                ipnet::Ipv6Net::new(a.to_ipv6_mapped(), bits as u8)
                    .map_err(|e| err(names::SRC_RANGE, e.to_string()))?,
            ),
            IpAddr::V6(a) => ipnet::IpNet::V6(
                ipnet::Ipv6Net::new(a, bits as u8)
                    .map_err(|e| err(names::SRC_RANGE, e.to_string()))?,
            ),
        };
        Ok(SrcRange { rev_id, net })
    }
}

impl CtKey {
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut b = [0; 40];
        put(&mut b, 0, &addr_bytes(self.saddr));
        put(&mut b, 16, &addr_bytes(self.daddr));
        put(&mut b, 32, &self.sport.to_be_bytes());
        put(&mut b, 34, &self.dport.to_be_bytes());
        b[36] = self.proto;
        b[37] = self.dir;
        b
    }
    pub fn from_bytes(b: &[u8; 40]) -> Self {
        CtKey {
            saddr: addr_from(get16(b, 0)),
            daddr: addr_from(get16(b, 16)),
            sport: u16_ne(b, 32),
            dport: u16_ne(b, 34),
            proto: b[36],
            dir: b[37],
        }
    }
}

impl CtVal {
    pub fn to_bytes(&self) -> [u8; CT_VAL_LEN] {
        let mut b = [0; CT_VAL_LEN];
        put(&mut b, 0, &addr_bytes(self.nat_addr));
        put(&mut b, 16, &self.nat_port.to_be_bytes());
        put(&mut b, 18, &self.flags.to_le_bytes());
        put(&mut b, 20, &self.rev_id.to_le_bytes());
        put(&mut b, 24, &self.backend_id.to_le_bytes());
        put(&mut b, 28, &self.last_seen.to_le_bytes());
        put(&mut b, 32, &addr_bytes(self.snat_addr));
        put(&mut b, 48, &self.snat_port.to_be_bytes());
        b
    }
    pub fn from_bytes(b: &[u8; CT_VAL_LEN]) -> Self {
        CtVal {
            nat_addr: addr_from(get16(b, 0)),
            nat_port: u16_ne(b, 16),
            flags: u16_he(b, 18),
            rev_id: u32_he(b, 20),
            backend_id: u32_he(b, 24),
            last_seen: u32_he(b, 28),
            snat_addr: addr_from(get16(b, 32)),
            snat_port: u16_ne(b, 48),
        }
    }
    /// `snat_addr` of an entry without masquerade: all zeros, as the C side leaves it.
    pub const NO_SNAT: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
}

/// `struct mn_frag_key`: the identity shared by a datagram's fragments (value: [`FragVal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FragKey {
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    /// IPv4: the 16-bit identification; IPv6: the fragment header's 32-bit one.
    pub id: u32,
    pub proto: u8,
}

/// `struct mn_frag_val`: the ports from the datagram's first fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FragVal {
    pub sport: u16,
    pub dport: u16,
}

impl FragKey {
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut b = [0; 40];
        put(&mut b, 0, &addr_bytes(self.saddr));
        put(&mut b, 16, &addr_bytes(self.daddr));
        put(&mut b, 32, &self.id.to_le_bytes());
        b[36] = self.proto;
        b
    }
    pub fn from_bytes(b: &[u8; 40]) -> Self {
        FragKey {
            saddr: addr_from(get16(b, 0)),
            daddr: addr_from(get16(b, 16)),
            id: u32_he(b, 32),
            proto: b[36],
        }
    }
}

impl FragVal {
    pub fn to_bytes(&self) -> [u8; 4] {
        let mut b = [0; 4];
        put(&mut b, 0, &self.sport.to_be_bytes());
        put(&mut b, 2, &self.dport.to_be_bytes());
        b
    }
    pub fn from_bytes(b: &[u8; 4]) -> Self {
        FragVal {
            sport: u16_ne(b, 0),
            dport: u16_ne(b, 2),
        }
    }
}

/// `struct mn_cidr_key`: an in-cluster source range (value: 1).
pub fn cidr_key(net: ipnet::IpNet) -> [u8; 20] {
    let mut b = [0; 20];
    let bits = match net {
        ipnet::IpNet::V4(n) => 96 + n.prefix_len() as u32,
        ipnet::IpNet::V6(n) => n.prefix_len() as u32,
    };
    put(&mut b, 0, &bits.to_le_bytes());
    put(&mut b, 4, &addr_bytes(net.network()));
    b
}

impl Config {
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut b = [0; 32];
        put(&mut b, 0, &self.host_netns_cookie.to_le_bytes());
        put(&mut b, 8, &self.socket_lb.to_le_bytes());
        put(&mut b, 12, &self.maglev_m.to_le_bytes());
        put(&mut b, 16, &self.masq_mark.to_le_bytes());
        put(&mut b, 20, &self.ct_timeout_tcp.to_le_bytes());
        put(&mut b, 24, &self.ct_timeout_other.to_le_bytes());
        put(&mut b, 28, &self.snat_port_min.to_le_bytes());
        put(&mut b, 30, &self.snat_port_max.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svc_key_round_trips_and_maps_ipv4() {
        let k = SvcKey {
            addr: "10.96.0.10".parse().unwrap(),
            port: 80,
            proto: Proto::Tcp,
            scope: Scope::Internal,
        };
        let b = k.to_bytes();
        assert_eq!(
            &b[..16],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 10]
        );
        assert_eq!(&b[16..], &[0, 80, 6, 1]);
        assert_eq!(SvcKey::from_bytes(&b).unwrap(), k);
    }

    #[test]
    fn src_range_keys_round_trip() {
        for net in ["192.0.2.0/24", "2001:db8::/32", "0.0.0.0/0"] {
            let r = SrcRange {
                rev_id: 7,
                net: net.parse().unwrap(),
            };
            assert_eq!(SrcRange::from_bytes(&r.to_bytes()).unwrap(), r, "{net}");
        }
    }

    #[test]
    fn frag_entries_round_trip_in_the_c_layout() {
        let k = FragKey {
            saddr: "192.0.2.7".parse().unwrap(),
            daddr: "2001:db8::9".parse().unwrap(),
            id: 0x1234,
            proto: 17,
        };
        let b = k.to_bytes();
        assert_eq!(&b[12..16], &[192, 0, 2, 7]);
        assert_eq!(&b[32..37], &[0x34, 0x12, 0, 0, 17]);
        assert_eq!(FragKey::from_bytes(&b), k);
        let v = FragVal {
            sport: 5000,
            dport: 53,
        };
        assert_eq!(v.to_bytes(), [0x13, 0x88, 0, 53]);
        assert_eq!(FragVal::from_bytes(&v.to_bytes()), v);
    }

    #[test]
    fn ct_entries_round_trip() {
        let k = CtKey {
            saddr: "2001:db8::1".parse().unwrap(),
            daddr: "198.51.100.7".parse().unwrap(),
            sport: 40000,
            dport: 443,
            proto: 6,
            dir: 1,
        };
        assert_eq!(CtKey::from_bytes(&k.to_bytes()), k);
        let v = CtVal {
            nat_addr: "10.0.0.1".parse().unwrap(),
            nat_port: 8080,
            flags: ct_flags::MASQ,
            rev_id: 3,
            backend_id: 9,
            last_seen: 12345,
            snat_addr: "192.0.2.1".parse().unwrap(),
            snat_port: 61000,
        };
        let b = v.to_bytes();
        assert_eq!(&b[16..20], &[0x1f, 0x90, 1, 0]);
        assert_eq!(&b[44..48], &[192, 0, 2, 1]);
        assert_eq!(&b[48..52], &[0xee, 0x48, 0, 0]);
        assert_eq!(CtVal::from_bytes(&b), v);
        let plain = CtVal {
            snat_addr: CtVal::NO_SNAT,
            snat_port: 0,
            ..v
        };
        assert_eq!(&plain.to_bytes()[32..], &[0; 20]);
        assert_eq!(CtVal::from_bytes(&plain.to_bytes()), plain);
    }
}
