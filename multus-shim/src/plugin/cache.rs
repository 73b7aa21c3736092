//! The delegate cache `<cniDir>/<containerID>`: the delegates of one attachment, written
//! before the first of them runs, so DEL can undo whatever a crash left behind. Its layout
//! is Multus's (a JSON array, one object per delegate, with `Conf`/`ConfList`, `Name`,
//! `ifnameRequest`, `Bytes`), plus what DEL needs under `metalnet`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cni::CniError;
use crate::cni::cache::{is_temporary, write_atomic};
use crate::multus::plan::Delegate;

/// What DEL needs of a delegate beyond Multus's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Extra {
    index: usize,
    master: bool,
    #[serde(rename = "statusName")]
    status_name: String,
    #[serde(default)]
    nad: Option<(String, String)>,
    ifname: String,
    conf: Value,
    #[serde(rename = "cniArgs", default)]
    cni_args: Vec<[String; 2]>,
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: Map<String, Value>,
    #[serde(rename = "defaultRoute", default)]
    default_route: Vec<IpAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    #[serde(rename = "Conf", default)]
    conf: Value,
    #[serde(rename = "ConfList", default)]
    conf_list: Value,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "ifnameRequest", default)]
    ifname_request: String,
    #[serde(rename = "IsFilterV4Gateway", default)]
    filter_v4_gateway: bool,
    #[serde(rename = "IsFilterV6Gateway", default)]
    filter_v6_gateway: bool,
    #[serde(rename = "Bytes", default)]
    bytes: String,
    metalnet: Extra,
}

/// The cache file of `container_id`.
pub fn path(cni_dir: &Path, container_id: &str) -> PathBuf {
    cni_dir.join(container_id)
}

/// Writes the delegate cache of `container_id` atomically.
pub fn write(cni_dir: &Path, container_id: &str, delegates: &[Delegate]) -> Result<(), CniError> {
    let any_default_route = delegates.iter().any(|d| !d.default_route.is_empty());
    let entries: Vec<Entry> = delegates
        .iter()
        .map(|d| {
            let is_list = d.conf.get("plugins").is_some();
            let filter = any_default_route && d.default_route.is_empty();
            Entry {
                conf: if is_list {
                    Value::Object(Map::new())
                } else {
                    d.conf.clone()
                },
                conf_list: if is_list {
                    d.conf.clone()
                } else {
                    Value::Object(Map::new())
                },
                name: d.status_name.clone(),
                ifname_request: d.ifname.clone(),
                filter_v4_gateway: filter,
                filter_v6_gateway: filter,
                bytes: base64::engine::general_purpose::STANDARD
                    .encode(serde_json::to_vec(&d.conf).unwrap_or_default()),
                metalnet: Extra {
                    index: d.index,
                    master: d.master,
                    status_name: d.status_name.clone(),
                    nad: d.nad.clone(),
                    ifname: d.ifname.clone(),
                    conf: d.conf.clone(),
                    cni_args: d
                        .cni_args
                        .iter()
                        .map(|(k, v)| [k.clone(), v.clone()])
                        .collect(),
                    runtime_config: d.runtime_config.clone(),
                    default_route: d.default_route.clone(),
                },
            }
        })
        .collect();
    write_atomic(
        &path(cni_dir, container_id),
        &serde_json::to_vec(&entries).unwrap_or_default(),
    )
}

/// Reads the delegate cache of `container_id`: `Ok(None)` when there is none, an error
/// naming the file when it is truncated or corrupt.
pub fn read(cni_dir: &Path, container_id: &str) -> Result<Option<Vec<Delegate>>, CniError> {
    let p = path(cni_dir, container_id);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CniError::new(
                CniError::IO,
                format!("cannot read the delegate cache {}: {e}", p.display()),
            ));
        }
    };
    let entries: Vec<Entry> = serde_json::from_slice(&bytes).map_err(|e| {
        CniError::new(
            CniError::DECODE,
            format!("the delegate cache {} is corrupt: {e}", p.display()),
        )
    })?;
    Ok(Some(
        entries
            .into_iter()
            .map(|e| {
                let x = e.metalnet;
                Delegate {
                    index: x.index,
                    master: x.master,
                    status_name: x.status_name,
                    nad: x.nad,
                    ifname: x.ifname,
                    conf: x.conf,
                    runtime_config: x.runtime_config,
                    cni_args: x.cni_args.into_iter().map(|[k, v]| (k, v)).collect(),
                    default_route: x.default_route,
                }
            })
            .collect(),
    ))
}

/// The container ids with a delegate cache (readable or not) under `cni_dir`.
pub fn containers(cni_dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(cni_dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !is_temporary(n) && crate::cni::env::check_container_id(n).is_ok())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn delegate(i: usize, conf: Value) -> Delegate {
        Delegate {
            index: i,
            master: i == 0,
            status_name: format!("ns/d{i}"),
            nad: (i > 0).then(|| ("ns".to_string(), format!("d{i}"))),
            ifname: format!("net{i}"),
            conf,
            runtime_config: json!({"mac": "0a:00:00:00:00:01"})
                .as_object()
                .unwrap()
                .clone(),
            cni_args: vec![("K8S_POD_NAME".into(), "p".into())],
            default_route: if i == 1 {
                vec!["192.0.2.1".parse().unwrap()]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn round_trip_in_multus_layout() {
        let dir = tempfile::tempdir().unwrap();
        let ds = vec![
            delegate(
                0,
                json!({"cniVersion": "1.0.0", "name": "a", "type": "bridge"}),
            ),
            delegate(
                1,
                json!({"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "ptp"}]}),
            ),
        ];
        write(dir.path(), "c1", &ds).unwrap();
        assert_eq!(read(dir.path(), "c1").unwrap().unwrap(), ds);
        let raw: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("c1")).unwrap()).unwrap();
        assert_eq!(raw[0]["Conf"]["type"], "bridge");
        assert_eq!(raw[1]["ConfList"]["plugins"][0]["type"], "ptp");
        assert_eq!(raw[1]["Name"], "ns/d1");
        assert_eq!(raw[0]["ifnameRequest"], "net0");
        assert_eq!(raw[0]["IsFilterV4Gateway"], true);
        assert_eq!(raw[1]["IsFilterV4Gateway"], false);
        assert!(raw[0]["Bytes"].is_string());
        assert_eq!(containers(dir.path()), vec!["c1".to_string()]);
        assert!(read(dir.path(), "c2").unwrap().is_none());
        std::fs::write(dir.path().join("c2"), b"[{\"Conf\":").unwrap();
        let e = read(dir.path(), "c2").unwrap_err();
        assert_eq!(e.code, 6);
        assert!(
            e.msg.contains("c2") && e.msg.contains("corrupt"),
            "{}",
            e.msg
        );
    }
}
