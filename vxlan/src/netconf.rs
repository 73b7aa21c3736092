//! Flannel's `net-conf.json`: parsing, validation and Flannel's defaults (pure).
//!
//! Keys and defaults follow Flannel's `pkg/subnet/config.go` and the vxlan/host-gw backends:
//! `EnableIPv4` defaults to true; `SubnetLen` to 24 when `Network` is /22 or larger, else one
//! bit longer than the network; `SubnetMin`/`SubnetMax` to the second and the last subnet;
//! vxlan `VNI` 1, `Port` 8472 (Flannel's 0 means the kernel default, 8472), `Learning` off.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};

/// The kernel's (and so Flannel's) default VXLAN port.
pub const DEFAULT_PORT: u16 = 8472;

/// A bad `net-conf.json`, naming the key.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NetConfError {
    #[error("net-conf.json is not a JSON object: {0}")]
    Syntax(String),
    #[error("net-conf.json: {key}: {reason}")]
    Key { key: String, reason: String },
}

fn bad(key: &str, reason: impl Into<String>) -> NetConfError {
    NetConfError::Key {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// How packets reach other nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Vxlan(VxlanConf),
    /// Plain routes via each peer's public IP (peers must share a segment).
    HostGw,
}

impl Backend {
    /// The value of the `backend-type` annotation.
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Vxlan(_) => "vxlan",
            Backend::HostGw => "host-gw",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanConf {
    pub vni: u32,
    pub port: u16,
    /// Device MTU; `None`: the underlay interface's MTU minus the encapsulation overhead.
    pub mtu: Option<u32>,
    pub direct_routing: bool,
    pub learning: bool,
}

/// One address family's pool of node subnets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub network: IpNet,
    pub subnet_len: u8,
    /// First and last subnet address a node may lease.
    pub subnet_min: IpAddr,
    pub subnet_max: IpAddr,
}

/// A validated `net-conf.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConf {
    pub ipv4: Option<Pool>,
    pub ipv6: Option<Pool>,
    pub backend: Backend,
}

impl NetConf {
    pub fn parse(text: &str) -> Result<NetConf, NetConfError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| NetConfError::Syntax(e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(NetConfError::Syntax("expected an object".into()));
        };
        let enable_v4 = opt_bool(&obj, "EnableIPv4")?.unwrap_or(true);
        let enable_v6 = opt_bool(&obj, "EnableIPv6")?.unwrap_or(false);
        if !enable_v4 && !enable_v6 {
            return Err(bad(
                "EnableIPv4",
                "both EnableIPv4 and EnableIPv6 are false: nothing to do",
            ));
        }
        let ipv4 = if enable_v4 {
            Some(pool(
                &obj,
                "Network",
                "SubnetLen",
                "SubnetMin",
                "SubnetMax",
                false,
            )?)
        } else {
            None
        };
        let ipv6 = if enable_v6 {
            Some(pool(
                &obj,
                "IPv6Network",
                "IPv6SubnetLen",
                "IPv6SubnetMin",
                "IPv6SubnetMax",
                true,
            )?)
        } else {
            None
        };
        let backend = match obj.get("Backend") {
            None | Some(Value::Null) => {
                return Err(bad("Backend", "missing (Type vxlan or host-gw)"));
            }
            Some(Value::Object(b)) => backend(b)?,
            Some(_) => return Err(bad("Backend", "expected an object")),
        };
        Ok(NetConf {
            ipv4,
            ipv6,
            backend,
        })
    }
}

