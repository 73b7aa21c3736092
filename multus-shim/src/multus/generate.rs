//! The auto-generated `00-multus.conf` / `00-multus.conflist`, as Multus's entrypoints make
//! it from the first configuration of the CNI configuration directory. A pure function from
//! the directory's (file name, content) pairs to the file to write: the daemon reads the
//! directory, writes the file (temporary name, rename) and watches for changes.

use serde_json::{Map, Value, json};

use super::config::{is_multus_type, is_version, version_at_least};
use super::plan::declared_capabilities;

/// The name Multus gives its own network.
pub const MULTUS_NETWORK_NAME: &str = "multus-cni-network";
/// Files starting with this are Multus's own and never taken as the master.
pub const GENERATED_PREFIX: &str = "00-multus";

/// How the generated configuration reaches the delegates.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// `type: multus`: the plugin does everything itself; the master configuration is
    /// inlined as `delegates[0]`.
    Thin { kubeconfig: Option<String> },
    /// `type: multus-shim`: forwards to the daemon on `<daemon_socket_dir>/multus.sock`;
    /// `clusterNetwork` is the master file's path (`conf_dir` joined with its name).
    Thick {
        daemon_socket_dir: String,
        conf_dir: String,
    },
}

/// What the entrypoint's flags set.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub mode: Mode,
    /// `--multus-master-cni-file-name`: use this file instead of the first one.
    pub master_file: Option<String>,
    /// `--cni-version`: refuse a master of another version.
    pub cni_version: Option<String>,
    /// `--override-network-name`: the master's name instead of `multus-cni-network`.
    pub override_network_name: bool,
    /// Further keys of the plugin (`namespaceIsolation`, `globalNamespaces`, `logLevel`,
    /// `readinessindicatorfile`, ...), copied as given.
    pub extra: Map<String, Value>,
}

impl GenerateOptions {
    pub fn new(mode: Mode) -> GenerateOptions {
        GenerateOptions {
            mode,
            master_file: None,
            cni_version: None,
            override_network_name: false,
            extra: Map::new(),
        }
    }
}

/// Why no configuration can be generated; names the file and the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerateError {
    #[error("master CNI configuration {file}: {reason}")]
    Master { file: String, reason: String },
    #[error(
        "master CNI configuration {file}: cniVersion {found:?} differs from --cni-version {wanted:?}"
    )]
    Version {
        file: String,
        found: String,
        wanted: String,
    },
    #[error("master CNI configuration {0} not found")]
    NotFound(String),
}

/// Whether a file of the directory can be the master configuration: Multus's entrypoints
/// only consider `.conf` and `.conflist` files (not `.json`, which libcni also reads).
pub fn is_conf_file(name: &str) -> bool {
    name.ends_with(".conf") || name.ends_with(".conflist")
}

/// Whether a file is Multus's own output (never a master).
pub fn is_generated_file(name: &str) -> bool {
    name.starts_with(GENERATED_PREFIX)
}

/// The master configuration's file: the alphabetically first configuration file that is not
/// Multus's own.
pub fn select_master(files: &[(String, Vec<u8>)]) -> Option<&(String, Vec<u8>)> {
    files
        .iter()
        .filter(|(n, _)| is_conf_file(n) && !is_generated_file(n) && !n.contains('/'))
        .min_by(|a, b| a.0.cmp(&b.0))
}

