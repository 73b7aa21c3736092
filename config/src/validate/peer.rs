//! BGPPeer: ASNs, addresses, timers (as MetalLB's parseTimers), password source.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::{Problem, Selector, namespace_of, object_ref, parse_selectors};
use crate::addr;
use crate::bgp::DynamicAs;
use crate::model::BGPPeer;
use crate::state::{Kind, ObjectRef};

/// Where the TCP MD5 password comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    Inline(String),
    /// A `kubernetes.io/basic-auth` Secret, key `password`. Namespace None: the peer's.
    Secret {
        namespace: Option<String>,
        name: String,
    },
}

/// A valid BGPPeer with defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedPeer {
    pub name: String,
    pub namespace: String,
    pub my_asn: u32,
    /// None when `dynamic_asn` is set.
    pub peer_asn: Option<u32>,
    pub dynamic_asn: Option<DynamicAs>,
    pub address: IpAddr,
    pub source_address: Option<IpAddr>,
    pub port: u16,
    /// Default 90 s; 3 × keepaliveTime when only that is given.
    pub hold_time: Duration,
    /// Default holdTime / 3.
    pub keepalive_time: Duration,
    pub connect_time: Option<Duration>,
    pub router_id: Option<Ipv4Addr>,
    pub node_selectors: Vec<Selector>,
    pub password: Option<PasswordSource>,
    pub ebgp_multi_hop: bool,
    pub enable_graceful_restart: bool,
    /// `disableMP` without `dualStackAddressFamily`: one address family per session.
    pub disable_mp: bool,
    pub dual_stack_address_family: bool,
}

/// Parses peers, reporting and leaving out each bad one.
pub fn valid_peers<'a>(
    peers: impl IntoIterator<Item = &'a BGPPeer>,
) -> (Vec<ParsedPeer>, Vec<Problem>) {
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    for peer in peers {
        match parse_peer(&object_ref(Kind::BGPPeer, &peer.metadata), peer) {
            Ok(p) => parsed.push(p),
            Err(p) => problems.extend(p),
        }
    }
    (parsed, problems)
}

const DEFAULT_HOLD_TIME: Duration = Duration::from_secs(90);
/// The BGP OPEN message carries the hold time in 16 bits of seconds.
const MAX_HOLD_TIME: Duration = Duration::from_secs(65535);

