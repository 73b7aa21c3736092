//! The BGP session state machine (RFC 4271 §8) as a pure function from events to actions.
//!
//! The tokio edge ([`super::session`]) owns sockets and timers; it feeds [`Event`]s to
//! [`Fsm::handle`] and carries out the returned [`Action`]s in order. A session either connects
//! (active) or only accepts (passive), never both, so connection collisions (RFC 4271 §6.8)
//! cannot happen and need no resolution here.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::rib::PeerRestart;
use super::wire::{
    AFI_IPV4, AFI_IPV6, AS_TRANS, Capability, GR_FORWARDING, GR_RESTART_STATE, GrFamily, Message,
    Notification, Open, OptParam, SAFI_UNICAST, WireContext, WireError, code,
};

/// An address family (AFI, SAFI).
pub type Family = (u16, u8);
pub const IPV4_UNICAST: Family = (AFI_IPV4, SAFI_UNICAST);
pub const IPV6_UNICAST: Family = (AFI_IPV6, SAFI_UNICAST);

/// The hold time used while waiting for the peer's OPEN (RFC 4271 §8.2.2 suggests 4 minutes).
pub const OPEN_HOLD_TIME: Duration = Duration::from_secs(240);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsmConfig {
    pub local_as: u32,
    /// The AS the peer must announce; ignored when `dynamic_as` is set.
    pub peer_as: u32,
    /// MetalLB's `dynamicASN`: accept any AS of this kind from the peer's OPEN.
    pub dynamic_as: Option<DynamicAs>,
    /// BGP identifier; when `None`, the session's local IPv4 address (or, on IPv6, the low 32
    /// bits of the local address).
    pub router_id: Option<Ipv4Addr>,
    /// Proposed hold time in seconds: 0 (no keepalives) or at least 3.
    pub hold_time: u16,
    /// Keepalive interval in seconds; `None` means a third of the negotiated hold time.
    pub keepalive_time: Option<u16>,
    /// Wait for the peer to connect instead of connecting.
    pub passive: bool,
    /// Announce graceful restart (RFC 4724) with this restart time in seconds.
    pub graceful_restart: Option<u16>,
    /// We restarted with our forwarding state kept: the Restart State (R) bit goes into the
    /// graceful restart capability until the first session is established.
    pub restarting: bool,
    /// Families announced with the multiprotocol capability.
    pub families: Vec<Family>,
    /// Reconnect backoff: first delay, doubling up to the maximum.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl FsmConfig {
    pub fn new(local_as: u32, peer_as: u32) -> Self {
        Self {
            local_as,
            peer_as,
            dynamic_as: None,
            router_id: None,
            hold_time: 90,
            keepalive_time: None,
            passive: false,
            graceful_restart: None,
            restarting: false,
            families: vec![IPV4_UNICAST, IPV6_UNICAST],
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(120),
        }
    }
}

/// Which peer AS a session without a fixed `peerASN` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DynamicAs {
    /// The peer's AS equals ours (iBGP).
    Internal,
    /// Any AS but ours (eBGP).
    External,
}

impl FsmConfig {
    /// Whether the peer announcing `peer_as` is the one configured.
    pub fn accepts_peer_as(&self, peer_as: u32) -> bool {
        match self.dynamic_as {
            None => peer_as == self.peer_as,
            Some(DynamicAs::Internal) => peer_as == self.local_as,
            Some(DynamicAs::External) => peer_as != self.local_as,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    ManualStart,
    ManualStop,
    /// A TCP connection is up (ours connected, or, passive, the peer's accepted).
    TcpConnected {
        local: IpAddr,
    },
    /// Connecting failed, or the connection closed or broke.
    TcpFailed,
    Message(Message),
    /// The peer sent something malformed.
    DecodeError(WireError),
    HoldTimerExpired,
    KeepaliveTimerExpired,
    ConnectRetryExpired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    Send(Message),
    /// Close the TCP connection (after sending what was queued).
    Close,
    StartTimer(Timer, Duration),
    StopTimer(Timer),
    /// The session reached Established with these parameters.
    Established(Negotiated),
    /// An UPDATE or ROUTE-REFRESH from the established peer.
    Deliver(Message),
    /// The session attempt or the session ended.
    Down(DownReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    ConnectFailed,
    ConnectionLost,
    NotificationSent(Notification),
    NotificationReceived(Notification),
    Stopped,
}

impl std::fmt::Display for DownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownReason::ConnectFailed => f.write_str("connection failed"),
            DownReason::ConnectionLost => f.write_str("connection lost"),
            DownReason::NotificationSent(n) => write!(f, "sent NOTIFICATION {n}"),
            DownReason::NotificationReceived(n) => write!(f, "received NOTIFICATION {n}"),
            DownReason::Stopped => f.write_str("stopped"),
        }
    }
}

