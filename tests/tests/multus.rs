//! `multus-shim` end to end, as the container runtime meets it: the lab's runtime
//! ([`metalnet_lab::cni`]) calls the binary with the CNI environment and `00-multus.conf` as
//! libcni does, for pod sandboxes in lab namespaces, with Debian's real plugins
//! (`/usr/lib/cni`: bridge, host-local, macvlan on a veth master, static, and ptp, tuning,
//! portmap and bandwidth chained in one NAD) and the test stub
//! (`cni-stub`, for GC, STATUS and failures on demand) as delegates.
//!
//! The expectations are the CNI protocol's and Multus's documented behaviour: interface
//! names (`net<position in the full list>` unless requested), the network-status annotation
//! in Multus's layout, `AddedInterface` / `NoNetworkFound` Events, rollback of a failed ADD,
//! DEL from the cache when the cluster is gone, GC of attachments the runtime no longer
//! lists. Each scenario is written once against [`Env`] and run on every backend:
//!
//! - `dir`: the state directory (`stateDir` in the configuration; network-status under
//!   `DIR/status/patches/Pod/<ns>/<pod>.yaml`, Events under `DIR/status/objects/Event/<ns>/`);
//! - `kube`: the API stand-in ([`ApiServer`], not a real API server) listening on the node's
//!   loopback, `kubeconfig` in the configuration;
//! - `thick`: the state directory through `multus-shim daemon` (`daemonSocketDir` in the
//!   configuration). Its start-up is the hook [`start_thick_daemon`].
//!
//! Needs root (network namespaces). Every test owns a lab (namespaces, temp dir) that is
//! removed on drop, also on failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use metalnet::state::Kind;
use metalnet_lab::apiserver::ApiServer;
use metalnet_lab::cni::{
    CniCallError, CniCommand, DEBIAN_CNI_PATH, NetConf, PodSandbox, Runtime,
    host_local_allocations, offloads_off,
};
use metalnet_lab::lab::wait_for;
use metalnet_lab::{Host, Lab, Process, bins};
use serde_json::{Value, json};

const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
const NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";
/// Where pods and their NetworkAttachmentDefinitions live.
const NS: &str = "tenant";
/// The cluster network (the configuration's first delegate).
const PODNET: &str = "podnet";
const PODNET_SUBNET: &str = "192.0.2.0/26";
const MACVLAN_SUBNET: &str = "192.0.2.64/26";
/// The macvlan NAD's master: a veth of the node.
const MASTER: &str = "mvm0";
const PING: Duration = Duration::from_secs(10);
/// Where the API stand-in listens inside the node's namespace.
const API_ADDR: &str = "127.0.0.1:6443";

/// How `multus-shim` finds the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// Thin plugin on the state directory.
    Dir,
    /// Thin plugin on the Kubernetes API (the stand-in).
    Kube,
    /// The shim forwarding to `multus-shim daemon` on the state directory.
    Thick,
}

/// One test's world: a node namespace where plugins run (bridges live there), the runtime,
/// the state (directory or API stand-in) and the temp directories of every cache.
struct Env {
    backend: Backend,
    rt: Runtime,
    node: Host,
    /// The other end of the macvlan master's veth.
    _wire: Host,
    /// host-local's `dataDir` for every network.
    ipam: PathBuf,
    /// The state directory (Dir and Thick).
    state: PathBuf,
    /// Multus's `cniDir` (delegate caches).
    cni_dir: PathBuf,
    /// Multus's `confDir`.
    conf_dir: PathBuf,
    /// Plugins of this test (`multus-shim`, `stub`), first in `CNI_PATH`.
    bin: PathBuf,
    /// Extra keys of `00-multus.conf` (e.g. `namespaceIsolation`).
    conf_extra: serde_json::Map<String, Value>,
    /// The cluster network's configuration (`delegates[0]`).
    cluster_network: Value,
    api: Option<ApiServer>,
    kubeconfig: Option<PathBuf>,
    daemon: Option<Process>,
    // Dropped last: the API stand-in's tasks run on it.
    tokio: Option<tokio::runtime::Runtime>,
    // Dropped after everything that lives in its namespaces.
    lab: Lab,
}

fn multus_shim() -> PathBuf {
    bins::multus_shim().unwrap_or_else(|e| panic!("{e}"))
}

