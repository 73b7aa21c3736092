//! The session task: one loop over the socket, the timers and route changes, feeding events
//! to the [`Fsm`] and carrying out its actions.

use super::listener::Registration;
use super::{Counters, Desired, Received, SessionStatus, lock};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::bgp::fsm::{Action, DownReason, Event, Family, Fsm, State, Timer};
use crate::bgp::peer::PeerConfig;
use crate::bgp::rib::{self, Announced, DesiredChanges};
use crate::bgp::wire::{self, Message, WireContext};

use crate::sys::tcp::{set_md5, set_ttl};

/// How long stale routes wait for the peer's End-of-RIB once the session is back (FRR's
/// default stale-path time): a peer that never sends one does not keep them forever.
const STALE_PATH_TIME: Duration = Duration::from_secs(360);

#[derive(Default)]
struct Timers {
    connect_retry: Option<Instant>,
    hold: Option<Instant>,
    keepalive: Option<Instant>,
}

impl Timers {
    fn slot(&mut self, t: Timer) -> &mut Option<Instant> {
        match t {
            Timer::ConnectRetry => &mut self.connect_retry,
            Timer::Hold => &mut self.hold,
            Timer::Keepalive => &mut self.keepalive,
        }
    }

    fn next(&self) -> Option<Instant> {
        [self.connect_retry, self.hold, self.keepalive]
            .into_iter()
            .flatten()
            .min()
    }

    /// Clears and returns the events of the timers that are due.
    fn expired(&mut self, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        for (t, e) in [
            (Timer::Hold, Event::HoldTimerExpired),
            (Timer::Keepalive, Event::KeepaliveTimerExpired),
            (Timer::ConnectRetry, Event::ConnectRetryExpired),
        ] {
            let slot = self.slot(t);
            if slot.is_some_and(|d| d <= now) {
                *slot = None;
                events.push(e);
            }
        }
        events
    }
}

