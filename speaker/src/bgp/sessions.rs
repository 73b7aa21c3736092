//! One BGP session per BGPPeer that selects this node: started, restarted with new
//! parameters, fed the planned routes, and stopped when the peer goes away.

use std::collections::BTreeMap;
use std::sync::Arc;

use metalnet::bgp::{Password, PeerConfig, Session, SessionHandle, SessionStatus};

use super::metrics::{BgpMetrics, PeerLabel};
use super::plan::{NodePlan, RouteChanges};

struct Running {
    /// The parameters the session runs with (Debug text: the password shows as `***`).
    fingerprint: String,
    password: Option<Password>,
    handle: SessionHandle,
    label: PeerLabel,
    desired: usize,
    /// The [`NodePlan::generation`] whose routes the session has.
    generation: u64,
    /// `updates_sent` already added to the metric.
    updates_counted: u64,
    /// `updates_treated_as_withdraw` and `attributes_discarded` already added.
    withdraw_counted: u64,
    discard_counted: u64,
}

/// The running sessions, by BGPPeer `namespace/name`.
#[derive(Default)]
pub struct Sessions {
    running: BTreeMap<String, Running>,
    /// Why a selected peer has no session, by `namespace/name` (for logs and explain).
    pub broken: BTreeMap<String, String>,
}

/// What a running session needs to get from the routes of plan `had` to those of `plan`.
#[derive(Debug, PartialEq)]
enum RouteUpdate<'a> {
    /// It has them already.
    Nothing,
    /// These changes (the plan follows the one the session has).
    Changes(&'a RouteChanges),
    /// The whole table (a plan made from scratch, or one in between was missed).
    Whole,
}

fn route_update<'a>(plan: &'a NodePlan, peer: &str, had: u64) -> RouteUpdate<'a> {
    if had == plan.generation && plan.generation != 0 {
        return RouteUpdate::Nothing;
    }
    match &plan.route_changes {
        Some(changes) if had.checked_add(1) == Some(plan.generation) => match changes.get(peer) {
            Some(c) if !c.is_empty() => RouteUpdate::Changes(c),
            _ => RouteUpdate::Nothing,
        },
        _ => RouteUpdate::Whole,
    }
}

fn fingerprint(c: &PeerConfig) -> String {
    format!("{c:?}")
}

/// The metric label of a peer: its address and port, as MetalLB's `peer` label.
pub fn peer_label(c: &PeerConfig) -> PeerLabel {
    PeerLabel {
        peer: std::net::SocketAddr::new(c.peer_address, c.peer_port).to_string(),
    }
}

impl Sessions {
    /// Makes the sessions match the plan. Must run inside a tokio runtime.
    pub fn apply(&mut self, plan: &NodePlan, metrics: &BgpMetrics) {
        let mut broken = BTreeMap::new();
        let mut stopping = Vec::new();
        for (key, peer) in &plan.peers {
            let config = match &peer.config {
                Ok(c) => c,
                Err(e) => {
                    broken.insert(key.clone(), e.clone());
                    if let Some(old) = self.running.remove(key) {
                        stopping.push((key.clone(), old));
                    }
                    continue;
                }
            };
            let fp = fingerprint(config);
            let same = self
                .running
                .get(key)
                .is_some_and(|r| r.fingerprint == fp && r.password == config.password);
            if same {
                if let Some(r) = self.running.get_mut(key) {
                    r.desired = peer.routes.len();
                    match route_update(plan, key, r.generation) {
                        RouteUpdate::Nothing => {}
                        RouteUpdate::Changes(c) => r
                            .handle
                            .update_routes(c.iter().map(|(p, a)| (*p, a.clone()))),
                        RouteUpdate::Whole => r.handle.set_routes(peer.routes.clone()),
                    }
                    r.generation = plan.generation;
                }
            } else {
                if let Some(old) = self.running.remove(key) {
                    tracing::info!(peer = %key, "BGPPeer changed: restarting its session");
                    stopping.push((key.clone(), old));
                }
                tracing::info!(peer = %key, address = %config.peer_address, port = config.peer_port,
                    my_asn = config.my_asn, peer_asn = config.peer_asn, dynamic_asn = ?config.dynamic_asn,
                    md5 = config.password.is_some(), "starting BGP session");
                // The routes go in at the start: with graceful restart, a session that
                // reached Established before them would send End-of-RIB with an empty table.
                let handle = Session::spawn_with_routes(config.clone(), peer.routes.clone());
                spawn_state_logger(key.clone(), &handle);
                self.running.insert(
                    key.clone(),
                    Running {
                        fingerprint: fp,
                        password: config.password.clone(),
                        handle,
                        label: peer_label(config),
                        desired: peer.routes.len(),
                        generation: plan.generation,
                        updates_counted: 0,
                        withdraw_counted: 0,
                        discard_counted: 0,
                    },
                );
            }
        }
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|k| !plan.peers.contains_key(*k) || broken.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(old) = self.running.remove(&key) {
                tracing::info!(peer = %key, "BGPPeer no longer selects this node: stopping its session");
                stopping.push((key, old));
            }
        }
        for (_, old) in stopping {
            // Forget the metrics of a stopped session unless a new one uses the same label.
            if !self.running.values().any(|r| r.label == old.label) {
                metrics.forget(&old.label);
            }
            tokio::spawn(old.handle.shutdown());
        }
        for (key, why) in &broken {
            if self.broken.get(key) != Some(why) {
                tracing::warn!(peer = %key, problem = %why, "BGPPeer cannot be used");
            }
        }
        self.broken = broken;
    }

    /// The status of every running session, by BGPPeer `namespace/name`.
    pub fn statuses(&self) -> BTreeMap<String, SessionStatus> {
        self.running
            .iter()
            .map(|(k, r)| (k.clone(), r.handle.status()))
            .collect()
    }

    /// Copies the sessions' counters into the metrics.
    pub fn refresh_metrics(&mut self, metrics: &BgpMetrics) {
        for r in self.running.values_mut() {
            let c = r.handle.counters();
            let up = c.session_up.load(std::sync::atomic::Ordering::Relaxed);
            let announced = c
                .prefixes_announced
                .load(std::sync::atomic::Ordering::Relaxed);
            let sent = c.updates_sent.load(std::sync::atomic::Ordering::Relaxed);
            metrics
                .session_up
                .get_or_create(&r.label)
                .set(i64::from(up));
            metrics
                .announced_prefixes
                .get_or_create(&r.label)
                .set(announced as i64);
            metrics
                .pending_prefixes
                .get_or_create(&r.label)
                .set(r.desired.saturating_sub(announced as usize) as i64);
            metrics
                .updates
                .get_or_create(&r.label)
                .inc_by(sent.saturating_sub(r.updates_counted));
            r.updates_counted = r.updates_counted.max(sent);
            let withdrawn = c
                .updates_treated_as_withdraw
                .load(std::sync::atomic::Ordering::Relaxed);
            metrics
                .updates_treated_as_withdraw
                .get_or_create(&r.label)
                .inc_by(withdrawn.saturating_sub(r.withdraw_counted));
            r.withdraw_counted = r.withdraw_counted.max(withdrawn);
            let discarded = c
                .attributes_discarded
                .load(std::sync::atomic::Ordering::Relaxed);
            metrics
                .attributes_discarded
                .get_or_create(&r.label)
                .inc_by(discarded.saturating_sub(r.discard_counted));
            r.discard_counted = r.discard_counted.max(discarded);
        }
    }

    /// Stops every session: Cease (the peer withdraws our routes at once), or with graceful
    /// restart negotiated a plain close (the peer keeps them for the restart time).
    pub fn take_all(&mut self) -> Vec<SessionHandle> {
        std::mem::take(&mut self.running)
            .into_values()
            .map(|r| r.handle)
            .collect()
    }
}

