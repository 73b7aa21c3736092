//! The service proxy's flags ([`ProxyArgs`], flattened into `metalnet-router`'s command line),
//! with kube-proxy's and kube-router's names where they have one, and their validated form
//! [`ProxyOptions`]. Pure: finding the cgroup2 mount reads a text the caller supplies.

use std::path::PathBuf;

use ipnet::IpNet;

use super::abi;

/// Where the BPF maps and links are pinned when `--bpf-dir` is not given.
pub const DEFAULT_BPF_DIR: &str = "/sys/fs/bpf/metalnet";
/// Maglev lookup table size when not given (Cilium's default too).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 1021;
/// The smallest and largest Maglev table sizes accepted (Cilium's range): below, backends
/// get uneven shares; above, every table costs more memory than it buys.
pub const MAGLEV_TABLE_SIZE_RANGE: std::ops::RangeInclusive<u32> = 251..=131_071;
/// kube-proxy's masquerade mark (`--iptables-masquerade-bit` 14).
pub const DEFAULT_MASQUERADE_MARK: u32 = 0x4000;
/// Conntrack entries when `--bpf-ct-max` is not given.
pub const DEFAULT_BPF_CT_MAX: u32 = 524_288;
/// The conntrack sizes accepted (Cilium's bounds for its CT maps).
pub const BPF_CT_MAX_RANGE: std::ops::RangeInclusive<u32> = 1 << 10..=1 << 24;
/// Seconds an idle TCP connection stays in conntrack (the LRU evicts earlier when full).
pub const CT_TIMEOUT_TCP: u32 = 6 * 3600;
/// Seconds an idle UDP or SCTP flow stays in conntrack.
pub const CT_TIMEOUT_OTHER: u32 = 60;

/// `--socket-lb`: which sockets the cgroup hooks translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SocketLb {
    /// Every socket in the cgroup tree (host and pods).
    All,
    /// Only sockets of the node's own network namespace: pods' connections are balanced per
    /// packet, so a service mesh sidecar in the pod still sees the Service address.
    HostOnly,
    /// None: every connection is balanced per packet.
    Off,
}

impl SocketLb {
    /// `mn_config.socket_lb`.
    pub fn abi_value(self) -> u32 {
        match self {
            SocketLb::Off => 0,
            SocketLb::All => 1,
            SocketLb::HostOnly => 2,
        }
    }
}

/// The fewest source ports masquerade accepts above the node's ephemeral range before it falls
/// back to [`abi::SNAT_PORTS_DEFAULT`].
const SNAT_PORTS_MIN_COUNT: u16 = 1024;

/// Masquerade's source ports given the node's `net.ipv4.ip_local_port_range` ("low high"):
/// the ports above it, so the node's own connections never pick one a masqueraded connection
/// holds toward the same backend. When fewer than 1024 are left above it (or the range cannot
/// be read), the default 61000-65535, above Linux's default range 32768-60999.
pub fn snat_ports(ip_local_port_range: Option<&str>) -> (u16, u16) {
    let high = ip_local_port_range.and_then(|s| s.split_whitespace().nth(1)?.parse::<u16>().ok());
    match high {
        Some(h) if h < u16::MAX - SNAT_PORTS_MIN_COUNT + 1 => (h + 1, u16::MAX),
        _ => abi::SNAT_PORTS_DEFAULT,
    }
}

/// The validated proxy options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOptions {
    pub bpf_dir: PathBuf,
    /// `None`: the cgroup2 mount, found at start ([`cgroup2_mount`]).
    pub cgroup_root: Option<PathBuf>,
    pub socket_lb: SocketLb,
    pub cluster_cidrs: Vec<IpNet>,
    /// Empty: every non-loopback address of the node.
    pub nodeport_addresses: Vec<IpNet>,
    /// `None`: Services without the `service.kubernetes.io/service-proxy-name` label.
    pub service_proxy_name: Option<String>,
    pub maglev_table_size: u32,
    pub masquerade_mark: u32,
    pub bpf_ct_max: u32,
    pub tc_attach: super::attach::TcAttach,
    pub cleanup_config: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            bpf_dir: PathBuf::from(DEFAULT_BPF_DIR),
            cgroup_root: None,
            socket_lb: SocketLb::All,
            cluster_cidrs: Vec::new(),
            nodeport_addresses: Vec::new(),
            service_proxy_name: None,
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
            masquerade_mark: DEFAULT_MASQUERADE_MARK,
            bpf_ct_max: DEFAULT_BPF_CT_MAX,
            tc_attach: super::attach::TcAttach::Auto,
            cleanup_config: false,
        }
    }
}

