//! Secrets as far as metalnet reads them: the BGP password key, which must decode from
//! base64 and fit the kernel's TCP MD5 key.

use base64::Engine;

use super::Problem;
use crate::bgp::peer::TCP_MD5_MAX_KEY_LEN;
use crate::state::ObjectRef;

/// The Secret key a BGPPeer's `passwordSecret` names (MetalLB reads only this one).
pub const PASSWORD_KEY: &str = "password";

/// Keys of a raw Secret's `data` whose value is not valid base64, in key order.
pub fn invalid_base64_keys(secret: &serde_json::Value) -> Vec<String> {
    let Some(data) = secret.get("data").and_then(|d| d.as_object()) else {
        return Vec::new();
    };
    let mut keys: Vec<String> = data
        .iter()
        .filter(|(_, v)| {
            v.as_str()
                .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_err())
        })
        .map(|(k, _)| k.clone())
        .collect();
    keys.sort();
    keys
}

/// Whether a decode error of a Secret (as the state sources report it) is the base64
/// decoder's: its messages are "Invalid symbol …", "Invalid input length …", "Invalid last
/// symbol …" and "Invalid padding".
pub fn is_base64_error(reason: &str) -> bool {
    [
        "Invalid symbol",
        "Invalid input length",
        "Invalid last symbol",
        "Invalid padding",
    ]
    .iter()
    .any(|p| reason.contains(p))
}

/// The reason a TCP MD5 password of `len` bytes cannot be used, if it cannot.
pub fn md5_key_too_long(len: usize) -> Option<String> {
    (len > TCP_MD5_MAX_KEY_LEN).then(|| {
        format!("{len} bytes, above the {TCP_MD5_MAX_KEY_LEN} Linux accepts for a TCP MD5 key")
    })
}

/// The problems of a raw Secret that decoding would report as a bare base64 error.
pub(super) fn check_secret(object: &ObjectRef, secret: &serde_json::Value) -> Vec<Problem> {
    invalid_base64_keys(secret)
        .into_iter()
        .map(|k| Problem::error(object, format!("data.{k}"), "not valid base64"))
        .collect()
}

/// What is wrong with the password a BGPPeer reads from this raw Secret, if anything.
pub(super) fn password_problem(secret: &serde_json::Value) -> Option<String> {
    if invalid_base64_keys(secret)
        .iter()
        .any(|k| k == PASSWORD_KEY)
    {
        return Some(format!("key {PASSWORD_KEY}: not valid base64"));
    }
    let len = match secret.get("data").and_then(|d| d.get(PASSWORD_KEY)) {
        Some(v) => base64::engine::general_purpose::STANDARD
            .decode(v.as_str()?)
            .ok()?
            .len(),
        None => secret
            .get("stringData")
            .and_then(|d| d.get(PASSWORD_KEY))
            .and_then(|v| v.as_str())?
            .len(),
    };
    md5_key_too_long(len).map(|r| format!("key {PASSWORD_KEY}: {r}"))
}
