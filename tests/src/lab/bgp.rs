//! Types shared by the BGP peers of the lab (BIRD, FRR, GoBGP).

use super::{LabError, Result, wait_for, wait_for_value};
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

/// A standard community `asn:value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Community {
    pub asn: u16,
    pub value: u16,
}

impl Community {
    pub fn new(asn: u16, value: u16) -> Self {
        Community { asn, value }
    }
    pub fn from_u32(v: u32) -> Self {
        Community {
            asn: (v >> 16) as u16,
            value: (v & 0xffff) as u16,
        }
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.asn, self.value)
    }
}

impl FromStr for Community {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Self> {
        let parts = split_numbers(s);
        match parts.as_slice() {
            [a, v] => Ok(Community {
                asn: parse_num(a, s)?,
                value: parse_num(v, s)?,
            }),
            _ => Err(LabError::Parse {
                what: format!("community {s:?}"),
                reason: "expected asn:value".into(),
            }),
        }
    }
}

/// A large community `global:local1:local2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LargeCommunity {
    pub global: u32,
    pub local1: u32,
    pub local2: u32,
}

impl LargeCommunity {
    pub fn new(global: u32, local1: u32, local2: u32) -> Self {
        LargeCommunity {
            global,
            local1,
            local2,
        }
    }
}

impl fmt::Display for LargeCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.global, self.local1, self.local2)
    }
}

impl FromStr for LargeCommunity {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Self> {
        let parts = split_numbers(s);
        match parts.as_slice() {
            [g, a, b] => Ok(LargeCommunity {
                global: parse_num(g, s)?,
                local1: parse_num(a, s)?,
                local2: parse_num(b, s)?,
            }),
            _ => Err(LabError::Parse {
                what: format!("large community {s:?}"),
                reason: "expected global:local1:local2".into(),
            }),
        }
    }
}

/// Splits `"(1, 2, 3)"`, `"1:2:3"` or `"1,2"` into number strings.
fn split_numbers(s: &str) -> Vec<&str> {
    s.split(|c: char| c == ':' || c == ',' || c == '(' || c == ')' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_num<T: FromStr>(p: &str, whole: &str) -> Result<T>
where
    T::Err: fmt::Display,
{
    p.parse().map_err(|e: T::Err| LabError::Parse {
        what: format!("{whole:?}"),
        reason: format!("{p:?}: {e}"),
    })
}

/// A route as read back from a BGP peer's RIB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: IpNet,
    /// Resolved next hops (several for ECMP); empty for a locally originated route.
    pub next_hops: Vec<IpAddr>,
    /// AS numbers in path order (sets flattened).
    pub as_path: Vec<u32>,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    pub communities: Vec<Community>,
    pub large_communities: Vec<LargeCommunity>,
    /// Which protocol / neighbor the route came from (BIRD protocol name, FRR/GoBGP peer
    /// address, or `local`).
    pub from_protocol: String,
    /// Whether this is the selected best route for the prefix.
    pub best: bool,
}

impl Route {
    pub(crate) fn new(prefix: IpNet) -> Self {
        Route {
            prefix,
            next_hops: Vec::new(),
            as_path: Vec::new(),
            local_pref: None,
            med: None,
            communities: Vec::new(),
            large_communities: Vec::new(),
            from_protocol: String::new(),
            best: false,
        }
    }
}

/// An import/export policy of a neighbor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    All,
    None,
    /// Raw policy text, only understood by BIRD: the body of `filter { ... }`.
    BirdFilter(String),
}

/// A BGP neighbor, shared by the BIRD, FRR and GoBGP configurations.
#[derive(Debug, Clone)]
pub struct BgpNeighbor {
    /// Protocol name (BIRD) — derived from the address when `None`.
    pub name: Option<String>,
    pub address: IpAddr,
    pub asn: u32,
    pub local_address: Option<IpAddr>,
    /// Wait for the neighbor to connect.
    pub passive: bool,
    /// TCP MD5 password.
    pub password: Option<String>,
    /// eBGP multihop TTL.
    pub multihop: Option<u8>,
    /// Remote TCP port (default 179).
    pub port: Option<u16>,
    /// Hold time in seconds (keepalive is a third of it).
    pub hold_time: Option<u16>,
    pub ipv4: bool,
    pub ipv6: bool,
    pub import: Policy,
    pub export: Policy,
    /// Graceful restart (RFC 4724) with this restart time in seconds: BIRD only
    /// (`graceful restart on`); the others keep their defaults.
    pub graceful_restart: Option<u16>,
}

