//! The kernel layer against a real (throwaway) network namespace: rollback of a failed step,
//! adoption of an identical state, and of routes flanneld left (another protocol). Root only.

use std::net::IpAddr;
use std::process::Command;

use metalnet::netlink::{Netlink, RTPROT_METALNET_VXLAN};
use metalnet::testing::Netns;
use metalnet_vxlan::annotations::{BackendData, Mac, NodeView};
use metalnet_vxlan::kernel::Kernel;
use metalnet_vxlan::netconf::NetConf;
use metalnet_vxlan::plan::{Desired, FamilyInput, Op, RouteDev, RouteSpec, Step, desired, diff};

fn peers() -> Vec<NodeView> {
    (1..=3u8)
        .map(|i| NodeView {
            name: format!("peer{i}"),
            pod_cidrs: vec![
                format!("198.51.100.{}/26", u32::from(i) * 64)
                    .parse()
                    .unwrap(),
            ],
            backend_type: Some("vxlan".into()),
            backend_data: Some(BackendData {
                vni: 1,
                vtep_mac: Mac([0x0a, 0x58, 0, 0, 0, i]),
            }),
            public_ip: Some(format!("203.0.113.{i}").parse().unwrap()),
            ..Default::default()
        })
        .collect()
}

async fn setup() -> (Kernel, Desired, u32) {
    let kernel = Kernel::new(Netlink::connect().unwrap(), RTPROT_METALNET_VXLAN);
    let conf = NetConf::parse(
        r#"{"Network":"198.51.100.0/24","SubnetLen":26,"Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let u = kernel.underlay(Some("eth0"), None, false).await.unwrap();
    let pool = conf.ipv4.clone().unwrap();
    let input = FamilyInput {
        conf: &conf,
        pool: &pool,
        own_subnet: "198.51.100.0/26".parse().unwrap(),
        public_ip: u.public_ip,
        underlay: &u.underlay,
        mac: Mac([0x0a, 0x58, 9, 9, 9, 9]),
    };
    let (want, _) = desired(&input, "me", &peers());
    (kernel, want, u.underlay.index)
}

#[test]
fn failed_step_is_rolled_back_and_identical_state_is_adopted() {
    let Some(ns) = Netns::with_veth("vk-rb") else {
        return;
    };
    ns.block_on(|| async {
        let (kernel, want, uidx) = setup().await;
        let mut obs = kernel.observe(&want, uidx).await.unwrap();
        kernel
            .apply_device(want.device.as_ref().unwrap(), &mut obs)
            .await
            .unwrap();
        // A step whose route cannot be installed (no such interface): neighbour and FDB
        // entry go again.
        let ip: IpAddr = "198.51.100.64".parse().unwrap();
        let mac = Mac([0x0a, 0x58, 0, 0, 0, 1]);
        let bad = Step {
            ops: vec![
                Op::NeighSet { ip, mac },
                Op::FdbSet {
                    mac,
                    dst: "203.0.113.1".parse().unwrap(),
                },
                Op::RouteSet(RouteSpec {
                    dst: "198.51.100.64/26".parse().unwrap(),
                    gw: ip,
                    dev: RouteDev::Other(99_999),
                    onlink: true,
                }),
            ],
        };
        let errs = kernel.apply_steps(vec![bad], uidx, &mut obs).await;
        assert_eq!(errs.len(), 1);
        assert!(obs.neighs.is_empty() && obs.fdb.is_empty());
        let again = kernel.observe(&want, uidx).await.unwrap();
        assert!(
            again.neighs.is_empty() && again.fdb.is_empty() && again.routes.is_empty(),
            "{again:?}"
        );

        // Program everything, then a fresh observation (a restart) finds nothing to do.
        let (rem, add) = diff(&want, &obs);
        assert!(kernel.apply_steps(rem, uidx, &mut obs).await.is_empty());
        assert!(kernel.apply_steps(add, uidx, &mut obs).await.is_empty());
        let fresh = kernel.observe(&want, uidx).await.unwrap();
        assert_eq!(diff(&want, &fresh), (vec![], vec![]));
    });
}

#[test]
fn routes_left_by_flanneld_are_adopted_in_place() {
    let Some(ns) = Netns::with_veth("vk-ad") else {
        return;
    };
    // flanneld's state: device, entries and routes with the default protocol (boot).
    for cmd in [
        "link add flannel.1 address 0a:58:09:09:09:09 type vxlan id 1 local 192.0.2.1 dev eth0 dstport 8472 nolearning",
        "link set flannel.1 mtu 1450",
        "addr add 198.51.100.0/32 dev flannel.1",
        "link set flannel.1 up",
        "neigh replace 198.51.100.64 lladdr 0a:58:00:00:00:01 dev flannel.1 nud permanent",
        "route replace 198.51.100.64/26 via 198.51.100.64 dev flannel.1 onlink",
    ] {
        ns.ip(&cmd.split(' ').collect::<Vec<_>>());
    }
    let out = Command::new("bridge")
        .args([
            "-n",
            ns.name(),
            "fdb",
            "replace",
            "0a:58:00:00:00:01",
            "dev",
            "flannel.1",
            "dst",
            "203.0.113.1",
            "self",
            "permanent",
        ])
        .status()
        .unwrap();
    assert!(out.success());
    let index_before = ns.ip(&["link", "show", "flannel.1"]);
    let steps = ns.block_on(|| async {
        let (kernel, want, uidx) = setup().await;
        let mut obs = kernel.observe(&want, uidx).await.unwrap();
        kernel
            .apply_device(want.device.as_ref().unwrap(), &mut obs)
            .await
            .unwrap();
        let (rem, add) = diff(&want, &obs);
        let steps = (rem.clone(), add.clone());
        assert!(kernel.apply_steps(rem, uidx, &mut obs).await.is_empty());
        assert!(kernel.apply_steps(add, uidx, &mut obs).await.is_empty());
        steps
    });
    // Peer 1: only its route is re-tagged; peers 2 and 3 are added whole.
    assert!(steps.0.is_empty());
    assert_eq!(steps.1.len(), 3);
    assert!(steps.1.iter().any(
        |s| matches!(s.ops[..], [Op::RouteSet(r)] if r.dst.to_string() == "198.51.100.64/26")
    ));
    // The device was kept, the route now carries our protocol.
    assert_eq!(
        ns.ip(&["link", "show", "flannel.1"]).split(':').next(),
        index_before.split(':').next()
    );
    let routes = ns.ip(&["route"]);
    assert!(
        routes.contains("198.51.100.64/26 via 198.51.100.64 dev flannel.1 proto 77 onlink"),
        "{routes}"
    );
}

#[test]
fn stale_route_left_by_flanneld_is_removed() {
    let Some(ns) = Netns::with_veth("vk-st") else {
        return;
    };
    // A route to a subnet no node holds any more, as flanneld left it (protocol boot).
    ns.ip(&[
        "route",
        "add",
        "198.51.100.224/27",
        "via",
        "192.0.2.9",
        "dev",
        "eth0",
    ]);
    let rem = ns.block_on(|| async {
        let (kernel, want, uidx) = setup().await;
        let mut obs = kernel.observe(&want, uidx).await.unwrap();
        let (rem, _) = diff(&want, &obs);
        let errs = kernel.apply_steps(rem.clone(), uidx, &mut obs).await;
        assert!(errs.is_empty(), "{errs:?}");
        // A re-read agrees: the route is gone, not merely forgotten.
        let fresh = kernel.observe(&want, uidx).await.unwrap();
        assert!(fresh.routes.is_empty(), "{fresh:?}");
        rem
    });
    assert!(matches!(rem[..], [Step { ref ops }] if matches!(ops[..], [Op::RouteDel(_)])));
    let routes = ns.ip(&["route"]);
    assert!(!routes.contains("198.51.100.224/27"), "{routes}");
}