impl Env {
    fn new(test: &str, backend: Backend) -> Env {
        let lab = Lab::new(test).unwrap();
        let node = lab.host("node").unwrap();
        let wire = lab.host("wire").unwrap();
        lab.wire(&node, MASTER, &wire, MASTER).unwrap();
        offloads_off(node.netns(), MASTER).unwrap();
        offloads_off(wire.netns(), MASTER).unwrap();
        let dir = lab.dir().to_path_buf();
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(multus_shim(), bin.join("multus-shim")).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cni-stub"), bin.join("stub")).unwrap();
        let (state, ipam, cni_dir, conf_dir) = (
            dir.join("state"),
            dir.join("ipam"),
            dir.join("multus"),
            dir.join("multus.d"),
        );
        for d in [&state, &ipam, &cni_dir, &conf_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        let rt = Runtime::new(
            &node,
            vec![bin.clone(), PathBuf::from(DEBIAN_CNI_PATH)],
            &dir.join("cache"),
        );
        let cluster_network = json!({
            "cniVersion": "1.0.0", "name": PODNET, "type": "bridge", "bridge": "cni0",
            "isGateway": true,
            "ipam": {"type": "host-local", "dataDir": ipam.display().to_string(),
                     "ranges": [[{"subnet": PODNET_SUBNET}]]}
        });
        let mut env = Env {
            backend,
            rt,
            node,
            _wire: wire,
            ipam,
            state,
            cni_dir,
            conf_dir,
            bin,
            conf_extra: Default::default(),
            cluster_network,
            api: None,
            kubeconfig: None,
            daemon: None,
            tokio: None,
            lab,
        };
        match backend {
            Backend::Dir => {}
            Backend::Kube => env.start_api(),
            Backend::Thick => start_thick_daemon(&mut env),
        }
        env
    }

    /// The API stand-in on the node's own loopback: the plugin, run inside the node, reaches
    /// it there, and nothing listens outside the lab.
    fn start_api(&mut self) {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let addr: SocketAddr = API_ADDR.parse().unwrap();
        let api = tokio
            .block_on(ApiServer::start_in_netns(self.node.netns(), addr))
            .unwrap();
        self.kubeconfig = Some(api.kubeconfig(self.lab.dir()).unwrap());
        self.api = Some(api);
        self.tokio = Some(tokio);
    }

    /// `00-multus.conf` as the runtime loads it.
    fn multus_conf(&self) -> NetConf {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": "multus-cni-network",
            "type": "multus-shim",
            "confDir": self.conf_dir.display().to_string(),
            "cniDir": self.cni_dir.display().to_string(),
            "binDir": self.bin.display().to_string(),
            "delegates": [self.cluster_network.clone()],
        });
        match self.backend {
            Backend::Dir => conf["stateDir"] = self.state.display().to_string().into(),
            Backend::Kube => {
                conf["kubeconfig"] = self
                    .kubeconfig
                    .as_ref()
                    .map(|k| k.display().to_string())
                    .into()
            }
            Backend::Thick => {
                conf["stateDir"] = self.state.display().to_string().into();
                conf["daemonSocketDir"] = self.socket_dir().display().to_string().into();
            }
        }
        for (k, v) in &self.conf_extra {
            conf[k] = v.clone();
        }
        NetConf::new(conf)
    }

    fn socket_dir(&self) -> PathBuf {
        self.lab.dir().join("run-multus")
    }

    /// Creates or replaces a cluster object (a Pod, a NAD).
    fn put(&self, object: Value) {
        match &self.api {
            Some(api) => {
                api.put(object).unwrap();
            }
            None => {
                let kind = object["kind"].as_str().unwrap().to_lowercase();
                let ns = object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default");
                let name = object["metadata"]["name"].as_str().unwrap();
                let path = self.state.join(format!("{kind}-{ns}-{name}.json"));
                let tmp = path.with_extension("tmp~");
                std::fs::write(&tmp, serde_json::to_vec_pretty(&object).unwrap()).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
            }
        }
    }

    /// A NetworkAttachmentDefinition with `config` as its `spec.config`.
    fn nad(&self, ns: &str, name: &str, config: Value) {
        self.put(json!({
            "apiVersion": "k8s.cni.cncf.io/v1",
            "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"config": config.to_string()},
        }));
    }

    /// The NADs most scenarios use: `macvlan-a` (macvlan on the node's veth, host-local) and
    /// `static-b` (bridge `brb`, static IPAM, `ips` and `mac` capabilities).
    fn standard_nads(&self) {
        self.nad(
            NS,
            "macvlan-a",
            json!({
                "cniVersion": "1.0.0", "type": "macvlan", "master": MASTER, "mode": "bridge",
                "ipam": {"type": "host-local", "dataDir": self.ipam.display().to_string(),
                         "ranges": [[{"subnet": MACVLAN_SUBNET}]]}
            }),
        );
        self.nad(
            NS,
            "static-b",
            json!({
                "cniVersion": "1.0.0", "type": "bridge", "bridge": "brb",
                "capabilities": {"ips": true, "mac": true},
                "ipam": {"type": "static"}
            }),
        );
    }

    /// Creates Pod `name` in [`NS`] on the node with `networks` as its annotation (none if
    /// `None`) and its sandbox; the sandbox carries the Pod's uid as stored.
    fn pod(&self, name: &str, networks: Option<&str>) -> PodSandbox {
        let uid = format!("uid-{name}-0001");
        let mut annotations = serde_json::Map::new();
        if let Some(n) = networks {
            annotations.insert(NETWORKS.into(), n.into());
        }
        self.put(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "uid": uid,
                         "annotations": annotations},
            "spec": {"nodeName": "node", "containers": [{"name": "c", "image": "pause"}]},
        }));
        // The stand-in assigns uids of its own, as the API server does.
        let uid = match &self.api {
            Some(api) => api
                .get(Kind::Pod, Some(NS), name)
                .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_string))
                .unwrap(),
            None => uid,
        };
        if self.api.is_none() {
            // The plugin reads the directory fresh, but give inotify-based caches (thick) a
            // moment to see the new manifest.
            std::thread::sleep(Duration::from_millis(if self.backend == Backend::Thick {
                300
            } else {
                0
            }));
        }
        PodSandbox::new(&self.lab, NS, name, &uid).unwrap()
    }

    fn add(&self, pod: &PodSandbox) -> Result<Value, CniCallError> {
        self.rt.add(&self.multus_conf(), &pod.attachment("eth0"))
    }

    fn del(&self, pod: &PodSandbox) -> Result<(), CniCallError> {
        self.rt.del(&self.multus_conf(), &pod.attachment("eth0"))
    }

    /// The Pod's network-status annotation as stored (`None`: not written).
    fn network_status(&self, pod: &str) -> Option<String> {
        let object = match &self.api {
            Some(api) => api.get(Kind::Pod, Some(NS), pod)?,
            None => {
                let path = self
                    .state
                    .join("status/patches/Pod")
                    .join(NS)
                    .join(format!("{pod}.yaml"));
                let text = std::fs::read_to_string(path).ok()?;
                serde_saphyr::from_str(&text).ok()?
            }
        };
        object["metadata"]["annotations"][NETWORK_STATUS]
            .as_str()
            .map(str::to_string)
    }

    /// Every Event in [`NS`] as stored (core/v1 Events).
    fn events(&self) -> Vec<Value> {
        match &self.api {
            Some(api) => api
                .list(Kind::Event)
                .into_iter()
                .filter(|e| e["metadata"]["namespace"] == NS)
                .collect(),
            None => {
                let dir = self.state.join("status/objects/Event").join(NS);
                let Ok(entries) = std::fs::read_dir(dir) else {
                    return Vec::new();
                };
                entries
                    .flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .filter_map(|t| serde_saphyr::from_str::<Value>(&t).ok())
                    .collect()
            }
        }
    }

    /// `(reason, message)` of the Events about Pod `pod`.
    fn pod_events(&self, pod: &str) -> Vec<(String, String)> {
        self.events()
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == pod || e["regarding"]["name"] == pod)
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_string(),
                    e["note"]
                        .as_str()
                        .or(e["message"].as_str())
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }

    fn wait_event(&self, pod: &str, reason: &str, message_part: &str) {
        wait_for(
            &format!("Event {reason} ({message_part}) about {NS}/{pod}"),
            Duration::from_secs(5),
            || {
                self.pod_events(pod)
                    .iter()
                    .any(|(r, m)| r == reason && m.contains(message_part))
            },
        )
        .unwrap_or_else(|e| panic!("{e}; events: {:?}", self.pod_events(pod)));
    }

    /// host-local's allocations of every network, as `(network, ip, container)`.
    fn allocations(&self) -> Vec<(String, String, String)> {
        host_local_allocations(&self.ipam)
            .into_iter()
            .map(|a| (a.network, a.ip.to_string(), a.container_id))
            .collect()
    }

    /// Makes the cluster unreachable: the state directory removed, or the API stand-in gone.
    fn lose_cluster(&mut self) {
        match self.backend {
            Backend::Dir | Backend::Thick => std::fs::remove_dir_all(&self.state).unwrap(),
            Backend::Kube => {
                self.api = None;
            }
        }
    }

    /// A failure message with the plugin's and the daemon's logs.
    fn explain(&self, e: &CniCallError) -> String {
        let daemon = self.daemon.as_ref().map(Process::logs).unwrap_or_default();
        format!("{e}\ndaemon logs:\n{daemon}")
    }
}

