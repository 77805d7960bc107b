/*
 * echo-server: a plain TCP echo server, the lab's sample workload. It knows nothing of godwit.
 *
 * Usage: echo-server ADDRESS PORT
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
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

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
	if (argc != 3) {
		fprintf(stderr, "usage: %s ADDRESS PORT\n", argv[0]);
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

	struct sigaction act;
	memset(&act, 0, sizeof act);
	act.sa_handler = on_signal; /* no SA_RESTART: epoll_wait returns EINTR */
	sigaction(SIGTERM, &act, NULL);
	sigaction(SIGINT, &act, NULL);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();

	listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (listen_fd < 0) {
		perror("socket");
		return 1;
	}
	int one = 1;
	setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(listen_fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		fprintf(stderr, "bind %s:%ld: %s\n", argv[1], port, strerror(errno));
		return 1;
	}
	if (listen(listen_fd, 4096) < 0) {
		perror("listen");
		return 1;
	}
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0 || listener_watch(1) < 0) {
		perror("epoll");
		return 1;
	}
	/* From here on: silent. */

	struct epoll_event evs[MAX_EVENTS];
	long long accept_resume_at = 0; /* non-zero while accepting is paused for lack of fds */
	while (!stop_requested) {
		int timeout = -1;
		if (accept_resume_at) {
			long long left = accept_resume_at - now_ms();
			if (left <= 0) {
				accept_resume_at = 0;
				listener_watch(1);
			} else {
				timeout = (int)left;
			}
		}
		int n = epoll_wait(ep, evs, MAX_EVENTS, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return 1;
		}
		for (int i = 0; i < n; i++) {
			if (evs[i].data.ptr == &listener_tag) {
				if (accept_all() && !accept_resume_at) {
					listener_watch(0);
					accept_resume_at = now_ms() + ACCEPT_RETRY_MS;
				}
			} else {
				on_conn_event(evs[i].data.ptr, evs[i].events);
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
