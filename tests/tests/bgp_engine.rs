//! The BGP engine of `metalnet-config` against real routers (BIRD, FRR, GoBGP) in network
//! namespaces: eBGP and iBGP, IPv4 and IPv6, communities, large communities, LOCAL_PREF,
//! withdrawal, router restart, graceful restart, TCP MD5.
//!
//! Each test makes two namespaces joined by a veth (speaker `s`: 192.0.2.1, 2001:db8::1;
//! router `r`: 192.0.2.2, 2001:db8::2) and runs our session on a thread that entered `s`.
//! Needs root and the daemons; tests skip (pass with a note) when either is missing.
//!
//! Uses a minimal local namespace helper until the lab library (`tests/src/lab`) lands.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use metalnet_config::bgp::fsm::State;
use metalnet_config::bgp::wire::LargeCommunity;
use metalnet_config::bgp::{Password, PeerConfig, RouteAttrs, Session, SessionHandle};

const SPEAKER_V4: &str = "192.0.2.1";
const ROUTER_V4: &str = "192.0.2.2";
const SPEAKER_V6: &str = "2001:db8::1";
const ROUTER_V6: &str = "2001:db8::2";
const SPEAKER_AS: u32 = 64512;
const ROUTER_AS: u32 = 64513;
/// 64512:1 as a 32-bit community.
const COMMUNITY: u32 = (64512 << 16) | 1;
const LARGE: LargeCommunity = LargeCommunity {
    global: 64512,
    local1: 1,
    local2: 2,
};
const WAIT: Duration = Duration::from_secs(30);

// --- minimal namespace helper -----------------------------------------------------------------

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn can_run(tools: &[&str]) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let missing: Vec<_> = tools.iter().filter(|t| !have(t)).collect();
    if !root || !missing.is_empty() {
        eprintln!("skipping: root={root}, missing tools {missing:?}");
        return false;
    }
    true
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_lossy(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default()
}

fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// Two namespaces and a veth between them; removed on drop (also when a test panics).
struct Pair {
    speaker: String,
    router: String,
    dir: PathBuf,
}

impl Pair {
    fn new(test: &str) -> Pair {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let pair = Pair {
            speaker: format!("mnbgp-{test}-{id}-s"),
            router: format!("mnbgp-{test}-{id}-r"),
            dir: std::env::temp_dir().join(format!("mnbgp-{test}-{id}")),
        };
        let _ = std::fs::remove_dir_all(&pair.dir);
        std::fs::create_dir_all(&pair.dir).expect("temp dir");
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&pair.dir, std::fs::Permissions::from_mode(0o777));
        }
        for ns in [&pair.speaker, &pair.router] {
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        run(&[
            "ip",
            "-n",
            &pair.speaker,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pair.router,
        ]);
        for (ns, v4, v6) in [
            (&pair.speaker, SPEAKER_V4, SPEAKER_V6),
            (&pair.router, ROUTER_V4, ROUTER_V6),
        ] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                "eth0",
            ]);
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        }
        pair
    }

    fn in_router(&self, args: &[&str]) -> Command {
        in_ns(&self.router, args)
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).to_string_lossy().into_owned()
    }

    /// Runs `body` on a thread inside the speaker namespace with its own tokio runtime.
    fn in_speaker<F, Fut>(&self, body: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let ns = format!("/run/netns/{}", self.speaker);
        let t = std::thread::spawn(move || {
            let f = std::fs::File::open(&ns).expect("netns file");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                tokio::time::timeout(Duration::from_secs(120), body())
                    .await
                    .expect("test body timed out");
            });
        });
        if let Err(p) = t.join() {
            std::panic::resume_unwind(p);
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.speaker, &self.router] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A daemon in the router namespace; killed on drop.
struct Daemon {
    child: Option<Child>,
    name: &'static str,
}

