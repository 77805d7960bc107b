// SPDX-License-Identifier: GPL-2.0
/*
 * Held packets: reading the lock's ring (bpf/lock.c godwit_held) and delivering its packets
 * again, for agent/linux/packet-hold.ts. Part of the bpfmap addon (bpfmap.c registers these).
 *
 *   ringDrain(fd, size)  -> Buffer of records taken from a BPF ring buffer map, each as
 *                           [u32 length, little endian][record bytes], in the order the
 *                           program wrote them; the ring's consumer position moves past them.
 *   select(records, endpoints)
 *                        -> { taken, kept }: of ringDrain's records, the IPv4 packets addressed to
 *                           one of `endpoints` (8 bytes each, as struct godwit_endpoint_key:
 *                           address and port in network order, proto, pad; port 0 matches
 *                           every port of the address and protocol) as a packet list
 *                           ([u32 length LE][IPv4 packet] each), and every other record, as it was.
 *   coalesce(packets)    -> Buffer of packets in the same [u32 length LE][IPv4 packet] form with
 *                           each connection's contiguous TCP data joined: see below.
 *   rawSend(packets)     -> packets sent; `packets` is a Buffer of [u32 length LE][IPv4 packet]
 *                           items. Each packet's TCP or UDP checksum is recomputed in place
 *                           and the packet sent as it is (IP_HDRINCL) towards its destination:
 *                           a local address delivers it to the local socket, as if it had
 *                           just arrived.
 *
 * The ring is read through its mmap()ed pages, as the kernel lays them out for user space
 * (kernel/bpf/ringbuf.c): one read-write page with the consumer position, then a read-only
 * page with the producer position followed by the data area mapped twice in a row, so a
 * record that wraps around the end reads as one piece.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/bpf.h>
#include <node_api.h>

#include "addon.h"

/* sendmmsg() batch: one syscall per this many packets. */
#define SEND_BATCH 256

/* A BPF ring record's header: length (with the busy and discard bits) and page offset. */
struct ring_hdr {
	uint32_t len;
	uint32_t pg_off;
};


/* ---- ringDrain ---------------------------------------------------------------------------- */

struct out_buf {
	uint8_t *data;
	size_t len, cap;
};

static int out_append(struct out_buf *o, const void *rec, uint32_t len)
{
	size_t need = o->len + 4 + len;
	if (need > o->cap) {
		size_t cap = o->cap ? o->cap : 65536;
		while (cap < need)
			cap *= 2;
		uint8_t *p = realloc(o->data, cap);
		if (!p)
			return -1;
		o->data = p;
		o->cap = cap;
	}
	memcpy(o->data + o->len, &len, 4); /* little endian on every host this runs on (x86, arm64) */
	memcpy(o->data + o->len + 4, rec, len);
	o->len = need;
	return 0;
}

/* A Node Buffer with o's bytes; frees o. NULL with an exception if there is no memory. */
static napi_value take_buffer(napi_env env, struct out_buf *o)
{
	napi_value result;
	void *copy;
	napi_status st = napi_create_buffer_copy(env, o->len, o->len ? (const void *)o->data : (const void *)"", &copy, &result);
	free(o->data);
	*o = (struct out_buf){ 0 };
	if (st != napi_ok)
		return throw_errno(env, ENOMEM, "napi_create_buffer_copy", "returning held packets", -1);
	return result;
}

