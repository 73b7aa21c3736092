//! The wire format of the thick daemon's socket, as Multus's shim and daemon speak it:
//! `POST /cni` with `{"env": {...}, "config": <stdin as base64>}` (Go encodes a `[]byte` as a
//! base64 string, `null` when nil), answered 200 `{"Result": <result>}` (an empty body when
//! the command prints nothing) or 400 with the CNI error object.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::cni::{CniError, Request};

/// The socket's file name in the socket directory.
pub const SOCKET_NAME: &str = "multus.sock";

/// The largest request body the daemon reads: a CNI configuration with its `prevResult` is
/// a few kilobytes, and the shim takes at most 1 MiB on stdin, which base64 makes 1.4 MiB
/// plus the environment; a bound keeps a burst of bad clients from growing the daemon's
/// memory.
pub const MAX_BODY: usize = 2 << 20;

/// The body of `POST /cni`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniRequestBody {
    /// Every environment variable of the shim (`CNI_COMMAND`, `CNI_CONTAINERID`, ...).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The configuration the runtime gave the shim on stdin, base64 (Go's `[]byte`).
    #[serde(default, with = "go_bytes")]
    pub config: Vec<u8>,
}

/// The body of a 200 answer that carries a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniResponseBody {
    #[serde(rename = "Result")]
    pub result: serde_json::Value,
}

impl From<Request> for CniRequestBody {
    fn from(r: Request) -> Self {
        CniRequestBody {
            env: r.env,
            config: r.stdin,
        }
    }
}

impl From<CniRequestBody> for Request {
    fn from(b: CniRequestBody) -> Self {
        Request {
            env: b.env,
            stdin: b.config,
        }
    }
}

/// Decodes a `POST /cni` body; the error is the CNI error object the daemon answers with.
pub fn decode_request(body: &[u8]) -> Result<Request, CniError> {
    serde_json::from_slice::<CniRequestBody>(body)
        .map(Request::from)
        .map_err(|e| {
            CniError::new(
                CniError::DECODE,
                format!("multus daemon: request body: {e} (expected {{\"env\": {{...}}, \"config\": <base64>}})"),
            )
        })
}

/// The `cniVersion` of a configuration, for error objects; `1.0.0` when it has none (what
/// Multus's daemon answers in).
pub fn cni_version_of(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "1.0.0".to_string())
}

/// Reads a CNI error object (`{code, msg, details}`) as a plugin or the daemon prints it.
pub fn decode_error(body: &[u8]) -> Option<CniError> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = u32::try_from(v.get("code")?.as_u64()?).ok()?;
    let text = |k: &str| v.get(k).and_then(|m| m.as_str()).unwrap_or("").to_string();
    Some(CniError::new(code, text("msg")).with_details(text("details")))
}

/// Go's `encoding/json` form of `[]byte`: standard base64 with padding, `null` for nil.
mod go_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(Vec::new()),
            Some(s) => base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|e| serde::de::Error::custom(format!("config: not base64: {e}"))),
        }
    }
}

/// Encodes `req` as the shim sends it.
pub fn encode_request(req: &Request) -> Vec<u8> {
    let body = serde_json::json!({
        "env": req.env,
        "config": base64::engine::general_purpose::STANDARD.encode(&req.stdin),
    });
    body.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_body_as_multus_shim_sends_it() {
        // Built by hand the way Go marshals api.Request: a map and a base64 []byte.
        let conf = br#"{"cniVersion":"0.3.1","name":"multus-cni-network","type":"multus-shim"}"#;
        let body = format!(
            r#"{{"env":{{"CNI_COMMAND":"ADD","CNI_CONTAINERID":"abc","CNI_NETNS":"/var/run/netns/x","CNI_IFNAME":"eth0","CNI_ARGS":"K8S_POD_NAMESPACE=default;K8S_POD_NAME=p","CNI_PATH":"/opt/cni/bin","PATH":"/usr/bin"}},"config":"{}"}}"#,
            base64::engine::general_purpose::STANDARD.encode(conf)
        );
        let req = decode_request(body.as_bytes()).unwrap();
        assert_eq!(req.env["CNI_COMMAND"], "ADD");
        assert_eq!(req.env["PATH"], "/usr/bin");
        assert_eq!(req.stdin, conf);
        assert_eq!(decode_request(&encode_request(&req)).unwrap(), req);
    }

    #[test]
    fn null_config_is_empty_and_bad_base64_is_a_decode_error() {
        let req = decode_request(br#"{"env":{"CNI_COMMAND":"VERSION"},"config":null}"#).unwrap();
        assert!(req.stdin.is_empty());
        let e = decode_request(br#"{"env":{},"config":"!!!"}"#).unwrap_err();
        assert_eq!(e.code, CniError::DECODE);
        assert!(e.msg.contains("config: not base64"), "{}", e.msg);
        let e = decode_request(b"not json").unwrap_err();
        assert_eq!(e.code, CniError::DECODE);
        assert!(e.msg.contains("request body"), "{}", e.msg);
        let e = decode_request(br#"{"env":{"CNI_COMMAND":7}}"#).unwrap_err();
        assert!(e.msg.contains("env"), "{}", e.msg);
    }

    #[test]
    fn the_largest_configuration_the_shim_takes_fits_in_a_body() {
        let mut req = Request {
            stdin: vec![b'x'; 1 << 20],
            ..Default::default()
        };
        for i in 0..100 {
            req.env.insert(format!("VAR{i}"), "v".repeat(100));
        }
        assert!(encode_request(&req).len() < MAX_BODY);
    }

    #[test]
    fn error_objects_round_trip() {
        let e = CniError::new(11, "busy").with_details("d");
        assert_eq!(
            decode_error(e.to_json("0.4.0").to_string().as_bytes()),
            Some(e)
        );
        assert_eq!(decode_error(b"{}"), None);
        assert_eq!(decode_error(b"<html>"), None);
    }

    #[test]
    fn cni_version_for_errors() {
        assert_eq!(cni_version_of(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(cni_version_of(b"garbage"), "1.0.0");
        assert_eq!(cni_version_of(br#"{"cniVersion":""}"#), "1.0.0");
    }
}
