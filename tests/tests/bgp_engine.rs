//! The BGP engine of `metalnet` against real routers (BIRD, FRR, GoBGP) in the lab:
//! eBGP and iBGP, IPv4 and IPv6 (MP-BGP), communities, large communities, LOCAL_PREF,
//! withdrawal, router restart, graceful restart, TCP MD5, routes received from the router.
//!
//! Each test builds a lab with a speaker host (192.0.2.1, 2001:db8::1) wired to a router host
//! (192.0.2.2, 2001:db8::2) and runs our session on a thread that entered the speaker's
//! namespace. Needs root and the daemons; tests skip (pass with a note) when either is missing.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use metalnet::bgp::fsm::State;
use metalnet::bgp::{Listener, Password, PeerConfig, RouteAttrs, Session, SessionHandle};
use metalnet_lab::lab::{
    BgpNeighbor, BgpRouter, Bird, BirdConfig, Community, Frr, FrrConfig, Gobgp, GobgpConfig, Host,
    Lab, LargeCommunity, Route, StaticRoute, can_run,
};

const SPEAKER_V4: &str = "192.0.2.1";
const ROUTER_V4: &str = "192.0.2.2";
const SPEAKER_V6: &str = "2001:db8::1";
const ROUTER_V6: &str = "2001:db8::2";
const SPEAKER_AS: u32 = 64512;
const ROUTER_AS: u32 = 64513;
/// 64512:1 as a 32-bit community.
const COMMUNITY: u32 = (64512 << 16) | 1;
const LARGE: metalnet::bgp::LargeCommunity = metalnet::bgp::LargeCommunity {
    global: 64512,
    local1: 1,
    local2: 2,
};
const WAIT: Duration = Duration::from_secs(30);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

/// A lab with the speaker and the router wired together.
struct Site {
    _lab: Lab,
    speaker: Host,
    router: Host,
}

fn site(test: &str) -> Site {
    let lab = Lab::new(test).expect("lab");
    let speaker = lab.host("spk").expect("speaker host");
    let router = lab.host("rtr").expect("router host");
    lab.wire(&speaker, "eth0", &router, "eth0").expect("wire");
    for (h, v4, v6) in [
        (&speaker, SPEAKER_V4, SPEAKER_V6),
        (&router, ROUTER_V4, ROUTER_V6),
    ] {
        h.add_addr("eth0", &format!("{v4}/24")).expect("v4 address");
        h.add_addr("eth0", &format!("{v6}/64")).expect("v6 address");
    }
    Site {
        _lab: lab,
        speaker,
        router,
    }
}

type SharedRouter = Arc<dyn BgpRouter + Send + Sync>;

/// The lab's waits block; run them off the session's runtime thread.
async fn wait_route(
    router: &SharedRouter,
    prefix: &str,
    pred: impl Fn(&Route) -> bool + Send + 'static,
) -> Route {
    let (r, p) = (router.clone(), prefix.to_string());
    tokio::task::spawn_blocking(move || r.wait_route(&p, &pred, WAIT))
        .await
        .expect("blocking task")
        .unwrap_or_else(|e| panic!("{prefix}: {e}"))
}

async fn wait_no_route(router: &SharedRouter, prefix: &str) {
    let (r, p) = (router.clone(), prefix.to_string());
    tokio::task::spawn_blocking(move || r.wait_no_route(&p, WAIT))
        .await
        .expect("blocking task")
        .unwrap_or_else(|e| panic!("{prefix}: {e}"));
}

