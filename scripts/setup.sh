#!/usr/bin/env bash
# Everything godwit needs on a machine of this kind, installed by package name. Idempotent: a
# second run checks and returns in seconds. Run as root (CRIU, namespaces and eBPF need it).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[setup] %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "run as root: CRIU, network namespaces and eBPF need it"; exit 1; }

# command -> Debian package that provides it
declare -A NEED=(
  [bpftool]=bpftool [clang]=clang [nats-server]=nats-server [ip]=iproute2 [iptables]=iptables
  [nft]=nftables [arping]=iputils-arping [gcc]=gcc [nsenter]=util-linux [unshare]=util-linux
  [ethtool]=ethtool [iptables-legacy]=iptables [nginx]=nginx [curl]=curl [python3]=python3
)
missing=()
for cmd in "${!NEED[@]}"; do command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}"); done
[ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
[ -d /usr/include/x86_64-linux-gnu/asm ] || missing+=(libc6-dev linux-libc-dev)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt-get update -qq
  # Packages with a service (nginx) must not start one on this machine: tests run their own.
  no_start=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d && no_start=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
  [ -z "$no_start" ] || rm -f /usr/sbin/policy-rc.d
fi

bash scripts/install-criu.sh

# bpffs for the lock program's pinned maps.
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
fi

# npm ci only when the lock file changed since the last install.
stamp=node_modules/.godwit-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi

bash scripts/build-bpf.sh
bash scripts/build-native.sh
bash scripts/build-workload.sh
log "building TypeScript"
npm run --silent build
log "ready"
