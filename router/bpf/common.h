/* metalnet service proxy: helpers shared by the per-packet (lb.c) and socket (sock.c) programs.
 *
 * Map values are copied to the stack before use: the verifier loses track of a map value
 * pointer once clang hoists arithmetic on it, and copies keep the logic plain. */
#ifndef METALNET_COMMON_H
#define METALNET_COMMON_H

#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include "proxy.h"

/* Defaults when mn_config leaves a timeout at 0 (the control plane has not written it yet). */
#define MN_CT_DEFAULT_TCP     21600 /* 6 h for an idle established TCP connection */
#define MN_CT_DEFAULT_OTHER   60    /* UDP, SCTP */
#define MN_CT_CLOSING_TIMEOUT 10    /* after FIN or RST */

static __always_inline __u32 mn_now(void)
{
	return (__u32)(bpf_ktime_get_coarse_ns() / 1000000000ULL);
}

static __always_inline void mn_count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&mn_counters, &idx);

	if (v)
		*v += 1;
}

static __always_inline void mn_config_get(struct mn_config *c)
{
	__u32 zero = 0;
	struct mn_config *p = bpf_map_lookup_elem(&mn_config, &zero);

	if (p)
		*c = *p;
	else
		__builtin_memset(c, 0, sizeof(*c));
}

static __always_inline __u32 mn_word(const __u8 *a, int i)
{
	__u32 w;

	__builtin_memcpy(&w, a + 4 * i, 4);
	return w;
}

static __always_inline int mn_addr_eq(const __u8 *a, const __u8 *b)
{
	return mn_word(a, 0) == mn_word(b, 0) && mn_word(a, 1) == mn_word(b, 1) &&
	       mn_word(a, 2) == mn_word(b, 2) && mn_word(a, 3) == mn_word(b, 3);
}

static __always_inline int mn_is_v4mapped(const __u8 *a)
{
	return mn_word(a, 0) == 0 && mn_word(a, 1) == 0 && mn_word(a, 2) == bpf_htonl(0xffff);
}

/* a becomes ::ffff:ip (ip in network order). */
static __always_inline void mn_addr_set_v4(__u8 *a, __be32 ip)
{
	__u32 w2 = bpf_htonl(0xffff);

	__builtin_memset(a, 0, 8);
	__builtin_memcpy(a + 8, &w2, 4);
	__builtin_memcpy(a + 12, &ip, 4);
}

/* The NodePort wildcard of the address's family. */
static __always_inline void mn_addr_wildcard(__u8 *a)
{
	if (mn_is_v4mapped(a))
		mn_addr_set_v4(a, 0);
	else
		__builtin_memset(a, 0, MN_ADDR_LEN);
}

static __always_inline int mn_is_node_addr(const __u8 *a)
{
	__u8 k[MN_ADDR_LEN];

	__builtin_memcpy(k, a, MN_ADDR_LEN);
	return bpf_map_lookup_elem(&mn_node_addr, k) != NULL;
}

/* In-cluster source: a --cluster-cidr address or one of this node's addresses. */
static __always_inline int mn_in_cluster(const __u8 *saddr)
{
	struct mn_cidr_key k = { .prefixlen = 128 };

	__builtin_memcpy(k.addr, saddr, MN_ADDR_LEN);
	if (bpf_map_lookup_elem(&mn_cluster_cidr, &k))
		return 1;
	return mn_is_node_addr(saddr);
}

/* loadBalancerSourceRanges: is saddr inside one of the frontend's ranges? */
static __always_inline int mn_src_allowed(__u32 rev_id, const __u8 *saddr)
{
	struct mn_src_range_key k = { .prefixlen = 32 + 128, .rev_id = bpf_htonl(rev_id) };

	__builtin_memcpy(k.addr, saddr, MN_ADDR_LEN);
	return bpf_map_lookup_elem(&mn_src_range, &k) != NULL;
}

/* The frontend for key (scope EXTERNAL on entry): the exact address first, then the NodePort
 * wildcard when the address is one of this node's. On a hit *key holds the entry found (the
 * wildcard address for NodePort) and *svc a copy of its value. */
