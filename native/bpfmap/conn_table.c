// SPDX-License-Identifier: GPL-2.0
/*
 * The writer of godwit_lock_conn, the exact-connection lock table (bpf/lock_maps.h explains
 * the table; bpf/lock.c's conn_lease() is the kernel's reader). The agent maps the table into
 * its memory (mmap, in bpfmap.c) and hands it here as an ArrayBuffer with a batch of keys: a
 * lock or unlock is a few loads and stores per connection, no system call. In C rather than
 * JavaScript because the table is 14 MiB of mostly cold memory: from idle, 10,000 locks took
 * 2.5 ms in JavaScript and take about 0.9 ms here (measured on this machine kind).
 *
 * Rules that keep a concurrent lookup (the XDP program, on other CPUs) from missing an entry
 * that stays LIVE:
 *  - an entry's key and lease are stored before its state becomes LIVE (a release store);
 *  - a LIVE entry's deadline is rewritten with one 64-bit store, never in halves;
 *  - a LIVE slot is never reused: it becomes DELETED first, and DELETED slots become EMPTY only
 *    as a run that ends at an EMPTY slot, from the end of the run backwards.
 * The agent is the table's only writer, one call at a time.
 *
 * Exports (memory: the table's ArrayBuffer; keys: a Buffer of packed struct godwit_tuple_key):
 *   connLock(memory, slots, maxProbe, room, keys, version, deadlineNs)
 *       -> { locked, inserted, keptNewer: [{ index, heldVersion }] }. All or nothing: when a key
 *          finds no room (more than `room` new entries, or no free slot within maxProbe), what
 *          the call wrote is undone and an Error with .code 'ENTRIES' or 'PROBE' thrown.
 *   connUnlock(memory, slots, maxProbe, keys, version) -> { unlocked, keptNewer }
 *   connSweep(memory, slots, nowNs)                    -> entries removed (deadline <= now)
 *   connHash(key)                                      -> godwit_conn_hash of one 16-byte key
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "addon.h"
#include "lock_maps.h"

struct table {
	struct godwit_conn_slot *slot;
	uint32_t mask;
	uint32_t max_probe;
};

/* One re-leased entry as it was, to put back on undo. */
struct released {
	uint32_t slot;
	uint64_t version;
	uint64_t deadline_ns;
};

/* max_probe NULL: a call that does not probe (a sweep walks every slot). */
static bool get_table(napi_env env, napi_value memory, napi_value slots, napi_value max_probe, struct table *t)
{
	uint32_t n, probe = 1;
	size_t len;
	void *data;

	if (!get_u32(env, slots, "slots", 2, &n) || (max_probe && !get_u32(env, max_probe, "maxProbe", 1, &probe)))
		return false;
	if ((n & (n - 1)) != 0 || probe > n) {
		throw_arg(env, "slots must be a power of two and maxProbe at most slots");
		return false;
	}
	if (napi_get_arraybuffer_info(env, memory, &data, &len) != napi_ok || len / sizeof(struct godwit_conn_slot) < n) {
		throw_arg(env, "memory must be an ArrayBuffer of at least slots * sizeof(struct godwit_conn_slot) bytes");
		return false;
	}
	t->slot = data;
	t->mask = n - 1;
	t->max_probe = probe;
	return true;
}

/* msg: what the TypeError says when v is not a BigInt that fits a u64. */
static bool get_u64(napi_env env, napi_value v, const char *msg, uint64_t *out)
{
	bool lossless;

	if (napi_get_value_bigint_uint64(env, v, out, &lossless) != napi_ok || !lossless) {
		throw_arg(env, msg);
		return false;
	}
	return true;
}

static bool get_keys(napi_env env, napi_value v, const struct godwit_tuple_key **keys, size_t *n)
{
	uint8_t *data;
	size_t len;

	if (!get_buffer(env, v, "keys", &data, &len))
		return false;
	if (len % sizeof(struct godwit_tuple_key) != 0) {
		throw_arg(env, "keys must be whole 16-byte tuple keys");
		return false;
	}
	*keys = (const struct godwit_tuple_key *)data;
	*n = len / sizeof(struct godwit_tuple_key);
	return true;
}

static uint32_t state_of(const struct godwit_conn_slot *s)
{
	return __atomic_load_n(&s->state, __ATOMIC_RELAXED);
}

static void set_state(struct godwit_conn_slot *s, uint32_t state)
{
	__atomic_store_n(&s->state, state, __ATOMIC_RELEASE);
}

/* The key as the program hashes and compares it: copied, since a Buffer may be unaligned. */
static void key_at(const struct godwit_tuple_key *keys, size_t i, struct godwit_tuple_key *k)
{
	memcpy(k, &keys[i], sizeof(*k));
}

