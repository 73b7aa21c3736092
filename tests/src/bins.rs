//! The workspace's own binaries, for end-to-end tests: built once per test process (a no-op
//! when up to date) and found under the workspace target directory.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The target directory cargo uses for this workspace.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        None => workspace_root().join("target"),
    }
}

static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();

/// The newest modification time of the files under `dir`.
fn newest(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    let mut latest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest(&path)
        } else {
            entry.metadata().ok().and_then(|m| m.modified().ok())
        };
        latest = latest.max(t);
    }
    latest
}

/// Whether the binary is older than the sources of its package (`metalnet-X` lives in `X/`:
/// `src/`, `Cargo.toml`, and `bpf/` for the C programs its build script compiles) or of the
/// common crate.
fn stale(path: &std::path::Path, name: &str) -> bool {
    let Some(built) = std::fs::metadata(path).ok().and_then(|m| m.modified().ok()) else {
        return true;
    };
    let root = workspace_root();
    let package_dir = name.strip_prefix("metalnet-").unwrap_or(name);
    [root.join(package_dir), root.join("config")]
        .iter()
        .filter_map(|d| {
            newest(&d.join("src"))
                .max(newest(&d.join("bpf")))
                .max(newest_file(&d.join("Cargo.toml")))
        })
        .any(|t| t > built)
}

fn newest_file(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).ok().and_then(|m| m.modified().ok())
}

/// The path of workspace binary `name` (its package has the same name), built with
/// `cargo build -p NAME` when missing or older than its sources. (Building unconditionally
/// would rebuild the common crate each time: `cargo test` of the lab unifies features
/// differently.)
pub fn binary(name: &str) -> Result<PathBuf, String> {
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    let path = target_dir().join("debug").join(name);
    if !built.iter().any(|b| b == name) && stale(&path, name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "--quiet", "-p", name, "--bin", name])
            .output()
            .map_err(|e| format!("running cargo build -p {name}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cargo build -p {name} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        built.push(name.to_string());
    }
    if !path.exists() {
        return Err(format!("{} does not exist after building", path.display()));
    }
    Ok(path)
}

/// The `multus-shim` CNI meta-plugin (package `multus-shim` in `multus-shim/`), built like the
/// other workspace binaries. The lab's own plugins (`cni-stub`) are binaries of this crate:
/// integration tests find them with `env!("CARGO_BIN_EXE_cni-stub")`.
pub fn multus_shim() -> Result<PathBuf, String> {
    binary("multus-shim")
}