fn backend(b: &Map<String, Value>) -> Result<Backend, NetConfError> {
    let ty = match b.get("Type") {
        Some(Value::String(s)) => s.as_str(),
        None => return Err(bad("Backend.Type", "missing (vxlan or host-gw)")),
        Some(_) => return Err(bad("Backend.Type", "expected a string")),
    };
    match ty {
        "vxlan" => {
            let vni = opt_uint(b, "VNI", "Backend.VNI")?.unwrap_or(1);
            if vni == 0 || vni > 0xff_ffff {
                return Err(bad("Backend.VNI", format!("{vni} is not in 1..16777215")));
            }
            let port = match opt_uint(b, "Port", "Backend.Port")? {
                None | Some(0) => DEFAULT_PORT,
                Some(p) if p <= 65535 => p as u16,
                Some(p) => return Err(bad("Backend.Port", format!("{p} is not a UDP port"))),
            };
            let mtu = match opt_uint(b, "MTU", "Backend.MTU")? {
                None | Some(0) => None,
                Some(m) if (68..=65535).contains(&m) => Some(m as u32),
                Some(m) => return Err(bad("Backend.MTU", format!("{m} is not in 68..65535"))),
            };
            let direct_routing = opt_bool(b, "DirectRouting")
                .map_err(|_| bad("Backend.DirectRouting", "expected true or false"))?
                .unwrap_or(false);
            let learning = opt_bool(b, "Learning")
                .map_err(|_| bad("Backend.Learning", "expected true or false"))?
                .unwrap_or(false);
            if let Some(Value::Bool(true)) = b.get("GBP") {
                return Err(bad("Backend.GBP", "group based policy is not supported"));
            }
            Ok(Backend::Vxlan(VxlanConf {
                vni: vni as u32,
                port,
                mtu,
                direct_routing,
                learning,
            }))
        }
        "host-gw" => Ok(Backend::HostGw),
        other => Err(bad(
            "Backend.Type",
            format!("{other:?} is not supported (vxlan or host-gw)"),
        )),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, NetConfError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(key, "expected true or false")),
    }
}

fn opt_uint(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<u64>, NetConfError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(path, "expected a non-negative integer")),
    }
}

fn opt_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, NetConfError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(key, "expected a string")),
    }
}

