//! The lab's container runtime ([`metalnet_lab::cni`]) against Debian's real CNI plugins in
//! `/usr/lib/cni` (bridge + host-local, macvlan on a veth master, ptp) and the test stub
//! plugin (`cni-stub`, for GC and STATUS). Needs root (network namespaces).

use std::path::{Path, PathBuf};
use std::time::Duration;

use metalnet_lab::Lab;
use metalnet_lab::cni::{
    self, Attachment, CniCommand, DEBIAN_CNI_PATH, NetConf, PodSandbox, Runtime,
    host_local_allocations, offloads_off,
};
use serde_json::{Value, json};

const PING: Duration = Duration::from_secs(10);

struct Setup {
    lab: Lab,
    node: metalnet_lab::Host,
    rt: Runtime,
    ipam: PathBuf,
    bin: PathBuf,
}

fn setup(test: &str) -> Setup {
    let lab = Lab::new(test).unwrap();
    let node = lab.host("node").unwrap();
    let bin = lab.dir().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cni-stub"), bin.join("stub")).unwrap();
    let rt = Runtime::new(
        &node,
        vec![bin.clone(), PathBuf::from(DEBIAN_CNI_PATH)],
        &lab.dir().join("cache"),
    );
    let ipam = lab.dir().join("ipam");
    Setup {
        lab,
        node,
        rt,
        ipam,
        bin,
    }
}

fn bridge_conf(ipam: &Path) -> NetConf {
    NetConf::new(json!({
        "cniVersion": "1.0.0", "name": "podnet",
        "plugins": [{
            "type": "bridge", "bridge": "cni0", "isGateway": true,
            "ipam": {"type": "host-local", "dataDir": ipam.display().to_string(),
                     "ranges": [[{"subnet": "192.0.2.0/26"}]]}
        }, {"type": "tuning", "capabilities": {"mac": true}}]
    }))
}

fn result_ip(result: &Value) -> String {
    let addr = result["ips"][0]["address"].as_str().unwrap();
    addr.split('/').next().unwrap().to_string()
}

#[test]
fn bridge_and_host_local_add_ping_check_del() {
    let s = setup("cni_runtime_bridge");
    let conf = bridge_conf(&s.ipam);
    let a = PodSandbox::new(&s.lab, "default", "a", "uid-a").unwrap();
    let b = PodSandbox::new(&s.lab, "default", "b", "uid-b").unwrap();
    let mut att_a = a.attachment("eth0");
    // tuning declares the `mac` capability: the runtime passes it in runtimeConfig.
    att_a
        .capability_args
        .insert("mac".into(), json!("02:00:00:00:0a:01"));
    let ra = s.rt.add(&conf, &att_a).unwrap();
    let rb = s.rt.add(&conf, &b.attachment("eth0")).unwrap();
    let (ip_a, ip_b) = (result_ip(&ra), result_ip(&rb));
    assert_ne!(ip_a, ip_b);
    let eth0 = a.interface("eth0").unwrap().expect("eth0 in pod a");
    assert_eq!(eth0.mac, "02:00:00:00:0a:01");
    assert_eq!(eth0.addrs[0].addr().to_string(), ip_a);
    assert!(
        a.routes()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "192.0.2.0/26")
    );
    a.host().wait_ping(&ip_b, PING).unwrap();
    b.host().wait_ping(&ip_a, PING).unwrap();

    // The cache is libcni's.
    let cached = s.rt.cached("podnet", &att_a).expect("a cached result");
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(cached["ifName"], "eth0");
    assert_eq!(cached["containerId"], a.container_id.as_str());
    assert_eq!(cached["result"], ra);
    assert!(
        s.rt.cache_path("podnet", &a.container_id, "eth0")
            .starts_with(s.lab.dir())
    );
    s.rt.check(&conf, &att_a).unwrap();

    let allocated = host_local_allocations(&s.ipam);
    assert_eq!(allocated.len(), 2, "{allocated:?}");
    assert!(
        allocated
            .iter()
            .any(|x| x.ip.to_string() == ip_a && x.container_id == a.container_id)
    );
    s.rt.del(&conf, &att_a).unwrap();
    assert!(a.interface("eth0").unwrap().is_none());
    let left = host_local_allocations(&s.ipam);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].ip.to_string(), ip_b);
    assert!(s.rt.cached("podnet", &att_a).is_none());
    // A second DEL succeeds (nothing left to delete), and CHECK has no cache to check.
    s.rt.del(&conf, &att_a).unwrap();
    assert!(s.rt.check(&conf, &att_a).is_err());
    s.rt.del(&conf, &b.attachment("eth0")).unwrap();
    assert!(host_local_allocations(&s.ipam).is_empty());
}

