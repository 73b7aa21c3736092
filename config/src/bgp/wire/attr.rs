//! Path attributes: types, flags, values, and how each parses and emits.

use super::*;

/// A path attribute with its flags as received (optional, transitive, partial, extended length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathAttribute {
    pub flags: u8,
    pub value: Attr,
}

pub const FLAG_OPTIONAL: u8 = 0x80;
pub const FLAG_TRANSITIVE: u8 = 0x40;
pub const FLAG_PARTIAL: u8 = 0x20;
pub const FLAG_EXTENDED_LENGTH: u8 = 0x10;

pub const ATTR_ORIGIN: u8 = 1;
pub const ATTR_AS_PATH: u8 = 2;
pub const ATTR_NEXT_HOP: u8 = 3;
pub const ATTR_MED: u8 = 4;
pub const ATTR_LOCAL_PREF: u8 = 5;
pub const ATTR_ATOMIC_AGGREGATE: u8 = 6;
pub const ATTR_AGGREGATOR: u8 = 7;
pub const ATTR_COMMUNITIES: u8 = 8;
pub const ATTR_ORIGINATOR_ID: u8 = 9;
pub const ATTR_CLUSTER_LIST: u8 = 10;
pub const ATTR_MP_REACH: u8 = 14;
pub const ATTR_MP_UNREACH: u8 = 15;
pub const ATTR_EXTENDED_COMMUNITIES: u8 = 16;
pub const ATTR_AS4_PATH: u8 = 17;
pub const ATTR_AS4_AGGREGATOR: u8 = 18;
pub const ATTR_LARGE_COMMUNITIES: u8 = 32;

pub const ORIGIN_IGP: u8 = 0;
pub const ORIGIN_EGP: u8 = 1;
pub const ORIGIN_INCOMPLETE: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attr {
    Origin(u8),
    AsPath(Vec<AsSegment>),
    NextHop(Ipv4Addr),
    Med(u32),
    LocalPref(u32),
    AtomicAggregate,
    Aggregator {
        asn: u32,
        addr: Ipv4Addr,
    },
    Communities(Vec<u32>),
    /// RFC 4456: the router ID of the route's originator in the local AS, set by a route
    /// reflector.
    OriginatorId(Ipv4Addr),
    /// RFC 4456: the cluster IDs of the route reflectors the route passed, nearest first.
    ClusterList(Vec<Ipv4Addr>),
    MpReach(MpReach),
    MpUnreach(MpUnreach),
    ExtendedCommunities(Vec<u64>),
    /// RFC 6793: the real path when a 2-octet AS_PATH carries AS_TRANS.
    As4Path(Vec<AsSegment>),
    As4Aggregator {
        asn: u32,
        addr: Ipv4Addr,
    },
    LargeCommunities(Vec<LargeCommunity>),
    /// An attribute we do not interpret (optional ones are kept and can be passed on).
    Unknown {
        type_code: u8,
        value: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LargeCommunity {
    pub global: u32,
    pub local1: u32,
    pub local2: u32,
}

impl std::fmt::Display for LargeCommunity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.global, self.local1, self.local2)
    }
}

pub const AS_SET: u8 = 1;
pub const AS_SEQUENCE: u8 = 2;
pub const AS_CONFED_SEQUENCE: u8 = 3;
pub const AS_CONFED_SET: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsSegment {
    pub kind: u8,
    pub asns: Vec<u32>,
}

/// MP_REACH_NLRI for IPv4/IPv6 unicast (other families are kept as [`Attr::Unknown`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpReach {
    pub afi: u16,
    pub safi: u8,
    /// One address, or for IPv6 a global and a link-local one (RFC 2545). An IPv4 family may
    /// carry an IPv6 next hop (RFC 8950).
    pub next_hops: Vec<IpAddr>,
    pub nlri: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpUnreach {
    pub afi: u16,
    pub safi: u8,
    pub withdrawn: Vec<IpNet>,
}

