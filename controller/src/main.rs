//! metalnet-controller: assigns LoadBalancer addresses from MetalLB IPAddressPools.

#![forbid(unsafe_code)]

mod validate_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use metalnet::daemon::{CommonArgs, Health, Shutdown, serve_metrics};
use metalnet_controller::reconcile::Options;
use metalnet_controller::{explain, metrics::Metrics, run};

/// The lock that keeps a second controller on the same state directory standing by.
const LOCK: &str = "controller";

/// The controller's metrics port (MetalLB's controller uses 7472 too).
const METRICS_PORT: u16 = 7472;

/// Assigns external addresses from MetalLB IPAddressPools to Services of type LoadBalancer
/// and writes them to the Services' status (MetalLB controller compatible: same pools, same
/// annotations, same addresses). Runs on Kubernetes, or on a state directory (--state-dir).
#[derive(Parser, Debug)]
#[command(name = "metalnet-controller", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Serve only Services whose spec.loadBalancerClass is NAME (as MetalLB's --lb-class).
    /// Without it, only Services without a loadBalancerClass are served. Services of other
    /// classes are never written to.
    #[arg(long, value_name = "NAME", global = true)]
    lb_class: Option<String>,

    /// Read IPAddressPools only from namespace NS (MetalLB reads only its own namespace,
    /// usually metallb-system). Default: pools in every namespace.
    #[arg(long, value_name = "NS", global = true)]
    config_namespace: Option<String>,

    /// Reconcile the current state once, write the results (status, annotations, events)
    /// and exit: for CI, scripts and state directories. Exit status 1 if a write failed.
    /// On a state directory, the status of objects deleted since the last run is removed
    /// first (which waits a second when there are such objects).
    #[arg(long)]
    once: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check manifests (files or directories of YAML/JSON) without a cluster: prints every
    /// problem, naming the object, the field and the reason; exits 1 when there is an error.
    Validate {
        /// Files or directories to check (directories recursively).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Print why a Service has its address, or why it has none, from the current state
    /// (pools, other Services, the Events recorded about it). Writes nothing. Exits 1 when
    /// the Service does not exist.
    Explain {
        /// The Service, as NAMESPACE/NAME.
        #[arg(value_name = "NAMESPACE/NAME")]
        service: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let opts = Options {
        lb_class: cli.lb_class.clone().filter(|c| !c.is_empty()),
        config_namespace: cli.config_namespace.clone().filter(|n| !n.is_empty()),
    };
    match &cli.command {
        Some(Command::Validate { paths }) => {
            match validate_cmd::run(paths, &mut std::io::stdout().lock()) {
                Ok(false) => ExitCode::SUCCESS,
                Ok(true) => ExitCode::from(1),
                Err(e) => {
                    metalnet::daemon::stderr_line(format_args!(
                        "metalnet-controller validate: {e}"
                    ));
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Explain { service }) => {
            // The answer goes to stdout; keep routine progress logs out of the way.
            let mut common = cli.common.clone();
            if common.log_level == "info" {
                common.log_level = "error".into();
            }
            common.init_logging();
            match explain_cmd(&cli.common, &opts, service).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    metalnet::daemon::stderr_line(format_args!(
                        "metalnet-controller explain: {e:#}"
                    ));
                    ExitCode::from(2)
                }
            }
        }
        None => {
            cli.common.init_logging();
            match controller(&cli.common, &opts, cli.once).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "metalnet-controller failed");
                    metalnet::daemon::stderr_line(format_args!("metalnet-controller: {e:#}"));
                    ExitCode::from(1)
                }
            }
        }
    }
}

async fn explain_cmd(common: &CommonArgs, opts: &Options, service: &str) -> anyhow::Result<bool> {
    let key = explain::parse_key(service).map_err(anyhow::Error::msg)?;
    let state = common
        .cluster_state(run::KINDS)
        .await
        .context("reading the cluster state")?;
    match explain::explain(&state, opts, &key).await? {
        Some(text) => {
            metalnet::daemon::stdout_text(format_args!("{text}"));
            Ok(true)
        }
        None => {
            metalnet::daemon::stdout_text(format_args!("Service {key} does not exist\n"));
            Ok(false)
        }
    }
}

async fn controller(common: &CommonArgs, opts: &Options, once: bool) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    let state = common
        .cluster_state(run::KINDS)
        .await
        .context("reading the cluster state")?;
    // One controller writes at a time: two would double every write and every Event count.
    if once {
        let _lock = state
            .lock(LOCK)
            .context("another controller is running on this state directory")?;
        // A Service deleted before this run and created again during it must not come back
        // with its old status at the next run: no process stays to remove it later.
        state
            .remove_deleted_objects_status()
            .await
            .context("removing the status of deleted objects")?;
        run::reconcile_once(&state, opts, &shutdown).await?;
        return Ok(());
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::new(&mut registry);
    let health = Health::default();
    if let Some(addr) = common.metrics_addr(METRICS_PORT)? {
        serve_metrics(addr, Arc::new(registry), health.clone())
            .await
            .with_context(|| format!("serving metrics on {addr}"))?;
    }
    // A second controller stands by (not ready) until the first one goes away.
    let holding = health.condition("lock");
    let _lock = tokio::select! {
        lock = state.lock_wait(LOCK) => lock.context("taking the controller lock")?,
        _ = shutdown.wait() => return Ok(()),
    };
    holding.set(true);
    run::run(&state, opts, &metrics, &health, &shutdown).await;
    Ok(())
}
