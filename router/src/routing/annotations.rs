//! The node annotations kube-router reads, parsed per node. A bad value is a
//! [`AnnotationProblem`] naming the annotation and the reason (the daemon turns it into a
//! Warning Event on the Node) and the previous good value of that annotation stays in force.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::options::ExternalPeer;

pub const NODE_ASN: &str = "kube-router.io/node.asn";
pub const RR_SERVER: &str = "kube-router.io/rr.server";
pub const RR_CLIENT: &str = "kube-router.io/rr.client";
pub const PEERS: &str = "kube-router.io/peers";
pub const PEER_IPS: &str = "kube-router.io/peer.ips";
pub const PEER_ASNS: &str = "kube-router.io/peer.asns";
pub const PEER_PASSWORDS: &str = "kube-router.io/peer.passwords";
pub const PEER_LOCALIPS: &str = "kube-router.io/peer.localips";
pub const PEER_PORTS: &str = "kube-router.io/peer.ports";
pub const COMMUNITIES: &str = "kube-router.io/node.bgp.communities";
pub const CUSTOM_IMPORT_REJECT: &str = "kube-router.io/node.bgp.customimportreject";
pub const PATH_PREPEND_AS: &str = "kube-router.io/path-prepend.as";
pub const PATH_PREPEND_REPEAT_N: &str = "kube-router.io/path-prepend.repeat-n";
pub const POD_CIDR: &str = "kube-router.io/pod-cidr";
pub const POD_CIDRS: &str = "kube-router.io/pod-cidrs";
pub const BGP_LOCAL_ADDRESSES: &str = "kube-router.io/bgp-local-addresses";

/// What one node's annotations say, every field already validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeBgp {
    /// `node.asn`.
    pub asn: Option<u32>,
    /// `rr.server`: this node is a route reflector with this cluster id.
    pub rr_server: Option<Ipv4Addr>,
    /// `rr.client`: this node is a client of the reflectors with this cluster id.
    pub rr_client: Option<Ipv4Addr>,
    /// `peers` (or the deprecated `peer.*`): this node's external peers.
    pub peers: Vec<ExternalPeer>,
    /// `node.bgp.communities`, as 32-bit values.
    pub communities: Vec<u32>,
    /// `node.bgp.customimportreject`.
    pub import_reject: Vec<IpNet>,
    /// `path-prepend.as` repeated `repeat-n` times.
    pub path_prepend: Option<(u32, u8)>,
    /// `pod-cidr` / `pod-cidrs` (used only when the Node has no `spec.podCIDRs`).
    pub pod_cidrs: Vec<IpNet>,
    /// `bgp-local-addresses`.
    pub local_addresses: Vec<IpAddr>,
}

/// One annotation that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {reason}")]
pub struct AnnotationProblem {
    pub annotation: &'static str,
    pub reason: String,
}

/// `kube-router.io/peers`: one entry of the YAML list.
#[derive(Debug, serde::Deserialize)]
struct PeerYaml {
    remoteip: Option<String>,
    remoteasn: Option<u64>,
    localip: Option<String>,
    password: Option<String>,
    port: Option<u64>,
}

/// GoBGP's well-known community names, as kube-router accepts them.
pub const WELL_KNOWN_COMMUNITIES: &[(&str, u32)] = &[
    ("internet", 0x0000_0000),
    ("planned-shut", 0xffff_0000),
    ("accept-own", 0xffff_0001),
    ("route-filter-translated-v4", 0xffff_0002),
    ("route-filter-v4", 0xffff_0003),
    ("route-filter-translated-v6", 0xffff_0004),
    ("route-filter-v6", 0xffff_0005),
    ("llgr-stale", 0xffff_0006),
    ("no-llgr", 0xffff_0007),
    ("blackhole", 0xffff_029a),
    ("no-export", 0xffff_ff01),
    ("no-advertise", 0xffff_ff02),
    ("no-export-subconfed", 0xffff_ff03),
    ("no-peer", 0xffff_ff04),
];

