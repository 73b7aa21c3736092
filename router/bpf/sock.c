/* metalnet service proxy: socket-level load balancing (cgroup v2 sock_addr hooks).
 *
 * connect and sendmsg (unconnected UDP) translate a frontend address to a backend before any
 * packet exists, so in-cluster traffic needs no per-packet NAT; getpeername and recvmsg show
 * the frontend again, from mn_sock_rev keyed by the socket cookie and the backend (an
 * unconnected UDP socket picks a backend per datagram).
 *
 * Clients here are in-cluster (a pod or the node itself), so the frontend's INTERNAL entry
 * applies when there is one, selection is random and affinity is keyed by the client's network
 * namespace cookie (socket-LB follows the cgroup, not the address). A frontend without
 * backends is left untranslated, so the packet path rejects or drops it as kube-proxy would. */
#include "common.h"

char _license[] SEC("license") = "GPL";

/* --socket-lb: off, all, or only sockets of the host's network namespace (service meshes
 * redirect pod traffic themselves and must see the frontend address). */
static __always_inline int mn_sock_enabled(struct bpf_sock_addr *ctx, const struct mn_config *cfg)
{
	if (cfg->socket_lb == 0)
		return 0;
	if (cfg->socket_lb == 2 && bpf_get_netns_cookie(ctx) != cfg->host_netns_cookie)
		return 0;
	return 1;
}

static __always_inline void mn_sock_addr_get(struct bpf_sock_addr *ctx, int v6, __u8 *addr)
{
	if (!v6) {
		mn_addr_set_v4(addr, ctx->user_ip4);
	} else {
		__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];

		__builtin_memcpy(addr, &w0, 4);
		__builtin_memcpy(addr + 4, &w1, 4);
		__builtin_memcpy(addr + 8, &w2, 4);
		__builtin_memcpy(addr + 12, &w3, 4);
	}
}

static __always_inline void mn_sock_addr_set(struct bpf_sock_addr *ctx, int v6, const __u8 *addr, __be16 port)
{
	if (!v6) {
		ctx->user_ip4 = mn_word(addr, 3);
	} else {
		ctx->user_ip6[0] = mn_word(addr, 0);
		ctx->user_ip6[1] = mn_word(addr, 1);
		ctx->user_ip6[2] = mn_word(addr, 2);
		ctx->user_ip6[3] = mn_word(addr, 3);
	}
	ctx->user_port = port;
}

static __always_inline int mn_sock_fwd(struct bpf_sock_addr *ctx, int v6)
{
	struct mn_config cfg;
	struct mn_svc_key sk = {};
	struct mn_svc_val svc;
	struct mn_affinity_key ak = {};
	struct mn_sock_rev_key rk = {};
	struct mn_rev_nat rv = {};
	struct mn_backend be;
	__u8 dst[MN_ADDR_LEN];
	__u32 proto = ctx->protocol, id = 0;
	__u64 netns;
	__be16 port;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	mn_config_get(&cfg);
	if (!mn_sock_enabled(ctx, &cfg))
		return 1;

	mn_sock_addr_get(ctx, v6, dst);
	/* The port is in the low 16 bits, in network order. */
	port = (__be16)ctx->user_port;
	__builtin_memcpy(sk.addr, dst, MN_ADDR_LEN);
	sk.port = port;
	sk.proto = (__u8)proto;
	sk.scope = MN_SCOPE_EXTERNAL;
	if (!mn_svc_lookup(&sk, &svc))
		return 1;
	mn_svc_scope(&sk, 1, &svc);
	if (svc.count == 0)
		return 1;

	netns = bpf_get_netns_cookie(ctx);
	__builtin_memcpy(ak.client, &netns, sizeof(netns));
	ak.rev_id = svc.rev_id;
	ak.kind = 1;
	if (!mn_select(&svc, sk.scope, &ak, 0, 0, 0, mn_now(), &id, &be))
		return 1;
	/* A v4 socket cannot reach a v6 backend nor the other way round (a v6 socket reaches v4
	 * backends through their IPv4-mapped form, which is how the maps hold them). */
	if (!v6 && !mn_is_v4mapped(be.addr))
		return 1;
	if (v6 && mn_is_v4mapped(be.addr) != mn_is_v4mapped(dst))
		return 1;

	rk.cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(rk.addr, be.addr, MN_ADDR_LEN);
	rk.port = be.port;
	__builtin_memcpy(rv.addr, dst, MN_ADDR_LEN);
	rv.port = port;
	if (bpf_map_update_elem(&mn_sock_rev, &rk, &rv, BPF_ANY))
		mn_count(MN_CNT_CT_FULL);
	mn_sock_addr_set(ctx, v6, be.addr, be.port);
	mn_count(MN_CNT_SOCK_LB);
	return 1;
}

static __always_inline int mn_sock_back(struct bpf_sock_addr *ctx, int v6)
{
	struct mn_sock_rev_key rk = {};
	struct mn_rev_nat *v, rv;

	rk.cookie = bpf_get_socket_cookie(ctx);
	mn_sock_addr_get(ctx, v6, rk.addr);
	rk.port = (__be16)ctx->user_port;
	v = bpf_map_lookup_elem(&mn_sock_rev, &rk);
	if (!v)
		return 1;
	rv = *v;
	mn_sock_addr_set(ctx, v6, rv.addr, rv.port);
	return 1;
}

/* One program per attach type, named mn_sock_<hook>: the way in (connect, sendmsg) translates
 * a frontend to a backend, the way back (recvmsg, getpeername) shows the frontend again. */
#define MN_SOCK_HOOK(hook, way, v6)                                  \
	SEC("cgroup/" #hook)                                          \
	int mn_sock_##hook(struct bpf_sock_addr *ctx)                 \
	{                                                             \
		return way(ctx, v6);                                  \
	}

MN_SOCK_HOOK(connect4, mn_sock_fwd, 0)
MN_SOCK_HOOK(connect6, mn_sock_fwd, 1)
MN_SOCK_HOOK(sendmsg4, mn_sock_fwd, 0)
MN_SOCK_HOOK(sendmsg6, mn_sock_fwd, 1)
MN_SOCK_HOOK(recvmsg4, mn_sock_back, 0)
MN_SOCK_HOOK(recvmsg6, mn_sock_back, 1)
MN_SOCK_HOOK(getpeername4, mn_sock_back, 0)
MN_SOCK_HOOK(getpeername6, mn_sock_back, 1)
