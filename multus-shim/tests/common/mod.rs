//! A container runtime in miniature for the lab tests: a "host" namespace where the plugin
//! and its delegates run (bridges, veth host ends, macvlan masters stay there), a pod
//! namespace, and every state (caches, host-local's dataDir) in the test's temp dir.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use metalnet::testing::Netns;
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_multus-shim");
pub const PLUGINS: &str = "/usr/lib/cni";

pub struct Lab {
    pub host: Netns,
    pub pod: Netns,
    pub dir: tempfile::TempDir,
    pub tag: String,
}

impl Lab {
    /// `None` (the test skips) when not root or the Debian plugins are missing.
    pub fn new(tag: &str) -> Option<Lab> {
        if !Path::new(PLUGINS).join("bridge").exists() {
            eprintln!("skipping: no CNI plugins in {PLUGINS}");
            return None;
        }
        let host = Netns::new(&format!("{tag}h"))?;
        let pod = Netns::new(&format!("{tag}p"))?;
        // A veth pair whose end `vm1` is the macvlan master.
        host.ip(&["link", "add", "vm0", "type", "veth", "peer", "name", "vm1"]);
        host.ip(&["link", "set", "vm0", "up"]);
        host.ip(&["link", "set", "vm1", "up"]);
        Some(Lab {
            host,
            pod,
            dir: tempfile::tempdir().unwrap(),
            tag: tag.to_string(),
        })
    }

    pub fn cni_dir(&self) -> PathBuf {
        self.dir.path().join("cni")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.pod.name())
    }

    pub fn host_local(&self, subnet: &str) -> Value {
        json!({"type": "host-local", "dataDir": self.ipam_dir(), "ranges": [[{"subnet": subnet}]]})
    }

    /// The cluster network: a bridge with host-local on 192.0.2.0/24 and a default route.
    pub fn bridge(&self, version: &str) -> Value {
        json!({"cniVersion": version, "name": "podnet", "type": "bridge", "bridge": "mbr0",
               "isGateway": true, "ipam": {
                   "type": "host-local", "dataDir": self.ipam_dir(),
                   "ranges": [[{"subnet": "192.0.2.0/24", "gateway": "192.0.2.1"}]],
                   "routes": [{"dst": "0.0.0.0/0"}]}})
    }

    pub fn macvlan(&self, name: &str, version: &str) -> Value {
        json!({"cniVersion": version, "name": name, "type": "macvlan", "master": "vm1",
               "mode": "bridge", "ipam": self.host_local("198.51.100.0/24")})
    }

    pub fn ptp(&self, version: &str) -> Value {
        json!({"cniVersion": version, "name": "ptpnet", "type": "ptp",
               "ipam": self.host_local("203.0.113.0/24")})
    }

    /// macvlan with a static address, then tuning setting the MAC (a conflist).
    pub fn static_tuned(&self, version: &str) -> Value {
        json!({"cniVersion": version, "name": "stat", "plugins": [
            {"type": "macvlan", "master": "vm1", "mode": "bridge",
             "ipam": {"type": "static", "addresses": [{"address": "198.51.100.200/24"}]}},
            {"type": "tuning", "mac": "0a:58:c6:33:64:c8"}
        ]})
    }

    pub fn multus(&self, version: &str, delegates: Vec<Value>) -> Value {
        json!({"cniVersion": version, "name": "multus-cni-network", "type": "multus-shim",
               "cniDir": self.cni_dir(), "binDir": PLUGINS, "delegates": delegates,
               "logFile": self.dir.path().join("multus.log")})
    }

    /// Runs the plugin in the host namespace as the runtime would: `(exit status, stdout
    /// as JSON or null)`.
    pub fn call(
        &self,
        command: &str,
        container_id: &str,
        conf: &Value,
        extra: &[(&str, &str)],
    ) -> (i32, Value) {
        self.call_raw(
            command,
            container_id,
            &serde_json::to_vec(conf).unwrap(),
            extra,
        )
    }

    pub fn call_raw(
        &self,
        command: &str,
        container_id: &str,
        stdin: &[u8],
        extra: &[(&str, &str)],
    ) -> (i32, Value) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.host.name(), BIN])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", self.netns_path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", PLUGINS)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let mut child = cmd.spawn().expect("ip netns exec runs");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = wait_bounded(child, 60);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let v = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
        if v.is_null() && !stdout.trim().is_empty() {
            panic!("stdout is not JSON: {stdout:?}");
        }
        (out.status.code().unwrap_or(-1), v)
    }

    /// host-local's allocations: files under its dataDir named by an IP address.
    pub fn allocated(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(nets) = std::fs::read_dir(self.ipam_dir()) else {
            return out;
        };
        for net in nets.flatten() {
            for f in std::fs::read_dir(net.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let n = f.file_name().to_string_lossy().into_owned();
                if n.parse::<std::net::IpAddr>().is_ok() {
                    out.push(format!("{}/{n}", net.file_name().to_string_lossy()));
                }
            }
        }
        out.sort();
        out
    }

    /// The pod's interfaces other than `lo`: name -> (mac, [addresses with prefix]).
    pub fn pod_links(&self) -> Vec<(String, String, Vec<String>)> {
        let v: Value = serde_json::from_str(&self.pod.ip(&["-j", "addr"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|l| l["ifname"] != "lo")
            .map(|l| {
                let addrs = l["addr_info"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|x| x["scope"] == "global")
                            .map(|x| format!("{}/{}", x["local"].as_str().unwrap(), x["prefixlen"]))
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    l["ifname"].as_str().unwrap().to_string(),
                    l["address"].as_str().unwrap_or_default().to_string(),
                    addrs,
                )
            })
            .collect()
    }

    pub fn cache_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in [self.cni_dir(), self.cni_dir().join("results")] {
            for f in std::fs::read_dir(d).into_iter().flatten().flatten() {
                if f.file_type().unwrap().is_file() {
                    out.push(f.file_name().to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }
}

fn wait_bounded(mut child: std::process::Child, secs: u64) -> std::process::Output {
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed().as_secs() > secs {
            let _ = child.kill();
            panic!("the plugin did not finish within {secs}s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