impl ProxyOptions {
    /// `mn_config` as these options set it (the host network namespace cookie is the
    /// loader's to fill in). Masquerade's source ports are those above the node's ephemeral
    /// range ([`snat_ports`]), read in the calling thread's network namespace.
    pub fn abi_config(&self) -> abi::Config {
        let (snat_port_min, snat_port_max) = snat_ports(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
                .ok()
                .as_deref(),
        );
        abi::Config {
            host_netns_cookie: 0,
            socket_lb: self.socket_lb.abi_value(),
            maglev_m: self.maglev_table_size,
            masq_mark: self.masquerade_mark,
            ct_timeout_tcp: CT_TIMEOUT_TCP,
            ct_timeout_other: CT_TIMEOUT_OTHER,
            snat_port_min,
            snat_port_max,
        }
    }

    /// Whether an address of this node serves NodePorts (`--nodeport-addresses`).
    pub fn serves_nodeports(&self, addr: std::net::IpAddr) -> bool {
        if addr.is_loopback() {
            return false;
        }
        self.nodeport_addresses.is_empty()
            || self.nodeport_addresses.iter().any(|n| n.contains(&addr))
    }
}

/// A flag value that is not acceptable, naming the flag and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag} {value}: {reason}")]
pub struct OptionsError {
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

fn err(flag: &'static str, value: impl ToString, reason: impl Into<String>) -> OptionsError {
    OptionsError {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The service proxy's flags as the command line gives them (used with
/// `--run-service-proxy`). Lists take commas or repeated flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Directory on a BPF filesystem where the proxy pins its maps and program links, so
    /// a restart (or an upgrade) keeps every connection; a bpffs is mounted there when the
    /// path is not one.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPF_DIR)]
    pub bpf_dir: PathBuf,

    /// The cgroup v2 directory whose sockets get socket-level load balancing (connect,
    /// sendmsg, recvmsg, getpeername). Default: the cgroup2 mount (from
    /// /proc/self/mountinfo), i.e. every process of the node.
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,

    /// Socket-level load balancing: `all` (host and pods), `host-only` (the node's own
    /// network namespace; pods are balanced per packet, as service meshes need: Cilium's
    /// --bpf-lb-sock-hostns-only), or `off`.
    #[arg(
        long,
        value_name = "all|host-only|off",
        value_enum,
        default_value = "all"
    )]
    pub socket_lb: SocketLb,

    /// The pods' address ranges (kube-proxy's --cluster-cidr, comma separated): sources
    /// inside them, or on a node address, count as in-cluster for
    /// internalTrafficPolicy and externalTrafficPolicy=Local. Default: none, only node
    /// addresses.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub cluster_cidr: Vec<String>,

    /// The node addresses that serve NodePorts (kube-proxy's --nodeport-addresses, comma
    /// separated CIDRs). Default: every non-loopback address of the node.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,

    /// Handle only the Services labelled service.kubernetes.io/service-proxy-name=NAME, so
    /// another proxy can handle the rest. Default (empty): the Services without that
    /// label, as kube-proxy.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub service_proxy_name: String,

    /// Size of each Maglev lookup table (a prime, 251 to 131071; Cilium's
    /// --bpf-lb-maglev-table-size): traffic from outside reaches the same backend whichever
    /// node it enters; larger tables spread it more evenly.
    #[arg(long, value_name = "PRIME", default_value_t = DEFAULT_MAGLEV_TABLE_SIZE)]
    pub maglev_table_size: u32,

