//! Flannel's Node annotations: what a node publishes about itself and what we read about
//! peers (pure). Names and formats are Flannel's (`pkg/subnet/kube`), so a mixed cluster of
//! flanneld and metalnet-vxlan nodes sees one another.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use metalnet::model::core::Node;
use metalnet::state::MetadataPatch;

pub const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
pub const BACKEND_V6_DATA: &str = "flannel.alpha.coreos.com/backend-v6-data";
pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
pub const PUBLIC_IPV6: &str = "flannel.alpha.coreos.com/public-ipv6";
pub const PUBLIC_IP_OVERWRITE: &str = "flannel.alpha.coreos.com/public-ip-overwrite";
pub const PUBLIC_IPV6_OVERWRITE: &str = "flannel.alpha.coreos.com/public-ipv6-overwrite";
pub const KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";
/// Where a node records the subnet it leased itself when no Node has a podCIDR (state
/// directory only; Flannel's kube subnet manager always uses podCIDR).
pub const LEASE_V4: &str = "metalnet.io/vxlan-subnet";
pub const LEASE_V6: &str = "metalnet.io/vxlan-subnet-v6";

pub use metalnet::wire::Mac;

/// A random locally administered unicast address.
pub fn random_mac() -> Mac {
    // The clock and pid are enough to keep nodes apart, and the MAC is persisted after the
    // first start.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        ^ (u128::from(std::process::id()) << 64);
    Mac::local_from_seed((seed as u64) ^ ((seed >> 64) as u64))
}

/// Flannel's vxlan `backend-data`: `{"VNI":1,"VtepMAC":"..."}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendData {
    pub vni: u32,
    pub vtep_mac: Mac,
}

impl BackendData {
    pub fn to_json(&self) -> String {
        serde_json::json!({"VNI": self.vni, "VtepMAC": self.vtep_mac.to_string()}).to_string()
    }

    pub fn parse(s: &str) -> Option<BackendData> {
        let v: serde_json::Value = serde_json::from_str(s).ok()?;
        let mac: Mac = v.get("VtepMAC")?.as_str()?.parse().ok()?;
        let vni = v.get("VNI").and_then(|n| n.as_u64()).unwrap_or(1);
        Some(BackendData {
            vni: u32::try_from(vni).ok()?,
            vtep_mac: mac,
        })
    }
}

/// What one Node tells about itself, read leniently: missing or bad values are `None`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub pod_cidrs: Vec<IpNet>,
    /// podCIDR strings that did not parse, to report.
    pub bad_pod_cidrs: Vec<String>,
    pub backend_type: Option<String>,
    pub backend_data: Option<BackendData>,
    pub backend_v6_data: Option<BackendData>,
    pub public_ip: Option<IpAddr>,
    pub public_ipv6: Option<IpAddr>,
    pub public_ip_overwrite: Option<IpAddr>,
    pub public_ipv6_overwrite: Option<IpAddr>,
    pub lease_v4: Option<IpNet>,
    pub lease_v6: Option<IpNet>,
}

