/*
 * echo-server: a plain TCP echo server, the lab's sample workload. It knows nothing of godwit.
 *
 * Usage: echo-server ADDRESS PORT [--outbound SERVER:PORT --connections K [--source ADDR]
 *                                  [--seed S] [--chunk BYTES] [--interval-ms MS]
 *                                  [--max-outstanding BYTES]] [--control-port PORT]
 *                                  [--memory-mib N]
 *
 * Outbound mode (--outbound), a workload that also holds connections of its own, as a database
 * replica or an application with a database does: before listening it opens K TCP connections to
 * SERVER:PORT, from --source ADDR when given (bind() before connect(): the connection leaves from
 * an address that moves with the workload) or from whatever address the kernel picks (the host's
 * own). Each connection first sends an 8-byte hello (u32 LE connection index, u32 LE run seed),
 * then CHUNK bytes of its own stream (byte-stream.h, the same bytes as lab/byte-stream.ts) every
 * interval while less than max-outstanding bytes wait for their echo; the server
 * (lab/outbound-server.ts) checks every byte and echoes it, and this side checks every echoed
 * byte. Stall: how long a connection had bytes outstanding without receiving any; gap: the longest
 * time between two arrivals of echoed data while sending (a freeze shows as a gap: while the
 * process is frozen nothing is outstanding, but the clock runs on). A connection
 * that fails is not reopened: it is reported. --control-port listens on ADDRESS too: a client
 * sends one line, "stats", "pause" (stop sending) or "resume", and gets one JSON line of counters
 * back (lab/outbound.ts reads it).
 *
 * Memory mode (--memory-mib N), a workload whose image is mostly memory, as a cache or a database
 * is: it maps N MiB of private anonymous memory, writes every page, and keeps rewriting it while it
 * runs (MEM_PAGES_PER_TICK pages every MEM_TICK_MS, round robin). Each page's contents follow from
 * its index and a per-page version (mem_versions[], 4 bytes a page), so "memcheck" on the control
 * port can recompute what every page must hold and count those that do not: a page lost or
 * mixed up by a migration (a zero page, another page's data, an older version than its counter
 * says) shows up as pagesBad. The answer: {"memoryMiB":N,"pagesBad":B,"firstBadPage":I,
 * "writes":W,"checksum":"<fnv-1a 64 of every page, hex>"}. "pause" also stops the rewriting (so two
 * checksums taken while paused must be equal), "resume" restarts it. The control port works with
 * or without outbound mode: --control-port alone serves "stats" (no connections) and "memcheck".
 *
 * Single-threaded, non-blocking, level-triggered epoll. Every byte read is written back on the
 * same connection. Output the peer does not take yet waits in a per-connection buffer; while that
 * buffer holds more than HIGH_WATER bytes the connection is not read (TCP flow control then
 * slows the peer down), and reading resumes below LOW_WATER. On the peer's FIN the pending output
 * is flushed, then the connection is closed. Raises RLIMIT_NOFILE's soft limit to the hard limit
 * for many connections. Prints nothing once it listens (its stdio may be /dev/null). SIGTERM or
 * SIGINT: exit 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "byte-stream.h"

#define READ_CHUNK (64 * 1024)
#define READS_PER_EVENT 16
#define HIGH_WATER (256 * 1024)
#define LOW_WATER (64 * 1024)
#define MAX_EVENTS 1024
#define ACCEPT_RETRY_MS 100

struct conn {
	int fd;
	unsigned events; /* what epoll currently watches */
	int reading;     /* 0 while pending output is above HIGH_WATER */
	int eof;         /* the peer sent FIN */
	char *buf;       /* pending output: buf[off .. off+len) */
	size_t cap, off, len;
};

static volatile sig_atomic_t stop_requested;
static int ep = -1;
static int listen_fd = -1;
static char listener_tag; /* epoll data.ptr of the listening socket */
static char rbuf[READ_CHUNK];

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void conn_close(struct conn *c)
{
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c->buf);
	free(c);
}

