//! A minimal reading of Multus's configuration and of the configuration's own delegates,
//! for as long as [`crate::multus::config`] and [`crate::multus::plan::plan`] have none: the
//! plugin calls those first and falls back to this only when they say "not implemented".

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::cni::CniError;
use crate::multus::config::MultusConf;
use crate::multus::plan::{Attachment, Delegate};

fn invalid(field: &str, why: &str) -> CniError {
    CniError::new(
        CniError::INVALID_CONFIG,
        format!("multus configuration: field {field} {why}"),
    )
}

fn string(v: &Value, field: &str) -> Result<Option<String>, CniError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(field, "is not a string")),
    }
}

fn boolean(v: &Value, field: &str) -> Result<bool, CniError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(field, "is not a boolean")),
    }
}

/// A list given as a JSON array of strings or as Multus's comma string.
fn list(v: &Value, field: &str, default: &[&str]) -> Result<Vec<String>, CniError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(default.iter().map(|s| s.to_string()).collect()),
        Some(Value::String(s)) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(String::from)
                    .ok_or_else(|| invalid(field, "holds a non-string"))
            })
            .collect(),
        Some(_) => Err(invalid(field, "is neither a string nor a list")),
    }
}

/// Reads the configuration on stdin with Multus's keys and defaults.
pub fn parse_conf(v: &Value) -> Result<MultusConf, CniError> {
    if !v.is_object() {
        return Err(CniError::new(
            CniError::DECODE,
            "the configuration is not a JSON object",
        ));
    }
    let delegates = match v.get("delegates") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(invalid("delegates", "is not a list")),
    };
    let bin_dir = match v.get("binDir") {
        None | Some(Value::Null) => vec![PathBuf::from("/opt/cni/bin")],
        Some(Value::String(s)) => s
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect(),
        Some(Value::Array(_)) => list(v, "binDir", &[])?
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        Some(_) => return Err(invalid("binDir", "is not a string")),
    };
    let runtime_config = match v.get("runtimeConfig") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(invalid("runtimeConfig", "is not an object")),
    };
    Ok(MultusConf {
        cni_version: string(v, "cniVersion")?.unwrap_or_default(),
        name: string(v, "name")?.unwrap_or_default(),
        delegates,
        cluster_network: string(v, "clusterNetwork")?,
        default_networks: list(v, "defaultNetworks", &[])?,
        conf_dir: string(v, "confDir")?
            .map_or_else(|| PathBuf::from("/etc/cni/multus/net.d"), PathBuf::from),
        cni_dir: string(v, "cniDir")?
            .map_or_else(|| PathBuf::from("/var/lib/cni/multus"), PathBuf::from),
        bin_dir,
        kubeconfig: string(v, "kubeconfig")?.map(PathBuf::from),
        state_dir: string(v, "stateDir")?.map(PathBuf::from),
        namespace_isolation: boolean(v, "namespaceIsolation")?,
        global_namespaces: list(v, "globalNamespaces", &["default"])?,
        system_namespaces: list(v, "systemNamespaces", &["kube-system"])?,
        multus_namespace: string(v, "multusNamespace")?.unwrap_or_else(|| "kube-system".into()),
        readiness_indicator_file: string(v, "readinessindicatorfile")?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        retry_delete_on_error: boolean(v, "retryDeleteOnError")?,
        daemon_socket_dir: string(v, "daemonSocketDir")?.map(PathBuf::from),
        log_file: string(v, "logFile")?.map(PathBuf::from),
        log_level: string(v, "logLevel")?,
        log_to_stderr: boolean(v, "logToStderr")?,
        runtime_config,
        raw: v.clone(),
    })
}

/// The capabilities a delegate declares (of every plugin of a list).
fn capabilities(conf: &Value) -> Vec<String> {
    crate::cni::exec::plugins_of(conf)
        .iter()
        .filter_map(|p| p.get("capabilities").and_then(Value::as_object).cloned())
        .flat_map(|m| {
            m.into_iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k)
        })
        .collect()
}

/// The configuration's own `delegates` as a delegate list (no cluster, no pod).
pub fn own_delegates(conf: &MultusConf, att: &Attachment) -> Result<Vec<Delegate>, CniError> {
    if conf.delegates.is_empty() {
        return Err(invalid(
            "delegates",
            "is empty (and clusterNetwork is not supported without a cluster in this build)",
        ));
    }
    conf.delegates
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut d = d.clone();
            let Some(obj) = d.as_object_mut() else {
                return Err(invalid(&format!("delegates[{i}]"), "is not an object"));
            };
            if !obj.contains_key("cniVersion") {
                obj.insert("cniVersion".into(), conf.cni_version.clone().into());
            }
            let name = obj
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if name.is_empty() {
                return Err(invalid(&format!("delegates[{i}].name"), "is missing"));
            }
            let caps = capabilities(&d);
            Ok(Delegate {
                index: i,
                master: i == 0,
                status_name: name,
                nad: None,
                ifname: if i == 0 {
                    att.ifname.clone()
                } else {
                    format!("net{i}")
                },
                runtime_config: conf
                    .runtime_config
                    .iter()
                    .filter(|(k, _)| caps.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                conf: d,
                cni_args: att.cni_args.clone(),
                default_route: Vec::new(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_errors() {
        let c = parse_conf(&json!({"cniVersion": "1.0.0", "name": "m", "delegates": [{"name": "a", "type": "bridge"}]})).unwrap();
        assert_eq!(c.cni_dir, PathBuf::from("/var/lib/cni/multus"));
        assert_eq!(c.bin_dir, vec![PathBuf::from("/opt/cni/bin")]);
        assert_eq!(c.global_namespaces, vec!["default".to_string()]);
        assert_eq!(c.multus_namespace, "kube-system");
        let e = parse_conf(&json!({"delegates": {}})).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("field delegates"), "{}", e.msg);
        let att = Attachment {
            container_id: "c".into(),
            ifname: "eth0".into(),
            cni_args: vec![],
        };
        let ds = own_delegates(&c, &att).unwrap();
        assert_eq!(ds[0].ifname, "eth0");
        assert_eq!(ds[0].conf["cniVersion"], "1.0.0");
    }
}
