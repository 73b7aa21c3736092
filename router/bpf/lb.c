/* metalnet service proxy: per-packet load balancing at TCX ingress and reverse NAT at egress.
 *
 * Ingress: a packet to a frontend (ClusterIP from outside, NodePort, LoadBalancer, externalIP)
 * is DNATed to a backend, with two conntrack entries in mn_ct: the forward one (the client's
 * tuple -> the backend) and the reply one (the backend's reply tuple -> the frontend). Egress:
 * a packet matching a reply entry gets the frontend back as its source.
 *
 * Masquerade (an outside client to a backend on another node, or hairpin) is done here too, so
 * the node needs no netfilter NAT (and no netfilter conntrack): at ingress the packet also gets
 * the node's address toward the backend and a source port allocated from mn_config's range as
 * its source, and is sent straight to the backend's next hop (the stack would take a packet
 * arriving with a local source address for a martian). A third conntrack entry (dir 2) keyed by
 * the backend's reply to that address and port gives the client back as destination at ingress,
 * where netfilter would un-masquerade, and the frontend as source, and the reply goes straight
 * to the client's next hop too: nothing of a masqueraded connection goes through netfilter.
 *
 * Handles Ethernet and L3 devices, IPv4 (options allowed) and IPv6 (the fragment header is the
 * only extension header understood), fragments (the first one's ports recorded in mn_frag for
 * the others), TCP, UDP and SCTP (SCTP only when the backend port equals the frontend port, since
 * its CRC32c cannot be updated incrementally). Everything else passes untouched. */
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include "common.h"

char _license[] SEC("license") = "GPL";

#define MN_IP_MF     0x2000
#define MN_IP_OFFSET 0x1fff

#define MN_TH_FIN 0x01
#define MN_TH_SYN 0x02
#define MN_TH_RST 0x04
#define MN_TH_ACK 0x10

struct mn_pkt {
	__u8 saddr[MN_ADDR_LEN];
	__u8 daddr[MN_ADDR_LEN];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 v6;
	__u8 tcp_flags;
	__u8 frag;        /* MN_FRAG_*: ports from mn_frag, no L4 header in this packet */
	__be32 seq;       /* TCP */
	__be32 ack;       /* TCP */
	__u32 l3off;
	__u32 l4off;
	__u32 l4len;      /* L4 header and payload, from the IP header; TCP: the payload only */
	__u32 csum_off;   /* 0: no L4 checksum to update (SCTP) */
};

#define MN_IPPROTO_ICMPV6 58
#define MN_NEXTHDR_FRAG   44
#define MN_PARSE_ICMP     1

#define MN_FRAG_NONE  0
#define MN_FRAG_FIRST 1 /* has the L4 header; its ports recorded in mn_frag */
#define MN_FRAG_LATER 2 /* no L4 header: ports from mn_frag, only addresses are rewritten */

/* A fragment: the first one records its ports, the later ones take them (or are left alone
 * when the first was not seen). */
static __always_inline int mn_frag_ports(struct mn_pkt *p, __u32 id, void *l4, void *end)
{
	struct mn_frag_key k = {};
	struct mn_frag_val v, *f;

	__builtin_memcpy(k.saddr, p->saddr, MN_ADDR_LEN);
	__builtin_memcpy(k.daddr, p->daddr, MN_ADDR_LEN);
	k.id = id;
	k.proto = p->proto;
	if (p->frag == MN_FRAG_FIRST) {
		__be16 *ports = l4;

		if ((void *)(ports + 2) > end)
			return -1;
		v.sport = ports[0];
		v.dport = ports[1];
		bpf_map_update_elem(&mn_frag, &k, &v, BPF_ANY);
		return 0;
	}
	f = bpf_map_lookup_elem(&mn_frag, &k);
	if (!f)
		return -1;
	p->sport = f->sport;
	p->dport = f->dport;
	p->csum_off = 0;
	return 0;
}

/* 0: TCP, UDP or SCTP parsed; MN_PARSE_ICMP: an ICMP or ICMPv6 message (type in tcp_flags,
 * l4off at its header); < 0: anything else, to pass untouched. */
static __always_inline int mn_parse(struct __sk_buff *skb, struct mn_pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth;
	__u64 head, net;
	int is_l3 = 0;
	void *l3, *l4;

	/* L3 devices (tun, WireGuard, IP tunnels) have no Ethernet header: there the network
	 * header is at the start of the data. Reading it as Ethernet would rewrite random bytes.
	 * An Ethernet frame's type always equals skb->protocol; when it does and the first byte
	 * could also start an IP header, the helper tells (about one Ethernet frame in eight,
	 * by the first byte of the destination MAC, pays for it). */
	if (data + ETH_HLEN > end)
		return -1;
	eth = data;
	if (eth->h_proto != skb->protocol) {
		is_l3 = 1;
	} else {
		__u8 v = *(__u8 *)data >> 4;

		if ((v == 4 && skb->protocol == bpf_htons(ETH_P_IP)) ||
		    (v == 6 && skb->protocol == bpf_htons(ETH_P_IPV6))) {
			if (bpf_skb_load_bytes_relative(skb, 0, &net, sizeof(net), BPF_HDR_START_NET))
				return -1;
			__builtin_memcpy(&head, data, sizeof(head));
			is_l3 = head == net;
		}
	}
	if (is_l3) {
		p->l3off = 0;
		l3 = data;
	} else {
		p->l3off = ETH_HLEN;
		l3 = data + ETH_HLEN;
	}
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		__u32 hl;

		if ((void *)(ip + 1) > end)
			return -1;
		hl = ip->ihl * 4;
		if (hl < sizeof(*ip))
			return -1;
		p->v6 = 0;
		p->proto = ip->protocol;
		mn_addr_set_v4(p->saddr, ip->saddr);
		mn_addr_set_v4(p->daddr, ip->daddr);
		p->l4off = p->l3off + hl;
		p->l4len = bpf_ntohs(ip->tot_len) - hl;
		l4 = (void *)ip + hl;
		if (ip->frag_off & bpf_htons(MN_IP_MF | MN_IP_OFFSET)) {
			p->frag = (ip->frag_off & bpf_htons(MN_IP_OFFSET)) ? MN_FRAG_LATER : MN_FRAG_FIRST;
			if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP && p->proto != IPPROTO_SCTP)
				return -1;
			if (mn_frag_ports(p, bpf_ntohs(ip->id), l4, end))
				return -1;
			if (p->frag == MN_FRAG_LATER)
				return 0;
		}
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > end)
			return -1;
		p->v6 = 1;
		p->proto = ip6->nexthdr;
		__builtin_memcpy(p->saddr, &ip6->saddr, MN_ADDR_LEN);
		__builtin_memcpy(p->daddr, &ip6->daddr, MN_ADDR_LEN);
		p->l4off = p->l3off + sizeof(*ip6);
		p->l4len = bpf_ntohs(ip6->payload_len);
		l4 = (void *)(ip6 + 1);
		/* The fragment header is the one extension header handled (others pass untouched). */
		if (p->proto == MN_NEXTHDR_FRAG) {
			struct {
				__u8 nexthdr;
				__u8 reserved;
				__be16 frag_off; /* offset << 3 | more fragments */
				__be32 id;
			} *fh = l4;

			if ((void *)(fh + 1) > end)
				return -1;
			p->proto = fh->nexthdr;
			p->l4off += sizeof(*fh);
			p->l4len = p->l4len > sizeof(*fh) ? p->l4len - sizeof(*fh) : 0;
			l4 = (void *)(fh + 1);
			if (fh->frag_off & bpf_htons(0xfff9)) {
				p->frag = (fh->frag_off & bpf_htons(0xfff8)) ? MN_FRAG_LATER : MN_FRAG_FIRST;
				if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP && p->proto != IPPROTO_SCTP)
					return -1;
				if (mn_frag_ports(p, bpf_ntohl(fh->id), l4, end))
					return -1;
				if (p->frag == MN_FRAG_LATER)
					return 0;
			}
		}
	} else {
		return -1;
	}

	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > end)
			return -1;
		p->sport = th->source;
		p->dport = th->dest;
		p->seq = th->seq;
		p->ack = th->ack_seq;
		p->tcp_flags = ((__u8 *)th)[13];
		/* A SYN's options are not data: the RST must acknowledge the SYN alone. */
		p->l4len = p->l4len > th->doff * 4 ? p->l4len - th->doff * 4 : 0;
		p->csum_off = p->l4off + offsetof(struct tcphdr, check);
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > end)
			return -1;
		p->sport = uh->source;
		p->dport = uh->dest;
		p->csum_off = p->l4off + offsetof(struct udphdr, check);
	} else if (p->proto == IPPROTO_SCTP) {
		__be16 *ports = l4;

		if ((void *)(ports + 2) > end)
			return -1;
		p->sport = ports[0];
		p->dport = ports[1];
		p->csum_off = 0;
	} else if ((p->proto == IPPROTO_ICMP && !p->v6) || (p->proto == MN_IPPROTO_ICMPV6 && p->v6)) {
		__u8 *icmp = l4;

		/* Type, code, checksum and 4 more bytes before an error's quoted packet. */
		if ((void *)(icmp + 8) > end)
			return -1;
		p->tcp_flags = icmp[0];
		return MN_PARSE_ICMP;
	} else {
		return -1;
	}
	return 0;
}

