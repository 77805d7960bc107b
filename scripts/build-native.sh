#!/usr/bin/env bash
# Builds the native BPF map addon (native/bpfmap -> native/bpfmap/build/Release/bpfmap.node) with
# node-gyp against the headers of the Node that runs godwit. Idempotent: rebuilds only when a
# source is newer than the addon, and always proves the addon loads. Run from anywhere.
#
# Offline: node-gyp is the copy bundled with npm, pointed at a local Node header folder
# (npm's `nodedir`, else the prefix of the running node), so it never downloads headers.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src_dir="$root/native/bpfmap"
addon="$src_dir/build/Release/bpfmap.node"
say() { printf 'build-native: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

command -v node >/dev/null 2>&1 || die "node not found"
for tool in python3 make cc; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found; node-gyp needs python3, make and a C compiler (Debian: apt-get install python3 make gcc)"
done

# Node headers: npm's nodedir when it names one, else the running node's own prefix (the
# nodejs package installs them at <prefix>/include/node).
nodedir="${npm_config_nodedir:-}"
if [ -z "$nodedir" ]; then
  nodedir="$(npm config get nodedir 2>/dev/null || true)"
  [ "$nodedir" = "undefined" ] && nodedir=""
fi
[ -n "$nodedir" ] || nodedir="$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")"
[ -f "$nodedir/include/node/node_api.h" ] && [ -f "$nodedir/include/node/common.gypi" ] ||
  die "Node headers not found under $nodedir/include/node (node_api.h, common.gypi); set npm_config_nodedir to a folder that has them"
headers_major="$(sed -n 's/^#define NODE_MAJOR_VERSION \([0-9]*\).*/\1/p' "$nodedir/include/node/node_version.h")"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$headers_major" = "$node_major" ] || die "headers in $nodedir are Node $headers_major, but node is $node_major"

# The node-gyp npm ships (npm runs it for every native package).
gyp="${NODE_GYP:-$(npm root -g 2>/dev/null)/npm/node_modules/node-gyp/bin/node-gyp.js}"
[ -f "$gyp" ] || die "node-gyp not found at $gyp (bundled with npm); set NODE_GYP to node-gyp.js"

stale=0
[ -f "$addon" ] || stale=1
# conn_table.c includes bpf/lock_maps.h: the table's layout and hash are the BPF program's.
for dep in "$src_dir"/*.c "$src_dir"/*.h "$src_dir/binding.gyp" "$root/bpf/lock_maps.h" "$0"; do
  [ "$dep" -nt "$addon" ] && stale=1
done

if [ "$stale" -eq 1 ]; then
  say "building native/bpfmap (node-gyp, headers $nodedir)"
  log="$(mktemp)"
  if ! (cd "$src_dir" && node "$gyp" rebuild --nodedir="$nodedir" --loglevel=warn) >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log" "$addon" # never leave an addon that does not match its sources
    die "node-gyp build of native/bpfmap failed (output above)"
  fi
  rm -f "$log"
else
  say "native/bpfmap/build/Release/bpfmap.node up to date"
fi

# Prove it loads into this node and has what agent/linux/bpf/native-map.ts calls.
node -e '
  const m = require(process.argv[1]);
  const missing = ["open", "close", "update", "delete", "dump", "methods", "ringDrain", "select", "coalesce", "rawSend"].filter((f) => typeof m[f] !== "function");
  if (missing.length) { console.error("missing exports: " + missing.join(", ")); process.exit(1); }
' "$addon" || die "$addon does not load into $(node -v); delete native/bpfmap/build and rerun"
[ "$stale" -eq 0 ] || say "built native/bpfmap/build/Release/bpfmap.node"
