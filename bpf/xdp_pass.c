// SPDX-License-Identifier: GPL-2.0
/*
 * Passes every frame. For the far end of a veth that godwit's XDP program sends frames back out
 * of (XDP_TX): veth delivers such frames natively only when the peer has an XDP program of its
 * own (FIELD-NOTES). The lab's router side and the steering test fixture attach this one.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int godwit_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
