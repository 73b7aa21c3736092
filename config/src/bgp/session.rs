//! The tokio edge of a BGP session: sockets (source address, TTL, TCP MD5, connect timeout, or
//! a passive listener), framing, timers, and the desired-routes diff, driving [`Fsm`].

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::fsm::{Action, DownReason, Event, Fsm, Negotiated, State, Timer};
use super::peer::{Password, PeerConfig};
pub use super::rib::RouteAttrs;
use super::rib::{self, Announced, DesiredChanges, DesiredRoutes, ReceivedRoute};
use super::wire::{self, Message, WireContext};

/// The session's state as the status and metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    pub state: State,
    /// Why the session last went down or failed to come up.
    pub last_error: Option<String>,
    pub negotiated: Option<Negotiated>,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub updates_sent: AtomicU64,
    pub updates_received: AtomicU64,
    /// Prefixes the peer currently has from us.
    pub prefixes_announced: AtomicU64,
    pub session_up: AtomicBool,
    /// How often the session reached Established.
    pub established_total: AtomicU64,
    /// Received UPDATEs whose routes were withdrawn for a malformed attribute (RFC 7606).
    pub updates_treated_as_withdraw: AtomicU64,
    /// Malformed attributes dropped from received UPDATEs (RFC 7606 attribute discard).
    pub attributes_discarded: AtomicU64,
}

/// The routes to announce, shared by the handle (writes) and the session task (reads).
type Desired = Arc<Mutex<DesiredRoutes>>;
type Received = Arc<Mutex<BTreeMap<IpNet, ReceivedRoute>>>;

/// Controls a running session; dropping it stops the session (like [`SessionHandle::shutdown`]
/// without waiting).
#[derive(Debug)]
pub struct SessionHandle {
    peer: SocketAddr,
    desired: Desired,
    /// Wakes the session task when `desired` changed.
    desired_changed: watch::Sender<()>,
    status: watch::Receiver<SessionStatus>,
    received: Received,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub struct Session;

impl Session {
    /// Starts a session task on the current tokio runtime, with no routes yet.
    pub fn spawn(config: PeerConfig) -> SessionHandle {
        Self::spawn_with_routes(config, BTreeMap::new())
    }