/* Watches what the connection's state needs; returns -1 if the connection should be closed. */
static int conn_update(struct conn *c)
{
	unsigned want = 0;
	if (c->eof && c->len == 0)
		return -1;
	if (c->reading && !c->eof)
		want |= EPOLLIN;
	if (c->len > 0)
		want |= EPOLLOUT;
	if (want != c->events) {
		struct epoll_event e = { .events = want, .data.ptr = c };
		if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e) < 0)
			return -1;
		c->events = want;
	}
	return 0;
}

static int pending_append(struct conn *c, const char *p, size_t n)
{
	if (n == 0)
		return 0;
	if (c->off + c->len + n > c->cap) {
		if (c->off > 0) {
			memmove(c->buf, c->buf + c->off, c->len);
			c->off = 0;
		}
		if (c->len + n > c->cap) {
			size_t cap = c->cap ? c->cap : 16 * 1024;
			while (cap < c->len + n)
				cap *= 2;
			char *b = realloc(c->buf, cap);
			if (!b)
				return -1;
			c->buf = b;
			c->cap = cap;
		}
	}
	memcpy(c->buf + c->off + c->len, p, n);
	c->len += n;
	return 0;
}

/* Writes pending output until the socket is full; -1 on a socket error. */
static int conn_flush(struct conn *c)
{
	while (c->len > 0) {
		ssize_t w = send(c->fd, c->buf + c->off, c->len, MSG_NOSIGNAL);
		if (w > 0) {
			c->off += (size_t)w;
			c->len -= (size_t)w;
		} else if (w < 0 && errno == EINTR) {
			continue;
		} else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			break;
		} else {
			return -1;
		}
	}
	if (c->len == 0) {
		c->off = 0;
		if (c->cap > 1024 * 1024) { /* give back a buffer a burst made large */
			free(c->buf);
			c->buf = NULL;
			c->cap = 0;
		}
	}
	if (!c->reading && c->len <= LOW_WATER)
		c->reading = 1;
	return 0;
}

static int conn_read(struct conn *c)
{
	for (int i = 0; i < READS_PER_EVENT && c->reading && !c->eof; i++) {
		ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
		if (n > 0) {
			size_t done = 0;
			if (c->len == 0) { /* nothing queued: try to echo straight away */
				ssize_t w = send(c->fd, rbuf, (size_t)n, MSG_NOSIGNAL);
				if (w > 0)
					done = (size_t)w;
				else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
					return -1;
			}
			if (pending_append(c, rbuf + done, (size_t)n - done) < 0)
				return -1;
			if (c->len > HIGH_WATER)
				c->reading = 0;
		} else if (n == 0) {
			c->eof = 1;
		} else if (errno == EINTR) {
			continue;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			break;
		} else {
			return -1;
		}
	}
	return 0;
}

static void on_conn_event(struct conn *c, unsigned ev)
{
	if (ev & EPOLLERR) {
		conn_close(c);
		return;
	}
	if ((ev & EPOLLIN) && conn_read(c) < 0) {
		conn_close(c);
		return;
	}
	if ((c->len > 0 || (ev & EPOLLOUT)) && conn_flush(c) < 0) {
		conn_close(c);
		return;
	}
	/* HUP: both directions are shut; what is pending can never be delivered. */
	if ((ev & EPOLLHUP) && !(ev & EPOLLIN)) {
		conn_close(c);
		return;
	}
	if (conn_update(c) < 0)
		conn_close(c);
}

static int listener_watch(int on)
{
	struct epoll_event e = { .events = EPOLLIN, .data.ptr = &listener_tag };
	return epoll_ctl(ep, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, listen_fd, &e);
}

/* Accepts what is queued; returns 1 if out of descriptors (the caller pauses accepting). */
static int accept_all(void)
{
	for (;;) {
		int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
				return 1;
			return 0; /* EAGAIN, or nothing we can act on */
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		struct conn *c = calloc(1, sizeof *c);
		if (!c) {
			close(fd);
			return 1;
		}
		c->fd = fd;
		c->reading = 1;
		c->events = EPOLLIN;
		struct epoll_event e = { .events = EPOLLIN, .data.ptr = c };
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) {
			close(fd);
			free(c);
			return 1;
		}
	}
}


/* ---- memory mode ---- */

#define MEM_PAGE 4096
#define MEM_TICK_MS 20
#define MEM_PAGES_PER_TICK 64 /* 256 KiB every 20 ms: about 12 MiB/s rewritten */