impl NodeView {
    pub fn of(name: &str, node: &Node) -> NodeView {
        let empty = BTreeMap::new();
        let ann = node.metadata.annotations.as_ref().unwrap_or(&empty);
        let get = |k: &str| ann.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
        let ip = |k: &str| get(k).and_then(|s| s.parse::<IpAddr>().ok());
        // Subnets in kernel form (no host bits), as podCIDRs: they become route keys.
        let net = |k: &str| {
            get(k)
                .and_then(|s| s.parse::<IpNet>().ok())
                .map(|n| n.trunc())
        };
        let mut cidrs: Vec<String> = Vec::new();
        if let Some(spec) = &node.spec {
            if let Some(list) = &spec.pod_cidrs {
                cidrs.extend(list.iter().cloned());
            }
            if let Some(c) = &spec.pod_cidr
                && !cidrs.contains(c)
            {
                cidrs.insert(0, c.clone());
            }
        }
        let mut pod_cidrs = Vec::new();
        let mut bad_pod_cidrs = Vec::new();
        for c in cidrs {
            match c.parse::<IpNet>() {
                Ok(n) => pod_cidrs.push(n.trunc()),
                Err(_) => bad_pod_cidrs.push(c),
            }
        }
        NodeView {
            name: name.to_string(),
            pod_cidrs,
            bad_pod_cidrs,
            backend_type: get(BACKEND_TYPE).map(str::to_string),
            backend_data: get(BACKEND_DATA).and_then(BackendData::parse),
            backend_v6_data: get(BACKEND_V6_DATA).and_then(BackendData::parse),
            public_ip: ip(PUBLIC_IP).filter(IpAddr::is_ipv4),
            public_ipv6: ip(PUBLIC_IPV6).filter(IpAddr::is_ipv6),
            public_ip_overwrite: ip(PUBLIC_IP_OVERWRITE).filter(IpAddr::is_ipv4),
            public_ipv6_overwrite: ip(PUBLIC_IPV6_OVERWRITE).filter(IpAddr::is_ipv6),
            lease_v4: net(LEASE_V4).filter(|n| n.addr().is_ipv4()),
            lease_v6: net(LEASE_V6).filter(|n| n.addr().is_ipv6()),
        }
    }

    /// The podCIDR of one family, if any.
    pub fn pod_cidr(&self, v6: bool) -> Option<IpNet> {
        self.pod_cidrs
            .iter()
            .copied()
            .find(|n| n.addr().is_ipv6() == v6)
    }

    pub fn lease(&self, v6: bool) -> Option<IpNet> {
        if v6 { self.lease_v6 } else { self.lease_v4 }
    }

    pub fn public(&self, v6: bool) -> Option<IpAddr> {
        if v6 { self.public_ipv6 } else { self.public_ip }
    }

    pub fn data(&self, v6: bool) -> Option<BackendData> {
        if v6 {
            self.backend_v6_data
        } else {
            self.backend_data
        }
    }
}

/// What this node publishes.
#[derive(Clone, Debug, PartialEq)]
pub struct Publication {
    pub backend_type: &'static str,
    pub data_v4: Option<BackendData>,
    pub data_v6: Option<BackendData>,
    pub public_ip: Option<IpAddr>,
    pub public_ipv6: Option<IpAddr>,
    pub lease_v4: Option<IpNet>,
    pub lease_v6: Option<IpNet>,
}

impl Publication {
    /// The annotations as Flannel writes them; host-gw's backend-data is `null`.
    pub fn annotations(&self) -> BTreeMap<String, Option<String>> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            m.insert(k.to_string(), v);
        };
        put(BACKEND_TYPE, Some(self.backend_type.to_string()));
        put(KUBE_SUBNET_MANAGER, Some("true".into()));
        let data = |d: Option<BackendData>| match d {
            Some(d) => d.to_json(),
            None => "null".into(),
        };
        if self.public_ip.is_some() || self.data_v4.is_some() {
            put(BACKEND_DATA, Some(data(self.data_v4)));
        }
        if self.public_ipv6.is_some() || self.data_v6.is_some() {
            put(BACKEND_V6_DATA, Some(data(self.data_v6)));
        }
        if let Some(ip) = self.public_ip {
            put(PUBLIC_IP, Some(ip.to_string()));
        }
        if let Some(ip) = self.public_ipv6 {
            put(PUBLIC_IPV6, Some(ip.to_string()));
        }
        if let Some(n) = self.lease_v4 {
            put(LEASE_V4, Some(n.to_string()));
        }
        if let Some(n) = self.lease_v6 {
            put(LEASE_V6, Some(n.to_string()));
        }
        m
    }

    /// The patch bringing `current` to this publication; `None` when nothing differs.
    pub fn patch_for(&self, current: &NodeAnnotations) -> Option<MetadataPatch> {
        let annotations: BTreeMap<String, Option<String>> = self
            .annotations()
            .into_iter()
            .filter(|(k, v)| current.get(k) != v.as_ref())
            .collect();
        (!annotations.is_empty()).then(|| MetadataPatch {
            annotations,
            labels: BTreeMap::new(),
        })
    }
}

