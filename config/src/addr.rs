//! Parsing of the small string languages inside MetalLB resources: pool address entries
//! (CIDRs and `first-last` ranges), Go duration strings (BGPPeer timers) and BGP community
//! literals. Pure functions, matching MetalLB's parsers (`internal/config.ParseCIDR`, Go's
//! `time.ParseDuration`, `internal/bgp/community.New`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

/// One block of special-purpose addresses: never a load-balancer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialBlock {
    /// The first and last address of the block (same family).
    pub first: IpAddr,
    pub last: IpAddr,
    /// What the block is for, in a few words ("loopback", ...).
    pub what: &'static str,
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
}

const fn v6(v: u128) -> IpAddr {
    IpAddr::V6(std::net::Ipv6Addr::from_bits(v))
}

/// Addresses a host never answers for on behalf of a Service: announcing them (gratuitous
/// ARP, unsolicited NA, a BGP route) disturbs every host on the segment or cannot work at
/// all. In ascending order within each family.
pub const SPECIAL_BLOCKS: &[SpecialBlock] = &[
    SpecialBlock {
        first: v4(0, 0, 0, 0),
        last: v4(0, 255, 255, 255),
        what: "unspecified (\"this network\", 0.0.0.0/8)",
    },
    SpecialBlock {
        first: v4(127, 0, 0, 0),
        last: v4(127, 255, 255, 255),
        what: "loopback (127.0.0.0/8)",
    },
    SpecialBlock {
        first: v4(169, 254, 0, 0),
        last: v4(169, 254, 255, 255),
        what: "link-local (169.254.0.0/16)",
    },
    SpecialBlock {
        first: v4(224, 0, 0, 0),
        last: v4(239, 255, 255, 255),
        what: "multicast (224.0.0.0/4)",
    },
    SpecialBlock {
        first: v4(255, 255, 255, 255),
        last: v4(255, 255, 255, 255),
        what: "limited broadcast (255.255.255.255)",
    },
    SpecialBlock {
        first: v6(0),
        last: v6(0),
        what: "unspecified (::)",
    },
    SpecialBlock {
        first: v6(1),
        last: v6(1),
        what: "loopback (::1)",
    },
    SpecialBlock {
        first: v6(0xfe80 << 112),
        last: v6((0xfebf << 112) | ((1 << 112) - 1)),
        what: "link-local (fe80::/10)",
    },
    SpecialBlock {
        first: v6(0xff00 << 112),
        last: v6(u128::MAX),
        what: "multicast (ff00::/8)",
    },
];

/// What `ip` is reserved for, when it is a special-purpose address that must never be
/// assigned to or announced for a Service: unspecified, loopback, link-local, multicast or
/// the IPv4 limited broadcast. IPv4-mapped IPv6 addresses are judged as their IPv4 address.
pub fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    let ip = ip.to_canonical();
    SPECIAL_BLOCKS
        .iter()
        .find(|b| b.first.is_ipv4() == ip.is_ipv4() && b.first <= ip && ip <= b.last)
        .map(|b| b.what)
}

/// The special-purpose blocks that intersect `first..=last`, each clipped to the range.
pub fn special_purpose_in(first: IpAddr, last: IpAddr) -> Vec<SpecialBlock> {
    SPECIAL_BLOCKS
        .iter()
        .filter(|b| b.first.is_ipv4() == first.is_ipv4() && first.is_ipv4() == last.is_ipv4())
        .filter(|b| b.first <= last && first <= b.last)
        .map(|b| SpecialBlock {
            first: b.first.max(first),
            last: b.last.min(last),
            what: b.what,
        })
        .collect()
}

