#!/usr/bin/env bash
# Builds the lab's sample workload, lab/workload/echo-server.c, into build/echo-server.
# Idempotent: does nothing while the binary is newer than its source and this script. Builds into
# a temporary file and renames it, so a concurrent run or a running server never sees half a file.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/lab/workload/echo-server.c"
OUT="$ROOT/build/echo-server"
CC="${CC:-gcc}"

mkdir -p "$ROOT/build"
if [ -x "$OUT" ] && [ "$OUT" -nt "$SRC" ] && [ "$OUT" -nt "${BASH_SOURCE[0]}" ]; then
  exit 0
fi
command -v "$CC" >/dev/null 2>&1 || { echo "[build-workload] $CC not found (apt-get install gcc)" >&2; exit 1; }

tmp="$(mktemp "$OUT.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
"$CC" -O2 -g -Wall -Wextra -std=gnu11 -o "$tmp" "$SRC"
chmod 0755 "$tmp"
mv -f "$tmp" "$OUT"
trap - EXIT
echo "[build-workload] built $OUT" >&2
