//! The meta-plugin with Debian's real CNI plugins as delegates, run through the built binary
//! as a container runtime would run it, in namespaces of the test.

mod common;

use common::Lab;
use serde_json::{Value, json};

fn link<'a>(
    links: &'a [(String, String, Vec<String>)],
    name: &str,
) -> &'a (String, String, Vec<String>) {
    links
        .iter()
        .find(|l| l.0 == name)
        .unwrap_or_else(|| panic!("no {name} in {links:?}"))
}

#[test]
fn add_check_del_with_real_plugins() {
    let Some(lab) = Lab::new("acd") else { return };
    let conf = lab.multus(
        "1.0.0",
        vec![
            lab.bridge("1.0.0"),
            lab.macvlan("mv", "1.0.0"),
            lab.ptp("0.4.0"),
            lab.static_tuned("1.0.0"),
        ],
    );
    let (rc, out) = lab.call("ADD", "c-acd", &conf, &[]);
    assert_eq!(rc, 0, "{out}");
    // The result is the cluster network's.
    assert_eq!(out["cniVersion"], "1.0.0");
    let ip = out["ips"][0]["address"].as_str().unwrap();
    assert!(ip.starts_with("192.0.2."), "{out}");
    let links = lab.pod_links();
    assert_eq!(link(&links, "eth0").2, vec![ip.to_string()]);
    assert!(
        link(&links, "net1").2[0].starts_with("198.51.100."),
        "{links:?}"
    );
    assert!(
        link(&links, "net2").2[0].starts_with("203.0.113."),
        "{links:?}"
    );
    let stat = link(&links, "net3");
    assert_eq!(stat.2, vec!["198.51.100.200/24".to_string()]);
    assert_eq!(stat.1, "0a:58:c6:33:64:c8");
    assert_eq!(links.len(), 4, "{links:?}");
    assert_eq!(lab.allocated().len(), 3, "{:?}", lab.allocated());
    // The delegate cache and one result cache per delegate.
    let files = lab.cache_files();
    assert!(files.contains(&"c-acd".to_string()), "{files:?}");
    assert!(
        files.contains(&"podnet-c-acd-eth0".to_string()),
        "{files:?}"
    );
    assert!(files.contains(&"stat-c-acd-net3".to_string()), "{files:?}");
    let cache: Value =
        serde_json::from_slice(&std::fs::read(lab.cni_dir().join("c-acd")).unwrap()).unwrap();
    assert_eq!(cache.as_array().unwrap().len(), 4);
    assert_eq!(cache[1]["ifnameRequest"], "net1");
    let rc_cache: Value = serde_json::from_slice(
        &std::fs::read(lab.cni_dir().join("results/mv-c-acd-net1")).unwrap(),
    )
    .unwrap();
    assert_eq!(rc_cache["kind"], "cniCacheV1");
    assert_eq!(rc_cache["ifName"], "net1");

    let (rc, out) = lab.call("CHECK", "c-acd", &conf, &[]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.is_null());

    let (rc, out) = lab.call("DEL", "c-acd", &conf, &[]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(lab.allocated(), Vec::<String>::new());
    assert!(lab.pod_links().is_empty(), "{:?}", lab.pod_links());
    assert!(lab.cache_files().is_empty(), "{:?}", lab.cache_files());
    // DEL is idempotent.
    let (rc, out) = lab.call("DEL", "c-acd", &conf, &[]);
    assert_eq!(rc, 0, "{out}");
}

#[test]
fn result_in_each_version_of_the_configuration() {
    let Some(lab) = Lab::new("ver") else { return };
    for (i, v) in ["0.2.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let conf = lab.multus(v, vec![lab.bridge("1.0.0")]);
        let cid = format!("c-ver{i}");
        let (rc, out) = lab.call("ADD", &cid, &conf, &[]);
        assert_eq!(rc, 0, "{v}: {out}");
        assert_eq!(out["cniVersion"], *v);
        match *v {
            "0.2.0" => {
                assert!(
                    out["ip4"]["ip"].as_str().unwrap().starts_with("192.0.2."),
                    "{out}"
                );
                assert_eq!(out["ip4"]["gateway"], "192.0.2.1");
                assert_eq!(out["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
                assert!(out.get("interfaces").is_none());
            }
            "0.3.1" | "0.4.0" => {
                assert_eq!(out["ips"][0]["version"], "4", "{out}");
                assert!(out["interfaces"].as_array().unwrap().len() >= 2);
            }
            _ => {
                assert!(out["ips"][0].get("version").is_none(), "{out}");
                assert_eq!(out["ips"][0]["gateway"], "192.0.2.1");
            }
        }
        let (rc, out) = lab.call("DEL", &cid, &conf, &[]);
        assert_eq!(rc, 0, "{v}: {out}");
    }
    assert_eq!(lab.allocated(), Vec::<String>::new());
}

#[test]
fn a_failing_delegate_rolls_back_the_ones_before() {
    let Some(lab) = Lab::new("rb") else { return };
    let mut bad = lab.macvlan("badmv", "1.0.0");
    bad["master"] = "nosuch0".into();
    // The second of two, then the third of three.
    for (cid, delegates, ifname) in [
        ("c-rb2", vec![lab.bridge("1.0.0"), bad.clone()], "net1"),
        (
            "c-rb3",
            vec![lab.bridge("1.0.0"), lab.macvlan("mv", "1.0.0"), bad.clone()],
            "net2",
        ),
    ] {
        let conf = lab.multus("1.0.0", delegates);
        let (rc, out) = lab.call("ADD", cid, &conf, &[]);
        assert_eq!(rc, 1, "{out}");
        let msg = out["msg"].as_str().unwrap();
        assert!(
            msg.contains("\"badmv\"") && msg.contains(&format!("\"{ifname}\"")),
            "{msg}"
        );
        assert_eq!(lab.allocated(), Vec::<String>::new(), "{cid}");
        assert!(lab.pod_links().is_empty(), "{:?}", lab.pod_links());
        assert!(lab.cache_files().is_empty(), "{:?}", lab.cache_files());
    }
}

/// Kills the plugin at every step of an ADD, then DEL (or GC with an empty list of valid
/// attachments) must leave nothing allocated: the delegate cache is written before the
/// first delegate runs.
#[test]
fn killed_at_every_step_then_del_or_gc_frees_everything() {
    let Some(lab) = Lab::new("kill") else { return };
    let conf = lab.multus(
        "1.0.0",
        vec![
            lab.bridge("1.0.0"),
            lab.macvlan("mv", "1.0.0"),
            lab.ptp("1.0.0"),
        ],
    );
    let steps = [
        "cache",
        "delegate:0",
        "result:0",
        "delegate:1",
        "result:1",
        "delegate:2",
        "result:2",
    ];
    for (i, step) in steps.iter().enumerate() {
        for cleanup in ["DEL", "GC"] {
            let cid = format!("c-kill{i}{cleanup}");
            let (rc, out) = lab.call(
                "ADD",
                &cid,
                &conf,
                &[("MULTUS_SHIM_TEST_ABORT_AFTER", step)],
            );
            assert_eq!(rc, 137, "{step}: {out}");
            assert!(!lab.cache_files().is_empty());
            let (rc, out) = if cleanup == "DEL" {
                lab.call("DEL", &cid, &conf, &[])
            } else {
                let mut gc = conf.clone();
                gc["cni.dev/valid-attachments"] = json!([]);
                lab.call(
                    "GC",
                    "",
                    &gc,
                    &[
                        ("CNI_CONTAINERID", ""),
                        ("CNI_IFNAME", ""),
                        ("CNI_NETNS", ""),
                    ],
                )
            };
            assert_eq!(rc, 0, "{step} {cleanup}: {out}");
            assert_eq!(lab.allocated(), Vec::<String>::new(), "{step} {cleanup}");
            assert!(
                lab.cache_files().is_empty(),
                "{step} {cleanup}: {:?}",
                lab.cache_files()
            );
            if cleanup == "DEL" {
                assert!(lab.pod_links().is_empty(), "{step}: {:?}", lab.pod_links());
            } else {
                // GC has no namespace: interfaces go with the sandbox; clear them here.
                for (name, _, _) in lab.pod_links() {
                    lab.pod.ip(&["link", "del", &name]);
                }
            }
        }
    }
}

#[test]
fn del_falls_back_to_the_result_caches_when_the_delegate_cache_is_corrupt() {
    let Some(lab) = Lab::new("corr") else { return };
    let conf = lab.multus(
        "1.0.0",
        vec![lab.bridge("1.0.0"), lab.macvlan("mv", "1.0.0")],
    );
    let (rc, out) = lab.call("ADD", "c-corr", &conf, &[]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(lab.allocated().len(), 2);
    // A truncated delegate cache, as after a power loss with a non-atomic writer.
    let p = lab.cni_dir().join("c-corr");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let (rc, out) = lab.call("DEL", "c-corr", &conf, &[]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(lab.allocated(), Vec::<String>::new());
    assert!(lab.cache_files().is_empty(), "{:?}", lab.cache_files());
    // And with the delegate cache gone altogether.
    let (rc, out) = lab.call("ADD", "c-corr2", &conf, &[]);
    assert_eq!(rc, 0, "{out}");
    std::fs::remove_file(lab.cni_dir().join("c-corr2")).unwrap();
    let (rc, out) = lab.call("DEL", "c-corr2", &conf, &[]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(lab.allocated(), Vec::<String>::new());
}

#[test]
fn gc_keeps_valid_attachments_and_removes_the_others() {
    let Some(lab) = Lab::new("gc") else { return };
    let conf = lab.multus(
        "1.1.0",
        vec![lab.bridge("1.0.0"), lab.macvlan("mv", "1.0.0")],
    );
    let (rc, out) = lab.call("ADD", "c-keep", &conf, &[]);
    assert_eq!(rc, 0, "{out}");
    let other = Lab::new("gc2").unwrap();
    // A second pod namespace for the attachment that goes.
    let (rc, out) = lab.call(
        "ADD",
        "c-gone",
        &conf,
        &[("CNI_NETNS", &format!("/run/netns/{}", other.pod.name()))],
    );
    assert_eq!(rc, 0, "{out}");
    assert_eq!(lab.allocated().len(), 4);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c-keep", "ifname": "eth0"}]);
    let (rc, out) = lab.call(
        "GC",
        "",
        &gc,
        &[
            ("CNI_CONTAINERID", ""),
            ("CNI_IFNAME", ""),
            ("CNI_NETNS", ""),
        ],
    );
    assert_eq!(rc, 0, "{out}");
    assert_eq!(lab.allocated().len(), 2, "{:?}", lab.allocated());
    assert!(lab.cache_files().contains(&"c-keep".to_string()));
    assert!(!lab.cache_files().contains(&"c-gone".to_string()));
    let (rc, out) = lab.call("DEL", "c-keep", &conf, &[]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(lab.allocated(), Vec::<String>::new());
}

#[test]
fn bad_input_gets_cni_error_objects() {
    let Some(lab) = Lab::new("bad") else { return };
    let conf = lab.multus("0.4.0", vec![lab.bridge("0.4.0")]);
    // Invalid JSON: 6, printed in the newest version since none can be read.
    let (rc, out) = lab.call_raw("ADD", "c-bad", b"{not json", &[]);
    assert_eq!((rc, out["code"].as_u64()), (1, Some(6)), "{out}");
    assert_eq!(out["cniVersion"], "1.1.0");
    // A missing variable: 4 naming it, in the configuration's version.
    let (rc, out) = lab.call("ADD", "c-bad", &conf, &[("CNI_NETNS", "")]);
    assert_eq!((rc, out["code"].as_u64()), (1, Some(4)), "{out}");
    assert!(out["msg"].as_str().unwrap().contains("CNI_NETNS"), "{out}");
    assert_eq!(out["cniVersion"], "0.4.0");
    // A type that would leave the plugin directories: 7 naming network and field.
    let mut esc = lab.bridge("0.4.0");
    esc["type"] = "../x".into();
    let (rc, out) = lab.call("ADD", "c-bad", &lab.multus("0.4.0", vec![esc]), &[]);
    assert_eq!((rc, out["code"].as_u64()), (1, Some(7)), "{out}");
    let msg = out["msg"].as_str().unwrap();
    assert!(
        msg.contains("podnet") && msg.contains("field type"),
        "{msg}"
    );
    // A plugin that is nowhere: names the type and the directories.
    let mut gone = lab.bridge("0.4.0");
    gone["type"] = "nosuchplugin".into();
    let (rc, out) = lab.call("ADD", "c-bad", &lab.multus("0.4.0", vec![gone]), &[]);
    assert_eq!(rc, 1, "{out}");
    let msg = out["msg"].as_str().unwrap();
    assert!(
        msg.contains("nosuchplugin") && msg.contains("/usr/lib/cni"),
        "{msg}"
    );
    // An unsupported version: 1.
    let (rc, out) = lab.call(
        "ADD",
        "c-bad",
        &lab.multus("9.0.0", vec![lab.bridge("0.4.0")]),
        &[],
    );
    assert_eq!((rc, out["code"].as_u64()), (1, Some(1)), "{out}");
    // A container id that would be a path: 4.
    let (rc, out) = lab.call("DEL", "../etc", &conf, &[]);
    assert_eq!((rc, out["code"].as_u64()), (1, Some(4)), "{out}");
    // Nothing half-attached.
    assert_eq!(lab.allocated(), Vec::<String>::new());
    assert!(lab.pod_links().is_empty());
    // VERSION.
    let (rc, out) = lab.call("VERSION", "", &json!({"cniVersion": "0.3.1"}), &[]);
    assert_eq!(rc, 0);
    assert_eq!(out["cniVersion"], "0.3.1");
    assert_eq!(out["supportedVersions"].as_array().unwrap().len(), 7);
}

#[test]
fn readiness_indicator_missing_is_try_again_later() {
    let Some(lab) = Lab::new("rdy") else { return };
    let mut conf = lab.multus("1.0.0", vec![lab.bridge("1.0.0")]);
    let flag = lab.dir.path().join("ready");
    conf["readinessindicatorfile"] = flag.to_string_lossy().into_owned().into();
    let (rc, out) = lab.call("ADD", "c-rdy", &conf, &[]);
    assert_eq!((rc, out["code"].as_u64()), (1, Some(11)), "{out}");
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .contains("readinessindicatorfile"),
        "{out}"
    );
    assert!(lab.pod_links().is_empty());
    let (rc, out) = lab.call("STATUS", "", &conf, &[]);
    assert_eq!((rc, out["code"].as_u64()), (1, Some(50)), "{out}");
    std::fs::write(&flag, b"").unwrap();
    let (rc, out) = lab.call("ADD", "c-rdy", &conf, &[]);
    assert_eq!(rc, 0, "{out}");
    let (rc, out) = lab.call("DEL", "c-rdy", &conf, &[]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(lab.allocated(), Vec::<String>::new());
}

/// `default-route` on a hand-made delegate list with the real plugins: the bridge's default
/// route goes, the ptp gateway becomes the default, the cached results match (CHECK passes),
/// and DEL frees everything.
#[test]
fn default_route_with_real_plugins() {
    use multus_shim::cni::exec::Exec;
    use multus_shim::multus::plan::Delegate;
    use multus_shim::plugin::Runner;

    let Some(lab) = Lab::new("dr") else { return };
    let delegate = |index: usize, ifname: &str, conf: Value, gw: Option<&str>| Delegate {
        index,
        master: index == 0,
        status_name: conf["name"].as_str().unwrap().to_string(),
        nad: None,
        ifname: ifname.into(),
        conf,
        runtime_config: Default::default(),
        cni_args: vec![],
        default_route: gw.map(|g| vec![g.parse().unwrap()]).unwrap_or_default(),
    };
    let mut ptp = lab.ptp("1.0.0");
    ptp["ipam"]["ranges"] = json!([[{"subnet": "203.0.113.0/24", "gateway": "203.0.113.1"}]]);
    let ds = vec![
        delegate(0, "eth0", lab.bridge("1.0.0"), None),
        delegate(1, "net1", ptp, Some("203.0.113.1")),
    ];
    let runner = Runner {
        exec: Exec {
            search: vec![common::PLUGINS.into()],
            timeout: std::time::Duration::from_secs(30),
        },
        cni_dir: lab.cni_dir(),
        retry_delete_on_error: false,
        abort_after: None,
    };
    let netns = lab.netns_path();
    let pod = lab.pod.name().to_string();
    let (results, check, routes) = lab.host.block_on(move || async move {
        let mut added = runner.add("c-dr", &netns, &ds).await.unwrap();
        runner
            .default_route("c-dr", &netns, &mut added)
            .await
            .unwrap();
        let check = runner.check("c-dr", &netns, &ds).await;
        let routes = std::process::Command::new("ip")
            .args(["-n", &pod, "-4", "route", "show", "default"])
            .output()
            .unwrap();
        let routes = String::from_utf8_lossy(&routes.stdout).trim().to_string();
        let results: Vec<Value> = added.into_iter().map(|(_, r)| r).collect();
        runner.del_cached("c-dr", &netns).await.unwrap();
        (results, check, routes)
    });
    assert_eq!(routes, "default via 203.0.113.1 dev net1", "{routes}");
    // Checked between ADD and DEL, inside the closure; the routes as they were then:
    check.unwrap();
    let has_default = |r: &Value| {
        r["routes"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|x| x["dst"] == "0.0.0.0/0"))
    };
    assert!(!has_default(&results[0]), "{}", results[0]);
    assert!(has_default(&results[1]), "{}", results[1]);
    assert_eq!(lab.allocated(), Vec::<String>::new());
    assert!(lab.cache_files().is_empty(), "{:?}", lab.cache_files());
}

/// An ADD killed midway and retried by the runtime without a DEL (a different plan this
/// time): the leftover is undone first, so the final DEL frees everything.
#[test]
fn add_retried_over_a_killed_one_leaks_nothing() {
    let Some(lab) = Lab::new("retry") else { return };
    let first = lab.multus(
        "1.0.0",
        vec![
            lab.bridge("1.0.0"),
            lab.macvlan("mv", "1.0.0"),
            lab.ptp("1.0.0"),
        ],
    );
    let (rc, out) = lab.call(
        "ADD",
        "c-retry",
        &first,
        &[("MULTUS_SHIM_TEST_ABORT_AFTER", "result:1")],
    );
    assert_eq!(rc, 137, "{out}");
    assert_eq!(lab.allocated().len(), 2);
    let second = lab.multus("1.0.0", vec![lab.bridge("1.0.0"), lab.ptp("1.0.0")]);
    let (rc, out) = lab.call("ADD", "c-retry", &second, &[]);
    assert_eq!(rc, 0, "{out}");
    let links: Vec<String> = lab.pod_links().into_iter().map(|l| l.0).collect();
    assert_eq!(links.len(), 2, "{links:?}");
    assert_eq!(lab.allocated().len(), 2, "{:?}", lab.allocated());
    let (rc, out) = lab.call("DEL", "c-retry", &second, &[]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(lab.allocated(), Vec::<String>::new());
    assert!(lab.pod_links().is_empty());
}