/* Rewrites the destination (dst) or source address and port, checksums included. The helpers
 * know CHECKSUM_PARTIAL packets (pseudo-header only), hence no hand-made arithmetic. */
static __noinline int mn_nat(struct __sk_buff *skb, const struct mn_pkt *p, int dst, const __u8 *addr,
				  __be16 port)
{
	const __u8 *old = dst ? p->daddr : p->saddr;
	__be16 old_port = dst ? p->dport : p->sport;
	__u64 mangled = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (!p->v6) {
		__be32 o = mn_word(old, 3), n = mn_word(addr, 3);
		__u32 off = p->l3off + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));

		if (!mn_is_v4mapped(addr))
			return TC_ACT_SHOT;
		if (o != n) {
			if (p->csum_off &&
			    bpf_l4_csum_replace(skb, p->csum_off, o, n, BPF_F_PSEUDO_HDR | mangled | sizeof(n)))
				return TC_ACT_SHOT;
			if (bpf_l3_csum_replace(skb, p->l3off + offsetof(struct iphdr, check), o, n, sizeof(n)))
				return TC_ACT_SHOT;
			if (bpf_skb_store_bytes(skb, off, &n, sizeof(n), 0))
				return TC_ACT_SHOT;
		}
	} else {
		__u8 o[MN_ADDR_LEN], n[MN_ADDR_LEN];
		__u32 off = p->l3off + (dst ? offsetof(struct ipv6hdr, daddr) : offsetof(struct ipv6hdr, saddr));

		if (mn_is_v4mapped(addr))
			return TC_ACT_SHOT;
		__builtin_memcpy(o, old, MN_ADDR_LEN);
		__builtin_memcpy(n, addr, MN_ADDR_LEN);
		if (!mn_addr_eq(o, n)) {
			if (p->csum_off) {
				__s64 d = bpf_csum_diff((__be32 *)o, MN_ADDR_LEN, (__be32 *)n, MN_ADDR_LEN, 0);

				if (bpf_l4_csum_replace(skb, p->csum_off, 0, d, BPF_F_PSEUDO_HDR | mangled))
					return TC_ACT_SHOT;
			}
			if (bpf_skb_store_bytes(skb, off, n, MN_ADDR_LEN, 0))
				return TC_ACT_SHOT;
		}
	}
	if (p->frag == MN_FRAG_LATER)
		return TC_ACT_OK;
	if (old_port != port) {
		if (!p->csum_off)
			return TC_ACT_SHOT;
		if (bpf_l4_csum_replace(skb, p->csum_off, old_port, port, mangled | sizeof(port)))
			return TC_ACT_SHOT;
		if (bpf_skb_store_bytes(skb, p->l4off + (dst ? 2 : 0), &port, sizeof(port), 0))
			return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

static __always_inline __u16 mn_csum_fold(__s64 sum)
{
	__u32 c = (__u32)sum;

	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)~c;
}

struct mn_tcp_rst {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff;  /* data offset << 4 */
	__u8 flags;
	__be16 window;
	__be16 check;
	__be16 urg_ptr;
};

/* The sender's frame with the addresses swapped, for an answer built in place. */
static __always_inline int mn_eth_reply(struct __sk_buff *skb, struct ethhdr *eth)
{
	__u8 tmp[ETH_ALEN];

	if (bpf_skb_load_bytes(skb, 0, eth, sizeof(*eth)))
		return -1;
	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
	return 0;
}

/* The IPv4 header of a reply from the frontend back to the client, carrying len bytes of
 * proto, with its checksum. */
static __always_inline void mn_ip4_reply(struct iphdr *ip, const struct mn_pkt *p, __u8 proto, __u16 len)
{
	ip->version = 4;
	ip->ihl = 5;
	ip->tot_len = bpf_htons(sizeof(*ip) + len);
	ip->ttl = 64;
	ip->protocol = proto;
	ip->saddr = mn_word(p->daddr, 3);
	ip->daddr = mn_word(p->saddr, 3);
	ip->check = mn_csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)ip, sizeof(*ip), 0));
}

/* The IPv6 header of such a reply; returns the sum of its pseudo-header, which the L4
 * checksum starts from. */
static __always_inline __s64 mn_ip6_reply(struct ipv6hdr *ip6, const struct mn_pkt *p, __u8 nexthdr, __u16 len)
{
	struct {
		__u8 saddr[MN_ADDR_LEN];
		__u8 daddr[MN_ADDR_LEN];
		__be32 len;
		__be32 proto;
	} ph;

	ip6->version = 6;
	ip6->payload_len = bpf_htons(len);
	ip6->nexthdr = nexthdr;
	ip6->hop_limit = 64;
	__builtin_memcpy(&ip6->saddr, p->daddr, MN_ADDR_LEN);
	__builtin_memcpy(&ip6->daddr, p->saddr, MN_ADDR_LEN);
	__builtin_memcpy(ph.saddr, p->daddr, MN_ADDR_LEN);
	__builtin_memcpy(ph.daddr, p->saddr, MN_ADDR_LEN);
	ph.len = bpf_htonl(len);
	ph.proto = bpf_htonl(nexthdr);
	return bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
}

/* Replaces the packet with eth, l3 and l4 and sends it back where it came from: redirect_flags
 * 0 at ingress (out the interface it came in on), BPF_F_INGRESS at egress (back into this host). */
static __always_inline int mn_send_back(struct __sk_buff *skb, const struct ethhdr *eth,
					const void *l3, __u32 l3len, const void *l4, __u32 l4len,
					__u64 redirect_flags)
{
	if (bpf_skb_change_tail(skb, ETH_HLEN + l3len + l4len, 0))
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, l3, l3len, 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + l3len, l4, l4len, 0) ||
	    bpf_skb_store_bytes(skb, 0, eth, sizeof(*eth), 0))
		return TC_ACT_SHOT;
	skb->mark = 0;
	return bpf_redirect(skb->ifindex, redirect_flags);
}

/* No backend: a TCP SYN gets a RST|ACK built in place and sent back where it came from
 * (REJECT with tcp-reset: the client sees ECONNREFUSED at once); a segment of a connection
 * whose backend is gone gets a RST at its acknowledgment number, which the client accepts
 * (RFC 793), instead of retransmitting into the void. */
static __noinline int mn_reject_tcp(struct __sk_buff *skb, const struct mn_pkt *p, __u64 redirect_flags)
{
	struct ethhdr eth;
	struct mn_tcp_rst th = {};
	__s64 sum;

	if (mn_eth_reply(skb, &eth))
		return TC_ACT_SHOT;

	th.source = p->dport;
	th.dest = p->sport;
	th.doff = 5 << 4;
	if (p->tcp_flags & MN_TH_ACK) {
		th.seq = p->ack;
		th.flags = MN_TH_RST;
	} else {
		/* The SYN counts one, plus any data it carried. */
		th.ack_seq = bpf_htonl(bpf_ntohl(p->seq) + 1 + p->l4len);
		th.flags = MN_TH_RST | MN_TH_ACK;
	}

	if (!p->v6) {
		struct iphdr ip = {};
		struct {
			__be32 saddr;
			__be32 daddr;
			__u8 zero;
			__u8 proto;
			__be16 len;
		} ph;

		mn_ip4_reply(&ip, p, IPPROTO_TCP, sizeof(th));
		ph.saddr = ip.saddr;
		ph.daddr = ip.daddr;
		ph.zero = 0;
		ph.proto = IPPROTO_TCP;
		ph.len = bpf_htons(sizeof(th));
		sum = bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
		th.check = mn_csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&th, sizeof(th), sum));
		return mn_send_back(skb, &eth, &ip, sizeof(ip), &th, sizeof(th), redirect_flags);
	} else {
		struct ipv6hdr ip6 = {};

		sum = mn_ip6_reply(&ip6, p, IPPROTO_TCP, sizeof(th));
		th.check = mn_csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&th, sizeof(th), sum));
		return mn_send_back(skb, &eth, &ip6, sizeof(ip6), &th, sizeof(th), redirect_flags);
	}
}

#define MN_ICMP_DEST_UNREACH  3
#define MN_ICMP_PORT_UNREACH  3
#define MN_ICMP_TIME_EXCEEDED 11
#define MN_ICMP6_DEST_UNREACH 1
#define MN_ICMP6_PORT_UNREACH 4
#define MN_ICMP6_TIME_EXCEED  3

/* The ICMP errors this program sends itself. */
#define MN_ERR_PORT_UNREACH  0 /* no backend for a UDP datagram */
#define MN_ERR_TIME_EXCEEDED 1 /* TTL ran out on a packet forwarded past the stack */

