//! FRR (zebra + bgpd) as a lab peer. Both daemons run in the foreground inside a host with
//! their zserv socket, vty sockets and pid files in the host's directory, so several instances
//! coexist. Readback goes through `vtysh --vty_socket <dir> -c '... json'`.

use super::bgp::{BgpNeighbor, BgpRouter, Community, LargeCommunity, Policy, Route, StaticRoute};
use super::{Host, LabError, Process, Result, io_err, run, wait_for};
use ipnet::IpNet;
use serde_json::Value;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

const FRR_DIR: &str = "/usr/lib/frr";

/// Configuration of an FRR instance.
#[derive(Debug, Clone)]
pub struct FrrConfig {
    pub router_id: Ipv4Addr,
    pub asn: u32,
    pub neighbors: Vec<BgpNeighbor>,
    /// Originated with `network` statements (FRR's `bgp network import-check` is off);
    /// communities are set through a route map, `via` is ignored (next hop is self).
    pub networks: Vec<StaticRoute>,
    /// Let zebra install BGP routes into the host's kernel table (bgpd `-n` otherwise).
    pub kernel_install: bool,
    /// Maximum ECMP paths (`maximum-paths`).
    pub maximum_paths: u8,
    /// Raw configuration appended inside `router bgp`.
    pub extra_bgp: String,
}

impl FrrConfig {
    pub fn new(router_id: Ipv4Addr, asn: u32) -> Self {
        FrrConfig {
            router_id,
            asn,
            neighbors: Vec::new(),
            networks: Vec::new(),
            kernel_install: true,
            maximum_paths: 8,
            extra_bgp: String::new(),
        }
    }

    /// Renders `frr.conf` (bgpd part).
    pub fn render(&self, hostname: &str, log_file: &str) -> Result<String> {
        let mut c = String::new();
        let _ = writeln!(c, "frr defaults datacenter\nhostname {hostname}");
        let _ = writeln!(c, "log file {log_file}\n!");
        // Route maps implementing Policy::None.
        let _ = writeln!(c, "route-map MNL-DENY deny 10\n!");
        // Networks carrying communities get a route map setting them.
        for (i, r) in self.networks.iter().enumerate() {
            if r.communities.is_empty() && r.large_communities.is_empty() {
                continue;
            }
            let _ = writeln!(c, "route-map MNL-NET-{i} permit 10");
            if !r.communities.is_empty() {
                let list: Vec<String> = r.communities.iter().map(|x| x.to_string()).collect();
                let _ = writeln!(c, " set community {}", list.join(" "));
            }
            if !r.large_communities.is_empty() {
                let list: Vec<String> = r.large_communities.iter().map(|x| x.to_string()).collect();
                let _ = writeln!(c, " set large-community {}", list.join(" "));
            }
            let _ = writeln!(c, "!");
        }
        let _ = writeln!(c, "router bgp {}", self.asn);
        let _ = writeln!(c, " bgp router-id {}", self.router_id);
        let _ = writeln!(c, " no bgp ebgp-requires-policy");
        let _ = writeln!(c, " no bgp default ipv4-unicast");
        let _ = writeln!(c, " no bgp network import-check");
        let _ = writeln!(c, " bgp bestpath as-path multipath-relax");
        for n in &self.neighbors {
            let a = n.address;
            let _ = writeln!(c, " neighbor {a} remote-as {}", n.asn);
            let _ = writeln!(c, " neighbor {a} timers connect 2");
            if let Some(hold) = n.hold_time {
                let _ = writeln!(c, " neighbor {a} timers {} {hold}", (hold / 3).max(1));
            }
            if n.passive {
                let _ = writeln!(c, " neighbor {a} passive");
            }
            if let Some(pw) = &n.password {
                let _ = writeln!(c, " neighbor {a} password {pw}");
            }
            if let Some(ttl) = n.multihop {
                let _ = writeln!(c, " neighbor {a} ebgp-multihop {ttl}");
            }
            if let Some(local) = n.local_address {
                let _ = writeln!(c, " neighbor {a} update-source {local}");
            }
            if let Some(port) = n.port {
                let _ = writeln!(c, " neighbor {a} port {port}");
            }
            for p in [&n.import, &n.export] {
                if let Policy::BirdFilter(_) = p {
                    return Err(LabError::Invalid(format!(
                        "FRR neighbor {a}: BIRD filter policies are not supported"
                    )));
                }
            }
        }
        for (af, is_v4) in [("ipv4", true), ("ipv6", false)] {
            let _ = writeln!(c, " address-family {af} unicast");
            let _ = writeln!(c, "  maximum-paths {}", self.maximum_paths);
            for (i, r) in self
                .networks
                .iter()
                .enumerate()
                .filter(|(_, r)| matches!(r.prefix, IpNet::V4(_)) == is_v4)
            {
                if r.communities.is_empty() && r.large_communities.is_empty() {
                    let _ = writeln!(c, "  network {}", r.prefix);
                } else {
                    let _ = writeln!(c, "  network {} route-map MNL-NET-{i}", r.prefix);
                }
            }
            for n in &self.neighbors {
                let on = if is_v4 { n.ipv4 } else { n.ipv6 };
                if !on {
                    continue;
                }
                let a = n.address;
                let _ = writeln!(c, "  neighbor {a} activate");
                if n.import == Policy::None {
                    let _ = writeln!(c, "  neighbor {a} route-map MNL-DENY in");
                }
                if n.export == Policy::None {
                    let _ = writeln!(c, "  neighbor {a} route-map MNL-DENY out");
                }
            }
            let _ = writeln!(c, " exit-address-family");
        }
        c.push_str(&self.extra_bgp);
        let _ = writeln!(c, "!");
        Ok(c)
    }
}

