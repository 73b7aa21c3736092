//! The per-node daemon of thick mode: serves [`crate::plugin::handle`] on a unix socket with
//! Multus's thick API ([`api`]), keeps Pods and NetworkAttachmentDefinitions in a
//! [`metalnet::state::ClusterState`], bounds concurrent delegate executions ([`limit`]),
//! refuses ADD until it is ready (fail closed), and writes `00-multus.conf(list)`
//! ([`autoconf`]). [`client`] is the shim's side.

pub mod api;
pub mod autoconf;
pub mod client;
pub mod limit;
pub mod metrics;
mod server;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metalnet::daemon::{CommonArgs, Health, Shutdown, serve_metrics};
use metalnet::state::Kind;

pub use server::{DAEMON_ONLY_KEYS, HEADER_READ_TIMEOUT, apply_overrides, gate};

/// The metrics endpoint's default port (controller 7472 ... router 7475).
pub const METRICS_PORT: u16 = 7476;

/// What the daemon keeps in its cluster state.
pub const KINDS: [Kind; 2] = [Kind::Pod, Kind::NetworkAttachmentDefinition];

/// `multus-shim daemon`: the per-node daemon of thick mode.
#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Directory of the CNI socket `multus.sock` the shim posts to (its configuration's
    /// `daemonSocketDir`). Default: the configuration file's `socketDir`, else /run/multus.
    #[arg(long, value_name = "DIR")]
    pub socket_dir: Option<PathBuf>,

    /// The daemon's own configuration (JSON, Multus's daemon-config.json): its keys replace
    /// those of the shim's configuration on every request (except cniVersion and the
    /// daemon's own settings such as socketDir), and its socketDir, cniConfigDir,
    /// multusConfigFile and readinessindicatorfile are used where no flag is given.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// The runtime's CNI configuration directory, where 00-multus.conf(list) is written.
    /// Default: the configuration file's cniConfigDir, else /etc/cni/net.d.
    #[arg(long, value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,

    /// `auto`: generate 00-multus.conf(list) from the first other configuration in
    /// --cni-conf-dir and regenerate it when that directory changes; a path: copy that file
    /// there; `none`: write nothing. Default: the configuration file's multusConfigFile,
    /// else auto.
    #[arg(long, value_name = "auto|none|PATH")]
    pub multus_conf_file: Option<String>,

    /// Refuse ADD (CNI error 11, which the runtime retries) until this file exists, e.g.
    /// the primary network's configuration. Default: the configuration file's
    /// readinessindicatorfile.
    #[arg(long, value_name = "PATH")]
    pub readiness_indicator_file: Option<PathBuf>,

    /// Remove the written 00-multus.conf(list) on a clean shutdown, so the runtime does not
    /// call a shim whose daemon is gone.
    #[arg(long)]
    pub cleanup_config_on_exit: bool,

    /// Most CNI requests running delegates at once. Default: twice the number of CPUs.
    #[arg(long, value_name = "N")]
    pub max_concurrent: Option<usize>,

    /// Most CNI requests waiting for a free slot; past it a request is refused at once with
    /// CNI error 11 ("try again later") instead of piling up in memory.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_queued: usize,

    /// On shutdown, how long requests already running or queued get to finish.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub shutdown_grace: u64,
}

/// Why the daemon cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("--config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("CNI socket: {0}")]
    Socket(std::io::Error),
    #[error("--metrics-addr: {0}")]
    Metrics(String),
}

/// The daemon's settings once flags and configuration file are combined.
#[derive(Debug, Clone)]
struct Settings {
    socket_dir: PathBuf,
    cni_conf_dir: PathBuf,
    conf_mode: Option<autoconf::Mode>,
    readiness_file: Option<PathBuf>,
    overrides: serde_json::Map<String, serde_json::Value>,
}

fn load_config(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>, DaemonError> {
    let bad = |reason: String| DaemonError::Config {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("not a JSON object".into())),
        Err(e) => Err(bad(format!("not JSON: {e}"))),
    }
}

