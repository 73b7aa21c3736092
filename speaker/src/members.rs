//! Which speakers are alive: SWIM gossip through `foca` over UDP (as MetalLB uses memberlist),
//! or, with gossip off, the Node `Ready` condition.
//!
//! `foca` was chosen over `chitchat`: it is SWIM with suspicion and indirect probes (what
//! memberlist is) with no I/O or runtime of its own, so it costs one small crate plus postcard,
//! and every timing is ours to tune; `chitchat` is a scuttlebutt anti-entropy protocol with a
//! phi-accrual detector that brings its own tokio transport and zstd, and reports failures
//! more slowly by design (it accrues evidence over several heartbeats).
//!
//! # Timings (defaults, for a LAN)
//!
//! Every speaker probes one member every `probe_period` (250 ms); an unanswered direct probe
//! (`probe_rtt`, 40% of the period) is retried through up to 3 other members; a member still
//! silent at the end of the period is suspected, and declared down `suspect_timeout` (250 ms)
//! later unless it refutes. A dead speaker is therefore declared down roughly 0.5 to 1 s after
//! it dies (probe wait + one period + suspicion); memberlist's LAN defaults (1 s period,
//! suspicion multiplier 4) take several seconds. Updates are gossiped every 100 ms to 3
//! members. A speaker that leaves (SIGTERM) gossips its own Down to 3 members at once, so
//! the others act within a round trip.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::{AccumulatingRuntime, Config, Foca, Identity, OwnedNotification, PostcardCodec, Timer};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// A speaker's identity in the gossip: its node and where it listens. `incarnation` grows
/// with each start, so a restarted speaker replaces its former self at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeakerId {
    pub node: String,
    pub addr: SocketAddr,
    pub incarnation: u64,
}

impl Identity for SpeakerId {
    /// Members are unique by node name.
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(SpeakerId {
            incarnation: self.incarnation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.node.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// Gossip timings and addresses.
#[derive(Clone, Debug)]
pub struct GossipOptions {
    pub node: String,
    /// Where this speaker listens and what it tells others.
    pub addr: SocketAddr,
    pub probe_period: Duration,
    pub suspect_timeout: Duration,
}

impl GossipOptions {
    /// The foca configuration for these timings.
    pub fn foca_config(&self) -> Config {
        Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_period.mul_f64(0.4),
            num_indirect_probes: NonZeroUsize::new(3).expect("non-zero"),
            max_transmissions: NonZeroU8::new(10).expect("non-zero"),
            suspect_to_down_after: self.suspect_timeout,
            remove_down_after: Some(Duration::from_secs(60)),
            max_packet_size: NonZeroUsize::new(1400).expect("non-zero"),
            notify_down_members: true,
            periodic_announce: Some(foca::PeriodicParams {
                frequency: Duration::from_secs(5),
                num_members: NonZeroUsize::new(1).expect("non-zero"),
            }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: Duration::from_secs(10),
                num_members: NonZeroUsize::new(2).expect("non-zero"),
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: Duration::from_millis(100),
                num_members: NonZeroUsize::new(3).expect("non-zero"),
            }),
        }
    }
}

enum Command {
    Seeds(Vec<Seed>),
    Leave(oneshot::Sender<()>),
}

/// A running gossip member.
pub struct Gossip {
    commands: mpsc::UnboundedSender<Command>,
    live: watch::Receiver<BTreeSet<String>>,
}

/// A seed: a node and where its speaker should listen.
pub type Seed = (String, SocketAddr);

/// The identity to send a first Announce to a seed whose incarnation is unknown (foca
/// accepts an Announce addressed to any identity with the receiver's node name).
fn seed_id((node, addr): &Seed) -> SpeakerId {
    SpeakerId {
        node: node.clone(),
        addr: *addr,
        incarnation: 0,
    }
}

impl Gossip {
    /// Binds the UDP socket and starts the member in a task.
    pub async fn start(opts: GossipOptions) -> std::io::Result<Gossip> {
        let socket = UdpSocket::bind(opts.addr).await?;
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let id = SpeakerId {
            node: opts.node.clone(),
            addr: opts.addr,
            incarnation,
        };
        let seed = incarnation ^ (u64::from(std::process::id()) << 32);
        let foca = Foca::new(
            id,
            opts.foca_config(),
            rand::rngs::StdRng::seed_from_u64(seed),
            PostcardCodec,
        );
        let (commands, rx) = mpsc::unbounded_channel();
        let (live_tx, live) = watch::channel([opts.node.clone()].into());
        tracing::info!(node = %opts.node, addr = %opts.addr, probe_period = ?opts.probe_period, suspect_timeout = ?opts.suspect_timeout, "gossip started");
        tokio::spawn(drive(foca, socket, rx, live_tx, opts.node));
        Ok(Gossip { commands, live })
    }

