//! The pod annotations that select networks: `k8s.v1.cni.cncf.io/networks` (comma list or
//! JSON) and `v1.multus-cni.io/default-network`, parsed and validated as Multus does.

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::config::{is_dns_label, json_type};

/// The networks a pod asks for.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
/// The network that replaces the cluster network for one pod.
pub const DEFAULT_NETWORK_ANNOTATION: &str = "v1.multus-cni.io/default-network";
/// Where the result is written.
pub const NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";

/// Linux's IFNAMSIZ - 1.
const MAX_IFNAME: usize = 15;

/// One element of the networks annotation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkSelection {
    pub name: String,
    /// The pod's namespace when not given.
    pub namespace: String,
    /// `interface` (or the deprecated `interfaceRequest`, or `@ifname` in the comma form).
    pub interface: Option<String>,
    /// `ips`: addresses or CIDRs, as written.
    pub ips: Vec<String>,
    pub mac: Option<String>,
    pub infiniband_guid: Option<String>,
    /// `cni-args`: merged into the delegate configuration's `args.cni`.
    pub cni_args: Option<Map<String, Value>>,
    /// `default-route`: `None` when not asked, else the gateways (at most one per family).
    pub default_route: Option<Vec<IpAddr>>,
    pub port_mappings: Option<Value>,
    pub bandwidth: Option<Value>,
    pub device_id: Option<String>,
}

impl NetworkSelection {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Why an annotation is refused: names the annotation, the element and the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("pod annotation {annotation}: {element}{}: {reason}", field.as_ref().map(|f| format!(", field {f:?}")).unwrap_or_default())]
pub struct AnnotationError {
    pub annotation: String,
    /// Which element (`element 2 ("ns/name")`, or the whole value).
    pub element: String,
    pub field: Option<String>,
    pub reason: String,
}

fn element_label(i: usize, name: Option<&str>) -> String {
    match name {
        Some(n) if !n.is_empty() => format!("element {i} ({n:?})"),
        _ => format!("element {i}"),
    }
}

/// Parses `k8s.v1.cni.cncf.io/networks` (or the default-network annotation, which has the
/// same syntax). JSON when the value contains `[`, `{` or `"`, else a comma list of
/// `[namespace/]name[@ifname]`. `default_namespace` fills elements without a namespace.
pub fn parse_networks(
    annotation: &str,
    value: &str,
    default_namespace: &str,
) -> Result<Vec<NetworkSelection>, AnnotationError> {
    let err = |element: String, field: Option<&str>, reason: String| AnnotationError {
        annotation: annotation.to_string(),
        element,
        field: field.map(str::to_string),
        reason,
    };
    if value.trim().is_empty() {
        return Err(err("value".into(), None, "is empty".into()));
    }
    let mut out = Vec::new();
    if value.contains(['[', '{', '"']) {
        let parsed: Value = serde_json::from_str(value)
            .map_err(|e| err("value".into(), None, format!("not valid JSON: {e}")))?;
        let Value::Array(list) = parsed else {
            return Err(err(
                "value".into(),
                None,
                format!(
                    "expected a JSON list of network selections, got {}",
                    json_type(&parsed)
                ),
            ));
        };
        for (i, item) in list.iter().enumerate() {
            out.push(
                parse_element(item, default_namespace).map_err(|(field, reason)| {
                    let name = item.get("name").and_then(Value::as_str);
                    err(element_label(i, name), field.as_deref(), reason)
                })?,
            );
        }
    } else {
        for (i, item) in value.split(',').enumerate() {
            let item = item.trim();
            let sel = parse_comma_item(item, default_namespace).map_err(|(field, reason)| {
                err(element_label(i, Some(item)), Some(field), reason)
            })?;
            out.push(sel);
        }
    }
    Ok(out)
}

fn parse_comma_item(
    item: &str,
    default_namespace: &str,
) -> Result<NetworkSelection, (&'static str, String)> {
    let slash: Vec<&str> = item.split('/').collect();
    let (ns, rest) = match slash.as_slice() {
        [rest] => ("", *rest),
        [ns, rest] => (ns.trim(), *rest),
        _ => return Err(("name", "more than one '/'".into())),
    };
    let at: Vec<&str> = rest.split('@').collect();
    let (name, ifname) = match at.as_slice() {
        [name] => (name.trim(), ""),
        [name, ifname] => (name.trim(), ifname.trim()),
        _ => return Err(("interface", "more than one '@'".into())),
    };
    if !ns.is_empty() && !is_dns_label(ns) {
        return Err(("namespace", name_rule(ns)));
    }
    check_name(name).map_err(|r| ("name", r))?;
    let interface = if ifname.is_empty() {
        None
    } else {
        check_ifname(ifname).map_err(|r| ("interface", r))?;
        Some(ifname.to_string())
    };
    Ok(NetworkSelection {
        name: name.to_string(),
        namespace: if ns.is_empty() { default_namespace } else { ns }.to_string(),
        interface,
        ..Default::default()
    })
}

