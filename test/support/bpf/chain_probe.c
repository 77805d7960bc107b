// SPDX-License-Identifier: GPL-2.0
/*
 * Test programs for the BPF lifecycle (test/integration/bpf-chain.test.ts): an XDP program for
 * a chain slot after the lock, and a TC egress program, each counting the IPv4 UDP packets to
 * (XDP) or from (TC) port PROBE_PORT that reach it. Both pass every packet on.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lib/chain.h"
#include "lib/parse.h"

#define PROBE_PORT 7100
/* The probe's chain slot: after the lock (PROBE_SLOT in bpf-chain.test.ts). */
#define PROBE_SLOT (GODWIT_SLOT_LOCK + 1)

/* [0]: UDP to PROBE_PORT seen at XDP; [1]: UDP from PROBE_PORT seen at TC egress. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} gwt_probe_seen SEC(".maps");

static __always_inline int udp_port_is(void *data, void *data_end, int dest)
{
	struct hdr_cursor c = { .pos = data };
	struct l4_ports *ports;
	struct iphdr *iph;

	if (parse_ethhdr(&c, data_end) != bpf_htons(ETH_P_IP))
		return 0;
	iph = parse_iphdr(&c, data_end);
	if (!iph || iph->protocol != IPPROTO_UDP)
		return 0;
	ports = parse_l4_ports(&c, data_end);
	if (!ports)
		return 0;
	return (dest ? ports->dest : ports->source) == bpf_htons(PROBE_PORT);
}

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&gwt_probe_seen, &idx);

	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("xdp")
int gwt_probe_xdp(struct xdp_md *ctx)
{
	if (udp_port_is((void *)(long)ctx->data, (void *)(long)ctx->data_end, 1))
		count(0);
	return godwit_chain_next(ctx, PROBE_SLOT);
}

SEC("tc")
int gwt_probe_tc(struct __sk_buff *skb)
{
	if (udp_port_is((void *)(long)skb->data, (void *)(long)skb->data_end, 0))
		count(1);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
