//! GoBGP as a lab peer: `gobgpd` with a generated TOML config and its own gRPC API port;
//! readback and route injection through the `gobgp` CLI (run inside the host, since the API
//! listens on the host's loopback).

use super::bgp::{BgpNeighbor, BgpRouter, Community, LargeCommunity, Policy, Route, StaticRoute};
use super::{Host, LabError, Process, Result, io_err, wait_for};
use ipnet::IpNet;
use serde_json::Value;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Configuration of a GoBGP instance.
///
/// As the active side GoBGP took about 10 s to (re)connect here even with `connect-retry = 2`;
/// make it the passive side when a test needs quick sessions.
#[derive(Debug, Clone)]
pub struct GobgpConfig {
    pub router_id: Ipv4Addr,
    pub asn: u32,
    pub neighbors: Vec<BgpNeighbor>,
    /// BGP listen port; `None` = 179, `Some(-1)` = do not listen.
    pub listen_port: Option<i32>,
    /// gRPC API port on 127.0.0.1 inside the host; `None` picks one per instance.
    pub api_port: Option<u16>,
}

impl GobgpConfig {
    pub fn new(router_id: Ipv4Addr, asn: u32) -> Self {
        GobgpConfig {
            router_id,
            asn,
            neighbors: Vec::new(),
            listen_port: None,
            api_port: None,
        }
    }

    /// Renders the TOML configuration.
    pub fn render(&self) -> Result<String> {
        let mut c = String::new();
        let _ = writeln!(c, "[global.config]\n  as = {}", self.asn);
        let _ = writeln!(c, "  router-id = \"{}\"", self.router_id);
        if let Some(port) = self.listen_port {
            let _ = writeln!(c, "  port = {port}");
        }
        for n in &self.neighbors {
            if n.import != Policy::All || n.export != Policy::All {
                return Err(LabError::Invalid(format!(
                    "GoBGP neighbor {}: only Policy::All is supported",
                    n.address
                )));
            }
            let _ = writeln!(c, "\n[[neighbors]]\n  [neighbors.config]");
            let _ = writeln!(c, "    neighbor-address = \"{}\"", n.address);
            let _ = writeln!(c, "    peer-as = {}", n.asn);
            if let Some(pw) = &n.password {
                let _ = writeln!(c, "    auth-password = \"{}\"", pw.replace('"', "\\\""));
            }
            let _ = writeln!(
                c,
                "  [neighbors.timers.config]\n    connect-retry = 2\n    idle-hold-time-after-reset = 1"
            );
            if let Some(hold) = n.hold_time {
                let _ = writeln!(
                    c,
                    "    hold-time = {hold}\n    keepalive-interval = {}",
                    (hold / 3).max(1)
                );
            }
            let _ = writeln!(c, "  [neighbors.transport.config]");
            if n.passive {
                let _ = writeln!(c, "    passive-mode = true");
            }
            if let Some(local) = n.local_address {
                let _ = writeln!(c, "    local-address = \"{local}\"");
            }
            if let Some(port) = n.port {
                let _ = writeln!(c, "    remote-port = {port}");
            }
            if let Some(ttl) = n.multihop {
                let _ = writeln!(
                    c,
                    "  [neighbors.ebgp-multihop.config]\n    enabled = true\n    multihop-ttl = {ttl}"
                );
            }
            for (af, on) in [("ipv4-unicast", n.ipv4), ("ipv6-unicast", n.ipv6)] {
                if on {
                    let _ = writeln!(
                        c,
                        "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{af}\""
                    );
                }
            }
        }
        Ok(c)
    }
}

/// A running gobgpd inside a host.
pub struct Gobgp {
    host: Host,
    api_port: u16,
    conf_path: PathBuf,
    process: Mutex<Option<Process>>,
    id: u64,
}

impl std::fmt::Debug for Gobgp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gobgp")
            .field("host", &self.host.name())
            .field("api_port", &self.api_port)
            .finish()
    }
}

impl Gobgp {
    /// Writes the TOML config and starts gobgpd, waiting until its API answers.
    pub fn start(host: &Host, config: GobgpConfig) -> Result<Gobgp> {
        let id = host.lab().next_id();
        // Each namespace has its own loopback, so any port works; still unique per instance.
        let api_port = config
            .api_port
            .unwrap_or_else(|| 50051 + (id % 1000) as u16);
        let conf_path = host.dir().join(format!("gobgp{id}.toml"));
        std::fs::write(&conf_path, config.render()?)
            .map_err(io_err(format!("writing {}", conf_path.display())))?;
        let gobgp = Gobgp {
            host: host.clone(),
            api_port,
            conf_path,
            process: Mutex::new(None),
            id,
        };
        gobgp.launch()?;
        Ok(gobgp)
    }