static unsigned char *mem_base;
static size_t mem_pages;
static uint32_t *mem_versions; /* per page: how many times it was rewritten */
static size_t mem_cursor;      /* next page the writer rewrites */
static uint64_t mem_writes;
static long mem_mib;

/* splitmix64: the pattern's seed per (page, version), so neighbouring pages never look alike. */
static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* Word w of page `page` at version `version`: never all zero for a whole page (seed | 1). */
static inline uint64_t mem_word(uint64_t seed, size_t w)
{
	return seed + (uint64_t)w * 0x2545f4914f6cdd1dULL;
}

static uint64_t mem_seed(size_t page, uint32_t version)
{
	return mix64(((uint64_t)page << 32) ^ version ^ 0x676f64776974ULL) | 1;
}

static void mem_fill(size_t page)
{
	uint64_t *p = (uint64_t *)(mem_base + page * MEM_PAGE);
	uint64_t seed = mem_seed(page, mem_versions[page]);
	for (size_t w = 0; w < MEM_PAGE / 8; w++)
		p[w] = mem_word(seed, w);
}

static int mem_init(long mib)
{
	size_t bytes = (size_t)mib << 20;
	mem_pages = bytes / MEM_PAGE;
	mem_mib = mib;
	mem_base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem_base == MAP_FAILED)
		return perror("mmap memory"), -1;
	mem_versions = calloc(mem_pages, sizeof *mem_versions);
	if (!mem_versions)
		return perror("calloc versions"), -1;
	for (size_t i = 0; i < mem_pages; i++)
		mem_fill(i);
	return 0;
}

/* One tick's rewriting: the next MEM_PAGES_PER_TICK pages get a new version and new contents. */
static void mem_tick(void)
{
	for (int k = 0; k < MEM_PAGES_PER_TICK && mem_pages; k++) {
		size_t i = mem_cursor;
		mem_cursor = (mem_cursor + 1) % mem_pages;
		mem_versions[i]++;
		mem_fill(i);
		mem_writes++;
	}
}

/* Checks every page against its version; FNV-1a 64 over all pages' bytes as the checksum. */
static size_t mem_check_json(char *buf, size_t cap)
{
	uint64_t fnv = 0xcbf29ce484222325ULL;
	size_t bad = 0;
	long long first_bad = -1;
	for (size_t i = 0; i < mem_pages; i++) {
		const uint64_t *p = (const uint64_t *)(mem_base + i * MEM_PAGE);
		uint64_t seed = mem_seed(i, mem_versions[i]);
		int ok = 1;
		for (size_t w = 0; w < MEM_PAGE / 8; w++) {
			if (p[w] != mem_word(seed, w))
				ok = 0;
			/* FNV over 64-bit words (not bytes): 8x fewer multiplies for 1 GiB. */
			fnv = (fnv ^ p[w]) * 0x100000001b3ULL;
		}
		if (!ok) {
			if (first_bad < 0)
				first_bad = (long long)i;
			bad++;
		}
	}
	int n = snprintf(buf, cap, "{\"memoryMiB\":%ld,\"pages\":%zu,\"pagesBad\":%zu,\"firstBadPage\":%lld,\"writes\":%llu,\"checksum\":\"%016llx\"}\n",
			 mem_mib, mem_pages, bad, first_bad, (unsigned long long)mem_writes, (unsigned long long)fnv);
	return n < 0 ? 0 : ((size_t)n >= cap ? cap - 1 : (size_t)n);
}


/* ---- outbound mode ---- */

struct outconn {
	int fd;
	uint32_t index;
	uint32_t seed;
	uint64_t sent;      /* stream bytes written */
	uint64_t verified;  /* echoed stream bytes that matched */
	uint64_t received;  /* echoed bytes, matching or not */
	int64_t corrupt_at; /* stream offset of the first mismatch, -1 if none */
	int closed;
	int reset;               /* ECONNRESET */
	int err;                 /* errno of the failure that closed it (0: EOF from the peer, or open) */
	unsigned short local_port;
	long long stall_since;   /* ms; 0 while nothing is outstanding */
	long long max_stall_ms;
	long long last_rx_ms;    /* when data last arrived (or sending resumed) */
	long long max_gap_ms;    /* longest time between two arrivals while sending */
};