static napi_value ring_drain(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	uint32_t size;
	int fd;
	if (!get_args(env, info, 2, argv) || !get_fd(env, argv[0], &fd) || !get_u32(env, argv[1], "size", 1, &size))
		return NULL;
	if ((size & (size - 1)) != 0)
		return throw_arg(env, "size must be the ring's size, a power of two");

	const size_t page = (size_t)sysconf(_SC_PAGESIZE);
	void *cons_page = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (cons_page == MAP_FAILED)
		return throw_errno(env, errno, "mmap", "mapping the ring's consumer page", -1);
	void *prod_area = mmap(NULL, page + 2 * (size_t)size, PROT_READ, MAP_SHARED, fd, (off_t)page);
	if (prod_area == MAP_FAILED) {
		int e = errno;
		munmap(cons_page, page);
		return throw_errno(env, e, "mmap", "mapping the ring's data pages", -1);
	}

	unsigned long *cons_pos = cons_page;
	unsigned long *prod_pos = prod_area;
	const uint8_t *data = (const uint8_t *)prod_area + page;
	struct out_buf out = { 0 };
	unsigned long cons = __atomic_load_n(cons_pos, __ATOMIC_ACQUIRE);
	unsigned long prod = __atomic_load_n(prod_pos, __ATOMIC_ACQUIRE);
	int failed = 0;

	while (cons < prod) {
		const struct ring_hdr *h = (const void *)(data + (cons & (size - 1)));
		uint32_t len = __atomic_load_n(&h->len, __ATOMIC_ACQUIRE);
		if (len & BPF_RINGBUF_BUSY_BIT)
			break; /* still being written: the next drain takes it */
		uint32_t rec_len = len & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT);
		if (!(len & BPF_RINGBUF_DISCARD_BIT) && out_append(&out, h + 1, rec_len) < 0) {
			failed = ENOMEM;
			break;
		}
		cons += ((unsigned long)rec_len + BPF_RINGBUF_HDR_SZ + 7) & ~7ul;
		/* Give each record's room back as soon as it is copied. */
		__atomic_store_n(cons_pos, cons, __ATOMIC_RELEASE);
		if (cons >= prod)
			prod = __atomic_load_n(prod_pos, __ATOMIC_ACQUIRE);
	}
	munmap(prod_area, page + 2 * (size_t)size);
	munmap(cons_page, page);
	if (failed) {
		free(out.data);
		return throw_errno(env, failed, "malloc", "copying held packets", -1);
	}

	return take_buffer(env, &out);
}

/* ---- select ------------------------------------------------------------------------------ */

/* struct godwit_held_hdr (bpf/lock_maps.h): time_ns u64, ifindex u32, frame_len u32. */
#define HELD_HDR_BYTES 16
#define ETH_HDR_BYTES 14

/* The IPv4 packet in a ring record (header + Ethernet frame), or NULL; *len its total length. */
static const uint8_t *record_ipv4(const uint8_t *rec, uint32_t rec_len, uint32_t *len)
{
	if (rec_len < HELD_HDR_BYTES + ETH_HDR_BYTES + 20)
		return NULL;
	uint32_t frame_len;
	memcpy(&frame_len, rec + 12, 4);
	if (frame_len > rec_len - HELD_HDR_BYTES)
		frame_len = rec_len - HELD_HDR_BYTES;
	const uint8_t *frame = rec + HELD_HDR_BYTES;
	if (frame_len < ETH_HDR_BYTES + 20 || frame[12] != 0x08 || frame[13] != 0x00)
		return NULL;
	const uint8_t *ip = frame + ETH_HDR_BYTES;
	uint32_t ihl = (uint32_t)(ip[0] & 0x0f) * 4;
	uint32_t total = (uint32_t)ip[2] << 8 | ip[3];
	if ((ip[0] >> 4) != 4 || ihl < 20 || total < ihl + 4 || total > frame_len - ETH_HDR_BYTES)
		return NULL;
	*len = total;
	return ip;
}

/* Port GODWIT_ANY_PORT (0) in a key: every port of its address and protocol, as bpf/lock.c reads it. */
static bool any_port(const uint8_t *port)
{
	return port[0] == 0 && port[1] == 0;
}