async fn wait_async(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How the router is set up towards us: one neighbor per family, passive (we connect).
fn neighbors(asn: u32, password: Option<&str>) -> Vec<BgpNeighbor> {
    [
        (SPEAKER_V4, ROUTER_V4, true),
        (SPEAKER_V6, ROUTER_V6, false),
    ]
    .into_iter()
    .map(|(nb, local, v4)| {
        let mut n = BgpNeighbor::new(ip(nb), asn)
            .named(if v4 { "spk4" } else { "spk6" })
            .passive();
        n.local_address = Some(ip(local));
        n.password = password.map(str::to_string);
        n.hold_time = Some(9);
        n.ipv4 = v4;
        n.ipv6 = !v4;
        n
    })
    .collect()
}

/// The router's own routes, for the received() checks.
fn router_routes() -> Vec<StaticRoute> {
    let mut v4 = StaticRoute::new("198.51.100.0/24".parse().expect("prefix"));
    v4.via = Some(ip(ROUTER_V4));
    v4.communities = vec![Community::new(64513, 7)];
    v4.large_communities = vec![LargeCommunity::new(64513, 1, 2)];
    let mut v6 = StaticRoute::new("2001:db8:99::/48".parse().expect("prefix"));
    v6.via = Some(ip(ROUTER_V6));
    vec![v4, v6]
}

fn bird(site: &Site, asn: u32, password: Option<&str>) -> Arc<Bird> {
    let mut c = BirdConfig::new(ROUTER_V4.parse().expect("id"), asn);
    c.neighbors = neighbors(SPEAKER_AS, password);
    c.kernel_export = true;
    c.static_routes = router_routes();
    // iBGP next hops resolve recursively through the connected networks.
    c.extra = "protocol direct { ipv4; ipv6; }".into();
    Arc::new(Bird::start(&site.router, c).expect("bird"))
}

fn frr(site: &Site, asn: u32, password: Option<&str>, graceful_restart: bool) -> Arc<Frr> {
    let mut c = FrrConfig::new(ROUTER_V4.parse().expect("id"), asn);
    c.neighbors = neighbors(SPEAKER_AS, password);
    c.networks = router_routes();
    if graceful_restart {
        c.extra_bgp = " bgp graceful-restart\n".into();
    }
    Arc::new(Frr::start(&site.router, c).expect("frr"))
}

fn gobgp(site: &Site, asn: u32, password: Option<&str>) -> Arc<Gobgp> {
    let mut c = GobgpConfig::new(ROUTER_V4.parse().expect("id"), asn);
    c.neighbors = neighbors(SPEAKER_AS, password);
    let g = Gobgp::start(&site.router, c).expect("gobgp");
    for r in router_routes() {
        g.announce(&r).expect("announce");
    }
    Arc::new(g)
}

// --- scenarios --------------------------------------------------------------------------------

fn peer_config(peer: &str, peer_as: u32) -> PeerConfig {
    let mut c = PeerConfig::new(SPEAKER_AS, peer_as, ip(peer));
    c.router_id = Some(Ipv4Addr::new(192, 0, 2, 1));
    c.retry_initial = Duration::from_millis(300);
    c.retry_max = Duration::from_secs(2);
    c.connect_time = Duration::from_secs(3);
    c
}

fn routes(entries: &[(&str, RouteAttrs)]) -> BTreeMap<IpNet, RouteAttrs> {
    entries
        .iter()
        .map(|(p, a)| (p.parse().expect("prefix"), a.clone()))
        .collect()
}

fn attrs(local_pref: Option<u32>) -> RouteAttrs {
    RouteAttrs {
        local_pref,
        communities: vec![COMMUNITY],
        large_communities: vec![LARGE],
        ..RouteAttrs::default()
    }
}

async fn established(h: &SessionHandle, who: &str) {
    assert!(
        h.wait_for(State::Established, WAIT).await,
        "{who}: session not established: {:?}",
        h.status()
    );
}

/// Our route as the router must see it: our next hop and our communities.
fn ours(next_hop: &'static str) -> impl Fn(&Route) -> bool + Send + 'static {
    move |r: &Route| {
        r.next_hops.contains(&ip(next_hop))
            && r.communities.contains(&Community::new(64512, 1))
            && r.large_communities
                .contains(&LargeCommunity::new(64512, 1, 2))
    }
}

/// eBGP over IPv4 and IPv6 (MP-BGP): announce, check attributes, receive, withdraw.
async fn ebgp_v4_v6(router: SharedRouter, password: Option<&'static str>) {
    // Bound to our address explicitly on IPv4, left to the kernel on IPv6.
    let mut c4 = peer_config(ROUTER_V4, ROUTER_AS);
    c4.source_address = Some(ip(SPEAKER_V4));
    let mut c6 = peer_config(ROUTER_V6, ROUTER_AS);
    if let Some(p) = password {
        c4.password = Some(Password::new(p));
        c6.password = Some(Password::new(p));
    }
    let s4 = Session::spawn(c4);
    let s6 = Session::spawn(c6);
    established(&s4, "v4").await;
    established(&s6, "v6").await;
    s4.set_routes(routes(&[("203.0.113.5/32", attrs(None))]));
    s6.set_routes(routes(&[("2001:db8:5::/64", attrs(None))]));

    let r = wait_route(&router, "203.0.113.5/32", ours(SPEAKER_V4)).await;
    assert_eq!(r.as_path, vec![SPEAKER_AS]);
    wait_route(&router, "2001:db8:5::/64", ours(SPEAKER_V6)).await;

    // The router's own routes reach us, with their attributes.
    for (s, prefix, nh) in [
        (&s4, "198.51.100.0/24", ROUTER_V4),
        (&s6, "2001:db8:99::/48", ROUTER_V6),
    ] {
        let prefix: IpNet = prefix.parse().expect("prefix");
        wait_async(&format!("the router's route {prefix}"), WAIT, || {
            s.received().contains_key(&prefix)
        })
        .await;
        let got = s.received()[&prefix].clone();
        assert_eq!(got.next_hop, ip(nh), "{prefix}");
        assert_eq!(got.as_path.first(), Some(&ROUTER_AS), "{prefix}");
    }
    let got = s4.received()[&"198.51.100.0/24".parse::<IpNet>().expect("prefix")].clone();
    assert!(got.communities.contains(&((64513 << 16) | 7)), "{got:?}");
    assert!(
        got.large_communities
            .iter()
            .any(|l| (l.global, l.local1, l.local2) == (64513, 1, 2)),
        "{got:?}"
    );

    s4.set_routes(BTreeMap::new());
    s6.set_routes(BTreeMap::new());
    wait_no_route(&router, "203.0.113.5/32").await;
    wait_no_route(&router, "2001:db8:5::/64").await;
    assert!(s4.counters().updates_sent.load(Ordering::Relaxed) >= 2);
    assert_eq!(s4.counters().prefixes_announced.load(Ordering::Relaxed), 0);
    s4.shutdown().await;
    s6.shutdown().await;
}

/// iBGP: LOCAL_PREF reaches the router, AS_PATH is empty; optionally graceful restart.
async fn ibgp(
    router: SharedRouter,
    password: Option<&'static str>,
    graceful_restart: bool,
) -> SessionHandle {
    let mut c = peer_config(ROUTER_V4, SPEAKER_AS);
    c.password = password.map(Password::new);
    c.enable_graceful_restart = graceful_restart;
    let s = Session::spawn(c);
    established(&s, "ibgp").await;
    let neg = s.status().negotiated.expect("negotiated");
    assert!(neg.ibgp);
    assert_eq!(neg.graceful_restart, graceful_restart);
    s.set_routes(routes(&[("203.0.113.6/32", attrs(Some(250)))]));
    let r = wait_route(&router, "203.0.113.6/32", |r| {
        r.local_pref == Some(250) && r.next_hops.contains(&ip(SPEAKER_V4))
    })
    .await;
    assert!(r.as_path.is_empty(), "{r:?}");
    s
}

#[test]
fn bird_ebgp_ipv4_ipv6() {
    if !can_run(&["bird", "birdc"]) {
        return;
    }
    let site = site("bgp_bird_ebgp");
    let b = bird(&site, ROUTER_AS, None);
    let router: SharedRouter = b.clone();
    site.speaker.block_on(move || ebgp_v4_v6(router, None));
}

#[test]
fn bird_ibgp_restart_and_graceful_restart() {
    if !can_run(&["bird", "birdc"]) {
        return;
    }
    let site = site("bgp_bird_ibgp");
    let b = bird(&site, SPEAKER_AS, None);
    let router: SharedRouter = b.clone();
    let rtr = site.router.clone();
    site.speaker.block_on(move || async move {
        // BIRD is graceful-restart aware by default, so GR is negotiated.
        let s = ibgp(router.clone(), None, true).await;
        // The router's kernel table has the route via us.
        let kernel = |rtr: &Host| {
            rtr.exec(&["ip", "route", "show", "203.0.113.6/32"])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let r2 = rtr.clone();
        let in_kernel = move || kernel(&r2).contains("via 192.0.2.1");
        let check = in_kernel.clone();
        wait_async("kernel route in the router", WAIT, check).await;

        // The router restarts: we reconnect and announce again.
        let b2 = b.clone();
        tokio::task::spawn_blocking(move || b2.restart())
            .await
            .expect("blocking")
            .expect("bird restart");
        wait_async("session to drop", WAIT, || s.state() != State::Established).await;
        established(&s, "after router restart").await;
        wait_route(&router, "203.0.113.6/32", |r| r.local_pref == Some(250)).await;
        assert!(s.counters().established_total.load(Ordering::Relaxed) >= 2);

        // Graceful shutdown: no Cease, BIRD keeps the route (stale) for the restart time.
        s.shutdown().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            in_kernel(),
            "BIRD dropped the route despite graceful restart"
        );
    });
}

#[test]
fn bird_md5_right_and_wrong_password() {
    if !can_run(&["bird", "birdc"]) {
        return;
    }
    let site = site("bgp_bird_md5");
    let b = bird(&site, ROUTER_AS, Some("s3cret"));
    let router: SharedRouter = b.clone();
    site.speaker.block_on(move || async move {
        let mut wrong = peer_config(ROUTER_V4, ROUTER_AS);
        wrong.password = Some(Password::new("not-it"));
        let w = Session::spawn(wrong);
        assert!(
            !w.wait_for(State::Established, Duration::from_secs(6)).await,
            "wrong password established"
        );
        let status = format!("{:?}", w.status());
        assert!(w.status().last_error.is_some(), "{status}");
        assert!(!status.contains("not-it"));
        w.shutdown().await;

        let mut right = peer_config(ROUTER_V4, ROUTER_AS);
        right.password = Some(Password::new("s3cret"));
        let s = Session::spawn(right);
        established(&s, "md5").await;
        s.set_routes(routes(&[("203.0.113.8/32", RouteAttrs::default())]));
        wait_route(&router, "203.0.113.8/32", |_| true).await;
        s.shutdown().await;
    });
}

#[test]
fn frr_ebgp_ipv4_ipv6() {
    if !can_run(&["/usr/lib/frr/bgpd", "vtysh"]) {
        return;
    }
    let site = site("bgp_frr_ebgp");
    let router: SharedRouter = frr(&site, ROUTER_AS, None, false);
    site.speaker.block_on(move || ebgp_v4_v6(router, None));
}

#[test]
fn frr_ibgp_md5_graceful_restart() {
    if !can_run(&["/usr/lib/frr/bgpd", "vtysh"]) {
        return;
    }
    let site = site("bgp_frr_ibgp");
    let router: SharedRouter = frr(&site, SPEAKER_AS, Some("s3cret"), true);
    site.speaker.block_on(move || async move {
        let s = ibgp(router, Some("s3cret"), true).await;
        s.shutdown().await;
    });
}

#[test]
fn gobgp_ebgp_ipv4_ipv6_md5() {
    if !can_run(&["gobgpd", "gobgp"]) {
        return;
    }
    let site = site("bgp_gobgp_ebgp");
    let router: SharedRouter = gobgp(&site, ROUTER_AS, Some("s3cret"));
    site.speaker
        .block_on(move || ebgp_v4_v6(router, Some("s3cret")));
}

#[test]
fn gobgp_ibgp() {
    if !can_run(&["gobgpd", "gobgp"]) {
        return;
    }
    let site = site("bgp_gobgp_ibgp");
    let router: SharedRouter = gobgp(&site, SPEAKER_AS, None);
    site.speaker.block_on(move || async move {
        let s = ibgp(router, None, false).await;
        s.shutdown().await;
    });
}

// --- shared listener, graceful restart helper, route reflection ------------------------------

/// The port our shared listener uses (BIRD connects to it).
const LISTEN_PORT: u16 = 1790;

/// Connects from `source` to our listener and tells whether the connection is closed on us
/// without a byte.
async fn closed_at_once(source: &str, to: &str) -> bool {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::new(ip(source), 0))
        .expect("bind");
    let Ok(mut stream) = socket
        .connect(std::net::SocketAddr::new(ip(to), LISTEN_PORT))
        .await
    else {
        return false;
    };
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(
            Duration::from_secs(3),
            tokio::io::AsyncReadExt::read(&mut stream, &mut buf)
        )
        .await,
        Ok(Ok(0) | Err(_))
    )
}