pub type NodeAnnotations = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m: Mac = "0a:1b:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(m.to_string(), "0a:1b:2c:3d:4e:5f");
        assert!("0a:1b:2c:3d:4e".parse::<Mac>().ok().is_none());
        assert!("0a:1b:2c:3d:4e:5f:00".parse::<Mac>().ok().is_none());
        assert!("zz:1b:2c:3d:4e:5f".parse::<Mac>().ok().is_none());
        // Found by the property tests: a sign was taken for a hex digit.
        assert!("+a:1b:2c:3d:4e:5f".parse::<Mac>().ok().is_none());
        assert_eq!("0A:1B:2C:3D:4E:5F".parse::<Mac>().ok(), Some(m));
        let r = random_mac();
        assert!(r.is_unicast() && r.0[0] & 2 == 2);
    }

    #[test]
    fn backend_data_is_flannels() {
        let d = BackendData {
            vni: 1,
            vtep_mac: "6a:1e:22:33:44:55".parse::<Mac>().ok().unwrap(),
        };
        assert_eq!(d.to_json(), r#"{"VNI":1,"VtepMAC":"6a:1e:22:33:44:55"}"#);
        assert_eq!(BackendData::parse(&d.to_json()), Some(d));
        assert_eq!(BackendData::parse("null"), None);
    }

    #[test]
    fn reads_a_flannel_node() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "annotations": {
                BACKEND_TYPE: "vxlan",
                BACKEND_DATA: r#"{"VNI":1,"VtepMAC":"6a:1e:22:33:44:55"}"#,
                PUBLIC_IP: "192.0.2.1",
                PUBLIC_IPV6: "not an ip",
            }},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "2001:db8:1::/64", "junk"]}
        }))
        .unwrap();
        let v = NodeView::of("n1", &node);
        assert_eq!(v.pod_cidr(false).unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(v.pod_cidr(true).unwrap().to_string(), "2001:db8:1::/64");
        assert_eq!(v.bad_pod_cidrs, vec!["junk".to_string()]);
        assert_eq!(v.public_ip.unwrap().to_string(), "192.0.2.1");
        assert_eq!(v.public_ipv6, None);
        assert_eq!(v.backend_data.unwrap().vni, 1);
    }

    #[test]
    fn lease_with_host_bits_reads_as_its_subnet() {
        // Found by the property tests: "10.244.3.7/24" became a route key the kernel
        // never shows (it reports 10.244.3.0/24), so the plan never converged.
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "annotations": {
                LEASE_V4: "10.244.3.7/24",
                LEASE_V6: "2001:db8:1::5/64",
            }},
        }))
        .unwrap();
        let v = NodeView::of("n1", &node);
        assert_eq!(v.lease_v4.unwrap().to_string(), "10.244.3.0/24");
        assert_eq!(v.lease_v6.unwrap().to_string(), "2001:db8:1::/64");
    }

    #[test]
    fn patch_only_what_differs() {
        let p = Publication {
            backend_type: "vxlan",
            data_v4: Some(BackendData {
                vni: 1,
                vtep_mac: Mac([2, 0, 0, 0, 0, 1]),
            }),
            data_v6: None,
            public_ip: Some("192.0.2.1".parse().unwrap()),
            public_ipv6: None,
            lease_v4: None,
            lease_v6: None,
        };
        let mut cur: NodeAnnotations = p
            .annotations()
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        assert_eq!(p.patch_for(&cur), None);
        cur.insert(PUBLIC_IP.into(), "192.0.2.9".into());
        let patch = p.patch_for(&cur).unwrap();
        assert_eq!(patch.annotations.len(), 1);
        assert_eq!(patch.annotations[PUBLIC_IP].as_deref(), Some("192.0.2.1"));
    }
}
