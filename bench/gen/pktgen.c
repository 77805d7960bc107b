// SPDX-License-Identifier: MIT
/*
 * godwit-pktgen: the steer-dataplane benchmark's load. Sends exactly --packets crafted Ethernet
 * frames from one interface on an AF_PACKET socket in sendmmsg batches: --flows flows (source
 * ports sport..sport+flows-1) taken round-robin, a fixed --payload, to one dst MAC / IP / port.
 * The frames are built once per flow before the clock starts, so every mode of the benchmark
 * gets the same bytes at the same cost; only the destination IP differs between a VIP run and a
 * baseline run.
 *
 * TCP segments are ACK|PSH with data, as in the middle of an established connection: conntrack's
 * loose pickup (nf_conntrack_tcp_loose=1, the default) accepts such a first packet as ESTABLISHED,
 * so iptables / nftables DNAT rewrite them as they would a live connection. Each flow's sequence
 * number advances by the payload length per segment, as a sender's would.
 *
 * Prints one JSON line: {"sent":N,"elapsedNs":...,"cpuNs":...} (cpuNs: this process's user +
 * system time, which on this kernel includes the softirq work done in its own context).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "clocks.h"

#define MAX_BATCH 1024
#define MAX_FLOWS 65536
#define MAX_PAYLOAD 1400

struct frame {
	uint8_t *buf;
	size_t len;
};

static void die(const char *what)
{
	fprintf(stderr, "godwit-pktgen: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: godwit-pktgen --iface IF --dst-mac MAC --src IP --dst IP --dport P\n"
		"       [--proto udp|tcp] [--packets N] [--flows F] [--sport S] [--payload BYTES] [--batch B]\n");
	exit(2);
}

static uint16_t csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static uint32_t csum_add(uint32_t sum, const void *data, size_t len)
{
	const uint8_t *p = data;
	for (; len > 1; len -= 2, p += 2)
		sum += (uint32_t)(p[0] << 8 | p[1]);
	if (len)
		sum += (uint32_t)(p[0] << 8);
	return sum;
}

/* The L4 checksum over the IPv4 pseudo-header and the segment, in network order. */
static uint16_t l4_csum(const struct iphdr *ip, const void *l4, size_t l4len)
{
	uint32_t sum = 0;
	sum = csum_add(sum, &ip->saddr, 4);
	sum = csum_add(sum, &ip->daddr, 4);
	sum += ip->protocol;
	sum += (uint32_t)l4len;
	sum = csum_add(sum, l4, l4len);
	return htons(csum_fold(sum));
}