    /// Unused, accepted for compatibility: the data path masquerades by itself now, with no
    /// netfilter rule to mark packets for (was kube-proxy's --iptables-masquerade-bit 14 =
    /// 0x4000; decimal or 0x-hex, exactly one bit).
    #[arg(long, value_name = "MARK", default_value = "0x4000")]
    pub masquerade_mark: String,

    /// Conntrack entries of the per-packet data path (Cilium's --bpf-ct-global-tcp-max;
    /// 1024 to 16777216); the least recently used are evicted when full.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BPF_CT_MAX)]
    pub bpf_ct_max: u32,

    /// How the per-packet programs go on the node's interfaces: `auto` (TCX links, pinned and
    /// swapped in place on a restart; a clsact qdisc and filter on kernels before 6.6, which
    /// have no TCX) or `clsact` (always the clsact way).
    #[arg(long, value_name = "auto|clsact", value_enum, default_value = "auto")]
    pub tc_attach: super::attach::TcAttach,

    /// Remove the proxy's programs, maps and pins (and the nftables table older versions
    /// installed), then exit (kube-router's --cleanup-config).
    #[arg(long, value_name = "BOOL", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set)]
    pub cleanup_config: bool,
}

impl Default for ProxyArgs {
    fn default() -> Self {
        <Self as clap::FromArgMatches>::from_arg_matches(
            &<Self as clap::Args>::augment_args(clap::Command::new("x")).get_matches_from(["x"]),
        )
        .unwrap_or_else(|_| unreachable!("the defaults parse"))
    }
}

fn cidrs(flag: &'static str, items: &[String]) -> Result<Vec<IpNet>, OptionsError> {
    let mut out = Vec::new();
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let net: IpNet = item
            .parse()
            .map_err(|e| err(flag, item, format!("not a CIDR ({e})")))?;
        if net.trunc() != net {
            return Err(err(
                flag,
                item,
                format!("host bits set (the network is {})", net.trunc()),
            ));
        }
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn parse_mark(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| format!("not a 32-bit number ({e})"))
}

impl ProxyArgs {
    /// The validated options.
    pub fn options(&self) -> Result<ProxyOptions, OptionsError> {
        if self.bpf_dir.as_os_str().is_empty() || !self.bpf_dir.is_absolute() {
            return Err(err(
                "bpf-dir",
                self.bpf_dir.display(),
                "must be an absolute path",
            ));
        }
        if let Some(c) = &self.cgroup_root
            && !c.is_absolute()
        {
            return Err(err("cgroup-root", c.display(), "must be an absolute path"));
        }
        let size = self.maglev_table_size;
        if !is_prime(size) {
            return Err(err("maglev-table-size", size, "not a prime"));
        }
        if !MAGLEV_TABLE_SIZE_RANGE.contains(&size) {
            return Err(err(
                "maglev-table-size",
                size,
                format!(
                    "outside {}..={}",
                    MAGLEV_TABLE_SIZE_RANGE.start(),
                    MAGLEV_TABLE_SIZE_RANGE.end()
                ),
            ));
        }
        let mark = parse_mark(&self.masquerade_mark)
            .map_err(|r| err("masquerade-mark", &self.masquerade_mark, r))?;
        if mark.count_ones() != 1 {
            return Err(err(
                "masquerade-mark",
                &self.masquerade_mark,
                "must be exactly one bit (e.g. 0x4000)",
            ));
        }
        if !BPF_CT_MAX_RANGE.contains(&self.bpf_ct_max) {
            return Err(err(
                "bpf-ct-max",
                self.bpf_ct_max,
                format!(
                    "outside {}..={}",
                    BPF_CT_MAX_RANGE.start(),
                    BPF_CT_MAX_RANGE.end()
                ),
            ));
        }
        let name = self.service_proxy_name.trim();
        if name.len() > 63 || name.chars().any(|c| c.is_whitespace() || c == ',') {
            return Err(err(
                "service-proxy-name",
                name,
                "not a label value (at most 63 characters, no spaces or commas)",
            ));
        }
        Ok(ProxyOptions {
            bpf_dir: self.bpf_dir.clone(),
            cgroup_root: self.cgroup_root.clone(),
            socket_lb: self.socket_lb,
            cluster_cidrs: cidrs("cluster-cidr", &self.cluster_cidr)?,
            nodeport_addresses: cidrs("nodeport-addresses", &self.nodeport_addresses)?,
            service_proxy_name: (!name.is_empty()).then(|| name.to_string()),
            maglev_table_size: size,
            masquerade_mark: mark,
            bpf_ct_max: self.bpf_ct_max,
            tc_attach: self.tc_attach,
            cleanup_config: self.cleanup_config,
        })
    }
}

