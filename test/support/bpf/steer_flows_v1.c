// SPDX-License-Identifier: GPL-2.0
/* steer_flows as layout version 1 had it (value: backend_id, service_id), for the upgrade test of
 * test/integration/steer-flows-upgrade.test.ts. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct godwit_flow_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct godwit_flow_value {
	__u32 backend_id;
	__u32 service_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct godwit_flow_key);
	__type(value, struct godwit_flow_value);
} steer_flows SEC(".maps");

SEC("xdp")
int gwt_flows_v1(struct xdp_md *ctx)
{
	struct godwit_flow_key k = {};

	return bpf_map_lookup_elem(&steer_flows, &k) ? XDP_PASS : XDP_PASS;
}

char _license[] SEC("license") = "GPL";