impl BgpNeighbor {
    /// An active IPv4+IPv6 neighbor importing and exporting everything.
    pub fn new(address: IpAddr, asn: u32) -> Self {
        BgpNeighbor {
            name: None,
            address,
            asn,
            local_address: None,
            passive: false,
            password: None,
            multihop: None,
            port: None,
            hold_time: None,
            ipv4: true,
            ipv6: true,
            import: Policy::All,
            export: Policy::All,
            graceful_restart: None,
        }
    }

    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    pub fn passive(mut self) -> Self {
        self.passive = true;
        self
    }

    /// The name used for this neighbor in BIRD (letters, digits, `_`).
    pub fn protocol_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!(
                "peer_{}",
                self.address
                    .to_string()
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            ),
        }
    }
}

/// A static route originated by a peer (BIRD static protocol, FRR `network`, GoBGP rib add).
#[derive(Debug, Clone)]
pub struct StaticRoute {
    pub prefix: IpNet,
    /// Next hop; `None` originates a blackhole (BIRD) / locally sourced route.
    pub via: Option<IpAddr>,
    pub communities: Vec<Community>,
    pub large_communities: Vec<LargeCommunity>,
}

impl StaticRoute {
    pub fn new(prefix: IpNet) -> Self {
        StaticRoute {
            prefix,
            via: None,
            communities: Vec::new(),
            large_communities: Vec::new(),
        }
    }
}

/// What the lab's BGP peers have in common.
pub trait BgpRouter {
    /// All routes of the RIB (IPv4 and IPv6).
    fn routes(&self) -> Result<Vec<Route>>;
    /// The session state with the neighbor (BIRD protocol name or peer address), as the
    /// daemon words it (`Established`, `Active Socket: Connection refused`, `active`, ...);
    /// `None` when the daemon does not know the neighbor.
    fn session_state(&self, neighbor: &str) -> Result<Option<String>>;
    /// Stops the daemon(s).
    fn stop(&self);

    /// Whether the session with the neighbor is Established.
    fn is_established(&self, neighbor: &str) -> Result<bool> {
        Ok(self
            .session_state(neighbor)?
            .is_some_and(|s| s.to_ascii_lowercase().starts_with("established")))
    }

    /// Waits until the session with `neighbor` is Established; the timeout error names the
    /// last state seen.
    fn wait_established(&self, neighbor: &str, timeout: Duration) -> Result<()> {
        let mut last = String::from("no answer from the daemon");
        let waited = wait_for(
            &format!("BGP session {neighbor} to be Established"),
            timeout,
            || match self.session_state(neighbor) {
                Ok(Some(state)) => {
                    let up = state.to_ascii_lowercase().starts_with("established");
                    last = state;
                    up
                }
                Ok(None) => {
                    last = "unknown neighbor".into();
                    false
                }
                Err(e) => {
                    last = e.to_string();
                    false
                }
            },
        );
        waited.map_err(|_| LabError::Timeout {
            what: format!("BGP session {neighbor} to be Established (last state: {last})"),
            timeout: super::patient(timeout),
        })
    }

    /// Waits until a route for `prefix` satisfying `pred` is present, and returns it.
    fn wait_route(
        &self,
        prefix: &str,
        pred: &dyn Fn(&Route) -> bool,
        timeout: Duration,
    ) -> Result<Route> {
        let prefix: IpNet = prefix
            .parse()
            .map_err(|e| LabError::Invalid(format!("prefix {prefix:?}: {e}")))?;
        wait_for_value(&format!("route {prefix}"), timeout, || {
            self.routes()
                .ok()?
                .into_iter()
                .find(|r| r.prefix == prefix && pred(r))
        })
    }

    /// Waits until no route for `prefix` is present.
    fn wait_no_route(&self, prefix: &str, timeout: Duration) -> Result<()> {
        let prefix: IpNet = prefix
            .parse()
            .map_err(|e| LabError::Invalid(format!("prefix {prefix:?}: {e}")))?;
        wait_for_value(&format!("route {prefix} to go away"), timeout, || {
            let routes = self.routes().ok()?;
            (!routes.iter().any(|r| r.prefix == prefix)).then_some(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn communities_parse_in_all_notations() {
        assert_eq!(
            "(64512,5)".parse::<Community>().unwrap(),
            Community::new(64512, 5)
        );
        assert_eq!(
            "64512:5".parse::<Community>().unwrap(),
            Community::new(64512, 5)
        );
        assert_eq!(
            "(64512, 1, 2)".parse::<LargeCommunity>().unwrap(),
            LargeCommunity::new(64512, 1, 2)
        );
        assert!("1:2:3".parse::<Community>().is_err());
        assert!("70000:1".parse::<Community>().is_err());
        assert_eq!(Community::from_u32(4227923975), Community::new(64513, 7));
    }
}
