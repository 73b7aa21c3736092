//! Pods on a lab node, attached the way Flannel's CNI configuration does it: Debian's real
//! `bridge` and `host-local` plugins, configured from the node's `subnet.env`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{Host, Lab, LabError, Result, io_err};

/// Where Debian's containernetworking-plugins live.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// A pod: its own namespace with `eth0` on the node's `cni0` bridge.
#[derive(Debug, Clone)]
pub struct Pod {
    pub host: Host,
    pub v4: Option<String>,
    pub v6: Option<String>,
}

/// Reads a `subnet.env` (`KEY=VALUE` lines).
pub fn read_subnet_env(path: &Path) -> Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).map_err(io_err(format!("reading {}", path.display())))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// The bridge + host-local CNI configuration Flannel's CNI plugin derives from `subnet.env`.
pub fn bridge_conf(env: &BTreeMap<String, String>, ipam_dir: &Path) -> Result<serde_json::Value> {
    let net = |key: &str| -> Result<Option<String>> {
        env.get(key)
            .map(|v| {
                v.parse::<ipnet::IpNet>()
                    .map(|n| n.trunc().to_string())
                    .map_err(|e| LabError::Parse {
                        what: format!("subnet.env {key}={v}"),
                        reason: e.to_string(),
                    })
            })
            .transpose()
    };
    let mut ranges = Vec::new();
    let mut routes = Vec::new();
    for (subnet, network) in [
        ("FLANNEL_SUBNET", "FLANNEL_NETWORK"),
        ("FLANNEL_IPV6_SUBNET", "FLANNEL_IPV6_NETWORK"),
    ] {
        if let (Some(s), Some(n)) = (net(subnet)?, net(network)?) {
            ranges.push(serde_json::json!([{"subnet": s}]));
            routes.push(serde_json::json!({"dst": n}));
        }
    }
    let mtu: u32 = env
        .get("FLANNEL_MTU")
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| LabError::Parse {
            what: "subnet.env".into(),
            reason: "no FLANNEL_MTU".into(),
        })?;
    let ipmasq = env.get("FLANNEL_IPMASQ").is_some_and(|v| v == "true");
    Ok(serde_json::json!({
        "cniVersion": "1.0.0", "name": "cbr0", "type": "bridge", "bridge": "cni0",
        "mtu": mtu, "ipMasq": !ipmasq, "isGateway": true, "hairpinMode": true,
        // kube-flannel.yml's delegate: pods reach beyond the pod network (and answer
        // clients outside it, as Services' backends) through the bridge.
        "isDefaultGateway": true,
        "ipam": {"type": "host-local", "dataDir": ipam_dir.display().to_string(),
                 "ranges": ranges, "routes": routes}
    }))
}

/// Runs a CNI plugin inside `node`'s namespace for the pod namespace `pod_netns`; returns
/// its stdout (the CNI result).
pub fn cni(
    node: &Host,
    plugin: &str,
    command: &str,
    pod_netns: &str,
    conf: &str,
) -> Result<String> {
    let plugin_path = format!("{CNI_PATH}/{plugin}");
    let mut child = Command::new("ip")
        .args(["netns", "exec", node.netns(), &plugin_path])
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", pod_netns)
        .env("CNI_NETNS", format!("/run/netns/{pod_netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("running {plugin_path}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(conf.as_bytes())
            .map_err(io_err("writing the CNI configuration"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io_err(format!("waiting for {plugin_path}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("CNI_COMMAND={command} {plugin_path}"),
            status: out.status.to_string(),
            stderr: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(stdout)
}

/// Creates a pod namespace `name` and attaches it to `node` with the bridge plugin
/// configured from the node's `subnet.env`.
pub fn attach_pod(
    lab: &Lab,
    node: &Host,
    name: &str,
    subnet_env: &BTreeMap<String, String>,
) -> Result<Pod> {
    let pod = lab.host(name)?;
    let conf = bridge_conf(subnet_env, &node.dir().join("ipam"))?;
    let out = cni(node, "bridge", "ADD", pod.netns(), &conf.to_string())?;
    let result: serde_json::Value = serde_json::from_str(&out).map_err(|e| LabError::Parse {
        what: format!("CNI result {out:?}"),
        reason: e.to_string(),
    })?;
    let (mut v4, mut v6) = (None, None);
    for ip in result["ips"].as_array().into_iter().flatten() {
        let Some(Ok(addr)) = ip["address"].as_str().map(str::parse::<ipnet::IpNet>) else {
            continue;
        };
        if addr.addr().is_ipv4() {
            v4 = Some(addr.addr().to_string());
        } else {
            v6 = Some(addr.addr().to_string());
        }
    }
    Ok(Pod { host: pod, v4, v6 })
}
