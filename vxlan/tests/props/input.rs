//! Input from outside: `net-conf.json` and Flannel's node annotations. Never a panic; what
//! parses holds the invariants the rest of the agent relies on; errors name a key.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use metalnet::model::core::Node;
use metalnet_vxlan::annotations::{self as ann, BackendData, Mac, NodeView};
use metalnet_vxlan::netconf::{Backend, NetConf, NetConfError, Pool, ord};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// A value of any JSON type, with the edge cases of numbers.
fn junk() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e20f64..1e20).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        Just(json!("")),
        Just(json!([])),
        Just(json!({})),
    ]
    .boxed()
}

/// IPv4 addresses near 10.0.0.0, so ranges and networks meet often.
fn v4_addr() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        (0u8..3, any::<u8>(), any::<u8>()).prop_map(|(b, c, d)| Ipv4Addr::new(10, b, c, d)),
        any::<u32>().prop_map(Ipv4Addr::from),
    ]
}

fn v6_addr() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        (0u16..3, any::<u16>(), any::<u16>())
            .prop_map(|(a, b, c)| Ipv6Addr::new(0x2001, 0xdb8, a, b, c, 0, 0, 0)),
        any::<u128>().prop_map(Ipv6Addr::from),
    ]
}

fn v4_cidr() -> impl Strategy<Value = String> {
    (v4_addr(), 0u8..=34).prop_map(|(a, l)| format!("{a}/{l}"))
}

fn v6_cidr() -> impl Strategy<Value = String> {
    // Short prefixes too: networks of more than 2^64 subnets.
    (v6_addr(), prop_oneof![0u8..=130, 0u8..=40]).prop_map(|(a, l)| format!("{a}/{l}"))
}

fn uint(max: u64) -> BoxedStrategy<Value> {
    prop_oneof![3 => (0..=max).prop_map(Value::from), 1 => junk()].boxed()
}

fn flag() -> BoxedStrategy<Value> {
    prop_oneof![3 => any::<bool>().prop_map(Value::Bool), 1 => junk()].boxed()
}

fn backend() -> BoxedStrategy<Value> {
    let ty = prop_oneof![
        4 => Just(json!("vxlan")),
        2 => Just(json!("host-gw")),
        1 => Just(json!("udp")),
        1 => junk(),
    ];
    let keys = (
        proptest::option::weighted(0.95, ty),
        proptest::option::of(prop_oneof![
            3 => (0u64..=0x100_0001).prop_map(Value::from),
            1 => junk()
        ]),
        proptest::option::of(uint(70_000)),
        proptest::option::of(uint(70_000)),
        proptest::option::of(flag()),
        proptest::option::of(flag()),
        proptest::option::weighted(0.1, flag()),
    );
    prop_oneof![
        1 => junk(),
        8 => keys.prop_map(|(t, vni, port, mtu, dr, learn, gbp)| {
            object(&[
                ("Type", t),
                ("VNI", vni),
                ("Port", port),
                ("MTU", mtu),
                ("DirectRouting", dr),
                ("Learning", learn),
                ("GBP", gbp),
            ])
        }),
    ]
    .boxed()
}

fn object(kv: &[(&str, Option<Value>)]) -> Value {
    let m: Map<String, Value> = kv
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.clone()?)))
        .collect();
    Value::Object(m)
}

