/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every godwit BPF map's key/value layout, shared by the BPF programs and (byte for byte) by
 * the agent's codec in agent/linux/lock-map-codec.ts.
 *
 * Pinned maps outlive the program and the agent, so a layout is a contract with whatever is
 * already pinned on a host: change a struct here only together with a bump of its layout
 * version, the codec, and a migration (or an explicit uninstall) of the pinned map. The agent
 * refuses to reuse a pinned map whose BTF layout differs from the codec's.
 *
 * Structs are explicitly padded and fixed-size: the hash key is compared bytewise, so every
 * byte of it (the pad too) must be written, and user space and BPF must agree on every offset.
 */
#ifndef GODWIT_MAPS_H
#define GODWIT_MAPS_H

#include <linux/types.h>

/* ---- Lock maps: what the XDP lock drops during a migration --------------------------------
 *
 * Layout versions (of the set of lock maps; the agent checks each pinned map's BTF):
 *   1  godwit_lock_ep
 *   2  adds godwit_lock_tuple. godwit_lock_ep is unchanged, so a host's version-1 pin is reused
 *      as it is and the tuple map is created and pinned next to it.
 *   3  adds godwit_held (ring of held packets) and godwit_hold_stats. The lock maps are
 *      unchanged; older pins are reused and the new maps created and pinned next to them.
 */
#define GODWIT_LOCK_LAYOUT_VERSION 3
#define GODWIT_LOCK_EP_MAX_ENTRIES 65536
/* 100,000 connections with room to spare; a hash map has a power-of-two bucket count anyway. */
#define GODWIT_LOCK_TUPLE_MAX_ENTRIES 131072

/* Key of godwit_lock_ep: the workload's listening (proto, address, port). 8 bytes. */
struct godwit_endpoint_key {
	__u32 addr;  /* IPv4 destination address, network byte order */
	__u16 port;  /* TCP/UDP destination port, network byte order */
	__u8 proto;  /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;    /* always 0 */
};

/*
 * Key of godwit_lock_tuple: one connection, exactly as its packets arrive at the host (the peer
 * is the source, the workload the destination). 16 bytes.
 */
struct godwit_tuple_key {
	__u32 saddr;  /* remote (peer) IPv4 address, network byte order */
	__u32 daddr;  /* local (workload) IPv4 address, network byte order */
	__u16 sport;  /* remote port, network byte order */
	__u16 dport;  /* local port, network byte order */
	__u8 proto;   /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad[3];  /* always 0 */
};

/*
 * Value of both lock maps: a lease. 32 bytes, u64 fields in host byte order.
 * The program honours an entry only while bpf_ktime_get_ns() < deadline_ns, so an agent or
 * controller that dies mid-migration never blackholes the endpoint for longer than its lease.
 */
struct godwit_lock_value {
	__u64 version;      /* lock/unlock only win against entries with version <= theirs */
	__u64 deadline_ns;  /* CLOCK_MONOTONIC (bpf_ktime_get_ns), exclusive */
	__u64 drops;        /* packets dropped for this entry (atomic add in the program) */
	__u64 last_drop_ns; /* CLOCK_MONOTONIC time of the latest drop, 0 if none */
};

/* ---- Held packets: what the lock keeps instead of losing ------------------------------------
 *
 * A packet the lock stops is not only dropped: a copy goes into the ring godwit_held, and the
 * agent delivers it to the restored workload right after unlock (agent/linux/packet-hold.ts).
 * The peers then see a delay instead of a loss, so they do not wait out a backed-off
 * retransmission timer after the freeze. When the ring is full or the frame too long, the
 * packet is only dropped, as before: its peer retransmits.
 */

/* 32 MiB: a freeze of 1 s at 5,000 chatty connections is about 10 MiB of small segments. */
#define GODWIT_HELD_RING_BYTES (32u << 20)
/* Longest frame kept: Ethernet header + a 1500-byte MTU packet, rounded up. Longer frames
 * (jumbo, or GSO super-packets on a generic-XDP path) are dropped without a copy. */
#define GODWIT_HELD_MAX_FRAME 1536u

/* One record in godwit_held: this header, then frame_len bytes of the frame (from its Ethernet
 * header). 16 bytes, host byte order. */
struct godwit_held_hdr {
	__u64 time_ns;    /* bpf_ktime_get_ns() when the packet arrived */
	__u32 ifindex;    /* interface it arrived on */
	__u32 frame_len;  /* bytes of frame that follow */
};

/* Value of godwit_hold_stats (a one-slot per-CPU array): what happened to stopped packets. */
struct godwit_hold_stats {
	__u64 held;       /* copied into the ring */
	__u64 ring_full;  /* dropped without a copy: no room in the ring */
	__u64 too_long;   /* dropped without a copy: longer than GODWIT_HELD_MAX_FRAME */
};

#endif /* GODWIT_MAPS_H */
