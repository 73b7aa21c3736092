use super::*;
use crate::bgp::Password;
use crate::bgp::wire::Notification;
use crate::bgp::wire::{self, Message, WireContext};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Two sessions of ours on loopback, one passive, exchange routes in both directions,
/// withdraw, and shut down with a Cease.
#[tokio::test]
async fn two_sessions_on_loopback() {
    let port = free_loopback_port();
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let mut passive = PeerConfig::new(64513, 64512, lo);
    passive.listen = Some(SocketAddr::new(lo, port));
    passive.router_id = Some(Ipv4Addr::new(192, 0, 2, 2));
    passive.hold_time = Duration::from_secs(9);
    let mut active = PeerConfig::new(64512, 64513, lo);
    active.peer_port = port;
    active.router_id = Some(Ipv4Addr::new(192, 0, 2, 1));
    active.retry_initial = Duration::from_millis(50);
    active.ebgp_multihop = true;
    active.password = Some(Password::new("right"));
    passive.password = Some(Password::new("right"));
    let b = Session::spawn(passive);
    let a = Session::spawn(active);
    assert!(
        a.wait_for(State::Established, Duration::from_secs(10))
            .await,
        "{:?}",
        a.status()
    );
    assert!(b.wait_for(State::Established, Duration::from_secs(5)).await);
    assert_eq!(a.status().negotiated.unwrap().hold_time, 9);
    let since = a.status().established_since.expect("established_since");
    assert!(since.elapsed() < Duration::from_secs(10));
    let mut gen_rx = b.watch_received();
    gen_rx.borrow_and_update();

    let attrs = RouteAttrs {
        communities: vec![0xfde8_0001],
        ..RouteAttrs::default()
    };
    a.set_routes([("203.0.113.5/32".parse().unwrap(), attrs.clone())].into());
    // The generation moves as soon as the UPDATE is applied: no polling needed.
    tokio::time::timeout(Duration::from_secs(5), gen_rx.changed())
        .await
        .expect("received table change")
        .unwrap();
    let got = b.received();
    assert_eq!(b.counters().prefixes_received.load(Ordering::Relaxed), 1);
    let r = &got[&"203.0.113.5/32".parse::<IpNet>().unwrap()];
    assert_eq!(r.next_hop, lo);
    assert_eq!(r.as_path, vec![64512]);
    assert_eq!(r.communities, vec![0xfde8_0001]);
    assert_eq!(a.counters().prefixes_announced.load(Ordering::Relaxed), 1);

    // Single changes: one route added, the first withdrawn.
    let (r5, r6): (IpNet, IpNet) = (
        "203.0.113.5/32".parse().unwrap(),
        "203.0.113.6/32".parse().unwrap(),
    );
    a.update_routes([(r6, Some(attrs.clone())), (r5, None)]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.received().keys().ne([&r6]) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.received().into_keys().collect::<Vec<_>>(), vec![r6]);
    assert_eq!(a.counters().prefixes_announced.load(Ordering::Relaxed), 1);

    a.set_routes(BTreeMap::new());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.received().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.received().is_empty());

    a.shutdown().await;
    let mut rx = b.watch_status();
    let s = tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|s| s.state != State::Established),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert!(s.last_error.unwrap().contains("administrative shutdown"));
    assert_eq!(s.established_since, None);
    b.shutdown().await;
}

/// A loopback port nothing listens on (for a session to listen on).
fn free_loopback_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A passive session config (AS 64512, peer AS 64513) listening on loopback `port`.
fn passive_on_loopback(port: u16) -> PeerConfig {
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let mut c = PeerConfig::new(64512, 64513, lo);
    c.listen = Some(SocketAddr::new(lo, port));
    c.router_id = Some(Ipv4Addr::new(192, 0, 2, 1));
    c
}