/// Thick mode: starts `multus-shim daemon` in the node on the same state directory, serving
/// `<socket dir>/multus.sock`; the shim's configuration names the socket directory
/// (`daemonSocketDir`, see [`Env::multus_conf`]) and the daemon runs the delegates. The
/// daemon writes no `00-multus.conf` (`--multus-conf-file none`, and its configuration
/// directory is the test's own) and serves no metrics port. This command line is the one hook
/// to adjust if the daemon's flags change.
fn start_thick_daemon(env: &mut Env) {
    let socket_dir = env.socket_dir();
    let net_d = env.lab.dir().join("net.d");
    for d in [&socket_dir, &net_d] {
        std::fs::create_dir_all(d).unwrap();
    }
    let bin = multus_shim();
    let args = [
        bin.display().to_string(),
        "daemon".into(),
        "--state-dir".into(),
        env.state.display().to_string(),
        "--node-name".into(),
        env.node.name().into(),
        "--socket-dir".into(),
        socket_dir.display().to_string(),
        "--cni-conf-dir".into(),
        net_d.display().to_string(),
        "--multus-conf-file".into(),
        "none".into(),
        "--metrics-addr".into(),
        "off".into(),
    ];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = env.node.spawn("multus-shim-daemon", &argv).unwrap();
    let sock = socket_dir.join("multus.sock");
    wait_for("the daemon's socket", Duration::from_secs(20), || {
        sock.exists()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon.logs()));
    env.daemon = Some(daemon);
}

