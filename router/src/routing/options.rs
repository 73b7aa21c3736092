//! kube-router's routing flags (`pkg/options/options.go`), with its names and defaults, and
//! their validated form [`RoutingOptions`].

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use metalnet::bgp::Password;

/// kube-router's default cluster ASN (`--cluster-asn` 0 means this).
pub const DEFAULT_CLUSTER_ASN: u32 = 64512;

/// The validated routing options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingOptions {
    /// `--cluster-asn` (64512 when unset or 0).
    pub cluster_asn: u32,
    /// `--nodes-full-mesh` (true).
    pub nodes_full_mesh: bool,
    /// `--enable-ibgp` (true): peer with the other nodes at all.
    pub enable_ibgp: bool,
    /// `--peer-router-*`: the global external peers (when set, the per-node annotations are
    /// ignored, as kube-router does).
    pub global_peers: Vec<ExternalPeer>,
    /// `--peer-router-multihop-ttl` when above 1: eBGP multihop towards every external peer
    /// (the global ones and the annotated ones, as kube-router applies it).
    pub peer_multihop_ttl: Option<u8>,
    /// `--advertise-pod-cidr` (true): pod CIDRs to external peers too.
    pub advertise_pod_cidr: bool,
    /// `--advertise-cluster-ip` (false).
    pub advertise_cluster_ip: bool,
    /// `--advertise-external-ip` (false).
    pub advertise_external_ip: bool,
    /// `--advertise-loadbalancer-ip` (false).
    pub advertise_loadbalancer_ip: bool,
    /// `--override-nexthop` (false): next hop self towards external peers.
    pub override_nexthop: bool,
    /// `--bgp-graceful-restart` (false).
    pub graceful_restart: bool,
    /// `--bgp-graceful-restart-time` (90 s, at most 4095 s).
    pub graceful_restart_time: Duration,
    /// `--bgp-graceful-restart-deferral-time` (360 s).
    pub graceful_restart_deferral: Duration,
    /// `--bgp-holdtime` (90 s; 3 s .. 18h12m16s).
    pub hold_time: Duration,
    /// `--bgp-port` (179): where this node listens and where it reaches other nodes.
    pub bgp_port: u16,
    /// `--router-id`: `None` = the node's IPv4 address; `generate` = FNV-32 of the node IP.
    pub router_id: RouterIdChoice,
    /// `--injected-routes-sync-period` (60 s): how often installed routes are re-checked.
    pub injected_routes_sync_period: Duration,
    /// `--enable-overlay` (true) / `--overlay-type` (subnet|full).
    pub enable_overlay: bool,
    pub overlay_type: OverlayType,
}

/// How the BGP identifier is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterIdChoice {
    /// The node's IPv4 address (kube-router's default).
    NodeAddress,
    /// `generate`: FNV-32 of the node's address (needed on IPv6-only nodes).
    Generate,
    Fixed(Ipv4Addr),
}

/// kube-router's `--overlay-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayType {
    /// A tunnel only when the next hop is outside every subnet of this node.
    Subnet,
    /// A tunnel to every node.
    Full,
}

/// An external BGP peer, from the global flags or a node's annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalPeer {
    pub address: IpAddr,
    pub asn: u32,
    pub password: Option<Password>,
    /// 179 unless set.
    pub port: u16,
    /// `--peer-router-multihop-ttl`: eBGP multihop with this TTL.
    pub multihop_ttl: Option<u8>,
    /// `localip` of the `kube-router.io/peers` annotation: the source address.
    pub local_address: Option<IpAddr>,
}

/// A flag value that is not acceptable, naming the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct OptionsError {
    pub flag: &'static str,
    pub reason: String,
}

impl Default for RoutingOptions {
    fn default() -> Self {
        Self {
            cluster_asn: DEFAULT_CLUSTER_ASN,
            nodes_full_mesh: true,
            enable_ibgp: true,
            global_peers: Vec::new(),
            peer_multihop_ttl: None,
            advertise_pod_cidr: true,
            advertise_cluster_ip: false,
            advertise_external_ip: false,
            advertise_loadbalancer_ip: false,
            override_nexthop: false,
            graceful_restart: false,
            graceful_restart_time: Duration::from_secs(90),
            graceful_restart_deferral: Duration::from_secs(360),
            hold_time: Duration::from_secs(90),
            bgp_port: 179,
            router_id: RouterIdChoice::NodeAddress,
            injected_routes_sync_period: Duration::from_secs(60),
            enable_overlay: true,
            overlay_type: OverlayType::Subnet,
        }
    }
}