    /// Starts gobgpd and waits until its API answers.
    fn launch(&self) -> Result<()> {
        let api = format!("127.0.0.1:{}", self.api_port);
        let process = self.host.spawn(
            &format!("gobgpd{}", self.id),
            &[
                "gobgpd",
                "-f",
                &self.conf_path.to_string_lossy(),
                "--api-hosts",
                &api,
                "--log-plain",
            ],
        )?;
        let ready = wait_for("gobgpd API", Duration::from_secs(10), || {
            !process.is_running() || self.cli(&["global"]).is_ok()
        });
        if !process.is_running() {
            return Err(LabError::Invalid(format!(
                "gobgpd in {} exited at start: {}",
                self.host.name(),
                process.logs()
            )));
        }
        ready?;
        *self.process.lock().unwrap_or_else(|e| e.into_inner()) = Some(process);
        Ok(())
    }

    /// Stops gobgpd and starts it again with the same configuration (an empty RIB).
    pub fn restart(&self) -> Result<()> {
        BgpRouter::stop(self);
        self.launch()
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    pub fn config_path(&self) -> &std::path::Path {
        &self.conf_path
    }

    /// Runs `gobgp -p <port> <args>` inside the host.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let port = self.api_port.to_string();
        let mut full = vec!["gobgp", "-p", port.as_str()];
        full.extend_from_slice(args);
        self.host.exec_ok(&full)
    }

    fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let text = self.cli(&full)?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| LabError::Parse {
            what: format!("gobgp {} in {}", args.join(" "), self.host.name()),
            reason: e.to_string(),
        })
    }

    /// Originates a route (`gobgp global rib add`).
    pub fn announce(&self, route: &StaticRoute) -> Result<()> {
        self.cli(
            &self
                .rib_args("add", route)?
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .map(|_| ())
    }

    /// Withdraws a route (`gobgp global rib del`).
    pub fn withdraw(&self, prefix: &str) -> Result<()> {
        let net: IpNet = prefix
            .parse()
            .map_err(|e| LabError::Invalid(format!("prefix {prefix:?}: {e}")))?;
        let af = family(&net);
        self.cli(&["global", "rib", "-a", af, "del", prefix])
            .map(|_| ())
    }

    fn rib_args(&self, op: &str, route: &StaticRoute) -> Result<Vec<String>> {
        let af = family(&route.prefix);
        let mut args: Vec<String> = ["global", "rib", "-a", af, op]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(route.prefix.to_string());
        if let Some(via) = route.via {
            args.extend(["nexthop".into(), via.to_string()]);
        }
        if !route.communities.is_empty() {
            args.push("community".into());
            args.push(
                route
                    .communities
                    .iter()
                    .map(Community::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        if !route.large_communities.is_empty() {
            args.push("large-community".into());
            args.push(
                route
                    .large_communities
                    .iter()
                    .map(LargeCommunity::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        Ok(args)
    }

    /// `(neighbor address, session state)`; state is `established`, `active`, ...
    pub fn neighbors(&self) -> Result<Vec<(String, String)>> {
        let v = self.cli_json(&["neighbor"])?;
        let mut out = Vec::new();
        for n in v.as_array().into_iter().flatten() {
            let state = n.get("state");
            let addr = state
                .and_then(|s| s.get("neighbor_address"))
                .or_else(|| n.get("conf").and_then(|c| c.get("neighbor_address")))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let session = match state.and_then(|s| s.get("session_state")) {
                Some(Value::Number(num)) => session_state_name(num.as_u64().unwrap_or(0)),
                Some(Value::String(s)) => s.to_ascii_lowercase(),
                _ => "unknown".to_string(),
            };
            out.push((addr, session));
        }
        Ok(out)
    }

    pub fn logs(&self) -> String {
        self.process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Process::logs)
            .unwrap_or_default()
    }
}

fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "ipv4",
        IpNet::V6(_) => "ipv6",
    }
}

/// GoBGP's API enum for the FSM state.
fn session_state_name(n: u64) -> String {
    match n {
        1 => "idle",
        2 => "connect",
        3 => "active",
        4 => "opensent",
        5 => "openconfirm",
        6 => "established",
        _ => "unknown",
    }
    .to_string()
}

impl BgpRouter for Gobgp {
    fn routes(&self) -> Result<Vec<Route>> {
        let mut routes = Vec::new();
        for af in ["ipv4", "ipv6"] {
            routes.extend(parse_gobgp_rib(
                &self.cli_json(&["global", "rib", "-a", af])?,
            )?);
        }
        Ok(routes)
    }

    fn session_state(&self, neighbor: &str) -> Result<Option<String>> {
        Ok(self
            .neighbors()?
            .into_iter()
            .find(|(a, _)| a == neighbor)
            .map(|(_, s)| s))
    }

    fn stop(&self) {
        if let Some(p) = self
            .process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            p.stop();
        }
    }
}

/// Parses `gobgp -j global rib`: a map from prefix to an array of paths with typed attrs.
pub fn parse_gobgp_rib(v: &Value) -> Result<Vec<Route>> {
    let mut out = Vec::new();
    let Some(map) = v.as_object() else {
        return Ok(out);
    };
    for (prefix_s, paths) in map {
        let prefix: IpNet = prefix_s.parse().map_err(|e| LabError::Parse {
            what: format!("GoBGP prefix {prefix_s:?}"),
            reason: format!("{e}"),
        })?;
        for p in paths.as_array().into_iter().flatten() {
            let mut r = Route::new(prefix);
            r.best = p.get("best").and_then(Value::as_bool).unwrap_or(false);
            r.from_protocol = p
                .get("neighbor-ip")
                .and_then(Value::as_str)
                .unwrap_or("local")
                .to_string();
            for a in p
                .get("attrs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match a.get("type").and_then(Value::as_u64) {
                    Some(2) => {
                        for seg in a
                            .get("as_paths")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            r.as_path.extend(
                                seg.get("asns")
                                    .and_then(Value::as_array)
                                    .into_iter()
                                    .flatten()
                                    .filter_map(Value::as_u64)
                                    .filter_map(|n| u32::try_from(n).ok()),
                            );
                        }
                    }
                    Some(3) | Some(14) => {
                        if let Some(ip) = a
                            .get("nexthop")
                            .and_then(Value::as_str)
                            .and_then(|s| s.parse::<IpAddr>().ok())
                            && !ip.is_unspecified()
                            && !r.next_hops.contains(&ip)
                        {
                            r.next_hops.push(ip);
                        }
                    }
                    Some(4) => r.med = a.get("metric").and_then(Value::as_u64).map(|n| n as u32),
                    Some(5) => {
                        r.local_pref = a.get("value").and_then(Value::as_u64).map(|n| n as u32)
                    }
                    Some(8) => {
                        r.communities.extend(
                            a.get("communities")
                                .and_then(Value::as_array)
                                .into_iter()
                                .flatten()
                                .filter_map(Value::as_u64)
                                .map(|n| Community::from_u32(n as u32)),
                        );
                    }
                    Some(32) => {
                        for lc in a
                            .get("value")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            let f = |k: &str| lc.get(k).and_then(Value::as_u64).unwrap_or(0) as u32;
                            r.large_communities.push(LargeCommunity::new(
                                f("ASN"),
                                f("LocalData1"),
                                f("LocalData2"),
                            ));
                        }
                    }
                    _ => {}
                }
            }
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_global_rib_json() {
        let text = r#"{"203.0.113.5/32":[{"nlri":{"prefix":"203.0.113.5/32"},"age":1,"best":true,"attrs":[{"type":1,"value":2},{"type":8,"communities":[4227923975]},{"type":32,"value":[{"ASN":64513,"LocalData1":1,"LocalData2":2}]},{"type":3,"nexthop":"0.0.0.0"}],"stale":false}],"203.0.113.9/32":[{"nlri":{"prefix":"203.0.113.9/32"},"age":1,"best":true,"attrs":[{"type":1,"value":0},{"type":2,"as_paths":[{"segment_type":2,"num":1,"asns":[64512]}]},{"type":3,"nexthop":"192.0.2.1"}],"stale":false,"source-id":"192.0.2.1","neighbor-ip":"192.0.2.1"}]}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        let routes = parse_gobgp_rib(&v).unwrap();
        let local = routes
            .iter()
            .find(|r| r.prefix.to_string() == "203.0.113.5/32")
            .unwrap();
        assert_eq!(local.from_protocol, "local");
        assert!(local.next_hops.is_empty());
        assert_eq!(local.communities, vec![Community::new(64513, 7)]);
        assert_eq!(
            local.large_communities,
            vec![LargeCommunity::new(64513, 1, 2)]
        );
        let learned = routes
            .iter()
            .find(|r| r.prefix.to_string() == "203.0.113.9/32")
            .unwrap();
        assert_eq!(learned.as_path, vec![64512]);
        assert_eq!(
            learned.next_hops,
            vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(learned.from_protocol, "192.0.2.1");
    }

    #[test]
    fn renders_toml() {
        let mut cfg = GobgpConfig::new("192.0.2.11".parse().unwrap(), 64513);
        let mut n = BgpNeighbor::new("192.0.2.1".parse().unwrap(), 64512);
        n.ipv6 = false;
        n.multihop = Some(2);
        cfg.neighbors.push(n);
        let text = cfg.render().unwrap();
        assert!(text.contains("neighbor-address = \"192.0.2.1\""));
        assert!(text.contains("afi-safi-name = \"ipv4-unicast\""));
        assert!(!text.contains("ipv6-unicast"));
        assert!(text.contains("multihop-ttl = 2"));
    }
}
