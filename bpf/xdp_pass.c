/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Passes every packet. Native XDP_TX / XDP_REDIRECT into a veth delivers a frame only when the
 * receiving end runs an XDP program; the lab attaches this one to the router's ends of the
 * host links (lab/topology.ts, routed fabric) so that the data plane's XDP_TX reaches the router.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int godwit_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