/// Why a pool address entry was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("{0:?} is not an IP address")]
    NotAnAddress(String),
    #[error("range {bound} {text:?} is not an IP address")]
    BadRangeBound { bound: &'static str, text: String },
    #[error("prefix length {len:?} is not a number in 0..={max}")]
    PrefixOutOfRange { len: String, max: u8 },
    #[error("range mixes address families: {start} is {start_family} but {end} is {end_family}")]
    MixedFamilies {
        start: IpAddr,
        end: IpAddr,
        start_family: &'static str,
        end_family: &'static str,
    },
    #[error("range end {end} is below its start {start}")]
    EndBelowStart { start: IpAddr, end: IpAddr },
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Parses one `spec.addresses` entry of an IPAddressPool into the CIDRs it stands for.
///
/// - A CIDR (`192.0.2.0/28`, `2001:db8::/120`) gives itself. Host bits are accepted and
///   cleared (`192.0.2.5/24` gives `192.0.2.0/24`), because MetalLB parses with Go's
///   `net.ParseCIDR`, which does exactly that; rejecting it would refuse manifests MetalLB
///   runs. The validator reports it as a warning instead ([`has_host_bits`]).
/// - A range `first-last` (spaces around `-` tolerated, as MetalLB trims them) gives the
///   minimal list of CIDRs covering exactly `first..=last`, in ascending order.
pub fn parse_pool_range(s: &str) -> Result<Vec<IpNet>, AddrError> {
    // MetalLB decides "range" by the presence of '-', before anything else.
    if let Some((first, last)) = s.split_once('-') {
        let bound = |bound: &'static str, text: &str| {
            parse_ip(text.trim()).map_err(|_| AddrError::BadRangeBound {
                bound,
                text: text.trim().to_string(),
            })
        };
        let start = bound("start", first)?;
        let end = bound("end", last)?;
        return summarize_range(start, end);
    }
    parse_cidr(s).map(|net| vec![net.trunc()])
}

/// Whether a CIDR entry (not a range) has bits set beyond its prefix, e.g. `192.0.2.5/24`.
pub fn has_host_bits(s: &str) -> bool {
    if s.contains('-') {
        return false;
    }
    parse_cidr(s).is_ok_and(|net| net.addr() != net.network())
}

/// The first and last address an entry covers (for overlap checks and messages).
pub fn pool_entry_bounds(s: &str) -> Result<(IpAddr, IpAddr), AddrError> {
    let nets = parse_pool_range(s)?;
    match (nets.first(), nets.last()) {
        (Some(first), Some(last)) => Ok((first.network(), last.broadcast())),
        // Unreachable in practice: both forms give at least one CIDR.
        _ => Err(AddrError::NotAnAddress(s.to_string())),
    }
}

fn parse_ip(s: &str) -> Result<IpAddr, AddrError> {
    IpAddr::from_str(s).map_err(|_| AddrError::NotAnAddress(s.to_string()))
}

fn parse_cidr(s: &str) -> Result<IpNet, AddrError> {
    let Some((addr, len)) = s.split_once('/') else {
        return Err(AddrError::NotAnAddress(s.to_string()));
    };
    let ip = parse_ip(addr)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    // Digits only: Rust's integer parser would also take a leading '+'.
    let prefix = (!len.is_empty() && len.len() <= 3 && len.bytes().all(|b| b.is_ascii_digit()))
        .then(|| len.parse::<u8>().ok())
        .flatten()
        .filter(|p| *p <= max)
        .ok_or_else(|| AddrError::PrefixOutOfRange {
            len: len.to_string(),
            max,
        })?;
    IpNet::new(ip, prefix).map_err(|_| AddrError::PrefixOutOfRange {
        len: len.to_string(),
        max,
    })
}

/// The minimal ascending list of CIDRs covering exactly `start..=end`.
pub fn summarize_range(start: IpAddr, end: IpAddr) -> Result<Vec<IpNet>, AddrError> {
    let (bits, lo, hi) = match (start, end) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (32u32, u32::from(a) as u128, u32::from(b) as u128),
        (IpAddr::V6(a), IpAddr::V6(b)) => (128u32, u128::from(a), u128::from(b)),
        _ => {
            return Err(AddrError::MixedFamilies {
                start,
                end,
                start_family: family(start),
                end_family: family(end),
            });
        }
    };
    if hi < lo {
        return Err(AddrError::EndBelowStart { start, end });
    }
    let mut out = Vec::new();
    let mut cur = lo;
    loop {
        // The largest aligned block starting at `cur` that does not pass `hi`.
        let align = if cur == 0 {
            bits
        } else {
            cur.trailing_zeros().min(bits)
        };
        let mut k = align;
        while k > 0 && span(k) > hi - cur {
            k -= 1;
        }
        let addr = if bits == 32 {
            IpAddr::from(std::net::Ipv4Addr::from(cur as u32))
        } else {
            IpAddr::from(std::net::Ipv6Addr::from(cur))
        };
        // `bits - k` is at most the family's width, so this cannot fail.
        let prefix = (bits - k) as u8;
        out.push(IpNet::new(addr, prefix).expect("prefix within family width"));
        let last = cur + span(k);
        if last >= hi {
            break;
        }
        cur = last + 1;
    }
    Ok(out)
}

