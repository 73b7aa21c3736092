//! Prefixes as NLRI encodes them: a length in bits, then only the bytes it needs.

use super::*;

pub(super) fn v6(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    Ipv6Addr::from(a)
}

pub(super) fn parse_v4_prefixes(v: &[u8]) -> Option<Vec<Ipv4Net>> {
    parse_prefixes(AFI_IPV4, v).map(|ps| {
        ps.into_iter()
            .filter_map(|p| match p {
                IpNet::V4(p) => Some(p),
                IpNet::V6(_) => None,
            })
            .collect()
    })
}

/// Parses (length, prefix) pairs; host bits beyond the length are kept as sent.
pub(super) fn parse_prefixes(afi: u16, mut v: &[u8]) -> Option<Vec<IpNet>> {
    let max = if afi == AFI_IPV4 { 32 } else { 128 };
    let mut out = Vec::new();
    while !v.is_empty() {
        let len = v[0];
        if len > max {
            return None;
        }
        let n = (len as usize).div_ceil(8);
        let bytes = v.get(1..1 + n)?;
        let net = if afi == AFI_IPV4 {
            let mut a = [0u8; 4];
            a[..n].copy_from_slice(bytes);
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), len).ok()?)
        } else {
            let mut a = [0u8; 16];
            a[..n].copy_from_slice(bytes);
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), len).ok()?)
        };
        out.push(net);
        v = &v[1 + n..];
    }
    Some(out)
}

/// Encodes a prefix as (length, the significant octets of the address).
pub fn emit_prefix(p: &IpNet, out: &mut Vec<u8>) {
    let len = p.prefix_len();
    let n = (len as usize).div_ceil(8);
    out.push(len);
    match p {
        IpNet::V4(p) => out.extend_from_slice(&p.addr().octets()[..n]),
        IpNet::V6(p) => out.extend_from_slice(&p.addr().octets()[..n]),
    }
}

/// Encoded size of a prefix.
pub fn prefix_wire_len(p: &IpNet) -> usize {
    1 + (p.prefix_len() as usize).div_ceil(8)
}