/// net-conf.json objects made of the real keys with values of random types and ranges.
fn netconf_json() -> impl Strategy<Value = Value> {
    let addr = || {
        prop_oneof![
            3 => v4_addr().prop_map(|a| json!(a.to_string())),
            1 => v6_addr().prop_map(|a| json!(a.to_string())),
            1 => junk()
        ]
        .boxed()
    };
    let addr6 = || {
        prop_oneof![
            3 => v6_addr().prop_map(|a| json!(a.to_string())),
            1 => v4_addr().prop_map(|a| json!(a.to_string())),
            1 => junk()
        ]
        .boxed()
    };
    let v4 = (
        proptest::option::weighted(
            0.9,
            prop_oneof![
                4 => v4_cidr().prop_map(Value::String),
                1 => v6_cidr().prop_map(Value::String),
                1 => junk()
            ]
            .boxed(),
        ),
        proptest::option::of(uint(40)),
        proptest::option::of(addr()),
        proptest::option::of(addr()),
        proptest::option::of(flag()),
    );
    let v6 = (
        proptest::option::of(flag()),
        proptest::option::of(
            prop_oneof![
                4 => v6_cidr().prop_map(Value::String),
                1 => v4_cidr().prop_map(Value::String),
                1 => junk()
            ]
            .boxed(),
        ),
        proptest::option::of(prop_oneof![
            uint(140),
            (60u64..=127).prop_map(Value::from).boxed()
        ]),
        proptest::option::of(addr6()),
        proptest::option::of(addr6()),
    );
    (v4, v6, proptest::option::weighted(0.9, backend())).prop_map(
        |((net, len, min, max, en4), (en6, net6, len6, min6, max6), be)| {
            object(&[
                ("Network", net),
                ("SubnetLen", len),
                ("SubnetMin", min),
                ("SubnetMax", max),
                ("EnableIPv4", en4),
                ("EnableIPv6", en6),
                ("IPv6Network", net6),
                ("IPv6SubnetLen", len6),
                ("IPv6SubnetMin", min6),
                ("IPv6SubnetMax", max6),
                ("Backend", be),
            ])
        },
    )
}

const KEYS: &[&str] = &[
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "EnableIPv4",
    "EnableIPv6",
    "IPv6Network",
    "IPv6SubnetLen",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "Backend",
    "Backend.Type",
    "Backend.VNI",
    "Backend.Port",
    "Backend.MTU",
    "Backend.DirectRouting",
    "Backend.Learning",
    "Backend.GBP",
];

/// The subnet of `len` holding `a`, as its network address.
fn align(a: IpAddr, len: u8) -> IpAddr {
    IpNet::new(a, len).unwrap().network()
}

fn check_pool(p: &Pool, v6: bool, obj: &Map<String, Value>, keys: [&str; 4]) {
    let [_, len_key, min_key, max_key] = keys;
    let (width, limit): (u8, u8) = if v6 { (128, 126) } else { (32, 30) };
    assert_eq!(p.network.addr().is_ipv6(), v6, "{p:?}");
    assert_eq!(p.network, p.network.trunc(), "network is truncated: {p:?}");
    assert!(p.network.max_prefix_len() == width);
    assert!(p.subnet_len > p.network.prefix_len(), "{p:?}");
    assert!(p.subnet_len <= limit, "{p:?}");
    for a in [p.subnet_min, p.subnet_max] {
        assert!(p.network.contains(&a), "{a} outside {p:?}");
        assert_eq!(a, align(a, p.subnet_len), "{a} not aligned: {p:?}");
    }
    assert!(ord(p.subnet_min) <= ord(p.subnet_max), "{p:?}");
    // Flannel's defaults: the second subnet and the last one.
    let last = align(p.network.broadcast(), p.subnet_len);
    if obj
        .get(max_key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        assert_eq!(p.subnet_max, last, "default {max_key}: {p:?}");
    }
    if obj
        .get(min_key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        let second = IpNet::new(p.network.network(), p.subnet_len)
            .unwrap()
            .broadcast();
        let second = align(
            match second {
                IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + 1)),
                IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + 1)),
            },
            p.subnet_len,
        );
        assert_eq!(p.subnet_min, second, "default {min_key}: {p:?}");
    }
    if let Some(l) = obj.get(len_key).and_then(Value::as_u64).filter(|l| *l != 0) {
        assert_eq!(u64::from(p.subnet_len), l);
    }
    let count = p.lease_count();
    assert!(count >= 1);
    let first = p.lease_at(0);
    assert_eq!(first.network(), p.subnet_min);
    assert_eq!(first.prefix_len(), p.subnet_len);
    let span = (ord(p.subnet_max) - ord(p.subnet_min)) >> (width - p.subnet_len);
    if span < u128::from(u64::MAX - 1) {
        assert_eq!(u128::from(count), span + 1);
        let end = p.lease_at(count - 1);
        assert_eq!(end.network(), p.subnet_max, "{p:?}");
        assert!(p.network.contains(&end));
    }
}

