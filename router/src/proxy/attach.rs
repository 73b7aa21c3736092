//! (to be written; see proxy/mod.rs)
