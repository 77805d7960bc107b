/* SPDX-License-Identifier: GPL-2.0 */
/*
 * MurmurHash3's 32-bit mixing step and finaliser (public domain algorithm): the one copy that
 * the programs (lib/hash.h's flow hash, lock_maps.h's connection hash) and the agent's native
 * writer (native/bpfmap/conn_table.c, through lock_maps.h) compile, so that they agree.
 * Plain C: no BPF helpers, so that user space includes it too.
 */
#ifndef GODWIT_LIB_MURMUR_H
#define GODWIT_LIB_MURMUR_H

#include <linux/types.h>

static __inline __u32 godwit_mix32(__u32 h, __u32 w)
{
	w *= 0xcc9e2d51u;
	w = (w << 15) | (w >> 17);
	w *= 0x1b873593u;
	h ^= w;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64u;
}

static __inline __u32 godwit_fmix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

#endif /* GODWIT_LIB_MURMUR_H */
