use super::*;
use proptest::prelude::*;

const FOUR: WireContext = WireContext::FOUR_OCTET;
const TWO: WireContext = WireContext {
    four_octet_as: false,
};

fn roundtrip(m: &Message, ctx: WireContext) {
    let bytes = m.to_bytes(ctx).expect("emit");
    let (parsed, used) = Message::parse(&bytes, ctx).expect("parse");
    assert_eq!(used, bytes.len());
    assert_eq!(&parsed, m);
    assert_eq!(parsed.to_bytes(ctx).unwrap(), bytes);
}

fn v4(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn sample_update() -> Update {
    Update {
        withdrawn: vec![v4("198.51.100.0/24")],
        attributes: vec![
            PathAttribute::new(Attr::Origin(ORIGIN_IGP)),
            PathAttribute::new(Attr::AsPath(vec![AsSegment {
                kind: AS_SEQUENCE,
                asns: vec![64512, 4_200_000_000],
            }])),
            PathAttribute::new(Attr::NextHop("192.0.2.1".parse().unwrap())),
            PathAttribute::new(Attr::Med(10)),
            PathAttribute::new(Attr::LocalPref(200)),
            PathAttribute::new(Attr::Communities(vec![0xfde8_0001, 0xffff_ff01])),
            PathAttribute::new(Attr::LargeCommunities(vec![LargeCommunity {
                global: 4_200_000_000,
                local1: 1,
                local2: 2,
            }])),
            PathAttribute::new(Attr::MpReach(MpReach {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
                next_hops: vec!["2001:db8::1".parse().unwrap(), "fe80::1".parse().unwrap()],
                nlri: vec![
                    "2001:db8:1::/48".parse().unwrap(),
                    "2001:db8:2::1/128".parse().unwrap(),
                ],
            })),
            PathAttribute::new(Attr::MpUnreach(MpUnreach {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
                withdrawn: vec!["2001:db8:3::/64".parse().unwrap()],
            })),
            PathAttribute {
                flags: FLAG_OPTIONAL | FLAG_TRANSITIVE | FLAG_PARTIAL,
                value: Attr::Unknown {
                    type_code: 99,
                    value: vec![1, 2, 3],
                },
            },
        ],
        nlri: vec![v4("203.0.113.0/24"), v4("203.0.113.7/32"), v4("0.0.0.0/0")],
    }
}

#[test]
fn messages_roundtrip() {
    roundtrip(&Message::Keepalive, FOUR);
    roundtrip(
        &Message::Notification(Notification {
            code: 6,
            subcode: 2,
            data: b"bye".to_vec(),
        }),
        FOUR,
    );
    roundtrip(
        &Message::RouteRefresh(RouteRefresh {
            afi: AFI_IPV6,
            subtype: 0,
            safi: 1,
        }),
        FOUR,
    );
    roundtrip(
        &Message::Open(Open {
            version: 4,
            my_as: AS_TRANS,
            hold_time: 90,
            bgp_id: "192.0.2.1".parse().unwrap(),
            params: vec![
                OptParam::Capabilities(vec![
                    Capability::Multiprotocol {
                        afi: AFI_IPV4,
                        reserved: 0,
                        safi: 1,
                    },
                    Capability::Multiprotocol {
                        afi: AFI_IPV6,
                        reserved: 0,
                        safi: 1,
                    },
                    Capability::RouteRefresh,
                    Capability::FourOctetAs(4_200_000_000),
                ]),
                OptParam::Capabilities(vec![Capability::GracefulRestart {
                    flags: 0x8,
                    time: 120,
                    families: vec![GrFamily {
                        afi: 1,
                        safi: 1,
                        flags: 0x80,
                    }],
                }]),
                OptParam::Capabilities(vec![Capability::Unknown {
                    code: 70,
                    value: vec![],
                }]),
            ],
        }),
        FOUR,
    );
    roundtrip(&Message::Update(sample_update()), FOUR);
    roundtrip(
        &Message::Update(Update::end_of_rib(AFI_IPV4, SAFI_UNICAST)),
        FOUR,
    );
    roundtrip(
        &Message::Update(Update::end_of_rib(AFI_IPV6, SAFI_UNICAST)),
        FOUR,
    );
}

#[test]
fn as_path_width_follows_the_context() {
    let u = Update {
        attributes: vec![
            PathAttribute::new(Attr::Origin(0)),
            PathAttribute::new(Attr::AsPath(vec![AsSegment {
                kind: AS_SEQUENCE,
                asns: vec![65001, 4_200_000_000],
            }])),
            PathAttribute::new(Attr::NextHop("192.0.2.1".parse().unwrap())),
        ],
        nlri: vec![v4("203.0.113.0/24")],
        ..Update::default()
    };
    let four = Message::Update(u.clone()).to_bytes(FOUR).unwrap();
    let two = Message::Update(u).to_bytes(TWO).unwrap();
    assert_eq!(four.len(), two.len() + 4);
    // 2-octet: the large AS becomes AS_TRANS.
    let (Message::Update(p), _) = Message::parse(&two, TWO).unwrap() else {
        panic!()
    };
    assert_eq!(
        p.attr(ATTR_AS_PATH),
        Some(&Attr::AsPath(vec![AsSegment {
            kind: AS_SEQUENCE,
            asns: vec![65001, 23456]
        }]))
    );
    // 4-octet encoding read as 2-octet is a malformed AS_PATH, never a panic.
    let err = Message::parse(&four, TWO).unwrap_err();
    assert_eq!(
        (err.code, err.subcode),
        (code::UPDATE, code::MALFORMED_AS_PATH)
    );
}

#[test]
fn end_of_rib_is_recognised() {
    assert_eq!(
        Update::end_of_rib(AFI_IPV4, 1).is_end_of_rib(),
        Some((AFI_IPV4, 1))
    );
    assert_eq!(
        Update::end_of_rib(AFI_IPV6, 1).is_end_of_rib(),
        Some((AFI_IPV6, 1))
    );
    assert_eq!(sample_update().is_end_of_rib(), None);
}

fn header(len: u16, kind: u8) -> Vec<u8> {
    let mut b = vec![0xff; 16];
    b.extend_from_slice(&len.to_be_bytes());
    b.push(kind);
    b
}

fn err_of(bytes: &[u8]) -> (u8, u8, Vec<u8>) {
    let e = Message::parse(bytes, FOUR).unwrap_err();
    (e.code, e.subcode, e.data)
}

#[test]
fn header_errors() {
    let mut b = header(19, 4);
    b[3] = 0;
    assert_eq!(err_of(&b), (1, 1, vec![]));
    assert!(
        frame_len(&b[..5]).is_err(),
        "a bad marker is caught before the header is complete"
    );
    assert_eq!(frame_len(&[0xff; 10]), Ok(None));
    assert_eq!(err_of(&header(18, 4)), (1, 2, vec![0, 18]));
    assert_eq!(err_of(&header(4097, 2)), (1, 2, vec![0x10, 0x01]));
    let mut k = header(20, 4);
    k.push(0);
    assert_eq!(
        err_of(&k),
        (1, 2, vec![0, 20]),
        "KEEPALIVE must be exactly 19 octets"
    );
    assert_eq!(err_of(&header(19, 9)), (1, 3, vec![9]));
    assert_eq!(err_of(&header(28, 1)).1, 2, "OPEN shorter than 29");
    assert_eq!(frame_len(&header(40, 2)), Ok(None), "waits for the body");
}

fn open_body(version: u8, opt: &[u8]) -> Vec<u8> {
    let mut b = header((29 + opt.len()) as u16, 1);
    b.extend_from_slice(&[version, 0xfd, 0xe8, 0, 90, 192, 0, 2, 1, opt.len() as u8]);
    b.extend_from_slice(opt);
    b
}

#[test]
fn open_errors() {
    assert_eq!(err_of(&open_body(3, &[])), (2, 1, vec![0, 4]));
    assert_eq!(
        err_of(&open_body(4, &[1, 0])).1,
        code::UNSUPPORTED_OPTIONAL_PARAMETER
    );
    assert_eq!(
        err_of(&open_body(4, &[2, 5, 1, 4, 0, 1])).0,
        code::OPEN,
        "capability overruns its parameter"
    );
    assert_eq!(
        err_of(&open_body(4, &[2, 3, 65, 1, 0])).0,
        code::OPEN,
        "4-octet AS capability of length 1"
    );
    let mut b = open_body(4, &[2, 2, 2, 0]);
    b[HEADER_LEN + 9] = 3; // opt len disagrees with message length
    assert_eq!(err_of(&b).0, code::HEADER);
    let ok = open_body(4, &[2, 6, 65, 4, 0, 1, 0, 0]);
    let (Message::Open(o), _) = Message::parse(&ok, FOUR).unwrap() else {
        panic!()
    };
    assert_eq!(o.peer_as(), 65536);
}

fn update_with_attrs(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = header((HEADER_LEN + 4 + attrs.len() + nlri.len()) as u16, 2);
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    b
}

const ORIGIN: [u8; 4] = [0x40, 1, 1, 0];
const AS_PATH: [u8; 9] = [0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe8];
const NEXT_HOP: [u8; 7] = [0x40, 3, 4, 192, 0, 2, 1];
const NLRI: [u8; 4] = [24, 203, 0, 113];

fn attrs(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn update_errors() {
    let ok = update_with_attrs(&attrs(&[&ORIGIN, &AS_PATH, &NEXT_HOP]), &NLRI);
    assert!(Message::parse(&ok, FOUR).is_ok());

    // Withdrawn length beyond the message.
    let mut b = ok.clone();
    b[HEADER_LEN] = 0xff;
    assert_eq!((err_of(&b).0, err_of(&b).1), (3, 1));
    // Missing well-known attributes, data = the type code.
    assert_eq!(
        err_of(&update_with_attrs(&attrs(&[&AS_PATH, &NEXT_HOP]), &NLRI)),
        (3, 3, vec![1])
    );
    assert_eq!(
        err_of(&update_with_attrs(&attrs(&[&ORIGIN, &NEXT_HOP]), &NLRI)),
        (3, 3, vec![2])
    );
    assert_eq!(
        err_of(&update_with_attrs(&attrs(&[&ORIGIN, &AS_PATH]), &NLRI)),
        (3, 3, vec![3])
    );
    // Withdrawal-only updates need no attributes.
    assert!(Message::parse(&update_with_attrs(&[], &[]), FOUR).is_ok());
    // Flags: ORIGIN marked optional; data = the whole attribute.
    let bad_origin_flags = [0xc0, 1, 1, 0];
    assert_eq!(
        err_of(&update_with_attrs(
            &attrs(&[&bad_origin_flags, &AS_PATH, &NEXT_HOP]),
            &NLRI
        )),
        (3, 4, bad_origin_flags.to_vec())
    );
    // Length: ORIGIN of two octets.
    let long_origin = [0x40, 1, 2, 0, 0];
    assert_eq!(
        err_of(&update_with_attrs(
            &attrs(&[&long_origin, &AS_PATH, &NEXT_HOP]),
            &NLRI
        )),
        (3, 5, long_origin.to_vec())
    );
    // Attribute overrunning the list.
    assert_eq!(
        err_of(&update_with_attrs(&[0x40, 1, 9, 0], &[])).1,
        code::ATTRIBUTE_LENGTH_ERROR
    );
    // Invalid ORIGIN value.
    let origin3 = [0x40, 1, 1, 3];
    assert_eq!(
        err_of(&update_with_attrs(
            &attrs(&[&origin3, &AS_PATH, &NEXT_HOP]),
            &NLRI
        )),
        (3, 6, origin3.to_vec())
    );
    // Invalid NEXT_HOP.
    for nh in [[0, 0, 0, 0], [224, 0, 0, 1], [255, 255, 255, 255]] {
        let a = [0x40, 3, 4, nh[0], nh[1], nh[2], nh[3]];
        assert_eq!(
            err_of(&update_with_attrs(&attrs(&[&ORIGIN, &AS_PATH, &a]), &NLRI)),
            (3, 8, a.to_vec())
        );
    }
    // Malformed AS_PATH: bad segment type, zero count, overrun.
    for p in [
        [0x40, 2, 6, 7, 1, 0, 0, 0xfd, 0xe8],
        [0x40, 2, 6, 2, 0, 0, 0, 0xfd, 0xe8],
        [0x40, 2, 6, 2, 2, 0, 0, 0xfd, 0xe8],
    ] {
        assert_eq!(
            err_of(&update_with_attrs(&attrs(&[&ORIGIN, &p, &NEXT_HOP]), &NLRI)).1,
            code::MALFORMED_AS_PATH
        );
    }
    // Invalid network field: /33, truncated prefix.
    assert_eq!(
        err_of(&update_with_attrs(
            &attrs(&[&ORIGIN, &AS_PATH, &NEXT_HOP]),
            &[33, 1, 2, 3, 4, 5]
        ))
        .1,
        code::INVALID_NETWORK_FIELD
    );
    assert_eq!(
        err_of(&update_with_attrs(
            &attrs(&[&ORIGIN, &AS_PATH, &NEXT_HOP]),
            &[24, 1]
        ))
        .1,
        code::INVALID_NETWORK_FIELD
    );
    // Unrecognised well-known attribute.
    let unknown_wk = [0x40, 99, 0];
    assert_eq!(
        err_of(&update_with_attrs(
            &attrs(&[&ORIGIN, &AS_PATH, &NEXT_HOP, &unknown_wk]),
            &NLRI
        )),
        (3, 2, unknown_wk.to_vec())
    );
    // Duplicate attribute.
    assert_eq!(
        err_of(&update_with_attrs(
            &attrs(&[&ORIGIN, &ORIGIN, &AS_PATH, &NEXT_HOP]),
            &NLRI
        ))
        .1,
        code::MALFORMED_ATTRIBUTE_LIST
    );
    // Communities not a multiple of 4, large communities not of 12.
    let comm = [0xc0, 8, 3, 0, 0, 1];
    assert_eq!(
        err_of(&update_with_attrs(
            &attrs(&[&ORIGIN, &AS_PATH, &NEXT_HOP, &comm]),
            &NLRI
        ))
        .1,
        code::ATTRIBUTE_LENGTH_ERROR
    );
    let large = [0xc0, 32, 4, 0, 0, 0, 1];
    assert_eq!(
        err_of(&update_with_attrs(
            &attrs(&[&ORIGIN, &AS_PATH, &NEXT_HOP, &large]),
            &NLRI
        ))
        .1,
        code::ATTRIBUTE_LENGTH_ERROR
    );
    // MP_REACH with a bad next-hop length: optional attribute error.
    let mp = [0x80, 14, 8, 0, 2, 1, 3, 1, 2, 3, 0];
    assert_eq!(
        err_of(&update_with_attrs(&attrs(&[&ORIGIN, &AS_PATH, &mp]), &[])).1,
        code::OPTIONAL_ATTRIBUTE_ERROR
    );
    // Unknown optional attributes are kept.
    let opt = [0xc0, 200, 2, 7, 7];
    let b = update_with_attrs(&attrs(&[&ORIGIN, &AS_PATH, &NEXT_HOP, &opt]), &NLRI);
    let (m, _) = Message::parse(&b, FOUR).unwrap();
    assert_eq!(m.to_bytes(FOUR).unwrap(), b);
}

#[test]
fn too_long_messages_are_refused() {
    let u = Update {
        withdrawn: (0..1100u32)
            .map(|i| Ipv4Net::new(Ipv4Addr::from(i << 8), 24).unwrap())
            .collect(),
        ..Update::default()
    };
    assert!(matches!(
        Message::Update(u).to_bytes(FOUR),
        Err(EmitError::TooLong(_))
    ));
}

// --- property tests ---------------------------------------------------------------------------

fn any_v4net() -> impl Strategy<Value = Ipv4Net> {
    (any::<u32>(), 0u8..=32).prop_map(|(a, l)| Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc())
}

fn any_v6net() -> impl Strategy<Value = IpNet> {
    (any::<u128>(), 0u8..=128)
        .prop_map(|(a, l)| IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), l).unwrap().trunc()))
}