impl Attr {
    pub fn type_code(&self) -> u8 {
        match self {
            Attr::Origin(_) => ATTR_ORIGIN,
            Attr::AsPath(_) => ATTR_AS_PATH,
            Attr::NextHop(_) => ATTR_NEXT_HOP,
            Attr::Med(_) => ATTR_MED,
            Attr::LocalPref(_) => ATTR_LOCAL_PREF,
            Attr::AtomicAggregate => ATTR_ATOMIC_AGGREGATE,
            Attr::Aggregator { .. } => ATTR_AGGREGATOR,
            Attr::Communities(_) => ATTR_COMMUNITIES,
            Attr::OriginatorId(_) => ATTR_ORIGINATOR_ID,
            Attr::ClusterList(_) => ATTR_CLUSTER_LIST,
            Attr::MpReach(_) => ATTR_MP_REACH,
            Attr::MpUnreach(_) => ATTR_MP_UNREACH,
            Attr::ExtendedCommunities(_) => ATTR_EXTENDED_COMMUNITIES,
            Attr::As4Path(_) => ATTR_AS4_PATH,
            Attr::As4Aggregator { .. } => ATTR_AS4_AGGREGATOR,
            Attr::LargeCommunities(_) => ATTR_LARGE_COMMUNITIES,
            Attr::Unknown { type_code, .. } => *type_code,
        }
    }
}

/// A path attribute type code, typed; `Unknown` keeps codes we do not interpret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttrType {
    Origin,
    AsPath,
    NextHop,
    Med,
    LocalPref,
    AtomicAggregate,
    Aggregator,
    Communities,
    OriginatorId,
    ClusterList,
    MpReach,
    MpUnreach,
    ExtendedCommunities,
    As4Path,
    As4Aggregator,
    LargeCommunities,
    Unknown(u8),
}

impl From<u8> for AttrType {
    fn from(code: u8) -> Self {
        match code {
            ATTR_ORIGIN => AttrType::Origin,
            ATTR_AS_PATH => AttrType::AsPath,
            ATTR_NEXT_HOP => AttrType::NextHop,
            ATTR_MED => AttrType::Med,
            ATTR_LOCAL_PREF => AttrType::LocalPref,
            ATTR_ATOMIC_AGGREGATE => AttrType::AtomicAggregate,
            ATTR_AGGREGATOR => AttrType::Aggregator,
            ATTR_COMMUNITIES => AttrType::Communities,
            ATTR_ORIGINATOR_ID => AttrType::OriginatorId,
            ATTR_CLUSTER_LIST => AttrType::ClusterList,
            ATTR_MP_REACH => AttrType::MpReach,
            ATTR_MP_UNREACH => AttrType::MpUnreach,
            ATTR_EXTENDED_COMMUNITIES => AttrType::ExtendedCommunities,
            ATTR_AS4_PATH => AttrType::As4Path,
            ATTR_AS4_AGGREGATOR => AttrType::As4Aggregator,
            ATTR_LARGE_COMMUNITIES => AttrType::LargeCommunities,
            other => AttrType::Unknown(other),
        }
    }
}

impl AttrType {
    pub fn code(self) -> u8 {
        match self {
            AttrType::Origin => ATTR_ORIGIN,
            AttrType::AsPath => ATTR_AS_PATH,
            AttrType::NextHop => ATTR_NEXT_HOP,
            AttrType::Med => ATTR_MED,
            AttrType::LocalPref => ATTR_LOCAL_PREF,
            AttrType::AtomicAggregate => ATTR_ATOMIC_AGGREGATE,
            AttrType::Aggregator => ATTR_AGGREGATOR,
            AttrType::Communities => ATTR_COMMUNITIES,
            AttrType::OriginatorId => ATTR_ORIGINATOR_ID,
            AttrType::ClusterList => ATTR_CLUSTER_LIST,
            AttrType::MpReach => ATTR_MP_REACH,
            AttrType::MpUnreach => ATTR_MP_UNREACH,
            AttrType::ExtendedCommunities => ATTR_EXTENDED_COMMUNITIES,
            AttrType::As4Path => ATTR_AS4_PATH,
            AttrType::As4Aggregator => ATTR_AS4_AGGREGATOR,
            AttrType::LargeCommunities => ATTR_LARGE_COMMUNITIES,
            AttrType::Unknown(code) => code,
        }
    }

    /// The flags RFC 4271/4760/1997/4456/8092/6793 prescribe for the type (optional and
    /// transitive bits), or `None` for types we do not know.
    pub fn flags(self) -> Option<u8> {
        use AttrType::*;
        Some(match self {
            Origin | AsPath | NextHop | LocalPref | AtomicAggregate => FLAG_TRANSITIVE,
            Med | MpReach | MpUnreach | OriginatorId | ClusterList => FLAG_OPTIONAL,
            Aggregator | Communities | ExtendedCommunities | As4Path | As4Aggregator
            | LargeCommunities => FLAG_OPTIONAL | FLAG_TRANSITIVE,
            Unknown(_) => return None,
        })
    }
}