struct Conn {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

pub(super) struct Runner {
    config: PeerConfig,
    fsm: Fsm,
    conn: Option<Conn>,
    connecting: Option<Connecting>,
    listener: Option<TcpListener>,
    /// The session's place on a shared listener.
    inbound: Option<Registration>,
    timers: Timers,
    desired: Desired,
    desired_changed: watch::Receiver<()>,
    /// What the peer has from us (Adj-RIB-Out).
    advertised: BTreeMap<IpNet, Announced>,
    received: Received,
    received_gen: watch::Sender<u64>,
    counters: Arc<Counters>,
    status: watch::Sender<SessionStatus>,
    last_error: Option<String>,
    established_since: Option<std::time::Instant>,
    /// Families whose End-of-RIB arrived in this session.
    end_of_rib_received: Vec<Family>,
    /// The peer's graceful restart capability when the current session negotiated it.
    session_restart: Option<rib::PeerRestart>,
    /// Families whose received routes are stale, waiting for the peer's End-of-RIB.
    stale_families: Vec<Family>,
    /// When the stale routes go if not refreshed: the peer's restart time while the
    /// session is down, [`STALE_PATH_TIME`] once it is back.
    stale_deadline: Option<Instant>,
    buf: Vec<u8>,
}

/// What woke the session loop.
enum Wake {
    Stop,
    DesiredChanged,
    Timer,
    /// The stale routes' time is up.
    StaleTimer,
    Connected(io::Result<TcpStream>),
    Accepted(io::Result<(TcpStream, SocketAddr)>),
    /// A connection from the peer through the shared listener (`None`: it went away).
    Inbound(Option<TcpStream>),
    Read(io::Result<usize>),
}

impl Runner {
    pub(super) fn new(
        config: PeerConfig,
        desired: Desired,
        desired_changed: watch::Receiver<()>,
        received: Received,
        received_gen: watch::Sender<u64>,
        counters: Arc<Counters>,
        status: watch::Sender<SessionStatus>,
    ) -> Self {
        Runner {
            fsm: Fsm::new(config.fsm_config()),
            config,
            conn: None,
            connecting: None,
            listener: None,
            inbound: None,
            timers: Timers::default(),
            desired,
            desired_changed,
            advertised: BTreeMap::new(),
            received,
            received_gen,
            counters,
            status,
            last_error: None,
            established_since: None,
            end_of_rib_received: Vec::new(),
            session_restart: None,
            stale_families: Vec::new(),
            stale_deadline: None,
            buf: Vec::new(),
        }
    }

    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let peer = self.config.peer_address;
        if self.config.inbound.is_some() {
            self.register_inbound(&mut stop).await;
        } else if self.config.listen.is_some() {
            self.bind_listener(&mut stop).await;
        }
        self.process(Event::ManualStart).await;
        // A passive session shows Active while it waits, not Idle.
        self.publish();
        loop {
            let next_timer = self.timers.next();
            let wake = tokio::select! {
                r = stop.wait_for(|s| *s) => { let _ = r; Wake::Stop }
                r = self.desired_changed.changed() => match r {
                    Ok(()) => Wake::DesiredChanged,
                    Err(_) => Wake::Stop,
                },
                _ = sleep_until_opt(next_timer), if next_timer.is_some() => Wake::Timer,
                _ = sleep_until_opt(self.stale_deadline), if self.stale_deadline.is_some() => Wake::StaleTimer,
                r = async { self.connecting.as_mut().expect("guarded").await }, if self.connecting.is_some() => Wake::Connected(r),
                r = async { self.listener.as_ref().expect("guarded").accept().await }, if self.listener.is_some() => Wake::Accepted(r),
                r = async { self.inbound.as_mut().expect("guarded").accept().await }, if self.inbound.is_some() => Wake::Inbound(r),
                r = async { let c = self.conn.as_mut().expect("guarded"); c.read.read_buf(&mut self.buf).await }, if self.conn.is_some() => Wake::Read(r),
            };
            match wake {
                Wake::Stop => {
                    self.process(Event::ManualStop).await;
                    self.publish();
                    return;
                }
                Wake::DesiredChanged => {
                    if self.fsm.state() == State::Established {
                        self.sync_routes(false).await;
                    }
                }
                Wake::StaleTimer => {
                    tracing::info!(%peer, families = ?self.stale_families, "graceful restart: stale routes not refreshed in time; removed");
                    self.stale_families.clear();
                    self.stale_deadline = None;
                    self.change_received(|r| {
                        rib::sweep_all_stale(r);
                    });
                }
                Wake::Timer => {
                    for e in self.timers.expired(Instant::now()) {
                        self.process(e).await;
                    }
                }
                Wake::Connected(r) => {
                    self.connecting = None;
                    match r {
                        Ok(stream) => self.attach(stream).await,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "BGP connect failed");
                            self.last_error = Some(format!("connect: {e}"));
                            self.process(Event::TcpFailed).await;
                        }
                    }
                }
                Wake::Accepted(Ok((stream, from))) => {
                    if from.ip() != peer || self.conn.is_some() || self.fsm.state() != State::Active
                    {
                        tracing::info!(%peer, %from, state = %self.fsm.state(), "refusing BGP connection");
                        drop(stream);
                    } else {
                        self.attach(stream).await;
                    }
                }
                Wake::Inbound(Some(stream)) => self.inbound_connection(stream).await,
                Wake::Inbound(None) => {
                    tracing::warn!(%peer, "another session registered for this peer on the shared BGP listener; this one gets no more connections");
                    self.inbound = None;
                }
                Wake::Accepted(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "BGP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Wake::Read(Ok(0)) => {
                    tracing::debug!(%peer, "BGP peer closed the connection");
                    self.process(Event::TcpFailed).await;
                }
                Wake::Read(Ok(_)) => self.drain_messages().await,
                Wake::Read(Err(e)) => {
                    self.last_error = Some(format!("read: {e}"));
                    self.process(Event::TcpFailed).await;
                }
            }
            self.publish();
        }
    }

    /// Registers with the shared listener, retrying each second while that fails (a TCP MD5
    /// key the kernel refuses, a peer of the other family).
    async fn register_inbound(&mut self, stop: &mut watch::Receiver<bool>) {
        let Some(listener) = self.config.inbound.clone() else {
            return;
        };
        loop {
            match listener.register(self.config.peer_address, self.config.password.as_ref()) {
                Ok(r) => {
                    self.inbound = Some(r);
                    return;
                }
                Err(e) => {
                    let addr = listener.local_addr();
                    tracing::warn!(peer = %self.config.peer_address, %addr, error = %e, "cannot register with the BGP listener");
                    self.last_error = Some(format!("register on listener {addr}: {e}"));
                    self.publish();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }

    /// A connection from the peer through the shared listener. We never connect, so a
    /// second connection is not a collision between two directions (RFC 4271 §6.8) but the
    /// peer trying again:
    /// - Established without graceful restart: the established connection is kept and the
    ///   new one closed, as §6.8 has it. If the old one is half-dead (the peer restarted),
    ///   our next KEEPALIVE draws a reset, or at worst the hold timer expires; the session
    ///   then returns to Active and the peer's next attempt is taken.
    /// - Established with graceful restart: a peer that reconnects while we still hold its
    ///   session has restarted (RFC 4724 §4.2 has the receiving speaker close the old
    ///   session then): the old connection ends as if it broke, its routes stay stale, and
    ///   the new one proceeds.
    /// - OpenSent/OpenConfirm: the peer gave up on the older connection before finishing the
    ///   OPEN exchange, so the newer one replaces it.
    async fn inbound_connection(&mut self, stream: TcpStream) {
        let peer = self.config.peer_address;
        match self.fsm.state() {
            State::Established if self.session_restart.is_some() => {
                tracing::info!(%peer, "new BGP connection from a graceful-restart peer while established: the peer restarted; the old connection is closed");
                self.last_error = Some("peer reconnected (restarted)".into());
                self.process(Event::TcpFailed).await;
            }
            State::Established | State::Idle | State::Connect => {
                tracing::info!(%peer, state = %self.fsm.state(), "refusing a second BGP connection from the peer");
                drop(stream);
                return;
            }
            State::OpenSent | State::OpenConfirm => {
                tracing::info!(%peer, state = %self.fsm.state(), "new BGP connection from the peer replaces the unfinished one");
                self.last_error = Some("peer opened a new connection".into());
                self.process(Event::TcpFailed).await;
            }
            State::Active => {}
        }
        if self.fsm.state() == State::Active && self.conn.is_none() {
            let _ = set_ttl(&stream, &peer, self.config.ttl()).inspect_err(
                |e| tracing::debug!(%peer, error = %e, "cannot set the TTL of the BGP connection"),
            );
            self.attach(stream).await;
        }
    }

    async fn bind_listener(&mut self, stop: &mut watch::Receiver<bool>) {
        let Some(addr) = self.config.listen else {
            return;
        };
        loop {
            match listen(addr, &self.config) {
                Ok(l) => {
                    self.listener = Some(l);
                    return;
                }
                Err(e) => {
                    tracing::warn!(peer = %self.config.peer_address, %addr, error = %e, "cannot listen for BGP");
                    self.last_error = Some(format!("listen on {addr}: {e}"));
                    self.publish();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }

    async fn attach(&mut self, stream: TcpStream) {
        let local = match stream.local_addr() {
            // An IPv4 peer on a dual-stack listener shows as IPv4-mapped: our address is the
            // IPv4 one (the default next hop, the router ID).
            Ok(a) => a.ip().to_canonical(),
            Err(e) => {
                self.last_error = Some(format!("local address: {e}"));
                self.process(Event::TcpFailed).await;
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        self.conn = Some(Conn { read, write });
        self.buf.clear();
        self.process(Event::TcpConnected { local }).await;
    }

    /// Parses every complete message in the buffer and feeds it to the FSM.
    async fn drain_messages(&mut self) {
        loop {
            if self.conn.is_none() {
                return;
            }
            let ctx = self.ctx();
            let event = match wire::frame_len(&self.buf) {
                Ok(None) => return,
                Ok(Some(len)) => {
                    let r = Message::parse_received(&self.buf[..len], ctx);
                    self.buf.drain(..len);
                    match r {
                        Ok((m, _, faults)) => match self.note_faults(m, &faults) {
                            Some(m) => Event::Message(m),
                            None => continue,
                        },
                        Err(e) => Event::DecodeError(e),
                    }
                }
                Err(e) => Event::DecodeError(e),
            };
            if let Event::DecodeError(e) = &event {
                tracing::warn!(peer = %self.config.peer_address, error = %e, "malformed BGP message from peer");
                self.buf.clear();
            }
            self.process(event).await;
        }
    }

    /// Logs and counts the RFC 7606 faults of a received message; `None` when nothing of
    /// it is left to deliver (a treat-as-withdraw UPDATE that announced nothing, which would
    /// otherwise read as an End-of-RIB marker).
    fn note_faults(&self, m: Message, faults: &[wire::AttrFault]) -> Option<Message> {
        if faults.is_empty() {
            return Some(m);
        }
        let mut withdraw = false;
        for f in faults {
            match f.action {
                wire::FaultAction::TreatAsWithdraw => withdraw = true,
                wire::FaultAction::AttributeDiscard => {
                    self.counters
                        .attributes_discarded
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            tracing::warn!(peer = %self.config.peer_address, attribute = f.type_code,
                action = ?f.action, error = %f.error,
                "malformed attribute in a BGP UPDATE from peer; handled as RFC 7606 prescribes, session kept");
        }
        if withdraw {
            self.counters
                .updates_treated_as_withdraw
                .fetch_add(1, Ordering::Relaxed);
            if let Message::Update(u) = &m
                && u.is_end_of_rib().is_some()
            {
                return None;
            }
        }
        Some(m)
    }

    fn ctx(&self) -> WireContext {
        self.fsm.negotiated().map(|n| n.ctx).unwrap_or_default()
    }

    /// Feeds an event to the FSM and carries out the actions, including the events they cause.
    async fn process(&mut self, event: Event) {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            for action in self.fsm.handle(event) {
                if let Some(follow_up) = self.act(action).await {
                    queue.push_back(follow_up);
                }
            }
        }
    }

    async fn act(&mut self, action: Action) -> Option<Event> {
        let peer = self.config.peer_address;
        match action {
            Action::Connect => {
                let config = self.config.clone();
                self.connecting = Some(Box::pin(async move {
                    tokio::time::timeout(config.connect_time, connect(&config))
                        .await
                        .unwrap_or_else(|_| {
                            Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
                        })
                }));
            }
            Action::Send(m) => {
                if let Message::Notification(n) = &m {
                    tracing::warn!(%peer, notification = %n, "sending BGP NOTIFICATION");
                    self.last_error = Some(format!("sent NOTIFICATION {n}"));
                }
                return self.send(&m).await.err().map(|e| {
                    self.last_error = Some(format!("write: {e}"));
                    Event::TcpFailed
                });
            }
            Action::Close => {
                self.connecting = None;
                if let Some(mut c) = self.conn.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), c.write.shutdown()).await;
                }
                self.buf.clear();
            }
            Action::StartTimer(t, d) => *self.timers.slot(t) = Some(Instant::now() + d),
            Action::StopTimer(t) => *self.timers.slot(t) = None,
            Action::Established(neg) => {
                tracing::info!(%peer, peer_as = neg.peer_as, hold = neg.hold_time, families = ?neg.families, "BGP session established");
                self.last_error = None;
                self.established_since = Some(std::time::Instant::now());
                self.session_restart = neg
                    .graceful_restart
                    .then(|| self.fsm.peer_restart().cloned())
                    .flatten();
                self.restarted(&neg);
                self.counters.session_up.store(true, Ordering::Relaxed);
                self.counters
                    .established_total
                    .fetch_add(1, Ordering::Relaxed);
                self.advertised.clear();
                self.sync_routes(true).await;
                if neg.graceful_restart {
                    for u in rib::end_of_rib_markers(&neg) {
                        if self.send(&Message::Update(u)).await.is_err() {
                            return Some(Event::TcpFailed);
                        }
                    }
                }
            }
            Action::Deliver(Message::Update(u)) => {
                self.counters
                    .updates_received
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(f) = u.is_end_of_rib()
                    && !self.end_of_rib_received.contains(&f)
                {
                    self.end_of_rib_received.push(f);
                }
                let eor = u
                    .is_end_of_rib()
                    .filter(|f| self.stale_families.contains(f));
                if let Some(f) = eor {
                    self.stale_families.retain(|s| *s != f);
                    if self.stale_families.is_empty() {
                        self.stale_deadline = None;
                    }
                    tracing::debug!(%peer, family = ?f, "graceful restart: End-of-RIB, stale routes of the family removed");
                }
                let (local_id, ibgp, cluster_id) = (
                    self.fsm.negotiated().map(|n| n.local_id),
                    self.fsm.negotiated().is_some_and(|n| n.ibgp),
                    self.config.cluster_id,
                );
                self.change_received(|r| {
                    rib::apply_update_with(r, &u, |route| {
                        if !ibgp {
                            // RFC 7606 §7.9/§7.10: these never come over eBGP; discarded.
                            route.originator_id = None;
                            route.cluster_list.clear();
                        }
                        !local_id.is_some_and(|id| rib::reflection_loop(route, id, cluster_id))
                    });
                    if let Some(f) = eor {
                        rib::sweep_stale(r, f);
                    }
                });
            }
            Action::Deliver(Message::RouteRefresh(_)) => {
                // Re-send everything: the peer asked for the whole table.
                self.advertised.clear();
                self.sync_routes(true).await;
            }
            Action::Deliver(_) => {}
            Action::Down(reason) => {
                let was_up = self.counters.session_up.swap(false, Ordering::Relaxed);
                match &reason {
                    DownReason::Stopped => tracing::info!(%peer, "BGP session stopped"),
                    _ if was_up => tracing::warn!(%peer, %reason, "BGP session down"),
                    _ => tracing::debug!(%peer, %reason, "BGP session attempt failed"),
                }
                if !matches!(
                    reason,
                    DownReason::ConnectFailed | DownReason::ConnectionLost
                ) || self.last_error.is_none()
                {
                    self.last_error = Some(reason.to_string());
                }
                self.established_since = None;
                self.end_of_rib_received.clear();
                self.advertised.clear();
                self.counters.prefixes_announced.store(0, Ordering::Relaxed);
                self.session_lost(&reason);
            }
        }
        None
    }

    async fn send(&mut self, m: &Message) -> io::Result<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "no connection"));
        };
        let ctx = self.fsm.negotiated().map(|n| n.ctx).unwrap_or_default();
        let bytes = m
            .to_bytes(ctx)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        // A peer that stops reading would otherwise block the loop, hold timer included: give
        // a write as long as the hold time before calling the connection dead.
        let limit = match self.fsm.negotiated().map(|n| n.hold_time) {
            Some(h) if h > 0 => Duration::from_secs(h.into()),
            _ => crate::bgp::fsm::OPEN_HOLD_TIME,
        };
        tokio::time::timeout(limit, conn.write.write_all(&bytes))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading"))??;
        if matches!(m, Message::Update(_)) {
            self.counters.updates_sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Sends what it takes for the peer to have exactly the desired routes: with `whole`, or
    /// when the table was replaced, compares every route; otherwise only the changed prefixes.
    async fn sync_routes(&mut self, whole: bool) {
        let Some(neg) = self.fsm.negotiated().cloned() else {
            return;
        };
        // Seen before reading, so a change made meanwhile wakes the loop again.
        self.desired_changed.borrow_and_update();
        let (announce, withdraw) = {
            let mut desired = lock(&self.desired);
            match desired.take_changes() {
                DesiredChanges::Prefixes(p) if !whole => {
                    rib::diff_prefixes(&self.advertised, desired.routes(), &p, &neg)
                }
                _ => {
                    let want = rib::outgoing(desired.routes(), &neg);
                    let skipped = desired.routes().len() - want.len();
                    if skipped > 0 {
                        tracing::debug!(peer = %self.config.peer_address, skipped, "routes of a family or next hop this session cannot carry");
                    }
                    rib::diff(&self.advertised, &want)
                }
            }
        };
        if announce.is_empty() && withdraw.is_empty() {
            return;
        }
        for u in rib::build_updates(&announce, &withdraw, &neg, self.config.my_asn) {
            if let Err(e) = self.send(&Message::Update(u)).await {
                self.last_error = Some(format!("write: {e}"));
                Box::pin(self.process(Event::TcpFailed)).await;
                return;
            }
        }
        tracing::debug!(peer = %self.config.peer_address, announced = announce.len(), withdrawn = withdraw.len(), "BGP routes updated");
        rib::apply_diff(&mut self.advertised, announce, &withdraw);
        self.counters
            .prefixes_announced
            .store(self.advertised.len() as u64, Ordering::Relaxed);
    }

    /// The received routes at session loss. Graceful restart, helper side (RFC 4724 §4.2):
    /// when the lost session had negotiated it and ended without a deliberate NOTIFICATION
    /// (the connection broke, or the peer went silent until the hold timer expired), the
    /// routes of the families the peer listed stay, stale, for its restart time. A failed
    /// attempt while stale routes wait leaves them to their timer; our own stop, or a
    /// NOTIFICATION otherwise (a Cease from the peer), removes everything.
    fn session_lost(&mut self, reason: &DownReason) {
        let peer = self.config.peer_address;
        let restart = self.session_restart.take();
        let abrupt = match reason {
            DownReason::ConnectionLost | DownReason::ConnectFailed => true,
            DownReason::NotificationSent(n) => n.code == wire::code::HOLD_TIMER_EXPIRED,
            DownReason::NotificationReceived(_) | DownReason::Stopped => false,
        };
        match restart {
            Some(r) if abrupt && r.restart_time > 0 => {
                let retained: Vec<Family> = r.families.iter().map(|(f, _)| *f).collect();
                for f in &retained {
                    if !self.stale_families.contains(f) {
                        self.stale_families.push(*f);
                    }
                }
                self.stale_families.retain(|f| retained.contains(f));
                self.stale_deadline = (!self.stale_families.is_empty())
                    .then(|| Instant::now() + Duration::from_secs(r.restart_time.into()));
                tracing::info!(%peer, restart_time = r.restart_time, families = ?retained, "graceful restart: keeping the peer's routes as stale");
                self.change_received(|t| {
                    rib::mark_stale(t, &retained);
                });
            }
            None if abrupt && !self.stale_families.is_empty() => {}
            _ => {
                self.stale_families.clear();
                self.stale_deadline = None;
                self.change_received(|t| t.clear());
            }
        }
    }

    /// A session is up again while stale routes wait: those the new session cannot refresh
    /// go now, the others wait for the End-of-RIB (at most [`STALE_PATH_TIME`]).
    fn restarted(&mut self, neg: &crate::bgp::fsm::Negotiated) {
        if self.stale_families.is_empty() {
            return;
        }
        let gone = rib::unrefreshable_families(&self.stale_families, neg, self.fsm.peer_restart());
        self.stale_families.retain(|f| !gone.contains(f));
        self.stale_deadline = if self.stale_families.is_empty() {
            None
        } else {
            Some(Instant::now() + STALE_PATH_TIME)
        };
        if !gone.is_empty() {
            tracing::info!(peer = %self.config.peer_address, families = ?gone, "graceful restart: the new session will not refresh these families; their stale routes removed");
            self.change_received(|t| {
                for f in &gone {
                    rib::sweep_stale(t, *f);
                }
            });
        }
    }

    /// Changes the peer's routes, then updates the counter and wakes the watchers.
    fn change_received(&self, f: impl FnOnce(&mut BTreeMap<IpNet, rib::ReceivedRoute>)) {
        let len = {
            let mut r = self.received.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut r);
            r.len()
        };
        self.counters
            .prefixes_received
            .store(len as u64, Ordering::Relaxed);
        self.received_gen.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn publish(&self) {
        let status = SessionStatus {
            state: self.fsm.state(),
            last_error: self.last_error.clone(),
            negotiated: self.fsm.negotiated().cloned(),
            established_since: self.established_since,
            end_of_rib_received: self.end_of_rib_received.clone(),
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn new_socket(addr: &IpAddr) -> io::Result<TcpSocket> {
    match addr {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
}

async fn connect(config: &PeerConfig) -> io::Result<TcpStream> {
    let socket = new_socket(&config.peer_address)?;
    set_ttl(&socket, &config.peer_address, config.ttl())?;
    if let Some(p) = &config.password {
        set_md5(&socket, config.peer_address, p.expose())?;
    }
    if let Some(src) = config.source_address {
        socket.bind(SocketAddr::new(src, 0))?;
    }
    socket.connect(config.peer()).await
}

fn listen(addr: SocketAddr, config: &PeerConfig) -> io::Result<TcpListener> {
    let socket = new_socket(&addr.ip())?;
    socket.set_reuseaddr(true)?;
    set_ttl(&socket, &addr.ip(), config.ttl())?;
    if let Some(p) = &config.password {
        // Keys set on the listener are inherited by the accepted connection.
        set_md5(&socket, config.peer_address, p.expose())?;
    }
    socket.bind(addr)?;
    socket.listen(16)
}