fn unicast_v4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>()
        .prop_map(Ipv4Addr::from)
        .prop_filter("unicast", |a| {
            !a.is_unspecified() && !a.is_broadcast() && !a.is_multicast()
        })
}

fn any_segment(four: bool) -> impl Strategy<Value = AsSegment> {
    let asn = if four {
        any::<u32>().boxed()
    } else {
        (0u32..=65535).boxed()
    };
    (1u8..=4, prop::collection::vec(asn, 1..5)).prop_map(|(kind, asns)| AsSegment { kind, asns })
}

fn any_update(four: bool) -> impl Strategy<Value = Update> {
    let mp_reach = prop_oneof![
        (
            prop::collection::vec(any_v6net(), 0..4),
            any::<u128>(),
            any::<bool>()
        )
            .prop_map(|(nlri, nh, ll)| {
                let mut next_hops = vec![IpAddr::V6(Ipv6Addr::from(nh))];
                if ll {
                    next_hops.push("fe80::1".parse().unwrap());
                }
                MpReach {
                    afi: AFI_IPV6,
                    safi: 1,
                    next_hops,
                    nlri,
                }
            }),
        (prop::collection::vec(any_v4net(), 0..4), unicast_v4()).prop_map(|(n, nh)| MpReach {
            afi: AFI_IPV4,
            safi: 1,
            next_hops: vec![IpAddr::V4(nh)],
            nlri: n.into_iter().map(IpNet::V4).collect()
        }),
    ];
    (
        prop::collection::vec(any_v4net(), 0..5),
        prop::collection::vec(any_v4net(), 0..5),
        (
            0u8..=2,
            prop::collection::vec(any_segment(four), 0..3),
            unicast_v4(),
        ),
        (
            prop::option::of(any::<u32>()),
            prop::option::of(any::<u32>()),
            prop::option::of(prop::collection::vec(any::<u32>(), 0..4)),
        ),
        prop::option::of(prop::collection::vec(
            (any::<u32>(), any::<u32>(), any::<u32>()),
            0..3,
        )),
        prop::option::of(mp_reach),
        prop::option::of(prop::collection::vec(any_v6net(), 0..4)),
        prop::option::of((100u8..=250, prop::collection::vec(any::<u8>(), 0..300))),
        prop::option::of((any::<u32>(), prop::collection::vec(any::<u32>(), 1..4))),
    )
        .prop_map(
            |(
                withdrawn,
                nlri,
                (origin, path, nh),
                (med, lp, comm),
                large,
                mp,
                unreach,
                unknown,
                rr,
            )| {
                let mut attributes = vec![
                    PathAttribute::new(Attr::Origin(origin)),
                    PathAttribute::new(Attr::AsPath(path)),
                    PathAttribute::new(Attr::NextHop(nh)),
                ];
                attributes.extend(med.map(|v| PathAttribute::new(Attr::Med(v))));
                attributes.extend(lp.map(|v| PathAttribute::new(Attr::LocalPref(v))));
                attributes.extend(comm.map(|v| PathAttribute::new(Attr::Communities(v))));
                attributes.extend(large.map(|v| {
                    PathAttribute::new(Attr::LargeCommunities(
                        v.into_iter()
                            .map(|(global, local1, local2)| LargeCommunity {
                                global,
                                local1,
                                local2,
                            })
                            .collect(),
                    ))
                }));
                if let Some((originator, clusters)) = rr {
                    attributes.push(PathAttribute::new(Attr::OriginatorId(originator.into())));
                    attributes.push(PathAttribute::new(Attr::ClusterList(
                        clusters.into_iter().map(Ipv4Addr::from).collect(),
                    )));
                }
                attributes.extend(mp.map(|m| PathAttribute::new(Attr::MpReach(m))));
                attributes.extend(unreach.map(|w| {
                    PathAttribute::new(Attr::MpUnreach(MpUnreach {
                        afi: AFI_IPV6,
                        safi: 1,
                        withdrawn: w,
                    }))
                }));
                attributes.extend(unknown.map(|(type_code, value)| PathAttribute {
                    // Long values get the extended-length flag on emission; set it so parse matches.
                    flags: FLAG_OPTIONAL
                        | if value.len() > 255 {
                            FLAG_EXTENDED_LENGTH
                        } else {
                            0
                        },
                    value: Attr::Unknown { type_code, value },
                }));
                Update {
                    withdrawn,
                    attributes,
                    nlri,
                }
            },
        )
}