pub(super) fn parse_peer(object: &ObjectRef, peer: &BGPPeer) -> Result<ParsedPeer, Vec<Problem>> {
    let spec = &peer.spec;
    let mut problems = Vec::new();
    let mut err =
        |field: &str, reason: String| problems.push(Problem::error(object, field, reason));

    if spec.my_asn == 0 {
        err("spec.myASN", "must be in 1..=4294967295, got 0".into());
    }
    let dynamic_asn = match spec.dynamic_asn.as_deref() {
        None | Some("") => None,
        Some("internal") => Some(DynamicAs::Internal),
        Some("external") => Some(DynamicAs::External),
        Some(other) => {
            err(
                "spec.dynamicASN",
                format!("{other:?} is not valid (internal or external)"),
            );
            None
        }
    };
    let dynamic_set = spec.dynamic_asn.as_deref().is_some_and(|s| !s.is_empty());
    if spec.peer_asn != 0 && dynamic_set {
        err(
            "spec.peerASN",
            format!(
                "peerASN {} and dynamicASN are both set; set only one",
                spec.peer_asn
            ),
        );
    } else if spec.peer_asn == 0 && !dynamic_set {
        err(
            "spec.peerASN",
            "must be in 1..=4294967295 unless dynamicASN is set, got 0".into(),
        );
    }
    if spec.ebgp_multi_hop && spec.peer_asn != 0 && spec.peer_asn == spec.my_asn {
        err(
            "spec.ebgpMultiHop",
            "set on an iBGP peer (peerASN equals myASN)".into(),
        );
    }

    let address = if spec.peer_address.is_empty() {
        let reason = match spec.interface.as_deref() {
            Some(i) if !i.is_empty() => format!(
                "missing; unnumbered BGP over interface {i:?} is not supported, set peerAddress"
            ),
            _ => "missing; the address of the router to dial is required".to_string(),
        };
        err("spec.peerAddress", reason);
        None
    } else {
        match spec.peer_address.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                err(
                    "spec.peerAddress",
                    format!("{:?} is not an IP address", spec.peer_address),
                );
                None
            }
        }
    };
    let source_address = match spec.source_address.as_deref() {
        None | Some("") => None,
        Some(s) => match s.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                err("spec.sourceAddress", format!("{s:?} is not an IP address"));
                None
            }
        },
    };
    if let (Some(a), Some(s)) = (address, source_address)
        && a.is_ipv4() != s.is_ipv4()
    {
        err(
            "spec.sourceAddress",
            format!("{s} is not of the same address family as peerAddress {a}"),
        );
    }
    let router_id = match spec.router_id.as_deref() {
        None | Some("") => None,
        Some(s) => match s.parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                err(
                    "spec.routerID",
                    format!("{s:?} is not an IPv4 address (a BGP identifier is 32 bits)"),
                );
                None
            }
        },
    };
    if spec.peer_port == Some(0) {
        err("spec.peerPort", "must be in 1..=65535, got 0".into());
    }

    // Timers, as MetalLB's parseTimers: a missing one is derived from the other.
    let mut duration = |field: &str, v: &Option<String>| match v.as_deref() {
        None => None,
        Some(s) => match addr::parse_go_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(Problem::error(object, field, e.to_string()));
                None
            }
        },
    };
    let hold = duration("spec.holdTime", &spec.hold_time);
    let keepalive = duration("spec.keepaliveTime", &spec.keepalive_time);
    let connect_time = duration("spec.connectTime", &spec.connect_time);
    let timer_unparsable = (spec.hold_time.is_some() && hold.is_none())
        || (spec.keepalive_time.is_some() && keepalive.is_none());
    let (hold_time, keepalive_time) = match (hold, keepalive) {
        (Some(h), Some(k)) => (h, k),
        (Some(h), None) => (h, h / 3),
        (None, Some(k)) => (k * 3, k),
        (None, None) => (DEFAULT_HOLD_TIME, DEFAULT_HOLD_TIME / 3),
    };
    if !timer_unparsable {
        let whole_seconds = Duration::from_secs(hold_time.as_secs());
        if !whole_seconds.is_zero() && whole_seconds < Duration::from_secs(3) {
            problems.push(Problem::error(
                object,
                if hold.is_some() {
                    "spec.holdTime"
                } else {
                    "spec.keepaliveTime"
                },
                format!("hold time {hold_time:?} must be 0 or at least 3s"),
            ));
        } else if hold_time > MAX_HOLD_TIME {
            problems.push(Problem::error(
                object,
                if hold.is_some() {
                    "spec.holdTime"
                } else {
                    "spec.keepaliveTime"
                },
                format!("hold time {hold_time:?} is above the BGP maximum of 65535s"),
            ));
        }
        if keepalive_time > hold_time {
            problems.push(Problem::error(
                object,
                "spec.keepaliveTime",
                format!("keepalive time {keepalive_time:?} is above the hold time {hold_time:?}"),
            ));
        }
    }
    if let Some(c) = connect_time {
        // The upstream CRD's rule: whole seconds in 1..=65535.
        if c.subsec_nanos() != 0 || !(1..=65535).contains(&c.as_secs()) {
            problems.push(Problem::error(
                object,
                "spec.connectTime",
                format!("{c:?} must be a whole number of seconds in 1s..=65535s"),
            ));
        }
    }

    let password_inline = spec.password.as_deref().filter(|p| !p.is_empty());
    let secret_name = spec
        .password_secret
        .as_ref()
        .and_then(|s| s.name.as_deref())
        .filter(|n| !n.is_empty());
    if password_inline.is_some() && secret_name.is_some() {
        problems.push(Problem::error(
            object,
            "spec.password",
            "password and passwordSecret are both set; set only one",
        ));
    }
    if let Some(reason) = password_inline.and_then(|p| super::md5_key_too_long(p.len())) {
        problems.push(Problem::error(object, "spec.password", reason));
    }
    if password_inline.is_some_and(|p| p.contains(['\n', '\r'])) {
        problems.push(Problem::error(
            object,
            "spec.password",
            "contains a line break",
        ));
    }
    let password = match (password_inline, secret_name) {
        (Some(p), None) => Some(PasswordSource::Inline(p.to_string())),
        (None, Some(name)) => Some(PasswordSource::Secret {
            namespace: spec
                .password_secret
                .as_ref()
                .and_then(|s| s.namespace.clone())
                .filter(|n| !n.is_empty()),
            name: name.to_string(),
        }),
        _ => None,
    };

    let node_selectors = parse_selectors(
        object,
        "spec.nodeSelectors",
        &spec.node_selectors,
        &mut problems,
    );

    match address {
        Some(address) if problems.is_empty() => Ok(ParsedPeer {
            name: object.name.clone(),
            namespace: namespace_of(object),
            my_asn: spec.my_asn,
            peer_asn: (spec.peer_asn != 0).then_some(spec.peer_asn),
            dynamic_asn,
            address,
            source_address,
            port: spec.peer_port.unwrap_or(179),
            hold_time,
            keepalive_time,
            connect_time,
            router_id,
            node_selectors,
            password,
            ebgp_multi_hop: spec.ebgp_multi_hop,
            enable_graceful_restart: spec.enable_graceful_restart,
            disable_mp: spec.disable_mp,
            dual_stack_address_family: spec.dual_stack_address_family,
        }),
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::test_util::*;

    #[test]
    fn asn_rules() {
        assert_only_error(
            &[peer("p").spec_fields(json!({"myASN": 0})).pair()],
            PEER,
            "spec.myASN",
            "got 0",
        );
        assert_only_error(
            &[peer("p").spec_fields(json!({"peerASN": null})).pair()],
            PEER,
            "spec.peerASN",
            "unless dynamicASN is set",
        );
        assert_only_error(
            &[peer("p")
                .spec_fields(json!({"dynamicASN": "external"}))
                .pair()],
            PEER,
            "spec.peerASN",
            "peerASN 64501 and dynamicASN are both set",
        );
        assert_only_error(
            &[peer("p")
                .spec_fields(json!({"peerASN": null, "dynamicASN": "sideways"}))
                .pair()],
            PEER,
            "spec.dynamicASN",
            "\"sideways\" is not valid (internal or external)",
        );
        assert_clean(&[peer("p")
            .spec_fields(json!({"peerASN": null, "dynamicASN": "internal"}))
            .pair()]);
        assert_clean(&[peer("p")
            .spec_fields(json!({"myASN": 4294967295u32, "peerASN": 1}))
            .pair()]);
        assert_only_error(
            &[peer("p")
                .spec_fields(json!({"peerASN": 64500, "ebgpMultiHop": true}))
                .pair()],
            PEER,
            "spec.ebgpMultiHop",
            "iBGP",
        );
    }

    #[test]
    fn address_rules() {
        assert_only_error(
            &[peer("p")
                .spec_fields(json!({"peerAddress": "router-1"}))
                .pair()],
            PEER,
            "spec.peerAddress",
            "\"router-1\" is not an IP address",
        );
        assert_only_error(
            &[peer("p")
                .spec_fields(json!({"peerAddress": null, "interface": "eth1"}))
                .pair()],
            PEER,
            "spec.peerAddress",
            "unnumbered BGP over interface \"eth1\" is not supported",
        );
        assert_only_error(
            &[peer("p")
                .spec_fields(json!({"sourceAddress": "192.0.2.300"}))
                .pair()],
            PEER,
            "spec.sourceAddress",
            "\"192.0.2.300\" is not an IP address",
        );
        assert_only_error(
            &[peer("p")
                .spec_fields(json!({"sourceAddress": "2001:db8::1"}))
                .pair()],
            PEER,
            "spec.sourceAddress",
            "not of the same address family",
        );
        assert_only_error(
            &[peer("p")
                .spec_fields(json!({"routerID": "2001:db8::1"}))
                .pair()],
            PEER,
            "spec.routerID",
            "is not an IPv4 address",
        );
        assert_only_error(
            &[peer("p").spec_fields(json!({"peerPort": 0})).pair()],
            PEER,
            "spec.peerPort",
            "got 0",
        );
        assert_clean(&[peer("p").spec_fields(json!({"peerAddress": "2001:db8::1", "sourceAddress": "2001:db8::2", "routerID": "192.0.2.9", "peerPort": 1179})).pair()]);
    }

    #[test]
    fn timer_rules() {
        for ok in [
            json!({"holdTime": "0s"}),
            json!({"holdTime": "3s"}),
            json!({"holdTime": "90s", "keepaliveTime": "90s"}),
            json!({"keepaliveTime": "1s"}),
            json!({"holdTime": "240s", "keepaliveTime": "1m"}),
            json!({"connectTime": "10s"}),
        ] {
            assert_clean(&[peer("p").spec_fields(ok).pair()]);
        }
        assert_only_error(
            &[peer("p").spec_fields(json!({"holdTime": "2s"})).pair()],
            PEER,
            "spec.holdTime",
            "hold time 2s must be 0 or at least 3s",
        );
        // Rounded down to whole seconds first, as MetalLB does.
        assert_only_error(
            &[peer("p").spec_fields(json!({"holdTime": "2.9s"})).pair()],
            PEER,
            "spec.holdTime",
            "must be 0 or at least 3s",
        );
        // Only keepaliveTime: the hold time is three times it.
        assert_only_error(
            &[peer("p")
                .spec_fields(json!({"keepaliveTime": "500ms"}))
                .pair()],
            PEER,
            "spec.keepaliveTime",
            "hold time 1.5s must be 0 or at least 3s",
        );
        assert_only_error(
            &[peer("p")
                .spec_fields(json!({"holdTime": "30s", "keepaliveTime": "31s"}))
                .pair()],
            PEER,
            "spec.keepaliveTime",
            "keepalive time 31s is above the hold time 30s",
        );
        assert_only_error(
            &[peer("p").spec_fields(json!({"holdTime": "19h"})).pair()],
            PEER,
            "spec.holdTime",
            "above the BGP maximum of 65535s",
        );
        assert_only_error(
            &[peer("p").spec_fields(json!({"holdTime": "90"})).pair()],
            PEER,
            "spec.holdTime",
            "invalid duration \"90\": missing unit",
        );
        assert_only_error(
            &[peer("p").spec_fields(json!({"connectTime": "soon"})).pair()],
            PEER,
            "spec.connectTime",
            "invalid duration \"soon\"",
        );
        assert_only_error(
            &[peer("p")
                .spec_fields(json!({"connectTime": "1500ms"}))
                .pair()],
            PEER,
            "spec.connectTime",
            "whole number of seconds in 1s..=65535s",
        );
        assert_only_error(
            &[peer("p").spec_fields(json!({"connectTime": "0s"})).pair()],
            PEER,
            "spec.connectTime",
            "whole number of seconds in 1s..=65535s",
        );
    }

    #[test]
    fn password_rules() {
        assert_only_error(
            &[peer("p")
                .spec_fields(json!({"password": "x", "passwordSecret": {"name": "s"}}))
                .pair()],
            PEER,
            "spec.password",
            "password and passwordSecret are both set",
        );
        assert_only_error(
            &[peer("p").spec_fields(json!({"password": "x\ny"})).pair()],
            PEER,
            "spec.password",
            "line break",
        );
        // An empty secret reference counts as unset.
        assert_clean(&[peer("p")
            .spec_fields(json!({"password": "x", "passwordSecret": {}}))
            .pair()]);
    }

    #[test]
    fn md5_password_fits_the_kernel_key() {
        assert_clean(&[peer("p")
            .spec_fields(json!({"password": "k".repeat(80)}))
            .pair()]);
        assert_only_error(
            &[peer("p")
                .spec_fields(json!({"password": "k".repeat(81)}))
                .pair()],
            PEER,
            "spec.password",
            "81 bytes, above the 80 Linux accepts for a TCP MD5 key",
        );
    }

    fn secret(data: Value) -> (ObjectRef, Value) {
        object("v1", "Secret", Some(NS), "s")
            .field("data", data)
            .pair()
    }

    #[test]
    fn password_secret_is_read_as_the_speaker_reads_it() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let with_secret = || {
            peer("p")
                .spec_fields(json!({"passwordSecret": {"name": "s"}}))
                .pair()
        };
        assert_clean(&[with_secret(), secret(json!({"password": b64("s3cr3t")}))]);

        let problems =
            validate_objects(&[with_secret(), secret(json!({"password": "not-base64!"}))]);
        assert_error(
            &problems,
            "Secret/metallb-system/s",
            "data.password",
            "not valid base64",
        );
        assert_error(
            &problems,
            PEER,
            "spec.passwordSecret",
            "Secret metallb-system/s key password: not valid base64",
        );
        assert!(
            !problems.iter().any(|p| p.reason.contains("Invalid symbol")),
            "{problems:#?}"
        );

        let problems = validate_objects(&[
            with_secret(),
            secret(json!({"password": b64(&"k".repeat(81))})),
        ]);
        assert_error(
            &problems,
            PEER,
            "spec.passwordSecret",
            "Secret metallb-system/s key password: 81 bytes, above the 80",
        );
        assert_eq!(problems.len(), 1, "{problems:#?}");
    }

    #[test]
    fn parsed_peer_defaults() {
        let (_, value) = peer("p")
            .spec_fields(json!({"keepaliveTime": "20s", "passwordSecret": {"name": "s"}}))
            .pair();
        let typed: BGPPeer = serde_json::from_value(value).unwrap();
        let (peers, problems) = valid_peers([&typed]);
        assert!(problems.is_empty());
        let p = &peers[0];
        assert_eq!(p.hold_time, Duration::from_secs(60));
        assert_eq!(p.keepalive_time, Duration::from_secs(20));
        assert_eq!(p.port, 179);
        assert_eq!(p.peer_asn, Some(64501));
        assert_eq!(
            p.password,
            Some(PasswordSource::Secret {
                namespace: None,
                name: "s".into()
            })
        );
        let (_, value) = peer("p").pair();
        let typed: BGPPeer = serde_json::from_value(value).unwrap();
        let p = &valid_peers([&typed]).0[0];
        assert_eq!(
            (p.hold_time, p.keepalive_time),
            (Duration::from_secs(90), Duration::from_secs(30))
        );
    }
}