/* An ICMP (ICMPv6) error about the packet as received, from its destination (the frontend,
 * or the masquerade address of a reply), quoting its IP header and first 8 bytes: port
 * unreachable as kube-proxy's REJECT sends, time exceeded as forwarding sends. The code of
 * both is 0 but for IPv4's port unreachable. */
static __noinline int mn_icmp_back(struct __sk_buff *skb, const struct mn_pkt *p, int err, __u64 redirect_flags)
{
	struct ethhdr eth;
	__s64 sum;

	if (mn_eth_reply(skb, &eth))
		return TC_ACT_SHOT;
	if (!p->v6) {
		struct iphdr ip = {};
		struct {
			__u8 type;
			__u8 code;
			__be16 check;
			__be32 unused;
			__u8 quote[sizeof(struct iphdr) + 8];
		} ic = {};

		/* Only option-less headers are quoted (the quote has a fixed size). */
		if (p->l4off != ETH_HLEN + sizeof(struct iphdr))
			return TC_ACT_SHOT;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, ic.quote, sizeof(ic.quote)))
			return TC_ACT_SHOT;
		ic.type = err == MN_ERR_TIME_EXCEEDED ? MN_ICMP_TIME_EXCEEDED : MN_ICMP_DEST_UNREACH;
		ic.code = err == MN_ERR_TIME_EXCEEDED ? 0 : MN_ICMP_PORT_UNREACH;
		ic.check = mn_csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&ic, sizeof(ic), 0));
		mn_ip4_reply(&ip, p, IPPROTO_ICMP, sizeof(ic));
		return mn_send_back(skb, &eth, &ip, sizeof(ip), &ic, sizeof(ic), redirect_flags);
	} else {
		struct ipv6hdr ip6 = {};
		struct {
			__u8 type;
			__u8 code;
			__be16 check;
			__be32 unused;
			__u8 quote[sizeof(struct ipv6hdr) + 8];
		} ic = {};

		if (bpf_skb_load_bytes(skb, ETH_HLEN, ic.quote, sizeof(ic.quote)))
			return TC_ACT_SHOT;
		ic.type = err == MN_ERR_TIME_EXCEEDED ? MN_ICMP6_TIME_EXCEED : MN_ICMP6_DEST_UNREACH;
		ic.code = err == MN_ERR_TIME_EXCEEDED ? 0 : MN_ICMP6_PORT_UNREACH;
		sum = mn_ip6_reply(&ip6, p, MN_IPPROTO_ICMPV6, sizeof(ic));
		ic.check = mn_csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&ic, sizeof(ic), sum));
		return mn_send_back(skb, &eth, &ip6, sizeof(ip6), &ic, sizeof(ic), redirect_flags);
	}
}

/* A frontend without backends: RST for a TCP SYN, ICMP port unreachable for UDP, a drop for
 * the rest (a TCP segment of no connection, SCTP). */
static __always_inline int mn_reject(struct __sk_buff *skb, const struct mn_pkt *p, __u64 redirect_flags)
{
	mn_count(MN_CNT_REJECT);
	/* The answers are built as Ethernet frames. */
	if (p->l3off != ETH_HLEN)
		return TC_ACT_SHOT;
	/* Never answer a RST (two proxies would ping-pong). */
	if (p->proto == IPPROTO_TCP && !(p->tcp_flags & MN_TH_RST) &&
	    (p->tcp_flags & (MN_TH_SYN | MN_TH_ACK)) != (MN_TH_SYN | MN_TH_ACK))
		return mn_reject_tcp(skb, p, redirect_flags);
	if (p->proto == IPPROTO_UDP)
		return mn_icmp_back(skb, p, MN_ERR_PORT_UNREACH, redirect_flags);
	return TC_ACT_SHOT;
}

static __always_inline void mn_ct_key_of(struct mn_ct_key *k, const struct mn_pkt *p, __u8 dir)
{
	__builtin_memcpy(k->saddr, p->saddr, MN_ADDR_LEN);
	__builtin_memcpy(k->daddr, p->daddr, MN_ADDR_LEN);
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
	k->dir = dir;
	k->pad = 0;
}

static __always_inline int mn_ct_alive(const struct mn_ct_val *c, __u8 proto, const struct mn_config *cfg, __u32 now)
{
	__u32 t = proto == IPPROTO_TCP ? cfg->ct_timeout_tcp : cfg->ct_timeout_other;

	if (!t)
		t = proto == IPPROTO_TCP ? MN_CT_DEFAULT_TCP : MN_CT_DEFAULT_OTHER;
	if ((c->flags & MN_CT_F_CLOSING) && t > MN_CT_CLOSING_TIMEOUT)
		t = MN_CT_CLOSING_TIMEOUT;
	return now - c->last_seen <= t;
}

/* Refreshes a conntrack entry in place: last_seen (written only when it changes, to keep
 * the cache line clean on busy flows) and the closing flag on FIN or RST. */
static __always_inline void mn_ct_touch(struct mn_ct_val *v, const struct mn_ct_val *c, const struct mn_pkt *p, __u32 now)
{
	if (c->last_seen != now)
		v->last_seen = now;
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (MN_TH_FIN | MN_TH_RST)) && !(c->flags & MN_CT_F_CLOSING))
		v->flags = c->flags | MN_CT_F_CLOSING;
}

static __always_inline __u32 mn_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = (k << 15) | (k >> 17);
	k *= 0x1b873593;
	h ^= k;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

/* Maglev's flow hash: the same on every node (no per-node seed), so every node picks the same
 * backend for a flow. Without the source port under affinity, so a client keeps its backend. */
static __noinline __u32 mn_flow_hash(const struct mn_pkt *p, int with_sport)
{
	__u32 h = 0x6d6e6c62;
	int i;

#pragma unroll
	for (i = 0; i < 4; i++)
		h = mn_mix(h, mn_word(p->saddr, i));
#pragma unroll
	for (i = 0; i < 4; i++)
		h = mn_mix(h, mn_word(p->daddr, i));
	h = mn_mix(h, ((__u32)(with_sport ? p->sport : 0) << 16) | p->dport);
	h = mn_mix(h, p->proto);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

#define MN_NO_ENTRY (-1)
#define MN_REJECT   (-2)

/* What a new connection's conntrack entries carry besides the tuple and the backend. */
struct mn_new {
	__u8 snat_addr[MN_ADDR_LEN]; /* masqueraded: the node's address toward the backend */
	__be16 snat_port;            /* masqueraded: the source port allocated; 0 otherwise */
	__u16 flags;                 /* MN_CT_F_* */
	__u32 ifindex;               /* masqueraded: the interface toward the backend */
	__u32 rev_id;
	__u32 backend_id;
	__u32 now;
};

/* The node's route to dst for a masqueraded packet of p: the interface and the source address
 * (the route's preferred source, else the interface's). A lookup as if forwarding from the
 * interface the packet came in on: an output lookup would be pinned to that interface (its
 * ifindex is the output interface then), and the backend is usually behind another one.
 * A packet too big for the route still gets it: the device drops it, as forwarding would
 * (without the ICMP the stack would send). */
static __noinline int mn_snat_route(struct __sk_buff *skb, const struct mn_pkt *p, const __u8 *dst, __u8 *src,
				    __u32 *ifindex)
{
	struct bpf_fib_lookup fib = {};
	long rc;

	fib.ifindex = skb->ifindex;
	fib.l4_protocol = p->proto;
	if (!p->v6) {
		fib.family = 2; /* AF_INET */
		fib.ipv4_src = mn_word(p->saddr, 3);
		fib.ipv4_dst = mn_word(dst, 3);
	} else {
		fib.family = 10; /* AF_INET6 */
		__builtin_memcpy(fib.ipv6_src, p->saddr, MN_ADDR_LEN);
		__builtin_memcpy(fib.ipv6_dst, dst, MN_ADDR_LEN);
	}
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_SKIP_NEIGH);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return -1;
	if (!p->v6) {
		if (!fib.ipv4_src)
			return -1;
		mn_addr_set_v4(src, fib.ipv4_src);
	} else {
		__builtin_memcpy(src, fib.ipv6_src, MN_ADDR_LEN);
	}
	*ifindex = fib.ifindex;
	return 0;
}

/* Whether a packet of p fits the MTU toward ifindex, or may be fragmented on the way (IPv4
 * without DF). When not, the stack must have it: it drops it with the ICMP fragmentation
 * needed / packet too big the client's path MTU discovery needs (the quoted packet shows the
 * frontend once mn_icmp_rev is through with it at egress), where a redirect would drop it
 * silently. */
static __always_inline int mn_snat_fits(struct __sk_buff *skb, const struct mn_pkt *p, __u32 ifindex)
{
	__u32 mtu = 0;
	__be16 frag_off;

	if (bpf_check_mtu(skb, ifindex, &mtu, 0, 0) != BPF_MTU_CHK_RET_FRAG_NEEDED)
		return 1;
	if (p->v6)
		return 0;
	if (bpf_skb_load_bytes(skb, p->l3off + offsetof(struct iphdr, frag_off), &frag_off, sizeof(frag_off)))
		return 0;
	return !(frag_off & bpf_htons(0x4000));
}