static napi_value select_held(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	uint8_t *recs, *keys;
	size_t recs_len, keys_len;
	if (!get_args(env, info, 2, argv) || !get_buffer(env, argv[0], "records", &recs, &recs_len) ||
	    !get_buffer(env, argv[1], "endpoints", &keys, &keys_len))
		return NULL;
	if (keys_len % 8 != 0)
		return throw_arg(env, "endpoints must be a Buffer of 8-byte keys");

	struct out_buf taken = { 0 }, kept = { 0 };
	int failed = 0;
	for (size_t off = 0; off < recs_len && !failed;) {
		uint32_t len;
		if (recs_len - off < 4) {
			failed = EINVAL;
			break;
		}
		memcpy(&len, recs + off, 4);
		if (len > recs_len - off - 4) {
			failed = EINVAL;
			break;
		}
		const uint8_t *rec = recs + off + 4;
		off += 4 + (size_t)len;
		uint32_t ip_len = 0;
		const uint8_t *ip = record_ipv4(rec, len, &ip_len);
		bool match = false;
		if (ip && (ip[9] == IPPROTO_TCP || ip[9] == IPPROTO_UDP)) {
			const uint8_t *l4 = ip + (ip[0] & 0x0f) * 4;
			for (size_t k = 0; k < keys_len && !match; k += 8)
				match = memcmp(keys + k, ip + 16, 4) == 0 && keys[k + 6] == ip[9] &&
					(any_port(keys + k + 4) || memcmp(keys + k + 4, l4 + 2, 2) == 0);
		}
		if (!ip) /* not a packet the lock stops: nobody will claim it */
			continue;
		if ((match ? out_append(&taken, ip, ip_len) : out_append(&kept, rec, len)) < 0)
			failed = ENOMEM;
	}
	if (failed) {
		free(taken.data);
		free(kept.data);
		return throw_errno(env, failed, "select", failed == EINVAL ? "malformed record list" : "selecting held packets", -1);
	}
	napi_value result, t, k;
	t = take_buffer(env, &taken);
	if (!t) {
		free(kept.data);
		return NULL;
	}
	if (!(k = take_buffer(env, &kept)))
		return NULL;
	napi_create_object(env, &result);
	napi_set_named_property(env, result, "taken", t);
	napi_set_named_property(env, result, "kept", k);
	return result;
}

/* ---- rawSend ------------------------------------------------------------------------------ */

static uint32_t sum16(const uint8_t *p, size_t len, uint32_t sum)
{
	for (; len > 1; p += 2, len -= 2)
		sum += (uint32_t)p[0] << 8 | p[1];
	if (len)
		sum += (uint32_t)p[0] << 8;
	return sum;
}

static uint16_t fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/*
 * Recomputes the L4 checksum of an IPv4 packet in place. Needed, not just tidy: a frame that
 * crossed a veth with checksum offload carries only the pseudo-header sum in its checksum field
 * (CHECKSUM_PARTIAL), which the receiving stack would reject when the bytes come back as a new
 * packet. Returns 0, or -1 if the packet is not one this can send.
 */
static int fix_checksum(uint8_t *pkt, size_t len)
{
	if (len < 20 || (pkt[0] >> 4) != 4)
		return -1;
	size_t ihl = (size_t)(pkt[0] & 0x0f) * 4;
	size_t total = (size_t)pkt[2] << 8 | pkt[3];
	if (ihl < 20 || total < ihl || total > len)
		return -1;
	uint16_t frag = (uint16_t)(pkt[6] << 8 | pkt[7]);
	if (frag & 0x3fff)
		return 0; /* a fragment: its L4 checksum spans the whole datagram; leave it */
	uint8_t proto = pkt[9];
	uint8_t *l4 = pkt + ihl;
	size_t l4_len = total - ihl;
	size_t at;
	if (proto == IPPROTO_TCP && l4_len >= 20)
		at = 16;
	else if (proto == IPPROTO_UDP && l4_len >= 8)
		at = 6;
	else
		return 0; /* nothing to fix */
	l4[at] = l4[at + 1] = 0;
	uint32_t sum = sum16(pkt + 12, 8, 0); /* pseudo header: source and destination */
	sum += proto;
	sum += (uint32_t)l4_len;
	uint16_t c = fold(sum16(l4, l4_len, sum));
	if (proto == IPPROTO_UDP && c == 0)
		c = 0xffff; /* 0 means "no checksum" in UDP */
	l4[at] = (uint8_t)(c >> 8);
	l4[at + 1] = (uint8_t)c;
	return 0;
}