/// The pod's interface names, sorted.
fn ifnames(pod: &PodSandbox) -> Vec<String> {
    let mut names: Vec<String> = pod
        .interfaces()
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    names.sort();
    names
}

fn addr_of(pod: &PodSandbox, ifname: &str) -> String {
    let iface = pod
        .interface(ifname)
        .unwrap()
        .unwrap_or_else(|| panic!("{ifname} in {}: {:?}", pod.netns(), ifnames(pod)));
    iface
        .addrs
        .iter()
        .find(|a| a.addr().is_ipv4())
        .unwrap_or_else(|| panic!("an IPv4 address on {ifname}"))
        .addr()
        .to_string()
}

fn in_subnet(ip: &str, subnet: &str) -> bool {
    let net: ipnet::IpNet = subnet.parse().unwrap();
    net.contains(&ip.parse::<std::net::IpAddr>().unwrap())
}

/// Asserts nothing of `pod`'s attachment is left: no interface but `lo` in its namespace,
/// no address allocated to its container.
fn assert_nothing_attached(env: &Env, pod: &PodSandbox) {
    assert_eq!(ifnames(pod), Vec::<String>::new(), "interfaces left");
    let left: Vec<_> = env
        .allocations()
        .into_iter()
        .filter(|(_, _, c)| *c == pod.container_id)
        .collect();
    assert!(left.is_empty(), "addresses left allocated: {left:?}");
}

// ---- the scenarios ------------------------------------------------------------------------

const A_STATIC: &str = "192.0.2.130";
const A_MAC: &str = "02:00:00:00:0b:01";
const B_STATIC: &str = "192.0.2.131";

/// Pod `a` asks for `macvlan-a` on `net7` and for `static-b` with an address and a MAC; pod
/// `b` (its peer) asks for the same networks.
fn two_nad_pods(env: &Env) -> (PodSandbox, PodSandbox) {
    env.standard_nads();
    let a = env.pod(
        "a",
        Some(&format!(
            r#"[{{"name": "macvlan-a", "interface": "net7"}},
               {{"name": "static-b", "namespace": "{NS}", "ips": ["{A_STATIC}/26"], "mac": "{A_MAC}"}}]"#
        )),
    );
    let b = env.pod(
        "b",
        Some(&format!(
            r#"[{{"name": "macvlan-a", "interface": "net7"}}, {{"name": "static-b", "ips": ["{B_STATIC}/26"]}}]"#
        )),
    );
    (a, b)
}

