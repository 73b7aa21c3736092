//! Results of Debian's real plugins (bridge + host-local), captured in namespaces of the
//! test at each version they speak, parsed and converted to every version.

use std::time::Duration;

use metalnet::testing::Netns;
use multus_shim::cni::exec::{Exec, RuntimeConf};
use multus_shim::cni::{CniResult, version};
use serde_json::{Value, json};

#[test]
fn real_bridge_results_parse_and_convert_in_every_version() {
    if !std::path::Path::new("/usr/lib/cni/bridge").exists() {
        return;
    }
    let Some(host) = Netns::new("resh") else {
        return;
    };
    let Some(pod) = Netns::new("resp") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ipam = dir.path().to_path_buf();
    let netns = format!("/run/netns/{}", pod.name());
    let captured: Vec<(String, Value)> = host.block_on(move || async move {
        let exec = Exec {
            search: vec!["/usr/lib/cni".into()],
            timeout: Duration::from_secs(30),
        };
        let mut out = Vec::new();
        for (i, v) in ["0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
            .iter()
            .enumerate()
        {
            let net = json!({"cniVersion": v, "name": "capnet", "type": "bridge", "bridge": "cbr0",
                "isGateway": true, "ipam": {"type": "host-local", "dataDir": ipam,
                "ranges": [[{"subnet": "192.0.2.0/24"}], [{"subnet": "2001:db8::/64"}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}});
            let rt = RuntimeConf {
                container_id: format!("cap{i}"),
                netns: netns.clone(),
                ifname: format!("eth{i}"),
                ..Default::default()
            };
            let r = exec.add_network(&net, &rt).await.unwrap();
            exec.del_network(&net, &rt, Some(&r)).await.unwrap();
            out.push((v.to_string(), r));
        }
        out
    });
    for (v, native) in &captured {
        assert_eq!(native["cniVersion"], *v, "{native}");
        let r = CniResult::parse(native, v).unwrap();
        let v4 = r.ips.iter().find(|i| i.address.addr().is_ipv4()).unwrap();
        assert!(
            v4.address.to_string().starts_with("192.0.2."),
            "{v}: {native}"
        );
        assert!(
            r.ips.iter().any(|i| i.address.addr().is_ipv6()),
            "{v}: {native}"
        );
        // Printed again in its own version, it is what the plugin printed (modulo an empty
        // `dns`, which we always print).
        let mut again = r.to_version(v).unwrap();
        let mut native = native.clone();
        for x in [&mut again, &mut native] {
            if x["dns"] == json!({}) {
                x.as_object_mut().unwrap().remove("dns");
            }
        }
        assert_eq!(again, native, "version {v}");
        for to in version::SUPPORTED {
            let out = r.to_version(to).unwrap();
            let back = CniResult::parse(&out, to).unwrap();
            assert_eq!(back.to_version(to).unwrap(), out, "{v} -> {to}");
            if *to == "0.2.0" {
                assert_eq!(out["ip4"]["ip"], v4.address.to_string());
            }
        }
    }
    drop((host, pod));
}