/// The longest hold time kube-router accepts (65536 s, "18h12m16s").
pub const MAX_HOLD_TIME: Duration = Duration::from_secs(65536);
/// The shortest hold time kube-router accepts.
pub const MIN_HOLD_TIME: Duration = Duration::from_secs(3);
/// RFC 4724 §3: the restart time is a 12-bit field.
pub const MAX_GRACEFUL_RESTART_TIME: Duration = Duration::from_secs(4095);
/// kube-router caps the deferral time at 18 hours.
pub const MAX_GRACEFUL_RESTART_DEFERRAL: Duration = Duration::from_secs(18 * 3600);
/// The BGP port when none is given.
pub const DEFAULT_BGP_PORT: u16 = 179;

/// kube-router's routing flags as the command line gives them (flattened into
/// `metalnet-router`'s arguments), with its names and defaults. Booleans take `--flag`,
/// `--flag=true` or `--flag=false`; durations Go's syntax (`90s`, `5m`, `1h2m3s`); lists
/// commas or repeated flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RoutingArgs {
    /// ASN number under which cluster nodes run iBGP (0 = 64512; 64512-65535 or
    /// 4200000000-4294967294).
    #[arg(long, value_name = "ASN", default_value_t = 0)]
    pub cluster_asn: u32,

    /// Each node peers with every other node (iBGP full mesh); when false a node needs
    /// `kube-router.io/node.asn` and peers only with nodes of the same ASN.
    #[arg(long, value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set)]
    pub nodes_full_mesh: bool,

    /// Peer with the other nodes of the cluster at all (false: external peers only).
    #[arg(long = "enable-ibgp", value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set)]
    pub enable_ibgp: bool,

    /// The IP addresses of external routers every node peers with (comma separated);
    /// when set, the per-node `kube-router.io/peers` annotations are ignored.
    #[arg(long, value_name = "IP,...", value_delimiter = ',')]
    pub peer_router_ips: Vec<IpAddr>,

    /// The ASN of each `--peer-router-ips` router, in the same order.
    #[arg(long, value_name = "ASN,...", value_delimiter = ',')]
    pub peer_router_asns: Vec<u32>,

    /// Base64-encoded TCP MD5 password of each `--peer-router-ips` router, in the same
    /// order; an empty item means no password (`cGFzcw==,,cGFzcw==`).
    #[arg(long, value_name = "B64,...", value_delimiter = ',')]
    pub peer_router_passwords: Vec<String>,

    /// A file holding the `--peer-router-passwords` value (used when that flag is not
    /// given; the daemon reads it).
    #[arg(long, value_name = "PATH")]
    pub peer_router_passwords_file: Option<std::path::PathBuf>,

    /// The BGP port of each `--peer-router-ips` router, in the same order (empty item =
    /// 179).
    #[arg(long, value_name = "PORT,...", value_delimiter = ',')]
    pub peer_router_ports: Vec<String>,

    /// eBGP multihop TTL towards the external routers (values above 1 enable multihop).
    #[arg(long, value_name = "TTL", default_value_t = 0)]
    pub peer_router_multihop_ttl: u8,

    /// Advertise this node's pod CIDRs to the external peers too (the other nodes always
    /// get them).
    #[arg(long, value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set)]
    pub advertise_pod_cidr: bool,

    /// Advertise the Services' cluster IPs to the external peers.
    #[arg(long, value_name = "BOOL", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set)]
    pub advertise_cluster_ip: bool,

    /// Advertise the Services' external IPs to the external peers.
    #[arg(long, value_name = "BOOL", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set)]
    pub advertise_external_ip: bool,

    /// Advertise the Services' load-balancer IPs (`status.loadBalancer.ingress`) to the
    /// external peers.
    #[arg(long, value_name = "BOOL", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set)]
    pub advertise_loadbalancer_ip: bool,

    /// Announce this node's own address as next hop to the external peers.
    #[arg(long, value_name = "BOOL", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set)]
    pub override_nexthop: bool,

    /// Announce BGP graceful restart (RFC 4724): peers keep our routes while we restart.
    #[arg(long, value_name = "BOOL", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set)]
    pub bgp_graceful_restart: bool,

    /// BGP graceful restart time (RFC 4724 §3), at most 4095s.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_go_duration)]
    pub bgp_graceful_restart_time: Duration,

    /// BGP graceful restart deferral time (RFC 4724 §4.1), at most 18h.
    #[arg(long, value_name = "DURATION", default_value = "360s", value_parser = parse_go_duration)]
    pub bgp_graceful_restart_deferral_time: Duration,

    /// The hold time announced to BGP peers: how long they keep our routes when we stop
    /// answering; 3s to 18h12m16s.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_go_duration)]
    pub bgp_holdtime: Duration,

    /// The port this node's BGP listens on and reaches the other nodes at.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_BGP_PORT)]
    pub bgp_port: u16,

    /// BGP router id: an IPv4 address, or `generate` (FNV-32 of the node's address; needed
    /// on IPv6-only nodes). Default: the node's IPv4 address.
    #[arg(long, value_name = "ID|generate")]
    pub router_id: Option<String>,

    /// How often the routes installed in the kernel are checked and repaired.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_go_duration)]
    pub injected_routes_sync_period: Duration,

    /// Tunnel pod traffic to nodes in other subnets (ipip/fou; this kernel has neither, so
    /// only same-subnet routes are installed).
    #[arg(long, value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set)]
    pub enable_overlay: bool,

    /// `subnet`: tunnel only to nodes outside this node's subnets; `full`: to every node.
    #[arg(long, value_name = "subnet|full", default_value = "subnet")]
    pub overlay_type: String,
}