impl Daemon {
    fn spawn(name: &'static str, mut cmd: Command, log: &str) -> Daemon {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdout(out)
            .stderr(err)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        Daemon {
            child: Some(child),
            name,
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            eprintln!("stopping {}", self.name);
        }
        self.stop();
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn wait_async(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// --- the routers ------------------------------------------------------------------------------

/// How the router sees us.
#[derive(Clone, Copy)]
struct RouterSetup {
    asn: u32,
    password: Option<&'static str>,
    graceful_restart: bool,
}

trait Router: Send + Sync {
    /// Everything the router knows about `prefix` (text or JSON), empty when it has no route.
    fn route(&self, prefix: &str) -> String;
    fn name(&self) -> &'static str;
}

struct Bird {
    daemon: Daemon,
    ns: String,
    sock: String,
    cmd: Vec<String>,
    log: String,
}

impl Bird {
    fn start(pair: &Pair, setup: RouterSetup) -> Bird {
        let conf = pair.path("bird.conf");
        let pw = setup
            .password
            .map(|p| format!("  password \"{p}\";\n"))
            .unwrap_or_default();
        let gr = if setup.graceful_restart {
            "  graceful restart on;\n  long lived graceful restart off;\n"
        } else {
            ""
        };
        let mut c = format!(
            "log \"{log}\" all;\nrouter id {ROUTER_V4};\nprotocol device {{}}\n\
             protocol kernel {{ ipv4 {{ export all; }}; }}\nprotocol kernel {{ ipv6 {{ export all; }}; }}\n\
             protocol static {{ ipv4; route 198.51.100.0/24 via {ROUTER_V4} {{ bgp_community.add((64513,7)); bgp_large_community.add((64513,1,2)); }}; }}\n\
             protocol static {{ ipv6; route 2001:db8:99::/48 via {ROUTER_V6}; }}\n",
            log = pair.path("bird.log")
        );
        for (name, nb, local, channel) in [
            (
                "spk4",
                SPEAKER_V4,
                ROUTER_V4,
                "ipv4 { import all; export where net = 198.51.100.0/24; next hop self; };",
            ),
            (
                "spk6",
                SPEAKER_V6,
                ROUTER_V6,
                "ipv6 { import all; export where net = 2001:db8:99::/48; next hop self; };",
            ),
        ] {
            c.push_str(&format!(
                "protocol bgp {name} {{\n  local {local} as {asn};\n  neighbor {nb} as {SPEAKER_AS};\n  passive on;\n  direct;\n{pw}{gr}  hold time 9;\n  {channel}\n}}\n",
                asn = setup.asn
            ));
        }
        std::fs::write(&conf, c).expect("bird.conf");
        let sock = pair.path("bird.ctl");
        let cmd: Vec<String> = [
            "bird",
            "-f",
            "-c",
            &conf,
            "-s",
            &sock,
            "-P",
            &pair.path("bird.pid"),
        ]
        .map(String::from)
        .to_vec();
        let log = pair.path("bird.out");
        let mut bird = Bird {
            daemon: Daemon {
                child: None,
                name: "bird",
            },
            ns: pair.router.clone(),
            sock,
            cmd,
            log,
        };
        bird.restart();
        bird
    }

    fn restart(&mut self) {
        self.daemon.stop();
        let args: Vec<&str> = self.cmd.iter().map(String::as_str).collect();
        self.daemon = Daemon::spawn("bird", in_ns(&self.ns, &args), &self.log);
        wait_until("bird control socket", Duration::from_secs(10), || {
            run_lossy(&["birdc", "-s", &self.sock, "show", "status"]).contains("Daemon is up")
        });
    }

    fn protocol(&self, name: &str) -> String {
        run_lossy(&["birdc", "-s", &self.sock, "show", "protocols", "all", name])
    }
}

impl Router for Bird {
    fn route(&self, prefix: &str) -> String {
        let out = run_lossy(&["birdc", "-s", &self.sock, "show", "route", prefix, "all"]);
        if out.contains(prefix) {
            out
        } else {
            String::new()
        }
    }
    fn name(&self) -> &'static str {
        "bird"
    }
}

struct Frr {
    _daemon: Daemon,
    vty: String,
}

impl Frr {
    fn start(pair: &Pair, setup: RouterSetup) -> Frr {
        let conf = pair.path("bgpd.conf");
        let mut c = format!(
            "frr defaults traditional\nhostname r\nlog file {log}\n!\nroute-map NET permit 10\n set community 64513:7\n set large-community 64513:1:2\n!\n\
             router bgp {asn}\n bgp router-id {ROUTER_V4}\n no bgp ebgp-requires-policy\n no bgp network import-check\n",
            log = pair.path("bgpd.log"),
            asn = setup.asn
        );
        if setup.graceful_restart {
            c.push_str(" bgp graceful-restart\n");
        }
        for nb in [SPEAKER_V4, SPEAKER_V6] {
            c.push_str(&format!(" neighbor {nb} remote-as {SPEAKER_AS}\n neighbor {nb} passive\n neighbor {nb} timers 3 9\n"));
            if let Some(p) = setup.password {
                c.push_str(&format!(" neighbor {nb} password {p}\n"));
            }
        }
        c.push_str(&format!(
            " address-family ipv4 unicast\n  network 198.51.100.0/24 route-map NET\n  neighbor {SPEAKER_V4} activate\n  no neighbor {SPEAKER_V6} activate\n exit-address-family\n\
             address-family ipv6 unicast\n  network 2001:db8:99::/48\n  neighbor {SPEAKER_V6} activate\n exit-address-family\n!\n"
        ));
        std::fs::write(&conf, c).expect("bgpd.conf");
        let vty = pair.dir.to_string_lossy().into_owned();
        let args = [
            "/usr/lib/frr/bgpd",
            "-S",
            "-Z",
            "-n",
            "--vty_socket",
            &vty,
            "-i",
            &pair.path("bgpd.pid"),
            "-f",
            &conf,
            "-P",
            "0",
        ];
        let daemon = Daemon::spawn("bgpd", pair.in_router(&args), &pair.path("bgpd.out"));
        let frr = Frr {
            _daemon: daemon,
            vty,
        };
        wait_until("bgpd vty", Duration::from_secs(15), || {
            run_lossy(&[
                "vtysh",
                "--vty_socket",
                &frr.vty,
                "-c",
                "show bgp summary json",
            ])
            .contains('{')
        });
        frr
    }
}

impl Router for Frr {
    fn route(&self, prefix: &str) -> String {
        let af = if prefix.contains(':') { "ipv6" } else { "ipv4" };
        let out = run_lossy(&[
            "vtysh",
            "--vty_socket",
            &self.vty,
            "-c",
            &format!("show bgp {af} unicast {prefix} json"),
        ]);
        if out.contains("\"paths\"") {
            out
        } else {
            String::new()
        }
    }
    fn name(&self) -> &'static str {
        "frr"
    }
}

struct Gobgp {
    _daemon: Daemon,
    api: String,
}

impl Gobgp {
    fn start(pair: &Pair, setup: RouterSetup) -> Gobgp {
        let conf = pair.path("gobgpd.toml");
        let mut c = format!(
            "[global.config]\n  as = {}\n  router-id = \"{ROUTER_V4}\"\n  port = 179\n",
            setup.asn
        );
        for (nb, afi) in [(SPEAKER_V4, "ipv4-unicast"), (SPEAKER_V6, "ipv6-unicast")] {
            c.push_str(&format!("\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{nb}\"\n    peer-as = {SPEAKER_AS}\n"));
            if let Some(p) = setup.password {
                c.push_str(&format!("    auth-password = \"{p}\"\n"));
            }
            c.push_str(
                "  [neighbors.timers.config]\n    hold-time = 9\n    keepalive-interval = 3\n",
            );
            c.push_str("  [neighbors.transport.config]\n    passive-mode = true\n");
            if setup.graceful_restart {
                c.push_str("  [neighbors.graceful-restart.config]\n    enabled = true\n");
            }
            c.push_str(&format!("  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{afi}\"\n"));
            if setup.graceful_restart {
                c.push_str(
                    "    [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n",
                );
            }
        }
        std::fs::write(&conf, c).expect("gobgpd.toml");
        let api = "127.0.0.1:50051".to_string();
        let args = [
            "gobgpd",
            "-f",
            &conf,
            "--api-hosts",
            &api,
            "--disable-stdlog",
            "-l",
            "debug",
            "--log-plain",
        ];
        let daemon = Daemon::spawn("gobgpd", pair.in_router(&args), &pair.path("gobgpd.out"));
        let ns = pair.router.clone();
        let g = Gobgp {
            _daemon: daemon,
            api: ns,
        };
        wait_until("gobgpd API", Duration::from_secs(15), || {
            g.cli(&["global"]).contains("AS:")
        });
        // Originate a route towards us for the received() checks.
        g.cli(&[
            "global",
            "rib",
            "add",
            "-a",
            "ipv4",
            "198.51.100.0/24",
            "nexthop",
            ROUTER_V4,
            "community",
            "64513:7",
            "large-community",
            "64513:1:2",
        ]);
        g.cli(&[
            "global",
            "rib",
            "add",
            "-a",
            "ipv6",
            "2001:db8:99::/48",
            "nexthop",
            ROUTER_V6,
        ]);
        g
    }

