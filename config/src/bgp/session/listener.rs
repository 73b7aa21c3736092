//! A passive BGP listener shared by the sessions of one node: the node listens once on its
//! BGP port, and each passive session takes its peer's connections from it, matched by the
//! peer's source address.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::bgp::peer::Password;
use crate::sys::tcp::set_md5;

/// Connections a session has not taken yet; more are closed (the peer retries).
const QUEUE: usize = 4;

/// A listening socket whose accepted connections go to the session registered for the
/// connection's source address; connections from other addresses are closed at once.
pub struct Listener {
    local: SocketAddr,
    socket: Arc<TcpListener>,
    peers: Arc<Mutex<HashMap<IpAddr, Slot>>>,
    next_id: AtomicU64,
    /// Dropped with the listener: ends the accept loop.
    _closed: watch::Sender<()>,
}

struct Slot {
    id: u64,
    tx: mpsc::Sender<TcpStream>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local)
            .field("peers", &lock(&self.peers).len())
            .finish()
    }
}

impl Listener {
    /// Listens on `addr` and spawns the accept loop on the current tokio runtime. An IPv6
    /// wildcard address (`[::]`) accepts IPv4 peers too. The loop ends when the listener is
    /// dropped (sessions using it hold it through their [`PeerConfig`](crate::bgp::PeerConfig)).
    pub fn bind(addr: SocketAddr) -> io::Result<Arc<Listener>> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => {
                let s = TcpSocket::new_v6()?;
                set_v6only(&s, false)?;
                s
            }
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let socket = Arc::new(socket.listen(128)?);
        let local = socket.local_addr()?;
        let peers = Arc::new(Mutex::new(HashMap::new()));
        let (closed_tx, closed_rx) = watch::channel(());
        tokio::spawn(accept_loop(socket.clone(), peers.clone(), closed_rx));
        Ok(Arc::new(Listener {
            local,
            socket,
            peers,
            next_id: AtomicU64::new(0),
            _closed: closed_tx,
        }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address as the listening socket sees it: IPv4 peers of an IPv6 socket appear
    /// IPv4-mapped, which is how the kernel wants their MD5 keys.
    fn socket_addr_of(&self, peer: IpAddr) -> io::Result<IpAddr> {
        match (self.local, peer) {
            (SocketAddr::V6(_), IpAddr::V4(a)) => Ok(IpAddr::V6(a.to_ipv6_mapped())),
            (SocketAddr::V4(_), IpAddr::V6(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "IPv6 peer {peer} cannot connect to the IPv4 listener {}",
                    self.local
                ),
            )),
            _ => Ok(peer),
        }
    }

    /// Registers the session of `peer`: its connections are delivered to the returned
    /// registration until it is dropped, and its TCP MD5 key is set on the listening socket
    /// meanwhile. A later registration of the same address replaces this one.
    pub(crate) fn register(
        self: &Arc<Self>,
        peer: IpAddr,
        password: Option<&Password>,
    ) -> io::Result<Registration> {
        let peer = peer.to_canonical();
        let key_addr = self.socket_addr_of(peer)?;
        if let Some(p) = password {
            set_md5(&*self.socket, key_addr, p.expose())?;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if lock(&self.peers).insert(peer, Slot { id, tx }).is_some() {
            tracing::warn!(%peer, listener = %self.local, "a second BGP session registered for the same peer address; it replaces the first");
        }
        Ok(Registration {
            listener: self.clone(),
            peer,
            key_addr,
            has_key: password.is_some(),
            id,
            rx,
        })
    }
}

/// A session's place on a [`Listener`]; dropping it unregisters the peer and removes its key.
pub(crate) struct Registration {
    listener: Arc<Listener>,
    peer: IpAddr,
    key_addr: IpAddr,
    has_key: bool,
    id: u64,
    rx: mpsc::Receiver<TcpStream>,
}

impl Registration {
    /// The next connection from the peer.
    pub(crate) async fn accept(&mut self) -> Option<TcpStream> {
        self.rx.recv().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut peers = lock(&self.listener.peers);
        // A newer registration of the same address owns the slot (and the key) now.
        if peers.get(&self.peer).is_some_and(|s| s.id == self.id) {
            peers.remove(&self.peer);
            drop(peers);
            if self.has_key
                && let Err(e) = set_md5(&*self.listener.socket, self.key_addr, &[])
            {
                tracing::debug!(peer = %self.peer, error = %e, "removing the TCP MD5 key from the BGP listener failed");
            }
        }
    }
}

async fn accept_loop(
    socket: Arc<TcpListener>,
    peers: Arc<Mutex<HashMap<IpAddr, Slot>>>,
    mut closed: watch::Receiver<()>,
) {
    let local = socket.local_addr().ok();
    loop {
        let (stream, from) = tokio::select! {
            // Only ever an error: the listener was dropped.
            _ = closed.changed() => return,
            r = socket.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: give the system a moment.
                    tracing::warn!(?local, error = %e, "BGP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ip = from.ip().to_canonical();
        let tx = lock(&peers).get(&ip).map(|s| s.tx.clone());
        match tx {
            None => {
                tracing::debug!(%from, ?local, "BGP connection from an address with no session; closed");
            }
            Some(tx) => {
                if tx.try_send(stream).is_err() {
                    tracing::debug!(%from, ?local, "BGP session not taking connections; closed");
                }
            }
        }
    }
}

/// Nothing panics while the map is locked; a poisoned lock still holds a whole map.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_v6only(socket: &TcpSocket, only: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value: libc::c_int = only.into();
    // SAFETY: the pointer and length describe `value`, a live c_int borrowed for the call;
    // the kernel only reads it. Errors come back through the return value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