fn two_nads_attach_route_and_report(backend: Backend) {
    let env = Env::new("multus_two_nads", backend);
    let (a, b) = two_nad_pods(&env);
    let result = env
        .add(&a)
        .unwrap_or_else(|e| panic!("{}", env.explain(&e)));
    env.add(&b)
        .unwrap_or_else(|e| panic!("{}", env.explain(&e)));

    // The ADD's result is the cluster network's, in the configuration's version.
    assert_eq!(result["cniVersion"], "1.0.0", "{result}");
    let result_ip = result["ips"][0]["address"].as_str().unwrap();
    assert!(in_subnet(
        result_ip.split('/').next().unwrap(),
        PODNET_SUBNET
    ));
    assert!(
        result["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "eth0" && i["sandbox"] == a.netns_path().as_str()),
        "{result}"
    );

    // eth0, the requested net7, and net2 (the third in the full list).
    assert_eq!(ifnames(&a), ["eth0", "net2", "net7"]);
    let a_eth0 = addr_of(&a, "eth0");
    let a_net7 = addr_of(&a, "net7");
    assert!(in_subnet(&a_eth0, PODNET_SUBNET));
    assert!(in_subnet(&a_net7, MACVLAN_SUBNET));
    assert_eq!(addr_of(&a, "net2"), A_STATIC);
    assert_eq!(a.interface("net2").unwrap().unwrap().mac, A_MAC);

    // Traffic on each network to the peer.
    for ifname in ["eth0", "net7", "net2"] {
        a.host()
            .wait_ping(&addr_of(&b, ifname), PING)
            .unwrap_or_else(|e| panic!("{ifname}: {e}"));
    }

    // network-status: all three in Multus's layout.
    let status = env.network_status("a").expect("network-status on pod a");
    assert!(
        status.starts_with("[{\n    \"name\": \"podnet\",\n    \"interface\": \"eth0\","),
        "{status}"
    );
    assert!(
        status.contains("\n},{\n    \"name\": \"tenant/macvlan-a\",\n    \"interface\": \"net7\","),
        "{status}"
    );
    assert!(status.ends_with("\n}]"), "{status}");
    let entries: Vec<Value> = serde_json::from_str(&status).unwrap();
    assert_eq!(entries.len(), 3, "{status}");
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [PODNET, "tenant/macvlan-a", "tenant/static-b"]);
    let ifs: Vec<&str> = entries
        .iter()
        .map(|e| e["interface"].as_str().unwrap())
        .collect();
    assert_eq!(ifs, ["eth0", "net7", "net2"]);
    assert_eq!(entries[0]["ips"], json!([a_eth0]));
    assert_eq!(entries[0]["default"], true);
    assert_eq!(entries[0]["mac"], a.interface("eth0").unwrap().unwrap().mac);
    assert_eq!(entries[1]["ips"], json!([a_net7]));
    assert_eq!(entries[1]["mac"], a.interface("net7").unwrap().unwrap().mac);
    assert!(entries[1].get("default").is_none_or(|d| d == false));
    assert_eq!(entries[2]["ips"], json!([A_STATIC]));
    assert_eq!(entries[2]["mac"], A_MAC);
    for e in &entries {
        assert!(e["dns"].is_object(), "dns is always there: {e}");
    }

    // An AddedInterface Event per interface.
    env.wait_event("a", "AddedInterface", "Add eth0 [");
    env.wait_event(
        "a",
        "AddedInterface",
        &format!("Add net7 [{a_net7}/26] from tenant/macvlan-a"),
    );
    env.wait_event(
        "a",
        "AddedInterface",
        &format!("Add net2 [{A_STATIC}/26] from tenant/static-b"),
    );

    // CHECK with the runtime's cached result succeeds on a healthy attachment.
    env.rt
        .check(&env.multus_conf(), &a.attachment("eth0"))
        .unwrap_or_else(|e| panic!("{}", env.explain(&e)));

    // DEL of both frees everything.
    env.del(&a).unwrap();
    env.del(&b).unwrap();
    assert_nothing_attached(&env, &a);
    assert!(env.allocations().is_empty(), "{:?}", env.allocations());
}

/// VERSION answers every version up to 1.1.0; ADD's result comes in the configuration's
/// `cniVersion`, converted as libcni converts (0.4.0: `version` on each address).
fn versions_and_result_conversion(backend: Backend) {
    let mut env = Env::new("multus_versions", backend);
    let v = env.rt.version("multus-shim", "1.0.0").unwrap();
    let supported = v["supportedVersions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for version in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        assert!(supported.contains(&json!(version)), "{version} in {v}");
    }
    env.standard_nads();
    env.conf_extra.insert("cniVersion".into(), json!("0.4.0"));
    let pod = env.pod("v", Some("macvlan-a"));
    let result = env
        .add(&pod)
        .unwrap_or_else(|e| panic!("{}", env.explain(&e)));
    assert_eq!(result["cniVersion"], "0.4.0", "{result}");
    assert_eq!(result["ips"][0]["version"], "4", "{result}");
    assert_eq!(ifnames(&pod), ["eth0", "net1"]);
    env.del(&pod).unwrap();
    assert_nothing_attached(&env, &pod);
}

