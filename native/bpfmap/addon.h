/* SPDX-License-Identifier: GPL-2.0 */
/* What the addon's source files share (bpfmap.c, held.c, conn_table.c). */
#ifndef GODWIT_ADDON_H
#define GODWIT_ADDON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <node_api.h>

/* Throws an Error with .code (errno name), .errno, .syscall and, when applied >= 0, .applied
 * (items done before the failure); returns NULL for the caller to return. */
napi_value throw_errno(napi_env env, int err, const char *syscall_name, const char *what, int64_t applied);

/* Throws a TypeError (ERR_INVALID_ARG_TYPE) with msg; returns NULL. */
napi_value throw_arg(napi_env env, const char *msg);

/* Argument readers: each returns false with an exception thrown when the argument is wrong. */
bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv);
bool get_u32(napi_env env, napi_value v, const char *name, uint32_t min, uint32_t *out);
bool get_fd(napi_env env, napi_value v, int *fd);
bool get_buffer(napi_env env, napi_value v, const char *name, uint8_t **data, size_t *len);

/* Adds ringDrain, select, coalesce and rawSend (held.c) to the exports. */
void held_register(napi_env env, napi_value exports);

/* Adds connLock, connUnlock, connSweep and connHash (conn_table.c) to the exports. */
void conn_table_register(napi_env env, napi_value exports);

/* Adds testRun and testRunEach (test_run.c) to the exports. */
void test_run_register(napi_env env, napi_value exports);

#endif