fn settings(args: &DaemonArgs) -> Result<Settings, DaemonError> {
    let file = match &args.config {
        Some(p) => load_config(p)?,
        None => Default::default(),
    };
    let key = |k: &str| -> Result<Option<String>, DaemonError> {
        match file.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(serde_json::Value::String(_)) => Ok(None),
            Some(_) => Err(DaemonError::Config {
                path: args.config.clone().unwrap_or_default(),
                reason: format!("{k}: not a string"),
            }),
        }
    };
    let socket_dir = match &args.socket_dir {
        Some(d) => d.clone(),
        None => key("socketDir")?.map_or_else(|| PathBuf::from("/run/multus"), PathBuf::from),
    };
    let cni_conf_dir = match &args.cni_conf_dir {
        Some(d) => d.clone(),
        None => key("cniConfigDir")?.map_or_else(|| PathBuf::from("/etc/cni/net.d"), PathBuf::from),
    };
    let mode = match &args.multus_conf_file {
        Some(m) => Some(m.clone()),
        None => key("multusConfigFile")?,
    };
    let conf_mode = match mode.as_deref() {
        None | Some("auto") => Some(autoconf::Mode::Auto),
        Some("none") => None,
        Some(p) => Some(autoconf::Mode::File(PathBuf::from(p))),
    };
    let readiness_file = match &args.readiness_indicator_file {
        Some(f) => Some(f.clone()),
        None => key("readinessindicatorfile")?.map(PathBuf::from),
    };
    let overrides = file
        .into_iter()
        .filter(|(k, _)| !DAEMON_ONLY_KEYS.contains(&k.as_str()))
        .collect();
    Ok(Settings {
        socket_dir,
        cni_conf_dir,
        conf_mode,
        readiness_file,
        overrides,
    })
}

/// Runs the daemon until SIGTERM, SIGINT or SIGHUP.
pub async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    args.common.init_logging();
    let shutdown = Shutdown::on_signals()?;
    run_until(args, shutdown).await?;
    Ok(())
}

/// Runs the daemon until `shutdown` is requested, then lets running and queued requests
/// finish (up to `--shutdown-grace`), removes its socket and, with
/// `--cleanup-config-on-exit`, the configuration it wrote.
pub async fn run_until(args: DaemonArgs, shutdown: Shutdown) -> Result<(), DaemonError> {
    let settings = settings(&args)?;
    let max_concurrent = args
        .max_concurrent
        .unwrap_or_else(|| 2 * std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::Metrics::new(&mut registry);
    let shared = Arc::new(server::Shared {
        unsynced: Arc::new(crate::plugin::Context::new(None)),
        events_pending: Default::default(),
        synced: OnceLock::new(),
        readiness_file: settings.readiness_file.clone(),
        shutting_down: Default::default(),
        limiter: limit::Limiter::new(max_concurrent, args.max_queued),
        metrics,
        overrides: settings.overrides.clone(),
    });
    let (listener, socket) =
        server::bind_socket(&settings.socket_dir).map_err(DaemonError::Socket)?;
    tracing::info!(
        socket = %socket.path.display(),
        max_concurrent,
        max_queued = args.max_queued,
        readiness_indicator = ?settings.readiness_file,
        "serving the Multus thick API"
    );
    let health = Health::default();
    if let Some(addr) = args
        .common
        .metrics_addr(METRICS_PORT)
        .map_err(|e| DaemonError::Metrics(e.to_string()))?
    {
        serve_metrics(addr, Arc::new(registry), health.clone())
            .await
            .map_err(|e| DaemonError::Metrics(format!("serving metrics on {addr}: {e}")))?;
    }
    tokio::spawn(server::mirror_health(
        shared.clone(),
        health,
        shutdown.clone(),
    ));
    tokio::spawn(sync_state(
        shared.clone(),
        args.common.clone(),
        shutdown.clone(),
    ));
    let conf_task = settings.conf_mode.clone().map(|mode| {
        tokio::spawn(autoconf::maintain(
            mode,
            settings.cni_conf_dir.clone(),
            settings.socket_dir.clone(),
            shutdown.clone(),
        ))
    });

    // After shutdown the socket keeps answering while requests drain: /readyz says 500 so
    // shims wait for the next daemon, ADD is refused with 11, DEL still served.
    let grace = Duration::from_secs(args.shutdown_grace);
    let drain = {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.wait().await;
            shared.shutting_down.store(true, Ordering::SeqCst);
            let deadline = tokio::time::Instant::now() + grace;
            // Events queued by requests already answered are written too.
            let busy = |s: &server::Shared| {
                s.limiter.running() + s.limiter.queued() + s.events_pending.load(Ordering::SeqCst)
            };
            while busy(&shared) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let left = busy(&shared);
            if left > 0 {
                tracing::warn!(
                    left,
                    "shutdown grace over with CNI requests or Events still running"
                );
            }
        }
    };
    server::serve(listener, shared, drain).await;
    socket.remove_if_ours();
    if let Some(task) = conf_task {
        let written = task.await.ok().flatten();
        if args.cleanup_config_on_exit
            && let Some(path) = written
        {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed the Multus CNI configuration")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "removing the Multus CNI configuration")
                }
            }
        }
    }
    tracing::info!("multus daemon stopped");
    Ok(())
}

