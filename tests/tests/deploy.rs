//! The manifests under `deploy/` hold together: every document parses, each workload's
//! ServiceAccount, RBAC binding, volumes and ConfigMaps exist, every argument a container
//! passes to one of our binaries is accepted by that binary, and the Flannel configuration
//! shipped for metalnet-vxlan is valid. (No API server can run here, so this is as close to
//! `kubectl apply` as CI gets.)

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use metalnet::manifest;
use metalnet_lab::bins;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    bins::workspace_root().join("deploy")
}

/// Every document of every `deploy/*.yaml` (not `crds/`, which has its own test), with the
/// file it came from.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests under deploy/");
    let mut docs = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in manifest::yaml_documents(&path, &text) {
            let (location, v) = doc.unwrap_or_else(|e| panic!("{e}"));
            for key in ["apiVersion", "kind"] {
                assert!(v[key].is_string(), "{location}: a document without {key}");
            }
            assert!(
                v["metadata"]["name"].is_string(),
                "{location}: a {} without metadata.name",
                v["kind"]
            );
            docs.push((name.clone(), v));
        }
    }
    docs
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .map(|(_, v)| v)
        .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
}

/// Whether the ClusterRole `role` grants `verb` on `resource` of API group `group`.
fn grants(role: &Value, group: &str, resource: &str, verb: &str) -> bool {
    role["rules"].as_array().unwrap().iter().any(|r| {
        str_list(&r["apiGroups"]).iter().any(|g| g == group)
            && str_list(&r["resources"]).iter().any(|x| x == resource)
            && str_list(&r["verbs"]).iter().any(|v| v == verb)
    })
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

/// Every DaemonSet and Deployment: its ServiceAccount exists in its namespace and is bound
/// to a ClusterRole that exists; every volumeMount names a declared volume; every ConfigMap
/// volume names a ConfigMap shipped alongside.
#[test]
fn workloads_reference_what_exists() {
    let docs = documents();
    let workloads: Vec<&(String, Value)> = docs
        .iter()
        .filter(|(_, v)| v["kind"] == "DaemonSet" || v["kind"] == "Deployment")
        .collect();
    assert!(workloads.len() >= 3, "controller, speaker and vxlan");
    for (file, w) in workloads {
        let what = format!("{file}: {}/{}", w["kind"], w["metadata"]["name"]);
        let ns = w["metadata"]["namespace"].as_str().expect("namespaced");
        let pod = &w["spec"]["template"]["spec"];
        let labels = &w["spec"]["template"]["metadata"]["labels"];
        for (k, v) in w["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&labels[k], v, "{what}: selector {k} does not match the pod");
        }
        let sa = pod["serviceAccountName"]
            .as_str()
            .expect("serviceAccountName");
        let account = find(&docs, "ServiceAccount", sa)
            .unwrap_or_else(|| panic!("{what}: ServiceAccount {sa} is not defined"));
        assert_eq!(account["metadata"]["namespace"], ns, "{what}");
        let binding = docs
            .iter()
            .map(|(_, v)| v)
            .find(|v| {
                v["kind"] == "ClusterRoleBinding"
                    && v["subjects"].as_array().into_iter().flatten().any(|s| {
                        s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == ns
                    })
            })
            .unwrap_or_else(|| panic!("{what}: no ClusterRoleBinding for {sa}"));
        let role = binding["roleRef"]["name"].as_str().unwrap();
        assert!(
            find(&docs, "ClusterRole", role).is_some(),
            "{what}: ClusterRole {role} is not defined"
        );
        let volumes: BTreeSet<&str> = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str())
            .collect();
        for v in pod["volumes"].as_array().into_iter().flatten() {
            if let Some(cm) = v["configMap"]["name"].as_str() {
                let found = find(&docs, "ConfigMap", cm)
                    .unwrap_or_else(|| panic!("{what}: ConfigMap {cm} is not defined"));
                assert_eq!(found["metadata"]["namespace"], ns, "{what}: ConfigMap {cm}");
            }
        }
        let containers = pod["containers"].as_array().into_iter().flatten();
        let inits = pod["initContainers"].as_array().into_iter().flatten();
        for c in containers.chain(inits) {
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let name = m["name"].as_str().unwrap();
                assert!(
                    volumes.contains(name),
                    "{what}: container {} mounts undeclared volume {name}",
                    c["name"]
                );
            }
        }
    }
}

