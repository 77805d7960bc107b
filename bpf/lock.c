// SPDX-License-Identifier: GPL-2.0
/*
 * godwit network lock, XDP on a host's interface: slot GODWIT_SLOT_LOCK of the chain that
 * bpf/root.c runs (lib/chain.h), after steering: the lock sees a packet as it reaches the
 * workload (a VIP's DNATed to the backend, a tunnelled frame taken off its tunnel), and what
 * steering sends on to another host is that host's to hold.
 *
 * While a workload migrates, its endpoint (proto, address, port) has an entry in godwit_lock_ep,
 * or each of its connections an exact 4-tuple entry in the table godwit_lock_conn, and its
 * addresses an address-wide entry (port GODWIT_ANY_PORT) in godwit_lock_ep; packets that match
 * an unexpired entry of any are stopped here: silently, so the kernel sends no RST. A copy
 * of each stopped packet is held in a ring for the agent to deliver after unlock (see
 * lock_maps.h); what cannot be held its peer retransmits. Everything else goes on to the next
 * program of the chain, untouched.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lib/chain.h"
#include "lib/parse.h"
#include "lock_maps.h"

/*
 * Not pinned by libbpf (no LIBBPF_PIN_BY_NAME): that pins under one global root, but bpffs is
 * shared by every network namespace and each lab host needs its own maps. The agent pins them
 * per host (PINDIR/maps, agent/linux/bpf/object-loader.ts) and reuses those pins on reload.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GODWIT_LOCK_EP_MAX_ENTRIES);
	__type(key, struct godwit_endpoint_key);
	__type(value, struct godwit_lock_value);
} godwit_lock_ep SEC(".maps");

/* The open-addressing table of connection entries (lock_maps.h). Mmappable: the agent writes
 * it in memory. The kernel keeps the first 15 characters of a map's name (godwit_lock_con);
 * bpftool pins it under the full name. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GODWIT_CONN_SLOTS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct godwit_conn_slot);
} godwit_lock_conn SEC(".maps");

/* How many address-wide entries godwit_lock_ep may hold: an upper bound the agent writes before
 * it adds one and lowers once they are gone. 0 on a host where no migration holds an address, so
 * traffic that matches nothing skips the address-wide lookup (a hash lookup; this is an array
 * read the verifier inlines). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} godwit_lock_any SEC(".maps");

/* Stopped packets, for the agent to deliver after unlock. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, GODWIT_HELD_RING_BYTES);
} godwit_held SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct godwit_hold_stats);
} godwit_hold_stats SEC(".maps");

/* Where a record is put together before it goes into the ring: the BPF stack (512 bytes) is too
 * small for a frame. Per CPU, and XDP runs to completion on its CPU, so no one else uses it. */
struct held_record {
	struct godwit_held_hdr hdr;
	__u8 frame[GODWIT_HELD_MAX_FRAME];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct held_record);
} godwit_held_scratch SEC(".maps");

/* Fills the 4-tuple of an IPv4 TCP/UDP packet; returns -1 for anything the lock does not own. */
static __always_inline int tuple_key_of(struct xdp_md *ctx, struct godwit_tuple_key *key)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct hdr_cursor c = { .pos = (void *)(long)ctx->data };
	struct l4_ports *ports;
	struct iphdr *iph;

	if (parse_ethhdr(&c, data_end) != bpf_htons(ETH_P_IP))
		return -1;
	iph = parse_iphdr(&c, data_end);
	if (!iph)
		return -1;
	if (iph->protocol != IPPROTO_TCP && iph->protocol != IPPROTO_UDP)
		return -1;
	/* Later fragments carry no L4 header; what is left of them after the first fragment was
	 * dropped fails reassembly anyway. */
	if (iph->frag_off & bpf_htons(GODWIT_IP_OFFSET))
		return -1;
	ports = parse_l4_ports(&c, data_end);
	if (!ports)
		return -1;

	key->saddr = iph->saddr;
	key->daddr = iph->daddr;
	key->sport = ports->source;
	key->dport = ports->dest;
	key->proto = iph->protocol;
	return 0;
}

/* The packet's listening endpoint: the destination half of its 4-tuple. */
static __always_inline void endpoint_key_of(const struct godwit_tuple_key *t, struct godwit_endpoint_key *key)
{
	key->addr = t->daddr;
	key->port = t->dport;
	key->proto = t->proto;
	key->pad = 0;
}