/* Whether a packet about to be forwarded past the stack has no hop left: forwarding would
 * drop it and answer with an ICMP time exceeded, so the caller answers before translating
 * (the error quotes the packet as the sender sent it, so traceroute recognises it). */
static __always_inline int mn_ttl_expiring(struct __sk_buff *skb, const struct mn_pkt *p)
{
	__u8 ttl;
	__u32 off = p->v6 ? offsetof(struct ipv6hdr, hop_limit) : offsetof(struct iphdr, ttl);

	if (bpf_skb_load_bytes(skb, p->l3off + off, &ttl, 1))
		return 0;
	return ttl <= 1;
}

/* The ICMP time exceeded for a packet mn_ttl_expiring found, sent back where it came from
 * (these packets all arrive at ingress). Counted; without an Ethernet header, only dropped. */
static __always_inline int mn_time_exceeded(struct __sk_buff *skb, const struct mn_pkt *p)
{
	mn_count(MN_CNT_TTL_EXCEEDED);
	if (p->l3off != ETH_HLEN)
		return TC_ACT_SHOT;
	return mn_icmp_back(skb, p, MN_ERR_TIME_EXCEEDED, 0);
}

/* A packet this node forwards past its stack, to ifindex's next hop: its TTL (hop limit)
 * decremented first, as forwarding would. The callers answered a packet with no hop left
 * (mn_ttl_expiring) before translating it, so every packet here has one to spare. */
static __noinline int mn_redirect_forward(struct __sk_buff *skb, const struct mn_pkt *p, __u32 ifindex)
{
	__u8 ttl;

	if (!p->v6) {
		if (bpf_skb_load_bytes(skb, p->l3off + offsetof(struct iphdr, ttl), &ttl, 1))
			return TC_ACT_SHOT;
		/* The TTL is the high byte of the header checksum's word at offset 8. */
		if (bpf_l3_csum_replace(skb, p->l3off + offsetof(struct iphdr, check), bpf_htons((__u16)ttl << 8),
					bpf_htons((__u16)(ttl - 1) << 8), sizeof(__u16)))
			return TC_ACT_SHOT;
		ttl--;
		if (bpf_skb_store_bytes(skb, p->l3off + offsetof(struct iphdr, ttl), &ttl, 1, 0))
			return TC_ACT_SHOT;
	} else {
		if (bpf_skb_load_bytes(skb, p->l3off + offsetof(struct ipv6hdr, hop_limit), &ttl, 1))
			return TC_ACT_SHOT;
		ttl--;
		if (bpf_skb_store_bytes(skb, p->l3off + offsetof(struct ipv6hdr, hop_limit), &ttl, 1, 0))
			return TC_ACT_SHOT;
	}
	return bpf_redirect_neigh(ifindex, NULL, 0, 0);
}

/* The masqueraded source on a packet already DNATed to backend, then the packet straight to
 * the backend's next hop (or, too big for it, to the stack: see mn_snat_fits). */
static __noinline int mn_snat_out(struct __sk_buff *skb, const struct mn_pkt *p, const __u8 *saddr, __be16 sport,
				  const __u8 *backend)
{
	__u8 src[MN_ADDR_LEN];
	__u32 ifindex = 0;
	int r;

	if (mn_snat_route(skb, p, backend, src, &ifindex)) {
		mn_count(MN_CNT_SNAT_NO_ROUTE);
		return TC_ACT_SHOT;
	}
	if (!mn_snat_fits(skb, p, ifindex))
		return TC_ACT_OK;
	r = mn_nat(skb, p, 0, saddr, sport);
	if (r != TC_ACT_OK)
		return r;
	return mn_redirect_forward(skb, p, ifindex);
}

static __always_inline void mn_snat_range(const struct mn_config *cfg, __u32 *lo, __u32 *hi)
{
	*lo = cfg->snat_port_min;
	*hi = cfg->snat_port_max;
	if (!*lo) {
		*lo = MN_SNAT_PORT_MIN;
		*hi = MN_SNAT_PORT_MAX;
	}
	if (*hi < *lo)
		*hi = *lo;
}

/* Is port (network order) one masquerade allocates? Only those are looked up as dir 2 (and
 * SCTP's, whose ports masquerade keeps). */
static __always_inline int mn_snat_port(__be16 port)
{
	__u32 zero = 0, lo, hi, h = bpf_ntohs(port);
	struct mn_config *cfg = bpf_map_lookup_elem(&mn_config, &zero);

	if (!cfg)
		return 0;
	mn_snat_range(cfg, &lo, &hi);
	return h >= lo && h <= hi;
}

#define MN_SNAT_LIVE    0
#define MN_SNAT_OVER    1
#define MN_SNAT_CLOSING 2

/* Is the connection holding the dir 2 entry rk (value r) over: its forward entry gone, moved
 * to another port, expired (closing ones after MN_CT_CLOSING_TIMEOUT, the peers' last ACKs),
 * or being replaced by the new one (nv: a client reusing its source port on a new SYN)? Then
 * another may take the port. MN_SNAT_CLOSING: a FIN or RST was seen less than that ago. */
static __always_inline int mn_snat_over(const struct mn_ct_key *rk, const struct mn_ct_val *r,
					const struct mn_ct_val *nv, const struct mn_config *cfg, __u32 now)
{
	struct mn_ct_key fk = {};
	struct mn_ct_val *f;

	if (r->nat_port == nv->nat_port && r->snat_port == nv->snat_port && mn_addr_eq(r->nat_addr, nv->nat_addr) &&
	    mn_addr_eq(r->snat_addr, nv->snat_addr))
		return MN_SNAT_OVER;

	__builtin_memcpy(fk.saddr, r->nat_addr, MN_ADDR_LEN);
	__builtin_memcpy(fk.daddr, r->snat_addr, MN_ADDR_LEN);
	fk.sport = r->nat_port;
	fk.dport = r->snat_port;
	fk.proto = rk->proto;
	fk.dir = MN_CT_DIR_FORWARD;
	f = bpf_map_lookup_elem(&mn_ct, &fk);
	if (!f)
		return MN_SNAT_OVER;
	if (f->snat_port != rk->dport || !mn_addr_eq(f->snat_addr, rk->daddr) || f->nat_port != rk->sport ||
	    !mn_addr_eq(f->nat_addr, rk->saddr))
		return MN_SNAT_OVER;
	if (!mn_ct_alive(f, rk->proto, cfg, now))
		return MN_SNAT_OVER;
	return (f->flags & MN_CT_F_CLOSING) ? MN_SNAT_CLOSING : MN_SNAT_LIVE;
}

#define MN_SNAT_TRIES 16

/* Masquerade for a new connection of p to backend be: the source address (the node's toward
 * the backend), then a source port whose dir 2 entry this connection can own: first the one
 * the flow's hash names, then random ones, each claimed with a BPF_NOEXIST insert (so two
 * CPUs never share one), an entry in the way taken over only when its connection is over.
 * Fills n's snat_addr, snat_port and ifindex; -1 when no route or no free port. */
static __noinline int mn_snat_new(struct __sk_buff *skb, const struct mn_pkt *p, const struct mn_backend *be,
				  struct mn_new *n)
{
	struct mn_config *cfg;
	struct mn_ct_key rk = {};
	struct mn_ct_val rv = {};
	struct mn_ct_val *v;
	__u32 lo, hi, range, off, i, tries = MN_SNAT_TRIES, zero = 0;
	__be16 closing = 0;
	int state;

	if (mn_snat_route(skb, p, be->addr, n->snat_addr, &n->ifindex)) {
		mn_count(MN_CNT_SNAT_NO_ROUTE);
		return -1;
	}
	/* An array's only element: always there. */
	cfg = bpf_map_lookup_elem(&mn_config, &zero);
	if (!cfg)
		return -1;
	mn_snat_range(cfg, &lo, &hi);
	/* SCTP's CRC32c cannot follow a port change (it covers no addresses): the client's port
	 * is kept, or the connection dropped. */
	if (p->proto == IPPROTO_SCTP) {
		lo = hi = bpf_ntohs(p->sport);
		tries = 1;
	}
	range = hi - lo + 1;

	__builtin_memcpy(rk.saddr, be->addr, MN_ADDR_LEN);
	__builtin_memcpy(rk.daddr, n->snat_addr, MN_ADDR_LEN);
	rk.sport = be->port;
	rk.proto = p->proto;
	rk.dir = MN_CT_DIR_SNAT;
	__builtin_memcpy(rv.nat_addr, p->saddr, MN_ADDR_LEN);
	rv.nat_port = p->sport;
	__builtin_memcpy(rv.snat_addr, p->daddr, MN_ADDR_LEN);
	rv.snat_port = p->dport;
	rv.flags = n->flags;
	rv.rev_id = n->rev_id;
	rv.backend_id = n->backend_id;
	rv.last_seen = n->now;

