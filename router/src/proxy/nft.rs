//! The nftables table older versions of the proxy installed, `inet metalnet-proxy`: one
//! postrouting nat rule masquerading the packets the tc program had marked with
//! `--masquerade-mark`, as kube-proxy's KUBE-POSTROUTING does. The tc programs now masquerade
//! by themselves (see bpf/lb.c), so the node needs no netfilter NAT, whose nat chain turned
//! netfilter conntrack on for every packet of the node. What is left here: the proxy removes
//! a table an older version left ([`remove_if_present`] at start, [`remove`] for
//! `--cleanup-config`); [`ensure`] recreates one, for tests of that removal.
//!
//! Written with `nft -f -` in one transaction (the table is declared, deleted and declared
//! again, so applying is idempotent and atomic); `nft` comes from scripts/setup.sh. Acts in
//! the network namespace of the calling thread (a child process inherits it).

use std::io::Write;
use std::process::{Command, Stdio};

use tracing::info;

/// The table's name (family inet: IPv4 and IPv6 in one chain).
pub const TABLE: &str = "metalnet-proxy";

/// An nft invocation failed; carries nft's own message.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("masquerade mark {0:#x}: must not be zero")]
    Mark(u32),
    #[error("running nft to {action}: {reason}")]
    Run {
        action: &'static str,
        reason: String,
    },
}

/// The ruleset for `mark`: declare (so the delete cannot fail), delete, create.
pub fn ruleset(mark: u32) -> String {
    format!(
        "table inet {TABLE} {{}}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & {mark:#010x} == {mark:#010x} meta mark set meta mark ^ {mark:#010x} masquerade fully-random\n\
         \t}}\n\
         }}\n"
    )
}

fn nft(action: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    let err = |reason: String| NftError::Run { action, reason };
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("nft: {e} (install nftables: scripts/setup.sh)")))?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .map_err(|e| err(format!("writing the ruleset: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("waiting for nft: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// Creates or replaces the table (idempotent).
pub fn ensure(mark: u32) -> Result<(), NftError> {
    if mark == 0 {
        return Err(NftError::Mark(mark));
    }
    nft(
        "create the masquerade table",
        &["-f", "-"],
        Some(&ruleset(mark)),
    )?;
    info!(
        table = TABLE,
        mark = format!("{mark:#x}"),
        "masquerade rule in place"
    );
    Ok(())
}

/// The table as `nft list` shows it, `None` when absent.
pub fn show() -> Result<Option<String>, NftError> {
    match nft(
        "list the masquerade table",
        &["list", "table", "inet", TABLE],
        None,
    ) {
        Ok(s) => Ok(Some(s)),
        Err(NftError::Run { reason, .. }) if reason.contains("No such file") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the table when an older version left one (a missing `nft` means there is none:
/// nothing else would have made it). Returns whether there was one.
pub fn remove_if_present() -> Result<bool, NftError> {
    if show()?.is_none() {
        return Ok(false);
    }
    remove()?;
    Ok(true)
}

/// Removes the table (`--cleanup-config`); absent is fine.
pub fn remove() -> Result<(), NftError> {
    let script = format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n");
    nft("remove the masquerade table", &["-f", "-"], Some(&script))?;
    info!(table = TABLE, "masquerade table removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_masquerades_and_clears_the_mark() {
        let r = ruleset(0x4000);
        assert!(r.starts_with("table inet metalnet-proxy {}\ndelete table inet metalnet-proxy\n"));
        assert!(
            r.contains("type nat hook postrouting priority srcnat;"),
            "{r}"
        );
        assert!(
            r.contains(
                "meta mark & 0x00004000 == 0x00004000 meta mark set meta mark ^ 0x00004000 masquerade fully-random"
            ),
            "{r}"
        );
    }

    #[test]
    fn a_zero_mark_is_refused() {
        assert!(matches!(ensure(0), Err(NftError::Mark(0))));
    }
}
