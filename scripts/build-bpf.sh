#!/usr/bin/env bash
# Builds every bpf/*.c into build/bpf/*.o. Idempotent: rebuilds an object only when its source
# or a bpf/*.h or bpf/lib/*.h header is newer. Run from anywhere; paths are relative to the repository root.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src_dir="$root/bpf"
out_dir="$root/build/bpf"
clang_bin="${CLANG:-clang}"
# Debian keeps asm/ (needed by linux/*.h) under the multiarch include directory.
multiarch_inc="/usr/include/$(uname -m)-linux-gnu"

if ! command -v "$clang_bin" >/dev/null 2>&1; then
  echo "build-bpf: '$clang_bin' not found; install clang (Debian: apt-get install clang libbpf-dev)" >&2
  exit 1
fi
if [ ! -f /usr/include/bpf/bpf_helpers.h ]; then
  echo "build-bpf: /usr/include/bpf/bpf_helpers.h not found; install libbpf-dev" >&2
  exit 1
fi

shopt -s nullglob
sources=("$src_dir"/*.c)
headers=("$src_dir"/*.h "$src_dir"/lib/*.h)
if [ ${#sources[@]} -eq 0 ]; then
  echo "build-bpf: no sources in $src_dir" >&2
  exit 1
fi

mkdir -p "$out_dir"
for src in "${sources[@]}"; do
  obj="$out_dir/$(basename "${src%.c}").o"
  stale=0
  [ -f "$obj" ] || stale=1
  for dep in "$src" "${headers[@]}"; do
    [ "$dep" -nt "$obj" ] && stale=1
  done
  if [ "$stale" -eq 0 ]; then
    echo "build-bpf: ${obj#"$root"/} up to date"
    continue
  fi
  # Write to a temporary name first so a failed build never leaves a half-written object.
  "$clang_bin" -O2 -g -Wall -Werror -target bpf -I"$multiarch_inc" -I"$src_dir" \
    -c "$src" -o "$obj.tmp"
  mv -f "$obj.tmp" "$obj"
  echo "build-bpf: built ${obj#"$root"/}"
done
