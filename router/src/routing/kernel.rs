//! The kernel edge: routes with protocol [`super::RTPROT_KUBE_ROUTER`] in the main table.
//! The wanted set is diffed against what the kernel has and applied with many requests in
//! flight on one netlink socket; a periodic resync re-reads the table and repairs changes
//! made behind our back; a clean shutdown without graceful restart removes them.
//!
//! Routes of any other protocol are never touched: a destination that already has one is
//! left alone (reported as a conflict), new routes are added with `NLM_F_EXCL` so one that
//! appeared since the last read is not overwritten either, and deletes name protocol 17,
//! which the kernel matches exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::IpNet;
use metalnet::netlink::{Netlink, NetlinkError, RT_TABLE_MAIN, Route};

use super::RTPROT_KUBE_ROUTER;
use super::loc_rib::KernelRoute;

/// How many route requests are in flight at once on the socket: enough to keep the kernel
/// busy (10,000 routes in well under a second), small enough for the socket's buffers.
const CONCURRENCY: usize = 512;

/// One of our routes as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Installed {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
}

/// The main table as far as the diff cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Our routes (protocol 17) by destination; IPv6 may hold several for one destination.
    pub ours: BTreeMap<IpNet, BTreeSet<Installed>>,
    /// Destinations that have a unicast route of another protocol: never ours to change.
    pub foreign: BTreeSet<IpNet>,
}

impl Observed {
    /// Our routes, all destinations.
    pub fn count(&self) -> usize {
        self.ours.values().map(BTreeSet::len).sum()
    }

    /// Sorts the routes of one dump into ours and foreign.
    pub fn from_routes(routes: impl IntoIterator<Item = Route>) -> Observed {
        let mut o = Observed::default();
        for r in routes {
            if r.table != u32::from(RT_TABLE_MAIN) {
                continue;
            }
            if r.protocol == RTPROT_KUBE_ROUTER {
                o.ours.entry(r.dst).or_default().insert(Installed {
                    dst: r.dst,
                    gateway: r.gateway,
                });
            } else if r.unicast {
                o.foreign.insert(r.dst);
            }
        }
        o
    }

    fn record(&mut self, op: &KernelOp) {
        match op {
            KernelOp::Add(r) | KernelOp::Replace(r) => {
                // A replace took the place of the one route we had there (extras, if any,
                // are deleted by their own ops).
                let set = self.ours.entry(r.dst).or_default();
                set.retain(|i| i.gateway == Some(r.gateway));
                set.insert(Installed {
                    dst: r.dst,
                    gateway: Some(r.gateway),
                });
            }
            KernelOp::Delete(i) => {
                if let Some(set) = self.ours.get_mut(&i.dst) {
                    set.remove(i);
                    if set.is_empty() {
                        self.ours.remove(&i.dst);
                    }
                }
            }
        }
    }
}

/// One change to the kernel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelOp {
    /// A destination we have no route for yet (`NLM_F_EXCL`: fails if one appeared).
    Add(KernelRoute),
    /// A destination we have a route for, with another gateway.
    Replace(KernelRoute),
    Delete(Installed),
}

/// What turns `have` into `want`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelDiff {
    /// Adds and replaces; run before `removals` so a changed route never has a gap.
    pub writes: Vec<KernelOp>,
    pub removals: Vec<KernelOp>,
    /// Wanted destinations left alone because a route of another protocol holds them.
    pub conflicts: Vec<IpNet>,
}

impl KernelDiff {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.removals.is_empty()
    }
}

/// The changes that bring our routes in `have` to `want`. Without `sweep` (graceful restart
/// keeping the routes of before the restart until the peers have re-sent theirs) routes not
/// wanted stay. Pure.
pub fn diff(want: &BTreeMap<IpNet, KernelRoute>, have: &Observed, sweep: bool) -> KernelDiff {
    let mut d = KernelDiff::default();
    for (dst, route) in want {
        let ours = have.ours.get(dst);
        if have.foreign.contains(dst) && ours.is_none() {
            d.conflicts.push(*dst);
            continue;
        }
        let wanted = Installed {
            dst: *dst,
            gateway: Some(route.gateway),
        };
        match ours {
            None => d.writes.push(KernelOp::Add(route.clone())),
            Some(set) => {
                if !set.contains(&wanted) {
                    d.writes.push(KernelOp::Replace(route.clone()));
                }
                for extra in set.iter().filter(|i| **i != wanted) {
                    d.removals.push(KernelOp::Delete(extra.clone()));
                }
            }
        }
    }
    if sweep {
        for (dst, set) in &have.ours {
            if !want.contains_key(dst) {
                d.removals.extend(set.iter().cloned().map(KernelOp::Delete));
            }
        }
    }
    d
}

