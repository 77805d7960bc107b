/* SPDX-License-Identifier: GPL-2.0 */
/*
 * godwit's host-to-host tunnel at XDP: VXLAN wire format (steer_maps.h says why and what the
 * header carries) pushed in front of the client's frame with bpf_xdp_adjust_head, and taken off
 * again on the backend's host.
 */
#ifndef GODWIT_LIB_ENCAP_H
#define GODWIT_LIB_ENCAP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lib/csum.h"
#include "steer_maps.h"

#ifndef AF_INET
#define AF_INET 2
#endif

struct godwit_encap_hdr {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	struct godwit_vxlan_hdr vxlan;
} __attribute__((packed));

/*
 * Sends a frame whose outer headers (h, at the frame's start) are written but for the MACs: the
 * outer MACs come from the kernel's FIB and neighbour table; without an answer the frame goes to
 * fb_dst from fb_src (the previous hop, which routes it on). XDP_TX, or XDP_REDIRECT when the
 * route leaves by another interface.
 */
static __always_inline int xdp_tunnel_send(struct xdp_md *ctx, struct godwit_encap_hdr *h, const unsigned char *fb_dst, const unsigned char *fb_src)
{
	struct bpf_fib_lookup fib = {};
	int rc;

	fib.family = AF_INET;
	fib.ipv4_src = h->ip.saddr;
	fib.ipv4_dst = h->ip.daddr;
	fib.l4_protocol = IPPROTO_UDP;
	fib.tot_len = bpf_ntohs(h->ip.tot_len);
	fib.ifindex = ctx->ingress_ifindex;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		__builtin_memcpy(h->eth.h_dest, fib.dmac, ETH_ALEN);
		__builtin_memcpy(h->eth.h_source, fib.smac, ETH_ALEN);
		if (fib.ifindex != ctx->ingress_ifindex)
			return bpf_redirect(fib.ifindex, 0);
		return XDP_TX;
	}
	__builtin_memcpy(h->eth.h_dest, fb_dst, ETH_ALEN);
	__builtin_memcpy(h->eth.h_source, fb_src, ETH_ALEN);
	return XDP_TX;
}

/*
 * Pushes outer Ethernet/IPv4/UDP/VXLAN headers: from src to dst (network order), UDP source
 * port from the flow's hash, the backend's id (or GODWIT_VXLAN_ADDR_MARKER) in the VXLAN header,
 * and sends it (xdp_tunnel_send; without a route the frame goes back where it came from, the
 * incoming MACs swapped). Returns the XDP action; XDP_DROP when the frame has no room.
 */
static __always_inline int xdp_encap_vxlan(struct xdp_md *ctx, __u32 src, __u32 dst, __u32 flow_hash, __u32 backend_id)
{
	struct godwit_encap_hdr *h;
	struct ethhdr *inner;
	void *data, *data_end;
	__u32 inner_len;

	inner_len = (__u32)(ctx->data_end - ctx->data);
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct godwit_encap_hdr)))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	h = data;
	inner = (void *)(h + 1);
	if ((void *)(inner + 1) > data_end)
		return XDP_DROP;

	h->ip.version = 4;
	h->ip.ihl = 5;
	h->ip.tos = 0;
	h->ip.tot_len = bpf_htons(inner_len + sizeof(h->ip) + sizeof(h->udp) + sizeof(h->vxlan));
	h->ip.id = 0;
	h->ip.frag_off = bpf_htons(0x4000); /* DF: a tunnel packet too big must not be fragmented */
	h->ip.ttl = 64;
	h->ip.protocol = IPPROTO_UDP;
	h->ip.check = 0;
	h->ip.saddr = src;
	h->ip.daddr = dst;
	h->ip.check = ipv4_csum20((void *)h + sizeof(struct ethhdr));

	/* Dynamic port range (RFC 7348 5.): the fabric's ECMP spreads flows, one flow keeps a path. */
	h->udp.source = bpf_htons(49152 | (flow_hash & 0x3fff));
	h->udp.dest = bpf_htons(GODWIT_VXLAN_PORT);
	h->udp.len = bpf_htons(inner_len + sizeof(h->udp) + sizeof(h->vxlan));
	h->udp.check = 0; /* RFC 7348: SHOULD be zero over IPv4 */

	h->vxlan.flags = GODWIT_VXLAN_FLAG_VNI;
	h->vxlan.backend_id[0] = backend_id >> 16;
	h->vxlan.backend_id[1] = backend_id >> 8;
	h->vxlan.backend_id[2] = backend_id;
	h->vxlan.vni = bpf_htonl(GODWIT_VXLAN_VNI << 8);

	h->eth.h_proto = bpf_htons(ETH_P_IP);
	return xdp_tunnel_send(ctx, h, inner->h_source, inner->h_dest);
}

