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
///
/// The request is posted at once: a daemon that is up and ready (nearly always) costs one
/// round trip. Only when the daemon cannot be reached, or answers that it is not ready,
/// does the shim poll `/readyz` (as Multus's shim does before every call) and post again,
/// within [`ClientOptions::ready_timeout`] in all.
pub async fn forward_with(
    socket: &Path,
    req: Request,
    opts: &ClientOptions,
) -> Result<Option<serde_json::Value>, CniError> {
    let start = Instant::now();
    let command = req.env.get("CNI_COMMAND").cloned().unwrap_or_default();
    let body = Bytes::from(api::encode_request(&req));
    let first = roundtrip(socket, http::Method::POST, "/cni", body.clone()).await;
    if command == "DEL" {
        // A DEL that cannot reach the daemon succeeds, as with Multus: the daemon is gone
        // because the node is shutting down or the daemon is being replaced, and failing the
        // DEL would keep the runtime from ever removing the sandbox. Nothing leaks for good:
        // the delegate cache is on disk in cniDir, and the runtime's next GC (whose
        // valid-attachments no longer lists this container) releases what the delegates
        // hold, once a daemon is back.
        return match first {
            Ok((status, body)) => decode_answer(status, &body),
            Err(e) => {
                tracing::warn!(socket = %socket.display(), error = %e.msg, "multus daemon unreachable or gone during DEL: DEL skipped");
                Ok(None)
            }
        };
    }
    let retry = match &first {
        // Not connected: the request never reached the daemon, so posting it again once
        // the daemon is up runs it exactly once.
        Err(e) => e.not_sent && command != "VERSION",
        Ok((status, body)) => {
            command != "VERSION" && is_not_ready(decode_answer(*status, body).err().as_ref())
        }
    };
    let (status, body) = if retry {
        wait_ready(socket, opts, start).await?;
        roundtrip(socket, http::Method::POST, "/cni", body).await
    } else {
        first
    }
    .map_err(|e| {
        CniError::new(
            CniError::TRY_AGAIN_LATER,
            format!("multus daemon at {}: {}", socket.display(), e.msg),
        )
    })?;
    decode_answer(status, &body)
}

/// Whether the daemon refused the call only because it is not ready yet (its gate's
/// answer), which is worth waiting for rather than returning to the runtime at once.
fn is_not_ready(e: Option<&CniError>) -> bool {
    e.is_some_and(|e| {
        matches!(
            e.code,
            CniError::TRY_AGAIN_LATER | CniError::PLUGIN_NOT_AVAILABLE
        ) && e.msg.starts_with(super::server::NOT_READY_PREFIX)
    })
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
async fn wait_ready(socket: &Path, opts: &ClientOptions, start: Instant) -> Result<(), CniError> {
    loop {
        let last = match roundtrip(socket, http::Method::GET, "/readyz", Bytes::new()).await {
            Ok((StatusCode::OK, _)) => return Ok(()),
            Ok((status, body)) => format!("{status}: {}", String::from_utf8_lossy(&body).trim()),
            Err(e) => e.msg,
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

/// Why a round trip failed.
#[derive(Debug)]
struct RoundtripError {
    msg: String,
    /// The request never reached the daemon (connecting failed).
    not_sent: bool,
}

fn failed(msg: String) -> RoundtripError {
    RoundtripError {
        msg,
        not_sent: false,
    }
}

/// One HTTP/1.1 request on a fresh connection to the socket.
async fn roundtrip(
    socket: &Path,
    method: http::Method,
    path: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes), RoundtripError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| RoundtripError {
            msg: format!("connecting to {}: {e}", socket.display()),
            not_sent: true,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(format!("HTTP handshake: {e}")))?;
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "multus")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| failed(format!("building the request: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| failed(format!("{path}: {e}")))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), api::MAX_BODY)
        .collect()
        .await
        .map_err(|e| failed(format!("{path}: reading the answer: {e}")))?
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

    /// A fake daemon: answers each request on `socket` with what `answer` says for its
    /// request line, and records the request lines in order.
    fn fake_daemon(
        socket: &Path,
        answer: impl Fn(&str, usize) -> (u16, String) + Send + 'static,
    ) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then as much body as Content-Length says.
                let (head_end, len) = loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break (buf.len(), 0);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (i + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let line = String::from_utf8_lossy(&buf)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let n = {
                    let mut l = log.lock().unwrap();
                    l.push(line.clone());
                    l.len()
                };
                let (status, body) = answer(&line, n);
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        seen
    }

    fn add_request() -> Request {
        let mut req = Request::default();
        req.env.insert("CNI_COMMAND".into(), "ADD".into());
        req
    }

    const RESULT: &str = r#"{"Result":{"cniVersion":"1.0.0"}}"#;

    #[tokio::test]
    async fn a_ready_daemon_gets_one_post_and_no_readyz() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("multus.sock");
        let seen = fake_daemon(&sock, |_, _| (200, RESULT.into()));
        let r = forward(&sock, add_request()).await;
        assert_eq!(r, Ok(Some(serde_json::json!({"cniVersion":"1.0.0"}))));
        assert_eq!(*seen.lock().unwrap(), ["POST /cni HTTP/1.1"]);
    }

    #[tokio::test]
    async fn a_daemon_not_ready_yet_is_waited_for_then_posted_again() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("multus.sock");
        let not_ready = CniError::new(
            CniError::TRY_AGAIN_LATER,
            format!(
                "{} for ADD: not synced; try again later",
                super::super::server::NOT_READY_PREFIX
            ),
        )
        .to_json("1.0.0")
        .to_string();
        // The first POST is refused, /readyz says 500 once then 200, the second POST runs.
        let seen = fake_daemon(&sock, move |line, n| match (line, n) {
            (_, 1) => (400, not_ready.clone()),
            (l, 2) if l.starts_with("GET /readyz") => (500, "not ready: not synced".into()),
            (l, _) if l.starts_with("GET /readyz") => (200, "ready".into()),
            _ => (200, RESULT.into()),
        });
        let opts = ClientOptions {
            ready_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(10),
        };
        let r = forward_with(&sock, add_request(), &opts).await;
        assert_eq!(r, Ok(Some(serde_json::json!({"cniVersion":"1.0.0"}))));
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "POST /cni HTTP/1.1",
                "GET /readyz HTTP/1.1",
                "GET /readyz HTTP/1.1",
                "POST /cni HTTP/1.1"
            ]
        );
    }

    #[tokio::test]
    async fn other_errors_including_busy_are_returned_at_once() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("multus.sock");
        let busy = CniError::new(CniError::TRY_AGAIN_LATER, "multus daemon busy: 8 queued")
            .to_json("1.0.0")
            .to_string();
        let seen = fake_daemon(&sock, move |_, _| (400, busy.clone()));
        let e = forward(&sock, add_request()).await.unwrap_err();
        assert_eq!(e.code, CniError::TRY_AGAIN_LATER);
        assert!(e.msg.contains("busy"), "{}", e.msg);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_daemon_that_starts_listening_later_gets_the_call() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("multus.sock");
        let s = sock.clone();
        let started = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            fake_daemon(&s, |line, _| {
                if line.starts_with("GET /readyz") {
                    (200, "ready".into())
                } else {
                    (200, RESULT.into())
                }
            })
        });
        let opts = ClientOptions {
            ready_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(20),
        };
        let r = forward_with(&sock, add_request(), &opts).await;
        assert_eq!(r, Ok(Some(serde_json::json!({"cniVersion":"1.0.0"}))));
        let seen = started.await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            ["GET /readyz HTTP/1.1", "POST /cni HTTP/1.1"]
        );
    }
}
