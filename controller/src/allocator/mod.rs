//! LoadBalancer IP allocation with MetalLB's semantics (`internal/allocator`,
//! `controller/service.go`), as a pure, incremental data structure.
//!
//! # Rules (as MetalLB)
//! - **Requested addresses** (`metallb.io/loadBalancerIPs`, at most one per family, or
//!   `spec.loadBalancerIP`) must all lie in one pool whose serviceAllocation selects the Service;
//!   `autoAssign: false` does not matter. Their families must equal the Service's families (a
//!   dual-stack Service must request one address of each). With `metallb.io/address-pool` too,
//!   the addresses must be in that pool.
//! - **Requested pool**: the pool must exist and select the Service (autoAssign ignored).
//! - **Automatic**: first the *pinned* pools — autoAssign pools with a serviceAllocation that
//!   names namespaces (list or selectors) or service selectors, and selects this Service —
//!   ordered by priority (> 0 ascending, then 0); if none of them can serve the Service, the
//!   autoAssign pools without serviceAllocation. A serviceAllocation with neither namespaces
//!   nor serviceSelectors (e.g. priority only) makes the pool request-only.
//! - **Within a pool**: CIDRs in the given order, lowest address first. An address is a
//!   candidate when free, or when held by Services with the same non-empty sharing key and
//!   backend key and none of our (protocol, port) pairs (`TCP/80` and `UDP/80` differ).
//!   `avoidBuggyIPs` skips every IPv4 address whose last octet is 0 or 255 — whatever the
//!   prefix length, so a `/32` ending in .0 is unusable and a `/31` .254/31 offers only .254;
//!   it never affects IPv6. Without it, network and broadcast addresses are handed out
//!   (192.0.2.0/24 gives .0 first).
//! - **Special-purpose addresses** (unspecified and 0.0.0.0/8, loopback, link-local,
//!   multicast, 255.255.255.255, `metalnet::addr::special_purpose`) are never handed out,
//!   requested or adopted, whatever the pool says (MetalLB hands them out); they do not count
//!   in addresses_total. A skipped block costs one step, so a pool covering 224.0.0.0/4 is fine.
//! - **Families** come from `spec.clusterIPs`. Single stack: first pool with a candidate of that
//!   family. RequireDualStack: first pool with a candidate of each family (both from that
//!   pool). PreferDualStack: first pool with both; else the first pool with the primary family
//!   (`ipFamilies[0]`), else the first with the other. A PreferDualStack Service holding one
//!   address gets the missing family added from the same pool when it becomes available.
//!   Dual-stack results are ordered IPv4, IPv6.
//! - **Sharing** check on each address (also for requested ones): if another Service holds it,
//!   both must have the same non-empty sharing key and the same backend key; no (protocol,
//!   port) may be used by another holder. A Service alone on its address may change its key.
//! - **Keeping addresses**: a Service keeps what it holds while it still fits: same families,
//!   a pool that selects it contains all its addresses, requested pool/addresses unchanged,
//!   sharing still allowed with its current ports and keys. Otherwise it is released and
//!   allocated afresh ([`Outcome::Reallocated`]). Adding a higher-priority pool moves nothing.
//! - **Metrics**: addresses_total excludes skipped buggy addresses; in-use counts distinct
//!   addresses; [`PoolCounters::addresses_total`] saturates at i64::MAX like MetalLB.
//!
//! # Where we differ, on purpose
//! - Ties: MetalLB iterates a Go map (random order) over the non-pinned pools and its priority
//!   sort is not a strict order; we order ties by pool name, so results are deterministic.
//! - MetalLB computes `namespaceSelectors` against the namespaces that exist when the config is
//!   loaded, and a selector that matches no namespace lifts the namespace restriction entirely.
//!   We match each request's namespace labels, and a namespace restriction always restricts.
//! - `set_pools` also checks that each held address's pool still *selects* the Service
//!   (MetalLB notices that only on the Service's next reconcile; the result is the same).
//! - PreferDualStack on a single-stack cluster (one cluster IP): one address of the cluster's
//!   family. MetalLB may hand out two and then clear them again on the next reconcile.
//! - Overlapping pools are reported by config validation, and a pool in use stays in use
//!   (`crate::pools`). Held or adopted addresses stay attributed to the pool they came from
//!   while it contains them and selects the Service; else the requested pool; else the first
//!   pool by name that contains them and selects the Service.
//! - Auto-assignment with a sharing key scans the IPs already carrying that key for one whose
//!   ports are free: linear in the number of such IPs (fine for the usual few per key).
//!
//! # Cost
//! Used addresses are kept as runs of consecutive values per family, so the lowest free
//! address of a CIDR is found in O(log n · runs skipped) — pools are never enumerated (IPv6
//! /64 pools are fine). Per-address holders sit in a `BTreeMap`, sharing keys have their own
//! index. Everything is ordered (`BTreeMap`), so equal inputs give equal results.

mod error;
mod explain;
mod request;
mod runs;
mod types;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use error::{AllocError, Conflict, PoolRejection, SharingRefusal};
pub use explain::{Explanation, PoolExplanation, PoolVerdict};
pub use request::*;
pub use types::{
    Assignment, Claim, FamilyRequest, IpFamily, Outcome, Pool, PoolCounters, Port,
    ServiceAllocation, ServiceKey, ServiceRequest,
};