proptest! {
    #[test]
    fn updates_roundtrip(u in any_update(true)) {
        roundtrip(&Message::Update(u), FOUR);
    }

    #[test]
    fn updates_roundtrip_two_octet(u in any_update(false)) {
        roundtrip(&Message::Update(u), TWO);
    }

    #[test]
    fn opens_roundtrip(my_as in any::<u16>(), hold in any::<u16>(), id in any::<u32>(), asn in any::<u32>(), gr in any::<bool>(), unknown in prop::collection::vec((3u8..=60, prop::collection::vec(any::<u8>(), 0..8)), 0..3)) {
        let mut caps = vec![Capability::Multiprotocol { afi: 1, reserved: 0, safi: 1 }, Capability::FourOctetAs(asn)];
        if gr {
            caps.push(Capability::GracefulRestart { flags: 0, time: 120, families: vec![] });
        }
        caps.extend(unknown.into_iter().map(|(code, value)| Capability::Unknown { code, value }));
        let open = Open { version: 4, my_as, hold_time: hold, bgp_id: Ipv4Addr::from(id), params: vec![OptParam::Capabilities(caps)] };
        roundtrip(&Message::Open(open), FOUR);
    }

    /// Arbitrary bytes (after a valid marker, to get past the first check) never panic, and every
    /// error carries a code/subcode RFC 4271 defines for message parsing.
    #[test]
    fn arbitrary_input_never_panics(kind in 1u8..=6, body in prop::collection::vec(any::<u8>(), 0..200), four in any::<bool>(), garble_len in any::<bool>()) {
        let len = if garble_len { (body.len() as u16).wrapping_mul(7) } else { (HEADER_LEN + body.len()) as u16 };
        let mut b = header(len, kind);
        b.extend_from_slice(&body);
        let ctx = WireContext { four_octet_as: four };
        let _ = frame_len(&b);
        match Message::parse(&b, ctx) {
            Ok((m, used)) => {
                prop_assert!(used <= b.len());
                // Whatever parses re-emits to something that parses to the same message.
                let again = m.to_bytes(ctx).unwrap();
                prop_assert_eq!(Message::parse(&again, ctx).unwrap().0, m);
            }
            Err(e) => prop_assert!(valid_error(&e), "unexpected error {:?}", e),
        }
    }

    #[test]
    fn arbitrary_update_bodies_never_panic(attrs in prop::collection::vec(any::<u8>(), 0..300), nlri in prop::collection::vec(any::<u8>(), 0..20)) {
        let b = update_with_attrs(&attrs, &nlri);
        if let Err(e) = Message::parse(&b, FOUR) {
            prop_assert!(valid_error(&e), "unexpected error {:?}", e);
        }
    }

    #[test]
    fn fully_random_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = frame_len(&b);
        if let Err(e) = Message::parse(&b, FOUR) {
            prop_assert!(valid_error(&e));
        }
    }
}

