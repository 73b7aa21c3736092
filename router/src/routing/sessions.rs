//! Running engine sessions, one per planned peer: a new peer starts a session with its
//! export table, a removed one is stopped (Cease, or a plain close when graceful restart was
//! negotiated), a changed [`PeerSpec`] resets only that session, and a changed export table
//! is handed to the established session as the changed prefixes only. Sessions a change
//! does not concern are never touched.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use metalnet::bgp::{
    PeerConfig, ReceivedRoute, RouteAttrs, Session, SessionHandle, SessionStatus, State,
};
use tokio::sync::Notify;

use super::topology::{PeerKind, PeerSpec};

pub use metalnet::bgp::Listener;

/// A node's routers reconnect quickly: a peer that restarts (rolling update) should be back
/// within a second or two, and the mesh must converge in seconds after all start at once.
const RETRY_INITIAL: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// How long a restarted session's predecessor may take to stop.
const RESTART_WAIT: Duration = Duration::from_secs(2);

/// Routes sent to one peer, by prefix.
pub type Exports = BTreeMap<IpNet, RouteAttrs>;

/// What the sessions are built with beyond their [`PeerSpec`].
#[derive(Debug, Clone, Default)]
pub struct SessionContext {
    /// The node's shared listener, for passive sessions.
    pub listener: Option<Arc<Listener>>,
    /// Graceful restart, restarting side: our forwarding state (the kernel routes) survived a
    /// restart; set on the sessions started before the routes are swept.
    pub restarting: bool,
    /// Our route-reflector cluster id, when this node is a server: the engine drops routes
    /// that looped back (RFC 4456).
    pub cluster_id: Option<std::net::Ipv4Addr>,
}

/// The engine session parameters of a planned peer. Pure.
pub fn peer_config(spec: &PeerSpec, ctx: &SessionContext) -> PeerConfig {
    let mut c = PeerConfig::new(spec.local_asn, spec.peer_asn, spec.address);
    c.peer_port = spec.port;
    c.source_address = spec.local_address;
    c.router_id = Some(spec.router_id);
    c.hold_time = spec.hold_time;
    c.password = spec.password.clone();
    // eBGP multihop with kube-router's TTL (iBGP always uses 255).
    c.ebgp_multihop = spec.multihop_ttl.is_some();
    c.multihop_ttl = spec.multihop_ttl;
    c.cluster_id = ctx.cluster_id;
    if let Some(time) = spec.graceful_restart {
        c.enable_graceful_restart = true;
        c.graceful_restart_time = u16::try_from(time.as_secs().min(4095)).unwrap_or(4095);
    }
    c.retry_initial = RETRY_INITIAL;
    c.retry_max = RETRY_MAX;
    c.inbound = if spec.passive {
        ctx.listener.clone()
    } else {
        None
    };
    c.restarting = ctx.restarting;
    c
}

/// One change to the running sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Start(IpAddr),
    Stop(IpAddr),
    /// The peer's spec changed: stop its session and start a new one.
    Restart(IpAddr),
    /// Only the export table changed: these prefixes set (`Some`) or withdrawn (`None`).
    Routes(IpAddr, Vec<(IpNet, Option<RouteAttrs>)>),
}

/// The prefixes whose route differs between `old` and `new`. Pure.
pub fn route_changes(old: &Exports, new: &Exports) -> Vec<(IpNet, Option<RouteAttrs>)> {
    let mut out: Vec<(IpNet, Option<RouteAttrs>)> = new
        .iter()
        .filter(|(p, a)| old.get(p) != Some(a))
        .map(|(p, a)| (*p, Some(a.clone())))
        .collect();
    out.extend(
        old.keys()
            .filter(|p| !new.contains_key(p))
            .map(|p| (*p, None)),
    );
    out
}

/// The changes that turn the running sessions (spec and exports each has) into the planned
/// ones. Pure.
pub fn plan_changes(
    running: &BTreeMap<IpAddr, (&PeerSpec, &Exports)>,
    peers: &BTreeMap<IpAddr, PeerSpec>,
    exports: &BTreeMap<IpAddr, Exports>,
) -> Vec<Change> {
    let empty = Exports::new();
    let mut out = Vec::new();
    for (addr, spec) in peers {
        match running.get(addr) {
            None => out.push(Change::Start(*addr)),
            Some((had, _)) if *had != spec => out.push(Change::Restart(*addr)),
            Some((_, had_exports)) => {
                let changes = route_changes(had_exports, exports.get(addr).unwrap_or(&empty));
                if !changes.is_empty() {
                    out.push(Change::Routes(*addr, changes));
                }
            }
        }
    }
    out.extend(
        running
            .keys()
            .filter(|a| !peers.contains_key(a))
            .map(|a| Change::Stop(*a)),
    );
    out
}

