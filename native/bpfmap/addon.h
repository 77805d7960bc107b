/* SPDX-License-Identifier: GPL-2.0 */
/* What the addon's source files share (bpfmap.c, held.c). */
#ifndef GODWIT_ADDON_H
#define GODWIT_ADDON_H

#include <stdint.h>
#include <node_api.h>

/* Throws an Error with .code (errno name), .errno, .syscall and, when applied >= 0, .applied
 * (items done before the failure); returns NULL for the caller to return. */
napi_value throw_errno(napi_env env, int err, const char *syscall_name, const char *what, int64_t applied);

/* Adds ringDrain and rawSend (held.c) to the exports. */
void held_register(napi_env env, napi_value exports);

#endif