/// The flags RFC 4271/4760/1997/8092/6793 prescribe for a type code (optional and transitive
/// bits), or `None` for types we do not know.
pub fn well_known_flags(type_code: u8) -> Option<u8> {
    AttrType::from(type_code).flags()
}

impl PathAttribute {
    /// An attribute with the flags its type prescribes.
    pub fn new(value: Attr) -> Self {
        let flags = well_known_flags(value.type_code()).unwrap_or(FLAG_OPTIONAL | FLAG_TRANSITIVE);
        Self { flags, value }
    }
}

pub(super) fn attr_error(subcode: u8, whole: &[u8], reason: &'static str) -> WireError {
    WireError::new(code::UPDATE, subcode, whole.to_vec(), reason)
}

pub(super) fn parse_attr(
    flags: u8,
    type_code: u8,
    v: &[u8],
    whole: &[u8],
    ctx: WireContext,
) -> Result<Attr, WireError> {
    let kind = AttrType::from(type_code);
    // Optional and transitive bits must match the type; partial only on optional transitive.
    if let Some(expected) = kind.flags() {
        let partial_ok = expected == FLAG_OPTIONAL | FLAG_TRANSITIVE;
        if flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE) != expected
            || (!partial_ok && flags & FLAG_PARTIAL != 0)
        {
            return Err(attr_error(
                code::ATTRIBUTE_FLAGS_ERROR,
                whole,
                "attribute flags do not match its type",
            ));
        }
    }
    let len_err = || {
        attr_error(
            code::ATTRIBUTE_LENGTH_ERROR,
            whole,
            "attribute length wrong for its type",
        )
    };
    let u32_at = |i: usize| u32::from_be_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
    let asn_len = if ctx.four_octet_as { 4 } else { 2 };
    Ok(match kind {
        AttrType::Origin => {
            if v.len() != 1 {
                return Err(len_err());
            }
            if v[0] > ORIGIN_INCOMPLETE {
                return Err(attr_error(
                    code::INVALID_ORIGIN,
                    whole,
                    "ORIGIN value undefined",
                ));
            }
            Attr::Origin(v[0])
        }
        AttrType::AsPath => Attr::AsPath(parse_as_path(v, asn_len).ok_or_else(|| {
            WireError::new(
                code::UPDATE,
                code::MALFORMED_AS_PATH,
                vec![],
                "malformed AS_PATH",
            )
        })?),
        AttrType::As4Path => Attr::As4Path(
            // RFC 6793 §6 would have AS4_PATH errors ignored; we are stricter but keep the code.
            parse_as_path(v, 4).ok_or_else(|| {
                attr_error(code::OPTIONAL_ATTRIBUTE_ERROR, whole, "malformed AS4_PATH")
            })?,
        ),
        AttrType::NextHop => {
            if v.len() != 4 {
                return Err(len_err());
            }
            let nh = Ipv4Addr::new(v[0], v[1], v[2], v[3]);
            if nh.is_unspecified() || nh.is_broadcast() || nh.is_multicast() {
                return Err(attr_error(
                    code::INVALID_NEXT_HOP,
                    whole,
                    "NEXT_HOP is not a unicast address",
                ));
            }
            Attr::NextHop(nh)
        }
        AttrType::Med | AttrType::LocalPref => {
            if v.len() != 4 {
                return Err(len_err());
            }
            if type_code == ATTR_MED {
                Attr::Med(u32_at(0))
            } else {
                Attr::LocalPref(u32_at(0))
            }
        }
        AttrType::AtomicAggregate => {
            if !v.is_empty() {
                return Err(len_err());
            }
            Attr::AtomicAggregate
        }
        AttrType::Aggregator | AttrType::As4Aggregator => {
            let alen = if type_code == ATTR_AS4_AGGREGATOR {
                4
            } else {
                asn_len
            };
            if v.len() != alen + 4 {
                return Err(len_err());
            }
            let asn = if alen == 4 {
                u32_at(0)
            } else {
                u16::from_be_bytes([v[0], v[1]]) as u32
            };
            let addr = Ipv4Addr::new(v[alen], v[alen + 1], v[alen + 2], v[alen + 3]);
            if type_code == ATTR_AGGREGATOR {
                Attr::Aggregator { asn, addr }
            } else {
                Attr::As4Aggregator { asn, addr }
            }
        }
        AttrType::Communities => {
            if !v.len().is_multiple_of(4) {
                return Err(len_err());
            }
            Attr::Communities((0..v.len()).step_by(4).map(u32_at).collect())
        }
        AttrType::OriginatorId => {
            if v.len() != 4 {
                return Err(len_err());
            }
            Attr::OriginatorId(Ipv4Addr::new(v[0], v[1], v[2], v[3]))
        }
        AttrType::ClusterList => {
            // RFC 7606 §7.10: a length that is not a non-zero multiple of 4 is malformed.
            if v.is_empty() || !v.len().is_multiple_of(4) {
                return Err(len_err());
            }
            Attr::ClusterList(
                v.chunks_exact(4)
                    .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                    .collect(),
            )
        }
        AttrType::ExtendedCommunities => {
            if !v.len().is_multiple_of(8) {
                return Err(len_err());
            }
            Attr::ExtendedCommunities(
                v.chunks_exact(8)
                    .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            )
        }
        AttrType::LargeCommunities => {
            if !v.len().is_multiple_of(12) {
                return Err(len_err());
            }
            Attr::LargeCommunities(
                (0..v.len())
                    .step_by(12)
                    .map(|i| LargeCommunity {
                        global: u32_at(i),
                        local1: u32_at(i + 4),
                        local2: u32_at(i + 8),
                    })
                    .collect(),
            )
        }
        AttrType::MpReach => parse_mp_reach(type_code, v, whole)?,
        AttrType::MpUnreach => parse_mp_unreach(type_code, v, whole)?,
        AttrType::Unknown(_) => {
            if flags & FLAG_OPTIONAL == 0 {
                return Err(attr_error(
                    code::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
                    whole,
                    "unrecognized well-known attribute",
                ));
            }
            Attr::Unknown {
                type_code,
                value: v.to_vec(),
            }
        }
    })
}

