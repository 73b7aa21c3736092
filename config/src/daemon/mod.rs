//! What every metalnet daemon is built from: the shared flags ([`CommonArgs`]), logging,
//! the metrics and health endpoint ([`serve_metrics`], [`Health`]), shutdown on signals
//! ([`Shutdown`]), and the one reconcile loop ([`Driver`]) that runs a pure plan against the
//! cluster state, applies it, and retries what failed according to the failure's class.

pub mod cli;
pub mod driver;
pub mod health;
pub mod shutdown;
pub mod telemetry;

pub use cli::{CommonArgs, LogFormat, undescribed_flags};
pub use driver::{Classify, Driver, DriverMetrics, PassReport, Plan, Reconcile, RetryPolicy};
pub use health::{Health, Readiness};
pub use shutdown::Shutdown;
pub use telemetry::{init_logging, serve_metrics};
