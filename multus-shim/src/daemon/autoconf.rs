//! `00-multus.conf(list)` in the runtime's configuration directory: generated from the
//! first other configuration there (`--multus-conf-file=auto`) or copied from a given file,
//! written atomically, regenerated when the directory changes.
//!
//! The generation below is a small private one (name `multus-cni-network`, type
//! `multus-shim`, `clusterNetwork` = the primary configuration's path, the union of its
//! capabilities, `daemonSocketDir`), standing in for the Multus model's pure generator
//! (`multus::generate`), which this daemon should call instead once both are on one branch.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use metalnet::daemon::Shutdown;

/// The file names the daemon writes; other configurations starting with this are never
/// taken for the primary network.
pub const MULTUS_CONF: &str = "00-multus.conf";
pub const MULTUS_CONFLIST: &str = "00-multus.conflist";

/// Why no configuration could be written; each names the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum AutoconfError {
    #[error(
        "{dir}: no CNI configuration (.conf, .conflist, .json) other than 00-multus.conf to use as the cluster network"
    )]
    NoMaster { dir: PathBuf },
    #[error("{path}: {reason}")]
    Master { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AutoconfError + '_ {
    move |source| AutoconfError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The primary configuration as Multus's entrypoints pick it: the alphabetically first
/// `.conf` or `.conflist` file, skipping ours and hidden files.
pub fn pick_master(dir: &Path) -> Result<Option<PathBuf>, AutoconfError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && !n.starts_with(MULTUS_CONF))
        .filter(|n| {
            [".conf", ".conflist", ".json"]
                .iter()
                .any(|x| n.ends_with(x))
        })
        .collect();
    names.sort();
    Ok(names.first().map(|n| dir.join(n)))
}

/// The Multus configuration for the primary configuration `master` (read from
/// `master_path`): its file name and content.
pub fn generate(
    master_path: &Path,
    master: &[u8],
    socket_dir: &Path,
) -> Result<(&'static str, serde_json::Value), AutoconfError> {
    let bad = |reason: String| AutoconfError::Master {
        path: master_path.to_path_buf(),
        reason,
    };
    let conf: serde_json::Value =
        serde_json::from_slice(master).map_err(|e| bad(format!("not JSON: {e}")))?;
    let obj = conf
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let version = obj
        .get("cniVersion")
        .and_then(|v| v.as_str())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| bad("cniVersion: missing or not a string".into()))?;
    // The union of what the primary network's plugins declare, so the runtime passes the
    // capability arguments (portMappings, bandwidth, ...) on to it through us.
    let mut capabilities = BTreeMap::new();
    let plugins: Vec<&serde_json::Value> = match obj.get("plugins") {
        Some(serde_json::Value::Array(p)) => p.iter().collect(),
        Some(_) => return Err(bad("plugins: not a list".into())),
        None => vec![&conf],
    };
    for p in plugins {
        if let Some(caps) = p.get("capabilities").and_then(|c| c.as_object()) {
            for (k, v) in caps {
                if v.as_bool() == Some(true) {
                    capabilities.insert(k.clone(), serde_json::Value::Bool(true));
                }
            }
        }
    }
    let mut plugin = serde_json::json!({
        "type": "multus-shim",
        "clusterNetwork": master_path.to_string_lossy(),
        "daemonSocketDir": socket_dir.to_string_lossy(),
    });
    if !capabilities.is_empty() {
        plugin["capabilities"] = serde_json::to_value(capabilities).unwrap_or_default();
    }
    // A conflist from 1.0.0 on, as Multus does: runtimes of CNI 1.x expect one.
    if version_at_least_1(version) {
        Ok((
            MULTUS_CONFLIST,
            serde_json::json!({
                "cniVersion": version,
                "name": "multus-cni-network",
                "plugins": [plugin],
            }),
        ))
    } else {
        let mut conf = serde_json::json!({
            "cniVersion": version,
            "name": "multus-cni-network",
        });
        if let (Some(c), Some(p)) = (conf.as_object_mut(), plugin.as_object()) {
            for (k, v) in p {
                c.insert(k.clone(), v.clone());
            }
        }
        Ok((MULTUS_CONF, conf))
    }
}

fn version_at_least_1(v: &str) -> bool {
    v.split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .is_some_and(|m| m >= 1)
}

/// Writes `content` to `dir/name` atomically (temporary file, fsync, rename) unless it is
/// already there, and removes the other of the two names so the runtime never sees both.
/// Returns whether the file changed.
pub fn write_conf(dir: &Path, name: &str, content: &[u8]) -> Result<bool, AutoconfError> {
    let path = dir.join(name);
    let other = dir.join(if name == MULTUS_CONF {
        MULTUS_CONFLIST
    } else {
        MULTUS_CONF
    });
    let unchanged = std::fs::read(&path).map(|c| c == content).unwrap_or(false);
    if !unchanged {
        // Hidden and without a CNI extension: neither libcni nor pick_master reads it.
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(content)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(AutoconfError::Io { path, source: e });
        }
    }
    match std::fs::remove_file(&other) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(AutoconfError::Io {
                path: other,
                source: e,
            });
        }
    }
    Ok(!unchanged)
}

/// What to write.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Generate from the first other configuration in the directory, and follow it.
    Auto,
    /// Copy this file.
    File(PathBuf),
}