fn name_rule(s: &str) -> String {
    format!(
        "{s:?} must consist of lower case alphanumeric characters or '-', and start and end with an alphanumeric character"
    )
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if !is_dns_label(name) {
        return Err(name_rule(name));
    }
    Ok(())
}

/// A Kubernetes object name (DNS-1123 subdomain).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// An interface name the kernel accepts: at most 15 bytes, no `/`, no whitespace, not
/// `.`/`..`.
pub fn check_ifname(ifname: &str) -> Result<(), String> {
    if ifname.is_empty() {
        return Err("interface name is empty".into());
    }
    if ifname.len() > MAX_IFNAME {
        return Err(format!(
            "interface name {ifname:?} is longer than {MAX_IFNAME} characters"
        ));
    }
    if ifname.contains(|c: char| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(format!(
            "interface name {ifname:?} contains '/', ':' or whitespace"
        ));
    }
    if ifname == "." || ifname == ".." {
        return Err(format!("interface name {ifname:?} is not allowed"));
    }
    Ok(())
}

/// A MAC address as Go's `net.ParseMAC` takes it (6, 8 or 20 bytes; `:`/`-` separated
/// pairs or `.` separated quads).
pub fn check_mac(s: &str) -> bool {
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|c| c.is_ascii_hexdigit());
    let ok_len = |n: usize| n == 6 || n == 8 || n == 20;
    if s.contains('.') {
        let parts: Vec<&str> = s.split('.').collect();
        return ok_len(parts.len() * 2) && parts.iter().all(|p| hex(p, 4));
    }
    for sep in [':', '-'] {
        if s.contains(sep) {
            let parts: Vec<&str> = s.split(sep).collect();
            return ok_len(parts.len()) && parts.iter().all(|p| hex(p, 2));
        }
    }
    false
}

/// An IP address or a CIDR.
pub fn check_ip_or_cidr(s: &str) -> bool {
    if s.contains('/') {
        s.parse::<ipnet::IpNet>().is_ok()
    } else {
        s.parse::<IpAddr>().is_ok()
    }
}

type FieldError = (Option<String>, String);

fn field_err(field: &str, reason: impl Into<String>) -> FieldError {
    (Some(field.to_string()), reason.into())
}

fn opt_string(o: &Map<String, Value>, key: &str) -> Result<Option<String>, FieldError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(field_err(
            key,
            format!("expected a string, got {}", json_type(v)),
        )),
    }
}