    fn cli(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.api, "gobgp", "-p", "50051"];
        full.extend_from_slice(args);
        run_lossy(&full)
    }
}

impl Router for Gobgp {
    fn route(&self, prefix: &str) -> String {
        let af = if prefix.contains(':') { "ipv6" } else { "ipv4" };
        let out = self.cli(&["global", "rib", "-a", af, prefix]);
        if out.contains(prefix.split('/').next().unwrap_or(prefix)) {
            out
        } else {
            String::new()
        }
    }
    fn name(&self) -> &'static str {
        "gobgp"
    }
}

// --- scenarios --------------------------------------------------------------------------------

fn peer_config(peer: &str, peer_as: u32) -> PeerConfig {
    let mut c = PeerConfig::new(SPEAKER_AS, peer_as, peer.parse().unwrap());
    c.router_id = Some(Ipv4Addr::new(192, 0, 2, 1));
    c.retry_initial = Duration::from_millis(300);
    c.retry_max = Duration::from_secs(2);
    c.connect_time = Duration::from_secs(3);
    c
}

fn routes(entries: &[(&str, RouteAttrs)]) -> BTreeMap<IpNet, RouteAttrs> {
    entries
        .iter()
        .map(|(p, a)| (p.parse().unwrap(), a.clone()))
        .collect()
}

