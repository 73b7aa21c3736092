//! `k8s.v1.cni.cncf.io/network-status`, in Multus's exact layout.
//!
//! Multus builds the entries with the network-attachment-definition client's
//! `CreateNetworkStatuses` and writes `"[" + join(",", MarshalIndent(entry, "", "    ")) + "]"`.
//! Go's encoder is reproduced here byte for byte (field order, `omitempty`, HTML-safe
//! escaping of `<`, `>` and `&`), because tools compare and parse that text.

use std::net::IpAddr;

use serde_json::Value;

use super::plan::Delegate;

/// `dns` of an entry (always written, `{}` when empty).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: String,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// One entry of the annotation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkStatus {
    pub name: String,
    pub interface: String,
    /// Addresses without prefix length.
    pub ips: Vec<String>,
    pub mac: String,
    pub mtu: u64,
    pub default: bool,
    pub dns: Dns,
    /// `device-info` (the content of the delegate's device-info file), if any.
    pub device_info: Option<Value>,
    /// One per default route of the result; `"<nil>"` for a default route without `gw`.
    pub gateway: Vec<String>,
}

/// The annotation's value for the delegates added and their results (each a CNI result in
/// version 1.0.0 form, as `serde_json::Value`), in Multus's layout: `"[" + entries joined by
/// "," + "]"`, each entry indented by four spaces.
pub fn network_status(added: &[(Delegate, serde_json::Value)]) -> String {
    let entries: Vec<NetworkStatus> = added
        .iter()
        .flat_map(|(d, result)| network_status_entries(&d.status_name, d.master, result, None))
        .collect();
    render(&entries)
}

/// `"[" + join(",", MarshalIndent(entry)) + "]"`.
pub fn render(entries: &[NetworkStatus]) -> String {
    let parts: Vec<String> = entries.iter().map(NetworkStatus::to_go_json).collect();
    format!("[{}]", parts.join(","))
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Go's `net.IP.String()` of an address (IPv4-mapped IPv6 prints as IPv4).
fn go_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// The address of `ips[].address` (`IP/prefix`) without its prefix.
fn address_ip(address: &str) -> String {
    let ip = address.split('/').next().unwrap_or_default();
    ip.parse::<IpAddr>()
        .map(go_ip)
        .unwrap_or_else(|_| ip.to_string())
}

/// Whether a route's `dst` is a default route (any prefix length on the zero address, as the
/// client tests it).
fn is_default_route(route: &Value) -> bool {
    let dst = str_of(route, "dst");
    let ip = dst.split('/').next().unwrap_or_default();
    ip.parse::<IpAddr>().is_ok_and(|ip| match ip {
        IpAddr::V4(v4) => v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_unspecified() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_unspecified())
        }
    })
}

/// `route.GW.String()`: the literal `<nil>` when the route has no gateway.
fn route_gateway(route: &Value) -> String {
    match route.get("gw").and_then(Value::as_str) {
        Some(gw) if !gw.is_empty() => gw
            .parse::<IpAddr>()
            .map(go_ip)
            .unwrap_or_else(|_| gw.to_string()),
        _ => "<nil>".to_string(),
    }
}

