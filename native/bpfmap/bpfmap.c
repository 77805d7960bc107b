// SPDX-License-Identifier: GPL-2.0
/*
 * Native access to a pinned BPF map, for the agent (agent/linux/bpf/native-map.ts).
 *
 * Whole groups of entries go through one bpf(2) call each (BPF_MAP_*_BATCH, Linux 5.6+) on Node
 * Buffers of packed keys and values, so locking 10,000 connections costs a handful of syscalls
 * instead of a bpftool process that reopens the pinned map for every line. Raw bpf(2) through
 * syscall(__NR_bpf): no libbpf, nothing to link. Every call is synchronous: a batch of 10,000
 * entries holds the event loop for a few milliseconds, less than handing it to a thread costs.
 *
 * Where the kernel refuses a batch command for the map (ENOTSUPP/EOPNOTSUPP, or EINVAL from a
 * kernel that predates batches), the same call falls back to one bpf(2) per element, here in C.
 *
 * Exports; every failure throws an Error with .code (errno name), .errno and .syscall:
 *   open(path)                                 -> { fd, id, type, keySize, valueSize, maxEntries, flags, name }
 *   close(fd)
 *   update(fd, keys, values, keySize, valueSize) -> entries written (BPF_ANY); a failure part
 *                                                  way also carries .applied (entries written, not
 *                                                  necessarily the first ones: large writes run
 *                                                  in parallel ranges)
 *   delete(fd, keys, keySize)                  -> entries deleted; keys not in the map are skipped
 *   dump(fd, keySize, valueSize)               -> { keys, values, count }: every entry
 *   lookup(fd, keys, keySize, valueSize)       -> { values, found }: the values of these keys
 *                                                  (one BPF_MAP_LOOKUP_ELEM each; zeros and
 *                                                  found[i] 0 for a key the map does not hold)
 *   methods()                                  -> { lookup, update, delete }: 'batch' or 'element'
 *   mmap(fd, bytes)                            -> ArrayBuffer over an mmappable map's values
 *                                                  (BPF_F_MMAPABLE array), shared with the
 *                                                  kernel; unmapped when the ArrayBuffer is
 *                                                  collected. The fd may be closed right after.
 *   ringDrain, rawSend                         -> held packets: see held.c
 *   connLock, connUnlock, connSweep, connHash  -> the connection lock table: see conn_table.c
 *   testRun, testRunEach                       -> BPF_PROG_TEST_RUN on a pinned program: see test_run.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/bpf.h>
#include <node_api.h>

#include "addon.h"

/* Kernel-internal errno (include/linux/errno.h), not in libc: what bpf(2) answers for a batch
 * command the map type does not implement. */
#ifndef ENOTSUPP
#define ENOTSUPP 524
#endif

/* Entries per BPF_MAP_LOOKUP_BATCH call while dumping; the buffers grow by this much. */
#define DUMP_CHUNK 8192u

/* Longest pin path accepted (PATH_MAX). */
#define PATH_BYTES 4096

enum map_op { OP_LOOKUP, OP_UPDATE, OP_DELETE, OP_COUNT };

/* Set once the kernel refused an op's batch command: later calls go per element directly.
 * Parallel ranges may set it at the same time; they all set the same value. */
static volatile bool batch_refused[OP_COUNT];