fn parse_element(item: &Value, default_namespace: &str) -> Result<NetworkSelection, FieldError> {
    let Value::Object(o) = item else {
        return Err((None, format!("expected an object, got {}", json_type(item))));
    };
    let name = opt_string(o, "name")?.unwrap_or_default();
    // The JSON form takes any object name (Multus does not check it at all): a
    // NetworkAttachmentDefinition's name may contain dots, which the comma form refuses.
    if name.is_empty() {
        return Err(field_err("name", "is empty"));
    }
    if !is_dns_subdomain(&name) {
        return Err(field_err(
            "name",
            format!(
                "{name:?} is not a valid object name (lower case alphanumeric characters, '-' or '.', starting and ending with an alphanumeric character, at most 253)"
            ),
        ));
    }
    let namespace = match opt_string(o, "namespace")? {
        None => default_namespace.to_string(),
        Some(ns) => {
            if !is_dns_label(&ns) {
                return Err(field_err("namespace", name_rule(&ns)));
            }
            ns
        }
    };
    let interface = match opt_string(o, "interface")? {
        Some(i) => Some(("interface", i)),
        None => opt_string(o, "interfaceRequest")?.map(|i| ("interfaceRequest", i)),
    };
    let interface = match interface {
        None => None,
        Some((field, i)) => {
            check_ifname(&i).map_err(|r| field_err(field, r))?;
            Some(i)
        }
    };
    let ips = match o.get("ips") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => {
            let mut out = Vec::new();
            for (i, ip) in list.iter().enumerate() {
                match ip {
                    Value::String(s) if check_ip_or_cidr(s) => out.push(s.clone()),
                    Value::String(s) => {
                        return Err(field_err(
                            "ips",
                            format!("item {i}: {s:?} is not an IP address or CIDR"),
                        ));
                    }
                    v => {
                        return Err(field_err(
                            "ips",
                            format!("item {i}: expected a string, got {}", json_type(v)),
                        ));
                    }
                }
            }
            out
        }
        Some(v) => {
            return Err(field_err(
                "ips",
                format!("expected a list, got {}", json_type(v)),
            ));
        }
    };
    let mac = opt_string(o, "mac")?;
    if let Some(m) = &mac
        && !check_mac(m)
    {
        return Err(field_err("mac", format!("{m:?} is not a MAC address")));
    }
    let infiniband_guid = opt_string(o, "infiniband-guid")?;
    if let Some(g) = &infiniband_guid
        && !check_mac(g)
    {
        return Err(field_err(
            "infiniband-guid",
            format!("{g:?} is not a hardware address"),
        ));
    }
    let cni_args = match o.get("cni-args") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(v) => {
            return Err(field_err(
                "cni-args",
                format!("expected an object, got {}", json_type(v)),
            ));
        }
    };
    let default_route = match o.get("default-route") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => {
            let mut gws = Vec::new();
            for (i, gw) in list.iter().enumerate() {
                let ip = gw
                    .as_str()
                    .and_then(|s| s.parse::<IpAddr>().ok())
                    .ok_or_else(|| {
                        field_err(
                            "default-route",
                            format!("item {i}: {gw} is not an IP address"),
                        )
                    })?;
                gws.push(ip);
            }
            let v4 = gws.iter().filter(|g| g.is_ipv4()).count();
            if v4 > 1 || gws.len() - v4 > 1 {
                return Err(field_err(
                    "default-route",
                    "multus does not support ECMP for default-route (more than one gateway per address family)",
                ));
            }
            Some(gws)
        }
        Some(v) => {
            return Err(field_err(
                "default-route",
                format!("expected a list of gateway addresses, got {}", json_type(v)),
            ));
        }
    };
    let port_mappings = match o.get("portMappings") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Array(list)) => {
            for (i, pm) in list.iter().enumerate() {
                check_port_mapping(pm)
                    .map_err(|r| field_err("portMappings", format!("item {i}: {r}")))?;
            }
            Some(v.clone())
        }
        Some(v) => {
            return Err(field_err(
                "portMappings",
                format!("expected a list, got {}", json_type(v)),
            ));
        }
    };
    let bandwidth = match o.get("bandwidth") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(m)) => {
            for (k, val) in m {
                if ["ingressRate", "ingressBurst", "egressRate", "egressBurst"]
                    .contains(&k.as_str())
                    && !(val.is_u64() || val.is_i64())
                {
                    return Err(field_err(
                        "bandwidth",
                        format!("{k:?}: expected an integer, got {}", json_type(val)),
                    ));
                }
            }
            Some(v.clone())
        }
        Some(v) => {
            return Err(field_err(
                "bandwidth",
                format!("expected an object, got {}", json_type(v)),
            ));
        }
    };
    let device_id = opt_string(o, "deviceID")?;
    Ok(NetworkSelection {
        name,
        namespace,
        interface,
        ips,
        mac,
        infiniband_guid,
        cni_args,
        default_route,
        port_mappings,
        bandwidth,
        device_id,
    })
}