use runs::Runs;

/// One CIDR of a pool as an inclusive integer range.
#[derive(Debug, Clone, Copy)]
struct Range {
    family: IpFamily,
    lo: u128,
    hi: u128,
}

#[derive(Debug, Clone)]
struct PoolState {
    pool: Pool,
    ranges: Vec<Range>,
    counters: PoolCounters,
}

impl PoolState {
    fn new(pool: Pool) -> Self {
        let ranges: Vec<Range> = pool
            .cidrs
            .iter()
            .map(|c| {
                let (family, lo, hi) = match c {
                    ipnet::IpNet::V4(n) => (
                        IpFamily::V4,
                        u32::from(n.network()) as u128,
                        u32::from(n.broadcast()) as u128,
                    ),
                    ipnet::IpNet::V6(n) => (
                        IpFamily::V6,
                        u128::from(n.network()),
                        u128::from(n.broadcast()),
                    ),
                };
                Range { family, lo, hi }
            })
            .collect();
        let mut counters = PoolCounters::default();
        for r in &ranges {
            let mut n = (r.hi - r.lo).saturating_add(1);
            if pool.avoid_buggy_ips && r.family == IpFamily::V4 {
                n -= count_congruent(r.lo, r.hi, 0) + count_congruent(r.lo, r.hi, 255);
            }
            for (lo, hi) in special_blocks(r.family) {
                let (lo, hi) = (lo.max(r.lo), hi.min(r.hi));
                if lo > hi {
                    continue;
                }
                n -= hi - lo + 1;
                if pool.avoid_buggy_ips && r.family == IpFamily::V4 {
                    // Already subtracted once as buggy.
                    n += count_congruent(lo, hi, 0) + count_congruent(lo, hi, 255);
                }
            }
            match r.family {
                IpFamily::V4 => counters.ipv4_addresses_total += n,
                IpFamily::V6 => {
                    counters.ipv6_addresses_total = counters.ipv6_addresses_total.saturating_add(n)
                }
            }
        }
        Self {
            pool,
            ranges,
            counters,
        }
    }

    /// Whether the pool offers `ip` (inside a CIDR and not skipped by avoidBuggyIPs).
    fn contains(&self, ip: &IpAddr) -> bool {
        if self.pool.avoid_buggy_ips && is_buggy(ip) {
            return false;
        }
        if metalnet::addr::special_purpose(*ip).is_some() {
            return false;
        }
        let (f, v) = (IpFamily::of(ip), value(ip));
        self.ranges
            .iter()
            .any(|r| r.family == f && r.lo <= v && v <= r.hi)
    }

    fn has_family(&self, f: IpFamily) -> bool {
        self.ranges.iter().any(|r| r.family == f)
    }

    /// Why the pool's serviceAllocation does not select the Service, if it does not.
    fn selection_problem(&self, req: &ServiceRequest) -> Option<String> {
        let sa = self.pool.service_allocation.as_ref()?;
        if sa.restricts_namespaces()
            && !sa.namespaces.contains(&req.key.namespace)
            && !sa
                .namespace_selectors
                .iter()
                .any(|s| s.matches(&req.namespace_labels))
        {
            return Some(format!(
                "namespace {:?} is neither listed nor selected",
                req.key.namespace
            ));
        }
        if !sa.service_selectors.is_empty()
            && !sa.service_selectors.iter().any(|s| s.matches(&req.labels))
        {
            return Some("the service's labels match no serviceSelector".into());
        }
        None
    }

    /// Pinned pools come first in automatic assignment.
    fn pins(&self, req: &ServiceRequest) -> bool {
        match &self.pool.service_allocation {
            Some(sa) => {
                self.pool.auto_assign
                    && (sa.restricts_namespaces() || !sa.service_selectors.is_empty())
                    && self.selection_problem(req).is_none()
            }
            None => false,
        }
    }

    fn priority_rank(&self) -> (u8, i32) {
        match &self.pool.service_allocation {
            Some(sa) if sa.priority > 0 => (0, sa.priority),
            _ => (1, 0),
        }
    }
}

/// Number of v in [lo, hi] with v % 256 == r.
fn count_congruent(lo: u128, hi: u128, r: u128) -> u128 {
    let upto = |x: u128| if x < r { 0 } else { (x - r) / 256 + 1 };
    upto(hi) - if lo == 0 { 0 } else { upto(lo - 1) }
}

fn value(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(*a) as u128,
        IpAddr::V6(a) => u128::from(*a),
    }
}

