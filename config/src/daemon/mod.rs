//! What every metalnet daemon is built from: the shared flags ([`CommonArgs`]), logging,
//! the metrics and health endpoint ([`serve_metrics`], [`Health`]), shutdown on signals
//! ([`Shutdown`]), and the one reconcile loop ([`Driver`]) that runs a pure plan against the
//! cluster state, applies it, and retries what failed according to the failure's class.

pub mod cli;
pub mod driver;
pub mod health;
pub mod owned;
pub mod shutdown;
pub mod telemetry;

pub use cli::{CommonArgs, LogFormat, undescribed_flags};
pub use driver::{Classify, Driver, DriverMetrics, PassReport, Plan, Reconcile, RetryPolicy};
pub use health::{Health, Readiness};
pub use owned::{OwnedObjects, OwnedOp, OwnedPlan, OwnedPlanner};
pub use shutdown::Shutdown;
pub use telemetry::{DebugHandler, init_logging, serve_metrics, serve_metrics_with_debug};

/// Writes a line to stderr and ignores failure: a daemon whose stderr is closed (`2>&1 |
/// head -1`) must not panic on its last words, as `eprintln!` would.
pub fn stderr_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Writes to stdout and ignores failure (a reader that went away, `| head -1`).
pub fn stdout_text(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = write!(std::io::stdout(), "{text}");
}