/// An unsigned number the way Go's `strconv.ParseUint(s, 0, bits)` reads it: decimal, or
/// `0x`/`0o`/`0b` prefixed, or a leading `0` for octal.
pub fn parse_go_uint(s: &str, bits: u32) -> Result<u64, String> {
    let t = s.trim();
    let (digits, radix) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (h, 16)
    } else if let Some(o) = t.strip_prefix("0o").or_else(|| t.strip_prefix("0O")) {
        (o, 8)
    } else if let Some(b) = t.strip_prefix("0b").or_else(|| t.strip_prefix("0B")) {
        (b, 2)
    } else if t.len() > 1 && t.starts_with('0') {
        (&t[1..], 8)
    } else {
        (t, 10)
    };
    if digits.is_empty() || digits.starts_with('+') {
        return Err(format!("{s:?} is not a number"));
    }
    let v = u64::from_str_radix(digits, radix).map_err(|_| format!("{s:?} is not a number"))?;
    if bits < 64 && v >> bits != 0 {
        return Err(format!("{s:?} does not fit in {bits} bits"));
    }
    Ok(v)
}

fn parse_asn(s: &str) -> Result<u32, String> {
    let v = parse_go_uint(s, 32)?;
    if v == 0 {
        return Err("ASN 0 is reserved".into());
    }
    Ok(v as u32)
}

/// A route-reflector cluster id: a 32-bit number or an IPv4 address.
fn parse_cluster_id(s: &str) -> Result<Ipv4Addr, String> {
    if let Ok(v) = parse_go_uint(s, 32) {
        return Ok(Ipv4Addr::from(v as u32));
    }
    s.trim()
        .parse::<Ipv4Addr>()
        .map_err(|_| format!("{s:?} is neither a 32-bit number nor an IPv4 address"))
}

/// One community: a 32-bit number, `aa:nn` (two 16-bit numbers) or a well-known name.
pub fn parse_community(s: &str) -> Result<u32, String> {
    let t = s.trim();
    if let Ok(v) = t.parse::<u32>() {
        return Ok(v);
    }
    if let Some((a, n)) = t.split_once(':')
        && let (Ok(a), Ok(n)) = (a.parse::<u16>(), n.parse::<u16>())
    {
        return Ok((u32::from(a) << 16) | u32::from(n));
    }
    WELL_KNOWN_COMMUNITIES
        .iter()
        .find(|(name, _)| *name == t)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            format!("{s:?} is not a community (a 32-bit number, aa:nn, or a well-known name like no-export)")
        })
}

/// A CIDR the way Go's `net.ParseCIDR` reads it (host bits allowed, then cleared).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    if !t.contains('/') {
        return Err(format!("{s:?} is not a CIDR (no prefix length)"));
    }
    t.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| format!("{s:?} is not a CIDR"))
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse::<IpAddr>()
        .map_err(|_| format!("{s:?} is not an IP address"))
}

/// Comma-separated items; kube-router's `stringToSlice` drops nothing but trims spaces.
fn items(value: &str) -> Vec<&str> {
    value.split(',').map(str::trim).collect()
}

fn list<T>(value: &str, f: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    items(value)
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(f)
        .collect()
}

fn peer_asn(asn: u64) -> Result<u32, String> {
    u32::try_from(asn)
        .ok()
        .filter(|a| super::options::peer_asn_allowed(*a))
        .ok_or_else(|| format!("{asn} is a reserved ASN or out of range"))
}

fn peer_port(port: u64) -> Result<u16, String> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port} is not a port"))
}