    /// The live speakers (this one included), updated as the gossip learns.
    pub fn live(&self) -> watch::Receiver<BTreeSet<String>> {
        self.live.clone()
    }

    /// Announces this member to every seed address not yet known as a live member.
    pub fn set_seeds(&self, seeds: Vec<Seed>) {
        let _ = self.commands.send(Command::Seeds(seeds));
    }

    /// Leaves the cluster: tells others we are gone and stops gossiping.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), rx).await;
        }
    }
}

type Speaker = Foca<SpeakerId, PostcardCodec, rand::rngs::StdRng, foca::NoCustomBroadcast>;

struct Driver {
    foca: Speaker,
    runtime: AccumulatingRuntime<SpeakerId>,
    socket: UdpSocket,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: HashMap<u64, Timer<SpeakerId>>,
    next_timer: u64,
    /// Live members by node, with their identity.
    members: HashMap<String, SpeakerId>,
    seeds: Vec<Seed>,
    me: String,
}

impl Driver {
    /// Sends what foca wants sent, schedules its timers and applies its notifications.
    /// Returns whether the live set changed.
    async fn flush(&mut self) -> bool {
        let mut changed = false;
        while let Some((to, data)) = self.runtime.to_send() {
            if let Err(e) = self.socket.send_to(&data, to.addr).await {
                tracing::debug!(to = %to.addr, error = %e, "gossip send failed");
            }
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let seq = self.next_timer;
            self.next_timer += 1;
            self.pending.insert(seq, timer);
            self.timers.push(Reverse((Instant::now() + after, seq)));
        }
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(id) => {
                    tracing::info!(node = %id.node, addr = %id.addr, "speaker joined");
                    self.members.insert(id.node.clone(), id);
                    changed = true;
                }
                OwnedNotification::MemberDown(id) => {
                    tracing::info!(node = %id.node, "speaker gone");
                    if self.members.get(&id.node) == Some(&id) {
                        self.members.remove(&id.node);
                        changed = true;
                    }
                }
                OwnedNotification::Rename(old, new) => {
                    tracing::debug!(node = %new.node, old = old.incarnation, new = new.incarnation, "speaker restarted");
                    if self.members.contains_key(&old.node) {
                        self.members.insert(new.node.clone(), new);
                    }
                }
                OwnedNotification::Defunct => {
                    tracing::warn!("declared down by the cluster; rejoining")
                }
                OwnedNotification::Rejoin(id) => {
                    tracing::info!(incarnation = id.incarnation, "rejoined the cluster")
                }
                _ => {}
            }
        }
        changed
    }

    fn live(&self) -> BTreeSet<String> {
        self.members
            .keys()
            .cloned()
            .chain(std::iter::once(self.me.clone()))
            .collect()
    }

    fn announce_to_unknown_seeds(&mut self) {
        for seed in &self.seeds {
            if seed.0 != self.me && !self.members.contains_key(&seed.0) {
                let _ = self.foca.announce(seed_id(seed), &mut self.runtime);
            }
        }
    }
}

