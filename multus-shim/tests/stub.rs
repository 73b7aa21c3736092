//! The meta-plugin with small stub delegates of the test's own (CNI 1.1.0 GC and STATUS,
//! failing DEL, crashing and hanging plugins): no namespace needed.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use multus_shim::cni::exec::{Exec, RuntimeConf};
use multus_shim::multus::plan::Delegate;
use multus_shim::plugin::Runner;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_multus-shim");

/// A stub plugin `stub` in `dir/bin`: logs each call's command and stdin under `dir/log`,
/// answers ADD with a 1.1.0 result, and fails STATUS / DEL when `dir/down` / `dir/faildel`
/// exist. `crash` prints garbage and exits 3; `hang` sleeps.
fn stubs(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(dir.join("log")).unwrap();
    let d = dir.display();
    let stub = format!(
        r#"#!/bin/sh
n=$(ls {d}/log | wc -l)
cat > {d}/log/$n.$CNI_COMMAND.json
case "$CNI_COMMAND" in
  ADD) echo '{{"cniVersion":"1.1.0","interfaces":[{{"name":"'$CNI_IFNAME'","sandbox":"'$CNI_NETNS'"}}],"ips":[{{"address":"192.0.2.9/24","interface":0}}]}}';;
  STATUS) if [ -e {d}/down ]; then echo '{{"cniVersion":"1.1.0","code":50,"msg":"not ready"}}'; exit 1; fi;;
  DEL) if [ -e {d}/faildel ]; then echo '{{"cniVersion":"1.1.0","code":100,"msg":"del failed"}}'; exit 1; fi;;
esac
exit 0
"#
    );
    for (name, body) in [
        ("stub", stub.as_str()),
        (
            "crash",
            "#!/bin/sh\necho 'not json'\necho boom >&2\nexit 3\n",
        ),
        ("hang", "#!/bin/sh\nexec sleep 30\n"),
    ] {
        let p = bin.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

fn calls(dir: &Path) -> Vec<(String, Value)> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by_key(|n| n.split('.').next().unwrap().parse::<u32>().unwrap());
    names
        .iter()
        .map(|n| {
            let cmd = n.split('.').nth(1).unwrap().to_string();
            let v = serde_json::from_slice(&std::fs::read(dir.join("log").join(n)).unwrap())
                .unwrap_or(Value::Null);
            (cmd, v)
        })
        .collect()
}

fn call(command: &str, cid: &str, conf: &Value) -> (i32, Value) {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/run/netns/none")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(conf).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(s.trim()).unwrap_or(Value::Null),
    )
}

fn multus(dir: &Path, bin: &Path, delegates: Vec<Value>) -> Value {
    json!({"cniVersion": "1.1.0", "name": "multus-cni-network", "cniDir": dir.join("cni"),
           "binDir": bin, "delegates": delegates})
}

#[test]
fn status_and_gc_go_to_a_1_1_0_cluster_network() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stubs(dir.path());
    let conf = multus(
        dir.path(),
        &bin,
        vec![
            json!({"cniVersion": "1.1.0", "name": "cluster", "type": "stub", "capabilities": {"mac": true}}),
            json!({"cniVersion": "1.1.0", "name": "second", "type": "stub"}),
        ],
    );
    let (rc, out) = call("STATUS", "", &conf);
    assert_eq!(rc, 0, "{out}");
    std::fs::write(dir.path().join("down"), b"").unwrap();
    let (rc, out) = call("STATUS", "", &conf);
    assert_eq!((rc, out["code"].as_u64()), (1, Some(50)), "{out}");
    assert!(
        out["msg"].as_str().unwrap().contains("\"cluster\""),
        "{out}"
    );
    std::fs::remove_file(dir.path().join("down")).unwrap();

    let (rc, out) = call("ADD", "c1", &conf);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(out["ips"][0]["address"], "192.0.2.9/24");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    let (rc, out) = call("GC", "", &gc);
    assert_eq!(rc, 0, "{out}");
    let log = calls(dir.path());
    let cmds: Vec<&str> = log.iter().map(|(c, _)| c.as_str()).collect();
    // STATUS, STATUS (failed), ADD cluster, ADD second, GC of the cluster network only.
    assert_eq!(cmds, ["STATUS", "STATUS", "ADD", "ADD", "GC"], "{log:?}");
    let gc_req = &log[4].1;
    assert_eq!(
        gc_req["cni.dev/valid-attachments"],
        json!([{"containerID": "c1", "ifname": "eth0"}])
    );
    assert_eq!(gc_req["name"], "cluster");
    assert!(gc_req.get("capabilities").is_none());
    // The attachment is valid: nothing deleted.
    assert!(dir.path().join("cni/c1").exists());
}