static napi_value raw_send(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	uint8_t *buf;
	size_t buf_len;
	if (!get_args(env, info, 1, argv) || !get_buffer(env, argv[0], "packets", &buf, &buf_len))
		return NULL;

	int fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW); /* IPPROTO_RAW implies IP_HDRINCL */
	if (fd < 0)
		return throw_errno(env, errno, "socket", "opening a raw IPv4 socket", 0);

	struct mmsghdr msgs[SEND_BATCH];
	struct iovec iovs[SEND_BATCH];
	struct sockaddr_in dsts[SEND_BATCH];
	int64_t sent = 0;
	size_t off = 0;
	while (off < buf_len) {
		unsigned n = 0;
		while (n < SEND_BATCH && off < buf_len) {
			uint32_t len;
			if (buf_len - off < 4)
				goto malformed;
			memcpy(&len, buf + off, 4);
			off += 4;
			if (len > buf_len - off)
				goto malformed;
			uint8_t *pkt = buf + off;
			off += len;
			if (fix_checksum(pkt, len) < 0)
				goto malformed;
			memset(&dsts[n], 0, sizeof(dsts[n]));
			dsts[n].sin_family = AF_INET;
			memcpy(&dsts[n].sin_addr, pkt + 16, 4);
			iovs[n].iov_base = pkt;
			iovs[n].iov_len = (size_t)pkt[2] << 8 | pkt[3];
			memset(&msgs[n], 0, sizeof(msgs[n]));
			msgs[n].msg_hdr.msg_name = &dsts[n];
			msgs[n].msg_hdr.msg_namelen = sizeof(dsts[n]);
			msgs[n].msg_hdr.msg_iov = &iovs[n];
			msgs[n].msg_hdr.msg_iovlen = 1;
			n++;
		}
		unsigned done = 0;
		while (done < n) {
			int r = sendmmsg(fd, msgs + done, n - done, 0);
			if (r < 0) {
				if (errno == EINTR)
					continue;
				int e = errno;
				close(fd);
				return throw_errno(env, e, "sendmmsg", "sending held packets", sent + done);
			}
			done += (unsigned)r;
		}
		sent += n;
	}
	close(fd);
	napi_value result;
	napi_create_int64(env, sent, &result);
	return result;

malformed:
	close(fd);
	return throw_errno(env, EINVAL, "rawSend", "malformed packet list (expected [u32 length][IPv4 packet] items)", sent);
}

/* ---- coalesce ----------------------------------------------------------------------------
 *
 * What GRO does for a NIC, for the packets a lock held. A chatty peer sends a small segment every
 * few milliseconds and retransmits the oldest during a freeze: a 600 ms freeze of 1,000
 * connections holds about 11,000 packets, and every one delivered costs the target's stack a whole
 * receive. Per connection they are mostly one contiguous byte range, so each range goes as one
 * segment: retransmitted bytes dropped, contiguous data joined (up to the IPv4 length limit).
 *
 * Only plain segments are joined (flags exactly ACK or ACK|PSH, not a fragment); a pure ACK
 * joins with zero bytes and so disappears into its connection's data (its acknowledgment is
 * still counted). Anything else (SYN, FIN, RST, URG, UDP) passes untouched. Output keeps
 * arrival order: a joined range sits where its first segment arrived. A joined segment keeps the
 * headers and options of the range's first segment (so its timestamp is the oldest: the peer
 * sees from the echo that its retransmission timeout was spurious and undoes it), with the
 * highest acknowledgment any segment of the connection carried and that segment's window.
 * Checksums are left to rawSend, which recomputes them.
 */

#define TCP_ACK 0x10
#define TCP_PSH 0x08
#define IP_MAX 65535u

struct item {
	uint32_t order;   /* index in the input */
	uint32_t off;     /* the packet in the input buffer */
	uint32_t len;     /* its IPv4 total length */
	uint32_t hdr;     /* IP + TCP header bytes; 0: not a data segment, passes untouched */
	uint32_t seq, ack;
	uint8_t key[12];  /* saddr, daddr, sport, dport */
	int32_t rel;      /* seq relative to the connection's first segment (sequence space) */
	uint32_t flow;    /* index of the connection's first item after sorting by key */
};

struct emitted {
	uint32_t order;
	uint32_t off, len; /* in the output buffer */
};

static int by_key_order(const void *a, const void *b)
{
	const struct item *x = a, *y = b;
	int c = memcmp(x->key, y->key, sizeof(x->key));
	if (c)
		return c;
	return x->order < y->order ? -1 : x->order > y->order;
}

static int by_flow_rel_order(const void *a, const void *b)
{
	const struct item *x = a, *y = b;
	if (x->flow != y->flow)
		return x->flow < y->flow ? -1 : 1;
	if (x->rel != y->rel)
		return x->rel < y->rel ? -1 : 1;
	return x->order < y->order ? -1 : x->order > y->order;
}