/// A running FRR instance (zebra + bgpd) inside a host.
pub struct Frr {
    host: Host,
    dir: PathBuf,
    zebra: Mutex<Option<Process>>,
    bgpd: Mutex<Option<Process>>,
    /// bgpd's command line, for [`Frr::restart`].
    bgpd_args: Vec<String>,
    id: u64,
}

impl std::fmt::Debug for Frr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frr")
            .field("host", &self.host.name())
            .field("dir", &self.dir)
            .finish()
    }
}

impl Frr {
    /// Starts zebra, waits for its zserv socket, then bgpd with the generated config.
    pub fn start(host: &Host, config: FrrConfig) -> Result<Frr> {
        let id = host.lab().next_id();
        let dir = host.dir().join(format!("frr{id}"));
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        // zebra drops privileges to the `frr` user and must create its sockets here.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(io_err(format!("chmod {}", dir.display())))?;
        }
        let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let conf = config.render(host.name(), &d("bgpd.log"))?;
        std::fs::write(d("bgpd.conf"), conf)
            .map_err(io_err(format!("writing {}", d("bgpd.conf"))))?;
        std::fs::write(
            d("zebra.conf"),
            format!("hostname {}\nlog file {}\n", host.name(), d("zebra.log")),
        )
        .map_err(io_err(format!("writing {}", d("zebra.conf"))))?;
        // Check the bgpd config before starting anything.
        run(&[
            &format!("{FRR_DIR}/bgpd"),
            "-C",
            "-S",
            "-f",
            &d("bgpd.conf"),
        ])?;

        let zserv = d("zserv.api");
        let vty = dir.to_string_lossy().into_owned();
        let mut bgpd_args = vec![
            format!("{FRR_DIR}/bgpd"),
            // Stay root: the vty group check fails for root otherwise.
            "-S".into(),
            "-z".into(),
            zserv.clone(),
            "--vty_socket".into(),
            vty.clone(),
            "-i".into(),
            d("bgpd.pid"),
            "-f".into(),
            d("bgpd.conf"),
            "-P".into(),
            "0".into(),
        ];
        if !config.kernel_install {
            bgpd_args.push("-n".into());
        }
        let frr = Frr {
            host: host.clone(),
            dir: dir.clone(),
            zebra: Mutex::new(None),
            bgpd: Mutex::new(None),
            bgpd_args,
            id,
        };
        let zebra = host.spawn(
            &format!("zebra{id}"),
            &[
                &format!("{FRR_DIR}/zebra"),
                "-z",
                &zserv,
                "--vty_socket",
                &vty,
                "-i",
                &d("zebra.pid"),
                "-f",
                &d("zebra.conf"),
                "-P",
                "0",
            ],
        )?;
        wait_for("zebra zserv socket", Duration::from_secs(10), || {
            !zebra.is_running() || dir.join("zserv.api").exists()
        })?;
        if !zebra.is_running() {
            return Err(LabError::Invalid(format!(
                "zebra in {} exited at start: {}",
                host.name(),
                zebra.logs()
            )));
        }
        *frr.zebra.lock().unwrap_or_else(|e| e.into_inner()) = Some(zebra);

