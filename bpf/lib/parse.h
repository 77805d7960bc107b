/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Header parsing shared by godwit's programs: bounds-checked against data_end before every
 * read; a packet a program does not own is given back (XDP_PASS / TC_ACT_OK) by the caller.
 */
#ifndef GODWIT_LIB_PARSE_H
#define GODWIT_LIB_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Fragment offset mask, from include/net/ip.h (not in uapi). */
#define GODWIT_IP_OFFSET 0x1fff

/* Source and destination port, the first 4 bytes of both TCP and UDP headers. */
struct l4_ports {
	__be16 source;
	__be16 dest;
};

struct hdr_cursor {
	void *pos;
};

/* Returns the EtherType (network order), or -1 if the frame is too short. No VLAN parsing:
 * godwit's hosts carry untagged frames; a tagged frame is simply not ours. */
static __always_inline int parse_ethhdr(struct hdr_cursor *c, void *data_end)
{
	struct ethhdr *eth = c->pos;

	if ((void *)(eth + 1) > data_end)
		return -1;
	c->pos = eth + 1;
	return eth->h_proto;
}

/* Returns the IPv4 header with options skipped by the cursor, or NULL if truncated/malformed. */
static __always_inline struct iphdr *parse_iphdr(struct hdr_cursor *c, void *data_end)
{
	struct iphdr *iph = c->pos;
	__u32 hdr_len;

	if ((void *)(iph + 1) > data_end)
		return NULL;
	hdr_len = iph->ihl * 4;
	if (hdr_len < sizeof(*iph))
		return NULL;
	if (c->pos + hdr_len > data_end)
		return NULL;
	c->pos += hdr_len;
	return iph;
}

static __always_inline struct l4_ports *parse_l4_ports(struct hdr_cursor *c, void *data_end)
{
	struct l4_ports *ports = c->pos;

	if ((void *)(ports + 1) > data_end)
		return NULL;
	return ports;
}

#endif /* GODWIT_LIB_PARSE_H */
