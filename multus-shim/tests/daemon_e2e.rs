//! The shim's client through the real daemon to a stub delegate: the result comes back in
//! the shim configuration's cniVersion, and the daemon's own configuration replaces the
//! shim's keys before the plugin reads them.

mod daemon_support;

use std::time::Duration;

use daemon_support::{Daemon, stub_conf, stub_env, stub_plugin};
use multus_shim::cni::Request;
use multus_shim::daemon::client::{ClientOptions, forward_with};

fn request(cmd: &str, id: &str, conf: &str) -> Request {
    Request {
        env: stub_env(cmd, id)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        stdin: conf.as_bytes().to_vec(),
    }
}

fn opts() -> ClientOptions {
    ClientOptions {
        ready_timeout: Duration::from_secs(10),
        poll_interval: Duration::from_millis(20),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_result_is_in_the_shims_cni_version() {
    let d = Daemon::start(&[]).await;
    let bin = stub_plugin(d.dir.path(), "0");
    let mut conf: serde_json::Value = serde_json::from_str(&stub_conf(d.dir.path(), &bin)).unwrap();
    conf["cniVersion"] = "0.4.0".into();
    d.set_ready();
    let r = forward_with(&d.socket, request("ADD", "v1", &conf.to_string()), &opts())
        .await
        .unwrap()
        .expect("ADD prints a result");
    assert_eq!(r["cniVersion"], "0.4.0", "{r}");
    assert_eq!(r["ips"][0]["version"], "4", "0.4.0 form: {r}");
    let del = forward_with(&d.socket, request("DEL", "v1", &conf.to_string()), &opts()).await;
    assert_eq!(del, Ok(None));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_configuration_replaces_the_shims_keys() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stub_plugin(dir.path(), "0");
    // The shim's configuration names an empty binDir; the daemon's names the stub's.
    let empty = dir.path().join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let mut conf: serde_json::Value = serde_json::from_str(&stub_conf(dir.path(), &empty)).unwrap();
    conf["cniVersion"] = "1.0.0".into();
    let daemon_conf = dir.path().join("daemon-config.json");
    std::fs::write(
        &daemon_conf,
        serde_json::json!({"binDir": bin, "cniVersion": "0.3.1"}).to_string(),
    )
    .unwrap();
    let c = daemon_conf.display().to_string();
    let d = Daemon::start_in(dir, &["--config", &c], true).await;
    d.set_ready();
    let r = forward_with(&d.socket, request("ADD", "o1", &conf.to_string()), &opts())
        .await
        .unwrap()
        .expect("ADD prints a result");
    assert_eq!(r["cniVersion"], "1.0.0", "the shim's version stays: {r}");
    let _ = forward_with(&d.socket, request("DEL", "o1", &conf.to_string()), &opts()).await;
    d.stop().await;
}

/// The built binary's `daemon` subcommand: serves, and on SIGTERM removes its socket and
/// exits 0.
#[test]
fn the_binary_daemon_serves_and_stops_cleanly_on_sigterm() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let (run, state) = (dir.path().join("run"), dir.path().join("state"));
    std::fs::create_dir_all(&state).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_multus-shim"))
        .arg("daemon")
        .args(["--socket-dir", run.to_str().unwrap()])
        .args(["--state-dir", state.to_str().unwrap()])
        .args(["--multus-conf-file", "none", "--metrics-addr", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let socket = run.join("multus.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let start = std::time::Instant::now();
    let ready = loop {
        if let Ok((200, _)) = rt.block_on(daemon_support::http(&socket, "GET", "/readyz", "")) {
            break true;
        }
        if start.elapsed() > Duration::from_secs(20) || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(ready, "the daemon answered /readyz 200");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "exits 0 on SIGTERM");
    assert!(!socket.exists(), "socket removed");
}
