//! Removing leftovers of labs (namespaces starting with `mnl`, their processes, their dirs).

use super::{LAB_PREFIX_MARKER, run};
use std::path::Path;
use std::time::{Duration, Instant};

/// What [`down`] removed.
#[derive(Debug, Default, Clone)]
pub struct DownReport {
    pub namespaces: Vec<String>,
    /// `(pid, command)` of killed processes.
    pub processes: Vec<(u32, String)>,
    pub dirs: Vec<std::path::PathBuf>,
}

fn is_lab_name(name: &str) -> bool {
    // `mnl` + 5 id characters, then `-host` (namespace) or `.lab` (directory).
    name.len() > 8
        && name.starts_with(LAB_PREFIX_MARKER)
        && name[3..8].chars().all(|c| c.is_ascii_alphanumeric())
        && (name[8..].starts_with('-') || &name[8..] == ".lab")
}

fn netns_pids(netns: &str) -> Vec<u32> {
    run(&["ip", "netns", "pids", netns])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// SIGKILLs every process in a namespace and waits (bounded) for them to go away.
/// Returns what was killed.
pub(crate) fn kill_netns_pids(netns: &str) -> Vec<(u32, String)> {
    let mut killed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pids = netns_pids(netns);
        if pids.is_empty() || Instant::now() >= deadline {
            return killed;
        }
        for pid in pids {
            if !killed.iter().any(|(p, _)| *p == pid) {
                killed.push((pid, comm(pid)));
            }
            // SAFETY: kill(2) on a pid listed in the namespace a moment ago; only SIGKILL.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the process that created lab `prefix` is still alive (per the lab's owner file).
fn owner_alive(prefix: &str) -> bool {
    let owner = super::lab_dir(prefix).join(super::OWNER_FILE);
    std::fs::read_to_string(owner)
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes leftovers of any lab: kills processes in `mnl*` namespaces, deletes those
/// namespaces and the `mnl*.lab` directories in the temp dir. This also tears down labs of
/// tests that are still running; see [`down_orphans`].
pub fn down() -> DownReport {
    down_where(|_| true)
}

/// Like [`down`], but spares labs whose creating process is still alive.
pub fn down_orphans() -> DownReport {
    down_where(|prefix| !owner_alive(prefix))
}

fn down_where(select: impl Fn(&str) -> bool) -> DownReport {
    let mut report = DownReport::default();
    let listing = run(&["ip", "netns", "list"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in listing.lines() {
        // Lines look like `name` or `name (id: 3)`.
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if !is_lab_name(name) || !select(&name[..8]) {
            continue;
        }
        report.processes.extend(kill_netns_pids(name));
        match run(&["ip", "netns", "del", name]) {
            Ok(_) => report.namespaces.push(name.to_string()),
            Err(e) => tracing::warn!(netns = name, error = %e, "deleting namespace failed"),
        }
    }
    // The demo's service proxies leave bpffs mounts in their lab directory (unmounted before
    // the directory goes) and cgroups `<prefix>-<node>` under the cgroup2 mount.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let tmp = std::env::temp_dir();
    for mount_point in mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
    {
        let lab = Path::new(mount_point)
            .strip_prefix(&tmp)
            .ok()
            .and_then(|rest| rest.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        if let Some(lab) = lab
            && is_lab_name(&lab)
            && select(&lab[..8])
        {
            let _ = run(&["umount", "-l", mount_point]);
        }
    }
    if let Ok(cgroup2) = super::proxy::cgroup2_mount()
        && let Ok(entries) = std::fs::read_dir(&cgroup2)
    {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_lab_name(&name) && select(&name[..8]) && std::fs::remove_dir(entry.path()).is_ok()
            {
                report.dirs.push(entry.path());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_lab_name(&name)
                && select(&name[..8])
                && std::fs::remove_dir_all(entry.path()).is_ok()
            {
                report.dirs.push(entry.path());
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::is_lab_name;

    #[test]
    fn recognises_lab_names_only() {
        assert!(is_lab_name("mnlab12c-node1"));
        assert!(is_lab_name("mnlab12c.lab"));
        assert!(!is_lab_name("mnl"));
        assert!(!is_lab_name("mnlab12cx-node1"));
        assert!(!is_lab_name("other-node1"));
        assert!(!is_lab_name("mnlab12c.tmp"));
    }

    /// A demo killed with SIGKILL leaves a node's bpffs mounted in its lab directory and its
    /// cgroup: `down` removes both (needs root, as every lab).
    #[test]
    fn removes_a_lab_s_bpffs_mounts_and_cgroups() {
        let lab = super::super::Lab::new("down_proxy_leftovers").unwrap();
        let prefix = lab.prefix().to_string();
        let bpf = lab.dir().join("node1/bpffs");
        std::fs::create_dir_all(&bpf).unwrap();
        super::run(&["mount", "-t", "bpf", "bpf", bpf.to_str().unwrap()]).unwrap();
        let cgroup2 = super::super::proxy::cgroup2_mount().unwrap();
        let cgroup = cgroup2.join(format!("{prefix}-node1"));
        std::fs::create_dir(&cgroup).unwrap();
        let report = super::down_where(|p| p == prefix);
        assert!(report.dirs.contains(&cgroup), "{report:?}");
        assert!(!cgroup.exists());
        assert!(!lab.dir().exists(), "{report:?}");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mountinfo.contains(&prefix), "{mountinfo}");
    }
}
