//! A container runtime for the lab: what containerd and CRI-O do through libcni, done against
//! lab namespaces.
//!
//! A [`Runtime`] runs CNI plugins inside a lab *node* (a [`Host`]: bridges and other host-side
//! links the plugins create live there, never in the machine's root namespace) for pod
//! sandboxes ([`PodSandbox`]: a network namespace of their own, removed on drop, also while
//! unwinding from a panic). Like libcni it
//!
//! - finds the plugin named by `type` in its `CNI_PATH` directories, in order;
//! - passes `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS=/run/netns/NAME`, `CNI_IFNAME`,
//!   `CNI_ARGS` (`IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;
//!   K8S_POD_INFRA_CONTAINER_ID=..;K8S_POD_UID=..`) and `CNI_PATH`;
//! - builds each plugin's stdin as libcni does: the plugin's configuration with the
//!   network's `name` and `cniVersion`, `runtimeConfig` holding the capability arguments the
//!   plugin declares in `capabilities`, and `prevResult` (the previous plugin's result on ADD,
//!   the cached result on CHECK and DEL);
//! - keeps libcni's result cache (`<cache>/results/<network>-<container>-<ifname>`,
//!   `kind: cniCacheV1`) and uses it for DEL and CHECK;
//! - supports ADD, DEL, CHECK, GC (deleting cached attachments that are not valid, then GC
//!   with `cni.dev/valid-attachments` to plugins of 1.1.0), STATUS and VERSION;
//! - bounds every plugin call by a timeout, and returns the parsed result or the CNI error
//!   object the plugin printed ([`CniCallError::Plugin`]).
//!
//! Inspection helpers read a pod's interfaces, addresses, MACs and routes (`ip -n NS -j`), and
//! host-local's allocations (the files in its `dataDir`, which tests put in their temp dir).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Host, Lab, LabError, io_err, run};

/// Debian's containernetworking-plugins.
pub const DEBIAN_CNI_PATH: &str = "/usr/lib/cni";

/// How long one plugin call may take unless the runtime is told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The commands of the CNI protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Gc => "GC",
            CniCommand::Status => "STATUS",
            CniCommand::Version => "VERSION",
        }
    }
}

/// Why a CNI call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CniCallError {
    /// The plugin failed and printed a CNI error object.
    #[error("{plugin} {command}: CNI error {code}: {msg} ({details}); stderr: {stderr}")]
    Plugin {
        plugin: String,
        command: &'static str,
        code: u64,
        msg: String,
        details: String,
        stderr: String,
    },
    /// The plugin could not be run, ran past the timeout, or broke the protocol (a failure
    /// without an error object, output that is not JSON).
    #[error("{plugin} {command}: {reason}")]
    Runtime {
        plugin: String,
        command: &'static str,
        reason: String,
    },
}

impl CniCallError {
    /// The CNI error code, when the plugin printed an error object.
    pub fn code(&self) -> Option<u64> {
        match self {
            CniCallError::Plugin { code, .. } => Some(*code),
            CniCallError::Runtime { .. } => None,
        }
    }

    /// The error object's `msg` and `details` (or the runtime's reason), for assertions on
    /// what the message names.
    pub fn text(&self) -> String {
        match self {
            CniCallError::Plugin { msg, details, .. } => format!("{msg} {details}"),
            CniCallError::Runtime { reason, .. } => reason.clone(),
        }
    }
}

/// A network configuration as the runtime loads it from its configuration directory: one
/// plugin (`.conf`) or a list (`.conflist`, with `plugins`).
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// The file's JSON, as written.
    pub raw: Value,
}

impl NetConf {
    pub fn new(raw: Value) -> NetConf {
        NetConf { raw }
    }

    pub fn name(&self) -> &str {
        self.raw["name"].as_str().unwrap_or_default()
    }

    pub fn cni_version(&self) -> &str {
        self.raw["cniVersion"].as_str().unwrap_or("0.1.0")
    }

    /// The plugins in the order ADD runs them.
    pub fn plugins(&self) -> Vec<Value> {
        match self.raw.get("plugins").and_then(Value::as_array) {
            Some(list) => list.clone(),
            None => vec![self.raw.clone()],
        }
    }
}

