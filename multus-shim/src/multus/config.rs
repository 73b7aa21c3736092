//! Multus's own configuration (`00-multus.conf` / `.conflist`, the configuration on stdin),
//! with Multus's key names and defaults.

use std::path::PathBuf;

use serde_json::{Map, Value};

/// The meta-plugin's configuration as Multus reads it. Defaults are Multus's.
#[derive(Debug, Clone, PartialEq)]
pub struct MultusConf {
    /// `cniVersion`: results are printed in this version.
    pub cni_version: String,
    /// `name`.
    pub name: String,
    /// `delegates`: inline delegate configurations, the first the cluster network
    /// (ignored when `clusterNetwork` is set).
    pub delegates: Vec<serde_json::Value>,
    /// `clusterNetwork`: a NetworkAttachmentDefinition name, a configuration's `name` in
    /// `confDir`, a directory, or a file path.
    pub cluster_network: Option<String>,
    /// `defaultNetworks`: attached to every pod outside `systemNamespaces`.
    pub default_networks: Vec<String>,
    /// `confDir` (default `/etc/cni/multus/net.d`).
    pub conf_dir: PathBuf,
    /// `cniDir`: the delegate and result caches (default `/var/lib/cni/multus`).
    pub cni_dir: PathBuf,
    /// `binDir`: searched for delegate binaries before `CNI_PATH` (default `/opt/cni/bin`).
    pub bin_dir: Vec<PathBuf>,
    /// `kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `stateDir` (metalnet's): the embedded default's state directory (else
    /// `METALNET_STATE_DIR`).
    pub state_dir: Option<PathBuf>,
    /// `namespaceIsolation`.
    pub namespace_isolation: bool,
    /// `globalNamespaces` (default `["default"]`, as the comma string Multus reads).
    pub global_namespaces: Vec<String>,
    /// `systemNamespaces` (default `["kube-system"]`).
    pub system_namespaces: Vec<String>,
    /// `multusNamespace` (default `kube-system`).
    pub multus_namespace: String,
    /// `readinessindicatorfile`.
    pub readiness_indicator_file: Option<PathBuf>,
    /// `retryDeleteOnError`.
    pub retry_delete_on_error: bool,
    /// `daemonSocketDir` (thick mode: the shim forwards to `<dir>/multus.sock`).
    pub daemon_socket_dir: Option<PathBuf>,
    /// `logFile`, `logLevel`, `logToStderr`.
    pub log_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_to_stderr: bool,
    /// `runtimeConfig` the runtime passed (capability arguments for the cluster network).
    pub runtime_config: serde_json::Map<String, serde_json::Value>,
    /// The configuration as received, for what the above does not cover.
    pub raw: serde_json::Value,
}

/// Multus's defaults.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/multus/net.d";
pub const DEFAULT_CNI_DIR: &str = "/var/lib/cni/multus";
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
pub const DEFAULT_MULTUS_NAMESPACE: &str = "kube-system";
/// The CNI version a configuration without `cniVersion` is read as (the spec's rule).
pub const DEFAULT_CNI_VERSION: &str = "0.1.0";

/// Why the configuration on stdin cannot be used; each names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfError {
    /// Not JSON (CNI code 6).
    #[error("multus configuration: not valid JSON: {0}")]
    Decode(String),
    /// A key with a wrong type or value (CNI code 7).
    #[error("multus configuration: key {key:?}: {reason}")]
    Key { key: String, reason: String },
    /// Something wrong with the configuration as a whole (CNI code 7).
    #[error("multus configuration: {0}")]
    Invalid(String),
}

impl From<ConfError> for crate::cni::CniError {
    fn from(e: ConfError) -> Self {
        use crate::cni::CniError;
        let code = match e {
            ConfError::Decode(_) => CniError::DECODE,
            ConfError::Key { .. } | ConfError::Invalid(_) => CniError::INVALID_CONFIG,
        };
        CniError::new(code, e.to_string())
    }
}

