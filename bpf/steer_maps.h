/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The steering data plane's maps (bpf/steer.c): key/value layouts shared byte for byte with the
 * agent's codec (agent/linux/steer-map-codec.ts, checked against this object's BTF in
 * test/unit/steer-map-codec.test.ts).
 *
 * Two kinds of state:
 *  - the RULE TABLE the agent programs from the controller's table at one generation
 *    (services, backends, Maglev rings). It is double-buffered: every rule map holds two copies,
 *    slot 0 and slot 1, and steer_meta names the active one. The program reads the active slot
 *    once per packet, so a packet sees the old table or the new one, never a mix. The agent
 *    writes the inactive copy whole, then flips steer_meta.active (steering-ebpf.ts).
 *  - STATE the program keeps (flows, reverse NAT) and COUNTERS indexed by the table's stable
 *    ids. Those are single copies: ids are never reused by the controller, so an entry or a
 *    counter means the same thing in every generation.
 *
 * Every map is pinned by the agent and reused on reload, so an agent restart or a program
 * upgrade keeps every established flow. A layout below is a contract with what is already pinned
 * on a host: change a struct only with a bump of that map's layout version and the codec.
 * Structs are explicitly padded: hash keys are compared bytewise, every byte is written.
 */
#ifndef GODWIT_STEER_MAPS_H
#define GODWIT_STEER_MAPS_H

#include <linux/types.h>

/* Layout version of each map (the agent compares them with its codec's before reusing a pin). */
#define GODWIT_STEER_META_VERSION 1
#define GODWIT_STEER_VIPS_VERSION 1
#define GODWIT_STEER_BACKENDS_VERSION 1
#define GODWIT_STEER_RINGS_VERSION 1
/* 2: godwit_flow_value gained flags (GODWIT_FLOW_RNAT), 8 -> 12 bytes; the upgrade copies every
 * flow with flags 0 (its reverse-NAT entry is written again on its next packet). */
#define GODWIT_STEER_FLOWS_VERSION 2
#define GODWIT_STEER_RNAT_VERSION 1
#define GODWIT_STEER_STATS_VERSION 1
#define GODWIT_STEER_ADDRS_VERSION 1
#define GODWIT_STEER_FWD_VERSION 1

/* Service and backend ids are 1..GODWIT_STEER_MAX_ID-1 (0 means "none"); they index the
 * backends map and the counters directly. */
#define GODWIT_STEER_MAX_ID 16384
/* Services per table copy: each has one Maglev ring. */
#define GODWIT_STEER_MAX_SERVICES 128
/* Maglev lookup table size: a prime, ~100x the backends a service is expected to have, so each
 * backend's share is within about 1% of its weight's (Maglev paper, section 3.4). */
#define GODWIT_STEER_RING_SIZE 4099
/* Flows remembered (LRU): 131,072 live connections plus room for the benchmark's 100,000. */
#define GODWIT_STEER_FLOWS 262144
#define GODWIT_STEER_RNAT 262144
/* Workload addresses per table copy (steer_addrs). */
#define GODWIT_STEER_MAX_ADDRS 4096

#define GODWIT_STEER_SLOTS 2

/* steer_meta: one entry; mmapped and written by the agent. 24 bytes. */
struct godwit_steer_meta {
	__u32 active;          /* the slot (0 or 1) packets use; the agent flips it last */
	__u32 host_addr;       /* this host's data-plane IPv4 (network order): the tunnel source */
	__u64 generation[2];   /* the table generation each slot holds */
};

/* steer_vips: VIP endpoint of a service in one slot -> the service. Hash, 8-byte key. */
struct godwit_vip_key {
	__u32 addr;   /* VIP, network order */
	__u16 port;   /* network order */
	__u8 proto;   /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 slot;    /* which copy of the table this entry belongs to */
};

struct godwit_vip_value {
	__u32 service_id;
	__u32 ring;   /* index of the service's Maglev ring within the slot (0..MAX_SERVICES-1) */
};

#define GODWIT_BACKEND_PRESENT 1   /* the id is in this copy of the table */
#define GODWIT_BACKEND_LOCAL 2     /* it runs on this host: DNAT here, else tunnel it there */
#define GODWIT_BACKEND_DRAINING 4  /* keeps its flows, out of the ring (informational here) */

/* steer_backends: mmappable array, index slot * GODWIT_STEER_MAX_ID + backend id. 16 bytes. */
struct godwit_steer_backend {
	__u32 addr;        /* workload address, network order */
	__u16 port;        /* network order */
	__u8 flags;        /* GODWIT_BACKEND_* */
	__u8 pad;
	__u32 host_addr;   /* its host's data-plane address, network order (tunnel destination) */
	__u32 service_id;  /* the service it belongs to */
};

/* steer_rings: mmappable array, index slot * GODWIT_STEER_MAX_SERVICES + ring. A service's
 * Maglev lookup table: backend ids (0: no backend takes new flows). 16,396 bytes. */