/// The pod identity the runtime passes in `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// One attachment: which sandbox, which interface, which capability arguments.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    /// `/run/netns/NAME`, or `None` (a DEL after the sandbox is gone).
    pub netns: Option<String>,
    pub ifname: String,
    pub pod: Option<PodIdentity>,
    /// Capability arguments the runtime offers (`portMappings`, `mac`, `ips`, ...).
    pub capability_args: serde_json::Map<String, Value>,
}

impl Attachment {
    /// `IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..;
    /// K8S_POD_UID=..`, as the kubelet's runtimes pass them.
    pub fn cni_args(&self) -> Vec<(String, String)> {
        let mut args = vec![("IgnoreUnknown".to_string(), "1".to_string())];
        if let Some(pod) = &self.pod {
            args.push(("K8S_POD_NAMESPACE".into(), pod.namespace.clone()));
            args.push(("K8S_POD_NAME".into(), pod.name.clone()));
            args.push((
                "K8S_POD_INFRA_CONTAINER_ID".into(),
                self.container_id.clone(),
            ));
            args.push(("K8S_POD_UID".into(), pod.uid.clone()));
        }
        args
    }
}

/// A pod sandbox: a network namespace of its own (`<lab prefix>-<name>`), removed on drop.
pub struct PodSandbox {
    host: Host,
    pub identity: PodIdentity,
    pub container_id: String,
}

impl std::fmt::Debug for PodSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodSandbox")
            .field("netns", &self.host.netns())
            .field("identity", &self.identity)
            .field("container_id", &self.container_id)
            .finish()
    }
}

impl PodSandbox {
    /// Creates the sandbox of pod `namespace/name` (uid `uid`); its namespace is named after
    /// the lab and `name`, its container id is unique to it.
    pub fn new(lab: &Lab, namespace: &str, name: &str, uid: &str) -> Result<PodSandbox, LabError> {
        let host_name = format!("pod-{name}");
        let netns = lab.netns_name(&host_name)?;
        run(&["ip", "netns", "add", &netns])?;
        // From here the namespace belongs to the sandbox: drop removes it on any failure below.
        let dir = lab.dir().join(&host_name);
        let sandbox = PodSandbox {
            host: Host {
                name: host_name,
                netns: netns.clone(),
                dir: dir.clone(),
                lab: lab.shared.clone(),
            },
            identity: PodIdentity {
                namespace: namespace.into(),
                name: name.into(),
                uid: uid.into(),
            },
            container_id: format!("{netns}-{:08x}", lab.shared.next_id() as u32 ^ 0x5a5a_0000),
        };
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        run(&["ip", "-n", &netns, "link", "set", "lo", "up"])?;
        for key in ["all", "default"] {
            super::sysctl(&netns, &format!("net.ipv6.conf.{key}.accept_dad"), "0")?;
        }
        Ok(sandbox)
    }

    /// The sandbox as a lab host (ping, exec, mac, ...).
    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn netns(&self) -> &str {
        self.host.netns()
    }

    /// `/run/netns/NAME`, as `CNI_NETNS`.
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.host.netns())
    }

    /// The attachment of this sandbox on `ifname` with no capability arguments.
    pub fn attachment(&self, ifname: &str) -> Attachment {
        Attachment {
            container_id: self.container_id.clone(),
            netns: Some(self.netns_path()),
            ifname: ifname.into(),
            pod: Some(self.identity.clone()),
            capability_args: Default::default(),
        }
    }

    /// Removes the namespace now (as a runtime does when the sandbox is gone before DEL).
    pub fn remove_netns(&self) {
        let netns = self.host.netns();
        if Path::new("/run/netns").join(netns).exists() {
            super::down::kill_netns_pids(netns);
            if let Err(e) = run(&["ip", "netns", "del", netns]) {
                tracing::warn!(netns, error = %e, "deleting a pod namespace failed");
            }
        }
    }

    /// The interfaces of the pod (`ip -j addr`), `lo` left out.
    pub fn interfaces(&self) -> Result<Vec<PodInterface>, LabError> {
        interfaces(self.netns())
    }

    /// One interface by name.
    pub fn interface(&self, name: &str) -> Result<Option<PodInterface>, LabError> {
        Ok(self.interfaces()?.into_iter().find(|i| i.name == name))
    }

    /// The pod's routes of both families (`ip -j route` / `ip -6 -j route`, main table).
    pub fn routes(&self) -> Result<Vec<Value>, LabError> {
        let mut all = Vec::new();
        for family in ["-4", "-6"] {
            let out = run(&["ip", "-n", self.netns(), family, "-j", "route", "show"])?;
            let v: Value = parse_json(&out.stdout, "ip -j route")?;
            all.extend(v.as_array().cloned().unwrap_or_default());
        }
        Ok(all)
    }
}