/// One pass: writes the configuration and returns the file written.
pub fn apply(
    mode: &Mode,
    cni_conf_dir: &Path,
    socket_dir: &Path,
) -> Result<PathBuf, AutoconfError> {
    let (name, content) = match mode {
        Mode::Auto => {
            let master = pick_master(cni_conf_dir)?.ok_or_else(|| AutoconfError::NoMaster {
                dir: cni_conf_dir.to_path_buf(),
            })?;
            let bytes = std::fs::read(&master).map_err(io_err(&master))?;
            let (name, conf) = generate(&master, &bytes, socket_dir)?;
            let mut text = serde_json::to_string_pretty(&conf).unwrap_or_default();
            text.push('\n');
            (name, text.into_bytes())
        }
        Mode::File(path) => {
            let bytes = std::fs::read(path).map_err(io_err(path))?;
            let conf: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| AutoconfError::Master {
                    path: path.clone(),
                    reason: format!("not JSON: {e}"),
                })?;
            let name = if conf.get("plugins").is_some() {
                MULTUS_CONFLIST
            } else {
                MULTUS_CONF
            };
            (name, bytes)
        }
    };
    let changed = write_conf(cni_conf_dir, name, &content)?;
    let path = cni_conf_dir.join(name);
    if changed {
        tracing::info!(path = %path.display(), "wrote the Multus CNI configuration");
    }
    Ok(path)
}

/// Writes the configuration, then (in auto mode) rewrites it whenever the directory changes,
/// until shutdown. Returns the last file written, for `--cleanup-config-on-exit`.
pub async fn maintain(
    mode: Mode,
    cni_conf_dir: PathBuf,
    socket_dir: PathBuf,
    shutdown: Shutdown,
) -> Option<PathBuf> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut written = None;
    let pass = |written: &mut Option<PathBuf>| match apply(&mode, &cni_conf_dir, &socket_dir) {
        Ok(p) => *written = Some(p),
        Err(e) => tracing::warn!(error = %e, "not writing the Multus CNI configuration"),
    };
    pass(&mut written);
    if matches!(mode, Mode::File(_)) {
        return written;
    }
    use notify::Watcher as _;
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok() {
            let _ = tx.send(());
        }
    })
    .and_then(|mut w| {
        w.watch(&cni_conf_dir, notify::RecursiveMode::NonRecursive)
            .map(|()| w)
    });
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %cni_conf_dir.display(), error = %e, "cannot watch the CNI configuration directory; checking it every 10 s instead");
            None
        }
    };
    loop {
        tokio::select! {
            _ = rx.recv() => {
                // Let a burst of events (an editor's write, our own rename) settle.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
            }
            // Also on a timer: a directory replaced as a whole loses its watch.
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = shutdown.wait() => return written,
        }
        pass(&mut written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_first_other_configuration() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(pick_master(d.path()).unwrap(), None);
        for n in [
            "00-multus.conf",
            "20-b.conflist",
            "10-a.conf",
            ".hidden.conf",
            "readme.txt",
        ] {
            std::fs::write(d.path().join(n), "{}").unwrap();
        }
        assert_eq!(
            pick_master(d.path()).unwrap(),
            Some(d.path().join("10-a.conf"))
        );
    }

    #[test]
    fn generates_conf_for_old_versions_and_conflist_from_1_0() {
        let sock = Path::new("/run/multus");
        let (name, conf) = generate(
            Path::new("/etc/cni/net.d/10-br.conf"),
            br#"{"cniVersion":"0.3.1","name":"br","type":"bridge","capabilities":{"ips":true,"mac":false}}"#,
            sock,
        )
        .unwrap();
        assert_eq!(name, MULTUS_CONF);
        assert_eq!(conf["type"], "multus-shim");
        assert_eq!(conf["name"], "multus-cni-network");
        assert_eq!(conf["cniVersion"], "0.3.1");
        assert_eq!(conf["clusterNetwork"], "/etc/cni/net.d/10-br.conf");
        assert_eq!(conf["daemonSocketDir"], "/run/multus");
        assert_eq!(conf["capabilities"], serde_json::json!({"ips": true}));

        let (name, conf) = generate(
            Path::new("/x/10-k.conflist"),
            br#"{"cniVersion":"1.0.0","name":"k","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
            sock,
        )
        .unwrap();
        assert_eq!(name, MULTUS_CONFLIST);
        assert_eq!(conf["plugins"][0]["type"], "multus-shim");
        assert_eq!(
            conf["plugins"][0]["capabilities"],
            serde_json::json!({"portMappings": true})
        );
    }

    #[test]
    fn bad_primary_configurations_name_the_file_and_field() {
        let p = Path::new("/x/10-a.conf");
        let sock = Path::new("/run/multus");
        let e = generate(p, b"{", sock).unwrap_err().to_string();
        assert!(e.contains("/x/10-a.conf") && e.contains("not JSON"), "{e}");
        let e = generate(p, br#"{"type":"bridge"}"#, sock)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cniVersion"), "{e}");
        let e = generate(p, br#"{"cniVersion":"1.0.0","plugins":3}"#, sock)
            .unwrap_err()
            .to_string();
        assert!(e.contains("plugins"), "{e}");
    }

    #[test]
    fn writes_atomically_once_and_keeps_one_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(MULTUS_CONF), "old").unwrap();
        assert!(write_conf(d.path(), MULTUS_CONFLIST, b"new").unwrap());
        assert!(
            !write_conf(d.path(), MULTUS_CONFLIST, b"new").unwrap(),
            "unchanged"
        );
        assert!(!d.path().join(MULTUS_CONF).exists());
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from(MULTUS_CONFLIST)],
            "no temporary left"
        );
    }

    #[test]
    fn auto_without_a_primary_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let e = apply(&Mode::Auto, d.path(), Path::new("/run/multus")).unwrap_err();
        assert!(matches!(e, AutoconfError::NoMaster { .. }), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
