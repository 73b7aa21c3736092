//! `default-route`: when a delegate asks for the pod's default route, the default routes
//! the other delegates installed are removed in the pod's namespace and the requested
//! gateway is set. Done with `ip`, in the namespace named by `CNI_NETNS`.

use std::net::IpAddr;

use serde_json::Value;

use crate::cni::CniError;

/// The `ip` command line prefix that acts inside the namespace at `netns`: `ip -n NAME` for
/// a namespace of `ip netns` (`/run/netns/NAME`), else `nsenter --net=PATH ip`.
pub fn ip_prefix(netns: &str) -> Vec<String> {
    for dir in ["/run/netns/", "/var/run/netns/"] {
        if let Some(name) = netns.strip_prefix(dir)
            && !name.is_empty()
            && !name.contains('/')
        {
            return vec!["ip".into(), "-n".into(), name.into()];
        }
    }
    vec!["nsenter".into(), format!("--net={netns}"), "ip".into()]
}

async fn ip(netns: &str, args: &[&str]) -> Result<String, CniError> {
    let prefix = ip_prefix(netns);
    let out = tokio::process::Command::new(&prefix[0])
        .args(&prefix[1..])
        .args(args)
        .output()
        .await
        .map_err(|e| {
            CniError::new(
                CniError::IO,
                format!("default-route: cannot run {}: {e}", prefix[0]),
            )
        })?;
    if !out.status.success() {
        return Err(CniError::new(
            CniError::IO,
            format!(
                "default-route: `{} {}` in {netns} failed: {}",
                prefix.join(" "),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the default routes through any of `devs` and sets one through `gateway` on
/// `dev` per requested gateway.
pub async fn apply(
    netns: &str,
    others: &[String],
    dev: &str,
    gateways: &[IpAddr],
) -> Result<(), CniError> {
    for family in ["-4", "-6"] {
        let listed = ip(netns, &[family, "-j", "route", "show", "default"]).await?;
        let routes: Vec<Value> = serde_json::from_str(listed.trim()).unwrap_or_default();
        for r in routes {
            let Some(rdev) = r.get("dev").and_then(Value::as_str) else {
                continue;
            };
            if !others.iter().any(|o| o == rdev) {
                continue;
            }
            let mut args = vec![family, "route", "del", "default", "dev", rdev];
            let gw = r.get("gateway").and_then(Value::as_str).map(String::from);
            if let Some(gw) = gw.as_deref() {
                args.extend(["via", gw]);
            }
            ip(netns, &args).await?;
        }
    }
    for gw in gateways {
        let family = if gw.is_ipv4() { "-4" } else { "-6" };
        let gw = gw.to_string();
        ip(
            netns,
            &[
                family, "route", "replace", "default", "via", &gw, "dev", dev,
            ],
        )
        .await?;
    }
    Ok(())
}

/// The same change on a result (1.x layout): default routes dropped unless `keep`, which
/// gets one per gateway.
pub fn apply_to_result(result: &mut crate::cni::CniResult, keep: Option<&[IpAddr]>) {
    result.routes.retain(|r| r.dst.prefix_len() != 0);
    if let Some(gws) = keep {
        for gw in gws {
            let dst = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
            result.routes.push(crate::cni::result::Route {
                dst: dst.parse().expect("a valid literal"),
                gw: Some(*gw),
                mtu: None,
                adv_mss: None,
                priority: None,
                table: None,
                scope: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_by_path() {
        assert_eq!(ip_prefix("/run/netns/p1"), vec!["ip", "-n", "p1"]);
        assert_eq!(ip_prefix("/var/run/netns/p1"), vec!["ip", "-n", "p1"]);
        assert_eq!(
            ip_prefix("/proc/7/ns/net"),
            vec!["nsenter", "--net=/proc/7/ns/net", "ip"]
        );
    }
}
