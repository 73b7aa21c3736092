//! `default-route` in a pod namespace of the test: the other interfaces' default routes go,
//! the requested gateway is set.

use metalnet::testing::Netns;
use multus_shim::plugin::route;

#[tokio::test]
async fn default_route_moves_to_the_requested_interface() {
    let Some(pod) = Netns::new("droute") else {
        return;
    };
    for (a, b, addr) in [
        ("a0", "a1", "192.0.2.2/24"),
        ("b0", "b1", "198.51.100.2/24"),
    ] {
        pod.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        pod.ip(&["addr", "add", addr, "dev", a]);
        pod.ip(&["link", "set", a, "up"]);
        pod.ip(&["link", "set", b, "up"]);
    }
    pod.ip(&["addr", "add", "2001:db8::2/64", "dev", "b0", "nodad"]);
    pod.ip(&["route", "add", "default", "via", "192.0.2.1", "dev", "a0"]);
    let netns = format!("/run/netns/{}", pod.name());
    route::apply(
        &netns,
        &["a0".to_string()],
        "b0",
        &[
            "198.51.100.1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ],
    )
    .await
    .unwrap();
    let v4 = pod.ip(&["-4", "route", "show", "default"]);
    assert_eq!(v4.trim(), "default via 198.51.100.1 dev b0", "{v4}");
    let v6 = pod.ip(&["-6", "route", "show", "default"]);
    assert!(v6.contains("default via 2001:db8::1 dev b0"), "{v6}");
    // A namespace that is not there: an error naming the command, not a panic.
    let e = route::apply("/run/netns/mnl-none-here", &[], "b0", &[])
        .await
        .unwrap_err();
    assert!(e.msg.contains("default-route"), "{}", e.msg);
}