static uint64_t ptr_u64(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

static int sys_bpf(int cmd, union bpf_attr *attr)
{
	return (int)syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

/* Whether errno `e` from a batch call that wrote nothing means "no batches for this map". */
static bool is_batch_refusal(int e)
{
	return e == ENOTSUPP || e == EOPNOTSUPP || e == EINVAL;
}

/* Entries a failed batch call processed. A call refused before its first element leaves
 * attr.batch.count as it was (the request), which can never be a partial count. */
static uint32_t batch_processed(const union bpf_attr *attr, uint32_t requested)
{
	return attr->batch.count < requested ? attr->batch.count : 0;
}

/* ---- errors ------------------------------------------------------------------------------ */

static void set_prop(napi_env env, napi_value obj, const char *name, napi_value v)
{
	napi_set_named_property(env, obj, name, v);
}

napi_value throw_errno(napi_env env, int err, const char *syscall_name, const char *what, int64_t applied)
{
	char msg[512];
	const char *name = err == ENOTSUPP ? "ENOTSUPP" : strerrorname_np(err);
	napi_value code, message, error, v;

	snprintf(msg, sizeof(msg), "%s (%s): %s", syscall_name, what, err == ENOTSUPP ? "operation not supported by this map" : strerror(err));
	napi_create_string_utf8(env, name ? name : "EUNKNOWN", NAPI_AUTO_LENGTH, &code);
	napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message);
	napi_create_error(env, code, message, &error);
	napi_create_int32(env, err, &v);
	set_prop(env, error, "errno", v);
	napi_create_string_utf8(env, syscall_name, NAPI_AUTO_LENGTH, &v);
	set_prop(env, error, "syscall", v);
	if (applied >= 0) {
		napi_create_int64(env, applied, &v);
		set_prop(env, error, "applied", v);
	}
	napi_throw(env, error);
	return NULL;
}

napi_value throw_arg(napi_env env, const char *msg)
{
	napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
	return NULL;
}

/* ---- arguments --------------------------------------------------------------------------- */

bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv)
{
	size_t argc = want;

	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)
		return false;
	if (argc < want) {
		throw_arg(env, "too few arguments");
		return false;
	}
	return true;
}

bool get_u32(napi_env env, napi_value v, const char *name, uint32_t min, uint32_t *out)
{
	napi_valuetype t;
	double d;
	char msg[128];

	if (napi_typeof(env, v, &t) != napi_ok || t != napi_number || napi_get_value_double(env, v, &d) != napi_ok ||
	    d != (double)(uint32_t)d || (uint32_t)d < min) {
		snprintf(msg, sizeof(msg), "%s must be an integer %u..4294967295", name, min);
		throw_arg(env, msg);
		return false;
	}
	*out = (uint32_t)d;
	return true;
}

bool get_fd(napi_env env, napi_value v, int *fd)
{
	uint32_t u;

	if (!get_u32(env, v, "fd", 0, &u))
		return false;
	if (u > INT32_MAX) {
		throw_arg(env, "fd out of range");
		return false;
	}
	*fd = (int)u;
	return true;
}

bool get_buffer(napi_env env, napi_value v, const char *name, uint8_t **data, size_t *len)
{
	bool is = false;
	char msg[128];

	if (napi_is_buffer(env, v, &is) != napi_ok || !is || napi_get_buffer_info(env, v, (void **)data, len) != napi_ok) {
		snprintf(msg, sizeof(msg), "%s must be a Buffer", name);
		throw_arg(env, msg);
		return false;
	}
	return true;
}

/* Entries in a packed key Buffer, or -1 (with an exception) if it is not whole keys. */
static int64_t packed_count(napi_env env, size_t len, uint32_t key_size)
{
	if (len % key_size != 0 || len / key_size > UINT32_MAX) {
		throw_arg(env, "keys must be a whole number of keySize-byte keys");
		return -1;
	}
	return (int64_t)(len / key_size);
}

static napi_value u32_value(napi_env env, uint32_t n)
{
	napi_value v;

	napi_create_uint32(env, n, &v);
	return v;
}

/* ---- open / close ------------------------------------------------------------------------ */