#[test]
fn retry_delete_on_error_keeps_the_caches() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stubs(dir.path());
    let mut conf = multus(
        dir.path(),
        &bin,
        vec![json!({"cniVersion": "1.0.0", "name": "cluster", "type": "stub"})],
    );
    conf["retryDeleteOnError"] = true.into();
    let (rc, out) = call("ADD", "c1", &conf);
    assert_eq!(rc, 0, "{out}");
    std::fs::write(dir.path().join("faildel"), b"").unwrap();
    let (rc, out) = call("DEL", "c1", &conf);
    assert_eq!((rc, out["code"].as_u64()), (1, Some(100)), "{out}");
    assert!(dir.path().join("cni/c1").exists());
    assert!(dir.path().join("cni/results/cluster-c1-eth0").exists());
    std::fs::remove_file(dir.path().join("faildel")).unwrap();
    let (rc, out) = call("DEL", "c1", &conf);
    assert_eq!(rc, 0, "{out}");
    assert!(!dir.path().join("cni/c1").exists());
    assert!(!dir.path().join("cni/results/cluster-c1-eth0").exists());
    // DEL got the cached result as prevResult.
    let log = calls(dir.path());
    let (cmd, req) = log.last().unwrap();
    assert_eq!(cmd, "DEL");
    assert_eq!(req["prevResult"]["ips"][0]["address"], "192.0.2.9/24");
    // Without the option the caches go even when DEL fails.
    conf["retryDeleteOnError"] = false.into();
    let (rc, _) = call("ADD", "c2", &conf);
    assert_eq!(rc, 0);
    std::fs::write(dir.path().join("faildel"), b"").unwrap();
    let (rc, _) = call("DEL", "c2", &conf);
    assert_eq!(rc, 1);
    assert!(!dir.path().join("cni/c2").exists());
}

#[test]
fn a_crashing_plugin_is_a_cni_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stubs(dir.path());
    let conf = multus(
        dir.path(),
        &bin,
        vec![json!({"cniVersion": "1.0.0", "name": "boomnet", "type": "crash"})],
    );
    let (rc, out) = call("ADD", "c1", &conf);
    assert_eq!(rc, 1, "{out}");
    let msg = out["msg"].as_str().unwrap();
    assert!(
        msg.contains("\"boomnet\"")
            && msg.contains("\"crash\"")
            && msg.contains("exit status: 3")
            && msg.contains("boom"),
        "{msg}"
    );
    assert!(!dir.path().join("cni/c1").exists());
}

#[tokio::test]
async fn a_hanging_plugin_is_killed_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stubs(dir.path());
    let exec = Exec {
        search: vec![bin],
        timeout: Duration::from_millis(300),
    };
    let start = std::time::Instant::now();
    let net = json!({"cniVersion": "1.0.0", "name": "slow", "type": "hang"});
    let e = exec
        .add_network(&net, &RuntimeConf::default())
        .await
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(e.code, 11);
    assert!(
        e.msg.contains("\"slow\"") && e.msg.contains("killed"),
        "{}",
        e.msg
    );
}

/// The orchestration on a hand-made delegate list: a conflist delegate runs its plugins in
/// order with prevResult, DEL in reverse; capability arguments reach only the plugin that
/// declares them.
#[tokio::test]
async fn runner_on_a_hand_made_delegate_list() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stubs(dir.path());
    let runner = Runner {
        exec: Exec {
            search: vec![bin],
            timeout: Duration::from_secs(10),
        },
        cni_dir: dir.path().join("cni"),
        retry_delete_on_error: false,
        abort_after: None,
    };
    let d = Delegate {
        index: 1,
        master: false,
        status_name: "ns/list".into(),
        nad: Some(("ns".into(), "list".into())),
        ifname: "net1".into(),
        conf: json!({"cniVersion": "1.1.0", "name": "list", "plugins": [
            {"type": "stub", "capabilities": {"mac": true}},
            {"type": "stub"}
        ]}),
        runtime_config: json!({"mac": "0a:00:00:00:00:07"})
            .as_object()
            .unwrap()
            .clone(),
        cni_args: vec![("K8S_POD_NAME".into(), "p".into())],
        default_route: vec![],
    };
    let added = runner
        .add("c9", "/run/netns/x", std::slice::from_ref(&d))
        .await
        .unwrap();
    assert_eq!(added.len(), 1);
    runner.del_cached("c9", "/run/netns/x").await.unwrap();
    let log = calls(dir.path());
    let cmds: Vec<&str> = log.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(cmds, ["ADD", "ADD", "DEL", "DEL"]);
    assert_eq!(
        log[0].1["runtimeConfig"],
        json!({"mac": "0a:00:00:00:00:07"})
    );
    assert!(log[0].1.get("prevResult").is_none());
    assert!(log[1].1.get("runtimeConfig").is_none());
    assert_eq!(log[1].1["prevResult"]["interfaces"][0]["name"], "net1");
    assert_eq!(log[1].1["name"], "list");
    assert_eq!(log[2].1["prevResult"]["ips"][0]["address"], "192.0.2.9/24");
    assert!(
        std::fs::read_dir(dir.path().join("cni/results"))
            .unwrap()
            .next()
            .is_none()
    );
}