fn from_value(f: IpFamily, v: u128) -> IpAddr {
    match f {
        // Values of the IPv4 family come from IPv4 ranges and fit in 32 bits.
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// The special-purpose blocks of family `f` as integer ranges.
fn special_blocks(f: IpFamily) -> impl Iterator<Item = (u128, u128)> {
    metalnet::addr::SPECIAL_BLOCKS
        .iter()
        .filter(move |b| IpFamily::of(&b.first) == f)
        .map(|b| (value(&b.first), value(&b.last)))
}

/// When `v` may not be handed out, the last value of the block it belongs to (for
/// [`Runs::first_free`]): special-purpose addresses never, .0/.255 not with avoidBuggyIPs.
fn unusable(f: IpFamily, v: u128, avoid_buggy: bool) -> Option<u128> {
    if let Some((_, hi)) = special_blocks(f).find(|(lo, hi)| *lo <= v && v <= *hi) {
        return Some(hi);
    }
    (avoid_buggy && is_buggy(&from_value(f, v))).then_some(v)
}

/// IPv4 addresses ending in .0 or .255 confuse smurf protection on some old CPE firmware.
fn is_buggy(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => matches!(a.octets()[3], 0 | 255),
        IpAddr::V6(_) => false,
    }
}

/// Users of one address: they all carry the same sharing and backend keys.
#[derive(Debug, Clone)]
struct IpUse {
    sharing: String,
    backend: String,
    holders: BTreeSet<ServiceKey>,
    ports: BTreeMap<Port, ServiceKey>,
}

/// What a Service holds, with the ports/keys it registered them under.
#[derive(Debug, Clone)]
struct Held {
    ips: Vec<IpAddr>,
    pool: String,
    ports: Vec<Port>,
}

/// The allocator's state. See the module documentation for the rules.
#[derive(Debug, Clone, Default)]
pub struct Allocator {
    /// Sorted by name.
    pools: Vec<PoolState>,
    pool_index: BTreeMap<String, usize>,
    /// The last request seen per Service (held or not), for `explain` and `set_pools`.
    requests: BTreeMap<ServiceKey, ServiceRequest>,
    held: BTreeMap<ServiceKey, Held>,
    ips: BTreeMap<IpAddr, IpUse>,
    /// Used addresses per family (index by `IpFamily::index`).
    used: [Runs; 2],
    /// sharing key → backend key → addresses carrying those keys.
    shared: BTreeMap<String, BTreeMap<String, BTreeSet<IpAddr>>>,
}

impl Allocator {
    pub fn new() -> Self {
        Self::default()
    }

    // ---------------------------------------------------------------- queries

    /// What `key` holds: addresses and pool name.
    pub fn held(&self, key: &ServiceKey) -> Option<(&[IpAddr], &str)> {
        self.held
            .get(key)
            .map(|h| (h.ips.as_slice(), h.pool.as_str()))
    }

    /// Every Service holding addresses, in key order.
    pub fn assignments(&self) -> impl Iterator<Item = (&ServiceKey, &[IpAddr], &str)> {
        self.held
            .iter()
            .map(|(k, h)| (k, h.ips.as_slice(), h.pool.as_str()))
    }

    /// Services seen by `assign`/`adopt` that hold nothing (allocation failed or lost).
    pub fn pending(&self) -> Vec<ServiceKey> {
        self.requests
            .keys()
            .filter(|k| !self.held.contains_key(*k))
            .cloned()
            .collect()
    }

    /// How many Services [`Allocator::pending`] would list, in O(1).
    pub fn pending_count(&self) -> usize {
        // Every holder has a request (take() only follows assign/adopt, which record one).
        self.requests.len().saturating_sub(self.held.len())
    }

    /// Services holding `ip`.
    pub fn holders(&self, ip: &IpAddr) -> Vec<ServiceKey> {
        self.ips
            .get(ip)
            .map(|u| u.holders.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn pool_names(&self) -> impl Iterator<Item = &str> {
        self.pools.iter().map(|p| p.pool.name.as_str())
    }

    pub fn counters(&self, pool: &str) -> Option<PoolCounters> {
        self.pool_index.get(pool).map(|i| self.pools[*i].counters)
    }

    /// Counters of every pool, by name.
    pub fn all_counters(&self) -> impl Iterator<Item = (&str, PoolCounters)> {
        self.pools
            .iter()
            .map(|p| (p.pool.name.as_str(), p.counters))
    }

    /// Explain the last request seen for `key`.
    pub fn explain(&self, key: &ServiceKey) -> Option<Explanation> {
        self.requests.get(key).map(|r| self.explain_request(r))
    }

    /// Explain how `req` would be (or is) served, pool by pool, without changing anything.
    pub fn explain_request(&self, req: &ServiceRequest) -> Explanation {
        Explanation {
            service: req.key.clone(),
            families: req.families,
            requested_ips: req.requested_ips.clone(),
            requested_pool: req.requested_pool.clone(),
            held: self
                .held
                .get(&req.key)
                .map(|h| (h.ips.clone(), h.pool.clone())),
            pools: self.verdicts(req),
        }
    }

    // ---------------------------------------------------------------- changes

    /// Replace the pools. Services whose addresses are no longer in a pool that selects them
    /// lose them and are returned with the reason (assign them again); the others keep theirs
    /// (and are re-attributed if their addresses moved to another pool).
    pub fn set_pools(&mut self, mut pools: Vec<Pool>) -> Vec<(ServiceKey, AllocError)> {
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        pools.dedup_by(|a, b| a.name == b.name);
        self.pools = pools.into_iter().map(PoolState::new).collect();
        self.pool_index = self
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.pool.name.clone(), i))
            .collect();

        let mut lost = Vec::new();
        let keys: Vec<ServiceKey> = self.held.keys().cloned().collect();
        for key in keys {
            let ips = self.held[&key].ips.clone();
            let from = self.held[&key].pool.clone();
            let usable = self
                .requests
                .get(&key)
                .and_then(|req| self.usable_pool_for(&ips, req, Some(&from)));
            match usable {
                Some(i) => {
                    let name = self.pools[i].pool.name.clone();
                    if let Some(h) = self.held.get_mut(&key) {
                        h.pool = name;
                    }
                }
                None => {
                    self.release_inner(&key);
                    tracing::info!(service = %key, ?ips, "address left every pool the service may use");
                    lost.push((key, AllocError::LeftPools { ips }));
                }
            }
        }
        self.recount();
        lost
    }

    /// Give `req` addresses, or confirm the ones it holds. Idempotent.
    pub fn assign(&mut self, req: &ServiceRequest) -> Result<Assignment, AllocError> {
        self.requests.insert(req.key.clone(), req.clone());
        // A malformed request leaves what the Service holds alone (as MetalLB).
        validate_requested(req)?;
        if self.pools.is_empty() {
            self.release_inner(&req.key);
            return Err(AllocError::NoPools);
        }
        let mut previous = None;
        if let Some(held) = self.held.get(&req.key) {
            let ips = held.ips.clone();
            let from = held.pool.clone();
            match self.validate_held(req, &ips, Some(&from)) {
                Ok(i) => return Ok(self.keep(req, ips, i)),
                Err(reason) => {
                    tracing::info!(service = %req.key, ?ips, %reason, "releasing addresses that no longer fit");
                    self.release_inner(&req.key);
                    previous = Some((ips, reason.to_string()));
                }
            }
        }
        let (ips, i) = self.allocate(req)?;
        self.take(req, ips.clone(), i);
        tracing::debug!(service = %req.key, ?ips, pool = %self.pools[i].pool.name, "allocated");
        Ok(Assignment {
            ips,
            pool: self.pools[i].pool.name.clone(),
            outcome: match previous {
                None => Outcome::Allocated,
                Some((previous, reason)) => Outcome::Reallocated { previous, reason },
            },
        })
    }

    /// Restart: re-take `ips` (from the Service's status) when they are still valid for `req`.
    /// Call for every Service before any `assign`, Services with the most addresses first
    /// ([`Allocator::adopt_all`] does the ordering). On error nothing is taken.
    pub fn adopt(
        &mut self,
        req: &ServiceRequest,
        ips: &[IpAddr],
    ) -> Result<Assignment, AllocError> {
        self.adopt_claim(&Claim {
            req: req.clone(),
            ips: ips.to_vec(),
            pool: None,
            allocated_at: None,
        })
    }

    /// [`Allocator::adopt`] with what the status says besides the addresses: the pool they
    /// were allocated from is preferred when several pools contain them (overlapping pools).
    pub fn adopt_claim(&mut self, claim: &Claim) -> Result<Assignment, AllocError> {
        let (req, ips) = (&claim.req, &claim.ips);
        self.requests.insert(req.key.clone(), req.clone());
        self.release_inner(&req.key);
        validate_requested(req)?;
        if ips.is_empty() {
            return Err(AllocError::NothingToAdopt);
        }
        let ips: Vec<IpAddr> = ips.iter().map(|ip| ip.to_canonical()).collect();
        let i = self.validate_held(req, &ips, claim.pool.as_deref())?;
        self.take(req, ips.clone(), i);
        Ok(Assignment {
            ips,
            pool: self.pools[i].pool.name.clone(),
            outcome: Outcome::Unchanged,
        })
    }

    /// Adopt many Services, most addresses first, then by key (MetalLB's restart order).
    pub fn adopt_all(
        &mut self,
        items: Vec<(ServiceRequest, Vec<IpAddr>)>,
    ) -> Vec<(ServiceKey, Result<Assignment, AllocError>)> {
        self.adopt_claims(
            items
                .into_iter()
                .map(|(req, ips)| Claim {
                    req,
                    ips,
                    pool: None,
                    allocated_at: None,
                })
                .collect(),
        )
    }

    /// Adopt many claims. When two claim one address (a status left behind by a deleted
    /// Service, now back under the same name), the most recent allocation wins: it is the
    /// current holder. Then most addresses first, then by key (MetalLB's restart order).
    /// Claims without a time come after those with one.
    pub fn adopt_claims(
        &mut self,
        mut claims: Vec<Claim>,
    ) -> Vec<(ServiceKey, Result<Assignment, AllocError>)> {
        claims.sort_by(|a, b| {
            let recency = |c: &Claim| std::cmp::Reverse(c.allocated_at.map_or(i128::MIN, |t| t));
            recency(a)
                .cmp(&recency(b))
                .then_with(|| b.ips.len().cmp(&a.ips.len()))
                .then_with(|| a.req.key.cmp(&b.req.key))
        });
        claims
            .into_iter()
            .map(|c| {
                let r = self.adopt_claim(&c);
                (c.req.key, r)
            })
            .collect()
    }

    /// Forget a Service (deleted, or no longer a LoadBalancer). Returns what it held.
    pub fn release(&mut self, key: &ServiceKey) -> Option<(Vec<IpAddr>, String)> {
        self.requests.remove(key);
        self.release_inner(key).map(|h| (h.ips, h.pool))
    }

    // ---------------------------------------------------------------- internals

    /// Keep the held addresses (re-registering ports/keys), adding the missing family for
    /// PreferDualStack when the same pool now has one.
    fn keep(&mut self, req: &ServiceRequest, ips: Vec<IpAddr>, pool: usize) -> Assignment {
        self.release_inner(&req.key);
        self.take(req, ips.clone(), pool);
        let name = self.pools[pool].pool.name.clone();
        if let ([only], FamilyRequest::PreferDual { .. }, true) =
            (ips.as_slice(), req.families, req.requested_ips.is_empty())
            && let Some(extra) = self.candidate(pool, IpFamily::of(only).other(), req)
        {
            let both = vec![*only, extra];
            self.release_inner(&req.key);
            self.take(req, both.clone(), pool);
            tracing::info!(service = %req.key, ip = %extra, "added the missing family");
            return Assignment {
                ips: both,
                pool: name,
                outcome: Outcome::AddedFamily,
            };
        }
        Assignment {
            ips,
            pool: name,
            outcome: Outcome::Unchanged,
        }
    }

    /// Whether `ips` (held, or to adopt, from pool `from`) still fit `req`; the pool index if so.
    fn validate_held(
        &self,
        req: &ServiceRequest,
        ips: &[IpAddr],
        from: Option<&str>,
    ) -> Result<usize, AllocError> {
        if !req.families.accepts(ips) {
            return Err(AllocError::FamilyChanged {
                ips: ips.to_vec(),
                wanted: req.families,
            });
        }
        let i = self
            .usable_pool_for(ips, req, from)
            .ok_or_else(|| AllocError::LeftPools { ips: ips.to_vec() })?;
        let name = &self.pools[i].pool.name;
        if let Some(rp) = &req.requested_pool
            && rp != name
        {
            return Err(AllocError::PoolChanged {
                requested: rp.clone(),
                actual: name.clone(),
            });
        }
        if !req.requested_ips.is_empty() {
            let want: BTreeSet<_> = req.requested_ips.iter().collect();
            let have: BTreeSet<_> = ips.iter().collect();
            if want != have {
                return Err(AllocError::RequestedIpsChanged {
                    requested: req.requested_ips.clone(),
                    held: ips.to_vec(),
                });
            }
        }
        for ip in ips {
            self.check_ip(ip, req)
                .map_err(|conflict| AllocError::HeldAddressConflict { ip: *ip, conflict })?;
        }
        Ok(i)
    }

    /// The pool to attribute `ips` to for `req`, among those containing all of them that
    /// select it: the one they came from (`from`) when it still qualifies, so a new pool
    /// overlapping an old one takes nothing away; else the requested pool; else the first by
    /// name.
    fn usable_pool_for(
        &self,
        ips: &[IpAddr],
        req: &ServiceRequest,
        from: Option<&str>,
    ) -> Option<usize> {
        let fits = |i: usize| {
            let p = &self.pools[i];
            ips.iter().all(|ip| p.contains(ip)) && p.selection_problem(req).is_none()
        };
        [from, req.requested_pool.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(|name| self.pool_index.get(name).copied())
            .find(|i| fits(*i))
            .or_else(|| (0..self.pools.len()).find(|i| fits(*i)))
    }

    /// May `req` use `ip`, given its other holders?
    fn check_ip(&self, ip: &IpAddr, req: &ServiceRequest) -> Result<(), Conflict> {
        let Some(u) = self.ips.get(ip) else {
            return Ok(());
        };
        if let Some(other) = u.holders.iter().find(|k| **k != req.key) {
            let refusal = if u.sharing.is_empty() {
                Some(SharingRefusal::HolderDoesNotShare)
            } else if req.sharing_key.is_empty() {
                Some(SharingRefusal::ServiceDoesNotShare)
            } else if u.sharing != req.sharing_key {
                Some(SharingRefusal::DifferentKey {
                    ours: req.sharing_key.clone(),
                    theirs: u.sharing.clone(),
                })
            } else if u.backend != req.backend_key {
                Some(SharingRefusal::DifferentBackends {
                    ours: req.backend_key.clone(),
                    theirs: u.backend.clone(),
                })
            } else {
                None
            };
            if let Some(reason) = refusal {
                return Err(Conflict::Sharing {
                    holder: other.clone(),
                    reason,
                });
            }
        }
        for port in &req.ports {
            if let Some(holder) = u.ports.get(port)
                && *holder != req.key
            {
                return Err(Conflict::Port {
                    port: port.clone(),
                    holder: holder.clone(),
                });
            }
        }
        Ok(())
    }

    /// The lowest candidate address of family `f` in pool `i` for `req`: first CIDR (in
    /// order) that has one, then the lowest free or compatibly shared address in it.
    fn candidate(&self, i: usize, f: IpFamily, req: &ServiceRequest) -> Option<IpAddr> {
        let pool = &self.pools[i];
        let avoid = pool.pool.avoid_buggy_ips;
        let shared = if req.sharing_key.is_empty() {
            None
        } else {
            self.shared
                .get(&req.sharing_key)
                .and_then(|m| m.get(&req.backend_key))
        };
        for r in pool.ranges.iter().filter(|r| r.family == f) {
            let free = self.used[f.index()]
                .first_free(r.lo, r.hi, |v| unusable(f, v, avoid))
                .map(|v| from_value(f, v));
            let joinable = shared.and_then(|set| {
                set.range(from_value(f, r.lo)..=from_value(f, r.hi))
                    .find(|ip| pool.contains(ip) && self.check_ip(ip, req).is_ok())
                    .copied()
            });
            let best = match (free, joinable) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if best.is_some() {
                return best;
            }
        }
        None
    }

    /// Candidates per family (only the families `req` may use).
    fn candidates(&self, i: usize, req: &ServiceRequest) -> [Option<IpAddr>; 2] {
        let mut c = [None, None];
        for f in req.families.families() {
            c[f.index()] = self.candidate(i, *f, req);
        }
        c
    }

    /// Pinned pools (sorted by priority, then name) and general auto-assign pools (by name).
    fn auto_order(&self, req: &ServiceRequest) -> (Vec<usize>, Vec<usize>) {
        let mut pinned: Vec<usize> = (0..self.pools.len())
            .filter(|i| self.pools[*i].pins(req))
            .collect();
        pinned.sort_by_key(|i| self.pools[*i].priority_rank());
        let general = (0..self.pools.len())
            .filter(|i| {
                let p = &self.pools[*i].pool;
                p.auto_assign && p.service_allocation.is_none()
            })
            .collect();
        (pinned, general)
    }

    /// MetalLB's findBestPoolForService + selectIPsForFamilyAndPolicy over one group.
    fn best_in_group(&self, group: &[usize], req: &ServiceRequest) -> Option<(Vec<IpAddr>, usize)> {
        let mut primary_only = None;
        let mut secondary_only = None;
        for &i in group {
            let c = self.candidates(i, req);
            match req.families {
                FamilyRequest::Single(f) => {
                    if let Some(ip) = c[f.index()] {
                        return Some((vec![ip], i));
                    }
                }
                FamilyRequest::RequireDual | FamilyRequest::PreferDual { .. } => {
                    if let [Some(v4), Some(v6)] = c {
                        return Some((vec![v4, v6], i));
                    }
                    if let FamilyRequest::PreferDual { primary } = req.families {
                        if primary_only.is_none()
                            && let Some(ip) = c[primary.index()]
                        {
                            primary_only = Some((vec![ip], i));
                        }
                        if secondary_only.is_none()
                            && let Some(ip) = c[primary.other().index()]
                        {
                            secondary_only = Some((vec![ip], i));
                        }
                    }
                }
            }
        }
        primary_only.or(secondary_only)
    }

    /// Pick addresses for `req`, which holds nothing now.
    fn allocate(&self, req: &ServiceRequest) -> Result<(Vec<IpAddr>, usize), AllocError> {
        if !req.requested_ips.is_empty() {
            return self.allocate_requested(req);
        }
        if let Some(rp) = &req.requested_pool {
            let &i = self
                .pool_index
                .get(rp)
                .ok_or_else(|| AllocError::UnknownPool { pool: rp.clone() })?;
            let pool = &self.pools[i];
            if let Some(reason) = pool.selection_problem(req) {
                return Err(AllocError::PoolNotAllowed {
                    pool: rp.clone(),
                    reason,
                });
            }
            return self.best_in_group(&[i], req).ok_or_else(|| {
                let family = self.missing_family(i, req);
                if pool.has_family(family) {
                    AllocError::PoolExhausted {
                        pool: rp.clone(),
                        family,
                    }
                } else {
                    AllocError::PoolLacksFamily {
                        pool: rp.clone(),
                        family,
                    }
                }
            });
        }
        let (pinned, general) = self.auto_order(req);
        if let Some(found) = self.best_in_group(&pinned, req) {
            return Ok(found);
        }
        if let Some(found) = self.best_in_group(&general, req) {
            return Ok(found);
        }
        Err(AllocError::NoAvailableIps {
            wanted: req.families,
            pools: self
                .verdicts(req)
                .into_iter()
                .map(|p| PoolRejection {
                    pool: p.pool,
                    verdict: p.verdict,
                })
                .collect(),
        })
    }

    fn allocate_requested(&self, req: &ServiceRequest) -> Result<(Vec<IpAddr>, usize), AllocError> {
        let ips = &req.requested_ips;
        let containing: Vec<usize> = (0..self.pools.len())
            .filter(|i| ips.iter().all(|ip| self.pools[*i].contains(ip)))
            .collect();
        if containing.is_empty() {
            if let Some(ip) = ips
                .iter()
                .find(|ip| !self.pools.iter().any(|p| p.contains(ip)))
            {
                return Err(AllocError::AddressNotInAnyPool { ip: *ip });
            }
            return Err(AllocError::AddressesInDifferentPools { ips: ips.clone() });
        }
        let Some(&i) = containing
            .iter()
            .find(|i| self.pools[**i].selection_problem(req).is_none())
        else {
            let first = &self.pools[containing[0]];
            return Err(AllocError::AddressNotInUsablePool {
                ip: ips[0],
                pool: first.pool.name.clone(),
                reason: first.selection_problem(req).unwrap_or_default(),
            });
        };
        let name = &self.pools[i].pool.name;
        if let Some(rp) = &req.requested_pool
            && rp != name
        {
            return Err(AllocError::RequestedPoolMismatch {
                ips: ips.clone(),
                actual: name.clone(),
                requested: rp.clone(),
            });
        }
        for ip in ips {
            self.check_ip(ip, req)
                .map_err(|conflict| AllocError::AddressTaken { ip: *ip, conflict })?;
        }
        Ok((ips.clone(), i))
    }

    /// The family to blame when pool `i` cannot serve `req`.
    fn missing_family(&self, i: usize, req: &ServiceRequest) -> IpFamily {
        let c = self.candidates(i, req);
        match req.families {
            FamilyRequest::Single(f) => f,
            FamilyRequest::PreferDual { primary } => primary,
            FamilyRequest::RequireDual => {
                if c[0].is_none() {
                    IpFamily::V4
                } else {
                    IpFamily::V6
                }
            }
        }
    }

    /// Every pool with a verdict, in consideration order.
    fn verdicts(&self, req: &ServiceRequest) -> Vec<PoolExplanation> {
        let (pinned, general) = self.auto_order(req);
        let mut order: Vec<usize> = Vec::new();
        for i in pinned.into_iter().chain(general).chain(0..self.pools.len()) {
            if !order.contains(&i) {
                order.push(i);
            }
        }
        let held = self.held.get(&req.key);
        order
            .into_iter()
            .map(|i| PoolExplanation {
                pool: self.pools[i].pool.name.clone(),
                verdict: self.verdict(i, req, held),
            })
            .collect()
    }

    fn verdict(&self, i: usize, req: &ServiceRequest, held: Option<&Held>) -> PoolVerdict {
        let p = &self.pools[i];
        let name = &p.pool.name;
        if let Some(h) = held
            && h.pool == *name
        {
            return PoolVerdict::Holds { ips: h.ips.clone() };
        }
        if !req.requested_ips.is_empty() {
            if !req.requested_ips.iter().all(|ip| p.contains(ip)) {
                return PoolVerdict::RequestedIpNotInPool;
            }
            if let Some(reason) = p.selection_problem(req) {
                return PoolVerdict::NotSelected { reason };
            }
            if let Some(rp) = &req.requested_pool
                && rp != name
            {
                return PoolVerdict::NotRequested {
                    requested: rp.clone(),
                };
            }
            for ip in &req.requested_ips {
                if let Err(conflict) = self.check_ip(ip, req) {
                    return PoolVerdict::RequestedIpTaken { ip: *ip, conflict };
                }
            }
            return PoolVerdict::Available {
                ips: req.requested_ips.clone(),
            };
        }
        if let Some(rp) = &req.requested_pool
            && rp != name
        {
            return PoolVerdict::NotRequested {
                requested: rp.clone(),
            };
        }
        if let Some(reason) = p.selection_problem(req) {
            return PoolVerdict::NotSelected { reason };
        }
        if req.requested_pool.is_none() {
            if p.pool.service_allocation.is_some() && !p.pins(req) && p.pool.auto_assign {
                return PoolVerdict::OnlyOnRequest;
            }
            if !p.pool.auto_assign {
                return PoolVerdict::AutoAssignOff;
            }
        }
        match self.best_in_group(&[i], req) {
            Some((ips, _)) => PoolVerdict::Available { ips },
            None => {
                let family = self.missing_family(i, req);
                if p.has_family(family) {
                    PoolVerdict::Exhausted { family }
                } else {
                    PoolVerdict::LacksFamily { family }
                }
            }
        }
    }

    fn take(&mut self, req: &ServiceRequest, ips: Vec<IpAddr>, pool: usize) {
        for ip in &ips {
            let f = IpFamily::of(ip);
            if !self.ips.contains_key(ip) {
                self.used[f.index()].insert(value(ip));
                if !req.sharing_key.is_empty() {
                    self.shared
                        .entry(req.sharing_key.clone())
                        .or_default()
                        .entry(req.backend_key.clone())
                        .or_default()
                        .insert(*ip);
                }
                let c = &mut self.pools[pool].counters;
                match f {
                    IpFamily::V4 => c.ipv4_addresses_in_use += 1,
                    IpFamily::V6 => c.ipv6_addresses_in_use += 1,
                }
                self.ips.insert(
                    *ip,
                    IpUse {
                        sharing: req.sharing_key.clone(),
                        backend: req.backend_key.clone(),
                        holders: BTreeSet::new(),
                        ports: BTreeMap::new(),
                    },
                );
            }
            if let Some(u) = self.ips.get_mut(ip) {
                u.holders.insert(req.key.clone());
                for port in &req.ports {
                    u.ports.insert(port.clone(), req.key.clone());
                }
            }
        }
        self.pools[pool].counters.services_allocated += 1;
        self.held.insert(
            req.key.clone(),
            Held {
                ips,
                pool: self.pools[pool].pool.name.clone(),
                ports: req.ports.clone(),
            },
        );
    }

    fn release_inner(&mut self, key: &ServiceKey) -> Option<Held> {
        let h = self.held.remove(key)?;
        let pool = self.pool_index.get(&h.pool).copied();
        for ip in &h.ips {
            let Some(u) = self.ips.get_mut(ip) else {
                continue;
            };
            u.holders.remove(key);
            for port in &h.ports {
                if u.ports.get(port) == Some(key) {
                    u.ports.remove(port);
                }
            }
            if !u.holders.is_empty() {
                continue;
            }
            let Some(u) = self.ips.remove(ip) else {
                continue;
            };
            let f = IpFamily::of(ip);
            self.used[f.index()].remove(value(ip));
            if let Some(by_backend) = self.shared.get_mut(&u.sharing) {
                if let Some(set) = by_backend.get_mut(&u.backend) {
                    set.remove(ip);
                    if set.is_empty() {
                        by_backend.remove(&u.backend);
                    }
                }
                if by_backend.is_empty() {
                    self.shared.remove(&u.sharing);
                }
            }
            if let Some(i) = pool {
                let c = &mut self.pools[i].counters;
                match f {
                    IpFamily::V4 => {
                        c.ipv4_addresses_in_use = c.ipv4_addresses_in_use.saturating_sub(1)
                    }
                    IpFamily::V6 => {
                        c.ipv6_addresses_in_use = c.ipv6_addresses_in_use.saturating_sub(1)
                    }
                }
            }
        }
        if let Some(i) = pool {
            let c = &mut self.pools[i].counters;
            c.services_allocated = c.services_allocated.saturating_sub(1);
        }
        Some(h)
    }

    /// Recompute in-use counters from the holder index (after pools changed).
    fn recount(&mut self) {
        for p in &mut self.pools {
            p.counters.ipv4_addresses_in_use = 0;
            p.counters.ipv6_addresses_in_use = 0;
            p.counters.services_allocated = 0;
        }
        for h in self.held.values() {
            if let Some(&i) = self.pool_index.get(&h.pool) {
                self.pools[i].counters.services_allocated += 1;
            }
        }
        for (ip, u) in &self.ips {
            let pool = u
                .holders
                .first()
                .and_then(|k| self.held.get(k))
                .and_then(|h| self.pool_index.get(&h.pool));
            if let Some(&i) = pool {
                let c = &mut self.pools[i].counters;
                match IpFamily::of(ip) {
                    IpFamily::V4 => c.ipv4_addresses_in_use += 1,
                    IpFamily::V6 => c.ipv6_addresses_in_use += 1,
                }
            }
        }
    }

    /// Internal consistency, for tests: indexes agree with the held map.
    #[doc(hidden)]
    pub fn check_consistency(&self) -> Result<(), String> {
        let mut expected: BTreeMap<IpAddr, BTreeSet<ServiceKey>> = BTreeMap::new();
        for (k, h) in &self.held {
            for ip in &h.ips {
                expected.entry(*ip).or_default().insert(k.clone());
            }
        }
        if expected.len() != self.ips.len() {
            return Err(format!(
                "holder index has {} addresses, held map {}",
                self.ips.len(),
                expected.len()
            ));
        }
        for (ip, hs) in &expected {
            let u = self.ips.get(ip).ok_or(format!("{ip} missing from index"))?;
            if &u.holders != hs {
                return Err(format!("{ip}: holders differ"));
            }
            if !self.used[IpFamily::of(ip).index()].contains(value(ip)) {
                return Err(format!("{ip} missing from used runs"));
            }
        }
        let mut counts = BTreeMap::<&str, (u64, u64, u64)>::new();
        for h in self.held.values() {
            counts.entry(&h.pool).or_default().2 += 1;
        }
        for (ip, u) in &self.ips {
            let pool = &self.held[u.holders.first().ok_or("empty holders")?].pool;
            let e = counts.entry(pool).or_default();
            match IpFamily::of(ip) {
                IpFamily::V4 => e.0 += 1,
                IpFamily::V6 => e.1 += 1,
            }
        }
        for p in &self.pools {
            let (v4, v6, s) = counts
                .get(p.pool.name.as_str())
                .copied()
                .unwrap_or_default();
            let c = p.counters;
            if (
                c.ipv4_addresses_in_use,
                c.ipv6_addresses_in_use,
                c.services_allocated,
            ) != (v4, v6, s)
            {
                return Err(format!(
                    "pool {} counters {:?} != {:?}",
                    p.pool.name,
                    c,
                    (v4, v6, s)
                ));
            }
        }
        Ok(())
    }
}

/// Shape checks on requested addresses (independent of pools).
fn validate_requested(req: &ServiceRequest) -> Result<(), AllocError> {
    let ips = &req.requested_ips;
    if ips.is_empty() {
        return Ok(());
    }
    if ips.len() > 2 {
        return Err(AllocError::TooManyAddresses { count: ips.len() });
    }
    let fams: BTreeSet<IpFamily> = ips.iter().map(IpFamily::of).collect();
    if fams.len() != ips.len() {
        return Err(AllocError::SameFamilyTwice { ips: ips.clone() });
    }
    let wanted: BTreeSet<IpFamily> = req.families.families().iter().copied().collect();
    if fams != wanted {
        return Err(AllocError::RequestedFamilyMismatch {
            ips: ips.clone(),
            wanted: req.families,
        });
    }
    Ok(())
}