impl Default for RoutingArgs {
    fn default() -> Self {
        <Self as clap::FromArgMatches>::from_arg_matches(
            &<Self as clap::Args>::augment_args(clap::Command::new("x")).get_matches_from(["x"]),
        )
        .unwrap_or_else(|_| unreachable!("the defaults parse"))
    }
}

fn err(flag: &'static str, reason: impl Into<String>) -> OptionsError {
    OptionsError {
        flag,
        reason: reason.into(),
    }
}

/// The ASNs kube-router accepts for an external peer (everything but 0, 23456, the
/// documentation and reserved ranges and 4294967295).
pub fn peer_asn_allowed(asn: u32) -> bool {
    matches!(asn, 1..=23455 | 23457..=63999 | 64512..=65534 | 131072..=4294967294)
}

/// The ASNs kube-router accepts for `--cluster-asn` (the private ranges).
pub fn cluster_asn_allowed(asn: u32) -> bool {
    matches!(asn, 64512..=65535 | 4200000000..=4294967294)
}

/// Decodes one base64 password item; empty means no password.
pub fn decode_password(item: &str) -> Result<Option<Password>, String> {
    use base64::Engine as _;
    let item = item.trim();
    if item.is_empty() {
        return Ok(None);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(item)
        .map_err(|e| format!("not base64 ({e})"))?;
    let text =
        String::from_utf8(bytes).map_err(|_| "decodes to bytes that are not UTF-8".to_string())?;
    if text.len() > metalnet::bgp::peer::TCP_MD5_MAX_KEY_LEN {
        return Err(format!(
            "decodes to {} bytes, TCP MD5 keys are at most {}",
            text.len(),
            metalnet::bgp::peer::TCP_MD5_MAX_KEY_LEN
        ));
    }
    Ok(Some(Password::new(text)))
}

impl RoutingArgs {
    /// The validated options. `--peer-router-passwords-file` is not read here (no I/O in
    /// this module): call [`RoutingArgs::options_with_passwords_file`] with its contents.
    pub fn options(&self) -> Result<RoutingOptions, OptionsError> {
        if self.peer_router_passwords_file.is_some() && self.peer_router_passwords.is_empty() {
            return Err(err(
                "peer-router-passwords-file",
                "its contents must be read first (options_with_passwords_file)",
            ));
        }
        self.options_with_passwords_file(None)
    }

    /// The validated options, with the contents of `--peer-router-passwords-file` (the same
    /// format as `--peer-router-passwords`; ignored when that flag is given, as
    /// kube-router does).
    pub fn options_with_passwords_file(
        &self,
        passwords_file: Option<&str>,
    ) -> Result<RoutingOptions, OptionsError> {
        let mut o = RoutingOptions::default();
        if self.cluster_asn != 0 {
            if !cluster_asn_allowed(self.cluster_asn) {
                return Err(err(
                    "cluster-asn",
                    format!(
                        "{} is not a private ASN (64512-65535 or 4200000000-4294967294)",
                        self.cluster_asn
                    ),
                ));
            }
            o.cluster_asn = self.cluster_asn;
        }
        o.nodes_full_mesh = self.nodes_full_mesh;
        o.enable_ibgp = self.enable_ibgp;
        o.global_peers = self.global_peers(passwords_file)?;
        o.peer_multihop_ttl =
            (self.peer_router_multihop_ttl > 1).then_some(self.peer_router_multihop_ttl);
        o.advertise_pod_cidr = self.advertise_pod_cidr;
        o.advertise_cluster_ip = self.advertise_cluster_ip;
        o.advertise_external_ip = self.advertise_external_ip;
        o.advertise_loadbalancer_ip = self.advertise_loadbalancer_ip;
        o.override_nexthop = self.override_nexthop;
        o.graceful_restart = self.bgp_graceful_restart;
        if self.bgp_graceful_restart_time > MAX_GRACEFUL_RESTART_TIME
            || self.bgp_graceful_restart_time.is_zero()
        {
            return Err(err(
                "bgp-graceful-restart-time",
                format!(
                    "{} is outside 1s..4095s (a 12-bit field in seconds)",
                    fmt_duration(self.bgp_graceful_restart_time)
                ),
            ));
        }
        o.graceful_restart_time = self.bgp_graceful_restart_time;
        if self.bgp_graceful_restart_deferral_time > MAX_GRACEFUL_RESTART_DEFERRAL
            || self.bgp_graceful_restart_deferral_time.is_zero()
        {
            return Err(err(
                "bgp-graceful-restart-deferral-time",
                format!(
                    "{} is outside 1s..18h",
                    fmt_duration(self.bgp_graceful_restart_deferral_time)
                ),
            ));
        }
        o.graceful_restart_deferral = self.bgp_graceful_restart_deferral_time;
        if self.bgp_holdtime < MIN_HOLD_TIME || self.bgp_holdtime > MAX_HOLD_TIME {
            return Err(err(
                "bgp-holdtime",
                format!(
                    "{} is outside 3s..18h12m16s",
                    fmt_duration(self.bgp_holdtime)
                ),
            ));
        }
        o.hold_time = self.bgp_holdtime;
        if self.bgp_port == 0 {
            return Err(err("bgp-port", "0 is not a port"));
        }
        o.bgp_port = self.bgp_port;
        o.router_id = match self.router_id.as_deref().map(str::trim) {
            None | Some("") => RouterIdChoice::NodeAddress,
            Some("generate") => RouterIdChoice::Generate,
            Some(s) => RouterIdChoice::Fixed(s.parse().map_err(|_| {
                err(
                    "router-id",
                    format!("{s:?} is neither an IPv4 address nor \"generate\""),
                )
            })?),
        };
        if self.injected_routes_sync_period.is_zero() {
            return Err(err("injected-routes-sync-period", "must be above 0"));
        }
        o.injected_routes_sync_period = self.injected_routes_sync_period;
        o.enable_overlay = self.enable_overlay;
        o.overlay_type = match self.overlay_type.as_str() {
            "subnet" => OverlayType::Subnet,
            "full" => OverlayType::Full,
            other => {
                return Err(err(
                    "overlay-type",
                    format!("{other:?} is neither \"subnet\" nor \"full\""),
                ));
            }
        };
        Ok(o)
    }

    fn global_peers(
        &self,
        passwords_file: Option<&str>,
    ) -> Result<Vec<ExternalPeer>, OptionsError> {
        let n = self.peer_router_ips.len();
        if self.peer_router_asns.len() != n {
            return Err(err(
                "peer-router-asns",
                format!(
                    "{} ASNs for {} --peer-router-ips: one per router",
                    self.peer_router_asns.len(),
                    n
                ),
            ));
        }
        // The flag takes precedence over the file, as in kube-router.
        let (pw_flag, pw_items): (&'static str, Vec<String>) =
            if !self.peer_router_passwords.is_empty() {
                ("peer-router-passwords", self.peer_router_passwords.clone())
            } else if let Some(text) = passwords_file {
                (
                    "peer-router-passwords-file",
                    text.trim_end_matches(['\n', '\r'])
                        .split(',')
                        .map(str::to_string)
                        .collect(),
                )
            } else {
                ("peer-router-passwords", Vec::new())
            };
        if !pw_items.is_empty() && pw_items.len() != n {
            return Err(err(
                pw_flag,
                format!(
                    "{} passwords for {} routers: give none or one per router (empty items for none)",
                    pw_items.len(),
                    n
                ),
            ));
        }
        if !self.peer_router_ports.is_empty() && self.peer_router_ports.len() != n {
            return Err(err(
                "peer-router-ports",
                format!(
                    "{} ports for {} routers: give none or one per router (empty items for 179)",
                    self.peer_router_ports.len(),
                    n
                ),
            ));
        }
        let mut peers = Vec::with_capacity(n);
        for (i, &address) in self.peer_router_ips.iter().enumerate() {
            let asn = self.peer_router_asns[i];
            if !peer_asn_allowed(asn) {
                return Err(err(
                    "peer-router-asns",
                    format!("{asn} (for {address}) is a reserved ASN"),
                ));
            }
            let password = match pw_items.get(i) {
                Some(item) => decode_password(item)
                    .map_err(|r| err(pw_flag, format!("item {} (for {address}): {r}", i + 1)))?,
                None => None,
            };
            let port = match self.peer_router_ports.get(i).map(|p| p.trim()) {
                None | Some("") => DEFAULT_BGP_PORT,
                Some(p) => match p.parse::<u16>() {
                    Ok(port) if port != 0 => port,
                    _ => {
                        return Err(err(
                            "peer-router-ports",
                            format!("{p:?} (for {address}) is not a port"),
                        ));
                    }
                },
            };
            if peers.iter().any(|p: &ExternalPeer| p.address == address) {
                return Err(err("peer-router-ips", format!("{address} is given twice")));
            }
            peers.push(ExternalPeer {
                address,
                asn,
                password,
                port,
                multihop_ttl: (self.peer_router_multihop_ttl > 1)
                    .then_some(self.peer_router_multihop_ttl),
                local_address: None,
            });
        }
        Ok(peers)
    }
}

/// Parses a Go duration (`time.ParseDuration`): a sequence of decimal numbers, each with
/// an optional fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), e.g. `90s`,
/// `1h2m3s`, `1.5h`; a bare `0` is zero. Negative durations are refused.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let orig = s;
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') {
        return Err(format!("{orig:?}: negative durations are not accepted"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u128 = 0; // nanoseconds
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(format!("{orig:?}: expected a number at {rest:?}"));
        }
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("{orig:?}: missing unit (ns, us, ms, s, m, h)")),
            other => return Err(format!("{orig:?}: unknown unit {other:?}")),
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse()
                .map_err(|_| format!("{orig:?}: number {num:?} too large"))?
        };
        let mut value = int
            .checked_mul(scale)
            .ok_or_else(|| format!("{orig:?}: too large"))?;
        // The fraction, digit by digit, truncated below a nanosecond as Go does.
        let mut unit_part = scale;
        for d in frac.chars() {
            unit_part /= 10;
            value += u128::from(d.to_digit(10).unwrap_or(0)) * unit_part;
        }
        total = total
            .checked_add(value)
            .filter(|t| *t <= i64::MAX as u128)
            .ok_or_else(|| format!("{orig:?}: too large"))?;
    }
    Ok(Duration::from_nanos(total as u64))
}