impl Drop for PodSandbox {
    fn drop(&mut self) {
        self.remove_netns();
    }
}

/// An interface of a pod as `ip -j addr` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInterface {
    pub name: String,
    pub mac: String,
    pub mtu: u64,
    /// Global-scope addresses with their prefix length.
    pub addrs: Vec<ipnet::IpNet>,
    /// `ip`'s own JSON, for anything else.
    pub raw: Value,
}

/// The interfaces of namespace `netns` (`lo` left out).
pub fn interfaces(netns: &str) -> Result<Vec<PodInterface>, LabError> {
    let out = run(&["ip", "-n", netns, "-j", "addr", "show"])?;
    let v: Value = parse_json(&out.stdout, "ip -j addr")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["ifname"] != "lo")
        .map(|l| PodInterface {
            name: l["ifname"].as_str().unwrap_or_default().to_string(),
            mac: l["address"].as_str().unwrap_or_default().to_string(),
            mtu: l["mtu"].as_u64().unwrap_or_default(),
            addrs: l["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["scope"] == "global")
                .filter_map(|a| {
                    format!(
                        "{}/{}",
                        a["local"].as_str()?,
                        a["prefixlen"].as_u64().unwrap_or(0)
                    )
                    .parse()
                    .ok()
                })
                .collect(),
            raw: l.clone(),
        })
        .collect())
}

/// Turns checksum offloads off on a veth: the lab's veths carry no real NIC, and offloaded
/// checksums of packets crossing namespaces confuse some tools.
pub fn offloads_off(netns: &str, ifname: &str) -> Result<(), LabError> {
    run(&[
        "ip", "netns", "exec", netns, "ethtool", "-K", ifname, "rx", "off", "tx", "off",
    ])?;
    Ok(())
}

/// One host-local allocation: a file in `dataDir/<network>/` named by the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub network: String,
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

/// Every address host-local has allocated under `data_dir` (all networks).
pub fn host_local_allocations(data_dir: &Path) -> Vec<Allocation> {
    let mut out = Vec::new();
    let Ok(networks) = std::fs::read_dir(data_dir) else {
        return out;
    };
    for net in networks.flatten() {
        let Ok(files) = std::fs::read_dir(net.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            // `last_reserved_ip.N` and `lock` are bookkeeping, not allocations.
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            let text = std::fs::read_to_string(file.path()).unwrap_or_default();
            let mut lines = text.lines().map(str::trim);
            out.push(Allocation {
                network: net.file_name().to_string_lossy().into_owned(),
                ip,
                container_id: lines.next().unwrap_or_default().to_string(),
                ifname: lines.next().unwrap_or_default().to_string(),
            });
        }
    }
    out.sort_by(|a, b| (&a.network, a.ip).cmp(&(&b.network, b.ip)));
    out
}

/// The container runtime.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Plugins run inside this namespace (the node).
    node_netns: String,
    /// `CNI_PATH`, searched in order for a plugin's `type`.
    pub cni_path: Vec<PathBuf>,
    /// libcni's cache directory (results under `results/`).
    pub cache_dir: PathBuf,
    /// The bound of one plugin call.
    pub timeout: Duration,
    /// Extra environment for every plugin (e.g. `METALNET_STATE_DIR`).
    pub env: Vec<(String, String)>,
}

/// What a call returned on success: the result (ADD, VERSION) or nothing.
pub type CallResult = Result<Option<Value>, CniCallError>;

impl Runtime {
    /// A runtime running plugins in `node`, with its cache in `cache_dir` and `cni_path`
    /// searched for plugins.
    pub fn new(node: &Host, cni_path: Vec<PathBuf>, cache_dir: &Path) -> Runtime {
        Runtime {
            node_netns: node.netns().to_string(),
            cni_path,
            cache_dir: cache_dir.to_path_buf(),
            timeout: DEFAULT_TIMEOUT,
            env: Vec::new(),
        }
    }

