//! The thick daemon, run in-process on temporary directories: its socket, the protocol as
//! Multus's shim speaks it, health and readiness, fail closed, the configuration it writes,
//! clean shutdown, and the shim's client against it.

mod daemon_support;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::time::Duration;

use daemon_support::{Daemon, cni_body, http, wait_for};
use multus_shim::cni::{CniError, Request};
use multus_shim::daemon::client::{ClientOptions, forward_with};

const CONF: &str = r#"{"cniVersion":"0.3.1","name":"multus-cni-network","type":"multus-shim","daemonSocketDir":"/run/multus"}"#;

fn add_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/var/run/netns/none"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
        ),
        ("CNI_PATH", "/usr/lib/cni"),
        ("PATH", "/usr/sbin:/usr/bin"),
    ]
}

fn with_command(cmd: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut env = add_env();
    env[0].1 = cmd;
    env
}

/// Whether an answer came from the plugin rather than from the daemon's fail-closed gate.
fn reached_plugin(status: u16, v: &serde_json::Value) -> bool {
    status == 200 || !v["msg"].as_str().unwrap_or("").contains("not ready")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_0600_and_serves_health_and_readiness() {
    let d = Daemon::start(&[]).await;
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(d.socket.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(leftovers, vec!["multus.sock"], "no temporary left behind");

    assert_eq!(http(&d.socket, "GET", "/healthz", "").await.unwrap().0, 200);
    let (status, body) = http(&d.socket, "GET", "/readyz", "").await.unwrap();
    assert_eq!(status, 500);
    assert!(body.contains("readiness indicator file"), "{body}");
    d.set_ready();
    d.wait_ready().await;
    assert_eq!(http(&d.socket, "GET", "/nope", "").await.unwrap().0, 404);
    assert_eq!(http(&d.socket, "GET", "/cni", "").await.unwrap().0, 405);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_is_refused_with_11_until_the_readiness_file_exists_del_always_served() {
    let d = Daemon::start(&[]).await;
    let (status, v) = d.post_cni(&cni_body(&add_env(), CONF)).await;
    assert_eq!(status, 400);
    assert_eq!(v["code"], CniError::TRY_AGAIN_LATER);
    assert_eq!(
        v["cniVersion"], "0.3.1",
        "the error is in the configuration's version"
    );
    let msg = v["msg"].as_str().unwrap();
    assert!(msg.contains(&d.ready_file.display().to_string()), "{msg}");
    for cmd in ["CHECK", "GC"] {
        let (_, v) = d.post_cni(&cni_body(&with_command(cmd), CONF)).await;
        assert_eq!(v["code"], 11, "{cmd}: {v}");
    }
    let (_, v) = d.post_cni(&cni_body(&with_command("STATUS"), CONF)).await;
    assert_eq!(v["code"], CniError::PLUGIN_NOT_AVAILABLE, "{v}");

    let (status, v) = d.post_cni(&cni_body(&with_command("DEL"), CONF)).await;
    assert!(
        reached_plugin(status, &v),
        "DEL is served before ready: {v}"
    );

    d.set_ready();
    d.wait_ready().await;
    let (status, v) = d.post_cni(&cni_body(&add_env(), CONF)).await;
    assert!(
        reached_plugin(status, &v),
        "ADD reaches the plugin once ready: {v}"
    );

    // The indicator goes away (the primary network is being reinstalled): closed again.
    std::fs::remove_file(&d.ready_file).unwrap();
    let (status, v) = d.post_cni(&cni_body(&add_env(), CONF)).await;
    assert_eq!((status, v["code"].clone()), (400, 11.into()), "{v}");
    assert_eq!(http(&d.socket, "GET", "/readyz", "").await.unwrap().0, 500);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_is_refused_until_the_cluster_state_has_synced() {
    // An API server that never answers: the state cannot sync.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:9\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n",
    )
    .unwrap();
    let kc = kubeconfig.display().to_string();
    let d = Daemon::start_in(dir, &["--kubeconfig", &kc], false).await;
    d.set_ready();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, v) = d.post_cni(&cni_body(&add_env(), CONF)).await;
    assert_eq!(status, 400);
    assert_eq!(v["code"], 11, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("has not synced"), "{v}");
    let (_, body) = http(&d.socket, "GET", "/readyz", "").await.unwrap();
    assert!(body.contains("has not synced"), "{body}");
    let (status, v) = d.post_cni(&cni_body(&with_command("DEL"), CONF)).await;
    assert!(
        reached_plugin(status, &v),
        "DEL is served without the cluster: {v}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_decode_errors() {
    let d = Daemon::start(&[]).await;
    for body in ["not json", r#"{"env":{},"config":"%%%"}"#, r#"{"env":[]}"#] {
        let (status, v) = d.post_cni(body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(v["code"], CniError::DECODE, "{body}: {v}");
    }
    // Past the body limit: refused, and the daemon keeps serving.
    let big = format!(r#"{{"env":{{}},"config":"{}"}}"#, "A".repeat(3 << 20));
    match http(&d.socket, "POST", "/cni", &big).await {
        Ok((status, body)) => {
            assert_eq!(status, 400, "{body}");
            assert!(body.contains("at most"), "{body}");
        }
        // The daemon answered and closed while we were still writing: the kernel resets
        // the connection over the unread rest, and the answer may be lost with it.
        Err(e) => assert!(e.contains("reset") || e.contains("pipe"), "{e}"),
    }
    assert_eq!(http(&d.socket, "GET", "/healthz", "").await.unwrap().0, 200);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_removes_the_socket_but_not_a_successors() {
    let d = Daemon::start(&[]).await;
    d.set_ready();
    d.wait_ready().await;
    let socket = d.socket.clone();
    let dir = d.stop().await;
    assert!(!socket.exists(), "socket removed on shutdown");
    drop(dir);

    // A successor's socket is not removed by the predecessor's exit.
    let a = Daemon::start(&[]).await;
    let sockdir = a.socket.parent().unwrap().display().to_string();
    let inode = |p: &std::path::Path| std::fs::symlink_metadata(p).map(|m| m.ino()).ok();
    let a_inode = inode(&a.socket);
    // b's start returns once the path answers, and a answers there until b has bound its
    // own socket over it: wait for b's socket (another inode) before stopping a.
    let b = Daemon::start(&["--socket-dir", &sockdir]).await;
    let sock = b.socket.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while inode(&sock) == a_inode {
        assert!(
            std::time::Instant::now() < deadline,
            "b never bound its socket"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Keep a's directory (which holds the shared socket directory) until the end.
    let _a_dir = a.stop().await;
    assert!(sock.exists(), "the newer daemon's socket stays");
    assert_eq!(http(&sock, "GET", "/healthz", "").await.unwrap().0, 200);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    // A socket file nobody listens on, as a killed daemon leaves it.
    drop(std::os::unix::net::UnixListener::bind(run.join("multus.sock")).unwrap());
    let d = Daemon::start_in(dir, &[], true).await;
    assert_eq!(http(&d.socket, "GET", "/healthz", "").await.unwrap().0, 200);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_configuration_overrides_the_shims_but_not_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("daemon-config.json");
    let ready = dir.path().join("ready-from-file");
    std::fs::write(
        &conf,
        format!(
            r#"{{"cniVersion":"1.0.0","readinessindicatorfile":"{}","socketDir":"/nowhere"}}"#,
            ready.display()
        ),
    )
    .unwrap();
    let c = conf.display().to_string();
    let d = Daemon::start_in(
        dir,
        &["--config", &c, "--readiness-indicator-file", "-"],
        true,
    )
    .await;
    // The readiness indicator comes from the daemon's configuration file.
    let (_, v) = d.post_cni(&cni_body(&add_env(), CONF)).await;
    assert_eq!(v["code"], 11, "{v}");
    assert!(
        v["msg"].as_str().unwrap().contains("ready-from-file"),
        "{v}"
    );
    // Its cniVersion does not replace the shim's: the answer is in the shim's version.
    assert_eq!(v["cniVersion"], "0.3.1", "{v}");
    std::fs::write(&ready, "").unwrap();
    d.wait_ready().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_writes_and_follows_00_multus_and_cleans_up_on_exit() {
    let dir = tempfile::tempdir().unwrap();
    let netd = dir.path().join("net.d");
    std::fs::create_dir_all(&netd).unwrap();
    std::fs::write(
        netd.join("10-bridge.conf"),
        r#"{"cniVersion":"0.4.0","name":"podnet","type":"bridge","capabilities":{"portMappings":true}}"#,
    )
    .unwrap();
    let d = Daemon::start_in(
        dir,
        &["--multus-conf-file", "auto", "--cleanup-config-on-exit"],
        true,
    )
    .await;
    let conf = d.conf_dir.join("00-multus.conf");
    let c = conf.clone();
    wait_for("00-multus.conf", Duration::from_secs(10), || {
        let c = c.clone();
        async move { c.exists() }
    })
    .await;
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&conf).unwrap()).unwrap();
    assert_eq!(v["type"], "multus-shim");
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(
        v["clusterNetwork"],
        d.conf_dir.join("10-bridge.conf").display().to_string()
    );
    assert_eq!(
        v["daemonSocketDir"],
        d.socket.parent().unwrap().display().to_string()
    );
    assert_eq!(v["capabilities"]["portMappings"], true);

    // A new first configuration (CNI 1.0): regenerated as a conflist, the .conf removed.
    std::fs::write(
        d.conf_dir.join("05-kube.conflist"),
        r#"{"cniVersion":"1.0.0","name":"kube","plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();
    let list = d.conf_dir.join("00-multus.conflist");
    let (l, c) = (list.clone(), conf.clone());
    wait_for("00-multus.conflist", Duration::from_secs(10), || {
        let (l, c) = (l.clone(), c.clone());
        async move { l.exists() && !c.exists() }
    })
    .await;
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
    assert_eq!(v["plugins"][0]["type"], "multus-shim");
    let dir = d.stop().await;
    assert!(
        !dir.path().join("net.d/00-multus.conflist").exists(),
        "removed on exit"
    );
    assert!(
        dir.path().join("net.d/05-kube.conflist").exists(),
        "others untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_exports_multus_request_counter() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start(&["--metrics-addr", &addr]).await;
    d.post_cni(&cni_body(&add_env(), CONF)).await;
    let a = addr.clone();
    let text = tokio::task::spawn_blocking(move || {
        let addr = a;
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(
        text.contains(r#"multus_server_request_total{command="ADD",result="11"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"multus_server_requests_rejected_total{reason="not_ready"} 1"#),
        "{text}"
    );
    // The metrics endpoint's /readyz follows the socket's.
    let get = |path: &'static str| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
    };
    assert!(get("/readyz").await.unwrap().contains(" 503 "));
    d.set_ready();
    wait_for("the metrics /readyz", Duration::from_secs(10), || {
        let r = get("/readyz");
        async move { r.await.unwrap().contains(" 200 ") }
    })
    .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_waits_for_readyz_and_forwards() {
    let d = Daemon::start(&[]).await;
    let mut req = Request {
        stdin: CONF.as_bytes().to_vec(),
        ..Default::default()
    };
    for (k, v) in add_env() {
        req.env.insert(k.into(), v.into());
    }
    let opts = ClientOptions {
        ready_timeout: Duration::from_millis(300),
        poll_interval: Duration::from_millis(20),
    };
    // Not ready within the bound: error 11 naming what the daemon waits for.
    let e = forward_with(&d.socket, req.clone(), &opts)
        .await
        .unwrap_err();
    assert_eq!(e.code, 11);
    assert!(e.msg.contains("readiness indicator"), "{}", e.msg);

    // Ready while the client polls: the request goes through to the plugin.
    let ready = d.ready_file.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::fs::write(ready, "").unwrap();
    });
    let opts = ClientOptions {
        ready_timeout: Duration::from_secs(10),
        ..opts
    };
    match forward_with(&d.socket, req.clone(), &opts).await {
        Ok(_) => {}
        Err(e) => assert!(!e.msg.contains("not ready"), "{e}"),
    }
    let socket = d.socket.clone();
    d.stop().await;
    // The daemon gone: DEL succeeds (logged), ADD fails with 11.
    req.env.insert("CNI_COMMAND".into(), "DEL".into());
    assert_eq!(forward_with(&socket, req.clone(), &opts).await, Ok(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_finishes_its_headers_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = Daemon::start(&[]).await;
    let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    s.write_all(b"POST /cni HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let start = std::time::Instant::now();
    let r = tokio::time::timeout(
        multus_shim::daemon::HEADER_READ_TIMEOUT + Duration::from_secs(5),
        s.read_to_end(&mut buf),
    )
    .await;
    assert!(r.is_ok(), "closed by the daemon, not by our timeout");
    assert!(start.elapsed() >= multus_shim::daemon::HEADER_READ_TIMEOUT - Duration::from_secs(1));
    assert_eq!(http(&d.socket, "GET", "/healthz", "").await.unwrap().0, 200);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_multus_conf_file_is_copied_under_its_kind_of_name() {
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("my-multus.json");
    let list =
        r#"{"cniVersion":"1.0.0","name":"multus-cni-network","plugins":[{"type":"multus-shim"}]}"#;
    std::fs::write(&mine, list).unwrap();
    let m = mine.display().to_string();
    let d = Daemon::start_in(dir, &["--multus-conf-file", &m], true).await;
    let target = d.conf_dir.join("00-multus.conflist");
    let t = target.clone();
    wait_for("00-multus.conflist", Duration::from_secs(10), || {
        let t = t.clone();
        async move { t.exists() }
    })
    .await;
    assert_eq!(std::fs::read_to_string(&target).unwrap(), list);
    let dir = d.stop().await;
    assert!(
        dir.path().join("net.d/00-multus.conflist").exists(),
        "kept without --cleanup-config-on-exit"
    );
}
