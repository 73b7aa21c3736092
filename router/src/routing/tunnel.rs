//! kube-router's overlay tunnels (`--enable-overlay`, `--overlay-type`, `--overlay-encap`,
//! `--overlay-encap-port`) at the netlink-message level.
//!
//! kube-router reaches a node whose address is outside every subnet of this node (or every
//! node, with `--overlay-type=full`) through an ipip (IPv4) or ip6tnl/ip6ip6 (IPv6) tunnel
//! named `tun-` + 11 hex digits of a SHA-256 of the node's address, optionally encapsulated
//! in GUE (FoU) on `--overlay-encap-port`. This kernel has neither the ipip/ip6tnl link types
//! nor the fou module, so the daemon cannot create these links here; this module builds the
//! exact messages (checked against what iproute2 sends for kube-router's own `ip` commands)
//! and decides, purely, when a tunnel is due, so the decision and the bytes are tested even
//! where the kernel cannot run them.

use std::net::IpAddr;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

/// kube-router's default `--overlay-encap-port`.
pub const DEFAULT_ENCAP_PORT: u16 = 5555;
/// kube-router's policy-routing table for tunnelled traffic (`kube-router`, id 77).
pub const TUNNEL_ROUTE_TABLE: u32 = 77;
/// kube-router creates tunnels with this TTL (`ttl 225` in its `ip link add`).
pub const TUNNEL_TTL: u8 = 225;

/// `--overlay-encap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// Plain IP in IP.
    Ipip,
    /// IP in GUE in UDP (Foo over UDP) to `--overlay-encap-port`.
    Fou,
}

impl std::str::FromStr for Encap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ipip" => Ok(Encap::Ipip),
            "fou" => Ok(Encap::Fou),
            other => Err(format!(
                "invalid encapsulation type {other:?}: expected ipip or fou"
            )),
        }
    }
}

/// kube-router accepts encap ports from 1024 up.
pub fn check_encap_port(port: u16) -> Result<u16, String> {
    if port >= 1024 {
        Ok(port)
    } else {
        Err(format!(
            "encap port {port} is out of range: valid ports are 1024 to 65535"
        ))
    }
}

/// The tunnel interface name for a node address: `tun-` and the first 11 hex digits of the
/// SHA-256 of the address written without `.` and `:` (15 characters, the kernel's limit).
/// Matching kube-router's names lets a migrating node find and remove its tunnels.
pub fn tunnel_name(node: IpAddr) -> String {
    let stripped: String = node
        .to_string()
        .chars()
        .filter(|c| *c != '.' && *c != ':')
        .collect();
    let sum = Sha256::digest(stripped.as_bytes());
    let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
    format!("tun-{}", &hex[..11])
}

/// How a learned route reaches its next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// `dst via next_hop proto 17`: the next hop is on a connected subnet.
    Direct,
    /// `dst dev tun-x src <node address> proto 17` over this tunnel.
    Tunnel(TunnelLink),
    /// Nothing is installed (kube-router without an overlay does the same).
    Unreachable(&'static str),
}

/// kube-router's decision for a next hop: with `--overlay-type=subnet` a tunnel only when the
/// next hop is outside every connected subnet, with `full` always; without the overlay a
/// direct route when on a connected subnet, else nothing.
pub fn reach(
    overlay: Option<(super::options::OverlayType, Encap, u16)>,
    next_hop: IpAddr,
    connected: &[IpNet],
    local_addresses: &[IpAddr],
) -> Reach {
    let on_subnet = connected.iter().any(|n| n.contains(&next_hop));
    let Some((kind, encap, port)) = overlay else {
        return if on_subnet {
            Reach::Direct
        } else {
            Reach::Unreachable("next hop is not on a connected subnet and the overlay is off")
        };
    };
    if on_subnet && kind == super::options::OverlayType::Subnet {
        return Reach::Direct;
    }
    let Some(local) = local_addresses
        .iter()
        .find(|a| a.is_ipv4() == next_hop.is_ipv4())
    else {
        return Reach::Unreachable("this node has no address of the next hop's family");
    };
    Reach::Tunnel(TunnelLink::new(*local, next_hop, encap, port))
}

/// One tunnel link as kube-router creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelLink {
    pub name: String,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub encap: Encap,
    pub encap_port: u16,
}

const NLMSG_HDR_LEN: usize = 16;
const RTM_NEWLINK: u16 = 16;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET6: u8 = 10;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;

