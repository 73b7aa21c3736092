//! What the daemon's tests share: starting the real daemon in-process on temporary
//! directories, and a small HTTP/1.1 client on its unix socket.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::json;
use std::time::Duration;

use base64::Engine as _;
use clap::Parser;
use metalnet::daemon::Shutdown;
use multus_shim::daemon::{DaemonArgs, DaemonError, run_until};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: DaemonArgs,
}

/// A daemon running in this process, on its own temporary directories.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub ready_file: PathBuf,
    pub shutdown: Shutdown,
    task: Option<tokio::task::JoinHandle<Result<(), DaemonError>>>,
}

impl Daemon {
    /// Starts a daemon with a state directory, a readiness indicator file (absent), no
    /// metrics and `--multus-conf-file none`, plus `extra` flags (later flags win).
    pub async fn start(extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra, true).await
    }

    /// Like [`Daemon::start`] in `dir`; `state_dir`: pass `--state-dir DIR/state`.
    pub async fn start_in(dir: tempfile::TempDir, extra: &[&str], state_dir: bool) -> Daemon {
        let p = dir.path().to_path_buf();
        let (state, conf, sockdir) = (p.join("state"), p.join("net.d"), p.join("run"));
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        let ready = p.join("ready");
        // Flags and their values; `extra` replaces a default flag's value, and the value
        // "-" drops the flag.
        let mut flags: Vec<(String, Option<String>)> = vec![
            ("--socket-dir".into(), Some(sockdir.display().to_string())),
            ("--cni-conf-dir".into(), Some(conf.display().to_string())),
            (
                "--readiness-indicator-file".into(),
                Some(ready.display().to_string()),
            ),
            ("--metrics-addr".into(), Some("off".into())),
            ("--multus-conf-file".into(), Some("none".into())),
        ];
        if state_dir {
            flags.push(("--state-dir".into(), Some(state.display().to_string())));
        }
        let mut i = 0;
        while i < extra.len() {
            let flag = extra[i].to_string();
            let value = extra
                .get(i + 1)
                .filter(|v| !v.starts_with("--"))
                .map(|v| v.to_string());
            i += if value.is_some() { 2 } else { 1 };
            flags.retain(|(f, _)| *f != flag);
            if value.as_deref() != Some("-") {
                flags.push((flag, value));
            }
        }
        let sockdir = flags
            .iter()
            .find(|(f, _)| f == "--socket-dir")
            .and_then(|(_, v)| v.clone())
            .map_or(sockdir, PathBuf::from);
        let mut argv = vec!["daemon".to_string()];
        for (f, v) in flags {
            argv.push(f);
            argv.extend(v);
        }
        let args = Cli::try_parse_from(argv).unwrap().args;
        let shutdown = Shutdown::new();
        let task = tokio::spawn(run_until(args, shutdown.clone()));
        let socket = sockdir.join("multus.sock");
        let d = Daemon {
            dir,
            socket,
            state_dir: state,
            conf_dir: conf,
            ready_file: ready,
            shutdown,
            task: Some(task),
        };
        let s = d.socket.clone();
        wait_for("the daemon's socket", Duration::from_secs(10), || {
            let s = s.clone();
            async move { http(&s, "GET", "/healthz", "").await.is_ok() }
        })
        .await;
        d
    }

    pub fn set_ready(&self) {
        std::fs::write(&self.ready_file, "").unwrap();
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let s = self.socket.clone();
        wait_for("/readyz 200", Duration::from_secs(10), || {
            let s = s.clone();
            async move { matches!(http(&s, "GET", "/readyz", "").await, Ok((200, _))) }
        })
        .await;
    }

    /// Requests shutdown and waits for the daemon to stop.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.request("test");
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the daemon stops within 60 s")
            .unwrap()
            .unwrap();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    pub async fn post_cni(&self, body: &str) -> (u16, serde_json::Value) {
        let (status, text) = http(&self.socket, "POST", "/cni", body).await.unwrap();
        let v = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
        };
        (status, v)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A failed test still stops its daemon (and its delegates with the runtime).
        self.shutdown.request("test dropped");
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Polls `cond` every 20 ms until true, panicking after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !cond().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One HTTP/1.1 request on a fresh connection: status and body.
pub async fn http(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: dummy\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // The daemon may answer (and close) before reading all of an oversized body: read
    // its answer even when the write fails.
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut out))
        .await
        .map_err(|_| "no answer within 120 s".to_string())?
        .map_err(|e| e.to_string())?;
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

/// A `POST /cni` body exactly as Multus's shim marshals its `api.Request` (Go's
/// encoding/json: a map of the environment, the stdin bytes as base64).
pub fn cni_body(env: &[(&str, &str)], conf: &str) -> String {
    let env: serde_json::Map<String, serde_json::Value> = env
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    format!(
        r#"{{"env":{},"config":"{}"}}"#,
        serde_json::Value::Object(env),
        base64::engine::general_purpose::STANDARD.encode(conf)
    )
}

/// The environment of an ADD or DEL for pod `default/<pod>`.
pub fn pod_env<'a>(
    command: &'a str,
    container: &'a str,
    pod: &'a str,
    netns: &'a str,
    path: &'a str,
) -> Vec<(&'a str, String)> {
    vec![
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", container.to_string()),
        ("CNI_NETNS", netns.to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        (
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={container}"
            ),
        ),
        ("CNI_PATH", path.to_string()),
    ]
}

pub fn body_for(env: &[(&str, String)], conf: &str) -> String {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    cni_body(&env, conf)
}

/// Writes the stub plugin `slow` into `dir`: ADD sleeps `secs` and prints a result; every
/// call appends `start|end <container> <ns since epoch>` to `dir/log`.
pub fn stub_plugin(dir: &Path, secs: &str) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("log");
    let script = format!(
        r#"#!/bin/sh
# A CNI plugin stand-in for the delegates: reads its configuration, sleeps on ADD.
cat >/dev/null
case "$CNI_COMMAND" in
VERSION) echo '{{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"]}}' ;;
ADD)
  echo "start $CNI_CONTAINERID $(date +%s%N)" >> {log}
  sleep {secs}
  echo "end $CNI_CONTAINERID $(date +%s%N)" >> {log}
  echo '{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"'"$CNI_NETNS"'"}}],"ips":[{{"address":"192.0.2.5/24","interface":0}}]}}' ;;
*) ;;
esac
"#,
        log = log.display()
    );
    let path = bin.join("slow");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// A NAD-free configuration whose only delegate is the stub.
pub fn stub_conf(dir: &Path, bin: &Path) -> String {
    json!({
        "cniVersion": "1.0.0", "name": "multus-cni-network", "type": "multus-shim",
        "cniDir": dir.join("cni"), "binDir": bin,
        "delegates": [{"cniVersion": "1.0.0", "name": "slownet", "type": "slow"}],
    })
    .to_string()
}

/// The state has no Pods and the requests name none: only the configuration's delegates.
pub fn stub_env<'a>(cmd: &'a str, id: &'a str) -> Vec<(&'a str, String)> {
    let mut e = pod_env(cmd, id, "", "/var/run/netns/none", "/usr/bin");
    e[4].1 = "IgnoreUnknown=true".into();
    e
}