/// A kernel request that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct OpError {
    pub op: String,
    #[source]
    pub source: NetlinkError,
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub written: usize,
    pub removed: usize,
    pub failed: Vec<OpError>,
    pub conflicts: Vec<IpNet>,
    /// The table was read from the kernel for this sync (first sync, resync period, or
    /// after a failure).
    pub reread: bool,
    pub took: Duration,
}

/// Our routes in the kernel, with a cached view of the table between resyncs.
pub struct Kernel {
    nl: Netlink,
    observed: Option<Observed>,
    observed_at: Instant,
    resync: Duration,
    /// Conflicts already logged, so each is logged once.
    conflicts: BTreeSet<IpNet>,
}

fn route_of(dst: IpNet, gateway: Option<IpAddr>) -> Route {
    Route {
        dst,
        gateway,
        // The kernel picks the interface from the gateway: the next hop is on a connected
        // subnet (kube-router installs nothing else without an overlay).
        oif: None,
        onlink: false,
        protocol: RTPROT_KUBE_ROUTER,
        table: u32::from(RT_TABLE_MAIN),
        unicast: true,
    }
}

impl Kernel {
    /// `resync`: how often the table is re-read (`--injected-routes-sync-period`).
    pub fn new(nl: Netlink, resync: Duration) -> Kernel {
        Kernel {
            nl,
            observed: None,
            observed_at: Instant::now(),
            resync,
            conflicts: BTreeSet::new(),
        }
    }

    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    /// Reads the main tables (IPv4 and IPv6).
    pub async fn observe(&self) -> Result<Observed, NetlinkError> {
        let mut routes = self.nl.routes(false).await?;
        routes.extend(self.nl.routes(true).await?);
        Ok(Observed::from_routes(routes))
    }

    /// How many of our routes the kernel has (as last read or written).
    pub fn installed(&self) -> usize {
        self.observed.as_ref().map_or(0, Observed::count)
    }

    /// Our routes as last read or written.
    pub fn observed(&self) -> Option<&Observed> {
        self.observed.as_ref()
    }

    /// When the next periodic re-read is due.
    pub fn resync_due(&self) -> Instant {
        self.observed_at + self.resync
    }

    /// Forgets the cached table: the next sync reads it again.
    pub fn invalidate(&mut self) {
        self.observed = None;
    }

    /// Brings our routes to `want`; without `sweep`, routes not wanted stay.
    pub async fn sync(
        &mut self,
        want: &BTreeMap<IpNet, KernelRoute>,
        sweep: bool,
    ) -> Result<SyncReport, NetlinkError> {
        let started = Instant::now();
        let mut report = SyncReport::default();
        if self.observed.is_none() || self.observed_at.elapsed() >= self.resync {
            // Set first: a failed read is retried by the caller, not made due again at once.
            self.observed_at = Instant::now();
            self.observed = Some(self.observe().await?);
            report.reread = true;
        }
        let observed = self.observed.as_mut().expect("read above");
        let d = diff(want, observed, sweep);
        let now: BTreeSet<IpNet> = d.conflicts.iter().copied().collect();
        for dst in now.difference(&self.conflicts) {
            tracing::warn!(%dst, "a route of another protocol holds this destination; not installing ours");
        }
        self.conflicts = now;
        report.conflicts = d.conflicts;
        let (ok, failed) = run_ops(&self.nl, d.writes).await;
        report.written = ok.len();
        for op in &ok {
            observed.record(op);
        }
        report.failed.extend(failed);
        let (ok, failed) = run_ops(&self.nl, d.removals).await;
        report.removed = ok.len();
        for op in &ok {
            observed.record(op);
        }
        report.failed.extend(failed);
        if !report.failed.is_empty() {
            // Whatever failed may have changed the table in ways we did not see.
            self.observed = None;
        }
        report.took = started.elapsed();
        Ok(report)
    }

    /// Removes every route of ours (protocol 17) from the main tables, read fresh.
    pub async fn cleanup(&mut self) -> Result<SyncReport, NetlinkError> {
        self.observed = None;
        self.sync(&BTreeMap::new(), true).await
    }
}

