//! The ordered list of delegates one pod's ADD runs, as Multus builds it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use metalnet::model::NetworkAttachmentDefinition;
use metalnet::model::core::Pod;

use super::config::{MultusConf, check_delegate, is_multus_type, json_type};
use super::networks::{
    AnnotationError, DEFAULT_NETWORK_ANNOTATION, NETWORKS_ANNOTATION, NetworkSelection,
    parse_networks,
};

/// One delegate of a pod's attachment: what to run, on which interface, with which arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Delegate {
    /// Position in the full list (0: the cluster network, then `defaultNetworks`, then the
    /// networks the pod's annotation asks for): `net<index>` is its default interface name.
    pub index: usize,
    /// Whether this is the master (cluster network) delegate, whose result is the ADD's.
    pub master: bool,
    /// The name network-status shows: the configuration's `name` for the master,
    /// `namespace/name` of the NetworkAttachmentDefinition for the others.
    pub status_name: String,
    /// The NetworkAttachmentDefinition it comes from (namespace, name), if any.
    pub nad: Option<(String, String)>,
    /// The interface in the pod: requested, `CNI_IFNAME` for the master, else `net<index>`.
    pub ifname: String,
    /// The delegate's configuration (one plugin, or a conflist with `plugins`), with `name`
    /// and `cniVersion` filled in and `cni-args` merged into `args.cni`.
    pub conf: serde_json::Value,
    /// The capability arguments this delegate declares and gets (`runtimeConfig`).
    pub runtime_config: serde_json::Map<String, serde_json::Value>,
    /// `CNI_ARGS` for this delegate, in order.
    pub cni_args: Vec<(String, String)>,
    /// Gateways asked for by `default-route` (empty: none asked).
    pub default_route: Vec<IpAddr>,
}

/// What the runtime said about the attachment being made.
#[derive(Debug, Clone, Default)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`: the master delegate's interface.
    pub ifname: String,
    /// `CNI_ARGS` as the runtime passed them, in order (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
    /// `K8S_POD_INFRA_CONTAINER_ID`, `K8S_POD_UID`, ...).
    pub cni_args: Vec<(String, String)>,
}

/// Where NetworkAttachmentDefinitions come from (the cluster state's snapshot, a cache).
pub trait Nads {
    fn nad(&self, namespace: &str, name: &str) -> Option<NetworkAttachmentDefinition>;
}

/// No NetworkAttachmentDefinitions at all (no cluster configured).
pub struct NoNads;

impl Nads for NoNads {
    fn nad(&self, _: &str, _: &str) -> Option<NetworkAttachmentDefinition> {
        None
    }
}

impl Nads for [NetworkAttachmentDefinition] {
    fn nad(&self, namespace: &str, name: &str) -> Option<NetworkAttachmentDefinition> {
        self.iter()
            .find(|n| {
                n.metadata.namespace.as_deref() == Some(namespace)
                    && n.metadata.name.as_deref() == Some(name)
            })
            .cloned()
    }
}

impl Nads for Vec<NetworkAttachmentDefinition> {
    fn nad(&self, namespace: &str, name: &str) -> Option<NetworkAttachmentDefinition> {
        self.as_slice().nad(namespace, name)
    }
}

/// Why no delegate list can be made; each names the network and the field.
///
/// CNI codes: a missing network (`NadNotFound`, `NetworkNotFound`) is 11 (try again
/// later): the configuration of the plugin is fine and the object may be created after the
/// pod (the runtime retries the sandbox); a file that cannot be read is 5 (I/O); everything
/// else is something wrong in what the pod, a NetworkAttachmentDefinition or the
/// configuration says: 7 (invalid configuration).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The networks or default-network annotation is malformed.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// `v1.multus-cni.io/default-network` does not name exactly one network.
    #[error(
        "pod annotation {DEFAULT_NETWORK_ANNOTATION}: exactly one default network must be specified ({0})"
    )]
    TooManyDefaultNetworks(String),
    /// More than one gateway per address family in `default-route` over all networks.
    #[error(
        "pod annotation {NETWORKS_ANNOTATION}: field \"default-route\": multus does not support ECMP for default-route (IPv4 gateways: {v4}, IPv6 gateways: {v6}; networks: {networks})"
    )]
    DefaultRouteEcmp {
        v4: usize,
        v6: usize,
        networks: String,
    },
    /// The pod asks for a NetworkAttachmentDefinition that does not exist.
    #[error(
        "network {namespace}/{name}: cannot find a network-attachment-definition ({name}) in namespace ({namespace})"
    )]
    NadNotFound { namespace: String, name: String },
    /// `clusterNetwork` / `defaultNetworks` names nothing: no NetworkAttachmentDefinition in
    /// `multusNamespace`, no configuration of that name in `confDir`, no such file or
    /// directory.
    #[error(
        "network {name:?} ({key}): cannot find network: no network-attachment-definition {namespace}/{name}, no configuration named {name:?} in {conf_dir}, and no such file or directory"
    )]
    NetworkNotFound {
        key: String,
        name: String,
        namespace: String,
        conf_dir: String,
    },
    /// `namespaceIsolation` forbids the reference.
    #[error(
        "network {network}: namespace isolation enabled, annotation violates permission, pod is in namespace {pod_namespace} but refers to target namespace {target}"
    )]
    Isolation {
        network: String,
        pod_namespace: String,
        target: String,
    },
    /// A network's configuration is unusable.
    #[error("network {network}: field {field}: {reason}")]
    Config {
        network: String,
        field: String,
        reason: String,
    },
    /// Two delegates would get the same interface.
    #[error(
        "network {second}: interface {ifname:?} is already used by network {first} (interface names must be unique in the pod)"
    )]
    DuplicateInterface {
        ifname: String,
        first: String,
        second: String,
    },
    /// A configuration file could not be read.
    #[error("network {network}: cannot read {}: {reason}", path.display())]
    Io {
        network: String,
        path: PathBuf,
        reason: String,
    },
    /// Not yet implemented by this build.
    #[error("{0}")]
    Other(String),
}

