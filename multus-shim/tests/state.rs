//! The thin plugin on the state directory: the pod is looked up (fail closed when it is
//! missing or recreated), network-status is written on it and Events are recorded.

mod common;

use common::Lab;
use serde_json::json;

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

#[test]
fn add_on_the_state_directory_writes_network_status_and_events() {
    let Some(lab) = Lab::new("st") else { return };
    let state = lab.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p1", "namespace": "default", "uid": "uid-1"},
        "spec": {"containers": [{"name": "c", "image": "i"}]}});
    std::fs::write(state.join("pod.yaml"), serde_json::to_vec(&pod).unwrap()).unwrap();
    let mut conf = lab.multus("1.0.0", vec![lab.bridge("1.0.0")]);
    conf["stateDir"] = state.to_string_lossy().into_owned().into();
    let args = |name: &str, uid: &str| {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=c-st;K8S_POD_UID={uid}"
        )
    };

    // Unknown pod, then a recreated one (UID differs): try again later, nothing attached.
    let (rc, out) = lab.call(
        "ADD",
        "c-st",
        &conf,
        &[("CNI_ARGS", &args("nope", "uid-1"))],
    );
    assert_eq!((rc, out["code"].as_u64()), (1, Some(11)), "{out}");
    assert!(
        out["msg"].as_str().unwrap().contains("default/nope"),
        "{out}"
    );
    let (rc, out) = lab.call("ADD", "c-st", &conf, &[("CNI_ARGS", &args("p1", "uid-0"))]);
    assert_eq!((rc, out["code"].as_u64()), (1, Some(11)), "{out}");
    assert!(out["msg"].as_str().unwrap().contains("uid-0"), "{out}");
    assert!(lab.pod_links().is_empty());

    let (rc, out) = lab.call("ADD", "c-st", &conf, &[("CNI_ARGS", &args("p1", "uid-1"))]);
    assert_eq!(rc, 0, "{out}");
    let ip = out["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let written = read_all(&state.join("status"));
    assert!(
        written.contains("k8s.v1.cni.cncf.io/network-status"),
        "{written}"
    );
    assert!(written.contains("AddedInterface"), "{written}");
    assert!(
        written.contains(&format!("Add eth0 [{ip}/24] from podnet")),
        "{written}"
    );

    // With every cache lost, DEL plans again from the pod and frees what the plan names.
    std::fs::remove_dir_all(lab.cni_dir()).unwrap();
    assert_eq!(lab.allocated().len(), 1);
    let (rc, out) = lab.call("DEL", "c-st", &conf, &[("CNI_ARGS", &args("p1", "uid-1"))]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(lab.allocated(), Vec::<String>::new());
    assert!(lab.pod_links().is_empty());
    let (rc, out) = lab.call("ADD", "c-st", &conf, &[("CNI_ARGS", &args("p1", "uid-1"))]);
    assert_eq!(rc, 0, "{out}");

    // DEL works from the caches even with the state directory gone.
    std::fs::remove_dir_all(&state).unwrap();
    let (rc, out) = lab.call("DEL", "c-st", &conf, &[("CNI_ARGS", &args("p1", "uid-1"))]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(lab.allocated(), Vec::<String>::new());
}
