use super::*;
use crate::bgp::wire::{Open, Update};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

fn peer_open(asn: u32, hold: u16, caps: Vec<Capability>) -> Open {
    Open {
        version: 4,
        my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
        hold_time: hold,
        bgp_id: Ipv4Addr::new(192, 0, 2, 2),
        params: vec![OptParam::Capabilities(caps)],
    }
}

fn full_caps(asn: u32) -> Vec<Capability> {
    vec![
        Capability::Multiprotocol {
            afi: 1,
            reserved: 0,
            safi: 1,
        },
        Capability::Multiprotocol {
            afi: 2,
            reserved: 0,
            safi: 1,
        },
        Capability::RouteRefresh,
        Capability::FourOctetAs(asn),
        Capability::GracefulRestart {
            flags: 0,
            time: 120,
            families: vec![],
        },
    ]
}

/// Drives an active FSM to Established and returns it with the negotiated parameters.
fn established(config: FsmConfig, peer_hold: u16) -> (Fsm, Negotiated) {
    let peer_as = config.peer_as;
    let mut fsm = Fsm::new(config);
    assert_eq!(fsm.handle(Event::ManualStart), vec![Action::Connect]);
    let a = fsm.handle(Event::TcpConnected { local: LOCAL });
    assert!(matches!(a[1], Action::Send(Message::Open(_))));
    assert_eq!(fsm.state(), State::OpenSent);
    let a = fsm.handle(Event::Message(Message::Open(peer_open(
        peer_as,
        peer_hold,
        full_caps(peer_as),
    ))));
    assert_eq!(a[0], Action::Send(Message::Keepalive), "{a:?}");
    assert_eq!(fsm.state(), State::OpenConfirm);
    let a = fsm.handle(Event::Message(Message::Keepalive));
    assert_eq!(fsm.state(), State::Established);
    let Some(Action::Established(neg)) = a.last().cloned() else {
        panic!("{a:?}")
    };
    (fsm, neg)
}

fn sent_notification(actions: &[Action]) -> Option<(u8, u8)> {
    actions.iter().find_map(|a| match a {
        Action::Send(Message::Notification(n)) => Some((n.code, n.subcode)),
        _ => None,
    })
}

#[test]
fn our_open_announces_capabilities_and_as_trans() {
    let mut c = FsmConfig::new(4_200_000_000, 65000);
    c.graceful_restart = Some(120);
    let open = Fsm::new(c).our_open(LOCAL);
    assert_eq!(open.my_as, AS_TRANS);
    assert_eq!(open.bgp_id, Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!(open.peer_as(), 4_200_000_000);
    let caps: Vec<_> = open.capabilities().collect();
    assert!(caps.contains(&&Capability::Multiprotocol {
        afi: 2,
        reserved: 0,
        safi: 1
    }));
    assert!(
        caps.iter()
            .any(|c| matches!(c, Capability::GracefulRestart { time: 120, .. }))
    );
    assert!(caps.contains(&&Capability::RouteRefresh));
}

#[test]
fn hold_time_is_the_minimum_and_keepalive_a_third() {
    let (_, neg) = established(FsmConfig::new(64512, 64513), 30);
    assert_eq!((neg.hold_time, neg.keepalive_time), (30, 10));
    assert!(!neg.ibgp);
    assert!(neg.ctx.four_octet_as);
    assert_eq!(neg.families, vec![IPV4_UNICAST, IPV6_UNICAST]);
    let (_, neg) = established(FsmConfig::new(64512, 64512), 180);
    assert_eq!((neg.hold_time, neg.keepalive_time), (90, 30));
    assert!(neg.ibgp);
    // A configured keepalive below the hold time is kept.
    let mut c = FsmConfig::new(64512, 64513);
    c.keepalive_time = Some(5);
    assert_eq!(established(c, 90).1.keepalive_time, 5);
}

#[test]
fn hold_time_zero_means_no_timers() {
    let (mut fsm, neg) = established(FsmConfig::new(64512, 64513), 0);
    assert_eq!((neg.hold_time, neg.keepalive_time), (0, 0));
    let a = fsm.handle(Event::Message(Message::Keepalive));
    assert_eq!(a, vec![Action::StopTimer(Timer::Hold)]);
    let mut fsm = Fsm::new(FsmConfig::new(64512, 64513));
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpConnected { local: LOCAL });
    let a = fsm.handle(Event::Message(Message::Open(peer_open(
        64513,
        0,
        full_caps(64513),
    ))));
    assert!(
        !a.iter()
            .any(|a| matches!(a, Action::StartTimer(Timer::Keepalive | Timer::Hold, _))),
        "{a:?}"
    );
}

