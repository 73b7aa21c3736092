//! CNI results as typed values: parsed from any version's layout and printed in any
//! version's layout, converting as libcni does.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::CniError;
use super::version::{self, Layout};

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "String::is_empty"
    )]
    pub socket_path: String,
    #[serde(default, rename = "pciID", skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with its prefix length.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

/// One route of a result (fields of 1.1.0; older versions have `dst` and `gw` only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, rename = "advmss", skip_serializing_if = "Option::is_none")]
    pub adv_mss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

/// DNS settings of a result.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// A CNI result, version independent (the 1.1.0 model; older layouts convert into it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    /// The version it was parsed from.
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

fn decode(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(CniError::DECODE, format!("{what}: {e}"))
}

fn field<T: serde::de::DeserializeOwned>(
    v: &Value,
    name: &str,
    what: &str,
) -> Result<Option<T>, CniError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => serde_json::from_value(x.clone())
            .map(Some)
            .map_err(|e| decode(&format!("{what}: field {name}"), e)),
    }
}

fn parse_ip_entry(v: &Value, what: &str) -> Result<IpConfig, CniError> {
    let address: IpNet =
        field(v, "address", what)?.ok_or_else(|| decode(what, "field address is missing"))?;
    Ok(IpConfig {
        address,
        gateway: field(v, "gateway", what)?,
        interface: field(v, "interface", what)?,
    })
}

fn route_entry(v: &Value, what: &str) -> Result<Route, CniError> {
    serde_json::from_value(v.clone()).map_err(|e| decode(what, e))
}