static napi_value map_open(napi_env env, napi_callback_info info)
{
	char path[PATH_BYTES], link[64], what[PATH_BYTES + 96];
	struct bpf_map_info mi;
	union bpf_attr attr;
	napi_valuetype t;
	napi_value argv[1], obj, v;
	size_t len = 0;
	ssize_t n;
	int fd;

	if (!get_args(env, info, 1, argv))
		return NULL;
	if (napi_typeof(env, argv[0], &t) != napi_ok || t != napi_string ||
	    napi_get_value_string_utf8(env, argv[0], path, sizeof(path), &len) != napi_ok || len == 0 || len >= sizeof(path) - 1)
		return throw_arg(env, "path must be a non-empty string shorter than PATH_MAX");

	memset(&attr, 0, sizeof(attr));
	attr.pathname = ptr_u64(path);
	fd = sys_bpf(BPF_OBJ_GET, &attr); /* the kernel makes the fd O_CLOEXEC */
	if (fd < 0)
		return throw_errno(env, errno, "BPF_OBJ_GET", path, -1);

	/* A pin can hold a program or link too; their info would be read as garbage below. */
	snprintf(what, sizeof(what), "/proc/self/fd/%d", fd);
	n = readlink(what, link, sizeof(link) - 1);
	link[n > 0 ? n : 0] = '\0';
	if (strcmp(link, "anon_inode:bpf-map") != 0) {
		close(fd);
		snprintf(what, sizeof(what), "%s is not a map (%s)", path, link);
		return throw_errno(env, EINVAL, "BPF_OBJ_GET", what, -1);
	}

	memset(&mi, 0, sizeof(mi));
	memset(&attr, 0, sizeof(attr));
	attr.info.bpf_fd = (uint32_t)fd;
	attr.info.info_len = sizeof(mi);
	attr.info.info = ptr_u64(&mi);
	if (sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) < 0) {
		int e = errno;

		close(fd);
		return throw_errno(env, e, "BPF_OBJ_GET_INFO_BY_FD", path, -1);
	}

	napi_create_object(env, &obj);
	napi_create_int32(env, fd, &v);
	set_prop(env, obj, "fd", v);
	set_prop(env, obj, "id", u32_value(env, mi.id));
	set_prop(env, obj, "type", u32_value(env, mi.type));
	set_prop(env, obj, "keySize", u32_value(env, mi.key_size));
	set_prop(env, obj, "valueSize", u32_value(env, mi.value_size));
	set_prop(env, obj, "maxEntries", u32_value(env, mi.max_entries));
	set_prop(env, obj, "flags", u32_value(env, mi.map_flags));
	napi_create_string_utf8(env, mi.name, strnlen(mi.name, sizeof(mi.name)), &v);
	set_prop(env, obj, "name", v);
	return obj;
}

static napi_value map_close(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	int fd;

	if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], &fd))
		return NULL;
	if (close(fd) < 0)
		return throw_errno(env, errno, "close", "map fd", -1);
	return NULL;
}

/* ---- update and delete -------------------------------------------------------------------
 *
 * Both work on a range of packed keys (and values). A large write is split into one range per
 * CPU, each written by its own thread at the same time: the kernel's hash map locks per bucket,
 * so disjoint keys go in side by side, and the batch's time is nearly all kernel time (10,000
 * entries: about 3.5 ms in one thread on this machine kind).
 */

/* Below this many entries per thread a thread costs more than it saves. */
#define PARALLEL_MIN_PER_THREAD 2048u
#define PARALLEL_MAX_THREADS 8u

enum write_op { WRITE_UPDATE, WRITE_DELETE };

struct write_range {
	enum write_op op;
	int fd;
	const uint8_t *keys, *values;
	uint32_t key_size, value_size, count;
	/* out */
	uint32_t done;    /* update: entries written; delete: entries deleted */
	int err;          /* errno of the failure, 0 if none */
	const char *syscall_name;
};