/// `kube-router.io/peers`.
fn parse_peers_yaml(value: &str) -> Result<Vec<ExternalPeer>, String> {
    let entries: Vec<PeerYaml> = if value.trim().is_empty() {
        Vec::new()
    } else {
        serde_saphyr::from_str(value).map_err(|e| {
            let text = e.to_string();
            format!(
                "YAML does not parse as a list of peers: {}",
                text.lines().next().unwrap_or("")
            )
        })?
    };
    let mut peers: Vec<ExternalPeer> = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let at = |r: String| format!("entry {}: {r}", i + 1);
        let address = parse_ip(
            e.remoteip
                .as_deref()
                .ok_or_else(|| at("remoteip is missing".into()))?,
        )
        .map_err(|r| at(format!("remoteip: {r}")))?;
        let asn = peer_asn(
            e.remoteasn
                .ok_or_else(|| at("remoteasn is missing".into()))?,
        )
        .map_err(|r| at(format!("remoteasn: {r}")))?;
        let password = match e.password.as_deref() {
            Some(p) => {
                super::options::decode_password(p).map_err(|r| at(format!("password: {r}")))?
            }
            None => None,
        };
        let port = match e.port {
            Some(p) => peer_port(p).map_err(|r| at(format!("port: {r}")))?,
            None => super::options::DEFAULT_BGP_PORT,
        };
        let local_address = match e.localip.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(l) => Some(parse_ip(l).map_err(|r| at(format!("localip: {r}")))?),
        };
        if peers.iter().any(|p| p.address == address) {
            return Err(at(format!("remoteip {address} is listed twice")));
        }
        peers.push(ExternalPeer {
            address,
            asn,
            password,
            port,
            multihop_ttl: None,
            local_address,
        });
    }
    Ok(peers)
}