async fn drive(
    foca: Speaker,
    socket: UdpSocket,
    mut commands: mpsc::UnboundedReceiver<Command>,
    live_tx: watch::Sender<BTreeSet<String>>,
    me: String,
) {
    let mut d = Driver {
        foca,
        runtime: AccumulatingRuntime::new(),
        socket,
        timers: BinaryHeap::new(),
        pending: HashMap::new(),
        next_timer: 0,
        members: HashMap::new(),
        seeds: Vec::new(),
        me,
    };
    let mut buf = vec![0u8; 2048];
    // Seeds that did not answer are retried: they may start later.
    let mut reannounce = tokio::time::interval(Duration::from_secs(1));
    let far = Instant::now() + Duration::from_secs(86400 * 365);
    loop {
        let next = d.timers.peek().map(|Reverse((at, _))| *at).unwrap_or(far);
        tokio::select! {
            r = d.socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    if let Err(e) = d.foca.handle_data(&buf[..n], &mut d.runtime) {
                        tracing::debug!(%from, error = %e, "gossip packet rejected");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "gossip receive failed"),
            },
            _ = tokio::time::sleep_until(next) => {
                let now = Instant::now();
                while let Some(Reverse((at, seq))) = d.timers.peek().copied() {
                    if at > now { break; }
                    d.timers.pop();
                    if let Some(t) = d.pending.remove(&seq)
                        && let Err(e) = d.foca.handle_timer(t, &mut d.runtime) {
                        tracing::debug!(error = %e, "gossip timer failed");
                    }
                }
            }
            _ = reannounce.tick() => d.announce_to_unknown_seeds(),
            cmd = commands.recv() => match cmd {
                Some(Command::Seeds(seeds)) => {
                    d.seeds = seeds;
                    d.announce_to_unknown_seeds();
                }
                Some(Command::Leave(done)) => {
                    tracing::info!("leaving the gossip");
                    if let Err(e) = d.foca.leave_cluster(&mut d.runtime) {
                        tracing::warn!(error = %e, "leaving the gossip failed");
                    }
                    d.flush().await;
                    let _ = done.send(());
                    return;
                }
                None => return,
            },
        }
        if d.flush().await {
            let live = d.live();
            live_tx.send_replace(live);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(node: &str, port: u16) -> GossipOptions {
        GossipOptions {
            node: node.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            probe_period: Duration::from_millis(100),
            suspect_timeout: Duration::from_millis(100),
        }
    }

    fn free_port() -> u16 {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn wait_live(g: &Gossip, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let mut rx = g.live();
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if *rx.borrow_and_update() == want {
                    return;
                }
                rx.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("live set never became {want:?}: {:?}", *g.live().borrow()));
    }

    #[tokio::test]
    async fn members_join_leave_and_rejoin() {
        let ports = [free_port(), free_port(), free_port()];
        let addrs: Vec<Seed> = ["a", "b", "c"]
            .iter()
            .zip(ports)
            .map(|(n, p)| (n.to_string(), SocketAddr::from(([127, 0, 0, 1], p))))
            .collect();
        let a = Gossip::start(opts("a", ports[0])).await.unwrap();
        let b = Gossip::start(opts("b", ports[1])).await.unwrap();
        let c = Gossip::start(opts("c", ports[2])).await.unwrap();
        a.set_seeds(addrs.clone());
        b.set_seeds(addrs.clone());
        c.set_seeds(addrs.clone());
        for g in [&a, &b, &c] {
            wait_live(g, &["a", "b", "c"]).await;
        }
        // A graceful leave is seen at once.
        let started = Instant::now();
        c.leave().await;
        wait_live(&a, &["a", "b"]).await;
        wait_live(&b, &["a", "b"]).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // A restarted c (new incarnation, same node) is accepted again.
        drop(c);
        let c2 = Gossip::start(opts("c", ports[2])).await.unwrap();
        c2.set_seeds(addrs.clone());
        wait_live(&a, &["a", "b", "c"]).await;
        wait_live(&c2, &["a", "b", "c"]).await;
        // A silent death (dropped: the driver stops without leaving) is found by probing.
        let started = Instant::now();
        drop(b);
        wait_live(&a, &["a", "c"]).await;
        wait_live(&c2, &["a", "c"]).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