static __always_inline int mn_svc_lookup(struct mn_svc_key *key, struct mn_svc_val *svc)
{
	struct mn_svc_val *v = bpf_map_lookup_elem(&mn_svc, key);

	if (!v) {
		if (!mn_is_node_addr(key->addr))
			return 0;
		mn_addr_wildcard(key->addr);
		v = bpf_map_lookup_elem(&mn_svc, key);
		if (!v)
			return 0;
	}
	*svc = *v;
	return 1;
}

/* In-cluster clients use the frontend's INTERNAL entry when it has one. */
static __always_inline void mn_svc_scope(struct mn_svc_key *key, int in_cluster, struct mn_svc_val *svc)
{
	struct mn_svc_val *v;

	if (!in_cluster || !(svc->flags & MN_SVC_F_HAS_INTERNAL))
		return;
	key->scope = MN_SCOPE_INTERNAL;
	v = bpf_map_lookup_elem(&mn_svc, key);
	if (v)
		*svc = *v;
	else
		key->scope = MN_SCOPE_EXTERNAL;
}

static __always_inline int mn_backend_get(__u32 id, struct mn_backend *be)
{
	struct mn_backend *v = bpf_map_lookup_elem(&mn_backend, &id);

	if (!v)
		return 0;
	*be = *v;
	return 1;
}

/* A still valid affinity entry for ak: not older than the timeout, and its backend still
 * serves the frontend (mn_affinity_match). Refreshes last_used on a hit. */
static __always_inline int mn_affinity_get(const struct mn_affinity_key *ak, __u32 timeout, __u32 now, __u32 *id)
{
	struct mn_affinity_val *v = bpf_map_lookup_elem(&mn_affinity, ak);
	struct mn_affinity_match_key mk = {};
	struct mn_affinity_val a;

	if (!v)
		return 0;
	a = *v;
	if (now - a.last_used > timeout)
		return 0;
	mk.backend_id = a.backend_id;
	mk.rev_id = ak->rev_id;
	if (!bpf_map_lookup_elem(&mn_affinity_match, &mk))
		return 0;
	if (a.last_used != now)
		v->last_used = now;
	*id = a.backend_id;
	return 1;
}

/* Picks a backend for a new connection to the frontend svc (scope of the entry used):
 * affinity first, then Maglev (external clients of a MAGLEV frontend, by hash) or a random
 * slot. ak is the affinity key (rev_id and client filled in). */
static __always_inline int mn_select(const struct mn_svc_val *svc, __u8 scope, const struct mn_affinity_key *ak,
				     int maglev, __u32 hash, __u32 maglev_m, __u32 now, __u32 *id, struct mn_backend *be)
{
	__u32 *v;

	if ((svc->flags & MN_SVC_F_AFFINITY) && mn_affinity_get(ak, svc->affinity_timeout, now, id) &&
	    mn_backend_get(*id, be)) {
		mn_count(MN_CNT_AFFINITY_HIT);
		return 1;
	}
	if (maglev && (svc->flags & MN_SVC_F_MAGLEV) && maglev_m) {
		__u32 idx = svc->maglev_row * maglev_m + hash % maglev_m;

		v = bpf_map_lookup_elem(&mn_maglev, &idx);
	} else {
		struct mn_slot_key sk = {
			.rev_id = svc->rev_id,
			.slot = (__u16)(bpf_get_prandom_u32() % svc->count + 1),
			.scope = scope,
		};

		v = bpf_map_lookup_elem(&mn_slot, &sk);
	}
	if (!v)
		return 0;
	*id = *v;
	if (!mn_backend_get(*id, be))
		return 0;
	if (svc->flags & MN_SVC_F_AFFINITY) {
		struct mn_affinity_val a = { .backend_id = *id, .last_used = now };

		bpf_map_update_elem(&mn_affinity, ak, &a, BPF_ANY);
	}
	return 1;
}

#endif
