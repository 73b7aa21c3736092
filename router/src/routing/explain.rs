//! The text of `metalnet-router explain node NAME` (sessions, state, routes sent and
//! received, why a peering does or does not exist) and `explain route CIDR`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::loc_rib::Desired;

/// What the daemon knows of one running session, for `explain node`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionView {
    /// The FSM state (`Established`, `Active`, ...).
    pub state: String,
    /// Time since the session became Established.
    pub uptime: Option<Duration>,
    pub last_error: Option<String>,
    /// Routes sent to the peer.
    pub sent: usize,
    /// Routes received from the peer.
    pub received: usize,
}

/// `explain node NAME`: for the local node its sessions, their state and routes; for another
/// node whether and why a peering with it exists.
pub fn node(desired: &Desired, sessions: &BTreeMap<IpAddr, SessionView>, name: &str) -> String {
    let _ = (desired, sessions, name);
    String::new()
}

/// `explain route CIDR`: the best route, the other candidates and why they lost or were
/// rejected, and the kernel route.
pub fn route(desired: &Desired, prefix: IpNet) -> String {
    let _ = (desired, prefix);
    String::new()
}