/// BIRD connects to passive sessions of ours that share one dual-stack listener: two IPv4
/// peers (one with TCP MD5) and an IPv6 one, each matched by its source address; routes go
/// both ways on each; a connection from an address with no session is closed at once.
#[test]
fn bird_connects_through_a_shared_listener() {
    if !can_run(&["bird", "birdc"]) {
        return;
    }
    let site = site("bgp_bird_listener");
    site.router
        .add_addr("eth0", "192.0.2.3/24")
        .expect("second router address");
    // BIRD runs one session at a time per neighbor address and port: the second peer
    // connects to another address of ours (the listener takes any).
    site.speaker
        .add_addr("eth0", "192.0.2.5/24")
        .expect("second speaker address");
    let mut c = BirdConfig::new(ROUTER_V4.parse().expect("id"), ROUTER_AS);
    for (name, local, peer, password, v4) in [
        ("lst_a", ROUTER_V4, SPEAKER_V4, Some("s3cret"), true),
        ("lst_b", "192.0.2.3", "192.0.2.5", None, true),
        ("lst_6", ROUTER_V6, SPEAKER_V6, None, false),
    ] {
        let mut n = BgpNeighbor::new(ip(peer), SPEAKER_AS).named(name);
        n.local_address = Some(ip(local));
        n.port = Some(LISTEN_PORT);
        n.password = password.map(str::to_string);
        n.hold_time = Some(9);
        n.ipv4 = v4;
        n.ipv6 = !v4;
        c.neighbors.push(n);
    }
    c.static_routes = router_routes();
    let b = Arc::new(Bird::start(&site.router, c).expect("bird"));
    let router: SharedRouter = b.clone();
    site.speaker.block_on(move || async move {
        let listener =
            Listener::bind(format!("[::]:{LISTEN_PORT}").parse().expect("addr")).expect("listen");
        let session = |peer: &str, password: Option<&str>| {
            let mut c = peer_config(peer, ROUTER_AS);
            c.inbound = Some(listener.clone());
            c.password = password.map(Password::new);
            Session::spawn(c)
        };
        let a = session(ROUTER_V4, Some("s3cret"));
        let bb = session("192.0.2.3", None);
        let six = session(ROUTER_V6, None);
        established(&a, "lst_a (MD5)").await;
        established(&bb, "lst_b").await;
        established(&six, "lst_6").await;
        assert_eq!(
            a.status().negotiated.expect("negotiated").local_addr,
            ip(SPEAKER_V4)
        );

        a.set_routes(routes(&[("203.0.113.10/32", RouteAttrs::default())]));
        bb.set_routes(routes(&[("203.0.113.11/32", RouteAttrs::default())]));
        six.set_routes(routes(&[("2001:db8:11::/64", RouteAttrs::default())]));
        let r = wait_route(&router, "203.0.113.10/32", |r| r.from_protocol == "lst_a").await;
        assert_eq!(r.as_path, vec![SPEAKER_AS]);
        wait_route(&router, "203.0.113.11/32", |r| r.from_protocol == "lst_b").await;
        wait_route(&router, "2001:db8:11::/64", |r| r.from_protocol == "lst_6").await;
        for (s, prefix) in [
            (&a, "198.51.100.0/24"),
            (&bb, "198.51.100.0/24"),
            (&six, "2001:db8:99::/48"),
        ] {
            let prefix: IpNet = prefix.parse().expect("prefix");
            wait_async(&format!("{prefix} from BIRD"), WAIT, || {
                s.received().contains_key(&prefix)
            })
            .await;
        }
        assert!(
            closed_at_once(SPEAKER_V4, SPEAKER_V4).await,
            "a connection from an address with no session stayed open"
        );
        for s in [a, bb, six] {
            assert_eq!(s.counters().established_total.load(Ordering::Relaxed), 1);
            s.shutdown().await;
        }
    });
}