    /// Starts a session task that announces `routes` from the start. With graceful restart
    /// this matters: the End-of-RIB follows the first table sent, and the peer then sweeps
    /// every stale route of ours not in it, so routes set only after [`Session::spawn`] could
    /// lose the race with Established and flap.
    pub fn spawn_with_routes(
        config: PeerConfig,
        routes: BTreeMap<IpNet, RouteAttrs>,
    ) -> SessionHandle {
        let desired = Arc::new(Mutex::new(DesiredRoutes::new(routes)));
        let (desired_tx, desired_rx) = watch::channel(());
        let (status_tx, status_rx) = watch::channel(SessionStatus {
            state: State::Idle,
            last_error: None,
            negotiated: None,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let received = Received::default();
        let counters = Arc::new(Counters::default());
        let runner = Runner {
            fsm: Fsm::new(config.fsm_config()),
            config: config.clone(),
            conn: None,
            connecting: None,
            listener: None,
            timers: Timers::default(),
            desired: desired.clone(),
            desired_changed: desired_rx,
            advertised: BTreeMap::new(),
            received: received.clone(),
            counters: counters.clone(),
            status: status_tx,
            last_error: None,
            buf: Vec::new(),
        };
        let task = tokio::spawn(runner.run(stop_rx));
        SessionHandle {
            peer: config.peer(),
            desired,
            desired_changed: desired_tx,
            status: status_rx,
            received,
            counters,
            stop: stop_tx,
            task: Some(task),
        }
    }
}

impl SessionHandle {
    /// Replaces the routes to announce; the session compares the whole table with what the
    /// peer has and sends the difference.
    pub fn set_routes(&self, desired: BTreeMap<IpNet, RouteAttrs>) {
        lock(&self.desired).replace(desired);
        self.desired_changed.send_replace(());
    }

    /// Sets (`Some`) or removes (`None`) single routes; the session looks at these prefixes
    /// only, so the cost follows the change, not the table. It still sends the whole table
    /// when the session (re)establishes and on ROUTE-REFRESH.
    pub fn update_routes(&self, changes: impl IntoIterator<Item = (IpNet, Option<RouteAttrs>)>) {
        if lock(&self.desired).update(changes) {
            self.desired_changed.send_replace(());
        }
    }

    pub fn state(&self) -> State {
        self.status.borrow().state
    }

    pub fn status(&self) -> SessionStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<SessionStatus> {
        self.status.clone()
    }

    /// Waits until the session is in `state`; false on timeout.
    pub async fn wait_for(&self, state: State, timeout: Duration) -> bool {
        let mut rx = self.status.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| s.state == state))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The routes the peer announced to us (empty while the session is down).
    pub fn received(&self) -> BTreeMap<IpNet, ReceivedRoute> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Stops the session: a Cease NOTIFICATION (administrative shutdown), or, with graceful
    /// restart negotiated, just a close so the peer keeps our routes. Waits for the task.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

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

struct Runner {
    config: PeerConfig,
    fsm: Fsm,
    conn: Option<Conn>,
    connecting: Option<Connecting>,
    listener: Option<TcpListener>,
    timers: Timers,
    desired: Desired,
    desired_changed: watch::Receiver<()>,
    /// What the peer has from us (Adj-RIB-Out).
    advertised: BTreeMap<IpNet, Announced>,
    received: Received,
    counters: Arc<Counters>,
    status: watch::Sender<SessionStatus>,
    last_error: Option<String>,
    buf: Vec<u8>,
}

/// What woke the session loop.
enum Wake {
    Stop,
    DesiredChanged,
    Timer,
    Connected(io::Result<TcpStream>),
    Accepted(io::Result<(TcpStream, SocketAddr)>),
    Read(io::Result<usize>),
}

impl Runner {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let peer = self.config.peer_address;
        if self.config.listen.is_some() {
            self.bind_listener(&mut stop).await;
        }
        self.process(Event::ManualStart).await;
        loop {
            let next_timer = self.timers.next();
            let wake = tokio::select! {
                r = stop.wait_for(|s| *s) => { let _ = r; Wake::Stop }
                r = self.desired_changed.changed() => match r {
                    Ok(()) => Wake::DesiredChanged,
                    Err(_) => Wake::Stop,
                },
                _ = sleep_until_opt(next_timer), if next_timer.is_some() => Wake::Timer,
                r = async { self.connecting.as_mut().expect("guarded").await }, if self.connecting.is_some() => Wake::Connected(r),
                r = async { self.listener.as_ref().expect("guarded").accept().await }, if self.listener.is_some() => Wake::Accepted(r),
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
            Ok(a) => a.ip(),
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
                if let Ok(mut r) = self.received.lock() {
                    rib::apply_update(&mut r, &u);
                }
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
                self.advertised.clear();
                self.counters.prefixes_announced.store(0, Ordering::Relaxed);
                if let Ok(mut r) = self.received.lock() {
                    r.clear();
                }
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
            _ => super::fsm::OPEN_HOLD_TIME,
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

    fn publish(&self) {
        let status = SessionStatus {
            state: self.fsm.state(),
            last_error: self.last_error.clone(),
            negotiated: self.fsm.negotiated().cloned(),
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }
}

/// The lock cannot be poisoned by our code (nothing panics while holding it); if it were,
/// the table inside is still whole.
fn lock(desired: &Desired) -> std::sync::MutexGuard<'_, DesiredRoutes> {
    desired.lock().unwrap_or_else(|e| e.into_inner())
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
        set_md5(&socket, config.peer_address, p)?;
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
        set_md5(&socket, config.peer_address, p)?;
    }
    socket.bind(addr)?;
    socket.listen(16)
}

fn setsockopt<T>(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live, initialised T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_ttl(socket: &TcpSocket, family: &IpAddr, ttl: u32) -> io::Result<()> {
    let ttl = ttl as libc::c_int;
    match family {
        IpAddr::V4(_) => setsockopt(socket, libc::IPPROTO_IP, libc::IP_TTL, &ttl),
        IpAddr::V6(_) => setsockopt(socket, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &ttl),
    }
}

/// `struct tcp_md5sig` from linux/tcp.h (not in the libc crate).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: u32,
    key: [u8; 80],
}

/// Sets the RFC 2385 TCP MD5 key for segments to and from `peer`.
fn set_md5(socket: &TcpSocket, peer: IpAddr, password: &Password) -> io::Result<()> {
    let key = password.expose();
    if key.len() > 80 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP MD5 password longer than 80 octets",
        ));
    }
    // SAFETY: all-zero is a valid sockaddr_storage and a valid TcpMd5Sig.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    match peer {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe {
                &mut *(&mut sig.addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut sig.addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
        }
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    setsockopt(socket, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::wire::Notification;
    use std::net::Ipv4Addr;

    #[test]
    fn md5_sig_struct_matches_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<TcpMd5Sig>(), 216);
    }

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

        let attrs = RouteAttrs {
            communities: vec![0xfde8_0001],
            ..RouteAttrs::default()
        };
        a.set_routes([("203.0.113.5/32".parse().unwrap(), attrs.clone())].into());
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.received().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = b.received();
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
}
