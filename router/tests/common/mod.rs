//! Helpers the kernel tests of the service proxy share (root only, like the tests).

use std::process::Command;

/// A cgroup v2 directory of our own under the cgroup2 mount, removed on drop.
pub struct Cgroup {
    pub path: std::path::PathBuf,
}

impl Cgroup {
    pub fn new(tag: &str) -> Cgroup {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = mountinfo
            .lines()
            .find_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                (post.split_whitespace().next() == Some("cgroup2"))
                    .then(|| pre.split_whitespace().nth(4).map(str::to_string))
                    .flatten()
            })
            .expect("a cgroup2 mount in /proc/self/mountinfo");
        let path = std::path::Path::new(&root).join(format!("mnl-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Cgroup { path }
    }

    /// Runs a Python script as a process of this cgroup in the network namespace `ns`, killed
    /// after `timeout` seconds; asserts it succeeded and returns what it printed.
    pub fn run_python(&self, ns: &str, timeout: u32, script: &str) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec timeout {timeout} nsenter --net=/run/netns/{ns} python3 -c \"$0\"",
                self.path.display()
            ))
            .arg(script)
            .output()
            .expect("running the client");
        assert!(
            out.status.success(),
            "client in {}: {}",
            self.path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The client processes have exited, but the cgroup may take a moment to empty.
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                // Gone already: a test may remove it as part of what it checks.
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => {}
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("leftover cgroup {}", self.path.display());
    }
}

/// Turns off checksum offloads on `dev` in the namespace `ns`: without this veth never
/// verifies L4 checksums and a wrong rewrite would pass.
pub fn checksum_offloads_off(ns: &str, dev: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ethtool", "-K", dev])
        .args(["tx", "off", "rx", "off"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ethtool on {dev}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// TCP and UDP checksum errors counted in a namespace (/proc/net/snmp and snmp6).
pub fn csum_errors(ns: &str) -> u64 {
    let read = |f: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "cat", f])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let snmp = read("/proc/net/snmp");
    let mut total = 0;
    let lines: Vec<&str> = snmp.lines().collect();
    for pair in lines.chunks(2) {
        if let [head, vals] = pair
            && (head.starts_with("Tcp:") || head.starts_with("Udp:"))
        {
            for (h, v) in head.split_whitespace().zip(vals.split_whitespace()) {
                if h == "InCsumErrors" {
                    total += v.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    for l in read("/proc/net/snmp6").lines() {
        if let Some(("Udp6InCsumErrors", v)) = l
            .split_once(char::is_whitespace)
            .map(|(a, b)| (a, b.trim()))
        {
            total += v.parse::<u64>().unwrap_or(0);
        }
    }
    total
}