/// Every container that runs one of our binaries passes arguments the binary accepts (the
/// binary parses them, then prints its help because of a trailing `--help`), and the
/// Prometheus scrape annotation names the port `--metrics-addr` listens on.
#[test]
fn container_arguments_are_accepted_by_our_binaries() {
    let docs = documents();
    let ours = [
        "metalnet-controller",
        "metalnet-speaker",
        "metalnet-vxlan",
        "metalnet-router",
        "multus-shim",
    ];
    let mut checked = 0;
    for (file, w) in &docs {
        let pod = &w["spec"]["template"]["spec"];
        for c in pod["containers"].as_array().into_iter().flatten() {
            let command = str_list(&c["command"]);
            let Some(bin) = command.first().filter(|b| ours.contains(&b.as_str())) else {
                continue;
            };
            let args = str_list(&c["args"]);
            let path = bins::binary(bin).unwrap();
            let out = Command::new(&path)
                .args(&command[1..])
                .args(&args)
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{file}: {bin} rejects {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let metrics_port = args
                .iter()
                .find_map(|a| a.strip_prefix("--metrics-addr="))
                .and_then(|a| a.rsplit(':').next());
            let scrape_port =
                w["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"].as_str();
            assert_eq!(
                metrics_port, scrape_port,
                "{file}: {bin}: --metrics-addr and the prometheus.io/port annotation differ"
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} containers of ours found");
}

/// The Flannel configuration shipped with metalnet-vxlan is valid for metalnet-vxlan and is
/// a Flannel CNI configuration list (the `flannel` plugin first, as Flannel ships it).
#[test]
fn vxlan_config_map_is_valid_flannel_configuration() {
    let docs = documents();
    let cm = find(&docs, "ConfigMap", "metalnet-vxlan-cfg").expect("metalnet-vxlan-cfg");
    let net_conf = cm["data"]["net-conf.json"].as_str().unwrap();
    let parsed = metalnet_vxlan::netconf::NetConf::parse(net_conf).unwrap();
    assert_eq!(parsed.backend.type_name(), "vxlan");
    let cni: Value = serde_json::from_str(cm["data"]["cni-conf.json"].as_str().unwrap()).unwrap();
    assert_eq!(cni["plugins"][0]["type"], "flannel");
    assert!(cni["cniVersion"].is_string());
}

/// multus.yaml: everything in kube-system (Multus's multusNamespace, no Namespace of its
/// own), the RBAC the daemon needs, a privileged host-network DaemonSet running
/// `multus-shim daemon` with every host path delegates use mounted at the same place, an
/// init container that installs the shim by rename (never writing over a running binary),
/// and the NetworkAttachmentDefinition CRD shipped under crds/.
#[test]
fn multus_manifest_holds_together() {
    let text = std::fs::read_to_string(deploy_dir().join("multus.yaml")).unwrap();
    let path = deploy_dir().join("multus.yaml");
    let docs: Vec<Value> = manifest::yaml_documents(&path, &text)
        .into_iter()
        .map(|d| d.unwrap_or_else(|e| panic!("{e}")).1)
        .collect();
    for d in &docs {
        assert_ne!(d["kind"], "Namespace", "multus.yaml runs in kube-system");
        if !["ClusterRole", "ClusterRoleBinding"].contains(&d["kind"].as_str().unwrap()) {
            assert_eq!(d["metadata"]["namespace"], "kube-system", "{}", d["kind"]);
        }
    }
    let docs: Vec<(String, Value)> = docs
        .into_iter()
        .map(|d| ("multus.yaml".to_string(), d))
        .collect();

    // RBAC: each (group, resource, verb) the daemon uses is granted.
    let role = find(&docs, "ClusterRole", "multus-shim").expect("ClusterRole multus-shim");
    let granted = |group: &str, resource: &str, verb: &str| grants(role, group, resource, verb);
    for verb in ["get", "list", "watch"] {
        assert!(granted("", "pods", verb), "pods {verb}");
        assert!(
            granted("k8s.cni.cncf.io", "network-attachment-definitions", verb),
            "network-attachment-definitions {verb}"
        );
    }
    for verb in ["update", "patch"] {
        assert!(granted("", "pods/status", verb), "pods/status {verb}");
    }
    for verb in ["create", "patch"] {
        assert!(granted("", "events", verb), "events {verb}");
    }
    assert!(!granted("", "pods", "delete") && !granted("", "secrets", "get"));

    let ds = find(&docs, "DaemonSet", "multus-shim").expect("DaemonSet multus-shim");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let c = &pod["containers"][0];
    assert_eq!(str_list(&c["command"]), ["multus-shim", "daemon"]);
    assert_eq!(c["securityContext"]["privileged"], true);
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "NODE_NAME"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
        "the daemon watches the pods of its node"
    );
    // Host paths the delegates see mounted at the same place as on the host.
    let host_path = |volume: &str| -> String {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap_or_else(|| panic!("volume {volume} is not a hostPath"))
            .to_string()
    };
    let mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            (
                m["mountPath"].as_str().unwrap().to_string(),
                host_path(name),
            )
        })
        .collect();
    for needed in [
        "/etc/cni/net.d",
        "/opt/cni/bin",
        "/run/multus",
        "/var/lib/cni",
        "/run/netns",
    ] {
        assert!(
            mounts.iter().any(|(m, h)| m == needed && h == needed),
            "{needed} is not mounted from the host at the same path: {mounts:?}"
        );
    }
    let args = str_list(&c["args"]);
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")).map(str::to_string))
    };
    assert_eq!(flag("socket-dir").as_deref(), Some("/run/multus"));
    assert_eq!(flag("cni-conf-dir").as_deref(), Some("/etc/cni/net.d"));

    // The binary is installed by copy to a temporary name in the same directory, then rename.
    let init = &pod["initContainers"][0];
    let script = str_list(&init["command"])
        .into_iter()
        .chain(str_list(&init["args"]))
        .collect::<Vec<_>>()
        .join(" ");
    let tmp = "/host/opt/cni/bin/.multus-shim.new";
    let cp = script.find(&format!("cp /usr/local/bin/multus-shim {tmp}"));
    let mv = script.find(&format!("mv -f {tmp} /host/opt/cni/bin/multus-shim"));
    assert!(
        matches!((cp, mv), (Some(a), Some(b)) if a < b),
        "install is not copy-then-rename: {script}"
    );
    let init_mount = &init["volumeMounts"][0];
    assert_eq!(init_mount["mountPath"], "/host/opt/cni/bin");
    assert_eq!(
        host_path(init_mount["name"].as_str().unwrap()),
        "/opt/cni/bin"
    );

    // The NetworkAttachmentDefinition CRD ships with the others.
    let crd_path = deploy_dir().join("crds/network-attachment-definitions.k8s.cni.cncf.io.yaml");
    let crd_text = std::fs::read_to_string(&crd_path).unwrap();
    let crd = manifest::yaml_documents(&crd_path, &crd_text)
        .into_iter()
        .next()
        .unwrap()
        .unwrap()
        .1;
    assert_eq!(crd["kind"], "CustomResourceDefinition");
    assert_eq!(crd["spec"]["group"], "k8s.cni.cncf.io");
    assert_eq!(crd["spec"]["names"]["kind"], "NetworkAttachmentDefinition");
}

