//! Logging and the metrics/health HTTP endpoint every daemon serves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::cli::LogFormat;
use super::health::Health;

/// Installs the global `tracing` subscriber; a bad filter falls back to `info` with a warning.
pub fn init_logging(format: LogFormat, filter: &str) {
    use tracing_subscriber::EnvFilter;
    let (env_filter, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    use std::io::IsTerminal;
    // Colour only on a terminal: log files, `kubectl logs` and the lab's captures stay plain
    // text that grep and log shippers read.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(std::io::stderr().is_terminal())
        // With stderr closed (`2>&1 | head -1`) tracing would report the failed write with
        // eprintln!, which panics; the daemon must go on without its logs instead.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Some(e) = bad {
        tracing::warn!(filter, error = %e, "invalid --log-level, using info");
    }
}

/// Answers `GET /debug/...` requests of a daemon's own tools (e.g. `explain`): the path
/// (query included) in, `Ok(text)` (200) or `Err(text)` (404) out; `None` for paths it does
/// not know.
pub type DebugHandler = Arc<dyn Fn(&str) -> Option<Result<String, String>> + Send + Sync>;

/// Binds the metrics endpoint and serves `/metrics` (Prometheus text format), `/healthz`
/// and `/readyz` in a background task. Binding errors are returned so the daemon can fail
/// loudly at start.
pub async fn serve_metrics(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Health,
) -> std::io::Result<SocketAddr> {
    serve_metrics_with_debug(addr, registry, health, None).await
}

/// [`serve_metrics`], plus `/debug/...` answered by `debug`.
pub async fn serve_metrics_with_debug(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Health,
    debug: Option<DebugHandler>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let registry = registry.clone();
                    let health = health.clone();
                    let debug = debug.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(10),
                            answer(stream, &registry, &health, debug.as_ref()),
                        )
                        .await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(local)
}

/// Answers one HTTP/1.x request; the endpoint is tiny, so it reads only the request line.
async fn answer(
    mut stream: TcpStream,
    registry: &Registry,
    health: &Health,
    debug: Option<&DebugHandler>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let full_path = path;
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n",
        )
        .await;
    }
    match path {
        "/metrics" => {
            let mut body = String::new();
            if prometheus_client::encoding::text::encode(&mut body, registry).is_err() {
                return respond(
                    &mut stream,
                    "500 Internal Server Error",
                    "text/plain",
                    "encoding failed\n",
                )
                .await;
            }
            respond(
                &mut stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &body,
            )
            .await
        }
        "/healthz" | "/livez" => respond(&mut stream, "200 OK", "text/plain", "ok\n").await,
        "/readyz" if health.is_ready() => {
            respond(&mut stream, "200 OK", "text/plain", "ready\n").await
        }
        "/readyz" => {
            let waiting = health.not_ready();
            let body = if waiting.is_empty() {
                "not ready\n".to_string()
            } else {
                format!("not ready: {}\n", waiting.join(", "))
            };
            respond(&mut stream, "503 Service Unavailable", "text/plain", &body).await
        }
        p if p.starts_with("/debug/") && debug.is_some() => {
            match debug.and_then(|d| d(full_path)) {
                Some(Ok(body)) => respond(&mut stream, "200 OK", "text/plain", &body).await,
                Some(Err(body)) => respond(&mut stream, "404 Not Found", "text/plain", &body).await,
                None => respond(&mut stream, "404 Not Found", "text/plain", "unknown path\n").await,
            }
        }
        _ => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                "try /metrics, /healthz or /readyz\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let mut registry = Registry::default();
        let c: Counter = Counter::default();
        c.inc();
        registry.register("metalnet_test_things", "Things counted", c);
        let health = Health::default();
        let addr = serve_metrics(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(registry),
            health.clone(),
        )
        .await
        .unwrap();
        let m = get(addr, "/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("metalnet_test_things_total 1"), "{m}");
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        health.set_ready(true);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    }

    #[tokio::test]
    async fn serves_debug_paths_through_the_handler() {
        let debug: DebugHandler = Arc::new(|path: &str| match path {
            "/debug/echo?x=1" => Some(Ok("echo x=1\n".to_string())),
            "/debug/missing" => Some(Err("no such thing\n".to_string())),
            _ => None,
        });
        let addr = serve_metrics_with_debug(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Registry::default()),
            Health::default(),
            Some(debug),
        )
        .await
        .unwrap();
        let r = get(addr, "/debug/echo?x=1").await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("echo x=1\n"),
            "{r}"
        );
        assert!(get(addr, "/debug/missing").await.contains("no such thing"));
        assert!(get(addr, "/debug/other").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 200"));
    }
}
