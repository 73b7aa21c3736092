//! Time to program 1,000 simulated peer nodes from scratch into a throwaway network
//! namespace, and to apply one change at that size (targets: < 1 s and < 10 ms).
//!
//! `cargo bench -p metalnet-vxlan --bench program_peers` (root; creates and deletes a
//! namespace named `mnl-vxlan-bench-<pid>-0`). `PEERS=N` changes the size.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use metalnet::model::core::Node;
use metalnet::netlink::{Netlink, RTPROT_METALNET_VXLAN};
use metalnet::testing::{Manifest, Netns, node};
use metalnet_vxlan::annotations::{BackendData, Mac, NodeView};
use metalnet_vxlan::kernel::Kernel;
use metalnet_vxlan::netconf::NetConf;
use metalnet_vxlan::plan::{Desired, FamilyInput, Observed, Underlay, desired, diff};

fn peer(i: u32, public_last: u8) -> NodeView {
    // 198.18.0.0/16 in /26 subnets: subnet i+1 (the node itself has the first).
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + ((i + 1) << 6);
    NodeView {
        name: format!("peer-{i:05}"),
        pod_cidrs: vec![IpNet::new(IpAddr::V4(base.into()), 26).unwrap()],
        backend_type: Some("vxlan".into()),
        backend_data: Some(BackendData {
            vni: 1,
            vtep_mac: Mac([0x0a, 0x58, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
        }),
        public_ip: Some(IpAddr::V4(Ipv4Addr::new(
            198,
            19,
            (i >> 8) as u8,
            public_last.wrapping_add(i as u8),
        ))),
        ..Default::default()
    }
}

/// The Node object a peer's agent would have published (parsed again on every change, as the
/// agent does from its snapshot).
fn node_object(v: &NodeView) -> Node {
    let d = v.backend_data.unwrap();
    let manifest = node(&v.name)
        .annotation("flannel.alpha.coreos.com/backend-type", "vxlan")
        .annotation("flannel.alpha.coreos.com/backend-data", &d.to_json())
        .annotation(
            "flannel.alpha.coreos.com/public-ip",
            &v.public_ip.unwrap().to_string(),
        )
        .annotation("flannel.alpha.coreos.com/kube-subnet-manager", "true")
        .pod_cidrs([v.pod_cidrs[0].to_string()]);
    serde_json::from_value(manifest.json()).unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes benches with these; nothing to list
    }
    let peers: u32 = std::env::var("PEERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let Some(ns) = Netns::with_veth("vxlan-bench") else {
        return;
    };

    let report = ns.block_on(move || async move {
        {
            let kernel = Kernel::new(Netlink::connect().unwrap(), RTPROT_METALNET_VXLAN);
            let conf = NetConf::parse(
                r#"{"Network":"198.18.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan"}}"#,
            )
            .unwrap();
            let pool = conf.ipv4.clone().unwrap();
            let u = kernel.underlay(Some("eth0"), None, false).await.unwrap();
            let underlay: Underlay = u.underlay.clone();
            let mut nodes: Vec<NodeView> = (0..peers).map(|i| peer(i, 1)).collect();
            let build = |nodes: &[NodeView]| -> Desired {
                let input = FamilyInput {
                    conf: &conf,
                    pool: &pool,
                    own_subnet: "198.18.0.0/26".parse().unwrap(),
                    public_ip: u.public_ip,
                    underlay: &underlay,
                    mac: Mac([0x0a, 0x58, 9, 9, 9, 9]),
                };
                desired(&input, "me", nodes).0
            };

            // From scratch: observe, create the device, program every peer.
            let t0 = Instant::now();
            let want = build(&nodes);
            let mut obs: Observed = kernel.observe(&want, underlay.index).await.unwrap();
            kernel
                .apply_device(want.device.as_ref().unwrap(), &mut obs)
                .await
                .unwrap();
            let (rem, add) = diff(&want, &obs);
            let mut errs = kernel.apply_steps(rem, underlay.index, &mut obs).await;
            errs.extend(kernel.apply_steps(add, underlay.index, &mut obs).await);
            let scratch = t0.elapsed();
            assert!(
                errs.is_empty(),
                "{} errors, first {:?}",
                errs.len(),
                errs.first().map(|e| e.1.to_string())
            );

            // Adoption (a restart): re-read everything, nothing to do.
            let t1 = Instant::now();
            let reread = kernel.observe(&want, underlay.index).await.unwrap();
            let (r, a) = diff(&want, &reread);
            let adopt = t1.elapsed();
            assert!(
                r.is_empty() && a.is_empty(),
                "adoption found {} + {} steps",
                r.len(),
                a.len()
            );
            assert_eq!(reread.routes.len(), peers as usize);

            // One change at that size, as the agent does it: read every Node's annotations,
            // rebuild the desired state, check the device, diff against the cache, apply.
            let mut one = Vec::new();
            for k in 0..20u32 {
                let idx = (k * 37 % peers) as usize;
                nodes[idx].public_ip = Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, k as u8 + 1)));
                let objects: Vec<Node> = nodes.iter().map(node_object).collect();
                let t = Instant::now();
                let views: Vec<NodeView> = objects
                    .iter()
                    .zip(&nodes)
                    .map(|(o, v)| NodeView::of(&v.name, o))
                    .collect();
                let want = build(&views);
                let _dev = kernel.observe_device("flannel.1").await.unwrap();
                let (rem, add) = diff(&want, &obs);
                assert_eq!(add.len(), 1);
                let mut errs = kernel.apply_steps(rem, underlay.index, &mut obs).await;
                errs.extend(kernel.apply_steps(add, underlay.index, &mut obs).await);
                assert!(errs.is_empty());
                one.push(t.elapsed());
            }
            one.sort();
            // One peer leaving.
            nodes.pop();
            let t = Instant::now();
            let want = build(&nodes);
            let (rem, add) = diff(&want, &obs);
            assert_eq!((rem.len(), add.len()), (1, 0));
            kernel.apply_steps(rem, underlay.index, &mut obs).await;
            let leave = t.elapsed();
            (
                scratch,
                adopt,
                one[one.len() / 2],
                one[one.len() - 1],
                leave,
            )
        }
    });
    let (scratch, adopt, median, max, leave): (Duration, Duration, Duration, Duration, Duration) =
        report;
    println!("program_peers: {peers} peers from scratch: {scratch:?} (target < 1 s)");
    println!("program_peers: adopt {peers} peers after a restart (re-read + diff): {adopt:?}");
    println!(
        "program_peers: one change at {peers} peers: median {median:?}, max {max:?} of 20 (target < 10 ms)"
    );
    println!("program_peers: one peer leaving at {peers} peers: {leave:?}");
}