/*
 * A godwit tunnel frame at this host (eth + option-less outer IPv4 + UDP to GODWIT_VXLAN_PORT
 * first), read without changing it: the outer headers, or NULL when the frame is not godwit's.
 */
static __always_inline struct godwit_encap_hdr *xdp_vxlan_peek(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct godwit_encap_hdr *h = (void *)(long)ctx->data;

	if ((void *)(h + 1) > data_end)
		return NULL;
	if (h->ip.ihl != 5 || (h->vxlan.flags & ~GODWIT_VXLAN_FLAG_FORWARDED) != GODWIT_VXLAN_FLAG_VNI || h->vxlan.vni != bpf_htonl(GODWIT_VXLAN_VNI << 8))
		return NULL;
	return h;
}

static __always_inline __u32 godwit_vxlan_id(const struct godwit_encap_hdr *h)
{
	return ((__u32)h->vxlan.backend_id[0] << 16) | ((__u32)h->vxlan.backend_id[1] << 8) | h->vxlan.backend_id[2];
}

/*
 * Sends a tunnel frame that landed here on to dst, as it is but for the outer addresses (from
 * src, this host, so that replies to the tunnel and ICMP come here) and the FORWARDED flag: the
 * inner frame, the backend id and the UDP source port (the flow's ECMP path) are kept. Without
 * a route the frame goes back to the hop it came from. Returns the XDP action.
 */
static __always_inline int xdp_retarget_vxlan(struct xdp_md *ctx, __u32 src, __u32 dst)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct godwit_encap_hdr *h = (void *)(long)ctx->data;
	unsigned char dmac[ETH_ALEN], smac[ETH_ALEN];

	if ((void *)(h + 1) > data_end)
		return XDP_DROP;
	h->ip.saddr = src;
	h->ip.daddr = dst;
	h->ip.ttl = 64;
	h->ip.check = 0;
	h->ip.check = ipv4_csum20((void *)h + sizeof(struct ethhdr));
	h->vxlan.flags |= GODWIT_VXLAN_FLAG_FORWARDED;
	__builtin_memcpy(dmac, h->eth.h_source, ETH_ALEN);
	__builtin_memcpy(smac, h->eth.h_dest, ETH_ALEN);
	return xdp_tunnel_send(ctx, h, dmac, smac);
}

/*
 * Takes godwit's tunnel headers off a frame already known to be UDP to GODWIT_VXLAN_PORT at
 * this host (eth + option-less outer IPv4 + UDP first). The inner frame gets the outer
 * destination MAC (this interface's: the inner one was the sending host's next hop) and source.
 * Returns the backend id the sender chose (or GODWIT_VXLAN_ADDR_MARKER), 0 when the frame is not
 * godwit's (left untouched), -1 when it is but cannot be taken apart (drop it).
 */
static __always_inline int xdp_decap_vxlan(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct godwit_encap_hdr *h = data;
	unsigned char dmac[ETH_ALEN], smac[ETH_ALEN];
	struct ethhdr *inner;
	__u32 backend_id;

	if ((void *)(h + 1) > data_end)
		return 0;
	if (h->ip.ihl != 5 || (h->vxlan.flags & ~GODWIT_VXLAN_FLAG_FORWARDED) != GODWIT_VXLAN_FLAG_VNI || h->vxlan.vni != bpf_htonl(GODWIT_VXLAN_VNI << 8))
		return 0;
	backend_id = godwit_vxlan_id(h);
	__builtin_memcpy(dmac, h->eth.h_dest, ETH_ALEN);
	__builtin_memcpy(smac, h->eth.h_source, ETH_ALEN);
	if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct godwit_encap_hdr)))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	inner = data;
	if ((void *)(inner + 1) > data_end)
		return -1;
	__builtin_memcpy(inner->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(inner->h_source, smac, ETH_ALEN);
	return backend_id ? (int)backend_id : -1;
}

#endif /* GODWIT_LIB_ENCAP_H */
