//! The masquerade rules Flannel installs with `--ip-masq`, in an nftables table of our own
//! (`ip metalnet-vxlan` / `ip6 metalnet-vxlan`), replaced in one atomic transaction when the
//! subnets change. Pure rendering here; `apply` pipes the ruleset to `nft -f -` (nftables has
//! no rtnetlink interface; the netlink-level nftables crates are not worth their weight for
//! six rules).

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;

pub const TABLE: &str = "metalnet-vxlan";

/// Flannel's POSTROUTING rules for one family (`pkg/trafficmngr`), plus FORWARD accepts so
/// pod traffic is not dropped by a default-drop forward policy.
pub fn render(network: &IpNet, subnet: &IpNet) -> String {
    let (fam, a) = if network.addr().is_ipv4() {
        ("ip", "ip")
    } else {
        ("ip6", "ip6")
    };
    let mcast = if network.addr().is_ipv4() {
        "224.0.0.0/4"
    } else {
        "ff00::/8"
    };
    format!(
        "table {fam} {TABLE}\n\
         delete table {fam} {TABLE}\n\
         table {fam} {TABLE} {{\n\
         \tchain postrtg {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & 0x4000 == 0x4000 return comment \"kube-proxy masquerades it\"\n\
         \t\t{a} saddr {subnet} {a} daddr {network} return\n\
         \t\t{a} saddr {network} {a} daddr {subnet} return\n\
         \t\t{a} saddr != {network} {a} daddr {subnet} return\n\
         \t\t{a} saddr {network} {a} daddr != {mcast} masquerade fully-random\n\
         \t\t{a} saddr != {network} {a} daddr {network} masquerade fully-random\n\
         \t}}\n\
         \tchain forwarding {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\t{a} saddr {network} accept\n\
         \t\t{a} daddr {network} accept\n\
         \t}}\n\
         }}\n"
    )
}

/// Removes our tables of both families (the `table` line makes the delete idempotent).
pub fn render_delete(v6: bool) -> String {
    let fam = if v6 { "ip6" } else { "ip" };
    format!("table {fam} {TABLE}\ndelete table {fam} {TABLE}\n")
}

/// Runs an nft script as one transaction.
pub fn apply(script: &str) -> std::io::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "nft -f -: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_rules() {
        let r = render(
            &"10.244.0.0/16".parse().unwrap(),
            &"10.244.1.0/24".parse().unwrap(),
        );
        assert!(r.contains("ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return"));
        assert!(
            r.contains("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random")
        );
        assert!(r.starts_with("table ip metalnet-vxlan\ndelete table ip metalnet-vxlan\n"));
        let r6 = render(
            &"2001:db8::/56".parse().unwrap(),
            &"2001:db8:0:1::/64".parse().unwrap(),
        );
        assert!(r6.contains("ip6 saddr != 2001:db8::/56 ip6 daddr 2001:db8::/56 masquerade"));
    }
}
