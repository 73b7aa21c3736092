//! multus-shim: a CNI meta-plugin (Multus compatible).

#![forbid(unsafe_code)]

use std::io::Read;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

use metalnet::model::Kind;
use metalnet::state::{ClusterState, Source};
use multus_shim::cni::{CniError, Request};
use multus_shim::plugin::{self, Context};

/// The most a configuration on stdin may weigh.
const STDIN_LIMIT: u64 = 1 << 20;

/// A CNI meta-plugin (Multus compatible): the cluster network first, then one delegate per
/// NetworkAttachmentDefinition a pod asks for in `k8s.v1.cni.cncf.io/networks`.
///
/// Two roles:
///
/// * As a CNI plugin (the container runtime runs `multus-shim` with `CNI_COMMAND` ADD, DEL,
///   CHECK, GC, STATUS or VERSION and the configuration on stdin): thin mode reads the pod and
///   its NetworkAttachmentDefinitions itself (from the configuration's `stateDir` or
///   `METALNET_STATE_DIR`, else the API server of its `kubeconfig`), runs the delegates from
///   `binDir` and `CNI_PATH`, caches them under `cniDir` and writes network-status on the pod;
///   with `daemonSocketDir` in its configuration it forwards the call to the node's daemon
///   instead (thick mode). It prints the result or a CNI error object on stdout; logs go to
///   `logFile`, or stderr with `logToStderr`.
///
/// * `multus-shim daemon`: the per-node daemon of thick mode.
#[derive(Parser, Debug)]
#[command(name = "multus-shim", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// The per-node daemon of thick mode (serves the plugin's calls on a unix socket).
    Daemon(multus_shim::daemon::DaemonArgs),
}

fn main() -> std::process::ExitCode {
    // The runtime runs a plugin with no arguments; only then is it the plugin.
    let as_plugin = std::env::args_os().len() <= 1;
    if !as_plugin {
        let cli = Cli::parse();
        match cli.command {
            Some(Sub::Daemon(args)) => return run_daemon(args),
            None => {}
        }
    }
    run_plugin()
}

fn run_daemon(args: multus_shim::daemon::DaemonArgs) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            metalnet::daemon::stderr_line(format_args!(
                "multus-shim daemon: cannot start the runtime: {e}"
            ));
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(multus_shim::daemon::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            metalnet::daemon::stderr_line(format_args!("multus-shim daemon: {e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}

fn read_stdin() -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(STDIN_LIMIT + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CniError::new(CniError::IO, format!("cannot read stdin: {e}")))?;
    if buf.len() as u64 > STDIN_LIMIT {
        return Err(CniError::new(
            CniError::DECODE,
            format!("the configuration on stdin is larger than {STDIN_LIMIT} bytes"),
        ));
    }
    Ok(buf)
}

fn run_plugin() -> std::process::ExitCode {
    let env = std::env::vars().collect();
    let (req, outcome) = match read_stdin() {
        Ok(stdin) => {
            let req = Request { env, stdin };
            let out = serve(&req);
            (req, out)
        }
        Err(e) => (
            Request {
                env,
                stdin: Vec::new(),
            },
            Err(e),
        ),
    };
    match outcome {
        Ok(Some(v)) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Ok(None) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "failed");
            println!("{}", e.to_json(&plugin::error_version(&req)));
            std::process::ExitCode::from(1)
        }
    }
}

/// Sets up logging from the configuration, as far as it can be read.
fn init_logging(conf: &Value) {
    let level = match conf.get("logLevel").and_then(Value::as_str).unwrap_or("") {
        "verbose" => "trace",
        "debug" => "debug",
        "error" | "panic" => "error",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::new(level);
    if let Some(path) = conf.get("logFile").and_then(Value::as_str)
        && let Ok(f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .try_init();
    } else if conf.get("logToStderr").and_then(Value::as_bool) == Some(true) {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

fn serve(req: &Request) -> Result<Option<Value>, CniError> {
    let conf: Value = serde_json::from_slice(&req.stdin).unwrap_or(Value::Null);
    init_logging(&conf);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(CniError::IO, format!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        if let Some(dir) = conf.get("daemonSocketDir").and_then(Value::as_str) {
            // Thick mode: the node's daemon runs the call.
            let socket = std::path::Path::new(dir).join("multus.sock");
            return multus_shim::daemon::client::forward(&socket, req.clone()).await;
        }
        let command = req.env.get("CNI_COMMAND").map(String::as_str).unwrap_or("");
        let state = match command {
            _ if !plugin::needs_cluster(req) => None,
            "ADD" => start_state(&conf, req, Duration::from_secs(30)).await?,
            // DEL works from its caches; with nothing cached it reads the pod if it can, and
            // succeeds without it.
            _ => start_state(&conf, req, Duration::from_secs(5))
                .await
                .ok()
                .flatten(),
        };
        plugin::handle(&Context::new(state), req.clone()).await
    })
}

/// The cluster state of the configuration: `stateDir` or `METALNET_STATE_DIR`, else the API
/// server of `kubeconfig`, else none.
async fn start_state(
    conf: &Value,
    req: &Request,
    limit: Duration,
) -> Result<Option<ClusterState>, CniError> {
    let state_dir = conf
        .get("stateDir")
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| req.env.get("METALNET_STATE_DIR").cloned())
        .filter(|s| !s.is_empty());
    let source = if let Some(dir) = state_dir {
        Source::Dir(dir.into())
    } else if let Some(kc) = conf
        .get("kubeconfig")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        let client = metalnet::state::kube::client(Some(std::path::Path::new(kc)))
            .await
            .map_err(|e| {
                CniError::new(CniError::TRY_AGAIN_LATER, format!("kubeconfig {kc}: {e}"))
            })?;
        Source::Kube(client)
    } else {
        return Ok(None);
    };
    let what = format!("{source:?}");
    let start = ClusterState::start(source, [Kind::Pod, Kind::NetworkAttachmentDefinition]);
    match tokio::time::timeout(limit, start).await {
        Ok(Ok(s)) => Ok(Some(s)),
        Ok(Err(e)) => Err(CniError::new(
            CniError::TRY_AGAIN_LATER,
            format!("cluster state {what}: {e}"),
        )),
        Err(_) => Err(CniError::new(
            CniError::TRY_AGAIN_LATER,
            format!("cluster state {what}: not loaded within {limit:?}"),
        )),
    }
}