static void update_range(struct write_range *r)
{
	union bpf_attr attr;
	uint32_t done = 0;

	while (!batch_refused[OP_UPDATE] && done < r->count) {
		uint32_t want = r->count - done;
		int e;

		memset(&attr, 0, sizeof(attr));
		attr.batch.map_fd = (uint32_t)r->fd;
		attr.batch.keys = ptr_u64(r->keys + (size_t)done * r->key_size);
		attr.batch.values = ptr_u64(r->values + (size_t)done * r->value_size);
		attr.batch.count = want;
		attr.batch.elem_flags = BPF_ANY;
		if (sys_bpf(BPF_MAP_UPDATE_BATCH, &attr) == 0) {
			r->done = r->count;
			return;
		}
		e = errno;
		done += batch_processed(&attr, want);
		if (done == 0 && is_batch_refusal(e)) {
			/* Remember only a definite refusal; EINVAL may also be this call's own fault. */
			if (e != EINVAL)
				batch_refused[OP_UPDATE] = true;
			break;
		}
		r->done = done;
		r->err = e;
		r->syscall_name = "BPF_MAP_UPDATE_BATCH";
		return;
	}

	for (; done < r->count; done++) {
		memset(&attr, 0, sizeof(attr));
		attr.map_fd = (uint32_t)r->fd;
		attr.key = ptr_u64(r->keys + (size_t)done * r->key_size);
		attr.value = ptr_u64(r->values + (size_t)done * r->value_size);
		attr.flags = BPF_ANY;
		if (sys_bpf(BPF_MAP_UPDATE_ELEM, &attr) < 0) {
			r->err = errno;
			r->syscall_name = "BPF_MAP_UPDATE_ELEM";
			break;
		}
	}
	r->done = done;
}

/* Keys the map does not hold are skipped, not an error. */
static void delete_range(struct write_range *r)
{
	uint32_t done = 0, deleted = 0;
	bool first = true;
	union bpf_attr attr;

	while (!batch_refused[OP_DELETE] && done < r->count) {
		uint32_t want = r->count - done, processed;
		int e;

		memset(&attr, 0, sizeof(attr));
		attr.batch.map_fd = (uint32_t)r->fd;
		attr.batch.keys = ptr_u64(r->keys + (size_t)done * r->key_size);
		attr.batch.count = want;
		if (sys_bpf(BPF_MAP_DELETE_BATCH, &attr) == 0) {
			r->done = deleted + want;
			return;
		}
		e = errno;
		processed = batch_processed(&attr, want);
		done += processed;
		deleted += processed;
		if (e == ENOENT) {
			/* The kernel stops at the first key it does not hold: skip that key, go on. */
			done++;
			first = false;
			continue;
		}
		if (first && done == 0 && is_batch_refusal(e)) {
			if (e != EINVAL)
				batch_refused[OP_DELETE] = true;
			break;
		}
		r->done = deleted;
		r->err = e;
		r->syscall_name = "BPF_MAP_DELETE_BATCH";
		return;
	}

	for (; done < r->count; done++) {
		memset(&attr, 0, sizeof(attr));
		attr.map_fd = (uint32_t)r->fd;
		attr.key = ptr_u64(r->keys + (size_t)done * r->key_size);
		if (sys_bpf(BPF_MAP_DELETE_ELEM, &attr) == 0) {
			deleted++;
		} else if (errno != ENOENT) {
			r->err = errno;
			r->syscall_name = "BPF_MAP_DELETE_ELEM";
			break;
		}
	}
	r->done = deleted;
}

static void *write_range_thread(void *arg)
{
	struct write_range *r = arg;
	if (r->op == WRITE_UPDATE)
		update_range(r);
	else
		delete_range(r);
	return NULL;
}

/*
 * Runs the write on `whole`, split over the online CPUs when it is large enough; the calling
 * thread writes the first range. Ranges are disjoint, so their order does not matter. Afterwards
 * whole->done is the total over every range, and whole->err and ->syscall_name the first
 * failure's, if any.
 */