struct Running {
    spec: PeerSpec,
    exports: Exports,
    handle: SessionHandle,
}

/// What `explain` and the metrics show of one session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub spec: PeerSpec,
    pub status: SessionStatus,
    pub uptime: Option<Duration>,
    pub sent: usize,
    pub received: usize,
}

/// The running sessions, by peer address.
#[derive(Default)]
pub struct Sessions {
    running: BTreeMap<IpAddr, Running>,
    /// Woken when a session's received routes or state change.
    wake: Arc<Notify>,
}

/// What [`Sessions::apply`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub started: usize,
    pub stopped: usize,
    pub restarted: usize,
    /// Route changes handed to sessions.
    pub routes_sent: usize,
}

impl Sessions {
    pub fn new(wake: Arc<Notify>) -> Sessions {
        Sessions {
            running: BTreeMap::new(),
            wake,
        }
    }

    /// Makes the sessions match the plan. Must run inside a tokio runtime.
    pub async fn apply(
        &mut self,
        peers: &BTreeMap<IpAddr, PeerSpec>,
        exports: &BTreeMap<IpAddr, Exports>,
        ctx: &SessionContext,
    ) -> Applied {
        let running: BTreeMap<IpAddr, (&PeerSpec, &Exports)> = self
            .running
            .iter()
            .map(|(a, r)| (*a, (&r.spec, &r.exports)))
            .collect();
        let changes = plan_changes(&running, peers, exports);
        let mut applied = Applied::default();
        let empty = Exports::new();
        for change in changes {
            match change {
                Change::Start(addr) | Change::Restart(addr) => {
                    let Some(spec) = peers.get(&addr) else {
                        continue;
                    };
                    if let Some(old) = self.running.remove(&addr) {
                        tracing::info!(peer = %addr, "peer parameters changed: restarting its session");
                        applied.restarted += 1;
                        // The old session ends (Cease sent, listener slot and MD5 key given
                        // back) before the new one takes its place.
                        if tokio::time::timeout(RESTART_WAIT, old.handle.shutdown())
                            .await
                            .is_err()
                        {
                            tracing::warn!(peer = %addr, "the old session did not stop in time");
                        }
                    } else {
                        applied.started += 1;
                    }
                    let table = exports.get(&addr).unwrap_or(&empty).clone();
                    applied.routes_sent += table.len();
                    let config = peer_config(spec, ctx);
                    tracing::info!(peer = %addr, port = spec.port, local_asn = spec.local_asn,
                        peer_asn = spec.peer_asn, passive = spec.passive, rr_client = spec.rr_client,
                        md5 = spec.password.is_some(), kind = ?spec.kind, routes = table.len(),
                        "starting BGP session");
                    // The table goes in at the start: with graceful restart the End-of-RIB
                    // follows the first table sent.
                    let handle = Session::spawn_with_routes(config, table.clone());
                    spawn_watcher(addr, &handle, self.wake.clone());
                    self.running.insert(
                        addr,
                        Running {
                            spec: spec.clone(),
                            exports: table,
                            handle,
                        },
                    );
                }
                Change::Stop(addr) => {
                    if let Some(old) = self.running.remove(&addr) {
                        tracing::info!(peer = %addr, "peer no longer planned: stopping its session");
                        applied.stopped += 1;
                        tokio::spawn(old.handle.shutdown());
                    }
                }
                Change::Routes(addr, changes) => {
                    if let Some(r) = self.running.get_mut(&addr) {
                        applied.routes_sent += changes.len();
                        tracing::debug!(peer = %addr, changes = changes.len(), "routes to the peer changed");
                        r.handle.update_routes(changes);
                        r.exports = exports.get(&addr).cloned().unwrap_or_default();
                    }
                }
            }
        }
        applied
    }

    /// What every session received, by peer address.
    pub fn received(&self) -> BTreeMap<IpAddr, BTreeMap<IpNet, ReceivedRoute>> {
        self.running
            .iter()
            .map(|(a, r)| (*a, r.handle.received()))
            .collect()
    }

    /// Every session's state and counts.
    pub fn infos(&self) -> BTreeMap<IpAddr, SessionInfo> {
        self.running
            .iter()
            .map(|(a, r)| {
                use std::sync::atomic::Ordering::Relaxed;
                let status = r.handle.status();
                let uptime = status
                    .established_since
                    .filter(|_| status.state == State::Established)
                    .map(|s| s.elapsed());
                (
                    *a,
                    SessionInfo {
                        spec: r.spec.clone(),
                        uptime,
                        sent: r.handle.counters().prefixes_announced.load(Relaxed) as usize,
                        received: r.handle.counters().prefixes_received.load(Relaxed) as usize,
                        status,
                    },
                )
            })
            .collect()
    }