        frr.launch_bgpd()?;
        Ok(frr)
    }

    /// Starts bgpd and waits until its vty answers.
    fn launch_bgpd(&self) -> Result<()> {
        let args: Vec<&str> = self.bgpd_args.iter().map(String::as_str).collect();
        let bgpd = self.host.spawn(&format!("bgpd{}", self.id), &args)?;
        let ready = wait_for("bgpd vty", Duration::from_secs(10), || {
            !bgpd.is_running() || self.vtysh(&["show bgp summary json"]).is_ok()
        });
        if !bgpd.is_running() {
            return Err(LabError::Invalid(format!(
                "bgpd in {} exited at start: {}",
                self.host.name(),
                bgpd.logs()
            )));
        }
        ready?;
        *self.bgpd.lock().unwrap_or_else(|e| e.into_inner()) = Some(bgpd);
        Ok(())
    }

    /// Stops bgpd (SIGTERM: it sends its peers a Cease) and starts it again with the same
    /// configuration; zebra keeps running.
    pub fn restart(&self) -> Result<()> {
        if let Some(p) = self.bgpd.lock().unwrap_or_else(|e| e.into_inner()).take() {
            p.stop();
        }
        self.launch_bgpd()
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Directory holding the vty sockets (`vtysh --vty_socket <dir>`).
    pub fn vty_dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Runs vtysh commands (each a `-c`) against this instance.
    pub fn vtysh(&self, commands: &[&str]) -> Result<String> {
        let vty = self.dir.to_string_lossy();
        let mut full = vec!["vtysh", "--vty_socket", &vty];
        for c in commands {
            full.push("-c");
            full.push(c);
        }
        let out = run(&full)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.starts_with('%') {
            return Err(LabError::Command {
                command: format!("vtysh {}", commands.join("; ")),
                status: "0".into(),
                stderr: text,
            });
        }
        Ok(text)
    }

    fn vtysh_json(&self, command: &str) -> Result<Value> {
        let text = self.vtysh(&[command])?;
        serde_json::from_str(&text).map_err(|e| LabError::Parse {
            what: format!("vtysh `{command}` in {}", self.host.name()),
            reason: e.to_string(),
        })
    }

    /// `show bgp summary json`: `(peer address, state)` for both families.
    pub fn peers(&self) -> Result<Vec<(String, String)>> {
        let v = self.vtysh_json("show bgp summary json")?;
        let mut peers = Vec::new();
        if let Some(families) = v.as_object() {
            for fam in families.values() {
                if let Some(ps) = fam.get("peers").and_then(Value::as_object) {
                    for (addr, p) in ps {
                        let state = p
                            .get("state")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        if !peers.iter().any(|(a, _)| a == addr) {
                            peers.push((addr.clone(), state));
                        }
                    }
                }
            }
        }
        Ok(peers)
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for f in ["zebra.log", "bgpd.log"] {
            s.push_str(&std::fs::read_to_string(self.dir.join(f)).unwrap_or_default());
        }
        s
    }
}

impl BgpRouter for Frr {
    fn routes(&self) -> Result<Vec<Route>> {
        let mut routes = Vec::new();
        for af in ["ipv4", "ipv6"] {
            let cmd = format!("show bgp {af} unicast json detail");
            routes.extend(parse_frr_routes(&self.vtysh_json(&cmd)?)?);
        }
        Ok(routes)
    }

    fn session_state(&self, neighbor: &str) -> Result<Option<String>> {
        Ok(self
            .peers()?
            .into_iter()
            .find(|(a, _)| a == neighbor)
            .map(|(_, s)| s))
    }

    fn stop(&self) {
        for slot in [&self.bgpd, &self.zebra] {
            if let Some(p) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                p.stop();
            }
        }
    }
}

