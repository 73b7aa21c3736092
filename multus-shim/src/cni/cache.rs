//! Files that must survive a crash: written atomically, and libcni's result cache
//! (`<dir>/results/<network>-<containerID>-<ifname>`), which runtimes and Multus read too.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::CniError;

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> CniError {
    CniError::new(CniError::IO, format!("{what} {}: {e}", path.display()))
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one, never
/// a truncated one: temporary file in the same directory, fsync, rename, fsync of the
/// directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CniError> {
    write_replacing(path, bytes, true)
}

/// Writes `bytes` to `path` through a temporary file and a rename: readers, and the next
/// call after this process was killed, see either the old file or the new one; with
/// `durable` the file and the directory are also fsync'd, so a power loss cannot undo it.
fn write_replacing(path: &Path, bytes: &[u8], durable: bool) -> Result<(), CniError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io_err("cannot create", dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per call, also between the threads of the daemon.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{seq}", std::process::id()));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io_err("cannot create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| io_err("cannot write", &tmp, e))?;
        if durable {
            f.sync_all().map_err(|e| io_err("cannot sync", &tmp, e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| io_err("cannot rename to", path, e))?;
        if !durable {
            return Ok(());
        }
        let d = std::fs::File::open(dir).map_err(|e| io_err("cannot open", dir, e))?;
        d.sync_all().map_err(|e| io_err("cannot sync", dir, e))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Removes a file; one already gone is not an error.
pub fn remove(path: &Path) -> Result<(), CniError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot remove", path, e)),
    }
}

/// Whether a cache directory entry is a temporary file of [`write_atomic`].
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.')
}

/// One entry of libcni's result cache (`kind: cniCacheV1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultCache {
    pub kind: String,
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// The network configuration, base64 as Go's `[]byte`.
    pub config: String,
    #[serde(rename = "ifName")]
    pub if_name: String,
    #[serde(rename = "networkName")]
    pub network_name: String,
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<[String; 2]>,
    #[serde(
        rename = "capabilityArgs",
        default,
        skip_serializing_if = "Map::is_empty"
    )]
    pub capability_args: Map<String, Value>,
    #[serde(default)]
    pub result: Value,
}

impl ResultCache {
    pub const KIND: &'static str = "cniCacheV1";

    pub fn new(
        container_id: &str,
        ifname: &str,
        conf: &Value,
        cni_args: &[(String, String)],
        capability_args: &Map<String, Value>,
        result: &Value,
    ) -> ResultCache {
        ResultCache {
            kind: Self::KIND.into(),
            container_id: container_id.into(),
            config: base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(conf).unwrap_or_default()),
            if_name: ifname.into(),
            network_name: super::exec::network_name(conf).into(),
            cni_args: cni_args
                .iter()
                .map(|(k, v)| [k.clone(), v.clone()])
                .collect(),
            capability_args: capability_args.clone(),
            result: result.clone(),
        }
    }

    /// The cached network configuration.
    pub fn conf(&self, path: &Path) -> Result<Value, CniError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.config)
            .map_err(|e| corrupt(path, &format!("field config is not base64: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(path, &format!("field config is not JSON: {e}")))
    }

    /// Its path under `cni_dir`.
    pub fn path(cni_dir: &Path, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        cni_dir
            .join("results")
            .join(format!("{}-{container_id}-{ifname}", sanitize(network)))
    }

    /// Writes the entry as libcni does, without fsync (libcni's is a plain write): it only
    /// serves DEL, CHECK and GC as the delegate's prevResult, and as the fallback when the
    /// delegate cache is lost. What guarantees that nothing leaks is the delegate cache,
    /// fsync'd before the first delegate runs. The rename still keeps a killed process from
    /// leaving half an entry; after a power loss an entry may be missing or empty, which DEL
    /// handles (it runs without prevResult, and removes an unreadable entry).
    pub fn write(&self, cni_dir: &Path) -> Result<PathBuf, CniError> {
        let p = Self::path(
            cni_dir,
            &self.network_name,
            &self.container_id,
            &self.if_name,
        );
        write_replacing(&p, &serde_json::to_vec(self).unwrap_or_default(), false)?;
        Ok(p)
    }

    /// Reads one entry; a missing file is `Ok(None)`, a truncated or corrupt one an error
    /// naming the file.
    pub fn read(path: &Path) -> Result<Option<ResultCache>, CniError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot read", path, e)),
        };
        let c: ResultCache =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(path, &e.to_string()))?;
        if c.kind != Self::KIND {
            return Err(corrupt(
                path,
                &format!("field kind is {:?}, not {:?}", c.kind, Self::KIND),
            ));
        }
        Ok(Some(c))
    }

    /// Every entry of `container_id` under `cni_dir` (readable or not), by file name.
    pub fn of_container(cni_dir: &Path, container_id: &str) -> Vec<PathBuf> {
        let dir = cni_dir.join("results");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let needle = format!("-{container_id}-");
        let mut out: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                !is_temporary(&n) && n.contains(&needle)
            })
            .map(|e| e.path())
            .collect();
        out.sort();
        out
    }
}

/// A network name as a file name part (libcni uses it as is; `/` would escape the
/// directory, so it is replaced).
fn sanitize(network: &str) -> String {
    network.replace(['/', '\0'], "_")
}

fn corrupt(path: &Path, why: &str) -> CniError {
    CniError::new(
        CniError::DECODE,
        format!("cache file {} is corrupt: {why}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn atomic_write_and_result_cache_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let conf = json!({"cniVersion": "1.0.0", "name": "a/b", "type": "bridge"});
        let c = ResultCache::new(
            "c1",
            "eth0",
            &conf,
            &[("K".into(), "V".into())],
            &Map::new(),
            &json!({"cniVersion": "1.0.0"}),
        );
        let p = c.write(dir.path()).unwrap();
        assert_eq!(p, dir.path().join("results/a_b-c1-eth0"));
        let back = ResultCache::read(&p).unwrap().unwrap();
        assert_eq!(back, c);
        assert_eq!(back.conf(&p).unwrap(), conf);
        let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["kind"], "cniCacheV1");
        assert_eq!(v["cniArgs"], json!([["K", "V"]]));
        assert_eq!(ResultCache::of_container(dir.path(), "c1"), vec![p.clone()]);
        assert!(ResultCache::of_container(dir.path(), "c2").is_empty());
        // No temporary file is left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("results"))
                .unwrap()
                .count(),
            1
        );
        // Truncated: an error naming the file, not a panic.
        std::fs::write(&p, &std::fs::read(&p).unwrap()[..20]).unwrap();
        let e = ResultCache::read(&p).unwrap_err();
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("a_b-c1-eth0"), "{}", e.msg);
        assert!(
            ResultCache::read(&dir.path().join("none"))
                .unwrap()
                .is_none()
        );
        remove(&p).unwrap();
        remove(&p).unwrap();
    }
}