    /// Whether every peer is back with its whole table (the graceful-restart wait): each
    /// session Established, and the peer sent End-of-RIB for every family negotiated, or
    /// (a peer that sends none) has been Established for `settle`.
    pub fn all_back(&self, settle: Duration) -> bool {
        self.running
            .values()
            .all(|r| peer_back(&r.handle.status(), settle))
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Stops every session (Cease, or a plain close when graceful restart was negotiated, so
    /// the peers keep our routes) and waits for them, at most `limit`.
    pub async fn shutdown(&mut self, limit: Duration) {
        let all: Vec<SessionHandle> = std::mem::take(&mut self.running)
            .into_values()
            .map(|r| r.handle)
            .collect();
        let n = all.len();
        let joined = futures::future::join_all(all.into_iter().map(SessionHandle::shutdown));
        if tokio::time::timeout(limit, joined).await.is_err() {
            tracing::warn!(sessions = n, "sessions did not stop in time");
        }
    }
}

/// One peer is back after our restart (see [`Sessions::all_back`]). Pure.
pub fn peer_back(s: &SessionStatus, settle: Duration) -> bool {
    if s.state != State::Established {
        return false;
    }
    let whole_table = s
        .negotiated
        .as_ref()
        .is_some_and(|n| n.families.iter().all(|f| s.end_of_rib_received.contains(f)));
    whole_table || s.established_since.is_some_and(|t| t.elapsed() >= settle)
}

/// Wakes the daemon on every change of a session's received routes or state; ends with the
/// session.
fn spawn_watcher(addr: IpAddr, handle: &SessionHandle, wake: Arc<Notify>) {
    let mut status = handle.watch_status();
    let mut received = handle.watch_received();
    tokio::spawn(async move {
        let mut last = status.borrow().state;
        loop {
            tokio::select! {
                r = status.changed() => {
                    if r.is_err() { return; }
                    let s = status.borrow_and_update().clone();
                    if s.state != last {
                        match (&s.last_error, s.state) {
                            // The engine logs the transitions that matter at info level.
                            (_, State::Established) => tracing::debug!(peer = %addr, "BGP session established"),
                            (Some(e), _) => tracing::debug!(peer = %addr, state = %s.state, reason = %e, "BGP session state"),
                            (None, _) => tracing::debug!(peer = %addr, state = %s.state, "BGP session state"),
                        }
                        last = s.state;
                        wake.notify_one();
                    }
                }
                r = received.changed() => {
                    if r.is_err() { return; }
                    wake.notify_one();
                }
            }
        }
    });
}

/// The kind of a peer for metrics and logs.
pub fn kind_name(kind: &PeerKind) -> &'static str {
    match kind {
        PeerKind::Node { .. } => "node",
        PeerKind::GlobalExternal => "external",
        PeerKind::AnnotatedExternal => "external-annotated",
    }
}

/// The socket address a passive session listens on (for logs).
pub fn listen_addr(port: u16) -> SocketAddr {
    SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn spec(addr: &str, asn: u32) -> PeerSpec {
        PeerSpec {
            kind: PeerKind::Node {
                name: format!("n-{addr}"),
            },
            address: addr.parse().unwrap(),
            port: 179,
            local_asn: 64512,
            peer_asn: asn,
            local_address: Some("192.0.2.11".parse().unwrap()),
            router_id: Ipv4Addr::new(192, 0, 2, 11),
            password: None,
            multihop_ttl: None,
            rr_client: false,
            passive: false,
            hold_time: Duration::from_secs(90),
            graceful_restart: None,
        }
    }
    fn attrs(nh: &str) -> RouteAttrs {
        RouteAttrs {
            next_hop: Some(nh.parse().unwrap()),
            ..RouteAttrs::default()
        }
    }
    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_peer_is_back_with_its_end_of_rib_or_after_the_settle_time() {
        use metalnet::bgp::fsm::{IPV4_UNICAST, IPV6_UNICAST};
        let settle = Duration::from_secs(2);
        let mut s = SessionStatus {
            state: State::Established,
            last_error: None,
            negotiated: None,
            established_since: Some(std::time::Instant::now()),
            end_of_rib_received: vec![],
        };
        assert!(!peer_back(&s, settle));
        s.negotiated = Some(metalnet::bgp::Negotiated {
            peer_as: 64512,
            peer_id: Ipv4Addr::new(192, 0, 2, 12),
            local_id: Ipv4Addr::new(192, 0, 2, 11),
            local_addr: ip("192.0.2.11"),
            hold_time: 90,
            keepalive_time: 30,
            ctx: Default::default(),
            families: vec![IPV4_UNICAST, IPV6_UNICAST],
            route_refresh: true,
            graceful_restart: true,
            ibgp: true,
        });
        s.end_of_rib_received = vec![IPV4_UNICAST];
        assert!(!peer_back(&s, settle), "one family still to come");
        s.end_of_rib_received.push(IPV6_UNICAST);
        assert!(peer_back(&s, settle));
        s.end_of_rib_received.clear();
        s.established_since = Some(std::time::Instant::now() - settle);
        assert!(peer_back(&s, settle), "no End-of-RIB, but long enough");
        s.state = State::Active;
        assert!(!peer_back(&s, settle));
    }

    #[test]
    fn route_changes_name_only_changed_prefixes() {
        let old: Exports = [
            (net("198.51.100.16/28"), attrs("192.0.2.11")),
            (net("198.51.100.32/28"), attrs("192.0.2.11")),
        ]
        .into();
        let new: Exports = [
            (net("198.51.100.16/28"), attrs("192.0.2.11")),
            (net("198.51.100.48/28"), attrs("192.0.2.11")),
        ]
        .into();
        assert_eq!(
            route_changes(&old, &new),
            vec![
                (net("198.51.100.48/28"), Some(attrs("192.0.2.11"))),
                (net("198.51.100.32/28"), None),
            ]
        );
        assert!(route_changes(&new, &new).is_empty());
    }

    #[test]
    fn only_the_sessions_concerned_change() {
        let a = spec("192.0.2.12", 64512);
        let b = spec("192.0.2.13", 64512);
        let c = spec("192.0.2.14", 64512);
        let table: Exports = [(net("198.51.100.16/28"), attrs("192.0.2.11"))].into();
        let empty = Exports::new();
        let running: BTreeMap<IpAddr, (&PeerSpec, &Exports)> = [
            (a.address, (&a, &table)),
            (b.address, (&b, &table)),
            (c.address, (&c, &empty)),
        ]
        .into();
        // a unchanged; b's ASN changed; c gets a route; d is new; nothing else.
        let mut b2 = b.clone();
        b2.peer_asn = 64600;
        let d = spec("192.0.2.15", 64512);
        let peers: BTreeMap<IpAddr, PeerSpec> = [
            (a.address, a.clone()),
            (b.address, b2),
            (c.address, c.clone()),
            (d.address, d.clone()),
        ]
        .into();
        let exports: BTreeMap<IpAddr, Exports> = [
            (a.address, table.clone()),
            (b.address, table.clone()),
            (c.address, table.clone()),
        ]
        .into();
        assert_eq!(
            plan_changes(&running, &peers, &exports),
            vec![
                Change::Restart(ip("192.0.2.13")),
                Change::Routes(
                    ip("192.0.2.14"),
                    vec![(net("198.51.100.16/28"), Some(attrs("192.0.2.11")))]
                ),
                Change::Start(ip("192.0.2.15")),
            ]
        );
        // A peer no longer planned is stopped; the others are left alone.
        let peers: BTreeMap<IpAddr, PeerSpec> = [(a.address, a.clone())].into();
        assert_eq!(
            plan_changes(&running, &peers, &exports),
            vec![
                Change::Stop(ip("192.0.2.13")),
                Change::Stop(ip("192.0.2.14"))
            ]
        );
    }

    #[tokio::test]
    async fn passive_sessions_take_the_shared_listener() {
        let l = Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let ctx = SessionContext {
            listener: Some(l.clone()),
            restarting: true,
            cluster_id: Some(Ipv4Addr::new(1, 2, 3, 4)),
        };
        let mut s = spec("192.0.2.12", 64512);
        s.passive = true;
        let c = peer_config(&s, &ctx);
        assert!(c.inbound.is_some_and(|i| i.local_addr() == l.local_addr()));
        assert!(c.restarting);
        assert_eq!(c.cluster_id, Some(Ipv4Addr::new(1, 2, 3, 4)));
        s.passive = false;
        assert!(peer_config(&s, &ctx).inbound.is_none());
    }

    #[test]
    fn peer_config_carries_the_spec() {
        let mut s = spec("192.0.2.12", 64600);
        s.password = Some(metalnet::bgp::Password::new("pw"));
        s.multihop_ttl = Some(4);
        s.graceful_restart = Some(Duration::from_secs(90));
        s.hold_time = Duration::from_secs(9);
        s.port = 1179;
        let c = peer_config(&s, &SessionContext::default());
        assert_eq!((c.my_asn, c.peer_asn, c.peer_port), (64512, 64600, 1179));
        assert_eq!(c.source_address, Some(ip("192.0.2.11")));
        assert_eq!(c.router_id, Some(Ipv4Addr::new(192, 0, 2, 11)));
        assert_eq!(c.hold_time, Duration::from_secs(9));
        assert!(c.ebgp_multihop && c.enable_graceful_restart);
        assert_eq!(c.multihop_ttl, Some(4));
        assert_eq!(c.ttl(), 4);
        assert_eq!(c.graceful_restart_time, 90);
        assert_eq!(c.password, s.password);
    }
}
