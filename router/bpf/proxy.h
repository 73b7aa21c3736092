/* metalnet service proxy: the maps shared by every BPF object, and their layouts.
 *
 * This header is the ABI between the C programs and the Rust control plane
 * (router/src/proxy/abi.rs encodes the same layouts byte for byte; a test checks the sizes).
 * Every map is pinned by name (LIBBPF_PIN_BY_NAME) under the proxy's bpffs directory, so a
 * restarted proxy and every object it loads share the same maps: maps are never recreated
 * and their ids never renumbered, and connections survive a restart.
 *
 * Conventions:
 * - Addresses are 16 bytes, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), so one set of maps
 *   serves both families.
 * - Addresses and ports are in network byte order; everything else in host order.
 * - Slots count from 1; count == 0 means "no usable backend".
 */
#ifndef METALNET_PROXY_H
#define METALNET_PROXY_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define MN_ADDR_LEN 16

/* --- frontends ---------------------------------------------------------------------- */

/* Which traffic a frontend entry serves. Every frontend has an EXTERNAL entry (scope 0).
 * When the Service answers in-cluster clients with a different backend set (iTP=Local, or
 * eTP=Local on an external frontend, where in-cluster clients may use every endpoint), the
 * EXTERNAL entry carries MN_SVC_F_HAS_INTERNAL and an INTERNAL entry (scope 1) holds the
 * in-cluster view. Socket-LB and pod-facing interfaces use INTERNAL when present; external
 * interfaces use EXTERNAL. */
#define MN_SCOPE_EXTERNAL 0
#define MN_SCOPE_INTERNAL 1

struct mn_svc_key {
	__u8 addr[MN_ADDR_LEN]; /* the VIP; all zeros (IPv4: ::ffff:0.0.0.0) = NodePort on any node address */
	__be16 port;
	__u8 proto;             /* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP */
	__u8 scope;             /* MN_SCOPE_* */
};                              /* 20 bytes */

/* Frontend kinds and behaviour. */
#define MN_SVC_F_CLUSTER_IP    (1 << 0)
#define MN_SVC_F_NODEPORT      (1 << 1)
#define MN_SVC_F_EXTERNAL_IP   (1 << 2)
#define MN_SVC_F_LOADBALANCER  (1 << 3)
#define MN_SVC_F_LOCAL         (1 << 4) /* this entry lists node-local backends only (eTP/iTP Local): no SNAT; count 0 -> drop */
#define MN_SVC_F_HAS_INTERNAL  (1 << 5) /* an INTERNAL-scope entry exists for in-cluster clients */
#define MN_SVC_F_AFFINITY      (1 << 6) /* sessionAffinity ClientIP, timeout in affinity_timeout */
#define MN_SVC_F_SRC_RANGE     (1 << 7) /* loadBalancerSourceRanges: check mn_src_range (external traffic only) */
#define MN_SVC_F_MAGLEV        (1 << 8) /* external traffic picks through mn_maglev row maglev_row */
#define MN_SVC_F_TERMINATING   (1 << 9) /* the slots are serving-but-terminating endpoints (no ready one left) */

struct mn_svc_val {
	__u32 rev_id;           /* the frontend's id: reverse NAT, affinity, source ranges */
	__u16 count;            /* backends in slots 1..count of this scope */
	__u16 flags;            /* MN_SVC_F_* */
	__u32 affinity_timeout; /* seconds */
	__u32 maglev_row;       /* row in mn_maglev when MN_SVC_F_MAGLEV */
};                              /* 16 bytes */

struct mn_slot_key {
	__u32 rev_id;
	__u16 slot;             /* 1..count */
	__u8 scope;             /* MN_SCOPE_* */
	__u8 pad;
};                              /* 8 bytes -> __u32 backend_id */

/* --- backends ----------------------------------------------------------------------- */

#define MN_BE_F_LOCAL       (1 << 0) /* on this node */
#define MN_BE_F_TERMINATING (1 << 1) /* serving but terminating */

struct mn_backend {
	__u8 addr[MN_ADDR_LEN];
	__be16 port;
	__u8 proto;
	__u8 flags;             /* MN_BE_F_* */
};                              /* 20 bytes, key: __u32 backend_id */

struct mn_rev_nat {
	__u8 addr[MN_ADDR_LEN]; /* the frontend address and port replies must come from */
	__be16 port;
	__u16 pad;
};                              /* 20 bytes, key: __u32 rev_id */

/* (backend_id, rev_id) present = that backend still serves that frontend: affinity entries
 * pointing elsewhere are ignored. */
struct mn_affinity_match_key {
	__u32 backend_id;
	__u32 rev_id;
};

/* --- per-connection state ------------------------------------------------------------ */

