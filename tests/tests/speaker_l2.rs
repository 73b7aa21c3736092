//! metalnet-speaker in layer 2 mode, end to end: the demo site (three nodes and a client on
//! one switch), one speaker per node on a shared state directory, real `arping`/`ndisc6`/`ping`
//! from the client. Needs root (network namespaces). Every test builds its own lab.
//!
//! As kube-proxy's IPVS mode does, each node carries the service addresses on `lo` with
//! `arp_ignore=1`, so the kernel accepts traffic for them but never answers ARP for them:
//! only the speaker does.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use metalnet::state::{Kind, ObjectRef, dir};
use metalnet::testing::{AdvertisementBuilder, Manifest, l2_advertisement, pool};
use metalnet_lab::lab::components::l2_announcers;
use metalnet_lab::lab::l2site::{self, L2Site, NODES, neighbour_mac, service_yaml, site_node};
use metalnet_lab::lab::wait_for;
use metalnet_lab::{Process, bins};
use metalnet_speaker::layer2::RESCAN_INTERVAL;
use metalnet_speaker::layer2::election::first_ranked;
use serde_json::json;

const STEP: Duration = Duration::from_secs(15);

/// The node MetalLB's ordering picks among `candidates` for `ip`.
fn winner(candidates: &[&str], ip: &str) -> String {
    first_ranked(candidates, &ip.parse::<IpAddr>().unwrap())
        .unwrap()
        .to_string()
}

/// The lab site with debug logs from the speakers, and the test's shorthands.
struct Site(L2Site);

impl std::ops::Deref for Site {
    type Target = L2Site;
    fn deref(&self) -> &L2Site {
        &self.0
    }
}

impl Site {
    fn new(test: &str, objects: &str, vips: &[&str]) -> Site {
        let site = L2Site::new(test, objects, vips).unwrap();
        Site(site.with_speaker_args(&["--log-level", "info,metalnet_speaker=debug"]))
    }

    fn mac(&self, node: &str) -> String {
        self.0.mac(node).unwrap()
    }

    fn start(&self, node: &str, process: &str, extra: &[&str]) -> Process {
        self.0.start(node, process, extra).unwrap()
    }

    fn start_all(&self, extra: &[&str]) -> Vec<Process> {
        self.0.start_all(extra).unwrap()
    }
}

/// The pool `site` (192.0.2.200-250) advertised by `l2`, and the Services.
fn site_objects(l2: AdvertisementBuilder, services: &[(&str, &str)]) -> String {
    l2site::site_objects(&["192.0.2.200-192.0.2.250"], l2, services)
}

/// Waits until `ip` is answered from the client, and returns the MACs of a 3-request run.
fn wait_answered(site: &Site, iface: &str, ip: &str) -> Vec<String> {
    wait_for(&format!("an ARP answer for {ip}"), STEP, || {
        !site.demo.client.arping(iface, ip, 1).unwrap().is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(site)));
    site.demo.client.arping(iface, ip, 3).unwrap()
}

fn logs(site: &Site) -> String {
    NODES
        .iter()
        .map(|n| {
            let dir = site.node(n).dir().to_path_buf();
            let mut s = format!("--- {n} ---\n");
            for f in ["speaker.err", "speaker2.err"] {
                if let Ok(t) = std::fs::read_to_string(dir.join(f)) {
                    let tail: Vec<&str> = t.lines().rev().take(40).collect();
                    s.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
                    s.push('\n');
                }
            }
            s
        })
        .collect()
}

/// An address of `pool_prefix`.`from..` whose winner among all nodes differs from `other`'s.
fn address_won_by_another(other_ip: &str, first: u8) -> String {
    let w = winner(&NODES, other_ip);
    (first..250)
        .map(|i| format!("192.0.2.{i}"))
        .find(|ip| winner(&NODES, ip) != w)
        .unwrap()
}