fn call_with(command: &str, cid: &str, stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/run/netns/none")
        .env("CNI_IFNAME", "eth0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin_pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    // The plugin may stop reading at its limit: write from a thread, ignore a broken pipe.
    let writer = std::thread::spawn(move || {
        let _ = stdin_pipe.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn logs_never_reach_stdout_and_stdin_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stubs(dir.path());
    let mut conf = multus(
        dir.path(),
        &bin,
        vec![json!({"cniVersion": "1.0.0", "name": "cluster", "type": "stub"})],
    );
    conf["logToStderr"] = true.into();
    conf["logLevel"] = "verbose".into();
    let (rc, stdout, stderr) = call_with("ADD", "c1", &serde_json::to_vec(&conf).unwrap());
    assert_eq!(rc, 0, "{stdout}");
    let v: Value = serde_json::from_str(stdout.trim()).expect("stdout holds the result only");
    assert_eq!(v["cniVersion"], "1.1.0");
    assert!(stderr.contains("delegate added"), "{stderr}");
    // A log file instead.
    conf["logToStderr"] = false.into();
    conf["logFile"] = dir
        .path()
        .join("m.log")
        .to_string_lossy()
        .into_owned()
        .into();
    let (rc, stdout, stderr) = call_with("DEL", "c1", &serde_json::to_vec(&conf).unwrap());
    assert_eq!((rc, stdout.as_str(), stderr.as_str()), (0, "", ""));
    assert!(
        !std::fs::read_to_string(dir.path().join("m.log"))
            .unwrap()
            .is_empty()
    );
    // More than 1 MiB on stdin: a decode error, not an unbounded read.
    let mut big = b"{\"cniVersion\":\"1.0.0\",\"x\":\"".to_vec();
    big.resize(2 << 20, b'a');
    let (rc, stdout, _) = call_with("ADD", "c1", &big);
    assert_eq!(rc, 1);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["code"], 6);
    assert!(v["msg"].as_str().unwrap().contains("larger than"), "{v}");
}

#[test]
fn check_needs_0_4_0_and_a_cached_result() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stubs(dir.path());
    let mut conf = multus(
        dir.path(),
        &bin,
        vec![json!({"cniVersion": "1.0.0", "name": "cluster", "type": "stub"})],
    );
    let (rc, out) = call("CHECK", "c1", &conf);
    assert_eq!((rc, out["code"].as_u64()), (1, Some(3)), "{out}");
    assert!(
        out["msg"].as_str().unwrap().contains("no cached result"),
        "{out}"
    );
    let (rc, out) = call("ADD", "c1", &conf);
    assert_eq!(rc, 0, "{out}");
    let (rc, out) = call("CHECK", "c1", &conf);
    assert_eq!(rc, 0, "{out}");
    let log = calls(dir.path());
    let (cmd, req) = log.last().unwrap();
    assert_eq!(cmd, "CHECK");
    assert_eq!(req["prevResult"]["ips"][0]["address"], "192.0.2.9/24");
    conf["cniVersion"] = "0.3.1".into();
    let (rc, out) = call("CHECK", "c1", &conf);
    assert_eq!((rc, out["code"].as_u64()), (1, Some(1)), "{out}");
    assert_eq!(out["cniVersion"], "0.3.1");
}

#[test]
fn daemon_socket_dir_is_not_run_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stubs(dir.path());
    let mut conf = multus(
        dir.path(),
        &bin,
        vec![json!({"cniVersion": "1.0.0", "name": "cluster", "type": "stub"})],
    );
    conf["daemonSocketDir"] = dir.path().join("run").to_string_lossy().into_owned().into();
    let (rc, out) = call("ADD", "c1", &conf);
    assert_eq!(rc, 1, "{out}");
    // No delegate ran in the shim.
    assert!(calls(dir.path()).is_empty());
}

#[test]
fn gc_without_the_valid_list_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stubs(dir.path());
    let conf = multus(
        dir.path(),
        &bin,
        vec![json!({"cniVersion": "1.0.0", "name": "cluster", "type": "stub"})],
    );
    let (rc, out) = call("ADD", "c1", &conf);
    assert_eq!(rc, 0, "{out}");
    let (rc, out) = call("GC", "", &conf);
    assert_eq!((rc, out["code"].as_u64()), (1, Some(6)), "{out}");
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .contains("cni.dev/valid-attachments"),
        "{out}"
    );
    assert!(dir.path().join("cni/c1").exists());
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": 7}]);
    let (rc, out) = call("GC", "", &gc);
    assert_eq!((rc, out["code"].as_u64()), (1, Some(6)), "{out}");
    assert!(dir.path().join("cni/c1").exists());
}