/// A raw peer (AS 64513) that connects to the session on `port` (retrying while it starts
/// listening), completes the OPEN exchange, offering graceful restart when given, and
/// returns the stream with the bytes read past the session's OPEN and KEEPALIVE.
async fn raw_peer(port: u16, graceful_restart: Option<u16>) -> (TcpStream, Vec<u8>) {
    use crate::bgp::fsm::{Fsm, FsmConfig};
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(st) => break st,
            Err(e) if Instant::now() > deadline => panic!("connect: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut c = FsmConfig::new(64513, 64512);
    c.router_id = Some(Ipv4Addr::new(192, 0, 2, 9));
    c.graceful_restart = graceful_restart;
    let open = Fsm::new(c).our_open("127.0.0.1".parse().unwrap());
    let ctx = WireContext::FOUR_OCTET;
    for m in [Message::Open(open), Message::Keepalive] {
        stream.write_all(&m.to_bytes(ctx).unwrap()).await.unwrap();
    }
    // Their OPEN and KEEPALIVE; what follows them (UPDATEs) stays in `buf`.
    let mut got = 0;
    let mut buf = Vec::new();
    while got < 2 {
        stream.read_buf(&mut buf).await.unwrap();
        while got < 2
            && let Ok(Some(len)) = wire::frame_len(&buf)
        {
            buf.drain(..len);
            got += 1;
        }
    }
    (stream, buf)
}

/// With graceful restart the routes a session is spawned with go out before its
/// End-of-RIB, whatever the timing: the peer sweeps what the End-of-RIB leaves out.
#[tokio::test]
async fn initial_routes_precede_the_end_of_rib() {
    let port = free_loopback_port();
    let mut c = passive_on_loopback(port);
    c.enable_graceful_restart = true;
    let route: IpNet = "203.0.113.5/32".parse().unwrap();
    let s = Session::spawn_with_routes(c, [(route, RouteAttrs::default())].into());
    let (mut stream, mut buf) = raw_peer(port, Some(120)).await;
    let ctx = WireContext::FOUR_OCTET;
    // Every UPDATE until the first End-of-RIB: true for an End-of-RIB.
    let mut updates: Vec<bool> = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            while let Ok(Some(len)) = wire::frame_len(&buf) {
                if let Ok((Message::Update(u), _)) = Message::parse(&buf[..len], ctx) {
                    updates.push(u.is_end_of_rib().is_some());
                }
                buf.drain(..len);
            }
            if updates.contains(&true) || stream.read_buf(&mut buf).await.unwrap() == 0 {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no End-of-RIB: {updates:?} {:?}", s.status());
    assert_eq!(updates.first(), Some(&false), "{updates:?}");
    assert_eq!(s.counters().prefixes_announced.load(Ordering::Relaxed), 1);
    s.shutdown().await;
}

/// Reads until EOF and returns the NOTIFICATION seen, if any.
async fn read_notification(stream: &mut TcpStream) -> Option<Notification> {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while stream.read_buf(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    let mut found = None;
    while let Ok(Some(len)) = wire::frame_len(&buf) {
        if let Ok((Message::Notification(n), _)) =
            Message::parse(&buf[..len], WireContext::FOUR_OCTET)
        {
            found = Some(n);
        }
        buf.drain(..len);
    }
    found
}

/// Malformed input closes only that connection, with the NOTIFICATION RFC 4271 prescribes,
/// and the (passive) session accepts the peer again afterwards.
#[tokio::test]
async fn malformed_updates_get_the_right_notification() {
    let port = free_loopback_port();
    let s = Session::spawn(passive_on_loopback(port));

    let header = |len: usize, kind: u8| {
        let mut b = vec![0xff; 16];
        b.extend_from_slice(&(len as u16).to_be_bytes());
        b.push(kind);
        b
    };
    let update = |attrs: &[u8], nlri: &[u8]| {
        let mut b = header(19 + 4 + attrs.len() + nlri.len(), 2);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        b.extend_from_slice(attrs);
        b.extend_from_slice(nlri);
        b
    };
    let origin_as_nh = [0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 192, 0, 2, 9];
    // Malformed attributes RFC 7606 handles without a reset are in
    // `malformed_attributes_withdraw_routes_and_keep_the_session`.
    let cases: Vec<(Vec<u8>, (u8, u8))> = vec![
        (update(&origin_as_nh, &[40, 1, 2, 3, 4, 5, 6]), (3, 10)),
        // MP_REACH_NLRI too short to locate its NLRI.
        (update(&[0x80, 14, 2, 0, 1], &[]), (3, 9)),
        (header(19, 9), (1, 3)),
        (vec![0; 19], (1, 1)),
        (header(5000, 2), (1, 2)),
        (
            Message::Open(
                crate::bgp::fsm::Fsm::new(crate::bgp::fsm::FsmConfig::new(64513, 64512))
                    .our_open("127.0.0.1".parse().unwrap()),
            )
            .to_bytes(WireContext::FOUR_OCTET)
            .unwrap(),
            (5, 3),
        ),
    ];
    for (bytes, expected) in cases {
        let (mut peer, _) = raw_peer(port, None).await;
        assert!(s.wait_for(State::Established, Duration::from_secs(5)).await);
        peer.write_all(&bytes).await.unwrap();
        let n = read_notification(&mut peer).await.expect("a NOTIFICATION");
        assert_eq!((n.code, n.subcode), expected, "{n}");
        assert!(s.status().last_error.is_some());
        assert!(
            s.wait_for(State::Active, Duration::from_secs(5)).await,
            "{:?}",
            s.status()
        );
    }
    // A well-formed UPDATE after all that is received normally.
    let (mut peer, _) = raw_peer(port, None).await;
    assert!(s.wait_for(State::Established, Duration::from_secs(5)).await);
    peer.write_all(&update(&origin_as_nh, &[24, 203, 0, 113]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.received().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.received().len(), 1);
    s.shutdown().await;
    assert_eq!(
        read_notification(&mut peer)
            .await
            .map(|n| (n.code, n.subcode)),
        Some((6, 2))
    );
}

/// RFC 7606: a malformed ORIGIN, AS_PATH or NEXT_HOP, or a missing mandatory attribute,
/// withdraws the UPDATE's routes; a malformed ATOMIC_AGGREGATE is dropped; the session
/// stays Established throughout.
#[tokio::test]
async fn malformed_attributes_withdraw_routes_and_keep_the_session() {
    let port = free_loopback_port();
    let s = Session::spawn(passive_on_loopback(port));
    let update = |attrs: &[u8], nlri: &[u8]| {
        let mut b = vec![0xff; 16];
        b.extend_from_slice(&((19 + 4 + attrs.len() + nlri.len()) as u16).to_be_bytes());
        b.push(2);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        b.extend_from_slice(attrs);
        b.extend_from_slice(nlri);
        b
    };
    let origin_as_nh = [0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 192, 0, 2, 9];
    let prefix = [24, 203, 0, 113];
    let (mut peer, _) = raw_peer(port, None).await;
    assert!(s.wait_for(State::Established, Duration::from_secs(5)).await);
    let wait_received = |n: usize| {
        let s = &s;
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while s.received().len() != n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            s.received().len() == n
        }
    };
    let withdrawing: Vec<Vec<u8>> = vec![
        // ORIGIN 7 is undefined.
        vec![0x40, 1, 1, 7, 0x40, 2, 0, 0x40, 3, 4, 192, 0, 2, 9],
        // AS_PATH segment overruns the attribute.
        vec![
            0x40, 1, 1, 0, 0x40, 2, 4, 9, 1, 0, 1, 0x40, 3, 4, 192, 0, 2, 9,
        ],
        // NEXT_HOP is multicast.
        vec![0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 224, 0, 0, 1],
        // ORIGIN missing.
        vec![0x40, 2, 0, 0x40, 3, 4, 192, 0, 2, 9],
    ];
    for (i, attrs) in withdrawing.iter().enumerate() {
        peer.write_all(&update(&origin_as_nh, &prefix))
            .await
            .unwrap();
        assert!(wait_received(1).await, "case {i}: announced");
        peer.write_all(&update(attrs, &prefix)).await.unwrap();
        assert!(wait_received(0).await, "case {i}: withdrawn");
        assert_eq!(s.state(), State::Established, "case {i}");
        assert_eq!(
            s.counters()
                .updates_treated_as_withdraw
                .load(Ordering::Relaxed),
            i as u64 + 1
        );
    }
    // ATOMIC_AGGREGATE must be empty: discarded, the route is kept.
    let mut attrs = origin_as_nh.to_vec();
    attrs.extend_from_slice(&[0x40, 6, 1, 0]);
    peer.write_all(&update(&attrs, &prefix)).await.unwrap();
    assert!(wait_received(1).await);
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.counters().attributes_discarded.load(Ordering::Relaxed) == 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.counters().attributes_discarded.load(Ordering::Relaxed), 1);
    assert_eq!(s.state(), State::Established);
    assert_eq!(s.counters().established_total.load(Ordering::Relaxed), 1);
    s.shutdown().await;
}

/// A wrong MD5 password never gets a session up.
#[tokio::test]
async fn md5_mismatch_fails_cleanly() {
    let port = free_loopback_port();
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let mut passive = PeerConfig::new(64513, 64512, lo);
    passive.listen = Some(SocketAddr::new(lo, port));
    passive.password = Some(Password::new("right"));
    passive.router_id = Some(Ipv4Addr::new(192, 0, 2, 2));
    let mut active = PeerConfig::new(64512, 64513, lo);
    active.peer_port = port;
    active.password = Some(Password::new("wrong"));
    active.connect_time = Duration::from_millis(500);
    active.retry_initial = Duration::from_millis(100);
    let b = Session::spawn(passive);
    let a = Session::spawn(active);
    assert!(!a.wait_for(State::Established, Duration::from_secs(2)).await);
    let s = a.status();
    assert!(s.last_error.is_some(), "{s:?}");
    assert!(!format!("{s:?}").contains("wrong"));
    a.shutdown().await;
    b.shutdown().await;
}

/// A session of ours connecting from `source` on loopback to `port`, AS 64512 to 64513.
fn active_from(source: &str, port: u16, password: Option<&str>) -> PeerConfig {
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let mut c = PeerConfig::new(64512, 64513, lo);
    c.peer_port = port;
    c.source_address = Some(source.parse().unwrap());
    c.router_id = Some(source.parse().unwrap());
    c.ebgp_multihop = true;
    c.retry_initial = Duration::from_millis(50);
    c.connect_time = Duration::from_millis(500);
    c.password = password.map(Password::new);
    c
}

/// A passive session on `listener` for the peer at `peer` (AS 64513).
fn passive_on(listener: &Arc<Listener>, peer: &str, password: Option<&str>) -> PeerConfig {
    let mut c = PeerConfig::new(64513, 64512, peer.parse().unwrap());
    c.inbound = Some(listener.clone());
    c.router_id = Some(Ipv4Addr::new(192, 0, 2, 100));
    c.ebgp_multihop = true;
    c.password = password.map(Password::new);
    c
}

/// Connects from `source` and tells whether the connection is closed on us without a byte.
async fn closed_at_once(source: &str, port: u16) -> bool {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    let mut stream = socket
        .connect(SocketAddr::new("127.0.0.1".parse().unwrap(), port))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Two passive sessions share one dual-stack listener (one with TCP MD5), each gets its own
/// peer's connection by source address; unknown addresses, and a peer whose session
/// stopped, are closed at once; a second connection while Established is refused and the
/// session stays.
#[tokio::test]
async fn sessions_share_a_listener() {
    let listener = Listener::bind("[::]:0".parse().unwrap()).unwrap();
    let port = listener.local_addr().port();
    assert!(format!("{listener:?}").contains("Listener"));
    let b1 = Session::spawn(passive_on(&listener, "127.0.0.11", Some("secret")));
    let b2 = Session::spawn(passive_on(&listener, "::ffff:127.0.0.12", None));
    let a1 = Session::spawn(active_from("127.0.0.11", port, Some("secret")));
    let a2 = Session::spawn(active_from("127.0.0.12", port, None));
    for (h, who) in [(&a1, "a1"), (&a2, "a2"), (&b1, "b1"), (&b2, "b2")] {
        assert!(
            h.wait_for(State::Established, Duration::from_secs(10))
                .await,
            "{who}: {:?}",
            h.status()
        );
    }
    // Each passive session talks to its own peer.
    assert_eq!(
        b1.status().negotiated.unwrap().peer_id,
        Ipv4Addr::new(127, 0, 0, 11)
    );
    assert_eq!(
        b2.status().negotiated.unwrap().peer_id,
        Ipv4Addr::new(127, 0, 0, 12)
    );
    // Our address on the dual-stack listener is the IPv4 one, not IPv4-mapped.
    assert_eq!(
        b1.status().negotiated.unwrap().local_addr,
        "127.0.0.1".parse::<IpAddr>().unwrap()
    );
    assert!(closed_at_once("127.0.0.13", port).await, "unknown address");
    // A second connection from an established peer is closed; the session stays up.
    assert!(
        closed_at_once("127.0.0.12", port).await,
        "second connection"
    );
    assert_eq!(b2.state(), State::Established);
    assert_eq!(b2.counters().established_total.load(Ordering::Relaxed), 1);

    // Without the MD5 key the kernel drops the peer's SYNs: connecting never succeeds.
    let no_key = Session::spawn(active_from("127.0.0.11", port, None));
    assert!(
        !no_key
            .wait_for(State::OpenSent, Duration::from_secs(1))
            .await
    );
    no_key.shutdown().await;

    // Once its session is gone, the peer's address is unknown again.
    b2.shutdown().await;
    a2.shutdown().await;
    assert!(closed_at_once("127.0.0.12", port).await, "stopped session");
    a1.shutdown().await;
    b1.shutdown().await;
    // With the last reference gone the accept loop ends and the port closes.
    drop(listener);
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
        assert!(Instant::now() < deadline, "listener still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A peer that restarts without closing its old connection (the old one half-dead: open
/// but silent) is refused while the session holds the old one, and gets back in once the
/// hold timer ends it.
#[tokio::test]
async fn a_restarted_peer_gets_back_in_after_the_hold_time() {
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = listener.local_addr().port();
    // The raw peer is AS 64513 and expects 64512.
    let mut c = passive_on(&listener, "127.0.0.1", None);
    (c.my_asn, c.peer_asn) = (64512, 64513);
    c.hold_time = Duration::from_secs(3);
    let b = Session::spawn(c);
    let (_half_dead, _) = raw_peer(port, None).await;
    assert!(b.wait_for(State::Established, Duration::from_secs(5)).await);
    let started = Instant::now();
    assert!(
        closed_at_once("127.0.0.1", port).await,
        "refused while established"
    );
    let mut rx = b.watch_status();
    tokio::time::timeout(
        Duration::from_secs(6),
        rx.wait_for(|s| s.state == State::Active),
    )
    .await
    .expect("hold timer")
    .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2));
    let (_fresh, _) = raw_peer(port, None).await;
    assert!(b.wait_for(State::Established, Duration::from_secs(5)).await);
    assert_eq!(b.counters().established_total.load(Ordering::Relaxed), 2);
    b.shutdown().await;
}

/// An UPDATE from the raw peer (AS 64513) announcing IPv4 `prefixes` via 192.0.2.9.
fn announce(prefixes: &[&str]) -> Vec<u8> {
    announce_with(prefixes, vec![])
}

fn announce_with(prefixes: &[&str], extra: Vec<wire::PathAttribute>) -> Vec<u8> {
    use crate::bgp::wire::{AS_SEQUENCE, AsSegment, Attr, PathAttribute, Update};
    let mut u = Update {
        attributes: vec![
            PathAttribute::new(Attr::Origin(0)),
            PathAttribute::new(Attr::AsPath(vec![AsSegment {
                kind: AS_SEQUENCE,
                asns: vec![64513],
            }])),
            PathAttribute::new(Attr::NextHop(Ipv4Addr::new(192, 0, 2, 9))),
        ],
        nlri: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
        ..Update::default()
    };
    u.attributes.extend(extra);
    Message::Update(u)
        .to_bytes(WireContext::FOUR_OCTET)
        .unwrap()
}

fn end_of_rib_v4() -> Vec<u8> {
    Message::Update(wire::Update::end_of_rib(wire::AFI_IPV4, wire::SAFI_UNICAST))
        .to_bytes(WireContext::FOUR_OCTET)
        .unwrap()
}

/// Waits until the received table satisfies `f`, up to `timeout`.
async fn wait_received(
    s: &SessionHandle,
    timeout: Duration,
    f: impl Fn(&BTreeMap<IpNet, ReceivedRoute>) -> bool,
) -> bool {
    let mut rx = s.watch_received();
    tokio::time::timeout(timeout, async {
        loop {
            rx.borrow_and_update();
            if f(&s.received()) {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    })
    .await
    .is_ok()
}

fn stale_map(s: &SessionHandle) -> Vec<(String, bool)> {
    s.received()
        .iter()
        .map(|(p, r)| (p.to_string(), r.stale))
        .collect()
}

/// Graceful restart, helper side: a GR peer that drops the connection keeps its routes,
/// stale; back up, what it re-announces is fresh and its End-of-RIB sweeps the rest.
#[tokio::test]
async fn graceful_restart_helper_keeps_stale_routes_until_end_of_rib() {
    let port = free_loopback_port();
    let mut c = passive_on_loopback(port);
    c.enable_graceful_restart = true;
    let s = Session::spawn(c);
    let (mut peer, _) = raw_peer(port, Some(120)).await;
    peer.write_all(&announce(&["203.0.113.0/24", "198.51.100.0/24"]))
        .await
        .unwrap();
    assert!(wait_received(&s, Duration::from_secs(5), |r| r.len() == 2).await);
    drop(peer);
    assert!(
        wait_received(&s, Duration::from_secs(5), |r| r.values().all(|r| r.stale)).await,
        "{:?}",
        stale_map(&s)
    );
    assert_eq!(s.received().len(), 2);
    assert_eq!(s.counters().prefixes_received.load(Ordering::Relaxed), 2);

    let (mut peer, _) = raw_peer(port, Some(120)).await;
    assert!(s.wait_for(State::Established, Duration::from_secs(5)).await);
    peer.write_all(&announce(&["203.0.113.0/24"]))
        .await
        .unwrap();
    assert!(wait_received(&s, Duration::from_secs(5), |r| r.values().any(|r| !r.stale)).await);
    assert_eq!(s.received().len(), 2, "the other one still stale");
    assert!(s.status().end_of_rib_received.is_empty());
    peer.write_all(&end_of_rib_v4()).await.unwrap();
    assert!(wait_received(&s, Duration::from_secs(5), |r| r.len() == 1).await);
    let mut rx = s.watch_status();
    tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|st| st.end_of_rib_received == [crate::bgp::fsm::IPV4_UNICAST]),
    )
    .await
    .expect("End-of-RIB in the status")
    .unwrap();
    assert_eq!(stale_map(&s), [("203.0.113.0/24".to_string(), false)]);
    s.shutdown().await;
}

/// The restart time passing before the peer is back removes the stale routes; a new session
/// without graceful restart removes them at once; so does a session loss without it.
#[tokio::test]
async fn stale_routes_go_after_the_restart_time_or_without_graceful_restart() {
    let port = free_loopback_port();
    let mut c = passive_on_loopback(port);
    c.enable_graceful_restart = true;
    let s = Session::spawn(c);

    // Restart time 1 s, and the peer does not come back.
    let (mut peer, _) = raw_peer(port, Some(1)).await;
    peer.write_all(&announce(&["203.0.113.0/24"]))
        .await
        .unwrap();
    assert!(wait_received(&s, Duration::from_secs(5), |r| r.len() == 1).await);
    drop(peer);
    assert!(
        wait_received(&s, Duration::from_secs(5), |r| r.values().all(|r| r.stale)
            && !r.is_empty())
        .await
    );
    let t = Instant::now();
    assert!(wait_received(&s, Duration::from_secs(5), |r| r.is_empty()).await);
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );

    // Back with graceful restart, then back without it: swept as the session comes up.
    let (mut peer, _) = raw_peer(port, Some(120)).await;
    peer.write_all(&announce(&["203.0.113.0/24"]))
        .await
        .unwrap();
    assert!(wait_received(&s, Duration::from_secs(5), |r| r.len() == 1).await);
    drop(peer);
    assert!(
        wait_received(&s, Duration::from_secs(5), |r| r.values().all(|r| r.stale)
            && !r.is_empty())
        .await
    );
    let (mut peer, _) = raw_peer(port, None).await;
    assert!(wait_received(&s, Duration::from_secs(5), |r| r.is_empty()).await);

    // Without graceful restart the routes go with the session.
    peer.write_all(&announce(&["203.0.113.0/24"]))
        .await
        .unwrap();
    assert!(wait_received(&s, Duration::from_secs(5), |r| r.len() == 1).await);
    drop(peer);
    assert!(wait_received(&s, Duration::from_secs(5), |r| r.is_empty()).await);
    s.shutdown().await;
}

/// ORIGINATOR_ID and CLUSTER_LIST from an eBGP peer are discarded (RFC 7606 §7.9/§7.10);
/// the route stays.
#[tokio::test]
async fn reflection_attributes_from_an_ebgp_peer_are_discarded() {
    use crate::bgp::wire::{Attr, PathAttribute};
    let port = free_loopback_port();
    let s = Session::spawn(passive_on_loopback(port));
    let (mut peer, _) = raw_peer(port, None).await;
    let id = Ipv4Addr::new(192, 0, 2, 7);
    peer.write_all(&announce_with(
        &["203.0.113.0/24"],
        vec![
            PathAttribute::new(Attr::OriginatorId(id)),
            PathAttribute::new(Attr::ClusterList(vec![id])),
        ],
    ))
    .await
    .unwrap();
    assert!(wait_received(&s, Duration::from_secs(5), |r| r.len() == 1).await);
    let r = s.received().into_values().next().unwrap();
    assert_eq!((r.originator_id, r.cluster_list.len()), (None, 0));
    s.shutdown().await;
}

/// On a shared listener, a graceful-restart peer that connects again while its old
/// connection still looks established has restarted: the new connection takes over and the
/// routes stay, stale, until the new session refreshes them.
#[tokio::test]
async fn a_graceful_restart_peer_reconnecting_replaces_its_old_connection() {
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = listener.local_addr().port();
    let mut c = passive_on(&listener, "127.0.0.1", None);
    (c.my_asn, c.peer_asn) = (64512, 64513);
    c.enable_graceful_restart = true;
    let s = Session::spawn(c);
    let (mut old, _) = raw_peer(port, Some(120)).await;
    old.write_all(&announce(&["203.0.113.0/24"])).await.unwrap();
    assert!(wait_received(&s, Duration::from_secs(5), |r| r.len() == 1).await);
    let (mut new, _) = raw_peer(port, Some(120)).await;
    assert!(s.wait_for(State::Established, Duration::from_secs(5)).await);
    assert_eq!(s.counters().established_total.load(Ordering::Relaxed), 2);
    assert_eq!(stale_map(&s), [("203.0.113.0/24".to_string(), true)]);
    new.write_all(&announce(&["203.0.113.0/24"])).await.unwrap();
    new.write_all(&end_of_rib_v4()).await.unwrap();
    assert!(wait_received(&s, Duration::from_secs(5), |r| r.values().all(|r| !r.stale)).await);
    assert_eq!(s.received().len(), 1);
    // The old connection was closed by us.
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match old.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "old connection still open");
    s.shutdown().await;
}
