//! What the thick-mode benches share: the daemon run as a child process of the bench binary
//! (`BENCH __daemon FLAGS...`, the same code as `multus-shim daemon`) inside a throwaway
//! "host" namespace, pods in the state directory, the real bridge + host-local plugins, a
//! raw HTTP client on the socket, RSS sampling of a process tree, and percentiles.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Parser;
use metalnet::testing::Netns;
use serde_json::{Value, json};

pub const PLUGINS: &str = "/usr/lib/cni";

#[derive(Parser)]
struct DaemonCli {
    #[command(flatten)]
    args: multus_shim::daemon::DaemonArgs,
}

/// If this process was started as the daemon child, runs it and exits.
pub fn maybe_run_daemon() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) != Some("__daemon") {
        return;
    }
    let args = DaemonCli::parse_from(
        std::iter::once("daemon".to_string()).chain(argv[2..].iter().cloned()),
    )
    .args;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = match rt.block_on(multus_shim::daemon::run(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("daemon: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// Whether the lab can run here (root, Debian's CNI plugins); says why not.
pub fn lab_available() -> bool {
    if !metalnet::testing::is_root() {
        eprintln!("skipping: needs root (network namespaces)");
        return false;
    }
    if !Path::new(PLUGINS).join("bridge").exists() {
        eprintln!("skipping: no CNI plugins in {PLUGINS}");
        return false;
    }
    true
}

/// The lab: a host namespace where the daemon and its delegates run, pod namespaces, and
/// every state in a temporary directory.
pub struct Lab {
    pub host: Netns,
    pub pods: Vec<Netns>,
    pub dir: tempfile::TempDir,
    pub daemon: Option<Child>,
}

impl Lab {
    pub fn new(tag: &str, pods: usize) -> Lab {
        let host = Netns::new(&format!("{tag}h")).expect("root");
        let pods: Vec<Netns> = (0..pods)
            .map(|_| Netns::new(&format!("{tag}p")).expect("root"))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        for d in ["state", "cni", "ipam", "run"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let mut manifests = String::new();
        for i in 0..pods.len() {
            manifests.push_str(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-{i}\n  namespace: default\n  uid: uid-{i}\nspec:\n  nodeName: node1\n  containers:\n  - name: c\n    image: i\n---\n"
            ));
        }
        std::fs::write(dir.path().join("state/pods.yaml"), manifests).unwrap();
        Lab {
            host,
            pods,
            dir,
            daemon: None,
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("run/multus.sock")
    }

    /// The cluster network: bridge + host-local on 192.0.2.0/24.
    pub fn bridge(&self) -> Value {
        json!({"cniVersion": "1.0.0", "name": "podnet", "type": "bridge", "bridge": "mbr0",
               "isGateway": true, "ipam": {"type": "host-local", "dataDir": self.path("ipam"),
               "ranges": [[{"subnet": "192.0.2.0/24", "gateway": "192.0.2.1"}]]}})
    }

    /// The shim's configuration (thick: `daemonSocketDir`).
    pub fn multus_conf(&self) -> Value {
        json!({"cniVersion": "1.0.0", "name": "multus-cni-network", "type": "multus-shim",
               "daemonSocketDir": self.path("run"), "cniDir": self.path("cni"),
               "binDir": PLUGINS, "delegates": [self.bridge()]})
    }

    /// Starts the daemon child in the host namespace with `extra` flags; waits for /readyz.
    pub fn start_daemon(&mut self, extra: &[&str]) {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.host.name()])
            .arg(exe)
            .arg("__daemon")
            .args(["--socket-dir", self.path("run").to_str().unwrap()])
            .args(["--state-dir", self.path("state").to_str().unwrap()])
            .args(["--multus-conf-file", "none", "--metrics-addr", "off"])
            .args(["--log-level", "warn"])
            .args(extra)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        self.daemon = Some(cmd.spawn().expect("the daemon starts"));
        let start = Instant::now();
        while !matches!(http(&self.socket(), "GET", "/readyz", ""), Ok((200, _))) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "daemon not ready in 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("started").id()
    }

    /// SIGTERM to the daemon (by its pid), then waits for it.
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(40) {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }

    /// The CNI environment of pod `i`.
    pub fn env(&self, command: &str, i: usize, container: &str) -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_CONTAINERID".into(), container.into()),
            (
                "CNI_NETNS".into(),
                format!("/run/netns/{}", self.pods[i].name()),
            ),
            ("CNI_IFNAME".into(), "eth0".into()),
            (
                "CNI_ARGS".into(),
                format!(
                    "IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{i};K8S_POD_INFRA_CONTAINER_ID={container};K8S_POD_UID=uid-{i}"
                ),
            ),
            ("CNI_PATH".into(), PLUGINS.into()),
            ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ]
    }

    /// host-local's allocations left (files named by an address).
    pub fn allocated(&self) -> usize {
        let mut n = 0;
        for net in std::fs::read_dir(self.path("ipam"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(net.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if f.file_name()
                    .to_string_lossy()
                    .parse::<std::net::IpAddr>()
                    .is_ok()
                {
                    n += 1;
                }
            }
        }
        n
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_daemon();
    }
}

/// A `POST /cni` body as Multus's shim sends it.
pub fn cni_body(env: &[(String, String)], conf: &Value) -> String {
    let env: serde_json::Map<String, Value> = env
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({"env": env, "config": base64::engine::general_purpose::STANDARD.encode(conf.to_string())})
        .to_string()
}

/// One HTTP/1.1 request on a fresh connection (blocking): status and body.
pub fn http(socket: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(180))).ok();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: dummy\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(req.as_bytes());
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(format!("no header end: {text}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("bad status line: {head}"))?;
    Ok((status, body.to_string()))
}

/// Resident memory of a process in KiB (`VmRSS`), and its peak (`VmHWM`).
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The resident memory of `root` and all its descendants, in KiB.
pub fn tree_rss_kib(root: u32) -> u64 {
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may contain spaces: ppid follows `) S `.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if let Some(ppid) = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
        {
            parent.insert(pid, ppid);
        }
    }
    let in_tree = |mut p: u32| loop {
        if p == root {
            return true;
        }
        match parent.get(&p) {
            Some(&pp) if pp != 0 && pp != p => p = pp,
            _ => return false,
        }
    };
    parent
        .keys()
        .filter(|p| in_tree(**p))
        .filter_map(|p| rss_kib(*p).map(|r| r.0))
        .sum()
}

/// Samples the daemon's and its tree's RSS every 20 ms until `stop`; returns the maxima.
pub struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(u64, u64)>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut daemon, mut tree) = (0, 0);
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                daemon = daemon.max(rss_kib(pid).map_or(0, |r| r.0));
                tree = tree.max(tree_rss_kib(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            (daemon, tree)
        });
        Sampler { stop, handle }
    }

    /// (daemon max RSS, tree max RSS) in KiB.
    pub fn finish(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// The `p`th percentile (0..=100) of `v` (sorted here), nearest rank.
pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A number from the environment, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
