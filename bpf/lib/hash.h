/* SPDX-License-Identifier: GPL-2.0 */
/* The flow hash: picks a connection's Maglev ring entry and the tunnel's UDP source port. */
#ifndef GODWIT_LIB_HASH_H
#define GODWIT_LIB_HASH_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#include "murmur.h"

/* Hash of a connection's 5-tuple as it arrives (client -> VIP). */
static __always_inline __u32 godwit_flow_hash(__u32 saddr, __u32 daddr, __u16 sport, __u16 dport, __u8 proto)
{
	__u32 h = 0x9e3779b9u;

	h = godwit_mix32(h, saddr);
	h = godwit_mix32(h, daddr);
	h = godwit_mix32(h, ((__u32)sport << 16) | dport);
	h = godwit_mix32(h, proto);
	return godwit_fmix32(h ^ 13);
}

/* An index in [0, n) from a 32-bit hash without a division (multiply-shift range reduction). */
static __always_inline __u32 godwit_reduce(__u32 h, __u32 n)
{
	return (__u32)(((__u64)h * n) >> 32);
}

#endif /* GODWIT_LIB_HASH_H */