/*
 * The lease of the connection's entry in godwit_lock_conn, or NULL. Reads the state before the
 * key: the writer stores the key first and the state last, and x86 keeps loads in order (a
 * weakly ordered CPU would need a load-acquire here). A key read mid-rewrite cannot match
 * wrongly for long: the writer reuses only DELETED slots, never a LIVE one.
 */
static __always_inline struct godwit_lock_value *conn_lease(const struct godwit_tuple_key *key)
{
	__u32 home = godwit_conn_hash(key);
	const __u64 *want = (const __u64 *)key;

	for (__u32 i = 0; i < GODWIT_CONN_MAX_PROBE; i++) {
		__u32 idx = (home + i) & (GODWIT_CONN_SLOTS - 1);
		struct godwit_conn_slot *slot = bpf_map_lookup_elem(&godwit_lock_conn, &idx);
		const __u64 *have;
		__u32 state;

		if (!slot)
			return NULL;
		state = *(volatile __u32 *)&slot->state;
		if (state == GODWIT_SLOT_EMPTY)
			return NULL;
		if (state != GODWIT_SLOT_LIVE)
			continue;
		asm volatile("" ::: "memory"); /* the key loads stay after the state load */
		have = (const __u64 *)&slot->key;
		if (have[0] == want[0] && have[1] == want[1])
			return &slot->lease;
	}
	return NULL;
}

/* Whether godwit_lock_ep may hold an address-wide entry. */
static __always_inline int may_hold_address_wide(void)
{
	__u32 zero = 0;
	__u32 *n = bpf_map_lookup_elem(&godwit_lock_any, &zero);

	return n && *n;
}

/* The lease if it is still running; *now is read from the clock once, on first need. */
static __always_inline struct godwit_lock_value *live_lease(struct godwit_lock_value *lease, __u64 *now)
{
	if (!lease)
		return NULL;
	if (!*now)
		*now = bpf_ktime_get_ns();
	return *now < lease->deadline_ns ? lease : NULL; /* ran out: never blackhole past the deadline */
}

/* Copies the frame into the ring of held packets, or counts why it could not. */
static __always_inline void hold(struct xdp_md *ctx, __u64 now)
{
	__u32 zero = 0;
	struct godwit_hold_stats *stats = bpf_map_lookup_elem(&godwit_hold_stats, &zero);
	struct held_record *rec = bpf_map_lookup_elem(&godwit_held_scratch, &zero);
	__u64 len = bpf_xdp_get_buff_len(ctx);

	if (!stats || !rec)
		return;
	if (len == 0 || len > GODWIT_HELD_MAX_FRAME) {
		stats->too_long++;
		return;
	}
	if (bpf_xdp_load_bytes(ctx, 0, rec->frame, len) < 0) {
		stats->too_long++;
		return;
	}
	rec->hdr.time_ns = now;
	rec->hdr.ifindex = ctx->ingress_ifindex;
	rec->hdr.frame_len = len;
	if (bpf_ringbuf_output(&godwit_held, rec, sizeof(rec->hdr) + len, 0) < 0) {
		stats->ring_full++;
		return;
	}
	stats->held++;
}

SEC("xdp")
int godwit_lock(struct xdp_md *ctx)
{
	struct godwit_tuple_key tuple = {}; /* zeroed: the pad is part of the hashed, compared key */
	struct godwit_endpoint_key endpoint = {};
	struct godwit_lock_value *lease;
	__u64 now = 0;

	if (tuple_key_of(ctx, &tuple) < 0)
		return godwit_chain_next(ctx, GODWIT_SLOT_LOCK);
	/* The exact connection first: its entry counts the drop even when the endpoint is locked too. */
	lease = live_lease(conn_lease(&tuple), &now);
	if (!lease) {
		endpoint_key_of(&tuple, &endpoint);
		lease = live_lease(bpf_map_lookup_elem(&godwit_lock_ep, &endpoint), &now);
	}
	if (!lease && may_hold_address_wide()) {
		/* The whole address (GODWIT_ANY_PORT): what a migration adds so that the return traffic
		 * of the workload's own outgoing connections, to ephemeral ports, is held too. */
		endpoint.port = GODWIT_ANY_PORT;
		lease = live_lease(bpf_map_lookup_elem(&godwit_lock_ep, &endpoint), &now);
	}
	if (!lease)
		return godwit_chain_next(ctx, GODWIT_SLOT_LOCK);

	__sync_fetch_and_add(&lease->drops, 1);
	lease->last_drop_ns = now;
	hold(ctx, now);
	return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