// IFLA_IPTUN_* (linux/if_tunnel.h).
const IPTUN_LINK: u16 = 1;
const IPTUN_LOCAL: u16 = 2;
const IPTUN_REMOTE: u16 = 3;
const IPTUN_TTL: u16 = 4;
const IPTUN_TOS: u16 = 5;
const IPTUN_ENCAP_LIMIT: u16 = 6;
const IPTUN_FLOWINFO: u16 = 7;
const IPTUN_FLAGS: u16 = 8;
const IPTUN_PROTO: u16 = 9;
const IPTUN_PMTUDISC: u16 = 10;
const IPTUN_ENCAP_TYPE: u16 = 15;
const IPTUN_ENCAP_FLAGS: u16 = 16;
const IPTUN_ENCAP_SPORT: u16 = 17;
const IPTUN_ENCAP_DPORT: u16 = 18;
const IPTUN_FWMARK: u16 = 20;
const TUNNEL_ENCAP_NONE: u16 = 0;
const TUNNEL_ENCAP_GUE: u16 = 2;
/// iproute2 sets remote-checksum for IPv6 GUE (`TUNNEL_ENCAP_FLAG_CSUM6`).
const TUNNEL_ENCAP_FLAG_CSUM6: u16 = 2;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
/// ip6tnl's default encapsulation limit.
const IPV6_DEFAULT_TNL_ENCAP_LIMIT: u8 = 4;

// Generic netlink FOU family (linux/fou.h).
const GENL_HDR_LEN: usize = 4;
const FOU_CMD_ADD: u8 = 1;
const FOU_CMD_DEL: u8 = 2;
const FOU_GENL_VERSION: u8 = 1;
const FOU_ATTR_PORT: u16 = 1;
const FOU_ATTR_AF: u16 = 2;
const FOU_ATTR_TYPE: u16 = 4;
const FOU_ENCAP_GUE: u8 = 2;
const AF_INET: u8 = 2;

/// A netlink attribute: type (nested flag stripped) and payload, or children when nested.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Nla {
    Bytes(u16, Vec<u8>),
    Nested(u16, Vec<Nla>),
}

impl Nla {
    fn emit(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0, 0]);
        match self {
            Nla::Bytes(t, v) => {
                out.extend_from_slice(&t.to_ne_bytes());
                out.extend_from_slice(v);
            }
            Nla::Nested(t, children) => {
                out.extend_from_slice(&t.to_ne_bytes());
                for c in children {
                    c.emit(out);
                }
            }
        }
        let len = (out.len() - start) as u16;
        out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }

    /// Parses a run of attributes; `nested` says which types hold attributes themselves.
    pub fn parse_all(
        mut buf: &[u8],
        nested: &dyn Fn(&[u16]) -> bool,
        path: &[u16],
    ) -> Result<Vec<Nla>, String> {
        let mut out = Vec::new();
        while buf.len() >= 4 {
            let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
            let t = u16::from_ne_bytes([buf[2], buf[3]]) & !NLA_F_NESTED;
            if len < 4 || len > buf.len() {
                return Err(format!(
                    "attribute {t} has length {len} in {} bytes",
                    buf.len()
                ));
            }
            let payload = &buf[4..len];
            let mut p = path.to_vec();
            p.push(t);
            out.push(if nested(&p) {
                Nla::Nested(t, Nla::parse_all(payload, nested, &p)?)
            } else {
                Nla::Bytes(t, payload.to_vec())
            });
            let padded = (len + 3) & !3;
            buf = &buf[padded.min(buf.len())..];
        }
        Ok(out)
    }
}

fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn u8a(t: u16, v: u8) -> Nla {
    Nla::Bytes(t, vec![v])
}
fn u16a(t: u16, v: u16) -> Nla {
    Nla::Bytes(t, v.to_ne_bytes().to_vec())
}
fn u32a(t: u16, v: u32) -> Nla {
    Nla::Bytes(t, v.to_ne_bytes().to_vec())
}

impl TunnelLink {
    pub fn new(local: IpAddr, remote: IpAddr, encap: Encap, encap_port: u16) -> TunnelLink {
        TunnelLink {
            name: tunnel_name(remote),
            local,
            remote,
            encap,
            encap_port,
        }
    }

    fn v6(&self) -> bool {
        self.remote.is_ipv6()
    }