static struct outconn *outs;
static unsigned n_out;
static uint32_t run_seed;
static size_t out_chunk = 64;
static long out_interval_ms = 20;
static uint64_t out_max_outstanding = 256 * 1024;
static int out_paused;
static int control_fd = -1;
static char control_tag; /* epoll data.ptr of the control socket */
static unsigned char sbuf[READ_CHUNK];

static int parse_addr_port(const char *text, struct sockaddr_in *sa)
{
	char host[64];
	const char *colon = strrchr(text, ':');
	if (!colon || (size_t)(colon - text) >= sizeof host)
		return -1;
	memcpy(host, text, (size_t)(colon - text));
	host[colon - text] = 0;
	char *end = NULL;
	long port = strtol(colon + 1, &end, 10);
	memset(sa, 0, sizeof *sa);
	sa->sin_family = AF_INET;
	if (inet_pton(AF_INET, host, &sa->sin_addr) != 1 || !end || *end || port < 1 || port > 65535)
		return -1;
	sa->sin_port = htons((unsigned short)port);
	return 0;
}

/* Opens connection i (blocking connect, then non-blocking); 0 or -1 with a message on stderr. */
static int outconn_open(struct outconn *c, uint32_t i, const struct sockaddr_in *server, const struct sockaddr_in *source)
{
	c->index = i;
	c->seed = stream_seed(i, run_seed);
	c->corrupt_at = -1;
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return perror("socket"), -1;
	if (source && bind(c->fd, (const struct sockaddr *)source, sizeof *source) < 0)
		return perror("bind source"), -1;
	if (connect(c->fd, (const struct sockaddr *)server, sizeof *server) < 0)
		return perror("connect"), -1;
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	unsigned char hello[8];
	for (int b = 0; b < 4; b++) {
		hello[b] = (unsigned char)(i >> (8 * b));
		hello[4 + b] = (unsigned char)(run_seed >> (8 * b));
	}
	if (send(c->fd, hello, sizeof hello, MSG_NOSIGNAL) != (ssize_t)sizeof hello)
		return perror("send hello"), -1;
	struct sockaddr_in local;
	socklen_t len = sizeof local;
	if (getsockname(c->fd, (struct sockaddr *)&local, &len) == 0)
		c->local_port = ntohs(local.sin_port);
	int fl = fcntl(c->fd, F_GETFL);
	if (fl < 0 || fcntl(c->fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return perror("nonblock"), -1;
	struct epoll_event e = { .events = EPOLLIN, .data.ptr = c };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e) < 0)
		return perror("epoll_ctl"), -1;
	return 0;
}

static void outconn_fail(struct outconn *c, int err)
{
	if (c->closed)
		return;
	c->closed = 1;
	c->err = err;
	c->reset = err == ECONNRESET;
	c->stall_since = 0;
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
}

static void outconn_note_data(struct outconn *c, long long now)
{
	/* A freeze shows here: the clock runs on while the process is stopped and moved. */
	if (!out_paused && c->last_rx_ms && now - c->last_rx_ms > c->max_gap_ms)
		c->max_gap_ms = now - c->last_rx_ms;
	c->last_rx_ms = now;
	if (c->stall_since && now - c->stall_since > c->max_stall_ms)
		c->max_stall_ms = now - c->stall_since;
	c->stall_since = c->sent > c->verified ? now : 0;
}

static void outconn_read(struct outconn *c)
{
	for (int i = 0; i < READS_PER_EVENT && !c->closed; i++) {
		ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
		if (n > 0) {
			c->received += (uint64_t)n;
			if (c->corrupt_at < 0) {
				size_t k = 0;
				stream_fill(c->seed, c->verified, sbuf, (size_t)n);
				while (k < (size_t)n && (unsigned char)rbuf[k] == sbuf[k])
					k++;
				/* More back than was sent is a mismatch too (a duplicate). */
				if (c->verified + k > c->sent)
					k = (size_t)(c->sent - c->verified);
				c->verified += k;
				if (k < (size_t)n)
					c->corrupt_at = (int64_t)c->verified;
			}
			outconn_note_data(c, now_ms());
		} else if (n == 0) {
			outconn_fail(c, 0);
		} else if (errno == EINTR) {
			continue;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			break;
		} else {
			outconn_fail(c, errno);
		}
	}
}

