// SPDX-License-Identifier: GPL-2.0
/*
 * godwit packet steering: services (VIP:port -> backends) and workload addresses, XDP on each
 * host's interface, in slot GODWIT_SLOT_STEER of the program chain (before the lock, which then
 * sees what steering DNATed or took out of the tunnel), plus a TC egress program for the
 * replies' reverse NAT.
 *
 * A packet to a service's VIP:port keeps the backend its flow was given (steer_flows); a new
 * flow, or one whose backend left the table, gets one from the service's Maglev ring (built by
 * the agent, agent/maglev.ts), indexed by the 5-tuple's hash. Then:
 *  - backend on this host: DNAT to the backend, a reverse-NAT entry for its replies, on to the
 *    stack (the TC program below makes the replies come from the VIP);
 *  - backend elsewhere: tunnel the frame to the backend's host (lib/encap.h) and send it out
 *    again (XDP_TX). That host's program takes the tunnel off and finishes the DNAT, and the
 *    reply leaves it directly with the VIP as source (direct server return).
 * A packet to no VIP:port whose destination is a workload address that runs on another host
 * (steer_addrs) is tunnelled there whole, marked GODWIT_VXLAN_ADDR_MARKER: the address moved,
 * so its connections' packets (to any port, replies of outbound connections too) follow it.
 *
 * A tunnelled frame whose backend or address is no longer here (a host on an older generation
 * sent it, or the fabric still delivers the address here) is sent on, once, to the host this
 * host's table names, and counted (steer_fwd); one it cannot place is dropped and counted,
 * never passed to this host's stack, which would answer it with a reset.
 * Everything else goes on along the chain untouched. The maps: steer_maps.h.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "steer_maps.h"
#include "lib/chain.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/hash.h"
#include "lib/nat.h"
#include "lib/encap.h"

/* Pinned per host by the agent (bpftool ... pinmaps DIR), reused on reload: see lock.c for why
 * not LIBBPF_PIN_BY_NAME. Map names stay within the kernel's 15 characters. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct godwit_steer_meta);
} steer_meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GODWIT_STEER_SLOTS * GODWIT_STEER_MAX_SERVICES);
	__type(key, struct godwit_vip_key);
	__type(value, struct godwit_vip_value);
} steer_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GODWIT_STEER_SLOTS * GODWIT_STEER_MAX_ID);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct godwit_steer_backend);
} steer_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GODWIT_STEER_SLOTS * GODWIT_STEER_MAX_SERVICES);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct godwit_steer_ring);
} steer_rings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, GODWIT_STEER_FLOWS);
	__type(key, struct godwit_flow_key);
	__type(value, struct godwit_flow_value);
} steer_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, GODWIT_STEER_RNAT);
	__type(key, struct godwit_rnat_key);
	__type(value, struct godwit_rnat_value);
} steer_rnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GODWIT_STEER_MAX_ID);
	__type(key, __u32);
	__type(value, struct godwit_steer_counter);
} steer_svc_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GODWIT_STEER_MAX_ID);
	__type(key, __u32);
	__type(value, struct godwit_steer_counter);
} steer_be_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GODWIT_STEER_SLOTS * GODWIT_STEER_MAX_ADDRS);
	__type(key, struct godwit_addr_key);
	__type(value, struct godwit_addr_value);
} steer_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GODWIT_FWD_COUNTERS);
	__type(key, __u32);
	__type(value, struct godwit_fwd_counter);
} steer_fwd SEC(".maps");

static __always_inline void count_fwd(__u32 which)
{
	struct godwit_fwd_counter *c = bpf_map_lookup_elem(&steer_fwd, &which);

	if (c)
		c->packets++;
}

static __always_inline struct godwit_addr_value *address_in(__u32 slot, __u32 addr)
{
	struct godwit_addr_key k = { .addr = addr, .slot = slot };

	return bpf_map_lookup_elem(&steer_addrs, &k);
}

static __always_inline void count(void *stats, __u32 id, __u32 bytes, __u32 new_flow)
{
	struct godwit_steer_counter *c = bpf_map_lookup_elem(stats, &id);

	if (!c)
		return;
	/* Per CPU, and XDP runs to completion on its CPU: plain adds. */
	c->packets++;
	c->bytes += bytes;
	c->flows += new_flow;
}

static __always_inline struct godwit_steer_backend *backend_in(__u32 slot, __u32 id)
{
	__u32 index;

	if (id == 0 || id >= GODWIT_STEER_MAX_ID)
		return NULL;
	index = slot * GODWIT_STEER_MAX_ID + id;
	return bpf_map_lookup_elem(&steer_backends, &index);
}

