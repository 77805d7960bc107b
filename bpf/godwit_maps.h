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

/* ---- Lock map: endpoints whose incoming packets are dropped during a migration ----------- */

#define GODWIT_LOCK_LAYOUT_VERSION 1
#define GODWIT_LOCK_EP_MAX_ENTRIES 65536

/* Key of godwit_lock_ep: the workload's listening (proto, address, port). 8 bytes. */
struct godwit_endpoint_key {
	__u32 addr;  /* IPv4 destination address, network byte order */
	__u16 port;  /* TCP/UDP destination port, network byte order */
	__u8 proto;  /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;    /* always 0 */
};

/*
 * Value of godwit_lock_ep: a lease. 32 bytes, u64 fields in host byte order.
 * The program honours an entry only while bpf_ktime_get_ns() < deadline_ns, so an agent or
 * controller that dies mid-migration never blackholes the endpoint for longer than its lease.
 */
struct godwit_lock_value {
	__u64 version;      /* lock/unlock only win against entries with version <= theirs */
	__u64 deadline_ns;  /* CLOCK_MONOTONIC (bpf_ktime_get_ns), exclusive */
	__u64 drops;        /* packets dropped for this entry (atomic add in the program) */
	__u64 last_drop_ns; /* CLOCK_MONOTONIC time of the latest drop, 0 if none */
};

/*
 * Reserved: an exact 4-tuple lock map (godwit_lock_flow) for locking single connections
 * rather than a whole listening endpoint. Planned layout, 16-byte key, same value struct:
 *
 *   struct godwit_flow_key {
 *           __u32 saddr;  __u32 daddr;   network byte order
 *           __u16 sport;  __u16 dport;   network byte order
 *           __u8 proto;   __u8 pad[3];
 *   };
 *
 * It gets its own layout version constant when it is added.
 */

#endif /* GODWIT_MAPS_H */