static void on_out_event(struct outconn *c, unsigned ev)
{
	if (ev & EPOLLERR) {
		int err = 0;
		socklen_t len = sizeof err;
		getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		outconn_fail(c, err ? err : EIO);
		return;
	}
	if (ev & (EPOLLIN | EPOLLHUP))
		outconn_read(c);
}

/* One interval's sending: a chunk on every open connection that has room for it. */
static void out_tick(void)
{
	if (out_paused)
		return;
	long long now = now_ms();
	for (unsigned i = 0; i < n_out; i++) {
		struct outconn *c = &outs[i];
		if (c->closed || c->sent - c->verified + out_chunk > out_max_outstanding)
			continue;
		stream_fill(c->seed, c->sent, sbuf, out_chunk);
		ssize_t w = send(c->fd, sbuf, out_chunk, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w > 0) {
			if (c->sent == c->verified && !c->stall_since)
				c->stall_since = now;
			c->sent += (uint64_t)w;
		} else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			outconn_fail(c, errno);
		}
	}
}

/* Appends to a bounded buffer; returns the new length (stops growing at cap). */
static size_t jappend(char *buf, size_t len, size_t cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static size_t jappend(char *buf, size_t len, size_t cap, const char *fmt, ...)
{
	if (len >= cap)
		return len;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf + len, cap - len, fmt, ap);
	va_end(ap);
	return n < 0 ? len : (len + (size_t)n >= cap ? cap - 1 : len + (size_t)n);
}

static size_t out_stats_json(char *buf, size_t cap)
{
	long long now = now_ms();
	uint64_t sent = 0, verified = 0;
	unsigned open = 0, resets = 0, corrupted = 0;
	long long max_stall = 0;
	size_t len = jappend(buf, 0, cap, "{\"perConnection\":[");
	for (unsigned i = 0; i < n_out; i++) {
		struct outconn *c = &outs[i];
		long long stall = c->max_stall_ms;
		if (!c->closed && c->stall_since && now - c->stall_since > stall)
			stall = now - c->stall_since;
		sent += c->sent;
		verified += c->verified;
		open += !c->closed;
		resets += (unsigned)c->reset;
		corrupted += c->corrupt_at >= 0;
		if (stall > max_stall)
			max_stall = stall;
		long long gap = c->max_gap_ms;
		if (!c->closed && !out_paused && c->last_rx_ms && now - c->last_rx_ms > gap)
			gap = now - c->last_rx_ms; /* one going on now */
		if (gap > max_stall)
			max_stall = gap;
		len = jappend(buf, len, cap,
			      "%s{\"index\":%u,\"localPort\":%u,\"sent\":%llu,\"verified\":%llu,\"received\":%llu,\"corruptAt\":%lld,"
			      "\"closed\":%s,\"reset\":%s,\"error\":\"%s\",\"maxStallMs\":%lld,\"maxGapMs\":%lld}",
			      i ? "," : "", c->index, c->local_port, (unsigned long long)c->sent, (unsigned long long)c->verified,
			      (unsigned long long)c->received, (long long)c->corrupt_at, c->closed ? "true" : "false",
			      c->reset ? "true" : "false", !c->closed ? "" : c->err ? strerror(c->err) : "closed by the peer", stall,
			      gap);
	}
	len = jappend(buf, len, cap,
		      "],\"connections\":%u,\"open\":%u,\"sending\":%s,\"sentBytes\":%llu,\"verifiedBytes\":%llu,\"resets\":%u,"
		      "\"corrupted\":%u,\"maxStallMs\":%lld}\n",
		      n_out, open, out_paused ? "false" : "true", (unsigned long long)sent, (unsigned long long)verified, resets,
		      corrupted, max_stall);
	return len;
}

/*
 * One control request: read a line, act, answer one JSON line, close. Blocking with a short
 * timeout: a lab tool asks between measurements, and the answer is a few kilobytes.
 */
