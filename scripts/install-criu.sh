#!/usr/bin/env bash
# Installs a CRIU that works on this kernel, into $GODWIT_CRIU_DIR (default /opt/godwit/criu),
# without touching the system's apt sources. Idempotent: a copy that already starts and passes
# `criu check` is kept.
#
# Why (../shared/FIELD-NOTES.md): Debian 12's criu 3.17 fails `criu check` on Linux 6.18
# ([vvar]/[vvar_vclock] split) and Debian 13's 4.1 cannot dump a TCP socket (SO_PASSSEC).
# 4.2+ works but needs glibc 2.38+, so it runs through its own loader from an unpacked folder.
set -euo pipefail

DIR=${GODWIT_CRIU_DIR:-/opt/godwit/criu}
WRAPPER="$DIR/bin/criu"
log() { printf '[install-criu] %s\n' "$*" >&2; }

criu_works() { # $1: a criu command
  "$1" --version >/dev/null 2>&1 || return 1
  "$1" check >/dev/null 2>&1 || return 1
  local major minor
  read -r major minor < <("$1" --version | sed -n 's/^Version: \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  # 4.2 is the first release that dumps a TCP socket on this kernel.
  [ "${major:-0}" -gt 4 ] || { [ "${major:-0}" -eq 4 ] && [ "${minor:-0}" -ge 2 ]; }
}

if [ -x "$WRAPPER" ] && criu_works "$WRAPPER"; then
  log "project-local CRIU already works: $("$WRAPPER" --version | head -1)"; exit 0
fi
if command -v criu >/dev/null 2>&1 && criu_works "$(command -v criu)"; then
  mkdir -p "$DIR/bin"
  printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v criu)" >"$WRAPPER"; chmod +x "$WRAPPER"
  log "system CRIU passes: $(criu --version | head -1)"; exit 0
fi

# The archive this machine's apt already uses, read from its own sources (no host is named here).
mirror=$(sed -n 's/^URIs:[[:space:]]*\([^ ]*\/debian\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || { log "cannot find the Debian archive in this machine's apt sources"; exit 1; }

work=$(mktemp -d /tmp/godwit-criu.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{etc/preferences.d,etc/apt.conf.d,lists/partial,cache/archives/partial,debs,root}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
for suite in sid trixie; do
  printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n\n' "$mirror" "$suite" "$keyring"
done >"$work/etc/sources.list"
# deb822 content under a .list name is not read by apt; give it its own sourceparts dir.
mkdir -p "$work/etc/sources.list.d"; mv "$work/etc/sources.list" "$work/etc/sources.list.d/godwit.sources"
: >"$work/etc/sources.list"
APT=(-o Dir::Etc="$work/etc" -o Dir::Etc::sourcelist="$work/etc/sources.list"
     -o Dir::Etc::sourceparts="$work/etc/sources.list.d" -o Dir::Etc::preferencesparts="$work/etc/preferences.d"
     -o Dir::Etc::parts="$work/etc/apt.conf.d" -o Dir::State::Lists="$work/lists"
     -o Dir::Cache="$work/cache" -o Dir::State::status=/var/lib/dpkg/status -o Debug::NoLocking=1
     -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
log "reading package lists for sid and trixie from $mirror"
apt-get "${APT[@]}" -qq update

# criu and its own libraries from sid; the newer glibc and what those link against from trixie.
SID_PKGS=(criu libcompel1 libnet9 libnl-3-200 libprotobuf-c1)
TRIXIE_PKGS=(libc6 libgnutls30t64 libhogweed6t64 libnettle8t64 libp11-kit0 libunistring5 libgmp10
             libzstd1 libgcc-s1 libidn2-0 libtasn1-6 libffi8 libcap2 libuuid1 libbsd0 libmd0 libnftables1
             libmnl0 libnftnl11 libjansson4 libxtables12 libedit2 libtinfo6 libbpf1 libelf1t64 zlib1g)
cd "$work/debs"
fetch() { # $1 suite, rest: packages; a package the suite no longer has is reported, not fatal
  local suite=$1; shift
  for p in "$@"; do
    apt-get "${APT[@]}" -qq download "$p/$suite" >/dev/null 2>&1 || log "note: $p/$suite not downloaded"
  done
}
fetch sid "${SID_PKGS[@]}"
fetch trixie "${TRIXIE_PKGS[@]}"
ls criu_*.deb >/dev/null 2>&1 || { log "criu could not be downloaded from sid"; exit 1; }
for deb in *.deb; do dpkg -x "$deb" "$work/root"; done

rm -rf "$DIR.new"; mkdir -p "$DIR.new/bin"
cp -a "$work/root/." "$DIR.new/"
lib="$DIR/usr/lib/x86_64-linux-gnu"
cat >"$DIR.new/bin/criu" <<EOF
#!/bin/sh
# CRIU from Debian sid, started through its own glibc's loader (see scripts/install-criu.sh).
exec $lib/ld-linux-x86-64.so.2 --library-path $lib:/lib/x86_64-linux-gnu $DIR/usr/sbin/criu "\$@"
EOF
chmod +x "$DIR.new/bin/criu"
rm -rf "$DIR"; mv "$DIR.new" "$DIR"

if ! "$WRAPPER" --version >/dev/null 2>&1; then
  log "the unpacked CRIU does not start; missing libraries:"
  "$lib/ld-linux-x86-64.so.2" --library-path "$lib:/lib/x86_64-linux-gnu" --list "$DIR/usr/sbin/criu" | grep 'not found' >&2 || true
  exit 1
fi
if ! criu_works "$WRAPPER"; then
  log "CRIU starts but fails 'criu check' or is older than 4.2:"; "$WRAPPER" --version >&2; "$WRAPPER" check >&2 || true
  exit 1
fi
log "installed $("$WRAPPER" --version | head -1) into $DIR"