/// Reads one family's pool: network, subnet length, min and max, with Flannel's defaults.
fn pool(
    obj: &Map<String, Value>,
    net_key: &str,
    len_key: &str,
    min_key: &str,
    max_key: &str,
    v6: bool,
) -> Result<Pool, NetConfError> {
    let text = opt_str(obj, net_key)?.ok_or_else(|| bad(net_key, "missing"))?;
    let network: IpNet = text
        .parse()
        .map_err(|_| bad(net_key, format!("{text:?} is not a CIDR")))?;
    if network.addr().is_ipv6() != v6 {
        let fam = if v6 { "IPv6" } else { "IPv4" };
        return Err(bad(net_key, format!("{text} is not an {fam} network")));
    }
    let network = network.trunc();
    let max_bits: u8 = if v6 { 128 } else { 32 };
    let plen = network.prefix_len();
    let subnet_len = match opt_uint(obj, len_key, len_key)? {
        None | Some(0) => {
            let (threshold, default) = if v6 { (62, 64) } else { (22, 24) };
            if plen <= threshold { default } else { plen + 1 }
        }
        Some(l) => u8::try_from(l).unwrap_or(u8::MAX),
    };
    let limit = if v6 { 126 } else { 30 };
    if subnet_len <= plen || subnet_len > limit {
        return Err(bad(
            len_key,
            format!("{subnet_len} must be longer than the network's /{plen} and at most /{limit}"),
        ));
    }
    let _ = max_bits;
    let first = subnet_at(&network, subnet_len, 0);
    // The last subnet: the network's last address aligned down (an index would not fit in
    // u64 when an IPv6 network holds more than 2^64 subnets).
    let last = IpNet::new(network.broadcast(), subnet_len)
        .map_err(|_| bad(len_key, "bad subnet length"))?
        .network();
    let default_min = subnet_at(&network, subnet_len, 1);
    let read_addr = |key: &str, default: IpAddr| -> Result<IpAddr, NetConfError> {
        match opt_str(obj, key)? {
            None => Ok(default),
            Some(s) => {
                let a: IpAddr = s
                    .parse()
                    .map_err(|_| bad(key, format!("{s:?} is not an IP address")))?;
                if !network.contains(&a) {
                    return Err(bad(key, format!("{a} is outside the network {network}")));
                }
                // Align down to the subnet containing it.
                Ok(IpNet::new(a, subnet_len)
                    .map_err(|_| bad(key, "bad subnet length"))?
                    .network())
            }
        }
    };
    let subnet_min = read_addr(min_key, default_min)?;
    let subnet_max = read_addr(max_key, last)?;
    let _ = first;
    if ord(subnet_min) > ord(subnet_max) {
        return Err(bad(
            min_key,
            format!("{subnet_min} is above {max_key} {subnet_max}"),
        ));
    }
    Ok(Pool {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

/// The address of the `index`-th subnet of length `len` in `network` (saturating).
pub fn subnet_at(network: &IpNet, len: u8, index: u64) -> IpAddr {
    match network {
        IpNet::V4(n) => {
            let shift = 32 - u32::from(len);
            let base = u32::from(n.network()) as u64;
            let v = base + (index << shift);
            IpAddr::V4(Ipv4Addr::from(v.min(u32::MAX as u64) as u32))
        }
        IpNet::V6(n) => {
            let shift = 128 - u32::from(len);
            let base = u128::from(n.network());
            let v = base.saturating_add((index as u128) << shift);
            IpAddr::V6(Ipv6Addr::from(v))
        }
    }
}

/// An address as a number, for ordering across families (v4 below v6).
pub fn ord(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

impl Pool {
    /// The subnet of this pool's length starting at `addr`.
    pub fn subnet(&self, addr: IpAddr) -> IpNet {
        match addr {
            IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, self.subnet_len).expect("len checked")),
            IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, self.subnet_len).expect("len checked")),
        }
    }

    /// How many subnets lie between `subnet_min` and `subnet_max` (capped at u64::MAX).
    pub fn lease_count(&self) -> u64 {
        let shift = if self.network.addr().is_ipv4() {
            32
        } else {
            128
        } - u32::from(self.subnet_len);
        let span = (ord(self.subnet_max) - ord(self.subnet_min)) >> shift;
        u64::try_from(span).unwrap_or(u64::MAX - 1) + 1
    }

    /// The `i`-th leasable subnet (0-based from `subnet_min`).
    pub fn lease_at(&self, i: u64) -> IpNet {
        let shift = if self.network.addr().is_ipv4() {
            32
        } else {
            128
        } - u32::from(self.subnet_len);
        let v = ord(self.subnet_min) + ((i as u128) << shift);
        let addr = match self.network {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
        };
        self.subnet(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_err(text: &str) -> String {
        match NetConf::parse(text) {
            Err(NetConfError::Key { key, .. }) => key,
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    #[test]
    fn kube_flannel_default() {
        let c =
            NetConf::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        let p = c.ipv4.unwrap();
        assert_eq!(p.subnet_len, 24);
        assert_eq!(p.subnet_min.to_string(), "10.244.1.0");
        assert_eq!(p.subnet_max.to_string(), "10.244.255.0");
        assert_eq!(p.lease_count(), 255);
        assert_eq!(p.lease_at(0).to_string(), "10.244.1.0/24");
        assert!(c.ipv6.is_none());
        assert_eq!(
            c.backend,
            Backend::Vxlan(VxlanConf {
                vni: 1,
                port: 8472,
                mtu: None,
                direct_routing: false,
                learning: false
            })
        );
    }

    #[test]
    fn subnet_len_defaults() {
        let p = |n: &str| {
            NetConf::parse(&format!(
                r#"{{"Network":"{n}","Backend":{{"Type":"host-gw"}}}}"#
            ))
            .unwrap()
            .ipv4
            .unwrap()
            .subnet_len
        };
        assert_eq!(p("10.0.0.0/22"), 24);
        assert_eq!(p("10.0.0.0/23"), 24);
        assert_eq!(p("10.0.0.0/24"), 25);
        assert_eq!(p("10.0.0.0/8"), 24);
    }

    #[test]
    fn all_keys() {
        let c = NetConf::parse(
            r#"{"Network":"10.10.0.0/16","SubnetLen":26,"SubnetMin":"10.10.4.0","SubnetMax":"10.10.8.63",
                "EnableIPv6":true,"IPv6Network":"2001:db8:1::/48","IPv6SubnetLen":64,
                "Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"MTU":1400,"DirectRouting":true,"Learning":true}}"#,
        )
        .unwrap();
        let p = c.ipv4.unwrap();
        assert_eq!(
            (p.subnet_min.to_string(), p.subnet_max.to_string()),
            ("10.10.4.0".into(), "10.10.8.0".into())
        );
        assert_eq!(p.lease_count(), 17);
        let p6 = c.ipv6.unwrap();
        assert_eq!(p6.subnet_min.to_string(), "2001:db8:1:1::");
        assert_eq!(p6.subnet_max.to_string(), "2001:db8:1:ffff::");
        assert_eq!(
            c.backend,
            Backend::Vxlan(VxlanConf {
                vni: 4096,
                port: 4789,
                mtu: Some(1400),
                direct_routing: true,
                learning: true
            })
        );
    }

    #[test]
    fn errors_name_the_key() {
        assert!(matches!(
            NetConf::parse("nope"),
            Err(NetConfError::Syntax(_))
        ));
        assert_eq!(key_err(r#"{"Backend":{"Type":"vxlan"}}"#), "Network");
        assert_eq!(
            key_err(r#"{"Network":"10.0.0.0/33","Backend":{"Type":"vxlan"}}"#),
            "Network"
        );
        assert_eq!(key_err(r#"{"Network":"10.0.0.0/16"}"#), "Backend");
        assert_eq!(
            key_err(r#"{"Network":"10.0.0.0/16","Backend":{}}"#),
            "Backend.Type"
        );
        assert_eq!(
            key_err(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"udp"}}"#),
            "Backend.Type"
        );
        assert_eq!(
            key_err(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":"1"}}"#),
            "Backend.VNI"
        );
        assert_eq!(
            key_err(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#),
            "Backend.Port"
        );
        assert_eq!(
            key_err(r#"{"Network":"10.0.0.0/16","SubnetLen":16,"Backend":{"Type":"vxlan"}}"#),
            "SubnetLen"
        );
        assert_eq!(
            key_err(
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0","Backend":{"Type":"vxlan"}}"#
            ),
            "SubnetMin"
        );
        assert_eq!(
            key_err(
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.2.0","Backend":{"Type":"vxlan"}}"#
            ),
            "SubnetMin"
        );
        assert_eq!(
            key_err(r#"{"Network":"2001:db8::/32","Backend":{"Type":"vxlan"}}"#),
            "Network"
        );
        assert_eq!(
            key_err(r#"{"EnableIPv6":true,"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}"#),
            "IPv6Network"
        );
        assert_eq!(
            key_err(r#"{"EnableIPv4":false,"Backend":{"Type":"vxlan"}}"#),
            "EnableIPv4"
        );
        assert_eq!(
            key_err(
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","DirectRouting":"yes"}}"#
            ),
            "Backend.DirectRouting"
        );
    }

    #[test]
    fn default_max_of_a_pool_beyond_two_to_the_64_subnets() {
        // Found by the property tests: the last subnet was taken as index u64::MAX.
        let c = NetConf::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8::/0","IPv6SubnetLen":65,"Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let p = c.ipv6.unwrap();
        assert_eq!(p.subnet_max.to_string(), "ffff:ffff:ffff:ffff:8000::");
        assert_eq!(p.lease_count(), u64::MAX);
    }

    #[test]
    fn ipv6_only() {
        let c = NetConf::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8::/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert!(c.ipv4.is_none());
        assert_eq!(c.ipv6.unwrap().subnet_len, 64);
    }
}