/// The deprecated `kube-router.io/peer.*` annotations (read only without `peers`).
fn parse_peers_deprecated(
    a: &BTreeMap<String, String>,
) -> Result<Vec<ExternalPeer>, AnnotationProblem> {
    let problem =
        |annotation: &'static str, reason: String| AnnotationProblem { annotation, reason };
    // kube-router configures no peer unless both lists are present.
    let (Some(asns), Some(ips)) = (a.get(PEER_ASNS), a.get(PEER_IPS)) else {
        if a.contains_key(PEER_ASNS) != a.contains_key(PEER_IPS) {
            let (have, missing) = if a.contains_key(PEER_ASNS) {
                (PEER_ASNS, PEER_IPS)
            } else {
                (PEER_IPS, PEER_ASNS)
            };
            return Err(problem(have, format!("set without {missing}")));
        }
        return Ok(Vec::new());
    };
    let asns =
        list(asns, |s| peer_asn(parse_go_uint(s, 32)?)).map_err(|r| problem(PEER_ASNS, r))?;
    let ips = list(ips, parse_ip).map_err(|r| problem(PEER_IPS, r))?;
    if asns.len() != ips.len() {
        return Err(problem(
            PEER_ASNS,
            format!(
                "{} ASNs for {} addresses in {PEER_IPS}",
                asns.len(),
                ips.len()
            ),
        ));
    }
    let n = ips.len();
    let aligned = |annotation: &'static str, len: usize| {
        if len != 0 && len != n {
            Err(problem(
                annotation,
                format!("{len} items for {n} addresses in {PEER_IPS}: give none or one per peer"),
            ))
        } else {
            Ok(())
        }
    };
    let passwords = match a.get(PEER_PASSWORDS) {
        Some(v) => items(v)
            .into_iter()
            .map(super::options::decode_password)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|r| problem(PEER_PASSWORDS, r))?,
        None => Vec::new(),
    };
    aligned(PEER_PASSWORDS, passwords.len())?;
    let ports = match a.get(PEER_PORTS) {
        Some(v) => items(v)
            .into_iter()
            .map(|s| {
                if s.is_empty() {
                    Ok(super::options::DEFAULT_BGP_PORT)
                } else {
                    peer_port(parse_go_uint(s, 32)?)
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|r| problem(PEER_PORTS, r))?,
        None => Vec::new(),
    };
    aligned(PEER_PORTS, ports.len())?;
    let locals = match a.get(PEER_LOCALIPS) {
        Some(v) => items(v)
            .into_iter()
            .map(|s| {
                if s.is_empty() {
                    Ok(None)
                } else {
                    parse_ip(s).map(Some)
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|r| problem(PEER_LOCALIPS, r))?,
        None => Vec::new(),
    };
    aligned(PEER_LOCALIPS, locals.len())?;
    let mut peers: Vec<ExternalPeer> = Vec::with_capacity(n);
    for (i, address) in ips.into_iter().enumerate() {
        if peers.iter().any(|p| p.address == address) {
            return Err(problem(PEER_IPS, format!("{address} is listed twice")));
        }
        peers.push(ExternalPeer {
            address,
            asn: asns[i],
            password: passwords.get(i).cloned().flatten(),
            port: ports
                .get(i)
                .copied()
                .unwrap_or(super::options::DEFAULT_BGP_PORT),
            multihop_ttl: None,
            local_address: locals.get(i).copied().flatten(),
        });
    }
    Ok(peers)
}

/// The node annotations kube-router reads. Each annotation is parsed on its own: one that
/// does not parse keeps `previous`'s value for its field and yields a problem naming it;
/// one that is absent clears its field.
pub fn parse(
    annotations: &BTreeMap<String, String>,
    previous: &NodeBgp,
) -> (NodeBgp, Vec<AnnotationProblem>) {
    let mut problems = Vec::new();
    let mut out = NodeBgp::default();
    let a = annotations;

    // Parses one annotation into one field, keeping the previous value on error.
    fn field<T: Clone + Default>(
        a: &BTreeMap<String, String>,
        key: &'static str,
        prev: &T,
        problems: &mut Vec<AnnotationProblem>,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        match a.get(key) {
            None => T::default(),
            Some(v) => match f(v) {
                Ok(x) => x,
                Err(reason) => {
                    problems.push(AnnotationProblem {
                        annotation: key,
                        reason,
                    });
                    prev.clone()
                }
            },
        }
    }

    out.asn = field(a, NODE_ASN, &previous.asn, &mut problems, |v| {
        parse_asn(v).map(Some)
    });
    out.rr_server = field(a, RR_SERVER, &previous.rr_server, &mut problems, |v| {
        parse_cluster_id(v).map(Some)
    });
    out.rr_client = field(a, RR_CLIENT, &previous.rr_client, &mut problems, |v| {
        parse_cluster_id(v).map(Some)
    });
    out.peers = if a.contains_key(PEERS) {
        field(a, PEERS, &previous.peers, &mut problems, parse_peers_yaml)
    } else {
        match parse_peers_deprecated(a) {
            Ok(p) => p,
            Err(p) => {
                problems.push(p);
                previous.peers.clone()
            }
        }
    };
    out.communities = field(a, COMMUNITIES, &previous.communities, &mut problems, |v| {
        let mut c = list(v, parse_community)?;
        c.dedup();
        Ok(c)
    });
    out.import_reject = field(
        a,
        CUSTOM_IMPORT_REJECT,
        &previous.import_reject,
        &mut problems,
        |v| list(v, parse_cidr),
    );
    out.path_prepend = match (a.get(PATH_PREPEND_AS), a.get(PATH_PREPEND_REPEAT_N)) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            let (have, missing) = if a.contains_key(PATH_PREPEND_AS) {
                (PATH_PREPEND_AS, PATH_PREPEND_REPEAT_N)
            } else {
                (PATH_PREPEND_REPEAT_N, PATH_PREPEND_AS)
            };
            problems.push(AnnotationProblem {
                annotation: have,
                reason: format!("set without {missing}; both must be set"),
            });
            previous.path_prepend
        }
        (Some(asn), Some(n)) => match (parse_asn(asn), parse_go_uint(n, 8)) {
            (Ok(asn), Ok(n)) => Some((asn, n as u8)),
            (Err(r), _) => {
                problems.push(AnnotationProblem {
                    annotation: PATH_PREPEND_AS,
                    reason: r,
                });
                previous.path_prepend
            }
            (_, Err(r)) => {
                problems.push(AnnotationProblem {
                    annotation: PATH_PREPEND_REPEAT_N,
                    reason: r,
                });
                previous.path_prepend
            }
        },
    };
    // `pod-cidrs` (the list) wins over the older single `pod-cidr`.
    out.pod_cidrs = if a.contains_key(POD_CIDRS) {
        field(a, POD_CIDRS, &previous.pod_cidrs, &mut problems, |v| {
            list(v, parse_cidr)
        })
    } else {
        field(a, POD_CIDR, &previous.pod_cidrs, &mut problems, |v| {
            parse_cidr(v).map(|c| vec![c])
        })
    };
    out.local_addresses = field(
        a,
        BGP_LOCAL_ADDRESSES,
        &previous.local_addresses,
        &mut problems,
        |v| list(v, parse_ip),
    );
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalnet::bgp::Password;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ok(pairs: &[(&str, &str)]) -> NodeBgp {
        let (b, p) = parse(&ann(pairs), &NodeBgp::default());
        assert!(p.is_empty(), "{p:?}");
        b
    }

    fn bad(pairs: &[(&str, &str)], previous: &NodeBgp) -> (NodeBgp, AnnotationProblem) {
        let (b, mut p) = parse(&ann(pairs), previous);
        assert_eq!(p.len(), 1, "{p:?}");
        (b, p.remove(0))
    }

    #[test]
    fn nothing_set_is_all_empty() {
        assert_eq!(ok(&[]), NodeBgp::default());
    }

    #[test]
    fn asn_and_rr() {
        let b = ok(&[
            (NODE_ASN, "4200000001"),
            (RR_SERVER, "42"),
            (RR_CLIENT, "192.0.2.7"),
        ]);
        assert_eq!(b.asn, Some(4200000001));
        assert_eq!(b.rr_server, Some(Ipv4Addr::new(0, 0, 0, 42)));
        assert_eq!(b.rr_client, Some(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(ok(&[(NODE_ASN, "0x10")]).asn, Some(16));
    }

    #[test]
    fn bad_asn_keeps_previous_and_names_the_annotation() {
        let prev = NodeBgp {
            asn: Some(65001),
            ..NodeBgp::default()
        };
        let (b, p) = bad(&[(NODE_ASN, "sixty-five")], &prev);
        assert_eq!(b.asn, Some(65001));
        assert_eq!(p.annotation, NODE_ASN);
        assert!(p.to_string().contains("kube-router.io/node.asn"), "{p}");
        assert!(p.reason.contains("sixty-five"));
        let (b, p) = bad(&[(NODE_ASN, "4294967296")], &prev);
        assert_eq!((b.asn, p.annotation), (Some(65001), NODE_ASN));
        let (_, p) = bad(&[(RR_SERVER, "2001:db8::1")], &prev);
        assert_eq!(p.annotation, RR_SERVER);
    }

    #[test]
    fn removed_annotation_clears_the_field() {
        let prev = NodeBgp {
            asn: Some(65001),
            communities: vec![1],
            ..NodeBgp::default()
        };
        let (b, p) = parse(&ann(&[]), &prev);
        assert!(p.is_empty());
        assert_eq!(b, NodeBgp::default());
    }

    #[test]
    fn peers_yaml() {
        let y = "- remoteip: 192.0.2.1\n  remoteasn: 65001\n  password: c2VjcmV0\n  port: 1179\n  localip: 192.0.2.10\n- remoteip: \"2001:db8::1\"\n  remoteasn: 4200000000\n  bfd:\n    enabled: true\n";
        let b = ok(&[(PEERS, y)]);
        assert_eq!(b.peers.len(), 2);
        let p = &b.peers[0];
        assert_eq!(p.address, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!((p.asn, p.port), (65001, 1179));
        assert_eq!(p.password, Some(Password::new("secret")));
        assert_eq!(p.local_address, Some("192.0.2.10".parse().unwrap()));
        assert_eq!(
            (b.peers[1].asn, b.peers[1].port, b.peers[1].password.clone()),
            (4200000000, 179, None)
        );
        // Flow style works too.
        let b = ok(&[(PEERS, "[{remoteip: 192.0.2.1, remoteasn: 65001}]")]);
        assert_eq!(b.peers.len(), 1);
    }

    #[test]
    fn bad_peers_keep_previous() {
        let prev = ok(&[(PEERS, "- remoteip: 192.0.2.1\n  remoteasn: 65001\n")]);
        for (y, want) in [
            ("- remoteip: [unclosed\n", "YAML"),
            ("- remoteasn: 65001\n", "remoteip is missing"),
            ("- remoteip: 192.0.2.1\n", "remoteasn is missing"),
            ("- remoteip: 192.0.2.300\n  remoteasn: 1\n", "remoteip"),
            (
                "- remoteip: 192.0.2.1\n  remoteasn: 65001\n  password: '***'\n",
                "base64",
            ),
            ("- remoteip: 192.0.2.1\n  remoteasn: 23456\n", "reserved"),
            (
                "- remoteip: 192.0.2.1\n  remoteasn: 65001\n  port: 70000\n",
                "port",
            ),
            ("just a string", "YAML"),
        ] {
            let (b, p) = bad(&[(PEERS, y)], &prev);
            assert_eq!(b.peers, prev.peers, "{y}");
            assert_eq!(p.annotation, PEERS);
            assert!(p.reason.contains(want), "{y}: {}", p.reason);
        }
    }

    #[test]
    fn deprecated_peers_only_without_peers() {
        let dep = [
            (PEER_IPS, "192.0.2.1,192.0.2.2"),
            (PEER_ASNS, "65001,65002"),
            (PEER_PASSWORDS, "c2VjcmV0,"),
            (PEER_PORTS, ",1179"),
            (PEER_LOCALIPS, ",192.0.2.10"),
        ];
        let b = ok(&dep);
        assert_eq!(b.peers.len(), 2);
        assert_eq!(b.peers[0].password, Some(Password::new("secret")));
        assert_eq!((b.peers[0].port, b.peers[1].port), (179, 1179));
        assert_eq!(
            b.peers[1].local_address,
            Some("192.0.2.10".parse().unwrap())
        );
        let mut both = dep.to_vec();
        both.push((PEERS, "- remoteip: 198.51.100.1\n  remoteasn: 65010\n"));
        let b = ok(&both);
        assert_eq!(b.peers.len(), 1);
        assert_eq!(b.peers[0].asn, 65010);
    }

    #[test]
    fn deprecated_peer_errors() {
        let prev = ok(&[(PEER_IPS, "192.0.2.1"), (PEER_ASNS, "65001")]);
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[(PEER_IPS, "192.0.2.1,192.0.2.2"), (PEER_ASNS, "65001")],
                PEER_ASNS,
            ),
            (&[(PEER_IPS, "192.0.2.1"), (PEER_ASNS, "x")], PEER_ASNS),
            (&[(PEER_IPS, "nope"), (PEER_ASNS, "65001")], PEER_IPS),
            (
                &[
                    (PEER_IPS, "192.0.2.1"),
                    (PEER_ASNS, "65001"),
                    (PEER_PASSWORDS, "%%"),
                ],
                PEER_PASSWORDS,
            ),
            (
                &[
                    (PEER_IPS, "192.0.2.1"),
                    (PEER_ASNS, "65001"),
                    (PEER_PASSWORDS, "YQ==,YQ=="),
                ],
                PEER_PASSWORDS,
            ),
            (
                &[
                    (PEER_IPS, "192.0.2.1"),
                    (PEER_ASNS, "65001"),
                    (PEER_PORTS, "0"),
                ],
                PEER_PORTS,
            ),
            (
                &[
                    (PEER_IPS, "192.0.2.1"),
                    (PEER_ASNS, "65001"),
                    (PEER_LOCALIPS, "x"),
                ],
                PEER_LOCALIPS,
            ),
            (&[(PEER_IPS, "192.0.2.1")], PEER_IPS),
        ];
        for (pairs, want) in cases {
            let (b, p) = bad(pairs, &prev);
            assert_eq!(p.annotation, *want, "{pairs:?}: {p}");
            assert_eq!(b.peers, prev.peers);
        }
    }

    #[test]
    fn communities() {
        let b = ok(&[(
            COMMUNITIES,
            "100,65535:65281, no-export,4294967295,blackhole",
        )]);
        assert_eq!(
            b.communities,
            vec![100, 0xffff_ff01, 0xffff_ff01, 0xffff_ffff, 0xffff_029a]
                .into_iter()
                .fold(Vec::new(), |mut v, c| {
                    if v.last() != Some(&c) {
                        v.push(c)
                    }
                    v
                })
        );
        let prev = ok(&[(COMMUNITIES, "1")]);
        for badc in [
            "4294967296",
            "65536:1",
            "1:65536",
            "0xFFFFFFFF",
            "community",
        ] {
            let (b, p) = bad(&[(COMMUNITIES, badc)], &prev);
            assert_eq!(
                (b.communities.clone(), p.annotation),
                (vec![1], COMMUNITIES),
                "{badc}"
            );
        }
    }

    #[test]
    fn import_reject_and_pod_cidrs() {
        let b = ok(&[
            (
                CUSTOM_IMPORT_REJECT,
                "10.1.0.0/16, 192.168.11.5/24,2001:db8::/32",
            ),
            (POD_CIDRS, "10.244.1.0/24,fd00:1::/64"),
            (POD_CIDR, "10.9.9.0/24"),
            (BGP_LOCAL_ADDRESSES, "192.0.2.10,2001:db8::10"),
        ]);
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(
            b.import_reject,
            vec![n("10.1.0.0/16"), n("192.168.11.0/24"), n("2001:db8::/32")]
        );
        assert_eq!(b.pod_cidrs, vec![n("10.244.1.0/24"), n("fd00:1::/64")]);
        assert_eq!(b.local_addresses.len(), 2);
        assert_eq!(
            ok(&[(POD_CIDR, "10.9.9.0/24")]).pod_cidrs,
            vec![n("10.9.9.0/24")]
        );
        let prev = b.clone();
        let (b, p) = bad(&[(CUSTOM_IMPORT_REJECT, "10.1.0.0/16,10.2.0.0")], &prev);
        assert_eq!(
            (b.import_reject, p.annotation),
            (prev.import_reject.clone(), CUSTOM_IMPORT_REJECT)
        );
        let (b, p) = bad(&[(POD_CIDRS, "10.244.1.0/33")], &prev);
        assert_eq!(
            (b.pod_cidrs, p.annotation),
            (prev.pod_cidrs.clone(), POD_CIDRS)
        );
        let (_, p) = bad(&[(BGP_LOCAL_ADDRESSES, "here")], &prev);
        assert_eq!(p.annotation, BGP_LOCAL_ADDRESSES);
    }

    #[test]
    fn path_prepend() {
        assert_eq!(
            ok(&[(PATH_PREPEND_AS, "65010"), (PATH_PREPEND_REPEAT_N, "3")]).path_prepend,
            Some((65010, 3))
        );
        let prev = NodeBgp {
            path_prepend: Some((65010, 2)),
            ..NodeBgp::default()
        };
        let (b, p) = bad(&[(PATH_PREPEND_AS, "65010")], &prev);
        assert_eq!(
            (b.path_prepend, p.annotation),
            (Some((65010, 2)), PATH_PREPEND_AS)
        );
        let (_, p) = bad(&[(PATH_PREPEND_REPEAT_N, "2")], &prev);
        assert_eq!(p.annotation, PATH_PREPEND_REPEAT_N);
        let (_, p) = bad(
            &[(PATH_PREPEND_AS, "x"), (PATH_PREPEND_REPEAT_N, "2")],
            &prev,
        );
        assert_eq!(p.annotation, PATH_PREPEND_AS);
        let (b, p) = bad(
            &[(PATH_PREPEND_AS, "65010"), (PATH_PREPEND_REPEAT_N, "256")],
            &prev,
        );
        assert_eq!(
            (b.path_prepend, p.annotation),
            (Some((65010, 2)), PATH_PREPEND_REPEAT_N)
        );
    }

    #[test]
    fn several_problems_at_once_each_keep_their_field() {
        let prev = ok(&[(NODE_ASN, "65001"), (COMMUNITIES, "7")]);
        let (b, p) = parse(
            &ann(&[(NODE_ASN, "x"), (COMMUNITIES, "y"), (RR_CLIENT, "1")]),
            &prev,
        );
        assert_eq!(p.len(), 2);
        assert_eq!(
            (b.asn, b.communities.clone(), b.rr_client),
            (Some(65001), vec![7], Some(Ipv4Addr::new(0, 0, 0, 1)))
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(key in proptest::sample::select(vec![NODE_ASN, RR_SERVER, RR_CLIENT, PEERS, PEER_IPS, PEER_ASNS, PEER_PASSWORDS, PEER_PORTS, PEER_LOCALIPS, COMMUNITIES, CUSTOM_IMPORT_REJECT, PATH_PREPEND_AS, PATH_PREPEND_REPEAT_N, POD_CIDR, POD_CIDRS, BGP_LOCAL_ADDRESSES]), value in ".{0,64}") {
            let _ = parse(&ann(&[(key, &value), (PEER_IPS, "192.0.2.1"), (PEER_ASNS, "65001")]), &NodeBgp::default());
        }
    }
}