    /// The path of plugin `kind` in `CNI_PATH` (as libcni's FindInPath: a name only).
    pub fn find_plugin(&self, kind: &str) -> Option<PathBuf> {
        if kind.is_empty() || kind.contains('/') {
            return None;
        }
        self.cni_path
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
    }

    fn cni_path_env(&self) -> String {
        self.cni_path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Where libcni caches the result of `network`'s attachment.
    pub fn cache_path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{network}-{container_id}-{ifname}"))
    }

    /// The cached entry of an attachment, if any.
    pub fn cached(&self, network: &str, att: &Attachment) -> Option<Value> {
        let path = self.cache_path(network, &att.container_id, &att.ifname);
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Runs one plugin with `command` and `stdin` for `att` (`None` for GC/STATUS/VERSION,
    /// which carry no attachment).
    pub fn exec_plugin(
        &self,
        kind: &str,
        command: CniCommand,
        att: Option<&Attachment>,
        stdin: &[u8],
    ) -> CallResult {
        let cmd = command.as_str();
        let runtime_err = |reason: String| CniCallError::Runtime {
            plugin: kind.to_string(),
            command: cmd,
            reason,
        };
        let Some(path) = self.find_plugin(kind) else {
            return Err(runtime_err(format!(
                "failed to find plugin {kind:?} in path {:?}",
                self.cni_path
            )));
        };
        let mut command_line = Command::new("ip");
        command_line
            .args(["netns", "exec", &self.node_netns])
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Only what the runtime sets: a CNI_* variable of the test process must not leak in.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CNI_") {
                command_line.env_remove(k);
            }
        }
        command_line
            .env("CNI_COMMAND", cmd)
            .env("CNI_PATH", self.cni_path_env());
        if let Some(att) = att {
            command_line
                .env("CNI_CONTAINERID", &att.container_id)
                .env("CNI_IFNAME", &att.ifname)
                .env(
                    "CNI_ARGS",
                    att.cni_args()
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(";"),
                );
            if let Some(netns) = &att.netns {
                command_line.env("CNI_NETNS", netns);
            }
        }
        for (k, v) in &self.env {
            command_line.env(k, v);
        }
        let (status, stdout, stderr) = run_bounded(command_line, stdin, self.timeout)
            .map_err(|e| runtime_err(format!("running {}: {e}", path.display())))?;
        let stderr = String::from_utf8_lossy(&stderr).trim().to_string();
        let Some(status) = status else {
            return Err(runtime_err(format!(
                "no answer within {:?}; stderr: {stderr}",
                self.timeout
            )));
        };
        if status.success() {
            if stdout.iter().all(u8::is_ascii_whitespace) {
                return Ok(None);
            }
            return serde_json::from_slice(&stdout).map(Some).map_err(|e| {
                runtime_err(format!(
                    "output is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&stdout)
                ))
            });
        }
        match serde_json::from_slice::<Value>(&stdout) {
            Ok(v) if v.get("code").and_then(Value::as_u64).is_some() => Err(CniCallError::Plugin {
                plugin: kind.to_string(),
                command: cmd,
                code: v["code"].as_u64().unwrap_or_default(),
                msg: v["msg"].as_str().unwrap_or_default().to_string(),
                details: v["details"].as_str().unwrap_or_default().to_string(),
                stderr,
            }),
            _ => Err(runtime_err(format!(
                "failed ({status}) without a CNI error object: stdout {:?}, stderr {stderr}",
                String::from_utf8_lossy(&stdout)
            ))),
        }
    }

    /// ADD of every plugin of `conf` in order, each getting the previous one's result; caches
    /// the final result. On failure nothing is cached (libcni leaves the DEL to the caller).
    pub fn add(&self, conf: &NetConf, att: &Attachment) -> Result<Value, CniCallError> {
        let mut prev: Option<Value> = None;
        for plugin in conf.plugins() {
            let stdin = build_stdin(conf, &plugin, prev.as_ref(), att);
            let kind = plugin["type"].as_str().unwrap_or_default().to_string();
            let out = self.exec_plugin(&kind, CniCommand::Add, Some(att), &stdin)?;
            prev = Some(out.ok_or_else(|| CniCallError::Runtime {
                plugin: kind,
                command: "ADD",
                reason: "ADD succeeded without a result".into(),
            })?);
        }
        let result = prev.unwrap_or_else(|| json!({"cniVersion": conf.cni_version()}));
        self.write_cache(conf, att, &result)
            .map_err(|e| CniCallError::Runtime {
                plugin: conf.name().to_string(),
                command: "ADD",
                reason: format!("writing the result cache: {e}"),
            })?;
        Ok(result)
    }