#[test]
fn arping_gets_one_answer_from_the_elected_node_and_addresses_spread() {
    let ip_a = "192.0.2.200";
    let ip_b = address_won_by_another(ip_a, 201);
    let objects = site_objects(l2_advertisement("l2"), &[("web", ip_a), ("db", &ip_b)]);
    let site = Site::new("l2_arping", &objects, &[]);
    let _speakers = site.start_all(&[]);

    for ip in [ip_a, ip_b.as_str()] {
        let expected = winner(&NODES, ip);
        let macs = wait_answered(&site, "eth0", ip);
        assert_eq!(
            macs,
            vec![site.mac(&expected); 3],
            "{ip}: exactly one answer per request, from {expected}\n{}",
            logs(&site)
        );
    }
    // Another address of the subnet (a node's own, not a service) is not answered by speakers:
    // the only answer is the node's kernel.
    assert_eq!(
        site.demo.client.arping("eth0", "192.0.2.12", 1).unwrap(),
        vec![site.mac("node2")]
    );
    // Nobody answers an address no Service has.
    assert!(
        site.demo
            .client
            .arping("eth0", "192.0.2.230", 1)
            .unwrap()
            .is_empty()
    );

    // A malformed ARP frame (IPv6-sized protocol addresses) is dropped and counted by every
    // speaker on the segment.
    let client_mac = site.demo.client.mac("eth0").unwrap().replace(':', "");
    let script = format!(
        "import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('eth0', 0)); \
         s.send(bytes.fromhex('ffffffffffff{client_mac}0806' + '0001 86dd 06 10 0001'.replace(' ', '') + '00' * 40))"
    );
    site.demo
        .client
        .exec_ok(&["python3", "-c", &script])
        .unwrap();
    wait_for("the malformed frame to be counted", STEP, || {
        site.metrics("node3")
            .contains("metalnet_layer2_malformed_frames_total{interface=\"eth0\"} 1")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", site.metrics("node3")));

    // A VLAN-tagged (802.1Q, VLAN 100) request for a Service address is not answered on the
    // untagged interface: with no interface for VLAN 100, the kernel removes the tag and
    // classes the frame as for another host; the speaker drops and counts it.
    let script = format!(
        "import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('eth0', 0)); \
         s.send(bytes.fromhex('ffffffffffff{client_mac}81000064' + '0806 0001 0800 06 04 0001'.replace(' ', '') \
         + '{client_mac}c0000264' + '00' * 6 + 'c00002c8' + '00' * 18))"
    );
    site.demo
        .client
        .exec_ok(&["python3", "-c", &script])
        .unwrap();
    wait_for("the tagged frame to be dropped and counted", STEP, || {
        site.metrics("node3")
            .contains("metalnet_speaker_frames_dropped_total{reason=\"other_host\"} 1")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", site.metrics("node3")));

    // Status: a ServiceL2Status by the winner, an Event, metrics, explain.
    let w = winner(&NODES, ip_a);
    wait_for("ServiceL2Status for web", STEP, || {
        status_nodes(site.state_dir(), "web") == vec![w.clone()]
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", status_nodes(site.state_dir(), "web")));
    let assigned = format!("announcing from node \"{w}\" with protocol \"layer2\"");
    let events = service_events(&site, "web");
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "nodeAssigned" && e["message"] == assigned.as_str()),
        "{events:?}"
    );
    let m = site.metrics(&w);
    assert!(
        m.contains(&format!(
            "metallb_layer2_requests_received_total{{ip=\"{ip_a}\"}}"
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "metallb_layer2_gratuitous_sent_total{{ip=\"{ip_a}\"}}"
        )),
        "{m}"
    );
    assert!(m.contains("metalnet_speaker_members 3"), "{m}");
    let loser = NODES.iter().find(|n| **n != w).unwrap();
    let out = explain(&site, loser, "web");
    assert!(out.contains(&format!("verdict: announced by {w}")), "{out}");
    assert!(
        out.contains(&format!("this node ({loser}) does not announce it")),
        "{out}"
    );
    assert!(out.contains("gossip view of the speaker"), "{out}");
    assert!(out.contains("Normal nodeAssigned"), "{out}");
}

/// `metalnet-speaker explain default/NAME` run on `node` against the site's state directory.
fn explain(site: &L2Site, node: &str, name: &str) -> String {
    let bin = bins::binary("metalnet-speaker").unwrap();
    site.node(node)
        .exec_ok(&[
            bin.to_str().unwrap(),
            "explain",
            &format!("default/{name}"),
            "--state-dir",
            site.state_dir().to_str().unwrap(),
            "--node-name",
            node,
        ])
        .unwrap()
}

/// The nodes with a ServiceL2Status for Service default/`name`.
fn status_nodes(dir: &Path, name: &str) -> Vec<String> {
    l2_announcers(dir, "default", name)
}

#[test]
fn ndisc6_gets_one_answer_from_the_elected_node() {
    let ip = "2001:db8:0:1::200";
    let objects = format!(
        "{}{}{}",
        pool("site6", ["2001:db8:0:1::200/125"]).document(),
        l2_advertisement("l2").document(),
        service_yaml("web6", &[ip], "Cluster", &["node1"]),
    );
    let site = Site::new("l2_ndisc6", &objects, &[]);
    let _speakers = site.start_all(&[]);
    let expected = winner(&NODES, ip);
    let answers = |site: &Site| -> Vec<String> {
        let out = site
            .demo
            .client
            .exec_status(&["ndisc6", "-m", "-n", "-r", "1", "-w", "1500", ip, "eth0"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("Target link-layer address"))
            .filter_map(|l| {
                l.split(':')
                    .skip(1)
                    .collect::<Vec<_>>()
                    .join(":")
                    .trim()
                    .to_lowercase()
                    .into()
            })
            .collect()
    };
    wait_for("a neighbor advertisement", STEP, || {
        !answers(&site).is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&site)));
    // Past the takeover announcements (unsolicited NAs for 5 s), one solicitation gets
    // exactly one answer.
    std::thread::sleep(Duration::from_millis(5500));
    assert_eq!(answers(&site), vec![site.mac(&expected)], "{}", logs(&site));
    // The client's kernel resolves it too (solicited-node multicast, checksum, flags).
    site.demo
        .client
        .exec_status(&["ping", "-6", "-c1", "-W1", ip])
        .unwrap();
    wait_for("client neighbour entry", STEP, || {
        let out = site
            .demo
            .client
            .exec_ok(&["ip", "-6", "neigh", "show", ip, "dev", "eth0"])
            .unwrap_or_default();
        out.to_lowercase().contains(&site.mac(&expected))
    })
    .unwrap();
}

/// The first address of `prefix`.`range` whose winner among all nodes is `node`.
fn address_won_by(prefix: &str, range: std::ops::Range<u8>, node: &str) -> String {
    range
        .map(|i| format!("{prefix}.{i}"))
        .find(|ip| winner(&NODES, ip) == node)
        .unwrap()
}

#[test]
fn node_selectors_interfaces_and_local_policy_restrict_who_answers() {
    // node1 would win these addresses if every node could answer.
    let selected_ip = address_won_by("192.0.2", 210..220, "node1");
    let local_ip = address_won_by("192.0.2", 220..230, "node1");
    let eth1_ip = "203.0.113.200";
    let objects = format!(
        "{}{}{}{}{}{}{}{}{}",
        pool("zoned", ["192.0.2.210-192.0.2.219"]).document(),
        l2_advertisement("zone-b")
            .pools(["zoned"])
            .node_selector(json!({"zone": "b"}))
            .document(),
        service_yaml("zoned", &[&selected_ip], "Cluster", &["node1"]),
        pool("main", ["192.0.2.220-192.0.2.229"]).document(),
        l2_advertisement("main").pools(["main"]).document(),
        service_yaml("local", &[&local_ip], "Local", &["node3"]),
        pool("second", ["203.0.113.200/29"]).document(),
        l2_advertisement("second")
            .pools(["second"])
            .interfaces(["eth1"])
            .document(),
        service_yaml("second", &[eth1_ip], "Cluster", &["node1"]),
    );
    let site = Site::new("l2_restrict", &objects, &[]);
    // A second segment on eth1 of every node and of the client.
    let second = site.lab.switch("second").unwrap();
    for (i, h) in site.demo.nodes.iter().enumerate() {
        site.lab.connect(h, &second, "eth1").unwrap();
        h.add_addr("eth1", &format!("203.0.113.{}/24", 11 + i))
            .unwrap();
    }
    site.lab
        .connect(&site.demo.client, &second, "eth1")
        .unwrap();
    site.demo
        .client
        .add_addr("eth1", "203.0.113.100/24")
        .unwrap();
    let _speakers = site.start_all(&[]);

    // nodeSelectors: only zone b (node2, node3) may answer.
    let expected = winner(&["node2", "node3"], &selected_ip);
    assert_eq!(
        wait_answered(&site, "eth0", &selected_ip),
        vec![site.mac(&expected); 3],
        "{}",
        logs(&site)
    );
    // externalTrafficPolicy Local: only the node with the endpoint (node3).
    assert_eq!(
        wait_answered(&site, "eth0", &local_ip),
        vec![site.mac("node3"); 3],
        "{}",
        logs(&site)
    );
    // interfaces: answered on eth1 with eth1's MAC, never on eth0.
    let w = winner(&NODES, eth1_ip);
    let eth1_mac = site.node(&w).mac("eth1").unwrap();
    assert_eq!(wait_answered(&site, "eth1", eth1_ip), vec![eth1_mac; 3]);
    assert!(
        site.demo
            .client
            .arping("eth0", eth1_ip, 2)
            .unwrap()
            .is_empty()
    );
}

/// Events about Service default/`name`, read through the state-directory backend.
fn service_events(site: &Site, name: &str) -> Vec<serde_json::Value> {
    let svc = ObjectRef::new(Kind::Service, Some("default"), name);
    dir::list_events(site.state_dir(), &svc)
}

#[test]
fn missing_interfaces_give_an_announce_failed_event_once_and_no_status() {
    let ip = "192.0.2.200";
    let objects = site_objects(
        l2_advertisement("l2").interfaces(["does-not-exist"]),
        &[("web", ip)],
    );
    let site = Site::new("l2_missing_if", &objects, &[]);
    let _speakers = site.start_all(&[]);
    let w = winner(&NODES, ip);
    let failed = |site: &Site| -> Vec<serde_json::Value> {
        service_events(site, "web")
            .into_iter()
            .filter(|e| e["reason"] == "announceFailed")
            .collect()
    };
    wait_for("the announceFailed event", STEP, || {
        !failed(&site).is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&site)));
    let event = &failed(&site)[0];
    assert_eq!(event["type"], "Warning", "{event}");
    let message = event["message"].as_str().unwrap_or_default();
    for part in [
        format!("\"{ip}\""),
        format!("assigned node \"{w}\""),
        "does-not-exist (does not exist)".to_string(),
    ] {
        assert!(message.contains(&part), "{part} missing in {message}");
    }
    // Not announced: no answer, no status object, no nodeAssigned, no announced metric.
    assert!(site.demo.client.arping("eth0", ip, 2).unwrap().is_empty());
    // Past a rescan of the interfaces (and the rounds the status writes cause): still the
    // one Event, recorded once.
    std::thread::sleep(RESCAN_INTERVAL + Duration::from_secs(1));
    let events = service_events(&site, "web");
    assert_eq!(failed(&site).len(), 1, "{events:?}");
    assert_eq!(failed(&site)[0]["count"], 1, "{events:?}");
    assert!(
        events.iter().all(|e| e["reason"] != "nodeAssigned"),
        "{events:?}"
    );
    assert!(status_nodes(site.state_dir(), "web").is_empty());
    let out = explain(&site, &w, "web");
    assert!(
        out.contains("Warning announceFailed") && out.contains("does-not-exist"),
        "{out}"
    );
    let m = site.metrics(&w);
    assert!(
        m.contains("metalnet_speaker_members 3") && !m.contains("metallb_speaker_announced{"),
        "{m}"
    );

    // The interface appears on the winner (one end of a veth pair inside its namespace):
    // the next rescan announces the address.
    let node = site.node(&w);
    node.exec_ok(&[
        "ip",
        "link",
        "add",
        "does-not-exist",
        "type",
        "veth",
        "peer",
        "name",
        "dne-peer",
    ])
    .unwrap();
    for link in ["dne-peer", "does-not-exist"] {
        node.exec_ok(&["ip", "link", "set", link, "up"]).unwrap();
    }
    wait_for("ServiceL2Status once the interface exists", STEP, || {
        status_nodes(site.state_dir(), "web") == vec![w.clone()]
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&site)));
    wait_for("the nodeAssigned event", STEP, || {
        service_events(&site, "web")
            .iter()
            .any(|e| e["reason"] == "nodeAssigned")
    })
    .unwrap();
}

#[test]
fn sigkill_of_the_announcing_speaker_moves_the_address() {
    let ip = "192.0.2.200";
    let objects = site_objects(l2_advertisement("l2"), &[("web", ip)]);
    let site = Site::new("l2_sigkill", &objects, &[ip]);
    let speakers = site.start_all(&[]);
    let first = winner(&NODES, ip);
    site.wait_reached(ip, &first, STEP)
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&site)));

    // The node "dies": its speaker is killed and it stops serving the address.
    let index = NODES.iter().position(|n| *n == first).unwrap();
    site.stop_serving(&first, ip).unwrap();
    speakers[index].kill();
    let rest: Vec<&str> = NODES.iter().copied().filter(|n| *n != first).collect();
    let second = winner(&rest, ip);
    // The client's entry moves by the gratuitous ARP alone: nothing here re-resolves it.
    wait_for("the neighbour entry to move", STEP, || {
        neighbour_mac(&site.demo.client, ip) == Some(site.mac(&second))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}\n{}",
            neighbour_mac(&site.demo.client, ip),
            logs(&site)
        )
    });
    wait_for("ping to the address again", STEP, || {
        site.demo.client.ping(ip)
    })
    .unwrap();
    let m = site.metrics(&second);
    assert!(
        m.contains(&format!(
            "metallb_layer2_gratuitous_sent_total{{ip=\"{ip}\"}}"
        )),
        "{m}"
    );
    assert!(m.contains("metalnet_speaker_members 2"), "{m}");
    wait_for("status moved", STEP, || {
        status_nodes(site.state_dir(), "web") == vec![second.clone()]
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", status_nodes(site.state_dir(), "web")));
}

#[test]
fn sigterm_hands_over_without_a_gap_and_a_restart_takes_back_without_flap() {
    let ip = "192.0.2.200";
    let other_ip = address_won_by_another(ip, 201);
    let objects = site_objects(l2_advertisement("l2"), &[("web", ip), ("db", &other_ip)]);
    let site = Site::new("l2_sigterm", &objects, &[ip]);
    let speakers = site.start_all(&[]);
    let first = winner(&NODES, ip);
    let other_owner = winner(&NODES, &other_ip);
    wait_answered(&site, "eth0", ip);
    wait_answered(&site, "eth0", &other_ip);
    wait_for("ping to the address", STEP, || site.demo.client.ping(ip)).unwrap();
    // Past the takeover announcements, so that the counts below are the restart's own.
    std::thread::sleep(Duration::from_millis(5500));

    // ARP requests every 50 ms through the handover: every one must be answered.
    let probe = site
        .demo
        .client
        .spawn(
            "arping",
            &["arping", "-r", "-c", "60", "-W", "0.05", "-i", "eth0", ip],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let index = NODES.iter().position(|n| *n == first).unwrap();
    let stopped = Instant::now();
    speakers[index].stop();
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        stopped.elapsed()
    );
    wait_for("the ARP probe to finish", STEP, || !probe.is_running()).unwrap();
    let replies: Vec<String> = probe
        .logs()
        .lines()
        .map(|l| l.trim().to_lowercase())
        .filter(|l| l.len() == 17 && l.matches(':').count() == 5)
        .collect();
    let rest: Vec<&str> = NODES.iter().copied().filter(|n| *n != first).collect();
    let second = winner(&rest, ip);
    // Every request answered; at most a request or two in the instant of the handover may see
    // both nodes.
    assert!(
        (60..=62).contains(&replies.len()),
        "{} replies to 60 requests: {replies:?}\n{}",
        replies.len(),
        logs(&site)
    );
    assert!(
        replies
            .iter()
            .all(|m| *m == site.mac(&first) || *m == site.mac(&second)),
        "{replies:?}"
    );
    assert_eq!(replies.last(), Some(&site.mac(&second)), "{replies:?}");
    wait_for("the neighbour entry to move", STEP, || {
        neighbour_mac(&site.demo.client, ip) == Some(site.mac(&second))
    })
    .unwrap();

    // The stopped speaker comes back and takes its address back; the other address never
    // moves (nobody else announces it, its owner sends no new announcement).
    let grat_before = gratuitous_count(&site.metrics(&other_owner), &other_ip);
    let _restarted = site.start(&first, "speaker2", &[]);
    wait_for("the neighbour entry to come back", STEP, || {
        neighbour_mac(&site.demo.client, ip) == Some(site.mac(&first))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&site)));
    assert_eq!(
        site.demo.client.arping("eth0", &other_ip, 3).unwrap(),
        vec![site.mac(&other_owner); 3]
    );
    for n in NODES {
        let m = site.metrics(n);
        let sent = gratuitous_count(&m, &other_ip);
        if n == other_owner {
            assert_eq!(sent, grat_before, "{n} re-announced {other_ip}: {m}");
        } else {
            assert_eq!(sent, 0, "{n} announced {other_ip}: {m}");
        }
    }
}