/* What deliver_local does with the reverse-NAT entry of the packet's flow. */
enum rnat_record {
	RNAT_KEEP,    /* known to be written (GODWIT_FLOW_RNAT): no steer_rnat access at all */
	RNAT_ENSURE,  /* written only if missing (a lookup first) */
	RNAT_WRITE,   /* the flow's first packet here: written */
};

/* The backend's address for a packet already at it: DNAT, and remember how to answer. Flows
 * whose entry is known to be written pass RNAT_KEEP: on the hit path that saves an LRU hash
 * lookup per packet; the replies keep the entry fresh (the TC program looks it up), so a live
 * flow's entry is not what the LRU evicts. */
static __always_inline int deliver_local(struct iphdr *iph, struct l4_ports *ports, void *data_end, const struct godwit_steer_backend *be, enum rnat_record record)
{
	if (record != RNAT_KEEP) {
		struct godwit_rnat_key rk = {
			.backend_addr = be->addr,
			.client_addr = iph->saddr,
			.backend_port = be->port,
			.client_port = ports->source,
			.proto = iph->protocol,
		};
		struct godwit_rnat_value rv = { .vip_addr = iph->daddr, .vip_port = ports->dest };

		if (record == RNAT_WRITE || !bpf_map_lookup_elem(&steer_rnat, &rk))
			bpf_map_update_elem(&steer_rnat, &rk, &rv, BPF_ANY);
	}
	if (xdp_dnat4(iph, ports, data_end, be->addr, be->port))
		return XDP_DROP;
	return -1; /* go on along the chain */
}

/* A tunnelled frame this host cannot deliver: dropped and counted, never answered. */
static __always_inline int drop_stale(void)
{
	count_fwd(GODWIT_FWD_STALE);
	return XDP_DROP;
}

/* A tunnelled frame whose backend or address runs on `host`: sent on there, once. */
static __always_inline int forward_once(struct xdp_md *ctx, const struct godwit_encap_hdr *h, __u32 self, __u32 host)
{
	/* Forwarded once already, and the host it was sent to still does not have it: the two
	 * hosts' tables disagree (mid-change). Dropped rather than bounced; the peer retransmits. */
	if (h->vxlan.flags & GODWIT_VXLAN_FLAG_FORWARDED)
		return drop_stale();
	count_fwd(GODWIT_FWD_FORWARDED);
	return xdp_retarget_vxlan(ctx, self, host);
}

/*
 * A frame from another host's program. Its backend (or, with the address marker, its inner
 * destination address) here: the tunnel off, DNAT to the backend the sender chose (an address's
 * frame as it is), on along the chain. Elsewhere: forwarded there. Unknown: dropped.
 */
static __always_inline int finish_tunnelled(struct xdp_md *ctx, __u32 slot, __u32 self)
{
	struct godwit_steer_backend *be = NULL;
	struct godwit_encap_hdr *h;
	struct hdr_cursor c;
	struct l4_ports *ports;
	struct iphdr *iph;
	void *data_end;
	__u32 id;
	int rc;

	h = xdp_vxlan_peek(ctx);
	if (!h)
		return godwit_chain_next(ctx, GODWIT_SLOT_STEER);
	id = godwit_vxlan_id(h);
	if (id == GODWIT_VXLAN_ADDR_MARKER) {
		struct godwit_addr_value *where;
		struct iphdr *inner = (void *)(h + 1) + sizeof(struct ethhdr);

		data_end = (void *)(long)ctx->data_end;
		if ((void *)(inner + 1) > data_end)
			return XDP_DROP;
		where = address_in(slot, inner->daddr);
		if (!where)
			return drop_stale();
		if (!(where->flags & GODWIT_ADDR_LOCAL))
			return forward_once(ctx, h, self, where->host_addr);
		if (xdp_decap_vxlan(ctx) < 0)
			return XDP_DROP;
		return godwit_chain_next(ctx, GODWIT_SLOT_STEER);
	}
	be = backend_in(slot, id);
	if (!be || !(be->flags & GODWIT_BACKEND_PRESENT))
		return drop_stale();
	if (!(be->flags & GODWIT_BACKEND_LOCAL))
		return forward_once(ctx, h, self, be->host_addr);

	rc = xdp_decap_vxlan(ctx);
	if (rc <= 0)
		return XDP_DROP;
	data_end = (void *)(long)ctx->data_end;
	c.pos = (void *)(long)ctx->data;
	if (parse_ethhdr(&c, data_end) != bpf_htons(ETH_P_IP))
		return XDP_DROP;
	iph = parse_iphdr(&c, data_end);
	if (!iph || (iph->protocol != IPPROTO_TCP && iph->protocol != IPPROTO_UDP))
		return XDP_DROP;
	ports = parse_l4_ports(&c, data_end);
	if (!ports)
		return XDP_DROP;
	/* No flow entry on this side to remember it in (the sending host's flow table keeps the
	 * flow on this backend): looked up, written when missing. */
	if (deliver_local(iph, ports, data_end, be, RNAT_ENSURE) == XDP_DROP)
		return XDP_DROP;
	return godwit_chain_next(ctx, GODWIT_SLOT_STEER);
}

