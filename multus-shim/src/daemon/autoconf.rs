//! `00-multus.conf(list)` in the runtime's configuration directory: generated from the
//! first other configuration there (`--multus-conf-file=auto`) or copied from a given file,
//! written atomically, regenerated when the directory changes.
//!
//! The content is the Multus model's ([`crate::multus::generate`], thick mode:
//! `type: multus-shim`, `clusterNetwork` = the primary configuration's path,
//! `daemonSocketDir`); this module reads the directory, writes and follows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use metalnet::daemon::Shutdown;

use crate::multus::generate::{
    GenerateError, GenerateOptions, Mode as GenerateMode, generate, is_conf_file,
};

/// The file names the daemon writes; other configurations starting with this are never
/// taken for the primary network.
pub const MULTUS_CONF: &str = "00-multus.conf";
pub const MULTUS_CONFLIST: &str = "00-multus.conflist";

/// Why no configuration could be written; each names the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum AutoconfError {
    #[error(
        "{dir}: no CNI configuration (.conf, .conflist) other than 00-multus.conf(list) to use as the cluster network"
    )]
    NoMaster { dir: PathBuf },
    #[error("{dir}: {source}")]
    Generate {
        dir: PathBuf,
        #[source]
        source: GenerateError,
    },
    #[error("{path}: {reason}")]
    Master { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Write { path: PathBuf, reason: String },
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

/// The most a configuration file in the directory may weigh to be read.
const MAX_CONF_FILE: u64 = 1 << 20;

/// The directory's CNI configuration files (`.conf`, `.conflist`; not hidden), as the
/// generator chooses among them. A file that vanishes meanwhile or is too large is left out.
fn read_confs(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, AutoconfError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || !is_conf_file(&name) {
            continue;
        }
        let path = entry.path();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() <= MAX_CONF_FILE => {}
            Ok(m) if m.is_file() => {
                tracing::warn!(path = %path.display(), size = m.len(), "CNI configuration larger than 1 MiB: ignored");
                continue;
            }
            _ => continue,
        }
        if let Ok(bytes) = std::fs::read(&path) {
            files.push((name, bytes));
        }
    }
    Ok(files)
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
        // Its temporary file is hidden and without a CNI extension: neither libcni nor
        // pick_master reads it.
        crate::cni::cache::write_atomic(&path, content).map_err(|e| AutoconfError::Write {
            path: path.clone(),
            reason: e.msg,
        })?;
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
            let files = read_confs(cni_conf_dir)?;
            let opts = GenerateOptions::new(GenerateMode::Thick {
                daemon_socket_dir: socket_dir.to_string_lossy().into_owned(),
                conf_dir: cni_conf_dir.to_string_lossy().into_owned(),
            });
            match generate(&files, &opts) {
                Ok(Some(out)) => out,
                Ok(None) => {
                    return Err(AutoconfError::NoMaster {
                        dir: cni_conf_dir.to_path_buf(),
                    });
                }
                Err(source) => {
                    return Err(AutoconfError::Generate {
                        dir: cni_conf_dir.to_path_buf(),
                        source,
                    });
                }
            }
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
            (name.to_string(), bytes)
        }
    };
    let changed = write_conf(cni_conf_dir, &name, &content)?;
    let path = cni_conf_dir.join(&name);
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
    fn auto_generates_from_the_first_conf_or_conflist() {
        let d = tempfile::tempdir().unwrap();
        for (n, c) in [
            (
                "05-x.json",
                r#"{"cniVersion":"0.3.1","name":"x","type":"bridge"}"#,
            ),
            (
                ".01-hidden.conf",
                r#"{"cniVersion":"0.3.1","name":"h","type":"bridge"}"#,
            ),
            (
                "10-a.conf",
                r#"{"cniVersion":"0.4.0","name":"a","type":"bridge"}"#,
            ),
            (
                "20-b.conflist",
                r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"ptp"}]}"#,
            ),
        ] {
            std::fs::write(d.path().join(n), c).unwrap();
        }
        let written = apply(&Mode::Auto, d.path(), Path::new("/run/multus")).unwrap();
        assert_eq!(written, d.path().join(MULTUS_CONF));
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&written).unwrap()).unwrap();
        assert_eq!(v["type"], "multus-shim");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["clusterNetwork"],
            d.path().join("10-a.conf").display().to_string()
        );
        assert_eq!(v["daemonSocketDir"], "/run/multus");
    }

    #[test]
    fn a_bad_primary_configuration_is_reported_and_nothing_written() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("10-a.conf"), "{").unwrap();
        let e = apply(&Mode::Auto, d.path(), Path::new("/run/multus"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("10-a.conf"), "{e}");
        assert!(!d.path().join(MULTUS_CONF).exists());
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
