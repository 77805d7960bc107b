// SPDX-License-Identifier: GPL-2.0
/* A map at layout version 1, for the per-map layout upgrade test: u32 key -> u32 count. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} gwt_layout_counts SEC(".maps");

SEC("xdp")
int gwt_layout_prog(struct xdp_md *ctx)
{
	__u32 k = 0;

	return bpf_map_lookup_elem(&gwt_layout_counts, &k) ? XDP_PASS : XDP_PASS;
}

char _license[] SEC("license") = "GPL";