	off = mn_flow_hash(p, 1) % range;
	for (i = 0; i < MN_SNAT_TRIES && i < tries; i++) {
		rk.dport = bpf_htons((__u16)(lo + off));
		if (!bpf_map_update_elem(&mn_ct, &rk, &rv, BPF_NOEXIST)) {
			n->snat_port = rk.dport;
			return 0;
		}
		v = bpf_map_lookup_elem(&mn_ct, &rk);
		state = v ? mn_snat_over(&rk, v, &rv, cfg, n->now) : MN_SNAT_LIVE;
		if (state == MN_SNAT_OVER && !bpf_map_update_elem(&mn_ct, &rk, &rv, BPF_EXIST)) {
			n->snat_port = rk.dport;
			return 0;
		}
		if (state == MN_SNAT_CLOSING && !closing)
			closing = rk.dport;
		off = bpf_get_prandom_u32() % range;
	}
	/* No free port among the tries, as when closed connections (FIN seen, their last ACKs may
	 * still come) hold the range at a high rate of new ones: a closing connection's port is
	 * taken rather than the new one dropped, as netfilter reuses the tuples of connections in
	 * TIME_WAIT when it runs short. A live connection's port never is. */
	if (closing) {
		rk.dport = closing;
		if (!bpf_map_update_elem(&mn_ct, &rk, &rv, BPF_EXIST)) {
			n->snat_port = rk.dport;
			return 0;
		}
	}
	mn_count(MN_CNT_SNAT_NO_PORT);
	return -1;
}

/* A packet from a backend to a masqueraded connection's source: the client back as its
 * destination and the frontend the client used as its source (the dir 2 entry keeps both),
 * sent straight to the client's next hop, as the connection's packets to the backend went.
 * Through the stack, netfilter would see the reply as a new flow from a pod to the outside
 * (another masquerade rule of the node, flannel's say, could take it), and the frontend as a
 * source is a local address forwarding refuses. Without a route: the client as destination
 * only, to the stack (the reply entry gives the frontend at egress). MN_NO_ENTRY when the
 * packet is not one. */
static __noinline int mn_snat_rev(struct __sk_buff *skb, struct mn_pkt *p, __u32 now)
{
	struct mn_ct_key k;
	struct mn_ct_val *v, c;
	__u8 src[MN_ADDR_LEN];
	__u32 ifindex = 0;
	int r;

	mn_ct_key_of(&k, p, MN_CT_DIR_SNAT);
	v = bpf_map_lookup_elem(&mn_ct, &k);
	if (!v)
		return MN_NO_ENTRY;
	c = *v;
	if (mn_ttl_expiring(skb, p))
		return mn_time_exceeded(skb, p);
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & MN_TH_RST)) {
		/* The backend reset the connection: nothing of it follows, so its entries go now
		 * and its port is free at once (a client closing connections by reset would
		 * otherwise hold every port for MN_CT_CLOSING_TIMEOUT). */
		bpf_map_delete_elem(&mn_ct, &k);
		__builtin_memcpy(k.daddr, c.nat_addr, MN_ADDR_LEN);
		k.dport = c.nat_port;
		k.dir = MN_CT_DIR_REPLY;
		if (!(c.flags & MN_CT_F_SHARED_REPLY))
			bpf_map_delete_elem(&mn_ct, &k);
		__builtin_memcpy(k.saddr, c.nat_addr, MN_ADDR_LEN);
		__builtin_memcpy(k.daddr, c.snat_addr, MN_ADDR_LEN);
		k.sport = c.nat_port;
		k.dport = c.snat_port;
		k.dir = MN_CT_DIR_FORWARD;
		bpf_map_delete_elem(&mn_ct, &k);
	} else {
		mn_ct_touch(v, &c, p, now);
	}
	mn_count(MN_CNT_REV_NAT);
	r = mn_nat(skb, p, 1, c.nat_addr, c.nat_port);
	if (r != TC_ACT_OK || mn_snat_route(skb, p, c.nat_addr, src, &ifindex))
		return r;
	r = mn_nat(skb, p, 0, c.snat_addr, c.snat_port);
	if (r != TC_ACT_OK)
		return r;
	return mn_redirect_forward(skb, p, ifindex);
}

/* An established connection: MN_NO_ENTRY when there is no live entry for the packet's tuple
 * (or its backend is gone), else the verdict after DNAT. */
static __noinline int mn_ct_forward(struct __sk_buff *skb, struct mn_pkt *p, __u32 now)
{
	struct mn_config cfg;
	struct mn_ct_key fk;
	struct mn_ct_val *v, c;
	int r;

	mn_ct_key_of(&fk, p, 0);
	v = bpf_map_lookup_elem(&mn_ct, &fk);
	if (!v)
		return MN_NO_ENTRY;
	c = *v;
	mn_config_get(&cfg);
	if (!mn_ct_alive(&c, p->proto, &cfg, now) || !bpf_map_lookup_elem(&mn_backend, &c.backend_id))
		return MN_NO_ENTRY;
	/* Masqueraded connections are forwarded past the stack (this host's own never are). */
	if (c.snat_port && mn_ttl_expiring(skb, p))
		return mn_time_exceeded(skb, p);
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & MN_TH_RST)) {
		/* A reset ends the connection: nothing of it is translated after this packet, so
		 * its entries go now rather than linger until LRU eviction (which makes every new
		 * connection's inserts scan for victims once the map is full), and a masqueraded
		 * one's port is free at once. */
		bpf_map_delete_elem(&mn_ct, &fk);
		mn_ct_key_of(&fk, p, 1);
		__builtin_memcpy(fk.saddr, c.nat_addr, MN_ADDR_LEN);
		__builtin_memcpy(fk.daddr, p->saddr, MN_ADDR_LEN);
		fk.sport = c.nat_port;
		fk.dport = p->sport;
		if (!(c.flags & MN_CT_F_SHARED_REPLY))
			bpf_map_delete_elem(&mn_ct, &fk);
		if (c.snat_port) {
			__builtin_memcpy(fk.daddr, c.snat_addr, MN_ADDR_LEN);
			fk.dport = c.snat_port;
			fk.dir = MN_CT_DIR_SNAT;
			bpf_map_delete_elem(&mn_ct, &fk);
		}
	} else {
		mn_ct_touch(v, &c, p, now);
	}
	r = mn_nat(skb, p, 1, c.nat_addr, c.nat_port);
	if (r != TC_ACT_OK || !c.snat_port)
		return r;
	return mn_snat_out(skb, p, c.snat_addr, c.snat_port, c.nat_addr);
}

/* Conntrack for a new connection: the forward entry (the client's tuple -> the backend, and
 * the masqueraded source if any) and the reply entry (the backend's reply -> the address and
 * port the client used: a node address for NodePort, not the wildcard). The dir 2 entry of a
 * masqueraded connection is made by mn_snat_new. */
static __noinline void mn_ct_create(const struct mn_pkt *p, const struct mn_backend *be, const struct mn_new *n)
{
	struct mn_ct_key k;
	struct mn_ct_val v = {};
	int err;

	mn_ct_key_of(&k, p, 0);
	__builtin_memcpy(v.nat_addr, be->addr, MN_ADDR_LEN);
	v.nat_port = be->port;
	v.flags = n->flags;
	v.rev_id = n->rev_id;
	v.backend_id = n->backend_id;
	v.last_seen = n->now;
	if (n->snat_port) {
		__builtin_memcpy(v.snat_addr, n->snat_addr, MN_ADDR_LEN);
		v.snat_port = n->snat_port;
	}
	err = bpf_map_update_elem(&mn_ct, &k, &v, BPF_ANY);
	/* The reply tuple is another live connection's: its replies come through the dir 2
	 * entry only. */
	if (n->flags & MN_CT_F_SHARED_REPLY) {
		if (err)
			mn_count(MN_CNT_CT_FULL);
		return;
	}

	__builtin_memcpy(k.saddr, be->addr, MN_ADDR_LEN);
	__builtin_memcpy(k.daddr, p->saddr, MN_ADDR_LEN);
	k.sport = be->port;
	k.dport = p->sport;
	k.dir = 1;
	__builtin_memcpy(v.nat_addr, p->daddr, MN_ADDR_LEN);
	v.nat_port = p->dport;
	__builtin_memset(v.snat_addr, 0, MN_ADDR_LEN);
	v.snat_port = 0;
	err |= bpf_map_update_elem(&mn_ct, &k, &v, BPF_ANY);
	if (err)
		mn_count(MN_CNT_CT_FULL);
}

/* A SYN to no frontend: a direct connection reusing a tuple must not have its replies
 * rewritten by the reply entry of an earlier, balanced connection on the same tuple. But the
 * SYN of a connection balanced a moment ago on another interface of this node (a pod's veth,
 * then the bridge it hangs on) looks the same: its forward entry is live, from this second,
 * and names this destination as the backend; then the reply entry stays. */
