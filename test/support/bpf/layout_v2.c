// SPDX-License-Identifier: GPL-2.0
/* The same map at layout version 2: the value grew into a struct. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct gwt_count_v2 {
	__u64 count;
	__u64 since_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct gwt_count_v2);
} gwt_layout_counts SEC(".maps");

SEC("xdp")
int gwt_layout_prog(struct xdp_md *ctx)
{
	__u32 k = 0;

	return bpf_map_lookup_elem(&gwt_layout_counts, &k) ? XDP_PASS : XDP_PASS;
}

char _license[] SEC("license") = "GPL";
