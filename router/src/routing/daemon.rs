//! The routing loop: cluster state (Nodes, Services, EndpointSlices) and received routes in,
//! sessions and kernel routes out, within a second of any change.
