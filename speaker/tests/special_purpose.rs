//! Special-purpose addresses in a Service's status are never announced, in either mode: the
//! controller never assigns them, but a hand-written status on the state directory could
//! carry one, and a gratuitous ARP for 255.255.255.255 or an NA for ff02::1 would disturb
//! every host on the segment.

use metalnet::model::core::Service;
use metalnet::testing::{Manifest, service};
use metalnet_speaker::layer2::election::service_ips;

#[test]
fn special_purpose_addresses_in_status_are_left_out() {
    let svc: Service = serde_json::from_value(
        service("web")
            .ingress([
                "255.255.255.255",
                "0.0.0.0",
                "127.0.0.1",
                "224.0.0.1",
                "169.254.1.1",
                "::1",
                "ff02::1",
                "fe80::1",
                "192.0.2.5",
                "2001:db8::5",
            ])
            .json(),
    )
    .unwrap();
    let ips: Vec<String> = service_ips(&svc).iter().map(|ip| ip.to_string()).collect();
    assert_eq!(ips, ["192.0.2.5", "2001:db8::5"]);
}