#[test]
fn open_errors_send_the_right_notification() {
    let cases: Vec<(Open, (u8, u8))> = vec![
        (peer_open(64999, 90, full_caps(64999)), (2, 2)),
        (peer_open(64513, 1, full_caps(64513)), (2, 6)),
        (peer_open(64513, 2, full_caps(64513)), (2, 6)),
        (
            Open {
                bgp_id: Ipv4Addr::UNSPECIFIED,
                ..peer_open(64513, 90, full_caps(64513))
            },
            (2, 3),
        ),
    ];
    for (open, expected) in cases {
        let mut fsm = Fsm::new(FsmConfig::new(64512, 64513));
        fsm.handle(Event::ManualStart);
        fsm.handle(Event::TcpConnected { local: LOCAL });
        let a = fsm.handle(Event::Message(Message::Open(open)));
        assert_eq!(sent_notification(&a), Some(expected), "{a:?}");
        assert!(a.contains(&Action::Close));
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::StartTimer(Timer::ConnectRetry, _)))
        );
        assert_eq!(fsm.state(), State::Idle);
    }
    // iBGP with our own router id.
    let mut fsm = Fsm::new(FsmConfig::new(64512, 64512));
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpConnected { local: LOCAL });
    let open = Open {
        bgp_id: Ipv4Addr::new(192, 0, 2, 1),
        ..peer_open(64512, 90, full_caps(64512))
    };
    assert_eq!(
        sent_notification(&fsm.handle(Event::Message(Message::Open(open)))),
        Some((2, 3))
    );
    // A 4-octet local AS needs the peer's 4-octet capability.
    let mut fsm = Fsm::new(FsmConfig::new(4_200_000_000, 64513));
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpConnected { local: LOCAL });
    let open = peer_open(64513, 90, vec![Capability::RouteRefresh]);
    assert_eq!(
        sent_notification(&fsm.handle(Event::Message(Message::Open(open)))),
        Some((2, 7))
    );
}

#[test]
fn peer_without_mp_capability_speaks_ipv4_only() {
    let mut fsm = Fsm::new(FsmConfig::new(64512, 64513));
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpConnected { local: LOCAL });
    let open = peer_open(64513, 90, vec![]);
    fsm.handle(Event::Message(Message::Open(open)));
    let neg = fsm.negotiated().unwrap();
    assert_eq!(neg.families, vec![IPV4_UNICAST]);
    assert!(!neg.ctx.four_octet_as);
    assert!(!neg.graceful_restart);
}

#[test]
fn unexpected_messages_are_fsm_errors() {
    let mut fsm = Fsm::new(FsmConfig::new(64512, 64513));
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpConnected { local: LOCAL });
    assert_eq!(
        sent_notification(&fsm.handle(Event::Message(Message::Keepalive))),
        Some((5, 1))
    );

    let (mut fsm, _) = established(FsmConfig::new(64512, 64513), 90);
    let open = peer_open(64513, 90, vec![]);
    assert_eq!(
        sent_notification(&fsm.handle(Event::Message(Message::Open(open)))),
        Some((5, 3))
    );
}

#[test]
fn established_delivers_updates_and_keeps_alive() {
    let (mut fsm, _) = established(FsmConfig::new(64512, 64513), 90);
    let a = fsm.handle(Event::Message(Message::Update(Update::default())));
    assert_eq!(
        a[0],
        Action::StartTimer(Timer::Hold, Duration::from_secs(90))
    );
    assert!(matches!(a[1], Action::Deliver(Message::Update(_))));
    let a = fsm.handle(Event::KeepaliveTimerExpired);
    assert_eq!(
        a,
        vec![
            Action::Send(Message::Keepalive),
            Action::StartTimer(Timer::Keepalive, Duration::from_secs(30))
        ]
    );
    let a = fsm.handle(Event::HoldTimerExpired);
    assert_eq!(sent_notification(&a), Some((4, 0)));
    assert!(matches!(
        a.iter().find(|a| matches!(a, Action::Down(_))),
        Some(Action::Down(DownReason::NotificationSent(_)))
    ));
}