#[test]
fn macvlan_on_a_veth_master() {
    let s = setup("cni_runtime_macvlan");
    // The master is a veth of the node whose peer sits on another lab host, so it has carrier.
    let peer = s.lab.host("wire").unwrap();
    s.lab.wire(&s.node, "mvm0", &peer, "mvm0").unwrap();
    offloads_off(s.node.netns(), "mvm0").unwrap();
    offloads_off(peer.netns(), "mvm0").unwrap();
    let conf = NetConf::new(json!({
        "cniVersion": "0.4.0", "name": "mv", "type": "macvlan", "master": "mvm0", "mode": "bridge",
        "ipam": {"type": "host-local", "dataDir": s.ipam.display().to_string(),
                 "ranges": [[{"subnet": "192.0.2.64/26"}]]}
    }));
    let a = PodSandbox::new(&s.lab, "default", "a", "uid-a").unwrap();
    let b = PodSandbox::new(&s.lab, "default", "b", "uid-b").unwrap();
    let ra = s.rt.add(&conf, &a.attachment("net1")).unwrap();
    let rb = s.rt.add(&conf, &b.attachment("net1")).unwrap();
    // 0.4.0 results carry `version` on each address.
    assert_eq!(ra["ips"][0]["version"], "4");
    a.host().wait_ping(&result_ip(&rb), PING).unwrap();
    s.rt.check(&conf, &a.attachment("net1")).unwrap();
    s.rt.del(&conf, &a.attachment("net1")).unwrap();
    s.rt.del(&conf, &b.attachment("net1")).unwrap();
    assert!(host_local_allocations(&s.ipam).is_empty());
    assert!(a.interface("net1").unwrap().is_none());
}

#[test]
fn ptp_reaches_the_node() {
    let s = setup("cni_runtime_ptp");
    let conf = NetConf::new(json!({
        "cniVersion": "1.0.0", "name": "p2p", "type": "ptp",
        "ipam": {"type": "host-local", "dataDir": s.ipam.display().to_string(),
                 "ranges": [[{"subnet": "192.0.2.128/26"}]]}
    }));
    let a = PodSandbox::new(&s.lab, "default", "a", "uid-a").unwrap();
    let r = s.rt.add(&conf, &a.attachment("eth0")).unwrap();
    let gw = r["ips"][0]["gateway"].as_str().unwrap().to_string();
    a.host().wait_ping(&gw, PING).unwrap();
    s.rt.del(&conf, &a.attachment("eth0")).unwrap();
    assert!(host_local_allocations(&s.ipam).is_empty());
}