static __noinline void mn_forget_stale_reply(struct mn_pkt *p, __u32 now)
{
	struct mn_ct_key k;
	struct mn_ct_val *v, r;

	mn_ct_key_of(&k, p, 1);
	__builtin_memcpy(k.saddr, p->daddr, MN_ADDR_LEN);
	__builtin_memcpy(k.daddr, p->saddr, MN_ADDR_LEN);
	k.sport = p->dport;
	k.dport = p->sport;
	v = bpf_map_lookup_elem(&mn_ct, &k);
	if (!v)
		return;
	r = *v;
	/* The forward entry of the connection the reply entry belongs to. */
	__builtin_memcpy(k.saddr, p->saddr, MN_ADDR_LEN);
	__builtin_memcpy(k.daddr, r.nat_addr, MN_ADDR_LEN);
	k.sport = p->sport;
	k.dport = r.nat_port;
	k.dir = 0;
	v = bpf_map_lookup_elem(&mn_ct, &k);
	if (v && !(v->flags & MN_CT_F_CLOSING) && v->last_seen == now && v->nat_port == p->dport &&
	    mn_addr_eq(v->nat_addr, p->daddr))
		return;
	/* Back to the reply key. */
	__builtin_memcpy(k.saddr, p->daddr, MN_ADDR_LEN);
	__builtin_memcpy(k.daddr, p->saddr, MN_ADDR_LEN);
	k.sport = p->dport;
	k.dport = p->sport;
	k.dir = 1;
	bpf_map_delete_elem(&mn_ct, &k);
}

#define MN_MASQ (-3)

/* A new connection to masquerade, as mn_lb_new chose it. */
struct mn_lb {
	struct mn_backend be;
	struct mn_new n;
};

/* A packet without a live conntrack entry: TC_ACT_OK when it is not for a frontend, the
 * verdict after DNAT, TC_ACT_SHOT for a drop, MN_REJECT, or MN_MASQ when the connection
 * chosen (in *lb) is to be masqueraded: mn_lb_masq's to finish, in a frame of its own (the
 * call chain's stack is bounded). */
/* Does another live connection of this client's address and port hold the reply tuple a
 * connection to backend be would get (the client reusing one source port for two Services that
 * share the backend)? Its replies would be translated as the other's: this one is masqueraded
 * instead, so its replies come to a port of its own (netfilter remaps the source port then). */
static __noinline int mn_reply_taken(const struct mn_pkt *p, const struct mn_backend *be, __u32 now)
{
	struct mn_config cfg;
	struct mn_ct_key k;
	struct mn_ct_val *v, r;

	mn_ct_key_of(&k, p, MN_CT_DIR_REPLY);
	__builtin_memcpy(k.saddr, be->addr, MN_ADDR_LEN);
	__builtin_memcpy(k.daddr, p->saddr, MN_ADDR_LEN);
	k.sport = be->port;
	k.dport = p->sport;
	v = bpf_map_lookup_elem(&mn_ct, &k);
	if (!v)
		return 0;
	r = *v;
	if (r.nat_port == p->dport && mn_addr_eq(r.nat_addr, p->daddr))
		return 0;
	/* The forward entry it belongs to: live, not closing, and still to this backend. */
	mn_ct_key_of(&k, p, MN_CT_DIR_FORWARD);
	__builtin_memcpy(k.daddr, r.nat_addr, MN_ADDR_LEN);
	k.dport = r.nat_port;
	v = bpf_map_lookup_elem(&mn_ct, &k);
	if (!v || (v->flags & MN_CT_F_CLOSING) || v->snat_port || v->nat_port != be->port ||
	    !mn_addr_eq(v->nat_addr, be->addr))
		return 0;
	mn_config_get(&cfg);
	return mn_ct_alive(v, p->proto, &cfg, now);
}

static __noinline int mn_lb_new(struct __sk_buff *skb, struct mn_pkt *p, int syn, __u32 now, struct mn_lb *lb)
{
	struct mn_svc_key sk = {};
	struct mn_svc_val svc;
	struct mn_affinity_key ak = {};
	struct mn_backend *be = &lb->be;
	struct mn_new *n = &lb->n;
	__u32 backend_id = 0, maglev_m = 0, zero = 0;
	struct mn_config *cfg;
	int in_cluster, masq, shared;

	__builtin_memcpy(sk.addr, p->daddr, MN_ADDR_LEN);
	sk.port = p->dport;
	sk.proto = p->proto;
	sk.scope = MN_SCOPE_EXTERNAL;
	if (!mn_svc_lookup(&sk, &svc)) {
		/* Not a service: a direct connection reusing a tuple must not have its replies
		 * rewritten by a stale reply entry. */
		if (syn)
			mn_forget_stale_reply(p, now);
		return TC_ACT_OK;
	}
	/* Only a SYN starts a TCP connection. Anything else without conntrack is either for
	 * this host (masquerade and ephemeral ports can land on a NodePort number: the reply of
	 * one of its own or of a masqueraded connection must reach the stack) or a segment to a
	 * frontend whose connection is gone (its backend deleted, or its entry evicted): reset. */
	if (p->proto == IPPROTO_TCP && !syn)
		return mn_is_node_addr(p->daddr) ? TC_ACT_OK : MN_REJECT;
	in_cluster = mn_in_cluster(p->saddr);
	mn_svc_scope(&sk, in_cluster, &svc);

	if (!in_cluster && (svc.flags & MN_SVC_F_SRC_RANGE) && !mn_src_allowed(svc.rev_id, p->saddr)) {
		mn_count(MN_CNT_DROP_SRC_RANGE);
		return TC_ACT_SHOT;
	}
	if (svc.count == 0) {
		if (svc.flags & MN_SVC_F_LOCAL) {
			mn_count(MN_CNT_DROP_LOCAL);
			return TC_ACT_SHOT;
		}
		return MN_REJECT;
	}

	cfg = bpf_map_lookup_elem(&mn_config, &zero);
	if (cfg)
		maglev_m = cfg->maglev_m;
	__builtin_memcpy(ak.client, p->saddr, MN_ADDR_LEN);
	ak.rev_id = svc.rev_id;
	ak.kind = 0;
	/* The slots and the backends may disagree while an update is in flight: as no backend. */
	if (!mn_select(&svc, sk.scope, &ak, !in_cluster, mn_flow_hash(p, !(svc.flags & MN_SVC_F_AFFINITY)),
		       maglev_m, now, &backend_id, be))
		return MN_REJECT;

	/* Masquerade when replies would not come back through this node (an external client
	 * and a backend elsewhere, unless the frontend is Local) or a pod reaches itself. */
	masq = mn_addr_eq(be->addr, p->saddr) ||
	       (!in_cluster && !(be->flags & MN_BE_F_LOCAL) && !(svc.flags & MN_SVC_F_LOCAL));
	shared = !masq && mn_reply_taken(p, be, now);
	__builtin_memset(n, 0, sizeof(*n));
	n->flags = masq || shared ? MN_CT_F_MASQ : 0;
	if (shared) {
		n->flags |= MN_CT_F_SHARED_REPLY;
		masq = 1;
	}
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (MN_TH_FIN | MN_TH_RST)))
		n->flags |= MN_CT_F_CLOSING;
	n->rev_id = svc.rev_id;
	n->backend_id = backend_id;
	n->now = now;
	if (masq)
		return MN_MASQ;
	mn_ct_create(p, be, n);
	mn_count(MN_CNT_LB_NEW);
	return mn_nat(skb, p, 1, be->addr, be->port);
}

/* A new connection to masquerade: its source port, conntrack, DNAT and SNAT, and the packet
 * straight to the backend's next hop. */
static __noinline int mn_lb_masq(struct __sk_buff *skb, struct mn_pkt *p, struct mn_lb *lb)
{
	int r;

	if (mn_ttl_expiring(skb, p))
		return mn_time_exceeded(skb, p);
	if (mn_snat_new(skb, p, &lb->be, &lb->n))
		return TC_ACT_SHOT;
	mn_ct_create(p, &lb->be, &lb->n);
	mn_count(MN_CNT_LB_NEW);
	r = mn_nat(skb, p, 1, lb->be.addr, lb->be.port);
	if (r != TC_ACT_OK)
		return r;
	if (!mn_snat_fits(skb, p, lb->n.ifindex))
		return TC_ACT_OK;
	r = mn_nat(skb, p, 0, lb->n.snat_addr, lb->n.snat_port);
	if (r != TC_ACT_OK)
		return r;
	return mn_redirect_forward(skb, p, lb->n.ifindex);
}

/* A reply of a balanced connection (its reply entry), MN_NO_ENTRY when there is none. A reply
 * to one of this host's own connections that mn_egress_lb balanced gets the frontend back as its
 * source here, as it goes to this node's own address. Forwarded replies are translated at
 * egress (a masqueraded connection's at ingress already, by mn_snat_rev); they leave here at
 * once, without the frontend lookups a new flow costs. The reply entry is looked up first, not
 * the node's addresses: replies are the traffic that has one. */
