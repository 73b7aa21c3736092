//! Why a Service got (or did not get) addresses from each pool.

use std::fmt;
use std::net::IpAddr;

use super::error::Conflict;
use super::types::{FamilyRequest, IpFamily, ServiceKey};

/// The allocator's view of one pool for one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolVerdict {
    /// The Service holds these addresses from this pool.
    Holds {
        ips: Vec<IpAddr>,
    },
    /// The pool could serve the Service now with these addresses.
    Available {
        ips: Vec<IpAddr>,
    },
    /// The pool's serviceAllocation does not select the Service.
    NotSelected {
        reason: String,
    },
    /// The pool has a serviceAllocation with neither namespaces nor serviceSelectors: it serves
    /// only Services that ask for it (by pool annotation or address).
    OnlyOnRequest,
    /// `autoAssign: false`: used only when a Service asks for it.
    AutoAssignOff,
    /// The Service asks for another pool.
    NotRequested {
        requested: String,
    },
    LacksFamily {
        family: IpFamily,
    },
    Exhausted {
        family: IpFamily,
    },
    /// The Service asks for addresses and they are not (all) in this pool.
    RequestedIpNotInPool,
    RequestedIpTaken {
        ip: IpAddr,
        conflict: Conflict,
    },
}

impl fmt::Display for PoolVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ips = |v: &[IpAddr]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            PoolVerdict::Holds { ips: v } => write!(f, "holds {}", ips(v)),
            PoolVerdict::Available { ips: v } => write!(f, "available ({})", ips(v)),
            PoolVerdict::NotSelected { reason } => {
                write!(f, "not selected by its serviceAllocation: {reason}")
            }
            PoolVerdict::OnlyOnRequest => f.write_str(
                "serviceAllocation has no namespaces or serviceSelectors: used only on request",
            ),
            PoolVerdict::AutoAssignOff => f.write_str("autoAssign is off: used only on request"),
            PoolVerdict::NotRequested { requested } => {
                write!(f, "the service requests pool {requested:?}")
            }
            PoolVerdict::LacksFamily { family } => write!(f, "has no {family} addresses"),
            PoolVerdict::Exhausted { family } => write!(f, "exhausted ({family})"),
            PoolVerdict::RequestedIpNotInPool => f.write_str("requested address not in pool"),
            PoolVerdict::RequestedIpTaken { ip, conflict } => {
                write!(f, "requested address {ip} is {conflict}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolExplanation {
    pub pool: String,
    pub verdict: PoolVerdict,
}

/// Every pool in the order the allocator considers them for this Service (pinned pools by
/// priority, then general auto-assign pools, then the rest by name), with a verdict each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub service: ServiceKey,
    pub families: FamilyRequest,
    pub requested_ips: Vec<IpAddr>,
    pub requested_pool: Option<String>,
    pub held: Option<(Vec<IpAddr>, String)>,
    pub pools: Vec<PoolExplanation>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "service {} wants {}", self.service, self.families)?;
        if !self.requested_ips.is_empty() {
            let v: Vec<_> = self.requested_ips.iter().map(|i| i.to_string()).collect();
            write!(f, ", requests {}", v.join(","))?;
        }
        if let Some(p) = &self.requested_pool {
            write!(f, ", requests pool {p:?}")?;
        }
        match &self.held {
            Some((ips, pool)) => {
                let v: Vec<_> = ips.iter().map(|i| i.to_string()).collect();
                writeln!(f, "; holds {} from pool {pool:?}", v.join(","))?;
            }
            None => writeln!(f, "; holds nothing")?,
        }
        if self.pools.is_empty() {
            writeln!(f, "  (no pools configured)")?;
        }
        for p in &self.pools {
            writeln!(f, "  pool {}: {}", p.pool, p.verdict)?;
        }
        Ok(())
    }
}