fn check_netconf(v: &Value) {
    let text = v.to_string();
    let obj = v.as_object().expect("an object");
    match NetConf::parse(&text) {
        Ok(c) => {
            let enabled = |k: &str, default: bool| match obj.get(k) {
                None | Some(Value::Null) => default,
                Some(b) => b.as_bool().expect("a non-bool was accepted"),
            };
            assert_eq!(c.ipv4.is_some(), enabled("EnableIPv4", true), "{text}");
            assert_eq!(c.ipv6.is_some(), enabled("EnableIPv6", false), "{text}");
            if let Some(p) = &c.ipv4 {
                check_pool(
                    p,
                    false,
                    obj,
                    ["Network", "SubnetLen", "SubnetMin", "SubnetMax"],
                );
            }
            if let Some(p) = &c.ipv6 {
                check_pool(
                    p,
                    true,
                    obj,
                    [
                        "IPv6Network",
                        "IPv6SubnetLen",
                        "IPv6SubnetMin",
                        "IPv6SubnetMax",
                    ],
                );
            }
            let b = obj["Backend"].as_object().expect("Backend was an object");
            match &c.backend {
                Backend::Vxlan(vx) => {
                    assert_eq!(b["Type"], "vxlan");
                    assert!((1..=0xff_ffff).contains(&vx.vni), "{text}");
                    assert_ne!(vx.port, 0);
                    assert!(vx.mtu.is_none_or(|m| (68..=65535).contains(&m)));
                    let given = |k: &str| b.get(k).and_then(Value::as_u64).filter(|n| *n != 0);
                    assert_eq!(u64::from(vx.vni), given("VNI").unwrap_or(1));
                    assert_eq!(u64::from(vx.port), given("Port").unwrap_or(8472));
                    assert_eq!(vx.mtu.map(u64::from), given("MTU"));
                    assert_ne!(b.get("GBP"), Some(&Value::Bool(true)));
                }
                Backend::HostGw => assert_eq!(b["Type"], "host-gw"),
            }
        }
        Err(NetConfError::Key { key, reason }) => {
            assert!(KEYS.contains(&key.as_str()), "unknown key {key}: {reason}");
            assert!(!reason.is_empty());
        }
        Err(e @ NetConfError::Syntax(_)) => panic!("an object read as a syntax error: {e}"),
    }
}

fn annotation_value() -> impl Strategy<Value = String> {
    prop_oneof![
        v4_addr().prop_map(|a| a.to_string()),
        v6_addr().prop_map(|a| a.to_string()),
        v4_cidr(),
        v6_cidr(),
        (any::<[u8; 6]>(), proptest::option::of(any::<u64>())).prop_map(|(m, vni)| {
            let mut o = json!({"VtepMAC": Mac(m).to_string()});
            if let Some(v) = vni {
                o["VNI"] = json!(v);
            }
            o.to_string()
        }),
        Just("null".to_string()),
        Just("vxlan".to_string()),
        ".{0,20}",
    ]
    .prop_flat_map(|s| {
        // Padding: values are trimmed when read.
        (Just(s), prop_oneof![Just(""), Just(" "), Just("\n")])
            .prop_map(|(s, pad)| format!("{pad}{s}{pad}"))
    })
}