static int by_order(const void *a, const void *b)
{
	const struct emitted *x = a, *y = b;
	return x->order < y->order ? -1 : x->order > y->order;
}

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void wr32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* Fills it->hdr and friends when the packet is a plain TCP data segment. */
static void classify(const uint8_t *pkt, struct item *it)
{
	it->hdr = 0;
	if (it->len < 40 || (pkt[0] >> 4) != 4 || pkt[9] != IPPROTO_TCP)
		return;
	uint32_t ihl = (uint32_t)(pkt[0] & 0x0f) * 4;
	if (ihl < 20 || ((pkt[6] << 8 | pkt[7]) & 0x3fff) || it->len < ihl + 20)
		return;
	const uint8_t *tcp = pkt + ihl;
	uint32_t doff = (uint32_t)(tcp[12] >> 4) * 4;
	uint8_t flags = tcp[13];
	if (doff < 20 || ihl + doff > it->len)
		return;
	/* Data with ACK or ACK|PSH; or a pure ACK, which joins its connection's run as zero bytes:
	 * dropped once data covers it, its acknowledgment still counted. */
	bool pure_ack = flags == TCP_ACK && ihl + doff == it->len;
	bool data = (flags == TCP_ACK || flags == (TCP_ACK | TCP_PSH)) && ihl + doff < it->len;
	if (!pure_ack && !data)
		return;
	it->hdr = ihl + doff;
	it->seq = rd32(tcp + 4);
	it->ack = rd32(tcp + 8);
	memcpy(it->key, pkt + 12, 8);
	memcpy(it->key + 8, tcp, 4);
}

struct run {
	const struct item *first;
	uint32_t end;     /* sequence number after the run's last byte */
	uint32_t out_off; /* where the run's packet starts in the output */
	uint32_t bytes;   /* payload so far */
};

