//! Library side of the metalnet controller: pure logic the binary drives.

pub mod allocator;