/* Conntrack for the per-packet path. Two entries per connection, three when masqueraded:
 * dir 0 (forward): key = the client's packet as received (client -> VIP),
 *                  val = the backend (nat_addr/nat_port) and, when masqueraded, the source
 *                  the node gives the connection (snat_addr/snat_port);
 * dir 1 (reply):   key = the backend's reply as seen at our egress (backend -> client),
 *                  or at ingress for this host's own connections balanced at egress,
 *                  val = the frontend to restore as source (nat_addr/nat_port);
 * dir 2 (snat):    key = the backend's reply to the masqueraded source as received
 *                  (backend -> snat_addr:snat_port), val = the client to restore as
 *                  destination (nat_addr/nat_port) and the frontend the client used
 *                  (snat_addr/snat_port), which names the forward entry that owns the port.
 * A TCP SYN without ACK always re-selects and rewrites both (a client reusing its source port
 * must be balanced afresh; the old dir 2 entry is then free to be taken over). */
struct mn_ct_key {
	__u8 saddr[MN_ADDR_LEN];
	__u8 daddr[MN_ADDR_LEN];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};                              /* 40 bytes */

#define MN_CT_DIR_FORWARD 0
#define MN_CT_DIR_REPLY   1
#define MN_CT_DIR_SNAT    2

#define MN_CT_F_MASQ    (1 << 0) /* the connection is masqueraded (remote backend, eTP=Cluster, or hairpin) */
#define MN_CT_F_CLOSING (1 << 1) /* FIN or RST seen */
#define MN_CT_F_SHARED_REPLY (1 << 2) /* masqueraded because another connection holds its reply tuple: no reply entry of its own */

struct mn_ct_val {
	__u8 nat_addr[MN_ADDR_LEN];
	__be16 nat_port;
	__u16 flags;            /* MN_CT_F_* */
	__u32 rev_id;
	__u32 backend_id;
	__u32 last_seen;        /* seconds, bpf_ktime_get_coarse_ns() / 1e9 */
	__u8 snat_addr[MN_ADDR_LEN];
	__be16 snat_port;       /* 0: not masqueraded */
	__u16 pad;
};                              /* 52 bytes */

/* Socket-LB: what getpeername/recvmsg must show for a socket translated at connect/sendmsg.
 * Keyed by the backend too, as an unconnected UDP socket picks a backend per datagram. */
struct mn_sock_rev_key {
	__u64 cookie;           /* bpf_get_socket_cookie() */
	__u8 addr[MN_ADDR_LEN]; /* the backend */
	__be16 port;
	__u8 pad[6];
};                              /* 32 bytes -> struct mn_rev_nat */

/* Fragmented datagrams: only the first fragment carries the ports. The data path records them
 * here, keyed by the fragments' common identity, so the later fragments follow the same
 * conntrack entry (their addresses rewritten, nothing else). IPv4 ids in the low 16 bits. */
struct mn_frag_key {
	__u8 saddr[MN_ADDR_LEN];
	__u8 daddr[MN_ADDR_LEN];
	__u32 id;               /* host order */
	__u8 proto;
	__u8 pad[3];
};                              /* 40 bytes */

struct mn_frag_val {
	__be16 sport;
	__be16 dport;
};                              /* 4 bytes */

/* sessionAffinity: ClientIP. The client is its address (per-packet path) or, under socket-LB,
 * its network namespace cookie (kind 1) in the first 8 bytes. */
struct mn_affinity_key {
	__u8 client[MN_ADDR_LEN];
	__u32 rev_id;
	__u8 kind;              /* 0 = client address, 1 = netns cookie */
	__u8 pad[3];
};                              /* 24 bytes */

struct mn_affinity_val {
	__u32 backend_id;
	__u32 last_used;        /* seconds, as mn_ct_val.last_seen */
};

/* loadBalancerSourceRanges, an LPM trie: prefixlen = 32 + the range's prefix length in
 * IPv6 terms (IPv4 ranges as ::ffff:0:0/96 + len). */
struct mn_src_range_key {
	__u32 prefixlen;
	__u32 rev_id;           /* big endian, so the trie compares it as a whole */
	__u8 addr[MN_ADDR_LEN];
};                              /* 24 bytes -> __u8 1 */

/* --- node and global configuration ---------------------------------------------------- */

/* Addresses of this node, for NodePort (the wildcard frontend applies to these only).
 * mn_node_addr: key __u8[16], value __u32 (0). */

/* In-cluster sources (--cluster-cidr, as kube-proxy's local detector): traffic from these or
 * from a node address is in-cluster and uses a frontend's INTERNAL entry when there is one;
 * loadBalancerSourceRanges and Maglev apply to the rest. LPM trie: prefixlen in IPv6 terms
 * (IPv4 as ::ffff:0:0/96 + len). */
struct mn_cidr_key {
	__u32 prefixlen;
	__u8 addr[MN_ADDR_LEN];
};                              /* 20 bytes -> __u8 1 */

struct mn_config {
	__u64 host_netns_cookie; /* --socket-lb=host-only: only sockets of this netns are translated */
	__u32 socket_lb;         /* 0 off, 1 all, 2 host-only */
	__u32 maglev_m;          /* Maglev table size (prime); rows of mn_maglev are this long */
	__u32 masq_mark;         /* unused: masquerading is done here, not by a netfilter rule */
	__u32 ct_timeout_tcp;    /* seconds an idle TCP entry is kept (LRU evicts earlier when full) */
	__u32 ct_timeout_other;  /* seconds for UDP and SCTP */
	__u16 snat_port_min;     /* source ports of masqueraded connections, host order; */
	__u16 snat_port_max;     /* 0/0: MN_SNAT_PORT_MIN..MN_SNAT_PORT_MAX */
};                               /* 32 bytes, mn_config[0] */