/// The mount point of the cgroup2 filesystem in a `/proc/self/mountinfo` text (the first
/// one; `None` when there is none). Fields: id parent major:minor root mountpoint options
/// [optional...] - fstype source superoptions.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup root to attach socket-LB to: `--cgroup-root`, else the cgroup2 mount found in
/// `mountinfo`; an error names the flag when there is none.
pub fn cgroup_root(opts: &ProxyOptions, mountinfo: &str) -> Result<PathBuf, OptionsError> {
    if let Some(p) = &opts.cgroup_root {
        return Ok(p.clone());
    }
    cgroup2_mount(mountinfo).ok_or_else(|| {
        err(
            "cgroup-root",
            "(not given)",
            "no cgroup2 filesystem is mounted (see /proc/self/mountinfo); mount one or pass --cgroup-root",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        p: ProxyArgs,
    }

    fn parse(args: &[&str]) -> Result<ProxyOptions, OptionsError> {
        let mut v = vec!["x"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("parses").p.options()
    }

    #[test]
    fn defaults() {
        let o = parse(&[]).unwrap();
        assert_eq!(o, ProxyOptions::default());
        assert_eq!(ProxyArgs::default().options().unwrap(), o);
        assert_eq!(o.bpf_dir, PathBuf::from("/sys/fs/bpf/metalnet"));
        assert_eq!(o.maglev_table_size, 1021);
        assert_eq!(o.masquerade_mark, 0x4000);
        assert_eq!(o.bpf_ct_max, 524_288);
        assert_eq!(o.socket_lb, SocketLb::All);
        assert_eq!(o.service_proxy_name, None);
        assert!(!o.cleanup_config);
        let c = o.abi_config();
        assert_eq!((c.socket_lb, c.maglev_m, c.masq_mark), (1, 1021, 0x4000));
        assert!(c.snat_port_min >= 1024 && c.snat_port_min <= c.snat_port_max);
    }

    #[test]
    fn masquerade_ports_above_the_ephemeral_range() {
        assert_eq!(snat_ports(Some("32768\t60999\n")), (61000, 65535));
        assert_eq!(snat_ports(Some("1024 49151")), (49152, 65535));
        assert_eq!(snat_ports(Some("32768 64511")), (64512, 65535));
        assert_eq!(snat_ports(Some("32768 64512")), (61000, 65535));
        assert_eq!(snat_ports(Some("1024 65535")), (61000, 65535));
        assert_eq!(snat_ports(Some("garbage")), (61000, 65535));
        assert_eq!(snat_ports(None), (61000, 65535));
    }

    #[test]
    fn every_flag() {
        let o = parse(&[
            "--bpf-dir=/tmp/bpf",
            "--cgroup-root",
            "/sys/fs/cgroup/mnl",
            "--socket-lb",
            "host-only",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:244::/56",
            "--cluster-cidr=10.245.0.0/16",
            "--nodeport-addresses=192.0.2.0/24",
            "--service-proxy-name=metalnet",
            "--maglev-table-size=251",
            "--masquerade-mark=16384",
            "--bpf-ct-max=65536",
            "--cleanup-config",
        ])
        .unwrap();
        assert_eq!(o.bpf_dir, PathBuf::from("/tmp/bpf"));
        assert_eq!(o.cgroup_root, Some(PathBuf::from("/sys/fs/cgroup/mnl")));
        assert_eq!(o.socket_lb, SocketLb::HostOnly);
        assert_eq!(o.socket_lb.abi_value(), 2);
        assert_eq!(o.cluster_cidrs.len(), 3);
        assert_eq!(o.nodeport_addresses, vec!["192.0.2.0/24".parse().unwrap()]);
        assert_eq!(o.service_proxy_name.as_deref(), Some("metalnet"));
        assert_eq!(o.maglev_table_size, 251);
        assert_eq!(o.masquerade_mark, 0x4000);
        assert_eq!(o.bpf_ct_max, 65536);
        assert!(o.cleanup_config);
        assert_eq!(
            parse(&["--socket-lb=off"]).unwrap().socket_lb.abi_value(),
            0
        );
        assert!(!parse(&["--cleanup-config=false"]).unwrap().cleanup_config);
    }

    #[test]
    fn errors_name_the_flag_and_value() {
        let e = |args: &[&str]| parse(args).unwrap_err().to_string();
        assert_eq!(
            e(&["--maglev-table-size=1000"]),
            "--maglev-table-size 1000: not a prime"
        );
        assert!(e(&["--maglev-table-size=7"]).contains("outside 251..=131071"));
        assert!(
            e(&["--masquerade-mark=0x6000"])
                .starts_with("--masquerade-mark 0x6000: must be exactly one bit")
        );
        assert!(e(&["--masquerade-mark=0"]).contains("exactly one bit"));
        assert!(
            e(&["--masquerade-mark=zz"]).starts_with("--masquerade-mark zz: not a 32-bit number")
        );
        assert!(
            e(&["--cluster-cidr=10.0.0.0/33"])
                .starts_with("--cluster-cidr 10.0.0.0/33: not a CIDR")
        );
        assert!(
            e(&["--cluster-cidr=10.0.0.1/8"]).contains("host bits set (the network is 10.0.0.0/8)")
        );
        assert!(e(&["--nodeport-addresses=x"]).starts_with("--nodeport-addresses x:"));
        assert!(e(&["--bpf-ct-max=10"]).starts_with("--bpf-ct-max 10: outside"));
        assert!(
            e(&["--bpf-dir=relative"]).starts_with("--bpf-dir relative: must be an absolute path")
        );
        assert!(e(&["--cgroup-root=rel"]).starts_with("--cgroup-root rel:"));
        assert!(e(&["--service-proxy-name=a b"]).starts_with("--service-proxy-name a b:"));
        assert!(Cli::try_parse_from(["x", "--socket-lb=some"]).is_err());
    }

    #[test]
    fn primes() {
        let primes: Vec<u32> = (0..30).filter(|n| is_prime(*n)).collect();
        assert_eq!(primes, vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        for p in [
            251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131_071,
        ] {
            assert!(is_prime(p), "{p}");
        }
        assert!(!is_prime(65_537 * 2));
    }

    #[test]
    fn nodeport_addresses_filter() {
        let mut o = ProxyOptions::default();
        assert!(o.serves_nodeports("192.0.2.1".parse().unwrap()));
        assert!(!o.serves_nodeports("127.0.0.1".parse().unwrap()));
        assert!(!o.serves_nodeports("::1".parse().unwrap()));
        o.nodeport_addresses = vec!["192.0.2.0/24".parse().unwrap()];
        assert!(o.serves_nodeports("192.0.2.1".parse().unwrap()));
        assert!(!o.serves_nodeports("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn cgroup2_from_mountinfo() {
        let mi = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
25 1 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
26 1 0:24 / /sys/fs/bpf rw - bpf bpf rw
";
        assert_eq!(cgroup2_mount(mi), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount("22 1 0:21 / /proc rw - proc proc rw\n"), None);
        assert_eq!(
            cgroup2_mount("1 1 0:1 / /a\\040b rw - cgroup2 none rw\n"),
            Some(PathBuf::from("/a b"))
        );
        let o = ProxyOptions::default();
        assert_eq!(
            cgroup_root(&o, mi).unwrap(),
            PathBuf::from("/sys/fs/cgroup")
        );
        assert!(
            cgroup_root(&o, "")
                .unwrap_err()
                .to_string()
                .starts_with("--cgroup-root")
        );
        let o = ProxyOptions {
            cgroup_root: Some("/x".into()),
            ..o
        };
        assert_eq!(cgroup_root(&o, "").unwrap(), PathBuf::from("/x"));
    }
}
