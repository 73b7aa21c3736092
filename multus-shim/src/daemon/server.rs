//! The socket's HTTP API (`POST /cni`, `GET /healthz`, `GET /readyz`) and what each CNI
//! request goes through before [`crate::plugin::handle`]: fail closed, server-conf
//! overrides, back-pressure.

use std::convert::Infallible;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metalnet::daemon::Shutdown;
use tokio::net::UnixListener;

use super::api;
use super::limit::Limiter;
use super::metrics::Metrics;
use crate::cni::{CniError, Request};
use crate::plugin::{self, Context};

/// The cluster state once it has synced, and the context requests run against.
pub(crate) struct Synced {
    pub ctx: Arc<Context>,
    pub attached: tokio::sync::watch::Receiver<bool>,
}

/// How long a connection may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What every request of the daemon shares.
pub(crate) struct Shared {
    /// The context before the state has synced: no cluster, so only DEL (from the delegate
    /// cache) and VERSION are served with it.
    pub unsynced: Arc<Context>,
    pub synced: OnceLock<Synced>,
    pub readiness_file: Option<PathBuf>,
    pub shutting_down: AtomicBool,
    pub limiter: Limiter,
    pub metrics: Metrics,
    /// Keys of the daemon's own configuration that replace the shim's (see
    /// [`apply_overrides`]).
    pub overrides: serde_json::Map<String, serde_json::Value>,
    /// Events queued by answered requests and not recorded yet.
    pub events_pending: Arc<std::sync::atomic::AtomicUsize>,
}

impl Shared {
    /// What keeps the daemon from serving ADD, each as a phrase; empty when ready.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.shutting_down.load(Ordering::SeqCst) {
            why.push("the daemon is shutting down".to_string());
        }
        match self.synced.get() {
            None => why.push(
                "the cluster state (Pods, NetworkAttachmentDefinitions) has not synced yet"
                    .to_string(),
            ),
            Some(s) if !*s.attached.borrow() => {
                why.push("the state directory is not watched (missing or replaced)".to_string())
            }
            Some(_) => {}
        }
        if let Some(f) = &self.readiness_file
            && !f.exists()
        {
            why.push(format!(
                "the readiness indicator file {} does not exist",
                f.display()
            ));
        }
        why
    }

    fn context(&self) -> Arc<Context> {
        match self.synced.get() {
            Some(s) => s.ctx.clone(),
            None => self.unsynced.clone(),
        }
    }

    fn update_load(&self) {
        self.metrics
            .set_load(self.limiter.running(), self.limiter.queued());
    }
}

/// How the gate's refusals begin, so the shim knows to wait for `/readyz` and post again.
pub const NOT_READY_PREFIX: &str = "multus daemon is not ready";

/// The refusal a command gets while the daemon is not ready (`not_ready` non-empty): ADD,
/// CHECK and GC get error 11 so the runtime retries rather than start a pod without the
/// networks it asked for (or collect attachments against an empty cache); STATUS reports
/// the plugin unavailable (50). DEL and VERSION are always served: tearing down never needs
/// the cluster, and refusing it would keep sandboxes from being removed.
pub fn gate(command: &str, not_ready: &[String]) -> Option<CniError> {
    if not_ready.is_empty() {
        return None;
    }
    let why = not_ready.join("; ");
    match command {
        "ADD" | "CHECK" | "GC" => Some(CniError::new(
            CniError::TRY_AGAIN_LATER,
            format!("{NOT_READY_PREFIX} for {command}: {why}; try again later"),
        )),
        "STATUS" => Some(CniError::new(
            CniError::PLUGIN_NOT_AVAILABLE,
            format!("{NOT_READY_PREFIX}: {why}"),
        )),
        _ => None,
    }
}

/// Keys of the daemon's configuration file that only the daemon reads and never replace the
/// shim's. `cniVersion` is among them so the result comes back in the version of the
/// shim's own configuration, which is what the runtime expects to read.
pub const DAEMON_ONLY_KEYS: &[&str] = &[
    "cniVersion",
    "socketDir",
    "chrootDir",
    "metricsPort",
    "connectionLimit",
    "multusConfigFile",
    "multusAutoconfigDir",
    "multusMasterCNI",
    "cniConfigDir",
    "forceCNIVersion",
    "skipMultusBinaryCopy",
    "perNodeCertificate",
    "cleanupConfigOnExit",
];