/* Counters, one u64 per index, per CPU. */
#define MN_CNT_LB_NEW          0  /* connections balanced (per-packet path) */
#define MN_CNT_SOCK_LB         1  /* connects/sendmsgs translated by socket-LB */
#define MN_CNT_REJECT          2  /* rejected: no backend */
#define MN_CNT_DROP_LOCAL      3  /* dropped: Local policy and no local backend */
#define MN_CNT_DROP_SRC_RANGE  4  /* dropped: source outside loadBalancerSourceRanges */
#define MN_CNT_CT_FULL         5  /* conntrack insert failed */
#define MN_CNT_AFFINITY_HIT    6
#define MN_CNT_REV_NAT         7  /* replies translated back */
#define MN_CNT_SNAT_NO_PORT    8  /* dropped: masquerade found no free source port */
#define MN_CNT_SNAT_NO_ROUTE   9  /* dropped: masquerade found no route (or source) to the backend */
#define MN_CNT_TTL_EXCEEDED   10  /* dropped: forwarded past the stack with its TTL (hop limit) run out */
#define MN_CNT_MAX             16

/* Masquerade's default source ports: above Linux's default ephemeral range (32768-60999),
 * so the node's own connections do not compete for them. */
#define MN_SNAT_PORT_MIN 61000
#define MN_SNAT_PORT_MAX 65535

/* --- sizes (the loader may override max_entries; these are the defaults) ------------- */
#ifndef MN_MAX_SERVICES
#define MN_MAX_SERVICES    65536
#endif
#ifndef MN_MAX_BACKENDS
#define MN_MAX_BACKENDS    65536
#endif
#ifndef MN_MAX_SLOTS
#define MN_MAX_SLOTS       262144
#endif
#ifndef MN_CT_SIZE
#define MN_CT_SIZE         524288
#endif
#ifndef MN_MAGLEV_ENTRIES
#define MN_MAGLEV_ENTRIES  (1021 * 256)
#endif

#define MN_MAP(_name, _type, _key, _val, _max, _flags)          \
	struct {                                                \
		__uint(type, _type);                            \
		__type(key, _key);                              \
		__type(value, _val);                            \
		__uint(max_entries, _max);                      \
		__uint(map_flags, _flags);                      \
		__uint(pinning, LIBBPF_PIN_BY_NAME);            \
	} _name SEC(".maps")

MN_MAP(mn_svc, BPF_MAP_TYPE_HASH, struct mn_svc_key, struct mn_svc_val, MN_MAX_SERVICES, 0);
MN_MAP(mn_slot, BPF_MAP_TYPE_HASH, struct mn_slot_key, __u32, MN_MAX_SLOTS, 0);
MN_MAP(mn_backend, BPF_MAP_TYPE_HASH, __u32, struct mn_backend, MN_MAX_BACKENDS, 0);
MN_MAP(mn_rev_nat, BPF_MAP_TYPE_HASH, __u32, struct mn_rev_nat, MN_MAX_SERVICES, 0);
MN_MAP(mn_affinity_match, BPF_MAP_TYPE_HASH, struct mn_affinity_match_key, __u8, MN_MAX_SLOTS, 0);
MN_MAP(mn_ct, BPF_MAP_TYPE_LRU_HASH, struct mn_ct_key, struct mn_ct_val, MN_CT_SIZE, 0);
MN_MAP(mn_sock_rev, BPF_MAP_TYPE_LRU_HASH, struct mn_sock_rev_key, struct mn_rev_nat, 262144, 0);
MN_MAP(mn_affinity, BPF_MAP_TYPE_LRU_HASH, struct mn_affinity_key, struct mn_affinity_val, 65536, 0);
MN_MAP(mn_src_range, BPF_MAP_TYPE_LPM_TRIE, struct mn_src_range_key, __u8, 16384, BPF_F_NO_PREALLOC);
MN_MAP(mn_maglev, BPF_MAP_TYPE_ARRAY, __u32, __u32, MN_MAGLEV_ENTRIES, 0);
MN_MAP(mn_node_addr, BPF_MAP_TYPE_HASH, __u8[MN_ADDR_LEN], __u32, 256, 0);
MN_MAP(mn_cluster_cidr, BPF_MAP_TYPE_LPM_TRIE, struct mn_cidr_key, __u8, 64, BPF_F_NO_PREALLOC);
MN_MAP(mn_config, BPF_MAP_TYPE_ARRAY, __u32, struct mn_config, 1, 0);
MN_MAP(mn_counters, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, __u64, MN_CNT_MAX, 0);
MN_MAP(mn_frag, BPF_MAP_TYPE_LRU_HASH, struct mn_frag_key, struct mn_frag_val, 8192, 0);

#endif
