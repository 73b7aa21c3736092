//! Inputs and outputs of the allocator: pools, Service requests, assignments.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use metalnet::labels::Selector;
use metalnet::validate::ParsedPool;

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    pub fn other(self) -> Self {
        match self {
            IpFamily::V4 => IpFamily::V6,
            IpFamily::V6 => IpFamily::V4,
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            IpFamily::V4 => 0,
            IpFamily::V6 => 1,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// Which load-balancer address families a Service wants, as MetalLB derives them from
/// `spec.clusterIPs` (the Service's families) and `spec.ipFamilyPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FamilyRequest {
    /// Exactly one address of this family.
    Single(IpFamily),
    /// One address of each family, both from the same pool; fail otherwise.
    RequireDual,
    /// Both families from the same pool when some pool has both; else one address, of the
    /// `primary` family (`spec.ipFamilies[0]`) if possible.
    PreferDual { primary: IpFamily },
}

impl FamilyRequest {
    /// The families a complete (dual-stack when possible) assignment has.
    pub fn families(self) -> &'static [IpFamily] {
        match self {
            FamilyRequest::Single(IpFamily::V4) => &[IpFamily::V4],
            FamilyRequest::Single(IpFamily::V6) => &[IpFamily::V6],
            FamilyRequest::RequireDual | FamilyRequest::PreferDual { .. } => {
                &[IpFamily::V4, IpFamily::V6]
            }
        }
    }

    /// Whether `ips` (already held) satisfy this request family-wise.
    pub(crate) fn accepts(self, ips: &[IpAddr]) -> bool {
        let fams: BTreeSet<IpFamily> = ips.iter().map(IpFamily::of).collect();
        if fams.len() != ips.len() {
            return false;
        }
        match self {
            FamilyRequest::Single(f) => ips.len() == 1 && fams.contains(&f),
            FamilyRequest::RequireDual => ips.len() == 2,
            FamilyRequest::PreferDual { .. } => !ips.is_empty(),
        }
    }
}

impl fmt::Display for FamilyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FamilyRequest::Single(fam) => write!(f, "{fam}"),
            FamilyRequest::RequireDual => f.write_str("dual-stack (RequireDualStack)"),
            FamilyRequest::PreferDual { primary } => {
                write!(f, "dual-stack or {primary} (PreferDualStack)")
            }
        }
    }
}

/// `namespace/name` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One Service port: protocol (`TCP`, `UDP`, `SCTP`) and port number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port {
    pub protocol: String,
    pub port: i32,
}

impl Port {
    pub fn new(protocol: impl Into<String>, port: i32) -> Self {
        Self {
            protocol: protocol.into(),
            port,
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

/// What a LoadBalancer Service asks of the allocator. Build it with
/// [`ServiceRequest::from_service`](super::ServiceRequest::from_service) or by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRequest {
    pub key: ServiceKey,
    pub labels: BTreeMap<String, String>,
    /// Labels of the Service's namespace (for `namespaceSelectors`).
    pub namespace_labels: BTreeMap<String, String>,
    pub families: FamilyRequest,
    /// `metallb.io/loadBalancerIPs` or `spec.loadBalancerIP`; at most one per family.
    pub requested_ips: Vec<IpAddr>,
    /// `metallb.io/address-pool`.
    pub requested_pool: Option<String>,
    /// `metallb.io/allow-shared-ip`; empty means the address is not shared.
    pub sharing_key: String,
    pub ports: Vec<Port>,
    /// Under `externalTrafficPolicy: Local` the pod selector (`k=v,…` sorted); else empty.
    pub backend_key: String,
}

impl ServiceRequest {
    /// A single-stack IPv4 request with no constraints: a convenient base for tests and tools.
    pub fn simple(key: ServiceKey) -> Self {
        Self {
            key,
            labels: BTreeMap::new(),
            namespace_labels: BTreeMap::new(),
            families: FamilyRequest::Single(IpFamily::V4),
            requested_ips: Vec::new(),
            requested_pool: None,
            sharing_key: String::new(),
            ports: Vec::new(),
            backend_key: String::new(),
        }
    }
}

/// The addresses a Service holds and the pool they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// IPv4 before IPv6 for auto-assigned dual-stack (as MetalLB); requested order otherwise.
    pub ips: Vec<IpAddr>,
    pub pool: String,
    pub outcome: Outcome,
}

/// What [`Allocator::assign`](super::Allocator::assign) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The Service already held these addresses and they are still valid.
    Unchanged,
    /// The Service had no addresses and got these.
    Allocated,
    /// PreferDualStack Service that held one family got the other one from the same pool.
    AddedFamily,
    /// The Service's previous addresses became invalid (reason) and it got these instead.
    Reallocated {
        previous: Vec<IpAddr>,
        reason: String,
    },
}