fn attrs(local_pref: Option<u32>) -> RouteAttrs {
    RouteAttrs {
        local_pref,
        communities: vec![COMMUNITY],
        large_communities: vec![LARGE],
        ..RouteAttrs::default()
    }
}

async fn established(h: &SessionHandle, who: &str) {
    assert!(
        h.wait_for(State::Established, WAIT).await,
        "{who}: session not established: {:?}",
        h.status()
    );
}

async fn wait_route(r: &dyn Router, prefix: &str) -> String {
    let mut out = String::new();
    wait_async(&format!("{} to learn {prefix}", r.name()), WAIT, || {
        out = r.route(prefix);
        !out.is_empty()
    })
    .await;
    out
}

async fn wait_no_route(r: &dyn Router, prefix: &str) {
    wait_async(&format!("{} to drop {prefix}", r.name()), WAIT, || {
        r.route(prefix).is_empty()
    })
    .await;
}

fn assert_contains(text: &str, needles: &[&str], who: &str) {
    for n in needles {
        assert!(text.contains(n), "{who}: {n:?} missing in:\n{text}");
    }
}

/// eBGP over IPv4 and IPv6 (MP-BGP): announce, check attributes, receive, withdraw.
async fn ebgp_v4_v6(router: &dyn Router, community_text: &str, large_text: &str) {
    // Bound to our address explicitly on IPv4, left to the kernel on IPv6.
    let mut c4 = peer_config(ROUTER_V4, ROUTER_AS);
    c4.source_address = Some(SPEAKER_V4.parse().unwrap());
    let s4 = Session::spawn(c4);
    let s6 = Session::spawn(peer_config(ROUTER_V6, ROUTER_AS));
    established(&s4, "v4").await;
    established(&s6, "v6").await;
    s4.set_routes(routes(&[("203.0.113.5/32", attrs(None))]));
    s6.set_routes(routes(&[("2001:db8:5::/64", attrs(None))]));

    let v4 = wait_route(router, "203.0.113.5/32").await;
    assert_contains(
        &v4,
        &[SPEAKER_V4, community_text, large_text, "64512"],
        router.name(),
    );
    let v6 = wait_route(router, "2001:db8:5::/64").await;
    assert_contains(
        &v6,
        &[SPEAKER_V6, community_text, large_text],
        router.name(),
    );

    // The router's own route reaches us.
    wait_async("the router's route", WAIT, || {
        s4.received()
            .contains_key(&"198.51.100.0/24".parse().unwrap())
    })
    .await;
    let got = s4.received()[&"198.51.100.0/24".parse::<IpNet>().unwrap()].clone();
    assert_eq!(got.next_hop, ROUTER_V4.parse::<IpAddr>().unwrap());
    assert_eq!(got.as_path.first(), Some(&ROUTER_AS));

    s4.set_routes(BTreeMap::new());
    s6.set_routes(BTreeMap::new());
    wait_no_route(router, "203.0.113.5/32").await;
    wait_no_route(router, "2001:db8:5::/64").await;
    assert!(s4.counters().updates_sent.load(Ordering::Relaxed) >= 2);
    s4.shutdown().await;
    s6.shutdown().await;
}