/*
 * Probes from k's home slot: returns the slot holding k LIVE, or -1 with *free set to the
 * first DELETED or EMPTY slot on the way (-1 if none within max_probe).
 */
static int64_t probe(const struct table *t, const struct godwit_tuple_key *k, int64_t *free)
{
	uint32_t home = godwit_conn_hash(k);

	*free = -1;
	for (uint32_t p = 0; p < t->max_probe; p++) {
		uint32_t s = (home + p) & t->mask;
		uint32_t state = state_of(&t->slot[s]);

		if (state == GODWIT_SLOT_EMPTY) {
			if (*free < 0)
				*free = s;
			return -1;
		}
		if (state == GODWIT_SLOT_DELETED) {
			if (*free < 0)
				*free = s;
			continue;
		}
		if (memcmp(&t->slot[s].key, k, sizeof(*k)) == 0)
			return s;
	}
	return -1;
}

/* Marks LIVE slot s DELETED, then empties the run of DELETED slots through s if it ends at an EMPTY slot. */
static void remove_slot(const struct table *t, uint32_t s)
{
	uint32_t end = s;

	set_state(&t->slot[s], GODWIT_SLOT_DELETED);
	for (uint32_t steps = 0; state_of(&t->slot[(end + 1) & t->mask]) == GODWIT_SLOT_DELETED; steps++) {
		if (steps > t->mask)
			return; /* every slot DELETED: no EMPTY slot ends the run */
		end = (end + 1) & t->mask;
	}
	if (state_of(&t->slot[(end + 1) & t->mask]) != GODWIT_SLOT_EMPTY)
		return;
	for (uint32_t j = end, steps = 0; steps <= t->mask && state_of(&t->slot[j]) == GODWIT_SLOT_DELETED; j = (j - 1) & t->mask, steps++)
		set_state(&t->slot[j], GODWIT_SLOT_EMPTY);
}

/* Appends { index, heldVersion } to the JS array `kept`. */
static void push_kept(napi_env env, napi_value kept, uint32_t *count, size_t index, uint64_t version)
{
	napi_value o, v;

	napi_create_object(env, &o);
	napi_create_uint32(env, (uint32_t)index, &v);
	napi_set_named_property(env, o, "index", v);
	napi_create_bigint_uint64(env, version, &v);
	napi_set_named_property(env, o, "heldVersion", v);
	napi_set_element(env, kept, (*count)++, o);
}

static napi_value result(napi_env env, const char *count_name, uint32_t count, uint32_t inserted, bool with_inserted, napi_value kept)
{
	napi_value o, v;

	napi_create_object(env, &o);
	napi_create_uint32(env, count, &v);
	napi_set_named_property(env, o, count_name, v);
	if (with_inserted) {
		napi_create_uint32(env, inserted, &v);
		napi_set_named_property(env, o, "inserted", v);
	}
	napi_set_named_property(env, o, "keptNewer", kept);
	return o;
}

static napi_value throw_full(napi_env env, const char *code, const char *msg)
{
	napi_throw_error(env, code, msg);
	return NULL;
}