    /// DEL of every plugin in reverse order with the cached result as `prevResult` (for
    /// configurations of 0.4.0 and later); removes the cache entry on success.
    pub fn del(&self, conf: &NetConf, att: &Attachment) -> Result<(), CniCallError> {
        let cached = self
            .cached(conf.name(), att)
            .and_then(|c| c.get("result").cloned());
        let prev = cached.filter(|_| version_at_least(conf.cni_version(), "0.4.0"));
        for plugin in conf.plugins().iter().rev() {
            let stdin = build_stdin(conf, plugin, prev.as_ref(), att);
            let kind = plugin["type"].as_str().unwrap_or_default();
            self.exec_plugin(kind, CniCommand::Del, Some(att), &stdin)?;
        }
        let path = self.cache_path(conf.name(), &att.container_id, &att.ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniCallError::Runtime {
                plugin: conf.name().to_string(),
                command: "DEL",
                reason: format!("removing {}: {e}", path.display()),
            }),
        }
    }

    /// CHECK of every plugin with the cached result (refused, as libcni does, before 0.4.0
    /// and without a cached result).
    pub fn check(&self, conf: &NetConf, att: &Attachment) -> Result<(), CniCallError> {
        let err = |reason: String| CniCallError::Runtime {
            plugin: conf.name().to_string(),
            command: "CHECK",
            reason,
        };
        if !version_at_least(conf.cni_version(), "0.4.0") {
            return Err(err(format!(
                "configuration version {:?} does not support the CHECK command",
                conf.cni_version()
            )));
        }
        let Some(prev) = self
            .cached(conf.name(), att)
            .and_then(|c| c.get("result").cloned())
        else {
            return Err(err(format!(
                "no result cached for {} {}",
                att.container_id, att.ifname
            )));
        };
        for plugin in conf.plugins() {
            let stdin = build_stdin(conf, &plugin, Some(&prev), att);
            let kind = plugin["type"].as_str().unwrap_or_default();
            self.exec_plugin(kind, CniCommand::Check, Some(att), &stdin)?;
        }
        Ok(())
    }

    /// GC as libcni does it: DEL of every cached attachment of `conf` not in `valid`
    /// (container id, ifname), then GC with `cni.dev/valid-attachments` for plugins of
    /// 1.1.0 and later.
    pub fn gc(&self, conf: &NetConf, valid: &[(String, String)]) -> Result<(), CniCallError> {
        for entry in self.cached_attachments(conf.name()) {
            let id = entry["containerId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let ifname = entry["ifName"].as_str().unwrap_or_default().to_string();
            if valid.iter().any(|(c, i)| *c == id && *i == ifname) {
                continue;
            }
            // As libcni does: the DEL gets the attachment's cached arguments.
            let args: BTreeMap<String, String> = entry["cniArgs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|kv| Some((kv[0].as_str()?.to_string(), kv[1].as_str()?.to_string())))
                .collect();
            let pod = match (
                args.get("K8S_POD_NAMESPACE"),
                args.get("K8S_POD_NAME"),
                args.get("K8S_POD_UID"),
            ) {
                (Some(namespace), Some(name), Some(uid)) => Some(PodIdentity {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    uid: uid.clone(),
                }),
                _ => None,
            };
            let netns = entry["netns"]
                .as_str()
                .filter(|p| !p.is_empty() && Path::new(p).exists())
                .map(str::to_string);
            let att = Attachment {
                container_id: id,
                netns,
                ifname,
                pod,
                capability_args: entry["capabilityArgs"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            };
            self.del(conf, &att)?;
        }
        if !version_at_least(conf.cni_version(), "1.1.0") {
            return Ok(());
        }
        let attachments: Vec<Value> = valid
            .iter()
            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
            .collect();
        for plugin in conf.plugins() {
            let mut stdin: Value = serde_json::from_slice(&build_stdin_plain(conf, &plugin))
                .unwrap_or_else(|_| json!({}));
            stdin["cni.dev/valid-attachments"] = Value::Array(attachments.clone());
            let kind = plugin["type"].as_str().unwrap_or_default();
            self.exec_plugin(kind, CniCommand::Gc, None, stdin.to_string().as_bytes())?;
        }
        Ok(())
    }

    /// STATUS of every plugin (skipped, as libcni does, before 1.1.0).
    pub fn status(&self, conf: &NetConf) -> Result<(), CniCallError> {
        if !version_at_least(conf.cni_version(), "1.1.0") {
            return Ok(());
        }
        for plugin in conf.plugins() {
            let kind = plugin["type"].as_str().unwrap_or_default();
            self.exec_plugin(
                kind,
                CniCommand::Status,
                None,
                &build_stdin_plain(conf, &plugin),
            )?;
        }
        Ok(())
    }

    /// VERSION of plugin `kind`: `{cniVersion, supportedVersions}`.
    pub fn version(&self, kind: &str, cni_version: &str) -> Result<Value, CniCallError> {
        let stdin = json!({"cniVersion": cni_version}).to_string();
        self.exec_plugin(kind, CniCommand::Version, None, stdin.as_bytes())?
            .ok_or_else(|| CniCallError::Runtime {
                plugin: kind.to_string(),
                command: "VERSION",
                reason: "no output".into(),
            })
    }

    /// The cache entries of `network` (every attachment it has a cached result for).
    pub fn cached_attachments(&self, network: &str) -> Vec<Value> {
        let Ok(dir) = std::fs::read_dir(self.cache_dir.join("results")) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
            .filter(|v| v["kind"] == "cniCacheV1" && v["networkName"] == network)
            .collect()
    }

    fn write_cache(&self, conf: &NetConf, att: &Attachment, result: &Value) -> std::io::Result<()> {
        use super::base64 as encode;
        let path = self.cache_path(conf.name(), &att.container_id, &att.ifname);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let entry = json!({
            "kind": "cniCacheV1",
            "containerId": att.container_id,
            "config": encode(conf.raw.to_string().as_bytes()),
            "ifName": att.ifname,
            "networkName": conf.name(),
            "netns": att.netns.clone().unwrap_or_default(),
            "cniArgs": att.cni_args().iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "capabilityArgs": att.capability_args,
            "result": result,
        });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, entry.to_string())?;
        std::fs::rename(&tmp, &path)
    }
}

/// The stdin of one plugin of `conf` as libcni builds it: the plugin's configuration with the
/// network's `name` and `cniVersion`, `prevResult` when given, and `runtimeConfig` with the
/// capability arguments the plugin declares (`capabilities: {NAME: true}`).
pub fn build_stdin(
    conf: &NetConf,
    plugin: &Value,
    prev: Option<&Value>,
    att: &Attachment,
) -> Vec<u8> {
    let mut out = plugin.clone();
    if !out.is_object() {
        // Not ours to judge: the plugin gets what the file said and answers.
        return plugin.to_string().into_bytes();
    }
    out["name"] = conf.raw["name"].clone();
    out["cniVersion"] = conf.raw["cniVersion"].clone();
    if let Some(prev) = prev {
        out["prevResult"] = prev.clone();
    }
    let mut rc = serde_json::Map::new();
    for (cap, on) in plugin["capabilities"].as_object().into_iter().flatten() {
        if on.as_bool() == Some(true)
            && let Some(v) = att.capability_args.get(cap)
        {
            rc.insert(cap.clone(), v.clone());
        }
    }
    if !rc.is_empty() {
        out["runtimeConfig"] = Value::Object(rc);
    }
    out.to_string().into_bytes()
}

fn build_stdin_plain(conf: &NetConf, plugin: &Value) -> Vec<u8> {
    let mut out = plugin.clone();
    if out.is_object() {
        out["name"] = conf.raw["name"].clone();
        out["cniVersion"] = conf.raw["cniVersion"].clone();
    }
    out.to_string().into_bytes()
}

/// Whether CNI version `v` is at least `min` (`0.3.1` style; unparsable is old).
pub fn version_at_least(v: &str, min: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(v) >= parse(min)
}

/// Runs `cmd` with `stdin`, killing it after `timeout`; returns its exit status (`None`:
/// killed on timeout), stdout and stderr.
fn run_bounded(
    mut cmd: Command,
    stdin: &[u8],
    timeout: Duration,
) -> std::io::Result<(Option<std::process::ExitStatus>, Vec<u8>, Vec<u8>)> {
    use std::os::unix::process::CommandExt;
    // A group of its own: on timeout the plugin's children (delegates) die with it, and
    // none keeps the output pipes open.
    cmd.process_group(0);
    let mut child = cmd.spawn()?;
    let mut input = child.stdin.take();
    let data = stdin.to_vec();
    // Pipes are read on threads so a chatty plugin never blocks on a full pipe.
    let writer = std::thread::spawn(move || {
        if let Some(w) = input.as_mut() {
            let _ = w.write_all(&data);
        }
    });
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let reader_out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    });
    let reader_err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + super::patient(timeout);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) with a negative pid signals the process group the child
                // leads (created above); it touches no memory.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    let stdout = reader_out.join().unwrap_or_default();
    let stderr = reader_err.join().unwrap_or_default();
    Ok((status, stdout, stderr))
}

