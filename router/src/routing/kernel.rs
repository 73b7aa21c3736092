//! The kernel edge: routes with protocol [`super::RTPROT_KUBE_ROUTER`] in the main table.
//! The wanted set is diffed against what the kernel has and applied in batches; a periodic
//! resync repairs changes made behind our back; a clean shutdown without graceful restart
//! removes them.