fn gratuitous_count(metrics: &str, ip: &str) -> u64 {
    let prefix = format!("metallb_layer2_gratuitous_sent_total{{ip=\"{ip}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn without_gossip_the_node_ready_condition_decides() {
    let ip = "192.0.2.200";
    let objects = site_objects(l2_advertisement("l2"), &[("web", ip)]);
    let site = Site::new("l2_no_gossip", &objects, &[]);
    let _speakers = site.start_all(&["--gossip", "off"]);
    let first = winner(&NODES, ip);
    assert_eq!(
        wait_answered(&site, "eth0", ip),
        vec![site.mac(&first); 3],
        "{}",
        logs(&site)
    );
    // The winner's Node turns NotReady: every speaker moves the address to the next node.
    let cluster = site.state_dir().join("cluster.yaml");
    let text = std::fs::read_to_string(&cluster).unwrap();
    let index = NODES.iter().position(|n| *n == first).unwrap();
    let ready = site_node(index).ready().document();
    assert!(text.contains(&ready), "{text}");
    let not_ready = site_node(index).not_ready().document();
    std::fs::write(&cluster, text.replace(&ready, &not_ready)).unwrap();
    let rest: Vec<&str> = NODES.iter().copied().filter(|n| *n != first).collect();
    let second = winner(&rest, ip);
    wait_for("the address to move", STEP, || {
        site.demo.client.arping("eth0", ip, 1).unwrap() == vec![site.mac(&second)]
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&site)));
}