fn key_err(key: &str, reason: impl Into<String>) -> ConfError {
    ConfError::Key {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The JSON type of a value, for messages.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

struct Keys<'a> {
    obj: &'a Map<String, Value>,
}

impl<'a> Keys<'a> {
    /// A key's value; `null` counts as absent, as Go's decoder treats it.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<Option<String>, ConfError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(key_err(
                key,
                format!("expected a string, got {}", json_type(v)),
            )),
        }
    }

    /// A non-empty string (Multus treats an empty one as unset).
    fn nonempty(&self, key: &str) -> Result<Option<String>, ConfError> {
        Ok(self.string(key)?.filter(|s| !s.is_empty()))
    }

    fn path(&self, key: &str) -> Result<Option<PathBuf>, ConfError> {
        Ok(self.nonempty(key)?.map(PathBuf::from))
    }

    fn boolean(&self, key: &str) -> Result<bool, ConfError> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(key_err(
                key,
                format!("expected true or false, got {}", json_type(v)),
            )),
        }
    }

    /// A list of names given either as Multus's comma string (`"a, b"`) or as a JSON list.
    fn names(&self, key: &str) -> Result<Option<Vec<String>>, ConfError> {
        let items: Vec<String> = match self.get(key) {
            None => return Ok(None),
            Some(Value::String(s)) => {
                if s.trim().is_empty() {
                    return Ok(None);
                }
                s.split(',').map(|p| p.trim().to_string()).collect()
            }
            Some(Value::Array(list)) => {
                let mut out = Vec::with_capacity(list.len());
                for (i, item) in list.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.trim().to_string()),
                        v => {
                            return Err(key_err(
                                key,
                                format!("item {i}: expected a string, got {}", json_type(v)),
                            ));
                        }
                    }
                }
                out
            }
            Some(v) => {
                return Err(key_err(
                    key,
                    format!(
                        "expected a comma-separated string or a list of strings, got {}",
                        json_type(v)
                    ),
                ));
            }
        };
        Ok(Some(items.into_iter().filter(|s| !s.is_empty()).collect()))
    }
}

/// Whether a plugin `type` is this meta-plugin (thin `multus` or thick `multus-shim`).
pub fn is_multus_type(t: &str) -> bool {
    t == "multus" || t == "multus-shim"
}

