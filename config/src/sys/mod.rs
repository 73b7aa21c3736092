//! The system-call layer: the only place metalnet calls into libc with `unsafe`, each call
//! wrapped in a safe function with the invariant it relies on written down.

pub mod tcp;