fn gr_bird_config(static_routes: Vec<StaticRoute>, graceful_restart: bool) -> BirdConfig {
    let mut c = BirdConfig::new(ROUTER_V4.parse().expect("id"), ROUTER_AS);
    c.neighbors = neighbors(SPEAKER_AS, None);
    c.neighbors.truncate(1);
    if graceful_restart {
        c.neighbors[0].graceful_restart = Some(60);
    }
    c.static_routes = static_routes;
    // Recovery (bird -R) holds exports back until convergence or this many seconds.
    c.extra = "graceful restart wait 5;".into();
    c
}

fn v4_route(prefix: &str) -> StaticRoute {
    let mut r = StaticRoute::new(prefix.parse().expect("prefix"));
    r.via = Some(ip(ROUTER_V4));
    r
}

/// Graceful restart, helper side, against BIRD: BIRD with `graceful restart on` is killed;
/// its routes stay with us, stale; it comes back in recovery mode (R and F bits) without
/// one of them: the other is refreshed, the one it no longer has goes at its End-of-RIB.
/// BIRD without graceful restart killed the same way: its routes go at once.
#[test]
fn bird_graceful_restart_helper() {
    if !can_run(&["bird", "birdc"]) {
        return;
    }
    let site = site("bgp_bird_gr_helper");
    let both = vec![v4_route("198.51.100.0/24"), v4_route("203.0.113.128/25")];
    let b = Arc::new(Bird::start(&site.router, gr_bird_config(both.clone(), true)).expect("bird"));
    site.speaker.block_on(move || async move {
        let mut c = peer_config(ROUTER_V4, ROUTER_AS);
        c.source_address = Some(ip(SPEAKER_V4));
        c.enable_graceful_restart = true;
        let s = Session::spawn(c);
        established(&s, "gr").await;
        let p1: IpNet = "198.51.100.0/24".parse().expect("prefix");
        let p2: IpNet = "203.0.113.128/25".parse().expect("prefix");
        wait_async("both BIRD routes", WAIT, || s.received().len() == 2).await;
        assert!(s.status().negotiated.expect("negotiated").graceful_restart);

        let b2 = b.clone();
        tokio::task::spawn_blocking(move || b2.crash())
            .await
            .expect("blocking");
        wait_async("session to drop", WAIT, || s.state() != State::Established).await;
        // Stale, not gone, and still there a while later.
        wait_async("routes marked stale", Duration::from_secs(5), || {
            let r = s.received();
            r.len() == 2 && r.values().all(|r| r.stale)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(s.received().len(), 2, "stale routes dropped early");

        let b2 = b.clone();
        tokio::task::spawn_blocking(move || {
            b2.relaunch(
                gr_bird_config(vec![v4_route("198.51.100.0/24")], true),
                true,
            )
        })
        .await
        .expect("blocking")
        .expect("bird relaunch");
        established(&s, "gr after restart").await;
        // The F bit was set: nothing is swept as the session comes up.
        assert!(s.received().contains_key(&p1), "{:?}", s.received());
        wait_async("the refreshed table", WAIT, || {
            let r = s.received();
            r.len() == 1 && r.get(&p1).is_some_and(|r| !r.stale)
        })
        .await;
        assert!(!s.received().contains_key(&p2));
        s.shutdown().await;

        // Without graceful restart on BIRD's side: gone with the session.
        let b2 = b.clone();
        tokio::task::spawn_blocking(move || b2.relaunch(gr_bird_config(both, false), false))
            .await
            .expect("blocking")
            .expect("bird relaunch");
        let mut c = peer_config(ROUTER_V4, ROUTER_AS);
        c.source_address = Some(ip(SPEAKER_V4));
        c.enable_graceful_restart = true;
        let s = Session::spawn(c);
        established(&s, "no gr").await;
        wait_async("both BIRD routes", WAIT, || s.received().len() == 2).await;
        let b2 = b.clone();
        tokio::task::spawn_blocking(move || b2.crash())
            .await
            .expect("blocking");
        let t = Instant::now();
        wait_async("routes removed", Duration::from_secs(10), || {
            s.received().is_empty()
        })
        .await;
        eprintln!("routes removed {:?} after the crash", t.elapsed());
        s.shutdown().await;
    });
}

/// Route reflection against BIRD (`rr client`): the ORIGINATOR_ID and CLUSTER_LIST we send
/// reach BIRD as sent, and what BIRD reflects to a second session of ours carries BIRD's
/// cluster ID in front, the originator kept; a route without them gets our first session's
/// router ID as originator.
#[test]
fn bird_route_reflection_attributes() {
    if !can_run(&["bird", "birdc"]) {
        return;
    }
    const SECOND: &str = "192.0.2.4";
    let site = site("bgp_bird_rr");
    site.speaker
        .add_addr("eth0", &format!("{SECOND}/24"))
        .expect("second speaker address");
    let mut c = BirdConfig::new(ROUTER_V4.parse().expect("id"), SPEAKER_AS);
    let mut extra = String::from("protocol direct { ipv4; }\n");
    for (name, peer) in [("rr_a", SPEAKER_V4), ("rr_b", SECOND)] {
        extra.push_str(&format!(
            "protocol bgp {name} {{ local {ROUTER_V4} as {SPEAKER_AS}; neighbor {peer} as {SPEAKER_AS}; \
             passive on; rr client; hold time 9; keepalive time 3; error wait time 1, 5; \
             ipv4 {{ import all; export all; }}; }}\n"
        ));
    }
    c.extra = extra;
    let b = Arc::new(Bird::start(&site.router, c).expect("bird"));
    let router: SharedRouter = b.clone();
    site.speaker.block_on(move || async move {
        let mut ca = peer_config(ROUTER_V4, SPEAKER_AS);
        ca.source_address = Some(ip(SPEAKER_V4));
        let mut cb = peer_config(ROUTER_V4, SPEAKER_AS);
        cb.source_address = Some(ip(SECOND));
        cb.router_id = Some(SECOND.parse().expect("id"));
        let a = Session::spawn(ca);
        let bb = Session::spawn(cb);
        established(&a, "rr_a").await;
        established(&bb, "rr_b").await;
        let originator: Ipv4Addr = "192.0.2.7".parse().expect("id");
        let cluster: Ipv4Addr = "192.0.2.9".parse().expect("id");
        a.set_routes(routes(&[
            (
                "203.0.113.20/32",
                RouteAttrs {
                    as_path: vec![64600],
                    originator_id: Some(originator),
                    cluster_list: vec![cluster],
                    ..RouteAttrs::default()
                },
            ),
            ("203.0.113.21/32", RouteAttrs::default()),
        ]));
        let r = wait_route(&router, "203.0.113.20/32", |r| r.from_protocol == "rr_a").await;
        assert_eq!(r.as_path, vec![64600]);
        let b2 = b.clone();
        let shown = tokio::task::spawn_blocking(move || {
            b2.birdc(&["show", "route", "for", "203.0.113.20/32", "all"])
        })
        .await
        .expect("blocking")
        .expect("birdc");
        assert!(shown.contains("BGP.originator_id: 192.0.2.7"), "{shown}");
        assert!(shown.contains("BGP.cluster_list: 192.0.2.9"), "{shown}");

        let p20: IpNet = "203.0.113.20/32".parse().expect("prefix");
        let p21: IpNet = "203.0.113.21/32".parse().expect("prefix");
        wait_async("reflected routes", WAIT, || {
            let r = bb.received();
            r.contains_key(&p20) && r.contains_key(&p21)
        })
        .await;
        let got = bb.received();
        let r20 = &got[&p20];
        assert_eq!(r20.originator_id, Some(originator), "{r20:?}");
        assert_eq!(r20.cluster_list, vec![ip4(ROUTER_V4), cluster], "{r20:?}");
        assert_eq!(r20.as_path, vec![64600]);
        assert_eq!(r20.next_hop, ip(SPEAKER_V4));
        let r21 = &got[&p21];
        assert_eq!(r21.originator_id, Some(ip4(SPEAKER_V4)), "{r21:?}");
        assert_eq!(r21.cluster_list, vec![ip4(ROUTER_V4)], "{r21:?}");
        assert!(r21.as_path.is_empty());

        // How long a change takes from one session of ours, through BIRD, to the other's
        // received table, woken by watch_received (no polling).
        let p30: IpNet = "203.0.113.30/32".parse().expect("prefix");
        let mut rx = bb.watch_received();
        let mut times = Vec::new();
        for i in 0..20 {
            let add = i % 2 == 0;
            rx.borrow_and_update();
            let t = Instant::now();
            a.update_routes([(p30, add.then(RouteAttrs::default))]);
            tokio::time::timeout(WAIT, async {
                while bb.received().contains_key(&p30) != add {
                    rx.changed().await.expect("session alive");
                }
            })
            .await
            .expect("change reached the other session");
            times.push(t.elapsed());
        }
        times.sort();
        eprintln!(
            "route change through BIRD to our other session: median {:?}, max {:?}",
            times[times.len() / 2],
            times[times.len() - 1]
        );
        assert!(times[times.len() / 2] < Duration::from_secs(1), "{times:?}");
        a.shutdown().await;
        bb.shutdown().await;
    });
}

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().expect("IPv4 literal")
}

// --- fixture capture ---------------------------------------------------------------------------

/// Connects to the router like a speaker would, records every message it sends (OPEN,
/// KEEPALIVE, UPDATEs with its routes, End-of-RIB), then provokes a NOTIFICATION with a bad
/// marker and records that too.
async fn capture(peer: &str, peer_as: u32) -> Vec<Vec<u8>> {
    use metalnet::bgp::fsm::{Fsm, FsmConfig};
    use metalnet::bgp::wire::{Message, WireContext, frame_len};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let peer_ip: IpAddr = peer.parse().unwrap();
    let mut stream = tokio::time::timeout(WAIT, async {
        loop {
            match tokio::net::TcpStream::connect((peer_ip, 179)).await {
                Ok(s) => return s,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .expect("connect");
    let mut config = FsmConfig::new(SPEAKER_AS, peer_as);
    config.router_id = Some(Ipv4Addr::new(192, 0, 2, 1));
    config.graceful_restart = Some(120);
    let open = Fsm::new(config).our_open(stream.local_addr().unwrap().ip());
    let ctx = WireContext::FOUR_OCTET;
    stream
        .write_all(&Message::Open(open).to_bytes(ctx).unwrap())
        .await
        .unwrap();
    stream
        .write_all(&Message::Keepalive.to_bytes(ctx).unwrap())
        .await
        .unwrap();
    let mut frames = Vec::new();
    let mut buf = Vec::new();
    let mut provoked = false;
    let start = Instant::now();
    loop {
        while let Ok(Some(len)) = frame_len(&buf) {
            frames.push(buf.drain(..len).collect::<Vec<u8>>());
        }
        if !provoked && start.elapsed() > Duration::from_secs(4) {
            // A header with a broken marker: the router answers with NOTIFICATION 1/1.
            let mut bad = vec![0u8; 19];
            bad[16..18].copy_from_slice(&19u16.to_be_bytes());
            bad[18] = 4;
            let _ = stream.write_all(&bad).await;
            provoked = true;
        }
        if start.elapsed() > Duration::from_secs(8) {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(500), stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            _ => {}
        }
    }
    while let Ok(Some(len)) = frame_len(&buf) {
        frames.push(buf.drain(..len).collect::<Vec<u8>>());
    }
    frames
}

fn save_fixtures(router: &str, family: &str, frames: &[Vec<u8>]) {
    use metalnet::bgp::wire::{Message, WireContext, to_hex};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/tests/fixtures/bgp");
    std::fs::create_dir_all(&dir).unwrap();
    // Drop this capture's previous files; the message count may differ.
    let stem = format!("{router}_{family}_");
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(&stem) {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let mut seen_keepalive = false;
    for (i, f) in frames.iter().enumerate() {
        let kind = match Message::parse(f, WireContext::FOUR_OCTET) {
            Ok((m, _)) => m.kind().to_ascii_lowercase().replace('-', "_"),
            Err(e) => panic!("{router}: captured message {i} does not parse: {e}"),
        };
        // One KEEPALIVE per capture is enough.
        if kind == "keepalive" && std::mem::replace(&mut seen_keepalive, true) {
            continue;
        }
        std::fs::write(
            dir.join(format!("{router}_{family}_{i:02}_{kind}.hex")),
            to_hex(f) + "\n",
        )
        .unwrap();
    }
}

/// Regenerates `config/tests/fixtures/bgp/` from the real routers:
/// `cargo test -p metalnet-lab --test bgp_engine capture_fixtures -- --ignored`.
#[test]
#[ignore]
fn capture_fixtures() {
    if !can_run(&["bird", "birdc", "gobgpd", "/usr/lib/frr/bgpd"]) {
        return;
    }
    for name in ["bird", "frr", "gobgp"] {
        let site = site(&format!("bgp_capture_{name}"));
        let router: SharedRouter = match name {
            "bird" => bird(&site, ROUTER_AS, None),
            "frr" => frr(&site, ROUTER_AS, None, true),
            _ => gobgp(&site, ROUTER_AS, None),
        };
        site.speaker.block_on(move || async move {
            for (family, peer) in [("v4", ROUTER_V4), ("v6", ROUTER_V6)] {
                let frames = capture(peer, ROUTER_AS).await;
                assert!(
                    frames.len() >= 3,
                    "{name} {family}: only {} messages",
                    frames.len()
                );
                save_fixtures(name, family, &frames);
            }
        });
        router.stop();
    }
}

/// Regenerates the route-reflection fixtures (`rr_bird_*`, `rr_frr_*` in
/// `config/tests/fixtures/bgp/`): a session of ours (from 192.0.2.4) announces routes, one
/// with ORIGINATOR_ID and CLUSTER_LIST set, to BIRD (`rr client`) or FRR
/// (`route-reflector-client`) acting as reflector, and a raw client (from 192.0.2.1) records
/// what the reflector sends it:
/// `cargo test -p metalnet-lab --test bgp_engine capture_rr_fixtures -- --ignored`.
#[test]
#[ignore]
fn capture_rr_fixtures() {
    if !can_run(&["bird", "birdc", "/usr/lib/frr/bgpd", "vtysh"]) {
        return;
    }
    const CLIENT: &str = "192.0.2.4";
    for name in ["bird", "frr"] {
        let site = site(&format!("bgp_capture_rr_{name}"));
        site.speaker
            .add_addr("eth0", &format!("{CLIENT}/24"))
            .expect("second speaker address");
        let router: SharedRouter = if name == "bird" {
            let mut c = BirdConfig::new(ROUTER_V4.parse().expect("id"), SPEAKER_AS);
            let mut extra = String::from("protocol direct { ipv4; }\n");
            for (proto, peer) in [("rr_a", CLIENT), ("rr_b", SPEAKER_V4)] {
                extra.push_str(&format!(
                    "protocol bgp {proto} {{ local {ROUTER_V4} as {SPEAKER_AS}; neighbor {peer} as {SPEAKER_AS}; \
                     passive on; rr client; ipv4 {{ import all; export all; }}; }}\n"
                ));
            }
            c.extra = extra;
            Arc::new(Bird::start(&site.router, c).expect("bird"))
        } else {
            let mut c = FrrConfig::new(ROUTER_V4.parse().expect("id"), SPEAKER_AS);
            let mut extra = String::from(" address-family ipv4 unicast\n");
            for peer in [CLIENT, SPEAKER_V4] {
                let mut n = BgpNeighbor::new(ip(peer), SPEAKER_AS).passive();
                n.ipv6 = false;
                c.neighbors.push(n);
                extra.push_str(&format!("  neighbor {peer} route-reflector-client\n"));
            }
            extra.push_str(" exit-address-family\n");
            c.extra_bgp = extra;
            Arc::new(Frr::start(&site.router, c).expect("frr"))
        };
        let r2 = router.clone();
        site.speaker.block_on(move || async move {
            let mut c = peer_config(ROUTER_V4, SPEAKER_AS);
            c.source_address = Some(ip(CLIENT));
            c.router_id = Some(ip4(CLIENT));
            c.families = vec![metalnet::bgp::fsm::IPV4_UNICAST];
            let s = Session::spawn(c);
            established(&s, "rr client").await;
            s.set_routes(routes(&[
                (
                    "203.0.113.20/32",
                    RouteAttrs {
                        as_path: vec![64600],
                        originator_id: Some(ip4("192.0.2.7")),
                        cluster_list: vec![ip4("192.0.2.9")],
                        ..RouteAttrs::default()
                    },
                ),
                ("203.0.113.21/32", RouteAttrs::default()),
            ]));
            wait_route(&r2, "203.0.113.20/32", |_| true).await;
            wait_route(&r2, "203.0.113.21/32", |_| true).await;
            let frames = capture(ROUTER_V4, SPEAKER_AS).await;
            assert!(frames.len() >= 3, "{name}: only {} messages", frames.len());
            save_fixtures(&format!("rr_{name}"), "v4", &frames);
            s.shutdown().await;
        });
        router.stop();
    }
}