impl MultusConf {
    /// Reads the configuration the runtime passed on stdin: a single configuration, or a
    /// conflist one of whose plugins is `multus`/`multus-shim` (its `name` and `cniVersion`
    /// are the list's, as libcni would have passed them).
    pub fn parse(stdin: &[u8]) -> Result<MultusConf, ConfError> {
        let raw: Value =
            serde_json::from_slice(stdin).map_err(|e| ConfError::Decode(e.to_string()))?;
        let Value::Object(top) = &raw else {
            return Err(ConfError::Invalid(format!(
                "expected a JSON object, got {}",
                json_type(&raw)
            )));
        };
        let obj = match top.get("plugins") {
            None | Some(Value::Null) => top.clone(),
            Some(Value::Array(plugins)) => {
                let mut found = None;
                for (i, p) in plugins.iter().enumerate() {
                    let Value::Object(p) = p else {
                        return Err(key_err(
                            "plugins",
                            format!("item {i}: expected an object, got {}", json_type(p)),
                        ));
                    };
                    if p.get("type")
                        .and_then(Value::as_str)
                        .is_some_and(is_multus_type)
                    {
                        found = Some(p.clone());
                        break;
                    }
                }
                let mut p = found.ok_or_else(|| {
                    key_err("plugins", "no plugin of type \"multus\" or \"multus-shim\"")
                })?;
                for key in ["name", "cniVersion"] {
                    if let Some(v) = top.get(key) {
                        p.insert(key.to_string(), v.clone());
                    }
                }
                p
            }
            Some(v) => {
                return Err(key_err(
                    "plugins",
                    format!("expected a list, got {}", json_type(v)),
                ));
            }
        };
        let k = Keys { obj: &obj };

        let delegates = match k.get("delegates") {
            None => Vec::new(),
            Some(Value::Array(list)) => {
                for (i, d) in list.iter().enumerate() {
                    check_delegate(d)
                        .map_err(|reason| key_err("delegates", format!("item {i}: {reason}")))?;
                }
                list.clone()
            }
            Some(v) => {
                return Err(key_err(
                    "delegates",
                    format!("expected a list, got {}", json_type(v)),
                ));
            }
        };
        let cluster_network = k.nonempty("clusterNetwork")?;
        if cluster_network.is_none() && delegates.is_empty() {
            return Err(ConfError::Invalid(
                "at least one delegate/clusterNetwork must be specified: \"delegates\" and \"clusterNetwork\" are both missing or empty".into(),
            ));
        }
        let default_networks = match k.get("defaultNetworks") {
            None => Vec::new(),
            Some(Value::Array(list)) => {
                let mut out = Vec::with_capacity(list.len());
                for (i, item) in list.iter().enumerate() {
                    match item {
                        Value::String(s) if !s.is_empty() => out.push(s.clone()),
                        v => {
                            return Err(key_err(
                                "defaultNetworks",
                                format!("item {i}: expected a network name, got {}", json_type(v)),
                            ));
                        }
                    }
                }
                out
            }
            Some(v) => {
                return Err(key_err(
                    "defaultNetworks",
                    format!("expected a list of names, got {}", json_type(v)),
                ));
            }
        };
        let bin_dir = match k.get("binDir") {
            None => vec![PathBuf::from(DEFAULT_BIN_DIR)],
            Some(Value::String(s)) if s.is_empty() => vec![PathBuf::from(DEFAULT_BIN_DIR)],
            // One directory, as Multus reads it; a `:`-separated list as CNI_PATH is also taken.
            Some(Value::String(s)) => s
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
            Some(Value::Array(_)) => k
                .names("binDir")?
                .unwrap_or_default()
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            Some(v) => {
                return Err(key_err(
                    "binDir",
                    format!("expected a directory (string), got {}", json_type(v)),
                ));
            }
        };
        let runtime_config = match k.get("runtimeConfig") {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(v) => {
                return Err(key_err(
                    "runtimeConfig",
                    format!("expected an object, got {}", json_type(v)),
                ));
            }
        };
        let multus_namespace = k
            .nonempty("multusNamespace")?
            .unwrap_or_else(|| DEFAULT_MULTUS_NAMESPACE.to_string());
        if !is_dns_label(&multus_namespace) {
            return Err(key_err(
                "multusNamespace",
                format!("{multus_namespace:?} is not a valid namespace name"),
            ));
        }
        let cni_version = k
            .nonempty("cniVersion")?
            .unwrap_or_else(|| DEFAULT_CNI_VERSION.to_string());
        if !is_version(&cni_version) {
            return Err(key_err(
                "cniVersion",
                format!("{cni_version:?} is not a version (expected like \"1.0.0\")"),
            ));
        }
        Ok(MultusConf {
            cni_version,
            name: k.string("name")?.unwrap_or_default(),
            delegates,
            cluster_network,
            default_networks,
            conf_dir: k
                .path("confDir")?
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONF_DIR)),
            cni_dir: k
                .path("cniDir")?
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CNI_DIR)),
            bin_dir,
            kubeconfig: k.path("kubeconfig")?,
            state_dir: k.path("stateDir")?,
            namespace_isolation: k.boolean("namespaceIsolation")?,
            global_namespaces: k
                .names("globalNamespaces")?
                .unwrap_or_else(|| vec!["default".to_string()]),
            system_namespaces: k
                .names("systemNamespaces")?
                .unwrap_or_else(|| vec!["kube-system".to_string()]),
            multus_namespace,
            readiness_indicator_file: k.path("readinessindicatorfile")?,
            retry_delete_on_error: k.boolean("retryDeleteOnError")?,
            daemon_socket_dir: k.path("daemonSocketDir")?,
            log_file: k.path("logFile")?,
            log_level: k.nonempty("logLevel")?,
            // Multus logs to stderr unless told not to.
            log_to_stderr: match k.get("logToStderr") {
                None => true,
                Some(_) => k.boolean("logToStderr")?,
            },
            runtime_config,
            raw,
        })
    }

    /// Whether the configuration asks for the thick plugin (`type: multus-shim`, which
    /// forwards to the daemon's socket).
    pub fn is_thick(&self) -> bool {
        self.raw_type() == Some("multus-shim")
    }

    /// `<daemonSocketDir>/multus.sock` (default `/run/multus/multus.sock`).
    pub fn daemon_socket(&self) -> PathBuf {
        self.daemon_socket_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/run/multus"))
            .join("multus.sock")
    }

    fn raw_type(&self) -> Option<&str> {
        if let Some(t) = self.raw.get("type").and_then(Value::as_str) {
            return Some(t);
        }
        self.raw
            .get("plugins")?
            .as_array()?
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str))
            .find(|t| is_multus_type(t))
    }
}