/// A duration the way Go prints it (`1h2m3s`, `90s`, `1.5s`, `0s`).
pub fn fmt_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let nanos = d.subsec_nanos();
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if h > 0 || m > 0 {
        out += &format!("{m}m");
    }
    if nanos == 0 {
        out += &format!("{s}s");
    } else {
        let frac = format!("{nanos:09}");
        out += &format!("{s}.{}s", frac.trim_end_matches('0'));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        r: RoutingArgs,
    }

    fn parse(args: &[&str]) -> RoutingArgs {
        let mut v = vec!["x"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("parses").r
    }

    fn opts(args: &[&str]) -> Result<RoutingOptions, OptionsError> {
        parse(args).options()
    }

    #[test]
    fn defaults_are_kube_routers() {
        let o = opts(&[]).unwrap();
        assert_eq!(o, RoutingOptions::default());
        assert_eq!(o.cluster_asn, 64512);
        assert!(o.nodes_full_mesh && o.enable_ibgp && o.advertise_pod_cidr && o.enable_overlay);
        assert!(!o.advertise_cluster_ip && !o.advertise_external_ip);
        assert!(!o.advertise_loadbalancer_ip && !o.override_nexthop && !o.graceful_restart);
        assert_eq!(o.hold_time, Duration::from_secs(90));
        assert_eq!(o.graceful_restart_time, Duration::from_secs(90));
        assert_eq!(o.graceful_restart_deferral, Duration::from_secs(360));
        assert_eq!(o.injected_routes_sync_period, Duration::from_secs(60));
        assert_eq!(o.bgp_port, 179);
        assert_eq!(o.router_id, RouterIdChoice::NodeAddress);
        assert_eq!(o.overlay_type, OverlayType::Subnet);
        assert_eq!(RoutingArgs::default().options().unwrap(), o);
    }

    #[test]
    fn booleans_take_bare_true_and_false() {
        assert!(!opts(&["--nodes-full-mesh=false"]).unwrap().nodes_full_mesh);
        assert!(opts(&["--nodes-full-mesh=true"]).unwrap().nodes_full_mesh);
        assert!(
            opts(&["--advertise-loadbalancer-ip"])
                .unwrap()
                .advertise_loadbalancer_ip
        );
        assert!(!opts(&["--enable-ibgp=false"]).unwrap().enable_ibgp);
        assert!(
            !opts(&["--advertise-pod-cidr=false"])
                .unwrap()
                .advertise_pod_cidr
        );
        let o = opts(&[
            "--advertise-cluster-ip",
            "--advertise-external-ip=true",
            "--override-nexthop",
            "--bgp-graceful-restart",
            "--enable-overlay=false",
        ])
        .unwrap();
        assert!(o.advertise_cluster_ip && o.advertise_external_ip && o.override_nexthop);
        assert!(o.graceful_restart && !o.enable_overlay);
        assert!(Cli::try_parse_from(["x", "--nodes-full-mesh=maybe"]).is_err());
        // As with Go's pflag, a value needs '=': a following word is never taken as one.
        assert!(Cli::try_parse_from(["x", "--nodes-full-mesh", "false"]).is_err());
    }

    #[test]
    fn cluster_asn_ranges() {
        assert_eq!(opts(&["--cluster-asn=65000"]).unwrap().cluster_asn, 65000);
        assert_eq!(
            opts(&["--cluster-asn=4200000001"]).unwrap().cluster_asn,
            4200000001
        );
        let e = opts(&["--cluster-asn=100"]).unwrap_err();
        assert_eq!(e.flag, "cluster-asn");
        assert!(e.to_string().starts_with("--cluster-asn: 100"), "{e}");
        assert!(opts(&["--cluster-asn=4294967295"]).is_err());
    }

    #[test]
    fn global_peers_aligned() {
        let o = opts(&[
            "--peer-router-ips=192.0.2.1,2001:db8::1",
            "--peer-router-asns=65001,4200000000",
            "--peer-router-passwords=c2VjcmV0,",
            "--peer-router-ports=,1179",
            "--peer-router-multihop-ttl=4",
        ])
        .unwrap();
        assert_eq!(o.global_peers.len(), 2);
        let a = &o.global_peers[0];
        assert_eq!(a.address, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!((a.asn, a.port, a.multihop_ttl), (65001, 179, Some(4)));
        assert_eq!(a.password, Some(Password::new("secret")));
        let b = &o.global_peers[1];
        assert_eq!(
            (b.asn, b.port, b.password.clone()),
            (4200000000, 1179, None)
        );
        // Repeated flags work like commas.
        let o = opts(&[
            "--peer-router-ips=192.0.2.1",
            "--peer-router-ips=192.0.2.2",
            "--peer-router-asns=65001,65002",
            "--peer-router-multihop-ttl=1",
        ])
        .unwrap();
        assert_eq!(o.global_peers.len(), 2);
        assert_eq!(o.global_peers[0].multihop_ttl, None);
    }

    #[test]
    fn global_peer_errors_name_the_flag() {
        let e = opts(&[
            "--peer-router-ips=192.0.2.1,192.0.2.2",
            "--peer-router-asns=65001",
        ])
        .unwrap_err();
        assert_eq!(e.flag, "peer-router-asns");
        let e = opts(&[
            "--peer-router-ips=192.0.2.1,192.0.2.2",
            "--peer-router-asns=65001,65002",
            "--peer-router-passwords=c2VjcmV0",
        ])
        .unwrap_err();
        assert_eq!(e.flag, "peer-router-passwords");
        let e = opts(&[
            "--peer-router-ips=192.0.2.1",
            "--peer-router-asns=65001",
            "--peer-router-passwords=not*base64",
        ])
        .unwrap_err();
        assert_eq!(e.flag, "peer-router-passwords");
        assert!(e.reason.contains("base64"), "{e}");
        let e = opts(&[
            "--peer-router-ips=192.0.2.1",
            "--peer-router-asns=65001",
            "--peer-router-ports=1,2",
        ])
        .unwrap_err();
        assert_eq!(e.flag, "peer-router-ports");
        let e = opts(&[
            "--peer-router-ips=192.0.2.1",
            "--peer-router-asns=65001",
            "--peer-router-ports=http",
        ])
        .unwrap_err();
        assert_eq!(e.flag, "peer-router-ports");
        let e = opts(&["--peer-router-ips=192.0.2.1", "--peer-router-asns=23456"]).unwrap_err();
        assert_eq!(e.flag, "peer-router-asns");
        assert!(e.reason.contains("reserved"));
        let e = opts(&[
            "--peer-router-ips=192.0.2.1,192.0.2.1",
            "--peer-router-asns=1,2",
        ])
        .unwrap_err();
        assert_eq!(e.flag, "peer-router-ips");
        assert!(Cli::try_parse_from(["x", "--peer-router-ips=300.1.1.1"]).is_err());
    }

    #[test]
    fn passwords_file() {
        let a = parse(&[
            "--peer-router-ips=192.0.2.1,192.0.2.2",
            "--peer-router-asns=65001,65002",
            "--peer-router-passwords-file=/etc/pw",
        ]);
        assert_eq!(a.options().unwrap_err().flag, "peer-router-passwords-file");
        let o = a.options_with_passwords_file(Some("c2VjcmV0,\n")).unwrap();
        assert_eq!(o.global_peers[0].password, Some(Password::new("secret")));
        assert_eq!(o.global_peers[1].password, None);
        let e = a.options_with_passwords_file(Some("c2VjcmV0")).unwrap_err();
        assert_eq!(e.flag, "peer-router-passwords-file");
        // The flag wins over the file.
        let b = parse(&[
            "--peer-router-ips=192.0.2.1",
            "--peer-router-asns=65001",
            "--peer-router-passwords=b3RoZXI=",
            "--peer-router-passwords-file=/etc/pw",
        ]);
        let o = b.options_with_passwords_file(Some("c2VjcmV0")).unwrap();
        assert_eq!(o.global_peers[0].password, Some(Password::new("other")));
    }

    #[test]
    fn timers() {
        let o = opts(&[
            "--bgp-holdtime=1h2m3s",
            "--bgp-graceful-restart-time=2m",
            "--bgp-graceful-restart-deferral-time=1.5h",
            "--injected-routes-sync-period=500ms",
            "--bgp-port=1179",
        ])
        .unwrap();
        assert_eq!(o.hold_time, Duration::from_secs(3723));
        assert_eq!(o.graceful_restart_time, Duration::from_secs(120));
        assert_eq!(o.graceful_restart_deferral, Duration::from_secs(5400));
        assert_eq!(o.injected_routes_sync_period, Duration::from_millis(500));
        assert_eq!(o.bgp_port, 1179);
        assert_eq!(
            opts(&["--bgp-holdtime=18h12m16s"]).unwrap().hold_time,
            MAX_HOLD_TIME
        );
        assert_eq!(
            opts(&["--bgp-holdtime=3s"]).unwrap().hold_time,
            MIN_HOLD_TIME
        );
        assert_eq!(
            opts(&["--bgp-holdtime=2s"]).unwrap_err().flag,
            "bgp-holdtime"
        );
        assert_eq!(
            opts(&["--bgp-holdtime=18h12m17s"]).unwrap_err().flag,
            "bgp-holdtime"
        );
        assert!(opts(&["--bgp-graceful-restart-time=4095s"]).is_ok());
        assert_eq!(
            opts(&["--bgp-graceful-restart-time=4096s"])
                .unwrap_err()
                .flag,
            "bgp-graceful-restart-time"
        );
        assert_eq!(
            opts(&["--bgp-graceful-restart-deferral-time=19h"])
                .unwrap_err()
                .flag,
            "bgp-graceful-restart-deferral-time"
        );
        assert!(Cli::try_parse_from(["x", "--bgp-holdtime=90"]).is_err());
    }

    #[test]
    fn router_id_and_overlay() {
        assert_eq!(
            opts(&["--router-id=generate"]).unwrap().router_id,
            RouterIdChoice::Generate
        );
        assert_eq!(
            opts(&["--router-id=192.0.2.9"]).unwrap().router_id,
            RouterIdChoice::Fixed(Ipv4Addr::new(192, 0, 2, 9))
        );
        assert_eq!(
            opts(&["--router-id=2001:db8::1"]).unwrap_err().flag,
            "router-id"
        );
        assert_eq!(
            opts(&["--overlay-type=full"]).unwrap().overlay_type,
            OverlayType::Full
        );
        assert_eq!(
            opts(&["--overlay-type=mesh"]).unwrap_err().flag,
            "overlay-type"
        );
    }

    #[test]
    fn go_durations() {
        let d = |s: &str| parse_go_duration(s);
        assert_eq!(d("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(d("1h2m3s"), Ok(Duration::from_secs(3723)));
        assert_eq!(d("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(d("2us"), Ok(Duration::from_micros(2)));
        assert_eq!(d("2µs"), Ok(Duration::from_micros(2)));
        assert_eq!(d("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(d(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        for bad in [
            "",
            "90",
            "s",
            "1x",
            "-5s",
            "1..5s",
            "99999999999999999999h",
            "1h 2m",
        ] {
            assert!(d(bad).is_err(), "{bad}");
        }
        assert_eq!(fmt_duration(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(fmt_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn every_flag_has_help() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for arg in cmd.get_arguments() {
            if arg.get_id() == "help" {
                continue;
            }
            assert!(arg.get_help().is_some(), "--{} has no help", arg.get_id());
        }
        let names: Vec<_> = cmd.get_arguments().filter_map(|a| a.get_long()).collect();
        for flag in [
            "cluster-asn",
            "nodes-full-mesh",
            "enable-ibgp",
            "peer-router-ips",
            "peer-router-asns",
            "peer-router-passwords",
            "peer-router-passwords-file",
            "peer-router-ports",
            "peer-router-multihop-ttl",
            "advertise-pod-cidr",
            "advertise-cluster-ip",
            "advertise-external-ip",
            "advertise-loadbalancer-ip",
            "override-nexthop",
            "bgp-graceful-restart",
            "bgp-graceful-restart-time",
            "bgp-graceful-restart-deferral-time",
            "bgp-holdtime",
            "bgp-port",
            "router-id",
            "injected-routes-sync-period",
            "enable-overlay",
            "overlay-type",
        ] {
            assert!(names.contains(&flag), "--{flag} missing");
        }
    }

    proptest::proptest! {
        #[test]
        fn durations_round_trip(secs in 0u64..400_000, millis in 0u32..1000) {
            let d = Duration::from_secs(secs) + Duration::from_millis(u64::from(millis));
            proptest::prop_assert_eq!(parse_go_duration(&fmt_duration(d)), Ok(d));
        }

        #[test]
        fn duration_parser_never_panics(s in "\\PC{0,24}") {
            let _ = parse_go_duration(&s);
        }
    }
}
