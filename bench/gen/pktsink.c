// SPDX-License-Identifier: MIT
/*
 * godwit-pktsink: the backend of the steer-dataplane benchmark's UDP runs. Binds a UDP socket to
 * ADDR:PORT, prints "ready" once bound, then counts the datagrams it receives (recvmmsg
 * batches) until --expect have arrived or none arrived for --idle-ms after the first (or for
 * --start-ms before it). Prints one JSON line:
 *   {"received":N,"firstNs":...,"lastNs":...,"cpuNs":...}
 * (CLOCK_MONOTONIC times of the first and last datagram; cpuNs: this process's user + system).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "clocks.h"

#define BATCH 256
#define BUF 2048

static void die(const char *what)
{
	fprintf(stderr, "godwit-pktsink: %s: %s\n", what, strerror(errno));
	exit(1);
}

int main(int argc, char **argv)
{
	const char *addr = NULL;
	long port = 0, expect = 0, idle_ms = 500, start_ms = 10000;
	static const struct option opts[] = {
		{ "bind", required_argument, 0, 'a' },	  { "port", required_argument, 0, 'p' },
		{ "expect", required_argument, 0, 'n' },  { "idle-ms", required_argument, 0, 'i' },
		{ "start-ms", required_argument, 0, 's' }, { 0, 0, 0, 0 },
	};
	for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
		switch (c) {
		case 'a': addr = optarg; break;
		case 'p': port = atol(optarg); break;
		case 'n': expect = atol(optarg); break;
		case 'i': idle_ms = atol(optarg); break;
		case 's': start_ms = atol(optarg); break;
		default:
			fprintf(stderr, "usage: godwit-pktsink --bind ADDR --port P [--expect N] [--idle-ms MS] [--start-ms MS]\n");
			return 2;
		}
	}
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	if (!addr || port < 1 || port > 65535 || inet_pton(AF_INET, addr, &sin.sin_addr) != 1) {
		fprintf(stderr, "godwit-pktsink: --bind ADDR and --port 1..65535 are required\n");
		return 2;
	}
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	if (fd < 0)
		die("socket");
	/* A deep queue: the generator sends in bursts and this reader runs on the other core. */
	int rcvbuf = 64 << 20;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) < 0)
		die("SO_RCVBUFFORCE");
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0)
		die("bind");
	printf("ready\n");
	fflush(stdout);

	static char bufs[BATCH][BUF];
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = bufs[i];
		iov[i].iov_len = BUF;
		memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	uint64_t cpu0 = cpu_ns(), first = 0, last = 0;
	long received = 0;
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	while (expect == 0 || received < expect) {
		int r = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
		if (r > 0) {
			last = now_ns();
			if (!first)
				first = last;
			received += r;
			continue;
		}
		if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			die("recvmmsg");
		int p = poll(&pfd, 1, (int)(first ? idle_ms : start_ms));
		if (p == 0)
			break; /* idle: everything that will arrive has */
		if (p < 0 && errno != EINTR)
			die("poll");
	}
	printf("{\"received\":%ld,\"firstNs\":%llu,\"lastNs\":%llu,\"cpuNs\":%llu}\n", received, (unsigned long long)first,
	       (unsigned long long)last, (unsigned long long)(cpu_ns() - cpu0));
	return 0;
}
