//! Flannel's `subnet.env`, written atomically (temporary file, fsync, rename) so the CNI
//! plugin never reads half a file.

use std::io::Write;
use std::path::Path;

use ipnet::IpNet;

/// What `subnet.env` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Option<IpNet>,
    pub subnet: Option<IpNet>,
    pub ipv6_network: Option<IpNet>,
    pub ipv6_subnet: Option<IpNet>,
    pub mtu: u32,
    pub ip_masq: bool,
}

/// The subnet as Flannel writes it: its first host address with the subnet's prefix.
fn first_host(n: &IpNet) -> String {
    let first: std::net::IpAddr = match n.network() {
        std::net::IpAddr::V4(a) => std::net::Ipv4Addr::from(u32::from(a).wrapping_add(1)).into(),
        std::net::IpAddr::V6(a) => std::net::Ipv6Addr::from(u128::from(a).wrapping_add(1)).into(),
    };
    format!("{first}/{}", n.prefix_len())
}

impl SubnetEnv {
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(n) = self.network {
            s += &format!("FLANNEL_NETWORK={n}\n");
        }
        if let Some(n) = self.subnet {
            s += &format!("FLANNEL_SUBNET={}\n", first_host(&n));
        }
        if let Some(n) = self.ipv6_network {
            s += &format!("FLANNEL_IPV6_NETWORK={n}\n");
        }
        if let Some(n) = self.ipv6_subnet {
            s += &format!("FLANNEL_IPV6_SUBNET={}\n", first_host(&n));
        }
        s += &format!("FLANNEL_MTU={}\n", self.mtu);
        s += &format!("FLANNEL_IPMASQ={}\n", self.ip_masq);
        s
    }

    /// Writes the file if its content differs; returns whether it wrote.
    pub fn write(&self, path: &Path) -> std::io::Result<bool> {
        let text = self.render();
        if std::fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
            return Ok(false);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_flannel() {
        let e = SubnetEnv {
            network: Some("10.244.0.0/16".parse().unwrap()),
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            ipv6_network: Some("2001:db8::/56".parse().unwrap()),
            ipv6_subnet: Some("2001:db8:0:1::/64".parse().unwrap()),
            mtu: 1450,
            ip_masq: true,
        };
        assert_eq!(
            e.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
             FLANNEL_IPV6_NETWORK=2001:db8::/56\nFLANNEL_IPV6_SUBNET=2001:db8:0:1::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run/flannel/subnet.env");
        assert!(e.write(&p).unwrap());
        assert!(!e.write(&p).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), e.render());
    }
}
