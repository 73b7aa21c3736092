//! The system-call layer: every `unsafe` call into the kernel lives here, behind safe
//! functions that name what they do.

pub mod netns;