fn check_port_mapping(pm: &Value) -> Result<(), String> {
    let Value::Object(o) = pm else {
        return Err(format!("expected an object, got {}", json_type(pm)));
    };
    for key in ["hostPort", "containerPort"] {
        match o.get(key) {
            None | Some(Value::Null) => {}
            Some(v) if v.as_u64().is_some_and(|p| p <= 65535) => {}
            Some(v) => return Err(format!("{key:?}: {v} is not a port number")),
        }
    }
    for key in ["protocol", "hostIP"] {
        match o.get(key) {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(v) => return Err(format!("{key:?}: expected a string, got {}", json_type(v))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Result<Vec<NetworkSelection>, AnnotationError> {
        parse_networks(NETWORKS_ANNOTATION, v, "podns")
    }

    #[test]
    fn comma_form_with_namespace_and_interface() {
        let n = parse(" a , other/b@net7,c@eth1 ").unwrap();
        assert_eq!(n.len(), 3);
        assert_eq!(
            (n[0].namespace.as_str(), n[0].name.as_str()),
            ("podns", "a")
        );
        assert_eq!(n[0].interface, None);
        assert_eq!(n[1].key(), "other/b");
        assert_eq!(n[1].interface.as_deref(), Some("net7"));
        assert_eq!(n[2].interface.as_deref(), Some("eth1"));
    }

    #[test]
    fn comma_form_refuses_bad_names() {
        for bad in [
            "A",
            "a/b/c",
            "a@b@c",
            "-a",
            "a_b",
            "ns_/a",
            "a,,b",
            "a@waytoolonginterface",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.annotation, NETWORKS_ANNOTATION, "{bad}");
            assert!(e.to_string().contains("element"), "{bad}: {e}");
        }
        let e = parse("good,Bad").unwrap_err();
        assert!(e.element.contains("element 1"), "{e}");
        assert_eq!(e.field.as_deref(), Some("name"));
    }

    #[test]
    fn json_form_all_fields() {
        let v = r#"[{"name":"mv","namespace":"n2","interface":"mv0","ips":["192.0.2.5/24","2001:db8::5"],
            "mac":"02:00:00:00:00:01","infiniband-guid":"00:00:00:00:00:00:00:01","cni-args":{"a":1},
            "default-route":["192.0.2.1","2001:db8::1"],"portMappings":[{"hostPort":80,"containerPort":8080,"protocol":"tcp"}],
            "bandwidth":{"ingressRate":1000,"egressBurst":10},"deviceID":"0000:00:01.0"},
            {"name":"br","interfaceRequest":"old0"}]"#;
        let n = parse(v).unwrap();
        assert_eq!(n[0].key(), "n2/mv");
        assert_eq!(n[0].interface.as_deref(), Some("mv0"));
        assert_eq!(n[0].ips, vec!["192.0.2.5/24", "2001:db8::5"]);
        assert_eq!(n[0].mac.as_deref(), Some("02:00:00:00:00:01"));
        assert_eq!(n[0].default_route.as_ref().unwrap().len(), 2);
        assert_eq!(n[0].cni_args.as_ref().unwrap()["a"], 1);
        assert!(n[0].port_mappings.is_some() && n[0].bandwidth.is_some());
        assert_eq!(n[0].device_id.as_deref(), Some("0000:00:01.0"));
        assert_eq!(n[1].key(), "podns/br");
        assert_eq!(n[1].interface.as_deref(), Some("old0"));
        // Object names with dots are fine in the JSON form (not in the comma form).
        assert_eq!(parse(r#"[{"name":"mv.v2"}]"#).unwrap()[0].name, "mv.v2");
        assert!(parse("mv.v2").is_err());
        assert!(parse(r#"[{"name":"a..b"}]"#).is_err());
    }

    #[test]
    fn json_form_errors_name_element_and_field() {
        let cases = [
            (r#"[{"name":"a","ips":["300.1.1.1"]}]"#, "ips"),
            (r#"[{"name":"a","mac":"zz:00"}]"#, "mac"),
            (r#"[{"name":"a","interface":"has space"}]"#, "interface"),
            (r#"[{"name":"a","interface":"x/y"}]"#, "interface"),
            (
                r#"[{"name":"a","interface":"sixteencharsxxxx"}]"#,
                "interface",
            ),
            (
                r#"[{"name":"a","default-route":["192.0.2.1","192.0.2.2"]}]"#,
                "default-route",
            ),
            (r#"[{"name":"a","cni-args":[1]}]"#, "cni-args"),
            (
                r#"[{"name":"a","portMappings":[{"hostPort":70000}]}]"#,
                "portMappings",
            ),
            (
                r#"[{"name":"a","bandwidth":{"ingressRate":"x"}}]"#,
                "bandwidth",
            ),
            (
                r#"[{"name":"a","infiniband-guid":"nope"}]"#,
                "infiniband-guid",
            ),
            (r#"[{"name":"Bad"}]"#, "name"),
            (r#"[{"namespace":"x"}]"#, "name"),
            (r#"[{"name":"a","namespace":"N"}]"#, "namespace"),
        ];
        for (v, field) in cases {
            let e = parse(v).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{v}: {e}");
            assert!(e.element.starts_with("element 0"), "{v}: {e}");
        }
        let e = parse(r#"[{"name":"a","default-route":["192.0.2.1","192.0.2.2"]}]"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("multus does not support ECMP for default-route")
        );
        // One gateway per family is fine.
        parse(r#"[{"name":"a","default-route":["192.0.2.1","2001:db8::1"]}]"#).unwrap();
        for v in ["[1]", "{\"name\":\"a\"}", "[{", "\"a\""] {
            assert!(parse(v).is_err(), "{v}");
        }
        assert!(parse("  ").is_err());
    }

    #[test]
    fn macs_as_go_parses_them() {
        for ok in [
            "02:00:00:00:00:01",
            "02-00-00-00-00-01",
            "0200.0000.0001",
            "00:00:00:00:00:00:00:01",
        ] {
            assert!(check_mac(ok), "{ok}");
        }
        for bad in [
            "",
            "02:00:00:00:00",
            "0g:00:00:00:00:01",
            "02:00:00:00:00:001",
            "0200.0000",
        ] {
            assert!(!check_mac(bad), "{bad}");
        }
    }
}
