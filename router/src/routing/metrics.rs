//! Prometheus metrics with kube-router's names where it has them
//! (`kube_router_bgp_peer_info`, `kube_router_bgp_advertised_routes`,
//! `kube_router_bgp_received_routes`, ...).