fn parse_json(bytes: &[u8], what: &str) -> Result<Value, LabError> {
    serde_json::from_slice(bytes).map_err(|e| LabError::Parse {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// A map of `KEY=VALUE` pairs from `CNI_ARGS` text.
pub fn parse_cni_args(s: &str) -> BTreeMap<String, String> {
    s.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_go() {
        assert_eq!(super::super::base64(b""), "");
        assert_eq!(super::super::base64(b"f"), "Zg==");
        assert_eq!(super::super::base64(b"fo"), "Zm8=");
        assert_eq!(super::super::base64(b"foo"), "Zm9v");
        assert_eq!(super::super::base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("1.0.0", "0.4.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(version_at_least("1.1.0", "1.1.0"));
        assert!(!version_at_least("1.0.0", "1.1.0"));
        assert!(version_at_least("0.10.0", "0.4.0"));
    }

    #[test]
    fn stdin_is_built_as_libcni_builds_it() {
        let conf = NetConf::new(json!({
            "cniVersion": "1.0.0", "name": "net",
            "plugins": [
                {"type": "bridge", "capabilities": {"mac": true, "ips": false}},
                {"type": "tuning"}
            ]
        }));
        let mut att = Attachment {
            container_id: "c1".into(),
            netns: None,
            ifname: "eth0".into(),
            pod: None,
            capability_args: Default::default(),
        };
        att.capability_args
            .insert("mac".into(), json!("02:00:00:00:00:01"));
        att.capability_args
            .insert("ips".into(), json!(["192.0.2.1/24"]));
        att.capability_args.insert("portMappings".into(), json!([]));
        let plugins = conf.plugins();
        let first: Value =
            serde_json::from_slice(&build_stdin(&conf, &plugins[0], None, &att)).unwrap();
        assert_eq!(first["name"], "net");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert_eq!(first["runtimeConfig"], json!({"mac": "02:00:00:00:00:01"}));
        assert!(first.get("prevResult").is_none());
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let second: Value =
            serde_json::from_slice(&build_stdin(&conf, &plugins[1], Some(&prev), &att)).unwrap();
        assert_eq!(second["prevResult"], prev);
        assert!(second.get("runtimeConfig").is_none());
    }

    #[test]
    fn cni_args_carry_the_pod() {
        let att = Attachment {
            container_id: "abc".into(),
            netns: Some("/run/netns/x".into()),
            ifname: "eth0".into(),
            pod: Some(PodIdentity {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u-1".into(),
            }),
            capability_args: Default::default(),
        };
        let text = att
            .cni_args()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        assert_eq!(
            text,
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
        );
        let parsed = parse_cni_args(&text);
        assert_eq!(parsed["K8S_POD_UID"], "u-1");
    }

    #[test]
    fn allocations_are_read_from_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("podnet");
        std::fs::create_dir_all(&net).unwrap();
        std::fs::write(net.join("192.0.2.5"), "cid1\r\neth0").unwrap();
        std::fs::write(net.join("last_reserved_ip.0"), "192.0.2.5").unwrap();
        std::fs::write(net.join("lock"), "").unwrap();
        let all = host_local_allocations(dir.path());
        assert_eq!(
            all,
            vec![Allocation {
                network: "podnet".into(),
                ip: "192.0.2.5".parse().unwrap(),
                container_id: "cid1".into(),
                ifname: "eth0".into(),
            }]
        );
        assert!(host_local_allocations(&dir.path().join("missing")).is_empty());
    }
}