impl PlanError {
    /// Whether this is Multus's `NoNetworkFound` case (the plugin records a Warning Event of
    /// that reason on the pod, with [`PlanError::to_string`] as its message).
    pub fn is_no_network_found(&self) -> bool {
        matches!(
            self,
            PlanError::NadNotFound { .. } | PlanError::NetworkNotFound { .. }
        )
    }

    /// The CNI error code (see the type's documentation).
    pub fn cni_code(&self) -> u32 {
        use crate::cni::CniError;
        match self {
            PlanError::NadNotFound { .. } | PlanError::NetworkNotFound { .. } => {
                CniError::TRY_AGAIN_LATER
            }
            PlanError::Io { .. } => CniError::IO,
            _ => CniError::INVALID_CONFIG,
        }
    }
}

/// Whether `e` should be reported as a `NoNetworkFound` Event.
pub fn plan_error_is_no_network_found(e: &PlanError) -> bool {
    e.is_no_network_found()
}

impl From<PlanError> for crate::cni::CniError {
    fn from(e: PlanError) -> Self {
        crate::cni::CniError::new(e.cni_code(), e.to_string())
    }
}

/// The capability arguments Multus sets from a network selection.
pub const SELECTION_CAPABILITIES: [&str; 6] = [
    "portMappings",
    "bandwidth",
    "ips",
    "mac",
    "infinibandGUID",
    "deviceID",
];

/// A resolved network before its position is known.
struct Pending {
    master: bool,
    status_name: String,
    nad: Option<(String, String)>,
    conf: Value,
    selection: Option<NetworkSelection>,
}

/// The delegates of `pod`'s attachment in the order ADD runs them: the cluster network (or
/// the pod's `v1.multus-cni.io/default-network`), `defaultNetworks` (not for pods in
/// `systemNamespaces`), then the networks of `k8s.v1.cni.cncf.io/networks`. `pod` is `None`
/// when there is no cluster: only the configuration's own `delegates` (or `clusterNetwork`
/// resolved from files). Reads configuration files in `confDir` (and `clusterNetwork`
/// paths) and nothing else.
pub fn plan(
    conf: &MultusConf,
    pod: Option<&Pod>,
    attachment: &Attachment,
    nads: &dyn Nads,
) -> Result<Vec<Delegate>, PlanError> {
    let pod_namespace = pod
        .and_then(|p| p.metadata.namespace.clone())
        .or_else(|| arg(attachment, "K8S_POD_NAMESPACE").map(str::to_string))
        .unwrap_or_default();

    let mut pending: Vec<Pending> = Vec::new();
    if let Some(cluster) = &conf.cluster_network {
        let mut master = resolve_network(conf, cluster, "clusterNetwork", nads)?;
        master.master = true;
        pending.push(master);
        // As Multus: only for a pod it knows, and not in the system namespaces.
        if pod.is_some() && !conf.system_namespaces.contains(&pod_namespace) {
            for (i, name) in conf.default_networks.iter().enumerate() {
                pending.push(resolve_network(
                    conf,
                    name,
                    &format!("defaultNetworks[{i}]"),
                    nads,
                )?);
            }
        }
    } else {
        for (i, d) in conf.delegates.iter().enumerate() {
            let status_name = conf_name(d).unwrap_or_default();
            let label = if status_name.is_empty() {
                format!("delegates[{i}]")
            } else {
                status_name.clone()
            };
            check_delegate(d).map_err(|reason| PlanError::Config {
                network: label,
                field: format!("delegates[{i}]"),
                reason,
            })?;
            pending.push(Pending {
                master: i == 0,
                status_name,
                nad: None,
                conf: d.clone(),
                selection: None,
            });
        }
    }

    let annotations = pod.and_then(|p| p.metadata.annotations.as_ref());
    if let Some(value) = annotations.and_then(|a| a.get(DEFAULT_NETWORK_ANNOTATION)) {
        let mut nets = parse_networks(DEFAULT_NETWORK_ANNOTATION, value, &conf.multus_namespace)?;
        if nets.len() > 1 {
            let names: Vec<String> = nets.iter().map(NetworkSelection::key).collect();
            return Err(PlanError::TooManyDefaultNetworks(names.join(", ")));
        }
        let Some(sel) = nets.pop() else {
            return Err(PlanError::TooManyDefaultNetworks("none given".into()));
        };
        let mut master = nad_network(conf, sel, nads)?;
        master.master = true;
        if pending.is_empty() {
            pending.push(master);
        } else {
            pending[0] = master;
        }
    }

    if let Some(value) = annotations.and_then(|a| a.get(NETWORKS_ANNOTATION))
        && !value.trim().is_empty()
    {
        for sel in parse_networks(NETWORKS_ANNOTATION, value, &pod_namespace)? {
            if conf.namespace_isolation
                && sel.namespace != pod_namespace
                && !conf.global_namespaces.contains(&sel.namespace)
            {
                return Err(PlanError::Isolation {
                    network: sel.key(),
                    pod_namespace: pod_namespace.clone(),
                    target: sel.namespace.clone(),
                });
            }
            pending.push(nad_network(conf, sel, nads)?);
        }
    }

    let mut out: Vec<Delegate> = Vec::with_capacity(pending.len());
    for (index, p) in pending.into_iter().enumerate() {
        let d = finish(conf, attachment, index, p)?;
        if let Some(first) = out.iter().find(|o| o.ifname == d.ifname) {
            return Err(PlanError::DuplicateInterface {
                ifname: d.ifname.clone(),
                first: first.status_name.clone(),
                second: d.status_name.clone(),
            });
        }
        out.push(d);
    }
    let v4 = out
        .iter()
        .flat_map(|d| &d.default_route)
        .filter(|g| g.is_ipv4())
        .count();
    let v6 = out.iter().map(|d| d.default_route.len()).sum::<usize>() - v4;
    if v4 > 1 || v6 > 1 {
        let networks: Vec<&str> = out
            .iter()
            .filter(|d| !d.default_route.is_empty())
            .map(|d| d.status_name.as_str())
            .collect();
        return Err(PlanError::DefaultRouteEcmp {
            v4,
            v6,
            networks: networks.join(", "),
        });
    }
    Ok(out)
}