#[test]
fn decode_errors_and_peer_notifications_close_the_session() {
    let (mut fsm, _) = established(FsmConfig::new(64512, 64513), 90);
    let e = WireError::new(3, 11, vec![], "x");
    assert_eq!(
        sent_notification(&fsm.handle(Event::DecodeError(e))),
        Some((3, 11))
    );
    let (mut fsm, _) = established(FsmConfig::new(64512, 64513), 90);
    let a = fsm.handle(Event::Message(Message::Notification(Notification::new(
        6, 2,
    ))));
    assert_eq!(sent_notification(&a), None);
    assert!(a.contains(&Action::Close));
    assert!(a.contains(&Action::Down(DownReason::NotificationReceived(
        Notification::new(6, 2)
    ))));
}

#[test]
fn reconnect_backoff_doubles_to_two_minutes_and_resets() {
    let mut fsm = Fsm::new(FsmConfig::new(64512, 64513));
    fsm.handle(Event::ManualStart);
    let mut delays = Vec::new();
    for _ in 0..10 {
        let a = fsm.handle(Event::TcpFailed);
        assert_eq!(fsm.state(), State::Active);
        delays.extend(a.iter().filter_map(|a| match a {
            Action::StartTimer(Timer::ConnectRetry, d) => Some(d.as_secs()),
            _ => None,
        }));
        assert_eq!(
            fsm.handle(Event::ConnectRetryExpired),
            vec![Action::Connect]
        );
    }
    assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 64, 120, 120, 120]);
    // Established resets the backoff.
    fsm.handle(Event::TcpConnected { local: LOCAL });
    fsm.handle(Event::Message(Message::Open(peer_open(
        64513,
        90,
        full_caps(64513),
    ))));
    fsm.handle(Event::Message(Message::Keepalive));
    assert_eq!(fsm.state(), State::Established);
    let a = fsm.handle(Event::TcpFailed);
    assert!(a.contains(&Action::StartTimer(
        Timer::ConnectRetry,
        Duration::from_secs(1)
    )));
}

#[test]
fn passive_mode_never_connects() {
    let mut c = FsmConfig::new(64512, 64513);
    c.passive = true;
    let mut fsm = Fsm::new(c);
    assert_eq!(fsm.handle(Event::ManualStart), vec![]);
    assert_eq!(fsm.state(), State::Active);
    assert_eq!(fsm.handle(Event::ConnectRetryExpired), vec![]);
    fsm.handle(Event::TcpConnected { local: LOCAL });
    assert_eq!(fsm.state(), State::OpenSent);
    let a = fsm.handle(Event::TcpFailed);
    assert!(
        !a.iter().any(|a| matches!(
            a,
            Action::Connect | Action::StartTimer(Timer::ConnectRetry, _)
        )),
        "{a:?}"
    );
    assert_eq!(fsm.state(), State::Active);
    // Ready for the next incoming connection.
    fsm.handle(Event::TcpConnected { local: LOCAL });
    assert_eq!(fsm.state(), State::OpenSent);
}

#[test]
fn stop_sends_cease_unless_graceful_restart() {
    let (mut fsm, _) = established(FsmConfig::new(64512, 64513), 90);
    let a = fsm.handle(Event::ManualStop);
    assert_eq!(sent_notification(&a), Some((6, 2)));
    assert_eq!(fsm.state(), State::Idle);
    assert_eq!(
        fsm.handle(Event::ConnectRetryExpired),
        vec![],
        "stopped sessions stay down"
    );

    let mut c = FsmConfig::new(64512, 64513);
    c.graceful_restart = Some(120);
    let (mut fsm, neg) = established(c, 90);
    assert!(neg.graceful_restart);
    let a = fsm.handle(Event::ManualStop);
    assert_eq!(sent_notification(&a), None);
    assert!(a.contains(&Action::Close));
}

#[test]
fn no_event_sequence_panics() {
    use proptest::prelude::*;
    let events = prop_oneof![
        Just(Event::ManualStart),
        Just(Event::ManualStop),
        Just(Event::TcpConnected { local: LOCAL }),
        Just(Event::TcpFailed),
        Just(Event::HoldTimerExpired),
        Just(Event::KeepaliveTimerExpired),
        Just(Event::ConnectRetryExpired),
        Just(Event::Message(Message::Keepalive)),
        Just(Event::Message(Message::Open(peer_open(
            64513,
            90,
            full_caps(64513)
        )))),
        Just(Event::Message(Message::Update(Update::default()))),
        Just(Event::Message(Message::Notification(Notification::new(
            6, 4
        )))),
    ];
    proptest!(|(seq in prop::collection::vec(events, 0..40), passive in any::<bool>())| {
        let mut c = FsmConfig::new(64512, 64513);
        c.passive = passive;
        let mut fsm = Fsm::new(c);
        for e in seq {
            let actions = fsm.handle(e);
            if passive {
                prop_assert!(!actions.contains(&Action::Connect));
            }
            if fsm.state() == State::Established {
                prop_assert!(fsm.negotiated().is_some());
            }
        }
    });
}