/*
 * A packet for no VIP: if its destination is a workload address that runs on another host, the
 * whole frame is tunnelled there (no NAT); otherwise it goes on along the chain. One hash lookup.
 */
static __always_inline int steer_address(struct xdp_md *ctx, const struct godwit_steer_meta *meta, __u32 slot, struct iphdr *iph, __u16 sport, __u16 dport)
{
	struct godwit_addr_value *where = address_in(slot, iph->daddr);

	if (!where || (where->flags & GODWIT_ADDR_LOCAL))
		return godwit_chain_next(ctx, GODWIT_SLOT_STEER);
	count_fwd(GODWIT_FWD_FORWARDED);
	return xdp_encap_vxlan(ctx, meta->host_addr, where->host_addr, godwit_flow_hash(iph->saddr, iph->daddr, sport, dport, iph->protocol), GODWIT_VXLAN_ADDR_MARKER);
}

SEC("xdp")
int godwit_steer(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct hdr_cursor c = { .pos = (void *)(long)ctx->data };
	struct godwit_flow_value *flow, chosen;
	struct godwit_steer_backend *be = NULL;
	struct godwit_steer_meta *meta;
	struct godwit_vip_value *svc;
	struct godwit_steer_ring *ring;
	struct godwit_flow_key fk;
	struct godwit_vip_key vk;
	struct l4_ports *ports;
	struct iphdr *iph;
	__u32 zero = 0, slot, hash = 0, ring_index, bytes, new_flow = 0;

	meta = bpf_map_lookup_elem(&steer_meta, &zero);
	if (!meta)
		return godwit_chain_next(ctx, GODWIT_SLOT_STEER);
	/* Read once: every table lookup of this packet uses this copy, so it sees one generation. */
	slot = *(volatile __u32 *)&meta->active & 1;

	if (parse_ethhdr(&c, data_end) != bpf_htons(ETH_P_IP))
		return godwit_chain_next(ctx, GODWIT_SLOT_STEER);
	iph = parse_iphdr(&c, data_end);
	if (!iph)
		return godwit_chain_next(ctx, GODWIT_SLOT_STEER);
	/* ICMP and fragments (fragments carry no ports; the first one does, but the rest could not
	 * follow it) are no service's, but an address's: they follow the address. */
	if ((iph->protocol != IPPROTO_TCP && iph->protocol != IPPROTO_UDP) || (iph->frag_off & bpf_htons(0x2000 | GODWIT_IP_OFFSET)))
		return steer_address(ctx, meta, slot, iph, 0, 0);
	ports = parse_l4_ports(&c, data_end);
	if (!ports)
		return godwit_chain_next(ctx, GODWIT_SLOT_STEER);

	if (iph->protocol == IPPROTO_UDP && ports->dest == bpf_htons(GODWIT_VXLAN_PORT) && iph->daddr == meta->host_addr)
		return finish_tunnelled(ctx, slot, meta->host_addr);

	vk.addr = iph->daddr;
	vk.port = ports->dest;
	vk.proto = iph->protocol;
	vk.slot = slot;
	svc = bpf_map_lookup_elem(&steer_vips, &vk);
	if (!svc)
		return steer_address(ctx, meta, slot, iph, ports->source, ports->dest);

	fk.saddr = iph->saddr;
	fk.daddr = iph->daddr;
	fk.sport = ports->source;
	fk.dport = ports->dest;
	fk.proto = iph->protocol;
	fk.pad[0] = fk.pad[1] = fk.pad[2] = 0;

	flow = bpf_map_lookup_elem(&steer_flows, &fk);
	if (flow) {
		be = backend_in(slot, flow->backend_id);
		/* Removed (or never of this service): the flow is chosen again; a TCP connection then
		 * meets a backend that does not know it and gets a RST, which is what removal means. */
		if (be && (!(be->flags & GODWIT_BACKEND_PRESENT) || be->service_id != svc->service_id))
			be = NULL;
	}
	if (!be) {
		hash = godwit_flow_hash(fk.saddr, fk.daddr, fk.sport, fk.dport, fk.proto);
		ring_index = slot * GODWIT_STEER_MAX_SERVICES + svc->ring;
		ring = bpf_map_lookup_elem(&steer_rings, &ring_index);
		if (!ring)
			return XDP_DROP;
		__u32 at = godwit_reduce(hash, GODWIT_STEER_RING_SIZE);
		/* The bound is true by construction; the barrier keeps clang from folding the check
		 * into the index arithmetic, where the verifier loses it. */
		barrier_var(at);
		if (at >= GODWIT_STEER_RING_SIZE)
			return XDP_DROP;
		chosen.backend_id = ring->backend[at];
		chosen.service_id = svc->service_id;
		be = backend_in(slot, chosen.backend_id);
		/* No backend takes new flows (all drained or removed): nothing to send it to. */
		if (!be || !(be->flags & GODWIT_BACKEND_PRESENT))
			return XDP_DROP;
		/* A local backend's reverse-NAT entry is written below, with this first packet. */
		chosen.flags = (be->flags & GODWIT_BACKEND_LOCAL) ? GODWIT_FLOW_RNAT : 0;
		bpf_map_update_elem(&steer_flows, &fk, &chosen, BPF_ANY);
		flow = &chosen;
		new_flow = 1;
	}

	bytes = bpf_ntohs(iph->tot_len);
	count(&steer_svc_stats, svc->service_id, bytes, new_flow);
	count(&steer_be_stats, flow->backend_id, bytes, new_flow);

	if (be->flags & GODWIT_BACKEND_LOCAL) {
		enum rnat_record record = new_flow ? RNAT_WRITE : (flow->flags & GODWIT_FLOW_RNAT) ? RNAT_KEEP : RNAT_ENSURE;

		/* A flow from an older layout, or whose backend has become local: its entry made sure
		 * of once, then flagged (a plain store into the flow's value; two CPUs racing only
		 * both make sure). */
		if (record == RNAT_ENSURE)
			flow->flags |= GODWIT_FLOW_RNAT;
		if (deliver_local(iph, ports, data_end, be, record) == XDP_DROP)
			return XDP_DROP;
		return godwit_chain_next(ctx, GODWIT_SLOT_STEER);
	}
	/* Tunnelled from here on: if the backend comes back, its entry is written again. */
	if (flow->flags & GODWIT_FLOW_RNAT)
		flow->flags &= ~GODWIT_FLOW_RNAT;
	if (!new_flow) /* the hash is needed on a miss and by the tunnel only */
		hash = godwit_flow_hash(fk.saddr, fk.daddr, fk.sport, fk.dport, fk.proto);
	return xdp_encap_vxlan(ctx, meta->host_addr, be->host_addr, hash, flow->backend_id);
}

