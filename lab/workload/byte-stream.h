/*
 * The lab's deterministic byte stream, in C: the same bytes as lab/byte-stream.ts (word i of a
 * stream is mix32(seed + i * golden), little-endian), so a C workload and a JS peer can check each
 * other's bytes. Any offset can be generated directly.
 */
#ifndef GODWIT_LAB_BYTE_STREAM_H
#define GODWIT_LAB_BYTE_STREAM_H

#include <stddef.h>
#include <stdint.h>

#define STREAM_GOLDEN 0x9e3779b9u

/* A 32-bit avalanche mix (a bijection on uint32). */
static inline uint32_t stream_mix32(uint32_t x)
{
	x ^= x >> 16;
	x *= 0x7feb352du;
	x ^= x >> 15;
	x *= 0x846ca68bu;
	x ^= x >> 16;
	return x;
}

/* The seed of connection `index` (0-based) of a run: streamSeed() in lab/byte-stream.ts. */
static inline uint32_t stream_seed(uint32_t index, uint32_t run_seed)
{
	return stream_mix32((run_seed * 0x85ebca6bu) ^ stream_mix32(index + 1));
}

/* Fills out[0..n) with the stream's bytes at [offset, offset + n). */
static inline void stream_fill(uint32_t seed, uint64_t offset, unsigned char *out, size_t n)
{
	uint64_t word = offset / 4;
	unsigned shift = (unsigned)(offset % 4);
	size_t i = 0;
	while (i < n) {
		uint32_t w = stream_mix32(seed + (uint32_t)word * STREAM_GOLDEN);
		for (unsigned b = shift; b < 4 && i < n; b++)
			out[i++] = (unsigned char)(w >> (8 * b));
		shift = 0;
		word++;
	}
}

#endif