pub(super) fn parse_as_path(mut v: &[u8], asn_len: usize) -> Option<Vec<AsSegment>> {
    let mut segments = Vec::new();
    while !v.is_empty() {
        let (&kind, &count) = (v.first()?, v.get(1)?);
        if !(AS_SET..=AS_CONFED_SET).contains(&kind) || count == 0 {
            return None;
        }
        let bytes = v.get(2..2 + count as usize * asn_len)?;
        let asns = bytes
            .chunks_exact(asn_len)
            .map(|c| {
                if asn_len == 4 {
                    u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                } else {
                    u16::from_be_bytes([c[0], c[1]]) as u32
                }
            })
            .collect();
        segments.push(AsSegment { kind, asns });
        v = &v[2 + count as usize * asn_len..];
    }
    Some(segments)
}

pub(super) fn is_ip_unicast(afi: u16, safi: u8) -> bool {
    matches!(afi, AFI_IPV4 | AFI_IPV6) && safi == SAFI_UNICAST
}

pub(super) fn parse_mp_reach(type_code: u8, v: &[u8], whole: &[u8]) -> Result<Attr, WireError> {
    let err = || {
        attr_error(
            code::OPTIONAL_ATTRIBUTE_ERROR,
            whole,
            "malformed MP_REACH_NLRI",
        )
    };
    if v.len() < 5 {
        return Err(err());
    }
    let afi = u16::from_be_bytes([v[0], v[1]]);
    let safi = v[2];
    if !is_ip_unicast(afi, safi) {
        return Ok(Attr::Unknown {
            type_code,
            value: v.to_vec(),
        });
    }
    let nh_len = v[3] as usize;
    let nh = v.get(4..4 + nh_len).ok_or_else(err)?;
    let next_hops = match nh_len {
        4 => vec![IpAddr::V4(Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3]))],
        16 => vec![IpAddr::V6(v6(&nh[..16]))],
        32 => vec![IpAddr::V6(v6(&nh[..16])), IpAddr::V6(v6(&nh[16..]))],
        _ => return Err(err()),
    };
    // One reserved octet (formerly the SNPA count), which must be zero.
    let reserved = *v.get(4 + nh_len).ok_or_else(err)?;
    if reserved != 0 {
        return Err(err());
    }
    let nlri = parse_prefixes(afi, &v[5 + nh_len..]).ok_or_else(err)?;
    Ok(Attr::MpReach(MpReach {
        afi,
        safi,
        next_hops,
        nlri,
    }))
}