/// Parses `show bgp <af> unicast json [detail]`: `routes` maps a prefix to an array of paths
/// (with `detail`, the first element is a prefix header without `nexthops`).
pub fn parse_frr_routes(v: &Value) -> Result<Vec<Route>> {
    let mut out = Vec::new();
    let Some(routes) = v.get("routes").and_then(Value::as_object) else {
        return Ok(out);
    };
    for (prefix_s, paths) in routes {
        let prefix: IpNet = prefix_s.parse().map_err(|e| LabError::Parse {
            what: format!("FRR route prefix {prefix_s:?}"),
            reason: format!("{e}"),
        })?;
        for p in paths.as_array().into_iter().flatten() {
            let Some(nexthops) = p.get("nexthops").and_then(Value::as_array) else {
                continue;
            };
            let mut r = Route::new(prefix);
            for nh in nexthops {
                if let Some(ip) = nh
                    .get("ip")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                {
                    let ip: IpAddr = ip;
                    if !ip.is_unspecified() && !r.next_hops.contains(&ip) {
                        r.next_hops.push(ip);
                    }
                }
            }
            let path_str = p
                .get("aspath")
                .and_then(|a| a.get("string"))
                .or_else(|| p.get("path"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            r.as_path = path_str
                .split(|c: char| c.is_whitespace() || "{},".contains(c))
                .filter_map(|t| t.parse().ok())
                .collect();
            r.local_pref = ["locPrf", "localpref", "localPref"]
                .iter()
                .find_map(|k| p.get(*k).and_then(Value::as_u64))
                .and_then(|n| u32::try_from(n).ok());
            r.med = p
                .get("metric")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok());
            for s in string_list(p.get("community")) {
                r.communities.push(s.parse::<Community>()?);
            }
            for s in string_list(p.get("largeCommunity")) {
                r.large_communities.push(s.parse::<LargeCommunity>()?);
            }
            r.best = match p.get("bestpath") {
                Some(Value::Bool(b)) => *b,
                Some(Value::Object(o)) => o.get("overall").and_then(Value::as_bool).unwrap_or(true),
                _ => false,
            };
            r.from_protocol = p
                .get("peer")
                .and_then(|peer| peer.get("peerId"))
                .or_else(|| p.get("peerId"))
                .and_then(Value::as_str)
                .map(|s| match s {
                    "(unspec)" | "0.0.0.0" | "::" => "local".to_string(),
                    other => other.to_string(),
                })
                .unwrap_or_else(|| "local".into());
            out.push(r);
        }
    }
    Ok(out)
}

/// `{"string": "...", "list": [...]}` → the list entries.
fn string_list(v: Option<&Value>) -> Vec<String> {
    let Some(v) = v else { return Vec::new() };
    if let Some(list) = v.get("list").and_then(Value::as_array) {
        return list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
    }
    v.get("string")
        .and_then(Value::as_str)
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_detail_json() {
        let text = r#"{"vrfId": 0, "routerId":"192.0.2.11", "localAS": 64513,
 "routes": { "203.0.113.7/32": [{"prefix":"203.0.113.7/32","version":1,"advertisedTo":{"192.0.2.1":{}}},{"aspath":{"string":"Local","segments":[],"length":0},"origin":"IGP","metric":0,"weight":32768,"valid":true,"sourced":true,"local":true,"bestpath":{"bestpathFromAs":0,"overall":true},"nexthops":[{"ip":"0.0.0.0","afi":"ipv4","used":true}],"peer":{"peerId":"0.0.0.0","routerId":"192.0.2.11"}}]
,"203.0.113.9/32": [{"prefix":"203.0.113.9/32"},{"aspath":{"string":"64512","segments":[],"length":1},"origin":"IGP","valid":true,"bestpath":{"overall":true},"community":{"string":"64512:5","list":["64512:5"]},"largeCommunity":{"string":"64512:1:1","list":["64512:1:1"]},"nexthops":[{"ip":"192.0.2.1","afi":"ipv4","used":true}],"peer":{"peerId":"192.0.2.1","routerId":"192.0.2.1","type":"external"}}]
 }  }"#;
        let v: Value = serde_json::from_str(text).unwrap();
        let routes = parse_frr_routes(&v).unwrap();
        assert_eq!(routes.len(), 2);
        let local = routes
            .iter()
            .find(|r| r.prefix.to_string() == "203.0.113.7/32")
            .unwrap();
        assert_eq!(local.from_protocol, "local");
        assert!(local.next_hops.is_empty());
        assert!(local.as_path.is_empty());
        let learned = routes
            .iter()
            .find(|r| r.prefix.to_string() == "203.0.113.9/32")
            .unwrap();
        assert_eq!(
            learned.next_hops,
            vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(learned.as_path, vec![64512]);
        assert_eq!(learned.communities, vec![Community::new(64512, 5)]);
        assert_eq!(
            learned.large_communities,
            vec![LargeCommunity::new(64512, 1, 1)]
        );
        assert_eq!(learned.from_protocol, "192.0.2.1");
        assert!(learned.best);
    }
}
