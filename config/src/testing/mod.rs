//! Shared test fixtures (the `testing` feature): typed manifest builders and snapshots, a
//! throwaway network namespace that runs async code inside, and the patience factor that
//! scales test timeouts. Use it from tests as
//! `metalnet = { workspace = true, features = ["testing"] }` in `[dev-dependencies]`.

pub mod manifests;
pub mod netns;
pub mod patience;

pub use manifests::*;
pub use netns::{Netns, block_on_in, is_root};
pub use patience::{PATIENCE_VAR, patient};
