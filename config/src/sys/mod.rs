//! The system-call layer: every `unsafe` of the common crate lives under here, behind safe
//! typed functions.

pub mod packet;
