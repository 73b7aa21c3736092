//! The tokio edge of a BGP session: sockets (source address, TTL, TCP MD5, connect timeout, or
//! a passive listener), framing, timers, and the desired-routes diff, driving [`Fsm`](super::fsm::Fsm).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::watch;

use super::fsm::{Negotiated, State};
use super::peer::PeerConfig;
pub use super::rib::RouteAttrs;
use super::rib::{DesiredRoutes, ReceivedRoute};

mod listener;
mod runner;

pub use listener::Listener;
use runner::Runner;

/// The session's state as the status and metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    pub state: State,
    /// Why the session last went down or failed to come up.
    pub last_error: Option<String>,
    pub negotiated: Option<Negotiated>,
    /// When the session last reached Established; `None` while it is not.
    pub established_since: Option<std::time::Instant>,
    /// Families whose End-of-RIB the peer sent in this session: its initial table of them is
    /// complete (a restarting router waits for these before removing routes it kept).
    pub end_of_rib_received: Vec<super::fsm::Family>,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub updates_sent: AtomicU64,
    pub updates_received: AtomicU64,
    /// Prefixes the peer currently has from us.
    pub prefixes_announced: AtomicU64,
    /// Prefixes we currently hold from the peer (stale ones included).
    pub prefixes_received: AtomicU64,
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
    /// Bumped by the session task on every change to `received`.
    received_gen: watch::Receiver<u64>,
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
            established_since: None,
            end_of_rib_received: Vec::new(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let received = Received::default();
        let (received_tx, received_rx) = watch::channel(0u64);
        let counters = Arc::new(Counters::default());
        let runner = Runner::new(
            config.clone(),
            desired.clone(),
            desired_rx,
            received.clone(),
            received_tx,
            counters.clone(),
            status_tx,
        );
        let task = tokio::spawn(runner.run(stop_rx));
        SessionHandle {
            peer: config.peer(),
            desired,
            desired_changed: desired_tx,
            status: status_rx,
            received,
            received_gen: received_rx,
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

    /// A generation number bumped on every change to [`SessionHandle::received`] (an UPDATE
    /// applied, the table cleared at session loss, stale routes swept), so a consumer can
    /// re-read the table as soon as it changes.
    pub fn watch_received(&self) -> watch::Receiver<u64> {
        self.received_gen.clone()
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

/// The lock cannot be poisoned by our code (nothing panics while holding it); if it were,
/// the table inside is still whole.
fn lock(desired: &Desired) -> std::sync::MutexGuard<'_, DesiredRoutes> {
    desired.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