/// Loads the cluster state in the background, retrying with back-off: at boot the API
/// server may be unreachable for a while, and the daemon must serve DEL (and refuse ADD
/// clearly) meanwhile rather than not run at all.
async fn sync_state(shared: Arc<server::Shared>, common: CommonArgs, shutdown: Shutdown) {
    // Every Pod is watched: the state's backends have no field selector yet, so the daemon
    // cannot limit itself to the Pods of its node (spec.nodeName) as Multus does.
    let mut delay = Duration::from_millis(500);
    loop {
        let started = tokio::select! {
            r = common.cluster_state(KINDS) => r,
            _ = shutdown.wait() => return,
        };
        match started {
            Ok(state) => {
                let attached = state.attached();
                let (events, rx) = crate::plugin::EventQueue::new(shared.events_pending.clone());
                let ctx = Arc::new(crate::plugin::Context {
                    state: Some(state),
                    events: Some(events),
                });
                tokio::spawn(crate::plugin::record_queued(ctx.clone(), rx));
                let _ = shared.synced.set(server::Synced { ctx, attached });
                tracing::info!("cluster state synced (Pods, NetworkAttachmentDefinitions)");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "reading the cluster state");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: DaemonArgs,
    }

    #[test]
    fn flags_win_over_the_configuration_file_which_wins_over_defaults() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("daemon-config.json");
        std::fs::write(
            &conf,
            r#"{"cniVersion":"0.3.1","socketDir":"/s","cniConfigDir":"/c","multusConfigFile":"none",
                "readinessindicatorfile":"/r","namespaceIsolation":true}"#,
        )
        .unwrap();
        let a = T::parse_from(["x", "--config", conf.to_str().unwrap()]).a;
        let s = settings(&a).unwrap();
        assert_eq!(s.socket_dir, PathBuf::from("/s"));
        assert_eq!(s.cni_conf_dir, PathBuf::from("/c"));
        assert!(s.conf_mode.is_none());
        assert_eq!(s.readiness_file, Some(PathBuf::from("/r")));
        assert_eq!(
            s.overrides.keys().collect::<Vec<_>>(),
            vec!["namespaceIsolation", "readinessindicatorfile"]
        );
        let a = T::parse_from([
            "x",
            "--config",
            conf.to_str().unwrap(),
            "--socket-dir",
            "/f",
            "--multus-conf-file",
            "auto",
        ])
        .a;
        let s = settings(&a).unwrap();
        assert_eq!(s.socket_dir, PathBuf::from("/f"));
        assert!(matches!(s.conf_mode, Some(autoconf::Mode::Auto)));
        let s = settings(&T::parse_from(["x"]).a).unwrap();
        assert_eq!(s.socket_dir, PathBuf::from("/run/multus"));
        assert_eq!(s.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
    }

    #[test]
    fn a_bad_configuration_file_names_the_file_and_field() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("c.json");
        std::fs::write(&conf, r#"{"socketDir": 5}"#).unwrap();
        let e = settings(&T::parse_from(["x", "--config", conf.to_str().unwrap()]).a)
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.json") && e.contains("socketDir"), "{e}");
        std::fs::write(&conf, "[").unwrap();
        let e = settings(&T::parse_from(["x", "--config", conf.to_str().unwrap()]).a)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not JSON"), "{e}");
    }

    #[test]
    fn every_flag_is_described() {
        use clap::CommandFactory;
        let help = T::command().render_long_help().to_string();
        assert_eq!(
            metalnet::daemon::undescribed_flags(&help),
            Vec::<String>::new()
        );
    }
}