fn valid_error(e: &WireError) -> bool {
    match e.code {
        code::HEADER => (1..=3).contains(&e.subcode),
        code::OPEN => [0, 1, 4].contains(&e.subcode),
        code::UPDATE => [1, 2, 3, 4, 5, 6, 8, 9, 10, 11].contains(&e.subcode),
        _ => false,
    }
}

#[test]
fn received_updates_follow_rfc_7606() {
    const ORIGIN: &[u8] = &[0x40, 1, 1, 0];
    const AS_PATH: &[u8] = &[0x40, 2, 0];
    const NEXT_HOP: &[u8] = &[0x40, 3, 4, 192, 0, 2, 9];
    let prefix = [24, 203, 0, 113];
    let received = |bytes: &[u8]| Message::parse_received(bytes, FOUR);
    let update_of = |m: Message| match m {
        Message::Update(u) => u,
        other => panic!("not an UPDATE: {other:?}"),
    };

    // Treat-as-withdraw: a bad ORIGIN value withdraws the IPv4 NLRI and an MP_REACH's.
    let mp_reach: &[u8] = &[
        0x80, 14, 26, 0, 2, 1, 16, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0,
        32, 0x20, 0x01, 0x0d, 0xb8,
    ];
    let bytes = update_with_attrs(
        &attrs(&[&[0x40, 1, 1, 7], AS_PATH, NEXT_HOP, mp_reach]),
        &prefix,
    );
    assert_eq!(err_of(&bytes), (3, 6, vec![0x40, 1, 1, 7]), "strict parse");
    let (m, _, faults) = received(&bytes).unwrap();
    assert_eq!(faults.len(), 1);
    assert_eq!(
        (faults[0].type_code, faults[0].action),
        (ATTR_ORIGIN, FaultAction::TreatAsWithdraw)
    );
    let u = update_of(m);
    assert_eq!(u.withdrawn, vec![v4("203.0.113.0/24")]);
    assert!(u.nlri.is_empty());
    assert_eq!(
        u.attributes,
        vec![PathAttribute::new(Attr::MpUnreach(MpUnreach {
            afi: AFI_IPV6,
            safi: SAFI_UNICAST,
            withdrawn: vec!["2001:db8::/32".parse().unwrap()],
        }))]
    );

    // Attribute discard: a non-empty ATOMIC_AGGREGATE is dropped, the route kept.
    let bytes = update_with_attrs(
        &attrs(&[ORIGIN, AS_PATH, NEXT_HOP, &[0x40, 6, 1, 0]]),
        &prefix,
    );
    let (m, _, faults) = received(&bytes).unwrap();
    assert_eq!(faults[0].action, FaultAction::AttributeDiscard);
    let u = update_of(m);
    assert_eq!(u.nlri, vec![v4("203.0.113.0/24")]);
    assert_eq!(u.attributes.len(), 3);

    // A duplicate attribute: the first is kept.
    let bytes = update_with_attrs(
        &attrs(&[ORIGIN, AS_PATH, NEXT_HOP, &[0x40, 1, 1, 2]]),
        &prefix,
    );
    let (m, _, faults) = received(&bytes).unwrap();
    assert_eq!(faults[0].action, FaultAction::AttributeDiscard);
    assert_eq!(update_of(m).attr(ATTR_ORIGIN), Some(&Attr::Origin(0)));

    // Still a reset: a malformed MP_REACH_NLRI and a malformed NLRI field.
    let bytes = update_with_attrs(&attrs(&[ORIGIN, AS_PATH, &[0x80, 14, 2, 0, 1]]), &[]);
    assert_eq!(
        received(&bytes).unwrap_err().subcode,
        code::OPTIONAL_ATTRIBUTE_ERROR
    );
    let bytes = update_with_attrs(&attrs(&[ORIGIN, AS_PATH, NEXT_HOP]), &[40, 1, 2, 3]);
    assert_eq!(
        received(&bytes).unwrap_err().subcode,
        code::INVALID_NETWORK_FIELD
    );
}