static napi_value coalesce(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	uint8_t *in;
	size_t in_len;
	if (!get_args(env, info, 1, argv) || !get_buffer(env, argv[0], "packets", &in, &in_len))
		return NULL;
	if (in_len > UINT32_MAX)
		return throw_arg(env, "packets: at most 4 GiB");

	/* Index the packets. */
	size_t n = 0;
	for (size_t off = 0; off < in_len; n++) {
		uint32_t len;
		if (in_len - off < 4)
			return throw_errno(env, EINVAL, "coalesce", "malformed packet list (truncated length)", -1);
		memcpy(&len, in + off, 4);
		if (len > in_len - off - 4)
			return throw_errno(env, EINVAL, "coalesce", "malformed packet list (truncated packet)", -1);
		off += 4 + (size_t)len;
	}
	struct item *items = calloc(n ? n : 1, sizeof(*items));
	struct emitted *outs = calloc(n ? n : 1, sizeof(*outs));
	uint8_t *out = malloc(in_len ? in_len : 1);
	if (!items || !outs || !out) {
		free(items);
		free(outs);
		free(out);
		return throw_errno(env, ENOMEM, "malloc", "coalescing held packets", -1);
	}
	size_t off = 0;
	for (size_t i = 0; i < n; i++) {
		uint32_t len;
		memcpy(&len, in + off, 4);
		items[i].order = (uint32_t)i;
		items[i].off = (uint32_t)(off + 4);
		items[i].len = len;
		if (len >= 4 && (in[off + 4] >> 4) == 4) {
			uint32_t total = (uint32_t)in[off + 6] << 8 | in[off + 7];
			if (total >= 20 && total <= len)
				items[i].len = total; /* trailing bytes (Ethernet padding) are not the packet's */
		}
		classify(in + off + 4, &items[i]);
		off += 4 + (size_t)len;
	}

	/* Per connection, by position in its sequence space. Passing packets sort among themselves. */
	qsort(items, n, sizeof(*items), by_key_order);
	for (size_t i = 0; i < n; i++) {
		bool same = i > 0 && items[i].hdr && items[i - 1].hdr && memcmp(items[i].key, items[i - 1].key, sizeof(items[i].key)) == 0;
		items[i].flow = same ? items[i - 1].flow : (uint32_t)i;
		items[i].rel = items[i].hdr ? (int32_t)(items[i].seq - items[items[i].flow].seq) : 0;
	}
	qsort(items, n, sizeof(*items), by_flow_rel_order);

	size_t out_len = 0, n_out = 0;
	for (size_t i = 0; i < n;) {
		const struct item *it = &items[i];
		if (!it->hdr) {
			memcpy(out + out_len, in + it->off, it->len);
			outs[n_out++] = (struct emitted){ it->order, (uint32_t)out_len, it->len };
			out_len += it->len;
			i++;
			continue;
		}
		/* One connection: items[i, j). Its newest acknowledgment, and the window with it. */
		size_t j = i;
		const struct item *latest = it;
		while (j < n && items[j].hdr && items[j].flow == it->flow) {
			if ((int32_t)(items[j].ack - latest->ack) > 0)
				latest = &items[j];
			j++;
		}
		const uint8_t *latest_tcp = in + latest->off + (in[latest->off] & 0x0f) * 4;
		struct run r = { 0 };
		for (size_t k = i; k <= j; k++) {
			const struct item *s = k < j ? &items[k] : NULL;
			const uint8_t *pkt = s ? in + s->off : NULL;
			uint32_t plen = s ? s->len - s->hdr : 0;
			uint32_t end = s ? s->seq + plen : 0;
			if (s && r.first && (int32_t)(s->seq - r.end) <= 0) {
				int32_t fresh = (int32_t)(end - r.end);
				if (fresh <= 0)
					continue; /* retransmitted bytes: the run has them */
				if (r.first->hdr + r.bytes + (uint32_t)fresh <= IP_MAX) {
					memcpy(out + out_len, pkt + s->len - (uint32_t)fresh, (size_t)fresh);
					out_len += (size_t)fresh;
					r.bytes += (uint32_t)fresh;
					r.end = end;
					continue;
				}
			}
			if (r.first) {
				/* Close the run: its headers say what it now carries. */
				uint8_t *p = out + r.out_off;
				uint32_t ihl = (uint32_t)(p[0] & 0x0f) * 4;
				uint32_t total = r.first->hdr + r.bytes;
				p[2] = (uint8_t)(total >> 8);
				p[3] = (uint8_t)total;
				wr32(p + ihl + 8, latest->ack);
				memcpy(p + ihl + 14, latest_tcp + 14, 2); /* window */
				outs[n_out++] = (struct emitted){ r.first->order, r.out_off, total };
				r.first = NULL;
			}
			if (!s)
				break;
			r = (struct run){ s, end, (uint32_t)out_len, plen };
			memcpy(out + out_len, pkt, s->len);
			out_len += s->len;
		}
		i = j;
	}

	/* Back into arrival order, framed. The framing adds 4 bytes per packet: at most as many
	 * packets come out as went in, and the input had the same framing. */
	qsort(outs, n_out, sizeof(*outs), by_order);
	napi_value result;
	uint8_t *framed;
	size_t framed_len = out_len + 4 * n_out;
	if (napi_create_buffer(env, framed_len, (void **)&framed, &result) != napi_ok) {
		free(items);
		free(outs);
		free(out);
		return throw_errno(env, ENOMEM, "napi_create_buffer", "coalescing held packets", -1);
	}
	size_t w = 0;
	for (size_t i = 0; i < n_out; i++) {
		memcpy(framed + w, &outs[i].len, 4);
		memcpy(framed + w + 4, out + outs[i].off, outs[i].len);
		w += 4 + outs[i].len;
	}
	free(items);
	free(outs);
	free(out);
	return result;
}

void held_register(napi_env env, napi_value exports)
{
	napi_value fn;
	napi_create_function(env, "ringDrain", NAPI_AUTO_LENGTH, ring_drain, NULL, &fn);
	napi_set_named_property(env, exports, "ringDrain", fn);
	napi_create_function(env, "select", NAPI_AUTO_LENGTH, select_held, NULL, &fn);
	napi_set_named_property(env, exports, "select", fn);
	napi_create_function(env, "coalesce", NAPI_AUTO_LENGTH, coalesce, NULL, &fn);
	napi_set_named_property(env, exports, "coalesce", fn);
	napi_create_function(env, "rawSend", NAPI_AUTO_LENGTH, raw_send, NULL, &fn);
	napi_set_named_property(env, exports, "rawSend", fn);
}