/// The shim's configuration with the daemon's keys replacing its own, as Multus's daemon
/// overrides the CNI configuration with its server configuration. A configuration that is
/// not a JSON object is passed on unchanged: the plugin reports it with the right error.
pub fn apply_overrides(
    stdin: &[u8],
    overrides: &serde_json::Map<String, serde_json::Value>,
) -> Vec<u8> {
    if overrides.is_empty() {
        return stdin.to_vec();
    }
    match serde_json::from_slice::<serde_json::Value>(stdin) {
        Ok(serde_json::Value::Object(mut conf)) => {
            for (k, v) in overrides {
                conf.insert(k.clone(), v.clone());
            }
            serde_json::Value::Object(conf).to_string().into_bytes()
        }
        _ => stdin.to_vec(),
    }
}

/// Runs one CNI request through the gate, the limiter and the plugin.
async fn run_cni(
    shared: &Arc<Shared>,
    command: &str,
    req: Request,
) -> Result<Option<serde_json::Value>, CniError> {
    if let Some(e) = gate(command, &shared.not_ready()) {
        shared.metrics.rejected("not_ready");
        return Err(e);
    }
    let req = Request {
        stdin: apply_overrides(&req.stdin, &shared.overrides),
        env: req.env,
    };
    let ctx = shared.context();
    if command == "VERSION" {
        return plugin::handle(&ctx, req).await;
    }
    let permit = shared.limiter.acquire().await.map_err(|busy| {
        shared.metrics.rejected("busy");
        CniError::new(CniError::TRY_AGAIN_LATER, busy.to_string())
    })?;
    shared.update_load();
    let s = shared.clone();
    // On its own task: when the client goes away (the runtime's timeout killed the shim),
    // hyper drops this request's future, and an ADD cancelled between two delegates would
    // leave interfaces and addresses with nobody to remove them. The task finishes the
    // request (and its rollback) whatever happens to the connection.
    let task = tokio::spawn(async move {
        let r = plugin::handle(&ctx, req).await;
        drop(permit);
        s.update_load();
        r
    });
    task.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, command, "CNI request task failed");
        Err(CniError::new(
            999,
            format!("multus daemon: the {command} request failed: {e}"),
        ))
    })
}

/// Answers `POST /cni`.
async fn cni(shared: &Arc<Shared>, body: &[u8]) -> (StatusCode, Vec<u8>) {
    let start = Instant::now();
    let req = match api::decode_request(body) {
        Ok(r) => r,
        Err(e) => {
            shared
                .metrics
                .observe("", &e.code.to_string(), start.elapsed().as_secs_f64());
            return (
                StatusCode::BAD_REQUEST,
                e.to_json("1.0.0").to_string().into_bytes(),
            );
        }
    };
    let command = req.env.get("CNI_COMMAND").cloned().unwrap_or_default();
    let version = api::cni_version_of(&req.stdin);
    let container = req.env.get("CNI_CONTAINERID").cloned().unwrap_or_default();
    let outcome = run_cni(shared, &command, req).await;
    let seconds = start.elapsed().as_secs_f64();
    match outcome {
        Ok(result) => {
            shared.metrics.observe(&command, "ok", seconds);
            tracing::debug!(command, container, seconds, "CNI request served");
            match result {
                Some(result) => {
                    let body =
                        serde_json::to_vec(&api::CniResponseBody { result }).unwrap_or_default();
                    (StatusCode::OK, body)
                }
                None => (StatusCode::OK, Vec::new()),
            }
        }
        Err(e) => {
            shared
                .metrics
                .observe(&command, &e.code.to_string(), seconds);
            tracing::info!(command, container, code = e.code, error = %e.msg, "CNI request failed");
            (
                StatusCode::BAD_REQUEST,
                e.to_json(&version).to_string().into_bytes(),
            )
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

async fn route(
    shared: Arc<Shared>,
    req: http::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    Ok(match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (Method::GET, "/readyz") => {
            let why = shared.not_ready();
            if why.is_empty() {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                // 500 as Multus's daemon answers after SIGTERM; its shim only looks for 200.
                reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("not ready: {}\n", why.join("; ")),
                )
            }
        }
        (Method::POST, "/cni") => {
            match Limited::new(req.into_body(), api::MAX_BODY).collect().await {
                Ok(body) => {
                    let (status, body) = cni(&shared, &body.to_bytes()).await;
                    reply(status, "application/json", body)
                }
                Err(e) => {
                    let err = CniError::new(
                        CniError::DECODE,
                        format!(
                            "multus daemon: reading the request body (at most {} bytes): {e}",
                            api::MAX_BODY
                        ),
                    );
                    reply(
                        StatusCode::BAD_REQUEST,
                        "application/json",
                        err.to_json("1.0.0").to_string(),
                    )
                }
            }
        }
        (_, "/healthz" | "/readyz" | "/cni") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /healthz, GET /readyz, POST /cni\n",
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try POST /cni, GET /healthz or GET /readyz\n",
        ),
    })
}