/// Number of addresses in a block of 2^k, minus one (so k = 128 fits in u128).
fn span(k: u32) -> u128 {
    if k >= 128 {
        u128::MAX
    } else {
        (1u128 << k) - 1
    }
}

/// Why a Go duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {0:?}: expected a Go duration such as 90s, 1m30s or 500ms")]
    Syntax(String),
    #[error("invalid duration {input:?}: unknown unit {unit:?} (valid: ns, us, µs, ms, s, m, h)")]
    UnknownUnit { input: String, unit: String },
    #[error("invalid duration {0:?}: missing unit (valid: ns, us, µs, ms, s, m, h)")]
    MissingUnit(String),
    #[error("invalid duration {0:?}: negative durations are not allowed here")]
    Negative(String),
    #[error("invalid duration {0:?}: too large")]
    Overflow(String),
}

/// Parses a Go duration string (`time.ParseDuration`): a sequence of decimal numbers, each
/// with optional fraction and a unit (`ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`), with an
/// optional sign; `0` alone needs no unit. Negative values are rejected (timers cannot be).
pub fn parse_go_duration(s: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax(s.to_string());
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(syntax());
    }
    let mut total: u128 = 0; // nanoseconds
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(syntax());
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "" => return Err(DurationError::MissingUnit(s.to_string())),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            other => {
                return Err(DurationError::UnknownUnit {
                    input: s.to_string(),
                    unit: other.to_string(),
                });
            }
        };
        let overflow = || DurationError::Overflow(s.to_string());
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut value = int.checked_mul(nanos_per_unit).ok_or_else(overflow)?;
        // Fraction: as Go, digits beyond what can matter are dropped.
        let mut scale = nanos_per_unit;
        for d in frac_part.bytes() {
            if scale < 10 {
                break;
            }
            scale /= 10;
            value += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(value).ok_or_else(overflow)?;
        // Go's limit: the total must fit an int64 of nanoseconds.
        if total > i64::MAX as u128 {
            return Err(overflow());
        }
        rest = after;
    }
    if negative && total != 0 {
        return Err(DurationError::Negative(s.to_string()));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// A BGP community value as MetalLB accepts it. MetalLB knows no well-known names
/// (`no-export` etc. are not accepted); names resolve only through Community aliases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Community {
    /// RFC 1997 community, written `AA:NN`.
    Standard { asn: u16, value: u16 },
    /// RFC 8092 large community, written `large:A:B:C`.
    Large {
        global_admin: u32,
        local1: u32,
        local2: u32,
    },
}

impl Community {
    /// The 32-bit value of a standard community as sent on the wire.
    pub fn standard_u32(&self) -> Option<u32> {
        match *self {
            Community::Standard { asn, value } => Some((u32::from(asn) << 16) | u32::from(value)),
            Community::Large { .. } => None,
        }
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Community::Standard { asn, value } => write!(f, "{asn}:{value}"),
            Community::Large {
                global_admin,
                local1,
                local2,
            } => write!(f, "large:{global_admin}:{local1}:{local2}"),
        }
    }
}

/// Why a community literal was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommunityError {
    /// Has the shape of a literal but a part is out of range or not a number.
    #[error("invalid community value {input:?}: {detail}")]
    Value { input: String, detail: String },
    /// Not shaped like any literal (MetalLB then treats it as an alias name).
    #[error("{0:?} is not a community literal (AA:NN or large:A:B:C)")]
    Format(String),
}

impl FromStr for Community {
    type Err = CommunityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let value_err = |detail: String| CommunityError::Value {
            input: s.to_string(),
            detail,
        };
        match parts.as_slice() {
            [asn, value] => Ok(Community::Standard {
                asn: parse_decimal::<u16>(asn)
                    .ok_or_else(|| value_err(format!("{asn:?} is not a number in 0..=65535")))?,
                value: parse_decimal::<u16>(value)
                    .ok_or_else(|| value_err(format!("{value:?} is not a number in 0..=65535")))?,
            }),
            [marker, a, b, c] => {
                if *marker != "large" {
                    return Err(value_err(format!(
                        "a large community is written large:A:B:C, not starting with {marker:?}"
                    )));
                }
                let part = |p: &str| {
                    parse_decimal::<u32>(p).ok_or_else(|| {
                        value_err(format!("{p:?} is not a number in 0..=4294967295"))
                    })
                };
                Ok(Community::Large {
                    global_admin: part(a)?,
                    local1: part(b)?,
                    local2: part(c)?,
                })
            }
            _ => Err(CommunityError::Format(s.to_string())),
        }
    }
}