/// The file to write (`00-multus.conf`, or `00-multus.conflist` when the master's version is
/// 1.0.0 or later) and its content; `None` while the directory has no master configuration
/// yet (the daemon waits for one).
pub fn generate(
    files: &[(String, Vec<u8>)],
    opts: &GenerateOptions,
) -> Result<Option<(String, Vec<u8>)>, GenerateError> {
    let master = match &opts.master_file {
        Some(name) => Some(
            files
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| GenerateError::NotFound(name.clone()))?,
        ),
        None => select_master(files),
    };
    let Some((file, bytes)) = master else {
        return Ok(None);
    };
    let bad = |reason: String| GenerateError::Master {
        file: file.clone(),
        reason,
    };
    let conf: Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    super::config::check_delegate(&conf).map_err(bad)?;
    if conf
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(is_multus_type)
    {
        return Err(bad("is a Multus configuration itself".into()));
    }
    let version = conf
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !is_version(&version) {
        return Err(bad(format!("cniVersion {version:?} is not a version")));
    }
    if let Some(wanted) = &opts.cni_version
        && *wanted != version
    {
        return Err(GenerateError::Version {
            file: file.clone(),
            found: version,
            wanted: wanted.clone(),
        });
    }
    let name = if opts.override_network_name {
        conf.get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or(MULTUS_NETWORK_NAME)
            .to_string()
    } else {
        MULTUS_NETWORK_NAME.to_string()
    };

    let mut plugin = Map::new();
    match &opts.mode {
        Mode::Thin { kubeconfig } => {
            plugin.insert("type".into(), "multus".into());
            if let Some(k) = kubeconfig {
                plugin.insert("kubeconfig".into(), k.clone().into());
            }
            plugin.insert("delegates".into(), json!([conf]));
        }
        Mode::Thick {
            daemon_socket_dir,
            conf_dir,
        } => {
            plugin.insert("type".into(), "multus-shim".into());
            plugin.insert(
                "clusterNetwork".into(),
                format!("{}/{file}", conf_dir.trim_end_matches('/')).into(),
            );
            plugin.insert("daemonSocketDir".into(), daemon_socket_dir.clone().into());
        }
    }
    let caps = declared_capabilities(&conf);
    if !caps.is_empty() {
        let caps: Map<String, Value> = caps.into_iter().map(|c| (c, Value::Bool(true))).collect();
        plugin.insert("capabilities".into(), Value::Object(caps));
    }
    for (k, v) in &opts.extra {
        plugin.entry(k.clone()).or_insert_with(|| v.clone());
    }

    let (out_name, out) = if version_at_least(&version, (1, 0, 0)) {
        (
            "00-multus.conflist",
            json!({"cniVersion": version, "name": name, "plugins": [Value::Object(plugin)]}),
        )
    } else {
        let mut top = Map::new();
        top.insert("cniVersion".into(), version.into());
        top.insert("name".into(), name.into());
        top.extend(plugin);
        ("00-multus.conf", Value::Object(top))
    };
    let mut text = serde_json::to_vec_pretty(&out).map_err(|e| bad(e.to_string()))?;
    text.push(b'\n');
    Ok(Some((out_name.to_string(), text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, content: &str) -> (String, Vec<u8>) {
        (name.to_string(), content.as_bytes().to_vec())
    }

    fn parse(out: &(String, Vec<u8>)) -> Value {
        serde_json::from_slice(&out.1).unwrap()
    }

    const FLANNEL: &str = r#"{"cniVersion":"0.3.1","name":"cbr0","plugins":[{"type":"flannel","delegate":{"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}},{"type":"bandwidth","capabilities":{"bandwidth":true}}]}"#;

    #[test]
    fn first_configuration_is_the_master() {
        let files = vec![
            f(
                "99-last.conf",
                r#"{"cniVersion":"1.0.0","name":"z","type":"ptp"}"#,
            ),
            f("00-multus.conf", r#"{"type":"multus"}"#),
            f("README", "x"),
            f(
                "05-other.json",
                r#"{"cniVersion":"1.0.0","name":"j","type":"ptp"}"#,
            ),
            f("10-flannel.conflist", FLANNEL),
        ];
        assert_eq!(select_master(&files).unwrap().0, "10-flannel.conflist");
        let opts = GenerateOptions::new(Mode::Thin {
            kubeconfig: Some("/etc/cni/net.d/multus.d/multus.kubeconfig".into()),
        });
        let out = generate(&files, &opts).unwrap().unwrap();
        assert_eq!(out.0, "00-multus.conf");
        let v = parse(&out);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["name"], "multus-cni-network");
        assert_eq!(v["type"], "multus");
        assert_eq!(v["kubeconfig"], "/etc/cni/net.d/multus.d/multus.kubeconfig");
        assert_eq!(
            v["capabilities"],
            json!({"portMappings": true, "bandwidth": true})
        );
        assert_eq!(v["delegates"][0]["name"], "cbr0");
        // What it generates is a configuration the plugin reads.
        let c = super::super::config::MultusConf::parse(&out.1).unwrap();
        assert_eq!(c.delegates.len(), 1);
    }

    #[test]
    fn version_one_is_a_conflist_and_thick_points_at_the_file() {
        let files = vec![f(
            "10-bridge.conf",
            r#"{"cniVersion":"1.0.0","name":"podnet","type":"bridge","capabilities":{"ips":true,"mac":false}}"#,
        )];
        let mut opts = GenerateOptions::new(Mode::Thick {
            daemon_socket_dir: "/run/multus".into(),
            conf_dir: "/etc/cni/net.d/".into(),
        });
        opts.extra.insert("logLevel".into(), "verbose".into());
        let out = generate(&files, &opts).unwrap().unwrap();
        assert_eq!(out.0, "00-multus.conflist");
        let v = parse(&out);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["name"], "multus-cni-network");
        let p = &v["plugins"][0];
        assert_eq!(p["type"], "multus-shim");
        assert_eq!(p["clusterNetwork"], "/etc/cni/net.d/10-bridge.conf");
        assert_eq!(p["daemonSocketDir"], "/run/multus");
        assert_eq!(p["capabilities"], json!({"ips": true}));
        assert_eq!(p["logLevel"], "verbose");
        let c = super::super::config::MultusConf::parse(&out.1).unwrap();
        assert!(c.is_thick());
        assert_eq!(
            c.cluster_network.as_deref(),
            Some("/etc/cni/net.d/10-bridge.conf")
        );
    }

    #[test]
    fn options_and_errors() {
        let files = vec![f("10-flannel.conflist", FLANNEL), f("20-x.conf", "{")];
        let thin = GenerateOptions::new(Mode::Thin { kubeconfig: None });
        assert_eq!(generate(&[], &thin).unwrap(), None);
        assert_eq!(generate(&[f("00-multus.conf", "{}")], &thin).unwrap(), None);
        let mut o = thin.clone();
        o.override_network_name = true;
        assert_eq!(
            parse(&generate(&files, &o).unwrap().unwrap())["name"],
            "cbr0"
        );
        let mut o = thin.clone();
        o.cni_version = Some("1.0.0".into());
        assert!(matches!(
            generate(&files, &o),
            Err(GenerateError::Version { .. })
        ));
        let mut o = thin.clone();
        o.master_file = Some("20-x.conf".into());
        let e = generate(&files, &o).unwrap_err();
        assert!(e.to_string().contains("20-x.conf"), "{e}");
        o.master_file = Some("nope.conf".into());
        assert!(matches!(
            generate(&files, &o),
            Err(GenerateError::NotFound(_))
        ));
        let e = generate(
            &[f("10-m.conf", r#"{"cniVersion":"0.3.1","type":"multus"}"#)],
            &thin,
        )
        .unwrap_err();
        assert!(e.to_string().contains("10-m.conf"));
        let e = generate(&[f("10-m.conf", r#"{"type":"ptp"}"#)], &thin).unwrap_err();
        assert!(e.to_string().contains("cniVersion"));
    }
}
