//! metalnet-router: kube-router style pod routing over BGP and an eBPF service proxy.

#![forbid(unsafe_code)]

use clap::Parser;
use metalnet::daemon::CommonArgs;

/// Routes pod CIDRs over BGP and replaces kube-proxy with eBPF (kube-router style).
///
/// NOT YET IMPLEMENTED: this build only describes what the router will do.
///
/// Planned: runs on every node; peers over BGP with the other nodes and upstream routers to
/// exchange pod CIDRs, and load-balances ClusterIP/NodePort/LoadBalancer traffic with tc
/// eBPF programs fed from Services and EndpointSlices, in place of kube-proxy.
#[derive(Parser, Debug)]
#[command(name = "metalnet-router", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!("metalnet-router is not implemented yet; see --help for what it will do");
    std::process::ExitCode::from(2)
}