/// `dynamicASN`: the peer's AS comes from its OPEN; internal accepts only ours, external any
/// other; a peer of the wrong kind gets OPEN error Bad Peer AS.
#[test]
fn dynamic_as_accepts_the_right_kind_and_rejects_the_other() {
    let open_from = |kind: DynamicAs, peer_as: u32| {
        let mut c = FsmConfig::new(64512, 0);
        c.dynamic_as = Some(kind);
        let mut fsm = Fsm::new(c);
        fsm.handle(Event::ManualStart);
        fsm.handle(Event::TcpConnected { local: LOCAL });
        let a = fsm.handle(Event::Message(Message::Open(peer_open(
            peer_as,
            90,
            full_caps(peer_as),
        ))));
        (fsm, a)
    };
    for (kind, peer_as, ibgp) in [
        (DynamicAs::External, 64513, false),
        (DynamicAs::External, 4_200_000_000, false),
        (DynamicAs::Internal, 64512, true),
    ] {
        let (mut fsm, a) = open_from(kind, peer_as);
        assert_eq!(fsm.state(), State::OpenConfirm, "{kind:?} {peer_as}: {a:?}");
        let a = fsm.handle(Event::Message(Message::Keepalive));
        let Some(Action::Established(neg)) = a.last() else {
            panic!("{a:?}")
        };
        assert_eq!((neg.peer_as, neg.ibgp), (peer_as, ibgp));
    }
    for (kind, peer_as) in [(DynamicAs::External, 64512), (DynamicAs::Internal, 64513)] {
        let (fsm, a) = open_from(kind, peer_as);
        assert_eq!(
            sent_notification(&a),
            Some((code::OPEN, code::BAD_PEER_AS)),
            "{kind:?} {peer_as}: {a:?}"
        );
        assert_eq!(fsm.state(), State::Idle);
    }
}

fn gr_flags(open: &Open) -> (u8, Vec<u8>) {
    open.capabilities()
        .find_map(|c| match c {
            Capability::GracefulRestart {
                flags, families, ..
            } => Some((*flags, families.iter().map(|f| f.flags).collect())),
            _ => None,
        })
        .expect("graceful restart capability")
}

/// A restarting speaker sets the Restart State bit (and the forwarding bits) until its first
/// session is established, not in the sessions after.
#[test]
fn restarting_sets_the_restart_state_bit_until_established() {
    let mut c = FsmConfig::new(64512, 64513);
    c.graceful_restart = Some(120);
    assert_eq!(
        gr_flags(&Fsm::new(c.clone()).our_open(LOCAL)),
        (0, vec![GR_FORWARDING, GR_FORWARDING])
    );
    c.restarting = true;
    let fsm = Fsm::new(c.clone());
    assert_eq!(
        gr_flags(&fsm.our_open(LOCAL)),
        (GR_RESTART_STATE, vec![GR_FORWARDING, GR_FORWARDING])
    );
    let (mut fsm, _) = established(c, 90);
    assert_eq!(gr_flags(&fsm.our_open(LOCAL)).0, 0);
    fsm.handle(Event::TcpFailed);
    assert_eq!(gr_flags(&fsm.our_open(LOCAL)).0, 0, "later sessions");
}

/// The peer's graceful restart capability is kept for the session and forgotten after it.
#[test]
fn the_peers_restart_capability_is_kept_for_the_session() {
    let mut c = FsmConfig::new(64512, 64513);
    c.graceful_restart = Some(120);
    let (mut fsm, neg) = established(c, 90);
    assert!(neg.graceful_restart);
    assert_eq!(
        fsm.peer_restart(),
        Some(&PeerRestart {
            restart_time: 120,
            families: vec![]
        })
    );
    fsm.handle(Event::TcpFailed);
    assert_eq!(fsm.peer_restart(), None);
}