static void control_accept(void)
{
	int fd = accept4(control_fd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return;
	struct timeval tv = { .tv_sec = 2 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	char line[64];
	size_t got = 0;
	while (got < sizeof line - 1) {
		ssize_t n = recv(fd, line + got, sizeof line - 1 - got, 0);
		if (n <= 0)
			break;
		got += (size_t)n;
		if (memchr(line, '\n', got))
			break;
	}
	line[got] = 0;
	if (strncmp(line, "memcheck", 8) == 0) {
		/* 1 GiB takes about a second to check: the answer goes out with a longer timeout. */
		struct timeval slow = { .tv_sec = 30 };
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &slow, sizeof slow);
		char mbuf[512];
		size_t len = mem_check_json(mbuf, sizeof mbuf), off = 0;
		while (off < len) {
			ssize_t w = send(fd, mbuf + off, len - off, MSG_NOSIGNAL);
			if (w <= 0)
				break;
			off += (size_t)w;
		}
		close(fd);
		return;
	}
	if (strncmp(line, "pause", 5) == 0)
		out_paused = 1;
	else if (strncmp(line, "resume", 6) == 0 && out_paused) {
		out_paused = 0;
		/* The pause is not a stall: gaps count again from now. */
		for (unsigned i = 0; i < n_out; i++)
			outs[i].last_rx_ms = now_ms();
	}
	size_t cap = 4096 + (size_t)n_out * 256;
	char *buf = malloc(cap);
	if (buf) {
		size_t len = out_stats_json(buf, cap), off = 0;
		while (off < len) {
			ssize_t w = send(fd, buf + off, len - off, MSG_NOSIGNAL);
			if (w <= 0)
				break;
			off += (size_t)w;
		}
		free(buf);
	}
	close(fd);
}

static int listen_on(const struct sockaddr_in *sa, int backlog)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (const struct sockaddr *)sa, sizeof *sa) < 0 || listen(fd, backlog) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static void usage(const char *me)
{
	fprintf(stderr,
		"usage: %s ADDRESS PORT [--outbound SERVER:PORT --connections K [--source ADDR] [--seed S] [--chunk BYTES]\n"
		"       [--interval-ms MS] [--max-outstanding BYTES]] [--control-port PORT] [--memory-mib N]\n",
		me);
}

