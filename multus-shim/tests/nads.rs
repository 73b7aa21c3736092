//! Pods asking for NetworkAttachmentDefinitions on the state directory, with Debian's real
//! plugins: both annotation forms, requested interface, addresses and MAC, network-status
//! and Events, a missing NAD, and DEL without the state.

mod common;

use common::Lab;
use serde_json::{Value, json};

fn read_all(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.push_str(&read_all(&e.path()));
        } else {
            out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    out
}

fn pod(name: &str, networks: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                     "annotations": {"k8s.v1.cni.cncf.io/networks": networks}},
        "spec": {"containers": [{"name": "c", "image": "i"}]}})
}

fn nad(name: &str, config: &Value) -> Value {
    json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"config": config.to_string()}})
}

fn args(name: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=c-{name};K8S_POD_UID=uid-{name}"
    )
}

#[test]
fn pods_with_nads_in_both_annotation_forms() {
    let Some(lab) = Lab::new("nad") else { return };
    let state = lab.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut mv = lab.macvlan("mvnet", "1.0.0");
    mv.as_object_mut().unwrap().remove("name");
    let stat = json!({"cniVersion": "1.0.0", "name": "statnet", "plugins": [
        {"type": "macvlan", "master": "vm1", "mode": "bridge",
         "ipam": {"type": "static"}, "capabilities": {"ips": true}},
        {"type": "tuning", "capabilities": {"mac": true}}
    ]});
    let manifests = [
        nad("mvnet", &mv),
        nad("statnet", &stat),
        pod("p1", "mvnet@net7"),
        pod(
            "p2",
            r#"[{"name": "statnet", "ips": ["198.51.100.77/24"], "mac": "0a:58:c6:33:64:4d"}, {"name": "mvnet", "interface": "mv0"}]"#,
        ),
        pod("p3", "nosuch"),
        nad(
            "ptpnet",
            &json!({"cniVersion": "1.0.0", "type": "ptp", "ipam": {
            "type": "host-local", "dataDir": lab.ipam_dir(),
            "ranges": [[{"subnet": "203.0.113.0/24", "gateway": "203.0.113.1"}]]}}),
        ),
        pod(
            "p4",
            r#"[{"name": "ptpnet", "default-route": ["203.0.113.1"]}]"#,
        ),
    ];
    for (i, m) in manifests.iter().enumerate() {
        std::fs::write(
            state.join(format!("{i}.yaml")),
            serde_json::to_vec(m).unwrap(),
        )
        .unwrap();
    }
    let mut conf = lab.multus("1.0.0", vec![lab.bridge("1.0.0")]);
    conf["stateDir"] = state.to_string_lossy().into_owned().into();

    // Comma form with a requested interface.
    let (rc, out) = lab.call("ADD", "c-p1", &conf, &[("CNI_ARGS", &args("p1"))]);
    assert_eq!(rc, 0, "{out}");
    let links = lab.pod_links();
    let names: Vec<&str> = links.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(names.len(), 2, "{links:?}");
    let net7 = links.iter().find(|l| l.0 == "net7").expect("net7");
    assert!(net7.2[0].starts_with("198.51.100."), "{links:?}");
    // network-status in Multus's layout, on the pod.
    let patch = std::fs::read_to_string(state.join("status/patches/Pod/default/p1.yaml")).unwrap();
    assert!(
        patch.contains("k8s.v1.cni.cncf.io/network-status"),
        "{patch}"
    );
    assert!(
        patch.contains(r#""name": "podnet","#) && patch.contains(r#""default": true,"#),
        "{patch}"
    );
    assert!(
        patch.contains(r#""name": "default/mvnet","#) && patch.contains(r#""interface": "net7","#),
        "{patch}"
    );
    let written = read_all(&state.join("status"));
    assert!(written.contains("Add net7 ["), "{written}");
    let (rc, out) = lab.call("DEL", "c-p1", &conf, &[("CNI_ARGS", &args("p1"))]);
    assert_eq!(rc, 0, "{out}");
    assert!(lab.pod_links().is_empty());

    // JSON form with addresses and MAC, and an interface name.
    let (rc, out) = lab.call("ADD", "c-p2", &conf, &[("CNI_ARGS", &args("p2"))]);
    assert_eq!(rc, 0, "{out}");
    let links = lab.pod_links();
    let stat = links
        .iter()
        .find(|l| l.0 == "net1")
        .unwrap_or_else(|| panic!("{links:?}"));
    assert_eq!(stat.2, vec!["198.51.100.77/24".to_string()]);
    assert_eq!(stat.1, "0a:58:c6:33:64:4d");
    assert!(links.iter().any(|l| l.0 == "mv0"), "{links:?}");
    let patch = std::fs::read_to_string(state.join("status/patches/Pod/default/p2.yaml")).unwrap();
    assert!(
        patch.contains(r#""198.51.100.77""#) && patch.contains(r#""mac": "0a:58:c6:33:64:4d","#),
        "{patch}"
    );

    let (rc, out) = lab.call("DEL", "c-p2", &conf, &[("CNI_ARGS", &args("p2"))]);
    assert_eq!(rc, 0, "{out}");

    // default-route: the pod's default route moves to the network asking for it.
    let (rc, out) = lab.call("ADD", "c-p4", &conf, &[("CNI_ARGS", &args("p4"))]);
    assert_eq!(rc, 0, "{out}");
    let routes = lab.pod.ip(&["-4", "route", "show", "default"]);
    assert_eq!(
        routes.trim(),
        "default via 203.0.113.1 dev net1",
        "{routes}"
    );
    // The returned (cluster network's) result no longer has its default route.
    assert!(
        !out["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["dst"] == "0.0.0.0/0")),
        "{out}"
    );
    let (rc, out) = lab.call("CHECK", "c-p4", &conf, &[("CNI_ARGS", &args("p4"))]);
    assert_eq!(rc, 0, "{out}");
    let (rc, out) = lab.call("DEL", "c-p4", &conf, &[("CNI_ARGS", &args("p4"))]);
    assert_eq!(rc, 0, "{out}");
    let (rc, out) = lab.call("ADD", "c-p2", &conf, &[("CNI_ARGS", &args("p2"))]);
    assert_eq!(rc, 0, "{out}");

    // A missing NAD: try again later, an Event, nothing attached.
    let (rc, out) = lab.call("ADD", "c-p3", &conf, &[("CNI_ARGS", &args("p3"))]);
    assert_eq!(rc, 1, "{out}");
    assert!(out["msg"].as_str().unwrap().contains("nosuch"), "{out}");
    let written = read_all(&state.join("status"));
    assert!(written.contains("NoNetworkFound"), "{written}");

    // DEL from the caches with the state directory gone.
    std::fs::remove_dir_all(&state).unwrap();
    let (rc, out) = lab.call("DEL", "c-p2", &conf, &[("CNI_ARGS", &args("p2"))]);
    assert_eq!(rc, 0, "{out}");
    let (rc, out) = lab.call("DEL", "c-p3", &conf, &[("CNI_ARGS", &args("p3"))]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(lab.allocated(), Vec::<String>::new());
    assert!(lab.pod_links().is_empty());
}