async fn run_ops(nl: &Netlink, ops: Vec<KernelOp>) -> (Vec<KernelOp>, Vec<OpError>) {
    let results: Vec<(KernelOp, Result<(), NetlinkError>)> = futures::stream::iter(ops)
        .map(|op| async move {
            let r = match &op {
                KernelOp::Add(r) => nl.add_route(&route_of(r.dst, Some(r.gateway))).await,
                KernelOp::Replace(r) => nl.replace_route(&route_of(r.dst, Some(r.gateway))).await,
                KernelOp::Delete(i) => match nl.del_route(&route_of(i.dst, i.gateway)).await {
                    // Gone already: what we wanted.
                    Err(e) if e.is_not_found() => Ok(()),
                    other => other,
                },
            };
            (op, r)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (op, r) in results {
        match r {
            Ok(()) => ok.push(op),
            Err(source) => failed.push(OpError {
                op: describe(&op),
                source,
            }),
        }
    }
    (ok, failed)
}

fn describe(op: &KernelOp) -> String {
    match op {
        KernelOp::Add(r) => format!("adding route {} via {}", r.dst, r.gateway),
        KernelOp::Replace(r) => format!("replacing route {} via {}", r.dst, r.gateway),
        KernelOp::Delete(i) => match i.gateway {
            Some(g) => format!("deleting route {} via {g}", i.dst),
            None => format!("deleting route {}", i.dst),
        },
    }
}

/// The name of kube-router's overlay tunnel to a node (`--enable-overlay`): `tun-` and the
/// first 11 hex digits of the SHA-256 of the node address without its `.` and `:`
/// (`pkg/tunnels`), so the names match a node migrating from kube-router. The tunnels
/// themselves (ipip, ip6ip6, GUE) are [`metalnet::netlink::TunnelParams`]; this kernel has
/// no tunnel devices, so the router installs only direct routes.
pub fn tunnel_name(node: IpAddr) -> String {
    use sha2::{Digest, Sha256};
    let stripped: String = node
        .to_string()
        .chars()
        .filter(|c| *c != '.' && *c != ':')
        .collect();
    let hex: String = Sha256::digest(stripped.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("tun-{}", &hex[..11])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn want(routes: &[(&str, &str)]) -> BTreeMap<IpNet, KernelRoute> {
        routes
            .iter()
            .map(|(d, g)| {
                (
                    net(d),
                    KernelRoute {
                        dst: net(d),
                        gateway: ip(g),
                    },
                )
            })
            .collect()
    }
    fn route(dst: &str, gw: Option<&str>, protocol: u8) -> Route {
        Route {
            dst: net(dst),
            gateway: gw.map(ip),
            oif: Some(2),
            onlink: false,
            protocol,
            table: u32::from(RT_TABLE_MAIN),
            unicast: true,
        }
    }

    #[test]
    fn tunnel_names_are_kube_router_s() {
        // The values kube-router's GenerateTunnelName gives.
        assert_eq!(tunnel_name(ip("192.0.2.12")), "tun-a8e0d7ef05b");
        assert_eq!(tunnel_name(ip("2001:db8::12")), "tun-dc69032cf2b");
        assert!(tunnel_name(ip("2001:db8::12")).len() <= 15, "IFNAMSIZ");
    }

    #[test]
    fn observed_sorts_ours_and_foreign_and_skips_other_tables() {
        let mut other_table = route("198.51.100.64/28", Some("192.0.2.12"), 17);
        other_table.table = 77;
        let o = Observed::from_routes([
            route("198.51.100.16/28", Some("192.0.2.11"), 17),
            route("192.0.2.0/24", None, 2),
            other_table,
            route("2001:db8:100:2::/64", Some("2001:db8::12"), 17),
        ]);
        assert_eq!(o.count(), 2);
        assert!(o.foreign.contains(&net("192.0.2.0/24")));
        assert!(!o.ours.contains_key(&net("198.51.100.64/28")));
    }

    #[test]
    fn diff_adds_replaces_and_sweeps_only_our_routes() {
        let have = Observed::from_routes([
            route("198.51.100.16/28", Some("192.0.2.11"), 17), // kept
            route("198.51.100.32/28", Some("192.0.2.99"), 17), // gateway changed
            route("198.51.100.48/28", Some("192.0.2.13"), 17), // no longer wanted
            route("203.0.113.0/24", Some("192.0.2.1"), 4),     // static, not ours
        ]);
        let w = want(&[
            ("198.51.100.16/28", "192.0.2.11"),
            ("198.51.100.32/28", "192.0.2.12"),
            ("2001:db8:100:4::/64", "2001:db8::14"),
        ]);
        let d = diff(&w, &have, true);
        assert_eq!(
            d.writes,
            vec![
                KernelOp::Replace(w[&net("198.51.100.32/28")].clone()),
                KernelOp::Add(w[&net("2001:db8:100:4::/64")].clone()),
            ]
        );
        assert_eq!(
            d.removals,
            vec![
                KernelOp::Delete(Installed {
                    dst: net("198.51.100.32/28"),
                    gateway: Some(ip("192.0.2.99"))
                }),
                KernelOp::Delete(Installed {
                    dst: net("198.51.100.48/28"),
                    gateway: Some(ip("192.0.2.13"))
                }),
            ]
        );
        assert!(d.conflicts.is_empty());
        // Nothing to do once applied.
        let mut after = have.clone();
        for op in d.writes.iter().chain(&d.removals) {
            after.record(op);
        }
        assert!(diff(&w, &after, true).is_empty(), "{after:?}");
        assert!(after.foreign.contains(&net("203.0.113.0/24")));
    }

    #[test]
    fn without_sweep_routes_not_wanted_stay() {
        let have = Observed::from_routes([route("198.51.100.48/28", Some("192.0.2.13"), 17)]);
        let d = diff(&want(&[("198.51.100.16/28", "192.0.2.11")]), &have, false);
        assert_eq!(d.writes.len(), 1);
        assert!(d.removals.is_empty());
    }

    #[test]
    fn a_destination_held_by_another_protocol_is_left_alone() {
        let have = Observed::from_routes([route("198.51.100.16/28", Some("192.0.2.1"), 3)]);
        let d = diff(&want(&[("198.51.100.16/28", "192.0.2.11")]), &have, true);
        assert!(d.is_empty());
        assert_eq!(d.conflicts, vec![net("198.51.100.16/28")]);
        // The sweep never deletes it either.
        assert!(diff(&BTreeMap::new(), &have, true).is_empty());
    }

    #[test]
    fn extra_ipv6_siblings_of_ours_are_removed() {
        let have = Observed::from_routes([
            route("2001:db8:100:2::/64", Some("2001:db8::12"), 17),
            route("2001:db8:100:2::/64", Some("2001:db8::99"), 17),
        ]);
        let d = diff(
            &want(&[("2001:db8:100:2::/64", "2001:db8::12")]),
            &have,
            true,
        );
        assert!(d.writes.is_empty());
        assert_eq!(
            d.removals,
            vec![KernelOp::Delete(Installed {
                dst: net("2001:db8:100:2::/64"),
                gateway: Some(ip("2001:db8::99"))
            })]
        );
    }

    /// In a namespace: routes appear with protocol 17, a static route on a wanted
    /// destination is untouched, changes behind our back are repaired on resync, cleanup
    /// removes ours only; and 10,000 routes go in quickly.
    #[test]
    fn installs_repairs_and_cleans_up_in_a_namespace() {
        let Some(ns) = metalnet::testing::Netns::with_veth("rtk") else {
            return;
        };
        ns.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8::1/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        ns.ip(&["route", "add", "203.0.113.0/24", "via", "192.0.2.1"]);
        let out = ns.block_on(|| async {
            let mut k = Kernel::new(Netlink::connect().unwrap(), Duration::ZERO);
            let w = want(&[
                ("198.51.100.16/28", "192.0.2.11"),
                ("203.0.113.0/24", "192.0.2.12"),
                ("2001:db8:100:2::/64", "2001:db8::12"),
            ]);
            let r = k.sync(&w, true).await.unwrap();
            assert!(r.failed.is_empty(), "{:?}", r.failed);
            assert_eq!((r.written, r.conflicts.len()), (2, 1));
            // Behind our back: one deleted, one changed.
            let nl = k.netlink().clone();
            nl.del_route(&route_of(net("198.51.100.16/28"), Some(ip("192.0.2.11"))))
                .await
                .unwrap();
            let mut changed = route_of(net("2001:db8:100:2::/64"), Some(ip("2001:db8::99")));
            changed.protocol = RTPROT_KUBE_ROUTER;
            nl.replace_route(&changed).await.unwrap();
            // Resync period zero: every sync re-reads.
            let r = k.sync(&w, true).await.unwrap();
            assert!(r.reread && r.failed.is_empty(), "{:?}", r.failed);
            assert_eq!(r.written, 2);
            let seen = k.observe().await.unwrap();
            assert_eq!(seen.count(), 2);
            assert!(diff(&w, &seen, true).is_empty(), "{seen:?}");

            // 10,000 routes.
            let many: BTreeMap<IpNet, KernelRoute> = (0..10_000u32)
                .map(|i| {
                    let dst: IpNet = format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap();
                    (
                        dst,
                        KernelRoute {
                            dst,
                            gateway: ip("192.0.2.11"),
                        },
                    )
                })
                .collect();
            let r = k.sync(&many, true).await.unwrap();
            assert!(r.failed.is_empty(), "{:?}", r.failed.first());
            let took = r.took;
            assert_eq!(k.observe().await.unwrap().count(), 10_000);
            let r = k.cleanup().await.unwrap();
            assert_eq!(r.removed, 10_000);
            assert_eq!(k.observe().await.unwrap().count(), 0);
            took
        });
        eprintln!("10,000 routes installed in {out:?}");
        let left = ns.ip(&["route", "show", "proto", "17"]);
        assert!(left.trim().is_empty(), "{left}");
        // The static route is still there.
        let statics = ns.ip(&["route", "show", "203.0.113.0/24"]);
        assert!(statics.contains("via 192.0.2.1"), "{statics}");
        assert!(
            out < Duration::from_secs(2),
            "10,000 routes took {out:?} (goal: under 1 s in release builds)"
        );
    }
}
