//! The text of `metalnet-router explain node NAME` (sessions, state, routes sent and
//! received, why a peering does or does not exist) and `explain route CIDR`.