static void write_parallel(struct write_range *whole)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	const char *cap = getenv("GODWIT_BPFMAP_THREADS"); /* an operator's cap, e.g. 1 on a busy host */
	if (cap && atoi(cap) > 0 && (cpus <= 0 || atoi(cap) < cpus))
		cpus = atoi(cap);
	uint32_t threads = whole->count / PARALLEL_MIN_PER_THREAD;
	if (cpus > 0 && threads > (uint32_t)cpus)
		threads = (uint32_t)cpus;
	if (threads > PARALLEL_MAX_THREADS)
		threads = PARALLEL_MAX_THREADS;
	if (threads < 2) {
		write_range_thread(whole);
		return;
	}

	struct write_range part[PARALLEL_MAX_THREADS];
	pthread_t tid[PARALLEL_MAX_THREADS];
	bool started[PARALLEL_MAX_THREADS] = { false };
	uint32_t per = (whole->count + threads - 1) / threads, at = 0;
	for (uint32_t t = 0; t < threads; t++) {
		uint32_t n = whole->count - at < per ? whole->count - at : per;
		part[t] = *whole;
		part[t].keys = whole->keys + (size_t)at * whole->key_size;
		part[t].values = whole->values ? whole->values + (size_t)at * whole->value_size : NULL;
		part[t].count = n;
		at += n;
	}
	for (uint32_t t = 1; t < threads; t++)
		started[t] = pthread_create(&tid[t], NULL, write_range_thread, &part[t]) == 0;
	write_range_thread(&part[0]);
	for (uint32_t t = 1; t < threads; t++) {
		if (started[t])
			pthread_join(tid[t], NULL);
		else
			write_range_thread(&part[t]); /* no thread: written here instead */
	}
	whole->done = 0;
	for (uint32_t t = 0; t < threads; t++) {
		whole->done += part[t].done;
		if (part[t].err && !whole->err) {
			whole->err = part[t].err;
			whole->syscall_name = part[t].syscall_name;
		}
	}
}

static napi_value map_update(napi_env env, napi_callback_info info)
{
	uint32_t key_size, value_size;
	uint8_t *keys, *values;
	size_t klen, vlen;
	napi_value argv[5];
	int64_t n;
	int fd;

	if (!get_args(env, info, 5, argv) || !get_fd(env, argv[0], &fd) || !get_buffer(env, argv[1], "keys", &keys, &klen) ||
	    !get_buffer(env, argv[2], "values", &values, &vlen) || !get_u32(env, argv[3], "keySize", 1, &key_size) ||
	    !get_u32(env, argv[4], "valueSize", 1, &value_size))
		return NULL;
	if ((n = packed_count(env, klen, key_size)) < 0)
		return NULL;
	if (vlen != (size_t)n * value_size)
		return throw_arg(env, "values must hold one valueSize-byte value per key");

	struct write_range w = { .op = WRITE_UPDATE, .fd = fd, .keys = keys, .values = values, .key_size = key_size, .value_size = value_size, .count = (uint32_t)n };
	write_parallel(&w);
	if (w.err)
		return throw_errno(env, w.err, w.syscall_name, "update", w.done);
	return u32_value(env, w.done);
}

static napi_value map_delete(napi_env env, napi_callback_info info)
{
	uint32_t key_size;
	napi_value argv[3];
	uint8_t *keys;
	size_t klen;
	int64_t n;
	int fd;

	if (!get_args(env, info, 3, argv) || !get_fd(env, argv[0], &fd) || !get_buffer(env, argv[1], "keys", &keys, &klen) ||
	    !get_u32(env, argv[2], "keySize", 1, &key_size))
		return NULL;
	if ((n = packed_count(env, klen, key_size)) < 0)
		return NULL;

	struct write_range w = { .op = WRITE_DELETE, .fd = fd, .keys = keys, .key_size = key_size, .count = (uint32_t)n };
	write_parallel(&w);
	if (w.err)
		return throw_errno(env, w.err, w.syscall_name, "delete", w.done);
	return u32_value(env, w.done);
}

/* ---- dump -------------------------------------------------------------------------------- */