/// iBGP: LOCAL_PREF reaches the router, AS_PATH is empty.
async fn ibgp_local_pref(router: &dyn Router, local_pref_text: &str) {
    let s = Session::spawn(peer_config(ROUTER_V4, SPEAKER_AS));
    established(&s, "ibgp").await;
    assert!(s.status().negotiated.unwrap().ibgp);
    s.set_routes(routes(&[("203.0.113.6/32", attrs(Some(250)))]));
    let r = wait_route(router, "203.0.113.6/32").await;
    assert_contains(&r, &[SPEAKER_V4, local_pref_text], router.name());
    s.shutdown().await;
}

#[test]
fn bird_ebgp_ipv4_ipv6() {
    if !can_run(&["bird", "birdc"]) {
        return;
    }
    let pair = Pair::new("bird-e");
    let bird = std::sync::Arc::new(Bird::start(
        &pair,
        RouterSetup {
            asn: ROUTER_AS,
            password: None,
            graceful_restart: false,
        },
    ));
    let b = bird.clone();
    pair.in_speaker(move || async move { ebgp_v4_v6(&*b, "(64512,1)", "(64512, 1, 2)").await });
    // The kernel table of the router got the route with our next hop (checked while up above via
    // BIRD; here that it is gone after the withdrawal).
    let table = String::from_utf8_lossy(
        &pair
            .in_router(&["ip", "route", "show", "203.0.113.5/32"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(table.trim().is_empty(), "{table}");
}

#[test]
fn bird_ibgp_restart_and_graceful_restart() {
    if !can_run(&["bird", "birdc"]) {
        return;
    }
    let pair = Pair::new("bird-i");
    let bird = Bird::start(
        &pair,
        RouterSetup {
            asn: SPEAKER_AS,
            password: None,
            graceful_restart: true,
        },
    );
    let bird = std::sync::Arc::new(std::sync::Mutex::new(bird));
    let b = bird.clone();
    let router_ns = pair.router.clone();
    pair.in_speaker(move || async move {
        let view = BirdView(b.clone());
        ibgp_local_pref(&view, "BGP.local_pref: 250").await;

        let mut c = peer_config(ROUTER_V4, SPEAKER_AS);
        c.enable_graceful_restart = true;
        let s = Session::spawn(c);
        established(&s, "ibgp-gr").await;
        assert!(s.status().negotiated.unwrap().graceful_restart);
        s.set_routes(routes(&[("203.0.113.7/32", attrs(Some(120)))]));
        wait_route(&view, "203.0.113.7/32").await;
        wait_async("kernel route in the router", WAIT, || {
            run_lossy(&[
                "ip",
                "netns",
                "exec",
                &router_ns,
                "ip",
                "route",
                "show",
                "203.0.113.7/32",
            ])
            .contains("via 192.0.2.1")
        })
        .await;

        // The router restarts: we reconnect and announce again.
        b.lock().unwrap().restart();
        wait_async("session to drop", WAIT, || s.state() != State::Established).await;
        established(&s, "after router restart").await;
        let r = wait_route(&view, "203.0.113.7/32").await;
        assert_contains(&r, &["BGP.local_pref: 120"], "bird");
        assert!(s.counters().established_total.load(Ordering::Relaxed) >= 2);

        // Graceful shutdown: no Cease, BIRD keeps the route (stale) for the restart time.
        s.shutdown().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let kept = view.route("203.0.113.7/32");
        assert!(
            !kept.is_empty(),
            "BIRD dropped the route despite graceful restart"
        );
        let proto = b.lock().unwrap().protocol("spk4");
        assert!(!proto.contains("Administrative shutdown"), "{proto}");
    });
}

/// Lets a Mutex-wrapped BIRD act as a Router.
struct BirdView(std::sync::Arc<std::sync::Mutex<Bird>>);

impl Router for BirdView {
    fn route(&self, prefix: &str) -> String {
        self.0.lock().map(|b| b.route(prefix)).unwrap_or_default()
    }
    fn name(&self) -> &'static str {
        "bird"
    }
}

#[test]
fn bird_md5_right_and_wrong_password() {
    if !can_run(&["bird", "birdc"]) {
        return;
    }
    let pair = Pair::new("bird-md5");
    let bird = std::sync::Arc::new(Bird::start(
        &pair,
        RouterSetup {
            asn: ROUTER_AS,
            password: Some("s3cret"),
            graceful_restart: false,
        },
    ));
    let b = bird.clone();
    pair.in_speaker(move || async move {
        let mut wrong = peer_config(ROUTER_V4, ROUTER_AS);
        wrong.password = Some(Password::new("not-it"));
        let w = Session::spawn(wrong);
        assert!(
            !w.wait_for(State::Established, Duration::from_secs(6)).await,
            "wrong password established"
        );
        let status = format!("{:?}", w.status());
        assert!(w.status().last_error.is_some(), "{status}");
        assert!(!status.contains("not-it"));
        w.shutdown().await;

        let mut right = peer_config(ROUTER_V4, ROUTER_AS);
        right.password = Some(Password::new("s3cret"));
        let s = Session::spawn(right);
        established(&s, "md5").await;
        s.set_routes(routes(&[("203.0.113.8/32", RouteAttrs::default())]));
        wait_route(&*b, "203.0.113.8/32").await;
        s.shutdown().await;
    });
}

#[test]
fn frr_ebgp_ipv4_ipv6_and_ibgp() {
    if !can_run(&["/usr/lib/frr/bgpd", "vtysh"]) {
        return;
    }
    let pair = Pair::new("frr");
    let frr = std::sync::Arc::new(Frr::start(
        &pair,
        RouterSetup {
            asn: ROUTER_AS,
            password: None,
            graceful_restart: false,
        },
    ));
    let f = frr.clone();
    pair.in_speaker(move || async move { ebgp_v4_v6(&*f, "64512:1", "64512:1:2").await });
    drop(frr);
    let pair2 = Pair::new("frr-i");
    let frr = std::sync::Arc::new(Frr::start(
        &pair2,
        RouterSetup {
            asn: SPEAKER_AS,
            password: Some("s3cret"),
            graceful_restart: true,
        },
    ));
    let f = frr.clone();
    pair2.in_speaker(move || async move {
        // iBGP with MD5 and graceful restart.
        let mut c = peer_config(ROUTER_V4, SPEAKER_AS);
        c.password = Some(Password::new("s3cret"));
        c.enable_graceful_restart = true;
        let s = Session::spawn(c);
        established(&s, "frr ibgp").await;
        assert!(s.status().negotiated.unwrap().graceful_restart);
        s.set_routes(routes(&[("203.0.113.6/32", attrs(Some(250)))]));
        let r = wait_route(&*f, "203.0.113.6/32").await;
        assert_contains(&r, &["\"locPrf\":250", SPEAKER_V4], "frr");
        s.shutdown().await;
    });
}

#[test]
fn gobgp_ebgp_ipv4_ipv6_and_ibgp() {
    if !can_run(&["gobgpd", "gobgp"]) {
        return;
    }
    let pair = Pair::new("gobgp");
    let g = std::sync::Arc::new(Gobgp::start(
        &pair,
        RouterSetup {
            asn: ROUTER_AS,
            password: Some("s3cret"),
            graceful_restart: false,
        },
    ));
    let g2 = g.clone();
    pair.in_speaker(move || async move {
        // Wrap ebgp_v4_v6 with passwords: GoBGP is configured with MD5 here.
        let mut c4 = peer_config(ROUTER_V4, ROUTER_AS);
        c4.password = Some(Password::new("s3cret"));
        let mut c6 = peer_config(ROUTER_V6, ROUTER_AS);
        c6.password = Some(Password::new("s3cret"));
        let s4 = Session::spawn(c4);
        let s6 = Session::spawn(c6);
        established(&s4, "gobgp v4").await;
        established(&s6, "gobgp v6").await;
        s4.set_routes(routes(&[("203.0.113.5/32", attrs(None))]));
        s6.set_routes(routes(&[("2001:db8:5::/64", attrs(None))]));
        let v4 = wait_route(&*g2, "203.0.113.5/32").await;
        assert_contains(&v4, &[SPEAKER_V4, "64512:1", "64512:1:2"], "gobgp");
        let v6 = wait_route(&*g2, "2001:db8:5::/64").await;
        assert_contains(&v6, &[SPEAKER_V6, "64512:1:2"], "gobgp");
        wait_async("gobgp's route", WAIT, || {
            s4.received()
                .contains_key(&"198.51.100.0/24".parse().unwrap())
        })
        .await;
        let got = s4.received()[&"198.51.100.0/24".parse::<IpNet>().unwrap()].clone();
        assert_eq!(got.communities, vec![(64513 << 16) | 7]);
        s4.set_routes(BTreeMap::new());
        s6.set_routes(BTreeMap::new());
        wait_no_route(&*g2, "203.0.113.5/32").await;
        wait_no_route(&*g2, "2001:db8:5::/64").await;
        s4.shutdown().await;
        s6.shutdown().await;
    });
    drop(g);
    let pair2 = Pair::new("gobgp-i");
    let g = std::sync::Arc::new(Gobgp::start(
        &pair2,
        RouterSetup {
            asn: SPEAKER_AS,
            password: None,
            graceful_restart: true,
        },
    ));
    let g2 = g.clone();
    pair2.in_speaker(move || async move {
        let mut c = peer_config(ROUTER_V4, SPEAKER_AS);
        c.enable_graceful_restart = true;
        let s = Session::spawn(c);
        established(&s, "gobgp ibgp").await;
        assert!(s.status().negotiated.unwrap().graceful_restart);
        s.shutdown().await;
        ibgp_local_pref(&*g2, "LocalPref: 250").await;
    });
}

// --- fixture capture ---------------------------------------------------------------------------

/// Connects to the router like a speaker would, records every message it sends (OPEN,
/// KEEPALIVE, UPDATEs with its routes, End-of-RIB), then provokes a NOTIFICATION with a bad
/// marker and records that too.
async fn capture(peer: &str, peer_as: u32) -> Vec<Vec<u8>> {
    use metalnet_config::bgp::fsm::{Fsm, FsmConfig};
    use metalnet_config::bgp::wire::{Message, WireContext, frame_len};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let peer_ip: IpAddr = peer.parse().unwrap();
    let mut stream = tokio::time::timeout(WAIT, async {
        loop {
            match tokio::net::TcpStream::connect((peer_ip, 179)).await {
                Ok(s) => return s,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .expect("connect");
    let mut config = FsmConfig::new(SPEAKER_AS, peer_as);
    config.router_id = Some(Ipv4Addr::new(192, 0, 2, 1));
    config.graceful_restart = Some(120);
    let open = Fsm::new(config).our_open(stream.local_addr().unwrap().ip());
    let ctx = WireContext::FOUR_OCTET;
    stream
        .write_all(&Message::Open(open).to_bytes(ctx).unwrap())
        .await
        .unwrap();
    stream
        .write_all(&Message::Keepalive.to_bytes(ctx).unwrap())
        .await
        .unwrap();
    let mut frames = Vec::new();
    let mut buf = Vec::new();
    let mut provoked = false;
    let start = Instant::now();
    loop {
        while let Ok(Some(len)) = frame_len(&buf) {
            frames.push(buf.drain(..len).collect::<Vec<u8>>());
        }
        if !provoked && start.elapsed() > Duration::from_secs(4) {
            // A header with a broken marker: the router answers with NOTIFICATION 1/1.
            let mut bad = vec![0u8; 19];
            bad[16..18].copy_from_slice(&19u16.to_be_bytes());
            bad[18] = 4;
            let _ = stream.write_all(&bad).await;
            provoked = true;
        }
        if start.elapsed() > Duration::from_secs(8) {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(500), stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            _ => {}
        }
    }
    while let Ok(Some(len)) = frame_len(&buf) {
        frames.push(buf.drain(..len).collect::<Vec<u8>>());
    }
    frames
}

fn save_fixtures(router: &str, family: &str, frames: &[Vec<u8>]) {
    use metalnet_config::bgp::wire::{Message, WireContext, to_hex};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/tests/fixtures/bgp");
    std::fs::create_dir_all(&dir).unwrap();
    let mut seen_keepalive = false;
    for (i, f) in frames.iter().enumerate() {
        let kind = match Message::parse(f, WireContext::FOUR_OCTET) {
            Ok((m, _)) => m.kind().to_ascii_lowercase().replace('-', "_"),
            Err(e) => panic!("{router}: captured message {i} does not parse: {e}"),
        };
        // One KEEPALIVE per capture is enough.
        if kind == "keepalive" && std::mem::replace(&mut seen_keepalive, true) {
            continue;
        }
        std::fs::write(
            dir.join(format!("{router}_{family}_{i:02}_{kind}.hex")),
            to_hex(f) + "\n",
        )
        .unwrap();
    }
}

/// Starts a router daemon; the box keeps it running.
type StartRouter = fn(&Pair, RouterSetup) -> Box<dyn Send + Sync>;

/// Regenerates `config/tests/fixtures/bgp/` from the real routers:
/// `cargo test -p metalnet-lab --test bgp_engine capture_fixtures -- --ignored`.
#[test]
#[ignore]
fn capture_fixtures() {
    if !can_run(&["bird", "birdc", "gobgpd", "/usr/lib/frr/bgpd"]) {
        return;
    }
    let setup = RouterSetup {
        asn: ROUTER_AS,
        password: None,
        graceful_restart: true,
    };
    let starters: [(&str, StartRouter); 3] = [
        ("bird", |p, s| Box::new(Bird::start(p, s))),
        ("frr", |p, s| Box::new(Frr::start(p, s))),
        ("gobgp", |p, s| Box::new(Gobgp::start(p, s))),
    ];
    for (name, start) in starters {
        let pair = Pair::new(&format!("cap-{name}"));
        let daemon = start(&pair, setup);
        pair.in_speaker(move || async move {
            for (family, peer) in [("v4", ROUTER_V4), ("v6", ROUTER_V6)] {
                let frames = capture(peer, ROUTER_AS).await;
                assert!(
                    frames.len() >= 3,
                    "{name} {family}: only {} messages",
                    frames.len()
                );
                save_fixtures(name, family, &frames);
            }
        });
        drop(daemon);
    }
}