/// router.yaml: the RBAC the router uses (Nodes, Services and EndpointSlices read and
/// watched, Events written), a host-network DaemonSet with NET_ADMIN, and kube-router's
/// argument names (so a kube-router DaemonSet's arguments carry over).
#[test]
fn router_manifest_holds_together() {
    let path = deploy_dir().join("router.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<(String, Value)> = manifest::yaml_documents(&path, &text)
        .into_iter()
        .map(|d| {
            (
                "router.yaml".to_string(),
                d.unwrap_or_else(|e| panic!("{e}")).1,
            )
        })
        .collect();
    let role = find(&docs, "ClusterRole", "metalnet-router").expect("ClusterRole metalnet-router");
    let granted = |group: &str, resource: &str, verb: &str| grants(role, group, resource, verb);
    for verb in ["get", "list", "watch"] {
        assert!(granted("", "nodes", verb), "nodes {verb}");
        assert!(granted("", "services", verb), "services {verb}");
        assert!(
            granted("discovery.k8s.io", "endpointslices", verb),
            "endpointslices {verb}"
        );
    }
    for verb in ["create", "patch"] {
        assert!(granted("", "events", verb), "events {verb}");
    }
    let ds = find(&docs, "DaemonSet", "metalnet-router").expect("DaemonSet metalnet-router");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let c = &pod["containers"][0];
    assert_eq!(str_list(&c["command"]), ["metalnet-router"]);
    assert!(
        str_list(&c["securityContext"]["capabilities"]["add"]).contains(&"NET_ADMIN".to_string())
    );
    let args = str_list(&c["args"]);
    for arg in [
        "--run-router=true",
        "--run-service-proxy=true",
        "--cluster-asn=64512",
        "--bpf-dir=/sys/fs/bpf/metalnet",
    ] {
        assert!(args.contains(&arg.to_string()), "{arg} in {args:?}");
    }
    // The service proxy: privileged, the host's bpffs (pins outlive the container, mounts
    // propagate back) and cgroup v2 tree, and --cgroup-root pointing into that mount.
    assert_eq!(c["securityContext"]["privileged"], true);
    let mount = |name: &str| {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("volumeMount {name}"))
            .clone()
    };
    let host_path = |name: &str| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volume {name}"))["hostPath"]["path"]
            .clone()
    };
    assert_eq!(mount("bpffs")["mountPath"], "/sys/fs/bpf");
    assert_eq!(mount("bpffs")["mountPropagation"], "Bidirectional");
    assert_eq!(host_path("bpffs"), "/sys/fs/bpf");
    assert_eq!(host_path("cgroup"), "/sys/fs/cgroup");
    let cgroup_mount = mount("cgroup")["mountPath"].as_str().unwrap().to_string();
    assert!(
        args.contains(&format!("--cgroup-root={cgroup_mount}")),
        "--cgroup-root on the host cgroup mount {cgroup_mount}: {args:?}"
    );
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "NODE_NAME"),
        "NODE_NAME from spec.nodeName"
    );
}