struct dump_buf {
	uint8_t *keys, *values;
	size_t cap, total; /* in entries */
	uint32_t key_size, value_size;
};

static bool dump_reserve(struct dump_buf *b, size_t more)
{
	uint8_t *k, *v;
	size_t cap;

	if (b->cap - b->total >= more)
		return true;
	cap = b->total + more;
	if (cap < b->cap * 2)
		cap = b->cap * 2;
	k = realloc(b->keys, cap * b->key_size);
	if (!k)
		return false;
	b->keys = k;
	v = realloc(b->values, cap * b->value_size);
	if (!v)
		return false;
	b->values = v;
	b->cap = cap;
	return true;
}

/* Fills b with BPF_MAP_LOOKUP_BATCH; returns 0, or an errno. *refused is the errno of a first
 * call that the kernel refused outright (0 otherwise): then b is empty and the caller falls back. */
static int dump_batch(int fd, struct dump_buf *b, int *refused)
{
	/* The batch token is opaque (a bucket index for hash maps, a key for others): give it room. */
	size_t tok = b->key_size + 8u;
	uint8_t *in_tok = calloc(2, tok), *out_tok = in_tok ? in_tok + tok : NULL;
	uint32_t chunk = DUMP_CHUNK;
	bool first = true;
	union bpf_attr attr;
	int e = 0;

	*refused = 0;
	if (!in_tok)
		return ENOMEM;
	for (;;) {
		if (!dump_reserve(b, chunk)) {
			e = ENOMEM;
			break;
		}
		memset(&attr, 0, sizeof(attr));
		attr.batch.map_fd = (uint32_t)fd;
		attr.batch.in_batch = first ? 0 : ptr_u64(in_tok);
		attr.batch.out_batch = ptr_u64(out_tok);
		attr.batch.keys = ptr_u64(b->keys + b->total * b->key_size);
		attr.batch.values = ptr_u64(b->values + b->total * b->value_size);
		attr.batch.count = (uint32_t)(b->cap - b->total);
		if (sys_bpf(BPF_MAP_LOOKUP_BATCH, &attr) == 0) {
			b->total += attr.batch.count;
			memcpy(in_tok, out_tok, tok);
			first = false;
			continue;
		}
		e = errno;
		if (e == ENOENT) {
			/* The walk reached the end. The kernel zeroes count before it starts, so this is
			 * what the last call returned, possibly a full buffer. */
			b->total += attr.batch.count;
			e = 0;
			break;
		}
		if (e == ENOSPC && attr.batch.count == 0) {
			/* One hash bucket holds more entries than there was room for: retry with more room. */
			chunk *= 2;
			continue;
		}
		if (first && is_batch_refusal(e)) {
			*refused = e;
			e = 0;
		}
		break;
	}
	free(in_tok);
	return e;
}

/* Fills b with BPF_MAP_GET_NEXT_KEY + BPF_MAP_LOOKUP_ELEM per entry; returns 0 or an errno. */
static int dump_per_element(int fd, struct dump_buf *b, const char **syscall_name)
{
	uint8_t *prev = malloc(b->key_size);
	bool has_prev = false;
	union bpf_attr attr;
	int e = 0;

	if (!prev)
		return ENOMEM;
	b->total = 0;
	for (;;) {
		uint8_t *key, *value;

		if (!dump_reserve(b, 1)) {
			e = ENOMEM;
			break;
		}
		key = b->keys + b->total * b->key_size;
		value = b->values + b->total * b->value_size;
		memset(&attr, 0, sizeof(attr));
		attr.map_fd = (uint32_t)fd;
		attr.key = has_prev ? ptr_u64(prev) : 0; /* none: the first key */
		attr.next_key = ptr_u64(key);
		if (sys_bpf(BPF_MAP_GET_NEXT_KEY, &attr) < 0) {
			e = errno == ENOENT ? 0 : errno;
			*syscall_name = "BPF_MAP_GET_NEXT_KEY";
			break;
		}
		memcpy(prev, key, b->key_size);
		has_prev = true;
		memset(&attr, 0, sizeof(attr));
		attr.map_fd = (uint32_t)fd;
		attr.key = ptr_u64(key);
		attr.value = ptr_u64(value);
		if (sys_bpf(BPF_MAP_LOOKUP_ELEM, &attr) == 0)
			b->total++;
		else if (errno != ENOENT) { /* ENOENT: deleted in between, skip it */
			e = errno;
			*syscall_name = "BPF_MAP_LOOKUP_ELEM";
			break;
		}
	}
	free(prev);
	return e;
}