static __noinline int mn_ct_reply(struct __sk_buff *skb, struct mn_pkt *p)
{
	struct mn_ct_key rk;
	struct mn_ct_val *v, c;

	mn_ct_key_of(&rk, p, 1);
	v = bpf_map_lookup_elem(&mn_ct, &rk);
	if (!v)
		return MN_NO_ENTRY;
	if (!mn_is_node_addr(p->daddr))
		return TC_ACT_OK;
	c = *v;
	mn_ct_touch(v, &c, p, mn_now());
	mn_count(MN_CNT_REV_NAT);
	return mn_nat(skb, p, 0, c.nat_addr, c.nat_port);
}

/* The packet an ICMP error quotes, when the message is an error about TCP, UDP or SCTP: its
 * reply tuple in *rk (the quoted destination as source; dir and pad left to the caller), where
 * the quoted IP header (*in) and its L4 header (*inl4) start. -1 for any other message. */
static __always_inline int mn_icmp_quote(struct __sk_buff *skb, const struct mn_pkt *p, struct mn_ct_key *rk,
					 __u32 *in, __u32 *inl4)
{
	__u8 type = p->tcp_flags, iproto;
	__be16 ports[2];

	*in = p->l4off + 8;
	if (!p->v6) {
		struct iphdr ih;

		/* Destination unreachable, time exceeded, parameter problem. */
		if (type != 3 && type != 11 && type != 12)
			return -1;
		if (bpf_skb_load_bytes(skb, *in, &ih, sizeof(ih)) || ih.ihl != 5)
			return -1;
		iproto = ih.protocol;
		mn_addr_set_v4(rk->saddr, ih.daddr);
		mn_addr_set_v4(rk->daddr, ih.saddr);
		*inl4 = *in + sizeof(ih);
	} else {
		struct ipv6hdr ih;

		/* Destination unreachable, packet too big, time exceeded, parameter problem. */
		if (type < 1 || type > 4)
			return -1;
		if (bpf_skb_load_bytes(skb, *in, &ih, sizeof(ih)))
			return -1;
		iproto = ih.nexthdr;
		__builtin_memcpy(rk->saddr, &ih.daddr, MN_ADDR_LEN);
		__builtin_memcpy(rk->daddr, &ih.saddr, MN_ADDR_LEN);
		*inl4 = *in + sizeof(ih);
	}
	if (iproto != IPPROTO_TCP && iproto != IPPROTO_UDP && iproto != IPPROTO_SCTP)
		return -1;
	if (bpf_skb_load_bytes(skb, *inl4, ports, sizeof(ports)))
		return -1;
	rk->sport = ports[1];
	rk->dport = ports[0];
	rk->proto = iproto;
	return 0;
}

/* An ICMP error about a masqueraded connection, sent to its masqueraded source (by the backend
 * or a router on the way: port unreachable, fragmentation needed, packet too big): the client
 * back as the outer destination and as the quoted packet's source, as for the connection's own
 * packets; at egress mn_icmp_rev then shows the frontend. */
static __noinline int mn_icmp_snat_rev(struct __sk_buff *skb, struct mn_pkt *p)
{
	struct mn_ct_key rk = {};
	struct mn_ct_val *v, c;
	__u32 in, inl4, icsum = p->l4off + 2;

	if (mn_icmp_quote(skb, p, &rk, &in, &inl4))
		return TC_ACT_OK;
	/* The error is about our packet to the backend, so it is addressed to its source. */
	if ((rk.proto != IPPROTO_SCTP && !mn_snat_port(rk.dport)) || !mn_addr_eq(rk.daddr, p->daddr))
		return TC_ACT_OK;
	rk.dir = MN_CT_DIR_SNAT;
	v = bpf_map_lookup_elem(&mn_ct, &rk);
	if (!v)
		return TC_ACT_OK;
	c = *v;

	if (!p->v6) {
		__be32 o = mn_word(rk.daddr, 3), n = mn_word(c.nat_addr, 3);

		if (!mn_is_v4mapped(c.nat_addr))
			return TC_ACT_SHOT;
		/* The quoted header stays valid (its checksum follows), so the ICMP checksum, which
		 * covers it, does not change; the outer header is not in it. */
		if (bpf_l3_csum_replace(skb, in + offsetof(struct iphdr, check), o, n, sizeof(n)) ||
		    bpf_skb_store_bytes(skb, in + offsetof(struct iphdr, saddr), &n, sizeof(n), 0) ||
		    bpf_l3_csum_replace(skb, p->l3off + offsetof(struct iphdr, check), o, n, sizeof(n)) ||
		    bpf_skb_store_bytes(skb, p->l3off + offsetof(struct iphdr, daddr), &n, sizeof(n), 0))
			return TC_ACT_SHOT;
	} else {
		__u8 o[MN_ADDR_LEN], n[MN_ADDR_LEN];
		__s64 d;

		if (mn_is_v4mapped(c.nat_addr))
			return TC_ACT_SHOT;
		__builtin_memcpy(o, rk.daddr, MN_ADDR_LEN);
		__builtin_memcpy(n, c.nat_addr, MN_ADDR_LEN);
		d = bpf_csum_diff((__be32 *)o, MN_ADDR_LEN, (__be32 *)n, MN_ADDR_LEN, 0);
		/* ICMPv6's checksum covers the quoted header, and the outer addresses through its
		 * pseudo-header. */
		if (bpf_l4_csum_replace(skb, icsum, 0, d, 0) ||
		    bpf_skb_store_bytes(skb, in + offsetof(struct ipv6hdr, saddr), n, MN_ADDR_LEN, 0) ||
		    bpf_l4_csum_replace(skb, icsum, 0, d, BPF_F_PSEUDO_HDR) ||
		    bpf_skb_store_bytes(skb, p->l3off + offsetof(struct ipv6hdr, daddr), n, MN_ADDR_LEN, 0))
			return TC_ACT_SHOT;
	}
	if (rk.dport != c.nat_port) {
		if (bpf_l4_csum_replace(skb, icsum, rk.dport, c.nat_port, sizeof(c.nat_port)) ||
		    bpf_skb_store_bytes(skb, inl4, &c.nat_port, sizeof(c.nat_port), 0))
			return TC_ACT_SHOT;
	}
	mn_count(MN_CNT_REV_NAT);
	return TC_ACT_OK;
}

SEC("classifier")
int mn_tc_ingress(struct __sk_buff *skb)
{
	struct mn_pkt p = {};
	struct mn_lb lb;
	__u32 now;
	int syn, r;

	r = mn_parse(skb, &p);
	if (r == MN_PARSE_ICMP)
		return mn_icmp_snat_rev(skb, &p);
	if (r)
		return TC_ACT_OK;
	syn = p.proto == IPPROTO_TCP && (p.tcp_flags & (MN_TH_SYN | MN_TH_ACK)) == MN_TH_SYN;
	now = mn_now();
	/* A SYN always balances afresh: a client reusing its source port must not inherit the
	 * previous connection's backend (and the reply entry may since belong to another). */
	if (!syn) {
		r = mn_ct_forward(skb, &p, now);
		if (r != MN_NO_ENTRY)
			return r;
		/* A backend's packet to a masqueraded connection (only ports masquerade hands
		 * out are looked up). */
		if (p.proto == IPPROTO_SCTP || mn_snat_port(p.dport)) {
			r = mn_snat_rev(skb, &p, now);
			if (r != MN_NO_ENTRY)
				return r;
		}
		r = mn_ct_reply(skb, &p);
		if (r != MN_NO_ENTRY)
			return r;
	}
	/* A later fragment follows its first one; it cannot start a connection. */
	if (p.frag == MN_FRAG_LATER)
		return TC_ACT_OK;
	r = mn_lb_new(skb, &p, syn, now, &lb);
	if (r == MN_REJECT)
		return mn_reject(skb, &p, 0);
	if (r == MN_MASQ)
		return mn_lb_masq(skb, &p, &lb);
	return r;
}

/* A packet of this host DNATed at egress: the stack routed it for the frontend's address, so
 * it is sent on towards the backend's next hop (the neighbour subsystem fills in the Ethernet
 * header), possibly out of another interface. */
static __noinline int mn_reroute(struct __sk_buff *skb, struct mn_pkt *p)
{
	struct bpf_fib_lookup fib = {};
	__u32 ifindex;
	long rc;

	fib.ifindex = skb->ifindex;
	fib.l4_protocol = p->proto;
	if (!p->v6) {
		fib.family = 2; /* AF_INET */
		fib.ipv4_src = mn_word(p->saddr, 3);
		if (bpf_skb_load_bytes(skb, p->l3off + offsetof(struct iphdr, daddr), &fib.ipv4_dst, 4))
			return TC_ACT_SHOT;
	} else {
		fib.family = 10; /* AF_INET6 */
		__builtin_memcpy(fib.ipv6_src, p->saddr, MN_ADDR_LEN);
		if (bpf_skb_load_bytes(skb, p->l3off + offsetof(struct ipv6hdr, daddr), fib.ipv6_dst, MN_ADDR_LEN))
			return TC_ACT_SHOT;
	}
	/* An output lookup keeps IPv4 to the interface it names (the one the stack chose for the
	 * frontend); when the backend is elsewhere, look up as if forwarding from it. */
	ifindex = skb->ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT | BPF_FIB_LOOKUP_SKIP_NEIGH);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		fib.ifindex = ifindex;
		rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_SKIP_NEIGH);
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_SHOT;
	return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
}