static napi_value conn_lock(napi_env env, napi_callback_info info)
{
	const struct godwit_tuple_key *keys;
	uint32_t room, locked = 0, inserted = 0, kept_count = 0, released_count = 0;
	uint64_t version, deadline;
	struct released *released;
	uint32_t *inserted_slot;
	uint8_t *inserted_over;
	const char *full = NULL;
	napi_value argv[7], kept;
	struct table t;
	size_t n;

	if (!get_args(env, info, 7, argv) || !get_table(env, argv[0], argv[1], argv[2], &t) || !get_u32(env, argv[3], "room", 0, &room) ||
	    !get_keys(env, argv[4], &keys, &n) || !get_u64(env, argv[5], "version must be a u64 bigint", &version) ||
	    !get_u64(env, argv[6], "deadlineNs must be a u64 bigint", &deadline))
		return NULL;
	released = malloc((n ? n : 1) * sizeof(*released));
	inserted_slot = malloc((n ? n : 1) * sizeof(*inserted_slot));
	inserted_over = malloc(n ? n : 1);
	if (!released || !inserted_slot || !inserted_over) {
		free(released);
		free(inserted_slot);
		free(inserted_over);
		return throw_errno(env, ENOMEM, "malloc", "connection lock", -1);
	}
	napi_create_array(env, &kept);

	for (size_t i = 0; i < n; i++) {
		struct godwit_tuple_key k;
		struct godwit_conn_slot *slot;
		int64_t free_slot, found;

		key_at(keys, i, &k);
		found = probe(&t, &k, &free_slot);
		if (found >= 0) {
			slot = &t.slot[found];
			if (slot->lease.version > version) {
				push_kept(env, kept, &kept_count, i, slot->lease.version);
				continue;
			}
			/* The same key earlier in this call: one entry, counted once. */
			if (slot->lease.version == version && slot->lease.deadline_ns == deadline)
				continue;
			released[released_count++] = (struct released){ (uint32_t)found, slot->lease.version, slot->lease.deadline_ns };
			slot->lease.version = version; /* only this writer reads the version */
			__atomic_store_n(&slot->lease.deadline_ns, deadline, __ATOMIC_RELAXED); /* the program reads it: whole */
			locked++;
			continue;
		}
		if (inserted >= room) {
			full = "ENTRIES";
			break;
		}
		if (free_slot < 0) {
			full = "PROBE";
			break;
		}
		slot = &t.slot[free_slot];
		inserted_over[inserted] = (uint8_t)state_of(slot);
		inserted_slot[inserted++] = (uint32_t)free_slot;
		slot->pad = 0;
		slot->key = k;
		slot->lease = (struct godwit_lock_value){ .version = version, .deadline_ns = deadline };
		set_state(slot, GODWIT_SLOT_LIVE); /* last: publishes the entry */
		locked++;
	}

	if (full) {
		/* Newest first, each slot back to what it was: no probe path of an entry that stays ran
		 * through a slot that was EMPTY, so it may be EMPTY again. */
		while (inserted > 0) {
			inserted--;
			set_state(&t.slot[inserted_slot[inserted]], inserted_over[inserted]);
		}
		while (released_count > 0) {
			const struct released *r = &released[--released_count];

			t.slot[r->slot].lease.version = r->version;
			__atomic_store_n(&t.slot[r->slot].lease.deadline_ns, r->deadline_ns, __ATOMIC_RELAXED);
		}
	}
	free(released);
	free(inserted_slot);
	free(inserted_over);
	if (full)
		return throw_full(env, full, full[0] == 'E' ? "the connection lock table has no room for more entries" : "no free slot within maxProbe of a connection's home slot");
	return result(env, "locked", locked, inserted, true, kept);
}

static napi_value conn_unlock(napi_env env, napi_callback_info info)
{
	const struct godwit_tuple_key *keys;
	uint32_t unlocked = 0, kept_count = 0;
	napi_value argv[5], kept;
	uint64_t version;
	struct table t;
	size_t n;

	if (!get_args(env, info, 5, argv) || !get_table(env, argv[0], argv[1], argv[2], &t) || !get_keys(env, argv[3], &keys, &n) ||
	    !get_u64(env, argv[4], "version must be a u64 bigint", &version))
		return NULL;
	napi_create_array(env, &kept);
	for (size_t i = 0; i < n; i++) {
		struct godwit_tuple_key k;
		int64_t free_slot, found;

		key_at(keys, i, &k);
		found = probe(&t, &k, &free_slot);
		if (found < 0)
			continue;
		if (t.slot[found].lease.version > version) {
			push_kept(env, kept, &kept_count, i, t.slot[found].lease.version);
			continue;
		}
		remove_slot(&t, (uint32_t)found);
		unlocked++;
	}
	return result(env, "unlocked", unlocked, 0, false, kept);
}

static napi_value conn_sweep(napi_env env, napi_callback_info info)
{
	uint32_t swept = 0;
	napi_value argv[3], v;
	struct table t;
	uint64_t now;

	if (!get_args(env, info, 3, argv) || !get_table(env, argv[0], argv[1], NULL, &t) || !get_u64(env, argv[2], "nowNs must be a u64 bigint", &now))
		return NULL;
	for (uint32_t s = 0; s <= t.mask; s++) {
		if (state_of(&t.slot[s]) != GODWIT_SLOT_LIVE || t.slot[s].lease.deadline_ns > now)
			continue;
		remove_slot(&t, s);
		swept++;
	}
	napi_create_uint32(env, swept, &v);
	return v;
}

static napi_value conn_hash(napi_env env, napi_callback_info info)
{
	const struct godwit_tuple_key *keys;
	struct godwit_tuple_key k;
	napi_value argv[1], v;
	size_t n;

	if (!get_args(env, info, 1, argv) || !get_keys(env, argv[0], &keys, &n))
		return NULL;
	if (n != 1)
		return throw_arg(env, "connHash takes one 16-byte key");
	key_at(keys, 0, &k);
	napi_create_uint32(env, godwit_conn_hash(&k), &v);
	return v;
}

void conn_table_register(napi_env env, napi_value exports)
{
	napi_property_descriptor props[] = {
		{ "connLock", NULL, conn_lock, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "connUnlock", NULL, conn_unlock, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "connSweep", NULL, conn_sweep, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "connHash", NULL, conn_hash, NULL, NULL, NULL, napi_enumerable, NULL },
	};

	napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
}