/// Parses one or more ASCII digits (no sign, as Go's `strconv.ParseUint`).
fn parse_decimal<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {

    #[test]
    fn special_purpose_addresses_are_named() {
        for (ip, what) in [
            ("255.255.255.255", "limited broadcast"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.255", "multicast"),
            ("169.254.1.1", "link-local"),
            ("ff02::1", "multicast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("febf:ffff::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
        ] {
            let got = special_purpose(ip.parse().unwrap());
            assert!(got.is_some_and(|w| w.starts_with(what)), "{ip}: {got:?}");
        }
        for ip in [
            "192.0.2.1",
            "1.0.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "223.255.255.255",
            "240.0.0.1",
            "255.255.255.254",
            "2001:db8::1",
            "::2",
            "fec0::1",
            "feff::1",
        ] {
            assert_eq!(special_purpose(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn special_purpose_in_clips_to_the_range() {
        let got = special_purpose_in("126.0.0.0".parse().unwrap(), "127.0.0.5".parse().unwrap());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].first, "127.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(got[0].last, "127.0.0.5".parse::<IpAddr>().unwrap());
        assert!(
            special_purpose_in("192.0.2.0".parse().unwrap(), "192.0.2.255".parse().unwrap())
                .is_empty()
        );
        let v6 = special_purpose_in("::".parse().unwrap(), "::ff".parse().unwrap());
        assert_eq!(v6.len(), 2);
    }
    use super::*;
    use proptest::prelude::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn cidrs_parse_and_mask_host_bits() {
        assert_eq!(
            parse_pool_range("192.0.2.0/28").unwrap(),
            nets(&["192.0.2.0/28"])
        );
        assert_eq!(
            parse_pool_range("2001:db8::/120").unwrap(),
            nets(&["2001:db8::/120"])
        );
        assert_eq!(
            parse_pool_range("192.0.2.5/24").unwrap(),
            nets(&["192.0.2.0/24"])
        );
        assert!(has_host_bits("192.0.2.5/24"));
        assert!(!has_host_bits("192.0.2.0/24"));
        assert_eq!(
            parse_pool_range("192.0.2.7/32").unwrap(),
            nets(&["192.0.2.7/32"])
        );
    }

    #[test]
    fn cidr_errors() {
        assert_eq!(
            parse_pool_range("192.0.2.0/33"),
            Err(AddrError::PrefixOutOfRange {
                len: "33".into(),
                max: 32
            })
        );
        assert!(matches!(
            parse_pool_range("2001:db8::/129"),
            Err(AddrError::PrefixOutOfRange { max: 128, .. })
        ));
        assert!(matches!(
            parse_pool_range("192.0.2.0/+8"),
            Err(AddrError::PrefixOutOfRange { .. })
        ));
        assert!(matches!(
            parse_pool_range("192.0.2.0/"),
            Err(AddrError::PrefixOutOfRange { .. })
        ));
        assert!(matches!(
            parse_pool_range("192.0.2.0"),
            Err(AddrError::NotAnAddress(_))
        ));
        assert!(matches!(
            parse_pool_range("192.0.2.256/24"),
            Err(AddrError::NotAnAddress(_))
        ));
        assert!(matches!(
            parse_pool_range("pool"),
            Err(AddrError::NotAnAddress(_))
        ));
        assert!(matches!(
            parse_pool_range(""),
            Err(AddrError::NotAnAddress(_))
        ));
    }

    #[test]
    fn ranges_summarise() {
        assert_eq!(
            parse_pool_range("192.0.2.10-192.0.2.20").unwrap(),
            nets(&[
                "192.0.2.10/31",
                "192.0.2.12/30",
                "192.0.2.16/30",
                "192.0.2.20/32"
            ])
        );
        assert_eq!(
            parse_pool_range("192.0.2.0 - 192.0.2.255").unwrap(),
            nets(&["192.0.2.0/24"])
        );
        assert_eq!(
            parse_pool_range("192.0.2.7-192.0.2.7").unwrap(),
            nets(&["192.0.2.7/32"])
        );
        assert_eq!(
            parse_pool_range("0.0.0.0-255.255.255.255").unwrap(),
            nets(&["0.0.0.0/0"])
        );
        assert_eq!(
            parse_pool_range("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").unwrap(),
            nets(&["::/0"])
        );
        assert_eq!(
            parse_pool_range("2001:db8::1-2001:db8::4").unwrap(),
            nets(&["2001:db8::1/128", "2001:db8::2/127", "2001:db8::4/128"])
        );
        assert_eq!(
            parse_pool_range("255.255.255.254-255.255.255.255").unwrap(),
            nets(&["255.255.255.254/31"])
        );
    }

    #[test]
    fn range_errors() {
        let e = parse_pool_range("192.0.2.20-192.0.2.10").unwrap_err();
        assert_eq!(
            e.to_string(),
            "range end 192.0.2.10 is below its start 192.0.2.20"
        );
        assert!(matches!(
            parse_pool_range("192.0.2.1-2001:db8::1"),
            Err(AddrError::MixedFamilies { .. })
        ));
        assert_eq!(
            parse_pool_range("192.0.2.1-").unwrap_err().to_string(),
            "range end \"\" is not an IP address"
        );
        assert_eq!(
            parse_pool_range("x - 192.0.2.1").unwrap_err().to_string(),
            "range start \"x\" is not an IP address"
        );
        assert!(matches!(
            parse_pool_range("192.0.2.0/24-192.0.2.9"),
            Err(AddrError::BadRangeBound { bound: "start", .. })
        ));
    }

    #[test]
    fn bounds() {
        assert_eq!(
            pool_entry_bounds("192.0.2.10-192.0.2.20").unwrap(),
            ("192.0.2.10".parse().unwrap(), "192.0.2.20".parse().unwrap())
        );
        assert_eq!(
            pool_entry_bounds("192.0.2.0/30").unwrap(),
            ("192.0.2.0".parse().unwrap(), "192.0.2.3".parse().unwrap())
        );
    }

    fn as_u128(ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    fn check_summary(lo: u128, hi: u128, out: &[IpNet]) {
        // Ascending, contiguous, exactly covering lo..=hi.
        assert_eq!(as_u128(out[0].network()), lo);
        assert_eq!(as_u128(out.last().unwrap().broadcast()), hi);
        for w in out.windows(2) {
            assert_eq!(as_u128(w[0].broadcast()) + 1, as_u128(w[1].network()));
        }
        for n in out {
            assert_eq!(n.addr(), n.network(), "{n} is not aligned");
        }
        // Minimal: no two neighbours are buddies that could merge into one block.
        for w in out.windows(2) {
            if w[0].prefix_len() == w[1].prefix_len() && w[0].prefix_len() > 0 {
                let parent = IpNet::new(w[0].network(), w[0].prefix_len() - 1)
                    .unwrap()
                    .trunc();
                assert!(
                    !(parent.network() == w[0].network() && parent.broadcast() == w[1].broadcast()),
                    "{} and {} could merge",
                    w[0],
                    w[1]
                );
            }
        }
    }

    proptest! {
        #[test]
        fn v4_ranges_summarise_exactly(a: u32, b: u32) {
            let (lo, hi) = (a.min(b), a.max(b));
            let s = format!("{}-{}", std::net::Ipv4Addr::from(lo), std::net::Ipv4Addr::from(hi));
            let out = parse_pool_range(&s).unwrap();
            check_summary(lo as u128, hi as u128, &out);
            prop_assert!(out.len() <= 62);
        }

        #[test]
        fn v6_ranges_summarise_exactly(a: u128, b: u128) {
            let (lo, hi) = (a.min(b), a.max(b));
            let s = format!("{} - {}", std::net::Ipv6Addr::from(lo), std::net::Ipv6Addr::from(hi));
            let out = parse_pool_range(&s).unwrap();
            check_summary(lo, hi, &out);
            prop_assert!(out.len() <= 254);
        }

        #[test]
        fn small_v4_ranges_cover_every_address(base: u32, len in 0u32..600) {
            let lo = base.min(u32::MAX - len);
            let hi = lo + len;
            let out = summarize_range(std::net::Ipv4Addr::from(lo).into(), std::net::Ipv4Addr::from(hi).into()).unwrap();
            let count: u128 = out.iter().map(|n| 1u128 << (32 - n.prefix_len())).sum();
            prop_assert_eq!(count, len as u128 + 1);
        }

        #[test]
        fn cidr_roundtrip(a: u32, p in 0u8..=32) {
            let net = IpNet::new(std::net::Ipv4Addr::from(a).into(), p).unwrap().trunc();
            prop_assert_eq!(parse_pool_range(&net.to_string()).unwrap(), vec![net]);
        }

        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC{0,40}") {
            let _ = parse_pool_range(&s);
            let _ = parse_go_duration(&s);
            let _ = s.parse::<Community>();
        }

        #[test]
        fn durations_roundtrip(h in 0u64..100, m in 0u64..60, sec in 0u64..60, ms in 0u64..1000) {
            let s = format!("{h}h{m}m{sec}s{ms}ms");
            let want = Duration::from_millis(((h * 60 + m) * 60 + sec) * 1000 + ms);
            prop_assert_eq!(parse_go_duration(&s).unwrap(), want);
        }

        #[test]
        fn communities_roundtrip(a: u16, b: u16, x: u32, y: u32, z: u32) {
            let std = Community::Standard { asn: a, value: b };
            prop_assert_eq!(std.to_string().parse::<Community>().unwrap(), std);
            let large = Community::Large { global_admin: x, local1: y, local2: z };
            prop_assert_eq!(large.to_string().parse::<Community>().unwrap(), large);
        }
    }

    #[test]
    fn go_durations() {
        let d = |s| parse_go_duration(s).unwrap();
        assert_eq!(d("90s"), Duration::from_secs(90));
        assert_eq!(d("1m30s"), Duration::from_secs(90));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("0s"), Duration::ZERO);
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("3h"), Duration::from_secs(3 * 3600));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d(".5s"), Duration::from_millis(500));
        assert_eq!(d("1.s"), Duration::from_secs(1));
        assert_eq!(d("+2s"), Duration::from_secs(2));
        assert_eq!(d("-0s"), Duration::ZERO);
        assert_eq!(d("10us"), Duration::from_micros(10));
        assert_eq!(d("10µs"), Duration::from_micros(10));
        assert_eq!(d("10μs"), Duration::from_micros(10));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d("1h2m3.5s"), Duration::from_millis(3_723_500));
    }

    #[test]
    fn go_duration_errors() {
        let e = |s| parse_go_duration(s).unwrap_err();
        assert!(matches!(e(""), DurationError::Syntax(_)));
        assert!(matches!(e("90"), DurationError::MissingUnit(_)));
        assert!(matches!(e("1m30"), DurationError::MissingUnit(_)));
        assert!(matches!(e("5d"), DurationError::UnknownUnit { .. }));
        assert!(matches!(e("s"), DurationError::Syntax(_)));
        assert!(matches!(e(".s"), DurationError::Syntax(_)));
        assert!(matches!(e("-5s"), DurationError::Negative(_)));
        assert!(matches!(e("3000000h"), DurationError::Overflow(_)));
        assert!(matches!(e("1 s"), DurationError::UnknownUnit { .. }));
    }

    #[test]
    fn community_literals() {
        assert_eq!(
            "65000:100".parse::<Community>().unwrap(),
            Community::Standard {
                asn: 65000,
                value: 100
            }
        );
        assert_eq!(
            "65000:100".parse::<Community>().unwrap().standard_u32(),
            Some((65000 << 16) | 100)
        );
        assert_eq!(
            "large:4200000000:1:2".parse::<Community>().unwrap(),
            Community::Large {
                global_admin: 4_200_000_000,
                local1: 1,
                local2: 2
            }
        );
        assert!(matches!(
            "65536:1".parse::<Community>(),
            Err(CommunityError::Value { .. })
        ));
        assert!(matches!(
            "+1:1".parse::<Community>(),
            Err(CommunityError::Value { .. })
        ));
        assert!(matches!(
            ":1".parse::<Community>(),
            Err(CommunityError::Value { .. })
        ));
        assert!(matches!(
            "big:1:2:3".parse::<Community>(),
            Err(CommunityError::Value { .. })
        ));
        assert!(matches!(
            "large:1:2:4294967296".parse::<Community>(),
            Err(CommunityError::Value { .. })
        ));
        assert!(matches!(
            "no-export".parse::<Community>(),
            Err(CommunityError::Format(_))
        ));
        assert!(matches!(
            "1:2:3".parse::<Community>(),
            Err(CommunityError::Format(_))
        ));
    }
}