fn arg<'a>(attachment: &'a Attachment, key: &str) -> Option<&'a str> {
    attachment
        .cni_args
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `name` of a configuration or conflist.
fn conf_name(conf: &Value) -> Option<String> {
    conf.get("name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A network named in `clusterNetwork` or `defaultNetworks`, resolved as Multus does: a
/// name with a `/` is a path (a directory: its first configuration file; else that file);
/// any other name is a NetworkAttachmentDefinition in `multusNamespace`, else the
/// configuration in `confDir` with that `name`.
fn resolve_network(
    conf: &MultusConf,
    name: &str,
    key: &str,
    nads: &dyn Nads,
) -> Result<Pending, PlanError> {
    let not_found = || PlanError::NetworkNotFound {
        key: key.to_string(),
        name: name.to_string(),
        namespace: conf.multus_namespace.clone(),
        conf_dir: conf.conf_dir.display().to_string(),
    };
    if !name.contains('/') {
        if let Some(nad) = nads.nad(&conf.multus_namespace, name) {
            let sel = NetworkSelection {
                name: name.to_string(),
                namespace: conf.multus_namespace.clone(),
                ..Default::default()
            };
            return nad_pending(conf, sel, &nad);
        }
        return find_conf_in_dir(&conf.conf_dir, Some(name))
            .map(|(_, c)| file_pending(c))
            .ok_or_else(not_found);
    }
    let path = Path::new(name);
    if path.is_dir() {
        return find_conf_in_dir(path, None)
            .map(|(_, c)| file_pending(c))
            .ok_or_else(not_found);
    }
    if !path.is_file() {
        return Err(not_found());
    }
    let text = std::fs::read(path).map_err(|e| PlanError::Io {
        network: name.to_string(),
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let c = load_conf_bytes(&text).map_err(|reason| PlanError::Config {
        network: name.to_string(),
        field: key.to_string(),
        reason: format!("{}: {reason}", path.display()),
    })?;
    Ok(file_pending(c))
}

fn file_pending(c: Value) -> Pending {
    Pending {
        master: false,
        status_name: conf_name(&c).unwrap_or_default(),
        nad: None,
        conf: c,
        selection: None,
    }
}

/// A configuration file's content: one plugin or a conflist.
fn load_conf_bytes(bytes: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    check_delegate(&v)?;
    Ok(v)
}

/// The CNI configuration files of a directory in libcni's order (file names sorted), with
/// Multus's extensions.
pub fn conf_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "conf" | "conflist" | "json"))
        })
        .collect();
    files.sort();
    files
}

/// The first configuration in `dir` whose `name` is `name` (any when `None`); files that
/// cannot be read or parsed are passed over.
fn find_conf_in_dir(dir: &Path, name: Option<&str>) -> Option<(PathBuf, Value)> {
    conf_files(dir).into_iter().find_map(|p| {
        let bytes = std::fs::read(&p).ok()?;
        let c = load_conf_bytes(&bytes).ok()?;
        match name {
            Some(n) if conf_name(&c).as_deref() != Some(n) => None,
            _ => Some((p, c)),
        }
    })
}

/// A network selected by NetworkAttachmentDefinition (the networks or default-network
/// annotation).
fn nad_network(
    conf: &MultusConf,
    sel: NetworkSelection,
    nads: &dyn Nads,
) -> Result<Pending, PlanError> {
    let Some(nad) = nads.nad(&sel.namespace, &sel.name) else {
        return Err(PlanError::NadNotFound {
            namespace: sel.namespace,
            name: sel.name,
        });
    };
    nad_pending(conf, sel, &nad)
}