#[test]
fn typed_codes_roundtrip_every_byte() {
    for b in 0..=u8::MAX {
        assert_eq!(AttrType::from(b).code(), b);
        assert_eq!(NotificationCode::from(b).code(), b);
        if let Some(t) = MessageType::from_code(b) {
            assert_eq!(t.code(), b);
        }
        assert_eq!(
            AttrType::from(b).flags().is_some(),
            !matches!(AttrType::from(b), AttrType::Unknown(_))
        );
    }
    assert_eq!(describe(42, 0), "unknown error code");
}

#[test]
fn route_reflection_attributes_roundtrip_and_malformed_ones_withdraw() {
    // ORIGINATOR_ID 192.0.2.7 and CLUSTER_LIST [192.0.2.1, 198.51.100.1], optional
    // non-transitive, as an RFC 4456 reflector sends them.
    const ORIGINATOR: [u8; 7] = [0x80, 9, 4, 192, 0, 2, 7];
    const CLUSTER: [u8; 11] = [0x80, 10, 8, 192, 0, 2, 1, 198, 51, 100, 1];
    let bytes = update_with_attrs(
        &attrs(&[&ORIGIN, &AS_PATH, &NEXT_HOP, &ORIGINATOR, &CLUSTER]),
        &NLRI,
    );
    let (Message::Update(u), _) = Message::parse(&bytes, FOUR).unwrap() else {
        panic!("not an UPDATE")
    };
    assert_eq!(
        u.attr(ATTR_ORIGINATOR_ID),
        Some(&Attr::OriginatorId(Ipv4Addr::new(192, 0, 2, 7)))
    );
    assert_eq!(
        u.attr(ATTR_CLUSTER_LIST),
        Some(&Attr::ClusterList(vec![
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(198, 51, 100, 1)
        ]))
    );
    assert_eq!(
        PathAttribute::new(Attr::OriginatorId(Ipv4Addr::new(192, 0, 2, 7))).flags,
        FLAG_OPTIONAL
    );
    assert_eq!(Message::Update(u).to_bytes(FOUR).unwrap(), bytes);

    // RFC 7606 §7.9/§7.10: a wrong length, or transitive flags, withdraw the routes.
    for bad in [
        &[0x80, 9, 3, 192, 0, 2][..],
        &[0x80, 10, 6, 192, 0, 2, 1, 198, 51][..],
        &[0x80, 10, 0][..],
        &[0xc0, 9, 4, 192, 0, 2, 7][..],
    ] {
        let bytes = update_with_attrs(&attrs(&[&ORIGIN, &AS_PATH, &NEXT_HOP, bad]), &NLRI);
        let (m, _, faults) = Message::parse_received(&bytes, FOUR).unwrap();
        assert_eq!(faults.len(), 1, "{bad:?}");
        assert_eq!(faults[0].action, FaultAction::TreatAsWithdraw, "{bad:?}");
        let Message::Update(u) = m else { panic!() };
        assert_eq!(u.withdrawn, vec![v4("203.0.113.0/24")], "{bad:?}");
        assert!(u.nlri.is_empty());
    }
}