fn node_json() -> impl Strategy<Value = (Value, Vec<String>)> {
    let keys = [
        ann::BACKEND_TYPE,
        ann::BACKEND_DATA,
        ann::BACKEND_V6_DATA,
        ann::PUBLIC_IP,
        ann::PUBLIC_IPV6,
        ann::PUBLIC_IP_OVERWRITE,
        ann::PUBLIC_IPV6_OVERWRITE,
        ann::LEASE_V4,
        ann::LEASE_V6,
    ];
    let cidr = || prop_oneof![v4_cidr(), v6_cidr(), ".{0,10}"];
    (
        proptest::collection::vec((0..keys.len(), annotation_value()), 0..10),
        proptest::option::of(cidr()),
        proptest::option::of(proptest::collection::vec(cidr(), 0..4)),
    )
        .prop_map(move |(anns, pod_cidr, pod_cidrs)| {
            let anns: Map<String, Value> = anns
                .into_iter()
                .map(|(k, v)| (keys[k].to_string(), json!(v)))
                .collect();
            let mut all: Vec<String> = pod_cidrs.clone().unwrap_or_default();
            if let Some(c) = &pod_cidr
                && !all.contains(c)
            {
                all.insert(0, c.clone());
            }
            let node = json!({
                "metadata": {"name": "n", "annotations": anns},
                "spec": {"podCIDR": pod_cidr, "podCIDRs": pod_cidrs},
            });
            (node, all)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn netconf_parse_never_panics_on_text(s in ".*", t in "[{}\\[\\]\":,0-9a-zA-Z./ -]{0,60}") {
        for text in [s, t] {
            if let Err(NetConfError::Key { key, .. }) = NetConf::parse(&text) {
                prop_assert!(KEYS.contains(&key.as_str()), "{key}");
            }
        }
    }

    #[test]
    fn netconf_objects_parse_to_valid_confs(v in netconf_json()) {
        check_netconf(&v);
    }

    #[test]
    fn mac_parse_accepts_only_its_own_rendering(
        s in prop_oneof![
            ".{0,20}",
            "[0-9a-fA-F+:-]{0,20}",
            proptest::collection::vec("[+-]?[0-9a-fA-F]{0,3}", 0..8).prop_map(|p| p.join(":")),
            proptest::collection::vec("[+]?[0-9a-fA-F]{1,2}", 6).prop_map(|p| p.join(":")),
        ],
        m in any::<[u8; 6]>(),
    ) {
        if let Ok(mac) = s.parse::<Mac>() {
            prop_assert_eq!(mac.to_string(), s.to_ascii_lowercase());
        }
        prop_assert_eq!(Mac(m).to_string().parse::<Mac>().ok(), Some(Mac(m)));
        prop_assert_eq!(Mac(m).to_string().to_uppercase().parse::<Mac>().ok(), Some(Mac(m)));
    }

    #[test]
    fn backend_data_parse_never_panics(s in annotation_value(), m in any::<[u8; 6]>(), vni in any::<u32>()) {
        if let Some(d) = BackendData::parse(&s) {
            prop_assert!(d.vtep_mac.to_string().parse::<Mac>().is_ok());
        }
        let d = BackendData { vni, vtep_mac: Mac(m) };
        prop_assert_eq!(BackendData::parse(&d.to_json()), Some(d));
    }

    #[test]
    fn node_view_reads_any_annotations((node, cidrs) in node_json()) {
        let n: Node = serde_json::from_value(node.clone()).unwrap();
        let v = NodeView::of("n", &n);
        prop_assert_eq!(&v.name, "n");
        prop_assert_eq!(v.pod_cidrs.len() + v.bad_pod_cidrs.len(), cidrs.len());
        for c in &v.pod_cidrs {
            prop_assert_eq!(*c, c.trunc());
        }
        for (ip, v6) in [
            (v.public_ip, false),
            (v.public_ipv6, true),
            (v.public_ip_overwrite, false),
            (v.public_ipv6_overwrite, true),
        ] {
            prop_assert!(ip.is_none_or(|ip| ip.is_ipv6() == v6));
        }
        for (lease, v6) in [(v.lease_v4, false), (v.lease_v6, true)] {
            if let Some(l) = lease {
                prop_assert_eq!(l.addr().is_ipv6(), v6);
                // A lease is a subnet: used as a route key it must be in kernel form.
                prop_assert_eq!(l, l.trunc(), "lease {} has host bits", l);
            }
        }
        for v6 in [false, true] {
            prop_assert!(v.pod_cidr(v6).is_none_or(|c| c.addr().is_ipv6() == v6));
        }
        let anns = &node["metadata"]["annotations"];
        let data = anns[ann::BACKEND_DATA].as_str().and_then(|s| BackendData::parse(s.trim()));
        prop_assert_eq!(v.backend_data, data);
        let ty = anns[ann::BACKEND_TYPE].as_str().map(str::trim).filter(|s| !s.is_empty());
        prop_assert_eq!(v.backend_type.as_deref(), ty);
    }
}