/// The entries of one delegate's result, as `CreateNetworkStatuses` makes them: one entry
/// for a single-interface result (all its IPs); otherwise one per sandbox interface, IPs by
/// their `interface` index (those without one to the last entry), every entry with the
/// result's default-route gateways, and `default` on the master's interface that has a
/// gateway (else its first sandbox interface).
pub fn network_status_entries(
    name: &str,
    master: bool,
    result: &Value,
    device_info: Option<&Value>,
) -> Vec<NetworkStatus> {
    let interfaces: Vec<&Value> = result
        .get("interfaces")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let ips: Vec<&Value> = result
        .get("ips")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let routes: Vec<&Value> = result
        .get("routes")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let dns_v = result.get("dns").cloned().unwrap_or(Value::Null);
    let dns = Dns {
        nameservers: strings(dns_v.get("nameservers")),
        domain: str_of(&dns_v, "domain").to_string(),
        search: strings(dns_v.get("search")),
        options: strings(dns_v.get("options")),
    };
    let gateways: Vec<String> = routes
        .iter()
        .filter(|r| is_default_route(r))
        .map(|r| route_gateway(r))
        .collect();
    let sandbox = |i: &Value| !str_of(i, "sandbox").is_empty();
    let mtu = |i: &Value| i.get("mtu").and_then(Value::as_u64).unwrap_or(0);

    if interfaces.len() == 1 {
        let mut s = NetworkStatus {
            name: name.to_string(),
            default: master,
            dns,
            device_info: device_info.cloned(),
            gateway: gateways,
            ..Default::default()
        };
        for i in interfaces.iter().filter(|i| sandbox(i)) {
            s.interface = str_of(i, "name").to_string();
            s.mac = str_of(i, "mac").to_string();
            s.mtu = mtu(i);
        }
        s.ips = ips
            .iter()
            .map(|ip| address_ip(str_of(ip, "address")))
            .collect();
        return vec![s];
    }

    let gw_index = if master {
        ips.iter()
            .find(|ip| {
                ip.get("gateway")
                    .and_then(Value::as_str)
                    .is_some_and(|g| !g.is_empty())
                    && ip.get("interface").and_then(Value::as_u64).is_some()
            })
            .and_then(|ip| ip.get("interface").and_then(Value::as_u64))
    } else {
        None
    };
    let mut out: Vec<NetworkStatus> = Vec::new();
    let mut index_map: Vec<(u64, usize)> = Vec::new();
    let mut did_set_default = false;
    for (i, iface) in interfaces.iter().enumerate() {
        if !sandbox(iface) {
            continue;
        }
        let mut is_default = false;
        if master && gw_index == Some(i as u64) && !did_set_default {
            is_default = true;
            did_set_default = true;
        }
        if master && gw_index.is_none() && out.is_empty() {
            is_default = true;
        }
        index_map.push((i as u64, out.len()));
        out.push(NetworkStatus {
            name: name.to_string(),
            interface: str_of(iface, "name").to_string(),
            mac: str_of(iface, "mac").to_string(),
            mtu: mtu(iface),
            default: is_default,
            dns: dns.clone(),
            device_info: device_info.cloned(),
            gateway: gateways.clone(),
            ips: Vec::new(),
        });
    }
    let last = out.len().checked_sub(1);
    for ip in ips {
        let addr = address_ip(str_of(ip, "address"));
        match ip.get("interface").and_then(Value::as_u64) {
            Some(idx) => {
                if let Some((_, pos)) = index_map.iter().find(|(orig, _)| *orig == idx) {
                    out[*pos].ips.push(addr);
                }
            }
            None => {
                if let Some(pos) = last {
                    out[pos].ips.push(addr);
                }
            }
        }
    }
    out
}

/// The message of Multus's `AddedInterface` Event for one delegate's result
/// (`Add <ifname> [<ip/prefix> ...] from <network>`), or `None` when the result has neither
/// `interfaces` nor `ips` (Multus records no Event for such an empty result).
pub fn added_interface_message(delegate: &Delegate, result: &Value) -> Option<String> {
    let has = |k: &str| result.get(k).is_some_and(Value::is_array);
    if !has("interfaces") && !has("ips") {
        return None;
    }
    let ips: Vec<String> = result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|ip| {
            let address = str_of(ip, "address");
            match address.parse::<ipnet::IpNet>() {
                Ok(net) => format!("{}/{}", go_ip(net.addr()), net.prefix_len()),
                Err(_) => address.to_string(),
            }
        })
        .collect();
    let ips = format!("[{}]", ips.join(" "));
    Some(if delegate.status_name.is_empty() {
        format!("Add {} {ips}", delegate.ifname)
    } else {
        format!(
            "Add {} {ips} from {}",
            delegate.ifname, delegate.status_name
        )
    })
}

impl NetworkStatus {
    /// `json.MarshalIndent(entry, "", "    ")` of the client's `NetworkStatus` type.
    pub fn to_go_json(&self) -> String {
        let mut w = GoWriter::default();
        w.open('{');
        w.field("name");
        w.string(&self.name);
        if !self.interface.is_empty() {
            w.field("interface");
            w.string(&self.interface);
        }
        if !self.ips.is_empty() {
            w.field("ips");
            w.string_list(&self.ips);
        }
        if !self.mac.is_empty() {
            w.field("mac");
            w.string(&self.mac);
        }
        if self.mtu != 0 {
            w.field("mtu");
            w.raw(&self.mtu.to_string());
        }
        if self.default {
            w.field("default");
            w.raw("true");
        }
        w.field("dns");
        w.open('{');
        if !self.dns.nameservers.is_empty() {
            w.field("nameservers");
            w.string_list(&self.dns.nameservers);
        }
        if !self.dns.domain.is_empty() {
            w.field("domain");
            w.string(&self.dns.domain);
        }
        if !self.dns.search.is_empty() {
            w.field("search");
            w.string_list(&self.dns.search);
        }
        if !self.dns.options.is_empty() {
            w.field("options");
            w.string_list(&self.dns.options);
        }
        w.close('}');
        if let Some(dev) = &self.device_info {
            w.field("device-info");
            w.value(&device_info_ordered(dev));
        }
        if !self.gateway.is_empty() {
            w.field("gateway");
            w.string_list(&self.gateway);
        }
        w.close('}');
        w.out
    }
}

