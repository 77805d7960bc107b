/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The lock's BPF map layouts (endpoint locks, the connection table, held packets), shared by
 * bpf/lock.c and, byte for byte, by the agent's codec in agent/linux/lock-map-codec.ts. Each
 * feature's maps have a header of their own (headers by concern, as Cilium's bpf/lib).
 *
 * Pinned maps outlive the program and the agent, so a layout is a contract with whatever is
 * already pinned on a host: change a struct here only together with a bump of its layout
 * version, the codec, and a migration (or an explicit uninstall) of the pinned map. The agent
 * refuses to reuse a pinned map whose BTF layout differs from the codec's.
 *
 * Structs are explicitly padded and fixed-size: the hash key is compared bytewise, so every
 * byte of it (the pad too) must be written, and user space and BPF must agree on every offset.
 */
#ifndef GODWIT_LOCK_MAPS_H
#define GODWIT_LOCK_MAPS_H

#include <linux/types.h>

#include "lib/murmur.h"

/* ---- Lock maps: what the XDP lock drops during a migration --------------------------------
 *
 * Layout versions (of the set of lock maps; the agent checks each pinned map's BTF):
 *   1  godwit_lock_ep
 *   2  adds godwit_lock_tuple. godwit_lock_ep is unchanged, so a host's version-1 pin is reused
 *      as it is and the tuple map is created and pinned next to it.
 *   3  adds godwit_held (ring of held packets) and godwit_hold_stats. The lock maps are
 *      unchanged; older pins are reused and the new maps created and pinned next to them.
 *   4  replaces the hash map godwit_lock_tuple with godwit_lock_conn, an mmapped table the agent
 *      writes in memory (below). On install the live entries of a pinned godwit_lock_tuple are
 *      copied into the new table before the new program is attached, then that pin is removed.
 * From 4 on, each map has a layout version of its own, with the upgrade that copies its state
 * from the previous one (agent/linux/lock-maps.ts), recorded per host in the pin folder
 * (agent/linux/bpf/layout-record.ts). This number stays as the name of the set at layout 4.
 * Later additions, each a map of its own at its version 1: godwit_lock_any (a u32 in a one-slot
 * array: an upper bound of the address-wide entries in godwit_lock_ep; a new pin starts at 0,
 * right for the older maps, which never held one).
 */
#define GODWIT_LOCK_LAYOUT_VERSION 4
#define GODWIT_LOCK_EP_MAX_ENTRIES 65536
#define GODWIT_ANY_PORT 0

/*
 * Key of godwit_lock_ep: the workload's listening (proto, address, port). 8 bytes.
 * Port GODWIT_ANY_PORT (0, which no TCP or UDP packet is addressed to) makes an address-wide
 * entry: every port of that address and protocol, looked up when no exact endpoint entry
 * matches. A migration holds one per address and protocol so that the return traffic of the
 * workload's outgoing connections (to ephemeral ports) is held like the rest. Same layout:
 * port 0 is only a value the agent used to refuse.
 */
struct godwit_endpoint_key {
	__u32 addr;  /* IPv4 destination address, network byte order */
	__u16 port;  /* TCP/UDP destination port, network byte order; GODWIT_ANY_PORT: every port */
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
 * Value of a lock entry: a lease. 32 bytes, u64 fields in host byte order.
 * The program honours an entry only while bpf_ktime_get_ns() < deadline_ns, so an agent or
 * controller that dies mid-migration never blackholes the endpoint for longer than its lease.
 */
struct godwit_lock_value {
	__u64 version;      /* lock/unlock only win against entries with version <= theirs */
	__u64 deadline_ns;  /* CLOCK_MONOTONIC (bpf_ktime_get_ns), exclusive */
	__u64 drops;        /* packets dropped for this entry (atomic add in the program) */
	__u64 last_drop_ns; /* CLOCK_MONOTONIC time of the latest drop, 0 if none */
};

/* ---- godwit_lock_conn: the exact-connection lock, a table the agent writes in memory --------
 *
 * Locking 10,000 connections as 10,000 hash map updates costs the kernel 3-8 ms of bucket locks
 * and element allocation, even in one BPF_MAP_UPDATE_BATCH. So the connection entries live in an
 * mmappable array used as an open-addressing hash table with linear probing: the agent maps it
 * into its memory and locks or unlocks a connection with a few stores, no system call at all
 * (native/bpfmap/conn_table.c, the only writer); the XDP program only reads it.
 *
 * A slot is EMPTY (never used since the last cleanup: a probe stops here), LIVE (an entry) or
 * DELETED (was an entry: a probe goes on past it, an insert may reuse it). Every entry sits
 * within GODWIT_CONN_MAX_PROBE slots of its home slot, godwit_conn_hash(key) masked, so a lookup
 * reads at most that many slots. The writer publishes an entry by storing its state LIVE only
 * after the key and lease, and empties DELETED slots only where the next slot is EMPTY, so a
 * concurrent lookup never misses an entry that stays LIVE.
 */
/* A power of two, twice the entries allowed: linear probing stays short at a load of 1/2. */
#define GODWIT_CONN_SLOTS (1u << 18)
/* At most this many LIVE entries (100,000 connections with room to spare). */
#define GODWIT_CONN_MAX_ENTRIES 131072
/* Longest probe. At a load of 1/2 a run this long is vanishingly rare; an insert that finds no
 * free slot within it is refused and the agent reports the lock as failed. */
#define GODWIT_CONN_MAX_PROBE 64

#define GODWIT_SLOT_EMPTY 0
#define GODWIT_SLOT_LIVE 1
#define GODWIT_SLOT_DELETED 2

/* One slot of godwit_lock_conn: 56 bytes, u64 fields 8-aligned (the array's values are laid out
 * back to back at 56-byte strides). */
struct godwit_conn_slot {
	__u32 state;                    /* GODWIT_SLOT_*, stored last by the writer */
	__u32 pad;                      /* always 0 */
	struct godwit_tuple_key key;
	struct godwit_lock_value lease;
};

/*
 * Home slot hash of a connection key: MurmurHash3's 32-bit mixing over the key's four
 * little-endian words, with no seed. The agent's writer (native/bpfmap/conn_table.c) compiles
 * this same function; test/integration/netlock-tuples.test.ts checks that writer and program
 * agree through packets that only a colliding, probed entry can stop.
 */
static __inline __u32 godwit_conn_hash(const struct godwit_tuple_key *key)
{
	const __u32 *w = (const __u32 *)key;
	__u32 h = 0;

	h = godwit_mix32(h, w[0]);
	h = godwit_mix32(h, w[1]);
	h = godwit_mix32(h, w[2]);
	h = godwit_mix32(h, w[3]);
	return godwit_fmix32(h ^ 16);
}

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

#endif /* GODWIT_LOCK_MAPS_H */