/// A NetworkAttachmentDefinition's configuration: `spec.config` (one plugin or a conflist,
/// `name` filled with the object's name when missing), or when empty the file in `confDir`
/// whose `name` is the object's name.
pub fn nad_config(nad: &NetworkAttachmentDefinition, conf_dir: &Path) -> Result<Value, PlanError> {
    let name = nad.metadata.name.clone().unwrap_or_default();
    let network = format!(
        "{}/{}",
        nad.metadata.namespace.as_deref().unwrap_or_default(),
        name
    );
    let config = nad.spec.config.trim();
    if config.is_empty() {
        return find_conf_in_dir(conf_dir, Some(&name))
            .map(|(_, c)| c)
            .ok_or_else(|| PlanError::Config {
                network,
                field: "spec.config".into(),
                reason: format!(
                    "is empty and {} has no configuration named {name:?}",
                    conf_dir.display()
                ),
            });
    }
    let mut v = load_conf_bytes(config.as_bytes()).map_err(|reason| PlanError::Config {
        network,
        field: "spec.config".into(),
        reason,
    })?;
    if conf_name(&v).is_none()
        && let Value::Object(o) = &mut v
    {
        o.insert("name".into(), Value::String(name));
    }
    Ok(v)
}

fn nad_pending(
    conf: &MultusConf,
    sel: NetworkSelection,
    nad: &NetworkAttachmentDefinition,
) -> Result<Pending, PlanError> {
    let c = nad_config(nad, &conf.conf_dir)?;
    Ok(Pending {
        master: false,
        status_name: sel.key(),
        nad: Some((sel.namespace.clone(), sel.name.clone())),
        conf: c,
        selection: Some(sel),
    })
}

/// The plugins of a configuration: itself, or each of a conflist's `plugins`.
fn plugins_mut(conf: &mut Value) -> Vec<&mut Map<String, Value>> {
    if conf.get("plugins").is_some() {
        match conf.get_mut("plugins") {
            Some(Value::Array(list)) => list.iter_mut().filter_map(Value::as_object_mut).collect(),
            _ => Vec::new(),
        }
    } else {
        conf.as_object_mut().into_iter().collect()
    }
}

fn plugins(conf: &Value) -> Vec<&Map<String, Value>> {
    match conf.get("plugins") {
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_object).collect(),
        Some(_) => Vec::new(),
        None => conf.as_object().into_iter().collect(),
    }
}

/// The capabilities any plugin of `conf` declares (`"capabilities": {"ips": true}`).
pub fn declared_capabilities(conf: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in plugins(conf) {
        if let Some(Value::Object(caps)) = p.get("capabilities") {
            for (k, v) in caps {
                if v.as_bool() == Some(true) && !out.contains(k) {
                    out.push(k.clone());
                }
            }
        }
    }
    out
}

fn finish(
    conf: &MultusConf,
    attachment: &Attachment,
    index: usize,
    p: Pending,
) -> Result<Delegate, PlanError> {
    let network = if p.status_name.is_empty() {
        format!("delegate {index}")
    } else {
        p.status_name.clone()
    };
    let cfg_err = |field: &str, reason: String| PlanError::Config {
        network: network.clone(),
        field: field.to_string(),
        reason,
    };
    let mut c = p.conf;
    // The meta-plugin cannot delegate to itself, and a `type` is a file name in the plugin
    // directories: never a path out of them.
    for (i, plugin) in plugins(&c).into_iter().enumerate() {
        let t = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let field = if c.get("plugins").is_some() {
            format!("plugins[{i}].type")
        } else {
            "type".into()
        };
        if t.is_empty()
            || t.contains('/')
            || t.contains('\\')
            || t == "."
            || t == ".."
            || t.contains('\0')
        {
            return Err(cfg_err(&field, format!("{t:?} is not a plugin name")));
        }
        if is_multus_type(t) {
            return Err(cfg_err(
                &field,
                format!("{t:?} would call the meta-plugin itself"),
            ));
        }
    }
    if let Value::Object(o) = &mut c
        && o.get("cniVersion")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        o.insert("cniVersion".into(), Value::String(conf.cni_version.clone()));
    }
    let sel = p.selection.unwrap_or_default();
    if let Some(args) = &sel.cni_args {
        for plugin in plugins_mut(&mut c) {
            let entry = plugin
                .entry("args")
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(a) = entry else {
                return Err(cfg_err(
                    "args",
                    format!(
                        "expected an object to merge cni-args into, got {}",
                        json_type(entry)
                    ),
                ));
            };
            let cni = a.entry("cni").or_insert_with(|| Value::Object(Map::new()));
            if !cni.is_object() {
                *cni = Value::Object(Map::new());
            }
            if let Value::Object(cni) = cni {
                for (k, v) in args {
                    cni.insert(k.clone(), v.clone());
                }
            }
        }
    }

    let ifname = match &sel.interface {
        Some(i) => i.clone(),
        None if p.master => attachment.ifname.clone(),
        None => format!("net{index}"),
    };
    // Requested names were checked with the annotation; `CNI_IFNAME` is the runtime's, checked
    // with the rest of the CNI environment.

    let mut rc = conf.runtime_config.clone();
    if !p.master {
        if let Some(v) = &sel.port_mappings {
            rc.insert("portMappings".into(), v.clone());
        }
        if let Some(v) = &sel.bandwidth {
            rc.insert("bandwidth".into(), v.clone());
        }
        if !sel.ips.is_empty() {
            rc.insert("ips".into(), sel.ips.clone().into());
        }
        if let Some(v) = &sel.mac {
            rc.insert("mac".into(), v.clone().into());
        }
        if let Some(v) = &sel.infiniband_guid {
            rc.insert("infinibandGUID".into(), v.clone().into());
        }
        if let Some(v) = &sel.device_id {
            rc.insert("deviceID".into(), v.clone().into());
        }
    }
    let caps = declared_capabilities(&c);
    rc.retain(|k, _| caps.contains(k));

    let pod_arg = |k: &str| arg(attachment, k).unwrap_or_default().to_string();
    let mut cni_args = vec![
        ("IgnoreUnknown".to_string(), "true".to_string()),
        (
            "K8S_POD_NAMESPACE".to_string(),
            pod_arg("K8S_POD_NAMESPACE"),
        ),
        ("K8S_POD_NAME".to_string(), pod_arg("K8S_POD_NAME")),
        (
            "K8S_POD_INFRA_CONTAINER_ID".to_string(),
            pod_arg("K8S_POD_INFRA_CONTAINER_ID"),
        ),
        ("K8S_POD_UID".to_string(), pod_arg("K8S_POD_UID")),
    ];
    cni_args.extend(attachment.cni_args.iter().cloned());
    if let Some(mac) = &sel.mac {
        cni_args.push(("MAC".into(), mac.clone()));
    }
    if !sel.ips.is_empty() {
        cni_args.push(("IP".into(), sel.ips.join(",")));
    }

    Ok(Delegate {
        index,
        master: p.master,
        status_name: p.status_name,
        nad: p.nad,
        ifname,
        conf: c,
        runtime_config: rc,
        cni_args,
        default_route: sel.default_route.unwrap_or_default(),
    })
}