/* Replies of DNATed flows leave with the VIP:port their client talks to. */
SEC("tc")
int godwit_steer_rnat(struct __sk_buff *skb)
{
	void *data_end = (void *)(long)skb->data_end;
	struct hdr_cursor c = { .pos = (void *)(long)skb->data };
	struct godwit_rnat_value *rv;
	struct godwit_rnat_key rk;
	struct l4_ports *ports;
	struct iphdr *iph;

	if (parse_ethhdr(&c, data_end) != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	iph = parse_iphdr(&c, data_end);
	if (!iph || (iph->protocol != IPPROTO_TCP && iph->protocol != IPPROTO_UDP))
		return TC_ACT_OK;
	if (iph->frag_off & bpf_htons(GODWIT_IP_OFFSET))
		return TC_ACT_OK;
	ports = parse_l4_ports(&c, data_end);
	if (!ports)
		return TC_ACT_OK;

	rk.backend_addr = iph->saddr;
	rk.client_addr = iph->daddr;
	rk.backend_port = ports->source;
	rk.client_port = ports->dest;
	rk.proto = iph->protocol;
	rk.pad[0] = rk.pad[1] = rk.pad[2] = 0;
	rv = bpf_map_lookup_elem(&steer_rnat, &rk);
	if (!rv)
		return TC_ACT_OK;
	if (tc_snat4(skb, iph->ihl, rk.proto, rk.backend_addr, rk.backend_port, rv->vip_addr, rv->vip_port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