static void free_finalize(napi_env env, void *data, void *hint)
{
	int64_t left;

	napi_adjust_external_memory(env, -(int64_t)(uintptr_t)hint, &left);
	free(data);
}

/* A Buffer over malloc'd memory, which it frees; `mem` is freed here if that fails. */
static bool external_buffer(napi_env env, uint8_t *mem, size_t len, napi_value *out)
{
	if (len == 0) {
		free(mem);
		return napi_create_buffer(env, 0, NULL, out) == napi_ok;
	}
	if (napi_create_external_buffer(env, len, mem, free_finalize, (void *)(uintptr_t)len, out) == napi_ok) {
		int64_t total;

		/* Told to V8, so that its collector weighs the Buffers by what they hold. */
		napi_adjust_external_memory(env, (int64_t)len, &total);
		return true;
	}
	free(mem);
	return false;
}

static napi_value map_dump(napi_env env, napi_callback_info info)
{
	struct dump_buf b = { 0 };
	const char *syscall_name = "BPF_MAP_LOOKUP_BATCH";
	napi_value argv[3], obj, keys, values;
	int fd, e = 0, refused = 0;

	if (!get_args(env, info, 3, argv) || !get_fd(env, argv[0], &fd) || !get_u32(env, argv[1], "keySize", 1, &b.key_size) ||
	    !get_u32(env, argv[2], "valueSize", 1, &b.value_size))
		return NULL;

	if (!batch_refused[OP_LOOKUP]) {
		e = dump_batch(fd, &b, &refused);
		if (refused && refused != EINVAL)
			batch_refused[OP_LOOKUP] = true;
	}
	if (!e && (refused || batch_refused[OP_LOOKUP]))
		e = dump_per_element(fd, &b, &syscall_name);
	if (e) {
		free(b.keys);
		free(b.values);
		return throw_errno(env, e, syscall_name, "dump", -1);
	}

	/* The dump's own memory becomes the Buffers (freed when they are collected): a copy would
	 * touch as many fresh pages again, and a first touch is what a large dump costs most on a VM
	 * (measured here: ~10 ms per MB). */
	if (!external_buffer(env, b.keys, b.total * b.key_size, &keys)) {
		free(b.values);
		return throw_errno(env, ENOMEM, "napi_create_external_buffer", "dump", -1);
	}
	if (!external_buffer(env, b.values, b.total * b.value_size, &values))
		return throw_errno(env, ENOMEM, "napi_create_external_buffer", "dump", -1);
	napi_create_object(env, &obj);
	set_prop(env, obj, "keys", keys);
	set_prop(env, obj, "values", values);
	set_prop(env, obj, "count", u32_value(env, (uint32_t)b.total));
	return obj;
}

/* ---- lookup of given keys -----------------------------------------------------------------
 *
 * A few keys of a large map: a batch walk reads every entry (a per-CPU array of 16,384 counters
 * on 2 CPUs: 10-30 ms), one BPF_MAP_LOOKUP_ELEM per wanted key a few microseconds. There is no
 * batch lookup by key in the kernel (BPF_MAP_LOOKUP_BATCH walks from a position).
 */