/// Logs every state change of a session (with the reason it went down).
fn spawn_state_logger(key: String, handle: &SessionHandle) {
    let mut rx = handle.watch_status();
    tokio::spawn(async move {
        let mut last = rx.borrow().state;
        while rx.changed().await.is_ok() {
            let s = rx.borrow_and_update().clone();
            if s.state == last {
                continue;
            }
            match (&s.last_error, s.state) {
                (_, metalnet::bgp::State::Established) => {
                    tracing::info!(peer = %key, state = ?s.state, "BGP session established")
                }
                (Some(e), _) => {
                    tracing::info!(peer = %key, state = ?s.state, reason = %e, "BGP session state")
                }
                (None, _) => tracing::debug!(peer = %key, state = ?s.state, "BGP session state"),
            }
            last = s.state;
        }
    });
}

/// Shared between the daemon loop and the metrics refresher.
pub type SharedSessions = Arc<std::sync::Mutex<Sessions>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(generation: u64, changes: Option<&[(&str, usize)]>) -> NodePlan {
        let route = |i: usize| -> (ipnet::IpNet, Option<metalnet::bgp::RouteAttrs>) {
            (format!("2001:db8::{i:x}/128").parse().unwrap(), None)
        };
        NodePlan {
            generation,
            route_changes: changes.map(|c| {
                c.iter()
                    .map(|(peer, n)| (peer.to_string(), (0..*n).map(route).collect()))
                    .collect()
            }),
            ..NodePlan::default()
        }
    }

    #[test]
    fn sessions_get_the_changes_only_when_they_have_the_previous_plan() {
        let p = plan(5, Some(&[("ns/a", 2), ("ns/b", 0)]));
        match route_update(&p, "ns/a", 4) {
            RouteUpdate::Changes(c) => assert_eq!(c.len(), 2),
            other => panic!("{other:?}"),
        }
        // No change for the peer, or the plan applied already: nothing to send.
        assert_eq!(route_update(&p, "ns/b", 4), RouteUpdate::Nothing);
        assert_eq!(route_update(&p, "ns/c", 4), RouteUpdate::Nothing);
        assert_eq!(route_update(&p, "ns/a", 5), RouteUpdate::Nothing);
        // A plan missed in between, or one made from scratch: the whole table.
        assert_eq!(route_update(&p, "ns/a", 3), RouteUpdate::Whole);
        assert_eq!(route_update(&plan(6, None), "ns/a", 5), RouteUpdate::Whole);
        // Plans of the pure `plan` function carry no generation: always whole.
        assert_eq!(route_update(&plan(0, None), "ns/a", 0), RouteUpdate::Whole);
    }
}
