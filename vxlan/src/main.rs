//! metalnet-vxlan: the Flannel-compatible VXLAN pod overlay agent.

use clap::Parser;
use metalnet_config::cli::CommonArgs;

/// Connects the pod subnets of all nodes over VXLAN (Flannel vxlan backend compatible).
///
/// NOT YET IMPLEMENTED: this build only describes what the agent will do.
///
/// Planned: runs on every node; takes the node's subnet from spec.podCIDR (or leases one
/// on the embedded default), creates flannel.<VNI>, programs a neighbour entry, an FDB
/// entry and a route for every other node, publishes Flannel's node annotations and
/// writes /run/flannel/subnet.env so Flannel's CNI configuration keeps working.
#[derive(Parser, Debug)]
#[command(name = "metalnet-vxlan", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!("metalnet-vxlan is not implemented yet; see --help for what it will do");
    std::process::ExitCode::from(2)
}
