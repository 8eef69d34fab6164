#!/usr/bin/env bash
# Builds the patched xen-blkback.ko (kernel/build.sh) for the dom0 kernel of
# the cached host pieces, so dom0 can swap it with Debian's stock module.
# The extracted source is cached in $CACHE_DIR/kernel like the dom0 root (the
# source .deb is ~140 MB and takes ~20 s to scan); the module itself is
# rebuilt each run (~10 s), so a patch change always reaches dom0.
#   build-module.sh <host pieces dir>     # prints the output directory
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

host=$1
# The dom0 kernel's ABI, from what build-root.sh unpacked: "kernel <ver> (...)".
kver=$(awk '$1 == "kernel" { print $2 }' "$host/versions")
[ -n "$kver" ] || die "no kernel version in $host/versions"
out=$WORK_DIR/kernel
t0=$(now_ms)
KERNEL_CACHE=$CACHE_DIR/kernel KERNEL_OUT=$out "$REPO_DIR/kernel/build.sh" "$kver" >/dev/null
log "patched xen-blkback for $kver built in $(($(now_ms) - t0)) ms"
echo "$out"