struct godwit_steer_ring {
	__u32 backend[GODWIT_STEER_RING_SIZE];
};

/* steer_flows (LRU hash): a connection as it arrives at the steering host -> its backend. */
struct godwit_flow_key {
	__u32 saddr;   /* client, network order */
	__u32 daddr;   /* VIP */
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* The flow's reverse-NAT entry (steer_rnat) was written on this host for its current backend:
 * the hit path then needs no steer_rnat lookup at all. Cleared when the backend is not local. */
#define GODWIT_FLOW_RNAT 1

struct godwit_flow_value {
	__u32 backend_id;
	__u32 service_id;
	__u32 flags;   /* GODWIT_FLOW_* */
};

/* steer_rnat (LRU hash), on the backend's host: a reply's (backend, client) -> the VIP it must
 * come from. Written when a packet is DNATed here, read by the TC egress program. */
struct godwit_rnat_key {
	__u32 backend_addr;
	__u32 client_addr;
	__u16 backend_port;
	__u16 client_port;
	__u8 proto;
	__u8 pad[3];
};

struct godwit_rnat_value {
	__u32 vip_addr;
	__u16 vip_port;
	__u16 pad;
};

/* steer_svc_stats / steer_be_stats: per-CPU arrays indexed by id. Counted on the host that
 * steers (where the VIP's packets arrive and the backend is chosen), client-to-service
 * direction; the tunnel's receiving host does not count the packet again. */
struct godwit_steer_counter {
	__u64 packets;
	__u64 bytes;   /* IPv4 total length */
	__u64 flows;   /* new flows recorded */
};

/* steer_addrs: a workload address in one slot -> the host it runs on. Hash, 8-byte key. Rule
 * table (double-buffered like steer_vips). A packet for an address whose entry is not LOCAL is
 * tunnelled whole to host_addr (no NAT: the address itself moved). */
struct godwit_addr_key {
	__u32 addr;   /* workload address, network order */
	__u8 slot;
	__u8 pad[3];
};

#define GODWIT_ADDR_LOCAL 1   /* the address runs on this host: its packets go on to the stack */

struct godwit_addr_value {
	__u32 host_addr;   /* its host's data-plane address, network order (tunnel destination) */
	__u32 flags;       /* GODWIT_ADDR_* */
};

/* steer_fwd: per-CPU array of GODWIT_FWD_COUNTERS counters, what this host did with packets
 * whose backend or address is elsewhere (agent: EbpfSteering.forwarding()). */
#define GODWIT_FWD_FORWARDED 0   /* tunnelled on to the host the table names */
#define GODWIT_FWD_STALE 1       /* dropped: unknown here, or already forwarded once */
#define GODWIT_FWD_COUNTERS 2

struct godwit_fwd_counter {
	__u64 packets;
};

/* ---- The tunnel between hosts ------------------------------------------------------------
 * VXLAN's wire format (RFC 7348), built and taken off by the programs themselves: the kernel has
 * no ipip/fou/geneve, and UDP crosses any routed fabric and is ECMP-hashed on its source port.
 * godwit's frames carry a fixed VNI, and the chosen backend's id in the 24 bits the RFC
 * reserves after the flags (the receiver must DNAT to the backend the sender chose), or
 * GODWIT_VXLAN_ADDR_MARKER for a frame steered by its destination address.
 */
#define GODWIT_VXLAN_PORT 4789
#define GODWIT_VXLAN_VNI 0x60d71u       /* fixed: frames with another VNI are not godwit's */
#define GODWIT_VXLAN_FLAG_VNI 0x08      /* the I flag: the VNI is valid */
/* A bit RFC 7348 reserves (and VXLAN-GBP and -GPE leave reserved too): the frame was already
 * re-encapsulated once by a host whose table sent it on; such a frame that is still not local
 * where it lands is dropped, so two hosts that disagree mid-change never bounce it. */
#define GODWIT_VXLAN_FLAG_FORWARDED 0x40
/* In the backend-id field: not a backend's frame but one for a workload address (steer_addrs),
 * delivered as it is (no DNAT). Backend ids stay below GODWIT_STEER_MAX_ID, far from it. */
#define GODWIT_VXLAN_ADDR_MARKER 0xffffffu
/* Outer Ethernet + IPv4 + UDP + VXLAN: the encapsulation grows a frame by this much, so the
 * fabric's links need an MTU 50 bytes above the clients' (the lab sets it). */
#define GODWIT_ENCAP_LEN (14 + 20 + 8 + 8)

struct godwit_vxlan_hdr {
	__u8 flags;
	__u8 backend_id[3];   /* big endian; RFC 7348 "reserved" */
	__be32 vni;           /* VNI << 8, network order; low byte reserved */
};

#endif /* GODWIT_STEER_MAPS_H */
