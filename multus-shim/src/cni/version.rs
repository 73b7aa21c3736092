//! CNI specification versions: which ones exist, which this plugin speaks, and how they
//! group by result layout.

use super::CniError;

/// Every version this plugin accepts and can print results in, oldest first.
pub const SUPPORTED: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The newest version: what VERSION answers with and what the daemon speaks.
pub const LATEST: &str = "1.1.0";

/// How a version lays out its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layout {
    /// 0.1.0 and 0.2.0: `ip4` / `ip6`.
    V02,
    /// 0.3.0, 0.3.1, 0.4.0: `interfaces`, `ips` with `version`.
    V04,
    /// 1.0.0 and 1.1.0: `ips` without `version`, interface `mtu`, `socketPath`, `pciID`.
    V1,
}

/// A parsed `major.minor.patch`.
pub fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.');
    let a = it.next()?.parse().ok()?;
    let b = it.next()?.parse().ok()?;
    let c = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((a, b, c))
}

/// Whether `a` is at least `b` (both must parse; an unparsable version is never at least).
pub fn at_least(a: &str, b: &str) -> bool {
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => a >= b,
        _ => false,
    }
}

/// Checks `v` is one of [`SUPPORTED`] (error 1 naming it otherwise) and returns its layout.
pub fn layout(v: &str) -> Result<Layout, CniError> {
    match v {
        "0.1.0" | "0.2.0" => Ok(Layout::V02),
        "0.3.0" | "0.3.1" | "0.4.0" => Ok(Layout::V04),
        "1.0.0" | "1.1.0" => Ok(Layout::V1),
        // An empty version is 0.1.0 for libcni; we accept it the same way.
        "" => Ok(Layout::V02),
        other => Err(CniError::new(
            CniError::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {other:?} is not supported (supported: {})",
                SUPPORTED.join(", ")
            ),
        )),
    }
}

/// The answer to VERSION.
pub fn version_answer(cni_version: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": if cni_version.is_empty() { LATEST } else { cni_version },
        "supportedVersions": SUPPORTED,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_and_errors() {
        assert_eq!(layout("0.2.0").unwrap(), Layout::V02);
        assert_eq!(layout("0.3.1").unwrap(), Layout::V04);
        assert_eq!(layout("1.1.0").unwrap(), Layout::V1);
        let e = layout("2.0.0").unwrap_err();
        assert_eq!(e.code, 1);
        assert!(e.msg.contains("\"2.0.0\""), "{}", e.msg);
        assert!(at_least("1.1.0", "1.0.0"));
        assert!(!at_least("0.4.0", "1.1.0"));
        assert!(!at_least("x", "0.1.0"));
    }
}
