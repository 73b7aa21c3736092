//! Running engine sessions, one per planned peer: a new peer starts a session, a removed
//! one is stopped (Cease), a changed [`super::topology::PeerSpec`] resets only that session,
//! and a changed export table is sent as UPDATEs on the established session.