pub(super) fn parse_mp_unreach(type_code: u8, v: &[u8], whole: &[u8]) -> Result<Attr, WireError> {
    let err = || {
        attr_error(
            code::OPTIONAL_ATTRIBUTE_ERROR,
            whole,
            "malformed MP_UNREACH_NLRI",
        )
    };
    if v.len() < 3 {
        return Err(err());
    }
    let afi = u16::from_be_bytes([v[0], v[1]]);
    let safi = v[2];
    if !is_ip_unicast(afi, safi) {
        return Ok(Attr::Unknown {
            type_code,
            value: v.to_vec(),
        });
    }
    let withdrawn = parse_prefixes(afi, &v[3..]).ok_or_else(err)?;
    Ok(Attr::MpUnreach(MpUnreach {
        afi,
        safi,
        withdrawn,
    }))
}

impl PathAttribute {
    pub fn emit(&self, ctx: WireContext, out: &mut Vec<u8>) -> Result<(), EmitError> {
        let mut value = Vec::new();
        emit_attr_value(&self.value, ctx, &mut value);
        let extended = self.flags & FLAG_EXTENDED_LENGTH != 0 || value.len() > 255;
        let len = u16::try_from(value.len()).map_err(|_| EmitError::TooLong(value.len()))?;
        if extended {
            out.push(self.flags | FLAG_EXTENDED_LENGTH);
            out.push(self.value.type_code());
            out.extend_from_slice(&len.to_be_bytes());
        } else {
            out.push(self.flags);
            out.push(self.value.type_code());
            out.push(len as u8);
        }
        out.extend_from_slice(&value);
        Ok(())
    }
}

pub(super) fn emit_as_path(segments: &[AsSegment], four_octet: bool, out: &mut Vec<u8>) {
    for s in segments {
        // A segment holds at most 255 ASNs; longer ones are split into consecutive segments.
        for chunk in s.asns.chunks(255) {
            out.push(s.kind);
            out.push(chunk.len() as u8);
            for asn in chunk {
                if four_octet {
                    out.extend_from_slice(&asn.to_be_bytes());
                } else {
                    let a = u16::try_from(*asn).unwrap_or(AS_TRANS);
                    out.extend_from_slice(&a.to_be_bytes());
                }
            }
        }
    }
}

pub(super) fn emit_attr_value(a: &Attr, ctx: WireContext, out: &mut Vec<u8>) {
    match a {
        Attr::Origin(o) => out.push(*o),
        Attr::AsPath(segs) => emit_as_path(segs, ctx.four_octet_as, out),
        Attr::As4Path(segs) => emit_as_path(segs, true, out),
        Attr::NextHop(nh) => out.extend_from_slice(&nh.octets()),
        Attr::Med(v) | Attr::LocalPref(v) => out.extend_from_slice(&v.to_be_bytes()),
        Attr::AtomicAggregate => {}
        Attr::Aggregator { asn, addr } => {
            if ctx.four_octet_as {
                out.extend_from_slice(&asn.to_be_bytes());
            } else {
                out.extend_from_slice(&u16::try_from(*asn).unwrap_or(AS_TRANS).to_be_bytes());
            }
            out.extend_from_slice(&addr.octets());
        }
        Attr::As4Aggregator { asn, addr } => {
            out.extend_from_slice(&asn.to_be_bytes());
            out.extend_from_slice(&addr.octets());
        }
        Attr::Communities(cs) => cs
            .iter()
            .for_each(|c| out.extend_from_slice(&c.to_be_bytes())),
        Attr::OriginatorId(a) => out.extend_from_slice(&a.octets()),
        Attr::ClusterList(ids) => ids.iter().for_each(|a| out.extend_from_slice(&a.octets())),
        Attr::ExtendedCommunities(cs) => cs
            .iter()
            .for_each(|c| out.extend_from_slice(&c.to_be_bytes())),
        Attr::LargeCommunities(cs) => {
            for c in cs {
                out.extend_from_slice(&c.global.to_be_bytes());
                out.extend_from_slice(&c.local1.to_be_bytes());
                out.extend_from_slice(&c.local2.to_be_bytes());
            }
        }
        Attr::MpReach(m) => {
            out.extend_from_slice(&m.afi.to_be_bytes());
            out.push(m.safi);
            let at = out.len();
            out.push(0);
            for nh in &m.next_hops {
                match nh {
                    IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                    IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
                }
            }
            out[at] = (out.len() - at - 1) as u8;
            out.push(0);
            m.nlri.iter().for_each(|p| emit_prefix(p, out));
        }
        Attr::MpUnreach(m) => {
            out.extend_from_slice(&m.afi.to_be_bytes());
            out.push(m.safi);
            m.withdrawn.iter().for_each(|p| emit_prefix(p, out));
        }
        Attr::Unknown { value, .. } => out.extend_from_slice(value),
    }
}