impl CniResult {
    /// Parses a result in the layout of its own `cniVersion` (of `default_version` when it
    /// has none). Errors (code 6) name the field.
    pub fn parse(v: &Value, default_version: &str) -> Result<CniResult, CniError> {
        if !v.is_object() {
            return Err(decode("result", "is not a JSON object"));
        }
        let ver = v
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or(default_version)
            .to_string();
        let layout = version::layout(&ver)?;
        let dns: Dns = field(v, "dns", "result")?.unwrap_or_default();
        let mut out = CniResult {
            cni_version: ver,
            dns,
            ..Default::default()
        };
        match layout {
            Layout::V02 => {
                for key in ["ip4", "ip6"] {
                    let Some(ipc) = v.get(key).filter(|x| !x.is_null()) else {
                        continue;
                    };
                    let what = format!("result: {key}");
                    let address: IpNet = field(ipc, "ip", &what)?
                        .ok_or_else(|| decode(&what, "field ip is missing"))?;
                    out.ips.push(IpConfig {
                        address,
                        gateway: field(ipc, "gateway", &what)?,
                        interface: None,
                    });
                    if let Some(Value::Array(routes)) = ipc.get("routes") {
                        for (i, r) in routes.iter().enumerate() {
                            out.routes
                                .push(route_entry(r, &format!("{what}.routes[{i}]"))?);
                        }
                    }
                }
            }
            Layout::V04 | Layout::V1 => {
                out.interfaces = field(v, "interfaces", "result")?.unwrap_or_default();
                if let Some(ips) = v.get("ips").and_then(Value::as_array) {
                    for (i, ip) in ips.iter().enumerate() {
                        out.ips
                            .push(parse_ip_entry(ip, &format!("result: ips[{i}]"))?);
                    }
                }
                if let Some(routes) = v.get("routes").and_then(Value::as_array) {
                    for (i, r) in routes.iter().enumerate() {
                        out.routes
                            .push(route_entry(r, &format!("result: routes[{i}]"))?);
                    }
                }
                for (i, ip) in out.ips.iter().enumerate() {
                    if let Some(idx) = ip.interface
                        && idx >= out.interfaces.len()
                    {
                        return Err(decode(
                            &format!("result: ips[{i}].interface"),
                            format!(
                                "index {idx} is past the {} interfaces",
                                out.interfaces.len()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The result printed in `cni_version`'s layout, converted as libcni converts: to
    /// 0.3.x/0.4.0 each ip gets `version` and interfaces lose `mtu`, `socketPath`, `pciID`;
    /// to 0.1.0/0.2.0 only the first IPv4 and the first IPv6 remain, as `ip4`/`ip6`, each
    /// with the routes of its family.
    pub fn to_version(&self, cni_version: &str) -> Result<Value, CniError> {
        let layout = version::layout(cni_version)?;
        let mut out = Map::new();
        out.insert("cniVersion".into(), cni_version.into());
        match layout {
            Layout::V02 => {
                for (key, v4) in [("ip4", true), ("ip6", false)] {
                    let Some(ip) = self.ips.iter().find(|i| i.address.addr().is_ipv4() == v4)
                    else {
                        continue;
                    };
                    let mut o = Map::new();
                    o.insert("ip".into(), ip.address.to_string().into());
                    if let Some(gw) = ip.gateway {
                        o.insert("gateway".into(), gw.to_string().into());
                    }
                    let routes: Vec<Value> = self
                        .routes
                        .iter()
                        .filter(|r| r.dst.addr().is_ipv4() == v4)
                        .map(|r| {
                            let mut m = Map::new();
                            m.insert("dst".into(), r.dst.to_string().into());
                            if let Some(gw) = r.gw {
                                m.insert("gw".into(), gw.to_string().into());
                            }
                            Value::Object(m)
                        })
                        .collect();
                    if !routes.is_empty() {
                        o.insert("routes".into(), routes.into());
                    }
                    out.insert(key.into(), Value::Object(o));
                }
            }
            Layout::V04 | Layout::V1 => {
                let old = layout == Layout::V04;
                if !self.interfaces.is_empty() {
                    let ifs: Vec<Value> = self
                        .interfaces
                        .iter()
                        .map(|i| {
                            let mut i = i.clone();
                            if old {
                                i.mtu = None;
                                i.socket_path.clear();
                                i.pci_id.clear();
                            }
                            serde_json::to_value(i).unwrap_or_default()
                        })
                        .collect();
                    out.insert("interfaces".into(), ifs.into());
                }
                if !self.ips.is_empty() {
                    let ips: Vec<Value> = self
                        .ips
                        .iter()
                        .map(|ip| {
                            let mut m = Map::new();
                            if let Some(i) = ip.interface {
                                m.insert("interface".into(), i.into());
                            }
                            if old {
                                let v = if ip.address.addr().is_ipv4() {
                                    "4"
                                } else {
                                    "6"
                                };
                                m.insert("version".into(), v.into());
                            }
                            m.insert("address".into(), ip.address.to_string().into());
                            if let Some(gw) = ip.gateway {
                                m.insert("gateway".into(), gw.to_string().into());
                            }
                            Value::Object(m)
                        })
                        .collect();
                    out.insert("ips".into(), ips.into());
                }
                if !self.routes.is_empty() {
                    let routes: Vec<Value> = self
                        .routes
                        .iter()
                        .map(|r| {
                            let mut r = r.clone();
                            if old {
                                r.mtu = None;
                                r.adv_mss = None;
                                r.priority = None;
                                r.table = None;
                                r.scope = None;
                            }
                            serde_json::to_value(r).unwrap_or_default()
                        })
                        .collect();
                    out.insert("routes".into(), routes.into());
                }
            }
        }
        out.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).unwrap_or_default(),
        );
        Ok(Value::Object(out))
    }

    /// Converts a result value from its version to `cni_version`.
    pub fn convert(v: &Value, default_version: &str, cni_version: &str) -> Result<Value, CniError> {
        CniResult::parse(v, default_version)?.to_version(cni_version)
    }

    /// The interfaces in the sandbox (those with `sandbox` set).
    pub fn sandbox_interfaces(&self) -> impl Iterator<Item = (usize, &Interface)> {
        self.interfaces
            .iter()
            .enumerate()
            .filter(|(_, i)| !i.sandbox.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full() -> Value {
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "cni0", "mac": "0a:58:c0:00:02:01"},
                {"name": "eth0", "mac": "0a:58:c0:00:02:05", "mtu": 1500, "sandbox": "/run/netns/x",
                 "socketPath": "/s", "pciID": "0000:00:01.0"}
            ],
            "ips": [
                {"interface": 1, "address": "192.0.2.5/24", "gateway": "192.0.2.1"},
                {"interface": 1, "address": "2001:db8::5/64"},
                {"interface": 1, "address": "192.0.2.6/24"}
            ],
            "routes": [
                {"dst": "0.0.0.0/0", "gw": "192.0.2.1", "mtu": 1400},
                {"dst": "::/0"}
            ],
            "dns": {"nameservers": ["192.0.2.53"]}
        })
    }

    #[test]
    fn to_04_adds_version_drops_new_interface_fields() {
        let v = CniResult::convert(&full(), "1.1.0", "0.4.0").unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert!(v["interfaces"][1].get("mtu").is_none());
        assert!(v["interfaces"][1].get("socketPath").is_none());
        assert!(v["interfaces"][1].get("pciID").is_none());
        assert_eq!(v["interfaces"][1]["sandbox"], "/run/netns/x");
        assert!(v["routes"][0].get("mtu").is_none());
        // And back: `version` disappears.
        let back = CniResult::convert(&v, "0.4.0", "1.0.0").unwrap();
        assert!(back["ips"][0].get("version").is_none());
        assert_eq!(back["ips"][0]["address"], "192.0.2.5/24");
    }

    #[test]
    fn to_02_keeps_first_of_each_family() {
        let v = CniResult::convert(&full(), "1.1.0", "0.2.0").unwrap();
        assert_eq!(
            v,
            json!({
                "cniVersion": "0.2.0",
                "ip4": {"ip": "192.0.2.5/24", "gateway": "192.0.2.1",
                        "routes": [{"dst": "0.0.0.0/0", "gw": "192.0.2.1"}]},
                "ip6": {"ip": "2001:db8::5/64", "routes": [{"dst": "::/0"}]},
                "dns": {"nameservers": ["192.0.2.53"]}
            })
        );
        // 0.2.0 parses back into the common model.
        let r = CniResult::parse(&v, "0.2.0").unwrap();
        assert_eq!(r.ips.len(), 2);
        assert_eq!(r.routes.len(), 2);
    }

    #[test]
    fn round_trip_every_version() {
        let r = CniResult::parse(&full(), "1.1.0").unwrap();
        for v in version::SUPPORTED {
            let out = r.to_version(v).unwrap();
            let back = CniResult::parse(&out, v).unwrap();
            assert_eq!(back.to_version(v).unwrap(), out, "version {v}");
        }
        assert_eq!(r.to_version("1.1.0").unwrap(), full());
    }

    #[test]
    fn bad_results_are_decode_errors() {
        let e = CniResult::parse(
            &json!({"cniVersion":"1.0.0","ips":[{"address":"nope"}]}),
            "1.0.0",
        )
        .unwrap_err();
        assert_eq!(e.code, 6);
        assert!(
            e.msg.contains("ips[0]") && e.msg.contains("address"),
            "{}",
            e.msg
        );
        let e = CniResult::parse(
            &json!({"cniVersion":"1.0.0","ips":[{"address":"192.0.2.1/24","interface":3}]}),
            "1.0.0",
        )
        .unwrap_err();
        assert!(e.msg.contains("ips[0].interface"), "{}", e.msg);
        assert_eq!(CniResult::parse(&json!([]), "1.0.0").unwrap_err().code, 6);
        assert_eq!(
            CniResult::parse(&json!({"cniVersion":"9.9.9"}), "1.0.0")
                .unwrap_err()
                .code,
            1
        );
    }
}