/// A delegate configuration must be one plugin (`type`) or a conflist (`plugins`, the
/// first with a `type`).
pub(crate) fn check_delegate(d: &Value) -> Result<(), String> {
    let Value::Object(o) = d else {
        return Err(format!(
            "expected a CNI configuration object, got {}",
            json_type(d)
        ));
    };
    if let Some(plugins) = o.get("plugins") {
        let Value::Array(list) = plugins else {
            return Err(format!(
                "\"plugins\": expected a list, got {}",
                json_type(plugins)
            ));
        };
        if list.is_empty() {
            return Err("\"plugins\" is empty".into());
        }
        for (i, p) in list.iter().enumerate() {
            match p.get("type") {
                Some(Value::String(t)) if !t.is_empty() => {}
                _ => return Err(format!("plugins[{i}]: \"type\" missing or not a string")),
            }
        }
        return Ok(());
    }
    match o.get("type") {
        Some(Value::String(t)) if !t.is_empty() => Ok(()),
        Some(v) => Err(format!(
            "\"type\": expected a plugin name, got {}",
            json_type(v)
        )),
        None => Err("neither \"type\" nor \"plugins\"".into()),
    }
}

/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$` (DNS-1123 label, without the length limit, as Multus).
pub(crate) fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && alnum(&b[0])
        && alnum(&b[b.len() - 1])
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

/// `MAJOR.MINOR.PATCH` (digits).
pub(crate) fn is_version(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

/// Compares two `MAJOR.MINOR.PATCH` versions (anything else counts as 0.0.0).
pub(crate) fn version_at_least(v: &str, min: (u64, u64, u64)) -> bool {
    let mut it = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let t = (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    );
    t >= min
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::CniError;

    #[test]
    fn defaults_are_multus() {
        let c = MultusConf::parse(br#"{"cniVersion":"0.3.1","name":"multus-cni-network","type":"multus","delegates":[{"type":"bridge","name":"podnet"}]}"#).unwrap();
        assert_eq!(c.cni_version, "0.3.1");
        assert_eq!(c.name, "multus-cni-network");
        assert_eq!(c.conf_dir, PathBuf::from("/etc/cni/multus/net.d"));
        assert_eq!(c.cni_dir, PathBuf::from("/var/lib/cni/multus"));
        assert_eq!(c.bin_dir, vec![PathBuf::from("/opt/cni/bin")]);
        assert_eq!(c.global_namespaces, vec!["default"]);
        assert_eq!(c.system_namespaces, vec!["kube-system"]);
        assert_eq!(c.multus_namespace, "kube-system");
        assert!(!c.namespace_isolation && !c.retry_delete_on_error && c.log_to_stderr);
        assert_eq!(c.cluster_network, None);
        assert_eq!(c.delegates.len(), 1);
        assert!(!c.is_thick());
        assert_eq!(c.daemon_socket(), PathBuf::from("/run/multus/multus.sock"));
    }

    #[test]
    fn every_key_is_read() {
        let c = MultusConf::parse(
            br#"{"cniVersion":"1.0.0","name":"m","type":"multus-shim","clusterNetwork":"podnet",
            "defaultNetworks":["a","b"],"confDir":"/c","cniDir":"/d","binDir":"/b","kubeconfig":"/k",
            "stateDir":"/s","namespaceIsolation":true,"globalNamespaces":"default, shared ,",
            "systemNamespaces":["kube-system","infra"],"multusNamespace":"multus",
            "readinessindicatorfile":"/r","retryDeleteOnError":true,"daemonSocketDir":"/run/x",
            "logFile":"/l","logLevel":"debug","logToStderr":true,"runtimeConfig":{"portMappings":[]}}"#,
        )
        .unwrap();
        assert_eq!(c.cluster_network.as_deref(), Some("podnet"));
        assert_eq!(c.default_networks, vec!["a", "b"]);
        assert_eq!(c.conf_dir, PathBuf::from("/c"));
        assert_eq!(c.cni_dir, PathBuf::from("/d"));
        assert_eq!(c.bin_dir, vec![PathBuf::from("/b")]);
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(c.state_dir, Some(PathBuf::from("/s")));
        assert!(c.namespace_isolation && c.retry_delete_on_error && c.log_to_stderr);
        assert_eq!(c.global_namespaces, vec!["default", "shared"]);
        assert_eq!(c.system_namespaces, vec!["kube-system", "infra"]);
        assert_eq!(c.multus_namespace, "multus");
        assert_eq!(c.readiness_indicator_file, Some(PathBuf::from("/r")));
        assert_eq!(c.log_file, Some(PathBuf::from("/l")));
        assert_eq!(c.log_level.as_deref(), Some("debug"));
        assert!(c.runtime_config.contains_key("portMappings"));
        assert!(c.is_thick());
        assert_eq!(c.daemon_socket(), PathBuf::from("/run/x/multus.sock"));
        // The other spellings of the namespace lists.
        let c = MultusConf::parse(
            br#"{"clusterNetwork":"x","globalNamespaces":["a"],"systemNamespaces":"p,q"}"#,
        )
        .unwrap();
        assert_eq!(c.global_namespaces, vec!["a"]);
        assert_eq!(c.system_namespaces, vec!["p", "q"]);
        assert_eq!(c.cni_version, DEFAULT_CNI_VERSION);
        let c = MultusConf::parse(br#"{"clusterNetwork":"x","logToStderr":false}"#).unwrap();
        assert!(!c.log_to_stderr);
    }

    #[test]
    fn conflist_with_multus_plugin() {
        for t in ["multus", "multus-shim"] {
            let text = format!(
                r#"{{"cniVersion":"1.0.0","name":"multus-cni-network","plugins":[{{"type":"{t}","clusterNetwork":"/etc/cni/net.d/10-flannel.conflist","daemonSocketDir":"/run/multus"}}]}}"#
            );
            let c = MultusConf::parse(text.as_bytes()).unwrap();
            assert_eq!(c.cni_version, "1.0.0");
            assert_eq!(c.name, "multus-cni-network");
            assert_eq!(c.is_thick(), t == "multus-shim");
        }
        let e = MultusConf::parse(br#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#)
            .unwrap_err();
        assert!(
            matches!(e, ConfError::Key { ref key, .. } if key == "plugins"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_key_and_map_to_codes() {
        let e = MultusConf::parse(b"{not json").unwrap_err();
        assert_eq!(CniError::from(e).code, 6);
        let cases: [(&[u8], &str); 10] = [
            (br#"{"delegates":{}}"#, "delegates"),
            (br#"{"delegates":[{"name":"x"}]}"#, "delegates"),
            (br#"{"clusterNetwork":1}"#, "clusterNetwork"),
            (
                br#"{"clusterNetwork":"x","namespaceIsolation":"yes"}"#,
                "namespaceIsolation",
            ),
            (
                br#"{"clusterNetwork":"x","globalNamespaces":5}"#,
                "globalNamespaces",
            ),
            (
                br#"{"clusterNetwork":"x","systemNamespaces":[1]}"#,
                "systemNamespaces",
            ),
            (
                br#"{"clusterNetwork":"x","defaultNetworks":"a"}"#,
                "defaultNetworks",
            ),
            (br#"{"clusterNetwork":"x","confDir":[]}"#, "confDir"),
            (
                br#"{"clusterNetwork":"x","cniVersion":"one"}"#,
                "cniVersion",
            ),
            (
                br#"{"clusterNetwork":"x","multusNamespace":"Bad_NS"}"#,
                "multusNamespace",
            ),
        ];
        for (text, key) in cases {
            let e = MultusConf::parse(text).unwrap_err();
            assert!(
                matches!(&e, ConfError::Key { key: k, .. } if k == key),
                "{}: {e}",
                String::from_utf8_lossy(text)
            );
            assert!(e.to_string().contains(key));
            assert_eq!(CniError::from(e).code, 7);
        }
        for text in [
            &br#"{"type":"multus"}"#[..],
            br#"{"delegates":[]}"#,
            b"[]",
            b"null",
        ] {
            let e = MultusConf::parse(text).unwrap_err();
            assert_eq!(CniError::from(e.clone()).code, 7, "{e}");
        }
        let e = MultusConf::parse(br#"{"type":"multus"}"#).unwrap_err();
        assert!(e.to_string().contains("delegates") && e.to_string().contains("clusterNetwork"));
    }

    #[test]
    fn versions() {
        assert!(is_version("1.0.0") && is_version("0.3.1"));
        assert!(!is_version("1.0") && !is_version("1.0.x") && !is_version(""));
        assert!(version_at_least("1.0.0", (1, 0, 0)) && version_at_least("1.1.0", (1, 0, 0)));
        assert!(!version_at_least("0.4.0", (1, 0, 0)));
    }
}
