//! BGP pod routing as kube-router does it (`pkg/controllers/routing/`), laid out by concern.
//! Pure parts (no I/O, tested without a network):
//!
//! - [`options`]: kube-router's routing flags with its names and defaults, validated.
//! - [`annotations`]: the node annotations (`kube-router.io/...`) parsed per node, each
//!   problem naming the annotation and the reason; the last good value stays in force.
//! - [`topology`]: which BGP sessions this node should have (full mesh, per-node ASN, route
//!   reflectors, external peers), and why a peering does or does not exist.
//! - [`policy`]: kube-router's export and import policies: what each peer is sent (pod CIDRs,
//!   Service VIPs, communities, AS-path prepend, next hop) and which received routes count.
//! - [`loc_rib`]: best path per prefix over every session's received routes, what a route
//!   reflector reflects, and the kernel routes wanted (direct when the next hop is on a
//!   connected subnet).
//! - [`explain`]: the text of `explain node` and `explain route`.
//!
//! Edges:
//!
//! - [`kernel`]: routes with protocol 17 in the main table through rtnetlink: diff, batch
//!   apply, periodic resync, removal on clean shutdown.
//! - [`sessions`]: one engine session per planned peer; a changed peer resets only its own
//!   session, a changed export table only sends UPDATEs.
//! - [`daemon`]: the loop from cluster state and received routes to sessions and kernel;
//!   Events for bad annotations; [`metrics`] with kube-router's metric names.

pub mod annotations;
pub mod daemon;
pub mod explain;
pub mod kernel;
pub mod loc_rib;
pub mod metrics;
pub mod options;
pub mod policy;
pub mod sessions;
pub mod topology;
pub mod tunnel;

/// kube-router's route protocol number: its constant `ZebraOriginator = 0x11` (meant as
/// RTPROT_ZEBRA, which is 11) is 17, and `ip route` shows `proto 17`. Using the same number
/// lets a node migrating from kube-router find and clean up the routes it left.
pub const RTPROT_KUBE_ROUTER: u8 = 17;