/// What the two OPENs agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_as: u32,
    pub peer_id: Ipv4Addr,
    pub local_id: Ipv4Addr,
    pub local_addr: IpAddr,
    /// Seconds; 0 means neither hold timer nor keepalives.
    pub hold_time: u16,
    pub keepalive_time: u16,
    pub ctx: WireContext,
    /// Families both sides announced.
    pub families: Vec<Family>,
    pub route_refresh: bool,
    /// Both sides announced graceful restart.
    pub graceful_restart: bool,
    pub ibgp: bool,
}

#[derive(Debug, Clone)]
pub struct Fsm {
    config: FsmConfig,
    state: State,
    started: bool,
    retry_delay: Duration,
    local_addr: Option<IpAddr>,
    negotiated: Option<Negotiated>,
    /// The graceful restart capability of the peer's OPEN in the current session.
    peer_restart: Option<PeerRestart>,
    /// Still in the restart the config announced: no session established yet.
    restarting: bool,
}

impl Fsm {
    pub fn new(config: FsmConfig) -> Self {
        let retry_delay = config.retry_initial;
        Self {
            state: State::Idle,
            started: false,
            retry_delay,
            local_addr: None,
            negotiated: None,
            peer_restart: None,
            restarting: config.restarting,
            config,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The graceful restart capability the peer sent in this session's OPEN (kept from
    /// OpenConfirm until the session ends).
    pub fn peer_restart(&self) -> Option<&PeerRestart> {
        self.peer_restart.as_ref()
    }

    pub fn config(&self) -> &FsmConfig {
        &self.config
    }

    /// The delay before the next reconnect attempt.
    pub fn retry_delay(&self) -> Duration {
        self.retry_delay
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        use State::*;
        match (self.state, event) {
            (_, Event::ManualStart) if !self.started => {
                self.started = true;
                self.retry_delay = self.config.retry_initial;
                self.begin()
            }
            (_, Event::ManualStart) => vec![],
            (_, Event::ManualStop) => self.stop(),
            (Connect | Active, Event::TcpConnected { local }) if self.started => {
                self.connected(local)
            }
            (Connect, Event::TcpFailed) => {
                self.state = Active;
                self.schedule_retry(DownReason::ConnectFailed, vec![Action::Close])
            }
            (Idle | Active, Event::ConnectRetryExpired) if self.started && !self.config.passive => {
                self.state = Connect;
                vec![Action::Connect]
            }
            (OpenSent | OpenConfirm | Established, Event::TcpFailed) => {
                self.fail(DownReason::ConnectionLost, vec![Action::Close])
            }
            (OpenSent | OpenConfirm | Established, Event::HoldTimerExpired) => {
                self.notify(Notification::new(code::HOLD_TIMER_EXPIRED, 0))
            }
            (OpenSent | OpenConfirm | Established, Event::DecodeError(e)) => {
                self.notify(e.notification())
            }
            (OpenSent | OpenConfirm | Established, Event::Message(Message::Notification(n))) => {
                self.fail(DownReason::NotificationReceived(n), vec![Action::Close])
            }
            (OpenSent, Event::Message(Message::Open(open))) => self.open_received(open),
            (OpenConfirm | Established, Event::KeepaliveTimerExpired) => {
                let mut actions = vec![Action::Send(Message::Keepalive)];
                actions.extend(self.keepalive_timer());
                actions
            }
            (OpenConfirm, Event::Message(Message::Keepalive)) => {
                self.state = Established;
                self.restarting = false;
                self.retry_delay = self.config.retry_initial;
                let neg = self.negotiated.clone().expect("negotiated in OpenConfirm");
                let mut actions = self.hold_timer();
                actions.push(Action::Established(neg));
                actions
            }
            (Established, Event::Message(Message::Keepalive)) => self.hold_timer(),
            (Established, Event::Message(m @ (Message::Update(_) | Message::RouteRefresh(_)))) => {
                let mut actions = self.hold_timer();
                actions.push(Action::Deliver(m));
                actions
            }
            (OpenSent, Event::Message(_)) => self.notify(Notification::new(
                code::FSM,
                code::FSM_UNEXPECTED_IN_OPENSENT,
            )),
            (OpenConfirm, Event::Message(_)) => self.notify(Notification::new(
                code::FSM,
                code::FSM_UNEXPECTED_IN_OPENCONFIRM,
            )),
            (Established, Event::Message(_)) => self.notify(Notification::new(
                code::FSM,
                code::FSM_UNEXPECTED_IN_ESTABLISHED,
            )),
            // Stale timers and events that do not apply in this state.
            _ => vec![],
        }
    }

    fn begin(&mut self) -> Vec<Action> {
        if self.config.passive {
            self.state = State::Active;
            vec![]
        } else {
            self.state = State::Connect;
            vec![Action::Connect]
        }
    }

    fn stop(&mut self) -> Vec<Action> {
        self.started = false;
        let mut actions = Vec::new();
        match self.state {
            State::OpenSent | State::OpenConfirm | State::Established => {
                // With graceful restart negotiated the peer keeps our routes only if we just
                // close; a Cease would make it flush them.
                let graceful = self.state == State::Established
                    && self.negotiated.as_ref().is_some_and(|n| n.graceful_restart);
                if !graceful {
                    actions.push(Action::Send(Message::Notification(Notification::new(
                        code::CEASE,
                        code::CEASE_ADMINISTRATIVE_SHUTDOWN,
                    ))));
                }
                actions.push(Action::Close);
                actions.push(Action::Down(DownReason::Stopped));
            }
            State::Connect => actions.push(Action::Close),
            State::Idle | State::Active => {}
        }
        actions.extend(self.stop_all_timers());
        self.state = State::Idle;
        self.negotiated = None;
        self.peer_restart = None;
        actions
    }

    fn stop_all_timers(&self) -> Vec<Action> {
        vec![
            Action::StopTimer(Timer::ConnectRetry),
            Action::StopTimer(Timer::Hold),
            Action::StopTimer(Timer::Keepalive),
        ]
    }

    fn connected(&mut self, local: IpAddr) -> Vec<Action> {
        self.local_addr = Some(local);
        self.state = State::OpenSent;
        vec![
            Action::StopTimer(Timer::ConnectRetry),
            Action::Send(Message::Open(self.our_open(local))),
            Action::StartTimer(Timer::Hold, OPEN_HOLD_TIME),
        ]
    }

    fn router_id(&self, local: IpAddr) -> Ipv4Addr {
        self.config.router_id.unwrap_or(match local {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => {
                let o = a.octets();
                Ipv4Addr::new(o[12], o[13], o[14], o[15])
            }
        })
    }

    /// The OPEN we send: MP for our families, route refresh, 4-octet AS, graceful restart.
    pub fn our_open(&self, local: IpAddr) -> Open {
        let c = &self.config;
        let mut caps: Vec<Capability> = c
            .families
            .iter()
            .map(|&(afi, safi)| Capability::Multiprotocol {
                afi,
                reserved: 0,
                safi,
            })
            .collect();
        caps.push(Capability::RouteRefresh);
        caps.push(Capability::FourOctetAs(c.local_as));
        if let Some(time) = c.graceful_restart {
            caps.push(Capability::GracefulRestart {
                flags: if self.restarting { GR_RESTART_STATE } else { 0 },
                time: time.min(0x0fff),
                // The node keeps forwarding while the speaker or router restarts: the kernel
                // holds the routes, not this process.
                families: c
                    .families
                    .iter()
                    .map(|&(afi, safi)| GrFamily {
                        afi,
                        safi,
                        flags: GR_FORWARDING,
                    })
                    .collect(),
            });
        }
        Open {
            version: 4,
            my_as: u16::try_from(c.local_as).unwrap_or(AS_TRANS),
            hold_time: c.hold_time,
            bgp_id: self.router_id(local),
            params: vec![OptParam::Capabilities(caps)],
        }
    }

    fn open_received(&mut self, open: Open) -> Vec<Action> {
        match self.negotiate(&open) {
            Err(n) => self.notify(n),
            Ok(neg) => {
                self.state = State::OpenConfirm;
                let mut actions = vec![Action::Send(Message::Keepalive)];
                self.negotiated = Some(neg);
                self.peer_restart = PeerRestart::from_open(&open);
                actions.extend(self.hold_timer());
                actions.extend(self.keepalive_timer());
                actions
            }
        }
    }

    /// Checks the peer's OPEN (RFC 4271 §6.2) and computes the session parameters.
    pub fn negotiate(&self, open: &Open) -> Result<Negotiated, Notification> {
        let c = &self.config;
        let local = self.local_addr.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let local_id = self.router_id(local);
        let peer_as = open.peer_as();
        if !c.accepts_peer_as(peer_as) {
            return Err(Notification {
                code: code::OPEN,
                subcode: code::BAD_PEER_AS,
                data: open.my_as.to_be_bytes().to_vec(),
            });
        }
        let ibgp = peer_as == c.local_as;
        if open.bgp_id.is_unspecified()
            || open.bgp_id.is_multicast()
            || open.bgp_id.is_broadcast()
            || (ibgp && open.bgp_id == local_id)
        {
            return Err(Notification {
                code: code::OPEN,
                subcode: code::BAD_BGP_IDENTIFIER,
                data: open.bgp_id.octets().to_vec(),
            });
        }
        if open.hold_time == 1 || open.hold_time == 2 {
            return Err(Notification::new(code::OPEN, code::UNACCEPTABLE_HOLD_TIME));
        }
        let four_octet = open
            .capabilities()
            .any(|c| matches!(c, Capability::FourOctetAs(_)));
        if !four_octet && c.local_as > u16::MAX as u32 {
            // Our AS does not fit the 2-octet world and we do not speak AS4_PATH: say which
            // capability we need.
            let mut data = Vec::new();
            let _ = Capability::FourOctetAs(c.local_as).emit(&mut data);
            return Err(Notification {
                code: code::OPEN,
                subcode: code::UNSUPPORTED_CAPABILITY,
                data,
            });
        }
        let peer_families: Vec<Family> = open
            .capabilities()
            .filter_map(|c| match c {
                Capability::Multiprotocol { afi, safi, .. } => Some((*afi, *safi)),
                _ => None,
            })
            .collect();
        let any_mp = !peer_families.is_empty();
        let families = c
            .families
            .iter()
            .copied()
            // Without any MP capability the peer speaks IPv4 unicast only (RFC 4760 §8).
            .filter(|f| peer_families.contains(f) || (!any_mp && *f == IPV4_UNICAST))
            .collect();
        let hold_time = c.hold_time.min(open.hold_time);
        let keepalive_time = match c.keepalive_time {
            _ if hold_time == 0 => 0,
            Some(k) if k > 0 && k < hold_time => k,
            _ => (hold_time / 3).max(1),
        };
        Ok(Negotiated {
            peer_as,
            peer_id: open.bgp_id,
            local_id,
            local_addr: local,
            hold_time,
            keepalive_time,
            ctx: WireContext {
                four_octet_as: four_octet,
            },
            families,
            route_refresh: open
                .capabilities()
                .any(|c| matches!(c, Capability::RouteRefresh)),
            graceful_restart: c.graceful_restart.is_some()
                && open
                    .capabilities()
                    .any(|c| matches!(c, Capability::GracefulRestart { .. })),
            ibgp,
        })
    }

    fn hold_timer(&self) -> Vec<Action> {
        match self.negotiated.as_ref().map(|n| n.hold_time) {
            Some(0) => vec![Action::StopTimer(Timer::Hold)],
            Some(h) => vec![Action::StartTimer(
                Timer::Hold,
                Duration::from_secs(h.into()),
            )],
            None => vec![],
        }
    }

    fn keepalive_timer(&self) -> Vec<Action> {
        match self.negotiated.as_ref().map(|n| n.keepalive_time) {
            Some(0) | None => vec![],
            Some(k) => vec![Action::StartTimer(
                Timer::Keepalive,
                Duration::from_secs(k.into()),
            )],
        }
    }

    /// Sends a NOTIFICATION, closes and schedules a reconnect.
    fn notify(&mut self, n: Notification) -> Vec<Action> {
        let actions = vec![
            Action::Send(Message::Notification(n.clone())),
            Action::Close,
        ];
        self.fail(DownReason::NotificationSent(n), actions)
    }

    fn fail(&mut self, reason: DownReason, actions: Vec<Action>) -> Vec<Action> {
        self.negotiated = None;
        self.peer_restart = None;
        self.state = if self.config.passive {
            State::Active
        } else {
            State::Idle
        };
        self.schedule_retry(reason, actions)
    }

    fn schedule_retry(&mut self, reason: DownReason, mut actions: Vec<Action>) -> Vec<Action> {
        actions.push(Action::StopTimer(Timer::Hold));
        actions.push(Action::StopTimer(Timer::Keepalive));
        actions.push(Action::Down(reason));
        if !self.config.passive {
            actions.push(Action::StartTimer(Timer::ConnectRetry, self.retry_delay));
            self.retry_delay = (self.retry_delay * 2).min(self.config.retry_max);
        }
        actions
    }
}

#[cfg(test)]
mod tests;