static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int main(int argc, char **argv)
{
	if (argc < 3 || (argc - 3) % 2 != 0) {
		usage(argv[0]);
		return 2;
	}
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	char *end = NULL;
	long port = strtol(argv[2], &end, 10);
	if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1 || !end || *end || port < 1 || port > 65535) {
		fprintf(stderr, "usage: %s ADDRESS PORT (IPv4 address, port 1-65535)\n", argv[0]);
		return 2;
	}
	sa.sin_port = htons((unsigned short)port);

	const char *outbound = NULL, *source = NULL;
	long connections = 1, control_port = 0, memory_mib = 0;
	for (int i = 3; i < argc; i += 2) {
		const char *name = argv[i], *value = argv[i + 1];
		long v = strtol(value, &end, 10);
		int numeric = end && !*end && v >= 0;
		if (strcmp(name, "--outbound") == 0)
			outbound = value;
		else if (strcmp(name, "--source") == 0)
			source = value;
		else if (strcmp(name, "--connections") == 0 && numeric && v >= 1 && v <= 100000)
			connections = v;
		else if (strcmp(name, "--seed") == 0 && numeric)
			run_seed = (uint32_t)v;
		else if (strcmp(name, "--chunk") == 0 && numeric && v >= 1 && v <= READ_CHUNK)
			out_chunk = (size_t)v;
		else if (strcmp(name, "--interval-ms") == 0 && numeric && v >= 1)
			out_interval_ms = v;
		else if (strcmp(name, "--max-outstanding") == 0 && numeric && v >= 1)
			out_max_outstanding = (uint64_t)v;
		else if (strcmp(name, "--control-port") == 0 && numeric && v >= 1 && v <= 65535)
			control_port = v;
		else if (strcmp(name, "--memory-mib") == 0 && numeric && v >= 1 && v <= 1 << 20)
			memory_mib = v;
		else {
			fprintf(stderr, "bad option %s %s\n", name, value);
			usage(argv[0]);
			return 2;
		}
	}

	struct sigaction act;
	memset(&act, 0, sizeof act);
	act.sa_handler = on_signal; /* no SA_RESTART: epoll_wait returns EINTR */
	sigaction(SIGTERM, &act, NULL);
	sigaction(SIGINT, &act, NULL);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();

	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0) {
		perror("epoll");
		return 1;
	}
	/* Outbound connections first: once the server listens (what the lab waits for), they are up. */
	if (outbound) {
		struct sockaddr_in server, src;
		if (parse_addr_port(outbound, &server) < 0) {
			fprintf(stderr, "--outbound %s: want IPv4:PORT\n", outbound);
			return 2;
		}
		memset(&src, 0, sizeof src);
		src.sin_family = AF_INET;
		if (source && inet_pton(AF_INET, source, &src.sin_addr) != 1) {
			fprintf(stderr, "--source %s: want an IPv4 address\n", source);
			return 2;
		}
		outs = calloc((size_t)connections, sizeof *outs);
		if (!outs)
			return 1;
		for (n_out = 0; n_out < (unsigned)connections; n_out++)
			if (outconn_open(&outs[n_out], n_out, &server, source ? &src : NULL) < 0)
				return 1;
	}
	/* Memory before listening too: once the lab sees the listener, every page holds its pattern. */
	if (memory_mib && mem_init(memory_mib) < 0)
		return 1;
	if (control_port) {
		struct sockaddr_in ca = sa;
		ca.sin_port = htons((unsigned short)control_port);
		control_fd = listen_on(&ca, 16);
		struct epoll_event e = { .events = EPOLLIN, .data.ptr = &control_tag };
		if (control_fd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, control_fd, &e) < 0) {
			fprintf(stderr, "control %s:%ld: %s\n", argv[1], control_port, strerror(errno));
			return 1;
		}
	}
	listen_fd = listen_on(&sa, 4096);
	if (listen_fd < 0) {
		fprintf(stderr, "listen %s:%ld: %s\n", argv[1], port, strerror(errno));
		return 1;
	}
	if (listener_watch(1) < 0) {
		perror("epoll");
		return 1;
	}
	/* From here on: silent. */

	struct epoll_event evs[MAX_EVENTS];
	long long accept_resume_at = 0; /* non-zero while accepting is paused for lack of fds */
	long long next_tick = n_out ? now_ms() + out_interval_ms : 0;
	long long next_mem_tick = mem_pages ? now_ms() + MEM_TICK_MS : 0;
	while (!stop_requested) {
		int timeout = -1;
		long long now = now_ms();
		if (accept_resume_at) {
			long long left = accept_resume_at - now;
			if (left <= 0) {
				accept_resume_at = 0;
				listener_watch(1);
			} else {
				timeout = (int)left;
			}
		}
		if (next_tick) {
			if (now >= next_tick) {
				out_tick();
				/* After a freeze, carry on from now rather than catching up in a burst. */
				next_tick = now + out_interval_ms - (now - next_tick) % out_interval_ms;
			}
			long long left = next_tick - now;
			if (timeout < 0 || left < timeout)
				timeout = (int)(left > 0 ? left : 0);
		}
		if (next_mem_tick) {
			if (now >= next_mem_tick) {
				if (!out_paused)
					mem_tick();
				next_mem_tick = now + MEM_TICK_MS;
			}
			long long left = next_mem_tick - now;
			if (timeout < 0 || left < timeout)
				timeout = (int)(left > 0 ? left : 0);
		}
		int n = epoll_wait(ep, evs, MAX_EVENTS, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return 1;
		}
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &listener_tag) {
				if (accept_all() && !accept_resume_at) {
					listener_watch(0);
					accept_resume_at = now_ms() + ACCEPT_RETRY_MS;
				}
			} else if (p == &control_tag) {
				control_accept();
			} else if (n_out && (struct outconn *)p >= outs && (struct outconn *)p < outs + n_out) {
				on_out_event(p, evs[i].events);
			} else {
				on_conn_event(p, evs[i].events);
			}
		}
	}
	return 0;
}

