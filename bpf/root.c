// SPDX-License-Identifier: GPL-2.0
/*
 * The one XDP program attached to a host's interface: it runs godwit's programs in slot order
 * (lib/chain.h: steering, then the lock). It owns no packet itself; with an empty chain every
 * packet passes. The agent attaches it once and changes what runs by updating the pinned
 * godwit_xdp_chain map (agent/linux/bpf/xdp-chain.ts), so replacing one program never detaches
 * the interface.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "lib/chain.h"

SEC("xdp")
int godwit_xdp_root(struct xdp_md *ctx)
{
	return godwit_chain_from(ctx, 0);
}

char _license[] SEC("license") = "GPL";
