/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The program chain on a host's interface: one root XDP program is attached, and it runs
 * godwit's programs in slot order through tail calls (Katran's xdp_root design). A program
 * that is done with a packet and wants the rest of the chain to see it returns
 * godwit_chain_next(ctx, ITS_SLOT) instead of XDP_PASS.
 *
 * Why tail calls and not libxdp's freplace dispatcher: bpftool alone loads and wires them (no
 * libxdp in the agent), the order is data (a slot index), one feature is replaced by updating
 * one slot while the root stays attached, and the chain map is pinned like every other map, so
 * an agent restart or a reload of one program never detaches the interface.
 *
 * Every object that is part of the chain declares this map; the agent loads them all with the
 * one pinned map reused.
 */
#ifndef GODWIT_LIB_CHAIN_H
#define GODWIT_LIB_CHAIN_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define GODWIT_CHAIN_SLOTS 8
/*
 * Fixed order: steering first, the lock after it. The lock then sees a packet as it is for this
 * host: after steering's DNAT (a VIP packet for a local workload endpoint) and after the tunnel
 * is taken off (a frame another host steered here), so a frozen workload's packets are held
 * however they arrive; what steering tunnels on to another host (XDP_TX) is not this host's to
 * hold. A program name is in one slot only (agent/linux/bpf/xdp-chain.ts moves it on upgrade).
 */
#define GODWIT_SLOT_STEER 0
#define GODWIT_SLOT_LOCK 1

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, GODWIT_CHAIN_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} godwit_xdp_chain SEC(".maps");

/*
 * Runs the first populated slot at or after `first`; a tail call that succeeds never returns,
 * an empty slot falls through to the next. XDP_PASS when no later program is loaded.
 */
static __always_inline int godwit_chain_from(struct xdp_md *ctx, __u32 first)
{
#pragma unroll
	for (__u32 i = 0; i < GODWIT_CHAIN_SLOTS; i++) {
		if (i >= first)
			bpf_tail_call(ctx, &godwit_xdp_chain, i);
	}
	return XDP_PASS;
}

/* The rest of the chain after the program in slot `self`. */
static __always_inline int godwit_chain_next(struct xdp_md *ctx, __u32 self)
{
	return godwit_chain_from(ctx, self + 1);
}

#endif /* GODWIT_LIB_CHAIN_H */