/// `CNI_ARGS` as the delegate receives them (`K=V;K=V`).
pub fn cni_args_string(args: &[(String, String)]) -> String {
    args.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// Parses the runtime's `CNI_ARGS` (`K=V;K=V`) into pairs, in order; pieces without `=`
/// are refused, naming the piece.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for piece in s.split(';') {
        if piece.is_empty() {
            continue;
        }
        let Some((k, v)) = piece.split_once('=') else {
            return Err(format!("CNI_ARGS: {piece:?} is not KEY=VALUE"));
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use metalnet::model::NetworkAttachmentDefinitionSpec;
    use metalnet::model::core::ObjectMeta;
    use serde_json::json;

    use super::*;
    use crate::cni::CniError;

    fn nad(ns: &str, name: &str, config: &str) -> NetworkAttachmentDefinition {
        NetworkAttachmentDefinition {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: NetworkAttachmentDefinitionSpec {
                config: config.into(),
            },
        }
    }

    fn pod(ns: &str, annotations: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some("p1".into()),
                uid: Some("uid-1".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn attachment(ns: &str) -> Attachment {
        Attachment {
            container_id: "cid".into(),
            ifname: "eth0".into(),
            cni_args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), ns.into()),
                ("K8S_POD_NAME".into(), "p1".into()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), "cid".into()),
                ("K8S_POD_UID".into(), "uid-1".into()),
            ],
        }
    }

    fn conf(text: serde_json::Value) -> MultusConf {
        MultusConf::parse(text.to_string().as_bytes()).unwrap()
    }

    fn inline_conf() -> MultusConf {
        conf(
            json!({"cniVersion":"1.0.0","name":"multus-cni-network","type":"multus",
            "delegates":[{"cniVersion":"1.0.0","name":"podnet","type":"bridge",
                "capabilities":{"portMappings":true}}],
            "runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"tcp"}],"other":1}}),
        )
    }

    fn nads() -> Vec<NetworkAttachmentDefinition> {
        vec![
            nad(
                "default",
                "mv1",
                r#"{"cniVersion":"1.0.0","type":"macvlan","master":"eth1","capabilities":{"ips":true,"mac":true}}"#,
            ),
            nad(
                "default",
                "br2",
                r#"{"cniVersion":"0.4.0","plugins":[{"type":"bridge"},{"type":"tuning","capabilities":{"mac":true}}]}"#,
            ),
            nad(
                "default",
                "noversion",
                r#"{"type":"ptp","args":{"cni":{"keep":1}}}"#,
            ),
            nad(
                "kube-system",
                "altnet",
                r#"{"cniVersion":"1.0.0","name":"altnet","type":"ptp"}"#,
            ),
            nad("other", "far", r#"{"type":"ptp"}"#),
        ]
    }

    #[test]
    fn observed_naming_master_then_position_in_full_list() {
        let p = pod(
            "default",
            &[(
                NETWORKS_ANNOTATION,
                r#"[{"name":"mv1","interface":"mv0"},{"name":"br2"}]"#,
            )],
        );
        let d = plan(&inline_conf(), Some(&p), &attachment("default"), &nads()).unwrap();
        let names: Vec<(&str, &str, bool)> = d
            .iter()
            .map(|d| (d.status_name.as_str(), d.ifname.as_str(), d.master))
            .collect();
        assert_eq!(
            names,
            vec![
                ("podnet", "eth0", true),
                ("default/mv1", "mv0", false),
                ("default/br2", "net2", false)
            ]
        );
        assert_eq!(d.iter().map(|d| d.index).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(d[1].nad, Some(("default".into(), "mv1".into())));
        assert_eq!(d[0].nad, None);
        // A conflist NAD gets its name and keeps its version.
        assert_eq!(d[2].conf["name"], "br2");
        assert_eq!(d[2].conf["cniVersion"], "0.4.0");
    }

    #[test]
    fn cni_args_exactly_as_multus_builds_them() {
        let p = pod(
            "default",
            &[(
                NETWORKS_ANNOTATION,
                r#"[{"name":"mv1","ips":["192.0.2.5/24","192.0.2.6/24"],"mac":"02:00:00:00:00:01"}]"#,
            )],
        );
        let d = plan(&inline_conf(), Some(&p), &attachment("default"), &nads()).unwrap();
        assert_eq!(
            cni_args_string(&d[0].cni_args),
            "IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p1;K8S_POD_INFRA_CONTAINER_ID=cid;K8S_POD_UID=uid-1;IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p1;K8S_POD_INFRA_CONTAINER_ID=cid;K8S_POD_UID=uid-1"
        );
        assert!(
            cni_args_string(&d[1].cni_args)
                .ends_with(";MAC=02:00:00:00:00:01;IP=192.0.2.5/24,192.0.2.6/24")
        );
    }

    #[test]
    fn capability_arguments_only_where_declared() {
        let p = pod(
            "default",
            &[(
                NETWORKS_ANNOTATION,
                r#"[{"name":"mv1","ips":["192.0.2.5/24"],"mac":"02:00:00:00:00:01","portMappings":[{"hostPort":1,"containerPort":1}]},
            {"name":"br2","mac":"02:00:00:00:00:02","bandwidth":{"ingressRate":1}},{"name":"noversion","ips":["192.0.2.9"]}]"#,
            )],
        );
        let d = plan(&inline_conf(), Some(&p), &attachment("default"), &nads()).unwrap();
        // The master gets the runtime's runtimeConfig, filtered by its capabilities.
        assert_eq!(
            Value::Object(d[0].runtime_config.clone()),
            json!({"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"tcp"}]})
        );
        assert_eq!(
            Value::Object(d[1].runtime_config.clone()),
            json!({"ips":["192.0.2.5/24"],"mac":"02:00:00:00:00:01"})
        );
        // A conflist: the union of its plugins' capabilities.
        assert_eq!(
            Value::Object(d[2].runtime_config.clone()),
            json!({"mac":"02:00:00:00:00:02"})
        );
        assert!(d[3].runtime_config.is_empty());
    }

    #[test]
    fn cni_args_merged_and_version_filled() {
        let p = pod(
            "default",
            &[(
                NETWORKS_ANNOTATION,
                r#"[{"name":"noversion","cni-args":{"a":"b"}},{"name":"br2","cni-args":{"x":1}}]"#,
            )],
        );
        let d = plan(&inline_conf(), Some(&p), &attachment("default"), &nads()).unwrap();
        assert_eq!(d[1].conf["cniVersion"], "1.0.0");
        assert_eq!(d[1].conf["name"], "noversion");
        assert_eq!(d[1].conf["args"], json!({"cni":{"keep":1,"a":"b"}}));
        for plugin in d[2].conf["plugins"].as_array().unwrap() {
            assert_eq!(plugin["args"], json!({"cni":{"x":1}}));
        }
    }

    #[test]
    fn comma_form_and_requested_names() {
        let p = pod("default", &[(NETWORKS_ANNOTATION, "mv1@net7, default/br2")]);
        let d = plan(&inline_conf(), Some(&p), &attachment("default"), &nads()).unwrap();
        assert_eq!(d[1].ifname, "net7");
        assert_eq!(d[2].ifname, "net2");
    }

    #[test]
    fn duplicate_interfaces_refused() {
        let p = pod("default", &[(NETWORKS_ANNOTATION, "mv1@net2,br2")]);
        let e = plan(&inline_conf(), Some(&p), &attachment("default"), &nads()).unwrap_err();
        assert!(
            matches!(e, PlanError::DuplicateInterface { ref ifname, .. } if ifname == "net2"),
            "{e}"
        );
        assert!(e.to_string().contains("default/br2") && e.to_string().contains("default/mv1"));
        let p = pod("default", &[(NETWORKS_ANNOTATION, "mv1@eth0")]);
        assert!(plan(&inline_conf(), Some(&p), &attachment("default"), &nads()).is_err());
    }

    #[test]
    fn missing_nad_is_no_network_found_and_try_again() {
        let p = pod("default", &[(NETWORKS_ANNOTATION, "nope")]);
        let e = plan(&inline_conf(), Some(&p), &attachment("default"), &nads()).unwrap_err();
        assert!(e.is_no_network_found() && plan_error_is_no_network_found(&e));
        assert!(e.to_string().contains("default/nope"), "{e}");
        assert_eq!(CniError::from(e).code, CniError::TRY_AGAIN_LATER);
        // A malformed annotation is a configuration error naming the annotation.
        let p = pod("default", &[(NETWORKS_ANNOTATION, "Bad")]);
        let e = plan(&inline_conf(), Some(&p), &attachment("default"), &nads()).unwrap_err();
        assert!(!e.is_no_network_found());
        assert!(e.to_string().contains(NETWORKS_ANNOTATION));
        assert_eq!(CniError::from(e).code, CniError::INVALID_CONFIG);
    }

    #[test]
    fn namespace_isolation() {
        let mut c = inline_conf();
        c.namespace_isolation = true;
        let p = pod("default", &[(NETWORKS_ANNOTATION, "other/far")]);
        let e = plan(&c, Some(&p), &attachment("default"), &nads()).unwrap_err();
        assert!(matches!(e, PlanError::Isolation { .. }), "{e}");
        assert!(e.to_string().contains("other/far"));
        // The global namespace is allowed from anywhere; the pod's own namespace too.
        let p = pod("other", &[(NETWORKS_ANNOTATION, "default/mv1,far")]);
        assert_eq!(
            plan(&c, Some(&p), &attachment("other"), &nads())
                .unwrap()
                .len(),
            3
        );
        c.namespace_isolation = false;
        let p = pod("default", &[(NETWORKS_ANNOTATION, "other/far")]);
        assert!(plan(&c, Some(&p), &attachment("default"), &nads()).is_ok());
    }

    #[test]
    fn default_network_annotation_replaces_the_master() {
        let p = pod(
            "default",
            &[
                (DEFAULT_NETWORK_ANNOTATION, "altnet"),
                (NETWORKS_ANNOTATION, "mv1"),
            ],
        );
        let d = plan(&inline_conf(), Some(&p), &attachment("default"), &nads()).unwrap();
        assert_eq!(d[0].status_name, "kube-system/altnet");
        assert!(d[0].master);
        assert_eq!(d[0].ifname, "eth0");
        assert_eq!(d[1].ifname, "net1");
        for v in ["altnet,mv1", "[]"] {
            let p = pod("default", &[(DEFAULT_NETWORK_ANNOTATION, v)]);
            let e = plan(&inline_conf(), Some(&p), &attachment("default"), &nads()).unwrap_err();
            assert!(
                matches!(e, PlanError::TooManyDefaultNetworks(_)),
                "{v}: {e}"
            );
            assert!(e.to_string().contains(DEFAULT_NETWORK_ANNOTATION));
        }
        // Its NAD must exist.
        let p = pod("default", &[(DEFAULT_NETWORK_ANNOTATION, "nope")]);
        let e = plan(&inline_conf(), Some(&p), &attachment("default"), &nads()).unwrap_err();
        assert!(
            e.is_no_network_found() && e.to_string().contains("kube-system/nope"),
            "{e}"
        );
    }

    #[test]
    fn default_route_one_gateway_per_family_over_all_networks() {
        let ok = r#"[{"name":"mv1","default-route":["192.0.2.1"]},{"name":"br2","default-route":["2001:db8::1"]}]"#;
        let p = pod("default", &[(NETWORKS_ANNOTATION, ok)]);
        let d = plan(&inline_conf(), Some(&p), &attachment("default"), &nads()).unwrap();
        assert_eq!(
            d[1].default_route,
            vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        assert!(d[0].default_route.is_empty());
        let bad = r#"[{"name":"mv1","default-route":["192.0.2.1"]},{"name":"br2","default-route":["198.51.100.1"]}]"#;
        let p = pod("default", &[(NETWORKS_ANNOTATION, bad)]);
        let e = plan(&inline_conf(), Some(&p), &attachment("default"), &nads()).unwrap_err();
        assert!(
            matches!(e, PlanError::DefaultRouteEcmp { v4: 2, v6: 0, .. }),
            "{e}"
        );
        let msg = e.to_string();
        assert!(msg.contains("multus does not support ECMP for default-route"));
        assert!(
            msg.contains("default/mv1") && msg.contains("default/br2"),
            "{msg}"
        );
        assert_eq!(CniError::from(e).code, CniError::INVALID_CONFIG);
    }

    #[test]
    fn cluster_network_resolution_order_and_default_networks() {
        let dir = tempfile::tempdir().unwrap();
        let confdir = dir.path().join("net.d");
        std::fs::create_dir(&confdir).unwrap();
        std::fs::write(
            confdir.join("10-a.conf"),
            r#"{"cniVersion":"0.3.1","name":"fromdir","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(
            confdir.join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"altnet","plugins":[{"type":"ptp"}]}"#,
        )
        .unwrap();
        std::fs::write(confdir.join("05-broken.conf"), "{").unwrap();
        let single = dir.path().join("single.conflist");
        std::fs::write(
            &single,
            r#"{"cniVersion":"1.0.0","name":"filenet","plugins":[{"type":"ptp"}]}"#,
        )
        .unwrap();
        let mk = |cluster: &str| {
            conf(
                json!({"cniVersion":"1.0.0","type":"multus","clusterNetwork":cluster,
                "defaultNetworks":["fromdir"],"confDir":confdir}),
            )
        };
        let a = attachment("default");
        let p = pod("default", &[]);
        // A NAD in multusNamespace wins over the file of the same name.
        let d = plan(&mk("altnet"), Some(&p), &a, &nads()).unwrap();
        assert_eq!(d[0].status_name, "kube-system/altnet");
        assert_eq!(d[1].status_name, "fromdir");
        assert_eq!(d[1].ifname, "net1");
        // Without the NAD: the configuration of that name in confDir.
        let d = plan(&mk("altnet"), Some(&p), &a, &NoNads).unwrap();
        assert_eq!(d[0].status_name, "altnet");
        assert!(d[0].conf.get("plugins").is_some());
        // A directory: its first readable configuration; a file: that file.
        let d = plan(&mk(confdir.to_str().unwrap()), Some(&p), &a, &NoNads).unwrap();
        assert_eq!(d[0].status_name, "fromdir");
        let d = plan(&mk(single.to_str().unwrap()), None, &a, &NoNads).unwrap();
        assert_eq!(d[0].status_name, "filenet");
        // Without a pod, no defaultNetworks (as Multus, which only adds them for a pod).
        assert_eq!(d.len(), 1);
        // A path that does not exist, and a name that is only a file name elsewhere.
        let gone = dir.path().join("gone.conf");
        let e = plan(&mk(gone.to_str().unwrap()), Some(&p), &a, &NoNads).unwrap_err();
        assert!(e.is_no_network_found(), "{e}");
        let e = plan(&mk("single.conflist"), Some(&p), &a, &NoNads).unwrap_err();
        assert!(e.is_no_network_found(), "{e}");
        // A broken file named by path is a configuration error naming the key.
        let broken = confdir.join("05-broken.conf");
        let e = plan(&mk(broken.to_str().unwrap()), Some(&p), &a, &NoNads).unwrap_err();
        assert!(
            matches!(e, PlanError::Config { ref field, .. } if field == "clusterNetwork"),
            "{e}"
        );
        // defaultNetworks are skipped for pods in systemNamespaces.
        let sys = pod("kube-system", &[]);
        let d = plan(
            &mk("altnet"),
            Some(&sys),
            &attachment("kube-system"),
            &NoNads,
        )
        .unwrap();
        assert_eq!(d.len(), 1);
        // Nothing of that name anywhere.
        let e = plan(&mk("missing"), Some(&p), &a, &NoNads).unwrap_err();
        assert!(e.is_no_network_found(), "{e}");
        assert!(e.to_string().contains("clusterNetwork"));
        let mut c = mk("altnet");
        c.default_networks = vec!["gone".into()];
        let e = plan(&c, Some(&p), &a, &NoNads).unwrap_err();
        assert!(e.to_string().contains("defaultNetworks[0]"), "{e}");
    }

    #[test]
    fn nad_configs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("x.conf"),
            r#"{"name":"fromfile","type":"ptp"}"#,
        )
        .unwrap();
        let v = nad_config(&nad("default", "fromfile", ""), dir.path()).unwrap();
        assert_eq!(v["type"], "ptp");
        let e = nad_config(&nad("default", "nofile", "  "), dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("default/nofile") && e.to_string().contains("spec.config"),
            "{e}"
        );
        for bad in [
            "{",
            "[]",
            r#"{"name":"x"}"#,
            r#"{"plugins":[]}"#,
            r#"{"plugins":[{"name":"a"}]}"#,
        ] {
            let e = nad_config(&nad("default", "bad", bad), dir.path()).unwrap_err();
            assert!(
                e.to_string().contains("default/bad") && e.to_string().contains("spec.config"),
                "{bad}: {e}"
            );
            assert_eq!(CniError::from(e).code, 7);
        }
        // A name already given is kept.
        let v = nad_config(
            &nad("default", "n", r#"{"name":"given","type":"ptp"}"#),
            dir.path(),
        )
        .unwrap();
        assert_eq!(v["name"], "given");
    }

    #[test]
    fn plugin_types_cannot_escape_or_recurse() {
        for t in ["../../bin/sh", "/bin/sh", "multus", "multus-shim", ".."] {
            let list = vec![nad("default", "evil", &json!({"type": t}).to_string())];
            let p = pod("default", &[(NETWORKS_ANNOTATION, "evil")]);
            let e = plan(&inline_conf(), Some(&p), &attachment("default"), &list).unwrap_err();
            assert!(
                e.to_string().contains("default/evil") && e.to_string().contains("type"),
                "{t}: {e}"
            );
        }
    }

    #[test]
    fn without_pod_only_inline_delegates() {
        let c = conf(
            json!({"cniVersion":"0.4.0","type":"multus","delegates":[{"name":"a","type":"bridge"},{"name":"b","type":"ptp"}]}),
        );
        let d = plan(&c, None, &attachment("default"), &NoNads).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].ifname.as_str(), d[1].ifname.as_str()),
            ("eth0", "net1")
        );
        assert_eq!(d[1].conf["cniVersion"], "0.4.0");
        assert!(d[0].master && !d[1].master);
    }

    #[test]
    fn cni_args_parsing() {
        assert_eq!(
            parse_cni_args("A=1;B=x=y;;").unwrap(),
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "x=y".to_string())
            ]
        );
        assert!(parse_cni_args("A").is_err());
    }
}
