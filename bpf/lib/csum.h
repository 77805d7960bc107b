/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Internet checksum arithmetic for XDP, where the skb csum helpers do not exist.
 *
 * One's complement sums do not depend on byte order as long as every word is taken in the same
 * order, so fields are used as they sit in the packet (network order loaded as-is).
 * Incremental updates follow RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m').
 */
#ifndef GODWIT_LIB_CSUM_H
#define GODWIT_LIB_CSUM_H

#include <linux/types.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>

/* 32-bit one's complement addition (end-around carry). */
static __always_inline __u32 csum_add32(__u32 sum, __u32 v)
{
	sum += v;
	return sum + (sum < v);
}

/* Folds a 32-bit partial sum to 16 bits and complements it. */
static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* A 4-byte field of the covered data changes from `from` to `to`. */
static __always_inline void csum_replace4(__u16 *check, __u32 from, __u32 to)
{
	__u32 sum = (__u16)~*check;

	sum = csum_add32(sum, ~from);
	sum = csum_add32(sum, to);
	*check = csum_fold32(sum);
}

/* A 2-byte field changes. */
static __always_inline void csum_replace2(__u16 *check, __u16 from, __u16 to)
{
	__u32 sum = (__u16)~*check;

	sum += (__u16)~from;
	sum += to;
	*check = csum_fold32(sum);
}

/* The full header checksum of an option-less IPv4 header (RFC 1071), its check field ignored. */
static __always_inline __u16 ipv4_csum20(const void *iph)
{
	const __u16 *w = (const __u16 *)iph;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		if (i != 5)
			sum += w[i];
	return csum_fold32(sum);
}

#endif /* GODWIT_LIB_CSUM_H */