/// `spec.serviceAllocation` of a pool, selectors compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAllocation {
    /// Lower is preferred; 0 (or negative) means "no priority", after prioritised pools.
    pub priority: i32,
    pub namespaces: BTreeSet<String>,
    pub namespace_selectors: Vec<Selector>,
    pub service_selectors: Vec<Selector>,
}

impl ServiceAllocation {
    /// Whether the pool is limited to some namespaces.
    pub fn restricts_namespaces(&self) -> bool {
        !self.namespaces.is_empty() || !self.namespace_selectors.is_empty()
    }
}

/// An address pool as the allocator sees it (IPAddressPool with its addresses parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    /// In the order of `spec.addresses` (ranges already summarised to CIDRs).
    pub cidrs: Vec<IpNet>,
    pub auto_assign: bool,
    pub avoid_buggy_ips: bool,
    pub service_allocation: Option<ServiceAllocation>,
}

impl Pool {
    /// A plain auto-assign pool.
    pub fn new(name: impl Into<String>, cidrs: Vec<IpNet>) -> Self {
        Self {
            name: name.into(),
            cidrs,
            auto_assign: true,
            avoid_buggy_ips: false,
            service_allocation: None,
        }
    }

    /// Build from a pool the config crate validated (`validate::valid_pools`).
    pub fn from_parsed(p: &ParsedPool) -> Self {
        Self {
            name: p.name.clone(),
            cidrs: p.cidrs.clone(),
            auto_assign: p.auto_assign,
            avoid_buggy_ips: p.avoid_buggy_ips,
            service_allocation: p.allocation.as_ref().map(|a| ServiceAllocation {
                priority: a.priority,
                namespaces: a.namespaces.clone(),
                namespace_selectors: a.namespace_selectors.to_vec(),
                service_selectors: a.service_selectors.to_vec(),
            }),
        }
    }
}

/// Per-pool numbers for the `metallb_allocator_*` metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounters {
    /// Usable addresses (after avoidBuggyIPs), exact; see [`PoolCounters::addresses_total`].
    pub ipv4_addresses_total: u128,
    pub ipv6_addresses_total: u128,
    /// Distinct addresses held by at least one Service.
    pub ipv4_addresses_in_use: u64,
    pub ipv6_addresses_in_use: u64,
    /// Services holding addresses from the pool.
    pub services_allocated: u64,
}

impl PoolCounters {
    /// Total usable addresses, saturated at `i64::MAX` as MetalLB reports huge IPv6 pools.
    pub fn addresses_total(&self) -> i64 {
        let t = self
            .ipv4_addresses_total
            .saturating_add(self.ipv6_addresses_total);
        i64::try_from(t).unwrap_or(i64::MAX)
    }
    pub fn ipv4_total_i64(&self) -> i64 {
        i64::try_from(self.ipv4_addresses_total).unwrap_or(i64::MAX)
    }
    pub fn ipv6_total_i64(&self) -> i64 {
        i64::try_from(self.ipv6_addresses_total).unwrap_or(i64::MAX)
    }
    pub fn addresses_in_use(&self) -> u64 {
        self.ipv4_addresses_in_use + self.ipv6_addresses_in_use
    }
}

/// An address a Service's status says it holds, to adopt (see [`crate::allocator::Allocator::adopt_claims`]).
#[derive(Debug, Clone)]
pub struct Claim {
    pub req: ServiceRequest,
    pub ips: Vec<IpAddr>,
    /// The pool the addresses were allocated from (the `metallb.io/ip-allocated-from-pool`
    /// annotation), preferred when several pools contain them.
    pub pool: Option<String>,
    /// When they were allocated (nanoseconds since the Unix epoch), if recorded.
    pub allocated_at: Option<i128>,
}
