#!/usr/bin/env bash
# Installs the host tools the real-Xen harness needs, only those missing.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v depmod >/dev/null 2>&1 || need+=(kmod)
# The guest's initramfs needs a busybox that runs without libraries.
dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
command -v gzip >/dev/null 2>&1 || need+=(gzip)
# Building the patched xen-blkback (kernel/build.sh; it installs the kernel
# headers, which bring the compiler): patch, make, xz for the source
# tarball, perl for checkpatch, strings for the vermagic check.
command -v patch >/dev/null 2>&1 || need+=(patch)
command -v make >/dev/null 2>&1 || need+=(make)
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
# (perl-base alone provides /usr/bin/perl but not checkpatch's modules.)
dpkg-query -W -f '${Status}' perl 2>/dev/null | grep -q 'ok installed' || need+=(perl)
command -v strings >/dev/null 2>&1 || need+=(binutils)
if [ ${#need[@]} -gt 0 ]; then
    log "installing host packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
