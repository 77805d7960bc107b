/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Address translation of IPv4 TCP/UDP packets: DNAT at XDP (checksums fixed incrementally with
 * lib/csum.h), source NAT of replies at TC (the kernel's csum helpers, which also handle
 * CHECKSUM_PARTIAL skbs of locally generated replies).
 */
#ifndef GODWIT_LIB_NAT_H
#define GODWIT_LIB_NAT_H

#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>

#include "lib/csum.h"

/*
 * Rewrites destination address and port of the IPv4 packet at iph, whose L4 header is at l4.
 * Returns -1 (packet untouched) when the L4 header is truncated.
 */
static __always_inline int xdp_dnat4(struct iphdr *iph, void *l4, void *data_end, __u32 addr, __u16 port)
{
	__u32 old_addr = iph->daddr;

	if (iph->protocol == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end)
			return -1;
		/* The TCP checksum covers the pseudo-header's destination address and the port. */
		csum_replace4(&th->check, old_addr, addr);
		csum_replace2(&th->check, th->dest, port);
		th->dest = port;
	} else {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end)
			return -1;
		if (uh->check) { /* 0: the sender computed none (IPv4 allows it); keep it so */
			csum_replace4(&uh->check, old_addr, addr);
			csum_replace2(&uh->check, uh->dest, port);
			if (!uh->check)
				uh->check = 0xffff; /* RFC 768: a computed 0 is sent as all ones */
		}
		uh->dest = port;
	}
	csum_replace4(&iph->check, old_addr, addr);
	iph->daddr = addr;
	return 0;
}

/*
 * Rewrites the source address and port of the skb's IPv4 packet (Ethernet header first, IPv4
 * header of ihl words) to addr:port. For UDP a zero checksum stays zero (BPF_F_MARK_MANGLED_0).
 */
static __always_inline int tc_snat4(struct __sk_buff *skb, __u32 ihl, __u8 proto, __u32 old_addr, __u16 old_port, __u32 addr, __u16 port)
{
	__u32 l4_off = ETH_HLEN + ihl * 4;
	__u32 check_off = l4_off + (proto == IPPROTO_TCP ? offsetof(struct tcphdr, check) : offsetof(struct udphdr, check));
	__u64 mangled = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (bpf_l4_csum_replace(skb, check_off, old_addr, addr, BPF_F_PSEUDO_HDR | mangled | sizeof(addr)))
		return -1;
	if (bpf_l4_csum_replace(skb, check_off, old_port, port, mangled | sizeof(port)))
		return -1;
	if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old_addr, addr, sizeof(addr)))
		return -1;
	if (bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct iphdr, saddr), &addr, sizeof(addr), 0))
		return -1;
	if (bpf_skb_store_bytes(skb, l4_off + offsetof(struct tcphdr, source), &port, sizeof(port), 0))
		return -1;
	return 0;
}

#endif /* GODWIT_LIB_NAT_H */