/// `default-route` on a secondary network: the pod's only default route goes through the
/// requested gateway on that network; the cluster network's default route is removed.
fn default_route_moves_the_default(backend: Backend) {
    let mut env = Env::new("multus_default_route", backend);
    env.cluster_network["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    env.standard_nads();
    let gw = "192.0.2.126";
    let pod = env.pod(
        "d",
        Some(&format!(
            r#"[{{"name": "macvlan-a", "default-route": ["{gw}"]}}]"#
        )),
    );
    env.add(&pod)
        .unwrap_or_else(|e| panic!("{}", env.explain(&e)));
    let defaults: Vec<(String, String)> = pod
        .routes()
        .unwrap()
        .iter()
        .filter(|r| r["dst"] == "default")
        .map(|r| {
            (
                r["gateway"].as_str().unwrap_or_default().to_string(),
                r["dev"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(defaults, [(gw.to_string(), "net1".to_string())]);
    env.del(&pod).unwrap();
    assert_nothing_attached(&env, &pod);
}

/// A Pod whose uid is not the runtime's (a Pod deleted and created again under the same name
/// while the old sandbox is set up) is refused, and nothing is attached.
fn stale_pod_uid_is_refused(backend: Backend) {
    let env = Env::new("multus_stale_uid", backend);
    env.standard_nads();
    let pod = env.pod("s", Some("macvlan-a"));
    let mut att = pod.attachment("eth0");
    if let Some(identity) = att.pod.as_mut() {
        identity.uid = "uid-of-an-older-pod".into();
    }
    let e = env
        .rt
        .add(&env.multus_conf(), &att)
        .expect_err("a stale uid");
    assert!(e.code().is_some(), "{e}");
    assert!(e.text().contains("uid") || e.text().contains("UID"), "{e}");
    assert_nothing_attached(&env, &pod);
}

/// The comma form: `[ns/]name[@ifname]`, items trimmed; unnamed interfaces are named by
/// their position in the full list.
fn comma_form_names_interfaces(backend: Backend) {
    let env = Env::new("multus_comma_form", backend);
    env.standard_nads();
    let pod = env.pod("c", Some(" macvlan-a@net7 , tenant/macvlan-a"));
    env.add(&pod)
        .unwrap_or_else(|e| panic!("{}", env.explain(&e)));
    assert_eq!(ifnames(&pod), ["eth0", "net2", "net7"]);
    assert!(in_subnet(&addr_of(&pod, "net2"), MACVLAN_SUBNET));
    let status: Vec<Value> =
        serde_json::from_str(&env.network_status("c").expect("network-status")).unwrap();
    assert_eq!(status[2]["name"], "tenant/macvlan-a");
    assert_eq!(status[2]["interface"], "net2");
    env.del(&pod).unwrap();
    assert_nothing_attached(&env, &pod);
}

/// DEL removes every interface and frees every address; a second DEL succeeds; DEL works
/// from the cache when the cluster is gone and when the sandbox's namespace is gone.
fn del_frees_everything_also_without_the_cluster(backend: Backend) {
    let mut env = Env::new("multus_del", backend);
    let (a, b) = two_nad_pods(&env);
    env.add(&a)
        .unwrap_or_else(|e| panic!("{}", env.explain(&e)));
    env.add(&b)
        .unwrap_or_else(|e| panic!("{}", env.explain(&e)));
    assert_eq!(
        env.allocations()
            .iter()
            .filter(|(_, _, c)| *c == a.container_id)
            .count(),
        2,
        "eth0 and net7 from host-local: {:?}",
        env.allocations()
    );

    env.del(&a).unwrap();
    assert_nothing_attached(&env, &a);
    assert!(
        env.rt
            .cached("multus-cni-network", &a.attachment("eth0"))
            .is_none()
    );
    env.del(&a).expect("a second DEL succeeds");

    // The cluster is gone: DEL of b still finds its delegates in the cache.
    env.lose_cluster();
    let mut att = b.attachment("eth0");
    b.remove_netns();
    att.netns = None;
    env.rt.del(&env.multus_conf(), &att).unwrap();
    assert!(
        env.allocations().is_empty(),
        "addresses leaked: {:?}",
        env.allocations()
    );
    env.rt.del(&env.multus_conf(), &att).expect("and again");
}

/// A failing second delegate rolls back the first (and the cluster network): nothing is
/// left attached or allocated, and the error names the network.
fn failed_delegate_rolls_back(backend: Backend) {
    let env = Env::new("multus_rollback", backend);
    env.standard_nads();
    // A configuration its plugin refuses on ADD (its master does not exist) and whose DEL
    // is harmless, as the runtime's DEL after the failed ADD needs.
    env.nad(
        NS,
        "broken",
        json!({
            "cniVersion": "1.0.0", "type": "macvlan", "master": "no-such-link",
            "ipam": {"type": "host-local", "dataDir": env.ipam.display().to_string(),
                     "ranges": [[{"subnet": "192.0.2.192/26"}]]}
        }),
    );
    // The stub told to fail.
    let record = env.lab.dir().join("stub-fail.jsonl");
    env.nad(
        NS,
        "stub-fails",
        json!({"cniVersion": "1.0.0", "type": "stub", "record": record.display().to_string(),
               "fail": {"ADD": 117}, "failMsg": "stub refuses"}),
    );
    for (pod_name, second) in [("r1", "broken"), ("r2", "stub-fails")] {
        let pod = env.pod(pod_name, Some(&format!("macvlan-a, {second}")));
        let e = env.add(&pod).expect_err("ADD must fail");
        assert!(e.code().is_some(), "a CNI error object: {e}");
        assert!(e.text().contains(second), "the error names {second}: {e}");
        assert_nothing_attached(&env, &pod);
        // The runtime DELs a failed ADD; that must succeed too (a rolled-back delegate's DEL
        // replayed can fail: Debian's macvlan answers "Link not found").
        env.del(&pod).unwrap_or_else(|e| {
            panic!("{second}: DEL after the rolled-back ADD must succeed: {e}")
        });
        assert_nothing_attached(&env, &pod);
    }
    assert!(env.allocations().is_empty(), "{:?}", env.allocations());
    // The stub's ADD was called once (for r2) and its rollback DEL came after.
    let calls: Vec<String> = std::fs::read_to_string(&record)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["command"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(calls.first().map(String::as_str), Some("ADD"), "{calls:?}");
}

/// Bad input gets a CNI error object with the right code, naming what is wrong, and nothing
/// is left attached.
fn bad_input_is_refused(backend: Backend) {
    let mut env = Env::new("multus_bad_input", backend);
    env.standard_nads();
    env.nad(
        "other",
        "mv-other",
        json!({"cniVersion": "1.0.0", "type": "macvlan", "master": MASTER,
               "ipam": {"type": "static", "addresses": [{"address": "192.0.2.190/26"}]}}),
    );
    env.nad(
        NS,
        "escape",
        json!({"cniVersion": "1.0.0", "type": "../bridge", "bridge": "bre"}),
    );
    env.conf_extra
        .insert("namespaceIsolation".into(), json!(true));
    // (pod, annotation, acceptable codes, what the message names). An unknown NAD may be
    // "invalid configuration" (7) or "try again later" (11): it may yet be created, and the
    // runtime retries ADD either way.
    let cases: [(&str, &str, &[u64], &[&str]); 4] = [
        (
            "bad1",
            r#"[{"name": "macvlan-a""#,
            &[7],
            &["k8s.v1.cni.cncf.io/networks"],
        ),
        ("bad2", "no-such-net", &[7, 11], &["no-such-net"]),
        ("bad3", "other/mv-other", &[7], &["other", "mv-other"]),
        ("bad4", "escape", &[7], &["escape", "type"]),
    ];
    for (name, networks, codes, named) in cases {
        let pod = env.pod(name, Some(networks));
        let e = env.add(&pod).expect_err(networks);
        assert!(
            e.code().is_some_and(|c| codes.contains(&c)),
            "{networks}: code in {codes:?}: {e}"
        );
        for part in named {
            assert!(e.text().contains(part), "{networks}: names {part}: {e}");
        }
        assert_nothing_attached(&env, &pod);
        // The runtime tears the sandbox down after a failed ADD: DEL of what does not exist
        // must succeed, or the pod can never be removed.
        env.del(&pod)
            .unwrap_or_else(|e| panic!("{networks}: DEL after the refused ADD must succeed: {e}"));
    }
    env.wait_event("bad2", "NoNetworkFound", "no-such-net");

    // Invalid JSON on stdin: a decode error.
    let pod = env.pod("bad5", None);
    let e = env
        .rt
        .exec_plugin(
            "multus-shim",
            CniCommand::Add,
            Some(&pod.attachment("eth0")),
            b"{\"cniVersion\": ",
        )
        .expect_err("invalid JSON");
    assert_eq!(e.code(), Some(6), "{e}");
    assert_nothing_attached(&env, &pod);
    assert!(env.allocations().is_empty(), "{:?}", env.allocations());
}

/// GC: attachments the runtime no longer lists in `cni.dev/valid-attachments` get DEL for
/// their secondary delegates (the runtime lost its own cache of `a`, so only the meta-plugin
/// still knows it), valid ones are kept; GC and STATUS reach the cluster network.
fn gc_deletes_what_is_not_valid_and_status_is_forwarded(backend: Backend) {
    let mut env = Env::new("multus_gc", backend);
    let cluster_record = env.lab.dir().join("cluster.jsonl");
    let nad_record = env.lab.dir().join("nad.jsonl");
    env.cluster_network = json!({
        "cniVersion": "1.1.0", "name": "stubnet", "type": "stub",
        "record": cluster_record.display().to_string()
    });
    env.conf_extra.insert("cniVersion".into(), json!("1.1.0"));
    env.nad(
        NS,
        "stub-sec",
        json!({"cniVersion": "1.1.0", "type": "stub", "record": nad_record.display().to_string()}),
    );
    let a = env.pod("a", Some("stub-sec"));
    let b = env.pod("b", Some("stub-sec"));
    env.add(&a)
        .unwrap_or_else(|e| panic!("{}", env.explain(&e)));
    env.add(&b)
        .unwrap_or_else(|e| panic!("{}", env.explain(&e)));
    let conf = env.multus_conf();
    std::fs::remove_file(env.rt.cache_path(conf.name(), &a.container_id, "eth0")).unwrap();
    env.rt
        .gc(&conf, &[(b.container_id.clone(), "eth0".into())])
        .unwrap();
    let calls = |path: &Path| -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let dels: Vec<(String, String)> = calls(&nad_record)
        .iter()
        .filter(|c| c["command"] == "DEL")
        .map(|c| {
            (
                c["env"]["CNI_CONTAINERID"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                c["env"]["CNI_IFNAME"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(dels, [(a.container_id.clone(), "net1".to_string())]);
    let cluster_gc: Vec<Value> = calls(&cluster_record)
        .into_iter()
        .filter(|c| c["command"] == "GC")
        .collect();
    assert!(
        !cluster_gc.is_empty(),
        "GC forwarded to the cluster network: {:?}",
        calls(&cluster_record)
    );
    let valid = &cluster_gc[0]["stdin"]["cni.dev/valid-attachments"];
    assert!(
        valid
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["containerID"] == b.container_id.as_str()),
        "{valid}"
    );

    env.rt.status(&conf).unwrap();
    assert!(
        calls(&cluster_record)
            .iter()
            .any(|c| c["command"] == "STATUS"),
        "STATUS forwarded to the cluster network: {:?}",
        calls(&cluster_record)
    );
    // A cluster network that is not available: STATUS answers its code.
    env.cluster_network["fail"] = json!({"STATUS": 50});
    let e = env.rt.status(&env.multus_conf()).unwrap_err();
    assert_eq!(e.code(), Some(50), "{e}");
}

const CHAIN_SUBNET: &str = "198.51.100.0/26";
const HOST_PORT: u16 = 8080;

/// A NAD that is a conflist of the Debian plugins Multus users chain behind a secondary
/// network: `ptp` (host-local), `tuning` (MTU), `portmap` and `bandwidth` (capabilities
/// `portMappings` and `bandwidth`), asked for with the pod's `portMappings` and `bandwidth`:
/// each capability reaches the plugin that declares it, and DEL undoes all of them.
fn chained_plugins_get_their_capabilities(backend: Backend) {
    let env = Env::new("multus_chain", backend);
    env.nad(
        NS,
        "chain-c",
        json!({
            "cniVersion": "1.0.0", "name": "chain-c",
            "plugins": [
                {"type": "ptp",
                 "ipam": {"type": "host-local", "dataDir": env.ipam.display().to_string(),
                          "ranges": [[{"subnet": CHAIN_SUBNET}]]}},
                {"type": "tuning", "mtu": 1400},
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "bandwidth", "capabilities": {"bandwidth": true}}
            ]
        }),
    );
    let pod = env.pod(
        "c",
        Some(&format!(
            r#"[{{"name": "chain-c", "interface": "chain0",
                 "portMappings": [{{"hostPort": {HOST_PORT}, "containerPort": 80, "protocol": "tcp"}}],
                 "bandwidth": {{"ingressRate": 8000000, "ingressBurst": 80000,
                                "egressRate": 8000000, "egressBurst": 80000}}}}]"#
        )),
    );
    env.add(&pod)
        .unwrap_or_else(|e| panic!("{}", env.explain(&e)));
    assert_eq!(ifnames(&pod), ["chain0", "eth0"]);
    let chain0 = pod.interface("chain0").unwrap().unwrap();
    assert_eq!(chain0.mtu, 1400, "tuning's MTU on chain0");
    let ip = addr_of(&pod, "chain0");
    assert!(in_subnet(&ip, CHAIN_SUBNET), "{ip}");

    // portmap: a DNAT of the host port to the pod's chain0 address, in the node's namespace.
    let nat = env.node.exec_ok(&["iptables", "-t", "nat", "-S"]).unwrap();
    let dnat = nat
        .lines()
        .find(|l| l.contains(&format!("--dport {HOST_PORT}")) && l.contains("DNAT"))
        .unwrap_or_else(|| panic!("no DNAT for port {HOST_PORT}:\n{nat}"));
    assert!(dnat.contains(&format!("{ip}:80")), "{dnat}");
    // bandwidth: token-bucket shaping on the host side (and an ifb for the other direction).
    let qdiscs = env.node.exec_ok(&["tc", "qdisc", "show"]).unwrap();
    assert!(
        qdiscs.contains("tbf"),
        "no tbf qdisc in the node:\n{qdiscs}"
    );

    env.del(&pod)
        .unwrap_or_else(|e| panic!("{}", env.explain(&e)));
    assert_nothing_attached(&env, &pod);
    let nat = env.node.exec_ok(&["iptables", "-t", "nat", "-S"]).unwrap();
    assert!(
        !nat.contains(&format!("--dport {HOST_PORT}")),
        "portmap's rule left after DEL:\n{nat}"
    );
    let qdiscs = env.node.exec_ok(&["tc", "qdisc", "show"]).unwrap();
    assert!(
        !qdiscs.contains("tbf"),
        "bandwidth's qdisc left after DEL:\n{qdiscs}"
    );
}

// ---- the tests: every scenario on every backend ---------------------------------------------

macro_rules! on_backends {
    ($($scenario:ident),* $(,)?) => {
        mod dir {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(super::Backend::Dir)
                }
            )*
        }
        mod kube {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(super::Backend::Kube)
                }
            )*
        }
        mod thick {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(super::Backend::Thick)
                }
            )*
        }
    };
}

on_backends!(
    two_nads_attach_route_and_report,
    comma_form_names_interfaces,
    versions_and_result_conversion,
    default_route_moves_the_default,
    stale_pod_uid_is_refused,
    del_frees_everything_also_without_the_cluster,
    failed_delegate_rolls_back,
    bad_input_is_refused,
    gc_deletes_what_is_not_valid_and_status_is_forwarded,
    chained_plugins_get_their_capabilities,
);
