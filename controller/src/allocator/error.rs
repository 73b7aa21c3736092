//! Why an allocation failed, in words a Service owner can act on.

use std::fmt;
use std::net::IpAddr;

use super::explain::PoolVerdict;
use super::types::{FamilyRequest, IpFamily, Port, ServiceKey};

/// Why two Services cannot share an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharingRefusal {
    /// The holder has no `metallb.io/allow-shared-ip` annotation.
    HolderDoesNotShare,
    /// This Service has no `metallb.io/allow-shared-ip` annotation.
    ServiceDoesNotShare,
    DifferentKey {
        ours: String,
        theirs: String,
    },
    /// Both use `externalTrafficPolicy: Local` (or one does) with different pod selectors.
    DifferentBackends {
        ours: String,
        theirs: String,
    },
}

impl fmt::Display for SharingRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SharingRefusal::HolderDoesNotShare => {
                f.write_str("the holder does not allow sharing (no allow-shared-ip annotation)")
            }
            SharingRefusal::ServiceDoesNotShare => {
                f.write_str("this service does not allow sharing (no allow-shared-ip annotation)")
            }
            SharingRefusal::DifferentKey { ours, theirs } => {
                write!(
                    f,
                    "sharing key {ours:?} differs from the holder's {theirs:?}"
                )
            }
            SharingRefusal::DifferentBackends { ours, theirs } => write!(
                f,
                "backend selector {ours:?} differs from the holder's {theirs:?} \
                 (externalTrafficPolicy Local services must select the same pods)"
            ),
        }
    }
}

/// An address is held by another Service in a way this one cannot join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    Sharing {
        holder: ServiceKey,
        reason: SharingRefusal,
    },
    Port {
        port: Port,
        holder: ServiceKey,
    },
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::Sharing { holder, reason } => write!(f, "taken by {holder}: {reason}"),
            Conflict::Port { port, holder } => {
                write!(f, "sharing conflict on port {port} with {holder}")
            }
        }
    }
}

/// A pool rejected during automatic assignment, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRejection {
    pub pool: String,
    pub verdict: PoolVerdict,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("no IPAddressPool is configured")]
    NoPools,
    #[error("no available IPs for {wanted}{}", rejections(.pools))]
    NoAvailableIps {
        wanted: FamilyRequest,
        pools: Vec<PoolRejection>,
    },
    #[error("requested address pool {pool:?} does not exist")]
    UnknownPool { pool: String },
    #[error("requested address pool {pool:?} may not serve this service: {reason}")]
    PoolNotAllowed { pool: String, reason: String },
    #[error("address pool {pool:?} has no {family} addresses")]
    PoolLacksFamily { pool: String, family: IpFamily },
    #[error("address pool {pool:?} is exhausted ({family})")]
    PoolExhausted { pool: String, family: IpFamily },
    #[error("requested address {ip} is not in any address pool")]
    AddressNotInAnyPool { ip: IpAddr },
    #[error("requested addresses {} are not in one address pool", list(.ips))]
    AddressesInDifferentPools { ips: Vec<IpAddr> },
    #[error(
        "requested address {ip} is in pool {pool:?}, which may not serve this service: {reason}"
    )]
    AddressNotInUsablePool {
        ip: IpAddr,
        pool: String,
        reason: String,
    },
    #[error("requested address {ip} is {conflict}")]
    AddressTaken { ip: IpAddr, conflict: Conflict },
    #[error(
        "requested addresses {} are in pool {actual:?}, not in the requested pool {requested:?}",
        list(.ips)
    )]
    RequestedPoolMismatch {
        ips: Vec<IpAddr>,
        actual: String,
        requested: String,
    },
    #[error("requested addresses {} do not match the service's IP families ({wanted})", list(.ips))]
    RequestedFamilyMismatch {
        ips: Vec<IpAddr>,
        wanted: FamilyRequest,
    },
    #[error("too many requested addresses ({count}): at most one IPv4 and one IPv6")]
    TooManyAddresses { count: usize },
    #[error("requested addresses {} are of the same family: at most one per family", list(.ips))]
    SameFamilyTwice { ips: Vec<IpAddr> },
    #[error("both the {annotation} annotation and spec.loadBalancerIP are set; use only one")]
    BothAnnotationAndSpec { annotation: &'static str },
    #[error("{field}: {value:?} is not an IP address")]
    InvalidAddress { field: String, value: String },
    #[error("spec.clusterIPs {value:?}: {reason}")]
    InvalidClusterIps { value: Vec<String>, reason: String },
    #[error(
        "spec.ipFamilyPolicy {value:?} is not SingleStack, PreferDualStack or RequireDualStack"
    )]
    InvalidFamilyPolicy { value: String },
    #[error("held addresses {} no longer match the service's IP families ({wanted})", list(.ips))]
    FamilyChanged {
        ips: Vec<IpAddr>,
        wanted: FamilyRequest,
    },
    #[error("held addresses {} are not in any pool this service may use", list(.ips))]
    LeftPools { ips: Vec<IpAddr> },
    #[error("the service now requests pool {requested:?} but holds addresses from {actual:?}")]
    PoolChanged { requested: String, actual: String },
    #[error("the service now requests {} but holds {}", list(.requested), list(.held))]
    RequestedIpsChanged {
        requested: Vec<IpAddr>,
        held: Vec<IpAddr>,
    },
    #[error("held address {ip} is now {conflict}")]
    HeldAddressConflict { ip: IpAddr, conflict: Conflict },
    #[error("no addresses to adopt")]
    NothingToAdopt,
}

fn list(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn rejections(pools: &[PoolRejection]) -> String {
    if pools.is_empty() {
        return ": no pool may serve this service automatically".into();
    }
    let parts: Vec<String> = pools
        .iter()
        .map(|r| format!("pool {}: {}", r.pool, r.verdict))
        .collect();
    format!(": {}", parts.join("; "))
}