/* A new flow leaving this host for a frontend: socket-LB did not translate it, because the
 * frontend has no backend (rejected here, as kube-proxy does in OUTPUT, by sending the answer
 * back into the host) or because socket-LB is off (balanced here: DNAT, conntrack, and the
 * packet re-routed to the backend, since the stack routed it for the frontend's address; the
 * replies are translated at ingress, see mn_ct_reply). Only for new flows (a TCP SYN,
 * a UDP datagram) so other egress traffic costs no lookup. */
static __noinline int mn_egress_lb(struct __sk_buff *skb, struct mn_pkt *p)
{
	struct mn_svc_key sk = {};
	struct mn_svc_val *v, svc;
	struct mn_affinity_key ak = {};
	struct mn_backend be;
	struct mn_new n = {};
	__u32 id = 0, now;
	int r;

	__builtin_memcpy(sk.addr, p->daddr, MN_ADDR_LEN);
	sk.port = p->dport;
	sk.proto = p->proto;
	sk.scope = MN_SCOPE_EXTERNAL;
	v = bpf_map_lookup_elem(&mn_svc, &sk);
	if (!v)
		return TC_ACT_OK;
	svc = *v;
	/* This host is an in-cluster client. */
	mn_svc_scope(&sk, 1, &svc);
	if (!svc.count) {
		if (svc.flags & MN_SVC_F_LOCAL) {
			mn_count(MN_CNT_DROP_LOCAL);
			return TC_ACT_SHOT;
		}
		return MN_REJECT;
	}
	if (p->l3off != ETH_HLEN)
		return TC_ACT_OK;

	now = mn_now();
	__builtin_memcpy(ak.client, p->saddr, MN_ADDR_LEN);
	ak.rev_id = svc.rev_id;
	if (!mn_select(&svc, sk.scope, &ak, 0, 0, 0, now, &id, &be))
		return MN_REJECT;
	n.rev_id = svc.rev_id;
	n.backend_id = id;
	n.now = now;
	mn_ct_create(p, &be, &n);
	r = mn_nat(skb, p, 1, be.addr, be.port);
	if (r != TC_ACT_OK)
		return r;
	mn_count(MN_CNT_LB_NEW);

	return mn_reroute(skb, p);
}

/* An ICMP error about a balanced connection, on its way to the client: the quoted packet
 * (client -> backend, as DNATed) gets the frontend back as its destination, and the outer
 * source too when the backend itself sent the error, so the client's stack matches it to its
 * socket (a connected UDP socket's ECONNREFUSED, TCP's path MTU). */
static __noinline int mn_icmp_rev(struct __sk_buff *skb, struct mn_pkt *p)
{
	struct mn_ct_key rk = {};
	struct mn_ct_val *v, c;
	__u32 in, inl4, icsum = p->l4off + 2;

	if (mn_icmp_quote(skb, p, &rk, &in, &inl4))
		return TC_ACT_OK;
	rk.dir = 1;
	v = bpf_map_lookup_elem(&mn_ct, &rk);
	if (!v)
		return TC_ACT_OK;
	c = *v;

	if (!p->v6) {
		__be32 o = mn_word(rk.saddr, 3), n = mn_word(c.nat_addr, 3);

		if (!mn_is_v4mapped(c.nat_addr))
			return TC_ACT_SHOT;
		if (o != n) {
			/* The quoted header stays valid (its checksum follows), so the ICMP checksum,
			 * which covers it, does not change. */
			if (bpf_l3_csum_replace(skb, in + offsetof(struct iphdr, check), o, n, sizeof(n)) ||
			    bpf_skb_store_bytes(skb, in + offsetof(struct iphdr, daddr), &n, sizeof(n), 0))
				return TC_ACT_SHOT;
			if (mn_word(p->saddr, 3) == o &&
			    (bpf_l3_csum_replace(skb, p->l3off + offsetof(struct iphdr, check), o, n, sizeof(n)) ||
			     bpf_skb_store_bytes(skb, p->l3off + offsetof(struct iphdr, saddr), &n, sizeof(n), 0)))
				return TC_ACT_SHOT;
		}
	} else {
		__u8 o[MN_ADDR_LEN], n[MN_ADDR_LEN];

		if (mn_is_v4mapped(c.nat_addr))
			return TC_ACT_SHOT;
		__builtin_memcpy(o, rk.saddr, MN_ADDR_LEN);
		__builtin_memcpy(n, c.nat_addr, MN_ADDR_LEN);
		if (!mn_addr_eq(o, n)) {
			__s64 d = bpf_csum_diff((__be32 *)o, MN_ADDR_LEN, (__be32 *)n, MN_ADDR_LEN, 0);

			/* ICMPv6's checksum covers the quoted header, and the outer addresses through
			 * its pseudo-header. */
			if (bpf_l4_csum_replace(skb, icsum, 0, d, 0) ||
			    bpf_skb_store_bytes(skb, in + offsetof(struct ipv6hdr, daddr), n, MN_ADDR_LEN, 0))
				return TC_ACT_SHOT;
			if (mn_addr_eq(p->saddr, o) &&
			    (bpf_l4_csum_replace(skb, icsum, 0, d, BPF_F_PSEUDO_HDR) ||
			     bpf_skb_store_bytes(skb, p->l3off + offsetof(struct ipv6hdr, saddr), n, MN_ADDR_LEN, 0)))
				return TC_ACT_SHOT;
		}
	}
	if (rk.sport != c.nat_port) {
		if (bpf_l4_csum_replace(skb, icsum, rk.sport, c.nat_port, sizeof(c.nat_port)) ||
		    bpf_skb_store_bytes(skb, inl4 + 2, &c.nat_port, sizeof(c.nat_port), 0))
			return TC_ACT_SHOT;
	}
	mn_count(MN_CNT_REV_NAT);
	return TC_ACT_OK;
}

/* A reply of a balanced connection on its way to the client: the frontend back as source. */
static __noinline int mn_egress_reply(struct __sk_buff *skb, struct mn_pkt *p)
{
	struct mn_ct_key rk;
	struct mn_ct_val *v, c;

	mn_ct_key_of(&rk, p, 1);
	v = bpf_map_lookup_elem(&mn_ct, &rk);
	if (!v)
		return MN_NO_ENTRY;
	c = *v;
	/* No expiry check here: the forward direction decides when a connection is over (it
	 * re-balances and rewrites this entry); a reply entry leaves through a reset or LRU
	 * eviction. */
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & MN_TH_RST)) {
		/* The backend reset the connection: both entries go (see mn_ct_forward). */
		bpf_map_delete_elem(&mn_ct, &rk);
		mn_ct_key_of(&rk, p, 0);
		__builtin_memcpy(rk.saddr, p->daddr, MN_ADDR_LEN);
		__builtin_memcpy(rk.daddr, c.nat_addr, MN_ADDR_LEN);
		rk.sport = p->dport;
		rk.dport = c.nat_port;
		bpf_map_delete_elem(&mn_ct, &rk);
	} else {
		mn_ct_touch(v, &c, p, mn_now());
	}
	mn_count(MN_CNT_REV_NAT);
	return mn_nat(skb, p, 0, c.nat_addr, c.nat_port);
}

SEC("classifier")
int mn_tc_egress(struct __sk_buff *skb)
{
	struct mn_pkt p = {};
	int r;

	r = mn_parse(skb, &p);
	if (r == MN_PARSE_ICMP)
		return mn_icmp_rev(skb, &p);
	if (r)
		return TC_ACT_OK;
	r = mn_egress_reply(skb, &p);
	if (r != MN_NO_ENTRY)
		return r;
	/* Forwarded packets were balanced at ingress, where they entered this node: what follows
	 * is for this host's own packets only (ingress_ifindex 0), so forwarded ones cost no more
	 * lookups here. */
	if (skb->ingress_ifindex)
		return TC_ACT_OK;
	/* This host's own connections balanced here (socket-LB off): the next packets. */
	if (!(p.proto == IPPROTO_TCP && (p.tcp_flags & (MN_TH_SYN | MN_TH_ACK)) == MN_TH_SYN)) {
		r = mn_ct_forward(skb, &p, mn_now());
		if (r == TC_ACT_OK)
			return mn_reroute(skb, &p);
		if (r != MN_NO_ENTRY)
			return r;
	}
	if ((p.proto == IPPROTO_UDP && p.frag != MN_FRAG_LATER) ||
	    (p.proto == IPPROTO_TCP && (p.tcp_flags & (MN_TH_SYN | MN_TH_ACK)) == MN_TH_SYN)) {
		r = mn_egress_lb(skb, &p);
		if (r == MN_REJECT)
			return mn_reject(skb, &p, BPF_F_INGRESS);
		return r;
	}
	return TC_ACT_OK;
}
