//! The shim's side of thick mode: forwards one CNI call to the daemon's socket, as Multus's
//! shim does.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use super::api;
use crate::cni::{CniError, Request};

/// How long the shim waits for the daemon.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long ADD, CHECK, GC and STATUS wait for `/readyz` to answer 200 (Multus: 60 s).
    pub ready_timeout: Duration,
    /// How often `/readyz` is asked meanwhile (Multus: 100 ms).
    pub poll_interval: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            ready_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(100),
        }
    }
}

/// Forwards `req` to the daemon on `socket` with Multus's timings ([`ClientOptions`]).
pub async fn forward(socket: &Path, req: Request) -> Result<Option<serde_json::Value>, CniError> {
    forward_with(socket, req, &ClientOptions::default()).await
}

/// Forwards `req` to the daemon on `socket`: the daemon's result, `None` when the command
/// prints nothing, or the CNI error it answered. The daemon runs the plugin on this very
/// configuration, whose `cniVersion` its own configuration never replaces, so the result
/// already is in the version the runtime expects.
pub async fn forward_with(
    socket: &Path,
    req: Request,
    opts: &ClientOptions,
) -> Result<Option<serde_json::Value>, CniError> {
    let command = req.env.get("CNI_COMMAND").cloned().unwrap_or_default();
    if command == "DEL" {
        // A DEL that cannot reach the daemon succeeds, as with Multus: the daemon is gone
        // because the node is shutting down or the daemon is being replaced, and failing the
        // DEL would keep the runtime from ever removing the sandbox. Nothing leaks for good:
        // the delegate cache is on disk in cniDir, and the runtime's next GC (whose
        // valid-attachments no longer lists this container) releases what the delegates
        // hold, once a daemon is back.
        if let Err(e) = get(socket, "/healthz").await.and_then(expect_ok) {
            tracing::warn!(socket = %socket.display(), error = %e, "multus daemon unreachable: DEL skipped");
            return Ok(None);
        }
    } else if command != "VERSION" {
        wait_ready(socket, opts).await?;
    }
    let body = api::encode_request(&req);
    let (status, body) = match roundtrip(socket, http::Method::POST, "/cni", body).await {
        Ok(r) => r,
        Err(e) if command == "DEL" => {
            tracing::warn!(socket = %socket.display(), error = %e, "multus daemon went away during DEL: DEL skipped");
            return Ok(None);
        }
        Err(e) => {
            return Err(CniError::new(
                CniError::TRY_AGAIN_LATER,
                format!("multus daemon at {}: {e}", socket.display()),
            ));
        }
    };
    decode_answer(status, &body)
}

/// Reads the daemon's answer to `POST /cni`.
fn decode_answer(status: StatusCode, body: &[u8]) -> Result<Option<serde_json::Value>, CniError> {
    match status {
        StatusCode::OK if body.iter().all(|b| b.is_ascii_whitespace()) => Ok(None),
        StatusCode::OK => match serde_json::from_slice::<api::CniResponseBody>(body) {
            Ok(r) if r.result.is_null() => Ok(None),
            Ok(r) => Ok(Some(r.result)),
            Err(e) => Err(CniError::new(
                CniError::DECODE,
                format!(
                    "multus daemon answered 200 with a body that is not {{\"Result\": ...}}: {e}"
                ),
            )),
        },
        _ => Err(api::decode_error(body).unwrap_or_else(|| {
            CniError::new(
                999,
                format!(
                    "multus daemon answered {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(512)]).trim()
                ),
            )
        })),
    }
}

/// Polls `/readyz` until it answers 200, or fails with error 11 naming what the daemon
/// last said it waits for.
async fn wait_ready(socket: &Path, opts: &ClientOptions) -> Result<(), CniError> {
    let start = Instant::now();
    loop {
        let last = match get(socket, "/readyz").await {
            Ok((StatusCode::OK, _)) => return Ok(()),
            Ok((status, body)) => format!("{status}: {}", String::from_utf8_lossy(&body).trim()),
            Err(e) => e,
        };
        if start.elapsed() >= opts.ready_timeout {
            return Err(CniError::new(
                CniError::TRY_AGAIN_LATER,
                format!(
                    "multus daemon at {} not ready after {:?}: {last}",
                    socket.display(),
                    opts.ready_timeout
                ),
            ));
        }
        tokio::time::sleep(opts.poll_interval).await;
    }
}

fn expect_ok(r: (StatusCode, Bytes)) -> Result<(), String> {
    if r.0 == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("answered {}", r.0))
    }
}

async fn get(socket: &Path, path: &str) -> Result<(StatusCode, Bytes), String> {
    roundtrip(socket, http::Method::GET, path, Vec::new()).await
}

/// One HTTP/1.1 request on a fresh connection to the socket.
async fn roundtrip(
    socket: &Path,
    method: http::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "multus")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("building the request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), api::MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("{path}: reading the answer: {e}"))?
        .to_bytes();
    drop(sender);
    conn.abort();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_decoded() {
        assert_eq!(decode_answer(StatusCode::OK, b""), Ok(None));
        assert_eq!(
            decode_answer(StatusCode::OK, br#"{"Result":{"cniVersion":"1.0.0"}}"#),
            Ok(Some(serde_json::json!({"cniVersion":"1.0.0"})))
        );
        assert_eq!(
            decode_answer(StatusCode::OK, br#"{"Result":null}"#),
            Ok(None)
        );
        assert_eq!(
            decode_answer(StatusCode::OK, b"[]").unwrap_err().code,
            CniError::DECODE
        );
        let e = decode_answer(
            StatusCode::BAD_REQUEST,
            br#"{"cniVersion":"1.0.0","code":7,"msg":"bad","details":"d"}"#,
        )
        .unwrap_err();
        assert_eq!(e, CniError::new(7, "bad").with_details("d"));
        let e = decode_answer(StatusCode::BAD_GATEWAY, b"oops").unwrap_err();
        assert!(e.msg.contains("502") && e.msg.contains("oops"), "{}", e.msg);
    }

    #[tokio::test]
    async fn del_succeeds_when_the_daemon_is_unreachable_and_add_fails_with_11() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("multus.sock");
        let mut req = Request::default();
        req.env.insert("CNI_COMMAND".into(), "DEL".into());
        assert_eq!(forward(&sock, req.clone()).await, Ok(None));
        req.env.insert("CNI_COMMAND".into(), "ADD".into());
        let opts = ClientOptions {
            ready_timeout: Duration::from_millis(250),
            poll_interval: Duration::from_millis(50),
        };
        let start = Instant::now();
        let e = forward_with(&sock, req, &opts).await.unwrap_err();
        assert_eq!(e.code, CniError::TRY_AGAIN_LATER);
        assert!(e.msg.contains("not ready after"), "{}", e.msg);
        assert!(start.elapsed() >= Duration::from_millis(250));
    }
}
