//! The system-call layer: every `unsafe` call into the kernel lives here, behind safe
//! functions that name what they do and the invariant they rely on.

pub mod bpf;
pub mod netns;
pub mod packet;
pub mod sockdiag;
pub mod tcp;