static napi_value map_lookup(napi_env env, napi_callback_info info)
{
	uint32_t key_size, value_size;
	uint8_t *keys, *values, *found;
	napi_value argv[4], obj, vbuf, fbuf;
	size_t klen;
	int64_t n;
	int fd;

	if (!get_args(env, info, 4, argv) || !get_fd(env, argv[0], &fd) || !get_buffer(env, argv[1], "keys", &keys, &klen) ||
	    !get_u32(env, argv[2], "keySize", 1, &key_size) || !get_u32(env, argv[3], "valueSize", 1, &value_size))
		return NULL;
	if ((n = packed_count(env, klen, key_size)) < 0)
		return NULL;
	if (napi_create_buffer(env, (size_t)n * value_size, (void **)&values, &vbuf) != napi_ok ||
	    napi_create_buffer(env, (size_t)n, (void **)&found, &fbuf) != napi_ok)
		return throw_errno(env, ENOMEM, "napi_create_buffer", "lookup", -1);
	for (int64_t i = 0; i < n; i++) {
		union bpf_attr attr;

		memset(&attr, 0, sizeof(attr));
		attr.map_fd = (uint32_t)fd;
		attr.key = ptr_u64(keys + (size_t)i * key_size);
		attr.value = ptr_u64(values + (size_t)i * value_size);
		if (sys_bpf(BPF_MAP_LOOKUP_ELEM, &attr) == 0) {
			found[i] = 1;
			continue;
		}
		if (errno != ENOENT)
			return throw_errno(env, errno, "BPF_MAP_LOOKUP_ELEM", "lookup", i);
		found[i] = 0;
		memset(values + (size_t)i * value_size, 0, value_size);
	}
	napi_create_object(env, &obj);
	set_prop(env, obj, "values", vbuf);
	set_prop(env, obj, "found", fbuf);
	return obj;
}

/* ---- mmap -------------------------------------------------------------------------------- */

static void unmap_finalize(napi_env env, void *data, void *hint)
{
	(void)env;
	munmap(data, (size_t)(uintptr_t)hint);
}

static napi_value map_mmap(napi_env env, napi_callback_info info)
{
	napi_value argv[2], ab;
	uint32_t bytes;
	void *mem;
	int fd;

	if (!get_args(env, info, 2, argv) || !get_fd(env, argv[0], &fd) || !get_u32(env, argv[1], "bytes", 1, &bytes))
		return NULL;
	mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED)
		return throw_errno(env, errno, "mmap", "BPF map", -1);
	if (napi_create_external_arraybuffer(env, mem, bytes, unmap_finalize, (void *)(uintptr_t)bytes, &ab) != napi_ok) {
		munmap(mem, bytes);
		return throw_errno(env, ENOMEM, "napi_create_external_arraybuffer", "BPF map", -1);
	}
	return ab;
}

/* ---- module ------------------------------------------------------------------------------ */

static napi_value map_methods(napi_env env, napi_callback_info info)
{
	static const char *const names[OP_COUNT] = { "lookup", "update", "delete" };
	napi_value obj, v;

	napi_create_object(env, &obj);
	for (int op = 0; op < OP_COUNT; op++) {
		napi_create_string_utf8(env, batch_refused[op] ? "element" : "batch", NAPI_AUTO_LENGTH, &v);
		set_prop(env, obj, names[op], v);
	}
	return obj;
}

static napi_value init(napi_env env, napi_value exports)
{
	napi_property_descriptor props[] = {
		{ "open", NULL, map_open, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "close", NULL, map_close, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "update", NULL, map_update, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "delete", NULL, map_delete, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "dump", NULL, map_dump, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "lookup", NULL, map_lookup, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "methods", NULL, map_methods, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "mmap", NULL, map_mmap, NULL, NULL, NULL, napi_enumerable, NULL },
	};

	if (napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props) != napi_ok)
		return NULL;
	held_register(env, exports);
	conn_table_register(env, exports);
	test_run_register(env, exports);
	return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