static int parse_mac(const char *s, uint8_t mac[6])
{
	unsigned v[6];
	if (sscanf(s, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6)
		return -1;
	for (int i = 0; i < 6; i++)
		mac[i] = (uint8_t)v[i];
	return 0;
}

/* Fills a frame's IP and L4 checksums (after its addresses, ports and sequence are set). */
static void finish(uint8_t *buf, size_t len, int tcp)
{
	struct iphdr *ip = (struct iphdr *)(buf + sizeof(struct ether_header));
	ip->check = 0;
	ip->check = htons(csum_fold(csum_add(0, ip, sizeof(*ip))));
	void *l4 = buf + sizeof(struct ether_header) + sizeof(*ip);
	size_t l4len = len - sizeof(struct ether_header) - sizeof(*ip);
	if (tcp) {
		((struct tcphdr *)l4)->check = 0;
		((struct tcphdr *)l4)->check = l4_csum(ip, l4, l4len);
	} else {
		((struct udphdr *)l4)->check = 0;
		((struct udphdr *)l4)->check = l4_csum(ip, l4, l4len);
	}
}

int main(int argc, char **argv)
{
	const char *iface = NULL, *dst_mac_s = NULL, *src_s = NULL, *dst_s = NULL;
	int tcp = 0;
	long packets = 1000000, flows = 64, sport = 20000, dport = 0, payload = 18, batch = 256;
	static const struct option opts[] = {
		{ "iface", required_argument, 0, 'i' },	  { "dst-mac", required_argument, 0, 'm' },
		{ "src", required_argument, 0, 's' },	  { "dst", required_argument, 0, 'd' },
		{ "dport", required_argument, 0, 'p' },	  { "sport", required_argument, 0, 'S' },
		{ "proto", required_argument, 0, 'P' },	  { "packets", required_argument, 0, 'n' },
		{ "flows", required_argument, 0, 'f' },	  { "payload", required_argument, 0, 'l' },
		{ "batch", required_argument, 0, 'b' },	  { 0, 0, 0, 0 },
	};
	for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
		switch (c) {
		case 'i': iface = optarg; break;
		case 'm': dst_mac_s = optarg; break;
		case 's': src_s = optarg; break;
		case 'd': dst_s = optarg; break;
		case 'p': dport = atol(optarg); break;
		case 'S': sport = atol(optarg); break;
		case 'n': packets = atol(optarg); break;
		case 'f': flows = atol(optarg); break;
		case 'l': payload = atol(optarg); break;
		case 'b': batch = atol(optarg); break;
		case 'P':
			if (!strcmp(optarg, "tcp"))
				tcp = 1;
			else if (strcmp(optarg, "udp"))
				usage();
			break;
		default: usage();
		}
	}
	uint8_t dst_mac[6];
	struct in_addr src, dst;
	if (!iface || !dst_mac_s || !src_s || !dst_s || dport < 1 || dport > 65535 || parse_mac(dst_mac_s, dst_mac) ||
	    inet_pton(AF_INET, src_s, &src) != 1 || inet_pton(AF_INET, dst_s, &dst) != 1 || packets < 1 || flows < 1 ||
	    flows > MAX_FLOWS || sport < 1 || sport + flows - 1 > 65535 || payload < 0 || payload > MAX_PAYLOAD || batch < 1 ||
	    batch > MAX_BATCH)
		usage();

	int fd = socket(AF_PACKET, SOCK_RAW, 0); /* protocol 0: send only, never receive */
	if (fd < 0)
		die("socket(AF_PACKET)");
	struct ifreq ifr = { 0 };
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", iface);
	if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0)
		die("SIOCGIFHWADDR");
	uint8_t src_mac[6];
	memcpy(src_mac, ifr.ifr_hwaddr.sa_data, 6);
	struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(iface) };
	if (sll.sll_ifindex == 0)
		die("if_nametoindex");
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0)
		die("bind");
	/* No qdisc: the frame goes straight to the driver, as a NIC's would arrive from the wire. */
	int one = 1;
	setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
	int sndbuf = 8 << 20;
	setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf));

	size_t l4hdr = tcp ? sizeof(struct tcphdr) : sizeof(struct udphdr);
	size_t len = sizeof(struct ether_header) + sizeof(struct iphdr) + l4hdr + (size_t)payload;
	if (len < 60)
		len = 60; /* Ethernet minimum; the IP total length below says what is real */
	struct frame *fr = calloc((size_t)flows, sizeof(*fr));
	if (!fr)
		die("calloc");
	for (long f = 0; f < flows; f++) {
		uint8_t *b = calloc(1, len);
		if (!b)
			die("calloc");
		struct ether_header *eth = (struct ether_header *)b;
		memcpy(eth->ether_dhost, dst_mac, 6);
		memcpy(eth->ether_shost, src_mac, 6);
		eth->ether_type = htons(ETHERTYPE_IP);
		struct iphdr *ip = (struct iphdr *)(eth + 1);
		ip->version = 4;
		ip->ihl = 5;
		ip->tot_len = htons((uint16_t)(sizeof(*ip) + l4hdr + (size_t)payload));
		ip->id = htons((uint16_t)f);
		ip->frag_off = htons(IP_DF);
		ip->ttl = 64;
		ip->protocol = tcp ? IPPROTO_TCP : IPPROTO_UDP;
		ip->saddr = src.s_addr;
		ip->daddr = dst.s_addr;
		uint8_t *data = (uint8_t *)(ip + 1) + l4hdr;
		for (long i = 0; i < payload; i++)
			data[i] = (uint8_t)('a' + (i + f) % 26);
		if (tcp) {
			struct tcphdr *th = (struct tcphdr *)(ip + 1);
			th->source = htons((uint16_t)(sport + f));
			th->dest = htons((uint16_t)dport);
			th->seq = htonl(0x10000000u + (uint32_t)f * 7919u);
			th->ack_seq = htonl(0x20000000u + (uint32_t)f * 104729u);
			th->doff = 5;
			th->ack = 1;
			th->psh = 1;
			th->window = htons(502);
		} else {
			struct udphdr *uh = (struct udphdr *)(ip + 1);
			uh->source = htons((uint16_t)(sport + f));
			uh->dest = htons((uint16_t)dport);
			uh->len = htons((uint16_t)(sizeof(*uh) + (size_t)payload));
		}
		finish(b, len, tcp);
		fr[f].buf = b;
		fr[f].len = len;
	}

	struct mmsghdr *msgs = calloc((size_t)batch, sizeof(*msgs));
	struct iovec *iov = calloc((size_t)batch, sizeof(*iov));
	if (!msgs || !iov)
		die("calloc");
	uint64_t cpu0 = cpu_ns(), t0 = now_ns();
	long sent = 0, next_flow = 0, retries = 0;
	while (sent < packets) {
		int n = (int)(packets - sent < batch ? packets - sent : batch);
		for (int j = 0; j < n; j++) {
			struct frame *f = &fr[(next_flow + j) % flows];
			if (tcp && sent + j >= flows) {
				/* The flow's next segment: sequence advances by the payload, as a sender's does. */
				struct tcphdr *th = (struct tcphdr *)(f->buf + sizeof(struct ether_header) + sizeof(struct iphdr));
				th->seq = htonl(ntohl(th->seq) + (uint32_t)payload);
				finish(f->buf, f->len, 1);
			}
			iov[j].iov_base = f->buf;
			iov[j].iov_len = f->len;
			memset(&msgs[j].msg_hdr, 0, sizeof(msgs[j].msg_hdr));
			msgs[j].msg_hdr.msg_iov = &iov[j];
			msgs[j].msg_hdr.msg_iovlen = 1;
		}
		/*
		 * A batch holds at most one segment of a flow when flows >= batch; with fewer flows a
		 * flow's frame is reused within a batch, so TCP sequence numbers repeat (retransmissions,
		 * still inside conntrack's window).
		 */
		int done = 0;
		while (done < n) {
			int r = sendmmsg(fd, msgs + done, (unsigned)(n - done), 0);
			if (r < 0) {
				if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR) {
					retries++;
					continue;
				}
				die("sendmmsg");
			}
			done += r;
		}
		sent += n;
		next_flow = (next_flow + n) % flows;
	}
	uint64_t t1 = now_ns(), cpu1 = cpu_ns();
	printf("{\"sent\":%ld,\"elapsedNs\":%llu,\"cpuNs\":%llu,\"retries\":%ld,\"frameBytes\":%zu}\n", sent,
	       (unsigned long long)(t1 - t0), (unsigned long long)(cpu1 - cpu0), retries, len);
	return 0;
}