    /// The link kind: `ipip` for IPv4, `ip6tnl` (mode ip6ip6) for IPv6.
    pub fn kind(&self) -> &'static str {
        if self.v6() { "ip6tnl" } else { "ipip" }
    }

    /// The attributes of the RTM_NEWLINK request, as iproute2 sends them for kube-router's
    /// `ip link add name tun-x type ipip|ip6tnl remote R local L ttl 225 [encap gue
    /// encap-sport auto encap-dport PORT] mode ipip|ip6ip6`.
    pub fn attributes(&self) -> Vec<Nla> {
        let (encap_type, encap_flags, dport) = match self.encap {
            Encap::Ipip => (TUNNEL_ENCAP_NONE, 0, 0),
            Encap::Fou => (
                TUNNEL_ENCAP_GUE,
                if self.v6() {
                    TUNNEL_ENCAP_FLAG_CSUM6
                } else {
                    0
                },
                self.encap_port,
            ),
        };
        let mut data = vec![
            u8a(
                IPTUN_PROTO,
                if self.v6() {
                    IPPROTO_IPV6
                } else {
                    IPPROTO_IPIP
                },
            ),
            Nla::Bytes(IPTUN_LOCAL, ip_bytes(self.local)),
            Nla::Bytes(IPTUN_REMOTE, ip_bytes(self.remote)),
        ];
        if self.v6() {
            data.extend([
                u8a(IPTUN_TTL, TUNNEL_TTL),
                u8a(IPTUN_ENCAP_LIMIT, IPV6_DEFAULT_TNL_ENCAP_LIMIT),
                u32a(IPTUN_FLOWINFO, 0),
                u32a(IPTUN_FLAGS, 0),
            ]);
        } else {
            data.extend([
                u8a(IPTUN_PMTUDISC, 1),
                u8a(IPTUN_TOS, 0),
                u8a(IPTUN_TTL, TUNNEL_TTL),
            ]);
        }
        data.extend([
            u32a(IPTUN_LINK, 0),
            u32a(IPTUN_FWMARK, 0),
            u16a(IPTUN_ENCAP_TYPE, encap_type),
            u16a(IPTUN_ENCAP_FLAGS, encap_flags),
            // Source port 0 = "auto" (the kernel hashes the inner flow).
            Nla::Bytes(IPTUN_ENCAP_SPORT, 0u16.to_be_bytes().to_vec()),
            Nla::Bytes(IPTUN_ENCAP_DPORT, dport.to_be_bytes().to_vec()),
        ]);
        let mut name = self.name.as_bytes().to_vec();
        name.push(0);
        vec![
            Nla::Bytes(IFLA_IFNAME, name),
            Nla::Nested(
                IFLA_LINKINFO,
                vec![
                    Nla::Bytes(IFLA_INFO_KIND, self.kind().as_bytes().to_vec()),
                    Nla::Nested(IFLA_INFO_DATA, data),
                ],
            ),
        ]
    }

    /// The whole RTM_NEWLINK request (create, fail if it exists, acknowledge).
    pub fn newlink_message(&self, seq: u32) -> Vec<u8> {
        let mut body = Vec::new();
        // ifinfomsg: family, pad, type, index, flags, change.
        body.push(if self.v6() { AF_INET6 } else { 0 });
        body.extend_from_slice(&[0; 15]);
        for a in self.attributes() {
            a.emit(&mut body);
        }
        netlink_message(
            RTM_NEWLINK,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE,
            seq,
            &body,
        )
    }

    /// Which attribute paths of an RTM_NEWLINK hold nested attributes.
    pub fn nested_paths(path: &[u16]) -> bool {
        matches!(path, [IFLA_LINKINFO] | [IFLA_LINKINFO, IFLA_INFO_DATA])
    }
}

/// The generic netlink request of `ip [-6] fou add port PORT gue` (or `del`), for the
/// `fou` family whose id the kernel assigns (resolved through nlctrl at run time).
pub fn fou_message(family_id: u16, seq: u32, add: bool, port: u16, ipv6: bool) -> Vec<u8> {
    let mut body = vec![
        if add { FOU_CMD_ADD } else { FOU_CMD_DEL },
        FOU_GENL_VERSION,
        0,
        0,
    ];
    debug_assert_eq!(body.len(), GENL_HDR_LEN);
    let mut attrs = vec![
        Nla::Bytes(FOU_ATTR_PORT, port.to_be_bytes().to_vec()),
        u8a(FOU_ATTR_AF, if ipv6 { AF_INET6 } else { AF_INET }),
    ];
    if add {
        attrs.push(u8a(FOU_ATTR_TYPE, FOU_ENCAP_GUE));
    }
    for a in attrs {
        a.emit(&mut body);
    }
    netlink_message(family_id, NLM_F_REQUEST | NLM_F_ACK, seq, &body)
}

fn netlink_message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = (NLMSG_HDR_LEN + body.len()) as u32;
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests;
