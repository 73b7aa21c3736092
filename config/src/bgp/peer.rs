//! The session parameters of one BGP peer, built from a validated BGPPeer. Pure: the tokio
//! edge in [`super::session`] and the speaker's planner share it without touching sockets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::fsm::{DynamicAs, Family, FsmConfig, IPV4_UNICAST, IPV6_UNICAST};
use crate::validate::ParsedPeer;

/// The longest TCP MD5 key Linux accepts (`TCP_MD5SIG_MAXKEYLEN`); a longer one fails the
/// socket option with EINVAL at every connection attempt.
pub const TCP_MD5_MAX_KEY_LEN: usize = 80;

/// A TCP MD5 password. It never shows in Debug output, logs or status.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(p: impl Into<String>) -> Self {
        Self(p.into())
    }

    /// The key bytes, for the socket option only.
    #[cfg(feature = "io")]
    pub(crate) fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Default TCP connect timeout when the BGPPeer sets no `connectTime`.
const DEFAULT_CONNECT_TIME: Duration = Duration::from_secs(10);

/// One peer, with the parameters of MetalLB's BGPPeer.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub my_asn: u32,
    /// Ignored when `dynamic_asn` is set.
    pub peer_asn: u32,
    /// `dynamicASN`: accept the peer's AS from its OPEN if it is of this kind.
    pub dynamic_asn: Option<DynamicAs>,
    pub peer_address: IpAddr,
    pub peer_port: u16,
    /// Local address to connect from (and the default next hop).
    pub source_address: Option<IpAddr>,
    pub router_id: Option<Ipv4Addr>,
    /// Proposed hold time (0, or at least 3 s; whole seconds).
    pub hold_time: Duration,
    /// Keepalive interval; default a third of the negotiated hold time.
    pub keepalive_time: Option<Duration>,
    /// TCP connect timeout.
    pub connect_time: Duration,
    /// eBGP peer more than one hop away: TTL 255 instead of 1 (iBGP always uses 255).
    pub ebgp_multihop: bool,
    /// eBGP multihop with this TTL instead (kube-router's `--peer-router-multihop-ttl`).
    pub multihop_ttl: Option<u8>,
    pub password: Option<Password>,
    pub enable_graceful_restart: bool,
    /// Graceful restart time announced, seconds.
    pub graceful_restart_time: u16,
    /// We restarted and kept our forwarding state (the node's routes): the OPENs of the first
    /// session carry the Restart State bit, so the peer keeps our routes until our
    /// End-of-RIB. Needs `enable_graceful_restart`.
    pub restarting: bool,
    /// Our cluster ID when we reflect routes (RFC 4456): routes whose CLUSTER_LIST holds it
    /// came back to us and are ignored (as are routes with our router ID as ORIGINATOR_ID).
    pub cluster_id: Option<Ipv4Addr>,
    /// Passive: accept the peer's connection on this address instead of connecting.
    pub listen: Option<SocketAddr>,
    /// Passive on a listener shared with other sessions: the peer's connections (matched by
    /// source address) come from it. Takes precedence over `listen`.
    #[cfg(feature = "io")]
    pub inbound: Option<std::sync::Arc<super::session::Listener>>,
    pub families: Vec<Family>,
    /// Reconnect backoff (MetalLB: 1 s doubling to 2 min).
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl PeerConfig {
    pub fn new(my_asn: u32, peer_asn: u32, peer_address: IpAddr) -> Self {
        Self {
            my_asn,
            peer_asn,
            dynamic_asn: None,
            peer_address,
            peer_port: 179,
            source_address: None,
            router_id: None,
            hold_time: Duration::from_secs(90),
            keepalive_time: None,
            connect_time: DEFAULT_CONNECT_TIME,
            ebgp_multihop: false,
            multihop_ttl: None,
            password: None,
            enable_graceful_restart: false,
            graceful_restart_time: 120,
            restarting: false,
            cluster_id: None,
            listen: None,
            #[cfg(feature = "io")]
            inbound: None,
            families: vec![IPV4_UNICAST, IPV6_UNICAST],
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(120),
        }
    }

    /// The session parameters of a validated BGPPeer. Validation already applied MetalLB's
    /// rules (timers derived from each other, ASN and address checks), so nothing here can
    /// fail; the password comes separately because a Secret may hold it.
    pub fn from_parsed(peer: &ParsedPeer, password: Option<Password>) -> Self {
        let mut c = PeerConfig::new(peer.my_asn, peer.peer_asn.unwrap_or(0), peer.address);
        c.dynamic_asn = peer.dynamic_asn;
        c.peer_port = peer.port;
        c.source_address = peer.source_address;
        c.router_id = peer.router_id;
        c.hold_time = peer.hold_time;
        c.keepalive_time = Some(peer.keepalive_time);
        c.connect_time = peer.connect_time.unwrap_or(DEFAULT_CONNECT_TIME);
        c.ebgp_multihop = peer.ebgp_multi_hop;
        c.enable_graceful_restart = peer.enable_graceful_restart;
        c.password = password;
        if peer.disable_mp && !peer.dual_stack_address_family {
            // One family per session: the peer address's.
            c.families = vec![if peer.address.is_ipv4() {
                IPV4_UNICAST
            } else {
                IPV6_UNICAST
            }];
        }
        c
    }

    pub fn fsm_config(&self) -> FsmConfig {
        let secs = |d: Duration| u16::try_from(d.as_secs()).unwrap_or(u16::MAX);
        FsmConfig {
            local_as: self.my_asn,
            peer_as: self.peer_asn,
            dynamic_as: self.dynamic_asn,
            router_id: self.router_id,
            hold_time: secs(self.hold_time),
            keepalive_time: self.keepalive_time.map(secs),
            passive: self.passive(),
            graceful_restart: self
                .enable_graceful_restart
                .then_some(self.graceful_restart_time),
            restarting: self.restarting,
            families: self.families.clone(),
            retry_initial: self.retry_initial,
            retry_max: self.retry_max,
        }
    }

    /// Whether the session waits for the peer to connect.
    pub fn passive(&self) -> bool {
        #[cfg(feature = "io")]
        if self.inbound.is_some() {
            return true;
        }
        self.listen.is_some()
    }

    pub fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.peer_address, self.peer_port)
    }

    /// Whether the peer is in our AS (for `dynamicASN`, the kind configured).
    pub fn ibgp(&self) -> bool {
        match self.dynamic_asn {
            None => self.my_asn == self.peer_asn,
            Some(kind) => kind == DynamicAs::Internal,
        }
    }

    /// The IP TTL of the session's packets (RFC 5082 style: 1 for a directly connected eBGP
    /// peer, 255 otherwise).
    pub fn ttl(&self) -> u32 {
        if self.ibgp() {
            255
        } else if let Some(ttl) = self.multihop_ttl.filter(|t| *t > 0) {
            ttl.into()
        } else if self.ebgp_multihop {
            255
        } else {
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::fsm::Fsm;
    use crate::model::BGPPeer;
    use crate::testing::{Manifest, bgp_peer};
    use crate::validate::valid_peers;
    use serde_json::{Value, json};

    fn parsed(extra: Value) -> ParsedPeer {
        let peer: BGPPeer = serde_json::from_value(
            bgp_peer("p", "192.0.2.2", 64512, 64513)
                .spec_fields(extra)
                .json(),
        )
        .unwrap();
        let (mut peers, problems) = valid_peers([&peer]);
        assert!(problems.is_empty(), "{problems:#?}");
        peers.remove(0)
    }

    /// The hold time in the OPEN this peer's session sends.
    fn open_hold_time(peer: &ParsedPeer) -> u16 {
        let fsm = Fsm::new(PeerConfig::from_parsed(peer, None).fsm_config());
        fsm.our_open("192.0.2.1".parse().unwrap()).hold_time
    }

    #[test]
    fn the_open_carries_the_validated_hold_time() {
        for (timers, hold) in [
            (json!({}), 90),
            // MetalLB's parseTimers: a missing hold time is 3 × keepalive.
            (json!({"keepaliveTime": "10s"}), 30),
            (json!({"holdTime": "45s"}), 45),
            (json!({"holdTime": "60s", "keepaliveTime": "5s"}), 60),
            (json!({"holdTime": "0s"}), 0),
        ] {
            let p = parsed(timers.clone());
            assert_eq!(p.hold_time, Duration::from_secs(hold.into()), "{timers}");
            assert_eq!(open_hold_time(&p), hold, "{timers}");
        }
    }

    #[test]
    fn peer_config_from_a_validated_bgppeer() {
        let p = parsed(json!({
            "peerPort": 1179, "sourceAddress": "192.0.2.1", "holdTime": "30s",
            "keepaliveTime": "5s", "connectTime": "2s", "ebgpMultiHop": true,
            "enableGracefulRestart": true, "routerID": "192.0.2.1", "disableMP": true
        }));
        let c = PeerConfig::from_parsed(&p, Some(Password::new("pw")));
        assert_eq!(
            (c.peer_port, c.hold_time, c.keepalive_time),
            (1179, Duration::from_secs(30), Some(Duration::from_secs(5)))
        );
        assert_eq!(c.connect_time, Duration::from_secs(2));
        assert!(c.ebgp_multihop && c.enable_graceful_restart);
        assert_eq!(c.password, Some(Password::new("pw")));
        assert_eq!(c.families, vec![IPV4_UNICAST]);
        let f = c.fsm_config();
        assert_eq!(
            (f.hold_time, f.keepalive_time, f.graceful_restart),
            (30, Some(5), Some(120))
        );
        let c = PeerConfig::from_parsed(&parsed(json!({"connectTime": null})), None);
        assert_eq!(c.connect_time, DEFAULT_CONNECT_TIME);
        assert_eq!(c.families, vec![IPV4_UNICAST, IPV6_UNICAST]);
    }

    #[test]
    fn dynamic_asn_from_a_validated_bgppeer() {
        let p = |kind: &str| parsed(json!({"peerASN": 0, "dynamicASN": kind}));
        let c = PeerConfig::from_parsed(&p("external"), None);
        assert_eq!(c.dynamic_asn, Some(DynamicAs::External));
        assert_eq!(c.fsm_config().dynamic_as, Some(DynamicAs::External));
        assert_eq!(c.ttl(), 1);
        let c = PeerConfig::from_parsed(&p("internal"), None);
        assert_eq!(c.dynamic_asn, Some(DynamicAs::Internal));
        assert_eq!(c.ttl(), 255);
    }

    #[test]
    fn password_is_never_printed() {
        let mut c = PeerConfig::new(64512, 64513, "192.0.2.2".parse().unwrap());
        c.password = Some(Password::new("s3cret-pw"));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("***"));
    }

    #[test]
    fn ttl_is_one_only_for_single_hop_ebgp() {
        let mut c = PeerConfig::new(64512, 64513, "192.0.2.2".parse().unwrap());
        assert_eq!(c.ttl(), 1);
        c.ebgp_multihop = true;
        assert_eq!(c.ttl(), 255);
        c.multihop_ttl = Some(4);
        assert_eq!(c.ttl(), 4);
        let mut c = PeerConfig::new(64512, 64512, "192.0.2.2".parse().unwrap());
        assert_eq!(c.ttl(), 255);
        c.multihop_ttl = Some(4);
        assert_eq!(c.ttl(), 255, "iBGP");
    }
}