/// Serves connections until `stop` completes.
pub(crate) async fn serve(
    listener: UnixListener,
    shared: Arc<Shared>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors, mostly: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting on the CNI socket failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| route(shared.clone(), req));
            // A client that opens a connection and sends nothing (or half a request) is
            // dropped after a while instead of holding a task and a buffer for ever.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "CNI socket connection ended with an error");
            }
        });
    }
}

/// The socket as bound: its path and identity, so that only this daemon's socket is
/// removed at exit (a successor may already have replaced it).
#[derive(Debug)]
pub(crate) struct BoundSocket {
    pub path: PathBuf,
    ino: u64,
    dev: u64,
}

impl BoundSocket {
    pub fn remove_if_ours(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.ino() == self.ino && m.dev() == self.dev => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "removing the CNI socket");
                }
            }
            _ => {}
        }
    }
}

/// Binds `<dir>/multus.sock` with mode 0600, atomically: the socket is bound in a private
/// (0700) directory, given its mode, then renamed over the path, so no client ever sees a
/// socket with looser permissions, and a stale socket of a previous daemon is replaced in one
/// step rather than removed first (which would leave a moment with no socket at all).
pub(crate) fn bind_socket(dir: &Path) -> std::io::Result<(UnixListener, BoundSocket)> {
    let named = |what: &str, p: &Path, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| named("creating the socket directory", dir, e))?;
    }
    let private = dir.join(format!(".multus.sock.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| named("creating", &private, e))?;
    let result = (|| {
        let tmp = private.join("s");
        let listener =
            std::os::unix::net::UnixListener::bind(&tmp).map_err(|e| named("binding", &tmp, e))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| named("setting the mode of", &tmp, e))?;
        let path = dir.join(api::SOCKET_NAME);
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                tracing::warn!(path = %path.display(), "replacing the socket of a daemon that still answers on it");
            } else {
                tracing::info!(path = %path.display(), "replacing a stale socket");
            }
        }
        std::fs::rename(&tmp, &path).map_err(|e| named("renaming the socket to", &path, e))?;
        let m = std::fs::symlink_metadata(&path).map_err(|e| named("reading", &path, e))?;
        listener.set_nonblocking(true)?;
        Ok((
            UnixListener::from_std(listener)?,
            BoundSocket {
                path,
                ino: m.ino(),
                dev: m.dev(),
            },
        ))
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

/// Keeps the metrics' readiness conditions in step with [`Shared::not_ready`], so the
/// metrics endpoint's `/readyz` agrees with the socket's, and samples the in-flight and
/// queued gauges (which otherwise change only when a request starts or ends running).
pub(crate) async fn mirror_health(
    shared: Arc<Shared>,
    health: metalnet::daemon::Health,
    shutdown: Shutdown,
) {
    let ready = health.condition("multus-daemon");
    loop {
        ready.set(shared.not_ready().is_empty());
        shared.update_load();
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            _ = shutdown.wait() => { ready.set(false); return; }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_refuses_add_until_ready_and_always_serves_del() {
        let why = vec!["the readiness indicator file /x does not exist".to_string()];
        let e = gate("ADD", &why).unwrap();
        assert_eq!(e.code, CniError::TRY_AGAIN_LATER);
        assert!(e.msg.contains("/x does not exist"), "{}", e.msg);
        assert_eq!(gate("CHECK", &why).unwrap().code, 11);
        assert_eq!(gate("GC", &why).unwrap().code, 11);
        assert_eq!(
            gate("STATUS", &why).unwrap().code,
            CniError::PLUGIN_NOT_AVAILABLE
        );
        assert_eq!(gate("DEL", &why), None);
        assert_eq!(gate("VERSION", &why), None);
        assert_eq!(gate("ADD", &[]), None);
    }

    #[test]
    fn overrides_replace_keys_and_leave_bad_json_alone() {
        let mut o = serde_json::Map::new();
        o.insert("namespaceIsolation".into(), true.into());
        let out = apply_overrides(br#"{"cniVersion":"0.3.1","namespaceIsolation":false}"#, &o);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["namespaceIsolation"], true);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(apply_overrides(b"{oops", &o), b"{oops");
        assert_eq!(apply_overrides(b"[1]", &o), b"[1]");
    }
}
