// SPDX-License-Identifier: GPL-2.0
/*
 * BPF_PROG_TEST_RUN on a pinned program, for checking what a program does to a crafted packet
 * (test/unit/steer-csum.test.ts) and for its per-packet cost (bench/steer-progrun.ts).
 *
 *   testRun(pin, data, repeat, outSize) -> { retval, durationNs, data }
 *       one BPF_PROG_TEST_RUN with `repeat` runs on `data`; durationNs is the kernel's mean per
 *       run. The kernel does not reset the packet between repetitions, so repeat > 1 measures
 *       what the program does to its own output from the second run on.
 *   testRunEach(pin, packets, packetSize) -> { runs, durationNs, retvals }
 *       one BPF_PROG_TEST_RUN (repeat 1) per packet of a packed Buffer; durationNs sums the
 *       kernel's per-run times (the syscall and copies around each run are not in it);
 *       retvals counts each return value (object keyed by value).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/bpf.h>

#include "addon.h"

static int sys_bpf(int cmd, union bpf_attr *attr)
{
	return (int)syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

static bool get_path(napi_env env, napi_value v, char *path, size_t size)
{
	size_t len;

	if (napi_get_value_string_utf8(env, v, path, size, &len) != napi_ok || len == 0 || len >= size - 1) {
		throw_arg(env, "pin must be a path string");
		return false;
	}
	return true;
}

static int open_pin(napi_env env, const char *path)
{
	union bpf_attr attr;
	int fd;

	memset(&attr, 0, sizeof(attr));
	attr.pathname = (uint64_t)(uintptr_t)path;
	fd = sys_bpf(BPF_OBJ_GET, &attr);
	if (fd < 0)
		throw_errno(env, errno, "BPF_OBJ_GET", path, -1);
	return fd;
}

static int run_once(int fd, const uint8_t *in, uint32_t in_len, uint8_t *out, uint32_t *out_len, uint32_t repeat, uint32_t *retval, uint32_t *duration)
{
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.test.prog_fd = fd;
	attr.test.data_in = (uint64_t)(uintptr_t)in;
	attr.test.data_size_in = in_len;
	attr.test.data_out = (uint64_t)(uintptr_t)out;
	attr.test.data_size_out = out ? *out_len : 0;
	attr.test.repeat = repeat;
	if (sys_bpf(BPF_PROG_TEST_RUN, &attr) < 0)
		return errno;
	*retval = attr.test.retval;
	*duration = attr.test.duration;
	if (out_len)
		*out_len = attr.test.data_size_out;
	return 0;
}

static napi_value test_run(napi_env env, napi_callback_info info)
{
	napi_value argv[4], obj, v, buf;
	char path[4096];
	uint8_t *in, *out;
	size_t in_len;
	uint32_t repeat, out_size, retval = 0, duration = 0;
	int fd, err;

	if (!get_args(env, info, 4, argv) || !get_path(env, argv[0], path, sizeof(path)) || !get_buffer(env, argv[1], "data", &in, &in_len) ||
	    !get_u32(env, argv[2], "repeat", 1, &repeat) || !get_u32(env, argv[3], "outSize", 1, &out_size))
		return NULL;
	fd = open_pin(env, path);
	if (fd < 0)
		return NULL;
	out = malloc(out_size);
	if (!out) {
		close(fd);
		return throw_errno(env, ENOMEM, "malloc", "test run output", -1);
	}
	err = run_once(fd, in, (uint32_t)in_len, out, &out_size, repeat, &retval, &duration);
	close(fd);
	if (err) {
		free(out);
		return throw_errno(env, err, "BPF_PROG_TEST_RUN", path, -1);
	}
	napi_create_object(env, &obj);
	napi_create_uint32(env, retval, &v);
	napi_set_named_property(env, obj, "retval", v);
	napi_create_uint32(env, duration, &v);
	napi_set_named_property(env, obj, "durationNs", v);
	napi_create_buffer_copy(env, out_size, out, NULL, &buf);
	napi_set_named_property(env, obj, "data", buf);
	free(out);
	return obj;
}

static napi_value test_run_each(napi_env env, napi_callback_info info)
{
	napi_value argv[3], obj, v, retvals;
	char path[4096], key[16];
	uint8_t *in;
	size_t in_len;
	uint32_t size, counts[8] = { 0 }, other = 0;
	double total = 0;
	int fd;

	if (!get_args(env, info, 3, argv) || !get_path(env, argv[0], path, sizeof(path)) || !get_buffer(env, argv[1], "packets", &in, &in_len) ||
	    !get_u32(env, argv[2], "packetSize", 14, &size))
		return NULL;
	if (in_len % size != 0)
		return throw_arg(env, "packets must be a whole number of packetSize-byte packets");
	fd = open_pin(env, path);
	if (fd < 0)
		return NULL;
	for (size_t at = 0; at < in_len; at += size) {
		uint32_t retval = 0, duration = 0;
		int err = run_once(fd, in + at, size, NULL, NULL, 1, &retval, &duration);

		if (err) {
			close(fd);
			return throw_errno(env, err, "BPF_PROG_TEST_RUN", path, (int64_t)(at / size));
		}
		total += duration;
		if (retval < 8)
			counts[retval]++;
		else
			other++;
	}
	close(fd);
	napi_create_object(env, &obj);
	napi_create_uint32(env, (uint32_t)(in_len / size), &v);
	napi_set_named_property(env, obj, "runs", v);
	napi_create_double(env, total, &v);
	napi_set_named_property(env, obj, "durationNs", v);
	napi_create_object(env, &retvals);
	for (int i = 0; i < 8; i++) {
		if (!counts[i])
			continue;
		snprintf(key, sizeof(key), "%d", i);
		napi_create_uint32(env, counts[i], &v);
		napi_set_named_property(env, retvals, key, v);
	}
	if (other) {
		napi_create_uint32(env, other, &v);
		napi_set_named_property(env, retvals, "other", v);
	}
	napi_set_named_property(env, obj, "retvals", retvals);
	return obj;
}

void test_run_register(napi_env env, napi_value exports)
{
	napi_property_descriptor props[] = {
		{ "testRun", NULL, test_run, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "testRunEach", NULL, test_run_each, NULL, NULL, NULL, napi_enumerable, NULL },
	};

	napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
}