/// The device-info object in the order of the client's Go type (unknown keys after, sorted).
fn device_info_ordered(dev: &Value) -> Vec<(String, Value)> {
    const ORDER: [&str; 6] = ["type", "version", "pci", "vdpa", "vhost-user", "memif"];
    let Value::Object(m) = dev else {
        return Vec::new();
    };
    let mut out: Vec<(String, Value)> = ORDER
        .iter()
        .filter_map(|k| m.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    for (k, v) in m {
        if !ORDER.contains(&k.as_str()) {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

/// A writer of Go's indented JSON (`MarshalIndent(v, "", "    ")`).
#[derive(Default)]
struct GoWriter {
    out: String,
    depth: usize,
    /// Whether the current container has had an element yet.
    first: Vec<bool>,
}

impl GoWriter {
    fn newline(&mut self) {
        self.out.push('\n');
        for _ in 0..self.depth {
            self.out.push_str("    ");
        }
    }

    fn open(&mut self, c: char) {
        self.out.push(c);
        self.depth += 1;
        self.first.push(true);
    }

    fn close(&mut self, c: char) {
        self.depth -= 1;
        let empty = self.first.pop().unwrap_or(true);
        if !empty {
            self.newline();
        }
        self.out.push(c);
    }

    fn element(&mut self) {
        if let Some(first) = self.first.last_mut() {
            if !*first {
                self.out.push(',');
            }
            *first = false;
        }
        self.newline();
    }

    fn field(&mut self, key: &str) {
        self.element();
        go_string(&mut self.out, key);
        self.out.push_str(": ");
    }

    fn raw(&mut self, s: &str) {
        self.out.push_str(s);
    }

    fn string(&mut self, s: &str) {
        go_string(&mut self.out, s);
    }

    fn string_list(&mut self, list: &[String]) {
        self.open('[');
        for s in list {
            self.element();
            self.string(s);
        }
        self.close(']');
    }

    fn value(&mut self, fields: &[(String, Value)]) {
        self.open('{');
        for (k, v) in fields {
            self.field(k);
            self.any(v);
        }
        self.close('}');
    }

    fn any(&mut self, v: &Value) {
        match v {
            Value::Object(m) => {
                let fields: Vec<(String, Value)> =
                    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                self.value(&fields);
            }
            Value::Array(a) => {
                self.open('[');
                for item in a {
                    self.element();
                    self.any(item);
                }
                self.close(']');
            }
            Value::String(s) => self.string(s),
            other => self.raw(&other.to_string()),
        }
    }
}

/// A string as Go's encoder writes it (HTML-safe).
fn go_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::multus::plan::Delegate;

    fn delegate(name: &str, master: bool, ifname: &str) -> Delegate {
        Delegate {
            index: 0,
            master,
            status_name: name.into(),
            nad: None,
            ifname: ifname.into(),
            conf: json!({}),
            runtime_config: Default::default(),
            cni_args: Vec::new(),
            default_route: Vec::new(),
        }
    }

    /// bridge + host-local: bridge, host veth, pod interface; a default route without gw.
    fn bridge_result() -> Value {
        json!({"cniVersion":"1.0.0",
            "interfaces":[{"name":"cni0","mac":"aa:aa:aa:aa:aa:aa"},
                {"name":"veth1","mac":"bb:bb:bb:bb:bb:bb"},
                {"name":"eth0","mac":"16:3b:35:92:87:be","sandbox":"/var/run/netns/x"}],
            "ips":[{"address":"10.99.0.2/24","gateway":"10.99.0.1","interface":2}],
            "routes":[{"dst":"0.0.0.0/0"}],
            "dns":{}})
    }

    #[test]
    fn golden_observed_layout() {
        let mv = json!({"cniVersion":"1.0.0",
            "interfaces":[{"name":"mv0","mac":"2a:5e:7c:00:11:22","sandbox":"/var/run/netns/x"}],
            "ips":[{"address":"192.0.2.10/24","interface":0}],
            "dns":{}});
        let got = network_status(&[
            (delegate("podnet", true, "eth0"), bridge_result()),
            (delegate("default/mv1", false, "mv0"), mv),
        ]);
        let want = r#"[{
    "name": "podnet",
    "interface": "eth0",
    "ips": [
        "10.99.0.2"
    ],
    "mac": "16:3b:35:92:87:be",
    "default": true,
    "dns": {},
    "gateway": [
        "\u003cnil\u003e"
    ]
},{
    "name": "default/mv1",
    "interface": "mv0",
    "ips": [
        "192.0.2.10"
    ],
    "mac": "2a:5e:7c:00:11:22",
    "dns": {}
}]"#;
        assert_eq!(got, want);
        // It is JSON, and reads back as the client reads it.
        let back: Value = serde_json::from_str(&got).unwrap();
        assert_eq!(back[0]["gateway"][0], "<nil>");
    }

    #[test]
    fn full_entry_field_order_and_dns() {
        let r = json!({"interfaces":[{"name":"net1","mac":"02:00:00:00:00:01","mtu":1400,"sandbox":"/x"}],
            "ips":[{"address":"2001:db8::5/64"},{"address":"::ffff:192.0.2.7/120"}],
            "routes":[{"dst":"::/0","gw":"2001:db8::1"},{"dst":"198.51.100.0/24","gw":"192.0.2.1"}],
            "dns":{"nameservers":["192.0.2.53"],"domain":"a&b","search":["x"],"options":["ndots:5"]}});
        let dev = json!({"version":"1.1.0","type":"pci","pci":{"pci-address":"0000:00:01.0"}});
        let e = network_status_entries("ns/n", false, &r, Some(&dev));
        assert_eq!(e.len(), 1);
        let want = r#"{
    "name": "ns/n",
    "interface": "net1",
    "ips": [
        "2001:db8::5",
        "192.0.2.7"
    ],
    "mac": "02:00:00:00:00:01",
    "mtu": 1400,
    "dns": {
        "nameservers": [
            "192.0.2.53"
        ],
        "domain": "a\u0026b",
        "search": [
            "x"
        ],
        "options": [
            "ndots:5"
        ]
    },
    "device-info": {
        "type": "pci",
        "version": "1.1.0",
        "pci": {
            "pci-address": "0000:00:01.0"
        }
    },
    "gateway": [
        "2001:db8::1"
    ]
}"#;
        assert_eq!(e[0].to_go_json(), want);
    }

    #[test]
    fn multi_interface_results() {
        // Two sandbox interfaces: one entry each; IPs by index, unindexed to the last;
        // default on the master's interface with a gateway.
        let r = json!({"interfaces":[{"name":"host"},{"name":"a0","sandbox":"/x"},{"name":"a1","sandbox":"/x"}],
            "ips":[{"address":"192.0.2.1/24","interface":1},{"address":"192.0.2.2/24","gateway":"192.0.2.254","interface":2},
                {"address":"192.0.2.3/24"}],
            "routes":[{"dst":"0.0.0.0/0","gw":"192.0.2.254"}]});
        let e = network_status_entries("m", true, &r, None);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].ips, vec!["192.0.2.1"]);
        assert_eq!(e[1].ips, vec!["192.0.2.2", "192.0.2.3"]);
        assert!(!e[0].default && e[1].default);
        assert_eq!(e[0].gateway, vec!["192.0.2.254"]);
        // Without a gateway, the master's first sandbox interface is the default.
        let r2 = json!({"interfaces":[{"name":"a0","sandbox":"/x"},{"name":"a1","sandbox":"/x"}]});
        let e = network_status_entries("m", true, &r2, None);
        assert!(e[0].default && !e[1].default);
        assert_eq!(
            e[0].to_go_json(),
            "{\n    \"name\": \"m\",\n    \"interface\": \"a0\",\n    \"default\": true,\n    \"dns\": {}\n}"
        );
        // Not the master: never default.
        assert!(
            network_status_entries("s", false, &r, None)
                .iter()
                .all(|e| !e.default)
        );
        // No sandbox interface among several: no entry; no interface at all: no entry either.
        let none =
            json!({"interfaces":[{"name":"h1"},{"name":"h2"}],"ips":[{"address":"192.0.2.1/24"}]});
        assert!(network_status_entries("s", false, &none, None).is_empty());
        assert!(
            network_status_entries(
                "s",
                false,
                &json!({"ips":[{"address":"192.0.2.1/24"}]}),
                None
            )
            .is_empty()
        );
        assert_eq!(network_status(&[]), "[]");
    }

    #[test]
    fn added_interface_event_message() {
        let d = delegate("default/mv1", false, "net1");
        let r = json!({"interfaces":[{"name":"net1","sandbox":"/x"}],
            "ips":[{"address":"192.0.2.10/24"},{"address":"2001:db8::a/64"}]});
        assert_eq!(
            added_interface_message(&d, &r).as_deref(),
            Some("Add net1 [192.0.2.10/24 2001:db8::a/64] from default/mv1")
        );
        let unnamed = delegate("", true, "eth0");
        assert_eq!(
            added_interface_message(&unnamed, &json!({"interfaces":[]})).as_deref(),
            Some("Add eth0 []")
        );
        assert_eq!(
            added_interface_message(&d, &json!({"cniVersion":"1.0.0"})),
            None
        );
    }

    #[test]
    fn go_string_escapes() {
        let mut s = String::new();
        go_string(&mut s, "a\"b\\c\n<>&\u{1}\u{2028}é");
        assert_eq!(s, r#""a\"b\\c\n\u003c\u003e\u0026\u0001\u2028é""#);
    }
}