/* ---- UDP echo (self-contained: nothing above refers to it) ----
 *
 * When asked, the same process also echoes UDP datagrams on ADDRESS:PORT: each datagram goes
 * back, unchanged, to the address and port it came from. Asked by the environment variable
 * GODWIT_ECHO_UDP=1, or by running the program under a name that ends in "-udp" (a link to it:
 * lab/udp-workload.ts makes build/echo-server-udp), so that the TCP side's command line stays
 * as it is.
 *
 * It starts from an ELF constructor, before main: glibc passes argc/argv to constructors, and
 * this keeps the section apart from main's argument parsing and event loop. The socket is bound
 * before main listens on TCP, so a caller that waits for the TCP listener finds UDP ready too.
 * The echo loop runs on a thread of its own (blocking recvmmsg/sendmmsg) with SIGTERM/SIGINT
 * blocked, so those signals reach the main thread's epoll_wait; main's return ends the thread.
 * CRIU dumps and restores the thread with the process (one workload, one process tree).
 */
#include <libgen.h>
#include <pthread.h>
#include <sys/uio.h>

#define UDP_BATCH 64
#define UDP_MAX_DATAGRAM 2048

static int udp_fd = -1;

static void *udp_echo_loop(void *arg)
{
	(void)arg;
	static char bufs[UDP_BATCH][UDP_MAX_DATAGRAM];
	static struct sockaddr_in peers[UDP_BATCH];
	static struct iovec iov[UDP_BATCH];
	static struct mmsghdr msgs[UDP_BATCH];
	for (;;) {
		for (int i = 0; i < UDP_BATCH; i++) {
			iov[i].iov_base = bufs[i];
			iov[i].iov_len = UDP_MAX_DATAGRAM;
			memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
			msgs[i].msg_hdr.msg_name = &peers[i];
			msgs[i].msg_hdr.msg_namelen = sizeof peers[i];
		}
		/* Blocks for the first datagram, then takes what else is queued. */
		int n = recvmmsg(udp_fd, msgs, UDP_BATCH, MSG_WAITFORONE, NULL);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN || errno == ENOMEM || errno == ENOBUFS)
				continue;
			return NULL;
		}
		for (int i = 0; i < n; i++)
			iov[i].iov_len = msgs[i].msg_len; /* send back exactly what came */
		/* A datagram the socket cannot take now is dropped, as UDP would; the peer sees it lost. */
		for (int sent = 0; sent < n;) {
			int w = sendmmsg(udp_fd, msgs + sent, (unsigned)(n - sent), 0);
			if (w > 0)
				sent += w;
			else if (w < 0 && errno == EINTR)
				continue;
			else
				sent++; /* skip the one that failed (ECONNREFUSED of an earlier send, ENOBUFS...) */
		}
	}
}

static int udp_echo_wanted(char **argv)
{
	const char *env = getenv("GODWIT_ECHO_UDP");
	if (env && strcmp(env, "1") == 0)
		return 1;
	if (!argv || !argv[0])
		return 0;
	char name[256];
	snprintf(name, sizeof name, "%s", argv[0]);
	const char *base = basename(name);
	size_t len = strlen(base);
	return len > 4 && strcmp(base + len - 4, "-udp") == 0;
}

__attribute__((constructor)) static void udp_echo_start(int argc, char **argv, char **envp)
{
	(void)envp;
	if (argc < 3 || !udp_echo_wanted(argv))
		return;
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	char *end = NULL;
	long port = strtol(argv[2], &end, 10);
	if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1 || !end || *end || port < 1 || port > 65535)
		return; /* main reports the bad arguments */
	sa.sin_port = htons((unsigned short)port);
	udp_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (udp_fd < 0) {
		perror("udp socket");
		exit(1);
	}
	/* Room for a burst of many flows' datagrams (the lab sends from up to thousands of sockets). */
	int size = 4 * 1024 * 1024;
	setsockopt(udp_fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
	setsockopt(udp_fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
	if (bind(udp_fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		fprintf(stderr, "udp bind %s:%ld: %s\n", argv[1], port, strerror(errno));
		exit(1);
	}
	sigset_t block, old;
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	pthread_t t;
	int err = pthread_create(&t, NULL, udp_echo_loop, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err) {
		fprintf(stderr, "udp thread: %s\n", strerror(err));
		exit(1);
	}
	pthread_detach(t);
}
