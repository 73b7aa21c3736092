//! Named locks in the state directory, so that two daemons of one role never run on one
//! directory at once: an exclusive `flock` on `status/locks/NAME.lock`, which also records the
//! holder (pid, host, since when) for the message the next contender prints.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::state::StateError;

use super::io_err;

/// How often a waiting contender tries again.
const RETRY: Duration = Duration::from_millis(250);

/// A named lock on the state, held until dropped (or until the process dies: the kernel
/// releases a `flock` with the last descriptor).
#[derive(Debug)]
pub struct StateLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl StateLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock file for `name` under `status`, if `name` can name one.
fn lock_path(status: &Path, name: &str) -> Result<PathBuf, StateError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    let path = status.join("locks").join(format!("{name}.lock"));
    if !ok {
        return Err(StateError::Io {
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "lock name {:?}: only letters, digits, '-', '.' and '_' (at most 200, not starting with '.')",
                    name.escape_debug().to_string()
                ),
            ),
        });
    }
    Ok(path)
}

/// Takes the lock `name` if it is free; an error naming the lock file and its holder if not.
pub(super) fn try_lock(status: &Path, name: &str) -> Result<StateLock, StateError> {
    match try_lock_once(status, name)? {
        Ok(lock) => Ok(lock),
        Err((path, holder)) => Err(StateError::Locked { path, holder }),
    }
}

/// Takes the lock `name`, waiting for its holder to release it (logging once who that is).
pub(super) async fn lock_wait(status: PathBuf, name: String) -> Result<StateLock, StateError> {
    let mut logged = None;
    loop {
        let (s, n) = (status.clone(), name.clone());
        let attempt = tokio::task::spawn_blocking(move || try_lock_once(&s, &n))
            .await
            .map_err(|e| StateError::Io {
                path: status.clone(),
                source: std::io::Error::other(e),
            })??;
        match attempt {
            Ok(lock) => {
                if logged.is_some() {
                    tracing::info!(lock = %lock.path.display(), "lock taken; no longer standing by");
                }
                return Ok(lock);
            }
            Err((path, holder)) => {
                if logged.as_ref() != Some(&holder) {
                    tracing::warn!(lock = %path.display(), %holder, "lock held by another process; standing by until it is released");
                    logged = Some(holder);
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

type Attempt = Result<StateLock, (PathBuf, String)>;

fn try_lock_once(status: &Path, name: &str) -> Result<Attempt, StateError> {
    let path = lock_path(status, name)?;
    let dir = status.join("locks");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Ok(Err((path, describe_holder(&text))));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
    }
    let record = format!(
        "pid: {}\nhost: {}\nsince: {}\n",
        std::process::id(),
        hostname(),
        super::events::now_rfc3339()
    );
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(record.as_bytes()))
        .and_then(|()| file.sync_all());
    written.map_err(io_err(&path))?;
    Ok(Ok(StateLock { path, _file: file }))
}

/// "pid 1234 on host-a (since ...)" from a lock file's record.
fn describe_holder(text: &str) -> String {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
            .map(|v| v.trim().escape_debug().to_string())
    };
    match (field("pid"), field("host"), field("since")) {
        (Some(pid), host, since) => {
            let mut s = format!("held by pid {pid}");
            if let Some(h) = host {
                s += &format!(" on {h}");
            }
            if let Some(t) = since {
                s += &format!(" since {t}");
            }
            s
        }
        _ => "held by another process (holder not recorded yet)".to_string(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown host".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_records_are_described() {
        assert_eq!(
            describe_holder("pid: 42\nhost: h1\nsince: 2026-01-01T00:00:00Z\n"),
            "held by pid 42 on h1 since 2026-01-01T00:00:00Z"
        );
        assert!(describe_holder("").contains("not recorded"));
        assert_eq!(
            describe_holder("pid: 4\nhost: a\nb\n"),
            "held by pid 4 on a"
        );
    }

    #[test]
    fn lock_names_are_checked() {
        let status = Path::new("/x/status");
        for bad in ["", "../x", "a/b", ".hidden", "a\nb"] {
            let err = lock_path(status, bad).unwrap_err().to_string();
            assert!(err.contains("/x/status/locks/"), "{err}");
        }
        assert_eq!(
            lock_path(status, "speaker-node-1.example").unwrap(),
            Path::new("/x/status/locks/speaker-node-1.example.lock")
        );
    }
}
