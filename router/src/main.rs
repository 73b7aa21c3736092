//! metalnet-router: kube-router style pod routing over BGP (wiring only; the logic is in the
//! library).

#![forbid(unsafe_code)]

use clap::Parser;
use metalnet::daemon::CommonArgs;
use metalnet_router::routing::options::RoutingArgs;

/// Routes pod CIDRs over BGP between nodes and to upstream routers (kube-router style).
///
/// Skeleton: the daemon is not wired yet.
#[derive(Parser, Debug)]
#[command(name = "metalnet-router", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    #[command(flatten)]
    routing: RoutingArgs,
}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!("metalnet-router is not implemented yet; see --help for what it will do");
    std::process::ExitCode::from(2)
}
