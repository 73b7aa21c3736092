//! `metalnet-speaker explain NAMESPACE/NAME`: why this node does or does not announce a
//! Service, in layer 2 mode ([`crate::layer2::explain`]) and BGP mode
//! ([`crate::bgp::explain`]), with the Events about it.

use std::net::SocketAddr;

use metalnet::model::core::Service;
use metalnet::state::{ClusterState, Kind, ObjectRef, Snapshot};
use metalnet::validate::{ParsedConfig, valid_config};

use crate::bgp::{explain as bgp_explain, plan};
use crate::eligibility;
use crate::layer2::election::{self, Inputs};
use crate::layer2::explain::{self as l2_explain, LiveSource};
use crate::metrics::{FetchError, fetch_metrics, parse_members};

/// How `explain` looks at the cluster.
#[derive(Clone, Debug)]
pub struct Options {
    /// The node explained from (`--node-name`); without it, BGP mode is not explained.
    pub node: Option<String>,
    /// The running speaker's metrics endpoint, for its gossip view and BGP sessions.
    pub speaker: SocketAddr,
    /// Gossip on: live speakers come from the running speaker, else from Node Ready.
    pub gossip: bool,
    pub ignore_exclude_label: bool,
}

/// Why `explain` has nothing to say.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("expected NAMESPACE/NAME, got {0:?}")]
    BadName(String),
    #[error("Service/{namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
}

/// The whole explanation of `service` (`NAMESPACE/NAME`), as printed.
pub async fn explain(
    state: &ClusterState,
    service: &str,
    opts: &Options,
) -> Result<String, ExplainError> {
    let Some((namespace, name)) = service.split_once('/') else {
        return Err(ExplainError::BadName(service.to_string()));
    };
    let snapshot = state.snapshot();
    let svc = snapshot
        .services
        .iter()
        .find(|(k, _)| k.namespace.as_deref() == Some(namespace) && k.name == name)
        .map(|(_, s)| s.clone())
        .ok_or_else(|| ExplainError::NotFound {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })?;
    let nodes = eligibility::nodes(&snapshot);
    let speaker = opts.speaker;
    // One read of the running speaker's metrics serves both modes.
    let metrics = tokio::task::spawn_blocking(move || fetch_metrics(speaker))
        .await
        .unwrap_or_else(|e| {
            Err(FetchError::Io {
                addr: speaker,
                source: std::io::Error::other(e),
            })
        });
    let (live, source) = match (&metrics, opts.gossip) {
        (_, false) => (
            eligibility::ready_nodes(&nodes),
            LiveSource::NodeReady("--gossip off".into()),
        ),
        (Ok(text), true) => (
            parse_members(text),
            LiveSource::Speaker(speaker.to_string()),
        ),
        (Err(e), true) => (
            eligibility::ready_nodes(&nodes),
            LiveSource::NodeReady(format!("no speaker answered at {speaker}: {e}")),
        ),
    };
    let (config, _) = valid_config(&snapshot);
    let e = election::elect(
        &Inputs {
            snapshot: &snapshot,
            config: &config,
            nodes: &nodes,
            live: &live,
            ignore_exclude_label: opts.ignore_exclude_label,
        },
        &svc,
    );
    let mut out = l2_explain::render(&e, opts.node.as_deref(), &live, &source);
    if let Some(node) = opts.node.as_deref() {
        out.push_str(&bgp(
            &snapshot,
            &config,
            node,
            &svc,
            metrics.as_deref().ok(),
            opts.ignore_exclude_label,
        ));
    }
    let obj = ObjectRef::new(Kind::Service, Some(namespace), name);
    match state.render_events_about(&obj).await {
        Ok(events) => out.push_str(&events),
        Err(e) => out.push_str(&format!("events: not readable: {e}\n")),
    }
    Ok(out)
}

/// The BGP part, with session states from the running speaker's metrics when it answered.
fn bgp(
    snapshot: &Snapshot,
    config: &ParsedConfig,
    node: &str,
    svc: &Service,
    metrics: Option<&str>,
    ignore_exclude_label: bool,
) -> String {
    let plan = plan::plan(&plan::Inputs {
        snapshot,
        config,
        node,
        ignore_exclude_label,
    });
    let sessions = metrics.map(bgp_explain::parse_session_up);
    let service = plan.services.iter().find(|s| {
        Some(&s.namespace) == svc.metadata.namespace.as_ref()
            && Some(&s.name) == svc.metadata.name.as_ref()
    });
    bgp_explain::render(&plan, service.map(|s| &**s), sessions.as_ref())
}
