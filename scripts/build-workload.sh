#!/usr/bin/env bash
# Builds the C programs into build/: the init `godwit run` starts workloads under
# (lab/workload/godwit-init.c), the sample workload (lab/workload/echo-server.c) and
# the steer-dataplane benchmark's packet generator and sink (bench/gen/*.c).
# Idempotent: skips a binary while it is newer than its source and this script. Builds into a
# temporary file and renames it, so a concurrent run or a running program never sees half a file.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CC="${CC:-gcc}"
# source -> binary
PROGRAMS=(
  "lab/workload/echo-server.c:build/echo-server"
  "lab/workload/godwit-init.c:build/godwit-init"
  "bench/gen/pktgen.c:build/godwit-pktgen"
  "bench/gen/pktsink.c:build/godwit-pktsink"
)

mkdir -p "$ROOT/build"
for entry in "${PROGRAMS[@]}"; do
  SRC="$ROOT/${entry%%:*}"
  OUT="$ROOT/${entry##*:}"
  stale=0
  # The source, the headers beside it (bench/gen/clocks.h) and this script.
  for dep in "$SRC" "$(dirname "$SRC")"/*.h "${BASH_SOURCE[0]}"; do
    [ -e "$dep" ] && ! [ "$OUT" -nt "$dep" ] && stale=1
  done
  if [ -x "$OUT" ] && [ "$stale" -eq 0 ]; then
    continue
  fi
  command -v "$CC" >/dev/null 2>&1 || { echo "[build-workload] $CC not found (apt-get install gcc)" >&2; exit 1; }
  tmp="$(mktemp "$OUT.XXXXXX")"
  trap 'rm -f "$tmp"' EXIT
  "$CC" -O2 -g -Wall -Wextra -std=gnu11 -o "$tmp" "$SRC"
  chmod 0755 "$tmp"
  mv -f "$tmp" "$OUT"
  trap - EXIT
  echo "[build-workload] built $OUT" >&2
done