#[test]
fn del_without_the_netns_frees_the_address() {
    let s = setup("cni_runtime_del_gone");
    let conf = bridge_conf(&s.ipam);
    let a = PodSandbox::new(&s.lab, "default", "a", "uid-a").unwrap();
    s.rt.add(&conf, &a.attachment("eth0")).unwrap();
    a.remove_netns();
    let mut att = a.attachment("eth0");
    att.netns = None;
    s.rt.del(&conf, &att).unwrap();
    assert!(host_local_allocations(&s.ipam).is_empty());
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn stub_records_gc_status_and_fails_on_demand() {
    let s = setup("cni_runtime_stub");
    let record = s.lab.dir().join("stub.jsonl");
    let conf = NetConf::new(json!({
        "cniVersion": "1.1.0", "name": "stubnet",
        "plugins": [{"type": "stub", "record": record.display().to_string(),
                     "capabilities": {"portMappings": true}}]
    }));
    let v = s.rt.version("stub", "1.1.0").unwrap();
    assert!(
        v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.1.0"))
    );
    let a = PodSandbox::new(&s.lab, "ns1", "a", "uid-a").unwrap();
    let b = PodSandbox::new(&s.lab, "ns1", "b", "uid-b").unwrap();
    let mut att_a = a.attachment("eth0");
    att_a
        .capability_args
        .insert("portMappings".into(), json!([{"hostPort": 8080}]));
    let r = s.rt.add(&conf, &att_a).unwrap();
    assert_eq!(r["interfaces"][0]["name"], "eth0");
    s.rt.add(&conf, &b.attachment("eth0")).unwrap();
    s.rt.status(&conf).unwrap();
    // GC keeps b: a's cached attachment gets DEL, then GC names b as valid.
    s.rt.gc(&conf, &[(b.container_id.clone(), "eth0".into())])
        .unwrap();
    let calls = records(&record);
    let commands: Vec<&str> = calls
        .iter()
        .map(|c| c["command"].as_str().unwrap())
        .collect();
    assert_eq!(commands, ["ADD", "ADD", "STATUS", "DEL", "GC"]);
    let add = &calls[0];
    assert_eq!(add["env"]["CNI_CONTAINERID"], a.container_id.as_str());
    assert_eq!(add["env"]["CNI_NETNS"], a.netns_path());
    assert_eq!(add["env"]["CNI_IFNAME"], "eth0");
    let args = cni::parse_cni_args(add["env"]["CNI_ARGS"].as_str().unwrap());
    assert_eq!(args["K8S_POD_NAMESPACE"], "ns1");
    assert_eq!(args["K8S_POD_NAME"], "a");
    assert_eq!(args["K8S_POD_UID"], "uid-a");
    assert_eq!(args["IgnoreUnknown"], "1");
    assert_eq!(
        add["stdin"]["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080}]})
    );
    assert_eq!(add["stdin"]["name"], "stubnet");
    assert!(
        add["env"]["CNI_PATH"]
            .as_str()
            .unwrap()
            .contains(DEBIAN_CNI_PATH)
    );
    // DEL got the cached result as prevResult.
    assert_eq!(calls[3]["stdin"]["prevResult"], r);
    assert_eq!(calls[3]["env"]["CNI_CONTAINERID"], a.container_id.as_str());
    // ... with the attachment's cached arguments and namespace.
    assert_eq!(calls[3]["env"]["CNI_ARGS"], add["env"]["CNI_ARGS"]);
    assert_eq!(calls[3]["env"]["CNI_NETNS"], a.netns_path());
    assert_eq!(
        calls[4]["stdin"]["cni.dev/valid-attachments"],
        json!([{"containerID": b.container_id, "ifname": "eth0"}])
    );
    assert!(calls[4]["env"].get("CNI_CONTAINERID").is_none());
    assert!(s.rt.cached("stubnet", &att_a).is_none());

    // Failures on demand come back as CNI error objects.
    let failing = NetConf::new(json!({
        "cniVersion": "1.1.0", "name": "failnet",
        "plugins": [{"type": "stub", "fail": {"ADD": 117, "STATUS": 50}, "failMsg": "boom"}]
    }));
    let e = s.rt.add(&failing, &a.attachment("net1")).unwrap_err();
    assert_eq!(e.code(), Some(117), "{e}");
    assert!(e.text().contains("boom"));
    assert_eq!(s.rt.status(&failing).unwrap_err().code(), Some(50));
    // Invalid JSON on stdin: decode error.
    let e =
        s.rt.exec_plugin(
            "stub",
            CniCommand::Add,
            Some(&a.attachment("x")),
            b"{not json",
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(6));
    // ADD without the attachment's variables: an environment error.
    let e =
        s.rt.exec_plugin("stub", CniCommand::Add, None, br#"{"cniVersion": "1.1.0"}"#)
            .unwrap_err();
    assert_eq!(e.code(), Some(4), "{e}");
    assert!(e.text().contains("CNI_CONTAINERID"), "{e}");
    // A version it does not know: incompatible version.
    let e =
        s.rt.exec_plugin(
            "stub",
            CniCommand::Add,
            Some(&a.attachment("x")),
            br#"{"cniVersion": "9.9.9"}"#,
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(1), "{e}");
    // A missing plugin is the runtime's error, not a plugin's.
    let e =
        s.rt.exec_plugin("nope", CniCommand::Add, Some(&a.attachment("x")), b"{}")
            .unwrap_err();
    assert_eq!(e.code(), None);
    let _ = &s.bin;
}

#[test]
fn plugin_calls_are_bounded_in_time() {
    let mut s = setup("cni_runtime_timeout");
    let slow = s.bin.join("slow");
    std::fs::write(&slow, "#!/bin/sh\nsleep 30\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.rt.timeout = Duration::from_millis(300);
    let start = std::time::Instant::now();
    let e = s.rt.status(&NetConf::new(json!({
        "cniVersion": "1.1.0", "name": "slow", "type": "slow"
    })));
    assert!(e.unwrap_err().text().contains("no answer"));
    assert!(start.elapsed() < Duration::from_secs(10));
    let _ = Attachment::clone;
}

#[test]
fn sandboxes_are_removed_on_drop_also_on_panic() {
    let s = setup("cni_runtime_sandbox_drop");
    let a = PodSandbox::new(&s.lab, "default", "a", "uid-a").unwrap();
    let b = PodSandbox::new(&s.lab, "default", "b", "uid-b").unwrap();
    assert_ne!(a.netns(), b.netns());
    assert_ne!(a.container_id, b.container_id);
    let path = PathBuf::from(a.netns_path());
    assert!(path.exists());
    drop(a);
    assert!(!path.exists(), "removed on drop");
    let path_b = PathBuf::from(b.netns_path());
    let lab = &s.lab;
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _c = PodSandbox::new(lab, "default", "c", "uid-c").unwrap();
        panic!("a failing test");
    }));
    assert!(unwound.is_err());
    let path_c = PathBuf::from(format!("/run/netns/{}-pod-c", s.lab.prefix()));
    assert!(!path_c.exists(), "removed while unwinding");
    drop(b);
    assert!(!path_b.exists());
}
